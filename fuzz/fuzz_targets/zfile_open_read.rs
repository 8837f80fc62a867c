//! Arbitrary bytes opened as a ZFile (bare or enveloped), read, and verified: no panic, no
//! hang, no unbounded allocation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| zfile::testutil::fuzz_open_and_read(data));
