//! `overlaybd-snapshotter`: containerd's Snapshots service for overlaybd images, as a
//! containerd proxy plugin.
//!
//! ```text
//! overlaybd-snapshotter [--config /etc/overlaybd-snapshotter/config.toml]
//! overlaybd-snapshotter rpull [--address SOCK] [-n NS] [--plain-http] [--hosts-dir DIR]
//!                             [-u USER:PASS] [--download-blobs] REF
//! overlaybd-snapshotter record-trace [pull flags] [--time S] [--work-dir D] --out FILE REF [CMD…]
//! overlaybd-snapshotter install-containerd-config [--root /host] [--config-version 2|3]
//!                                                 [--dry-run] [--restart]
//! ```
//!
//! `rpull` (also `obdctl rpull`) pulls an image into containerd with the labels that let this
//! snapshotter keep overlaybd layers remote. `record-trace` pulls it so, runs it through
//! containerd with trace recording on, and writes the trace to FILE
//! (`overlaybd-convertor record-trace` uses it to make an image's acceleration layer).
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
    /// The TOML config (default /etc/overlaybd-snapshotter/config.toml; without it, overlaybd's
    /// snapshotter's /etc/overlaybd-snapshotter/config.json if present, else every default; a
    /// file named here must exist; a .json file is read as that snapshotter's format).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Pull an image into containerd so that its overlaybd layers stay remote.
    Rpull(RpullArgs),
    /// Pull an overlaybd image lazily, run it with trace recording on, write the trace.
    RecordTrace(RecordTraceArgs),
    /// Put overlaybd's settings into containerd's configuration (merged into a `version = 2`
    /// config.toml; a drop-in plus an `imports` entry for `version = 3`).
    InstallContainerdConfig(InstallArgs),
}

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// The host's root directory (where a container mounted it, e.g. /host).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// The config version to write when there is no config.toml (2: containerd 1.x, 3: 2.x);
    /// default: what `containerd --version` says.
    #[arg(long)]
    config_version: Option<i64>,
    /// Print what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Restart containerd (systemctl, in the host's namespaces) if anything was written.
    #[arg(long)]
    restart: bool,
}

#[derive(clap::Args, Debug)]
pub struct RecordTraceArgs {
    #[command(flatten)]
    pull: RpullArgs,
    /// Seconds the container runs before it is stopped.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Where the trace is written while recording (a temporary directory under it).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where the trace goes.
    #[arg(long)]
    out: PathBuf,
    /// The command to run (default: the image's).
    #[arg(last = true)]
    command: Vec<String>,
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
    /// Fail when an overlaybd layer cannot be read lazily, instead of downloading it.
    #[arg(long)]
    no_fallback: bool,
    reference: String,
}

/// The pull settings of `rpull`'s flags.
fn pull_options(a: RpullArgs) -> overlaybd_containerd::rpull::Options {
    let credentials = a.user.as_deref().map(|u| {
        let (user, pass) = u.split_once(':').unwrap_or((u, ""));
        overlaybd_registry::auth::Credentials {
            username: user.into(),
            password: pass.into(),
        }
    });
    overlaybd_containerd::rpull::Options {
        address: a.address,
        namespace: a.namespace,
        snapshotter: a.snapshotter,
        plain_http: a.plain_http,
        hosts_dir: Some(a.hosts_dir),
        credentials,
        download_blobs: a.download_blobs,
        no_fallback: a.no_fallback,
    }
}

fn rpull(a: RpullArgs) -> anyhow::Result<()> {
    let reference = a.reference.clone();
    let opts = pull_options(a);
    let t = std::time::Instant::now();
    let p = overlaybd_containerd::rpull::rpull(&reference, &opts)?;
    let turbo = if p.turbo_oci > 0 {
        format!(
            " (of the layers, {} TurboOCI meta layers: their files are read lazily from the original layers)",
            p.turbo_oci
        )
    } else {
        String::new()
    };
    println!(
        "pulled {} ({}): {} layers, {} remote, {} unpacked{turbo}, {} already present; {} bytes from the registry in {:.2} s",
        p.name,
        p.manifest_digest,
        p.layers,
        p.remote,
        p.unpacked,
        p.existing,
        p.bytes_fetched,
        t.elapsed().as_secs_f64()
    );
    for n in &p.not_lazy {
        eprintln!(
            "warning: layer {}/{} ({}) was downloaded and unpacked, not read lazily: {} \
             (`rpull --no-fallback` fails instead; docs/getting-started.md, \"When a pull is not lazy\")",
            n.layer + 1,
            p.layers,
            n.digest,
            if n.why.is_empty() {
                "the snapshotter gave no reason (is it overlaybd-snapshotter?)"
            } else {
                &n.why
            }
        );
    }
    Ok(())
}

