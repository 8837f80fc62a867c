//! What a user reads when the registry cannot be reached: the URL, what happened to the
//! connection in plain words, and the next step; each cause once.

mod common;

use common::registry::{free_port, quick, Located, Registry};
use overlaybd_registry::{
    Access, BlobLocation, Error, RegistryBlob, Repository, RepositoryOptions, Retry,
};
use std::time::Duration;

fn location(registry: &str) -> BlobLocation {
    BlobLocation {
        registry: registry.into(),
        repository: "app".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
    }
}

fn opts() -> overlaybd_registry::RegistryOptions {
    overlaybd_registry::RegistryOptions {
        deadline: Duration::from_millis(600),
        ..quick()
    }
}

#[test]
fn a_closed_port_says_connection_refused_once() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let e = RegistryBlob::open(location(&url), None, opts()).unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, Error::TimedOut(_)), "{m}");
    assert!(
        m.contains("connection refused (is the registry running"),
        "{m}"
    );
    assert!(m.contains(&url), "the URL is named: {m}");
    assert_eq!(
        m.matches("Connection refused").count(),
        1,
        "one cause, once: {m}"
    );
}

#[test]
fn tls_to_a_plain_http_registry_falls_back_on_loopback_and_says_so_elsewhere() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let d = reg.push("app", b"hello");
    let https = reg.url.replacen("http://", "https://", 1);
    // containerd's rule: a loopback registry without a hosts.toml may speak plain HTTP.
    let mut loc = reg.location("app", &d);
    loc.registry = https.clone();
    let b = RegistryBlob::open(loc.clone(), Some(5), quick()).unwrap();
    let mut buf = [0u8; 5];
    zfile::ReadAt::read_at(&b, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    // A hosts.toml that says HTTPS is taken at its word: the error names the cause and what
    // to do.
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join(&reg.addr);
    std::fs::create_dir_all(&h).unwrap();
    std::fs::write(h.join("hosts.toml"), format!("server = \"{https}\"\n")).unwrap();
    let o = overlaybd_registry::RegistryOptions {
        hosts_dir: Some(dir.path().to_path_buf()),
        ..opts()
    };
    let m = RegistryBlob::open(loc, None, o).unwrap_err().to_string();
    assert!(m.contains("TLS handshake failed"), "{m}");
    assert!(m.contains("--plain-http"), "the next step is named: {m}");
    let ropts = RepositoryOptions {
        hosts_dir: Some(dir.path().to_path_buf()),
        retry: Retry {
            deadline: Duration::from_millis(600),
            initial_backoff: Duration::from_millis(20),
            ..Retry::default()
        },
        ..Default::default()
    };
    let repo = Repository::open(&reg.addr, "app", &ropts, Access::Pull).unwrap();
    let m = repo.manifest("v1").unwrap_err().to_string();
    assert!(
        m.contains("TLS handshake failed") && m.contains("plain HTTP"),
        "{m}"
    );
}

#[test]
fn a_name_that_does_not_resolve_says_so() {
    let e = RegistryBlob::open(location("http://no-such-host.invalid:5000"), None, opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("the host name does not resolve"), "{e}");
}
