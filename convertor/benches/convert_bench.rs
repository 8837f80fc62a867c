//! Conversion throughput and peak memory (`cargo bench -p convertor --bench convert_bench`).
//!
//! Builds an image of a few hundred MB from this machine's `/usr/share` (three layers made by
//! GNU tar, gzip-compressed, plus a layer of deletions), pushes it to Debian's
//! `docker-registry` on 127.0.0.1, and runs the release `overlaybd-convertor convert` against
//! it as a child process, measuring wall time and peak RSS (`wait4`). Runs: a cold conversion
//! (twice), the same into another repository with a fresh dedup database, and again with that
//! database (every layer reused); the same two with the dedup records in a repository of the
//! registry (`--dedup-registry`: a second CI runner). Prints source MB/s over compressed and
//! uncompressed bytes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use common::*;

fn split_usr_share(parts: usize) -> Vec<Vec<String>> {
    let mut dirs: Vec<(String, u64)> = std::fs::read_dir("/usr/share")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| {
            let name = format!("usr/share/{}", e.file_name().to_string_lossy());
            let out = Command::new("du")
                .args(["-sb", &format!("/{name}")])
                .output()
                .unwrap();
            let size = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (name, size)
        })
        .collect();
    dirs.sort();
    let total: u64 = dirs.iter().map(|d| d.1).sum();
    let mut out = vec![Vec::new(); parts];
    let mut acc = 0u64;
    for (name, size) in dirs {
        let k = ((acc * parts as u64) / total.max(1)).min(parts as u64 - 1) as usize;
        out[k].push(name);
        acc += size;
    }
    out.retain(|p| !p.is_empty());
    out
}

struct Run {
    secs: f64,
    /// Peak RSS of the convertor process (VmHWM, polled: `wait4`'s maxrss would include the
    /// bench's own memory, which the child shares between fork and exec).
    hwm_kib: u64,
    stdout: String,
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn convert(bin: &str, args: &[&str]) -> Run {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run overlaybd-convertor");
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let mut hwm = 0;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if let Some(h) = vm_hwm(pid) {
            hwm = hwm.max(h);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success(), "convert failed: {status}");
    Run {
        secs,
        hwm_kib: hwm,
        stdout: reader.join().unwrap(),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_overlaybd-convertor");
    let reg = Registry::start().expect("docker-registry");
    let src = reg.remote("bench/src", true);
    let t = Instant::now();
    let mut layers: Vec<Vec<u8>> = split_usr_share(3)
        .iter()
        .map(|p| {
            let dirs: Vec<&str> = p.iter().map(String::as_str).collect();
            host_layer(&dirs)
        })
        .collect();
    let mut t2 = TarBuilder::new();
    t2.file("usr/share/.wh.common-licenses", 0o644, b"")
        .dir("etc", 0o755)
        .file("etc/bench", 0o644, b"bench\n");
    layers.push(t2.finish());
    let raw: u64 = layers.iter().map(|l| l.len() as u64).sum();
    let gz: Vec<u64> = layers.iter().map(|l| gzip(l).len() as u64).collect();
    let compressed: u64 = gz.iter().sum();
    push_image(&src, "v1", &layers);
    drop(layers);
    println!(
        "source image: {} layers, {:.1} MB uncompressed, {:.1} MB gzip (built and pushed in {:.1} s)",
        gz.len(),
        raw as f64 / 1e6,
        compressed as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("dedup.redb");
    let srcref = format!("{}/bench/src:v1", reg.addr);
    let runs: Vec<(&str, Vec<String>)> = vec![
        ("cold", vec![format!("{}/bench/obd1:v1", reg.addr)]),
        ("cold again", vec![format!("{}/bench/obd2:v1", reg.addr)]),
        (
            "cold, recording into a dedup db",
            vec![
                format!("{}/bench/obd3:v1", reg.addr),
                "--dedup-db".into(),
                db.display().to_string(),
            ],
        ),
        (
            "all layers from the dedup db",
            vec![
                format!("{}/bench/obd4:v1", reg.addr),
                "--dedup-db".into(),
                db.display().to_string(),
            ],
        ),
        (
            "cold, recording into the registry's dedup repository",
            vec![
                format!("{}/bench/obd5:v1", reg.addr),
                "--dedup-registry".into(),
                format!("{}/bench/dedup", reg.addr),
            ],
        ),
        (
            "another runner: all layers from the registry's dedup repository",
            vec![
                format!("{}/bench/obd6:v1", reg.addr),
                "--dedup-registry".into(),
                format!("{}/bench/dedup", reg.addr),
            ],
        ),
    ];
    println!("| run | wall time | source MB/s (gzip) | source MB/s (tar) | peak RSS |");
    println!("|---|---:|---:|---:|---:|");
    let mut digests = Vec::new();
    let mut size = String::new();
    for (name, extra) in runs {
        let mut args: Vec<&str> = vec!["convert", "--plain-http", &srcref];
        args.extend(extra.iter().map(String::as_str));
        let r = convert(bin, &args);
        if size.is_empty() {
            size = r
                .stdout
                .lines()
                .find(|l| l.starts_with("size: "))
                .unwrap_or("")
                .into();
        }
        digests.push(
            r.stdout
                .lines()
                .last()
                .unwrap_or("")
                .rsplit('@')
                .next()
                .unwrap_or("")
                .to_string(),
        );
        println!(
            "| {name} | {:.2} s | {:.1} | {:.1} | {:.1} MiB |",
            r.secs,
            compressed as f64 / 1e6 / r.secs,
            raw as f64 / 1e6 / r.secs,
            r.hwm_kib as f64 / 1024.0
        );
    }
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "every run gives the same manifest: {digests:?}"
    );
    println!("every run gave manifest {}; {size}", digests[0]);
}
