//! overlaybd-p2p end to end: a registry, roots and agents as processes on 127.0.0.1, and
//! readers that read a ZFile blob through their agent with every block verified.

use std::time::{Duration, Instant};

use e2e_tests::p2p::{logs, metric, trees, Cluster, ClusterOptions, P2pNode, ReadResult};
use e2e_tests::{require_tools, serial};

/// (agent index, what its reader got).
type Outcome = (usize, Result<ReadResult, String>);

fn all_nodes(c: &Cluster) -> Vec<&P2pNode> {
    c.roots.iter().chain(c.agents.iter()).collect()
}

/// A blob's cache and tree key (`scheme://registry/digest`), as the nodes name it.
fn blob_key(c: &Cluster, b: &e2e_tests::p2p::TestBlob) -> String {
    format!("http://{}/{}", c.host(), b.digest)
}

/// The root whose trees hold `key` (`host:port/digest`).
fn owner<'a>(c: &'a Cluster, key: &str) -> Option<&'a P2pNode> {
    c.roots
        .iter()
        .find(|r| !r.proc.log().is_empty() && trees(&r.url).get(key).is_some())
}

fn check(c: &Cluster, results: &[Outcome], want: &str) {
    for (i, r) in results {
        match r {
            Ok(r) => assert_eq!(r.raw_sha256, want, "reader {i}: wrong bytes"),
            Err(e) => panic!("reader {i}: {e}\n{}", logs(&all_nodes(c))),
        }
    }
}

fn read_all(c: &Cluster, b: &e2e_tests::p2p::TestBlob, which: &[usize]) -> Vec<Outcome> {
    std::thread::scope(|s| {
        let hs: Vec<_> = which
            .iter()
            .map(|&i| (i, s.spawn(move || c.read(Some(&c.agents[i]), b))))
            .collect();
        hs.into_iter()
            .map(|(i, h)| (i, h.join().expect("reader thread")))
            .collect()
    })
}

#[test]
fn sixteen_agents_read_one_blob_and_the_registry_serves_it_once() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let _g = serial();
    let c = Cluster::start(ClusterOptions {
        roots: 2,
        agents: 16,
        fanout: 4,
        ..Default::default()
    });
    let b = c.push_blob("p2p/big", 256, 1);
    let before = c.registry_bytes();
    let t = Instant::now();
    let all: Vec<usize> = (0..16).collect();
    let results = read_all(&c, &b, &all);
    let secs = t.elapsed().as_secs_f64();
    check(&c, &results, &b.raw_sha256);
    for (i, r) in &results {
        let r = r.as_ref().unwrap();
        assert_eq!(r.registry_bytes, 0, "reader {i} read the registry directly");
        assert_eq!(r.verification_failures, 0, "reader {i}");
    }
    let served = c.registry_bytes() - before;
    eprintln!(
        "16 readers × {} MB in {secs:.1} s; the registry sent {:.3}x the blob",
        b.size / 1_000_000,
        served as f64 / b.size as f64
    );
    assert!(
        served <= b.size * 105 / 100,
        "the registry sent {served} bytes for a {}-byte blob",
        b.size
    );
    // One root owns the blob: it fetched it, the other did nothing.
    let key = blob_key(&c, &b);
    let own = owner(&c, &key).expect("a root keeps the blob's tree");
    let fetched: Vec<u64> = c
        .roots
        .iter()
        .map(|r| metric(&r.url, "p2p_fetched_bytes_total{from=\"registry\"}"))
        .collect();
    assert!(
        fetched.iter().filter(|&&f| f > 0).count() == 1,
        "{fetched:?}"
    );
    let tree = &trees(&own.url)[&key]["shape"];
    assert_eq!(tree["nodes"], 16, "{tree}");
    assert_eq!(tree["root_children"], 4, "{tree}");
    assert!(tree["max_fanout"].as_u64().unwrap() <= 4, "{tree}");
    assert_eq!(tree["max_depth"], 2, "{tree}");
    // Agents served each other: 12 of the 16 got the blob from a parent agent.
    let from_parents: u64 = c
        .agents
        .iter()
        .map(|a| metric(&a.url, "p2p_fetched_bytes_total{from=\"parent\"}"))
        .sum();
    assert!(from_parents >= 12 * b.size * 9 / 10, "{from_parents}");
    // Every peer request was signed with the cluster's secret (`peer_secret_file`), and none
    // was refused.
    for n in c.roots.iter().chain(&c.agents) {
        let text = reqwest::blocking::get(format!("{}/metrics", n.url))
            .and_then(|r| r.text())
            .unwrap();
        assert!(
            text.contains("\np2p_peer_refused_total 0\n"),
            "{}: {text}",
            n.url
        );
    }
    // Each agent checks the whole blob against its digest in the background.
    let t = Instant::now();
    let digest_ok = || -> u64 {
        c.agents
            .iter()
            .map(|a| metric(&a.url, "p2p_digest_checks_total{result=\"ok\"}"))
            .sum()
    };
    while digest_ok() < 16 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        digest_ok(),
        16,
        "every agent checked the whole blob against its digest"
    );
}

