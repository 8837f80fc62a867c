//! Reading blobs from an OCI registry by HTTP range requests, as a [`zfile::ReadAt`].
//!
//! The blob's size is learned once (HEAD). Every read is a `Range` GET, retried with capped
//! exponential backoff and jitter on transient failures (connection errors, 5xx, 429 with
//! `Retry-After`, a short body, a `Content-Range` that does not match) until the per-read
//! deadline; then it fails. Permanent failures (404, 401 after fresh credentials, other 4xx)
//! fail at once, naming the blob and the registry. overlaybd retries for up to 7 days; a
//! container should see an I/O error instead.
//!
//! A blob can be fetched from several places, tried in order within each attempt: a P2P agent
//! (`<agent>/<blob URL>`, same headers), the mirrors of containerd's `hosts.toml`, then the
//! upstream registry. A place that fails hands the read to the next one. A range whose bytes
//! failed verification above (`discard_cached`) is fetched from the registry, not the agent.
//! Redirects (to blob storage) are followed; the `Authorization` header is not sent to another
//! host.

pub mod auth;
pub mod credentials;
#[cfg(feature = "test-util")]
pub mod fuzz;
pub mod hosts;
pub mod reference;

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::StatusCode;
use zfile::ReadAt;

use crate::error::{Error, Result};
use crate::metrics::{counter, Histogram};
use auth::{parse_challenge, parse_token, Challenge, Credentials, Token};
use credentials::DockerConfig;
use hosts::Host;

/// Settings of a registry source.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// How long one read may take, retries included.
    pub deadline: Duration,
    /// First retry delay; doubled each time up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Credentials for every host of this blob (they win over `docker_config`).
    pub credentials: Option<Credentials>,
    /// Docker's `config.json`, consulted per host (agent requests use the upstream's).
    pub docker_config: Option<Arc<DockerConfig>>,
    /// containerd's registry hosts directory (`certs.d` layout with `hosts.toml`).
    pub hosts_dir: Option<PathBuf>,
    /// A P2P agent's URL prefix, e.g. `http://127.0.0.1:19145/dadip2p`: range reads go to
    /// `<agent>/<blob URL>` first.
    pub agent: Option<String>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            deadline: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            credentials: None,
            docker_config: None,
            hosts_dir: None,
            agent: None,
        }
    }
}

/// Where a blob lives: `scheme://host[:port]`, repository, digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    pub registry: String,
    pub repository: String,
    pub digest: String,
}

impl BlobLocation {
    pub fn url(&self) -> String {
        format!(
            "{}/v2/{}/blobs/{}",
            self.registry.trim_end_matches('/'),
            self.repository,
            self.digest
        )
    }

    /// Parses overlaybd's `repoBlobUrl` (`scheme://host[:port]/v2/<repository>/blobs`) and a
    /// digest.
    pub fn from_repo_blob_url(repo_blob_url: &str, digest: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "repoBlobUrl {repo_blob_url:?}: expected scheme://host/v2/<repository>/blobs"
            ))
        };
        let (scheme, rest) = repo_blob_url.split_once("://").ok_or_else(bad)?;
        if scheme != "http" && scheme != "https" {
            return Err(bad());
        }
        let (host, path) = rest.split_once('/').ok_or_else(bad)?;
        let repo = path
            .trim_end_matches('/')
            .strip_prefix("v2/")
            .and_then(|p| p.strip_suffix("/blobs"))
            .filter(|r| !r.is_empty())
            .ok_or_else(bad)?;
        if host.is_empty() || !valid_digest(digest) {
            return Err(Error::Invalid(format!(
                "blob {digest:?} at {repo_blob_url:?}: not a valid digest"
            )));
        }
        Ok(BlobLocation {
            registry: format!("{scheme}://{host}"),
            repository: repo.to_string(),
            digest: digest.to_string(),
        })
    }
}

/// `algorithm:hex`, as the OCI spec allows for the algorithms registries use.
fn valid_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", h)) => h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()),
        Some(("sha512", h)) => h.len() == 128 && h.bytes().all(|c| c.is_ascii_hexdigit()),
        _ => false,
    }
}

