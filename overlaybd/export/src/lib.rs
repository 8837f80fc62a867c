//! Block device exports: how a device reaches the kernel or a VM. Anything that implements
//! [`BlockDevice`] can be exported; the daemon's devices do.
//!
//! - [`fuse`]: the device as one FUSE file, and [`loopdev`] to make it a block device. Works on
//!   any kernel with FUSE and loop; the end-to-end tests mount ext4 through it.
//! - [`nbd`]: an NBD server (fixed newstyle) for the kernel's nbd driver, qemu and VM runtimes.
//!
//! Each wire edge maps [`DevError`] to its codes in one function (`fuse::errno`,
//! `nbd::nbd_errno`).

pub mod fuse;
pub mod loopdev;
pub mod nbd;

use std::io;

/// Logical block size of every export.
pub const BLOCK: u64 = 512;

/// Why a device request failed, in the terms every wire protocol has.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("the device is read-only")]
    ReadOnly,
    #[error("{len} bytes at {offset} are outside the {size}-byte device")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The data could not be read or written (registry down past the deadline, verification
    /// failed twice, local disk error). Only this request fails; the error keeps its kind.
    #[error("{0}")]
    Io(io::Error),
}

impl DevError {
    /// The Linux errno for this error (FUSE replies with it; NBD maps it further).
    pub fn errno(&self) -> i32 {
        match self {
            DevError::ReadOnly => libc::EROFS,
            DevError::OutOfRange { .. } => libc::EINVAL,
            DevError::Io(_) => libc::EIO,
        }
    }
}

/// A block device as the exports see it: a size, and requests at byte offsets that are
/// multiples of [`BLOCK`]. Implementations check ranges and read-only state themselves and
/// answer with [`DevError`].
pub trait BlockDevice: std::fmt::Debug + Send + Sync + 'static {
    /// A short name for logs and thread names.
    fn name(&self) -> &str;
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Fills all of `buf` from `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError>;
    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), DevError>;
    /// Discards `[offset, offset + len)`: it reads back as zeroes.
    fn trim(&self, offset: u64, len: u64) -> Result<(), DevError>;
    /// Zeroes `[offset, offset + len)`; with `no_hole` the range stays allocated.
    fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<(), DevError>;
    fn flush(&self) -> Result<(), DevError>;
}

/// What setting up an export failed at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{op} {what}: {cause}")]
    Io {
        op: &'static str,
        what: String,
        cause: io::Error,
    },
    /// A request this export cannot honour (a path with NUL, not a loop device, no free loop
    /// device).
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, what: impl Into<String>, cause: io::Error) -> Self {
        Error::Io {
            op,
            what: what.into(),
            cause,
        }
    }

    /// The `io::ErrorKind` this error stands for.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Io { cause, .. } => cause.kind(),
            Error::Unsupported(_) => io::ErrorKind::Unsupported,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::new(e.kind(), e)
    }
}
