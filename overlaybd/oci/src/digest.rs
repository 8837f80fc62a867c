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

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = sha2::Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for m in msg {
        inner.update(m);
    }
    let mut outer = sha2::Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Whether `a` equals `b`, in time that does not depend on where they differ (for MACs).
pub fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.iter()
        .zip(b)
        .fold(a.len() ^ b.len(), |d, (x, y)| d | usize::from(x ^ y))
        == 0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2: key "Jefe", data "what do ya want for nothing?".
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
