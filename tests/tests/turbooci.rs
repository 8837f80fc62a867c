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

/// `obdctl rpull`: the meta layers are remote snapshots (the snapshotter fetched their small
/// meta blobs), reported as TurboOCI layers, and the container reads the original layers
/// lazily.
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
        out.contains("2 remote, 0 unpacked (of the layers, 2 TurboOCI meta layers")
            && !out.contains("warning"),
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
        env.ctr_pull(ns, "overlaybd", &[], &image);
    }
    let pulled = env.relay.served() - before;
    // The pull downloads the manifest, the config and the meta blobs: metadata only.
    assert!(
        pulled * 20 < source_bytes,
        "the pull fetched {pulled} of {source_bytes} bytes\n{}",
        env.logs()
    );
    let slog = env.snapshotter.as_ref().unwrap().log();
    assert!(slog.contains("turbo_oci=true"), "{slog}");
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

/// An image with a zstd layer between gzip layers: `--turbo-oci` makes that layer a native
/// overlaybd layer (zstd has no gzip index to read in place), so the snapshotter and the
/// daemon stack a native remote layer between meta layers. Pulled through CRI, run, read lazily
/// from both kinds of layer; every byte of the big file (in the native layer) comes back.
#[test]
fn an_image_mixing_meta_layers_and_a_native_layer_runs_lazily() {
    let Some((_s, env)) = start_on(Containerd::V1, Options::default()) else {
        return;
    };
    let mib = 32;
    let data = e2e_tests::image::data_layer(mib);
    let top = {
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        t.append_data(&mut h, "etc/top", &b"top\n"[..]).unwrap();
        t.into_inner().unwrap()
    };
    let busybox = e2e_tests::image::busybox_layer();
    let source_bytes = e2e_tests::image::push_with(
        &env.registry_addr,
        "mixed",
        "v1",
        &[(&busybox, false), (&data, true), (&top, false)],
        &["/bin/sh", "-c", "cat /data/small.txt /etc/top"],
    );
    env.convert_with(&["--turbo-oci"], "mixed:v1", "mixed:v1-turbo");
    let image = format!("{}/mixed:v1-turbo", env.host());
    let before = env.relay.served();
    cri::pull_image(&env.containerd_socket(), &image)
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    let slog = env.snapshotter.as_ref().unwrap().log();
    assert!(slog.contains("turbo_oci=true"), "{slog}");
    // Every layer is a remote snapshot: the snapshotter fetched the meta blobs, and the
    // native layer (the zstd one's conversion) is read lazily. (Had containerd unpacked the
    // first meta blob, it would have fetched every layer above it, the native one whole.)
    assert_eq!(
        slog.matches("remote-snapshot-prepared=true").count(),
        3,
        "{slog}"
    );
    let out = env.ctr(
        "k8s.io",
        &["run", "--rm", "--snapshotter", "overlaybd", &image, "m1"],
    );
    assert_eq!(out, format!("{GREETING}\ntop\n"), "{}", env.logs());
    let served = env.relay.served() - before;
    eprintln!(
        "mixed image: source layers {source_bytes} B; pull + run served {served} B ({:.1}%)",
        served as f64 * 100.0 / source_bytes as f64
    );
    assert!(
        served * 10 < source_bytes,
        "served {served} of {source_bytes}: not lazy\n{}",
        env.logs()
    );
    let out = env.ctr(
        "k8s.io",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            &image,
            "m2",
            "sha256sum",
            "/data/big.bin",
        ],
    );
    let want = hex::encode(Sha256::digest(big_bin(mib)));
    assert_eq!(out, format!("{want}  /data/big.bin\n"), "{}", env.logs());
}

