//! `overlaybd-snapshotter`: containerd's Snapshots service for overlaybd images, as a
//! containerd proxy plugin.
//!
//! ```text
//! overlaybd-snapshotter [--config /etc/overlaybd-snapshotter/config.toml]
//! ```
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

use clap::Parser;
use snapshotter::config::Config;
use snapshotter::service::{self, Metrics, Service};
use snapshotter::snapshotter::Snapshotter;

#[derive(Parser, Debug)]
#[command(version, about = "containerd snapshotter for overlaybd images")]
struct Cli {
    /// The TOML config (absent file = defaults).
    #[arg(long, default_value = "/etc/overlaybd-snapshotter/config.toml")]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
        overlaybd::metrics::serve(&metrics_address, move || m.render())?;
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
