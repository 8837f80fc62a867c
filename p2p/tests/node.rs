//! P2P nodes in this process, on 127.0.0.1, in front of a real registry (Debian's
//! `docker-registry`): a root and one or two agents, each on its own runtime so that a test
//! can kill one (its listener and connections go with it). The end-to-end tests
//! (`tests/tests/p2p.rs`) run the same through processes and our daemon's verifying reader;
//! these check the node alone, by its bytes and its counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p::config::{Config, Role};
use p2p::metrics::Metrics;
use p2p::node::Node;
use reqwest::blocking::{Client, Response};
use test_support::registry::Registry;

/// The smallest piece a node takes: blobs of a few pieces stay small.
const PIECE: u64 = 64 << 10;

/// A node serving on 127.0.0.1 from its own runtime.
struct TestNode {
    url: String,
    node: Arc<Node>,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestNode {
    fn start(role: Role, roots: &[&TestNode], tweak: impl FnOnce(&mut Config)) -> TestNode {
        Self::start_at("127.0.0.1:0", role, roots, tweak)
    }

    /// A node on `addr` (`127.0.0.1:0`: a new port; a killed node's: its restart).
    fn start_at(
        addr: &str,
        role: Role,
        roots: &[&TestNode],
        tweak: impl FnOnce(&mut Config),
    ) -> TestNode {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // A killed node's runtime lets go of its port in the background: wait for it.
        let t = Instant::now();
        let listener = loop {
            match rt.block_on(tokio::net::TcpListener::bind(addr)) {
                Ok(l) => break l,
                Err(e) if t.elapsed() < Duration::from_secs(10) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let mut cfg = Config {
            role,
            listen: addr.to_string(),
            roots: roots.iter().map(|r| r.url.clone()).collect(),
            piece_size: PIECE,
            stall_timeout_ms: 2000,
            ..Config::default()
        };
        tweak(&mut cfg);
        let node = Node::new(cfg.finish().unwrap()).unwrap();
        rt.spawn(p2p::node::serve(node.clone(), listener));
        TestNode {
            url: format!("http://{addr}"),
            node,
            rt: Some(rt),
        }
    }

    fn root() -> TestNode {
        Self::start(Role::Root, &[], |_| {})
    }

    fn agent(root: &TestNode) -> TestNode {
        Self::start(Role::Agent, &[root], |_| {})
    }

    /// Stops serving at once: the listener and every connection are dropped.
    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// This node's URL for the origin blob URL `origin`.
    fn blob(&self, origin: &str) -> String {
        format!("{}/{}/{origin}", self.url, self.node.cfg.api_key)
    }

    fn count(&self, which: fn(&Metrics) -> &AtomicU64) -> u64 {
        which(&self.node.metrics).load(Ordering::Relaxed)
    }

    fn metrics(&self) -> String {
        self.node.render_metrics()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `data` pushed to `repository` of `reg`; its origin blob URL.
fn push(reg: &Registry, repository: &str, data: &[u8]) -> String {
    let digest = reg.push(repository, data);
    format!("{}/v2/{repository}/blobs/{digest}", reg.url)
}

fn ok_body(r: Response, status: u16) -> Vec<u8> {
    assert_eq!(r.status().as_u16(), status, "{:?}", r.headers());
    r.bytes().unwrap().to_vec()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(20), "{what}: not in 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two agents read a blob: both get the registry's bytes, and the registry sent it once
/// (to the root, which sent it to each agent once).
#[test]
fn two_agents_read_a_blob_fetched_from_the_registry_once() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let blob = test_support::random(5 * PIECE as usize + 1234, 1);
    let origin = push(&reg, "p2p/app", &blob);
    let root = TestNode::root();
    let (a, b) = (TestNode::agent(&root), TestNode::agent(&root));
    let c = client();
    for agent in [&a, &b] {
        let r = c.get(agent.blob(&origin)).send().unwrap();
        assert_eq!(r.headers()["x-p2p-source"], agent.url.as_str());
        assert!(ok_body(r, 200) == blob, "{} served other bytes", agent.url);
    }
    let len = blob.len() as u64;
    assert_eq!(root.count(|m| &m.fetched_registry), len);
    assert_eq!(root.count(|m| &m.served_child), 2 * len);
    for agent in [&a, &b] {
        assert_eq!(agent.count(|m| &m.fetched_registry), 0);
        let fetched = agent.count(|m| &m.fetched_root) + agent.count(|m| &m.fetched_parent);
        assert_eq!(fetched, len, "{}", agent.url);
        assert_eq!(agent.count(|m| &m.served_client), len);
    }
    // Whole blobs are checked against their digest, off the request path.
    wait_until("the root's digest check", || {
        root.count(|m| &m.digest_checks) == 1
    });
    assert_eq!(root.count(|m| &m.digest_failures), 0);
}

/// Ranges come back as the registry's bytes of that range, and only the pieces they need
/// (and one read ahead) are fetched.
#[test]
fn range_reads() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let blob = test_support::random(5 * PIECE as usize + 1234, 2);
    let len = blob.len() as u64;
    let origin = push(&reg, "p2p/ranges", &blob);
    let root = TestNode::root();
    let a = TestNode::agent(&root);
    let c = client();
    let get = |range: &str| {
        c.get(a.blob(&origin))
            .header("Range", range)
            .send()
            .unwrap()
    };

    let (from, to) = (PIECE - 100, 2 * PIECE + 50);
    let r = get(&format!("bytes={from}-{to}"));
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {from}-{to}/{len}").as_str()
    );
    assert!(ok_body(r, 206) == blob[from as usize..=to as usize]);
    // Pieces 0 to 2, and piece 3 read ahead.
    wait_until("the read-ahead", || {
        a.count(|m| &m.fetched_root) == 4 * PIECE
    });

    let r = get("bytes=-10");
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {}-{}/{len}", len - 10, len - 1).as_str()
    );
    assert!(ok_body(r, 206) == blob[blob.len() - 10..]);
    wait_until("the last piece", || {
        a.count(|m| &m.fetched_root) == 4 * PIECE + 1234
    });
    assert_eq!(a.count(|m| &m.cache_misses), 5);

    let r = c.head(a.blob(&origin)).send().unwrap();
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    assert!(ok_body(r, 200).is_empty());

    let r = get(&format!("bytes={len}-"));
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );
    ok_body(r, 416);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(a.count(|m| &m.fetched_root), 4 * PIECE + 1234);
}

/// root → a → b (fan-out 1). b's reader finds a bad range: b drops every piece a sent it,
/// reports a to the root (which avoids it), and reads them again from the root.
#[test]
fn a_bad_range_drops_the_pieces_and_the_next_read_fetches_them_again() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let blob = test_support::random(3 * PIECE as usize + 77, 3);
    let len = blob.len() as u64;
    let origin = push(&reg, "p2p/bad", &blob);
    let root = TestNode::start(Role::Root, &[], |c| c.fanout = 1);
    let a = TestNode::agent(&root);
    let b = TestNode::agent(&root);
    let c = client();
    assert!(ok_body(c.get(a.blob(&origin)).send().unwrap(), 200) == blob);
    assert!(ok_body(c.get(b.blob(&origin)).send().unwrap(), 200) == blob);
    assert_eq!(b.count(|m| &m.fetched_parent), len, "b's parent is a");
    assert!(b.metrics().contains("p2p_cache_pieces 4\n"));

