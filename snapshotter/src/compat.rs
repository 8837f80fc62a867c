//! accelerated-container-image's snapshotter config (`/etc/overlaybd-snapshotter/config.json`),
//! for a node that swaps that snapshotter for this one: the settings that mean the same thing
//! here are taken, every other one is named in a warning, and the rest keeps this snapshotter's
//! defaults.
//!
//! The old snapshotter's state does not carry over: its snapshots are recorded in its own
//! store (`metadata.db`), so [`check_root`] refuses a root that still holds them rather than
//! mixing the two (docs/snapshotter.md, "Switching from overlaybd's snapshotter").

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{Config, RwMode};
use crate::error::{Error, Result};

/// The old snapshotter's config path (it reads no other).
pub const ACI_JSON: &str = "/etc/overlaybd-snapshotter/config.json";

/// `text` (the old snapshotter's config.json) as a config, with one warning per setting not
/// taken.
pub fn from_aci_json(text: &str, what: &str) -> Result<(Config, Vec<String>)> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::InvalidArgument(format!("config {what}: {e}")))?;
    let Value::Object(top) = v else {
        return Err(Error::InvalidArgument(format!(
            "config {what}: not a JSON object"
        )));
    };
    let bad = |k: &str, v: &Value, want: &str| {
        Error::InvalidArgument(format!("config {what}: {k} is {v}, not {want}"))
    };
    let mut c = Config::default();
    let mut warnings = Vec::new();
    for (k, v) in &top {
        let text = || v.as_str().ok_or_else(|| bad(k, v, "a string"));
        match k.as_str() {
            "root" => c.root = PathBuf::from(text()?),
            "address" => c.socket = PathBuf::from(text()?.trim()),
            "verbose" => {
                c.log = match text()?.to_ascii_lowercase().as_str() {
                    "trace" => "trace",
                    "debug" => "debug",
                    "info" | "" => "info",
                    "warn" | "warning" => "warn",
                    _ => "error",
                }
                .into()
            }
            "rwMode" => {
                let m = text()?;
                c.rw_mode = RwMode::parse(m).ok_or_else(|| bad(k, v, "overlayfs, dir or dev"))?;
            }
            "autoRemoveDev" => {
                c.auto_remove_dev = v.as_bool().ok_or_else(|| bad(k, v, "true or false"))?
            }
            "defaultFsType" => {
                let t = text()?;
                if !t.is_empty() {
                    c.default_fs_type = t.to_string();
                }
            }
            "exporterConfig" => {
                if v.get("enable").and_then(Value::as_bool).unwrap_or(false) {
                    let port = v.get("port").and_then(Value::as_u64).unwrap_or(9863);
                    c.metrics_address = format!("127.0.0.1:{port}");
                    warnings.push(format!(
                        "exporterConfig: metrics are served on 127.0.0.1:{port}/metrics only, \
                         with this snapshotter's metric names (docs/snapshotter.md)"
                    ));
                }
            }
            "mirrorRegistry" => {
                let hosts: Vec<String> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| {
                                let h = m.get("host")?.as_str()?;
                                let insecure =
                                    m.get("insecure").and_then(Value::as_bool).unwrap_or(false);
                                Some(format!("{h}{}", if insecure { " (insecure)" } else { "" }))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !hosts.is_empty() {
                    warnings.push(format!(
                        "mirrorRegistry [{}]: registry settings come from hosts.toml files in \
                         {} (server = \"http://HOST\" for a plain-HTTP one), shared with \
                         containerd and the daemon",
                        hosts.join(", "),
                        c.hosts_dir.display()
                    ));
                }
            }
            "writableLayerType" => {
                if v.as_str() != Some("append") {
                    warnings.push(format!(
                        "writableLayerType {v}: writable overlaybd layers are append-only here"
                    ));
                }
            }
            "runtimeType" => {
                if v.as_str() == Some("docker") {
                    warnings.push(
                        "runtimeType \"docker\": not needed; Docker's init layers work as they \
                         are (docs/snapshotter.md, Docker)"
                            .into(),
                    );
                }
            }
            "turboFsType" => warnings.push(
                "turboFsType: not needed; a TurboOCI meta layer is read with the filesystem \
                     its meta blob holds (ext4.fs.meta or erofs.fs.meta)"
                    .into(),
            ),
            "rootfsQuota" => {
                if v.as_str().is_some_and(|q| !q.is_empty()) {
                    warnings.push(format!("rootfsQuota {v}: quotas are not set here"));
                }
            }
            "tenant" => {
                if v.as_i64().is_some_and(|t| t != -1) {
                    warnings.push(format!(
                        "tenant {v}: one snapshotter and daemon per host here (no TCMU HBAs)"
                    ));
                }
            }
            "asyncRemove" | "logReportCaller" => {}
            _ => warnings.push(format!(
                "{k}: not a setting of overlaybd's snapshotter that this one knows; ignored"
            )),
        }
    }
    c.validate()
        .map_err(|why| Error::InvalidArgument(format!("config {what}: {why}")))?;
    Ok((c, warnings))
}

