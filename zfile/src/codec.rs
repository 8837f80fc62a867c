//! The two block codecs. LZ4 is liblz4's raw block format (`LZ4_compress_default` /
//! `LZ4_decompress_safe`, the calls overlaybd makes, so our blocks are byte-identical to
//! overlaybd's); zstd is one frame per block through libzstd.

use std::cell::RefCell;

use crate::header::Algorithm;

/// zstd's level when none is given (overlaybd always uses 3).
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// Largest compressed size of `n` raw bytes, CRC not included.
pub fn compress_bound(algo: Algorithm, n: usize) -> usize {
    match algo {
        // LZ4_COMPRESSBOUND
        Algorithm::Lz4 => n + n / 255 + 16,
        Algorithm::Zstd => zstd::zstd_safe::compress_bound(n),
    }
}

/// Per-thread compression state for one algorithm and level.
pub struct Compressor {
    algo: Algorithm,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("algo", &self.algo)
            .finish()
    }
}

impl Compressor {
    pub fn new(algo: Algorithm, level: i32) -> std::io::Result<Self> {
        let zstd = match algo {
            Algorithm::Lz4 => None,
            Algorithm::Zstd => Some(zstd::bulk::Compressor::new(level)?),
        };
        Ok(Compressor { algo, zstd })
    }

    /// Appends the compressed form of `src` to `dst` and returns its length.
    pub fn compress_into(&mut self, src: &[u8], dst: &mut Vec<u8>) -> std::io::Result<usize> {
        let start = dst.len();
        let bound = compress_bound(self.algo, src.len());
        dst.resize(start + bound, 0);
        let n = match (&mut self.zstd, self.algo) {
            (Some(z), _) => z.compress_to_buffer(src, &mut dst[start..])?,
            (None, _) => lz4::block::compress_to_buffer(
                src,
                Some(lz4::block::CompressionMode::DEFAULT),
                false,
                &mut dst[start..],
            )?,
        };
        dst.truncate(start + n);
        Ok(n)
    }
}

thread_local! {
    static ZSTD_DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Decompresses one block into `dst`, whose length is the block's expected raw size. Returns
/// the number of bytes produced, or a short reason when the data is not a valid block of at
/// most `dst.len()` bytes.
pub fn decompress(algo: Algorithm, src: &[u8], dst: &mut [u8]) -> Result<usize, String> {
    match algo {
        Algorithm::Lz4 => {
            let cap = i32::try_from(dst.len()).map_err(|_| "block too large".to_string())?;
            lz4::block::decompress_to_buffer(src, Some(cap), dst)
                .map_err(|e| format!("lz4 decompression failed: {e}"))
        }
        Algorithm::Zstd => ZSTD_DCTX.with(|cell| {
            let mut run = |d: &mut zstd::bulk::Decompressor<'static>| {
                d.decompress_to_buffer(src, dst)
                    .map_err(|e| format!("zstd decompression failed: {e}"))
            };
            match cell.try_borrow_mut() {
                Ok(mut slot) => {
                    if slot.is_none() {
                        *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
                    }
                    run(slot.as_mut().expect("set just above"))
                }
                // Re-entered on this thread (a source that is itself a zstd reader): use a
                // fresh context rather than panic.
                Err(_) => run(&mut zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?),
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let data: Vec<u8> = (0..10_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 97) as u8)
            .collect();
        for algo in [Algorithm::Lz4, Algorithm::Zstd] {
            let mut c = Compressor::new(algo, ZSTD_DEFAULT_LEVEL).unwrap();
            let mut z = Vec::new();
            let n = c.compress_into(&data, &mut z).unwrap();
            assert_eq!(n, z.len());
            assert!(n <= compress_bound(algo, data.len()));
            let mut out = vec![0u8; data.len()];
            assert_eq!(decompress(algo, &z, &mut out).unwrap(), data.len());
            assert_eq!(out, data);
            // Too small a destination is an error, not an overflow.
            let mut small = vec![0u8; data.len() - 1];
            assert!(decompress(algo, &z, &mut small).is_err());
            // Garbage is an error, not a panic.
            let garbage: Vec<u8> = (0..300u32).map(|i| (i * 31 + 7) as u8).collect();
            let _ = decompress(algo, &garbage, &mut out);
        }
    }
}
