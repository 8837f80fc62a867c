//! `overlaybd-convertor`: converts OCI / Docker images into overlaybd images, without root.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use convertor::convert::{convert, Options};
use convertor::layer::{Compression, FsType};
use convertor::progress::{Progress, Quiet, Reporter};
use convertor::remote::{Remote, RemoteOptions};
use convertor::store::{ImageRef, Layout, Location, Store};
use overlaybd_registry::auth::Credentials;
use zfile::Algorithm;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Convert OCI images into overlaybd images (no root needed)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// containerd's hosts directory, when this machine has one.
fn default_hosts_dir() -> Option<PathBuf> {
    Some(PathBuf::from("/etc/containerd/certs.d")).filter(|d| d.is_dir())
}

#[derive(clap::Args, Debug)]
struct RegistryArgs {
    /// Talk plain HTTP to the registries.
    #[arg(long)]
    plain_http: bool,
    /// Accept any TLS certificate.
    #[arg(long)]
    insecure: bool,
    /// containerd's registry hosts directory (`certs.d` with `hosts.toml`; default
    /// /etc/containerd/certs.d when it exists, as containerd, the snapshotter and the daemon).
    #[arg(long, value_name = "DIR")]
    hosts_dir: Option<PathBuf>,
    /// Docker's config.json with credentials (default: $DOCKER_CONFIG or ~/.docker).
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
    /// Credentials for both registries, `user:password` (wins over config.json).
    #[arg(short = 'u', long, value_name = "USER:PASSWORD")]
    user: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Convert SRC into DST. Each is `[host[:port]/]repo[:tag][@digest]` or `oci:DIR[:tag]`.
    Convert(ConvertArgs),
    /// Run the overlaybd image SRC in a container with trace recording, and push it as DST
    /// with the trace as its acceleration layer (prefetched when DST's containers start).
    /// Needs containerd with overlaybd-snapshotter and overlaybd-daemon.
    RecordTrace(RecordTraceArgs),
    /// Check every file of the converted image DST (content and metadata) against SRC.
    Verify(VerifyArgs),
}

