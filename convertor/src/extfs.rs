//! An ext4 filesystem opened with e2fsprogs' libext2fs over a [`DiskIo`], through the small C
//! layer in `csrc/extfs.c`. Nothing here needs root or a kernel mount.
//!
//! libext2fs is not thread-safe; an [`Fs`] is used from one thread at a time (`&mut self` for
//! anything that writes).

use std::ffi::{c_char, c_int, c_long, c_void, CStr, CString};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::writeback::WriteBack;

/// Inode number.
pub type Ino = u32;
/// The root directory's inode.
pub const ROOT_INO: Ino = 2;

type Errcode = c_long;
type RawFs = *mut c_void;
type RawFile = *mut c_void;
type RawXattrs = *mut c_void;

/// Where the filesystem's bytes live.
pub trait DiskIo: Send {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// TurboOCI: `sectors` sectors of 4 KiB block `block` hold file data found at sector
    /// `tar_sector` of the original layer's tar; the block itself is not written. A later
    /// write to the block makes it metadata again.
    fn declare_remote(&mut self, block: u64, sectors: u32, tar_sector: u64) -> io::Result<()> {
        let _ = (block, sectors, tar_sector);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this disk keeps no remote data",
        ))
    }
}

/// One allocated extent of a file: `len` blocks from logical block `lblk` at `pblk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub lblk: u64,
    pub pblk: u64,
    pub len: u32,
}

#[repr(C)]
struct IoOps {
    ctx: *mut c_void,
    read: extern "C" fn(*mut c_void, u64, *mut c_void, usize) -> c_int,
    write: extern "C" fn(*mut c_void, u64, *const c_void, usize) -> c_int,
    flush: extern "C" fn(*mut c_void) -> c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub links: u32,
    pub size: u64,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub atime_ns: u32,
    pub mtime_ns: u32,
    pub ctime_ns: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub flags: u32,
    pub blocks512: u64,
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_IFSOCK: u32 = 0o140000;

impl Stat {
    pub fn kind(&self) -> u32 {
        self.mode & S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == S_IFDIR
    }
}

/// What a tar entry sets on an inode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits with setuid/setgid/sticky (the file type is set at creation).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: i64,
    pub mtime: i64,
    pub atime_ns: u32,
    pub mtime_ns: u32,
}

/// Special files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Fifo = 0,
    Char = 1,
    Block = 2,
    Socket = 3,
}

#[link(name = "obdextfs", kind = "static")]
extern "C" {
    fn obd_error_message(code: Errcode) -> *const c_char;
    fn obd_fs_open(ops: *mut IoOps, rw: c_int, now: i64, out: *mut RawFs) -> Errcode;
    fn obd_fs_close(fs: RawFs) -> Errcode;
    fn obd_fs_abort(fs: RawFs);
    fn obd_fs_counts(fs: RawFs, free_blocks: *mut u64, free_inodes: *mut u64, bs: *mut u32);
    fn obd_stat(fs: RawFs, ino: Ino, st: *mut Stat) -> Errcode;
    fn obd_set_meta(fs: RawFs, ino: Ino, m: *const Meta) -> Errcode;
    fn obd_lookup(fs: RawFs, dir: Ino, name: *const c_char, len: usize, ino: *mut Ino) -> Errcode;
    fn obd_mkdir(fs: RawFs, parent: Ino, name: *const c_char, out: *mut Ino) -> Errcode;
    fn obd_create_file(
        fs: RawFs,
        parent: Ino,
        name: *const c_char,
        size: u64,
        out: *mut Ino,
    ) -> Errcode;
    fn obd_file_open(fs: RawFs, ino: Ino, out: *mut RawFile) -> Errcode;
    fn obd_file_open_ro(fs: RawFs, ino: Ino, out: *mut RawFile) -> Errcode;
    fn obd_file_write_at(f: RawFile, off: u64, buf: *const c_void, len: usize) -> Errcode;
    fn obd_file_read_at(
        f: RawFile,
        off: u64,
        buf: *mut c_void,
        len: usize,
        got: *mut usize,
    ) -> Errcode;
    fn obd_file_close(f: RawFile) -> Errcode;
    fn obd_file_allocate(
        fs: RawFs,
        ino: Ino,
        size: u64,
        f: extern "C" fn(*mut c_void, u64, u64, u32) -> c_int,
        ctx: *mut c_void,
    ) -> Errcode;
    fn obd_symlink(
        fs: RawFs,
        parent: Ino,
        name: *const c_char,
        target: *const c_char,
        out: *mut Ino,
    ) -> Errcode;
    fn obd_readlink(fs: RawFs, ino: Ino, buf: *mut c_char, cap: usize, len: *mut usize) -> Errcode;
    fn obd_mknod(
        fs: RawFs,
        parent: Ino,
        name: *const c_char,
        kind: c_int,
        major: u32,
        minor: u32,
        out: *mut Ino,
    ) -> Errcode;
    fn obd_hardlink(fs: RawFs, parent: Ino, name: *const c_char, ino: Ino) -> Errcode;
    fn obd_list_dir(
        fs: RawFs,
        dir: Ino,
        f: extern "C" fn(*mut c_void, *const c_char, usize, Ino) -> c_int,
        ctx: *mut c_void,
    ) -> Errcode;
    fn obd_remove(fs: RawFs, parent: Ino, name: *const c_char, ino: Ino) -> Errcode;
    fn obd_xattrs_open(fs: RawFs, ino: Ino, out: *mut RawXattrs) -> Errcode;
    fn obd_xattr_set(h: RawXattrs, key: *const c_char, value: *const c_void, len: usize)
        -> Errcode;
    fn obd_xattr_list(
        h: RawXattrs,
        f: extern "C" fn(*mut c_void, *const c_char, *const c_void, usize) -> c_int,
        ctx: *mut c_void,
    ) -> Errcode;
    fn obd_xattrs_close(h: RawXattrs) -> Errcode;
}

