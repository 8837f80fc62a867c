//! Reading a converted image back: its layer blobs merged into the virtual disk (overlaybd's
//! own reader: tar envelope, ZFile with the integrity table, LSMT), the ext4 on it opened
//! read-only with libext2fs, and a file-by-file description of a tree (content digest, type,
//! mode, owner, times, link target, device numbers, extended attributes, hard-link groups)
//! that can be taken of that filesystem or of a directory on the host, and compared.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use overlaybd_lsmt::{blob, RoLayer, Stack};
use sha2::{Digest, Sha256};
use zfile::ReadAt;

use crate::error::{At, Error, Result};
use crate::extfs::{self, DiskIo, Fs, Ino, ROOT_INO};

/// The merged disk of converted layer blobs (bottom first), read-only.
pub struct LayerDisk {
    stack: Stack,
}

impl std::fmt::Debug for LayerDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LayerDisk({} bytes)", self.stack.virtual_size())
    }
}

impl LayerDisk {
    /// Opens layer blobs as committed layers (each may be tar-wrapped and ZFile-compressed),
    /// checking that each layer's parent UUID names the one below.
    pub fn open(blobs: &[PathBuf]) -> Result<LayerDisk> {
        Self::stack(
            blobs
                .iter()
                .map(|p| native_lower(p))
                .collect::<Result<_>>()?,
        )
    }

    /// Opens TurboOCI meta layers (bottom first), each over its original layer blob (`target`,
    /// read through `index` when gzip'ed).
    pub fn open_turbo(layers: &[TurboLayer]) -> Result<LayerDisk> {
        Self::stack(layers.iter().map(turbo_lower).collect::<Result<_>>()?)
    }

    /// Opens an image's layers, native and TurboOCI mixed (bottom first).
    pub fn open_mixed(layers: &[ImageLayer]) -> Result<LayerDisk> {
        let lower = |l: &ImageLayer| match l {
            ImageLayer::Native(p) => native_lower(p),
            ImageLayer::Turbo(t) => turbo_lower(t),
        };
        Self::stack(layers.iter().map(lower).collect::<Result<_>>()?)
    }

    fn stack(lowers: Vec<(Arc<dyn ReadAt>, RoLayer)>) -> Result<LayerDisk> {
        let stack = Stack::new(lowers, None)?;
        stack.check_chain()?;
        Ok(LayerDisk { stack })
    }

    pub fn size(&self) -> u64 {
        self.stack.virtual_size()
    }

    /// Writes the merged disk to a sparse file (for `e2fsck` or a loop mount).
    pub fn write_sparse(&self, path: &Path) -> Result<()> {
        let out = std::fs::File::create(path).map_err(|e| Error::io("create", path, e))?;
        self.stack.write_sparse(&out)?;
        Ok(())
    }
}

/// A committed layer blob (it may be tar-wrapped and ZFile-compressed) as a lower.
fn native_lower(p: &Path) -> Result<(Arc<dyn ReadAt>, RoLayer)> {
    let (src, _) = blob::open_path(p).at(|| p.display().to_string())?;
    let layer = RoLayer::open(&*src).at(|| p.display().to_string())?;
    Ok((src, layer))
}

/// A TurboOCI meta layer over its original layer (through its index and digests) as a lower.
fn turbo_lower(l: &TurboLayer) -> Result<(Arc<dyn ReadAt>, RoLayer)> {
    let what = || l.meta.display().to_string();

    let (lsmt, _) = blob::open_path(&l.meta).at(what)?;
    let f = std::fs::File::open(&l.target).map_err(|e| Error::io("open", &l.target, e))?;
    let target: Arc<dyn ReadAt> = match &l.index {
        Some(i) => {
            let ix = std::fs::File::open(i).map_err(|e| Error::io("open", i, e))?;
            Arc::new(overlaybd_turbooci::GzFile::open(Arc::new(f), Box::new(ix))?)
        }
        None => Arc::new(f),
    };
    let target: Arc<dyn ReadAt> = match &l.digests {
        Some((file, root)) => {
            let bytes = std::fs::read(file).map_err(|e| Error::io("read", file, e))?;
            let index = match &l.index {
                Some(i) => Some(std::fs::read(i).map_err(|e| Error::io("read", i, e))?),
                None => None,
            };
            let index = overlaybd_turbooci::digests::index_digest(index.as_deref());
            let d = overlaybd_turbooci::TarDigests::decode_for(&bytes, root, &index)
                .at(|| l.meta.display().to_string())?;
            Arc::new(overlaybd_turbooci::Verified::new(
                target,
                d,
                l.target.display().to_string(),
            )?)
        }
        None => target,
    };
    let (warp, layer) = overlaybd_lsmt::WarpLayer::open(lsmt, target).at(what)?;
    Ok((warp, layer))
}

