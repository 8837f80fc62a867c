//! ZFile throughput, printed as numbers (not a timed test).
//!
//! `cargo bench -p zfile --bench zfile_bench` — input is `gen_input.py 268435456 3` (256 MiB of
//! mixed content), regenerated in memory; `ZFILE_BENCH_MB` sets another size. Compressed
//! files are written to a temp dir and read back through `std::fs::File` (page cache).
//! Each figure is the best of `ZFILE_BENCH_RUNS` (default 3) runs.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zfile::{Algorithm, WriterOptions, ZFile, ZFileWriter};

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        out = Some(r);
    }
    (best, out.expect("at least one run"))
}

fn mbs(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn compress(data: &[u8], opts: WriterOptions) -> Vec<u8> {
    let mut w = ZFileWriter::new(Vec::with_capacity(data.len() / 2), opts).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap().0
}

/// The codec alone over the same blocks: no CRC, no index, no file.
fn raw_codec(data: &[u8], algo: Algorithm, bs: usize, runs: usize) -> (f64, f64) {
    match algo {
        Algorithm::Lz4 => {
            let mut comp = Vec::new();
            let (dc, _) = best(runs, || {
                comp.clear();
                let mut buf = vec![0u8; bs + bs / 255 + 16];
                for c in data.chunks(bs) {
                    let n = lz4::block::compress_to_buffer(
                        c,
                        Some(lz4::block::CompressionMode::DEFAULT),
                        false,
                        &mut buf,
                    )
                    .unwrap();
                    comp.push(buf[..n].to_vec());
                }
            });
            let mut out = vec![0u8; bs];
            let (dd, _) = best(runs, || {
                for c in &comp {
                    lz4::block::decompress_to_buffer(c, Some(bs as i32), &mut out).unwrap();
                }
            });
            (mbs(data.len(), dc), mbs(data.len(), dd))
        }
        Algorithm::Zstd => {
            let mut comp = Vec::new();
            let mut cctx = zstd::bulk::Compressor::new(3).unwrap();
            let (dc, _) = best(runs, || {
                comp.clear();
                for c in data.chunks(bs) {
                    comp.push(cctx.compress(c).unwrap());
                }
            });
            let mut d = zstd::bulk::Decompressor::new().unwrap();
            let mut out = vec![0u8; bs];
            let (dd, _) = best(runs, || {
                for c in &comp {
                    d.decompress_to_buffer(c, &mut out).unwrap();
                }
            });
            (mbs(data.len(), dc), mbs(data.len(), dd))
        }
    }
}

fn sequential_read(z: &ZFile<std::fs::File>) -> usize {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < z.len() {
        off += z.read_at(off, &mut buf).unwrap() as u64;
    }
    off as usize
}

/// Random aligned 4 KiB reads per second over `threads` threads for `secs` seconds.
fn random_reads(z: &ZFile<std::fs::File>, threads: usize, secs: f64) -> f64 {
    let count = AtomicU64::new(0);
    let blocks = z.len() / 4096;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let count = &count;
            s.spawn(move || {
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ t as u64;
                let mut buf = [0u8; 4096];
                let mut n = 0u64;
                while start.elapsed().as_secs_f64() < secs {
                    for _ in 0..256 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        z.read_at((x % blocks) * 4096, &mut buf).unwrap();
                    }
                    n += 256;
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken from the command line.
    let mb: usize = std::env::var("ZFILE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let runs: usize = std::env::var("ZFILE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let t = Instant::now();
    let data = zfile::testutil::gen_input(mb << 20, 3);
    println!(
        "input: gen_input({} MiB, seed 3), generated in {:.1} s; {} cores",
        mb,
        t.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dir = tempfile::tempdir().unwrap();

    println!(
        "\n{:<16} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "setting", "ratio", "comp 1T", "comp 2T", "raw comp", "decomp", "raw decomp", "decomp+b3"
    );
    let settings = [
        (Algorithm::Lz4, 4096u32),
        (Algorithm::Zstd, 4096),
        (Algorithm::Lz4, 32768),
    ];
    for (algo, bs) in settings {
        let opts = WriterOptions {
            algorithm: algo,
            block_size: bs,
            ..Default::default()
        };
        let (c1, file) = best(runs, || compress(&data, opts.clone()));
        let (c2, file2) = best(runs, || {
            compress(
                &data,
                WriterOptions {
                    threads: 2,
                    ..opts.clone()
                },
            )
        });
        assert!(file == file2, "threaded output differs");
        let path = dir.path().join(format!("{algo}-{bs}"));
        std::fs::write(&path, &file).unwrap();
        let z = ZFile::open(std::fs::File::open(&path).unwrap()).unwrap();
        let (d, n) = best(runs, || sequential_read(&z));
        assert_eq!(n, data.len());
        // With the integrity table (BLAKE3 per block checked on every read).
        let fi = compress(
            &data,
            WriterOptions {
                integrity: true,
                ..opts.clone()
            },
        );
        let pi = dir.path().join(format!("{algo}-{bs}-b3"));
        std::fs::write(&pi, &fi).unwrap();
        let zi = ZFile::open(std::fs::File::open(&pi).unwrap()).unwrap();
        let (di, _) = best(runs, || sequential_read(&zi));
        let (rc, rd) = raw_codec(&data, algo, bs as usize, runs);
        println!(
            "{:<16} {:>8.1}% {:>7.0} MB/s {:>6.0} MB/s {:>6.0} MB/s {:>6.0} MB/s {:>6.0} MB/s {:>6.0} MB/s",
            format!("{algo}/{}K", bs / 1024),
            100.0 * file.len() as f64 / data.len() as f64,
            mbs(data.len(), c1),
            mbs(data.len(), c2),
            rc,
            mbs(data.len(), d),
            rd,
            mbs(data.len(), di),
        );
    }

    println!("\nrandom aligned 4 KiB reads through the reader (file in page cache), 3 s each:");
    for (algo, integrity) in [
        (Algorithm::Lz4, false),
        (Algorithm::Lz4, true),
        (Algorithm::Zstd, false),
    ] {
        let path = dir.path().join(format!("rand-{algo}-{integrity}"));
        std::fs::write(
            &path,
            compress(
                &data,
                WriterOptions {
                    algorithm: algo,
                    integrity,
                    ..Default::default()
                },
            ),
        )
        .unwrap();
        let z = ZFile::open(std::fs::File::open(&path).unwrap()).unwrap();
        let r1 = random_reads(&z, 1, 3.0);
        let r2 = random_reads(&z, 2, 3.0);
        println!(
            "  {:<20} 1 thread {:>9.0} reads/s   2 threads {:>9.0} reads/s",
            format!("{algo}/4K{}", if integrity { " +blake3" } else { "" }),
            r1,
            r2
        );
    }
    let z = ZFile::open(std::fs::File::open(dir.path().join("rand-lz4-true")).unwrap()).unwrap();
    println!("\nreader memory for {} MiB at 4 KiB blocks with the integrity table: {} KiB (index + digests)", mb, z.heap_bytes() / 1024);
}
