//! The control plane (not yet built): containerd's Snapshots service as a proxy plugin, the
//! snapshot metadata store, mounts, the remote-layer decision for overlaybd layers, and
//! `rpull`. It never reads blocks; it asks the daemon in the `overlaybd` crate to attach
//! devices.
