//! The soak (`e2e_tests::soak`): `cargo bench -p e2e-tests --bench soak -- [SECONDS]` (root;
//! default 3600). `OBD_SOAK_IMAGES` (default 50) images attached at once, 4 workers starting
//! containers, a fault every 20 s, a 64 MiB cache (the images hold about 370 MiB). Prints the
//! report; exits non-zero if a container read a wrong byte or something leaked.

use std::time::Duration;

use e2e_tests::soak::{run, SoakOptions};

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
        outages: [Duration::from_secs(5), Duration::from_secs(15)],
        cache_mb: 64,
    });
    e2e_tests::soak::print(&r);
    if !r.wrong_bytes.is_empty() || !r.leaks.is_empty() {
        std::process::exit(1);
    }
}
