//! Registry protocol and configuration text (challenges, token answers, Docker config.json,
//! hosts.toml) and the cache record: parsers never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first byte picks the parser: 0..=3 the registry's, the rest the cache's record.
    match data.first() {
        Some(&b) if b % 5 == 4 => overlaybd_cache::fuzz_record(&data[1..]),
        _ => overlaybd_registry::fuzz::config(data),
    }
});
