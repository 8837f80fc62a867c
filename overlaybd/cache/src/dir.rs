//! A cache directory shared by many blobs: a capacity, and LRU eviction of whole blobs
//! between watermarks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use zfile::ReadAt;

use crate::blob::{blob_paths, valid_key, BlobCache, Evict};
use crate::record;
use crate::{Error, Result};

struct Entry {
    bytes: u64,
    last_use: u64,
    /// The cache object over the files, while one is open or closing.
    open: Option<OpenObject>,
}

struct OpenObject {
    object: Weak<dyn Evict>,
    /// Set by the object's drop once its record is written.
    closed: Arc<AtomicBool>,
}

/// Where the files of a blob stand.
enum Files {
    /// A cache object is open over them.
    Open(Arc<dyn Evict>),
    /// Its object is being dropped (its record not yet written): neither open nor delete.
    Closing,
    /// No object: free to open or to delete.
    Closed,
}

struct Inner {
    used: u64,
    clock: u64,
    blobs: HashMap<String, Entry>,
}

impl Inner {
    fn files(&self, key: &str) -> Files {
        let Some(open) = self.blobs.get(key).and_then(|e| e.open.as_ref()) else {
            return Files::Closed;
        };
        match open.object.upgrade() {
            Some(o) => Files::Open(o),
            None if open.closed.load(Ordering::Acquire) => Files::Closed,
            None => Files::Closing,
        }
    }
}

pub(crate) struct Shared {
    dir: PathBuf,
    capacity: u64,
    high: u64,
    low: u64,
    inner: Mutex<Inner>,
    /// Fill counters by blob key, handed to every cache object opened for that key (so a fill
    /// through one shows in the generation of all), never removed (so a count never restarts).
    fills: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// The fetch granule of blobs opened here ([`BlobCache::set_fetch_granule`]).
    granule: AtomicU64,
    /// The directory's lock, held while any handle or blob of it lives.
    _lock: std::fs::File,
}

