//! Warm random 4 KiB reads through the blob cache versus `pread` on its cache file, printed as
//! numbers (not a timed test).
//!
//! `cargo bench -p overlaybd-cache --bench cache_reads`

use std::time::{Duration, Instant};

use zfile::ReadAt;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Warm random 4 KiB reads through the blob cache versus `pread` on its cache file.
fn main() {
    use overlaybd_cache::BlobCache;
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = 256 << 20;
    let mut rng = Rng(11);
    let origin: Vec<u8> = (0..size / 8)
        .flat_map(|_| rng.next().to_le_bytes())
        .collect();
    let cache = BlobCache::open(dir.path(), "sha256:bench", size, 256 * 1024, origin).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        cache.read_at(off, &mut buf).unwrap();
        off += buf.len() as u64;
    }
    let file = std::fs::File::open(dir.path().join("sha256_bench.data")).unwrap();
    let offsets: Vec<u64> = (0..1_000_000)
        .map(|_| (rng.next() % (size / 4096)) * 4096)
        .collect();
    let run = |f: &dyn Fn(u64, &mut [u8])| {
        let mut best = Duration::MAX;
        let mut b = [0u8; 4096];
        for _ in 0..3 {
            let t = Instant::now();
            for &o in &offsets {
                f(o, &mut b);
            }
            best = best.min(t.elapsed());
        }
        offsets.len() as f64 / best.as_secs_f64()
    };
    let c = run(&|o, b| {
        cache.read_at(o, b).unwrap();
    });
    let p = run(&|o, b| {
        zfile::source::read_full_at(&file, o, b).unwrap();
    });
    println!("\nwarm random 4 KiB reads, 256 MiB blob, one thread: cache {c:.0}/s, pread on the cache file {p:.0}/s, ratio {:.2}", c / p);
}
