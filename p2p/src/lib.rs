//! overlaybd-p2p: a tree of peers per blob, per datacenter, that spreads registry range reads.
//!
//! A few **roots** per datacenter fetch from the registry; an **agent** on every host serves
//! the local overlaybd daemon and its children. Requests use overlaybd's P2P form
//! (`GET /<api-key>/<blob URL>` with `Range` and the registry's `Authorization`), so either
//! daemon works with either proxy.
//!
//! - [`topology`]: which root owns a blob (rendezvous hashing) and the per-blob tree it keeps
//!   (bounded fan-out, shallowest free parent, no cycles, failed and corrupt nodes dropped).
//! - [`store`]: pieces (1 MiB by default) streamed to readers while they arrive, in a bounded
//!   LRU cache, optionally on disk.
//! - [`node`]: the HTTP server and the fetching: access checked against the registry for
//!   every set of credentials (by the owning root, cached briefly), failover from parent to
//!   root to registry, reports of bad bytes, whole-blob digest checks.
//! - [`limit`]: upload rate limits; [`metrics`]: Prometheus counters; [`config`]: the TOML
//!   configuration; [`error`]: the one error type, [`Error`].

pub mod config;
pub mod error;
pub mod fuzz;
pub mod limit;
pub mod metrics;
pub mod node;
pub mod store;
pub mod topology;

pub use error::{Error, Result};