/// One layer of an image as `verify` reads it.
#[derive(Clone, Debug)]
pub enum ImageLayer {
    Native(PathBuf),
    Turbo(TurboLayer),
}

/// A TurboOCI layer's files, for [`LayerDisk::open_turbo`].
#[derive(Clone, Debug)]
pub struct TurboLayer {
    /// The meta layer (`ext4.fs.meta`).
    pub meta: PathBuf,
    /// The original layer blob.
    pub target: PathBuf,
    /// Its gzip index (`gzip.meta`) when the blob is gzip'ed.
    pub index: Option<PathBuf>,
    /// The tar digests (`tar.blake3`) and their root, when the image has them.
    pub digests: Option<(PathBuf, String)>,
}

impl DiskIo for LayerDisk {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self
            .stack
            .read_at(offset, buf)
            .map_err(overlaybd_lsmt::Error::into_io)?;
        if n != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the disk's end",
            ));
        }
        Ok(())
    }

    fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a converted image is read-only",
        ))
    }
}

/// One file of a tree, as compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `S_IFMT` bits and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files: size and SHA-256 of the content.
    pub size: u64,
    pub sha256: Option<String>,
    /// Not compared for directories (overlayfs and unpackers differ there).
    pub mtime: (i64, u32),
    pub target: Option<Vec<u8>>,
    pub rdev: Option<(u32, u32)>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Paths that share this node's inode, for hard links (the first path of the group).
    pub link_group: Option<Vec<u8>>,
}

/// A tree: path (bytes, relative, `/`-separated) → node.
pub type Tree = BTreeMap<Vec<u8>, Node>;

/// Describes the ext4 filesystem of `disk`, without `lost+found` at the root.
pub fn tree_of_fs(disk: &mut dyn DiskIo) -> Result<Tree> {
    let mut fs = Fs::open(disk, false, 1)?;
    let mut out = Tree::new();
    let mut first_path: BTreeMap<Ino, Vec<u8>> = BTreeMap::new();
    let mut todo: Vec<(Vec<u8>, Ino)> = vec![(Vec::new(), ROOT_INO)];
    let mut buf = vec![0u8; 1 << 20];
    while let Some((path, ino)) = todo.pop() {
        let st = fs.stat(ino)?;
        let kind = st.kind();
        let mut node = Node {
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
            size: 0,
            sha256: None,
            mtime: (st.mtime, st.mtime_ns),
            target: None,
            rdev: None,
            xattrs: fs.xattrs(ino)?,
            link_group: None,
        };
        match kind {
            extfs::S_IFDIR => {
                for (name, child) in fs.list(ino)? {
                    if path.is_empty() && name == b"lost+found" {
                        continue;
                    }
                    todo.push((child_path(&path, &name), child));
                }
            }
            extfs::S_IFREG => {
                let mut h = Sha256::new();
                let mut off = 0u64;
                while off < st.size {
                    let n = fs.read_file(ino, off, &mut buf)?;
                    if n == 0 {
                        return Err(Error::Invalid(format!(
                            "{}: short file",
                            String::from_utf8_lossy(&path)
                        )));
                    }
                    h.update(&buf[..n]);
                    off += n as u64;
                }
                node.size = st.size;
                node.sha256 = Some(hex::encode(h.finalize()));
            }
            extfs::S_IFLNK => node.target = Some(fs.readlink(ino)?),
            extfs::S_IFCHR | extfs::S_IFBLK => node.rdev = Some((st.rdev_major, st.rdev_minor)),
            _ => {}
        }
        if kind != extfs::S_IFDIR && st.links > 1 {
            node.link_group = Some(link_group(&mut first_path, ino, &path));
        }
        out.insert(path, node);
    }
    normalize_groups(&mut out);
    Ok(out)
}

