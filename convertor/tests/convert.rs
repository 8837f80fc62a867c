//! Converting images through a real registry: the result's layer stacks pass `e2fsck -fn`,
//! its filesystem equals the source as unpacked by independent tools (skopeo + umoci), it
//! mounts in the kernel, and the same input gives the same digests.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use convertor::convert::{convert, Options};
use convertor::oci::{self, annotation, media, Manifest};
use convertor::progress::Quiet;
use convertor::store::Store;
use convertor::verify::{diff, tree_of_dir, tree_of_fs, LayerDisk, Tree};

/// Layers with what the OCI rules are about: a busybox rootfs; real files from this machine
/// (GNU tar); deletions, an opaque directory, a replaced symlink, a new hard link.
fn sample_layers() -> Vec<Vec<u8>> {
    sample_layers_linking(true)
}

/// The same, with or without the last layer's hard link to a file of a lower layer.
fn sample_layers_linking(cross_layer_link: bool) -> Vec<Vec<u8>> {
    let l0 = busybox_layer();
    let l1 = host_layer(&[
        "usr/share/common-licenses",
        "usr/share/zoneinfo",
        "usr/share/perl5/Debconf",
        "usr/share/e2fsprogs",
    ]);
    let mut t = TarBuilder::new();
    t.file("etc/.wh.passwd-", 0o644, b"")
        .dir("usr/share/common-licenses", 0o755)
        .file("usr/share/common-licenses/.wh..wh..opq", 0o644, b"")
        .file(
            "usr/share/common-licenses/ONLY-THIS",
            0o644,
            b"the opaque directory keeps only this\n",
        )
        .file("bin/ls", 0o755, b"#!/bin/sh\nexec /bin/busybox ls \"$@\"\n");
    if cross_layer_link {
        t.link(tar::EntryType::Link, "etc/passwd.link", "etc/passwd");
    }
    t.file("etc/motd", 0o644, &vec![b'x'; 300_000])
        // Into a directory of a lower layer (0700) that this layer does not name.
        .file("root/.profile", 0o644, b"PS1='# '\n");
    vec![l0, l1, t.finish()]
}

fn download_layers(store: &dyn Store, m: &Manifest, dir: &Path) -> Vec<PathBuf> {
    m.layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = dir.join(format!("layer{i}"));
            let mut f = std::fs::File::create(&p).unwrap();
            store.get_blob(&l.digest, &mut f).unwrap();
            p
        })
        .collect()
}

/// The source image as skopeo and umoci see it: copied into an OCI layout and unpacked.
fn umoci_rootfs(reg: &Registry, repo_tag: &str, dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/{repo_tag}", reg.addr),
            &format!("oci:{}:src", layout.display()),
        ],
    );
    let bundle = dir.join("bundle");
    run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:src", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    bundle.join("rootfs")
}

