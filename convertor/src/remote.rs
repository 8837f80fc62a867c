//! A registry repository as a [`Store`]: the distribution API (manifests, blobs, monolithic
//! uploads, cross-repository mounts), Basic and Bearer authentication with credentials from
//! Docker's `config.json`, TLS and plain-HTTP settings from containerd's `hosts.toml`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use overlaybd::registry::auth::{parse_challenge, parse_token, Challenge, Credentials};
use overlaybd::registry::credentials::DockerConfig;
use overlaybd::registry::hosts::{hosts_for, Host};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::StatusCode;

use crate::oci;
use crate::store::Store;

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    /// Talk plain HTTP to every registry (else per `hosts.toml`, HTTPS by default).
    pub plain_http: bool,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// containerd's hosts directory (`certs.d`, `hosts.toml`).
    pub hosts_dir: Option<PathBuf>,
    /// Docker's `config.json` (default `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
    /// `user:password`, winning over `config.json`.
    pub credentials: Option<Credentials>,
}

/// One repository on one registry.
pub struct Remote {
    client: Client,
    /// `scheme://host[:port]/v2`
    root: String,
    host: String,
    repository: String,
    creds: Option<Credentials>,
    push: bool,
    auth: Mutex<Option<(String, Option<Instant>)>>,
    headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({}/{})", self.host, self.repository)
    }
}

const ATTEMPTS: u32 = 4;
const TIMEOUT: Duration = Duration::from_secs(300);

impl Remote {
    /// Opens `host/repository`; `push` asks for push rights as well as pull.
    pub fn open(host: &str, repository: &str, opts: &RemoteOptions, push: bool) -> Result<Remote> {
        let scheme = if opts.plain_http { "http" } else { "https" };
        let hosts = hosts_for(opts.hosts_dir.as_deref(), &format!("{scheme}://{host}"))
            .with_context(|| format!("registry hosts for {host}"))?;
        // The upstream server (mirrors serve pulls only; pushes and the convertor's reads go to
        // the registry the reference names).
        let mut h: Host = hosts
            .into_iter()
            .find(|h| !h.mirror)
            .ok_or_else(|| anyhow!("{host}: hosts.toml names no server"))?;
        if opts.plain_http && h.root.starts_with("https://") {
            h.root = format!("http://{}", &h.root["https://".len()..]);
        }
        if opts.insecure {
            h.skip_verify = true;
        }
        let client = overlaybd::registry::client_for(Some(&h))?;
        let creds = match &opts.credentials {
            Some(c) => Some(c.clone()),
            None => {
                let path = opts
                    .docker_config
                    .clone()
                    .or_else(DockerConfig::default_path);
                match path {
                    Some(p) if p.exists() => DockerConfig::load(&p)?.credentials_for(host)?,
                    _ => None,
                }
            }
        };
        Ok(Remote {
            client,
            root: h.root.clone(),
            host: host.to_string(),
            repository: repository.to_string(),
            creds,
            push,
            auth: Mutex::new(None),
            headers: h.header.clone(),
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/{}/{tail}", self.root, self.repository)
    }

    fn scope(&self) -> String {
        let actions = if self.push { "pull,push" } else { "pull" };
        format!("repository:{}:{actions}", self.repository)
    }

    /// The Authorization header for a challenge.
    fn authorize(&self, challenge: &str) -> Result<Option<(String, Option<Instant>)>> {
        match parse_challenge(challenge) {
            Some(Challenge::Basic) => Ok(self.creds.as_ref().map(|c| (c.basic_header(), None))),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let scope = self.scope();
                let mut req = self.client.get(&realm).query(&[("scope", scope.as_str())]);
                if let Some(s) = &service {
                    req = req.query(&[("service", s.as_str())]);
                }
                if let Some(c) = &self.creds {
                    req = req.header(AUTHORIZATION, c.basic_header());
                }
                let resp = req
                    .timeout(Duration::from_secs(30))
                    .send()
                    .with_context(|| format!("token server {realm}"))?;
                let status = resp.status();
                let body = resp.bytes().unwrap_or_default();
                if !status.is_success() {
                    bail!(
                        "token server {realm} refused {scope}: {status} {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    );
                }
                let t = parse_token(&body, Instant::now())
                    .ok_or_else(|| anyhow!("token server {realm}: no token in the answer"))?;
                Ok(Some((format!("Bearer {}", t.value), Some(t.expires))))
            }
            None => bail!(
                "{}: unknown authentication challenge {challenge:?}",
                self.host
            ),
        }
    }

    /// Sends a request built by `make`, authenticating on a 401 and retrying transient
    /// failures (connection errors, 5xx, 429).
    fn send(&self, what: &str, make: &dyn Fn() -> Result<RequestBuilder>) -> Result<Response> {
        let mut reauthed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = make()?.timeout(TIMEOUT);
            for (k, v) in &self.headers {
                req = req.header(k, v);
            }
            let cached = {
                let g = self.auth.lock().unwrap_or_else(|e| e.into_inner());
                g.clone()
                    .filter(|(_, exp)| exp.is_none_or(|e| e > Instant::now()))
                    .map(|(h, _)| h)
            };
            if let Some(h) = &cached {
                req = req.header(AUTHORIZATION, h);
            }
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!("{what}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(250 << attempt));
                    continue;
                }
                Err(e) => return Err(anyhow!("{what}: {e}")),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !reauthed {
                reauthed = true;
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("{what}: 401 without a WWW-Authenticate challenge"))?;
                let auth = self
                    .authorize(&challenge)
                    .with_context(|| what.to_string())?;
                if auth.is_none() {
                    bail!(
                        "{what}: the registry wants credentials and none are configured for {}",
                        self.host
                    );
                }
                *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = auth;
                attempt -= 1;
                continue;
            }
            if (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
                && attempt < ATTEMPTS
            {
                tracing::warn!("{what}: {status}; retrying");
                std::thread::sleep(Duration::from_millis(250 << attempt));
                continue;
            }
            return Ok(resp);
        }
    }

    fn fail(what: &str, resp: Response) -> anyhow::Error {
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        anyhow!(
            "{what}: {status} {}",
            body.chars().take(300).collect::<String>()
        )
    }

    /// Mounts `digest` from another repository of the same registry; false when the registry
    /// did not (it then expects an upload).
    pub fn mount_from(&self, digest: &str, from: &str) -> Result<bool> {
        let what = format!("mount {digest} from {from} into {}", self.describe());
        let url = self.url("blobs/uploads/");
        let resp = self.send(&what, &|| {
            Ok(self
                .client
                .post(&url)
                .query(&[("mount", digest), ("from", from)])
                .header(CONTENT_LENGTH, 0))
        })?;
        Ok(resp.status() == StatusCode::CREATED)
    }

    fn upload(
        &self,
        digest: &str,
        body: &dyn Fn() -> Result<reqwest::blocking::Body>,
    ) -> Result<()> {
        let what = format!("upload {digest} to {}", self.describe());
        let url = self.url("blobs/uploads/");
        let resp = self.send(&what, &|| {
            Ok(self.client.post(&url).header(CONTENT_LENGTH, 0))
        })?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(Self::fail(&what, resp));
        }
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("{what}: no Location in the upload answer"))?
            .to_string();
        let loc = if loc.starts_with("http://") || loc.starts_with("https://") {
            loc
        } else {
            let base = self.root.trim_end_matches("/v2");
            format!("{base}{loc}")
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = format!("{loc}{sep}digest={digest}");
        let resp = self.send(&what, &|| {
            Ok(self
                .client
                .put(&put)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body()?))
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(Self::fail(&what, resp));
        }
        Ok(())
    }
}

