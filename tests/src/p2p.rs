//! A P2P cluster for the tests and the benchmark: docker-registry behind the byte-counting
//! relay, `overlaybd-p2p` roots and agents as processes on 127.0.0.1, and readers that read a
//! ZFile blob through an agent the way the daemon does (`RegistryBlob` with the agent in
//! front, every block verified against a trusted integrity root).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use convertor::remote::{Remote, RemoteOptions};
use convertor::store::Store;
use overlaybd_registry::auth::Credentials;
use overlaybd_registry::{BlobLocation, RegistryBlob, RegistryOptions};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::relay::Relay;
use crate::Proc;
use crate::{bin, free_port, Registry};

/// Settings of a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub roots: usize,
    pub agents: usize,
    pub fanout: usize,
    pub piece_size: u64,
    /// Bytes per second the relay passes from the registry (0 = unlimited).
    pub rate: u64,
    /// Basic credentials the registry wants.
    pub basic: Option<(&'static str, &'static str)>,
    /// Agents (by index) that corrupt what they serve to other nodes.
    pub corrupt: Vec<usize>,
    /// Cache sizes of roots and of agents.
    pub cache_bytes: u64,
    pub agent_cache_bytes: u64,
    /// Per-node upload limit (0 = none).
    pub upload_rate: u64,
    /// Keep pieces on disk (`cache.dir`), so that they survive a restart.
    pub persistent: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            roots: 2,
            agents: 4,
            fanout: 4,
            piece_size: 1 << 20,
            rate: 0,
            basic: None,
            corrupt: Vec::new(),
            cache_bytes: 1 << 30,
            agent_cache_bytes: 1 << 30,
            upload_rate: 0,
            persistent: false,
        }
    }
}

#[derive(Debug)]
pub struct P2pNode {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub proc: Proc,
}

impl P2pNode {
    /// The agent URL prefix the daemon is given (overlaybd's `p2pConfig.address` form).
    pub fn prefix(&self) -> String {
        format!("{}/dadip2p", self.url)
    }
}

#[allow(missing_debug_implementations)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub registry: Registry,
    /// Direct address (pushes, not counted).
    pub registry_addr: String,
    /// What the nodes and readers use.
    pub relay: Relay,
    pub roots: Vec<P2pNode>,
    pub agents: Vec<P2pNode>,
    pub opts: ClusterOptions,
}

/// A pushed ZFile blob and what a reader must get from it.
#[derive(Clone, Debug)]
pub struct TestBlob {
    pub repo: String,
    pub digest: String,
    pub size: u64,
    pub root: zfile::Root,
    /// SHA-256 (hex) of the uncompressed contents.
    pub raw_sha256: String,
}

/// What one reader saw.
#[derive(Clone, Debug)]
pub struct ReadResult {
    pub raw_sha256: String,
    pub secs: f64,
    pub agent_bytes: u64,
    pub registry_bytes: u64,
    pub verification_failures: u64,
    pub reports: u64,
}

