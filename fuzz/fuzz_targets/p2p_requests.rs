//! Arbitrary bytes as what an overlaybd-p2p node parses from peers and readers: origin URLs,
//! `Range` headers, the tree protocol's JSON, the TOML config. No panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p::fuzz::requests(data));
