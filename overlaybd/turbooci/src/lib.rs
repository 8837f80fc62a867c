//! overlaybd's TurboOCIv1 formats: unmodified OCI layers read lazily through a small meta
//! layer. This crate has the gzip index (`gzip.meta`: reading, checking, writing while a layer
//! is inflated once), random access into a gzip blob ([`GzFile`]), and ours: BLAKE3 digests of
//! the original tar in chunks, checked on every read ([`Verified`]). The meta layer itself is
//! an LSMT layer whose mappings point into the layer's tar (`overlaybd_lsmt::warp`). Formats:
//! `docs/format/turbooci.md`.

pub mod digests;
mod error;
pub mod fuzz;
pub mod gzfile;
pub mod gzindex;
pub mod indexer;
pub mod zlib;

pub use digests::{ChunkHasher, TarDigests, Verified};
pub use error::{Error, Result};
pub use gzfile::{is_gzip, GzFile};
pub use gzindex::{DictCompression, GzIndex};
pub use indexer::{IndexOptions, IndexSummary, Indexing};
