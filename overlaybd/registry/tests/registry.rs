//! Reading blobs from a real distribution registry (Debian's `docker-registry`) on 127.0.0.1,
//! with and without auth, through a fault-injecting proxy, and under the cache and ZFile.

mod common;

use common::registry::{cached_remote, check_reads, free_port, quick, random, Located, Registry};

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlaybd_registry::auth::Credentials;
use overlaybd_registry::{BlobLocation, Outages, RegistryBlob, RegistryOptions};
use zfile::ReadAt;

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
    // Opened with a size it trusts (no HEAD), a wrong one is caught by the first read, at
    // once: the registry's Content-Range gives the blob's real size.
    let t = Instant::now();
    let b = RegistryBlob::open_sized(reg.location("test/anon", &digest), 5, quick()).unwrap();
    let e = b.read_at(0, &mut [0u8; 5]).unwrap_err().to_string();
    assert!(
        e.contains(&digest) && e.contains(&format!("{} bytes", data.len())),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    let b = RegistryBlob::open_sized(
        reg.location("test/anon", &digest),
        data.len() as u64,
        quick(),
    )
    .unwrap();
    check_reads(&b, &data);
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
    let e = RegistryBlob::open(loc.clone(), None, opts.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("gave up"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    // With the size known, opening asks nothing; the first read gives up in time.
    let b = RegistryBlob::open_sized(loc, 4096, opts).unwrap();
    let t = Instant::now();
    let e = b.read_at(0, &mut [0u8; 16]).unwrap_err().to_string();
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
    let (_dir, cache, _) = cached_remote(&reg, "test/layer", &blob_bytes);
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
            let Some(common::http::Request {
                method,
                path,
                headers,
            }) = common::http::read_request(&mut BufReader::new(conn.try_clone().unwrap()))
            else {
                continue;
            };
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

fn b64(data: &[u8], url: bool) -> String {
    let t: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(t[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if !url {
                s.push('=');
            }
        }
    }
    s
}

/// Makes (or replaces) the token signer's key and certificate in `dir`.
fn signing_key(dir: &Path) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    common::openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=token-signer",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ],
    );
}

/// A token server in the style of Docker's: Basic credentials in, a JWT signed with the
/// current key of `dir` out (so that replacing the key invalidates tokens already issued).
fn token_server(
    dir: &Path,
    user: &'static str,
    pass: &'static str,
    real_ttl: u64,
) -> (String, Arc<AtomicUsize>) {
    signing_key(dir);
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let issued = Arc::new(AtomicUsize::new(0));
    let count = issued.clone();
    let dir = dir.to_path_buf();
    let expected = format!("Basic {}", b64(format!("{user}:{pass}").as_bytes(), false));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let Some(req) =
                common::http::read_request(&mut BufReader::new(conn.try_clone().unwrap()))
            else {
                continue;
            };
            let authorized = req.header("authorization") == Some(expected.as_str());
            if !authorized {
                let _ = write!(
                    conn,
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                continue;
            }
            let query = req
                .path
                .split_once('?')
                .map(|(_, q)| q.to_string())
                .unwrap_or_default();
            let scope = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("scope="))
                .unwrap_or("")
                .replace("%3A", ":")
                .replace("%2F", "/");
            let repo = scope.split(':').nth(1).unwrap_or("").to_string();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let n = count.fetch_add(1, Ordering::Relaxed);
            let der = Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert)
                .output()
                .unwrap()
                .stdout;
            let x5c = b64(&der, false);
            let header = format!(r#"{{"alg":"RS256","typ":"JWT","x5c":["{x5c}"]}}"#);
            let claims = format!(
                r#"{{"iss":"test-issuer","sub":"{user}","aud":"test-registry","exp":{},"nbf":{},"iat":{},"jti":"t{n}","access":[{{"type":"repository","name":"{repo}","actions":["pull","push"]}}]}}"#,
                now + real_ttl,
                now - 10,
                now
            );
            let signing_input = format!(
                "{}.{}",
                b64(header.as_bytes(), true),
                b64(claims.as_bytes(), true)
            );
            let input = dir.join(format!("in{n}"));
            std::fs::write(&input, &signing_input).unwrap();
            let sig = Command::new("openssl")
                .args(["dgst", "-sha256", "-sign"])
                .arg(&key)
                .arg(&input)
                .output()
                .unwrap()
                .stdout;
            let jwt = format!("{signing_input}.{}", b64(&sig, true));
            let body = format!(r#"{{"token":"{jwt}","expires_in":3600}}"#);
            let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (url, issued)
}

#[test]
fn bearer_tokens_from_a_token_server() {
    if !common::require_tool("docker-registry") || !common::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (realm, issued) = token_server(dir.path(), "alice", "s3cret", 300);
    // Push through an open registry, then serve the same storage with token auth.
    let data = random(800_000, 9);
    let storage = dir.path().join("storage");
    let digest = {
        let reg = Registry::start_with(None, &storage).unwrap();
        reg.push("test/bearer", &data)
    };
    let auth = format!(
        "auth:\n  token:\n    realm: {realm}\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
        dir.path().join("cert.pem").display()
    );
    let reg = Registry::start_with(Some(auth.clone()), &storage).unwrap();
    let creds = Some(Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    });
    let blob = RegistryBlob::open(
        reg.location("test/bearer", &digest),
        Some(data.len() as u64),
        RegistryOptions {
            credentials: creds,
            ..quick()
        },
    )
    .unwrap();
    check_reads(&blob, &data);
    assert_eq!(
        blob.stats().token_fetches.load(Ordering::Relaxed),
        1,
        "the token is cached"
    );
    // The registry stops accepting the token the client holds (its signer's key was rotated
    // and the registry restarted, on the same port): the next read meets a 401, fetches a
    // fresh token, and succeeds.
    let port: u16 = reg.url.rsplit(':').next().unwrap().parse().unwrap();
    drop(reg);
    signing_key(dir.path());
    let reg = Registry::start_on(Some(auth.clone()), &storage, port).unwrap();
    let mut b = vec![0u8; 1000];
    blob.read_at(5000, &mut b).unwrap();
    assert_eq!(&b[..], &data[5000..6000]);
    assert_eq!(
        blob.stats().token_fetches.load(Ordering::Relaxed),
        2,
        "a fresh token after the 401"
    );
    assert!(issued.load(Ordering::Relaxed) >= 2);
    // Without credentials the token server refuses: a clear, immediate error.
    let t = Instant::now();
    let e = RegistryBlob::open(reg.location("test/bearer", &digest), None, quick())
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused the credentials"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn eight_cold_readers_make_the_registry_serve_the_blob_once() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let data = random(8 << 20, 12);
    let (_dir, cache, _) = cached_remote(&reg, "test/eight", &data);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (cache, data) = (&cache, &data);
            s.spawn(move || {
                // Each reader walks the blob from a different place, in 64 KiB reads.
                let n = data.len() as u64;
                let mut off = t * n / 8;
                let mut buf = vec![0u8; 65536];
                for _ in 0..n / 65536 {
                    let k = cache.read_at(off, &mut buf).unwrap();
                    assert_eq!(&buf[..k], &data[off as usize..off as usize + k]);
                    off = (off + k as u64) % n;
                }
            });
        }
    });
    let served = cache.stats().fetched_bytes.load(Ordering::Relaxed);
    assert_eq!(
        served,
        data.len() as u64,
        "the registry served {served} bytes for a {} byte blob",
        data.len()
    );
}

