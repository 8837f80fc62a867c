//! `overlaybd-p2p`'s TOML configuration. Unknown fields are refused, so a typo is an error
//! rather than a default silently used.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// What a node does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Fetches pieces from the registry and keeps the trees of the blobs it owns.
    Root,
    /// Runs on every host: serves the local overlaybd daemon and its children in the trees.
    Agent,
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "root" => Ok(Role::Root),
            "agent" => Ok(Role::Agent),
            _ => Err(Error::Config(format!("role {s:?}: expected root or agent"))),
        }
    }
}

/// A secret, which `Debug` does not show.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub role: Role,
    /// `host:port` to listen on.
    pub listen: String,
    /// The URL other nodes reach this node at (default `http://<listen>`).
    pub advertise: String,
    /// The first path segment of overlaybd's request form `/<api_key>/<origin URL>`.
    pub api_key: String,
    /// The roots of this datacenter (`http://host:port`), the same list on every node: each
    /// blob is owned by one of them (rendezvous hashing of its digest).
    pub roots: Vec<String>,
    /// Bytes per piece (the unit of fetching, caching and reporting).
    pub piece_size: u64,
    /// Most children a node is given in one blob's tree. A parent's uplink is shared by its
    /// children, so each host reads at uplink / fanout: 2 keeps 64 hosts within 2x of one
    /// (tree_sim), at the cost of a deeper tree.
    pub fanout: usize,
    /// Pieces fetched ahead of a local reader's read (0 = none); never for children.
    pub prefetch_pieces: u64,
    /// Most pieces being fetched at once. A piece being fetched holds up to `piece_size`
    /// bytes outside the cache's bound (it cannot be evicted), so this bounds that memory;
    /// more fetches wait their turn.
    pub max_fills: usize,
    /// A tree entry not refreshed for this long is dropped.
    pub tree_ttl_secs: u64,
    /// How long the registry's answer to "may these credentials read this repository" is
    /// kept.
    pub access_ttl_secs: u64,
    pub connect_timeout_ms: u64,
    /// An upstream that sends nothing for this long has failed.
    pub stall_timeout_ms: u64,
    /// Registries (`host[:port]`) a request may name; empty = any. Roots fetch whatever
    /// origin URL a request names, so production deployments should list theirs.
    pub registries: Vec<String>,
    /// A CA certificate (PEM) trusted for registries, beside the system's.
    pub registry_ca: Option<PathBuf>,
    /// A file holding the deployment's secret (at least 16 bytes; surrounding whitespace
    /// ignored), the same on every node, e.g. a Kubernetes Secret mounted as a file. With it,
    /// nodes sign what they send each other and refuse what is not signed with it (see
    /// `node::peer`); without it, a peer is known by its address only.
    pub peer_secret_file: Option<PathBuf>,
    /// The secret read from `peer_secret_file` by [`Config::finish`].
    #[serde(skip)]
    pub peer_secret: Option<Secret>,
    pub cache: CacheConfig,
    pub upload: UploadConfig,
    /// Fault injection for tests.
    pub debug: DebugConfig,
    /// `tracing` filter, e.g. `info` or `p2p=debug`.
    pub log: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most bytes of pieces kept; the least recently used complete pieces go first.
    pub max_bytes: u64,
    /// A directory to keep pieces in, so that they survive restarts; empty = memory only.
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Bytes per second this node sends to all peers together (0 = unlimited).
    pub global_bytes_per_sec: u64,
    /// Bytes per second this node sends to any one peer (0 = unlimited).
    pub per_child_bytes_per_sec: u64,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Flip bytes of every piece served to another node (to test that readers catch it).
    pub corrupt_uploads: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 4 << 30,
            dir: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::Agent,
            listen: "127.0.0.1:19145".into(),
            advertise: String::new(),
            api_key: "dadip2p".into(),
            roots: Vec::new(),
            piece_size: 1 << 20,
            fanout: 2,
            prefetch_pieces: 1,
            max_fills: 256,
            tree_ttl_secs: 300,
            access_ttl_secs: 30,
            connect_timeout_ms: 2000,
            stall_timeout_ms: 5000,
            registries: Vec::new(),
            registry_ca: None,
            peer_secret_file: None,
            peer_secret: None,
            cache: CacheConfig::default(),
            upload: UploadConfig::default(),
            debug: DebugConfig::default(),
            log: "info".into(),
        }
    }
}

fn http_url(what: &str, u: &str) -> Result<()> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| invalid(format!("{what} {u:?}: not an http(s) URL")))?;
    if rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains('/') {
        return Err(invalid(format!(
            "{what} {u:?}: expected scheme://host:port"
        )));
    }
    Ok(())
}

