//! What the snapshotter parses from outside: its config (TOML, and overlaybd's JSON),
//! containerd's `List` filters (then matched against labels from the input), image references
//! and TurboOCI annotations from labels, `containerd --version` output, and a metadata record
//! read back from its store (body: `snapshotter::fuzz::input`, also run over mutations by its
//! unit test).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snapshotter::fuzz::input(data));
