//! The image side: media types, descriptors, manifests and indexes (OCI and Docker v2), chain
//! IDs, and overlaybd's layer annotations.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_INDEX: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Everything a manifest GET accepts.
    pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.docker.distribution.manifest.v2+json";
}

/// overlaybd's layer annotations (`reference/overlaybd.md` §6.2) and ours under the same
/// prefix; containerd copies them into snapshot labels.
pub mod annotation {
    pub const PREFIX: &str = "containerd.io/snapshot/overlaybd/";
    pub const VERSION: &str = "containerd.io/snapshot/overlaybd/version";
    pub const BLOB_DIGEST: &str = "containerd.io/snapshot/overlaybd/blob-digest";
    pub const BLOB_SIZE: &str = "containerd.io/snapshot/overlaybd/blob-size";
    pub const FS_TYPE: &str = "containerd.io/snapshot/overlaybd/blob-fs-type";
    /// Ours: the root of the layer's BLAKE3 integrity table (`blake3:<hex>`).
    pub const INTEGRITY_ROOT: &str = "containerd.io/snapshot/overlaybd/integrity-root";
    pub const ACCELERATION_LAYER: &str = "containerd.io/snapshot/overlaybd/acceleration-layer";
    pub const VERSION_VALUE: &str = "0.1.0";
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer media type; `None` for what is not an image layer.
pub fn layer_compression(media_type: &str) -> Option<LayerCompression> {
    use media::*;
    match media_type {
        OCI_LAYER | DOCKER_LAYER => Some(LayerCompression::None),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Some(LayerCompression::Gzip),
        OCI_LAYER_ZSTD => Some(LayerCompression::Zstd),
        // Non-distributable layers are the same bytes.
        "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(LayerCompression::None),
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            Some(LayerCompression::Gzip)
        }
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
            Some(LayerCompression::Zstd)
        }
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

pub use overlaybd::registry::reference::{chain_ids, sha256_digest};

/// Checks a digest string: `sha256:` and 64 lowercase hex digits (the only algorithm we
/// accept from a source; it names files in layouts and URLs, so nothing else gets through).
pub fn check_digest(d: &str) -> Result<&str> {
    Ok(overlaybd::registry::reference::check_digest(d)?)
}

/// A manifest or index document as fetched, with what the source said it is.
#[derive(Clone, Debug)]
pub enum Document {
    Manifest(Box<Manifest>),
    Index(Index),
}

/// Parses a manifest or an index (by the media type the source gave, else by its
/// `mediaType` field or shape).
pub fn parse_document(bytes: &[u8], media_type: Option<&str>) -> Result<Document> {
    let v: serde_json::Value = serde_json::from_slice(bytes).context("manifest is not JSON")?;
    let mt = media_type
        .filter(|m| !m.is_empty() && *m != "application/json")
        .map(str::to_string)
        .or_else(|| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        });
    let is_index = match mt.as_deref() {
        Some(media::OCI_INDEX | media::DOCKER_INDEX) => true,
        Some(media::OCI_MANIFEST | media::DOCKER_MANIFEST) => false,
        Some(other) => bail!("unsupported manifest media type {other:?}"),
        None => v.get("manifests").is_some(),
    };
    if is_index {
        Ok(Document::Index(
            serde_json::from_value(v).context("bad image index")?,
        ))
    } else {
        let m: Box<Manifest> = serde_json::from_value(v).context("bad image manifest")?;
        if m.schema_version != 2 {
            bail!("manifest schemaVersion {} is not 2", m.schema_version);
        }
        Ok(Document::Manifest(m))
    }
}

/// The parts of an image config the convertor reads and writes; everything else is kept.
pub fn diff_ids(config: &serde_json::Value) -> Result<Vec<String>> {
    let ids = config
        .pointer("/rootfs/diff_ids")
        .and_then(|v| v.as_array())
        .context("image config has no rootfs.diff_ids")?;
    ids.iter()
        .map(|v| {
            let s = v.as_str().context("a diff ID is not a string")?;
            check_digest(s)?;
            Ok(s.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], sha256_digest(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn digests_are_checked() {
        assert!(check_digest(&format!("sha256:{}", "0".repeat(64))).is_ok());
        assert!(check_digest("sha256:../../etc/passwd").is_err());
        assert!(check_digest(&format!("sha512:{}", "0".repeat(128))).is_err());
        assert!(check_digest(&format!("sha256:{}", "A".repeat(64))).is_err());
    }

    #[test]
    fn documents_parse_by_media_type_or_shape() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_document(idx, None).unwrap(),
            Document::Index(_)
        ));
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"sha256:{}","size":2}},"layers":[]}}"#,
            media::OCI_CONFIG,
            "0".repeat(64)
        );
        assert!(matches!(
            parse_document(m.as_bytes(), Some(media::OCI_MANIFEST)).unwrap(),
            Document::Manifest(_)
        ));
        assert!(parse_document(b"{", None).is_err());
        assert!(parse_document(m.as_bytes(), Some("text/plain")).is_err());
    }
}
