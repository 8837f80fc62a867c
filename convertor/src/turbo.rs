//! TurboOCI conversion (`convert --turbo-oci`): a *meta image* beside the unmodified source
//! image. Per source layer, its tar is applied to the work disk with file data declared, not
//! copied (each file's blocks are allocated and mapped to the file's offset in the layer's
//! uncompressed tar); the blocks written (ext4 metadata) and the remote mappings become a
//! TurboOCI meta layer; for a gzip layer the gzip index is written while the layer is inflated,
//! in the same pass. Each meta blob is a gzip'ed tar of `ext4.fs.meta`, `.turbo.ociv1` and
//! `gzip.meta`, and ours, `tar.blake3` (BLAKE3 digests of the tar in chunks, rooted in an
//! annotation), with overlaybd's annotations (`docs/format/turbooci.md`,
//! `../shared/reference/turbooci.md` §1.2). The source layers are copied into the destination
//! repository when they are not there yet, since the meta layers fetch them from it. A zstd
//! layer, which no gzip index can read in place, is converted natively among the meta layers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use overlaybd_turbooci::{digests, ChunkHasher, IndexOptions, IndexSummary, Indexing};
use sha2::{Digest, Sha256};

use crate::apply::{Applier, ApplyStats};
use crate::convert::pipeline::{download_source, downloaded, read_chunk, spawn_downloads};
use crate::convert::{self, Converted, LayerReport, Options};
use crate::disk::WorkDisk;
use crate::error::{At, Error, Result};
use crate::extfs::Fs;
use crate::layer::{self, LayerBlob};
use crate::oci::{self, annotation, media, turbo_oci_file, Descriptor, LayerCompression, Manifest};
use crate::progress::{Phase, Progress};
use crate::store::Store;

/// How a source layer blob is compressed, by its first bytes (as overlaybd's convertor tells).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Gzip,
    /// No random access into it (overlaybd refuses such layers): converted natively, so the
    /// image mixes meta layers and native layers.
    Zstd,
}

fn kind_of(path: &Path, digest: &str, declared: LayerCompression) -> Result<Kind> {
    let mut head = [0u8; 4];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Error::io("read", path, e))?;
    let kind = match &head[..n] {
        [0x1f, 0x8b, ..] => Kind::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Kind::Zstd,
        _ => Kind::Plain,
    };
    match (declared, kind) {
        (LayerCompression::Gzip, Kind::Gzip)
        | (LayerCompression::None, Kind::Plain)
        | (LayerCompression::Zstd, Kind::Zstd) => Ok(kind),
        (d, k) => Err(Error::Invalid(format!(
            "layer {digest}: its media type says {d:?}, the blob is {k:?}"
        ))),
    }
}

/// What applying a layer gives: its stats, its gzip index's summary, its tar's digests (empty
/// for a zstd layer, converted natively).
struct Applied {
    stats: ApplyStats,
    index: Option<IndexSummary>,
    digests: ChunkHasher,
}

/// Pieces the uncompressed tar travels in between the threads.
const PIECE: usize = 1 << 20;

/// Reads `r` to its end in pieces into `tx`; stops early (without error) when the receiver is
/// gone, and then says so.
fn pump(mut r: &mut dyn Read, tx: &SyncSender<Vec<u8>>, path: &Path) -> Result<bool> {
    loop {
        let mut buf = vec![0u8; PIECE];
        let n = read_chunk(&mut r, &mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            return Ok(true);
        }
        buf.truncate(n);
        if tx.send(buf).is_err() {
            return Ok(false);
        }
    }
}

