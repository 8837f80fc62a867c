//! The positional source every format in this project reads through.
//!
//! One required method, `read_at`. A source may also tell its size and may be told to forget a
//! range it cached (so that a block that failed its check is fetched again from the origin);
//! both are default methods that say "not supported" or "nothing to forget".

use std::io;
use std::sync::Arc;

/// A byte source read at explicit offsets, shareable across threads.
pub trait ReadAt: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset` and returns how many were read. A short count
    /// is allowed anywhere; 0 means end of data (or an empty `buf`).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Total length in bytes, when the source knows it.
    fn size(&self) -> io::Result<u64> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "source does not know its size",
        ))
    }

    /// Drops any cached copy of `[offset, offset + len)` so that the next read goes to the
    /// origin. Sources without a cache have nothing to drop.
    fn discard_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// A number that changes whenever a range may read differently than it did before: a
    /// cache bumps it each time it stores bytes from its origin (before those bytes can be
    /// read). Read after a `read_at`, an unchanged value means the bytes returned are the ones
    /// an earlier read saw under that value, so a reader may skip checks it already made on
    /// them. `None` (the default): the source cannot tell, and every read is new.
    fn generation(&self) -> Option<u64> {
        None
    }
}

/// Fills `buf` from `offset`, looping over short reads. Returns the number of bytes read,
/// which is less than `buf.len()` only at the end of the source.
pub fn read_full_at<S: ReadAt + ?Sized>(src: &S, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match src.read_at(offset + done as u64, &mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n.min(buf.len() - done),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl ReadAt for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let len = self.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let start = offset as usize;
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.as_slice().read_at(offset, buf)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

macro_rules! forward_read_at {
    ($($ty:ty),*) => {$(
        impl<T: ReadAt + ?Sized> ReadAt for $ty {
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
                (**self).read_at(offset, buf)
            }
            fn size(&self) -> io::Result<u64> {
                (**self).size()
            }
            fn discard_cached(&self, offset: u64, len: u64) -> io::Result<()> {
                (**self).discard_cached(offset, len)
            }
            fn generation(&self) -> Option<u64> {
                (**self).generation()
            }
        }
    )*};
}
forward_read_at!(&T, Box<T>, Arc<T>);

/// A window `[start, start + len)` of another source, seen as a source of its own (used for the
/// payload inside a tar envelope).
#[derive(Debug, Clone)]
pub struct Window<S> {
    inner: S,
    start: u64,
    len: u64,
}

impl<S: ReadAt> Window<S> {
    /// A window of `len` bytes at `start` (cut short where `start + len` would overflow).
    pub fn new(inner: S, start: u64, len: u64) -> Self {
        Window {
            inner,
            start,
            len: len.min(u64::MAX - start),
        }
    }
    /// Offset of the window in the inner source.
    pub fn start(&self) -> u64 {
        self.start
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn inner(&self) -> &S {
        &self.inner
    }
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: ReadAt> ReadAt for Window<S> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len - offset) as usize;
        self.inner.read_at(self.start + offset, &mut buf[..n])
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn discard_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        let len = len.min(self.len.saturating_sub(offset));
        self.inner.discard_cached(self.start + offset, len)
    }
    fn generation(&self) -> Option<u64> {
        self.inner.generation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_windows() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut b = [0u8; 10];
        assert_eq!(data.read_at(95, &mut b).unwrap(), 5);
        assert_eq!(&b[..5], &[95, 96, 97, 98, 99]);
        assert_eq!(data.read_at(100, &mut b).unwrap(), 0);
        assert_eq!(data.read_at(u64::MAX, &mut b).unwrap(), 0);
        let w = Window::new(&data[..], 10, 20);
        assert_eq!(w.size().unwrap(), 20);
        assert_eq!(read_full_at(&w, 15, &mut b).unwrap(), 5);
        assert_eq!(&b[..5], &[25, 26, 27, 28, 29]);
        assert_eq!(w.read_at(20, &mut b).unwrap(), 0);
    }
}
