//! `rpull`: pulls an image into containerd through this snapshotter with the labels that
//! `ctr images pull` does not send (overlaybd's `ctr rpull`), so overlaybd layers stay remote.
//!
//! It does what containerd's client-side pull does: resolves the reference at the registry,
//! writes the manifest (and index) and config into containerd's content store with the
//! garbage-collection labels, then, layer by layer, `Prepare`s the layer's snapshot with
//! `containerd.io/snapshot.ref`, `containerd.io/snapshot/image-ref` and the layer's
//! `containerd.io/snapshot/*` annotations. The snapshotter answers AlreadyExists for a layer it
//! serves remotely; any other layer (a plain OCI layer, the trace layer, a layer whose blob the
//! snapshotter could not read) is fetched into the content store, applied with containerd's
//! Diff service and committed. Finally the image record is created (or updated). All of it
//! under a lease, so containerd's garbage collector leaves the pieces alone meanwhile.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use overlaybd_oci::{chain_ids, sha256_digest as sha256, Reference};
use overlaybd_registry::{Access, Credentials, DockerConfig, Repository, RepositoryOptions};
use serde::Deserialize;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::proto::{content, diff, images, leases, snapshots, types};
use overlaybd_oci::label as labels;

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// containerd's socket.
    pub address: PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    /// Talk plain HTTP to the registry when no `hosts.toml` says otherwise.
    pub plain_http: bool,
    /// containerd's hosts directory.
    pub hosts_dir: Option<PathBuf>,
    /// `user:password`, else Docker's `config.json`.
    pub credentials: Option<Credentials>,
    /// Ask the snapshotter to download overlaybd layers instead of serving them remotely
    /// (overlaybd's `--download-blobs`).
    pub download_blobs: bool,
}

/// What a pull did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pulled {
    pub name: String,
    pub manifest_digest: String,
    pub layers: usize,
    /// Layers the snapshotter serves remotely.
    pub remote: usize,
    /// Layers fetched and unpacked by containerd.
    pub unpacked: usize,
    /// Layers whose snapshot already existed.
    pub existing: usize,
    pub bytes_fetched: u64,
}

#[derive(Deserialize)]
struct Desc {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Document {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Desc>,
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// The image's repository, through the one registry client (blocking).
struct Registry {
    repo: Repository,
}

impl Registry {
    fn open(r: &Reference, opts: &Options) -> Result<Registry> {
        let docker_config = match &opts.credentials {
            Some(_) => None,
            None => DockerConfig::load_configured(None)?.map(std::sync::Arc::new),
        };
        let ropts = RepositoryOptions {
            plain_http: opts.plain_http,
            hosts_dir: opts.hosts_dir.clone().filter(|d| d.is_dir()),
            docker_config,
            credentials: opts.credentials.clone(),
            ..Default::default()
        };
        Ok(Registry {
            repo: Repository::open(&r.host, &r.repository, &ropts, Access::Pull)?,
        })
    }

    /// A manifest or index (at most 4 MiB, checked against its digest when fetched by one)
    /// and its media type.
    fn manifest(&self, reference: &str) -> Result<(Vec<u8>, String)> {
        let (b, mt) = self.repo.manifest(reference)?;
        Ok((b, mt.unwrap_or_default()))
    }

    /// A blob into `out`, checked against its digest and size.
    fn blob(&self, digest: &str, size: i64, out: &mut dyn Write) -> Result<u64> {
        let size = u64::try_from(size)
            .map_err(|_| Error::InvalidArgument(format!("blob {digest}: negative size {size}")))?;
        Ok(self.repo.blob_to(digest, Some(size), out)?)
    }
}

/// A connection to containerd in one namespace (and lease).
#[derive(Clone)]
struct Containerd {
    ch: Channel,
    namespace: String,
    lease: Option<String>,
}

impl Containerd {
    fn req<T>(&self, m: T) -> tonic::Request<T> {
        self.with_headers(tonic::Request::new(m))
    }

