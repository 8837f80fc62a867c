//! A device: an opened image as a block device that the exports (FUSE, NBD) serve. It owns
//! the trace recording or replay of the image, counts what it serves, and turns failures into
//! one small error type that each wire edge maps to its own codes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlaybd_api::ImageConfig;
pub use overlaybd_export::{BlockDevice, DevError, BLOCK};
use overlaybd_metrics::{counter, Histogram};

use crate::error::{Error, Result};
use crate::image::{Image, Remote};
use crate::trace::{self, Mode, Recorder, ReplayStats, TraceSlot};

/// What a device has served.
#[derive(Debug, Default)]
pub struct DeviceStats {
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_errors: AtomicU64,
    pub writes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub write_errors: AtomicU64,
    pub trims: AtomicU64,
    pub flushes: AtomicU64,
    pub read_latency: Histogram,
}

/// How a device is opened beyond its image config.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// Trace replay workers (overlaybd's `prefetchConfig.concurrency`).
    pub replay_concurrency: usize,
    /// How often a recording device looks for its lock file to be deleted.
    pub trace_poll: Duration,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            replay_concurrency: trace::DEFAULT_CONCURRENCY,
            trace_poll: Duration::from_secs(1),
        }
    }
}

/// One attached image.
#[derive(Debug)]
pub struct Device {
    name: String,
    image: Image,
    stats: DeviceStats,
    mode: &'static str,
    slot: Arc<TraceSlot>,
    trace_poll: Duration,
    replay: Option<Arc<ReplayStats>>,
    cancel: Arc<AtomicBool>,
}

fn fail(e: overlaybd_lsmt::Error) -> DevError {
    DevError::Io(e.into_io())
}

