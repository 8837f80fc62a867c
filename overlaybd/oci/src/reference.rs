//! Image references: `[host[:port]/]name[:tag][@digest]`, with Docker Hub's defaults
//! (`docker.io`, `library/`), as the snapshotter receives them in `image-ref` labels and the
//! convertor on its command line.

use crate::digest::check_digest;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`; `docker.io` for Docker Hub.
    pub host: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: String| Error::BadReference(s.to_string(), why);
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                check_digest(d).map_err(|e| bad(e.to_string()))?;
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        let (name, tag) = match name.rfind(':') {
            Some(i) if !name[i + 1..].contains('/') => {
                (&name[..i], Some(name[i + 1..].to_string()))
            }
            _ => (name, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad(format!("bad tag {t:?}")));
            }
        }
        let (host, repo) = match name.split_once('/') {
            Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                (h.to_string(), r.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repo = if host == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        let ok = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !ok {
            return Err(bad(format!("bad repository name {repo:?}")));
        }
        Ok(Reference {
            host,
            repository: repo,
            tag,
            digest,
        })
    }

    /// overlaybd's `repoBlobUrl`: `https://<host>/v2/<repository>/blobs`. The scheme is
    /// only the default: a `hosts.toml` `server` (e.g. `http://…`) or mirror replaces it.
    pub fn repo_blob_url(&self) -> String {
        self.repo_blob_url_over("https")
    }

    /// [`Reference::repo_blob_url`] with another scheme (`http` for a plain-HTTP registry).
    pub fn repo_blob_url_over(&self, scheme: &str) -> String {
        format!("{scheme}://{}/v2/{}/blobs", self.host, self.repository)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_docker_hub_defaults() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        let r = Reference::parse("127.0.0.1:5000/a/b:v1-obd").unwrap();
        assert_eq!(r.repo_blob_url(), "https://127.0.0.1:5000/v2/a/b/blobs");
        assert_eq!(r.tag.as_deref(), Some("v1-obd"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/x@{d}")).unwrap();
        assert_eq!(
            (r.host.as_str(), r.digest.as_deref()),
            ("localhost", Some(d.as_str()))
        );
        for bad in [
            "r.io/X",
            "r.io/x:bad/tag",
            "r.io/x@sha256:12",
            "r.io//x",
            "",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
