//! Hostile and broken layer tars: thousands of mutations of a seed layer (header fields
//! rewritten with valid checksums, truncations, spliced blocks) go through the applier and the
//! model (`convertor::fuzz::apply_tar`, the fuzz target's body). None may panic or hang, and
//! every one that applies leaves a filesystem that passes `e2fsck -fn`.

mod common;

use common::TarBuilder;

fn seed() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.dir("a", 0o755)
        .dir("a/b", 0o700)
        .file("a/b/f", 0o644, &vec![b'f'; 9000])
        .link(tar::EntryType::Symlink, "a/s", "/a/b")
        .link(tar::EntryType::Link, "a/h", "a/b/f")
        .file("a/s/through", 0o600, b"x")
        .node(tar::EntryType::Char, "a/c", 0o666, 4, 64)
        .node(tar::EntryType::Fifo, "a/p", 0o666, 0, 0)
        .file("a/.wh.gone", 0o644, b"")
        .file("a/b/.wh..wh..opq", 0o644, b"");
    t.pax(&[
        ("SCHILY.xattr.user.k", b"v"),
        ("mtime", b"1.5"),
        ("path", b"a/pax-name"),
    ])
    .file("placeholder", 0o644, b"pax");
    t.finish()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Recomputes the checksum of every block that looks like a ustar header.
fn fix_checksums(t: &mut [u8]) {
    for b in t.chunks_exact_mut(512) {
        if &b[257..262] != b"ustar" {
            continue;
        }
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&x| x as u32).sum();
        let s = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(s.as_bytes());
    }
}

fn mutate(seed: &[u8], r: &mut Rng) -> Vec<u8> {
    let mut t = seed.to_vec();
    for _ in 0..1 + r.below(4) {
        match r.below(6) {
            // A header field byte (name, mode, uid, size, mtime, type, linkname, device).
            0 | 1 => {
                let blocks = t.len() / 512;
                let b = r.below(blocks) * 512;
                let field = [0, 100, 108, 124, 136, 156, 157, 329, 337, 345][r.below(10)];
                let i = b + field + r.below(12);
                if i < t.len() {
                    t[i] = match r.below(4) {
                        0 => b'7',
                        1 => 0xff,
                        2 => b'/',
                        _ => r.next() as u8,
                    };
                }
            }
            // Any byte.
            2 => {
                let i = r.below(t.len());
                t[i] = r.next() as u8;
            }
            // Truncate.
            3 => {
                let n = r.below(t.len());
                t.truncate(n);
            }
            // Duplicate a block elsewhere.
            4 => {
                let blocks = t.len() / 512;
                if blocks > 1 {
                    let from = r.below(blocks) * 512;
                    let to = r.below(blocks) * 512;
                    let blk = t[from..from + 512].to_vec();
                    t.splice(to..to, blk);
                }
            }
            // A huge size (base-256).
            _ => {
                let blocks = t.len() / 512;
                let b = r.below(blocks) * 512;
                if b + 136 <= t.len() {
                    t[b + 124] = 0x80;
                    t[b + 125..b + 136].fill(0x7f);
                }
            }
        }
    }
    if r.below(4) != 0 {
        fix_checksums(&mut t);
    }
    t
}

#[test]
fn mutated_layers_never_panic_and_applied_ones_pass_e2fsck() {
    let seed = seed();
    let (disk, ok) = convertor::fuzz::apply_tar(&seed);
    assert!(ok, "the seed applies");
    let check = |disk: &convertor::fuzz::MemDisk| {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &disk.0).unwrap();
        let out = std::process::Command::new("e2fsck")
            .arg("-fn")
            .arg(f.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "e2fsck -fn: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    check(&disk);
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut applied, mut refused) = (0, 0);
    for i in 0..1500 {
        let t = mutate(&seed, &mut r);
        let (disk, ok) = convertor::fuzz::apply_tar(&t);
        if ok {
            applied += 1;
            if applied % 10 == 1 {
                check(&disk);
            }
        } else {
            refused += 1;
        }
        let _ = i;
    }
    eprintln!("{applied} applied, {refused} refused");
    assert!(
        applied > 100 && refused > 100,
        "{applied} applied, {refused} refused: the mutations reach both outcomes"
    );
}
