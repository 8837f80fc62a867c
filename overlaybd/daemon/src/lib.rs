//! The data plane: `overlaybd-daemon` attaches images (`config.v1.json`) as block devices,
//! reads their layers through the blob cache and the registry client, records and replays
//! traces, exports the devices (FUSE file + loop device, NBD), keeps them across its own
//! restarts, and serves its gRPC API on a unix socket.
//!
//! - [`image`]: the layers of a config opened into one LSMT stack.
//! - [`device`]: an opened image as a [`overlaybd_export::BlockDevice`], with counters and its
//!   trace mode.
//! - [`trace`]: overlaybd's trace file, recording and replay.
//! - [`daemon`]: attach, detach, list, restore after a restart; [`fdstore`] keeps the FUSE
//!   descriptors; [`config`] is the daemon's TOML config.
//! - [`api`]: the gRPC server over [`daemon::Daemon`].

pub mod api;
pub mod compat;
pub mod config;
pub mod daemon;
pub mod device;
mod error;
pub mod fdstore;
pub mod image;
pub mod trace;
pub mod turbo;

pub use error::{Error, Result};
