//! Descriptors, manifests and indexes (OCI and Docker v2), parsed and written the way the
//! convertor has always written them (field order and skipped fields are part of the digests
//! it produces), and the image config's diff IDs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::check_digest;
use crate::media;
use crate::{Error, Result};

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

/// A manifest or index document as fetched, with what the source said it is.
#[derive(Clone, Debug)]
pub enum Document {
    Manifest(Box<Manifest>),
    Index(Index),
}

/// Parses a manifest or an index (by the media type the source gave, else by its
/// `mediaType` field or shape).
pub fn parse_document(bytes: &[u8], media_type: Option<&str>) -> Result<Document> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::BadDocument(format!("manifest is not JSON: {e}")))?;
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
        Some(other) => return Err(Error::UnsupportedMediaType(other.to_string())),
        None => v.get("manifests").is_some(),
    };
    if is_index {
        Ok(Document::Index(serde_json::from_value(v).map_err(|e| {
            Error::BadDocument(format!("bad image index: {e}"))
        })?))
    } else {
        let m: Box<Manifest> = serde_json::from_value(v)
            .map_err(|e| Error::BadDocument(format!("bad image manifest: {e}")))?;
        if m.schema_version != 2 {
            return Err(Error::BadDocument(format!(
                "manifest schemaVersion {} is not 2",
                m.schema_version
            )));
        }
        Ok(Document::Manifest(m))
    }
}

/// The parts of an image config the convertor reads and writes; everything else is kept.
pub fn diff_ids(config: &serde_json::Value) -> Result<Vec<String>> {
    let ids = config
        .pointer("/rootfs/diff_ids")
        .and_then(|v| v.as_array())
        .ok_or_else(|| Error::BadDocument("image config has no rootfs.diff_ids".into()))?;
    ids.iter()
        .map(|v| {
            let s = v
                .as_str()
                .ok_or_else(|| Error::BadDocument("a diff ID is not a string".into()))?;
            check_digest(s)?;
            Ok(s.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{chain_ids, sha256_digest};

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
