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
