//! The 4096-byte LSMT header/trailer. Layout: `docs/format/lsmt.md`, "Header and trailer".

use std::fmt;

use crate::error::{Error, Result};

/// Size of the header slot and the trailer slot.
pub const HT_SPACE: usize = 4096;
/// Bytes of the slot the struct uses (value of `size`).
pub const HT_USED: u32 = 390;
/// `"LSMT\0\1\2\0"`.
pub const MAGIC0: [u8; 8] = *b"LSMT\0\x01\x02\0";
/// The second magic, a UUID in its little-endian field layout.
pub const MAGIC1: [u8; 16] = [
    0x65, 0x7E, 0x63, 0xD2, 0x94, 0x44, 0x08, 0x4C, 0xA2, 0xD2, 0xC8, 0xEC, 0x4F, 0xCF, 0xAE, 0x8A,
];
/// Longest commit message.
pub const USER_TAG_LEN: usize = 256;

/// Field offsets inside the slot.
pub mod off {
    pub const MAGIC0: usize = 0;
    pub const MAGIC1: usize = 8;
    pub const SIZE: usize = 24;
    pub const FLAGS: usize = 28;
    pub const INDEX_OFFSET: usize = 32;
    pub const INDEX_SIZE: usize = 40;
    pub const VIRTUAL_SIZE: usize = 48;
    pub const UUID: usize = 56;
    pub const PARENT_UUID: usize = 93;
    pub const RESERVED: usize = 130;
    pub const VERSION: usize = 132;
    pub const SUB_VERSION: usize = 133;
    pub const USER_TAG: usize = 134;
}

/// Flag bits.
pub mod flags {
    pub const HEADER: u32 = 1 << 0;
    pub const DATA_FILE: u32 = 1 << 1;
    pub const SEALED: u32 = 1 << 2;
    pub const SPARSE_RW: u32 = 1 << 4;
}

/// A layer UUID. Written as 36 uppercase hex digits with dashes, NUL-terminated; the all-zero
/// UUID means "none".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub const NIL: Uuid = Uuid([0; 16]);

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// A random (version 4) UUID.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        getrandom(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }

    /// Parses `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` (either case).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if s[i] != b'-' {
                    return None;
                }
                i += 1;
                continue;
            }
            let hex = |c: u8| (c as char).to_digit(16);
            out[n] = (hex(s[i])? * 16 + hex(s[i + 1])?) as u8;
            n += 1;
            i += 2;
        }
        Some(Uuid(out))
    }
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    // The kernel's generator; a UUID needs no more than this.
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = t.as_nanos() ^ (std::process::id() as u128) << 64;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Uuid {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Uuid::parse(s)
            .ok_or_else(|| format!("{s:?} is not a UUID (XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)"))
    }
}

/// A decoded header or trailer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderTrailer {
    pub flags: u32,
    /// Bytes; meaning depends on the file kind.
    pub index_offset: u64,
    /// Number of 16-byte mappings (padding included).
    pub index_size: u64,
    /// Bytes of the virtual disk.
    pub virtual_size: u64,
    /// `None` when the field does not hold a UUID (old files may carry anything there).
    pub uuid: Option<Uuid>,
    pub parent_uuid: Option<Uuid>,
    pub version: u8,
    pub sub_version: u8,
    /// Commit message, without the zero padding.
    pub user_tag: Vec<u8>,
}

fn uuid_field(raw: &[u8]) -> Option<Uuid> {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..end]).ok().and_then(Uuid::parse)
}

impl HeaderTrailer {
    pub fn new(flags: u32, virtual_size: u64, uuid: Uuid, parent_uuid: Uuid) -> Self {
        HeaderTrailer {
            flags,
            index_offset: 0,
            index_size: 0,
            virtual_size,
            uuid: Some(uuid),
            parent_uuid: Some(parent_uuid),
            version: 1,
            sub_version: 1,
            user_tag: Vec::new(),
        }
    }

    pub fn has(&self, f: u32) -> bool {
        self.flags & f != 0
    }

