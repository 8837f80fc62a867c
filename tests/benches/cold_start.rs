//! Cold start: from the pull command to the container's output, of a converted image (lazy,
//! `obdctl rpull` + `ctr run` with overlaybd-snapshotter) against the same OCI image with
//! containerd's overlayfs snapshotter (`ctr images pull` + `ctr run`), with the registry
//! behind a rate limit; page cache dropped and every local cache fresh (a new environment per
//! run). Then a warm start (image pulled, caches full). Then a start that reads 32 MiB of the
//! data at 25 MB/s: lazily, lazily with the recorded trace prefetched (record-trace), and warm.
//! Prints one line per measurement. The cold and warm starts run on containerd 1.6 and, when
//! it is installed, on containerd 2.x, interleaved, and compare the two.
//!
//! `cargo bench -p e2e-tests --bench cold_start [-- DATA_MIB [LINGER_SECS]]` (root; default
//! 256 MiB of data in the image, of which the container's start reads none; the snapshotter's
//! `device_linger_secs`, default 60: 0 detaches a device when its container goes, so the warm
//! start attaches it again).

use std::time::Instant;

use e2e_tests::bench::{drop_caches, median};
use e2e_tests::image::GREETING;
use e2e_tests::{require, Containerd, Env, Options};

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

/// Cold-start seconds per round, bytes fetched, warm-start seconds per round.
type Samples = (Vec<f64>, u64, Vec<f64>);

/// Rounds of each measurement (interleaved across containerd versions); medians printed.
const ROUNDS: usize = 3;

fn main() {
    if !require() {
        return;
    }
    let big_mib = e2e_tests::bench::number_arg(256);
    // containerd 2.x too when it is there (scripts/test.sh fetches it).
    let versions: Vec<Containerd> = [Containerd::V1, Containerd::V2]
        .into_iter()
        .filter(|c| !c.is_v2() || c.bin_dir().is_some_and(|d| d.join("containerd").is_file()))
        .collect();
    println!(
        "cold_start: image = busybox + {big_mib} MiB data; start reads one small file; \
         containerd {versions:?}; medians of {ROUNDS} rounds"
    );
    trace_part(big_mib);
    // One registry with both images; every measurement on a fresh host (reset_host: containerd,
    // daemon, snapshotter, their state and caches new; page cache dropped).
    let (mut e, layers) = env(0, big_mib);
    let oci = format!("{}/app:v1", e.host());
    let obd = format!("{}/app:v1-obd", e.host());
    for rate_mb in [100u64, 25] {
        e.relay.set_rate(rate_mb * 1_000_000);
        let mut t: std::collections::BTreeMap<(String, &str), Samples> = Default::default();
        for round in 0..ROUNDS {
            for &c in &versions {
                e.opts.containerd = c;
                for kind in ["overlayfs", "overlaybd"] {
                    e.reset_host();
                    drop_caches();
                    let before = e.relay.served();
                    let start = Instant::now();
                    let image = if kind == "overlayfs" {
                        e.ctr_pull("default", kind, &[], &oci);
                        &oci
                    } else {
                        e.rpull(&obd);
                        &obd
                    };
                    run(&e, kind, image, &format!("c{round}"));
                    let cold = start.elapsed().as_secs_f64();
                    let served = e.relay.served() - before;
                    let start = Instant::now();
                    run(&e, kind, image, &format!("w{round}"));
                    let warm = start.elapsed().as_secs_f64();
                    let m = t.entry((format!("{c:?}"), kind)).or_default();
                    m.0.push(cold);
                    m.1 = served;
                    m.2.push(warm);
                }
            }
        }
        let mut lazy = Vec::new();
        for &c in &versions {
            let get = |kind| t[&(format!("{c:?}"), kind)].clone();
            let (o, o_served, o_warm) = get("overlayfs");
            let (b, b_served, b_warm) = get("overlaybd");
            let (o, b) = (median(o), median(b));
            lazy.push(b);
            println!(
                "{rate_mb:>4} MB/s  {:<12} layers {:>6.1} MB | OCI+overlayfs {:>6.2} s ({:>6.1} MB \
                 fetched) | overlaybd lazy {:>5.2} s ({:>5.1} MB fetched) = {:.2}x | warm: \
                 overlayfs {:.2} s, overlaybd {:.2} s",
                if c.is_v2() { "containerd 2" } else { "containerd 1" },
                layers as f64 / 1e6,
                o,
                o_served as f64 / 1e6,
                b,
                b_served as f64 / 1e6,
                b / o,
                median(o_warm),
                median(b_warm),
            );
        }
        if lazy.len() == 2 {
            println!(
                "{rate_mb:>4} MB/s  lazy start, containerd 2 / containerd 1: {:.2}x",
                lazy[1] / lazy[0]
            );
        }
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
