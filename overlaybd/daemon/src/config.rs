//! The daemon's TOML config, field by field with defaults (also in `docs/daemon.md`),
//! validated at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Device records (for restarts) and the descriptor keeper's socket.
    pub state_dir: PathBuf,
    /// The local API's unix socket (gRPC, mode 0600).
    pub socket: PathBuf,
    /// Where each device's FUSE file is mounted (`<run_dir>/<id>.img`).
    pub run_dir: PathBuf,
    /// The blob cache.
    pub cache_dir: PathBuf,
    /// The cache's capacity, in MiB.
    pub cache_size_mb: u64,
    /// containerd's registry hosts directory (`certs.d` layout with `hosts.toml`); "" = none.
    pub hosts_dir: PathBuf,
    /// Docker's `config.json` for registry credentials; "" = `$DOCKER_CONFIG` or
    /// `~/.docker/config.json` when present.
    pub docker_config: PathBuf,
    /// A P2P agent URL prefix (e.g. `http://127.0.0.1:19145/dadip2p`); "" = none.
    pub p2p_agent: String,
    /// Prometheus metrics (`http://<address>/metrics`); "" = off.
    pub metrics_address: String,
    /// Trace replay workers per device.
    pub prefetch_concurrency: usize,
    /// How long one read may take, registry retries included, before it fails with EIO.
    pub read_deadline_secs: u64,
    /// Once a read of a registry has failed at `read_deadline_secs`, reads of it wait at most
    /// this long (retries included) until one is answered again: an outage costs one full
    /// deadline, not one per block. Each of those reads still tries, so the first after the
    /// registry comes back succeeds.
    pub outage_deadline_secs: u64,
    /// FUSE worker threads per device.
    pub fuse_threads: usize,
    /// Serve FUSE requests over io_uring where the kernel offers it (Linux 6.14+, the `fuse`
    /// module's `enable_uring` on): `fuse_threads` ring entries beside the `/dev/fuse` workers.
    pub fuse_io_uring: bool,
    /// NBD on a unix socket; "" = off.
    pub nbd_socket: PathBuf,
    /// NBD on TCP (loopback only); "" = off.
    pub nbd_address: String,
    /// How often cache records are written to disk, in seconds.
    pub checkpoint_secs: u64,
    /// `tracing` filter, e.g. `info` or `overlaybd=debug`.
    pub log: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: "/var/lib/overlaybd-daemon".into(),
            socket: "/run/overlaybd-daemon/daemon.sock".into(),
            run_dir: "/run/overlaybd-daemon/devices".into(),
            cache_dir: "/var/cache/overlaybd-daemon".into(),
            cache_size_mb: 4096,
            hosts_dir: "/etc/containerd/certs.d".into(),
            docker_config: PathBuf::new(),
            p2p_agent: String::new(),
            metrics_address: String::new(),
            prefetch_concurrency: crate::trace::DEFAULT_CONCURRENCY,
            read_deadline_secs: 60,
            outage_deadline_secs: 2,
            fuse_threads: 8,
            fuse_io_uring: false,
            nbd_socket: PathBuf::new(),
            nbd_address: String::new(),
            checkpoint_secs: 30,
            log: "info".into(),
        }
    }
}

impl DaemonConfig {
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        let c: DaemonConfig =
            toml::from_str(text).map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
        c.validate()
            .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("read", path.display().to_string(), e))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, p) in [
            ("state_dir", &self.state_dir),
            ("socket", &self.socket),
            ("run_dir", &self.run_dir),
            ("cache_dir", &self.cache_dir),
        ] {
            if !p.is_absolute() {
                return Err(format!("{name} must be an absolute path, not {p:?}"));
            }
        }
        if self.cache_size_mb == 0 {
            return Err("cache_size_mb must be at least 1".into());
        }
        if !(1..=1024).contains(&self.prefetch_concurrency) {
            return Err("prefetch_concurrency must be 1..=1024".into());
        }
        if !(1..=256).contains(&self.fuse_threads) {
            return Err("fuse_threads must be 1..=256".into());
        }
        if self.read_deadline_secs == 0 {
            return Err("read_deadline_secs must be at least 1".into());
        }
        if self.outage_deadline_secs == 0 {
            return Err("outage_deadline_secs must be at least 1".into());
        }
        if self.checkpoint_secs == 0 {
            return Err("checkpoint_secs must be at least 1".into());
        }
        for (name, a) in [
            ("metrics_address", &self.metrics_address),
            ("nbd_address", &self.nbd_address),
        ] {
            if a.is_empty() {
                continue;
            }
            let addr: std::net::SocketAddr = a.parse().map_err(|e| format!("{name} {a:?}: {e}"))?;
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "{name} {a:?}: only loopback addresses (the daemon has no authentication)"
                ));
            }
        }
        let a = &self.p2p_agent;
        if !(a.is_empty() || a.starts_with("http://") || a.starts_with("https://")) {
            return Err(format!(
                "p2p_agent {:?}: not an http(s) URL",
                self.p2p_agent
            ));
        }
        Ok(())
    }

    pub fn read_deadline(&self) -> Duration {
        Duration::from_secs(self.read_deadline_secs)
    }

    /// The deadline of a read of a registry that is down (at most the full one).
    pub fn outage_deadline(&self) -> Duration {
        Duration::from_secs(self.outage_deadline_secs.min(self.read_deadline_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_that_install_sh_installs_parses() {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/overlaybd-daemon.toml");
        let c = DaemonConfig::load(&p).unwrap();
        let d = DaemonConfig::default();
        // It names the paths the snapshotter's example and the systemd units expect.
        assert_eq!(c.socket, d.socket);
        assert_eq!(c.hosts_dir, Path::new("/etc/containerd/certs.d"));
        assert_eq!(c.metrics_address, "127.0.0.1:9863");
    }

    #[test]
    fn defaults_parse_and_bad_values_are_named() {
        assert_eq!(
            DaemonConfig::parse("", "t").unwrap(),
            DaemonConfig::default()
        );
        let c = DaemonConfig::parse(
            "state_dir = \"/s\"\ncache_size_mb = 10\nnbd_address = \"127.0.0.1:10809\"",
            "t",
        )
        .unwrap();
        assert_eq!((c.state_dir.to_str(), c.cache_size_mb), (Some("/s"), 10));
        // The outage deadline is never longer than the full one.
        let short = DaemonConfig::parse("read_deadline_secs = 1\noutage_deadline_secs = 5", "t");
        assert_eq!(short.unwrap().outage_deadline(), Duration::from_secs(1));
        for (bad, word) in [
            ("cache_size_mb = 0", "cache_size_mb"),
            ("state_dir = \"rel\"", "state_dir"),
            ("nbd_address = \"0.0.0.0:10809\"", "loopback"),
            ("metrics_address = \"nope\"", "metrics_address"),
            ("fuse_threads = 0", "fuse_threads"),
            ("outage_deadline_secs = 0", "outage_deadline_secs"),
            ("no_such_key = 1", "no_such_key"),
            ("p2p_agent = \"ftp://x\"", "p2p_agent"),
        ] {
            let e = DaemonConfig::parse(bad, "t").unwrap_err().to_string();
            assert!(e.contains(word), "{bad}: {e}");
        }
    }
}
