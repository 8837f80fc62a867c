//! A blob's cache in front of its origin: claim, fill and read refill units, drop them when
//! they fail a check above or are evicted, and save the record.

mod download;
mod readahead;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};

use zfile::source::read_full_at;
use zfile::ReadAt;

pub use download::DownloadOptions;
use readahead::Readahead;

use crate::dir::Shared;
use crate::record::{self, Unit};
use crate::stats::Stats;
use crate::{Error, Result, DEFAULT_READAHEAD, MAX_RUN};

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
pub(crate) trait Evict: Send + Sync {
    /// Drops every unit (uncounted in the directory as they go).
    fn evict(&self) -> Result<()>;
    fn save(&self) -> Result<()>;
    /// The object itself, for [`crate::CacheDir::blob`] to hand out again as its own type.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
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
    /// What a miss fetches around itself, aligned (bytes; a unit or less: the units it
    /// touches only).
    granule: AtomicU64,
    /// The whole blob is present and matched its digest.
    complete: AtomicBool,
    /// Bumped each time bytes from the origin are stored, before they can be read: the
    /// source's `generation` (shared by every cache object of this blob in a directory).
    fills: Arc<AtomicU64>,
    /// Set once this object is dropped and its record written: until then a [`CacheDir`]
    /// neither opens its files again nor deletes them.
    closed: Arc<AtomicBool>,
    /// Held while the record is written.
    writing: Mutex<()>,
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
pub(crate) fn blob_paths(dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    let name = key.replace(':', "_");
    (
        dir.join(format!("{name}.data")),
        dir.join(format!("{name}.record")),
    )
}

pub(crate) fn valid_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.len() > 200
        || !key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b":-_.".contains(&c))
        || key.starts_with('.')
    {
        return Err(Error::InvalidArgument(format!(
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

    pub(crate) fn open_in(
        dir: &Path,
        key: &str,
        size: u64,
        unit: u32,
        origin: S,
        shared: Option<Arc<Shared>>,
    ) -> Result<Arc<Self>> {
        valid_key(key)?;
        if unit == 0 || !unit.is_multiple_of(4096) {
            return Err(Error::InvalidArgument(format!(
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
        // A missing or damaged record means an empty cache: never a reason to fail. A record
        // of larger units (an older default) is split into this size's units.
        let raw = std::fs::read(&record_path).ok();
        let mut migrated = false;
        let units = raw
            .as_deref()
            .and_then(|raw| record::decode(raw, size, unit).ok())
            .or_else(|| {
                let split = split_units(raw.as_deref()?, &data, size, unit)?;
                migrated = true;
                Some(split)
            })
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
            dirty: migrated,
        };
        let fills = shared.as_ref().map(|d| d.fills(key)).unwrap_or_default();
        let granule = shared.as_ref().map_or(0, |d| d.granule());
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
            granule: AtomicU64::new(granule),
            complete: AtomicBool::new(false),
            fills,
            closed: Arc::default(),
            writing: Mutex::new(()),
            me: me.clone(),
        }))
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// What a read that misses fetches around itself: the aligned `bytes` (a multiple of the
    /// unit) holding it, absent units only. 0 (the default outside a [`CacheDir`]): the units
    /// the read touches. Larger granules fetch more per round trip; readers that know what
    /// they read ([`crate::without_readahead`]) always fetch their own units only.
    pub fn set_fetch_granule(&self, bytes: u64) {
        self.granule.store(bytes, Ordering::Relaxed);
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The source this cache fetches from.
    pub fn origin(&self) -> &S {
        &self.origin
    }

    pub(crate) fn closed_flag(&self) -> Arc<AtomicBool> {
        self.closed.clone()
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
        // One writer at a time, so that an older state never lands after a newer one (two
        // evictions, or an eviction and the periodic checkpoint, at once).
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let raw = {
            let mut st = self.lock();
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            encode_state(self.size, self.unit, &st)
        };
        write_record(&self.record_path, &raw).inspect_err(|_| self.lock().dirty = true)
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
        // Counted in the directory before the units can be seen (and evicted) by others.
        if let (Some(dir), true) = (&self.dir, added > 0) {
            dir.grew(&self.key, added);
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
        // Counted before the write: a reader that sees these units present reads the count
        // after it, so it never pairs new bytes with the old count.
        self.fills.fetch_add(1, Ordering::SeqCst);
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
        let (end, ahead) = if crate::readahead_off_here() {
            (offset + n as u64, None)
        } else {
            self.plan_readahead(offset, n as u64)
        };
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
        let (mut lo, mut hi) = (first, (end - 1) / self.unit);
        // A miss fetches the aligned granule around it (what one round trip is worth), unless
        // this reader knows exactly what it reads.
        let g = (self.granule.load(Ordering::Relaxed) / self.unit).max(1);
        if g > 1 && !crate::readahead_off_here() && self.any_missing(first, last) {
            let units = self.size.div_ceil(self.unit);
            lo = lo / g * g;
            hi = ((hi / g + 1) * g - 1).min(units - 1);
        }
        let added = self.ensure_range(lo, hi)?;
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

    fn any_missing(&self, first: u64, last: u64) -> bool {
        let st = self.lock();
        (first..=last).any(|u| !st.units[u as usize].unit.present)
    }

    /// After a read or a fill that added `added` bytes (already counted): its place in the
    /// LRU order, and eviction if the directory is over its high watermark.
    fn account(&self, added: u64) {
        if let Some(dir) = &self.dir {
            dir.touch(&self.key);
            if added > 0 {
                dir.make_room(&self.key);
            }
        }
    }
}

impl<S: ReadAt + 'static> BlobCache<S> {
    /// Drops the units covering `[offset, offset + len)`: because their bytes failed a check
    /// above (`failed`, counted in the stats) or to evict them. Returns the bytes freed (already
    /// uncounted in the directory).
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
            // Uncounted under the same lock as the units: a fill's count never crosses it.
            if let Some(dir) = &self.dir {
                dir.shrank(&self.key, freed);
            }
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
    fn generation(&self) -> Option<u64> {
        Some(self.fills.load(Ordering::SeqCst))
    }
    fn discard_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        // The origin learns too: a P2P-backed source refetches this range from the registry.
        self.origin.discard_cached(offset, len)?;
        self.drop_range(offset, len, true).map_err(Error::into_io)?;
        Ok(())
    }
}

impl<S: ReadAt + 'static> Evict for BlobCache<S> {
    fn evict(&self) -> Result<()> {
        self.drop_range(0, self.size, false)?;
        self.checkpoint()
    }
    fn save(&self) -> Result<()> {
        self.checkpoint()
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl<S> Drop for BlobCache<S> {
    fn drop(&mut self) {
        // Best effort: a lost record only costs refetches.
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if st.dirty {
            let _ = write_record(&self.record_path, &encode_state(self.size, self.unit, st));
        }
        self.closed.store(true, Ordering::Release);
    }
}

/// A record written with units that are a multiple of `unit` (for the same blob size), as
/// units of `unit`: each present old unit whose bytes still match its CRC becomes present
/// units with their own CRCs; the rest are absent. `None` when the record cannot be split.
fn split_units(raw: &[u8], data: &File, size: u64, unit: u32) -> Option<Vec<Unit>> {
    let (old_size, old_unit, old) = record::decode_any(raw)?;
    // (A unit over 64 MiB was never written here: not a record to trust with a buffer.)
    if old_size != size || old_unit <= unit || old_unit % unit != 0 || old_unit > 64 << 20 {
        return None;
    }
    let (unit, old_unit) = (unit as u64, old_unit as u64);
    let mut units = vec![Unit::default(); size.div_ceil(unit) as usize];
    let mut buf = Vec::new();
    for (i, u) in old.iter().enumerate().filter(|(_, u)| u.present) {
        let at = i as u64 * old_unit;
        buf.resize((size - at).min(old_unit) as usize, 0);
        let ok = read_full_at(data, at, &mut buf).is_ok_and(|n| n == buf.len())
            && crc32c::crc32c(&buf) == u.crc;
        if !ok {
            continue;
        }
        for (k, chunk) in buf.chunks(unit as usize).enumerate() {
            units[(at / unit) as usize + k] = Unit {
                present: true,
                crc: crc32c::crc32c(chunk),
            };
        }
    }
    Some(units)
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
