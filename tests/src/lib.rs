//! The end-to-end harness: a registry on 127.0.0.1 behind a byte-counting (and optionally
//! rate-limiting) relay, containerd with its own root, state and socket, the overlaybd-daemon
//! and the overlaybd-snapshotter, each a real process with its own directories under one
//! temporary directory, stopped by PID when the [`Env`] is dropped. Used by `tests/` and the
//! cold-start benchmark.

pub mod bench;
pub mod containerd;
pub mod corpus;
pub mod cri;
pub mod docker;
pub mod image;
pub mod p2p;
pub mod relay;
pub mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use containerd::Containerd;
use relay::Relay;
pub use test_support::proc::{self, Proc};
pub use test_support::registry::Registry;
pub use test_support::{ci, free_port, require_tools};
use test_support::{on_path, wait_for};

/// Whether this machine can run the end-to-end tests (root and the tools). Under CI a missing
/// prerequisite panics; elsewhere the test prints why and is skipped.
pub fn require() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for t in [
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "docker-registry",
        "mount",
    ] {
        if !on_path(t) {
            missing.push(t.to_string());
        }
    }
    if !Path::new("/dev/fuse").exists() || !Path::new("/dev/loop-control").exists() {
        missing.push("/dev/fuse and /dev/loop-control".into());
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("end-to-end test needs {}", missing.join(", "));
    assert!(!ci(), "{why}");
    eprintln!("skipped: {why}");
    false
}

/// [`require`], and `c`'s binaries (containerd 2.x is not a Debian 12 package).
pub fn require_containerd(c: Containerd) -> bool {
    require() && c.available()
}

/// How an end-to-end test on `c` starts: the [`serial`] lock, the prerequisites (`None`: the
/// test is skipped, saying why), and an environment with `opts` on `c`.
pub fn start_on(c: Containerd, opts: Options) -> Option<(std::sync::MutexGuard<'static, ()>, Env)> {
    let guard = serial();
    if !require_containerd(c) {
        return None;
    }
    Some((
        guard,
        Env::start(Options {
            containerd: c,
            ..opts
        }),
    ))
}

/// One environment at a time in a test process: each runs containerd, a registry and two
/// daemons, which two cores cannot run twice over.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The workspace's binaries (`overlaybd-daemon`, `overlaybd-snapshotter`,
/// `overlaybd-convertor`, `obdctl`), built once per test process with the same cargo.
pub fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut c = Command::new(cargo);
        c.args(["build", "--quiet", "--manifest-path"])
            .arg(&manifest);
        // What cargo set for this test process is not the build's: a build script that
        // watches one of these (ring's watches CARGO_MANIFEST_DIR) would be rebuilt, and
        // everything above it, once per test binary.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k.starts_with("CARGO_CRATE_")
                || k.starts_with("CARGO_BIN_")
                || ["OUT_DIR", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&&*k)
            {
                c.env_remove(&*k);
            }
        }
        for b in [
            "overlaybd-daemon",
            "overlaybd-snapshotter",
            "overlaybd-convertor",
            "obdctl",
            "overlaybd-p2p",
        ] {
            c.args(["--bin", b]);
        }
        if !cfg!(debug_assertions) {
            c.arg("--release");
        }
        let st = c.status().expect("run cargo build");
        assert!(st.success(), "cargo build of the binaries failed");
        // target/<profile>/deps/<test> → target/<profile>
        let exe = std::env::current_exe().unwrap();
        let mut d = exe.parent().unwrap().to_path_buf();
        if d.ends_with("deps") {
            d.pop();
        }
        d
    });
    let p = dir.join(name);
    assert!(p.is_file(), "{} was not built", p.display());
    p
}

