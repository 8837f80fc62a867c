//! FUSE over io_uring (Linux 6.14+, with the `fuse` module's `enable_uring` parameter on).
//!
//! Each ring entry is served by one thread with an io_uring of its own: it registers the entry
//! (a header buffer and a payload buffer) on a queue, and then each `COMMIT_AND_FETCH` both
//! answers the last request and waits for the next one in a single `io_uring_enter`, where the
//! `/dev/fuse` loop needs a `writev` and a `read`. Once every queue (one per possible CPU) has
//! an entry, the kernel sends requests there instead of to `/dev/fuse`; until then, and for
//! what the kernel still sends to `/dev/fuse` (forgets, interrupts), the read loop serves.
//!
//! Layouts (include/uapi/linux/fuse.h, 7.42): `fuse_uring_req_header` is `in_out[128]`
//! (the `fuse_in_header`, then our `fuse_out_header`), `op_in[128]` (the opcode's fixed
//! argument), `fuse_uring_ent_in_out` (flags, commit_id, payload_sz, padding, reserved); the
//! SQE's 80-byte command area holds `fuse_uring_cmd_req` (flags, commit_id, qid).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{handle, parse_header, Reply, IN_HEADER, MAX_IO, OUT_HEADER};
use crate::BlockDevice;

/// `FUSE_INIT_EXT`: the INIT flags continue in `flags2`.
pub(super) const INIT_EXT: u32 = 1 << 30;
/// `FUSE_OVER_IO_URING` (bit 41), as a `flags2` bit.
pub(super) const OVER_IO_URING: u32 = 1 << (41 - 32);

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
const IN_OUT: usize = 128;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 32;

/// `fuse_uring_req_header`.
#[repr(C, align(8))]
struct Header {
    in_out: [u8; IN_OUT],
    op_in: [u8; OP_IN],
    ent_in_out: [u8; ENT_IN_OUT],
}

/// Whether the kernel offers FUSE over io_uring (the module parameter is on).
pub fn kernel_enabled() -> bool {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| matches!(v.trim(), "Y" | "1"))
}

/// The kernel's queue count: one per possible CPU (`num_possible_cpus`). Every queue needs an
/// entry before the kernel uses the ring.
pub fn queues() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| count_cpus(s.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Counts a CPU list like `0-3,6,8-9`.
fn count_cpus(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()? + 1 - a.parse::<usize>().ok()?,
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    (n > 0).then_some(n)
}

/// An SQE for a FUSE ring command: `io-uring`'s `UringCmd80` with `len` set to the iovec count
/// (the crate sets `addr` but not `len`, which the kernel checks is 2).
fn fuse_cmd(
    fd: i32,
    op: u32,
    commit_id: u64,
    qid: u16,
    iov: &[libc::iovec; 2],
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_le_bytes());
    cmd[16..18].copy_from_slice(&qid.to_le_bytes());
    let e = opcode::UringCmd80::new(types::Fd(fd), op)
        .cmd(cmd)
        .addr(Some(iov.as_ptr() as u64))
        .build();
    // SAFETY: `Entry128` is `repr(C)`: the 64-byte `io_uring_sqe` then 64 bytes of command;
    // `len` is the u32 at offset 24 of the SQE. The size equality is checked at compile time.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute::<squeue::Entry128, [u8; 128]>(e) };
    raw[24..28].copy_from_slice(&2u32.to_le_bytes());
    // SAFETY: the same bytes back, with one plain integer field changed.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// An entry's buffers: the header and the payload (`out[OUT_HEADER..]`, so that `handle`
/// writes a read's data in place). Once registered, the kernel holds their addresses for as
/// long as the entry lives, so buffers whose entry may still be alive are leaked, never freed.
struct Buffers {
    header: Box<Header>,
    out: Vec<u8>,
    iov: [libc::iovec; 2],
}

impl Buffers {
    fn new() -> Box<Buffers> {
        let mut b = Box::new(Buffers {
            header: Box::new(Header {
                in_out: [0; IN_OUT],
                op_in: [0; OP_IN],
                ent_in_out: [0; ENT_IN_OUT],
            }),
            out: vec![0u8; OUT_HEADER + MAX_IO],
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 2],
        });
        b.iov = [
            libc::iovec {
                iov_base: (&mut *b.header as *mut Header).cast(),
                iov_len: std::mem::size_of::<Header>(),
            },
            libc::iovec {
                iov_base: b.out[OUT_HEADER..].as_mut_ptr().cast(),
                iov_len: MAX_IO,
            },
        ];
        b
    }
}

/// Errors that mean the connection is over (unmounted, aborted) or this ring is cancelled.
fn connection_over(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV
    )
}