/// The first stage: the layer's uncompressed tar; a gzip layer is inflated and its index
/// written as it goes.
fn produce(
    path: &Path,
    kind: Kind,
    index: &Path,
    tx: SyncSender<Vec<u8>>,
) -> Result<Option<IndexSummary>> {
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut f = BufReader::with_capacity(1 << 20, f);
    match kind {
        Kind::Plain => {
            pump(&mut f, &tx, path)?;
            return Ok(None);
        }
        Kind::Zstd => {
            let mut z = convert::decompressed(path, LayerCompression::Zstd)?;
            pump(&mut z, &tx, path)?;
            return Ok(None);
        }
        Kind::Gzip => {}
    }
    let out = File::create(index).map_err(|e| Error::io("create", index, e))?;
    let mut ix = Indexing::new(f, BufWriter::new(out), IndexOptions::default())?;
    if !pump(&mut ix, &tx, path)? {
        return Ok(None);
    }
    drop(tx);
    let (w, s) = ix.finish()?;
    w.into_inner()
        .map_err(|e| Error::io("write", index, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io("write", index, e))?;
    if s.members > 1 {
        return Err(Error::Unsupported(format!(
            "the layer is a gzip stream of {} members: overlaybd's gzip index covers only the \
             first, so its reader would see zeros past it; convert the image natively instead",
            s.members
        )));
    }
    Ok(Some(s))
}

/// The applier's end of the pipeline.
struct Pieces {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(v) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The second stage: SHA-256 (the diff ID) and, when `chunked` (a layer read in place), the
/// BLAKE3 chunk digests of the tar.
fn hash(
    rx: Receiver<Vec<u8>>,
    tx: SyncSender<Vec<u8>>,
    chunked: bool,
) -> Option<(String, ChunkHasher)> {
    let (mut sha, mut chunks) = (Sha256::new(), ChunkHasher::default());
    for piece in rx {
        sha.update(&piece);
        if chunked {
            chunks.update(&piece);
        }
        if tx.send(piece).is_err() {
            return None;
        }
    }
    Some((format!("sha256:{}", hex::encode(sha.finalize())), chunks))
}

/// Applies a layer's tar (file data mapped, not copied; copied for a zstd layer, which is
/// converted natively), checks its diff ID, and writes its gzip index to `index` when it is
/// gzip'ed. Three threads: inflating and indexing, hashing, applying (a layer's time is the
/// slowest of them, not their sum).
fn apply_layer(
    disk: &mut WorkDisk,
    path: &Path,
    kind: Kind,
    index: &Path,
    diff_id: &str,
    t: i64,
) -> Result<Applied> {
    let (tx1, rx1) = sync_channel::<Vec<u8>>(4);
    let (tx2, rx2) = sync_channel::<Vec<u8>>(4);
    std::thread::scope(|s| {
        let producer = s.spawn(move || produce(path, kind, index, tx1));
        let hasher = s.spawn(move || hash(rx1, tx2, kind != Kind::Zstd));
        let mut tar = Pieces {
            rx: rx2,
            cur: Vec::new(),
            pos: 0,
        };
        let applied = (|| -> Result<ApplyStats> {
            let mut fs = Fs::open(disk, true, t).at(|| "open the filesystem".into())?;
            let mut applier = Applier::new(&mut fs);
            if kind != Kind::Zstd {
                applier = applier.remote_data();
            }
            let stats = applier.apply(&mut tar)?;
            fs.close().at(|| "write the filesystem back".into())?;
            std::io::copy(&mut tar, &mut std::io::sink())
                .map_err(|e| Error::io("read the rest of", path, e))?;
            Ok(stats)
        })();
        drop(tar);
        let produced = producer
            .join()
            .map_err(|_| Error::Panicked("decompression"))?;
        let hashed = hasher.join().map_err(|_| Error::Panicked("hashing"))?;
        // The stream's own error first: the applier's "unexpected end" follows from it.
        let index = produced?;
        let stats = applied?;
        let (got, digests) = hashed.ok_or(Error::Panicked("hashing"))?;
        if got != diff_id {
            return Err(Error::Invalid(format!(
                "the uncompressed tar has digest {got}, the config says {diff_id}"
            )));
        }
        Ok(Applied {
            stats,
            index,
            digests,
        })
    })
}

/// Whether an index has far fewer checkpoints than one per span (zlib-ng's level 1 writes one
/// deflate block for a whole blob, and a checkpoint can only be at a block boundary).
fn few_checkpoints(s: &IndexSummary) -> bool {
    let span = overlaybd_turbooci::gzindex::DEFAULT_SPAN as u64;
    s.first_member_size > 8 * span && s.checkpoints * span * 4 < s.first_member_size
}

/// One file of a meta blob's tar: only name, mode, size and type set (as overlaybd's
/// convertor writes them), so the same inputs give the same bytes.
fn append(tar: &mut tar::Builder<impl Write>, name: &str, path: Option<&Path>) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(0);
    let size = match path {
        Some(p) => std::fs::metadata(p)
            .map_err(|e| Error::io("stat", p, e))?
            .len(),
        None => 0,
    };
    h.set_size(size);
    let data: Box<dyn Read> = match path {
        Some(p) => Box::new(File::open(p).map_err(|e| Error::io("open", p, e))?),
        None => Box::new(std::io::empty()),
    };
    tar.append_data(&mut h, name, data)
        .map_err(|e| Error::io("write the meta blob entry", Path::new(name), e))
}

/// The meta blob `turboOCIv1.tar.gz` at `out`: returns its digest and size and the diff ID
/// (digest of the uncompressed tar).
fn meta_blob(
    meta: &Path,
    index: Option<&Path>,
    digests: &Path,
    out: &Path,
) -> Result<(String, u64, String)> {
    struct Tee<W> {
        w: W,
        h: Sha256,
    }
    impl<W: Write> Write for Tee<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.w.write(b)?;
            self.h.update(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.w.flush()
        }
    }
    let f = File::create(out).map_err(|e| Error::io("create", out, e))?;
    let gz = flate2::GzBuilder::new().write(BufWriter::new(f), flate2::Compression::default());
    let mut tar = tar::Builder::new(Tee {
        w: gz,
        h: Sha256::new(),
    });
    append(&mut tar, turbo_oci_file::EXT4_META, Some(meta))?;
    append(&mut tar, turbo_oci_file::MARKER, None)?;
    if let Some(i) = index {
        append(&mut tar, turbo_oci_file::GZIP_INDEX, Some(i))?;
    }
    append(&mut tar, turbo_oci_file::TAR_DIGESTS, Some(digests))?;
    let tee = tar.into_inner().map_err(|e| Error::io("write", out, e))?;
    let diff_id = format!("sha256:{}", hex::encode(tee.h.finalize()));
    tee.w
        .finish()
        .and_then(|mut w| w.flush())
        .map_err(|e| Error::io("write", out, e))?;
    let (digest, size) = layer::sha256_file(out)?;
    Ok((digest, size, diff_id))
}

