//! The soak, short (`e2e_tests::soak`; the hour-long run is the bench `soak`): 6 images
//! attached at once, 2 workers starting containers, and within 90 s each fault once: a
//! registry outage longer than the read deadline, a daemon kill, 5 s of 503s, a snapshotter
//! kill, a 5 s registry stall. No container may read a wrong byte, a container may fail only
//! while a fault is on (or within `soak::SETTLE` after it), and nothing may leak.

use std::time::Duration;

use e2e_tests::soak::{print, run, Fault, SoakOptions};

#[test]
fn a_short_soak_with_faults_reads_only_right_bytes_and_leaks_nothing() {
    let _s = e2e_tests::serial();
    if !e2e_tests::require() {
        return;
    }
    let r = run(&SoakOptions {
        duration: Duration::from_secs(90),
        images: 6,
        workers: 2,
        fault_every: Duration::from_secs(16),
        schedule: vec![
            Fault::RegistryOutage,
            Fault::DaemonKilled,
            Fault::Registry503s,
            Fault::SnapshotterKilled,
            Fault::RegistryStall,
        ],
        outages: [Duration::from_secs(14); 2],
        blip: Duration::from_secs(5),
        cache_mb: 16,
    });
    print(&r);
    assert!(r.wrong_bytes.is_empty(), "{:#?}", r.wrong_bytes);
    assert!(r.leaks.is_empty(), "{:#?}", r.leaks);
    assert!(r.containers_failed.is_empty(), "{:#?}", r.containers_failed);
    assert_eq!(r.faults.len(), 5, "{:?}", r.faults);
    assert!(
        r.containers_ok >= 10,
        "only {} containers ran",
        r.containers_ok
    );
}
