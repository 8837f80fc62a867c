//! The gzip index against the vectors made by overlaybd's own tools: every index reads its
//! blob back, and our writer makes the same bytes.

use std::io::{Cursor, Read};
use std::sync::Arc;

use overlaybd_turbooci::gzindex::{DictCompression, GzIndex};
use overlaybd_turbooci::{GzFile, IndexOptions, Indexing};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use test_support::vectors;
use zfile::source::read_full_at;
use zfile::ReadAt;

fn tv(name: &str) -> Vec<u8> {
    vectors::read(&format!("turbooci/{name}"))
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Inflates a whole gzip blob with our indexer, returning the stream and the index bytes.
fn index(blob: &[u8], opts: IndexOptions) -> (Vec<u8>, Vec<u8>, overlaybd_turbooci::IndexSummary) {
    let mut ix = Indexing::new(blob, Cursor::new(Vec::new()), opts).unwrap();
    let mut out = Vec::new();
    ix.read_to_end(&mut out).unwrap();
    let (w, summary) = ix.finish().unwrap();
    (out, w.into_inner(), summary)
}

#[test]
fn vector_files_match_their_checksums() {
    let sums = std::fs::read_to_string(vectors::path("turbooci/SHA256SUMS")).unwrap();
    let mut n = 0;
    for line in sums.lines() {
        let (h, name) = line.split_once("  ").unwrap();
        assert_eq!(sha(&tv(name)), h, "{name}");
        n += 1;
    }
    assert!(n >= 20, "{n} files listed");
}

/// (index, blob, span, dict, checkpoints as (uncompressed, compressed, bits)).
type Case = (
    &'static str,
    &'static str,
    u32,
    DictCompression,
    &'static [(u64, u64, u8)],
);
const CASES: &[Case] = &[
    (
        "gzip.meta",
        "layer.tar.gz",
        1 << 20,
        DictCompression::Zlib(6),
        &[(0, 10, 0)],
    ),
    (
        "gz.span64k.meta",
        "layer.tar.gz",
        65536,
        DictCompression::Zlib(6),
        &[
            (0, 10, 0),
            (445872, 36472, 0),
            (511443, 102053, 0),
            (577007, 167627, 0),
        ],
    ),
    (
        "gz.span256k.raw.meta",
        "layer.tar.gz",
        262144,
        DictCompression::None,
        &[(0, 10, 0), (511443, 102053, 0)],
    ),
    (
        "text.gz.span64k.meta",
        "text.bin.gz",
        65536,
        DictCompression::Zlib(6),
        &[(0, 10, 0), (200198, 66334, 6)],
    ),
];

#[test]
fn indexes_decode_as_overlaybd_wrote_them() {
    for &(name, blob, span, dict, points) in CASES {
        let ix = GzIndex::open(Box::new(tv(name)), Some(tv(blob).len() as u64)).unwrap();
        assert_eq!(ix.header.span, span, "{name}");
        assert_eq!(ix.header.dict, dict, "{name}");
        let got: Vec<_> = ix
            .entries
            .iter()
            .map(|e| (e.de_pos, e.en_pos, e.bits))
            .collect();
        assert_eq!(got, points, "{name}");
        assert_eq!(
            ix.window(&ix.entries[0]).unwrap(),
            vec![0u8; 32768],
            "{name}"
        );
    }
}

#[test]
fn our_writer_makes_overlaybds_bytes_and_the_stream() {
    let tar = vectors::read("g.layer.tar");
    for &(name, blob, span, dict, points) in CASES {
        let (stream, bytes, s) = index(&tv(blob), IndexOptions { span, dict });
        assert!(
            bytes == tv(name),
            "{name}: our index differs from overlaybd's"
        );
        assert_eq!(s.checkpoints, points.len() as u64, "{name}");
        assert_eq!(
            (s.members, s.gzip_size),
            (1, tv(blob).len() as u64),
            "{name}"
        );
        assert_eq!(s.first_member_size, stream.len() as u64);
        if blob == "layer.tar.gz" {
            assert!(stream == tar, "{name}: the inflated stream is not the tar");
        } else {
            assert_eq!(
                sha(&stream),
                "07934489a59b943906abce2783be6581e42838ae93396ee9d5ca4ef05c1458aa"
            );
        }
    }
}

fn plain(blob: &str) -> Vec<u8> {
    index(&tv(blob), IndexOptions::default()).0
}

#[test]
fn every_index_reads_its_blob_whole_and_at_random() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for &(name, blob, ..) in CASES {
        let want = plain(blob);
        let gz = GzFile::open(Arc::new(tv(blob)), Box::new(tv(name))).unwrap();
        assert_eq!(gz.size().unwrap(), want.len() as u64);
        let mut all = vec![0u8; want.len() + 100];
        assert_eq!(
            read_full_at(&gz, 0, &mut all).unwrap(),
            want.len(),
            "{name}"
        );
        assert!(all[..want.len()] == want[..], "{name}");
        for _ in 0..200 {
            let off = rng.gen_range(0..want.len() as u64 + 10);
            let len = rng.gen_range(0..200_000usize);
            let mut b = vec![0u8; len];
            let n = read_full_at(&gz, off, &mut b).unwrap();
            let end = (off as usize + len).min(want.len()).max(off as usize);
            let exp = want.get(off as usize..end).unwrap_or(&[]);
            assert_eq!(n, exp.len(), "{name} {off}+{len}");
            assert!(b[..n] == *exp, "{name} {off}+{len}");
        }
    }
}