/// What the comparison lists, run from a root directory: every entry's type, mode and owner
/// (and size and link target for non-directories), and a digest of every regular file's
/// content. Mount points and what the runtime puts in place are left out.
const LISTING: &str = "cd \"$ROOT\" && P='-path ./proc -o -path ./sys -o -path ./dev -o -path ./run \
    -o -path ./tmp -o -path ./etc/hosts -o -path ./etc/resolv.conf -o -path ./etc/hostname \
    -o -path ./lost+found' && \
    find . -xdev \\( $P \\) -prune -o -type d -printf '%p d %m %U %G\\n' | LC_ALL=C sort && \
    find . -xdev \\( $P \\) -prune -o ! -type d -printf '%p %y %m %U %G %s %l\\n' | LC_ALL=C sort && \
    find . -xdev \\( $P \\) -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum";

/// A real image, Debian minbase in three gzip layers, converted with `--turbo-oci` and run
/// lazily: its tree (types, modes, owners, sizes, link targets, every file's content) is the
/// one `skopeo copy` + `umoci unpack` make of the original, and the original is unchanged.
#[test]
fn a_debian_image_from_its_meta_image_is_the_tree_umoci_unpacks() {
    let Some((_s, env)) = start_on(Containerd::V1, Options::default()) else {
        return;
    };
    if !test_support::require_tools(&["skopeo", "umoci"]) {
        return;
    }
    let Some(minbase) = e2e_tests::image::debian_minbase_tar() else {
        return;
    };
    let layers = e2e_tests::image::debian_layers(&minbase);
    let source_bytes = e2e_tests::image::push(
        &env.registry_addr,
        "debian",
        "v1",
        &layers,
        &["/bin/cat", "/etc/debian_version"],
    );
    drop(layers);
    let digest_of = |tag: &str| {
        test_support::run(
            "skopeo",
            &[
                "inspect",
                "--tls-verify=false",
                "--format",
                "{{.Digest}}",
                &format!("docker://{}/debian:{tag}", env.registry_addr),
            ],
        )
    };
    let original = digest_of("v1");
    env.convert_with(&["--turbo-oci"], "debian:v1", "debian:v1-turbo");
    assert_eq!(digest_of("v1"), original, "the original image is unchanged");
    let image = format!("{}/debian:v1-turbo", env.host());
    let before = env.relay.served();
    env.rpull(&image);
    let out = env.ctr(
        "default",
        &["run", "--rm", "--snapshotter", "overlaybd", &image, "d1"],
    );
    assert!(out.starts_with("12."), "{out}");
    let served = env.relay.served() - before;
    eprintln!(
        "Debian minbase, TurboOCI: source layers {source_bytes} B; pull + start served {served} B ({:.1}%)",
        served as f64 * 100.0 / source_bytes as f64
    );
    assert!(
        served * 5 < source_bytes,
        "served {served} of {source_bytes}\n{}",
        env.logs()
    );
    // The whole tree, read through the meta layers from the original layers.
    let got = env.ctr(
        "default",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            "--env",
            "ROOT=/",
            &image,
            "d2",
            "/bin/sh",
            "-c",
            LISTING,
        ],
    );
    // The same listing of the original as skopeo and umoci unpack it.
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    test_support::run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/debian:v1", env.registry_addr),
            &format!("oci:{}:v1", layout.display()),
        ],
    );
    let bundle = work.path().join("bundle");
    test_support::run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:v1", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let o = std::process::Command::new("sh")
        .args(["-c", LISTING])
        .env("ROOT", bundle.join("rootfs"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = String::from_utf8(o.stdout).unwrap();
    assert!(
        want.lines().count() > 5000,
        "{} lines",
        want.lines().count()
    );
    if got != want {
        let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
        let diff: Vec<String> = w
            .iter()
            .filter(|l| !g.contains(l))
            .map(|l| format!("- {l}"))
            .chain(
                g.iter()
                    .filter(|l| !w.contains(l))
                    .map(|l| format!("+ {l}")),
            )
            .take(40)
            .collect();
        panic!(
            "the TurboOCI tree differs from umoci's:\n{}",
            diff.join("\n")
        );
    }
    assert!(
        got.contains("./etc/turbo-test f 600 0 0 100001"),
        "the top layer's file"
    );
    assert!(!got.contains("./etc/motd "), "the whiteout");
}
