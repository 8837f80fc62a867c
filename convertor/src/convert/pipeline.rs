//! One manifest's pipeline: `concurrency` download threads; the applier (the calling thread)
//! applying layers strictly in order, each fed by an inflater thread that decompresses and
//! hashes ahead of it; a commit thread and an upload thread behind it, so that layer N commits
//! and uploads while layer N+1 applies. On an error no new download starts, and the commits
//! and uploads already queued finish.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{Scope, ScopedJoinHandle};

use overlaybd_lsmt::{Mapping, Uuid};
use sha2::{Digest, Sha256};

use super::growing::Growing;
use super::{decompress, download, download_growing, now, LayerReport, Options, Plan};
use crate::apply::{Applier, ApplyStats};
use crate::dedup;
use crate::disk::WorkDisk;
use crate::error::{At, Error, Result};
use crate::extfs::{DiskIo, Fs};
use crate::layer::{self, FsType, LayerBlob};
use crate::oci::{media, Descriptor, LayerCompression};
use crate::progress::{Phase, Progress};
use crate::store::Store;

/// What every stage of the pipeline reads.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub src: &'a dyn Store,
    pub dst: &'a dyn Store,
    pub plan: &'a Plan<'a>,
    pub opts: &'a Options,
    pub progress: &'a dyn Progress,
    /// The conversion's temporary directory: sources, the work disk, snapshots, blobs.
    pub work: &'a Path,
}

/// A layer's blocks, snapshotted out of the work disk (or, for the last layer, on the work
/// disk itself), for the committer, which removes `raw` once committed.
struct Job {
    i: usize,
    raw: PathBuf,
    maps: Vec<Mapping>,
    uuid: Uuid,
    parent: Option<Uuid>,
}

/// The committed layers' blobs, by layer.
type Committed = Vec<(usize, LayerBlob)>;

/// A committed layer blob for the uploader.
struct Upload {
    i: usize,
    path: PathBuf,
    digest: String,
    size: u64,
}

/// Where the applier finds a layer's blob (a file in the work directory).
enum Input {
    /// Downloaded whole and checked (or, for a reused layer that is not loaded, nothing).
    Whole(PathBuf),
    /// A link to a layout's blob, read in place: checked as it is read.
    InPlace(PathBuf),
    /// Still downloading: read behind the download, which checks it.
    Growing(PathBuf, Arc<Growing>),
}

impl Input {
    fn path(&self) -> &Path {
        match self {
            Input::Whole(p) | Input::InPlace(p) | Input::Growing(p, _) => p,
        }
    }
}

/// What a layer is applied to.
enum LayerFs<'a> {
    /// The ext4 filesystem on the work disk, through libext2fs.
    Ext4,
    /// The EROFS image, rebuilt by mkfs.erofs; its changes go onto the work disk.
    Erofs(&'a mut crate::erofs::Image),
}

/// Runs the pipeline over every layer of the plan; returns the layers' reports.
pub(super) fn run(c: Ctx<'_>) -> Result<Vec<LayerReport>> {
    let n = c.plan.len();
    let mut reports: Vec<LayerReport> = Vec::with_capacity(n);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<()> {
        let downloads = spawn_downloads(s, n, c.opts.concurrency, &next, move |i, tx| {
            fetch(c, i, tx)
        });
        let (up_tx, uploader) = spawn_uploader(s, c);
        let (commit_tx, committer) = spawn_committer(s, c, up_tx);
        let result = apply_all(s, c, &downloads, &commit_tx, &mut reports);
        if result.is_err() {
            next.store(n, Ordering::Relaxed);
        }
        drop(commit_tx);
        let committed = committer.join().map_err(|_| Error::Panicked("commit"))?;
        uploader.join().map_err(|_| Error::Panicked("upload"))??;
        result?;
        for (i, blob) in committed? {
            reports[i].blob = blob;
        }
        Ok(())
    })?;
    Ok(reports)
}