fn assert_same(expected: &Tree, got: &Tree, what: &str) {
    let d = diff(expected, got);
    assert!(
        d.is_empty(),
        "{what}: {} differences:\n{}",
        d.len(),
        d.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn an_image_converted_through_the_registry_equals_its_unpacked_source() {
    let Some(reg) = Registry::start() else { return };
    if !require_tool("skopeo")
        || !require_tool("umoci")
        || !require(is_root(), "umoci unpack and the kernel mount need root")
    {
        return;
    }
    let src = reg.remote("sample/src", true);
    push_image(&src, "v1", &sample_layers());
    let dst = reg.remote("sample/obd", true);
    let opts = Options {
        concurrency: 2,
        ..Options::default()
    };
    let (desc, conv) = convert(&src, "v1", &dst, Some("v1"), &opts, &Quiet).unwrap();
    assert_eq!(
        desc.media_type,
        media::OCI_MANIFEST,
        "an OCI source gives OCI media types"
    );
    let layers = &conv[0].layers;
    assert_eq!(layers.len(), 3);

    // The manifest carries overlaybd's annotations and ours, and the config the new diff IDs.
    let m = manifest(&dst, "v1");
    assert_eq!(
        oci::sha256_digest(&serde_json::to_vec(&m).unwrap()),
        desc.digest
    );
    for (l, r) in m.layers.iter().zip(layers) {
        assert_eq!(l.media_type, media::OCI_LAYER);
        assert_eq!(l.annotation(annotation::VERSION), Some("0.1.0"));
        assert_eq!(
            l.annotation(annotation::BLOB_DIGEST),
            Some(l.digest.as_str())
        );
        assert_eq!(
            l.annotation(annotation::BLOB_SIZE),
            Some(l.size.to_string().as_str())
        );
        assert_eq!(l.annotation(annotation::FS_TYPE), Some("ext4"));
        assert_eq!(
            l.annotation(annotation::INTEGRITY_ROOT),
            Some(r.blob.integrity_root.as_str())
        );
    }
    let mut cfg = Vec::new();
    dst.get_blob(&m.config.digest, &mut cfg).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
    let ids: Vec<String> = m.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(
        oci::diff_ids(&cfg).unwrap(),
        ids,
        "an overlaybd layer's diff ID is its digest"
    );
    assert_eq!(
        cfg["config"]["Cmd"][0], "/bin/sh",
        "the rest of the config is kept"
    );

    let work = tempfile::tempdir().unwrap();
    let blobs = download_layers(&dst, &m, work.path());
    // Every layer stack is a clean filesystem.
    for k in 1..=blobs.len() {
        let disk = LayerDisk::open(&blobs[..k]).unwrap();
        let img = work.path().join(format!("disk{k}"));
        disk.write_sparse(&img).unwrap();
        run("e2fsck", &["-fn", img.to_str().unwrap()]);
        if k < blobs.len() {
            std::fs::remove_file(&img).unwrap();
        }
    }
    // The converted filesystem, read by libext2fs through overlaybd's reader, equals the source
    // unpacked by umoci, file by file with metadata.
    let expected = tree_of_dir(&umoci_rootfs(&reg, "sample/src:v1", work.path())).unwrap();
    let mut disk = LayerDisk::open(&blobs).unwrap();
    let got = tree_of_fs(&mut disk).unwrap();
    assert!(got.len() > 100, "{} entries", got.len());
    assert_same(&expected, &got, "converted image vs umoci unpack");
    // verify's model of the source, computed from the tars alone, agrees with umoci too, and
    // verify finds nothing to report.
    let mut model = convertor::model::Model::new();
    for l in sample_layers() {
        model.apply(l.as_slice()).unwrap();
    }
    assert_same(&expected, &model.finish(), "verify's model vs umoci unpack");
    let v = convertor::verify::verify_images(&src, "v1", &dst, "v1", work.path()).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].entries, expected.len());
    assert!(v[0].differences.is_empty(), "{:?}", v[0].differences);
    assert!(!got.contains_key(&b"etc/passwd-"[..]), "whiteout applied");
    // What the comparison covers is there on both sides.
    let ping = &got[&b"usr/bin/ping"[..]];
    assert_eq!(ping.xattrs[0].0, b"security.capability");
    assert_eq!(ping.mtime, (1_700_000_000, 250_000_000));
    let owned = &got[&b"usr/bin/owned"[..]];
    assert_eq!((owned.uid, owned.gid, owned.mode), (1234, 5678, 0o102755));
    assert_eq!(
        got[&b"usr/bin/busybox-again"[..]].link_group.as_deref(),
        Some(&b"bin/busybox"[..])
    );
    assert_eq!(got[&b"dev/null"[..]].rdev, Some((1, 3)));
    assert_eq!(got[&b"bin/sh"[..]].target.as_deref(), Some(&b"busybox"[..]));
    assert!(
        got.keys()
            .filter(|k| k.starts_with(b"usr/share/common-licenses/"))
            .count()
            == 1,
        "opaque directory"
    );

    // And the kernel mounts it and sees the same.
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let img = work.path().join(format!("disk{}", blobs.len()));
    run(
        "mount",
        &[
            "-t",
            "ext4",
            "-o",
            "loop,ro,noload",
            img.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
    );
    let mounted = std::panic::catch_unwind(|| tree_of_dir(&mnt).unwrap());
    run("umount", &[mnt.to_str().unwrap()]);
    let mut mounted = mounted.unwrap();
    mounted.remove(&b"lost+found"[..]);
    let mut root_expected = expected.clone();
    // The mount point's own directory entry is the filesystem's root either way.
    root_expected.remove(&b""[..]);
    mounted.remove(&b""[..]);
    assert_same(&root_expected, &mounted, "kernel mount vs umoci unpack");

    // The same input gives the same digests.
    let (again, conv2) = convert(&src, "v1", &dst, Some("v2"), &opts, &Quiet).unwrap();
    assert_eq!(again.digest, desc.digest);
    for (a, b) in conv[0].layers.iter().zip(&conv2[0].layers) {
        assert_eq!(a.blob, b.blob);
    }
}

/// `--fs erofs`: every layer stack is an EROFS image the kernel mounts, whose tree equals the
/// source unpacked by umoci (whiteouts and the opaque directory merged away), with the
/// annotation overlaybd reads for the mount; the same input gives the same digests.
#[test]
fn an_image_converted_to_erofs_mounts_and_equals_its_unpacked_source() {
    let Some(reg) = Registry::start() else { return };
    if !require_tool("skopeo")
        || !require_tool("umoci")
        || !use_mkfs_erofs()
        || !require(is_root(), "umoci unpack and the kernel mount need root")
    {
        return;
    }
    let src = reg.remote("erofs/src", true);
    // erofs-utils' incremental build cannot hard-link to a file of a lower layer: a clear
    // error, then the same layers without that link.
    push_image(&src, "linking", &sample_layers());
    push_image(&src, "v1", &sample_layers_linking(false));
    let dst = reg.remote("erofs/obd", true);
    let opts = Options {
        concurrency: 2,
        fs: convertor::layer::FsType::Erofs,
        ..Options::default()
    };
    let e = convert(&src, "linking", &dst, Some("linking"), &opts, &Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 2") && e.contains("--fs ext4"), "{e}");
    let (desc, conv) = convert(&src, "v1", &dst, Some("v1"), &opts, &Quiet).unwrap();
    let m = manifest(&dst, "v1");
    assert_eq!(m.layers.len(), 3);
    for l in &m.layers {
        assert_eq!(l.annotation(annotation::FS_TYPE), Some("erofs"));
    }
    let work = tempfile::tempdir().unwrap();
    let blobs = download_layers(&dst, &m, work.path());
    let expected = tree_of_dir(&umoci_rootfs(&reg, "erofs/src:v1", work.path())).unwrap();
    let mut root_expected = expected.clone();
    root_expected.remove(&b""[..]);
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for k in 1..=blobs.len() {
        let disk = LayerDisk::open(&blobs[..k]).unwrap();
        let img = work.path().join(format!("disk{k}"));
        disk.write_sparse(&img).unwrap();
        run(
            "mount",
            &[
                "-t",
                "erofs",
                "-o",
                "loop,ro",
                img.to_str().unwrap(),
                mnt.to_str().unwrap(),
            ],
        );
        let mounted = std::panic::catch_unwind(|| tree_of_dir(&mnt).unwrap());
        run("umount", &[mnt.to_str().unwrap()]);
        std::fs::remove_file(&img).unwrap();
        let mut mounted = mounted.unwrap();
        // The root kept through every incremental build (mkfs.erofs would make it 0777).
        let root = mounted.remove(&b""[..]).unwrap();
        assert_eq!(root.mode, 0o40755, "layers 1..={k}: the root's mode");
        assert!(
            mounted.len() > 10,
            "layers 1..={k}: {} entries",
            mounted.len()
        );
        if k == blobs.len() {
            assert_same(
                &root_expected,
                &mounted,
                "EROFS kernel mount vs umoci unpack",
            );
            assert!(
                !mounted.contains_key(&b"etc/passwd-"[..]),
                "whiteout applied"
            );
            assert_eq!(
                mounted
                    .keys()
                    .filter(|k| k.starts_with(b"usr/share/common-licenses/"))
                    .count(),
                1,
                "opaque directory"
            );
        }
    }
    // verify reads the EROFS image itself and finds what the kernel shows.
    let v = convertor::verify::verify_images(&src, "v1", &dst, "v1", work.path()).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].entries, expected.len());
    assert!(v[0].differences.is_empty(), "{:?}", v[0].differences);
    let disk = LayerDisk::open(&blobs).unwrap();
    let size = disk.size();
    let mut disk = disk;
    let read = convertor::erofs::tree_of_erofs(&mut disk, size).unwrap();
    let mut read_no_root = read.clone();
    read_no_root.remove(&b""[..]);
    assert_same(
        &root_expected,
        &read_no_root,
        "verify's EROFS reader vs umoci unpack",
    );
    assert_eq!(read[&b""[..]].mode, 0o40755);
    let (again, conv2) = convert(&src, "v1", &dst, Some("v2"), &opts, &Quiet).unwrap();
    assert_eq!(
        again.digest, desc.digest,
        "the same input gives the same digests"
    );
    for (a, b) in conv[0].layers.iter().zip(&conv2[0].layers) {
        assert_eq!(a.blob, b.blob);
    }

    // Layers reused from a dedup database, loaded below a new EROFS layer: the image equals
    // the one converted without reuse (the image file is rebuilt from the loaded disk).
    let mut other = sample_layers_linking(false);
    let mut t = TarBuilder::new();
    t.file("etc/other", 0o644, b"other\n")
        .file("root/.other", 0o600, b"x\n");
    other[2] = t.finish();
    push_image(&src, "other", &other);
    let db = work.path().join("dedup.redb");
    let with_db = Options {
        dedup: Some(std::sync::Arc::new(convertor::dedup::DedupDb::open(&db).unwrap()) as _),
        ..opts.clone()
    };
    convert(&src, "v1", &dst, Some("db-v1"), &with_db, &Quiet).unwrap();
    let (reused, r) = convert(&src, "other", &dst, Some("db-other"), &with_db, &Quiet).unwrap();
    assert!(
        r[0].layers[..2].iter().all(|l| l.reused) && !r[0].layers[2].reused,
        "layers 0 and 1 come from the database, layer 2 is built on them"
    );
    let (fresh, _) = convert(&src, "other", &dst, Some("other"), &opts, &Quiet).unwrap();
    assert_eq!(reused.digest, fresh.digest, "reuse changes no byte");
}

