//! Whole blobs checked against their digest: when every piece of a blob is here, their
//! SHA-256 is computed off the request path, once per set of pieces; on a mismatch they are
//! all dropped.

use std::sync::{Arc, Weak};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::{lock, Node, Origin};
use crate::metrics::Metrics;
use crate::store::Piece;

/// A blob's whole-blob digest check.
#[derive(Debug)]
pub(super) enum Check {
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

impl Node {
    /// When every piece of a blob is here, checks them against its digest; on a mismatch
    /// they are all dropped.
    pub(super) fn check_whole(self: &Arc<Self>, o: &Origin, size: u64) {
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
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::Config;
    use crate::store::Lookup;

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

    /// Pieces that do not add up to the blob's digest are all dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_that_does_not_match_its_digest_is_dropped() {
        let n = Node::new(Config {
            piece_size: 4,
            ..Config::default()
        })
        .unwrap();
        let d = format!("sha256:{}", hex::encode(Sha256::digest(b"01234567")));
        let o = Origin::parse(&format!("http://127.0.0.1:1/v2/r/blobs/{d}")).unwrap();
        for (idx, part) in [b"0123", b"4566"].into_iter().enumerate() {
            match n.store.get_or_start(&o.key(), idx as u64, 4) {
                Lookup::Started(p) => assert!(p.append(part)),
                Lookup::Hit(_) => panic!("piece {idx} is already there"),
            }
        }
        n.check_whole(&o, 8);
        let t = Instant::now();
        while n.metrics.digest_failures.load(Ordering::Relaxed) == 0
            && t.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(n.metrics.digest_failures.load(Ordering::Relaxed), 1);
        assert_eq!(n.metrics.digest_checks.load(Ordering::Relaxed), 0);
        assert_eq!(n.store.usage(), (0, 0));
        assert!(lock(&n.checked).get(&o.key()).is_none());
    }
}
