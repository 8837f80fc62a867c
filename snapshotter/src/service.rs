//! The gRPC edge: containerd's Snapshots service over [`Snapshotter`], on a unix socket
//! (mode 0600), with per-method counters and latency for Prometheus.

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::proto::snapshots as pb;
use crate::proto::types;
use crate::snapshotter::{Mount, Snapshotter};
use crate::store::{Kind, Snapshot};

const METHODS: [&str; 10] = [
    "prepare", "view", "mounts", "commit", "remove", "stat", "update", "list", "usage", "cleanup",
];

/// Calls, errors and latency per method.
#[derive(Debug, Default)]
pub struct Metrics {
    calls: [AtomicU64; METHODS.len()],
    errors: [AtomicU64; METHODS.len()],
    latency: [overlaybd_metrics::Histogram; METHODS.len()],
}

impl Metrics {
    fn record<T>(&self, method: usize, start: Instant, r: &Result<T, Status>) {
        self.calls[method].fetch_add(1, Ordering::Relaxed);
        // AlreadyExists is how a remote layer is announced, not a failure.
        if r.as_ref()
            .is_err_and(|s| s.code() != tonic::Code::AlreadyExists)
        {
            self.errors[method].fetch_add(1, Ordering::Relaxed);
        }
        self.latency[method].observe(start.elapsed());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, m) in METHODS.iter().enumerate() {
            let l = format!("method=\"{m}\"");
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            overlaybd_metrics::counter(
                &mut out,
                "overlaybd_snapshotter_calls_total",
                &l,
                get(&self.calls[i]),
            );
            overlaybd_metrics::counter(
                &mut out,
                "overlaybd_snapshotter_errors_total",
                &l,
                get(&self.errors[i]),
            );
            self.latency[i].render(&mut out, "overlaybd_snapshotter_call_seconds", &l);
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub sn: Arc<Snapshotter>,
    pub metrics: Arc<Metrics>,
}

fn mounts(m: Vec<Mount>) -> Vec<types::Mount> {
    m.into_iter()
        .map(|m| types::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn ts(ns: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    }
}

pub fn info(name: &str, s: &Snapshot) -> pb::Info {
    pb::Info {
        name: name.to_string(),
        parent: s.parent.clone(),
        kind: match s.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(ts(s.created)),
        updated_at: Some(ts(s.updated)),
        labels: s.labels.clone().into_iter().collect(),
    }
}

fn sorted(l: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

type ListStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

impl Service {
    async fn timed<T>(
        &self,
        method: usize,
        f: impl std::future::Future<Output = crate::Result<T>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let r = f.await.map(Response::new).map_err(Status::from);
        if let Err(s) = &r {
            if s.code() != tonic::Code::AlreadyExists && s.code() != tonic::Code::NotFound {
                tracing::warn!(method = METHODS[method], "{}", s.message());
            }
        }
        self.metrics.record(method, start, &r);
        r
    }
}

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for Service {
    async fn prepare(
        &self,
        r: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        tracing::debug!(key = r.key, parent = r.parent, labels = ?r.labels, "prepare");
        self.timed(0, async {
            let m = self
                .sn
                .prepare(&r.key, &r.parent, sorted(r.labels), Kind::Active)
                .await?;
            Ok(pb::PrepareSnapshotResponse { mounts: mounts(m) })
        })
        .await
    }

    async fn view(
        &self,
        r: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        tracing::debug!(key = r.key, parent = r.parent, "view");
        self.timed(1, async {
            let m = self
                .sn
                .prepare(&r.key, &r.parent, sorted(r.labels), Kind::View)
                .await?;
            Ok(pb::ViewSnapshotResponse { mounts: mounts(m) })
        })
        .await
    }

    async fn mounts(
        &self,
        r: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = r.into_inner();
        tracing::trace!(key = r.key, "mounts");
        self.timed(2, async {
            Ok(pb::MountsResponse {
                mounts: mounts(self.sn.mounts(&r.key).await?),
            })
        })
        .await
    }

    async fn commit(&self, r: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        tracing::debug!(name = r.name, key = r.key, "commit");
        self.timed(3, self.sn.commit(&r.name, &r.key, sorted(r.labels)))
            .await
    }

    async fn remove(&self, r: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        tracing::debug!(key = r.key, "remove");
        self.timed(4, self.sn.remove(&r.key)).await
    }

    async fn stat(
        &self,
        r: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = r.into_inner();
        tracing::trace!(key = r.key, "stat");
        self.timed(5, async {
            let s = self.sn.stat(&r.key)?;
            Ok(pb::StatSnapshotResponse {
                info: Some(info(&r.key, &s)),
            })
        })
        .await
    }

    async fn update(
        &self,
        r: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        self.timed(6, async {
            let i = r
                .info
                .ok_or_else(|| crate::Error::InvalidArgument("update: no info".into()))?;
            let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
            tracing::debug!(key = i.name, ?paths, labels = ?i.labels, "update");
            let s = self.sn.update(&i.name, sorted(i.labels), &paths).await?;
            Ok(pb::UpdateSnapshotResponse {
                info: Some(info(&i.name, &s)),
            })
        })
        .await
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<ListStream>, Status> {
        let r = r.into_inner();
        tracing::debug!(filters = ?r.filters, "list");
        self.timed(7, async {
            let all = self.sn.list(&r.filters)?;
            let batches: Vec<pb::ListSnapshotsResponse> = all
                .chunks(100)
                .map(|c| pb::ListSnapshotsResponse {
                    info: c.iter().map(|(k, s)| info(k, s)).collect(),
                })
                .collect();
            Ok(Box::pin(tokio_stream::iter(batches.into_iter().map(Ok))) as ListStream)
        })
        .await
    }

    async fn usage(
        &self,
        r: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let r = r.into_inner();
        tracing::debug!(key = r.key, "usage");
        self.timed(8, async {
            let (size, inodes) = self.sn.usage(&r.key)?;
            Ok(pb::UsageResponse {
                size: size as i64,
                inodes: inodes as i64,
            })
        })
        .await
    }

    async fn cleanup(&self, _r: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        tracing::debug!("cleanup");
        self.timed(9, self.sn.cleanup()).await
    }
}

/// Serves on the socket systemd passed (socket activation), else on `socket` (replaced if it
/// exists, mode 0600, and removed at the end), until `shutdown` resolves. A passed socket is
/// left as it is: systemd holds it for the next start.
pub async fn serve(
    svc: Service,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::Result<()> {
    let inherited =
        overlaybd_api::inherited_listener().map_err(|e| crate::Error::Internal(e.to_string()))?;
    let bound = inherited.is_none();
    let l = match inherited {
        Some(l) => {
            // Connections made while this process restarts wait in the socket's backlog.
            let at = l.local_addr().ok();
            let at = at.as_ref().and_then(|a| a.as_pathname());
            tracing::info!(socket = ?at, "serving the socket passed by systemd (socket activation)");
            if at != Some(socket) {
                tracing::warn!(
                    passed = ?at,
                    configured = %socket.display(),
                    "the passed socket is not the configured `socket`: containerd's \
                     proxy_plugins address must name the passed one"
                );
            }
            l
        }
        None => {
            if let Some(dir) = socket.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| crate::Error::io(format!("create {}", dir.display()), e))?;
            }
            overlaybd_api::bind_private_unix(socket)
                .map_err(|e| crate::Error::Internal(e.to_string()))?
        }
    };
    l.set_nonblocking(true)
        .map_err(|e| crate::Error::io("listen", e))?;
    let l = tokio::net::UnixListener::from_std(l).map_err(|e| crate::Error::io("listen", e))?;
    let served = tonic::transport::Server::builder()
        .add_service(pb::snapshots_server::SnapshotsServer::new(svc))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(l), shutdown)
        .await
        .map_err(|e| crate::Error::Internal(format!("gRPC server: {e}")));
    if bound {
        let _ = std::fs::remove_file(socket);
    }
    served
}

/// A client of a Snapshots service on a unix socket (containerd's own, or ours).
pub async fn connect(
    socket: &Path,
) -> crate::Result<
    containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient<
        tonic::transport::Channel,
    >,
> {
    let ch = overlaybd_api::unix_channel(socket)
        .await
        .map_err(|e| crate::Error::Unavailable(e.to_string()))?;
    Ok(containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient::new(ch))
}
