//! The read-only index of a layer or a merged stack: sorted, non-overlapping extents with a
//! static B+-tree over their start sectors.
//!
//! Leaves hold 16 extents: their start sectors (u32 while the disk is under 2 TiB, else u64)
//! and one packed u64 each (`moffset` in 41 bits, i.e. layer files up to 1 PiB, then length,
//! zeroed and tag), so a lookup touches one leaf: 12 bytes per extent with u32 keys, plus the
//! inner levels (1/15 of the keys). A node search counts the keys ≤ x among 16 with SSE2
//! compares (x86_64) or a loop the compiler vectorises.

use super::mapping::Mapping;
use crate::error::{Error, Result};

const B: usize = 16;
/// Largest `moffset` the packed form holds: 2^41 sectors (1 PiB of layer file).
pub const MAX_PACKED_MOFFSET: u64 = (1 << 41) - 1;

fn pack(m: &Mapping) -> u64 {
    debug_assert!(m.length <= 0x3FFF);
    // A zeroed extent's moffset means nothing: keep only what fits.
    (m.moffset & MAX_PACKED_MOFFSET)
        | (m.length as u64 & 0x3FFF) << 41
        | (m.zeroed as u64) << 55
        | (m.tag as u64) << 56
}

fn unpack(offset: u64, v: u64) -> Mapping {
    Mapping {
        offset,
        length: ((v >> 41) & 0x3FFF) as u32,
        moffset: v & MAX_PACKED_MOFFSET,
        zeroed: (v >> 55) & 1 == 1,
        tag: (v >> 56) as u8,
    }
}

/// A key type of the tree. u32 keys are stored with their top bit flipped, so that SSE2's
/// signed compares order them as unsigned.
pub trait Key: Copy + Ord + Send + Sync + std::fmt::Debug + 'static {
    const PAD: Self;
    /// Largest value a search may look for (every real key is ≤ it, the padding is above it).
    const MAX_SEARCH: u64;
    fn encode(v: u64) -> Self;
    fn decode(self) -> u64;
    /// How many of the 16 keys are ≤ `x` (both encoded).
    fn rank(keys: &[Self; B], x: Self) -> usize;
}

impl Key for u32 {
    const PAD: Self = 0x7FFF_FFFF; // i32::MAX once encoded: above every real key
    const MAX_SEARCH: u64 = u32::MAX as u64 - 1;
    fn encode(v: u64) -> Self {
        (v as u32) ^ 0x8000_0000
    }
    fn decode(self) -> u64 {
        (self ^ 0x8000_0000) as u64
    }
    #[inline(always)]
    fn rank(keys: &[Self; B], x: Self) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            // SAFETY: SSE2 is part of the x86_64 baseline; the four unaligned loads read the
            // 64 bytes of `keys` and nothing else.
            unsafe {
                let xv = _mm_set1_epi32(x as i32);
                let p = keys.as_ptr() as *const __m128i;
                let a = _mm_cmpgt_epi32(_mm_loadu_si128(p), xv);
                let b = _mm_cmpgt_epi32(_mm_loadu_si128(p.add(1)), xv);
                let c = _mm_cmpgt_epi32(_mm_loadu_si128(p.add(2)), xv);
                let d = _mm_cmpgt_epi32(_mm_loadu_si128(p.add(3)), xv);
                let m = _mm_movemask_epi8(_mm_packs_epi16(
                    _mm_packs_epi32(a, b),
                    _mm_packs_epi32(c, d),
                )) as u32;
                // Keys are sorted, so the keys > x are a suffix: the rank is where it starts.
                (m | 1 << B).trailing_zeros() as usize
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            keys.iter()
                .map(|&k| ((k as i32) <= (x as i32)) as usize)
                .sum()
        }
    }
}

impl Key for u64 {
    const PAD: Self = u64::MAX;
    const MAX_SEARCH: u64 = u64::MAX - 1;
    fn encode(v: u64) -> Self {
        v
    }
    fn decode(self) -> u64 {
        self
    }
    #[inline(always)]
    fn rank(keys: &[Self; B], x: Self) -> usize {
        keys.iter().map(|&k| (k <= x) as usize).sum()
    }
}

#[cfg(test)]
#[test]
fn sse_rank_matches_a_count() {
    let keys: [u32; B] = std::array::from_fn(|i| u32::encode(i as u64 * 10 + 5));
    for x in 0..200u64 {
        let want = (0..B).filter(|&i| i as u64 * 10 + 5 <= x).count();
        assert_eq!(u32::rank(&keys, u32::encode(x)), want, "x {x}");
    }
    let mut padded = keys;
    padded[9..].fill(u32::PAD);
    assert_eq!(u32::rank(&padded, u32::encode(u32::MAX_SEARCH)), 9);
}

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Inner<K: Key>([K; B]);

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Leaf<K: Key> {
    keys: [K; B],
    vals: [u64; B],
}

