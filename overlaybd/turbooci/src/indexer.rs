//! Inflating a gzip layer as a stream while writing its index: a `Read` adapter over the
//! compressed bytes that yields the uncompressed tar (for whatever parses it) and records
//! checkpoints the way overlaybd's `create_gz_index` chooses them, so the layer is read once.
//! Rules: `docs/format/turbooci.md`, "Which checkpoints are written".

use std::io::{self, Read, Seek, Write};

use crate::error::{Error, Result};
use crate::gzindex::{DictCompression, IndexWriter, DEFAULT_SPAN, WINDOW};
use crate::zlib::{Framing, Inflater};

/// Settings of an index (overlaybd's `turboOCI-apply`: 1 MiB, zlib level 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexOptions {
    pub span: u32,
    pub dict: DictCompression,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            span: DEFAULT_SPAN,
            dict: DictCompression::Zlib(6),
        }
    }
}

/// What indexing a blob found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSummary {
    /// Compressed bytes (the blob's size).
    pub gzip_size: u64,
    /// Uncompressed bytes of the whole stream (every member).
    pub uncompressed_size: u64,
    /// Uncompressed bytes of the first member: what the index covers.
    pub first_member_size: u64,
    pub members: u32,
    pub checkpoints: u64,
    pub index_size: u64,
}

/// The last 32 KiB produced, as a ring; zeros before the stream's start.
struct History {
    ring: Box<[u8; WINDOW]>,
    pos: usize,
}

impl History {
    fn push(&mut self, mut data: &[u8]) {
        if data.len() >= WINDOW {
            data = &data[data.len() - WINDOW..];
        }
        let first = data.len().min(WINDOW - self.pos);
        self.ring[self.pos..self.pos + first].copy_from_slice(&data[..first]);
        self.ring[..data.len() - first].copy_from_slice(&data[first..]);
        self.pos = (self.pos + data.len()) % WINDOW;
    }

    fn snapshot(&self) -> Box<[u8; WINDOW]> {
        let mut w = Box::new([0u8; WINDOW]);
        w[..WINDOW - self.pos].copy_from_slice(&self.ring[self.pos..]);
        w[WINDOW - self.pos..].copy_from_slice(&self.ring[..self.pos]);
        w
    }
}

struct Candidate {
    de_pos: u64,
    en_pos: u64,
    bits: u8,
    window: Box<[u8; WINDOW]>,
}

/// overlaybd's `IndexFilterRecorder`: roughly one checkpoint per span, each the last block
/// boundary at or before a multiple of the span.
struct Filter<W: Write + Seek> {
    writer: IndexWriter<W>,
    next: u64,
    pending: Option<Candidate>,
}

impl<W: Write + Seek> Filter<W> {
    fn emit(&mut self, c: &Candidate) -> Result<()> {
        self.writer.add(c.de_pos, c.en_pos, c.bits, &c.window)
    }

    fn offer(&mut self, c: Candidate) -> Result<()> {
        let span = self.writer.span() as u64;
        if c.de_pos < self.next {
            self.pending = Some(c);
            return Ok(());
        }
        if c.de_pos > self.next {
            if let Some(p) = self.pending.take() {
                self.emit(&p)?;
            }
            while self.next < c.de_pos {
                self.next += span;
            }
            if c.de_pos < self.next {
                self.pending = Some(c);
                return Ok(());
            }
        }
        self.emit(&c)?;
        self.pending = None;
        self.next += span;
        Ok(())
    }
}

/// Inflates a gzip blob read from `R` (every member) and writes the index of its first member
/// to `W`.
pub struct Indexing<R: Read, W: Write + Seek> {
    src: R,
    inf: Inflater,
    input: Box<[u8]>,
    in_pos: usize,
    in_len: usize,
    /// Compressed bytes consumed.
    total_in: u64,
    total_out: u64,
    first_member_size: Option<u64>,
    /// Between members: the last one ended and no byte of the next was read.
    at_member_end: bool,
    members: u32,
    history: History,
    filter: Filter<W>,
    done: bool,
}

impl<R: Read, W: Write + Seek> std::fmt::Debug for Indexing<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexing")
            .field("total_in", &self.total_in)
            .field("total_out", &self.total_out)
            .field("members", &self.members)
            .finish()
    }
}

