//! Per-registry mirrors and TLS settings, read from containerd's registry hosts directory
//! (`certs.d` layout, `hosts.toml`), so operators configure us as they configure containerd.
//!
//! For a registry `host[:port]` the directory `<hosts_dir>/<host[:port]>/` is used, else
//! `<hosts_dir>/_default/`. Its `hosts.toml` lists mirrors (`[host."<url>"]`, tried in order)
//! and the upstream `server`, each with `capabilities`, `ca`, `client`, `skip_verify`,
//! `override_path` and `header`. Without a `hosts.toml`, the directory's `*.crt` files are
//! extra CAs and `*.cert` / `*.key` pairs are client certificates for the upstream (the older
//! Docker layout, which containerd also reads). Relative paths are relative to the directory.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One place to fetch blobs from: a mirror or the upstream registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// `scheme://host[:port]/v2` (or the configured path with `override_path`).
    pub root: String,
    /// `pull`, `resolve`, `push`.
    pub capabilities: Vec<String>,
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files).
    pub ca: Vec<PathBuf>,
    /// Client certificates: (certificate, key); the key may be in the certificate's file.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Extra request headers.
    pub header: Vec<(String, String)>,
    /// A mirror (requests carry `ns=<upstream host>`), not the upstream.
    pub mirror: bool,
    /// An HTTPS upstream that may speak plain HTTP: if its TLS handshake fails because the
    /// server answers in plain HTTP, its requests go to `http://` instead. containerd's rule
    /// for a loopback registry (`localhost`, `127.0.0.0/8`, `::1`) that no `hosts.toml`
    /// describes.
    pub tls_fallback: bool,
}

/// Whether `authority` (`host[:port]`) is a loopback address, as containerd's `IsLocalhost`.
pub fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority.rsplit_once(':').map_or(authority, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        }),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Host {
    /// The `host[:port]` of this endpoint.
    pub fn authority(&self) -> &str {
        let s = self.root.split_once("://").map_or(&*self.root, |(_, r)| r);
        s.split('/').next().unwrap_or(s)
    }

    pub fn can_pull(&self) -> bool {
        self.capabilities.iter().any(|c| c == "pull")
    }
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {why}", path.display()))
}

/// Splits `scheme://authority[/path]`.
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if auth.is_empty() {
        return None;
    }
    Some((scheme, auth, path))
}

/// A path from `hosts.toml`: relative ones are relative to its directory.
fn resolve(dir: &Path, s: &str) -> PathBuf {
    let p = Path::new(s);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn paths(v: Option<&toml::Value>, dir: &Path, file: &Path, what: &str) -> Result<Vec<PathBuf>> {
    let abs = |s: &str| resolve(dir, s);
    match v {
        None => Ok(Vec::new()),
        Some(toml::Value::String(s)) => Ok(vec![abs(s)]),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(abs)
                    .ok_or_else(|| bad(file, format!("`{what}` entries must be strings")))
            })
            .collect(),
        Some(_) => Err(bad(file, format!("`{what}` must be a string or a list"))),
    }
}

fn clients(
    v: Option<&toml::Value>,
    dir: &Path,
    file: &Path,
) -> Result<Vec<(PathBuf, Option<PathBuf>)>> {
    let abs = |s: &str| resolve(dir, s);
    let pair = |x: &toml::Value| -> Result<(PathBuf, Option<PathBuf>)> {
        match x {
            toml::Value::String(s) => Ok((abs(s), None)),
            toml::Value::Array(a) if !a.is_empty() && a.len() <= 2 => {
                let cert = a[0]
                    .as_str()
                    .ok_or_else(|| bad(file, "`client` pairs are strings"))?;
                let key = match a.get(1) {
                    Some(k) => k
                        .as_str()
                        .ok_or_else(|| bad(file, "`client` pairs are strings"))?,
                    None => "",
                };
                Ok((abs(cert), (!key.is_empty()).then(|| abs(key))))
            }
            _ => Err(bad(file, "`client` entries are a path or [cert, key]")),
        }
    };
    match v {
        None => Ok(Vec::new()),
        Some(s @ toml::Value::String(_)) => Ok(vec![pair(s)?]),
        // Either one [cert, key] pair, or a list of entries.
        Some(toml::Value::Array(a)) if a.iter().all(|x| x.is_str()) && a.len() == 2 => {
            Ok(vec![pair(&toml::Value::Array(a.clone()))?])
        }
        Some(toml::Value::Array(a)) => a.iter().map(pair).collect(),
        Some(_) => Err(bad(file, "`client` must be a path or a list")),
    }
}

