//! The one registry session: the places a repository is reached at (a P2P agent, the mirrors
//! of `hosts.toml`, the upstream), each with its TLS client, credentials and auth state;
//! authentication (Basic, Bearer tokens from the challenge's realm, Docker identity tokens as
//! OAuth2 refresh tokens); and retries with capped exponential backoff and jitter until a
//! deadline. Blob range reads ([`crate::RegistryBlob`]) and repository operations
//! ([`crate::Repository`]) both go through it.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use crate::auth::{parse_challenge, parse_token, Challenge, Credentials, Token};
use crate::client::{chain, client_for, describe, is_plain_http_answer};
use crate::credentials::DockerConfig;
use crate::hosts::Host;
use crate::stats::RegistryStats;
use crate::{Error, Result};

/// How long an operation is retried, and how.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// How long an operation is retried: no attempt starts after it, and without an
    /// `attempt_timeout` no attempt runs past it.
    pub deadline: Duration,
    /// First retry delay; doubled each time up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The time one attempt may take; `None`: until the deadline.
    pub attempt_timeout: Option<Duration>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            deadline: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            attempt_timeout: None,
        }
    }
}

#[derive(Debug, Default)]
struct AuthState {
    challenge: Option<Challenge>,
    token: Option<Token>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Agent,
    Mirror,
    Upstream,
}

/// One place a repository is reached at.
#[derive(Debug)]
pub(crate) struct Place {
    pub(crate) kind: Kind,
    client: Client,
    /// `scheme://host[:port]/v2` (a mirror's or the upstream's), or for an agent
    /// `<agent>/<upstream root>`.
    root: String,
    /// `?ns=<upstream host>` on a mirror's requests.
    ns: Option<String>,
    /// `host[:port]` or `P2P agent <url>`, for messages.
    pub(crate) name: String,
    credentials: Option<Credentials>,
    headers: Vec<(String, String)>,
    auth: Mutex<AuthState>,
    /// An HTTPS place whose next place is the same server over plain HTTP (containerd's
    /// loopback rule): once its TLS handshake meets a plain HTTP answer, it is skipped.
    tls_fallback: bool,
    plain_http_seen: std::sync::atomic::AtomicBool,
}

impl Place {
    /// The URL of `tail` (`blobs/<digest>`, `manifests/<ref>`, `blobs/uploads/`) of
    /// `repository` at this place.
    pub(crate) fn url(&self, repository: &str, tail: &str) -> String {
        let mut u = format!("{}/{repository}/{tail}", self.root);
        if let Some(ns) = &self.ns {
            u.push(if u.contains('?') { '&' } else { '?' });
            u.push_str("ns=");
            u.push_str(ns);
        }
        u
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }
}

/// Where the places' credentials come from.
#[derive(Clone, Debug, Default)]
pub(crate) struct CredentialSource<'a> {
    /// Given credentials win for every host.
    pub(crate) given: Option<&'a Credentials>,
    pub(crate) docker_config: Option<&'a DockerConfig>,
}

impl CredentialSource<'_> {
    pub(crate) fn for_host(&self, host: &str) -> Result<Option<Credentials>> {
        if let Some(c) = self.given {
            return Ok(Some(c.clone()));
        }
        match self.docker_config {
            Some(dc) => dc.credentials_for(host),
            None => Ok(None),
        }
    }
}

/// Why an attempt did not succeed.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Worth another try, after at least the given wait if the registry named one.
    Transient(String, Option<Duration>),
    Permanent(Error),
}

pub(crate) fn transient<T>(why: impl Into<String>) -> std::result::Result<T, Attempt> {
    Err(Attempt::Transient(why.into(), None))
}

fn jitter(d: Duration) -> Duration {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    // 50–100% of d.
    d.mul_f64(0.5 + (n % 1000) as f64 / 2000.0)
}

