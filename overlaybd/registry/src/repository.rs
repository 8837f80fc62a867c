//! One repository of a registry, for the distribution API's whole-object operations: manifests
//! (read with the size limit and digest check, written), blobs (streamed, checked, uploaded
//! monolithically, mounted across repositories). The convertor, `rpull` and `record-trace` use
//! it; lazy range reads are [`crate::RegistryBlob`]. Both go through one [`Session`].

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::{Body, Response};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use crate::auth::Credentials;
use crate::client::chain;
use crate::credentials::DockerConfig;
use crate::hosts;
use crate::session::{transient, Attempt, CredentialSource, Retry, Session};
use crate::stats::RegistryStats;
use crate::{Error, Result};

/// The largest manifest or index read (containerd's limit).
pub const MAX_MANIFEST: u64 = 4 << 20;

/// How to reach a repository.
#[derive(Clone, Debug)]
pub struct RepositoryOptions {
    /// Talk plain HTTP to the registry (else per `hosts.toml`, HTTPS by default).
    pub plain_http: bool,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// containerd's hosts directory (`certs.d`, `hosts.toml`).
    pub hosts_dir: Option<PathBuf>,
    /// Docker's `config.json`, consulted per host.
    pub docker_config: Option<Arc<DockerConfig>>,
    /// Credentials for every host (they win over `docker_config`).
    pub credentials: Option<Credentials>,
    /// How long an operation is retried on transient failures, and how long one request may
    /// take (a large upload).
    pub retry: Retry,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        RepositoryOptions {
            plain_http: false,
            insecure: false,
            hosts_dir: None,
            docker_config: None,
            credentials: None,
            // Transient failures (a 5xx, a dropped connection, a registry restarting) are
            // retried for 10 s: long enough for a blip, short enough that a command given a
            // wrong address says so at once. One request (a large upload) may take 5 minutes.
            retry: Retry {
                deadline: Duration::from_secs(10),
                attempt_timeout: Some(Duration::from_secs(300)),
                ..Retry::default()
            },
        }
    }
}

/// What a repository is opened for: the places a request may go to follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads: mirrors with `pull`, then the upstream.
    Pull,
    /// Reads and writes, at the upstream only.
    Push,
}

/// One repository on one registry.
#[derive(Debug)]
pub struct Repository {
    session: Session,
}

impl Repository {
    /// Opens `host/repository` (`host[:port]`).
    pub fn open(
        host: &str,
        repository: &str,
        opts: &RepositoryOptions,
        access: Access,
    ) -> Result<Repository> {
        let scheme = if opts.plain_http { "http" } else { "https" };
        let registry = format!("{scheme}://{host}");
        let mut hosts = hosts::hosts_for(opts.hosts_dir.as_deref(), &registry)?;
        for h in &mut hosts {
            if opts.plain_http && !h.mirror {
                if let Some(rest) = h.root.strip_prefix("https://") {
                    h.root = format!("http://{rest}");
                }
            }
            if opts.insecure {
                h.skip_verify = true;
            }
        }
        let creds = CredentialSource {
            given: opts.credentials.as_ref(),
            docker_config: opts.docker_config.as_deref(),
        };
        let capability = match access {
            Access::Pull => "pull",
            Access::Push => "push",
        };
        let session = Session::new(
            &registry, repository, hosts, capability, None, &creds, opts.retry,
        )?;
        Ok(Repository { session })
    }

    /// `host/repository`.
    pub fn describe(&self) -> String {
        self.session.describe()
    }

    pub fn host(&self) -> &str {
        &self.session.upstream
    }

    pub fn name(&self) -> &str {
        &self.session.repository
    }

    pub fn stats(&self) -> &RegistryStats {
        &self.session.stats
    }

    /// Sends the request `build` makes for `tail` at each place in turn, retried; `accept`
    /// says which successful statuses are an answer (others are permanent errors).
    fn request(
        &self,
        what: &str,
        tail: &str,
        build: impl Fn(&reqwest::blocking::Client, &str) -> reqwest::blocking::RequestBuilder,
    ) -> Result<Response> {
        let s = &self.session;
        s.with_retries(what, |deadline| {
            s.across(false, |p| {
                let url = p.url(&s.repository, tail);
                s.send(p, what, |c| build(c, &url), deadline)
            })
        })
    }

