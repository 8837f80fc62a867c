//! Where images come from and go to: a registry repository or an OCI layout directory, behind
//! one trait, and the reference syntax that picks one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{At, Error, Result};
use crate::oci::{self, Descriptor, Index};

/// A place that holds blobs and manifests of one repository.
pub trait Store: Send + Sync {
    /// A manifest or index by tag or digest: its bytes and the media type the store gave.
    fn get_manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)>;
    /// Streams a blob into `out`; returns the bytes written. The caller checks the digest.
    fn get_blob(&self, digest: &str, out: &mut dyn Write) -> Result<u64>;
    fn has_blob(&self, digest: &str) -> Result<bool>;
    /// Stores a blob from a local file, unless the store has it; whether bytes were written.
    fn put_blob_file(&self, digest: &str, size: u64, path: &Path) -> Result<bool>;
    fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()>;
    /// Stores a manifest or index, under `tag` when given (else by digest only).
    fn put_manifest(&self, tag: Option<&str>, media_type: &str, bytes: &[u8]) -> Result<()>;
    /// For messages, and as the place a dedup record names (`host/repository`, `oci:DIR`).
    fn describe(&self) -> String;
    /// A blob's file when the store is a local directory (read in place, not copied), if the
    /// store has it.
    fn local_blob(&self, _digest: &str) -> Option<PathBuf> {
        None
    }
    /// Makes `digest`, which is at `from` (another store's `describe()`), present here without
    /// an upload if the store can (a registry's cross-repository mount). False when it cannot.
    fn try_mount(&self, _digest: &str, _from: &str) -> Result<bool> {
        Ok(false)
    }
}

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `registry/repository`.
    Registry { host: String, repository: String },
    /// `oci:DIR`.
    Layout(PathBuf),
}

