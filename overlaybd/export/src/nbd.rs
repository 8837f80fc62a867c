//! An NBD server (the protocol of `nbd-server`, qemu and the kernel's nbd driver): fixed
//! newstyle negotiation with `OPT_EXPORT_NAME`, `OPT_GO`, `OPT_INFO`, `OPT_LIST` and
//! `OPT_ABORT`; simple replies to `READ`, `WRITE`, `FLUSH`, `TRIM`, `WRITE_ZEROES` and `DISC`;
//! block size constraints (512 / 4096 / 32 MiB); any number of connections per export, each
//! serving several requests at once.
//!
//! Every frame comes from an untrusted client: a bad magic closes the connection, an option or
//! write larger than the limits gets an error and the connection is closed (its framing can no
//! longer be trusted), a request outside the export or misaligned gets `EINVAL`, a write to a
//! read-only export `EPERM`. A client that stops talking during negotiation is dropped after
//! [`NEGOTIATION_TIMEOUT`].

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::Duration;

use crate::{BlockDevice, DevError};
use crate::{Error, Result};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const C_FIXED_NEWSTYLE: u32 = 1 << 0;
const C_NO_ZEROES: u32 = 1 << 1;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

const INFO_EXPORT: u16 = 0;
const INFO_NAME: u16 = 1;
const INFO_BLOCK_SIZE: u16 = 3;

const TF_HAS_FLAGS: u16 = 1 << 0;
const TF_READ_ONLY: u16 = 1 << 1;
const TF_SEND_FLUSH: u16 = 1 << 2;
const TF_SEND_FUA: u16 = 1 << 3;
const TF_SEND_TRIM: u16 = 1 << 5;
const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
const TF_CAN_MULTI_CONN: u16 = 1 << 8;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
const CMD_FLAG_FUA: u16 = 1 << 0;
const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const ENOTSUP: u32 = 95;

/// Smallest, preferred and largest request the server accepts.
pub const MIN_BLOCK: u32 = crate::BLOCK as u32;
pub const PREFERRED_BLOCK: u32 = 4096;
pub const MAX_REQUEST: u32 = 32 << 20;
/// Longest option payload accepted during negotiation.
pub const MAX_OPTION: u32 = 64 << 10;
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests of one connection served at the same time.
pub const WORKERS_PER_CONNECTION: usize = 4;

/// The one place device errors become NBD error codes.
pub fn nbd_errno(e: &DevError, cmd: u16) -> u32 {
    match e {
        DevError::ReadOnly => EPERM,
        DevError::OutOfRange { .. } if cmd == CMD_WRITE || cmd == CMD_WRITE_ZEROES => ENOSPC,
        DevError::OutOfRange { .. } => EINVAL,
        DevError::Io(_) => EIO,
    }
}

