//! The sparse-file writable layer: one file, a 4096-byte header, then the virtual disk itself
//! stored sparsely (sector x at byte 4096 + 512·x). There is no log: the index is rebuilt from
//! the file's data/hole map when it is opened. Layout: `docs/format/lsmt.md`, "Sparse layer".
//!
//! The filesystem reports data in its own block size (4 KiB on ext4), so after a reopen a
//! 512-byte write claims its whole 4 KiB block; writes from a filesystem on the device are 4
//! KiB aligned and lose nothing, but in a stack a smaller write shadows the lower layers' data
//! in the rest of that block with zeros (overlaybd behaves the same).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::header::{flags, HeaderTrailer, Uuid, HT_SPACE};
use super::index0::Index0;
use super::mapping::{Mapping, MAX_LENGTH, SECTOR};
use super::ro::read_slot;
use crate::error::{Error, Result};

const BASE: u64 = HT_SPACE as u64;

#[derive(Debug)]
pub struct SparseLayer {
    file: File,
    path: PathBuf,
    header: HeaderTrailer,
    index: Mutex<Index0>,
}

fn seek(file: &File, at: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on a valid descriptor owned by `file`; no memory is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), at as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(r as u64))
}

impl SparseLayer {
    pub fn create(
        path: &Path,
        virtual_size: u64,
        uuid: Option<Uuid>,
        parent: Uuid,
    ) -> Result<Self> {
        if virtual_size == 0
            || !virtual_size.is_multiple_of(SECTOR)
            || virtual_size > super::rw::MAX_VIRTUAL_SIZE
        {
            return Err(Error::InvalidArgument(format!(
                "virtual size {virtual_size} must be a positive multiple of 512 of at most 2^59 bytes"
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io("create", path.display().to_string(), 0, e))?;
        super::rw::lock_file(&file, path, true)?;
        let header = HeaderTrailer::new(
            flags::HEADER | flags::DATA_FILE | flags::SPARSE_RW,
            virtual_size,
            uuid.unwrap_or_else(Uuid::random),
            parent,
        );
        file.write_all_at(&header.encode()?, 0)
            .map_err(|e| Error::io("write", path.display().to_string(), 0, e))?;
        file.set_len(BASE + virtual_size)
            .map_err(|e| Error::io("truncate", path.display().to_string(), 0, e))?;
        file.sync_all()
            .map_err(|e| Error::io("sync", path.display().to_string(), 0, e))?;
        Ok(SparseLayer {
            file,
            path: path.to_path_buf(),
            header,
            index: Mutex::new(Index0::new()),
        })
    }

    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path.display().to_string(), 0, e))?;
        super::rw::lock_file(&file, path, true)?;
        let header = read_slot(&file, 0, "sparse layer header")?;
        if !header.has(flags::HEADER) || !header.has(flags::SPARSE_RW) {
            return Err(Error::corrupt(
                "sparse layer header",
                format!("flags {:#x}: not a sparse layer", header.flags),
            ));
        }
        if header.virtual_size > super::rw::MAX_VIRTUAL_SIZE
            || !header.virtual_size.is_multiple_of(SECTOR)
        {
            return Err(Error::corrupt(
                "sparse layer header",
                format!("virtual size {}", header.virtual_size),
            ));
        }
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat", path.display().to_string(), 0, e))?
            .len();
        let end = size.min(BASE + header.virtual_size);
        let mut index = Index0::new();
        let mut at = BASE;
        let p = path.display().to_string();
        while at < end {
            let Some(begin) = seek(&file, at, libc::SEEK_DATA)
                .map_err(|e| Error::io("seek", p.clone(), at, e))?
            else {
                break;
            };
            if begin >= end {
                break;
            }
            let stop = seek(&file, begin, libc::SEEK_HOLE)
                .map_err(|e| Error::io("seek", p.clone(), begin, e))?
                .unwrap_or(end)
                .min(end);
            // Data regions are block aligned; sector-align defensively.
            let (b, e) = (
                begin / SECTOR * SECTOR,
                stop.next_multiple_of(SECTOR).min(end),
            );
            let mut s = (b - BASE) / SECTOR;
            let last = (e - BASE) / SECTOR;
            while s < last {
                let n = (last - s).min(MAX_LENGTH as u64);
                index.insert(Mapping::data(s, n as u32, s + BASE / SECTOR));
                s += n;
            }
            at = stop.max(begin + 1);
        }
        Ok(SparseLayer {
            file,
            path: path.to_path_buf(),
            header,
            index: Mutex::new(index),
        })
    }

    pub fn header(&self) -> &HeaderTrailer {
        &self.header
    }

    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn check(&self, offset: u64, len: u64, what: &str) -> Result<()> {
        super::rw::check_request(offset, len, self.header.virtual_size, what)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index0> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check(offset, buf.len() as u64, "write")?;
        self.file
            .write_all_at(buf, BASE + offset)
            .map_err(|e| Error::io("write", self.path.display().to_string(), BASE + offset, e))?;
        let mut idx = self.lock();
        let mut done = 0u64;
        while done < buf.len() as u64 {
            let n = (buf.len() as u64 - done).min(MAX_LENGTH as u64 * SECTOR);
            let s = (offset + done) / SECTOR;
            idx.insert(Mapping::data(s, (n / SECTOR) as u32, s + BASE / SECTOR));
            done += n;
        }
        Ok(())
    }

    /// Punches a hole: the range reads as zeros and its space is freed. A hole means "not
    /// written here", so after a reopen lower layers show through it again: in a stack, use
    /// [`super::Stack::trim`], which writes zeros where lower layers hold data.
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len, "trim")?;
        // SAFETY: fallocate on a descriptor owned by `self.file`; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (BASE + offset) as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 {
            return Err(Error::io(
                "punch hole in",
                self.path.display().to_string(),
                BASE + offset,
                std::io::Error::last_os_error(),
            ));
        }
        let mut idx = self.lock();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(MAX_LENGTH as u64 * SECTOR);
            let s = (offset + done) / SECTOR;
            idx.insert(Mapping::zeroes(s, (n / SECTOR) as u32, s + BASE / SECTOR));
            done += n;
        }
        Ok(())
    }

    /// Writes zeros over `[offset, offset + len)`: unlike [`SparseLayer::trim`], the range stays
    /// allocated, so it keeps hiding lower layers after a reopen.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len, "write zeroes")?;
        let zeros = vec![0u8; (len.min(1 << 20)) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write(offset + done, &zeros[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("sync", self.path.display().to_string(), 0, e))
    }

    pub fn overlapping(&self, begin: u64, end: u64) -> Vec<Mapping> {
        self.lock().overlapping(begin, end).collect()
    }

    pub fn mappings(&self) -> Vec<Mapping> {
        self.lock().dump()
    }
}
