//! TurboOCI lowers in `config.v1.json` (`targetFile`, `targetDigest`, `gzipIndex`), with the
//! meta layers and indexes overlaybd's own tools made: local targets, remote targets fetched
//! lazily from a real registry through the cache, and clear errors.

mod common;

use common::{disk_sha256, quick, Registry};
use overlaybd_api::ImageConfig;
use overlaybd_cache::CacheDir;
use overlaybd_daemon::image::{Image, Remote};

const L1_DISK: &str = "c8a8d9185d662fdba62691c331259323730a3d7f42e0af2c7f81501acead7e86";
const L2_DISK: &str = "6e1b09509d0f58027eb0b6edc374bc5bf80c7ce35504559715275eb9696eb015";

fn tv(name: &str) -> String {
    test_support::vectors::path(&format!("turbooci/{name}"))
        .display()
        .to_string()
}

fn cfg(json: &str) -> ImageConfig {
    ImageConfig::parse(json.as_bytes(), "test").unwrap()
}

#[test]
fn local_targets_gzip_and_plain() {
    // Layer 1 on its gzip blob, layer 2 on a plain tar: overlaybd's documented config.
    let c = cfg(&format!(
        r#"{{"lowers":[
            {{"file":"{}","targetFile":"{}","gzipIndex":"{}","targetDigest":"sha256:unused-when-local"}},
            {{"file":"{}","targetFile":"{}"}}],"upper":{{}}}}"#,
        tv("ext4.fs.meta"),
        tv("layer.tar.gz"),
        tv("gzip.meta"),
        tv("l2.ext4.fs.meta"),
        tv("layer2.tar")
    ));
    let img = Image::open(&c, None).unwrap();
    assert_eq!(disk_sha256(&img.stack), L2_DISK);
    assert!(
        img.layers[0].origin.contains("layer.tar.gz"),
        "{}",
        img.layers[0].origin
    );
    // The plain tar in place of the gzip blob, without an index.
    let c = cfg(&format!(
        r#"{{"lowers":[{{"file":"{}","targetFile":"{}"}}]}}"#,
        tv("meta.lsmt"),
        test_support::vectors::path("g.layer.tar").display()
    ));
    assert_eq!(disk_sha256(&Image::open(&c, None).unwrap().stack), L1_DISK);
}

#[test]
fn mistakes_in_a_turbo_oci_lower_are_clear_errors() {
    let one = |extra: &str| {
        let c = cfg(&format!(
            r#"{{"lowers":[{{"file":"{}",{extra}}}]}}"#,
            tv("ext4.fs.meta")
        ));
        Image::open(&c, None).unwrap_err().to_string()
    };
    let e = one(&format!(r#""targetFile":"{}""#, tv("layer.tar.gz")));
    assert!(
        e.contains("gzip-compressed") && e.contains("gzipIndex"),
        "{e}"
    );
    let e = one(&format!(
        r#""targetFile":"{}","gzipIndex":"{}""#,
        tv("layer2.tar"),
        tv("gzip.meta")
    ));
    assert!(e.contains("not gzip-compressed"), "{e}");
    let e = one(&format!(
        r#""targetFile":"{}","gzipIndex":"{}""#,
        tv("text.bin.gz"),
        tv("gzip.meta")
    ));
    assert!(e.contains("made for a 264913-byte gzip blob"), "{e}");
    let e = one(r#""targetFile":"/nonexistent/layer.tar""#);
    assert!(e.contains("/nonexistent/layer.tar"), "{e}");
    let e = one(&format!(
        r#""targetFile":"{}","gzipIndex":"/nonexistent/gzip.meta""#,
        tv("layer.tar.gz")
    ));
    assert!(e.contains("/nonexistent/gzip.meta"), "{e}");
    // Layer 2's meta layer over layer 1's target: its extents run past the target.
    let e =
        one(&format!(r#""targetFile":"{}""#, tv("layer2.tar"))).replace(&tv("ext4.fs.meta"), "");
    assert!(!e.is_empty());
    let c = cfg(&format!(
        r#"{{"lowers":[{{"file":"{}","targetDigest":"sha256:00"}}],"repoBlobUrl":"http://127.0.0.1:9/v2/x/blobs"}}"#,
        tv("ext4.fs.meta")
    ));
    let e = Image::open(&c, None).unwrap_err().to_string();
    assert!(e.contains("remote"), "{e}");
}

#[test]
fn a_remote_target_is_fetched_lazily_and_inflated_once_into_the_cache() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let gz = std::fs::read(tv("layer.tar.gz")).unwrap();
    let digest = reg.push("obd/turbo", &gz);
    let c = cfg(&format!(
        r#"{{"repoBlobUrl":"{}/v2/obd/turbo/blobs","lowers":[
            {{"file":"{}","targetDigest":"{digest}","gzipIndex":"{}"}}],"upper":{{}}}}"#,
        reg.url,
        tv("ext4.fs.meta"),
        tv("gz.span64k.meta")
    ));
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote {
        cache: CacheDir::open(dir.path(), 1 << 30, 0.9, 0.7, 64 * 1024).unwrap(),
        registry: quick(),
    };
    {
        let img = Image::open(&c, Some(&remote)).unwrap();
        let blob = img.layers[0]
            .remote
            .as_ref()
            .expect("the target is the remote blob");
        // Reading one small file's block fetches far less than the blob.
        let mut b = vec![0u8; 4096];
        img.stack.read_at(5192 * 512, &mut b).unwrap();
        assert_eq!(&b[..17], b"overlaybd-vector\n", "etc/hostname");
        let fetched = blob.cached_bytes();
        // One 64 KiB cache unit of the compressed blob holds the deflate blocks that make the
        // first 64 KiB unit of the tar (the inflated cache's unit), etc/hostname's included.
        assert_eq!(fetched, 64 * 1024, "{fetched} of {}", gz.len());
        assert_eq!(disk_sha256(&img.stack), L1_DISK);
        assert_eq!(blob.cached_bytes(), gz.len() as u64);
    }
    remote.cache.checkpoint_all().unwrap();
    let inflated = dir
        .path()
        .read_dir()
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".inflated"));
    assert!(inflated, "the inflated bytes are cached");
    // Without the registry, the image opens again from the cache (the index names the
    // blob's size) and reads the same disk.
    drop(reg);
    let img = Image::open(&c, Some(&remote)).unwrap();
    assert_eq!(disk_sha256(&img.stack), L1_DISK);
    assert!(digest.starts_with("sha256:"));
}
