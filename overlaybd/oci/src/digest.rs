//! Digests (`sha256:<hex>`) and chain IDs.

use crate::{Error, Result};

/// Checks a `sha256:<64 lowercase hex>` digest and returns the hex part.
pub fn check_digest(d: &str) -> Result<&str> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        return Err(Error::BadDigest(d.to_string(), "not sha256"));
    };
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Error::BadDigest(
            d.to_string(),
            "not 64 lowercase hex digits",
        ));
    }
    Ok(hex)
}

/// `sha256:<hex>` of bytes: a blob's or document's digest.
pub fn sha256_digest(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Chain IDs of a list of diff IDs (the image spec's `ChainID`): what containerd names a
/// layer's committed snapshot.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// `algorithm:hex` for the algorithms registries use (sha256, sha512): what a blob URL may
/// name. Stricter checks ([`check_digest`]) apply where a digest names a file.
pub fn is_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", h)) => h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()),
        Some(("sha512", h)) => h.len() == 128 && h.bytes().all(|c| c.is_ascii_hexdigit()),
        _ => false,
    }
}
