//! `obdctl zfile` from a shell's point of view: exit codes, messages, files.

use std::path::Path;
use std::process::{Command, Output};

fn obdctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_obdctl"))
        .args(args)
        .output()
        .expect("run obdctl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

#[test]
fn compress_info_verify_decompress() {
    let dir = tempfile::tempdir().unwrap();
    let input = zfile::testutil::gen_input(700_000, 7);
    std::fs::write(dir.path().join("in"), &input).unwrap();
    for (algo, extra) in [
        ("lz4", vec![]),
        ("zstd", vec!["--tar", "--threads", "2", "--level", "5"]),
    ] {
        let mut args = vec![
            "zfile",
            "compress",
            "--algorithm",
            algo,
            "--integrity",
            "--block-size",
            "16K",
        ];
        args.extend(extra.iter().copied());
        let (i, o) = (p(dir.path(), "in"), p(dir.path(), "out"));
        args.extend([i.as_str(), o.as_str()]);
        let out = obdctl(&args);
        assert!(out.status.success(), "{}", text(&out));
        let root = text(&out)
            .lines()
            .find_map(|l| l.strip_prefix("integrity root: ").map(str::to_string))
            .unwrap();

        let info = obdctl(&["zfile", "info", &o]);
        let t = text(&info);
        assert!(info.status.success(), "{t}");
        assert!(t.contains(&format!("algorithm:         {algo}")), "{t}");
        assert!(
            t.contains("block size:        16384") && t.contains("original size:     700000"),
            "{t}"
        );
        assert!(t.contains(&root), "{t}");
        assert_eq!(t.contains("PAX"), !extra.is_empty(), "{t}");

        let v = obdctl(&["zfile", "verify", &o, "--root", &root]);
        assert!(
            v.status.success() && text(&v).contains("authenticated"),
            "{}",
            text(&v)
        );

        let back = p(dir.path(), "back");
        let d = obdctl(&["zfile", "decompress", &o, &back]);
        assert!(d.status.success(), "{}", text(&d));
        assert!(std::fs::read(&back).unwrap() == input);

        // One flipped byte in a block: verify fails naming the block, decompress fails.
        let mut bytes = std::fs::read(&o).unwrap();
        let at = bytes.len() / 3;
        bytes[at] ^= 0x20;
        let bad = p(dir.path(), "bad");
        std::fs::write(&bad, &bytes).unwrap();
        let v = obdctl(&["zfile", "verify", &bad, "--root", &root]);
        assert_eq!(v.status.code(), Some(1), "{}", text(&v));
        assert!(text(&v).contains("BAD zfile block"), "{}", text(&v));
        let d = obdctl(&["zfile", "decompress", &bad, &back]);
        assert!(!d.status.success());
        assert!(
            !Path::new(&back).exists(),
            "a failed decompress left {back} behind"
        );
        let d = obdctl(&["zfile", "decompress", "--root", &root, &o, &back]);
        assert!(d.status.success(), "{}", text(&d));
        // A wrong trusted root is refused at open.
        let other = format!("blake3:{}", "0".repeat(64));
        let v = obdctl(&["zfile", "verify", &o, "--root", &other]);
        assert!(
            !v.status.success() && text(&v).contains("root mismatch"),
            "{}",
            text(&v)
        );
    }
}

#[test]
fn reproduces_overlaybd_zfile_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = zfile::testutil::gen_input(2_098_386, 101);
    std::fs::write(dir.path().join("in"), &input).unwrap();
    let (i, o) = (p(dir.path(), "in"), p(dir.path(), "out"));
    let out = obdctl(&["zfile", "compress", "--no-header-rewrite", &i, &o]);
    assert!(out.status.success(), "{}", text(&out));
    let vector = test_support::vectors::path("a.lz4.bs4.zfile");
    assert!(std::fs::read(&o).unwrap() == std::fs::read(vector).unwrap());
}

#[test]
fn clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = p(dir.path(), "junk");
    std::fs::write(&junk, vec![0x42u8; 5000]).unwrap();
    let out = obdctl(&["zfile", "info", &junk]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("not a zfile"), "{}", text(&out));
    let out = obdctl(&[
        "zfile",
        "compress",
        "--block-size",
        "64K",
        &junk,
        &p(dir.path(), "x"),
    ]);
    assert!(!out.status.success() && text(&out).contains("overlaybd's reader cannot read"));
    let out = obdctl(&["zfile", "compress", &junk, &junk]);
    assert!(
        !out.status.success() && text(&out).contains("both the input and the output"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(&junk).unwrap(), vec![0x42u8; 5000]);
    let out = obdctl(&["zfile", "verify", &p(dir.path(), "missing")]);
    assert!(!out.status.success() && text(&out).contains("missing"));
}
