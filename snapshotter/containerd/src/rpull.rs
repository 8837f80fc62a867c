//! `rpull`: pulls an image into containerd through a snapshotter with the labels that
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
use std::path::PathBuf;
use std::sync::Arc;

// containerd's client API from `containerd-client` (one flat module per API version; the
// aliases say which service each message belongs to).
use containerd_client::services::v1 as diff;
use containerd_client::services::v1 as images;
use containerd_client::services::v1::snapshots;
use containerd_client::types;
use overlaybd_oci::label as labels;
use overlaybd_oci::{chain_ids, sha256_digest, Descriptor, Document, Manifest, Reference};
use overlaybd_registry::{Access, Credentials, DockerConfig, Repository, RepositoryOptions};

use crate::{status, Containerd, Error, Result};

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
    /// Fail instead of letting containerd download an overlaybd layer the snapshotter could
    /// not read lazily.
    pub no_fallback: bool,
}

/// An overlaybd layer containerd downloaded and unpacked instead of the snapshotter reading it
/// lazily.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotLazy {
    /// Position in the manifest (0 = bottom).
    pub layer: usize,
    pub digest: String,
    /// The snapshotter's reason (empty when it gave none: not this project's snapshotter?).
    pub why: String,
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
    /// Of the remote and unpacked layers, TurboOCI meta layers (their files are read lazily
    /// from the original layers; the snapshotter fetches their small meta blobs, or containerd
    /// unpacks them when it could not).
    pub turbo_oci: usize,
    /// Layers whose snapshot already existed.
    pub existing: usize,
    pub bytes_fetched: u64,
    /// The image config (for a run of the image: command, environment, user).
    pub config: Vec<u8>,
    /// The committed snapshot of the top layer: the parent of a container's rootfs.
    pub top_chain: String,
    /// overlaybd layers that were downloaded instead of read lazily, and why.
    pub not_lazy: Vec<NotLazy>,
}

/// containerd's name of the image a reference names (`host/repo:tag` or `host/repo@digest`).
pub fn image_name(r: &Reference) -> String {
    match (&r.tag, &r.digest) {
        (_, Some(d)) => format!("{}/{}@{d}", r.host, r.repository),
        (Some(t), None) => format!("{}/{}:{t}", r.host, r.repository),
        (None, None) => format!("{}/{}:latest", r.host, r.repository),
    }
}

/// The image's repository, through the one registry client (blocking).
fn open_registry(r: &Reference, opts: &Options) -> Result<Repository> {
    let docker_config = match &opts.credentials {
        Some(_) => None,
        None => DockerConfig::load_configured(None)?.map(Arc::new),
    };
    let ropts = RepositoryOptions {
        plain_http: opts.plain_http,
        hosts_dir: opts.hosts_dir.clone().filter(|d| d.is_dir()),
        docker_config,
        credentials: opts.credentials.clone(),
        ..Default::default()
    };
    Ok(Repository::open(
        &r.host,
        &r.repository,
        &ropts,
        Access::Pull,
    )?)
}

/// The documents of one platform's image, as the registry served them.
struct Resolved {
    name: String,
    /// The index (bytes, media type) and the descriptor picked from it, when the reference
    /// names an index.
    index: Option<(Vec<u8>, String, Descriptor)>,
    manifest: Vec<u8>,
    manifest_type: String,
    m: Manifest,
    config: Vec<u8>,
    /// The layers' chain IDs: the names of their committed snapshots.
    chains: Vec<String>,
    /// Bytes read from the registry so far.
    fetched: u64,
}