/// Takes `dir/.lock` exclusively: one writer per cache directory, since the units' states,
/// the records and the generations (which let readers skip digests) live in that writer.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let p = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io("open", p.display().to_string(), 0, e))?;
    // SAFETY: flock on a descriptor `f` owns; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Error::InvalidArgument(format!(
                "cache directory {} is in use (by another process, or another CacheDir here)",
                dir.display()
            ))
        } else {
            Error::io("lock", p.display().to_string(), 0, e)
        });
    }
    Ok(f)
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn granule(&self) -> u64 {
        self.granule.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The fill counter of blob `key`.
    pub(crate) fn fills(&self, key: &str) -> Arc<AtomicU64> {
        let mut f = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        f.entry(key.to_string()).or_default().clone()
    }

    pub(crate) fn touch(&self, key: &str) {
        let mut g = self.lock();
        g.clock += 1;
        let now = g.clock;
        if let Some(e) = g.blobs.get_mut(key) {
            e.last_use = now;
        }
    }

    pub(crate) fn shrank(&self, key: &str, bytes: u64) {
        let mut g = self.lock();
        g.used = g.used.saturating_sub(bytes);
        if let Some(e) = g.blobs.get_mut(key) {
            e.bytes = e.bytes.saturating_sub(bytes);
        }
    }

    /// Counts `bytes` more of blob `key` (called under the blob's unit lock, like
    /// [`Shared::shrank`], so the count moves with the units).
    pub(crate) fn grew(&self, key: &str, bytes: u64) {
        let mut g = self.lock();
        g.used += bytes;
        if let Some(e) = g.blobs.get_mut(key) {
            e.bytes += bytes;
        }
    }

    /// Evicts least recently used blobs (never `key`, the one growing) down to the low
    /// watermark once the count is over the high one.
    pub(crate) fn make_room(&self, key: &str) {
        let victims = {
            let g = self.lock();
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
                victims.push((k.clone(), e.open.as_ref().and_then(|o| o.object.upgrade())));
            }
            victims
        };
        for (k, open) in victims {
            match open {
                // Uncounted by its drop of the units.
                Some(blob) => {
                    let _ = blob.evict();
                }
                None => {
                    // Closed when chosen: its files go under the lock, unless it was opened
                    // again since ([`CacheDir::blob`] opens files under the same lock) or its
                    // object is still writing its record.
                    let mut g = self.lock();
                    if !matches!(g.files(&k), Files::Closed) {
                        continue;
                    }
                    let (data, record) = blob_paths(&self.dir, &k);
                    let len = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
                    let _ = std::fs::remove_file(record);
                    let _ = std::fs::remove_file(&data);
                    let freed = g.blobs.remove(&k).map_or(len, |e| e.bytes);
                    g.used = g.used.saturating_sub(freed);
                }
            }
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
            return Err(Error::InvalidArgument(format!(
                "watermarks {low}..{high}: need 0 < low ≤ high ≤ 1"
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("create", dir.display().to_string(), 0, e))?;
        let lock = lock_dir(dir)?;
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
            fills: Mutex::default(),
            granule: AtomicU64::new(0),
            _lock: lock,
        });
        Ok(CacheDir { shared, unit })
    }

    /// The cache of blob `key` (a digest) of `size` bytes, in front of `origin`. While one is
    /// open for this key (same origin type and size, e.g. a layer two images share), that one
    /// is returned and `origin` is dropped: one object per data file, so that its units, fills,
    /// evictions and record are never out of step with another's.
    pub fn blob<S: ReadAt + 'static>(
        &self,
        key: &str,
        size: u64,
        origin: S,
    ) -> Result<Arc<BlobCache<S>>> {
        let mut g = loop {
            let mut g = self.shared.lock();
            g.clock += 1;
            let now = g.clock;
            match g.files(key) {
                Files::Open(object) => {
                    let open = Self::downcast::<S>(object, key, size)?;
                    if let Some(e) = g.blobs.get_mut(key) {
                        e.last_use = now;
                    }
                    return Ok(open);
                }
                // Its record is being written: read it once written.
                Files::Closing => {
                    drop(g);
                    std::thread::yield_now();
                }
                Files::Closed => break g,
            }
        };
        let now = g.clock;
        // The files are opened under the lock: an eviction deletes a closed blob's files under
        // it too, so they cannot go between this open and the entry that marks them open.
        let cache = BlobCache::open_in(
            &self.shared.dir,
            key,
            size,
            self.unit,
            origin,
            Some(self.shared.clone()),
        )?;
        let bytes = cache.cached_bytes();
        let object: Weak<dyn Evict> = Arc::downgrade(&(cache.clone() as Arc<dyn Evict>));
        let old = g.blobs.insert(
            key.to_string(),
            Entry {
                bytes,
                last_use: now,
                open: Some(OpenObject {
                    object,
                    closed: cache.closed_flag(),
                }),
            },
        );
        g.used = g.used.saturating_sub(old.map_or(0, |e| e.bytes)) + bytes;
        Ok(cache)
    }

    /// The open cache object of `key` as its own type. One open with another size (or origin
    /// type) is an error: a second object would resize the data file under the first.
    fn downcast<S: ReadAt + 'static>(
        object: Arc<dyn Evict>,
        key: &str,
        size: u64,
    ) -> Result<Arc<BlobCache<S>>> {
        match object.into_any().downcast::<BlobCache<S>>() {
            Ok(c) if c.size().ok() == Some(size) => Ok(c),
            Ok(c) => Err(Error::InvalidArgument(format!(
                "blob {key} is open at {} bytes; asked for {size}",
                c.size().unwrap_or(0)
            ))),
            Err(_) => Err(Error::InvalidArgument(format!(
                "blob {key} is open over another kind of origin"
            ))),
        }
    }

    /// The fetch granule of the blobs opened from now on ([`BlobCache::set_fetch_granule`]).
    pub fn set_fetch_granule(&self, bytes: u64) {
        self.shared
            .granule
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
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
            .filter_map(|e| e.open.as_ref().and_then(|o| o.object.upgrade()))
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
