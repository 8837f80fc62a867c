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
        let mut lowers = Vec::with_capacity(cfg.lowers.len());
        let mut layers = Vec::with_capacity(cfg.lowers.len());
        for (i, l) in cfg.lowers.iter().enumerate() {
            let zopts = zfile_options(l, i)?;
            let (src, origin, remote): (Arc<dyn ReadAt>, String, _) = if let Some(p) = local_file(l)
            {
                let f = std::fs::File::open(&p)
                    .map_err(|e| Error::io("open", p.display().to_string(), e))?;
                (Arc::new(f), p.display().to_string(), None)
            } else if !l.digest.is_empty() {
                let r = remote.ok_or_else(|| {
                    Error::Invalid(format!(
                        "lowers[{i}] ({}) is remote, and this opener has no registry settings",
                        l.digest
                    ))
                })?;
                let loc = BlobLocation::from_repo_blob_url(&cfg.repo_blob_url, &l.digest)?;
                let what = loc.to_string();
                let size = (l.size > 0).then_some(l.size);
                // A blob the cache holds at the config's size was checked against the
                // registry when it was fetched: attaching again (a daemon restart, a new
                // container) needs no HEAD, and works while the registry is down.
                let blob = match size {
                    Some(s) if r.cache.holds(&l.digest, s) => {
                        RegistryBlob::open_sized(loc, s, r.registry.clone())?
                    }
                    _ => RegistryBlob::open(loc, size, r.registry.clone())?,
                };
                tracing::info!(
                    "lowers[{i}] {}: read from {}",
                    l.digest,
                    blob.urls().join(", then ")
                );
                let size = blob
                    .size()
                    .map_err(|e| Error::io("size", what.clone(), e))?;
                let cached = r.cache.blob(&l.digest, size, blob)?;
                (cached.clone(), what, Some(cached))
            } else {
                return Err(Error::Invalid(format!(
                    "lowers[{i}]: no local file (file {:?}, dir {:?}) and no digest",
                    l.file, l.dir
                )));
            };
            let in_layer = |e: overlaybd_lsmt::Error| Error::Layer {
                origin: origin.clone(),
                cause: Box::new(e.into()),
            };
            let (lsmt, _) = blob::open_blob(src, &zopts).map_err(in_layer)?;
            let layer = RoLayer::open(&*lsmt).map_err(in_layer)?;
            let lsmt: Arc<dyn ReadAt> = match slot {
                Some(r) => Arc::new(crate::trace::Recording::new(lsmt, i as u32, r.clone())),
                None => lsmt,
            };
            layers.push(OpenedLayer {
                origin,
                remote,
                file: lsmt.clone(),
            });
            lowers.push((lsmt, layer));
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