/// Layer inputs by layer, as the download threads send them.
pub(crate) type Inputs<T> = mpsc::Sender<(usize, Result<T>)>;

/// Downloads: a pool of `concurrency` threads taking layers `0..n` in order (`fetch` makes
/// layer i's input and sends it, when the applier may start on it; false once nobody listens).
/// Setting `next` to `n` stops new ones (on an error).
pub(crate) fn spawn_downloads<'scope, T: Send + 'scope>(
    s: &'scope Scope<'scope, '_>,
    n: usize,
    concurrency: usize,
    next: &'scope AtomicUsize,
    fetch: impl Fn(usize, &Inputs<T>) -> bool + Copy + Send + 'scope,
) -> mpsc::Receiver<(usize, Result<T>)> {
    let (tx, rx) = mpsc::channel::<(usize, Result<T>)>();
    for _ in 0..concurrency.clamp(1, n) {
        let tx = tx.clone();
        s.spawn(move || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n || !fetch(i, &tx) {
                break;
            }
        });
    }
    rx
}

/// Downloads source layer `i` into the work directory, with its progress.
pub(crate) fn download_source(
    src: &dyn Store,
    l: &Descriptor,
    work: &Path,
    progress: &dyn Progress,
    i: usize,
) -> Result<PathBuf> {
    let path = work.join(format!("src-{i:04}"));
    progress.bytes(i, Phase::Download, 0);
    let r = download(src, l, &path, progress, i).map(|()| path);
    progress.done(i, Phase::Download);
    r
}

/// Layer `i`'s input in the work directory, sent on `tx`: its source read in place or
/// downloaded (the applier reads behind the download), or (a reused layer to build on) its
/// converted blob downloaded from the destination; nothing for the other reused layers.
fn fetch(c: Ctx<'_>, i: usize, tx: &Inputs<Input>) -> bool {
    let path = c.work.join(format!("src-{i:04}"));
    let input = match &c.plan.reuse[i] {
        None => {
            let l = &c.plan.m.layers[i];
            // A layout's blob is read in place (a symbolic link in the work directory, which
            // the applier removes after use), its digest checked as the inflater reads it.
            if let Some(p) = c.src.local_blob(&l.digest) {
                if std::os::unix::fs::symlink(&p, &path).is_ok() {
                    c.progress.bytes(i, Phase::Download, l.size);
                    c.progress.done(i, Phase::Download);
                    return tx.send((i, Ok(Input::InPlace(path)))).is_ok();
                }
            }
            // The file exists before the applier hears of it (the download opens it again).
            if let Err(e) = File::create(&path) {
                return tx.send((i, Err(Error::io("create", &path, e)))).is_ok();
            }
            let growing = Arc::new(Growing::default());
            let _ended = growing.end_guard();
            if tx
                .send((i, Ok(Input::Growing(path.clone(), growing.clone()))))
                .is_err()
            {
                return false;
            }
            c.progress.bytes(i, Phase::Download, 0);
            let r = download_growing(c.src, l, &path, c.progress, i, Some(&growing));
            c.progress.done(i, Phase::Download);
            growing.end(&r);
            return true;
        }
        Some(rec) if c.plan.needs_load(i) => {
            let d = Descriptor {
                media_type: media::OCI_LAYER.into(),
                digest: rec.digest.clone(),
                size: rec.size,
                urls: None,
                annotations: None,
                platform: None,
                artifact_type: None,
            };
            download(c.dst, &d, &path, c.progress, i).map(|()| Input::Whole(path))
        }
        Some(_) => Ok(Input::Whole(path)),
    };
    tx.send((i, input)).is_ok()
}