#[test]
fn the_dedup_database_reuses_converted_layers_and_builds_on_them_exactly() {
    let Some(reg) = Registry::start() else { return };
    let l0 = busybox_layer();
    let mut t = TarBuilder::new();
    t.dir("srv", 0o755)
        .file("srv/one", 0o644, &vec![1u8; 200_000]);
    let l1 = t.finish();
    let mut t = TarBuilder::new();
    t.file("srv/.wh.one", 0o644, b"")
        .file("srv/two", 0o644, b"two");
    let l2a = t.finish();
    let mut t = TarBuilder::new();
    t.file("srv/three", 0o644, b"three")
        .file("bin/.wh.ls", 0o644, b"");
    let l2b = t.finish();
    let src = reg.remote("dedup/src", true);
    push_image(&src, "a", &[l0.clone(), l1.clone(), l2a]);
    push_image(&src, "b", &[l0, l1, l2b]);

    let work = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(convertor::dedup::DedupDb::open(&work.path().join("db")).unwrap());
    let with_db = Options {
        dedup: Some(db.clone() as std::sync::Arc<dyn convertor::dedup::DedupCache>),
        ..Options::default()
    };
    // First conversion: nothing to reuse.
    let dst_a = reg.remote("dedup/a", true);
    let (a, conv) = convert(&src, "a", &dst_a, Some("v1"), &with_db, &Quiet).unwrap();
    assert!(conv[0].layers.iter().all(|l| !l.reused));
    // The same image into another repository: every layer reused (mounted), same manifest.
    let dst_a2 = reg.remote("dedup/a2", true);
    let (a2, conv) = convert(&src, "a", &dst_a2, Some("v1"), &with_db, &Quiet).unwrap();
    assert!(conv[0].layers.iter().all(|l| l.reused));
    assert_eq!(a2.digest, a.digest);
    let m = manifest(&dst_a2, "v1");
    for l in &m.layers {
        assert!(
            dst_a2.has_blob(&l.digest).unwrap(),
            "mounted into the new repository"
        );
    }
    // Image b shares two layers: they are reused (and loaded to build the third), and the
    // result is byte for byte what a conversion without the database gives.
    let dst_b = reg.remote("dedup/b", true);
    let (b, conv) = convert(&src, "b", &dst_b, Some("v1"), &with_db, &Quiet).unwrap();
    let reused: Vec<bool> = conv[0].layers.iter().map(|l| l.reused).collect();
    assert_eq!(reused, [true, true, false]);
    let dst_fresh = reg.remote("dedup/fresh", true);
    let (fresh, _) = convert(
        &src,
        "b",
        &dst_fresh,
        Some("v1"),
        &Options::default(),
        &Quiet,
    )
    .unwrap();
    assert_eq!(b.digest, fresh.digest);
    // The reused stack is a clean filesystem with b's files.
    let blobs = download_layers(&dst_b, &manifest(&dst_b, "v1"), work.path());
    let mut disk = LayerDisk::open(&blobs).unwrap();
    let tree = tree_of_fs(&mut disk).unwrap();
    assert!(tree.contains_key(&b"srv/one"[..]) && tree.contains_key(&b"srv/three"[..]));
    assert!(!tree.contains_key(&b"bin/ls"[..]));
    // verify tells a wrong pairing apart: a's source against b's conversion.
    let v = convertor::verify::verify_images(&src, "a", &dst_b, "v1", work.path()).unwrap();
    let d = &v[0].differences;
    assert!(
        d.iter().any(|l| l.starts_with("/srv/two: missing")),
        "{d:?}"
    );
    assert!(
        d.iter().any(|l| l.starts_with("/srv/three: not expected")),
        "{d:?}"
    );
}