#[derive(clap::Args, Debug)]
struct ConvertArgs {
    src: String,
    dst: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Block compression of the layers (zstd: 1.1x the gzip layers' size, where lz4 over 4 KiB
    /// blocks, overlaybd's default, is 1.6x; starts are no slower, but local sequential reads
    /// are a third slower: `docs/benchmarks.md`).
    #[arg(long, default_value = "zstd", value_parser = ["lz4", "zstd"])]
    algorithm: String,
    /// Uncompressed bytes per ZFile block (4096 to 65536, a power of two).
    #[arg(long, default_value_t = 16384)]
    block_size: u32,
    /// The layers' filesystem: ext4 (overlaybd's), or erofs (read-only, smaller; needs
    /// erofs-utils 1.9 or later: `mkfs.erofs` in PATH or $OBD_MKFS_EROFS).
    #[arg(long, default_value = "ext4", value_parser = ["ext4", "erofs"])]
    fs: String,
    /// Virtual disk size in GiB.
    #[arg(long, default_value_t = 64)]
    vsize: u64,
    /// OCI media types in the output (else those of the source's family).
    #[arg(long)]
    oci: bool,
    /// Layers downloaded at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Compression threads per layer (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Where the work disk goes (default: $TMPDIR).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Database of converted layers (created if missing): layers converted before, for
    /// the same settings, are reused instead of converted again.
    #[arg(long, value_name = "PATH", conflicts_with = "dedup_registry")]
    dedup_db: Option<PathBuf>,
    /// The same, shared through a repository of DST's registry (`host/repository`): every
    /// runner that pushes there reuses what another converted. One small OCI artifact per
    /// converted layer, whose layer is the converted blob (mounted there).
    #[arg(long, value_name = "REPOSITORY")]
    dedup_registry: Option<String>,
    /// With --dedup-registry: a file holding a secret shared by the runners (16 bytes or
    /// more); records are signed with it, and unsigned or forged ones are ignored. Without it,
    /// whoever can push to the cache repository can make runners reuse any blob.
    #[arg(long, value_name = "PATH", requires = "dedup_registry")]
    dedup_secret_file: Option<PathBuf>,
    /// Make a TurboOCI meta image instead: SRC's layers stay as they are (copied into DST's
    /// repository when missing), and DST holds, per layer, the ext4 metadata and a gzip index
    /// that let overlaybd read the original layer lazily. Plain tar and gzip layers are read
    /// in place; a zstd layer becomes a native overlaybd layer of DST.
    #[arg(long)]
    turbo_oci: bool,
    /// With --turbo-oci: make DST an OCI 1.1 referrer of SRC (`subject`, `artifactType`), so a
    /// registry lists it beside the original.
    #[arg(long, requires = "turbo_oci")]
    referrer: bool,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct RecordTraceArgs {
    src: String,
    dst: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// containerd namespace the recording container runs in.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Seconds the container runs before it is stopped (SIGTERM, then SIGKILL).
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Where the trace is written (default: $TMPDIR).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// The command to run (default: the image's).
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    src: String,
    dst: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Where downloaded layers go while they are read (default: $TMPDIR).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

fn open_store(r: &ImageRef, reg: &RegistryArgs, push: bool) -> convertor::Result<Box<dyn Store>> {
    Ok(match &r.location {
        Location::Layout(dir) => Box::new(Layout::open(dir, push)?),
        Location::Registry { host, repository } => {
            let credentials = match &reg.user {
                Some(u) => {
                    let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                    Some(Credentials {
                        username: user.to_string(),
                        password: pass.to_string(),
                    })
                }
                None => None,
            };
            let opts = RemoteOptions {
                plain_http: reg.plain_http,
                insecure: reg.insecure,
                hosts_dir: reg.hosts_dir.clone().or_else(default_hosts_dir),
                docker_config: reg.docker_config.clone(),
                credentials,
            };
            Box::new(Remote::open(host, repository, &opts, push)?)
        }
    })
}

/// Opens `text` (a reference) as the image to read from (`push` false) or to write to.
fn open(text: &str, r: &ImageRef, reg: &RegistryArgs, push: bool) -> Result<Box<dyn Store>> {
    open_store(r, reg, push).with_context(|| format!("open {text}"))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Convert(a) => convert_cmd(a),
        Cmd::RecordTrace(a) => record_trace_cmd(a),
        Cmd::Verify(a) => verify_cmd(a),
    }
}

fn convert_cmd(a: ConvertArgs) -> Result<()> {
    let s = ImageRef::parse(&a.src)?;
    let d = ImageRef::parse(&a.dst)?;
    if d.digest.is_some() {
        bail!("the destination {:?} cannot name a digest", a.dst);
    }
    if a.vsize == 0 || a.vsize > 1 << 20 {
        bail!("--vsize {} GiB is out of range", a.vsize);
    }
    let src_store = open(&a.src, &s, &a.registry, false)?;
    let dst_store = open(&a.dst, &d, &a.registry, true)?;
    let opts = Options {
        vsize: a.vsize << 30,
        compression: Compression {
            algorithm: if a.algorithm == "zstd" {
                Algorithm::Zstd
            } else {
                Algorithm::Lz4
            },
            block_size: a.block_size,
            threads: a
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        },
        oci: a.oci,
        concurrency: a.concurrency,
        work_dir: a.work_dir,
        dedup: match (&a.dedup_db, &a.dedup_registry) {
            (Some(p), _) => Some(std::sync::Arc::new(convertor::dedup::DedupDb::open(p)?) as _),
            (None, Some(r)) => {
                let cache = ImageRef::parse(r)?;
                let (Location::Registry { host, .. }, None, None) =
                    (&cache.location, &cache.tag, &cache.digest)
                else {
                    bail!("--dedup-registry {r:?}: expected a repository (host/name), no tag");
                };
                // Records hold the converted blob, mounted from DST's repository.
                match &d.location {
                    Location::Registry { host: dh, .. } if dh == host => {}
                    _ => bail!(
                        "--dedup-registry {r:?}: the cache repository must be on the \
                         destination's registry ({})",
                        a.dst
                    ),
                }
                let secret = match &a.dedup_secret_file {
                    Some(p) => {
                        let s = std::fs::read(p)
                            .with_context(|| format!("read --dedup-secret-file {}", p.display()))?;
                        let s = s.trim_ascii().to_vec();
                        if s.len() < 16 {
                            bail!(
                                "--dedup-secret-file {}: at least 16 bytes of secret",
                                p.display()
                            );
                        }
                        Some(s)
                    }
                    None => None,
                };
                let store = open(r, &cache, &a.registry, true)?;
                Some(std::sync::Arc::new(convertor::dedup::RegistryCache::new(store, secret)) as _)
            }
            (None, None) => None,
        },
        turbo_oci: a.turbo_oci,
        referrer: a.referrer,
        fs: if a.fs == "erofs" {
            FsType::Erofs
        } else {
            FsType::Ext4
        },
    };
    if a.turbo_oci && opts.dedup.is_some() {
        bail!(
            "--dedup-db and --dedup-registry are not supported with --turbo-oci yet: meta \
             layers are converted every time"
        );
    }
    let progress: Box<dyn Progress> = if a.quiet {
        Box::new(Quiet)
    } else {
        Box::new(Reporter::default())
    };
    let tag = d.tag.clone().unwrap_or_else(|| "latest".into());
    let (desc, converted) = convert(
        &*src_store,
        &s.reference(),
        &*dst_store,
        Some(&tag),
        &opts,
        &*progress,
    )?;
    for c in &converted {
        for (i, l) in c.layers.iter().enumerate() {
            println!(
                "layer {i}: {} ({} bytes) -> {} ({} bytes, {}){}",
                l.source_digest,
                l.source_size,
                l.blob.digest,
                l.blob.size,
                l.blob.integrity_root,
                if l.reused { ", reused" } else { "" }
            );
        }
    }
    // The size against the source's layers (what a full download costs, and what registry
    // storage grows by), per manifest.
    for c in &converted {
        let (from, to) = c.layers.iter().fold((0u64, 0u64), |(a, b), l| {
            (a + l.source_size, b + l.blob.size)
        });
        if from > 0 && !opts.turbo_oci {
            println!(
                "size: {:.1} MB of source layers -> {:.1} MB converted ({:.2}x)",
                from as f64 / 1e6,
                to as f64 / 1e6,
                to as f64 / from as f64
            );
        }
    }
    let out = ImageRef {
        tag: Some(tag),
        ..d
    };
    println!("{out}@{}", desc.digest);
    Ok(())
}

fn record_trace_cmd(a: RecordTraceArgs) -> Result<()> {
    let s = ImageRef::parse(&a.src)?;
    let d = ImageRef::parse(&a.dst)?;
    if !matches!(s.location, Location::Registry { .. }) {
        bail!(
            "record-trace runs the image from a registry: {} is not one",
            a.src
        );
    }
    let src_store = open(&a.src, &s, &a.registry, false)?;
    let dst_store = open(&a.dst, &d, &a.registry, true)?;
    let mut rpull_args = Vec::new();
    if a.registry.plain_http {
        rpull_args.push("--plain-http".to_string());
    }
    if let Some(h) = &a.registry.hosts_dir {
        rpull_args.push("--hosts-dir".into());
        rpull_args.push(h.display().to_string());
    }
    if let Some(u) = &a.registry.user {
        rpull_args.push("-u".into());
        rpull_args.push(u.clone());
    }
    let opts = convertor::record_trace::Options {
        address: a.address,
        namespace: a.namespace,
        time: std::time::Duration::from_secs(a.time),
        command: a.command,
        work_dir: a.work_dir,
        rpull_args,
    };
    let (desc, n) = convertor::record_trace::record_trace(
        &*src_store,
        &s.reference(),
        &a.src,
        &*dst_store,
        d.tag.as_deref(),
        &opts,
    )?;
    println!(
        "{}: {} (trace of {n} bytes as the acceleration layer)",
        a.dst, desc.digest
    );
    Ok(())
}

fn verify_cmd(a: VerifyArgs) -> Result<()> {
    let s = ImageRef::parse(&a.src)?;
    let d = ImageRef::parse(&a.dst)?;
    let src_store = open(&a.src, &s, &a.registry, false)?;
    let dst_store = open(&a.dst, &d, &a.registry, false)?;
    let tmp = match &a.work_dir {
        Some(w) => tempfile::Builder::new()
            .prefix("obdverify-")
            .tempdir_in(w)?,
        None => tempfile::Builder::new().prefix("obdverify-").tempdir()?,
    };
    let results = convertor::verify::verify_images(
        &*src_store,
        &s.reference(),
        &*dst_store,
        &d.reference(),
        tmp.path(),
    )?;
    let mut bad = 0;
    for r in &results {
        println!(
            "{} -> {} ({}): {} entries, {} differences",
            r.source_manifest,
            r.converted_manifest,
            r.kind,
            r.entries,
            r.differences.len()
        );
        for line in r.differences.iter().take(50) {
            println!("  {line}");
        }
        bad += r.differences.len();
    }
    if bad > 0 {
        bail!("{bad} differences");
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlaybd-convertor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
