//! The NBD server against real clients (nbdinfo, qemu-img, nbdcopy, qemu-io) and against a
//! hand-written hostile client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use common::{require_tool, run, vector, G_DISK};
use overlaybd_api::{ImageConfig, LayerConfig};
use overlaybd_daemon::device::{Device, DeviceOptions};
use overlaybd_export::nbd::{self, NbdServer};
use overlaybd_lsmt::{RwLayer, Uuid};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

fn g_device(name: &str, upper: Option<&Path>) -> Arc<Device> {
    let mut cfg = ImageConfig::default();
    cfg.lowers.push(LayerConfig {
        file: vector("g.ext4.lz4.bs4.zfile").display().to_string(),
        ..Default::default()
    });
    if let Some(dir) = upper {
        let (data, index) = (dir.join("upper.data"), dir.join("upper.index"));
        let parent: Uuid = "33333333-4444-5555-6666-777777777777".parse().unwrap();
        drop(RwLayer::create(&data, &index, 1 << 30, None, parent).unwrap());
        cfg.upper.data = data.display().to_string();
        cfg.upper.index = index.display().to_string();
    }
    Arc::new(Device::open(name, &cfg, None, &DeviceOptions::default()).unwrap())
}

fn file_sha256(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    assert_eq!(total, 1 << 30, "{} has {total} bytes", p.display());
    hex::encode(h.finalize())
}

fn tools() -> bool {
    ["nbdinfo", "nbdcopy", "qemu-img", "qemu-io"]
        .iter()
        .all(|t| require_tool(t))
}

#[test]
fn real_clients_read_the_image_over_unix_and_tcp() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = NbdServer::new();
    server.add("g", g_device("g", None));
    let sock = tmp.path().join("nbd.sock");
    server
        .listen_unix(overlaybd_api::bind_private_unix(&sock).unwrap())
        .unwrap();
    let addr = server.listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let unix_uri = format!("nbd+unix:///g?socket={}", sock.display());
    let tcp_uri = format!("nbd://127.0.0.1:{}/g", addr.port());

    let info = run("nbdinfo", &["--json", &unix_uri]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], 1u64 << 30, "{info}");
    assert_eq!(e["is_read_only"], true, "{info}");
    assert_eq!(e["can_multi_conn"], true, "{info}");
    assert_eq!(e["block_size_minimum"], 512, "{info}");
    assert_eq!(e["block_size_preferred"], 4096, "{info}");
    assert_eq!(e["block_size_maximum"], 32 << 20, "{info}");
    let list = run("nbdinfo", &["--list", "--json", &tcp_uri]);
    assert!(list.contains("\"export-name\": \"g\""), "{list}");

    let out = tmp.path().join("qemu-img.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &unix_uri,
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(file_sha256(&out), G_DISK);
    std::fs::remove_file(&out).unwrap();

    // nbdcopy opens several connections at once (multi-conn).
    let out = tmp.path().join("nbdcopy.raw");
    run("nbdcopy", &[&tcp_uri, out.to_str().unwrap()]);
    assert_eq!(file_sha256(&out), G_DISK);
    assert!(
        server
            .stats()
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 4
    );

    // A read-only export refuses writes.
    let w = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 1 0 4096", &unix_uri])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&w.stdout).to_string() + &String::from_utf8_lossy(&w.stderr);
    assert!(
        !w.status.success() || text.contains("not permitted") || text.contains("read-only"),
        "{text}"
    );
    assert!(!text.contains("wrote 4096"), "{text}");
}