/// A connection the server can read from and write to from two threads.
pub trait Conn: Read + Write + Send + Sized + 'static {
    fn try_clone(&self) -> io::Result<Self>;
    fn set_timeout(&self, _t: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Conn for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

/// What the server has done.
#[derive(Debug, Default)]
pub struct NbdStats {
    pub connections: AtomicU64,
    pub active: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub protocol_errors: AtomicU64,
}

/// The exports and the listeners.
#[derive(Debug, Default)]
pub struct NbdServer {
    exports: RwLock<BTreeMap<String, Arc<dyn BlockDevice>>>,
    stop: AtomicBool,
    stats: NbdStats,
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn protocol(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

fn opt_reply(w: &mut impl Write, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b)
}

fn transmission_flags(dev: &dyn BlockDevice) -> u16 {
    let base = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_CAN_MULTI_CONN;
    if dev.read_only() {
        base | TF_READ_ONLY
    } else {
        base | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES
    }
}

/// One parsed transmission request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub cmd: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

/// Parses a 28-byte request header; `None` on a bad magic.
pub fn parse_request(b: &[u8; 28]) -> Option<Request> {
    if u32::from_be_bytes(b[0..4].try_into().unwrap()) != REQUEST_MAGIC {
        return None;
    }
    Some(Request {
        flags: u16::from_be_bytes(b[4..6].try_into().unwrap()),
        cmd: u16::from_be_bytes(b[6..8].try_into().unwrap()),
        cookie: u64::from_be_bytes(b[8..16].try_into().unwrap()),
        offset: u64::from_be_bytes(b[16..24].try_into().unwrap()),
        len: u32::from_be_bytes(b[24..28].try_into().unwrap()),
    })
}

/// Serves one request; returns the error code and, for a read, the data.
pub fn execute(dev: &dyn BlockDevice, req: &Request, payload: &[u8]) -> (u32, Vec<u8>) {
    let aligned =
        |r: &Request| r.offset.is_multiple_of(MIN_BLOCK as u64) && r.len.is_multiple_of(MIN_BLOCK);
    let code = |r: std::result::Result<(), DevError>| match r {
        Ok(()) => 0,
        Err(e) => nbd_errno(&e, req.cmd),
    };
    match req.cmd {
        CMD_READ => {
            if req.len > MAX_REQUEST {
                return (EINVAL, Vec::new());
            }
            let mut buf = vec![0u8; req.len as usize];
            match dev.read(req.offset, &mut buf) {
                Ok(()) => (0, buf),
                Err(e) => (nbd_errno(&e, req.cmd), Vec::new()),
            }
        }
        CMD_WRITE => {
            if dev.read_only() {
                return (EPERM, Vec::new());
            }
            if !aligned(req) {
                return (EINVAL, Vec::new());
            }
            let mut r = dev.write(req.offset, payload);
            if r.is_ok() && req.flags & CMD_FLAG_FUA != 0 {
                r = dev.flush();
            }
            (code(r), Vec::new())
        }
        CMD_FLUSH => (code(dev.flush()), Vec::new()),
        CMD_TRIM | CMD_WRITE_ZEROES => {
            if dev.read_only() {
                return (EPERM, Vec::new());
            }
            if !aligned(req) {
                return (EINVAL, Vec::new());
            }
            let len = req.len as u64;
            let mut r = if req.cmd == CMD_TRIM {
                dev.trim(req.offset, len)
            } else {
                dev.write_zeroes(req.offset, len, req.flags & CMD_FLAG_NO_HOLE != 0)
            };
            if r.is_ok() && req.flags & CMD_FLAG_FUA != 0 {
                r = dev.flush();
            }
            (code(r), Vec::new())
        }
        _ => (ENOTSUP, Vec::new()),
    }
}

fn simple_reply(w: &Mutex<impl Write>, cookie: u64, error: u32, data: &[u8]) -> io::Result<()> {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    let mut w = w.lock().unwrap();
    w.write_all(&h)?;
    if error == 0 && !data.is_empty() {
        w.write_all(data)?;
    }
    w.flush()
}

impl NbdServer {
    pub fn new() -> Arc<NbdServer> {
        Arc::new(NbdServer::default())
    }

    pub fn add(&self, name: &str, dev: Arc<dyn BlockDevice>) {
        self.exports.write().unwrap().insert(name.to_string(), dev);
    }

    pub fn remove(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        self.exports.write().unwrap().remove(name)
    }

    pub fn stats(&self) -> &NbdStats {
        &self.stats
    }

    /// Stops accepting connections (listeners notice at their next connection).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The export a client names; the empty name means the only export, if there is one.
    fn lookup(&self, name: &[u8]) -> Option<Arc<dyn BlockDevice>> {
        let ex = self.exports.read().unwrap();
        if name.is_empty() && ex.len() == 1 {
            return ex.values().next().cloned();
        }
        ex.get(std::str::from_utf8(name).ok()?).cloned()
    }

    /// Serves connections on a bound unix socket (the caller decides its path and mode),
    /// each on its own thread.
    pub fn listen_unix(self: &Arc<Self>, l: std::os::unix::net::UnixListener) -> Result<()> {
        self.accept_loop("nbd-unix", move || l.accept().map(|(c, _)| c))
    }

    /// Listens on a TCP address (give `127.0.0.1:0` for any free port); returns the address.
    pub fn listen_tcp(self: &Arc<Self>, addr: SocketAddr) -> Result<SocketAddr> {
        let l = TcpListener::bind(addr).map_err(|e| Error::io("bind", addr.to_string(), e))?;
        let local = l
            .local_addr()
            .map_err(|e| Error::io("bind", addr.to_string(), e))?;
        self.accept_loop("nbd-tcp", move || {
            let (c, _) = l.accept()?;
            c.set_nodelay(true)?;
            Ok(c)
        })?;
        Ok(local)
    }

    /// Accepts connections on a thread of its own until [`NbdServer::shutdown`].
    fn accept_loop<C: Conn>(
        self: &Arc<Self>,
        name: &str,
        mut accept: impl FnMut() -> io::Result<C> + Send + 'static,
    ) -> Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while !me.stop.load(Ordering::Relaxed) {
                    if let Ok(c) = accept() {
                        if !me.stop.load(Ordering::Relaxed) {
                            me.spawn_connection(c);
                        }
                    }
                }
            })
            .map_err(|e| Error::io("spawn", "nbd listener", e))?;
        Ok(())
    }

    fn spawn_connection<C: Conn>(self: &Arc<Self>, c: C) {
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || {
                if let Err(e) = me.serve(c) {
                    tracing::debug!("nbd connection: {e}");
                }
            });
    }

    /// Serves one connection until the client disconnects or breaks the protocol.
    pub fn serve<C: Conn>(&self, mut c: C) -> io::Result<()> {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        let r = self.serve_inner(&mut c);
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        if let Err(e) = &r {
            if e.kind() == io::ErrorKind::InvalidData {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    fn serve_inner<C: Conn>(&self, c: &mut C) -> io::Result<()> {
        c.set_timeout(Some(NEGOTIATION_TIMEOUT))?;
        let Some(dev) = self.negotiate(c)? else {
            return Ok(());
        };
        c.set_timeout(None)?;
        self.transmission(c, dev)
    }

    /// Fixed newstyle negotiation; `None` when the client aborted.
    fn negotiate<C: Conn>(&self, c: &mut C) -> io::Result<Option<Arc<dyn BlockDevice>>> {
        let mut hello = Vec::with_capacity(18);
        hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        c.write_all(&hello)?;
        let cflags = read_u32(c)?;
        if cflags & !(C_FIXED_NEWSTYLE | C_NO_ZEROES) != 0 {
            return Err(protocol(format!("unknown client flags {cflags:#x}")));
        }
        let no_zeroes = cflags & C_NO_ZEROES != 0;
        loop {
            if read_u64(c)? != IHAVEOPT {
                return Err(protocol("option without IHAVEOPT"));
            }
            let opt = read_u32(c)?;
            let len = read_u32(c)?;
            if len > MAX_OPTION {
                opt_reply(c, opt, REP_ERR_TOO_BIG, b"option too long")?;
                return Err(protocol(format!("option {opt} of {len} bytes")));
            }
            let mut data = vec![0u8; len as usize];
            c.read_exact(&mut data)?;
            match opt {
                OPT_EXPORT_NAME => {
                    // No way to refuse here but to close the connection.
                    let dev = self
                        .lookup(&data)
                        .ok_or_else(|| protocol("NBD_OPT_EXPORT_NAME of an unknown export"))?;
                    let mut b = Vec::with_capacity(134);
                    b.extend_from_slice(&dev.size().to_be_bytes());
                    b.extend_from_slice(&transmission_flags(&*dev).to_be_bytes());
                    if !no_zeroes {
                        b.extend_from_slice(&[0u8; 124]);
                    }
                    c.write_all(&b)?;
                    return Ok(Some(dev));
                }
                OPT_ABORT => {
                    let _ = opt_reply(c, opt, REP_ACK, &[]);
                    return Ok(None);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        opt_reply(c, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                        continue;
                    }
                    let names: Vec<String> = self.exports.read().unwrap().keys().cloned().collect();
                    for n in names {
                        let mut b = (n.len() as u32).to_be_bytes().to_vec();
                        b.extend_from_slice(n.as_bytes());
                        opt_reply(c, opt, REP_SERVER, &b)?;
                    }
                    opt_reply(c, opt, REP_ACK, &[])?;
                }
                OPT_INFO | OPT_GO => {
                    let Some((name, infos)) = parse_info_request(&data) else {
                        opt_reply(c, opt, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO")?;
                        continue;
                    };
                    let Some(dev) = self.lookup(name) else {
                        opt_reply(c, opt, REP_ERR_UNKNOWN, b"no such export")?;
                        continue;
                    };
                    let mut b = INFO_EXPORT.to_be_bytes().to_vec();
                    b.extend_from_slice(&dev.size().to_be_bytes());
                    b.extend_from_slice(&transmission_flags(&*dev).to_be_bytes());
                    opt_reply(c, opt, REP_INFO, &b)?;
                    let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [MIN_BLOCK, PREFERRED_BLOCK, MAX_REQUEST] {
                        b.extend_from_slice(&v.to_be_bytes());
                    }
                    opt_reply(c, opt, REP_INFO, &b)?;
                    if infos.contains(&INFO_NAME) {
                        let mut b = INFO_NAME.to_be_bytes().to_vec();
                        b.extend_from_slice(dev.name().as_bytes());
                        opt_reply(c, opt, REP_INFO, &b)?;
                    }
                    opt_reply(c, opt, REP_ACK, &[])?;
                    if opt == OPT_GO {
                        return Ok(Some(dev));
                    }
                }
                _ => opt_reply(c, opt, REP_ERR_UNSUP, b"unsupported option")?,
            }
        }
    }

    fn transmission<C: Conn>(&self, c: &mut C, dev: Arc<dyn BlockDevice>) -> io::Result<()> {
        let writer = Mutex::new(c.try_clone()?);
        let (tx, rx) = mpsc::sync_channel::<(Request, Vec<u8>)>(WORKERS_PER_CONNECTION * 2);
        let rx = Mutex::new(rx);
        let failed = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..WORKERS_PER_CONNECTION {
                scope.spawn(|| loop {
                    let job = rx.lock().unwrap().recv();
                    let Ok((req, payload)) = job else { return };
                    let (err, data) = execute(&*dev, &req, &payload);
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    if err != 0 {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if simple_reply(&writer, req.cookie, err, &data).is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                });
            }
            // Dropping the sender when the reader stops lets the workers finish what is
            // queued (DISC: every earlier request is answered) and end.
            let tx = tx;
            self.read_requests(c, &tx, &writer, &failed)
        })
    }

    fn read_requests<C: Conn>(
        &self,
        c: &mut C,
        tx: &mpsc::SyncSender<(Request, Vec<u8>)>,
        writer: &Mutex<C>,
        failed: &AtomicBool,
    ) -> io::Result<()> {
        loop {
            if failed.load(Ordering::Relaxed) {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "reply failed"));
            }
            let mut h = [0u8; 28];
            match c.read_exact(&mut h) {
                Ok(()) => {}
                // A client that just closes instead of sending DISC.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let req = parse_request(&h).ok_or_else(|| protocol("bad request magic"))?;
            let mut payload = Vec::new();
            match req.cmd {
                CMD_DISC => return Ok(()),
                CMD_WRITE => {
                    if req.len > MAX_REQUEST {
                        simple_reply(writer, req.cookie, EINVAL, &[])?;
                        return Err(protocol(format!("write of {} bytes", req.len)));
                    }
                    payload = vec![0u8; req.len as usize];
                    c.read_exact(&mut payload)?;
                }
                _ => {}
            }
            if tx.send((req, payload)).is_err() {
                return Ok(());
            }
        }
    }
}

/// `NBD_OPT_INFO` / `NBD_OPT_GO` data: the export name and the information requests.
fn parse_info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let n = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(n)?)?;
    let rest = &data[4 + n..];
    let k = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let reqs = rest.get(2..2 + 2 * k)?;
    if rest.len() != 2 + 2 * k {
        return None;
    }
    Some((
        name,
        reqs.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    ))
}

