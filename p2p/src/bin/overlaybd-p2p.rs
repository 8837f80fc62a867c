//! `overlaybd-p2p --role root|agent [--config FILE] [--listen ADDR]`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use p2p::config::{Config, Role};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A P2P tree node (root or agent) serving overlaybd's blob range reads"
)]
struct Args {
    /// `root` or `agent` (overrides the config's `role`).
    #[arg(long)]
    role: Option<Role>,
    /// TOML configuration (see docs/p2p.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// `host:port` to listen on (overrides the config's `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// The URL other nodes reach this one at (overrides the config's `advertise`).
    #[arg(long)]
    advertise: Option<String>,
}

/// Errors end here: one line with every cause, exit status 1 (no backtrace).
const DEFAULT_CONFIG: &str = "/etc/overlaybd/p2p.toml";

fn main() -> std::process::ExitCode {
    match main_result() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlaybd-p2p: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main_result() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg = match &args.config {
        Some(p) if !p.exists() => anyhow::bail!(
            "--config {}: no such file (leave --config out to use {DEFAULT_CONFIG} or the defaults)",
            p.display()
        ),
        Some(p) => Config::load(p)?,
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(std::path::Path::new(DEFAULT_CONFIG))?
        }
        None => Config::default(),
    };
    if let Some(r) = args.role {
        cfg.role = r;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(a) = args.advertise {
        cfg.advertise = a;
    }
    let cfg = cfg.finish()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("listen on {}", cfg.listen))?;
        tracing::info!(
            role = ?cfg.role,
            listen = cfg.listen,
            advertise = cfg.advertise,
            roots = ?cfg.roots,
            "overlaybd-p2p ready"
        );
        let node = p2p::node::Node::new(cfg)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = p2p::node::serve(node, listener) => r.context("accept")?,
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
        Ok(())
    })
}
