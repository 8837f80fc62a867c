//! EROFS layers (`--fs erofs`): each layer's tar is built into the image of the layers below
//! by erofs-utils' `mkfs.erofs` (1.9 or later: `--incremental`, and PAX times read right) in
//! tar mode, data copied
//! in (a native layer, not TurboOCI's tar index), whiteouts and opaque directories merged away
//! (`--aufs --ovlfs-strip=1`): the image is always the merged tree, which the kernel mounts
//! read-only. An incremental build appends new metadata and data after the old image's end and
//! rewrites the superblock and a few blocks below it; the blocks that differ from the work disk
//! are the layer's diff, written onto the work disk so that the cut and commit are ext4's.
//!
//! Why the tool, not a library: erofs-utils is what overlaybd links (its TurboOCI EROFS meta
//! layers come from the same incremental tar build), the kernel's own project writes it, and
//! Debian packages it. Debian 12 has 1.5 (no `--incremental`): `scripts/lib.sh`
//! (`need_erofs_utils`) builds Debian unstable's (1.9.4 now) into a private prefix.
//!
//! A known limit of erofs-utils (1.9.4 too): an incremental build fails on a hard link to a
//! file of a lower layer (such images convert as ext4).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod tree;
pub use tree::tree_of_erofs;

use crate::disk::{WorkDisk, BLOCK};
use crate::error::{Error, Result};
use crate::extfs::DiskIo;

