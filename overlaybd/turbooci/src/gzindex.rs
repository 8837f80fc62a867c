//! The gzip index file (`gzip.meta`, overlaybd's `ddgzidx` format): a 333-byte header, one
//! 32 KiB window per checkpoint (stored raw or zlib-compressed), and a table of 29-byte
//! checkpoints. Layout and rules: `docs/format/turbooci.md`, "The gzip index".

use std::io::{Seek, SeekFrom, Write};

use zfile::source::read_full_at;
use zfile::ReadAt;

use crate::error::{Error, Result};
use crate::zlib;

pub const MAGIC: &[u8; 8] = b"ddgzidx\0";
pub const HEADER_LEN: usize = 333;
pub const ENTRY_LEN: usize = 29;
/// The history a checkpoint carries: deflate's whole window.
pub const WINDOW: usize = 32768;
/// What overlaybd's `turboOCI-apply` writes, and our default.
pub const DEFAULT_SPAN: u32 = 1 << 20;
/// overlaybd's writer refuses smaller spans.
pub const MIN_SPAN: u32 = 65536;
/// A zlib-compressed window is never longer than this (zlib's `compressBound(32768)`).
const MAX_WINDOW_LEN: u32 = 32768 + (32768 >> 12) + (32768 >> 14) + 13;
const CRC_AT: usize = 329;

/// How the windows and the checkpoint table are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DictCompression {
    None,
    /// zlib format at this level (overlaybd: 6).
    Zlib(i8),
}

/// The header's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub minor_version: u8,
    pub dict: DictCompression,
    pub span: u32,
    pub index_num: u64,
    pub gzip_file_size: u64,
    pub index_file_size: u64,
    /// Uncompressed bytes of the (first) gzip member: the size random access serves.
    pub uncompress_file_size: u64,
    pub index_start: u64,
    pub index_area_len: u64,
}

/// One checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Uncompressed offset.
    pub de_pos: u64,
    /// Compressed offset where inflation resumes (gzip header included).
    pub en_pos: u64,
    /// Offset of this checkpoint's window in the index file.
    pub win_pos: u64,
    /// Unused bits of byte `en_pos - 1` that belong to the next deflate block (0..=7).
    pub bits: u8,
    pub win_len: u32,
}

impl Entry {
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..8].copy_from_slice(&(self.de_pos as i64).to_le_bytes());
        b[8..16].copy_from_slice(&(self.en_pos as i64).to_le_bytes());
        b[16..24].copy_from_slice(&(self.win_pos as i64).to_le_bytes());
        b[24] = self.bits;
        b[25..29].copy_from_slice(&self.win_len.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Entry> {
        let i64_at = |at: usize| i64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let (de, en, win) = (i64_at(0), i64_at(8), i64_at(16));
        if de < 0 || en < 0 || win < 0 {
            return Err(Error::corrupt("gzip index entry", "negative offset"));
        }
        Ok(Entry {
            de_pos: de as u64,
            en_pos: en as u64,
            win_pos: win as u64,
            bits: b[24],
            win_len: u32::from_le_bytes(b[25..29].try_into().unwrap()),
        })
    }
}

