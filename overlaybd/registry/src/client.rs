//! HTTP clients with a host's TLS settings, and error messages that keep their causes.

use reqwest::blocking::Client;

use crate::hosts::Host;
use crate::{Error, Result};

/// An error with its causes (reqwest's own message hides them: "error sending request"),
/// each once.
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

/// Whether a failed request met a server that answers TLS in plain HTTP.
pub(crate) fn is_plain_http_answer(e: &reqwest::Error) -> bool {
    let lower = chain(e).to_lowercase();
    lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
        || lower.contains("wrong version number")
}

/// A failed request in words a user can act on: what happened to the connection (refused,
/// timed out, a TLS handshake with a server that speaks plain HTTP, a name that does not
/// resolve), the URL, and then every cause.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let causes = chain(e);
    let lower = causes.to_lowercase();
    let what = if e.is_timeout() {
        "timed out"
    } else if lower.contains("connection refused") {
        "connection refused (is the registry running, on this port?)"
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        "the host name does not resolve"
    } else if lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
        || lower.contains("wrong version number")
    {
        "TLS handshake failed: the registry may speak plain HTTP (give --plain-http, or a \
         hosts.toml whose server is http://…)"
    } else if lower.contains("certificate") || lower.contains("unknownissuer") {
        "the registry's TLS certificate is not trusted (add its CA to the registry's \
         hosts.toml `ca`, or `skip_verify`)"
    } else if e.is_connect() {
        "could not connect"
    } else {
        ""
    };
    let url = e.url().map(|u| u.as_str()).unwrap_or("");
    match (what, url) {
        ("", "") => causes,
        ("", u) => format!("{u}: {causes}"),
        (w, "") => format!("{w}: {causes}"),
        (w, u) => format!("{u}: {w}: {causes}"),
    }
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
