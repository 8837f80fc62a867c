//! The append-only writable layer: a data file that only grows and an index file that logs
//! one 16-byte mapping per write or trim. Layout: `docs/format/lsmt.md`, "Writable layer".
//!
//! Writers reserve space at the end of the data file under a short lock, write their data
//! without it, then log the mapping and publish it in the in-memory index. A mapping is
//! therefore visible (and logged) only after its data is in the file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::header::{flags, HeaderTrailer, Uuid, HT_SPACE};
use super::index0::Index0;
use super::mapping::{decode_all, encode_all, Mapping, MAPPING_BYTES, MAX_LENGTH, SECTOR};
use super::ro::{read_slot, MAX_INDEX_ENTRIES};
use crate::error::{Error, Result};

/// Largest write recorded as one extent (overlaybd's `MAX_IO_SIZE`); larger writes are split.
pub const MAX_IO_SIZE: u64 = 4 << 20;

#[derive(Debug)]
struct State {
    /// Next append position in the data file (bytes, sector aligned).
    data_end: u64,
    /// End of the furthest completed write: what a trim records as its position. Space
    /// reserved by a write still in flight (or one that failed) is not counted, so a flushed
    /// trim never points past the end of a data file that survived a crash.
    written_end: u64,
    /// Bytes of the index file.
    log_end: u64,
    index: Index0,
}

/// An open append-only writable layer.
#[derive(Debug)]
pub struct RwLayer {
    data: File,
    log: File,
    data_path: PathBuf,
    header: HeaderTrailer,
    state: Mutex<State>,
    read_only: bool,
}

/// Largest virtual size: offsets are 50-bit sector numbers.
pub const MAX_VIRTUAL_SIZE: u64 = (1 << 50) * SECTOR;

fn check_vsize(vsize: u64, what: &str) -> Result<()> {
    if vsize == 0 || !vsize.is_multiple_of(SECTOR) || vsize > MAX_VIRTUAL_SIZE {
        return Err(Error::InvalidArgument(format!(
            "{what}: virtual size {vsize} must be a positive multiple of 512 of at most 2^59 bytes"
        )));
    }
    Ok(())
}

/// Takes an advisory lock on a layer file: exclusive for writers, shared for readers.
pub(crate) fn lock_file(file: &File, path: &Path, exclusive: bool) -> Result<()> {
    use std::os::fd::AsRawFd;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    // SAFETY: flock on a descriptor owned by `file`; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Error::InUse(path.to_path_buf())
        } else {
            Error::io("lock", path.display().to_string(), 0, e)
        });
    }
    Ok(())
}

/// Does the file end with a sealed trailer (a writable layer that was sealed in place)?
fn is_sealed(data: &File) -> Result<bool> {
    let size = data
        .metadata()
        .map_err(|e| Error::io("stat", "writable layer data", 0, e))?
        .len();
    if size < 2 * HT_SPACE as u64 {
        return Ok(false);
    }
    Ok(match read_slot(data, size - HT_SPACE as u64, "trailer") {
        Ok(t) => !t.has(flags::HEADER) && t.has(flags::SEALED),
        Err(_) => false,
    })
}

/// Replays a writable layer's log (the entries after the index file's header) into an index.
/// Stops at the first entry whose data is not (fully) inside the `data_sectors` of the data
/// file, or that is malformed; `kept` counts the entries before that point.
#[derive(Debug)]
pub struct Replay {
    pub index: Index0,
    pub kept: u64,
    data_sectors: u64,
    stopped: bool,
}

impl Replay {
    pub fn new(data_sectors: u64) -> Self {
        Replay {
            index: Index0::new(),
            kept: 0,
            data_sectors,
            stopped: false,
        }
    }

    /// Feeds whole entries; returns false once replay has stopped.
    pub fn feed(&mut self, raw: &[u8]) -> bool {
        if self.stopped {
            return false;
        }
        for m in decode_all(raw) {
            if !m.is_invalid() {
                let present = if m.zeroed {
                    m.moffset <= self.data_sectors
                } else {
                    m.mend() <= self.data_sectors
                };
                if !present
                    || m.length == 0
                    || m.length > MAX_LENGTH
                    || m.moffset < HT_SPACE as u64 / SECTOR
                {
                    self.stopped = true;
                    return false;
                }
                self.index.insert(Mapping { tag: 0, ..m });
            }
            self.kept += 1;
        }
        true
    }
}

/// Checks a write or trim: 512-byte aligned and inside the virtual disk.
pub(crate) fn check_request(offset: u64, len: u64, virtual_size: u64, what: &str) -> Result<()> {
    if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
        return Err(Error::OutOfRange(format!(
            "{what} of {len} bytes at {offset}: offset and length must be multiples of 512"
        )));
    }
    if offset.checked_add(len).is_none_or(|e| e > virtual_size) {
        return Err(Error::OutOfRange(format!(
            "{what} of {len} bytes at {offset} goes past the virtual size {virtual_size}"
        )));
    }
    Ok(())
}

