//! Hostile and damaged files: each gives a clear error naming what and where; none panics,
//! hangs, allocates without bound, or returns wrong bytes.

mod common;

use common::*;
use zfile::header::{self, off, HeaderTrailer, HT_SLOT};

use zfile::{Error, OpenOptions, WriterOptions, ZFile};

fn small_file(integrity: bool) -> (Vec<u8>, Vec<u8>, zfile::Summary) {
    let data: Vec<u8> = (0..20_000u32)
        .map(|i| (i % 253) as u8 ^ (i >> 9) as u8)
        .collect();
    let (file, summary) = compress(
        &data,
        WriterOptions {
            integrity,
            ..Default::default()
        },
    );
    (data, file, summary)
}

/// Rewrites a field of the trailer and fixes its digest, as a careful forger would.
fn patch_trailer(file: &mut [u8], f: impl FnOnce(&mut HeaderTrailer)) {
    let at = file.len() - HT_SLOT;
    let slot: &mut [u8; HT_SLOT] = (&mut file[at..]).try_into().unwrap();
    let mut ht = HeaderTrailer::decode(slot).unwrap();
    f(&mut ht);
    *slot = ht.encode();
}

fn open_err(file: &[u8]) -> String {
    ZFile::open(file).unwrap_err().to_string()
}

#[test]
fn truncated_at_every_length() {
    for integrity in [false, true] {
        let (data, file, _) = small_file(integrity);
        for len in 0..file.len() {
            let cut = &file[..len];
            match ZFile::open(cut) {
                Err(_) => {}
                Ok(z) => {
                    // Only possible if what remains still parses; then reads must never lie.
                    let mut out = vec![0u8; data.len()];
                    if let Ok(n) = z.read_at(0, &mut out) {
                        assert!(out[..n] == data[..n], "length {len}");
                    }
                }
            }
        }
        assert!(open_err(&file[..0]).contains("truncated"));
        assert!(
            open_err(&file[..600]).contains("truncated")
                || open_err(&file[..600]).contains("trailer")
        );
    }
}

#[test]
fn header_form_truncated_blocks_error_on_read() {
    use std::io::Write;
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
    let mut w = zfile::ZFileWriter::new(std::io::Cursor::new(Vec::new()), WriterOptions::default())
        .unwrap();
    w.write_all(&data).unwrap();
    let file = w.finish_with_header().unwrap().0.into_inner();
    // Keep the header and half the blocks; the header alone locates the (now missing) index.
    let z = ZFile::open(&file[..2000]);
    assert!(z.unwrap_err().to_string().contains("truncated"));
}

#[test]
fn wrong_magic_and_garbage() {
    let (_, file, _) = small_file(false);
    let mut f = file.clone();
    f[0] = b'X';
    assert!(open_err(&f).contains("not a zfile"));
    let garbage: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert!(open_err(&garbage).contains("not a zfile"));
    // A trailer that is not one.
    let mut f = file.clone();
    let n = f.len();
    f[n - HT_SLOT] ^= 0xff;
    assert!(open_err(&f).contains("no trailer"), "{}", open_err(&f));
}

#[test]
fn damaged_header_or_trailer_is_caught_by_digest() {
    let (_, file, _) = small_file(false);
    let mut f = file.clone();
    f[300] = 1; // unused bytes of the header are covered by its digest
    assert!(open_err(&f).contains("header digest mismatch"));
    let mut f = file.clone();
    let n = f.len();
    f[n - 512 + off::ORIGINAL_FILE_SIZE] ^= 1;
    assert!(open_err(&f).contains("trailer digest mismatch"));
    let mut f = file.clone();
    f[HT_SLOT + 3] ^= 1; // a data byte: the index crc does not cover it, the block crc does
    assert!(ZFile::open(&f[..]).is_ok());
}

