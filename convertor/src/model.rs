//! The expected tree of an image, computed from its layer tars alone: the OCI rules applied to
//! an in-memory map of paths rather than to a filesystem. `verify` compares it with what the
//! converted image's ext4 holds, which checks the libext2fs side (link counts, data, xattrs,
//! device numbers) against a second, much simpler implementation.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::apply::{clean, meta, xattrs, Applier, ApplyError};
use crate::extfs::{self, Meta};
use crate::verify::{Node, Tree};

/// The model refuses what the applier refuses, with the same error.
type Result<T> = std::result::Result<T, ApplyError>;

fn refuse(name: &[u8], reason: impl Into<String>) -> ApplyError {
    Applier::refuse(name, reason)
}

/// Symlinks followed while resolving one name.
const MAX_FOLLOW: usize = 40;

fn join(c: &[Vec<u8>]) -> Vec<u8> {
    c.join(&b'/')
}

/// An image's tree being built layer by layer.
#[derive(Debug)]
pub struct Model {
    pub tree: Tree,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// The tree of a fresh filesystem: the root directory only.
    pub fn new() -> Model {
        let mut tree = Tree::new();
        tree.insert(Vec::new(), dir_node(0o755, 0, 0, (0, 0)));
        Model { tree }
    }

    fn is_dir(&self, p: &[u8]) -> bool {
        self.tree
            .get(p)
            .is_some_and(|n| n.mode & extfs::S_IFMT == extfs::S_IFDIR)
    }

