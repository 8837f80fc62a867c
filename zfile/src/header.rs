//! The 512-byte header/trailer slot. Layout: `docs/format/zfile.md`, "Header and trailer".

use crate::crc::crc32c_raw;
use crate::error::{Error, Result};

/// Size of the header slot and of the trailer slot on disk.
pub const HT_SLOT: usize = 512;
/// Bytes of the slot the struct uses (value of the `size` field).
pub const HT_USED: u32 = 96;
/// `"ZFile\0\1\0"`.
pub const MAGIC0: [u8; 8] = *b"ZFile\0\x01\0";
/// `"tuji.yyf@Alibaba"`.
pub const MAGIC1: [u8; 16] = *b"tuji.yyf@Alibaba";
/// Largest block size the format allows (and overlaybd's reader accepts).
pub const MAX_BLOCK_SIZE: u32 = 65536;
/// Smallest block size accepted.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Most index entries a reader accepts (overlaybd's `MAX_ZFILE_INDEX_SIZE`).
pub const MAX_INDEX_ENTRIES: u64 = 1_000_000_000;

/// Byte offsets of the fields inside the slot.
pub mod off {
    pub const MAGIC0: usize = 0;
    pub const MAGIC1: usize = 8;
    pub const SIZE: usize = 24;
    pub const DIGEST: usize = 28;
    pub const FLAGS: usize = 32;
    pub const INDEX_OFFSET: usize = 40;
    pub const INDEX_SIZE: usize = 48;
    pub const ORIGINAL_FILE_SIZE: usize = 56;
    pub const INDEX_CRC: usize = 64;
    pub const RESERVED_0: usize = 68;
    pub const BLOCK_SIZE: usize = 72;
    pub const ALGO: usize = 76;
    pub const LEVEL: usize = 77;
    pub const USE_DICT: usize = 78;
    pub const OPT_RESERVED: usize = 80;
    pub const DICT_SIZE: usize = 84;
    pub const VERIFY: usize = 88;
}

/// The defined bits of `flags`. Bits 6..63 are never interpreted (old writers left garbage).
pub mod flags {
    pub const HEADER: u64 = 1 << 0;
    pub const DATA_FILE: u64 = 1 << 1;
    pub const SEALED: u64 = 1 << 2;
    pub const HEADER_OVERWRITE: u64 = 1 << 3;
    pub const CALC_DIGEST: u64 = 1 << 4;
    pub const INDEX_COMPRESSED: u64 = 1 << 5;
}

/// The compression codec of every block in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Raw LZ4 block format (id 1).
    Lz4,
    /// One zstd frame per block (id 2).
    Zstd,
}

impl Algorithm {
    /// The on-disk id.
    pub fn id(self) -> u8 {
        match self {
            Algorithm::Lz4 => 1,
            Algorithm::Zstd => 2,
        }
    }

    /// The algorithm for an on-disk id; 0 (MINI_LZO) is defined by overlaybd but never
    /// implemented there, so it is rejected like any other unknown id.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Algorithm::Lz4),
            2 => Some(Algorithm::Zstd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Lz4 => "lz4",
            Algorithm::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "lz4" => Ok(Algorithm::Lz4),
            "zstd" => Ok(Algorithm::Zstd),
            _ => Err(format!("unknown algorithm {s:?} (expected lz4 or zstd)")),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded header or trailer. Only the fields a reader relies on are kept; reserved and
/// padding bytes are neither checked nor preserved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderTrailer {
    pub flags: u64,
    pub digest: u32,
    pub index_offset: u64,
    /// Number of index entries (= blocks), not bytes.
    pub index_size: u64,
    pub original_file_size: u64,
    pub index_crc: u32,
    pub block_size: u32,
    /// Raw algorithm id; checked by [`HeaderTrailer::algorithm`].
    pub algo: u8,
    /// 0 = the codec's default level (zstd 3); overlaybd ignores this byte.
    pub level: u8,
    pub use_dict: u8,
    pub dict_size: u32,
    /// Each compressed block is followed by a 4-byte CRC.
    pub verify: bool,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(
        b[at..at + 4]
            .try_into()
            .expect("4-byte field inside the slot"),
    )
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(
        b[at..at + 8]
            .try_into()
            .expect("8-byte field inside the slot"),
    )
}

impl HeaderTrailer {
    /// A header or trailer for a new file, with zeroed index fields.
    pub fn new(flags: u64, algorithm: Algorithm, level: u8, block_size: u32, verify: bool) -> Self {
        HeaderTrailer {
            flags,
            digest: 0,
            index_offset: 0,
            index_size: 0,
            original_file_size: 0,
            index_crc: 0,
            block_size,
            algo: algorithm.id(),
            level,
            use_dict: 0,
            dict_size: 0,
            verify,
        }
    }

