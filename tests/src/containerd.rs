//! Which containerd an [`crate::Env`] runs, and its configuration: the snippet a user is told
//! to add (`deploy/config/containerd-*.toml`, read from the same files), with this
//! environment's paths in place of the defaults, after the settings that give the test's
//! containerd its own root, state and sockets.

use std::path::{Path, PathBuf};

use test_support::ci;

/// The containerd binaries and configuration an environment runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Containerd {
    /// Debian 12's containerd 1.6 (`version = 2` config; CRI pulls client-side with
    /// `disable_snapshot_annotations = false`).
    V1,
    /// containerd 2.x from Debian unstable (`version = 3`); CRI pulls through the Transfer
    /// Service, which passes the annotations because the proxy plugin exports
    /// `enable_remote_snapshot_annotations`.
    V2,
    /// containerd 2.x with `disable_snapshot_annotations = false`: CRI pulls client-side.
    V2ClientPull,
}

const V1_SNIPPET: &str = include_str!("../../deploy/config/containerd-1.x.toml");
const V2_SNIPPET: &str = include_str!("../../deploy/config/containerd-2.x.toml");
const CLIENT_PULL_COMMENTED: &str = "# disable_snapshot_annotations = false";

/// The prefix containerd 2.x is unpacked into (`scripts/test.sh` puts it there).
pub fn containerd2_prefix() -> PathBuf {
    std::env::var_os("OBD_CONTAINERD2")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/overlaybd-test/containerd-2"))
}

impl Containerd {
    pub fn is_v2(self) -> bool {
        self != Containerd::V1
    }

    /// The directory to put first on `PATH` for this containerd (its shim must be found
    /// there), or `None` for the system's.
    pub fn bin_dir(self) -> Option<PathBuf> {
        self.is_v2().then(|| containerd2_prefix().join("usr/bin"))
    }

    /// The `ctr` that goes with it.
    pub fn ctr(self) -> PathBuf {
        match self.bin_dir() {
            Some(d) => d.join("ctr"),
            None => PathBuf::from("ctr"),
        }
    }

    /// The `containerd` binary.
    pub fn containerd(self) -> PathBuf {
        match self.bin_dir() {
            Some(d) => d.join("containerd"),
            None => PathBuf::from("containerd"),
        }
    }

    /// Whether this machine has it. containerd 2.x is not a Debian 12 package: under CI its
    /// absence fails the test; elsewhere the test is skipped, saying how to get it.
    pub fn available(self) -> bool {
        let Some(d) = self.bin_dir() else {
            return true;
        };
        if ["containerd", "ctr", "containerd-shim-runc-v2"]
            .iter()
            .all(|b| d.join(b).is_file())
        {
            return true;
        }
        let why = format!(
            "containerd 2.x is not in {} (scripts/test.sh fetches it; OBD_CONTAINERD2 names \
             another prefix)",
            d.display()
        );
        assert!(!ci(), "{why}");
        eprintln!("skipped: {why}");
        false
    }

    /// The user-facing snippet this configuration is made from.
    pub fn snippet(self) -> String {
        match self {
            Containerd::V1 => V1_SNIPPET.to_string(),
            Containerd::V2 => V2_SNIPPET.to_string(),
            Containerd::V2ClientPull => {
                assert!(V2_SNIPPET.contains(CLIENT_PULL_COMMENTED));
                V2_SNIPPET.replace(
                    CLIENT_PULL_COMMENTED,
                    "disable_snapshot_annotations = false",
                )
            }
        }
    }
}

/// Paths of one environment that go into containerd's configuration.
#[derive(Debug)]
pub struct Paths<'a> {
    /// containerd's own directory (root, state, socket).
    pub dir: &'a Path,
    pub socket: &'a Path,
    pub snapshotter_socket: &'a Path,
    pub snapshotter_root: &'a Path,
    pub certs_d: &'a Path,
}

/// The whole `config.toml` for `c` with `p`'s paths.
pub fn config(c: Containerd, p: &Paths<'_>) -> String {
    let mut snippet = c.snippet();
    for (default, here) in [
        (
            "/run/overlaybd-snapshotter/overlaybd.sock",
            p.snapshotter_socket,
        ),
        ("/var/lib/overlaybd-snapshotter", p.snapshotter_root),
        ("/etc/containerd/certs.d", p.certs_d),
    ] {
        assert!(
            snippet.contains(default),
            "the containerd snippet no longer names {default}"
        );
        snippet = snippet.replace(default, &here.display().to_string());
    }
    let version = if c.is_v2() { 3 } else { 2 };
    let version_line = format!("version = {version}\n");
    assert!(snippet.contains(&version_line), "{snippet}");
    let snippet = snippet.replace(&version_line, "");
    let d = p.dir.display();
    // Top-level keys come before the snippet's tables; the test's own tables after it. NRI
    // (on by default in 2.x) would listen on a fixed path in /var/run.
    let mut out = format!(
        r#"version = {version}
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.nri.v1.nri"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{d}/ttrpc.sock"
[debug]
  address = ""
  level = "debug"
{snippet}
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        socket = p.socket.display(),
    );
    if c.is_v2() {
        out.push_str(&format!(
            r#"[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["{d}/cni"]
  conf_dir = "{d}/cni"
"#
        ));
    } else {
        out.push_str(&format!(
            r#"[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{d}/cni"
  conf_dir = "{d}/cni"
"#
        ));
    }
    out
}
