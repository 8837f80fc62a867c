//! FUSE single-file export: a device as one regular file, mounted *on* a regular file (like
//! `nbdfuse`), which a loop device then turns into a block device.
//!
//! This speaks the kernel's FUSE protocol on `/dev/fuse` directly rather than through `fuser`,
//! for two reasons. A single file needs a dozen opcodes, all stateless; and a daemon that
//! restarts must pick up a live connection it did not initialise (the kernel sends no second
//! `INIT`), which `fuser` refuses (it fails every request that precedes an `INIT`). Several
//! threads read the same `/dev/fuse` descriptor, so the loop device's concurrent direct I/O is
//! served concurrently.
//!
//! On takeover ([`FuseExport::resume`]) the new daemon asks the kernel to resend the requests
//! the old one had read but not answered (`FUSE_NOTIFY_RESEND`, Linux 6.9), so a crash between
//! reading a request and replying loses nothing.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::{BlockDevice, DevError};
use crate::{Error, Result};

mod uring;
pub use uring::kernel_enabled as io_uring_enabled;

// Opcodes (include/uapi/linux/fuse.h).
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const INTERRUPT: u32 = 36;
const DESTROY: u32 = 38;
const BATCH_FORGET: u32 = 42;
const FALLOCATE: u32 = 43;

// INIT flags.
const ASYNC_READ: u32 = 1 << 0;
const BIG_WRITES: u32 = 1 << 5;
const ASYNC_DIO: u32 = 1 << 15;
const MAX_PAGES: u32 = 1 << 22;
// OPEN reply flags.
const FOPEN_DIRECT_IO: u32 = 1 << 0;
const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
// SETATTR valid bits.
const FATTR_SIZE: u32 = 1 << 3;
// fallocate modes.
const FALLOC_KEEP_SIZE: u32 = 0x01;
const FALLOC_PUNCH_HOLE: u32 = 0x02;
const FALLOC_ZERO_RANGE: u32 = 0x10;
/// `fuse_notify_code::FUSE_NOTIFY_RESEND`.
const NOTIFY_RESEND: i32 = 7;

const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const ROOT: u64 = 1;
/// Largest read or write the kernel sends (`max_pages` × 4 KiB).
pub const MAX_IO: usize = 1 << 20;
const PROTO_MINOR: u32 = 31;

/// The parts of a request header the export uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
}

/// Parses the fixed header of one message read from `/dev/fuse`.
pub fn parse_header(msg: &[u8]) -> Option<InHeader> {
    if msg.len() < IN_HEADER {
        return None;
    }
    let h = InHeader {
        len: u32le(msg, 0),
        opcode: u32le(msg, 4),
        unique: u64le(msg, 8),
        nodeid: u64le(msg, 16),
    };
    (h.len as usize == msg.len()).then_some(h)
}

fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// What the handler sends back.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// No reply (FORGET, INTERRUPT).
    None,
    Error(i32),
    /// A reply body (written after the header).
    Data(Vec<u8>),
    /// A read: the body is in the worker's buffer, this long.
    Read(usize),
}

/// The file's attributes (`fuse_attr_out`).
fn attr_out(dev: &dyn BlockDevice, file_mode: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(104);
    b.extend_from_slice(&86_400u64.to_le_bytes()); // attr_valid: the size never changes
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&ROOT.to_le_bytes()); // ino
    b.extend_from_slice(&dev.size().to_le_bytes());
    b.extend_from_slice(&dev.size().div_ceil(512).to_le_bytes()); // blocks
    for _ in 0..3 {
        b.extend_from_slice(&0u64.to_le_bytes()); // atime, mtime, ctime
    }
    for _ in 0..3 {
        b.extend_from_slice(&0u32.to_le_bytes());
    }
    b.extend_from_slice(&file_mode.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // nlink
    b.extend_from_slice(&0u32.to_le_bytes()); // uid
    b.extend_from_slice(&0u32.to_le_bytes()); // gid
    b.extend_from_slice(&0u32.to_le_bytes()); // rdev
    b.extend_from_slice(&4096u32.to_le_bytes()); // blksize
    b.extend_from_slice(&0u32.to_le_bytes()); // flags
    b
}

fn file_mode(dev: &dyn BlockDevice) -> u32 {
    libc::S_IFREG | if dev.read_only() { 0o400 } else { 0o600 }
}

