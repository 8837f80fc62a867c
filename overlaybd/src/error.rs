//! The one error type of the `overlaybd` crate.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or source failed.
    #[error("{op} {what} at offset {offset:#x}: {source}")]
    Io {
        op: &'static str,
        what: String,
        offset: u64,
        #[source]
        source: io::Error,
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
    /// A caller's request or setting cannot be honoured.
    #[error("{0}")]
    Invalid(String),
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
        source: io::Error,
    ) -> Self {
        Error::Io {
            op,
            what: what.into(),
            offset,
            source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Maps to `io::Error` (corrupt data → `InvalidData`, bad requests → `InvalidInput`).
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            Error::Io { source, .. } => source.kind(),
            Error::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            Error::Invalid(_) => io::ErrorKind::InvalidInput,
            Error::Zfile(_) => {
                return match self {
                    Error::Zfile(z) => z.into_io(),
                    _ => unreachable!("matched above"),
                }
            }
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        e.into_io()
    }
}
