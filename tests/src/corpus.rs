//! A corpus of real application images, built from Debian packages with `mmdebstrap` (through
//! the Debian mirror apt uses) in three layers the way a Dockerfile makes them: the Debian
//! bookworm minbase system (the same layer, so the same digest, in every image), the runtime
//! (the packages' install as a diff of the root filesystem: new and changed files, whiteouts
//! for removed ones) and the application (its own files). Each has a readiness probe.
//!
//! Built once into [`CACHE`] (not in the repository) and reused: `mmdebstrap` output depends on
//! the mirror's state, so a cache keeps a machine's runs comparable. [`push`] puts an image into
//! a test registry.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::image::header;

/// Where the corpus is built (one directory per image).
pub const CACHE: &str = "/var/tmp/overlaybd-test/corpus";

/// How a container of the image says it is ready.
#[derive(Clone, Copy, Debug)]
pub enum Ready {
    /// `GET http://127.0.0.1:{port}{path}` answers 200 with a body containing the text.
    Http(&'static str, &'static str),
    /// The container prints the text (and exits).
    Prints(&'static str),
}

/// One image of the corpus.
#[derive(Debug)]
pub struct App {
    pub name: &'static str,
    /// The Debian packages the runtime layer installs (with their dependencies).
    pub packages: &'static [&'static str],
    /// The application layer: path, mode, content.
    pub files: &'static [(&'static str, u32, &'static str)],
    /// The command; `{port}` becomes the port the probe polls.
    pub cmd: &'static [&'static str],
    pub ready: Ready,
}

const FLASK_APP: &str = "\
import sys
from flask import Flask

app = Flask(__name__)


@app.route('/')
def index():
    return 'hello from flask\\n'


app.run(host='127.0.0.1', port=int(sys.argv[1]))
";

const NGINX_CONF: &str = "\
daemon off;
pid /tmp/nginx.pid;
error_log stderr;
events {}
http {
    access_log off;
    server {
        listen 127.0.0.1:PORT;
        root /srv/www;
    }
}
";

/// The images. Two of them run in CI ([`ci_subset`]); all of them with `OBD_CORPUS=all`.
pub const APPS: &[App] = &[
    App {
        name: "flask",
        packages: &["python3-flask"],
        files: &[("app/app.py", 0o644, FLASK_APP)],
        cmd: &["python3", "/app/app.py", "{port}"],
        ready: Ready::Http("/", "hello from flask"),
    },
    App {
        name: "nginx",
        packages: &["nginx-light"],
        files: &[
            ("srv/www/index.html", 0o644, "hello from nginx\n"),
            ("app/nginx.conf", 0o644, NGINX_CONF),
        ],
        cmd: &[
            "sh",
            "-c",
            "sed s/PORT/{port}/ /app/nginx.conf > /tmp/nginx.conf && exec nginx -c /tmp/nginx.conf",
        ],
        ready: Ready::Http("/", "hello from nginx"),
    },
    App {
        name: "pydata",
        packages: &["python3-numpy", "python3-scipy", "python3-pandas"],
        files: &[(
            "app/ready.py",
            0o644,
            "import numpy, scipy.linalg, pandas\nprint('ready', numpy.__version__)\n",
        )],
        cmd: &["python3", "/app/ready.py"],
        ready: Ready::Prints("ready"),
    },
];

/// The images the tests run: `OBD_CORPUS` names them (comma-separated, or `all`); by default
/// the two small ones, which a clean machine builds in about a minute.
pub fn ci_subset() -> Vec<&'static App> {
    let want = std::env::var("OBD_CORPUS").unwrap_or_else(|_| "flask,nginx".into());
    APPS.iter()
        .filter(|a| want == "all" || want.split(',').any(|w| w.trim() == a.name))
        .collect()
}

/// The app's command with `port` in place of `{port}`.
pub fn command(app: &App, port: u16) -> Vec<String> {
    app.cmd
        .iter()
        .map(|c| c.replace("{port}", &port.to_string()))
        .collect()
}

