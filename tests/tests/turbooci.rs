//! TurboOCI end to end: an unmodified image in the registry, its meta image made by
//! `overlaybd-convertor convert --turbo-oci`, pulled through containerd into
//! overlaybd-snapshotter (the small meta blobs downloaded and unpacked, the original layers
//! read lazily by the daemon through the gzip index), and run by runc.

use e2e_tests::image::{big_bin, push_sample, GREETING};
use e2e_tests::{cri, start_on, Containerd, Options};
use sha2::{Digest, Sha256};

#[test]
fn a_turbo_oci_image_pulled_by_cri_runs_lazily_from_the_original_layers() {
    turbo(Containerd::V1, true);
}

#[test]
fn containerd_2_ctr_pulls_a_turbo_oci_image_through_the_transfer_service() {
    turbo(Containerd::V2, false);
}

/// `obdctl rpull`: the meta layers are reported as unpacked (their blobs are the metadata),
/// and the container still reads the original layers lazily.
#[test]
fn obdctl_rpull_of_a_turbo_oci_image_then_ctr_run() {
    let Some((_s, env)) = start_on(Containerd::V1, Options::default()) else {
        return;
    };
    let source_bytes = push_sample(&env.registry_addr, "rsample", "v1", 32);
    env.convert_with(&["--turbo-oci"], "rsample:v1", "rsample:v1-turbo");
    let image = format!("{}/rsample:v1-turbo", env.host());
    let before = env.relay.served();
    let (ok, out) = env.rpull_with(&image, &["--no-fallback"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("2 of them TurboOCI meta layers") && !out.contains("warning"),
        "{out}"
    );
    let out = env.ctr(
        "default",
        &["run", "--rm", "--snapshotter", "overlaybd", &image, "r1"],
    );
    assert_eq!(out.trim(), GREETING, "{}", env.logs());
    let served = env.relay.served() - before;
    assert!(
        served * 5 < source_bytes,
        "served {served} of {source_bytes}\n{}",
        env.logs()
    );
}

fn turbo(c: Containerd, use_cri: bool) {
    let Some((_s, env)) = start_on(c, Options::default()) else {
        return;
    };
    let mib = 48;
    let source_bytes = push_sample(&env.registry_addr, "tsample", "v1", mib);
    env.convert_with(&["--turbo-oci"], "tsample:v1", "tsample:v1-turbo");
    let image = format!("{}/tsample:v1-turbo", env.host());
    let ns = if use_cri { "k8s.io" } else { "default" };
    let before = env.relay.served();
    if use_cri {
        cri::pull_image(&env.containerd_socket(), &image)
            .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    } else {
        env.ctr(
            ns,
            &[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                "overlaybd",
                &image,
            ],
        );
    }
    let pulled = env.relay.served() - before;
    // The pull downloads the manifest, the config and the meta blobs: metadata only.
    assert!(
        pulled * 20 < source_bytes,
        "the pull fetched {pulled} of {source_bytes} bytes\n{}",
        env.logs()
    );
    let slog = env.snapshotter.as_ref().unwrap().log();
    assert!(slog.contains("a TurboOCI layer"), "{slog}");
    let out = env.ctr(
        ns,
        &["run", "--rm", "--snapshotter", "overlaybd", &image, "t1"],
    );
    assert_eq!(out.trim(), GREETING, "{}", env.logs());
    let served = env.relay.served() - before;
    eprintln!(
        "{c:?} TurboOCI: source layers {source_bytes} B; the registry served {pulled} B for the \
         pull and {served} B for pull + run ({:.1}%)",
        served as f64 * 100.0 / source_bytes as f64
    );
    assert!(
        served * 10 < source_bytes,
        "served {served} of {source_bytes}: not lazy\n{}",
        env.logs()
    );
    // Every byte of the big file, inflated from the original gzip layer through the index.
    let out = env.ctr(
        ns,
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            &image,
            "t2",
            "sh",
            "-c",
            "sha256sum /data/big.bin && echo w > /tmp/x && cat /tmp/x",
        ],
    );
    let want = hex::encode(Sha256::digest(big_bin(mib)));
    assert_eq!(out, format!("{want}  /data/big.bin\nw\n"), "{}", env.logs());
}
