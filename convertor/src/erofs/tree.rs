//! Reading an EROFS image back for `verify`: the tree of the merged layers (what the kernel
//! would show), from the image alone. Uncompressed images of 4 KiB blocks, as `mkfs.erofs`
//! makes them here (flat plain and flat inline data, compact and extended inodes, inline and
//! shared xattrs); anything else is an error, as is any offset, size or name outside the image
//! (a converted image is untrusted input to `verify`).

use std::collections::{BTreeMap, HashSet};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::extfs::{self, DiskIo};
use crate::verify::{child_path, link_group, normalize_groups, Node, Tree};

const BLOCK: u64 = 4096;
const MAGIC: u32 = 0xE0F5_E1E2;
/// Incompatible features this reader knows: none (compression, chunked files, device tables,
/// tail packing, fragments, dedupe, long xattr prefixes, 48-bit layouts, metabox: none of
/// them is what mkfs.erofs makes here, and each is refused).
const KNOWN_INCOMPAT: u32 = 0;

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("EROFS image: {what}"))
}

struct Image<'a> {
    disk: &'a mut dyn DiskIo,
    size: u64,
    meta: u64,
    xattr: u64,
    epoch: i64,
    fixed_nsec: u32,
    /// Bytes of file data and directory blocks the walk may still read: an honest image reads
    /// each once (hard links share an inode, hashed once), a hostile one can name the same
    /// blocks from many inodes.
    budget: u64,
}

/// An inode as the tree needs it.
struct Inode {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u32,
    mtime: (i64, u32),
    layout: u16,
    /// Raw block address (data), or the device number (devices).
    raw: u32,
    /// Where the inline tail (after the inode and its xattrs) starts.
    tail: u64,
    xattrs: Vec<Xattr>,
}

