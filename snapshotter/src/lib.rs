//! The control plane: containerd's Snapshots service as a proxy plugin
//! (`overlaybd-snapshotter`), the snapshot metadata store, mounts, and the remote-layer
//! decision for overlaybd layers. It never reads blocks: it asks the `overlaybd-daemon` to
//! attach devices. `docs/snapshotter.md` describes the behaviour and the config.

pub mod config;
pub mod error;
pub mod filter;

pub mod mount;
pub mod rpull;
pub mod service;
pub mod snapshotter;
pub mod store;

pub use error::{Error, Result};

/// The generated gRPC code of containerd's API (`proto/containerd/*.proto`).
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
            pub mod content {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.content.v1");
                }
            }
            pub mod images {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.images.v1");
                }
            }
            pub mod leases {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.leases.v1");
                }
            }
            pub mod diff {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.diff.v1");
                }
            }
        }
    }
    pub use containerd::services::content::v1 as content;
    pub use containerd::services::diff::v1 as diff;
    pub use containerd::services::images::v1 as images;
    pub use containerd::services::leases::v1 as leases;
    pub use containerd::services::snapshots::v1 as snapshots;
    pub use containerd::types;
}
