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

mod record;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};

use zfile::source::read_full_at;
use zfile::ReadAt;

use crate::error::{Error, Result};
use record::Unit;

/// Default refill unit: a miss fetches at least this much.
pub const DEFAULT_UNIT: u32 = 256 * 1024;
/// Most bytes fetched from the origin in one read, when a read misses many adjacent units.
pub const MAX_RUN: u64 = 16 << 20;
/// Default largest readahead window for sequential readers (see [`BlobCache::set_readahead`]).
pub const DEFAULT_READAHEAD: u64 = 32 << 20;

/// Counters of one cached blob.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes served from the cache file.
    pub hit_bytes: AtomicU64,
    /// Bytes fetched from the origin.
    pub fetched_bytes: AtomicU64,
    /// Reads sent to the origin.
    pub origin_reads: AtomicU64,
    /// Units that failed their CRC (or were dropped by the reader) and were fetched again.
    pub dropped_units: AtomicU64,
    /// Bytes fetched ahead of sequential readers (part of `fetched_bytes`).
    pub readahead_bytes: AtomicU64,
    /// Bytes fetched by [`BlobCache::download`] (part of `fetched_bytes`).
    pub download_bytes: AtomicU64,
}

impl Stats {
    /// Appends the counters in Prometheus' text format with the given labels, plus the hit
    /// ratio (bytes served that did not have to be fetched, over bytes served).
    pub fn render(&self, out: &mut String, labels: &str) {
        use crate::metrics::counter;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            out,
            "overlaybd_cache_served_bytes_total",
            labels,
            get(&self.hit_bytes),
        );
        counter(
            out,
            "overlaybd_cache_fetched_bytes_total",
            labels,
            get(&self.fetched_bytes),
        );
        counter(
            out,
            "overlaybd_cache_origin_reads_total",
            labels,
            get(&self.origin_reads),
        );
        counter(
            out,
            "overlaybd_cache_dropped_units_total",
            labels,
            get(&self.dropped_units),
        );
        counter(
            out,
            "overlaybd_cache_readahead_bytes_total",
            labels,
            get(&self.readahead_bytes),
        );
        counter(
            out,
            "overlaybd_cache_download_bytes_total",
            labels,
            get(&self.download_bytes),
        );
        let _ = std::fmt::Write::write_fmt(
            out,
            format_args!(
                "overlaybd_cache_hit_ratio{{{labels}}} {}\n",
                self.hit_ratio()
            ),
        );
    }

    /// Bytes served without a fetch for them, over bytes served (1 when nothing was served).
    pub fn hit_ratio(&self) -> f64 {
        let served = self.hit_bytes.load(Ordering::Relaxed);
        let fetched = self.fetched_bytes.load(Ordering::Relaxed);
        if served == 0 {
            return 1.0;
        }
        served.saturating_sub(fetched) as f64 / served as f64
    }
}

/// Sequential-read detection: one stream per blob, as the kernel's readahead for a file. A
/// stream starts with the second of two adjacent reads and gets readahead once it has read a
/// whole unit (so a reader that reads a few small headers in a row does not).
#[derive(Debug)]
struct Readahead {
    /// Where a sequential reader reads next.
    next: u64,
    /// Current window; doubles on each sequential read up to the maximum, 0 after a seek.
    window: u64,
    /// End of what has been fetched (or is being fetched) ahead.
    ahead_end: u64,
    /// A readahead fetch is running.
    running: bool,
    /// Bytes read by the current sequential stream; readahead starts after one unit.
    run: u64,
}

impl Default for Readahead {
    fn default() -> Self {
        Readahead {
            next: u64::MAX,
            window: 0,
            ahead_end: 0,
            running: false,
            run: 0,
        }
    }
}

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

#[derive(Clone, Copy, Debug, Default)]
struct UnitState {
    unit: Unit,
    /// Checked against its CRC since this process opened the blob.
    verified: bool,
}

#[derive(Debug, Default)]
struct State {
    units: Vec<UnitState>,
    inflight: HashSet<u64>,
    dirty: bool,
}

/// Something the [`CacheDir`] can evict.
trait Evict: Send + Sync {
    fn evict(&self) -> Result<u64>;
    fn save(&self) -> Result<()>;
}

