//! The conversion of one image: per manifest, download the source layers (in parallel,
//! digest-checked), apply them in order to the work disk (mkfs before layer 0), cut one
//! overlaybd layer per source layer, upload while the next layer applies, then the config and
//! manifest; an index is converted manifest by manifest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::apply::{Applier, ApplyStats};
use crate::dedup::{self, DedupDb};
use crate::disk::WorkDisk;
use crate::extfs::Fs;
use crate::layer::{self, Compression};
use crate::oci::{
    self, annotation, media, Descriptor, Document, Index, LayerCompression, Manifest,
};
use crate::progress::{Phase, Progress};
use crate::store::{read_small_blob, Store};

/// The time stamped on everything the convertor makes rather than copies (superblock, implicit
/// directories get 0): fixed so that the same input gives the same output. `SOURCE_DATE_EPOCH`
/// overrides it.
pub const REPRODUCIBLE_TIME: i64 = 1_577_836_800; // 2020-01-01T00:00:00Z

/// Settings of a conversion.
#[derive(Clone, Debug)]
pub struct Options {
    /// Virtual disk size in bytes (overlaybd: 64 GiB).
    pub vsize: u64,
    pub compression: Compression,
    /// OCI media types in the output; else those of the source's family.
    pub oci: bool,
    /// Layers downloaded (and uploaded) at once.
    pub concurrency: usize,
    /// Where the work disk and blobs go (a fresh temporary directory under it).
    pub work_dir: Option<PathBuf>,
    /// Layers converted before are looked up here and reused; new ones are recorded.
    pub dedup: Option<std::sync::Arc<DedupDb>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            vsize: 64 << 30,
            compression: Compression::default(),
            oci: false,
            concurrency: 4,
            work_dir: None,
            dedup: None,
        }
    }
}

/// What converting one manifest produced.
#[derive(Clone, Debug)]
pub struct Converted {
    pub manifest: Descriptor,
    pub layers: Vec<LayerReport>,
}

#[derive(Clone, Debug)]
pub struct LayerReport {
    pub source_digest: String,
    pub source_size: u64,
    pub diff_id: String,
    pub chain_id: String,
    pub blob: layer::LayerBlob,
    pub apply: ApplyStats,
    /// Taken from the dedup database, not converted.
    pub reused: bool,
}

/// Writes a converted layer's extents onto the work disk (to build the layers above a reused
/// one) and forgets them as changes.
fn load_layer(disk: &mut WorkDisk, path: &Path) -> Result<()> {
    use crate::extfs::DiskIo;
    let (src, _) = overlaybd_lsmt::blob::open_path(path)?;
    let (meta, maps) = overlaybd_lsmt::ro::read_layer(&*src)?;
    if meta.header.virtual_size != disk.size() {
        bail!(
            "a reused layer has a {}-byte disk, this conversion {} bytes",
            meta.header.virtual_size,
            disk.size()
        );
    }
    let mut buf = Vec::new();
    for m in maps {
        let len = m.length as usize * 512;
        buf.resize(len, 0);
        if m.zeroed {
            buf.fill(0);
        } else {
            let n = zfile::source::read_full_at(&*src, m.moffset * 512, &mut buf)?;
            if n != len {
                bail!("a reused layer ends inside its data");
            }
        }
        disk.write_at(m.offset * 512, &buf)?;
    }
    disk.take_dirty();
    Ok(())
}

