//! `obdctl layer …`: create, commit, seal, inspect and flatten LSMT layers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use overlaybd_lsmt::header::{flags, HeaderTrailer, HT_SPACE};
use overlaybd_lsmt::{
    self as lsmt, blob, CommitOptions, RoLayer, RwLayer, SparseLayer, Stack, Upper, Uuid,
};
use zfile::envelope::EnvelopeKind;
use zfile::{Algorithm, ReadAt, WriterOptions};

use crate::args::{parse_block_size, parse_bytes};
use crate::output::{create_output, Sink};

#[derive(Subcommand)]
pub enum LayerCmd {
    /// Create an empty writable layer: DATA and INDEX (append-only), or one sparse file.
    Create {
        /// Virtual disk size (64G, 1T, bytes…).
        #[arg(long, default_value = "64G", value_parser = parse_bytes)]
        vsize: u64,
        /// A sparse-file layer (one file, no index log).
        #[arg(long)]
        sparse: bool,
        #[arg(long)]
        uuid: Option<Uuid>,
        #[arg(long)]
        parent_uuid: Option<Uuid>,
        data: PathBuf,
        index: Option<PathBuf>,
    },
    /// Commit a writable (DATA INDEX), sparse (DATA) or sealed (DATA) layer into OUT.
    Commit(CommitArgs),
    /// Seal a writable layer in place: DATA becomes a read-only layer.
    Seal { data: PathBuf, index: PathBuf },
    /// Print header, extent count, data size and UUIDs of layer files.
    Info {
        #[arg(required = true)]
        layers: Vec<PathBuf>,
    },
    /// Write the merged virtual disk of a stack of layers (lowest first) to OUT, sparse where
    /// the disk has holes.
    Cat {
        #[arg(required = true)]
        layers: Vec<PathBuf>,
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// A writable layer on top: DATA INDEX (or one sparse file).
        #[arg(long, num_args = 1..=2)]
        upper: Option<Vec<PathBuf>>,
        /// Check that each layer's parent UUID names the layer below.
        #[arg(long)]
        check_chain: bool,
    },
}

// The arguments of `layer commit`. No doc comment: the subcommand's help is the variant's.
#[derive(Args)]
pub struct CommitArgs {
    /// Compress the committed layer as a ZFile.
    #[arg(long, short = 'z')]
    zfile: bool,
    #[arg(long, default_value = "lz4")]
    algorithm: Algorithm,
    #[arg(long, default_value = "4K", value_parser = parse_block_size)]
    block_size: u32,
    /// Compression threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Wrap the result in overlaybd's tar envelope.
    #[arg(long, short = 't')]
    tar: bool,
    /// Write the BLAKE3 integrity table (implies --zfile) and print its root.
    #[arg(long)]
    integrity: bool,
    #[arg(long)]
    uuid: Option<Uuid>,
    #[arg(long, short = 'p')]
    parent_uuid: Option<Uuid>,
    /// Commit message stored in the layer (at most 256 bytes).
    #[arg(long, short = 'm', default_value = "")]
    message: String,
    /// DATA [INDEX] OUT
    #[arg(num_args = 2..=3, required = true)]
    files: Vec<PathBuf>,
}

fn open_lower(path: &Path) -> Result<(Arc<dyn ReadAt>, RoLayer)> {
    let (src, _) = blob::open_path(path).with_context(|| path.display().to_string())?;
    let layer = RoLayer::open(&*src).with_context(|| path.display().to_string())?;
    Ok((src, layer))
}

/// The first 4096 bytes of a (possibly wrapped) layer file, decoded.
fn peek_header(path: &Path) -> Result<(HeaderTrailer, Arc<dyn ReadAt>, blob::Wrapping)> {
    let (src, wrapping) = blob::open_path(path).with_context(|| path.display().to_string())?;
    let mut slot = vec![0u8; HT_SPACE];
    let n = zfile::source::read_full_at(&*src, 0, &mut slot)?;
    let h =
        HeaderTrailer::decode(&slot[..n], "header").with_context(|| path.display().to_string())?;
    Ok((h, src, wrapping))
}

