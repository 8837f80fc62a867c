//! Opening a ZFile, one step at a time: the header, the trailer (when the index is found
//! there), the geometry that slot describes, the index, then the integrity table and the
//! canonical slots it requires. Each step reads only what the checked result of the previous
//! one says to read. `open_with` runs the sequence again from the origin after a failed check.

use std::io;

use super::{read_exact, IndexSource, Info, OpenOptions, Table, Verification, ZFile};
use crate::codec::compress_bound;
use crate::crc::crc32c_raw;
use crate::error::{Error, Result};
use crate::header::{
    self, flags, Algorithm, HeaderTrailer, HT_SLOT, MAX_BLOCK_SIZE, MAX_INDEX_ENTRIES,
    MIN_BLOCK_SIZE,
};
use crate::index::JumpTable;
use crate::integrity::{self, Layout, Root, DIGEST_LEN};
use crate::source::{read_full_at, ReadAt};

/// Index and table are read in pieces of this size, so that memory grows only as fast as
/// bytes actually arrive (a lying count cannot make us allocate gigabytes up front).
const META_CHUNK: usize = 1 << 20;

impl<S: ReadAt> ZFile<S> {
    /// Opens with default options: CRCs checked, and an integrity table, if present, checked
    /// against the root it stores.
    pub fn open(src: S) -> Result<Self> {
        Self::open_with(src, &OpenOptions::default())
    }

    /// Opens the file; when its metadata (header, index, table, trailer) fails a check, the
    /// ranges read are dropped from the source's caches (`discard_cached`) and read once more,
    /// so that bad bytes from a cache or a P2P peer do not fail the open when the origin has
    /// good ones.
    pub fn open_with(src: S, opts: &OpenOptions) -> Result<Self> {
        let attempt = {
            let rec = Recording {
                inner: &src,
                reads: std::sync::Mutex::new(Vec::new()),
            };
            let r = ZFile::open_once(&rec, opts).map(|z| (z.info, z.jump, z.table));
            r.map_err(|e| (e, rec.reads.into_inner().unwrap_or_else(|p| p.into_inner())))
        };
        let (first, reads) = match attempt {
            Ok((info, jump, table)) => {
                return Ok(ZFile {
                    src,
                    info,
                    jump,
                    table,
                })
            }
            Err((e @ Error::Io { .. }, _)) => return Err(e),
            Err(e) => e,
        };
        for (offset, len) in reads {
            src.discard_cached(offset, len)
                .map_err(|e| Error::io("discard cached metadata", offset, e))?;
        }
        ZFile::open_once(src, opts).map_err(|again| {
            if again.to_string() == first.to_string() {
                again
            } else {
                // Different the second time: say both (a cache or peer was involved).
                Error::Integrity(format!("{first}; read again from the origin: {again}"))
            }
        })
    }

    fn open_once(src: S, opts: &OpenOptions) -> Result<Self> {
        let slots = read_slots(&src)?;
        let (ht, which) = (&slots.ht, slots.which());
        let geometry = check_geometry(ht, which, slots.trailer_at())?;
        let layout = &geometry.layout;
        let (raw_index, jump) = read_index(&src, ht, which, &geometry)?;
        let table = load_table(
            &src,
            opts,
            layout,
            geometry.index_end,
            slots.trailer_at(),
            &raw_index,
        )?;
        let mut trailer_checked = slots.trailer.is_some();
        if let Some((_, _, table_end)) = &table {
            trailer_checked |= check_canonical_slots(&src, &slots, layout, *table_end)?;
        }
        let (integrity_root, verification) = match &table {
            None => (None, Verification::Crc),
            Some((_, root, _)) if opts.trusted_root.is_some() => {
                (Some(*root), Verification::Authenticated)
            }
            Some((_, root, _)) => (Some(*root), Verification::TableSelfConsistent),
        };
        let info = Info {
            algorithm: geometry.algorithm,
            level: ht.level,
            block_size: layout.block_size,
            blocks: layout.block_count,
            original_size: layout.original_file_size,
            index_offset: layout.index_offset,
            data_offset: layout.data_offset,
            data_end: jump.data_end(),
            block_crc: ht.verify,
            digests_checked: ht.has(flags::CALC_DIGEST),
            index_source: slots.index_source,
            header_flags: slots.head.flags,
            integrity_root,
            verification,
            trailer_checked,
        };
        Ok(ZFile {
            src,
            info,
            jump,
            table: table.map(|(t, _, _)| t),
        })
    }
}