/// A blob's cache, in front of its origin.
pub struct BlobCache<S> {
    origin: S,
    key: String,
    data: File,
    data_path: PathBuf,
    record_path: PathBuf,
    size: u64,
    unit: u64,
    state: Mutex<State>,
    fetched: Condvar,
    /// Readers hold it shared while they use cache file bytes; eviction and drops take it
    /// exclusively, so bytes are never punched out from under a read.
    epoch: RwLock<()>,
    stats: Stats,
    dir: Option<Arc<Shared>>,
    readahead: Mutex<Readahead>,
    readahead_max: AtomicU64,
    /// The whole blob is present and matched its digest.
    complete: AtomicBool,
    me: Weak<Self>,
}

impl<S> std::fmt::Debug for BlobCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCache")
            .field("key", &self.key)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a descriptor owned by `file`; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blob `key`'s data file and record in `dir`.
fn blob_paths(dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    let name = key.replace(':', "_");
    (
        dir.join(format!("{name}.data")),
        dir.join(format!("{name}.record")),
    )
}

fn valid_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.len() > 200
        || !key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b":-_.".contains(&c))
        || key.starts_with('.')
    {
        return Err(Error::Invalid(format!(
            "cache key {key:?}: use a blob digest like sha256:<hex>"
        )));
    }
    Ok(())
}

