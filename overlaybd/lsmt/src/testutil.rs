//! Helpers for tests of crates that read LSMT layers (feature `test-util`): layers and stacks
//! of vector files, and the SHA-256 of a whole virtual disk.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use zfile::ReadAt;

use crate::{blob, PieceKind, RoLayer, Stack, Upper};

/// A read-only layer from a file (envelope and ZFile detected).
pub fn lower(path: &Path) -> (Arc<dyn ReadAt>, RoLayer) {
    let (src, _) = blob::open_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let layer = RoLayer::open(&*src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (src, layer)
}

/// A stack of layer files, lowest first, and an optional upper.
pub fn stack(paths: &[&Path], upper: Option<Upper>) -> Stack {
    Stack::new(paths.iter().map(|p| lower(p)).collect(), upper).unwrap()
}

/// Lowercase hex SHA-256 of the whole virtual disk, read in 4 MiB pieces through the stack
/// (holes hashed from a zero buffer).
pub fn disk_sha256(s: &Stack) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let zeros = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < s.virtual_size() {
        let n = ((s.virtual_size() - off) as usize).min(buf.len());
        let plan = s.plan(off, n as u64);
        if plan
            .iter()
            .all(|p| matches!(p.kind, PieceKind::Hole | PieceKind::Zeroes))
        {
            h.update(&zeros[..n]);
        } else {
            assert_eq!(s.read_at(off, &mut buf[..n]).unwrap(), n);
            h.update(&buf[..n]);
        }
        off += n as u64;
    }
    hex::encode(h.finalize())
}