/// A source store that counts the blobs read from it.
struct Counting<'a> {
    inner: &'a dyn Store,
    blobs: std::sync::atomic::AtomicU64,
}

impl Store for Counting<'_> {
    fn get_manifest(&self, r: &str) -> convertor::Result<(Vec<u8>, Option<String>)> {
        self.inner.get_manifest(r)
    }
    fn get_blob(&self, d: &str, out: &mut dyn std::io::Write) -> convertor::Result<u64> {
        self.blobs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get_blob(d, out)
    }
    fn has_blob(&self, d: &str) -> convertor::Result<bool> {
        self.inner.has_blob(d)
    }
    fn put_blob_file(&self, d: &str, n: u64, p: &Path) -> convertor::Result<bool> {
        self.inner.put_blob_file(d, n, p)
    }
    fn put_blob(&self, d: &str, b: &[u8]) -> convertor::Result<()> {
        self.inner.put_blob(d, b)
    }
    fn put_manifest(&self, t: Option<&str>, mt: &str, b: &[u8]) -> convertor::Result<()> {
        self.inner.put_manifest(t, mt, b)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The dedup cache shared through a repository of the registry, as CI runners share it: each
/// "runner" opens its own cache on the same repository. A second runner converting the same
/// image reads only the source's manifest and config (no layer), and gets the same digest;
/// a shared lower is reused and built on exactly; two runners converting one image at once
/// both succeed with the same digest; a record that is not the key's is ignored.
#[test]
fn the_registry_dedup_cache_is_shared_between_runners() {
    use convertor::dedup::{DedupCache, RegistryCache};
    use std::sync::Arc;
    let Some(reg) = Registry::start() else { return };
    let l0 = busybox_layer();
    let mut t = TarBuilder::new();
    t.dir("srv", 0o755)
        .file("srv/one", 0o644, &vec![1u8; 200_000]);
    let l1 = t.finish();
    let mut t = TarBuilder::new();
    t.file("srv/two", 0o644, b"two");
    let l2a = t.finish();
    let mut t = TarBuilder::new();
    t.file("srv/three", 0o644, b"three");
    let l2b = t.finish();
    let src = reg.remote("ci/src", true);
    push_image(&src, "a", &[l0.clone(), l1.clone(), l2a]);
    push_image(&src, "b", &[l0, l1, l2b]);
    let secret = || Some(b"the runners' shared secret".to_vec());
    let runner = || Options {
        dedup: Some(Arc::new(RegistryCache::new(
            Box::new(reg.remote("ci/dedup-cache", true)),
            secret(),
        )) as Arc<dyn DedupCache>),
        ..Options::default()
    };

    // Runner 1 converts a: nothing to reuse, every layer recorded.
    let (a, conv) = convert(
        &src,
        "a",
        &reg.remote("ci/a", true),
        Some("v1"),
        &runner(),
        &Quiet,
    )
    .unwrap();
    assert!(conv[0].layers.iter().all(|l| !l.reused));
    // Runner 2, the same image into another repository: no source layer read, every layer
    // mounted from the cache, the same manifest.
    let counting = Counting {
        inner: &src,
        blobs: Default::default(),
    };
    let dst2 = reg.remote("ci/a2", true);
    let (a2, conv) = convert(&counting, "a", &dst2, Some("v1"), &runner(), &Quiet).unwrap();
    assert!(conv[0].layers.iter().all(|l| l.reused));
    assert_eq!(a2.digest, a.digest);
    // The config only (the manifest is not a blob read).
    assert_eq!(counting.blobs.load(std::sync::atomic::Ordering::Relaxed), 1);
    for l in &manifest(&dst2, "v1").layers {
        assert!(dst2.has_blob(&l.digest).unwrap());
    }
    // Runner 3, image b: two layers reused (loaded to build the third), byte for byte what a
    // conversion without any cache gives.
    let (b, conv) = convert(
        &src,
        "b",
        &reg.remote("ci/b", true),
        Some("v1"),
        &runner(),
        &Quiet,
    )
    .unwrap();
    let reused: Vec<bool> = conv[0].layers.iter().map(|l| l.reused).collect();
    assert_eq!(reused, [true, true, false]);
    let (fresh, _) = convert(
        &src,
        "b",
        &reg.remote("ci/b-fresh", true),
        Some("v1"),
        &Options::default(),
        &Quiet,
    )
    .unwrap();
    assert_eq!(b.digest, fresh.digest);

    // Two runners convert a new image at once (a cache miss for both): both succeed, alike.
    let mut t = TarBuilder::new();
    t.file("srv/four", 0o644, &vec![4u8; 100_000]);
    push_image(&src, "c", &[busybox_layer(), t.finish()]);
    let results: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = ["ci/c1", "ci/c2"]
            .iter()
            .map(|repo| {
                let (src, o, dst) = (&src, runner(), reg.remote(repo, true));
                s.spawn(move || {
                    convert(src, "c", &dst, Some("v1"), &o, &Quiet)
                        .unwrap()
                        .0
                        .digest
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results[0], results[1]);

    // Records that name another key, are unsigned, or are signed with another secret are
    // ignored; the same record signed with the runners' secret is taken.
    let cache = RegistryCache::new(Box::new(reg.remote("ci/dedup-cache", true)), secret());
    let chain = &conv[0].layers[2].chain_id;
    let key = convertor::dedup::key(chain, &Default::default(), 64 << 30, "ext4");
    assert!(cache.get(&key).unwrap().is_some());
    let l2 = &conv[0].layers[2].blob;
    let forge = |secret: Option<Vec<u8>>, k: &str| {
        let forger = RegistryCache::new(Box::new(reg.remote("ci/forger", true)), secret);
        let from = reg.remote("ci/b", true).describe();
        forger.put(k, &l2.digest, l2.size, "", &from).unwrap();
        let (bytes, _) = reg
            .remote("ci/forger", false)
            .get_manifest(&RegistryCache::tag(k))
            .unwrap();
        reg.remote("ci/dedup-cache", true)
            .put_manifest(Some(&RegistryCache::tag(&key)), media::OCI_MANIFEST, &bytes)
            .unwrap();
        cache.get(&key).unwrap()
    };
    assert_eq!(forge(secret(), "another key"), None, "another key's record");
    assert_eq!(forge(None, &key), None, "an unsigned record");
    let other = Some(b"another deployment's secret".to_vec());
    assert_eq!(forge(other, &key), None, "another secret's record");
    let signed = forge(secret(), &key).expect("a record signed with the secret");
    // It names the cache repository only, whatever the record's writer pushed to.
    assert_eq!(
        signed.locations,
        [reg.remote("ci/dedup-cache", false).describe()]
    );
}
