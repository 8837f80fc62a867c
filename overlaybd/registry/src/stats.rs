//! Counters of a registry session, rendered in Prometheus' text format.

use std::sync::atomic::{AtomicU64, Ordering};

use overlaybd_metrics::{counter, Histogram};

/// Counters of one registry source.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Requests sent to the registry (upstream or mirrors), tokens excluded.
    pub requests: AtomicU64,
    /// Blob bytes received from the registry (upstream or mirrors).
    pub bytes: AtomicU64,
    /// Requests sent to the P2P agent.
    pub agent_requests: AtomicU64,
    /// Blob bytes received from the P2P agent.
    pub agent_bytes: AtomicU64,
    /// Bad ranges reported to the P2P agent (it drops them and reports their source).
    pub agent_reports: AtomicU64,
    /// Attempts repeated after a transient failure (all places failed).
    pub retries: AtomicU64,
    /// Reads handed from a failing place (agent, mirror) to the next one.
    pub fallbacks: AtomicU64,
    /// Ranges dropped above after failing verification (fetched again from the registry).
    pub verification_failures: AtomicU64,
    pub token_fetches: AtomicU64,
    /// Latency of successful range reads, whole attempt (retries included).
    pub latency: Histogram,
}

impl RegistryStats {
    /// Appends the counters in Prometheus' text format with the given labels.
    pub fn render(&self, out: &mut String, labels: &str) {
        let l = |extra: &str| {
            if labels.is_empty() {
                extra.to_string()
            } else {
                format!("{labels},{extra}")
            }
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            out,
            "overlaybd_fetch_requests_total",
            &l("source=\"registry\""),
            get(&self.requests),
        );
        counter(
            out,
            "overlaybd_fetch_requests_total",
            &l("source=\"agent\""),
            get(&self.agent_requests),
        );
        counter(
            out,
            "overlaybd_fetch_bytes_total",
            &l("source=\"registry\""),
            get(&self.bytes),
        );
        counter(
            out,
            "overlaybd_fetch_bytes_total",
            &l("source=\"agent\""),
            get(&self.agent_bytes),
        );
        counter(
            out,
            "overlaybd_fetch_agent_reports_total",
            labels,
            get(&self.agent_reports),
        );
        counter(
            out,
            "overlaybd_fetch_retries_total",
            labels,
            get(&self.retries),
        );
        counter(
            out,
            "overlaybd_fetch_fallbacks_total",
            labels,
            get(&self.fallbacks),
        );
        counter(
            out,
            "overlaybd_verification_failures_total",
            labels,
            get(&self.verification_failures),
        );
        counter(
            out,
            "overlaybd_token_fetches_total",
            labels,
            get(&self.token_fetches),
        );
        self.latency.render(out, "overlaybd_fetch_seconds", labels);
    }
}
