//! Writing a ZFile as a stream: header, blocks, index, optional integrity table, trailer, and
//! optionally the header rewritten with the index information.
//!
//! With `threads > 1`, chunks of blocks are compressed by worker threads and written in
//! order; the bytes are identical to the single-threaded output because every block is
//! compressed on its own with the same codec settings.

use std::collections::VecDeque;
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use crate::codec::{Compressor, ZSTD_DEFAULT_LEVEL};
use crate::crc::{block_crc, crc32c_raw};
use crate::error::{Error, Result};
use crate::header::{flags, Algorithm, HeaderTrailer, HT_SLOT, MAX_BLOCK_SIZE, MAX_INDEX_ENTRIES};
use crate::integrity::{self, Layout, Root, DIGEST_LEN};

/// Most compression threads.
pub const MAX_THREADS: usize = 256;
/// Raw bytes handed to a worker at once.
const CHUNK_BYTES: usize = 512 * 1024;
/// Largest block size whose blocks overlaybd's reader can always read: its read buffer is
/// 64 KiB, and a 64 KiB block that does not compress grows past it.
pub const OVERLAYBD_SAFE_MAX_BLOCK_SIZE: u32 = 32 * 1024;

/// Settings of a new ZFile.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    pub algorithm: Algorithm,
    /// zstd level (1..=22, or zstd's negative fast levels); `None` = 3. Not valid for lz4.
    pub level: Option<i32>,
    /// Raw bytes per block: a power of two from 4 KiB to 64 KiB.
    pub block_size: u32,
    /// Append a CRC to every block (overlaybd's tools always do).
    pub block_crc: bool,
    /// Write the BLAKE3 integrity table.
    pub integrity: bool,
    /// Compression threads; 1 compresses inline.
    pub threads: usize,
    /// Allow block sizes whose output overlaybd's reader may reject.
    pub allow_overlaybd_unreadable: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            algorithm: Algorithm::Lz4,
            level: None,
            block_size: 4096,
            block_crc: true,
            integrity: false,
            threads: 1,
            allow_overlaybd_unreadable: false,
        }
    }
}

impl WriterOptions {
    /// Checks the settings; the error says what is wrong and why.
    pub fn validate(&self) -> Result<()> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(4096..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(Error::Unsupported(format!(
                "block size {bs}: must be a power of two from 4 KiB to 64 KiB"
            )));
        }
        if bs > OVERLAYBD_SAFE_MAX_BLOCK_SIZE && !self.allow_overlaybd_unreadable {
            return Err(Error::Unsupported(format!(
                "block size {} KiB: a block that does not compress grows past 64 KiB, and overlaybd's \
                 reader cannot read such a block (its read buffer is 64 KiB); use at most {} KiB, or \
                 allow output that only this reader can read",
                bs / 1024,
                OVERLAYBD_SAFE_MAX_BLOCK_SIZE / 1024
            )));
        }
        match (self.algorithm, self.level) {
            (Algorithm::Lz4, Some(l)) => {
                return Err(Error::Unsupported(format!(
                    "level {l}: lz4 has no compression levels"
                )))
            }
            (Algorithm::Zstd, Some(l)) => {
                let max = *zstd::compression_level_range().end();
                if !(1..=max).contains(&l) {
                    return Err(Error::Unsupported(format!(
                        "zstd level {l}: must be from 1 to {max}"
                    )));
                }
            }
            _ => {}
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return Err(Error::Unsupported(format!(
                "threads must be from 1 to {MAX_THREADS}"
            )));
        }
        Ok(())
    }

    fn codec_level(&self) -> i32 {
        self.level.unwrap_or(ZSTD_DEFAULT_LEVEL)
    }

    /// The `level` byte: 0 for the codec's default, else the zstd level (overlaybd ignores it).
    fn level_byte(&self) -> u8 {
        match self.level {
            Some(l) if l != ZSTD_DEFAULT_LEVEL => u8::try_from(l).unwrap_or(0),
            _ => 0,
        }
    }
}

/// What a finished writer produced.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Uncompressed bytes written.
    pub raw_len: u64,
    /// Bytes of the ZFile.
    pub file_len: u64,
    pub blocks: u64,
    pub index_offset: u64,
    /// Root of the integrity table, when one was written.
    pub integrity_root: Option<Root>,
}

/// Compressed output of one chunk of blocks.
struct Chunk {
    data: Vec<u8>,
    lens: Vec<u32>,
    digests: Vec<[u8; DIGEST_LEN]>,
}

/// Compresses `raw` block by block.
fn compress_chunk(
    c: &mut Compressor,
    raw: &[u8],
    bs: usize,
    crc: bool,
    digests: bool,
) -> io::Result<Chunk> {
    let mut out = Chunk {
        data: Vec::with_capacity(raw.len() / 2),
        lens: Vec::with_capacity(raw.len().div_ceil(bs)),
        digests: Vec::new(),
    };
    for block in raw.chunks(bs) {
        let start = out.data.len();
        c.compress_into(block, &mut out.data)?;
        if crc {
            let sum = block_crc(&out.data[start..]);
            out.data.extend_from_slice(&sum.to_le_bytes());
        }
        let stored = &out.data[start..];
        out.lens.push(stored.len() as u32);
        if digests {
            out.digests.push(integrity::block_digest(stored));
        }
    }
    Ok(out)
}

