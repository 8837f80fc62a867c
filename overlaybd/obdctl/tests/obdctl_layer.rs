//! `obdctl layer` from a shell's point of view, on overlaybd's vectors.

use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use test_support::vectors::{copy_to, path as vector, F_DISK};

fn obdctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_obdctl"))
        .args(args)
        .output()
        .expect("run obdctl")
}

fn ok(o: &Output) -> String {
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{t}");
    t
}

fn sha(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn commit_seal_info_cat() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, index) = (copy_to(d, "d.rw.data"), copy_to(d, "d.rw.index"));
    // commit reproduces overlaybd's d.lsmt and e.lz4.bs4.zfile.
    let out = d.join("d.lsmt");
    ok(&obdctl(&[
        "layer",
        "commit",
        "--uuid",
        "11111111-2222-3333-4444-555555555555",
        s(&data),
        s(&index),
        s(&out),
    ]));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(vector("d.lsmt")).unwrap()
    );
    let z = d.join("e.zfile");
    ok(&obdctl(&[
        "layer",
        "commit",
        "-z",
        "--uuid",
        "11111111-2222-3333-4444-555555555555",
        s(&data),
        s(&index),
        s(&z),
    ]));
    assert_eq!(
        std::fs::read(&z).unwrap(),
        std::fs::read(vector("e.lz4.bs4.zfile")).unwrap()
    );
    // With the integrity table and the tar envelope: a root is printed and the layer reads.
    let t = d.join("layer.tar");
    let text = ok(&obdctl(&[
        "layer",
        "commit",
        "-t",
        "--integrity",
        "-m",
        "hello",
        s(&data),
        s(&index),
        s(&t),
    ]));
    assert!(text.contains("integrity root: blake3:"), "{text}");
    let info = ok(&obdctl(&["layer", "info", s(&t)]));
    assert!(
        info.contains("tar + zfile")
            && info.contains("committed layer")
            && info.contains("message:       hello"),
        "{info}"
    );
    assert!(info.contains("extents:       7"), "{info}");
    // A committed layer cannot be committed again.
    let o = obdctl(&["layer", "commit", s(&out), s(&d.join("x"))]);
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("already a committed layer")
    );
    // seal, then commit the sealed file: same bytes as the direct commit.
    ok(&obdctl(&["layer", "seal", s(&data), s(&index)]));
    assert!(ok(&obdctl(&["layer", "info", s(&data)])).contains("sealed writable layer"));
    let again = d.join("again.lsmt");
    ok(&obdctl(&[
        "layer",
        "commit",
        "--uuid",
        "11111111-2222-3333-4444-555555555555",
        s(&data),
        s(&again),
    ]));
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(vector("d.lsmt")).unwrap()
    );
    // cat: the stack's disk, as the vectors say, and sparse on disk.
    let img = d.join("disk.img");
    ok(&obdctl(&[
        "layer",
        "cat",
        "--check-chain",
        s(&vector("e.lz4.bs4.zfile")),
        s(&vector("f.upper.lsmt")),
        "-o",
        s(&img),
    ]));
    assert_eq!(sha(&img), F_DISK);
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&img).unwrap());
    assert!(
        blocks * 512 < 4 << 20,
        "output is not sparse: {blocks} blocks"
    );
    let (ud, ui) = (
        copy_to(d, "f.upper.rw.data"),
        copy_to(d, "f.upper.rw.index"),
    );
    ok(&obdctl(&[
        "layer",
        "cat",
        s(&vector("d.lsmt")),
        "--upper",
        s(&ud),
        s(&ui),
        "-o",
        s(&img),
    ]));
    assert_eq!(sha(&img), F_DISK);
    let o = obdctl(&[
        "layer",
        "cat",
        "--check-chain",
        s(&vector("f.upper.lsmt")),
        s(&vector("d.lsmt")),
        "-o",
        s(&img),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("names parent"));
}

#[test]
fn create_and_inspect_writable_layers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, index, sparse) = (d.join("data"), d.join("index"), d.join("sparse"));
    ok(&obdctl(&[
        "layer",
        "create",
        "--vsize",
        "1G",
        "--parent-uuid",
        "11111111-2222-3333-4444-555555555555",
        s(&data),
        s(&index),
    ]));
    let info = ok(&obdctl(&["layer", "info", s(&data), s(&index)]));
    assert!(
        info.contains("writable layer data file") && info.contains("writable layer index file"),
        "{info}"
    );
    assert!(
        info.contains("parent uuid:   11111111-2222-3333-4444-555555555555"),
        "{info}"
    );
    ok(&obdctl(&[
        "layer",
        "create",
        "--sparse",
        "--vsize",
        "64M",
        s(&sparse),
    ]));
    assert!(ok(&obdctl(&["layer", "info", s(&sparse)])).contains("sparse writable layer"));
    let out = d.join("empty.lsmt");
    ok(&obdctl(&["layer", "commit", s(&sparse), s(&out)]));
    assert!(ok(&obdctl(&["layer", "info", s(&out)])).contains("extents:       0"));
    let o = obdctl(&["layer", "create", s(&data), s(&index)]);
    assert!(!o.status.success(), "create must not overwrite");
    let o = obdctl(&[
        "layer",
        "create",
        "--vsize",
        "1000",
        s(&d.join("x")),
        s(&d.join("y")),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("multiple of 512"));
}
