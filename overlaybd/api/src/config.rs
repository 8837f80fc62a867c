//! overlaybd's per-device config, `config.v1.json`: the contract between the snapshotter, which
//! writes one per device, and the daemon, which opens the image it names. The keys are
//! overlaybd's (`../shared/reference/overlaybd.md` §4.1); unknown keys are accepted. One key is
//! ours: `lowers[].integrityRoot`, the hex BLAKE3 root of a layer's ZFile integrity table,
//! which makes every byte of that layer verified.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What is wrong with a device config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

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
    /// TurboOCI: a local copy of the original layer blob (gzip or plain tar) that this
    /// (meta) layer's file data points into. Takes precedence over `target_digest`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target_file: String,
    /// TurboOCI: `sha256:<hex>` of the original layer blob, fetched lazily from
    /// `repoBlobUrl`. A lower with a target file or digest is a warp (meta) layer.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target_digest: String,
    /// TurboOCI: the gzip index (`gzip.meta`) of a gzip target; absent for a plain tar.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gzip_index: String,
    /// Ours, TurboOCI: the BLAKE3 digests of the target's tar in chunks (`tar.blake3`) ...
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tar_digests: String,
    /// ... and that file's BLAKE3 (`blake3:<hex>`, from the meta layer's annotation): every
    /// chunk read from the target is checked.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tar_digests_root: String,
}

impl LayerConfig {
    /// Whether this lower is a TurboOCI meta layer over an original layer.
    pub fn is_turbo_oci(&self) -> bool {
        !self.target_file.is_empty() || !self.target_digest.is_empty()
    }
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
    pub fn parse(raw: &[u8], what: &str) -> Result<Self, ConfigError> {
        let cfg: ImageConfig = serde_json::from_slice(raw)
            .map_err(|e| ConfigError::Invalid(format!("image config {what}: {e}")))?;
        if cfg.lowers.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "image config {what}: no lowers"
            )));
        }
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let raw = std::fs::read(path).map_err(|cause| ConfigError::Io {
            op: "read",
            path: path.to_path_buf(),
            cause,
        })?;
        Self::parse(&raw, &path.display().to_string())
    }

    /// Writes `resultFile` (if named): `success`, or `failed:<reason>`.
    pub fn write_result(&self, result: &Result<(), String>) -> Result<(), ConfigError> {
        if self.result_file.is_empty() {
            return Ok(());
        }
        let text = match result {
            Ok(()) => "success".to_string(),
            Err(why) => format!("failed:{why}"),
        };
        std::fs::write(&self.result_file, text).map_err(|cause| ConfigError::Io {
            op: "write",
            path: self.result_file.clone().into(),
            cause,
        })
    }
}
