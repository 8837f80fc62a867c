//! Trace-based prefetch, in overlaybd's file format (`../shared/reference/overlaybd.md` §5).
//!
//! A device in *record* mode logs every read of a lower layer file (after the tar envelope and
//! ZFile are taken off, before the layers are merged) as `(layer, count, offset)`. The trace is
//! written when `<trace>.lock` is deleted or the device closes, then `<trace>.ok` appears. A
//! device in *replay* mode reads the recorded ranges from its layers as soon as it is attached,
//! with a few worker threads, to warm the cache before the workload asks.
//!
//! File layout: a 24-byte header (`u32` magic `0xC2EF1820`, pad, `u64` data size, `u32`
//! checksum, pad) and 24-byte records (`u8` op, 3 pad, `u32` layer, `u64` count, `i64` offset),
//! little-endian. The checksum is `crc32c_raw` chained over the raw records from 0.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zfile::crc::crc32c_raw;
use zfile::ReadAt;

use crate::error::{Error, Result};

/// `TRACE_MAGIC`: zlib CRC-32 of "Container Image Trace Format".
pub const MAGIC: u32 = 0xC2EF_1820;
pub const HEADER_SIZE: usize = 24;
pub const RECORD_SIZE: usize = 24;
/// Replay reads at most this much per read (overlaybd's worker buffer, `MAX_IO_SIZE`).
pub const MAX_IO: u64 = 1 << 20;
/// Replay workers when the daemon config does not say (overlaybd's default).
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Most records a trace file may hold (1 GiB of records would be a broken file, not a trace).
pub const MAX_RECORDS: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// `b'R'` or `b'W'`.
    pub op: u8,
    /// Position in `lowers` (0 = bottom).
    pub layer: u32,
    pub count: u64,
    pub offset: i64,
}

impl Record {
    pub fn to_bytes(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0] = self.op;
        b[4..8].copy_from_slice(&self.layer.to_le_bytes());
        b[8..16].copy_from_slice(&self.count.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Record {
        Record {
            op: b[0],
            layer: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            count: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            offset: i64::from_le_bytes(b[16..24].try_into().unwrap()),
        }
    }
}

/// The bytes of a trace file holding `records`.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_SIZE];
    let mut crc = 0;
    for r in records {
        let b = r.to_bytes();
        crc = crc32c_raw(crc, &b);
        out.extend_from_slice(&b);
    }
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&((records.len() * RECORD_SIZE) as u64).to_le_bytes());
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Whether `raw` starts like a trace file (overlaybd tells a trace from a file list this way).
pub fn has_magic(raw: &[u8]) -> bool {
    raw.len() >= 4 && u32::from_le_bytes(raw[0..4].try_into().unwrap()) == MAGIC
}

/// Parses a trace file, checking the magic, the size and the checksum.
pub fn decode(raw: &[u8]) -> Result<Vec<Record>> {
    let bad = Error::BadTrace;
    if raw.len() < HEADER_SIZE {
        return Err(bad(format!(
            "{} bytes, shorter than the {HEADER_SIZE}-byte header",
            raw.len()
        )));
    }
    if !has_magic(raw) {
        return Err(bad("bad magic".into()));
    }
    let data_size = u64::from_le_bytes(raw[8..16].try_into().unwrap());
    let body = (raw.len() - HEADER_SIZE) as u64;
    if data_size != body || data_size % RECORD_SIZE as u64 != 0 {
        return Err(bad(format!(
            "header says {data_size} bytes of records, the file has {body}"
        )));
    }
    if data_size / RECORD_SIZE as u64 > MAX_RECORDS {
        return Err(bad(format!("more than {MAX_RECORDS} records")));
    }
    let want = u32::from_le_bytes(raw[16..20].try_into().unwrap());
    let recs = &raw[HEADER_SIZE..];
    let got = recs.chunks_exact(RECORD_SIZE).fold(0, crc32c_raw);
    if got != want {
        return Err(bad(format!(
            "checksum {got:#010x}, header says {want:#010x}"
        )));
    }
    Ok(recs
        .chunks_exact(RECORD_SIZE)
        .map(Record::from_bytes)
        .collect())
}

