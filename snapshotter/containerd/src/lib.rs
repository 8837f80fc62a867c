//! The client side of containerd, over the `containerd-client` crate: a connection in a
//! namespace (and lease), content writes streamed in chunks, and `rpull`, the pull that passes
//! the snapshot labels overlaybd's snapshotter needs (what `ctr images pull` does not send).
//! The snapshotter's binary (`overlaybd-snapshotter rpull`, `obdctl rpull`), the convertor's
//! `record-trace` and the tests use it; it never serves gRPC.

pub mod record;
pub mod rpull;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1 as content;
use containerd_client::services::v1 as leases;
use tonic::transport::Channel;

/// What a conversation with containerd or the registry failed at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// containerd refused or failed a request.
    #[error("{what}: {message} ({code:?})")]
    Containerd {
        what: String,
        code: tonic::Code,
        message: String,
    },
    #[error(transparent)]
    Registry(#[from] overlaybd_registry::Error),
    #[error(transparent)]
    Oci(#[from] overlaybd_oci::Error),
    /// The image cannot be pulled as it is (no manifest for this platform, a config that does
    /// not match its manifest).
    #[error("{0}")]
    Image(String),
    #[error("{op} {what}: {cause}")]
    Io {
        op: &'static str,
        what: String,
        cause: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, what: impl Into<String>, cause: std::io::Error) -> Self {
        Error::Io {
            op,
            what: what.into(),
            cause,
        }
    }

    /// The gRPC code this error stands for (containerd's own code when it answered).
    pub fn code(&self) -> tonic::Code {
        use std::io::ErrorKind as K;
        let by_kind = |k: K| match k {
            K::NotFound => tonic::Code::NotFound,
            K::PermissionDenied => tonic::Code::PermissionDenied,
            K::InvalidInput | K::InvalidData => tonic::Code::InvalidArgument,
            _ => tonic::Code::Unavailable,
        };
        match self {
            Error::Containerd { code, .. } => *code,
            Error::Registry(e) => by_kind(e.kind()),
            Error::Oci(_) | Error::Image(_) => tonic::Code::InvalidArgument,
            Error::Io { cause, .. } => by_kind(cause.kind()),
        }
    }
}

/// A connection to containerd in one namespace (and lease).
#[derive(Clone, Debug)]
pub struct Containerd {
    ch: Channel,
    namespace: String,
    lease: Option<String>,
}

impl Containerd {
    pub fn req<T>(&self, m: T) -> tonic::Request<T> {
        self.with_headers(tonic::Request::new(m))
    }

    /// containerd's namespace (and lease, when there is one) on a request.
    pub fn with_headers<T>(&self, mut r: tonic::Request<T>) -> tonic::Request<T> {
        r.metadata_mut().insert(
            "containerd-namespace",
            self.namespace.parse().expect("ascii"),
        );
        if let Some(l) = &self.lease {
            r.metadata_mut()
                .insert("containerd-lease", l.parse().expect("ascii"));
        }
        r
    }

    pub async fn has_content(&self, digest: &str) -> Result<bool> {
        let mut c = content::content_client::ContentClient::new(self.ch.clone());
        match c
            .info(self.req(content::InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(status(&format!("containerd content info {digest}"))(s)),
        }
    }

    /// Writes `bytes` as content `digest` with `labels` (already present: fine).
    pub async fn write_content(
        &self,
        digest: &str,
        bytes: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.write_streamed(digest, bytes.len() as i64, labels, |w| {
            w.write_all(&bytes)
                .map_err(|e| Error::io("write content", digest, e))?;
            Ok(bytes.len() as u64)
        })
        .await
        .map(drop)
    }

    /// Streams what `produce` writes (a blob of `total` bytes, which it checks against
    /// `digest`) into containerd's content store, 1 MiB at a time: the blob is never whole in
    /// memory. containerd commits it only if `produce` succeeds (and checks the digest too);
    /// otherwise the ingest is aborted. Returns what `produce` returned.
    pub async fn write_streamed(
        &self,
        digest: &str,
        total: i64,
        labels: HashMap<String, String>,
        produce: impl FnOnce(&mut dyn Write) -> Result<u64>,
    ) -> Result<u64> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let me = self.clone();
        let d = digest.to_string();
        let writing = tokio::spawn(async move {
            me.write_chunks(
                d,
                total,
                labels,
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )
            .await
        });
        let produced = tokio::task::block_in_place(|| {
            let mut w = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let n = produce(&mut w)?;
            w.flush().map_err(|e| Error::io("write blob", digest, e))?;
            Ok(n)
        });
        if produced.is_ok() {
            // containerd stopped reading only if it failed: its error is the one below.
            let _ = tx.send(Chunk::End).await;
        }
        drop(tx);
        let written = writing.await.map_err(|e| Error::Io {
            op: "write content",
            what: digest.to_string(),
            cause: std::io::Error::other(e),
        })?;
        match (produced, written) {
            (Ok(n), Ok(())) => Ok(n),
            (Err(e), _) => {
                self.abort_ingest(digest).await;
                Err(e)
            }
            (Ok(_), Err(e)) => Err(e),
        }
    }

    /// Drops a partial ingest (best effort: containerd also expires stale ones).
    pub async fn abort_ingest(&self, digest: &str) {
        let mut c = content::content_client::ContentClient::new(self.ch.clone());
        let _ = c
            .abort(self.req(content::AbortRequest {
                r#ref: ingest_ref(digest),
            }))
            .await;
    }

    /// One content write: `Write` messages for the data, `Commit` at [`Chunk::End`]. A stream
    /// that ends without it leaves the ingest uncommitted.
    async fn write_chunks(
        &self,
        digest: String,
        total: i64,
        labels: HashMap<String, String>,
        chunks: tokio_stream::wrappers::ReceiverStream<Chunk>,
    ) -> Result<()> {
        use tokio_stream::StreamExt;
        let mut c = content::content_client::ContentClient::new(self.ch.clone());
        let r = ingest_ref(&digest);
        let expected = digest.clone();
        let mut labels = Some(labels);
        let mut off = 0i64;
        let msgs = chunks.map(move |chunk| match chunk {
            Chunk::Data(data) => {
                // `expected` from the first message on: containerd opens the writer with it,
                // and content it already has is then added to this connection's lease
                // (answered AlreadyExists). Without it, content left by an earlier pull whose
                // lease ended could be collected before the image record refers to it.
                let m = content::WriteContentRequest {
                    action: content::WriteAction::Write as i32,
                    r#ref: r.clone(),
                    total,
                    offset: off,
                    expected: expected.clone(),
                    data,
                    ..Default::default()
                };
                off += m.data.len() as i64;
                m
            }
            Chunk::End => content::WriteContentRequest {
                action: content::WriteAction::Commit as i32,
                r#ref: r.clone(),
                total,
                expected: expected.clone(),
                offset: off,
                labels: labels.take().unwrap_or_default(),
                ..Default::default()
            },
        });
        let req = self.with_headers(tonic::Request::new(msgs));
        match c.write(req).await {
            Ok(resp) => {
                let mut s = resp.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => return Ok(()),
                        Err(st) if st.code() == tonic::Code::AlreadyExists => return Ok(()),
                        Err(st) => return Err(status(&format!("write content {digest}"))(st)),
                    }
                }
            }
            Err(st) if st.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(st) => Err(status(&format!("write content {digest}"))(st)),
        }
    }
}

