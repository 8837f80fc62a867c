#![allow(dead_code, unused_imports)]
//! Shared helpers of the LSMT integration tests: the vectors and the disk helpers.

use std::path::PathBuf;

pub use overlaybd_lsmt::testutil::{disk_sha256, lower};
use overlaybd_lsmt::{Stack, Upper};
pub use test_support::vectors::{copy_to, D_DISK, F_DISK, G_DISK};
pub use test_support::{require, require_tool, run};

pub fn vector(name: &str) -> PathBuf {
    test_support::vectors::path(name)
}

/// A stack of vector files, lowest first.
pub fn stack(names: &[&str], upper: Option<Upper>) -> Stack {
    let paths: Vec<PathBuf> = names.iter().map(|n| vector(n)).collect();
    let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
    overlaybd_lsmt::testutil::stack(&refs, upper)
}