fn open_upper(files: &[PathBuf]) -> Result<Upper> {
    Ok(match files {
        [d, i] => {
            Upper::Append(RwLayer::open_read_only(d, i).with_context(|| d.display().to_string())?)
        }
        [s] => Upper::Sparse(SparseLayer::open(s).with_context(|| s.display().to_string())?),
        _ => bail!("--upper takes DATA INDEX or one sparse file"),
    })
}

fn uuid_text(u: Option<Uuid>) -> String {
    match u {
        Some(u) if u.is_nil() => "(none)".into(),
        Some(u) => u.to_string(),
        None => "(not a UUID)".into(),
    }
}

pub fn run(cmd: LayerCmd) -> Result<ExitCode> {
    match cmd {
        LayerCmd::Create {
            vsize,
            sparse,
            uuid,
            parent_uuid,
            data,
            index,
        } => create(vsize, sparse, uuid, parent_uuid, &data, index.as_deref()),
        LayerCmd::Commit(args) => commit(args),
        LayerCmd::Seal { data, index } => seal(&data, &index),
        LayerCmd::Info { layers } => {
            for path in layers {
                info(&path)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LayerCmd::Cat {
            layers,
            output,
            upper,
            check_chain,
        } => cat(&layers, &output, upper.as_deref(), check_chain),
    }
}

fn create(
    vsize: u64,
    sparse: bool,
    uuid: Option<Uuid>,
    parent_uuid: Option<Uuid>,
    data: &Path,
    index: Option<&Path>,
) -> Result<ExitCode> {
    if !vsize.is_multiple_of(512) || vsize == 0 {
        bail!("--vsize must be a positive multiple of 512");
    }
    let parent = parent_uuid.unwrap_or(Uuid::NIL);
    let h = match (sparse, index) {
        (true, None) => SparseLayer::create(data, vsize, uuid, parent)?
            .header()
            .clone(),
        (false, Some(index)) => RwLayer::create(data, index, vsize, uuid, parent)?
            .header()
            .clone(),
        (true, Some(_)) => bail!("a sparse layer is one file: give DATA only"),
        (false, None) => {
            bail!("an append-only layer needs DATA and INDEX (or use --sparse)")
        }
    };
    println!(
        "created {} ({} bytes, uuid {})",
        data.display(),
        vsize,
        uuid_text(h.uuid)
    );
    Ok(ExitCode::SUCCESS)
}

fn commit(args: CommitArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let (inputs, out_path) = args.files.split_at(args.files.len() - 1);
    let out_path = &out_path[0];
    let (maps, src, header) = commit_source(inputs)?;
    let opts = CommitOptions {
        virtual_size: header.virtual_size,
        uuid: args.uuid,
        parent_uuid: args.parent_uuid.or(header.parent_uuid),
        user_tag: args.message.into_bytes(),
        warp: false,
    };
    let zopts = (args.zfile || args.integrity).then_some(WriterOptions {
        algorithm: args.algorithm,
        block_size: args.block_size,
        threads: args.threads,
        integrity: args.integrity,
        ..Default::default()
    });
    let (summary, zsummary) = create_output(out_path, |out| {
        let mut sink = Sink::new(out, zopts, args.tar)?;
        let s = lsmt::commit(&maps, &[&*src], sink.writer(), &opts)?;
        Ok((s, sink.finish(false)?))
    })?;
    // Only the tar form prints the root: `--integrity` without `--tar` prints none.
    let root = zsummary.filter(|_| args.tar).and_then(|z| z.integrity_root);
    let size = std::fs::metadata(out_path)?.len();
    println!(
        "committed {} extents ({} bytes of data) into {} ({size} bytes) in {:.2} s",
        summary.extents,
        summary.data_sectors * 512,
        out_path.display(),
        start.elapsed().as_secs_f64()
    );
    if let Some(root) = root {
        println!("integrity root: {root}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `commit` reads: the extents, the data file and the header of a writable layer (DATA
/// INDEX), a sparse layer, or a sealed one.
fn commit_source(
    inputs: &[PathBuf],
) -> Result<(Vec<lsmt::Mapping>, Arc<dyn ReadAt>, HeaderTrailer)> {
    Ok(match inputs {
        [d, i] => {
            let l = RwLayer::open_read_only(d, i).with_context(|| d.display().to_string())?;
            let h = l.header().clone();
            let f = l.data_file().try_clone()?;
            (l.mappings(), Arc::new(f), h)
        }
        [d] => {
            let (h, src, _) = peek_header(d)?;
            if h.has(flags::SPARSE_RW) {
                let l = SparseLayer::open(d)?;
                (l.mappings(), Arc::new(l.file().try_clone()?), h)
            } else {
                let layer = RoLayer::open(&*src).with_context(|| d.display().to_string())?;
                // A committed layer's header is sealed; a sealed writable layer's is not.
                // overlaybd refuses to commit a committed layer again, and so do we.
                if layer.meta.header.has(flags::SEALED) {
                    bail!("{} is already a committed layer", d.display());
                }
                (
                    layer.index.iter().collect(),
                    src,
                    layer.meta.trailer.clone(),
                )
            }
        }
        _ => bail!("commit takes DATA [INDEX] OUT"),
    })
}

fn seal(data: &Path, index: &Path) -> Result<ExitCode> {
    let l = RwLayer::open(data, index).with_context(|| data.display().to_string())?;
    let n = l.mappings().len();
    let size = l.seal()?;
    println!(
        "sealed {} ({n} extents, {size} bytes); {} is no longer needed",
        data.display(),
        index.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints what one layer file is.
fn info(path: &Path) -> Result<()> {
    let (h, src, wrapping) = peek_header(path)?;
    println!("{}:", path.display());
    println!("  wrapping:      {}", wrapping_text(&wrapping));
    // Only data files with a trailer have an index to load; load it once.
    let layer = if h.has(flags::DATA_FILE) && !h.has(flags::SPARSE_RW) {
        RoLayer::open(&*src).ok()
    } else {
        None
    };
    let kind = if h.has(flags::SPARSE_RW) {
        "sparse writable layer"
    } else if !h.has(flags::DATA_FILE) {
        "writable layer index file"
    } else if h.has(flags::SEALED) {
        "committed layer"
    } else if layer.is_some() {
        "sealed writable layer"
    } else {
        "writable layer data file"
    };
    println!("  kind:          {kind}");
    println!("  virtual size:  {}", h.virtual_size);
    println!("  uuid:          {}", uuid_text(h.uuid));
    println!("  parent uuid:   {}", uuid_text(h.parent_uuid));
    println!("  version:       {}.{}", h.version, h.sub_version);
    if !h.user_tag.is_empty() {
        println!("  message:       {}", String::from_utf8_lossy(&h.user_tag));
    }
    if let Some(layer) = layer {
        let m = &layer.meta;
        println!("  extents:       {}", m.extents);
        println!(
            "  index entries: {} (padding included)",
            m.trailer.index_size
        );
        println!("  data size:     {} bytes", m.data_sectors * 512);
        println!("  index memory:  {} bytes", layer.index.heap_bytes());
    }
    Ok(())
}

/// `none`, `zfile`, `tar + zfile` or `tar + `.
fn wrapping_text(wrapping: &blob::Wrapping) -> String {
    match (wrapping.envelope, wrapping.zfile) {
        (EnvelopeKind::None, false) => "none".to_string(),
        (e, z) => format!(
            "{}{}",
            if e == EnvelopeKind::None {
                ""
            } else {
                "tar + "
            },
            if z { "zfile" } else { "" }
        ),
    }
}

fn cat(
    layers: &[PathBuf],
    output: &Path,
    upper: Option<&[PathBuf]>,
    check_chain: bool,
) -> Result<ExitCode> {
    let start = Instant::now();
    let lowers = layers
        .iter()
        .map(|p| open_lower(p))
        .collect::<Result<Vec<_>>>()?;
    let upper = upper.map(open_upper).transpose()?;
    let stack = Stack::new(lowers, upper)?;
    if check_chain {
        stack.check_chain()?;
    }
    let out = File::create(output).with_context(|| format!("create {}", output.display()))?;
    let data = stack.write_sparse(&out)?;
    out.sync_all()?;
    println!(
        "{}: {} bytes of disk, {data} bytes of data from {} layers, {:.2} s",
        output.display(),
        stack.virtual_size(),
        layers.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
