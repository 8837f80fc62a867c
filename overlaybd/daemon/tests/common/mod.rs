#![allow(dead_code, unused_imports)]
//! Shared helpers of the daemon's integration tests.

pub mod daemon;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use overlaybd_lsmt::testutil::disk_sha256;
use overlaybd_lsmt::{Stack, Upper};
use overlaybd_registry::{BlobLocation, RegistryOptions};
pub use test_support::registry::Registry;
pub use test_support::vectors::{copy_to, D_DISK, F_DISK, G_DISK};
pub use test_support::{can_mount, random, require, require_tool, run, AlignedBuf};

pub fn vector(name: &str) -> PathBuf {
    test_support::vectors::path(name)
}

/// A stack of vector files, lowest first.
pub fn stack(names: &[&str], upper: Option<Upper>) -> Stack {
    let paths: Vec<PathBuf> = names.iter().map(|n| vector(n)).collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    overlaybd_lsmt::testutil::stack(&refs, upper)
}

/// Registry options that give up quickly.
pub fn quick() -> RegistryOptions {
    RegistryOptions {
        deadline: Duration::from_secs(3),
        initial_backoff: Duration::from_millis(20),
        ..Default::default()
    }
}

/// Where blob `digest` of `repo` lives in `reg`.
pub fn location(reg: &Registry, repo: &str, digest: &str) -> BlobLocation {
    BlobLocation {
        registry: reg.url.clone(),
        repository: repo.to_string(),
        digest: digest.to_string(),
    }
}

/// Extracts `g.layer.tar` into `dir` as a filesystem holding it would look (whiteouts taken
/// out), for `diff -r` against a mounted image.
pub fn g_tree(dir: &Path) -> PathBuf {
    let t = dir.join("g-expected");
    std::fs::create_dir_all(&t).unwrap();
    run(
        "tar",
        &[
            "-xf",
            vector("g.layer.tar").to_str().unwrap(),
            "-C",
            t.to_str().unwrap(),
        ],
    );
    std::fs::remove_file(t.join("tmp/.wh.gone")).unwrap();
    t
}

/// Compares a mounted image of vector g with the tar's tree.
pub fn assert_same_tree(expected: &Path, mounted: &Path) {
    run(
        "diff",
        &[
            "-r",
            "--no-dereference",
            "-x",
            "lost+found",
            expected.to_str().unwrap(),
            mounted.to_str().unwrap(),
        ],
    );
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(mounted.join("usr/bin/tool")).unwrap();
    let b = std::fs::metadata(mounted.join("usr/bin/tool-hardlink")).unwrap();
    assert_eq!(a.ino(), b.ino(), "the hard link shares the inode");
}

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// The `fuse` module's `enable_uring` parameter turned on while this lives; the value found is
/// put back on drop.
pub struct UringParam(String);

impl UringParam {
    /// `None` when the kernel has no FUSE over io_uring (before 6.14, or built without it).
    pub fn on() -> Option<UringParam> {
        let found = std::fs::read_to_string(ENABLE_URING).ok()?;
        std::fs::write(ENABLE_URING, "Y").ok()?;
        Some(UringParam(found))
    }

    /// [`UringParam::on`] for a test: without it, a failure under CI and a skip elsewhere.
    pub fn required() -> Option<UringParam> {
        let p = Self::on();
        test_support::require(
            p.is_some(),
            "FUSE over io_uring (Linux 6.14+, CONFIG_FUSE_IO_URING)",
        );
        p
    }
}

impl Drop for UringParam {
    fn drop(&mut self) {
        let _ = std::fs::write(ENABLE_URING, self.0.trim());
    }
}

/// The SHA-256 (hex) of a whole block device read with O_DIRECT in 1 MiB reads, and the bytes
/// read.
pub fn sha256_direct(dev: &str) -> (String, u64) {
    use sha2::Digest;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap();
    let mut b = AlignedBuf::new(1 << 20);
    let mut h = sha2::Sha256::new();
    let mut off = 0u64;
    loop {
        let n = f.read_at(b.as_mut(), off).unwrap();
        if n == 0 {
            break;
        }
        h.update(&b.as_mut()[..n]);
        off += n as u64;
    }
    (hex::encode(h.finalize()), off)
}
