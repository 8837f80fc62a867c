//! The daemon's core, without its wire API: attached devices and their exports, the records
//! that bring them back after a restart, metrics.
//!
//! A device is attached from an image config (`config.v1.json`) under an id. It is exported
//! as a FUSE file with a loop device over it (`/dev/loopN`, the default) and/or as an NBD
//! export named by its id. Each attach writes `<state_dir>/devices/<id>.json`; the FUSE
//! descriptor goes to the descriptor keeper ([`fdstore`]).
//!
//! A restarted daemon reads the records and opens each image again. With the keeper's
//! descriptor it serves the same FUSE connection (the loop device and the mounted filesystem
//! never notice, beyond a pause); without it (the keeper died too) it mounts a new FUSE file
//! and, for a read-only device, points the loop device at it (`LOOP_CHANGE_FD`).

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use overlaybd_api::ImageConfig;
use overlaybd_cache::CacheDir;
use overlaybd_export::fuse::FuseExport;
use overlaybd_export::loopdev::LoopDevice;
use overlaybd_export::nbd::NbdServer;
use overlaybd_registry::{DockerConfig, Outages, RegistryOptions};

use crate::config::DaemonConfig;
use crate::device::{Device, DeviceOptions};
use crate::error::{Error, Result};
use crate::fdstore::FdStore;
use crate::image::Remote;

/// How a device is exported.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exports {
    /// A FUSE file and a loop device over it.
    pub block: bool,
    /// An NBD export named by the device id.
    pub nbd: bool,
}

/// What is persisted per device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: String,
    pub config_path: PathBuf,
    pub exports: Exports,
    pub fuse_file: Option<PathBuf>,
    pub loop_device: Option<PathBuf>,
    /// The FUSE connection agreed to io_uring at INIT: a restarted daemon must serve its
    /// rings whatever its own settings say.
    #[serde(default)]
    pub fuse_io_uring: bool,
}

/// A device as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub id: String,
    pub config_path: PathBuf,
    pub size: u64,
    pub read_only: bool,
    pub loop_device: Option<PathBuf>,
    pub fuse_file: Option<PathBuf>,
    pub nbd_export: Option<String>,
    pub trace_mode: String,
    pub recording: bool,
    /// `attached`, or `restored` (brought back by a restart).
    pub state: String,
}

struct Attached {
    dev: Arc<Device>,
    fuse: Option<FuseExport>,
    loopdev: Option<LoopDevice>,
    record: DeviceRecord,
    state: &'static str,
}

/// The daemon's devices and shared parts.
pub struct Daemon {
    cfg: DaemonConfig,
    remote: Remote,
    nbd: Arc<NbdServer>,
    devices: Mutex<BTreeMap<String, Attached>>,
    fdstore: Option<FdStore>,
    opts: DeviceOptions,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("state_dir", &self.cfg.state_dir)
            .finish()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !id.starts_with('.')
}