impl<S: ReadAt + 'static> BlobCache<S> {
    /// Opens (or creates) the cache of blob `key` (its digest) of `size` bytes in `dir`.
    pub fn open(dir: &Path, key: &str, size: u64, unit: u32, origin: S) -> Result<Arc<Self>> {
        Self::open_in(dir, key, size, unit, origin, None)
    }

    fn open_in(
        dir: &Path,
        key: &str,
        size: u64,
        unit: u32,
        origin: S,
        shared: Option<Arc<Shared>>,
    ) -> Result<Arc<Self>> {
        valid_key(key)?;
        if unit == 0 || !unit.is_multiple_of(4096) {
            return Err(Error::Invalid(format!(
                "refill unit {unit}: must be a positive multiple of 4096"
            )));
        }
        let (data_path, record_path) = blob_paths(dir, key);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .map_err(|e| Error::io("open", data_path.display().to_string(), 0, e))?;
        data.set_len(size)
            .map_err(|e| Error::io("size", data_path.display().to_string(), 0, e))?;
        let n = size.div_ceil(unit as u64) as usize;
        // A missing or damaged record means an empty cache: never a reason to fail.
        let units = std::fs::read(&record_path)
            .ok()
            .and_then(|raw| record::decode(&raw, size, unit).ok())
            .unwrap_or_else(|| vec![Unit::default(); n]);
        let state = State {
            units: units
                .into_iter()
                .map(|unit| UnitState {
                    unit,
                    verified: false,
                })
                .collect(),
            inflight: HashSet::new(),
            dirty: false,
        };
        Ok(Arc::new_cyclic(|me| BlobCache {
            origin,
            key: key.to_string(),
            data,
            data_path,
            record_path,
            size,
            unit: unit as u64,
            state: Mutex::new(state),
            fetched: Condvar::new(),
            epoch: RwLock::new(()),
            stats: Stats::default(),
            dir: shared,
            readahead: Mutex::new(Readahead::default()),
            readahead_max: AtomicU64::new(DEFAULT_READAHEAD),
            complete: AtomicBool::new(false),
            me: me.clone(),
        }))
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The source this cache fetches from.
    pub fn origin(&self) -> &S {
        &self.origin
    }

    /// Bytes of the blob present in the cache.
    pub fn cached_bytes(&self) -> u64 {
        let st = self.lock();
        (0..st.units.len() as u64)
            .filter(|&u| st.units[u as usize].unit.present)
            .map(|u| self.unit_len(u))
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unit_len(&self, u: u64) -> u64 {
        (self.size - u * self.unit).min(self.unit)
    }

    /// Writes the record if it changed (atomically: temporary file, then rename).
    pub fn checkpoint(&self) -> Result<()> {
        let raw = {
            let mut st = self.lock();
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            encode_state(self.size, self.unit, &st)
        };
        write_record(&self.record_path, &raw)
    }

    /// Makes units `first..=last` present and verified. Units another reader is already
    /// fetching are waited for; the rest are claimed at once and fetched in runs of adjacent
    /// units, one origin read per run (at most [`MAX_RUN`] bytes). Returns the bytes added.
    fn ensure_range(&self, first: u64, last: u64) -> Result<u64> {
        let mut added = 0;
        loop {
            let claim = {
                let mut st = self.lock();
                let (claim, waiting) = Self::claim(&mut st, first, last);
                if claim.is_empty() {
                    if !waiting {
                        return Ok(added);
                    }
                    drop(self.fetched.wait(st).unwrap_or_else(|p| p.into_inner()));
                    continue;
                }
                claim
            };
            let (n, failure) = self.fill_claimed(&claim);
            added += n;
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }

    /// Claims (marks in flight) the units of `first..=last` that are not present and verified
    /// and that no one else is fetching. Returns them, and whether others are in flight.
    fn claim(st: &mut State, first: u64, last: u64) -> (Vec<(u64, UnitState)>, bool) {
        let mut claim = Vec::new();
        let mut waiting = false;
        for u in first..=last {
            let s = st.units[u as usize];
            if s.unit.present && s.verified {
                continue;
            }
            if st.inflight.contains(&u) {
                waiting = true;
            } else {
                claim.push((u, s));
            }
        }
        for (u, _) in &claim {
            st.inflight.insert(*u);
        }
        (claim, waiting)
    }

    /// Fills claimed units, records them, releases the claim and wakes waiters. Returns the
    /// bytes added, and the error that stopped the fill.
    fn fill_claimed(&self, claim: &[(u64, UnitState)]) -> (u64, Option<Error>) {
        let (states, failure) = self.fill(claim);
        let mut added = 0;
        let mut st = self.lock();
        for (u, _) in claim {
            st.inflight.remove(u);
        }
        // Units fetched before a failure are kept: they are on disk and checked.
        for (u, state) in states {
            if !st.units[u as usize].unit.present {
                added += self.unit_len(u);
            }
            st.units[u as usize] = state;
            st.dirty = true;
        }
        drop(st);
        self.fetched.notify_all();
        (added, failure)
    }

    /// Verifies claimed units that the record says are present, then fetches the others in
    /// runs of adjacent units. Returns the units made good, and the error that stopped it.
    fn fill(&self, claim: &[(u64, UnitState)]) -> (Vec<(u64, UnitState)>, Option<Error>) {
        let mut done = Vec::with_capacity(claim.len());
        let mut missing = Vec::new();
        for &(u, s) in claim {
            if s.unit.present {
                let mut buf = vec![0u8; self.unit_len(u) as usize];
                let ok = read_full_at(&self.data, u * self.unit, &mut buf)
                    .is_ok_and(|n| n == buf.len())
                    && crc32c::crc32c(&buf) == s.unit.crc;
                if ok {
                    done.push((
                        u,
                        UnitState {
                            unit: s.unit,
                            verified: true,
                        },
                    ));
                    continue;
                }
                self.stats.dropped_units.fetch_add(1, Ordering::Relaxed);
            }
            missing.push(u);
        }
        let max_units = (MAX_RUN / self.unit).max(1);
        let mut i = 0;
        while i < missing.len() {
            let start = missing[i];
            let mut end = start;
            while i + 1 < missing.len() && missing[i + 1] == end + 1 && end + 1 - start < max_units
            {
                i += 1;
                end += 1;
            }
            i += 1;
            let at = start * self.unit;
            let len = ((end + 1) * self.unit).min(self.size) - at;
            let buf = match self.fetch_run(at, len) {
                Ok(b) => b,
                Err(e) => return (done, Some(e)),
            };
            for (k, chunk) in buf.chunks(self.unit as usize).enumerate() {
                let state = UnitState {
                    unit: Unit {
                        present: true,
                        crc: crc32c::crc32c(chunk),
                    },
                    verified: true,
                };
                done.push((start + k as u64, state));
            }
        }
        (done, None)
    }

    /// Fetches `len` bytes at `at` from the origin and stores them in the cache file.
    fn fetch_run(&self, at: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.stats.origin_reads.fetch_add(1, Ordering::Relaxed);
        let n = read_full_at(&self.origin, at, &mut buf)
            .map_err(|e| Error::io("fetch", self.key.clone(), at, e))?;
        if n < buf.len() {
            return Err(Error::Truncated {
                what: "blob from its origin",
                need: len,
                got: n as u64,
            });
        }
        self.stats.fetched_bytes.fetch_add(len, Ordering::Relaxed);
        self.data
            .write_all_at(&buf, at)
            .map_err(|e| Error::io("write", self.data_path.display().to_string(), at, e))?;
        Ok(buf)
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.size - offset) as usize;
        let (end, ahead) = self.plan_readahead(offset, n as u64);
        let added = match self.read_through(offset, &mut buf[..n], end) {
            Ok(a) => a,
            Err(e) => {
                if ahead.is_some() {
                    self.readahead_done();
                }
                return Err(e);
            }
        };
        self.stats.hit_bytes.fetch_add(n as u64, Ordering::Relaxed);
        // Accounting and eviction run without this blob's pin, so that two readers of two
        // blobs can never wait on each other.
        self.account(added);
        if let Some((from, to)) = ahead {
            self.start_readahead(from, to);
        }
        Ok(n)
    }

    /// Makes `[offset, end)` present (the read, plus any synchronous readahead) and copies
    /// the read's bytes from the cache file, under the pin. Returns the bytes added.
    fn read_through(&self, offset: u64, buf: &mut [u8], end: u64) -> Result<u64> {
        let n = buf.len();
        let _pin = self.epoch.read().unwrap_or_else(|p| p.into_inner());
        let (first, last) = (offset / self.unit, (offset + n as u64 - 1) / self.unit);
        let added = self.ensure_range(first, (end - 1) / self.unit)?;
        // What the read itself needed is at most its own units; the rest was read ahead.
        let own = (last + 1 - first) * self.unit;
        self.stats
            .readahead_bytes
            .fetch_add(added.saturating_sub(own), Ordering::Relaxed);
        let got = read_full_at(&self.data, offset, buf)
            .map_err(|e| Error::io("read", self.data_path.display().to_string(), offset, e))?;
        if got < n {
            return Err(Error::Truncated {
                what: "cache file",
                need: n as u64,
                got: got as u64,
            });
        }
        Ok(added)
    }

    fn account(&self, added: u64) {
        if let Some(dir) = &self.dir {
            dir.touch(&self.key);
            if added > 0 {
                dir.grew(&self.key, added);
            }
        }
    }

    /// Largest readahead window for sequential readers, in bytes (0 turns readahead off).
    /// Default [`DEFAULT_READAHEAD`].
    pub fn set_readahead(&self, max: u64) {
        self.readahead_max.store(max, Ordering::Relaxed);
    }

    /// For a read of `[offset, offset + n)`: where the fetch for it should end, and the range
    /// to fetch in the background after it, in one look at the stream's state.
    ///
    /// A sequential reader gets a window that starts at two units and doubles with each read
    /// (up to the maximum); a seek resets it. When a sequential reader has caught up with what
    /// was fetched ahead, its own fetch is extended by the window (synchronous readahead, as
    /// the kernel does on a miss). When it is within half a window of the end of what is
    /// fetched ahead, the next window is fetched in the background (one at a time; the caller
    /// must start it, or call `readahead_done`).
    fn plan_readahead(&self, offset: u64, n: u64) -> (u64, Option<(u64, u64)>) {
        let end = offset + n;
        let max = self.readahead_max.load(Ordering::Relaxed);
        if max == 0 || self.complete.load(Ordering::Relaxed) {
            return (end, None);
        }
        let mut ra = self.readahead.lock().unwrap_or_else(|p| p.into_inner());
        let sequential = offset == ra.next;
        ra.next = end;
        if !sequential {
            ra.window = 0;
            ra.ahead_end = 0;
            ra.run = n;
            return (end, None);
        }
        ra.run += n;
        if ra.run < self.unit {
            // Small reads of headers one after another are not a stream yet.
            return (end, None);
        }
        ra.window = (ra.window * 2).max(2 * self.unit).min(max.max(self.unit));
        let mut fetch_end = end;
        if ra.ahead_end <= offset {
            fetch_end = (offset + ra.window).max(end).min(self.size);
            ra.ahead_end = fetch_end;
        }
        if ra.running || ra.ahead_end >= end + ra.window / 2 {
            return (fetch_end, None);
        }
        let from = ra.ahead_end.max(end);
        let to = (end + ra.window).min(self.size);
        if from >= to {
            return (fetch_end, None);
        }
        ra.ahead_end = to;
        ra.running = true;
        (fetch_end, Some((from, to)))
    }

    /// The background readahead finished (or was never started).
    fn readahead_done(&self) {
        self.readahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running = false;
    }

    /// Fetches `[from, to)` in a background thread (units already present are skipped;
    /// readers that need a unit being fetched wait for it, as for any fetch).
    fn start_readahead(&self, from: u64, to: u64) {
        let Some(me) = self.me.upgrade() else {
            return self.readahead_done();
        };
        // The claim is taken here, before this read returns, so the reader's next reads wait
        // for these units instead of fetching them again in small pieces.
        let (claim, _) = Self::claim(&mut self.lock(), from / self.unit, (to - 1) / self.unit);
        if claim.is_empty() {
            return self.readahead_done();
        }
        let spawned = std::thread::Builder::new()
            .name("cache-readahead".into())
            .spawn({
                let claim = claim.clone();
                move || {
                    // No pin: units in flight are never dropped (see `drop_range`). A failed
                    // readahead is not an error: readers fetch on demand.
                    let added = me.fill_claimed(&claim).0;
                    me.stats.readahead_bytes.fetch_add(added, Ordering::Relaxed);
                    me.account(added);
                    me.readahead_done();
                }
            });
        if spawned.is_err() {
            // Release the claim unfilled.
            let mut st = self.lock();
            for (u, _) in &claim {
                st.inflight.remove(u);
            }
            drop(st);
            self.fetched.notify_all();
            self.readahead_done();
        }
    }

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
                Error::Invalid(format!(
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
            let freed = self.drop_range(0, self.size, true)?;
            if let Some(dir) = &self.dir {
                dir.shrank(&self.key, freed);
            }
            self.checkpoint()?;
            return Err(Error::corrupt(
                format!("blob {}", self.key),
                "downloaded bytes do not match the digest; the cached copy was dropped",
            ));
        }
        self.complete.store(true, Ordering::Relaxed);
        self.checkpoint()
    }

    /// Drops the units covering `[offset, offset + len)`: because their bytes failed a check
    /// above (`failed`, counted in the stats) or to evict them. Returns the bytes freed.
    fn drop_range(&self, offset: u64, len: u64, failed: bool) -> Result<u64> {
        if len == 0 || offset >= self.size {
            return Ok(0);
        }
        let _excl = self.epoch.write().unwrap_or_else(|p| p.into_inner());
        self.complete.store(false, Ordering::Relaxed);
        let (first, last) = (
            offset / self.unit,
            ((offset + len).min(self.size) - 1) / self.unit,
        );
        let mut freed = 0;
        // Units being fetched are left alone: their fetch writes fresh bytes after this.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        {
            let mut st = self.lock();
            for u in first..=last {
                if st.inflight.contains(&u) {
                    continue;
                }
                let s = &mut st.units[u as usize];
                if s.unit.present {
                    freed += self.unit_len(u);
                    if failed {
                        self.stats.dropped_units.fetch_add(1, Ordering::Relaxed);
                    }
                }
                *s = UnitState::default();
                match runs.last_mut() {
                    Some((_, end)) if *end + 1 == u => *end = u,
                    _ => runs.push((u, u)),
                }
            }
            st.dirty = true;
        }
        // Still under the exclusive pin: no reader can use these bytes until the hole is made.
        for (a, b) in runs {
            let at = a * self.unit;
            let end = ((b + 1) * self.unit).min(self.size);
            punch(&self.data, at, end - at)
                .map_err(|e| Error::io("punch", self.data_path.display().to_string(), at, e))?;
        }
        Ok(freed)
    }
}

