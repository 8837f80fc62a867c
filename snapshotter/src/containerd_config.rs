//! Puts overlaybd's settings into a host's containerd configuration
//! (`overlaybd-snapshotter install-containerd-config`, the Kubernetes DaemonSet's init step).
//!
//! The settings are the snippets users are told to add (`deploy/config/containerd-1.x.toml`
//! for `version = 2` configs, `containerd-2.x.toml` for `version = 3`), which the end-to-end
//! tests run. How they get in depends on how containerd reads imported files:
//! - containerd 1.x replaces a whole plugin table with an imported file's: a drop-in that sets
//!   `[plugins."io.containerd.grpc.v1.cri".containerd] snapshotter` would reset every other
//!   CRI setting of the main file (its sandbox image, its runtimes) to the defaults. So for a
//!   `version = 2` config the snippet is merged key by key into the main file itself.
//! - containerd 2.x merges imported files key by key, so for `version = 3` the snippet goes
//!   to a drop-in (`/etc/containerd/conf.d/overlaybd.toml`) and the main file only gains an
//!   `imports` entry if none covers it.
//!
//! The config's `version` decides (containerd 2.x also runs `version = 2` files, migrating
//! them as it loads). Without a config file, `containerd --version` does. Nothing is written
//! when everything is in place; a file that changes keeps its old text as `<file>.bak`.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table, Value};

use crate::error::{Error, Result};

/// The snippet for `version = 2` configs (containerd 1.6/1.7, or 2.x running a v2 file).
pub const SNIPPET_V2: &str = include_str!("../../deploy/config/containerd-1.x.toml");
/// The snippet for `version = 3` configs (containerd 2.x).
pub const SNIPPET_V3: &str = include_str!("../../deploy/config/containerd-2.x.toml");

/// containerd's main configuration file, on the host.
pub const MAIN: &str = "/etc/containerd/config.toml";
/// Where the `version = 3` drop-in goes, and the `imports` entry that covers it.
pub const DROP_IN: &str = "/etc/containerd/conf.d/overlaybd.toml";
pub const DROP_IN_GLOB: &str = "/etc/containerd/conf.d/*.toml";

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The path as seen from the host (`/etc/containerd/...`).
    pub host_path: PathBuf,
    /// The text it has now (`None`: it does not exist).
    pub before: Option<String>,
    pub after: String,
    /// One line per setting added or changed.
    pub changes: Vec<String>,
}

/// What has to change for containerd to use overlaybd-snapshotter: nothing, or files to write.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The config version the settings were written for.
    pub version: i64,
    pub files: Vec<FileChange>,
}

/// Works out the changes for the host whose root directory is `root` (`/`, or where a
/// container mounted the host). `version` is the config version to assume when there is no
/// config file (else `containerd --version` under `root` decides).
pub fn plan(root: &Path, version: Option<i64>) -> Result<Plan> {
    let main_path = under(root, MAIN);
    let main_text = read_optional(&main_path)?;
    let version = match &main_text {
        Some(t) => config_version(t, &main_path)?,
        None => match version {
            Some(v) => v,
            None => default_version(root)?,
        },
    };
    let mut files = Vec::new();
    match version {
        2 => {
            let mut doc = parse(main_text.as_deref().unwrap_or(""), &main_path)?;
            let mut changes = Vec::new();
            if doc.get("version").is_none() {
                doc.insert("version", toml_edit::value(2));
            }
            merge(
                doc.as_table_mut(),
                parse(SNIPPET_V2, Path::new("containerd-1.x.toml"))?.as_table(),
                "",
                &mut changes,
            );
            push_change(&mut files, MAIN, main_text, doc.to_string(), changes);
        }
        3 => {
            let drop_in_path = under(root, DROP_IN);
            let before = read_optional(&drop_in_path)?;
            let changes = if before.as_deref() == Some(SNIPPET_V3) {
                Vec::new()
            } else {
                vec![format!(
                    "{DROP_IN}: overlaybd's settings for containerd 2.x"
                )]
            };
            push_change(&mut files, DROP_IN, before, SNIPPET_V3.to_string(), changes);
            let mut doc = parse(main_text.as_deref().unwrap_or("version = 3\n"), &main_path)?;
            let mut changes = Vec::new();
            if !imports_cover(&doc, DROP_IN) {
                let imports = doc
                    .entry("imports")
                    .or_insert(toml_edit::value(toml_edit::Array::new()));
                match imports.as_array_mut() {
                    Some(a) => a.push(DROP_IN_GLOB),
                    None => {
                        return Err(Error::FailedPrecondition(format!(
                            "{}: `imports` is not an array",
                            main_path.display()
                        )))
                    }
                }
                changes.push(format!("imports += \"{DROP_IN_GLOB}\""));
            }
            push_change(&mut files, MAIN, main_text, doc.to_string(), changes);
        }
        v => {
            return Err(Error::FailedPrecondition(format!(
                "{}: config version {v}; overlaybd-rs edits versions 2 and 3 (`containerd config \
                 migrate` turns an older file into the current version)",
                main_path.display()
            )))
        }
    }
    Ok(Plan { version, files })
}

