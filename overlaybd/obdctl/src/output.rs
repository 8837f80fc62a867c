//! Output files shared by the commands: created and removed again on failure, and written
//! through the tar envelope and the ZFile writer when asked.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use zfile::envelope::PaxWriter;
use zfile::{Summary, WriterOptions, ZFileWriter};

/// Creates OUT, runs `f` on it, and removes OUT if `f` fails, so that no half-written file
/// is left behind.
pub fn create_output<T>(output: &Path, f: impl FnOnce(File) -> Result<T>) -> Result<T> {
    let out = File::create(output).with_context(|| format!("create {}", output.display()))?;
    f(out).inspect_err(|_| {
        let _ = std::fs::remove_file(output);
    })
}

/// A buffered output file, optionally inside overlaybd's tar envelope, optionally behind a
/// ZFile writer: one `Write` for the command, each layer finished in order by `finish`.
pub enum Sink {
    Plain(BufWriter<File>),
    Tar(PaxWriter<BufWriter<File>>),
    Zfile(ZFileWriter<BufWriter<File>>),
    TarZfile(ZFileWriter<PaxWriter<BufWriter<File>>>),
}

impl Sink {
    /// Wraps `out` in the envelope (when `tar`) and then the ZFile writer (when `zfile` is
    /// given).
    pub fn new(out: File, zfile: Option<WriterOptions>, tar: bool) -> Result<Self> {
        let out = BufWriter::new(out);
        Ok(match (zfile, tar) {
            (None, false) => Sink::Plain(out),
            (None, true) => Sink::Tar(PaxWriter::new(out)?),
            (Some(opts), false) => Sink::Zfile(ZFileWriter::new(out, opts)?),
            (Some(opts), true) => Sink::TarZfile(ZFileWriter::new(PaxWriter::new(out)?, opts)?),
        })
    }

    pub fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Plain(w) => w,
            Sink::Tar(w) => w,
            Sink::Zfile(w) => w,
            Sink::TarZfile(w) => w,
        }
    }

    /// Finishes the ZFile (index in the trailer only, or also in a rewritten header), then
    /// the envelope, and flushes the file. Returns the ZFile writer's summary, if there is one.
    pub fn finish(self, trailer_only: bool) -> Result<Option<Summary>> {
        match self {
            Sink::Plain(mut w) => {
                w.flush()?;
                Ok(None)
            }
            Sink::Tar(w) => {
                w.finish()?.0.flush()?;
                Ok(None)
            }
            Sink::Zfile(w) => {
                let (mut f, summary) = finish_zfile(w, trailer_only)?;
                f.flush()?;
                Ok(Some(summary))
            }
            Sink::TarZfile(w) => {
                let (pax, summary) = finish_zfile(w, trailer_only)?;
                pax.finish()?.0.flush()?;
                Ok(Some(summary))
            }
        }
    }
}

fn finish_zfile<W: Write + std::io::Seek>(
    w: ZFileWriter<W>,
    trailer_only: bool,
) -> zfile::Result<(W, Summary)> {
    if trailer_only {
        w.finish()
    } else {
        w.finish_with_header()
    }
}
