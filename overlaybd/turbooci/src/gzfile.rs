//! Random access into a gzip blob through its index: the uncompressed bytes as a [`ReadAt`].
//!
//! A read starts from the last checkpoint at or before it (prime the inflater with the bits of
//! the byte before, set the 32 KiB window, inflate forward), or from where an earlier read
//! stopped when that is closer: sequential reads (a file read front to back, a cache filling
//! its units) then inflate each byte once instead of once per read.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use zfile::source::read_full_at;
use zfile::ReadAt;

use crate::error::{Error, Result};
use crate::gzindex::GzIndex;
use crate::zlib::{Framing, Inflater};

/// Compressed bytes read from the blob at a time: the first read of a cursor is small (a small
/// file costs little of a lazily fetched blob), later ones double up to the largest.
const FIRST_CHUNK: usize = 16 * 1024;
const CHUNK: usize = 256 * 1024;
/// Inflate states kept for continuing reads.
const CURSORS: usize = 4;

/// An inflate stream stopped at uncompressed offset `de_pos`, with the compressed bytes it has
/// not consumed yet.
struct Cursor {
    inf: Inflater,
    de_pos: u64,
    /// Next compressed offset to read from the blob.
    en_pos: u64,
    input: Vec<u8>,
    in_pos: usize,
    /// Size of the next read from the blob.
    chunk: usize,
    /// [`GzFile::generation`] when the cursor started: one from before a discard may hold
    /// bytes of the dropped copy and is not kept.
    generation: u64,
}

/// The uncompressed view of a gzip blob.
pub struct GzFile {
    blob: Arc<dyn ReadAt>,
    index: GzIndex,
    size: u64,
    cursors: Mutex<Vec<Cursor>>,
    /// Bumped by every `discard_cached`.
    generation: AtomicU64,
}

impl std::fmt::Debug for GzFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzFile")
            .field("index", &self.index)
            .field("size", &self.size)
            .finish()
    }
}

/// Whether `head` starts like a gzip stream.
pub fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
}

impl GzFile {
    /// Opens `blob` with `index` (which is checked against the blob's size).
    pub fn open(blob: Arc<dyn ReadAt>, index: Box<dyn ReadAt>) -> Result<GzFile> {
        Self::with_index(blob, GzIndex::open(index, None)?)
    }

    /// Opens `blob` with an index opened already (its header names the blob's size, which a
    /// caller may use to open the blob without asking a registry).
    pub fn with_index(blob: Arc<dyn ReadAt>, index: GzIndex) -> Result<GzFile> {
        let blob_size = blob
            .size()
            .map_err(|e| Error::io("size of", "gzip blob", 0, e))?;
        if index.header.gzip_file_size != blob_size {
            return Err(Error::corrupt(
                "gzip index header",
                format!(
                    "made for a {}-byte gzip blob, the target has {blob_size} bytes",
                    index.header.gzip_file_size
                ),
            ));
        }
        let size = index.header.uncompress_file_size;
        Ok(GzFile {
            blob,
            index,
            size,
            cursors: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
        })
    }

    pub fn index(&self) -> &GzIndex {
        &self.index
    }

    /// The closest way to reach `offset`: a kept cursor or a fresh one at a checkpoint.
    fn start(&self, offset: u64) -> Result<Cursor> {
        let e = *self.index.checkpoint(offset);
        let generation = self.generation.load(Ordering::Acquire);
        {
            let mut cs = self.cursors.lock().unwrap();
            let best = cs
                .iter()
                .enumerate()
                .filter(|(_, c)| c.de_pos <= offset && c.de_pos >= e.de_pos)
                .max_by_key(|(_, c)| c.de_pos)
                .map(|(i, _)| i);
            if let Some(i) = best {
                return Ok(cs.swap_remove(i));
            }
        }
        let zerr = |z: crate::zlib::ZError| {
            Error::corrupt(
                "gzip index",
                format!("checkpoint at uncompressed {}: {z}", e.de_pos),
            )
        };
        let mut inf = Inflater::new(Framing::Raw).map_err(zerr)?;
        if e.bits > 0 {
            let mut b = [0u8; 1];
            if read_full_at(&*self.blob, e.en_pos - 1, &mut b)
                .map_err(|x| Error::io("read", "gzip blob", e.en_pos - 1, x))?
                != 1
            {
                return Err(self.short(e.en_pos - 1));
            }
            inf.prime(e.bits, b[0] >> (8 - e.bits)).map_err(zerr)?;
        }
        inf.set_dictionary(&self.index.window(&e)?).map_err(zerr)?;
        Ok(Cursor {
            inf,
            de_pos: e.de_pos,
            en_pos: e.en_pos,
            input: Vec::new(),
            in_pos: 0,
            chunk: FIRST_CHUNK,
            generation,
        })
    }

