//! Daemon export figures, printed as numbers (not a timed test). Needs root, `/dev/fuse`,
//! loop devices, `docker-registry`, `fio` and `nbdcopy`; `nbdkit` is used for a reference when
//! present.
//!
//! `cargo bench -p overlaybd --bench daemon_bench` — builds a 256 MiB disk of mixed content
//! (overlaybd's vector generator), commits it twice as an overlaybd layer (lz4, 4 KiB blocks,
//! tar envelope; once with the BLAKE3 table, once with CRCs only, as overlaybd's tools write
//! it; `OBD_ZFILE=zstd:16384` picks another algorithm and block size, as the convertor's
//! default now is), pushes both to Debian's `docker-registry` on 127.0.0.1, attaches them to an
//! `overlaybd-daemon` (FUSE file + loop device, and NBD on a unix socket), reads each once to
//! warm the cache (checking every byte), and then, in one run beside two plain loop devices over the raw disk file
//! (buffered: the file is in the page cache; direct I/O: reads go to the disk, as our loop
//! device is set up), in rounds over all devices so that the host's drift falls on all alike:
//! - sequential 1 MiB `O_DIRECT` reads (`fio`, psync) of each loop device, best of 5 rounds;
//! - the whole device over NBD with `nbdcopy` to `null:`, best of 3 (and the raw file through
//!   `nbdkit file` for reference);
//! - random 4 KiB `O_DIRECT` reads at queue depth 1 and 32 (`fio`, libaio, 4 s each, median
//!   of 3 rounds): IOPS, mean and p99 completion latency;
//! - the daemon's resident memory with no device, after attaching, after the reads, and per
//!   further attached device.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::daemon::Daemon;
use common::run;
use common::Registry;
use sha2::{Digest, Sha256};

const SIZE: usize = 256 << 20;

