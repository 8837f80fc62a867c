//! OCI image → overlaybd image: one ext4 diff per layer, applied in user space with
//! e2fsprogs' libext2fs (no root, no kernel mount), committed as an LSMT layer, compressed as a
//! ZFile with the BLAKE3 integrity table, and pushed with overlaybd's annotations.

pub mod apply;
pub mod convert;
pub mod dedup;
pub mod disk;
pub mod erofs;
pub mod error;
pub mod extfs;
#[cfg(feature = "test-util")]
pub mod fuzz;
pub mod layer;
pub mod mkfs;
pub mod model;
pub use overlaybd_oci as oci;
pub mod progress;
pub mod record_trace;
pub mod remote;
pub mod store;
pub mod turbo;
pub mod verify;
pub mod writeback;

pub use error::{Error, Result};
