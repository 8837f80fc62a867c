//! The convertor's error: what failed and where (which layer, file, step or store), with the
//! lower crates' errors inside. A cause is part of the message (no `source()`), so a chain
//! printer shows each cause once. [`Error::kind`] is the lower error's kind through every step
//! that names where it happened: a registry's `NotFound`, `PermissionDenied` (refused
//! credentials) or `TimedOut` stays one up to the binary.

use std::io;
use std::path::PathBuf;

use crate::apply::ApplyError;
use crate::extfs::FsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A registry failed (not found, refused credentials, timed out, a contradicting answer).
    #[error(transparent)]
    Registry(#[from] overlaybd_registry::Error),
    /// A malformed OCI document, digest or reference.
    #[error(transparent)]
    Oci(#[from] overlaybd_oci::Error),
    /// Reading or committing an LSMT layer.
    #[error(transparent)]
    Lsmt(#[from] overlaybd_lsmt::Error),
    /// Inflating a gzip layer or writing its index (TurboOCI).
    #[error(transparent)]
    TurboOci(#[from] overlaybd_turbooci::Error),
    /// Writing a ZFile or its tar envelope.
    #[error(transparent)]
    Zfile(#[from] zfile::Error),
    /// libext2fs refused an operation on the work disk or a converted image's filesystem.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A layer tar could not be applied: a broken stream, a refused entry, a full filesystem.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A local file or directory.
    #[error("{op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    /// A JSON document (an image config, `index.json`, a dedup record) that does not parse.
    #[error("{what}: {cause}")]
    Json {
        what: String,
        cause: serde_json::Error,
    },
    /// The dedup database.
    #[error("dedup database {}: {cause}", path.display())]
    Dedup {
        path: PathBuf,
        cause: Box<redb::Error>,
    },
    /// The image contradicts itself or its descriptors: sizes, digests, diff IDs, counts.
    #[error("{0}")]
    Invalid(String),
    /// An image this convertor does not take: an overlaybd image, an unknown layer media type,
    /// an index inside an index.
    #[error("{0}")]
    Unsupported(String),
    /// What was asked for is not there (a tag of an OCI layout, a platform of an image).
    #[error("{0}")]
    NotFound(String),
    /// An argument that cannot be honoured (a reference, a directory that is no OCI layout).
    #[error("{0}")]
    InvalidInput(String),
    /// A program the convertor runs (`mke2fs`, `overlaybd-snapshotter rpull`, `ctr`) failed.
    #[error("{0}")]
    Tool(String),
    /// A thread of the conversion pipeline panicked.
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    /// Where `cause` happened: a layer, a step, a store (`layer 2: commit`, `upload the
    /// config`).
    #[error("{what}: {cause}")]
    At { what: String, cause: Box<Error> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            cause,
        }
    }

    pub(crate) fn json(what: impl Into<String>, cause: serde_json::Error) -> Self {
        Error::Json {
            what: what.into(),
            cause,
        }
    }

    /// This error, said to have happened at `what`.
    pub fn at(self, what: impl Into<String>) -> Self {
        Error::At {
            what: what.into(),
            cause: Box::new(self),
        }
    }

    /// The `io::ErrorKind` this error stands for: the lower error's kind where there is one.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Registry(e) => e.kind(),
            Error::Lsmt(e) => e.kind(),
            Error::TurboOci(e) => e.kind(),
            Error::Zfile(e) => e.kind(),
            Error::Fs(e) => e.kind(),
            Error::Apply(e) => e.kind(),
            Error::Io { cause, .. } => cause.kind(),
            Error::Oci(_) | Error::Json { .. } | Error::Invalid(_) => io::ErrorKind::InvalidData,
            Error::Unsupported(_) => io::ErrorKind::Unsupported,
            Error::NotFound(_) => io::ErrorKind::NotFound,
            Error::InvalidInput(_) => io::ErrorKind::InvalidInput,
            Error::Dedup { .. } | Error::Tool(_) | Error::Panicked(_) => io::ErrorKind::Other,
            Error::At { cause, .. } => cause.kind(),
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

/// Says where an error happened, as `anyhow`'s `with_context` does, into an [`Error::At`].
pub(crate) trait At<T> {
    fn at(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> At<T> for std::result::Result<T, E> {
    fn at(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| e.into().at(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_survives_the_places_it_is_said_to_have_happened_at() {
        let e = Error::from(overlaybd_registry::Error::NotFound("r.io/x:v1".into()))
            .at("read v1")
            .at("layer 0");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "layer 0: read v1: r.io/x:v1: not found (404)"
        );
        assert!(std::error::Error::source(&e).is_none());
        let io = e.into_io();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
    }
}
