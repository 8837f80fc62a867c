//! The local blob cache: correctness, single-flight, persistence, crash safety, eviction.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use overlaybd_cache::{BlobCache, CacheDir, DownloadOptions};
use zfile::source::read_full_at;
use zfile::ReadAt;

/// An origin that counts what it serves, can be slow, and can fail.
struct Origin {
    data: Vec<u8>,
    reads: AtomicU64,
    bytes: AtomicU64,
    delay: Duration,
    fail: AtomicBool,
}

impl Origin {
    fn new(len: usize, seed: u64) -> Arc<Self> {
        let mut x = seed | 1;
        let data = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Arc::new(Origin {
            data,
            reads: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            delay: Duration::ZERO,
            fail: AtomicBool::new(false),
        })
    }
}

impl ReadAt for Origin {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(io::Error::other("origin down"));
        }
        std::thread::sleep(self.delay);
        let n = self.data.read_at(offset, buf)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }
}

const UNIT: u32 = 64 * 1024;

/// The cache of blob `key` in `dir`, in front of `o`, with 64 KiB units and no readahead (so
/// that what is fetched is exactly what the reads touch).
fn open(dir: &std::path::Path, key: &str, o: &Arc<Origin>) -> Arc<BlobCache<Arc<Origin>>> {
    let c = BlobCache::open(dir, key, o.data.len() as u64, UNIT, o.clone()).unwrap();
    c.set_readahead(0);
    c
}

fn check_all(c: &dyn ReadAt, want: &[u8]) {
    let mut buf = vec![0u8; want.len()];
    assert_eq!(read_full_at(c, 0, &mut buf).unwrap(), want.len());
    assert!(buf == want, "cache returned wrong bytes");
}

#[test]
fn reads_are_correct_and_fetch_whole_units() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::new(3 * UNIT as usize + 12_345, 1);
    let c = open(dir.path(), "sha256:aa", &o);
    let mut b = [0u8; 100];
    c.read_at(70_000, &mut b).unwrap();
    assert_eq!(&b[..], &o.data[70_000..70_100]);
    assert_eq!(
        o.bytes.load(Ordering::Relaxed),
        UNIT as u64,
        "one refill unit"
    );
    c.read_at(70_500, &mut b).unwrap();
    assert_eq!(o.reads.load(Ordering::Relaxed), 1, "served from the cache");
    // A read across units and the short last unit.
    let mut big = vec![0u8; 200_000];
    let n = c.read_at(o.data.len() as u64 - 150_000, &mut big).unwrap();
    assert_eq!(n, 150_000);
    assert_eq!(&big[..n], &o.data[o.data.len() - 150_000..]);
    check_all(&*c, &o.data);
    assert_eq!(
        o.bytes.load(Ordering::Relaxed),
        o.data.len() as u64,
        "every byte fetched exactly once"
    );
    assert_eq!(c.cached_bytes(), o.data.len() as u64);
    // Served: 100 + 100 + 150,000 + the whole blob; fetched: the blob once.
    let served = 150_200.0 + o.data.len() as f64;
    let want = (served - o.data.len() as f64) / served;
    assert!((c.stats().hit_ratio() - want).abs() < 1e-9);
    let mut m = String::new();
    c.stats().render(&mut m, "blob=\"aa\"");
    assert!(m.contains(&format!(
        "overlaybd_cache_fetched_bytes_total{{blob=\"aa\"}} {}\n",
        o.data.len()
    )));
}

#[test]
fn concurrent_cold_readers_fetch_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Arc::try_unwrap(Origin::new(8 * UNIT as usize, 2))
        .ok()
        .unwrap();
    o.delay = Duration::from_millis(20);
    let o = Arc::new(o);
    let c = open(dir.path(), "sha256:bb", &o);
    std::thread::scope(|s| {
        for _ in 0..8 {
            let (c, o) = (&c, &o);
            s.spawn(move || check_all(&**c, &o.data));
        }
    });
    assert_eq!(
        o.bytes.load(Ordering::Relaxed),
        o.data.len() as u64,
        "8 readers, each unit fetched once"
    );
}

