//! Lazy pull end to end: registry → containerd (CRI and ctr) → overlaybd-snapshotter →
//! overlaybd-daemon → ext4 → runc. Each test starts its own processes (`e2e_tests::Env`).

use e2e_tests::image::{push_sample, GREETING};
use e2e_tests::{cri, require, serial, Env, Options};

#[test]
fn a_cri_pull_of_a_converted_image_fetches_only_what_the_container_reads() {
    let _s = serial();
    if !require() {
        return;
    }
    let env = Env::start(Options::default());
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
        "source layers {source_bytes} B; the registry served {served} B for pull + run ({:.1}%)",
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
    let _s = serial();
    if !require() {
        return;
    }
    let env = Env::start(Options::default());
    push_sample(&env.registry_addr, "plain", "v1", 2);
    let image = format!("{}/plain:v1", env.host());
    env.ctr(
        "default",
        &[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "overlaybd",
            &image,
        ],
    );
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
    let _s = serial();
    if !require() {
        return;
    }
    let env = Env::start(Options::default());
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
