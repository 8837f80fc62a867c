//! Counters of one cached blob.

use std::sync::atomic::{AtomicU64, Ordering};

use overlaybd_metrics::counter;

/// Counters of one cached blob.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes served from the cache file.
    pub hit_bytes: AtomicU64,
    /// Bytes fetched from the origin.
    pub fetched_bytes: AtomicU64,
    /// Reads sent to the origin.
    pub origin_reads: AtomicU64,
    /// Units that failed their CRC (or were dropped by the reader) and were fetched again.
    pub dropped_units: AtomicU64,
    /// Bytes fetched ahead of sequential readers (part of `fetched_bytes`).
    pub readahead_bytes: AtomicU64,
    /// Bytes fetched by [`BlobCache::download`] (part of `fetched_bytes`).
    pub download_bytes: AtomicU64,
}

impl Stats {
    /// Appends the counters in Prometheus' text format with the given labels, plus the hit
    /// ratio (bytes served that did not have to be fetched, over bytes served).
    pub fn render(&self, out: &mut String, labels: &str) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            out,
            "overlaybd_cache_served_bytes_total",
            labels,
            get(&self.hit_bytes),
        );
        counter(
            out,
            "overlaybd_cache_fetched_bytes_total",
            labels,
            get(&self.fetched_bytes),
        );
        counter(
            out,
            "overlaybd_cache_origin_reads_total",
            labels,
            get(&self.origin_reads),
        );
        counter(
            out,
            "overlaybd_cache_dropped_units_total",
            labels,
            get(&self.dropped_units),
        );
        counter(
            out,
            "overlaybd_cache_readahead_bytes_total",
            labels,
            get(&self.readahead_bytes),
        );
        counter(
            out,
            "overlaybd_cache_download_bytes_total",
            labels,
            get(&self.download_bytes),
        );
        let _ = std::fmt::Write::write_fmt(
            out,
            format_args!(
                "overlaybd_cache_hit_ratio{{{labels}}} {}\n",
                self.hit_ratio()
            ),
        );
    }

    /// Bytes served without a fetch for them, over bytes served (1 when nothing was served).
    pub fn hit_ratio(&self) -> f64 {
        let served = self.hit_bytes.load(Ordering::Relaxed);
        let fetched = self.fetched_bytes.load(Ordering::Relaxed);
        if served == 0 {
            return 1.0;
        }
        served.saturating_sub(fetched) as f64 / served as f64
    }
}
