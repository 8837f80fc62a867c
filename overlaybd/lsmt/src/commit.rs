//! Commit: writes a committed layer (header, data packed in disk order, index, trailer) from
//! sorted extents, reproducing overlaybd's `compact()` byte for byte.

use std::io::Write;

use zfile::ReadAt;

use super::header::{flags, HeaderTrailer, Uuid, HT_SPACE};
use super::mapping::{compress, encode_all, Mapping, SECTOR};
use super::ro::{read_exact_at, DATA_START_SECTOR};
use crate::error::{Error, Result};

/// overlaybd copies data in 32 KiB pieces and records one extent per piece before merging
/// neighbours again; the merge limit makes long extents split at 16,320 sectors, so we cut the
/// same way.
const PIECE_SECTORS: u64 = 64;
/// Entries per 4 KiB of index; the index is padded to a multiple of this.
const INDEX_ALIGN_ENTRIES: usize = HT_SPACE / 16;
/// Data copied per source read.
const COPY_CHUNK: u64 = 1 << 20;

/// Header fields of the committed layer.
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// The new layer's UUID (overlaybd writes the nil UUID when none is given).
    pub uuid: Option<Uuid>,
    pub parent_uuid: Option<Uuid>,
    /// Commit message (at most 256 bytes).
    pub user_tag: Vec<u8>,
    /// A TurboOCI meta layer (overlaybd's `--turboOCI` commit): extents with tag 1 point into
    /// the target and are kept as they are (no data, tag and `moffset` unchanged); the index
    /// follows the data without padding, as overlaybd writes it.
    pub warp: bool,
}

/// What a commit wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitSummary {
    pub index_offset: u64,
    /// Extents in the committed index (padding not counted).
    pub extents: u64,
    /// Index entries written, padding included.
    pub index_entries: u64,
    pub data_sectors: u64,
    pub file_len: u64,
}

fn write_all(out: &mut dyn Write, buf: &[u8], pos: &mut u64) -> Result<()> {
    out.write_all(buf)
        .map_err(|e| Error::io("write", "committed layer", *pos, e))?;
    *pos += buf.len() as u64;
    Ok(())
}

/// Writes a committed layer from `maps` (sorted, non-overlapping; `tag` selects the source in
/// `sources` that holds each extent's data at `moffset`).
pub fn commit(
    maps: &[Mapping],
    sources: &[&dyn ReadAt],
    out: &mut dyn Write,
    opts: &CommitOptions,
) -> Result<CommitSummary> {
    let mut head = HeaderTrailer::new(
        flags::HEADER | flags::DATA_FILE | flags::SEALED,
        opts.virtual_size,
        opts.uuid.unwrap_or(Uuid::NIL),
        opts.parent_uuid.unwrap_or(Uuid::NIL),
    );
    head.user_tag = opts.user_tag.clone();
    let mut pos = 0u64;
    write_all(out, &head.encode()?, &mut pos)?;

    let mut moffset = DATA_START_SECTOR;
    let mut index: Vec<Mapping> = Vec::with_capacity(maps.len());
    let mut buf = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        if i > 0 && maps[i - 1].end() > m.offset {
            return Err(Error::InvalidArgument(format!(
                "commit: extent {i} overlaps the previous one"
            )));
        }
        if m.zeroed {
            index.push(Mapping {
                moffset,
                tag: 0,
                ..*m
            });
            continue;
        }
        if opts.warp && m.tag == crate::warp::TAG_TARGET {
            index.push(*m);
            continue;
        }
        let src = *sources.get(m.tag as usize).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "commit: extent {i} names source {} of {}",
                m.tag,
                sources.len()
            ))
        })?;
        let mut done = 0u64;
        while done < m.length as u64 {
            let n = (m.length as u64 - done).min(COPY_CHUNK / SECTOR);
            buf.resize((n * SECTOR) as usize, 0);
            read_exact_at(src, (m.moffset + done) * SECTOR, &mut buf, "layer data")?;
            write_all(out, &buf, &mut pos)?;
            let mut p = 0;
            while p < n {
                let len = PIECE_SECTORS.min(n - p);
                index.push(Mapping::data(
                    m.offset + done + p,
                    len as u32,
                    moffset + done + p,
                ));
                p += len;
            }
            done += n;
        }
        moffset += m.length as u64;
    }
    let index_offset = moffset * SECTOR;
    debug_assert_eq!(index_offset, pos);
    compress(&mut index);
    let real = index.len();
    if !opts.warp && !real.is_multiple_of(INDEX_ALIGN_ENTRIES) {
        index.resize(
            real.next_multiple_of(INDEX_ALIGN_ENTRIES),
            Mapping::invalid(),
        );
    }
    write_all(out, &encode_all(&index), &mut pos)?;
    let mut trailer = head.clone();
    trailer.flags = flags::DATA_FILE | flags::SEALED;
    trailer.index_offset = index_offset;
    trailer.index_size = index.len() as u64;
    write_all(out, &trailer.encode()?, &mut pos)?;
    out.flush()
        .map_err(|e| Error::io("flush", "committed layer", pos, e))?;
    Ok(CommitSummary {
        index_offset,
        extents: real as u64,
        index_entries: index.len() as u64,
        data_sectors: moffset - DATA_START_SECTOR,
        file_len: pos,
    })
}
