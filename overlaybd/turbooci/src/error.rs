//! The error type of the TurboOCI crate. Messages name what failed and where; a cause is part
//! of the message (no `source()`). [`Error::into_io`] keeps the kind (corrupt data, a missing
//! file, a refused setting) for the layers above.

use std::io;

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
    /// The bytes are not a gzip index.
    #[error("not a gzip index (overlaybd's gzip.meta): bad magic")]
    NotGzipIndex,
    /// An index, a blob or a layer is inconsistent.
    #[error("{what}: {reason}")]
    Corrupt { what: String, reason: String },
    /// A caller's argument that cannot be honoured.
    #[error("{0}")]
    InvalidArgument(String),
    /// An input this implementation refuses, with the reason.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Lsmt(#[from] overlaybd_lsmt::Error),
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
            Error::NotGzipIndex | Error::Corrupt { .. } => io::ErrorKind::InvalidData,
            Error::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            Error::Unsupported(_) => io::ErrorKind::Unsupported,
            Error::Lsmt(e) => e.kind(),
        }
    }

    /// Maps to `io::Error` with [`Error::kind`]; the error itself rides inside.
    pub fn into_io(self) -> io::Error {
        match self {
            Error::Lsmt(e) => e.into_io(),
            e => io::Error::new(e.kind(), e),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        e.into_io()
    }
}