#[test]
fn inconsistent_fields_are_named() {
    let (_, file, _) = small_file(false);
    type Patch = Box<dyn Fn(&mut HeaderTrailer)>;
    let cases: Vec<(Patch, &str)> = vec![
        (
            Box::new(|h| h.index_offset = 1 << 40),
            "index runs into the trailer",
        ),
        (Box::new(|h| h.index_offset = 100), "inside the header"),
        (
            Box::new(|h| h.index_size = 1 << 40),
            "more than 1,000,000,000",
        ),
        (
            Box::new(|h| {
                h.index_size = 999_999_999;
                h.original_file_size = 999_999_999 * 4096
            }),
            "index runs into",
        ),
        (Box::new(|h| h.original_file_size += 5000), "entries, but"),
        (Box::new(|h| h.block_size = 3000), "block_size"),
        (Box::new(|h| h.block_size = 1 << 20), "block_size"),
        (Box::new(|h| h.algo = 0), "unknown algorithm"),
        (Box::new(|h| h.algo = 9), "unknown algorithm"),
        (Box::new(|h| h.use_dict = 1), "dictionaries"),
        (Box::new(|h| h.index_crc ^= 1), "index crc mismatch"),
        (Box::new(|h| h.flags &= !header::flags::SEALED), "sealed"),
    ];
    for (patch, want) in cases {
        let mut f = file.clone();
        patch_trailer(&mut f, patch);
        let e = open_err(&f);
        assert!(e.contains(want), "want {want:?}, got {e}");
    }
}

#[test]
fn bad_index_entries_are_named() {
    let (_, file, summary) = small_file(false);
    let io = summary.index_offset as usize;
    for (entry, value, want) in [
        (2usize, 0u32, "entry 2"),
        (1, 4, "entry 1"),
        (0, 1 << 30, "entry 0"),
        (3, 0xFFFF_FFFF, "entry 3"),
    ] {
        let mut f = file.clone();
        f[io + 4 * entry..io + 4 * entry + 4].copy_from_slice(&value.to_le_bytes());
        let crc = zfile::crc::crc32c_raw(0, &f[io..io + 4 * summary.blocks as usize]);
        patch_trailer(&mut f, |h| h.index_crc = crc);
        let e = open_err(&f);
        assert!(e.contains(want), "want {want:?}, got {e}");
    }
    // Entries that add up past the index.
    let mut f = file.clone();
    f[io..io + 4].copy_from_slice(&(60_000u32).to_le_bytes());
    let crc = zfile::crc::crc32c_raw(0, &f[io..io + 4 * summary.blocks as usize]);
    patch_trailer(&mut f, |h| h.index_crc = crc);
    assert!(open_err(&f).contains("outside") || open_err(&f).contains("past the index"));
}

#[test]
fn block_that_decompresses_to_the_wrong_size() {
    // 8000 bytes in 4 KiB blocks: the last block holds 3904. Claim 8192 (still two blocks):
    // the last block now decompresses short.
    let data = vec![3u8; 8000];
    let (mut f, _) = compress(&data, WriterOptions::default());
    patch_trailer(&mut f, |h| h.original_file_size = 8192);
    let z = ZFile::open(&f[..]).unwrap();
    let e = z.read_at(0, &mut [0u8; 8192]).unwrap_err().to_string();
    assert!(
        e.contains("zfile block 1") && e.contains("decompressed to 3904 bytes, expected 4096"),
        "{e}"
    );
    // And claiming less: the block no longer fits its buffer.
    let (mut f, _) = compress(&data, WriterOptions::default());
    patch_trailer(&mut f, |h| h.original_file_size = 4097);
    let z = ZFile::open(&f[..]).unwrap();
    let e = z.read_at(0, &mut [0u8; 8192]).unwrap_err().to_string();
    assert!(e.contains("zfile block 1") && e.contains("lz4"), "{e}");
}

