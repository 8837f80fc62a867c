//! The expected tree of an image, computed from its layer tars alone: the OCI rules applied to
//! an in-memory map of paths rather than to a filesystem. `verify` compares it with what the
//! converted image's ext4 holds, which checks the libext2fs side (link counts, data, xattrs,
//! device numbers) against a second, much simpler implementation.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::apply::{clean, meta, xattrs};
use crate::extfs;
use crate::verify::{Node, Tree};

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
                        bail!("too many levels of symbolic links");
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
                Some(_) if create => bail!(
                    "{:?} on the way is not a directory",
                    String::from_utf8_lossy(&p)
                ),
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
        for e in ar.entries()? {
            let mut e = e?;
            let name = e.path_bytes().into_owned();
            let show = String::from_utf8_lossy(&name).into_owned();
            self.entry(&mut e, &name, &mut made)
                .with_context(|| format!("entry {show:?}"))?;
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
        let comps = clean(name).map_err(anyhow::Error::msg)?;
        let Some((base, dirs)) = comps.split_last() else {
            if kind == EntryType::Directory {
                let m = meta(e, name)?;
                let x = xattrs(e, name)?;
                let root = self.tree.get_mut(&Vec::new()).expect("root");
                root.mode = extfs::S_IFDIR | m.mode;
                root.uid = m.uid;
                root.gid = m.gid;
                merge_xattrs(root, x);
            }
            return Ok(());
        };
        if let Some(target) = base.strip_prefix(b".wh.") {
            let Some(dir) = self.resolve(dirs, false, made)? else {
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
            return Ok(());
        }
        let dir = self.resolve(dirs, true, made)?.expect("created");
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
        let node = match kind {
            EntryType::Directory => {
                if keep_dir {
                    let n = self.tree.get_mut(&p).expect("present");
                    n.mode = extfs::S_IFDIR | m.mode;
                    n.uid = m.uid;
                    n.gid = m.gid;
                    merge_xattrs(n, x);
                    return Ok(());
                }
                let mut n = dir_node(m.mode, m.uid, m.gid, (m.mtime, m.mtime_ns));
                n.xattrs = x;
                n
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut h = Sha256::new();
                let size = std::io::copy(e, &mut h)?;
                Node {
                    mode: extfs::S_IFREG | m.mode,
                    uid: m.uid,
                    gid: m.gid,
                    size,
                    sha256: Some(hex::encode(h.finalize())),
                    mtime: (m.mtime, m.mtime_ns),
                    target: None,
                    rdev: None,
                    xattrs: x,
                    link_group: None,
                }
            }
            EntryType::Symlink => Node {
                mode: extfs::S_IFLNK | 0o777,
                uid: m.uid,
                gid: m.gid,
                size: 0,
                sha256: None,
                mtime: (m.mtime, m.mtime_ns),
                target: Some(
                    e.link_name_bytes()
                        .context("a symlink without a target")?
                        .into_owned(),
                ),
                rdev: None,
                xattrs: x,
                link_group: None,
            },
            EntryType::Link => {
                let t = e
                    .link_name_bytes()
                    .context("a hard link without a target")?
                    .into_owned();
                let tc = clean(&t).map_err(anyhow::Error::msg)?;
                let Some((tb, td)) = tc.split_last() else {
                    bail!("a hard link to the root")
                };
                let Some(mut tp) = self.resolve(td, false, made)? else {
                    bail!(
                        "hard link to {:?}, which does not exist",
                        String::from_utf8_lossy(&t)
                    )
                };
                tp.push(tb.clone());
                let tpath = join(&tp);
                let mut n = self.tree.get(&tpath).cloned().with_context(|| {
                    format!(
                        "hard link to {:?}, which does not exist",
                        String::from_utf8_lossy(&t)
                    )
                })?;
                if n.mode & extfs::S_IFMT == extfs::S_IFDIR {
                    bail!("hard link to a directory");
                }
                let group = n.link_group.clone().unwrap_or_else(|| tpath.clone());
                n.link_group = Some(group.clone());
                if let Some(tn) = self.tree.get_mut(&tpath) {
                    tn.link_group = Some(group);
                }
                n
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = e.header();
                let t = match kind {
                    EntryType::Char => extfs::S_IFCHR,
                    EntryType::Block => extfs::S_IFBLK,
                    _ => extfs::S_IFIFO,
                };
                let rdev = (kind != EntryType::Fifo).then(|| {
                    (
                        h.device_major().ok().flatten().unwrap_or(0),
                        h.device_minor().ok().flatten().unwrap_or(0),
                    )
                });
                Node {
                    mode: t | m.mode,
                    uid: m.uid,
                    gid: m.gid,
                    size: 0,
                    sha256: None,
                    mtime: (m.mtime, m.mtime_ns),
                    target: None,
                    rdev,
                    xattrs: x,
                    link_group: None,
                }
            }
            other => bail!("unsupported tar entry type {:?}", other.as_byte() as char),
        };
        self.tree.insert(p, node);
        Ok(())
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

fn merge_xattrs(n: &mut Node, x: Vec<(Vec<u8>, Vec<u8>)>) {
    let mut all: BTreeMap<Vec<u8>, Vec<u8>> = n.xattrs.drain(..).collect();
    all.extend(x);
    n.xattrs = all.into_iter().collect();
}
