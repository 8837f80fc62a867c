//! The work disk: the whole virtual disk of the image converted so far, as one sparse file, and
//! the set of 4 KiB blocks written since the last layer was cut. A layer's diff is exactly the
//! blocks written while its tar was applied (and, for layer 0, while the filesystem was made),
//! which is what an LSMT writable layer on top of the previous layers would have recorded.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use overlaybd_lsmt::Mapping;

use crate::extfs::DiskIo;

/// Granularity of the dirty map (ext4's block size).
pub const BLOCK: u64 = 4096;
const SECTOR: u64 = 512;
/// Longest extent handed to commit (it cuts pieces itself; this keeps each read bounded).
const MAX_RUN_BLOCKS: u64 = 2048;

#[derive(Debug)]
pub struct WorkDisk {
    file: File,
    path: PathBuf,
    size: u64,
    dirty: Vec<u64>,
    /// TurboOCI: blocks declared as remote data since the last cut: block → (first sector in
    /// the tar, sectors mapped).
    remote: BTreeMap<u64, (u64, u32)>,
}

impl WorkDisk {
    /// A new all-zero disk of `size` bytes (a multiple of 4 KiB) at `path`.
    pub fn create(path: &Path, size: u64) -> io::Result<WorkDisk> {
        if size == 0 || !size.is_multiple_of(BLOCK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("virtual size {size} must be a positive multiple of 4096"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        let words = (size / BLOCK).div_ceil(64) as usize;
        Ok(WorkDisk {
            file,
            path: path.to_path_buf(),
            size,
            dirty: vec![0; words],
            remote: BTreeMap::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn check(&self, off: u64, len: usize) -> io::Result<()> {
        if off.checked_add(len as u64).is_none_or(|e| e > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at {off} are past the end of the {}-byte disk",
                    self.size
                ),
            ));
        }
        Ok(())
    }

    /// Marks `[off, off+len)` as written.
    pub fn mark(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = off / BLOCK;
        let last = (off + len - 1) / BLOCK;
        for b in first..=last.min(self.size / BLOCK - 1) {
            self.dirty[(b / 64) as usize] |= 1 << (b % 64);
        }
    }

    /// Marks every data extent of the file (after a tool such as mke2fs wrote it directly).
    pub fn mark_file_extents(&mut self) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let mut pos = 0u64;
        while pos < self.size {
            // SAFETY: lseek on our own open descriptor; no memory is passed.
            let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    break;
                }
                return Err(e);
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(io::Error::last_os_error());
            }
            let (d, h) = (data as u64, (hole as u64).min(self.size));
            self.mark(d, h - d);
            pos = h;
        }
        Ok(())
    }

    /// The written blocks as sorted LSMT extents whose data is at the same offset of
    /// [`WorkDisk::file`], and clears the map.
    pub fn take_dirty(&mut self) -> Vec<Mapping> {
        let mut out = Vec::new();
        let blocks = self.size / BLOCK;
        let mut b = 0u64;
        while b < blocks {
            let w = self.dirty[(b / 64) as usize];
            if w == 0 {
                b = (b / 64 + 1) * 64;
                continue;
            }
            if w & (1 << (b % 64)) == 0 {
                b += 1;
                continue;
            }
            let start = b;
            while b < blocks
                && b - start < MAX_RUN_BLOCKS
                && self.dirty[(b / 64) as usize] & (1 << (b % 64)) != 0
            {
                b += 1;
            }
            let sectors = (b - start) * (BLOCK / SECTOR);
            out.push(Mapping::data(
                start * (BLOCK / SECTOR),
                sectors as u32,
                start * (BLOCK / SECTOR),
            ));
        }
        self.dirty.iter_mut().for_each(|w| *w = 0);
        out
    }
}