/// Uploads: one thread, in order, while the next layer applies.
fn spawn_uploader<'scope>(
    s: &'scope Scope<'scope, '_>,
    c: Ctx<'scope>,
) -> (mpsc::Sender<Upload>, ScopedJoinHandle<'scope, Result<()>>) {
    let (tx, rx) = mpsc::channel::<Upload>();
    let uploader = s.spawn(move || -> Result<()> {
        for Upload {
            i,
            path,
            digest,
            size,
        } in rx
        {
            c.progress.bytes(i, Phase::Upload, 0);
            let sent = c
                .dst
                .put_blob_file(&digest, size, &path)
                .at(|| format!("upload layer {i} ({digest})"))?;
            if sent {
                c.progress.bytes(i, Phase::Upload, size);
                c.progress.done(i, Phase::Upload);
            } else {
                let why = format!("{digest} is already in {}", c.dst.describe());
                c.progress.skipped(i, Phase::Upload, &why);
            }
            let _ = std::fs::remove_file(&path);
        }
        Ok(())
    });
    (tx, uploader)
}

/// Commits: one thread, in order, from a snapshot of each layer's blocks, while the next layer
/// applies; each finished layer goes on to the uploader. Returns the blobs by layer.
fn spawn_committer<'scope>(
    s: &'scope Scope<'scope, '_>,
    c: Ctx<'scope>,
    up_tx: mpsc::Sender<Upload>,
) -> (
    mpsc::Sender<Job>,
    ScopedJoinHandle<'scope, Result<Committed>>,
) {
    let (tx, rx) = mpsc::channel::<Job>();
    let committer = s.spawn(move || -> Result<Committed> {
        let mut done = Vec::new();
        for job in rx {
            let i = job.i;
            let out = c.work.join(format!("out-{i:04}"));
            let blob = commit(c, job, &out)?;
            let up = Upload {
                i,
                path: out,
                digest: blob.digest.clone(),
                size: blob.size,
            };
            if up_tx.send(up).is_err() {
                break;
            }
            done.push((i, blob));
        }
        Ok(done)
    });
    (tx, committer)
}

/// Commits one job into the layer blob `out`.
fn commit(c: Ctx<'_>, job: Job, out: &Path) -> Result<LayerBlob> {
    let i = job.i;
    c.progress.bytes(i, Phase::Commit, 0);
    let f = File::open(&job.raw).map_err(|e| Error::io("open", &job.raw, e))?;
    let blob = layer::commit_extents(
        &job.maps,
        &f,
        c.opts.vsize,
        job.uuid,
        job.parent,
        &c.opts.compression,
        out,
        false,
    )
    .at(|| format!("layer {i}: commit"))?;
    let _ = std::fs::remove_file(&job.raw);
    c.progress.bytes(i, Phase::Commit, blob.size);
    c.progress.done(i, Phase::Commit);
    Ok(blob)
}

