//! The node's counters, rendered in Prometheus' text format at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub served_client: AtomicU64,
    pub served_child: AtomicU64,
    pub fetched_parent: AtomicU64,
    pub fetched_root: AtomicU64,
    pub fetched_registry: AtomicU64,
    pub requests: AtomicU64,
    pub joins: AtomicU64,
    pub access_checks: AtomicU64,
    pub access_denied: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub verification_failures: AtomicU64,
    pub reports: AtomicU64,
    pub digest_checks: AtomicU64,
    pub digest_failures: AtomicU64,
    pub loops: AtomicU64,
    pub peer_credentials: AtomicU64,
    /// Peer requests refused for a missing, bad, stale or replayed signature.
    pub peer_refused: AtomicU64,
}

/// Gauges computed at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    pub cache_bytes: u64,
    pub cache_pieces: usize,
    pub fills_running: u64,
    pub fills_waiting: u64,
    pub trees: usize,
    pub tree_nodes: usize,
    pub tree_max_depth: u32,
    pub tree_max_fanout: usize,
    pub own_max_depth: u32,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    pub fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::new();
        let mut c = |name: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(o, "# TYPE {name} {kind}");
            for (labels, v) in rows {
                if labels.is_empty() {
                    let _ = writeln!(o, "{name} {v}");
                } else {
                    let _ = writeln!(o, "{name}{{{labels}}} {v}");
                }
            }
        };
        c(
            "p2p_served_bytes_total",
            "Blob bytes sent, to the local reader (client) or to child nodes.",
            &[
                ("to=\"client\"", get(&self.served_client)),
                ("to=\"child\"", get(&self.served_child)),
            ],
        );
        c(
            "p2p_fetched_bytes_total",
            "Blob bytes received, by source.",
            &[
                ("from=\"parent\"", get(&self.fetched_parent)),
                ("from=\"root\"", get(&self.fetched_root)),
                ("from=\"registry\"", get(&self.fetched_registry)),
            ],
        );
        c(
            "p2p_requests_total",
            "Range requests handled.",
            &[("", get(&self.requests))],
        );
        c(
            "p2p_joins_total",
            "Tree joins answered (roots).",
            &[("", get(&self.joins))],
        );
        c(
            "p2p_access_checks_total",
            "Access checks sent to the registry or the owning root.",
            &[("", get(&self.access_checks))],
        );
        c(
            "p2p_access_denied_total",
            "Requests refused because the registry refused their credentials.",
            &[("", get(&self.access_denied))],
        );
        c(
            "p2p_peer_refused_total",
            "Peer requests refused for a missing, bad, stale or replayed signature.",
            &[("", get(&self.peer_refused))],
        );
        c(
            "p2p_cache_lookups_total",
            "Piece lookups.",
            &[
                ("result=\"hit\"", get(&self.cache_hits)),
                ("result=\"miss\"", get(&self.cache_misses)),
            ],
        );
        c(
            "p2p_upstream_failures_total",
            "Piece fetches that failed and moved to another upstream.",
            &[("", get(&self.upstream_failures))],
        );
        c(
            "p2p_verification_failures_total",
            "Ranges a reader reported as failing verification.",
            &[("", get(&self.verification_failures))],
        );
        c(
            "p2p_reports_total",
            "Nodes reported as serving bad bytes (roots: received; agents: sent).",
            &[("", get(&self.reports))],
        );
        c(
            "p2p_digest_checks_total",
            "Whole blobs checked against their SHA-256 digest.",
            &[
                ("result=\"ok\"", get(&self.digest_checks)),
                ("result=\"mismatch\"", get(&self.digest_failures)),
            ],
        );
        c(
            "p2p_loops_total",
            "Requests refused because they had already passed through this node.",
            &[("", get(&self.loops))],
        );
        c(
            "p2p_peer_credentials_total",
            "Requests from child nodes that carried registry credentials (our nodes never send them).",
            &[("", get(&self.peer_credentials))],
        );
        c(
            "p2p_cache_bytes",
            "Bytes of pieces held.",
            &[("", g.cache_bytes)],
        );
        c(
            "p2p_cache_pieces",
            "Pieces held.",
            &[("", g.cache_pieces as u64)],
        );
        c(
            "p2p_fills",
            "Pieces being fetched, and fetches waiting for one of the max_fills slots.",
            &[
                ("state=\"running\"", g.fills_running),
                ("state=\"waiting\"", g.fills_waiting),
            ],
        );
        c(
            "p2p_trees",
            "Blob trees kept (roots).",
            &[("", g.trees as u64)],
        );
        c(
            "p2p_tree_nodes",
            "Nodes in all trees kept (roots).",
            &[("", g.tree_nodes as u64)],
        );
        c(
            "p2p_tree_max_depth",
            "Deepest node of the trees kept (roots).",
            &[("", g.tree_max_depth as u64)],
        );
        c(
            "p2p_tree_max_fanout",
            "Most children of one node in the trees kept (roots).",
            &[("", g.tree_max_fanout as u64)],
        );
        c(
            "p2p_depth",
            "This node's deepest position in a blob's tree (agents; 1 = under a root).",
            &[("", g.own_max_depth as u64)],
        );
        o
    }
}
