//! A layer downloaded from a registry is applied while it downloads: the applier reads behind
//! the download, the result is the same image, and a download that ends wrong fails the
//! conversion with the download's cause.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use convertor::convert::{convert, Options};
use convertor::progress::{Phase, Progress};
use convertor::store::{Layout, Store};
use convertor::Result;

/// The phases that started and ended, in order.
#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl Events {
    fn has(&self, e: &str) -> bool {
        self.0.lock().unwrap().iter().any(|x| x == e)
    }
}

impl Progress for Events {
    fn start(&self, _: usize, _: &[u64]) {}
    fn bytes(&self, i: usize, phase: Phase, bytes: u64) {
        if phase == Phase::Apply && bytes == 0 {
            self.0.lock().unwrap().push(format!("apply {i} started"));
        }
    }
    fn done(&self, i: usize, phase: Phase) {
        self.0.lock().unwrap().push(format!("{phase:?} {i} done"));
    }
    fn skipped(&self, _: usize, _: Phase, _: &str) {}
    fn note(&self, _: &str) {}
    fn finish(&self, _: &str, _: Duration) {}
}

/// A layout that serves its blobs as a registry would (no reading in place): a large blob's
/// first half, then, once the applier has started on that layer (or after 10 s), the rest,
/// with one byte changed when `corrupt`.
struct Slow {
    inner: Layout,
    events: Arc<Events>,
    corrupt: bool,
    /// Layer index by blob digest.
    layers: Vec<String>,
}

impl Store for Slow {
    fn get_manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        self.inner.get_manifest(reference)
    }
    fn get_blob(&self, digest: &str, out: &mut dyn Write) -> Result<u64> {
        let mut blob = Vec::new();
        self.inner.get_blob(digest, &mut blob)?;
        let Some(i) = self.layers.iter().position(|d| d == digest) else {
            out.write_all(&blob).unwrap();
            return Ok(blob.len() as u64);
        };
        let half = blob.len() / 2;
        out.write_all(&blob[..half]).unwrap();
        out.flush().unwrap();
        let t = Instant::now();
        while !self.events.has(&format!("apply {i} started")) && t.elapsed().as_secs() < 10 {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.corrupt {
            blob[half + 10] ^= 1;
        }
        out.write_all(&blob[half..]).unwrap();
        Ok(blob.len() as u64)
    }
    fn has_blob(&self, digest: &str) -> Result<bool> {
        self.inner.has_blob(digest)
    }
    fn put_blob_file(&self, digest: &str, size: u64, path: &Path) -> Result<bool> {
        self.inner.put_blob_file(digest, size, path)
    }
    fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        self.inner.put_blob(digest, bytes)
    }
    fn put_manifest(&self, tag: Option<&str>, media_type: &str, bytes: &[u8]) -> Result<()> {
        self.inner.put_manifest(tag, media_type, bytes)
    }
    fn describe(&self) -> String {
        format!("slow {}", self.inner.describe())
    }
}

/// Two layers whose gzip blobs are a few MB (incompressible file data).
fn layers() -> Vec<Vec<u8>> {
    (0..2u64)
        .map(|i| {
            let mut x = 0x9e37_79b9_7f4a_7c15 ^ i;
            let data: Vec<u8> = (0..3 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut t = TarBuilder::new();
            t.dir("data", 0o755)
                .file(format!("data/layer{i}.bin"), 0o644, &data)
                .file(format!("data/small{i}.txt"), 0o644, b"small\n");
            t.finish()
        })
        .collect()
}

fn source(dir: &Path) -> (PathBuf, Vec<String>) {
    let path = dir.join("src");
    let layout = Layout::open(&path, true).unwrap();
    push_image(&layout, "v1", &layers());
    let m = manifest(&layout, "v1");
    (path, m.layers.iter().map(|l| l.digest.clone()).collect())
}

#[test]
fn a_layer_is_applied_while_it_downloads_and_gives_the_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let (src_path, digests) = source(dir.path());
    let opts = Options {
        concurrency: 1,
        ..Options::default()
    };
    // Read in place (no download): the reference.
    let src = Layout::open(&src_path, false).unwrap();
    let want = Layout::open(&dir.path().join("want"), true).unwrap();
    let (expected, _) = convert(&src, "v1", &want, Some("v1"), &opts, &Events::default()).unwrap();

    let events = Arc::new(Events::default());
    let slow = Slow {
        inner: Layout::open(&src_path, false).unwrap(),
        events: events.clone(),
        corrupt: false,
        layers: digests,
    };
    let got = Layout::open(&dir.path().join("got"), true).unwrap();
    let (desc, _) = convert(&slow, "v1", &got, Some("v1"), &opts, &*events).unwrap();
    assert_eq!(desc.digest, expected.digest, "the same image either way");
    let log = events.0.lock().unwrap().clone();
    for i in 0..2 {
        let at = |e: &str| {
            log.iter()
                .position(|x| x == e)
                .unwrap_or_else(|| panic!("{e}: {log:?}"))
        };
        assert!(
            at(&format!("apply {i} started")) < at(&format!("Download {i} done")),
            "layer {i} applied only after its download: {log:?}"
        );
    }
}

#[test]
fn a_download_that_ends_wrong_fails_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (src_path, digests) = source(dir.path());
    let events = Arc::new(Events::default());
    let slow = Slow {
        inner: Layout::open(&src_path, false).unwrap(),
        events: events.clone(),
        corrupt: true,
        // The second layer is never applied: served whole.
        layers: digests[..1].to_vec(),
    };
    let dst = Layout::open(&dir.path().join("dst"), true).unwrap();
    let opts = Options {
        concurrency: 1,
        ..Options::default()
    };
    let e = convert(&slow, "v1", &dst, Some("v1"), &opts, &*events)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&digests[0]) && e.contains("the manifest says"),
        "the download's digest check is the cause: {e}"
    );
    assert!(dst.get_manifest("v1").is_err(), "nothing was tagged");
}