/// Which node a test kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Root(usize),
    Agent(usize),
}

/// Reads on every agent; after `after`, `pick` chooses a node and it is SIGKILLed. Returns
/// the victim and each reader's result.
fn read_while_killing(
    c: &Cluster,
    b: &e2e_tests::p2p::TestBlob,
    after: Duration,
    pick: impl FnOnce(&Cluster) -> Victim,
) -> (Victim, Vec<Outcome>) {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..c.agents.len())
            .map(|i| (i, s.spawn(move || c.read(Some(&c.agents[i]), b))))
            .collect();
        std::thread::sleep(after);
        let v = pick(c);
        let pid = match v {
            Victim::Root(i) => c.roots[i].proc.pid(),
            Victim::Agent(i) => c.agents[i].proc.pid(),
        };
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let r = hs
            .into_iter()
            .map(|(i, h)| (i, h.join().expect("reader thread")))
            .collect();
        (v, r)
    })
}

#[test]
fn an_agent_killed_in_the_middle_of_the_tree_leaves_its_children_to_finish() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let _g = serial();
    // Fan-out 2: 2 agents under the root, 4 under them, 2 below those. 40 MB/s from the
    // registry: about 1.7 s for the blob, so the kill lands mid-transfer.
    let c = Cluster::start(ClusterOptions {
        roots: 2,
        agents: 8,
        fanout: 2,
        rate: 40_000_000,
        ..Default::default()
    });
    let b = c.push_blob("p2p/mid", 64, 2);
    let key = blob_key(&c, &b);
    let (victim, results) = read_while_killing(&c, &b, Duration::from_millis(700), |c| {
        let own = owner(c, &key).expect("the blob's tree");
        let t = trees(&own.url);
        let parents = t[&key]["parents"].as_array().unwrap().clone();
        // A node that is some node's parent and has a parent itself.
        let middle = parents
            .iter()
            .filter_map(|p| p[1].as_str())
            .find(|p| {
                parents
                    .iter()
                    .any(|q| q[0].as_str() == Some(*p) && q[1].is_string())
            })
            .or_else(|| parents.iter().filter_map(|p| p[1].as_str()).next())
            .unwrap_or_else(|| panic!("no agent has children: {t}"))
            .to_string();
        let i = c.agents.iter().position(|a| a.url == middle).unwrap();
        eprintln!("killing agent{i} ({middle}), a parent in {t}");
        Victim::Agent(i)
    });
    let Victim::Agent(v) = victim else {
        unreachable!()
    };
    let others: Vec<_> = results.into_iter().filter(|(i, _)| *i != v).collect();
    check(&c, &others, &b.raw_sha256);
    for (i, r) in &others {
        let r = r.as_ref().unwrap();
        assert_eq!(
            r.registry_bytes, 0,
            "reader {i} had to read the registry directly"
        );
    }
    let failovers: u64 = c
        .agents
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != v)
        .map(|(_, a)| metric(&a.url, "p2p_upstream_failures_total"))
        .sum();
    assert!(failovers > 0, "nobody noticed the killed parent");
}

