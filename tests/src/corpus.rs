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
    /// A PostgreSQL server on the port answers `SELECT 1` ([`postgres_answers`]).
    Postgres,
}

/// One image of the corpus.
#[derive(Debug)]
pub struct App {
    pub name: &'static str,
    /// The Debian packages the runtime layer installs (with their dependencies).
    pub packages: &'static [&'static str],
    /// The application layer: path, mode, content.
    pub files: &'static [(&'static str, u32, &'static [u8])],
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

/// The images: a Python web app, a web server, a database, a large Python stack, a JVM. Two
/// of them run in CI ([`ci_subset`]); all of them with `OBD_CORPUS=all`.
pub const APPS: &[App] = &[
    App {
        name: "flask",
        packages: &["python3-flask"],
        files: &[("app/app.py", 0o644, FLASK_APP.as_bytes())],
        cmd: &["python3", "/app/app.py", "{port}"],
        ready: Ready::Http("/", "hello from flask"),
    },
    App {
        name: "nginx",
        packages: &["nginx-light"],
        files: &[
            ("srv/www/index.html", 0o644, b"hello from nginx\n"),
            ("app/nginx.conf", 0o644, NGINX_CONF.as_bytes()),
        ],
        cmd: &[
            "sh",
            "-c",
            "sed s/PORT/{port}/ /app/nginx.conf > /tmp/nginx.conf && exec nginx -c /tmp/nginx.conf",
        ],
        ready: Ready::Http("/", "hello from nginx"),
    },
    App {
        name: "postgres",
        // The package's own configure step runs initdb: the cluster `15/main` is in the
        // runtime layer, as an image built from Debian's package has it.
        packages: &["postgresql"],
        files: &[(
            "app/pg_hba.conf",
            0o644,
            b"host all all 127.0.0.1/32 trust\n",
        )],
        cmd: &[
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "/usr/lib/postgresql/15/bin/postgres",
            "-D",
            "/var/lib/postgresql/15/main",
            "-c",
            "config_file=/etc/postgresql/15/main/postgresql.conf",
            "-c",
            "hba_file=/app/pg_hba.conf",
            "-c",
            "ssl=off",
            "-h",
            "127.0.0.1",
            "-p",
            "{port}",
            "-k",
            "/tmp",
        ],
        ready: Ready::Postgres,
    },
    App {
        name: "pydata",
        packages: &["python3-numpy", "python3-scipy", "python3-pandas"],
        files: &[(
            "app/ready.py",
            0o644,
            b"import numpy, scipy.linalg, pandas\nprint('ready', numpy.__version__)\n",
        )],
        cmd: &["python3", "/app/ready.py"],
        ready: Ready::Prints("ready"),
    },
    App {
        name: "jvm",
        packages: &["default-jre-headless"],
        files: &[("app/Ready.class", 0o644, READY_CLASS)],
        cmd: &["java", "-cp", "/app", "Ready"],
        ready: Ready::Prints("ready"),
    },
];

/// `public class Ready { public static void main(String[] a) { System.out.println("ready"); } }`
/// compiled (class file version 52, so any JRE since 8 runs it), written out here because the
/// image's JRE has no compiler. `java -cp . Ready` prints `ready`.
const READY_CLASS: &[u8] =
    b"\xca\xfe\xba\xbe\x00\x00\x00\x34\x00\x16\x07\x00\x02\x01\x00\x05\x52\x65\x61\x64\
    \x79\x07\x00\x04\x01\x00\x10\x6a\x61\x76\x61\x2f\x6c\x61\x6e\x67\x2f\x4f\x62\x6a\
    \x65\x63\x74\x01\x00\x04\x6d\x61\x69\x6e\x01\x00\x16\x28\x5b\x4c\x6a\x61\x76\x61\
    \x2f\x6c\x61\x6e\x67\x2f\x53\x74\x72\x69\x6e\x67\x3b\x29\x56\x01\x00\x04\x43\x6f\
    \x64\x65\x09\x00\x09\x00\x0b\x07\x00\x0a\x01\x00\x10\x6a\x61\x76\x61\x2f\x6c\x61\
    \x6e\x67\x2f\x53\x79\x73\x74\x65\x6d\x0c\x00\x0c\x00\x0d\x01\x00\x03\x6f\x75\x74\
    \x01\x00\x15\x4c\x6a\x61\x76\x61\x2f\x69\x6f\x2f\x50\x72\x69\x6e\x74\x53\x74\x72\
    \x65\x61\x6d\x3b\x08\x00\x0f\x01\x00\x05\x72\x65\x61\x64\x79\x0a\x00\x11\x00\x13\
    \x07\x00\x12\x01\x00\x13\x6a\x61\x76\x61\x2f\x69\x6f\x2f\x50\x72\x69\x6e\x74\x53\
    \x74\x72\x65\x61\x6d\x0c\x00\x14\x00\x15\x01\x00\x07\x70\x72\x69\x6e\x74\x6c\x6e\
    \x01\x00\x15\x28\x4c\x6a\x61\x76\x61\x2f\x6c\x61\x6e\x67\x2f\x53\x74\x72\x69\x6e\
    \x67\x3b\x29\x56\x00\x21\x00\x01\x00\x03\x00\x00\x00\x00\x00\x01\x00\x09\x00\x05\
    \x00\x06\x00\x01\x00\x07\x00\x00\x00\x15\x00\x02\x00\x01\x00\x00\x00\x09\xb2\x00\
    \x08\x12\x0e\xb6\x00\x10\xb1\x00\x00\x00\x00\x00\x00";

