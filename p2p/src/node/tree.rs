//! The tree protocol between nodes: which roots to ask (owner first, roots that did not
//! answer last), joining a blob's tree (agents ask, roots answer from the blob's [`Tree`]),
//! reporting a node that served bad bytes, and the wire types of these requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::access::challenge;
use super::http::{json, read_peer_json, text, Body};
use super::{lock, BlobState, Node, Origin, Upstream, MAX_BLOB};
use crate::config::Role;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::topology::{rendezvous, Shape, Tree};

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

/// A node's URL as the protocol carries it (in joins, reports, `X-P2P-Path`).
fn node_url_ok(u: &str) -> bool {
    u.len() < 256
        && (u.starts_with("http://") || u.starts_with("https://"))
        && !u.contains([',', ' ', '\n', '\r'])
}

/// How long a root that did not answer is asked last, and an agent that read the registry for
/// want of a root waits before asking the roots again.
pub(super) const ROOT_DOWN_FOR: Duration = Duration::from_secs(10);

fn check_node_url(what: &'static str, u: &str) -> Result<()> {
    if node_url_ok(u) {
        Ok(())
    } else {
        Err(Error::bad_request(
            what,
            "expected an http(s) URL (under 256 bytes, no ',' or spaces)",
        ))
    }
}

impl Node {
    /// The roots to ask about blob `key`: the owner first; roots recently down last.
    pub(super) fn roots_for(&self, key: &str) -> Vec<String> {
        let order = rendezvous(key, &self.cfg.roots);
        let now = Instant::now();
        let down = lock(&self.down);
        let (up, dn): (Vec<&str>, Vec<&str>) = order
            .into_iter()
            .partition(|r| down.get(*r).is_none_or(|t| *t <= now));
        // Roots recently down are tried last, not never.
        up.into_iter().chain(dn).map(str::to_string).collect()
    }

    pub(super) fn mark_down(&self, root: &str) {
        lock(&self.down).insert(root.to_string(), Instant::now() + ROOT_DOWN_FOR);
    }

    pub(super) fn root_only(&self, endpoint: &str) -> Result<()> {
        if self.cfg.role == Role::Root {
            Ok(())
        } else {
            Err(Error::NotFound(format!("{endpoint}: not a root")))
        }
    }

