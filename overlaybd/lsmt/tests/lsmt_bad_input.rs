//! Damaged and hostile layers: clear errors, never a panic or a read of garbage.

mod common;

use overlaybd_lsmt::header::{flags, HeaderTrailer, HT_SPACE};
use overlaybd_lsmt::mapping::{encode_all, Mapping, INVALID_OFFSET};
use overlaybd_lsmt::{ro, RwLayer};

fn committed() -> Vec<u8> {
    std::fs::read(common::vector("d.lsmt")).unwrap()
}

/// Rewrites the index entries of a committed layer (keeping its size).
fn with_index(f: impl FnOnce(&mut Vec<Mapping>)) -> Vec<u8> {
    let mut file = committed();
    let t = HeaderTrailer::decode(&file[file.len() - HT_SPACE..], "t").unwrap();
    let io = t.index_offset as usize;
    let mut maps: Vec<Mapping> =
        overlaybd_lsmt::mapping::decode_all(&file[io..io + 16 * t.index_size as usize]).collect();
    f(&mut maps);
    let raw = encode_all(&maps);
    file[io..io + raw.len()].copy_from_slice(&raw);
    file
}

fn err(file: &[u8]) -> String {
    ro::read_layer(file).unwrap_err().to_string()
}

#[test]
fn unsorted_overlapping_and_out_of_range_extents() {
    let e = err(&with_index(|m| m.swap(0, 2)));
    assert!(e.contains("overlaps or precedes"), "{e}");
    let e = err(&with_index(|m| m[1].offset = m[0].offset + 1));
    assert!(e.contains("overlaps or precedes"), "{e}");
    let e = err(&with_index(|m| m[0].moffset = 2));
    assert!(e.contains("outside the data area"), "{e}");
    let e = err(&with_index(|m| m[2].moffset = 1 << 40));
    assert!(e.contains("outside the data area"), "{e}");
    // Tags on disk are ignored (reset to 0), padding entries dropped.
    let ok = with_index(|m| m[0].tag = 7);
    let (_, maps) = ro::read_layer(&ok[..]).unwrap();
    assert!(maps.iter().all(|m| m.tag == 0) && maps.len() == 7);
}

#[test]
fn bad_header_and_trailer() {
    let mut f = committed();
    f[0] = b'X';
    assert!(err(&f).contains("not an lsmt"));
    let n = committed().len();
    for (patch, want) in [
        (
            Box::new(|t: &mut HeaderTrailer| t.index_size = 200_000_000)
                as Box<dyn Fn(&mut HeaderTrailer)>,
            "exceeds",
        ),
        (
            Box::new(|t: &mut HeaderTrailer| t.index_size = 100_000),
            "does not fit",
        ),
        (
            Box::new(|t: &mut HeaderTrailer| t.index_offset = 1 << 40),
            "does not fit",
        ),
        (
            Box::new(|t: &mut HeaderTrailer| t.index_offset = 100),
            "does not fit",
        ),
        (
            Box::new(|t: &mut HeaderTrailer| t.index_offset += 7),
            "does not fit",
        ),
        (
            Box::new(|t: &mut HeaderTrailer| t.flags = flags::DATA_FILE),
            "sealed",
        ),
        (
            Box::new(|t: &mut HeaderTrailer| t.flags |= flags::HEADER),
            "sealed",
        ),
    ] {
        let mut f = committed();
        let mut t = HeaderTrailer::decode(&f[n - HT_SPACE..], "t").unwrap();
        patch(&mut t);
        f[n - HT_SPACE..].copy_from_slice(&t.encode().unwrap());
        let e = err(&f);
        assert!(e.contains(want), "want {want:?}: {e}");
    }
    // A header that says "index file".
    let mut f = committed();
    let mut h = HeaderTrailer::decode(&f[..HT_SPACE], "h").unwrap();
    h.flags = flags::HEADER;
    f[..HT_SPACE].copy_from_slice(&h.encode().unwrap());
    assert!(err(&f).contains("index file"));
}

#[test]
fn truncated_at_every_length_never_panics() {
    let f = committed();
    for len in (0..f.len()).step_by(97).chain(f.len() - 4200..f.len()) {
        let _ = ro::read_layer(&f[..len]);
    }
    assert!(err(&f[..100]).contains("truncated"));
    // Cut just before the trailer: the last 4096 bytes are not a trailer.
    assert!(err(&f[..f.len() - 512]).contains("trailer"));
}

#[test]
fn a_torn_or_hostile_log_replays_its_good_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (d, i) = (dir.path().join("d"), dir.path().join("i"));
    let l = RwLayer::create(&d, &i, 1 << 20, None, Default::default()).unwrap();
    l.write(0, &[1u8; 4096]).unwrap();
    l.write(8192, &[2u8; 4096]).unwrap();
    drop(l);
    let good = std::fs::read(&i).unwrap();
    // A hostile entry (data far outside the file) followed by a valid-looking one.
    let mut log = good.clone();
    log.extend_from_slice(&Mapping::data(100, 8, 1 << 30).encode());
    log.extend_from_slice(&Mapping::data(200, 8, 8).encode());
    std::fs::write(&i, &log).unwrap();
    let l = RwLayer::open(&d, &i).unwrap();
    assert_eq!(l.mappings().len(), 2);
    drop(l);
    assert_eq!(
        std::fs::read(&i).unwrap(),
        good,
        "the log is cut back to its good prefix"
    );
    // Padding entries (group commit) are skipped, not taken for the end.
    let mut log = good.clone();
    log.extend_from_slice(&Mapping::invalid().encode());
    log.extend_from_slice(&Mapping::data(200, 8, 8).encode());
    std::fs::write(&i, &log).unwrap();
    assert_eq!(RwLayer::open(&d, &i).unwrap().mappings().len(), 3);
    assert_eq!(INVALID_OFFSET, (1 << 50) - 1);
    // Wrong kinds of files (copies, since a layer file cannot be opened twice for writing).
    let (i2, d2) = (dir.path().join("i2"), dir.path().join("d2"));
    std::fs::copy(&i, &i2).unwrap();
    std::fs::copy(&d, &d2).unwrap();
    let e = RwLayer::open(&i2, &i).unwrap_err().to_string();
    assert!(e.contains("data header"), "{e}");
    let e = RwLayer::open(&d, &d2).unwrap_err().to_string();
    assert!(e.contains("index header"), "{e}");
    // The same file twice is refused by the lock.
    let e = RwLayer::open(&d, &d).unwrap_err().to_string();
    assert!(e.contains("in use"), "{e}");
}