/// What a device does with its trace, decided when it is opened (overlaybd's
/// `Prefetcher::detect_mode`).
#[derive(Debug)]
pub enum Mode {
    Off,
    /// Record into this (existing, empty) file.
    Record(PathBuf),
    /// Replay these records.
    Replay(PathBuf, Vec<Record>),
    /// A list of paths to read through the filesystem (overlaybd's "dynamic prefetch"); not
    /// replayed by this daemon yet: the paths are kept so the device can say so.
    FileList(PathBuf, Vec<String>),
}

impl Mode {
    /// The mode for a trace path: missing → off; empty → record; magic → replay; else a list.
    pub fn detect(path: &Path) -> Result<Mode> {
        let raw = match std::fs::read(path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Mode::Off),
            Err(e) => return Err(Error::io("read", path.display().to_string(), e)),
        };
        if raw.is_empty() {
            Ok(Mode::Record(path.to_path_buf()))
        } else if has_magic(&raw) {
            let recs =
                decode(&raw).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            Ok(Mode::Replay(path.to_path_buf(), recs))
        } else {
            let text = String::from_utf8_lossy(&raw);
            let list = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            Ok(Mode::FileList(path.to_path_buf(), list))
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Record(_) => "record",
            Mode::Replay(..) => "replay",
            Mode::FileList(..) => "file-list",
        }
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Collects the reads of every layer of one device and writes the trace file.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    records: Mutex<Vec<Record>>,
    finished: AtomicBool,
}