    let r = c
        .delete(b.blob(&origin))
        .header("Range", format!("bytes={}-{}", PIECE, PIECE + 10))
        .send()
        .unwrap();
    ok_body(r, 204);
    assert_eq!(b.count(|m| &m.verification_failures), 1);
    assert_eq!(b.count(|m| &m.reports), 1);
    assert_eq!(root.count(|m| &m.reports), 1);
    assert!(
        b.metrics().contains("p2p_cache_pieces 0\n"),
        "{}",
        b.metrics()
    );
    let trees: serde_json::Value = c
        .get(format!("{}/_p2p/v1/trees", root.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let tree = trees.as_object().unwrap().values().next().unwrap();
    assert_eq!(tree["shape"]["avoided"], serde_json::json!([a.url]));

    assert!(ok_body(c.get(b.blob(&origin)).send().unwrap(), 200) == blob);
    assert_eq!(b.count(|m| &m.fetched_parent), len);
    assert_eq!(b.count(|m| &m.fetched_root), len);
    // The root still held the blob.
    assert_eq!(root.count(|m| &m.fetched_registry), len);
}

/// root → a → b (fan-out 1), a sending slowly. a dies while b reads: b finishes from the
/// root, resuming each piece where it stopped.
#[test]
fn an_agent_whose_parent_dies_finishes_from_the_root() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let blob = test_support::random(8 * PIECE as usize, 4);
    let len = blob.len() as u64;
    let origin = push(&reg, "p2p/dies", &blob);
    let root = TestNode::start(Role::Root, &[], |c| c.fanout = 1);
    let mut a = TestNode::start(Role::Agent, &[&root], |c| {
        c.upload.per_child_bytes_per_sec = 300_000;
    });
    let b = TestNode::agent(&root);
    let c = client();
    assert!(ok_body(c.get(a.blob(&origin)).send().unwrap(), 200) == blob);

    let url = b.blob(&origin);
    let reader = std::thread::spawn(move || client().get(url).send().unwrap());
    wait_until("b's first bytes from a", || {
        b.count(|m| &m.fetched_parent) > 0
    });
    a.kill();
    let got = ok_body(reader.join().unwrap(), 200);
    assert!(got == blob, "b read other bytes");
    let (from_a, from_root) = (b.count(|m| &m.fetched_parent), b.count(|m| &m.fetched_root));
    assert!(
        from_a < len && from_root > 0,
        "a {from_a}, root {from_root}"
    );
    assert_eq!(from_a + from_root, len, "a piece was fetched twice");
    assert!(b.count(|m| &m.upstream_failures) >= 1);
    assert_eq!(b.count(|m| &m.fetched_registry), 0);
}

/// `bytes=<first piece>-<last piece>` of a blob, inclusive.
fn pieces(first: u64, last: u64) -> String {
    format!("bytes={}-{}", first * PIECE, (last + 1) * PIECE - 1)
}

/// root → a → b (fan-out 1). The root restarts: its trees and vouches are gone. Each node its
/// upstream now refuses (403) joins again, which rebuilds the tree and the vouches from the
/// children: nobody reads the registry but the new root (for pieces nobody had), and nobody
/// is blamed (b stays under a, not under the root).
#[test]
fn a_root_restart_is_rebuilt_from_its_children() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let blob = test_support::random(8 * PIECE as usize, 6);
    let origin = push(&reg, "p2p/restart", &blob);
    let mut root = TestNode::start(Role::Root, &[], |c| c.fanout = 1);
    let (a, b) = (TestNode::agent(&root), TestNode::agent(&root));
    let c = client();
    let get = |n: &TestNode, first: u64, last: u64| {
        let r = c
            .get(n.blob(&origin))
            .header("range", pieces(first, last))
            .send()
            .unwrap();
        let got = ok_body(r, 206);
        let want = &blob[(first * PIECE) as usize..((last + 1) * PIECE) as usize];
        assert!(got == want, "{} served other bytes", n.url);
    };
    get(&a, 0, 3);
    wait_until("a's fills", || {
        a.metrics().contains("p2p_fills{state=\"running\"} 0\n")
    });
    // b joins (under a) and proves its access, without reading: a has not asked about b yet.
    assert_eq!(c.head(b.blob(&origin)).send().unwrap().status(), 200);

