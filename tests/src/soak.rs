//! The soak: real containerd, the daemon, the snapshotter and the registry (through the relay)
//! for a given time, with many images attached at once, containers starting, reading files
//! they check, writing and stopping all the time, and faults on a schedule: the registry gone
//! for a while, answering 503, or stalled (connections open, nothing sent), the daemon and
//! the snapshotter killed (SIGKILL) and started again. Every
//! container's reads must give the right bytes or a clean I/O error; at the end nothing may
//! have leaked (mounts, loop devices, FUSE connections, descriptors, threads), and the
//! daemon's and the snapshotter's memory over time is reported.
//!
//! `run` is used by the bench `soak` (`cargo bench -p e2e-tests --bench soak -- SECONDS`, one
//! hour for the report in `docs/reliability.md`) and, short, by the test `tests/soak.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::{cri, image, Env, Options};

/// How long after a fault ends a failure is still put down to it (a read waits up to the
/// daemon's deadline, 10 s here; a restart takes a second or two).
pub const SETTLE: Duration = Duration::from_secs(12);

/// The fault going on, if any: set when it starts, cleared [`SETTLE`] after it ends unless
/// another started meanwhile.
#[derive(Debug, Default)]
struct Faults {
    now: Mutex<(Option<&'static str>, u64)>,
}

impl Faults {
    fn current(&self) -> Option<&'static str> {
        self.now.lock().unwrap().0
    }

    fn begin(&self, kind: &'static str) -> u64 {
        let mut n = self.now.lock().unwrap();
        n.1 += 1;
        *n = (Some(kind), n.1);
        n.1
    }

    /// The fault numbered `id` ended: cleared after [`SETTLE`] if it is still the last.
    fn end(self: &Arc<Self>, id: u64) {
        let me = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(SETTLE);
            let mut n = me.now.lock().unwrap();
            if n.1 == id {
                n.0 = None;
            }
        });
    }
}

/// What a soak runs.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub duration: Duration,
    /// Distinct converted images (they share the busybox layer), each kept attached by a
    /// container that sleeps.
    pub images: usize,
    /// Threads starting short containers, one after the other.
    pub workers: usize,
    /// A fault every this often, the next of `schedule` (which repeats).
    pub fault_every: Duration,
    /// The faults in order.
    pub schedule: Vec<Fault>,
    /// How long registry outages last, in turn: one shorter than the daemon's read deadline
    /// (10 s; reads wait and succeed), one longer (reads fail with EIO, then fast while the
    /// daemon has the registry down).
    pub outages: [Duration; 2],
    /// How long the registry answers 503, or stalls: shorter than the daemon's read deadline
    /// (reads retry and succeed).
    pub blip: Duration,
    /// The daemon's cache, smaller than the images so that it evicts under load.
    pub cache_mb: u64,
}

/// A fault of a schedule: the registry gone (connections cut and refused, for
/// [`SoakOptions::outages`]), answering 503 or stalled (for [`SoakOptions::blip`]), a process
/// SIGKILLed and started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    RegistryOutage,
    Registry503s,
    RegistryStall,
    DaemonKilled,
    SnapshotterKilled,
}

impl Fault {
    /// How the report names it.
    pub fn name(self) -> &'static str {
        match self {
            Fault::RegistryOutage => "registry outage",
            Fault::Registry503s => "registry 503s",
            Fault::RegistryStall => "registry stall",
            Fault::DaemonKilled => "daemon killed",
            Fault::SnapshotterKilled => "snapshotter killed",
        }
    }
}

/// What a soak saw.
#[derive(Debug, Default)]
pub struct Report {
    pub seconds: f64,
    pub images: usize,
    /// Containers that ran to the end and read the right bytes.
    pub containers_ok: u64,
    /// Containers that failed while a fault was on (or within [`SETTLE`] after it), by fault:
    /// an I/O error or a process killed for an unreadable page during a registry outage, a
    /// call in flight when the snapshotter was killed. Their output is checked for wrong
    /// bytes like any other.
    pub interrupted: BTreeMap<&'static str, u64>,
    /// A few of those, as examples.
    pub interrupted_examples: Vec<String>,
    /// Containers that failed with no fault on: with the status and the output.
    pub containers_failed: Vec<String>,
    /// Containers that exited 0 (so their checks passed) but whose output ctr lost.
    pub output_lost: u64,
    /// Containers that read wrong bytes: must stay empty.
    pub wrong_bytes: Vec<String>,
    /// Bytes of files checked inside containers.
    pub bytes_checked: u64,
    /// Bytes the registry served during the run (blocks evicted and fetched again).
    pub registry_bytes: u64,
    pub faults: BTreeMap<&'static str, u64>,
    /// Memory, sampled every half second.
    pub rss: Vec<Sample>,
    /// What was left at the end that was not there at the start (empty when nothing leaked).
    pub leaks: Vec<String>,
    /// (what, at the start, at the end) of each resource counted.
    pub counts: Vec<(String, u64, u64)>,
}

