//! The record of which refill units of a cached blob are present, with a CRC-32C of each.
//! Layout: `docs/format/cache.md`.

use crate::{Error, Result};

pub const MAGIC: [u8; 8] = *b"OBDCACHE";
pub const VERSION: u32 = 1;
const HEADER: usize = 32;
const ENTRY: usize = 8;

/// One refill unit's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unit {
    pub present: bool,
    pub crc: u32,
}

/// Encodes the record: header, one 8-byte entry per unit, and a CRC of all that.
pub fn encode(blob_size: u64, unit_size: u32, units: &[Unit]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + units.len() * ENTRY + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&unit_size.to_le_bytes());
    out.extend_from_slice(&blob_size.to_le_bytes());
    out.extend_from_slice(&(units.len() as u64).to_le_bytes());
    for u in units {
        out.extend_from_slice(&(u.present as u32).to_le_bytes());
        out.extend_from_slice(&u.crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a record written for a blob of `blob_size` bytes in units of `unit_size`. Any
/// mismatch or damage is an error; the caller then starts with an empty cache.
pub fn decode(raw: &[u8], blob_size: u64, unit_size: u32) -> Result<Vec<Unit>> {
    let bad = |reason: &str| Error::corrupt("cache record", reason.to_string());
    if raw.len() < HEADER + 4 {
        return Err(bad("too short"));
    }
    let (body, crc) = raw.split_at(raw.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(bad("checksum mismatch"));
    }
    if body[..8] != MAGIC || u32::from_le_bytes(body[8..12].try_into().expect("4")) != VERSION {
        return Err(bad("not a version 1 record"));
    }
    let us = u32::from_le_bytes(body[12..16].try_into().expect("4"));
    let size = u64::from_le_bytes(body[16..24].try_into().expect("8"));
    let n = u64::from_le_bytes(body[24..32].try_into().expect("8"));
    if us == 0 || us != unit_size || size != blob_size || n != blob_size.div_ceil(us as u64) {
        return Err(bad("written for another blob size or unit size"));
    }
    if (body.len() - HEADER) as u64 != n * ENTRY as u64 {
        return Err(bad("entry count does not match its length"));
    }
    Ok(body[HEADER..]
        .chunks_exact(ENTRY)
        .map(|e| Unit {
            present: u32::from_le_bytes(e[..4].try_into().expect("4")) == 1,
            crc: u32::from_le_bytes(e[4..].try_into().expect("4")),
        })
        .collect())
}

/// Decodes a record whatever blob it was written for: (blob size, unit size, units).
pub fn decode_any(raw: &[u8]) -> Option<(u64, u32, Vec<Unit>)> {
    let unit = u32::from_le_bytes(raw.get(12..16)?.try_into().ok()?);
    let size = u64::from_le_bytes(raw.get(16..24)?.try_into().ok()?);
    let units = decode(raw, size, unit).ok()?;
    Some((size, unit, units))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let units = vec![
            Unit {
                present: true,
                crc: 7,
            },
            Unit::default(),
            Unit {
                present: true,
                crc: 0,
            },
        ];
        let raw = encode(600_000, 262_144, &units);
        assert_eq!(decode(&raw, 600_000, 262_144).unwrap(), units);
        assert!(decode(&raw, 600_001, 262_144).is_err(), "another blob size");
        assert!(decode(&raw, 600_000, 4096).is_err(), "another unit size");
        for i in 0..raw.len() {
            let mut r = raw.clone();
            r[i] ^= 0x10;
            assert!(decode(&r, 600_000, 262_144).is_err(), "byte {i}");
        }
        for len in 0..raw.len() {
            assert!(decode(&raw[..len], 600_000, 262_144).is_err());
            assert!(decode_any(&raw[..len]).is_none());
        }
        assert_eq!(decode_any(&raw), Some((600_000, 262_144, units)));
    }
}
