//! `record-trace`: runs an overlaybd image in a container with trace recording, and pushes the
//! image again with the trace as its acceleration layer (overlaybd's `ctr record-trace`,
//! `../shared/reference/overlaybd.md` §5.5).
//!
//! Running the image belongs to the code that speaks containerd: `overlaybd-snapshotter
//! record-trace` (`overlaybd_containerd::record`) pulls it lazily, runs it through containerd's
//! API with the two record-trace snapshot labels (the snapshotter starts the daemon's recording
//! on the image's device), stops it after the given time and collects the trace; this module
//! checks the image first, hands the run over, and makes and pushes the image with the trace.
//! The trace becomes a one-file tar layer (`trace`, mode 0444) with overlaybd's annotations
//! (`acceleration-layer: yes`); the config gains its diff ID and an "Acceleration Layer"
//! history entry; the other layers are mounted or copied into the destination.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{At, Error, Result};
use crate::oci::{self, annotation, media, Descriptor, Document, Manifest};
use crate::store::Store;

#[derive(Clone, Debug)]
pub struct Options {
    /// containerd's socket.
    pub address: PathBuf,
    pub namespace: String,
    /// How long the container runs before it is stopped.
    pub time: Duration,
    /// The command (default: the image's).
    pub command: Vec<String>,
    /// Where the trace is written (a fresh temporary directory under it).
    pub work_dir: Option<PathBuf>,
    /// Registry flags for `overlaybd-snapshotter record-trace` (as its `rpull` takes them).
    pub rpull_args: Vec<String>,
}

/// `overlaybd-snapshotter` beside this executable, else on PATH.
fn snapshotter_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("overlaybd-snapshotter")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "overlaybd-snapshotter".into())
}

/// The tar layer holding `trace` (mode 0444, fixed owner and time): the same bytes for the
/// same trace.
pub fn trace_layer(trace: &[u8]) -> Result<Vec<u8>> {
    let tar_err = |e: std::io::Error| Error::io("write the layer tar of", "trace", e);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("trace").map_err(tar_err)?;
    h.set_mode(0o444);
    h.set_size(trace.len() as u64);
    h.set_mtime(crate::convert::REPRODUCIBLE_TIME as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, trace).map_err(tar_err)?;
    b.into_inner().map_err(tar_err)
}

/// Records a trace of `src_ref` (an overlaybd image in a registry) running, and writes the
/// image with the acceleration layer to `dst` under `tag`. Returns the new manifest's
/// descriptor and the trace's size.
pub fn record_trace(
    src: &dyn Store,
    src_ref: &str,
    image_name: &str,
    dst: &dyn Store,
    tag: Option<&str>,
    opts: &Options,
) -> Result<(Descriptor, u64)> {
    let (bytes, mt) = src
        .get_manifest(src_ref)
        .at(|| format!("read {image_name}"))?;
    let m = match oci::parse_document(&bytes, mt.as_deref())? {
        Document::Manifest(m) => *m,
        Document::Index(_) => {
            return Err(Error::Unsupported(format!(
                "{image_name}: record-trace takes one platform's manifest, not an index"
            )))
        }
    };
    let top = m
        .layers
        .last()
        .ok_or_else(|| Error::Invalid(format!("{image_name} has no layers")))?;
    let ann = top.annotations.clone().unwrap_or_default();
    if !ann.contains_key(annotation::BLOB_DIGEST) {
        return Err(Error::Unsupported(format!(
            "{image_name} is not an overlaybd image (its top layer has no {})",
            annotation::BLOB_DIGEST
        )));
    }
    if ann.get(annotation::ACCELERATION_LAYER).map(String::as_str) == Some("yes") {
        return Err(Error::Unsupported(format!(
            "{image_name} already has an acceleration layer"
        )));
    }

    let bytes = run_and_record(image_name, opts)?;
    let (desc, _) = push_with_trace(src, &m, dst, tag, &bytes)?;
    Ok((desc, bytes.len() as u64))
}