#[test]
fn persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::new(5 * UNIT as usize, 3);
    {
        let c = open(dir.path(), "sha256:cc", &o);
        check_all(&*c, &o.data);
        c.checkpoint().unwrap();
    }
    let before = o.reads.load(Ordering::Relaxed);
    let c = open(dir.path(), "sha256:cc", &o);
    check_all(&*c, &o.data);
    assert_eq!(
        o.reads.load(Ordering::Relaxed),
        before,
        "a reopened cache serves from disk"
    );
    // Opened for another size: the old record does not apply.
    drop(c);
    let c = BlobCache::open(
        dir.path(),
        "sha256:cc",
        o.data.len() as u64 - 1,
        UNIT,
        o.clone(),
    )
    .unwrap();
    assert_eq!(c.cached_bytes(), 0);
}

#[test]
fn no_crash_state_makes_wrong_data_look_present() {
    // For one unit, every combination of what a crash can leave: the data absent (hole), torn
    // (a prefix written), or complete; and the record saying absent, present, or damaged. The
    // reopened cache must always return the origin's bytes.
    let o = Origin::new(2 * UNIT as usize, 4);
    let u = UNIT as usize;
    let seed_dir = tempfile::tempdir().unwrap();
    {
        let c = BlobCache::open(
            seed_dir.path(),
            "sha256:dd",
            o.data.len() as u64,
            UNIT,
            o.clone(),
        )
        .unwrap();
        check_all(&*c, &o.data);
        c.checkpoint().unwrap();
    }
    let good_data = std::fs::read(seed_dir.path().join("sha256_dd.data")).unwrap();
    let good_record = std::fs::read(seed_dir.path().join("sha256_dd.record")).unwrap();
    for torn in [0usize, 1, 4096, u / 2, u - 1, u] {
        for record in ["absent", "present", "damaged"] {
            let dir = tempfile::tempdir().unwrap();
            let mut data = good_data.clone();
            // Unit 1 holds only its first `torn` bytes (the rest never reached the disk).
            data[u + torn..].fill(0);
            std::fs::write(dir.path().join("sha256_dd.data"), &data).unwrap();
            match record {
                "absent" => {}
                "present" => {
                    std::fs::write(dir.path().join("sha256_dd.record"), &good_record).unwrap()
                }
                _ => {
                    let mut r = good_record.clone();
                    r[40] ^= 1;
                    std::fs::write(dir.path().join("sha256_dd.record"), &r).unwrap();
                }
            }
            let c = open(dir.path(), "sha256:dd", &o);
            check_all(&*c, &o.data);
            let dropped = c.stats().dropped_units.load(Ordering::Relaxed);
            if record == "present" && torn < u {
                assert_eq!(dropped, 1, "torn {torn}: the torn unit failed its check");
            }
        }
    }
}

#[test]
fn a_zfile_block_damaged_in_the_cache_is_fetched_again() {
    // ZFile over the cache: a corrupted cached block fails its CRC, the reader asks the cache
    // to drop it, and the next read fetches it from the origin.
    use std::io::Write;
    let plain: Vec<u8> = (0..600_000u32)
        .map(|i| (i % 251) as u8 ^ (i >> 11) as u8)
        .collect();
    let mut w = zfile::ZFileWriter::new(Vec::new(), zfile::WriterOptions::default()).unwrap();
    w.write_all(&plain).unwrap();
    let blob = w.finish().unwrap().0;
    let o = Arc::new(Origin {
        data: blob,
        reads: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        delay: Duration::ZERO,
        fail: AtomicBool::new(false),
    });
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), "sha256:ee", &o);
    let z = zfile::ZFile::open(cache.clone()).unwrap();
    let mut out = vec![0u8; plain.len()];
    z.read_at(0, &mut out).unwrap();
    assert!(out == plain);
    // Damage block 20 in the cache file, behind the cache's back.
    let ext = z.block_extent(20).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("sha256_ee.data"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xFF; 8], ext.offset + 2).unwrap();
    let before = o.reads.load(Ordering::Relaxed);
    let mut again = vec![0u8; plain.len()];
    z.read_at(0, &mut again).unwrap();
    assert!(again == plain);
    assert_eq!(
        o.reads.load(Ordering::Relaxed),
        before + 1,
        "exactly the damaged unit was fetched again"
    );
    assert_eq!(cache.stats().dropped_units.load(Ordering::Relaxed), 1);
}