#[test]
fn a_killed_root_hands_its_blobs_to_the_other() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let _g = serial();
    let c = Cluster::start(ClusterOptions {
        roots: 2,
        agents: 4,
        fanout: 4,
        rate: 40_000_000,
        ..Default::default()
    });
    let b = c.push_blob("p2p/root", 64, 3);
    let key = blob_key(&c, &b);
    let (victim, results) = read_while_killing(&c, &b, Duration::from_millis(700), |c| {
        let i = c
            .roots
            .iter()
            .position(|r| trees(&r.url).get(&key).is_some())
            .expect("a root owns the blob");
        Victim::Root(i)
    });
    check(&c, &results, &b.raw_sha256);
    for (i, r) in &results {
        assert_eq!(
            r.as_ref().unwrap().registry_bytes,
            0,
            "reader {i} read the registry directly"
        );
    }
    let Victim::Root(v) = victim else {
        unreachable!()
    };
    let other = &c.roots[1 - v];
    assert!(
        trees(&other.url).get(&key).is_some(),
        "the other root took the blob's tree over"
    );
    assert!(metric(&other.url, "p2p_fetched_bytes_total{from=\"registry\"}") > 0);
}

#[test]
fn an_agent_serving_bad_bytes_is_caught_and_avoided() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let _g = serial();
    // agent0 flips a byte in every 4 KiB it sends to other nodes.
    let c = Cluster::start(ClusterOptions {
        roots: 1,
        agents: 6,
        fanout: 2,
        corrupt: vec![0],
        ..Default::default()
    });
    let b = c.push_blob("p2p/bad", 32, 4);
    let key = blob_key(&c, &b);
    // agent0 joins first (under the root), so the next joiners below the root are its
    // children: agents 2 and 3 with fan-out 2.
    let r0 = c.read(Some(&c.agents[0]), &b).unwrap();
    assert_eq!(r0.raw_sha256, b.raw_sha256);
    let results = read_all(&c, &b, &[1, 2, 3, 4, 5]);
    check(&c, &results, &b.raw_sha256);
    let caught: Vec<(usize, u64, u64)> = results
        .iter()
        .map(|(i, r)| {
            let r = r.as_ref().unwrap();
            (*i, r.verification_failures, r.reports)
        })
        .collect();
    eprintln!("(reader, blocks failing verification, reports): {caught:?}");
    assert!(
        caught.iter().any(|&(_, f, r)| f > 0 && r > 0),
        "no reader caught the bad bytes: {caught:?}"
    );
    let t = trees(&c.roots[0].url);
    let avoided = t[&key]["shape"]["avoided"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        avoided.iter().any(|a| a.as_str() == Some(&c.agents[0].url)),
        "agent0 is not avoided: {t}"
    );
    // Nobody is given agent0 as a parent any more.
    for p in t[&key]["parents"].as_array().unwrap() {
        assert_ne!(p[1].as_str(), Some(c.agents[0].url.as_str()), "{t}");
    }
    assert!(metric(&c.roots[0].url, "p2p_reports_total") > 0);
    // Bad bytes are caught once per piece, not once per block: the reporting agents dropped
    // everything agent0 sent them.
    let blocks = 32 * 256u64;
    let total: u64 = caught.iter().map(|c| c.1).sum();
    assert!(total < blocks, "{total} bad blocks of {blocks}");
}