/// Runs `overlaybd-snapshotter record-trace` on `image_name` and returns the trace.
fn run_and_record(image_name: &str, opts: &Options) -> Result<Vec<u8>> {
    let dir = opts.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("record-trace-")
        .tempdir_in(&dir)
        .map_err(|e| Error::io("create a directory in", &dir, e))?;
    let out = work.path().join("trace");
    let exe = snapshotter_exe();
    let o = Command::new(&exe)
        .arg("record-trace")
        .arg("--address")
        .arg(&opts.address)
        .args(["--namespace", &opts.namespace])
        .args(["--time", &opts.time.as_secs().max(1).to_string()])
        .arg("--work-dir")
        .arg(work.path())
        .arg("--out")
        .arg(&out)
        .args(&opts.rpull_args)
        .arg(image_name)
        .arg("--")
        .args(&opts.command)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Tool(format!("run {} record-trace: {e}", exe.display())))?;
    if !o.status.success() {
        return Err(Error::Tool(format!(
            "record-trace {image_name}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    std::fs::read(&out).map_err(|e| Error::io("read", &out, e))
}

/// Writes manifest `m` plus the acceleration layer made of `trace` to `dst`.
pub fn push_with_trace(
    src: &dyn Store,
    m: &Manifest,
    dst: &dyn Store,
    tag: Option<&str>,
    trace: &[u8],
) -> Result<(Descriptor, Descriptor)> {
    let layer = trace_layer(trace)?;
    let digest = oci::sha256_digest(&layer);
    let top = m
        .layers
        .last()
        .ok_or_else(|| Error::Invalid("no layers".into()))?;
    let mut ann = BTreeMap::new();
    ann.insert(
        annotation::VERSION.to_string(),
        annotation::VERSION_VALUE.to_string(),
    );
    ann.insert(annotation::BLOB_DIGEST.to_string(), digest.clone());
    ann.insert(annotation::BLOB_SIZE.to_string(), layer.len().to_string());
    ann.insert(annotation::ACCELERATION_LAYER.to_string(), "yes".into());
    let fs = top
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotation::FS_TYPE))
        .cloned();
    ann.insert(
        annotation::FS_TYPE.to_string(),
        fs.unwrap_or_else(|| "ext4".into()),
    );
    let trace_desc = Descriptor {
        media_type: media::OCI_LAYER.into(),
        digest: digest.clone(),
        size: layer.len() as u64,
        urls: None,
        annotations: Some(ann),
        platform: None,
        artifact_type: None,
    };
    // Config: one more diff ID (the tar is uncompressed: its digest) and a history entry.
    let mut cfg = Vec::new();
    src.get_blob(&m.config.digest, &mut cfg)?;
    if oci::sha256_digest(&cfg) != m.config.digest {
        return Err(Error::Invalid(format!(
            "config {} does not match its digest",
            m.config.digest
        )));
    }
    let mut c: serde_json::Value =
        serde_json::from_slice(&cfg).map_err(|e| Error::json("parse the config", e))?;
    c["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or_else(|| Error::Invalid("config without rootfs.diff_ids".into()))?
        .push(serde_json::Value::String(digest.clone()));
    let entry = serde_json::json!({"created_by": "Acceleration Layer", "comment": "overlaybd trace (record-trace)"});
    match c.get_mut("history").and_then(|h| h.as_array_mut()) {
        Some(h) => h.push(entry),
        None => c["history"] = serde_json::json!([entry]),
    }
    let cfg = serde_json::to_vec(&c).map_err(|e| Error::json("the config", e))?;
    let cfg_digest = oci::sha256_digest(&cfg);

    // Blobs: the old layers (mounted when the store can, else copied) and, for a TurboOCI
    // image, the original layers its meta layers read from the same repository; the trace,
    // the config.
    let originals = m.layers.iter().filter_map(|l| {
        let d = annotation::turbo_oci_target(l.annotations.as_ref()?)?;
        Some((d.to_string(), None))
    });
    let blobs: Vec<(String, Option<u64>)> = m
        .layers
        .iter()
        .map(|l| (l.digest.clone(), Some(l.size)))
        .chain(originals)
        .collect();
    for (blob, size) in blobs {
        oci::check_digest(&blob)?;
        if dst.has_blob(&blob)? || dst.try_mount(&blob, &src.describe())? {
            continue;
        }
        let tmp = tempfile::NamedTempFile::new()
            .map_err(|e| Error::io("create", std::env::temp_dir(), e))?;
        let n = {
            let mut f = std::io::BufWriter::new(tmp.as_file());
            src.get_blob(&blob, &mut f)?
        };
        dst.put_blob_file(&blob, size.unwrap_or(n), tmp.path())?;
    }
    dst.put_blob(&digest, &layer)?;
    dst.put_blob(&cfg_digest, &cfg)?;
    let mut nm = m.clone();
    nm.config.digest = cfg_digest;
    nm.config.size = cfg.len() as u64;
    nm.layers.push(trace_desc.clone());
    let mt = nm
        .media_type
        .clone()
        .unwrap_or_else(|| media::OCI_MANIFEST.into());
    let bytes = serde_json::to_vec(&nm).map_err(|e| Error::json("the manifest", e))?;
    dst.put_manifest(tag, &mt, &bytes)?;
    Ok((
        Descriptor {
            media_type: mt,
            digest: oci::sha256_digest(&bytes),
            size: bytes.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
        },
        trace_desc,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_layer_is_one_read_only_file_and_reproducible() {
        let l = trace_layer(b"abc").unwrap();
        assert_eq!(l, trace_layer(b"abc").unwrap());
        let mut a = tar::Archive::new(&l[..]);
        let mut es = a.entries().unwrap();
        let mut e = es.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some("trace"));
        assert_eq!(e.header().mode().unwrap(), 0o444);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut e, &mut s).unwrap();
        assert_eq!(s, "abc");
        assert!(es.next().is_none());
    }
}
