//! Bodies of the fuzz target for registry configuration and protocol text (feature
//! `test-util`): `WWW-Authenticate` challenges, token answers, Docker `config.json`,
//! containerd `hosts.toml`. None may panic on any input.

use std::path::Path;
use std::time::Instant;

/// Feeds `data` to every parser; the first byte picks which one gets it.
pub fn config(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 4 {
        0 => {
            let _ = super::auth::parse_challenge(&text);
        }
        1 => {
            let _ = super::auth::parse_token(rest, Instant::now());
        }
        2 => {
            if let Ok(c) = super::credentials::DockerConfig::parse(rest, "fuzz") {
                // Helpers would run programs: only configs without them are looked up.
                if !text.contains("cred") {
                    for h in ["docker.io", "127.0.0.1:5000", "a", ""] {
                        let _ = c.credentials_for(h);
                    }
                }
            }
        }
        _ => {
            let _ = super::hosts::from_toml(
                &text,
                Path::new("/nonexistent"),
                Path::new("/nonexistent/hosts.toml"),
                "https://reg.example:5000",
            );
        }
    }
}
