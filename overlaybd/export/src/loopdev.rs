//! Loop devices over a file (the FUSE export's file): `LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE`
//! with direct I/O, a 512-byte logical block size, and read-only when the device is.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CHANGE_FD: libc::c_ulong = 0x4C06;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_DIRECT_IO: u32 = 16;

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn zeroed_info() -> LoopInfo64 {
    // SAFETY: a plain C struct of integers and byte arrays.
    unsafe { std::mem::zeroed() }
}

/// An attached loop device. It stays attached when this value is dropped (and when the
/// daemon exits): detaching is explicit.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    number: u32,
}

fn io(op: &'static str, what: &Path, e: std::io::Error) -> Error {
    Error::io(op, what.display().to_string(), e)
}

impl LoopDevice {
    /// Attaches a free loop device to `file`.
    pub fn attach(file: &Path, read_only: bool, direct_io: bool) -> Result<LoopDevice> {
        let backing = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(file)
            .map_err(|e| io("open", file, e))?;
        let ctl_path = Path::new("/dev/loop-control");
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open(ctl_path)
            .map_err(|e| io("open", ctl_path, e))?;
        // Another process may take the free device between the two calls: try again.
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument.
            let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(io(
                    "LOOP_CTL_GET_FREE",
                    ctl_path,
                    std::io::Error::last_os_error(),
                ));
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let dev = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| io("open", &path, e))?;
            let mut info = zeroed_info();
            info.flags = if read_only { LO_FLAGS_READ_ONLY } else { 0 }
                | if direct_io { LO_FLAGS_DIRECT_IO } else { 0 };
            let name = file.as_os_str().as_encoded_bytes();
            let k = name.len().min(63);
            info.file_name[..k].copy_from_slice(&name[..k]);
            let cfg = LoopConfig {
                fd: backing.as_raw_fd() as u32,
                block_size: 512,
                info,
                reserved: [0; 8],
            };
            // SAFETY: `cfg` is a `struct loop_config` the kernel only reads.
            let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg) };
            if r == 0 {
                return Ok(LoopDevice {
                    path,
                    number: n as u32,
                });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(io("LOOP_CONFIGURE", &path, e));
            }
        }
        Err(Error::Unsupported(format!(
            "no free loop device for {} after 16 tries",
            file.display()
        )))
    }

    /// An attached loop device by path (after a daemon restart).
    pub fn existing(path: &Path) -> Result<LoopDevice> {
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                Error::Unsupported(format!("{} is not a loop device", path.display()))
            })?;
        Ok(LoopDevice {
            path: path.to_path_buf(),
            number,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    /// The file the loop device reads, as the kernel reports it (`None` when detached).
    pub fn backing_file(&self) -> Option<PathBuf> {
        let p = format!("/sys/block/loop{}/loop/backing_file", self.number);
        std::fs::read_to_string(p)
            .ok()
            .map(|s| PathBuf::from(s.trim_end()))
    }

    /// Whether the kernel uses direct I/O on the backing file.
    pub fn direct_io(&self) -> bool {
        std::fs::read_to_string(format!("/sys/block/loop{}/loop/dio", self.number))
            .is_ok_and(|s| s.trim() == "1")
    }

    /// Whether the loop device is read-only.
    pub fn read_only(&self) -> bool {
        let Ok(f) = File::open(&self.path) else {
            return false;
        };
        let mut info = zeroed_info();
        // SAFETY: `info` is a `struct loop_info64` the kernel fills.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_GET_STATUS64, &mut info) };
        r == 0 && info.flags & LO_FLAGS_READ_ONLY != 0
    }

    /// Points a read-only loop device at another file of the same size (the kernel refuses
    /// this for writable devices). Used when a FUSE file had to be mounted anew.
    pub fn change_fd(&self, file: &Path) -> Result<()> {
        let backing = File::open(file).map_err(|e| io("open", file, e))?;
        let f = File::open(&self.path).map_err(|e| io("open", &self.path, e))?;
        // SAFETY: LOOP_CHANGE_FD takes a descriptor number.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CHANGE_FD, backing.as_raw_fd()) };
        if r != 0 {
            return Err(io(
                "LOOP_CHANGE_FD",
                &self.path,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Detaches the device (the kernel finishes it once the last opener closes it).
    pub fn detach(self) -> Result<()> {
        let f = File::open(&self.path).map_err(|e| io("open", &self.path, e))?;
        // SAFETY: LOOP_CLR_FD takes no pointer.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CLR_FD, 0) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: not attached any more.
            if e.raw_os_error() != Some(libc::ENXIO) {
                return Err(io("LOOP_CLR_FD", &self.path, e));
            }
        }
        Ok(())
    }
}