/// A registry that stops: a blip shorter than the deadline is ridden out; a real outage makes
/// the first read wait its full deadline and later reads of that registry (any blob) only the
/// short one; once it is back, the next read succeeds at once and marks it up.
#[test]
fn a_registry_outage_costs_one_deadline_and_its_end_is_seen_at_once() {
    let storage = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(mut reg) = Registry::start_on(None, storage.path(), port) else {
        return;
    };
    let (data_a, data_b) = (random(1 << 20, 21), random(1 << 20, 22));
    let (a, b) = (
        reg.push("test/outage", &data_a),
        reg.push("test/outage", &data_b),
    );
    let outages = Arc::new(Outages::new(Duration::from_millis(500)));
    let full = Duration::from_secs(5);
    let opts = RegistryOptions {
        deadline: full,
        outages: Some(outages.clone()),
        ..quick()
    };
    let open = |d: &str| RegistryBlob::open(reg.location("test/outage", d), None, opts.clone());
    let (blob_a, blob_b) = (open(&a).unwrap(), open(&b).unwrap());
    let key = reg.url.clone();
    let mut buf = vec![0u8; 4096];

    // A blip: the registry stops and is back a second later, within the read's deadline.
    reg.stop();
    let path = storage.path().to_path_buf();
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        Registry::start_on(None, &path, port).unwrap()
    });
    blob_a.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..], &data_a[..4096]);
    let mut reg = back.join().unwrap();
    assert!(!outages.is_down(&key));
    assert_eq!(outages.outages.load(Ordering::Relaxed), 0);

    // An outage: the first read fails at its full deadline...
    reg.stop();
    let t = Instant::now();
    let e = blob_a.read_at(8192, &mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(t.elapsed() > full / 2, "gave up after {:?}", t.elapsed());
    assert!(outages.is_down(&key));
    assert_eq!(outages.outages.load(Ordering::Relaxed), 1);
    // ...and the reads after it, of this blob or another blob of the registry, within the
    // short deadline, saying why.
    for blob in [&blob_a, &blob_b, &blob_a] {
        let t = Instant::now();
        let e = blob.read_at(65536, &mut buf).unwrap_err();
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        assert!(e.to_string().contains("is down"), "{e}");
    }
    assert_eq!(outages.short_reads.load(Ordering::Relaxed), 3);
    let mut m = String::new();
    outages.render(&mut m);
    assert!(
        m.contains(&format!("overlaybd_registry_down{{registry=\"{key}\"}} 1")),
        "{m}"
    );

    // Back: the next read succeeds and the registry is up again, for every blob.
    let _reg = Registry::start_on(None, storage.path(), port).unwrap();
    blob_b.read_at(65536, &mut buf).unwrap();
    assert_eq!(&buf[..], &data_b[65536..65536 + 4096]);
    assert!(!outages.is_down(&key));
    let t = Instant::now();
    blob_a.read_at(65536, &mut buf).unwrap();
    assert_eq!(&buf[..], &data_a[65536..65536 + 4096]);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let mut m = String::new();
    outages.render(&mut m);
    assert!(m.contains("overlaybd_registry_outages_total 1"), "{m}");
    assert!(!m.contains("overlaybd_registry_down{"), "{m}");
}
