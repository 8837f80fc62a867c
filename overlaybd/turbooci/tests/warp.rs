//! Meta layers made by overlaybd's `turboOCI-apply` read back, stacked, as the disks overlaybd
//! itself read (`tests/support/vectors/turbooci/README.md`).

use std::sync::Arc;

use overlaybd_lsmt::testutil::disk_sha256;
use overlaybd_lsmt::{blob, Mapping, RoLayer, Stack, WarpLayer};
use overlaybd_turbooci::GzFile;
use test_support::vectors;
use zfile::ReadAt;

const L1_DISK: &str = "c8a8d9185d662fdba62691c331259323730a3d7f42e0af2c7f81501acead7e86";
const L2_DISK: &str = "6e1b09509d0f58027eb0b6edc374bc5bf80c7ce35504559715275eb9696eb015";
const EROFS_DISK: &str = "f2dbb86862cbe09507e25255937477a3a3fb69c163d20b89cbc15cb00017feb4";

fn tv(name: &str) -> Vec<u8> {
    vectors::read(&format!("turbooci/{name}"))
}

/// The target of layer 1: the gzip blob through one of its indexes, or the plain tar.
fn target1(index: Option<&str>) -> Arc<dyn ReadAt> {
    match index {
        Some(i) => Arc::new(GzFile::open(Arc::new(tv("layer.tar.gz")), Box::new(tv(i))).unwrap()),
        None => Arc::new(vectors::read("g.layer.tar")),
    }
}

fn warp(meta: &str, target: Arc<dyn ReadAt>) -> (Arc<dyn ReadAt>, RoLayer) {
    let (lsmt, _) = blob::open_blob(Arc::new(tv(meta)), &Default::default()).unwrap();
    let (w, ro) = WarpLayer::open(lsmt, target).unwrap();
    (w, ro)
}

#[test]
fn layer_one_reads_back_through_every_form_and_index() {
    for (meta, index) in [
        ("ext4.fs.meta", Some("gzip.meta")),
        ("meta.lsmt", Some("gz.span64k.meta")),
        ("ext4.fs.meta", Some("gz.span256k.raw.meta")),
        ("meta.lsmt", None),
    ] {
        let s = Stack::new(vec![warp(meta, target1(index))], None).unwrap();
        assert_eq!(s.virtual_size(), 1 << 30);
        assert_eq!(disk_sha256(&s), L1_DISK, "{meta} with {index:?}");
    }
}

#[test]
fn layer_two_stacks_on_layer_one() {
    for (l1, l2, index) in [
        ("ext4.fs.meta", "l2.ext4.fs.meta", Some("gzip.meta")),
        ("meta.lsmt", "l2.meta.lsmt", Some("gz.span64k.meta")),
    ] {
        let lowers = vec![
            warp(l1, target1(index)),
            warp(l2, Arc::new(tv("layer2.tar"))),
        ];
        assert_eq!(
            disk_sha256(&Stack::new(lowers, None).unwrap()),
            L2_DISK,
            "{l1} {l2}"
        );
    }
}

#[test]
fn a_native_layer_and_a_warp_layer_stack() {
    // overlaybd's native g.ext4 layer under layer 2's meta layer: every extent the warp layer
    // maps reads as the warp layer has it (metadata from its file, data from the tar), and
    // every other extent as the native layer has it.
    let native = overlaybd_lsmt::testutil::lower(&vectors::path("g.ext4.lsmt"));
    let native_only = Stack::new(vec![native.clone()], None).unwrap();
    let (lsmt, _) = blob::open_blob(Arc::new(tv("l2.ext4.fs.meta")), &Default::default()).unwrap();
    let (w, ro) = WarpLayer::open(lsmt, Arc::new(tv("layer2.tar"))).unwrap();
    let s = Stack::new(vec![native, (w.clone(), ro)], None).unwrap();
    let (mut checked_warp, mut checked_native) = (0, 0);
    for i in 0..w.index().len() {
        let m = w.index().get(i);
        let len = (m.length as usize * 512).min(64 << 10);
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        s.read_at(m.offset * 512, &mut a).unwrap();
        w.read_at(m.offset * 512, &mut b).unwrap();
        assert!(a == b, "extent {m:?}");
        checked_warp += 1;
    }
    let ni = native_only.merged_index();
    for i in 0..ni.len() {
        let m = ni.get(i);
        if w.index().overlapping(m.offset, m.end()).next().is_some() {
            continue;
        }
        let len = (m.length as usize * 512).min(64 << 10);
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        s.read_at(m.offset * 512, &mut a).unwrap();
        native_only.read_at(m.offset * 512, &mut b).unwrap();
        assert!(a == b, "native extent {m:?}");
        checked_native += 1;
    }
    assert!(
        checked_warp >= 20 && checked_native > 0,
        "{checked_warp} {checked_native}"
    );
}

