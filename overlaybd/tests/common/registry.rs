//! A real distribution registry (Debian's `docker-registry`) on 127.0.0.1 for tests, and
//! helpers around it.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use overlaybd::registry::{BlobLocation, RegistryOptions};
use sha2::{Digest, Sha256};
use zfile::source::read_full_at;
use zfile::ReadAt;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A registry process with its own storage, stopped (by PID) when dropped.
pub struct Registry {
    pub child: Child,
    pub url: String,
    pub creds: Option<(String, String)>,
    pub _dirs: Vec<tempfile::TempDir>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn start(basic: Option<(&str, &str)>) -> Option<Registry> {
        if !super::require_tool("docker-registry")
            || (basic.is_some() && !super::require_tool("htpasswd"))
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let auth = basic.map(|(u, p)| {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .unwrap();
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            )
        });
        let mut reg = Registry::start_with(auth, &dir.path().join("data"))?;
        reg.creds = basic.map(|(u, p)| (u.to_string(), p.to_string()));
        reg._dirs.push(dir);
        Some(reg)
    }

    /// A registry over `storage` with an optional `auth:` section.
    pub fn start_with(auth: Option<String>, storage: &Path) -> Option<Registry> {
        Self::start_on(auth, storage, free_port())
    }

    /// A registry serving HTTPS: `extra` continues the `http:` section (its `tls:` part).
    pub fn start_tls(extra: String, storage: &Path) -> Option<Registry> {
        let mut r = Self::start_on(Some(extra), storage, free_port())?;
        r.url = r.url.replacen("http://", "https://", 1);
        Some(r)
    }

    pub fn start_on(auth: Option<String>, storage: &Path, port: u16) -> Option<Registry> {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{}",
            storage.display(),
            auth.unwrap_or_default()
        );
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reg = Registry {
            child,
            url: format!("http://127.0.0.1:{port}"),
            creds: None,
            _dirs: vec![dir],
        };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(reg)
    }

    /// Pushes `data` as a blob of `repo` (monolithic upload) and returns its digest.
    pub fn push(&self, repo: &str, data: &[u8]) -> String {
        let c = reqwest::blocking::Client::new();
        match &self.creds {
            Some((u, p)) => push_as(&c, &self.url, repo, data, Some((u, p))),
            None => push_with(&c, &self.url, repo, data),
        }
    }

    pub fn location(&self, repo: &str, digest: &str) -> BlobLocation {
        BlobLocation {
            registry: self.url.clone(),
            repository: repo.to_string(),
            digest: digest.to_string(),
        }
    }
}

pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn quick() -> RegistryOptions {
    RegistryOptions {
        deadline: Duration::from_secs(3),
        initial_backoff: Duration::from_millis(20),
        ..Default::default()
    }
}

pub fn check_reads(blob: &dyn ReadAt, data: &[u8]) {
    let mut all = vec![0u8; data.len()];
    assert_eq!(read_full_at(blob, 0, &mut all).unwrap(), data.len());
    assert!(all == data);
    for (off, len) in [
        (0usize, 1usize),
        (12_345, 70_000),
        (data.len() - 10, 100),
        (data.len() / 2, 1),
    ] {
        let mut b = vec![0u8; len];
        let n = blob.read_at(off as u64, &mut b).unwrap();
        assert_eq!(&b[..n], &data[off..(off + len).min(data.len())]);
    }
    assert_eq!(blob.read_at(data.len() as u64, &mut [0u8; 4]).unwrap(), 0);
}

/// Pushes `data` as a blob of `repo` at `url` with client `c` and returns its digest.
pub fn push_with(c: &reqwest::blocking::Client, url: &str, repo: &str, data: &[u8]) -> String {
    push_as(c, url, repo, data, None)
}

fn push_as(
    c: &reqwest::blocking::Client,
    url: &str,
    repo: &str,
    data: &[u8],
    creds: Option<(&str, &str)>,
) -> String {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
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

/// Pushes `data` to `repo` of `reg` and opens it as a cached remote blob (256 KiB units) in a
/// fresh cache directory. Returns the directory (keep it alive), the cache, and the digest.
pub fn cached_remote(
    reg: &Registry,
    repo: &str,
    data: &[u8],
) -> (
    tempfile::TempDir,
    std::sync::Arc<overlaybd::cache::BlobCache<overlaybd::registry::RegistryBlob>>,
    String,
) {
    let digest = reg.push(repo, data);
    let remote = overlaybd::registry::RegistryBlob::open(
        reg.location(repo, &digest),
        Some(data.len() as u64),
        quick(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = overlaybd::cache::BlobCache::open(
        dir.path(),
        &digest,
        data.len() as u64,
        256 * 1024,
        remote,
    )
    .unwrap();
    (dir, cache, digest)
}