/// The original layer's media type as overlaybd's convertor records it: the source's family
/// (Docker or OCI), `+gzip` iff the blob is gzip'ed.
fn target_media_type(source: &str, kind: Kind) -> &'static str {
    let docker = source.starts_with("application/vnd.docker.");
    match (docker, kind) {
        (true, Kind::Gzip) => media::DOCKER_LAYER_GZIP,
        (true, Kind::Plain) => media::DOCKER_LAYER,
        (false, Kind::Gzip) => media::OCI_LAYER_GZIP,
        (false, Kind::Plain) => media::OCI_LAYER,
        // Not a target (a zstd layer is converted natively); Docker has no zstd type.
        (_, Kind::Zstd) => media::OCI_LAYER_ZSTD,
    }
}

fn meta_descriptor(
    digest: &str,
    size: u64,
    media_type: &str,
    source: &Descriptor,
    kind: Kind,
    integrity_root: &str,
    tar_digests: &str,
) -> Descriptor {
    let a = [
        (
            annotation::VERSION,
            annotation::TURBO_OCI_VERSION_VALUE.to_string(),
        ),
        (annotation::BLOB_DIGEST, digest.to_string()),
        (annotation::BLOB_SIZE, size.to_string()),
        (annotation::TURBO_OCI_TARGET_DIGEST, source.digest.clone()),
        (
            annotation::TURBO_OCI_TARGET_MEDIA_TYPE,
            target_media_type(&source.media_type, kind).to_string(),
        ),
        (annotation::INTEGRITY_ROOT, integrity_root.to_string()),
        (annotation::TURBO_OCI_TAR_DIGESTS, tar_digests.to_string()),
    ];
    Descriptor {
        media_type: media_type.into(),
        digest: digest.into(),
        size,
        urls: None,
        annotations: Some(a.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        platform: None,
        artifact_type: None,
    }
}

/// Makes sure the destination has the original layer (the meta layer reads it from there):
/// already there, mounted from the source repository, or uploaded from the downloaded copy.
fn ensure_target(src: &dyn Store, dst: &dyn Store, l: &Descriptor, raw: &Path) -> Result<bool> {
    if dst.has_blob(&l.digest)? || dst.try_mount(&l.digest, &src.describe())? {
        return Ok(false);
    }
    dst.put_blob_file(&l.digest, l.size, raw)
        .at(|| format!("copy the original layer {} to {}", l.digest, dst.describe()))
}

/// OCI media types when asked, for a referrer (only OCI manifests have a `subject`), or when
/// the source has them.
fn oci_types(opts: &Options, m: &Manifest) -> bool {
    opts.oci || opts.referrer || m.media_type.as_deref() != Some(media::DOCKER_MANIFEST)
}

/// What one converted layer gives the manifest.
struct Done {
    report: LayerReport,
    desc: Descriptor,
    diff_id: String,
}

#[allow(clippy::too_many_arguments)]
fn convert_layer(
    src: &dyn Store,
    dst: &dyn Store,
    m: &Manifest,
    i: usize,
    raw: PathBuf,
    kinds: &[LayerCompression],
    disk: &mut WorkDisk,
    work: &Path,
    diff_ids: &[String],
    chains: &[String],
    parent: Option<overlaybd_lsmt::Uuid>,
    opts: &Options,
    progress: &dyn Progress,
    t: i64,
) -> Result<Done> {
    let l = &m.layers[i];
    let file = |what: &str| -> PathBuf { work.join(format!("{what}-{i:04}")) };
    let kind = kind_of(&raw, &l.digest, kinds[i])?;
    let uuid = layer::uuid_from_chain_id(&chains[i])?;
    if i == 0 {
        let fs_uuid = uuid.to_string().to_lowercase();
        crate::mkfs::mkfs(disk.path(), &fs_uuid, t, work)?;
        disk.mark_file_extents()
            .map_err(|e| Error::io("find the data of", disk.path(), e))?;
    }
    progress.bytes(i, Phase::Apply, 0);
    let index = file("gzip.meta");
    let applied = apply_layer(disk, &raw, kind, &index, &diff_ids[i], t)
        .at(|| format!("layer {i} ({})", l.digest))?;
    if kind == Kind::Zstd {
        let (blob, desc) = native_layer(dst, m, i, &raw, disk, work, uuid, parent, opts, progress)?;
        return Ok(Done {
            diff_id: blob.digest.clone(),
            desc,
            report: LayerReport {
                source_digest: l.digest.clone(),
                source_size: l.size,
                diff_id: diff_ids[i].clone(),
                chain_id: chains[i].clone(),
                blob,
                apply: applied.stats,
                reused: false,
            },
        });
    }
    let summary = applied.index;
    let index_bytes = match &summary {
        Some(_) => Some(std::fs::read(&index).map_err(|e| Error::io("read", &index, e))?),
        None => None,
    };
    let table = applied.digests.finish(index_bytes.as_deref()).encode();
    let tar_digests = digests::root_of(&table);
    let table_path = file("tar.blake3");
    std::fs::write(&table_path, &table).map_err(|e| Error::io("write", &table_path, e))?;
    progress.done(i, Phase::Apply);
    if let Some(s) = summary.as_ref().filter(|s| few_checkpoints(s)) {
        progress.note(&format!(
            "layer {}: its deflate blocks are long ({} checkpoints for {} MiB): a read inflates \
             up to {} MiB first; recompressing the source with gzip or Go's compress/gzip \
             gives one checkpoint per MiB",
            i + 1,
            s.checkpoints,
            s.first_member_size >> 20,
            (s.first_member_size / s.checkpoints.max(1)) >> 20
        ));
    }
    progress.bytes(i, Phase::Commit, 0);
    let meta = file("meta");
    let blob = commit(disk, work, i, uuid, parent, opts, &meta, true)?;
    let tgz = file("turboOCIv1.tar.gz");
    let (digest, size, diff_id) = meta_blob(
        &meta,
        summary.as_ref().map(|_| index.as_path()),
        &table_path,
        &tgz,
    )?;
    progress.done(i, Phase::Commit);
    progress.bytes(i, Phase::Upload, 0);
    let copied = ensure_target(src, dst, l, &raw)?;
    if copied {
        progress.note(&format!(
            "layer {}: copied the original layer {} to the destination",
            i + 1,
            l.digest
        ));
    }
    dst.put_blob_file(&digest, size, &tgz)
        .at(|| format!("upload meta layer {i} ({digest})"))?;
    progress.done(i, Phase::Upload);
    for p in [&raw, &meta, &tgz, &index, &table_path] {
        let _ = std::fs::remove_file(p);
    }
    let layer_mt = if oci_types(opts, m) {
        media::OCI_LAYER_GZIP
    } else {
        media::DOCKER_LAYER_GZIP
    };
    Ok(Done {
        desc: meta_descriptor(
            &digest,
            size,
            layer_mt,
            l,
            kind,
            &blob.integrity_root,
            &tar_digests,
        ),
        report: LayerReport {
            source_digest: l.digest.clone(),
            source_size: l.size,
            diff_id: diff_ids[i].clone(),
            chain_id: chains[i].clone(),
            blob: LayerBlob {
                digest,
                size,
                ..blob
            },
            apply: applied.stats,
            reused: false,
        },
        diff_id,
    })
}

/// The blocks layer `i` wrote on the work disk (and, for a meta layer, mapped into its tar)
/// committed to `out`: a bare ZFile meta layer (`warp`), or a native layer in overlaybd's tar
/// envelope.
#[allow(clippy::too_many_arguments)]
fn commit(
    disk: &mut WorkDisk,
    work: &Path,
    i: usize,
    uuid: overlaybd_lsmt::Uuid,
    parent: Option<overlaybd_lsmt::Uuid>,
    opts: &Options,
    out: &Path,
    warp: bool,
) -> Result<LayerBlob> {
    let snap = work.join(format!("raw-{i:04}"));
    let maps = disk.take_warp();
    let maps = layer::snapshot(disk, &maps, &snap)?;
    let snap_file = File::open(&snap).map_err(|e| Error::io("open", &snap, e))?;
    let blob = layer::commit_extents(
        &maps,
        &snap_file,
        opts.vsize,
        uuid,
        parent,
        &opts.compression,
        out,
        warp,
    )
    .at(|| format!("layer {i}: commit"));
    let _ = std::fs::remove_file(&snap);
    blob
}

/// A zstd layer of a TurboOCI image, applied to the work disk with its data: committed as a
/// native overlaybd layer (its own data, fetched lazily like any native layer), since zstd
/// offers no random access into the original. Returns the blob and its descriptor.
#[allow(clippy::too_many_arguments)]
fn native_layer(
    dst: &dyn Store,
    m: &Manifest,
    i: usize,
    raw: &Path,
    disk: &mut WorkDisk,
    work: &Path,
    uuid: overlaybd_lsmt::Uuid,
    parent: Option<overlaybd_lsmt::Uuid>,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<(LayerBlob, Descriptor)> {
    progress.done(i, Phase::Apply);
    progress.note(&format!(
        "layer {}: zstd-compressed, which TurboOCI cannot read in place (no gzip index): \
         converted natively, its data in the converted image",
        i + 1
    ));
    progress.bytes(i, Phase::Commit, 0);
    let out = work.join(format!("layer-{i:04}"));
    let blob = commit(disk, work, i, uuid, parent, opts, &out, false)?;
    progress.done(i, Phase::Commit);
    progress.bytes(i, Phase::Upload, 0);
    dst.put_blob_file(&blob.digest, blob.size, &out)
        .at(|| format!("upload layer {i} ({})", blob.digest))?;
    progress.done(i, Phase::Upload);
    for p in [raw, &out] {
        let _ = std::fs::remove_file(p);
    }
    let layer_mt = if oci_types(opts, m) {
        media::OCI_LAYER
    } else {
        media::DOCKER_LAYER
    };
    let desc = convert::layer_descriptor(&blob, layer_mt, crate::layer::FsType::Ext4);
    Ok((blob, desc))
}

/// Converts one manifest into its TurboOCI meta image.
pub(crate) fn convert_manifest(
    src: &dyn Store,
    m: &Manifest,
    source_desc: Option<&Descriptor>,
    dst: &dyn Store,
    tag: Option<&str>,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Converted> {
    let started = Instant::now();
    let (mut config, diff_ids) = convert::read_config(src, m)?;
    // Image layers only (an overlaybd or TurboOCI image is refused), with their media types.
    let kinds = convert::layer_kinds(m)?;
    let chains = oci::chain_ids(&diff_ids);
    let work = convert::work_dir(opts)?;
    progress.start(
        m.layers.len(),
        &m.layers.iter().map(|l| l.size).collect::<Vec<_>>(),
    );
    let disk_path = work.path().join("disk");
    let mut disk = WorkDisk::create(&disk_path, opts.vsize)
        .map_err(|e| Error::io("create the work disk", &disk_path, e))?;
    let t = convert::now();
    let n = m.layers.len();
    let mut done: Vec<Done> = Vec::with_capacity(n);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<()> {
        // Layers download `concurrency` at a time, ahead of the one being converted.
        let w = work.path();
        let rx = spawn_downloads(s, n, opts.concurrency, &next, move |i, tx| {
            tx.send((i, download_source(src, &m.layers[i], w, progress, i)))
                .is_ok()
        });
        let result = (|| -> Result<()> {
            let mut ready = BTreeMap::new();
            let mut parent = None;
            for i in 0..n {
                let raw = downloaded(&rx, &mut ready, i)?;
                let d = convert_layer(
                    src,
                    dst,
                    m,
                    i,
                    raw,
                    &kinds,
                    &mut disk,
                    work.path(),
                    &diff_ids,
                    &chains,
                    parent,
                    opts,
                    progress,
                    t,
                )?;
                parent = Some(layer::uuid_from_chain_id(&chains[i])?);
                done.push(d);
            }
            Ok(())
        })();
        if result.is_err() {
            next.store(n, Ordering::Relaxed);
        }
        result
    })?;
    config["rootfs"]["diff_ids"] = serde_json::Value::Array(
        done.iter()
            .map(|d| serde_json::Value::String(d.diff_id.clone()))
            .collect(),
    );
    let oci_types = oci_types(opts, m);
    let config = convert::put_config(&config, dst, oci_types)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(
            if oci_types {
                media::OCI_MANIFEST
            } else {
                media::DOCKER_MANIFEST
            }
            .into(),
        ),
        artifact_type: (opts.referrer && source_desc.is_some())
            .then(|| annotation::TURBO_OCI_ARTIFACT_TYPE.to_string()),
        config,
        layers: done.iter().map(|d| d.desc.clone()).collect(),
        subject: if opts.referrer {
            source_desc.cloned()
        } else {
            None
        },
        annotations: m.annotations.clone(),
    };
    let desc = convert::put_manifest(&manifest, dst, tag)?;
    progress.finish(&desc.digest, started.elapsed());
    Ok(Converted {
        manifest: desc,
        layers: done.into_iter().map(|d| d.report).collect(),
    })
}
