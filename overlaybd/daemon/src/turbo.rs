//! TurboOCI lowers: opening the *target* (the unmodified OCI layer) that a meta layer's file
//! data points into. A local `targetFile` is read as it is; a `targetDigest` is fetched lazily
//! from the registry through the blob cache like any remote layer. A gzip target is read
//! through its `gzipIndex`, and what is inflated is kept in the cache too (crash-safe units
//! with a CRC each, under a key naming the blob, the index and whether the bytes were
//! checked), so a block is inflated once.

use std::sync::Arc;

use overlaybd_api::{ImageConfig, LayerConfig};
use overlaybd_cache::BlobCache;
use overlaybd_registry::RegistryBlob;
use overlaybd_turbooci::digests::index_digest;
use overlaybd_turbooci::{is_gzip, GzFile, GzIndex, TarDigests, Verified};
use zfile::source::read_full_at;
use zfile::ReadAt;

use crate::error::{Error, Result};
use crate::image::{remote_blob, Remote};

/// An opened target: the uncompressed tar as a source.
pub struct Target {
    pub file: Arc<dyn ReadAt>,
    pub origin: String,
    /// The compressed blob when remote (for downloads and statistics).
    pub remote: Option<Arc<BlobCache<RegistryBlob>>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("origin", &self.origin)
            .field("remote", &self.remote.is_some())
            .finish()
    }
}

/// The tar digests of lower `i`, checked against their root and against the gzip index (its
/// [`index_digest`]), when the config names them (meta images made by overlaybd's convertor
/// have none).
fn tar_digests(l: &LayerConfig, i: usize, index: &[u8; 32]) -> Result<Option<TarDigests>> {
    if l.tar_digests_root.is_empty() {
        return Ok(None);
    }
    let what = format!("lowers[{i}] tarDigests {}", l.tar_digests);
    let bytes = std::fs::read(&l.tar_digests).map_err(|e| Error::io("read", &what, e))?;
    let d =
        TarDigests::decode_for(&bytes, &l.tar_digests_root, index).map_err(|e| Error::Layer {
            origin: what,
            cause: Box::new(e.into()),
        })?;
    Ok(Some(d))
}

/// The inflated cache's key for a target read through the index whose digest is `index`:
/// what the bytes depend on (the blob, and the index that inflates them) and whether they
/// were verified when filled. A unit filled for an image without tar digests (maybe through
/// another index) is never served as checked to one with them.
fn inflated_key(l: &LayerConfig, index: &[u8; 32], verified: bool) -> String {
    let checked = if verified {
        let root = l
            .tar_digests_root
            .strip_prefix("blake3:")
            .unwrap_or(&l.tar_digests_root);
        format!(".v{}", &root[..root.len().min(16)])
    } else {
        String::new()
    };
    format!("{}.inflated.{}{checked}", l.target_digest, &hex16(index))
}

fn hex16(b: &[u8; 32]) -> String {
    b[..8].iter().map(|x| format!("{x:02x}")).collect()
}

fn verified(inner: Arc<dyn ReadAt>, d: TarDigests, origin: &str) -> Result<Arc<dyn ReadAt>> {
    Ok(Arc::new(Verified::new(inner, d, origin.to_string())?))
}

/// Opens the target of lower `i` (which [`LayerConfig::is_turbo_oci`]).
pub fn open_target(
    cfg: &ImageConfig,
    l: &LayerConfig,
    i: usize,
    remote: Option<&Remote>,
) -> Result<Target> {
    let what = format!("lowers[{i}] target");
    // The index header names the blob's size: with it, a target the cache holds opens
    // without asking the registry (a restart while the registry is down).
    // Its digest names it for the tar digests and the inflated cache's key.
    let (index, index_hash) = match l.gzip_index.as_str() {
        "" => (None, index_digest(None)),
        path => {
            let io = |e| Error::io("read", format!("lowers[{i}] gzipIndex {path}"), e);
            // Hashed as a stream; the windows stay on disk until a read needs one.
            let f = std::fs::File::open(path).map_err(io)?;
            let mut h = blake3::Hasher::new();
            h.update_reader(&f).map_err(io)?;
            let hash = *h.finalize().as_bytes();
            let index = GzIndex::open(Box::new(f), None).map_err(|e| Error::Layer {
                origin: path.to_string(),
                cause: Box::new(e.into()),
            })?;
            (Some(index), hash)
        }
    };
    let (raw, origin, blob): (Arc<dyn ReadAt>, String, _) = if !l.target_file.is_empty() {
        let f = std::fs::File::open(&l.target_file)
            .map_err(|e| Error::io("open", format!("{what} {}", l.target_file), e))?;
        (Arc::new(f), l.target_file.clone(), None)
    } else {
        let size = index.as_ref().map(|x| x.header.gzip_file_size);
        let (c, origin) = remote_blob(cfg, &l.target_digest, size, &what, remote)?;
        (c.clone() as Arc<dyn ReadAt>, origin, Some(c))
    };
    let mut head = [0u8; 2];
    let n = read_full_at(&*raw, 0, &mut head).map_err(|e| Error::io("read", &origin, e))?;
    let gzip = is_gzip(&head[..n]);
    let digests = tar_digests(l, i, &index_hash)?;
    let Some(index) = index else {
        if gzip {
            return Err(Error::Invalid(format!(
                "{what} {origin} is gzip-compressed, and lowers[{i}] names no gzipIndex \
                 (the meta layer maps offsets of the uncompressed tar)"
            )));
        }
        let file = match digests {
            Some(d) => verified(raw, d, &origin)?,
            None => raw,
        };
        return Ok(Target {
            file,
            origin,
            remote: blob,
        });
    };
    if !gzip {
        return Err(Error::Invalid(format!(
            "lowers[{i}] names gzipIndex {}, but {what} {origin} is not gzip-compressed",
            l.gzip_index
        )));
    }
    let gz = GzFile::with_index(raw, index).map_err(|e| Error::Layer {
        origin: format!("{origin} with index {}", l.gzip_index),
        cause: Box::new(e.into()),
    })?;
    // Checked below the inflated cache: a chunk is verified when a cache unit is filled (or
    // refilled), and the cache's own CRCs keep it intact after that.
    let key = inflated_key(l, &index_hash, digests.is_some());
    let gz: Arc<dyn ReadAt> = match digests {
        Some(d) => verified(Arc::new(gz), d, &origin)?,
        None => Arc::new(gz),
    };
    let file: Arc<dyn ReadAt> = match (remote, l.target_file.is_empty()) {
        (Some(r), true) => {
            let size = gz.size().map_err(|e| Error::io("size", &origin, e))?;
            r.cache.blob(&key, size, gz)?
        }
        _ => gz,
    };
    Ok(Target {
        file,
        origin,
        remote: blob,
    })
}
