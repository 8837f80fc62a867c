//! The merged stack: read-only layers (lowest first, as in `config.v1.json`) merged into one
//! index, with an optional writable layer on top whose index is consulted first.
//!
//! A read becomes a plan (holes, zeroes, and pieces of a layer file) computed under the upper
//! layer's lock and executed without it.

use std::sync::Arc;

use zfile::ReadAt;

use super::header::{HeaderTrailer, Uuid};
use super::index::RoIndex;
use super::mapping::{Mapping, SECTOR};
use super::ro::{read_exact_at, LayerMeta, RoLayer, MAX_INDEX_ENTRIES};
use super::rw::RwLayer;
use super::sparse::SparseLayer;
use crate::error::{Error, Result};

/// Most read-only layers in one stack (overlaybd's `MAX_STACK_LAYERS`).
pub const MAX_LAYERS: usize = 255;

/// The writable top of a stack.
#[derive(Debug)]
pub enum Upper {
    Append(RwLayer),
    Sparse(SparseLayer),
}

impl Upper {
    pub fn header(&self) -> &HeaderTrailer {
        match self {
            Upper::Append(l) => l.header(),
            Upper::Sparse(l) => l.header(),
        }
    }
    fn overlapping(&self, begin: u64, end: u64) -> Vec<Mapping> {
        match self {
            Upper::Append(l) => l.overlapping(begin, end),
            Upper::Sparse(l) => l.overlapping(begin, end),
        }
    }
    fn source(&self) -> &dyn ReadAt {
        match self {
            Upper::Append(l) => l.data_file(),
            Upper::Sparse(l) => l.file(),
        }
    }
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        match self {
            Upper::Append(l) => l.write(offset, buf),
            Upper::Sparse(l) => l.write(offset, buf),
        }
    }
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        match self {
            Upper::Append(l) => l.trim(offset, len),
            Upper::Sparse(l) => l.trim(offset, len),
        }
    }
    pub fn flush(&self) -> Result<()> {
        match self {
            Upper::Append(l) => l.flush(),
            Upper::Sparse(l) => l.flush(),
        }
    }
}

/// Where a piece of a read comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A read-only layer, by position (0 = lowest).
    Lower(u8),
    Upper,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// No layer maps these bytes.
    Hole,
    /// A layer maps them as discarded.
    Zeroes,
    /// Bytes at `offset` of the source's layer file.
    Data { source: Source, offset: u64 },
}

/// One piece of a read, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub len: u64,
    pub kind: PieceKind,
}

/// A stack of layers seen as one virtual disk.
pub struct Stack {
    sources: Vec<Arc<dyn ReadAt>>,
    metas: Vec<LayerMeta>,
    merged: RoIndex,
    upper: Option<Upper>,
    virtual_size: u64,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("layers", &self.metas.len())
            .field("extents", &self.merged.len())
            .field("upper", &self.upper.is_some())
            .field("virtual_size", &self.virtual_size)
            .finish()
    }
}

impl Stack {
    /// Builds a stack from read-only layers, lowest first (each with the source of its LSMT
    /// bytes), and an optional writable top.
    pub fn new(lowers: Vec<(Arc<dyn ReadAt>, RoLayer)>, upper: Option<Upper>) -> Result<Self> {
        if lowers.len() > MAX_LAYERS {
            return Err(Error::Unsupported(format!(
                "{} layers: at most {MAX_LAYERS}",
                lowers.len()
            )));
        }
        let indexes: Vec<&RoIndex> = lowers.iter().map(|(_, l)| &l.index).collect();
        let maps = RoIndex::merge(&indexes, MAX_INDEX_ENTRIES as usize)?;
        let merged = RoIndex::new(&maps)?;
        // The virtual size is that of the top-most layer that has one.
        let virtual_size = upper
            .iter()
            .map(|u| u.header().virtual_size)
            .chain(
                lowers
                    .iter()
                    .rev()
                    .map(|(_, l)| l.meta.trailer.virtual_size),
            )
            .find(|&v| v > 0)
            .unwrap_or(0);
        let (sources, metas) = lowers.into_iter().map(|(s, l)| (s, l.meta)).unzip();
        Ok(Stack {
            sources,
            metas,
            merged,
            upper,
            virtual_size,
        })
    }

    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    pub fn layers(&self) -> &[LayerMeta] {
        &self.metas
    }

