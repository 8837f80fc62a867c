//! Registry protocol and configuration text (challenges, token answers, Docker config.json,
//! hosts.toml) and the cache record: parsers never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| overlaybd::registry::fuzz::config(data));
