//! `record-trace`: runs an overlaybd image in a container with trace recording, and pushes the
//! image again with the trace as its acceleration layer (overlaybd's `ctr record-trace`,
//! `../shared/reference/overlaybd.md` §5.5).
//!
//! The image is pulled lazily into containerd (`overlaybd-snapshotter rpull`), run with
//! `ctr run` and the two record-trace snapshot labels (the snapshotter starts the daemon's
//! recording on the image's device), stopped after the given time (SIGTERM, then SIGKILL),
//! and the trace is collected overlaybd's way: `<trace>.lock` removed, `<trace>.ok` awaited.
//! The trace becomes a one-file tar layer (`trace`, mode 0444) with overlaybd's annotations
//! (`acceleration-layer: yes`); the config gains its diff ID and an "Acceleration Layer"
//! history entry; the other layers are mounted or copied into the destination.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    /// Arguments given to `overlaybd-snapshotter rpull` (registry flags).
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

fn ctr(opts: &Options, args: &[&str]) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address")
        .arg(&opts.address)
        .args(["--namespace", &opts.namespace])
        .args(args);
    c
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

    // containerd's name of the image (what rpull stores and ctr runs).
    let r = overlaybd_oci::reference::Reference::parse(image_name)?;
    let image_name = &match (&r.tag, &r.digest) {
        (_, Some(d)) => format!("{}/{}@{d}", r.host, r.repository),
        (t, None) => format!(
            "{}/{}:{}",
            r.host,
            r.repository,
            t.as_deref().unwrap_or("latest")
        ),
    };
    // Pull lazily into containerd.
    let o = Command::new(snapshotter_exe())
        .arg("rpull")
        .arg("--address")
        .arg(&opts.address)
        .args(["--namespace", &opts.namespace])
        .args(&opts.rpull_args)
        .arg(image_name)
        .output()
        .map_err(|e| Error::Tool(format!("run overlaybd-snapshotter rpull: {e}")))?;
    if !o.status.success() {
        return Err(Error::Tool(format!(
            "rpull {image_name}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }

    // Run it with recording on.
    let dir = opts.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("record-trace-")
        .tempdir_in(&dir)
        .map_err(|e| Error::io("create a directory in", &dir, e))?;
    let trace = work.path().join("trace");
    std::fs::write(&trace, b"").map_err(|e| Error::io("create", &trace, e))?;
    let id = format!("record-trace-{}", std::process::id());
    let path_label = format!(
        "containerd.io/snapshot/overlaybd/record-trace-path={}",
        trace.display()
    );
    let mut args = vec![
        "run",
        "--rm",
        "--snapshotter",
        "overlaybd",
        "--snapshotter-label",
        "containerd.io/snapshot/overlaybd/record-trace=yes",
        "--snapshotter-label",
        &path_label,
        image_name,
        &id,
    ];
    args.extend(opts.command.iter().map(String::as_str));
    let mut child = ctr(opts, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool(format!("run ctr: {e}")))?;
    let wait_err = |e: std::io::Error| Error::Tool(format!("wait for ctr: {e}"));
    let wait = |child: &mut std::process::Child, limit: Duration| -> Result<bool> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if child.try_wait().map_err(wait_err)?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(false)
    };
    if !wait(&mut child, opts.time)? {
        let _ = ctr(opts, &["tasks", "kill", "-s", "SIGTERM", &id]).output();
        if !wait(&mut child, opts.time.max(Duration::from_secs(5)))? {
            let _ = ctr(opts, &["tasks", "kill", "-s", "SIGKILL", &id]).output();
            wait(&mut child, Duration::from_secs(30))?;
        }
    }
    let out = child.wait_with_output().map_err(wait_err)?;
    let started = trace.with_extension("lock").exists() || trace.with_extension("ok").exists();
    if !started {
        return Err(Error::Tool(format!(
            "the container did not start with recording on: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }

    // overlaybd's protocol: remove the lock, the trace is written, `.ok` appears.
    let _ = std::fs::remove_file(trace.with_extension("lock"));
    let t = Instant::now();
    while !trace.with_extension("ok").exists() {
        if t.elapsed() > Duration::from_secs(60) {
            return Err(Error::Tool(format!(
                "the daemon did not write the trace {} within 60 s",
                trace.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let bytes = std::fs::read(&trace).map_err(|e| Error::io("read", &trace, e))?;
    if bytes.is_empty() {
        return Err(Error::Invalid(
            "the trace is empty: the container read nothing from the image".into(),
        ));
    }
    let (desc, _) = push_with_trace(src, &m, dst, tag, &bytes)?;
    Ok((desc, bytes.len() as u64))
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

    // Blobs: the old layers (mounted when the store can, else copied), the trace, the config.
    for l in &m.layers {
        if dst.has_blob(&l.digest)? || dst.try_mount(&l.digest, &src.describe())? {
            continue;
        }
        let tmp = tempfile::NamedTempFile::new()
            .map_err(|e| Error::io("create", std::env::temp_dir(), e))?;
        {
            let mut f = std::io::BufWriter::new(tmp.as_file());
            src.get_blob(&l.digest, &mut f)?;
        }
        dst.put_blob_file(&l.digest, l.size, tmp.path())?;
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