    /// Asks the owning root (then the next ones) where to fetch `o` from; with no root
    /// answering, this node reads the registry itself. Returns the blob's size.
    pub(super) async fn join(
        &self,
        o: &Origin,
        auth: Option<&str>,
        failed: Option<&str>,
    ) -> Result<u64> {
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
            let mut req = self.post_to_root(&root, "/_p2p/v1/join", &body);
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
                let Some(reply) = self.join_reply(&root, resp).await else {
                    continue;
                };
                let upstream = Upstream::Node {
                    url: reply.parent.clone().unwrap_or_else(|| root.clone()),
                    root: root.clone(),
                };
                debug!(blob = %key, ?upstream, depth = reply.depth, "joined");
                let state = BlobState {
                    size: reply.size,
                    upstream,
                    depth: reply.depth,
                    rejoin_at: None,
                    rejoining: false,
                };
                lock(&self.blobs).insert(key, state);
                return Ok(reply.size);
            }
            let www = challenge(&resp);
            let msg = resp.text().await.unwrap_or_default();
            if matches!(st.as_u16(), 401 | 403 | 404) {
                return Err(Error::Refused {
                    status: st.as_u16(),
                    challenge: www,
                    message: msg.trim().to_string(),
                });
            }
            // The root answered but could not serve (its registry failed, say): every agent
            // reading the registry itself would be a stampede. Pass the failure on.
            warn!(root, "join: {st}: {}", msg.trim());
            return Err(Error::upstream(
                format!("root {root}"),
                format!("{st}: {}", msg.trim()),
            ));
        }
        // No root: the registry itself.
        let size = self.registry_head(o, auth).await?;
        warn!(blob = %key, "no root answered: reading the registry directly");
        let state = BlobState {
            size,
            upstream: Upstream::Registry,
            depth: 0,
            rejoin_at: (!self.cfg.roots.is_empty()).then(|| Instant::now() + ROOT_DOWN_FOR),
            rejoining: false,
        };
        lock(&self.blobs).insert(key, state);
        Ok(size)
    }

    /// A root's answer to a join, if usable; a root that answers nonsense is skipped as if
    /// it were down.
    async fn join_reply(&self, root: &str, resp: reqwest::Response) -> Option<JoinReply> {
        match resp.json::<JoinReply>().await {
            Ok(j) if j.size <= MAX_BLOB && j.parent.as_deref().is_none_or(node_url_ok) => Some(j),
            Ok(j) => {
                warn!(root, "join: bad answer: {j:?}");
                self.mark_down(root);
                None
            }
            Err(e) => {
                warn!(root, "join: bad answer: {e}");
                self.mark_down(root);
                None
            }
        }
    }

    /// Reports `node` as having served bad bytes of `o` to the first root (owner first, not
    /// `node` itself) that takes the report; best effort.
    pub(super) async fn report(&self, o: &Origin, node: &str, auth: Option<&str>) {
        Metrics::add(&self.metrics.reports, 1);
        let body = serde_json::to_vec(&ReportRequest {
            url: o.url.clone(),
            node: node.to_string(),
        })
        .unwrap_or_default();
        for root in self.roots_for(&o.key()) {
            if root == node {
                continue;
            }
            let mut r = self.post_to_root(&root, "/_p2p/v1/report", &body);
            if let Some(a) = auth {
                r = r.header(AUTHORIZATION, a);
            }
            if r.send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
        }
    }

    /// A node asks where to fetch a blob from.
    pub(super) async fn on_join(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>> {
        self.root_only("/_p2p/v1/join")?;
        let (j, auth, from): (JoinRequest, _, _) = read_peer_json(self, req).await?;
        let o = Origin::parse(&j.url)?;
        check_node_url("node", &j.node)?;
        // A signed join speaks for the node that signed it only.
        if self.signer.is_some() && from.as_deref() != Some(j.node.as_str()) {
            return Err(Error::Forbidden(format!(
                "a join for {} signed by {}",
                j.node,
                from.as_deref().unwrap_or("nobody")
            )));
        }
        if let Some(f) = &j.failed {
            check_node_url("failed", f)?;
        }
        self.allowed_registry(&o)?;
        let size = self.authorize(&o, auth.as_deref()).await?;
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
        Ok(json(&JoinReply {
            size,
            parent,
            depth,
        }))
    }

    /// A reader's node reports `node` for serving bad bytes (roots): it is avoided as a
    /// parent from now on.
    pub(super) async fn on_report(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>> {
        self.root_only("/_p2p/v1/report")?;
        let (r, auth, _): (ReportRequest, _, _) = read_peer_json(self, req).await?;
        let o = Origin::parse(&r.url)?;
        check_node_url("node", &r.node)?;
        // Only a reader that may read the blob may report its servers.
        self.authorize(&o, auth.as_deref()).await?;
        Metrics::add(&self.metrics.reports, 1);
        warn!(blob = %o.key(), node = r.node, "reported for serving bad bytes: avoided");
        self.tree(&mut lock(&self.trees), &o)
            .avoid(&r.node, Instant::now());
        Ok(text(StatusCode::NO_CONTENT, ""))
    }

    /// The tree of `o` (a new one if none).
    fn tree<'a>(&self, trees: &'a mut HashMap<String, Tree>, o: &Origin) -> &'a mut Tree {
        trees.entry(o.key()).or_insert_with(|| {
            Tree::new(self.cfg.fanout, Duration::from_secs(self.cfg.tree_ttl_secs))
        })
    }
}
