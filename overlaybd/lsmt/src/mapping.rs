//! The 16-byte segment mapping: which sectors of the virtual disk an extent covers and where
//! its data lies. Layout: `docs/format/lsmt.md`, "Segment mapping".

/// Bytes per sector: all LSMT offsets and lengths count 512-byte sectors.
pub const SECTOR: u64 = 512;
/// Longest extent one mapping can describe, in sectors (14-bit field).
pub const MAX_LENGTH: u32 = (1 << 14) - 1;
/// `offset` of a padding entry (`2^50 - 1`); readers drop such entries.
pub const INVALID_OFFSET: u64 = (1 << 50) - 1;
/// Largest `moffset` (55-bit field).
pub const MAX_MOFFSET: u64 = (1 << 55) - 1;
/// Bytes of one encoded mapping.
pub const MAPPING_BYTES: usize = 16;

/// One extent: `length` sectors at virtual sector `offset`, stored at sector `moffset` of the
/// file selected by `tag` (or reading as zeros when `zeroed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub offset: u64,
    pub length: u32,
    pub moffset: u64,
    pub zeroed: bool,
    pub tag: u8,
}

impl Mapping {
    pub fn data(offset: u64, length: u32, moffset: u64) -> Self {
        Mapping {
            offset,
            length,
            moffset,
            zeroed: false,
            tag: 0,
        }
    }

    pub fn zeroes(offset: u64, length: u32, moffset: u64) -> Self {
        Mapping {
            offset,
            length,
            moffset,
            zeroed: true,
            tag: 0,
        }
    }

    /// The padding entry overlaybd writes to fill an index to a 4 KiB multiple.
    pub fn invalid() -> Self {
        Mapping {
            offset: INVALID_OFFSET,
            length: 0,
            moffset: 0,
            zeroed: false,
            tag: 0,
        }
    }

    pub fn is_invalid(&self) -> bool {
        self.offset == INVALID_OFFSET
    }

    /// One past the last virtual sector.
    pub fn end(&self) -> u64 {
        self.offset + self.length as u64
    }

    /// One past the last stored sector; a zeroed extent stores nothing, so its end is its
    /// `moffset` (overlaybd's definition, which decides what a commit merges).
    pub fn mend(&self) -> u64 {
        if self.zeroed {
            self.moffset
        } else {
            self.moffset + self.length as u64
        }
    }

    /// Drops the sectors before `x` (which must lie inside the extent); the stored position
    /// moves along unless the extent is zeroed.
    pub fn forward_offset_to(&mut self, x: u64) {
        debug_assert!(x >= self.offset && x <= self.end());
        let d = x - self.offset;
        self.offset = x;
        self.length -= d as u32;
        if !self.zeroed {
            self.moffset += d;
        }
    }

    /// Drops the sectors from `x` on.
    pub fn backward_end_to(&mut self, x: u64) {
        debug_assert!(x >= self.offset && x <= self.end());
        self.length = (x - self.offset) as u32;
    }

    /// The extent cut to `[begin, end)` (which must overlap it).
    pub fn trimmed(mut self, begin: u64, end: u64) -> Self {
        if self.offset < begin {
            self.forward_offset_to(begin);
        }
        if self.end() > end {
            self.backward_end_to(end);
        }
        self
    }

    /// `w0 = offset | length << 50`, `w1 = moffset | zeroed << 55 | tag << 56`, little-endian.
    pub fn encode(&self) -> [u8; MAPPING_BYTES] {
        let w0 = (self.offset & INVALID_OFFSET) | ((self.length as u64 & MAX_LENGTH as u64) << 50);
        let w1 =
            (self.moffset & MAX_MOFFSET) | ((self.zeroed as u64) << 55) | ((self.tag as u64) << 56);
        let mut b = [0u8; MAPPING_BYTES];
        b[..8].copy_from_slice(&w0.to_le_bytes());
        b[8..].copy_from_slice(&w1.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; MAPPING_BYTES]) -> Self {
        let w0 = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let w1 = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
        Mapping {
            offset: w0 & INVALID_OFFSET,
            length: (w0 >> 50) as u32,
            moffset: w1 & MAX_MOFFSET,
            zeroed: (w1 >> 55) & 1 == 1,
            tag: (w1 >> 56) as u8,
        }
    }
}