    /// containerd's namespace (and lease, when there is one) on a request.
    fn with_headers<T>(&self, mut r: tonic::Request<T>) -> tonic::Request<T> {
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

    async fn has_content(&self, digest: &str) -> Result<bool> {
        let mut c = content::content_client::ContentClient::new(self.ch.clone());
        match c
            .info(self.req(content::InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(Error::Unavailable(format!(
                "containerd content info {digest}: {}",
                s.message()
            ))),
        }
    }

    /// Writes `bytes` as content `digest` with `labels` (already present: fine).
    async fn write_content(
        &self,
        digest: &str,
        bytes: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.write_streamed(digest, bytes.len() as i64, labels, |w| {
            w.write_all(&bytes)
                .map_err(|e| Error::io(format!("content {digest}"), e))?;
            Ok(bytes.len() as u64)
        })
        .await
        .map(drop)
    }

    /// Streams what `produce` writes (a blob of `total` bytes, which it checks against
    /// `digest`) into containerd's content store, 1 MiB at a time: the blob is never whole in
    /// memory. containerd commits it only if `produce` succeeds (and checks the digest too);
    /// otherwise the ingest is aborted. Returns what `produce` returned.
    async fn write_streamed(
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
        let produced = blocking(|| {
            let mut w = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let n = produce(&mut w)?;
            w.flush()
                .map_err(|e| Error::io(format!("blob {digest}"), e))?;
            Ok(n)
        });
        if produced.is_ok() {
            // containerd stopped reading only if it failed: its error is the one below.
            let _ = tx.send(Chunk::End).await;
        }
        drop(tx);
        let written = writing
            .await
            .map_err(|e| Error::Unavailable(format!("write content {digest}: {e}")))?;
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
    async fn abort_ingest(&self, digest: &str) {
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
                let m = content::WriteContentRequest {
                    action: content::WriteAction::Write as i32,
                    r#ref: r.clone(),
                    total,
                    offset: off,
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
                        Err(st) => {
                            return Err(Error::Unavailable(format!(
                                "write content {digest}: {}",
                                st.message()
                            )))
                        }
                    }
                }
            }
            Err(st) if st.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(st) => Err(Error::Unavailable(format!(
                "write content {digest}: {}",
                st.message()
            ))),
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

fn status(what: &str) -> impl FnOnce(tonic::Status) -> Error + '_ {
    move |s| match s.code() {
        tonic::Code::NotFound => Error::NotFound(format!("{what}: {}", s.message())),
        tonic::Code::AlreadyExists => Error::AlreadyExists(format!("{what}: {}", s.message())),
        _ => Error::Unavailable(format!("{what}: {}", s.message())),
    }
}

/// Connects to containerd's socket.
pub async fn channel(socket: &Path) -> Result<Channel> {
    overlaybd_api::unix_channel(socket)
        .await
        .map_err(|e| Error::Unavailable(format!("containerd: {e}")))
}

/// Pulls `image` (a registry reference) into containerd. Blocking: it runs its own runtime
/// (the registry client is a blocking one, called with `block_in_place`).
pub fn rpull(image: &str, opts: &Options) -> Result<Pulled> {
    let r = Reference::parse(image).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let reg = Registry::open(&r, opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("start a runtime", e))?;
    rt.block_on(pull(&r, &reg, opts))
}

fn blocking<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    tokio::task::block_in_place(f)
}

async fn pull(r: &Reference, reg: &Registry, opts: &Options) -> Result<Pulled> {
    let name = match (&r.tag, &r.digest) {
        (_, Some(d)) => format!("{}/{}@{d}", r.host, r.repository),
        (Some(t), None) => format!("{}/{}:{t}", r.host, r.repository),
        (None, None) => format!("{}/{}:latest", r.host, r.repository),
    };
    let reference = r
        .digest
        .clone()
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let mut fetched = 0u64;

    // Resolve: the top document, and the manifest for this platform.
    let (top, top_mt) = blocking(|| reg.manifest(&reference))?;
    fetched += top.len() as u64;
    let top_digest = sha256(&top);
    let doc: Document = serde_json::from_slice(&top)
        .map_err(|e| Error::InvalidArgument(format!("manifest of {name}: {e}")))?;
    let top_mt = if top_mt.is_empty() {
        doc.media_type.clone()
    } else {
        top_mt
    };
    let mut index: Option<(Vec<u8>, String, Desc)> = None;
    let (manifest, manifest_mt) = if !doc.manifests.is_empty() {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        let pick = doc
            .manifests
            .into_iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .ok_or_else(|| Error::NotFound(format!("{name}: no manifest for linux/{arch}")))?;
        let (b, mt) = blocking(|| reg.manifest(&pick.digest))?;
        fetched += b.len() as u64;
        index = Some((top.clone(), top_mt.clone(), pick));
        (b, mt)
    } else {
        (top.clone(), top_mt.clone())
    };
    let manifest_digest = sha256(&manifest);
    let m: Document = serde_json::from_slice(&manifest)
        .map_err(|e| Error::InvalidArgument(format!("manifest of {name}: {e}")))?;
    let config_desc = m
        .config
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument(format!("{name}: the manifest has no config")))?;
    let mut config = Vec::new();
    blocking(|| reg.blob(&config_desc.digest, config_desc.size, &mut config))?;
    fetched += config.len() as u64;
    let cfg: ImageConfig = serde_json::from_slice(&config)
        .map_err(|e| Error::InvalidArgument(format!("config of {name}: {e}")))?;
    if cfg.rootfs.diff_ids.len() != m.layers.len() {
        return Err(Error::InvalidArgument(format!(
            "{name}: {} layers but {} diff IDs",
            m.layers.len(),
            cfg.rootfs.diff_ids.len()
        )));
    }
    let chains = chain_ids(&cfg.rootfs.diff_ids);