/// Handles one request. `buf` holds the message and, for a read, receives the data after
/// [`OUT_HEADER`] bytes (it is at least `OUT_HEADER + MAX_IO` long).
pub fn handle(dev: &dyn BlockDevice, msg: &[u8], out: &mut [u8]) -> Reply {
    handle_with(dev, msg, out, false)
}

/// [`handle`], answering `INIT` with FUSE over io_uring when `io_uring` is set and the kernel
/// offers it.
fn handle_with(dev: &dyn BlockDevice, msg: &[u8], out: &mut [u8], io_uring: bool) -> Reply {
    let Some(h) = parse_header(msg) else {
        return Reply::Error(libc::EINVAL);
    };
    let body = &msg[IN_HEADER..];
    let need = |n: usize| body.len() >= n;
    let err = |e: DevError| Reply::Error(e.errno());
    match h.opcode {
        INIT => {
            if !need(16) {
                return Reply::Error(libc::EINVAL);
            }
            let (major, kflags) = (u32le(body, 0), u32le(body, 12));
            let mut r = vec![0u8; 64];
            r[0..4].copy_from_slice(&7u32.to_le_bytes());
            if major != 7 {
                // Tell the kernel our major; it retries or gives up.
                return Reply::Data(r[..8].to_vec());
            }
            let max_readahead = u32le(body, 8);
            let mut flags = kflags & (ASYNC_READ | BIG_WRITES | ASYNC_DIO | MAX_PAGES);
            // fuse_init_in's flags2 (after major, minor, max_readahead, flags).
            let kflags2 = if kflags & uring::INIT_EXT != 0 && need(20) {
                u32le(body, 16)
            } else {
                0
            };
            if io_uring && kflags2 & uring::OVER_IO_URING != 0 {
                flags |= uring::INIT_EXT;
                r[32..36].copy_from_slice(&uring::OVER_IO_URING.to_le_bytes()); // flags2
            }
            r[4..8].copy_from_slice(&PROTO_MINOR.min(u32le(body, 4)).to_le_bytes());
            r[8..12].copy_from_slice(&max_readahead.to_le_bytes());
            r[12..16].copy_from_slice(&flags.to_le_bytes());
            r[16..18].copy_from_slice(&64u16.to_le_bytes()); // max_background
            r[18..20].copy_from_slice(&48u16.to_le_bytes()); // congestion_threshold
            r[20..24].copy_from_slice(&(MAX_IO as u32).to_le_bytes()); // max_write
            r[24..28].copy_from_slice(&1u32.to_le_bytes()); // time_gran
            r[28..30].copy_from_slice(&((MAX_IO / 4096) as u16).to_le_bytes()); // max_pages
            Reply::Data(r)
        }
        GETATTR => {
            if h.nodeid != ROOT {
                return Reply::Error(libc::ENOENT);
            }
            Reply::Data(attr_out(dev, file_mode(dev)))
        }
        SETATTR => {
            if !need(88) {
                return Reply::Error(libc::EINVAL);
            }
            let (valid, size) = (u32le(body, 0), u64le(body, 16));
            if valid & FATTR_SIZE != 0 && size != dev.size() {
                return Reply::Error(libc::EPERM);
            }
            Reply::Data(attr_out(dev, file_mode(dev)))
        }
        LOOKUP => Reply::Error(libc::ENOENT),
        OPEN => {
            if !need(8) {
                return Reply::Error(libc::EINVAL);
            }
            let flags = u32le(body, 0) as i32;
            if dev.read_only() && flags & libc::O_ACCMODE != libc::O_RDONLY {
                return Reply::Error(libc::EROFS);
            }
            let mut r = vec![0u8; 16];
            r[8..12]
                .copy_from_slice(&(FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES).to_le_bytes());
            Reply::Data(r)
        }
        READ => {
            if !need(24) {
                return Reply::Error(libc::EINVAL);
            }
            let (offset, size) = (u64le(body, 8), u32le(body, 16) as usize);
            let size = size.min(MAX_IO).min(out.len() - OUT_HEADER);
            // Reads at or past the end return what is there, as a file does.
            let n = dev.size().saturating_sub(offset).min(size as u64) as usize;
            match dev.read(offset, &mut out[OUT_HEADER..OUT_HEADER + n]) {
                Ok(()) => Reply::Read(n),
                Err(DevError::OutOfRange { .. }) => Reply::Read(0),
                Err(e) => err(e),
            }
        }
        WRITE => {
            if !need(40) {
                return Reply::Error(libc::EINVAL);
            }
            let (offset, size) = (u64le(body, 8), u32le(body, 16) as usize);
            let Some(data) = body.get(40..40 + size) else {
                return Reply::Error(libc::EINVAL);
            };
            match dev.write(offset, data) {
                Ok(()) => {
                    let mut r = vec![0u8; 8];
                    r[0..4].copy_from_slice(&(size as u32).to_le_bytes());
                    Reply::Data(r)
                }
                Err(DevError::OutOfRange { .. }) => Reply::Error(libc::ENOSPC),
                Err(e) => err(e),
            }
        }
        FALLOCATE => {
            if !need(32) {
                return Reply::Error(libc::EINVAL);
            }
            let (offset, len, mode) = (u64le(body, 8), u64le(body, 16), u32le(body, 24));
            let r = if mode & FALLOC_PUNCH_HOLE != 0 {
                dev.trim(offset, len)
            } else if mode & FALLOC_ZERO_RANGE != 0 {
                dev.write_zeroes(offset, len, false)
            } else if mode & !FALLOC_KEEP_SIZE == 0 {
                // Allocation: every block exists already.
                if dev.read_only() {
                    Err(DevError::ReadOnly)
                } else {
                    Ok(())
                }
            } else {
                return Reply::Error(libc::EOPNOTSUPP);
            };
            match r {
                Ok(()) => Reply::Data(Vec::new()),
                Err(e) => err(e),
            }
        }
        FSYNC => match dev.flush() {
            Ok(()) => Reply::Data(Vec::new()),
            Err(e) => err(e),
        },
        FLUSH | RELEASE | DESTROY => Reply::Data(Vec::new()),
        STATFS => {
            let mut r = vec![0u8; 80];
            r[40..44].copy_from_slice(&(crate::BLOCK as u32).to_le_bytes()); // bsize
            r[44..48].copy_from_slice(&255u32.to_le_bytes()); // namelen
            r[48..52].copy_from_slice(&(crate::BLOCK as u32).to_le_bytes()); // frsize
            Reply::Data(r)
        }
        FORGET | BATCH_FORGET | INTERRUPT => Reply::None,
        _ => Reply::Error(libc::ENOSYS),
    }
}

