//! The `overlaybd-daemon` binary end to end: a remote image from a real registry attached
//! through the gRPC API, mounted and read; a trace recorded and then replayed up front; the
//! daemon killed and restarted under a mounted filesystem.

mod common;

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{quit_keeper, Daemon};
use common::Registry;
use common::{can_mount, run, vector, AlignedBuf, G_DISK};

/// Sum of a Prometheus counter's samples.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn mount_ro(dev: &str, at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    run(
        "mount",
        &["-t", "ext4", "-o", "ro", dev, at.to_str().unwrap()],
    );
}

fn umount(at: &Path) {
    let _ = Command::new("umount").arg(at).status();
}

fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

/// Pushes vector g's layer to a registry and writes a config.v1.json for it.
fn remote_g(reg: &Registry, dir: &Path) -> (PathBuf, String) {
    let blob = std::fs::read(vector("g.ext4.lz4.bs4.zfile")).unwrap();
    let result = dir.join("result");
    remote_config(
        reg,
        dir,
        "lib/g",
        &blob,
        &format!(r#","upper":{{}},"resultFile":"{}""#, result.display()),
    )
}

/// Pushes `blob` to `repo` and writes a config.v1.json with it as the one lower (and `extra`
/// keys after the lowers); returns the config and the blob's digest.
fn remote_config(
    reg: &Registry,
    dir: &Path,
    repo: &str,
    blob: &[u8],
    extra: &str,
) -> (PathBuf, String) {
    let digest = reg.push(repo, blob);
    let cfg = dir.join("config.v1.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"repoBlobUrl":"{}/v2/{repo}/blobs","lowers":[{{"digest":"{digest}","size":{}}}]{extra}}}"#,
            reg.url,
            blob.len()
        ),
    )
    .unwrap();
    (cfg, digest)
}

/// A registry for a test that mounts, or `None` (the test then returns; under CI it fails).
fn mountable_registry() -> Option<Registry> {
    if !can_mount() {
        return None;
    }
    Registry::start(None)
}

