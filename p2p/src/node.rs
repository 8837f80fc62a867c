//! A node of the tree: the HTTP server (overlaybd's `/<api-key>/<origin URL>` range requests,
//! the tree protocol between nodes, `/metrics`) and the fetching of pieces from upstream.
//!
//! Requests:
//! - `GET|HEAD /<api-key>/<scheme>://<registry>/v2/<repository>/blobs/<digest>` with `Range`
//!   and the registry's `Authorization`, from overlaybd (ours or the C++ one) or from a child
//!   node (which adds `X-P2P-Node: <its URL>` and `X-P2P-Path: <nodes the request went
//!   through>`). The credentials are checked first (see [`Node::authorize`]), then the range
//!   is streamed from the pieces, each fetched once from upstream.
//! - `DELETE` of the same URL with `Range`: the reader found bytes of that range bad. The
//!   pieces are dropped, and the node that served them is reported to the owning root and
//!   left.
//! - `POST /_p2p/v1/join` (roots): `{url, node, failed}` with the reader's `Authorization`:
//!   checks access and answers `{size, parent, depth}` from the blob's [`Tree`].
//! - `POST /_p2p/v1/report` (roots): `{url, node}`: `node` served bad bytes.
//! - `GET /_p2p/v1/trees` (roots): the trees' shapes as JSON; `GET /metrics`; `GET /healthz`.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
    WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::config::{Config, Role};
use crate::limit::Bucket;
use crate::metrics::{Gauges, Metrics};
use crate::store::{Lookup, Piece, Store};
use crate::topology::{rendezvous, Shape, Tree};

pub const NODE_HEADER: &str = "x-p2p-node";
pub const PATH_HEADER: &str = "x-p2p-path";
pub const SOURCE_HEADER: &str = "x-p2p-source";

type Body = BoxBody<Bytes, std::io::Error>;

/// A blob URL as the request names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub url: String,
    /// `host[:port]` of the registry.
    pub authority: String,
    pub repository: String,
    pub digest: String,
}

impl Origin {
    /// `scheme://host[:port]/v2/<repository>/blobs/sha256:<64 hex>`, nothing else.
    pub fn parse(url: &str) -> Result<Origin, String> {
        let bad = |why: &str| format!("{url:?}: {why}");
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| bad("not an http(s) URL"))?;
        if url.contains(['?', '#']) {
            return Err(bad("a query or fragment"));
        }
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no path"))?;
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("bad host"));
        }
        let (repo, digest) = path
            .strip_prefix("v2/")
            .and_then(|p| p.rsplit_once("/blobs/"))
            .ok_or_else(|| bad("not a registry blob URL (/v2/<repository>/blobs/<digest>)"))?;
        let repo_ok = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repo_ok {
            return Err(bad("bad repository name"));
        }
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
            .ok_or_else(|| bad("the digest is not sha256:<64 lowercase hex>"))?;
        let _ = hex;
        Ok(Origin {
            url: url.to_string(),
            authority: authority.to_string(),
            repository: repo.to_string(),
            digest: digest.to_string(),
        })
    }

    /// The cache key: the same bytes wherever they are in one registry (blobs are
    /// content-addressed; which repository may read them is checked per request). The scheme
    /// is part of it: bytes fetched over plain HTTP are not served for an HTTPS URL.
    pub fn key(&self) -> String {
        let scheme = if self.url.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/{}", self.authority, self.digest)
    }
}

/// Where this node fetches a blob's pieces.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Upstream {
    Registry,
    /// A node of the tree (`url == root` when the root itself is the parent).
    Node {
        url: String,
        root: String,
    },
}

#[derive(Clone, Debug)]
struct BlobState {
    size: u64,
    upstream: Upstream,
    depth: u32,
}

/// A refusal to pass to the client as is.
#[derive(Clone, Debug)]
struct Refusal {
    status: StatusCode,
    www_authenticate: Option<String>,
    message: String,
}

