//! The few zlib calls the gzip index needs, behind safe types: one-shot zlib-format compress and
//! uncompress (windows and the checkpoint table), and a streaming inflater that can be primed
//! with the bits of a byte and given a dictionary (random access from a checkpoint), or that
//! stops at every deflate block boundary (finding checkpoints).
//!
//! Deflating uses the system's zlib, whose output is byte for byte overlaybd's index writer's
//! (the tests compare with the vectors); inflating uses zlib-rs, which is faster and has the
//! same stream semantics (`Z_BLOCK`, `data_type`, `inflatePrime`).

use std::ffi::{c_int, c_uint};
use std::ptr;

use libz_rs_sys as rs;
use libz_sys as z;

/// A zlib return code that is an error, with zlib's message when it gave one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZError {
    pub code: i32,
    pub msg: String,
}

impl std::fmt::Display for ZError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.code {
            z::Z_DATA_ERROR => "invalid compressed data",
            z::Z_BUF_ERROR => "output does not fit",
            z::Z_MEM_ERROR => "out of memory",
            z::Z_STREAM_ERROR => "bad stream state",
            z::Z_NEED_DICT => "a dictionary is needed",
            _ => "zlib error",
        };
        if self.msg.is_empty() {
            write!(f, "{name} (zlib code {})", self.code)
        } else {
            write!(f, "{name}: {} (zlib code {})", self.msg, self.code)
        }
    }
}

/// Compresses `data` into one zlib-format stream at `level` (`compress2`: window 15, memory
/// level 8, default strategy — what `deflateInit` uses).
pub fn compress(data: &[u8], level: i32) -> Result<Vec<u8>, ZError> {
    let src_len = z::uLong::try_from(data.len()).expect("usize fits c_ulong on 64-bit");
    // SAFETY: compressBound only computes a number.
    let bound = unsafe { z::compressBound(src_len) };
    let mut out = vec![0u8; bound as usize];
    let mut out_len: z::uLongf = bound;
    // SAFETY: `out` has `out_len` writable bytes and `data` has `src_len` readable bytes; zlib
    // writes at most `out_len` bytes and stores the count it wrote in `out_len`.
    let rc = unsafe {
        z::compress2(
            out.as_mut_ptr(),
            &mut out_len,
            data.as_ptr(),
            src_len,
            level as c_int,
        )
    };
    if rc != z::Z_OK {
        return Err(ZError {
            code: rc,
            msg: String::new(),
        });
    }
    out.truncate(out_len as usize);
    Ok(out)
}

/// Inflates one zlib-format stream that must give exactly `expect` bytes.
pub fn uncompress(data: &[u8], expect: usize) -> Result<Vec<u8>, ZError> {
    // One spare byte tells "exactly `expect`" from "more than `expect`".
    let mut out = vec![0u8; expect + 1];
    let mut out_len = out.len() as z::uLongf;
    // SAFETY: as in `compress`: both buffers are valid for the lengths given.
    let rc = unsafe {
        z::uncompress(
            out.as_mut_ptr(),
            &mut out_len,
            data.as_ptr(),
            data.len() as z::uLong,
        )
    };
    if rc != z::Z_OK {
        return Err(ZError {
            code: rc,
            msg: String::new(),
        });
    }
    if out_len as usize != expect {
        return Err(ZError {
            code: z::Z_DATA_ERROR,
            msg: format!("inflates to {out_len} bytes, expected {expect}"),
        });
    }
    out.truncate(expect);
    Ok(out)
}

/// How an inflater reads its input's framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Raw deflate (window bits −15): from a checkpoint inside a member.
    Raw,
    /// A gzip or zlib header detected automatically (window bits 47): from the start of a blob.
    Auto,
}

/// What one [`Inflater::inflate`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub consumed: usize,
    pub produced: usize,
    /// The deflate stream (or the gzip member, with its trailer) ended.
    pub end: bool,
}

/// An inflate stream of zlib-rs (through its zlib-compatible API, twice as fast here as the
/// system's zlib 1.2.13). The `z_stream` is boxed: the library keeps a pointer to it.
pub struct Inflater {
    strm: Box<rs::z_stream>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("total_in", &self.strm.total_in)
            .field("total_out", &self.strm.total_out)
            .finish()
    }
}

// SAFETY: the stream's state is owned by this value alone and zlib keeps no thread-local data.
unsafe impl Send for Inflater {}

