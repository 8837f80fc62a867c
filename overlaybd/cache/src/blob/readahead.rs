//! Readahead for sequential readers of a cached blob.

use std::sync::atomic::Ordering;

use zfile::ReadAt;

use super::BlobCache;

/// Sequential-read detection: one stream per blob, as the kernel's readahead for a file. A
/// stream starts with the second of two adjacent reads and gets readahead once it has read a
/// whole unit (so a reader that reads a few small headers in a row does not).
#[derive(Debug)]
pub(super) struct Readahead {
    /// Where a sequential reader reads next.
    next: u64,
    /// Current window; doubles on each sequential read up to the maximum, 0 after a seek.
    window: u64,
    /// End of what has been fetched (or is being fetched) ahead.
    ahead_end: u64,
    /// A readahead fetch is running.
    running: bool,
    /// Bytes read by the current sequential stream; readahead starts after one unit.
    run: u64,
}

impl Default for Readahead {
    fn default() -> Self {
        Readahead {
            next: u64::MAX,
            window: 0,
            ahead_end: 0,
            running: false,
            run: 0,
        }
    }
}

impl<S: ReadAt + 'static> BlobCache<S> {
    /// Largest readahead window for sequential readers, in bytes (0 turns readahead off).
    /// Default [`DEFAULT_READAHEAD`].
    pub fn set_readahead(&self, max: u64) {
        self.readahead_max.store(max, Ordering::Relaxed);
    }

    /// For a read of `[offset, offset + n)`: where the fetch for it should end, and the range
    /// to fetch in the background after it, in one look at the stream's state.
    ///
    /// A sequential reader gets a window that starts at two units and doubles with each read
    /// (up to the maximum); a seek resets it. When a sequential reader has caught up with what
    /// was fetched ahead, its own fetch is extended by the window (synchronous readahead, as
    /// the kernel does on a miss). When it is within half a window of the end of what is
    /// fetched ahead, the next window is fetched in the background (one at a time; the caller
    /// must start it, or call `readahead_done`).
    pub(super) fn plan_readahead(&self, offset: u64, n: u64) -> (u64, Option<(u64, u64)>) {
        let end = offset + n;
        let max = self.readahead_max.load(Ordering::Relaxed);
        if max == 0 || self.complete.load(Ordering::Relaxed) {
            return (end, None);
        }
        let mut ra = self.readahead.lock().unwrap_or_else(|p| p.into_inner());
        let sequential = offset == ra.next;
        ra.next = end;
        if !sequential {
            ra.window = 0;
            ra.ahead_end = 0;
            ra.run = n;
            return (end, None);
        }
        ra.run += n;
        if ra.run < self.unit {
            // Small reads of headers one after another are not a stream yet.
            return (end, None);
        }
        ra.window = (ra.window * 2).max(2 * self.unit).min(max.max(self.unit));
        let mut fetch_end = end;
        if ra.ahead_end <= offset {
            fetch_end = (offset + ra.window).max(end).min(self.size);
            ra.ahead_end = fetch_end;
        }
        if ra.running || ra.ahead_end >= end + ra.window / 2 {
            return (fetch_end, None);
        }
        let from = ra.ahead_end.max(end);
        let to = (end + ra.window).min(self.size);
        if from >= to {
            return (fetch_end, None);
        }
        ra.ahead_end = to;
        ra.running = true;
        (fetch_end, Some((from, to)))
    }

    /// The background readahead finished (or was never started).
    pub(super) fn readahead_done(&self) {
        self.readahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running = false;
    }

    /// Fetches `[from, to)` in a background thread (units already present are skipped;
    /// readers that need a unit being fetched wait for it, as for any fetch).
    pub(super) fn start_readahead(&self, from: u64, to: u64) {
        let Some(me) = self.me.upgrade() else {
            return self.readahead_done();
        };
        // The claim is taken here, before this read returns, so the reader's next reads wait
        // for these units instead of fetching them again in small pieces.
        let (claim, _) = Self::claim(&mut self.lock(), from / self.unit, (to - 1) / self.unit);
        if claim.is_empty() {
            return self.readahead_done();
        }
        let spawned = std::thread::Builder::new()
            .name("cache-readahead".into())
            .spawn({
                let claim = claim.clone();
                move || {
                    // No pin: units in flight are never dropped (see `drop_range`). A failed
                    // readahead is not an error: readers fetch on demand.
                    let added = me.fill_claimed(&claim).0;
                    me.stats.readahead_bytes.fetch_add(added, Ordering::Relaxed);
                    me.account(added);
                    me.readahead_done();
                }
            });
        if spawned.is_err() {
            // Release the claim unfilled.
            let mut st = self.lock();
            for (u, _) in &claim {
                st.inflight.remove(u);
            }
            drop(st);
            self.fetched.notify_all();
            self.readahead_done();
        }
    }
}
