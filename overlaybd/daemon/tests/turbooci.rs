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

/// Writes `tar.blake3` for `tar` (and `index`) into `dir`; returns its path and root.
fn digests(dir: &std::path::Path, tar: &[u8], index: Option<&[u8]>) -> (String, String) {
    let mut h = overlaybd_turbooci::ChunkHasher::default();
    h.update(tar);
    let bytes = h.finish(index).encode();
    let p = dir.join("tar.blake3");
    std::fs::write(&p, &bytes).unwrap();
    (
        p.display().to_string(),
        overlaybd_turbooci::digests::root_of(&bytes),
    )
}

fn read_all(img: &Image) -> std::io::Result<()> {
    let size = img.stack.virtual_size();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        zfile::source::read_full_at(&img.stack, off, &mut buf)?;
        off += buf.len() as u64;
    }
    Ok(())
}

#[test]
fn tar_digests_verify_every_chunk_of_a_local_target() {
    let dir = tempfile::tempdir().unwrap();
    let tar = std::fs::read(test_support::vectors::path("g.layer.tar")).unwrap();
    let (file, root) = digests(dir.path(), &tar, None);
    let target = dir.path().join("layer.tar");
    std::fs::write(&target, &tar).unwrap();
    let c = |root: &str| {
        cfg(&format!(
            r#"{{"lowers":[{{"file":"{}","targetFile":"{}","tarDigests":"{file}","tarDigestsRoot":"{root}"}}]}}"#,
            tv("meta.lsmt"),
            target.display()
        ))
    };
    assert_eq!(
        disk_sha256(&Image::open(&c(&root), None).unwrap().stack),
        L1_DISK
    );
    // Another root, or an index the digests do not name: refused at attach.
    let e = Image::open(&c("blake3:00"), None).unwrap_err().to_string();
    assert!(e.contains("the image says blake3:00"), "{e}");
    let with_index = cfg(&format!(
        r#"{{"lowers":[{{"file":"{}","targetFile":"{}","gzipIndex":"{}","tarDigests":"{file}","tarDigestsRoot":"{root}"}}]}}"#,
        tv("meta.lsmt"),
        tv("layer.tar.gz"),
        tv("gzip.meta")
    ));
    let e = Image::open(&with_index, None).unwrap_err().to_string();
    assert!(
        e.contains("not the index the meta image's digests name"),
        "{e}"
    );
    // A byte of a file's data changed in the original layer: the read that takes it fails.
    let mut bad = tar.clone();
    bad[300_000] ^= 0x10; // inside usr/lib/libdata.so.1
    std::fs::write(&target, &bad).unwrap();
    let img = Image::open(&c(&root), None).unwrap();
    let e = read_all(&img).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("do not match"), "{e}");
}

#[test]
fn a_tampered_blob_in_the_registry_is_caught() {
    let storage = tempfile::tempdir().unwrap();
    let Some(reg) = Registry::start_with(None, storage.path()) else {
        return;
    };
    let gz = std::fs::read(tv("layer.tar.gz")).unwrap();
    let index = std::fs::read(tv("gz.span64k.meta")).unwrap();
    let digest = reg.push("obd/tamper", &gz);
    let dir = tempfile::tempdir().unwrap();
    let tar = std::fs::read(test_support::vectors::path("g.layer.tar")).unwrap();
    let (file, root) = digests(dir.path(), &tar, Some(&index));
    let c = cfg(&format!(
        r#"{{"repoBlobUrl":"{}/v2/obd/tamper/blobs","lowers":[
            {{"file":"{}","targetDigest":"{digest}","gzipIndex":"{}","tarDigests":"{file}","tarDigestsRoot":"{root}"}}]}}"#,
        reg.url,
        tv("ext4.fs.meta"),
        tv("gz.span64k.meta")
    ));
    let remote = |d: &std::path::Path| Remote {
        cache: CacheDir::open(d, 1 << 30, 0.9, 0.7, 64 * 1024).unwrap(),
        registry: quick(),
    };
    let good = tempfile::tempdir().unwrap();
    {
        let img = Image::open(&c, Some(&remote(good.path()))).unwrap();
        assert_eq!(disk_sha256(&img.stack), L1_DISK);
    }
    // The registry's stored copy changes under it: a byte of a stored deflate block (random
    // file data), which inflates without complaint to different bytes.
    let hex = digest.strip_prefix("sha256:").unwrap();
    let data = storage.path().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut b = std::fs::read(&data).unwrap();
    b[150_000] ^= 0x01;
    std::fs::write(&data, &b).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let img = Image::open(&c, Some(&remote(fresh.path()))).unwrap();
    let e = read_all(&img).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("do not match"), "{e}");
}