/// Decodes a run of encoded mappings (a trailing partial entry is ignored).
pub fn decode_all(raw: &[u8]) -> impl Iterator<Item = Mapping> + '_ {
    raw.chunks_exact(MAPPING_BYTES)
        .map(|c| Mapping::decode(c.try_into().expect("chunks_exact")))
}

/// Encodes mappings back to back.
pub fn encode_all(maps: &[Mapping]) -> Vec<u8> {
    maps.iter().flat_map(|m| m.encode()).collect()
}

/// overlaybd's `compress_raw_index`: merges each mapping into the previous one when they are
/// contiguous both in the disk and in the file, agree in `zeroed` and `tag`, and the merged
/// length stays below [`MAX_LENGTH`].
pub fn compress(maps: &mut Vec<Mapping>) {
    if maps.len() < 2 {
        return;
    }
    let mut i = 0;
    for j in 1..maps.len() {
        let (a, b) = (maps[i], maps[j]);
        if a.end() == b.offset
            && a.mend() == b.moffset
            && a.zeroed == b.zeroed
            && a.tag == b.tag
            && a.length + b.length < MAX_LENGTH
        {
            maps[i].length += b.length;
        } else {
            i += 1;
            maps[i] = b;
        }
    }
    maps.truncate(i + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_the_spec() {
        // docs/format/lsmt.md: {offset 0x10, length 8, moffset 8}.
        let m = Mapping::data(0x10, 8, 8);
        assert_eq!(
            m.encode(),
            [0x10, 0, 0, 0, 0, 0, 0x20, 0, 8, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Mapping::invalid().encode(),
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let z = Mapping {
            offset: 1,
            length: MAX_LENGTH,
            moffset: MAX_MOFFSET,
            zeroed: true,
            tag: 0xAB,
        };
        assert_eq!(Mapping::decode(&z.encode()), z);
        assert_eq!(z.encode()[15], 0xAB);
        assert_eq!(z.encode()[14] & 0x80, 0x80);
        assert_eq!(MAPPING_BYTES, 16);
    }

    #[test]
    fn trimming() {
        let m = Mapping::data(100, 50, 1000);
        let t = m.trimmed(110, 140);
        assert_eq!((t.offset, t.length, t.moffset), (110, 30, 1010));
        let z = Mapping::zeroes(100, 50, 1000).trimmed(110, 200);
        assert_eq!((z.offset, z.length, z.moffset), (110, 40, 1000));
    }

    #[test]
    fn compress_rules() {
        let mut v = vec![
            Mapping::data(0, 64, 8),
            Mapping::data(64, 64, 72),
            Mapping::zeroes(128, 8, 136),
            Mapping::zeroes(136, 8, 136), // a zeroed extent ends at its moffset: these merge
            Mapping::data(144, 8, 200),   // file gap
            Mapping::zeroes(152, 8, 208), // data then zeroes never merge
        ];
        compress(&mut v);
        assert_eq!(
            v,
            vec![
                Mapping::data(0, 128, 8),
                Mapping::zeroes(128, 16, 136),
                Mapping::data(144, 8, 200),
                Mapping::zeroes(152, 8, 208)
            ]
        );
        // Merging stops before reaching MAX_LENGTH (strictly below).
        let mut v: Vec<Mapping> = (0..300)
            .map(|i| Mapping::data(i * 64, 64, 8 + i * 64))
            .collect();
        compress(&mut v);
        assert_eq!(v[0].length, 16320);
        assert_eq!(v.iter().map(|m| m.length as u64).sum::<u64>(), 300 * 64);
    }
}
