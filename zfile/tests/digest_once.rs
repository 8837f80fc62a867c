//! A block's BLAKE3 digest is checked once per source generation: while a cache says its
//! bytes are unchanged, later reads check the CRC only; any new generation, or a source that
//! cannot tell, brings the digest check back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use zfile::{OpenOptions, ReadAt, WriterOptions, ZFile};

mod common;

/// Bytes in memory with a generation the test controls (a cache would bump it on each fill).
struct Source {
    bytes: RwLock<Vec<u8>>,
    /// `None`: a source that cannot tell.
    generation: Option<AtomicU64>,
    /// Bump the generation on every read (a cache filling as it reads).
    bump_on_read: bool,
}

impl ReadAt for Source {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.bytes.read().unwrap().as_slice().read_at(offset, buf)?;
        if self.bump_on_read {
            self.bump();
        }
        Ok(n)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.bytes.read().unwrap().len() as u64)
    }
    fn generation(&self) -> Option<u64> {
        self.generation.as_ref().map(|g| g.load(Ordering::SeqCst))
    }
}

impl Source {
    fn bump(&self) {
        if let Some(g) = &self.generation {
            g.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn open(generation: Option<u64>, bump_on_read: bool) -> (Vec<u8>, ZFile<Source>) {
    // Incompressible data: an lz4 block of it ends in literals, so its last stored byte can be
    // changed and the block still decodes.
    let data = test_support::random(4 * 4096, 0x9E37_79B9_7F4A_7C15);
    let (file, summary) = common::compress(
        &data,
        WriterOptions {
            integrity: true,
            ..Default::default()
        },
    );
    let src = Source {
        bytes: RwLock::new(file),
        generation: generation.map(AtomicU64::new),
        bump_on_read,
    };
    let opts = OpenOptions {
        trusted_root: summary.integrity_root,
        ..Default::default()
    };
    (data, ZFile::open_with(src, &opts).unwrap())
}

/// Changes block 1's last compressed byte and fixes its CRC, as a forger who knows the format
/// would: only the digest can tell. Returns the data the block now decodes to.
fn forge_block_1(z: &ZFile<Source>, data: &[u8]) -> Vec<u8> {
    let ext = z.block_extent(1).unwrap();
    let mut bytes = z.source().bytes.write().unwrap();
    let stored = &mut bytes[ext.offset as usize..ext.end() as usize];
    let (compressed, crc) = stored.split_at_mut(stored.len() - 4);
    *compressed.last_mut().unwrap() ^= 0x55;
    crc.copy_from_slice(&zfile::crc::block_crc(compressed).to_le_bytes());
    let mut forged = data.to_vec();
    forged[2 * 4096 - 1] ^= 0x55;
    forged
}

fn read(z: &ZFile<Source>) -> zfile::Result<Vec<u8>> {
    let mut out = vec![0u8; z.len() as usize];
    z.read_at(0, &mut out).map(|n| {
        out.truncate(n);
        out
    })
}

fn assert_refused(r: zfile::Result<Vec<u8>>) {
    let e = r.expect_err("forged block read back").to_string();
    assert!(e.contains("blake3 digest mismatch"), "{e}");
}

#[test]
fn digests_are_checked_again_after_a_new_generation() {
    let (data, z) = open(Some(7), false);
    assert_eq!(read(&z).unwrap(), data);
    let forged = forge_block_1(&z, &data);
    // Same generation: the source vouches that these bytes are the ones checked, so only the
    // CRC runs. (This is the contract a cache keeps; the forgery shows the digest was skipped.)
    assert_eq!(read(&z).unwrap(), forged);
    // A fill: the digest runs again and refuses the block (after one reload from the origin).
    z.source().bump();
    assert_refused(read(&z));
    // And goes on refusing: a failed block is never marked.
    assert_refused(read(&z));
}

#[test]
fn bytes_never_checked_are_never_trusted() {
    // Forged before the first read: the first read at a generation checks every digest.
    let (data, z) = open(Some(0), false);
    forge_block_1(&z, &data);
    assert_refused(read(&z));
}

#[test]
fn a_source_without_generations_has_every_digest_checked() {
    let (data, z) = open(None, false);
    assert_eq!(read(&z).unwrap(), data);
    forge_block_1(&z, &data);
    assert_refused(read(&z));
}

#[test]
fn a_generation_that_moves_during_the_read_marks_nothing() {
    // Every read fills (bumps): no read's before and after agree, so nothing is ever skipped.
    let (data, z) = open(Some(0), true);
    assert_eq!(read(&z).unwrap(), data);
    assert_eq!(read(&z).unwrap(), data);
    forge_block_1(&z, &data);
    assert_refused(read(&z));
}

#[test]
fn partial_block_reads_use_the_same_marks() {
    let (data, z) = open(Some(3), false);
    // Read the end of block 1 through a partial read (the scratch path), then forge it.
    let part_of_1 = 4096 + 4000..2 * 4096;
    let mut part = vec![0u8; part_of_1.len()];
    assert_eq!(z.read_at(part_of_1.start as u64, &mut part).unwrap(), 96);
    assert_eq!(part, data[part_of_1.clone()]);
    let forged = forge_block_1(&z, &data);
    assert_ne!(forged[part_of_1.clone()], data[part_of_1.clone()]);
    assert_eq!(z.read_at(part_of_1.start as u64, &mut part).unwrap(), 96);
    assert_eq!(part, forged[part_of_1]);
    // Block 2 was never read: its first read checks its digest (and it is intact).
    let mut b2 = vec![0u8; 4096];
    z.read_at(2 * 4096, &mut b2).unwrap();
    assert_eq!(b2, data[2 * 4096..3 * 4096]);
}
