//! A TCP relay in front of the registry: counts the bytes the registry sent, can hold them to
//! a rate (a token bucket, for the cold-start benchmark), and has faults: stopped
//! (connections cut, new ones refused: a registry that went away), answering 503 (connections
//! cut, every new request answered `503 Service Unavailable`: a registry overloaded or behind
//! a restarting load balancer) and stalled (connections open, the registry's bytes held back).
//! [`Relay::resume`] ends any of them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Shared {
    served: AtomicU64,
    requests: AtomicU64,
    stopped: AtomicBool,
    unavailable: AtomicBool,
    stalled: AtomicBool,
    /// Bytes per second (0 = unlimited) and the bucket: (tokens, last refill).
    rate: AtomicU64,
    bucket: Mutex<(f64, Instant)>,
    conns: Mutex<Vec<TcpStream>>,
}

#[derive(Debug)]
pub struct Relay {
    addr: String,
    shared: Arc<Shared>,
}

impl Shared {
    /// Waits until `n` bytes may pass.
    fn take(&self, n: usize) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        loop {
            let wait = {
                let mut b = self.bucket.lock().unwrap();
                let now = Instant::now();
                b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rate as f64)
                    .min(rate as f64 / 10.0);
                b.1 = now;
                if b.0 >= n as f64 {
                    b.0 -= n as f64;
                    return;
                }
                (n as f64 - b.0) / rate as f64
            };
            std::thread::sleep(Duration::from_secs_f64(wait.min(0.05)));
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, shared: Option<Arc<Shared>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(s) = &shared {
            while s.stalled.load(Ordering::Relaxed) && !s.stopped.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if s.stopped.load(Ordering::Relaxed) {
                break;
            }
            // At most 16 KiB per token grab, so a limit is smooth.
            for c in buf[..n].chunks(16 << 10) {
                s.take(c.len());
                if to.write_all(c).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
                s.served.fetch_add(c.len() as u64, Ordering::Relaxed);
            }
        } else if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Relay {
    /// Relays 127.0.0.1:<new port> to `upstream`; `rate` bytes/s from upstream (0 = no limit).
    pub fn start(upstream: &str, rate: u64) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            served: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            unavailable: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            rate: AtomicU64::new(rate),
            bucket: Mutex::new((0.0, Instant::now())),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                if s.stopped.load(Ordering::Relaxed) {
                    let _ = c.shutdown(Shutdown::Both);
                    continue;
                }
                if s.unavailable.load(Ordering::Relaxed) {
                    std::thread::spawn(move || answer_503(c));
                    continue;
                }
                let Ok(u) = TcpStream::connect(&upstream) else {
                    let _ = c.shutdown(Shutdown::Both);
                    continue;
                };
                s.requests.fetch_add(1, Ordering::Relaxed);
                let _ = c.set_nodelay(true);
                let _ = u.set_nodelay(true);
                if let Ok(cc) = c.try_clone() {
                    s.conns.lock().unwrap().push(cc);
                }
                let (c2, u2) = (c.try_clone().unwrap(), u.try_clone().unwrap());
                std::thread::spawn(move || pump(c, u, None));
                let s2 = s.clone();
                std::thread::spawn(move || pump(u2, c2, Some(s2)));
            }
        });
        Relay { addr, shared }
    }

    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Bytes the registry sent through the relay (bodies and headers).
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Connections opened to the registry.
    pub fn connections(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    pub fn set_rate(&self, rate: u64) {
        self.shared.rate.store(rate, Ordering::Relaxed);
    }

    /// Ends [`Relay::stop`], [`Relay::unavailable`] and [`Relay::stall`]: the registry is
    /// back (held bytes flow again).
    pub fn resume(&self) {
        self.shared.stopped.store(false, Ordering::Relaxed);
        self.shared.unavailable.store(false, Ordering::Relaxed);
        self.shared.stalled.store(false, Ordering::Relaxed);
    }

    /// Cuts every connection and refuses new ones.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        self.cut();
    }

    /// Cuts every connection and answers every request on a new one with `503 Service
    /// Unavailable`.
    pub fn unavailable(&self) {
        self.shared.unavailable.store(true, Ordering::Relaxed);
        self.cut();
    }

    /// Holds back what the registry sends, on every connection, new ones included.
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::Relaxed);
    }

    fn cut(&self) {
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Reads one request's head from `c` and answers 503, then closes.
fn answer_503(mut c: TcpStream) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = c.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\
          Connection: close\r\n\r\nunavailable\n",
    );
    let _ = c.shutdown(Shutdown::Both);
}
