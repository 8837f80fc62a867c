//! The node install: `overlaybd-snapshotter install-containerd-config` against host
//! configurations, checked by what containerd 1.6 and 2.x themselves load from the result
//! (`containerd config dump`, with the result bind-mounted on /etc/containerd in a private
//! mount namespace so that absolute `imports` resolve there).

use std::path::Path;
use std::process::Command;

use e2e_tests::{bin, require_containerd, Containerd};

/// Installs into a host root holding `main` as /etc/containerd/config.toml; the tool's output.
fn install(root: &Path, main: &str) -> String {
    let etc = root.join("etc/containerd");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("config.toml"), main).unwrap();
    let o = Command::new(bin("overlaybd-snapshotter"))
        .args(["install-containerd-config", "--root"])
        .arg(root)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    out
}

/// What `c`'s containerd loads from `root`'s /etc/containerd.
fn dump(c: Containerd, root: &Path) -> String {
    if !Path::new("/etc/containerd").is_dir() {
        std::fs::create_dir_all("/etc/containerd").unwrap();
    }
    let script = format!(
        "mount --bind {} /etc/containerd && {} --config /etc/containerd/config.toml config dump",
        root.join("etc/containerd").display(),
        c.containerd().display()
    );
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "config dump: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn has(dump: &str, lines: &[&str]) {
    for l in lines {
        // 1.6 writes "key = \"v\"", 2.x "key = 'v'".
        let alt = l.replace('"', "'");
        assert!(
            dump.lines().any(|d| d.trim() == *l || d.trim() == alt),
            "containerd did not load `{l}`:\n{dump}"
        );
    }
}

#[test]
fn containerd_1_6_loads_the_settings_merged_into_a_version_2_config_and_keeps_the_users() {
    let c = Containerd::V1;
    if !require_containerd(c) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = install(
        root.path(),
        r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "example.com/pause:9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "myrunc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.myrunc]
      runtime_type = "io.containerd.runc.v2"
"#,
    );
    assert!(out.contains("(was \"overlayfs\")"), "{out}");
    let d = dump(c, root.path());
    has(
        &d,
        &[
            "sandbox_image = \"example.com/pause:9\"",
            "default_runtime_name = \"myrunc\"",
            "snapshotter = \"overlaybd\"",
            "disable_snapshot_annotations = false",
            "[proxy_plugins.overlaybd]",
            "address = \"/run/overlaybd-snapshotter/overlaybd.sock\"",
            "config_path = \"/etc/containerd/certs.d\"",
        ],
    );
    let again = install(
        root.path(),
        &std::fs::read_to_string(root.path().join("etc/containerd/config.toml")).unwrap(),
    );
    assert!(again.contains("nothing written"), "{again}");
}

#[test]
fn containerd_2_loads_the_drop_in_and_keeps_the_users_settings() {
    let c = Containerd::V2;
    if !require_containerd(c) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = install(
        root.path(),
        r#"version = 3
[plugins."io.containerd.cri.v1.images"]
  max_concurrent_downloads = 7
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "example.com/pause:9"
[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "myrunc"
"#,
    );
    assert!(
        out.contains("/etc/containerd/conf.d/overlaybd.toml"),
        "{out}"
    );
    let d = dump(c, root.path());
    has(
        &d,
        &[
            "max_concurrent_downloads = 7",
            "sandbox = \"example.com/pause:9\"",
            "default_runtime_name = \"myrunc\"",
            "snapshotter = \"overlaybd\"",
            "enable_remote_snapshot_annotations = \"true\"",
            "[proxy_plugins.overlaybd]",
            "config_path = \"/etc/containerd/certs.d\"",
        ],
    );
    // The Transfer Service unpacks for overlaybd.
    let unpack = d
        .split("[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]")
        .skip(1)
        .any(|s| {
            s.lines()
                .take(4)
                .any(|l| l.trim() == "snapshotter = 'overlaybd'")
        });
    assert!(unpack, "{d}");
}

#[test]
fn containerd_2_running_a_version_2_config_loads_the_merged_settings() {
    let c = Containerd::V2;
    if !require_containerd(c) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    install(
        root.path(),
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"example.com/pause:9\"\n",
    );
    // containerd 2.x migrates the file as it loads it: the CRI settings move to cri.v1.images.
    let d = dump(c, root.path());
    has(
        &d,
        &[
            "sandbox = \"example.com/pause:9\"",
            "snapshotter = \"overlaybd\"",
            "disable_snapshot_annotations = false",
            "[proxy_plugins.overlaybd]",
        ],
    );
}
