//! A layer blob read while it is downloaded: the download thread writes the file and says how
//! far it got; the applier's inflater reads behind it, waiting for more, and sees the
//! download's end, or its error (a digest that does not match included), as the file's end.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use crate::error::{Error, Result};

/// How far a download has written its file, and how it ended.
#[derive(Debug, Default)]
pub(crate) struct Growing {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes in the file that readers may read.
    written: u64,
    /// Set once: `Ok` after the whole blob was written and checked against its descriptor.
    end: Option<std::result::Result<(), String>>,
    /// The reader gave up (its layer failed): the download stops.
    cancelled: bool,
}

impl Growing {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first `n` bytes are in the file.
    pub fn written(&self, n: u64) {
        self.lock().written = n;
        self.changed.notify_all();
    }

    /// The download ended: readers get the rest, then its end (the error, if any). Only the
    /// first end counts.
    pub fn end<T>(&self, r: &Result<T>) {
        let mut st = self.lock();
        if st.end.is_none() {
            st.end = Some(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        drop(st);
        self.changed.notify_all();
    }

    /// The reader no longer wants the blob: the download stops at its next write.
    pub fn cancel(&self) {
        self.lock().cancelled = true;
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Whether a download's error is only its reaction to [`Growing::cancel`].
    pub fn is_cancelled_cause(&self, e: &Error) -> bool {
        self.is_cancelled() && e.to_string().contains(CANCELLED)
    }

    /// Ends the download with an error if the returned guard is dropped first (the download
    /// thread panicked): a reader never waits for a writer that is gone.
    pub fn end_guard(self: &std::sync::Arc<Self>) -> EndGuard {
        EndGuard(self.clone())
    }

    /// Waits for the download's end.
    pub fn wait_end(&self) -> Result<()> {
        let mut st = self.lock();
        loop {
            if let Some(end) = &st.end {
                return end.clone().map_err(Error::Invalid);
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A reader of the file at `path` (already created by the download) behind the download.
    pub fn reader(self: &std::sync::Arc<Self>, path: &Path) -> Result<GrowingReader> {
        let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
        Ok(GrowingReader {
            f,
            growing: self.clone(),
            pos: 0,
        })
    }
}

/// What a cancelled download's writer fails with.
pub(crate) const CANCELLED: &str = "the layer it feeds failed: download stopped";

/// See [`Growing::end_guard`].
pub(crate) struct EndGuard(std::sync::Arc<Growing>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0
            .end::<()>(&Err(Error::Panicked("the download of this layer")));
    }
}

/// Reads a file as far as its download has written it, waiting for more until the end.
pub(crate) struct GrowingReader {
    f: File,
    growing: std::sync::Arc<Growing>,
    pos: u64,
}

impl Read for GrowingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let ready = {
            let mut st = self.growing.lock();
            loop {
                if st.written > self.pos {
                    break st.written - self.pos;
                }
                match &st.end {
                    Some(Ok(())) => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e.clone())),
                    None => {
                        st = self
                            .growing
                            .changed
                            .wait(st)
                            .unwrap_or_else(|p| p.into_inner())
                    }
                }
            }
        };
        let want = buf.len().min(usize::try_from(ready).unwrap_or(usize::MAX));
        let k = self.f.read_at(&mut buf[..want], self.pos)?;
        if k == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the downloaded file is shorter than the download says",
            ));
        }
        self.pos += k as u64;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    /// The reader gets every byte in order while the writer is still writing, and the end
    /// only after the download's end; an error at the end reaches it.
    #[test]
    fn a_reader_follows_the_writer_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        for fail in [false, true] {
            let path = dir.path().join(format!("blob-{fail}"));
            let mut f = File::create(&path).unwrap();
            let g = Arc::new(Growing::default());
            let mut r = g.reader(&path).unwrap();
            let want: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                let end = r.read_to_end(&mut got);
                (got, end)
            });
            let mut n = 0;
            for chunk in want.chunks(7_000) {
                f.write_all(chunk).unwrap();
                n += chunk.len() as u64;
                g.written(n);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            let end: Result<()> = if fail {
                Err(Error::Invalid("digest mismatch".into()))
            } else {
                Ok(())
            };
            g.end(&end);
            let (got, r) = reader.join().unwrap();
            assert!(got == want, "every byte, in order");
            match r {
                Ok(k) => assert!(!fail && k == want.len()),
                Err(e) => assert!(fail && e.to_string().contains("digest mismatch"), "{e}"),
            }
            assert_eq!(g.wait_end().is_err(), fail);
        }
    }
}