#[test]
fn index_size_claims_do_not_allocate_ahead_of_data() {
    // A header-form file claiming 900 million blocks of a tiny file: the reader must fail
    // at the end of data without having allocated 3.6 GB.
    let mut slot = HeaderTrailer::new(
        header::flags::HEADER
            | header::flags::DATA_FILE
            | header::flags::HEADER_OVERWRITE
            | header::flags::CALC_DIGEST,
        zfile::Algorithm::Lz4,
        0,
        4096,
        true,
    );
    slot.index_offset = 512;
    slot.index_size = 900_000_000;
    slot.original_file_size = 900_000_000 * 4096;
    let mut f = slot.encode().to_vec();
    f.extend_from_slice(&[0u8; 4096]);
    let e = ZFile::open(&f[..]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Truncated {
                what: "zfile index",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn errors_map_to_io_kinds() {
    use std::io::ErrorKind;
    let (data, mut file, _) = small_file(false);
    let ext = ZFile::open(&file[..]).unwrap().block_extent(0).unwrap();
    file[ext.offset as usize] ^= 1;
    let z = ZFile::open(&file[..]).unwrap();
    let e = zfile::ReadAt::read_at(&z, 0, &mut vec![0u8; data.len()]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.to_string().contains("crc mismatch"));
}

/// A file with the integrity table, in the trailer form or the header-rewrite form.
fn table_file(data: &[u8], header_form: bool) -> (Vec<u8>, zfile::Root) {
    use std::io::Write;
    let opts = WriterOptions {
        integrity: true,
        ..Default::default()
    };
    let mut w = zfile::ZFileWriter::new(std::io::Cursor::new(Vec::new()), opts).unwrap();
    w.write_all(data).unwrap();
    let (c, s) = if header_form {
        w.finish_with_header().unwrap()
    } else {
        w.finish().unwrap()
    };
    (c.into_inner(), s.integrity_root.unwrap())
}

/// Opens with the trusted root and reads everything; true when anything was refused.
fn refused(file: &[u8], root: zfile::Root, len: usize) -> bool {
    let opts = OpenOptions {
        trusted_root: Some(root),
        ..Default::default()
    };
    match ZFile::open_with(file, &opts) {
        Err(_) => true,
        Ok(z) => z.read_at(0, &mut vec![0u8; len]).is_err(),
    }
}

#[test]
fn trusted_root_tamper_detection_covers_every_byte() {
    // With a trusted root, changing any byte of the file, in either form, is detected at open
    // or on the read that touches it; so is appending or removing bytes.
    let data: Vec<u8> = (0..9000u32).map(|i| (i % 199) as u8).collect();
    for header_form in [false, true] {
        let (file, root) = table_file(&data, header_form);
        assert!(!refused(&file, root, data.len()));
        for i in 0..file.len() {
            for flip in [0x01u8, 0x80] {
                let mut f = file.clone();
                f[i] ^= flip;
                assert!(
                    refused(&f, root, data.len()),
                    "form {header_form}: byte {i} ^ {flip:#x} went unnoticed"
                );
            }
        }
        let mut longer = file.clone();
        longer.extend_from_slice(&[0u8; 512]);
        assert!(
            refused(&longer, root, data.len()),
            "form {header_form}: appended bytes"
        );
        assert!(
            refused(&file[..file.len() - 1], root, data.len()),
            "form {header_form}: cut"
        );
    }
}

#[test]
fn a_forger_who_fixes_slot_crcs_is_still_caught() {
    // Slot digests are CRCs anyone can recompute: changing unused slot bytes and fixing the
    // digest must still be refused when the file has a table.
    let data = vec![9u8; 20_000];
    for header_form in [false, true] {
        let (file, root) = table_file(&data, header_form);
        let n = file.len();
        for (slot_at, byte) in [
            (0usize, 300usize),
            (0, header::off::LEVEL),
            (n - 512, 100),
            (n - 512, header::off::RESERVED_0),
        ] {
            let mut f = file.clone();
            f[slot_at + byte] ^= 0x5a;
            let slot: &mut [u8; HT_SLOT] = (&mut f[slot_at..slot_at + HT_SLOT]).try_into().unwrap();
            let d = header::slot_digest(slot);
            slot[off::DIGEST..off::DIGEST + 4].copy_from_slice(&d.to_le_bytes());
            assert!(header::digest_matches(slot));
            assert!(
                refused(&f, root, data.len()),
                "form {header_form}: slot at {slot_at} byte {byte}"
            );
            // Without a trusted root the table still ties the slots down.
            assert!(
                ZFile::open(&f[..]).is_err(),
                "form {header_form}: slot at {slot_at} byte {byte}"
            );
        }
    }
}

#[test]
fn the_table_can_be_ignored_when_no_root_is_given() {
    let data = vec![1u8; 10_000];
    let (mut file, _) = table_file(&data, false);
    let table_at = ZFile::open(&file[..]).unwrap().info().index_offset as usize + 4 * 3;
    file[table_at + 100] ^= 1; // damage the table's reserved bytes
    assert!(ZFile::open(&file[..])
        .unwrap_err()
        .to_string()
        .contains("integrity"));
    let opts = OpenOptions {
        ignore_table: true,
        ..Default::default()
    };
    let z = ZFile::open_with(&file[..], &opts).unwrap();
    assert_eq!(z.info().verification, zfile::Verification::Crc);
    assert!(read_all(&z) == data);
    // A trusted root overrides ignore_table.
    let opts = OpenOptions {
        ignore_table: true,
        trusted_root: Some(zfile::Root([0; 32])),
    };
    assert!(ZFile::open_with(&file[..], &opts).is_err());
}

#[test]
fn hostile_index_offset_does_not_overflow() {
    let mut slot = HeaderTrailer::new(
        header::flags::HEADER
            | header::flags::DATA_FILE
            | header::flags::HEADER_OVERWRITE
            | header::flags::CALC_DIGEST,
        zfile::Algorithm::Lz4,
        0,
        4096,
        true,
    );
    slot.index_size = 2;
    slot.original_file_size = 8000;
    for io in [u64::MAX, u64::MAX - 4, u64::MAX - 7, 1 << 63] {
        slot.index_offset = io;
        let f = slot.encode().to_vec();
        let e = ZFile::open(&f[..]).unwrap_err().to_string();
        assert!(e.contains("index"), "{e}");
    }
}

#[test]
fn is_zfile_checks_the_header_digest() {
    let (_, file, _) = small_file(false);
    assert!(zfile::is_zfile(&file));
    let mut f = file.clone();
    f[200] ^= 1;
    assert!(!zfile::is_zfile(&f));
    assert!(!zfile::is_zfile(&file[..100]));
}

#[test]
fn a_forger_who_fixes_every_checksum_is_stopped_by_the_trusted_root() {
    let data = vec![0x55u8; 12_000];
    let (file, summary) = compress(
        &data,
        WriterOptions {
            integrity: true,
            ..Default::default()
        },
    );
    let trusted = summary.integrity_root.unwrap();
    // The forger replaces the whole content and rebuilds a self-consistent file, table and all.
    let evil = vec![0x66u8; 12_000];
    let (forged, forged_summary) = compress(
        &evil,
        WriterOptions {
            integrity: true,
            ..Default::default()
        },
    );
    assert_eq!(forged.len(), file.len());
    // Without a trusted root it opens (the table is self-consistent) ...
    let z = ZFile::open(&forged[..]).unwrap();
    assert_eq!(
        z.info().verification,
        zfile::Verification::TableSelfConsistent
    );
    assert_eq!(z.info().integrity_root, forged_summary.integrity_root);
    // ... with the trusted root it is refused.
    let e = ZFile::open_with(
        &forged[..],
        &OpenOptions {
            trusted_root: Some(trusted),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("root mismatch"), "{e}");
}

#[test]
fn trusted_root_requires_a_table() {
    let (_, file, _) = small_file(false);
    let opts = OpenOptions {
        trusted_root: Some(zfile::Root([1; 32])),
        ..Default::default()
    };
    let e = ZFile::open_with(&file[..], &opts).unwrap_err().to_string();
    assert!(e.contains("no integrity table"), "{e}");
}

#[test]
fn fuzz_bodies_survive_mutated_vectors() {
    // A deterministic taste of what the fuzz targets do, run on every test run.
    let mut seeds = vec![
        vector("a.lz4.bs4.zfile")[..40_000].to_vec(),
        vector("zf.small.zstd.bs4.zfile"),
        vector("e.lz4.bs4.zfile"),
    ];
    seeds.push(small_file(true).1);
    seeds.push(zfile::envelope::pax_prefix(100).to_vec());
    let mut x: u32 = 12345;
    for seed in &seeds {
        for _ in 0..300 {
            let mut f = seed.clone();
            for _ in 0..1 + x % 4 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let i = (x as usize >> 3) % f.len();
                f[i] = (x >> 24) as u8;
            }
            zfile::testutil::fuzz_open_and_read(&f);
            zfile::testutil::fuzz_envelope(&f);
        }
    }
}
