//! overlaybd's CRC-32C: the raw register update, with no initial inversion and no final xor.
//! See `docs/format/zfile.md`, "Checksums".

/// Seed of the per-block CRC (`NOI_WELL_KNOWN_PRIME`).
pub const BLOCK_CRC_SEED: u32 = 100_007;

/// `crc32c_raw(init, data)`: the Castagnoli register update without pre- or post-inversion.
///
/// The `crc32c` crate computes the standard form (inverted in and out, hardware accelerated);
/// the raw form is that with both inversions undone.
pub fn crc32c_raw(init: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!init, data)
}

/// Per-block CRC of a compressed block.
pub fn block_crc(compressed: &[u8]) -> u32 {
    crc32c_raw(BLOCK_CRC_SEED, compressed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(crc32c_raw(0, b"123456789"), 0x58E3_FA20);
        assert_eq!(crc32c_raw(BLOCK_CRC_SEED, b"123456789"), 0x3C9B_D4E0);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_raw(0, &[0u8; 4096]), 0);
        assert_eq!(crc32c_raw(7, b""), 7);
    }

    #[test]
    fn matches_bitwise_definition() {
        fn slow(init: u32, data: &[u8]) -> u32 {
            let mut c = init;
            for &b in data {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        (c >> 1) ^ 0x82F6_3B78
                    } else {
                        c >> 1
                    };
                }
            }
            c
        }
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for init in [0, 1, BLOCK_CRC_SEED, u32::MAX] {
            for len in [0, 1, 7, 8, 9, 63, 1000] {
                assert_eq!(crc32c_raw(init, &data[..len]), slow(init, &data[..len]));
            }
        }
    }
}
