//! `convert --turbo-oci` through a real registry: the meta image's manifest, config and blobs
//! are what overlaybd's convertor makes; its meta layers over the untouched source layers read
//! as a clean filesystem equal to the source; the same input gives the same digests; a zstd
//! layer becomes a native layer among the meta layers; layers TurboOCI cannot serve are
//! refused with the reason.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::*;
use convertor::convert::{convert, Options};
use convertor::oci::{self, annotation, media, Descriptor, Manifest};
use convertor::progress::Quiet;
use convertor::store::Store;
use convertor::verify::{diff, tree_of_fs, LayerDisk, TurboLayer};

/// Layers: busybox (gzip), host files (gzip), deletions and an opaque directory (a plain tar).
fn layers() -> Vec<(Vec<u8>, bool)> {
    let l0 = busybox_layer();
    let l1 = host_layer(&[
        "usr/share/common-licenses",
        "usr/share/zoneinfo",
        "usr/share/e2fsprogs",
    ]);
    let mut t = TarBuilder::new();
    t.file("etc/.wh.passwd-", 0o644, b"")
        .dir("usr/share/common-licenses", 0o755)
        .file("usr/share/common-licenses/.wh..wh..opq", 0o644, b"")
        .file("usr/share/common-licenses/ONLY-THIS", 0o644, b"only this\n")
        .file("bin/ls", 0o755, b"#!/bin/sh\nexec /bin/busybox ls \"$@\"\n")
        .link(tar::EntryType::Link, "etc/passwd.link", "etc/passwd")
        .file("etc/empty", 0o644, b"")
        .file("etc/motd", 0o644, &vec![b'x'; 300_001]);
    vec![(l0, true), (l1, true), (t.finish(), false)]
}

fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: oci::sha256_digest(bytes),
        size: bytes.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
        artifact_type: None,
    }
}

/// Pushes an image whose layers are gzip'ed or plain as given (`blob` overrides a layer's
/// bytes; a zstd frame gets the zstd media type); returns the manifest's descriptor.
fn push(
    store: &dyn Store,
    tag: &str,
    layers: &[(Vec<u8>, bool)],
    blob: Option<(usize, Vec<u8>)>,
) -> Descriptor {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, (l, z)) in layers.iter().enumerate() {
        diff_ids.push(oci::sha256_digest(l));
        let mut b = if *z { gzip(l) } else { l.clone() };
        if let Some((k, bytes)) = &blob {
            if *k == i {
                b = bytes.clone();
            }
        }
        store.put_blob(&oci::sha256_digest(&b), &b).unwrap();
        descs.push(desc(
            if b.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                media::OCI_LAYER_ZSTD
            } else if *z {
                media::OCI_LAYER_GZIP
            } else {
                media::OCI_LAYER
            },
            &b,
        ));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let cb = serde_json::to_vec(&config).unwrap();
    store.put_blob(&oci::sha256_digest(&cb), &cb).unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: desc(media::OCI_CONFIG, &cb),
        layers: descs,
        subject: None,
        annotations: None,
    };
    let mb = serde_json::to_vec(&m).unwrap();
    store
        .put_manifest(Some(tag), media::OCI_MANIFEST, &mb)
        .unwrap();
    desc(media::OCI_MANIFEST, &mb)
}

fn get(store: &dyn Store, digest: &str) -> Vec<u8> {
    let mut b = Vec::new();
    store.get_blob(digest, &mut b).unwrap();
    b
}

/// The files of a meta blob (a gzip'ed tar), by name, in order.
fn unpack(blob: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            (name, b)
        })
        .collect()
}

