//! Applying one OCI layer tar to the ext4 filesystem, in user space.
//!
//! The semantics are containerd's `archive.Apply` (what `ctr` and the kubelet do when they
//! unpack a layer), which is what the OCI image spec's "Applying Changesets" describes:
//! - names are cleaned; an absolute name is relative to the image root; a name that climbs
//!   out of the root with `..` is refused (containerd clamps it at the root; a converter in CI
//!   should fail loudly on such an image rather than guess);
//! - symlinks in the directories of a name are followed, scoped to the image root (an absolute
//!   target starts at the image root, `..` stops there), so nothing lands outside the image;
//!   the last component is never followed;
//! - an entry replaces what is at its name, except that a directory over a directory keeps
//!   the directory and its contents and takes the new metadata;
//! - `.wh.NAME` removes NAME; `.wh..wh..opq` removes everything in its directory that this
//!   layer did not itself create;
//! - missing parent directories are made (mode 0755, owner 0:0, time 0);
//! - a hard link names an existing non-directory (resolved like any name, last component not
//!   followed); the inode keeps its own metadata;
//! - symlinks keep mode 0777 and take owner and times;
//! - extended attributes come from PAX `SCHILY.xattr.*` records;
//! - atime is the later of the PAX atime and mtime, as containerd's `latestTime`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;

use tar::EntryType;

use crate::extfs::{self, Fs, Ino, Meta, NodeKind, ROOT_INO};

/// ext4's limit on one name.
const NAME_MAX: usize = 255;
/// Largest file ext4 with 4 KiB blocks holds (16 TiB - 4 KiB).
const MAX_FILE: u64 = (16 << 40) - 4096;
/// Symlinks followed while resolving one name (Linux's limit).
const MAX_FOLLOW: usize = 40;
/// File data is copied in pieces of this size.
const CHUNK: usize = 1 << 20;
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Why a layer could not be applied (also what [`crate::model`] reports). A cause is part of
/// the message, not `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The tar stream itself is broken (truncated, bad checksum, bad number).
    #[error("layer tar: {0}")]
    Tar(std::io::Error),
    /// An entry the OCI rules do not allow.
    #[error("entry {entry:?}: {reason}")]
    Refused { entry: String, reason: String },
    /// The filesystem refused an operation (e.g. no space).
    #[error("entry {entry:?}: {cause}")]
    Fs {
        entry: String,
        cause: extfs::FsError,
    },
}

impl ApplyError {
    /// A broken stream keeps its kind (a truncated tar is `UnexpectedEof`), a refused entry is
    /// `InvalidData`, a filesystem error has [`extfs::FsError::kind`].
    pub fn kind(&self) -> std::io::ErrorKind {
        match self {
            ApplyError::Tar(e) => e.kind(),
            ApplyError::Refused { .. } => std::io::ErrorKind::InvalidData,
            ApplyError::Fs { cause, .. } => cause.kind(),
        }
    }
}

type Result<T> = std::result::Result<T, ApplyError>;