/// An in-memory connection for fuzzing: reads come from a byte string, writes are dropped.
#[cfg(any(test, feature = "test-util"))]
pub mod fuzz {
    use super::*;

    #[derive(Clone, Debug)]
    pub struct MemConn(Arc<Mutex<io::Cursor<Vec<u8>>>>);

    impl Read for MemConn {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.lock().unwrap().read(buf)
        }
    }
    impl Write for MemConn {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Conn for MemConn {
        fn try_clone(&self) -> io::Result<Self> {
            Ok(self.clone())
        }
    }

    /// A writable in-memory device for the fuzzer.
    #[derive(Debug)]
    pub struct MemDevice(std::sync::RwLock<Vec<u8>>);

    impl MemDevice {
        pub fn new(size: usize) -> Self {
            MemDevice(std::sync::RwLock::new(vec![0; size]))
        }

        fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, DevError> {
            let size = self.size();
            match offset.checked_add(len as u64) {
                Some(end) if end <= size => Ok(offset as usize..end as usize),
                _ => Err(DevError::OutOfRange {
                    offset,
                    len: len as u64,
                    size,
                }),
            }
        }
    }

    impl BlockDevice for MemDevice {
        fn name(&self) -> &str {
            "mem"
        }
        fn size(&self) -> u64 {
            self.0.read().unwrap().len() as u64
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
            let r = self.range(offset, buf.len())?;
            buf.copy_from_slice(&self.0.read().unwrap()[r]);
            Ok(())
        }
        fn write(&self, offset: u64, buf: &[u8]) -> Result<(), DevError> {
            let r = self.range(offset, buf.len())?;
            self.0.write().unwrap()[r].copy_from_slice(buf);
            Ok(())
        }
        fn trim(&self, offset: u64, len: u64) -> Result<(), DevError> {
            self.write_zeroes(offset, len, false)
        }
        fn write_zeroes(&self, offset: u64, len: u64, _no_hole: bool) -> Result<(), DevError> {
            let r = self.range(offset, len as usize)?;
            self.0.write().unwrap()[r].fill(0);
            Ok(())
        }
        fn flush(&self) -> Result<(), DevError> {
            Ok(())
        }
    }

    /// A writable 64 MiB device, made once per process.
    pub fn scratch_device() -> Arc<dyn BlockDevice> {
        static DEV: std::sync::OnceLock<Arc<dyn BlockDevice>> = std::sync::OnceLock::new();
        DEV.get_or_init(|| Arc::new(MemDevice::new(64 << 20)))
            .clone()
    }

    /// Feeds `input` as everything a client sends to a server exporting `dev` as "d".
    pub fn serve_bytes(dev: Arc<dyn BlockDevice>, input: &[u8]) {
        let s = NbdServer::new();
        s.add("d", dev);
        let _ = s.serve(MemConn(Arc::new(Mutex::new(io::Cursor::new(
            input.to_vec(),
        )))));
    }
}
