//! `overlaybd-daemon`: serves images as block devices (FUSE file + loop device, NBD).
//!
//! ```text
//! overlaybd-daemon [--config /etc/overlaybd-daemon/config.toml]   run the daemon
//! overlaybd-daemon ctl [--socket S] attach ID CONFIG [--nbd] [--no-block]
//! overlaybd-daemon ctl detach ID | list | stats ID | trace-start ID PATH | trace-stop ID
//! overlaybd-daemon fdstore SOCKET     the descriptor keeper (started by the daemon)
//! ```
//!
//! SIGTERM and SIGINT stop the daemon *without* detaching anything: the devices stay
//! attached, their FUSE connections are kept by the keeper, and the next start serves them
//! again. Detach devices through the API to remove them.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use overlaybd_api::pb;
use overlaybd_daemon::api;
use overlaybd_daemon::compat;
use overlaybd_daemon::config::DaemonConfig;
use overlaybd_daemon::daemon::Daemon;

#[derive(Parser, Debug)]
#[command(version, about = "Serves overlaybd images as block devices")]
struct Cli {
    /// The daemon's TOML config (default /etc/overlaybd-daemon/config.toml; without it,
    /// overlaybd's /etc/overlaybd/overlaybd.json if present, else every default; a file named
    /// here must exist; a .json file is read as overlaybd's format).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Talk to a running daemon.
    Ctl {
        /// The API socket (default: the config's `socket`).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        op: Op,
    },
    /// Run the descriptor keeper on SOCKET (the daemon starts it).
    Fdstore { socket: PathBuf },
}

#[derive(Subcommand, Debug)]
enum Op {
    /// Attach the image of CONFIG (a config.v1.json) as device ID.
    Attach {
        id: String,
        config: PathBuf,
        /// Also export over NBD (export name = ID).
        #[arg(long)]
        nbd: bool,
        /// No FUSE file and loop device.
        #[arg(long)]
        no_block: bool,
    },
    Detach {
        id: String,
    },
    List,
    Stats {
        id: String,
    },
    TraceStart {
        id: String,
        path: PathBuf,
    },
    TraceStop {
        id: String,
    },
}

const DEFAULT_CONFIG: &str = "/etc/overlaybd-daemon/config.toml";

/// The overlaybd JSON config a config came from, and the settings of it not taken.
type FromJson = Option<(PathBuf, Vec<String>)>;

/// The config named by `--config` (which must exist; a `.json` file is overlaybd's own
/// format), else the default file if there is one, else overlaybd's
/// `/etc/overlaybd/overlaybd.json` if there is one (a node that swapped overlaybd's daemon
/// for this one), else every default. With it, the overlaybd settings not taken, to warn about
/// once logging is up.
fn load_config(path: Option<&Path>) -> anyhow::Result<(DaemonConfig, FromJson)> {
    let json = |p: &Path| -> anyhow::Result<(DaemonConfig, FromJson)> {
        let text =
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()))?;
        let (c, warnings) = compat::from_overlaybd_json(&text, &p.display().to_string())?;
        Ok((c, Some((p.to_path_buf(), warnings))))
    };
    match path {
        Some(p) if !p.exists() => anyhow::bail!(
            "--config {}: no such file (leave --config out to use {DEFAULT_CONFIG} or the defaults)",
            p.display()
        ),
        Some(p) if p.extension().is_some_and(|e| e == "json") => json(p),
        Some(p) => Ok((DaemonConfig::load(p)?, None)),
        None if Path::new(DEFAULT_CONFIG).exists() => {
            Ok((DaemonConfig::load(Path::new(DEFAULT_CONFIG))?, None))
        }
        None if Path::new(compat::OVERLAYBD_JSON).exists() => json(Path::new(compat::OVERLAYBD_JSON)),
        None => Ok((DaemonConfig::default(), None)),
    }
}

/// Errors end here: one line with every cause, exit status 1 (no backtrace).
fn main() -> std::process::ExitCode {
    match main_result() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlaybd-daemon: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main_result() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Fdstore { socket }) => Ok(overlaybd_daemon::fdstore::serve(&socket)?),
        Some(Cmd::Ctl { socket, op }) => {
            let socket = match socket {
                Some(s) => s,
                None => load_config(cli.config.as_deref())?.0.socket,
            };
            ctl(&socket, op)
        }
        None => {
            let (cfg, from_json) = load_config(cli.config.as_deref())?;
            run(cfg, from_json)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn print_device(d: &pb::Device) {
    println!(
        "{}\tsize={}\tro={}\tloop={}\tfuse={}\tnbd={}\ttrace={}{}\tstate={}",
        d.id,
        d.size,
        d.read_only,
        or_dash(&d.loop_device),
        or_dash(&d.fuse_file),
        or_dash(&d.nbd_export),
        d.trace_mode,
        if d.recording { "(recording)" } else { "" },
        d.state
    );
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn ctl(socket: &Path, op: Op) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut c = overlaybd_api::connect(socket).await?;
        match op {
            Op::Attach {
                id,
                config,
                nbd,
                no_block,
            } => {
                let config = std::fs::canonicalize(&config)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
                let d = c
                    .attach(pb::AttachRequest {
                        id,
                        config_path: config.display().to_string(),
                        block: !no_block,
                        nbd,
                    })
                    .await?
                    .into_inner();
                print_device(&d);
            }
            Op::Detach { id } => {
                c.detach(pb::DetachRequest { id }).await?;
            }
            Op::List => {
                for d in c.list(pb::ListRequest {}).await?.into_inner().devices {
                    print_device(&d);
                }
            }
            Op::Stats { id } => {
                print!(
                    "{}",
                    c.stats(pb::StatsRequest { id })
                        .await?
                        .into_inner()
                        .prometheus
                );
            }
            Op::TraceStart { id, path } => {
                let path = std::path::absolute(&path)?;
                c.start_trace(pb::StartTraceRequest {
                    id,
                    path: path.display().to_string(),
                })
                .await?;
            }
            Op::TraceStop { id } => {
                let p = c
                    .stop_trace(pb::StopTraceRequest { id })
                    .await?
                    .into_inner();
                println!("{}", p.path);
            }
        }
        Ok(())
    })
}

/// glibc raises its mmap threshold each time a large buffer is freed (up to 32 MiB); after
/// that, the cache's fetch runs (up to 16 MiB) and NBD request buffers are carved from
/// per-thread arenas and stay resident after they are freed: tens of MiB per device. A fixed
/// threshold keeps every buffer of 1 MiB or more in its own mapping, returned when freed.
fn fixed_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn run(cfg: DaemonConfig, from_json: FromJson) -> anyhow::Result<()> {
    fixed_mmap_threshold();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some((path, warnings)) = from_json {
        tracing::info!(config = %path.display(), "overlaybd's config: the settings that mean the same here are used");
        for w in warnings {
            tracing::warn!("{}: {w}", path.display());
        }
    }
    let exe = std::env::current_exe()?;
    let socket = cfg.socket.clone();
    let metrics = cfg.metrics_address.clone();
    let daemon = Daemon::start(cfg, Some(&exe))?;
    if !metrics.is_empty() {
        let d = daemon.clone();
        overlaybd_metrics::serve(&metrics, move || d.render_metrics())?;
    }
    tracing::info!(
        "overlaybd-daemon serving {} ({} devices restored)",
        socket.display(),
        daemon.list().len()
    );
    runtime()?.block_on(async {
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            tracing::info!("stopping; devices stay attached for the next start");
        };
        api::serve(daemon.clone(), &socket, stop).await
    })?;
    // Exit without detaching: the next daemon takes the devices over.
    std::process::exit(0)
}
