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

mod manifests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use yaml_rust2::{Yaml, YamlLoader};

    fn repo(p: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
    }

    fn read(p: &str) -> String {
        std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn s(y: &Yaml) -> &str {
        y.as_str().unwrap_or_else(|| panic!("not a string: {y:?}"))
    }

    /// A container's mounts: mount path → (host path, propagation, read-only).
    fn mounts(
        c: &Yaml,
        volumes: &BTreeMap<String, String>,
    ) -> BTreeMap<String, (String, String, bool)> {
        c["volumeMounts"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|m| {
                let name = s(&m["name"]);
                let host = volumes
                    .get(name)
                    .unwrap_or_else(|| panic!("volume {name} is not a hostPath"))
                    .clone();
                (
                    s(&m["mountPath"]).to_string(),
                    (
                        host,
                        m["mountPropagation"].as_str().unwrap_or("None").to_string(),
                        m["readOnly"].as_bool().unwrap_or(false),
                    ),
                )
            })
            .collect()
    }

    /// The mount that holds `path` in the container, with the same host path under it.
    fn holder<'a>(
        m: &'a BTreeMap<String, (String, String, bool)>,
        path: &Path,
        what: &str,
    ) -> &'a (String, String, bool) {
        let (at, v) = m
            .iter()
            .filter(|(at, _)| path.starts_with(at.as_str()) && at.as_str() != "/")
            .max_by_key(|(at, _)| at.len())
            .unwrap_or_else(|| panic!("{what} {} is not on a host path: {m:?}", path.display()));
        assert_eq!(&v.0, at, "{what}: {at} is not the host's {at}");
        v
    }

    #[test]
    fn the_kubernetes_node_manifest_runs_the_example_configs_on_the_hosts_paths() {
        let text = read("deploy/kubernetes/overlaybd-node.yaml");
        let docs = YamlLoader::load_from_str(&text).unwrap();
        let kind = |k: &str| {
            docs.iter()
                .find(|d| d["kind"].as_str() == Some(k))
                .unwrap_or_else(|| panic!("no {k}"))
        };
        let cm = kind("ConfigMap");
        let ds = kind("DaemonSet");
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(
            spec["hostPID"].as_bool(),
            Some(true),
            "the init step's restart needs it"
        );
        assert_eq!(
            ds["spec"]["updateStrategy"]["type"].as_str(),
            Some("OnDelete")
        );

        // The ConfigMap holds the example configs, which parse.
        for f in ["overlaybd-daemon.toml", "overlaybd-snapshotter.toml"] {
            assert_eq!(
                s(&cm["data"][f]),
                read(&format!("deploy/config/{f}")),
                "the ConfigMap's {f} differs from deploy/config/{f}"
            );
        }
        let daemon = overlaybd_daemon::config::DaemonConfig::parse(
            s(&cm["data"]["overlaybd-daemon.toml"]),
            "daemon",
        )
        .unwrap();
        let snap = snapshotter::config::Config::parse(
            s(&cm["data"]["overlaybd-snapshotter.toml"]),
            "snapshotter",
        )
        .unwrap();

        let mut volumes = BTreeMap::new();
        for v in spec["volumes"].as_vec().unwrap() {
            if let Some(p) = v["hostPath"]["path"].as_str() {
                volumes.insert(s(&v["name"]).to_string(), p.to_string());
            } else {
                assert_eq!(s(&v["configMap"]["name"]), s(&cm["metadata"]["name"]));
                volumes.insert(s(&v["name"]).to_string(), "configmap".to_string());
            }
        }
        let container = |name: &str| {
            spec["containers"]
                .as_vec()
                .unwrap()
                .iter()
                .find(|c| c["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("no container {name}"))
        };
        let command = |c: &Yaml| -> Vec<String> {
            c["command"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|a| s(a).to_string())
                .collect()
        };
        for (name, bin, cfg) in [
            ("daemon", "overlaybd-daemon", "overlaybd-daemon.toml"),
            (
                "snapshotter",
                "overlaybd-snapshotter",
                "overlaybd-snapshotter.toml",
            ),
        ] {
            let c = container(name);
            assert_eq!(
                c["securityContext"]["privileged"].as_bool(),
                Some(true),
                "{name}"
            );
            let cmd = command(c);
            assert_eq!(cmd[0], format!("/usr/local/bin/{bin}"), "{name}");
            let flag = cmd
                .iter()
                .find_map(|a| a.strip_prefix("--config="))
                .unwrap_or_else(|| panic!("{name}: no --config= in {cmd:?}"));
            let m = mounts(c, &volumes);
            let dir = Path::new(flag).parent().unwrap().to_str().unwrap();
            assert_eq!(
                m[dir].0, "configmap",
                "{name}: {flag} is not the ConfigMap's"
            );
            assert_eq!(Path::new(flag).file_name().unwrap(), cfg);
            assert_eq!(m["/dev"].0, "/dev", "{name}: loop devices and /dev/fuse");
        }

        // The daemon's paths are the host's.
        let dm = mounts(container("daemon"), &volumes);
        for (what, p) in [
            ("state_dir", daemon.state_dir.clone()),
            ("socket", daemon.socket.parent().unwrap().to_path_buf()),
            ("run_dir", daemon.run_dir.clone()),
            ("cache_dir", daemon.cache_dir.clone()),
            ("hosts_dir", daemon.hosts_dir.clone()),
        ] {
            holder(&dm, &p, what);
        }
        // The snapshotter's too; its mounts reach the host (containerd mounts overlays over
        // them), and its socket is the one the containerd snippets name.
        let sm = mounts(container("snapshotter"), &volumes);
        let root = holder(&sm, &snap.root, "root");
        assert_eq!(
            root.1, "Bidirectional",
            "the snapshotter's root must propagate mounts"
        );
        for (what, p) in [
            ("socket", snap.socket.parent().unwrap().to_path_buf()),
            (
                "daemon_socket",
                snap.daemon_socket.parent().unwrap().to_path_buf(),
            ),
            ("hosts_dir", snap.hosts_dir.clone()),
        ] {
            holder(&sm, &p, what);
        }
        assert_eq!(snap.daemon_socket, daemon.socket);
        for snippet in [
            snapshotter::containerd_config::SNIPPET_V2,
            snapshotter::containerd_config::SNIPPET_V3,
        ] {
            let t: toml::Table = toml::from_str(snippet).unwrap();
            let proxy = &t["proxy_plugins"]["overlaybd"];
            assert_eq!(proxy["address"].as_str(), snap.socket.to_str());
            assert_eq!(proxy["exports"]["root"].as_str(), snap.root.to_str());
            let certs = if t["version"].as_integer() == Some(3) {
                &t["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"]
            } else {
                &t["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"]
            };
            assert_eq!(certs.as_str(), snap.hosts_dir.to_str());
        }

        // The init step: the host's containerd config, writable; the rest of the host read-only.
        let init = &spec["initContainers"][0];
        let cmd = command(init);
        assert_eq!(
            cmd,
            [
                "/usr/local/bin/overlaybd-snapshotter",
                "install-containerd-config",
                "--root=/host"
            ]
        );
        let im = mounts(init, &volumes);
        assert_eq!(im["/host"], ("/".to_string(), "None".to_string(), true));
        assert_eq!(
            im["/host/etc/containerd"],
            ("/etc/containerd".to_string(), "None".to_string(), false)
        );
    }

    /// `Key=Value` lines of a unit file, by key.
    fn unit(p: &str) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in read(p).lines() {
            if let Some((k, v)) = l.split_once('=') {
                m.entry(k.trim().to_string())
                    .or_default()
                    .push(v.trim().to_string());
            }
        }
        m
    }

    #[test]
    fn the_systemd_units_run_the_installed_binaries_in_order() {
        let install = read("scripts/install.sh");
        assert!(
            install.contains("prefix=/usr/local"),
            "install.sh's default prefix"
        );
        for (u, bin) in [
            ("overlaybd-daemon.service", "overlaybd-daemon"),
            ("overlaybd-snapshotter.service", "overlaybd-snapshotter"),
        ] {
            let m = unit(&format!("deploy/systemd/{u}"));
            let exec = &m["ExecStart"][0];
            assert_eq!(
                exec,
                &format!("/usr/local/bin/{bin}"),
                "{u}: the default config is read"
            );
            let bins = install
                .lines()
                .find_map(|l| l.strip_prefix("bins=\""))
                .expect("install.sh's bins");
            assert!(
                bins.split_whitespace()
                    .any(|b| b.trim_end_matches('"') == bin),
                "install.sh does not install {bin}"
            );
            // A stop or restart leaves the daemon's descriptor keeper and every mount alone.
            assert_eq!(m["KillMode"], ["process"], "{u}");
            assert!(m["Before"][0].contains("containerd.service"), "{u}");
            // The binary's default config is where install.sh puts the example.
            let help = std::process::Command::new(e2e_tests::bin(bin))
                .arg("--help")
                .output()
                .unwrap();
            let help = String::from_utf8_lossy(&help.stdout);
            assert!(
                help.contains(&format!("/etc/{bin}/config.toml")),
                "{bin} --help: {help}"
            );
            assert!(install.contains("/etc/$c/config.toml"), "install.sh");
        }
        let s = unit("deploy/systemd/overlaybd-snapshotter.service");
        assert!(s["After"][0].contains("overlaybd-daemon.service"));
        // The socket unit holds the socket containerd dials across restarts of the service
        // (socket activation), at the address the example configs give.
        assert_eq!(s["Requires"], ["overlaybd-snapshotter.socket"]);
        assert!(install.contains("deploy/systemd/*.socket"), "install.sh");
        let sock = unit("deploy/systemd/overlaybd-snapshotter.socket");
        let listen = &sock["ListenStream"][0];
        for c in [
            "deploy/config/overlaybd-snapshotter.toml",
            "deploy/config/containerd-1.x.toml",
            "deploy/config/containerd-2.x.toml",
        ] {
            assert!(read(c).contains(&format!("\"{listen}\"")), "{c}: {listen}");
        }
        assert_eq!(sock["SocketMode"], ["0600"]);
    }
}
