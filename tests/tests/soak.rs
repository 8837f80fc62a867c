//! The soak, short (`e2e_tests::soak`; the hour-long run is the bench `soak`): 6 images
//! attached at once, 2 workers starting containers, a registry outage longer than the read
//! deadline, a daemon kill and a snapshotter kill within 75 s. No container may read a wrong
//! byte, a container may fail only while a fault is on (or within `soak::SETTLE` after it),
//! and nothing may leak.

use std::time::Duration;

use e2e_tests::soak::{print, run, SoakOptions};

#[test]
fn a_short_soak_with_faults_reads_only_right_bytes_and_leaks_nothing() {
    let _s = e2e_tests::serial();
    if !e2e_tests::require() {
        return;
    }
    let r = run(&SoakOptions {
        duration: Duration::from_secs(75),
        images: 6,
        workers: 2,
        fault_every: Duration::from_secs(20),
        outages: [Duration::from_secs(14); 2],
        cache_mb: 16,
    });
    print(&r);
    assert!(r.wrong_bytes.is_empty(), "{:#?}", r.wrong_bytes);
    assert!(r.leaks.is_empty(), "{:#?}", r.leaks);
    assert!(r.containers_failed.is_empty(), "{:#?}", r.containers_failed);
    assert_eq!(r.faults.values().sum::<u64>(), 3, "{:?}", r.faults);
    assert!(
        r.containers_ok >= 10,
        "only {} containers ran",
        r.containers_ok
    );
}
