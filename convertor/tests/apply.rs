//! Applying layer tars to an ext4 filesystem in user space: each result passes `e2fsck -fn`,
//! reads back through libext2fs, and (as root) mounts in the kernel with the same content.

mod common;

use std::path::Path;
use std::process::Command;

use common::TarBuilder;
use convertor::apply::{Applier, ApplyError};
use convertor::disk::WorkDisk;
use convertor::extfs::{Fs, Ino, ROOT_INO};
use convertor::mkfs::mkfs;
use tar::EntryType;

const NOW: i64 = 1_700_000_000;
const UUID: &str = "0c0ffee0-1234-4321-abcd-0123456789ab";

/// A layer tar written by the test: entries owned by 1000:100, mtime 1,600,000,000.
fn layer() -> TarBuilder {
    TarBuilder::with_owner(1000, 100, 1_600_000_000)
}

struct Image {
    _dir: tempfile::TempDir,
    disk: WorkDisk,
}

impl Image {
    fn new(size: u64) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let disk = WorkDisk::create(&path, size).unwrap();
        mkfs(&path, UUID, NOW, dir.path()).unwrap();
        Image { _dir: dir, disk }
    }

    fn apply(&mut self, tar: &[u8]) -> Result<convertor::apply::ApplyStats, ApplyError> {
        let mut fs = Fs::open(&mut self.disk, true, NOW).unwrap();
        let r = Applier::new(&mut fs).apply(tar);
        fs.close().unwrap();
        r
    }

    fn fsck(&self) {
        let out = Command::new("e2fsck")
            .args(["-fn"])
            .arg(self.disk.path())
            .output()
            .expect("run e2fsck (install e2fsprogs)");
        assert!(
            out.status.success(),
            "e2fsck -fn failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn with<T>(&mut self, f: impl FnOnce(&mut Fs<'_>) -> T) -> T {
        let mut fs = Fs::open(&mut self.disk, false, NOW).unwrap();
        let r = f(&mut fs);
        drop(fs);
        r
    }
}

fn find(fs: &Fs<'_>, path: &[u8]) -> Option<Ino> {
    let mut ino = ROOT_INO;
    for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        ino = fs.lookup(ino, c).unwrap()?;
    }
    Some(ino)
}

