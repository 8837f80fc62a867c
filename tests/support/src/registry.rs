//! A real distribution registry (Debian's `docker-registry`) on 127.0.0.1, a process of the
//! test's own with its storage in a temporary directory (or one the test names), stopped by PID
//! when dropped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::proc::Proc;
use crate::{free_port, require_tool, wait_for};

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    proc: Proc,
    /// `127.0.0.1:port`
    pub addr: String,
    /// `http://127.0.0.1:port` (`https://` for [`Registry::start_tls`]).
    pub url: String,
    /// The Basic credentials it wants, if any.
    pub creds: Option<(String, String)>,
    _dirs: Vec<tempfile::TempDir>,
}

/// The `auth:` section of a config wanting Basic credentials, with its htpasswd file in `dir`.
pub fn htpasswd_auth(dir: &Path, user: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("run htpasswd (apache2-utils)");
    assert!(out.status.success(), "htpasswd failed");
    let f = dir.join("htpasswd");
    std::fs::write(&f, &out.stdout).unwrap();
    format!(
        "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
        f.display()
    )
}

impl Registry {
    /// A registry with fresh storage, wanting Basic credentials `(user, password)` when given.
    /// `None` when docker-registry (or htpasswd) is missing outside CI.
    pub fn start(basic: Option<(&str, &str)>) -> Option<Registry> {
        if !require_tool("docker-registry") || (basic.is_some() && !require_tool("htpasswd")) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let auth = basic.map(|(u, p)| htpasswd_auth(dir.path(), u, p));
        let mut reg = Registry::start_in(dir.path(), auth, free_port());
        reg.creds = basic.map(|(u, p)| (u.to_string(), p.to_string()));
        reg._dirs.push(dir);
        Some(reg)
    }

    /// A registry over `storage` with an optional extra config section (`auth:`).
    pub fn start_with(extra: Option<String>, storage: &Path) -> Option<Registry> {
        Self::start_on(extra, storage, free_port())
    }

    /// A registry serving HTTPS: `extra` continues the `http:` section (its `tls:` part).
    pub fn start_tls(extra: String, storage: &Path) -> Option<Registry> {
        let mut r = Self::start_on(Some(extra), storage, free_port())?;
        r.url = r.url.replacen("http://", "https://", 1);
        Some(r)
    }

    /// A registry over `storage` on `port`.
    pub fn start_on(extra: Option<String>, storage: &Path, port: u16) -> Option<Registry> {
        if !require_tool("docker-registry") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Self::spawn(dir.path(), storage, extra, port);
        reg._dirs.push(dir);
        Some(reg)
    }

    /// A registry with its config, log and storage (`data/`) in `dir`, on `port`; for
    /// harnesses that keep every process's files in one place. Panics if it cannot start.
    pub fn start_in(dir: &Path, extra: Option<String>, port: u16) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        Self::spawn(dir, &dir.join("data"), extra, port)
    }

    fn spawn(dir: &Path, storage: &Path, extra: Option<String>, port: u16) -> Registry {
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{}",
            storage.display(),
            extra.unwrap_or_default()
        );
        let cfg_path = dir.join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let proc = Proc::spawn(
            "docker-registry",
            Command::new("docker-registry").arg("serve").arg(&cfg_path),
            &dir.join("registry.log"),
        );
        let addr = format!("127.0.0.1:{port}");
        wait_for(
            "docker-registry",
            Duration::from_secs(20),
            || std::net::TcpStream::connect(&addr).is_ok(),
            || proc.log(),
        );
        Registry {
            proc,
            url: format!("http://{addr}"),
            addr,
            creds: None,
            _dirs: Vec::new(),
        }
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Stops it (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Pushes `data` as a blob of `repo` (monolithic upload, with this registry's
    /// credentials) and returns its digest.
    pub fn push(&self, repo: &str, data: &[u8]) -> String {
        let c = reqwest::blocking::Client::new();
        let creds = self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        push_blob(&c, &self.url, repo, data, creds)
    }
}

/// Pushes `data` as a blob of `repo` at `url` with client `c` (and Basic credentials) and
/// returns its digest.
pub fn push_blob(
    c: &reqwest::blocking::Client,
    url: &str,
    repo: &str,
    data: &[u8],
    creds: Option<(&str, &str)>,
) -> String {
    let digest = format!("sha256:{}", crate::sha256_hex(data));
    let auth = |r: reqwest::blocking::RequestBuilder| match creds {
        Some((u, p)) => r.basic_auth(u, Some(p)),
        None => r,
    };
    let resp = auth(c.post(format!("{url}/v2/{repo}/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.text());
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{url}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let resp = auth(c.put(format!("{loc}{sep}digest={digest}")))
        .body(data.to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text());
    digest
}