impl Image<'_> {
    fn read(&mut self, at: u64, buf: &mut [u8]) -> Result<()> {
        if at
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(bad(format!(
                "{} bytes at {at}: past the image's end",
                buf.len()
            )));
        }
        self.disk
            .read_at(at, buf)
            .map_err(|e| bad(format!("read at {at}: {e}")))
    }

    fn bytes(&mut self, at: u64, len: usize) -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.read(at, &mut b)?;
        Ok(b)
    }

    fn inode(&mut self, nid: u64) -> Result<Inode> {
        let at = nid
            .checked_mul(32)
            .and_then(|o| o.checked_add(self.meta))
            .ok_or_else(|| bad(format!("inode {nid}: out of range")))?;
        let b = self.bytes(at, 32)?;
        let format = le16(&b, 0);
        let extended = format & 1 == 1;
        let layout = (format >> 1) & 0x7;
        let icount = le16(&b, 2) as u64;
        let mode = le16(&b, 4) as u32;
        let (size, raw, uid, gid, nlink, mtime, isize) = if extended {
            let e = self.bytes(at, 64)?;
            (
                le64(&e, 8),
                le32(&e, 16),
                le32(&e, 24),
                le32(&e, 28),
                le32(&e, 44),
                (le64(&e, 32) as i64, le32(&e, 40)),
                64,
            )
        } else {
            (
                le32(&b, 8) as u64,
                le32(&b, 16),
                le16(&b, 24) as u32,
                le16(&b, 26) as u32,
                le16(&b, 6) as u32,
                (
                    self.epoch.wrapping_add(le32(&b, 12) as i64),
                    self.fixed_nsec,
                ),
                32,
            )
        };
        let xsize = if icount == 0 {
            0
        } else {
            12 + (icount - 1) * 4
        };
        let xattrs = if xsize > 0 {
            self.xattrs(at + isize, xsize)?
        } else {
            Vec::new()
        };
        Ok(Inode {
            mode,
            uid,
            gid,
            size,
            nlink,
            mtime,
            layout,
            raw,
            tail: at + isize + xsize,
            xattrs,
        })
    }

    /// The inode's xattrs: the shared ones its header lists, then its inline entries.
    fn xattrs(&mut self, at: u64, len: u64) -> Result<Vec<Xattr>> {
        if len > 65536 {
            return Err(bad("inline xattrs larger than 64 KiB"));
        }
        let body = self.bytes(at, len as usize)?;
        let shared = body[4] as usize;
        let mut out = Vec::new();
        let mut pos = 12 + shared * 4;
        if pos > body.len() {
            return Err(bad("more shared xattrs than the xattr body holds"));
        }
        for k in 0..shared {
            let id = le32(&body, 12 + k * 4) as u64;
            let at = self.xattr + id * 4;
            let head = self.bytes(at, 4)?;
            let len = 4 + head[0] as usize + le16(&head, 2) as usize;
            let entry = self.bytes(at, len)?;
            out.push(entry_of(&entry)?.0);
        }
        // Entries until the body's end, or the zeroes of reserved room (an entry with no name
        // and no prefix is none: a first layer's root keeps 16 KiB for later layers).
        while pos + 4 <= body.len() && body[pos..pos + 2] != [0, 0] {
            let (x, used) = entry_of(&body[pos..])?;
            out.push(x);
            pos += used.next_multiple_of(4);
        }
        out.sort();
        Ok(out)
    }

    /// The first `len` bytes of the inode's data (flat plain, or flat inline: whole blocks,
    /// then the tail after the inode).
    fn data(&mut self, ino: &Inode, from: u64, len: usize) -> Result<Vec<u8>> {
        let end = from.checked_add(len as u64).filter(|&e| e <= ino.size);
        let end = end.ok_or_else(|| bad("a read past a file's end"))?;
        self.budget = self
            .budget
            .checked_sub(len as u64)
            .ok_or_else(|| bad("more file and directory data than the image holds"))?;
        let mut out = vec![0u8; len];
        let blocks_at = ino.raw as u64 * BLOCK;
        match ino.layout {
            0 => self.read(blocks_at + from, &mut out)?,
            2 => {
                let whole = ino.size / BLOCK * BLOCK;
                let mut at = from;
                while at < end {
                    let k = (at - from) as usize;
                    if at < whole {
                        let n = (whole.min(end) - at) as usize;
                        self.read(blocks_at + at, &mut out[k..k + n])?;
                        at += n as u64;
                    } else {
                        if ino.tail % BLOCK + (ino.size - whole) > BLOCK {
                            return Err(bad("an inline tail across a block"));
                        }
                        let n = (end - at) as usize;
                        self.read(ino.tail + (at - whole), &mut out[k..k + n])?;
                        at += n as u64;
                    }
                }
            }
            l => return Err(bad(format!("data layout {l} (compressed or chunked)"))),
        }
        Ok(out)
    }

    /// A directory's entries: (name, nid), without `.` and `..`.
    fn list(&mut self, ino: &Inode) -> Result<Vec<(Vec<u8>, u64)>> {
        let mut out = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        let mut at = 0;
        while at < ino.size {
            let len = BLOCK.min(ino.size - at) as usize;
            let b = self.data(ino, at, len)?;
            if b.len() < 12 {
                return Err(bad("a directory block shorter than one entry"));
            }
            let first = le16(&b, 8) as usize;
            if first < 12 || !first.is_multiple_of(12) || first > b.len() {
                return Err(bad("a directory block's entries overrun it"));
            }
            let n = first / 12;
            for k in 0..n {
                let nid = le64(&b, k * 12);
                let off = le16(&b, k * 12 + 8) as usize;
                let end = if k + 1 < n {
                    le16(&b, (k + 1) * 12 + 8) as usize
                } else {
                    b.len()
                };
                if off > end || end > b.len() {
                    return Err(bad("a directory entry's name overruns its block"));
                }
                let mut name = &b[off..end];
                if let Some(z) = name.iter().position(|&c| c == 0) {
                    name = &name[..z];
                }
                if name.is_empty() || name.contains(&b'/') {
                    return Err(bad("an empty directory entry name, or one with a /"));
                }
                // Names are sorted (the kernel looks them up by binary search): a directory
                // that is not could show verify other files than the kernel would.
                if last.as_deref().is_some_and(|l: &[u8]| l >= name) {
                    return Err(bad("a directory whose names are not sorted or repeat"));
                }
                last = Some(name.to_vec());
                if name != b"." && name != b".." {
                    out.push((name.to_vec(), nid));
                }
            }
            at += BLOCK;
        }
        Ok(out)
    }
}

/// An extended attribute: name, value.
type Xattr = (Vec<u8>, Vec<u8>);