type Job = (Vec<u8>, mpsc::SyncSender<io::Result<Chunk>>);

struct Pool {
    jobs: Option<mpsc::SyncSender<Job>>,
    workers: Vec<thread::JoinHandle<()>>,
    pending: VecDeque<mpsc::Receiver<io::Result<Chunk>>>,
    depth: usize,
}

impl Pool {
    fn new(opts: &WriterOptions) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Job>(opts.threads);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for i in 0..opts.threads {
            let rx = Arc::clone(&rx);
            let mut c = Compressor::new(opts.algorithm, opts.codec_level())?;
            let (bs, crc, dig) = (opts.block_size as usize, opts.block_crc, opts.integrity);
            let h = thread::Builder::new()
                .name(format!("zfile-compress-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok((raw, reply)) = job else { return };
                    let _ = reply.send(compress_chunk(&mut c, &raw, bs, crc, dig));
                })?;
            workers.push(h);
        }
        Ok(Pool {
            jobs: Some(tx),
            workers,
            pending: VecDeque::new(),
            depth: 2 * opts.threads,
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

enum Engine {
    Inline(Compressor),
    Pool(Pool),
}

/// A streaming ZFile writer. Write the raw data, then call [`ZFileWriter::finish`] (trailer
/// only, like overlaybd-zfile) or [`ZFileWriter::finish_with_header`] (header rewritten too,
/// like `overlaybd-commit -z`; the sink must seek).
pub struct ZFileWriter<W: Write> {
    out: W,
    opts: WriterOptions,
    engine: Engine,
    pending: Vec<u8>,
    pos: u64,
    raw_len: u64,
    lens: Vec<u32>,
    digests: Vec<[u8; DIGEST_LEN]>,
    /// Set after a failed write: the output is incomplete and further writes are refused.
    broken: bool,
}

impl<W: Write> std::fmt::Debug for ZFileWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZFileWriter")
            .field("opts", &self.opts)
            .field("raw_len", &self.raw_len)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl<W: Write> ZFileWriter<W> {
    /// Checks the options and writes the initial header.
    pub fn new(mut out: W, opts: WriterOptions) -> Result<Self> {
        opts.validate()?;
        let head = Self::slot(&opts, flags::HEADER | flags::DATA_FILE | flags::CALC_DIGEST);
        out.write_all(&head.encode())
            .map_err(|e| Error::io("write header", 0, e))?;
        let engine = if opts.threads > 1 {
            Engine::Pool(
                Pool::new(&opts).map_err(|e| Error::io("start compression threads", 0, e))?,
            )
        } else {
            Engine::Inline(
                Compressor::new(opts.algorithm, opts.codec_level())
                    .map_err(|e| Error::io("init codec", 0, e))?,
            )
        };
        Ok(ZFileWriter {
            out,
            engine,
            pending: Vec::with_capacity(CHUNK_BYTES),
            pos: HT_SLOT as u64,
            raw_len: 0,
            lens: Vec::new(),
            digests: Vec::new(),
            broken: false,
            opts,
        })
    }

    fn slot(opts: &WriterOptions, f: u64) -> HeaderTrailer {
        HeaderTrailer::new(
            f,
            opts.algorithm,
            opts.level_byte(),
            opts.block_size,
            opts.block_crc,
        )
    }

    fn emit(&mut self, chunk: Chunk) -> io::Result<()> {
        self.out.write_all(&chunk.data)?;
        self.pos += chunk.data.len() as u64;
        self.lens.extend_from_slice(&chunk.lens);
        self.digests.extend_from_slice(&chunk.digests);
        Ok(())
    }

    /// Hands the pending raw bytes (whole blocks, or the final partial one) to the engine.
    fn submit(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let raw = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK_BYTES));
        let bs = self.opts.block_size as usize;
        let (crc, dig) = (self.opts.block_crc, self.opts.integrity);
        match &mut self.engine {
            Engine::Inline(c) => {
                let chunk = compress_chunk(c, &raw, bs, crc, dig)?;
                self.emit(chunk)
            }
            Engine::Pool(pool) => {
                let (tx, rx) = mpsc::sync_channel(1);
                let jobs = pool.jobs.as_ref().expect("pool is open until drop");
                jobs.send((raw, tx))
                    .map_err(|_| io::Error::other("compression thread exited"))?;
                pool.pending.push_back(rx);
                if pool.pending.len() >= pool.depth {
                    self.collect_one()?;
                }
                Ok(())
            }
        }
    }

    /// Writes the oldest finished chunk (waiting for it).
    fn collect_one(&mut self) -> io::Result<bool> {
        let Engine::Pool(pool) = &mut self.engine else {
            return Ok(false);
        };
        let Some(rx) = pool.pending.pop_front() else {
            return Ok(false);
        };
        let chunk = rx
            .recv()
            .map_err(|_| io::Error::other("compression thread exited"))??;
        self.emit(chunk)?;
        Ok(true)
    }

    fn check_open(&self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "zfile writer failed earlier; its output is incomplete",
            ));
        }
        Ok(())
    }

    /// Writes everything but the trailer: last block, index, integrity table.
    fn write_tail(&mut self) -> Result<(HeaderTrailer, Summary)> {
        self.check_open()
            .map_err(|e| Error::io("write", self.pos, e))?;
        let r = (|| {
            self.submit()?;
            while self.collect_one()? {}
            Ok::<_, io::Error>(())
        })();
        r.map_err(|e| {
            self.broken = true;
            Error::io("write block", self.pos, e)
        })?;
        let index: Vec<u8> = self.lens.iter().flat_map(|l| l.to_le_bytes()).collect();
        let index_offset = self.pos;
        self.out
            .write_all(&index)
            .map_err(|e| Error::io("write index", index_offset, e))?;
        self.pos += index.len() as u64;
        let blocks = self.lens.len() as u64;
        let mut root = None;
        if self.opts.integrity {
            let layout = Layout {
                block_count: blocks,
                original_file_size: self.raw_len,
                index_offset,
                data_offset: HT_SLOT as u64,
                block_size: self.opts.block_size,
                algo: self.opts.algorithm.id(),
                verify: self.opts.block_crc,
                level: self.opts.level_byte(),
            };
            let (bytes, r) = integrity::encode(&layout, &index, &self.digests);
            self.out
                .write_all(&bytes)
                .map_err(|e| Error::io("write integrity table", self.pos, e))?;
            self.pos += bytes.len() as u64;
            root = Some(r);
        }
        let mut ht = Self::slot(&self.opts, 0);
        ht.index_offset = index_offset;
        ht.index_size = blocks;
        ht.original_file_size = self.raw_len;
        ht.index_crc = crc32c_raw(0, &index);
        let summary = Summary {
            raw_len: self.raw_len,
            file_len: self.pos + HT_SLOT as u64,
            blocks,
            index_offset,
            integrity_root: root,
        };
        Ok((ht, summary))
    }

    /// Finishes with a trailer (index information found through the trailer), like
    /// overlaybd-zfile and uploads that compress as they stream.
    pub fn finish(self) -> Result<(W, Summary)> {
        let (out, summary, _) = self.finish_trailer()?;
        Ok((out, summary))
    }

    fn finish_trailer(mut self) -> Result<(W, Summary, HeaderTrailer)> {
        let (mut ht, summary) = self.write_tail()?;
        ht.flags = flags::DATA_FILE | flags::SEALED | flags::CALC_DIGEST;
        self.out
            .write_all(&ht.encode())
            .map_err(|e| Error::io("write trailer", self.pos, e))?;
        self.out
            .flush()
            .map_err(|e| Error::io("flush", self.pos, e))?;
        Ok((self.out, summary, ht))
    }
}

