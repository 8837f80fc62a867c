//! A tiny HTTP/1.1 server for tests (one thread per connection, `Connection: close`), for the
//! parts a real registry cannot play: a redirecting front, blob storage, a P2P agent.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response: status, headers, body (Content-Length is added).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    pub fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    pub fn body(mut self, b: Vec<u8>) -> Self {
        self.body = b;
        self
    }
}

/// Reads a request line and headers (the body, if any, is left unread).
pub fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

/// Serves `handler` on 127.0.0.1; returns `http://127.0.0.1:<port>`.
pub fn serve(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let handler = handler.clone();
            std::thread::spawn(move || {
                let Ok(clone) = conn.try_clone() else { return };
                let Some(req) = read_request(&mut BufReader::new(clone)) else {
                    return;
                };
                let resp = handler(&req);
                let mut head = format!(
                    "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    resp.status,
                    resp.body.len()
                );
                for (k, v) in &resp.headers {
                    head += &format!("{k}: {v}\r\n");
                }
                head += "\r\n";
                let _ = conn.write_all(head.as_bytes());
                if req.method != "HEAD" {
                    let _ = conn.write_all(&resp.body);
                }
                let _ = conn.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    url
}

/// Serves `Range: bytes=a-b` of `data` (206), or all of it (200).
pub fn range_response(req: &Request, data: &[u8]) -> Response {
    let Some(r) = req.header("range").and_then(|r| r.strip_prefix("bytes=")) else {
        return Response::new(200).body(data.to_vec());
    };
    let (a, b) = r.split_once('-').unwrap();
    let a: usize = a.parse().unwrap();
    let b: usize = b.parse::<usize>().unwrap().min(data.len() - 1);
    Response::new(206)
        .header("Content-Range", format!("bytes {a}-{b}/{}", data.len()))
        .body(data[a..=b].to_vec())
}