/// One xattr entry, and the bytes it used.
fn entry_of(b: &[u8]) -> Result<(Xattr, usize)> {
    if b.len() < 4 {
        return Err(bad("a truncated xattr entry"));
    }
    let (name_len, index, value_len) = (b[0] as usize, b[1], le16(b, 2) as usize);
    let used = 4 + name_len + value_len;
    if used > b.len() {
        return Err(bad("an xattr entry overruns its body"));
    }
    let prefix: &[u8] = match index {
        0 => b"",
        1 => b"user.",
        2 => b"system.posix_acl_access",
        3 => b"system.posix_acl_default",
        4 => b"trusted.",
        6 => b"security.",
        i => return Err(bad(format!("xattr name index {i}"))),
    };
    let mut name = prefix.to_vec();
    name.extend_from_slice(&b[4..4 + name_len]);
    Ok(((name, b[4 + name_len..used].to_vec()), used))
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The image on `disk` (`size` bytes) after its superblock's checks, and its root's nid.
fn open(disk: &mut dyn DiskIo, size: u64) -> Result<(Image<'_>, u64)> {
    let mut sb = [0u8; 128];
    disk.read_at(1024, &mut sb)
        .map_err(|e| bad(format!("read the superblock: {e}")))?;
    if le32(&sb, 0) != MAGIC {
        return Err(bad("no EROFS superblock"));
    }
    if sb[12] != 12 {
        return Err(bad(format!(
            "{}-byte blocks (4096 expected)",
            1u64 << sb[12].min(63)
        )));
    }
    let incompat = le32(&sb, 80);
    if incompat & !KNOWN_INCOMPAT != 0 {
        return Err(bad(format!("incompatible features {incompat:#x}")));
    }
    let size = size.min(le32(&sb, 36) as u64 * BLOCK);
    let img = Image {
        size,
        meta: le32(&sb, 40) as u64 * BLOCK,
        xattr: le32(&sb, 44) as u64 * BLOCK,
        epoch: le64(&sb, 24) as i64,
        fixed_nsec: le32(&sb, 32),
        budget: size,
        disk,
    };
    Ok((img, le16(&sb, 14) as u64))
}

/// The size of the EROFS image at the start of `disk` (its superblock's block count), or
/// `None` when there is none.
pub(crate) fn image_len(disk: &mut dyn DiskIo) -> Result<Option<u64>> {
    let mut magic = [0u8; 4];
    disk.read_at(1024, &mut magic)
        .map_err(|e| bad(format!("read the superblock: {e}")))?;
    if u32::from_le_bytes(magic) != MAGIC {
        return Ok(None);
    }
    Ok(Some(open(disk, u64::MAX)?.0.size))
}

/// A directory's (or any inode's) mode, owner and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
}

/// Looks paths up in an EROFS image file, as its superblock was when opened (mkfs.erofs
/// extends the file meanwhile: it writes the new superblock last), lookups cached.
pub struct Lookup {
    disk: FileDisk,
    /// The superblock's fields, read once.
    sb: (u64, u64, u64, i64, u32),
    root: u64,
    /// Path → nid, for what was looked up (`None`: not there).
    found: std::collections::HashMap<Vec<u8>, Option<u64>>,
}

/// An image file as a read-only disk.
struct FileDisk(std::fs::File);

impl DiskIo for FileDisk {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("read-only"))
    }
}

impl Lookup {
    pub fn open(path: &std::path::Path) -> Result<Lookup> {
        let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let size = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
        let mut disk = FileDisk(f);
        let (img, root) = open(&mut disk, size)?;
        let sb = (img.size, img.meta, img.xattr, img.epoch, img.fixed_nsec);
        Ok(Lookup {
            disk,
            sb,
            root,
            found: Default::default(),
        })
    }

    fn image(&mut self) -> Image<'_> {
        let (size, meta, xattr, epoch, fixed_nsec) = self.sb;
        Image {
            disk: &mut self.disk,
            size,
            meta,
            xattr,
            epoch,
            fixed_nsec,
            budget: size,
        }
    }

    /// The metadata of `path` (relative, `/`-separated; empty: the root), if it is there.
    pub fn meta(&mut self, path: &[u8]) -> Result<Option<Meta>> {
        let Some(nid) = self.nid(path)? else {
            return Ok(None);
        };
        let ino = self.image().inode(nid)?;
        Ok(Some(Meta {
            mode: ino.mode,
            uid: ino.uid,
            gid: ino.gid,
            mtime: ino.mtime,
        }))
    }

    fn nid(&mut self, path: &[u8]) -> Result<Option<u64>> {
        if let Some(&n) = self.found.get(path) {
            return Ok(n);
        }
        let n = match path.iter().rposition(|&c| c == b'/') {
            _ if path.is_empty() => Some(self.root),
            split => {
                let (parent, name) = match split {
                    Some(k) => (&path[..k], &path[k + 1..]),
                    None => (&b""[..], path),
                };
                match self.nid(parent)? {
                    None => None,
                    Some(p) => {
                        let mut img = self.image();
                        let dir = img.inode(p)?;
                        if dir.mode & extfs::S_IFMT != extfs::S_IFDIR {
                            None
                        } else {
                            img.list(&dir)?
                                .into_iter()
                                .find(|(n, _)| n == name)
                                .map(|(_, nid)| nid)
                        }
                    }
                }
            }
        };
        self.found.insert(path.to_vec(), n);
        Ok(n)
    }
}