/// A source that remembers the ranges read from it (to drop them from caches after a failed
/// open).
struct Recording<'a, S: ?Sized> {
    inner: &'a S,
    reads: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl<S: ReadAt + ?Sized> ReadAt for Recording<'_, S> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((offset, buf.len() as u64));
        self.inner.read_at(offset, buf)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn discard_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard_cached(offset, len)
    }
    fn generation(&self) -> Option<u64> {
        self.inner.generation()
    }
}

/// Reads `len` bytes at `offset` in pieces, growing the buffer only as data arrives.
fn read_meta<S: ReadAt + ?Sized>(
    src: &S,
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while (out.len() as u64) < len {
        let piece = (len - out.len() as u64).min(META_CHUNK as u64) as usize;
        let start = out.len();
        out.resize(start + piece, 0);
        let at = offset + start as u64;
        let n = read_full_at(src, at, &mut out[start..]).map_err(|e| Error::io("read", at, e))?;
        if n < piece {
            return Err(Error::Truncated {
                what,
                offset,
                need: len,
                got: (start + n) as u64,
            });
        }
    }
    Ok(out)
}

fn read_slot<S: ReadAt + ?Sized>(
    src: &S,
    offset: u64,
    what: &'static str,
) -> Result<[u8; HT_SLOT]> {
    let mut slot = [0u8; HT_SLOT];
    read_exact(src, offset, &mut slot, what)?;
    Ok(slot)
}

fn bad(which: &'static str, field: &'static str, value: u64, reason: &'static str) -> Error {
    Error::BadHeader {
        which,
        field,
        value,
        reason,
    }
}

/// The slots read first: the header, and the one that locates the index (the header itself
/// under `HEADER_OVERWRITE`, else the trailer at the end of the blob).
struct Slots {
    head_slot: [u8; HT_SLOT],
    head: HeaderTrailer,
    /// The header or the trailer, whichever locates the index.
    ht: HeaderTrailer,
    index_source: IndexSource,
    /// Offset and bytes of the trailer, when the index is found there.
    trailer: Option<(u64, [u8; HT_SLOT])>,
}

impl Slots {
    /// The slot that locates the index, as error messages name it.
    fn which(&self) -> &'static str {
        match self.index_source {
            IndexSource::Header => "header",
            IndexSource::Trailer => "trailer",
        }
    }

    fn trailer_at(&self) -> Option<u64> {
        self.trailer.map(|(at, _)| at)
    }
}

/// Reads and checks the header, then the trailer unless the header holds the index.
fn read_slots<S: ReadAt + ?Sized>(src: &S) -> Result<Slots> {
    let head_slot = read_slot(src, 0, "zfile header")?;
    let head = HeaderTrailer::decode(&head_slot)?;
    if !head.has(flags::HEADER) {
        return Err(Error::NotZFile(
            "first slot is not a header (flag bit 0 clear)",
        ));
    }
    if head.has(flags::CALC_DIGEST) && !header::digest_matches(&head_slot) {
        return Err(bad(
            "header",
            "digest",
            head.digest as u64,
            "header digest mismatch",
        ));
    }
    if head.has(flags::HEADER_OVERWRITE) {
        return Ok(Slots {
            head_slot,
            ht: head.clone(),
            head,
            index_source: IndexSource::Header,
            trailer: None,
        });
    }
    if !head.has(flags::DATA_FILE) {
        return Err(bad("header", "flags", head.flags, "not a data file"));
    }
    let (at, slot, ht) = read_trailer(src)?;
    Ok(Slots {
        head_slot,
        head,
        ht,
        index_source: IndexSource::Trailer,
        trailer: Some((at, slot)),
    })
}

/// Reads and checks the trailer in the last slot of the blob: its offset, bytes and fields.
fn read_trailer<S: ReadAt + ?Sized>(src: &S) -> Result<(u64, [u8; HT_SLOT], HeaderTrailer)> {
    let size = src.size().map_err(|e| {
        Error::Unsupported(format!(
            "the index is in the trailer, which needs the blob size, and the source cannot tell it: {e}"
        ))
    })?;
    if size < 2 * HT_SLOT as u64 {
        return Err(Error::Truncated {
            what: "zfile header and trailer",
            offset: 0,
            need: 1024,
            got: size,
        });
    }
    let at = size - HT_SLOT as u64;
    let slot = read_slot(src, at, "zfile trailer")?;
    let t = HeaderTrailer::decode(&slot)
        .map_err(|_| Error::NotZFile("no trailer at the end of the file"))?;
    if t.has(flags::HEADER) || !t.has(flags::DATA_FILE) || !t.has(flags::SEALED) {
        return Err(bad(
            "trailer",
            "flags",
            t.flags,
            "expected a sealed data-file trailer",
        ));
    }
    if t.has(flags::CALC_DIGEST) && !header::digest_matches(&slot) {
        return Err(bad(
            "trailer",
            "digest",
            t.digest as u64,
            "trailer digest mismatch",
        ));
    }
    Ok((at, slot, t))
}