/// Settings of an [`Env`].
#[derive(Clone, Debug)]
pub struct Options {
    /// The snapshotter's `rw_mode`.
    pub rw_mode: &'static str,
    /// The daemon's per-read deadline.
    pub read_deadline_secs: u64,
    /// Bytes per second the relay passes from the registry (0 = unlimited).
    pub rate: u64,
    /// The snapshotter's `hosts_dir` sends it to a closed port (its pull-time blob check
    /// fails; containerd, the daemon and the convertor are not affected).
    pub snapshotter_registry_broken: bool,
    /// The daemon's `p2p_agent` (an overlaybd-p2p agent's `/<api-key>` prefix).
    pub p2p_agent: Option<String>,
    /// The snapshotter's `device_linger_secs`.
    pub device_linger_secs: u64,
    /// Which containerd runs, with which configuration.
    pub containerd: Containerd,
    /// The daemon and the snapshotter serve Prometheus metrics ([`Env::scrape`]).
    pub metrics: bool,
    /// The daemon's `cache_size_mb`.
    pub cache_size_mb: u64,
    /// The harness holds the snapshotter's listening socket and passes it to each snapshotter
    /// it starts, as systemd's socket activation does (`deploy/systemd/*.socket`).
    pub snapshotter_socket_held: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rw_mode: "overlayfs",
            read_deadline_secs: 10,
            rate: 0,
            snapshotter_registry_broken: false,
            p2p_agent: None,
            device_linger_secs: 60,
            containerd: Containerd::V1,
            metrics: false,
            snapshotter_socket_held: false,
            cache_size_mb: 2048,
        }
    }
}

/// Every process of a lazy-pull host, in one temporary directory.
#[allow(missing_debug_implementations)]
pub struct Env {
    pub dir: tempfile::TempDir,
    pub registry: Option<Registry>,
    /// Direct registry address (for pushing and converting, not counted).
    pub registry_addr: String,
    /// The relay in front of it: the address containerd, the snapshotter and the daemon use.
    pub relay: Relay,
    pub daemon: Option<Proc>,
    pub snapshotter: Option<Proc>,
    pub containerd: Option<Proc>,
    pub opts: Options,
    /// The snapshotter's socket, when the harness holds it (`Options::snapshotter_socket_held`).
    held_socket: Option<std::os::unix::net::UnixListener>,
}

