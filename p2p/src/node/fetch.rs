//! Pieces fetched from upstream: each piece once (single flight through the store), at most
//! `max_fills` at a time, resumed at its first missing byte from the next upstream when one
//! fails (parent → root → next root → registry), never left half-filled for readers.
//!
//! A root's restart: its trees and vouches are gone, and they are rebuilt from the children.
//! A node its upstream refuses (403: no root vouches for it any more) joins again, which
//! proves its access anew, without blaming that upstream (a second refusal from the same one
//! does blame it). An agent that read the registry while no root answered asks the roots
//! again every 10 s (`tree::ROOT_DOWN_FOR`) and goes back to the tree once one answers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::{AUTHORIZATION, CONTENT_RANGE, RANGE};
use tracing::warn;

use super::{lock, Node, Origin, Upstream, PATH_HEADER};
use crate::config::Role;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{Lookup, Piece};

/// Failed fetches of one piece before it fails.
const MAX_FAILURES: u32 = 8;

impl Node {
    /// The piece, started if absent (and not being fetched).
    pub(super) fn piece(
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

    pub(super) fn upstream(&self, key: &str) -> Upstream {
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
            cause: "the fetch was abandoned".into(),
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
        // The upstream that refused this node once (403): not blamed for it the first time.
        let mut refused_by: Option<String> = None;
        while (piece.filled() as u64) < piece.len as u64 {
            self.back_to_tree(&o, auth.as_deref()).await;
            let up = self.upstream(&key);
            let from = start + piece.filled() as u64;
            let fetched = self
                .fetch(&o, &up, from, end, size, auth.as_deref(), &path, &piece)
                .await;
            if let Err(e) = fetched {
                Metrics::add(&self.metrics.upstream_failures, 1);
                failures += 1;
                warn!(blob = %key, piece = idx, ?up, "fetch failed: {e}");
                guard.cause = e.to_string();
                if failures >= MAX_FAILURES {
                    break;
                }
                if let (Upstream::Node { url, .. }, Error::Refused { status: 403, .. }) = (&up, &e)
                {
                    if refused_by.as_ref() != Some(url) {
                        // Most likely a restarted root that no longer knows this node.
                        refused_by = Some(url.clone());
                        let _ = self.join(&o, auth.as_deref(), None).await;
                        continue;
                    }
                }
                self.failover(&o, &up, auth.as_deref()).await;
                if up == Upstream::Registry {
                    tokio::time::sleep(Duration::from_millis(100 << failures.min(5))).await;
                }
            }
        }
        if (piece.filled() as u64) < piece.len as u64 {
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

    /// An agent reading the registry for want of a root asks the roots again once it is
    /// time to. One fill asks (the next time is set first, so a join that fails is tried
    /// again `tree::ROOT_DOWN_FOR` later, not by every fill); the fills of that blob wait for
    /// its answer rather than read the registry meanwhile. Fills of blobs read from the tree
    /// never wait here.
    async fn back_to_tree(&self, o: &Origin, auth: Option<&str>) {
        let key = o.key();
        let due = |b: &super::BlobState| {
            b.upstream == Upstream::Registry && b.rejoin_at.is_some_and(|t| t <= Instant::now())
        };
        let waits = lock(&self.blobs)
            .get(&key)
            .is_some_and(|b| due(b) || (b.upstream == Upstream::Registry && b.rejoining));
        if !waits {
            return;
        }
        let _one = self.rejoining.lock().await;
        let claimed = match lock(&self.blobs).get_mut(&key) {
            Some(b) if due(b) => {
                b.rejoin_at = Some(Instant::now() + super::tree::ROOT_DOWN_FOR);
                b.rejoining = true;
                true
            }
            _ => false,
        };
        if claimed {
            let _ = self.join(o, auth, None).await;
            if let Some(b) = lock(&self.blobs).get_mut(&key) {
                b.rejoining = false;
            }
        }
    }

    /// The upstream failed: a parent is reported to the root (which gives another), a root
    /// is skipped for the next one, and with no root left the registry is read directly.
    pub(super) async fn failover(&self, o: &Origin, up: &Upstream, auth: Option<&str>) {
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
    ) -> Result<()> {
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
        let failed = |cause: String| Error::upstream(source.clone(), cause);
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
            // Signed over the origin URL (what the parent parses from its path).
            req = self
                .as_peer(req, "GET", &o.url, b"")
                .header(PATH_HEADER, path);
        }
        let mut resp = tokio::time::timeout(stall, req.send())
            .await
            .map_err(|_| failed(format!("no answer in {stall:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        let st = resp.status();
        if st == reqwest::StatusCode::FORBIDDEN && *up != Upstream::Registry {
            return Err(Error::Refused {
                status: 403,
                challenge: None,
                message: format!("{source} refused this node: {st}"),
            });
        }
        if st != reqwest::StatusCode::PARTIAL_CONTENT {
            return Err(failed(st.to_string()));
        }
        let want = format!("bytes {from}-{}/{size}", end - 1);
        let cr = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if cr != want {
            return Err(failed(format!("Content-Range {cr:?}, expected {want:?}")));
        }
        piece.set_source(&source);
        let mut got = 0u64;
        while from + got < end {
            let wait = stall.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, resp.chunk()).await {
                Err(_) => return Err(failed("stalled, or slower than 256 KiB/s".into())),
                Ok(Err(e)) => return Err(failed(e.to_string())),
                Ok(Ok(None)) => {
                    return Err(failed(format!("short body: {got} of {} bytes", end - from)))
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
}

/// Fails and drops a piece whose filling did not finish.
struct FillGuard {
    node: Arc<Node>,
    key: String,
    idx: u64,
    piece: Arc<Piece>,
    done: bool,
    /// Why, if it did not: the last upstream failure.
    cause: String,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if !self.done {
            self.node
                .store
                .remove_if_same(&self.key, self.idx, &self.piece);
            self.piece.fail(Error::Piece {
                key: std::mem::take(&mut self.key),
                idx: self.idx,
                cause: std::mem::take(&mut self.cause),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
}