fn main() {
    assert!(
        common::can_mount(),
        "the daemon benchmark needs root, /dev/fuse and /dev/loop-control"
    );
    for t in ["fio", "nbdcopy", "losetup", "docker-registry"] {
        assert!(common::require_tool(t), "{t} is needed");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    println!(
        "building a {} MiB disk and its overlaybd layers",
        SIZE >> 20
    );
    let data = zfile::testutil::gen_input(SIZE, 3);
    let raw = dir.join("raw.img");
    std::fs::write(&raw, &data).unwrap();
    let reg = Registry::start(None).expect("docker-registry");
    // The layer as our convertor writes it (BLAKE3 table, root in the annotations), and as
    // overlaybd's tools write it (CRCs only).
    let mut configs = Vec::new();
    for (name, integrity) in [("verified", true), ("crc", false)] {
        let (layer, root) = commit_layer(dir, &data, integrity);
        let blob = std::fs::read(&layer).unwrap();
        println!(
            "{name} layer blob: {} bytes ({:.1}% of the disk){}",
            blob.len(),
            blob.len() as f64 * 100.0 / SIZE as f64,
            root.as_deref()
                .map(|r| format!(", integrity root {r}"))
                .unwrap_or_default()
        );
        let digest = reg.push("bench/disk", &blob);
        let p = dir.join(format!("{name}.json"));
        std::fs::write(
            &p,
            format!(
                r#"{{"repoBlobUrl":"{}/v2/bench/disk/blobs","lowers":[{{"digest":"{digest}","size":{},"integrityRoot":"{}"}}]}}"#,
                reg.url,
                blob.len(),
                root.unwrap_or_default()
            ),
        )
        .unwrap();
        configs.push(p);
    }
    let want = hex::encode(Sha256::digest(&data));
    drop(data);

    let d = Daemon::start(&dir.join("daemon"));
    let rss_empty = d.rss_kib();
    d.ctl(&["attach", "v", configs[0].to_str().unwrap(), "--nbd"]);
    let rss_one = d.rss_kib();
    d.ctl(&["attach", "c", configs[1].to_str().unwrap(), "--nbd"]);
    let (lo_v, lo_c) = (d.field("v", "loop"), d.field("c", "loop"));

    // Warm the cache (the first read fetches the blob from the registry) and check the bytes.
    let t = Instant::now();
    assert_eq!(sha256_direct(&lo_v), want, "{lo_v}: wrong bytes");
    println!(
        "cold read of {lo_v} (registry → cache, verified): {:.0} MB/s",
        SIZE as f64 / t.elapsed().as_secs_f64() / 1e6
    );
    assert_eq!(sha256_direct(&lo_c), want, "{lo_c}: wrong bytes");
    let nbd_sock = dir.join("daemon/nbd.sock");

    // A second daemon serving the verified layer through FUSE over io_uring, where the kernel
    // offers it (the module parameter is turned on for the run and put back after).
    let uring = common::UringParam::on();
    let ud = uring.as_ref().map(|_| {
        let udir = dir.join("daemon-uring");
        std::fs::create_dir_all(&udir).unwrap();
        std::fs::write(
            udir.join("daemon.toml"),
            format!(
                "state_dir = \"{0}/state\"\nsocket = \"{0}/api.sock\"\nrun_dir = \"{0}/run\"\n\
                 cache_dir = \"{0}/cache\"\ncache_size_mb = 1024\nhosts_dir = \"\"\n\
                 read_deadline_secs = 5\nfuse_io_uring = true\nlog = \"info\"\n",
                udir.display()
            ),
        )
        .unwrap();
        let ud = Daemon::start(&udir);
        ud.ctl(&["attach", "u", configs[0].to_str().unwrap()]);
        ud
    });
    let lo_u = ud.as_ref().map(|ud| ud.field("u", "loop"));
    if let Some(lo_u) = &lo_u {
        assert_eq!(sha256_direct(lo_u), want, "{lo_u}: wrong bytes");
    } else {
        println!("(no FUSE over io_uring on this kernel: no io_uring row)");
    }

    // Plain loop devices over the raw disk file: buffered (reads are copies from the page
    // cache, where the file is) and with direct I/O (reads go to the disk), the way ours is set up.
    let plain = LoopGuard::attach(&raw, false);
    let plain_dio = LoopGuard::attach(&raw, true);
    assert_eq!(sha256_direct(&plain.0), want);
    assert_eq!(sha256_direct(&plain_dio.0), want);

    let mut devices = vec![
        ("plain loop, buffered (page cache)", plain.0.as_str()),
        ("plain loop, direct I/O (disk)", plain_dio.0.as_str()),
        ("FUSE + loop, verified (BLAKE3)", lo_v.as_str()),
        ("FUSE + loop, CRC only (overlaybd's)", lo_c.as_str()),
    ];
    if let Some(lo_u) = &lo_u {
        devices.push(("FUSE io_uring + loop, verified", lo_u.as_str()));
    }

    // Every figure is taken in rounds over all devices, so that the host's drift (this is a
    // shared machine) falls on all of them alike.
    println!("\nsequential 1 MiB O_DIRECT reads (fio psync), best of 5 rounds:");
    let seq: Vec<f64> = rounds(&devices, 5, |dev| fio(dev, "read", "1M", "psync", 1, None))
        .into_iter()
        .map(|runs| runs.iter().map(|r| r.bw).fold(0.0, f64::max))
        .collect();
    for ((name, _), bw) in devices.iter().zip(&seq) {
        println!("  {name:<36} {:>7.0} MB/s  {}", bw / 1e6, ratios(*bw, &seq));
    }

    println!("\nthe whole device over NBD (nbdcopy → null:), best of 3:");
    let nbd = |export: &str| {
        let uri = format!("nbd+unix:///{export}?socket={}", nbd_sock.display());
        best_mbs(|| run("nbdcopy", &[&uri, "null:"]))
    };
    let (nv, nc) = (nbd("v"), nbd("c"));
    println!(
        "  daemon NBD, verified                 {nv:>7.0} MB/s  {}",
        ratios(nv * 1e6, &seq)
    );
    println!(
        "  daemon NBD, CRC only                 {nc:>7.0} MB/s  {}",
        ratios(nc * 1e6, &seq)
    );
    if Command::new("nbdkit").arg("--version").output().is_ok() {
        let raw_s = raw.to_str().unwrap().to_string();
        let kit = best_mbs(|| {
            run(
                "nbdkit",
                &["-U", "-", "file", &raw_s, "--run", "nbdcopy \"$uri\" null:"],
            )
        });
        println!(
            "  nbdkit file (raw file, reference)    {kit:>7.0} MB/s  {}",
            ratios(kit * 1e6, &seq)
        );
    } else {
        println!("  (nbdkit not installed: no nbdkit reference)");
    }

    for qd in [1, 32] {
        println!(
            "\nrandom 4 KiB O_DIRECT reads, queue depth {qd} (fio libaio, 4 s; median of 3 rounds):"
        );
        let results: Vec<Fio> = rounds(&devices, 3, |dev| {
            fio(dev, "randread", "4k", "libaio", qd, Some(4))
        })
        .into_iter()
        .map(|mut runs| {
            runs.sort_by(|a, b| a.lat_us.total_cmp(&b.lat_us));
            runs.swap_remove(1)
        })
        .collect();
        let base: Vec<f64> = results.iter().map(|r| r.lat_us).collect();
        for ((name, _), r) in devices.iter().zip(&results) {
            println!(
                "  {name:<36} {:>9.0} IOPS  mean {:>7.1} µs  p99 {:>7.1} µs  latency {}",
                r.iops,
                r.lat_us,
                r.p99_us,
                ratios(r.lat_us, &base)
            );
        }
    }

    // Memory: what the reads left resident, and what each further device costs.
    let rss_used = d.rss_kib();
    let extra = 4;
    for i in 0..extra {
        d.ctl(&["attach", &format!("m{i}"), configs[0].to_str().unwrap()]);
    }
    let rss_attached = d.rss_kib();
    for i in 0..extra {
        let lo = d.field(&format!("m{i}"), "loop");
        fio(&lo, "read", "1M", "psync", 1, None);
    }
    let rss_read = d.rss_kib();
    println!("\ndaemon resident memory (VmRSS):");
    println!(
        "  no device                             {:>7} KiB",
        rss_empty
    );
    println!(
        "  one device attached                   {:>7} KiB  (+{} KiB)",
        rss_one,
        rss_one - rss_empty
    );
    println!(
        "  two devices, after the benchmark      {:>7} KiB  (+{} KiB per device)",
        rss_used,
        (rss_used - rss_empty) / 2
    );
    println!(
        "  {extra} more attached                       {:>7} KiB  (+{} KiB per device)",
        rss_attached,
        (rss_attached - rss_used) / extra as u64
    );
    println!(
        "  {extra} more, each read once in 1 MiB reads {:>7} KiB  (+{} KiB per device)",
        rss_read,
        (rss_read - rss_used) / extra as u64
    );
    drop(d);
}

/// Commits `data` as an overlaybd layer (lz4, 4 KiB blocks, tar envelope, and the integrity
/// table when `integrity`) as `obdctl layer commit -z -t` does; returns the blob and its root.
fn commit_layer(dir: &Path, data: &[u8], integrity: bool) -> (PathBuf, Option<String>) {
    let (rw_data, rw_index) = (dir.join("rw.data"), dir.join("rw.index"));
    let l = overlaybd_lsmt::RwLayer::create(
        &rw_data,
        &rw_index,
        data.len() as u64,
        None,
        Default::default(),
    )
    .unwrap();
    for (i, c) in data.chunks(1 << 20).enumerate() {
        l.write((i as u64) << 20, c).unwrap();
    }
    l.flush().unwrap();
    drop(l);
    let out = dir.join(if integrity { "verified.tar" } else { "crc.tar" });
    // What `obdctl layer commit -z -t [--integrity]` does.
    let l = overlaybd_lsmt::RwLayer::open_read_only(&rw_data, &rw_index).unwrap();
    let src = l.data_file().try_clone().unwrap();
    let opts = overlaybd_lsmt::CommitOptions {
        virtual_size: l.header().virtual_size,
        ..Default::default()
    };
    let mut zopts = zfile::WriterOptions {
        integrity,
        ..Default::default()
    };
    if let Ok(v) = std::env::var("OBD_ZFILE") {
        let (a, bs) = v.split_once(':').expect("OBD_ZFILE: ALGORITHM:BLOCK_SIZE");
        zopts.algorithm = match a {
            "zstd" => zfile::Algorithm::Zstd,
            "lz4" => zfile::Algorithm::Lz4,
            _ => panic!("OBD_ZFILE: lz4 or zstd"),
        };
        zopts.block_size = bs.parse().expect("OBD_ZFILE: a block size");
    }
    let f = std::io::BufWriter::new(std::fs::File::create(&out).unwrap());
    let pax = zfile::envelope::PaxWriter::new(f).unwrap();
    let mut z = zfile::ZFileWriter::new(pax, zopts).unwrap();
    overlaybd_lsmt::commit(&l.mappings(), &[&src], &mut z, &opts).unwrap();
    let (pax, summary) = z.finish_with_header().unwrap();
    std::io::Write::flush(&mut pax.finish().unwrap().0).unwrap();
    let root = summary.integrity_root.map(|r| r.to_string());
    assert_eq!(root.is_some(), integrity);
    std::fs::remove_file(rw_data).unwrap();
    std::fs::remove_file(rw_index).unwrap();
    (out, root)
}

/// sha256 of a whole block device read with O_DIRECT in 1 MiB reads.
fn sha256_direct(dev: &str) -> String {
    let (sum, total) = common::sha256_direct(dev);
    assert_eq!(total, SIZE as u64, "{dev}: size");
    sum
}

/// `n` rounds of `f` over every device; per device, its `n` results.
fn rounds<T>(devices: &[(&str, &str)], n: usize, mut f: impl FnMut(&str) -> T) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = devices.iter().map(|_| Vec::new()).collect();
    for _ in 0..n {
        for (i, (_, dev)) in devices.iter().enumerate() {
            out[i].push(f(dev));
        }
    }
    out
}