#[test]
fn origin_failures_are_errors_and_nothing_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::new(2 * UNIT as usize, 5);
    let c = open(dir.path(), "sha256:ff", &o);
    o.fail.store(true, Ordering::Relaxed);
    let e = c.read_at(0, &mut [0u8; 10]).unwrap_err();
    assert!(e.to_string().contains("origin down"), "{e}");
    assert_eq!(c.cached_bytes(), 0);
    o.fail.store(false, Ordering::Relaxed);
    check_all(&*c, &o.data);
    assert!(BlobCache::open(dir.path(), "../evil", 10, UNIT, o.clone()).is_err());
    assert!(BlobCache::open(dir.path(), "sha256:ok", 10, 1000, o.clone()).is_err());
}

#[test]
fn least_recently_used_blobs_are_evicted_between_watermarks() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 16 * UNIT as u64;
    let cd = CacheDir::open(dir.path(), cap, 0.9, 0.75, UNIT).unwrap();
    let origins: Vec<_> = (0..4)
        .map(|i| Origin::new(6 * UNIT as usize, 10 + i))
        .collect();
    let blobs: Vec<_> = origins
        .iter()
        .enumerate()
        .map(|(i, o)| {
            cd.blob(&format!("sha256:{i}"), o.data.len() as u64, o.clone())
                .unwrap()
        })
        .collect();
    // Read 0, 1, 2 (18 units > 14.4, the high watermark): blob 0, the least recently used,
    // goes, which brings the cache to 12 units, the low watermark (whole blobs are evicted).
    for i in 0..3 {
        check_all(&*blobs[i], &origins[i].data);
        assert!(cd.used() <= cap, "used {} over capacity", cd.used());
    }
    assert_eq!(blobs[0].cached_bytes(), 0, "blob 0 was evicted");
    assert!(blobs[1].cached_bytes() > 0 && blobs[2].cached_bytes() > 0);
    assert_eq!(cd.used(), 12 * UNIT as u64);
    // Touch 1, then read 3: now 2 is the least recently used.
    let mut b = [0u8; 10];
    blobs[1].read_at(0, &mut b).unwrap();
    check_all(&*blobs[3], &origins[3].data);
    assert_eq!(blobs[2].cached_bytes(), 0, "blob 2 was evicted");
    assert!(blobs[1].cached_bytes() > 0);
    // Evicted blobs still read correctly (fetched again).
    check_all(&*blobs[0], &origins[0].data);
    assert!(cd.used() <= cap);
    // A new CacheDir over the same directory accounts for what is on disk.
    for b in &blobs {
        b.checkpoint().unwrap();
    }
    let used = cd.used();
    drop(blobs);
    // One writer per directory: a second handle is refused while the first lives.
    let busy = CacheDir::open(dir.path(), cap, 0.9, 0.75, UNIT).unwrap_err();
    assert!(busy.to_string().contains("is in use"), "{busy}");
    drop(cd);
    let again = CacheDir::open(dir.path(), cap, 0.9, 0.75, UNIT).unwrap();
    assert_eq!(again.used(), used);
    // It holds a blob only at the size its record was written for (what lets an attach skip
    // the registry's HEAD).
    // Blobs 0 and 3 are cached now; 1 and 2 were evicted.
    let size = 6 * UNIT as u64;
    assert!(again.holds("sha256:0", size) && again.holds("sha256:3", size));
    assert!(!again.holds("sha256:1", size) && !again.holds("sha256:2", size));
    assert!(!again.holds("sha256:0", size + 1));
    assert!(!again.holds("sha256:9", size));
    assert!(!again.holds("../sha256:0", size));
    std::fs::write(dir.path().join("sha256_3.record"), b"damaged").unwrap();
    assert!(!again.holds("sha256:3", size));
}

