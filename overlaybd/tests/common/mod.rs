#![allow(dead_code)]
//! Shared helpers of the overlaybd integration tests.

pub mod daemon;
pub mod http;
pub mod registry;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use overlaybd::lsmt::{blob, PieceKind, RoLayer, Stack, Upper};
use sha2::{Digest, Sha256};
use zfile::ReadAt;

pub fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

pub fn vector(name: &str) -> PathBuf {
    vectors().join(name)
}

/// A read-only layer from a vector file (envelope and ZFile detected).
pub fn lower(path: &Path) -> (Arc<dyn ReadAt>, RoLayer) {
    let (src, _) = blob::open_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let layer = RoLayer::open(&*src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (src, layer)
}

pub fn stack(names: &[&str], upper: Option<Upper>) -> Stack {
    Stack::new(names.iter().map(|n| lower(&vector(n))).collect(), upper).unwrap()
}

/// sha256 of the whole virtual disk, reading it in 4 MiB pieces through the stack.
pub fn disk_sha256(s: &Stack) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let zeros = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < s.virtual_size() {
        let n = ((s.virtual_size() - off) as usize).min(buf.len());
        // Holes are hashed from a zero buffer; the rest goes through read_at.
        let plan = s.plan(off, n as u64);
        if plan
            .iter()
            .all(|p| matches!(p.kind, PieceKind::Hole | PieceKind::Zeroes))
        {
            h.update(&zeros[..n]);
        } else {
            assert_eq!(s.read_at(off, &mut buf[..n]).unwrap(), n);
            h.update(&buf[..n]);
        }
        off += n as u64;
    }
    hex::encode(h.finalize())
}

pub const D_DISK: &str = "86ab2e83ec395813e890c2c096811cf45488299889603a6d9421bdb8fb1f2b82";
pub const F_DISK: &str = "3efabb3cc212a818721df35ae95f486a8ef56e248ad1c815e2dd3ca3063958f5";
pub const G_DISK: &str = "587420226cb36c24b710cc8fb366f5bf4b927d253a0aa25a67c4c1cdc8fa4d4e";

/// Copies a vector into `dir` (for tests that modify files).
pub fn copy_to(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(vector(name), &p).unwrap();
    let mut perm = std::fs::metadata(&p).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&p, perm).unwrap();
    p
}

/// Fails under CI when a tool is missing; elsewhere says why the test is skipped.
pub fn require_tool(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} || test -x /usr/sbin/{tool} || test -x /sbin/{tool}"),
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    require(
        found,
        &format!("{tool} not found (scripts/test.sh installs it)"),
    )
}

/// `ok`, or: under `CI=true` a panic saying `why`; elsewhere `false` after saying why the test
/// is skipped.
pub fn require(ok: bool, why: &str) -> bool {
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("required under CI=true: {why}");
        }
        eprintln!("skipping: {why}");
    }
    ok
}

/// Root, `/dev/fuse` and `/dev/loop-control`: what mounting through the FUSE export needs.
pub fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    require(
        root && Path::new("/dev/fuse").exists() && Path::new("/dev/loop-control").exists(),
        "needs root, /dev/fuse and /dev/loop-control",
    )
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// Runs openssl with `args` in `dir`, panicking with its message on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 4 KiB-aligned buffer for O_DIRECT.
pub struct AlignedBuf {
    v: Vec<u8>,
    at: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let v = vec![0u8; len + 4096];
        let at = v.as_ptr().align_offset(4096);
        AlignedBuf { v, at, len }
    }
    pub fn as_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.at..self.at + self.len]
    }
}
