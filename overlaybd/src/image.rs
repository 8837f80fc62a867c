//! An image as overlaybd's daemon sees it: a `config.v1.json` naming the layers (local files
//! or directories, or remote blobs in a registry) and an optional writable upper layer, opened
//! as one [`Stack`]. The keys are overlaybd's (`../shared/reference/overlaybd.md` §4.1);
//! unknown keys are accepted. One key is ours: `lowers[].integrityRoot`, the hex BLAKE3 root
//! of a layer's ZFile integrity table, which makes every byte of that layer verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zfile::{OpenOptions, ReadAt};

use crate::cache::CacheDir;
use crate::error::{Error, Result};
use crate::lsmt::{blob, RoLayer, RwLayer, Stack, Upper};
use crate::registry::{BlobLocation, RegistryBlob, RegistryOptions};

/// One lower layer (`lowers[]`), bottom first.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct LayerConfig {
    /// A local layer file (tar / ZFile / LSMT detected).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// A directory holding `overlaybd.commit` (or `.commit`, `overlaybd.sealed`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// `sha256:<hex>` of the remote blob.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// The remote blob's size in bytes.
    #[serde(skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Ours: the hex BLAKE3 integrity root of the layer's ZFile.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub integrity_root: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The writable layer (`upper`); both paths empty means a read-only device.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct UpperConfig {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub index: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub data: String,
}

/// Background download settings (`download`), overlaybd's names and defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct DownloadConfig {
    pub enable: bool,
    /// Seconds after attach before downloading starts.
    pub delay: u64,
    /// A random extra delay up to this many seconds.
    pub delay_extra: u64,
    #[serde(rename = "maxMBps")]
    pub max_mbps: u64,
    pub try_cnt: u32,
    pub block_size: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            enable: false,
            delay: 300,
            delay_extra: 30,
            max_mbps: 100,
            try_cnt: 5,
            block_size: 262_144,
        }
    }
}

/// A device's image config (`config.v1.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ImageConfig {
    /// `scheme://host/v2/<repository>/blobs`; required when a layer is remote.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub repo_blob_url: String,
    pub lowers: Vec<LayerConfig>,
    pub upper: UpperConfig,
    /// Where the daemon writes `success` or `failed:<reason>` after opening the image.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub result_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<DownloadConfig>,
    /// The top lower is an acceleration (trace) layer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub acceleration_layer: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub record_trace_path: String,
}

impl ImageConfig {
    pub fn parse(raw: &[u8], what: &str) -> Result<Self> {
        let cfg: ImageConfig = serde_json::from_slice(raw)
            .map_err(|e| Error::Invalid(format!("image config {what}: {e}")))?;
        if cfg.lowers.is_empty() {
            return Err(Error::Invalid(format!("image config {what}: no lowers")));
        }
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let raw =
            std::fs::read(path).map_err(|e| Error::io("read", path.display().to_string(), 0, e))?;
        Self::parse(&raw, &path.display().to_string())
    }

    /// Writes `resultFile` (if named): `success`, or `failed:<reason>`.
    pub fn write_result(&self, result: &std::result::Result<(), String>) -> Result<()> {
        if self.result_file.is_empty() {
            return Ok(());
        }
        let text = match result {
            Ok(()) => "success".to_string(),
            Err(why) => format!("failed:{why}"),
        };
        std::fs::write(&self.result_file, text)
            .map_err(|e| Error::io("write", self.result_file.clone(), 0, e))
    }
}

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
    pub remote: Option<Arc<crate::cache::BlobCache<RegistryBlob>>>,
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
                    .map_err(|e| Error::io("open", p.display().to_string(), 0, e))?;
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
                let size = blob
                    .size()
                    .map_err(|e| Error::io("size", what.clone(), 0, e))?;
                let cached = r.cache.blob(&l.digest, size, blob)?;
                (cached.clone(), what, Some(cached))
            } else {
                return Err(Error::Invalid(format!(
                    "lowers[{i}]: no local file (file {:?}, dir {:?}) and no digest",
                    l.file, l.dir
                )));
            };
            let (lsmt, _) = blob::open_blob(src, &zopts)
                .map_err(|e| Error::Invalid(format!("layer {origin}: {e}")))?;
            let layer = RoLayer::open(&*lsmt)
                .map_err(|e| Error::Invalid(format!("layer {origin}: {e}")))?;
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
