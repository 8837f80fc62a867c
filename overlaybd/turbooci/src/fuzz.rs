//! The body of the `turbooci` fuzz target (also run over mutated vectors by the tests).
//! The first byte picks what the rest is: 0 = a gzip index followed by its blob (a u32 length
//! of the index first), 1 = a gzip blob to inflate and index, 2 = a warp layer over a
//! 1 MiB target.

use std::io::{Cursor, Read};
use std::sync::Arc;

use overlaybd_lsmt::{blob, Stack, WarpLayer};
use zfile::source::read_full_at;
use zfile::ReadAt;

use crate::{GzFile, GzIndex, IndexOptions, Indexing};

fn read_some(src: &dyn ReadAt, size: u64) {
    let mut buf = vec![0u8; 64 << 10];
    for off in [0, size / 3, size.saturating_sub(1000), size + 5] {
        let _ = read_full_at(src, off, &mut buf);
    }
}

pub fn turbooci(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 3 {
        0 => {
            if rest.len() < 4 {
                return;
            }
            let n = (u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize)
                .min(rest.len() - 4);
            let (index, blob) = rest[4..].split_at(n);
            let Ok(ix) = GzIndex::open(Box::new(index.to_vec()), None) else {
                return;
            };
            for e in ix.entries.clone() {
                let _ = ix.window(&e);
            }
            if let Ok(gz) = GzFile::with_index(Arc::new(blob.to_vec()), ix) {
                read_some(&gz, gz.size().unwrap_or(0));
            }
        }
        1 => {
            let Ok(mut ix) = Indexing::new(rest, Cursor::new(Vec::new()), IndexOptions::default())
            else {
                return;
            };
            let mut stream = Vec::new();
            if ix.read_to_end(&mut stream).is_err() {
                return;
            }
            let (index, summary) = ix.finish().expect("a stream read whole indexes");
            assert_eq!(summary.uncompressed_size, stream.len() as u64);
            let gz = GzFile::open(Arc::new(rest.to_vec()), Box::new(index.into_inner()))
                .expect("our own index opens");
            let mut all = vec![0u8; summary.first_member_size as usize];
            let n = read_full_at(&gz, 0, &mut all).expect("our own index reads");
            assert_eq!(n, all.len());
            assert!(
                all[..] == stream[..n],
                "random access differs from the stream"
            );
        }
        _ => {
            let src: Arc<dyn ReadAt> = Arc::new(rest.to_vec());
            let Ok((lsmt, _)) = blob::open_blob(src, &zfile::OpenOptions::default()) else {
                return;
            };
            let target: Arc<dyn ReadAt> = Arc::new(vec![7u8; 1 << 20]);
            let Ok((warp, layer)) = WarpLayer::open(lsmt, target) else {
                return;
            };
            let Ok(stack) = Stack::new(vec![(warp, layer)], None) else {
                return;
            };
            read_some(&stack, stack.virtual_size());
        }
    }
}