fn zerr(e: crate::zlib::ZError, at: u64) -> io::Error {
    Error::corrupt("gzip layer", format!("at compressed offset {at}: {e}")).into_io()
}

impl<R: Read, W: Write + Seek> Indexing<R, W> {
    pub fn new(src: R, index: W, opts: IndexOptions) -> Result<Self> {
        Ok(Indexing {
            src,
            inf: Inflater::new(Framing::Auto)
                .map_err(|e| Error::corrupt("inflater", e.to_string()))?,
            input: vec![0u8; 64 * 1024].into_boxed_slice(),
            in_pos: 0,
            in_len: 0,
            total_in: 0,
            total_out: 0,
            first_member_size: None,
            at_member_end: false,
            members: 0,
            history: History {
                ring: Box::new([0u8; WINDOW]),
                pos: 0,
            },
            filter: Filter {
                writer: IndexWriter::new(index, opts.span, opts.dict)?,
                next: 0,
                pending: None,
            },
            done: false,
        })
    }

    fn refill(&mut self) -> io::Result<bool> {
        loop {
            match self.src.read(&mut self.input) {
                Ok(n) => {
                    self.in_pos = 0;
                    self.in_len = n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the rest of the stream (discarding it), then writes the index.
    pub fn finish(mut self) -> Result<(W, IndexSummary)> {
        let mut sink = vec![0u8; 256 * 1024];
        while self
            .read(&mut sink)
            .map_err(|e| Error::io("inflate", "gzip layer", self.total_in, e))?
            > 0
        {}
        let first = self.first_member_size.unwrap_or(self.total_out);
        let checkpoints = self.filter.writer_entries();
        let (w, index_size) = self.filter.writer.finish(self.total_in, first)?;
        Ok((
            w,
            IndexSummary {
                gzip_size: self.total_in,
                uncompressed_size: self.total_out,
                first_member_size: first,
                members: self.members,
                checkpoints,
                index_size,
            },
        ))
    }

    /// One inflate call; returns the bytes produced into `buf`.
    fn step(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let indexing = self.first_member_size.is_none();
        let s = self
            .inf
            .inflate(&self.input[self.in_pos..self.in_len], buf, indexing)
            .map_err(|e| zerr(e, self.total_in))?;
        self.in_pos += s.consumed;
        self.total_in += s.consumed as u64;
        self.total_out += s.produced as u64;
        if s.consumed > 0 {
            self.at_member_end = false;
        }
        if indexing {
            self.history.push(&buf[..s.produced]);
            let dt = self.inf.data_type();
            if dt & 128 != 0 && dt & 64 == 0 {
                let c = Candidate {
                    de_pos: self.total_out,
                    en_pos: self.total_in,
                    bits: (dt & 7) as u8,
                    window: self.history.snapshot(),
                };
                self.filter.offer(c).map_err(Error::into_io)?;
            }
        }
        if s.end {
            self.members += 1;
            self.first_member_size.get_or_insert(self.total_out);
            self.at_member_end = true;
            self.inf.reset().map_err(|e| zerr(e, self.total_in))?;
        } else if s.consumed == 0 && s.produced == 0 && self.in_pos < self.in_len && !buf.is_empty()
        {
            return Err(zerr(
                crate::zlib::ZError {
                    code: libz_sys::Z_BUF_ERROR,
                    msg: "inflate made no progress".into(),
                },
                self.total_in,
            ));
        }
        Ok(s.produced)
    }
}

impl<W: Write + Seek> Filter<W> {
    fn writer_entries(&self) -> u64 {
        self.writer.entries() as u64
    }
}

impl<R: Read, W: Write + Seek> Read for Indexing<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.done {
            if self.in_pos == self.in_len && !self.refill()? {
                if self.at_member_end {
                    self.done = true;
                    break;
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    Error::corrupt(
                        "gzip layer",
                        format!(
                            "the stream ends after {} compressed bytes, inside a gzip member",
                            self.total_in
                        ),
                    ),
                ));
            }
            let n = self.step(buf)?;
            if n > 0 {
                return Ok(n);
            }
        }
        Ok(0)
    }
}