#[test]
fn a_remote_image_attaches_mounts_and_detaches() {
    if !can_mount() || !common::require_tool("nbdinfo") {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let (cfg, digest) = remote_g(&reg, tmp.path());
    d.ctl(&["attach", "g", cfg.to_str().unwrap(), "--nbd"]);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("result")).unwrap(),
        "success"
    );
    let lo = d.field("g", "loop");
    assert!(lo.starts_with("/dev/loop"), "{lo}");
    assert_eq!(d.field("g", "ro"), "true");
    let before = metric(&d.stats("g"), "overlaybd_cache_fetched_bytes_total");
    let mnt = tmp.path().join("mnt");
    mount_ro(&lo, &mnt);
    let expected = common::g_tree(tmp.path());
    let r = std::panic::catch_unwind(|| common::assert_same_tree(&expected, &mnt));
    umount(&mnt);
    r.unwrap();
    let stats = d.stats("g");
    // The blob (290 KB) came from the registry, through the cache, once.
    let fetched = metric(&stats, "overlaybd_cache_fetched_bytes_total");
    assert!(fetched > 0 && before <= fetched, "{stats}");
    assert!(
        fetched
            <= std::fs::metadata(vector("g.ext4.lz4.bs4.zfile"))
                .unwrap()
                .len()
    );
    assert!(
        metric(&stats, "overlaybd_fetch_requests_total") > 0,
        "{stats}"
    );
    assert!(
        metric(&stats, "overlaybd_device_read_bytes_total") > 0,
        "{stats}"
    );
    assert_eq!(metric(&stats, "overlaybd_device_read_errors_total"), 0);
    // The same device over NBD.
    let info = run(
        "nbdinfo",
        &[
            "--size",
            &format!(
                "nbd+unix:///g?socket={}",
                tmp.path().join("nbd.sock").display()
            ),
        ],
    );
    assert_eq!(info.trim(), (1u64 << 30).to_string());
    // Metrics over HTTP.
    let toml = std::fs::read_to_string(&d.config).unwrap();
    let addr = toml
        .lines()
        .find_map(|l| l.strip_prefix("metrics_address = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let m = reqwest::blocking::get(format!("http://{addr}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(metric(&m, "overlaybd_devices"), 1, "{m}");
    assert!(metric(&m, "overlaybd_device_read_bytes_total") > 0);

    // The descriptor keeper runs while it holds the device's FUSE descriptor.
    let keeper = tmp.path().join("state/fdstore.sock");
    let keeper_answers = || std::os::unix::net::UnixStream::connect(&keeper).is_ok();
    assert!(keeper_answers(), "a device is attached, so the keeper runs");

    // Detach: the loop device and the record go away, and the keeper, holding nothing, exits.
    d.ctl(&["detach", "g"]);
    let t = Instant::now();
    while keeper_answers() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !keeper_answers(),
        "the keeper still runs with nothing to keep"
    );
    assert!(d.ctl(&["list"]).is_empty());
    let n = lo.trim_start_matches("/dev/loop");
    let backing = std::fs::read_to_string(format!("/sys/block/loop{n}/loop/backing_file"));
    assert!(backing.is_err(), "loop device still attached: {backing:?}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("state/devices"))
            .unwrap()
            .count(),
        0
    );

    // The registry goes away. The cache holds the blob at the config's size: attaching again
    // asks the registry nothing, and the files read as before.
    let url = reg.url.clone();
    drop(reg);
    d.ctl(&["attach", "g1", cfg.to_str().unwrap()]);
    let lo = d.field("g1", "loop");
    mount_ro(&lo, &mnt);
    let r = std::panic::catch_unwind(|| common::assert_same_tree(&expected, &mnt));
    umount(&mnt);
    r.unwrap();
    let stats = d.stats("g1");
    assert!(stats.contains("overlaybd_fetch_requests_total"), "{stats}");
    assert_eq!(
        metric(&stats, "overlaybd_fetch_requests_total"),
        0,
        "the attach or the reads asked the registry: {stats}"
    );
    assert!(
        metric(&stats, "overlaybd_device_read_bytes_total") > 0,
        "{stats}"
    );
    d.ctl(&["detach", "g1"]);
    // A blob the cache does not hold needs the registry: a registry that does not answer
    // fails the attach, naming the blob, within the deadline.
    let other = format!("sha256:{}", "7".repeat(64));
    let cfg2 = tmp.path().join("config2.json");
    std::fs::write(
        &cfg2,
        format!(
            r#"{{"repoBlobUrl":"{url}/v2/lib/g/blobs","lowers":[{{"digest":"{other}","size":4096}}],"upper":{{}},"resultFile":"{}"}}"#,
            tmp.path().join("result").display()
        ),
    )
    .unwrap();
    let t = Instant::now();
    let o = d.ctl_result(&["attach", "g2", cfg2.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(&other) && !err.contains(&digest), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30));
    let result = std::fs::read_to_string(tmp.path().join("result")).unwrap();
    assert!(result.starts_with("failed:"), "{result}");
    assert!(d.ctl(&["list"]).is_empty());
}

/// A config.v1.json for vector g's local layer file, with `extra` keys after the lowers.
fn local_g(dir: &Path, extra: &str) -> PathBuf {
    let cfg = dir.join("config.v1.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"lowers":[{{"file":"{}"}}]{extra}}}"#,
            vector("g.ext4.lz4.bs4.zfile").display()
        ),
    )
    .unwrap();
    cfg
}

/// A 32 MiB layer of random data (compressed as a ZFile) and its bytes.
fn random_layer(dir: &Path) -> (PathBuf, Vec<u8>) {
    let (data, index) = (dir.join("rw.data"), dir.join("rw.index"));
    let l =
        overlaybd_lsmt::RwLayer::create(&data, &index, 64 << 20, None, Default::default()).unwrap();
    let bytes = common::random(32 << 20, 77);
    for (i, c) in bytes.chunks(1 << 20).enumerate() {
        l.write((i as u64) << 20, c).unwrap();
    }
    l.flush().unwrap();
    drop(l);
    // Committed into a ZFile, as `obdctl layer commit -z` does.
    let l = overlaybd_lsmt::RwLayer::open_read_only(&data, &index).unwrap();
    let src = l.data_file().try_clone().unwrap();
    let opts = overlaybd_lsmt::CommitOptions {
        virtual_size: l.header().virtual_size,
        ..Default::default()
    };
    let out = dir.join("layer.zfile");
    let f = std::io::BufWriter::new(std::fs::File::create(&out).unwrap());
    let mut z = zfile::ZFileWriter::new(f, zfile::WriterOptions::default()).unwrap();
    overlaybd_lsmt::commit(&l.mappings(), &[&src], &mut z, &opts).unwrap();
    std::io::Write::flush(&mut z.finish_with_header().unwrap().0).unwrap();
    (out, bytes)
}

