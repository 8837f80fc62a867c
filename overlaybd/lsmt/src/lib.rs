//! overlaybd's LSMT layer format and the merged layer stack. Format code is synchronous and
//! reads through [`zfile::ReadAt`]; see `docs/format/lsmt.md`.

pub mod blob;
pub mod commit;
mod error;
#[cfg(feature = "test-util")]
pub mod fuzz;
pub mod header;
pub mod index;
pub mod index0;
pub mod mapping;
pub mod ro;
pub mod rw;
pub mod sparse;
pub mod stack;
#[cfg(feature = "test-util")]
pub mod testutil;
pub mod warp;

pub use commit::{commit, CommitOptions, CommitSummary};
pub use error::{Error, Result};
pub use header::{HeaderTrailer, Uuid};
pub use index::RoIndex;
pub use mapping::{Mapping, SECTOR};
pub use ro::{LayerMeta, RoLayer};
pub use rw::RwLayer;
pub use sparse::SparseLayer;
pub use stack::{Piece, PieceKind, Source, Stack, Upper};
pub use warp::WarpLayer;
