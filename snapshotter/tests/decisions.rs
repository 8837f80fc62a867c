//! The snapshotter's decisions against a fake daemon (a real gRPC server of `daemon.proto` on a
//! unix socket, recording every call, that attaches a small ext4 image on a loop device) and a
//! real registry: a pull-time Prepare of an overlaybd layer becomes a remote snapshot without
//! touching the daemon, containers on it share one device mounted once, and the device is
//! detached when its last user goes. No containerd, no overlaybd-daemon.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use overlaybd_api::pb;
use overlaybd_oci::label as labels;
use snapshotter::config::Config;
use snapshotter::snapshotter::Snapshotter;
use snapshotter::store::{Kind, Storage};
use snapshotter::Error;
use test_support::registry::Registry;
use tonic::{Request, Response, Status};

/// A daemon that serves one ext4 image for every attach, on its own loop device.
#[derive(Debug, Clone)]
struct FakeDaemon {
    image: PathBuf,
    calls: Arc<Mutex<Vec<String>>>,
    devices: Arc<Mutex<HashMap<String, pb::Device>>>,
}

#[tonic::async_trait]
impl pb::daemon_server::Daemon for FakeDaemon {
    async fn attach(&self, r: Request<pb::AttachRequest>) -> Result<Response<pb::Device>, Status> {
        let r = r.into_inner();
        // The snapshotter hands over a config the real daemon could open.
        let cfg = overlaybd_api::ImageConfig::load(Path::new(&r.config_path))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.calls.lock().unwrap().push(format!(
            "attach {} lowers={} block={}",
            r.id,
            cfg.lowers.len(),
            r.block
        ));
        if self.devices.lock().unwrap().contains_key(&r.id) {
            return Err(Status::already_exists(format!("{} is attached", r.id)));
        }
        let lo = test_support::run(
            "losetup",
            &[
                "--find",
                "--show",
                "--read-only",
                self.image.to_str().unwrap(),
            ],
        );
        let d = pb::Device {
            id: r.id.clone(),
            config_path: r.config_path,
            loop_device: lo.trim().to_string(),
            read_only: true,
            ..Default::default()
        };
        self.devices.lock().unwrap().insert(r.id, d.clone());
        Ok(Response::new(d))
    }

    async fn detach(
        &self,
        r: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachResponse>, Status> {
        let id = r.into_inner().id;
        self.calls.lock().unwrap().push(format!("detach {id}"));
        let d = self
            .devices
            .lock()
            .unwrap()
            .remove(&id)
            .ok_or_else(|| Status::not_found(format!("no device {id}")))?;
        test_support::run("losetup", &["-d", &d.loop_device]);
        Ok(Response::new(pb::DetachResponse {}))
    }

    async fn list(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let devices = self.devices.lock().unwrap().values().cloned().collect();
        Ok(Response::new(pb::ListResponse { devices }))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Err(Status::unimplemented("stats"))
    }

    async fn start_trace(
        &self,
        _: Request<pb::StartTraceRequest>,
    ) -> Result<Response<pb::TraceResponse>, Status> {
        Err(Status::unimplemented("start_trace"))
    }

    async fn stop_trace(
        &self,
        _: Request<pb::StopTraceRequest>,
    ) -> Result<Response<pb::TraceResponse>, Status> {
        Err(Status::unimplemented("stop_trace"))
    }
}

impl Drop for FakeDaemon {
    /// Whichever copy goes first (a failed test included) detaches what is attached.
    fn drop(&mut self) {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        for (_, d) in devices.drain() {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &d.loop_device])
                .status();
        }
    }
}

/// Unmounts whatever is left mounted under a directory when a test ends, failed or not.
struct UnmountUnder(PathBuf);

impl Drop for UnmountUnder {
    fn drop(&mut self) {
        for m in snapshotter::mount::mounts_under(&self.0).unwrap_or_default() {
            let _ = snapshotter::mount::unmount(&m);
        }
    }
}

/// An ext4 image holding `hello.txt`.
fn ext4_image(dir: &Path) -> PathBuf {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("hello.txt"), b"hello from the image\n").unwrap();
    let img = dir.join("image.ext4");
    test_support::run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            content.to_str().unwrap(),
            img.to_str().unwrap(),
            "8M",
        ],
    );
    img
}

