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

/// Most concurrent range requests one read is split into.
pub const PARALLEL_RANGES: usize = 4;
/// Smallest piece a read is split into.
pub const SPLIT_MIN: usize = 2 << 20;

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

/// What one attempt concluded.
enum Outcome<T> {
    Done(T),
    /// Worth another try, after at least this long.
    Retry(String, Option<Duration>),
    Fail(Error),
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
            let resp = match b.send(|c| c.head(&b.url), deadline) {
                Ok(r) => r,
                Err(o) => return o,
            };
            match resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(n) => Outcome::Done(n),
                None => Outcome::Retry("HEAD without Content-Length".into(), None),
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
    fn authorization(&self, deadline: Instant) -> std::result::Result<Option<String>, Outcome<()>> {
        let challenge = self.lock().challenge.clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self
                .opts
                .credentials
                .as_ref()
                .map(Credentials::basic_header)),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                if let Some(t) = self
                    .lock()
                    .token
                    .clone()
                    .filter(|t| t.expires > Instant::now())
                {
                    return Ok(Some(format!("Bearer {}", t.value)));
                }
                let scope =
                    scope.unwrap_or_else(|| format!("repository:{}:pull", self.loc.repository));
                let mut req = self.client.get(&realm).query(&[("scope", scope.as_str())]);
                if let Some(s) = &service {
                    req = req.query(&[("service", s.as_str())]);
                }
                if let Some(c) = &self.opts.credentials {
                    req = req.header(AUTHORIZATION, c.basic_header());
                }
                self.stats.token_fetches.fetch_add(1, Ordering::Relaxed);
                let resp = req
                    .timeout(deadline.saturating_duration_since(Instant::now()))
                    .send()
                    .map_err(|e| Outcome::Retry(format!("token server {realm}: {e}"), None))?;
                let status = resp.status();
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    return Err(Outcome::Fail(Error::Invalid(format!(
                        "token server {realm} refused the credentials for {}: {status}",
                        self.loc
                    ))));
                }
                if !status.is_success() {
                    return Err(Outcome::Retry(
                        format!("token server {realm}: {status}"),
                        None,
                    ));
                }
                let body = resp
                    .bytes()
                    .map_err(|e| Outcome::Retry(format!("token server {realm}: {e}"), None))?;
                let token = parse_token(&body, Instant::now()).ok_or_else(|| {
                    Outcome::Fail(Error::Invalid(format!(
                        "token server {realm}: no token in its answer"
                    )))
                })?;
                let header = format!("Bearer {}", token.value);
                self.lock().token = Some(token);
                Ok(Some(header))
            }
        }
    }

    /// Sends one request with authentication; a 401 updates the challenge and is retried once
    /// at once with fresh credentials.
    fn send<T>(
        &self,
        build: impl Fn(&Client) -> RequestBuilder,
        deadline: Instant,
    ) -> std::result::Result<Response, Outcome<T>> {
        let convert = |o: Outcome<()>| match o {
            Outcome::Retry(m, d) => Outcome::Retry(m, d),
            Outcome::Fail(e) => Outcome::Fail(e),
            Outcome::Done(_) => unreachable!("authorization never yields a response"),
        };
        for fresh in [false, true] {
            let auth = self.authorization(deadline).map_err(convert)?;
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
                Err(e) => return Err(Outcome::Retry(format!("{e}"), None)),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                if fresh || challenge.is_none() {
                    return Err(Outcome::Fail(Error::Invalid(format!(
                        "{}: unauthorized (401) with fresh credentials",
                        self.loc
                    ))));
                }
                let mut st = self.lock();
                st.challenge = challenge;
                st.token = None;
                continue;
            }
            if status == StatusCode::NOT_FOUND {
                return Err(Outcome::Fail(Error::Invalid(format!(
                    "{}: not found (404)",
                    self.loc
                ))));
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                return Err(Outcome::Retry("429 too many requests".into(), after));
            }
            if status.is_server_error() {
                return Err(Outcome::Retry(format!("{status}"), None));
            }
            if !status.is_success() {
                return Err(Outcome::Fail(Error::Invalid(format!(
                    "{}: {status}",
                    self.loc
                ))));
            }
            return Ok(resp);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Runs `attempt` until it succeeds, fails for good, or the deadline passes.
    fn with_retries<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut(&Self, Instant) -> Outcome<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let deadline = start + self.opts.deadline;
        let mut backoff = self.opts.initial_backoff;
        loop {
            match attempt(self, deadline) {
                Outcome::Done(v) => return Ok(v),
                Outcome::Fail(e) => return Err(e),
                Outcome::Retry(why, after) => {
                    let wait = after.unwrap_or_else(|| jitter(backoff));
                    if Instant::now() + wait >= deadline {
                        return Err(Error::io(
                            "read",
                            format!("blob {}", self.loc),
                            0,
                            io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!(
                                    "{what}: gave up after {:.1} s: {why}",
                                    start.elapsed().as_secs_f64()
                                ),
                            ),
                        ));
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(wait);
                    backoff = (backoff * 2).min(self.opts.max_backoff);
                }
            }
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`. Large reads are split into up to
    /// [`PARALLEL_RANGES`] concurrent range requests of at least [`SPLIT_MIN`] bytes each:
    /// a registry spends milliseconds per request, which concurrency hides.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.size - offset) as usize;
        let parts = (n / SPLIT_MIN).clamp(1, PARALLEL_RANGES);
        if parts == 1 {
            return self.read_range(offset, &mut buf[..n]);
        }
        let piece = n.div_ceil(parts).next_multiple_of(4096);
        let results: Vec<Result<usize>> = std::thread::scope(|s| {
            let handles: Vec<_> = buf[..n]
                .chunks_mut(piece)
                .enumerate()
                .map(|(i, chunk)| {
                    s.spawn(move || self.read_range(offset + (i * piece) as u64, chunk))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Invalid("range reader panicked".into())))
                })
                .collect()
        });
        for r in results {
            r?;
        }
        Ok(n)
    }

    /// One range request (with retries) for `buf.len()` bytes at `offset`, inside the blob.
    fn read_range(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.size - offset) as usize;
        let last = offset + n as u64 - 1;
        let range = format!("bytes={offset}-{last}");
        let want_cr = format!("bytes {offset}-{last}/{}", self.size);
        self.with_retries("GET", |b, deadline| {
            let mut resp = match b.send(|c| c.get(&b.url).header(RANGE, &range), deadline) {
                Ok(r) => r,
                Err(o) => return o,
            };
            let tmp = &mut buf[..n];
            let skip = match resp.status() {
                StatusCode::PARTIAL_CONTENT => {
                    let cr = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if cr != want_cr {
                        return Outcome::Retry(
                            format!("Content-Range {cr:?}, expected {want_cr:?}"),
                            None,
                        );
                    }
                    0
                }
                // The registry ignored the range: read through to the offset (bounded by size).
                StatusCode::OK => offset,
                s => return Outcome::Retry(format!("unexpected status {s}"), None),
            };
            if skip > 0
                && std::io::copy(&mut (&mut resp).take(skip), &mut std::io::sink())
                    .map_or(true, |c| c < skip)
            {
                return Outcome::Retry("short body".into(), None);
            }
            let mut filled = 0;
            while filled < n {
                match resp.read(&mut tmp[filled..]) {
                    Ok(0) => {
                        return Outcome::Retry(format!("short body: {filled} of {n} bytes"), None)
                    }
                    Ok(k) => filled += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Outcome::Retry(format!("body: {e}"), None),
                }
            }
            Outcome::Done(())
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
