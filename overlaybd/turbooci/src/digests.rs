//! Ours, beyond overlaybd: BLAKE3 digests of a TurboOCI layer's uncompressed tar in fixed
//! chunks (and of its gzip index), in a file of the meta blob (`tar.blake3`) whose own BLAKE3
//! is an annotation of the meta layer. [`Verified`] checks every chunk it takes from the
//! original layer against them, has its source drop what it cached and fetch once more on a
//! mismatch, and fails the read with a clear error after that. Layout:
//! `docs/format/turbooci.md`, "Verification".

use std::io;

use zfile::source::read_full_at;
use zfile::ReadAt;

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"OBDTB3\0\x01";
/// Bytes per digest chunk: a divisor of the blob cache's unit, so a unit fill checks whole
/// chunks.
pub const CHUNK: u32 = 64 * 1024;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 32;

/// The digests of one layer's tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarDigests {
    pub chunk: u32,
    /// Bytes of the uncompressed tar.
    pub tar_size: u64,
    /// BLAKE3 of the gzip index file, zeros for a plain tar.
    pub index: [u8; 32],
    pub chunks: Vec<[u8; 32]>,
}

/// What the digests say of a gzip index file: its BLAKE3, zeros for none (a plain tar).
pub fn index_digest(index: Option<&[u8]>) -> [u8; 32] {
    index.map_or([0; 32], |b| *blake3::hash(b).as_bytes())
}

/// `blake3:<hex>` of some bytes.
pub fn root_of(bytes: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(bytes).to_hex())
}

impl TarDigests {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + 32 * self.chunks.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.chunk.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.tar_size.to_le_bytes());
        b.extend_from_slice(&self.index);
        for c in &self.chunks {
            b.extend_from_slice(c);
        }
        b
    }

    /// [`TarDigests::decode`], and checks that the digests name the gzip index whose
    /// [`index_digest`] is `index`.
    pub fn decode_for(bytes: &[u8], root: &str, index: &[u8; 32]) -> Result<TarDigests> {
        let d = Self::decode(bytes, root)?;
        if d.index != *index {
            return Err(Error::corrupt(
                "tar digests (tar.blake3)",
                "the gzip index given is not the index the meta image's digests name",
            ));
        }
        Ok(d)
    }

    /// Decodes the file after checking it against `root` (`blake3:<hex>`).
    pub fn decode(bytes: &[u8], root: &str) -> Result<TarDigests> {
        let bad = |r: String| Error::corrupt("tar digests (tar.blake3)", r);
        let got = root_of(bytes);
        if got != root {
            return Err(bad(format!("its BLAKE3 is {got}, the image says {root}")));
        }
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(bad("bad magic or too short".into()));
        }
        let chunk = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let tar_size = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        if chunk == 0 || chunk % 512 != 0 {
            return Err(bad(format!("chunk size {chunk}")));
        }
        let n = tar_size.div_ceil(chunk as u64);
        if (bytes.len() - HEADER_LEN) as u64 != n * 32 {
            return Err(bad(format!(
                "{} bytes of digests for {n} chunks",
                bytes.len() - HEADER_LEN
            )));
        }
        Ok(TarDigests {
            chunk,
            tar_size,
            index: bytes[24..56].try_into().expect("32 bytes"),
            chunks: bytes[HEADER_LEN..]
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect(),
        })
    }
}

/// Computes [`TarDigests`] of a stream fed in pieces.
#[derive(Debug)]
pub struct ChunkHasher {
    chunk: u32,
    cur: blake3::Hasher,
    in_cur: u32,
    size: u64,
    chunks: Vec<[u8; 32]>,
}

impl Default for ChunkHasher {
    fn default() -> Self {
        ChunkHasher {
            chunk: CHUNK,
            cur: blake3::Hasher::new(),
            in_cur: 0,
            size: 0,
            chunks: Vec::new(),
        }
    }
}

