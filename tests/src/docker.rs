//! Docker Engine (dockerd 28 from Debian unstable, unpacked into a private prefix) with its
//! containerd image store on an [`crate::Env`]'s containerd, `storage-driver` naming the
//! overlaybd snapshotter: its own data root, exec root and API socket under the environment's
//! directory, no networking of its own (no bridge, no iptables).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use test_support::{ci, wait_for};

use crate::{Env, Proc};

/// The prefixes dockerd and the docker CLI are unpacked into (`scripts/test.sh` puts them
/// there; OBD_DOCKER and OBD_DOCKER_CLI name others).
pub fn prefixes() -> (PathBuf, PathBuf) {
    let p = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    (
        p("OBD_DOCKER", "/opt/overlaybd-test/docker"),
        p("OBD_DOCKER_CLI", "/opt/overlaybd-test/docker-cli"),
    )
}

fn dockerd() -> PathBuf {
    prefixes().0.join("usr/sbin/dockerd")
}

fn docker_cli() -> PathBuf {
    prefixes().1.join("usr/bin/docker")
}

/// Whether dockerd and the CLI are there; under CI their absence fails the test.
pub fn available() -> bool {
    if dockerd().is_file() && docker_cli().is_file() {
        return true;
    }
    let why = format!(
        "docker is not in {} and {} (scripts/test.sh fetches it)",
        dockerd().display(),
        docker_cli().display()
    );
    assert!(!ci(), "{why}");
    eprintln!("skipped: {why}");
    false
}

/// A running dockerd.
#[allow(missing_debug_implementations)]
pub struct Docker {
    pub proc: Proc,
    pub socket: PathBuf,
}

impl Docker {
    /// Starts dockerd on `env`'s containerd with the containerd image store and
    /// `storage-driver = "overlaybd"`.
    pub fn start(env: &Env) -> Docker {
        let d = env.path("docker");
        std::fs::create_dir_all(&d).unwrap();
        let cfg = d.join("daemon.json");
        std::fs::write(
            &cfg,
            serde_json::json!({
                "features": {"containerd-snapshotter": true},
                "storage-driver": "overlaybd",
                "insecure-registries": [env.host(), env.registry_addr.clone()],
            })
            .to_string(),
        )
        .unwrap();
        let socket = d.join("docker.sock");
        let mut cmd = Command::new(dockerd());
        cmd.arg("--config-file")
            .arg(&cfg)
            .arg("--containerd")
            .arg(env.containerd_socket())
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--userland-proxy=false",
                "--debug",
            ]);
        if let Some(dir) = env.opts.containerd.bin_dir() {
            let mut path = std::ffi::OsString::from(dir);
            path.push(":");
            path.push(std::env::var_os("PATH").unwrap_or_default());
            cmd.env("PATH", path);
        }
        let proc = Proc::serving("dockerd", &mut cmd, &d.join("dockerd.log"), &socket);
        let docker = Docker { proc, socket };
        wait_for(
            "dockerd's API",
            Duration::from_secs(30),
            || docker.run(&["info"]).status.success(),
            || docker.proc.log(),
        );
        docker
    }

    /// `docker -H <socket> ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .expect("run docker")
    }

    /// `docker ARGS`, which must succeed; its stdout.
    pub fn ok(&self, env: &Env, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "docker {args:?} failed: {}{}\n--- dockerd (last lines) ---\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            tail(&self.proc.log(), 30),
            env.logs()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Docker {
    fn drop(&mut self) {
        // Containers first (their shims hold mounts), then dockerd.
        let ps = self.run(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ps.stdout).split_whitespace() {
            let _ = self.run(&["rm", "-f", id]);
        }
        self.proc.stop();
    }
}
