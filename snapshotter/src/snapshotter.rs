//! The snapshotter's logic, under the gRPC edge (`service`): containerd's overlayfs rules for
//! plain layers and containers, and overlaybd's for block layers (`../shared/reference/
//! overlaybd.md` §6.3):
//!
//! - a pull-time Prepare of an overlaybd layer whose blob the registry serves is committed at
//!   once as a remote snapshot (`block/config.v1.json`), and answered AlreadyExists, so
//!   containerd never downloads it. If the blob cannot be read, or the labels are incomplete,
//!   the layer is unpacked by containerd instead (a normal download);
//! - a layer unpacked by containerd whose directory holds `overlaybd.commit` (or `.sealed`)
//!   becomes a local block layer at Commit; a trace layer (`acceleration-layer: yes`) becomes
//!   the acceleration layer of the image below it;
//! - a container on a block parent gets the daemon's device for the topmost block snapshot of
//!   its chain, mounted once at `<that snapshot>/block/mountpoint`, under an overlay
//!   (`overlayfs`), or a writable overlaybd layer mounted read-write (`dir`) or handed over as
//!   a device (`dev`).
//!
//! Mutating calls are serialised (one lock): they are rare next to reads, and device use
//! counts are decided from the metadata under that lock.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use overlaybd_api::pb;
use overlaybd_api::{ImageConfig, LayerConfig, UpperConfig};
use overlaybd_oci::reference::Reference;
use overlaybd_registry::credentials::DockerConfig;
use tracing::{info, warn};

use crate::config::{Config, RwMode};
use crate::error::{Error, Result};
use crate::filter::{Fields, Filters};
use crate::mount;
use crate::store::{now_ns, Kind, MetaStore, Snapshot, Storage};
use overlaybd_oci::label as labels;

/// One mount for containerd (containerd's `types.Mount`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Debug)]
pub struct Snapshotter {
    cfg: Config,
    meta: MetaStore,
    lock: tokio::sync::Mutex<()>,
    docker_config: Option<Arc<DockerConfig>>,
}

/// containerd's unpacker names the snapshots it extracts layers into `extract-<rand> <chainID>`
/// (`snapshots.UnpackKeyPrefix`); with the namespace prefix the backend sees
/// `<ns>/<seq>/extract-…`.
fn is_unpack_key(key: &str) -> bool {
    // The chain ID after the space has no '/', so the last '/'-part is containerd's key.
    key.rsplit('/')
        .next()
        .is_some_and(|k| k.starts_with("extract-"))
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it), mode 0600.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("create {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("rename {}", path.display())))
}

/// `fs/overlaybd.commit` or `fs/overlaybd.sealed` holding a ZFile or LSMT layer.
fn local_layer_file(fs: &Path) -> Option<PathBuf> {
    for name in ["overlaybd.commit", "overlaybd.sealed"] {
        let p = fs.join(name);
        let mut magic = [0u8; 8];
        let ok = std::fs::File::open(&p)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 0))
            .is_ok();
        if ok && (magic == zfile::header::MAGIC0 || magic == overlaybd_lsmt::header::MAGIC0) {
            return Some(p);
        }
    }
    None
}

impl Snapshotter {
    pub fn open(cfg: Config) -> Result<Snapshotter> {
        let snaps = cfg.root.join("snapshots");
        std::fs::create_dir_all(&snaps).map_err(io(format!("create {}", snaps.display())))?;
        let meta = MetaStore::open(&cfg.root.join("metadata.redb"))?;
        let configured =
            (!cfg.docker_config.as_os_str().is_empty()).then_some(cfg.docker_config.as_path());
        let docker_config = DockerConfig::load_configured(configured)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?
            .map(Arc::new);
        Ok(Snapshotter {
            cfg,
            meta,
            lock: tokio::sync::Mutex::new(()),
            docker_config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.cfg.root.join("snapshots").join(id.to_string())
    }
    fn fs_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }
    fn block_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("block")
    }
    fn config_path(&self, id: u64) -> PathBuf {
        self.block_dir(id).join("config.v1.json")
    }
    fn mountpoint(&self, id: u64) -> PathBuf {
        self.block_dir(id).join("mountpoint")
    }
    fn device_id(id: u64) -> String {
        format!("obd-{id}")
    }