impl<S: ReadAt + 'static> ReadAt for BlobCache<S> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.read(offset, buf).map_err(Error::into_io)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }
    fn discard_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        // The origin learns too: a P2P-backed source refetches this range from the registry.
        self.origin.discard_cached(offset, len)?;
        let freed = self.drop_range(offset, len, true).map_err(Error::into_io)?;
        if let Some(dir) = &self.dir {
            dir.shrank(&self.key, freed);
        }
        Ok(())
    }
}

impl<S: ReadAt + 'static> Evict for BlobCache<S> {
    fn evict(&self) -> Result<u64> {
        let freed = self.drop_range(0, self.size, false)?;
        self.checkpoint()?;
        Ok(freed)
    }
    fn save(&self) -> Result<()> {
        self.checkpoint()
    }
}

impl<S> Drop for BlobCache<S> {
    fn drop(&mut self) {
        // Best effort: a lost record only costs refetches.
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if st.dirty {
            let _ = write_record(&self.record_path, &encode_state(self.size, self.unit, st));
        }
    }
}

fn encode_state(size: u64, unit: u64, st: &State) -> Vec<u8> {
    let units: Vec<Unit> = st.units.iter().map(|u| u.unit).collect();
    record::encode(size, unit as u32, &units)
}

/// Replaces a record file atomically: a temporary file, then a rename.
fn write_record(path: &Path, raw: &[u8]) -> Result<()> {
    let tmp = path.with_extension("record.tmp");
    let p = path.display().to_string();
    std::fs::write(&tmp, raw).map_err(|e| Error::io("write", p.clone(), 0, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", p, 0, e))
}

struct Entry {
    bytes: u64,
    last_use: u64,
    open: Option<Weak<dyn Evict>>,
}

struct Inner {
    used: u64,
    clock: u64,
    blobs: HashMap<String, Entry>,
}

struct Shared {
    dir: PathBuf,
    capacity: u64,
    high: u64,
    low: u64,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self, key: &str) {
        let mut g = self.lock();
        g.clock += 1;
        let now = g.clock;
        if let Some(e) = g.blobs.get_mut(key) {
            e.last_use = now;
        }
    }

    fn shrank(&self, key: &str, bytes: u64) {
        let mut g = self.lock();
        g.used = g.used.saturating_sub(bytes);
        if let Some(e) = g.blobs.get_mut(key) {
            e.bytes = e.bytes.saturating_sub(bytes);
        }
    }

    fn grew(&self, key: &str, bytes: u64) {
        let victims = {
            let mut g = self.lock();
            g.used += bytes;
            if let Some(e) = g.blobs.get_mut(key) {
                e.bytes += bytes;
            }
            if g.used <= self.high {
                return;
            }
            // Least recently used first, never the blob being filled.
            let mut order: Vec<(u64, String)> = g
                .blobs
                .iter()
                .filter(|(k, e)| k.as_str() != key && e.bytes > 0)
                .map(|(k, e)| (e.last_use, k.clone()))
                .collect();
            order.sort();
            let mut excess = g.used - self.low;
            let mut victims = Vec::new();
            for (_, k) in order {
                if excess == 0 {
                    break;
                }
                let e = &g.blobs[&k];
                excess = excess.saturating_sub(e.bytes);
                victims.push((k.clone(), e.open.as_ref().and_then(Weak::upgrade)));
            }
            victims
        };
        for (k, open) in victims {
            let freed = match open {
                Some(blob) => blob.evict().unwrap_or(0),
                None => {
                    let (data, record) = blob_paths(&self.dir, &k);
                    let len = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
                    let _ = std::fs::remove_file(record);
                    let _ = std::fs::remove_file(&data);
                    let mut g = self.lock();
                    let freed = g.blobs.remove(&k).map_or(len, |e| e.bytes);
                    g.used = g.used.saturating_sub(freed);
                    continue;
                }
            };
            self.shrank(&k, freed);
        }
    }
}

/// A cache directory shared by many blobs, with a capacity.
#[derive(Clone)]
pub struct CacheDir {
    shared: Arc<Shared>,
    unit: u32,
}

impl std::fmt::Debug for CacheDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheDir")
            .field("dir", &self.shared.dir)
            .field("capacity", &self.shared.capacity)
            .finish()
    }
}

