//! Cold start: from the pull command to the container's output, of a converted image (lazy,
//! `obdctl rpull` + `ctr run` with overlaybd-snapshotter) against the same OCI image with
//! containerd's overlayfs snapshotter (`ctr images pull` + `ctr run`), with the registry
//! behind a rate limit; page cache dropped and every local cache fresh (a new environment per
//! run). Then a warm start (image pulled, caches full). Then a start that reads 32 MiB of the
//! data at 25 MB/s: lazily, lazily with the recorded trace prefetched (record-trace), and warm.
//! Prints one line per measurement.
//!
//! `cargo bench -p e2e-tests --bench cold_start [-- DATA_MIB [LINGER_SECS]]` (root; default
//! 256 MiB of data in the image, of which the container's start reads none; the snapshotter's
//! `device_linger_secs`, default 60: 0 detaches a device when its container goes, so the warm
//! start attaches it again).

use std::time::{Duration, Instant};

use e2e_tests::image::GREETING;
use e2e_tests::{require, Env, Options};

fn drop_caches() {
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn env(rate: u64, big_mib: usize) -> (Env, u64) {
    let linger = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<u64>().ok())
        .nth(1)
        .unwrap_or(60);
    let env = Env::start(Options {
        rate,
        device_linger_secs: linger,
        ..Options::default()
    });
    let (_, layers) = env.converted_sample("app", big_mib);
    (env, layers)
}

fn run(env: &Env, snapshotter: &str, image: &str, id: &str) {
    let out = env.ctr(
        "default",
        &["run", "--rm", "--snapshotter", snapshotter, image, id],
    );
    assert_eq!(out.trim(), GREETING);
}

fn main() {
    if !require() {
        return;
    }
    let big_mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(256);
    println!("cold_start: image = busybox + {big_mib} MiB data; start reads one small file");
    trace_part(big_mib);
    for rate_mb in [100u64, 25] {
        let rate = rate_mb * 1_000_000;
        // OCI + overlayfs.
        let (e, layers) = env(rate, big_mib);
        let oci = format!("{}/app:v1", e.host());
        drop_caches();
        let t = Instant::now();
        e.ctr(
            "default",
            &[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                "overlayfs",
                &oci,
            ],
        );
        run(&e, "overlayfs", &oci, "o1");
        let t_oci = t.elapsed();
        let served_oci = e.relay.served();
        // Warm: a second container of the pulled image.
        let t = Instant::now();
        run(&e, "overlayfs", &oci, "o2");
        let t_oci_warm = t.elapsed();
        drop(e);
        // overlaybd, lazy.
        let (e, _) = env(rate, big_mib);
        let obd = format!("{}/app:v1-obd", e.host());
        drop_caches();
        let before = e.relay.served();
        let t = Instant::now();
        e.rpull(&obd);
        run(&e, "overlaybd", &obd, "b1");
        let t_obd = t.elapsed();
        let served_obd = e.relay.served() - before;
        // Warm: pulled, device and cache in place.
        let t = Instant::now();
        run(&e, "overlaybd", &obd, "b2");
        let t_warm = t.elapsed();
        drop(e);
        let s = |d: Duration| d.as_secs_f64();
        println!(
            "{rate_mb:>4} MB/s  layers {:>6.1} MB | OCI+overlayfs {:>6.2} s ({:>6.1} MB fetched) | \
             overlaybd lazy {:>5.2} s ({:>5.1} MB fetched) = {:.2}x | warm (a second \
             container): overlayfs {:.2} s, overlaybd {:.2} s",
            layers as f64 / 1e6,
            s(t_oci),
            served_oci as f64 / 1e6,
            s(t_obd),
            served_obd as f64 / 1e6,
            s(t_obd) / s(t_oci),
            s(t_oci_warm),
            s(t_warm),
        );
    }
}

/// A start that reads 32 MiB: the command runs from `ctr run` to its exit.
const READS: &str =
    "cat /data/small.txt; dd if=/data/big.bin of=/dev/null bs=1M count=32 skip=64 2>/dev/null";

fn trace_part(big_mib: usize) {
    let (mut e, _) = env(0, big_mib);
    let plain = format!("{}/app:v1-obd", e.host());
    let traced = format!("{}/app:v1-trace", e.host());
    e.record_trace(&plain, &traced, 60, &["sh", "-c", READS]);
    e.relay.set_rate(25_000_000);
    let mut timed = |image: &str, id: &str, fresh: bool| {
        if fresh {
            e.reset_host();
            e.rpull(image);
        }
        drop_caches();
        let t = Instant::now();
        let out = e.ctr(
            "default",
            &[
                "run",
                "--rm",
                "--snapshotter",
                "overlaybd",
                image,
                id,
                "sh",
                "-c",
                READS,
            ],
        );
        assert!(out.starts_with(GREETING));
        t.elapsed().as_secs_f64()
    };
    let lazy = timed(&plain, "l1", true);
    let warm = timed(&plain, "l2", false);
    let trace = timed(&traced, "t1", true);
    println!(
        "  25 MB/s  start reading 32 MiB: lazy cold {lazy:.2} s | with trace prefetch {trace:.2} s = {:.2}x warm | warm {warm:.2} s",
        trace / warm
    );
}