    /// A manifest or index by tag or digest (at most [`MAX_MANIFEST`] bytes, checked against
    /// the digest when fetched by digest), and the media type the registry gave.
    pub fn manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        let what = format!("manifest {reference} of {}", self.describe());
        let tail = format!("manifests/{reference}");
        let s = &self.session;
        let (bytes, mt) = s.with_retries(&what, |deadline| {
            s.across(false, |p| {
                let url = p.url(&s.repository, &tail);
                let resp = s.send(
                    p,
                    &what,
                    |c| c.get(&url).header(ACCEPT, overlaybd_oci::media::ACCEPT),
                    deadline,
                )?;
                let mt = resp
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
                    .filter(|s| !s.is_empty());
                let mut b = Vec::new();
                if let Err(e) = resp.take(MAX_MANIFEST + 1).read_to_end(&mut b) {
                    return transient(format!("body: {}", chain(&e)));
                }
                Ok((b, mt))
            })
        })?;
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(Error::Mismatch {
                what,
                reason: format!("more than {MAX_MANIFEST} bytes"),
            });
        }
        if reference.starts_with("sha256:") && overlaybd_oci::sha256_digest(&bytes) != reference {
            return Err(Error::Mismatch {
                what,
                reason: "the manifest does not match its digest".into(),
            });
        }
        Ok((bytes, mt))
    }

    /// Streams blob `digest` into `out` and checks it: its SHA-256 must be the digest and, when
    /// `size` is given, its length the size (the stream stops one byte past it). Returns the
    /// bytes written. A failure after bytes were written is not retried (they are in `out`).
    pub fn blob_to(&self, digest: &str, size: Option<u64>, out: &mut dyn Write) -> Result<u64> {
        overlaybd_oci::check_digest(digest).map_err(|e| Error::Config(e.to_string()))?;
        let what = format!("blob {digest} of {}", self.describe());
        let mut resp = self.request(&what, &format!("blobs/{digest}"), |c, u| c.get(u))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::io("read", what, e));
                }
            };
            h.update(&buf[..k]);
            out.write_all(&buf[..k])
                .map_err(|e| Error::io("write", what.clone(), e))?;
            n += k as u64;
            if size.is_some_and(|s| n > s) {
                break;
            }
        }
        self.session
            .stats
            .bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let got = format!("sha256:{}", hex::encode(h.finalize()));
        if size.is_some_and(|s| s != n) || got != digest {
            return Err(Error::Mismatch {
                what,
                reason: match size {
                    Some(s) if s != n => format!("the registry sent {n} bytes, not {s}"),
                    _ => format!("the registry sent bytes of digest {got}"),
                },
            });
        }
        Ok(n)
    }

    /// Whether the repository has blob `digest`.
    pub fn has_blob(&self, digest: &str) -> Result<bool> {
        overlaybd_oci::check_digest(digest).map_err(|e| Error::Config(e.to_string()))?;
        let what = format!("check blob {digest} of {}", self.describe());
        match self.request(&what, &format!("blobs/{digest}"), |c, u| c.head(u)) {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Mounts `digest` from repository `from` of the same registry; false when the registry
    /// did not (it then expects an upload).
    pub fn mount(&self, digest: &str, from: &str) -> Result<bool> {
        let what = format!("mount {digest} from {from} into {}", self.describe());
        let resp = self.request(&what, "blobs/uploads/", |c, u| {
            c.post(u)
                .query(&[("mount", digest), ("from", from)])
                .header(CONTENT_LENGTH, 0)
        })?;
        Ok(resp.status() == StatusCode::CREATED)
    }

    /// Uploads blob `digest` (monolithically: POST, then PUT of the whole body), unless the
    /// repository has it already. `body` makes the body for each attempt. Returns whether
    /// bytes were sent.
    pub fn upload(&self, digest: &str, body: &dyn Fn() -> std::io::Result<Body>) -> Result<bool> {
        if self.has_blob(digest)? {
            return Ok(false);
        }
        let what = format!("upload {digest} to {}", self.describe());
        let s = &self.session;
        s.with_retries(&what, |deadline| {
            s.across(false, |p| {
                let url = p.url(&s.repository, "blobs/uploads/");
                let resp = s.send(
                    p,
                    &what,
                    |c| c.post(&url).header(CONTENT_LENGTH, 0),
                    deadline,
                )?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(Attempt::Permanent(Error::Refused(format!(
                        "{what}: the registry answered {} to the upload's start",
                        resp.status()
                    ))));
                }
                let Some(loc) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) else {
                    return Err(Attempt::Permanent(Error::Refused(format!(
                        "{what}: no Location in the upload answer"
                    ))));
                };
                let loc = if loc.starts_with("http://") || loc.starts_with("https://") {
                    loc.to_string()
                } else {
                    // The Location is relative to the registry, not to `/v2`.
                    let root = url.split("/v2/").next().unwrap_or(&url);
                    format!("{root}{loc}")
                };
                let sep = if loc.contains('?') { '&' } else { '?' };
                let put = format!("{loc}{sep}digest={digest}");
                let resp = s.try_send(
                    p,
                    &what,
                    |c| {
                        let b = body().map_err(|e| {
                            Attempt::Permanent(Error::io("read", format!("{what}: its source"), e))
                        })?;
                        Ok(c.put(&put)
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .body(b))
                    },
                    deadline,
                )?;
                if resp.status() != StatusCode::CREATED {
                    return Err(Attempt::Permanent(Error::Refused(format!(
                        "{what}: the registry answered {} to the upload",
                        resp.status()
                    ))));
                }
                Ok(true)
            })
        })
    }

    /// Stores a manifest or index under `reference` (a tag, or its digest).
    pub fn put_manifest(&self, reference: &str, media_type: &str, bytes: &[u8]) -> Result<()> {
        let what = format!("put manifest {reference} to {}", self.describe());
        self.request(&what, &format!("manifests/{reference}"), |c, u| {
            c.put(u)
                .header(CONTENT_TYPE, media_type)
                .body(bytes.to_vec())
        })?;
        Ok(())
    }
}
