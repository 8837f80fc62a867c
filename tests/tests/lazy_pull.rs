//! Lazy pull end to end: registry → containerd (CRI and ctr) → overlaybd-snapshotter →
//! overlaybd-daemon → ext4 → runc. Each test starts its own processes (`e2e_tests::Env`).

use e2e_tests::image::{push_sample, GREETING};
use e2e_tests::{cri, start_on, Containerd, Options};

#[test]
fn a_cri_pull_of_a_converted_image_fetches_only_what_the_container_reads() {
    cri_pull(Containerd::V1);
}

#[test]
fn containerd_2_cri_pulls_lazily_through_the_transfer_service() {
    cri_pull(Containerd::V2);
}

#[test]
fn containerd_2_cri_pulls_lazily_client_side_with_snapshot_annotations() {
    cri_pull(Containerd::V2ClientPull);
}

fn cri_pull(c: Containerd) {
    let Some((_s, env)) = start_on(c, Options::default()) else {
        return;
    };
    let (image, source_bytes) = env.converted_sample("sample", 64);

    let before = env.relay.served();
    let id = cri::pull_image(&env.containerd_socket(), &image)
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    assert!(id.starts_with("sha256:"), "{id}");
    let pulled = env.relay.served() - before;
    // The pull itself fetched the manifest and config, not the layers.
    assert!(
        pulled < 256 << 10,
        "the pull fetched {pulled} bytes\n{}",
        env.logs()
    );
    // containerd 2.1 took the path the configuration chose (its debug log says which).
    if c.is_v2() {
        let clog = env.containerd.as_ref().unwrap().log();
        let how = if c == Containerd::V2 {
            "using transfer service"
        } else {
            "using client.Pull()"
        };
        assert!(
            clog.lines()
                .any(|l| l.contains("PullImage") && l.contains(how)),
            "{c:?}: containerd did not pull {how}\n{clog}"
        );
    }
    let sn = env.ctr("k8s.io", &["snapshots", "--snapshotter", "overlaybd", "ls"]);
    assert!(
        sn.lines().filter(|l| l.contains("Committed")).count() >= 2,
        "{sn}"
    );
    let slog = env.snapshotter.as_ref().unwrap().log();
    assert!(slog.contains("remote-snapshot-prepared=true"), "{slog}");

    let out = env.ctr(
        "k8s.io",
        &["run", "--rm", "--snapshotter", "overlaybd", &image, "c1"],
    );
    assert_eq!(out.trim(), GREETING);
    let served = env.relay.served() - before;
    eprintln!(
        "{c:?}: source layers {source_bytes} B; the registry served {served} B for pull + run ({:.1}%)",
        served as f64 * 100.0 / source_bytes as f64
    );
    assert!(
        served * 10 < source_bytes,
        "served {served} of {source_bytes} layer bytes: not lazy\n{}",
        env.logs()
    );
    // A second container of the same image reads from the same device and cache.
    let again = env.relay.served();
    let out = env.ctr(
        "k8s.io",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            &image,
            "c2",
            "sh",
            "-c",
            "echo w > /tmp/x && cat /tmp/x /data/small.txt",
        ],
    );
    assert_eq!(out, format!("w\n{GREETING}\n"));
    assert!(
        env.relay.served() - again < 1 << 20,
        "the second start refetched"
    );
}

#[test]
fn an_unconverted_image_pulled_by_plain_ctr_runs_through_the_same_snapshotter() {
    plain_ctr_pull(Containerd::V1);
}

#[test]
fn containerd_2_ctr_pulls_an_unconverted_image_through_the_transfer_service() {
    plain_ctr_pull(Containerd::V2);
}

fn plain_ctr_pull(c: Containerd) {
    let Some((_s, env)) = start_on(c, Options::default()) else {
        return;
    };
    push_sample(&env.registry_addr, "plain", "v1", 2);
    let image = format!("{}/plain:v1", env.host());
    env.ctr_pull("default", "overlaybd", &[], &image);
    let out = env.ctr(
        "default",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            &image,
            "p1",
            "sh",
            "-c",
            "echo w > /tmp/x && cat /tmp/x /data/small.txt && wc -c < /data/big.bin",
        ],
    );
    assert_eq!(out, format!("w\n{GREETING}\n{}\n", 2 << 20));
    // No device was needed: these are plain overlayfs layers.
    let slog = env.snapshotter.as_ref().unwrap().log();
    assert!(!slog.contains("image mounted"), "{slog}");
}

#[test]
fn obdctl_rpull_then_ctr_run_reads_lazily_and_unconverted_layers_are_unpacked() {
    rpull(Containerd::V1);
}

#[test]
fn containerd_2_obdctl_rpull_reads_lazily_and_unconverted_layers_are_unpacked() {
    rpull(Containerd::V2);
}

