//! Layer tars built by the tests: a builder with fixed owners and times (the same bytes every
//! run), a busybox root filesystem, a layer of real directories of this machine, and gzip.

use std::io::Write;
use std::process::Command;

/// gzip with fixed settings (the same bytes every run).
pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// A layer tar writer: entries get the builder's owner and mtime (0:0 and 1,700,000,000 unless
/// [`TarBuilder::with_owner`] says otherwise); paths are bytes, so names need not be UTF-8.
#[allow(missing_debug_implementations)]
pub struct TarBuilder {
    tar: tar::Builder<Vec<u8>>,
    uid: u64,
    gid: u64,
    mtime: u64,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn os(p: &impl AsRef<[u8]>) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(p.as_ref())
}

impl TarBuilder {
    pub fn new() -> Self {
        Self::with_owner(0, 0, 1_700_000_000)
    }

    pub fn with_owner(uid: u64, gid: u64, mtime: u64) -> Self {
        TarBuilder {
            tar: tar::Builder::new(Vec::new()),
            uid,
            gid,
            mtime,
        }
    }

    /// A GNU header with the default owner and mtime.
    pub fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        Self::new().entry_header(kind, mode, size)
    }

    /// A GNU header with this builder's owner and mtime.
    pub fn entry_header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(self.mtime);
        h.set_size(size);
        h
    }

    pub fn dir(&mut self, path: impl AsRef<[u8]>, mode: u32) -> &mut Self {
        let mut h = self.entry_header(tar::EntryType::Directory, mode, 0);
        self.raw(&mut h, path, b"")
    }

    pub fn file(&mut self, path: impl AsRef<[u8]>, mode: u32, data: &[u8]) -> &mut Self {
        let mut h = self.entry_header(tar::EntryType::Regular, mode, data.len() as u64);
        self.raw(&mut h, path, data)
    }

    pub fn owned(
        &mut self,
        path: impl AsRef<[u8]>,
        mode: u32,
        uid: u64,
        gid: u64,
        data: &[u8],
    ) -> &mut Self {
        let mut h = self.entry_header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.raw(&mut h, path, data)
    }

    pub fn link(
        &mut self,
        kind: tar::EntryType,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> &mut Self {
        let mode = if kind == tar::EntryType::Symlink {
            0o777
        } else {
            0o755
        };
        let mut h = self.entry_header(kind, mode, 0);
        self.tar
            .append_link(&mut h, os(&path), os(&target))
            .unwrap();
        self
    }

    pub fn node(
        &mut self,
        kind: tar::EntryType,
        path: impl AsRef<[u8]>,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = self.entry_header(kind, mode, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(&mut h, path, b"")
    }

    /// An entry with a header the caller made.
    pub fn raw(&mut self, h: &mut tar::Header, path: impl AsRef<[u8]>, data: &[u8]) -> &mut Self {
        self.tar.append_data(h, os(&path), data).unwrap();
        self
    }

    pub fn pax(&mut self, recs: &[(&str, &[u8])]) -> &mut Self {
        self.tar
            .append_pax_extensions(recs.iter().copied())
            .unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.tar.into_inner().unwrap()
    }
}

/// A busybox root filesystem layer: `/bin/busybox` (busybox-static) and its applets as
/// symlinks, a few files of `/etc`, a hard link, a device node, a file with a capability.
pub fn busybox_layer() -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox").expect("read /bin/busybox (install busybox-static)");
    let mut t = TarBuilder::new();
    t.dir("bin", 0o755)
        .file("bin/busybox", 0o755, &bb)
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .file("etc/passwd-", 0o600, b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        .dir("dev", 0o755)
        .node(tar::EntryType::Char, "dev/null", 0o666, 1, 3)
        .node(tar::EntryType::Fifo, "dev/initctl", 0o666, 0, 0)
        .dir("tmp", 0o1777)
        .dir("root", 0o700)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .link(tar::EntryType::Link, "usr/bin/busybox-again", "bin/busybox")
        .owned(
            "usr/bin/owned",
            0o2755,
            1234,
            5678,
            b"#!/bin/sh\necho owned\n",
        );
    for applet in [
        "sh",
        "ls",
        "cat",
        "echo",
        "sleep",
        "find",
        "sha256sum",
        "wc",
    ] {
        t.link(tar::EntryType::Symlink, format!("bin/{applet}"), "busybox");
    }
    // A file capability (cap_net_bind_service), as setcap writes it.
    let cap: [u8; 20] = [0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    t.pax(&[
        ("SCHILY.xattr.security.capability", &cap),
        ("mtime", b"1700000000.25"),
    ])
    .file("usr/bin/ping", 0o755, b"\x7fELF not really");
    t.finish()
}

/// A layer made by GNU tar from real directories of this machine (whichever of `dirs` exist).
pub fn host_layer(dirs: &[&str]) -> Vec<u8> {
    let present: Vec<&str> = dirs
        .iter()
        .copied()
        .filter(|d| std::path::Path::new("/").join(d).exists())
        .collect();
    assert!(!present.is_empty(), "none of {dirs:?} exists");
    let mut args = vec![
        "-C",
        "/",
        "--numeric-owner",
        "--format=pax",
        "--sort=name",
        "-cf",
        "-",
    ];
    args.extend(present.iter().copied());
    let out = Command::new("tar").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
