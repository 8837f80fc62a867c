//! TurboOCI layers (`docs/format/turbooci.md`): a meta image's layer carries the original
//! layer's digest in its annotations. At pull time the snapshotter fetches the small meta blob
//! and unpacks it into `fs/` ([`fetch_meta`]: `ext4.fs.meta`, `.turbo.ociv1`, `gzip.meta`,
//! `tar.blake3`), and the layer is a remote snapshot; when that fails, containerd unpacks it and
//! the commit does the rest. Either way the layer is a block layer whose lower reads the meta
//! layer from `fs/` and the file data from the original layer in the image's repository,
//! lazily.

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

/// The files a meta blob may hold (overlaybd's three, and ours).
const META_FILES: [&str; 5] = [
    turbo_oci_file::EXT4_META,
    turbo_oci_file::EROFS_META,
    turbo_oci_file::MARKER,
    turbo_oci_file::GZIP_INDEX,
    turbo_oci_file::TAR_DIGESTS,
];

/// A meta blob larger than this is refused (it is a few percent of its original layer).
const META_BLOB_LIMIT: u64 = 4 << 30;

/// Reads a blob from its start, hashing what it reads; keeps the first read error (which
/// the gzip and tar readers above would report as a format error).
struct Hashing<'a> {
    blob: &'a dyn zfile::ReadAt,
    pos: u64,
    sha: sha2::Sha256,
    error: Option<String>,
}

impl std::io::Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.blob.read_at(self.pos, buf).inspect_err(|e| {
            self.error.get_or_insert_with(|| e.to_string());
        })?;
        self.sha.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// The most a meta blob may unpack to, for `size` compressed bytes: its files are mostly
/// compressed already (a ZFile, zlib'ed index windows, digests), so a blob that inflates far
/// beyond this is refused before it fills the disk (its digest is only known at its end).
fn unpack_limit(size: u64) -> u64 {
    size.saturating_mul(16).saturating_add(64 << 20)
}

