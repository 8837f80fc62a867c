//! `obdctl zfile …`: thin commands over the `zfile` crate.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use zfile::envelope::{self, EnvelopeKind};
use zfile::{Algorithm, OpenOptions, ReadAt, Root, Verification, WriterOptions, ZFile};

use crate::output::{create_output, Sink};

#[derive(Subcommand)]
pub enum ZfileCmd {
    /// Compress IN into the ZFile OUT.
    Compress(CompressArgs),
    /// Decompress IN (a ZFile, bare or in a tar envelope) into OUT.
    Decompress {
        input: PathBuf,
        output: PathBuf,
        /// Trusted integrity root (blake3:<hex>): every block is checked against it.
        #[arg(long)]
        root: Option<Root>,
    },
    /// Check every CRC and, when the file has the integrity table, every BLAKE3 digest.
    Verify {
        input: PathBuf,
        /// Trusted integrity root (blake3:<hex>): the table must match it.
        #[arg(long)]
        root: Option<Root>,
    },
    /// Print the header fields, block count, ratio and integrity root.
    Info { input: PathBuf },
}

// The arguments of `zfile compress`. No doc comment: the subcommand's help is the variant's.
#[derive(Args)]
pub struct CompressArgs {
    #[arg(long, default_value = "lz4")]
    algorithm: Algorithm,
    /// zstd level (default 3); lz4 has none.
    #[arg(long)]
    level: Option<i32>,
    /// Raw bytes per block: 4K, 8K, 16K, 32K (64K only with --allow-overlaybd-unreadable).
    #[arg(long, default_value = "4K", value_parser = crate::args::parse_block_size)]
    block_size: u32,
    /// Wrap the ZFile in overlaybd's tar envelope (PAX form, member overlaybd.commit).
    #[arg(long)]
    tar: bool,
    /// Write the BLAKE3 integrity table and print its root.
    #[arg(long)]
    integrity: bool,
    /// Compression threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Leave the header without index information (the trailer alone locates the index),
    /// as overlaybd-zfile does; by default the header is rewritten, as overlaybd-commit -z
    /// does, so readers need not know the blob size.
    #[arg(long)]
    no_header_rewrite: bool,
    /// Omit the per-block CRCs (overlaybd's tools always write them).
    #[arg(long)]
    no_block_crc: bool,
    /// Allow block sizes overlaybd's reader may fail to read.
    #[arg(long)]
    allow_overlaybd_unreadable: bool,
    input: PathBuf,
    output: PathBuf,
}

fn open_in(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("open {}", path.display()))
}

/// Opens a blob as a ZFile, looking through a tar envelope.
fn open_zfile(
    path: &Path,
    opts: &OpenOptions,
) -> Result<(ZFile<zfile::Window<File>>, EnvelopeKind)> {
    let (payload, env) =
        envelope::open_payload(open_in(path)?).with_context(|| format!("{}", path.display()))?;
    let z = ZFile::open_with(payload, opts).with_context(|| format!("{}", path.display()))?;
    Ok((z, env.kind))
}

/// Creates OUT (refusing to overwrite IN), runs `f` on it, and removes OUT if `f` fails, so
/// that no half-written file is left behind.
fn write_output<T>(input: &Path, output: &Path, f: impl FnOnce(File) -> Result<T>) -> Result<T> {
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        if a == b {
            bail!("{} is both the input and the output", output.display());
        }
    }
    create_output(output, f)
}

fn mb_per_s(bytes: u64, start: Instant) -> f64 {
    bytes as f64 / start.elapsed().as_secs_f64().max(1e-9) / 1e6
}

pub fn run(cmd: ZfileCmd) -> Result<ExitCode> {
    match cmd {
        ZfileCmd::Compress(args) => compress(args),
        ZfileCmd::Decompress {
            input,
            output,
            root,
        } => decompress(&input, &output, root),
        ZfileCmd::Verify { input, root } => verify(&input, root),
        ZfileCmd::Info { input } => info(&input),
    }
}