fn write(dir: &Path, name: &str, b: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn a_turbo_oci_meta_image_reads_as_its_source() {
    let Some(reg) = Registry::start() else { return };
    let src = reg.remote("turbo/src", true);
    let layers = layers();
    let source = push(&src, "v1", &layers, None);
    let dst = reg.remote("turbo/meta", true);
    let opts = Options {
        turbo_oci: true,
        ..Options::default()
    };
    let (d, conv) = convert(&src, "v1", &dst, Some("v1"), &opts, &Quiet).unwrap();
    assert_eq!(d.media_type, media::OCI_MANIFEST);
    let m = manifest(&dst, "v1");
    let sm = manifest(&src, "v1");
    assert_eq!(m.layers.len(), 3);
    assert_eq!(conv[0].layers.len(), 3);
    assert!(m.subject.is_none() && m.artifact_type.is_none());
    let mut cfg: serde_json::Value = serde_json::from_slice(&get(&dst, &m.config.digest)).unwrap();
    let ids = oci::diff_ids(&cfg).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut turbo = Vec::new();
    for (i, (l, s)) in m.layers.iter().zip(&sm.layers).enumerate() {
        assert_eq!(l.media_type, media::OCI_LAYER_GZIP);
        assert_eq!(l.annotation(annotation::VERSION), Some("0.1.0-turbo.ociv1"));
        assert_eq!(
            l.annotation(annotation::BLOB_DIGEST),
            Some(l.digest.as_str())
        );
        assert_eq!(
            l.annotation(annotation::BLOB_SIZE),
            Some(l.size.to_string().as_str())
        );
        assert_eq!(
            l.annotation(annotation::TURBO_OCI_TARGET_DIGEST),
            Some(s.digest.as_str())
        );
        assert_eq!(
            l.annotation(annotation::TURBO_OCI_TARGET_MEDIA_TYPE),
            Some(s.media_type.as_str())
        );
        assert_eq!(
            l.annotation(annotation::FS_TYPE),
            None,
            "overlaybd sets none on meta layers"
        );
        // The original layer is in the destination repository, untouched.
        assert!(
            dst.has_blob(&s.digest).unwrap(),
            "layer {i}'s original is in the destination"
        );
        let blob = get(&dst, &l.digest);
        // Metadata only: a small fraction of the original (6.8 % and 6.6 % for the first
        // two layers here; overlaybd's table shows 3-6 % for real images).
        if i < 2 {
            assert!(
                (blob.len() as u64) * 10 < s.size,
                "layer {i}: {} of {}",
                blob.len(),
                s.size
            );
        }
        // The diff ID is the digest of the meta blob's uncompressed tar.
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(ids[i], oci::sha256_digest(&tar));
        let files = unpack(&blob);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        let gz = layers[i].1;
        if gz {
            assert_eq!(
                names,
                ["ext4.fs.meta", ".turbo.ociv1", "gzip.meta", "tar.blake3"]
            );
        } else {
            assert_eq!(names, ["ext4.fs.meta", ".turbo.ociv1", "tar.blake3"]);
        }
        // Ours: the tar's digests, rooted in an annotation, naming the index they go with.
        let table = &files.last().unwrap().1;
        let root = l.annotation(annotation::TURBO_OCI_TAR_DIGESTS).unwrap();
        let digests = overlaybd_turbooci::TarDigests::decode(table, root).unwrap();
        assert_eq!(digests.tar_size, layers[i].0.len() as u64);
        let want_index = if gz {
            *blake3::hash(&files[2].1).as_bytes()
        } else {
            [0; 32]
        };
        assert_eq!(digests.index, want_index);
        assert!(files[1].1.is_empty());
        assert!(
            zfile::is_zfile(&files[0].1),
            "a bare ZFile, as overlaybd's -z --turboOCI"
        );
        let meta = write(work.path(), &format!("meta{i}"), &files[0].1);
        let target = write(work.path(), &format!("target{i}"), &get(&dst, &s.digest));
        let index = gz.then(|| write(work.path(), &format!("index{i}"), &files[2].1));
        turbo.push(TurboLayer {
            meta,
            target,
            index,
            digests: None,
        });
    }
    cfg["rootfs"] = serde_json::Value::Null;
    assert_eq!(
        cfg["config"]["Cmd"][0], "/bin/sh",
        "the rest of the config is kept"
    );
    // Every stack of meta layers over the original layers is a clean filesystem, and the
    // whole one equals the source as verify's model applies it.
    for k in 1..=turbo.len() {
        let disk = LayerDisk::open_turbo(&turbo[..k]).unwrap();
        let img = work.path().join(format!("disk{k}"));
        disk.write_sparse(&img).unwrap();
        run("e2fsck", &["-fn", img.to_str().unwrap()]);
        std::fs::remove_file(&img).unwrap();
    }
    let mut model = convertor::model::Model::new();
    for (l, _) in &layers {
        model.apply(l.as_slice()).unwrap();
    }
    let expected = model.finish();
    let mut disk = LayerDisk::open_turbo(&turbo).unwrap();
    let got = tree_of_fs(&mut disk).unwrap();
    assert!(got.len() > 100, "{} entries", got.len());
    let delta = diff(&expected, &got);
    assert!(
        delta.is_empty(),
        "{} differences:\n{}",
        delta.len(),
        delta
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(got[&b"etc/motd"[..]].size, 300_001);
    // `verify` reads the meta image as the daemon does and says what kind it is.
    let v = convertor::verify::verify_images(&src, "v1", &dst, "v1", work.path()).unwrap();
    assert_eq!(v.len(), 1);
    assert!(v[0].differences.is_empty(), "{:?}", v[0].differences);
    assert_eq!(v[0].entries, expected.len());
    assert!(v[0].kind.contains("with tar digests"), "{}", v[0].kind);
    // The same meta image without our annotation (as overlaybd's convertor makes it): it
    // still reads, and verify says what is not checked.
    let mut theirs = m.clone();
    for l in &mut theirs.layers {
        l.annotations
            .as_mut()
            .unwrap()
            .remove(annotation::TURBO_OCI_TAR_DIGESTS);
    }
    let mb = serde_json::to_vec(&theirs).unwrap();
    dst.put_manifest(Some("theirs"), media::OCI_MANIFEST, &mb)
        .unwrap();
    let v = convertor::verify::verify_images(&src, "v1", &dst, "theirs", work.path()).unwrap();
    assert!(v[0].differences.is_empty(), "{:?}", v[0].differences);
    assert!(
        v[0].kind.contains("3 of 3 meta layers without tar digests"),
        "{}",
        v[0].kind
    );
    // The same input gives the same digests.
    let (again, _) = convert(&src, "v1", &dst, Some("v2"), &opts, &Quiet).unwrap();
    assert_eq!(again.digest, d.digest);
    // As a referrer of the source manifest.
    let r = Options {
        referrer: true,
        ..opts.clone()
    };
    convert(&src, "v1", &dst, Some("ref"), &r, &Quiet).unwrap();
    let rm = manifest(&dst, "ref");
    assert_eq!(
        rm.artifact_type.as_deref(),
        Some(annotation::TURBO_OCI_ARTIFACT_TYPE)
    );
    let subject = rm.subject.expect("a subject");
    assert_eq!((subject.digest, subject.size), (source.digest, source.size));
    assert_eq!(rm.layers, m.layers);
}

/// A zstd layer has no gzip index to read it in place (overlaybd refuses such images): it
/// becomes a native layer of the meta image, between meta layers, and the whole reads as the
/// source.
#[test]
fn a_zstd_layer_becomes_a_native_layer_between_meta_layers() {
    let Some(reg) = Registry::start() else { return };
    let src = reg.remote("turbo/zsrc", true);
    let dst = reg.remote("turbo/zmeta", true);
    let layers = layers();
    let z = zstd::encode_all(&layers[1].0[..], 3).unwrap();
    let zdigest = oci::sha256_digest(&z);
    let zlen = z.len() as u64;
    push(&src, "v1", &layers, Some((1, z)));
    let opts = Options {
        turbo_oci: true,
        ..Options::default()
    };
    let (d, _) = convert(&src, "v1", &dst, Some("v1"), &opts, &Quiet).unwrap();
    let m = manifest(&dst, "v1");
    let sm = manifest(&src, "v1");
    assert_eq!(sm.layers[1].media_type, media::OCI_LAYER_ZSTD);
    let cfg: serde_json::Value = serde_json::from_slice(&get(&dst, &m.config.digest)).unwrap();
    let ids = oci::diff_ids(&cfg).unwrap();
    for (i, l) in m.layers.iter().enumerate() {
        let target = l.annotation(annotation::TURBO_OCI_TARGET_DIGEST);
        assert_eq!(
            l.annotation(annotation::BLOB_DIGEST),
            Some(l.digest.as_str())
        );
        if i == 1 {
            // Native: its own data, an uncompressed layer type, diff ID = digest, ext4.
            assert_eq!(target, None);
            assert_eq!(l.media_type, media::OCI_LAYER);
            assert_eq!(ids[1], l.digest);
            assert_eq!(l.annotation(annotation::FS_TYPE), Some("ext4"));
            assert_eq!(l.annotation(annotation::VERSION), Some("0.1.0"));
            // Its data compressed in blocks: at least half the zstd stream of the same data
            // (a meta layer would be a few KiB).
            assert!(
                l.size > zlen / 2 && l.size > 64 << 10,
                "the layer's data is in it: {} bytes, the zstd source is {zlen}",
                l.size
            );
        } else {
            assert_eq!(target, Some(sm.layers[i].digest.as_str()));
            assert_eq!(l.media_type, media::OCI_LAYER_GZIP);
        }
    }
    assert!(
        !dst.has_blob(&zdigest).unwrap(),
        "the zstd original is not needed, so not copied"
    );
    let work = tempfile::tempdir().unwrap();
    let v = convertor::verify::verify_images(&src, "v1", &dst, "v1", work.path()).unwrap();
    assert!(v[0].differences.is_empty(), "{:?}", v[0].differences);
    assert!(v[0].entries > 100, "{}", v[0].entries);
    assert!(
        v[0].kind.contains("with tar digests") && v[0].kind.contains("1 native overlaybd layers"),
        "{}",
        v[0].kind
    );
    // The same input gives the same digests.
    let (a, _) = convert(&src, "v1", &dst, Some("v2"), &opts, &Quiet).unwrap();
    assert_eq!(a.digest, d.digest);
}

#[test]
fn layers_turbo_oci_cannot_serve_are_refused_with_the_reason() {
    let Some(reg) = Registry::start() else { return };
    let src = reg.remote("turbo/bad", true);
    let dst = reg.remote("turbo/badmeta", true);
    let opts = Options {
        turbo_oci: true,
        ..Options::default()
    };
    let l0 = busybox_layer();
    // A gzip stream of two members: overlaybd's index covers the first only.
    let (a, b) = l0.split_at(l0.len() / 2);
    let two = [gzip(a), gzip(b)].concat();
    push(&src, "multi", &[(l0.clone(), true)], Some((0, two)));
    let e = convert(&src, "multi", &dst, Some("x"), &opts, &Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 members"), "{e}");
    // A plain tar under a gzip media type.
    push(
        &src,
        "mislabelled",
        &[(l0.clone(), true)],
        Some((0, l0.clone())),
    );
    let e = convert(&src, "mislabelled", &dst, Some("x"), &opts, &Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("media type says Gzip, the blob is Plain"), "{e}");
    // An overlaybd (here: TurboOCI) image as the source.
    push(&src, "ok", &[(l0.clone(), true)], None);
    convert(&src, "ok", &dst, Some("meta"), &opts, &Quiet).unwrap();
    let e = convert(&dst, "meta", &dst, Some("x"), &opts, &Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already an overlaybd layer"), "{e}");
    // A blob whose tar is not the config's diff ID.
    let mut t = TarBuilder::new();
    t.file("x", 0o644, b"x");
    let other = gzip(&t.finish());
    push(&src, "lie", &[(l0, true)], Some((0, other)));
    let e = convert(&src, "lie", &dst, Some("x"), &opts, &Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("the config says"), "{e}");
}