/// Blobs opened, read, closed and evicted from several threads at once: a closed blob is
/// evicted by deleting its files while another thread may be opening it again. The count of
/// used bytes stays what the files hold (a new handle counts it from the records), and every
/// read is right. (A reopen racing such an eviction once lost its files and then drove the
/// count below an entry's bytes: an overflow panic in a daemon's attach.)
#[test]
fn used_bytes_stay_true_while_blobs_are_opened_read_and_evicted_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 8 * UNIT as u64;
    let cd = CacheDir::open(dir.path(), cap, 0.9, 0.5, UNIT).unwrap();
    let origins: Vec<_> = (0..6)
        .map(|i| Origin::new(3 * UNIT as usize, 20 + i))
        .collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (cd, origins) = (&cd, &origins);
            s.spawn(move || {
                for round in 0..400 {
                    let i = (t * 7 + round * 5) % origins.len();
                    let o = &origins[i];
                    let key = format!("sha256:{i}");
                    let b = cd.blob(&key, o.data.len() as u64, o.clone()).unwrap();
                    check_all(&*b, &o.data);
                }
            });
        }
    });
    // (Not compared with the capacity: a blob still writing its record when the last fill
    // makes room is not evicted then.)
    let used = cd.used();
    drop(cd);
    let again = CacheDir::open(dir.path(), cap, 0.9, 0.5, UNIT).unwrap();
    assert_eq!(
        again.used(),
        used,
        "the count drifted from what the files hold"
    );
}

/// The generation a ZFile reader relies on to skip digests it already checked: unchanged by
/// hits, moved by every fill, including an eviction's refill and a fill for another device
/// opening the same blob (one cache object per open blob in a directory).
#[test]
fn the_generation_moves_on_every_fill_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let cd = CacheDir::open(dir.path(), 4 * UNIT as u64, 0.9, 0.5, UNIT).unwrap();
    let o = Origin::new(2 * UNIT as usize, 5);
    let other = Origin::new(4 * UNIT as usize, 6);
    let a = cd.blob("sha256:a", o.data.len() as u64, o.clone()).unwrap();
    let b = cd.blob("sha256:a", o.data.len() as u64, o.clone()).unwrap();
    a.set_readahead(0);
    b.set_readahead(0);
    assert!(
        Arc::ptr_eq(&a, &b),
        "one cache object per open blob in a directory"
    );
    // Not a second one over the same files at another size: it would resize them under `a`.
    let e = cd.blob("sha256:a", 3 * UNIT as u64, o.clone()).unwrap_err();
    assert!(e.to_string().contains("is open at"), "{e}");
    let g0 = a.generation().unwrap();
    let mut buf = [0u8; 10];
    a.read_at(0, &mut buf).unwrap();
    let g1 = a.generation().unwrap();
    assert!(g1 > g0, "a fill moves it");
    a.read_at(5, &mut buf).unwrap();
    assert_eq!(a.generation(), Some(g1), "a hit does not");
    // A second image's device fills unit 1 of the same blob.
    b.read_at(UNIT as u64, &mut buf).unwrap();
    let g2 = a.generation().unwrap();
    assert!(g2 > g1);
    // A discard (a failed check above) then the refill.
    a.discard_cached(0, 1).unwrap();
    assert_eq!(
        a.generation(),
        Some(g2),
        "dropping alone changes no readable byte"
    );
    a.read_at(0, &mut buf).unwrap();
    assert!(a.generation().unwrap() > g2);
    // Eviction by another blob filling the directory, then the refill.
    let g3 = a.generation().unwrap();
    let c = cd
        .blob("sha256:c", other.data.len() as u64, other.clone())
        .unwrap();
    check_all(&*c, &other.data);
    assert_eq!(a.cached_bytes(), 0, "evicted");
    assert_eq!(a.generation(), Some(g3));
    check_all(&*a, &o.data);
    assert!(a.generation().unwrap() > g3);
    // Another blob's fills leave this blob's generation alone.
    let g4 = a.generation().unwrap();
    c.discard_cached(0, UNIT as u64).unwrap();
    check_all(&*c, &other.data);
    assert_eq!(a.generation(), Some(g4));
    // Once every holder dropped it, the blob opens as a new object whose counter goes on
    // from the old one (a reader of the old object never pairs its marks with a new count).
    let g5 = a.generation().unwrap();
    drop((a, b));
    let again = cd.blob("sha256:a", o.data.len() as u64, o.clone()).unwrap();
    assert_eq!(again.generation(), Some(g5));
    // A cache object outside a directory has its own counter.
    let solo = open(tempfile::tempdir().unwrap().path(), "sha256:a", &o);
    let s0 = solo.generation().unwrap();
    solo.read_at(0, &mut buf).unwrap();
    assert!(solo.generation().unwrap() > s0);
}