fn host_settings(
    t: &toml::Table,
    root: String,
    mirror: bool,
    dir: &Path,
    file: &Path,
) -> Result<Host> {
    let capabilities = match t.get("capabilities") {
        None => vec!["pull".into(), "resolve".into(), "push".into()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|c| {
                c.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(file, "`capabilities` entries must be strings"))
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad(file, "`capabilities` must be a list")),
    };
    let skip_verify = match t.get("skip_verify") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| bad(file, "`skip_verify` must be true or false"))?,
    };
    let header = match t.get("header") {
        None => Vec::new(),
        Some(toml::Value::Table(h)) => {
            let mut out = Vec::new();
            for (k, v) in h {
                match v {
                    toml::Value::String(s) => out.push((k.clone(), s.clone())),
                    toml::Value::Array(a) => {
                        for x in a {
                            let s = x
                                .as_str()
                                .ok_or_else(|| bad(file, "`header` values are strings"))?;
                            out.push((k.clone(), s.to_string()));
                        }
                    }
                    _ => return Err(bad(file, "`header` values are strings")),
                }
            }
            out
        }
        Some(_) => return Err(bad(file, "`header` must be a table")),
    };
    Ok(Host {
        root,
        capabilities,
        skip_verify,
        ca: paths(t.get("ca"), dir, file, "ca")?,
        client: clients(t.get("client"), dir, file)?,
        header,
        mirror,
        tls_fallback: false,
    })
}

/// The `/v2` root of a host URL: `/v2` appended unless `override_path` says the path is it.
fn root_of(url: &str, override_path: bool, file: &Path) -> Result<String> {
    let (scheme, auth, path) =
        split_url(url).ok_or_else(|| bad(file, format!("{url:?} is not an http(s) URL")))?;
    let path = path.trim_end_matches('/');
    Ok(if override_path {
        format!("{scheme}://{auth}{path}")
    } else {
        let path = path.strip_suffix("/v2").unwrap_or(path);
        format!("{scheme}://{auth}{path}/v2")
    })
}

/// Where to fetch blobs of `upstream` (`scheme://host[:port]`, the registry the image names),
/// in order: mirrors from the hosts directory, then the upstream server.
pub fn hosts_for(hosts_dir: Option<&Path>, upstream: &str) -> Result<Vec<Host>> {
    let (scheme, authority, _) = split_url(upstream)
        .ok_or_else(|| Error::Config(format!("registry {upstream:?}: not an http(s) URL")))?;
    let default_server = match authority {
        "docker.io" | "index.docker.io" => "https://registry-1.docker.io".to_string(),
        a => format!("{scheme}://{a}"),
    };
    let plain = |root: String| Host {
        root,
        capabilities: vec!["pull".into(), "resolve".into(), "push".into()],
        tls_fallback: scheme == "https" && is_loopback(authority),
        ..Host::default()
    };
    let Some(hosts_dir) = hosts_dir else {
        return Ok(vec![plain(format!("{default_server}/v2"))]);
    };
    let dir = [authority, "_default"]
        .iter()
        .map(|d| hosts_dir.join(d))
        .find(|d| d.is_dir());
    let Some(dir) = dir else {
        return Ok(vec![plain(format!("{default_server}/v2"))]);
    };
    let file = dir.join("hosts.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return legacy(&dir, plain(format!("{default_server}/v2")));
        }
        Err(e) => return Err(Error::io("read", file.display().to_string(), e)),
    };
    from_toml(&text, &dir, &file, &default_server)
}

/// Parses a `hosts.toml` (`text`, read from `file` in `dir`) for a registry whose default
/// server is `default_server` (`scheme://host[:port]`).
pub fn from_toml(text: &str, dir: &Path, file: &Path, default_server: &str) -> Result<Vec<Host>> {
    let table: toml::Table = text.parse().map_err(|e| bad(file, e))?;
    let mut out = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| bad(file, "`host` must be a table of URLs"))?;
        for (url, v) in hosts {
            let t = v
                .as_table()
                .ok_or_else(|| bad(file, format!("host {url:?} must be a table")))?;
            let over = t
                .get("override_path")
                .and_then(toml::Value::as_bool)
                .unwrap_or(false);
            out.push(host_settings(
                t,
                root_of(url, over, file)?,
                true,
                dir,
                file,
            )?);
        }
    }
    let server = match table.get("server") {
        None => default_server.to_string(),
        Some(toml::Value::String(s)) => s.clone(),
        Some(_) => return Err(bad(file, "`server` must be a URL")),
    };
    let over = table
        .get("override_path")
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    out.push(host_settings(
        &table,
        root_of(&server, over, file)?,
        false,
        dir,
        file,
    )?);
    Ok(out)
}