#[test]
fn no_cache_serves_a_private_blob_without_valid_credentials() {
    if !require_tools(&["docker-registry", "htpasswd"]) {
        return;
    }
    let _g = serial();
    let c = Cluster::start(ClusterOptions {
        roots: 2,
        agents: 2,
        basic: Some(("alice", "s3cret")),
        ..Default::default()
    });
    let b = c.push_blob("private/app", 8, 5);
    // alice reads it through agent0: every node on the way holds pieces of it now.
    let r = c.read(Some(&c.agents[0]), &b).unwrap();
    assert_eq!(r.raw_sha256, b.raw_sha256);
    assert!(r.agent_bytes >= b.size);
    // alice may read private/other too (another blob): that allowance must not open
    // private/app's blob under private/other's name.
    let other = c.push_blob("private/other", 1, 8);
    assert_eq!(
        c.read(Some(&c.agents[0]), &other).unwrap().raw_sha256,
        other.raw_sha256
    );
    let url = format!("http://{}/v2/private/app/blobs/{}", c.host(), b.digest);
    let other_repo = format!("http://{}/v2/private/other/blobs/{}", c.host(), b.digest);
    let http = reqwest::blocking::Client::new();
    let direct = http
        .get(&url)
        .basic_auth("alice", Some("s3cret"))
        .header("Range", "bytes=0-4095")
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(direct.len(), 4096);
    for n in all_nodes(&c) {
        for (what, target, auth, peer) in [
            ("no credentials", &url, None, false),
            ("no credentials, as a child node", &url, None, true),
            ("a wrong password", &url, Some(("alice", "guess")), false),
            (
                "a wrong password, as a child node",
                &url,
                Some(("alice", "guess")),
                true,
            ),
            (
                "another repository",
                &other_repo,
                Some(("alice", "s3cret")),
                false,
            ),
        ] {
            let mut req = http
                .get(format!("{}/dadip2p/{target}", n.url))
                .header("Range", "bytes=0-4095");
            if let Some((u, p)) = auth {
                req = req.basic_auth(u, Some(p));
            }
            if peer {
                req = req.header("X-P2P-Node", "http://127.0.0.1:1");
            }
            let resp = req.send().unwrap();
            let status = resp.status().as_u16();
            let www = resp.headers().get("www-authenticate").is_some();
            let body = resp.bytes().unwrap();
            assert!(
                matches!(status, 401 | 403 | 404),
                "{} with {what}: {status}",
                n.proc.name
            );
            assert!(
                body.len() < 512 && !body.windows(64).any(|w| direct.windows(64).any(|d| d == w)),
                "{} with {what}: the body carries blob bytes",
                n.proc.name
            );
            if status == 401 {
                assert!(
                    www,
                    "{} with {what}: a 401 without the registry's challenge",
                    n.proc.name
                );
            }
        }
        // With alice's credentials, every node serves it.
        let ok = http
            .get(format!("{}/dadip2p/{url}", n.url))
            .basic_auth("alice", Some("s3cret"))
            .header("Range", "bytes=0-4095")
            .send()
            .unwrap();
        assert_eq!(ok.status().as_u16(), 206, "{}", n.proc.name);
        assert_eq!(ok.bytes().unwrap(), direct, "{}", n.proc.name);
    }
    // Credentials go to the registry and the roots only: children ask their parents
    // without them.
    for n in all_nodes(&c) {
        assert_eq!(
            metric(&n.url, "p2p_peer_credentials_total"),
            0,
            "{}",
            n.proc.name
        );
    }
    let served: u64 = c
        .roots
        .iter()
        .map(|r| metric(&r.url, "p2p_served_bytes_total{to=\"child\"}"))
        .sum();
    assert!(served >= b.size, "{served}");
    let denied: u64 = all_nodes(&c)
        .iter()
        .map(|n| metric(&n.url, "p2p_access_denied_total"))
        .sum();
    assert!(denied >= 4, "{denied}");
}