/// `mkfs.erofs` to run: `$OBD_MKFS_EROFS`, else the one in `PATH`.
pub fn tool() -> PathBuf {
    std::env::var_os("OBD_MKFS_EROFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("mkfs.erofs"))
}

/// Checks that `mkfs.erofs` runs and is 1.9 or later.
pub fn check_tool() -> Result<()> {
    let t = tool();
    let out = Command::new(&t).arg("--version").output().map_err(|e| {
        Error::Tool(format!(
            "run {} (EROFS layers need erofs-utils 1.8 or later; OBD_MKFS_EROFS names it): {e}",
            t.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .find_map(|w| {
            let mut p = w.split('.').map(|n| n.parse::<u32>().ok());
            Some((p.next()??, p.next()??))
        })
        .ok_or_else(|| Error::Tool(format!("{}: no version in {text:?}", t.display())))?;
    if version < (1, 9) {
        return Err(Error::Tool(format!(
            "{} is erofs-utils {}.{}: EROFS layers need 1.9 or later (1.8 has `--incremental` \
             but reads a PAX mtime of 1700000000.25 as 25 ns; scripts/lib.sh's \
             need_erofs_utils builds 1.9)",
            t.display(),
            version.0,
            version.1
        )));
    }
    Ok(())
}

/// A ustar header for the directory `./` with this mode, owner and time.
fn root_entry(mode: u32, uid: u32, gid: u32, mtime: i64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..2].copy_from_slice(b"./");
    let octal = |h: &mut [u8], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, (mode & 0o7777) as u64);
    octal(&mut h, 108, 8, (uid as u64).min(0o7777777));
    octal(&mut h, 116, 8, (gid as u64).min(0o7777777));
    octal(&mut h, 124, 12, 0);
    octal(&mut h, 136, 12, mtime.clamp(0, 0o77777777777) as u64);
    h[156] = b'5';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    octal(&mut h, 148, 7, sum);
    h[155] = b' ';
    h
}

/// The root directory's mode, owner and modification time in the EROFS image at `path`
/// (`struct erofs_super_block`, `erofs_inode_compact` / `_extended` of erofs-utils 1.9).
fn root_of(path: &Path) -> Result<(u32, u32, u32, i64)> {
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let read = |at: u64, buf: &mut [u8]| {
        f.read_exact_at(buf, at)
            .map_err(|e| Error::io("read the root inode of", path, e))
    };
    let mut sb = [0u8; 128];
    read(1024, &mut sb)?;
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes(b[at..at + 2].try_into().expect("2"));
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    if u32_at(&sb, 0) != 0xE0F5_E1E2 || sb[12] != 12 {
        return Err(Error::Invalid(format!(
            "{}: not an EROFS image of 4 KiB blocks",
            path.display()
        )));
    }
    let (root_nid, epoch, meta) = (u16_at(&sb, 14) as u64, u64_at(&sb, 24), u32_at(&sb, 40));
    let mut ino = [0u8; 64];
    read(meta as u64 * BLOCK + root_nid * 32, &mut ino)?;
    let mode = u16_at(&ino, 4) as u32;
    Ok(if u16_at(&ino, 0) & 1 == 1 {
        // Extended: 32-bit owner, 64-bit time.
        (
            mode,
            u32_at(&ino, 24),
            u32_at(&ino, 28),
            u64_at(&ino, 32) as i64,
        )
    } else {
        let mtime = epoch as i64 + u32_at(&ino, 12) as i64;
        (
            mode,
            u16_at(&ino, 24) as u32,
            u16_at(&ino, 26) as u32,
            mtime,
        )
    })
}

/// The EROFS image of the layers applied so far, as a file of exactly its size (an
/// incremental build appends from the file's end).
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    uuid: String,
    /// The work disk holds something else below the image's end (a reused layer was loaded
    /// onto it): the file is copied from the disk before the next build.
    stale: bool,
}

impl Image {
    /// An image at `path`, none built yet; `uuid` is the filesystem's.
    pub fn new(path: &Path, uuid: &str) -> Image {
        Image {
            path: path.to_path_buf(),
            uuid: uuid.to_string(),
            stale: true,
        }
    }

    /// The work disk changed under the image (a reused layer was loaded).
    pub fn disk_changed(&mut self) {
        self.stale = true;
    }

    /// Builds the tar read from `tar` into the image, then writes the blocks that changed onto
    /// `disk` (marked dirty: the layer's diff). Returns the bytes of tar read.
    pub fn apply(&mut self, disk: &mut WorkDisk, tar: &mut dyn Read, now: i64) -> Result<u64> {
        if self.stale {
            self.copy_from(disk)?;
            self.stale = false;
        }
        let old = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(tool());
        cmd.args(["-b4096", "--tar=f", "--aufs", "--ovlfs-strip=1", "--quiet"])
            .arg(format!("-T{now}"))
            .arg("--mkfs-time")
            .arg(format!("-U{}", self.uuid));
        if old == 0 {
            // Room in the root inode for what later layers add (overlaybd's first layer too).
            cmd.arg("--root-xattr-isize=16384");
        } else {
            cmd.arg("--incremental=data");
        }
        let mut child = cmd
            .arg(&self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Tool(format!("run {}: {e}", tool().display())))?;
        let mut stdin = child.stdin.take().expect("piped");
        let (mut out, mut err) = (
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        // Its output is read aside, so that it never blocks on a full pipe while we feed it.
        let talk = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            let _ = err.read_to_string(&mut s);
            s
        });
        // The root first, as it is (0755 and root's in a new image) unless the tar says
        // otherwise: mkfs.erofs makes a root the tar does not name 0777 (an incremental build
        // too), and a directory it makes for a path the tar names without its parent gets the
        // root's write bits (so 0777 where containerd makes 0755).
        let root = match old {
            0 => root_entry(0o755, 0, 0, now),
            _ => {
                let (mode, uid, gid, mtime) = root_of(&self.path)?;
                root_entry(mode, uid, gid, mtime)
            }
        };
        let fed = stdin
            .write_all(&root)
            .and_then(|()| std::io::copy(tar, &mut stdin));
        drop(stdin);
        let status = child
            .wait()
            .map_err(|e| Error::Tool(format!("mkfs.erofs: {e}")))?;
        let said = talk.join().unwrap_or_default();
        if !status.success() {
            let hint = if old > 0 {
                " (a known cause: erofs-utils' incremental build fails on a hard link to a \
                 file of a lower layer; such an image converts with --fs ext4)"
            } else {
                ""
            };
            return Err(Error::Tool(format!(
                "mkfs.erofs failed ({status}): {}{hint}",
                said.trim()
            )));
        }
        let fed = fed.map_err(|e| Error::io("feed the layer to mkfs.erofs", &self.path, e))?;
        self.changed_onto(disk, old)?;
        Ok(fed)
    }

    /// Writes onto `disk` every block of the image that differs from it below `old` (the
    /// previous end), and every block from `old` on.
    fn changed_onto(&self, disk: &mut WorkDisk, old: u64) -> Result<()> {
        let img = File::open(&self.path).map_err(|e| Error::io("open", &self.path, e))?;
        let len = img
            .metadata()
            .map_err(|e| Error::io("stat", &self.path, e))?
            .len();
        if len > disk.size() {
            return Err(Error::Invalid(format!(
                "the EROFS image ({len} bytes) is larger than the virtual disk ({} bytes): \
                 raise --vsize",
                disk.size()
            )));
        }
        const CHUNK: usize = 1 << 20;
        let (mut new, mut was) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        let mut at = 0u64;
        while at < len {
            let n = CHUNK.min((len - at) as usize);
            img.read_exact_at(&mut new[..n], at)
                .map_err(|e| Error::io("read", &self.path, e))?;
            if at >= old {
                disk.write_at(at, &new[..n])
                    .map_err(|e| Error::io("write", disk.path(), e))?;
            } else {
                disk.read_at(at, &mut was[..n])
                    .map_err(|e| Error::io("read", disk.path(), e))?;
                for (k, (a, b)) in new[..n]
                    .chunks(BLOCK as usize)
                    .zip(was[..n].chunks(BLOCK as usize))
                    .enumerate()
                {
                    if a != b {
                        disk.write_at(at + (k as u64) * BLOCK, a)
                            .map_err(|e| Error::io("write", disk.path(), e))?;
                    }
                }
            }
            at += n as u64;
        }
        Ok(())
    }

    /// The image file from the work disk: as many bytes as the superblock's block count says.
    fn copy_from(&self, disk: &mut WorkDisk) -> Result<()> {
        let mut sb = [0u8; 128];
        disk.read_at(1024, &mut sb)
            .map_err(|e| Error::io("read", disk.path(), e))?;
        let magic = u32::from_le_bytes(sb[0..4].try_into().expect("4"));
        let len = if magic == 0xE0F5_E1E2 {
            // struct erofs_super_block: blkszbits at 12, blocks (u32) at 36.
            let bits = sb[12] as u32;
            let blocks = u32::from_le_bytes(sb[36..40].try_into().expect("4")) as u64;
            if bits != 12 {
                return Err(Error::Invalid(format!(
                    "the EROFS image below has {}-byte blocks; these layers use 4096",
                    1u64 << bits.min(63)
                )));
            }
            blocks * BLOCK
        } else {
            0
        };
        let mut f = File::create(&self.path).map_err(|e| Error::io("create", &self.path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < len {
            let n = buf.len().min((len - at) as usize);
            disk.read_at(at, &mut buf[..n])
                .map_err(|e| Error::io("read", disk.path(), e))?;
            f.write_all(&buf[..n])
                .map_err(|e| Error::io("write", &self.path, e))?;
            at += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_entry_is_a_valid_tar_header() {
        let mut t = root_entry(0o40755, 0, 0, 1_700_000_000);
        t.extend_from_slice(&[0u8; 1024]);
        let mut a = tar::Archive::new(t.as_slice());
        let mut entries = a.entries().unwrap();
        let e = entries.next().unwrap().unwrap();
        let h = e.header();
        assert_eq!(&*e.path_bytes(), b"./");
        assert_eq!(h.entry_type(), tar::EntryType::Directory);
        assert_eq!(h.mode().unwrap(), 0o755);
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert!(entries.next().is_none());
    }
}