fn compress(args: CompressArgs) -> Result<ExitCode> {
    let CompressArgs {
        algorithm,
        level,
        block_size,
        tar,
        integrity,
        threads,
        no_header_rewrite,
        no_block_crc,
        allow_overlaybd_unreadable,
        input,
        output,
    } = args;
    let opts = WriterOptions {
        algorithm,
        level,
        block_size,
        block_crc: !no_block_crc,
        integrity,
        threads,
        allow_overlaybd_unreadable,
    };
    opts.validate()?;
    let start = Instant::now();
    let mut src = open_in(&input)?;
    let summary = write_output(&input, &output, |out| {
        let mut sink = Sink::new(out, Some(opts), tar)?;
        std::io::copy(&mut src, sink.writer())
            .with_context(|| format!("compress {}", input.display()))?;
        Ok(sink
            .finish(no_header_rewrite)?
            .expect("a sink made with writer options writes a ZFile"))
    })?;
    println!(
        "{} -> {}: {} bytes in {} blocks, {} bytes out ({:.1}%), {:.0} MB/s",
        input.display(),
        output.display(),
        summary.raw_len,
        summary.blocks,
        summary.file_len,
        100.0 * summary.file_len as f64 / summary.raw_len.max(1) as f64,
        mb_per_s(summary.raw_len, start)
    );
    if let Some(root) = summary.integrity_root {
        println!("integrity root: {root}");
    }
    Ok(ExitCode::SUCCESS)
}

fn decompress(input: &Path, output: &Path, root: Option<Root>) -> Result<ExitCode> {
    let start = Instant::now();
    let opts = OpenOptions {
        trusted_root: root,
        ..Default::default()
    };
    let (z, _) = open_zfile(input, &opts)?;
    let off = write_output(input, output, |out| {
        let mut out = BufWriter::new(out);
        let mut buf = vec![0u8; 4 << 20];
        let mut off = 0;
        while off < z.len() {
            let n = z.read_at(off, &mut buf)?;
            out.write_all(&buf[..n])?;
            off += n as u64;
        }
        out.flush()?;
        Ok(off)
    })?;
    println!(
        "{} -> {}: {} bytes, {:.0} MB/s",
        input.display(),
        output.display(),
        off,
        mb_per_s(off, start)
    );
    Ok(ExitCode::SUCCESS)
}

/// Exit code 1 when a block fails its checks.
fn verify(input: &Path, root: Option<Root>) -> Result<ExitCode> {
    let opts = OpenOptions {
        trusted_root: root,
        ..Default::default()
    };
    let (z, _) = open_zfile(input, &opts)?;
    let mut bad = 0u64;
    let checked = z.verify_blocks(|e| {
        bad += 1;
        if bad <= 100 {
            println!("BAD {e}");
        }
    })?;
    let what = match z.info().verification {
        Verification::Crc if z.info().block_crc => "crc",
        Verification::Crc => "decompression only (no crc in this file)",
        Verification::TableSelfConsistent => {
            "crc + blake3 (table self-consistent, no trusted root given)"
        }
        Verification::Authenticated => "crc + blake3 (authenticated by the trusted root)",
    };
    if bad > 0 {
        println!(
            "{}: {bad} of {checked} blocks failed ({what})",
            input.display()
        );
        return Ok(ExitCode::from(1));
    }
    println!("{}: all {checked} blocks ok ({what})", input.display());
    Ok(ExitCode::SUCCESS)
}

fn info(input: &Path) -> Result<ExitCode> {
    let (z, kind) = open_zfile(input, &OpenOptions::default())?;
    let blob_len = z.source().inner().size()?;
    let i = z.info();
    let envelope = match kind {
        EnvelopeKind::None => "none",
        EnvelopeKind::Plain => "tar (512-byte header)",
        EnvelopeKind::Pax => "tar (PAX, 1536-byte prefix)",
    };
    println!("envelope:          {envelope}");
    println!("blob size:         {blob_len}");
    println!("algorithm:         {}", i.algorithm);
    if i.level != 0 {
        println!("level:             {}", i.level);
    }
    println!("block size:        {}", i.block_size);
    println!("blocks:            {}", i.blocks);
    println!("original size:     {}", i.original_size);
    println!("stored data:       {} bytes", i.data_end - i.data_offset);
    println!(
        "ratio:             {:.2}% of original",
        100.0 * (i.data_end - i.data_offset) as f64 / i.original_size.max(1) as f64
    );
    println!("index offset:      {}", i.index_offset);
    println!("index found in:    {:?}", i.index_source);
    println!("header flags:      {:#x}", i.header_flags);
    println!("block crc:         {}", i.block_crc);
    println!(
        "header/index crc:  {}",
        if i.digests_checked {
            "present, ok"
        } else {
            "absent (pre-2023 writer)"
        }
    );
    match i.integrity_root {
        Some(r) => println!("integrity root:    {r}"),
        None => println!("integrity root:    none (no integrity table)"),
    }
    Ok(ExitCode::SUCCESS)
}