#[test]
fn our_daemon_reads_a_lazily_pulled_image_through_an_agent() {
    if !e2e_tests::require() {
        return;
    }
    let _g = serial();
    // The cluster's own registry is not used: the nodes fetch whatever registry the daemon's
    // requests name (the Env's relay).
    let c = Cluster::start(ClusterOptions {
        roots: 1,
        agents: 1,
        ..Default::default()
    });
    let env = e2e_tests::Env::start(e2e_tests::Options {
        p2p_agent: Some(c.agents[0].prefix()),
        ..Default::default()
    });
    let (image, _) = env.converted_sample("p2p-sample", 16);
    env.rpull(&image);
    let out = env.ctr(
        "default",
        &["run", "--rm", "--snapshotter", "overlaybd", &image, "p2p1"],
    );
    assert_eq!(out.trim(), e2e_tests::image::GREETING, "{}", env.logs());
    let agent = &c.agents[0].url;
    let root = &c.roots[0].url;
    let to_daemon = metric(agent, "p2p_served_bytes_total{to=\"client\"}");
    let from_root = metric(agent, "p2p_fetched_bytes_total{from=\"root\"}");
    let from_registry = metric(root, "p2p_fetched_bytes_total{from=\"registry\"}");
    eprintln!("agent → daemon {to_daemon} B, root → agent {from_root} B, registry → root {from_registry} B");
    assert!(
        to_daemon > 0,
        "the daemon did not use the agent ({} requests)\n{}\n{}",
        metric(agent, "p2p_requests_total"),
        logs(&all_nodes(&c)),
        env.logs()
    );
    assert!(from_root > 0 && from_registry > 0);
    let dlog = env.daemon.as_ref().unwrap().log();
    assert!(!dlog.contains("verification"), "{dlog}");
}

#[test]
fn uploads_keep_to_their_limit_and_pieces_survive_a_restart() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let _g = serial();
    // Every node sends at most 20 MB/s to its children; fan-out 1 makes a chain
    // root → agent0 → agent1.
    let mut c = Cluster::start(ClusterOptions {
        roots: 1,
        agents: 2,
        fanout: 1,
        upload_rate: 20_000_000,
        persistent: true,
        ..Default::default()
    });
    let b = c.push_blob("p2p/limit", 32, 6);
    let r0 = c.read(Some(&c.agents[0]), &b).unwrap();
    assert_eq!(r0.raw_sha256, b.raw_sha256);
    let floor = b.size as f64 / 20e6 * 0.9;
    assert!(
        r0.secs >= floor,
        "{:.2} s: faster than the root's upload limit allows",
        r0.secs
    );
    let to_child = metric(&c.roots[0].url, "p2p_served_bytes_total{to=\"child\"}");
    assert!(to_child >= b.size, "{to_child}");
    let r1 = c.read(Some(&c.agents[1]), &b).unwrap();
    assert_eq!(r1.raw_sha256, b.raw_sha256);
    assert!(
        r1.secs >= floor,
        "{:.2} s: faster than agent0's upload limit allows",
        r1.secs
    );
    assert!(metric(&c.agents[0].url, "p2p_served_bytes_total{to=\"child\"}") >= b.size);
    eprintln!(
        "at 20 MB/s per node: {:.2} s and {:.2} s for {} bytes",
        r0.secs, r1.secs, b.size
    );

    // agent0 restarts and serves the blob from its disk: nothing more from the root, and the
    // registry sends only the answers to the access checks.
    let root_before = metric(&c.roots[0].url, "p2p_served_bytes_total{to=\"child\"}");
    c.restart_agent(0);
    let reg_before = c.registry_bytes();
    let r = c.read(Some(&c.agents[0]), &b).unwrap();
    assert_eq!(r.raw_sha256, b.raw_sha256);
    assert_eq!(r.registry_bytes, 0);
    assert_eq!(
        metric(&c.roots[0].url, "p2p_served_bytes_total{to=\"child\"}"),
        root_before,
        "the restarted agent fetched again"
    );
    let reg = c.registry_bytes() - reg_before;
    assert!(reg < 64 << 10, "the registry sent {reg} bytes");
    assert!(metric(&c.agents[0].url, "p2p_cache_lookups_total{result=\"hit\"}") > 0);
}
