//! The conversion of one image: per manifest, download the source layers (in parallel,
//! digest-checked), apply them in order to the work disk (mkfs before layer 0), cut one
//! overlaybd layer per source layer, upload while the next layer applies, then the config and
//! manifest; an index is converted manifest by manifest. The threads of one manifest's
//! pipeline are in [`pipeline`].

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::apply::ApplyStats;
use crate::dedup::{self, DedupCache};
use crate::error::{At, Error, Result};
use crate::layer::{self, Compression};
use crate::oci::{
    self, annotation, media, Descriptor, Document, Index, LayerCompression, Manifest,
};
use crate::progress::{Phase, Progress};
use crate::store::{read_small_blob, Store};

pub(crate) mod growing;
pub(crate) mod pipeline;

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
    pub dedup: Option<std::sync::Arc<dyn DedupCache>>,
    /// Make a TurboOCI meta image (the source's layers stay as they are) instead of
    /// converting the layers (`crate::turbo`).
    pub turbo_oci: bool,
    /// TurboOCI: attach the meta image to the source manifest as an OCI 1.1 referrer
    /// (`subject`, `artifactType`).
    pub referrer: bool,
    /// The layers' filesystem.
    pub fs: layer::FsType,
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
            turbo_oci: false,
            referrer: false,
            fs: layer::FsType::Ext4,
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

/// A manifest's layers as the pipeline sees them: checked against the config, with their
/// chain IDs, dedup keys, and the records of those the dedup database lets us reuse.
#[derive(Debug)]
struct Plan<'m> {
    m: &'m Manifest,
    diff_ids: Vec<String>,
    kinds: Vec<LayerCompression>,
    chains: Vec<String>,
    keys: Vec<String>,
    reuse: Vec<Option<dedup::Record>>,
    /// The last layer to convert; layers above it need nothing.
    last_new: Option<usize>,
}

impl Plan<'_> {
    fn len(&self) -> usize {
        self.m.layers.len()
    }

    /// A reused layer below the last one to convert: loaded onto the work disk from its
    /// converted blob.
    fn needs_load(&self, i: usize) -> bool {
        self.reuse[i].is_some() && self.last_new.is_some_and(|l| i < l)
    }

    fn report(&self, i: usize, blob: layer::LayerBlob, apply: ApplyStats) -> LayerReport {
        LayerReport {
            source_digest: self.m.layers[i].digest.clone(),
            source_size: self.m.layers[i].size,
            diff_id: self.diff_ids[i].clone(),
            chain_id: self.chains[i].clone(),
            blob,
            apply,
            reused: self.reuse[i].is_some(),
        }
    }
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
        .at(|| format!("read {reference} from {}", src.describe()))?;
    let doc = oci::parse_document(&bytes, mt.as_deref())?;
    let source = descriptor(
        mt.as_deref().unwrap_or(match &doc {
            Document::Manifest(_) => media::OCI_MANIFEST,
            Document::Index(_) => media::OCI_INDEX,
        }),
        &bytes,
    );
    match doc {
        Document::Manifest(m) => {
            let c = convert_one(src, &m, &source, dst, tag, opts, progress)?;
            Ok((c.manifest.clone(), vec![c]))
        }
        Document::Index(idx) => convert_index(src, &idx, dst, tag, opts, progress),
    }
}

/// One manifest, natively or as a TurboOCI meta image.
fn convert_one(
    src: &dyn Store,
    m: &Manifest,
    source: &Descriptor,
    dst: &dyn Store,
    tag: Option<&str>,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Converted> {
    if opts.turbo_oci {
        if opts.fs != layer::FsType::Ext4 {
            return Err(Error::Unsupported(
                "TurboOCI meta layers are built as ext4 (EROFS ones: not yet)".into(),
            ));
        }
        crate::turbo::convert_manifest(src, m, Some(source), dst, tag, opts, progress)
    } else {
        convert_manifest(src, m, dst, tag, opts, progress)
    }
}

/// Converts each image manifest of an index (attestations left out) and writes the index of
/// the converted manifests, with their platforms and annotations.
fn convert_index(
    src: &dyn Store,
    idx: &Index,
    dst: &dyn Store,
    tag: Option<&str>,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<(Descriptor, Vec<Converted>)> {
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
        let Document::Manifest(m) = oci::parse_document(&b, mt.as_deref().or(Some(&d.media_type)))?
        else {
            return Err(Error::Unsupported(format!(
                "{}: an index inside an index is not supported",
                d.digest
            )));
        };
        if let Some(p) = &d.platform {
            progress.note(&format!("platform {}/{}", p.os, p.architecture));
        }
        let mut d_src = d.clone();
        d_src.platform = None;
        d_src.annotations = None;
        let c = convert_one(src, &m, &d_src, dst, None, opts, progress)?;
        let mut desc = c.manifest.clone();
        desc.platform = d.platform.clone();
        desc.annotations = d.annotations.clone();
        manifests.push(desc);
        out.push(c);
    }
    if manifests.is_empty() {
        return Err(Error::Invalid(
            "the index lists no image manifest to convert".into(),
        ));
    }
    let referrer = opts.turbo_oci && opts.referrer;
    let oci_types = referrer || opts.oci || idx.media_type.as_deref() != Some(media::DOCKER_INDEX);
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
    let b = serde_json::to_vec(&new).map_err(|e| Error::json("the index", e))?;
    dst.put_manifest(tag, index_mt, &b)?;
    Ok((descriptor(index_mt, &b), out))
}

/// The descriptor of a document.
pub(crate) fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: oci::sha256_digest(bytes),
        size: bytes.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
        artifact_type: None,
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

pub(crate) fn now() -> i64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&t: &i64| t > 0)
        .unwrap_or(REPRODUCIBLE_TIME)
}

