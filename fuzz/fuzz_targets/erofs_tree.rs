//! Arbitrary bytes as an EROFS image, read by `verify`'s reader (a converted image is
//! untrusted input to `verify`). Errors are expected; no panic, no hang.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    convertor::fuzz::erofs_tree(data);
});
