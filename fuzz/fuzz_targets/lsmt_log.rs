//! Arbitrary bytes as a writable layer's index log: replay never panics and keeps only
//! entries whose data is inside the data file.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| overlaybd_lsmt::fuzz::log(data));
