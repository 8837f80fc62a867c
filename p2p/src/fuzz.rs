//! Bodies of the `p2p_requests` fuzz target (and the unit test that runs it): everything a
//! node parses from the network or from disk must answer or refuse, never panic.

use crate::config::Config;
use crate::node::{parse_range, JoinReply, JoinRequest, Origin, ReportRequest};

/// Arbitrary bytes as each thing a node parses: a request's origin URL, its `Range` header
/// (against sizes around the interesting edges), the tree protocol's JSON bodies and a TOML
/// config.
pub fn requests(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(o) = Origin::parse(&s) {
        // A parsed origin is a blob URL of a registry: it round-trips and has a key.
        assert!(o.url == s && o.key().ends_with(&o.digest));
        assert!(o.digest.len() == 71 && !o.repository.is_empty());
    }
    for size in [0u64, 1, 4096, 1 << 20, u64::MAX] {
        if let Ok(Some((a, b))) = parse_range(Some(&s), size) {
            assert!(a < b && b <= size, "{s:?} against {size}: {a}..{b}");
        }
    }
    let _ = serde_json::from_slice::<JoinRequest>(data);
    let _ = serde_json::from_slice::<JoinReply>(data);
    let _ = serde_json::from_slice::<ReportRequest>(data);
    if let Ok(mut c) = Config::parse(&s) {
        // Not a file the fuzzer names.
        c.peer_secret_file = None;
        let _ = c.finish();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fuzz_body_survives_mutated_inputs() {
        let d = format!("sha256:{}", "0f".repeat(32));
        let seeds = [
            format!("http://127.0.0.1:5000/v2/library/app/blobs/{d}"),
            "bytes=0-1023".to_string(),
            "bytes=-18446744073709551615".to_string(),
            "bytes=18446744073709551614-18446744073709551615".to_string(),
            format!(
                "{{\"url\":\"http://h/v2/r/blobs/{d}\",\"node\":\"http://n:1\",\"failed\":null}}"
            ),
            "{\"size\":1,\"parent\":null,\"depth\":1}".to_string(),
            "role = \"agent\"\nroots = [\"http://r:1\"]\n[cache]\nmax_bytes = 4194304\n"
                .to_string(),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for seed in &seeds {
            super::requests(seed.as_bytes());
            for _ in 0..2000 {
                let mut b = seed.clone().into_bytes();
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % b.len();
                    match next() % 3 {
                        0 => b[i] = next() as u8,
                        1 => {
                            b.remove(i);
                        }
                        _ => {
                            let alphabet = b"/:-.,0aZ\"{}[]";
                            b.insert(i, alphabet[(next() as usize) % alphabet.len()]);
                        }
                    }
                    if b.is_empty() {
                        b.push(b'x');
                    }
                }
                super::requests(&b);
            }
        }
    }
}
