//! Credentials from Docker's `config.json` and credential helpers, against a real registry
//! with Basic auth. One test in its own binary: it puts a helper on `PATH` before any thread
//! starts.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::registry::{check_reads, quick, random, Located, Registry};
use overlaybd_registry::credentials::DockerConfig;
use overlaybd_registry::{RegistryBlob, RegistryOptions};

#[test]
fn docker_config_auths_helpers_and_store() {
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("calls");
    // A credential helper speaking Docker's protocol: server on stdin, JSON on stdout.
    let helper = bin.path().join("docker-credential-obdtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\necho \"$server\" >> {}\ncase \"$server\" in\n  127.0.0.1:*) printf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}}' \"$server\" ;;\n  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The only test in this binary, and no thread has started yet.
    std::env::set_var("PATH", path);

    let Some(reg) = Registry::start(Some(("alice", "s3cret"))) else {
        return;
    };
    let data = random(700_000, 50);
    let digest = reg.push("cred/blob", &data);
    let host = reg.url.strip_prefix("http://").unwrap().to_string();
    let open = |config: &str| {
        let dc = DockerConfig::parse(config.as_bytes(), "test config").unwrap();
        RegistryBlob::open(
            reg.location("cred/blob", &digest),
            Some(data.len() as u64),
            RegistryOptions {
                docker_config: Some(Arc::new(dc)),
                ..quick()
            },
        )
    };
    // `auths` with base64 `auth`, keyed by URL.
    let b = open(&format!(
        r#"{{"auths":{{"http://{host}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#
    ))
    .unwrap();
    check_reads(&b, &data);
    // A per-registry helper wins over `auths`.
    let b = open(&format!(
        r#"{{"auths":{{"{host}":{{"auth":"YWxpY2U6d3Jvbmc="}}}},"credHelpers":{{"{host}":"obdtest"}}}}"#
    ))
    .unwrap();
    check_reads(&b, &data);
    assert!(std::fs::read_to_string(&log).unwrap().contains(&host));
    // The default store.
    let b = open(r#"{"credsStore":"obdtest"}"#).unwrap();
    check_reads(&b, &data);
    // Wrong credentials, or none (the store has nothing for this host): a permanent error,
    // at once, naming the blob.
    for config in [
        format!(r#"{{"auths":{{"{host}":{{"username":"alice","password":"nope"}}}}}}"#),
        "{}".to_string(),
    ] {
        let t = Instant::now();
        let e = open(&config).unwrap_err().to_string();
        assert!(e.contains("401") && e.contains(&digest), "{config}: {e}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{config}: not at once"
        );
    }
    // A helper that is not installed is named.
    let e = open(r#"{"credsStore":"absent"}"#).unwrap_err().to_string();
    assert!(e.contains("docker-credential-absent"), "{e}");
}
