//! Registry credentials from Docker's `config.json`: `auths` entries (`auth` = base64
//! `user:password`, or `username` / `password`, or `identitytoken`), per-registry credential
//! helpers (`credHelpers`) and the default store (`credsStore`), run as
//! `docker-credential-<name> get` with the server on stdin, exactly as the docker CLI does.
//! overlaybd reads the same `auths` layout from its own credential file.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

use super::auth::Credentials;
use crate::{Error, Result};

/// The key Docker uses for Docker Hub.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";
/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default, serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Raw {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// A parsed Docker `config.json`.
#[derive(Debug, Default)]
pub struct DockerConfig {
    raw: Raw,
    source: String,
}

/// The host part of a registry key or URL: `https://host:port/v1/` → `host:port`.
fn host_of(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Docker Hub has several names; Docker files them all under one key.
fn canonical(host: &str) -> &str {
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "index.docker.io",
        h => h,
    }
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(d).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// The config a program was told to use (`path`), else the default one if it exists;
    /// `None` when there is neither.
    pub fn load_configured(path: Option<&Path>) -> Result<Option<Self>> {
        match path
            .map(Path::to_path_buf)
            .or_else(|| Self::default_path().filter(|p| p.exists()))
        {
            Some(p) => Ok(Some(Self::load(&p)?)),
            None => Ok(None),
        }
    }

    /// Loads a config file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(raw) => Self::parse(&raw, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::default()),
            Err(e) => Err(Error::io("read", path.display().to_string(), e)),
        }
    }

    /// Parses a config; `source` names it in errors.
    pub fn parse(raw: &[u8], source: &str) -> Result<Self> {
        let raw: Raw = serde_json::from_slice(raw)
            .map_err(|e| Error::Config(format!("docker config {source}: {e}")))?;
        Ok(DockerConfig {
            raw,
            source: source.to_string(),
        })
    }

    /// The credentials for `host` (`name[:port]`): its credential helper if one is named, else
    /// an `auths` entry, else the default store. `None` when nothing is configured for it.
    pub fn credentials_for(&self, host: &str) -> Result<Option<Credentials>> {
        let want = canonical(host_of(host));
        let server = if want == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            want.to_string()
        };
        if let Some((_, helper)) = self
            .raw
            .cred_helpers
            .iter()
            .find(|(k, _)| canonical(host_of(k)) == want)
        {
            return run_helper(helper, &server);
        }
        if let Some((key, e)) = self
            .raw
            .auths
            .iter()
            .find(|(k, _)| canonical(host_of(k)) == want)
        {
            if let Some(c) = self.entry(key, e)? {
                return Ok(Some(c));
            }
        }
        match &self.raw.creds_store {
            Some(store) if !store.is_empty() => run_helper(store, &server),
            _ => Ok(None),
        }
    }

    fn entry(&self, key: &str, e: &AuthEntry) -> Result<Option<Credentials>> {
        let bad = |why: &str| Error::Config(format!("docker config {}: {key}: {why}", self.source));
        if let Some(token) = e.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials {
                username: "<token>".into(),
                password: token.clone(),
            }));
        }
        if let Some(auth) = e.auth.as_ref().filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad("`auth` is not base64"))?;
            let s = String::from_utf8(raw).map_err(|_| bad("`auth` is not UTF-8"))?;
            let (u, p) = s
                .split_once(':')
                .ok_or_else(|| bad("`auth` is not user:password"))?;
            return Ok(Some(Credentials {
                username: u.into(),
                password: p.into(),
            }));
        }
        match (&e.username, &e.password) {
            (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            })),
            _ => Ok(None),
        }
    }
}

#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Runs `docker-credential-<helper> get` for `server`, bounded by a timeout.
fn run_helper(helper: &str, server: &str) -> Result<Option<Credentials>> {
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    {
        return Err(Error::Config(format!(
            "credential helper {helper:?}: not a helper name"
        )));
    }
    let prog = format!("docker-credential-{helper}");
    let fail = |why: String| Error::Config(format!("{prog} get {server}: {why}"));
    let mut child = Command::new(&prog)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is reported by its status below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.by_ref().take(1 << 20).read_to_end(&mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() < HELPER_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "no answer within {} s",
                    HELPER_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let out = reader.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    if !status.success() {
        // The helper protocol's answer for "nothing stored for this server".
        if text.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("{status}: {}", text.trim())));
    }
    let a: HelperAnswer =
        serde_json::from_slice(&out).map_err(|e| fail(format!("bad answer: {e}")))?;
    Ok(Some(Credentials {
        username: a.username,
        password: a.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_entries() {
        let c = DockerConfig::parse(
            br#"{"auths":{
                "https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
                "http://127.0.0.1:5000":{"username":"bob","password":"pw"},
                "reg.example:443/v2/":{"identitytoken":"tok"},
                "empty.example":{}
            }}"#,
            "t",
        )
        .unwrap();
        let hub = c.credentials_for("docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "pa:ss")
        );
        let hub2 = c.credentials_for("registry-1.docker.io").unwrap().unwrap();
        assert_eq!(hub2.username, "user");
        let b = c.credentials_for("127.0.0.1:5000").unwrap().unwrap();
        assert_eq!((b.username.as_str(), b.password.as_str()), ("bob", "pw"));
        let t = c.credentials_for("reg.example:443").unwrap().unwrap();
        assert_eq!(
            (t.username.as_str(), t.password.as_str()),
            ("<token>", "tok")
        );
        assert!(c.credentials_for("empty.example").unwrap().is_none());
        assert!(c.credentials_for("127.0.0.1:5001").unwrap().is_none());
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        assert!(DockerConfig::parse(br#"{"auths": 5}"#, "t").is_err());
        assert!(DockerConfig::parse(b"not json", "t").is_err());
        let c = DockerConfig::parse(br#"{"auths":{"x":{"auth":"%%%"}}}"#, "t").unwrap();
        let e = c.credentials_for("x").unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
        let c = DockerConfig::parse(br#"{"auths":{"x":{"auth":"bm9jb2xvbg=="}}}"#, "t").unwrap();
        assert!(c.credentials_for("x").is_err(), "no colon");
        let c = DockerConfig::parse(br#"{"credsStore":"../evil"}"#, "t").unwrap();
        assert!(c.credentials_for("x").is_err());
        assert!(DockerConfig::load(Path::new("/nonexistent/config.json"))
            .unwrap()
            .credentials_for("x")
            .unwrap()
            .is_none());
    }
}
