//! The test registry (`test_support::registry`) as the registry client's tests use it.

use std::time::Duration;

use overlaybd_registry::{BlobLocation, RegistryBlob, RegistryOptions};
pub use test_support::registry::Registry;
pub use test_support::{free_port, random};
use zfile::source::read_full_at;
use zfile::ReadAt;

/// Where blob `digest` of `repo` lives in `reg`.
pub trait Located {
    fn location(&self, repo: &str, digest: &str) -> BlobLocation;
}

impl Located for Registry {
    fn location(&self, repo: &str, digest: &str) -> BlobLocation {
        BlobLocation {
            registry: self.url.clone(),
            repository: repo.to_string(),
            digest: digest.to_string(),
        }
    }
}

/// Options that give up quickly (3 s deadline, 20 ms first backoff).
pub fn quick() -> RegistryOptions {
    RegistryOptions {
        deadline: Duration::from_secs(3),
        initial_backoff: Duration::from_millis(20),
        ..Default::default()
    }
}

/// Reads `blob` whole and in pieces, comparing with `data`.
pub fn check_reads(blob: &dyn ReadAt, data: &[u8]) {
    let mut all = vec![0u8; data.len()];
    assert_eq!(read_full_at(blob, 0, &mut all).unwrap(), data.len());
    assert!(all == data);
    for (off, len) in [
        (0usize, 1usize),
        (12_345, 70_000),
        (data.len() - 10, 100),
        (data.len() / 2, 1),
    ] {
        let mut b = vec![0u8; len];
        let n = blob.read_at(off as u64, &mut b).unwrap();
        assert_eq!(&b[..n], &data[off..(off + len).min(data.len())]);
    }
    assert_eq!(blob.read_at(data.len() as u64, &mut [0u8; 4]).unwrap(), 0);
}

/// Pushes `data` as a blob of `repo` at `url` with client `c` and returns its digest.
pub fn push_with(c: &reqwest::blocking::Client, url: &str, repo: &str, data: &[u8]) -> String {
    test_support::registry::push_blob(c, url, repo, data, None)
}

/// Pushes `data` to `repo` of `reg` and opens it as a cached remote blob (256 KiB units) in a
/// fresh cache directory. Returns the directory (keep it alive), the cache, and the digest.
pub fn cached_remote(
    reg: &Registry,
    repo: &str,
    data: &[u8],
) -> (
    tempfile::TempDir,
    std::sync::Arc<overlaybd_cache::BlobCache<RegistryBlob>>,
    String,
) {
    let digest = reg.push(repo, data);
    let remote = RegistryBlob::open(
        reg.location(repo, &digest),
        Some(data.len() as u64),
        quick(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = overlaybd_cache::BlobCache::open(
        dir.path(),
        &digest,
        data.len() as u64,
        256 * 1024,
        remote,
    )
    .unwrap();
    (dir, cache, digest)
}
