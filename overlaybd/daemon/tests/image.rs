//! Opening images from `config.v1.json`: local files and directories, a writable upper, remote
//! blobs from a real registry through the cache, integrity roots, and clear errors.

mod common;

use std::io::Write as _;

use common::{disk_sha256, vector, D_DISK, F_DISK};
use common::{quick, Registry};
use overlaybd_api::ImageConfig;
use overlaybd_cache::CacheDir;
use overlaybd_daemon::image::{Image, Remote};

fn cfg(json: &str) -> ImageConfig {
    ImageConfig::parse(json.as_bytes(), "test").unwrap()
}

fn p(name: &str) -> String {
    vector(name).display().to_string()
}

#[test]
fn local_layers_files_directories_and_an_upper() {
    // A layer in a directory, under overlaybd's name for a committed layer.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        vector("f.upper.lz4.bs4.zfile"),
        dir.path().join("overlaybd.commit"),
    )
    .unwrap();
    let c = cfg(&format!(
        r#"{{"lowers":[{{"file":"{}"}},{{"dir":"{}","digest":"sha256:unused"}}],
            "upper":{{}},"someFutureKey":{{"x":1}},"accelerationLayer":false}}"#,
        p("e.lz4.bs4.zfile"),
        dir.path().display()
    ));
    let img = Image::open(&c, None).unwrap();
    assert_eq!(disk_sha256(&img.stack), F_DISK);
    assert_eq!(img.layers.len(), 2);
    assert!(img.layers[1].origin.ends_with("overlaybd.commit"));
    // d.lsmt with the writable layer f.upper.rw.* on top.
    let rw = tempfile::tempdir().unwrap();
    for f in ["f.upper.rw.data", "f.upper.rw.index"] {
        common::copy_to(rw.path(), f);
    }
    let c = cfg(&format!(
        r#"{{"lowers":[{{"file":"{}"}}],"upper":{{"index":"{}","data":"{}"}}}}"#,
        p("d.lsmt"),
        rw.path().join("f.upper.rw.index").display(),
        rw.path().join("f.upper.rw.data").display()
    ));
    assert_eq!(disk_sha256(&Image::open(&c, None).unwrap().stack), F_DISK);
}

#[test]
fn an_integrity_root_verifies_the_layer() {
    let raw = std::fs::read(vector("d.lsmt")).unwrap();
    let opts = zfile::WriterOptions {
        integrity: true,
        ..Default::default()
    };
    let mut w = zfile::ZFileWriter::new(Vec::new(), opts).unwrap();
    w.write_all(&raw).unwrap();
    let (z, summary) = w.finish().unwrap();
    let root = summary.integrity_root.expect("a table was asked for");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.zfile");
    std::fs::write(&file, &z).unwrap();
    let with_root = |r: String| {
        cfg(&format!(
            r#"{{"lowers":[{{"file":"{}","integrityRoot":"{r}"}}]}}"#,
            file.display()
        ))
    };
    let img = Image::open(&with_root(root.to_string()), None).unwrap();
    assert_eq!(disk_sha256(&img.stack), D_DISK);
    // Another root: refused at open.
    let mut other = root.0;
    other[0] ^= 1;
    let e = Image::open(&with_root(zfile::Root(other).to_string()), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("d.zfile"), "{e}");
    let e = Image::open(&with_root("xyz".into()), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("integrityRoot"), "{e}");
}

