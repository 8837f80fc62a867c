//! The control plane: containerd's Snapshots service as a proxy plugin
//! (`overlaybd-snapshotter`), the snapshot metadata store, mounts, and the remote-layer
//! decision for overlaybd layers. It never reads blocks: it asks the `overlaybd-daemon` to
//! attach devices. `docs/snapshotter.md` describes the behaviour and the config.

pub mod compat;
pub mod config;
pub mod containerd_config;
pub mod error;
pub mod filter;
#[cfg(any(test, feature = "test-util"))]
pub mod fuzz;

pub mod mount;
pub mod service;
pub mod snapshotter;
pub mod store;

pub use error::{Error, Result};

/// containerd's Snapshots service as generated from `proto/containerd/snapshots.proto`: the
/// server this crate implements (containerd's client API, which `rpull` uses, comes from the
/// `containerd-client` crate, which builds no servers).
#[allow(
    clippy::all,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub
)]
pub mod proto {
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod snapshots {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
    pub use containerd::services::snapshots::v1 as snapshots;
    pub use containerd::types;
}
