//! The jump table: where each compressed block starts in the blob.
//!
//! On disk the index is one u32 per block (its compressed length, CRC included). In memory we
//! keep a u64 base per group of 64 blocks and a u32 delta per block: 4.125 bytes per block,
//! with no limit on how much a block may grow (overlaybd's u16 deltas fail on incompressible
//! 64 KiB blocks).

use crate::error::{Error, Result};

const GROUP_SHIFT: u32 = 6;
const GROUP: usize = 1 << GROUP_SHIFT;

/// Byte range of one stored block in the blob (compressed bytes, then the CRC if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobExtent {
    pub offset: u64,
    pub len: u32,
}

impl BlobExtent {
    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

/// Compressed block locations, built from the on-disk index.
#[derive(Clone, Debug)]
pub struct JumpTable {
    bases: Vec<u64>,
    deltas: Vec<u32>,
    /// One past the last byte of the last block.
    end: u64,
}

impl JumpTable {
    /// Builds the table from the raw index bytes (`4 * n` of them).
    ///
    /// `data_start` is where block 0 begins; `data_limit` is the first byte blocks may not reach
    /// (the index offset); `min_len` is the smallest valid entry (5 with per-block CRCs: at
    /// least one compressed byte and the CRC; 1 without); `max_len` the largest.
    pub fn build(
        raw: &[u8],
        data_start: u64,
        data_limit: u64,
        min_len: u32,
        max_len: u32,
    ) -> Result<Self> {
        debug_assert_eq!(raw.len() % 4, 0);
        let n = raw.len() / 4;
        let mut bases = Vec::with_capacity(n.div_ceil(GROUP));
        let mut deltas = Vec::with_capacity(n);
        let mut pos = data_start;
        let mut base = data_start;
        for (i, chunk) in raw.chunks_exact(4).enumerate() {
            let len = u32::from_le_bytes(chunk.try_into().expect("chunks_exact(4)"));
            if len < min_len || len > max_len {
                return Err(Error::BadIndex {
                    entry: i as u64,
                    reason: format!("compressed length {len} outside [{min_len}, {max_len}]"),
                });
            }
            if i % GROUP == 0 {
                bases.push(pos);
                base = pos;
            }
            deltas.push((pos - base) as u32);
            pos += len as u64;
            if pos > data_limit {
                return Err(Error::BadIndex {
                    entry: i as u64,
                    reason: format!("block ends at {pos:#x}, past the index at {data_limit:#x}"),
                });
            }
        }
        Ok(JumpTable {
            bases,
            deltas,
            end: pos,
        })
    }

    #[cfg(test)]
    pub fn blocks(&self) -> u64 {
        self.deltas.len() as u64
    }

    /// Where block `i` starts.
    fn start(&self, i: usize) -> u64 {
        if i == self.deltas.len() {
            return self.end;
        }
        self.bases[i >> GROUP_SHIFT] + self.deltas[i] as u64
    }

    /// Location of block `i` (which must be `< blocks()`).
    pub fn extent(&self, i: u64) -> BlobExtent {
        let i = i as usize;
        let offset = self.start(i);
        BlobExtent {
            offset,
            len: (self.start(i + 1) - offset) as u32,
        }
    }

    /// One past the last stored block.
    pub fn data_end(&self) -> u64 {
        self.end
    }

    /// Bytes of memory the table holds.
    pub fn heap_bytes(&self) -> usize {
        self.bases.capacity() * 8 + self.deltas.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(lens: &[u32]) -> Vec<u8> {
        lens.iter().flat_map(|l| l.to_le_bytes()).collect()
    }

    #[test]
    fn extents_across_groups() {
        let lens: Vec<u32> = (0..200).map(|i| 5 + (i * 37) % 70000).collect();
        let t = JumpTable::build(&raw(&lens), 512, u64::MAX, 5, 70004).unwrap();
        let mut pos = 512;
        for (i, &l) in lens.iter().enumerate() {
            assert_eq!(
                t.extent(i as u64),
                BlobExtent {
                    offset: pos,
                    len: l
                }
            );
            pos += l as u64;
        }
        assert_eq!(t.data_end(), pos);
        assert_eq!(t.blocks(), 200);
    }

    #[test]
    fn rejects_bad_entries() {
        let e = JumpTable::build(&raw(&[10, 4, 10]), 512, u64::MAX, 5, 100).unwrap_err();
        assert!(e.to_string().contains("entry 1"), "{e}");
        let e = JumpTable::build(&raw(&[10, 101]), 512, u64::MAX, 5, 100).unwrap_err();
        assert!(e.to_string().contains("entry 1"), "{e}");
        let e = JumpTable::build(&raw(&[10, 10]), 512, 530, 5, 100).unwrap_err();
        assert!(e.to_string().contains("past the index"), "{e}");
        assert_eq!(JumpTable::build(&[], 512, 512, 5, 100).unwrap().blocks(), 0);
    }
}