/// The applier: each layer in order as its download arrives, reused ones loaded (or skipped),
/// the others applied and cut into a commit job. The reports are pushed in layer order.
fn apply_all<'scope>(
    s: &'scope Scope<'scope, '_>,
    c: Ctx<'scope>,
    downloads: &mpsc::Receiver<(usize, Result<Input>)>,
    commit_tx: &mpsc::Sender<Job>,
    reports: &mut Vec<LayerReport>,
) -> Result<()> {
    let mut ready: BTreeMap<usize, Input> = BTreeMap::new();
    let disk_path = c.work.join("disk");
    let mut disk = WorkDisk::create(&disk_path, c.opts.vsize)
        .map_err(|e| Error::io("create the work disk", &disk_path, e))?;
    let t = now();
    let mut parent = None;
    // EROFS: the image built so far, as mkfs.erofs extends it (its UUID: the first layer's).
    let mut erofs = None;
    for i in 0..c.plan.len() {
        let input = downloaded(downloads, &mut ready, i)?;
        let uuid = layer::uuid_from_chain_id(&c.plan.chains[i])?;
        // The filesystem's UUID: layer 0's, whichever layers this run converts.
        let fs_uuid = layer::uuid_from_chain_id(&c.plan.chains[0])?
            .to_string()
            .to_lowercase();
        if let Some(rec) = &c.plan.reuse[i] {
            reports.push(reuse(c, &mut disk, i, rec, input.path())?);
            parent = Some(uuid);
            if let Some(img) = &mut erofs {
                crate::erofs::Image::disk_changed(img);
            }
            continue;
        }
        let fs = match c.opts.fs {
            FsType::Ext4 => {
                if i == 0 {
                    crate::mkfs::mkfs(disk.path(), &fs_uuid, t, c.work)?;
                    disk.mark_file_extents()
                        .map_err(|e| Error::io("find the data of", &disk_path, e))?;
                }
                LayerFs::Ext4
            }
            FsType::Erofs => LayerFs::Erofs(erofs.get_or_insert_with(|| {
                crate::erofs::Image::new(&c.work.join("erofs.img"), &fs_uuid)
            })),
        };
        let stats = apply_layer(s, c, &mut disk, i, &input, t, fs)?;
        let _ = std::fs::remove_file(input.path());
        // The last layer applied commits from the work disk itself: nothing moves it on.
        let last = c.plan.reuse[i + 1..].iter().all(Option::is_some);
        let job = if last {
            Job {
                i,
                raw: disk.path().to_path_buf(),
                maps: disk.take_dirty(),
                uuid,
                parent,
            }
        } else {
            cut(c, &mut disk, i, uuid, parent)?
        };
        parent = Some(uuid);
        if commit_tx.send(job).is_err() {
            break;
        }
        reports.push(c.plan.report(i, LayerBlob::default(), stats));
    }
    Ok(())
}

/// Waits for layer `i`'s input; others that come first wait in `ready`.
pub(crate) fn downloaded<T>(
    downloads: &mpsc::Receiver<(usize, Result<T>)>,
    ready: &mut BTreeMap<usize, T>,
    i: usize,
) -> Result<T> {
    while !ready.contains_key(&i) {
        let (k, r) = downloads.recv().map_err(|_| Error::Panicked("download"))?;
        ready.insert(k, r?);
    }
    Ok(ready.remove(&i).expect("present"))
}

/// A layer taken from the dedup database: its blob loaded onto the work disk when a layer
/// above it is converted.
fn reuse(
    c: Ctx<'_>,
    disk: &mut WorkDisk,
    i: usize,
    rec: &dedup::Record,
    path: &Path,
) -> Result<LayerReport> {
    if c.plan.needs_load(i) {
        load_layer(disk, path).at(|| format!("layer {i}: load the reused {}", rec.digest))?;
        let _ = std::fs::remove_file(path);
    }
    let n = c.plan.len();
    c.progress
        .note(&format!("layer {}/{n}: reused {}", i + 1, rec.digest));
    let blob = LayerBlob {
        digest: rec.digest.clone(),
        size: rec.size,
        integrity_root: rec.integrity_root.clone(),
        extents: 0,
        data_bytes: 0,
    };
    Ok(c.plan.report(i, blob, ApplyStats::default()))
}

/// Writes a converted layer's extents onto the work disk (to build the layers above a reused
/// one) and forgets them as changes.
fn load_layer(disk: &mut WorkDisk, path: &Path) -> Result<()> {
    let (src, _) = overlaybd_lsmt::blob::open_path(path)?;
    let (meta, maps) = overlaybd_lsmt::ro::read_layer(&*src)?;
    if meta.header.virtual_size != disk.size() {
        return Err(Error::Invalid(format!(
            "a reused layer has a {}-byte disk, this conversion {} bytes",
            meta.header.virtual_size,
            disk.size()
        )));
    }
    let mut buf = Vec::new();
    for m in maps {
        let len = m.length as usize * 512;
        buf.resize(len, 0);
        if m.zeroed {
            buf.fill(0);
        } else {
            let n = zfile::source::read_full_at(&*src, m.moffset * 512, &mut buf)
                .map_err(|e| Error::io("read", path, e))?;
            if n != len {
                return Err(Error::Invalid("a reused layer ends inside its data".into()));
            }
        }
        disk.write_at(m.offset * 512, &buf)
            .map_err(|e| Error::io("write", disk.path(), e))?;
    }
    disk.take_dirty();
    Ok(())
}