/// [`random_layer`] pushed to `repo`, and a config.v1.json for it (with `extra` keys after
/// the lowers); returns the config and the disk's bytes.
fn remote_random(reg: &Registry, dir: &Path, repo: &str, extra: &str) -> (PathBuf, Vec<u8>) {
    let (layer, want) = random_layer(dir);
    let blob = std::fs::read(&layer).unwrap();
    (remote_config(reg, dir, repo, &blob, extra).0, want)
}

/// Reads `ranges` of the device with O_DIRECT and checks them against `want`.
fn workload(lo: &str, ranges: &[(u64, usize)], want: &[u8]) {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(lo)
        .unwrap();
    for &(off, len) in ranges {
        let mut b = AlignedBuf::new(len);
        dev.read_exact_at(b.as_mut(), off).unwrap();
        assert!(
            b.as_mut() == &want[off as usize..off as usize + len],
            "bytes at {off}"
        );
    }
}

#[test]
fn a_recorded_trace_is_replayed_up_front() {
    let Some(reg) = mountable_registry() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("trace");
    std::fs::write(&trace, b"").unwrap();
    let (cfg, want) = remote_random(
        &reg,
        tmp.path(),
        "lib/r",
        &format!(r#","upper":{{}},"recordTracePath":"{}""#, trace.display()),
    );
    let ranges = [
        (3u64 << 20, 65536usize),
        (11 << 20, 131072),
        (19 << 20, 4096),
        (27 << 20, 65536),
    ];
    let fetched = |d: &Daemon| metric(&d.stats("r"), "overlaybd_cache_fetched_bytes_total");
    let at_attach;
    {
        // Record: the workload reads four ranges; deleting the lock file writes the trace.
        let d = Daemon::start(&tmp.path().join("one"));
        d.ctl(&["attach", "r", cfg.to_str().unwrap()]);
        assert!(d.ctl(&["list"]).contains("trace=record"));
        at_attach = fetched(&d);
        workload(&d.field("r", "loop"), &ranges, &want);
        assert!(fetched(&d) > at_attach, "the workload fetched nothing");
        std::fs::remove_file(tmp.path().join("trace.lock")).unwrap();
        let t = Instant::now();
        while !tmp.path().join("trace.ok").exists() {
            assert!(t.elapsed() < Duration::from_secs(10), "no trace.ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let records = overlaybd_daemon::trace::decode(&std::fs::read(&trace).unwrap()).unwrap();
    assert!(!records.is_empty());
    let recorded: u64 = records.iter().map(|r| r.count).sum();

    // Replay on a new host (an empty cache): the recorded ranges are fetched at attach,
    // before anything reads the device; the workload then fetches nothing.
    let d = Daemon::start(&tmp.path().join("two"));
    d.ctl(&["attach", "r", cfg.to_str().unwrap()]);
    assert!(d.ctl(&["list"]).contains("trace=replay"));
    let t = Instant::now();
    let mut s = d.stats("r");
    while metric(&s, "overlaybd_trace_replay_bytes_total") < recorded {
        assert!(t.elapsed() < Duration::from_secs(20), "replay stalled: {s}");
        std::thread::sleep(Duration::from_millis(50));
        s = d.stats("r");
    }
    assert_eq!(metric(&s, "overlaybd_trace_replay_errors_total"), 0);
    assert_eq!(metric(&s, "overlaybd_device_reads_total"), 0, "{s}");
    let prefetched = fetched(&d);
    assert!(prefetched > at_attach, "replay fetched nothing: {s}");
    workload(&d.field("r", "loop"), &ranges, &want);
    assert_eq!(fetched(&d), prefetched, "the workload still fetched");
}

#[test]
fn a_read_the_registry_cannot_serve_is_eio_for_that_request_only() {
    let Some(reg) = mountable_registry() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, want) = remote_random(&reg, tmp.path(), "lib/e", "");
    let d = Daemon::start(&tmp.path().join("d"));
    d.ctl(&["attach", "e", cfg.to_str().unwrap()]);
    let lo = d.field("e", "loop");
    // One 4 KiB read (less than a refill unit: no readahead) puts the start in the cache.
    workload(&lo, &[(0, 4096)], &want);
    drop(reg);

    // A read of a range never fetched fails with EIO within the deadline (5 s)...
    let lo2 = lo.clone();
    let failing = std::thread::spawn(move || {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&lo2)
            .unwrap();
        let t = Instant::now();
        let r = dev.read_exact_at(AlignedBuf::new(4096).as_mut(), 24 << 20);
        (r.map_err(|e| e.raw_os_error()), t.elapsed())
    });
    // ...while reads of cached bytes go on meanwhile, undelayed.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!failing.is_finished(), "the uncached read did not wait");
    let t = Instant::now();
    workload(&lo, &[(0, 4096)], &want);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a cached read waited {:?} behind the failing one",
        t.elapsed()
    );
    let (r, took) = failing.join().unwrap();
    assert_eq!(r, Err(Some(libc::EIO)), "after {took:?}");
    // Retried (a refused connection fails at once), and given up before the next back-off
    // would pass the 5 s deadline.
    assert!(took >= Duration::from_secs(1), "failed after only {took:?}");
    assert!(took < Duration::from_secs(8), "failed after {took:?}");
    let s = d.stats("e");
    assert_eq!(metric(&s, "overlaybd_device_read_errors_total"), 1, "{s}");
    // The device is still there and still serves what it has.
    workload(&lo, &[(0, 4096)], &want);
    assert!(d.ctl(&["list"]).contains("state=attached"));
}

/// Reads one 4 KiB block of `lo` at `off` with O_DIRECT: the bytes, or the errno, and the time.
fn read_block(lo: &str, off: u64) -> (Result<Vec<u8>, Option<i32>>, Duration) {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(lo)
        .unwrap();
    let mut b = AlignedBuf::new(4096);
    let t = Instant::now();
    let r = dev.read_exact_at(b.as_mut(), off);
    (
        r.map(|_| b.as_mut().to_vec()).map_err(|e| e.raw_os_error()),
        t.elapsed(),
    )
}

#[test]
fn a_registry_outage_costs_one_deadline_and_its_end_is_seen_at_once() {
    if !can_mount() || !common::require_tool("docker-registry") {
        return;
    }
    let storage = tempfile::tempdir().unwrap();
    let port = test_support::free_port();
    let reg = Registry::start_on(None, storage.path(), port).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, want) = remote_random(&reg, tmp.path(), "lib/o", "");
    // read_deadline_secs = 5 (the test daemon's), 1 s once the registry is down.
    let d = Daemon::start_with(&tmp.path().join("d"), "outage_deadline_secs = 1\n");
    d.ctl(&["attach", "o", cfg.to_str().unwrap()]);
    let lo = d.field("o", "loop");
    workload(&lo, &[(0, 4096)], &want);
    drop(reg);

    // Four readers at once, each reading four ranges never fetched, one after the other.
    // Without the breaker each read would wait the 5 s deadline: 20 s per reader.
    let t = Instant::now();
    let took: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..4u64)
            .map(|k| {
                let lo = &lo;
                s.spawn(move || {
                    (0..4u64)
                        .map(|j| {
                            let (r, took) = read_block(lo, (8 + k * 4 + j) << 20);
                            assert_eq!(r.map(|_| ()), Err(Some(libc::EIO)), "after {took:?}");
                            took
                        })
                        .collect()
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let all = t.elapsed();
    for reader in &took {
        // The first read may have started before the registry was marked down: the full
        // deadline; every later one the short deadline (1 s, plus the FUSE and loop hops).
        assert!(reader[0] < Duration::from_secs(8), "{took:?}");
        for later in &reader[1..] {
            assert!(*later < Duration::from_millis(2500), "{took:?}");
        }
    }
    assert!(all < Duration::from_secs(14), "{all:?}: {took:?}");
    let log = d.log();
    // Said once, when it went down (each EIO's message says so too).
    assert_eq!(log.matches("until it answers,").count(), 1, "{log}");

    // The registry is back on its port: the next read succeeds, right away, with the right
    // bytes, and the daemon says so.
    let _reg = Registry::start_on(None, storage.path(), port).unwrap();
    let off = 9 << 20;
    let (r, took) = read_block(&lo, off);
    assert!(
        r.unwrap() == want[off as usize..off as usize + 4096],
        "bytes at {off}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(d.log().contains("answers again"), "{}", d.log());
    workload(&lo, &[(16 << 20, 65536), (0, 4096)], &want);
}

#[test]
fn the_daemon_killed_under_a_mounted_filesystem_comes_back_without_errors() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = local_g(tmp.path(), r#","upper":{}"#);
    let mut d = Daemon::start(tmp.path());
    d.ctl(&["attach", "g", cfg.to_str().unwrap()]);
    let lo = d.field("g", "loop");
    let mnt = tmp.path().join("mnt");
    mount_ro(&lo, &mnt);
    let expected = common::g_tree(tmp.path());
    let want_tool = std::fs::read(expected.join("usr/bin/tool")).unwrap();

    // A reader that keeps reading the device with O_DIRECT (no page cache) while the daemon
    // dies and comes back; every read must succeed with the right bytes.
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&lo)
        .unwrap();
    let stack = common::stack(&["g.ext4.lz4.bs4.zfile"], None);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut reads = 0u64;
        let mut buf = AlignedBuf::new(64 << 10);
        let mut want = vec![0u8; 64 << 10];
        let mut off = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            dev.read_exact_at(buf.as_mut(), off)
                .unwrap_or_else(|e| panic!("read at {off} failed: {e}"));
            stack.read_at(off, &mut want).unwrap();
            assert!(buf.as_mut() == &want[..], "wrong bytes at {off}");
            reads += 1;
            off = (off + (1 << 20) + 4096) % ((1 << 30) - (64 << 10));
        }
        reads
    });
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();
    // The daemon is gone: the reader waits (it is not failed).
    std::thread::sleep(Duration::from_millis(1500));
    let d2 = Daemon::start(tmp.path());
    assert_eq!(d2.field("g", "state"), "restored");
    assert_eq!(d2.field("g", "loop"), lo);
    assert!(
        d2.log().contains("resumed the kept FUSE connection"),
        "{}",
        d2.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw an error");
    assert!(reads > 10, "only {reads} reads");
    // The filesystem is fine too, read from the device again.
    drop_caches();
    assert_eq!(std::fs::read(mnt.join("usr/bin/tool")).unwrap(), want_tool);
    let r = std::panic::catch_unwind(|| common::assert_same_tree(&expected, &mnt));
    umount(&mnt);
    r.unwrap();
    assert!(metric(&d2.stats("g"), "overlaybd_device_reads_total") > 0);
    drop(d2);
    drop(d);
}

/// FUSE over io_uring across a restart: the new daemon registers new ring entries on the kept
/// connection and serves again. Only an idle device: a request the killed daemon had taken
/// from a ring entry is not resent by `FUSE_NOTIFY_RESEND` on this kernel (6.18) and waits
/// until the connection is aborted (tried: `docs/daemon.md`), which is why `fuse_io_uring` is
/// off by default.
#[test]
fn an_idle_device_served_over_io_uring_survives_a_daemon_restart() {
    if !can_mount() {
        return;
    }
    let Some(_param) = common::UringParam::required() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = local_g(tmp.path(), "");
    let mut d = Daemon::start_with(tmp.path(), "fuse_io_uring = true\n");
    d.ctl(&["attach", "g", cfg.to_str().unwrap()]);
    let lo = d.field("g", "loop");
    assert_eq!(read_device_within(&lo, Duration::from_secs(60)), G_DISK);
    // Ring entries registered: their threads stop at once when the kernel refuses the ring.
    let ring_threads = |d: &Daemon| {
        d.thread_names()
            .iter()
            .filter(|n| n.starts_with("fuse-g-q"))
            .count()
    };
    assert!(
        ring_threads(&d) > 0,
        "no io_uring entries: {:?}",
        d.thread_names()
    );
    let record = std::fs::read_to_string(tmp.path().join("state/devices/g.json")).unwrap();
    assert!(record.contains("\"fuse_io_uring\": true"), "{record}");
    d.kill9();
    // Restarted without the setting: the kept connection agreed to rings, so they are
    // served anyway (else every read would wait for good).
    std::fs::write(
        &d.config,
        std::fs::read_to_string(&d.config)
            .unwrap()
            .replace("fuse_io_uring = true\n", ""),
    )
    .unwrap();
    let d2 = Daemon::start(tmp.path());
    assert_eq!(d2.field("g", "state"), "restored");
    assert!(d2.log().contains("resumed the kept FUSE connection"));
    assert_eq!(read_device_within(&lo, Duration::from_secs(60)), G_DISK);
    assert!(ring_threads(&d2) > 0, "{:?}", d2.thread_names());
    drop(d2);
    drop(d);
}

/// The SHA-256 of a whole device read with O_DIRECT, or a panic if that takes longer than
/// `limit` (a lost FUSE request would block the read for good: the panic says so).
fn read_device_within(dev: &str, limit: Duration) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dev.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(common::sha256_direct(&path).0);
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("reading {dev} took over {limit:?}: a lost FUSE request?"))
}