impl Refusal {
    /// An upstream's answer passed on: 401 (with its challenge), 403 and 404 as they are,
    /// anything else as 502.
    fn passed_on(status: u16, www_authenticate: Option<String>, message: String) -> Refusal {
        let status = match StatusCode::from_u16(status) {
            Ok(s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND)) => s,
            _ => StatusCode::BAD_GATEWAY,
        };
        Refusal {
            status,
            www_authenticate,
            message,
        }
    }

    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            www_authenticate: None,
            message: message.into(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub struct JoinRequest {
    pub url: String,
    pub node: String,
    #[serde(default)]
    pub failed: Option<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct JoinReply {
    pub size: u64,
    /// `None`: fetch from the root that answered.
    pub parent: Option<String>,
    pub depth: u32,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ReportRequest {
    pub url: String,
    pub node: String,
}

/// One tree as `/_p2p/v1/trees` shows it.
#[derive(Serialize, Debug)]
pub struct TreeView {
    pub shape: Shape,
    /// (node, parent, depth); parent `None` is the root.
    pub parents: Vec<(String, Option<String>, u32)>,
}

/// Who an access check was for: the holder of some credentials, or a child node the owning
/// root vouched for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Holder {
    /// SHA-256 of the `Authorization` header.
    Credentials([u8; 32]),
    Node(String),
}

/// (blob key, repository, holder).
type AccessKey = (String, String, Holder);

/// Blobs larger than this are refused (a registry's size is untrusted input).
pub const MAX_BLOB: u64 = 1 << 48;

#[derive(Debug)]
pub struct Node {
    pub cfg: Config,
    store: Store,
    http: reqwest::Client,
    pub metrics: Metrics,
    trees: Mutex<HashMap<String, Tree>>,
    blobs: Mutex<HashMap<String, BlobState>>,
    /// (registry, repository, sha256 of the Authorization header) → allowed until.
    access: Mutex<HashMap<AccessKey, Instant>>,
    /// Roots that did not answer, until when to skip them.
    down: Mutex<HashMap<String, Instant>>,
    /// Roots: (blob key, repository, node) whose join passed the access check, until when.
    joined: Mutex<HashMap<(String, String, String), Instant>>,
    /// Credentials this node may use upstream for a blob: its own local reader's (agents), or
    /// the last ones a join proved (roots). Never a child's.
    fetch_auth: Mutex<HashMap<String, Option<String>>>,
    /// Whole-blob digest checks: running, or passed for exactly these pieces.
    checked: Mutex<HashMap<String, Check>>,
    trees_swept: Mutex<Instant>,
    /// One permit per piece being fetched (`max_fills`).
    fills: Arc<tokio::sync::Semaphore>,
    fills_waiting: std::sync::atomic::AtomicU64,
    global: Option<Bucket>,
    per_child: Mutex<HashMap<String, Arc<Bucket>>>,
}

/// A blob's whole-blob digest check.
#[derive(Debug)]
enum Check {
    Running,
    /// Passed for these pieces (weak: the store decides how long pieces live).
    Passed(Vec<Weak<Piece>>),
}

fn same_pieces(done: &[Weak<Piece>], now: &[Arc<Piece>]) -> bool {
    done.len() == now.len()
        && done
            .iter()
            .zip(now)
            .all(|(d, n)| std::ptr::eq(d.as_ptr(), Arc::as_ptr(n)))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into() + "\n"))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn json<T: Serialize>(v: &T) -> Response<Body> {
    let mut r = text(StatusCode::OK, serde_json::to_string(v).unwrap_or_default());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn refusal(r: &Refusal) -> Response<Body> {
    let mut resp = text(r.status, r.message.clone());
    if let Some(w) = r
        .www_authenticate
        .as_deref()
        .and_then(|w| HeaderValue::from_str(w).ok())
    {
        resp.headers_mut().insert(WWW_AUTHENTICATE, w);
    }
    resp
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: the half-open range, `Err(())` when it
/// cannot be satisfied, `Ok(None)` without a header.
#[allow(clippy::result_unit_err)]
pub fn parse_range(h: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(h) = h else { return Ok(None) };
    let spec = h.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size)
    } else {
        let s: u64 = a.parse().map_err(|_| ())?;
        let e = if b.is_empty() {
            size
        } else {
            b.parse::<u64>()
                .map_err(|_| ())?
                .saturating_add(1)
                .min(size)
        };
        (s, e)
    };
    if start >= end || start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// An upstream's `WWW-Authenticate`.
fn challenge(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn auth_hash(auth: Option<&str>) -> [u8; 32] {
    Sha256::digest(auth.unwrap_or("").as_bytes()).into()
}

impl Node {
    pub fn new(cfg: Config) -> anyhow::Result<Arc<Node>> {
        let store = Store::new(cfg.cache.max_bytes, cfg.cache.dir.clone())?;
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("overlaybd-p2p/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(32);
        if let Some(ca) = &cfg.registry_ca {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("registry_ca {}: {e}", ca.display()))?;
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let global = (cfg.upload.global_bytes_per_sec > 0)
            .then(|| Bucket::new(cfg.upload.global_bytes_per_sec));
        Ok(Arc::new(Node {
            store,
            http: b.build()?,
            metrics: Metrics::default(),
            trees: Mutex::default(),
            blobs: Mutex::default(),
            access: Mutex::default(),
            down: Mutex::default(),
            joined: Mutex::default(),
            fetch_auth: Mutex::default(),
            checked: Mutex::default(),
            trees_swept: Mutex::new(Instant::now()),
            fills: Arc::new(tokio::sync::Semaphore::new(cfg.max_fills.max(1))),
            fills_waiting: Default::default(),
            global,
            per_child: Mutex::default(),
            cfg,
        }))
    }

    fn allowed_registry(&self, o: &Origin) -> Result<(), Refusal> {
        if self.cfg.registries.is_empty() || self.cfg.registries.iter().any(|r| r == &o.authority) {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "registry {} is not in this node's `registries`",
                    o.authority
                ),
            ))
        }
    }

    /// Whether `auth` may read `o`, asked of the registry (a HEAD with those credentials) by
    /// the owning root, or by this node when no root answers; the answer is kept
    /// `access_ttl_secs`. Returns the blob's size.
    async fn authorize(&self, o: &Origin, auth: Option<&str>) -> Result<u64, Refusal> {
        let key = o.key();
        let akey = (
            key.clone(),
            o.repository.clone(),
            Holder::Credentials(auth_hash(auth)),
        );
        let known = lock(&self.blobs).get(&key).map(|b| b.size);
        if let Some(size) = known {
            if lock(&self.access)
                .get(&akey)
                .is_some_and(|t| *t > Instant::now())
            {
                return Ok(size);
            }
        }
        Metrics::add(&self.metrics.access_checks, 1);
        let r = match self.cfg.role {
            Role::Root => self.registry_head(o, auth).await.inspect(|&size| {
                lock(&self.blobs).entry(key).or_insert(BlobState {
                    size,
                    upstream: Upstream::Registry,
                    depth: 0,
                });
            }),
            Role::Agent => self.join(o, auth, None).await,
        };
        match &r {
            Ok(_) => {
                let until = Instant::now() + Duration::from_secs(self.cfg.access_ttl_secs);
                let mut a = lock(&self.access);
                if a.len() > 100_000 {
                    let now = Instant::now();
                    a.retain(|_, t| *t > now);
                }
                a.insert(akey, until);
            }
            Err(_) => Metrics::add(&self.metrics.access_denied, 1),
        }
        r
    }

    /// HEAD of the blob at the registry with the request's credentials.
    async fn registry_head(&self, o: &Origin, auth: Option<&str>) -> Result<u64, Refusal> {
        let mut req = self
            .http
            .head(&o.url)
            .timeout(Duration::from_millis(self.cfg.stall_timeout_ms));
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = req.send().await.map_err(|e| {
            Refusal::new(
                StatusCode::BAD_GATEWAY,
                format!("registry {}: {e}", o.authority),
            )
        })?;
        let st = resp.status();
        if st.is_success() {
            return resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .filter(|&n| n <= MAX_BLOB)
                .ok_or_else(|| {
                    Refusal::new(
                        StatusCode::BAD_GATEWAY,
                        "registry: HEAD without a Content-Length (or over 256 TiB)",
                    )
                });
        }
        Err(Refusal::passed_on(
            st.as_u16(),
            challenge(&resp),
            format!("registry {} answered {st} for {}", o.authority, o.url),
        ))
    }

    fn roots_for(&self, key: &str) -> Vec<String> {
        let order = rendezvous(key, &self.cfg.roots);
        let now = Instant::now();
        let down = lock(&self.down);
        let (up, dn): (Vec<&str>, Vec<&str>) = order
            .into_iter()
            .partition(|r| down.get(*r).is_none_or(|t| *t <= now));
        // Roots recently down are tried last, not never.
        up.into_iter().chain(dn).map(str::to_string).collect()
    }

    fn mark_down(&self, root: &str) {
        lock(&self.down).insert(root.to_string(), Instant::now() + Duration::from_secs(10));
    }

    /// Asks the owning root (then the next ones) where to fetch `o` from; with no root
    /// answering, this node reads the registry itself. Returns the blob's size.
    async fn join(
        &self,
        o: &Origin,
        auth: Option<&str>,
        failed: Option<&str>,
    ) -> Result<u64, Refusal> {
        let key = o.key();
        let body = serde_json::to_vec(&JoinRequest {
            url: o.url.clone(),
            node: self.cfg.advertise.clone(),
            failed: failed.map(str::to_string),
        })
        .unwrap_or_default();
        for root in self.roots_for(&key) {
            if root == self.cfg.advertise {
                continue;
            }
            let mut req = self
                .http
                .post(format!("{root}/_p2p/v1/join"))
                .timeout(Duration::from_millis(self.cfg.stall_timeout_ms))
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    warn!(root, "join: {e}");
                    self.mark_down(&root);
                    continue;
                }
            };
            let st = resp.status();
            if st.is_success() {
                let reply: JoinReply = match resp.json::<JoinReply>().await {
                    Ok(j)
                        if j.size <= MAX_BLOB
                            && j.parent.as_deref().is_none_or(Self::node_url_ok) =>
                    {
                        j
                    }
                    Ok(j) => {
                        warn!(root, "join: bad answer: {j:?}");
                        self.mark_down(&root);
                        continue;
                    }
                    Err(e) => {
                        warn!(root, "join: bad answer: {e}");
                        self.mark_down(&root);
                        continue;
                    }
                };
                let upstream = Upstream::Node {
                    url: reply.parent.clone().unwrap_or_else(|| root.clone()),
                    root: root.clone(),
                };
                debug!(blob = %key, ?upstream, depth = reply.depth, "joined");
                lock(&self.blobs).insert(
                    key,
                    BlobState {
                        size: reply.size,
                        upstream,
                        depth: reply.depth,
                    },
                );
                return Ok(reply.size);
            }
            let www = challenge(&resp);
            let msg = resp.text().await.unwrap_or_default();
            if matches!(st.as_u16(), 401 | 403 | 404) {
                return Err(Refusal::passed_on(st.as_u16(), www, msg.trim().to_string()));
            }
            // The root answered but could not serve (its registry failed, say): every agent
            // reading the registry itself would be a stampede. Pass the failure on.
            warn!(root, "join: {st}: {}", msg.trim());
            return Err(Refusal::new(
                StatusCode::BAD_GATEWAY,
                format!("root {root}: {st}: {}", msg.trim()),
            ));
        }
        // No root: the registry itself.
        let size = self.registry_head(o, auth).await?;
        warn!(blob = %key, "no root answered: reading the registry directly");
        lock(&self.blobs).insert(
            key,
            BlobState {
                size,
                upstream: Upstream::Registry,
                depth: 0,
            },
        );
        Ok(size)
    }

    /// The piece, started if absent (and not being fetched).
    fn piece(
        self: &Arc<Self>,
        o: &Origin,
        idx: u64,
        size: u64,
        auth: &Option<String>,
        path: &str,
    ) -> Arc<Piece> {
        let ps = self.cfg.piece_size;
        let len = ps.min(size.saturating_sub(idx.saturating_mul(ps))) as usize;
        match self.store.get_or_start(&o.key(), idx, len) {
            Lookup::Hit(p) => {
                Metrics::add(&self.metrics.cache_hits, 1);
                p
            }
            Lookup::Started(p) => {
                Metrics::add(&self.metrics.cache_misses, 1);
                let me = self.clone();
                let (o, auth, piece) = (o.clone(), auth.clone(), p.clone());
                let path = path.to_string();
                tokio::spawn(async move { me.fill(o, idx, size, piece, auth, path).await });
                p
            }
        }
    }

    fn upstream(&self, key: &str) -> Upstream {
        match self.cfg.role {
            Role::Root => Upstream::Registry,
            Role::Agent => lock(&self.blobs)
                .get(key)
                .map_or(Upstream::Registry, |b| b.upstream.clone()),
        }
    }

    /// Fetches a piece, resuming at the first missing byte from the next upstream when one
    /// fails.
    async fn fill(
        self: Arc<Self>,
        o: Origin,
        idx: u64,
        size: u64,
        piece: Arc<Piece>,
        auth: Option<String>,
        path: String,
    ) {
        let key = o.key();
        // However this task ends (even by a panic), the piece is not left half-filled for
        // readers to wait on.
        let mut guard = FillGuard {
            node: self.clone(),
            key: key.clone(),
            idx,
            piece: piece.clone(),
            done: false,
            why: "the fetch was abandoned".into(),
        };
        // A piece being filled cannot be evicted: at most `max_fills` of them at once.
        self.fills_waiting.fetch_add(1, Ordering::Relaxed);
        let permit = self.fills.clone().acquire_owned().await;
        self.fills_waiting.fetch_sub(1, Ordering::Relaxed);
        let Ok(_permit) = permit else {
            return; // never closed
        };
        let auth = auth.or_else(|| lock(&self.fetch_auth).get(&key).cloned().flatten());
        let start = idx * self.cfg.piece_size;
        let end = start + piece.len as u64;
        let mut failures = 0u32;
        let mut last = String::new();
        while (piece.filled() as u64) < piece.len as u64 {
            let up = self.upstream(&key);
            let from = start + piece.filled() as u64;
            match self
                .fetch(&o, &up, from, end, size, auth.as_deref(), &path, &piece)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    Metrics::add(&self.metrics.upstream_failures, 1);
                    failures += 1;
                    warn!(blob = %key, piece = idx, ?up, "fetch failed: {e}");
                    last = e;
                    if failures >= 8 {
                        break;
                    }
                    self.failover(&o, &up, auth.as_deref()).await;
                    if up == Upstream::Registry {
                        tokio::time::sleep(Duration::from_millis(100 << failures.min(5))).await;
                    }
                }
            }
        }
        if (piece.filled() as u64) < piece.len as u64 {
            guard.why = format!("piece {idx} of {key}: {last}");
            return;
        }
        guard.done = true;
        let me = self.clone();
        let (k, p) = (key.clone(), piece.clone());
        let kept = tokio::task::spawn_blocking(move || me.store.completed(&k, idx, &p)).await;
        if let Ok(Err(e)) = kept {
            warn!("keeping piece {idx} of {key} on disk: {e}");
        }
        self.check_whole(&o, size);
    }

    /// When every piece of a blob is here, checks them against its digest; on a mismatch
    /// they are all dropped.
    fn check_whole(self: &Arc<Self>, o: &Origin, size: u64) {
        let key = o.key();
        let count = size.div_ceil(self.cfg.piece_size);
        let Some(pieces) = self.store.all_of(&key, count) else {
            return;
        };
        {
            let mut checked = lock(&self.checked);
            match checked.get(&key) {
                Some(Check::Running) => return,
                // Another piece's completion raced this one: these very pieces passed.
                Some(Check::Passed(done)) if same_pieces(done, &pieces) => return,
                _ => {}
            }
            checked.insert(key.clone(), Check::Running);
        }
        let me = self.clone();
        let want = o.digest.clone();
        tokio::task::spawn_blocking(move || {
            let mut h = Sha256::new();
            for p in &pieces {
                h.update(p.bytes().unwrap_or_default());
            }
            let got = format!("sha256:{}", hex::encode(h.finalize()));
            if got == want {
                Metrics::add(&me.metrics.digest_checks, 1);
                debug!(blob = %key, "whole blob matches its digest");
                // Pieces fetched again later (after eviction) are new pieces: checked again.
                let done = pieces.iter().map(Arc::downgrade).collect();
                lock(&me.checked).insert(key, Check::Passed(done));
            } else {
                Metrics::add(&me.metrics.digest_failures, 1);
                warn!(blob = %key, "whole blob is {got}: dropping its pieces");
                for (i, p) in pieces.iter().enumerate() {
                    me.store.remove_if_same(&key, i as u64, p);
                }
                lock(&me.checked).remove(&key);
            }
        });
    }

    /// The upstream failed: a parent is reported to the root (which gives another), a root
    /// is skipped for the next one, and with no root left the registry is read directly.
    async fn failover(&self, o: &Origin, up: &Upstream, auth: Option<&str>) {
        match up {
            Upstream::Registry => {
                // Try the roots again; they may be back.
                if self.cfg.role == Role::Agent {
                    let _ = self.join(o, auth, None).await;
                }
            }
            Upstream::Node { url, root } if url == root => {
                self.mark_down(root);
                let _ = self.join(o, auth, None).await;
            }
            Upstream::Node { url, .. } => {
                let _ = self.join(o, auth, Some(url)).await;
            }
        }
    }

    /// Reads `[from, end)` of the blob from `up` into the piece.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        o: &Origin,
        up: &Upstream,
        from: u64,
        end: u64,
        size: u64,
        auth: Option<&str>,
        path: &str,
        piece: &Piece,
    ) -> Result<(), String> {
        let stall = Duration::from_millis(self.cfg.stall_timeout_ms);
        // A trickle is a failure too: at least 256 KiB/s once the answer has started.
        let deadline =
            Instant::now() + stall + Duration::from_secs_f64((end - from) as f64 / 262_144.0);
        let (url, source, counter) = match up {
            Upstream::Registry => (
                o.url.clone(),
                "registry".to_string(),
                &self.metrics.fetched_registry,
            ),
            Upstream::Node { url, root } => (
                format!("{url}/{}/{}", self.cfg.api_key, o.url),
                url.clone(),
                if url == root {
                    &self.metrics.fetched_root
                } else {
                    &self.metrics.fetched_parent
                },
            ),
        };
        let mut req = self
            .http
            .get(&url)
            .header(RANGE, format!("bytes={from}-{}", end - 1));
        // Credentials go to the registry only; a parent learns who we are, and asks the root.
        if let (Some(a), Upstream::Registry) = (auth, up) {
            req = req.header(AUTHORIZATION, a);
        }
        if *up != Upstream::Registry {
            let path = if path.is_empty() {
                self.cfg.advertise.clone()
            } else {
                format!("{path},{}", self.cfg.advertise)
            };
            req = req
                .header(NODE_HEADER, &self.cfg.advertise)
                .header(PATH_HEADER, path);
        }
        let mut resp = tokio::time::timeout(stall, req.send())
            .await
            .map_err(|_| format!("{source}: no answer in {stall:?}"))?
            .map_err(|e| format!("{source}: {e}"))?;
        if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return Err(format!("{source}: {}", resp.status()));
        }
        let want = format!("bytes {from}-{}/{size}", end - 1);
        let cr = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if cr != want {
            return Err(format!("{source}: Content-Range {cr:?}, expected {want:?}"));
        }
        piece.set_source(&source);
        let mut got = 0u64;
        while from + got < end {
            let wait = stall.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, resp.chunk()).await {
                Err(_) => return Err(format!("{source}: stalled, or slower than 256 KiB/s")),
                Ok(Err(e)) => return Err(format!("{source}: {e}")),
                Ok(Ok(None)) => {
                    return Err(format!(
                        "{source}: short body: {got} of {} bytes",
                        end - from
                    ))
                }
                Ok(Ok(Some(c))) => {
                    let take = c.len().min((end - from - got) as usize);
                    got += take as u64;
                    Metrics::add(counter, take as u64);
                    piece.append(&c[..take]);
                }
            }
        }
        Ok(())
    }

    fn gauges(&self) -> Gauges {
        let (cache_bytes, cache_pieces) = self.store.usage();
        let mut g = Gauges {
            cache_bytes,
            cache_pieces,
            fills_running: (self.cfg.max_fills.max(1) - self.fills.available_permits()) as u64,
            fills_waiting: self.fills_waiting.load(Ordering::Relaxed),
            ..Gauges::default()
        };
        let trees = lock(&self.trees);
        g.trees = trees.len();
        for t in trees.values() {
            let s = t.shape();
            g.tree_nodes += s.nodes;
            g.tree_max_depth = g.tree_max_depth.max(s.max_depth);
            g.tree_max_fanout = g.tree_max_fanout.max(s.max_fanout.max(s.root_children));
        }
        g.own_max_depth = lock(&self.blobs)
            .values()
            .map(|b| b.depth)
            .max()
            .unwrap_or(0);
        g
    }

    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.gauges())
    }

    /// Serves one HTTP request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        remote: std::net::SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_string();
        let prefix = format!("/{}/", self.cfg.api_key);
        let resp = if let Some(origin) = path.strip_prefix(&prefix) {
            let origin = origin.to_string();
            match *req.method() {
                Method::GET | Method::HEAD => self.serve_blob(&req, &origin, remote).await,
                // Reports come from the reader on this host only: anyone else could make an
                // agent drop its cache and blame honest parents.
                Method::DELETE if remote.ip().is_loopback() => self.bad_range(&req, &origin).await,
                Method::DELETE => text(StatusCode::FORBIDDEN, "DELETE is for the local reader"),
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD or DELETE"),
            }
        } else {
            match (req.method().clone(), path.as_str()) {
                (Method::POST, "/_p2p/v1/join") => self.on_join(req).await,
                (Method::POST, "/_p2p/v1/report") => self.on_report(req).await,
                (Method::POST, "/_p2p/v1/vouch") => self.on_vouch(req).await,
                (Method::GET, "/_p2p/v1/trees") => {
                    let trees = lock(&self.trees);
                    let view: HashMap<&String, TreeView> = trees
                        .iter()
                        .map(|(k, t)| {
                            (
                                k,
                                TreeView {
                                    shape: t.shape(),
                                    parents: t.parents(),
                                },
                            )
                        })
                        .collect();
                    json(&view)
                }
                (Method::GET, "/metrics") => {
                    let mut r = text(StatusCode::OK, self.render_metrics());
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
                (Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
                _ => text(
                    StatusCode::NOT_FOUND,
                    format!("expected /{}/<blob URL>", self.cfg.api_key),
                ),
            }
        };
        Ok(resp)
    }

    fn header(req: &Request<Incoming>, name: impl hyper::header::AsHeaderName) -> Option<&str> {
        req.headers().get(name).and_then(|v| v.to_str().ok())
    }

    async fn serve_blob(
        self: &Arc<Self>,
        req: &Request<Incoming>,
        origin: &str,
        remote: std::net::SocketAddr,
    ) -> Response<Body> {
        Metrics::add(&self.metrics.requests, 1);
        let o = match Origin::parse(origin) {
            Ok(o) => o,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        if let Err(r) = self.allowed_registry(&o) {
            return refusal(&r);
        }
        // A child (upload limits, no read-ahead): a request naming its node, or any request
        // from another host. Limits are per child: its address, or on a shared loopback (tests,
        // several nodes on one host) the node it names.
        let named = Self::header(req, NODE_HEADER);
        let peer = match (named, remote.ip().is_loopback()) {
            (Some(n), true) => Some(n.chars().take(256).collect::<String>()),
            (_, false) => Some(remote.ip().to_string()),
            (None, true) => None,
        };
        let path = Self::header(req, PATH_HEADER)
            .unwrap_or("")
            .chars()
            .take(4096)
            .collect::<String>();
        {
            let p = &path;
            if p.split(',').any(|n| n.trim() == self.cfg.advertise) {
                Metrics::add(&self.metrics.loops, 1);
                return text(
                    StatusCode::LOOP_DETECTED,
                    "this request already passed through this node",
                );
            }
        }
        let auth = Self::header(req, AUTHORIZATION).map(str::to_string);
        // A child of ours shows no credentials, only who it is (dadi-p2proxy's children, and
        // overlaybd talking to us, send the registry's).
        let size = match (&auth, named) {
            (None, Some(node)) => self.authorize_peer(&o, node, remote).await,
            _ => self.authorize(&o, auth.as_deref()).await,
        };
        let size = match size {
            Ok(s) => s,
            Err(r) => {
                Metrics::add(&self.metrics.access_denied, 1);
                return refusal(&r);
            }
        };
        if auth.is_some() && named.is_some() {
            Metrics::add(&self.metrics.peer_credentials, 1);
        }
        if auth.is_some() && named.is_none() && remote.ip().is_loopback() {
            // The local reader's credentials: what this node uses upstream for this blob.
            lock(&self.fetch_auth).insert(o.key(), auth.clone());
        }
        let range = match parse_range(Self::header(req, RANGE), size) {
            Ok(r) => r,
            Err(()) => {
                let mut r = text(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "bad or unsatisfiable Range",
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(CONTENT_RANGE, v);
                }
                return r;
            }
        };
        let (start, end) = range.unwrap_or((0, size));
        let head = req.method() == Method::HEAD;
        let body: Body = if head || start == end {
            Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
        } else {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let me = self.clone();
            tokio::spawn(async move { me.stream(o, start, end, size, auth, peer, path, tx).await });
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
        };
        let mut resp = Response::new(body);
        let h = resp.headers_mut();
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(CONTENT_LENGTH, HeaderValue::from(end - start));
        if let Ok(v) = HeaderValue::from_str(&self.cfg.advertise) {
            h.insert(SOURCE_HEADER, v);
        }
        if range.is_some() {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
                h.insert(CONTENT_RANGE, v);
            }
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        resp
    }

    /// Sends `[start, end)` from the pieces as they arrive.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        self: Arc<Self>,
        o: Origin,
        start: u64,
        end: u64,
        size: u64,
        auth: Option<String>,
        peer: Option<String>,
        path: String,
        tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    ) {
        let ps = self.cfg.piece_size;
        let child_bucket = match (&peer, self.cfg.upload.per_child_bytes_per_sec) {
            (Some(p), r) if r > 0 => {
                let mut m = lock(&self.per_child);
                if m.len() > 4096 {
                    m.retain(|_, b| Arc::strong_count(b) > 1);
                }
                Some(
                    m.entry(p.clone())
                        .or_insert_with(|| Arc::new(Bucket::new(r)))
                        .clone(),
                )
            }
            _ => None,
        };
        let mut pos = start;
        while pos < end {
            let idx = pos / ps;
            let piece = self.piece(&o, idx, size, &auth, &path);
            // Read ahead for the local reader only: children ask for what they need, and a
            // read-ahead at every level of the tree would multiply.
            let ahead = if peer.is_none() {
                self.cfg.prefetch_pieces
            } else {
                0
            };
            for k in 1..=ahead {
                if (idx + k).saturating_mul(ps) < size {
                    self.piece(&o, idx + k, size, &auth, &path);
                }
            }
            let base = idx * ps;
            let piece_end = end.min(base + piece.len as u64);
            while pos < piece_end {
                let want = ((piece_end - pos) as usize).min(256 << 10);
                let chunk = match piece.read((pos - base) as usize, want).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e))).await;
                        return;
                    }
                };
                let n = chunk.len();
                let chunk = if peer.is_some() && self.cfg.debug.corrupt_uploads {
                    let mut v = chunk.to_vec();
                    for (i, b) in v.iter_mut().enumerate() {
                        if (pos + i as u64) % 4096 == 100 {
                            *b ^= 0x5a;
                        }
                    }
                    Bytes::from(v)
                } else {
                    chunk
                };
                if peer.is_some() {
                    if let Some(g) = &self.global {
                        g.take(n).await;
                    }
                    if let Some(c) = &child_bucket {
                        c.take(n).await;
                    }
                    Metrics::add(&self.metrics.served_child, n as u64);
                } else {
                    Metrics::add(&self.metrics.served_client, n as u64);
                }
                pos += n as u64;
                if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                    return;
                }
            }
        }
    }

    /// `DELETE` with `Range`: those bytes failed the reader's verification.
    async fn bad_range(self: &Arc<Self>, req: &Request<Incoming>, origin: &str) -> Response<Body> {
        let o = match Origin::parse(origin) {
            Ok(o) => o,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let auth = Self::header(req, AUTHORIZATION).map(str::to_string);
        let size = match self.authorize(&o, auth.as_deref()).await {
            Ok(s) => s,
            Err(r) => return refusal(&r),
        };
        let Ok(Some((start, end))) = parse_range(Self::header(req, RANGE), size) else {
            return text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "DELETE needs a satisfiable Range",
            );
        };
        Metrics::add(&self.metrics.verification_failures, 1);
        let key = o.key();
        let ps = self.cfg.piece_size;
        let mut sources = HashSet::new();
        for p in self.store.remove_range(&key, start / ps, (end - 1) / ps) {
            for s in p.source().split(',') {
                if s.starts_with("http") {
                    sources.insert(s.to_string());
                }
            }
        }
        // Everything else that node sent is suspect too: fetch it again from another.
        let mut dropped = 0;
        for s in &sources {
            dropped += self.store.remove_from(&key, s);
        }
        lock(&self.checked).remove(&key);
        info!(blob = %key, start, end, ?sources, dropped, "a reader found bad bytes");
        let up = self.upstream(&key);
        for s in &sources {
            Metrics::add(&self.metrics.reports, 1);
            let body = serde_json::to_vec(&ReportRequest {
                url: o.url.clone(),
                node: s.clone(),
            })
            .unwrap_or_default();
            for root in self.roots_for(&key) {
                if &root == s {
                    continue;
                }
                let mut r = self
                    .http
                    .post(format!("{root}/_p2p/v1/report"))
                    .timeout(Duration::from_millis(self.cfg.stall_timeout_ms))
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if let Some(a) = &auth {
                    r = r.header(AUTHORIZATION, a);
                }
                if r.send().await.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
            }
            if matches!(&up, Upstream::Node { url, .. } if url == s) {
                self.failover(&o, &up, auth.as_deref()).await;
            }
        }
        text(StatusCode::NO_CONTENT, "")
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        req: Request<Incoming>,
    ) -> Result<(T, Option<String>), Response<Body>> {
        let auth = Self::header(&req, AUTHORIZATION).map(str::to_string);
        let body = Limited::new(req.into_body(), 64 << 10)
            .collect()
            .await
            .map_err(|e| text(StatusCode::BAD_REQUEST, format!("body: {e}")))?
            .to_bytes();
        let v = serde_json::from_slice(&body)
            .map_err(|e| text(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
        Ok((v, auth))
    }

    fn node_url_ok(u: &str) -> bool {
        u.len() < 256
            && (u.starts_with("http://") || u.starts_with("https://"))
            && !u.contains([',', ' ', '\n', '\r'])
    }

    /// A node asks where to fetch a blob from.
    async fn on_join(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if self.cfg.role != Role::Root {
            return text(StatusCode::NOT_FOUND, "not a root");
        }
        let (j, auth): (JoinRequest, _) = match Self::read_json(req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let o = match Origin::parse(&j.url) {
            Ok(o) => o,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        if !Self::node_url_ok(&j.node) || j.failed.as_deref().is_some_and(|f| !Self::node_url_ok(f))
        {
            return text(StatusCode::BAD_REQUEST, "node: expected an http(s) URL");
        }
        if let Err(r) = self.allowed_registry(&o) {
            return refusal(&r);
        }
        let size = match self.authorize(&o, auth.as_deref()).await {
            Ok(s) => s,
            Err(r) => return refusal(&r),
        };
        Metrics::add(&self.metrics.joins, 1);
        self.vouch_for(&o, &j.node);
        lock(&self.fetch_auth).insert(o.key(), auth.clone());
        let (parent, depth) = {
            let mut trees = lock(&self.trees);
            let now = Instant::now();
            {
                // Drop empty trees now and then, not on every join.
                let mut swept = lock(&self.trees_swept);
                if now.saturating_duration_since(*swept) >= Duration::from_secs(1) {
                    *swept = now;
                    trees.retain(|_, t| {
                        t.expire(now);
                        !t.is_empty()
                    });
                }
            }
            self.tree(&mut trees, &o)
                .join(&j.node, j.failed.as_deref(), now)
        };
        debug!(blob = %o.key(), node = j.node, ?parent, depth, "join");
        json(&JoinReply {
            size,
            parent,
            depth,
        })
    }

    /// The tree of `o` (a new one if none).
    fn tree<'a>(&self, trees: &'a mut HashMap<String, Tree>, o: &Origin) -> &'a mut Tree {
        trees.entry(o.key()).or_insert_with(|| {
            Tree::new(self.cfg.fanout, Duration::from_secs(self.cfg.tree_ttl_secs))
        })
    }

    /// Records that `node` proved access to `o` (at join).
    fn vouch_for(&self, o: &Origin, node: &str) {
        let until = Instant::now() + Duration::from_secs(self.cfg.access_ttl_secs);
        let mut j = lock(&self.joined);
        if j.len() > 200_000 {
            let now = Instant::now();
            j.retain(|_, t| *t > now);
        }
        j.insert((o.key(), o.repository.clone(), node.to_string()), until);
    }

    fn vouched(&self, o: &Origin, node: &str) -> bool {
        lock(&self.joined)
            .get(&(o.key(), o.repository.clone(), node.to_string()))
            .is_some_and(|t| *t > Instant::now())
    }

    /// A parent asks whether `node` proved access to the blob (roots): `{size}` or 403.
    async fn on_vouch(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if self.cfg.role != Role::Root {
            return text(StatusCode::NOT_FOUND, "not a root");
        }
        let (v, _): (ReportRequest, _) = match Self::read_json(req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let o = match Origin::parse(&v.url) {
            Ok(o) => o,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let size = lock(&self.blobs).get(&o.key()).map(|b| b.size);
        match size {
            Some(size) if self.vouched(&o, &v.node) => json(&JoinReply {
                size,
                parent: None,
                depth: 0,
            }),
            _ => text(
                StatusCode::FORBIDDEN,
                format!("{} has not shown access to {}", v.node, o.url),
            ),
        }
    }

    /// Whether the child `node` (asking from `remote`) may read `o`: it must ask from its
    /// own address, and the owning root must have seen it pass the access check at join.
    async fn authorize_peer(
        &self,
        o: &Origin,
        node: &str,
        remote: std::net::SocketAddr,
    ) -> Result<u64, Refusal> {
        let denied = |why: String| Err(Refusal::new(StatusCode::FORBIDDEN, why));
        let host = node
            .split_once("://")
            .map(|(_, r)| r)
            .and_then(|r| r.rsplit_once(':').map(|(h, _)| h))
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let ip = remote.ip();
        let same = host.parse::<std::net::IpAddr>().is_ok_and(|h| h == ip)
            || (ip.is_loopback() && host == "localhost");
        if !same {
            return denied(format!("{node} asked from {ip}"));
        }
        let akey = (
            o.key(),
            o.repository.clone(),
            Holder::Node(node.to_string()),
        );
        let known = lock(&self.blobs).get(&o.key()).map(|b| b.size);
        if let Some(size) = known {
            let ok = lock(&self.access)
                .get(&akey)
                .is_some_and(|t| *t > Instant::now());
            if ok || (self.cfg.role == Role::Root && self.vouched(o, node)) {
                return Ok(size);
            }
        }
        Metrics::add(&self.metrics.access_checks, 1);
        let body = serde_json::to_vec(&ReportRequest {
            url: o.url.clone(),
            node: node.to_string(),
        })
        .unwrap_or_default();
        for root in self.roots_for(&o.key()) {
            if root == self.cfg.advertise {
                continue;
            }
            let resp = self
                .http
                .post(format!("{root}/_p2p/v1/vouch"))
                .timeout(Duration::from_millis(self.cfg.stall_timeout_ms))
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let Ok(resp) = resp else { continue };
            if !resp.status().is_success() {
                // Another root may hold the tree after a failover.
                continue;
            }
            let Ok(reply) = resp.json::<JoinReply>().await else {
                continue;
            };
            if reply.size > MAX_BLOB {
                continue;
            }
            let until = Instant::now() + Duration::from_secs(self.cfg.access_ttl_secs);
            lock(&self.access).insert(akey, until);
            lock(&self.blobs).entry(o.key()).or_insert(BlobState {
                size: reply.size,
                upstream: Upstream::Registry,
                depth: 0,
            });
            return Ok(reply.size);
        }
        denied(format!("no root vouches for {node} reading {}", o.url))
    }

    async fn on_report(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if self.cfg.role != Role::Root {
            return text(StatusCode::NOT_FOUND, "not a root");
        }
        let (r, auth): (ReportRequest, _) = match Self::read_json(req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let o = match Origin::parse(&r.url) {
            Ok(o) => o,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        if !Self::node_url_ok(&r.node) {
            return text(StatusCode::BAD_REQUEST, "node: expected an http(s) URL");
        }
        // Only a reader that may read the blob may report its servers.
        if let Err(e) = self.authorize(&o, auth.as_deref()).await {
            return refusal(&e);
        }
        Metrics::add(&self.metrics.reports, 1);
        warn!(blob = %o.key(), node = r.node, "reported for serving bad bytes: avoided");
        self.tree(&mut lock(&self.trees), &o)
            .avoid(&r.node, Instant::now());
        text(StatusCode::NO_CONTENT, "")
    }
}

/// Fails and drops a piece whose filling did not finish.
struct FillGuard {
    node: Arc<Node>,
    key: String,
    idx: u64,
    piece: Arc<Piece>,
    done: bool,
    why: String,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if !self.done {
            self.node
                .store
                .remove_if_same(&self.key, self.idx, &self.piece);
            self.piece.fail(std::mem::take(&mut self.why));
        }
    }
}

/// Accepts connections until the listener fails.
pub async fn serve(node: Arc<Node>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    // Bounded connections, each with a deadline for its request headers: idle or slow
    // clients cannot use up the file descriptors.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait and go on.
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| node.clone().handle(req, remote));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                debug!("connection: {e}");
            }
            drop(permit);
        });
    }
}