impl Store for Remote {
    fn get_manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        let what = format!("get manifest {reference} of {}", self.describe());
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self.send(&what, &|| {
            Ok(self.client.get(&url).header(ACCEPT, oci::media::ACCEPT))
        })?;
        if !resp.status().is_success() {
            return Err(Self::fail(&what, resp));
        }
        let mt = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        if resp.content_length().is_some_and(|n| n > 4 << 20) {
            bail!("{what}: a manifest of more than 4 MiB");
        }
        let b = resp.bytes().with_context(|| what.clone())?.to_vec();
        if reference.starts_with("sha256:") && oci::sha256_digest(&b) != reference {
            bail!("{what}: the manifest does not match its digest");
        }
        Ok((b, mt))
    }

    fn get_blob(&self, digest: &str, out: &mut dyn Write) -> Result<u64> {
        oci::check_digest(digest)?;
        let what = format!("get blob {digest} of {}", self.describe());
        let url = self.url(&format!("blobs/{digest}"));
        let mut resp = self.send(&what, &|| Ok(self.client.get(&url)))?;
        if !resp.status().is_success() {
            return Err(Self::fail(&what, resp));
        }
        let n = resp.copy_to(out).with_context(|| what.clone())?;
        Ok(n)
    }

    fn has_blob(&self, digest: &str) -> Result<bool> {
        oci::check_digest(digest)?;
        let what = format!("check blob {digest} of {}", self.describe());
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.send(&what, &|| Ok(self.client.head(&url)))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::fail(&what, resp)),
        }
    }

    fn put_blob_file(&self, digest: &str, size: u64, path: &Path) -> Result<()> {
        if self.has_blob(digest)? {
            return Ok(());
        }
        let p = path.to_path_buf();
        self.upload(digest, &|| {
            let f = std::fs::File::open(&p).with_context(|| format!("open {}", p.display()))?;
            Ok(reqwest::blocking::Body::sized(f, size))
        })
    }

    fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        if self.has_blob(digest)? {
            return Ok(());
        }
        self.upload(digest, &|| {
            Ok(reqwest::blocking::Body::from(bytes.to_vec()))
        })
    }

    fn put_manifest(&self, tag: Option<&str>, media_type: &str, bytes: &[u8]) -> Result<()> {
        let digest = oci::sha256_digest(bytes);
        let reference = tag.unwrap_or(&digest).to_string();
        let what = format!("put manifest {reference} to {}", self.describe());
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self.send(&what, &|| {
            Ok(self
                .client
                .put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(bytes.to_vec()))
        })?;
        if !resp.status().is_success() {
            return Err(Self::fail(&what, resp));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.host, self.repository)
    }

    fn try_mount(&self, digest: &str, from: &str) -> Result<bool> {
        match from.strip_prefix(&format!("{}/", self.host)) {
            Some(repo) if repo != self.repository => self.mount_from(digest, repo),
            _ => Ok(false),
        }
    }
}
