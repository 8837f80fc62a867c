//! Round trips over random data and settings; reads through misbehaving sources.

mod common;

use std::io::Write;

use common::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use zfile::testutil::{DamagedCache, FaultySource};
use zfile::{Algorithm, OpenOptions, Verification, WriterOptions, ZFile, ZFileWriter};

/// Data with compressible and incompressible stretches.
fn mixed(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let run = rng.gen_range(1..20_000).min(len - out.len());
        match rng.gen_range(0..3) {
            0 => out.extend(std::iter::repeat_n(rng.gen::<u8>(), run)),
            1 => out.extend((0..run).map(|_| rng.gen::<u8>())),
            _ => out.extend((0..run).map(|i| b"overlaybd zfile "[i % 16])),
        }
    }
    out
}

fn opts_strategy() -> impl Strategy<Value = WriterOptions> {
    (
        prop_oneof![Just(Algorithm::Lz4), Just(Algorithm::Zstd)],
        prop_oneof![
            Just(4096u32),
            Just(8192),
            Just(16384),
            Just(32768),
            Just(65536)
        ],
        any::<bool>(),
        any::<bool>(),
        1usize..4,
        prop_oneof![Just(None), Just(Some(1)), Just(Some(7))],
    )
        .prop_map(
            |(algorithm, block_size, block_crc, integrity, threads, level)| WriterOptions {
                algorithm,
                block_size,
                block_crc,
                integrity,
                threads,
                level: if algorithm == Algorithm::Zstd {
                    level
                } else {
                    None
                },
                allow_overlaybd_unreadable: true,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_and_random_reads(
        opts in opts_strategy(),
        len in 0usize..300_000,
        seed in any::<u64>(),
        header_form in any::<bool>(),
        chunked_writes in any::<bool>(),
    ) {
        let data = mixed(len, seed);
        let mut w = ZFileWriter::new(std::io::Cursor::new(Vec::new()), opts.clone()).unwrap();
        if chunked_writes {
            for c in data.chunks(1 + (seed % 9000) as usize) {
                w.write_all(c).unwrap();
            }
        } else {
            w.write_all(&data).unwrap();
        }
        let (file, summary) = if header_form { w.finish_with_header().unwrap() } else { w.finish().unwrap() };
        let file = file.into_inner();
        prop_assert_eq!(summary.file_len, file.len() as u64);
        prop_assert_eq!(summary.raw_len, data.len() as u64);
        // Settings do not change the bytes' layout between thread counts.
        let single = compress(&data, WriterOptions { threads: 1, ..opts.clone() }).0;
        if !header_form {
            prop_assert!(single == file, "threaded output differs");
        } else {
            prop_assert!(single[512..] == file[512..], "threaded output differs");
        }
        let open = OpenOptions { trusted_root: summary.integrity_root, ..Default::default() };
        let z = ZFile::open_with(file, &open).unwrap();
        prop_assert_eq!(z.info().verification, if opts.integrity { Verification::Authenticated } else { Verification::Crc });
        prop_assert!(read_all(&z) == data);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 0x5eed);
        for _ in 0..50 {
            let off = rng.gen_range(0..=data.len() as u64 + 10);
            let n = rng.gen_range(0..100_000usize);
            let mut buf = vec![0u8; n];
            let got = z.read_at(off, &mut buf).unwrap();
            let lo = (off as usize).min(data.len());
            let hi = (off as usize).saturating_add(n).min(data.len());
            prop_assert_eq!(got, hi - lo);
            prop_assert!(buf[..got] == data[lo..hi]);
        }
    }
}

#[test]
fn threaded_output_is_identical_across_many_chunks() {
    // Several 512 KiB chunks in flight at once, both codecs, odd thread counts.
    let data = mixed(5 << 20, 11);
    for algorithm in [Algorithm::Lz4, Algorithm::Zstd] {
        for integrity in [false, true] {
            let opts = WriterOptions {
                algorithm,
                integrity,
                ..Default::default()
            };
            let single = compress(&data, opts.clone());
            for threads in [2, 3, 5] {
                let multi = compress(
                    &data,
                    WriterOptions {
                        threads,
                        ..opts.clone()
                    },
                );
                assert!(multi.0 == single.0, "{algorithm} threads {threads}");
                assert_eq!(multi.1.integrity_root, single.1.integrity_root);
            }
        }
    }
}

#[test]
fn many_threads_read_one_file() {
    let data = mixed(3 << 20, 9);
    let (file, _) = compress(
        &data,
        WriterOptions {
            algorithm: Algorithm::Zstd,
            ..Default::default()
        },
    );
    let z = ZFile::open(file).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (z, data) = (&z, &data);
            s.spawn(move || {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(t);
                for _ in 0..500 {
                    let off = rng.gen_range(0..data.len());
                    let n = rng.gen_range(1..20_000).min(data.len() - off);
                    let mut buf = vec![0u8; n];
                    assert_eq!(z.read_at(off as u64, &mut buf).unwrap(), n);
                    assert!(buf == data[off..off + n]);
                }
            });
        }
    });
}

#[test]
fn short_reads_from_the_source_are_fine() {
    let data = mixed(200_000, 3);
    for integrity in [false, true] {
        let (file, _) = compress(
            &data,
            WriterOptions {
                integrity,
                ..Default::default()
            },
        );
        for chunk in [1, 7, 512, 4099] {
            let z = ZFile::open(FaultySource::new(&file[..], chunk, None)).unwrap();
            assert!(read_all(&z) == data, "chunk {chunk}");
        }
    }
}

