//! Reading blobs from an OCI registry by HTTP range requests, as a [`zfile::ReadAt`].
//!
//! The blob's size is learned once (HEAD). Every read is a `Range` GET, retried with capped
//! exponential backoff and jitter on transient failures (connection errors, 5xx, 429 with
//! `Retry-After`, a short body, a `Content-Range` that does not match) until the per-read
//! deadline; then it fails. Permanent failures (404, 401 after fresh credentials, other 4xx)
//! fail at once, naming the blob and the registry. overlaybd retries for up to 7 days; a
//! container should see an I/O error instead.

pub mod auth;

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::StatusCode;
use zfile::ReadAt;

use crate::error::{Error, Result};
use auth::{parse_challenge, parse_token, Challenge, Credentials, Token};

/// Settings of a registry source.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// How long one read may take, retries included.
    pub deadline: Duration,
    /// First retry delay; doubled each time up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub credentials: Option<Credentials>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            deadline: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            credentials: None,
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
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub retries: AtomicU64,
    pub token_fetches: AtomicU64,
}

#[derive(Debug, Default)]
struct AuthState {
    challenge: Option<Challenge>,
    token: Option<Token>,
}

/// One blob in a registry, read by ranges.
#[derive(Debug)]
pub struct RegistryBlob {
    client: Client,
    loc: BlobLocation,
    url: String,
    size: u64,
    opts: RegistryOptions,
    auth: Mutex<AuthState>,
    stats: RegistryStats,
}

/// Why an attempt did not succeed.
enum Attempt {
    /// Worth another try, after at least the given wait if the registry named one.
    Transient(String, Option<Duration>),
    Permanent(Error),
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

impl RegistryBlob {
    /// Opens a blob, learning its size (and checking it against `expected_size` if given).
    pub fn open(
        loc: BlobLocation,
        expected_size: Option<u64>,
        opts: RegistryOptions,
    ) -> Result<Self> {
        let client = Client::builder()
            .user_agent(concat!("overlaybd-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Invalid(format!("http client: {e}")))?;
        let mut blob = RegistryBlob {
            client,
            url: loc.url(),
            loc,
            size: 0,
            opts,
            auth: Mutex::new(AuthState::default()),
            stats: RegistryStats::default(),
        };
        let size = blob.with_retries("HEAD", |b, deadline| {
            let resp = b.send(|c| c.head(&b.url), deadline)?;
            match resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(n) => Ok(n),
                None => transient("HEAD without Content-Length"),
            }
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

    pub fn location(&self) -> &BlobLocation {
        &self.loc
    }

    pub fn stats(&self) -> &RegistryStats {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Authorization header to send, fetching a Bearer token when the challenge asks for
    /// one and none is cached (or it expired).
    fn authorization(&self, deadline: Instant) -> std::result::Result<Option<String>, Attempt> {
        let challenge = self.lock().challenge.clone();
        let (realm, service, scope) = match challenge {
            None => return Ok(None),
            Some(Challenge::Basic) => {
                return Ok(self
                    .opts
                    .credentials
                    .as_ref()
                    .map(Credentials::basic_header))
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => (realm, service, scope),
        };
        if let Some(t) = self
            .lock()
            .token
            .clone()
            .filter(|t| t.expires > Instant::now())
        {
            return Ok(Some(format!("Bearer {}", t.value)));
        }
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.loc.repository));
        let mut req = self.client.get(&realm).query(&[("scope", scope.as_str())]);
        if let Some(s) = &service {
            req = req.query(&[("service", s.as_str())]);
        }
        if let Some(c) = &self.opts.credentials {
            req = req.header(AUTHORIZATION, c.basic_header());
        }
        self.stats.token_fetches.fetch_add(1, Ordering::Relaxed);
        let resp = match req
            .timeout(deadline.saturating_duration_since(Instant::now()))
            .send()
        {
            Ok(r) => r,
            Err(e) => return transient(format!("token server {realm}: {e}")),
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
        self.lock().token = Some(token);
        Ok(Some(header))
    }

    /// Sends one request with authentication; a 401 updates the challenge and is retried once
    /// at once with fresh credentials.
    fn send(
        &self,
        build: impl Fn(&Client) -> RequestBuilder,
        deadline: Instant,
    ) -> std::result::Result<Response, Attempt> {
        let mut fresh = false;
        loop {
            let auth = self.authorization(deadline)?;
            let mut req = build(&self.client).timeout(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            );
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) => return transient(format!("{e}")),
            };
            let status = resp.status();
            let permanent = |what: String| {
                Err(Attempt::Permanent(Error::Invalid(format!(
                    "{}: {what}",
                    self.loc
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
                let mut st = self.lock();
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

    /// Reads up to `buf.len()` bytes at `offset` with one range request (retried), straight
    /// into `buf`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.size - offset) as usize;
        let last = offset + n as u64 - 1;
        let range = format!("bytes={offset}-{last}");
        let want_cr = format!("bytes {offset}-{last}/{}", self.size);
        let out = &mut buf[..n];
        self.with_retries("GET", |b, deadline| {
            let mut resp = b.send(|c| c.get(&b.url).header(RANGE, &range), deadline)?;
            let skip = match resp.status() {
                StatusCode::PARTIAL_CONTENT => {
                    let cr = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if cr != want_cr {
                        return transient(format!("Content-Range {cr:?}, expected {want_cr:?}"));
                    }
                    0
                }
                // The registry ignored the range: read through to the offset (bounded by size).
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
            Ok(())
        })?;
        self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
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
}
