//! The descriptor keeper: a tiny process that holds each device's `/dev/fuse` descriptor so
//! that the FUSE connection outlives a daemon crash or upgrade. While the daemon is gone the
//! kernel queues the loop device's requests (a pause); the next daemon takes the descriptors
//! back and asks the kernel to resend what was in flight.
//!
//! Descriptors move with `pidfd_getfd(2)` (Linux 5.6): the keeper copies a descriptor out of
//! the daemon, and the daemon copies it back out of the keeper, so the protocol is plain text
//! on a unix socket (mode 0600; both sides run as root):
//!
//! ```text
//! PUT <key> <pid> <fd>  → OK            the keeper copies <fd> out of process <pid>
//! GET <key>             → FD <pid> <fd> | NONE
//! DEL <key>             → OK
//! QUIT                  → OK            (exits)
//! ```
//!
//! The keeper runs only while it holds something: the daemon starts it with the first `PUT`,
//! and it exits when a `DEL` leaves it empty, or after [`IDLE_EXIT`] without holding anything
//! (a keeper whose daemon never sent a descriptor, or whose `PUT` failed).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Copies descriptor `fd` out of process `pid`.
pub fn take_fd(pid: u32, fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `pidfd` was just returned to us and is owned here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the new descriptor (close-on-exec) belongs to this process now.
    Ok(unsafe { OwnedFd::from_raw_fd(got as RawFd) })
}

/// How long a keeper that holds nothing waits for a descriptor before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);

