//! overlaybd's own files: we read every one, and our writer reproduces the lz4 ones byte for
//! byte.

mod common;

use common::*;
use zfile::{Algorithm, IndexSource, Verification, WriterOptions, ZFile};

#[test]
fn vectors_are_intact() {
    for (name, sum) in sums() {
        if name == "zf.input.bin" {
            continue; // regenerated, checked in zf_input()
        }
        assert_eq!(sha256_hex(&vector(&name)), sum, "{name}");
    }
    assert_eq!(zf_input().len(), 2_098_386);
    assert_eq!(
        zfile::testutil::gen_input(4097, 102),
        vector("zf.small.input.bin")
    );
}

fn check_reads(name: &str, expected: &[u8], algo: Algorithm, block_size: u32, from: IndexSource) {
    let z = ZFile::open(vector(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let info = z.info().clone();
    assert_eq!(info.algorithm, algo, "{name}");
    assert_eq!(info.block_size, block_size, "{name}");
    assert!(info.block_crc && info.digests_checked, "{name}");
    assert_eq!(info.index_source, from, "{name}");
    assert_eq!(info.verification, Verification::Crc);
    assert_eq!(z.len(), expected.len() as u64);
    assert!(read_all(&z) == expected, "{name} differs from its input");
    // Reads at awkward offsets and lengths, including across block boundaries and the end.
    let len = expected.len() as u64;
    let mut cases = vec![
        (0u64, 1usize),
        (len.saturating_sub(1), 10),
        (len, 5),
        (len + 100, 5),
    ];
    for i in 0..200u64 {
        let off = (i * 7919 * 131 + i * i * 31) % (len + 1);
        cases.push((off, ((i * 977) % 70_000) as usize + 1));
    }
    for (off, n) in cases {
        let mut buf = vec![0xAAu8; n];
        let got = z.read_at(off, &mut buf).unwrap();
        let want = &expected[(off.min(len) as usize)..((off + n as u64).min(len) as usize)];
        assert_eq!(got, want.len(), "{name} read {n} at {off}");
        assert!(&buf[..got] == want, "{name} read {n} at {off}");
    }
}

#[test]
fn reads_every_vector() {
    let input = zf_input();
    check_reads(
        "a.lz4.bs4.zfile",
        input,
        Algorithm::Lz4,
        4096,
        IndexSource::Trailer,
    );
    check_reads(
        "b.zstd.bs4.zfile",
        input,
        Algorithm::Zstd,
        4096,
        IndexSource::Trailer,
    );
    check_reads(
        "c1.lz4.bs16.zfile",
        input,
        Algorithm::Lz4,
        16384,
        IndexSource::Trailer,
    );
    check_reads(
        "zf.small.zstd.bs4.zfile",
        &vector("zf.small.input.bin"),
        Algorithm::Zstd,
        4096,
        IndexSource::Trailer,
    );
    check_reads(
        "zf.empty.lz4.bs4.zfile",
        &[],
        Algorithm::Lz4,
        4096,
        IndexSource::Trailer,
    );
    // overlaybd-commit -z rewrites the header (flags 0x1B): the index is found through it.
    let lsmt = vector("d.lsmt");
    check_reads(
        "e.lz4.bs4.zfile",
        &lsmt,
        Algorithm::Lz4,
        4096,
        IndexSource::Header,
    );
    check_reads(
        "e.zstd.bs4.zfile",
        &lsmt,
        Algorithm::Zstd,
        4096,
        IndexSource::Header,
    );
}

#[test]
fn reads_the_block_overlaybd_cannot() {
    // c3 holds a block of 65,794 compressed bytes (65,798 with its CRC), which overlaybd's
    // fixed 64 KiB buffer rejects; our buffers are sized by the codec's bound, so we read it.
    let z = ZFile::open(vector("c3.lz4.bs64.UNREADABLE.zfile")).unwrap();
    let big = (0..z.info().blocks)
        .map(|i| z.block_extent(i).unwrap().len)
        .max()
        .unwrap();
    assert_eq!(big, 65_798);
    assert!(read_all(&z) == zf_input());
}

#[test]
fn verify_blocks_passes_on_every_vector() {
    for name in [
        "a.lz4.bs4.zfile",
        "b.zstd.bs4.zfile",
        "c1.lz4.bs16.zfile",
        "e.lz4.bs4.zfile",
    ] {
        let z = ZFile::open(vector(name)).unwrap();
        let mut bad = Vec::new();
        let n = z.verify_blocks(|e| bad.push(e.to_string())).unwrap();
        assert_eq!(n, z.info().blocks);
        assert!(bad.is_empty(), "{name}: {bad:?}");
    }
}

fn lz4(block_size: u32) -> WriterOptions {
    WriterOptions {
        algorithm: Algorithm::Lz4,
        block_size,
        ..Default::default()
    }
}

#[test]
fn writer_reproduces_overlaybd_lz4_files_byte_for_byte() {
    let input = zf_input();
    assert!(
        compress(input, lz4(4096)).0 == vector("a.lz4.bs4.zfile"),
        "a.lz4.bs4.zfile"
    );
    assert!(
        compress(input, lz4(16384)).0 == vector("c1.lz4.bs16.zfile"),
        "c1.lz4.bs16.zfile"
    );
    assert!(
        compress(&[], lz4(4096)).0 == vector("zf.empty.lz4.bs4.zfile"),
        "zf.empty"
    );
    let mut w = zfile::ZFileWriter::new(std::io::Cursor::new(Vec::new()), lz4(4096)).unwrap();
    std::io::Write::write_all(&mut w, &vector("d.lsmt")).unwrap();
    let e = w.finish_with_header().unwrap().0.into_inner();
    assert!(
        e == vector("e.lz4.bs4.zfile"),
        "e.lz4 (header rewritten, as overlaybd-commit -z)"
    );
    // Multi-threaded output is the same file.
    let mt = WriterOptions {
        threads: 3,
        ..lz4(4096)
    };
    assert!(
        compress(input, mt).0 == vector("a.lz4.bs4.zfile"),
        "a.lz4 with 3 threads"
    );
    // The 64 KiB file overlaybd itself cannot read: refused by default, identical when allowed.
    let e = zfile::ZFileWriter::new(Vec::new(), lz4(65536))
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlaybd's reader cannot read"), "{e}");
    let allowed = WriterOptions {
        allow_overlaybd_unreadable: true,
        ..lz4(65536)
    };
    assert!(
        compress(input, allowed).0 == vector("c3.lz4.bs64.UNREADABLE.zfile"),
        "c3"
    );
}

#[test]
fn writer_zstd_files_match_overlaybd_layout() {
    // libzstd versions differ in a few bytes of output, so the zstd files are not identical;
    // the header is, and the file reads back.
    let opts = WriterOptions {
        algorithm: Algorithm::Zstd,
        ..Default::default()
    };
    let (ours, _) = compress(zf_input(), opts);
    let theirs = vector("b.zstd.bs4.zfile");
    assert_eq!(&ours[..512], &theirs[..512]);
    let z = ZFile::open(ours).unwrap();
    assert!(read_all(&z) == zf_input());
    let theirs_len = theirs.len() as f64;
    assert!((z.source().len() as f64 - theirs_len).abs() / theirs_len < 0.01);
}

/// Files written before overlaybd's 2023 digest change carry stack garbage: flag bits 6..63,
/// `digest`, `index_crc`, reserved and padding fields, bytes 96..511, and the header's index
/// fields (the header was not rewritten). The flag words below are the ones found in
/// overlaybd's 2021 ext4 base layer. Such a file must read normally.
#[test]
fn tolerates_garbage_left_by_old_writers() {
    use zfile::header::off;
    let mut f = vector("a.lz4.bs4.zfile");
    let n = f.len();
    let mut noise: u32 = 0xdead_beef;
    let mut garbage = |b: &mut [u8]| {
        for x in b {
            noise = noise.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *x = (noise >> 24) as u8;
        }
    };
    for (slot, flags) in [
        (0usize, 0x0000_7FFE_A464_0B43u64),
        (n - 512, 0x0000_7FFE_A464_0B46),
    ] {
        let s = &mut f[slot..slot + 512];
        s[off::FLAGS..off::FLAGS + 8].copy_from_slice(&flags.to_le_bytes());
        garbage(&mut s[off::DIGEST..off::DIGEST + 4]);
        garbage(&mut s[off::INDEX_CRC..off::INDEX_CRC + 4]);
        garbage(&mut s[off::RESERVED_0..off::RESERVED_0 + 4]);
        garbage(&mut s[off::OPT_RESERVED..off::OPT_RESERVED + 4]);
        garbage(&mut s[off::VERIFY + 1..off::VERIFY + 8]);
        garbage(&mut s[79..80]);
        garbage(&mut s[96..512]);
        if slot == 0 {
            garbage(&mut s[off::INDEX_OFFSET..off::ORIGINAL_FILE_SIZE + 8]);
        }
    }
    let z = ZFile::open(&f[..]).unwrap();
    assert!(!z.info().digests_checked);
    assert_eq!(z.info().index_source, IndexSource::Trailer);
    assert!(read_all(&z) == zf_input());
    assert!(zfile::is_zfile(&f));
}
