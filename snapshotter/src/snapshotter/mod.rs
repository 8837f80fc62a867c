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

mod device;
mod remote;
mod turbo;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use overlaybd_api::{ImageConfig, LayerConfig, UpperConfig};
use overlaybd_registry::credentials::DockerConfig;
use tracing::{info, warn};

use crate::config::Config;
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
    /// Image snapshots whose device is mounted with no user, and since when.
    idle: std::sync::Mutex<HashMap<String, std::time::Instant>>,
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
        crate::compat::check_root(&cfg.root)?;
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
            idle: Default::default(),
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

    /// The filesystem type of a block snapshot (the `blob-fs-type` label, or the default).
    fn fs_type(&self, s: &Snapshot) -> String {
        s.labels
            .get(labels::BLOB_FS_TYPE)
            .and_then(|v| v.split(';').next())
            .filter(|v| !v.is_empty())
            .unwrap_or(&self.cfg.default_fs_type)
            .to_string()
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
        let mut labels = labels;
        if kind == Kind::Active && labels.contains_key(labels::TARGET_REF) {
            match self.try_remote(key, parent, &labels).await? {
                remote::Decision::Remote => {
                    return Err(Error::AlreadyExists(format!(
                        "target snapshot {} (remote)",
                        labels[labels::TARGET_REF]
                    )))
                }
                // Said on the snapshot, for `rpull` (and anyone who looks) to tell the user.
                remote::Decision::Unpack(Some(why)) => {
                    labels.insert(labels::NOT_REMOTE.into(), why);
                }
                remote::Decision::Unpack(None) => {}
            }
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
            Storage::Normal if overlaybd_oci::annotation::turbo_oci_target(&s.labels).is_some() => {
                if !self.parent_is_block(&s.parent)? {
                    return Err(Error::FailedPrecondition(format!(
                        "TurboOCI layer {name} is above a layer that is not an overlaybd layer"
                    )));
                }
                let t = turbo::lower(&s.labels, &fs)?.expect("a TurboOCI layer");
                let mut cfg = self.parent_config(&s.parent)?;
                cfg.repo_blob_url = t.repo_blob_url;
                cfg.lowers.push(t.lower);
                self.write_config(s.id, &cfg)?;
                if let Some(fs_type) = t.fs_type {
                    extra.insert(labels::BLOB_FS_TYPE.to_string(), fs_type.to_string());
                }
                storage = Storage::LocalBlock;
                info!(
                    snapshot = name,
                    "a TurboOCI layer: its files are read from the original layer"
                );
            }
            Storage::Normal if fs.join(overlaybd_oci::turbo_oci_file::MARKER).is_file() => {
                // A TurboOCI meta blob unpacked without its layer's labels: its files are the
                // metadata, not the layer's tree, so neither a directory nor a block layer can
                // be made of it.
                return Err(Error::FailedPrecondition(format!(
                    "{name} is a TurboOCI meta layer that was unpacked without its annotations \
                     (containerd passed no `turbo-oci/target-digest` label; `ctr images pull` on \
                     containerd 1.x does not): pull it with `obdctl rpull`, through CRI, or with \
                     containerd 2.x's ctr"
                )));
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

    /// Whether a container or view stands on image snapshot `image`.
    fn in_use(all: &HashMap<String, Snapshot>, image: &str) -> bool {
        all.values()
            .any(|o| o.kind != Kind::Committed && Self::image_in(all, &o.parent) == Some(image))
    }

    fn idle_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn release_unused(&self, image: &str, id: u64) {
        self.idle_map().remove(image);
        match self.release_device(id).await {
            Ok(()) => info!(
                snapshot = image,
                "image unmounted and detached: no users left"
            ),
            Err(e) => warn!(snapshot = image, "release the unused image: {e}"),
        }
    }

    /// Detaches image devices that have had no user for `device_linger_secs`, and the
    /// longest unused beyond `max_lingering_devices`. Devices found mounted and unused (after
    /// a restart) start lingering now. The binary calls this every few seconds; returns how
    /// many devices went.
    pub async fn release_idle_devices(&self) -> Result<usize> {
        if !self.cfg.auto_remove_dev {
            return Ok(0);
        }
        let _g = self.lock.lock().await;
        let all: HashMap<String, Snapshot> = self.meta.list()?.into_iter().collect();
        self.idle_map().retain(|k, _| all.contains_key(k));
        let now = std::time::Instant::now();
        let mut idle: Vec<(String, u64, std::time::Instant)> = Vec::new();
        for (k, s) in &all {
            let mounted = s.storage.is_block()
                && s.kind == Kind::Committed
                && mount::is_mounted(&self.mountpoint(s.id))?;
            if !mounted || Self::in_use(&all, k) {
                self.idle_map().remove(k);
                continue;
            }
            let since = *self.idle_map().entry(k.clone()).or_insert(now);
            idle.push((k.clone(), s.id, since));
        }
        idle.sort_by_key(|&(_, _, since)| since);
        let linger = Duration::from_secs(self.cfg.device_linger_secs);
        let over = idle.len().saturating_sub(self.cfg.max_lingering_devices);
        let mut released = 0;
        for (i, (k, id, since)) in idle.into_iter().enumerate() {
            if i < over || now.duration_since(since) >= linger {
                self.release_unused(&k, id).await;
                released += 1;
            }
        }
        Ok(released)
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
            // The image's device goes when no other container or view uses it: at once, or
            // after `device_linger_secs` (`release_idle_devices`).
            let id = all[ik].id;
            if !Self::in_use(&all, ik) && mount::is_mounted(&self.mountpoint(id))? {
                if self.cfg.device_linger_secs == 0 {
                    self.release_unused(ik, id).await;
                } else {
                    self.idle_map()
                        .insert(ik.to_string(), std::time::Instant::now());
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
