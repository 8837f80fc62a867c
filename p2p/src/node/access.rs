//! Who may read a blob. A request with credentials is checked against the registry (a `HEAD`
//! of the blob with them, asked by the owning root, or by this node when no root answers); a
//! child without credentials must ask from its own address and be vouched for by the owning
//! root (it passed that check at join). Answers are kept `access_ttl_secs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use hyper::{Request, Response};
use sha2::{Digest, Sha256};

use super::http::{json, read_peer_json, Body};
use super::{lock, BlobState, JoinReply, Node, Origin, ReportRequest, Upstream, MAX_BLOB};
use crate::config::Role;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Who an access check was for: the holder of some credentials, or a child node the owning
/// root vouched for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Holder {
    /// SHA-256 of the `Authorization` header.
    Credentials([u8; 32]),
    Node(String),
}

/// (blob key, repository, holder).
pub(super) type AccessKey = (String, String, Holder);

fn auth_hash(auth: Option<&str>) -> [u8; 32] {
    Sha256::digest(auth.unwrap_or("").as_bytes()).into()
}

/// An upstream's `WWW-Authenticate`.
pub(super) fn challenge(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Node {
    pub(super) fn allowed_registry(&self, o: &Origin) -> Result<()> {
        if self.cfg.registries.is_empty() || self.cfg.registries.iter().any(|r| r == &o.authority) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "registry {} is not in this node's `registries`",
                o.authority
            )))
        }
    }

    /// Whether `auth` may read `o`, asked of the registry (a HEAD with those credentials) by
    /// the owning root, or by this node when no root answers; the answer is kept
    /// `access_ttl_secs`. Returns the blob's size.
    pub(super) async fn authorize(&self, o: &Origin, auth: Option<&str>) -> Result<u64> {
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
                    rejoin_at: None,
                    rejoining: false,
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
    pub(super) async fn registry_head(&self, o: &Origin, auth: Option<&str>) -> Result<u64> {
        let registry = || format!("registry {}", o.authority);
        let mut req = self
            .http
            .head(&o.url)
            .timeout(Duration::from_millis(self.cfg.stall_timeout_ms));
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::upstream(registry(), e))?;
        let st = resp.status();
        if st.is_success() {
            return resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .filter(|&n| n <= MAX_BLOB)
                .ok_or_else(|| {
                    Error::upstream(
                        registry(),
                        format!("HEAD {} without a Content-Length (or over 256 TiB)", o.url),
                    )
                });
        }
        Err(Error::Refused {
            status: st.as_u16(),
            challenge: challenge(&resp),
            message: format!("registry {} answered {st} for {}", o.authority, o.url),
        })
    }

    /// Records that `node` proved access to `o` (at join).
    pub(super) fn vouch_for(&self, o: &Origin, node: &str) {
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
    pub(super) async fn on_vouch(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>> {
        self.root_only("/_p2p/v1/vouch")?;
        let (v, _, _): (ReportRequest, _, _) = read_peer_json(self, req).await?;
        let o = Origin::parse(&v.url)?;
        let size = lock(&self.blobs).get(&o.key()).map(|b| b.size);
        match size {
            Some(size) if self.vouched(&o, &v.node) => Ok(json(&JoinReply {
                size,
                parent: None,
                depth: 0,
            })),
            _ => Err(Error::Forbidden(format!(
                "{} has not shown access to {}",
                v.node, o.url
            ))),
        }
    }

    /// Whether the child `node` (asking from `remote`) may read `o`: it must ask from its
    /// own address, and the owning root must have seen it pass the access check at join.
    pub(super) async fn authorize_peer(
        &self,
        o: &Origin,
        node: &str,
        remote: SocketAddr,
    ) -> Result<u64> {
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
            return Err(Error::Forbidden(format!("{node} asked from {ip}")));
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
        let size = self.ask_vouch(o, node).await.ok_or_else(|| {
            Error::Forbidden(format!("no root vouches for {node} reading {}", o.url))
        })?;
        let until = Instant::now() + Duration::from_secs(self.cfg.access_ttl_secs);
        lock(&self.access).insert(akey, until);
        lock(&self.blobs).entry(o.key()).or_insert(BlobState {
            size,
            upstream: Upstream::Registry,
            depth: 0,
            // An agent asked about a blob it never joined: it asks the roots at its first fill.
            rejoin_at: (self.cfg.role == Role::Agent && !self.cfg.roots.is_empty())
                .then(Instant::now),
            rejoining: false,
        });
        Ok(size)
    }

    /// Asks the roots, owner first, whether `node` passed the access check for `o`; the
    /// blob's size if one vouches.
    async fn ask_vouch(&self, o: &Origin, node: &str) -> Option<u64> {
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
                .post_to_root(&root, "/_p2p/v1/vouch", &body)
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
            return Some(reply.size);
        }
        None
    }
}