/// Describes a directory on the host (e.g. a rootfs unpacked by another tool).
pub fn tree_of_dir(root: &Path) -> Result<Tree> {
    let mut out = Tree::new();
    let mut first_path: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut todo: Vec<(Vec<u8>, PathBuf)> = vec![(Vec::new(), root.to_path_buf())];
    while let Some((rel, abs)) = todo.pop() {
        let m = std::fs::symlink_metadata(&abs).map_err(|e| Error::io("stat", &abs, e))?;
        let kind = m.mode() & extfs::S_IFMT;
        let mut node = Node {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: 0,
            sha256: None,
            mtime: (m.mtime(), m.mtime_nsec() as u32),
            target: None,
            rdev: None,
            xattrs: host_xattrs(&abs)?,
            link_group: None,
        };
        match kind {
            extfs::S_IFDIR => {
                let list = |e: io::Error| Error::io("list", &abs, e);
                for e in std::fs::read_dir(&abs).map_err(list)? {
                    let e = e.map_err(list)?;
                    todo.push((child_path(&rel, e.file_name().as_bytes()), e.path()));
                }
            }
            extfs::S_IFREG => {
                let mut f = std::fs::File::open(&abs).map_err(|e| Error::io("open", &abs, e))?;
                let mut h = Sha256::new();
                io::copy(&mut f, &mut h).map_err(|e| Error::io("read", &abs, e))?;
                node.size = m.len();
                node.sha256 = Some(hex::encode(h.finalize()));
            }
            extfs::S_IFLNK => {
                let t = std::fs::read_link(&abs).map_err(|e| Error::io("read link", &abs, e))?;
                node.target = Some(t.as_os_str().as_bytes().to_vec());
            }
            extfs::S_IFCHR | extfs::S_IFBLK => {
                let r = m.rdev();
                node.rdev = Some((libc::major(r), libc::minor(r)));
            }
            _ => {}
        }
        if kind != extfs::S_IFDIR && m.nlink() > 1 {
            node.link_group = Some(link_group(&mut first_path, (m.dev(), m.ino()), &rel));
        }
        out.insert(rel, node);
    }
    normalize_groups(&mut out);
    Ok(out)
}

/// Names each hard-link group by its smallest path, so walk order does not matter.
/// `name` in the directory at `dir` (a tree path: the root is empty).
pub(crate) fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The hard-link group of `path`, whose inode is `key`: the first path seen with that inode
/// (made the least one of the group by [`normalize_groups`]).
pub(crate) fn link_group<K: Ord>(
    first_path: &mut BTreeMap<K, Vec<u8>>,
    key: K,
    path: &[u8],
) -> Vec<u8> {
    first_path
        .entry(key)
        .or_insert_with(|| path.to_vec())
        .clone()
}

pub(crate) fn normalize_groups(t: &mut Tree) {
    let mut least: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (p, n) in t.iter() {
        if let Some(g) = &n.link_group {
            let e = least.entry(g.clone()).or_insert_with(|| p.clone());
            if p < e {
                *e = p.clone();
            }
        }
    }
    for n in t.values_mut() {
        if let Some(g) = &n.link_group {
            n.link_group = least.get(g).cloned();
        }
    }
    // A group with one member left (its other names outside the tree) is no group.
    let mut count: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for n in t.values() {
        if let Some(g) = &n.link_group {
            *count.entry(g.clone()).or_default() += 1;
        }
    }
    for n in t.values_mut() {
        if n.link_group.as_ref().is_some_and(|g| count[g] < 2) {
            n.link_group = None;
        }
    }
}

fn host_xattrs(p: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let nul = || Error::InvalidInput(format!("{}: a name with a NUL byte", p.display()));
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| nul())?;
    // SAFETY: c is NUL-terminated; a null buffer asks for the size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if n <= 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; n as usize];
    // SAFETY: names has n bytes.
    let n = unsafe {
        libc::llistxattr(
            c.as_ptr(),
            names.as_mut_ptr() as *mut libc::c_char,
            names.len(),
        )
    };
    if n < 0 {
        return Err(Error::io("list xattrs of", p, io::Error::last_os_error()));
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = std::ffi::CString::new(name).map_err(|_| nul())?;
        // SAFETY: both strings are NUL-terminated; a null buffer asks for the size.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            continue;
        }
        let mut v = vec![0u8; len as usize];
        // SAFETY: v has len bytes.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cn.as_ptr(),
                v.as_mut_ptr() as *mut libc::c_void,
                v.len(),
            )
        };
        if len < 0 {
            continue;
        }
        v.truncate(len as usize);
        out.push((name.to_vec(), v));
    }
    out.sort();
    Ok(out)
}

/// The differences between two trees, one line each (empty when they are equal).
/// Directory mtimes are not compared: unpackers touch them while they fill a directory.
pub fn diff(expected: &Tree, got: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    let show = |p: &[u8]| format!("/{}", String::from_utf8_lossy(p));
    for (p, e) in expected {
        match got.get(p) {
            None => out.push(format!("{}: missing", show(p))),
            Some(g) => {
                let mut e = e.clone();
                let mut g = g.clone();
                if e.mode & extfs::S_IFMT == extfs::S_IFDIR {
                    e.mtime = (0, 0);
                    g.mtime = (0, 0);
                }
                if e != g {
                    out.push(format!("{}: expected {e:?}, got {g:?}", show(p)));
                }
            }
        }
    }
    for p in got.keys() {
        if !expected.contains_key(p) {
            out.push(format!("{}: not expected", show(p)));
        }
    }
    out
}