impl Daemon {
    /// Opens the cache, starts the NBD listeners, connects to (or starts) the descriptor
    /// keeper with `exe`, and restores the devices recorded by an earlier run.
    pub fn start(cfg: DaemonConfig, exe: Option<&Path>) -> Result<Arc<Daemon>> {
        cfg.validate().map_err(Error::Invalid)?;
        for d in [&cfg.state_dir.join("devices"), &cfg.run_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io("create", d.display().to_string(), e))?;
        }
        let cache = CacheDir::open(
            &cfg.cache_dir,
            cfg.cache_size_mb << 20,
            0.9,
            0.7,
            overlaybd_cache::DEFAULT_UNIT,
        )?;
        cache.set_fetch_granule(overlaybd_cache::FETCH_GRANULE);
        let configured = (!cfg.docker_config.as_os_str().is_empty()).then_some(&*cfg.docker_config);
        let docker_config = DockerConfig::load_configured(configured)?.map(Arc::new);
        let registry = RegistryOptions {
            deadline: cfg.read_deadline(),
            docker_config,
            hosts_dir: (!cfg.hosts_dir.as_os_str().is_empty()).then(|| cfg.hosts_dir.clone()),
            agent: (!cfg.p2p_agent.is_empty()).then(|| cfg.p2p_agent.clone()),
            outages: Some(Arc::new(Outages::new(cfg.outage_deadline()))),
            ..Default::default()
        };
        let nbd = NbdServer::new();
        if !cfg.nbd_socket.as_os_str().is_empty() {
            nbd.listen_unix(
                overlaybd_api::bind_private_unix(&cfg.nbd_socket)
                    .map_err(|e| Error::io("bind", cfg.nbd_socket.display().to_string(), e))?,
            )?;
        }
        if !cfg.nbd_address.is_empty() {
            nbd.listen_tcp(cfg.nbd_address.parse().expect("validated"))?;
        }
        // The keeper starts with the first descriptor it must keep (and exits with the last).
        let fdstore = exe.map(|exe| FdStore::new(&cfg.state_dir.join("fdstore.sock"), exe));
        let opts = DeviceOptions {
            replay_concurrency: cfg.prefetch_concurrency,
            ..Default::default()
        };
        let d = Arc::new(Daemon {
            remote: Remote { cache, registry },
            cfg,
            nbd,
            devices: Mutex::new(BTreeMap::new()),
            fdstore,
            opts,
        });
        d.restore();
        let weak = Arc::downgrade(&d);
        let every = Duration::from_secs(d.cfg.checkpoint_secs);
        let _ = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(d) = weak.upgrade() else { return };
                if let Err(e) = d.remote.cache.checkpoint_all() {
                    tracing::warn!("cache checkpoint: {e}");
                }
            });
        Ok(d)
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.cfg
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("devices")
            .join(format!("{id}.json"))
    }

    fn open_device(&self, id: &str, config_path: &Path) -> Result<Arc<Device>> {
        let image = ImageConfig::load(config_path)?;
        Ok(Arc::new(Device::open(
            id,
            &image,
            Some(&self.remote),
            &self.opts,
        )?))
    }

    /// Attaches the image of `config_path` as device `id`.
    pub fn attach(&self, id: &str, config_path: &Path, exports: Exports) -> Result<DeviceInfo> {
        if !valid_id(id) {
            return Err(Error::Invalid(format!(
                "device id {id:?}: use 1-128 of [A-Za-z0-9._-], not starting with '.'"
            )));
        }
        if !exports.block && !exports.nbd {
            return Err(Error::Invalid(
                "attach: ask for a block device, NBD, or both".into(),
            ));
        }
        if self.devices.lock().unwrap().contains_key(id) {
            return Err(Error::AlreadyAttached(id.to_string()));
        }
        let config_path = std::fs::canonicalize(config_path)
            .map_err(|e| Error::io("open", config_path.display().to_string(), e))?;
        let dev = self.open_device(id, &config_path)?;
        let mut a = Attached {
            dev: dev.clone(),
            fuse: None,
            loopdev: None,
            record: DeviceRecord {
                id: id.to_string(),
                config_path,
                exports: exports.clone(),
                fuse_file: None,
                loop_device: None,
                fuse_io_uring: false,
            },
            state: "attached",
        };
        if exports.block {
            if let Err(e) = self.export_block(&mut a) {
                self.teardown(a);
                return Err(e);
            }
        }
        if exports.nbd {
            self.nbd.add(id, dev);
        }
        if let Err(e) = self.persist(&a.record) {
            self.teardown(a);
            return Err(e);
        }
        tracing::info!("attached {id}: {:?}", a.record);
        let info = self.info(&a);
        self.devices.lock().unwrap().insert(id.to_string(), a);
        Ok(info)
    }

    fn export_block(&self, a: &mut Attached) -> Result<()> {
        let file = self.cfg.run_dir.join(format!("{}.img", a.record.id));
        a.fuse = Some(self.mount_fuse(&a.dev, &a.record.id, &file)?);
        a.record.fuse_file = Some(file.clone());
        let lo = LoopDevice::attach(&file, a.dev.read_only(), true)?;
        // The loop device opened the file, so INIT has been answered.
        a.record.fuse_io_uring = a.fuse.as_ref().is_some_and(|f| f.ring_agreed());
        a.record.loop_device = Some(lo.path().to_path_buf());
        a.loopdev = Some(lo);
        Ok(())
    }

    /// Mounts the device's FUSE file and hands its descriptor to the keeper.
    fn mount_fuse(&self, dev: &Arc<Device>, id: &str, file: &Path) -> Result<FuseExport> {
        let fuse = FuseExport::mount(
            dev.clone(),
            file,
            self.cfg.fuse_threads,
            self.cfg.fuse_io_uring,
        )?;
        if let Some(fs) = &self.fdstore {
            fs.put(id, fuse.fd().as_raw_fd())?;
        }
        Ok(fuse)
    }

    fn persist(&self, r: &DeviceRecord) -> Result<()> {
        let p = self.record_path(&r.id);
        let tmp = p.with_extension("json.tmp");
        let io = |op, e| Error::io(op, p.display().to_string(), e);
        std::fs::write(&tmp, serde_json::to_vec_pretty(r).expect("serialisable"))
            .map_err(|e| io("write", e))?;
        std::fs::rename(&tmp, &p).map_err(|e| io("rename", e))
    }

    /// Stops every export of a device and forgets it.
    fn teardown(&self, mut a: Attached) {
        let id = a.record.id.clone();
        self.nbd.remove(&id);
        if let Some(lo) = a.loopdev.take() {
            if let Err(e) = lo.detach() {
                tracing::warn!("{id}: {e}");
            }
        }
        if let Some(f) = a.fuse.take() {
            if let Err(e) = f.unmount() {
                tracing::warn!("{id}: {e}");
            }
        }
        if let Some(fs) = &self.fdstore {
            let _ = fs.delete(&id);
        }
        if let Some(p) = &a.record.fuse_file {
            let _ = std::fs::remove_file(p);
        }
        if let Err(e) = a.dev.close() {
            tracing::warn!("{id}: close: {e}");
        }
        let _ = std::fs::remove_file(self.record_path(&id));
    }

    /// Detaches device `id`: its loop device, FUSE file and NBD export go away.
    pub fn detach(&self, id: &str) -> Result<()> {
        let a = self
            .devices
            .lock()
            .unwrap()
            .remove(id)
            .ok_or_else(|| Error::NoDevice(id.to_string()))?;
        self.teardown(a);
        tracing::info!("detached {id}");
        Ok(())
    }

    fn info(&self, a: &Attached) -> DeviceInfo {
        DeviceInfo {
            id: a.record.id.clone(),
            config_path: a.record.config_path.clone(),
            size: a.dev.size(),
            read_only: a.dev.read_only(),
            loop_device: a.record.loop_device.clone(),
            fuse_file: a.record.fuse_file.clone(),
            nbd_export: a.record.exports.nbd.then(|| a.record.id.clone()),
            trace_mode: a.dev.trace_mode().to_string(),
            recording: a.dev.recorder().is_some_and(|r| !r.is_finished()),
            state: a.state.to_string(),
        }
    }

    pub fn list(&self) -> Vec<DeviceInfo> {
        let d = self.devices.lock().unwrap();
        d.values().map(|a| self.info(a)).collect()
    }

    pub fn device(&self, id: &str) -> Result<Arc<Device>> {
        self.devices
            .lock()
            .unwrap()
            .get(id)
            .map(|a| a.dev.clone())
            .ok_or_else(|| Error::NoDevice(id.to_string()))
    }

    /// One device's counters in Prometheus' text format.
    pub fn device_stats(&self, id: &str) -> Result<String> {
        let mut out = String::new();
        self.device(id)?.render(&mut out);
        Ok(out)
    }

    pub fn start_trace(&self, id: &str, path: &Path) -> Result<()> {
        self.device(id)?.start_recording(path)
    }

    pub fn stop_trace(&self, id: &str) -> Result<Option<PathBuf>> {
        self.device(id)?.stop_recording()
    }

    /// Everything in Prometheus' text format.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let devs: Vec<Arc<Device>> = self
            .devices
            .lock()
            .unwrap()
            .values()
            .map(|a| a.dev.clone())
            .collect();
        overlaybd_metrics::counter(&mut out, "overlaybd_devices", "", devs.len() as u64);
        for d in devs {
            d.render(&mut out);
        }
        let s = self.nbd.stats();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        overlaybd_metrics::counter(
            &mut out,
            "overlaybd_nbd_connections_total",
            "",
            get(&s.connections),
        );
        overlaybd_metrics::counter(
            &mut out,
            "overlaybd_nbd_requests_total",
            "",
            get(&s.requests),
        );
        overlaybd_metrics::counter(&mut out, "overlaybd_nbd_errors_total", "", get(&s.errors));
        if let Some(o) = &self.remote.registry.outages {
            o.render(&mut out);
        }
        out
    }

    /// Brings back the devices an earlier run recorded. A device that cannot be opened is
    /// logged and its record kept, so that a later restart can try again.
    fn restore(&self) {
        let dir = self.cfg.state_dir.join("devices");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let rec: DeviceRecord = match std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(r) => r,
                None => {
                    tracing::error!("{}: unreadable device record, left alone", p.display());
                    continue;
                }
            };
            let id = rec.id.clone();
            match self.restore_one(rec) {
                Ok(a) => {
                    tracing::info!("restored {id}");
                    self.devices.lock().unwrap().insert(id, a);
                }
                Err(e) => tracing::error!("restoring {id}: {e}"),
            }
        }
    }

    fn restore_one(&self, rec: DeviceRecord) -> Result<Attached> {
        let dev = self.open_device(&rec.id, &rec.config_path)?;
        let mut a = Attached {
            dev: dev.clone(),
            fuse: None,
            loopdev: None,
            record: rec.clone(),
            state: "restored",
        };
        if let (Some(file), Some(lo_path)) = (&rec.fuse_file, &rec.loop_device) {
            let kept = match &self.fdstore {
                Some(fs) => fs.get(&rec.id)?,
                None => None,
            };
            let lo = LoopDevice::existing(lo_path)?;
            if let Some(fd) = kept {
                // The connection survived: serve it again.
                a.fuse = Some(FuseExport::resume(
                    dev.clone(),
                    file,
                    fd,
                    self.cfg.fuse_threads,
                    rec.fuse_io_uring,
                )?);
                tracing::info!(
                    "{}: resumed the kept FUSE connection of {}",
                    rec.id,
                    file.display()
                );
                a.loopdev = Some(lo);
            } else {
                // The connection died with the keeper: a new FUSE file, and the loop device
                // switched over to it (the kernel allows that for read-only loop devices).
                FuseExport::clear_stale(file);
                let fuse = self.mount_fuse(&dev, &rec.id, file)?;
                a.fuse = Some(fuse);
                tracing::warn!(
                    "{}: FUSE connection lost; mounted {} anew",
                    rec.id,
                    file.display()
                );
                if lo.backing_file().is_some() {
                    lo.change_fd(file)?;
                    a.loopdev = Some(lo);
                } else {
                    let lo = LoopDevice::attach(file, dev.read_only(), true)?;
                    a.record.loop_device = Some(lo.path().to_path_buf());
                    a.loopdev = Some(lo);
                }
                // The new connection's INIT has been answered (the loop device opened it).
                a.record.fuse_io_uring = a.fuse.as_ref().is_some_and(|f| f.ring_agreed());
                self.persist(&a.record)?;
            }
        }
        if rec.exports.nbd {
            self.nbd.add(&rec.id, dev);
        }
        Ok(a)
    }

    /// Detaches every device and stops the keeper (a clean shutdown, not a restart).
    pub fn shutdown(&self) {
        let all: Vec<String> = self.devices.lock().unwrap().keys().cloned().collect();
        for id in all {
            let _ = self.detach(&id);
        }
        self.nbd.shutdown();
        if let Some(fs) = &self.fdstore {
            let _ = fs.quit();
        }
    }
}