    // Everything below happens under a lease.
    let ch = channel(&opts.address).await?;
    let mut ctd = Containerd {
        ch: ch.clone(),
        namespace: opts.namespace.clone(),
        lease: None,
    };
    let lease_id = format!("rpull-{}", crate::store::now_ns());
    {
        let mut l = leases::leases_client::LeasesClient::new(ch.clone());
        let mut labels = HashMap::new();
        labels.insert("containerd.io/gc.expire".to_string(), {
            let t = std::time::SystemTime::now() + Duration::from_secs(3600);
            humantime_rfc3339(t)
        });
        l.create(ctd.req(leases::CreateRequest {
            id: lease_id.clone(),
            labels,
        }))
        .await
        .map_err(status("create a lease"))?;
    }
    ctd.lease = Some(lease_id.clone());
    let result = async {
        let gc_snapshot = format!("containerd.io/gc.ref.snapshot.{}", opts.snapshotter);
        let mut l = HashMap::new();
        l.insert(gc_snapshot, chains.last().cloned().unwrap_or_default());
        ctd.write_content(&config_desc.digest, config.clone(), l)
            .await?;
        let mut l = HashMap::new();
        l.insert(
            "containerd.io/gc.ref.content.config".to_string(),
            config_desc.digest.clone(),
        );
        for (i, d) in m.layers.iter().enumerate() {
            l.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                d.digest.clone(),
            );
        }
        ctd.write_content(&manifest_digest, manifest.clone(), l)
            .await?;
        if let Some((b, _, pick)) = &index {
            let mut l = HashMap::new();
            l.insert(
                "containerd.io/gc.ref.content.m.0".to_string(),
                pick.digest.clone(),
            );
            ctd.write_content(&top_digest, b.clone(), l).await?;
        }

