//! Arbitrary bytes as a committed LSMT layer (bare, or in a ZFile/tar envelope): parse the
//! header, trailer and index, stack it, and read through the plan. No panic, no hang.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| overlaybd_lsmt::fuzz::layer(data));
