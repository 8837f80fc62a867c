//! Reading blobs from a real distribution registry (Debian's `docker-registry`) on 127.0.0.1,
//! with and without auth, through a fault-injecting proxy, and under the cache and ZFile.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlaybd::registry::auth::Credentials;
use overlaybd::registry::{BlobLocation, RegistryBlob, RegistryOptions};
use sha2::{Digest, Sha256};
use zfile::source::read_full_at;
use zfile::ReadAt;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A registry process with its own storage, stopped (by PID) when dropped.
struct Registry {
    child: Child,
    url: String,
    creds: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn start(basic: Option<(&str, &str)>) -> Option<Registry> {
        if !common::require_tool("docker-registry")
            || (basic.is_some() && !common::require_tool("htpasswd"))
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut auth = String::new();
        if let Some((u, p)) = basic {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .unwrap();
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
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
            creds: basic.map(|(u, p)| (u.to_string(), p.to_string())),
            _dir: dir,
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
    fn push(&self, repo: &str, data: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let c = reqwest::blocking::Client::new();
        let auth = |r: reqwest::blocking::RequestBuilder| match &self.creds {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        };
        let resp = auth(c.post(format!("{}/v2/{repo}/blobs/uploads/", self.url)))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 202, "{:?}", resp.text());
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{}{loc}", self.url)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let resp = auth(c.put(format!("{loc}{sep}digest={digest}")))
            .body(data.to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status(), 201, "{:?}", resp.text());
        digest
    }

    fn location(&self, repo: &str, digest: &str) -> BlobLocation {
        BlobLocation {
            registry: self.url.clone(),
            repository: repo.to_string(),
            digest: digest.to_string(),
        }
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
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

fn quick() -> RegistryOptions {
    RegistryOptions {
        deadline: Duration::from_secs(3),
        initial_backoff: Duration::from_millis(20),
        ..Default::default()
    }
}

fn check_reads(blob: &dyn ReadAt, data: &[u8]) {
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

#[test]
fn anonymous_reads_and_clear_errors() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let data = random(3 << 20, 1);
    let digest = reg.push("test/anon", &data);
    let blob = RegistryBlob::open(
        reg.location("test/anon", &digest),
        Some(data.len() as u64),
        quick(),
    )
    .unwrap();
    assert_eq!(blob.size().unwrap(), data.len() as u64);
    check_reads(&blob, &data);
    // Wrong size in the image: refused at open, naming the blob.
    let e = RegistryBlob::open(reg.location("test/anon", &digest), Some(5), quick())
        .unwrap_err()
        .to_string();
    assert!(e.contains(&digest) && e.contains("says"), "{e}");
    // A blob the registry does not have: fails at once, naming blob and registry.
    let t = Instant::now();
    let missing = format!("sha256:{}", "0".repeat(64));
    let e = RegistryBlob::open(reg.location("test/anon", &missing), None, quick())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not found") && e.contains(&reg.url) && e.contains(&missing),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn an_unreachable_registry_fails_within_the_deadline() {
    let port = free_port(); // nothing listens here
    let loc = BlobLocation {
        registry: format!("http://127.0.0.1:{port}"),
        repository: "x/y".into(),
        digest: format!("sha256:{}", "1".repeat(64)),
    };
    let t = Instant::now();
    let opts = RegistryOptions {
        deadline: Duration::from_millis(1500),
        ..quick()
    };
    let e = RegistryBlob::open(loc, None, opts).unwrap_err().to_string();
    assert!(e.contains("gave up"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn basic_auth() {
    let Some(reg) = Registry::start(Some(("alice", "s3cret"))) else {
        return;
    };
    let data = random(1 << 20, 2);
    let digest = reg.push("test/private", &data);
    let creds = Some(Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    });
    let blob = RegistryBlob::open(
        reg.location("test/private", &digest),
        None,
        RegistryOptions {
            credentials: creds,
            ..quick()
        },
    )
    .unwrap();
    check_reads(&blob, &data);
    for creds in [
        None,
        Some(Credentials {
            username: "alice".into(),
            password: "wrong".into(),
        }),
    ] {
        let t = Instant::now();
        let e = RegistryBlob::open(
            reg.location("test/private", &digest),
            None,
            RegistryOptions {
                credentials: creds,
                ..quick()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unauthorized"), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a permanent failure is not retried"
        );
    }
}

#[test]
fn a_zfile_layer_read_lazily_through_the_cache() {
    use std::io::Write as _;
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let plain = zfile::testutil::gen_input(4 << 20, 7);
    let mut w = zfile::ZFileWriter::new(
        zfile::envelope::PaxWriter::new(std::io::Cursor::new(Vec::new())).unwrap(),
        Default::default(),
    )
    .unwrap();
    w.write_all(&plain).unwrap();
    let blob_bytes = w.finish().unwrap().0.finish().unwrap().0.into_inner();
    let digest = reg.push("test/layer", &blob_bytes);
    let remote = RegistryBlob::open(
        reg.location("test/layer", &digest),
        Some(blob_bytes.len() as u64),
        quick(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(
        overlaybd::cache::BlobCache::open(
            dir.path(),
            &digest,
            blob_bytes.len() as u64,
            256 * 1024,
            remote,
        )
        .unwrap(),
    );
    let (payload, _) = zfile::envelope::open_payload(cache.clone()).unwrap();
    let z = zfile::ZFile::open(payload).unwrap();
    // A small read fetches little; a full read fetches each byte once.
    let mut b = vec![0u8; 4096];
    z.read_at(1 << 20, &mut b).unwrap();
    assert_eq!(&b[..], &plain[1 << 20..(1 << 20) + 4096]);
    let fetched = cache.stats().fetched_bytes.load(Ordering::Relaxed);
    assert!(
        fetched < blob_bytes.len() as u64 / 2,
        "a 4 KiB read fetched {fetched} bytes"
    );
    let mut all = vec![0u8; plain.len()];
    z.read_at(0, &mut all).unwrap();
    assert!(all == plain);
    assert_eq!(
        cache.stats().fetched_bytes.load(Ordering::Relaxed),
        blob_bytes.len() as u64
    );
}

/// Faults the proxy injects, each for the first `n` matching requests.
#[derive(Clone, Copy)]
enum Fault {
    Status(u16, usize),
    TooMany(usize),
    Truncate(usize),
    WrongRange(usize),
    Stall(Duration, usize),
}

/// A one-connection-per-request HTTP proxy in front of the registry.
fn proxy(upstream: String, fault: Fault) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let gets = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let n = seen.fetch_add(1, Ordering::Relaxed);
            let is_get = method == "GET";
            // Status faults count every request; body faults count GETs only.
            let g = if is_get {
                gets.fetch_add(1, Ordering::Relaxed)
            } else {
                usize::MAX
            };
            let first = |k: usize| n < k;
            let first_get = |k: usize| g < k;
            match fault {
                Fault::Status(code, k) if first(k) => {
                    let _ = write!(conn, "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                Fault::TooMany(k) if first(k) => {
                    let _ = write!(conn, "HTTP/1.1 429 Too Many\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                Fault::Stall(d, k) if first_get(k) => {
                    std::thread::sleep(d);
                    continue;
                }
                _ => {}
            }
            let mut req = client.request(method.parse().unwrap(), format!("{upstream}{path}"));
            for (k, v) in &headers {
                if k.eq_ignore_ascii_case("range") || k.eq_ignore_ascii_case("authorization") {
                    req = req.header(k.as_str(), v.as_str());
                }
            }
            let Ok(resp) = req.send() else { continue };
            let status = resp.status().as_u16();
            let mut cr = resp
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_string());
            let www = resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string());
            let len = resp
                .headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap().to_string());
            let mut body = Vec::new();
            let mut resp = resp;
            if method != "HEAD" {
                resp.read_to_end(&mut body).unwrap();
            }
            let mut declared = len.clone().unwrap_or_else(|| body.len().to_string());
            if let Fault::WrongRange(k) = fault {
                if first_get(k) {
                    cr = cr.map(|c| c.replacen("bytes ", "bytes 1", 1));
                }
            }
            let mut send = body.clone();
            if let Fault::Truncate(k) = fault {
                if first_get(k) {
                    send.truncate(body.len() / 2);
                    declared = body.len().to_string();
                }
            }
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {declared}\r\nConnection: close\r\n"
            );
            if let Some(c) = cr {
                head += &format!("Content-Range: {c}\r\n");
            }
            if let Some(w) = www {
                head += &format!("WWW-Authenticate: {w}\r\n");
            }
            head += "\r\n";
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&send);
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    });
    (url, count)
}

#[test]
fn transient_faults_are_retried_until_the_right_bytes_arrive() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let data = random(600_000, 3);
    let digest = reg.push("test/faults", &data);
    for (name, fault) in [
        ("503s", Fault::Status(503, 3)),
        ("500", Fault::Status(500, 1)),
        ("429 Retry-After", Fault::TooMany(1)),
        ("truncated body", Fault::Truncate(2)),
        ("wrong Content-Range", Fault::WrongRange(2)),
        (
            "stall then close",
            Fault::Stall(Duration::from_millis(300), 1),
        ),
    ] {
        let (url, count) = proxy(reg.url.clone(), fault);
        let loc = BlobLocation {
            registry: url,
            repository: "test/faults".into(),
            digest: digest.clone(),
        };
        let opts = RegistryOptions {
            deadline: Duration::from_secs(5),
            ..quick()
        };
        let t = Instant::now();
        let blob = RegistryBlob::open(loc, Some(data.len() as u64), opts)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut b = vec![0u8; 100_000];
        let n = blob
            .read_at(250_000, &mut b)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&b[..n], &data[250_000..350_000], "{name}");
        assert!(
            blob.stats().retries.load(Ordering::Relaxed) >= 1,
            "{name}: no retry happened"
        );
        assert!(count.load(Ordering::Relaxed) >= 2, "{name}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn persistent_faults_fail_cleanly_within_the_deadline() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let data = random(100_000, 4);
    let digest = reg.push("test/down", &data);
    for (name, fault, deadline) in [
        (
            "always 503",
            Fault::Status(503, usize::MAX),
            Duration::from_millis(1500),
        ),
        (
            "always 403",
            Fault::Status(403, usize::MAX),
            Duration::from_secs(10),
        ),
    ] {
        let (url, _) = proxy(reg.url.clone(), fault);
        let loc = BlobLocation {
            registry: url,
            repository: "test/down".into(),
            digest: digest.clone(),
        };
        let t = Instant::now();
        let r = RegistryBlob::open(
            loc,
            None,
            RegistryOptions {
                deadline,
                ..quick()
            },
        );
        let e = r.unwrap_err().to_string();
        let limit = if name == "always 403" {
            Duration::from_millis(500)
        } else {
            deadline + Duration::from_secs(1)
        };
        assert!(t.elapsed() < limit, "{name}: took {:?}: {e}", t.elapsed());
        assert!(e.contains("test/down"), "{name}: {e}");
    }
    // A read under a registry whose bodies stall forever gives up within its deadline.
    let (url, _) = proxy(
        reg.url.clone(),
        Fault::Stall(Duration::from_secs(60), usize::MAX),
    );
    let loc = BlobLocation {
        registry: url,
        repository: "test/down".into(),
        digest,
    };
    // HEAD passes through the stalling proxy (it only stalls GETs).
    let blob = RegistryBlob::open(
        loc,
        None,
        RegistryOptions {
            deadline: Duration::from_millis(1200),
            ..quick()
        },
    )
    .unwrap();
    let t = Instant::now();
    let e = blob.read_at(0, &mut [0u8; 10]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
}
