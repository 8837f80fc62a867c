//! Arbitrary bytes through tar envelope detection: the payload window never leaves the blob.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| zfile::testutil::fuzz_envelope(data));
