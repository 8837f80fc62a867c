//! Where a blob lives.

use overlaybd_oci::is_digest;

use crate::{Error, Result};

/// Where a blob lives: `scheme://host[:port]`, repository, digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    pub registry: String,
    pub repository: String,
    pub digest: String,
}

impl BlobLocation {
    pub fn url(&self) -> String {
        format!(
            "{}/v2/{}/blobs/{}",
            self.registry.trim_end_matches('/'),
            self.repository,
            self.digest
        )
    }

    /// Parses overlaybd's `repoBlobUrl` (`scheme://host[:port]/v2/<repository>/blobs`) and a
    /// digest.
    pub fn from_repo_blob_url(repo_blob_url: &str, digest: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "repoBlobUrl {repo_blob_url:?}: expected scheme://host/v2/<repository>/blobs"
            ))
        };
        let (scheme, rest) = repo_blob_url.split_once("://").ok_or_else(bad)?;
        if scheme != "http" && scheme != "https" {
            return Err(bad());
        }
        let (host, path) = rest.split_once('/').ok_or_else(bad)?;
        let repo = path
            .trim_end_matches('/')
            .strip_prefix("v2/")
            .and_then(|p| p.strip_suffix("/blobs"))
            .filter(|r| !r.is_empty())
            .ok_or_else(bad)?;
        if host.is_empty() || !is_digest(digest) {
            return Err(Error::Config(format!(
                "blob {digest:?} at {repo_blob_url:?}: not a valid digest"
            )));
        }
        Ok(BlobLocation {
            registry: format!("{scheme}://{host}"),
            repository: repo.to_string(),
            digest: digest.to_string(),
        })
    }
}

impl std::fmt::Display for BlobLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in {} at {}",
            self.digest, self.repository, self.registry
        )
    }
}