    /// Decodes a slot. Checks the two magics only; everything else is the caller's to judge.
    pub fn decode(slot: &[u8; HT_SLOT]) -> Result<Self> {
        if slot[off::MAGIC0..off::MAGIC0 + 8] != MAGIC0 {
            return Err(Error::NotZFile("bad magic0 (expected \"ZFile\\0\\1\")"));
        }
        if slot[off::MAGIC1..off::MAGIC1 + 16] != MAGIC1 {
            return Err(Error::NotZFile(
                "bad magic1 (expected \"tuji.yyf@Alibaba\")",
            ));
        }
        Ok(HeaderTrailer {
            flags: u64_at(slot, off::FLAGS),
            digest: u32_at(slot, off::DIGEST),
            index_offset: u64_at(slot, off::INDEX_OFFSET),
            index_size: u64_at(slot, off::INDEX_SIZE),
            original_file_size: u64_at(slot, off::ORIGINAL_FILE_SIZE),
            index_crc: u32_at(slot, off::INDEX_CRC),
            block_size: u32_at(slot, off::BLOCK_SIZE),
            algo: slot[off::ALGO],
            level: slot[off::LEVEL],
            use_dict: slot[off::USE_DICT],
            dict_size: u32_at(slot, off::DICT_SIZE),
            verify: slot[off::VERIFY] != 0,
        })
    }

    /// Encodes the slot as overlaybd's writer does: every unused byte zero, and `digest`
    /// computed when `CALC_DIGEST` is set.
    pub fn encode(&self) -> [u8; HT_SLOT] {
        let mut s = [0u8; HT_SLOT];
        s[off::MAGIC0..off::MAGIC0 + 8].copy_from_slice(&MAGIC0);
        s[off::MAGIC1..off::MAGIC1 + 16].copy_from_slice(&MAGIC1);
        s[off::SIZE..off::SIZE + 4].copy_from_slice(&HT_USED.to_le_bytes());
        s[off::FLAGS..off::FLAGS + 8].copy_from_slice(&self.flags.to_le_bytes());
        s[off::INDEX_OFFSET..off::INDEX_OFFSET + 8]
            .copy_from_slice(&self.index_offset.to_le_bytes());
        s[off::INDEX_SIZE..off::INDEX_SIZE + 8].copy_from_slice(&self.index_size.to_le_bytes());
        s[off::ORIGINAL_FILE_SIZE..off::ORIGINAL_FILE_SIZE + 8]
            .copy_from_slice(&self.original_file_size.to_le_bytes());
        s[off::INDEX_CRC..off::INDEX_CRC + 4].copy_from_slice(&self.index_crc.to_le_bytes());
        s[off::BLOCK_SIZE..off::BLOCK_SIZE + 4].copy_from_slice(&self.block_size.to_le_bytes());
        s[off::ALGO] = self.algo;
        s[off::LEVEL] = self.level;
        s[off::USE_DICT] = self.use_dict;
        s[off::DICT_SIZE..off::DICT_SIZE + 4].copy_from_slice(&self.dict_size.to_le_bytes());
        s[off::VERIFY] = self.verify as u8;
        if self.flags & flags::CALC_DIGEST != 0 {
            let d = slot_digest(&s);
            s[off::DIGEST..off::DIGEST + 4].copy_from_slice(&d.to_le_bytes());
        } else {
            s[off::DIGEST..off::DIGEST + 4].copy_from_slice(&self.digest.to_le_bytes());
        }
        s
    }

    pub fn has(&self, flag: u64) -> bool {
        self.flags & flag != 0
    }

