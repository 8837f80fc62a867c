//! The one error type of the `zfile` crate. A cause is part of the message (no `source()`),
//! so a chain printer shows it once.

use std::io;

/// Everything that can go wrong while reading or writing a ZFile or its tar envelope.
///
/// Each variant says what went wrong and where, so that the message alone is enough to find the
/// bad byte: `zfile block 17 at offset 0x4a00: crc mismatch`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying source or sink failed.
    #[error("{op} at offset {offset:#x}: {cause}")]
    Io {
        op: &'static str,
        offset: u64,
        cause: io::Error,
    },
    /// The source ended before a structure that must be there.
    #[error("truncated: {what} needs {need} bytes at offset {offset:#x}, only {got} present")]
    Truncated {
        what: &'static str,
        offset: u64,
        need: u64,
        got: u64,
    },
    /// The first bytes are not a ZFile header.
    #[error("not a zfile: {0}")]
    NotZFile(&'static str),
    /// A header or trailer field has a value this reader cannot accept.
    #[error("zfile {which}: {field} = {value:#x}: {reason}")]
    BadHeader {
        which: &'static str,
        field: &'static str,
        value: u64,
        reason: &'static str,
    },
    /// The index (jump table) is inconsistent with the header or the file.
    #[error("zfile index entry {entry}: {reason}")]
    BadIndex { entry: u64, reason: String },
    /// A data block failed a check or did not decompress to its size.
    #[error("zfile block {block} at offset {offset:#x}: {reason}")]
    Corrupt {
        block: u64,
        offset: u64,
        reason: String,
    },
    /// The integrity table is absent, malformed, or does not match the trusted root.
    #[error("zfile integrity: {0}")]
    Integrity(String),
    /// The tar envelope around a payload is malformed.
    #[error("tar envelope at offset {offset:#x}: {reason}")]
    Envelope { offset: u64, reason: String },
    /// A setting the writer refuses, or a feature the reader does not implement.
    #[error("{0}")]
    Unsupported(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, offset: u64, cause: io::Error) -> Self {
        Error::Io { op, offset, cause }
    }

    /// The `io::ErrorKind` this error stands for: corrupt or inconsistent data is
    /// `InvalidData`, I/O errors keep their kind (a registry's `TimedOut` or `NotFound` stays
    /// one on its way up).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Io { cause, .. } => cause.kind(),
            Error::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            Error::Unsupported(_) => io::ErrorKind::Unsupported,
            _ => io::ErrorKind::InvalidData,
        }
    }

    /// Maps this error to an `io::Error` of [`Error::kind`] for callers that speak `std::io`;
    /// the error itself rides inside.
    pub fn into_io(self) -> io::Error {
        io::Error::new(self.kind(), self)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        e.into_io()
    }
}
