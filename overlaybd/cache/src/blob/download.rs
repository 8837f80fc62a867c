//! Downloading a whole blob into its cache, verified against its digest.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use zfile::source::read_full_at;
use zfile::ReadAt;

use super::BlobCache;
use crate::{Error, Result, MAX_RUN};

/// Settings of [`BlobCache::download`].
#[derive(Clone, Debug)]
pub struct DownloadOptions {
    /// Most bytes per second fetched from the origin (`None`: as fast as it goes).
    pub max_bytes_per_sec: Option<u64>,
    /// Bytes fetched per origin read.
    pub chunk: u64,
    /// Set to stop the download at the next chunk (it resumes from there next time).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            max_bytes_per_sec: None,
            chunk: MAX_RUN,
            cancel: None,
        }
    }
}

impl<S: ReadAt + 'static> BlobCache<S> {
    /// Whether the whole blob is present and matched its digest ([`BlobCache::download`]).
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Relaxed)
    }

    /// Downloads the whole blob into the cache, in order, resuming from what is present (units
    /// already cached are checked, not fetched again), at most `max_bytes_per_sec`, then checks
    /// the blob against its digest (the cache key, `sha256:<hex>`). On a match the blob is
    /// complete: every read is served locally and the origin is not contacted again. On a
    /// mismatch every unit is dropped and the error names the blob.
    pub fn download(&self, opts: &DownloadOptions) -> Result<()> {
        use sha2::{Digest, Sha256};
        let want = self
            .key
            .strip_prefix("sha256:")
            .and_then(|h| hex::decode(h).ok())
            .filter(|h| h.len() == 32)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "download {}: only sha256 digests can be verified",
                    self.key
                ))
            })?;
        let chunk = (opts.chunk.max(self.unit) / self.unit) * self.unit;
        let started = std::time::Instant::now();
        let mut fetched = 0u64;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; chunk.min(self.size).max(1) as usize];
        let mut at = 0;
        while at < self.size {
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(Error::io(
                    "download",
                    self.key.clone(),
                    at,
                    io::Error::new(io::ErrorKind::Interrupted, "cancelled"),
                ));
            }
            let len = chunk.min(self.size - at);
            let added = {
                let _pin = self.epoch.read().unwrap_or_else(|p| p.into_inner());
                let added = self.ensure_range(at / self.unit, (at + len - 1) / self.unit)?;
                let got = read_full_at(&self.data, at, &mut buf[..len as usize])
                    .map_err(|e| Error::io("read", self.data_path.display().to_string(), at, e))?;
                if got < len as usize {
                    return Err(Error::Truncated {
                        what: "cache file",
                        need: len,
                        got: got as u64,
                    });
                }
                added
            };
            hasher.update(&buf[..len as usize]);
            self.stats
                .download_bytes
                .fetch_add(added, Ordering::Relaxed);
            self.account(added);
            fetched += added;
            at += len;
            if let Some(rate) = opts.max_bytes_per_sec.filter(|&r| r > 0) {
                let due = std::time::Duration::from_secs_f64(fetched as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        if hasher.finalize().as_slice() != want.as_slice() {
            self.drop_range(0, self.size, true)?;
            self.checkpoint()?;
            return Err(Error::corrupt(
                format!("blob {}", self.key),
                "downloaded bytes do not match the digest; the cached copy was dropped",
            ));
        }
        self.complete.store(true, Ordering::Relaxed);
        self.checkpoint()
    }
}