impl WorkDisk {
    fn is_dirty(&self, b: u64) -> bool {
        self.dirty[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    /// TurboOCI's cut: the written blocks (tag 0, data at the same offset of the work file),
    /// the remote blocks (tag 1, `moffset` = the sector in the tar) and, where a file's last
    /// block is mapped only in part, zeroes for the rest of it (so the disk shows zeros past a
    /// file's end, not stale bytes). A block written after it was declared remote is metadata
    /// again: the write wins. Sorted; clears the maps.
    pub fn take_warp(&mut self) -> Vec<Mapping> {
        let spb = BLOCK / SECTOR;
        let mut out = Vec::with_capacity(self.remote.len());
        for (&b, &(tar_sector, n)) in &self.remote {
            if self.is_dirty(b) {
                continue;
            }
            out.push(Mapping {
                tag: 1,
                ..Mapping::data(b * spb, n, tar_sector)
            });
            if (n as u64) < spb {
                out.push(Mapping::zeroes(
                    b * spb + n as u64,
                    (spb - n as u64) as u32,
                    0,
                ));
            }
        }
        self.remote.clear();
        out.extend(self.take_dirty());
        out.sort_by_key(|m| m.offset);
        out
    }
}

impl DiskIo for WorkDisk {
    fn declare_remote(&mut self, block: u64, sectors: u32, tar_sector: u64) -> io::Result<()> {
        if block >= self.size / BLOCK || sectors == 0 || sectors as u64 > BLOCK / SECTOR {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{sectors} sectors of block {block} of a {}-byte disk",
                    self.size
                ),
            ));
        }
        self.dirty[(block / 64) as usize] &= !(1 << (block % 64));
        self.remote.insert(block, (tar_sector, sectors));
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.write_all_at(buf, offset)?;
        self.mark(offset, buf.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_blocks_come_back_as_sorted_merged_extents() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = WorkDisk::create(&dir.path().join("disk"), 64 << 20).unwrap();
        d.write_at(4096 * 3 + 100, &[1; 10]).unwrap();
        d.write_at(4096 * 4, &[2; 4096 * 2]).unwrap();
        d.write_at(4096 * 100, &[3; 1]).unwrap();
        d.write_at(4096 * 63, &[4; 4096 * 2]).unwrap(); // across a bitmap word
        let m = d.take_dirty();
        let spans: Vec<(u64, u32)> = m.iter().map(|m| (m.offset / 8, m.length / 8)).collect();
        assert_eq!(spans, vec![(3, 3), (63, 2), (100, 1)]);
        assert!(m.iter().all(|m| m.moffset == m.offset && !m.zeroed));
        assert!(d.take_dirty().is_empty());
        assert!(d.write_at((64 << 20) - 1, &[0; 2]).is_err());
    }

    #[test]
    fn remote_blocks_unless_written_later_and_zeroed_tails() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = WorkDisk::create(&dir.path().join("disk"), 64 << 20).unwrap();
        d.write_at(4096 * 10, &[1; 4096]).unwrap();
        d.declare_remote(10, 8, 100).unwrap(); // metadata block reused for data: data wins
        d.declare_remote(11, 3, 108).unwrap(); // a last block, 3 sectors of it
        d.declare_remote(20, 8, 500).unwrap();
        d.write_at(4096 * 20, &[2; 10]).unwrap(); // data block reused for metadata: write wins
        d.write_at(4096 * 30, &[3; 10]).unwrap();
        assert!(d.declare_remote(1 << 20, 8, 0).is_err());
        assert!(d.declare_remote(5, 9, 0).is_err());
        let m: Vec<(u64, u32, u64, bool, u8)> = d
            .take_warp()
            .iter()
            .map(|m| (m.offset, m.length, m.moffset, m.zeroed, m.tag))
            .collect();
        assert_eq!(
            m,
            vec![
                (80, 8, 100, false, 1),
                (88, 3, 108, false, 1),
                (91, 5, 0, true, 0),
                (160, 8, 160, false, 0),
                (240, 8, 240, false, 0),
            ]
        );
        assert!(d.take_warp().is_empty());
    }
}