/// How many times one thread registers a fresh entry after a failed commit before it gives
/// up (each time, the old entry's buffers are leaked).
const MAX_REREGISTER: u32 = 16;

/// Serves one ring entry on queue `qid` until the connection ends (or the kernel refuses the
/// ring before it is ready: then the `/dev/fuse` workers serve). A commit the kernel refuses
/// (the request was interrupted, say) registers a fresh entry, so that the queue is never
/// left without one. Returns why it stopped.
pub(super) fn serve_entry(
    dev: &dyn BlockDevice,
    fd: &File,
    qid: u16,
    stop: &AtomicBool,
    served: &AtomicU64,
) -> io::Result<()> {
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder().build(2)?;
    let mut b = Buffers::new();
    let mut msg = Vec::with_capacity(IN_HEADER + OP_IN);
    let (mut op, mut commit_id) = (CMD_REGISTER, 0u64);
    let mut reregistered = 0;
    loop {
        let sqe = fuse_cmd(fd.as_raw_fd(), op, commit_id, qid, &b.iov);
        // SAFETY: the iovecs and the buffers they point to are only freed when no command
        // of this entry can be alive (else leaked, below).
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            return Err(io::Error::other("io_uring submission queue full"));
        }
        let res = loop {
            match ring.submit_and_wait(1) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    // The command may be in flight: its buffers must outlive this thread.
                    Box::leak(b);
                    return Err(e);
                }
                Ok(_) => {}
            }
            if let Some(cqe) = ring.completion().next() {
                break cqe.result();
            }
        };
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            if connection_over(-res) || stop.load(Ordering::Relaxed) {
                return Err(e);
            }
            if op == CMD_REGISTER {
                // Not initialised yet: register again shortly. Refused: give up.
                if res == -libc::EAGAIN {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                return Err(e);
            }
            // A refused commit: the entry may still exist in the kernel with our buffers.
            reregistered += 1;
            if reregistered > MAX_REREGISTER {
                Box::leak(b);
                return Err(e);
            }
            tracing::warn!(
                "fuse {} io_uring queue {qid}: commit: {e}; new entry",
                dev.name()
            );
            Box::leak(std::mem::replace(&mut b, Buffers::new()));
            (op, commit_id) = (CMD_REGISTER, 0);
            continue;
        }
        // A request: the header, the opcode's argument, then the payload.
        let ent = &b.header.ent_in_out;
        commit_id = u64::from_le_bytes(ent[8..16].try_into().expect("8 bytes"));
        let payload = u32::from_le_bytes(ent[16..20].try_into().expect("4 bytes")) as usize;
        let len = u32::from_le_bytes(b.header.in_out[0..4].try_into().expect("4 bytes")) as usize;
        let unique = u64::from_le_bytes(b.header.in_out[8..16].try_into().expect("8 bytes"));
        op = CMD_COMMIT_AND_FETCH;
        let reply = match len
            .checked_sub(IN_HEADER + payload)
            .filter(|&arg| arg <= OP_IN && payload <= MAX_IO)
        {
            Some(arg) => {
                msg.clear();
                msg.extend_from_slice(&b.header.in_out[..IN_HEADER]);
                msg.extend_from_slice(&b.header.op_in[..arg]);
                msg.extend_from_slice(&b.out[OUT_HEADER..OUT_HEADER + payload]);
                match parse_header(&msg) {
                    Some(_) => handle(dev, &msg, &mut b.out),
                    None => Reply::Error(libc::EINVAL),
                }
            }
            None => Reply::Error(libc::EINVAL),
        };
        let (error, body) = match reply {
            // Only forgets and interrupts go unanswered, and they never come this way.
            Reply::None => (-libc::ENOSYS, 0),
            Reply::Error(e) => (-e, 0),
            Reply::Read(n) => (0, n),
            Reply::Data(d) => {
                b.out[OUT_HEADER..OUT_HEADER + d.len()].copy_from_slice(&d);
                (0, d.len())
            }
        };
        let h = &mut b.header;
        h.in_out[0..4].copy_from_slice(&((OUT_HEADER + body) as u32).to_le_bytes());
        h.in_out[4..8].copy_from_slice(&error.to_le_bytes());
        h.in_out[8..16].copy_from_slice(&unique.to_le_bytes());
        h.ent_in_out[16..20].copy_from_slice(&(body as u32).to_le_bytes());
        served.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("0-1"), Some(2));
        assert_eq!(count_cpus("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpus(""), None);
        assert_eq!(count_cpus("x"), None);
    }

    #[test]
    fn the_header_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<Header>(), 288);
        assert_eq!(std::mem::size_of::<squeue::Entry128>(), 128);
    }
}