/// One memory sample: RSS of each process (KiB) and its PID (a new PID is a restart).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub secs: f64,
    /// (daemon, snapshotter)
    pub kib: [u64; 2],
    pub pid: [u32; 2],
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn count_dir(p: impl AsRef<Path>) -> u64 {
    std::fs::read_dir(p).map_or(0, |d| d.count() as u64)
}

/// Loop devices whose backing file is under `dir`.
fn loops_under(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(b.trim()).starts_with(dir) {
                n += 1;
            }
        }
    }
    n
}

/// The resources a run must give back: (what, count).
fn resources(env: &Env) -> Vec<(String, u64)> {
    let mut v = vec![
        (
            "mounts under the test directory".to_string(),
            env.mounts().len() as u64,
        ),
        (
            "loop devices over its files".into(),
            loops_under(env.dir.path()),
        ),
        (
            "FUSE connections".into(),
            count_dir("/sys/fs/fuse/connections"),
        ),
        ("daemon devices".into(), env.daemon_devices().len() as u64),
    ];
    for (who, p) in [("daemon", &env.daemon), ("snapshotter", &env.snapshotter)] {
        if let Some(p) = p {
            let pid = p.pid();
            v.push((
                format!("{who} descriptors"),
                count_dir(format!("/proc/{pid}/fd")),
            ));
            v.push((
                format!("{who} threads"),
                count_dir(format!("/proc/{pid}/task")),
            ));
        }
    }
    v
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Runs the soak; the report says what it saw (the caller decides what fails).
pub fn run(o: &SoakOptions) -> Report {
    // The FUSE connections the kernel has, to count (fusectl; mounted if it is not).
    if !std::fs::read_to_string("/proc/mounts").is_ok_and(|m| m.contains(" fusectl ")) {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
            .status();
    }
    let env = Env::start(Options {
        read_deadline_secs: 10,
        // Smaller than the images: blobs are evicted and fetched again all the time, so reads
        // keep reaching the registry (and its outages).
        cache_size_mb: o.cache_mb,
        // Held across the snapshotter's restarts, as systemd's socket unit holds it.
        snapshotter_socket_held: true,
        device_linger_secs: 0,
        ..Options::default()
    });
    let ns = "k8s.io";
    // Images: the busybox layer shared by all, a data layer of 1–14 MiB shared by a few, and
    // a layer of their own: every image is a device of its own.
    let mut images = Vec::new();
    for i in 0..o.images {
        let mib = 1 + i % 7 + i / 7;
        let repo = format!("soak{i}");
        let layers = [
            image::busybox_layer(),
            image::data_layer(mib),
            image::id_layer(&repo),
        ];
        image::push(&env.registry_addr, &repo, "v1", &layers, &["/bin/sh"]);
        env.convert(&format!("{repo}:v1"), &format!("{repo}:v1-obd"));
        let image = format!("{}/{repo}:v1-obd", env.host());
        cri::pull_image(&env.containerd_socket(), &image)
            .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
        let want = format!(
            "{}  /data/big.bin\n{}  /data/small.txt\n",
            sha256_hex(&image::big_bin(mib)),
            sha256_hex(format!("{}\n", image::GREETING).as_bytes())
        );
        images.push((image, want, (mib as u64) << 20));
    }
    // A container per image that stays: every image attached at once; then what is open.
    let attach_all = |env: &Env, prefix: &str| {
        for (i, (image, _, _)) in images.iter().enumerate() {
            let id = format!("{prefix}{i}");
            let run = ["run", "-d", "--snapshotter", "overlaybd", image, &id];
            env.ctr(ns, &[&run[..], &["sleep", "1000000"]].concat());
        }
        std::thread::sleep(Duration::from_secs(2));
        resources(env)
    };
    let start_counts = attach_all(&env, "hold");
    let served_before = env.relay.served();

    let env = Arc::new(Mutex::new(env));
    let stop = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(Faults::default());
    let report = Arc::new(Mutex::new(Report {
        images: o.images,
        ..Report::default()
    }));
    let started = Instant::now();
    let mut threads = Vec::new();
    // Workers: short containers that check both files, write to their upper layer and stop.
    let socket = env.lock().unwrap().containerd_socket();
    for w in 0..o.workers {
        let (env, stop, faults, report, images, socket) = (
            env.clone(),
            stop.clone(),
            faults.clone(),
            report.clone(),
            images.clone(),
            socket.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (image, want, big) = &images[(w + n as usize * 7) % images.len()];
                let id = format!("w{w}-{n}");
                n += 1;
                let fault_before = faults.current();
                // Checks both files, writes to its upper layer and reads that back.
                let out = std::process::Command::new("ctr")
                    .arg("--address")
                    .arg(&socket)
                    .args([
                        "--namespace",
                        "k8s.io",
                        "run",
                        "--rm",
                        "--snapshotter",
                        "overlaybd",
                    ])
                    .arg(image)
                    .arg(&id)
                    .args([
                        "sh",
                        "-c",
                        // One printf at the end: ctr can lose the tail of a task's output
                        // when it exits (seen: exit 0, the last line missing).
                        "s=$(sha256sum /data/big.bin /data/small.txt) && echo $$ > /tmp/w && \
                         test \"$(cat /tmp/w)\" = $$ && printf '%s\\nwrote\\n' \"$s\"",
                    ])
                    .output()
                    .expect("run ctr");
                let stdout = String::from_utf8_lossy(&out.stdout).to_string();
                let stderr = String::from_utf8_lossy(&out.stderr).to_string();
                let fault = fault_before.or(faults.current());
                let mut r = report.lock().unwrap();
                let what = format!("{id} {image} ({}): {stdout}{stderr}", out.status);
                if out.status.success() && stdout == format!("{want}wrote\n") {
                    r.containers_ok += 1;
                    r.bytes_checked += big + 23;
                } else if stdout
                    .lines()
                    .any(|l| l.contains("/data/") && !want.contains(l))
                {
                    r.wrong_bytes.push(what);
                } else if out.status.success() && stdout.is_empty() {
                    // The task succeeded (its checks passed) and ctr lost its output.
                    r.output_lost += 1;
                } else if let Some(kind) = fault {
                    *r.interrupted.entry(kind).or_default() += 1;
                    if r.interrupted_examples.len() < 6 {
                        r.interrupted_examples
                            .push(format!("during {kind}: {what}"));
                    }
                } else {
                    r.containers_failed.push(what);
                }
                drop(r);
                // A container that did not end cleanly is removed, so none piles up.
                if !out.status.success() {
                    env.lock().unwrap().remove_container("k8s.io", &id);
                }
            }
        }));
    }
    // Faults, in turn, and memory samples.
    assert!(!o.schedule.is_empty(), "a schedule without faults");
    let kinds = &o.schedule;
    let mut next_fault = started + o.fault_every;
    let mut k = 0;
    let mut dropped = Instant::now();
    while started.elapsed() < o.duration {
        std::thread::sleep(Duration::from_millis(500));
        // The containers' reads must reach the device, not the page cache.
        if dropped.elapsed() >= Duration::from_secs(2) {
            crate::bench::drop_caches();
            dropped = Instant::now();
        }
        {
            let e = env.lock().unwrap();
            let pid = |p: &Option<crate::Proc>| p.as_ref().map_or(0, |p| p.pid());
            let (d, sn) = (pid(&e.daemon), pid(&e.snapshotter));
            report.lock().unwrap().rss.push(Sample {
                secs: started.elapsed().as_secs_f64(),
                kib: [rss_kib(d), rss_kib(sn)],
                pid: [d, sn],
            });
        }
        if Instant::now() < next_fault {
            continue;
        }
        let fault = kinds[k % kinds.len()];
        let kind = fault.name();
        k += 1;
        next_fault = Instant::now() + o.fault_every;
        *report.lock().unwrap().faults.entry(kind).or_default() += 1;
        let id = faults.begin(kind);
        match fault {
            Fault::RegistryOutage => {
                let n = report.lock().unwrap().faults[kind] as usize;
                env.lock().unwrap().relay.stop();
                std::thread::sleep(o.outages[(n - 1) % 2]);
                env.lock().unwrap().relay.resume();
            }
            Fault::Registry503s | Fault::RegistryStall => {
                {
                    let e = env.lock().unwrap();
                    if fault == Fault::RegistryStall {
                        e.relay.stall();
                    } else {
                        e.relay.unavailable();
                    }
                }
                std::thread::sleep(o.blip);
                env.lock().unwrap().relay.resume();
            }
            Fault::DaemonKilled => {
                let mut e = env.lock().unwrap();
                if let Some(d) = e.daemon.as_mut() {
                    d.kill9();
                }
                e.start_daemon();
            }
            Fault::SnapshotterKilled => {
                let mut e = env.lock().unwrap();
                if let Some(s) = e.snapshotter.as_mut() {
                    s.kill9();
                }
                e.spawn_snapshotter();
            }
        }
        faults.end(id);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let env = Arc::try_unwrap(env)
        .ok()
        .expect("workers done")
        .into_inner()
        .unwrap();
    let served = env.relay.served() - served_before;
    env.remove_containers(ns);
    // Then the holders again, to count what is left with every image attached as at the start.
    let end_counts = attach_all(&env, "again");
    let mut r = Arc::try_unwrap(report).unwrap().into_inner().unwrap();
    r.seconds = started.elapsed().as_secs_f64();
    r.registry_bytes = served;
    for ((what, a), (_, b)) in start_counts.into_iter().zip(end_counts) {
        // Descriptors and threads vary a little with what is running at the moment.
        let slack = if what.contains("descriptors") || what.contains("threads") {
            8
        } else {
            0
        };
        if b > a + slack {
            r.leaks
                .push(format!("{what}: {a} at the start, {b} at the end"));
        }
        r.counts.push((what, a, b));
    }
    drop(env);
    r
}