/// Refuses a root that holds snapshots of another snapshotter (overlaybd's Go snapshotter
/// keeps them in `metadata.db`): this snapshotter would not know them, containerd would fail
/// to find them, and `Cleanup` would delete their directories. A root whose old snapshots
/// are all gone (images removed first) is fine.
pub fn check_root(root: &Path) -> Result<()> {
    if !root.join("metadata.db").exists() || root.join("metadata.redb").exists() {
        return Ok(());
    }
    let snaps = root.join("snapshots");
    let left = std::fs::read_dir(&snaps)
        .map(|d| d.flatten().count())
        .unwrap_or(0);
    if left == 0 {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "root {} holds {left} snapshots of overlaybd's own snapshotter (metadata.db), which \
         this one cannot take over: drain the node and remove the images pulled through it \
         (crictl rmi / ctr -n k8s.io images rm) while the old snapshotter still runs, or set \
         root to an empty directory; docs/snapshotter.md, \"Switching from overlaybd's \
         snapshotter\"",
        root.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_configs_map_and_the_rest_is_named() {
        // accelerated-container-image's docs/QUICKSTART.md and its packages' config.
        let (c, w) = from_aci_json(
            r#"{"root": "/var/lib/overlaybd/", "address": "/run/overlaybd-snapshotter/overlaybd.sock"}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/var/lib/overlaybd/"));
        assert_eq!(
            c.socket,
            PathBuf::from("/run/overlaybd-snapshotter/overlaybd.sock")
        );
        assert!(w.is_empty(), "{w:?}");
        let (c, w) = from_aci_json(
            r#"{
                "root": "/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd",
                "address": "/run/overlaybd-snapshotter/overlaybd.sock",
                "verbose": "debug",
                "rwMode": "dir",
                "logReportCaller": false,
                "autoRemoveDev": false,
                "exporterConfig": {"enable": true, "uriPrefix": "/metrics", "port": 9863},
                "mirrorRegistry": [{"host": "localhost:5000", "insecure": true}],
                "runtimeType": "docker",
                "turboFsType": ["erofs", "ext4"],
                "tenant": -1,
                "somethingNew": 1
            }"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.log, "debug");
        assert_eq!(c.rw_mode, RwMode::Dir);
        assert!(!c.auto_remove_dev);
        assert_eq!(c.metrics_address, "127.0.0.1:9863");
        for k in [
            "exporterConfig",
            "mirrorRegistry [localhost:5000 (insecure)]",
            "runtimeType",
            "turboFsType",
            "somethingNew",
        ] {
            assert!(w.iter().any(|w| w.starts_with(k)), "{k} not in {w:#?}");
        }
        assert!(!w.iter().any(|w| w.starts_with("tenant")), "{w:#?}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, word) in [
            ("[1]", "not a JSON object"),
            ("{\"rwMode\": \"fast\"}", "rwMode"),
            ("{\"root\": 3}", "root"),
            ("{\"autoRemoveDev\": \"yes\"}", "autoRemoveDev"),
            ("{\"root\": \"relative\"}", "root"),
        ] {
            let e = from_aci_json(text, "t").unwrap_err().to_string();
            assert!(e.contains(word), "{text}: {e}");
        }
    }

    #[test]
    fn a_root_with_the_old_snapshotters_snapshots_is_refused_until_they_are_gone() {
        let d = tempfile::tempdir().unwrap();
        check_root(d.path()).unwrap();
        std::fs::write(d.path().join("metadata.db"), b"bolt").unwrap();
        std::fs::create_dir_all(d.path().join("snapshots/12/fs")).unwrap();
        let e = check_root(d.path()).unwrap_err().to_string();
        assert!(e.contains("1 snapshots") && e.contains("crictl rmi"), "{e}");
        std::fs::remove_dir_all(d.path().join("snapshots/12")).unwrap();
        check_root(d.path()).unwrap();
        // Once this snapshotter has its store there, the old file is history.
        std::fs::create_dir_all(d.path().join("snapshots/1")).unwrap();
        std::fs::write(d.path().join("metadata.redb"), b"").unwrap();
        check_root(d.path()).unwrap();
    }
}