/// Connections served at once.
const MAX_CONNECTIONS: usize = 8192;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let o = Origin::parse(&format!(
            "http://127.0.0.1:5000/v2/library/busybox/blobs/{d}"
        ))
        .unwrap();
        assert_eq!(o.authority, "127.0.0.1:5000");
        assert_eq!(o.repository, "library/busybox");
        assert_eq!(o.key(), format!("http://127.0.0.1:5000/{d}"));
        for bad in [
            format!("ftp://h/v2/r/blobs/{d}"),
            format!("http://h/v2/r/manifests/{d}"),
            format!("http://h/v2/r/blobs/{d}?x=1"),
            format!("http://h/v2/../blobs/{d}"),
            format!("http://u@h/v2/r/blobs/{d}"),
            "http://h/v2/r/blobs/sha256:abc".to_string(),
            format!("http://h/v2/R/blobs/{d}"),
            format!("http://h/v2/r/blobs/{}", d.to_uppercase()),
            "http://h".to_string(),
        ] {
            assert!(Origin::parse(&bad).is_err(), "{bad}");
        }
    }

    /// At most `max_fills` pieces are fetched at once; the others wait, and the gauges say so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fills_are_bounded() {
        // A registry that accepts connections and never answers.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in l.incoming() {
                held.push(c);
            }
        });
        let n = Node::new(Config {
            role: Role::Root,
            piece_size: 64 << 10,
            max_fills: 2,
            ..Config::default()
        })
        .unwrap();
        let d = format!("sha256:{}", "ab".repeat(32));
        let o = Origin::parse(&format!("http://{addr}/v2/r/blobs/{d}")).unwrap();
        let pieces: Vec<_> = (0..5)
            .map(|i| n.piece(&o, i, 10 << 20, &None, ""))
            .collect();
        let t = Instant::now();
        let gauges = || {
            let g = n.gauges();
            (g.fills_running, g.fills_waiting)
        };
        while gauges() != (2, 3) && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(gauges(), (2, 3));
        assert!(pieces.iter().all(|p| p.filled() == 0));
        let m = n.metrics.render(&n.gauges());
        assert!(m.contains("p2p_fills{state=\"waiting\"} 3"), "{m}");
    }

    /// A blob is checked once when its last pieces complete together, and again only when
    /// a piece is replaced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn whole_blob_checked_once_per_set_of_pieces() {
        let n = Node::new(Config {
            piece_size: 4,
            ..Config::default()
        })
        .unwrap();
        let blob = b"0123456789";
        let d = format!("sha256:{}", hex::encode(Sha256::digest(blob)));
        let o = Origin::parse(&format!("http://127.0.0.1:1/v2/r/blobs/{d}")).unwrap();
        let key = o.key();
        let fill = |idx: u64| {
            let part = &blob[idx as usize * 4..blob.len().min(idx as usize * 4 + 4)];
            match n.store.get_or_start(&key, idx, part.len()) {
                Lookup::Started(p) => assert!(p.append(part)),
                Lookup::Hit(_) => panic!("piece {idx} is already there"),
            }
        };
        let checks = |want: u64| {
            let t = Instant::now();
            while n.metrics.digest_checks.load(Ordering::Relaxed) < want
                && t.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(n.metrics.digest_checks.load(Ordering::Relaxed), want);
            assert!(!matches!(lock(&n.checked).get(&key), Some(Check::Running)));
        };
        fill(0);
        n.check_whole(&o, 10);
        fill(1);
        fill(2);
        // The tasks of pieces 1 and 2 both see the blob complete, while the check runs and
        // after it has passed.
        n.check_whole(&o, 10);
        n.check_whole(&o, 10);
        checks(1);
        n.check_whole(&o, 10);
        checks(1);
        assert!(n.store.remove(&key, 1).is_some());
        fill(1);
        n.check_whole(&o, 10);
        checks(2);
        assert_eq!(n.metrics.digest_failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Ok(Some((0, 4))));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some((5, 10))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 10))));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ok(Some((8, 10))));
        for bad in [
            "bytes=10-11",
            "bytes=3-2",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=-0",
            "bytes=x-1",
        ] {
            assert_eq!(parse_range(Some(bad), 10), Err(()), "{bad}");
        }
    }
}