/// A repository's places, its auth scope and retry policy, and the counters of what was sent.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) places: Vec<Place>,
    /// `host[:port]` of the upstream, for messages and mirrors' `ns`.
    pub(crate) upstream: String,
    pub(crate) repository: String,
    /// `pull` or `pull,push`: the scope asked for when a challenge names none.
    actions: &'static str,
    pub(crate) retry: Retry,
    pub(crate) stats: RegistryStats,
}

impl Session {
    /// The places of `repository` at `registry` (`scheme://host[:port]`): the agent first
    /// (when given), then the hosts `hosts.toml` lists with `capability`, in order. Only the
    /// upstream is kept when `capability` is `push`.
    pub(crate) fn new(
        registry: &str,
        repository: &str,
        hosts: Vec<Host>,
        capability: &str,
        agent: Option<&str>,
        creds: &CredentialSource<'_>,
        retry: Retry,
    ) -> Result<Session> {
        let upstream = registry
            .split_once("://")
            .map_or(registry, |(_, r)| r)
            .trim_end_matches('/')
            .to_string();
        let upstream_creds = creds.for_host(&upstream)?;
        let mut places = Vec::new();
        if let Some(agent) = agent {
            // The agent is given the upstream's URL as `hosts.toml` resolves it (its scheme
            // and path), since the P2P roots fetch that URL themselves.
            let root = hosts
                .iter()
                .find(|h| !h.mirror)
                .map_or_else(|| format!("{registry}/v2"), |h| h.root.clone());
            places.push(Place {
                kind: Kind::Agent,
                client: client_for(None)?,
                root: format!("{}/{root}", agent.trim_end_matches('/')),
                ns: None,
                name: format!("P2P agent {agent}"),
                credentials: upstream_creds.clone(),
                headers: Vec::new(),
                auth: Mutex::default(),
                tls_fallback: false,
                plain_http_seen: Default::default(),
            });
        }
        for h in hosts {
            let able = h.capabilities.iter().any(|c| c == capability);
            if !able || (capability == "push" && h.mirror) {
                continue;
            }
            let credentials = if h.mirror {
                creds.for_host(h.authority())?
            } else {
                upstream_creds.clone()
            };
            let place = Place {
                kind: if h.mirror {
                    Kind::Mirror
                } else {
                    Kind::Upstream
                },
                client: client_for(Some(&h))?,
                ns: h.mirror.then(|| upstream.clone()),
                root: h.root.trim_end_matches('/').to_string(),
                name: h.authority().to_string(),
                credentials,
                headers: h.header.clone(),
                auth: Mutex::default(),
                tls_fallback: h.tls_fallback,
                plain_http_seen: Default::default(),
            };
            let plain = h.tls_fallback.then(|| Place {
                root: place.root.replacen("https://", "http://", 1),
                name: format!("{} (plain HTTP)", place.name),
                client: place.client.clone(),
                ns: place.ns.clone(),
                credentials: place.credentials.clone(),
                headers: place.headers.clone(),
                auth: Mutex::default(),
                tls_fallback: false,
                plain_http_seen: Default::default(),
                kind: place.kind,
            });
            places.push(place);
            places.extend(plain);
        }
        if places.iter().all(|p| p.kind == Kind::Agent) {
            return Err(Error::Config(format!(
                "{upstream}/{repository}: no host with the {capability} capability in the hosts directory"
            )));
        }
        Ok(Session {
            places,
            upstream,
            repository: repository.to_string(),
            actions: if capability == "push" {
                "pull,push"
            } else {
                "pull"
            },
            retry,
            stats: RegistryStats::default(),
        })
    }

    pub(crate) fn agent(&self) -> Option<&Place> {
        self.places.iter().find(|p| p.kind == Kind::Agent)
    }