#[test]
fn a_read_only_device_whose_keeper_died_too_comes_back_on_a_new_fuse_file() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = local_g(tmp.path(), "");
    let mut d = Daemon::start(tmp.path());
    d.ctl(&["attach", "g", cfg.to_str().unwrap()]);
    let lo = d.field("g", "loop");
    let mnt = tmp.path().join("mnt");
    mount_ro(&lo, &mnt);
    let expected = common::g_tree(tmp.path());
    let want = common::stack(&["g.ext4.lz4.bs4.zfile"], None);
    let read = |off: u64| {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&lo)
            .unwrap();
        let mut b = AlignedBuf::new(64 << 10);
        dev.read_exact_at(b.as_mut(), off)
            .map(|()| b.as_mut().to_vec())
    };

    // The daemon and its keeper both die: the last /dev/fuse descriptor is closed, the kernel
    // aborts the connection, and the loop device's reads fail.
    d.kill9();
    quit_keeper(tmp.path());
    assert!(
        read(0).is_err(),
        "a read succeeded with no daemon and no keeper"
    );

    // A new daemon mounts a new FUSE file and points the same loop device at it: the device
    // reads again, with the right bytes.
    let d2 = Daemon::start(tmp.path());
    assert_eq!(d2.field("g", "state"), "restored");
    assert_eq!(d2.field("g", "loop"), lo);
    assert!(d2.log().contains("FUSE connection lost"), "{}", d2.log());
    for off in [0u64, 1 << 20, 300 << 20, (1 << 30) - (64 << 10)] {
        let mut w = vec![0u8; 64 << 10];
        want.read_at(off, &mut w).unwrap();
        let got = read(off).unwrap_or_else(|e| panic!("read at {off}: {e}\n{}", d2.log()));
        assert!(got == w, "wrong bytes at {off}");
    }
    // The filesystem that was mounted lost its device's connection: since Linux 6.6,
    // LOOP_CHANGE_FD marks the disk dead and the kernel shuts that ext4 down (older kernels
    // kept it). Mounted again, it reads vector g's files.
    umount(&mnt);
    mount_ro(&lo, &mnt);
    let r = std::panic::catch_unwind(|| common::assert_same_tree(&expected, &mnt));
    umount(&mnt);
    r.unwrap();
    drop(d2);
    drop(d);
}
