//! The HTTP side of a node: accepting connections, routing requests to the blob and tree
//! handlers, building answers, and the HTTP status of every [`Error`] (in [`status`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    AsHeaderName, HeaderValue, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tracing::{debug, warn};

use super::peer::SIGNATURE_HEADER;
use super::{lock, Node, TreeView, NODE_HEADER};
use crate::error::{Error, Result};

pub(super) type Body = BoxBody<Bytes, std::io::Error>;

/// Connections served at once.
const MAX_CONNECTIONS: usize = 8192;

/// Accepts connections until the listener fails.
pub async fn serve(node: Arc<Node>, listener: tokio::net::TcpListener) -> Result<()> {
    // Bounded connections, each with a deadline for its request headers: idle or slow
    // clients cannot use up the file descriptors.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await.map_err(|e| Error::Io {
            op: "accept on",
            path: listener
                .local_addr()
                .map_or_else(|_| "the listener".into(), |a| a.to_string()),
            cause: Arc::new(std::io::Error::other(e)),
        })?;
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait and go on.
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| node.clone().handle(req, remote));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                debug!("connection: {e}");
            }
            drop(permit);
        });
    }
}

impl Node {
    /// Serves one HTTP request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_string();
        let prefix = format!("/{}/", self.cfg.api_key);
        let resp = if let Some(origin) = path.strip_prefix(&prefix) {
            let origin = origin.to_string();
            match *req.method() {
                Method::GET | Method::HEAD => self.serve_blob(&req, &origin, remote).await,
                // Reports come from the reader on this host only: anyone else could make an
                // agent drop its cache and blame honest parents.
                Method::DELETE if remote.ip().is_loopback() => self.bad_range(&req, &origin).await,
                Method::DELETE => Err(Error::Forbidden(format!(
                    "DELETE is for the local reader, not {}",
                    remote.ip()
                ))),
                _ => Err(Error::MethodNotAllowed {
                    method: req.method().to_string(),
                }),
            }
        } else {
            match (req.method().clone(), path.as_str()) {
                (Method::POST, "/_p2p/v1/join") => self.on_join(req).await,
                (Method::POST, "/_p2p/v1/report") => self.on_report(req).await,
                (Method::POST, "/_p2p/v1/vouch") => self.on_vouch(req).await,
                (Method::GET, "/_p2p/v1/trees") => Ok(json(&self.trees_view())),
                (Method::GET, "/metrics") => {
                    let mut r = text(StatusCode::OK, self.render_metrics());
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    Ok(r)
                }
                (Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok")),
                _ => Err(Error::NotFound(format!(
                    "{path}: expected /{}/<blob URL>",
                    self.cfg.api_key
                ))),
            }
        };
        Ok(resp.unwrap_or_else(|e| error_response(&e)))
    }

    /// The trees this node keeps (roots), as `/_p2p/v1/trees` shows them.
    fn trees_view(&self) -> HashMap<String, TreeView> {
        lock(&self.trees)
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    TreeView {
                        shape: t.shape(),
                        parents: t.parents(),
                    },
                )
            })
            .collect()
    }
}

/// The HTTP status of an error: the one place where errors become statuses.
pub(crate) fn status(e: &Error) -> StatusCode {
    match e {
        Error::Origin { .. } | Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
        Error::Range { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Loop { .. } => StatusCode::LOOP_DETECTED,
        // An upstream's refusal passes as it is; its other failures are ours to report.
        Error::Refused { status, .. } => match StatusCode::from_u16(*status) {
            Ok(s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND)) => s,
            _ => StatusCode::BAD_GATEWAY,
        },
        Error::Upstream { .. } | Error::Piece { .. } => StatusCode::BAD_GATEWAY,
        Error::Config(_) | Error::Client(_) | Error::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error as an answer: [`status`], the message, and the headers that go with it (the
/// registry's challenge with a 401, the blob's size with a 416).
pub(super) fn error_response(e: &Error) -> Response<Body> {
    let mut resp = text(status(e), e.to_string());
    let header = match e {
        Error::Refused {
            challenge: Some(w), ..
        } => Some((WWW_AUTHENTICATE, w.clone())),
        Error::Range { size, .. } => Some((CONTENT_RANGE, format!("bytes */{size}"))),
        _ => None,
    };
    if let Some((name, v)) = header.and_then(|(n, v)| Some((n, HeaderValue::from_str(&v).ok()?))) {
        resp.headers_mut().insert(name, v);
    }
    resp
}

pub(super) fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into() + "\n"))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

pub(super) fn json<T: Serialize>(v: &T) -> Response<Body> {
    let mut r = text(StatusCode::OK, serde_json::to_string(v).unwrap_or_default());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(super) fn header(req: &Request<Incoming>, name: impl AsHeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A tree protocol request from another node: its JSON body (at most 64 KiB), its
/// `Authorization`, and the node it says it comes from (`X-P2P-Node`). With a deployment
/// secret, the request's signature is checked first.
pub(super) async fn read_peer_json<T: serde::de::DeserializeOwned>(
    node: &Node,
    req: Request<Incoming>,
) -> Result<(T, Option<String>, Option<String>)> {
    let auth = header(&req, AUTHORIZATION).map(str::to_string);
    let from = header(&req, NODE_HEADER).map(str::to_string);
    let signature = header(&req, SIGNATURE_HEADER).map(str::to_string);
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let body = Limited::new(req.into_body(), 64 << 10)
        .collect()
        .await
        .map_err(|e| Error::bad_request("body", e))?
        .to_bytes();
    node.check_peer(signature.as_deref(), &method, &path, from.as_deref(), &body)?;
    let v = serde_json::from_slice(&body).map_err(|e| Error::bad_request("body", e))?;
    Ok((v, auth, from))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error's answer: status, message and the header that goes with it.
    #[test]
    fn errors_as_answers() {
        let refused = |status, challenge: Option<&str>| Error::Refused {
            status,
            challenge: challenge.map(str::to_string),
            message: format!("registry h answered {status}"),
        };
        for (e, want) in [
            (refused(401, Some("Basic realm=\"r\"")), 401),
            (refused(403, None), 403),
            (refused(404, None), 404),
            (refused(500, None), 502),
            (refused(429, None), 502),
            (Error::upstream("registry h", "connection refused"), 502),
            (Error::bad_request("body", "EOF"), 400),
            (
                Error::Range {
                    range: Some("bytes=9-".into()),
                    size: 4,
                },
                416,
            ),
            (Error::Loop { node: "n".into() }, 508),
            (Error::Forbidden("no".into()), 403),
            (Error::Config("x".into()), 500),
        ] {
            let r = error_response(&e);
            assert_eq!(r.status().as_u16(), want, "{e}");
            let h = |n| {
                r.headers()
                    .get(n)
                    .map(|v: &HeaderValue| v.to_str().unwrap())
            };
            match want {
                401 => assert_eq!(h(WWW_AUTHENTICATE), Some("Basic realm=\"r\"")),
                416 => assert_eq!(h(CONTENT_RANGE), Some("bytes */4")),
                _ => assert!(h(WWW_AUTHENTICATE).is_none() && h(CONTENT_RANGE).is_none()),
            }
        }
    }
}