fn wait_http(url: &str, p: &Proc) {
    let t = Instant::now();
    let hostport = url.trim_start_matches("http://").to_string();
    while std::net::TcpStream::connect(&hostport).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} did not come up\n{}",
            p.name,
            p.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Cluster {
    pub fn start(opts: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("obd-p2p-")
            .tempdir()
            .unwrap();
        let reg_dir = dir.path().join("registry");
        std::fs::create_dir_all(&reg_dir).unwrap();
        let auth = opts
            .basic
            .map(|(u, p)| test_support::registry::htpasswd_auth(&reg_dir, u, p));
        let registry = Registry::start_in(&reg_dir, auth, free_port());
        let registry_addr = registry.addr.clone();
        let relay = Relay::start(&registry_addr, opts.rate);
        let root_urls: Vec<String> = (0..opts.roots)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let mut c = Cluster {
            dir,
            registry,
            registry_addr,
            relay,
            roots: Vec::new(),
            agents: Vec::new(),
            opts,
        };
        for (i, u) in root_urls.iter().enumerate() {
            let n = c.spawn_node(&format!("root{i}"), "root", u, &root_urls, false);
            c.roots.push(n);
        }
        for i in 0..c.opts.agents {
            let u = format!("http://127.0.0.1:{}", free_port());
            let corrupt = c.opts.corrupt.contains(&i);
            let n = c.spawn_node(&format!("agent{i}"), "agent", &u, &root_urls, corrupt);
            c.agents.push(n);
        }
        c
    }

    fn spawn_node(
        &self,
        name: &str,
        role: &str,
        url: &str,
        roots: &[String],
        corrupt: bool,
    ) -> P2pNode {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let o = &self.opts;
        let roots: Vec<String> = roots.iter().map(|r| format!("{r:?}")).collect();
        // One secret for the cluster, as a deployment has: every peer request is signed.
        let secret = self.dir.path().join("peer-secret");
        if !secret.exists() {
            std::fs::write(&secret, "e2e cluster secret, the same on every node\n").unwrap();
        }
        let cfg = format!(
            "role = \"{role}\"\nlisten = \"{}\"\nroots = [{}]\nfanout = {}\npiece_size = {}\n\
             connect_timeout_ms = 500\nstall_timeout_ms = 3000\nlog = \"info\"\n\
             peer_secret_file = \"{}\"\n\
             [cache]\nmax_bytes = {}\n{}[upload]\nglobal_bytes_per_sec = {}\n\
             [debug]\ncorrupt_uploads = {corrupt}\n",
            url.trim_start_matches("http://"),
            roots.join(", "),
            o.fanout,
            o.piece_size,
            secret.display(),
            if role == "root" {
                o.cache_bytes
            } else {
                o.agent_cache_bytes
            },
            if o.persistent {
                format!("dir = \"{}\"\n", d.join("cache").display())
            } else {
                String::new()
            },
            o.upload_rate,
        );
        std::fs::write(d.join("p2p.toml"), cfg).unwrap();
        let p = Proc::spawn(
            name,
            Command::new(bin("overlaybd-p2p"))
                .arg("--config")
                .arg(d.join("p2p.toml")),
            &d.join("p2p.log"),
        );
        wait_http(url, &p);
        P2pNode {
            url: url.to_string(),
            proc: p,
        }
    }

    /// SIGKILLs agent `i` and starts it again with the same config and address.
    pub fn restart_agent(&mut self, i: usize) {
        self.agents[i].proc.kill9();
        let roots: Vec<String> = self.roots.iter().map(|r| r.url.clone()).collect();
        let url = self.agents[i].url.clone();
        let corrupt = self.opts.corrupt.contains(&i);
        self.agents[i] = self.spawn_node(&format!("agent{i}"), "agent", &url, &roots, corrupt);
    }

    /// `host:port` of the relay: the registry as nodes and readers see it.
    pub fn host(&self) -> String {
        self.relay.addr()
    }

    pub fn credentials(&self) -> Option<Credentials> {
        self.opts.basic.map(|(u, p)| Credentials {
            username: u.into(),
            password: p.into(),
        })
    }

    /// A ZFile (LZ4, 4 KiB blocks, CRCs and the integrity table) of `mib` MiB of random
    /// bytes, pushed to `repo`.
    pub fn push_blob(&self, repo: &str, mib: usize, seed: u64) -> TestBlob {
        let mut raw = vec![0u8; mib << 20];
        rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut raw);
        let raw_sha256 = hex::encode(Sha256::digest(&raw));
        let mut w = zfile::ZFileWriter::new(
            Vec::with_capacity(raw.len() + (raw.len() >> 6)),
            zfile::WriterOptions {
                integrity: true,
                threads: 2,
                ..Default::default()
            },
        )
        .unwrap();
        w.write_all(&raw).unwrap();
        drop(raw);
        let (blob, summary) = w.finish().unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
        let r = Remote::open(
            &self.registry_addr,
            repo,
            &RemoteOptions {
                plain_http: true,
                credentials: self.credentials(),
                ..Default::default()
            },
            true,
        )
        .unwrap();
        r.put_blob(&digest, &blob).unwrap();
        TestBlob {
            repo: repo.into(),
            digest,
            size: blob.len() as u64,
            root: summary.integrity_root.expect("integrity table"),
            raw_sha256,
        }
    }

    pub fn location(&self, b: &TestBlob) -> BlobLocation {
        BlobLocation {
            registry: format!("http://{}", self.host()),
            repository: b.repo.clone(),
            digest: b.digest.clone(),
        }
    }

    /// Reads the whole blob through `agent` (or the registry directly with `None`), as the
    /// daemon does.
    pub fn read(&self, agent: Option<&P2pNode>, b: &TestBlob) -> Result<ReadResult, String> {
        read_blob(
            self.location(b),
            agent.map(P2pNode::prefix),
            self.credentials(),
            b.root,
        )
    }

    /// Bytes the registry has sent through the relay.
    pub fn registry_bytes(&self) -> u64 {
        self.relay.served()
    }
}

/// Reads a whole ZFile blob through `agent` (a `/dadip2p` prefix) with every block checked
/// against `root`; returns the SHA-256 of its contents and where the bytes came from.
pub fn read_blob(
    loc: BlobLocation,
    agent: Option<String>,
    credentials: Option<Credentials>,
    root: zfile::Root,
) -> Result<ReadResult, String> {
    let t = Instant::now();
    let opts = RegistryOptions {
        agent,
        credentials,
        deadline: Duration::from_secs(60),
        ..Default::default()
    };
    let blob = RegistryBlob::open(loc, None, opts).map_err(|e| e.to_string())?;
    let z = zfile::ZFile::open_with(
        &blob,
        &zfile::OpenOptions {
            trusted_root: Some(root),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < z.len() {
        let n = z
            .read_at(off, &mut buf)
            .map_err(|e| format!("at {off}: {e}"))?;
        if n == 0 {
            return Err(format!("short read at {off}"));
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    let s = blob.stats();
    Ok(ReadResult {
        raw_sha256: hex::encode(h.finalize()),
        secs: t.elapsed().as_secs_f64(),
        agent_bytes: s.agent_bytes.load(Ordering::Relaxed),
        registry_bytes: s.bytes.load(Ordering::Relaxed),
        verification_failures: s.verification_failures.load(Ordering::Relaxed),
        reports: s.agent_reports.load(Ordering::Relaxed),
    })
}

/// A metric's value from a node's `/metrics` (`name{labels}` as written there); 0 if absent.
pub fn metric(node_url: &str, series: &str) -> u64 {
    let text = reqwest::blocking::get(format!("{node_url}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A root's trees (`/_p2p/v1/trees`).
pub fn trees(root_url: &str) -> serde_json::Value {
    reqwest::blocking::get(format!("{root_url}/_p2p/v1/trees"))
        .and_then(|r| r.json())
        .unwrap_or(serde_json::Value::Null)
}

/// The p2p logs of every node, for failure messages.
pub fn logs(nodes: &[&P2pNode]) -> String {
    nodes
        .iter()
        .map(|n| {
            let l = n.proc.log();
            let tail: Vec<&str> = l.lines().rev().take(15).collect();
            format!(
                "--- {} ({})\n{}",
                n.proc.name,
                n.url,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where the `overlaybd-p2p` configs live, for tests that restart a node.
pub fn config_path(c: &Cluster, name: &str) -> PathBuf {
    c.dir.path().join(name).join("p2p.toml")
}
