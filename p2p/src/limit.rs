//! Upload rate limits: token buckets that may go into debt by one chunk, so that any chunk
//! size makes progress and the long-run rate holds.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    /// (tokens, last refill).
    st: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// `bytes_per_sec` > 0; bursts up to a tenth of a second's worth.
    pub fn new(bytes_per_sec: u64) -> Bucket {
        Bucket {
            rate: bytes_per_sec as f64,
            st: Mutex::new((bytes_per_sec as f64 / 10.0, Instant::now())),
        }
    }

    /// How long to wait before sending `n` bytes (they are accounted now).
    pub fn reserve(&self, n: usize) -> Duration {
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        st.0 = (st.0 + now.duration_since(st.1).as_secs_f64() * self.rate).min(self.rate / 10.0);
        st.1 = now;
        st.0 -= n as f64;
        if st.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-st.0 / self.rate)
        }
    }

    pub async fn take(&self, n: usize) {
        let d = self.reserve(n);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_rate() {
        let b = Bucket::new(1_000_000);
        // The burst passes, then each 100 KB costs 0.1 s.
        assert_eq!(b.reserve(100_000), Duration::ZERO);
        let w = b.reserve(100_000);
        assert!(
            w > Duration::from_millis(95) && w <= Duration::from_millis(101),
            "{w:?}"
        );
        let w = b.reserve(1_000_000);
        assert!(w > Duration::from_millis(1090), "{w:?}");
    }
}
