//! The data plane of the image service.
//!
//! Today: overlaybd's LSMT layer format and the merged layer stack ([`lsmt`]), and the
//! `obdctl` tool. Later issues add blob sources (registry, local cache, P2P agent) with the
//! background downloader, trace record/replay, the device exports (FUSE single-file + loop,
//! NBD) and the `overlaybd-daemon` binary.

pub mod cache;
mod error;
pub mod lsmt;
pub mod registry;

pub use error::{Error, Result};