impl Recorder {
    /// Starts recording into `path`: creates `<path>.lock` and a thread that writes the trace
    /// once the lock file is deleted (checked every `poll`).
    pub fn start(path: &Path, poll: Duration) -> Result<Arc<Recorder>> {
        let lock = with_suffix(path, ".lock");
        std::fs::write(&lock, b"")
            .map_err(|e| Error::io("create", lock.display().to_string(), e))?;
        let _ = std::fs::remove_file(with_suffix(path, ".ok"));
        let rec = Arc::new(Recorder {
            path: path.to_path_buf(),
            records: Mutex::new(Vec::new()),
            finished: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&rec);
        std::thread::Builder::new()
            .name("trace-record".into())
            .spawn(move || loop {
                std::thread::sleep(poll);
                let Some(rec) = weak.upgrade() else { return };
                if rec.finished.load(Ordering::Acquire) {
                    return;
                }
                if !lock.exists() {
                    if let Err(e) = rec.finish() {
                        tracing::error!("trace {}: {e}", rec.path.display());
                    }
                    return;
                }
            })
            .map_err(|e| Error::io("spawn", "trace recorder", e))?;
        Ok(rec)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    fn push(&self, layer: u32, offset: u64, count: u64) {
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        self.records.lock().unwrap().push(Record {
            op: b'R',
            layer,
            count,
            offset: offset as i64,
        });
    }

    /// Writes the trace (through a temporary file renamed into place, so a reader never sees
    /// half of one), removes the lock and creates `<path>.ok`. Later calls do nothing.
    pub fn finish(&self) -> Result<()> {
        if self.finished.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let records = std::mem::take(&mut *self.records.lock().unwrap());
        let tmp = with_suffix(&self.path, ".tmp");
        let io = |op, p: &Path, e| Error::io(op, p.display().to_string(), e);
        std::fs::write(&tmp, encode(&records)).map_err(|e| io("write", &tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io("rename", &self.path, e))?;
        let _ = std::fs::remove_file(with_suffix(&self.path, ".lock"));
        let ok = with_suffix(&self.path, ".ok");
        std::fs::write(&ok, b"").map_err(|e| io("create", &ok, e))?;
        tracing::info!(
            "trace {}: {} records written",
            self.path.display(),
            records.len()
        );
        Ok(())
    }
}

/// Where a device's layers send their reads while a recording runs: empty most of the time
/// (one relaxed atomic load per read), filled by [`TraceSlot::set`] to start recording on an
/// attached device.
#[derive(Debug, Default)]
pub struct TraceSlot {
    active: AtomicBool,
    rec: Mutex<Option<Arc<Recorder>>>,
}

impl TraceSlot {
    pub fn set(&self, rec: Option<Arc<Recorder>>) {
        let mut g = self.rec.lock().unwrap();
        self.active.store(rec.is_some(), Ordering::Release);
        *g = rec;
    }

    pub fn get(&self) -> Option<Arc<Recorder>> {
        self.rec.lock().unwrap().clone()
    }

    fn push(&self, layer: u32, offset: u64, count: u64) {
        if self.active.load(Ordering::Relaxed) {
            if let Some(r) = &*self.rec.lock().unwrap() {
                r.push(layer, offset, count);
            }
        }
    }
}

/// A layer file whose successful reads are recorded while its slot holds a recorder.
pub struct Recording {
    inner: Arc<dyn ReadAt>,
    layer: u32,
    slot: Arc<TraceSlot>,
}

impl Recording {
    pub fn new(inner: Arc<dyn ReadAt>, layer: u32, slot: Arc<TraceSlot>) -> Self {
        Recording { inner, layer, slot }
    }
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("layer", &self.layer)
            .finish()
    }
}

impl ReadAt for Recording {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read_at(offset, buf)?;
        if n > 0 {
            self.slot.push(self.layer, offset, n as u64);
        }
        Ok(n)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn discard_cached(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard_cached(offset, len)
    }
    fn generation(&self) -> Option<u64> {
        self.inner.generation()
    }
}

/// Progress of one replay.
#[derive(Debug, Default)]
pub struct ReplayStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub done: AtomicBool,
}

/// One read of a replay: layer, offset, length (at most [`MAX_IO`]).
pub type ReplayRead = (usize, u64, u64);

/// Records closer than this in one layer are read as one (the gap read too): a start reads
/// many small pieces of a file or a directory near each other, and one request for them costs
/// the registry and the network far less than many.
pub const MERGE_GAP: u64 = 64 << 10;

/// The reads that replaying `records` against layers of `sizes` bytes makes, and how many
/// records were skipped. A trace comes from the image, so it is untrusted: a record that is not
/// a read, names a layer the image does not have, has a negative offset, or lies wholly past
/// its layer's end is skipped, and a record is cut at its layer's end.
///
/// Records of one layer that overlap or lie within [`MERGE_GAP`] of each other become one read
/// of at most [`MAX_IO`], so the reads of a layer never overlap: a trace cannot make the daemon
/// read more than the image once, however often it names a range. The reads come in the order
/// of their first record, so what the start needs first is fetched first.
pub fn plan_replay(records: &[Record], sizes: &[u64]) -> (Vec<ReplayRead>, u64) {
    // (layer, start, end, first record) of each valid record.
    let mut pieces = Vec::new();
    let mut skipped = 0u64;
    for (i, r) in records.iter().enumerate() {
        let size = sizes.get(r.layer as usize).copied();
        let (Some(size), true, Ok(start)) = (size, r.op == b'R', u64::try_from(r.offset)) else {
            skipped += 1;
            continue;
        };
        let end = start.saturating_add(r.count).min(size);
        if start >= end {
            skipped += 1;
            continue;
        }
        pieces.push((r.layer as usize, start, end, i));
    }
    pieces.sort_unstable();
    // Merged per layer: (first record, layer, start, end), end - start <= MAX_IO.
    let mut reads: Vec<(usize, usize, u64, u64)> = Vec::new();
    for (layer, start, end, first) in pieces {
        let mut off = start;
        if let Some(last) = reads.last_mut() {
            if last.1 == layer && off <= last.3.saturating_add(MERGE_GAP) {
                if end <= last.3 {
                    last.0 = last.0.min(first);
                    continue;
                }
                // Join the previous read up to its limit; what is left starts a new one.
                off = off.max(last.3);
                let room = last.2 + MAX_IO;
                if off < room {
                    last.0 = last.0.min(first);
                    last.3 = end.min(room);
                    off = last.3;
                }
            }
        }
        while off < end {
            let n = (end - off).min(MAX_IO);
            reads.push((first, layer, off, off + n));
            off += n;
        }
    }
    reads.sort_by_key(|r| (r.0, r.1, r.2));
    let work = reads
        .into_iter()
        .map(|(_, layer, start, end)| (layer, start, end - start))
        .collect();
    (work, skipped)
}

/// Replays `records` against `layers` with `concurrency` threads, in the background. Records
/// [`plan_replay`] skips are counted as errors; a failed read is counted and the replay goes
/// on (the device's own read of the same range will report the failure). Each read is at most
/// [`MAX_IO`].
pub fn replay(
    records: Vec<Record>,
    layers: Vec<Arc<dyn ReadAt>>,
    concurrency: usize,
    cancel: Arc<AtomicBool>,
) -> Arc<ReplayStats> {
    let stats = Arc::new(ReplayStats::default());
    // A layer whose size cannot be learned gets no reads.
    let sizes: Vec<u64> = layers.iter().map(|l| l.size().unwrap_or(0)).collect();
    let (work, skipped) = plan_replay(&records, &sizes);
    stats.errors.fetch_add(skipped, Ordering::Relaxed);
    let planned = work.len();
    let queue = Arc::new(Mutex::new(work.into_iter()));
    let layers = Arc::new(layers);
    let workers = concurrency.max(1);
    let running = Arc::new(AtomicU64::new(workers as u64));
    let started = std::time::Instant::now();
    tracing::info!(
        "trace replay: {planned} reads planned ({skipped} records skipped), {workers} workers"
    );
    for i in 0..workers {
        let (queue, layers, st, cancel, run) = (
            queue.clone(),
            layers.clone(),
            stats.clone(),
            cancel.clone(),
            running.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("trace-replay-{i}"))
            .spawn(move || {
                let mut buf = vec![0u8; MAX_IO as usize];
                loop {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let Some((layer, off, n)) = queue.lock().unwrap().next() else {
                        break;
                    };
                    // What the trace names, not a readahead window beyond it.
                    let read = overlaybd_cache::without_readahead(|| {
                        layers[layer].read_at(off, &mut buf[..n as usize])
                    });
                    match read {
                        Ok(got) => {
                            st.records.fetch_add(1, Ordering::Relaxed);
                            st.bytes.fetch_add(got as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            st.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("trace replay: layer {layer} at {off}: {e}");
                        }
                    }
                }
                if run.fetch_sub(1, Ordering::AcqRel) == 1 {
                    st.done.store(true, Ordering::Release);
                    tracing::info!(
                        "trace replay done: {} B in {} reads, {} errors, {:.2} s",
                        st.bytes.load(Ordering::Relaxed),
                        st.records.load(Ordering::Relaxed),
                        st.errors.load(Ordering::Relaxed),
                        started.elapsed().as_secs_f64()
                    );
                }
            });
        if spawned.is_err() && running.fetch_sub(1, Ordering::AcqRel) == 1 {
            stats.done.store(true, Ordering::Release);
        }
    }
    stats
}

/// Fuzz body (feature `test-util`): any bytes as a trace file, which decodes or is refused
/// without a panic; and the same bytes as raw records (whatever the checksum, so the fuzzer
/// reaches the planner), which plan a bounded replay that stays inside its layers.
#[cfg(any(test, feature = "test-util"))]
pub fn fuzz(data: &[u8]) {
    if let Ok(records) = decode(data) {
        assert_eq!(
            decode(&encode(&records)).unwrap(),
            records,
            "records survive a round trip"
        );
        check_plan(&records);
    }
    let raw: Vec<Record> = data
        .chunks_exact(RECORD_SIZE)
        .map(Record::from_bytes)
        .collect();
    check_plan(&raw);
}

#[cfg(any(test, feature = "test-util"))]
fn check_plan(records: &[Record]) {
    let sizes = [1 << 20, 0, 3 << 30];
    let (work, skipped) = plan_replay(records, &sizes);
    assert!(skipped <= records.len() as u64);
    let mut by_layer = vec![Vec::new(); sizes.len()];
    for &(layer, off, n) in &work {
        assert!(n > 0 && n <= MAX_IO);
        assert!(off + n <= sizes[layer], "a read past layer {layer}'s end");
        by_layer[layer].push((off, off + n));
    }
    for reads in &mut by_layer {
        reads.sort_unstable();
        assert!(reads.windows(2).all(|w| w[0].1 <= w[1].0), "reads overlap");
    }
    // Every byte a valid record names is read.
    for r in records {
        let (Some(&size), Ok(start)) = (sizes.get(r.layer as usize), u64::try_from(r.offset))
        else {
            continue;
        };
        let end = start.saturating_add(r.count).min(size);
        if r.op != b'R' || start >= end {
            continue;
        }
        let mut at = start;
        for &(s, e) in &by_layer[r.layer as usize] {
            if s <= at && at < e {
                at = e;
            }
        }
        assert!(at >= end, "bytes {at}..{end} of layer {} not read", r.layer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_rejects_damage() {
        let recs = vec![
            Record {
                op: b'R',
                layer: 0,
                count: 4096,
                offset: 8192,
            },
            Record {
                op: b'R',
                layer: 3,
                count: 512,
                offset: 1 << 30,
            },
        ];
        let raw = encode(&recs);
        assert_eq!(raw.len(), 24 + 48);
        assert_eq!(&raw[0..4], &[0x20, 0x18, 0xEF, 0xC2]);
        assert_eq!(decode(&raw).unwrap(), recs);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x40;
            // Flipping a padding byte of the header is the only change a reader cannot see.
            if (4..8).contains(&i) || (20..24).contains(&i) {
                continue;
            }
            assert!(decode(&bad).is_err(), "byte {i} flipped was accepted");
        }
        assert!(decode(&raw[..raw.len() - 1]).is_err());
        assert!(decode(&raw[..10]).is_err());
    }

    fn read(layer: u32, offset: i64, count: u64) -> Record {
        Record {
            op: b'R',
            layer,
            count,
            offset,
        }
    }

    #[test]
    fn the_layout_is_the_one_docs_format_trace_md_states() {
        assert_eq!((HEADER_SIZE, RECORD_SIZE), (24, 24));
        let r = Record {
            op: b'R',
            layer: 0x0403_0201,
            count: 0x0c0b_0a09_0807_0605,
            offset: -2,
        };
        let raw = encode(&[r]);
        assert_eq!(&raw[0..4], &0xC2EF_1820u32.to_le_bytes(), "magic at 0");
        assert_eq!(&raw[4..8], &[0; 4], "padding at 4");
        assert_eq!(&raw[8..16], &24u64.to_le_bytes(), "data size at 8");
        let crc = crc32c_raw(0, &raw[24..48]);
        assert_eq!(&raw[16..20], &crc.to_le_bytes(), "checksum at 16");
        assert_eq!(&raw[20..24], &[0; 4], "padding at 20");
        let rec = &raw[24..48];
        assert_eq!(rec[0], 0x52, "op at 0");
        assert_eq!(&rec[1..4], &[0; 3], "padding at 1");
        assert_eq!(&rec[4..8], &[1, 2, 3, 4], "layer at 4");
        assert_eq!(&rec[8..16], &[5, 6, 7, 8, 9, 10, 11, 12], "count at 8");
        assert_eq!(&rec[16..24], &(-2i64).to_le_bytes(), "offset at 16");
        // Padding is checksummed, not interpreted: a writer's garbage there is accepted.
        let mut other = raw.clone();
        other[25] = 0xAA;
        let crc = crc32c_raw(0, &other[24..48]);
        other[16..20].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&other).unwrap(), vec![r]);
    }

    #[test]
    fn replay_plans_stay_inside_the_layers_and_are_bounded() {
        let sizes = [10 << 20, 4096];
        let recs = [
            read(0, 0, 3 << 20),  // 3 reads of 1 MiB
            read(1, 0, u64::MAX), // cut at the layer's end: one read of 4096
            read(1, 4096, 1),     // wholly past the end: skipped
            read(2, 0, 512),      // no such layer: skipped
            read(0, -512, 512),   // negative offset: skipped
            Record {
                op: b'W',
                ..read(0, 0, 512)
            }, // not a read: skipped
        ];
        let (work, skipped) = plan_replay(&recs, &sizes);
        assert_eq!(skipped, 4);
        assert_eq!(
            work,
            [
                (0, 0, 1 << 20),
                (0, 1 << 20, 1 << 20),
                (0, 2 << 20, 1 << 20),
                (1, 0, 4096)
            ]
        );
        // A hostile trace asking for the whole image again and again plans it once.
        let many = vec![read(0, 0, u64::MAX); 1000];
        let (work, skipped) = plan_replay(&many, &sizes);
        let total: u64 = work.iter().map(|w| w.2).sum();
        assert_eq!(total, 10 << 20);
        assert_eq!(work.len(), 10);
        assert_eq!(skipped, 0);
    }

    #[test]
    fn nearby_records_are_read_as_one_in_the_order_of_their_first_record() {
        let sizes = [64 << 20, 64 << 20];
        let (far, gap, max) = (32u64 << 20, MERGE_GAP, MAX_IO);
        let at = |l, off: u64, n| read(l, off as i64, n);
        let recs = [
            at(1, far, 4096),                   // 0
            at(0, 8192, 4096),                  // 1
            at(0, 0, 4096),                     // 2: joins 1 (4 KiB apart)
            at(0, 0, 4096),                     // 3: the same again
            at(0, far, 4096),                   // 4: far from 1
            at(1, far + 4096 + gap, 4096),      // 5: joins 0 (just within the gap)
            at(1, far + 12288 + 2 * gap, 4096), // 6: beyond it
            at(0, 12288, max),                  // 7: fills 1's read to MAX_IO, then its own
        ];
        let (work, skipped) = plan_replay(&recs, &sizes);
        assert_eq!(skipped, 0);
        assert_eq!(
            work,
            [
                (1, far, 8192 + gap),
                (0, 0, max),
                (0, far, 4096),
                (1, far + 12288 + 2 * gap, 4096),
                (0, max, 12288),
            ]
        );
        check_plan(&recs);
    }

    #[test]
    fn the_fuzz_body_holds_on_mutated_traces() {
        let seed = encode(&[read(0, 4096, 8192), read(2, 1 << 30, u64::MAX)]);
        fuzz(&seed);
        fuzz(b"");
        for d in test_support::mutations(&seed, 3000, 11) {
            fuzz(&d);
        }
        // Mutations rarely keep the checksum right: also run valid traces of random records.
        for d in test_support::mutations(&seed[24..], 500, 12) {
            let recs: Vec<Record> = d
                .chunks_exact(RECORD_SIZE)
                .map(Record::from_bytes)
                .collect();
            fuzz(&encode(&recs));
        }
    }

    #[test]
    fn modes_follow_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("trace");
        assert!(matches!(Mode::detect(&p).unwrap(), Mode::Off));
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(Mode::detect(&p).unwrap(), Mode::Record(_)));
        std::fs::write(&p, encode(&[])).unwrap();
        assert!(matches!(Mode::detect(&p).unwrap(), Mode::Replay(_, r) if r.is_empty()));
        std::fs::write(&p, b"/usr/bin/\n/etc/passwd\n").unwrap();
        assert!(matches!(Mode::detect(&p).unwrap(), Mode::FileList(_, l) if l.len() == 2));
        let mut bad = encode(&[]);
        bad.push(0);
        std::fs::write(&p, bad).unwrap();
        assert!(Mode::detect(&p).is_err());
    }
}