fn layer_labels(chain: &str, digest: &str, size: usize, image: &str) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert(labels::TARGET_REF.to_string(), chain.to_string());
    l.insert(labels::BLOB_DIGEST.to_string(), digest.to_string());
    l.insert(labels::BLOB_SIZE.to_string(), size.to_string());
    l.insert(labels::IMAGE_REF.to_string(), image.to_string());
    l
}

#[test]
fn a_remote_layer_is_committed_at_pull_time_and_containers_share_its_lingering_device() {
    if !test_support::can_mount() || !test_support::require_tools(&["losetup", "mkfs.ext4"]) {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let blob = test_support::random(100_000, 5);
    let digest = reg.push("app", &blob);
    let hosts = dir.path().join("certs.d").join(&reg.addr);
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!("server = \"{}\"\n", reg.url),
    )
    .unwrap();

    let daemon = FakeDaemon {
        image: ext4_image(dir.path()),
        calls: Arc::default(),
        devices: Arc::default(),
    };
    let _unmount = UnmountUnder(dir.path().to_path_buf());
    let socket = dir.path().join("daemon.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = overlaybd_api::bind_private_unix(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = {
        let _g = rt.enter();
        let l = tokio::net::UnixListener::from_std(listener).unwrap();
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(pb::daemon_server::DaemonServer::new(daemon.clone()))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l)),
        )
    };

    let cfg = Config {
        root: dir.path().join("root"),
        daemon_socket: socket,
        hosts_dir: dir.path().join("certs.d"),
        lazy_check_timeout_secs: 5,
        attach_timeout_secs: 10,
        device_linger_secs: 1,
        ..Config::default()
    };
    let sn = Snapshotter::open(cfg).unwrap();
    let chain = format!("sha256:{}", "c".repeat(64));
    let image = format!("{}/app:v1", reg.addr);

    let r = rt.block_on(async {
        // Pull time: the blob is there, so the layer is committed remotely and containerd is
        // told AlreadyExists (it never downloads it). The daemon is not involved yet.
        let pulled = sn
            .prepare(
                "default/1/extract-1 c",
                "",
                layer_labels(&chain, &digest, blob.len(), &image),
                Kind::Active,
            )
            .await;
        assert!(matches!(pulled, Err(Error::AlreadyExists(_))), "{pulled:?}");
        let s = sn.stat(&chain).unwrap();
        assert_eq!((s.kind, s.storage), (Kind::Committed, Storage::Remote));
        assert_eq!(
            s.labels.get(labels::REMOTE).map(String::as_str),
            Some(labels::REMOTE_VALUE)
        );
        assert!(
            sn.stat("default/1/extract-1 c").is_err(),
            "no active snapshot is left"
        );
        let cfg_path = dir
            .path()
            .join(format!("root/snapshots/{}/block/config.v1.json", s.id));
        let c = overlaybd_api::ImageConfig::load(&cfg_path).unwrap();
        assert_eq!(c.lowers.len(), 1);
        assert_eq!(
            (c.lowers[0].digest.as_str(), c.lowers[0].size),
            (digest.as_str(), blob.len() as u64)
        );
        assert!(
            c.repo_blob_url
                .ends_with(&format!("{}/v2/app/blobs", reg.addr)),
            "{}",
            c.repo_blob_url
        );
        assert!(
            daemon.calls.lock().unwrap().is_empty(),
            "pulling attaches nothing"
        );

        // A second pull of the same layer (another namespace) finds it.
        let again = sn
            .prepare(
                "other/2/extract-2 c",
                "",
                layer_labels(&chain, &digest, blob.len(), &image),
                Kind::Active,
            )
            .await;
        assert!(matches!(again, Err(Error::AlreadyExists(_))), "{again:?}");

        // Two containers on the image: one attach, the device mounted once, under an overlay.
        let mut lowers = Vec::new();
        for key in ["default/3/c1", "default/4/c2"] {
            let m = sn
                .prepare(key, &chain, BTreeMap::new(), Kind::Active)
                .await
                .unwrap();
            assert_eq!(m.len(), 1);
            assert_eq!(m[0].kind, "overlay", "{m:?}");
            // The container's root is the image's tree: ext4's lost+found is hidden.
            let root = dir.path().join(format!("rootfs-{}", lowers.len()));
            std::fs::create_dir_all(&root).unwrap();
            test_support::run(
                "mount",
                &[
                    "-t",
                    "overlay",
                    "overlay",
                    "-o",
                    &m[0].options.join(","),
                    root.to_str().unwrap(),
                ],
            );
            let names: Vec<String> = std::fs::read_dir(&root)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            test_support::run("umount", &[root.to_str().unwrap()]);
            assert_eq!(names, ["hello.txt"], "the container's root");
            let lower = m[0]
                .options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))
                .expect("a lowerdir")
                .to_string();
            lowers.push(lower);
        }
        assert_eq!(lowers[0], lowers[1], "one mountpoint for both containers");
        assert!(
            Path::new(&lowers[0]).join("lost+found").is_dir(),
            "the image's filesystem keeps it"
        );
        assert_eq!(
            std::fs::read(Path::new(&lowers[0]).join("hello.txt")).unwrap(),
            b"hello from the image\n",
            "the device's filesystem is mounted there"
        );
        let attaches = |d: &FakeDaemon| {
            d.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.starts_with("attach"))
                .count()
        };
        assert_eq!(attaches(&daemon), 1, "{:?}", daemon.calls.lock().unwrap());
        assert!(daemon.calls.lock().unwrap()[0].ends_with("lowers=1 block=true"));

        // The device stays while a container uses it, and lingers after the last one: the
        // next container of the image finds it mounted (no attach).
        let detaches = |d: &FakeDaemon| {
            d.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.starts_with("detach"))
                .count()
        };
        sn.remove("default/3/c1").await.unwrap();
        sn.remove("default/4/c2").await.unwrap();
        assert_eq!(detaches(&daemon), 0, "the device lingers");
        assert_eq!(
            sn.release_idle_devices().await.unwrap(),
            0,
            "not for long yet"
        );
        let m = sn
            .prepare("default/5/c3", &chain, BTreeMap::new(), Kind::Active)
            .await
            .unwrap();
        assert!(m[0]
            .options
            .iter()
            .any(|o| o == &format!("lowerdir={}", lowers[0])));
        assert_eq!(
            attaches(&daemon),
            1,
            "the lingering device served the next container"
        );
        sn.remove("default/5/c3").await.unwrap();
        // After the grace period it goes.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(sn.release_idle_devices().await.unwrap(), 1);
        let calls = daemon.calls.lock().unwrap().clone();
        assert!(calls.last().unwrap().starts_with("detach"), "{calls:?}");
        assert!(daemon.devices.lock().unwrap().is_empty());
        assert!(
            !Path::new(&lowers[0]).join("hello.txt").exists(),
            "the image is unmounted"
        );
        // The layer can go now that nothing is above it.
        sn.remove(&chain).await
    });
    server.abort();
    r.unwrap();
}