/// A miss fetches the aligned granule around it (absent units only); a reader that knows
/// what it reads (`without_readahead`, the trace replay) fetches its own units only.
#[test]
fn a_miss_fetches_its_granule_and_an_exact_reader_its_units() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::new(16 * UNIT as usize, 8);
    let c = open(dir.path(), "sha256:g", &o);
    c.set_fetch_granule(4 * UNIT as u64);
    let mut buf = [0u8; 10];
    // A miss in unit 5: units 4..8 come in one fetch.
    c.read_at(5 * UNIT as u64 + 7, &mut buf).unwrap();
    assert_eq!(buf[..], o.data[5 * UNIT as usize + 7..][..10]);
    assert_eq!(o.reads.load(Ordering::Relaxed), 1);
    assert_eq!(o.bytes.load(Ordering::Relaxed), 4 * UNIT as u64);
    // A hit anywhere in that granule fetches nothing.
    c.read_at(7 * UNIT as u64, &mut buf).unwrap();
    assert_eq!(o.reads.load(Ordering::Relaxed), 1);
    // An exact reader's miss in unit 9: that unit only.
    overlaybd_cache::without_readahead(|| c.read_at(9 * UNIT as u64, &mut buf)).unwrap();
    assert_eq!(o.bytes.load(Ordering::Relaxed), 5 * UNIT as u64);
    // A later miss in unit 10 fetches the rest of its granule (8, 10, 11: two runs).
    c.read_at(10 * UNIT as u64, &mut buf).unwrap();
    assert_eq!(o.bytes.load(Ordering::Relaxed), 8 * UNIT as u64);
    check_all(&*c, &o.data);
}

/// A record written with larger units (the older 256 KiB default) is split into the new
/// units when the blob opens: what was cached stays cached, checked against the old CRCs.
#[test]
fn a_record_of_larger_units_is_split_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::new(10 * UNIT as usize + 123, 9);
    let size = o.data.len() as u64;
    {
        let big = BlobCache::open(dir.path(), "sha256:m", size, 4 * UNIT, o.clone()).unwrap();
        big.set_readahead(0);
        // Old units 0 and 2 (the last, short one) present; then damage old unit 0's bytes.
        big.read_at(0, &mut [0u8; 10]).unwrap();
        big.read_at(size - 5, &mut [0u8; 5]).unwrap();
        big.checkpoint().unwrap();
    }
    let fetched = o.bytes.load(Ordering::Relaxed);
    assert_eq!(fetched, 4 * UNIT as u64 + (2 * UNIT as u64 + 123));
    let data = dir.path().join("sha256_m.data");
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"X", 100).unwrap();
    let small = open(dir.path(), "sha256:m", &o);
    // Old unit 2 is now new units 8, 9 and 10; old unit 0 failed its CRC and is absent.
    assert_eq!(small.cached_bytes(), 2 * UNIT as u64 + 123);
    let mut tail = vec![0u8; 2 * UNIT as usize + 123];
    small.read_at(8 * UNIT as u64, &mut tail).unwrap();
    assert!(tail[..] == o.data[8 * UNIT as usize..]);
    assert_eq!(
        o.bytes.load(Ordering::Relaxed),
        fetched,
        "kept units were not fetched"
    );
    check_all(&*small, &o.data);
}

#[test]
fn sequential_readers_get_readahead_and_nothing_is_fetched_twice() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::new(64 * UNIT as usize, 20);
    let c = BlobCache::open(
        dir.path(),
        "sha256:ra",
        o.data.len() as u64,
        UNIT,
        o.clone(),
    )
    .unwrap();
    c.set_readahead(16 * UNIT as u64);
    let mut buf = vec![0u8; 16 * 1024];
    let mut off = 0;
    while off < o.data.len() {
        let n = c.read_at(off as u64, &mut buf).unwrap();
        assert!(buf[..n] == o.data[off..off + n], "wrong bytes at {off}");
        off += n;
    }
    // Demand-only would be one origin read per unit (64); the window grows to 16 units.
    let reads = o.reads.load(Ordering::Relaxed);
    assert!(
        reads <= 20,
        "{reads} origin reads for 64 units read sequentially"
    );
    assert!(c.stats().readahead_bytes.load(Ordering::Relaxed) >= 32 * UNIT as u64);
    // Background fetches may still be finishing; none may fetch a unit twice.
    let t = std::time::Instant::now();
    while c.cached_bytes() < o.data.len() as u64 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(o.bytes.load(Ordering::Relaxed), o.data.len() as u64);
}