/// Whether a dedup record's blob is (or can be made) present in `dst`.
fn available(dst: &dyn Store, rec: &dedup::Record) -> Result<bool> {
    if dst.has_blob(&rec.digest)? {
        return Ok(true);
    }
    for from in &rec.locations {
        if dst.try_mount(&rec.digest, from)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Converts `reference` of `src` into `dst` under `tag`; returns the top descriptor (a
/// manifest, or an index for a multi-platform source) and the per-manifest reports.
pub fn convert(
    src: &dyn Store,
    reference: &str,
    dst: &dyn Store,
    tag: Option<&str>,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<(Descriptor, Vec<Converted>)> {
    let (bytes, mt) = src
        .get_manifest(reference)
        .with_context(|| format!("read {reference} from {}", src.describe()))?;
    match oci::parse_document(&bytes, mt.as_deref())? {
        Document::Manifest(m) => {
            let c = convert_manifest(src, &m, dst, tag, opts, progress)?;
            Ok((c.manifest.clone(), vec![c]))
        }
        Document::Index(idx) => {
            let mut out = Vec::new();
            let mut manifests = Vec::new();
            for d in &idx.manifests {
                if is_attestation(d) {
                    progress.note(&format!("skipping attestation manifest {}", d.digest));
                    continue;
                }
                if !matches!(
                    d.media_type.as_str(),
                    media::OCI_MANIFEST | media::DOCKER_MANIFEST
                ) {
                    progress.note(&format!("skipping {} ({})", d.digest, d.media_type));
                    continue;
                }
                let (b, mt) = src.get_manifest(&d.digest)?;
                let Document::Manifest(m) =
                    oci::parse_document(&b, mt.as_deref().or(Some(&d.media_type)))?
                else {
                    bail!("{}: an index inside an index is not supported", d.digest);
                };
                if let Some(p) = &d.platform {
                    progress.note(&format!("platform {}/{}", p.os, p.architecture));
                }
                let c = convert_manifest(src, &m, dst, None, opts, progress)?;
                let mut desc = c.manifest.clone();
                desc.platform = d.platform.clone();
                desc.annotations = d.annotations.clone();
                manifests.push(desc);
                out.push(c);
            }
            if manifests.is_empty() {
                bail!("the index lists no image manifest to convert");
            }
            let oci_types = opts.oci || idx.media_type.as_deref() != Some(media::DOCKER_INDEX);
            let index_mt = if oci_types {
                media::OCI_INDEX
            } else {
                media::DOCKER_INDEX
            };
            let new = Index {
                schema_version: 2,
                media_type: Some(index_mt.into()),
                manifests,
                annotations: idx.annotations.clone(),
            };
            let b = serde_json::to_vec(&new)?;
            dst.put_manifest(tag, index_mt, &b)?;
            Ok((
                Descriptor {
                    media_type: index_mt.into(),
                    digest: oci::sha256_digest(&b),
                    size: b.len() as u64,
                    urls: None,
                    annotations: None,
                    platform: None,
                    artifact_type: None,
                },
                out,
            ))
        }
    }
}

/// An attestation manifest of an index (BuildKit's provenance/SBOM), which describes the
/// source's layers and is not converted.
pub(crate) fn is_attestation(d: &Descriptor) -> bool {
    d.annotation("vnd.docker.reference.type") == Some("attestation-manifest")
        || d.platform
            .as_ref()
            .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
}

fn now() -> i64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&t: &i64| t > 0)
        .unwrap_or(REPRODUCIBLE_TIME)
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
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
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

/// The applier's end of the decompression thread's channel.
struct Pipe {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    n: u64,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
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

/// Downloads a blob to `path`, checking size and digest.
pub(crate) fn download(
    src: &dyn Store,
    d: &Descriptor,
    path: &Path,
    progress: &dyn Progress,
    i: usize,
) -> Result<()> {
    oci::check_digest(&d.digest)?;
    let f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    struct W<'a> {
        f: std::io::BufWriter<File>,
        h: Sha256,
        n: u64,
        cap: u64,
        p: &'a dyn Progress,
        i: usize,
    }
    impl Write for W<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.n + b.len() as u64 > self.cap {
                return Err(std::io::Error::other(
                    "the blob is longer than its descriptor says",
                ));
            }
            self.f.write_all(b)?;
            self.h.update(b);
            self.n += b.len() as u64;
            self.p.bytes(self.i, Phase::Download, self.n);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.f.flush()
        }
    }
    let mut w = W {
        f: std::io::BufWriter::with_capacity(1 << 20, f),
        h: Sha256::new(),
        n: 0,
        cap: d.size,
        p: progress,
        i,
    };
    src.get_blob(&d.digest, &mut w)
        .with_context(|| format!("download layer {}", d.digest))?;
    w.flush()?;
    let got = format!("sha256:{}", hex::encode(w.h.finalize()));
    if w.n != d.size || got != d.digest {
        bail!(
            "layer {} from {}: got {} bytes with digest {got}, the manifest says {} bytes",
            d.digest,
            src.describe(),
            w.n,
            d.size
        );
    }
    Ok(())
}

pub(crate) fn decompressed(path: &Path, c: LayerCompression) -> Result<Box<dyn Read>> {
    let f = BufReader::with_capacity(1 << 20, File::open(path)?);
    Ok(match c {
        LayerCompression::None => Box::new(f),
        LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        LayerCompression::Zstd => Box::new(zstd::stream::read::Decoder::new(f)?),
    })
}

fn work_dir(opts: &Options) -> Result<tempfile::TempDir> {
    Ok(match &opts.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::Builder::new().prefix("obdconv-").tempdir_in(d)?
        }
        None => tempfile::Builder::new().prefix("obdconv-").tempdir()?,
    })
}

