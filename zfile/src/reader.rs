//! Reading a ZFile: [`ZFile`] and what it learned at open, then reads of any offset and length
//! from many threads at once. Opening (header, trailer, index, integrity table) is in `open`.

use std::io;
use std::ops::Range;
use std::sync::Mutex;

use crate::codec;
use crate::crc::block_crc;
use crate::error::{Error, Result};
use crate::header::Algorithm;
use crate::index::{BlobExtent, JumpTable};
use crate::integrity::{self, Root, DIGEST_LEN};
use crate::source::{read_full_at, ReadAt};

mod open;

/// Most stored bytes fetched from the source in one `read_at` call.
const MAX_BATCH: u64 = 1 << 20;

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
    checked: Mutex<Checked>,
}

/// Blocks whose digest was checked, at one source generation (see [`ReadAt::generation`]):
/// while the source's generation stays the same, their stored bytes read the same, and the
/// CRC alone is checked on later reads.
#[derive(Default)]
struct Checked {
    generation: u64,
    /// One bit per block; empty until the first block is marked.
    bits: Vec<u64>,
}

impl Table {
    pub(crate) fn new(digests: Vec<[u8; DIGEST_LEN]>) -> Self {
        Table {
            digests,
            checked: Mutex::default(),
        }
    }

    fn checked(&self) -> std::sync::MutexGuard<'_, Checked> {
        self.checked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Into `known` (bit `i` for block `first + i`): which blocks of `first..=last` had their
    /// digest checked at generation `gen`.
    fn known(&self, gen: u64, first: u64, last: u64, known: &mut Vec<u64>) {
        known.clear();
        known.resize(((last - first) / 64 + 1) as usize, 0);
        let c = self.checked();
        if c.generation != gen || c.bits.is_empty() {
            return;
        }
        for b in first..=last {
            if c.bits[(b / 64) as usize] >> (b % 64) & 1 == 1 {
                let i = b - first;
                known[(i / 64) as usize] |= 1 << (i % 64);
            }
        }
    }

    /// Records that blocks `first..=last` (but `except`) passed their digest check on bytes
    /// read at generation `gen`. A newer generation forgets every block checked before it.
    fn mark(&self, gen: u64, first: u64, last: u64, except: &[u64]) {
        let mut c = self.checked();
        if gen < c.generation {
            return;
        }
        if gen > c.generation || c.bits.is_empty() {
            c.generation = gen;
            c.bits.clear();
            c.bits.resize(self.digests.len().div_ceil(64), 0);
        }
        for b in first..=last {
            if !except.contains(&b) {
                c.bits[(b / 64) as usize] |= 1 << (b % 64);
            }
        }
    }
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

impl<S: ReadAt> ZFile<S> {
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
            + self.table.as_ref().map_or(0, |t| {
                t.digests.capacity() * DIGEST_LEN + t.checked().bits.capacity() * 8
            })
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

    /// Checks a stored block (CRC; its digest unless `digest_known`, i.e. these very bytes
    /// passed it before) and decompresses it into `out`, which has the block's raw length.
    fn decode_block(
        &self,
        block: u64,
        stored: &[u8],
        out: &mut [u8],
        digest_known: bool,
    ) -> std::result::Result<(), String> {
        if let Some(t) = self.table.as_ref().filter(|_| !digest_known) {
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
        self.decode_block(block, &stored, out, false)
            .map_err(|again| {
                corrupt(if again == first_failure {
                    again
                } else {
                    format!("{first_failure}, then {again}")
                })
            })
    }

    /// Reads up to `buf.len()` bytes at `offset` of the uncompressed data; returns the count,
    /// short only at the end of the file. Every returned byte passed its block's checks: the
    /// CRC on every read, the digest (when the file has the table) on every read unless the
    /// source's generation says these stored bytes already passed it (`docs/format/zfile.md`).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.len() || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len() - offset) as usize;
        let buf = &mut buf[..n];
        let plan = self.plan(offset, n as u64);
        let bs = self.info.block_size as u64;
        // Digests are only skipped behind a CRC, which every read still checks.
        let table = self.table.as_ref().filter(|_| self.info.block_crc);
        with_scratch(|scratch| {
            let (stored, tmp, known) = scratch;
            let mut block = plan.blocks.start;
            while block < plan.blocks.end {
                let (first, last, span) = self.batch(block, plan.blocks.end, MAX_BATCH);
                if stored.len() < span {
                    stored.resize(span, 0);
                }
                let before = table.and_then(|_| self.src.generation());
                read_exact(&self.src, first.offset, &mut stored[..span], "zfile block")?;
                // The same generation before and after the read: no fill changed these bytes
                // in between, so what was checked at it holds for them.
                let gen = before.filter(|&g| self.src.generation() == Some(g));
                match (table, gen) {
                    (Some(t), Some(g)) => t.known(g, block, last, known),
                    _ => known.clear(),
                }
                let mut reloaded = Vec::new();
                let mut digests_checked = false;
                for b in block..=last {
                    let i = b - block;
                    let digest_known = known
                        .get((i / 64) as usize)
                        .is_some_and(|w| w >> (i % 64) & 1 == 1);
                    digests_checked |= !digest_known;
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
                        if let Err(why) = self.decode_block(b, s, dst, digest_known) {
                            reloaded.push(b);
                            self.reload_block(b, dst, why)?;
                        }
                    } else {
                        if tmp.len() < raw_len {
                            tmp.resize(raw_len, 0);
                        }
                        let t = &mut tmp[..raw_len];
                        if let Err(why) = self.decode_block(b, s, t, digest_known) {
                            reloaded.push(b);
                            self.reload_block(b, t, why)?;
                        }
                        buf[dst_range].copy_from_slice(
                            &t[(want_start - raw_start) as usize..(want_end - raw_start) as usize],
                        );
                    }
                }
                // A reloaded block was read again at another generation: left unmarked. When
                // every block was known already, there is nothing to mark.
                if let (Some(t), Some(g), true) = (table, gen, digests_checked) {
                    t.mark(g, block, last, &reloaded);
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
                if let Err(reason) = self.decode_block(b, s, out, false) {
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

/// Stored bytes, one decoded block, and the bits of blocks whose digest is known good.
type Scratch = (Vec<u8>, Vec<u8>, Vec<u64>);

/// Scratch buffers shared by every reader in the process: a read takes one set and gives it
/// back, so their memory follows the reads in flight, not the threads that ever read (a
/// daemon has `fuse_threads` per device). The most recently returned set is reused first; at
/// most [`IDLE_SCRATCH`] idle sets are kept.
static SCRATCH: std::sync::Mutex<Vec<Scratch>> = std::sync::Mutex::new(Vec::new());
const IDLE_SCRATCH: usize = 16;

/// Runs `f` with a scratch set from the pool (a nested reader, e.g. a ZFile whose source is
/// another ZFile, takes another).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let pooled = SCRATCH.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let mut s = pooled.unwrap_or_default();
    let r = f(&mut s);
    // Do not keep an unusually large buffer around.
    if s.0.capacity() > 4 * MAX_BATCH as usize {
        s.0 = Vec::new();
    }
    let mut pool = SCRATCH.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < IDLE_SCRATCH {
        pool.push(s);
    }
    r
}

impl<S: ReadAt> ReadAt for ZFile<S> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        ZFile::read_at(self, offset, buf).map_err(Error::into_io)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len())
    }
}
