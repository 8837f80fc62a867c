//! Crash safety of the append-only writable layer: cut its files at every byte of the writes
//! made after the last flush (as a crash would leave them) and reopen. Every flushed write must
//! be intact, and the disk must equal the state after some prefix of the later operations:
//! nothing invented, nothing reordered.

mod common;

use std::path::Path;

use overlaybd_lsmt::{RwLayer, Stack, Upper, Uuid};
use sha2::{Digest, Sha256};

const VSIZE: u64 = 1 << 20;

#[derive(Clone, Copy)]
enum Op {
    Write(u64, u64, u8),
    Trim(u64, u64),
}

fn apply(disk: &mut [u8], op: Op) {
    match op {
        Op::Write(off, len, seed) => {
            for (i, b) in disk[off as usize..(off + len) as usize]
                .iter_mut()
                .enumerate()
            {
                *b = seed ^ (i as u8).wrapping_mul(13) ^ (i >> 9) as u8;
            }
        }
        Op::Trim(off, len) => disk[off as usize..(off + len) as usize].fill(0),
    }
}

fn run(layer: &RwLayer, op: Op) {
    match op {
        Op::Write(off, len, seed) => {
            let mut buf = vec![0u8; len as usize];
            let mut scratch = vec![0u8; (off + len) as usize];
            apply(&mut scratch, Op::Write(off, len, seed));
            buf.copy_from_slice(&scratch[off as usize..]);
            layer.write(off, &buf).unwrap();
        }
        Op::Trim(off, len) => layer.trim(off, len).unwrap(),
    }
}

fn disk_of(data: &Path, index: &Path) -> Vec<u8> {
    let layer = RwLayer::open(data, index).unwrap();
    let s = Stack::new(vec![], Some(Upper::Append(layer))).unwrap();
    let mut disk = vec![0u8; VSIZE as usize];
    assert_eq!(s.read_at(0, &mut disk).unwrap(), disk.len());
    disk
}

fn h(d: &[u8]) -> [u8; 32] {
    Sha256::digest(d).into()
}

#[test]
fn reopen_after_a_crash_at_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (data, index) = (dir.path().join("data"), dir.path().join("index"));
    let layer = RwLayer::create(&data, &index, VSIZE, None, Uuid::NIL).unwrap();
    let flushed = [
        Op::Write(0, 8192, 1),
        Op::Write(4096, 1024, 2),
        Op::Trim(512, 512),
        Op::Write(65536, 4096, 3),
    ];
    let later = [
        Op::Write(1024, 2048, 4),
        Op::Trim(65536, 1024),
        Op::Write(0, 512, 5),
        Op::Write(200_000 / 512 * 512, 3072, 6),
        Op::Trim(0, 4096),
        Op::Write(2048, 1536, 7),
    ];
    let mut model = vec![0u8; VSIZE as usize];
    for op in flushed {
        run(&layer, op);
        apply(&mut model, op);
    }
    layer.flush().unwrap();
    let flushed_data = std::fs::metadata(&data).unwrap().len();
    let flushed_index = std::fs::metadata(&index).unwrap().len();
    // Disk states after each prefix of the later operations.
    let mut states = vec![h(&model)];
    for op in later {
        run(&layer, op);
        apply(&mut model, op);
        states.push(h(&model));
    }
    drop(layer);
    let full_data = std::fs::read(&data).unwrap();
    let full_index = std::fs::read(&index).unwrap();
    let crash = |data_len: u64, index_len: u64| -> usize {
        let d = dir.path().join("crash.data");
        let i = dir.path().join("crash.index");
        std::fs::write(&d, &full_data[..data_len as usize]).unwrap();
        std::fs::write(&i, &full_index[..index_len as usize]).unwrap();
        let got = h(&disk_of(&d, &i));
        let k = states.iter().position(|s| *s == got).unwrap_or_else(|| {
            panic!("crash with data {data_len} and index {index_len} bytes: disk matches no prefix of the operations")
        });
        // Reopening again (the log was cut to the replayed prefix) gives the same disk, and
        // a new write after the crash lands correctly.
        let layer = RwLayer::open(&d, &i).unwrap();
        layer.write(8192, &[9u8; 512]).unwrap();
        drop(layer);
        let again = disk_of(&d, &i);
        assert!(again[8192..8704].iter().all(|&b| b == 9));
        k
    };
    // Index cut at every byte, data complete; data cut at every byte, index complete.
    let mut reached = std::collections::BTreeSet::new();
    for il in flushed_index..=full_index.len() as u64 {
        reached.insert(crash(full_data.len() as u64, il));
    }
    for dl in flushed_data..=full_data.len() as u64 {
        reached.insert(crash(dl, full_index.len() as u64));
    }
    // Both cut, on a grid.
    for dl in (flushed_data..=full_data.len() as u64).step_by(1000) {
        for il in (flushed_index..=full_index.len() as u64).step_by(7) {
            crash(dl, il);
        }
    }
    // Every prefix length is reachable, from "only the flushed writes" to "everything".
    assert_eq!(reached.len(), later.len() + 1, "{reached:?}");
}
