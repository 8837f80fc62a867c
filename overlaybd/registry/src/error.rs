//! The registry client's error: what failed, against which blob or repository and host, and
//! of which kind, so that a caller (the cache, the daemon, a CLI) can tell "not found" from
//! "unauthorized" from "timed out" after the error has travelled inside an `io::Error`.
//! A cause is part of the message (no `source()`), so a chain printer shows it once.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry has no such blob or manifest (404).
    #[error("{0}: not found (404)")]
    NotFound(String),
    /// The registry or its token server refused the credentials (401 with fresh credentials,
    /// 403).
    #[error("{0}")]
    Unauthorized(String),
    /// Another answer that retrying cannot fix (a 4xx, a redirect loop).
    #[error("{0}")]
    Refused(String),
    /// No place answered within the deadline; `why` is the last transient failure.
    #[error("{0}")]
    TimedOut(String),
    /// The registry's answer contradicts what the image says (size, digest, range).
    #[error("{what}: {reason}")]
    Mismatch { what: String, reason: String },
    /// A configuration file or setting is wrong: `hosts.toml`, Docker's `config.json`, a
    /// credential helper, a certificate, a `repoBlobUrl`.
    #[error("{0}")]
    Config(String),
    /// A local file could not be read.
    #[error("{op} {what}: {cause}")]
    Io {
        op: &'static str,
        what: String,
        cause: io::Error,
    },
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
            Error::NotFound(_) => io::ErrorKind::NotFound,
            Error::Unauthorized(_) => io::ErrorKind::PermissionDenied,
            Error::Refused(_) => io::ErrorKind::Other,
            Error::TimedOut(_) => io::ErrorKind::TimedOut,
            Error::Mismatch { .. } => io::ErrorKind::InvalidData,
            Error::Config(_) => io::ErrorKind::InvalidInput,
            Error::Io { cause, .. } => cause.kind(),
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
