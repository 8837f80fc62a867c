//! What a blob request names: the origin blob URL (and the cache key it maps to) and the
//! byte range.

use crate::error::{Error, Result};

/// A blob URL as the request names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub url: String,
    /// `host[:port]` of the registry.
    pub authority: String,
    pub repository: String,
    pub digest: String,
}

impl Origin {
    /// `scheme://host[:port]/v2/<repository>/blobs/sha256:<64 hex>`, nothing else.
    pub fn parse(url: &str) -> Result<Origin> {
        let bad = |why: &'static str| Error::Origin {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| bad("not an http(s) URL"))?;
        if url.contains(['?', '#']) {
            return Err(bad("a query or fragment"));
        }
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no path"))?;
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("bad host"));
        }
        let (repo, digest) = path
            .strip_prefix("v2/")
            .and_then(|p| p.rsplit_once("/blobs/"))
            .ok_or_else(|| bad("not a registry blob URL (/v2/<repository>/blobs/<digest>)"))?;
        let repo_ok = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repo_ok {
            return Err(bad("bad repository name"));
        }
        let hex_ok = digest.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !hex_ok {
            return Err(bad("the digest is not sha256:<64 lowercase hex>"));
        }
        Ok(Origin {
            url: url.to_string(),
            authority: authority.to_string(),
            repository: repo.to_string(),
            digest: digest.to_string(),
        })
    }

    /// The cache key: the same bytes wherever they are in one registry (blobs are
    /// content-addressed; which repository may read them is checked per request). The scheme
    /// is part of it: bytes fetched over plain HTTP are not served for an HTTPS URL.
    pub fn key(&self) -> String {
        let scheme = if self.url.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/{}", self.authority, self.digest)
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: the half-open range, `Ok(None)`
/// without a header, [`Error::Range`] when it cannot be satisfied.
pub fn parse_range(h: Option<&str>, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(h) = h else { return Ok(None) };
    range(h, size).map(Some).ok_or_else(|| Error::Range {
        range: Some(h.chars().take(256).collect()),
        size,
    })
}

fn range(h: &str, size: u64) -> Option<(u64, u64)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        (size.saturating_sub(n), size)
    } else {
        let s: u64 = a.parse().ok()?;
        let e = if b.is_empty() {
            size
        } else {
            b.parse::<u64>().ok()?.saturating_add(1).min(size)
        };
        (s, e)
    };
    if start >= end || start >= size {
        return None;
    }
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let o = Origin::parse(&format!(
            "http://127.0.0.1:5000/v2/library/busybox/blobs/{d}"
        ))
        .unwrap();
        assert_eq!(o.authority, "127.0.0.1:5000");
        assert_eq!(o.repository, "library/busybox");
        assert_eq!(o.key(), format!("http://127.0.0.1:5000/{d}"));
        for bad in [
            format!("ftp://h/v2/r/blobs/{d}"),
            format!("http://h/v2/r/manifests/{d}"),
            format!("http://h/v2/r/blobs/{d}?x=1"),
            format!("http://h/v2/../blobs/{d}"),
            format!("http://u@h/v2/r/blobs/{d}"),
            "http://h/v2/r/blobs/sha256:abc".to_string(),
            format!("http://h/v2/R/blobs/{d}"),
            format!("http://h/v2/r/blobs/{}", d.to_uppercase()),
            "http://h".to_string(),
        ] {
            let e = Origin::parse(&bad).unwrap_err();
            assert!(
                matches!(&e, Error::Origin { url, .. } if *url == bad),
                "{e:?}"
            );
            assert!(e.to_string().starts_with(&format!("{bad:?}: ")), "{e}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=0-3"), 10).unwrap(), Some((0, 4)));
        assert_eq!(parse_range(Some("bytes=5-"), 10).unwrap(), Some((5, 10)));
        assert_eq!(parse_range(Some("bytes=-3"), 10).unwrap(), Some((7, 10)));
        assert_eq!(parse_range(Some("bytes=8-100"), 10).unwrap(), Some((8, 10)));
        for bad in [
            "bytes=10-11",
            "bytes=3-2",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=-0",
            "bytes=x-1",
        ] {
            match parse_range(Some(bad), 10) {
                Err(Error::Range { range, size: 10 }) => assert_eq!(range.as_deref(), Some(bad)),
                r => panic!("{bad}: {r:?}"),
            }
        }
    }
}