fn invalid(why: impl Into<String>) -> Error {
    Error::Config(why.into())
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read config", path, e))?;
        Config::parse(&text).map_err(|e| invalid(format!("config {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let c: Config = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        Ok(c)
    }

    /// Fills defaults that depend on other fields and checks every field.
    pub fn finish(mut self) -> Result<Config> {
        if self.advertise.is_empty() {
            self.advertise = format!("http://{}", self.listen);
        }
        self.advertise = self.advertise.trim_end_matches('/').to_string();
        http_url("advertise", &self.advertise)?;
        for r in &mut self.roots {
            *r = r.trim_end_matches('/').to_string();
        }
        for r in &self.roots {
            http_url("root", r)?;
        }
        if self.role == Role::Agent && self.roots.is_empty() {
            return Err(invalid("an agent needs at least one root in `roots`"));
        }
        if self.api_key.is_empty()
            || self.api_key.starts_with('_')
            || !self
                .api_key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(invalid(format!(
                "api_key {:?}: letters, digits, '-', '_' and '.', not starting with '_'",
                self.api_key
            )));
        }
        if !(64 << 10..=64 << 20).contains(&self.piece_size) {
            return Err(invalid(format!(
                "piece_size {}: from 64 KiB to 64 MiB",
                self.piece_size
            )));
        }
        if self.fanout == 0 {
            return Err(invalid("fanout must be at least 1"));
        }
        if !(1..=65_536).contains(&self.max_fills) {
            return Err(invalid(format!(
                "max_fills {}: from 1 to 65536",
                self.max_fills
            )));
        }
        if self.cache.max_bytes < 4 * self.piece_size {
            return Err(invalid(format!(
                "cache.max_bytes {}: at least four pieces",
                self.cache.max_bytes
            )));
        }
        if self.tree_ttl_secs > 86_400 * 30
            || self.access_ttl_secs > 86_400
            || self.connect_timeout_ms > 3_600_000
            || self.stall_timeout_ms > 3_600_000
        {
            return Err(invalid(
                "tree_ttl_secs (30 days), access_ttl_secs (1 day) or a timeout (1 hour) too long",
            ));
        }
        if self.tree_ttl_secs == 0 || self.connect_timeout_ms == 0 || self.stall_timeout_ms == 0 {
            return Err(invalid(
                "tree_ttl_secs, connect_timeout_ms and stall_timeout_ms must be > 0",
            ));
        }
        if let Some(f) = &self.peer_secret_file {
            // At most 4 KiB: a secret, not whatever file the path names.
            let mut raw = Vec::new();
            std::fs::File::open(f)
                .and_then(|h| {
                    std::io::Read::read_to_end(&mut std::io::Read::take(h, 4096), &mut raw)
                })
                .map_err(|e| Error::io("read peer_secret_file", f, e))?;
            let secret = raw.trim_ascii().to_vec();
            if secret.len() < 16 {
                return Err(invalid(format!(
                    "peer_secret_file {}: {} bytes; a secret needs at least 16",
                    f.display(),
                    secret.len()
                )));
            }
            self.peer_secret = Some(Secret(secret));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c = Config::parse("role = \"root\"\nlisten = \"127.0.0.1:1\"\n")
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(c.role, Role::Root);
        assert_eq!(c.advertise, "http://127.0.0.1:1");
        assert_eq!(c.piece_size, 1 << 20);
        assert_eq!(c.api_key, "dadip2p");

        for (text, what) in [
            ("role = \"agent\"", "at least one root"),
            ("role = \"root\"\nfanout = 0", "fanout"),
            ("role = \"root\"\npiece_size = 100", "piece_size"),
            ("role = \"root\"\napi_key = \"a/b\"", "api_key"),
            ("role = \"agent\"\nroots = [\"ftp://x\"]", "root"),
            ("role = \"agent\"\nroots = [\"http://x/y\"]", "root"),
            ("role = \"root\"\n[cache]\nmax_bytes = 10", "max_bytes"),
            (
                "role = \"root\"\naccess_ttl_secs = 9223372036854775807",
                "too long",
            ),
        ] {
            let e = Config::parse(text).unwrap().finish().unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{text}: {e:?}");
            assert!(e.to_string().contains(what), "{text}: {e}");
        }
        let e = Config::parse("rol = \"root\"").unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
        let e = Config::parse("role = \"leaf\"").unwrap_err().to_string();
        assert!(e.contains("leaf"), "{e}");
        let e = Config::load(Path::new("/nonexistent/p2p.toml")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(
            e.to_string()
                .starts_with("read config /nonexistent/p2p.toml: "),
            "{e}"
        );
    }
}

#[cfg(test)]
mod deploy_tests {
    use super::*;

    /// The configs in the Kubernetes manifests are valid.
    #[test]
    fn the_kubernetes_manifests_configs_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
        let mut seen = 0;
        for f in ["p2p-roots.yaml", "p2p-agents.yaml"] {
            let text = std::fs::read_to_string(dir.join(f)).unwrap();
            let mut lines = text.lines().skip_while(|l| l.trim() != "p2p.toml: |");
            lines.next().expect("a p2p.toml in the ConfigMap");
            let toml: String = lines
                .take_while(|l| l.starts_with("    ") || l.is_empty())
                .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
                .collect();
            let mut c = Config::parse(&toml).unwrap_or_else(|e| panic!("{f}: {e}\n{toml}"));
            // The Secret the manifest mounts, here a file of this test's.
            assert_eq!(
                c.peer_secret_file.as_deref(),
                Some(Path::new("/etc/overlaybd-p2p-secret/secret")),
                "{f}"
            );
            let secret = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(secret.path(), "0123456789abcdef0123456789abcdef").unwrap();
            c.peer_secret_file = Some(secret.path().to_path_buf());
            let c = c.finish().unwrap_or_else(|e| panic!("{f}: {e}\n{toml}"));
            assert_eq!(c.peer_secret.as_ref().map(|s| s.0.len()), Some(32));
            assert_eq!(format!("{:?}", c.peer_secret.unwrap()), "Secret(32 bytes)");
            assert_eq!(c.roots.len(), 3, "{f}");
            assert!(c.cache.dir.is_some(), "{f}");
            seen += 1;
        }
        assert_eq!(seen, 2);
    }
}
