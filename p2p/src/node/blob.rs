//! Blob requests: `GET`/`HEAD` of a range (access checked, then streamed from the pieces
//! while they arrive, with upload limits for children) and `DELETE` of a range that failed
//! the reader's verification.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, RANGE,
};
use hyper::{Method, Request, Response, StatusCode};
use tracing::info;

use super::http::{header, text, Body};
use super::peer::SIGNATURE_HEADER;
use super::{lock, Node, Origin, Upstream, NODE_HEADER, PATH_HEADER, SOURCE_HEADER};
use crate::error::{Error, Result};
use crate::limit::Bucket;
use crate::metrics::Metrics;
use crate::node::parse_range;

type Sender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// What a blob read streams: `[start, end)` of `o` (`size` bytes), for whom.
struct Read {
    o: Origin,
    start: u64,
    end: u64,
    size: u64,
    /// The credentials the pieces may be fetched with (the local reader's).
    auth: Option<String>,
    /// A child (upload limits, no read-ahead): the node it names, or its address.
    peer: Option<String>,
    /// `X-P2P-Path`: the nodes the request went through.
    path: String,
}

impl Node {
    /// `GET` or `HEAD` of a blob range.
    pub(super) async fn serve_blob(
        self: &Arc<Self>,
        req: &Request<Incoming>,
        origin: &str,
        remote: SocketAddr,
    ) -> Result<Response<Body>> {
        Metrics::add(&self.metrics.requests, 1);
        let o = Origin::parse(origin)?;
        self.allowed_registry(&o)?;
        // A child (upload limits, no read-ahead): a request naming its node, or any request
        // from another host. Limits are per child: its address, or on a shared loopback (tests,
        // several nodes on one host) the node it names.
        let named = header(req, NODE_HEADER);
        if named.is_some() {
            // A child of ours: signed with the deployment's secret, when it has one.
            self.check_peer(header(req, SIGNATURE_HEADER), "GET", &o.url, named, b"")?;
        }
        let peer = match (named, remote.ip().is_loopback()) {
            (Some(n), true) => Some(n.chars().take(256).collect::<String>()),
            (_, false) => Some(remote.ip().to_string()),
            (None, true) => None,
        };
        let path = header(req, PATH_HEADER)
            .unwrap_or("")
            .chars()
            .take(4096)
            .collect::<String>();
        if path.split(',').any(|n| n.trim() == self.cfg.advertise) {
            Metrics::add(&self.metrics.loops, 1);
            return Err(Error::Loop {
                node: self.cfg.advertise.clone(),
            });
        }
        let auth = header(req, AUTHORIZATION).map(str::to_string);
        // A child of ours shows no credentials, only who it is (dadi-p2proxy's children, and
        // overlaybd talking to us, send the registry's).
        let size = match (&auth, named) {
            (None, Some(node)) => self.authorize_peer(&o, node, remote).await,
            _ => self.authorize(&o, auth.as_deref()).await,
        }
        .inspect_err(|_| Metrics::add(&self.metrics.access_denied, 1))?;
        if auth.is_some() && named.is_some() {
            Metrics::add(&self.metrics.peer_credentials, 1);
        }
        if auth.is_some() && named.is_none() && remote.ip().is_loopback() {
            // The local reader's credentials: what this node uses upstream for this blob.
            lock(&self.fetch_auth).insert(o.key(), auth.clone());
        }
        let range = parse_range(header(req, RANGE), size)?;
        let (start, end) = range.unwrap_or((0, size));
        let head = req.method() == Method::HEAD;
        let body: Body = if head || start == end {
            Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
        } else {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let me = self.clone();
            let read = Read {
                o,
                start,
                end,
                size,
                auth,
                peer,
                path,
            };
            tokio::spawn(async move { me.stream(read, tx).await });
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
        Ok(resp)
    }

    /// The upload bucket of a child (`None`: no per-child limit, or not a child).
    fn child_bucket(&self, peer: &Option<String>) -> Option<Arc<Bucket>> {
        match (peer, self.cfg.upload.per_child_bytes_per_sec) {
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
        }
    }

    /// Sends `[start, end)` from the pieces as they arrive.
    async fn stream(self: Arc<Self>, r: Read, tx: Sender) {
        let ps = self.cfg.piece_size;
        let child_bucket = self.child_bucket(&r.peer);
        let mut pos = r.start;
        while pos < r.end {
            let idx = pos / ps;
            let piece = self.piece(&r.o, idx, r.size, &r.auth, &r.path);
            // Read ahead for the local reader only: children ask for what they need, and a
            // read-ahead at every level of the tree would multiply.
            let ahead = if r.peer.is_none() {
                self.cfg.prefetch_pieces
            } else {
                0
            };
            for k in 1..=ahead {
                if (idx + k).saturating_mul(ps) < r.size {
                    self.piece(&r.o, idx + k, r.size, &r.auth, &r.path);
                }
            }
            let base = idx * ps;
            let piece_end = r.end.min(base + piece.len as u64);
            while pos < piece_end {
                let want = ((piece_end - pos) as usize).min(256 << 10);
                let chunk = match piece.read((pos - base) as usize, want).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e.into_io())).await;
                        return;
                    }
                };
                let n = chunk.len();
                let chunk = if r.peer.is_some() && self.cfg.debug.corrupt_uploads {
                    corrupt(chunk, pos)
                } else {
                    chunk
                };
                if r.peer.is_some() {
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

    /// `DELETE` with `Range`: those bytes failed the reader's verification. Their pieces, and
    /// every other piece the same nodes sent, are dropped; the nodes are reported to the
    /// owning root, and left.
    pub(super) async fn bad_range(
        self: &Arc<Self>,
        req: &Request<Incoming>,
        origin: &str,
    ) -> Result<Response<Body>> {
        let o = Origin::parse(origin)?;
        let auth = header(req, AUTHORIZATION).map(str::to_string);
        let size = self.authorize(&o, auth.as_deref()).await?;
        let (start, end) =
            parse_range(header(req, RANGE), size)?.ok_or(Error::Range { range: None, size })?;
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
            self.report(&o, s, auth.as_deref()).await;
            if matches!(&up, Upstream::Node { url, .. } if url == s) {
                self.failover(&o, &up, auth.as_deref()).await;
            }
        }
        Ok(text(StatusCode::NO_CONTENT, ""))
    }
}

/// Fault injection (`debug.corrupt_uploads`): one flipped byte per 4 KiB of the blob.
fn corrupt(chunk: Bytes, pos: u64) -> Bytes {
    let mut v = chunk.to_vec();
    for (i, b) in v.iter_mut().enumerate() {
        if (pos + i as u64) % 4096 == 100 {
            *b ^= 0x5a;
        }
    }
    Bytes::from(v)
}