/// The platform name of this machine in OCI's terms.
fn this_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// Reads the top document, the manifest for this platform, and the config.
fn resolve(r: &Reference, reg: &Repository) -> Result<Resolved> {
    let name = image_name(r);
    let reference = r
        .digest
        .clone()
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let (top, top_mt) = reg.manifest(&reference)?;
    let mut fetched = top.len() as u64;
    let top_doc = overlaybd_oci::parse_document(&top, top_mt.as_deref())
        .map_err(|e| Error::Image(format!("manifest of {name}: {e}")))?;
    let (index, manifest, manifest_type, m) = match top_doc {
        Document::Manifest(m) => {
            let mt = top_mt.or_else(|| m.media_type.clone()).unwrap_or_default();
            (None, top, mt, *m)
        }
        Document::Index(idx) => {
            let arch = this_arch();
            let pick = idx
                .manifests
                .iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .cloned()
                .ok_or_else(|| Error::Image(format!("{name}: no manifest for linux/{arch}")))?;
            let (b, mt) = reg.manifest(&pick.digest)?;
            fetched += b.len() as u64;
            let m = match overlaybd_oci::parse_document(&b, mt.as_deref())
                .map_err(|e| Error::Image(format!("manifest of {name}: {e}")))?
            {
                Document::Manifest(m) => *m,
                Document::Index(_) => {
                    return Err(Error::Image(format!(
                        "{name}: the index points at another index"
                    )))
                }
            };
            let idx_mt = top_mt.or(idx.media_type).unwrap_or_default();
            let mt = mt.or_else(|| m.media_type.clone()).unwrap_or_default();
            (Some((top, idx_mt, pick)), b, mt, m)
        }
    };
    let mut config = Vec::new();
    reg.blob_to(&m.config.digest, Some(m.config.size), &mut config)?;
    fetched += config.len() as u64;
    let cfg: serde_json::Value = serde_json::from_slice(&config)
        .map_err(|e| Error::Image(format!("config of {name}: {e}")))?;
    let diff_ids = overlaybd_oci::diff_ids(&cfg)?;
    if diff_ids.len() != m.layers.len() {
        return Err(Error::Image(format!(
            "{name}: {} layers but {} diff IDs",
            m.layers.len(),
            diff_ids.len()
        )));
    }
    Ok(Resolved {
        name,
        index,
        manifest,
        manifest_type,
        m,
        config,
        chains: chain_ids(&diff_ids),
        fetched,
    })
}

/// Pulls `image` (a registry reference) into containerd. Blocking: it runs its own runtime
/// (the registry client is a blocking one, called with `block_in_place`).
pub fn rpull(image: &str, opts: &Options) -> Result<Pulled> {
    crate::runtime()?.block_on(pull_image(image, opts))
}

/// [`rpull`] on a runtime of the caller's (multi-threaded: the registry client is blocking
/// and runs under `block_in_place`).
pub async fn pull_image(image: &str, opts: &Options) -> Result<Pulled> {
    let r = Reference::parse(image)?;
    let reg = tokio::task::block_in_place(|| open_registry(&r, opts))?;
    let img = tokio::task::block_in_place(|| resolve(&r, &reg))?;
    let mut ctd = Containerd::connect(&opts.address, &opts.namespace).await?;
    ctd.start_lease("rpull").await?;
    let result = pull(&ctd, &reg, &img, opts).await;
    ctd.end_lease().await;
    result
}

/// Writes the documents, the layers' snapshots and the image record (under `ctd`'s lease).
async fn pull(
    ctd: &Containerd,
    reg: &Repository,
    img: &Resolved,
    opts: &Options,
) -> Result<Pulled> {
    write_documents(ctd, img, opts).await?;
    let mut out = Pulled {
        name: img.name.clone(),
        manifest_digest: sha256_digest(&img.manifest),
        layers: img.m.layers.len(),
        bytes_fetched: img.fetched,
        config: img.config.clone(),
        top_chain: img.chains.last().cloned().unwrap_or_default(),
        ..Default::default()
    };
    for i in 0..img.m.layers.len() {
        let l = layer(ctd, reg, img, i, opts).await?;
        if is_turbo_oci(&img.m.layers[i]) && !matches!(l, Layer::Existing) {
            out.turbo_oci += 1;
        }
        match l {
            Layer::Existing => out.existing += 1,
            Layer::Remote => out.remote += 1,
            Layer::Unpacked(n, not_lazy) => {
                out.unpacked += 1;
                out.bytes_fetched += n;
                out.not_lazy.extend(not_lazy);
            }
        }
    }
    image_record(ctd, img).await?;
    Ok(out)
}

