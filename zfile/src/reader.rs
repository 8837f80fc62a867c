//! Reading a ZFile: open (header, trailer, index, integrity table), then reads of any offset
//! and length from many threads at once.

use std::cell::RefCell;
use std::io;
use std::ops::Range;

use crate::codec::{self, compress_bound};
use crate::crc::{block_crc, crc32c_raw};
use crate::error::{Error, Result};
use crate::header::{
    self, flags, Algorithm, HeaderTrailer, HT_SLOT, MAX_BLOCK_SIZE, MAX_INDEX_ENTRIES,
    MIN_BLOCK_SIZE,
};
use crate::index::{BlobExtent, JumpTable};
use crate::integrity::{self, Layout, Root, DIGEST_LEN};
use crate::source::{read_full_at, ReadAt};

/// Most stored bytes fetched from the source in one `read_at` call.
const MAX_BATCH: u64 = 1 << 20;
/// Index and table are read in pieces of this size, so that memory grows only as fast as
/// bytes actually arrive (a lying count cannot make us allocate gigabytes up front).
const META_CHUNK: usize = 1 << 20;

/// How to open a ZFile.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// A root digest obtained from a trusted place (the layer's annotations): the file must
    /// carry an integrity table that this root authenticates.
    pub trusted_root: Option<Root>,
    /// Ignore an integrity table the file carries when no trusted root is given (its blocks are
    /// then checked by CRC only).
    pub ignore_table: bool,
}

/// Where the reader found the index information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexSource {
    /// The header had `HEADER_OVERWRITE` set.
    Header,
    /// The trailer at the end of the file.
    Trailer,
}

/// How far the reader can vouch for the bytes it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Per-block CRC only (or nothing, when the file has no CRCs).
    Crc,
    /// Per-block BLAKE3, checked against the table's own stored root: catches damage, not
    /// tampering.
    TableSelfConsistent,
    /// Per-block BLAKE3, with the table authenticated by a trusted root.
    Authenticated,
}

/// What `open` learned about a file.
#[derive(Clone, Debug)]
pub struct Info {
    pub algorithm: Algorithm,
    /// zstd level recorded by the writer (0 = the default).
    pub level: u8,
    pub block_size: u32,
    pub blocks: u64,
    pub original_size: u64,
    pub index_offset: u64,
    pub data_offset: u64,
    /// End of the last stored block.
    pub data_end: u64,
    /// Per-block CRCs present.
    pub block_crc: bool,
    /// Header digest and index CRC were present and checked.
    pub digests_checked: bool,
    pub index_source: IndexSource,
    pub header_flags: u64,
    /// Root of the integrity table, when the file has one and it was checked.
    pub integrity_root: Option<Root>,
    pub verification: Verification,
    /// The trailer was read and checked (always in the trailer form; in the header form only
    /// when the file has an integrity table and the source knows its size).
    pub trailer_checked: bool,
}

struct Table {
    digests: Vec<[u8; DIGEST_LEN]>,
}

/// A ZFile opened for reading over a positional source.
pub struct ZFile<S> {
    src: S,
    info: Info,
    jump: JumpTable,
    table: Option<Table>,
}

impl<S> std::fmt::Debug for ZFile<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZFile")
            .field("info", &self.info)
            .finish_non_exhaustive()
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
}