/// What the index-locating slot describes, every field checked against the others.
struct Geometry {
    algorithm: Algorithm,
    layout: Layout,
    /// End of the index, where an integrity table would start.
    index_end: u64,
}

/// Checks codec, block size, block count and index position of `ht` (named `which`), without
/// reading anything: the index must lie between the header and the trailer, if any.
fn check_geometry(
    ht: &HeaderTrailer,
    which: &'static str,
    trailer_at: Option<u64>,
) -> Result<Geometry> {
    let algorithm = ht.algorithm(which)?;
    if ht.use_dict != 0 {
        return Err(Error::Unsupported(format!(
            "zfile {which}: dictionaries are not supported"
        )));
    }
    let bs = ht.block_size;
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) || !bs.is_power_of_two() {
        return Err(bad(
            which,
            "block_size",
            bs as u64,
            "not a power of two from 512 to 65536",
        ));
    }
    let n = ht.index_size;
    if n > MAX_INDEX_ENTRIES {
        return Err(bad(
            which,
            "index_size",
            n,
            "more than 1,000,000,000 entries",
        ));
    }
    let needed = ht.original_file_size.div_ceil(bs as u64);
    if n != needed {
        return Err(Error::BadIndex {
            entry: n,
            reason: format!(
                "{n} entries, but {} bytes in blocks of {bs} need {needed}",
                ht.original_file_size
            ),
        });
    }
    let data_offset = HT_SLOT as u64 + ht.dict_size as u64;
    if ht.index_offset < data_offset {
        return Err(bad(
            which,
            "index_offset",
            ht.index_offset,
            "inside the header",
        ));
    }
    let index_end = ht.index_offset.checked_add(4 * n).ok_or(bad(
        which,
        "index_offset",
        ht.index_offset,
        "index ends past 2^64",
    ))?;
    if trailer_at.is_some_and(|t| index_end > t) {
        return Err(bad(
            which,
            "index_offset",
            ht.index_offset,
            "index runs into the trailer",
        ));
    }
    let layout = Layout {
        block_count: n,
        original_file_size: ht.original_file_size,
        index_offset: ht.index_offset,
        data_offset,
        block_size: bs,
        algo: ht.algo,
        verify: ht.verify,
        level: ht.level,
    };
    Ok(Geometry {
        algorithm,
        layout,
        index_end,
    })
}

/// Reads the index, checks its CRC when the slot carries one, and builds the jump table (which
/// checks every block's stored length). Returns the raw index too: the table's root covers it.
fn read_index<S: ReadAt + ?Sized>(
    src: &S,
    ht: &HeaderTrailer,
    which: &'static str,
    geometry: &Geometry,
) -> Result<(Vec<u8>, JumpTable)> {
    let layout = &geometry.layout;
    let raw_index = read_meta(
        src,
        layout.index_offset,
        4 * layout.block_count,
        "zfile index",
    )?;
    if ht.has(flags::CALC_DIGEST) {
        let crc = crc32c_raw(0, &raw_index);
        if crc != ht.index_crc {
            return Err(bad(
                which,
                "index_crc",
                ht.index_crc as u64,
                "index crc mismatch",
            ));
        }
    }
    let crc_len = if layout.verify { 4 } else { 0 };
    let max_len = (compress_bound(geometry.algorithm, layout.block_size as usize) + crc_len) as u32;
    let jump = JumpTable::build(
        &raw_index,
        layout.data_offset,
        layout.index_offset,
        1 + crc_len as u32,
        max_len,
    )?;
    Ok((raw_index, jump))
}