    let addr = root.url.trim_start_matches("http://").to_string();
    root.kill();
    let root = TestNode::start_at(&addr, Role::Root, &[], |c| c.fanout = 1);
    // a asks the new root, which does not know a: refused, a joins again.
    get(&a, 4, 5);
    // b asks a, which asks the new root to vouch for b: refused, b joins again, under a.
    get(&b, 0, 3);

    for n in [&a, &b] {
        assert_eq!(
            n.count(|m| &m.fetched_registry),
            0,
            "{} read the registry",
            n.url
        );
    }
    assert_eq!(b.count(|m| &m.fetched_root), 0, "b left a for the root");
    assert!(b.count(|m| &m.fetched_parent) >= 4 * PIECE);
    assert!(
        b.count(|m| &m.upstream_failures) >= 1,
        "b was never refused"
    );
    // The new root read from the registry only what a asked for and did not hold (piece 5,
    // piece 4 if a's read-ahead had not fetched it, and what it reads ahead).
    let fetched = root.count(|m| &m.fetched_registry);
    assert!((PIECE..=4 * PIECE).contains(&fetched), "{fetched}");
    assert!(root.count(|m| &m.joins) >= 2);
    let trees = c.get(format!("{}/_p2p/v1/trees", root.url)).send().unwrap();
    let trees = trees.text().unwrap();
    assert!(
        trees.contains(&format!("[\"{}\",\"{}\",2]", b.url, a.url)),
        "b is not under a: {trees}"
    );
}

