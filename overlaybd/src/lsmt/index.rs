//! The read-only index of a layer or a merged stack: sorted, non-overlapping extents with a
//! static B+-tree over their start sectors for lookups.
//!
//! Storage is split by field: start sectors (u32 when the disk is under 2 TiB, else u64),
//! lengths (u16) and a packed u64 of `moffset | zeroed << 55 | tag << 56`, i.e. 14 bytes per
//! extent with u32 keys, plus the tree's inner levels (1/15 of the keys). A node is 16 keys;
//! a search counts the keys ≤ x in one node per level, which the compiler vectorises.

use super::mapping::{Mapping, MAX_MOFFSET};

const B: usize = 16;

/// A search key type.
pub trait Key: Copy + Ord + Default + Send + Sync + 'static {
    const MAX: Self;
    fn from_u64(v: u64) -> Self;
    fn to_u64(self) -> u64;
}

impl Key for u32 {
    const MAX: Self = u32::MAX;
    fn from_u64(v: u64) -> Self {
        v.min(u32::MAX as u64) as u32
    }
    fn to_u64(self) -> u64 {
        self as u64
    }
}

impl Key for u64 {
    const MAX: Self = u64::MAX;
    fn from_u64(v: u64) -> Self {
        v
    }
    fn to_u64(self) -> u64 {
        self
    }
}

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Node<K: Key>([K; B]);

impl<K: Key> Node<K> {
    /// How many keys of the node are ≤ x.
    #[inline(always)]
    fn rank(&self, x: K) -> usize {
        let mut n = 0;
        for k in self.0 {
            n += (k <= x) as usize;
        }
        n
    }
}

/// Static B+-tree: `levels[0]` holds every key (the leaves, in sorted order), `levels[i+1]`
/// the first key of each node of `levels[i]`.
#[derive(Clone, Debug)]
struct Tree<K: Key> {
    levels: Vec<Vec<Node<K>>>,
    len: usize,
}

impl<K: Key> Tree<K> {
    fn build(keys: impl ExactSizeIterator<Item = K>) -> Self {
        let len = keys.len();
        let mut level = pack(keys);
        let mut levels = Vec::new();
        while level.len() > 1 {
            let up = pack(level.iter().map(|n| n.0[0]));
            levels.push(level);
            level = up;
        }
        levels.push(level);
        Tree { levels, len }
    }

    /// Index of the last key ≤ x, or `None` when every key is greater.
    #[inline]
    fn last_le(&self, x: K) -> Option<usize> {
        let mut node = 0usize;
        for level in self.levels.iter().rev() {
            let r = level[node].rank(x);
            if r == 0 {
                // Only possible at the root: x is below the first key.
                return None;
            }
            node = node * B + r - 1;
        }
        // `node` is now a key index in the leaf level.
        (node < self.len).then_some(node)
    }

    fn heap_bytes(&self) -> usize {
        self.levels
            .iter()
            .map(|l| l.capacity() * std::mem::size_of::<Node<K>>())
            .sum()
    }
}

fn pack<K: Key>(keys: impl Iterator<Item = K>) -> Vec<Node<K>> {
    let mut out: Vec<Node<K>> = Vec::new();
    for (i, k) in keys.enumerate() {
        if i % B == 0 {
            out.push(Node([K::MAX; B]));
        }
        out.last_mut().expect("pushed above").0[i % B] = k;
    }
    if out.is_empty() {
        out.push(Node([K::MAX; B]));
    }
    out
}

#[derive(Clone, Debug)]
enum Starts {
    Narrow(Tree<u32>),
    Wide(Tree<u64>),
}

/// A sorted, non-overlapping set of extents with fast lookup. Immutable once built.
#[derive(Clone, Debug)]
pub struct RoIndex {
    starts: Starts,
    lens: Vec<u16>,
    vals: Vec<u64>,
}

fn pack_val(m: &Mapping) -> u64 {
    (m.moffset & MAX_MOFFSET) | ((m.zeroed as u64) << 55) | ((m.tag as u64) << 56)
}