impl Device {
    /// Opens the image of `cfg` (decides the trace mode as overlaybd does, §5.1), starts
    /// recording or replaying, and writes `resultFile`.
    pub fn open(
        name: &str,
        cfg: &ImageConfig,
        remote: Option<&Remote>,
        opts: &DeviceOptions,
    ) -> Result<Device> {
        let r = Self::open_inner(name, cfg, remote, opts);
        let written = cfg.write_result(&r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        let dev = r?;
        written?;
        Ok(dev)
    }

    fn open_inner(
        name: &str,
        cfg: &ImageConfig,
        remote: Option<&Remote>,
        opts: &DeviceOptions,
    ) -> Result<Device> {
        let mut cfg = cfg.clone();
        let trace_path = if cfg.acceleration_layer {
            if !cfg.record_trace_path.is_empty() {
                return Err(Error::Invalid(
                    "cannot record a trace on an image with an acceleration layer".into(),
                ));
            }
            let accel = cfg.lowers.pop().ok_or_else(|| {
                Error::Invalid("accelerationLayer is set and there are no lowers".into())
            })?;
            if accel.dir.is_empty() || cfg.lowers.is_empty() {
                return Err(Error::Invalid(
                    "accelerationLayer: the top lower needs a `dir` holding `trace`, above \
                     at least one layer"
                        .into(),
                ));
            }
            Some(PathBuf::from(accel.dir).join("trace"))
        } else if !cfg.record_trace_path.is_empty() {
            Some(PathBuf::from(&cfg.record_trace_path))
        } else {
            None
        };
        let mode = match &trace_path {
            // An empty trace in an acceleration layer means "nothing to replay".
            Some(p) if cfg.acceleration_layer => match Mode::detect(p)? {
                Mode::Record(_) => Mode::Off,
                m => m,
            },
            Some(p) => Mode::detect(p)?,
            None => Mode::Off,
        };
        let slot = Arc::new(TraceSlot::default());
        if let Mode::Record(p) = &mode {
            slot.set(Some(Recorder::start(p, opts.trace_poll)?));
        }
        let image = Image::open_recording(&cfg, remote, Some(&slot))?;
        let name_of_mode = mode.name();
        let replay = match mode {
            Mode::Replay(_, records) => Some(records),
            Mode::FileList(ref p, ref l) => {
                tracing::warn!(
                    "device {name}: {} lists {} paths; replaying file lists is not supported \
                     yet, nothing is prefetched",
                    p.display(),
                    l.len()
                );
                None
            }
            _ => None,
        };
        let mut dev = Self::finish_open(name, image, name_of_mode, slot, opts);
        if let Some(records) = replay {
            let files = dev.image.layers.iter().map(|l| l.file.clone()).collect();
            dev.replay = Some(trace::replay(
                records,
                files,
                opts.replay_concurrency,
                dev.cancel.clone(),
            ));
        }
        Ok(dev)
    }

    fn finish_open(
        name: &str,
        image: Image,
        mode: &'static str,
        slot: Arc<TraceSlot>,
        opts: &DeviceOptions,
    ) -> Device {
        Device {
            name: name.to_string(),
            image,
            stats: DeviceStats::default(),
            mode,
            slot,
            trace_poll: opts.trace_poll,
            replay: None,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A device over an already opened image (no trace).
    pub fn from_image(name: &str, image: Image) -> Device {
        Self::finish_open(
            name,
            image,
            "off",
            Arc::new(TraceSlot::default()),
            &DeviceOptions::default(),
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> u64 {
        self.image.stack.virtual_size()
    }

    /// Read-only when the image has no writable upper layer.
    pub fn read_only(&self) -> bool {
        self.image.stack.upper().is_none()
    }

    pub fn image(&self) -> &Image {
        &self.image
    }

    pub fn stats(&self) -> &DeviceStats {
        &self.stats
    }

    /// `off`, `record`, `replay` or `file-list`.
    pub fn trace_mode(&self) -> &'static str {
        self.mode
    }

    /// The recording in progress, if any.
    pub fn recorder(&self) -> Option<Arc<Recorder>> {
        self.slot.get()
    }

    /// Starts recording into `path` (overlaybd's protocol: `<path>.lock` is created, the
    /// trace is written when it is deleted or at [`Device::stop_recording`]). Only images
    /// opened by [`Device::open`] can record.
    pub fn start_recording(&self, path: &std::path::Path) -> Result<()> {
        if self.slot.get().is_some_and(|r| !r.is_finished()) {
            return Err(Error::Invalid(format!(
                "device {}: a recording is already running",
                self.name
            )));
        }
        self.slot.set(Some(Recorder::start(path, self.trace_poll)?));
        Ok(())
    }

    /// Writes the trace being recorded (if any) and stops recording; returns its path.
    pub fn stop_recording(&self) -> Result<Option<PathBuf>> {
        let Some(r) = self.slot.get() else {
            return Ok(None);
        };
        r.finish()?;
        self.slot.set(None);
        Ok(Some(r.path().to_path_buf()))
    }

    pub fn replay(&self) -> Option<&Arc<ReplayStats>> {
        self.replay.as_ref()
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), DevError> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(DevError::OutOfRange { offset, len, size });
        }
        Ok(())
    }

    /// Fills `buf` from `offset`; the whole range must lie inside the device.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        self.check(offset, buf.len() as u64)?;
        let t = Instant::now();
        let r = self.image.stack.read_at(offset, buf);
        self.stats.read_latency.observe(t.elapsed());
        match r {
            Ok(n) if n == buf.len() => {
                self.stats.reads.fetch_add(1, Ordering::Relaxed);
                self.stats.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
                Ok(())
            }
            Ok(n) => {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                Err(DevError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("short read: {n} of {} bytes at {offset}", buf.len()),
                )))
            }
            Err(e) => {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("device {}: read {} at {offset}: {e}", self.name, buf.len());
                Err(fail(e))
            }
        }
    }

    fn writable(&self, offset: u64, len: u64) -> Result<(), DevError> {
        if self.read_only() {
            return Err(DevError::ReadOnly);
        }
        self.check(offset, len)
    }

    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), DevError> {
        self.writable(offset, buf.len() as u64)?;
        match self.image.stack.write_at(offset, buf) {
            Ok(()) => {
                self.stats.writes.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .write_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                Err(fail(e))
            }
        }
    }

    /// Discards a range: it reads as zeros afterwards.
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), DevError> {
        self.writable(offset, len)?;
        self.stats.trims.fetch_add(1, Ordering::Relaxed);
        self.image.stack.trim(offset, len).map_err(fail)
    }

    /// Makes a range read as zeros. Discarded ranges read as zeros in LSMT, so this is a trim
    /// unless the caller needs the space allocated (`no_hole`), when zeros are written.
    pub fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<(), DevError> {
        if !no_hole {
            return self.trim(offset, len);
        }
        self.writable(offset, len)?;
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            self.write(at, &zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<(), DevError> {
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.image.stack.flush().map_err(fail)
    }

    /// Stops trace replay and writes a trace being recorded.
    pub fn close(&self) -> Result<()> {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(r) = self.slot.get() {
            r.finish()?;
        }
        self.flush().map_err(|e| match e {
            DevError::Io(e) => Error::io("flush", self.name.clone(), e),
            e => Error::Invalid(format!("flush {}: {e}", self.name)),
        })
    }

    /// Appends this device's samples in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        let l = format!("device=\"{}\"", self.name);
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, v) in [
            ("reads", &s.reads),
            ("read_bytes", &s.read_bytes),
            ("read_errors", &s.read_errors),
            ("writes", &s.writes),
            ("write_bytes", &s.write_bytes),
            ("write_errors", &s.write_errors),
            ("trims", &s.trims),
            ("flushes", &s.flushes),
        ] {
            counter(out, &format!("overlaybd_device_{name}_total"), &l, get(v));
        }
        s.read_latency
            .render(out, "overlaybd_device_read_seconds", &l);
        // Zero for a device without a trace: series exist from the start, so that queries
        // and dashboards see 0, not nothing.
        let r = self.replay.as_ref();
        for (name, v) in [
            ("reads", r.map(|r| get(&r.records))),
            ("bytes", r.map(|r| get(&r.bytes))),
            ("errors", r.map(|r| get(&r.errors))),
        ] {
            counter(
                out,
                &format!("overlaybd_trace_replay_{name}_total"),
                &l,
                v.unwrap_or(0),
            );
        }
        for (i, layer) in self.image.layers.iter().enumerate() {
            if let Some(c) = &layer.remote {
                let ll = format!("{l},layer=\"{i}\"");
                c.stats().render(out, &ll);
                c.origin().stats().render(out, &ll);
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!("device {}: close: {e}", self.name);
        }
    }
}

impl BlockDevice for Device {
    fn name(&self) -> &str {
        Device::name(self)
    }
    fn size(&self) -> u64 {
        Device::size(self)
    }
    fn read_only(&self) -> bool {
        Device::read_only(self)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        Device::read(self, offset, buf)
    }
    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), DevError> {
        Device::write(self, offset, buf)
    }
    fn trim(&self, offset: u64, len: u64) -> Result<(), DevError> {
        Device::trim(self, offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<(), DevError> {
        Device::write_zeroes(self, offset, len, no_hole)
    }
    fn flush(&self) -> Result<(), DevError> {
        Device::flush(self)
    }
}
