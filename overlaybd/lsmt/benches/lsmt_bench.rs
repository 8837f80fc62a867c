//! LSMT figures, printed as numbers (not a timed test).
//!
//! `cargo bench -p overlaybd --bench lsmt_bench`
//! - merged-index lookups per second (one thread) at 1k, 10k, 100k, 1M extents, with
//!   `slice::partition_point` over 16-byte mappings (what `std::lower_bound` does in overlaybd)
//!   measured in the same run, and the memory per extent;
//! - time to merge 50 layers of 100k extents;
//! - sequential 1 MiB reads through a 4-layer stack of committed layers (page cache), against
//!   reading the same disk as a raw file and `cat raw > /dev/null`.

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlaybd_lsmt::{
    self as lsmt, CommitOptions, Mapping, RoIndex, RoLayer, RwLayer, Stack, Uuid,
};
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

/// `n` sorted extents of 1..64 sectors with gaps of 0..64 sectors.
fn extents(n: usize, rng: &mut Rng) -> Vec<Mapping> {
    let mut out = Vec::with_capacity(n);
    let mut pos = 0u64;
    for i in 0..n {
        pos += rng.next() % 64;
        let len = 1 + (rng.next() % 64) as u32;
        out.push(Mapping::data(pos, len, 8 + i as u64 * 64));
        pos += len as u64;
    }
    out
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn lookups() {
    println!("merged-index lookups, one thread, random sectors over the mapped range:");
    println!(
        "{:>10} {:>16} {:>16} {:>8} {:>14}",
        "extents", "ours (M/s)", "lower_bound", "ratio", "bytes/extent"
    );
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for n in [1_000usize, 10_000, 100_000, 1_000_000] {
        let maps = extents(n, &mut rng);
        let idx = RoIndex::new(&maps).unwrap();
        let span = maps.last().unwrap().end();
        let queries: Vec<u64> = (0..4_000_000).map(|_| rng.next() % span).collect();
        let mut best_ours = Duration::MAX;
        let mut best_lb = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let mut hits = 0u64;
            for &q in &queries {
                if let Some(m) = idx.find(q) {
                    hits += m.moffset;
                }
            }
            black_box(hits);
            best_ours = best_ours.min(t.elapsed());
            let t = Instant::now();
            let mut hits = 0u64;
            for &q in &queries {
                let i = maps.partition_point(|m| m.end() <= q);
                if i < maps.len() && maps[i].offset <= q {
                    hits += maps[i].moffset;
                }
            }
            black_box(hits);
            best_lb = best_lb.min(t.elapsed());
        }
        let (o, l) = (
            per_sec(queries.len(), best_ours) / 1e6,
            per_sec(queries.len(), best_lb) / 1e6,
        );
        println!(
            "{:>10} {:>16.1} {:>16.1} {:>7.2}x {:>14.2}",
            n,
            o,
            l,
            o / l,
            idx.heap_bytes() as f64 / n as f64
        );
    }
}

fn merge() {
    let mut rng = Rng(99);
    let layers: Vec<RoIndex> = (0..50)
        .map(|_| RoIndex::new(&extents(100_000, &mut rng)).unwrap())
        .collect();
    let refs: Vec<&RoIndex> = layers.iter().collect();
    let mut best = Duration::MAX;
    let mut out = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let m = RoIndex::merge(&refs, usize::MAX).unwrap();
        let idx = RoIndex::new(&m).unwrap();
        out = idx.len();
        best = best.min(t.elapsed());
    }
    println!("\nmerge of 50 layers x 100k extents (and building the lookup tree): {:.0} ms, {} merged extents", best.as_secs_f64() * 1e3, out);
}

fn stack_reads() {
    let dir = tempfile::tempdir().unwrap();
    let vsize: u64 = 512 << 20;
    let mut rng = Rng(7);
    let mut lowers: Vec<(Arc<dyn ReadAt>, RoLayer)> = Vec::new();
    let mut raw = vec![0u8; vsize as usize];
    for l in 0..4 {
        let (d, i) = (
            dir.path().join(format!("d{l}")),
            dir.path().join(format!("i{l}")),
        );
        let rw = RwLayer::create(&d, &i, vsize, None, Uuid::NIL).unwrap();
        // About 40% of the disk per layer, in extents of 4 KiB to 1 MiB.
        let mut written = 0;
        while written < vsize * 2 / 5 {
            let len = (4096 << (rng.next() % 9)).min(1 << 20);
            let off = (rng.next() % (vsize / 4096)) * 4096;
            let len = len.min(vsize - off);
            let mut buf = vec![0u8; len as usize];
            for c in buf.chunks_mut(8) {
                c.copy_from_slice(&rng.next().to_le_bytes()[..c.len()]);
            }
            rw.write(off, &buf).unwrap();
            raw[off as usize..(off + len) as usize].copy_from_slice(&buf);
            written += len;
        }
        let path = dir.path().join(format!("l{l}.lsmt"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        lsmt::commit(
            &rw.mappings(),
            &[rw.data_file()],
            &mut f,
            &CommitOptions {
                virtual_size: vsize,
                ..Default::default()
            },
        )
        .unwrap();
        f.flush().unwrap();
        let src: Arc<dyn ReadAt> = Arc::new(std::fs::File::open(&path).unwrap());
        let layer = RoLayer::open(&*src).unwrap();
        lowers.push((src, layer));
    }
    let raw_path = dir.path().join("raw.img");
    std::fs::write(&raw_path, &raw).unwrap();
    drop(raw);
    let stack = Stack::new(lowers, None).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let read_all = |f: &dyn Fn(u64, &mut [u8])| {
        let mut best = Duration::MAX;
        let mut b = vec![0u8; 1 << 20];
        for _ in 0..5 {
            let t = Instant::now();
            let mut off = 0;
            while off < vsize {
                f(off, &mut b);
                off += b.len() as u64;
            }
            best = best.min(t.elapsed());
        }
        vsize as f64 / best.as_secs_f64() / 1e6
    };
    // Warm the page cache and check the stack reads the same bytes as the raw image.
    let raw_file = std::fs::File::open(&raw_path).unwrap();
    let mut rb = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < vsize {
        stack.read_at(off, &mut buf).unwrap();
        zfile::source::read_full_at(&raw_file, off, &mut rb).unwrap();
        assert!(buf == rb, "stack differs from the raw image at {off}");
        off += 1 << 20;
    }
    let s = read_all(&|o, b| {
        stack.read_at(o, b).unwrap();
    });
    let r = read_all(&|o, b| {
        zfile::source::read_full_at(&raw_file, o, b).unwrap();
    });
    let mut best_cat = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cat {} > /dev/null", raw_path.display()))
            .status()
            .unwrap();
        assert!(st.success());
        best_cat = best_cat.min(t.elapsed());
    }
    let c = vsize as f64 / best_cat.as_secs_f64() / 1e6;
    println!(
        "\nsequential 1 MiB reads of a 512 MiB disk, 4 committed layers ({} merged extents), page cache:",
        stack.merged_index().len()
    );
    println!("  stack {s:.0} MB/s; raw image pread {r:.0} MB/s; cat raw > /dev/null {c:.0} MB/s; stack/cat = {:.2}", s / c);
}

fn main() {
    lookups();
    merge();
    stack_reads();
}