/// Writes the plan's files under `root` (each changed file's old text kept as `<file>.bak`,
/// the new one written to a temporary file and renamed over it).
pub fn apply(root: &Path, plan: &Plan) -> Result<()> {
    for f in &plan.files {
        let path = under(root, &f.host_path.to_string_lossy());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        if f.before.is_some() {
            let bak = PathBuf::from(format!("{}.bak", path.display()));
            std::fs::copy(&path, &bak).map_err(|e| {
                Error::io(format!("keep {} as {}", path.display(), bak.display()), e)
            })?;
        }
        let tmp = PathBuf::from(format!("{}.overlaybd-tmp", path.display()));
        std::fs::write(&tmp, &f.after)
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| Error::io(format!("rename {} to {}", tmp.display(), path.display()), e))?;
    }
    Ok(())
}

fn push_change(
    files: &mut Vec<FileChange>,
    host_path: &str,
    before: Option<String>,
    after: String,
    changes: Vec<String>,
) {
    if before.as_deref() == Some(after.as_str()) {
        return;
    }
    files.push(FileChange {
        host_path: host_path.into(),
        before,
        after,
        changes,
    });
}

fn under(root: &Path, host_path: &str) -> PathBuf {
    root.join(host_path.trim_start_matches('/'))
}

fn read_optional(p: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

fn parse(text: &str, what: &Path) -> Result<DocumentMut> {
    text.parse::<DocumentMut>().map_err(|e| {
        Error::InvalidArgument(format!("{}: {}", what.display(), e.to_string().trim()))
    })
}

/// The `version` key of a config file; a file without one is version 1 to containerd.
fn config_version(text: &str, what: &Path) -> Result<i64> {
    let doc = parse(text, what)?;
    match doc.get("version") {
        None => Ok(1),
        Some(v) => v.as_integer().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: `version` is not a number", what.display()))
        }),
    }
}