impl<W: Write + Seek> ZFileWriter<W> {
    /// Finishes with a trailer and also rewrites the header with the index information
    /// (`HEADER_OVERWRITE`, as `overlaybd-commit -z` does), so that a reader needs neither the
    /// trailer nor the blob size. The sink is left positioned at the end of the file.
    pub fn finish_with_header(self) -> Result<(W, Summary)> {
        let (mut out, summary, mut ht) = self.finish_trailer()?;
        let end = out.stream_position().map_err(|e| Error::io("seek", 0, e))?;
        let start = end - summary.file_len;
        ht.flags = flags::HEADER | flags::DATA_FILE | flags::HEADER_OVERWRITE | flags::CALC_DIGEST;
        out.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io("seek", start, e))?;
        out.write_all(&ht.encode())
            .map_err(|e| Error::io("rewrite header", start, e))?;
        out.seek(SeekFrom::Start(end))
            .map_err(|e| Error::io("seek", end, e))?;
        out.flush().map_err(|e| Error::io("flush", end, e))?;
        Ok((out, summary))
    }
}

impl<W: Write> Write for ZFileWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        self.check_open()?;
        let total = buf.len();
        while !buf.is_empty() {
            let room = CHUNK_BYTES - self.pending.len();
            let n = room.min(buf.len());
            self.pending.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            self.raw_len += n as u64;
            if self.raw_len.div_ceil(self.opts.block_size as u64) > MAX_INDEX_ENTRIES {
                self.broken = true;
                return Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!("more than {MAX_INDEX_ENTRIES} blocks: no reader can open the file"),
                ));
            }
            if self.pending.len() == CHUNK_BYTES {
                if let Err(e) = self.submit() {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
        Ok(total)
    }

    /// Compressed output is written as chunks complete; `flush` passes through to the sink
    /// (it cannot end a block early, which would change the file's layout).
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
