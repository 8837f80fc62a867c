//! The other ways an overlaybd layer reaches a container: downloaded when the snapshotter
//! cannot read it lazily, and the `dir` writable mode.

use e2e_tests::image::GREETING;
use e2e_tests::{require, serial, Env, Options};

#[test]
fn a_layer_the_snapshotter_cannot_read_lazily_is_downloaded_and_still_runs_from_its_device() {
    let _s = serial();
    if !require() {
        return;
    }
    // The snapshotter's route to the registry is broken (its hosts.toml names a closed port);
    // containerd's is not.
    let env = Env::start(Options {
        snapshotter_registry_broken: true,
        ..Options::default()
    });
    let (image, _) = env.converted_sample("sample", 8);
    // With --no-fallback the pull fails, naming the layer and the reason.
    let (ok, out) = env.rpull_with(&image, &["--no-fallback"]);
    assert!(!ok, "{out}");
    assert!(out.contains("layer 1/2 (sha256:"), "{out}");
    assert!(out.contains("cannot be read lazily"), "{out}");
    assert!(out.contains("connection refused"), "the reason: {out}");
    // Without it the layers are downloaded, and the pull says so, layer by layer, and why.
    let out = env.rpull(&image);
    assert!(out.contains("2 layers, 0 remote, 2 unpacked"), "{out}");
    for l in ["layer 1/2", "layer 2/2"] {
        assert!(
            out.contains(&format!("warning: {l} (sha256:")),
            "{l} is reported: {out}"
        );
    }
    assert!(
        out.contains("downloaded and unpacked, not read lazily"),
        "{out}"
    );
    assert!(out.contains("connection refused"), "the reason: {out}");
    let log = env.snapshotter.as_ref().unwrap().log();
    assert!(log.contains("remote-snapshot-prepared=false"), "{log}");
    let dlog = env.daemon.as_ref().unwrap().log();
    assert!(
        !log.contains('\x1b') && !dlog.contains('\x1b'),
        "no colour codes in log files"
    );
    assert!(log.contains("an unpacked overlaybd layer"), "{log}");
    // The downloaded blobs are local block layers: the device reads them from disk.
    let out = env.ctr(
        "default",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            &image,
            "d1",
            "sh",
            "-c",
            "cat /data/small.txt; wc -c < /data/big.bin",
        ],
    );
    assert_eq!(out, format!("{GREETING}\n{}\n", 8 << 20));
    let log = env.snapshotter.as_ref().unwrap().log();
    assert!(log.contains("image mounted"), "{log}");
}

#[test]
fn dir_mode_gives_a_container_a_writable_overlaybd_layer() {
    let _s = serial();
    if !require() {
        return;
    }
    let env = Env::start(Options {
        rw_mode: "dir",
        ..Options::default()
    });
    let (image, _) = env.converted_sample("sample", 4);
    assert!(env.rpull(&image).contains("2 remote"));
    let out = env.ctr(
        "default",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            &image,
            "w1",
            "sh",
            "-c",
            "echo w > /data/new && rm /data/big.bin && cat /data/new /data/small.txt && ls /data",
        ],
    );
    assert_eq!(out, format!("w\n{GREETING}\nnew\nsmall.txt\n"));
    // The container's writes went to its own layer: the image is unchanged for the next one.
    let out = env.ctr(
        "default",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            &image,
            "w2",
            "sh",
            "-c",
            "ls /data; wc -c < /data/big.bin",
        ],
    );
    assert_eq!(out, format!("big.bin\nsmall.txt\n{}\n", 4 << 20));
    let log = env.snapshotter.as_ref().unwrap().log();
    assert!(!log.contains("WARN"), "{log}");
    // Each container had its own writable layer, detached when it was removed.
    assert!(
        log.matches("image mounted").count() == 0,
        "dir mode mounts no read-only image: {log}"
    );
}

/// An image converted with `--fs erofs` runs lazily: the snapshotter mounts its device as
/// EROFS (the layers' `blob-fs-type`), read-only, and the container writes to its overlayfs
/// upper layer.
#[test]
fn an_erofs_image_runs_lazily_and_its_container_writes_to_its_upper_layer() {
    let _s = serial();
    if !require() || !test_support::use_mkfs_erofs() {
        return;
    }
    let env = Env::start(Options::default());
    let big = 16;
    e2e_tests::image::push_sample(&env.registry_addr, "erofs", "v1", big);
    env.convert_with(&["--fs", "erofs"], "erofs:v1", "erofs:v1-obd");
    let image = format!("{}/erofs:v1-obd", env.host());
    let out = env.rpull(&image);
    assert!(out.contains("2 remote"), "{out}");
    let before = env.relay.served();
    let run = ["run", "--snapshotter", "overlaybd"];
    env.ctr(
        "default",
        &[&run[..], &["-d", &image, "e1", "sleep", "1000"]].concat(),
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let root = env.path("").display().to_string();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(root.trim_end_matches('/')) && l.contains(" erofs ro")),
        "an EROFS mount under {root}:\n{mounts}"
    );
    let out = env.ctr(
        "default",
        &[
            &run[..],
            &[
                "--rm",
                &image,
                "e2",
                "sh",
                "-c",
                "cat /data/small.txt; echo written > /data/new; cat /data/new",
            ],
        ]
        .concat(),
    );
    assert_eq!(out, format!("{GREETING}\nwritten\n"));
    let served = env.relay.served() - before;
    assert!(
        served < (big as u64) << 19,
        "lazy: {served} bytes served for a {big} MiB file nobody read"
    );
    // A writable block layer cannot hold an EROFS image: refused, saying why.
    let label = format!("{}=dev", convertor::oci::label::WRITABLE);
    let o = env.ctr_result(
        "default",
        &[
            &run[..],
            &["--rm", "--snapshotter-label", &label, &image, "e3", "true"],
        ]
        .concat(),
    );
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && said.contains("EROFS") && said.contains("overlayfs"),
        "{said}"
    );
    env.remove_container("default", "e1");
}
