//! p2p's error: what failed and where (a request's URL or header, an upstream, a piece, a
//! file), of which kind. A cause is part of the message (no `source()`), so a chain printer
//! shows it once. The HTTP answer for each variant is chosen in one place, `node::http::status`.

use std::io;
use std::sync::Arc;

/// `Clone`: a piece's failure goes to every reader waiting on it (so an I/O cause is shared in
/// an `Arc`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A request's origin is not a registry blob URL (`/v2/<repository>/blobs/sha256:…`).
    #[error("{url:?}: {why}")]
    Origin { url: String, why: &'static str },
    /// A request's `Range` (`None`: none, where one is needed) cannot be satisfied for a
    /// blob of `size` bytes.
    #[error("{}", range_message(.range.as_deref(), *.size))]
    Range { range: Option<String>, size: u64 },
    /// A request of the tree protocol is malformed (its body, a node URL in it).
    #[error("{what}: {why}")]
    BadRequest { what: &'static str, why: String },
    /// No such endpoint here, or a root's endpoint asked of an agent.
    #[error("{0}")]
    NotFound(String),
    /// A blob URL asked with another method than GET, HEAD or DELETE.
    #[error("method {method}: expected GET, HEAD or DELETE")]
    MethodNotAllowed { method: String },
    /// This node refuses: a registry not in `registries`, a `DELETE` from another host, a
    /// child no root vouches for.
    #[error("{0}")]
    Forbidden(String),
    /// The request already passed through this node (`X-P2P-Path`): a stale tree made a loop.
    #[error("the request already passed through this node ({node})")]
    Loop { node: String },
    /// An upstream's refusal, passed on to the reader: 401 (with the registry's
    /// `WWW-Authenticate` challenge), 403 and 404 as they are, any other status as 502.
    #[error("{message}")]
    Refused {
        status: u16,
        challenge: Option<String>,
        message: String,
    },
    /// An upstream (`registry <host>`, `root <URL>`, a parent's URL) could not be reached, or
    /// its answer could not be used.
    #[error("{upstream}: {cause}")]
    Upstream { upstream: String, cause: String },
    /// A piece could not be filled: every upstream failed, or its fetch was abandoned.
    #[error("piece {idx} of {key}: {cause}")]
    Piece {
        key: String,
        idx: u64,
        cause: String,
    },
    /// The configuration is wrong (the message names the file or field).
    #[error("{0}")]
    Config(String),
    /// The HTTP client could not be built (TLS setup).
    #[error("HTTP client: {0}")]
    Client(String),
    /// A local file or directory (the config, `registry_ca`, the piece cache) failed.
    #[error("{op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: String,
        cause: Arc<io::Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, cause: io::Error) -> Self {
        Error::Io {
            op,
            path: path.display().to_string(),
            cause: Arc::new(cause),
        }
    }

    pub(crate) fn upstream(upstream: impl Into<String>, cause: impl ToString) -> Self {
        Error::Upstream {
            upstream: upstream.into(),
            cause: cause.to_string(),
        }
    }

    pub(crate) fn bad_request(what: &'static str, why: impl ToString) -> Self {
        Error::BadRequest {
            what,
            why: why.to_string(),
        }
    }

    /// The `io::ErrorKind` this error stands for.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Origin { .. }
            | Error::Range { .. }
            | Error::BadRequest { .. }
            | Error::MethodNotAllowed { .. }
            | Error::Config(_) => io::ErrorKind::InvalidInput,
            Error::NotFound(_) => io::ErrorKind::NotFound,
            Error::Forbidden(_) => io::ErrorKind::PermissionDenied,
            Error::Refused { status, .. } => match status {
                401 | 403 => io::ErrorKind::PermissionDenied,
                404 => io::ErrorKind::NotFound,
                _ => io::ErrorKind::Other,
            },
            Error::Loop { .. } | Error::Upstream { .. } | Error::Piece { .. } => {
                io::ErrorKind::Other
            }
            Error::Client(_) => io::ErrorKind::Other,
            Error::Io { cause, .. } => cause.kind(),
        }
    }

    /// Maps to `io::Error` of [`Error::kind`]; the error rides inside.
    pub fn into_io(self) -> io::Error {
        io::Error::new(self.kind(), self)
    }
}

fn range_message(range: Option<&str>, size: u64) -> String {
    match range {
        Some(r) => format!("Range {r:?}: bad, or unsatisfiable for a blob of {size} bytes"),
        None => format!("no Range: a satisfiable one is needed (the blob has {size} bytes)"),
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        e.into_io()
    }
}