/// A libext2fs error: what was being done and libext2fs's (or the OS's) message.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct FsError {
    pub what: String,
    pub code: i64,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, FsError>;

impl FsError {
    /// The errno's kind when the code is one (a failed disk read or write), else `Other`
    /// (libext2fs's own codes, such as "Could not allocate block").
    pub fn kind(&self) -> io::ErrorKind {
        match i32::try_from(self.code) {
            Ok(errno @ 1..4096) => io::Error::from_raw_os_error(errno).kind(),
            _ => io::ErrorKind::Other,
        }
    }
}

fn message(code: Errcode) -> String {
    // SAFETY: error_message returns a pointer to a static (or thread-local) NUL-terminated
    // string for any code.
    let p = unsafe { obd_error_message(code) };
    if p.is_null() {
        return format!("error {code}");
    }
    // SAFETY: p is non-null and NUL-terminated (above).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn check(code: Errcode, what: impl FnOnce() -> String) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    Err(FsError {
        what: what(),
        code,
        message: message(code),
    })
}

fn cname(name: &[u8]) -> Result<CString> {
    CString::new(name).map_err(|_| FsError {
        what: format!("name {:?}", String::from_utf8_lossy(name)),
        code: libc::EINVAL.into(),
        message: "contains a NUL byte".into(),
    })
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn io_code(e: &io::Error) -> c_int {
    e.raw_os_error().unwrap_or(libc::EIO)
}

struct IoCtx<'a> {
    ops: IoOps,
    disk: WriteBack<'a>,
    /// The first I/O error, with its offset, for the message.
    failure: Option<String>,
}

/// Runs one disk operation for libext2fs: its errno on failure (the first failure is kept,
/// with `what`, for the message), EIO if it panicked. Nothing unwinds into C.
fn disk_op(
    c: &mut IoCtx<'_>,
    what: impl FnOnce() -> String,
    op: impl FnOnce(&mut dyn DiskIo) -> io::Result<()>,
) -> c_int {
    match catch_unwind(AssertUnwindSafe(|| op(&mut c.disk))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            c.failure.get_or_insert_with(|| format!("{}: {e}", what()));
            io_code(&e)
        }
        Err(_) => libc::EIO,
    }
}

