//! Who a peer is: with a deployment secret (`peer_secret_file`), every request one node sends
//! another (join, vouch, report, a child's range read) carries `X-P2P-Node` and an
//! `X-P2P-Signature` over the method, the path, that node, a timestamp, a nonce and the body's
//! SHA-256: HMAC-SHA256 with the secret. A receiver refuses a request without a valid
//! signature, one older or newer than [`WINDOW`], and one whose nonce it has seen, so neither a
//! process without the secret (another local process, a host outside the deployment) can speak
//! for a node, nor can a captured request be sent again to the node it went to (the signature
//! does not name the receiver: another node would take it within the window).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const SIGNATURE_HEADER: &str = "x-p2p-signature";

/// How far a signature's time may be from the receiver's clock.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Most nonces remembered (a bound on memory: past it the oldest go first; a signature older
/// than [`WINDOW`] is refused by its time anyway).
const MAX_NONCES: usize = 1 << 20;

/// How long a nonce is remembered: a signature is accepted up to [`WINDOW`] either side of
/// this node's clock, so up to twice that after it first arrives, plus a margin for a wall
/// clock that steps.
const REMEMBER: Duration = Duration::from_secs(2 * WINDOW.as_secs() + 30);

/// The nonces seen, oldest first, and as a set.
#[derive(Default)]
struct Seen {
    order: std::collections::VecDeque<(Instant, [u8; 16])>,
    set: std::collections::HashSet<[u8; 16]>,
}

pub use overlaybd_oci::digest::hmac_sha256;

/// Signs and checks peer requests with the deployment's secret.
pub struct Signer {
    secret: Vec<u8>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Signer {
    pub fn new(secret: Vec<u8>) -> Signer {
        Signer {
            secret,
            seen: Mutex::default(),
        }
    }

    fn mac(
        &self,
        method: &str,
        path: &str,
        node: &str,
        ts: u64,
        nonce: &str,
        body: &[u8],
    ) -> String {
        let body = hex::encode(Sha256::digest(body));
        let ts = ts.to_string();
        let mut msg: Vec<&[u8]> = Vec::new();
        for part in ["overlaybd-p2p v1", method, path, node, &ts, nonce, &body] {
            msg.push(part.as_bytes());
            msg.push(b"\n");
        }
        hex::encode(hmac_sha256(&self.secret, &msg))
    }

    /// The `X-P2P-Signature` of a request `node` sends.
    pub fn sign(&self, method: &str, path: &str, node: &str, body: &[u8]) -> String {
        self.sign_at(now_ms(), method, path, node, body)
    }

    /// [`Signer::sign`] at a given time (milliseconds since the epoch).
    pub fn sign_at(&self, ts: u64, method: &str, path: &str, node: &str, body: &[u8]) -> String {
        let nonce: [u8; 16] = rand_nonce();
        let nonce = hex::encode(nonce);
        let mac = self.mac(method, path, node, ts, &nonce, body);
        format!("{ts}.{nonce}.{mac}")
    }

    /// Checks a request's signature: made with this secret for exactly this method, path,
    /// node and body, within [`WINDOW`] of now, and never seen before.
    pub fn verify(
        &self,
        signature: Option<&str>,
        method: &str,
        path: &str,
        node: Option<&str>,
        body: &[u8],
    ) -> Result<()> {
        let refuse = |why: &str| {
            Err(Error::Forbidden(format!(
                "peer request {method} {path}: {why} (this deployment signs peer requests: \
                 peer_secret_file)"
            )))
        };
        let (Some(sig), Some(node)) = (signature, node) else {
            return refuse("no X-P2P-Signature and X-P2P-Node");
        };
        let mut parts = sig.splitn(3, '.');
        let (Some(ts), Some(nonce), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return refuse("a malformed signature");
        };
        let (Ok(ts), Ok(raw_nonce)) = (ts.parse::<u64>(), hex::decode(nonce)) else {
            return refuse("a malformed signature");
        };
        let Ok(raw_nonce) = <[u8; 16]>::try_from(raw_nonce) else {
            return refuse("a malformed signature");
        };
        let want = self.mac(method, path, node, ts, nonce, body);
        if !overlaybd_oci::digest::equal_in_constant_time(want.as_bytes(), mac.as_bytes()) {
            return refuse("a bad signature (another secret, or the request was changed)");
        }
        let skew = now_ms().abs_diff(ts);
        if skew > WINDOW.as_millis() as u64 {
            return refuse(&format!(
                "signed {:.1} s away from this node's clock",
                skew as f64 / 1e3
            ));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Forget what is old enough, and past the bound the oldest: O(1) per request.
        while let Some(&(at, n)) = seen.order.front() {
            if now.duration_since(at) < REMEMBER && seen.order.len() < MAX_NONCES {
                break;
            }
            seen.order.pop_front();
            seen.set.remove(&n);
        }
        if !seen.set.insert(raw_nonce) {
            return refuse("a replayed request (its nonce was seen)");
        }
        seen.order.push_back((now, raw_nonce));
        Ok(())
    }
}

/// 16 random bytes (the kernel's `getrandom`).
fn rand_nonce() -> [u8; 16] {
    let mut b = [0u8; 16];
    // SAFETY: getrandom(2) writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Without the kernel's randomness, time and a counter still make nonces unique.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b[..8].copy_from_slice(&now_ms().to_le_bytes());
        b[8..].copy_from_slice(&c.to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_everything_and_are_used_once() {
        let s = Signer::new(b"a deployment secret".to_vec());
        let (m, p, n, b) = ("POST", "/_p2p/v1/join", "http://a:1", b"{}".as_slice());
        let sig = s.sign(m, p, n, b);
        s.verify(Some(&sig), m, p, Some(n), b).unwrap();
        let e = s.verify(Some(&sig), m, p, Some(n), b).unwrap_err();
        assert!(e.to_string().contains("replayed"), "{e}");
        for (m2, p2, n2, b2) in [
            ("GET", p, n, b),
            (m, "/_p2p/v1/vouch", n, b),
            (m, p, "http://b:1", b),
            (m, p, n, b"{ }".as_slice()),
        ] {
            let sig = s.sign(m, p, n, b);
            let e = s.verify(Some(&sig), m2, p2, Some(n2), b2).unwrap_err();
            assert!(e.to_string().contains("bad signature"), "{e}");
        }
        let other = Signer::new(b"another secret".to_vec());
        let e = s
            .verify(Some(&other.sign(m, p, n, b)), m, p, Some(n), b)
            .unwrap_err();
        assert!(e.to_string().contains("bad signature"), "{e}");
        let old = s.sign_at(now_ms() - 60_000, m, p, n, b);
        let e = s.verify(Some(&old), m, p, Some(n), b).unwrap_err();
        assert!(e.to_string().contains("away from"), "{e}");
        for bad in [
            "",
            "1.2",
            "x.y.z",
            &format!("{}.00.{}", now_ms(), "0".repeat(64)),
        ] {
            let e = s.verify(Some(bad), m, p, Some(n), b).unwrap_err();
            assert!(e.to_string().contains("malformed"), "{bad}: {e}");
        }
        assert!(s.verify(None, m, p, Some(n), b).is_err());
        assert!(s.verify(Some(&s.sign(m, p, n, b)), m, p, None, b).is_err());
    }
}