/// Converts one image manifest.
pub fn convert_manifest(
    src: &dyn Store,
    m: &Manifest,
    dst: &dyn Store,
    tag: Option<&str>,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Converted> {
    let started = Instant::now();
    let config_bytes = read_small_blob(src, &m.config, 8 << 20).context("image config")?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&config_bytes).context("image config is not JSON")?;
    let diff_ids = oci::diff_ids(&config)?;
    if diff_ids.len() != m.layers.len() {
        bail!(
            "the manifest has {} layers and the config {} diff IDs",
            m.layers.len(),
            diff_ids.len()
        );
    }
    if m.layers.is_empty() {
        bail!("the image has no layers");
    }
    let mut kinds = Vec::new();
    for l in &m.layers {
        if l.annotation(annotation::BLOB_DIGEST).is_some() {
            bail!("layer {} is already an overlaybd layer", l.digest);
        }
        let c = oci::layer_compression(&l.media_type).with_context(|| {
            format!(
                "layer {}: unsupported media type {:?}",
                l.digest, l.media_type
            )
        })?;
        kinds.push(c);
    }
    let chains = oci::chain_ids(&diff_ids);
    let work = work_dir(opts)?;
    let n = m.layers.len();
    let keys: Vec<String> = chains
        .iter()
        .map(|c| dedup::key(c, &opts.compression, opts.vsize))
        .collect();
    let mut reuse: Vec<Option<dedup::Record>> = vec![None; n];
    if let Some(db) = &opts.dedup {
        for i in 0..n {
            if let Some(rec) = db.get(&keys[i])? {
                if available(dst, &rec)? {
                    reuse[i] = Some(rec);
                }
            }
        }
    }
    // Layers above the last one to convert need nothing; reused layers below it are loaded
    // onto the work disk from their converted blobs.
    let last_new = (0..n).rev().find(|&i| reuse[i].is_none());
    let needs_load = |i: usize| reuse[i].is_some() && last_new.is_some_and(|l| i < l);
    progress.start(n, &m.layers.iter().map(|l| l.size).collect::<Vec<_>>());

    let mut reports: Vec<LayerReport> = Vec::with_capacity(n);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<()> {
        // Downloads: a pool of `concurrency` threads, results by layer.
        let (tx, rx) = mpsc::channel::<(usize, Result<PathBuf>)>();
        for _ in 0..opts.concurrency.clamp(1, n) {
            let tx = tx.clone();
            let next = &next;
            let reuse = &reuse;
            let needs_load = &needs_load;
            let work = work.path();
            s.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let path = work.join(format!("src-{i:04}"));
                let r = match &reuse[i] {
                    None => {
                        progress.bytes(i, Phase::Download, 0);
                        let r = download(src, &m.layers[i], &path, progress, i).map(|()| path);
                        progress.done(i, Phase::Download);
                        r
                    }
                    Some(rec) if needs_load(i) => {
                        let d = Descriptor {
                            media_type: media::OCI_LAYER.into(),
                            digest: rec.digest.clone(),
                            size: rec.size,
                            urls: None,
                            annotations: None,
                            platform: None,
                            artifact_type: None,
                        };
                        download(dst, &d, &path, progress, i).map(|()| path)
                    }
                    Some(_) => Ok(path),
                };
                if tx.send((i, r)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        // Uploads: one thread, in order, while the next layer applies.
        let (up_tx, up_rx) = mpsc::channel::<(usize, PathBuf, String, u64)>();
        let uploader = s.spawn(move || -> Result<()> {
            for (i, path, digest, size) in up_rx {
                progress.bytes(i, Phase::Upload, 0);
                dst.put_blob_file(&digest, size, &path)
                    .with_context(|| format!("upload layer {i} ({digest})"))?;
                progress.bytes(i, Phase::Upload, size);
                progress.done(i, Phase::Upload);
                let _ = std::fs::remove_file(&path);
            }
            Ok(())
        });
        // Commits: one thread, in order, from a snapshot of each layer's blocks, while the
        // next layer applies; each finished layer goes on to the uploader.
        struct Job {
            i: usize,
            raw: PathBuf,
            maps: Vec<overlaybd_lsmt::Mapping>,
            uuid: overlaybd_lsmt::Uuid,
            parent: Option<overlaybd_lsmt::Uuid>,
        }
        let (commit_tx, commit_rx) = mpsc::channel::<Job>();
        let vsize = opts.vsize;
        let z = opts.compression;
        let wdir = work.path().to_path_buf();
        let committer = s.spawn(move || -> Result<Vec<(usize, layer::LayerBlob)>> {
            let mut done = Vec::new();
            for job in commit_rx {
                let i = job.i;
                progress.bytes(i, Phase::Commit, 0);
                let out = wdir.join(format!("out-{i:04}"));
                let f = File::open(&job.raw)?;
                let blob =
                    layer::commit_extents(&job.maps, &f, vsize, job.uuid, job.parent, &z, &out)
                        .with_context(|| format!("layer {i}: commit"))?;
                let _ = std::fs::remove_file(&job.raw);
                progress.bytes(i, Phase::Commit, blob.size);
                progress.done(i, Phase::Commit);
                if up_tx
                    .send((i, out, blob.digest.clone(), blob.size))
                    .is_err()
                {
                    break;
                }
                done.push((i, blob));
            }
            Ok(done)
        });

        // On an error, no new downloads start; queued commits and uploads finish.
        let result = (|| -> Result<()> {
            let mut ready: BTreeMap<usize, PathBuf> = BTreeMap::new();
            let mut disk = WorkDisk::create(&work.path().join("disk"), opts.vsize)
                .context("create the work disk")?;
            let t = now();
            let mut parent = None;
            for i in 0..n {
                while !ready.contains_key(&i) {
                    let (k, r) = rx.recv().context("a download thread died")?;
                    ready.insert(k, r?);
                }
                let src_path = ready.remove(&i).expect("present");
                let uuid = layer::uuid_from_chain_id(&chains[i])?;
                if let Some(rec) = &reuse[i] {
                    if needs_load(i) {
                        load_layer(&mut disk, &src_path).with_context(|| {
                            format!("layer {i}: load the reused {}", rec.digest)
                        })?;
                        let _ = std::fs::remove_file(&src_path);
                    }
                    progress.note(&format!("layer {}/{n}: reused {}", i + 1, rec.digest));
                    parent = Some(uuid);
                    reports.push(LayerReport {
                        source_digest: m.layers[i].digest.clone(),
                        source_size: m.layers[i].size,
                        diff_id: diff_ids[i].clone(),
                        chain_id: chains[i].clone(),
                        blob: layer::LayerBlob {
                            digest: rec.digest.clone(),
                            size: rec.size,
                            integrity_root: rec.integrity_root.clone(),
                            extents: 0,
                            data_bytes: 0,
                        },
                        apply: ApplyStats::default(),
                        reused: true,
                    });
                    continue;
                }
                if i == 0 {
                    let fs_uuid = uuid.to_string().to_lowercase();
                    crate::mkfs::mkfs(disk.path(), &fs_uuid, t, work.path())?;
                    disk.mark_file_extents()?;
                }
                // Apply, hashing the tar to check the diff ID (an uncompressed layer's diff ID is
                // its digest, checked by the download).
                progress.bytes(i, Phase::Apply, 0);
                let plain = kinds[i] == LayerCompression::None;
                if plain && m.layers[i].digest != diff_ids[i] {
                    bail!(
                        "layer {i} ({}) is an uncompressed tar, but the config gives it diff ID {}",
                        m.layers[i].digest,
                        diff_ids[i]
                    );
                }
                // Decompression and hashing run in their own thread, ahead of the applier.
                let (chunks_tx, chunks_rx) = mpsc::sync_channel::<std::io::Result<Vec<u8>>>(16);
                let reader_path = src_path.clone();
                let kind = kinds[i];
                let inflater = s.spawn(move || -> Result<Option<String>> {
                    let mut tar = Hashing {
                        inner: decompressed(&reader_path, kind)?,
                        h: (!plain).then(Sha256::new),
                        n: 0,
                        reported: 0,
                        progress,
                        i,
                    };
                    loop {
                        let mut buf = vec![0u8; 1 << 20];
                        let mut got = 0;
                        let r = loop {
                            match tar.read(&mut buf[got..]) {
                                Ok(0) => break Ok(()),
                                Ok(k) => {
                                    got += k;
                                    if got == buf.len() {
                                        break Ok(());
                                    }
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                Err(e) => break Err(e),
                            }
                        };
                        if let Err(e) = r {
                            let msg = e.to_string();
                            let _ = chunks_tx.send(Err(e));
                            bail!("decompress: {msg}");
                        }
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
                let mut tar = Pipe {
                    rx: chunks_rx,
                    cur: Vec::new(),
                    pos: 0,
                    n: 0,
                };
                let stats = {
                    let mut fs = Fs::open(&mut disk, true, t)
                        .with_context(|| format!("layer {i}: open the filesystem"))?;
                    let r = Applier::new(&mut fs)
                        .apply(&mut tar)
                        .with_context(|| format!("layer {i} ({})", m.layers[i].digest));
                    let stats = r?;
                    fs.close()
                        .with_context(|| format!("layer {i}: write the filesystem back"))?;
                    stats
                };
                std::io::copy(&mut tar, &mut std::io::sink())
                    .with_context(|| format!("layer {i}: read the rest of the tar"))?;
                drop(tar.rx);
                let digest = inflater
                    .join()
                    .map_err(|_| anyhow::anyhow!("the decompression thread panicked"))?
                    .with_context(|| format!("layer {i} ({})", m.layers[i].digest))?;
                if let Some(got) = digest {
                    if got != diff_ids[i] {
                        bail!(
                            "layer {i} ({}): the uncompressed tar has digest {got}, the config says {}",
                            m.layers[i].digest,
                            diff_ids[i]
                        );
                    }
                }
                progress.bytes(i, Phase::Apply, tar.n);
                progress.done(i, Phase::Apply);
                let _ = std::fs::remove_file(&src_path);
                let maps = disk.take_dirty();
                let raw = work.path().join(format!("raw-{i:04}"));
                let maps = layer::snapshot(&disk, &maps, &raw)
                    .with_context(|| format!("layer {i}: snapshot its blocks"))?;
                let job = Job {
                    i,
                    raw,
                    maps,
                    uuid,
                    parent,
                };
                parent = Some(uuid);
                if commit_tx.send(job).is_err() {
                    break;
                }
                reports.push(LayerReport {
                    source_digest: m.layers[i].digest.clone(),
                    source_size: m.layers[i].size,
                    diff_id: diff_ids[i].clone(),
                    chain_id: chains[i].clone(),
                    blob: layer::LayerBlob::default(),
                    apply: stats,
                    reused: false,
                });
            }
            Ok(())
        })();
        if result.is_err() {
            next.store(n, std::sync::atomic::Ordering::Relaxed);
        }
        drop(commit_tx);
        let committed = committer
            .join()
            .map_err(|_| anyhow::anyhow!("the commit thread panicked"))?;
        uploader
            .join()
            .map_err(|_| anyhow::anyhow!("the upload thread panicked"))??;
        result?;
        for (i, blob) in committed? {
            reports[i].blob = blob;
        }
        Ok(())
    })?;
    if let Some(db) = &opts.dedup {
        for (r, k) in reports.iter().zip(&keys) {
            if !r.reused {
                db.put(
                    k,
                    &r.blob.digest,
                    r.blob.size,
                    &r.blob.integrity_root,
                    &dst.describe(),
                )?;
            }
        }
    }

    // Config: the new diff IDs (each layer blob is an uncompressed tar: its digest).
    let oci_types = opts.oci || m.media_type.as_deref() != Some(media::DOCKER_MANIFEST);
    config["rootfs"]["diff_ids"] = serde_json::Value::Array(
        reports
            .iter()
            .map(|r| serde_json::Value::String(r.blob.digest.clone()))
            .collect(),
    );
    let config_out = serde_json::to_vec(&config)?;
    let config_digest = oci::sha256_digest(&config_out);
    dst.put_blob(&config_digest, &config_out)
        .context("upload the config")?;
    let (manifest_mt, config_mt, layer_mt) = if oci_types {
        (media::OCI_MANIFEST, media::OCI_CONFIG, media::OCI_LAYER)
    } else {
        (
            media::DOCKER_MANIFEST,
            media::DOCKER_CONFIG,
            media::DOCKER_LAYER,
        )
    };
    let layers = reports
        .iter()
        .map(|r| Descriptor {
            media_type: layer_mt.into(),
            digest: r.blob.digest.clone(),
            size: r.blob.size,
            urls: None,
            annotations: Some(
                [
                    (annotation::VERSION, annotation::VERSION_VALUE.to_string()),
                    (annotation::BLOB_DIGEST, r.blob.digest.clone()),
                    (annotation::BLOB_SIZE, r.blob.size.to_string()),
                    (annotation::FS_TYPE, "ext4".to_string()),
                    (annotation::INTEGRITY_ROOT, r.blob.integrity_root.clone()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            ),
            platform: None,
            artifact_type: None,
        })
        .collect();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(manifest_mt.into()),
        artifact_type: None,
        config: Descriptor {
            media_type: config_mt.into(),
            digest: config_digest,
            size: config_out.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
        },
        layers,
        subject: None,
        annotations: m.annotations.clone(),
    };
    let mb = serde_json::to_vec(&manifest)?;
    dst.put_manifest(tag, manifest_mt, &mb)
        .context("upload the manifest")?;
    let desc = Descriptor {
        media_type: manifest_mt.into(),
        digest: oci::sha256_digest(&mb),
        size: mb.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
        artifact_type: None,
    };
    progress.finish(&desc.digest, started.elapsed());
    Ok(Converted {
        manifest: desc,
        layers: reports,
    })
}