impl Header {
    /// The 333 header bytes, CRC included.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8] = 1;
        b[9] = self.minor_version;
        let (algo, level) = match self.dict {
            DictCompression::None => (0u8, 0i8),
            DictCompression::Zlib(l) => (1, l),
        };
        b[10] = algo;
        b[11] = level as u8;
        b[13..17].copy_from_slice(&(self.span as i32).to_le_bytes());
        b[17..21].copy_from_slice(&(WINDOW as i32).to_le_bytes());
        b[21..25].copy_from_slice(&(ENTRY_LEN as i32).to_le_bytes());
        for (at, v) in [
            (25, self.index_num),
            (33, self.gzip_file_size),
            (41, self.index_file_size),
            (49, self.uncompress_file_size),
            (313, self.index_start),
            (321, self.index_area_len),
        ] {
            b[at..at + 8].copy_from_slice(&(v as i64).to_le_bytes());
        }
        let crc = zfile::crc::crc32c_raw(0, &b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header read from a file of `file_size` bytes.
    pub fn decode(b: &[u8], file_size: u64) -> Result<Header> {
        let bad = |reason: String| Error::corrupt("gzip index header", reason);
        if b.len() < HEADER_LEN || file_size < HEADER_LEN as u64 {
            return Err(bad(format!(
                "{file_size} bytes: shorter than the {HEADER_LEN}-byte header"
            )));
        }
        if b[0..7] != MAGIC[..7] {
            return Err(Error::NotGzipIndex);
        }
        let crc = u32::from_le_bytes(b[CRC_AT..CRC_AT + 4].try_into().unwrap());
        let want = zfile::crc::crc32c_raw(0, &b[..CRC_AT]);
        if crc != want {
            return Err(bad(format!("CRC {crc:#010x}, computed {want:#010x}")));
        }
        if b[8] != 1 {
            return Err(bad(format!("major version {}: only 1 is known", b[8])));
        }
        let dict = match (b[10], b[11] as i8) {
            (0, _) => DictCompression::None,
            (1, l) if (-1..=9).contains(&l) => DictCompression::Zlib(l),
            (a, l) => return Err(bad(format!("window compression {a} (level {l}) unknown"))),
        };
        let i32_at = |at: usize| i32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize, name: &str| {
            let v = i64::from_le_bytes(b[at..at + 8].try_into().unwrap());
            u64::try_from(v).map_err(|_| bad(format!("{name} is negative ({v})")))
        };
        let (span, window, entry) = (i32_at(13), i32_at(17), i32_at(21));
        if window != WINDOW as i32 || entry != ENTRY_LEN as i32 {
            return Err(bad(format!(
                "window {window} and entry size {entry}: expected {WINDOW} and {ENTRY_LEN}"
            )));
        }
        if span <= 0 {
            return Err(bad(format!("span {span}")));
        }
        let h = Header {
            minor_version: b[9],
            dict,
            span: span as u32,
            index_num: u64_at(25, "index_num")?,
            gzip_file_size: u64_at(33, "gzip_file_size")?,
            index_file_size: u64_at(41, "index_file_size")?,
            uncompress_file_size: u64_at(49, "uncompress_file_size")?,
            index_start: u64_at(313, "index_start")?,
            index_area_len: u64_at(321, "index_area_len")?,
        };
        if h.index_file_size != file_size {
            return Err(bad(format!(
                "says the index is {} bytes, the file has {file_size}",
                h.index_file_size
            )));
        }
        if h.index_start < HEADER_LEN as u64
            || h.index_start.checked_add(h.index_area_len) != Some(file_size)
        {
            return Err(bad(format!(
                "checkpoint table [{}, +{}) does not end the {file_size}-byte file",
                h.index_start, h.index_area_len
            )));
        }
        // Every checkpoint has a window of at least a few bytes: a count beyond that is a lie
        // that would only cost memory.
        if h.index_num == 0 || h.index_num > file_size / 8 {
            return Err(bad(format!(
                "{} checkpoints in a {file_size}-byte file",
                h.index_num
            )));
        }
        Ok(h)
    }
}

/// An opened gzip index: the header and checkpoints in memory, the windows read on demand.
pub struct GzIndex {
    pub header: Header,
    pub entries: Vec<Entry>,
    src: Box<dyn ReadAt>,
}

impl std::fmt::Debug for GzIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzIndex")
            .field("header", &self.header)
            .field("entries", &self.entries.len())
            .finish()
    }
}

fn read_exact(src: &dyn ReadAt, at: u64, len: usize, what: &'static str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = read_full_at(src, at, &mut buf).map_err(|e| Error::io("read", what, at, e))?;
    if n < len {
        return Err(Error::corrupt(
            what,
            format!("{len} bytes at {at} run past the end ({n} read)"),
        ));
    }
    Ok(buf)
}

impl GzIndex {
    /// Opens and checks an index for a gzip blob of `gzip_size` bytes (`None`: not checked,
    /// e.g. to print an index on its own).
    pub fn open(src: Box<dyn ReadAt>, gzip_size: Option<u64>) -> Result<GzIndex> {
        let size = src
            .size()
            .map_err(|e| Error::io("size of", "gzip index", 0, e))?;
        let head = read_exact(&*src, 0, HEADER_LEN.min(size as usize), "gzip index header")?;
        let header = Header::decode(&head, size)?;
        if let Some(g) = gzip_size {
            if header.gzip_file_size != g {
                return Err(Error::corrupt(
                    "gzip index header",
                    format!(
                        "made for a {}-byte gzip blob, the target has {g} bytes",
                        header.gzip_file_size
                    ),
                ));
            }
        }
        let area = read_exact(
            &*src,
            header.index_start,
            header.index_area_len as usize,
            "gzip index table",
        )?;
        let table_len = header.index_num as usize * ENTRY_LEN;
        let table = match header.dict {
            DictCompression::None if area.len() == table_len => area,
            DictCompression::None => {
                return Err(Error::corrupt(
                    "gzip index table",
                    format!(
                        "{} bytes for {} checkpoints of {ENTRY_LEN}",
                        area.len(),
                        header.index_num
                    ),
                ))
            }
            DictCompression::Zlib(_) => zlib::uncompress(&area, table_len)
                .map_err(|e| Error::corrupt("gzip index table", e.to_string()))?,
        };
        let entries = table
            .chunks_exact(ENTRY_LEN)
            .map(Entry::decode)
            .collect::<Result<Vec<_>>>()?;
        check_entries(&header, &entries)?;
        Ok(GzIndex {
            header,
            entries,
            src,
        })
    }

    /// The checkpoint to start from for uncompressed offset `offset`: the last one at or
    /// before it.
    pub fn checkpoint(&self, offset: u64) -> &Entry {
        let i = self.entries.partition_point(|e| e.de_pos <= offset);
        // `check_entries` made sure the first checkpoint is at 0.
        &self.entries[i.saturating_sub(1)]
    }