#[test]
fn remote_layers_from_a_registry_through_the_cache() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let blobs: Vec<(String, u64)> = ["e.lz4.bs4.zfile", "f.upper.lz4.bs4.zfile"]
        .iter()
        .map(|n| {
            let data = std::fs::read(vector(n)).unwrap();
            (reg.push("obd/image", &data), data.len() as u64)
        })
        .collect();
    let json = format!(
        r#"{{"repoBlobUrl":"{}/v2/obd/image/blobs","lowers":[
            {{"digest":"{}","size":{}}},{{"digest":"{}","size":{}}}],"upper":{{}}}}"#,
        reg.url, blobs[0].0, blobs[0].1, blobs[1].0, blobs[1].1
    );
    let c = cfg(&json);
    let cache_dir = tempfile::tempdir().unwrap();
    let remote = Remote {
        cache: CacheDir::open(cache_dir.path(), 1 << 30, 0.9, 0.7, 256 * 1024).unwrap(),
        registry: quick(),
    };
    let e = Image::open(&c, None).unwrap_err().to_string();
    assert!(e.contains("remote"), "{e}");
    {
        let img = Image::open(&c, Some(&remote)).unwrap();
        assert_eq!(disk_sha256(&img.stack), F_DISK);
        let cached = img.layers[0].remote.as_ref().unwrap();
        assert_eq!(cached.cached_bytes(), blobs[0].1);
    }
    remote.cache.checkpoint_all().unwrap();
    // The registry goes away. The cache holds both blobs at the config's sizes (checked
    // against the registry when they were fetched): the image opens again without it, and
    // reads the same disk.
    let url = reg.url.clone();
    drop(reg);
    {
        let img = Image::open(&c, Some(&remote)).unwrap();
        assert_eq!(disk_sha256(&img.stack), F_DISK);
    }
    // A cache without the blobs needs the registry (for the size, then the bytes): the
    // error says which blob could not be reached.
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = Remote {
        cache: CacheDir::open(empty_dir.path(), 1 << 30, 0.9, 0.7, 256 * 1024).unwrap(),
        registry: quick(),
    };
    let e = Image::open(&c, Some(&empty)).unwrap_err().to_string();
    assert!(e.contains(&blobs[0].0) && e.contains(&url), "{e}");
    // A wrong size in the config is refused, naming the blob.
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let d = reg.push(
        "obd/image",
        &std::fs::read(vector("e.lz4.bs4.zfile")).unwrap(),
    );
    let bad = cfg(&format!(
        r#"{{"repoBlobUrl":"{}/v2/obd/image/blobs","lowers":[{{"digest":"{d}","size":12}}]}}"#,
        reg.url
    ));
    // The cache holds this blob at its real size: a config that says otherwise is checked
    // with the registry, and the cached bytes are left alone.
    let e = Image::open(&bad, Some(&remote)).unwrap_err().to_string();
    assert!(e.contains(&d) && e.contains("12"), "{e}");
    drop(reg);
    let img = Image::open(&c, Some(&remote)).unwrap();
    assert_eq!(disk_sha256(&img.stack), F_DISK);
}

#[test]
fn bad_configs_are_clear_errors() {
    for (json, want) in [
        ("{}", "no lowers"),
        ("[1]", "image config"),
        (r#"{"lowers":[{}]}"#, "no local file"),
        (r#"{"lowers":[{"file":"/nonexistent"}]}"#, "no local file"),
        (
            r#"{"lowers":[{"digest":"sha256:00"}],"repoBlobUrl":"x"}"#,
            "remote",
        ),
    ] {
        let e = match ImageConfig::parse(json.as_bytes(), "t") {
            Err(e) => e.to_string(),
            Ok(c) => Image::open(&c, None).unwrap_err().to_string(),
        };
        assert!(e.contains(want), "{json}: {e}");
    }
    let c = cfg(&format!(
        r#"{{"lowers":[{{"file":"{}"}}],"upper":{{"index":"/x"}}}}"#,
        p("d.lsmt")
    ));
    let e = Image::open(&c, None).unwrap_err().to_string();
    assert!(e.contains("both"), "{e}");
    // resultFile.
    let dir = tempfile::tempdir().unwrap();
    let rf = dir.path().join("result");
    let c = cfg(&format!(
        r#"{{"lowers":[{{"file":"{}"}}],"resultFile":"{}"}}"#,
        p("d.lsmt"),
        rf.display()
    ));
    c.write_result(&Ok(())).unwrap();
    assert_eq!(std::fs::read_to_string(&rf).unwrap(), "success");
    c.write_result(&Err("registry down".into())).unwrap();
    assert_eq!(
        std::fs::read_to_string(&rf).unwrap(),
        "failed:registry down"
    );
}