#[test]
fn random_readers_get_no_readahead() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::new(64 * UNIT as usize, 21);
    let c = BlobCache::open(
        dir.path(),
        "sha256:rb",
        o.data.len() as u64,
        UNIT,
        o.clone(),
    )
    .unwrap();
    let mut b = [0u8; 4096];
    for i in [40u64, 3, 17, 60, 9, 33, 51, 26] {
        c.read_at(i * UNIT as u64 + 100, &mut b).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(o.bytes.load(Ordering::Relaxed), 8 * UNIT as u64);
    assert_eq!(c.stats().readahead_bytes.load(Ordering::Relaxed), 0);
}

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

#[test]
fn download_resumes_verifies_and_then_never_contacts_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::new(40 * UNIT as usize + 1234, 22);
    let key = sha(&o.data);
    {
        // Part of the blob cached earlier (a lazy read), then the process went away.
        let c = open(dir.path(), &key, &o);
        c.read_at(5 * UNIT as u64, &mut vec![0u8; 3 * UNIT as usize])
            .unwrap();
        c.checkpoint().unwrap();
    }
    let c = open(dir.path(), &key, &o);
    let before = o.bytes.load(Ordering::Relaxed);
    let opts = DownloadOptions {
        chunk: 4 * UNIT as u64,
        ..Default::default()
    };
    c.download(&opts).unwrap();
    assert!(c.is_complete());
    assert_eq!(
        o.bytes.load(Ordering::Relaxed) - before,
        o.data.len() as u64 - 3 * UNIT as u64,
        "only what was missing is fetched"
    );
    assert_eq!(c.cached_bytes(), o.data.len() as u64);
    o.fail.store(true, Ordering::Relaxed);
    check_all(&*c, &o.data);
    // Reopened (a restart): still served locally.
    drop(c);
    let c = open(dir.path(), &key, &o);
    check_all(&*c, &o.data);
}

#[test]
fn download_is_cancellable_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::new(32 * UNIT as usize, 23);
    let key = sha(&o.data);
    let c = open(dir.path(), &key, &o);
    let cancel = Arc::new(AtomicBool::new(true));
    let opts = DownloadOptions {
        chunk: UNIT as u64,
        cancel: Some(cancel.clone()),
        ..Default::default()
    };
    let e = c.download(&opts).unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    assert!(!c.is_complete());
    cancel.store(false, Ordering::Relaxed);
    c.download(&opts).unwrap();
    assert!(c.is_complete());
    assert_eq!(o.bytes.load(Ordering::Relaxed), o.data.len() as u64);
}

#[test]
fn download_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::new(16 * UNIT as usize, 24);
    let c = open(dir.path(), &sha(&o.data), &o);
    let t = std::time::Instant::now();
    c.download(&DownloadOptions {
        max_bytes_per_sec: Some(4 << 20),
        chunk: UNIT as u64,
        cancel: None,
    })
    .unwrap();
    // 1 MiB at 4 MiB/s: at least a quarter of a second (the last chunk's wait included).
    assert!(
        t.elapsed() >= Duration::from_millis(240),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_download_that_does_not_match_its_digest_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::new(8 * UNIT as usize, 25);
    let wrong = sha(b"something else");
    let c = open(dir.path(), &wrong, &o);
    let e = c.download(&DownloadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("do not match the digest"), "{e}");
    assert!(!c.is_complete());
    assert_eq!(c.cached_bytes(), 0);
    let c = open(dir.path(), "sha512:abcd", &o);
    let e = c.download(&DownloadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("only sha256"), "{e}");
}

#[test]
fn checkpoint_all_writes_the_records_of_open_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let cd = CacheDir::open(dir.path(), 1 << 30, 0.9, 0.7, UNIT).unwrap();
    let o = Origin::new(4 * UNIT as usize, 30);
    let b = cd
        .blob("sha256:ck", o.data.len() as u64, o.clone())
        .unwrap();
    b.read_at(0, &mut [0u8; 100]).unwrap();
    let record = dir.path().join("sha256_ck.record");
    assert!(!record.exists());
    cd.checkpoint_all().unwrap();
    // The blob is still open; its record on disk already says a unit is present.
    assert!(record.exists());
    assert!(cd.holds("sha256:ck", o.data.len() as u64));
    drop(b);
}