    fn short(&self, at: u64) -> Error {
        Error::corrupt(
            "gzip blob",
            format!("ends at compressed offset {at}, before the data its index describes"),
        )
    }

    /// Inflates from `c` until it reaches `offset + out.len()` (or the stream ends), copying
    /// what falls at or after `offset` into `out`. Returns the bytes copied.
    fn advance(&self, c: &mut Cursor, offset: u64, out: &mut [u8]) -> Result<usize> {
        let mut scratch = Vec::new();
        let mut copied = 0usize;
        while copied < out.len() {
            if c.in_pos == c.input.len() {
                c.input.resize(c.chunk, 0);
                c.chunk = (c.chunk * 2).min(CHUNK);
                let n = read_full_at(&*self.blob, c.en_pos, &mut c.input)
                    .map_err(|e| Error::io("read", "gzip blob", c.en_pos, e))?;
                c.input.truncate(n);
                c.in_pos = 0;
                if n == 0 {
                    return Err(self.short(c.en_pos));
                }
                c.en_pos += n as u64;
            }
            let skip = offset.saturating_sub(c.de_pos);
            let dst: &mut [u8] = if skip > 0 {
                scratch.resize((skip as usize).min(CHUNK * 2), 0);
                &mut scratch
            } else {
                &mut out[copied..]
            };
            let s = c
                .inf
                .inflate(&c.input[c.in_pos..], dst, false)
                .map_err(|z| {
                    Error::corrupt(
                        "gzip blob",
                        format!("inflating at uncompressed {}: {z}", c.de_pos),
                    )
                })?;
            c.in_pos += s.consumed;
            c.de_pos += s.produced as u64;
            if skip == 0 {
                copied += s.produced;
            }
            if s.end {
                break;
            }
            if s.consumed == 0 && s.produced == 0 && c.in_pos < c.input.len() {
                return Err(Error::corrupt(
                    "gzip blob",
                    format!("inflate made no progress at uncompressed {}", c.de_pos),
                ));
            }
        }
        Ok(copied)
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(self.size - offset) as usize;
        let mut c = self.start(offset)?;
        let n = self.advance(&mut c, offset, &mut buf[..len])?;
        if n < len {
            return Err(Error::corrupt(
                "gzip blob",
                format!(
                    "the deflate stream ends at uncompressed {}, before the {} bytes its index declares",
                    c.de_pos, self.size
                ),
            ));
        }
        let mut cs = self.cursors.lock().unwrap();
        if c.generation != self.generation.load(Ordering::Acquire) {
            return Ok(n);
        }
        if cs.len() >= CURSORS {
            // Drop the one furthest behind.
            let (i, _) = cs
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.de_pos)
                .expect("non-empty");
            cs.swap_remove(i);
        }
        cs.push(c);
        Ok(n)
    }
}

impl ReadAt for GzFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.read(offset, buf).map_err(Error::into_io)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    /// Forgets the kept inflate states and asks the blob to drop the compressed bytes that
    /// produce `[offset, offset + len)`: from the checkpoint before it to the one after it.
    fn discard_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        {
            let mut cs = self.cursors.lock().unwrap();
            self.generation.fetch_add(1, Ordering::AcqRel);
            cs.clear();
        }
        let from = self.index.checkpoint(offset).en_pos.saturating_sub(1);
        let end = offset.saturating_add(len);
        let to = self
            .index
            .entries
            .iter()
            .find(|e| e.de_pos >= end)
            .map_or(self.index.header.gzip_file_size, |e| e.en_pos);
        self.blob.discard_cached(from, to - from)
    }
}
