//! Arbitrary bytes as an OCI layer tar, applied to a fresh ext4 filesystem with libext2fs and
//! to verify's in-memory model. Errors are expected; no panic, no hang.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = convertor::fuzz::apply_tar(data);
});