    /// The 32 KiB of history before checkpoint `e`.
    pub fn window(&self, e: &Entry) -> Result<Vec<u8>> {
        let stored = read_exact(
            &*self.src,
            e.win_pos,
            e.win_len as usize,
            "gzip index window",
        )?;
        match self.header.dict {
            DictCompression::None => Ok(stored),
            DictCompression::Zlib(_) => zlib::uncompress(&stored, WINDOW).map_err(|z| {
                Error::corrupt(
                    "gzip index window",
                    format!("checkpoint at uncompressed {}: {z}", e.de_pos),
                )
            }),
        }
    }
}

fn check_entries(h: &Header, entries: &[Entry]) -> Result<()> {
    let bad = |i: usize, reason: String| Error::corrupt(format!("gzip index entry {i}"), reason);
    if entries.first().map(|e| e.de_pos) != Some(0) {
        return Err(bad(0, "the first checkpoint is not at offset 0".into()));
    }
    for (i, e) in entries.iter().enumerate() {
        if e.bits > 7 {
            return Err(bad(i, format!("{} bits", e.bits)));
        }
        let raw = h.dict == DictCompression::None;
        if (raw && e.win_len as usize != WINDOW) || e.win_len == 0 || e.win_len > MAX_WINDOW_LEN {
            return Err(bad(i, format!("window of {} bytes", e.win_len)));
        }
        if e.win_pos < HEADER_LEN as u64 || e.win_pos + e.win_len as u64 > h.index_start {
            return Err(bad(
                i,
                format!("window at {} is outside the window area", e.win_pos),
            ));
        }
        if e.en_pos > h.gzip_file_size
            || e.de_pos > h.uncompress_file_size
            || (e.bits > 0 && e.en_pos == 0)
        {
            return Err(bad(
                i,
                format!("checkpoint {}/{} lies outside the blob", e.de_pos, e.en_pos),
            ));
        }
        if i > 0 {
            let p = &entries[i - 1];
            // Two checkpoints may share an uncompressed offset (an empty block, e.g. a sync
            // flush, then a block longer than the span: overlaybd's filter emits both); the
            // last of them is used.
            if e.de_pos < p.de_pos || e.en_pos <= p.en_pos {
                return Err(bad(i, "checkpoints are not in increasing order".into()));
            }
        }
    }
    Ok(())
}

/// Writes an index: windows as they come, then the table and the header.
#[derive(Debug)]
pub struct IndexWriter<W: Write + Seek> {
    out: W,
    dict: DictCompression,
    span: u32,
    entries: Vec<Entry>,
    pos: u64,
}

impl<W: Write + Seek> IndexWriter<W> {
    pub fn new(mut out: W, span: u32, dict: DictCompression) -> Result<Self> {
        if span < MIN_SPAN || span > i32::MAX as u32 {
            return Err(Error::InvalidArgument(format!(
                "span {span}: must be at least {MIN_SPAN} (overlaybd refuses smaller ones)"
            )));
        }
        out.seek(SeekFrom::Start(HEADER_LEN as u64))
            .map_err(|e| Error::io("seek", "gzip index", 0, e))?;
        Ok(IndexWriter {
            out,
            dict,
            span,
            entries: Vec::new(),
            pos: HEADER_LEN as u64,
        })
    }

    pub fn span(&self) -> u32 {
        self.span
    }

    /// Checkpoints added so far.
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    fn put(&mut self, bytes: &[u8], what: &'static str) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("write", what, self.pos, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn stored(&self, raw: &[u8]) -> Result<Vec<u8>> {
        match self.dict {
            DictCompression::None => Ok(raw.to_vec()),
            DictCompression::Zlib(level) => zlib::compress(raw, level as i32)
                .map_err(|e| Error::corrupt("gzip index window", e.to_string())),
        }
    }

    /// Adds a checkpoint with its 32 KiB window.
    pub fn add(&mut self, de_pos: u64, en_pos: u64, bits: u8, window: &[u8; WINDOW]) -> Result<()> {
        let stored = self.stored(window)?;
        self.entries.push(Entry {
            de_pos,
            en_pos,
            win_pos: self.pos,
            bits,
            win_len: stored.len() as u32,
        });
        self.put(&stored, "gzip index window")
    }

    /// Writes the table and the header; returns the output and the index's size.
    pub fn finish(mut self, gzip_file_size: u64, uncompress_file_size: u64) -> Result<(W, u64)> {
        let table: Vec<u8> = self.entries.iter().flat_map(|e| e.encode()).collect();
        let area = self.stored(&table)?;
        let index_start = self.pos;
        self.put(&area, "gzip index table")?;
        let header = Header {
            minor_version: 0,
            dict: self.dict,
            span: self.span,
            index_num: self.entries.len() as u64,
            gzip_file_size,
            index_file_size: self.pos,
            uncompress_file_size,
            index_start,
            index_area_len: area.len() as u64,
        };
        self.out
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.out.write_all(&header.encode()))
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::io("write", "gzip index header", 0, e))?;
        Ok((self.out, self.pos))
    }
}