fn content(fs: &mut Fs<'_>, ino: Ino) -> Vec<u8> {
    let size = fs.stat(ino).unwrap().size as usize;
    let mut buf = vec![0u8; size];
    assert_eq!(fs.read_file(ino, 0, &mut buf).unwrap(), size);
    buf
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// Everything one layer can hold, applied to a fresh filesystem.
fn base_layer() -> Vec<u8> {
    let long = vec![b'n'; 255];
    let mut big = pattern(9 << 20, 7);
    big[4096..3 << 20].fill(0); // a hole in the middle stays a hole
    let mut l = layer();
    l.dir(b"./", 0o755)
        .dir(b"etc", 0o755)
        .file(b"etc/hostname", 0o644, b"converted\n")
        .dir(b"usr/bin", 0o755) // parent made implicitly
        .file(b"usr/bin/tool", 0o4755, &pattern(70_000, 1))
        .link(EntryType::Link, b"usr/bin/tool-link", b"usr/bin/tool")
        .link(EntryType::Symlink, b"usr/bin/sh", b"/bin/busybox")
        .link(EntryType::Symlink, b"lib", b"usr/lib")
        .dir(b"usr/lib", 0o755)
        .file(b"lib/in-usr-lib", 0o600, b"through the symlink")
        .node(EntryType::Char, b"dev-null", 0o600, 1, 3)
        .node(EntryType::Block, b"dev-big", 0o600, 259, 65536)
        .node(EntryType::Fifo, b"fifo", 0o600, 0, 0)
        .file(b"\xff\xfe-not-utf8", 0o644, b"bytes")
        .file(&long, 0o644, b"long name")
        .file(b"big", 0o644, &big)
        .file(b"empty", 0o640, b"");
    l.pax(&[
        ("SCHILY.xattr.user.note", b"hello"),
        (
            "SCHILY.xattr.security.capability",
            &[
                1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
        ("mtime", b"1600000000.123456789"),
        ("uid", b"4000000"),
    ])
    .file(b"usr/bin/cap", 0o755, b"#!/bin/sh\n");
    let mut sticky = layer().entry_header(EntryType::Directory, 0o1777, 0);
    sticky.set_uid(0);
    l.raw(&mut sticky, b"tmp", b"");
    l.finish()
}

#[test]
fn a_layer_with_every_kind_of_entry_passes_e2fsck_and_reads_back() {
    let mut img = Image::new(512 << 20);
    let stats = img.apply(&base_layer()).unwrap();
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.symlinks, 2);
    assert_eq!(stats.nodes, 3);
    img.fsck();
    img.with(|fs| {
        let root = fs.stat(ROOT_INO).unwrap();
        assert_eq!(
            (root.mode & 0o7777, root.uid, root.mtime),
            (0o755, 1000, 1_600_000_000)
        );

        let i = find(fs, b"etc/hostname").unwrap();
        assert_eq!(content(fs, i), b"converted\n");
        let st = fs.stat(i).unwrap();
        assert_eq!(
            (st.mode, st.uid, st.gid, st.links),
            (0o100644, 1000, 100, 1)
        );

        let tool = find(fs, b"usr/bin/tool").unwrap();
        assert_eq!(find(fs, b"usr/bin/tool-link"), Some(tool));
        let st = fs.stat(tool).unwrap();
        assert_eq!((st.mode, st.links), (0o104755, 2));
        assert_eq!(content(fs, tool), pattern(70_000, 1));

        let usr = fs.stat(find(fs, b"usr").unwrap()).unwrap();
        assert_eq!(
            (usr.mode, usr.uid, usr.mtime),
            (0o040755, 0, 0),
            "implicit parent"
        );
        assert_eq!(usr.links, 4, "usr: ., its entry, bin/.., lib/..");

        let sh = find(fs, b"usr/bin/sh").unwrap();
        assert_eq!(fs.readlink(sh).unwrap(), b"/bin/busybox");
        assert_eq!(fs.stat(sh).unwrap().mode, 0o120777);
        // A file under a symlinked directory lands where the symlink points.
        let f = find(fs, b"usr/lib/in-usr-lib").unwrap();
        assert_eq!(content(fs, f), b"through the symlink");

        let c = fs.stat(find(fs, b"dev-null").unwrap()).unwrap();
        assert_eq!((c.mode, c.rdev_major, c.rdev_minor), (0o020600, 1, 3));
        let b = fs.stat(find(fs, b"dev-big").unwrap()).unwrap();
        assert_eq!((b.mode, b.rdev_major, b.rdev_minor), (0o060600, 259, 65536));
        assert_eq!(fs.stat(find(fs, b"fifo").unwrap()).unwrap().mode, 0o010600);

        let n = find(fs, b"\xff\xfe-not-utf8").unwrap();
        assert_eq!(content(fs, n), b"bytes");
        let n = find(fs, &[b'n'; 255]).unwrap();
        assert_eq!(content(fs, n), b"long name");

        let big = find(fs, b"big").unwrap();
        let mut want = pattern(9 << 20, 7);
        want[4096..3 << 20].fill(0);
        assert_eq!(content(fs, big), want);
        let st = fs.stat(big).unwrap();
        assert!(
            st.blocks512 * 512 < (9 << 20) - (2 << 20),
            "zero blocks stay holes: {} bytes allocated",
            st.blocks512 * 512
        );
        assert_eq!(fs.stat(find(fs, b"empty").unwrap()).unwrap().size, 0);

        let cap = find(fs, b"usr/bin/cap").unwrap();
        let st = fs.stat(cap).unwrap();
        assert_eq!(
            (st.uid, st.mtime, st.mtime_ns),
            (4_000_000, 1_600_000_000, 123_456_789)
        );
        let x = fs.xattrs(cap).unwrap();
        let names: Vec<&[u8]> = x.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(names, [&b"security.capability"[..], b"user.note"]);
        assert_eq!(x[1].1, b"hello");
        assert_eq!(x[0].1.len(), 20);

        let tmp = fs.stat(find(fs, b"tmp").unwrap()).unwrap();
        assert_eq!((tmp.mode, tmp.uid), (0o041777, 0));
    });
    mounted_check(&img, |root| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(root.join("usr/bin/tool")).unwrap();
        assert_eq!(
            (m.mode(), m.nlink(), m.uid(), m.gid()),
            (0o104755, 2, 1000, 100)
        );
        assert_eq!(
            std::fs::read(root.join("usr/bin/tool")).unwrap(),
            pattern(70_000, 1)
        );
        assert_eq!(
            std::fs::read_link(root.join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        let m = std::fs::symlink_metadata(root.join("dev-big")).unwrap();
        assert_eq!(m.rdev(), libc::makedev(259, 65536));
        let m = std::fs::metadata(root.join("usr/bin/cap")).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
    });
}

#[test]
fn whiteouts_opaque_directories_and_replacements_follow_the_oci_rules() {
    let mut img = Image::new(256 << 20);
    let mut l = layer();
    l.dir(b"a", 0o755)
        .file(b"a/old", 0o644, b"lower")
        .dir(b"a/sub", 0o755)
        .file(b"a/sub/deep", 0o644, b"lower deep")
        .dir(b"b", 0o755)
        .file(b"b/gone", 0o644, &pattern(100_000, 3))
        .file(b"b/kept", 0o644, b"kept")
        .dir(b"c", 0o700)
        .file(b"c/x", 0o644, b"x")
        .file(b"d", 0o644, b"a file that becomes a directory")
        .dir(b"e", 0o755)
        .file(b"e/f", 0o644, b"in a dir that becomes a file")
        .file(b"h", 0o644, b"hard-linked")
        .link(EntryType::Link, b"h2", b"h");
    img.apply(&l.finish()).unwrap();
    let free_before = img.with(|fs| fs.counts());

    let mut l = layer();
    l.dir(b"a", 0o750)
        .file(b"a/.wh..wh..opq", 0o644, b"")
        .file(b"a/new", 0o644, b"upper")
        .file(b"b/.wh.gone", 0o644, b"")
        .file(b"b/.wh.never-existed", 0o644, b"")
        .dir(b"c", 0o755) // a directory over a directory keeps its contents
        .dir(b"d", 0o755)
        .file(b"e", 0o644, b"now a file")
        .file(b".wh.h", 0o644, b"");
    let stats = img.apply(&l.finish()).unwrap();
    assert_eq!(stats.whiteouts, 4);
    img.fsck();
    img.with(|fs| {
        let a = find(fs, b"a").unwrap();
        let mut names: Vec<Vec<u8>> = fs.list(a).unwrap().into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(
            names,
            vec![b"new".to_vec()],
            "opaque: only this layer's entries remain"
        );
        assert_eq!(fs.stat(a).unwrap().mode, 0o040750);
        assert!(find(fs, b"b/gone").is_none());
        assert!(find(fs, b"b/kept").is_some());
        let c = find(fs, b"c").unwrap();
        assert_eq!(fs.stat(c).unwrap().mode, 0o040755);
        assert!(find(fs, b"c/x").is_some());
        assert!(fs.stat(find(fs, b"d").unwrap()).unwrap().is_dir());
        let e = find(fs, b"e").unwrap();
        assert_eq!(content(fs, e), b"now a file");
        assert!(find(fs, b"h").is_none());
        let h2 = find(fs, b"h2").unwrap();
        assert_eq!(fs.stat(h2).unwrap().links, 1);
        assert_eq!(content(fs, h2), b"hard-linked");
        // The 100 kB file's blocks were given back.
        assert!(fs.counts().0 > free_before.0);
    });
}

/// Entries a hostile image may carry: each is refused with a clear error, and nothing is
/// written outside the image (there is no outside: the filesystem is the only target).
#[test]
fn hostile_entries_are_refused_with_the_entry_named() {
    fn refused(tar: Vec<u8>, want: &str) {
        let mut img = Image::new(64 << 20);
        let err = img.apply(&tar).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
    let mut h = layer().entry_header(EntryType::Regular, 0o644, 1);
    let mut raw = Vec::new();
    {
        // A name with ".." that climbs out of the root (the tar crate refuses to write one).
        h.as_old_mut().name[..10].copy_from_slice(b"../escape\0");
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        raw.extend_from_slice(&[b'x'; 512]);
        raw.extend_from_slice(&[0; 1024]);
    }
    refused(raw, "climbs out of the image root");

    let mut l = layer();
    l.link(EntryType::Link, b"nowhere", b"does/not/exist");
    refused(
        l.finish(),
        "hard link to \"does/not/exist\", which does not exist",
    );

    let mut l = layer();
    l.dir(b"d", 0o755).link(EntryType::Link, b"dlink", b"d");
    refused(l.finish(), "which is a directory");

    let mut l = layer();
    l.file(b"f", 0o644, b"x")
        .file(b"f/under-a-file", 0o644, b"y");
    refused(l.finish(), "is not a directory");

    // Symlink loops while resolving a parent.
    let mut l = layer();
    l.link(EntryType::Symlink, b"loop1", b"loop2")
        .link(EntryType::Symlink, b"loop2", b"loop1")
        .file(b"loop1/x", 0o644, b"x");
    refused(l.finish(), "too many levels of symbolic links");

    // A truncated stream: the file's data ends early.
    let mut l = layer();
    l.file(b"cut", 0o644, &pattern(10_000, 2));
    let mut t = l.finish();
    t.truncate(512 + 3000);
    let mut img = Image::new(64 << 20);
    let err = img.apply(&t).unwrap_err();
    assert!(matches!(err, ApplyError::Tar(_)), "{err}");

    // A file larger than the disk: ENOSPC, named.
    let mut l = layer();
    l.file(b"huge", 0o644, &pattern(80 << 20, 9));
    refused(l.finish(), "Could not allocate block");

    // A size field beyond ext4's limit is refused before anything is read.
    let mut h = layer().entry_header(EntryType::Regular, 0o644, 0);
    h.set_size(1 << 50);
    let mut raw = Vec::new();
    h.set_path("huge").unwrap();
    h.set_cksum();
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(&[0; 1024]);
    refused(raw, "larger than ext4 allows");
}

#[test]
fn escaping_symlinks_resolve_inside_the_image() {
    let mut img = Image::new(64 << 20);
    let mut l = layer();
    l.dir(b"inside", 0o755)
        .link(EntryType::Symlink, b"up", b"../../../../inside")
        .link(EntryType::Symlink, b"abs", b"/inside")
        .file(b"up/through-up", 0o644, b"1")
        .file(b"abs/through-abs", 0o644, b"2");
    img.apply(&l.finish()).unwrap();
    img.fsck();
    img.with(|fs| {
        assert!(find(fs, b"inside/through-up").is_some());
        assert!(find(fs, b"inside/through-abs").is_some());
    });
}

#[test]
fn the_same_layers_give_the_same_bytes() {
    let run = || {
        let mut img = Image::new(256 << 20);
        img.apply(&base_layer()).unwrap();
        let dirty = img.disk.take_dirty();
        let mut all = Vec::new();
        for m in &dirty {
            let mut b = vec![0u8; m.length as usize * 512];
            std::os::unix::fs::FileExt::read_exact_at(img.disk.file(), &mut b, m.offset * 512)
                .unwrap();
            all.extend_from_slice(&b);
        }
        (
            dirty
                .iter()
                .map(|m| (m.offset, m.length))
                .collect::<Vec<_>>(),
            all,
        )
    };
    let (a, b) = (run(), run());
    assert_eq!(a.0, b.0);
    assert!(a.1 == b.1, "same layers, different bytes");
}

/// As root, mounts the image read-only through a loop device and runs `check` on it.
fn mounted_check(img: &Image, check: impl FnOnce(&Path)) {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "the kernel mount check needs root, and CI runs as root"
        );
        eprintln!("skipping the kernel mount check: not root");
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,ro,noload"])
        .arg(img.disk.path())
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(st.success(), "mount -o loop failed");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(mnt.path())));
    let _ = Command::new("umount").arg(mnt.path()).status();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}
