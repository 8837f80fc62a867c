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

/// The tar digests of lower `i`, checked against their root and against the gzip index file,
/// when the config names them (meta images made by overlaybd's convertor have none).
fn tar_digests(l: &LayerConfig, i: usize) -> Result<Option<TarDigests>> {
    if l.tar_digests_root.is_empty() {
        return Ok(None);
    }
    let what = format!("lowers[{i}] tarDigests {}", l.tar_digests);
    let bytes = std::fs::read(&l.tar_digests).map_err(|e| Error::io("read", &what, e))?;
    let d = TarDigests::decode(&bytes, &l.tar_digests_root).map_err(|e| Error::Layer {
        origin: what.clone(),
        cause: Box::new(e.into()),
    })?;
    let index = match l.gzip_index.as_str() {
        "" => [0u8; 32],
        p => {
            let b = std::fs::read(p)
                .map_err(|e| Error::io("read", format!("lowers[{i}] gzipIndex {p}"), e))?;
            *blake3::hash(&b).as_bytes()
        }
    };
    if index != d.index {
        return Err(Error::Invalid(format!(
            "lowers[{i}] gzipIndex {:?} is not the index the meta image's digests name",
            l.gzip_index
        )));
    }
    Ok(Some(d))
}

/// The inflated cache's key for lower `i`: what the bytes depend on (the blob, and the index
/// that inflates them) and whether they were verified when filled. A unit filled for an image
/// without tar digests (maybe through another index) is never served as checked to one with
/// them.
fn inflated_key(l: &LayerConfig, i: usize, verified: bool) -> Result<String> {
    let index = std::fs::read(&l.gzip_index)
        .map_err(|e| Error::io("read", format!("lowers[{i}] gzipIndex {}", l.gzip_index), e))?;
    let index = blake3::hash(&index).to_hex();
    let checked = if verified {
        let root = l
            .tar_digests_root
            .strip_prefix("blake3:")
            .unwrap_or(&l.tar_digests_root);
        format!(".v{}", &root[..root.len().min(16)])
    } else {
        String::new()
    };
    Ok(format!(
        "{}.inflated.{}{checked}",
        l.target_digest,
        &index[..16]
    ))
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
    let index = match l.gzip_index.as_str() {
        "" => None,
        path => {
            let f = std::fs::File::open(path)
                .map_err(|e| Error::io("open", format!("lowers[{i}] gzipIndex {path}"), e))?;
            let index = GzIndex::open(Box::new(f), None).map_err(|e| Error::Layer {
                origin: path.to_string(),
                cause: Box::new(e.into()),
            })?;
            Some(index)
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
    let digests = tar_digests(l, i)?;
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
    let key = inflated_key(l, i, digests.is_some())?;
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
