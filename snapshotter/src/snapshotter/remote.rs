//! The remote-layer decision at pull time: an overlaybd layer whose blob the registry serves
//! is committed at once as a remote snapshot; anything else is unpacked by containerd.

use std::collections::BTreeMap;
use std::time::Duration;

use overlaybd_api::LayerConfig;
use overlaybd_oci::label as labels;
use overlaybd_oci::reference::Reference;
use tracing::{info, warn};

use super::{io, Snapshotter};
use crate::error::{Error, Result};
use crate::store::{now_ns, Kind, Snapshot, Storage};

/// What a pull-time Prepare does with a layer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// Committed as a remote snapshot: containerd skips the download.
    Remote,
    /// Downloaded and unpacked by containerd; why, when the layer is an overlaybd layer that
    /// could have been read lazily.
    Unpack(Option<String>),
}

impl Snapshotter {
    /// A pull-time Prepare of an overlaybd layer: commit it as a remote snapshot when its blob
    /// can be read. Otherwise containerd downloads and unpacks it: [`Decision::Unpack`] says
    /// why when the layer is one this snapshotter would have read lazily.
    pub(super) async fn try_remote(
        &self,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Decision> {
        let get = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let target = get(labels::TARGET_REF).unwrap_or_default();
        let (Some(digest), Some(size), Some(image)) = (
            get(labels::BLOB_DIGEST),
            get(labels::BLOB_SIZE),
            get(labels::CRI_IMAGE_REF).or_else(|| get(labels::IMAGE_REF)),
        ) else {
            return Ok(Decision::Unpack(None));
        };
        // An acceleration layer or a download asked for: containerd downloads and unpacks it.
        if get(labels::ACCELERATION_LAYER) == Some("yes")
            || get(labels::DOWNLOAD_REMOTE_BLOB) == Some("download")
        {
            return Ok(Decision::Unpack(None));
        }
        // A TurboOCI meta layer: its small blob is fetched and unpacked here, so that the
        // layer is a remote snapshot too. Left to containerd, its unpack would also make
        // containerd fetch every layer above it, native remote layers included (its unpacker
        // fetches the rest of the image from the first layer it must unpack).
        let turbo = overlaybd_oci::annotation::turbo_oci_target(labels).is_some();
        let why_not = |why: String| {
            warn!(
                snapshot = key,
                target,
                image,
                blob = digest,
                "remote-snapshot-prepared=false: the layer is downloaded and unpacked, not read \
                 lazily: {why}"
            );
            Ok(Decision::Unpack(Some(why)))
        };
        let Ok(size) = size.parse::<u64>() else {
            return why_not(format!("blob-size {size:?} is not a number"));
        };
        if !self.parent_is_block(parent)? {
            return why_not("the parent layer is not an overlaybd layer".into());
        }
        // A layer another namespace (or an earlier pull) already committed.
        if let Some(t) = self.meta.get(target)? {
            if t.kind == Kind::Committed && t.parent == parent {
                return Ok(Decision::Remote);
            }
            return why_not(format!("a different snapshot is named {target}"));
        }
        let image_ref = match Reference::parse(image) {
            Ok(r) => r,
            Err(e) => return why_not(e.to_string()),
        };
        let scheme = if get(labels::PLAIN_HTTP) == Some("true") {
            "http"
        } else {
            "https"
        };
        let repo_blob_url = image_ref.repo_blob_url_over(scheme);
        if !turbo {
            if let Err(e) = self.check_blob(&repo_blob_url, digest, size).await {
                return why_not(format!("the registry could not be read: {e}"));
            }
        }
        let id = self.meta.next_id()?;
        let (fs, block) = (self.fs_dir(id), self.block_dir(id));
        for d in [&fs, &block] {
            std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
        }
        let mut cfg = self.parent_config(parent)?;
        let mut labels = labels.clone();
        let (mut used, mut inodes) = (0, 0);
        if turbo {
            if let Err(e) = self.fetch_meta(&repo_blob_url, digest, size, &fs).await {
                let _ = std::fs::remove_dir_all(self.dir(id));
                // containerd downloads and unpacks the meta blob instead: still lazy for the
                // file data, so not reported as a fallback.
                warn!(
                    snapshot = key,
                    blob = digest,
                    "a TurboOCI meta blob left to containerd to unpack: {e}"
                );
                return Ok(Decision::Unpack(None));
            }
            // A blob that unpacked but does not make a meta layer would fail containerd's
            // unpack at Commit the same way: fail now.
            let t = super::turbo::lower(&labels, &fs)
                .and_then(|t| t.ok_or_else(|| Error::Internal("not a TurboOCI layer".into())));
            let t = match t.and_then(|t| Ok((t, crate::mount::usage(&fs)?))) {
                Ok((t, u)) => {
                    (used, inodes) = u;
                    t
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(self.dir(id));
                    return Err(e);
                }
            };
            cfg.repo_blob_url = t.repo_blob_url;
            cfg.lowers.push(t.lower);
            if let Some(fs_type) = t.fs_type {
                labels.insert(labels::BLOB_FS_TYPE.to_string(), fs_type.to_string());
            }
        } else {
            cfg.repo_blob_url = repo_blob_url;
            cfg.lowers.push(LayerConfig {
                dir: fs.display().to_string(),
                digest: digest.to_string(),
                size,
                integrity_root: get(labels::INTEGRITY_ROOT).unwrap_or_default().to_string(),
                ..LayerConfig::default()
            });
        }
        cfg.result_file = block.join("result").display().to_string();
        let done = self.write_config(id, &cfg).and_then(|_| {
            std::fs::write(self.dir(id).join("image_ref"), image).map_err(io("write image_ref"))
        });
        labels.insert(labels::REMOTE.into(), labels::REMOTE_VALUE.into());
        let now = now_ns();
        let s = Snapshot {
            id,
            kind: Kind::Committed,
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
            storage: Storage::Remote,
            size: used,
            inodes,
        };
        if let Err(e) = done.and_then(|_| self.meta.create(target, &s)) {
            let _ = std::fs::remove_dir_all(self.dir(id));
            return Err(e);
        }
        info!(
            snapshot = target,
            image,
            blob = digest,
            turbo_oci = turbo,
            "remote-snapshot-prepared=true"
        );
        Ok(Decision::Remote)
    }

    /// The registry settings the daemon will use, with the lazy check's time limit per
    /// request.
    fn registry_options(&self) -> overlaybd_registry::RegistryOptions {
        overlaybd_registry::RegistryOptions {
            deadline: Duration::from_secs(self.cfg.lazy_check_timeout_secs),
            hosts_dir: Some(self.cfg.hosts_dir.clone()).filter(|d| d.is_dir()),
            docker_config: self.docker_config.clone(),
            ..overlaybd_registry::RegistryOptions::default()
        }
    }

    /// Fetches a TurboOCI meta blob and unpacks it into `fs` ([`super::turbo::fetch_meta`]).
    async fn fetch_meta(
        &self,
        repo_blob_url: &str,
        digest: &str,
        size: u64,
        fs: &std::path::Path,
    ) -> Result<()> {
        use overlaybd_registry::{BlobLocation, RegistryBlob};
        let loc = BlobLocation::from_repo_blob_url(repo_blob_url, digest)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let opts = self.registry_options();
        // Prepares wait on this one: a whole budget, not only a deadline per request (at
        // 1 MB/s a meta blob of a few MB takes a few seconds more than the check).
        let limit = Duration::from_secs(self.cfg.lazy_check_timeout_secs + size / 1_000_000);
        let (digest, fs) = (digest.to_string(), fs.to_path_buf());
        let job = tokio::task::spawn_blocking(move || {
            let blob = RegistryBlob::open(loc, Some(size), opts)
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            super::turbo::fetch_meta(&blob, &digest, size, &fs)
        });
        match tokio::time::timeout(limit, job).await {
            Ok(r) => r.map_err(|e| Error::Internal(format!("meta blob fetch: {e}")))?,
            Err(_) => Err(Error::Unavailable(format!(
                "the meta blob was not fetched within {} s",
                limit.as_secs()
            ))),
        }
    }

    /// Reads the blob's size from the registry (HEAD), as the daemon will, within the lazy
    /// check's time limit.
    pub(super) async fn check_blob(
        &self,
        repo_blob_url: &str,
        digest: &str,
        size: u64,
    ) -> Result<()> {
        use overlaybd_registry::{BlobLocation, RegistryBlob};
        let loc = BlobLocation::from_repo_blob_url(repo_blob_url, digest)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let limit = Duration::from_secs(self.cfg.lazy_check_timeout_secs);
        let opts = self.registry_options();
        let job = tokio::task::spawn_blocking(move || RegistryBlob::open(loc, Some(size), opts));
        match tokio::time::timeout(limit + Duration::from_secs(1), job).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Error::Unavailable(e.to_string())),
            Ok(Err(e)) => Err(Error::Internal(format!("blob check: {e}"))),
            Err(_) => Err(Error::Unavailable(format!(
                "no answer within {} s",
                limit.as_secs()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A snapshotter whose registry (`r.example:5000`) is a closed port.
    fn unreachable(d: &std::path::Path) -> Snapshotter {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hosts = d.join("certs.d/r.example:5000");
        std::fs::create_dir_all(&hosts).unwrap();
        std::fs::write(
            hosts.join("hosts.toml"),
            format!("server = \"http://127.0.0.1:{port}\"\n"),
        )
        .unwrap();
        let cfg = Config {
            root: d.join("root"),
            hosts_dir: d.join("certs.d"),
            lazy_check_timeout_secs: 2,
            ..Config::default()
        };
        Snapshotter::open(cfg).unwrap()
    }

    /// When the snapshotter cannot fetch a TurboOCI meta blob, containerd unpacks it into the
    /// prepared directory, and the commit makes the block layer over the original.
    #[test]
    fn a_meta_blob_the_snapshotter_cannot_fetch_is_unpacked_by_containerd() {
        let d = tempfile::tempdir().unwrap();
        let sn = unreachable(d.path());
        let mut l = BTreeMap::new();
        for (k, v) in [
            (labels::TARGET_REF, format!("sha256:{}", "1".repeat(64))),
            (labels::BLOB_DIGEST, format!("sha256:{}", "2".repeat(64))),
            (labels::BLOB_SIZE, "1000".into()),
            (labels::IMAGE_REF, "r.example:5000/app:v1".into()),
            (
                overlaybd_oci::annotation::TURBO_OCI_TARGET_DIGEST,
                format!("sha256:{}", "3".repeat(64)),
            ),
        ] {
            l.insert(k.to_string(), v);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let key = "ns/1/extract-1 x";
        let m = rt.block_on(sn.prepare(key, "", l, Kind::Active)).unwrap();
        assert_eq!(m[0].kind, "bind");
        // Only the active snapshot's directory: the one the fetch had is gone.
        let dirs = std::fs::read_dir(d.path().join("root/snapshots"))
            .unwrap()
            .count();
        assert_eq!(dirs, 1);
        std::fs::write(
            std::path::Path::new(&m[0].source).join("ext4.fs.meta"),
            b"meta",
        )
        .unwrap();
        rt.block_on(sn.commit("ns/2/x", key, BTreeMap::new()))
            .unwrap();
        let s = sn.meta.need("ns/2/x").unwrap();
        let cfg = sn.read_config(s.id).unwrap();
        let lower = cfg.lowers.last().unwrap();
        assert_eq!(lower.target_digest, format!("sha256:{}", "3".repeat(64)));
        assert!(lower.file.ends_with("/ext4.fs.meta"), "{}", lower.file);
    }

    #[test]
    fn a_blob_the_registry_does_not_serve_falls_back_to_a_normal_prepare() {
        let d = tempfile::tempdir().unwrap();
        let sn = unreachable(d.path());
        let mut l = BTreeMap::new();
        l.insert(
            labels::TARGET_REF.to_string(),
            format!("sha256:{}", "1".repeat(64)),
        );
        l.insert(
            labels::BLOB_DIGEST.to_string(),
            format!("sha256:{}", "2".repeat(64)),
        );
        l.insert(labels::BLOB_SIZE.to_string(), "1000".into());
        l.insert(
            labels::IMAGE_REF.to_string(),
            "r.example:5000/app:v1".into(),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let m = rt
            .block_on(sn.prepare("ns/1/extract-1 x", "", l, Kind::Active))
            .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[0].kind, "bind",
            "a plain directory for containerd to unpack into"
        );
        assert_eq!(sn.stat("ns/1/extract-1 x").unwrap().kind, Kind::Active);
    }
}