fn open_file(path: &Path, create: bool, write: bool) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(write);
    if create {
        o.create_new(true);
    }
    let f = o.open(path).map_err(|e| {
        Error::io(
            if create { "create" } else { "open" },
            path.display().to_string(),
            0,
            e,
        )
    })?;
    lock_file(&f, path, write)?;
    Ok(f)
}

impl RwLayer {
    /// Creates the two files (which must not exist) for a disk of `virtual_size` bytes.
    pub fn create(
        data_path: &Path,
        index_path: &Path,
        virtual_size: u64,
        uuid: Option<Uuid>,
        parent: Uuid,
    ) -> Result<Self> {
        check_vsize(virtual_size, "create")?;
        let uuid = uuid.unwrap_or_else(Uuid::random);
        let header =
            HeaderTrailer::new(flags::HEADER | flags::DATA_FILE, virtual_size, uuid, parent);
        let data = open_file(data_path, true, true)?;
        data.write_all_at(&header.encode()?, 0)
            .map_err(|e| Error::io("write", data_path.display().to_string(), 0, e))?;
        let mut ih = HeaderTrailer::new(flags::HEADER, virtual_size, uuid, parent);
        ih.index_offset = HT_SPACE as u64;
        let log = open_file(index_path, true, true)?;
        log.write_all_at(&ih.encode()?, 0)
            .map_err(|e| Error::io("write", index_path.display().to_string(), 0, e))?;
        let layer = RwLayer {
            data,
            log,
            data_path: data_path.to_path_buf(),
            header,
            state: Mutex::new(State {
                data_end: HT_SPACE as u64,
                written_end: HT_SPACE as u64,
                log_end: HT_SPACE as u64,
                index: Index0::new(),
            }),
            read_only: false,
        };
        layer.flush()?;
        Ok(layer)
    }

    /// Opens existing files and replays the log. Replay stops at the first entry whose data is
    /// not (fully) in the data file, or at a torn entry; the log is cut there so that later
    /// appends can never revive it. Everything flushed before a crash survives.
    pub fn open(data_path: &Path, index_path: &Path) -> Result<Self> {
        Self::open_mode(data_path, index_path, false)
    }

    /// Opens for reading only (to commit or inspect a layer): the files are not modified, and a
    /// layer that another process has open for writing is refused.
    pub fn open_read_only(data_path: &Path, index_path: &Path) -> Result<Self> {
        Self::open_mode(data_path, index_path, true)
    }

    fn open_mode(data_path: &Path, index_path: &Path, read_only: bool) -> Result<Self> {
        let data = open_file(data_path, false, !read_only)?;
        let log = open_file(index_path, false, !read_only)?;
        let header = read_slot(&data, 0, "writable layer data header")?;
        if !header.has(flags::HEADER)
            || !header.has(flags::DATA_FILE)
            || header.has(flags::SPARSE_RW)
        {
            return Err(Error::corrupt(
                "writable layer data header",
                format!("flags {:#x}", header.flags),
            ));
        }
        check_vsize(header.virtual_size, "writable layer data header")?;
        if header.has(flags::SEALED) || is_sealed(&data)? {
            return Err(Error::Unsupported(format!(
                "{} is sealed: open it as a read-only layer",
                data_path.display()
            )));
        }
        let ih = read_slot(&log, 0, "writable layer index header")?;
        if !ih.has(flags::HEADER) || ih.has(flags::DATA_FILE) || ih.has(flags::SEALED) {
            return Err(Error::corrupt(
                "writable layer index header",
                format!("flags {:#x}", ih.flags),
            ));
        }
        if ih.index_offset != HT_SPACE as u64 {
            return Err(Error::corrupt(
                "writable layer index header",
                format!("index_offset {}", ih.index_offset),
            ));
        }
        let data_size = data
            .metadata()
            .map_err(|e| Error::io("stat", data_path.display().to_string(), 0, e))?
            .len();
        let log_size = log
            .metadata()
            .map_err(|e| Error::io("stat", index_path.display().to_string(), 0, e))?
            .len();
        let entries = (log_size.saturating_sub(HT_SPACE as u64)) / MAPPING_BYTES as u64;
        if entries > MAX_INDEX_ENTRIES {
            return Err(Error::corrupt(
                "writable layer index",
                format!("{entries} entries exceed {MAX_INDEX_ENTRIES}"),
            ));
        }
        let mut replay = Replay::new(data_size / SECTOR);
        let mut raw = vec![0u8; 1 << 20];
        let mut at = HT_SPACE as u64;
        let end = HT_SPACE as u64 + entries * MAPPING_BYTES as u64;
        while at < end {
            let n = ((end - at) as usize).min(raw.len());
            log.read_exact_at(&mut raw[..n], at)
                .map_err(|e| Error::io("read", index_path.display().to_string(), at, e))?;
            if !replay.feed(&raw[..n]) {
                break;
            }
            at += n as u64;
        }
        let (index, kept) = (replay.index, replay.kept);
        let log_end = HT_SPACE as u64 + kept * MAPPING_BYTES as u64;
        if log_end < log_size && !read_only {
            log.set_len(log_end)
                .map_err(|e| Error::io("truncate", index_path.display().to_string(), log_end, e))?;
        }
        let data_end = data_size.next_multiple_of(SECTOR).max(HT_SPACE as u64);
        Ok(RwLayer {
            data,
            log,
            data_path: data_path.to_path_buf(),
            header,
            state: Mutex::new(State {
                data_end,
                written_end: (data_size / SECTOR * SECTOR).max(HT_SPACE as u64),
                log_end,
                index,
            }),
            read_only,
        })
    }