fn rpull(c: Containerd) {
    let Some((_s, env)) = start_on(c, Options::default()) else {
        return;
    };
    let (image, source_bytes) = env.converted_sample("sample", 64);
    let before = env.relay.served();
    let out = env.rpull(&image);
    assert!(out.contains("2 layers, 2 remote, 0 unpacked"), "{out}");
    let out = env.ctr(
        "default",
        &["run", "--rm", "--snapshotter", "overlaybd", &image, "r1"],
    );
    assert_eq!(out.trim(), GREETING);
    let served = env.relay.served() - before;
    eprintln!("rpull + run: the registry served {served} of {source_bytes} layer bytes");
    assert!(
        served * 10 < source_bytes,
        "served {served}\n{}",
        env.logs()
    );

    // The same command pulls an unconverted image: its layers are unpacked by containerd.
    push_sample(&env.registry_addr, "plain", "v1", 1);
    let plain = format!("{}/plain:v1", env.host());
    let out = env.rpull(&plain);
    assert!(out.contains("2 layers, 0 remote, 2 unpacked"), "{out}");
    let out = env.ctr(
        "default",
        &["run", "--rm", "--snapshotter", "overlaybd", &plain, "r2"],
    );
    assert_eq!(out.trim(), GREETING);
    // Pulling again finds everything in place.
    assert!(env.rpull(&image).contains("0 unpacked, 2 already present"));

    // Unpacked layers stream into containerd's content store. A layer whose bytes do not
    // match its digest (damaged in the registry's storage) fails the pull, naming it, and
    // leaves neither content nor a partial ingest behind.
    push_sample(&env.registry_addr, "broken", "v1", 4);
    let manifest: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!(
            "http://{}/v2/broken/manifests/v1",
            env.registry_addr
        ))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let data = env.path(&format!(
        "registry/data/docker/registry/v2/blobs/sha256/{}/{}/data",
        &layer[7..9],
        &layer[7..]
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let (ok, out) = env.rpull_result(&format!("{}/broken:v1", env.host()));
    eprintln!("rpull of a damaged layer: {out}");
    assert!(!ok, "{out}");
    assert!(out.contains(&layer), "{out}");
    let ls = env.ctr("default", &["content", "ls", "-q"]);
    assert!(!ls.contains(&layer), "{ls}");
    let active = env.ctr("default", &["content", "active"]);
    assert!(!active.contains(&layer), "{active}");
}

/// `ctr image pull` on containerd 2.x goes through the Transfer Service, which passes the
/// layer annotations to the snapshotter (the proxy plugin exports
/// `enable_remote_snapshot_annotations`): lazy. `--local` pulls client-side without labels:
/// containerd downloads every layer and the snapshotter still runs the image from them.
#[test]
fn containerd_2_ctr_pull_is_lazy_through_the_transfer_service_and_local_downloads() {
    let c = Containerd::V2;
    let Some((_s, env)) = start_on(c, Options::default()) else {
        return;
    };
    let (image, source_bytes) = env.converted_sample("sample", 32);
    let before = env.relay.served();
    let pull = |image: &str, extra: &[&str]| env.ctr_pull("default", "overlaybd", extra, image);
    pull(&image, &[]);
    let pulled = env.relay.served() - before;
    assert!(
        pulled < 256 << 10,
        "the Transfer Service's pull fetched {pulled} bytes\n{}",
        env.logs()
    );
    let out = env.ctr(
        "default",
        &["run", "--rm", "--snapshotter", "overlaybd", &image, "t1"],
    );
    assert_eq!(out.trim(), GREETING);
    let served = env.relay.served() - before;
    eprintln!(
        "ctr pull (Transfer Service) + run: the registry served {served} of {source_bytes} B ({:.1}%)",
        served as f64 * 100.0 / source_bytes as f64
    );
    assert!(
        served * 10 < source_bytes,
        "served {served}\n{}",
        env.logs()
    );

    // The same image under another name, pulled client-side.
    env.convert("sample:v1", "local:v1-obd");
    let local = format!("{}/local:v1-obd", env.host());
    let before = env.relay.served();
    pull(&local, &["--local"]);
    let pulled = env.relay.served() - before;
    eprintln!("ctr pull --local: the registry served {pulled} B");
    let out = env.ctr(
        "default",
        &["run", "--rm", "--snapshotter", "overlaybd", &local, "t2"],
    );
    assert_eq!(out.trim(), GREETING);
}

#[test]
fn removing_an_image_removes_its_snapshots_and_releases_its_device() {
    removal(Containerd::V1);
}

#[test]
fn containerd_2_removing_an_image_removes_its_snapshots_and_releases_its_device() {
    removal(Containerd::V2);
}

/// An image removed through CRI (as the kubelet's image garbage collection does): containerd's
/// garbage collector removes its snapshots (`List`, then `Remove` of each, then `Cleanup`);
/// the snapshotter deletes their directories and, with no lingering, releases the device.
fn removal(c: Containerd) {
    let Some((_s, env)) = start_on(
        c,
        Options {
            device_linger_secs: 0,
            ..Options::default()
        },
    ) else {
        return;
    };
    let (image, _) = env.converted_sample("sample", 4);
    let id = cri::pull_image(&env.containerd_socket(), &image)
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    let out = env.ctr(
        "k8s.io",
        &["run", "--rm", "--snapshotter", "overlaybd", &image, "g1"],
    );
    assert_eq!(out.trim(), GREETING);
    let snapshots = || env.ctr("k8s.io", &["snapshots", "--snapshotter", "overlaybd", "ls"]);
    assert!(snapshots().contains("Committed"), "{}", snapshots());
    cri::remove_image(&env.containerd_socket(), &id)
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    let t = std::time::Instant::now();
    while snapshots().lines().count() > 1 || !env.daemon_devices().is_empty() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "left after the image was removed: {}{:?}\n{}",
            snapshots(),
            env.daemon_devices(),
            env.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let dirs = std::fs::read_dir(env.path("snapshotter/root/snapshots"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(dirs, 0, "snapshot directories left");
    assert!(env.mounts().is_empty(), "{:?}", env.mounts());
    let warnings = env.snapshotter_warnings();
    assert!(warnings.is_empty(), "{warnings:#?}");
}