#[test]
fn plain_http_from_rpull_reaches_the_device_config_and_loopback_registries_need_no_hosts_toml() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let blob = test_support::random(10_000, 6);
    let digest = reg.push("app", &blob);
    // No hosts.toml at all: the registry is on 127.0.0.1, so its blob check tries TLS, meets
    // plain HTTP, and goes on over http:// (containerd's loopback rule).
    let cfg = Config {
        root: dir.path().join("root"),
        hosts_dir: dir.path().join("no-certs.d"),
        lazy_check_timeout_secs: 5,
        ..Config::default()
    };
    let sn = Snapshotter::open(cfg).unwrap();
    let image = format!("{}/app:v1", reg.addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (i, plain) in [(1, false), (2, true)] {
        let chain = format!("sha256:{}", i.to_string().repeat(64));
        let mut l = layer_labels(&chain, &digest, blob.len(), &image);
        if plain {
            l.insert(labels::PLAIN_HTTP.to_string(), "true".into());
        }
        let r = rt.block_on(sn.prepare(&format!("default/{i}/extract-{i} x"), "", l, Kind::Active));
        assert!(matches!(r, Err(Error::AlreadyExists(_))), "{r:?}");
        let s = sn.stat(&chain).unwrap();
        let c = overlaybd_api::ImageConfig::load(
            &dir.path()
                .join(format!("root/snapshots/{}/block/config.v1.json", s.id)),
        )
        .unwrap();
        let scheme = if plain { "http" } else { "https" };
        assert_eq!(
            c.repo_blob_url,
            format!("{scheme}://{}/v2/app/blobs", reg.addr),
            "rpull --plain-http labels the layer; without it the URL is overlaybd's https"
        );
    }
}