/// Downloads a blob to `path`, checking size and digest.
pub(crate) fn download(
    src: &dyn Store,
    d: &Descriptor,
    path: &Path,
    progress: &dyn Progress,
    i: usize,
) -> Result<()> {
    download_growing(src, d, path, progress, i, None)
}

/// [`download`], telling `growing` how far the file is written (readers read behind it).
pub(crate) fn download_growing(
    src: &dyn Store,
    d: &Descriptor,
    path: &Path,
    progress: &dyn Progress,
    i: usize,
    growing: Option<&growing::Growing>,
) -> Result<()> {
    oci::check_digest(&d.digest)?;
    let f = File::create(path).map_err(|e| Error::io("create", path, e))?;
    struct W<'a> {
        f: std::io::BufWriter<File>,
        h: Sha256,
        n: u64,
        cap: u64,
        p: &'a dyn Progress,
        i: usize,
        growing: Option<&'a growing::Growing>,
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
            if let Some(g) = self.growing {
                if g.is_cancelled() {
                    return Err(std::io::Error::other(growing::CANCELLED));
                }
                // What left the buffer is in the file.
                g.written(self.n - self.f.buffer().len() as u64);
            }
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
        growing,
    };
    src.get_blob(&d.digest, &mut w)
        .at(|| format!("download layer {}", d.digest))?;
    w.flush().map_err(|e| Error::io("write", path, e))?;
    if let Some(g) = growing {
        g.written(w.n);
    }
    let got = format!("sha256:{}", hex::encode(w.h.finalize()));
    if w.n != d.size || got != d.digest {
        return Err(Error::Invalid(format!(
            "layer {} from {}: got {} bytes with digest {got}, the manifest says {} bytes",
            d.digest,
            src.describe(),
            w.n,
            d.size
        )));
    }
    Ok(())
}

pub(crate) fn decompressed(path: &Path, c: LayerCompression) -> Result<Box<dyn Read>> {
    decompressed_checked(path, c, None)
}

/// [`decompressed`], checking the compressed bytes against `check` (digest and size) as they
/// are read: the read that reaches their end fails when they do not match. For a blob read
/// in place (an OCI layout's) rather than downloaded, which checks as it copies.
pub(crate) fn decompressed_checked(
    path: &Path,
    c: LayerCompression,
    check: Option<(String, u64)>,
) -> Result<Box<dyn Read>> {
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    decompress(Box::new(f), path, c, check)
}

/// [`decompressed_checked`] of the blob `f` reads (`path` names it in messages).
pub(crate) fn decompress(
    f: Box<dyn Read>,
    path: &Path,
    c: LayerCompression,
    check: Option<(String, u64)>,
) -> Result<Box<dyn Read>> {
    let f: Box<dyn Read> = match check {
        Some((digest, size)) => Box::new(Checked {
            inner: f,
            h: Sha256::new(),
            n: 0,
            digest,
            size,
        }),
        None => Box::new(f),
    };
    let f = BufReader::with_capacity(1 << 20, f);
    Ok(match c {
        LayerCompression::None => Box::new(f),
        LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        LayerCompression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(f).map_err(|e| Error::io("decompress", path, e))?,
        ),
    })
}