    fn read_config(&self, id: u64) -> Result<ImageConfig> {
        ImageConfig::load(&self.config_path(id))
            .map_err(|e| Error::Internal(format!("snapshot {id}: {e}")))
    }

    fn write_config(&self, id: u64, c: &ImageConfig) -> Result<()> {
        let dir = self.block_dir(id);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let bytes = serde_json::to_vec_pretty(c).expect("a config always serialises");
        write_atomic(&self.config_path(id), &bytes)
    }

    /// The lowers of a block parent's device config (none for no parent).
    fn parent_config(&self, parent: &str) -> Result<ImageConfig> {
        if parent.is_empty() {
            return Ok(ImageConfig::default());
        }
        let p = self.meta.need(parent)?;
        let mut c = self.read_config(p.id)?;
        // What the parent's device does at attach is not inherited by the layers above.
        c.acceleration_layer = false;
        c.record_trace_path.clear();
        c.upper = UpperConfig::default();
        c.result_file.clear();
        Ok(c)
    }

    fn parent_is_block(&self, parent: &str) -> Result<bool> {
        Ok(parent.is_empty() || self.meta.need(parent)?.storage.is_block())
    }

    async fn daemon(&self) -> Result<pb::daemon_client::DaemonClient<tonic::transport::Channel>> {
        overlaybd_api::connect(&self.cfg.daemon_socket)
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "overlaybd-daemon ({}): {e}",
                    self.cfg.daemon_socket.display()
                ))
            })
    }

    /// Attaches snapshot `id`'s config as a block device (or finds it attached).
    async fn attach(&self, id: u64, what: &str) -> Result<pb::Device> {
        let dev_id = Self::device_id(id);
        let timeout = Duration::from_secs(self.cfg.attach_timeout_secs);
        let call = async {
            let mut c = self.daemon().await?;
            let req = pb::AttachRequest {
                id: dev_id.clone(),
                config_path: self.config_path(id).display().to_string(),
                block: true,
                nbd: false,
            };
            match c.attach(req).await {
                Ok(r) => Ok(r.into_inner()),
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    let list = c.list(pb::ListRequest {}).await.map_err(|s| {
                        Error::Unavailable(format!("overlaybd-daemon: {}", s.message()))
                    })?;
                    list.into_inner()
                        .devices
                        .into_iter()
                        .find(|d| d.id == dev_id)
                        .ok_or_else(|| Error::Unavailable(format!("device {dev_id} vanished")))
                }
                Err(s) => Err(Error::Unavailable(s.message().to_string())),
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "attach the image of {what}: {e}"
            ))),
            Err(_) => Err(Error::Unavailable(format!(
                "attach the image of {what}: no answer from overlaybd-daemon within {} s",
                self.cfg.attach_timeout_secs
            ))),
        }
    }

    async fn detach(&self, id: u64) -> Result<()> {
        let mut c = self.daemon().await?;
        match c
            .detach(pb::DetachRequest {
                id: Self::device_id(id),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::Unavailable(format!(
                "detach {}: {}",
                Self::device_id(id),
                s.message()
            ))),
        }
    }

    /// Unmounts a block snapshot's mountpoint and detaches its device.
    async fn release_device(&self, id: u64) -> Result<()> {
        mount::unmount(&self.mountpoint(id))?;
        self.detach(id).await
    }

    /// The filesystem type of a block snapshot (the `blob-fs-type` label, or the default).
    fn fs_type(&self, s: &Snapshot) -> String {
        s.labels
            .get(labels::BLOB_FS_TYPE)
            .and_then(|v| v.split(';').next())
            .filter(|v| !v.is_empty())
            .unwrap_or(&self.cfg.default_fs_type)
            .to_string()
    }

    /// Attaches block snapshot `d` and mounts its filesystem read-only (once).
    async fn mount_block(&self, key: &str, d: &Snapshot) -> Result<PathBuf> {
        let mp = self.mountpoint(d.id);
        if mount::is_mounted(&mp)? {
            return Ok(mp);
        }
        std::fs::create_dir_all(&mp).map_err(io(format!("create {}", mp.display())))?;
        let dev = self.attach(d.id, &self.describe(key, d)).await?;
        let fstype = self.fs_type(d);
        if let Err(e) = mount::mount(Path::new(&dev.loop_device), &mp, &fstype, true, "") {
            // Nothing is left half-made: the device goes too.
            if let Err(de) = self.detach(d.id).await {
                warn!(device = %Self::device_id(d.id), "detach after a failed mount: {de}");
            }
            return Err(e);
        }
        info!(snapshot = key, device = %dev.loop_device, mountpoint = %mp.display(), "image mounted");
        Ok(mp)
    }

    /// "image <ref>, layer <digest>" for messages.
    fn describe(&self, key: &str, s: &Snapshot) -> String {
        let image = s
            .labels
            .get(labels::CRI_IMAGE_REF)
            .or_else(|| s.labels.get(labels::IMAGE_REF))
            .map(String::as_str)
            .unwrap_or("?");
        let blob = s
            .labels
            .get(labels::BLOB_DIGEST)
            .map(String::as_str)
            .unwrap_or("?");
        format!("snapshot {key} (image {image}, blob {blob})")
    }

    // ---- the Snapshots API ----

    pub async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<Mount>> {
        let _g = self.lock.lock().await;
        if self.meta.get(key)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "snapshot {key} already exists"
            )));
        }
        if kind == Kind::Active
            && labels.contains_key(labels::TARGET_REF)
            && self.try_remote(key, parent, &labels).await?
        {
            return Err(Error::AlreadyExists(format!(
                "target snapshot {} (remote)",
                labels[labels::TARGET_REF]
            )));
        }
        let id = self.meta.next_id()?;
        let dir = self.dir(id);
        for d in [dir.join("fs"), dir.join("work")] {
            std::fs::create_dir_all(&d).map_err(io(format!("create {}", d.display())))?;
        }
        let storage = if labels.get(labels::ACCELERATION_LAYER).map(String::as_str) == Some("yes")
            && self.parent_is_block(parent)?
            && !parent.is_empty()
        {
            Storage::Acceleration
        } else {
            Storage::Normal
        };
        let now = now_ns();
        let s = Snapshot {
            id,
            kind,
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
            storage,
            size: 0,
            inodes: 0,
        };
        if let Err(e) = self.meta.create(key, &s) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        match self.make_mounts(key, &s, true).await {
            Ok(m) => Ok(m),
            Err(e) => {
                // Undo: no record, no directory, no device.
                let _ = self.meta.remove(key);
                if let Err(de) = self.teardown(&s).await {
                    warn!(snapshot = key, "cleaning up after a failed prepare: {de}");
                }
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// A pull-time Prepare of an overlaybd layer: commit it as a remote snapshot when its blob
    /// can be read. `false` means: let containerd download and unpack it.
    async fn try_remote(
        &self,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool> {
        let get = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let target = get(labels::TARGET_REF).unwrap_or_default();
        let (Some(digest), Some(size), Some(image)) = (
            get(labels::BLOB_DIGEST),
            get(labels::BLOB_SIZE),
            get(labels::CRI_IMAGE_REF).or_else(|| get(labels::IMAGE_REF)),
        ) else {
            return Ok(false);
        };
        if get(labels::ACCELERATION_LAYER) == Some("yes")
            || get(labels::DOWNLOAD_REMOTE_BLOB) == Some("download")
        {
            return Ok(false);
        }
        let why_not = |why: String| {
            warn!(
                snapshot = key,
                target,
                image,
                blob = digest,
                "remote-snapshot-prepared=false: {why}"
            );
            Ok(false)
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
                return Ok(true);
            }
            return why_not(format!("a different snapshot is named {target}"));
        }
        let image_ref = match Reference::parse(image) {
            Ok(r) => r,
            Err(e) => return why_not(e.to_string()),
        };
        if let Err(e) = self.check_blob(&image_ref, digest, size).await {
            return why_not(e.to_string());
        }
        let id = self.meta.next_id()?;
        let (fs, block) = (self.fs_dir(id), self.block_dir(id));
        for d in [&fs, &block] {
            std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
        }
        let mut cfg = self.parent_config(parent)?;
        cfg.repo_blob_url = image_ref.repo_blob_url();
        cfg.lowers.push(LayerConfig {
            dir: fs.display().to_string(),
            digest: digest.to_string(),
            size,
            integrity_root: get(labels::INTEGRITY_ROOT).unwrap_or_default().to_string(),
            ..LayerConfig::default()
        });
        cfg.result_file = block.join("result").display().to_string();
        let done = self.write_config(id, &cfg).and_then(|_| {
            std::fs::write(self.dir(id).join("image_ref"), image).map_err(io("write image_ref"))
        });
        let mut labels = labels.clone();
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
            size: 0,
            inodes: 0,
        };
        if let Err(e) = done.and_then(|_| self.meta.create(target, &s)) {
            let _ = std::fs::remove_dir_all(self.dir(id));
            return Err(e);
        }
        info!(
            snapshot = target,
            image,
            blob = digest,
            "remote-snapshot-prepared=true"
        );
        Ok(true)
    }

    /// Reads the blob's size from the registry (HEAD), as the daemon will, within the lazy
    /// check's time limit.
    async fn check_blob(&self, r: &Reference, digest: &str, size: u64) -> Result<()> {
        use overlaybd_registry::{BlobLocation, RegistryBlob, RegistryOptions};
        let loc = BlobLocation::from_repo_blob_url(&r.repo_blob_url(), digest)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let limit = Duration::from_secs(self.cfg.lazy_check_timeout_secs);
        let opts = RegistryOptions {
            deadline: limit,
            hosts_dir: Some(self.cfg.hosts_dir.clone()).filter(|d| d.is_dir()),
            docker_config: self.docker_config.clone(),
            ..RegistryOptions::default()
        };
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

    /// The mounts of snapshot `key` (attaching and mounting the image below it if needed).
    async fn make_mounts(&self, key: &str, s: &Snapshot, creating: bool) -> Result<Vec<Mount>> {
        let fs = self.fs_dir(s.id);
        let chain = self.meta.chain(&s.parent)?;
        let unpacking = s.labels.contains_key(labels::TARGET_REF) || is_unpack_key(key);
        let bind = |src: &Path, ro: bool| Mount {
            kind: "bind".into(),
            source: src.display().to_string(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        if s.storage == Storage::Writable {
            return self.writable_mounts(key, s, creating).await;
        }
        // Plain directories above the topmost block layer, nearest first, then that layer.
        let mut lowers: Vec<PathBuf> = Vec::new();
        let mut block: Option<(&str, &Snapshot)> = None;
        for (k, p) in &chain {
            if p.storage.is_block() {
                block = Some((k, p));
                break;
            }
            lowers.push(self.fs_dir(p.id));
        }
        if let Some((bk, b)) = block {
            if unpacking && s.kind == Kind::Active {
                // containerd unpacks a layer (a trace layer, a downloaded overlaybd blob, a
                // plain layer) into this directory; the image need not be attached for that.
                return Ok(vec![bind(&fs, false)]);
            }
            let mode = s
                .labels
                .get(labels::WRITABLE)
                .and_then(|m| RwMode::parse(m))
                .unwrap_or(self.cfg.rw_mode);
            if creating && s.kind == Kind::Active && lowers.is_empty() && mode != RwMode::Overlayfs
            {
                let mut w = s.clone();
                w.storage = Storage::Writable;
                self.meta.update(key, |r| {
                    r.storage = Storage::Writable;
                    Ok(())
                })?;
                return self.writable_mounts(key, &w, true).await;
            }
            let mp = self.mount_block(bk, b).await?;
            if creating {
                self.maybe_record(s, b).await?;
            }
            lowers.push(mp);
        }
        let ro = s.kind != Kind::Active;
        if lowers.is_empty() {
            return Ok(vec![bind(&fs, ro)]);
        }
        if ro && lowers.len() == 1 {
            return Ok(vec![bind(&lowers[0], true)]);
        }
        let mut options = Vec::new();
        if Path::new("/sys/module/overlay/parameters/index").exists() {
            options.push("index=off".to_string());
        }
        if !ro {
            options.push(format!("workdir={}", self.dir(s.id).join("work").display()));
            options.push(format!("upperdir={}", fs.display()));
        }
        let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        options.push(format!("lowerdir={}", l.join(":")));
        Ok(vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }])
    }

    /// The record-trace labels on a container's snapshot start a recording on its image.
    async fn maybe_record(&self, s: &Snapshot, image: &Snapshot) -> Result<()> {
        if s.labels.get(labels::RECORD_TRACE).map(String::as_str) != Some("yes") {
            return Ok(());
        }
        let Some(path) = s
            .labels
            .get(labels::RECORD_TRACE_PATH)
            .filter(|p| !p.is_empty())
        else {
            return Err(Error::InvalidArgument(format!(
                "{} needs {}",
                labels::RECORD_TRACE,
                labels::RECORD_TRACE_PATH
            )));
        };
        let mut c = self.daemon().await?;
        c.start_trace(pb::StartTraceRequest {
            id: Self::device_id(image.id),
            path: path.clone(),
        })
        .await
        .map_err(|st| Error::Unavailable(format!("record a trace to {path}: {}", st.message())))?;
        info!(device = %Self::device_id(image.id), path, "recording a trace");
        Ok(())
    }

    /// `dir` / `dev` mode: a writable overlaybd layer on the parent image.
    async fn writable_mounts(&self, key: &str, s: &Snapshot, creating: bool) -> Result<Vec<Mount>> {
        let block = self.block_dir(s.id);
        let mp = self.mountpoint(s.id);
        let mode = s
            .labels
            .get(labels::WRITABLE)
            .and_then(|m| RwMode::parse(m))
            .unwrap_or(self.cfg.rw_mode);
        if creating {
            std::fs::create_dir_all(&mp).map_err(io(format!("create {}", mp.display())))?;
            let mut cfg = self.parent_config(&s.parent)?;
            let (data, index) = (block.join("writable_data"), block.join("writable_index"));
            let vsize = self.cfg.writable_vsize_gb << 30;
            overlaybd_lsmt::RwLayer::create(&data, &index, vsize, None, Default::default())
                .map_err(|e| Error::Internal(format!("create the writable layer: {e}")))?;
            cfg.upper = UpperConfig {
                index: index.display().to_string(),
                data: data.display().to_string(),
            };
            cfg.result_file = block.join("result").display().to_string();
            self.write_config(s.id, &cfg)?;
        }
        let dev = self.attach(s.id, &format!("snapshot {key}")).await?;
        if mode == RwMode::Dev {
            return Ok(vec![Mount {
                kind: self.fs_type(s),
                source: dev.loop_device,
                options: vec!["rw".into(), "discard".into()],
            }]);
        }
        if !mount::is_mounted(&mp)? {
            let fstype = self.fs_type(s);
            if let Err(e) =
                mount::mount(Path::new(&dev.loop_device), &mp, &fstype, false, "discard")
            {
                let _ = self.detach(s.id).await;
                return Err(e);
            }
        }
        Ok(vec![Mount {
            kind: "bind".into(),
            source: mp.display().to_string(),
            options: vec!["rw".into(), "rbind".into()],
        }])
    }

    pub async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let _g = self.lock.lock().await;
        let s = self.meta.need(key)?;
        if s.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is committed: it has no mounts"
            )));
        }
        self.make_mounts(key, &s, false).await
    }

    pub async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<()> {
        let _g = self.lock.lock().await;
        let s = self.meta.need(key)?;
        if s.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is {}, not active",
                s.kind.name()
            )));
        }
        if self.meta.get(name)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "snapshot {name} already exists"
            )));
        }
        let fs = self.fs_dir(s.id);
        let mut storage = s.storage;
        let mut extra = BTreeMap::new();
        match s.storage {
            Storage::Writable => {
                // Seal the writable layer into `fs/overlaybd.sealed`: a local block layer.
                mount::unmount(&self.mountpoint(s.id))?;
                self.detach(s.id).await?;
                let block = self.block_dir(s.id);
                let (data, index) = (block.join("writable_data"), block.join("writable_index"));
                overlaybd_lsmt::RwLayer::open(&data, &index)
                    .and_then(|l| l.seal())
                    .map_err(|e| Error::Internal(format!("seal snapshot {key}: {e}")))?;
                let sealed = fs.join("overlaybd.sealed");
                std::fs::rename(&data, &sealed).map_err(io("rename the sealed layer"))?;
                let _ = std::fs::remove_file(&index);
                let mut cfg = self.parent_config(&s.parent)?;
                cfg.lowers.push(LayerConfig {
                    dir: fs.display().to_string(),
                    ..Default::default()
                });
                self.write_config(s.id, &cfg)?;
                extra.insert(
                    labels::LOCAL_COMMIT_PATH.to_string(),
                    sealed.display().to_string(),
                );
                storage = Storage::LocalBlock;
            }
            Storage::Acceleration => {
                if !fs.join("trace").is_file() {
                    return Err(Error::FailedPrecondition(format!(
                        "acceleration layer {key} has no trace file"
                    )));
                }
                let mut cfg = self.parent_config(&s.parent)?;
                cfg.lowers.push(LayerConfig {
                    dir: fs.display().to_string(),
                    ..Default::default()
                });
                cfg.acceleration_layer = true;
                self.write_config(s.id, &cfg)?;
            }
            Storage::Normal => {
                if let Some(file) = local_layer_file(&fs) {
                    if self.parent_is_block(&s.parent)? {
                        std::fs::create_dir_all(self.block_dir(s.id))
                            .map_err(io("create the block directory"))?;
                        let mut cfg = self.parent_config(&s.parent)?;
                        cfg.lowers.push(LayerConfig {
                            dir: fs.display().to_string(),
                            ..Default::default()
                        });
                        self.write_config(s.id, &cfg)?;
                        storage = Storage::LocalBlock;
                        info!(snapshot = name, file = %file.display(), "an unpacked overlaybd layer");
                    } else {
                        warn!(
                            snapshot = name,
                            "an overlaybd layer over a plain layer stays a plain directory"
                        );
                    }
                }
            }
            Storage::Remote | Storage::LocalBlock => {}
        }
        let (size, inodes) = mount::usage(&fs)?;
        self.meta.commit(key, name, |r| {
            r.labels.extend(labels);
            r.labels.extend(extra);
            r.storage = storage;
            r.size = size;
            r.inodes = inodes;
        })?;
        Ok(())
    }

    /// Undoes what a snapshot holds outside its directory: its mount and device.
    async fn teardown(&self, s: &Snapshot) -> Result<()> {
        if s.storage.is_block() {
            let mp = self.mountpoint(s.id);
            if mount::is_mounted(&mp)? || s.storage == Storage::Writable {
                self.release_device(s.id).await?;
            } else if s.kind == Kind::Committed {
                // Attached but not mounted (a failed mount), or nothing: detach is idempotent.
                self.detach(s.id).await?;
            }
        }
        Ok(())
    }

    /// The key of the topmost block snapshot at or below `parent`, walking `all` in memory.
    fn image_in<'a>(all: &'a HashMap<String, Snapshot>, mut parent: &'a str) -> Option<&'a str> {
        for _ in 0..4096 {
            let p = all.get(parent)?;
            if p.storage.is_block() {
                return Some(parent);
            }
            parent = &p.parent;
        }
        None
    }

    pub async fn remove(&self, key: &str) -> Result<()> {
        let _g = self.lock.lock().await;
        let s = self.meta.remove(key)?;
        // One read of every record: the image below this snapshot, and its other users.
        let all: HashMap<String, Snapshot> = self.meta.list()?.into_iter().collect();
        let image = if s.kind == Kind::Committed {
            None
        } else {
            Self::image_in(&all, &s.parent)
        };
        if let Err(e) = self.teardown(&s).await {
            warn!(snapshot = key, "removed, but: {e}");
        }
        if let (true, Some(ik)) = (self.cfg.auto_remove_dev, image) {
            // The image's device goes when no other container or view uses it.
            let used = all
                .values()
                .any(|o| o.kind != Kind::Committed && Self::image_in(&all, &o.parent) == Some(ik));
            let id = all[ik].id;
            if !used && mount::is_mounted(&self.mountpoint(id))? {
                match self.release_device(id).await {
                    Ok(()) => info!(snapshot = ik, "image unmounted and detached: no users left"),
                    Err(e) => warn!(snapshot = ik, "release the unused image: {e}"),
                }
            }
        }
        let dir = self.dir(s.id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(
                    snapshot = key,
                    "remove {}: {e} (Cleanup retries)",
                    dir.display()
                );
            }
        }
        Ok(())
    }

    pub fn stat(&self, key: &str) -> Result<Snapshot> {
        self.meta.need(key)
    }

    /// Replaces the labels (no paths, or `labels`), or sets/removes single ones
    /// (`labels.<key>`); other fields are immutable.
    pub async fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Snapshot> {
        let _g = self.lock.lock().await;
        for p in paths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(Error::InvalidArgument(format!(
                    "cannot update {p:?} of snapshot {key}: only labels can change"
                )));
            }
        }
        self.meta.update(key, |s| {
            if paths.is_empty() || paths.iter().any(|p| p == "labels") {
                s.labels = labels.clone();
            } else {
                for p in paths {
                    let k = &p["labels.".len()..];
                    match labels.get(k) {
                        Some(v) => s.labels.insert(k.to_string(), v.clone()),
                        None => s.labels.remove(k),
                    };
                }
            }
            s.updated = now_ns();
            Ok(())
        })
    }

    /// Bytes and inodes: measured at Commit for a committed snapshot, now for an active one.
    pub fn usage(&self, key: &str) -> Result<(u64, u64)> {
        let s = self.meta.need(key)?;
        if s.kind == Kind::Committed {
            return Ok((s.size, s.inodes));
        }
        if s.storage == Storage::Writable {
            let data = self.block_dir(s.id).join("writable_data");
            let m = std::fs::metadata(&data).map_err(io(format!("stat {}", data.display())))?;
            return Ok((std::os::unix::fs::MetadataExt::blocks(&m) * 512, 1));
        }
        mount::usage(&self.fs_dir(s.id))
    }

    pub fn list(&self, filters: &[String]) -> Result<Vec<(String, Snapshot)>> {
        let f = Filters::parse(filters)?;
        Ok(self
            .meta
            .list()?
            .into_iter()
            .filter(|(k, s)| {
                f.matches(&Fields {
                    name: k,
                    parent: &s.parent,
                    kind: s.kind.name(),
                    labels: &s.labels,
                })
            })
            .collect())
    }

    /// Removes directories (and their mounts and devices) that no record names: what a crash
    /// between a record's removal and its directory's left behind.
    pub async fn cleanup(&self) -> Result<()> {
        let _g = self.lock.lock().await;
        let known: std::collections::HashSet<u64> =
            self.meta.list()?.into_iter().map(|(_, s)| s.id).collect();
        let snaps = self.cfg.root.join("snapshots");
        let rd = std::fs::read_dir(&snaps).map_err(io(format!("read {}", snaps.display())))?;
        for e in rd.flatten() {
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if known.contains(&id) {
                continue;
            }
            for m in mount::mounts_under(&e.path())? {
                mount::unmount(&m)?;
            }
            self.detach(id).await.ok();
            std::fs::remove_dir_all(e.path())
                .map_err(io(format!("remove {}", e.path().display())))?;
            info!(id, "cleanup: removed a directory no snapshot names");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_keys_are_containerds() {
        assert!(is_unpack_key("default/12/extract-123456-abc sha256:1"));
        assert!(is_unpack_key("extract-1 sha256:2"));
        assert!(!is_unpack_key("default/13/my-container"));
        assert!(!is_unpack_key("k8s.io/4/sha256:5"));
    }
}

#[cfg(test)]
mod remote_tests {
    use super::*;

    #[test]
    fn a_blob_the_registry_does_not_serve_falls_back_to_a_normal_prepare() {
        let d = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hosts = d.path().join("certs.d/r.example:5000");
        std::fs::create_dir_all(&hosts).unwrap();
        std::fs::write(
            hosts.join("hosts.toml"),
            format!("server = \"http://127.0.0.1:{port}\"\n"),
        )
        .unwrap();
        let cfg = Config {
            root: d.path().join("root"),
            hosts_dir: d.path().join("certs.d"),
            lazy_check_timeout_secs: 2,
            ..Config::default()
        };
        let sn = Snapshotter::open(cfg).unwrap();
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
