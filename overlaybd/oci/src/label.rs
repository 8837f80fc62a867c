//! The labels containerd and overlaybd's tools put on snapshots (overlaybd's
//! `pkg/label/label.go`; `../shared/reference/overlaybd.md` §6.2). A layer's
//! `containerd.io/snapshot/*` annotations reach the snapshotter as labels of the same name, so
//! those keys are the [`crate::annotation`] constants.

use crate::annotation;

/// The committed snapshot a pull-time Prepare is for (its chain ID).
pub const TARGET_REF: &str = "containerd.io/snapshot.ref";
/// Set on snapshots this snapshotter committed itself because their data stays remote.
pub const REMOTE: &str = "containerd.io/snapshot/remote";
pub const REMOTE_VALUE: &str = "remote snapshot";
pub const IMAGE_REF: &str = "containerd.io/snapshot/image-ref";
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const BLOB_DIGEST: &str = annotation::BLOB_DIGEST;
pub const BLOB_SIZE: &str = annotation::BLOB_SIZE;
pub const BLOB_FS_TYPE: &str = annotation::FS_TYPE;
pub const ACCELERATION_LAYER: &str = annotation::ACCELERATION_LAYER;
pub const RECORD_TRACE: &str = "containerd.io/snapshot/overlaybd/record-trace";
pub const RECORD_TRACE_PATH: &str = "containerd.io/snapshot/overlaybd/record-trace-path";
pub const DOWNLOAD_REMOTE_BLOB: &str = "containerd.io/snapshot/overlaybd/download-remote-blob";
pub const WRITABLE: &str = "containerd.io/snapshot/overlaybd.writable";
pub const LOCAL_COMMIT_PATH: &str = "containerd.io/snapshot/overlaybd.localcommitpath";
/// Ours: the BLAKE3 integrity root of the layer's ZFile (`blake3:<hex>`), written by our
/// convertor; it goes into the device config so that every block is checked against it.
pub const INTEGRITY_ROOT: &str = annotation::INTEGRITY_ROOT;
/// Ours: set by `rpull --plain-http` on a layer's pull-time Prepare (`"true"`), so the
/// snapshotter's blob check and the device's reads use `http://` as the pull did.
pub const PLAIN_HTTP: &str = "containerd.io/snapshot/overlaybd/plain-http";
/// Ours: on the active snapshot of an overlaybd layer that is downloaded and unpacked instead
/// of being read lazily, why (`rpull` prints it; `--no-fallback` fails on it).
pub const NOT_REMOTE: &str = "containerd.io/snapshot/overlaybd/not-remote";