/// Sets the root directory's mode, owner and (where a compact inode can hold it) time in the
/// image at `path`: an incremental build of mkfs.erofs makes the root 0777 and root's.
pub fn set_root(path: &std::path::Path, m: &Meta) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let size = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    let mut disk = FileDisk(f);
    let (img, root) = open(&mut disk, size)?;
    let (at, epoch) = (img.meta + root * 32, img.epoch);
    let mut ino = [0u8; 64];
    disk.read_at(at, &mut ino)
        .map_err(|e| Error::io("read the root inode of", path, e))?;
    ino[4..6].copy_from_slice(&((m.mode & 0xffff) as u16).to_le_bytes());
    if le16(&ino, 0) & 1 == 1 {
        ino[24..28].copy_from_slice(&m.uid.to_le_bytes());
        ino[28..32].copy_from_slice(&m.gid.to_le_bytes());
        ino[32..40].copy_from_slice(&(m.mtime.0 as u64).to_le_bytes());
        ino[40..44].copy_from_slice(&m.mtime.1.to_le_bytes());
    } else {
        let (Ok(uid), Ok(gid)) = (u16::try_from(m.uid), u16::try_from(m.gid)) else {
            return Err(bad("a root owner a compact inode cannot hold"));
        };
        ino[24..26].copy_from_slice(&uid.to_le_bytes());
        ino[26..28].copy_from_slice(&gid.to_le_bytes());
        // A directory's time is not compared by verify; kept where representable.
        if let Ok(rel) = u32::try_from(m.mtime.0 - epoch) {
            ino[12..16].copy_from_slice(&rel.to_le_bytes());
        }
    }
    std::os::unix::fs::FileExt::write_all_at(&disk.0, &ino, at)
        .map_err(|e| Error::io("write the root inode of", path, e))
}

/// Describes the EROFS filesystem at the start of `disk` (`size` bytes), as `tree_of_fs` does
/// an ext4.
pub fn tree_of_erofs(disk: &mut dyn DiskIo, size: u64) -> Result<Tree> {
    let (mut img, root) = open(disk, size)?;
    let mut out = Tree::new();
    let mut first_path: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut dirs_seen = HashSet::new();
    // A file's content is hashed once, however many names it has (a hostile image could give
    // one large file a name in every directory entry it has room for).
    let mut hashed: BTreeMap<u64, String> = BTreeMap::new();
    let mut todo: Vec<(Vec<u8>, u64)> = vec![(Vec::new(), root)];
    while let Some((path, nid)) = todo.pop() {
        let ino = img.inode(nid)?;
        let kind = ino.mode & extfs::S_IFMT;
        let mut node = Node {
            mode: ino.mode,
            uid: ino.uid,
            gid: ino.gid,
            size: 0,
            sha256: None,
            mtime: ino.mtime,
            target: None,
            rdev: None,
            xattrs: ino.xattrs.clone(),
            link_group: None,
        };
        match kind {
            extfs::S_IFDIR => {
                if !dirs_seen.insert(nid) {
                    return Err(bad(format!("directory inode {nid} reached twice")));
                }
                if path.len() > 4096 {
                    return Err(bad("a path longer than 4096 bytes"));
                }
                for (name, child) in img.list(&ino)? {
                    todo.push((child_path(&path, &name), child));
                }
            }
            extfs::S_IFREG => {
                let sha = match hashed.get(&nid) {
                    Some(sha) => sha.clone(),
                    None => {
                        let mut h = Sha256::new();
                        let mut at = 0;
                        while at < ino.size {
                            let n = (1u64 << 20).min(ino.size - at) as usize;
                            h.update(img.data(&ino, at, n)?);
                            at += n as u64;
                        }
                        let sha = hex::encode(h.finalize());
                        hashed.insert(nid, sha.clone());
                        sha
                    }
                };
                node.size = ino.size;
                node.sha256 = Some(sha);
            }
            extfs::S_IFLNK => {
                if ino.size > 4096 {
                    return Err(bad("a symlink target longer than 4096 bytes"));
                }
                node.target = Some(img.data(&ino, 0, ino.size as usize)?);
            }
            extfs::S_IFCHR | extfs::S_IFBLK => {
                // Linux's new_encode_dev.
                let d = ino.raw;
                node.rdev = Some(((d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00)));
            }
            _ => {}
        }
        if kind != extfs::S_IFDIR && ino.nlink > 1 {
            node.link_group = Some(link_group(&mut first_path, nid, &path));
        }
        out.insert(path, node);
    }
    normalize_groups(&mut out);
    Ok(out)
}
