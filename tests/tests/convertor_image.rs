//! The convertor's image (`deploy/convertor/build-image.sh`): built from the workspace as an
//! OCI layout (the same digest twice), pushed with skopeo, run by containerd as the user the
//! image names (nobody) with a read-only root, converting an image of the registry; the
//! converted image then runs lazily through the snapshotter.

use std::path::Path;
use std::process::Command;

use e2e_tests::{bin, image, require, Env, Options};

fn build(out: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/convertor/build-image.sh");
    let o = Command::new(script)
        .arg(out)
        .arg("v1")
        .env("CONVERTOR_BIN", bin("overlaybd-convertor"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "build-image.sh: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

#[test]
fn the_convertor_image_converts_as_nobody_inside_containerd() {
    let _s = e2e_tests::serial();
    // The image carries mkfs.erofs (`--fs erofs`) when the build names one.
    if !require() || !test_support::use_mkfs_erofs() {
        return;
    }
    let env = Env::start(Options::default());
    let dir = tempfile::tempdir().unwrap();
    let first = build(&dir.path().join("a"));
    let again = build(&dir.path().join("b"));
    let digest = |s: &str| s.split_whitespace().nth(1).unwrap_or_default().to_string();
    assert!(digest(&first).starts_with("sha256:"), "{first}");
    assert_eq!(
        digest(&first),
        digest(&again),
        "the same build, another image"
    );
    // Its config: nobody, the convertor as entrypoint.
    let layout = dir.path().join("a");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| {
        let hex = d.trim_start_matches("sha256:");
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap(),
        )
        .unwrap()
    };
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["config"]["User"], "65534:65534");
    assert_eq!(
        config["config"]["Entrypoint"][0],
        "/usr/local/bin/overlaybd-convertor"
    );

    let tool = format!("{}/tools/overlaybd-convertor:v1", env.host());
    let o = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{tool}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    image::push_sample(&env.registry_addr, "app", "v1", 4);

    env.ctr_pull("default", "overlayfs", &[], &tool);
    let src = format!("{}/app:v1", env.host());
    let dst = format!("{}/app:v1-obd", env.host());
    // The tool with a read-only root, `/work` mounted as `mount`, converting `src` to `to`.
    // ctr replaces the whole command line (the entrypoint too); Docker and Kubernetes add the
    // arguments to the entrypoint.
    let convert = |id: &str, mount: &str, to: &str, more: &[&str]| {
        let run = ["run", "--rm", "--net-host", "--read-only", "--mount", mount];
        let cmd = ["overlaybd-convertor", "convert", "-q", "--plain-http"];
        let args = [&run[..], &[&tool, id], &cmd[..], more, &[&src, to]].concat();
        env.ctr("default", &args)
    };
    // The work disk goes to a volume (an emptyDir in Kubernetes).
    let tmpfs = "type=tmpfs,src=tmpfs,dst=/work,options=nosuid:nodev:mode=1777";
    let out = convert("conv", tmpfs, &dst, &[]);
    assert!(out.contains(&format!("{dst}@sha256:")), "{out}");
    assert!(out.contains("size: "), "{out}");
    // EROFS layers with the image's own mkfs.erofs.
    let dst_erofs = format!("{}/app:v1-erofs", env.host());
    let out = convert("conv3", tmpfs, &dst_erofs, &["--fs", "erofs"]);
    assert!(out.contains(&format!("{dst_erofs}@sha256:")), "{out}");
    // As nobody: a conversion into an OCI layout on a host directory leaves files of 65534.
    let host = dir.path().join("out");
    std::fs::create_dir(&host).unwrap();
    std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let bind = format!(
        "type=bind,src={},dst=/work,options=rbind:rw",
        host.display()
    );
    convert("conv2", &bind, "oci:/work/layout:v1", &[]);
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(host.join("layout/index.json")).unwrap(),
    );
    assert_eq!(owner, 65534, "the convertor did not run as nobody");

    env.rpull(&dst);
    let run = env.ctr(
        "default",
        &["run", "--rm", "--snapshotter", "overlaybd", &dst, "lazy"],
    );
    assert!(run.contains(image::GREETING), "{run}");
}