impl RoIndex {
    /// Builds from mappings that are sorted and do not overlap (checked by the caller).
    pub fn new(maps: &[Mapping]) -> Self {
        debug_assert!(maps.windows(2).all(|w| w[0].end() <= w[1].offset));
        let narrow = maps.last().is_none_or(|m| m.offset < u32::MAX as u64);
        let starts = if narrow {
            Starts::Narrow(Tree::build(maps.iter().map(|m| m.offset as u32)))
        } else {
            Starts::Wide(Tree::build(maps.iter().map(|m| m.offset)))
        };
        RoIndex {
            starts,
            lens: maps.iter().map(|m| m.length as u16).collect(),
            vals: maps.iter().map(pack_val).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    fn start(&self, i: usize) -> u64 {
        match &self.starts {
            Starts::Narrow(t) => t.levels[0][i / B].0[i % B] as u64,
            Starts::Wide(t) => t.levels[0][i / B].0[i % B],
        }
    }

    /// The `i`-th extent.
    pub fn get(&self, i: usize) -> Mapping {
        let v = self.vals[i];
        Mapping {
            offset: self.start(i),
            length: self.lens[i] as u32,
            moffset: v & MAX_MOFFSET,
            zeroed: (v >> 55) & 1 == 1,
            tag: (v >> 56) as u8,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Mapping> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Position of the first extent that ends after sector `x` (it may start after `x`).
    #[inline]
    pub fn first_ending_after(&self, x: u64) -> usize {
        let p = match &self.starts {
            Starts::Narrow(t) => {
                if x >= u32::MAX as u64 {
                    t.len.checked_sub(1)
                } else {
                    t.last_le(x as u32)
                }
            }
            Starts::Wide(t) => t.last_le(x.min(u64::MAX - 1)),
        };
        match p {
            None => 0,
            Some(i) if self.start(i) + self.lens[i] as u64 > x => i,
            Some(i) => i + 1,
        }
    }

    /// The extent covering sector `x`, if any.
    #[inline]
    pub fn find(&self, x: u64) -> Option<Mapping> {
        let i = self.first_ending_after(x);
        (i < self.len() && self.start(i) <= x).then(|| self.get(i))
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
        let tree = match &self.starts {
            Starts::Narrow(t) => t.heap_bytes(),
            Starts::Wide(t) => t.heap_bytes(),
        };
        tree + self.lens.capacity() * 2 + self.vals.capacity() * 8
    }

    /// Painter's merge of layer indexes, lowest first: each sector takes the extent of the
    /// highest layer that maps it, tagged with that layer's position in `layers`.
    pub fn merge(layers: &[&RoIndex]) -> Vec<Mapping> {
        let mut out = Vec::new();
        if let Some(top) = layers.len().checked_sub(1) {
            merge_into(layers, top, 0, u64::MAX, &mut out);
        }
        out
    }
}

fn merge_into(layers: &[&RoIndex], level: usize, begin: u64, end: u64, out: &mut Vec<Mapping>) {
    let idx = layers[level];
    let mut pos = begin;
    let mut i = idx.first_ending_after(begin);
    while i < idx.len() {
        let m = idx.get(i);
        if m.offset >= end {
            break;
        }
        if m.offset > pos && level > 0 {
            merge_into(layers, level - 1, pos, m.offset, out);
        }
        let mut t = m.trimmed(begin, end);
        t.tag = level as u8;
        pos = t.end();
        out.push(t);
        i += 1;
    }
    if pos < end && level > 0 {
        merge_into(layers, level - 1, pos, end, out);
    }
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
                let idx = RoIndex::new(&maps);
                assert_eq!(idx.len() as u64, n);
                assert!(idx.iter().eq(maps.iter().copied()));
                for x in (base..base + n * 11 + 20)
                    .step_by(1)
                    .chain([0, u64::MAX / 4])
                {
                    let want = maps.iter().position(|m| m.end() > x).unwrap_or(maps.len());
                    assert_eq!(idx.first_ending_after(x), want, "n {n} x {x}");
                    let cover = maps.iter().find(|m| m.offset <= x && x < m.end()).copied();
                    assert_eq!(idx.find(x), cover);
                }
            }
        }
    }

    #[test]
    fn overlapping_trims_edges() {
        let idx = RoIndex::new(&[Mapping::data(10, 10, 100), Mapping::zeroes(30, 10, 5)]);
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
        let lower = RoIndex::new(&[Mapping::data(0, 100, 8)]);
        let mid = RoIndex::new(&[Mapping::zeroes(20, 10, 0)]);
        let top = RoIndex::new(&[Mapping::data(25, 25, 8)]);
        let m = RoIndex::merge(&[&lower, &mid, &top]);
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
        assert!(RoIndex::merge(&[]).is_empty());
    }

    #[test]
    fn memory_per_extent() {
        let maps = extents(100_000, 1);
        let idx = RoIndex::new(&maps);
        let per = idx.heap_bytes() as f64 / maps.len() as f64;
        assert!(per <= 16.0, "{per} bytes per extent");
    }
}