#[test]
fn a_failing_source_gives_errors_not_panics() {
    let data = mixed(100_000, 4);
    let (file, _) = compress(
        &data,
        WriterOptions {
            integrity: true,
            ..Default::default()
        },
    );
    // Count the calls a clean open + full read makes, then fail each one in turn.
    let probe = FaultySource::new(&file[..], 3000, None);
    let z = ZFile::open(&probe).unwrap();
    read_all(&z);
    let calls = probe.calls();
    assert!(calls > 10);
    for n in 0..calls {
        let src = FaultySource::new(&file[..], 3000, Some(n));
        let result = ZFile::open(&src).and_then(|z| {
            let mut out = vec![0u8; data.len()];
            z.read_at(0, &mut out).map(|_| out)
        });
        match result {
            Err(e) => assert!(e.to_string().contains("injected failure"), "call {n}: {e}"),
            Ok(out) => panic!(
                "call {n} failed but the read succeeded ({} bytes)",
                out.len()
            ),
        }
    }
}

#[test]
fn a_bad_cached_block_is_fetched_again_from_the_origin() {
    let data = mixed(100_000, 5);
    for integrity in [false, true] {
        let (file, _) = compress(
            &data,
            WriterOptions {
                integrity,
                ..Default::default()
            },
        );
        let z = ZFile::open(&file[..]).unwrap();
        let ext = z.block_extent(3).unwrap();
        // The cache holds a damaged copy of block 3; the origin is right.
        let cache = DamagedCache::new(&file[..], vec![(ext.offset + 1, 2)]);
        let z = ZFile::open(&cache).unwrap();
        assert!(read_all(&z) == data);
        assert_eq!(cache.discards(), 1);
    }
}

#[test]
fn bad_cached_metadata_is_read_again_from_the_origin() {
    let data = mixed(100_000, 7);
    for integrity in [false, true] {
        let (file, _) = compress(
            &data,
            WriterOptions {
                integrity,
                ..Default::default()
            },
        );
        let len = file.len() as u64;
        let z = ZFile::open(&file[..]).unwrap();
        let index_at = z.info().index_offset;
        // Header, index and trailer each damaged in the cache; the origin is right.
        for damaged in [(100, 1), (index_at + 5, 1), (len - 400, 1)] {
            let cache = DamagedCache::new(&file[..], vec![damaged]);
            let z = ZFile::open(&cache).unwrap_or_else(|e| panic!("{damaged:?}: {e}"));
            assert!(read_all(&z) == data);
            assert!(cache.discards() > 0, "{damaged:?}");
        }
        // Bad at the origin too: still an error.
        let mut bad = file.clone();
        bad[100] ^= 1;
        let cache = DamagedCache::new(&bad[..], vec![]);
        assert!(ZFile::open(&cache).is_err());
        // A failing source is not retried.
        let e = ZFile::open(FaultySource::new(&file[..], 1 << 20, Some(0))).unwrap_err();
        assert!(matches!(e, zfile::Error::Io { .. }), "{e}");
    }
}

#[test]
fn a_block_bad_at_the_origin_is_an_error_naming_it() {
    let data = mixed(100_000, 6);
    for integrity in [false, true] {
        let (mut file, _) = compress(
            &data,
            WriterOptions {
                integrity,
                ..Default::default()
            },
        );
        let ext = ZFile::open(&file[..]).unwrap().block_extent(5).unwrap();
        file[ext.offset as usize + 2] ^= 0x10;
        let z = ZFile::open(&file[..]).unwrap();
        let e = z
            .read_at(0, &mut vec![0u8; data.len()])
            .unwrap_err()
            .to_string();
        let want = format!("zfile block 5 at offset {:#x}", ext.offset);
        assert!(e.starts_with(&want), "{e}");
        assert!(e.contains(if integrity { "blake3" } else { "crc" }), "{e}");
        // Blocks before it still read.
        let mut ok = vec![0u8; 5 * 4096];
        assert_eq!(z.read_at(0, &mut ok).unwrap(), ok.len());
        assert!(ok == data[..ok.len()]);
        let mut bad = Vec::new();
        z.verify_blocks(|e| bad.push(e.to_string())).unwrap();
        assert_eq!(bad.len(), 1, "{bad:?}");
    }
}

#[test]
fn writer_refuses_bad_settings_with_reasons() {
    let cases = [
        (
            WriterOptions {
                block_size: 3000,
                ..Default::default()
            },
            "power of two",
        ),
        (
            WriterOptions {
                block_size: 2048,
                ..Default::default()
            },
            "power of two",
        ),
        (
            WriterOptions {
                block_size: 131072,
                allow_overlaybd_unreadable: true,
                ..Default::default()
            },
            "64 KiB",
        ),
        (
            WriterOptions {
                level: Some(5),
                ..Default::default()
            },
            "lz4 has no compression levels",
        ),
        (
            WriterOptions {
                algorithm: Algorithm::Zstd,
                level: Some(99),
                ..Default::default()
            },
            "zstd level 99",
        ),
        (
            WriterOptions {
                threads: 0,
                ..Default::default()
            },
            "threads",
        ),
    ];
    for (opts, want) in cases {
        let e = ZFileWriter::new(Vec::new(), opts).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn zstd_level_is_recorded_and_used() {
    let data = mixed(300_000, 8);
    let zstd = |level| {
        compress(
            &data,
            WriterOptions {
                algorithm: Algorithm::Zstd,
                level,
                ..Default::default()
            },
        )
        .0
    };
    let (fast, best, dflt) = (zstd(Some(1)), zstd(Some(19)), zstd(None));
    assert!(best.len() < fast.len());
    assert_eq!(ZFile::open(&fast[..]).unwrap().info().level, 1);
    assert_eq!(ZFile::open(&dflt[..]).unwrap().info().level, 0);
    assert!(read_all(&ZFile::open(&best[..]).unwrap()) == data);
}