#[test]
fn the_erofs_meta_layer_reads_back() {
    for meta in ["erofs.fs.meta", "erofs.meta.lsmt"] {
        let s = Stack::new(vec![warp(meta, target1(Some("gzip.meta")))], None).unwrap();
        assert_eq!(disk_sha256(&s), EROFS_DISK, "{meta}");
        let mut magic = [0u8; 4];
        s.read_at(1024, &mut magic).unwrap();
        assert_eq!(magic, [0xe2, 0xe1, 0xf5, 0xe0]);
    }
}

#[test]
fn tags_are_read_as_stored_minus_the_smallest() {
    // overlaybd's commit stores tags 0 and 1; a plain layer reader refuses the layer.
    let raw = tv("l2.meta.lsmt");
    let e = overlaybd_lsmt::ro::read_layer(&raw[..])
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the data area"), "{e}");
    let trailer =
        overlaybd_lsmt::HeaderTrailer::decode(&raw[raw.len() - 4096..], "trailer").unwrap();
    let (at, n) = (trailer.index_offset as usize, trailer.index_size as usize);
    let tags = |raw: &[u8]| -> std::collections::BTreeSet<u8> {
        overlaybd_lsmt::mapping::decode_all(&raw[at..at + n * 16])
            .filter(|m| !m.zeroed)
            .map(|m| m.tag)
            .collect()
    };
    assert_eq!(tags(&raw).into_iter().collect::<Vec<_>>(), vec![0, 1]);
    // The same layer with tags counted from 1 and 2 (as an uncommitted warp file on one lower
    // holds them) reads the same disk.
    let mut shifted = raw.clone();
    for i in 0..n {
        let slot = &mut shifted[at + i * 16..at + i * 16 + 16];
        let mut m = Mapping::decode(&(*slot).try_into().unwrap());
        if !m.zeroed && !m.is_invalid() {
            m.tag += 1;
        }
        slot.copy_from_slice(&m.encode());
    }
    assert_eq!(tags(&shifted).into_iter().collect::<Vec<_>>(), vec![1, 2]);
    let layer2 = |bytes: Vec<u8>| {
        let (w, ro) = WarpLayer::open(Arc::new(bytes), Arc::new(tv("layer2.tar"))).unwrap();
        (w as Arc<dyn ReadAt>, ro)
    };
    let lowers = vec![
        warp("ext4.fs.meta", target1(Some("gzip.meta"))),
        layer2(shifted),
    ];
    assert_eq!(disk_sha256(&Stack::new(lowers, None).unwrap()), L2_DISK);
    // A third tag is refused.
    let mut three = raw.clone();
    let mut m = Mapping::decode(three[at..at + 16].try_into().unwrap());
    m.tag = 2;
    three[at..at + 16].copy_from_slice(&m.encode());
    let e = WarpLayer::open(Arc::new(three), Arc::new(tv("layer2.tar"))).unwrap_err();
    assert!(
        e.to_string().contains("only its own file and the target"),
        "{e}"
    );
}

#[test]
fn a_target_shorter_than_the_mappings_is_refused_at_open() {
    let (lsmt, _) = blob::open_blob(Arc::new(tv("meta.lsmt")), &Default::default()).unwrap();
    let short = vectors::read("g.layer.tar")[..500_000].to_vec();
    let e = WarpLayer::open(lsmt, Arc::new(short)).unwrap_err();
    assert!(
        e.to_string()
            .contains("past the end of the 500000-byte target"),
        "{e}"
    );
}

#[test]
fn a_failing_target_fails_the_read() {
    let (lsmt, _) = blob::open_blob(Arc::new(tv("meta.lsmt")), &Default::default()).unwrap();
    let tar = vectors::read("g.layer.tar");
    let faulty = zfile::testutil::FaultySource::new(tar, 100, Some(0));
    let (w, _) = WarpLayer::open(lsmt, Arc::new(faulty)).unwrap();
    // Find a target extent and read it.
    let m: Mapping = (0..w.index().len())
        .map(|i| w.index().get(i))
        .find(|m| m.tag == 1)
        .unwrap();
    let mut b = vec![0u8; 512];
    assert!(w.read_at(m.offset * 512, &mut b).is_err());
}