/// Applies layer `i`'s tar (compressed, from `input`) to the work disk, hashing it to check
/// the diff ID (an uncompressed layer's diff ID is its digest, checked by the download).
fn apply_layer<'scope>(
    s: &'scope Scope<'scope, '_>,
    c: Ctx<'scope>,
    disk: &mut WorkDisk,
    i: usize,
    input: &Input,
    t: i64,
    fs: LayerFs<'_>,
) -> Result<ApplyStats> {
    let path = input.path();
    let digest = &c.plan.m.layers[i].digest;
    let diff_id = &c.plan.diff_ids[i];
    c.progress.bytes(i, Phase::Apply, 0);
    let plain = c.plan.kinds[i] == LayerCompression::None;
    if plain && digest != diff_id {
        return Err(Error::Invalid(format!(
            "layer {i} ({digest}) is an uncompressed tar, but the config gives it diff ID {diff_id}"
        )));
    }
    let (mut tar, inflater) = spawn_inflater(s, c, i, input, plain);
    let applied = (|| -> Result<ApplyStats> {
        if let LayerFs::Erofs(img) = fs {
            img.apply(disk, &mut tar, t)
                .at(|| format!("layer {i} ({digest}): build EROFS"))?;
            return Ok(ApplyStats::default());
        }
        let mut fs = Fs::open(disk, true, t).at(|| format!("layer {i}: open the filesystem"))?;
        let stats = Applier::new(&mut fs)
            .apply(&mut tar)
            .at(|| format!("layer {i} ({digest})"))?;
        fs.close()
            .at(|| format!("layer {i}: write the filesystem back"))?;
        Ok(stats)
    })();
    let stats = match (applied, input) {
        (Ok(stats), _) => stats,
        // The pipe is dropped with `tar`: the inflater stops.
        (Err(e), Input::Whole(_)) => return Err(e),
        // Bytes still downloading: a failed download (a digest that does not match, a broken
        // connection) is the cause to report, not what applying its bytes did.
        (Err(e), Input::Growing(_, g)) => {
            // The download stops at its next write; if it had failed first, that is the cause.
            g.cancel();
            drop(tar);
            let _ = inflater.join();
            match g.wait_end() {
                Err(cause) if !g.is_cancelled_cause(&cause) => {
                    return Err(cause).at(|| format!("layer {i} ({digest})"))
                }
                _ => return Err(e),
            }
        }
        (Err(e), Input::InPlace(_)) => {
            // Bytes that are not the blob (a layout's blob read in place, checked at its end)
            // are the cause to report, not what applying them did: read to the end to know.
            let _ = std::io::copy(&mut tar, &mut std::io::sink());
            drop(tar.rx);
            if let Ok(Err(bad)) = inflater.join() {
                if bad.kind() == io::ErrorKind::InvalidData {
                    return Err(bad).at(|| format!("layer {i} ({digest})"));
                }
            }
            return Err(e);
        }
    };
    std::io::copy(&mut tar, &mut std::io::sink())
        .map_err(|e| Error::io("read the rest of", path, e))
        .at(|| format!("layer {i}"))?;
    drop(tar.rx);
    let got = inflater
        .join()
        .map_err(|_| Error::Panicked("decompression"))?
        .at(|| format!("layer {i} ({digest})"))?;
    // The download's end: what the inflater read was the blob (bytes past the compressed
    // stream's end, which it does not read, are checked here too).
    if let Input::Growing(_, g) = input {
        g.wait_end().at(|| format!("layer {i} ({digest})"))?;
    }
    if let Some(got) = got {
        if got != *diff_id {
            return Err(Error::Invalid(format!(
                "layer {i} ({digest}): the uncompressed tar has digest {got}, the config says {diff_id}"
            )));
        }
    }
    c.progress.bytes(i, Phase::Apply, tar.n);
    c.progress.done(i, Phase::Apply);
    Ok(stats)
}