/// Whether an INIT reply agrees to FUSE over io_uring.
fn agreed_io_uring(init_out: &[u8]) -> bool {
    init_out.len() >= 36
        && u32le(init_out, 12) & uring::INIT_EXT != 0
        && u32le(init_out, 32) & uring::OVER_IO_URING != 0
}

fn write_reply(mut fd: &File, unique: u64, reply: Reply, out: &mut [u8]) -> std::io::Result<()> {
    let (error, body_len) = match &reply {
        Reply::None => return Ok(()),
        Reply::Error(e) => (-*e, 0),
        Reply::Data(d) => (0, d.len()),
        Reply::Read(n) => (0, *n),
    };
    if let Reply::Data(d) = &reply {
        out[OUT_HEADER..OUT_HEADER + body_len].copy_from_slice(d);
    }
    let len = OUT_HEADER + body_len;
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&error.to_le_bytes());
    out[8..16].copy_from_slice(&unique.to_le_bytes());
    match fd.write(&out[..len]) {
        // ENOENT: the request was interrupted and is gone; nothing to do.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

/// A mounted FUSE file serving one device.
#[derive(Debug)]
pub struct FuseExport {
    path: PathBuf,
    fd: Arc<File>,
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Requests answered through io_uring ring entries.
    ring_requests: Arc<AtomicU64>,
    /// The INIT of this connection: answered, and agreed to FUSE over io_uring.
    init: Arc<InitState>,
}

/// What INIT settled, for the ring entries (which register only on a connection that
/// agreed: registering on one that did not would switch it to rings unannounced).
#[derive(Debug, Default)]
struct InitState {
    answered: AtomicBool,
    ring_agreed: AtomicBool,
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Unsupported(format!("{}: NUL in path", p.display())))
}

fn os_err(op: &'static str, what: &Path) -> Error {
    Error::io(
        op,
        what.display().to_string(),
        std::io::Error::last_os_error(),
    )
}