        let mut out = Pulled {
            name: name.clone(),
            manifest_digest: manifest_digest.clone(),
            layers: m.layers.len(),
            ..Default::default()
        };
        let mut sn = snapshots::snapshots_client::SnapshotsClient::new(ch.clone());
        for (i, layer) in m.layers.iter().enumerate() {
            let chain = &chains[i];
            let parent = if i == 0 {
                String::new()
            } else {
                chains[i - 1].clone()
            };
            let stat = sn
                .stat(ctd.req(snapshots::StatSnapshotRequest {
                    snapshotter: opts.snapshotter.clone(),
                    key: chain.clone(),
                }))
                .await;
            if stat.is_ok() {
                out.existing += 1;
                continue;
            }
            let mut labels: HashMap<String, String> = layer
                .annotations
                .iter()
                .filter(|(k, _)| k.starts_with("containerd.io/snapshot/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.insert(labels::TARGET_REF.into(), chain.clone());
            labels.insert(labels::IMAGE_REF.into(), name.clone());
            if opts.download_blobs {
                labels.insert(labels::DOWNLOAD_REMOTE_BLOB.into(), "download".into());
            }
            let key = format!("extract-{}-{i} {chain}", crate::store::now_ns());
            let prep = sn
                .prepare(ctd.req(snapshots::PrepareSnapshotRequest {
                    snapshotter: opts.snapshotter.clone(),
                    key: key.clone(),
                    parent: parent.clone(),
                    labels: labels.clone(),
                }))
                .await;
            let mounts = match prep {
                Ok(r) => r.into_inner().mounts,
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    out.remote += 1;
                    continue;
                }
                Err(s) => return Err(status(&format!("prepare layer {i} ({})", layer.digest))(s)),
            };
            // Unpacked by containerd: fetch the blob, apply it, commit.
            let unpack = async {
                if !ctd.has_content(&layer.digest).await? {
                    fetched += ctd
                        .write_streamed(&layer.digest, layer.size, HashMap::new(), |out| {
                            reg.blob(&layer.digest, layer.size, out)
                        })
                        .await?;
                }
                let mut df = diff::diff_client::DiffClient::new(ch.clone());
                df.apply(ctd.req(diff::ApplyRequest {
                    diff: Some(types::Descriptor {
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    payloads: HashMap::new(),
                }))
                .await
                .map_err(status(&format!("apply layer {i} ({})", layer.digest)))?;
                sn.clone()
                    .commit(
                        ctd.req(snapshots::CommitSnapshotRequest {
                            snapshotter: opts.snapshotter.clone(),
                            name: chain.clone(),
                            key: key.clone(),
                            labels: labels
                                .iter()
                                .filter(|(k, _)| k.as_str() != labels::TARGET_REF)
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect(),
                        }),
                    )
                    .await
                    .map_err(status(&format!("commit layer {i}")))?;
                Ok::<(), Error>(())
            }
            .await;
            if let Err(e) = unpack {
                let _ = sn
                    .remove(ctd.req(snapshots::RemoveSnapshotRequest {
                        snapshotter: opts.snapshotter.clone(),
                        key,
                    }))
                    .await;
                return Err(e);
            }
            out.unpacked += 1;
        }

        // The image record.
        let (target_digest, target_mt, target_size) = match &index {
            Some((b, mt, _)) => (top_digest.clone(), mt.clone(), b.len() as i64),
            None => (
                manifest_digest.clone(),
                manifest_mt.clone(),
                manifest.len() as i64,
            ),
        };
        let img = images::Image {
            name: name.clone(),
            labels: HashMap::new(),
            target: Some(types::Descriptor {
                media_type: target_mt,
                digest: target_digest,
                size: target_size,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let mut ic = images::images_client::ImagesClient::new(ch.clone());
        match ic
            .create(ctd.req(images::CreateImageRequest {
                image: Some(img.clone()),
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                ic.update(ctd.req(images::UpdateImageRequest {
                    image: Some(img),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into()],
                    }),
                }))
                .await
                .map_err(status("update the image"))?;
            }
            Err(s) => return Err(status("create the image")(s)),
        }
        out.bytes_fetched = fetched;
        Ok(out)
    }
    .await;
    // The lease ends with the pull; the delete goes without the lease header.
    ctd.lease = None;
    let mut l = leases::leases_client::LeasesClient::new(ch);
    let req = ctd.req(leases::DeleteRequest {
        id: lease_id,
        sync: false,
    });
    let _ = l.delete(req).await;
    result
}

/// RFC 3339 in UTC, seconds precision (containerd's `gc.expire` format).
fn humantime_rfc3339(t: std::time::SystemTime) -> String {
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
    fn chain_ids_and_times() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256(b"sha256:a sha256:b"));
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_764_633_600 + 3 * 3600 + 4 * 60 + 5);
        assert_eq!(humantime_rfc3339(t), "2025-12-02T03:04:05Z");
        assert_eq!(
            humantime_rfc3339(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
    }
}