#[test]
fn concurrent_readers_get_the_right_bytes() {
    let want = Arc::new(plain("layer.tar.gz"));
    let gz = Arc::new(
        GzFile::open(
            Arc::new(tv("layer.tar.gz")),
            Box::new(tv("gz.span64k.meta")),
        )
        .unwrap(),
    );
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (gz, want) = (gz.clone(), want.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(t);
                for _ in 0..100 {
                    let off = rng.gen_range(0..want.len() as u64);
                    let mut b = vec![0u8; 8192];
                    let n = read_full_at(&*gz, off, &mut b).unwrap();
                    assert!(b[..n] == want[off as usize..off as usize + n]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_multi_member_stream_is_inflated_whole_and_indexed_for_its_first_member() {
    let a = tv("layer.tar.gz");
    let b = tv("text.bin.gz");
    let both = [a.clone(), b.clone()].concat();
    let (stream, bytes, s) = index(&both, IndexOptions::default());
    assert_eq!(
        stream,
        [plain("layer.tar.gz"), plain("text.bin.gz")].concat()
    );
    assert_eq!(s.members, 2);
    assert_eq!(s.gzip_size, both.len() as u64);
    assert_eq!(s.first_member_size, 1054720);
    let gz = GzFile::open(Arc::new(both), Box::new(bytes)).unwrap();
    assert_eq!(
        gz.size().unwrap(),
        1054720,
        "the index covers the first member"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let blob = tv("layer.tar.gz");
    let idx = tv("gz.span64k.meta");
    let open = |b: Vec<u8>, i: Vec<u8>| GzFile::open(Arc::new(b), Box::new(i)).map(|_| ());
    // The index of another blob.
    let e = open(tv("text.bin.gz"), idx.clone()).unwrap_err();
    assert!(
        e.to_string().contains("made for a 264913-byte gzip blob"),
        "{e}"
    );
    // Truncated, flipped header byte, bad magic.
    let e = open(blob.clone(), idx[..idx.len() - 1].to_vec()).unwrap_err();
    assert!(e.to_string().contains("says the index is"), "{e}");
    let mut bad = idx.clone();
    bad[40] ^= 1;
    assert!(open(blob.clone(), bad)
        .unwrap_err()
        .to_string()
        .contains("CRC"));
    let mut bad = idx.clone();
    bad[0] = b'x';
    assert!(open(blob.clone(), bad)
        .unwrap_err()
        .to_string()
        .contains("bad magic"));
    assert!(open(blob.clone(), vec![]).is_err());
    // A damaged table.
    let mut bad = idx.clone();
    let n = bad.len();
    bad[n - 10] ^= 0x55;
    assert!(open(blob.clone(), bad)
        .unwrap_err()
        .to_string()
        .contains("gzip index table"));
    // A damaged window: opening works, reading from that checkpoint fails clearly.
    let mut bad = idx.clone();
    bad[385 + 100] ^= 0x55;
    let gz = GzFile::open(Arc::new(blob.clone()), Box::new(bad)).unwrap();
    let mut b = [0u8; 16];
    let e = gz.read_at(450_000, &mut b).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    // A damaged or truncated blob.
    let mut bad = blob.clone();
    bad[40_000] ^= 0xff;
    bad[40_001] ^= 0xff;
    let gz = GzFile::open(Arc::new(bad), Box::new(tv("gzip.meta"))).unwrap();
    let mut all = vec![0u8; 1054720];
    let r = read_full_at(&gz, 0, &mut all);
    assert!(
        r.is_err() || all != plain("layer.tar.gz"),
        "damage went unnoticed"
    );
    let (_, _, s) = index(&blob, IndexOptions::default());
    let mut ix = Indexing::new(
        &blob[..100_000],
        Cursor::new(Vec::new()),
        IndexOptions::default(),
    )
    .unwrap();
    let e = ix.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("inside a gzip member"), "{e}");
    assert_eq!(s.members, 1);
    let mut ix = Indexing::new(
        &b"not gzip at all"[..],
        Cursor::new(Vec::new()),
        IndexOptions::default(),
    )
    .unwrap();
    assert!(ix.read_to_end(&mut Vec::new()).is_err());
}

#[test]
fn the_fuzz_body_survives_mutated_vectors() {
    let with_len = |index: &[u8], blob: &[u8]| {
        [&[0u8][..], &(index.len() as u32).to_le_bytes(), index, blob].concat()
    };
    let seeds = [
        with_len(&tv("gz.span64k.meta"), &tv("layer.tar.gz")),
        with_len(&tv("text.gz.span64k.meta"), &tv("text.bin.gz")),
        [&[1u8][..], &tv("text.bin.gz")[..20_000]].concat(),
        [&[1u8][..], &tv("layer.tar.gz")].concat(),
        [&[2u8][..], &tv("ext4.fs.meta")].concat(),
        [&[2u8][..], &tv("l2.meta.lsmt")].concat(),
    ];
    for (i, seed) in seeds.iter().enumerate() {
        overlaybd_turbooci::fuzz::turbooci(seed);
        for m in test_support::mutations(seed, 60, i as u64 + 1) {
            overlaybd_turbooci::fuzz::turbooci(&m);
        }
    }
}

#[test]
fn checkpoints_may_share_an_uncompressed_offset() {
    // overlaybd's filter can emit two checkpoints at one uncompressed offset (an empty block,
    // then one longer than the span); its reader takes the last, and so do we.
    let mut w = overlaybd_turbooci::gzindex::IndexWriter::new(
        Cursor::new(Vec::new()),
        65536,
        DictCompression::Zlib(6),
    )
    .unwrap();
    let zeros = [0u8; 32768];
    w.add(0, 10, 0, &zeros).unwrap();
    w.add(0, 15, 3, &zeros).unwrap();
    w.add(70_000, 900, 0, &zeros).unwrap();
    let (c, _) = w.finish(1000, 100_000).unwrap();
    let ix = GzIndex::open(Box::new(c.into_inner()), Some(1000)).unwrap();
    assert_eq!(ix.checkpoint(0).en_pos, 15);
    assert_eq!(ix.checkpoint(69_999).en_pos, 15);
    assert_eq!(ix.checkpoint(70_000).en_pos, 900);
}