/// `x` against the two plain loop devices' figures.
fn ratios(x: f64, plain: &[f64]) -> String {
    format!("{:.2}x buffered, {:.2}x direct", x / plain[0], x / plain[1])
}

/// MB/s of the device size over the best of 3 runs of `f`.
fn best_mbs(mut f: impl FnMut() -> String) -> f64 {
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap();
    SIZE as f64 / best.as_secs_f64() / 1e6
}

struct Fio {
    /// bytes per second
    bw: f64,
    iops: f64,
    lat_us: f64,
    p99_us: f64,
}

/// One `fio` job on `dev` (O_DIRECT); `runtime` in seconds, else the whole device once.
fn fio(dev: &str, rw: &str, bs: &str, engine: &str, qd: u32, runtime: Option<u32>) -> Fio {
    let mut args = vec![
        "--name=bench".to_string(),
        format!("--filename={dev}"),
        format!("--rw={rw}"),
        format!("--bs={bs}"),
        format!("--ioengine={engine}"),
        format!("--iodepth={qd}"),
        "--direct=1".into(),
        "--readonly".into(),
        "--randrepeat=0".into(),
        "--output-format=json".into(),
    ];
    if let Some(s) = runtime {
        args.push(format!("--runtime={s}"));
        args.push("--time_based".into());
    }
    let out = run("fio", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let r = &j["jobs"][0]["read"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("fio: {v} in {r}"));
    Fio {
        bw: f(&r["bw_bytes"]),
        iops: f(&r["iops"]),
        lat_us: f(&r["clat_ns"]["mean"]) / 1e3,
        p99_us: f(&r["clat_ns"]["percentile"]["99.000000"]) / 1e3,
    }
}

struct LoopGuard(String);

impl LoopGuard {
    fn attach(file: &Path, direct_io: bool) -> LoopGuard {
        let dio = format!("--direct-io={}", if direct_io { "on" } else { "off" });
        let dev = run(
            "losetup",
            &[
                "--find",
                "--show",
                "--read-only",
                &dio,
                file.to_str().unwrap(),
            ],
        );
        LoopGuard(dev.trim().to_string())
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}
