//! Arbitrary bytes as a trace file (an acceleration layer's `trace`, which comes from the
//! image): decoding never panics, and a decoded trace plans a bounded replay inside its layers.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| overlaybd_daemon::trace::fuzz(data));
