//! Argument parsers shared by the commands.

/// `4096`, `4K`, `4KiB`, `64G`, `1T` (binary units).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{s:?} is not a size like 4096, 4K, 64G"))
}

/// A block size (fits in u32).
pub fn parse_block_size(s: &str) -> Result<u32, String> {
    parse_bytes(s).and_then(|v| u32::try_from(v).map_err(|_| format!("{s:?} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("4K"), Ok(4096));
        assert_eq!(parse_bytes("4KiB"), Ok(4096));
        assert_eq!(parse_bytes("64g"), Ok(64 << 30));
        assert_eq!(parse_bytes("1TB"), Ok(1 << 40));
        assert!(parse_bytes("x").is_err());
        assert!(parse_bytes("99999999999T").is_err());
        assert!(parse_block_size("8G").is_err());
    }
}
