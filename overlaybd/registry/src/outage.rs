//! The registries that are down, shared by every blob a process reads: an outage costs one
//! deadline, not one per block.
//!
//! A blob read retries until its deadline (`read_deadline_secs`, 60 s by default), which rides
//! out a short blip. But when a registry is really gone, every read of data not yet in the
//! cache would wait that long again, one after the other: `tar` of `/usr` under a stopped
//! registry took 11 minutes for 11 I/O errors, with the process in D state meanwhile. So once
//! a read of a registry has failed at its full deadline (retrying until the next back-off
//! would pass it; not a `Retry-After` longer than the deadline, which ends a read at once), the
//! registry is marked down, and reads of it get a short deadline (`outage_deadline_secs`)
//! until one of them is answered by the registry or a mirror (the P2P agent's cache answers
//! while the registry is gone: that does not count). Each of those reads still tries, so they
//! are the probes: the first read after the registry comes back succeeds and marks it up
//! again. Reads already running keep the deadline they started with. A read that needs longer
//! than the short deadline (a large range over a slow link) cannot succeed while the registry
//! is marked down; a smaller read's success lifts that.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The registries that are down, by upstream (`host[:port]`, the key of its mirrors too).
#[derive(Debug)]
pub struct Outages {
    /// The deadline of a read of a registry that is down.
    short: Duration,
    /// Since when each registry that is down has been down.
    down: Mutex<BTreeMap<String, Instant>>,
    /// Times a registry was marked down.
    pub outages: AtomicU64,
    /// Reads that ran with the short deadline.
    pub short_reads: AtomicU64,
}

impl Outages {
    /// `short`: the deadline of a read of a registry that is down (at least 1 ms).
    pub fn new(short: Duration) -> Outages {
        Outages {
            short: short.max(Duration::from_millis(1)),
            down: Mutex::default(),
            outages: AtomicU64::new(0),
            short_reads: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Instant>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `registry` is down.
    pub fn is_down(&self, registry: &str) -> bool {
        self.lock().contains_key(registry)
    }

    /// The deadline a read of `registry` gets: `full` while it is up, the short one (at most
    /// `full`) while it is down; and whether it is down.
    pub fn deadline(&self, registry: &str, full: Duration) -> (Duration, bool) {
        if self.is_down(registry) {
            self.short_reads.fetch_add(1, Ordering::Relaxed);
            (self.short.min(full), true)
        } else {
            (full, false)
        }
    }

    /// A read of `registry` with its full deadline failed at that deadline (`why`).
    pub fn failed(&self, registry: &str, why: &str) {
        let mut down = self.lock();
        if down.contains_key(registry) {
            return;
        }
        down.insert(registry.to_string(), Instant::now());
        self.outages.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "registry {registry} is down ({why}): until it answers, a read of data not in \
             the cache waits at most {:.1} s",
            self.short.as_secs_f64()
        );
    }

    /// A read of `registry` was answered.
    pub fn answered(&self, registry: &str) {
        if let Some(since) = self.lock().remove(registry) {
            tracing::info!(
                "registry {registry} answers again, after {:.1} s down",
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// `overlaybd_registry_down{registry=…}` (1 per registry down now), the outages and the
    /// reads that had the short deadline, in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        use overlaybd_metrics::counter;
        for registry in self.lock().keys() {
            let name = registry.replace(['\\', '"'], "_");
            counter(
                out,
                "overlaybd_registry_down",
                &format!("registry=\"{name}\""),
                1,
            );
        }
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            out,
            "overlaybd_registry_outages_total",
            "",
            get(&self.outages),
        );
        counter(
            out,
            "overlaybd_registry_outage_reads_total",
            "",
            get(&self.short_reads),
        );
    }
}
