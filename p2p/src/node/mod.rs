//! A node of the tree: the HTTP server (overlaybd's `/<api-key>/<origin URL>` range requests,
//! the tree protocol between nodes, `/metrics`) and the fetching of pieces from upstream.
//!
//! Requests:
//! - `GET|HEAD /<api-key>/<scheme>://<registry>/v2/<repository>/blobs/<digest>` with `Range`
//!   and the registry's `Authorization`, from overlaybd (ours or the C++ one) or from a child
//!   node (which adds `X-P2P-Node: <its URL>` and `X-P2P-Path: <nodes the request went
//!   through>`). The credentials are checked first (see `access`), then the range is
//!   streamed from the pieces, each fetched once from upstream.
//! - `DELETE` of the same URL with `Range`: the reader found bytes of that range bad. The
//!   pieces are dropped, and the node that served them is reported to the owning root and
//!   left.
//! - `POST /_p2p/v1/join` (roots): `{url, node, failed}` with the reader's `Authorization`:
//!   checks access and answers `{size, parent, depth}` from the blob's [`Tree`].
//! - `POST /_p2p/v1/vouch` (roots): `{url, node}`: did `node` pass the access check at join?
//! - `POST /_p2p/v1/report` (roots): `{url, node}`: `node` served bad bytes.
//! - `GET /_p2p/v1/trees` (roots): the trees' shapes as JSON; `GET /metrics`; `GET /healthz`.
//!
//! The modules, one concern each: `http` (accepting, routing, answers, and the HTTP status
//! of every [`Error`]), `origin` (the blob URL and `Range` of a request), `blob` (blob
//! `GET`/`HEAD`/`DELETE`), `access` (access checks, vouching), `tree` (join, report, the
//! trees), `fetch` (pieces filled from upstream with failover), `digest` (whole-blob SHA-256
//! checks).

mod access;
mod blob;
mod digest;
mod fetch;
mod http;
mod origin;
pub mod peer;
mod tree;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::limit::Bucket;
use crate::metrics::{Gauges, Metrics};
use crate::store::Store;
use crate::topology::Tree;

pub use http::serve;
pub use origin::{parse_range, Origin};
pub use tree::{JoinReply, JoinRequest, ReportRequest, TreeView};

use access::AccessKey;
use digest::Check;

pub const NODE_HEADER: &str = "x-p2p-node";
pub const PATH_HEADER: &str = "x-p2p-path";
pub const SOURCE_HEADER: &str = "x-p2p-source";

/// Blobs larger than this are refused (a registry's size is untrusted input).
pub const MAX_BLOB: u64 = 1 << 48;

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
    /// An agent reading the registry because no root answered: when to ask the roots again
    /// (a root back from a restart takes its readers back).
    rejoin_at: Option<Instant>,
    /// A fill is asking the roots again (the others wait for its answer).
    rejoining: bool,
}

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
    fills_waiting: AtomicU64,
    global: Option<Bucket>,
    per_child: Mutex<HashMap<String, Arc<Bucket>>>,
    /// Signs and checks peer requests when the deployment has a secret.
    signer: Option<peer::Signer>,
    /// Held by the fill that asks the roots again for a blob read from the registry.
    rejoining: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    pub fn new(cfg: Config) -> Result<Arc<Node>> {
        if cfg.peer_secret_file.is_some() && cfg.peer_secret.is_none() {
            return Err(Error::Config(
                "peer_secret_file is set but not read (Config::finish reads it)".into(),
            ));
        }
        let store = Store::new(cfg.cache.max_bytes, cfg.cache.dir.clone())?;
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("overlaybd-p2p/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(32);
        if let Some(ca) = &cfg.registry_ca {
            let pem = std::fs::read(ca).map_err(|e| Error::io("read registry_ca", ca, e))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Error::Config(format!(
                    "registry_ca {}: not a PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            b = b.add_root_certificate(cert);
        }
        let global = (cfg.upload.global_bytes_per_sec > 0)
            .then(|| Bucket::new(cfg.upload.global_bytes_per_sec));
        Ok(Arc::new(Node {
            store,
            http: b.build().map_err(|e| Error::Client(e.to_string()))?,
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
            signer: cfg.peer_secret.clone().map(|s| peer::Signer::new(s.0)),
            rejoining: tokio::sync::Mutex::new(()),
            cfg,
        }))
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

    /// A request to another node, as this node: `X-P2P-Node`, and the signature when the
    /// deployment has a secret. `path` is the request's path (no host), `body` its body.
    fn as_peer(
        &self,
        req: reqwest::RequestBuilder,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> reqwest::RequestBuilder {
        let req = req.header(NODE_HEADER, &self.cfg.advertise);
        match &self.signer {
            Some(s) => req.header(
                peer::SIGNATURE_HEADER,
                s.sign(method, path, &self.cfg.advertise, body),
            ),
            None => req,
        }
    }

    /// A tree protocol POST of the JSON `body` to `path` (`/_p2p/v1/…`) at `root`, as this
    /// node ([`Node::as_peer`]), bounded by `stall_timeout_ms`.
    fn post_to_root(&self, root: &str, path: &str, body: &[u8]) -> reqwest::RequestBuilder {
        let req = self
            .http
            .post(format!("{root}{path}"))
            .timeout(Duration::from_millis(self.cfg.stall_timeout_ms))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        self.as_peer(req, "POST", path, body)
    }

    /// Checks a request from another node against the deployment's secret (nothing to check
    /// without one); a refusal is counted.
    fn check_peer(
        &self,
        signature: Option<&str>,
        method: &str,
        path: &str,
        node: Option<&str>,
        body: &[u8],
    ) -> Result<()> {
        let Some(s) = &self.signer else {
            return Ok(());
        };
        s.verify(signature, method, path, node, body)
            .inspect_err(|e| {
                Metrics::add(&self.metrics.peer_refused, 1);
                // Anyone who reaches the port can cause this: counted, logged at debug level.
                tracing::debug!("{e}");
            })
    }

    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.gauges())
    }
}