/// Fetches a TurboOCI meta blob (`digest`, `size` bytes, read from `blob`) and unpacks it into
/// `fs`, as containerd would have: only the files a meta blob holds, regular files at the top
/// level, each written beside its final name and renamed once the whole blob has matched its
/// digest, the meta layer last. Anything else in the blob, a wrong digest or size, a blob that
/// is not a gzip'ed tar or unpacks to more than [`unpack_limit`] is an error and leaves
/// nothing behind.
pub(super) fn fetch_meta(
    blob: &dyn zfile::ReadAt,
    digest: &str,
    size: u64,
    fs: &Path,
) -> Result<()> {
    use sha2::Digest;
    let bad = |why: String| Error::FailedPrecondition(format!("meta blob {digest}: {why}"));
    if size > META_BLOB_LIMIT {
        return Err(bad(format!("{size} bytes, more than a meta blob holds")));
    }
    // Large reads: each is a range request.
    let mut r = std::io::BufReader::with_capacity(
        1 << 20,
        Hashing {
            blob,
            pos: 0,
            sha: sha2::Sha256::new(),
            error: None,
        },
    );
    let limit = unpack_limit(size);
    let mut unpacked = 0u64;
    let mut written: Vec<(std::path::PathBuf, std::path::PathBuf)> = Vec::new();
    let result = (|| -> Result<()> {
        let mut gz = flate2::read::GzDecoder::new(&mut r);
        {
            let mut ar = tar::Archive::new(&mut gz);
            let entries = ar.entries().map_err(|e| bad(format!("not a tar: {e}")))?;
            for e in entries {
                let mut e = e.map_err(|e| bad(format!("a tar entry: {e}")))?;
                let path = e.path().map_err(|e| bad(format!("an entry's name: {e}")))?;
                let name = path.to_str().unwrap_or_default().trim_start_matches("./");
                let Some(&name) = META_FILES.iter().find(|n| **n == name) else {
                    return Err(bad(format!("unexpected entry {:?}", path.display())));
                };
                if !e.header().entry_type().is_file() {
                    return Err(bad(format!("{name} is not a regular file")));
                }
                if written.iter().any(|(_, to)| to.ends_with(name)) {
                    return Err(bad(format!("{name} twice")));
                }
                unpacked = unpacked.saturating_add(e.header().size().unwrap_or(u64::MAX));
                if unpacked > limit {
                    return Err(bad(format!(
                        "unpacks to more than {limit} bytes, far more than a meta blob of {size}"
                    )));
                }
                let (part, to) = (fs.join(format!(".{name}.part")), fs.join(name));
                let mut out = std::fs::File::create(&part)
                    .map_err(|e| Error::Internal(format!("create {}: {e}", part.display())))?;
                written.push((part.clone(), to));
                std::io::copy(&mut e, &mut out)
                    .and_then(|_| out.sync_all())
                    .map_err(|e| bad(format!("{name}: {e}")))?;
            }
        }
        // The gzip trailer and anything after it count for the digest.
        std::io::copy(&mut gz, &mut std::io::sink())
            .map_err(|e| bad(format!("after the tar: {e}")))?;
        drop(gz);
        std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| bad(format!("read: {e}")))?;
        let h = r.get_mut();
        let got = format!("sha256:{}", hex::encode(h.sha.finalize_reset()));
        if got != digest || h.pos != size {
            return Err(bad(format!("read {} bytes with digest {got}", h.pos)));
        }
        // The meta layer last: its presence says the rest is in place.
        written.sort_by_key(|(_, to)| {
            to.ends_with(turbo_oci_file::EXT4_META) || to.ends_with(turbo_oci_file::EROFS_META)
        });
        for (part, to) in &written {
            std::fs::rename(part, to)
                .map_err(|e| Error::Internal(format!("rename {}: {e}", part.display())))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (part, _) in &written {
            let _ = std::fs::remove_file(part);
        }
    }
    match r.get_ref().error.clone() {
        Some(e) if result.is_err() => Err(Error::Unavailable(format!(
            "meta blob {digest}: read from the registry: {e}"
        ))),
        _ => result,
    }
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

    /// A gzip'ed tar of `(name, type, content)` entries, and its digest.
    fn meta_blob(entries: &[(&str, tar::EntryType, &[u8])]) -> (Vec<u8>, String) {
        use sha2::Digest;
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut t = tar::Builder::new(gz);
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if kind.is_symlink() {
                h.set_link_name("/etc/passwd").unwrap();
            }
            // Written raw: `append_data` refuses names like `../x`, which a hostile blob has.
            let mut raw = [0u8; 100];
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().name = raw;
            h.set_cksum();
            t.append(&h, *data).unwrap();
        }
        let blob = t.into_inner().unwrap().finish().unwrap();
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&blob)));
        (blob, digest)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_meta_blob_is_fetched_into_the_snapshot_only_when_whole_and_right() {
        use tar::EntryType::{Regular, Symlink};
        let good = [
            ("ext4.fs.meta", Regular, &b"meta"[..]),
            (".turbo.ociv1", Regular, &b""[..]),
            ("gzip.meta", Regular, &b"index"[..]),
            ("tar.blake3", Regular, &b"digests"[..]),
        ];
        let (blob, digest) = meta_blob(&good);
        let d = tempfile::tempdir().unwrap();
        fetch_meta(&blob, &digest, blob.len() as u64, d.path()).unwrap();
        assert_eq!(
            names(d.path()),
            [".turbo.ociv1", "ext4.fs.meta", "gzip.meta", "tar.blake3"]
        );
        assert_eq!(std::fs::read(d.path().join("gzip.meta")).unwrap(), b"index");
        // Refused, leaving nothing: a wrong digest, a wrong size, a blob that is not a
        // gzip'ed tar, an entry a meta blob does not hold (or that escapes), a link, a
        // repeated name.
        let sha = |b: &[u8]| {
            use sha2::Digest;
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
        };
        let other = format!("sha256:{}", "0".repeat(64));
        let mut cases: Vec<(Vec<u8>, String, u64, &str)> = vec![
            (blob.clone(), other, blob.len() as u64, "digest"),
            (blob.clone(), digest.clone(), blob.len() as u64 - 1, "bytes"),
            (b"not gzip".to_vec(), sha(b"not gzip"), 8, "a tar entry"),
        ];
        for (entries, why) in [
            (
                vec![
                    ("ext4.fs.meta", Regular, &b"m"[..]),
                    ("../evil", Regular, &b"x"[..]),
                ],
                "unexpected entry",
            ),
            (vec![("etc/passwd", Regular, &b"x"[..])], "unexpected entry"),
            (vec![("gzip.meta", Symlink, &b""[..])], "not a regular file"),
            (
                vec![
                    ("gzip.meta", Regular, &b"a"[..]),
                    ("gzip.meta", Regular, &b"b"[..]),
                ],
                "twice",
            ),
        ] {
            let (b, dg) = meta_blob(&entries);
            let n = b.len() as u64;
            cases.push((b, dg, n, why));
        }
        // A blob that inflates far beyond a meta blob's size (its digest may even match).
        let zeros = vec![0u8; 80 << 20];
        let (b, dg) = meta_blob(&[("gzip.meta", Regular, &zeros[..])]);
        let n = b.len() as u64;
        assert!(n < 1 << 20);
        cases.push((b, dg, n, "unpacks to more than"));
        for (b, dg, n, why) in cases {
            let d = tempfile::tempdir().unwrap();
            let e = fetch_meta(&b, &dg, n, d.path()).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
            assert!(names(d.path()).is_empty(), "{why}: {:?}", names(d.path()));
        }
        // A registry that fails mid-blob: its error, not a format error.
        struct Failing(Vec<u8>);
        impl zfile::ReadAt for Failing {
            fn read_at(&self, off: u64, buf: &mut [u8]) -> std::io::Result<usize> {
                // The first 64 bytes, then the failure.
                let off = off as usize;
                if off >= 64 {
                    return Err(std::io::Error::other("HTTP 503 from the registry"));
                }
                let n = buf.len().min(64 - off);
                buf[..n].copy_from_slice(&self.0[off..off + n]);
                Ok(n)
            }
            fn size(&self) -> std::io::Result<u64> {
                Ok(self.0.len() as u64)
            }
        }
        let d = tempfile::tempdir().unwrap();
        let e = fetch_meta(&Failing(blob.clone()), &digest, blob.len() as u64, d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("HTTP 503"), "{e}");
        assert!(names(d.path()).is_empty());
    }
}