    pub fn upper(&self) -> Option<&Upper> {
        self.upper.as_ref()
    }

    /// Takes the writable layer out (to seal or commit it), dropping the stack.
    pub fn into_upper(self) -> Option<Upper> {
        self.upper
    }

    /// The merged read-only index.
    pub fn merged_index(&self) -> &RoIndex {
        &self.merged
    }

    /// Checks the UUID chain: each layer's parent is the layer below it.
    pub fn check_chain(&self) -> Result<()> {
        let uuids: Vec<(Option<Uuid>, Option<Uuid>, String)> = self
            .metas
            .iter()
            .enumerate()
            .map(|(i, m)| (m.trailer.uuid, m.trailer.parent_uuid, format!("layer {i}")))
            .chain(self.upper.iter().map(|u| {
                (
                    u.header().uuid,
                    u.header().parent_uuid,
                    "the writable layer".to_string(),
                )
            }))
            .collect();
        for w in uuids.windows(2) {
            let (below, _, _) = &w[0];
            let (_, parent, name) = &w[1];
            if below != parent {
                return Err(Error::corrupt(
                    "layer chain",
                    format!(
                        "{name} names parent {}, but the layer below is {}",
                        parent.map_or("(none)".into(), |u| u.to_string()),
                        below.map_or("(none)".into(), |u| u.to_string())
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Appends the plan of bytes `[from, to)` as the read-only layers have them.
    fn push_lower(&self, from: u64, to: u64, out: &mut Vec<Piece>) {
        let mut pos = from;
        for m in self.merged.overlapping(from / SECTOR, to.div_ceil(SECTOR)) {
            push_mapping(&m, Source::Lower(m.tag), to, &mut pos, out);
        }
        if pos < to {
            out.push(Piece {
                len: to - pos,
                kind: PieceKind::Hole,
            });
        }
    }

    /// The plan for reading bytes `[offset, offset + len)` (clamped to the virtual size).
    pub fn plan(&self, offset: u64, len: u64) -> Vec<Piece> {
        let end = offset.saturating_add(len).min(self.virtual_size);
        let mut out = Vec::new();
        if offset >= end {
            return out;
        }
        let (s0, s1) = (offset / SECTOR, end.div_ceil(SECTOR));
        match &self.upper {
            None => self.push_lower(offset, end, &mut out),
            Some(u) => {
                let mut pos = offset;
                for m in u.overlapping(s0, s1) {
                    let start = (m.offset * SECTOR).max(offset);
                    if start > pos {
                        self.push_lower(pos, start, &mut out);
                        pos = start;
                    }
                    push_mapping(&m, Source::Upper, end, &mut pos, &mut out);
                }
                if pos < end {
                    self.push_lower(pos, end, &mut out);
                }
            }
        }
        out
    }

    fn source(&self, s: Source) -> &dyn ReadAt {
        match s {
            Source::Lower(i) => &*self.sources[i as usize],
            Source::Upper => self
                .upper
                .as_ref()
                .expect("plans name Upper only when there is one")
                .source(),
        }
    }

    /// Reads `buf.len()` bytes at `offset` (fewer only at the end of the disk).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let plan = self.plan(offset, buf.len() as u64);
        let mut at = 0usize;
        for p in plan {
            let dst = &mut buf[at..at + p.len as usize];
            match p.kind {
                PieceKind::Hole | PieceKind::Zeroes => dst.fill(0),
                PieceKind::Data { source, offset } => {
                    read_exact_at(self.source(source), offset, dst, "layer data")?
                }
            }
            at += p.len as usize;
        }
        Ok(at)
    }

    fn upper_or_err(&self, what: &str) -> Result<&Upper> {
        self.upper
            .as_ref()
            .ok_or_else(|| Error::ReadOnly(format!("{what}: the stack is read-only")))
    }

    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.virtual_size)
        {
            return Err(Error::OutOfRange(format!(
                "write of {} bytes at {offset} goes past the disk",
                buf.len()
            )));
        }
        self.upper_or_err("write")?.write(offset, buf)
    }

    /// Discards a range. On an append-only upper this logs a zeroed extent. A sparse upper
    /// can only record "zero here" by storing zeros, since its holes let lower layers show
    /// through: it punches holes where no lower layer has data and writes zeros elsewhere.
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        match self.upper_or_err("trim")? {
            Upper::Sparse(l) => {
                let end = offset
                    .checked_add(len)
                    .filter(|&e| e <= self.virtual_size)
                    .ok_or_else(|| {
                        Error::OutOfRange(format!(
                            "trim of {len} bytes at {offset} goes past the disk"
                        ))
                    })?;
                let mut below = Vec::new();
                self.push_lower(offset, end, &mut below);
                let mut pos = offset;
                for p in below {
                    match p.kind {
                        PieceKind::Data { .. } => l.write_zeroes(pos, p.len)?,
                        PieceKind::Hole | PieceKind::Zeroes => l.trim(pos, p.len)?,
                    }
                    pos += p.len;
                }
                Ok(())
            }
            u => u.trim(offset, len),
        }
    }

    pub fn flush(&self) -> Result<()> {
        match &self.upper {
            Some(u) => u.flush(),
            None => Ok(()),
        }
    }

    /// Writes the merged disk into `out` (sized to the virtual size, holes left as holes);
    /// returns the bytes of data written.
    pub fn write_sparse(&self, out: &std::fs::File) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let size = self.virtual_size();
        out.set_len(size)
            .map_err(|e| Error::io("truncate", "disk image", size, e))?;
        let mut buf = vec![0u8; 4 << 20];
        let (mut off, mut data) = (0u64, 0u64);
        while off < size {
            let n = (size - off).min(buf.len() as u64);
            let mut at = off;
            for p in self.plan(off, n) {
                if let PieceKind::Data { .. } = p.kind {
                    let b = &mut buf[..p.len as usize];
                    self.read_at(at, b)?;
                    out.write_all_at(b, at)
                        .map_err(|e| Error::io("write", "disk image", at, e))?;
                    data += p.len;
                }
                at += p.len;
            }
            off += n;
        }
        Ok(data)
    }
}

/// Appends the bytes of mapping `m` (in sectors) that fall in `[pos, end)` to the plan and
/// advances `pos`.
fn push_mapping(m: &Mapping, source: Source, end: u64, pos: &mut u64, out: &mut Vec<Piece>) {
    let m_start = m.offset * SECTOR;
    let m_end = (m.end() * SECTOR).min(end);
    if m_start > *pos {
        out.push(Piece {
            len: m_start - *pos,
            kind: PieceKind::Hole,
        });
        *pos = m_start;
    }
    if m_end <= *pos {
        return;
    }
    let len = m_end - *pos;
    let kind = if m.zeroed {
        PieceKind::Zeroes
    } else {
        PieceKind::Data {
            source,
            offset: m.moffset * SECTOR + (*pos - m_start),
        }
    };
    match out.last_mut() {
        Some(last) if last.kind == kind && matches!(kind, PieceKind::Hole | PieceKind::Zeroes) => {
            last.len += len
        }
        _ => out.push(Piece { len, kind }),
    }
    *pos = m_end;
}

impl ReadAt for Stack {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        Stack::read_at(self, offset, buf).map_err(Error::into_io)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.virtual_size)
    }
}