/// A reader that hashes what it reads and, at the end, compares it with a descriptor.
struct Checked<R> {
    inner: R,
    h: Sha256,
    n: u64,
    digest: String,
    size: u64,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.h.update(&buf[..k]);
        self.n += k as u64;
        if self.n > self.size || (k == 0 && !buf.is_empty()) {
            let got = format!("sha256:{}", hex::encode(self.h.clone().finalize()));
            if self.n != self.size || got != self.digest {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the blob does not match its descriptor ({} bytes with digest {got}, \
                         expected {} bytes with digest {})",
                        self.n, self.size, self.digest
                    ),
                ));
            }
        }
        Ok(k)
    }
}

pub(crate) fn work_dir(opts: &Options) -> Result<tempfile::TempDir> {
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("obdconv-");
        b
    };
    match &opts.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
            builder()
                .tempdir_in(d)
                .map_err(|e| Error::io("create a directory in", d, e))
        }
        None => builder()
            .tempdir()
            .map_err(|e| Error::io("create a directory in", std::env::temp_dir(), e)),
    }
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
    // The dedup key's filesystem: EROFS layers are diffs against the image mkfs.erofs built
    // below them, so they are reused only with the same erofs-utils.
    let fs = match opts.fs {
        layer::FsType::Ext4 => "ext4".to_string(),
        layer::FsType::Erofs => format!("erofs/{}", crate::erofs::check_tool()?),
    };
    let (mut config, diff_ids) = read_config(src, m)?;
    let kinds = layer_kinds(m)?;
    let work = work_dir(opts)?;
    let plan = plan(m, diff_ids, kinds, dst, opts, &fs)?;
    progress.start(
        plan.len(),
        &m.layers.iter().map(|l| l.size).collect::<Vec<_>>(),
    );
    let reports = pipeline::run(pipeline::Ctx {
        src,
        dst,
        plan: &plan,
        opts,
        progress,
        work: work.path(),
    })?;
    record_dedup(opts, &plan, &reports, dst);
    let oci_types = opts.oci || m.media_type.as_deref() != Some(media::DOCKER_MANIFEST);
    let config = write_config(&mut config, &reports, dst, oci_types)?;
    let desc = write_manifest(m, config, &reports, dst, tag, oci_types, opts.fs)?;
    progress.finish(&desc.digest, started.elapsed());
    Ok(Converted {
        manifest: desc,
        layers: reports,
    })
}

/// The source's image config and its diff IDs, one per layer.
pub(crate) fn read_config(
    src: &dyn Store,
    m: &Manifest,
) -> Result<(serde_json::Value, Vec<String>)> {
    let config_bytes = read_small_blob(src, &m.config, 8 << 20).at(|| "image config".into())?;
    let config: serde_json::Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::json("image config is not JSON", e))?;
    let diff_ids = oci::diff_ids(&config)?;
    if diff_ids.len() != m.layers.len() {
        return Err(Error::Invalid(format!(
            "the manifest has {} layers and the config {} diff IDs",
            m.layers.len(),
            diff_ids.len()
        )));
    }
    if m.layers.is_empty() {
        return Err(Error::Invalid("the image has no layers".into()));
    }
    Ok((config, diff_ids))
}

/// The compression of each layer; an overlaybd layer or an unknown media type is refused.
pub(crate) fn layer_kinds(m: &Manifest) -> Result<Vec<LayerCompression>> {
    let mut kinds = Vec::new();
    for l in &m.layers {
        if l.annotation(annotation::BLOB_DIGEST).is_some() {
            return Err(Error::Unsupported(format!(
                "layer {} is already an overlaybd layer",
                l.digest
            )));
        }
        let c = oci::layer_compression(&l.media_type).ok_or_else(|| {
            Error::Unsupported(format!(
                "layer {}: unsupported media type {:?}",
                l.digest, l.media_type
            ))
        })?;
        kinds.push(c);
    }
    Ok(kinds)
}

/// Chain IDs and dedup keys of the layers, and the dedup records whose blobs `dst` has or can
/// mount.
fn plan<'m>(
    m: &'m Manifest,
    diff_ids: Vec<String>,
    kinds: Vec<LayerCompression>,
    dst: &dyn Store,
    opts: &Options,
    fs: &str,
) -> Result<Plan<'m>> {
    let chains = oci::chain_ids(&diff_ids);
    let n = m.layers.len();
    let keys: Vec<String> = chains
        .iter()
        .map(|c| dedup::key(c, &opts.compression, opts.vsize, fs))
        .collect();
    let mut reuse: Vec<Option<dedup::Record>> = vec![None; n];
    if let Some(db) = &opts.dedup {
        for i in 0..n {
            // The cache only saves work: a lookup that fails converts the layer.
            let rec = db.get(&keys[i]).unwrap_or_else(|e| {
                tracing::warn!("dedup cache: layer {i}: {e}; the layer is converted");
                None
            });
            if let Some(rec) = rec {
                if available(dst, &rec)? {
                    reuse[i] = Some(rec);
                }
            }
        }
    }
    let last_new = (0..n).rev().find(|&i| reuse[i].is_none());
    Ok(Plan {
        m,
        diff_ids,
        kinds,
        chains,
        keys,
        reuse,
        last_new,
    })
}