fn record_trace(a: RecordTraceArgs) -> anyhow::Result<()> {
    let reference = a.pull.reference.clone();
    let opts = overlaybd_containerd::record::RecordOptions {
        pull: pull_options(a.pull),
        time: std::time::Duration::from_secs(a.time),
        command: a.command,
        work_dir: a.work_dir,
    };
    let trace = overlaybd_containerd::record::record_trace(&reference, &opts)?;
    std::fs::write(&a.out, &trace)
        .map_err(|e| anyhow::anyhow!("write the trace to {}: {e}", a.out.display()))?;
    println!(
        "recorded a trace of {} bytes into {}",
        trace.len(),
        a.out.display()
    );
    Ok(())
}

fn install_containerd_config(a: InstallArgs) -> anyhow::Result<()> {
    use snapshotter::containerd_config as cc;
    let plan = cc::plan(&a.root, a.config_version)?;
    if plan.files.is_empty() {
        println!(
            "containerd's configuration (version {}) already has overlaybd's settings; nothing written",
            plan.version
        );
        return Ok(());
    }
    for f in &plan.files {
        let p = f.host_path.display();
        match (a.dry_run, f.before.is_some()) {
            (true, _) => println!("would write {p}:"),
            (false, true) => println!("wrote {p} (its old text: {p}.bak):"),
            (false, false) => println!("created {p}:"),
        }
        for c in &f.changes {
            println!("  {c}");
        }
    }
    if a.dry_run {
        return Ok(());
    }
    cc::apply(&a.root, &plan)?;
    if !a.restart {
        println!("restart containerd to load it (systemctl restart containerd)");
        return Ok(());
    }
    // From a container, systemctl runs in the host's namespaces (the pod needs hostPID).
    let mut cmd = if a.root == std::path::Path::new("/") {
        std::process::Command::new("systemctl")
    } else {
        let mut c = std::process::Command::new("nsenter");
        c.args([
            "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--",
        ])
        .arg("systemctl");
        c
    };
    let st = cmd
        .args(["restart", "containerd"])
        .status()
        .map_err(|e| anyhow::anyhow!("restart containerd: {e}; restart it by hand"))?;
    anyhow::ensure!(
        st.success(),
        "systemctl restart containerd: {st}; restart it by hand"
    );
    println!("restarted containerd");
    Ok(())
}

const DEFAULT_CONFIG: &str = "/etc/overlaybd-snapshotter/config.toml";

/// The overlaybd JSON config a config came from, and the settings of it not taken.
type FromJson = Option<(PathBuf, Vec<String>)>;

/// Errors end here: one line with every cause, exit status 1 (no backtrace).
fn main() -> std::process::ExitCode {
    match main_result() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlaybd-snapshotter: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main_result() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Rpull(a)) => return rpull(a),
        Some(Cmd::RecordTrace(a)) => return record_trace(a),
        Some(Cmd::InstallContainerdConfig(a)) => return install_containerd_config(a),
        None => {}
    }
    let json = |p: &std::path::Path| -> anyhow::Result<(Config, FromJson)> {
        let text =
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()))?;
        let (c, w) = snapshotter::compat::from_aci_json(&text, &p.display().to_string())?;
        Ok((c, Some((p.to_path_buf(), w))))
    };
    let default = std::path::Path::new(DEFAULT_CONFIG);
    let aci = std::path::Path::new(snapshotter::compat::ACI_JSON);
    let (cfg, from_json) = match &cli.config {
        Some(p) if !p.exists() => anyhow::bail!(
            "--config {}: no such file (leave --config out to use {DEFAULT_CONFIG} or the defaults)",
            p.display()
        ),
        Some(p) if p.extension().is_some_and(|e| e == "json") => json(p)?,
        Some(p) => (Config::load(p)?, None),
        // A node that swapped overlaybd's snapshotter for this one keeps its config.json.
        None if !default.exists() && aci.exists() => json(aci)?,
        None => (Config::load(default)?, None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cfg.log)
                .map_err(|e| anyhow::anyhow!("log filter {:?}: {e}", cfg.log))?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some((path, warnings)) = from_json {
        tracing::info!(config = %path.display(), "overlaybd's snapshotter config: the settings that mean the same here are used");
        for w in warnings {
            tracing::warn!("{}: {w}", path.display());
        }
    }
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
        // Devices whose last container went linger, then go.
        let linger = sn.config().device_linger_secs;
        let tick = std::time::Duration::from_secs((linger / 4).clamp(1, 5));
        let reaper = sn.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                if let Err(e) = reaper.release_idle_devices().await {
                    tracing::warn!("releasing unused devices: {e}");
                }
            }
        });
        service::serve(Service { sn, metrics }, &socket, stop).await
    })?;
    Ok(())
}