    /// Runs `f` on each place in order (the agent only when `use_agent`) until one succeeds;
    /// a failure hands over to the next place, and the last place's failure is the attempt's.
    pub(crate) fn across<T>(
        &self,
        use_agent: bool,
        mut f: impl FnMut(&Place) -> std::result::Result<T, Attempt>,
    ) -> std::result::Result<T, Attempt> {
        let usable = |p: &&Place| {
            (use_agent || p.kind != Kind::Agent) && !p.plain_http_seen.load(Ordering::Relaxed)
        };
        let count = self.places.iter().filter(usable).count();
        let mut errors = Vec::new();
        for (i, place) in self.places.iter().filter(usable).enumerate() {
            match f(place) {
                Ok(v) => return Ok(v),
                Err(e) if i + 1 == count => {
                    return Err(match e {
                        Attempt::Transient(why, after) if !errors.is_empty() => {
                            errors.push(format!("{}: {why}", place.name));
                            Attempt::Transient(errors.join("; "), after)
                        }
                        e => e,
                    })
                }
                Err(e) => {
                    self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                    errors.push(match e {
                        Attempt::Transient(why, _) => format!("{}: {why}", place.name),
                        Attempt::Permanent(e) => format!("{}: {e}", place.name),
                    });
                }
            }
        }
        Err(Attempt::Permanent(Error::Config(format!(
            "{}/{}: no place to send the request to",
            self.upstream, self.repository
        ))))
    }