impl std::fmt::Display for BlobLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in {} at {}",
            self.digest, self.repository, self.registry
        )
    }
}

/// Counters of one registry source.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Requests sent to the registry (upstream or mirrors), tokens excluded.
    pub requests: AtomicU64,
    /// Blob bytes received from the registry (upstream or mirrors).
    pub bytes: AtomicU64,
    /// Requests sent to the P2P agent.
    pub agent_requests: AtomicU64,
    /// Blob bytes received from the P2P agent.
    pub agent_bytes: AtomicU64,
    /// Bad ranges reported to the P2P agent (it drops them and reports their source).
    pub agent_reports: AtomicU64,
    /// Attempts repeated after a transient failure (all places failed).
    pub retries: AtomicU64,
    /// Reads handed from a failing place (agent, mirror) to the next one.
    pub fallbacks: AtomicU64,
    /// Ranges dropped above after failing verification (fetched again from the registry).
    pub verification_failures: AtomicU64,
    pub token_fetches: AtomicU64,
    /// Latency of successful range reads, whole attempt (retries included).
    pub latency: Histogram,
}

impl RegistryStats {
    /// Appends the counters in Prometheus' text format with the given labels.
    pub fn render(&self, out: &mut String, labels: &str) {
        let l = |extra: &str| {
            if labels.is_empty() {
                extra.to_string()
            } else {
                format!("{labels},{extra}")
            }
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            out,
            "overlaybd_fetch_requests_total",
            &l("source=\"registry\""),
            get(&self.requests),
        );
        counter(
            out,
            "overlaybd_fetch_requests_total",
            &l("source=\"agent\""),
            get(&self.agent_requests),
        );
        counter(
            out,
            "overlaybd_fetch_bytes_total",
            &l("source=\"registry\""),
            get(&self.bytes),
        );
        counter(
            out,
            "overlaybd_fetch_bytes_total",
            &l("source=\"agent\""),
            get(&self.agent_bytes),
        );
        counter(
            out,
            "overlaybd_fetch_agent_reports_total",
            labels,
            get(&self.agent_reports),
        );
        counter(
            out,
            "overlaybd_fetch_retries_total",
            labels,
            get(&self.retries),
        );
        counter(
            out,
            "overlaybd_fetch_fallbacks_total",
            labels,
            get(&self.fallbacks),
        );
        counter(
            out,
            "overlaybd_verification_failures_total",
            labels,
            get(&self.verification_failures),
        );
        counter(
            out,
            "overlaybd_token_fetches_total",
            labels,
            get(&self.token_fetches),
        );
        self.latency.render(out, "overlaybd_fetch_seconds", labels);
    }
}

#[derive(Debug, Default)]
struct AuthState {
    challenge: Option<Challenge>,
    token: Option<Token>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Agent,
    Mirror,
    Upstream,
}

/// One place a blob is read from.
#[derive(Debug)]
struct Endpoint {
    kind: Kind,
    client: Client,
    url: String,
    /// `host[:port]`, for messages.
    name: String,
    credentials: Option<Credentials>,
    headers: Vec<(String, String)>,
    auth: Mutex<AuthState>,
}

/// One blob in a registry, read by ranges.
#[derive(Debug)]
pub struct RegistryBlob {
    loc: BlobLocation,
    endpoints: Vec<Endpoint>,
    size: u64,
    opts: RegistryOptions,
    /// Ranges to read from the registry, not the agent (they failed verification).
    direct: Mutex<Vec<(u64, u64)>>,
    stats: RegistryStats,
}

/// Why an attempt did not succeed.
enum Attempt {
    /// Worth another try, after at least the given wait if the registry named one.
    Transient(String, Option<Duration>),
    Permanent(Error),
}

/// An error with its causes (reqwest's own message hides them: "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn transient<T>(why: impl Into<String>) -> std::result::Result<T, Attempt> {
    Err(Attempt::Transient(why.into(), None))
}

