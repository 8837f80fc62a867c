//! One blob read by HTTP range requests, as a [`zfile::ReadAt`].
//!
//! The blob's size is learned once (HEAD), or taken as given when the cache already holds the
//! blob at that size. Every read is a `Range` GET through the [`Session`]: tried at each place
//! in order (agent, mirrors, upstream), retried on transient failures (connection errors,
//! 5xx, 429 with `Retry-After`, a short body, a `Content-Range` that does not match) until the
//! per-read deadline. Permanent failures (404, 401 after fresh credentials, other 4xx) fail
//! at once, naming the blob and the registry. overlaybd retries for up to 7 days; a container
//! should see an I/O error instead. A range whose bytes failed verification above
//! (`discard_cached`) is fetched from the registry, not the agent.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use zfile::ReadAt;

use crate::auth::Credentials;
use crate::client::chain;
use crate::credentials::DockerConfig;
use crate::hosts;
use crate::location::BlobLocation;
use crate::outage::Outages;
use crate::session::{transient, Attempt, CredentialSource, Kind, Retry, Session};
use crate::stats::RegistryStats;
use crate::{Error, Result};

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
    pub hosts_dir: Option<std::path::PathBuf>,
    /// A P2P agent's URL prefix, e.g. `http://127.0.0.1:19145/dadip2p`: range reads go to
    /// `<agent>/<blob URL>` first.
    pub agent: Option<String>,
    /// The registries that are down, shared by the blobs of a process: a read of one gets
    /// their short deadline instead of `deadline` (`crate::outage`). `None`: every read gets
    /// `deadline`.
    pub outages: Option<Arc<Outages>>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        let r = Retry::default();
        RegistryOptions {
            deadline: r.deadline,
            initial_backoff: r.initial_backoff,
            max_backoff: r.max_backoff,
            credentials: None,
            docker_config: None,
            hosts_dir: None,
            agent: None,
            outages: None,
        }
    }
}

/// One blob in a registry, read by ranges.
#[derive(Debug)]
pub struct RegistryBlob {
    loc: BlobLocation,
    session: Session,
    size: u64,
    /// `blobs/<digest>`
    tail: String,
    /// Ranges to read from the registry, not the agent (they failed verification).
    direct: Mutex<Vec<(u64, u64)>>,
    outages: Option<Arc<Outages>>,
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
        let what = format!("HEAD {}", blob.loc);
        let size = blob.with_retries(
            &what,
            |_| true,
            |deadline| {
                // The size comes from the registry (agents answer range reads only).
                blob.session.across(false, |p| {
                    let url = p.url(&blob.session.repository, &blob.tail);
                    let resp = blob.session.send(p, &what, |c| c.head(&url), deadline)?;
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
            },
        )?;
        if let Some(want) = expected_size {
            if want != size {
                return Err(Error::Mismatch {
                    what: format!("blob {}", blob.loc),
                    reason: format!("the registry says {size} bytes, the image says {want}"),
                });
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
        let hosts = hosts::hosts_for(opts.hosts_dir.as_deref(), &loc.registry)?;
        let creds = CredentialSource {
            given: opts.credentials.as_ref(),
            docker_config: opts.docker_config.as_deref(),
        };
        let retry = Retry {
            deadline: opts.deadline,
            initial_backoff: opts.initial_backoff,
            max_backoff: opts.max_backoff,
            attempt_timeout: None,
        };
        let session = Session::new(
            &loc.registry,
            &loc.repository,
            hosts,
            "pull",
            opts.agent.as_deref(),
            &creds,
            retry,
        )
        .map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("blob {loc}: {m}")),
            e => e,
        })?;
        Ok(RegistryBlob {
            tail: format!("blobs/{}", loc.digest),
            loc,
            session,
            size: 0,
            direct: Mutex::default(),
            outages: opts.outages,
        })
    }

    /// Runs `attempt` with retries until the deadline: the session's, or the short one while
    /// the registry is down. A read that fails having waited a quarter or more of its full
    /// deadline marks the registry down (not one a long `Retry-After` ended at once); an answer from the
    /// registry or a mirror (`from_registry` of the result: not the P2P agent's cache, which
    /// answers while the registry is gone) marks it up.
    fn with_retries<T>(
        &self,
        what: &str,
        from_registry: impl Fn(&T) -> bool,
        attempt: impl FnMut(Instant) -> std::result::Result<T, Attempt>,
    ) -> Result<T> {
        let s = &self.session;
        let Some(o) = &self.outages else {
            return s.with_retries(what, attempt);
        };
        let registry = &self.loc.registry;
        let (within, down) = o.deadline(registry, s.retry.deadline);
        let started = Instant::now();
        let r = s.with_retries_within(what, within, attempt);
        match r {
            Ok(ref v) if from_registry(v) => o.answered(registry),
            Ok(_) => {}
            Err(Error::TimedOut(why)) if down => {
                return Err(Error::TimedOut(format!(
                    "{why} (registry {registry} is down: an earlier read failed at the full \
                     deadline, so reads wait {:.1} s until it answers again)",
                    within.as_secs_f64()
                )))
            }
            // Retries stop when the next back-off would pass the deadline: after half to all
            // of it. A `Retry-After` longer than the deadline stops them at once.
            Err(Error::TimedOut(ref why)) if started.elapsed() >= within / 4 => {
                o.failed(registry, why)
            }
            Err(_) => {}
        }
        r
    }