/// Starts loading a leaf's value lines while its keys are being ranked, so that the two
/// cache misses overlap instead of following each other.
#[inline(always)]
fn prefetch_values<K: Key>(leaf: &Leaf<K>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = leaf.vals.as_ptr() as *const i8;
        // SAFETY: prefetch is a hint that never faults; both addresses lie inside `leaf.vals`.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.add(64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = leaf;
}

#[derive(Clone, Debug)]
struct Tree<K: Key> {
    /// Inner levels back to back, root first; each node holds the first key of each of its 16
    /// children. `starts[l]` is where level `l` begins.
    inner: Vec<Inner<K>>,
    starts: Vec<usize>,
    leaves: Vec<Leaf<K>>,
    len: usize,
}

impl<K: Key> Tree<K> {
    fn build(maps: &[Mapping]) -> Self {
        let n_leaves = maps.len().div_ceil(B).max(1);
        let mut leaves = Vec::with_capacity(n_leaves);
        for chunk in maps.chunks(B) {
            let mut leaf = Leaf {
                keys: [K::PAD; B],
                vals: [0; B],
            };
            for (j, m) in chunk.iter().enumerate() {
                leaf.keys[j] = K::encode(m.offset);
                leaf.vals[j] = pack(m);
            }
            leaves.push(leaf);
        }
        if leaves.is_empty() {
            leaves.push(Leaf {
                keys: [K::PAD; B],
                vals: [0; B],
            });
        }
        let mut levels = Vec::new();
        let mut firsts: Vec<K> = leaves.iter().map(|l| l.keys[0]).collect();
        while firsts.len() > 1 {
            let mut level = Vec::with_capacity(firsts.len().div_ceil(B));
            for chunk in firsts.chunks(B) {
                let mut node = Inner([K::PAD; B]);
                node.0[..chunk.len()].copy_from_slice(chunk);
                level.push(node);
            }
            firsts = level.iter().map(|n| n.0[0]).collect();
            levels.push(level);
        }
        levels.reverse();
        let mut inner = Vec::with_capacity(levels.iter().map(Vec::len).sum());
        let mut starts = Vec::with_capacity(levels.len());
        for level in levels {
            starts.push(inner.len());
            inner.extend(level);
        }
        Tree {
            inner,
            starts,
            leaves,
            len: maps.len(),
        }
    }

    #[inline(always)]
    fn key(&self, i: usize) -> u64 {
        self.leaves[i / B].keys[i % B].decode()
    }

    #[inline(always)]
    fn get(&self, i: usize) -> Mapping {
        let leaf = &self.leaves[i / B];
        unpack(leaf.keys[i % B].decode(), leaf.vals[i % B])
    }

    /// Position of the first extent ending after sector `x`.
    #[inline(always)]
    fn first_ending_after(&self, x: u64) -> usize {
        if self.len == 0 || x < self.key(0) {
            return 0;
        }
        let xk = K::encode(x.min(K::MAX_SEARCH));
        let mut node = 0usize;
        for &start in &self.starts {
            node = node * B + K::rank(&self.inner[start + node].0, xk) - 1;
        }
        let leaf = &self.leaves[node];
        prefetch_values(leaf);
        let j = K::rank(&leaf.keys, xk) - 1;
        let i = node * B + j;
        let v = leaf.vals[j];
        // Step past the extent at i when it ends at or before x (branch-free).
        i + (x >= leaf.keys[j].decode() + ((v >> 41) & 0x3FFF)) as usize
    }

    fn heap_bytes(&self) -> usize {
        self.inner.capacity() * std::mem::size_of::<Inner<K>>()
            + self.starts.capacity() * std::mem::size_of::<usize>()
            + self.leaves.capacity() * std::mem::size_of::<Leaf<K>>()
    }
}

#[derive(Clone, Debug)]
enum Trees {
    Narrow(Tree<u32>),
    Wide(Tree<u64>),
}

/// A sorted, non-overlapping set of extents with fast lookup. Immutable once built.
#[derive(Clone, Debug)]
pub struct RoIndex {
    tree: Trees,
}

