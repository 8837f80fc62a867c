//! The tar digests (`tar.blake3`): made while the tar streams, checked on every chunk read, a
//! bad copy refetched once, a bad origin a clear error.

use std::sync::Arc;

use overlaybd_turbooci::digests::{root_of, TarDigests, CHUNK};
use overlaybd_turbooci::{ChunkHasher, GzFile, Verified};
use rand::{Rng, SeedableRng};
use test_support::vectors;
use zfile::source::read_full_at;
use zfile::testutil::DamagedCache;
use zfile::ReadAt;

fn digests_of(tar: &[u8], index: Option<&[u8]>) -> TarDigests {
    let mut h = ChunkHasher::default();
    // Fed in odd pieces, as a stream arrives.
    for piece in tar.chunks(7777) {
        h.update(piece);
    }
    h.finish(index)
}

#[test]
fn the_file_round_trips_and_is_checked_against_its_root() {
    let tar = vectors::read("g.layer.tar");
    let index = vectors::read("turbooci/gzip.meta");
    let d = digests_of(&tar, Some(&index));
    assert_eq!(d.tar_size, tar.len() as u64);
    assert_eq!(d.chunks.len(), tar.len().div_ceil(CHUNK as usize));
    assert_eq!(d.index, *blake3::hash(&index).as_bytes());
    assert_eq!(
        d,
        digests_of(&tar[..], Some(&index)),
        "the same in any pieces"
    );
    let bytes = d.encode();
    let root = root_of(&bytes);
    assert_eq!(TarDigests::decode(&bytes, &root).unwrap(), d);
    let mut bad = bytes.clone();
    bad[100] ^= 1;
    let e = TarDigests::decode(&bad, &root).unwrap_err().to_string();
    assert!(e.contains("the image says"), "{e}");
    let e = TarDigests::decode(
        &bytes[..bytes.len() - 32],
        &root_of(&bytes[..bytes.len() - 32]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("digests for"), "{e}");
    assert!(TarDigests::decode(b"", &root_of(b"")).is_err());
}

#[test]
fn reads_of_a_good_target_are_the_target_at_any_offset() {
    let tar = vectors::read("g.layer.tar");
    let gz = GzFile::open(
        Arc::new(vectors::read("turbooci/layer.tar.gz")),
        Box::new(vectors::read("turbooci/gz.span64k.meta")),
    )
    .unwrap();
    let v = Verified::new(gz, digests_of(&tar, None), "layer").unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
    for _ in 0..300 {
        let off = rng.gen_range(0..tar.len() as u64 + 100);
        let len = rng.gen_range(0..300_000usize);
        let mut b = vec![0u8; len];
        let n = read_full_at(&v, off, &mut b).unwrap();
        let want = tar
            .get(off as usize..(off as usize + len).min(tar.len()))
            .unwrap_or(&[]);
        assert!(b[..n] == *want, "{off}+{len}");
    }
    // Made for another size: refused at once.
    let e = Verified::new(tar[..1000].to_vec(), digests_of(&tar, None), "short").unwrap_err();
    assert!(e.to_string().contains("were made for"), "{e}");
}

#[test]
fn a_bad_cached_copy_is_fetched_again_and_a_bad_origin_fails_the_read() {
    let tar = vectors::read("g.layer.tar");
    let d = digests_of(&tar, None);
    // The cache holds a damaged byte in chunk 3: dropped and read again, the read succeeds.
    let damaged = Arc::new(DamagedCache::new(
        tar.clone(),
        vec![(3 * CHUNK as u64 + 17, 1)],
    ));
    let v = Verified::new(damaged.clone(), d.clone(), "layer").unwrap();
    let mut b = vec![0u8; 4096];
    v.read_at(3 * CHUNK as u64 + 4096, &mut b).unwrap();
    assert_eq!(b, tar[3 * CHUNK as usize + 4096..3 * CHUNK as usize + 8192]);
    assert_eq!(damaged.discards(), 1);
    // The origin itself is wrong: the read fails, naming the bytes.
    let mut bad = tar.clone();
    bad[5 * CHUNK as usize + 9] ^= 0x40;
    let v = Verified::new(bad, d, "sha256:feed").unwrap();
    let e = v.read_at(5 * CHUNK as u64, &mut b).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    let msg = e.to_string();
    assert!(
        msg.contains("sha256:feed") && msg.contains("also when fetched again"),
        "{msg}"
    );
    // Other chunks still read.
    v.read_at(0, &mut b).unwrap();
    assert_eq!(b, tar[..4096]);
}

/// A cache whose copy makes the reader fail (as damaged deflate data makes inflate fail)
/// until it is told to drop it.
struct FailsUntilDiscarded {
    inner: Vec<u8>,
    bad: std::sync::atomic::AtomicBool,
}

impl ReadAt for FailsUntilDiscarded {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.bad.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "invalid distance too far back",
            ));
        }
        self.inner.read_at(offset, buf)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.inner.len() as u64)
    }
    fn discard_cached(&self, _: u64, _: u64) -> std::io::Result<()> {
        self.bad.store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn a_copy_that_fails_to_inflate_is_fetched_again_too() {
    let tar = vectors::read("g.layer.tar");
    let src = FailsUntilDiscarded {
        inner: tar.clone(),
        bad: true.into(),
    };
    let v = Verified::new(src, digests_of(&tar, None), "layer").unwrap();
    let mut b = vec![0u8; 1000];
    v.read_at(70_000, &mut b).unwrap();
    assert_eq!(b, tar[70_000..71_000]);
}
