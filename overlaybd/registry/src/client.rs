//! HTTP clients with a host's TLS settings, and error messages that keep their causes.

use reqwest::blocking::Client;

use crate::hosts::Host;
use crate::{Error, Result};

/// An error with its causes (reqwest's own message hides them: "error sending request").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// An HTTP client with a host's TLS settings (extra CAs, client certificate, skip_verify).
pub fn client_for(host: Option<&Host>) -> Result<Client> {
    let mut b = Client::builder().user_agent(concat!("overlaybd-rs/", env!("CARGO_PKG_VERSION")));
    if let Some(h) = host {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Error::io("read", p.display().to_string(), e))
        };
        for ca in &h.ca {
            let pem = read(ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("CA {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "CA {}: no PEM certificate in the file",
                    ca.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some((cert, key)) = h.client.first() {
            let mut pem = read(cert)?;
            if let Some(k) = key {
                pem.push(b'\n');
                pem.extend(read(k)?);
            }
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::Config(format!("client certificate {}: {e}", cert.display()))
            })?;
            b = b.identity(id);
        }
        if h.skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
    }
    b.build()
        .map_err(|e| Error::Config(format!("http client: {e}")))
}
