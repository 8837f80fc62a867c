//! The snapshotter's errors, each mapped to the gRPC code containerd turns back into its
//! `errdefs` (NotFound, AlreadyExists, FailedPrecondition, …).

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The daemon or the registry could not do it (now).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(what: impl std::fmt::Display, e: std::io::Error) -> Error {
        Error::Internal(format!("{what}: {e}"))
    }

    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<overlaybd_registry::Error> for Error {
    /// What a registry failure means to containerd: a missing image is `NotFound`, refused
    /// credentials and bad settings are the caller's to fix, the rest may pass.
    fn from(e: overlaybd_registry::Error) -> Error {
        use overlaybd_registry::Error as R;
        let msg = e.to_string();
        match e {
            R::NotFound(_) => Error::NotFound(msg),
            R::Unauthorized(_) => Error::FailedPrecondition(msg),
            R::Config(_) | R::Mismatch { .. } => Error::InvalidArgument(msg),
            R::Refused(_) | R::TimedOut(_) | R::Io { .. } => Error::Unavailable(msg),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
