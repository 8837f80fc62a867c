//! The snapshotter's config (TOML, containerd's style). Every field is optional; unknown
//! fields are refused. `docs/snapshotter.md` lists them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// How a container's rootfs is made on an overlaybd image (overlaybd's `rwMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RwMode {
    /// The image's ext4 mounted read-only, an overlayfs upper dir for the writes.
    #[default]
    Overlayfs,
    /// A writable overlaybd layer on the image, its ext4 mounted read-write, bind-mounted.
    Dir,
    /// Like `dir`, but the device itself is returned (for VM runtimes).
    Dev,
}

impl RwMode {
    pub fn parse(s: &str) -> Option<RwMode> {
        match s {
            "overlayfs" => Some(RwMode::Overlayfs),
            "dir" => Some(RwMode::Dir),
            "dev" => Some(RwMode::Dev),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Snapshots and the metadata store.
    pub root: PathBuf,
    /// The gRPC socket containerd's `proxy_plugins` entry points at (mode 0600).
    pub socket: PathBuf,
    /// The overlaybd-daemon's API socket.
    pub daemon_socket: PathBuf,
    pub rw_mode: RwMode,
    /// The filesystem of an overlaybd layer without a `blob-fs-type` annotation.
    pub default_fs_type: String,
    /// containerd's registry hosts directory (`hosts.toml`): used for the pull-time check
    /// that a layer's blob can be read. The daemon reads its own `hosts_dir`.
    pub hosts_dir: PathBuf,
    /// Docker `config.json` for that check's credentials (`""`: `$DOCKER_CONFIG` or
    /// `~/.docker/config.json` if present).
    pub docker_config: PathBuf,
    /// Prometheus text at `http://<address>/metrics`; loopback only; `""` = off.
    pub metrics_address: String,
    /// Detach an image's device when the last container on it is removed (after
    /// `device_linger_secs`).
    pub auto_remove_dev: bool,
    /// How long an image's device stays attached and mounted after its last container went,
    /// so that the next container of the same image starts as fast as on overlayfs; 0 detaches
    /// at once.
    pub device_linger_secs: u64,
    /// At most this many unused devices linger; beyond it the longest unused goes first.
    pub max_lingering_devices: usize,
    /// How long Prepare waits for the daemon to attach (and the filesystem to mount).
    pub attach_timeout_secs: u64,
    /// How long the pull-time check of a layer's blob may take before the layer is
    /// downloaded normally instead.
    pub lazy_check_timeout_secs: u64,
    /// Size of a writable overlaybd layer (`dir`, `dev`), GiB (overlaybd's `vsize`).
    pub writable_vsize_gb: u64,
    /// `tracing` filter.
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: "/var/lib/overlaybd-snapshotter".into(),
            socket: "/run/overlaybd-snapshotter/overlaybd.sock".into(),
            daemon_socket: "/run/overlaybd-daemon/daemon.sock".into(),
            rw_mode: RwMode::Overlayfs,
            default_fs_type: "ext4".into(),
            hosts_dir: "/etc/containerd/certs.d".into(),
            docker_config: PathBuf::new(),
            metrics_address: String::new(),
            auto_remove_dev: true,
            device_linger_secs: 60,
            max_lingering_devices: 16,
            attach_timeout_secs: 60,
            lazy_check_timeout_secs: 10,
            writable_vsize_gb: 64,
            log: "info".into(),
        }
    }
}

impl Config {
    pub fn parse(text: &str, what: &str) -> Result<Config> {
        let c: Config = toml::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("config {what}: {e}")))?;
        c.validate()
            .map_err(|why| Error::InvalidArgument(format!("config {what}: {why}")))?;
        Ok(c)
    }

    /// Reads `path`; a missing file means every default.
    pub fn load(path: &Path) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(t) => Config::parse(&t, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        for (name, p) in [
            ("root", &self.root),
            ("socket", &self.socket),
            ("daemon_socket", &self.daemon_socket),
        ] {
            if !p.is_absolute() {
                return Err(format!("{name} {p:?} must be an absolute path"));
            }
        }
        if !["ext4", "erofs", "xfs"].contains(&self.default_fs_type.as_str()) {
            return Err(format!(
                "default_fs_type {:?}: ext4, erofs or xfs",
                self.default_fs_type
            ));
        }
        if self.attach_timeout_secs == 0 || self.lazy_check_timeout_secs == 0 {
            return Err("timeouts must be at least 1 s".into());
        }
        if !(1..=256).contains(&self.writable_vsize_gb) {
            return Err(format!(
                "writable_vsize_gb {}: 1..=256",
                self.writable_vsize_gb
            ));
        }
        if !self.metrics_address.is_empty() {
            let a: std::net::SocketAddr = self
                .metrics_address
                .parse()
                .map_err(|e| format!("metrics_address {:?}: {e}", self.metrics_address))?;
            if !a.ip().is_loopback() {
                return Err(format!("metrics_address {a}: loopback addresses only"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_that_install_sh_installs_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/config/overlaybd-snapshotter.toml");
        let c = Config::load(&p).unwrap();
        let d = Config::default();
        assert_eq!((&c.socket, &c.daemon_socket), (&d.socket, &d.daemon_socket));
        assert_eq!(c.device_linger_secs, 60);
    }

    #[test]
    fn config_defaults_and_refusals() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.rw_mode, RwMode::Overlayfs);
        let c = Config::parse("rw_mode = \"dir\"\nroot = \"/x\"\n", "t").unwrap();
        assert_eq!((c.rw_mode, c.root), (RwMode::Dir, PathBuf::from("/x")));
        for bad in [
            "rwMode = \"dir\"",
            "rw_mode = \"tmpfs\"",
            "root = \"rel\"",
            "metrics_address = \"0.0.0.0:9\"",
            "attach_timeout_secs = 0",
            "default_fs_type = \"ntfs\"",
        ] {
            let e = Config::parse(bad, "t").unwrap_err().to_string();
            assert!(e.starts_with("config t: "), "{bad}: {e}");
        }
    }
}
