//! Memory at open is bounded by the bytes that actually exist, not by counts a file claims.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn claimed_counts_do_not_allocate() {
    use zfile::header::{flags, HeaderTrailer};
    let mut slot = HeaderTrailer::new(
        flags::HEADER | flags::DATA_FILE | flags::HEADER_OVERWRITE | flags::CALC_DIGEST,
        zfile::Algorithm::Lz4,
        0,
        4096,
        true,
    );
    slot.index_offset = 512;
    slot.index_size = 900_000_000; // a 3.6 GB index ...
    slot.original_file_size = 900_000_000 * 4096;
    let mut f = slot.encode().to_vec();
    f.extend_from_slice(&[0x11u8; 8192]); // ... over 8 KiB of data
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let e = zfile::ZFile::open(&f[..]).unwrap_err();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(
        peak < 4 << 20,
        "open allocated {peak} bytes for a file of {} bytes",
        f.len()
    );
}