/// The report as text: counts, faults, memory over time (first, middle, last sample, and the
/// growth per hour), resources at the start and the end, and every failure.
pub fn print(r: &Report) {
    println!(
        "soak: {:.0} s, {} images attached at once; containers: {} ok ({} more exited 0 with \
         their output lost by ctr), {:?} failed during a fault, {} failed otherwise, {} read \
         wrong bytes; {:.1} MB of files checked",
        r.seconds,
        r.images,
        r.containers_ok,
        r.output_lost,
        r.interrupted,
        r.containers_failed.len(),
        r.wrong_bytes.len(),
        r.bytes_checked as f64 / 1e6
    );
    println!(
        "faults: {:?}; the registry served {:.1} MB meanwhile",
        r.faults,
        r.registry_bytes as f64 / 1e6
    );
    // Memory: per process, the longest run without a restart (start, peak, end, and over
    // ten minutes or more the growth per hour).
    for (p, who) in ["daemon", "snapshotter"].iter().enumerate() {
        let Some(run) = r
            .rss
            .chunk_by(|a, b| a.pid[p] == b.pid[p])
            .max_by_key(|run| run.len())
            .filter(|run| run.len() >= 2)
        else {
            continue;
        };
        let (a, z) = (run[0], run[run.len() - 1]);
        let peak = run.iter().map(|s| s.kib[p]).max().unwrap_or(0);
        let growth = if z.secs - a.secs >= 600.0 {
            let per_hour = (z.kib[p] as f64 - a.kib[p] as f64) / ((z.secs - a.secs) / 3600.0);
            format!(" ({per_hour:+.0} KiB per hour)")
        } else {
            // A rate over minutes would mostly measure warming up.
            String::new()
        };
        println!(
            "{who} RSS over its longest run ({:.0} s to {:.0} s): {} KiB, peak {peak}, end {} \
             KiB{growth}",
            a.secs, z.secs, a.kib[p], z.kib[p]
        );
    }
    // Over a long run, memory every five minutes (a new PID: restarted since the last line).
    if r.seconds >= 600.0 {
        println!("RSS every 5 minutes (KiB): seconds, daemon (pid), snapshotter (pid)");
        let mut mark = 0.0;
        for s in &r.rss {
            if s.secs >= mark {
                println!(
                    "  {:5.0} {:7} ({}) {:7} ({})",
                    s.secs, s.kib[0], s.pid[0], s.kib[1], s.pid[1]
                );
                mark += 300.0;
            }
        }
    }
    for (what, a, b) in &r.counts {
        println!("  {what}: {a} at the start, {b} at the end");
    }
    for l in &r.leaks {
        println!("LEAK: {l}");
    }
    for e in &r.interrupted_examples {
        println!("interrupted: {}", e.trim());
    }
    for f in &r.containers_failed {
        println!("failed: {}", f.trim());
    }
    for w in &r.wrong_bytes {
        println!("WRONG BYTES: {}", w.trim());
    }
}
