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

mod feed;
mod tree;
pub use tree::{tree_of_erofs, Meta};

use crate::disk::{WorkDisk, BLOCK};
use crate::error::{Error, Result};
use crate::extfs::DiskIo;

/// `mkfs.erofs` to run: `$OBD_MKFS_EROFS`, else the one in `PATH`.
pub fn tool() -> PathBuf {
    std::env::var_os("OBD_MKFS_EROFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("mkfs.erofs"))
}

/// Checks that `mkfs.erofs` runs and is 1.9 or later; returns its version (`1.9.4`).
pub fn check_tool() -> Result<String> {
    let t = tool();
    let out = Command::new(&t).arg("--version").output().map_err(|e| {
        Error::Tool(format!(
            "run {} (EROFS layers need erofs-utils 1.9 or later; OBD_MKFS_EROFS names it): {e}",
            t.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (word, version) = text
        .split_whitespace()
        .find_map(|w| {
            let mut p = w.split('.').map(|n| n.parse::<u32>().ok());
            Some((w, (p.next()??, p.next()??)))
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
    Ok(word.to_string())
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
    /// `disk` (marked dirty: the layer's diff).
    pub fn apply(&mut self, disk: &mut WorkDisk, tar: &mut dyn Read, now: i64) -> Result<()> {
        if self.stale {
            self.copy_from(disk)?;
            self.stale = false;
        }
        let old = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        // The image below, as it is before this build (its root's metadata, its directories).
        let mut below = match old {
            0 => None,
            _ => Some(tree::Lookup::open(&self.path)?),
        };
        let root_below = match &mut below {
            Some(l) => l.meta(b"")?,
            None => None,
        };
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
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Tool(format!("run {}: {e}", tool().display())))?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        // Its messages are read aside, so that it never blocks on a full pipe while we feed it.
        let said = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut root = None;
        let fed = feed::feed(tar, &mut stdin, below.as_mut(), now, &mut root);
        drop(stdin);
        let status = child
            .wait()
            .map_err(|e| Error::Tool(format!("mkfs.erofs: {e}")))?;
        let said = said.join().unwrap_or_default();
        if !status.success() {
            let hint = if old > 0 && said.contains("Could not format") {
                " (one known cause: erofs-utils' incremental build fails on a hard link to a \
                 file of a lower layer; such an image converts with --fs ext4)"
            } else {
                ""
            };
            return Err(Error::Tool(format!(
                "mkfs.erofs failed ({status}): {}{hint}",
                said.trim()
            )));
        }
        // It may stop reading after the tar's end blocks: what it did not read is padding.
        match fed {
            Err(Error::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => {
                r?;
            }
        }
        // The root as the tar says, else as it was below, else 0755 and root's.
        let root = root.or(root_below).unwrap_or(tree::Meta {
            mode: crate::extfs::S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            mtime: (now, 0),
        });
        tree::set_root(&self.path, &root)?;
        self.changed_onto(disk, old)
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
        let len = tree::image_len(disk)?.unwrap_or(0);
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