fn read_exact<S: ReadAt + ?Sized>(
    src: &S,
    offset: u64,
    buf: &mut [u8],
    what: &'static str,
) -> Result<()> {
    let n = read_full_at(src, offset, buf).map_err(|e| Error::io("read", offset, e))?;
    if n < buf.len() {
        return Err(Error::Truncated {
            what,
            offset,
            need: buf.len() as u64,
            got: n as u64,
        });
    }
    Ok(())
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
        let head_slot = read_slot(&src, 0, "zfile header")?;
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
        let (ht, index_source, which, trailer_at, trailer_slot) = if head
            .has(flags::HEADER_OVERWRITE)
        {
            (head.clone(), IndexSource::Header, "header", None, None)
        } else {
            if !head.has(flags::DATA_FILE) {
                return Err(bad("header", "flags", head.flags, "not a data file"));
            }
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
            let slot = read_slot(&src, at, "zfile trailer")?;
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
            (t, IndexSource::Trailer, "trailer", Some(at), Some(slot))
        };
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
        if let Some(t) = trailer_at {
            if index_end > t {
                return Err(bad(
                    which,
                    "index_offset",
                    ht.index_offset,
                    "index runs into the trailer",
                ));
            }
        }
        let raw_index = read_meta(&src, ht.index_offset, 4 * n, "zfile index")?;
        let digests_checked = ht.has(flags::CALC_DIGEST);
        if digests_checked {
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
        let crc_len = if ht.verify { 4 } else { 0 };
        let max_len = (compress_bound(algorithm, bs as usize) + crc_len) as u32;
        let jump = JumpTable::build(
            &raw_index,
            data_offset,
            ht.index_offset,
            1 + crc_len as u32,
            max_len,
        )?;

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
        let table = load_table(&src, opts, &layout, index_end, trailer_at, &raw_index)?;
        let mut trailer_checked = trailer_at.is_some();
        if let Some((_, _, table_end)) = &table {
            // Only our writer makes tables, and it writes canonical slots: require them, so that
            // no byte of the file escapes a check (the slot CRCs alone are not authentication).
            let want_head = canonical_slot(
                &layout,
                index_source == IndexSource::Header,
                true,
                ht.index_crc,
            );
            if head_slot != want_head {
                return Err(Error::Integrity(
                    "header slot differs from the one the table describes".into(),
                ));
            }
            let want_trailer = canonical_slot(&layout, false, false, ht.index_crc);
            let trailer_slot = match (trailer_slot, src.size()) {
                (Some(slot), _) => Some((trailer_at.expect("trailer form"), slot)),
                (None, Ok(size)) if size >= *table_end => Some((
                    size.saturating_sub(HT_SLOT as u64),
                    read_slot(&src, size.saturating_sub(HT_SLOT as u64), "zfile trailer")?,
                )),
                (None, Ok(size)) => {
                    return Err(Error::Truncated {
                        what: "zfile trailer",
                        offset: *table_end,
                        need: HT_SLOT as u64,
                        got: size.saturating_sub(*table_end),
                    })
                }
                (None, Err(_)) => None,
            };
            if let Some((at, slot)) = trailer_slot {
                if at != *table_end || slot != want_trailer {
                    return Err(Error::Integrity(format!(
                        "the trailer must follow the table at {table_end:#x} and match it (found at {at:#x})"
                    )));
                }
                trailer_checked = true;
            }
        }
        let (integrity_root, verification) = match &table {
            None => (None, Verification::Crc),
            Some((_, root, _)) if opts.trusted_root.is_some() => {
                (Some(*root), Verification::Authenticated)
            }
            Some((_, root, _)) => (Some(*root), Verification::TableSelfConsistent),
        };
        let info = Info {
            algorithm,
            level: ht.level,
            block_size: bs,
            blocks: n,
            original_size: ht.original_file_size,
            index_offset: ht.index_offset,
            data_offset,
            data_end: jump.data_end(),
            block_crc: ht.verify,
            digests_checked,
            index_source,
            header_flags: head.flags,
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

    pub fn info(&self) -> &Info {
        &self.info
    }

    /// Uncompressed length.
    pub fn len(&self) -> u64 {
        self.info.original_size
    }

    pub fn is_empty(&self) -> bool {
        self.info.original_size == 0
    }

    pub fn source(&self) -> &S {
        &self.src
    }

    /// Where block `i` is stored (`None` past the last block).
    pub fn block_extent(&self, i: u64) -> Option<BlobExtent> {
        (i < self.info.blocks).then(|| self.jump.extent(i))
    }

    /// Memory held by the index and the digest table.
    pub fn heap_bytes(&self) -> usize {
        self.jump.heap_bytes()
            + self
                .table
                .as_ref()
                .map_or(0, |t| t.digests.capacity() * DIGEST_LEN)
    }

    /// The plan for reading `[offset, offset + len)`: which blocks, and which contiguous byte
    /// range of the blob holds them (empty when the range is past the end). A fetcher can
    /// bring that blob range into its cache before calling [`ZFile::read_at`].
    pub fn plan(&self, offset: u64, len: u64) -> ReadPlan {
        let end = offset.saturating_add(len).min(self.len());
        if offset >= end {
            return ReadPlan {
                blocks: 0..0,
                blob: 0..0,
            };
        }
        let bs = self.info.block_size as u64;
        let blocks = offset / bs..(end - 1) / bs + 1;
        let blob = self.jump.extent(blocks.start).offset..self.jump.extent(blocks.end - 1).end();
        ReadPlan { blocks, blob }
    }

    /// Neighbouring blocks from `block` (before `end`) whose stored bytes fit in `max_bytes`
    /// (at least one block), to be fetched in one source read: the first block's extent, the
    /// last block, and the span in bytes.
    fn batch(&self, block: u64, end: u64, max_bytes: u64) -> (BlobExtent, u64, usize) {
        let first = self.jump.extent(block);
        let mut last = block;
        while last + 1 < end && self.jump.extent(last + 1).end() - first.offset <= max_bytes {
            last += 1;
        }
        (
            first,
            last,
            (self.jump.extent(last).end() - first.offset) as usize,
        )
    }

    fn raw_len(&self, block: u64) -> usize {
        let bs = self.info.block_size as u64;
        (self.len() - block * bs).min(bs) as usize
    }

    /// Checks a stored block (CRC, digest) and decompresses it into `out`, which has the
    /// block's raw length.
    fn decode_block(
        &self,
        block: u64,
        stored: &[u8],
        out: &mut [u8],
    ) -> std::result::Result<(), String> {
        if let Some(t) = &self.table {
            if integrity::block_digest(stored) != t.digests[block as usize] {
                return Err("blake3 digest mismatch".into());
            }
        }
        let compressed = if self.info.block_crc {
            let (c, crc) = stored.split_at(stored.len() - 4);
            let want = u32::from_le_bytes(crc.try_into().expect("4-byte crc"));
            if block_crc(c) != want {
                return Err("crc mismatch".into());
            }
            c
        } else {
            stored
        };
        let n = codec::decompress(self.info.algorithm, compressed, out)?;
        if n != out.len() {
            return Err(format!("decompressed to {n} bytes, expected {}", out.len()));
        }
        Ok(())
    }

    /// Reads block `block` again, straight from the origin, after a failed check.
    fn reload_block(&self, block: u64, out: &mut [u8], first_failure: String) -> Result<()> {
        let ext = self.jump.extent(block);
        let corrupt = |reason: String| Error::Corrupt {
            block,
            offset: ext.offset,
            reason,
        };
        self.src
            .discard_cached(ext.offset, ext.len as u64)
            .map_err(|e| Error::io("discard cached block", ext.offset, e))?;
        let mut stored = vec![0u8; ext.len as usize];
        read_exact(&self.src, ext.offset, &mut stored, "zfile block")?;
        self.decode_block(block, &stored, out).map_err(|again| {
            corrupt(if again == first_failure {
                again
            } else {
                format!("{first_failure}, then {again}")
            })
        })
    }

    /// Reads up to `buf.len()` bytes at `offset` of the uncompressed data; returns the count,
    /// short only at the end of the file. Every returned byte passed its block's checks.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.len() || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len() - offset) as usize;
        let buf = &mut buf[..n];
        let plan = self.plan(offset, n as u64);
        let bs = self.info.block_size as u64;
        with_scratch(|scratch| {
            let (stored, tmp) = scratch;
            let mut block = plan.blocks.start;
            while block < plan.blocks.end {
                let (first, last, span) = self.batch(block, plan.blocks.end, MAX_BATCH);
                if stored.len() < span {
                    stored.resize(span, 0);
                }
                read_exact(&self.src, first.offset, &mut stored[..span], "zfile block")?;
                for b in block..=last {
                    let ext = self.jump.extent(b);
                    let s = &stored
                        [(ext.offset - first.offset) as usize..(ext.end() - first.offset) as usize];
                    let raw_len = self.raw_len(b);
                    let raw_start = b * bs;
                    let raw_end = raw_start + raw_len as u64;
                    let want_start = raw_start.max(offset);
                    let want_end = raw_end.min(offset + n as u64);
                    let dst_range = (want_start - offset) as usize..(want_end - offset) as usize;
                    if want_start == raw_start && want_end == raw_end {
                        // The whole block is wanted: decompress straight into the caller's buffer.
                        let dst = &mut buf[dst_range];
                        if let Err(why) = self.decode_block(b, s, dst) {
                            self.reload_block(b, dst, why)?;
                        }
                    } else {
                        if tmp.len() < raw_len {
                            tmp.resize(raw_len, 0);
                        }
                        let t = &mut tmp[..raw_len];
                        if let Err(why) = self.decode_block(b, s, t) {
                            self.reload_block(b, t, why)?;
                        }
                        buf[dst_range].copy_from_slice(
                            &t[(want_start - raw_start) as usize..(want_end - raw_start) as usize],
                        );
                    }
                }
                block = last + 1;
            }
            Ok(n)
        })
    }

    /// Checks every block (CRC, digest, decompressed size), reading the blob in large
    /// sequential pieces. Corrupt blocks are passed to `on_bad` and checking goes on; an I/O
    /// error stops it. Returns the number of blocks checked.
    pub fn verify_blocks(&self, mut on_bad: impl FnMut(Error)) -> Result<u64> {
        let mut stored = Vec::new();
        let mut raw = vec![0u8; self.info.block_size as usize];
        let mut block = 0;
        let total = self.info.blocks;
        while block < total {
            let (first, last, span) = self.batch(block, total, 4 * MAX_BATCH);
            stored.resize(span, 0);
            read_exact(&self.src, first.offset, &mut stored, "zfile block")?;
            for b in block..=last {
                let ext = self.jump.extent(b);
                let s = &stored
                    [(ext.offset - first.offset) as usize..(ext.end() - first.offset) as usize];
                let out = &mut raw[..self.raw_len(b)];
                if let Err(reason) = self.decode_block(b, s, out) {
                    on_bad(Error::Corrupt {
                        block: b,
                        offset: ext.offset,
                        reason,
                    });
                }
            }
            block = last + 1;
        }
        Ok(total)
    }
}

/// Which blocks a read touches and where they are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    pub blocks: Range<u64>,
    pub blob: Range<u64>,
}

fn bad(which: &'static str, field: &'static str, value: u64, reason: &'static str) -> Error {
    Error::BadHeader {
        which,
        field,
        value,
        reason,
    }
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
    Ok(Some((Table { digests }, root, table_end)))
}

type Scratch = (Vec<u8>, Vec<u8>);

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's scratch buffers (or fresh ones when re-entered, e.g. a ZFile
/// whose source is another ZFile).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let r = f(&mut s);
            // Do not keep an unusually large buffer around for every thread.
            if s.0.capacity() > 4 * MAX_BATCH as usize {
                s.0 = Vec::new();
            }
            r
        }
        Err(_) => f(&mut (Vec::new(), Vec::new())),
    })
}

impl<S: ReadAt> ReadAt for ZFile<S> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        ZFile::read_at(self, offset, buf).map_err(Error::into_io)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len())
    }
}
