//! The one registry client: lazy range reads of blobs with a deadline and failover
//! ([`RegistryBlob`], a [`zfile::ReadAt`]), whole-object repository operations (manifests,
//! blobs, uploads, cross-repository mounts: [`Repository`]), authentication (Basic, Bearer,
//! Docker identity tokens), containerd's `hosts.toml` (mirrors, TLS) and Docker's
//! credentials. Both kinds of request go through one session ([`session`]): the same places,
//! auth and retries. Blocking (reqwest); async callers run it on a blocking thread.
//!
//! A blob can be fetched from several places, tried in order within each attempt: a P2P agent
//! (`<agent>/<blob URL>`, same headers), the mirrors of containerd's `hosts.toml`, then the
//! upstream registry. A place that fails hands the read to the next one. Redirects (to blob
//! storage) are followed; the `Authorization` header is not sent to another host.

pub mod auth;
mod blob;
mod client;
pub mod credentials;
mod error;
#[cfg(feature = "test-util")]
pub mod fuzz;
pub mod hosts;
mod location;
pub mod outage;
mod repository;
mod session;
mod stats;

pub use auth::Credentials;
pub use blob::{RegistryBlob, RegistryOptions};
pub use client::client_for;
pub use credentials::DockerConfig;
pub use error::{Error, Result};
pub use location::BlobLocation;
pub use outage::Outages;
pub use repository::{Access, Repository, RepositoryOptions, MAX_MANIFEST};
pub use session::Retry;
pub use stats::RegistryStats;
