//! TurboOCI layers (`docs/format/turbooci.md`): a meta image's layer carries the original
//! layer's digest in its annotations. At pull time it is never read remotely: containerd
//! downloads the small meta blob and unpacks it into `fs/` (`ext4.fs.meta`, `.turbo.ociv1`,
//! `gzip.meta`). At commit, the snapshot becomes a block layer whose lower reads the meta layer
//! from `fs/` and the file data from the original layer in the image's repository, lazily.

use std::collections::BTreeMap;
use std::path::Path;

use overlaybd_api::LayerConfig;
use overlaybd_oci::label as labels;
use overlaybd_oci::reference::Reference;
use overlaybd_oci::{annotation, turbo_oci_file};

use crate::error::{Error, Result};

/// What a committed TurboOCI snapshot adds to its parent's device config.
#[derive(Debug)]
pub(super) struct TurboLower {
    pub lower: LayerConfig,
    pub repo_blob_url: String,
    /// `erofs` for an EROFS meta layer (the mount's filesystem type), else `None` (ext4).
    pub fs_type: Option<&'static str>,
}

/// The lower of an unpacked TurboOCI meta layer in `fs` with `labels` (those of its pull-time
/// Prepare): the meta file (`ext4.fs.meta`, else `erofs.fs.meta`), the original layer by
/// digest in the image's repository, and the gzip index when the blob has one. `Ok(None)` when
/// the labels are not a TurboOCI layer's.
pub(super) fn lower(labels: &BTreeMap<String, String>, fs: &Path) -> Result<Option<TurboLower>> {
    let Some(target) = annotation::turbo_oci_target(labels) else {
        return Ok(None);
    };
    let (meta, fs_type) = match [
        (turbo_oci_file::EXT4_META, "ext4"),
        (turbo_oci_file::EROFS_META, "erofs"),
    ]
    .iter()
    .map(|(name, t)| (fs.join(name), *t))
    .find(|(p, _)| p.is_file())
    {
        Some((p, "erofs")) => (p, Some("erofs")),
        Some((p, _)) => (p, None),
        None => {
            return Err(Error::FailedPrecondition(format!(
                "a TurboOCI layer (original {target}) whose blob has no ext4.fs.meta or \
                 erofs.fs.meta in {}",
                fs.display()
            )))
        }
    };
    let image = labels
        .get(labels::CRI_IMAGE_REF)
        .or_else(|| labels.get(labels::IMAGE_REF))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "a TurboOCI layer (original {target}) without an image reference label: the \
                 original layer's repository is unknown"
            ))
        })?;
    let r = Reference::parse(image).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let scheme = if labels.get(labels::PLAIN_HTTP).map(String::as_str) == Some("true") {
        "http"
    } else {
        "https"
    };
    // The index goes with a gzip'ed original; the daemon refuses a gzip blob without one and
    // an index with a plain tar, whatever the annotations say.
    let index = fs.join(turbo_oci_file::GZIP_INDEX);
    // Ours: the tar's BLAKE3 digests, checked against the annotation's root by the daemon.
    // Without the annotation the file (if any) is not trusted and not used.
    let (tar_digests, tar_digests_root) = match labels
        .get(annotation::TURBO_OCI_TAR_DIGESTS)
        .filter(|v| !v.is_empty())
    {
        Some(root) => {
            let p = fs.join(turbo_oci_file::TAR_DIGESTS);
            if !p.is_file() {
                return Err(Error::FailedPrecondition(format!(
                    "a TurboOCI layer (original {target}) names tar digests {root}, and its blob \
                     has no {}",
                    p.display()
                )));
            }
            (p.display().to_string(), root.clone())
        }
        None => (String::new(), String::new()),
    };
    Ok(Some(TurboLower {
        lower: LayerConfig {
            dir: fs.display().to_string(),
            file: meta.display().to_string(),
            target_digest: target.to_string(),
            gzip_index: if index.is_file() {
                index.display().to_string()
            } else {
                String::new()
            },
            integrity_root: labels
                .get(labels::INTEGRITY_ROOT)
                .cloned()
                .unwrap_or_default(),
            tar_digests,
            tar_digests_root,
            ..LayerConfig::default()
        },
        repo_blob_url: r.repo_blob_url_over(scheme),
        fs_type,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_of_an_unpacked_meta_layer() {
        let d = tempfile::tempdir().unwrap();
        let mut l = BTreeMap::new();
        assert!(lower(&l, d.path()).unwrap().is_none());
        l.insert(annotation::FASTOCI_TARGET_DIGEST.into(), "sha256:ab".into());
        let e = lower(&l, d.path()).unwrap_err().to_string();
        assert!(e.contains("no ext4.fs.meta"), "{e}");
        std::fs::write(d.path().join("ext4.fs.meta"), b"x").unwrap();
        let e = lower(&l, d.path()).unwrap_err().to_string();
        assert!(e.contains("image reference"), "{e}");
        l.insert(labels::IMAGE_REF.into(), "127.0.0.1:5000/app:v1".into());
        l.insert(labels::PLAIN_HTTP.into(), "true".into());
        let t = lower(&l, d.path()).unwrap().unwrap();
        assert_eq!(t.repo_blob_url, "http://127.0.0.1:5000/v2/app/blobs");
        assert_eq!(t.lower.target_digest, "sha256:ab");
        assert!(t.lower.file.ends_with("/ext4.fs.meta"));
        assert!(t.lower.gzip_index.is_empty());
        assert_eq!(t.fs_type, None);
        std::fs::write(d.path().join("gzip.meta"), b"x").unwrap();
        l.insert(
            annotation::TURBO_OCI_TARGET_DIGEST.into(),
            "sha256:cd".into(),
        );
        let t = lower(&l, d.path()).unwrap().unwrap();
        assert_eq!(t.lower.target_digest, "sha256:cd", "the current key wins");
        assert!(t.lower.gzip_index.ends_with("/gzip.meta"));
        assert!(t.lower.tar_digests.is_empty() && t.lower.tar_digests_root.is_empty());
        l.insert(annotation::TURBO_OCI_TAR_DIGESTS.into(), "blake3:00".into());
        let e = lower(&l, d.path()).unwrap_err().to_string();
        assert!(e.contains("tar.blake3"), "{e}");
        std::fs::write(d.path().join("tar.blake3"), b"x").unwrap();
        let t = lower(&l, d.path()).unwrap().unwrap();
        assert!(t.lower.tar_digests.ends_with("/tar.blake3"));
        assert_eq!(t.lower.tar_digests_root, "blake3:00");
    }
}