#[test]
fn unaligned_and_read_only_requests_are_refused() {
    let s = common::stack(&["d.lsmt"], None);
    let e = s.write_at(0, &[0u8; 512]).unwrap_err().to_string();
    assert!(e.contains("read-only"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let l = RwLayer::create(
        &dir.path().join("d"),
        &dir.path().join("i"),
        1 << 20,
        None,
        Default::default(),
    )
    .unwrap();
    assert!(l
        .write(100, &[0u8; 512])
        .unwrap_err()
        .to_string()
        .contains("multiples of 512"));
    assert!(l
        .trim(0, 100)
        .unwrap_err()
        .to_string()
        .contains("multiples of 512"));
    // Reads at any byte offset work (the plan cuts sectors), and stop at the disk's end.
    let mut b = [0u8; 10];
    assert_eq!(s.read_at((1 << 30) - 5, &mut b).unwrap(), 5);
    assert_eq!(s.read_at(1 << 30, &mut b).unwrap(), 0);
}

#[test]
fn fuzz_bodies_survive_mutated_vectors() {
    let seeds: Vec<Vec<u8>> = ["d.lsmt", "f.upper.lsmt", "e.lz4.bs4.zfile", "d.rw.index"]
        .iter()
        .map(|n| std::fs::read(common::vector(n)).unwrap())
        .collect();
    let mut x: u32 = 7;
    for seed in &seeds {
        for _ in 0..150 {
            let mut f = seed.clone();
            for _ in 0..1 + x % 3 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                // Aim at the structures: the last 8 KiB (index + trailer) and the header.
                let region = if x & 1 == 0 {
                    f.len().saturating_sub(8192)
                } else {
                    0
                };
                let i = region + (x as usize >> 4) % (f.len() - region).min(8192);
                f[i] = (x >> 24) as u8;
            }
            overlaybd_lsmt::fuzz::layer(&f);
            let mut log = (f.len() as u64).to_le_bytes().to_vec();
            log.extend_from_slice(&f[HT_SPACE.min(f.len())..]);
            overlaybd_lsmt::fuzz::log(&log);
        }
    }
}

#[test]
fn writable_layers_guard_their_files_and_ranges() {
    use overlaybd_lsmt::{RwLayer, SparseLayer, Uuid};
    let dir = tempfile::tempdir().unwrap();
    let (d, i) = (dir.path().join("d"), dir.path().join("i"));
    let l = RwLayer::create(&d, &i, 1 << 20, None, Uuid::NIL).unwrap();
    // A second writer is refused while the first holds the layer; a reader too.
    assert!(RwLayer::open(&d, &i)
        .unwrap_err()
        .to_string()
        .contains("in use"));
    assert!(RwLayer::open_read_only(&d, &i)
        .unwrap_err()
        .to_string()
        .contains("in use"));
    // Writes and trims past the virtual size are refused.
    assert!(l
        .write(1 << 20, &[0u8; 512])
        .unwrap_err()
        .to_string()
        .contains("past the virtual size"));
    assert!(l
        .trim((1 << 20) - 512, 1024)
        .unwrap_err()
        .to_string()
        .contains("past the virtual size"));
    l.write(0, &[1u8; 4096]).unwrap();
    drop(l);
    // A read-only open refuses changes and never touches the files.
    let before = (std::fs::read(&d).unwrap(), std::fs::read(&i).unwrap());
    let ro = RwLayer::open_read_only(&d, &i).unwrap();
    assert!(ro
        .write(0, &[0u8; 512])
        .unwrap_err()
        .to_string()
        .contains("read-only"));
    assert!(
        RwLayer::open_read_only(&d, &i).is_ok(),
        "readers share the layer"
    );
    drop(ro);
    assert_eq!(
        before,
        (std::fs::read(&d).unwrap(), std::fs::read(&i).unwrap())
    );
    // Once sealed, the data file can no longer be opened for writing.
    RwLayer::open(&d, &i).unwrap().seal().unwrap();
    let e = RwLayer::open(&d, &i).unwrap_err().to_string();
    assert!(e.contains("sealed"), "{e}");
    // Absurd virtual sizes.
    for v in [0u64, 1000, 1 << 62] {
        let e = RwLayer::create(
            &dir.path().join(format!("x{v}")),
            &dir.path().join(format!("y{v}")),
            v,
            None,
            Uuid::NIL,
        );
        assert!(e.unwrap_err().to_string().contains("virtual size"), "{v}");
        assert!(
            SparseLayer::create(&dir.path().join(format!("s{v}")), v, None, Uuid::NIL).is_err()
        );
    }
}
