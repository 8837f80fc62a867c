//! An `overlaybd-daemon` process for the tests and benchmarks, with its own directories.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon process with its own directories; on drop every device is detached and the
/// daemon and its descriptor keeper are stopped.
pub struct Daemon {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, "")
    }

    /// [`Daemon::start`], with `extra` lines in the config the first time (a restart in the
    /// same directory keeps the config).
    pub fn start_with(dir: &Path, extra: &str) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("daemon.toml");
        let socket = dir.join("api.sock");
        if !config.exists() {
            std::fs::write(
                &config,
                format!(
                    "state_dir = \"{0}/state\"\nsocket = \"{1}\"\nrun_dir = \"{0}/run\"\n\
                     cache_dir = \"{0}/cache\"\ncache_size_mb = 1024\nhosts_dir = \"\"\n\
                     read_deadline_secs = 5\nnbd_socket = \"{0}/nbd.sock\"\n\
                     metrics_address = \"127.0.0.1:{2}\"\nlog = \"info\"\n{extra}",
                    dir.display(),
                    socket.display(),
                    test_support::free_port()
                ),
            )
            .unwrap();
        }
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(env!("CARGO_BIN_EXE_overlaybd-daemon"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon {
            child: Some(child),
            dir: dir.to_path_buf(),
            config,
            socket,
        };
        let t = Instant::now();
        while !d.socket.exists() {
            assert!(t.elapsed() < Duration::from_secs(30), "{}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn ctl_result(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_overlaybd-daemon"))
            .arg("--config")
            .arg(&self.config)
            .arg("ctl")
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        let o = self.ctl_result(args);
        assert!(
            o.status.success(),
            "ctl {args:?}: {}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The value of one field of `ctl list` for device `id`.
    pub fn field(&self, id: &str, key: &str) -> String {
        let list = self.ctl(&["list"]);
        let line = list
            .lines()
            .find(|l| l.split('\t').next() == Some(id))
            .unwrap_or_else(|| panic!("{id} not listed: {list}"));
        line.split('\t')
            .find_map(|f| f.strip_prefix(&format!("{key}=")))
            .unwrap()
            .to_string()
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// The daemon's resident memory (`VmRSS`), in KiB.
    /// Names of the daemon's threads.
    pub fn thread_names(&self) -> Vec<String> {
        let pid = self.child.as_ref().expect("running").id();
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn stats(&self, id: &str) -> String {
        self.ctl(&["stats", id])
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let list = self.ctl_result(&["list"]);
            for l in String::from_utf8_lossy(&list.stdout).lines() {
                let id = l.split('\t').next().unwrap().to_string();
                let _ = self.ctl_result(&["detach", &id]);
            }
            let mut c = self.child.take().unwrap();
            let _ = c.kill();
            let _ = c.wait();
        }
        quit_keeper(&self.dir);
    }
}

/// Stops the descriptor keeper of the daemon in `dir` (it closes the descriptors it holds).
pub fn quit_keeper(dir: &Path) {
    let keeper = dir.join("state/fdstore.sock");
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&keeper) {
        let _ = s.write_all(b"QUIT\n");
        let _ = s.read(&mut [0u8; 8]);
    }
}