impl FuseExport {
    /// Mounts `dev` as the file `path` (created if missing) and starts `threads` workers on
    /// `/dev/fuse`, and with `io_uring` (where the kernel offers it) `threads` ring entries
    /// (at least one per queue), which take over the requests once registered.
    pub fn mount(
        dev: Arc<dyn BlockDevice>,
        path: &Path,
        threads: usize,
        io_uring: bool,
    ) -> Result<FuseExport> {
        if !path.exists() {
            std::fs::File::create(path)
                .map_err(|e| Error::io("create", path.display().to_string(), e))?;
        }
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|e| Error::io("open", "/dev/fuse", e))?;
        let raw = fd.as_raw_fd();
        let opts = CString::new(format!(
            "fd={raw},rootmode={:o},user_id=0,group_id=0,allow_other,default_permissions",
            libc::S_IFREG
        ))
        .unwrap();
        let target = cpath(path)?;
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let r = unsafe {
            libc::mount(
                c"overlaybd".as_ptr(),
                target.as_ptr(),
                c"fuse.overlaybd".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(os_err("mount fuse on", path));
        }
        let io_uring = io_uring && uring::kernel_enabled();
        Ok(Self::serve(
            dev,
            path,
            Arc::new(fd),
            threads,
            io_uring,
            false,
        ))
    }

    /// Serves a connection a previous daemon mounted at `path` (its `/dev/fuse` descriptor
    /// kept alive meanwhile), and has the kernel resend what that daemon left unanswered.
    /// `ring_agreed`: what that connection agreed at INIT ([`FuseExport::ring_agreed`]): its
    /// requests then go to ring entries only, which are registered again here whatever this
    /// daemon's settings or the module parameter say now (the kernel allows that for a
    /// connection that agreed).
    pub fn resume(
        dev: Arc<dyn BlockDevice>,
        path: &Path,
        fd: OwnedFd,
        threads: usize,
        ring_agreed: bool,
    ) -> Result<FuseExport> {
        let e = Self::serve(
            dev,
            path,
            Arc::new(File::from(fd)),
            threads,
            ring_agreed,
            ring_agreed,
        );
        let mut msg = [0u8; OUT_HEADER];
        msg[0..4].copy_from_slice(&(OUT_HEADER as u32).to_le_bytes());
        msg[4..8].copy_from_slice(&NOTIFY_RESEND.to_le_bytes());
        if let Err(err) = (&*e.fd).write(&msg) {
            // Older kernels: requests in flight at the crash stay unanswered.
            tracing::warn!("{}: FUSE_NOTIFY_RESEND: {err}", path.display());
        }
        Ok(e)
    }

    /// Starts the `/dev/fuse` workers and, with `io_uring`, the ring entries. `agreed`: the
    /// connection is known to use rings already (a resumed one).
    fn serve(
        dev: Arc<dyn BlockDevice>,
        path: &Path,
        fd: Arc<File>,
        threads: usize,
        io_uring: bool,
        agreed: bool,
    ) -> FuseExport {
        let stop = Arc::new(AtomicBool::new(false));
        let init = Arc::new(InitState {
            answered: AtomicBool::new(agreed),
            ring_agreed: AtomicBool::new(agreed),
        });
        let mut workers: Vec<JoinHandle<()>> = (0..threads.max(1))
            .filter_map(|i| {
                let (dev, fd, stop, init) = (dev.clone(), fd.clone(), stop.clone(), init.clone());
                std::thread::Builder::new()
                    .name(format!("fuse-{}-{i}", dev.name()))
                    .spawn(move || worker(&*dev, &fd, &stop, io_uring, &init))
                    .ok()
            })
            .collect();
        let ring_requests = Arc::new(AtomicU64::new(0));
        if io_uring {
            let queues = uring::queues();
            let entries = threads.max(queues);
            // The kernel has a queue per possible CPU, and uses the rings once each has an
            // entry: on a machine that reports many possible CPUs, that is many threads.
            tracing::info!(
                "fuse {}: {entries} io_uring entries on {queues} queues",
                dev.name()
            );
            for i in 0..entries {
                let (dev, fd, stop, init) = (dev.clone(), fd.clone(), stop.clone(), init.clone());
                let served = ring_requests.clone();
                let qid = (i % queues) as u16;
                let spawned = std::thread::Builder::new()
                    .name(format!("fuse-{}-q{qid}", dev.name()))
                    .spawn(move || {
                        // Register only once INIT agreed (a resumed connection had).
                        while !init.answered.load(Ordering::SeqCst) {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            std::thread::sleep(std::time::Duration::from_millis(2));
                        }
                        if !init.ring_agreed.load(Ordering::SeqCst) {
                            return;
                        }
                        if let Err(e) = uring::serve_entry(&*dev, &fd, qid, &stop, &served) {
                            // The connection ended (unmount), or the kernel refused the
                            // ring before it was ready: the /dev/fuse workers serve.
                            tracing::debug!("fuse {} io_uring queue {qid}: {e}", dev.name());
                        }
                    });
                workers.extend(spawned.ok());
            }
        }
        FuseExport {
            path: path.to_path_buf(),
            fd,
            workers,
            stop,
            ring_requests,
            init,
        }
    }

