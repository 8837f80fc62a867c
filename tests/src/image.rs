//! The sample image: a busybox-static root filesystem and a data layer (a large file of
//! incompressible bytes that a container's start never reads, and a small file it prints),
//! pushed as an OCI image to a registry.

use std::io::Write;

use convertor::oci::sha256_digest as sha256;
use convertor::remote::{Remote, RemoteOptions};
use convertor::store::Store;
use rand::{RngCore, SeedableRng};

/// What the sample container prints.
pub const GREETING: &str = "hello from a lazily pulled image";

/// The applets the tests call (symlinks to busybox).
const APPLETS: [&str; 14] = [
    "sh",
    "cat",
    "echo",
    "head",
    "ls",
    "md5sum",
    "sha256sum",
    "sleep",
    "dd",
    "wc",
    "true",
    "date",
    "tail",
    "cut",
];

/// A tar header owned by root, with a fixed time.
pub(crate) fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = header(path, tar::EntryType::Directory, 0o755, 0);
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = header(path, tar::EntryType::Regular, mode, data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// The busybox layer (uncompressed tar).
pub fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin", "dev", "etc", "proc", "sys", "tmp", "root", "data"] {
        add_dir(&mut b, d);
    }
    add_file(&mut b, "bin/busybox", 0o755, &busybox);
    for a in APPLETS {
        let mut h = header(&format!("bin/{a}"), tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name("busybox").unwrap();
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }
    add_file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n",
    );
    b.into_inner().unwrap()
}

/// The content of `data/big.bin`: `big_mib` MiB of seeded random bytes.
pub fn big_bin(big_mib: usize) -> Vec<u8> {
    let mut big = vec![0u8; big_mib << 20];
    rand::rngs::SmallRng::seed_from_u64(7).fill_bytes(&mut big);
    big
}

/// The data layer: `data/big.bin` (`big_mib` MiB of seeded random bytes) and
/// `data/small.txt`.
pub fn data_layer(big_mib: usize) -> Vec<u8> {
    let big = big_bin(big_mib);
    let mut b = tar::Builder::new(Vec::new());
    add_dir(&mut b, "data");
    add_file(&mut b, "data/big.bin", 0o644, &big);
    add_file(
        &mut b,
        "data/small.txt",
        0o644,
        format!("{GREETING}\n").as_bytes(),
    );
    b.into_inner().unwrap()
}

/// A layer of one file, `/id`, holding `id`: on top of shared layers, it makes an image of
/// its own (a chain, a snapshot and a device of its own).
pub fn id_layer(id: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, "id", 0o644, format!("{id}\n").as_bytes());
    b.into_inner().unwrap()
}

/// gzip at the default level, whose deflate blocks are a few KiB long as with the tools that
/// build images (Go's compress/gzip, GNU gzip). zlib-ng's level 1 (`fast`) writes one static
/// block for a whole blob, which leaves a gzip index no checkpoint to start from.
fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Pushes an OCI image of `layers` (uncompressed tars, gzipped here) whose command is `cmd`
/// to `registry/repo:tag`; returns the bytes of its layer blobs.
pub fn push(registry: &str, repo: &str, tag: &str, layers: &[Vec<u8>], cmd: &[&str]) -> u64 {
    let layers: Vec<_> = layers.iter().map(|l| (&l[..], false)).collect();
    push_with(registry, repo, tag, &layers, cmd)
}

/// [`push`] with each layer gzipped, or zstd-compressed where its flag is set.
pub fn push_with(
    registry: &str,
    repo: &str,
    tag: &str,
    layers: &[(&[u8], bool)],
    cmd: &[&str],
) -> u64 {
    push_with_env(registry, repo, tag, layers, cmd, &["PATH=/bin"])
}

/// [`push_with`], the config's environment being `env`.
pub fn push_with_env(
    registry: &str,
    repo: &str,
    tag: &str,
    layers: &[(&[u8], bool)],
    cmd: &[&str],
    env: &[&str],
) -> u64 {
    let opts = RemoteOptions {
        plain_http: true,
        ..Default::default()
    };
    let r = Remote::open(registry, repo, &opts, true).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut total = 0;
    for &(l, zstd) in layers {
        diff_ids.push(sha256(l));
        let (z, mt) = if zstd {
            let z = zstd::encode_all(l, 3).unwrap();
            (z, "application/vnd.oci.image.layer.v1.tar+zstd")
        } else {
            (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip")
        };
        let d = sha256(&z);
        r.put_blob(&d, &z).unwrap();
        total += z.len() as u64;
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": z.len()}));
    }
    put_image(&r, tag, cmd, env, diff_ids, descs);
    total
}

/// Pushes the config (running `cmd`, with these diff IDs) and a manifest of `layers` as `tag`.
fn put_image(
    r: &Remote,
    tag: &str,
    cmd: &[&str],
    env: &[&str],
    diff_ids: Vec<String>,
    layers: Vec<serde_json::Value>,
) {
    let history: Vec<_> = (0..diff_ids.len())
        .map(|i| serde_json::json!({"created_by": format!("layer {i}")}))
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": env, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }))
    .unwrap();
    let cd = sha256(&config);
    r.put_blob(&cd, &config).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": layers,
    }))
    .unwrap();
    r.put_manifest(
        Some(tag),
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    )
    .unwrap();
}

