//! TurboOCI's parsers: a gzip index with its blob, a gzip blob inflated and indexed (then read
//! back at random through our own index), a warp (meta) layer over a target. The first byte
//! picks. No panic, no hang.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| overlaybd_turbooci::fuzz::turbooci(data));