/// `[oci:]…[:tag][@digest]`: what to open and which manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub location: Location,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// The tag or digest to fetch (a digest wins; `latest` when neither is given).
    pub fn reference(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".into())
    }

    /// Parses `oci:DIR[:TAG]` or a registry reference: `[host[:port]/]name[:tag][@digest]`,
    /// with Docker Hub's defaults (`docker.io`, `library/`).
    pub fn parse(s: &str) -> Result<ImageRef> {
        if let Some(rest) = s.strip_prefix("oci:") {
            // The tag is after the last ':' unless that ':' is part of the path.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !t.is_empty() => (d, Some(t.to_string())),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "{s:?}: an OCI layout reference needs a directory"
                )));
            }
            return Ok(ImageRef {
                location: Location::Layout(PathBuf::from(dir)),
                tag,
                digest: None,
            });
        }
        let r = overlaybd_oci::reference::Reference::parse(s)?;
        Ok(ImageRef {
            location: Location::Registry {
                host: r.host,
                repository: r.repository,
            },
            tag: r.tag,
            digest: r.digest,
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Location::Layout(d) => write!(f, "oci:{}", d.display())?,
            Location::Registry { host, repository } => write!(f, "{host}/{repository}")?,
        }
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`).
#[derive(Debug)]
pub struct Layout {
    dir: PathBuf,
    /// Serialises index.json updates.
    lock: std::sync::Mutex<()>,
}

impl Layout {
    /// Opens a layout; `create` makes an empty one where there is none.
    pub fn open(dir: &Path, create: bool) -> Result<Layout> {
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            if !create {
                return Err(Error::InvalidInput(format!(
                    "{} is not an OCI layout (no oci-layout file)",
                    dir.display()
                )));
            }
            fs::create_dir_all(dir.join("blobs/sha256"))
                .map_err(|e| Error::io("create", dir, e))?;
            fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(|e| Error::io("write", &marker, e))?;
            let idx = Index {
                schema_version: 2,
                media_type: Some(oci::media::OCI_INDEX.into()),
                manifests: Vec::new(),
                annotations: None,
            };
            let p = dir.join("index.json");
            let b = serde_json::to_vec(&idx).map_err(|e| Error::json("index.json", e))?;
            fs::write(&p, b).map_err(|e| Error::io("write", &p, e))?;
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
            lock: std::sync::Mutex::new(()),
        })
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = oci::check_digest(digest)?;
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    pub fn index(&self) -> Result<Index> {
        let p = self.dir.join("index.json");
        let b = fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
        serde_json::from_slice(&b).map_err(|e| Error::json(format!("parse {}", p.display()), e))
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, bytes).map_err(|e| Error::io("write", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename to", path, e))?;
        Ok(())
    }
}

impl Store for Layout {
    fn get_manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        let idx = self.index()?;
        let desc: Option<&Descriptor> = if reference.starts_with("sha256:") {
            idx.manifests.iter().find(|d| d.digest == reference)
        } else {
            idx.manifests
                .iter()
                .find(|d| d.annotation(REF_NAME) == Some(reference))
                .or_else(|| {
                    (reference == "latest" && idx.manifests.len() == 1).then(|| &idx.manifests[0])
                })
        };
        let (digest, mt) = match desc {
            Some(d) => (d.digest.clone(), Some(d.media_type.clone())),
            None if reference.starts_with("sha256:") => (reference.to_string(), None),
            None => {
                return Err(Error::NotFound(format!(
                    "{}: no manifest tagged {reference:?} in index.json",
                    self.describe()
                )))
            }
        };
        let p = self.blob_path(&digest)?;
        let b = fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
        if oci::sha256_digest(&b) != digest {
            return Err(Error::Invalid(format!(
                "{}: blob {digest} does not match its digest",
                self.describe()
            )));
        }
        Ok((b, mt))
    }

    fn get_blob(&self, digest: &str, out: &mut dyn Write) -> Result<u64> {
        let p = self.blob_path(digest)?;
        let mut f = File::open(&p).map_err(|e| Error::io("open", &p, e))?;
        let n = std::io::copy(&mut f, out).map_err(|e| Error::io("read", &p, e))?;
        Ok(n)
    }

    fn has_blob(&self, digest: &str) -> Result<bool> {
        Ok(self.blob_path(digest)?.exists())
    }

    fn put_blob_file(&self, digest: &str, _size: u64, path: &Path) -> Result<bool> {
        let dst = self.blob_path(digest)?;
        if dst.exists() {
            return Ok(false);
        }
        let tmp = dst.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        // The work files handed here are not written again: a link, where the filesystem is
        // the same (no copy of a layer), else a copy. Never a link to a symbolic link.
        let is_file = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
        if !is_file || fs::hard_link(path, &tmp).is_err() {
            fs::copy(path, &tmp)
                .map_err(|e| Error::io("copy", path, e))
                .at(|| format!("store {digest} as {}", tmp.display()))?;
        }
        fs::rename(&tmp, &dst).map_err(|e| Error::io("rename to", &dst, e))?;
        Ok(true)
    }

    fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let dst = self.blob_path(digest)?;
        if dst.exists() {
            return Ok(());
        }
        self.write_atomic(&dst, bytes)
    }

    fn put_manifest(&self, tag: Option<&str>, media_type: &str, bytes: &[u8]) -> Result<()> {
        let digest = oci::sha256_digest(bytes);
        self.put_blob(&digest, bytes)?;
        let Some(tag) = tag else { return Ok(()) };
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut idx = self.index()?;
        idx.manifests
            .retain(|d| d.annotation(REF_NAME) != Some(tag));
        idx.manifests.push(Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: bytes.len() as u64,
            urls: None,
            annotations: Some([(REF_NAME.to_string(), tag.to_string())].into()),
            platform: None,
            artifact_type: None,
        });
        let b = serde_json::to_vec(&idx).map_err(|e| Error::json("index.json", e))?;
        self.write_atomic(&self.dir.join("index.json"), &b)
    }

    fn describe(&self) -> String {
        format!("oci:{}", self.dir.display())
    }

    fn local_blob(&self, digest: &str) -> Option<PathBuf> {
        // Absolute: the caller links to it from elsewhere (`oci:DIR` may be relative).
        let p = self.blob_path(digest).ok()?;
        std::fs::canonicalize(p).ok().filter(|p| p.is_file())
    }
}

/// Reads a whole blob into memory (configs and manifests), checking its digest and a size cap.
pub fn read_small_blob(store: &dyn Store, desc: &Descriptor, cap: u64) -> Result<Vec<u8>> {
    if desc.size > cap {
        return Err(Error::Invalid(format!(
            "{} is {} bytes; at most {cap} are accepted",
            desc.digest, desc.size
        )));
    }
    let mut buf = Vec::with_capacity(desc.size as usize);
    let mut limited = LimitWriter {
        inner: &mut buf,
        left: cap,
    };
    store.get_blob(&desc.digest, &mut limited)?;
    if oci::sha256_digest(&buf) != desc.digest || buf.len() as u64 != desc.size {
        return Err(Error::Invalid(format!(
            "{}: blob {} does not match its descriptor ({} bytes read)",
            store.describe(),
            desc.digest,
            buf.len()
        )));
    }
    Ok(buf)
}

struct LimitWriter<'a> {
    inner: &'a mut Vec<u8>,
    left: u64,
}

impl Write for LimitWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() as u64 > self.left {
            return Err(std::io::Error::other(
                "blob is larger than its descriptor says",
            ));
        }
        self.left -= b.len() as u64;
        self.inner.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = ImageRef::parse(s).unwrap();
        match r.location {
            Location::Registry { host, repository } => (host, repository, r.tag, r.digest),
            Location::Layout(_) => panic!("not a registry ref"),
        }
    }

    #[test]
    fn references_parse_like_docker() {
        assert_eq!(
            reg("busybox"),
            ("docker.io".into(), "library/busybox".into(), None, None)
        );
        assert_eq!(
            reg("127.0.0.1:5000/a/b:v1"),
            (
                "127.0.0.1:5000".into(),
                "a/b".into(),
                Some("v1".into()),
                None
            )
        );
        assert_eq!(reg("localhost/x").0, "localhost");
        let d = format!("sha256:{}", "1".repeat(64));
        assert_eq!(reg(&format!("r.io/x@{d}")).3, Some(d));
        assert!(ImageRef::parse("r.io/X").is_err());
        assert!(ImageRef::parse("r.io/x:bad/tag").is_err());
        assert!(ImageRef::parse("r.io/x@sha256:12").is_err());
        let o = ImageRef::parse("oci:/tmp/dir:v2").unwrap();
        assert_eq!(o.location, Location::Layout("/tmp/dir".into()));
        assert_eq!(o.tag.as_deref(), Some("v2"));
        let o = ImageRef::parse("oci:./dir").unwrap();
        assert_eq!(
            (o.location, o.tag),
            (Location::Layout("./dir".into()), None)
        );
    }

    #[test]
    fn a_layout_keeps_blobs_and_tags() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::open(dir.path(), true).unwrap();
        let blob = b"{}";
        let d = oci::sha256_digest(blob);
        l.put_blob(&d, blob).unwrap();
        assert!(l.has_blob(&d).unwrap());
        l.put_manifest(Some("v1"), oci::media::OCI_MANIFEST, b"{\"a\":1}")
            .unwrap();
        l.put_manifest(Some("v1"), oci::media::OCI_MANIFEST, b"{\"a\":2}")
            .unwrap();
        assert_eq!(l.index().unwrap().manifests.len(), 1);
        let (b, mt) = l.get_manifest("v1").unwrap();
        assert_eq!(
            (b.as_slice(), mt.as_deref()),
            (&b"{\"a\":2}"[..], Some(oci::media::OCI_MANIFEST))
        );
        assert!(l.get_manifest("v2").is_err());
        assert!(l.blob_path("sha256:../../x").is_err());
    }

    /// A work file becomes a blob by a link (no copy); a symbolic link (a source layout's blob
    /// read in place) by a copy of what it points to, never a link to the link.
    #[test]
    fn a_layout_links_work_files_and_copies_through_symlinks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::open(&dir.path().join("layout"), true).unwrap();
        let (a, b) = (b"layer a".as_slice(), b"layer b".as_slice());
        let (da, db) = (oci::sha256_digest(a), oci::sha256_digest(b));
        let work = dir.path().join("out-0000");
        fs::write(&work, a).unwrap();
        assert!(l.put_blob_file(&da, a.len() as u64, &work).unwrap());
        let blob = l.blob_path(&da).unwrap();
        assert_eq!(
            fs::metadata(&blob).unwrap().ino(),
            fs::metadata(&work).unwrap().ino()
        );
        assert!(
            !l.put_blob_file(&da, a.len() as u64, &work).unwrap(),
            "already there"
        );
        let target = dir.path().join("elsewhere");
        fs::write(&target, b).unwrap();
        let link = dir.path().join("src-0001");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(l.put_blob_file(&db, b.len() as u64, &link).unwrap());
        let blob = l.blob_path(&db).unwrap();
        assert!(fs::symlink_metadata(&blob).unwrap().file_type().is_file());
        assert_eq!(fs::read(&blob).unwrap(), b);
    }
}
