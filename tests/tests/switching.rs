//! Switching a node from overlaybd's own components (accelerated-container-image's snapshotter,
//! overlaybd-tcmu) to these: images made by overlaybd's tools run, the old snapshotter's
//! config.json and overlaybd.json are read, and a root that still holds the old snapshotter's
//! snapshots is refused, not mixed (docs/snapshotter.md, "Switching from overlaybd's
//! snapshotter").

use std::io::Read;
use std::process::Command;

use e2e_tests::image::push_overlaybd_layer;
use e2e_tests::{bin, cri, proc, require, start_on, Containerd, Options};
use sha2::Digest;

/// A file of the vectors' `g.layer.tar` (what overlaybd-apply put into `g.ext4.*`).
fn from_layer_tar(name: &str) -> Vec<u8> {
    let f = std::fs::File::open(test_support::vectors::path("g.layer.tar")).unwrap();
    let mut t = tar::Archive::new(f);
    for e in t.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some(name) {
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            return b;
        }
    }
    panic!("{name} is not in g.layer.tar")
}

#[test]
fn an_image_made_by_overlaybds_tools_runs_lazily() {
    on(Containerd::V1);
}

#[test]
fn containerd_2_an_image_made_by_overlaybds_tools_runs_lazily() {
    on(Containerd::V2);
}

fn on(c: Containerd) {
    let Some((_s, env)) = start_on(c, Options::default()) else {
        return;
    };
    // The ext4 layer overlaybd-apply made from g.layer.tar and overlaybd-commit -z compressed.
    let blob = std::fs::read(test_support::vectors::path("g.ext4.lz4.bs4.zfile")).unwrap();
    push_overlaybd_layer(
        &env.registry_addr,
        "vector",
        "g",
        &blob,
        &["/busybox", "true"],
    );
    let image = format!("{}/vector:g", env.host());
    let before = env.relay.served();
    cri::pull_image(&env.containerd_socket(), &image)
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    // The pull fetched the manifest, the config and the layer's header and index (the
    // pull-time check), not the layer (the container below reads most of this small one).
    let pulled = env.relay.served() - before;
    eprintln!(
        "{c:?}: overlaybd's layer of {} B; the pull fetched {pulled} B",
        blob.len()
    );
    assert!(
        pulled < blob.len() as u64 / 4,
        "the pull fetched {pulled} B"
    );
    assert!(
        env.snapshotter
            .as_ref()
            .unwrap()
            .log()
            .contains("remote-snapshot-prepared=true"),
        "{}",
        env.logs()
    );
    // The layer has no shell: busybox comes in by a bind mount.
    let out = env.ctr(
        "k8s.io",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            "--mount",
            "type=bind,src=/bin/busybox,dst=/busybox,options=rbind:ro",
            &image,
            "v1",
            "/busybox",
            "sh",
            "-c",
            "/busybox cat /etc/hostname; /busybox sha256sum /usr/lib/libdata.so.1; \
             /busybox readlink /usr/lib/libdata.so; /busybox cat /opt/deep/a/b/c/d/leaf.txt",
        ],
    );
    let want = format!(
        "{}{}  /usr/lib/libdata.so.1\nlibdata.so.1\nleaf\n",
        String::from_utf8_lossy(&from_layer_tar("etc/hostname")),
        hex::encode(sha2::Sha256::digest(from_layer_tar("usr/lib/libdata.so.1")))
    );
    assert_eq!(out, want, "{}", env.logs());
}

#[test]
fn the_snapshotter_serves_from_overlaybds_config_json_and_refuses_its_old_snapshots() {
    if !require() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let socket = d.path().join("overlaybd.sock");
    let cfg = d.path().join("config.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "root": root,
            "address": socket,
            "verbose": "info",
            "rwMode": "overlayfs",
            "runtimeType": "docker",
        })
        .to_string(),
    )
    .unwrap();
    let run = |log: &str| {
        proc::Proc::spawn(
            "overlaybd-snapshotter",
            Command::new(bin("overlaybd-snapshotter"))
                .arg("--config")
                .arg(&cfg),
            &d.path().join(log),
        )
    };
    let mut p = run("1.log");
    let t = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(p.alive(), "{}", p.log());
        assert!(t.elapsed().as_secs() < 30, "{}", p.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    p.stop();
    let log = p.log();
    assert!(log.contains("overlaybd's snapshotter config"), "{log}");
    assert!(log.contains("runtimeType \"docker\": not needed"), "{log}");
    assert!(root.join("metadata.redb").exists());

    // A root the old snapshotter left snapshots in: refused, with what to do.
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::create_dir_all(root.join("snapshots/7/fs")).unwrap();
    std::fs::write(root.join("metadata.db"), b"bolt").unwrap();
    let o = Command::new(bin("overlaybd-snapshotter"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("1 snapshots of overlaybd's own snapshotter") && err.contains("crictl rmi"),
        "{err}"
    );
    assert!(
        root.join("snapshots/7/fs").exists(),
        "the old state was touched"
    );
}

#[test]
fn the_daemon_reads_overlaybd_json_and_names_a_bad_setting() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("overlaybd.json");
    std::fs::write(&cfg, r#"{"cacheConfig": {"cacheSizeGB": "lots"}}"#).unwrap();
    let o = Command::new(bin("overlaybd-daemon"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("cacheConfig.cacheSizeGB"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
