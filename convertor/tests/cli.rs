//! The `overlaybd-convertor` command: OCI layout to registry, a multi-platform index, Docker
//! media types, progress lines in a log, `verify`, and errors a user can act on.

mod common;

use std::process::Command;

use common::*;
use convertor::oci::{self, annotation, media, Document};
use convertor::remote::{Remote, RemoteOptions};
use convertor::store::{Layout, Store};

const BIN: &str = env!("CARGO_BIN_EXE_overlaybd-convertor");

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn small_layers(tag: &str) -> Vec<Vec<u8>> {
    let mut t = TarBuilder::new();
    t.dir("etc", 0o755)
        .file("etc/arch", 0o644, tag.as_bytes())
        .file(format!("etc/only-{tag}"), 0o600, &vec![7u8; 50_000]);
    vec![busybox_layer(), t.finish()]
}

#[test]
fn a_multi_platform_layout_converts_into_a_registry_index_and_verifies() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(&dir.path().join("src"), true).unwrap();
    let amd = push_image_as(&layout, None, &small_layers("amd64"), false);
    let arm = push_image_as(&layout, None, &small_layers("arm64"), false);
    push_index(
        &layout,
        "multi",
        &[("amd64", amd.0, amd.1), ("arm64", arm.0, arm.1)],
    );
    let src = format!("oci:{}:multi", dir.path().join("src").display());
    let dst = format!("{}/cli/multi:v1", reg.addr);

    let (ok, stdout, stderr) = cli(&["convert", "--plain-http", "--concurrency", "1", &src, &dst]);
    assert!(ok, "{stderr}");
    // Not a terminal: one plain line per finished phase.
    for phase in ["download", "apply", "commit", "upload"] {
        assert!(
            stderr.contains(&format!("layer 2/2: {phase} ")),
            "{phase}: {stderr}"
        );
    }
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with(&format!("{dst}@sha256:")), "{stdout}");
    // Converting again into the same repository uploads nothing, and says so.
    let (ok, _, stderr) = cli(&["convert", "--plain-http", "--concurrency", "1", &src, &dst]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("layer 2/2: upload skipped: sha256:"),
        "{stderr}"
    );
    assert!(stderr.contains("is already in"), "{stderr}");
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains(": upload ") && l.contains(" MB in ")),
        "no upload rate for nothing sent: {stderr}"
    );

    let r = reg.remote("cli/multi", false);
    let (b, mt) = r.get_manifest("v1").unwrap();
    let Document::Index(idx) = oci::parse_document(&b, mt.as_deref()).unwrap() else {
        panic!("expected an index");
    };
    let archs: Vec<&str> = idx
        .manifests
        .iter()
        .map(|d| d.platform.as_ref().unwrap().architecture.as_str())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    for d in &idx.manifests {
        let (b, _) = r.get_manifest(&d.digest).unwrap();
        let Document::Manifest(m) = oci::parse_document(&b, Some(&d.media_type)).unwrap() else {
            panic!()
        };
        assert!(m
            .layers
            .iter()
            .all(|l| l.annotation(annotation::VERSION) == Some("0.1.0")));
    }

    let (ok, stdout, stderr) = cli(&["verify", "--plain-http", &src, &dst]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(stdout.matches(", 0 differences").count(), 2, "{stdout}");
    // SRC and DST swapped: the message says which argument is which.
    let (ok, _, stderr) = cli(&["verify", "--plain-http", &dst, &src]);
    assert!(!ok);
    assert!(stderr.contains("is not an overlaybd image"), "{stderr}");
    assert!(
        stderr.contains("verify takes the original image first"),
        "{stderr}"
    );

    // verify fails, naming the files, when the pair does not match.
    push_image_as(&layout, Some("right"), &small_layers("right"), false);
    push_image_as(&layout, Some("wrong"), &small_layers("wrong"), false);
    let at = |t: &str| format!("oci:{}:{t}", dir.path().join("src").display());
    let single = format!("{}/cli/single:v1", reg.addr);
    let (ok, _, stderr) = cli(&["convert", "-q", "--plain-http", &at("right"), &single]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = cli(&["verify", "--plain-http", &at("wrong"), &single]);
    assert!(!ok);
    assert!(stdout.contains("/etc/only-wrong: missing"), "{stdout}");
    assert!(stdout.contains("/etc/only-right: not expected"), "{stdout}");
    assert!(stderr.contains("differences"), "{stderr}");
}

#[test]
fn a_docker_image_stays_docker_unless_oci_is_asked_for() {
    let Some(reg) = Registry::start() else { return };
    let src = reg.remote("cli/docker", true);
    push_image_as(&src, Some("v1"), &small_layers("d"), true);
    let s = format!("{}/cli/docker:v1", reg.addr);
    for (extra, want_manifest, want_layer) in [
        (None, media::DOCKER_MANIFEST, media::DOCKER_LAYER),
        (Some("--oci"), media::OCI_MANIFEST, media::OCI_LAYER),
    ] {
        let d = format!(
            "{}/cli/docker-out:{}",
            reg.addr,
            if extra.is_some() { "oci" } else { "docker" }
        );
        let mut args = vec!["convert", "-q", "--plain-http", &s, &d];
        args.extend(extra);
        let (ok, _, stderr) = cli(&args);
        assert!(ok, "{stderr}");
        let r = reg.remote("cli/docker-out", false);
        let (b, mt) = r
            .get_manifest(if extra.is_some() { "oci" } else { "docker" })
            .unwrap();
        assert_eq!(mt.as_deref(), Some(want_manifest));
        let Document::Manifest(m) = oci::parse_document(&b, mt.as_deref()).unwrap() else {
            panic!()
        };
        assert!(m.layers.iter().all(|l| l.media_type == want_layer));
    }
}

#[test]
fn bad_sources_fail_with_a_message_naming_what_is_wrong() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dst = format!("{}/cli/bad:v1", reg.addr);
    // No such image.
    let (ok, _, stderr) = cli(&[
        "convert",
        "-q",
        "--plain-http",
        &format!("{}/cli/none:v1", reg.addr),
        &dst,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("cli/none") && stderr.contains("404"),
        "{stderr}"
    );
    // A layer whose bytes do not match its digest (the layout's blob was replaced; it is read
    // in place and checked as it is read: the mismatch is what is reported, not the tar).
    let layout = Layout::open(&dir.path().join("src"), true).unwrap();
    let (digest, _) = push_image_as(&layout, Some("v1"), &small_layers("x"), false);
    let m = manifest(&layout, &digest);
    let hex = m.layers[1].digest.strip_prefix("sha256:").unwrap();
    std::fs::write(
        dir.path().join("src/blobs/sha256").join(hex),
        gzip(b"not the layer"),
    )
    .unwrap();
    let src = format!("oci:{}:v1", dir.path().join("src").display());
    let (ok, _, stderr) = cli(&["convert", "-q", "--plain-http", &src, &dst]);
    assert!(!ok);
    assert!(
        stderr.contains(&m.layers[1].digest)
            && stderr.contains("the blob does not match its descriptor"),
        "{stderr}"
    );
    // A hostile layer: refused with the entry named, nothing pushed under the tag.
    let mut h = TarBuilder::header(tar::EntryType::Regular, 0o644, 1);
    h.as_old_mut().name[..13].copy_from_slice(b"../../escape\0");
    h.set_cksum();
    let mut evil = h.as_bytes().to_vec();
    evil.extend_from_slice(&[b'x'; 512]);
    evil.extend_from_slice(&[0; 1024]);
    let layout2 = Layout::open(&dir.path().join("evil"), true).unwrap();
    push_image_as(&layout2, Some("v1"), &[evil], false);
    let (ok, _, stderr) = cli(&[
        "convert",
        "-q",
        "--plain-http",
        &format!("oci:{}:v1", dir.path().join("evil").display()),
        &dst,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("\"../../escape\"") && stderr.contains("climbs out"),
        "{stderr}"
    );
    let r = reg.remote("cli/bad", false);
    assert!(
        r.get_manifest("v1").is_err(),
        "nothing tagged after a failed conversion"
    );
}

#[test]
fn credentials_come_from_docker_config_or_the_command_line() {
    let Some(reg) = Registry::start_auth(Some(("ci", "s3cret"))) else {
        return;
    };
    let creds = overlaybd_registry::auth::Credentials {
        username: "ci".into(),
        password: "s3cret".into(),
    };
    let opts = RemoteOptions {
        plain_http: true,
        credentials: Some(creds),
        ..Default::default()
    };
    let src = Remote::open(&reg.addr, "auth/src", &opts, true).unwrap();
    push_image_as(&src, Some("v1"), &small_layers("a"), false);
    let s = format!("{}/auth/src:v1", reg.addr);
    let d = format!("{}/auth/dst:v1", reg.addr);
    // Without credentials: refused, and the message says so.
    let (ok, _, stderr) = cli(&[
        "convert",
        "-q",
        "--plain-http",
        "--docker-config",
        "/nonexistent/config.json",
        &s,
        &d,
    ]);
    assert!(!ok);
    assert!(stderr.contains("credentials"), "{stderr}");
    // From Docker's config.json.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret");
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let (ok, _, stderr) = cli(&[
        "convert",
        "-q",
        "--plain-http",
        "--docker-config",
        cfg.to_str().unwrap(),
        &s,
        &d,
    ]);
    assert!(ok, "{stderr}");
    // From -u, and a wrong password is an error.
    let (ok, _, stderr) = cli(&[
        "convert",
        "-q",
        "--plain-http",
        "-u",
        "ci:s3cret",
        &s,
        &format!("{}/auth/dst2:v1", reg.addr),
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&["convert", "-q", "--plain-http", "-u", "ci:wrong", &s, &d]);
    assert!(!ok);
    assert!(stderr.contains("401"), "{stderr}");
}

#[test]
fn zstd_and_larger_blocks_convert_and_verify_and_no_root_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(&dir.path().join("src"), true).unwrap();
    let mut t = TarBuilder::new();
    t.file("dup", 0o644, b"first")
        .file("dup", 0o600, b"second wins");
    let mut layers = small_layers("z");
    layers.push(t.finish());
    push_image_as(&layout, Some("v1"), &layers, false);
    let src = format!("oci:{}:v1", dir.path().join("src").display());
    let dst = format!("oci:{}:v1", dir.path().join("dst").display());
    let mut cmd = Command::new(BIN);
    cmd.args([
        "convert",
        "-q",
        "--algorithm",
        "zstd",
        "--block-size",
        "16384",
        "--vsize",
        "8",
        &src,
        &dst,
    ]);
    if is_root() {
        // Run it as nobody: the convertor needs no privilege.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        run("chmod", &["-R", "a+rwX", dir.path().to_str().unwrap()]);
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534).env("TMPDIR", dir.path());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, stdout, stderr) = cli(&["verify", &src, &dst]);
    assert!(ok, "{stdout}{stderr}");
    let dl = Layout::open(&dir.path().join("dst"), false).unwrap();
    let m = manifest(&dl, "v1");
    // The layer is a zstd ZFile with 16 KiB blocks: the header says so.
    let mut blob = Vec::new();
    dl.get_blob(&m.layers[0].digest, &mut blob).unwrap();
    let (payload, _) = zfile::envelope::open_payload(blob).unwrap();
    let z = zfile::ZFile::open(payload).unwrap();
    assert_eq!(z.info().algorithm, zfile::Algorithm::Zstd);
    assert_eq!(z.info().block_size, 16384);
}

/// `--dedup-registry`: a second runner's conversion into another repository reuses every
/// layer through the registry; the flag wants a repository and does not go with `--dedup-db`.
#[test]
fn the_dedup_registry_flag_shares_converted_layers() {
    let Some(reg) = Registry::start() else { return };
    let src = reg.remote("flag/src", true);
    push_image(&src, "v1", &small_layers("d"));
    let at = |repo: &str| format!("{}/{repo}", reg.addr);
    let cache = at("flag/cache");
    let conv = |dst: &str| {
        cli(&[
            "convert",
            "-q",
            "--plain-http",
            "--dedup-registry",
            &cache,
            &format!("{}:v1", at("flag/src")),
            &format!("{}:v1", at(dst)),
        ])
    };
    let (ok, first, err) = conv("flag/one");
    assert!(ok, "{err}");
    assert!(!first.contains("reused"), "{first}");
    let (ok, second, err) = conv("flag/two");
    assert!(ok, "{err}");
    let layers: Vec<&str> = second.lines().filter(|l| l.starts_with("layer ")).collect();
    assert_eq!(layers.len(), 2, "{second}");
    assert!(layers.iter().all(|l| l.ends_with(", reused")), "{second}");
    // Same manifest digest in both.
    let digest = |out: &str| {
        out.lines()
            .last()
            .unwrap()
            .rsplit_once('@')
            .unwrap()
            .1
            .to_string()
    };
    assert_eq!(digest(&first), digest(&second));

    let (ok, _, err) = cli(&[
        "convert",
        "--plain-http",
        "--dedup-registry",
        &format!("{cache}:tag"),
        &format!("{}:v1", at("flag/src")),
        &format!("{}:v1", at("flag/three")),
    ]);
    assert!(!ok && err.contains("expected a repository"), "{err}");
    let (ok, _, err) = cli(&[
        "convert",
        "--dedup-db",
        "/tmp/x.redb",
        "--dedup-registry",
        &cache,
        &format!("{}:v1", at("flag/src")),
        &format!("{}:v1", at("flag/three")),
    ]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    // The cache repository must be on the destination's registry; a secret must be long.
    let (ok, _, err) = cli(&[
        "convert",
        "--plain-http",
        "--dedup-registry",
        "elsewhere.example:5000/cache",
        &format!("{}:v1", at("flag/src")),
        &format!("{}:v1", at("flag/three")),
    ]);
    assert!(
        !ok && err.contains("must be on the destination's registry"),
        "{err}"
    );
    let short = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(short.path(), "short\n").unwrap();
    let (ok, _, err) = cli(&[
        "convert",
        "--plain-http",
        "--dedup-registry",
        &cache,
        "--dedup-secret-file",
        short.path().to_str().unwrap(),
        &format!("{}:v1", at("flag/src")),
        &format!("{}:v1", at("flag/three")),
    ]);
    assert!(!ok && err.contains("at least 16 bytes"), "{err}");
}

/// A layout named by a relative path (`oci:src:v1`, from its parent directory): its blobs are
/// read in place and stay where they are, untouched.
#[test]
fn a_relative_layout_path_converts_and_the_source_stays() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(&dir.path().join("src"), true).unwrap();
    let (digest, _) = push_image_as(&layout, Some("v1"), &small_layers("r"), false);
    let m = manifest(&layout, &digest);
    let blobs = |m: &oci::Manifest| -> Vec<Vec<u8>> {
        m.layers
            .iter()
            .map(|l| {
                let mut b = Vec::new();
                layout.get_blob(&l.digest, &mut b).unwrap();
                b
            })
            .collect()
    };
    let before = blobs(&m);
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["convert", "-q", "oci:src:v1", "oci:dst:v1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(blobs(&m), before, "the source's blobs changed");
    let (ok, stdout, stderr) = cli(&[
        "verify",
        &format!("oci:{}:v1", dir.path().join("src").display()),
        &format!("oci:{}:v1", dir.path().join("dst").display()),
    ]);
    assert!(ok, "{stdout}{stderr}");
}