impl ChunkHasher {
    pub fn update(&mut self, mut data: &[u8]) {
        self.size += data.len() as u64;
        while !data.is_empty() {
            let n = ((self.chunk - self.in_cur) as usize).min(data.len());
            self.cur.update(&data[..n]);
            self.in_cur += n as u32;
            data = &data[n..];
            if self.in_cur == self.chunk {
                self.chunks.push(*self.cur.finalize().as_bytes());
                self.cur.reset();
                self.in_cur = 0;
            }
        }
    }

    /// The digests, with `index` (the gzip index file's bytes, if any).
    pub fn finish(mut self, index: Option<&[u8]>) -> TarDigests {
        if self.in_cur > 0 {
            self.chunks.push(*self.cur.finalize().as_bytes());
        }
        TarDigests {
            chunk: self.chunk,
            tar_size: self.size,
            index: index_digest(index),
            chunks: self.chunks,
        }
    }
}

/// The uncompressed original layer, every chunk checked against its digest before it is
/// handed out.
pub struct Verified<S> {
    inner: S,
    digests: TarDigests,
    what: String,
}

impl<S> std::fmt::Debug for Verified<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("what", &self.what)
            .field("chunks", &self.digests.chunks.len())
            .finish()
    }
}

impl<S: ReadAt> Verified<S> {
    /// Checks that `inner` (the uncompressed tar) has the size the digests were made for.
    pub fn new(inner: S, digests: TarDigests, what: impl Into<String>) -> Result<Self> {
        let what = what.into();
        let size = inner
            .size()
            .map_err(|e| Error::io("size of", what.clone(), 0, e))?;
        if size != digests.tar_size {
            return Err(Error::corrupt(
                what,
                format!(
                    "the tar has {size} bytes, its digests were made for {}",
                    digests.tar_size
                ),
            ));
        }
        Ok(Verified {
            inner,
            digests,
            what,
        })
    }

    /// Reads chunk `i` into `buf` (sized to it) and checks it: once more from the origin after
    /// a mismatch.
    fn chunk(&self, i: usize, buf: &mut [u8]) -> io::Result<()> {
        let at = i as u64 * self.digests.chunk as u64;
        for attempt in 0..2 {
            // Bad bytes in a cache more often make inflate fail than inflate to other bytes:
            // such an error is a mismatch too (dropped and fetched again once).
            match read_full_at(&self.inner, at, buf) {
                Ok(n)
                    if n == buf.len()
                        && *blake3::hash(buf).as_bytes() == self.digests.chunks[i] =>
                {
                    return Ok(());
                }
                Ok(_) => {}
                Err(e)
                    if attempt == 0
                        && matches!(
                            e.kind(),
                            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                        ) => {}
                Err(e) => return Err(e),
            }
            if attempt == 0 {
                tracing::warn!(
                    target = %self.what,
                    chunk = i,
                    "a chunk of the original layer does not match its digest: fetching it again"
                );
                self.inner.discard_cached(at, buf.len() as u64)?;
            }
        }
        Err(Error::corrupt(
            self.what.clone(),
            format!(
                "bytes [{at}, {}) of the original layer's tar do not match the meta image's \
                 BLAKE3 digest, also when fetched again",
                at + buf.len() as u64
            ),
        )
        .into_io())
    }
}

impl<S: ReadAt> ReadAt for Verified<S> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.digests.tar_size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - offset) as usize;
        let c = self.digests.chunk as u64;
        let mut scratch = Vec::new();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let i = (pos / c) as usize;
            let start = i as u64 * c;
            let clen = (size - start).min(c) as usize;
            let into = (pos - start) as usize;
            let n = (clen - into).min(len - done);
            if into == 0 && n == clen {
                // A whole chunk: read it straight into the caller's buffer.
                self.chunk(i, &mut buf[done..done + n])?;
            } else {
                scratch.resize(clen, 0);
                self.chunk(i, &mut scratch)?;
                buf[done..done + n].copy_from_slice(&scratch[into..into + n]);
            }
            done += n;
        }
        Ok(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.digests.tar_size)
    }

    fn discard_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard_cached(offset, len)
    }
}
