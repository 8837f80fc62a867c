//! A registry repository as a [`Store`], over the one registry client
//! ([`overlaybd_registry::Repository`]: auth, retries, `hosts.toml`, Docker credentials).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use overlaybd_registry::{Access, Credentials, DockerConfig, Repository, RepositoryOptions};

use crate::error::{At, Result};
use crate::oci;
use crate::store::Store;

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    /// Talk plain HTTP to every registry (else per `hosts.toml`, HTTPS by default).
    pub plain_http: bool,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// containerd's hosts directory (`certs.d`, `hosts.toml`).
    pub hosts_dir: Option<PathBuf>,
    /// Docker's `config.json` (default `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
    /// `user:password`, winning over `config.json`.
    pub credentials: Option<Credentials>,
}

/// One repository on one registry.
#[derive(Debug)]
pub struct Remote {
    repo: Repository,
}

impl Remote {
    /// Opens `host/repository`; `push` asks for push rights as well as pull (and talks to the
    /// upstream only, not to mirrors).
    pub fn open(host: &str, repository: &str, opts: &RemoteOptions, push: bool) -> Result<Remote> {
        let docker_config = match &opts.credentials {
            Some(_) => None,
            None => DockerConfig::load_configured(opts.docker_config.as_deref())?.map(Arc::new),
        };
        let ropts = RepositoryOptions {
            plain_http: opts.plain_http,
            insecure: opts.insecure,
            hosts_dir: opts.hosts_dir.clone(),
            docker_config,
            credentials: opts.credentials.clone(),
            ..Default::default()
        };
        let access = if push { Access::Push } else { Access::Pull };
        let repo =
            Repository::open(host, repository, &ropts, access).at(|| format!("registry {host}"))?;
        Ok(Remote { repo })
    }

    /// Mounts `digest` from another repository of the same registry; false when the registry
    /// did not (it then expects an upload).
    pub fn mount_from(&self, digest: &str, from: &str) -> Result<bool> {
        Ok(self.repo.mount(digest, from)?)
    }
}

impl Store for Remote {
    fn get_manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        Ok(self.repo.manifest(reference)?)
    }

    fn get_blob(&self, digest: &str, out: &mut dyn Write) -> Result<u64> {
        Ok(self.repo.blob_to(digest, None, out)?)
    }

    fn has_blob(&self, digest: &str) -> Result<bool> {
        Ok(self.repo.has_blob(digest)?)
    }

    fn put_blob_file(&self, digest: &str, size: u64, path: &Path) -> Result<bool> {
        let p = path.to_path_buf();
        Ok(self.repo.upload(digest, &|| {
            let f = std::fs::File::open(&p)?;
            Ok(reqwest::blocking::Body::sized(f, size))
        })?)
    }

    fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        self.repo.upload(digest, &|| {
            Ok(reqwest::blocking::Body::from(bytes.to_vec()))
        })?;
        Ok(())
    }

    fn put_manifest(&self, tag: Option<&str>, media_type: &str, bytes: &[u8]) -> Result<()> {
        let digest = oci::sha256_digest(bytes);
        self.repo
            .put_manifest(tag.unwrap_or(&digest), media_type, bytes)?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.repo.describe()
    }

    fn try_mount(&self, digest: &str, from: &str) -> Result<bool> {
        match from.strip_prefix(&format!("{}/", self.repo.host())) {
            Some(repo) if repo != self.repo.name() => self.mount_from(digest, repo),
            _ => Ok(false),
        }
    }
}