/// The root is down for a while: its agent reads the registry meanwhile, and goes back to
/// the root once it answers again (asked every 10 s), rather than staying on the registry.
#[test]
fn an_agent_returns_to_a_restarted_root() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let blob = test_support::random(8 * PIECE as usize, 7);
    let origin = push(&reg, "p2p/back", &blob);
    let mut root = TestNode::root();
    let a = TestNode::agent(&root);
    let c = client();
    let get = |first: u64, last: u64| {
        let r = c
            .get(a.blob(&origin))
            .header("range", pieces(first, last))
            .send()
            .unwrap();
        let want = &blob[(first * PIECE) as usize..((last + 1) * PIECE) as usize];
        assert!(ok_body(r, 206) == want, "a served other bytes");
    };
    get(0, 0);
    let addr = root.url.trim_start_matches("http://").to_string();
    root.kill();
    get(2, 2);
    // What a reads ahead is done before counting.
    wait_until("a's fills", || {
        a.metrics().contains("p2p_fills{state=\"running\"} 0\n")
    });
    let from_registry = a.count(|m| &m.fetched_registry);
    assert!(
        from_registry > 0,
        "no root, yet a did not read the registry"
    );
    let root = TestNode::start_at(&addr, Role::Root, &[], |_| {});
    std::thread::sleep(Duration::from_secs(11));
    let from_root = a.count(|m| &m.fetched_root);
    get(5, 6);
    assert_eq!(
        a.count(|m| &m.fetched_registry),
        from_registry,
        "a stayed on the registry"
    );
    assert!(a.count(|m| &m.fetched_root) >= from_root + 2 * PIECE);
    assert_eq!(root.count(|m| &m.joins), 1);
}

/// A private repository: a request without (or with wrong) credentials gets the registry's
/// 401 and its challenge, even once the agent holds the blob; the right ones get the bytes.
#[test]
fn a_private_blob_needs_the_registrys_credentials() {
    let Some(reg) = Registry::start(Some(("user", "pass"))) else {
        return;
    };
    let blob = test_support::random(2 * PIECE as usize + 5, 5);
    let origin = push(&reg, "p2p/private", &blob);
    let root = TestNode::root();
    let a = TestNode::agent(&root);
    let c = client();
    let refused = |r: Response| {
        assert_eq!(r.status().as_u16(), 401, "{:?}", r.text());
        let challenge = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.starts_with("Basic"), "{challenge}");
    };

    refused(c.get(a.blob(&origin)).send().unwrap());
    refused(
        c.get(a.blob(&origin))
            .basic_auth("user", Some("wrong"))
            .send()
            .unwrap(),
    );
    assert_eq!(root.count(|m| &m.fetched_registry), 0);
    assert!(a.count(|m| &m.access_denied) >= 2);
    assert!(root.count(|m| &m.access_denied) >= 2);

    let r = c
        .get(a.blob(&origin))
        .basic_auth("user", Some("pass"))
        .send()
        .unwrap();
    assert!(ok_body(r, 200) == blob);
    // Held now, and still refused without credentials.
    refused(c.get(a.blob(&origin)).send().unwrap());
    // A node that did not join with credentials gets nothing from a peer.
    let r = c
        .get(a.blob(&origin))
        .header("X-P2P-Node", "http://127.0.0.1:9")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "{:?}", r.text());
    assert_eq!(a.count(|m| &m.served_child), 0);
}

