//! The data plane of the image service.
//!
//! Today: overlaybd's LSMT layer format and the merged layer stack ([`lsmt`]); blob sources
//! for registries (auth, retries with a deadline, mirrors and TLS from `hosts.toml`, Docker
//! credentials, a P2P agent in front) in [`registry`]; the local blob cache with readahead and
//! background download ([`cache`]); counters for [`metrics`]; and the `obdctl` tool. Later
//! issues add trace record/replay, the device exports (FUSE single-file + loop, NBD) and the
//! `overlaybd-daemon` binary.

pub mod api;
pub mod cache;
pub mod daemon;
pub mod device;
mod error;
pub mod export;
pub mod image;
pub mod lsmt;
pub mod metrics;
pub mod registry;
pub mod trace;

pub use error::{Error, Result};
