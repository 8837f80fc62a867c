//! Mounting: the mount syscalls, the kernel's mount table, and the usage of a directory.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("{}: NUL in path", p.display())))
}

/// `mount(2)`: `source` of type `fstype` on `target`, read-only or not.
pub fn mount(
    source: &Path,
    target: &Path,
    fstype: &str,
    read_only: bool,
    data: &str,
) -> Result<()> {
    let (src, tgt) = (cstr(source)?, cstr(target)?);
    let fst = CString::new(fstype).map_err(|_| Error::InvalidArgument("fs type".into()))?;
    let data = CString::new(data).map_err(|_| Error::InvalidArgument("mount data".into()))?;
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    // SAFETY: every pointer is a NUL-terminated string that lives across the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::Internal(format!(
            "mount {} ({fstype}) on {}: {e}",
            source.display(),
            target.display()
        )));
    }
    Ok(())
}

/// `umount2(2)`; a target that is not mounted is not an error.
pub fn unmount(target: &Path) -> Result<()> {
    let tgt = cstr(target)?;
    // SAFETY: `tgt` is a NUL-terminated string that lives across the call.
    let rc = unsafe { libc::umount2(tgt.as_ptr(), 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(());
        }
        return Err(Error::FailedPrecondition(format!(
            "unmount {}: {e}",
            target.display()
        )));
    }
    Ok(())
}

/// Undoes the octal escapes of `/proc/self/mountinfo` (`\040` for a space).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// Mount points at or under `dir`, deepest first (the order to unmount them in).
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    Ok(out)
}

pub fn is_mounted(target: &Path) -> Result<bool> {
    Ok(mounts_under(target)?.iter().any(|p| p == target))
}

/// Bytes (allocated blocks) and inodes under `dir`, hard links counted once.
pub fn usage(dir: &Path) -> Result<(u64, u64)> {
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("read {}", d.display()), e)),
        };
        for e in rd {
            let e = e.map_err(|e| Error::io(format!("read {}", d.display()), e))?;
            let m = match e.path().symlink_metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(Error::io(format!("stat {}", e.path().display()), err)),
            };
            if seen.insert((m.dev(), m.ino())) {
                bytes += m.blocks() * 512;
                inodes += 1;
            }
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_and_usage() {
        assert_eq!(unescape(r"/a\040b\134c"), PathBuf::from("/a b\\c"));
        assert_eq!(unescape(r"/x\04"), PathBuf::from(r"/x\04"));
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("s")).unwrap();
        std::fs::write(d.path().join("s/f"), vec![1u8; 10_000]).unwrap();
        std::fs::hard_link(d.path().join("s/f"), d.path().join("g")).unwrap();
        let (bytes, inodes) = usage(d.path()).unwrap();
        assert_eq!(
            inodes, 2,
            "the dir and the file, whose second link is not counted"
        );
        assert!(bytes >= 10_000, "{bytes}");
        assert!(mounts_under(Path::new("/proc"))
            .unwrap()
            .contains(&PathBuf::from("/proc")));
    }
}