impl Env {
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.path("containerd/containerd.sock")
    }
    pub fn snapshotter_socket(&self) -> PathBuf {
        self.path("snapshotter/snapshotter.sock")
    }
    pub fn daemon_socket(&self) -> PathBuf {
        self.path("daemon/api.sock")
    }
    /// `127.0.0.1:<port>` where `who` ("daemon", "snapshotter") serves metrics, chosen once
    /// (kept in `<who>/metrics-port`); "" without [`Options::metrics`].
    pub fn metrics_address(&self, who: &str) -> String {
        if !self.opts.metrics {
            return String::new();
        }
        let f = self.path(&format!("{who}/metrics-port"));
        let port = match std::fs::read_to_string(&f) {
            Ok(p) => p.trim().to_string(),
            Err(_) => {
                let p = free_port().to_string();
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(&f, &p).unwrap();
                p
            }
        };
        format!("127.0.0.1:{port}")
    }

    /// The Prometheus text `who` ("daemon", "snapshotter") serves.
    pub fn scrape(&self, who: &str) -> String {
        let addr = self.metrics_address(who);
        assert!(!addr.is_empty(), "metrics are off (Options::metrics)");
        reqwest::blocking::get(format!("http://{addr}/metrics"))
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("scrape {who} at {addr}: {e}"))
    }

    /// `127.0.0.1:<relay port>`: image references pulled by containerd use this host.
    pub fn host(&self) -> String {
        self.relay.addr()
    }

    pub fn start(opts: Options) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("obd-e2e-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let registry = Registry::start_in(&d.join("registry"), None, free_port());
        let registry_addr = registry.addr.clone();
        let relay = Relay::start(&registry_addr, opts.rate);
        // One hosts directory for containerd's CRI, the daemon and the snapshotter: plain HTTP
        // to the relay.
        let certs = d.join("certs.d");
        for host in [relay.addr(), registry_addr.clone()] {
            let h = certs.join(&host);
            std::fs::create_dir_all(&h).unwrap();
            std::fs::write(
                h.join("hosts.toml"),
                format!(
                    "server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n"
                ),
            )
            .unwrap();
        }
        let mut env = Env {
            dir,
            registry: Some(registry),
            registry_addr,
            relay,
            daemon: None,
            snapshotter: None,
            held_socket: None,
            containerd: None,
            opts,
        };
        env.start_daemon();
        env.start_snapshotter();
        env.start_containerd();
        env
    }

    pub fn start_daemon(&mut self) {
        let d = self.path("daemon");
        std::fs::create_dir_all(&d).unwrap();
        let cfg = d.join("daemon.toml");
        std::fs::write(
            &cfg,
            format!(
                "state_dir = \"{0}/state\"\nsocket = \"{1}\"\nrun_dir = \"{0}/run\"\n\
                 cache_dir = \"{0}/cache\"\ncache_size_mb = {6}\nhosts_dir = \"{2}\"\n\
                 read_deadline_secs = {3}\nlog = \"info\"\np2p_agent = \"{4}\"\n\
                 metrics_address = \"{5}\"\n",
                d.display(),
                self.daemon_socket().display(),
                self.path("certs.d").display(),
                self.opts.read_deadline_secs,
                self.opts.p2p_agent.as_deref().unwrap_or(""),
                self.metrics_address("daemon"),
                self.opts.cache_size_mb,
            ),
        )
        .unwrap();
        let _ = std::fs::remove_file(self.daemon_socket());
        let p = Proc::serving(
            "overlaybd-daemon",
            Command::new(bin("overlaybd-daemon"))
                .arg("--config")
                .arg(&cfg),
            &d.join("daemon.log"),
            &self.daemon_socket(),
        );
        self.daemon = Some(p);
    }

    pub fn snapshotter_config(&self) -> PathBuf {
        self.path("snapshotter/config.toml")
    }

    /// Starts the snapshotter and waits until its socket accepts and (with containerd
    /// running) containerd reaches it.
    pub fn start_snapshotter(&mut self) {
        self.spawn_snapshotter();
        if self.containerd.is_some() {
            self.wait_for_snapshotter_connection();
        }
    }

    /// Starts the snapshotter and waits until its socket accepts, not for containerd. (When the
    /// harness holds the socket, it accepts at once: calls wait in its backlog until the new
    /// process serves them.)
    pub fn spawn_snapshotter(&mut self) {
        let d = self.path("snapshotter");
        std::fs::create_dir_all(&d).unwrap();
        let cfg = self.snapshotter_config();
        let mut hosts = self.path("certs.d");
        if self.opts.snapshotter_registry_broken {
            hosts = self.path("broken-certs.d");
            let h = hosts.join(self.host());
            std::fs::create_dir_all(&h).unwrap();
            std::fs::write(
                h.join("hosts.toml"),
                format!("server = \"http://127.0.0.1:{}\"\n", free_port()),
            )
            .unwrap();
        }
        if !cfg.exists() {
            std::fs::write(
                &cfg,
                format!(
                    "root = \"{0}/root\"\nsocket = \"{1}\"\ndaemon_socket = \"{2}\"\n\
                     rw_mode = \"{3}\"\nhosts_dir = \"{4}\"\nattach_timeout_secs = 30\n\
                     device_linger_secs = {5}\nlog = \"info,snapshotter=trace\"\n\
                     metrics_address = \"{6}\"\n",
                    d.display(),
                    self.snapshotter_socket().display(),
                    self.daemon_socket().display(),
                    self.opts.rw_mode,
                    hosts.display(),
                    self.opts.device_linger_secs,
                    self.metrics_address("snapshotter"),
                ),
            )
            .unwrap();
        }
        let mut cmd = Command::new(bin("overlaybd-snapshotter"));
        cmd.arg("--config").arg(&cfg);
        if self.opts.snapshotter_socket_held {
            let sock = self.snapshotter_socket();
            let l = self.held_socket.get_or_insert_with(|| {
                overlaybd_api::bind_private_unix(&sock).expect("bind the snapshotter's socket")
            });
            let fd = std::os::fd::AsRawFd::as_raw_fd(l);
            // As systemd does: the socket at descriptor 3, LISTEN_PID the server's own PID
            // (the shell's, which exec keeps).
            cmd = Command::new("sh");
            cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\""])
                .arg(bin("overlaybd-snapshotter"))
                .arg("--config")
                .arg(&cfg);
            // SAFETY: dup2 is async-signal-safe; it runs in the child before exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    // dup2 onto itself would keep close-on-exec: clear it instead.
                    let r = if fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, 3)
                    };
                    if r < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        } else {
            let _ = std::fs::remove_file(self.snapshotter_socket());
        }
        let p = Proc::serving(
            "overlaybd-snapshotter",
            &mut cmd,
            &d.join("snapshotter.log"),
            &self.snapshotter_socket(),
        );
        self.snapshotter = Some(p);
    }

    /// Waits until containerd reaches the snapshotter again: a snapshot prepared (then
    /// removed) through it. A List would not do: containerd answers it from its own metadata
    /// when the namespace holds no snapshot of the plugin, without asking the plugin.
    pub fn wait_for_snapshotter_connection(&self) {
        static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let sn = ["snapshots", "--snapshotter", "overlaybd"];
        wait_for(
            "containerd's connection to the snapshotter",
            Duration::from_secs(60),
            || {
                let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let key = format!("probe-{}-{n}", std::process::id());
                let ok = self
                    .ctr_result("default", &[&sn[..], &["prepare", &key]].concat())
                    .status
                    .success();
                if ok {
                    self.ctr("default", &[&sn[..], &["rm", &key]].concat());
                }
                ok
            },
            || self.logs(),
        );
    }

    pub fn start_containerd(&mut self) {
        let d = self.path("containerd");
        std::fs::create_dir_all(d.join("cni")).unwrap();
        let cfg = d.join("config.toml");
        let c = self.opts.containerd;
        std::fs::write(
            &cfg,
            containerd::config(
                c,
                &containerd::Paths {
                    dir: &d,
                    socket: &self.containerd_socket(),
                    snapshotter_socket: &self.snapshotter_socket(),
                    snapshotter_root: &self.path("snapshotter/root"),
                    certs_d: &self.path("certs.d"),
                },
            ),
        )
        .unwrap();
        let _ = std::fs::remove_file(self.containerd_socket());
        let p = Proc::serving(
            "containerd",
            self.containerd_command().arg("--config").arg(&cfg),
            &d.join("containerd.log"),
            &self.containerd_socket(),
        );
        self.containerd = Some(p);
        // containerd answers once its plugins are loaded.
        wait_for(
            "containerd's API",
            Duration::from_secs(30),
            || self.ctr_result("default", &["version"]).status.success(),
            || self.logs(),
        );
        let version = self.ctr("default", &["version"]);
        let server = version.split("Server:").nth(1).unwrap_or_default();
        let want = if c.is_v2() {
            "Version:  2."
        } else {
            "Version:  1."
        };
        assert!(server.contains(want), "{c:?} runs {version}");
    }

    /// containerd stopped (SIGTERM) and started again with the same configuration and state;
    /// containers keep running under their shims.
    pub fn restart_containerd(&mut self) {
        if let Some(mut p) = self.containerd.take() {
            p.stop();
        }
        self.start_containerd();
    }

    /// A command running `c`'s containerd, its directory first on `PATH` (for the shim).
    fn containerd_command(&self) -> Command {
        let c = self.opts.containerd;
        let mut cmd = Command::new(c.containerd());
        if let Some(dir) = c.bin_dir() {
            let mut path = std::ffi::OsString::from(dir);
            path.push(":");
            path.push(std::env::var_os("PATH").unwrap_or_default());
            cmd.env("PATH", path);
        }
        cmd
    }

    /// `ctr` against this containerd in `namespace`.
    pub fn ctr_result(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new(self.opts.containerd.ctr())
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", namespace])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// `ctr`, which must succeed; its stdout.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> String {
        let o = self.ctr_result(namespace, args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ctr images pull --plain-http --snapshotter <snapshotter> [extra…] <image>` in
    /// `namespace` (the test registry speaks plain HTTP).
    pub fn ctr_pull(
        &self,
        namespace: &str,
        snapshotter: &str,
        extra: &[&str],
        image: &str,
    ) -> String {
        let mut args = vec![
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            snapshotter,
        ];
        args.extend_from_slice(extra);
        args.push(image);
        self.ctr(namespace, &args)
    }

    /// The last lines of every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in [&self.snapshotter, &self.daemon, &self.containerd]
            .into_iter()
            .flatten()
        {
            let log = p.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} (last lines) ---\n", p.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// `overlaybd-convertor convert` from the registry into the registry (not counted).
    pub fn convert(&self, src_repo_tag: &str, dst_repo_tag: &str) {
        self.convert_with(&[], src_repo_tag, dst_repo_tag);
    }

    /// [`Env::convert`] with more arguments (e.g. `--turbo-oci`); what it printed (a line per
    /// layer, the size line, the new reference).
    pub fn convert_with(&self, args: &[&str], src_repo_tag: &str, dst_repo_tag: &str) -> String {
        let o = Command::new(bin("overlaybd-convertor"))
            .args(["convert", "--plain-http", "-q"])
            .args(args)
            .arg(format!("{}/{src_repo_tag}", self.registry_addr))
            .arg(format!("{}/{dst_repo_tag}", self.registry_addr))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "convert: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `overlaybd-convertor record-trace SRC DST -- CMD` against this containerd (images on
    /// the relay's host); its output.
    pub fn record_trace(&self, src: &str, dst: &str, time_secs: u64, cmd: &[&str]) -> String {
        let o = Command::new(bin("overlaybd-convertor"))
            .args(["record-trace", "--plain-http", "--address"])
            .arg(self.containerd_socket())
            .arg("--hosts-dir")
            .arg(self.path("certs.d"))
            .args(["--time", &time_secs.to_string(), src, dst, "--"])
            .args(cmd)
            .output()
            .unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success(),
            "record-trace {src}: {out}\n{}",
            self.logs()
        );
        out
    }

    /// The snapshotter's WARN lines: requests it refused, failures it logged.
    pub fn snapshotter_warnings(&self) -> Vec<String> {
        let log = self
            .snapshotter
            .as_ref()
            .map(|p| p.log())
            .unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(" WARN "))
            .map(str::to_string)
            .collect()
    }

    /// The devices the daemon has attached (`overlaybd-daemon ctl list`: one line each).
    pub fn daemon_devices(&self) -> Vec<String> {
        let o = Command::new(bin("overlaybd-daemon"))
            .args(["ctl", "--socket"])
            .arg(self.daemon_socket())
            .arg("list")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `obdctl rpull` of `image` into the `default` namespace; its output.
    pub fn rpull(&self, image: &str) -> String {
        let (ok, out) = self.rpull_result(image);
        assert!(ok, "rpull {image}: {out}\n{}", self.logs());
        out
    }

    /// `obdctl rpull` of `image`: whether it succeeded, and its output.
    pub fn rpull_result(&self, image: &str) -> (bool, String) {
        self.rpull_with(image, &[])
    }

    /// `obdctl rpull` of `image` with `extra` flags: whether it succeeded, and its output.
    pub fn rpull_with(&self, image: &str, extra: &[&str]) -> (bool, String) {
        let o = Command::new(bin("obdctl"))
            .arg("rpull")
            .arg("--address")
            .arg(self.containerd_socket())
            .arg("--hosts-dir")
            .arg(self.path("certs.d"))
            .args(extra)
            .arg(image)
            .output()
            .unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), out)
    }

    /// The sample image (`big_mib` MiB data file) pushed as `repo:v1` and converted to
    /// `repo:v1-obd`; returns the converted image's reference on the relay's host and the
    /// source's layer bytes.
    pub fn converted_sample(&self, repo: &str, big_mib: usize) -> (String, u64) {
        let bytes = image::push_sample(&self.registry_addr, repo, "v1", big_mib);
        self.convert(&format!("{repo}:v1"), &format!("{repo}:v1-obd"));
        (format!("{}/{repo}:v1-obd", self.host()), bytes)
    }

    /// Stops the registry and its relay (reads of unfetched blocks can no longer succeed).
    pub fn stop_registry(&mut self) {
        self.relay.stop();
        if let Some(mut r) = self.registry.take() {
            r.stop();
        }
    }

    /// Everything mounted under this environment's directory, deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        snapshotter::mount::mounts_under(self.dir.path()).unwrap()
    }

    /// Removes every container and task of `namespace` (kill, delete).
    pub fn remove_containers(&self, namespace: &str) {
        let list = self.ctr_result(namespace, &["containers", "list", "-q"]);
        for id in String::from_utf8_lossy(&list.stdout).lines() {
            self.remove_container(namespace, id);
        }
    }

    /// Removes container `id` of `namespace` and its task, if they exist (kill, delete).
    pub fn remove_container(&self, namespace: &str, id: &str) {
        let _ = self.ctr_result(namespace, &["tasks", "kill", "-s", "SIGKILL", id]);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10)
            && !self
                .ctr_result(namespace, &["tasks", "delete", id])
                .status
                .success()
            && self
                .ctr_result(namespace, &["tasks", "list", "-q"])
                .stdout
                .windows(id.len())
                .any(|w| w == id.as_bytes())
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.ctr_result(namespace, &["containers", "delete", id]);
    }
}

impl Env {
    /// Stops containerd, the snapshotter and the daemon (containers removed, mounts and
    /// devices undone); the registry stays.
    pub fn stop_host(&mut self) {
        // Containers first (their shims hold mounts), then containerd and the snapshotter,
        // then every mount, then the daemon's devices and the daemon.
        if self.containerd.is_some() {
            for ns in ["default", "k8s.io"] {
                self.remove_containers(ns);
            }
        }
        for p in [self.containerd.take(), self.snapshotter.take()]
            .into_iter()
            .flatten()
        {
            let mut p = p;
            p.stop();
        }
        for m in self.mounts() {
            let _ = snapshotter::mount::unmount(&m);
        }
        if let Some(mut p) = self.daemon.take() {
            let sock = self.daemon_socket();
            let list = Command::new(bin("overlaybd-daemon"))
                .args(["ctl", "--socket"])
                .arg(&sock)
                .arg("list")
                .output();
            if let Ok(list) = list {
                for l in String::from_utf8_lossy(&list.stdout).lines() {
                    let id = l.split('\t').next().unwrap_or_default();
                    let _ = Command::new(bin("overlaybd-daemon"))
                        .args(["ctl", "--socket"])
                        .arg(&sock)
                        .args(["detach", id])
                        .output();
                }
            }
            p.stop();
        }
        // The daemon's descriptor keeper (its own process group) quits when asked.
        let keeper = self.path("daemon/state/fdstore.sock");
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(keeper) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"QUIT\n");
            let _ = s.read(&mut [0u8; 8]);
        }
    }

    /// A fresh host on the same registry: every process but the registry stopped, their
    /// state, images and caches deleted, and started again (a cold start's conditions).
    pub fn reset_host(&mut self) {
        self.stop_host();
        for d in ["containerd", "daemon", "snapshotter/root"] {
            let _ = std::fs::remove_dir_all(self.path(d));
        }
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
        self.start_daemon();
        self.start_snapshotter();
        self.start_containerd();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_host();
        self.stop_registry();
        // OBD_E2E_KEEP=1 leaves the directory (configs, logs, state) for a look afterwards.
        if std::env::var_os("OBD_E2E_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("kept {}", self.dir.path().display());
        }
    }
}