/// The older layout: `*.crt` CAs, `*.cert` + `*.key` client pairs, for the upstream.
fn legacy(dir: &Path, mut host: Host) -> Result<Vec<Host>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("list", dir.display().to_string(), e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    for p in &names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => host.ca.push(p.clone()),
            Some("cert") => {
                let key = p.with_extension("key");
                if !key.exists() {
                    return Err(bad(p, "client certificate without its .key"));
                }
                host.client.push((p.clone(), Some(key)));
            }
            _ => {}
        }
    }
    Ok(vec![host])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_directory_means_the_upstream_alone() {
        let h = hosts_for(None, "http://127.0.0.1:5000").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].root, "http://127.0.0.1:5000/v2");
        assert!(!h[0].mirror && h[0].can_pull());
        let h = hosts_for(None, "https://docker.io").unwrap();
        assert_eq!(h[0].root, "https://registry-1.docker.io/v2");
        assert!(!h[0].tls_fallback);
    }

    #[test]
    fn loopback_registries_may_fall_back_to_plain_http_as_in_containerd() {
        for a in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(a), "{a}");
            let h = hosts_for(None, &format!("https://{a}")).unwrap();
            assert!(h[0].tls_fallback, "{a}");
            // Plain HTTP asked for, or a hosts.toml, leaves nothing to guess.
            assert!(!hosts_for(None, &format!("http://{a}")).unwrap()[0].tls_fallback);
        }
        for a in [
            "reg.example:5000",
            "10.0.0.1:5000",
            "[2001:db8::1]:5000",
            "localhost.example",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("127.0.0.1:5000");
        std::fs::create_dir_all(&r).unwrap();
        std::fs::write(
            r.join("hosts.toml"),
            "server = \"https://127.0.0.1:5000\"\n",
        )
        .unwrap();
        let h = hosts_for(Some(d.path()), "https://127.0.0.1:5000").unwrap();
        assert!(
            !h.iter().any(|h| h.tls_fallback),
            "a hosts.toml says what to use"
        );
    }

    #[test]
    fn hosts_toml_in_order_with_settings() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("reg.example:5000");
        std::fs::create_dir_all(&r).unwrap();
        std::fs::write(
            r.join("hosts.toml"),
            r#"
server = "https://reg.example:5000"
ca = "upstream-ca.pem"
[host."https://mirror-b.example"]
  capabilities = ["pull"]
  skip_verify = true
[host."http://mirror-a.example:8080/custom/path"]
  capabilities = ["pull", "resolve"]
  override_path = true
  ca = ["/etc/ca1.pem", "ca2.pem"]
  client = [["/c.cert", "/c.key"], ["/both.pem", ""]]
  [host."http://mirror-a.example:8080/custom/path".header]
    x-one = "1"
    x-many = ["a", "b"]
"#,
        )
        .unwrap();
        let h = hosts_for(Some(d.path()), "https://reg.example:5000").unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].root, "https://mirror-b.example/v2");
        assert!(h[0].skip_verify && h[0].mirror);
        assert_eq!(h[1].root, "http://mirror-a.example:8080/custom/path");
        assert_eq!(h[1].authority(), "mirror-a.example:8080");
        assert_eq!(
            h[1].ca,
            vec![PathBuf::from("/etc/ca1.pem"), r.join("ca2.pem")]
        );
        assert_eq!(
            h[1].client,
            vec![
                (PathBuf::from("/c.cert"), Some(PathBuf::from("/c.key"))),
                (PathBuf::from("/both.pem"), None)
            ]
        );
        assert_eq!(h[1].header.len(), 3);
        assert_eq!(h[2].root, "https://reg.example:5000/v2");
        assert!(!h[2].mirror);
        assert_eq!(h[2].ca, vec![r.join("upstream-ca.pem")]);
        // Another registry falls back to _default, and then to the plain upstream.
        let h = hosts_for(Some(d.path()), "http://other:1").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].root, "http://other:1/v2");
        std::fs::create_dir_all(d.path().join("_default")).unwrap();
        std::fs::write(
            d.path().join("_default/hosts.toml"),
            "[host.\"http://m:1\"]\ncapabilities = [\"pull\"]\n",
        )
        .unwrap();
        let h = hosts_for(Some(d.path()), "http://other:1").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].root, "http://m:1/v2");
        assert_eq!(h[1].root, "http://other:1/v2");
    }

    #[test]
    fn legacy_certificate_files() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("reg:1");
        std::fs::create_dir_all(&r).unwrap();
        for f in ["ca.crt", "me.cert", "me.key"] {
            std::fs::write(r.join(f), "x").unwrap();
        }
        let h = hosts_for(Some(d.path()), "https://reg:1").unwrap();
        assert_eq!(h[0].ca, vec![r.join("ca.crt")]);
        assert_eq!(
            h[0].client,
            vec![(r.join("me.cert"), Some(r.join("me.key")))]
        );
        std::fs::remove_file(r.join("me.key")).unwrap();
        assert!(hosts_for(Some(d.path()), "https://reg:1").is_err());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("reg:1");
        std::fs::create_dir_all(&r).unwrap();
        for (text, want) in [
            ("server = 5", "`server`"),
            ("[host.\"ftp://x\"]", "not an http(s) URL"),
            ("skip_verify = \"yes\"", "`skip_verify`"),
            ("capabilities = \"pull\"", "`capabilities`"),
            ("client = 3", "`client`"),
            ("this is not toml", "hosts.toml"),
        ] {
            std::fs::write(r.join("hosts.toml"), text).unwrap();
            let e = hosts_for(Some(d.path()), "https://reg:1")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(hosts_for(None, "reg:1").is_err());
    }
}