    pub fn header(&self) -> &HeaderTrailer {
        &self.header
    }

    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    /// The data file, for reading extents.
    pub fn data_file(&self) -> &File {
        &self.data
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only fully applied updates (each is one
        // insert), so the state stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log_entry(&self, st: &mut State, m: &Mapping) -> Result<()> {
        self.log
            .write_all_at(&m.encode(), st.log_end)
            .map_err(|e| Error::io("append", "writable layer index", st.log_end, e))?;
        st.log_end += MAPPING_BYTES as u64;
        st.index.insert(*m);
        Ok(())
    }

    fn check_writable(&self, offset: u64, len: u64, what: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(format!(
                "{what}: {} is open read-only",
                self.data_path.display()
            )));
        }
        check_request(offset, len, self.header.virtual_size, what)
    }

    /// Writes `buf` at byte `offset` of the virtual disk (both 512-byte aligned).
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_writable(offset, buf.len() as u64, "write")?;
        for (i, piece) in buf.chunks(MAX_IO_SIZE as usize).enumerate() {
            let off = offset + i as u64 * MAX_IO_SIZE;
            let pos = {
                let mut st = self.lock();
                let pos = st.data_end;
                st.data_end += piece.len() as u64;
                pos
            };
            self.data
                .write_all_at(piece, pos)
                .map_err(|e| Error::io("write", self.data_path.display().to_string(), pos, e))?;
            let m = Mapping::data(
                off / SECTOR,
                (piece.len() as u64 / SECTOR) as u32,
                pos / SECTOR,
            );
            let mut st = self.lock();
            st.written_end = st.written_end.max(pos + piece.len() as u64);
            self.log_entry(&mut st, &m)?;
        }
        Ok(())
    }

    /// Discards `[offset, offset + len)`: it reads as zeros from now on. The zeroed extent
    /// records the end of the furthest completed write as its position.
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable(offset, len, "trim")?;
        let mut st = self.lock();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_LENGTH as u64 * SECTOR);
            let m = Mapping::zeroes(
                (offset + done) / SECTOR,
                (n / SECTOR) as u32,
                st.written_end / SECTOR,
            );
            self.log_entry(&mut st, &m)?;
            done += n;
        }
        Ok(())
    }

    /// Makes every completed write and trim durable.
    pub fn flush(&self) -> Result<()> {
        self.data
            .sync_data()
            .map_err(|e| Error::io("sync", self.data_path.display().to_string(), 0, e))?;
        self.log
            .sync_data()
            .map_err(|e| Error::io("sync", "writable layer index", 0, e))
    }

    /// Extents overlapping sectors `[begin, end)`, cut to them.
    pub fn overlapping(&self, begin: u64, end: u64) -> Vec<Mapping> {
        self.lock().index.overlapping(begin, end).collect()
    }

    /// The whole index, sorted.
    pub fn mappings(&self) -> Vec<Mapping> {
        self.lock().index.dump()
    }

    /// Sectors of data the index references.
    pub fn allocated_sectors(&self) -> u64 {
        self.lock().index.allocated_sectors()
    }

    /// Seals in place: appends the sorted index (zero-padded to 512 bytes) and a trailer to
    /// the data file, which becomes a read-only layer. The index file is no longer needed.
    pub fn seal(self) -> Result<u64> {
        if self.read_only {
            return Err(Error::ReadOnly(format!(
                "seal: {} is open read-only",
                self.data_path.display()
            )));
        }
        let st = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let maps = st.index.dump();
        let mut bytes = encode_all(&maps);
        bytes.resize(bytes.len().next_multiple_of(SECTOR as usize), 0);
        let index_offset = st.data_end;
        let path = self.data_path.display().to_string();
        self.data
            .write_all_at(&bytes, index_offset)
            .map_err(|e| Error::io("write", path.clone(), index_offset, e))?;
        let mut trailer = HeaderTrailer::new(
            flags::DATA_FILE | flags::SEALED,
            self.header.virtual_size,
            self.header.uuid.unwrap_or(Uuid::NIL),
            self.header.parent_uuid.unwrap_or(Uuid::NIL),
        );
        trailer.index_offset = index_offset;
        trailer.index_size = maps.len() as u64;
        let at = index_offset + bytes.len() as u64;
        self.data
            .write_all_at(&trailer.encode()?, at)
            .map_err(|e| Error::io("write", path.clone(), at, e))?;
        let end = at + HT_SPACE as u64;
        self.data
            .set_len(end)
            .map_err(|e| Error::io("truncate", path.clone(), end, e))?;
        self.data
            .sync_all()
            .map_err(|e| Error::io("sync", path, 0, e))?;
        Ok(end)
    }
}