/// Runs the keeper on `socket` until `QUIT`, a `DEL` of its last descriptor, or
/// [`IDLE_EXIT`] with nothing held.
pub fn serve(socket: &Path) -> Result<()> {
    let l = overlaybd_api::bind_private_unix(socket)
        .map_err(|e| Error::io("bind", socket.display().to_string(), e))?;
    l.set_nonblocking(true)
        .map_err(|e| Error::io("listen", socket.display().to_string(), e))?;
    let mut held: HashMap<String, OwnedFd> = HashMap::new();
    let me = std::process::id();
    let mut empty_since = Some(std::time::Instant::now());
    loop {
        let conn = match l.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if empty_since.is_some_and(|t| t.elapsed() >= IDLE_EXIT) {
                    let _ = std::fs::remove_file(socket);
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(_) => continue,
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut w = match conn.try_clone() {
            Ok(w) => w,
            Err(_) => continue,
        };
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { break };
            let parts: Vec<&str> = line.split_whitespace().collect();
            let answer = match parts.as_slice() {
                ["PUT", key, pid, fd] => match (pid.parse(), fd.parse()) {
                    (Ok(pid), Ok(fd)) => match take_fd(pid, fd) {
                        Ok(f) => {
                            held.insert(key.to_string(), f);
                            "OK".to_string()
                        }
                        Err(e) => format!("ERR {e}"),
                    },
                    _ => "ERR bad PUT".to_string(),
                },
                ["GET", key] => match held.get(*key) {
                    Some(f) => format!("FD {me} {}", f.as_raw_fd()),
                    None => "NONE".to_string(),
                },
                ["DEL", key] => {
                    if held.remove(*key).is_some() && held.is_empty() {
                        // Nothing left to keep: the keeper's job is done.
                        let _ = writeln!(w, "OK");
                        let _ = std::fs::remove_file(socket);
                        return Ok(());
                    }
                    "OK".to_string()
                }
                ["QUIT"] => {
                    let _ = writeln!(w, "OK");
                    let _ = std::fs::remove_file(socket);
                    return Ok(());
                }
                _ => "ERR unknown command".to_string(),
            };
            if writeln!(w, "{answer}").is_err() {
                break;
            }
        }
        empty_since = match (held.is_empty(), empty_since) {
            (true, None) => Some(std::time::Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
    }
}

/// The daemon's side.
#[derive(Debug, Clone)]
pub struct FdStore {
    socket: PathBuf,
    exe: PathBuf,
    /// Keepers this daemon started, reaped once they exit.
    children: std::sync::Arc<std::sync::Mutex<Vec<std::process::Child>>>,
}

impl FdStore {
    /// The keeper on `socket`, started as `exe fdstore <socket>` when a descriptor must be
    /// kept and none answers.
    pub fn new(socket: &Path, exe: &Path) -> FdStore {
        FdStore {
            socket: socket.to_path_buf(),
            exe: exe.to_path_buf(),
            children: Default::default(),
        }
    }

    /// Reaps keepers that exited (they exit on their own once they hold nothing).
    fn reap(&self) {
        let mut c = self.children.lock().unwrap_or_else(|p| p.into_inner());
        c.retain_mut(|k| matches!(k.try_wait(), Ok(None)));
    }

    /// Starts the keeper (in its own process group, so that signals to the daemon's group do
    /// not reach it) unless one answers.
    fn ensure_running(&self) -> Result<()> {
        if self.request("GET -").is_ok() {
            return Ok(());
        }
        self.reap();
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(&self.exe)
            .arg("fdstore")
            .arg(&self.socket)
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| Error::io("spawn", self.exe.display().to_string(), e))?;
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        for _ in 0..200 {
            if self.request("GET -").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(Error::Invalid(format!(
            "the descriptor keeper on {} did not start",
            self.socket.display()
        )))
    }

    fn request(&self, line: &str) -> Result<String> {
        let err = |e| Error::io("fdstore", self.socket.display().to_string(), e);
        let mut c = UnixStream::connect(&self.socket).map_err(err)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(err)?;
        writeln!(c, "{line}").map_err(err)?;
        let mut answer = String::new();
        BufReader::new(c).read_line(&mut answer).map_err(err)?;
        let answer = answer.trim_end().to_string();
        if let Some(why) = answer.strip_prefix("ERR ") {
            return Err(Error::Invalid(format!("fdstore {line}: {why}")));
        }
        Ok(answer)
    }

    /// Hands a copy of `fd` to the keeper under `key`, starting the keeper if needed (once
    /// more if it exited meanwhile, having held nothing).
    pub fn put(&self, key: &str, fd: RawFd) -> Result<()> {
        let line = format!("PUT {key} {} {fd}", std::process::id());
        self.ensure_running()?;
        match self.request(&line) {
            Err(Error::Io { .. }) => {
                self.ensure_running()?;
                self.request(&line).map(drop)
            }
            r => r.map(drop),
        }
    }

    /// A copy of the descriptor kept under `key`; none when no keeper runs.
    pub fn get(&self, key: &str) -> Result<Option<OwnedFd>> {
        let a = match self.request(&format!("GET {key}")) {
            Err(Error::Io { .. }) => return Ok(None),
            a => a?,
        };
        if a == "NONE" {
            return Ok(None);
        }
        let mut it = a.split_whitespace().skip(1).map(str::parse::<i64>);
        match (it.next(), it.next()) {
            (Some(Ok(pid)), Some(Ok(fd))) => take_fd(pid as u32, fd as RawFd)
                .map(Some)
                .map_err(|e| Error::io("pidfd_getfd", key.to_string(), e)),
            _ => Err(Error::Invalid(format!("fdstore GET {key}: answer {a:?}"))),
        }
    }

    /// Forgets `key` (the keeper exits if that was its last descriptor); nothing to do when
    /// no keeper runs.
    pub fn delete(&self, key: &str) -> Result<()> {
        let r = self.request(&format!("DEL {key}"));
        self.reap();
        match r {
            Err(Error::Io { .. }) => Ok(()),
            r => r.map(drop),
        }
    }

    /// Stops the keeper (the daemon does this on a clean shutdown with no devices left).
    pub fn quit(&self) -> Result<()> {
        match self.request("QUIT") {
            Err(Error::Io { .. }) => Ok(()),
            r => r.map(drop),
        }
    }
}
