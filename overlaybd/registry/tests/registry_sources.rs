//! Where blobs come from: mirrors and TLS from containerd's `hosts.toml` against real
//! registries, redirects to blob storage, a P2P agent in front of the registry, and the
//! background download.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{range_response, serve, Response};
use common::registry::{check_reads, free_port, quick, random, Located, Registry};
use overlaybd_cache::{BlobCache, DownloadOptions};
use overlaybd_registry::{BlobLocation, RegistryBlob, RegistryOptions};

fn hosts_toml(dir: &Path, registry_url: &str, text: &str) {
    let host = registry_url.split_once("://").unwrap().1;
    let d = dir.join(host);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hosts.toml"), text).unwrap();
}

#[test]
fn mirrors_from_hosts_toml_are_tried_in_order() {
    let Some(upstream) = Registry::start(None) else {
        return;
    };
    let Some(mirror) = Registry::start(None) else {
        return;
    };
    let data = random(3 << 20, 40);
    let digest = upstream.push("lib/app", &data);
    assert_eq!(mirror.push("lib/app", &data), digest);
    let only_upstream = random(1 << 20, 41);
    let d2 = upstream.push("lib/app", &only_upstream);
    let hosts = tempfile::tempdir().unwrap();
    let dead = free_port();
    hosts_toml(
        hosts.path(),
        &upstream.url,
        &format!(
            "server = \"{}\"\n[host.\"http://127.0.0.1:{dead}\"]\ncapabilities = [\"pull\"]\n[host.\"{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            upstream.url, mirror.url
        ),
    );
    let opts = RegistryOptions {
        hosts_dir: Some(hosts.path().to_path_buf()),
        ..quick()
    };
    // A blob the mirror lacks (404 there) comes from the upstream.
    let b = RegistryBlob::open(upstream.location("lib/app", &d2), None, opts.clone()).unwrap();
    check_reads(&b, &only_upstream);
    // With the upstream gone, the blob both have is still read: from the mirror, after the
    // dead mirror hands over.
    let loc = upstream.location("lib/app", &digest);
    drop(upstream);
    let b = RegistryBlob::open(loc.clone(), Some(data.len() as u64), opts.clone()).unwrap();
    check_reads(&b, &data);
    assert!(b.stats().fallbacks.load(Ordering::Relaxed) >= 2);
    // Without the hosts directory, the upstream is all there is.
    let e = RegistryBlob::open(loc, None, quick())
        .unwrap_err()
        .to_string();
    assert!(e.contains("gave up"), "{e}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it.
fn make_pki(dir: &Path) {
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
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        common::openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        common::openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

#[test]
fn tls_with_an_extra_ca_and_client_certificates_from_hosts_toml() {
    if !common::require_tool("docker-registry") || !common::require_tool("openssl") {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let p = |f: &str| pki.path().join(f).display().to_string();
    let storage = tempfile::tempdir().unwrap();
    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
        p("server.pem"),
        p("server.key"),
        p("ca.pem")
    );
    let reg = Registry::start_tls(tls, storage.path()).unwrap();
    // Push over TLS with the client certificate (reqwest, as the test's own client).
    let data = random(1 << 20, 42);
    let digest = {
        let id = reqwest::Identity::from_pem(
            &[
                std::fs::read(p("client.pem")).unwrap(),
                std::fs::read(p("client.key")).unwrap(),
            ]
            .concat(),
        )
        .unwrap();
        let c = reqwest::blocking::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(p("ca.pem")).unwrap()).unwrap(),
            )
            .identity(id)
            .build()
            .unwrap();
        common::registry::push_with(&c, &reg.url, "tls/blob", &data)
    };
    let loc = reg.location("tls/blob", &digest);
    let hosts = tempfile::tempdir().unwrap();
    let with = |text: &str| {
        hosts_toml(hosts.path(), &reg.url, text);
        RegistryOptions {
            hosts_dir: Some(hosts.path().to_path_buf()),
            ..quick()
        }
    };
    // The CA and a client certificate (key in its own file): reads work.
    let opts = with(&format!(
        "ca = \"{}\"\nclient = [[\"{}\", \"{}\"]]\n",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    ));
    let b = RegistryBlob::open(loc.clone(), Some(data.len() as u64), opts).unwrap();
    check_reads(&b, &data);
    // skip_verify instead of the CA also works.
    let opts = with(&format!(
        "skip_verify = true\nclient = [\"{}\", \"{}\"]\n",
        p("client.pem"),
        p("client.key")
    ));
    check_reads(&RegistryBlob::open(loc.clone(), None, opts).unwrap(), &data);
    // Without a client certificate, or without trusting the CA: a clear error, in time.
    for text in [
        format!("ca = \"{}\"\n", p("ca.pem")),
        format!(
            "client = [[\"{}\", \"{}\"]]\n",
            p("client.pem"),
            p("client.key")
        ),
    ] {
        let t = Instant::now();
        let e = RegistryBlob::open(loc.clone(), None, with(&text))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gave up"), "{text}: {e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    // A CA file that is not PEM is named.
    std::fs::write(pki.path().join("bad.pem"), "nonsense").unwrap();
    let e = RegistryBlob::open(loc, None, with(&format!("ca = \"{}\"\n", p("bad.pem"))))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.pem"), "{e}");
}

#[test]
fn redirects_to_blob_storage_do_not_carry_the_authorization_header() {
    let data = Arc::new(random(600_000, 43));
    let storage_saw_auth = Arc::new(AtomicBool::new(false));
    let storage_hits = Arc::new(AtomicUsize::new(0));
    let storage = {
        let (data, saw, hits) = (data.clone(), storage_saw_auth.clone(), storage_hits.clone());
        serve(move |req| {
            hits.fetch_add(1, Ordering::Relaxed);
            if req.header("authorization").is_some() {
                saw.store(true, Ordering::Relaxed);
            }
            range_response(req, &data)
        })
    };
    // Blob storage named `localhost`: another host than the registry's 127.0.0.1.
    let storage = storage.replace("127.0.0.1", "localhost");
    let front_saw_auth = Arc::new(AtomicUsize::new(0));
    let front = {
        let (data, saw) = (data.clone(), front_saw_auth.clone());
        serve(move |req| {
            if req.header("authorization") != Some("Basic dTpw") {
                return Response::new(401).header("WWW-Authenticate", "Basic realm=\"r\"");
            }
            saw.fetch_add(1, Ordering::Relaxed);
            if req.method == "HEAD" {
                return Response::new(200).body(data.to_vec());
            }
            Response::new(307).header("Location", format!("{storage}/bucket/blob?sig=abc"))
        })
    };
    let opts = RegistryOptions {
        credentials: Some(overlaybd_registry::auth::Credentials {
            username: "u".into(),
            password: "p".into(),
        }),
        ..quick()
    };
    let loc = BlobLocation {
        registry: front,
        repository: "r/x".into(),
        digest: format!("sha256:{}", "ab".repeat(32)),
    };
    let b = RegistryBlob::open(loc, Some(data.len() as u64), opts).unwrap();
    check_reads(&b, &data);
    assert!(storage_hits.load(Ordering::Relaxed) >= 5);
    assert!(front_saw_auth.load(Ordering::Relaxed) >= 5);
    assert!(
        !storage_saw_auth.load(Ordering::Relaxed),
        "the Authorization header went to another host"
    );
}

/// A P2P agent in the style of dadi-p2proxy: `GET <prefix>/<url>` fetches `url` with the
/// request's headers. It can corrupt the byte at `corrupt_at` (a blob offset).
fn agent(corrupt_at: Option<u64>, served: Arc<AtomicUsize>) -> String {
    let client = reqwest::blocking::Client::new();
    let url = serve(move |req| {
        let Some(target) = req.path.strip_prefix("/dadip2p/") else {
            return Response::new(404);
        };
        let mut r = client.request(req.method.parse().unwrap(), target);
        for k in ["range", "authorization"] {
            if let Some(v) = req.header(k) {
                r = r.header(k, v);
            }
        }
        let Ok(resp) = r.send() else {
            return Response::new(502);
        };
        let mut out = Response::new(resp.status().as_u16());
        for k in ["content-range", "www-authenticate"] {
            if let Some(v) = resp.headers().get(k) {
                out = out.header(k, v.to_str().unwrap());
            }
        }
        let cr = resp
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_string());
        let mut body = resp.bytes().unwrap().to_vec();
        served.fetch_add(body.len(), Ordering::Relaxed);
        if let (Some(at), Some(cr)) = (corrupt_at, cr) {
            let start: u64 = cr[6..].split('-').next().unwrap().parse().unwrap();
            if at >= start && at < start + body.len() as u64 {
                body[(at - start) as usize] ^= 0x5a;
            }
        }
        out.body(body)
    });
    format!("{url}/dadip2p")
}

#[test]
fn a_p2p_agent_serves_reads_and_the_registry_takes_over_when_it_is_down() {
    let Some(reg) = Registry::start(Some(("alice", "s3cret"))) else {
        return;
    };
    let data = random(2 << 20, 44);
    let digest = reg.push("p2p/blob", &data);
    let creds = overlaybd_registry::auth::Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    let served = Arc::new(AtomicUsize::new(0));
    let opts = RegistryOptions {
        agent: Some(agent(None, served.clone())),
        credentials: Some(creds.clone()),
        ..quick()
    };
    let b = RegistryBlob::open(reg.location("p2p/blob", &digest), None, opts).unwrap();
    check_reads(&b, &data);
    let s = b.stats();
    assert!(s.agent_bytes.load(Ordering::Relaxed) >= data.len() as u64);
    assert_eq!(
        s.bytes.load(Ordering::Relaxed),
        0,
        "nothing came from the registry"
    );
    assert!(served.load(Ordering::Relaxed) >= data.len());
    let mut m = String::new();
    s.render(&mut m, "");
    assert!(
        m.contains(&format!(
            "overlaybd_fetch_bytes_total{{source=\"agent\"}} {}\n",
            s.agent_bytes.load(Ordering::Relaxed)
        )),
        "{m}"
    );
    assert!(
        m.contains("overlaybd_fetch_bytes_total{source=\"registry\"} 0\n"),
        "{m}"
    );
    assert!(m.contains("overlaybd_fetch_seconds_count "), "{m}");
    // The agent is down: every read falls back to the registry.
    let opts = RegistryOptions {
        agent: Some(format!("http://127.0.0.1:{}/dadip2p", free_port())),
        credentials: Some(creds),
        ..quick()
    };
    let b = RegistryBlob::open(reg.location("p2p/blob", &digest), None, opts).unwrap();
    check_reads(&b, &data);
    assert!(b.stats().bytes.load(Ordering::Relaxed) >= data.len() as u64);
    assert!(b.stats().fallbacks.load(Ordering::Relaxed) >= 5);
}

#[test]
fn bad_bytes_from_the_agent_are_fetched_again_from_the_registry() {
    use std::io::Write as _;
    let Some(reg) = Registry::start(None) else {
        return;
    };
    // Random bytes: stored blocks, so the blob spans many cache units.
    let plain = random(3_000_000, 46);
    let mut w = zfile::ZFileWriter::new(Vec::new(), zfile::WriterOptions::default()).unwrap();
    w.write_all(&plain).unwrap();
    let blob = w.finish().unwrap().0;
    let digest = reg.push("p2p/zfile", &blob);
    // Find a data block in the middle and have the agent corrupt one of its bytes.
    let probe = zfile::ZFile::open(blob.clone()).unwrap();
    let ext = probe.block_extent(366).unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let opts = RegistryOptions {
        agent: Some(agent(Some(ext.offset + 3), served.clone())),
        ..quick()
    };
    let remote = RegistryBlob::open(reg.location("p2p/zfile", &digest), None, opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache =
        BlobCache::open(dir.path(), &digest, blob.len() as u64, 256 * 1024, remote).unwrap();
    cache.set_readahead(0);
    let z = zfile::ZFile::open(cache.clone()).unwrap();
    let mut out = vec![0u8; plain.len()];
    assert_eq!(z.read_at(0, &mut out).unwrap(), plain.len());
    assert!(out == plain, "the corrupted block was served");
    assert_eq!(cache.stats().dropped_units.load(Ordering::Relaxed), 1);
    let rs = cache.origin().stats();
    assert_eq!(rs.verification_failures.load(Ordering::Relaxed), 1);
    let unit = 256 * 1024u64;
    let u = (ext.offset + 3) / unit;
    assert_eq!(
        rs.bytes.load(Ordering::Relaxed),
        unit.min(blob.len() as u64 - u * unit),
        "exactly the damaged unit came from the registry"
    );
    assert!(served.load(Ordering::Relaxed) >= blob.len() - 256 * 1024);
}

#[test]
fn a_downloaded_blob_is_served_after_the_registry_is_gone() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let data = random(5 << 20, 45);
    let (_dir, cache, _) = common::registry::cached_remote(&reg, "dl/blob", &data);
    cache
        .download(&DownloadOptions {
            chunk: 1 << 20,
            ..Default::default()
        })
        .unwrap();
    assert!(cache.is_complete());
    drop(reg);
    check_reads(&*cache, &data);
}