/// What `verify` found for one manifest pair.
#[derive(Clone, Debug)]
pub struct Verified {
    pub source_manifest: String,
    pub converted_manifest: String,
    /// What the converted image is, and what reading it guarantees.
    pub kind: String,
    pub entries: usize,
    pub differences: Vec<String>,
}

fn manifests(
    store: &dyn crate::store::Store,
    reference: &str,
) -> Result<Vec<(Option<crate::oci::Platform>, String, crate::oci::Manifest)>> {
    use crate::oci::{parse_document, sha256_digest, Document};
    let (b, mt) = store.get_manifest(reference)?;
    Ok(match parse_document(&b, mt.as_deref())? {
        Document::Manifest(m) => vec![(None, sha256_digest(&b), *m)],
        Document::Index(idx) => {
            let mut out = Vec::new();
            for d in idx.manifests {
                // The manifests the convertor converts (it leaves attestations out).
                if crate::convert::is_attestation(&d) {
                    continue;
                }
                let (b, mt) = store.get_manifest(&d.digest)?;
                if let Document::Manifest(m) =
                    parse_document(&b, mt.as_deref().or(Some(&d.media_type)))?
                {
                    out.push((d.platform.clone(), d.digest.clone(), *m));
                }
            }
            out
        }
    })
}

/// Checks every file of the converted image `dst_ref` against the source `src_ref`: the source
/// tree is computed from its layer tars ([`crate::model`]), the converted one read from its
/// ext4 through overlaybd's reader. Platforms of an index are paired by platform.
/// The original layer a TurboOCI meta layer reads from.
fn turbo_target(l: &crate::oci::Descriptor) -> Option<&str> {
    l.annotations
        .as_ref()
        .and_then(crate::oci::annotation::turbo_oci_target)
}

/// A TurboOCI meta image read as the daemon reads it: each meta blob unpacked, each original
/// layer downloaded from the same repository and read through its gzip index, and through its
/// tar digests when the image has them; a native layer among them (a zstd source layer) as
/// it is. Says which kind the image is.
fn open_turbo_image(
    dst: &dyn crate::store::Store,
    m: &crate::oci::Manifest,
    dir: &Path,
) -> Result<(LayerDisk, String)> {
    use crate::oci::{annotation, check_digest, turbo_oci_file as f};
    let mut layers = Vec::new();
    let (mut with_digests, mut turbo) = (0, 0);
    for (i, l) in m.layers.iter().enumerate() {
        let Some(target) = turbo_target(l) else {
            if l.annotation(annotation::BLOB_DIGEST).is_none() {
                return Err(Error::Unsupported(format!(
                    "layer {i} ({}) is neither a TurboOCI meta layer nor an overlaybd layer",
                    l.digest
                )));
            }
            let p = dir.join(format!("layer-{i}"));
            crate::convert::download(dst, l, &p, &crate::progress::Quiet, i)?;
            layers.push(ImageLayer::Native(p));
            continue;
        };
        turbo += 1;
        check_digest(target)?;
        let meta_blob = dir.join(format!("meta-{i}.tar.gz"));
        crate::convert::download(dst, l, &meta_blob, &crate::progress::Quiet, i)?;
        let unpacked = dir.join(format!("meta-{i}"));
        let file = std::fs::File::open(&meta_blob).map_err(|e| Error::io("open", &meta_blob, e))?;
        tar::Archive::new(flate2::read::GzDecoder::new(file))
            .unpack(&unpacked)
            .map_err(|e| Error::io("unpack", &meta_blob, e))?;
        // The original's size is not in the meta image: learn it from the registry's answer.
        let original = dir.join(format!("original-{i}"));
        let mut out =
            std::fs::File::create(&original).map_err(|e| Error::io("create", &original, e))?;
        dst.get_blob(target, &mut out)
            .at(|| format!("download the original layer {target}"))?;
        let (got, _) = crate::layer::sha256_file(&original)?;
        if got != target {
            return Err(Error::Invalid(format!(
                "the original layer {target} from {} has digest {got}",
                dst.describe()
            )));
        }
        let index = unpacked.join(f::GZIP_INDEX);
        let digests = l
            .annotation(annotation::TURBO_OCI_TAR_DIGESTS)
            .map(|root| (unpacked.join(f::TAR_DIGESTS), root.to_string()));
        with_digests += digests.is_some() as usize;
        layers.push(ImageLayer::Turbo(TurboLayer {
            meta: unpacked.join(f::EXT4_META),
            target: original,
            index: index.is_file().then_some(index),
            digests,
        }));
    }
    let mut kind = if with_digests == turbo {
        "a TurboOCI meta image with tar digests: every chunk read from the original layers is \
         checked"
            .to_string()
    } else {
        format!(
            "a TurboOCI meta image, {} of {turbo} meta layers without tar digests (made by \
             overlaybd's convertor?): bytes read from those original layers are not verified",
            turbo - with_digests,
        )
    };
    if turbo < layers.len() {
        kind += &format!(
            "; {} native overlaybd layers (every block checked against its integrity table)",
            layers.len() - turbo
        );
    }
    Ok((LayerDisk::open_mixed(&layers)?, kind))
}