#[test]
fn qemu_io_writes_and_reads_patterns_on_a_writable_export() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = NbdServer::new();
    let dev = g_device("rw", Some(tmp.path()));
    server.add("rw", dev.clone());
    let sock = tmp.path().join("nbd.sock");
    server
        .listen_unix(overlaybd_api::bind_private_unix(&sock).unwrap())
        .unwrap();
    let uri = format!("nbd+unix:///rw?socket={}", sock.display());
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut cmds = Vec::new();
    let mut written = Vec::new();
    for i in 0..24u64 {
        let off = rng.gen_range(0..(1u64 << 30) / 4096 - 64) * 4096 + 512 * (i % 8);
        let len = 512 * rng.gen_range(1..256u64);
        let pat = 0x10 + i as u8;
        cmds.push(format!("write -P {pat} {off} {len}"));
        written.push((off, len, pat));
    }
    // Later writes may overlap earlier ones: check each range against a model.
    let mut model = std::collections::BTreeMap::new();
    for &(off, len, pat) in &written {
        for s in (off..off + len).step_by(512) {
            model.insert(s, pat);
        }
    }
    for &(off, len, _) in &written {
        for s in (off..off + len).step_by(512) {
            cmds.push(format!("read -P {} {s} 512", model[&s]));
        }
    }
    cmds.push("discard 1048576 65536".into());
    cmds.push("read -P 0 1048576 65536".into());
    cmds.push("write -z 2097152 131072".into());
    cmds.push("read -P 0 2097152 131072".into());
    cmds.push("flush".into());
    let mut args = vec!["-f".to_string(), "raw".into()];
    for c in &cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(uri);
    let out = std::process::Command::new("qemu-io")
        .args(&args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Pattern verification failed"), "{text}");
    assert!(!text.contains("failed"), "{text}");
    assert_eq!(
        text.matches("read 512/512 bytes").count(),
        model.len(),
        "{text}"
    );
    // The device holds the same bytes when read directly.
    for (&s, &pat) in model.iter().take(50) {
        let mut b = [0u8; 512];
        dev.read(s, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == pat));
    }
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s
}

fn hello(s: &mut TcpStream) {
    let mut b = [0u8; 18];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b[0..8], b"NBDMAGIC");
    assert_eq!(&b[8..16], b"IHAVEOPT");
}

fn option(s: &mut TcpStream, opt: u32, data: &[u8], claimed_len: Option<u32>) {
    let mut b = b"IHAVEOPT".to_vec();
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&claimed_len.unwrap_or(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
}

/// Reads one option reply: (option, type, data).
fn opt_reply(s: &mut TcpStream) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        u64::from_be_bytes(h[0..8].try_into().unwrap()),
        nbd::REPLY_MAGIC
    );
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).unwrap();
    (
        u32::from_be_bytes(h[8..12].try_into().unwrap()),
        u32::from_be_bytes(h[12..16].try_into().unwrap()),
        d,
    )
}

fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn go(s: &mut TcpStream, name: &str) -> Vec<(u32, Vec<u8>)> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    option(s, nbd::OPT_GO, &d, None);
    let mut replies = Vec::new();
    loop {
        let (opt, kind, data) = opt_reply(s);
        assert_eq!(opt, nbd::OPT_GO);
        replies.push((kind, data));
        if kind == 1 || kind >= 1 << 31 {
            return replies;
        }
    }
}

fn request(s: &mut TcpStream, cmd: u16, cookie: u64, offset: u64, len: u32) {
    let mut b = nbd::REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    s.write_all(&b).unwrap();
}

/// Reads a simple reply header: (error, cookie).
fn reply(s: &mut TcpStream) -> (u32, u64) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        u32::from_be_bytes(h[0..4].try_into().unwrap()),
        nbd::SIMPLE_REPLY_MAGIC
    );
    (
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
    )
}

