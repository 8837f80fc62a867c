//! An image as overlaybd's daemon sees it: a `config.v1.json` ([`ImageConfig`]) naming the
//! layers (local files or directories, or remote blobs in a registry) and an optional writable
//! upper layer, opened as one [`Stack`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use overlaybd_api::{ImageConfig, LayerConfig};
use overlaybd_cache::{BlobCache, CacheDir};
use overlaybd_lsmt::{blob, RoLayer, RwLayer, Stack, Upper};
use overlaybd_registry::{BlobLocation, RegistryBlob, RegistryOptions};
use zfile::{OpenOptions, ReadAt};

use crate::error::{Error, Result};

/// What opening remote layers needs: the cache and the registry settings.
#[derive(Clone, Debug)]
pub struct Remote {
    pub cache: CacheDir,
    pub registry: RegistryOptions,
}

/// One opened lower layer.
pub struct OpenedLayer {
    /// Where it came from: a path, or the blob's location.
    pub origin: String,
    /// The layer's raw blob when remote (cached), for downloads and statistics.
    pub remote: Option<Arc<BlobCache<RegistryBlob>>>,
    /// The layer file (envelope and ZFile taken off) that the stack reads: what traces
    /// record and replay.
    pub file: Arc<dyn ReadAt>,
}

impl std::fmt::Debug for OpenedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedLayer")
            .field("origin", &self.origin)
            .field("remote", &self.remote.is_some())
            .finish()
    }
}

/// An opened image: the merged stack, and what each layer came from.
#[derive(Debug)]
pub struct Image {
    pub stack: Stack,
    pub layers: Vec<OpenedLayer>,
}

/// The local file of a layer, if it has one: `file`, else the names overlaybd looks for in
/// `dir`.
fn local_file(l: &LayerConfig) -> Option<PathBuf> {
    if !l.file.is_empty() && Path::new(&l.file).exists() {
        return Some(PathBuf::from(&l.file));
    }
    if l.dir.is_empty() {
        return None;
    }
    ["overlaybd.commit", ".commit", "overlaybd.sealed"]
        .iter()
        .map(|n| Path::new(&l.dir).join(n))
        .find(|p| p.exists())
}

fn zfile_options(l: &LayerConfig, i: usize) -> Result<OpenOptions> {
    let mut o = OpenOptions::default();
    if !l.integrity_root.is_empty() {
        let root: zfile::integrity::Root = l.integrity_root.parse().map_err(|e| {
            Error::Invalid(format!(
                "lowers[{i}].integrityRoot {:?}: {e}",
                l.integrity_root
            ))
        })?;
        o.trusted_root = Some(root);
    }
    Ok(o)
}

/// The blob of lower `i`: its local file, or its remote blob through the cache.
type LayerBlob = (
    Arc<dyn ReadAt>,
    String,
    Option<Arc<BlobCache<RegistryBlob>>>,
);

fn open_layer_blob(
    cfg: &ImageConfig,
    l: &LayerConfig,
    i: usize,
    remote: Option<&Remote>,
) -> Result<LayerBlob> {
    if let Some(p) = local_file(l) {
        let f =
            std::fs::File::open(&p).map_err(|e| Error::io("open", p.display().to_string(), e))?;
        return Ok((Arc::new(f), p.display().to_string(), None));
    }
    if l.digest.is_empty() {
        return Err(Error::Invalid(format!(
            "lowers[{i}]: no local file (file {:?}, dir {:?}) and no digest",
            l.file, l.dir
        )));
    }
    let size = (l.size > 0).then_some(l.size);
    let (cached, what) = remote_blob(cfg, &l.digest, size, &format!("lowers[{i}]"), remote)?;
    Ok((cached.clone(), what, Some(cached)))
}

/// A remote blob through the cache. A blob the cache holds at the given size was checked
/// against the registry when it was fetched: attaching again (a daemon restart, a new
/// container) needs no HEAD, and works while the registry is down.
pub(crate) fn remote_blob(
    cfg: &ImageConfig,
    digest: &str,
    size: Option<u64>,
    what: &str,
    remote: Option<&Remote>,
) -> Result<(Arc<BlobCache<RegistryBlob>>, String)> {
    let r = remote.ok_or_else(|| {
        Error::Invalid(format!(
            "{what} ({digest}) is remote, and this opener has no registry settings"
        ))
    })?;
    let loc = BlobLocation::from_repo_blob_url(&cfg.repo_blob_url, digest)?;
    let where_ = loc.to_string();
    let blob = match size {
        Some(s) if r.cache.holds(digest, s) => {
            RegistryBlob::open_sized(loc, s, r.registry.clone())?
        }
        _ => RegistryBlob::open(loc, size, r.registry.clone())?,
    };
    tracing::info!("{what} {digest}: read from {}", blob.urls().join(", then "));
    let size = blob
        .size()
        .map_err(|e| Error::io("size", where_.clone(), e))?;
    Ok((r.cache.blob(digest, size, blob)?, where_))
}

