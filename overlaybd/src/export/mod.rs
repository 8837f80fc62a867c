//! Device exports: how a [`crate::device::Device`] reaches the kernel or a VM.
//!
//! - [`fuse`]: the device as one FUSE file, and [`loopdev`] to make it a block device. Works on
//!   any kernel with FUSE and loop; the end-to-end tests mount ext4 through it.
//! - [`nbd`]: an NBD server (fixed newstyle) for the kernel's nbd driver, qemu and VM runtimes.

pub mod fuse;
pub mod loopdev;
pub mod nbd;

/// Binds a unix socket at `path` (replacing a stale one) that only its owner may use.
pub fn bind_private_unix(
    path: &std::path::Path,
) -> crate::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let what = || path.display().to_string();
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| crate::Error::io("bind", what(), 0, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| crate::Error::io("chmod", what(), 0, e))?;
    Ok(l)
}
