//! Trace-based prefetch: `overlaybd-convertor record-trace` records what a container reads,
//! and an image with that acceleration layer has it prefetched when a container starts.

use e2e_tests::image::GREETING;
use e2e_tests::{start_on, Containerd, Options};

/// The container's work: wait (its "init"), then read 16 MiB of the data file; it prints how
/// long the read took in hundredths of a second (from /proc/uptime).
const WORK: &str = "cat /data/small.txt; sleep 3; a=$(cut -d' ' -f1 /proc/uptime); \
    dd if=/data/big.bin of=/dev/null bs=1M count=16 skip=8 2>/dev/null; \
    b=$(cut -d' ' -f1 /proc/uptime); echo read=${a}-${b}";

fn read_time(out: &str) -> f64 {
    let l = out
        .lines()
        .find_map(|l| l.strip_prefix("read="))
        .unwrap_or_else(|| panic!("{out}"));
    let (a, b) = l.split_once('-').unwrap();
    b.parse::<f64>().unwrap() - a.parse::<f64>().unwrap()
}

#[test]
fn a_trace_recorded_image_has_its_start_reads_prefetched() {
    trace(Containerd::V1);
}

#[test]
fn containerd_2_a_trace_recorded_image_has_its_start_reads_prefetched() {
    trace(Containerd::V2);
}

fn trace(c: Containerd) {
    let Some((_s, mut env)) = start_on(c, Options::default()) else {
        return;
    };
    let (plain, _) = env.converted_sample("app", 64);
    let traced = format!("{}/app:v1-trace", env.host());
    let out = env.record_trace(&plain, &traced, 30, &["sh", "-c", WORK]);
    assert!(out.contains("as the acceleration layer"), "{out}");

    // Cold starts on fresh hosts, the registry at 20 MB/s.
    env.relay.set_rate(20_000_000);
    env.reset_host();
    assert!(env.rpull(&plain).contains("2 remote, 0 unpacked"));
    let out = env.ctr(
        "default",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            &plain,
            "p",
            "sh",
            "-c",
            WORK,
        ],
    );
    assert!(out.starts_with(GREETING), "{out}");
    let t_plain = read_time(&out);

    env.reset_host();
    let out = env.rpull(&traced);
    assert!(
        out.contains("3 layers, 2 remote, 1 unpacked"),
        "the trace layer is unpacked: {out}"
    );
    let out = env.ctr(
        "default",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            &traced,
            "t",
            "sh",
            "-c",
            WORK,
        ],
    );
    let t_traced = read_time(&out);
    eprintln!("16 MiB read at start: {t_plain:.2} s without the trace, {t_traced:.2} s with it");
    let dlog = env.daemon.as_ref().unwrap().log();
    assert!(
        t_traced * 2.0 < t_plain,
        "prefetch did not help: {t_traced} s vs {t_plain} s\n{dlog}\n{}",
        env.logs()
    );
}

/// The same for a TurboOCI meta image, recorded into another repository: the trace layer goes
/// on top of the meta layers, and the original layers the meta layers read are copied along.
#[test]
fn a_turbo_oci_image_records_and_prefetches_its_trace() {
    let Some((_s, mut env)) = start_on(Containerd::V1, Options::default()) else {
        return;
    };
    e2e_tests::image::push_sample(&env.registry_addr, "tapp", "v1", 64);
    env.convert_with(&["--turbo-oci"], "tapp:v1", "tapp:v1-turbo");
    let plain = format!("{}/tapp:v1-turbo", env.host());
    let traced = format!("{}/tapp-traced:v1", env.host());
    let out = env.record_trace(&plain, &traced, 30, &["sh", "-c", WORK]);
    assert!(out.contains("as the acceleration layer"), "{out}");

    env.relay.set_rate(20_000_000);
    env.reset_host();
    env.rpull(&plain);
    let out = env.ctr(
        "default",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            &plain,
            "p",
            "sh",
            "-c",
            WORK,
        ],
    );
    assert!(out.starts_with(GREETING), "{out}");
    let t_plain = read_time(&out);

    env.reset_host();
    let out = env.rpull(&traced);
    assert!(out.contains("3 layers, 0 remote, 3 unpacked"), "{out}");
    let out = env.ctr(
        "default",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "overlaybd",
            &traced,
            "t",
            "sh",
            "-c",
            WORK,
        ],
    );
    assert!(out.starts_with(GREETING), "{out}\n{}", env.logs());
    let t_traced = read_time(&out);
    eprintln!(
        "TurboOCI, 16 MiB read at start: {t_plain:.2} s without the trace, {t_traced:.2} s with it"
    );
    assert!(
        t_traced * 2.0 < t_plain,
        "prefetch did not help: {t_traced} s vs {t_plain} s\n{}",
        env.logs()
    );
}
