//! The cache record's fuzz body over a valid record and mutations of it (the fuzz target
//! `registry_config` runs the same body under libFuzzer).

#[test]
fn records_never_panic_on_mutated_input() {
    let seed = b"OBDCACHE\x01\0\0\0\0\x10\0\0\0\0\x10\0\0\0\0\0\x01\0\0\0\0\0\0\0";
    overlaybd_cache::fuzz_record(seed);
    for d in test_support::mutations(seed, 3000, 7) {
        overlaybd_cache::fuzz_record(&d);
    }
    // A valid record with unit size 0 (CRC correct) is refused, not divided by.
    let mut r = b"OBDCACHE\x01\0\0\0\0\0\0\0\0\x10\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
    let crc = crc32c::crc32c(&r);
    r.extend_from_slice(&crc.to_le_bytes());
    overlaybd_cache::fuzz_record(&r);
}