    /// Whether this connection agreed to FUSE over io_uring at INIT (known once the INIT
    /// reply is sent, i.e. once the file could be opened): a daemon that resumes the
    /// connection must serve its rings ([`FuseExport::resume`]).
    pub fn ring_agreed(&self) -> bool {
        self.init.ring_agreed.load(Ordering::SeqCst)
    }

    /// Requests answered through FUSE over io_uring so far (0 when the kernel or the config
    /// left the `/dev/fuse` loop to serve everything).
    pub fn ring_requests(&self) -> u64 {
        self.ring_requests.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `/dev/fuse` descriptor, to hand to a process that keeps it across a restart.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Lazily unmounts whatever is left mounted at `path` (a FUSE file whose daemon and
    /// connection are gone), so that a new one can be mounted there.
    pub fn clear_stale(path: &Path) {
        if let Ok(target) = cpath(path) {
            // SAFETY: `target` is a NUL-terminated string that outlives the call.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }

    /// Unmounts (lazily, so that a file still open elsewhere does not block it) and stops
    /// the workers. Detach the loop device first: the connection ends, and the workers with
    /// it, once nothing has the file open; workers still running after 5 s are left to end
    /// on their own.
    pub fn unmount(mut self) -> Result<()> {
        let target = cpath(&self.path)?;
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: `target` is a NUL-terminated string that outlives the call.
        let r = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let err = (r != 0).then(|| os_err("umount", &self.path));
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.workers.iter().any(|w| !w.is_finished()) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for w in self.workers.drain(..) {
            if w.is_finished() {
                let _ = w.join();
            }
        }
        err.map_or(Ok(()), Err)
    }
}

/// Reply buffers shared by the `/dev/fuse` workers of every device in the process: a worker
/// takes one for a request and gives it back after replying, so the memory large replies
/// touch follows the requests in flight, not devices × `fuse_threads`. The most recently
/// returned buffer is reused first (its pages are resident); at most [`IDLE_REPLY_BUFFERS`]
/// idle ones are kept, the others are freed.
static REPLY_BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
const IDLE_REPLY_BUFFERS: usize = 16;

fn take_reply_buffer() -> Vec<u8> {
    let pooled = REPLY_BUFFERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop();
    pooled.unwrap_or_else(|| vec![0u8; OUT_HEADER + MAX_IO])
}

fn give_reply_buffer(b: Vec<u8>) {
    let mut pool = REPLY_BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < IDLE_REPLY_BUFFERS {
        pool.push(b);
    }
}

fn worker(
    dev: &dyn BlockDevice,
    mut fd: &File,
    stop: &AtomicBool,
    io_uring: bool,
    init: &InitState,
) {
    // Big enough for a 1 MiB write plus headers (the kernel wants at least 8 KiB more); only
    // the pages a request fills become resident.
    let mut inbuf = vec![0u8; MAX_IO + 8192];
    while !stop.load(Ordering::Relaxed) {
        let n = match fd.read(&mut inbuf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                // ENODEV: unmounted and the connection is gone.
                _ => return,
            },
        };
        let msg = &inbuf[..n];
        let Some(h) = parse_header(msg) else {
            continue;
        };
        let mut out = take_reply_buffer();
        let reply = handle_with(dev, msg, &mut out, io_uring);
        let agreed = h.opcode == INIT && matches!(&reply, Reply::Data(r) if agreed_io_uring(r));
        let destroy = h.opcode == DESTROY;
        if let Err(e) = write_reply(fd, h.unique, reply, &mut out) {
            tracing::warn!("fuse {}: reply to op {}: {e}", dev.name(), h.opcode);
        }
        if h.opcode == INIT {
            init.ring_agreed.store(agreed, Ordering::SeqCst);
            init.answered.store(true, Ordering::SeqCst);
        }
        give_reply_buffer(out);
        if destroy {
            return;
        }
    }
}
