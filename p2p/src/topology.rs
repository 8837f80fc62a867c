//! Who owns a blob, and who a node fetches it from.
//!
//! - **Owner**: each blob is owned by one root of the datacenter, chosen by rendezvous
//!   (highest random weight) hashing of the blob's key over the configured roots. Every node
//!   computes the same order from the same list, and when the owner is down the next root in
//!   that order takes over; adding or removing a root moves only the blobs it owned.
//! - **Tree**: the owner keeps one [`Tree`] per blob: the nodes that hold or are fetching it.
//!   A joining node is given the shallowest parent with a free slot (at most `fanout`
//!   children), so depth grows with log_fanout(nodes). The root itself is the first parent.
//!   A node is never given one of its own descendants (no cycles); a node reported as failed
//!   is dropped, one reported as corrupt is kept out of the parent choice; entries expire.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The roots in the order a blob should be asked: the owner first.
pub fn rendezvous<'a>(key: &str, roots: &'a [String]) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = roots
        .iter()
        .map(|r| {
            let mut h = Sha256::new();
            h.update(key.as_bytes());
            h.update([0u8]);
            h.update(r.as_bytes());
            let d = h.finalize();
            (
                u64::from_be_bytes(d[..8].try_into().expect("8 bytes")),
                r.as_str(),
            )
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored.into_iter().map(|(_, r)| r).collect()
}

#[derive(Clone, Debug)]
struct Entry {
    /// `None`: the root.
    parent: Option<String>,
    /// 1 for the root's children.
    depth: u32,
    seen: Instant,
    /// Joined order, for stable choices.
    seq: u64,
}

/// One blob's tree, kept by its owning root.
#[derive(Debug)]
pub struct Tree {
    fanout: usize,
    ttl: Duration,
    nodes: HashMap<String, Entry>,
    /// Children per parent ("" = the root), kept with `nodes`.
    kids: HashMap<String, usize>,
    /// Nodes that may take a child (free slot, not avoided), shallowest and oldest first;
    /// `open_key` says which key each has in it.
    open: BTreeSet<(u32, u64, String)>,
    open_key: HashMap<String, (u32, u64)>,
    /// Nodes that served bytes that failed verification, and when they were reported: never
    /// given as a parent again (until the report is `ttl` old).
    avoided: HashMap<String, Instant>,
    seq: u64,
    swept: Option<Instant>,
}

/// Shape of a tree, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Shape {
    pub nodes: usize,
    pub max_depth: u32,
    pub max_fanout: usize,
    pub root_children: usize,
    pub avoided: Vec<String>,
}

impl Tree {
    pub fn new(fanout: usize, ttl: Duration) -> Tree {
        Tree {
            fanout: fanout.max(1),
            ttl,
            nodes: HashMap::new(),
            kids: HashMap::new(),
            open: BTreeSet::new(),
            open_key: HashMap::new(),
            avoided: HashMap::new(),
            seq: 0,
            swept: None,
        }
    }

    fn children(&self, of: Option<&str>) -> usize {
        self.kids.get(of.unwrap_or("")).copied().unwrap_or(0)
    }

    /// Puts `node` in the open set or takes it out, per its entry and children.
    fn refresh(&mut self, node: &str) {
        if let Some((d, s)) = self.open_key.remove(node) {
            self.open.remove(&(d, s, node.to_string()));
        }
        let Some(e) = self.nodes.get(node) else {
            return;
        };
        if !self.avoided.contains_key(node) && self.children(Some(node)) < self.fanout {
            let (d, s) = (e.depth, e.seq);
            self.open.insert((d, s, node.to_string()));
            self.open_key.insert(node.to_string(), (d, s));
        }
    }

    fn insert(&mut self, node: &str, e: Entry) {
        let parent = e.parent.clone();
        *self
            .kids
            .entry(parent.clone().unwrap_or_default())
            .or_default() += 1;
        if let Some(old) = self.nodes.insert(node.to_string(), e) {
            self.unlink(&old);
        }
        self.refresh(node);
        if let Some(p) = parent {
            self.refresh(&p);
        }
    }