/// Decompression and hashing run in their own thread, ahead of the applier, which reads the
/// returned pipe. The thread returns the diff ID it computed (`None` for a `plain` tar, or
/// when the applier stopped first).
fn spawn_inflater<'scope>(
    s: &'scope Scope<'scope, '_>,
    c: Ctx<'scope>,
    i: usize,
    input: &Input,
    plain: bool,
) -> (Pipe, ScopedJoinHandle<'scope, Result<Option<String>>>) {
    let (chunks_tx, chunks_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(16);
    let path = input.path().to_path_buf();
    let growing = match input {
        Input::Growing(_, g) => Some(g.clone()),
        _ => None,
    };
    let kind = c.plan.kinds[i];
    let l = &c.plan.m.layers[i];
    // Read in place: not checked by a download.
    let check = matches!(input, Input::InPlace(_)).then(|| (l.digest.clone(), l.size));
    let inflater = s.spawn(move || -> Result<Option<String>> {
        let blob: Box<dyn Read> = match growing {
            Some(g) => Box::new(g.reader(&path)?),
            None => Box::new(File::open(&path).map_err(|e| Error::io("open", &path, e))?),
        };
        let mut tar = Hashing {
            inner: decompress(blob, &path, kind, check)?,
            h: (!plain).then(Sha256::new),
            n: 0,
            reported: 0,
            progress: c.progress,
            i,
        };
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let got = match read_chunk(&mut tar, &mut buf) {
                Ok(got) => got,
                Err(e) => {
                    let err = io::Error::new(e.kind(), e.to_string());
                    let _ = chunks_tx.send(Err(e));
                    return Err(Error::io("decompress", &path, err));
                }
            };
            if got == 0 {
                break;
            }
            buf.truncate(got);
            if chunks_tx.send(Ok(buf)).is_err() {
                // The applier stopped (its error is the one reported).
                return Ok(None);
            }
        }
        Ok(tar
            .h
            .take()
            .map(|h| format!("sha256:{}", hex::encode(h.finalize()))))
    });
    let pipe = Pipe {
        rx: chunks_rx,
        cur: Vec::new(),
        pos: 0,
        n: 0,
    };
    (pipe, inflater)
}

/// Fills `buf` from `r` as far as `r` goes; the bytes read (fewer than `buf` only at the end).
pub(crate) fn read_chunk(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The blocks layer `i` wrote, snapshotted out of the work disk as the committer's job.
fn cut(c: Ctx<'_>, disk: &mut WorkDisk, i: usize, uuid: Uuid, parent: Option<Uuid>) -> Result<Job> {
    let maps = disk.take_dirty();
    let raw = c.work.join(format!("raw-{i:04}"));
    let maps =
        layer::snapshot(disk, &maps, &raw).at(|| format!("layer {i}: snapshot its blocks"))?;
    Ok(Job {
        i,
        raw,
        maps,
        uuid,
        parent,
    })
}

/// Reads a layer's tar while hashing it (unless its digest is already known) and reporting
/// progress.
struct Hashing<'p, R> {
    inner: R,
    h: Option<Sha256>,
    n: u64,
    reported: u64,
    progress: &'p dyn Progress,
    i: usize,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        if let Some(h) = &mut self.h {
            h.update(&buf[..k]);
        }
        self.n += k as u64;
        if self.n - self.reported >= 8 << 20 {
            self.reported = self.n;
            self.progress.bytes(self.i, Phase::Apply, self.n);
        }
        Ok(k)
    }
}

/// The applier's end of the inflater thread's channel.
struct Pipe {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    n: u64,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.cur = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let k = buf.len().min(self.cur.len() - self.pos);
        buf[..k].copy_from_slice(&self.cur[self.pos..self.pos + k]);
        self.pos += k;
        self.n += k as u64;
        Ok(k)
    }
}