    /// The real path of the directory named by `comps`, following symlinks inside the image;
    /// missing directories are made when `create`.
    fn resolve(
        &mut self,
        comps: &[Vec<u8>],
        create: bool,
        made: &mut HashSet<Vec<u8>>,
        name: &[u8],
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let mut path: Vec<Vec<u8>> = Vec::new();
        let mut todo: std::collections::VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        let mut follows = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    path.pop();
                    continue;
                }
                _ => {}
            }
            path.push(c);
            let p = join(&path);
            match self.tree.get(&p) {
                None if create => {
                    self.tree.insert(p.clone(), dir_node(0o755, 0, 0, (0, 0)));
                    made.insert(p);
                }
                None => return Ok(None),
                Some(n) if n.mode & extfs::S_IFMT == extfs::S_IFDIR => {}
                Some(n) if n.mode & extfs::S_IFMT == extfs::S_IFLNK => {
                    follows += 1;
                    if follows > MAX_FOLLOW {
                        return Err(refuse(name, "too many levels of symbolic links"));
                    }
                    let target = n.target.clone().unwrap_or_default();
                    path.pop();
                    if target.first() == Some(&b'/') {
                        path.clear();
                    }
                    for t in target.split(|&b| b == b'/').rev() {
                        todo.push_front(t.to_vec());
                    }
                }
                Some(_) if create => {
                    return Err(refuse(
                        name,
                        format!(
                            "{:?} on the way is not a directory",
                            String::from_utf8_lossy(&p)
                        ),
                    ))
                }
                Some(_) => return Ok(None),
            }
        }
        Ok(Some(path))
    }

    /// The paths strictly below directory `dir` (`""` is the root).
    fn under(&self, dir: &[u8]) -> Vec<Vec<u8>> {
        let mut prefix = dir.to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        self.tree
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .filter(|k| k.as_slice() != dir)
            .collect()
    }

    fn remove(&mut self, p: &[u8]) {
        self.tree.remove(p);
        for k in self.under(p) {
            self.tree.remove(&k);
        }
    }

    /// Applies one layer (an uncompressed tar).
    pub fn apply<R: Read>(&mut self, tar: R) -> Result<()> {
        let mut made: HashSet<Vec<u8>> = HashSet::new();
        let mut ar = tar::Archive::new(tar);
        for e in ar.entries().map_err(ApplyError::Tar)? {
            let mut e = e.map_err(ApplyError::Tar)?;
            let name = e.path_bytes().into_owned();
            self.entry(&mut e, &name, &mut made)?;
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        name: &[u8],
        made: &mut HashSet<Vec<u8>>,
    ) -> Result<()> {
        let kind = e.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let comps = clean(name).map_err(|r| refuse(name, r))?;
        let Some((base, dirs)) = comps.split_last() else {
            if kind == EntryType::Directory {
                let m = meta(e, name)?;
                let x = xattrs(e, name)?;
                let root = self.tree.get_mut(&Vec::new()).expect("root");
                set_dir_meta(root, &m, x);
            }
            return Ok(());
        };
        if let Some(target) = base.strip_prefix(b".wh.") {
            return self.whiteout(dirs, target, made, name);
        }
        let dir = self.resolve(dirs, true, made, name)?.expect("created");
        let mut pc = dir.clone();
        pc.push(base.clone());
        let p = join(&pc);
        let keep_dir = kind == EntryType::Directory && self.is_dir(&p);
        if !keep_dir && self.tree.contains_key(&p) {
            self.remove(&p);
        }
        made.insert(p.clone());
        let m = meta(e, name)?;
        let x = xattrs(e, name)?;
        if keep_dir {
            set_dir_meta(self.tree.get_mut(&p).expect("present"), &m, x);
            return Ok(());
        }
        let node = match kind {
            EntryType::Directory => node(extfs::S_IFDIR | m.mode, &m, x),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut h = Sha256::new();
                let size = std::io::copy(e, &mut h).map_err(|err| {
                    ApplyError::Tar(std::io::Error::new(
                        err.kind(),
                        format!("{:?}: {err}", String::from_utf8_lossy(name)),
                    ))
                })?;
                let mut n = node(extfs::S_IFREG | m.mode, &m, x);
                n.size = size;
                n.sha256 = Some(hex::encode(h.finalize()));
                n
            }
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| refuse(name, "a symlink without a target"))?
                    .into_owned();
                let mut n = node(extfs::S_IFLNK | 0o777, &m, x);
                n.target = Some(target);
                n
            }
            EntryType::Link => self.hard_link(e, made, name)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = e.header();
                let t = match kind {
                    EntryType::Char => extfs::S_IFCHR,
                    EntryType::Block => extfs::S_IFBLK,
                    _ => extfs::S_IFIFO,
                };
                let mut n = node(t | m.mode, &m, x);
                n.rdev = (kind != EntryType::Fifo).then(|| {
                    (
                        h.device_major().ok().flatten().unwrap_or(0),
                        h.device_minor().ok().flatten().unwrap_or(0),
                    )
                });
                n
            }
            other => {
                return Err(refuse(
                    name,
                    format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ))
            }
        };
        self.tree.insert(p, node);
        Ok(())
    }

    /// `.wh.TARGET` in directory `dirs`: removes TARGET and what is under it; `.wh..wh..opq`
    /// removes what this layer did not make there.
    fn whiteout(
        &mut self,
        dirs: &[Vec<u8>],
        target: &[u8],
        made: &mut HashSet<Vec<u8>>,
        name: &[u8],
    ) -> Result<()> {
        let Some(dir) = self.resolve(dirs, false, made, name)? else {
            return Ok(());
        };
        let dp = join(&dir);
        if target == b".wh..opq" {
            for k in self.under(&dp) {
                if !made.contains(&k) {
                    self.tree.remove(&k);
                }
            }
        } else {
            let mut p = dir.clone();
            p.push(target.to_vec());
            self.remove(&join(&p));
        }
        Ok(())
    }

    /// The node of a hard link: its target's, both in one link group.
    fn hard_link<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        made: &mut HashSet<Vec<u8>>,
        name: &[u8],
    ) -> Result<Node> {
        let t = e
            .link_name_bytes()
            .ok_or_else(|| refuse(name, "a hard link without a target"))?
            .into_owned();
        let missing = || {
            refuse(
                name,
                format!(
                    "hard link to {:?}, which does not exist",
                    String::from_utf8_lossy(&t)
                ),
            )
        };
        let tc = clean(&t).map_err(|r| refuse(name, r))?;
        let Some((tb, td)) = tc.split_last() else {
            return Err(refuse(name, "a hard link to the root"));
        };
        let Some(mut tp) = self.resolve(td, false, made, name)? else {
            return Err(missing());
        };
        tp.push(tb.clone());
        let tpath = join(&tp);
        let mut n = self.tree.get(&tpath).cloned().ok_or_else(missing)?;
        if n.mode & extfs::S_IFMT == extfs::S_IFDIR {
            return Err(refuse(name, "hard link to a directory"));
        }
        let group = n.link_group.clone().unwrap_or_else(|| tpath.clone());
        n.link_group = Some(group.clone());
        if let Some(tn) = self.tree.get_mut(&tpath) {
            tn.link_group = Some(group);
        }
        Ok(n)
    }

    /// The finished tree, hard-link groups named canonically.
    pub fn finish(mut self) -> Tree {
        crate::verify::normalize_groups(&mut self.tree);
        self.tree
    }
}

fn dir_node(mode: u32, uid: u32, gid: u32, mtime: (i64, u32)) -> Node {
    Node {
        mode: extfs::S_IFDIR | mode,
        uid,
        gid,
        size: 0,
        sha256: None,
        mtime,
        target: None,
        rdev: None,
        xattrs: Vec::new(),
        link_group: None,
    }
}

/// A node of type and mode `mode` with the entry's owner and mtime.
fn node(mode: u32, m: &Meta, xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Node {
    Node {
        mode,
        uid: m.uid,
        gid: m.gid,
        size: 0,
        sha256: None,
        mtime: (m.mtime, m.mtime_ns),
        target: None,
        rdev: None,
        xattrs,
        link_group: None,
    }
}

/// A directory entry over a directory (or the root): new mode, owner and xattrs, the rest kept.
fn set_dir_meta(n: &mut Node, m: &Meta, x: Vec<(Vec<u8>, Vec<u8>)>) {
    n.mode = extfs::S_IFDIR | m.mode;
    n.uid = m.uid;
    n.gid = m.gid;
    merge_xattrs(n, x);
}

fn merge_xattrs(n: &mut Node, x: Vec<(Vec<u8>, Vec<u8>)>) {
    let mut all: BTreeMap<Vec<u8>, Vec<u8>> = n.xattrs.drain(..).collect();
    all.extend(x);
    n.xattrs = all.into_iter().collect();
}
