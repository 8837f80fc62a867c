//! N readers on 127.0.0.1 read the same blob at once, each through its own overlaybd-p2p
//! agent (2 roots, fan-out 4) and, for comparison, each from the registry directly. Every
//! reader verifies every block (CRC and the BLAKE3 table against the trusted root), as the
//! daemon does. Prints, per N: the time until the last reader is done, and the bytes the
//! registry sent, as a multiple of the blob.
//!
//! `cargo bench -p e2e-tests --bench p2p_tree [-- BLOB_MIB [N…]]` (default 256 MiB; N = 1 4 16
//! 64). Needs docker-registry.

use std::time::Instant;

use e2e_tests::p2p::{Cluster, ClusterOptions, TestBlob};
use e2e_tests::require_tools;

/// (seconds until the last reader finished, registry bytes / blob size).
fn run(c: &Cluster, b: &TestBlob, through_agents: bool) -> (f64, f64) {
    let before = c.registry_bytes();
    let t = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..c.agents.len())
            .map(|i| {
                s.spawn(move || {
                    let agent = through_agents.then(|| &c.agents[i]);
                    let r = c
                        .read(agent, b)
                        .unwrap_or_else(|e| panic!("reader {i}: {e}"));
                    assert_eq!(r.raw_sha256, b.raw_sha256, "reader {i}: wrong bytes");
                })
            })
            .collect();
        for h in hs {
            h.join().expect("reader");
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let load = (c.registry_bytes() - before) as f64 / b.size as f64;
    (secs, load)
}

fn main() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let mib = args.first().copied().unwrap_or(256);
    let ns: Vec<usize> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![1, 4, 16, 64]
    };
    println!("p2p_tree: {mib} MiB blob (random, LZ4 ZFile with the integrity table), 2 roots, fan-out 4, 1 MiB pieces");
    println!(
        "{:>4} {:>12} {:>14} {:>12} {:>14} {:>10}",
        "N", "direct s", "direct reg.x", "tree s", "tree reg.x", "tree/1"
    );
    let mut one = None;
    for n in ns {
        let c = Cluster::start(ClusterOptions {
            roots: 2,
            agents: n,
            fanout: 4,
            // Agents need not keep the whole blob: children read pieces soon after their
            // parent; 64 agents × 256 MiB would not fit this machine's memory.
            agent_cache_bytes: if n > 16 { 96 << 20 } else { 1 << 30 },
            ..Default::default()
        });
        let b = c.push_blob("bench/blob", mib, 7);
        let (ds, dl) = run(&c, &b, false);
        let (ts, tl) = run(&c, &b, true);
        let base = *one.get_or_insert(ts);
        println!(
            "{n:>4} {ds:>12.2} {dl:>14.3} {ts:>12.2} {tl:>14.3} {:>10.2}",
            ts / base
        );
    }
}
