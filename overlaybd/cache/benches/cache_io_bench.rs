//! Cache file I/O: plain `pread` (from one thread, and from a pool of threads) against io_uring
//! (queue depth 1 and 32), for warm random 4 KiB reads of a cache file, printed as numbers.
//!
//! `cargo bench -p overlaybd --bench cache_io_bench`. The issue asks for io_uring unless a
//! plain thread pool is faster on this machine; this is the measurement behind that choice.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use io_uring::{opcode, types, IoUring};

const FILE: u64 = 256 << 20;
const BS: usize = 4096;
const OPS: usize = 400_000;

fn offsets(seed: u64, n: usize) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (FILE / BS as u64)) * BS as u64
        })
        .collect()
}

fn pread_run(f: &std::fs::File, offs: &[u64]) {
    let mut buf = vec![0u8; BS];
    for &o in offs {
        let n = f.read_at(&mut buf, o).unwrap();
        assert_eq!(n, BS);
    }
}

fn uring_run(f: &std::fs::File, offs: &[u64], depth: usize) {
    let mut ring = IoUring::new(depth as u32).unwrap();
    let mut bufs = vec![vec![0u8; BS]; depth];
    let fd = types::Fd(f.as_raw_fd());
    let mut next = 0;
    let mut inflight = 0;
    let mut free: Vec<usize> = (0..depth).collect();
    while next < offs.len() || inflight > 0 {
        while inflight < depth && next < offs.len() {
            let slot = free.pop().unwrap();
            let e = opcode::Read::new(fd, bufs[slot].as_mut_ptr(), BS as u32)
                .offset(offs[next])
                .build()
                .user_data(slot as u64);
            // SAFETY: the buffer of `slot` stays alive and untouched until its completion is
            // reaped below (the slot is only reused after that).
            unsafe { ring.submission().push(&e).unwrap() };
            next += 1;
            inflight += 1;
        }
        ring.submit_and_wait(1).unwrap();
        for c in ring.completion() {
            assert_eq!(c.result(), BS as i32);
            free.push(c.user_data() as usize);
            inflight -= 1;
        }
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.data");
    {
        let f = std::fs::File::create(&path).unwrap();
        let mut x: u64 = 7;
        let chunk: Vec<u8> = (0..(4 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for i in 0..FILE / chunk.len() as u64 {
            f.write_all_at(&chunk, i * chunk.len() as u64).unwrap();
        }
    }
    let f = std::fs::File::open(&path).unwrap();
    // Warm the page cache.
    pread_run(
        &f,
        &(0..FILE / BS as u64)
            .map(|i| i * BS as u64)
            .collect::<Vec<_>>(),
    );
    let offs = offsets(99, OPS);
    let mut rows: Vec<(String, f64)> = Vec::new();
    let mut measure = |name: &str, threads: usize, run: &(dyn Fn(&[u64]) + Sync)| {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            std::thread::scope(|s| {
                for part in offs.chunks(OPS / threads) {
                    s.spawn(move || run(part));
                }
            });
            best = best.min(t.elapsed().as_secs_f64());
        }
        rows.push((name.to_string(), OPS as f64 / best));
    };
    measure("pread, 1 thread", 1, &|o| pread_run(&f, o));
    measure("pread, pool of 2 threads", 2, &|o| pread_run(&f, o));
    measure("pread, pool of 8 threads", 8, &|o| pread_run(&f, o));
    measure("io_uring, 1 thread, depth 1", 1, &|o| uring_run(&f, o, 1));
    measure("io_uring, 1 thread, depth 32", 1, &|o| uring_run(&f, o, 32));
    measure("io_uring, 2 threads, depth 32", 2, &|o| {
        uring_run(&f, o, 32)
    });
    println!("warm random 4 KiB reads of a 256 MiB cache file (best of 3, {OPS} reads):");
    let base = rows[0].1;
    for (name, v) in &rows {
        println!(
            "  {name:<32} {:>9.0} reads/s  {:>6.2} us/read  ({:.2}x pread)",
            v,
            1e6 / v,
            v / base
        );
    }
}
