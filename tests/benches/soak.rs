//! The soak (`e2e_tests::soak`): `cargo bench -p e2e-tests --bench soak -- [SECONDS]` (root;
//! default 3600). `OBD_SOAK_IMAGES` (default 50) images attached at once, 4 workers starting
//! containers, a 64 MiB cache (the images hold about 370 MiB), and a fault every 20 s: the
//! registry's (an outage of 5 or 15 s, 5 s of 503s, a 5 s stall) in turn, and every 20
//! minutes the daemon killed, 10 minutes later the snapshotter (so that each process runs
//! 20 minutes between kills and its memory growth can be read). Prints the report; exits
//! non-zero if a container read a wrong byte or something leaked.

use std::time::Duration;

use e2e_tests::soak::{run, Fault, SoakOptions};

fn main() {
    if std::env::args().any(|a| a == "--list") || !e2e_tests::require() {
        return;
    }
    let secs = e2e_tests::bench::number_arg(3600) as u64;
    let images = std::env::var("OBD_SOAK_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let r = run(&SoakOptions {
        duration: Duration::from_secs(secs),
        images,
        workers: 4,
        fault_every: Duration::from_secs(20),
        schedule: (0..60)
            .map(|i| match i {
                29 => Fault::DaemonKilled,
                59 => Fault::SnapshotterKilled,
                _ => [
                    Fault::RegistryOutage,
                    Fault::Registry503s,
                    Fault::RegistryStall,
                ][i % 3],
            })
            .collect(),
        outages: [Duration::from_secs(5), Duration::from_secs(15)],
        blip: Duration::from_secs(5),
        cache_mb: 64,
    });
    e2e_tests::soak::print(&r);
    if !r.wrong_bytes.is_empty() || !r.leaks.is_empty() {
        std::process::exit(1);
    }
}