/// The sample image (`big_mib` MiB data file), pushed as `repo:tag`; returns its layer bytes.
pub fn push_sample(registry: &str, repo: &str, tag: &str, big_mib: usize) -> u64 {
    push(
        registry,
        repo,
        tag,
        &[busybox_layer(), data_layer(big_mib)],
        &["/bin/sh", "-c", "cat /data/small.txt"],
    )
}

/// Pushes a one-layer overlaybd image whose layer blob is `blob` (an overlaybd layer file, e.g.
/// one written by overlaybd's own tools) with overlaybd's annotations, and `cmd` as its
/// command, to `registry/repo:tag`.
pub fn push_overlaybd_layer(registry: &str, repo: &str, tag: &str, blob: &[u8], cmd: &[&str]) {
    use convertor::oci::annotation as a;
    let opts = RemoteOptions {
        plain_http: true,
        ..Default::default()
    };
    let r = Remote::open(registry, repo, &opts, true).unwrap();
    let d = sha256(blob);
    r.put_blob(&d, blob).unwrap();
    let layer = serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": d,
        "size": blob.len(),
        "annotations": {
            a::VERSION: a::VERSION_VALUE,
            a::BLOB_DIGEST: d,
            a::BLOB_SIZE: blob.len().to_string(),
            a::FS_TYPE: "ext4",
        },
    });
    put_image(&r, tag, cmd, &["PATH=/bin"], vec![d.clone()], vec![layer]);
}

/// A Debian bookworm minbase root filesystem as a tar, built once with `mmdebstrap` (through
/// the Debian mirror apt uses) into `/var/tmp/overlaybd-test/` and reused; `None` when
/// mmdebstrap is missing outside CI.
pub fn debian_minbase_tar() -> Option<std::path::PathBuf> {
    if !test_support::require_tool("mmdebstrap") {
        return None;
    }
    let dir = std::path::Path::new("/var/tmp/overlaybd-test");
    let tar = dir.join("bookworm-minbase.tar");
    if tar.is_file() {
        return Some(tar);
    }
    std::fs::create_dir_all(dir).unwrap();
    // mmdebstrap picks the output format from the name: keep `.tar` at its end.
    let tmp = dir.join(format!("bookworm-minbase.{}.tar", std::process::id()));
    test_support::run(
        "mmdebstrap",
        &[
            "--quiet",
            "--variant=minbase",
            "--mode=root",
            "bookworm",
            tmp.to_str().unwrap(),
        ],
    );
    std::fs::rename(&tmp, &tar).unwrap();
    Some(tar)
}

/// The tar of `paths` (relative to `root`, `.` for all) with `exclude` patterns left out, as
/// GNU tar writes it (numeric owners, extended attributes kept).
pub fn tar_of(root: &std::path::Path, paths: &[&str], exclude: &[&str]) -> Vec<u8> {
    let mut c = std::process::Command::new("tar");
    c.arg("-C")
        .arg(root)
        .args(["--numeric-owner", "--xattrs", "--format=pax", "-cf", "-"]);
    for e in exclude {
        c.arg(format!("--exclude={e}"));
    }
    let o = c.args(paths).output().unwrap();
    assert!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Debian minbase as three layers, the way a Dockerfile's steps would make them: the system
/// without `usr/share`; `usr/share`; then a step that deletes (`etc/motd`), empties a
/// directory (an opaque `usr/share/doc`) and adds files.
pub fn debian_layers(minbase_tar: &std::path::Path) -> Vec<Vec<u8>> {
    let root = tempfile::tempdir().unwrap();
    test_support::run(
        "tar",
        &[
            "-C",
            root.path().to_str().unwrap(),
            "--numeric-owner",
            "--xattrs",
            "-xf",
            minbase_tar.to_str().unwrap(),
        ],
    );
    let l0 = tar_of(root.path(), &["."], &["./usr/share"]);
    let l1 = tar_of(root.path(), &["./usr/share"], &[]);
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, "etc/.wh.motd", 0o644, b"");
    add_dir(&mut b, "usr/share/doc");
    add_file(&mut b, "usr/share/doc/.wh..wh..opq", 0o644, b"");
    add_file(
        &mut b,
        "usr/share/doc/README.turbo",
        0o644,
        b"only this is left\n",
    );
    add_file(&mut b, "etc/turbo-test", 0o600, &vec![b't'; 100_001]);
    vec![l0, l1, b.into_inner().unwrap()]
}
