//! The registry/config fuzz body over seeds and random mutations of them (the fuzz target
//! `registry_config` runs the same body under libFuzzer).

use rand::{Rng, SeedableRng};

const SEEDS: &[&str] = &[
    "\0Bearer realm=\"https://auth.example/token\",service=\"reg\",scope=\"repository:a/b:pull\"",
    "\0Basic realm=\"x\"",
    "\x01{\"token\":\"abc\",\"expires_in\":300}",
    "\x01{\"access_token\":\"x\",\"expires_in\":18446744073709551615}",
    "\x02{\"auths\":{\"https://index.docker.io/v1/\":{\"auth\":\"dXNlcjpwYXNz\"},\"127.0.0.1:5000\":{\"username\":\"a\",\"password\":\"b\"}}}",
    "\x03server = \"https://reg.example:5000\"\n[host.\"http://m:1/v2\"]\ncapabilities = [\"pull\"]\nca = [\"a\", \"b\"]\nclient = [[\"c\", \"k\"]]\n[host.\"http://m:1/v2\".header]\nx = [\"1\", \"2\"]\n",
    "\x04OBDCACHE\x01\0\0\0\0\x10\0\0\0\0\x10\0\0\0\0\0\x01\0\0\0\0\0\0\0",
];

#[test]
fn parsers_never_panic_on_mutated_input() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for seed in SEEDS {
        overlaybd::registry::fuzz::config(seed.as_bytes());
        for _ in 0..3000 {
            let mut d = seed.as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..6) {
                match rng.gen_range(0..4) {
                    0 if d.len() > 1 => {
                        let i = rng.gen_range(1..d.len());
                        d[i] = rng.gen();
                    }
                    1 if d.len() > 1 => {
                        let i = rng.gen_range(1..d.len());
                        d.truncate(i);
                    }
                    2 => {
                        let i = rng.gen_range(1..=d.len());
                        let set = b"\"[]{}=:,\\\n.0";
                        let b = set[rng.gen_range(0..set.len())];
                        d.insert(i, b);
                    }
                    _ => {
                        let i = rng.gen_range(1..=d.len());
                        let j = rng.gen_range(1..=d.len());
                        let (a, b) = (i.min(j), i.max(j));
                        let piece = d[a..b].to_vec();
                        d.splice(b..b, piece);
                    }
                }
            }
            overlaybd::registry::fuzz::config(&d);
        }
    }
    // A valid record with unit size 0 (CRC correct) is refused, not divided by.
    let mut r = b"OBDCACHE\x01\0\0\0\0\0\0\0\0\x10\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
    let crc = crc32c::crc32c(&r);
    r.extend_from_slice(&crc.to_le_bytes());
    let mut d = vec![4u8];
    d.extend_from_slice(&r);
    overlaybd::registry::fuzz::config(&d);
}
