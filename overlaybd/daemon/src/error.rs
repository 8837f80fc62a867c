//! The daemon's error: what failed (attaching a device, opening a layer, the descriptor
//! keeper, a trace), with the lower crates' typed errors inside, so the API maps it to a gRPC
//! code by kind ([`crate::api::status`]) and a device request keeps the kind on its way to the
//! kernel. A cause is part of the message (no `source()`), so a chain printer shows it once.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No attached device has this id.
    #[error("no device {0}")]
    NoDevice(String),
    /// A device with this id is attached already.
    #[error("device {0} is already attached")]
    AlreadyAttached(String),
    /// A setting, a request or a config file the daemon cannot use.
    #[error("{0}")]
    Invalid(String),
    /// A layer of an image failed to open (`origin` is its path or blob).
    #[error("layer {origin}: {cause}")]
    Layer { origin: String, cause: Box<Error> },
    /// A file, process or socket operation of the daemon's own failed.
    #[error("{op} {what}: {cause}")]
    Io {
        op: &'static str,
        what: String,
        cause: io::Error,
    },
    /// A trace file is malformed.
    #[error("trace file: {0}")]
    BadTrace(String),
    #[error(transparent)]
    ImageConfig(#[from] overlaybd_api::ConfigError),
    #[error(transparent)]
    Lsmt(#[from] overlaybd_lsmt::Error),
    #[error(transparent)]
    Zfile(#[from] zfile::Error),
    #[error(transparent)]
    Registry(#[from] overlaybd_registry::Error),
    #[error(transparent)]
    Cache(#[from] overlaybd_cache::Error),
    #[error(transparent)]
    Export(#[from] overlaybd_export::Error),
    #[error(transparent)]
    TurboOci(#[from] overlaybd_turbooci::Error),
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
            Error::NoDevice(_) => io::ErrorKind::NotFound,
            Error::AlreadyAttached(_) => io::ErrorKind::AlreadyExists,
            Error::Invalid(_) => io::ErrorKind::InvalidInput,
            Error::Layer { cause, .. } => cause.kind(),
            Error::Io { cause, .. } => cause.kind(),
            Error::BadTrace(_) => io::ErrorKind::InvalidData,
            Error::ImageConfig(overlaybd_api::ConfigError::Io { cause, .. }) => cause.kind(),
            Error::ImageConfig(_) => io::ErrorKind::InvalidInput,
            Error::Lsmt(e) => e.kind(),
            Error::TurboOci(e) => e.kind(),
            Error::Zfile(e) => e.kind(),
            Error::Registry(e) => e.kind(),
            Error::Cache(e) => e.kind(),
            Error::Export(e) => e.kind(),
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
