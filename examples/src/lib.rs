//! Short programs a new user reads first; run them with `cargo run -p examples --example NAME`.
//!
//! - `zfile_roundtrip`: compress a buffer into a ZFile with the integrity table, then read a
//!   range back through the reader with the trusted root.