/// The config version of the containerd under `root`: 2 for 1.x, 3 for 2.x.
fn default_version(root: &Path) -> Result<i64> {
    let mut cmd = if root == Path::new("/") {
        std::process::Command::new("containerd")
    } else {
        let mut c = std::process::Command::new("chroot");
        c.arg(root).arg("containerd");
        c
    };
    let out = cmd.arg("--version").output().map_err(|e| {
        Error::FailedPrecondition(format!(
            "no {MAIN} and `containerd --version` could not run ({e}): say which config version \
             to write (--config-version 2 for containerd 1.x, 3 for 2.x)"
        ))
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    version_of(&text).ok_or_else(|| {
        let said = if out.status.success() {
            format!("said {:?}", text.trim())
        } else {
            format!(
                "failed ({}: {})",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        };
        Error::FailedPrecondition(format!(
            "no {MAIN}, and `containerd --version` {said}: say which config version to write \
             (--config-version 2 for containerd 1.x, 3 for 2.x)"
        ))
    })
}

/// `containerd --version` → the config version its release writes by default.
pub fn version_of(containerd_version: &str) -> Option<i64> {
    let v = containerd_version.split_whitespace().nth(2)?;
    let major = v
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse::<u32>()
        .ok()?;
    match major {
        1 => Some(2),
        2.. => Some(3),
        _ => None,
    }
}

/// Whether an `imports` entry of `doc` names `path` (itself, or a `dir/*.toml` glob over it).
fn imports_cover(doc: &DocumentMut, path: &str) -> bool {
    let Some(a) = doc.get("imports").and_then(Item::as_array) else {
        return false;
    };
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    a.iter().filter_map(Value::as_str).any(|i| {
        i == path
            || i.rsplit_once('/').is_some_and(|(idir, pat)| {
                idir == dir
                    && match pat.split_once('*') {
                        Some((pre, suf)) => file.starts_with(pre) && file.ends_with(suf),
                        None => pat == file,
                    }
            })
    })
}

/// Sets every key of `from` in `into`, table by table, noting each one that changes. Arrays of
/// tables gain the entries they lack.
fn merge(into: &mut Table, from: &Table, prefix: &str, changes: &mut Vec<String>) {
    for (k, v) in from.iter() {
        let name = if prefix.is_empty() {
            quote_key(k)
        } else {
            format!("{prefix}.{}", quote_key(k))
        };
        match v {
            Item::Table(t) => {
                let entry = into.entry(k).or_insert_with(|| {
                    let mut n = Table::new();
                    n.set_implicit(true);
                    Item::Table(n)
                });
                if !entry.is_table() {
                    changes.push(format!("{name}: replaced a non-table value"));
                    *entry = Item::Table(Table::new());
                }
                let sub = entry.as_table_mut().expect("a table");
                merge(sub, t, &name, changes);
            }
            Item::ArrayOfTables(a) => {
                let entry = into
                    .entry(k)
                    .or_insert(Item::ArrayOfTables(Default::default()));
                if let Some(have) = entry.as_array_of_tables_mut() {
                    for t in a.iter() {
                        let text = t.to_string();
                        if !have.iter().any(|h| h.to_string() == text) {
                            have.push(t.clone());
                            changes.push(format!("{name} += {{{}}}", inline(t)));
                        }
                    }
                }
            }
            Item::Value(val) => {
                let old = into.get(k).and_then(Item::as_value).map(|o| o.to_string());
                let new = val.to_string();
                if old.as_deref().map(str::trim) != Some(new.trim()) {
                    match &old {
                        Some(o) => {
                            changes.push(format!("{name} = {} (was {})", new.trim(), o.trim()))
                        }
                        None => changes.push(format!("{name} = {}", new.trim())),
                    }
                    let mut v = val.clone();
                    // The file's layout stays: a changed value keeps its place and spacing, a
                    // new key comes with the snippet's indentation.
                    match into.get_mut(k).and_then(Item::as_value_mut) {
                        Some(o) => {
                            *v.decor_mut() = o.decor().clone();
                            *o = v;
                        }
                        None => {
                            let key = from.key(k).cloned().unwrap_or_else(|| k.into());
                            into.insert_formatted(&key, Item::Value(v));
                        }
                    }
                }
            }
            Item::None => {}
        }
    }
}

fn quote_key(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        format!("\"{k}\"")
    }
}

fn inline(t: &Table) -> String {
    t.iter()
        .filter_map(|(k, v)| {
            v.as_value()
                .map(|v| format!("{k} = {}", v.to_string().trim()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(main: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        if let Some(m) = main {
            let p = d.path().join("etc/containerd");
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("config.toml"), m).unwrap();
        }
        d
    }

    fn install(root: &Path, version: Option<i64>) -> Plan {
        let p = plan(root, version).unwrap();
        apply(root, &p).unwrap();
        p
    }

    const USER_V2: &str = r#"version = 2
# the user's own settings
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "example.com/pause:9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "myrunc"
"#;

    #[test]
    fn a_version_2_config_gets_the_settings_merged_in_and_keeps_its_own() {
        let h = host(Some(USER_V2));
        let p = install(h.path(), None);
        assert_eq!(p.version, 2);
        assert_eq!(p.files.len(), 1);
        let f = &p.files[0];
        assert!(
            f.changes
                .iter()
                .any(|c| c.contains("snapshotter = \"overlaybd\" (was \"overlayfs\")")),
            "{:?}",
            f.changes
        );
        let text = std::fs::read_to_string(h.path().join("etc/containerd/config.toml")).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["sandbox_image"].as_str(), Some("example.com/pause:9"));
        assert_eq!(
            cri["containerd"]["default_runtime_name"].as_str(),
            Some("myrunc")
        );
        assert_eq!(cri["containerd"]["snapshotter"].as_str(), Some("overlaybd"));
        assert_eq!(
            cri["containerd"]["disable_snapshot_annotations"].as_bool(),
            Some(false)
        );
        assert_eq!(
            doc["proxy_plugins"]["overlaybd"]["address"].as_str(),
            Some("/run/overlaybd-snapshotter/overlaybd.sock")
        );
        assert!(text.contains("# the user's own settings"), "{text}");
        let bak = std::fs::read_to_string(h.path().join("etc/containerd/config.toml.bak")).unwrap();
        assert_eq!(bak, USER_V2);
        // Again: nothing to do.
        assert!(plan(h.path(), None).unwrap().files.is_empty());
    }

    #[test]
    fn a_version_3_config_gets_a_drop_in_and_an_imports_entry() {
        let user = "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\n  max_concurrent_downloads = 7\n";
        let h = host(Some(user));
        let p = install(h.path(), None);
        assert_eq!(p.version, 3);
        let drop_in =
            std::fs::read_to_string(h.path().join("etc/containerd/conf.d/overlaybd.toml")).unwrap();
        assert_eq!(drop_in, SNIPPET_V3);
        let main = std::fs::read_to_string(h.path().join("etc/containerd/config.toml")).unwrap();
        assert!(main.contains("max_concurrent_downloads = 7"), "{main}");
        let doc: toml::Table = toml::from_str(&main).unwrap();
        assert_eq!(
            doc["imports"].as_array().unwrap()[0].as_str(),
            Some(DROP_IN_GLOB)
        );
        assert!(plan(h.path(), None).unwrap().files.is_empty());
    }

    #[test]
    fn imports_that_already_cover_the_drop_in_are_left_alone() {
        for imports in [
            "[\"/etc/containerd/conf.d/*.toml\"]",
            "[\"/etc/containerd/conf.d/overlaybd.toml\"]",
            "['/etc/containerd/conf.d/*']",
        ] {
            let user = format!("version = 3\nimports = {imports}\n");
            let h = host(Some(&user));
            let p = install(h.path(), None);
            assert_eq!(p.files.len(), 1, "{imports}: {:?}", p.files);
            assert_eq!(p.files[0].host_path, Path::new(DROP_IN));
        }
        // A glob over another directory does not.
        let h = host(Some("version = 3\nimports = [\"/etc/other/*.toml\"]\n"));
        let p = install(h.path(), None);
        assert_eq!(p.files.len(), 2);
    }

    #[test]
    fn without_a_config_file_the_version_given_decides() {
        let h = host(None);
        let p = install(h.path(), Some(2));
        assert_eq!(p.files.len(), 1);
        let text = std::fs::read_to_string(h.path().join("etc/containerd/config.toml")).unwrap();
        assert!(text.starts_with("version = 2\n"), "{text}");
        assert!(!h.path().join("etc/containerd/config.toml.bak").exists());

        let h = host(None);
        let p = install(h.path(), Some(3));
        assert_eq!(p.files.len(), 2);
        let text = std::fs::read_to_string(h.path().join("etc/containerd/config.toml")).unwrap();
        assert_eq!(
            text,
            format!("version = 3\nimports = [\"{DROP_IN_GLOB}\"]\n")
        );
    }

    #[test]
    fn versions_it_does_not_edit_and_bad_files_are_named() {
        let h = host(Some("[plugins.cri]\n"));
        let e = plan(h.path(), None).unwrap_err().to_string();
        assert!(
            e.contains("config version 1") && e.contains("migrate"),
            "{e}"
        );
        let h = host(Some("version = \"two\"\n"));
        let e = plan(h.path(), None).unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
        let h = host(Some("version = 2\n[broken\n"));
        let e = plan(h.path(), None).unwrap_err().to_string();
        assert!(e.contains("config.toml"), "{e}");
        let h = host(Some("version = 3\nimports = \"x\"\n"));
        let e = plan(h.path(), None).unwrap_err().to_string();
        assert!(e.contains("not an array"), "{e}");
    }

    #[test]
    fn containerd_versions_map_to_config_versions() {
        assert_eq!(
            version_of("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1"),
            Some(2)
        );
        assert_eq!(
            version_of("containerd github.com/containerd/containerd/v2 2.1.9+unknown "),
            Some(3)
        );
        assert_eq!(
            version_of("containerd containerd.io v1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da"),
            Some(2)
        );
        assert_eq!(version_of("nonsense"), None);
    }
}