extern "C" fn io_read(ctx: *mut c_void, off: u64, buf: *mut c_void, len: usize) -> c_int {
    // SAFETY: ctx is the IoCtx this manager was opened with (it outlives the Fs); buf/len
    // is a buffer libext2fs owns for this call.
    let (c, buf) = unsafe {
        (
            &mut *(ctx as *mut IoCtx<'_>),
            std::slice::from_raw_parts_mut(buf as *mut u8, len),
        )
    };
    disk_op(
        c,
        || format!("read of {len} bytes at {off}"),
        |d| d.read_at(off, buf),
    )
}

extern "C" fn io_write(ctx: *mut c_void, off: u64, buf: *const c_void, len: usize) -> c_int {
    // SAFETY: as in io_read.
    let (c, buf) = unsafe {
        (
            &mut *(ctx as *mut IoCtx<'_>),
            std::slice::from_raw_parts(buf as *const u8, len),
        )
    };
    disk_op(
        c,
        || format!("write of {len} bytes at {off}"),
        |d| d.write_at(off, buf),
    )
}

extern "C" fn io_flush(ctx: *mut c_void) -> c_int {
    // SAFETY: as in io_read.
    let c = unsafe { &mut *(ctx as *mut IoCtx<'_>) };
    disk_op(c, || "flush".into(), |d| d.flush())
}

/// An open filesystem on a borrowed disk.
pub struct Fs<'a> {
    raw: RawFs,
    io: Box<IoCtx<'a>>,
}

impl std::fmt::Debug for Fs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs").finish_non_exhaustive()
    }
}

// SAFETY: the handle is used by one thread at a time (Fs is not Sync); libext2fs keeps no
// thread-affine state.
unsafe impl Send for Fs<'_> {}

impl<'a> Fs<'a> {
    /// Opens the ext4 filesystem on `disk`. `now` is the time libext2fs stamps on what it
    /// touches itself (the superblock's write time), so that output depends only on input.
    pub fn open(disk: &'a mut dyn DiskIo, writable: bool, now: i64) -> Result<Fs<'a>> {
        let mut io = Box::new(IoCtx {
            ops: IoOps {
                ctx: std::ptr::null_mut(),
                read: io_read,
                write: io_write,
                flush: io_flush,
            },
            disk: WriteBack::new(disk),
            failure: None,
        });
        io.ops.ctx = &mut *io as *mut IoCtx<'a> as *mut c_void;
        let mut raw: RawFs = std::ptr::null_mut();
        // SAFETY: io.ops lives in a Box that the Fs keeps for as long as the handle exists.
        let r = unsafe { obd_fs_open(&mut io.ops, writable as c_int, now, &mut raw) };
        let fail = io.failure.take();
        check(r, || match fail {
            Some(f) => format!("open ext4 ({f})"),
            None => "open ext4".into(),
        })?;
        Ok(Fs { raw, io })
    }

    fn io_context(&mut self, what: String) -> String {
        match self.io.failure.take() {
            Some(f) => format!("{what} ({f})"),
            None => what,
        }
    }

    /// Writes everything back.
    pub fn close(mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        // SAFETY: raw is the open handle; it is freed by this call and not used again.
        let r = unsafe { obd_fs_close(raw) };
        let what = self.io_context("write the filesystem back".into());
        check(r, || what)?;
        // libext2fs flushed on close; this writes back anything held after that.
        self.io.disk.write_back().map_err(|e| FsError {
            what: "write the filesystem back".into(),
            code: io_code(&e).into(),
            message: e.to_string(),
        })
    }

    /// (free blocks, free inodes, block size).
    pub fn counts(&self) -> (u64, u64, u32) {
        let (mut b, mut i, mut bs) = (0, 0, 0);
        // SAFETY: raw is open; the out-pointers are valid locals.
        unsafe { obd_fs_counts(self.raw, &mut b, &mut i, &mut bs) };
        (b, i, bs)
    }

    pub fn stat(&self, ino: Ino) -> Result<Stat> {
        let mut st = Stat::default();
        // SAFETY: raw is open; st is a valid out-pointer of the C layout.
        let r = unsafe { obd_stat(self.raw, ino, &mut st) };
        check(r, || format!("read inode {ino}"))?;
        Ok(st)
    }

    pub fn set_meta(&mut self, ino: Ino, m: &Meta) -> Result<()> {
        // SAFETY: raw is open; m points to a Meta of the C layout.
        let r = unsafe { obd_set_meta(self.raw, ino, m) };
        let what = self.io_context(format!("set owner, mode and times of inode {ino}"));
        check(r, || what)
    }

    /// The entry `name` of directory `dir`, if there is one.
    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<Ino>> {
        let mut ino = 0;
        // SAFETY: raw is open; name/len is a valid byte range (ext2fs_lookup takes a length).
        let r = unsafe {
            obd_lookup(
                self.raw,
                dir,
                name.as_ptr() as *const c_char,
                name.len(),
                &mut ino,
            )
        };
        check(r, || {
            format!("look up {:?} in directory inode {dir}", show(name))
        })?;
        Ok((ino != 0).then_some(ino))
    }

    pub fn mkdir(&mut self, parent: Ino, name: &[u8]) -> Result<Ino> {
        let c = cname(name)?;
        let mut ino = 0;
        // SAFETY: raw is open; c is NUL-terminated.
        let r = unsafe { obd_mkdir(self.raw, parent, c.as_ptr(), &mut ino) };
        let what = self.io_context(format!("make directory {:?}", show(name)));
        check(r, || what)?;
        Ok(ino)
    }

    /// A new empty regular file of `size` bytes (a hole until written).
    pub fn create_file(&mut self, parent: Ino, name: &[u8], size: u64) -> Result<Ino> {
        let c = cname(name)?;
        let mut ino = 0;
        // SAFETY: raw is open; c is NUL-terminated.
        let r = unsafe { obd_create_file(self.raw, parent, c.as_ptr(), size, &mut ino) };
        let what = self.io_context(format!("create file {:?} ({size} bytes)", show(name)));
        check(r, || what)?;
        Ok(ino)
    }

    /// Allocates the blocks of a `size`-byte regular file without writing them (TurboOCI: the
    /// data stays in the original layer) and returns its extents in logical order.
    pub fn allocate(&mut self, ino: Ino, size: u64) -> Result<Vec<Extent>> {
        extern "C" fn one(ctx: *mut c_void, lblk: u64, pblk: u64, len: u32) -> c_int {
            // SAFETY: ctx is the Vec passed below.
            let v = unsafe { &mut *(ctx as *mut Vec<Extent>) };
            v.push(Extent { lblk, pblk, len });
            0
        }
        let mut v: Vec<Extent> = Vec::new();
        // SAFETY: raw is open; the callback only touches v, which outlives the call.
        let r =
            unsafe { obd_file_allocate(self.raw, ino, size, one, &mut v as *mut _ as *mut c_void) };
        let what = self.io_context(format!("allocate {size} bytes for inode {ino}"));
        check(r, || what)?;
        Ok(v)
    }

    /// The disk under the filesystem (for [`DiskIo::declare_remote`]).
    pub fn disk(&mut self) -> &mut dyn DiskIo {
        &mut self.io.disk
    }

    /// Opens a regular file for writing.
    pub fn writer(&mut self, ino: Ino) -> Result<FileHandle<'_, 'a>> {
        let mut f: RawFile = std::ptr::null_mut();
        // SAFETY: raw is open.
        let r = unsafe { obd_file_open(self.raw, ino, &mut f) };
        check(r, || format!("open inode {ino} for writing"))?;
        Ok(FileHandle {
            fs: self,
            raw: f,
            ino,
        })
    }

    /// Reads up to `buf.len()` bytes of a regular file at `off`; returns the count (0 at EOF).
    pub fn read_file(&mut self, ino: Ino, off: u64, buf: &mut [u8]) -> Result<usize> {
        let mut f: RawFile = std::ptr::null_mut();
        // SAFETY: raw is open.
        let r = unsafe { obd_file_open_ro(self.raw, ino, &mut f) };
        check(r, || format!("open inode {ino}"))?;
        let mut done = 0;
        let mut res = Ok(());
        while done < buf.len() {
            let mut got = 0;
            // SAFETY: f is open; the buffer range is valid and writable.
            let r = unsafe {
                obd_file_read_at(
                    f,
                    off + done as u64,
                    buf[done..].as_mut_ptr() as *mut c_void,
                    buf.len() - done,
                    &mut got,
                )
            };
            if r != 0 {
                res = check(r, || format!("read inode {ino} at {}", off + done as u64));
                break;
            }
            if got == 0 {
                break;
            }
            done += got;
        }
        // SAFETY: f is open and not used after this.
        unsafe { obd_file_close(f) };
        res.map(|()| done)
    }

    pub fn symlink(&mut self, parent: Ino, name: &[u8], target: &[u8]) -> Result<Ino> {
        let c = cname(name)?;
        let t = cname(target)?;
        let mut ino = 0;
        // SAFETY: raw is open; both strings are NUL-terminated.
        let r = unsafe { obd_symlink(self.raw, parent, c.as_ptr(), t.as_ptr(), &mut ino) };
        let what = self.io_context(format!(
            "make symlink {:?} -> {:?}",
            show(name),
            show(target)
        ));
        check(r, || what)?;
        Ok(ino)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 4097];
        let mut len = 0;
        // SAFETY: raw is open; buf has cap bytes.
        let r = unsafe {
            obd_readlink(
                self.raw,
                ino,
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
                &mut len,
            )
        };
        check(r, || format!("read symlink inode {ino}"))?;
        buf.truncate(len);
        Ok(buf)
    }

    pub fn mknod(
        &mut self,
        parent: Ino,
        name: &[u8],
        kind: NodeKind,
        major: u32,
        minor: u32,
    ) -> Result<Ino> {
        let c = cname(name)?;
        let mut ino = 0;
        // SAFETY: raw is open; c is NUL-terminated.
        let r = unsafe {
            obd_mknod(
                self.raw,
                parent,
                c.as_ptr(),
                kind as c_int,
                major,
                minor,
                &mut ino,
            )
        };
        let what = self.io_context(format!("make {kind:?} node {:?}", show(name)));
        check(r, || what)?;
        Ok(ino)
    }

    /// Links `name` in `parent` to the existing non-directory `ino`.
    pub fn hardlink(&mut self, parent: Ino, name: &[u8], ino: Ino) -> Result<()> {
        let c = cname(name)?;
        // SAFETY: raw is open; c is NUL-terminated.
        let r = unsafe { obd_hardlink(self.raw, parent, c.as_ptr(), ino) };
        let what = self.io_context(format!("hard link {:?} to inode {ino}", show(name)));
        check(r, || what)
    }

    /// The entries of a directory, but "." and "..".
    pub fn list(&self, dir: Ino) -> Result<Vec<(Vec<u8>, Ino)>> {
        extern "C" fn one(ctx: *mut c_void, name: *const c_char, len: usize, ino: Ino) -> c_int {
            // SAFETY: ctx is the Vec passed below; name/len is the entry's name.
            let (v, n) = unsafe {
                (
                    &mut *(ctx as *mut Vec<(Vec<u8>, Ino)>),
                    std::slice::from_raw_parts(name as *const u8, len),
                )
            };
            v.push((n.to_vec(), ino));
            0
        }
        let mut v: Vec<(Vec<u8>, Ino)> = Vec::new();
        // SAFETY: raw is open; the callback only touches v, which outlives the call.
        let r = unsafe { obd_list_dir(self.raw, dir, one, &mut v as *mut _ as *mut c_void) };
        check(r, || format!("list directory inode {dir}"))?;
        Ok(v)
    }

    /// Removes one entry (a directory must be empty) and drops its inode's reference.
    pub fn remove(&mut self, parent: Ino, name: &[u8], ino: Ino) -> Result<()> {
        let c = cname(name)?;
        // SAFETY: raw is open; c is NUL-terminated.
        let r = unsafe { obd_remove(self.raw, parent, c.as_ptr(), ino) };
        let what = self.io_context(format!("remove {:?}", show(name)));
        check(r, || what)
    }

    /// Removes `name` (inode `ino`) from `parent` with everything below it.
    pub fn remove_tree(&mut self, parent: Ino, name: &[u8], ino: Ino) -> Result<()> {
        // Post-order without recursion: a hostile image can nest directories deeply.
        struct Frame {
            parent: Ino,
            name: Vec<u8>,
            ino: Ino,
            children: Option<Vec<(Vec<u8>, Ino)>>,
        }
        let mut stack = vec![Frame {
            parent,
            name: name.to_vec(),
            ino,
            children: None,
        }];
        while let Some(top) = stack.last_mut() {
            if top.children.is_none() {
                let st = self.stat(top.ino)?;
                top.children = Some(if st.is_dir() {
                    self.list(top.ino)?
                } else {
                    Vec::new()
                });
            }
            let top = stack.last_mut().expect("non-empty");
            match top.children.as_mut().expect("listed").pop() {
                Some((n, i)) => {
                    let p = top.ino;
                    stack.push(Frame {
                        parent: p,
                        name: n,
                        ino: i,
                        children: None,
                    });
                }
                None => {
                    let f = stack.pop().expect("non-empty");
                    self.remove(f.parent, &f.name, f.ino)?;
                }
            }
        }
        Ok(())
    }

    /// Sets extended attributes (full names, e.g. `security.capability`).
    pub fn set_xattrs(&mut self, ino: Ino, attrs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let mut h: RawXattrs = std::ptr::null_mut();
        // SAFETY: raw is open.
        let r = unsafe { obd_xattrs_open(self.raw, ino, &mut h) };
        check(r, || format!("read extended attributes of inode {ino}"))?;
        let mut res = Ok(());
        for (k, v) in attrs {
            let key = match cname(k) {
                Ok(k) => k,
                Err(e) => {
                    res = Err(e);
                    break;
                }
            };
            // SAFETY: h is open; key is NUL-terminated; v is a valid byte range.
            let r = unsafe { obd_xattr_set(h, key.as_ptr(), v.as_ptr() as *const c_void, v.len()) };
            if r != 0 {
                res = check(r, || {
                    format!("set extended attribute {:?} ({} bytes)", show(k), v.len())
                });
                break;
            }
        }
        // SAFETY: h is open and not used after this.
        let r = unsafe { obd_xattrs_close(h) };
        res?;
        let what = self.io_context(format!("write extended attributes of inode {ino}"));
        check(r, || what)
    }

    /// All extended attributes of an inode, sorted by name.
    pub fn xattrs(&self, ino: Ino) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        extern "C" fn one(
            ctx: *mut c_void,
            key: *const c_char,
            val: *const c_void,
            len: usize,
        ) -> c_int {
            // SAFETY: ctx is the Vec passed below; key is NUL-terminated; val/len is the value.
            let (v, k, val) = unsafe {
                (
                    &mut *(ctx as *mut Vec<(Vec<u8>, Vec<u8>)>),
                    CStr::from_ptr(key).to_bytes(),
                    if len == 0 {
                        &[][..]
                    } else {
                        std::slice::from_raw_parts(val as *const u8, len)
                    },
                )
            };
            v.push((k.to_vec(), val.to_vec()));
            0
        }
        let mut h: RawXattrs = std::ptr::null_mut();
        // SAFETY: raw is open.
        let r = unsafe { obd_xattrs_open(self.raw, ino, &mut h) };
        check(r, || format!("read extended attributes of inode {ino}"))?;
        let mut v: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // SAFETY: h is open; the callback only touches v.
        let r = unsafe { obd_xattr_list(h, one, &mut v as *mut _ as *mut c_void) };
        // SAFETY: h is open and not used after this.
        unsafe { obd_xattrs_close(h) };
        check(r, || format!("list extended attributes of inode {ino}"))?;
        v.sort();
        Ok(v)
    }
}