fn jitter(d: Duration) -> Duration {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    // 50–100% of d.
    d.mul_f64(0.5 + (n % 1000) as f64 / 2000.0)
}

/// An HTTP client with a host's TLS settings (extra CAs, client certificate, skip_verify).
pub fn client_for(host: Option<&Host>) -> Result<Client> {
    let mut b = Client::builder().user_agent(concat!("overlaybd-rs/", env!("CARGO_PKG_VERSION")));
    if let Some(h) = host {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Error::io("read", p.display().to_string(), 0, e))
        };
        for ca in &h.ca {
            let pem = read(ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Invalid(format!("CA {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(Error::Invalid(format!(
                    "CA {}: no PEM certificate in the file",
                    ca.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some((cert, key)) = h.client.first() {
            let mut pem = read(cert)?;
            if let Some(k) = key {
                pem.push(b'\n');
                pem.extend(read(k)?);
            }
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::Invalid(format!("client certificate {}: {e}", cert.display()))
            })?;
            b = b.identity(id);
        }
        if h.skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
    }
    b.build()
        .map_err(|e| Error::Invalid(format!("http client: {e}")))
}

impl RegistryBlob {
    /// Opens a blob, learning its size (and checking it against `expected_size` if given).
    /// Mirrors and TLS settings come from `opts.hosts_dir`, credentials from
    /// `opts.credentials` or `opts.docker_config`.
    pub fn open(
        loc: BlobLocation,
        expected_size: Option<u64>,
        opts: RegistryOptions,
    ) -> Result<Self> {
        let mut blob = Self::without_size(loc, opts)?;
        let size = blob.with_retries("HEAD", |b, deadline| {
            // The size comes from the registry (agents answer range reads only).
            b.across(false, |ep| {
                let resp = b.send(ep, |c| c.head(&ep.url), deadline)?;
                match resp
                    .headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    Some(n) => Ok(n),
                    None => transient("HEAD without Content-Length"),
                }
            })
        })?;
        if let Some(want) = expected_size {
            if want != size {
                return Err(Error::corrupt(
                    format!("blob {}", blob.loc),
                    format!("the registry says {size} bytes, the image says {want}"),
                ));
            }
        }
        blob.size = size;
        Ok(blob)
    }

    /// Opens a blob whose size is already known and trusted (the cache fetched it with that
    /// size checked): no request until the first read, so this works with the registry
    /// down. Every range read still checks the size the server reports (`Content-Range`).
    pub fn open_sized(loc: BlobLocation, size: u64, opts: RegistryOptions) -> Result<Self> {
        let mut blob = Self::without_size(loc, opts)?;
        blob.size = size;
        Ok(blob)
    }

    /// The blob's places to read from (agent, mirrors, upstream), its size not yet known.
    fn without_size(loc: BlobLocation, opts: RegistryOptions) -> Result<Self> {
        let creds_for = |host: &str| -> Result<Option<Credentials>> {
            if let Some(c) = &opts.credentials {
                return Ok(Some(c.clone()));
            }
            match &opts.docker_config {
                Some(dc) => dc.credentials_for(host),
                None => Ok(None),
            }
        };
        let upstream_host = loc
            .registry
            .split_once("://")
            .map_or(loc.registry.as_str(), |(_, r)| r)
            .trim_end_matches('/')
            .to_string();
        let upstream_creds = creds_for(&upstream_host)?;
        let mut endpoints = Vec::new();
        let hosts = hosts::hosts_for(opts.hosts_dir.as_deref(), &loc.registry)?;
        if let Some(agent) = &opts.agent {
            // The agent is given the upstream's URL as `hosts.toml` resolves it (its scheme
            // and path), since the P2P roots fetch that URL themselves.
            let upstream = hosts.iter().find(|h| !h.mirror).map_or_else(
                || loc.url(),
                |h| format!("{}/{}/blobs/{}", h.root, loc.repository, loc.digest),
            );
            endpoints.push(Endpoint {
                kind: Kind::Agent,
                client: client_for(None)?,
                url: format!("{}/{upstream}", agent.trim_end_matches('/')),
                name: format!("P2P agent {agent}"),
                credentials: upstream_creds.clone(),
                headers: Vec::new(),
                auth: Mutex::default(),
            });
        }
        for h in hosts {
            if !h.can_pull() {
                continue;
            }
            let mut url = format!("{}/{}/blobs/{}", h.root, loc.repository, loc.digest);
            if h.mirror {
                url.push_str(&format!("?ns={upstream_host}"));
            }
            let credentials = if h.mirror {
                creds_for(h.authority())?
            } else {
                upstream_creds.clone()
            };
            endpoints.push(Endpoint {
                kind: if h.mirror {
                    Kind::Mirror
                } else {
                    Kind::Upstream
                },
                client: client_for(Some(&h))?,
                url,
                name: h.authority().to_string(),
                credentials,
                headers: h.header.clone(),
                auth: Mutex::default(),
            });
        }
        if endpoints.iter().all(|e| e.kind == Kind::Agent) {
            return Err(Error::Invalid(format!(
                "blob {loc}: no host with the pull capability in the hosts directory"
            )));
        }
        Ok(RegistryBlob {
            loc,
            endpoints,
            size: 0,
            opts,
            direct: Mutex::default(),
            stats: RegistryStats::default(),
        })
    }

    pub fn location(&self) -> &BlobLocation {
        &self.loc
    }

    pub fn stats(&self) -> &RegistryStats {
        &self.stats
    }

    /// Runs `f` on each place in order until one succeeds; a failure hands over to the next
    /// place, and the last place's failure is the attempt's.
    fn across<T>(
        &self,
        use_agent: bool,
        mut f: impl FnMut(&Endpoint) -> std::result::Result<T, Attempt>,
    ) -> std::result::Result<T, Attempt> {
        let usable = |e: &&Endpoint| use_agent || e.kind != Kind::Agent;
        let count = self.endpoints.iter().filter(usable).count();
        let mut errors = Vec::new();
        for (i, ep) in self.endpoints.iter().filter(usable).enumerate() {
            match f(ep) {
                Ok(v) => return Ok(v),
                Err(e) if i + 1 == count => {
                    return Err(match e {
                        Attempt::Transient(why, after) if !errors.is_empty() => {
                            errors.push(format!("{}: {why}", ep.name));
                            Attempt::Transient(errors.join("; "), after)
                        }
                        e => e,
                    })
                }
                Err(e) => {
                    self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                    errors.push(match e {
                        Attempt::Transient(why, _) => format!("{}: {why}", ep.name),
                        Attempt::Permanent(e) => format!("{}: {e}", ep.name),
                    });
                }
            }
        }
        unreachable!("at least one place to read from")
    }

    /// The Authorization header to send to `ep`, fetching a Bearer token when the challenge
    /// asks for one and none is cached (or it expired).
    fn authorization(
        &self,
        ep: &Endpoint,
        deadline: Instant,
    ) -> std::result::Result<Option<String>, Attempt> {
        let lock = || ep.auth.lock().unwrap_or_else(|p| p.into_inner());
        let challenge = lock().challenge.clone();
        let (realm, service, scope) = match challenge {
            None => return Ok(None),
            Some(Challenge::Basic) => {
                return Ok(ep.credentials.as_ref().map(Credentials::basic_header))
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => (realm, service, scope),
        };
        if let Some(t) = lock().token.clone().filter(|t| t.expires > Instant::now()) {
            return Ok(Some(format!("Bearer {}", t.value)));
        }
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.loc.repository));
        let timeout = deadline.saturating_duration_since(Instant::now());
        let req = match &ep.credentials {
            // An identity token (Docker's `identitytoken`) is an OAuth2 refresh token.
            Some(c) if c.username == "<token>" => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", c.password.as_str()),
                    ("client_id", "overlaybd-rs"),
                    ("scope", scope.as_str()),
                ];
                if let Some(s) = &service {
                    form.push(("service", s.as_str()));
                }
                ep.client.post(&realm).form(&form)
            }
            creds => {
                let mut req = ep.client.get(&realm).query(&[("scope", scope.as_str())]);
                if let Some(s) = &service {
                    req = req.query(&[("service", s.as_str())]);
                }
                if let Some(c) = creds {
                    req = req.header(AUTHORIZATION, c.basic_header());
                }
                req
            }
        };
        self.stats.token_fetches.fetch_add(1, Ordering::Relaxed);
        let resp = match req.timeout(timeout).send() {
            Ok(r) => r,
            Err(e) => return transient(format!("token server {realm}: {}", chain(&e))),
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Attempt::Permanent(Error::Invalid(format!(
                "token server {realm} refused the credentials for {}: {status}",
                self.loc
            ))));
        }
        if !status.is_success() {
            return transient(format!("token server {realm}: {status}"));
        }
        let body = match resp.bytes() {
            Ok(b) => b,
            Err(e) => return transient(format!("token server {realm}: {e}")),
        };
        let token = parse_token(&body, Instant::now()).ok_or_else(|| {
            Attempt::Permanent(Error::Invalid(format!(
                "token server {realm}: no token in its answer"
            )))
        })?;
        let header = format!("Bearer {}", token.value);
        lock().token = Some(token);
        Ok(Some(header))
    }

    /// Sends one request to `ep` with authentication; a 401 updates the challenge and is
    /// retried once at once with fresh credentials.
    fn send(
        &self,
        ep: &Endpoint,
        build: impl Fn(&Client) -> RequestBuilder,
        deadline: Instant,
    ) -> std::result::Result<Response, Attempt> {
        let mut fresh = false;
        loop {
            let auth = self.authorization(ep, deadline)?;
            let mut req = build(&ep.client).timeout(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            );
            for (k, v) in &ep.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            match ep.kind {
                Kind::Agent => &self.stats.agent_requests,
                _ => &self.stats.requests,
            }
            .fetch_add(1, Ordering::Relaxed);
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) => return transient(chain(&e)),
            };
            let status = resp.status();
            let permanent = |what: String| {
                Err(Attempt::Permanent(Error::Invalid(format!(
                    "{} (via {}): {what}",
                    self.loc, ep.name
                ))))
            };
            if status == StatusCode::UNAUTHORIZED {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                if fresh || challenge.is_none() {
                    return permanent("unauthorized (401) with fresh credentials".into());
                }
                let mut st = ep.auth.lock().unwrap_or_else(|p| p.into_inner());
                st.challenge = challenge;
                st.token = None;
                fresh = true;
                continue;
            }
            if status == StatusCode::NOT_FOUND {
                return permanent("not found (404)".into());
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                return Err(Attempt::Transient("429 too many requests".into(), after));
            }
            if status.is_server_error() {
                return transient(format!("{status}"));
            }
            if !status.is_success() {
                return permanent(format!("{status}"));
            }
            return Ok(resp);
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the deadline passes.
    fn with_retries<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut(&Self, Instant) -> std::result::Result<T, Attempt>,
    ) -> Result<T> {
        let start = Instant::now();
        let deadline = start + self.opts.deadline;
        let mut backoff = self.opts.initial_backoff;
        loop {
            let (why, after) = match attempt(self, deadline) {
                Ok(v) => return Ok(v),
                Err(Attempt::Permanent(e)) => return Err(e),
                Err(Attempt::Transient(why, after)) => (why, after),
            };
            let wait = after.unwrap_or_else(|| jitter(backoff));
            if Instant::now() + wait >= deadline {
                let msg = format!(
                    "{what}: gave up after {:.1} s: {why}",
                    start.elapsed().as_secs_f64()
                );
                return Err(Error::io(
                    "read",
                    format!("blob {}", self.loc),
                    0,
                    io::Error::new(io::ErrorKind::TimedOut, msg),
                ));
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(wait);
            backoff = (backoff * 2).min(self.opts.max_backoff);
        }
    }

    /// Whether `[offset, offset + len)` must skip the agent.
    fn must_go_direct(&self, offset: u64, len: u64) -> bool {
        let d = self.direct.lock().unwrap_or_else(|p| p.into_inner());
        d.iter().any(|&(a, b)| a < offset + len && offset < b)
    }

    /// Reads up to `buf.len()` bytes at `offset` with one range request (retried), straight
    /// into `buf`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let n = (buf.len() as u64).min(self.size - offset) as usize;
        let last = offset + n as u64 - 1;
        let range = format!("bytes={offset}-{last}");
        let want_cr = format!("bytes {offset}-{last}/{}", self.size);
        let out = &mut buf[..n];
        let direct = self.must_go_direct(offset, n as u64);
        let kind = self.with_retries("GET", |b, deadline| {
            b.across(!direct, |ep| {
                let mut resp = b.send(ep, |c| c.get(&ep.url).header(RANGE, &range), deadline)?;
                let skip = match resp.status() {
                    StatusCode::PARTIAL_CONTENT => {
                        let cr = resp
                            .headers()
                            .get(CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        let asked = format!("bytes {offset}-{last}/");
                        if let Some(total) = cr.strip_prefix(&asked).filter(|_| cr != want_cr) {
                            // The right range of a blob of another size: not this blob.
                            return Err(Attempt::Permanent(Error::corrupt(
                                format!("blob {}", b.loc),
                                format!(
                                    "{} says {total} bytes, the image says {}",
                                    ep.name, b.size
                                ),
                            )));
                        }
                        if cr != want_cr {
                            return transient(format!(
                                "Content-Range {cr:?}, expected {want_cr:?}"
                            ));
                        }
                        0
                    }
                    // The server ignored the range: read through to the offset (bounded).
                    StatusCode::OK => offset,
                    s => return transient(format!("unexpected status {s}")),
                };
                if skip > 0
                    && std::io::copy(&mut (&mut resp).take(skip), &mut std::io::sink())
                        .map_or(true, |c| c < skip)
                {
                    return transient("short body");
                }
                let mut filled = 0;
                while filled < n {
                    match resp.read(&mut out[filled..]) {
                        Ok(0) => return transient(format!("short body: {filled} of {n} bytes")),
                        Ok(k) => filled += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return transient(format!("body: {e}")),
                    }
                }
                Ok(ep.kind)
            })
        })?;
        match kind {
            Kind::Agent => &self.stats.agent_bytes,
            _ => &self.stats.bytes,
        }
        .fetch_add(n as u64, Ordering::Relaxed);
        if direct && kind != Kind::Agent {
            // Fetched from the registry: the agent may serve this range again.
            let end = offset + n as u64;
            let mut d = self.direct.lock().unwrap_or_else(|p| p.into_inner());
            d.retain(|&(a, b)| !(a >= offset && b <= end));
        }
        self.stats.latency.observe(started.elapsed());
        Ok(n)
    }
}

impl ReadAt for RegistryBlob {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.read(offset, buf).map_err(Error::into_io)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }
    /// Bytes of this range failed verification above: the next read of it skips the agent.
    fn discard_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        self.stats
            .verification_failures
            .fetch_add(1, Ordering::Relaxed);
        let Some(agent) = self.endpoints.iter().find(|e| e.kind == Kind::Agent) else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        self.direct
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((offset, offset.saturating_add(len)));
        // Tell the agent (overlaybd-p2p's `DELETE` with the range): it drops those pieces and
        // reports the node that served them. Best effort, bounded: the read goes on from the
        // registry either way.
        let deadline = Instant::now() + Duration::from_secs(2);
        let auth = self.authorization(agent, deadline).ok().flatten();
        let mut req = agent
            .client
            .delete(&agent.url)
            .header(RANGE, format!("bytes={offset}-{}", offset + len - 1))
            .timeout(Duration::from_secs(2));
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        match req.send() {
            Ok(r) if r.status().is_success() => {
                self.stats.agent_reports.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => tracing::debug!("reporting bad bytes to {}: {}", agent.name, r.status()),
            Err(e) => tracing::debug!("reporting bad bytes to {}: {}", agent.name, chain(&e)),
        }
        Ok(())
    }
}
