//! Test helpers (feature `test-util`): the deterministic input generator of the overlaybd
//! vectors, and sources that misbehave on purpose.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use sha3::digest::{ExtendableOutput, Update};

use crate::source::ReadAt;

const BASE: &str = "the of and to in is that for it as with was on be by at this from or an are \
have not but had his they which one you were her all she there would their we him \
been has when who will more no if out so said what up its about into than them can \
only other new some could time these two may then do first any my now such like our \
over man me even most made after also did many before must through back years where \
much your way well down should because each just those people how too little state \
good very make world still own see men work long get here between both life being \
under never day same another know while last might us great old year off come since \
against go came right used take three block layer image index segment overlay zfile \
lsmt commit seal trailer header offset length checksum compress decompress lz4 zstd \
container registry snapshot lazy fetch kernel device sector virtual size data file";

fn vocab() -> Vec<String> {
    let base: Vec<&str> = BASE.split_whitespace().collect();
    (0..256)
        .map(|k| {
            let w = base[k % base.len()];
            if k < base.len() {
                w.to_string()
            } else {
                format!("{w}{k}")
            }
        })
        .collect()
}

fn shake(tag: &[u8], seed: &[u8], i: &[u8], len: usize) -> Vec<u8> {
    let mut h = sha3::Shake128::default();
    h.update(tag);
    h.update(seed);
    h.update(i);
    let mut out = vec![0u8; len];
    h.finalize_xof_into(&mut out);
    out
}

fn segment(vocab: &[String], seed: u64, i: u64) -> Vec<u8> {
    let s = seed.to_le_bytes();
    let n = i.to_le_bytes();
    let ctl = Sha256::new()
        .chain_update(b"ctl")
        .chain_update(s)
        .chain_update(n)
        .finalize();
    let len = 1 + (u32::from_le_bytes(ctl[4..8].try_into().expect("4 bytes")) % 262_144) as usize;
    match ctl[0] % 4 {
        0 => vec![0u8; len],
        1 => shake(b"rnd", &s, &n, len),
        2 => {
            let st = shake(b"txt", &s, &n, len);
            let words: Vec<&str> = st.iter().map(|&b| vocab[b as usize].as_str()).collect();
            let lines: Vec<String> = words.chunks(12).map(|c| c.join(" ")).collect();
            let mut t = lines.join("\n").into_bytes();
            t.truncate(len);
            t
        }
        _ => {
            let pat = &ctl[8..24];
            pat.iter().copied().cycle().take(len).collect()
        }
    }
}

/// `gen_input.py SIZE SEED`: mixed zero runs, random bytes, text and patterns.
pub fn gen_input(size: usize, seed: u64) -> Vec<u8> {
    let vocab = vocab();
    let mut out = Vec::with_capacity(size);
    let mut i = 0;
    while out.len() < size {
        let seg = segment(&vocab, seed, i);
        let take = seg.len().min(size - out.len());
        out.extend_from_slice(&seg[..take]);
        i += 1;
    }
    out
}

/// A source that misbehaves: returns at most `max_chunk` bytes per call, and fails the call
/// numbered `fail_on` (0-based) with an I/O error.
#[derive(Debug)]
pub struct FaultySource<S> {
    pub inner: S,
    pub max_chunk: usize,
    pub fail_on: Option<u64>,
    calls: AtomicU64,
}

impl<S> FaultySource<S> {
    pub fn new(inner: S, max_chunk: usize, fail_on: Option<u64>) -> Self {
        FaultySource {
            inner,
            max_chunk,
            fail_on,
            calls: AtomicU64::new(0),
        }
    }
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl<S: ReadAt> ReadAt for FaultySource<S> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        if self.fail_on == Some(call) {
            return Err(io::Error::other(format!("injected failure on call {call}")));
        }
        let n = buf.len().min(self.max_chunk.max(1));
        self.inner.read_at(offset, &mut buf[..n])
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

/// A cache that serves damaged bytes for chosen ranges until told to discard them, like a
/// local cache holding a bad copy of what the origin has right.
#[derive(Debug)]
pub struct DamagedCache<S> {
    pub origin: S,
    damaged: Mutex<Vec<(u64, u64)>>,
    discards: AtomicU64,
}

impl<S> DamagedCache<S> {
    /// Bytes in each `(offset, len)` range read back with their low bit flipped.
    pub fn new(origin: S, damaged: Vec<(u64, u64)>) -> Self {
        DamagedCache {
            origin,
            damaged: Mutex::new(damaged),
            discards: AtomicU64::new(0),
        }
    }
    pub fn discards(&self) -> u64 {
        self.discards.load(Ordering::Relaxed)
    }
}

impl<S: ReadAt> ReadAt for DamagedCache<S> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.origin.read_at(offset, buf)?;
        let damaged = self.damaged.lock().expect("no panics while held");
        for &(at, len) in damaged.iter() {
            for (i, b) in buf[..n].iter_mut().enumerate() {
                let pos = offset + i as u64;
                if pos >= at && pos < at + len {
                    *b ^= 1;
                }
            }
        }
        Ok(n)
    }
    fn size(&self) -> io::Result<u64> {
        self.origin.size()
    }
    fn discard_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        self.discards.fetch_add(1, Ordering::Relaxed);
        let mut damaged = self.damaged.lock().expect("no panics while held");
        damaged.retain(|&(at, l)| at + l <= offset || at >= offset + len);
        Ok(())
    }
}

/// Body of the `zfile_open_read` fuzz target: open arbitrary bytes as a ZFile (bare or in a
/// tar envelope), read it all and at a few offsets, and check every block. Must never panic.
pub fn fuzz_open_and_read(data: &[u8]) {
    use crate::{OpenOptions, ZFile};
    let opts = OpenOptions::default();
    if let Ok(z) = ZFile::open_with(data, &opts) {
        let len = z.len().min(1 << 24);
        let mut buf = vec![0u8; len as usize];
        let _ = z.read_at(0, &mut buf);
        for off in [1, len / 2, len.saturating_sub(1)] {
            let _ = z.read_at(off, &mut [0u8; 5000]);
        }
        let _ = z.plan(0, len);
        let _ = z.verify_blocks(|_| {});
        // The authenticated path, with the root the file itself yields.
        if let Some(root) = z.info().integrity_root {
            let opts = OpenOptions {
                trusted_root: Some(root),
                ..Default::default()
            };
            if let Ok(z) = ZFile::open_with(data, &opts) {
                let _ = z.read_at(0, &mut buf);
            }
        }
    }
    if let Ok((payload, _)) = crate::envelope::open_payload(data) {
        let _ = ZFile::open(payload);
    }
}

/// Body of the `tar_envelope` fuzz target.
pub fn fuzz_envelope(data: &[u8]) {
    if let Ok(env) = crate::envelope::detect(data) {
        let end = env.payload_offset + env.payload_len.unwrap_or(0);
        assert!(
            end <= data.len() as u64,
            "payload window past the data: {env:?}"
        );
    }
}