pub fn verify_images(
    src: &dyn crate::store::Store,
    src_ref: &str,
    dst: &dyn crate::store::Store,
    dst_ref: &str,
    work: &Path,
) -> Result<Vec<Verified>> {
    use crate::oci::{check_digest, layer_compression};
    let srcs = manifests(src, src_ref)?;
    let dsts = manifests(dst, dst_ref)?;
    let is_overlaybd = |m: &crate::oci::Manifest| {
        m.layers
            .iter()
            .any(|l| l.annotation(crate::oci::annotation::BLOB_DIGEST).is_some())
    };
    if let Some((_, d, _)) = dsts.iter().find(|(_, _, m)| !is_overlaybd(m)) {
        let swapped = srcs.iter().all(|(_, _, m)| is_overlaybd(m));
        return Err(Error::InvalidInput(format!(
            "DST {} (manifest {d}) is not an overlaybd image: its layers have no {}{}",
            dst.describe(),
            crate::oci::annotation::BLOB_DIGEST,
            if swapped {
                "; SRC is one: verify takes the original image first, then the converted one \
                 (verify SRC DST)"
            } else {
                ""
            }
        )));
    }
    let erofs = |m: &crate::oci::Manifest| {
        m.layers.iter().any(|l| {
            l.annotation(crate::oci::annotation::FS_TYPE)
                .is_some_and(|t| t.split(';').next() == Some("erofs"))
        })
    };
    let mut out = Vec::new();
    for (platform, sdigest, sm) in &srcs {
        let Some((_, ddigest, dm)) = dsts.iter().find(|(p, _, _)| p == platform) else {
            return Err(Error::NotFound(format!(
                "the converted image has no manifest for platform {platform:?}"
            )));
        };
        let mut model = crate::model::Model::new();
        for (i, l) in sm.layers.iter().enumerate() {
            check_digest(&l.digest)?;
            let c = layer_compression(&l.media_type).ok_or_else(|| {
                Error::Unsupported(format!(
                    "source layer {}: media type {:?}",
                    l.digest, l.media_type
                ))
            })?;
            let p = work.join(format!("verify-src-{i}"));
            crate::convert::download(src, l, &p, &crate::progress::Quiet, i)?;
            model
                .apply(crate::convert::decompressed(&p, c)?)
                .at(|| format!("source layer {i} ({})", l.digest))?;
            let _ = std::fs::remove_file(&p);
        }
        let expected = model.finish();
        let dir = work.join(format!("verify-dst-{}", out.len()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let (mut disk, kind) = if dm.layers.iter().any(|l| turbo_target(l).is_some()) {
            open_turbo_image(dst, dm, &dir)?
        } else {
            let mut blobs = Vec::new();
            for (i, l) in dm.layers.iter().enumerate() {
                let p = dir.join(format!("layer-{i}"));
                crate::convert::download(dst, l, &p, &crate::progress::Quiet, i)?;
                blobs.push(p);
            }
            (
                LayerDisk::open(&blobs)?,
                "overlaybd layers (every block checked against its integrity root when the \
                 layer has one)"
                    .to_string(),
            )
        };
        let got = if erofs(dm) {
            let size = disk.size();
            crate::erofs::tree_of_erofs(&mut disk, size)?
        } else {
            tree_of_fs(&mut disk)?
        };
        let _ = std::fs::remove_dir_all(&dir);
        out.push(Verified {
            source_manifest: sdigest.clone(),
            converted_manifest: ddigest.clone(),
            kind,
            entries: expected.len(),
            differences: diff(&expected, &got),
        });
    }
    Ok(out)
}
