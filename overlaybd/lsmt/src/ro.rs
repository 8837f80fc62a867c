//! Committed (read-only) layers, and the data file of a sealed writable layer: header,
//! trailer and index, every bound checked. Rules: `docs/format/lsmt.md`, "Reading a layer".

use zfile::source::read_full_at;
use zfile::ReadAt;

use super::header::{flags, HeaderTrailer, HT_SPACE};
use super::index::RoIndex;
use super::mapping::{decode_all, Mapping, MAPPING_BYTES, SECTOR};
use crate::error::{Error, Result};

/// Most index entries of one layer or of a merged stack (overlaybd's `MAX_LSMT_INDEX_SIZE`).
pub const MAX_INDEX_ENTRIES: u64 = 128_000_000;
/// Sector where data begins (right after the header).
pub const DATA_START_SECTOR: u64 = (HT_SPACE as u64) / SECTOR;

pub(crate) fn read_exact_at<S: ReadAt + ?Sized>(
    src: &S,
    offset: u64,
    buf: &mut [u8],
    what: &'static str,
) -> Result<()> {
    let n = read_full_at(src, offset, buf).map_err(|e| Error::io("read", what, offset, e))?;
    if n < buf.len() {
        return Err(Error::Truncated {
            what,
            need: buf.len() as u64,
            got: n as u64,
        });
    }
    Ok(())
}

pub(crate) fn read_slot<S: ReadAt + ?Sized>(
    src: &S,
    offset: u64,
    which: &'static str,
) -> Result<HeaderTrailer> {
    let mut slot = vec![0u8; HT_SPACE];
    read_exact_at(src, offset, &mut slot, which)?;
    HeaderTrailer::decode(&slot, which)
}

/// What a committed layer's header and trailer say.
#[derive(Clone, Debug)]
pub struct LayerMeta {
    pub header: HeaderTrailer,
    pub trailer: HeaderTrailer,
    /// Bytes of the layer file.
    pub file_size: u64,
    /// Valid mappings (padding dropped).
    pub extents: u64,
    /// Sectors of stored (not zeroed) data.
    pub data_sectors: u64,
}

/// Checks that mappings are sorted, do not overlap, and that stored extents in the layer's own
/// file (tag 0) lie inside the data area `[DATA_START_SECTOR, data_end)`.
pub fn check_mappings(maps: &[Mapping], data_end: u64, what: &str) -> Result<()> {
    for (i, m) in maps.iter().enumerate() {
        if !m.zeroed && m.tag == 0 && (m.moffset < DATA_START_SECTOR || m.mend() > data_end) {
            return Err(Error::corrupt(
                format!("{what} entry {i}"),
                format!(
                    "data at sectors [{}, {}) lies outside the data area [{DATA_START_SECTOR}, {data_end})",
                    m.moffset,
                    m.mend()
                ),
            ));
        }
        if i > 0 && maps[i - 1].end() > m.offset {
            return Err(Error::corrupt(
                format!("{what} entry {i}"),
                format!(
                    "extent at sector {} overlaps or precedes the previous one ending at {}",
                    m.offset,
                    maps[i - 1].end()
                ),
            ));
        }
    }
    Ok(())
}

/// Reads the index of a committed or sealed layer. Tags are reset to 0 and padding and empty
/// entries dropped, as overlaybd does.
pub fn read_layer<S: ReadAt + ?Sized>(src: &S) -> Result<(LayerMeta, Vec<Mapping>)> {
    let (meta, mut maps, data_end) = read_layer_tagged(src)?;
    for m in &mut maps {
        m.tag = 0;
    }
    check_mappings(&maps, data_end, "layer index")?;
    Ok((meta, maps))
}

/// Reads a layer's header, trailer and index with the tags as stored and nothing checked
/// beyond the framing; also returns where the data area ends (in sectors).
pub(crate) fn read_layer_tagged<S: ReadAt + ?Sized>(
    src: &S,
) -> Result<(LayerMeta, Vec<Mapping>, u64)> {
    let header = read_slot(src, 0, "layer header")?;
    if !header.has(flags::HEADER) {
        return Err(Error::corrupt(
            "layer header",
            "flag bit 0 (header) is clear",
        ));
    }
    if !header.has(flags::DATA_FILE) {
        return Err(Error::corrupt(
            "layer header",
            "this is an index file, not a layer (open the data file and its index as a writable layer)",
        ));
    }
    let file_size = src
        .size()
        .map_err(|e| Error::io("size of", "layer", 0, e))?;
    if file_size < 2 * HT_SPACE as u64 {
        return Err(Error::Truncated {
            what: "layer (header + trailer)",
            need: 2 * HT_SPACE as u64,
            got: file_size,
        });
    }
    let trailer_at = file_size - HT_SPACE as u64;
    let trailer = read_slot(src, trailer_at, "layer trailer").map_err(|e| match e {
        Error::NotLsmt(_) => Error::corrupt(
            "layer trailer",
            if header.has(flags::SPARSE_RW) {
                "no trailer: this is a sparse writable layer"
            } else {
                "no trailer at the end of the file (an unsealed writable layer?)"
            },
        ),
        e => e,
    })?;
    if trailer.has(flags::HEADER) || !trailer.has(flags::DATA_FILE) || !trailer.has(flags::SEALED) {
        return Err(Error::corrupt(
            "layer trailer",
            format!(
                "flags {:#x}: expected a sealed data-file trailer",
                trailer.flags
            ),
        ));
    }
    let n = trailer.index_size;
    if n > MAX_INDEX_ENTRIES {
        return Err(Error::corrupt(
            "layer trailer",
            format!("index_size {n} exceeds {MAX_INDEX_ENTRIES}"),
        ));
    }
    let io = trailer.index_offset;
    if io < HT_SPACE as u64
        || io % SECTOR != 0
        || io > trailer_at
        || n * MAPPING_BYTES as u64 > trailer_at - io
    {
        return Err(Error::corrupt(
            "layer trailer",
            format!("index of {n} entries at {io:#x} does not fit between the header and the trailer at {trailer_at:#x}"),
        ));
    }
    // Decode in pieces: memory holds the decoded extents, not the raw index as well.
    let mut maps = Vec::new();
    let mut raw = vec![0u8; (64 * 1024 * MAPPING_BYTES).min((n as usize) * MAPPING_BYTES)];
    let mut at = io;
    let end = io + n * MAPPING_BYTES as u64;
    while at < end {
        let len = ((end - at) as usize).min(raw.len());
        read_exact_at(src, at, &mut raw[..len], "layer index")?;
        maps.extend(decode_all(&raw[..len]).filter(|m| !m.is_invalid() && m.length > 0));
        at += len as u64;
    }
    let meta = LayerMeta {
        extents: maps.len() as u64,
        data_sectors: maps
            .iter()
            .filter(|m| !m.zeroed)
            .map(|m| m.length as u64)
            .sum(),
        header,
        trailer,
        file_size,
    };
    Ok((meta, maps, io / SECTOR))
}

/// A committed layer ready to be stacked: its index and the source its data is read from.
#[derive(Clone)]
pub struct RoLayer {
    pub meta: LayerMeta,
    pub index: RoIndex,
}

impl std::fmt::Debug for RoLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoLayer")
            .field("meta", &self.meta)
            .field("extents", &self.index.len())
            .finish()
    }
}

impl RoLayer {
    pub fn open<S: ReadAt + ?Sized>(src: &S) -> Result<Self> {
        let (meta, maps) = read_layer(src)?;
        Ok(RoLayer {
            meta,
            index: RoIndex::new(&maps)?,
        })
    }
}