#[test]
fn malformed_negotiation_and_requests_get_errors_not_hangs() {
    let server = NbdServer::new();
    server.add("g", g_device("g", None));
    let addr = server.listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();

    // Unknown client flags: the connection is closed.
    let mut s = connect(addr);
    hello(&mut s);
    s.write_all(&0x8000_0000u32.to_be_bytes()).unwrap();
    assert!(closed(&mut s));

    // An option claiming 1 GiB: NBD_REP_ERR_TOO_BIG, then closed.
    let mut s = connect(addr);
    hello(&mut s);
    s.write_all(&3u32.to_be_bytes()).unwrap();
    option(&mut s, nbd::OPT_GO, &[], Some(1 << 30));
    let (_, kind, _) = opt_reply(&mut s);
    assert_eq!(kind, (1 << 31) + 9);
    assert!(closed(&mut s));

    // Malformed GO data, an unknown export, an unknown option: errors, and the negotiation
    // goes on; then LIST, INFO and GO work on the same connection.
    let mut s = connect(addr);
    hello(&mut s);
    s.write_all(&3u32.to_be_bytes()).unwrap();
    option(&mut s, nbd::OPT_GO, &[0, 0, 0, 9, b'g'], None);
    assert_eq!(opt_reply(&mut s).1, (1 << 31) + 3);
    assert_eq!(go(&mut s, "nope").last().unwrap().0, (1 << 31) + 6);
    option(&mut s, 0x4242, b"xyz", None);
    assert_eq!(opt_reply(&mut s).1, (1 << 31) + 1);
    option(&mut s, nbd::OPT_LIST, &[], None);
    let (_, kind, data) = opt_reply(&mut s);
    assert_eq!((kind, &data[4..]), (2, &b"g"[..]));
    assert_eq!(opt_reply(&mut s).1, 1);
    let replies = go(&mut s, "g");
    assert_eq!(replies.last().unwrap().0, 1);
    let export = &replies
        .iter()
        .find(|(k, d)| *k == 3 && d[0..2] == [0, 0])
        .unwrap()
        .1;
    assert_eq!(
        u64::from_be_bytes(export[2..10].try_into().unwrap()),
        1 << 30
    );

    // Transmission: an oversized read, a read past the end and a write to the read-only
    // export get errors; a good read still works; a bad magic closes the connection.
    request(&mut s, nbd::CMD_READ, 1, 0, 64 << 20);
    assert_eq!(reply(&mut s), (22, 1));
    request(&mut s, nbd::CMD_READ, 2, (1 << 30) - 512, 1024);
    assert_eq!(reply(&mut s), (22, 2));
    request(&mut s, nbd::CMD_WRITE, 3, 0, 512);
    s.write_all(&[7u8; 512]).unwrap();
    assert_eq!(reply(&mut s), (1, 3));
    request(&mut s, 99, 4, 0, 0);
    assert_eq!(reply(&mut s), (95, 4));
    request(&mut s, nbd::CMD_READ, 5, 1024, 4096);
    assert_eq!(reply(&mut s), (0, 5));
    let mut data = vec![0u8; 4096];
    s.read_exact(&mut data).unwrap();
    s.write_all(&[0xde; 28]).unwrap();
    assert!(closed(&mut s));

    // An oversized write: EINVAL, then closed (its payload cannot be skipped safely).
    let mut s = connect(addr);
    hello(&mut s);
    s.write_all(&3u32.to_be_bytes()).unwrap();
    go(&mut s, "g");
    request(&mut s, nbd::CMD_WRITE, 6, 0, u32::MAX);
    assert_eq!(reply(&mut s), (22, 6));
    assert!(closed(&mut s));

    // The server still serves after all that.
    let mut s = connect(addr);
    hello(&mut s);
    s.write_all(&3u32.to_be_bytes()).unwrap();
    go(&mut s, "");
    request(&mut s, nbd::CMD_READ, 7, 0, 512);
    assert_eq!(reply(&mut s), (0, 7));
    let st = server.stats();
    assert!(
        st.protocol_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
}

#[test]
fn arbitrary_client_bytes_never_panic() {
    let dev = g_device("d", None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut good = 3u32.to_be_bytes().to_vec();
    good.extend_from_slice(b"IHAVEOPT");
    good.extend_from_slice(&nbd::OPT_GO.to_be_bytes());
    good.extend_from_slice(&7u32.to_be_bytes());
    good.extend_from_slice(&[0, 0, 0, 1, b'd', 0, 0]);
    for cmd in [0u16, 1, 3, 4, 6, 2] {
        let mut b = nbd::REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&1u64.to_be_bytes());
        b.extend_from_slice(&4096u64.to_be_bytes());
        b.extend_from_slice(&512u32.to_be_bytes());
        if cmd == 1 {
            b.extend_from_slice(&[0u8; 512]);
        }
        good.extend_from_slice(&b);
    }
    for _ in 0..3000 {
        let mut input = good.clone();
        for _ in 0..rng.gen_range(1..6) {
            let i = rng.gen_range(0..input.len());
            input[i] = rng.gen();
        }
        input.truncate(rng.gen_range(0..=input.len()));
        nbd::fuzz::serve_bytes(dev.clone(), &input);
    }
}
