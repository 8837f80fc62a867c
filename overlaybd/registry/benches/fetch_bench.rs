//! Registry fetch figures, printed as numbers (not a timed test).
//!
//! `cargo bench -p overlaybd --bench fetch_bench` — starts Debian's `docker-registry` on
//! 127.0.0.1, pushes a 256 MiB blob of random bytes, then reads it cold, in one run:
//! `curl` fetching the whole blob; the registry source reading it sequentially by ranges of
//! 4, 16 and 64 MiB; the blob cache in front of the source (256 KiB refill units) read in 1 MiB
//! reads without and with readahead; and the cache's background whole-blob download (which
//! also checks the blob's SHA-256).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use overlaybd_cache::{BlobCache, DownloadOptions};
use overlaybd_registry::{BlobLocation, RegistryBlob, RegistryOptions};
use sha2::{Digest, Sha256};
use zfile::ReadAt;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().join("data").display()
    );
    std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (apt-get install docker-registry)");
    let url = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    let size = 256usize << 20;
    let mut x: u64 = 88172645463325252;
    let data: Vec<u8> = (0..size / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    let c = reqwest::blocking::Client::new();
    let loc = c
        .post(format!("{url}/v2/bench/blob/blobs/uploads/"))
        .send()
        .unwrap()
        .headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{url}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={digest}"))
        .body(data)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let blob_url = format!("{url}/v2/bench/blob/blobs/{digest}");
    let mbs = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
    let best = |f: &mut dyn FnMut()| {
        let mut b = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            f();
            b = b.min(t.elapsed());
        }
        b
    };
    let curl = best(&mut || {
        let s = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &blob_url])
            .status()
            .unwrap();
        assert!(s.success());
    });
    let curl_file = best(&mut || {
        let out = tempfile::NamedTempFile::new().unwrap();
        let s = Command::new("curl")
            .args(["-sf", "-o"])
            .arg(out.path())
            .arg(&blob_url)
            .status()
            .unwrap();
        assert!(s.success());
    });
    let location = BlobLocation {
        registry: url.clone(),
        repository: "bench/blob".into(),
        digest: digest.clone(),
    };
    let mut results = vec![
        ("curl, whole blob to /dev/null".to_string(), mbs(curl)),
        ("curl, whole blob to a file".to_string(), mbs(curl_file)),
    ];
    for piece in [4usize << 20, 16 << 20, 64 << 20] {
        let src = RegistryBlob::open(
            location.clone(),
            Some(size as u64),
            RegistryOptions::default(),
        )
        .unwrap();
        let mut buf = vec![0u8; piece];
        let d = best(&mut || {
            let mut off = 0u64;
            while off < size as u64 {
                off += src.read_at(off, &mut buf).unwrap() as u64;
            }
        });
        results.push((format!("source, {} MiB ranges", piece >> 20), mbs(d)));
    }
    let open_cache = || {
        let cdir = tempfile::tempdir().unwrap();
        let src = RegistryBlob::open(
            location.clone(),
            Some(size as u64),
            RegistryOptions::default(),
        )
        .unwrap();
        let cache = BlobCache::open(cdir.path(), &digest, size as u64, 256 * 1024, src).unwrap();
        (cdir, cache)
    };
    for ra in [0u64, 16 << 20, 32 << 20, 64 << 20] {
        let d = best(&mut || {
            let (_dir, cache) = open_cache();
            cache.set_readahead(ra);
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            while off < size as u64 {
                off += cache.read_at(off, &mut buf).unwrap() as u64;
            }
        });
        let name = if ra == 0 {
            "cache, 1 MiB reads, no readahead".to_string()
        } else {
            format!("cache, 1 MiB reads, readahead {} MiB", ra >> 20)
        };
        results.push((name, mbs(d)));
    }
    let d = best(&mut || {
        let (_dir, cache) = open_cache();
        cache.download(&DownloadOptions::default()).unwrap();
        assert!(cache.is_complete());
    });
    results.push(("cache, background download + sha256".into(), mbs(d)));
    // Per-request latency: 200 small range reads.
    let src = RegistryBlob::open(
        location.clone(),
        Some(size as u64),
        RegistryOptions::default(),
    )
    .unwrap();
    let mut small = vec![0u8; 4096];
    let t = Instant::now();
    for i in 0..200u64 {
        src.read_at(i * 1_000_003 % (size as u64 - 4096), &mut small)
            .unwrap();
    }
    let per = t.elapsed() / 200;
    let cfg = dir.path().join("curl.cfg");
    std::fs::write(
        &cfg,
        format!("url = \"{blob_url}\"\noutput = \"/dev/null\"\n").repeat(200),
    )
    .unwrap();
    let t = Instant::now();
    let s = Command::new("curl")
        .arg("-sf")
        .arg("-r")
        .arg("0-4095")
        .arg("-K")
        .arg(&cfg)
        .status()
        .unwrap();
    assert!(s.success());
    let curl_per = t.elapsed() / 200;
    println!(
        "one 4 KiB range request: ours {:.2} ms, curl (one process, keep-alive) {:.2} ms",
        per.as_secs_f64() * 1e3,
        curl_per.as_secs_f64() * 1e3
    );
    println!(
        "cold sequential read of a 256 MiB blob from docker-registry on 127.0.0.1 (best of 3):"
    );
    let base = results[0].1;
    for (name, v) in &results {
        println!("  {name:<38} {v:>7.0} MB/s  ({:.2}x curl)", v / base);
    }
    let _ = child.kill();
    let _ = child.wait();
}