impl Inflater {
    pub fn new(framing: Framing) -> Result<Self, ZError> {
        // No allocator given: zlib-rs uses Rust's.
        let mut strm = Box::new(rs::z_stream::default());
        let bits = match framing {
            Framing::Raw => -15,
            Framing::Auto => 47,
        };
        // SAFETY: `strm` is a default (empty) stream as inflateInit2 requires, and the version
        // string and struct size are those of the library itself.
        let rc = unsafe {
            rs::inflateInit2_(
                &mut *strm,
                bits,
                rs::zlibVersion(),
                std::mem::size_of::<rs::z_stream>() as c_int,
            )
        };
        if rc != z::Z_OK {
            return Err(ZError {
                code: rc,
                msg: String::new(),
            });
        }
        Ok(Inflater { strm })
    }

    fn check(&self, rc: c_int) -> Result<c_int, ZError> {
        if rc >= 0 || rc == z::Z_BUF_ERROR {
            return Ok(rc);
        }
        let msg = if self.strm.msg.is_null() {
            String::new()
        } else {
            // SAFETY: zlib's messages are static NUL-terminated strings.
            unsafe { std::ffi::CStr::from_ptr(self.strm.msg) }
                .to_string_lossy()
                .into_owned()
        };
        Err(ZError { code: rc, msg })
    }

    /// Inserts the low `bits` bits of `value` before the input (`inflatePrime`).
    pub fn prime(&mut self, bits: u8, value: u8) -> Result<(), ZError> {
        // SAFETY: the stream was initialised in `new`.
        let rc = unsafe { rs::inflatePrime(&mut *self.strm, bits as c_int, value as c_int) };
        self.check(rc).map(|_| ())
    }

    /// Sets the 32 KiB history a raw stream starts with.
    pub fn set_dictionary(&mut self, dict: &[u8]) -> Result<(), ZError> {
        // SAFETY: `dict` is valid for its length; zlib copies it.
        let rc = unsafe {
            rs::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as c_uint)
        };
        self.check(rc).map(|_| ())
    }

    /// Inflates from `input` into `output`. With `block`, zlib returns at the end of every
    /// deflate block (and after a header), so a caller sees every checkpoint candidate.
    pub fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        block: bool,
    ) -> Result<Step, ZError> {
        let avail_in = input.len().min(c_uint::MAX as usize);
        let avail_out = output.len().min(c_uint::MAX as usize);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = avail_in as c_uint;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = avail_out as c_uint;
        let flush = if block { z::Z_BLOCK } else { z::Z_NO_FLUSH };
        // SAFETY: next_in/next_out point into live slices of at least avail_in/avail_out
        // bytes for the duration of the call; zlib only reads the input.
        let rc = unsafe { rs::inflate(&mut *self.strm, flush) };
        let consumed = avail_in - self.strm.avail_in as usize;
        let produced = avail_out - self.strm.avail_out as usize;
        self.strm.next_in = ptr::null();
        self.strm.next_out = ptr::null_mut();
        self.strm.avail_in = 0;
        self.strm.avail_out = 0;
        if rc == z::Z_NEED_DICT {
            return Err(ZError {
                code: rc,
                msg: "the stream asks for a preset dictionary".into(),
            });
        }
        let rc = self.check(rc)?;
        Ok(Step {
            consumed,
            produced,
            end: rc == z::Z_STREAM_END,
        })
    }

    /// zlib's `data_type` after the last call: bit 7 = at a block boundary (or just after the
    /// header), bit 6 = the last block was the final one, bits 0..2 = unused bits of the last
    /// byte consumed.
    pub fn data_type(&self) -> i32 {
        self.strm.data_type
    }

    /// Starts a new stream with the same framing (`inflateReset`).
    pub fn reset(&mut self) -> Result<(), ZError> {
        // SAFETY: the stream was initialised in `new`.
        let rc = unsafe { rs::inflateReset(&mut *self.strm) };
        self.check(rc).map(|_| ())
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised in `new` and is ended once.
        unsafe { rs::inflateEnd(&mut *self.strm) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_roundtrip_and_errors() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let c = compress(&data, 6).unwrap();
        assert!(c.len() < data.len() / 10);
        assert_eq!(uncompress(&c, data.len()).unwrap(), data);
        let e = uncompress(&c, data.len() - 1).unwrap_err();
        assert!(e.to_string().contains("expected 99999"), "{e}");
        assert!(uncompress(&c, 10).is_err());
        assert!(uncompress(&c, data.len() + 1).is_err());
        let mut bad = c.clone();
        bad[5] ^= 0xff;
        assert!(uncompress(&bad, data.len()).is_err());
        assert!(uncompress(&[], 10).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut inf = Inflater::new(Framing::Auto).unwrap();
        let mut out = [0u8; 64];
        let e = inf
            .inflate(b"this is not gzip", &mut out, false)
            .unwrap_err();
        assert_eq!(e.code, z::Z_DATA_ERROR);
        assert!(e.to_string().contains("incorrect header check"), "{e}");
    }
}