/// Records the layers converted (not reused) in the dedup database, as pushed to `dst`.
fn record_dedup(opts: &Options, plan: &Plan<'_>, reports: &[LayerReport], dst: &dyn Store) {
    if let Some(db) = &opts.dedup {
        for (r, k) in reports.iter().zip(&plan.keys) {
            if !r.reused {
                // The image is converted and pushed: a record that cannot be made is a warning.
                if let Err(e) = db.put(
                    k,
                    &r.blob.digest,
                    r.blob.size,
                    &r.blob.integrity_root,
                    &dst.describe(),
                ) {
                    tracing::warn!("dedup cache: could not record {}: {e}", r.blob.digest);
                }
            }
        }
    }
}

/// Uploads the source's config with the new diff IDs (each layer blob is an uncompressed tar:
/// its digest); returns its descriptor.
fn write_config(
    config: &mut serde_json::Value,
    reports: &[LayerReport],
    dst: &dyn Store,
    oci_types: bool,
) -> Result<Descriptor> {
    config["rootfs"]["diff_ids"] = serde_json::Value::Array(
        reports
            .iter()
            .map(|r| serde_json::Value::String(r.blob.digest.clone()))
            .collect(),
    );
    put_config(config, dst, oci_types)
}

/// Uploads an image config; returns its descriptor.
pub(crate) fn put_config(
    config: &serde_json::Value,
    dst: &dyn Store,
    oci_types: bool,
) -> Result<Descriptor> {
    let config_out = serde_json::to_vec(config).map_err(|e| Error::json("the image config", e))?;
    let config_mt = if oci_types {
        media::OCI_CONFIG
    } else {
        media::DOCKER_CONFIG
    };
    let desc = descriptor(config_mt, &config_out);
    dst.put_blob(&desc.digest, &config_out)
        .at(|| "upload the config".into())?;
    Ok(desc)
}

/// Uploads a manifest under `tag`; returns its descriptor.
pub(crate) fn put_manifest(
    manifest: &Manifest,
    dst: &dyn Store,
    tag: Option<&str>,
) -> Result<Descriptor> {
    let mt = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| media::OCI_MANIFEST.into());
    let mb = serde_json::to_vec(manifest).map_err(|e| Error::json("the manifest", e))?;
    dst.put_manifest(tag, &mt, &mb)
        .at(|| "upload the manifest".into())?;
    Ok(descriptor(&mt, &mb))
}

/// Uploads the manifest of the converted layers (the source's annotations kept) under `tag`;
/// returns its descriptor.
fn write_manifest(
    m: &Manifest,
    config: Descriptor,
    reports: &[LayerReport],
    dst: &dyn Store,
    tag: Option<&str>,
    oci_types: bool,
    fs: layer::FsType,
) -> Result<Descriptor> {
    let (manifest_mt, layer_mt) = if oci_types {
        (media::OCI_MANIFEST, media::OCI_LAYER)
    } else {
        (media::DOCKER_MANIFEST, media::DOCKER_LAYER)
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(manifest_mt.into()),
        artifact_type: None,
        config,
        layers: reports
            .iter()
            .map(|r| layer_descriptor(&r.blob, layer_mt, fs))
            .collect(),
        subject: None,
        annotations: m.annotations.clone(),
    };
    put_manifest(&manifest, dst, tag)
}

/// A converted layer's descriptor with overlaybd's annotations and ours.
pub(crate) fn layer_descriptor(
    blob: &layer::LayerBlob,
    media_type: &str,
    fs: layer::FsType,
) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: blob.digest.clone(),
        size: blob.size,
        urls: None,
        annotations: Some(
            [
                (annotation::VERSION, annotation::VERSION_VALUE.to_string()),
                (annotation::BLOB_DIGEST, blob.digest.clone()),
                (annotation::BLOB_SIZE, blob.size.to_string()),
                (annotation::FS_TYPE, fs.name().to_string()),
                (annotation::INTEGRITY_ROOT, blob.integrity_root.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ),
        platform: None,
        artifact_type: None,
    }
}