    pub fn location(&self) -> &BlobLocation {
        &self.loc
    }

    pub fn stats(&self) -> &RegistryStats {
        &self.session.stats
    }

    /// The URLs this blob is read from, in the order they are tried (for logs: `hosts.toml`
    /// and the loopback rule may make them differ from the image's `repoBlobUrl`).
    pub fn urls(&self) -> Vec<String> {
        self.session
            .places
            .iter()
            .map(|p| p.url(&self.session.repository, &self.tail))
            .collect()
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
        let out = &mut buf[..n];
        let direct = self.must_go_direct(offset, n as u64);
        let what = format!("GET {} bytes {offset}-{last}", self.loc);
        let s = &self.session;
        let kind = self.with_retries(
            &what,
            |k| *k != Kind::Agent,
            |deadline| {
                s.across(!direct, |p| {
                    let url = p.url(&s.repository, &self.tail);
                    let range = format!("bytes={offset}-{last}");
                    let mut resp =
                        s.send(p, &what, |c| c.get(&url).header(RANGE, &range), deadline)?;
                    let skip = self.check_range(&resp, p.name.as_str(), offset, last)?;
                    if skip > 0
                        && std::io::copy(&mut (&mut resp).take(skip), &mut std::io::sink())
                            .map_or(true, |c| c < skip)
                    {
                        return transient("short body");
                    }
                    let mut filled = 0;
                    while filled < n {
                        match resp.read(&mut out[filled..]) {
                            Ok(0) => {
                                return transient(format!("short body: {filled} of {n} bytes"))
                            }
                            Ok(k) => filled += k,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return transient(format!("body: {e}")),
                        }
                    }
                    Ok(p.kind)
                })
            },
        )?;
        let stats = &self.session.stats;
        match kind {
            Kind::Agent => &stats.agent_bytes,
            _ => &stats.bytes,
        }
        .fetch_add(n as u64, Ordering::Relaxed);
        if direct && kind != Kind::Agent {
            // Fetched from the registry: the agent may serve this range again.
            let end = offset + n as u64;
            let mut d = self.direct.lock().unwrap_or_else(|p| p.into_inner());
            d.retain(|&(a, b)| !(a >= offset && b <= end));
        }
        stats.latency.observe(started.elapsed());
        Ok(n)
    }

    /// How many bytes of the answer to skip to reach `offset`: 0 for the right 206; the offset
    /// itself when the server ignored the range (200). A range of a blob of another size is
    /// permanent (not this blob); any other mismatch is transient.
    fn check_range(
        &self,
        resp: &reqwest::blocking::Response,
        place: &str,
        offset: u64,
        last: u64,
    ) -> std::result::Result<u64, Attempt> {
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let want = format!("bytes {offset}-{last}/{}", self.size);
                let cr = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let asked = format!("bytes {offset}-{last}/");
                if let Some(total) = cr.strip_prefix(&asked).filter(|_| cr != want) {
                    return Err(Attempt::Permanent(Error::Mismatch {
                        what: format!("blob {}", self.loc),
                        reason: format!("{place} says {total} bytes, the image says {}", self.size),
                    }));
                }
                if cr != want {
                    return transient(format!("Content-Range {cr:?}, expected {want:?}"));
                }
                Ok(0)
            }
            // The server ignored the range: read through to the offset (bounded).
            StatusCode::OK => Ok(offset),
            s => transient(format!("unexpected status {s}")),
        }
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
        let s = &self.session;
        s.stats
            .verification_failures
            .fetch_add(1, Ordering::Relaxed);
        let Some(agent) = s.agent() else {
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
        let auth = s.authorization(agent, deadline).ok().flatten();
        let mut req = agent
            .client()
            .delete(agent.url(&s.repository, &self.tail))
            .header(RANGE, format!("bytes={offset}-{}", offset + len - 1))
            .timeout(Duration::from_secs(2));
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        match req.send() {
            Ok(r) if r.status().is_success() => {
                s.stats.agent_reports.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => tracing::debug!("reporting bad bytes to {}: {}", agent.name, r.status()),
            Err(e) => tracing::debug!("reporting bad bytes to {}: {}", agent.name, chain(&e)),
        }
        Ok(())
    }
}
