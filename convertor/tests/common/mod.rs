//! Test support: a real distribution registry on 127.0.0.1, images built by the tests (layer
//! tars, gzip, config, OCI manifest) and pushed through a [`Store`], tool checks.
#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use convertor::oci::{self, media, Descriptor, Document, Manifest};
use convertor::remote::{Remote, RemoteOptions};
use convertor::store::Store;

/// `ok`, or: under `CI=true` a panic saying `why`; elsewhere `false` after saying why the test
/// is skipped.
pub fn require(ok: bool, why: &str) -> bool {
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("required under CI=true: {why}");
        }
        eprintln!("skipping: {why}");
    }
    ok
}

pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} || test -x /usr/sbin/{tool} || test -x /sbin/{tool}"),
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    require(
        found,
        &format!("{tool} not found (scripts/test.sh installs it)"),
    )
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A registry process with its own storage, stopped (by PID) when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:port`
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn start() -> Option<Registry> {
        Self::start_auth(None)
    }

    /// A registry that wants Basic credentials `(user, password)` when given.
    pub fn start_auth(basic: Option<(&str, &str)>) -> Option<Registry> {
        if !require_tool("docker-registry") || (basic.is_some() && !require_tool("htpasswd")) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let auth = match basic {
            Some((u, p)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", u, p])
                    .output()
                    .unwrap();
                assert!(out.status.success());
                let f = dir.path().join("htpasswd");
                std::fs::write(&f, &out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    f.display()
                )
            }
            None => String::new(),
        };
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let addr = format!("127.0.0.1:{port}");
        let t = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Registry {
            child,
            addr,
            _dir: dir,
        })
    }
}

impl Registry {
    /// A repository of this registry over plain HTTP (`push` asks for push rights).
    pub fn remote(&self, repo: &str, push: bool) -> Remote {
        let opts = RemoteOptions {
            plain_http: true,
            ..Default::default()
        };
        Remote::open(&self.addr, repo, &opts, push).unwrap()
    }
}

/// The image manifest `reference` of `store` (panics on an index).
pub fn manifest(store: &dyn Store, reference: &str) -> Manifest {
    let (b, mt) = store.get_manifest(reference).unwrap();
    match oci::parse_document(&b, mt.as_deref()).unwrap() {
        Document::Manifest(m) => *m,
        Document::Index(_) => panic!("expected a manifest"),
    }
}

/// gzip with fixed settings (the same bytes every run).
pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Pushes an image of `layers` (uncompressed tars, gzip-compressed in the image) and returns
/// its manifest's digest.
pub fn push_image(store: &dyn Store, tag: &str, layers: &[Vec<u8>]) -> String {
    push_image_as(store, Some(tag), layers, false).0
}

/// The same with Docker's media types when `docker`; returns the manifest's digest and size.
pub fn push_image_as(
    store: &dyn Store,
    tag: Option<&str>,
    layers: &[Vec<u8>],
    docker: bool,
) -> (String, u64) {
    let (layer_mt, config_mt, manifest_mt) = if docker {
        (
            media::DOCKER_LAYER_GZIP,
            media::DOCKER_CONFIG,
            media::DOCKER_MANIFEST,
        )
    } else {
        (
            media::OCI_LAYER_GZIP,
            media::OCI_CONFIG,
            media::OCI_MANIFEST,
        )
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        diff_ids.push(oci::sha256_digest(l));
        let z = gzip(l);
        let d = oci::sha256_digest(&z);
        store.put_blob(&d, &z).unwrap();
        descs.push(Descriptor {
            media_type: layer_mt.into(),
            digest: d,
            size: z.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
        });
        history.push(serde_json::json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("layer {i}")}));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let cb = serde_json::to_vec(&config).unwrap();
    let cd = oci::sha256_digest(&cb);
    store.put_blob(&cd, &cb).unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(manifest_mt.into()),
        artifact_type: None,
        config: Descriptor {
            media_type: config_mt.into(),
            digest: cd,
            size: cb.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
        },
        layers: descs,
        subject: None,
        annotations: None,
    };
    let mb = serde_json::to_vec(&m).unwrap();
    store.put_manifest(tag, manifest_mt, &mb).unwrap();
    (oci::sha256_digest(&mb), mb.len() as u64)
}

/// Pushes an OCI index of `(architecture, manifest digest, size)` under `tag`.
pub fn push_index(store: &dyn Store, tag: &str, manifests: &[(&str, String, u64)]) -> String {
    let idx = oci::Index {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.into()),
        manifests: manifests
            .iter()
            .map(|(arch, d, size)| Descriptor {
                media_type: media::OCI_MANIFEST.into(),
                digest: d.clone(),
                size: *size,
                urls: None,
                annotations: None,
                platform: Some(oci::Platform {
                    architecture: arch.to_string(),
                    os: "linux".into(),
                    os_version: None,
                    os_features: None,
                    variant: None,
                }),
                artifact_type: None,
            })
            .collect(),
        annotations: None,
    };
    let b = serde_json::to_vec(&idx).unwrap();
    store.put_manifest(Some(tag), media::OCI_INDEX, &b).unwrap();
    oci::sha256_digest(&b)
}

/// A layer tar writer: entries get the builder's owner and mtime (0:0 and 1,700,000,000 unless
/// [`TarBuilder::with_owner`] says otherwise); paths are bytes, so names need not be UTF-8.
pub struct TarBuilder {
    tar: tar::Builder<Vec<u8>>,
    uid: u64,
    gid: u64,
    mtime: u64,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn os(p: &impl AsRef<[u8]>) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(p.as_ref())
}

impl TarBuilder {
    pub fn new() -> Self {
        Self::with_owner(0, 0, 1_700_000_000)
    }

    pub fn with_owner(uid: u64, gid: u64, mtime: u64) -> Self {
        TarBuilder {
            tar: tar::Builder::new(Vec::new()),
            uid,
            gid,
            mtime,
        }
    }

    /// A GNU header with the default owner and mtime.
    pub fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        Self::new().entry_header(kind, mode, size)
    }

    /// A GNU header with this builder's owner and mtime.
    pub fn entry_header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(self.mtime);
        h.set_size(size);
        h
    }

    pub fn dir(&mut self, path: impl AsRef<[u8]>, mode: u32) -> &mut Self {
        let mut h = self.entry_header(tar::EntryType::Directory, mode, 0);
        self.raw(&mut h, path, b"")
    }

    pub fn file(&mut self, path: impl AsRef<[u8]>, mode: u32, data: &[u8]) -> &mut Self {
        let mut h = self.entry_header(tar::EntryType::Regular, mode, data.len() as u64);
        self.raw(&mut h, path, data)
    }

    pub fn owned(
        &mut self,
        path: impl AsRef<[u8]>,
        mode: u32,
        uid: u64,
        gid: u64,
        data: &[u8],
    ) -> &mut Self {
        let mut h = self.entry_header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.raw(&mut h, path, data)
    }

    pub fn link(
        &mut self,
        kind: tar::EntryType,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> &mut Self {
        let mode = if kind == tar::EntryType::Symlink {
            0o777
        } else {
            0o755
        };
        let mut h = self.entry_header(kind, mode, 0);
        self.tar
            .append_link(&mut h, os(&path), os(&target))
            .unwrap();
        self
    }

    pub fn node(
        &mut self,
        kind: tar::EntryType,
        path: impl AsRef<[u8]>,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = self.entry_header(kind, mode, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(&mut h, path, b"")
    }

    /// An entry with a header the caller made.
    pub fn raw(&mut self, h: &mut tar::Header, path: impl AsRef<[u8]>, data: &[u8]) -> &mut Self {
        self.tar.append_data(h, os(&path), data).unwrap();
        self
    }

    pub fn pax(&mut self, recs: &[(&str, &[u8])]) -> &mut Self {
        self.tar
            .append_pax_extensions(recs.iter().copied())
            .unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.tar.into_inner().unwrap()
    }
}

/// A busybox root filesystem layer: `/bin/busybox` (busybox-static) and its applets as
/// symlinks, a few files of `/etc`, a hard link, a device node, a file with a capability.
pub fn busybox_layer() -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox").expect("read /bin/busybox (install busybox-static)");
    let mut t = TarBuilder::new();
    t.dir("bin", 0o755)
        .file("bin/busybox", 0o755, &bb)
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .file("etc/passwd-", 0o600, b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        .dir("dev", 0o755)
        .node(tar::EntryType::Char, "dev/null", 0o666, 1, 3)
        .node(tar::EntryType::Fifo, "dev/initctl", 0o666, 0, 0)
        .dir("tmp", 0o1777)
        .dir("root", 0o700)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .link(tar::EntryType::Link, "usr/bin/busybox-again", "bin/busybox")
        .owned(
            "usr/bin/owned",
            0o2755,
            1234,
            5678,
            b"#!/bin/sh\necho owned\n",
        );
    for applet in [
        "sh",
        "ls",
        "cat",
        "echo",
        "sleep",
        "find",
        "sha256sum",
        "wc",
    ] {
        t.link(tar::EntryType::Symlink, format!("bin/{applet}"), "busybox");
    }
    // A file capability (cap_net_bind_service), as setcap writes it.
    let cap: [u8; 20] = [0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    t.pax(&[
        ("SCHILY.xattr.security.capability", &cap),
        ("mtime", b"1700000000.25"),
    ])
    .file("usr/bin/ping", 0o755, b"\x7fELF not really");
    t.finish()
}

/// A layer made by GNU tar from real directories of this machine (whichever of `dirs` exist).
pub fn host_layer(dirs: &[&str]) -> Vec<u8> {
    let present: Vec<&str> = dirs
        .iter()
        .copied()
        .filter(|d| std::path::Path::new("/").join(d).exists())
        .collect();
    assert!(!present.is_empty(), "none of {dirs:?} exists");
    let mut args = vec![
        "-C",
        "/",
        "--numeric-owner",
        "--format=pax",
        "--sort=name",
        "-cf",
        "-",
    ];
    args.extend(present.iter().copied());
    let out = Command::new("tar").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
