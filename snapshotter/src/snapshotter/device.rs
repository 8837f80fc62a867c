//! The daemon's devices under snapshots: attach and detach through the daemon's API, the
//! device mounted once per block snapshot, and the mounts a container gets on top (overlayfs
//! over the device, or a writable overlaybd layer in `dir` and `dev` modes, with recording).

use std::path::{Path, PathBuf};
use std::time::Duration;

use overlaybd_api::pb;
use overlaybd_api::UpperConfig;
use overlaybd_oci::label as labels;
use tracing::{info, warn};

use super::{io, is_unpack_key, Mount, Snapshotter};
use crate::config::RwMode;
use crate::error::{Error, Result};
use crate::mount;
use crate::store::{Kind, Snapshot, Storage};

impl Snapshotter {
    pub(super) async fn daemon(
        &self,
    ) -> Result<pb::daemon_client::DaemonClient<tonic::transport::Channel>> {
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
    pub(super) async fn attach(&self, id: u64, what: &str) -> Result<pb::Device> {
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

    pub(super) async fn detach(&self, id: u64) -> Result<()> {
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
    pub(super) async fn release_device(&self, id: u64) -> Result<()> {
        mount::unmount(&self.mountpoint(id))?;
        self.detach(id).await
    }

    /// Attaches block snapshot `d` and mounts its filesystem read-only (once).
    pub(super) async fn mount_block(&self, key: &str, d: &Snapshot) -> Result<PathBuf> {
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

    /// The mounts of snapshot `key` (attaching and mounting the image below it if needed).
    pub(super) async fn make_mounts(
        &self,
        key: &str,
        s: &Snapshot,
        creating: bool,
    ) -> Result<Vec<Mount>> {
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
                if s.kind == Kind::Active {
                    hide_lost_and_found(&mp, &lowers, &fs)?;
                }
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
    pub(super) async fn maybe_record(&self, s: &Snapshot, image: &Snapshot) -> Result<()> {
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
    pub(super) async fn writable_mounts(
        &self,
        key: &str,
        s: &Snapshot,
        creating: bool,
    ) -> Result<Vec<Mount>> {
        let block = self.block_dir(s.id);
        let mp = self.mountpoint(s.id);
        let mode = s
            .labels
            .get(labels::WRITABLE)
            .and_then(|m| RwMode::parse(m))
            .unwrap_or(self.cfg.rw_mode);
        // A writable block layer holds the image's filesystem, written in place: not EROFS.
        if !s.parent.is_empty() {
            let parent = self.meta.need(&s.parent)?;
            if self.fs_type(&parent) == "erofs" {
                return Err(Error::InvalidArgument(format!(
                    "{}: the image's layers are EROFS (read-only); a writable block layer \
                     (`rw_mode` dir or dev, or the snapshot's writable label) needs ext4 \
                     layers: use rw_mode \"overlayfs\", or convert with --fs ext4",
                    self.describe(key, s)
                )));
            }
        }
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
}

/// ext4's `lost+found` is part of the image's filesystem, not of the image: a container's
/// root on an overlaybd image hides it (an overlayfs whiteout in its upper directory), so it
/// sees the same tree as on an OCI image. Only when no plain layer above the image has one of
/// its own. (`dir` and `dev` modes hand the filesystem itself to the container, which keeps it.)
fn hide_lost_and_found(image_root: &Path, above: &[PathBuf], upper: &Path) -> Result<()> {
    let name = "lost+found";
    let own = above
        .iter()
        .any(|d| std::fs::symlink_metadata(d.join(name)).is_ok());
    let theirs = std::fs::symlink_metadata(image_root.join(name)).is_ok_and(|m| m.is_dir());
    let w = upper.join(name);
    if own || !theirs || std::fs::symlink_metadata(&w).is_ok() {
        return Ok(());
    }
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(w.as_os_str()))
        .map_err(|_| Error::Internal(format!("{}: NUL in path", w.display())))?;
    // SAFETY: mknod with a valid C string; a character device 0:0 is overlayfs' whiteout.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if r != 0 {
        return Err(Error::io(
            format!("hide lost+found ({})", w.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
