//! The in-memory index of a writable layer: an ordered map of extents where a later write
//! replaces the overlapping parts of earlier ones (overlaybd's `Index0`).

use std::collections::BTreeMap;

use super::mapping::Mapping;

#[derive(Clone, Debug, Default)]
pub struct Index0 {
    map: BTreeMap<u64, Mapping>,
    /// Sectors of stored (not zeroed) data referenced.
    allocated: u64,
}

impl Index0 {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn allocated_sectors(&self) -> u64 {
        self.allocated
    }

    fn put(&mut self, m: Mapping) {
        if !m.zeroed {
            self.allocated += m.length as u64;
        }
        self.map.insert(m.offset, m);
    }

    fn take(&mut self, offset: u64) -> Mapping {
        let m = self.map.remove(&offset).expect("key taken from the map");
        if !m.zeroed {
            self.allocated -= m.length as u64;
        }
        m
    }

    /// Inserts `m`, cutting away whatever it overlaps.
    pub fn insert(&mut self, m: Mapping) {
        if m.length == 0 {
            return;
        }
        let (begin, end) = (m.offset, m.end());
        // An extent starting before `begin` and reaching into it.
        if let Some((&k, &prev)) = self.map.range(..begin).next_back() {
            if prev.end() > begin {
                self.take(k);
                self.put(prev.trimmed(prev.offset, begin));
                if prev.end() > end {
                    self.put(prev.trimmed(end, prev.end()));
                }
            }
        }
        // Extents starting inside [begin, end).
        let inside: Vec<u64> = self.map.range(begin..end).map(|(&k, _)| k).collect();
        for k in inside {
            let e = self.take(k);
            if e.end() > end {
                self.put(e.trimmed(end, e.end()));
            }
        }
        self.put(m);
    }

    /// Extents overlapping `[begin, end)`, cut to it, in order.
    pub fn overlapping(&self, begin: u64, end: u64) -> impl Iterator<Item = Mapping> + '_ {
        let first = self
            .map
            .range(..begin)
            .next_back()
            .filter(|(_, m)| m.end() > begin)
            .map(|(_, m)| *m);
        first
            .into_iter()
            .chain(self.map.range(begin..end).map(|(_, m)| *m))
            .map(move |m| m.trimmed(begin, end))
    }

    /// Every extent, in order.
    pub fn dump(&self) -> Vec<Mapping> {
        self.map.values().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_writes_cut_earlier_ones() {
        let mut i = Index0::new();
        i.insert(Mapping::data(0, 128, 8));
        i.insert(Mapping::data(64, 16, 673));
        i.insert(Mapping::zeroes(32, 8, 697));
        assert_eq!(
            i.dump(),
            vec![
                Mapping::data(0, 32, 8),
                Mapping::zeroes(32, 8, 697),
                Mapping::data(40, 24, 48),
                Mapping::data(64, 16, 673),
                Mapping::data(80, 48, 88),
            ]
        );
        assert_eq!(i.allocated_sectors(), 32 + 24 + 16 + 48);
        // Covering everything replaces everything.
        i.insert(Mapping::data(0, 200, 1000));
        assert_eq!(i.dump(), vec![Mapping::data(0, 200, 1000)]);
        assert_eq!(i.allocated_sectors(), 200);
        let cut: Vec<_> = i.overlapping(10, 20).collect();
        assert_eq!(cut, vec![Mapping::data(10, 10, 1010)]);
    }
}