impl Drop for Fs<'_> {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: raw is open and not used after this.
            unsafe { obd_fs_abort(self.raw) };
        }
    }
}

/// A regular file open for writing.
pub struct FileHandle<'f, 'a> {
    fs: &'f mut Fs<'a>,
    raw: RawFile,
    ino: Ino,
}

impl std::fmt::Debug for FileHandle<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileHandle")
            .field("ino", &self.ino)
            .finish()
    }
}

impl FileHandle<'_, '_> {
    pub fn write_at(&mut self, off: u64, buf: &[u8]) -> Result<()> {
        // SAFETY: raw is open; buf is a valid byte range.
        let r =
            unsafe { obd_file_write_at(self.raw, off, buf.as_ptr() as *const c_void, buf.len()) };
        let what = self.fs.io_context(format!(
            "write {} bytes at {off} of inode {}",
            buf.len(),
            self.ino
        ));
        check(r, || what)
    }

    pub fn close(mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        // SAFETY: raw is open; it is freed here and not used again.
        let r = unsafe { obd_file_close(raw) };
        let what = self.fs.io_context(format!("close inode {}", self.ino));
        check(r, || what)
    }
}

impl Drop for FileHandle<'_, '_> {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: raw is open and not used after this.
            unsafe { obd_file_close(self.raw) };
        }
    }
}
