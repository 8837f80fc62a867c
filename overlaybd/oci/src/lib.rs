//! The OCI model every crate shares: media types, descriptors, manifests and indexes, digests
//! and chain IDs, image references, and the annotation and label keys that are the contract
//! between the convertor, containerd and the snapshotter (`../shared/reference/overlaybd.md`
//! §6).

pub mod digest;
mod document;
pub mod label;
pub mod reference;

pub use digest::{chain_ids, check_digest, is_digest, sha256_digest};
pub use document::*;
pub use reference::Reference;

/// What is wrong with an OCI document, digest or reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("digest {0:?}: {1}")]
    BadDigest(String, &'static str),
    #[error("image reference {0:?}: {1}")]
    BadReference(String, String),
    #[error("{0}")]
    BadDocument(String),
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

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
    /// TurboOCI meta layers (`reference/turbooci.md` §1.2): the version value, the original
    /// layer's digest and media type (overlaybd's current keys and the legacy FastOCI ones).
    pub const TURBO_OCI_VERSION_VALUE: &str = "0.1.0-turbo.ociv1";
    pub const TURBO_OCI_TARGET_DIGEST: &str =
        "containerd.io/snapshot/overlaybd/turbo-oci/target-digest";
    pub const TURBO_OCI_TARGET_MEDIA_TYPE: &str =
        "containerd.io/snapshot/overlaybd/turbo-oci/target-media-type";
    pub const FASTOCI_TARGET_DIGEST: &str =
        "containerd.io/snapshot/overlaybd/fastoci/target-digest";
    pub const FASTOCI_TARGET_MEDIA_TYPE: &str =
        "containerd.io/snapshot/overlaybd/fastoci/target-media-type";
    /// Ours: `blake3:<hex>` of the meta blob's `tar.blake3` (BLAKE3 digests of the original
    /// layer's uncompressed tar in chunks, and of the gzip index).
    pub const TURBO_OCI_TAR_DIGESTS: &str = "containerd.io/snapshot/overlaybd/turbo-oci/tar-blake3";
    /// `--referrer`: the artifact type of a meta image attached to its source manifest.
    pub const TURBO_OCI_ARTIFACT_TYPE: &str = "application/vnd.containerd.overlaybd.turbo.v1+json";

    /// The original layer's digest when `annotations` (a layer's, or a snapshot's labels) are a
    /// TurboOCI meta layer's: overlaybd's current key, else the legacy FastOCI one.
    pub fn turbo_oci_target(
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Option<&str> {
        [TURBO_OCI_TARGET_DIGEST, FASTOCI_TARGET_DIGEST]
            .iter()
            .find_map(|k| annotations.get(*k))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// The files of a TurboOCI meta blob (a gzip'ed tar that containerd unpacks into the
/// snapshot's directory): overlaybd's names, and ours for the tar digests.
pub mod turbo_oci_file {
    pub const EXT4_META: &str = "ext4.fs.meta";
    pub const EROFS_META: &str = "erofs.fs.meta";
    pub const MARKER: &str = ".turbo.ociv1";
    pub const GZIP_INDEX: &str = "gzip.meta";
    /// Ours: BLAKE3 digests of the original tar in chunks (`docs/format/turbooci.md`).
    pub const TAR_DIGESTS: &str = "tar.blake3";
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