    fn unlink(&mut self, e: &Entry) {
        let k = e.parent.clone().unwrap_or_default();
        if let Some(n) = self.kids.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                self.kids.remove(&k);
            }
        }
        if let Some(p) = &e.parent {
            self.refresh(p);
        }
    }

    fn remove(&mut self, node: &str) {
        if let Some(e) = self.nodes.remove(node) {
            self.unlink(&e);
        }
        self.refresh(node);
    }

    /// Whether `candidate` is `node` or below it.
    fn below(&self, candidate: &str, node: &str) -> bool {
        let mut cur = Some(candidate);
        let mut hops = 0;
        while let Some(c) = cur {
            if c == node {
                return true;
            }
            hops += 1;
            if hops > self.nodes.len() {
                return true; // a cycle in stale data: treat as unusable
            }
            cur = self.nodes.get(c).and_then(|e| e.parent.as_deref());
        }
        false
    }

    pub fn expire(&mut self, now: Instant) {
        self.swept = Some(now);
        let ttl = self.ttl;
        let old: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, e)| now.duration_since(e.seen) >= ttl)
            .map(|(n, _)| n.clone())
            .collect();
        for n in old {
            self.remove(&n);
        }
        let back: Vec<String> = self
            .avoided
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= ttl)
            .map(|(n, _)| n.clone())
            .collect();
        for n in back {
            self.avoided.remove(&n);
            self.refresh(&n);
        }
    }

    /// `node` asks where to fetch from; `failed` is a parent it could not fetch from. Returns
    /// its parent (`None`: the root) and depth.
    pub fn join(
        &mut self,
        node: &str,
        failed: Option<&str>,
        now: Instant,
    ) -> (Option<String>, u32) {
        // Sweep expired entries now and then, not on every join.
        let every = (self.ttl / 8).min(Duration::from_secs(1));
        if self
            .swept
            .is_none_or(|t| now.saturating_duration_since(t) >= every)
        {
            self.expire(now);
        }
        if let Some(f) = failed {
            // A failed node leaves the tree (an avoided one stays avoided).
            if f != node {
                self.remove(f);
            }
        }
        if let Some(e) = self.nodes.get_mut(node) {
            e.seen = now;
            let keep = match &e.parent {
                None => failed.is_none(),
                Some(p) => Some(p.as_str()) != failed,
            };
            let parent = e.parent.clone();
            let depth = e.depth;
            let parent_ok = match &parent {
                None => true,
                Some(p) => self.nodes.contains_key(p) && !self.is_avoided(p),
            };
            if keep && parent_ok {
                return (parent, depth);
            }
        }
        // The shallowest node with a free slot, not `node` or below it; the root counts as
        // depth 0.
        let mut best: Option<(u32, u64, Option<String>)> = None;
        if self.children(None) < self.fanout {
            best = Some((0, 0, None));
        }
        if best.is_none() {
            best = self
                .open
                .iter()
                .find(|(_, _, name)| name != node && !self.below(name, node))
                .map(|(d, s, name)| (*d, *s, Some(name.clone())));
        }
        // Every slot is taken (or the candidates are avoided): the root takes the overflow.
        let (pdepth, _, parent) = best.unwrap_or((0, 0, None));
        self.seq += 1;
        let seq = self.seq;
        self.insert(
            node,
            Entry {
                parent: parent.clone(),
                depth: pdepth + 1,
                seen: now,
                seq,
            },
        );
        (parent, pdepth + 1)
    }

    /// `node` served bytes that failed verification.
    pub fn avoid(&mut self, node: &str, now: Instant) {
        if self.avoided.len() >= 100_000 && !self.avoided.contains_key(node) {
            return; // bounded: reports are from readers of the blob, but many hosts lie
        }
        self.avoided.insert(node.to_string(), now);
        self.refresh(node);
    }

    pub fn is_avoided(&self, node: &str) -> bool {
        self.avoided.contains_key(node)
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.avoided.is_empty()
    }

    pub fn shape(&self) -> Shape {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for e in self.nodes.values() {
            if let Some(p) = &e.parent {
                *counts.entry(p.as_str()).or_default() += 1;
            }
        }
        let mut avoided: Vec<String> = self.avoided.keys().cloned().collect();
        avoided.sort();
        Shape {
            nodes: self.nodes.len(),
            max_depth: self.nodes.values().map(|e| e.depth).max().unwrap_or(0),
            max_fanout: counts.values().copied().max().unwrap_or(0),
            root_children: self.children(None),
            avoided,
        }
    }

    /// Each node's parent (`None`: the root), for simulations and tests.
    pub fn parents(&self) -> Vec<(String, Option<String>, u32)> {
        let mut v: Vec<_> = self
            .nodes
            .iter()
            .map(|(n, e)| (n.clone(), e.parent.clone(), e.depth))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:19145")).collect()
    }

    #[test]
    fn rendezvous_is_stable_and_moves_only_the_lost_roots_blobs() {
        let r3 = roots(3);
        let keys: Vec<String> = (0..600).map(|i| format!("sha256:{i:064x}")).collect();
        let mut owned = HashMap::new();
        for k in &keys {
            let order = rendezvous(k, &r3);
            assert_eq!(order.len(), 3);
            assert_eq!(order, rendezvous(k, &r3), "deterministic");
            *owned.entry(order[0]).or_insert(0) += 1;
        }
        // Balanced within reason: each root owns 200 ± 60.
        for r in &r3 {
            let n = owned[r.as_str()];
            assert!((140..=260).contains(&n), "{r} owns {n} of 600");
        }
        // Removing a root moves only its blobs, each to its second choice.
        let r2: Vec<String> = r3[..2].to_vec();
        for k in &keys {
            let before = rendezvous(k, &r3);
            let after = rendezvous(k, &r2);
            if before[0] != r3[2] {
                assert_eq!(after[0], before[0]);
            } else {
                assert_eq!(after[0], before[1]);
            }
        }
    }

    #[test]
    fn tree_is_bounded_and_logarithmic() {
        let now = Instant::now();
        let mut t = Tree::new(4, Duration::from_secs(60));
        for i in 0..1000 {
            t.join(&format!("n{i}"), None, now);
        }
        let s = t.shape();
        assert_eq!(s.nodes, 1000);
        assert!(s.max_fanout <= 4, "{s:?}");
        assert_eq!(s.root_children, 4);
        // 4 + 16 + 64 + 256 + 660: depth 5 = ceil(log4(1000 * 3 / 4 + 1)).
        assert_eq!(s.max_depth, 5, "{s:?}");
        // Joining again keeps the parent.
        let before = t.join("n500", None, now);
        assert_eq!(t.join("n500", None, now), before);
    }

    #[test]
    fn failures_reports_and_expiry() {
        let now = Instant::now();
        let mut t = Tree::new(2, Duration::from_secs(60));
        for n in ["a", "b", "c", "d", "e", "f"] {
            t.join(n, None, now);
        }
        // a, b under the root; c, d under a; e, f under b.
        let (pc, _) = t.join("c", None, now);
        assert_eq!(pc.as_deref(), Some("a"));
        // c's parent fails: a is dropped, c goes elsewhere, never below itself.
        let (pc2, _) = t.join("c", Some("a"), now);
        assert_ne!(pc2.as_deref(), Some("a"));
        assert_ne!(pc2.as_deref(), Some("c"));
        assert!(!t.parents().iter().any(|(n, _, _)| n == "a"));
        // A node reported corrupt is never a parent again, even if it rejoins.
        t.avoid("b", now);
        t.join("b", None, now);
        for i in 0..10 {
            let (p, _) = t.join(&format!("x{i}"), None, now);
            assert_ne!(p.as_deref(), Some("b"));
        }
        let (pe, _) = t.join("e", None, now);
        assert_ne!(
            pe.as_deref(),
            Some("b"),
            "b's children move on their next join"
        );
        assert_eq!(t.shape().avoided, vec!["b".to_string()]);
        // Reported, then named as failed by a child that left it: still avoided.
        t.join("e", Some("b"), now);
        assert_eq!(t.shape().avoided, vec!["b".to_string()]);
        // A node that has children cannot be given one of them.
        let mut t = Tree::new(1, Duration::from_secs(60));
        t.join("a", None, now);
        t.join("q", None, now); // under a
        t.join("r", None, now); // under q
        t.avoid("a", now);
        let (pq, _) = t.join("q", None, now);
        assert!(pq.is_none(), "q may not go below itself (r): {pq:?}");
        // Expiry.
        t.expire(now + Duration::from_secs(61));
        assert!(t.is_empty());
    }
}
