//! The local blob cache: fetched byte ranges of remote blobs kept on disk across restarts.
//!
//! Each blob has a sparse data file and a record of which refill units (default 256 KiB) are
//! present, with the CRC-32C of each. A unit is first checked against its CRC when it is used
//! after an open, so a crash at any point (torn writes, a record newer or older than the data)
//! can only make data look *absent*, never present: the unit fails its CRC and is fetched
//! again. The record is replaced atomically (write to a temporary file, rename) at checkpoints.
//!
//! Reads are synchronous (`ReadAt`); concurrent misses on one unit fetch it once. A
//! [`CacheDir`] shares a capacity across blobs and evicts the least recently used ones between
//! high and low watermarks. Layout: `docs/format/cache.md`.

mod blob;
mod dir;
mod error;
mod record;
mod stats;

pub use blob::{BlobCache, DownloadOptions};
#[cfg(feature = "test-util")]
pub use dir::fuzz_record;
pub use dir::CacheDir;
pub use error::{Error, Result};
pub use stats::Stats;

thread_local! {
    static EXACT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with sequential readahead off for this thread's cache reads: for a reader that
/// knows what it will read (a trace replay), so that it fetches those units and no window
/// beyond them.
pub fn without_readahead<R>(f: impl FnOnce() -> R) -> R {
    let before = EXACT.with(|e| e.replace(true));
    let r = f();
    EXACT.with(|e| e.set(before));
    r
}

pub(crate) fn readahead_off_here() -> bool {
    EXACT.with(|e| e.get())
}

/// Default refill unit: a miss fetches at least this much.
pub const DEFAULT_UNIT: u32 = 64 * 1024;
/// The daemon's fetch granule ([`CacheDir::set_fetch_granule`]): what a demand miss fetches
/// around itself, while a trace replay fetches 64 KiB units.
pub const FETCH_GRANULE: u64 = 256 * 1024;
/// Most bytes fetched from the origin in one read, when a read misses many adjacent units.
pub const MAX_RUN: u64 = 16 << 20;
/// Default largest readahead window for sequential readers (see [`BlobCache::set_readahead`]).
pub const DEFAULT_READAHEAD: u64 = 32 << 20;