/// What applying a layer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub nodes: u64,
    pub whiteouts: u64,
    /// Bytes of file content read from the tar.
    pub file_bytes: u64,
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A cleaned name: its components, none empty, `.` or `..`.
pub(crate) fn clean(name: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    if name.contains(&0) {
        return Err("the name contains a NUL byte".into());
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("the name climbs out of the image root with \"..\"".into());
                }
            }
            c if c.len() > NAME_MAX => {
                return Err(format!(
                    "a component is {} bytes long; ext4 allows {NAME_MAX}",
                    c.len()
                ))
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// Applies layer tars to one filesystem.
#[derive(Debug)]
pub struct Applier<'f, 'a> {
    fs: &'f mut Fs<'a>,
    /// (directory, name) of every entry this layer made or touched, for opaque whiteouts.
    made: HashSet<(Ino, Vec<u8>)>,
    /// Directories this layer made: a name in one exists only if it is in `made`, so no
    /// directory scan is needed to find out.
    fresh: HashSet<Ino>,
    /// (directory, name) → directory, for resolving parents without scanning directories;
    /// cleared whenever anything is removed.
    dirs: HashMap<(Ino, Vec<u8>), Ino>,
    stats: ApplyStats,
    buf: Vec<u8>,
    /// TurboOCI: file data is not copied but declared to the disk as remote (at its offset in
    /// the tar stream), blocks allocated and left unwritten.
    remote_data: bool,
}

impl<'f, 'a> Applier<'f, 'a> {
    pub fn new(fs: &'f mut Fs<'a>) -> Self {
        Applier {
            fs,
            made: HashSet::new(),
            fresh: HashSet::new(),
            dirs: HashMap::new(),
            stats: ApplyStats::default(),
            buf: vec![0; CHUNK],
            remote_data: false,
        }
    }

    /// An applier that maps file data into the tar instead of copying it (TurboOCI).
    pub fn remote_data(mut self) -> Self {
        self.remote_data = true;
        self
    }

    /// Applies one layer (an uncompressed tar stream).
    pub fn apply<R: Read>(mut self, tar: R) -> Result<ApplyStats> {
        let mut ar = tar::Archive::new(tar);
        let entries = ar.entries().map_err(ApplyError::Tar)?;
        for entry in entries {
            let mut entry = entry.map_err(ApplyError::Tar)?;
            let name = entry.path_bytes().into_owned();
            self.stats.entries += 1;
            self.entry(&mut entry, &name)?;
        }
        Ok(self.stats)
    }

    fn fs_err(name: &[u8]) -> impl FnOnce(extfs::FsError) -> ApplyError + '_ {
        move |cause| ApplyError::Fs {
            entry: show(name),
            cause,
        }
    }

    pub(crate) fn refuse(name: &[u8], reason: impl Into<String>) -> ApplyError {
        ApplyError::Refused {
            entry: show(name),
            reason: reason.into(),
        }
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>, name: &[u8]) -> Result<()> {
        let kind = e.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let comps = clean(name).map_err(|r| Self::refuse(name, r))?;
        let Some((base, dirs)) = comps.split_last() else {
            return self.root_entry(e, kind, name);
        };
        if base.starts_with(WHITEOUT) {
            return self.whiteout(dirs, base, name);
        }
        let parent = self.resolve(dirs, true, name)?.expect("created");
        let keep_dir = self.make_room(parent, base, kind, name)?;
        let ino = self.create(e, kind, parent, base, keep_dir, name)?;
        self.made.insert((parent, base.clone()));
        if kind == EntryType::Link {
            // A hard link names an inode that already has its metadata; tar writers repeat
            // the target's in the link's header, and containerd's chmod of a link does not
            // apply (it looks the target up relative to its own working directory).
            return Ok(());
        }
        let x = xattrs(e, name)?;
        if !x.is_empty() {
            self.fs.set_xattrs(ino, &x).map_err(Self::fs_err(name))?;
        }
        let mut m = meta(e, name)?;
        if kind == EntryType::Symlink {
            m.mode = 0o777;
        }
        self.fs.set_meta(ino, &m).map_err(Self::fs_err(name))?;
        Ok(())
    }

    /// An entry naming the root itself: only a directory entry means anything (its metadata).
    fn root_entry<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        kind: EntryType,
        name: &[u8],
    ) -> Result<()> {
        if kind == EntryType::Directory {
            let m = meta(e, name)?;
            self.fs.set_meta(ROOT_INO, &m).map_err(Self::fs_err(name))?;
            let x = xattrs(e, name)?;
            if !x.is_empty() {
                self.fs
                    .set_xattrs(ROOT_INO, &x)
                    .map_err(Self::fs_err(name))?;
            }
        }
        Ok(())
    }

    /// `.wh.NAME` (removes NAME and what is under it) or `.wh..wh..opq` in directory `dirs`.
    fn whiteout(&mut self, dirs: &[Vec<u8>], base: &[u8], name: &[u8]) -> Result<()> {
        self.stats.whiteouts += 1;
        let Some(dir) = self.resolve(dirs, false, name)? else {
            return Ok(());
        };
        if base == OPAQUE {
            return self.opaque(dir, name);
        }
        let target = &base[WHITEOUT.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(Self::refuse(name, "a whiteout must name an entry"));
        }
        if let Some(ino) = self.lookup(dir, target).map_err(Self::fs_err(name))? {
            self.remove_tree(dir, target, ino)
                .map_err(Self::fs_err(name))?;
        }
        Ok(())
    }

    /// Removes what is at `base` in `parent`, unless a directory entry lands on a directory:
    /// that one is kept (returned) and takes the new metadata.
    fn make_room(
        &mut self,
        parent: Ino,
        base: &[u8],
        kind: EntryType,
        name: &[u8],
    ) -> Result<Option<Ino>> {
        let Some(ino) = self.lookup(parent, base).map_err(Self::fs_err(name))? else {
            return Ok(None);
        };
        let st = self.fs.stat(ino).map_err(Self::fs_err(name))?;
        if st.is_dir() && kind == EntryType::Directory {
            return Ok(Some(ino));
        }
        self.remove_tree(parent, base, ino)
            .map_err(Self::fs_err(name))?;
        Ok(None)
    }

    /// Makes the entry's inode at `base` in `parent` (or takes `keep_dir`) and returns it.
    fn create<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        kind: EntryType,
        parent: Ino,
        base: &[u8],
        keep_dir: Option<Ino>,
        name: &[u8],
    ) -> Result<Ino> {
        let fe = Self::fs_err(name);
        Ok(match kind {
            EntryType::Directory => {
                self.stats.dirs += 1;
                match keep_dir {
                    Some(i) => i,
                    None => {
                        let i = self.fs.mkdir(parent, base).map_err(fe)?;
                        self.fresh.insert(i);
                        self.dirs.insert((parent, base.to_vec()), i);
                        i
                    }
                }
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.stats.files += 1;
                let size = e.size();
                if size > MAX_FILE {
                    return Err(Self::refuse(
                        name,
                        format!("a {size}-byte file is larger than ext4 allows"),
                    ));
                }
                let ino = self.fs.create_file(parent, base, size).map_err(fe)?;
                if self.remote_data {
                    self.map_data(e, kind, ino, size, name)?;
                } else {
                    self.copy_data(e, ino, size, name)?;
                }
                ino
            }
            EntryType::Symlink => {
                self.stats.symlinks += 1;
                self.symlink(e, parent, base, name)?
            }
            EntryType::Link => {
                self.stats.hardlinks += 1;
                self.hardlink(e, parent, base, name)?
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.stats.nodes += 1;
                let k = match kind {
                    EntryType::Char => NodeKind::Char,
                    EntryType::Block => NodeKind::Block,
                    _ => NodeKind::Fifo,
                };
                let h = e.header();
                let (maj, min) = if k == NodeKind::Fifo {
                    (0, 0)
                } else {
                    (
                        h.device_major().ok().flatten().unwrap_or(0),
                        h.device_minor().ok().flatten().unwrap_or(0),
                    )
                };
                self.fs.mknod(parent, base, k, maj, min).map_err(fe)?
            }
            other => {
                return Err(Self::refuse(
                    name,
                    format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ))
            }
        })
    }

    fn symlink<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        parent: Ino,
        base: &[u8],
        name: &[u8],
    ) -> Result<Ino> {
        let target = e
            .link_name_bytes()
            .ok_or_else(|| Self::refuse(name, "a symlink without a target"))?
            .into_owned();
        if target.is_empty() || target.len() > 4095 || target.contains(&0) {
            return Err(Self::refuse(
                name,
                format!(
                    "symlink target of {} bytes is not a valid path",
                    target.len()
                ),
            ));
        }
        self.fs
            .symlink(parent, base, &target)
            .map_err(Self::fs_err(name))
    }

    /// A new name for an existing non-directory.
    fn hardlink<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        parent: Ino,
        base: &[u8],
        name: &[u8],
    ) -> Result<Ino> {
        let target = e
            .link_name_bytes()
            .ok_or_else(|| Self::refuse(name, "a hard link without a target"))?
            .into_owned();
        let ino = self.lookup_path(&target, name)?.ok_or_else(|| {
            Self::refuse(
                name,
                format!("hard link to {:?}, which does not exist", show(&target)),
            )
        })?;
        let st = self.fs.stat(ino).map_err(Self::fs_err(name))?;
        if st.is_dir() {
            return Err(Self::refuse(
                name,
                format!("hard link to {:?}, which is a directory", show(&target)),
            ));
        }
        self.fs
            .hardlink(parent, base, ino)
            .map_err(Self::fs_err(name))?;
        Ok(ino)
    }

    /// TurboOCI: allocates the file's blocks and declares each to the disk as `⌈size/512⌉`
    /// sectors of the tar from the entry's data offset on, split at ext4's extents.
    fn map_data<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        kind: EntryType,
        ino: Ino,
        size: u64,
        name: &[u8],
    ) -> Result<()> {
        let pax_sparse = pax_records(e, name)?
            .iter()
            .any(|(k, _)| k.starts_with(b"GNU.sparse."));
        if kind == EntryType::GNUSparse || pax_sparse {
            return Err(Self::refuse(
                name,
                "a sparse tar entry: its data is not stored contiguously in the tar, so a \
                 TurboOCI meta layer cannot point into it (convert the image natively)"
                    .to_string(),
            ));
        }
        let mut tar_sector = e.raw_file_position() / 512;
        let mut left = size.div_ceil(512);
        for x in self.fs.allocate(ino, size).map_err(Self::fs_err(name))? {
            for b in 0..x.len as u64 {
                if left == 0 {
                    break;
                }
                let n = left.min(8);
                self.fs
                    .disk()
                    .declare_remote(x.pblk + b, n as u32, tar_sector)
                    .map_err(|err| ApplyError::Fs {
                        entry: show(name),
                        cause: extfs::FsError {
                            what: format!("declare block {} as remote data", x.pblk + b),
                            code: err.raw_os_error().unwrap_or(libc::EIO).into(),
                            message: err.to_string(),
                        },
                    })?;
                tar_sector += n;
                left -= n;
            }
        }
        if left > 0 {
            return Err(Self::refuse(
                name,
                format!("ext4 allocated {} sectors too few", left),
            ));
        }
        Ok(())
    }

    /// Copies a regular file's content; 4 KiB blocks of zeros stay holes.
    fn copy_data<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        ino: Ino,
        size: u64,
        name: &[u8],
    ) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        let mut w = self.fs.writer(ino).map_err(Self::fs_err(name))?;
        let mut off = 0u64;
        while off < size {
            let want = ((size - off) as usize).min(CHUNK);
            let buf = &mut self.buf[..want];
            let mut got = 0;
            while got < want {
                let n = e.read(&mut buf[got..]).map_err(ApplyError::Tar)?;
                if n == 0 {
                    return Err(ApplyError::Tar(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "{:?}: the stream ends {} bytes into a {size}-byte file",
                            show(name),
                            off + got as u64
                        ),
                    )));
                }
                got += n;
            }
            // Write runs of non-zero 4 KiB blocks (offsets stay block-aligned: CHUNK is).
            let mut i = 0;
            while i < want {
                let end = (i + 4096).min(want);
                if buf[i..end].iter().all(|&b| b == 0) {
                    i = end;
                    continue;
                }
                let start = i;
                while i < want {
                    let end = (i + 4096).min(want);
                    if buf[i..end].iter().all(|&b| b == 0) {
                        break;
                    }
                    i = end;
                }
                w.write_at(off + start as u64, &buf[start..i])
                    .map_err(Self::fs_err(name))?;
            }
            off += want as u64;
        }
        self.stats.file_bytes += size;
        w.close().map_err(Self::fs_err(name))
    }

    /// The directory named by `dirs`, following symlinks inside the image; missing
    /// directories are made when `create` (else `None`).
    fn resolve(&mut self, dirs: &[Vec<u8>], create: bool, name: &[u8]) -> Result<Option<Ino>> {
        let mut path: Vec<Ino> = vec![ROOT_INO];
        let mut todo: VecDeque<Vec<u8>> = dirs.iter().cloned().collect();
        let mut follows = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if path.len() > 1 {
                        path.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let cur = *path.last().expect("root stays");
            let key = (cur, c);
            if let Some(&d) = self.dirs.get(&key) {
                path.push(d);
                continue;
            }
            let c = key.1;
            let fe = Self::fs_err(name);
            match self.lookup(cur, &c).map_err(fe)? {
                None if create => {
                    let ino = self.fs.mkdir(cur, &c).map_err(Self::fs_err(name))?;
                    let m = Meta {
                        mode: 0o755,
                        ..Meta::default()
                    };
                    self.fs.set_meta(ino, &m).map_err(Self::fs_err(name))?;
                    self.fresh.insert(ino);
                    self.dirs.insert((cur, c.clone()), ino);
                    self.made.insert((cur, c));
                    path.push(ino);
                }
                None => return Ok(None),
                Some(ino) => {
                    let st = self.fs.stat(ino).map_err(Self::fs_err(name))?;
                    if st.is_dir() {
                        self.dirs.insert((cur, c), ino);
                        path.push(ino);
                    } else if st.kind() == extfs::S_IFLNK {
                        follows += 1;
                        if follows > MAX_FOLLOW {
                            return Err(Self::refuse(name, "too many levels of symbolic links"));
                        }
                        let target = self.fs.readlink(ino).map_err(Self::fs_err(name))?;
                        if target.first() == Some(&b'/') {
                            path.truncate(1);
                        }
                        for t in target.split(|&b| b == b'/').rev() {
                            todo.push_front(t.to_vec());
                        }
                    } else if create {
                        return Err(Self::refuse(
                            name,
                            format!("{:?} on the way is not a directory", show(&c)),
                        ));
                    } else {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(*path.last().expect("root stays")))
    }

    /// The inode a (hard link target) name refers to, its last component not followed.
    fn lookup_path(&mut self, target: &[u8], name: &[u8]) -> Result<Option<Ino>> {
        let comps =
            clean(target).map_err(|r| Self::refuse(name, format!("hard link target: {r}")))?;
        let Some((base, dirs)) = comps.split_last() else {
            return Ok(Some(ROOT_INO));
        };
        let Some(dir) = self.resolve(dirs, false, name)? else {
            return Ok(None);
        };
        self.lookup(dir, base).map_err(Self::fs_err(name))
    }

    /// `name` in `dir`, without scanning a directory this layer made.
    fn lookup(&self, dir: Ino, name: &[u8]) -> extfs::Result<Option<Ino>> {
        if self.fresh.contains(&dir) && !self.made.contains(&(dir, name.to_vec())) {
            return Ok(None);
        }
        self.fs.lookup(dir, name)
    }

    fn remove_tree(&mut self, dir: Ino, name: &[u8], ino: Ino) -> extfs::Result<()> {
        self.dirs.clear();
        self.fs.remove_tree(dir, name, ino)
    }

    /// `.wh..wh..opq` in `dir`: removes what lower layers put there (at any depth), keeping
    /// what this layer made.
    fn opaque(&mut self, dir: Ino, name: &[u8]) -> Result<()> {
        let mut todo = vec![dir];
        while let Some(d) = todo.pop() {
            let children = self.fs.list(d).map_err(Self::fs_err(name))?;
            for (child, ino) in children {
                if self.made.contains(&(d, child.clone())) {
                    let st = self.fs.stat(ino).map_err(Self::fs_err(name))?;
                    if st.is_dir() {
                        todo.push(ino);
                    }
                } else {
                    self.fs
                        .remove_tree(d, &child, ino)
                        .map_err(Self::fs_err(name))?;
                }
            }
        }
        Ok(())
    }
}

fn pax_records<R: Read>(e: &mut tar::Entry<'_, R>, name: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = e.pax_extensions().map_err(ApplyError::Tar)? {
        for x in exts {
            let x = x.map_err(|err| Applier::refuse(name, format!("bad PAX record: {err}")))?;
            out.push((x.key_bytes().to_vec(), x.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

pub(crate) fn xattrs<R: Read>(
    e: &mut tar::Entry<'_, R>,
    name: &[u8],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    const PREFIX: &[u8] = b"SCHILY.xattr.";
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = pax_records(e, name)?
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|k| (k.to_vec(), v)))
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// Seconds and nanoseconds of a PAX time ("1234.5678", possibly negative).
pub(crate) fn pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let ns: u32 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(if neg {
        if ns == 0 {
            (-secs, 0)
        } else {
            (-secs - 1, 1_000_000_000 - ns)
        }
    } else {
        (secs, ns)
    })
}

pub(crate) fn meta<R: Read>(e: &mut tar::Entry<'_, R>, name: &[u8]) -> Result<Meta> {
    let h = e.header();
    let bad = |what: &str, err: std::io::Error| Applier::refuse(name, format!("bad {what}: {err}"));
    let mut m = Meta {
        mode: h.mode().map_err(|err| bad("mode", err))? & 0o7777,
        uid: h.uid().map_err(|err| bad("uid", err))?.min(u32::MAX as u64) as u32,
        gid: h.gid().map_err(|err| bad("gid", err))?.min(u32::MAX as u64) as u32,
        mtime: h
            .mtime()
            .map_err(|err| bad("mtime", err))?
            .min(i64::MAX as u64) as i64,
        ..Meta::default()
    };
    let mut atime = None;
    for (k, v) in pax_records(e, name)? {
        let num = || {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        };
        match k.as_slice() {
            b"uid" => {
                m.uid = num()
                    .ok_or_else(|| Applier::refuse(name, "bad PAX uid"))?
                    .min(u32::MAX as u64) as u32
            }
            b"gid" => {
                m.gid = num()
                    .ok_or_else(|| Applier::refuse(name, "bad PAX gid"))?
                    .min(u32::MAX as u64) as u32
            }
            b"mtime" => {
                let (s, ns) = pax_time(&v).ok_or_else(|| Applier::refuse(name, "bad PAX mtime"))?;
                m.mtime = s;
                m.mtime_ns = ns;
            }
            b"atime" => atime = pax_time(&v),
            _ => {}
        }
    }
    (m.atime, m.atime_ns) = match atime {
        Some(a) if a > (m.mtime, m.mtime_ns) => a,
        _ => (m.mtime, m.mtime_ns),
    };
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_and_escapes_refused() {
        let c =
            |s: &str| clean(s.as_bytes()).map(|v| v.iter().map(|c| show(c)).collect::<Vec<_>>());
        assert_eq!(c("./a//b/./c/").unwrap(), ["a", "b", "c"]);
        assert_eq!(c("/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(c("a/../b").unwrap(), ["b"]);
        assert!(c("./").unwrap().is_empty());
        assert!(c("../x").unwrap_err().contains("climbs out"));
        assert!(c("a/../../x").unwrap_err().contains("climbs out"));
        assert!(c(&"x".repeat(256)).unwrap_err().contains("256 bytes"));
        assert!(clean(b"a\0b").unwrap_err().contains("NUL"));
    }

    #[test]
    fn pax_times_parse_with_fractions_and_signs() {
        assert_eq!(
            pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(pax_time(b"12"), Some((12, 0)));
        assert_eq!(pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(pax_time(b"x"), None);
        assert_eq!(pax_time(b"1.2x"), None);
    }
}