    /// The codec, or an error naming the unknown id.
    pub fn algorithm(&self, which: &'static str) -> Result<Algorithm> {
        Algorithm::from_id(self.algo).ok_or(Error::BadHeader {
            which,
            field: "algo",
            value: self.algo as u64,
            reason: "unknown algorithm (1 = lz4, 2 = zstd)",
        })
    }
}

/// `crc32c_raw(0, slot)` computed with the digest field taken as zero.
pub fn slot_digest(slot: &[u8; HT_SLOT]) -> u32 {
    let c = crc32c_raw(0, &slot[..off::DIGEST]);
    let c = crc32c_raw(c, &[0u8; 4]);
    crc32c_raw(c, &slot[off::DIGEST + 4..])
}

/// True when the slot's `digest` field matches its content.
pub fn digest_matches(slot: &[u8; HT_SLOT]) -> bool {
    slot_digest(slot) == u32_at(slot, off::DIGEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header of `a.lz4.bs4.zfile` as overlaybd-zfile wrote it, field by field.
    fn vector_header() -> [u8; HT_SLOT] {
        let mut s = [0u8; HT_SLOT];
        let used: [u8; 96] = [
            0x5a, 0x46, 0x69, 0x6c, 0x65, 0x00, 0x01, 0x00, // magic0 "ZFile\0\1\0"
            0x74, 0x75, 0x6a, 0x69, 0x2e, 0x79, 0x79, 0x66, // magic1 "tuji.yyf"
            0x40, 0x41, 0x6c, 0x69, 0x62, 0x61, 0x62, 0x61, // magic1 "@Alibaba"
            0x60, 0x00, 0x00, 0x00, // size = 96
            0xfc, 0x12, 0xa2, 0xc7, // digest
            0x13, 0, 0, 0, 0, 0, 0, 0, // flags = header | data | digest
            0, 0, 0, 0, 0, 0, 0, 0, // index_offset (not known yet)
            0, 0, 0, 0, 0, 0, 0, 0, // index_size
            0, 0, 0, 0, 0, 0, 0, 0, // original_file_size
            0, 0, 0, 0, // index_crc
            0, 0, 0, 0, // reserved_0
            0x00, 0x10, 0x00, 0x00, // block_size = 4096
            0x01, // algo = lz4
            0x00, // level
            0x00, // use_dict
            0x00, // padding
            0, 0, 0, 0, // opt.reserved
            0, 0, 0, 0,    // dict_size
            0x01, // verify
            0, 0, 0, 0, 0, 0, 0, // padding
        ];
        s[..96].copy_from_slice(&used);
        s
    }

    #[test]
    fn field_offsets_match_the_spec() {
        // docs/format/zfile.md, "Header and trailer" table.
        assert_eq!(
            [
                off::MAGIC0,
                off::MAGIC1,
                off::SIZE,
                off::DIGEST,
                off::FLAGS,
                off::INDEX_OFFSET
            ],
            [0, 8, 24, 28, 32, 40]
        );
        assert_eq!(
            [
                off::INDEX_SIZE,
                off::ORIGINAL_FILE_SIZE,
                off::INDEX_CRC,
                off::RESERVED_0
            ],
            [48, 56, 64, 68]
        );
        assert_eq!(
            [
                off::BLOCK_SIZE,
                off::ALGO,
                off::LEVEL,
                off::USE_DICT,
                off::OPT_RESERVED
            ],
            [72, 76, 77, 78, 80]
        );
        assert_eq!([off::DICT_SIZE, off::VERIFY], [84, 88]);
        assert_eq!((HT_SLOT, HT_USED), (512, 96));
        assert_eq!(
            [
                flags::HEADER,
                flags::DATA_FILE,
                flags::SEALED,
                flags::HEADER_OVERWRITE
            ],
            [1, 2, 4, 8]
        );
        assert_eq!([flags::CALC_DIGEST, flags::INDEX_COMPRESSED], [16, 32]);
    }

    #[test]
    fn decodes_and_reencodes_the_vector_header() {
        let s = vector_header();
        assert!(digest_matches(&s));
        let h = HeaderTrailer::decode(&s).unwrap();
        assert_eq!(h.flags, 0x13);
        assert_eq!(h.block_size, 4096);
        assert_eq!(h.algorithm("header").unwrap(), Algorithm::Lz4);
        assert!(h.verify);
        assert_eq!(h.encode(), s);
        let fresh = HeaderTrailer::new(0x13, Algorithm::Lz4, 0, 4096, true);
        assert_eq!(fresh.encode(), s);
    }

    #[test]
    fn rejects_bad_magic_and_detects_digest_damage() {
        let mut s = vector_header();
        s[3] ^= 1;
        assert!(matches!(HeaderTrailer::decode(&s), Err(Error::NotZFile(_))));
        let mut s = vector_header();
        s[9] = b'X';
        assert!(matches!(HeaderTrailer::decode(&s), Err(Error::NotZFile(_))));
        let mut s = vector_header();
        s[200] = 1;
        assert!(!digest_matches(&s));
        let mut s = vector_header();
        s[77] = 9; // the digest covers every byte of the slot but its own field
        assert!(!digest_matches(&s));
    }

    #[test]
    fn unknown_algorithm_is_named() {
        let mut s = vector_header();
        s[off::ALGO] = 0;
        let h = HeaderTrailer::decode(&s).unwrap();
        let e = h.algorithm("trailer").unwrap_err().to_string();
        assert!(e.contains("algo") && e.contains("trailer"), "{e}");
    }
}
