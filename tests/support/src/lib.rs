//! What the tests of every crate share, once: the vectors made by overlaybd's tools
//! ([`vectors`]), a real distribution registry on 127.0.0.1 ([`registry`]), a tiny HTTP server
//! for what a registry cannot play ([`http`]), child processes stopped by PID ([`proc`]),
//! layer tars ([`layer`]), and the checks that make a missing prerequisite a failure under CI
//! and a printed skip elsewhere ([`require`]).
//!
//! It depends on no crate of the product, so any crate's tests can use it.

pub mod http;
pub mod layer;
pub mod proc;
pub mod registry;

use std::path::Path;
use std::time::{Duration, Instant};

/// True under CI (`CI=true` or `CI=1`): missing prerequisites are failures there, skips
/// elsewhere.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `ok`, or: under CI a panic saying `why`; elsewhere `false` after saying why the test is
/// skipped.
pub fn require(ok: bool, why: &str) -> bool {
    if !ok {
        assert!(!ci(), "required under CI: {why}");
        eprintln!("skipping: {why}");
    }
    ok
}

/// Where the tests find erofs-utils 1.9 or later (Debian 12 ships 1.5): `$OBD_MKFS_EROFS`, else
/// what `scripts/lib.sh`'s `need_erofs_utils` builds. Sets `OBD_MKFS_EROFS` for the convertor
/// (and its children) when found; false (a failure under CI) when not.
pub fn use_mkfs_erofs() -> bool {
    let path = std::env::var_os("OBD_MKFS_EROFS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/overlaybd-test/erofs-utils/bin/mkfs.erofs".into());
    let found = path.is_file();
    if found {
        std::env::set_var("OBD_MKFS_EROFS", &path);
    }
    require(
        found,
        &format!(
            "{} (erofs-utils 1.9+; scripts/test.sh builds it)",
            path.display()
        ),
    )
}

/// Whether `tool` is on PATH (or in `/usr/sbin`, `/sbin`).
pub fn on_path(tool: &str) -> bool {
    let in_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    in_path
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file())
}

/// [`require`] that `tool` is installed.
pub fn require_tool(tool: &str) -> bool {
    require(
        on_path(tool),
        &format!("{tool} not found (scripts/test.sh installs it)"),
    )
}

/// [`require`] that all of `tools` are installed.
pub fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    require(
        missing.is_empty(),
        &format!(
            "test needs {} (scripts/test.sh installs it)",
            missing.join(", ")
        ),
    )
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Root, `/dev/fuse` and `/dev/loop-control`: what mounting through the FUSE export needs.
pub fn can_mount() -> bool {
    require(
        is_root() && Path::new("/dev/fuse").exists() && Path::new("/dev/loop-control").exists(),
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

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ok` every 50 ms until it holds; panics after `limit` with `log()`.
pub fn wait_for(
    what: &str,
    limit: Duration,
    mut ok: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < limit,
            "{what} did not come up within {limit:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `len` bytes of a xorshift stream from `seed`: the same bytes every run.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A 4 KiB-aligned buffer for O_DIRECT.
#[derive(Debug)]
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
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.at..self.at + self.len]
    }
}

/// The vectors written by overlaybd's own tools (`vectors/README.md` says how each was made).
pub mod vectors {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    pub fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
    }

    pub fn path(name: &str) -> PathBuf {
        dir().join(name)
    }

    pub fn read(name: &str) -> Vec<u8> {
        std::fs::read(path(name)).unwrap_or_else(|e| panic!("vector {name}: {e}"))
    }

    /// name → sha256 from `SHA256SUMS`.
    pub fn sums() -> HashMap<String, String> {
        let text = std::fs::read_to_string(dir().join("SHA256SUMS")).unwrap();
        text.lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(h, n)| (n.to_string(), h.to_string()))
            .collect()
    }

    /// Copies a vector into `dir`, writable (for tests that modify files).
    pub fn copy_to(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::copy(path(name), &p).unwrap();
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&p, perm).unwrap();
        p
    }

    /// sha256 of the 1 GiB disk that `d.lsmt`, `d.sealed.lsmt`, `d.rw.*` and `e.*.zfile` read
    /// back as.
    pub const D_DISK: &str = "86ab2e83ec395813e890c2c096811cf45488299889603a6d9421bdb8fb1f2b82";
    /// sha256 of the disk of the stacks `[d, f.upper]`.
    pub const F_DISK: &str = "3efabb3cc212a818721df35ae95f486a8ef56e248ad1c815e2dd3ca3063958f5";
    /// sha256 of the ext4 disk of `g.ext4.*`.
    pub const G_DISK: &str = "587420226cb36c24b710cc8fb366f5bf4b927d253a0aa25a67c4c1cdc8fa4d4e";
}

/// `count` mutations of `seed` (bytes changed, truncations, structural bytes inserted, pieces
/// repeated; the first byte, which picks a parser in the fuzz bodies, is kept): what the fuzz
/// bodies get in tests, the same every run for the same `rng_seed`.
pub fn mutations(seed: &[u8], count: usize, rng_seed: u64) -> Vec<Vec<u8>> {
    let mut x = rng_seed | 1;
    let mut next = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n.max(1) as u64) as usize
    };
    (0..count)
        .map(|_| {
            let mut d = seed.to_vec();
            for _ in 0..1 + next(5) {
                match next(4) {
                    0 if d.len() > 1 => {
                        let i = 1 + next(d.len() - 1);
                        d[i] = next(256) as u8;
                    }
                    1 if d.len() > 1 => {
                        let i = 1 + next(d.len() - 1);
                        d.truncate(i);
                    }
                    2 => {
                        let i = 1 + next(d.len());
                        let set = b"\"[]{}=:,\\\n.0";
                        d.insert(i.min(d.len()), set[next(set.len())]);
                    }
                    _ => {
                        let (i, j) = (1 + next(d.len()), 1 + next(d.len()));
                        let (a, b) = (i.min(j).min(d.len()), i.max(j).min(d.len()));
                        let piece = d[a..b].to_vec();
                        d.splice(b..b, piece);
                    }
                }
            }
            d
        })
        .collect()
}
