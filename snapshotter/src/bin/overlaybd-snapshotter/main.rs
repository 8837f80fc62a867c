//! `overlaybd-snapshotter`: containerd's Snapshots service for overlaybd images, as a
//! containerd proxy plugin.
//!
//! ```text
//! overlaybd-snapshotter [--config /etc/overlaybd-snapshotter/config.toml]
//! overlaybd-snapshotter rpull [--address SOCK] [-n NS] [--plain-http] [--hosts-dir DIR]
//!                             [-u USER:PASS] [--download-blobs] REF
//! ```
//!
//! `rpull` (also `obdctl rpull`) pulls an image into containerd with the labels that let this
//! snapshotter keep overlaybd layers remote.
//!
//! containerd's `config.toml`:
//!
//! ```toml
//! [proxy_plugins.overlaybd]
//!   type = "snapshot"
//!   address = "/run/overlaybd-snapshotter/overlaybd.sock"
//! ```
//!
//! It holds no kernel state of its own (mounts and devices belong to the kernel and the
//! daemon; metadata is in its store), so it can be stopped, killed or upgraded while
//! containers run.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use snapshotter::config::Config;
use snapshotter::service::{self, Metrics, Service};
use snapshotter::snapshotter::Snapshotter;

#[derive(Parser, Debug)]
#[command(version, about = "containerd snapshotter for overlaybd images")]
struct Cli {
    /// The TOML config (absent file = defaults).
    #[arg(long, default_value = "/etc/overlaybd-snapshotter/config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Pull an image into containerd so that its overlaybd layers stay remote.
    Rpull(RpullArgs),
}

#[derive(clap::Args, Debug)]
pub struct RpullArgs {
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[arg(long, default_value = "overlaybd")]
    snapshotter: String,
    /// Plain HTTP to the registry (unless a hosts.toml says otherwise).
    #[arg(long)]
    plain_http: bool,
    /// containerd's registry hosts directory.
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    hosts_dir: PathBuf,
    /// Registry credentials, USER:PASSWORD (default: Docker's config.json).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Download overlaybd layers instead of reading them on demand.
    #[arg(long)]
    download_blobs: bool,
    reference: String,
}

fn rpull(a: RpullArgs) -> anyhow::Result<()> {
    let credentials = a.user.as_deref().map(|u| {
        let (user, pass) = u.split_once(':').unwrap_or((u, ""));
        overlaybd_registry::auth::Credentials {
            username: user.into(),
            password: pass.into(),
        }
    });
    let opts = overlaybd_containerd::rpull::Options {
        address: a.address,
        namespace: a.namespace,
        snapshotter: a.snapshotter,
        plain_http: a.plain_http,
        hosts_dir: Some(a.hosts_dir),
        credentials,
        download_blobs: a.download_blobs,
    };
    let t = std::time::Instant::now();
    let p = overlaybd_containerd::rpull::rpull(&a.reference, &opts)?;
    println!(
        "pulled {} ({}): {} layers, {} remote, {} unpacked, {} already present; {} bytes from the registry in {:.2} s",
        p.name,
        p.manifest_digest,
        p.layers,
        p.remote,
        p.unpacked,
        p.existing,
        p.bytes_fetched,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Rpull(a)) = cli.cmd {
        return rpull(a);
    }
    let cfg = Config::load(&cli.config)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cfg.log)
                .map_err(|e| anyhow::anyhow!("log filter {:?}: {e}", cfg.log))?,
        )
        .with_writer(std::io::stderr)
        .init();
    let socket = cfg.socket.clone();
    let metrics_address = cfg.metrics_address.clone();
    let sn = Arc::new(Snapshotter::open(cfg)?);
    let metrics = Arc::new(Metrics::default());
    if !metrics_address.is_empty() {
        let m = metrics.clone();
        overlaybd_metrics::serve(&metrics_address, move || m.render())?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    tracing::info!(socket = %socket.display(), "overlaybd-snapshotter serving");
    rt.block_on(async {
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            tracing::info!("stopping; mounts and devices stay for the next start");
        };
        service::serve(Service { sn, metrics }, &socket, stop).await
    })?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