/// The images the tests run: `OBD_CORPUS` names them (comma-separated, or `all`); by default
/// the two small ones, which a clean machine builds in about a minute.
pub fn ci_subset() -> Vec<&'static App> {
    let want = std::env::var("OBD_CORPUS").unwrap_or_else(|_| "flask,nginx".into());
    APPS.iter()
        .filter(|a| want == "all" || want.split(',').any(|w| w.trim() == a.name))
        .collect()
}

/// Whether a PostgreSQL server on 127.0.0.1:`port` answers `SELECT 1` as user `postgres`
/// (trust authentication): protocol 3.0, a startup message, then a simple query.
pub fn postgres_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let mut body = 196608u32.to_be_bytes().to_vec();
    for kv in ["user", "postgres", "database", "postgres", ""] {
        body.extend(kv.as_bytes());
        body.push(0);
    }
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend(body);
    // Reads messages until `want` (a type byte) or an error ('E') or the end.
    let until = |s: &mut std::net::TcpStream, want: u8| -> bool {
        loop {
            let mut head = [0u8; 5];
            if s.read_exact(&mut head).is_err() {
                return false;
            }
            let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
            let mut rest = vec![0u8; len.saturating_sub(4)];
            if s.read_exact(&mut rest).is_err() || head[0] == b'E' {
                return false;
            }
            if head[0] == want {
                return true;
            }
        }
    };
    if s.write_all(&msg).is_err() || !until(&mut s, b'Z') {
        return false;
    }
    let q = b"SELECT 1\0";
    let mut m = vec![b'Q'];
    m.extend(((q.len() + 4) as u32).to_be_bytes());
    m.extend(q);
    s.write_all(&m).is_ok() && until(&mut s, b'D') && until(&mut s, b'Z')
}

/// Runs a container `id` of `image` (an image of `app`) in containerd namespace `ns` with
/// `snapshotter`, on the host network, and waits until it is ready (up to `limit` for a
/// server, which keeps running detached; an app that prints is run to its end).
pub fn start(
    env: &crate::Env,
    ns: &str,
    app: &App,
    snapshotter: &str,
    image: &str,
    id: &str,
    limit: std::time::Duration,
) -> Result<(), String> {
    let port = crate::free_port();
    let cmd = command(app, port);
    let mut args = vec!["run", "--net-host", "--snapshotter", snapshotter];
    let detached = !matches!(app.ready, Ready::Prints(_));
    args.extend([if detached { "-d" } else { "--rm" }, image, id]);
    args.extend(cmd.iter().map(String::as_str));
    let out = env.ctr(ns, &args);
    match app.ready {
        Ready::Prints(want) if !out.contains(want) => Err(format!("{}: {out}", app.name)),
        _ => wait_ready(app, port, limit),
    }
}

/// Waits until a server app (a detached container on the host network, `port`) is ready, up
/// to `limit`; the last thing seen when it is not. (An app that [`Ready::Prints`] is ready
/// when its output says so: nothing to wait for here.)
pub fn wait_ready(app: &App, port: u16, limit: std::time::Duration) -> Result<(), String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let t = std::time::Instant::now();
    let mut last = String::new();
    while t.elapsed() < limit {
        match app.ready {
            Ready::Prints(_) => return Ok(()),
            Ready::Postgres if postgres_answers(port) => return Ok(()),
            Ready::Postgres => last = "no answer to SELECT 1".into(),
            Ready::Http(path, want) => {
                match client.get(format!("http://127.0.0.1:{port}{path}")).send() {
                    Ok(r) if r.status().is_success() => {
                        let body = r.text().unwrap_or_default();
                        if body.contains(want) {
                            return Ok(());
                        }
                        last = format!("body {body:?}");
                    }
                    Ok(r) => last = format!("HTTP {}", r.status()),
                    Err(e) => last = e.to_string(),
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!("{} not ready after {limit:?}: {last}", app.name))
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
        b.append_data(&mut h, path, *content).unwrap();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries of a layer tar: path and whether it is a whiteout.
    fn entries(tar: &[u8]) -> Vec<String> {
        let mut ar = tar::Archive::new(tar);
        ar.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn a_diff_layer_holds_what_changed_and_whiteouts_for_what_went() {
        let (lo, up) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for root in [lo.path(), up.path()] {
            std::fs::create_dir_all(root.join("etc/keep")).unwrap();
            std::fs::write(root.join("etc/same"), b"same").unwrap();
            std::fs::write(root.join("etc/keep/changed"), b"old").unwrap();
        }
        std::fs::create_dir_all(lo.path().join("gone/deep")).unwrap();
        std::fs::write(lo.path().join("gone/deep/f"), b"x").unwrap();
        std::fs::write(lo.path().join("etc/removed"), b"x").unwrap();
        std::fs::write(up.path().join("etc/keep/changed"), b"new").unwrap();
        std::fs::create_dir_all(up.path().join("usr/new")).unwrap();
        std::fs::write(up.path().join("usr/new/file"), b"n").unwrap();
        std::os::unix::fs::symlink("file", up.path().join("usr/new/link")).unwrap();
        let got = entries(&diff_layer(lo.path(), up.path()));
        assert_eq!(
            got,
            [
                "etc",
                "etc/keep",
                "etc/keep/changed",
                "usr",
                "usr/new",
                "usr/new/file",
                "usr/new/link",
                "etc/.wh.removed",
                ".wh.gone",
            ]
        );
    }
}