    /// Decodes a slot; `which` names it in errors. Only the magics are checked here.
    pub fn decode(slot: &[u8], which: &'static str) -> Result<Self> {
        if slot.len() < HT_SPACE {
            return Err(Error::Truncated {
                what: which,
                need: HT_SPACE as u64,
                got: slot.len() as u64,
            });
        }
        if slot[off::MAGIC0..off::MAGIC0 + 8] != MAGIC0
            || slot[off::MAGIC1..off::MAGIC1 + 16] != MAGIC1
        {
            return Err(Error::NotLsmt(which));
        }
        let u64_at = |at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().expect("8 bytes"));
        let tag = &slot[off::USER_TAG..off::USER_TAG + USER_TAG_LEN];
        let tag_end = tag.iter().position(|&c| c == 0).unwrap_or(USER_TAG_LEN);
        Ok(HeaderTrailer {
            flags: u32::from_le_bytes(
                slot[off::FLAGS..off::FLAGS + 4]
                    .try_into()
                    .expect("4 bytes"),
            ),
            index_offset: u64_at(off::INDEX_OFFSET),
            index_size: u64_at(off::INDEX_SIZE),
            virtual_size: u64_at(off::VIRTUAL_SIZE),
            uuid: uuid_field(&slot[off::UUID..off::UUID + 37]),
            parent_uuid: uuid_field(&slot[off::PARENT_UUID..off::PARENT_UUID + 37]),
            version: slot[off::VERSION],
            sub_version: slot[off::SUB_VERSION],
            user_tag: tag[..tag_end].to_vec(),
        })
    }

    /// Encodes the slot as overlaybd writes it (every unused byte zero).
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.user_tag.len() > USER_TAG_LEN {
            return Err(Error::InvalidArgument(format!(
                "commit message of {} bytes (at most {USER_TAG_LEN})",
                self.user_tag.len()
            )));
        }
        let mut s = vec![0u8; HT_SPACE];
        s[off::MAGIC0..off::MAGIC0 + 8].copy_from_slice(&MAGIC0);
        s[off::MAGIC1..off::MAGIC1 + 16].copy_from_slice(&MAGIC1);
        s[off::SIZE..off::SIZE + 4].copy_from_slice(&HT_USED.to_le_bytes());
        s[off::FLAGS..off::FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        s[off::INDEX_OFFSET..off::INDEX_OFFSET + 8]
            .copy_from_slice(&self.index_offset.to_le_bytes());
        s[off::INDEX_SIZE..off::INDEX_SIZE + 8].copy_from_slice(&self.index_size.to_le_bytes());
        s[off::VIRTUAL_SIZE..off::VIRTUAL_SIZE + 8]
            .copy_from_slice(&self.virtual_size.to_le_bytes());
        let u = self.uuid.unwrap_or(Uuid::NIL).to_string();
        s[off::UUID..off::UUID + 36].copy_from_slice(u.as_bytes());
        let p = self.parent_uuid.unwrap_or(Uuid::NIL).to_string();
        s[off::PARENT_UUID..off::PARENT_UUID + 36].copy_from_slice(p.as_bytes());
        s[off::VERSION] = self.version;
        s[off::SUB_VERSION] = self.sub_version;
        s[off::USER_TAG..off::USER_TAG + self.user_tag.len()].copy_from_slice(&self.user_tag);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_the_spec() {
        assert_eq!(
            [
                off::MAGIC0,
                off::MAGIC1,
                off::SIZE,
                off::FLAGS,
                off::INDEX_OFFSET,
                off::INDEX_SIZE
            ],
            [0, 8, 24, 28, 32, 40]
        );
        assert_eq!(
            [
                off::VIRTUAL_SIZE,
                off::UUID,
                off::PARENT_UUID,
                off::RESERVED,
                off::VERSION,
                off::SUB_VERSION,
                off::USER_TAG
            ],
            [48, 56, 93, 130, 132, 133, 134]
        );
        assert_eq!((HT_SPACE, HT_USED, USER_TAG_LEN), (4096, 390, 256));
        assert_eq!(off::USER_TAG + USER_TAG_LEN, HT_USED as usize);
        assert_eq!(
            [
                flags::HEADER,
                flags::DATA_FILE,
                flags::SEALED,
                flags::SPARSE_RW
            ],
            [1, 2, 4, 16]
        );
    }

    #[test]
    fn uuid_text() {
        let u = Uuid::parse("11111111-2222-3333-4444-55555555555a").unwrap();
        assert_eq!(u.to_string(), "11111111-2222-3333-4444-55555555555A");
        assert_eq!(u.0[0], 0x11);
        assert_eq!(u.0[15], 0x5a);
        for bad in [
            "",
            "11111111-2222-3333-4444-5555555555",
            "11111111+2222-3333-4444-555555555555",
            "G1111111-2222-3333-4444-555555555555",
        ] {
            assert!(Uuid::parse(bad).is_none(), "{bad}");
        }
        let r = Uuid::random();
        assert_eq!(r.0[6] >> 4, 4);
        assert_ne!(r, Uuid::random());
        assert_eq!(
            Uuid::NIL.to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn round_trip_and_bad_magic() {
        let mut h = HeaderTrailer::new(0x07, 1 << 30, Uuid([7; 16]), Uuid::NIL);
        h.user_tag = b"hello".to_vec();
        let s = h.encode().unwrap();
        assert_eq!(HeaderTrailer::decode(&s, "header").unwrap(), h);
        let mut bad = s.clone();
        bad[9] ^= 1;
        assert!(matches!(
            HeaderTrailer::decode(&bad, "header"),
            Err(Error::NotLsmt("header"))
        ));
        assert!(HeaderTrailer::decode(&s[..100], "header").is_err());
        h.user_tag = vec![1; 257];
        assert!(h.encode().is_err());
    }
}