/// The image's three layers as uncompressed tars (base, runtime, application), built into
/// [`CACHE`] if they are not there; `None` when mmdebstrap is missing outside CI.
pub fn layers(app: &App) -> Option<Vec<PathBuf>> {
    let dir = Path::new(CACHE).join(app.name);
    let paths: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("layer-{i}.tar"))).collect();
    if dir.join("done").is_file() {
        return Some(paths);
    }
    let minbase = crate::image::debian_minbase_tar()?;
    std::fs::create_dir_all(&dir).unwrap();
    let work = tempfile::tempdir_in(&dir).unwrap();
    let (base, runtime) = (work.path().join("base"), work.path().join("runtime"));
    extract(&minbase, &base);
    // The runtime: minbase with the packages, as a separate mmdebstrap run (the same mirror
    // state gives the same base files), then diffed against the base.
    let full = work.path().join("runtime.tar");
    let include = format!("--include={}", app.packages.join(","));
    test_support::run(
        "mmdebstrap",
        &[
            "--quiet",
            "--variant=minbase",
            "--mode=root",
            &include,
            "bookworm",
            full.to_str().unwrap(),
        ],
    );
    extract(&full, &runtime);
    std::fs::write(&paths[0], crate::image::tar_of(&base, &["."], &[])).unwrap();
    std::fs::write(&paths[1], diff_layer(&base, &runtime)).unwrap();
    std::fs::write(&paths[2], app_layer(app)).unwrap();
    std::fs::write(dir.join("done"), app.packages.join(" ")).unwrap();
    Some(paths)
}

fn extract(tar: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    test_support::run(
        "tar",
        &[
            "-C",
            into.to_str().unwrap(),
            "--numeric-owner",
            "--xattrs",
            "-xf",
            tar.to_str().unwrap(),
        ],
    );
}

/// What a diff compares of an entry: type and permission bits, owner, size, device, and for
/// a symlink its target (file contents are compared apart).
fn key(m: &std::fs::Metadata, p: &Path) -> (u32, u32, u32, u64, u64, Option<PathBuf>) {
    let link = m
        .file_type()
        .is_symlink()
        .then(|| std::fs::read_link(p).unwrap());
    let size = if m.is_file() { m.len() } else { 0 };
    (m.mode(), m.uid(), m.gid(), size, m.rdev(), link)
}

fn same_content(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// Every entry under `root`, by path relative to it, sorted.
fn walk(root: &Path) -> BTreeMap<PathBuf, std::fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(r.clone());
            }
            out.insert(r, m);
        }
    }
    out
}

/// The layer that turns the tree `lower` into `upper`: entries that are new or changed (with
/// their parent directories), and a whiteout for each topmost entry that is gone.
pub fn diff_layer(lower: &Path, upper: &Path) -> Vec<u8> {
    let (lo, up) = (walk(lower), walk(upper));
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    let mut added: std::collections::BTreeSet<PathBuf> = Default::default();
    for (rel, m) in &up {
        let changed = match lo.get(rel) {
            None => true,
            Some(l) => {
                key(l, &lower.join(rel)) != key(m, &upper.join(rel))
                    || (m.is_file() && !same_content(&lower.join(rel), &upper.join(rel)))
            }
        };
        if !changed {
            continue;
        }
        // Parent directories first, as they are in `upper`.
        let parents: Vec<&Path> = rel.ancestors().skip(1).collect();
        for p in parents.into_iter().rev() {
            if p.as_os_str().is_empty() || !added.insert(p.to_path_buf()) {
                continue;
            }
            b.append_path_with_name(upper.join(p), p).unwrap();
        }
        if added.insert(rel.clone()) {
            b.append_path_with_name(upper.join(rel), rel).unwrap();
        }
    }
    for rel in lo.keys() {
        let gone = !up.contains_key(rel);
        let parent_gone = rel
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && !up.contains_key(p));
        if gone && !parent_gone {
            let name = format!(".wh.{}", rel.file_name().unwrap().to_string_lossy());
            let wh = rel.parent().unwrap().join(name);
            let wh = wh.to_str().unwrap();
            let mut h = header(wh, tar::EntryType::Regular, 0o644, 0);
            b.append_data(&mut h, wh, std::io::empty()).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// The application layer: its files, in directories owned by root.
fn app_layer(app: &App) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, mode, content) in app.files {
        for d in Path::new(path).ancestors().skip(1) {
            if d.as_os_str().is_empty() || !dirs.insert(d.to_path_buf()) {
                continue;
            }
            let d = d.to_str().unwrap();
            let mut h = header(d, tar::EntryType::Directory, 0o755, 0);
            b.append_data(&mut h, d, std::io::empty()).unwrap();
        }
        let mut h = header(path, tar::EntryType::Regular, *mode, content.len() as u64);
        b.append_data(&mut h, path, content.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Pushes the app's image (layers gzipped; its command on port 8080) as
/// `registry/name:tag`; returns its layer bytes.
pub fn push(registry: &str, app: &App, tag: &str) -> Option<u64> {
    let layers: Vec<Vec<u8>> = layers(app)?
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let layers: Vec<(&[u8], bool)> = layers.iter().map(|l| (&l[..], false)).collect();
    let env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];
    let cmd = command(app, 8080);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    Some(crate::image::push_with_env(
        registry, app.name, tag, &layers, &cmd, &env,
    ))
}