/// The config, the manifest and the index into the content store, with the labels that keep
/// what they reference from containerd's garbage collector.
async fn write_documents(ctd: &Containerd, img: &Resolved, opts: &Options) -> Result<()> {
    let gc_snapshot = format!("containerd.io/gc.ref.snapshot.{}", opts.snapshotter);
    let mut l = HashMap::new();
    l.insert(gc_snapshot, img.chains.last().cloned().unwrap_or_default());
    ctd.write_content(&img.m.config.digest, img.config.clone(), l)
        .await?;
    let mut l = HashMap::new();
    l.insert(
        "containerd.io/gc.ref.content.config".to_string(),
        img.m.config.digest.clone(),
    );
    for (i, d) in img.m.layers.iter().enumerate() {
        l.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            d.digest.clone(),
        );
    }
    ctd.write_content(&sha256_digest(&img.manifest), img.manifest.clone(), l)
        .await?;
    if let Some((b, _, pick)) = &img.index {
        let mut l = HashMap::new();
        l.insert(
            "containerd.io/gc.ref.content.m.0".to_string(),
            pick.digest.clone(),
        );
        ctd.write_content(&sha256_digest(b), b.clone(), l).await?;
    }
    Ok(())
}

/// What became of one layer.
enum Layer {
    /// Its snapshot was there already.
    Existing,
    /// The snapshotter serves it remotely.
    Remote,
    /// Fetched (that many bytes from the registry), applied and committed by containerd; an
    /// overlaybd layer says why it was not read lazily.
    Unpacked(u64, Option<NotLazy>),
}

fn descriptor(d: &Descriptor) -> types::Descriptor {
    types::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size as i64,
        annotations: HashMap::new(),
    }
}

