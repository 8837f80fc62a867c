//! Arbitrary bytes as everything an NBD client sends (negotiation, then requests) to a server
//! exporting a writable device. No panic, no hang.
#![no_main]
use overlaybd_export::nbd::fuzz;
libfuzzer_sys::fuzz_target!(
    // Made once before fuzzing, so that the leak check does not count it.
    init: {
        fuzz::scratch_device();
    },
    |data: &[u8]| fuzz::serve_bytes(fuzz::scratch_device(), data)
);