/// Finds, reads and checks the integrity table that starts right after the index. Returns the
/// digests, the root and where the table ends.
fn load_table<S: ReadAt + ?Sized>(
    src: &S,
    opts: &OpenOptions,
    layout: &Layout,
    at: u64,
    trailer_at: Option<u64>,
    raw_index: &[u8],
) -> Result<Option<(Table, Root, u64)>> {
    if opts.ignore_table && opts.trusted_root.is_none() {
        return Ok(None);
    }
    let mut head = [0u8; integrity::HEADER_LEN];
    let room = trailer_at.map_or(u64::MAX, |t| t - at);
    let got = if room >= head.len() as u64 {
        read_full_at(src, at, &mut head).map_err(|e| Error::io("read integrity table", at, e))?
    } else {
        0
    };
    if got < head.len() || !integrity::has_magic(&head) {
        return match opts.trusted_root {
            Some(_) => Err(Error::Integrity(
                "a trusted root was given, but the file has no integrity table".into(),
            )),
            None => Ok(None),
        };
    }
    let th = integrity::decode_header(&head, at)?;
    if th.layout != *layout {
        return Err(Error::Integrity(format!(
            "table at {at:#x} describes {:?}, but the file has {:?}",
            th.layout, layout
        )));
    }
    let table_len = layout.block_count * DIGEST_LEN as u64;
    let table_end = at + integrity::HEADER_LEN as u64 + table_len;
    if trailer_at.is_some_and(|t| table_end != t) {
        return Err(Error::Integrity(format!(
            "table at {at:#x} ends at {table_end:#x}, but the trailer is at {:#x}",
            trailer_at.unwrap_or_default()
        )));
    }
    // Hash and keep the digests piece by piece: memory holds one copy of the table.
    let mut hasher = integrity::root_hasher(&head, raw_index);
    let mut digests: Vec<[u8; DIGEST_LEN]> = Vec::new();
    let mut pos = at + integrity::HEADER_LEN as u64;
    let mut piece = vec![0u8; META_CHUNK.min(table_len as usize)];
    while pos < table_end {
        let n = ((table_end - pos) as usize).min(piece.len());
        read_exact(src, pos, &mut piece[..n], "integrity table")?;
        hasher.update(&piece[..n]);
        digests.extend(
            piece[..n]
                .chunks_exact(DIGEST_LEN)
                .map(|c| <[u8; DIGEST_LEN]>::try_from(c).expect("chunks_exact")),
        );
        pos += n as u64;
    }
    let root = Root(*hasher.finalize().as_bytes());
    if th.stored_root != root {
        return Err(Error::Integrity(format!(
            "table damaged: stored root {}, content yields {root}",
            th.stored_root
        )));
    }
    if let Some(trusted) = opts.trusted_root {
        if trusted != root {
            return Err(Error::Integrity(format!(
                "root mismatch: trusted {trusted}, file yields {root}"
            )));
        }
    }
    Ok(Some((Table::new(digests), root, table_end)))
}

/// For a file with an integrity table: requires the header, and the trailer when it can be
/// found, to be the canonical slots our writer produces. Only our writer makes tables, and
/// it writes canonical slots: requiring them leaves no byte of the file unchecked (the slot
/// CRCs alone are not authentication). Returns whether a trailer was checked.
fn check_canonical_slots<S: ReadAt + ?Sized>(
    src: &S,
    slots: &Slots,
    layout: &Layout,
    table_end: u64,
) -> Result<bool> {
    let index_crc = slots.ht.index_crc;
    let header_form = slots.index_source == IndexSource::Header;
    if slots.head_slot != canonical_slot(layout, header_form, true, index_crc) {
        return Err(Error::Integrity(
            "header slot differs from the one the table describes".into(),
        ));
    }
    let want_trailer = canonical_slot(layout, false, false, index_crc);
    let trailer = match (slots.trailer, src.size()) {
        (Some(found), _) => Some(found),
        (None, Ok(size)) if size >= table_end => Some((
            size.saturating_sub(HT_SLOT as u64),
            read_slot(src, size.saturating_sub(HT_SLOT as u64), "zfile trailer")?,
        )),
        (None, Ok(size)) => {
            return Err(Error::Truncated {
                what: "zfile trailer",
                offset: table_end,
                need: HT_SLOT as u64,
                got: size.saturating_sub(table_end),
            })
        }
        (None, Err(_)) => None,
    };
    let Some((at, slot)) = trailer else {
        return Ok(false);
    };
    if at != table_end || slot != want_trailer {
        return Err(Error::Integrity(format!(
            "the trailer must follow the table at {table_end:#x} and match it (found at {at:#x})"
        )));
    }
    Ok(true)
}

/// The header or trailer slot our writer produces for `layout`.
fn canonical_slot(
    layout: &Layout,
    header_form: bool,
    header: bool,
    index_crc: u32,
) -> [u8; HT_SLOT] {
    let algo = Algorithm::from_id(layout.algo).expect("checked at open");
    let f = match (header, header_form) {
        (true, true) => {
            flags::HEADER | flags::DATA_FILE | flags::HEADER_OVERWRITE | flags::CALC_DIGEST
        }
        (true, false) => flags::HEADER | flags::DATA_FILE | flags::CALC_DIGEST,
        (false, _) => flags::DATA_FILE | flags::SEALED | flags::CALC_DIGEST,
    };
    let mut ht = HeaderTrailer::new(f, algo, layout.level, layout.block_size, layout.verify);
    if !header || header_form {
        ht.index_offset = layout.index_offset;
        ht.index_size = layout.block_count;
        ht.original_file_size = layout.original_file_size;
        ht.index_crc = index_crc;
    }
    ht.encode()
}
