//! overlaybd's ZFile format: a file cut into fixed-size blocks, each compressed on its own
//! (LZ4 or zstd) and optionally followed by a CRC, with a jump table so that any byte range
//! can be read by decompressing only the blocks that hold it.
//!
//! This crate reads every ZFile overlaybd has written and writes files overlaybd reads; it
//! adds an optional table of BLAKE3 digests (the integrity extension) that lets a reader
//! holding a trusted root verify every block it returns. It also handles the tar envelope that
//! wraps layer blobs. The byte layout is specified in `docs/format/zfile.md`.
//!
//! The format code is synchronous and does no I/O of its own: it reads through [`ReadAt`] and
//! writes to any [`std::io::Write`].
//!
//! ```
//! use std::io::Write;
//! use zfile::{ZFile, ZFileWriter, WriterOptions};
//!
//! let mut w = ZFileWriter::new(Vec::new(), WriterOptions { integrity: true, ..Default::default() })?;
//! w.write_all(&vec![7u8; 10_000])?;
//! let (bytes, summary) = w.finish()?;
//! let root = summary.integrity_root.unwrap();
//!
//! let z = ZFile::open_with(bytes, &zfile::OpenOptions { trusted_root: Some(root), ..Default::default() })?;
//! let mut buf = [0u8; 100];
//! assert_eq!(z.read_at(9_950, &mut buf)?, 50);
//! assert_eq!(&buf[..50], &[7u8; 50][..]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod codec;
pub mod crc;
pub mod envelope;
mod error;
pub mod header;
mod index;
pub mod integrity;
mod reader;
pub mod source;
mod writer;

#[cfg(feature = "test-util")]
pub mod testutil;

pub use error::{Error, Result};
pub use header::Algorithm;
pub use index::BlobExtent;
pub use integrity::Root;
pub use reader::{IndexSource, Info, OpenOptions, ReadPlan, Verification, ZFile};
pub use source::{ReadAt, Window};
pub use writer::{Summary, WriterOptions, ZFileWriter, MAX_THREADS, OVERLAYBD_SAFE_MAX_BLOCK_SIZE};

/// Does `head` (the first bytes of a file) start with a ZFile header? Magics, the header flag
/// and, when present, the header digest (as overlaybd's `is_zfile`); `open` checks the rest.
pub fn is_zfile(head: &[u8]) -> bool {
    let Some(slot) = head
        .get(..header::HT_SLOT)
        .and_then(|s| <&[u8; header::HT_SLOT]>::try_from(s).ok())
    else {
        return false;
    };
    match header::HeaderTrailer::decode(slot) {
        Ok(h) => {
            h.has(header::flags::HEADER)
                && (!h.has(header::flags::CALC_DIGEST) || header::digest_matches(slot))
        }
        Err(_) => false,
    }
}
