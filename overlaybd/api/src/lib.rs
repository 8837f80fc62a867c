//! The daemon's interface, as its clients (the snapshotter, `obdctl`, tests) and the daemon
//! itself see it: the gRPC protocol (`proto/daemon.proto`) and its client, the per-device
//! config `config.v1.json` ([`config`]), and unix sockets for gRPC (a private listening socket,
//! a client channel) that the daemon, the snapshotter and containerd's clients share.

pub mod config;

use std::path::Path;

pub use config::{ConfigError, DownloadConfig, ImageConfig, LayerConfig, UpperConfig};

#[allow(
    clippy::all,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub
)]
pub mod pb {
    tonic::include_proto!("overlaybd.daemon.v1");
}

/// Binds a unix socket at `path` (replacing a stale one) that only its owner may use.
pub fn bind_private_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let with_path = |op: &str, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
    };
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| with_path("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| with_path("chmod", e))?;
    Ok(l)
}

/// The listening unix socket systemd passed (socket activation: `LISTEN_PID` is this process,
/// `LISTEN_FDS` at least 1, the socket at descriptor 3), or `None` when none was passed. The
/// descriptor is made close-on-exec, so children do not inherit it (and `LISTEN_PID` names
/// this process, not them). A socket held by
/// systemd (or any parent) outlives a restart of the server: connections made meanwhile wait
/// in its backlog instead of being refused.
pub fn inherited_listener() -> std::io::Result<Option<std::os::unix::net::UnixListener>> {
    use std::os::fd::{FromRawFd, RawFd};
    const FIRST: RawFd = 3;
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    if pid.as_deref() != Some(&std::process::id().to_string()) {
        return Ok(None);
    }
    if fds.and_then(|n| n.parse::<u32>().ok()).unwrap_or(0) == 0 {
        return Ok(None);
    }
    let bad = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("socket activation: descriptor {FIRST} {why}"),
        )
    };
    // SAFETY: plain syscalls on descriptor 3 with buffers of the sizes given.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(FIRST, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) != 0 {
            return Err(bad("is not a socket"));
        }
        if i32::from(addr.ss_family) != libc::AF_UNIX {
            return Err(bad("is not a unix socket"));
        }
        let (mut listening, mut l) = (0i32, std::mem::size_of::<i32>() as libc::socklen_t);
        if libc::getsockopt(
            FIRST,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            &mut listening as *mut i32 as *mut libc::c_void,
            &mut l,
        ) != 0
            || listening == 0
        {
            return Err(bad("is not listening"));
        }
        libc::fcntl(FIRST, libc::F_SETFD, libc::FD_CLOEXEC);
        Ok(Some(std::os::unix::net::UnixListener::from_raw_fd(FIRST)))
    }
}

/// A gRPC channel over the unix socket `socket` (the daemon's API, the snapshotter's,
/// containerd's): tonic's endpoints are URIs, so the socket is reached through a connector.
/// The error names the socket and the cause ("No such file or directory", "Connection
/// refused"), which tonic's own message ("transport error") hides.
pub async fn unix_channel(socket: &Path) -> std::io::Result<tonic::transport::Channel> {
    let path = socket.to_path_buf();
    let socket = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://unix.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let s = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| {
            let mut msg = format!("connect {}: {e}", path.display());
            let mut kind = std::io::ErrorKind::Other;
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                if let Some(io) = c.downcast_ref::<std::io::Error>() {
                    kind = io.kind();
                }
                let m = c.to_string();
                // Each cause once (a wrapper often repeats the message it wraps).
                if !msg.contains(&m) {
                    msg.push_str(": ");
                    msg.push_str(&m);
                }
                cur = c.source();
            }
            std::io::Error::new(kind, msg)
        })
}

/// A client of the API on `socket`.
pub async fn connect(
    socket: &Path,
) -> std::io::Result<pb::daemon_client::DaemonClient<tonic::transport::Channel>> {
    Ok(pb::daemon_client::DaemonClient::new(
        unix_channel(socket).await?,
    ))
}