/// Layers of one image opened at once (each a few requests to the registry).
const OPEN_AT_ONCE: usize = 8;

impl Image {
    /// Opens every layer (remote ones through the cache) and stacks them.
    pub fn open(cfg: &ImageConfig, remote: Option<&Remote>) -> Result<Image> {
        Self::open_recording(cfg, remote, None)
    }

    /// [`Image::open`], with every lower layer file reporting its reads to `slot` (which
    /// records them while it holds a recorder).
    pub fn open_recording(
        cfg: &ImageConfig,
        remote: Option<&Remote>,
        slot: Option<&Arc<crate::trace::TraceSlot>>,
    ) -> Result<Image> {
        let open_one = |i: usize, l: &LayerConfig| -> Result<_> {
            let zopts = zfile_options(l, i)?;
            let (src, origin, mut remote_blob) = open_layer_blob(cfg, l, i, remote)?;
            let in_layer = |origin: &str, e: Error| Error::Layer {
                origin: origin.to_string(),
                cause: Box::new(e),
            };
            let (lsmt, _) =
                blob::open_blob(src, &zopts).map_err(|e| in_layer(&origin, e.into()))?;
            let (lsmt, layer, origin) = if l.is_turbo_oci() {
                let target = crate::turbo::open_target(cfg, l, i, remote)?;
                let origin = format!("{origin} over {}", target.origin);
                let (warp, layer) = overlaybd_lsmt::WarpLayer::open(lsmt, target.file)
                    .map_err(|e| in_layer(&origin, e.into()))?;
                // The target holds the data: it is what a background download fetches.
                remote_blob = target.remote.or(remote_blob);
                (warp as Arc<dyn ReadAt>, layer, origin)
            } else {
                let layer = RoLayer::open(&*lsmt).map_err(|e| in_layer(&origin, e.into()))?;
                (lsmt, layer, origin)
            };
            let lsmt: Arc<dyn ReadAt> = match slot {
                Some(r) => Arc::new(crate::trace::Recording::new(lsmt, i as u32, r.clone())),
                None => lsmt,
            };
            let opened = OpenedLayer {
                origin,
                remote: remote_blob,
                file: lsmt.clone(),
            };
            Ok((opened, (lsmt, layer)))
        };
        // Each layer's open reads its header, trailer and index: from a registry, a round trip
        // or more each, so up to OPEN_AT_ONCE layers open at once.
        let n = cfg.lowers.len();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done = std::sync::Mutex::new((0..n).map(|_| None).collect::<Vec<_>>());
        let work = || loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(l) = cfg.lowers.get(i) else { break };
            let r = open_one(i, l);
            done.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
        };
        std::thread::scope(|s| {
            // A thread that cannot be made is no error: this one opens what is left.
            for _ in 1..n.min(OPEN_AT_ONCE) {
                let _ = std::thread::Builder::new()
                    .name("open-layer".into())
                    .spawn_scoped(s, work);
            }
            work();
        });
        let opened = done.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut lowers = Vec::with_capacity(cfg.lowers.len());
        let mut layers = Vec::with_capacity(cfg.lowers.len());
        for r in opened {
            // Every slot is filled: a worker that panicked took the scope down with it.
            let (opened, lower) = r.expect("every layer was opened")?;
            layers.push(opened);
            lowers.push(lower);
        }
        let upper = match (cfg.upper.index.is_empty(), cfg.upper.data.is_empty()) {
            (true, true) => None,
            (false, false) => Some(Upper::Append(RwLayer::open(
                Path::new(&cfg.upper.data),
                Path::new(&cfg.upper.index),
            )?)),
            _ => {
                return Err(Error::Invalid(
                    "upper: give both `index` and `data`, or neither".into(),
                ))
            }
        };
        Ok(Image {
            stack: Stack::new(lowers, upper)?,
            layers,
        })
    }
}
