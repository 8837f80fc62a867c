//! The cache's error: what failed (a cache file, a fetch from the origin), where, and of which
//! kind. A cause is part of the message (no `source()`), so a chain printer shows it once; the
//! origin's error kind (a registry's `TimedOut`, `NotFound`) survives [`Error::into_io`].

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cache file, or the origin (`op` "fetch"), failed.
    #[error("{op} {what} at offset {offset:#x}: {cause}")]
    Io {
        op: &'static str,
        what: String,
        offset: u64,
        cause: io::Error,
    },
    /// A file or the origin ended before the bytes a unit needs.
    #[error("truncated {what}: need {need} bytes, have {got}")]
    Truncated {
        what: &'static str,
        need: u64,
        got: u64,
    },
    /// Cached bytes or a record that cannot be right.
    #[error("{what}: {reason}")]
    Corrupt { what: String, reason: String },
    /// A key, watermark or setting the cache cannot use.
    #[error("{0}")]
    InvalidArgument(String),
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

    /// The `io::ErrorKind` this error stands for (an origin's kind is kept).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Io { cause, .. } => cause.kind(),
            Error::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            Error::Corrupt { .. } => io::ErrorKind::InvalidData,
            Error::InvalidArgument(_) => io::ErrorKind::InvalidInput,
        }
    }

    /// Maps to `io::Error` of [`Error::kind`]; the error rides inside.
    pub fn into_io(self) -> io::Error {
        io::Error::new(self.kind(), self)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        e.into_io()
    }
}
