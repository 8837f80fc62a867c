//! The data plane of the image service.
//!
//! This crate will own overlaybd's LSMT layer format (committed, append-only writable and
//! sparse writable layers), the merged layer stack, blob sources (registry, local cache, P2P
//! agent) with the background downloader, trace record/replay, the device exports (FUSE
//! single-file + loop, NBD) and the `overlaybd-daemon` binary. Today it carries the `obdctl`
//! tool, whose `zfile` commands work over the [`zfile`] crate.
