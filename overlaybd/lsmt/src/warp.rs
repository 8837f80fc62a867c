//! Warp layers (TurboOCI's meta layers): a committed layer whose mappings say where each
//! extent's bytes are: tag 0 in the layer's own file (filesystem metadata), tag 1 in the
//! *target*, the original OCI layer's uncompressed tar, at `moffset × 512`. The header does
//! not say "warp": the image config does (a lower with a target).
//!
//! In a stack, a warp layer is one source read at virtual-disk offsets (it resolves its own
//! tags), so the merged index refers to it with identity mappings, as overlaybd does.
//! Rules: `docs/format/turbooci.md`, "The meta layer".

use std::io;
use std::sync::Arc;

use zfile::ReadAt;

use crate::error::{Error, Result};
use crate::index::RoIndex;
use crate::mapping::{Mapping, SECTOR};
use crate::ro::{check_mappings, read_exact_at, read_layer_tagged, LayerMeta, RoLayer};

/// Which file an extent of a warp layer lives in.
pub const TAG_META: u8 = 0;
pub const TAG_TARGET: u8 = 1;

/// A warp layer with its two files.
pub struct WarpLayer {
    meta: LayerMeta,
    index: RoIndex,
    layer: Arc<dyn ReadAt>,
    target: Arc<dyn ReadAt>,
    target_size: u64,
}

impl std::fmt::Debug for WarpLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarpLayer")
            .field("extents", &self.index.len())
            .field("target_size", &self.target_size)
            .finish()
    }
}

/// Reads a warp layer's index: tags as stored minus the smallest one present (overlaybd's
/// writable warp file counts tags from the number of layers below it; its commit keeps them),
/// then each must be [`TAG_META`] or [`TAG_TARGET`], and every target extent must lie inside
/// the target's `target_size` bytes.
pub fn read_warp_layer<S: ReadAt + ?Sized>(
    src: &S,
    target_size: u64,
) -> Result<(LayerMeta, Vec<Mapping>)> {
    let (meta, mut maps, data_end) = read_layer_tagged(src)?;
    // Zeroed extents carry no data: their tag says nothing.
    let min = maps
        .iter()
        .filter(|m| !m.zeroed)
        .map(|m| m.tag)
        .min()
        .unwrap_or(0);
    for (i, m) in maps.iter_mut().enumerate() {
        if m.zeroed {
            m.tag = TAG_META;
            continue;
        }
        m.tag -= min;
        if m.tag > TAG_TARGET {
            return Err(Error::corrupt(
                format!("warp layer index entry {i}"),
                format!(
                    "tag {} (normalised {}): a warp layer has only its own file and the target",
                    m.tag + min,
                    m.tag
                ),
            ));
        }
        // Checked: `moffset` may be up to 2^55 sectors; past the target is past it, wrapped
        // or not (after this, offsets into the target cannot overflow).
        let end = m.mend().checked_mul(SECTOR);
        if m.tag == TAG_TARGET && end.is_none_or(|e| e > target_size) {
            return Err(Error::corrupt(
                format!("warp layer index entry {i}"),
                format!(
                    "maps target bytes [{}, {}), past the end of the {target_size}-byte target \
                     (a gzip layer of several members, which overlaybd's index covers only \
                     the first of, or a meta layer made for another layer)",
                    m.moffset.saturating_mul(SECTOR),
                    m.mend().saturating_mul(SECTOR)
                ),
            ));
        }
    }
    check_mappings(&maps, data_end, "warp layer index")?;
    Ok((meta, maps))
}

impl WarpLayer {
    /// Opens a warp layer from its LSMT bytes (`layer`, envelope and ZFile already taken off)
    /// and its target (the uncompressed original layer). Returns the layer, to be used as the
    /// stack's source for it, and the identity [`RoLayer`] to stack.
    pub fn open(
        layer: Arc<dyn ReadAt>,
        target: Arc<dyn ReadAt>,
    ) -> Result<(Arc<WarpLayer>, RoLayer)> {
        let target_size = target
            .size()
            .map_err(|e| Error::io("size of", "warp layer target", 0, e))?;
        let (meta, maps) = read_warp_layer(&*layer, target_size)?;
        let identity: Vec<Mapping> = maps
            .iter()
            .map(|m| Mapping {
                moffset: m.offset,
                tag: 0,
                ..*m
            })
            .collect();
        let ro = RoLayer {
            meta: meta.clone(),
            index: RoIndex::new(&identity)?,
        };
        let warp = WarpLayer {
            meta,
            index: RoIndex::new(&maps)?,
            layer,
            target,
            target_size,
        };
        Ok((Arc::new(warp), ro))
    }

    pub fn meta(&self) -> &LayerMeta {
        &self.meta
    }

    /// The extents as stored (tags normalised).
    pub fn index(&self) -> &RoIndex {
        &self.index
    }

    fn file(&self, tag: u8) -> (&dyn ReadAt, &'static str) {
        if tag == TAG_TARGET {
            (&*self.target, "warp layer target")
        } else {
            (&*self.layer, "warp layer data")
        }
    }

    /// Calls `f(piece of buf, mapping, byte offset into the mapping)` for each mapped piece of
    /// `[offset, offset + len)`, and zero-fills what no mapping covers.
    fn each<F>(&self, offset: u64, buf: &mut [u8], mut f: F) -> Result<()>
    where
        F: FnMut(&mut [u8], &Mapping, u64) -> Result<()>,
    {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        for m in self
            .index
            .overlapping(offset / SECTOR, end.div_ceil(SECTOR))
        {
            let (m_start, m_end) = (m.offset * SECTOR, (m.end() * SECTOR).min(end));
            let from = m_start.max(pos);
            buf[(pos - offset) as usize..(from - offset) as usize].fill(0);
            if m_end > from {
                let piece = &mut buf[(from - offset) as usize..(m_end - offset) as usize];
                f(piece, &m, from - m_start)?;
                pos = m_end;
            }
        }
        buf[(pos - offset) as usize..].fill(0);
        Ok(())
    }
}

impl ReadAt for WarpLayer {
    /// Reads the layer's virtual disk at `offset`: unmapped bytes are zeros (the stack never
    /// asks for them), zeroed extents are zeros, others come from the layer file or the target.
    /// A source that ends early is an error, not zeros (overlaybd fills zeros silently).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.each(offset, buf, |piece, m, into| {
            if m.zeroed {
                piece.fill(0);
                return Ok(());
            }
            let (src, what) = self.file(m.tag);
            read_exact_at(src, m.moffset * SECTOR + into, piece, what)
        })
        .map_err(Error::into_io)?;
        Ok(buf.len())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.meta.trailer.virtual_size)
    }

    /// Forwards to the files holding `[offset, offset + len)`.
    fn discard_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.saturating_add(len);
        for m in self
            .index
            .overlapping(offset / SECTOR, end.div_ceil(SECTOR))
        {
            if m.zeroed {
                continue;
            }
            let from = (m.offset * SECTOR).max(offset);
            let to = (m.end() * SECTOR).min(end);
            let at = m.moffset * SECTOR + (from - m.offset * SECTOR);
            self.file(m.tag).0.discard_cached(at, to - from)?;
        }
        Ok(())
    }
}
