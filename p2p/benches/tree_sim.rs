//! A simulation of one blob spreading through the tree that `p2p::topology::Tree` builds,
//! for more hosts than this machine can run. The tree is the real one (the same joins a root
//! answers); the transfer is a fluid model stepped every 0.5 ms:
//!
//! - the owning root reads the registry at `registry` bandwidth;
//! - every node streams from its parent as the bytes arrive (a byte reaches a child one step,
//!   0.5 ms, after its parent got it), at its download bandwidth or its share of the parent's
//!   upload bandwidth
//!   (split among the parent's children still reading), whichever is lower;
//! - each piece costs one round trip without data (`rtt`), so the effective rate is
//!   `piece / (piece / rate + rtt)`;
//! - optionally, the sum of all transfers is capped (`machine`), which models many nodes
//!   sharing one machine's CPU, as the measured runs on 127.0.0.1 do.
//!
//! Prints, per scenario, tree depth and fan-out, completion time of the last host (and the
//! median), and the registry's bytes as a multiple of the blob.
//!
//! `cargo bench -p p2p --bench tree_sim` (a table of scenarios), or with
//! `-- hosts fanout piece_mib blob_mib host_gbit registry_gbit rtt_ms [machine_mb_s]` for one.

use std::time::{Duration, Instant};

use p2p::topology::Tree;

#[derive(Clone, Copy, Debug)]
struct Params {
    hosts: usize,
    fanout: usize,
    piece: f64,
    blob: f64,
    /// Bytes per second, each direction, per host (roots too).
    host_bw: f64,
    registry_bw: f64,
    rtt: f64,
    /// Cap on the sum of all transfers (bytes per second), 0 = none.
    machine: f64,
}

#[derive(Debug)]
struct Outcome {
    depth: u32,
    max_fanout: usize,
    last: f64,
    median: f64,
    registry_x: f64,
    build: Duration,
}

fn simulate(p: &Params) -> Outcome {
    let t = Instant::now();
    let now = Instant::now();
    let mut tree = Tree::new(p.fanout, Duration::from_secs(3600));
    for i in 0..p.hosts {
        tree.join(&format!("h{i}"), None, now);
    }
    let build = t.elapsed();
    let shape = tree.shape();
    let index = |n: &str| n[1..].parse::<usize>().expect("h<i>");
    let h = p.hosts;
    // Node h is the root.
    let mut parent = vec![h; h];
    let mut depth = vec![0u32; h];
    for (n, par, d) in tree.parents() {
        let i = index(&n);
        parent[i] = par.as_deref().map_or(h, index);
        depth[i] = d;
    }
    // Parents before children.
    let mut order: Vec<usize> = (0..h).collect();
    order.sort_by_key(|&i| depth[i]);
    let eff = |rate: f64| {
        if rate <= 0.0 {
            0.0
        } else {
            p.piece / (p.piece / rate + p.rtt)
        }
    };
    let dt = 0.0005;
    let mut recv = vec![0.0f64; h + 1];
    let mut done = vec![f64::NAN; h];
    let mut left = h;
    let mut time = 0.0;
    let mut active = vec![0usize; h + 1];
    let mut inc = vec![0.0f64; h + 1];
    while left > 0 && time < 36_000.0 {
        active.iter_mut().for_each(|a| *a = 0);
        for i in 0..h {
            if recv[i] < p.blob {
                active[parent[i]] += 1;
            }
        }
        inc[h] = (eff(p.registry_bw.min(p.host_bw)) * dt).min(p.blob - recv[h]);
        for &i in &order {
            inc[i] = 0.0;
            if recv[i] >= p.blob {
                continue;
            }
            let par = parent[i];
            let share = p.host_bw / active[par].max(1) as f64;
            let rate = eff(p.host_bw.min(share));
            // Only what the parent had a step ago: each hop adds 0.5 ms.
            let cap = (recv[par] - recv[i]).max(0.0);
            inc[i] = (rate * dt).min(cap).min(p.blob - recv[i]);
        }
        if p.machine > 0.0 {
            let total: f64 = inc.iter().sum();
            let budget = p.machine * dt;
            if total > budget {
                let k = budget / total;
                inc.iter_mut().for_each(|x| *x *= k);
            }
        }
        time += dt;
        for i in 0..=h {
            recv[i] += inc[i];
        }
        for i in 0..h {
            if done[i].is_nan() && recv[i] >= p.blob - 0.5 {
                done[i] = time;
                left -= 1;
            }
        }
    }
    let mut d = done.clone();
    d.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    Outcome {
        depth: shape.max_depth,
        max_fanout: shape.max_fanout.max(shape.root_children),
        last: d[h - 1],
        median: d[h / 2],
        // One owning root per blob reads it once.
        registry_x: recv[h] / p.blob,
        build,
    }
}