    /// The Authorization header to send to `place`, fetching a Bearer token when the
    /// challenge asks for one and none is cached (or it expired).
    pub(crate) fn authorization(
        &self,
        place: &Place,
        deadline: Instant,
    ) -> std::result::Result<Option<String>, Attempt> {
        let lock = || place.auth.lock().unwrap_or_else(|p| p.into_inner());
        let challenge = lock().challenge.clone();
        let (realm, service, scope) = match challenge {
            None => return Ok(None),
            Some(Challenge::Basic) => {
                return Ok(place.credentials.as_ref().map(Credentials::basic_header))
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
        let scope =
            scope.unwrap_or_else(|| format!("repository:{}:{}", self.repository, self.actions));
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let req = match &place.credentials {
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
                place.client.post(&realm).form(&form)
            }
            creds => {
                let mut req = place.client.get(&realm).query(&[("scope", scope.as_str())]);
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
            Err(e) => return transient(format!("token server {realm}: {}", describe(&e))),
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Attempt::Permanent(Error::Unauthorized(format!(
                "token server {realm} refused the credentials for {} ({scope}): {status}{}",
                self.describe(),
                if place.credentials.is_none() {
                    " (no credentials are configured for this registry)"
                } else {
                    ""
                }
            ))));
        }
        if !status.is_success() {
            return transient(format!("token server {realm}: {status}"));
        }
        let body = match resp.bytes() {
            Ok(b) => b,
            Err(e) => return transient(format!("token server {realm}: {}", chain(&e))),
        };
        let token = parse_token(&body, Instant::now()).ok_or_else(|| {
            Attempt::Permanent(Error::Refused(format!(
                "token server {realm}: no token in its answer"
            )))
        })?;
        let header = format!("Bearer {}", token.value);
        lock().token = Some(token);
        Ok(Some(header))
    }

    /// Sends one request to `place` with authentication; a 401 updates the challenge and is
    /// retried once at once with fresh credentials. Success is any 2xx (and 3xx the client
    /// did not follow); 404, 401 after fresh credentials and other 4xx are permanent; 429 and
    /// 5xx are transient. `what` names the request in messages.
    pub(crate) fn send(
        &self,
        place: &Place,
        what: &str,
        build: impl Fn(&Client) -> RequestBuilder,
        deadline: Instant,
    ) -> std::result::Result<Response, Attempt> {
        self.try_send(place, what, |c| Ok(build(c)), deadline)
    }

    /// [`Session::send`] with a builder that can fail (a body read from a file).
    pub(crate) fn try_send(
        &self,
        place: &Place,
        what: &str,
        build: impl Fn(&Client) -> std::result::Result<RequestBuilder, Attempt>,
        deadline: Instant,
    ) -> std::result::Result<Response, Attempt> {
        let mut fresh = false;
        loop {
            let auth = self.authorization(place, deadline)?;
            let mut req = build(&place.client)?.timeout(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            );
            for (k, v) in &place.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            match place.kind {
                Kind::Agent => &self.stats.agent_requests,
                _ => &self.stats.requests,
            }
            .fetch_add(1, Ordering::Relaxed);
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) => {
                    if place.tls_fallback && is_plain_http_answer(&e) {
                        // containerd's loopback rule: this registry speaks plain HTTP; the
                        // next place is the same server over http://.
                        place.plain_http_seen.store(true, Ordering::Relaxed);
                        tracing::info!("{}: plain HTTP, not TLS; using http://", place.name);
                    }
                    return transient(describe(&e));
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                if fresh || challenge.is_none() {
                    let hint = if place.credentials.is_none() {
                        " (no credentials are configured for this registry: --user or a Docker config.json)"
                    } else {
                        ""
                    };
                    return Err(Attempt::Permanent(Error::Unauthorized(format!(
                        "{what} (via {}): unauthorized (401) with fresh credentials{hint}",
                        place.name
                    ))));
                }
                let mut st = place.auth.lock().unwrap_or_else(|p| p.into_inner());
                st.challenge = challenge;
                st.token = None;
                fresh = true;
                continue;
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
            if status.is_client_error() {
                let via = format!("{what} (GET {} via {})", resp.url(), place.name);
                return Err(Attempt::Permanent(match status {
                    StatusCode::NOT_FOUND => Error::NotFound(via),
                    StatusCode::FORBIDDEN => {
                        Error::Unauthorized(format!("{via}: {status}{}", error_body(resp)))
                    }
                    _ => Error::Refused(format!("{via}: {status}{}", error_body(resp))),
                }));
            }
            return Ok(resp);
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the deadline passes (no attempt
    /// starts after it). Each attempt may take the retry's `attempt_timeout` (an upload may
    /// outlast the retry window), else until the deadline.
    pub(crate) fn with_retries<T>(
        &self,
        what: &str,
        attempt: impl FnMut(Instant) -> std::result::Result<T, Attempt>,
    ) -> Result<T> {
        self.with_retries_within(what, self.retry.deadline, attempt)
    }

    /// [`Session::with_retries`] with another deadline than the session's.
    pub(crate) fn with_retries_within<T>(
        &self,
        what: &str,
        within: Duration,
        mut attempt: impl FnMut(Instant) -> std::result::Result<T, Attempt>,
    ) -> Result<T> {
        let start = Instant::now();
        let deadline = start + within;
        let mut backoff = self.retry.initial_backoff;
        loop {
            let this = match self.retry.attempt_timeout {
                Some(t) => Instant::now() + t,
                None => deadline,
            };
            let (why, after) = match attempt(this) {
                Ok(v) => return Ok(v),
                Err(Attempt::Permanent(e)) => return Err(e),
                Err(Attempt::Transient(why, after)) => (why, after),
            };
            let wait = after.unwrap_or_else(|| jitter(backoff));
            if Instant::now() + wait >= deadline {
                return Err(Error::TimedOut(format!(
                    "{what}: gave up after {:.1} s: {why}",
                    start.elapsed().as_secs_f64()
                )));
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(wait);
            backoff = (backoff * 2).min(self.retry.max_backoff);
        }
    }

    /// `host/repository`, for messages.
    pub(crate) fn describe(&self) -> String {
        format!("{}/{}", self.upstream, self.repository)
    }
}

/// The start of an error answer's body (registries explain themselves there), for messages.
fn error_body(resp: Response) -> String {
    let text = resp.text().unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(" {}", text.chars().take(300).collect::<String>())
    }
}