/// What a node refuses before asking anyone: URLs that are not registry blobs, loops, a
/// registry not listed, root endpoints of an agent, unknown paths and methods.
#[test]
fn refusals_without_an_upstream() {
    let root = TestNode::start(Role::Root, &[], |c| {
        c.registries = vec!["registry.example.com".into()]
    });
    let a = TestNode::agent(&root);
    let c = client();
    let d = format!("sha256:{}", "ab".repeat(32));
    let listed = format!("http://registry.example.com/v2/app/blobs/{d}");
    let status = |r: reqwest::blocking::RequestBuilder| r.send().unwrap().status().as_u16();

    assert_eq!(status(c.get(a.blob("http://h/v2/app/manifests/x"))), 400);
    assert_eq!(
        status(c.get(root.blob(&format!("http://other:5000/v2/app/blobs/{d}")))),
        403
    );
    let r = c
        .get(root.blob(&listed))
        .header("X-P2P-Path", format!("http://127.0.0.1:1,{}", root.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 508);
    assert!(r.text().unwrap().contains(&root.url));
    assert_eq!(root.count(|m| &m.loops), 1);
    assert_eq!(status(c.put(a.blob(&listed))), 405);
    assert_eq!(
        status(c.post(format!("{}/_p2p/v1/join", a.url)).body("{}")),
        404
    );
    assert_eq!(
        status(c.post(format!("{}/_p2p/v1/join", root.url)).body("{")),
        400
    );
    assert_eq!(status(c.get(format!("{}/nothing", a.url))), 404);
    assert_eq!(status(c.get(format!("{}/healthz", a.url))), 200);
    assert_eq!(root.count(|m| &m.fetched_registry), 0);
}

/// With a deployment secret, nodes sign what they send each other: agents of the deployment
/// read through the tree as before, while a forged join (unsigned, another secret, or signed
/// by one node for another), a replayed one, a stale one, and a peer read without the
/// secret are refused; a node with another secret gets nothing from the tree.
#[test]
fn with_a_deployment_secret_peers_sign_and_forged_or_replayed_requests_are_refused() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret_file = |name: &str, secret: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, secret).unwrap();
        p
    };
    let good = secret_file("secret", "  the deployment's secret, 32 bytes\n");
    let other = secret_file("other", "another deployment's secret....");
    let with = |f: &std::path::PathBuf| {
        let f = f.clone();
        move |c: &mut Config| c.peer_secret_file = Some(f)
    };
    let blob = test_support::random(3 * PIECE as usize + 77, 21);
    let origin = push(&reg, "p2p/signed", &blob);
    let root = TestNode::start(Role::Root, &[], with(&good));
    let (a, b) = (
        TestNode::start(Role::Agent, &[&root], with(&good)),
        TestNode::start(Role::Agent, &[&root], with(&good)),
    );
    let c = client();
    for agent in [&a, &b] {
        let r = c.get(agent.blob(&origin)).send().unwrap();
        assert!(ok_body(r, 200) == blob, "{} served other bytes", agent.url);
        assert_eq!(agent.count(|m| &m.fetched_registry), 0, "{}", agent.url);
    }
    for n in [&root, &a, &b] {
        assert_eq!(n.count(|m| &m.peer_refused), 0, "{}", n.url);
    }

    // Joins sent by hand: the JSON body, and the headers a node would send.
    let join = |node: &str| serde_json::json!({"url": origin, "node": node}).to_string();
    let send = |body: &str, from: Option<&str>, sig: Option<String>| {
        let mut r = c
            .post(format!("{}/_p2p/v1/join", root.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(f) = from {
            r = r.header("x-p2p-node", f);
        }
        if let Some(s) = sig {
            r = r.header("x-p2p-signature", s);
        }
        let r = r.send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let signer = p2p::node::peer::Signer::new(b"the deployment's secret, 32 bytes".to_vec());
    let forger = p2p::node::peer::Signer::new(b"another deployment's secret....".to_vec());
    let me = "http://127.0.0.1:9";
    let body = join(me);
    // Unsigned, or signed with another secret.
    let (st, msg) = send(&body, Some(me), None);
    assert_eq!(st, 403, "{msg}");
    let sig = forger.sign("POST", "/_p2p/v1/join", me, body.as_bytes());
    let (st, msg) = send(&body, Some(me), Some(sig));
    assert_eq!(st, 403, "{msg}");
    assert!(msg.contains("bad signature"), "{msg}");
    // Signed by one node for another.
    let sig = signer.sign("POST", "/_p2p/v1/join", &a.url, body.as_bytes());
    let (st, msg) = send(&body, Some(&a.url), Some(sig));
    assert_eq!(st, 403, "{msg}");
    // Signed right: answered; the same request again is refused.
    let sig = signer.sign("POST", "/_p2p/v1/join", me, body.as_bytes());
    let (st, msg) = send(&body, Some(me), Some(sig.clone()));
    assert_eq!(st, 200, "{msg}");
    let (st, msg) = send(&body, Some(me), Some(sig));
    assert_eq!(st, 403, "{msg}");
    assert!(msg.contains("replayed"), "{msg}");
    // Signed a minute ago.
    let then = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 60_000;
    let sig = signer.sign_at(then, "POST", "/_p2p/v1/join", me, body.as_bytes());
    let (st, msg) = send(&body, Some(me), Some(sig));
    assert_eq!(st, 403, "{msg}");
    // Counted: unsigned, another secret, replayed, stale (the join for another node is refused
    // after its signature passed).
    assert_eq!(root.count(|m| &m.peer_refused), 4);

    // A peer read naming a node, unsigned: refused by the agent that holds the blob.
    let r = c
        .get(a.blob(&origin))
        .header("x-p2p-node", b.url.as_str())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(a.count(|m| &m.peer_refused) >= 1);

    // A node with another secret: the root refuses its join, and it refuses its reader,
    // saying why (our daemon then reads the registry: the agent is only its first place).
    let stranger = TestNode::start(Role::Agent, &[&root], with(&other));
    let r = c.get(stranger.blob(&origin)).send().unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let msg = r.text().unwrap();
    assert!(msg.contains("peer_secret_file"), "{msg}");
    assert_eq!(
        stranger.count(|m| &m.fetched_root) + stranger.count(|m| &m.fetched_parent),
        0
    );
    assert!(
        root.metrics().contains("\np2p_peer_refused_total 5\n"),
        "{}",
        root.metrics()
    );
}
