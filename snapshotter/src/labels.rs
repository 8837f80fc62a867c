//! The labels containerd and overlaybd's tools put on snapshots (overlaybd's
//! `pkg/label/label.go`; `../shared/reference/overlaybd.md` §6.2).

/// The committed snapshot a pull-time Prepare is for (its chain ID).
pub const TARGET_REF: &str = "containerd.io/snapshot.ref";
/// Set on snapshots this snapshotter committed itself because their data stays remote.
pub const REMOTE: &str = "containerd.io/snapshot/remote";
pub const REMOTE_VALUE: &str = "remote snapshot";
pub const IMAGE_REF: &str = "containerd.io/snapshot/image-ref";
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const BLOB_DIGEST: &str = "containerd.io/snapshot/overlaybd/blob-digest";
pub const BLOB_SIZE: &str = "containerd.io/snapshot/overlaybd/blob-size";
pub const BLOB_FS_TYPE: &str = "containerd.io/snapshot/overlaybd/blob-fs-type";
pub const ACCELERATION_LAYER: &str = "containerd.io/snapshot/overlaybd/acceleration-layer";
pub const RECORD_TRACE: &str = "containerd.io/snapshot/overlaybd/record-trace";
pub const RECORD_TRACE_PATH: &str = "containerd.io/snapshot/overlaybd/record-trace-path";
pub const DOWNLOAD_REMOTE_BLOB: &str = "containerd.io/snapshot/overlaybd/download-remote-blob";
pub const WRITABLE: &str = "containerd.io/snapshot/overlaybd.writable";
pub const LOCAL_COMMIT_PATH: &str = "containerd.io/snapshot/overlaybd.localcommitpath";
/// Ours: the BLAKE3 integrity root of the layer's ZFile (`blake3:<hex>`), written by our
/// convertor; it goes into the device config so that every block is checked against it.
pub const INTEGRITY_ROOT: &str = "containerd.io/snapshot/overlaybd/integrity-root";