/// Layer `i`: `Prepare` with the snapshot labels; a layer the snapshotter does not serve
/// remotely is unpacked by containerd.
async fn layer(
    ctd: &Containerd,
    reg: &Repository,
    img: &Resolved,
    i: usize,
    opts: &Options,
) -> Result<Layer> {
    let layer = &img.m.layers[i];
    let chain = &img.chains[i];
    let parent = if i == 0 {
        String::new()
    } else {
        img.chains[i - 1].clone()
    };
    let mut sn = snapshots::snapshots_client::SnapshotsClient::new(ctd.channel());
    let stat = sn
        .stat(ctd.req(snapshots::StatSnapshotRequest {
            snapshotter: opts.snapshotter.clone(),
            key: chain.clone(),
        }))
        .await;
    if stat.is_ok() {
        return Ok(Layer::Existing);
    }
    let mut labels: HashMap<String, String> = layer
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("containerd.io/snapshot/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(labels::TARGET_REF.into(), chain.clone());
    labels.insert(labels::IMAGE_REF.into(), img.name.clone());
    if opts.download_blobs {
        labels.insert(labels::DOWNLOAD_REMOTE_BLOB.into(), "download".into());
    }
    if opts.plain_http {
        labels.insert(labels::PLAIN_HTTP.into(), "true".into());
    }
    let key = format!("extract-{}-{i} {chain}", crate::lease_id("layer"));
    let prep = sn
        .prepare(ctd.req(snapshots::PrepareSnapshotRequest {
            snapshotter: opts.snapshotter.clone(),
            key: key.clone(),
            parent,
            labels: labels.clone(),
        }))
        .await;
    let mounts = match prep {
        Ok(r) => r.into_inner().mounts,
        Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(Layer::Remote),
        Err(s) => return Err(status(&format!("prepare layer {i} ({})", layer.digest))(s)),
    };
    labels.remove(labels::TARGET_REF);
    let not_lazy = not_lazy(ctd, &mut sn, layer, i, &key, opts).await;
    let unpacked =
        match (&not_lazy, opts.no_fallback) {
            (Some(n), true) => {
                Err(Error::Image(format!(
            "layer {}/{} ({}) cannot be read lazily, and --no-fallback forbids downloading \
             it: {}",
            i + 1,
            img.m.layers.len(),
            n.digest,
            if n.why.is_empty() { "the snapshotter gave no reason" } else { &n.why }
        )))
            }
            _ => unpack(ctd, reg, layer, i, mounts, &key, chain, labels, opts).await,
        };
    if unpacked.is_err() {
        let _ = sn
            .remove(ctd.req(snapshots::RemoveSnapshotRequest {
                snapshotter: opts.snapshotter.clone(),
                key,
            }))
            .await;
    }
    unpacked.map(|n| Layer::Unpacked(n, not_lazy))
}

/// For an overlaybd layer the snapshotter prepared for unpacking: why it is not read lazily
/// (the snapshotter's `not-remote` label on the snapshot). `None` for other layers, and for
/// those `--download-blobs` asked to download.
async fn not_lazy(
    ctd: &Containerd,
    sn: &mut snapshots::snapshots_client::SnapshotsClient<tonic::transport::Channel>,
    layer: &Descriptor,
    i: usize,
    key: &str,
    opts: &Options,
) -> Option<NotLazy> {
    let overlaybd = layer
        .annotation(labels::BLOB_DIGEST)
        .is_some_and(|d| !d.is_empty());
    let accel = layer.annotation(labels::ACCELERATION_LAYER) == Some("yes");
    if !overlaybd || accel || opts.download_blobs || is_turbo_oci(layer) {
        return None;
    }
    let info = sn
        .stat(ctd.req(snapshots::StatSnapshotRequest {
            snapshotter: opts.snapshotter.clone(),
            key: key.to_string(),
        }))
        .await
        .ok()?
        .into_inner()
        .info?;
    Some(NotLazy {
        layer: i,
        digest: layer.digest.clone(),
        why: info
            .labels
            .get(labels::NOT_REMOTE)
            .cloned()
            .unwrap_or_default(),
    })
}

/// A TurboOCI meta layer: unpacking its small blob is how it is read lazily (its files come
/// from the original layer), so it is not a fallback.
fn is_turbo_oci(layer: &Descriptor) -> bool {
    layer
        .annotations
        .as_ref()
        .and_then(overlaybd_oci::annotation::turbo_oci_target)
        .is_some()
}

/// Fetches a layer into the content store (unless it is there), applies it to the prepared
/// snapshot `key` with containerd's Diff service, and commits it as `chain`. Returns the
/// bytes fetched.
#[allow(clippy::too_many_arguments)]
async fn unpack(
    ctd: &Containerd,
    reg: &Repository,
    layer: &Descriptor,
    i: usize,
    mounts: Vec<types::Mount>,
    key: &str,
    chain: &str,
    labels: HashMap<String, String>,
    opts: &Options,
) -> Result<u64> {
    let mut fetched = 0;
    if !ctd.has_content(&layer.digest).await? {
        fetched = ctd
            .write_streamed(&layer.digest, layer.size as i64, HashMap::new(), |out| {
                Ok(reg.blob_to(&layer.digest, Some(layer.size), out)?)
            })
            .await?;
    }
    let mut df = diff::diff_client::DiffClient::new(ctd.channel());
    df.apply(ctd.req(diff::ApplyRequest {
        diff: Some(descriptor(layer)),
        mounts,
        payloads: HashMap::new(),
        sync_fs: false,
    }))
    .await
    .map_err(status(&format!("apply layer {i} ({})", layer.digest)))?;
    let mut sn = snapshots::snapshots_client::SnapshotsClient::new(ctd.channel());
    sn.commit(ctd.req(snapshots::CommitSnapshotRequest {
        snapshotter: opts.snapshotter.clone(),
        name: chain.to_string(),
        key: key.to_string(),
        labels,
    }))
    .await
    .map_err(status(&format!("commit layer {i}")))?;
    Ok(fetched)
}

/// Creates the image record, or points an existing one at this image.
async fn image_record(ctd: &Containerd, img: &Resolved) -> Result<()> {
    let target = match &img.index {
        Some((b, mt, _)) => types::Descriptor {
            media_type: mt.clone(),
            digest: sha256_digest(b),
            size: b.len() as i64,
            annotations: HashMap::new(),
        },
        None => types::Descriptor {
            media_type: img.manifest_type.clone(),
            digest: sha256_digest(&img.manifest),
            size: img.manifest.len() as i64,
            annotations: HashMap::new(),
        },
    };
    let record = images::Image {
        name: img.name.clone(),
        labels: HashMap::new(),
        target: Some(target),
        created_at: None,
        updated_at: None,
    };
    let mut ic = images::images_client::ImagesClient::new(ctd.channel());
    match ic
        .create(ctd.req(images::CreateImageRequest {
            image: Some(record.clone()),
            source_date_epoch: None,
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            ic.update(ctd.req(images::UpdateImageRequest {
                image: Some(record),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["target".into()],
                }),
                source_date_epoch: None,
            }))
            .await
            .map_err(status("update the image"))?;
            Ok(())
        }
        Err(s) => Err(status("create the image")(s)),
    }
}
