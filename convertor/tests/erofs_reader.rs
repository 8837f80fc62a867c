//! `verify`'s EROFS reader on damaged images: a small image made by mkfs.erofs, changed at
//! random, is read to a tree or refused with an error, never a panic (the body of the
//! `erofs_tree` fuzz target).

mod common;

use common::*;

#[test]
fn damaged_erofs_images_are_refused_without_a_panic() {
    if !use_mkfs_erofs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut t = TarBuilder::new();
    t.dir("etc", 0o755)
        .file("etc/hostname", 0o644, b"erofs\n")
        .file("etc/big", 0o600, &vec![7u8; 10_000])
        .link(tar::EntryType::Symlink, "etc/name", "hostname")
        .link(tar::EntryType::Link, "etc/again", "etc/hostname")
        .node(tar::EntryType::Char, "null", 0o666, 1, 3);
    let tar = dir.path().join("l.tar");
    std::fs::write(&tar, t.finish()).unwrap();
    let img = dir.path().join("img");
    run(
        &std::env::var("OBD_MKFS_EROFS").unwrap(),
        &[
            "-b4096",
            "--tar=f",
            "--quiet",
            img.to_str().unwrap(),
            tar.to_str().unwrap(),
        ],
    );
    let seed = std::fs::read(&img).unwrap();
    // The undamaged image reads back.
    let mut disk = convertor::fuzz::MemDisk(seed.clone());
    let tree = convertor::erofs::tree_of_erofs(&mut disk, seed.len() as u64).unwrap();
    assert_eq!(
        tree[&b"etc/name"[..]].target.as_deref(),
        Some(&b"hostname"[..])
    );
    assert_eq!(tree[&b"null"[..]].rdev, Some((1, 3)));
    assert_eq!(tree[&b"etc/big"[..]].size, 10_000);
    assert_eq!(
        tree[&b"etc/again"[..]].link_group.as_deref(),
        Some(&b"etc/again"[..])
    );
    let (mut read, mut refused) = (0, 0);
    for m in test_support::mutations(&seed, 3000, 17) {
        let mut disk = convertor::fuzz::MemDisk(m.clone());
        match convertor::erofs::tree_of_erofs(&mut disk, m.len() as u64) {
            Ok(_) => read += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 0 && read > 0, "{read} read, {refused} refused");
}
