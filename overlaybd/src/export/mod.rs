//! Device exports: how a [`crate::device::Device`] reaches the kernel or a VM.
//!
//! - [`fuse`]: the device as one FUSE file, and [`loopdev`] to make it a block device. Works on
//!   any kernel with FUSE and loop; the end-to-end tests mount ext4 through it.
//! - [`nbd`]: an NBD server (fixed newstyle) for the kernel's nbd driver, qemu and VM runtimes.

pub mod fuse;
pub mod loopdev;
pub mod nbd;