macro_rules! with_tree {
    ($self:expr, $t:ident => $e:expr) => {
        match &$self.tree {
            Trees::Narrow($t) => $e,
            Trees::Wide($t) => $e,
        }
    };
}

impl RoIndex {
    /// Builds from mappings that are sorted and do not overlap (checked by the caller). Fails
    /// only for layer files over 1 PiB.
    pub fn new(maps: &[Mapping]) -> Result<Self> {
        debug_assert!(maps.windows(2).all(|w| w[0].end() <= w[1].offset));
        if let Some(m) = maps
            .iter()
            .find(|m| !m.zeroed && m.moffset > MAX_PACKED_MOFFSET)
        {
            return Err(Error::Unsupported(format!(
                "extent at sector {} is stored at sector {} of its layer: layer files over 1 PiB are not supported",
                m.offset, m.moffset
            )));
        }
        let narrow = maps.last().is_none_or(|m| m.offset < u32::MAX as u64);
        let tree = if narrow {
            Trees::Narrow(Tree::build(maps))
        } else {
            Trees::Wide(Tree::build(maps))
        };
        Ok(RoIndex { tree })
    }

    pub fn len(&self) -> usize {
        with_tree!(self, t => t.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th extent.
    pub fn get(&self, i: usize) -> Mapping {
        with_tree!(self, t => t.get(i))
    }

    pub fn iter(&self) -> impl Iterator<Item = Mapping> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Position of the first extent that ends after sector `x` (it may start after `x`).
    #[inline]
    pub fn first_ending_after(&self, x: u64) -> usize {
        with_tree!(self, t => t.first_ending_after(x))
    }

    /// The extent covering sector `x`, if any.
    #[inline]
    pub fn find(&self, x: u64) -> Option<Mapping> {
        with_tree!(self, t => {
            let i = t.first_ending_after(x);
            if i < t.len {
                let m = t.get(i);
                (m.offset <= x).then_some(m)
            } else {
                None
            }
        })
    }

    /// Extents overlapping `[begin, end)`, cut to it, in order.
    pub fn overlapping(&self, begin: u64, end: u64) -> impl Iterator<Item = Mapping> + '_ {
        let first = self.first_ending_after(begin);
        (first..self.len())
            .map(|i| self.get(i))
            .take_while(move |m| m.offset < end)
            .map(move |m| m.trimmed(begin, end))
    }

    /// Bytes held in memory.
    pub fn heap_bytes(&self) -> usize {
        with_tree!(self, t => t.heap_bytes())
    }

    /// Painter's merge of layer indexes, lowest first: each sector takes the extent of the
    /// highest layer that maps it, tagged with that layer's position in `layers`. Fails as
    /// soon as the result would exceed `limit` extents.
    pub fn merge(layers: &[&RoIndex], limit: usize) -> Result<Vec<Mapping>> {
        let mut out = Vec::new();
        if let Some(top) = layers.len().checked_sub(1) {
            merge_into(layers, top, 0, u64::MAX, &mut out, limit)?;
        }
        Ok(out)
    }
}

fn merge_into(
    layers: &[&RoIndex],
    level: usize,
    begin: u64,
    end: u64,
    out: &mut Vec<Mapping>,
    limit: usize,
) -> Result<()> {
    let idx = layers[level];
    let mut pos = begin;
    let mut i = idx.first_ending_after(begin);
    while i < idx.len() {
        let m = idx.get(i);
        if m.offset >= end {
            break;
        }
        if m.offset > pos && level > 0 {
            merge_into(layers, level - 1, pos, m.offset, out, limit)?;
        }
        let mut t = m.trimmed(begin, end);
        t.tag = level as u8;
        pos = t.end();
        if out.len() >= limit {
            return Err(Error::Unsupported(format!(
                "the merged index exceeds {limit} extents"
            )));
        }
        out.push(t);
        i += 1;
    }
    if pos < end && level > 0 {
        merge_into(layers, level - 1, pos, end, out, limit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extents(n: u64, gap: u64) -> Vec<Mapping> {
        (0..n)
            .map(|i| Mapping::data(i * (8 + gap), 8, 8 + i * 8))
            .collect()
    }

    #[test]
    fn lookups_against_a_linear_scan() {
        for n in [0u64, 1, 2, 15, 16, 17, 255, 256, 257, 4097] {
            for wide in [false, true] {
                let base = if wide { 1u64 << 40 } else { 0 };
                let maps: Vec<Mapping> = extents(n, 3)
                    .into_iter()
                    .map(|mut m| {
                        m.offset += base;
                        m
                    })
                    .collect();
                let idx = RoIndex::new(&maps).unwrap();
                assert_eq!(idx.len() as u64, n);
                assert!(idx.iter().eq(maps.iter().copied()));
                for x in (base..base + n * 11 + 20).chain([0, (1 << 49) - 1]) {
                    let want = maps.iter().position(|m| m.end() > x).unwrap_or(maps.len());
                    assert_eq!(idx.first_ending_after(x), want, "n {n} x {x}");
                    let cover = maps.iter().find(|m| m.offset <= x && x < m.end()).copied();
                    assert_eq!(idx.find(x), cover);
                }
            }
        }
    }

    #[test]
    fn keys_at_the_edges_of_the_narrow_form() {
        // Starts just below 2^32 stay narrow; a start at 2^32 - 1 or above goes wide.
        let maps = vec![
            Mapping::data(0, 1, 8),
            Mapping::data(u32::MAX as u64 - 2, 1, 9),
        ];
        let idx = RoIndex::new(&maps).unwrap();
        assert!(matches!(idx.tree, Trees::Narrow(_)));
        assert_eq!(idx.find(u32::MAX as u64 - 2), Some(maps[1]));
        assert_eq!(idx.find(u32::MAX as u64 - 1), None);
        assert_eq!(idx.first_ending_after(u32::MAX as u64 + 5), 2);
        let maps = vec![Mapping::data(0, 1, 8), Mapping::data(u32::MAX as u64, 1, 9)];
        let idx = RoIndex::new(&maps).unwrap();
        assert!(matches!(idx.tree, Trees::Wide(_)));
        assert_eq!(idx.find(u32::MAX as u64), Some(maps[1]));
    }

    #[test]
    fn packed_values_round_trip_and_limits() {
        let m = Mapping {
            offset: 5,
            length: 16383,
            moffset: MAX_PACKED_MOFFSET,
            zeroed: false,
            tag: 254,
        };
        assert_eq!(unpack(5, pack(&m)), m);
        let z = Mapping {
            offset: 5,
            length: 1,
            moffset: 3,
            zeroed: true,
            tag: 1,
        };
        assert_eq!(unpack(5, pack(&z)), z);
        let big = Mapping::data(0, 1, MAX_PACKED_MOFFSET + 1);
        assert!(RoIndex::new(&[big])
            .unwrap_err()
            .to_string()
            .contains("1 PiB"));
        // A zeroed extent's moffset is meaningless and never refused.
        let zb = Mapping::zeroes(0, 1, 1 << 54);
        assert!(RoIndex::new(&[zb]).unwrap().get(0).zeroed);
    }

    #[test]
    fn overlapping_trims_edges() {
        let idx = RoIndex::new(&[Mapping::data(10, 10, 100), Mapping::zeroes(30, 10, 5)]).unwrap();
        let v: Vec<_> = idx.overlapping(15, 35).collect();
        assert_eq!(
            v,
            vec![Mapping::data(15, 5, 105), Mapping::zeroes(30, 5, 5)]
        );
        assert_eq!(idx.overlapping(20, 30).count(), 0);
    }

    #[test]
    fn painter_merge() {
        // lower: [0,100) ; middle: [20,30) zeroed ; top: [25,50)
        let lower = RoIndex::new(&[Mapping::data(0, 100, 8)]).unwrap();
        let mid = RoIndex::new(&[Mapping::zeroes(20, 10, 0)]).unwrap();
        let top = RoIndex::new(&[Mapping::data(25, 25, 8)]).unwrap();
        let m = RoIndex::merge(&[&lower, &mid, &top], 100).unwrap();
        let want = vec![
            Mapping {
                tag: 0,
                ..Mapping::data(0, 20, 8)
            },
            Mapping {
                tag: 1,
                ..Mapping::zeroes(20, 5, 0)
            },
            Mapping {
                tag: 2,
                ..Mapping::data(25, 25, 8)
            },
            Mapping {
                tag: 0,
                ..Mapping::data(50, 50, 58)
            },
        ];
        assert_eq!(m, want);
        assert!(RoIndex::merge(&[], 0).unwrap().is_empty());
        let e = RoIndex::merge(&[&lower, &mid, &top], 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceeds 3"), "{e}");
    }

    #[test]
    fn memory_per_extent() {
        for n in [1_000, 10_000, 100_000] {
            let maps = extents(n, 1);
            let idx = RoIndex::new(&maps).unwrap();
            let per = idx.heap_bytes() as f64 / maps.len() as f64;
            assert!(per <= 13.0, "{per} bytes per extent at {n}");
        }
    }
}