/// Bytes per `Write` message of a content write.
const CHUNK: usize = 1 << 20;

/// What a content write sends: data, then the commit.
enum Chunk {
    Data(Vec<u8>),
    End,
}

fn ingest_ref(digest: &str) -> String {
    format!("rpull-{digest}")
}

/// A `Write` that hands 1 MiB chunks to a content write (blocking while containerd catches
/// up: at most a few chunks are in memory).
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Chunk>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Chunk::Data(chunk))
            .map_err(|_| std::io::Error::other("containerd stopped reading the content write"))
    }
}

/// A containerd answer as an [`Error`] naming what was asked.
pub fn status(what: &str) -> impl FnOnce(tonic::Status) -> Error + '_ {
    move |s| Error::Containerd {
        what: what.to_string(),
        code: s.code(),
        message: s.message().to_string(),
    }
}

/// Connects to containerd's socket.
pub async fn channel(socket: &Path) -> Result<Channel> {
    overlaybd_api::unix_channel(socket)
        .await
        .map_err(|cause| Error::Io {
            op: "reach containerd at",
            what: socket.display().to_string(),
            cause,
        })
}

/// A runtime for the blocking entry points ([`rpull::rpull`], [`record::record_trace`]).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("start", "a runtime", e))
}

/// A new lease id (unique per process and moment).
fn lease_id(what: &str) -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{what}-{}-{ns}", std::process::id())
}

impl Containerd {
    /// Connects to containerd's socket, in `namespace`.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd> {
        Ok(Containerd {
            ch: channel(socket).await?,
            namespace: namespace.to_string(),
            lease: None,
        })
    }

    pub fn channel(&self) -> Channel {
        self.ch.clone()
    }

    /// Starts a lease (expiring after an hour, should this process die) that every later
    /// request of this connection runs under, so containerd's garbage collector leaves what
    /// they create alone until [`Containerd::end_lease`].
    pub async fn start_lease(&mut self, what: &str) -> Result<()> {
        let id = lease_id(what);
        let mut l = leases::leases_client::LeasesClient::new(self.ch.clone());
        let mut labels = HashMap::new();
        labels.insert(
            "containerd.io/gc.expire".to_string(),
            rfc3339(SystemTime::now() + Duration::from_secs(3600)),
        );
        l.create(self.req(leases::CreateRequest {
            id: id.clone(),
            labels,
        }))
        .await
        .map_err(status("create a lease"))?;
        self.lease = Some(id);
        Ok(())
    }

    /// Ends the lease (best effort: it expires on its own); the delete goes without the lease
    /// header.
    pub async fn end_lease(&mut self) {
        let Some(id) = self.lease.take() else {
            return;
        };
        let mut l = leases::leases_client::LeasesClient::new(self.ch.clone());
        let _ = l
            .delete(self.req(leases::DeleteRequest { id, sync: false }))
            .await;
    }
}

/// RFC 3339 in UTC, seconds precision (containerd's `gc.expire` format).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_secs(1_764_633_600 + 3 * 3600 + 4 * 60 + 5);
        assert_eq!(rfc3339(t), "2025-12-02T03:04:05Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
