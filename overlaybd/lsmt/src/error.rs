//! The error type of the LSMT crate.
//!
//! Each message names what failed and where; an underlying cause is part of the message (no
//! `source()`), so a chain printer shows it once. [`Error::into_io`] keeps the kind a caller
//! branches on (corrupt data, a request outside the disk, a read-only layer, a busy file).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or source failed.
    #[error("{op} {what} at offset {offset:#x}: {cause}")]
    Io {
        op: &'static str,
        what: String,
        offset: u64,
        cause: io::Error,
    },
    /// A structure ends before its declared size.
    #[error("truncated {what}: need {need} bytes, have {got}")]
    Truncated {
        what: &'static str,
        need: u64,
        got: u64,
    },
    /// The bytes are not an LSMT layer.
    #[error("not an lsmt {0}: bad magic")]
    NotLsmt(&'static str),
    /// A layer's header, index or log is inconsistent.
    #[error("lsmt {what}: {reason}")]
    Corrupt { what: String, reason: String },
    /// A request outside the virtual disk, or not aligned to sectors.
    #[error("{0}")]
    OutOfRange(String),
    /// A write or trim to a layer or stack that is read-only.
    #[error("{0}")]
    ReadOnly(String),
    /// Another process holds the layer's lock.
    #[error("{} is in use by another process", .0.display())]
    InUse(PathBuf),
    /// A caller's argument that cannot be honoured (a virtual size, a commit message, extents
    /// out of order).
    #[error("{0}")]
    InvalidArgument(String),
    /// A setting or input this implementation does not accept (limits, sealed layers, ...).
    #[error("{0}")]
    Unsupported(String),
    /// A ZFile or envelope below the layer failed.
    #[error(transparent)]
    Zfile(#[from] zfile::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        op: &'static str,
        what: impl Into<String>,
        offset: u64,
        cause: io::Error,
    ) -> Self {
        Error::Io {
            op,
            what: what.into(),
            offset,
            cause,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// The `io::ErrorKind` this error stands for.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Io { cause, .. } => cause.kind(),
            Error::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            Error::OutOfRange(_) | Error::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            Error::ReadOnly(_) => io::ErrorKind::ReadOnlyFilesystem,
            Error::InUse(_) => io::ErrorKind::ResourceBusy,
            Error::Unsupported(_) => io::ErrorKind::Unsupported,
            Error::Zfile(z) => z.kind(),
            Error::NotLsmt(_) | Error::Corrupt { .. } => io::ErrorKind::InvalidData,
        }
    }

    /// Maps to `io::Error` with [`Error::kind`]; the error itself rides inside.
    pub fn into_io(self) -> io::Error {
        match self {
            Error::Zfile(z) => z.into_io(),
            e => io::Error::new(e.kind(), e),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        e.into_io()
    }
}