impl CacheDir {
    /// Opens `dir` with a capacity in bytes; eviction starts above `high` (a fraction of the
    /// capacity, e.g. 0.9) and stops below `low` (e.g. 0.7). Blobs cached by earlier runs count
    /// towards the capacity (by their records).
    pub fn open(dir: &Path, capacity: u64, high: f64, low: f64, unit: u32) -> Result<Self> {
        if !(0.0 < low && low <= high && high <= 1.0) {
            return Err(Error::Invalid(format!(
                "watermarks {low}..{high}: need 0 < low ≤ high ≤ 1"
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("create", dir.display().to_string(), 0, e))?;
        let mut blobs = HashMap::new();
        let mut used = 0;
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::io("list", dir.display().to_string(), 0, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(".data") else {
                continue;
            };
            // Present bytes, by the record; without one the data counts as garbage to reclaim.
            let bytes = std::fs::read(dir.join(format!("{stem}.record")))
                .ok()
                .and_then(|r| present_bytes(&r))
                .unwrap_or_else(|| e.metadata().map(|m| m.len()).unwrap_or(0));
            used += bytes;
            blobs.insert(
                stem.replacen('_', ":", 1),
                Entry {
                    bytes,
                    last_use: 0,
                    open: None,
                },
            );
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            capacity,
            high: (capacity as f64 * high) as u64,
            low: (capacity as f64 * low) as u64,
            inner: Mutex::new(Inner {
                used,
                clock: 0,
                blobs,
            }),
        });
        Ok(CacheDir { shared, unit })
    }

    /// The cache of blob `key` (a digest) of `size` bytes, in front of `origin`.
    pub fn blob<S: ReadAt + 'static>(
        &self,
        key: &str,
        size: u64,
        origin: S,
    ) -> Result<Arc<BlobCache<S>>> {
        let cache = BlobCache::open_in(
            &self.shared.dir,
            key,
            size,
            self.unit,
            origin,
            Some(self.shared.clone()),
        )?;
        let bytes = cache.cached_bytes();
        let weak: Weak<dyn Evict> = Arc::downgrade(&(cache.clone() as Arc<dyn Evict>));
        let mut g = self.shared.lock();
        g.clock += 1;
        let now = g.clock;
        let old = g.blobs.insert(
            key.to_string(),
            Entry {
                bytes,
                last_use: now,
                open: Some(weak),
            },
        );
        g.used = g.used - old.map_or(0, |e| e.bytes) + bytes;
        Ok(cache)
    }

    /// Whether this cache holds bytes of blob `key` recorded for a size of `size`. Its units
    /// were fetched with that size checked against the registry, so a config that gives the
    /// same size needs no registry round trip to confirm it.
    pub fn holds(&self, key: &str, size: u64) -> bool {
        if valid_key(key).is_err() {
            return false;
        }
        std::fs::read(blob_paths(&self.shared.dir, key).1)
            .ok()
            .and_then(|raw| record::decode(&raw, size, self.unit).ok())
            .is_some_and(|units| units.iter().any(|u| u.present))
    }

    /// Writes the record of every open blob that changed since its last checkpoint (the
    /// daemon calls this periodically, so a crash loses at most that period's record; the
    /// data it loses is fetched again). Returns the first error, after trying every blob.
    pub fn checkpoint_all(&self) -> Result<()> {
        let open: Vec<_> = self
            .shared
            .lock()
            .blobs
            .values()
            .filter_map(|e| e.open.as_ref().and_then(Weak::upgrade))
            .collect();
        let mut first = Ok(());
        for b in open {
            if let Err(e) = b.save() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Bytes the directory holds, by its accounting.
    pub fn used(&self) -> u64 {
        self.shared.lock().used
    }

    pub fn capacity(&self) -> u64 {
        self.shared.capacity
    }
}

/// Fuzz body: a record of any bytes decodes to an error or to units that fit the blob.
#[cfg(feature = "test-util")]
pub fn fuzz_record(data: &[u8]) {
    if let Ok(units) = record::decode(data, 1 << 20, 4096) {
        assert_eq!(units.len(), 256);
    }
    let _ = present_bytes(data);
}

fn present_bytes(raw: &[u8]) -> Option<u64> {
    let (size, unit, units) = record::decode_any(raw)?;
    let unit = unit as u64;
    Some(
        units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.present)
            .map(|(i, _)| (size - i as u64 * unit).min(unit))
            .sum(),
    )
}
