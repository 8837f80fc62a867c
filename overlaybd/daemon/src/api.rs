//! The daemon's local API server: gRPC (`overlaybd-api`'s `daemon.proto`) on a unix socket,
//! mode 0600. The async edge of the daemon: handlers run the blocking [`Daemon`] calls on
//! tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use overlaybd_api::pb;
use pb::daemon_server::DaemonServer;
use tonic::{Request, Response, Status};

use crate::daemon::{Daemon, DeviceInfo, Exports};
use crate::error::Error;

/// The one place daemon errors become gRPC status codes, by kind: no such device is
/// `NotFound`, an attached one `AlreadyExists`, a bad config or corrupt layer
/// `InvalidArgument`, refused credentials `PermissionDenied`, the rest (a registry or disk
/// that failed, maybe for now) `Unavailable`.
pub fn status(e: Error) -> Status {
    use std::io::ErrorKind as K;
    let msg = e.to_string();
    match e.kind() {
        K::NotFound if matches!(e, Error::NoDevice(_)) => Status::not_found(msg),
        K::AlreadyExists => Status::already_exists(msg),
        K::InvalidInput | K::InvalidData | K::UnexpectedEof | K::Unsupported => {
            Status::invalid_argument(msg)
        }
        K::PermissionDenied => Status::permission_denied(msg),
        _ => Status::unavailable(msg),
    }
}

fn device(i: DeviceInfo) -> pb::Device {
    let s = |p: Option<PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
    pb::Device {
        id: i.id,
        config_path: i.config_path.display().to_string(),
        size: i.size,
        read_only: i.read_only,
        loop_device: s(i.loop_device),
        fuse_file: s(i.fuse_file),
        nbd_export: i.nbd_export.unwrap_or_default(),
        trace_mode: i.trace_mode,
        recording: i.recording,
        state: i.state,
    }
}

#[derive(Debug, Clone)]
struct Api(Arc<Daemon>);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)
}

#[tonic::async_trait]
impl pb::daemon_server::Daemon for Api {
    async fn attach(&self, r: Request<pb::AttachRequest>) -> Result<Response<pb::Device>, Status> {
        let r = r.into_inner();
        let d = self.0.clone();
        let exports = Exports {
            block: r.block,
            nbd: r.nbd,
        };
        let info = blocking(move || d.attach(&r.id, Path::new(&r.config_path), exports)).await?;
        Ok(Response::new(device(info)))
    }

    async fn detach(
        &self,
        r: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachResponse>, Status> {
        let id = r.into_inner().id;
        let d = self.0.clone();
        blocking(move || d.detach(&id)).await?;
        Ok(Response::new(pb::DetachResponse {}))
    }

    async fn list(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let devices = self.0.list().into_iter().map(device).collect();
        Ok(Response::new(pb::ListResponse { devices }))
    }

    async fn stats(
        &self,
        r: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let prometheus = self.0.device_stats(&r.into_inner().id).map_err(status)?;
        Ok(Response::new(pb::StatsResponse { prometheus }))
    }

    async fn start_trace(
        &self,
        r: Request<pb::StartTraceRequest>,
    ) -> Result<Response<pb::TraceResponse>, Status> {
        let r = r.into_inner();
        let d = self.0.clone();
        let path = r.path.clone();
        blocking(move || d.start_trace(&r.id, Path::new(&r.path))).await?;
        Ok(Response::new(pb::TraceResponse { path }))
    }

    async fn stop_trace(
        &self,
        r: Request<pb::StopTraceRequest>,
    ) -> Result<Response<pb::TraceResponse>, Status> {
        let id = r.into_inner().id;
        let d = self.0.clone();
        let p = blocking(move || d.stop_trace(&id)).await?;
        Ok(Response::new(pb::TraceResponse {
            path: p.map(|p| p.display().to_string()).unwrap_or_default(),
        }))
    }
}

/// Serves the API on `socket` (replaced if it exists, mode 0600) until `shutdown` resolves.
pub async fn serve(
    daemon: Arc<Daemon>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("create", dir.display().to_string(), e))?;
    }
    let l = overlaybd_api::bind_private_unix(socket)
        .map_err(|e| Error::io("bind", socket.display().to_string(), e))?;
    l.set_nonblocking(true)
        .map_err(|e| Error::io("bind", socket.display().to_string(), e))?;
    let l = tokio::net::UnixListener::from_std(l)
        .map_err(|e| Error::io("bind", socket.display().to_string(), e))?;
    tonic::transport::Server::builder()
        .add_service(DaemonServer::new(Api(daemon)))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(l), shutdown)
        .await
        .map_err(|e| {
            Error::io(
                "serve",
                socket.display().to_string(),
                std::io::Error::other(e),
            )
        })
}