fn row(name: &str, p: &Params) {
    let o = simulate(p);
    println!(
        "{name:<34} {:>6} {:>3} {:>6.0} {:>6.0} {:>5} {:>4} {:>8.2} {:>8.2} {:>6.2} {:>7.0}",
        p.hosts,
        p.fanout,
        p.piece / (1 << 20) as f64,
        p.blob / (1 << 20) as f64,
        o.depth,
        o.max_fanout,
        o.median,
        o.last,
        o.registry_x,
        o.build.as_secs_f64() * 1000.0
    );
}

fn main() {
    let a: Vec<f64> = std::env::args()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    println!(
        "{:<34} {:>6} {:>3} {:>6} {:>6} {:>5} {:>4} {:>8} {:>8} {:>6} {:>7}",
        "scenario",
        "hosts",
        "fo",
        "piece",
        "MiB",
        "depth",
        "fo*",
        "p50 s",
        "last s",
        "reg.x",
        "tree ms"
    );
    let mib = (1 << 20) as f64;
    let gbit = 1e9 / 8.0;
    if a.len() >= 7 {
        let p = Params {
            hosts: a[0] as usize,
            fanout: a[1] as usize,
            piece: a[2] * mib,
            blob: a[3] * mib,
            host_bw: a[4] * gbit,
            registry_bw: a[5] * gbit,
            rtt: a[6] / 1000.0,
            machine: a.get(7).map_or(0.0, |m| m * 1e6),
        };
        row("custom", &p);
        return;
    }
    let dc = Params {
        hosts: 10_000,
        fanout: 4,
        piece: mib,
        blob: 64.0 * mib,
        host_bw: 10.0 * gbit,
        registry_bw: 10.0 * gbit,
        rtt: 0.0002,
        machine: 0.0,
    };
    // What a container start reads lazily (DADI's anchor: 10,000 containers in 3-4 s).
    for fanout in [2, 4, 8, 16] {
        row("start set 64 MiB, 10 Gbit/s", &Params { fanout, ..dc });
    }
    row(
        "start set 64 MiB, 1,000 hosts",
        &Params { hosts: 1000, ..dc },
    );
    for piece_mib in [0.25, 4.0] {
        row(
            "start set 64 MiB, piece size",
            &Params {
                piece: piece_mib * mib,
                ..dc
            },
        );
    }
    row("start set 64 MiB, 1 ms rtt", &Params { rtt: 0.001, ..dc });
    row(
        "whole 256 MiB blob",
        &Params {
            blob: 256.0 * mib,
            ..dc
        },
    );
    // Kraken's anchor: 100 MB-1 GB blobs to thousands of hosts in under 30 s.
    row(
        "1 GiB blob, 25 Gbit/s",
        &Params {
            blob: 1024.0 * mib,
            host_bw: 25.0 * gbit,
            ..dc
        },
    );
    row(
        "1 GiB blob, 1 Gbit/s hosts",
        &Params {
            blob: 1024.0 * mib,
            host_bw: gbit,
            ..dc
        },
    );
    // The measured runs: N agents on one 2-core machine, 256 MiB, all transfers sharing the
    // machine (calibrated from the measured single reader; see docs/benchmarks.md).
    let machine = std::env::var("P2P_SIM_MACHINE_MB_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    if machine > 0.0 {
        for n in [1, 4, 16, 64] {
            row(
                &format!("this machine, {machine:.0} MB/s shared"),
                &Params {
                    hosts: n,
                    blob: 256.0 * mib,
                    host_bw: 100.0 * gbit,
                    registry_bw: 100.0 * gbit,
                    rtt: 0.0001,
                    machine: machine * 1e6,
                    ..dc
                },
            );
        }
    }
}
