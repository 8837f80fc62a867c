//! Model-based test: random sequences of writes, trims, flushes, reopens, seals, commits and
//! restacking read back exactly like a `BTreeMap<sector, [u8; 512]>`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use overlaybd_lsmt::{
    self as lsmt, blob, CommitOptions, RoLayer, RwLayer, SparseLayer, Stack, Upper, Uuid,
};
use proptest::prelude::*;
use zfile::ReadAt;

const VSIZE_SECTORS: u64 = 4096; // 2 MiB: small enough that extents collide often

#[derive(Clone, Debug)]
enum Op {
    Write { sector: u64, sectors: u64, seed: u8 },
    Trim { sector: u64, sectors: u64 },
    Flush,
    Reopen,
    Seal,
    Commit { zfile: bool },
    Read { sector: u64, sectors: u64 },
    ReadBytes { offset: u64, len: u64 },
}

fn op(granule: u64) -> impl Strategy<Value = Op> {
    let max = VSIZE_SECTORS / granule;
    prop_oneof![
        8 => (0..max, 1..64u64, any::<u8>()).prop_map(move |(s, n, seed)| Op::Write { sector: s * granule, sectors: n * granule, seed }),
        2 => (0..max, 1..64u64).prop_map(move |(s, n)| Op::Trim { sector: s * granule, sectors: n * granule }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Seal),
        1 => any::<bool>().prop_map(|zfile| Op::Commit { zfile }),
        3 => (0..VSIZE_SECTORS, 1..300u64).prop_map(|(s, n)| Op::Read { sector: s, sectors: n }),
        2 => (0..VSIZE_SECTORS * 512, 1..5000u64).prop_map(|(offset, len)| Op::ReadBytes { offset, len }),
    ]
}

/// Content of a written sector: depends on the write and the sector, so misplaced data shows.
fn sector_bytes(seed: u8, sector: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    for (i, x) in b.iter_mut().enumerate() {
        *x = seed
            ^ (sector as u8).wrapping_mul(31)
            ^ (i as u8).wrapping_mul(7)
            ^ ((sector >> 8) as u8);
    }
    b
}

struct World {
    dir: PathBuf,
    sparse: bool,
    lowers: Vec<(Arc<dyn ReadAt>, RoLayer)>,
    stack: Option<Stack>,
    files: u32,
    parent: Uuid,
}

impl World {
    fn new_upper(&mut self) -> Upper {
        self.files += 1;
        let n = self.files;
        let vsize = VSIZE_SECTORS * 512;
        if self.sparse {
            Upper::Sparse(
                SparseLayer::create(
                    &self.dir.join(format!("sparse{n}")),
                    vsize,
                    None,
                    self.parent,
                )
                .unwrap(),
            )
        } else {
            let (d, i) = (
                self.dir.join(format!("data{n}")),
                self.dir.join(format!("index{n}")),
            );
            Upper::Append(RwLayer::create(&d, &i, vsize, None, self.parent).unwrap())
        }
    }

    fn upper_paths(&self) -> Vec<PathBuf> {
        let n = self.files;
        if self.sparse {
            vec![self.dir.join(format!("sparse{n}"))]
        } else {
            vec![
                self.dir.join(format!("data{n}")),
                self.dir.join(format!("index{n}")),
            ]
        }
    }

    fn restack(&mut self, upper: Upper) {
        self.stack = Some(Stack::new(self.lowers.clone(), Some(upper)).unwrap());
    }

    fn take_upper(&mut self) -> Upper {
        self.stack.take().unwrap().into_upper().unwrap()
    }

    fn push_lower(&mut self, path: &Path) {
        let (src, _) = blob::open_path(path).unwrap();
        let layer = RoLayer::open(&*src).unwrap();
        self.parent = layer.meta.trailer.uuid.unwrap();
        self.lowers.push((src, layer));
    }
}

/// Reads `len` bytes at any byte offset and compares with the model.
fn check_bytes(
    stack: &Stack,
    model: &BTreeMap<u64, [u8; 512]>,
    offset: u64,
    len: u64,
) -> Result<(), TestCaseError> {
    let end = (offset + len).min(VSIZE_SECTORS * 512);
    if offset >= end {
        return Ok(());
    }
    let mut buf = vec![0xEEu8; (end - offset) as usize];
    prop_assert_eq!(stack.read_at(offset, &mut buf).unwrap(), buf.len());
    for (k, b) in buf.iter().enumerate() {
        let at = offset + k as u64;
        let want = model.get(&(at / 512)).map_or(0, |s| s[(at % 512) as usize]);
        prop_assert_eq!(*b, want, "byte {}", at);
    }
    Ok(())
}

fn check_range(
    stack: &Stack,
    model: &BTreeMap<u64, [u8; 512]>,
    sector: u64,
    sectors: u64,
) -> Result<(), TestCaseError> {
    let end = (sector + sectors).min(VSIZE_SECTORS);
    if sector >= end {
        return Ok(());
    }
    let mut buf = vec![0xEEu8; ((end - sector) * 512) as usize];
    prop_assert_eq!(stack.read_at(sector * 512, &mut buf).unwrap(), buf.len());
    for s in sector..end {
        let got = &buf[((s - sector) * 512) as usize..((s - sector + 1) * 512) as usize];
        let want = model.get(&s).copied().unwrap_or([0u8; 512]);
        prop_assert!(got == want, "sector {} differs", s);
    }
    Ok(())
}

fn run(ops: Vec<Op>, sparse: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World {
        dir: dir.path().to_path_buf(),
        sparse,
        lowers: vec![],
        stack: None,
        files: 0,
        parent: Uuid::NIL,
    };
    let upper = w.new_upper();
    w.restack(upper);
    let mut model: BTreeMap<u64, [u8; 512]> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Write {
                sector,
                sectors,
                seed,
            } => {
                let sectors = sectors.min(VSIZE_SECTORS - sector);
                let mut buf = Vec::with_capacity((sectors * 512) as usize);
                for s in sector..sector + sectors {
                    let b = sector_bytes(seed, s);
                    buf.extend_from_slice(&b);
                    model.insert(s, b);
                }
                w.stack
                    .as_ref()
                    .unwrap()
                    .write_at(sector * 512, &buf)
                    .unwrap();
            }
            Op::Trim { sector, sectors } => {
                let sectors = sectors.min(VSIZE_SECTORS - sector);
                w.stack
                    .as_ref()
                    .unwrap()
                    .trim(sector * 512, sectors * 512)
                    .unwrap();
                for s in sector..sector + sectors {
                    model.remove(&s);
                }
            }
            Op::Flush => w.stack.as_ref().unwrap().flush().unwrap(),
            Op::Reopen => {
                let upper = w.take_upper();
                upper.flush().unwrap();
                drop(upper);
                let p = w.upper_paths();
                let upper = if sparse {
                    Upper::Sparse(SparseLayer::open(&p[0]).unwrap())
                } else {
                    Upper::Append(RwLayer::open(&p[0], &p[1]).unwrap())
                };
                w.restack(upper);
            }
            Op::Seal if !sparse => {
                let Upper::Append(rw) = w.take_upper() else {
                    unreachable!()
                };
                let data = w.upper_paths()[0].clone();
                rw.seal().unwrap();
                w.push_lower(&data);
                let upper = w.new_upper();
                w.restack(upper);
            }
            Op::Seal | Op::Commit { .. } => {
                let zf = matches!(op, Op::Commit { zfile: true });
                let upper = w.take_upper();
                let (maps, src): (Vec<lsmt::Mapping>, &dyn ReadAt) = match &upper {
                    Upper::Append(l) => (l.mappings(), l.data_file()),
                    Upper::Sparse(l) => (l.mappings(), l.file()),
                };
                let opts = CommitOptions {
                    virtual_size: VSIZE_SECTORS * 512,
                    uuid: Some(Uuid::random()),
                    parent_uuid: Some(w.parent),
                    user_tag: b"model".to_vec(),
                    warp: false,
                };
                w.files += 1;
                let path = w.dir.join(format!("commit{}", w.files));
                let f = std::fs::File::create(&path).unwrap();
                if zf {
                    let zopts = zfile::WriterOptions {
                        integrity: true,
                        block_size: 8192,
                        ..Default::default()
                    };
                    let mut z =
                        zfile::ZFileWriter::new(zfile::envelope::PaxWriter::new(f).unwrap(), zopts)
                            .unwrap();
                    lsmt::commit(&maps, &[src], &mut z, &opts).unwrap();
                    z.finish_with_header()
                        .unwrap()
                        .0
                        .finish()
                        .unwrap()
                        .0
                        .flush()
                        .unwrap();
                } else {
                    let mut f = std::io::BufWriter::new(f);
                    lsmt::commit(&maps, &[src], &mut f, &opts).unwrap();
                }
                drop(upper);
                w.push_lower(&path);
                let upper = w.new_upper();
                w.restack(upper);
            }
            Op::Read { sector, sectors } => {
                check_range(w.stack.as_ref().unwrap(), &model, sector, sectors)?
            }
            Op::ReadBytes { offset, len } => {
                check_bytes(w.stack.as_ref().unwrap(), &model, offset, len)?
            }
        }
    }
    let stack = w.stack.as_ref().unwrap();
    stack.check_chain().unwrap();
    check_range(stack, &model, 0, VSIZE_SECTORS)?;
    // The same disk with the top flattened into one committed layer of the whole stack.
    let maps: Vec<lsmt::Mapping> = stack.merged_index().iter().collect();
    let sources: Vec<&dyn ReadAt> = w.lowers.iter().map(|(s, _)| &**s as &dyn ReadAt).collect();
    let mut flat = Vec::new();
    lsmt::commit(
        &maps,
        &sources,
        &mut flat,
        &CommitOptions {
            virtual_size: VSIZE_SECTORS * 512,
            ..Default::default()
        },
    )
    .unwrap();
    let flat: Arc<dyn ReadAt> = Arc::new(flat);
    let layer = RoLayer::open(&*flat).unwrap();
    let upper = w.take_upper();
    let s = Stack::new(vec![(flat, layer)], Some(upper)).unwrap();
    check_range(&s, &model, 0, VSIZE_SECTORS)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn append_layers_behave_like_the_model(ops in proptest::collection::vec(op(1), 1..60)) {
        run(ops, false)?;
    }

    #[test]
    fn sparse_layers_behave_like_the_model(ops in proptest::collection::vec(op(8), 1..40)) {
        // Sparse layers track data at the filesystem's 4 KiB granularity: 4 KiB-aligned ops.
        run(ops, true)?;
    }
}

#[test]
fn concurrent_writers_and_readers() {
    // Eight threads write interleaved 4 KiB blocks (each its own) while two threads read; then
    // every block holds its writer's bytes, before and after a reopen.
    let dir = tempfile::tempdir().unwrap();
    let (d, i) = (dir.path().join("d"), dir.path().join("i"));
    let layer = RwLayer::create(&d, &i, 64 << 20, None, Uuid::NIL).unwrap();
    let stack = Stack::new(vec![], Some(Upper::Append(layer))).unwrap();
    let block =
        |t: u64, k: u64| -> Vec<u8> { (0..4096u64).map(|b| (t * 31 + k * 7 + b) as u8).collect() };
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let stack = &stack;
            s.spawn(move || {
                for k in 0..200u64 {
                    stack.write_at((k * 8 + t) * 4096, &block(t, k)).unwrap();
                }
            });
        }
        for _ in 0..2 {
            let stack = &stack;
            s.spawn(move || {
                let mut buf = vec![0u8; 4096];
                for n in 0..2000u64 {
                    let (t, k) = (n % 8, (n * 13) % 200);
                    stack.read_at((k * 8 + t) * 4096, &mut buf).unwrap();
                    // Either not yet written (zeros) or exactly the writer's bytes: never torn.
                    assert!(buf.iter().all(|&b| b == 0) || buf == block(t, k));
                }
            });
        }
    });
    stack.flush().unwrap();
    let check = |s: &Stack| {
        let mut buf = vec![0u8; 4096];
        for t in 0..8 {
            for k in 0..200 {
                s.read_at((k * 8 + t) * 4096, &mut buf).unwrap();
                assert!(buf == block(t, k), "block {t}/{k}");
            }
        }
    };
    check(&stack);
    drop(stack);
    let reopened = Stack::new(vec![], Some(Upper::Append(RwLayer::open(&d, &i).unwrap()))).unwrap();
    check(&reopened);
}

#[test]
fn large_writes_and_trims_are_split() {
    // A 9 MiB write becomes extents of at most 4 MiB; a 20 MiB trim, extents of at most 16383
    // sectors; both read back and survive a reopen.
    let dir = tempfile::tempdir().unwrap();
    let (d, i) = (dir.path().join("d"), dir.path().join("i"));
    let l = RwLayer::create(&d, &i, 64 << 20, None, Uuid::NIL).unwrap();
    let big: Vec<u8> = (0..9u64 << 20).map(|k| (k * 7 + k / 4099) as u8).collect();
    l.write(512, &big).unwrap();
    let maps = l.mappings();
    assert_eq!(maps.len(), 3);
    assert!(maps.iter().all(|m| m.length as u64 * 512 <= 4 << 20));
    l.trim(32 << 20, 20 << 20).unwrap();
    let zeroed: Vec<_> = l.mappings().into_iter().filter(|m| m.zeroed).collect();
    assert_eq!(zeroed.len(), 3);
    assert!(zeroed.iter().all(|m| m.length <= 16383));
    drop(l);
    let s = Stack::new(vec![], Some(Upper::Append(RwLayer::open(&d, &i).unwrap()))).unwrap();
    let mut back = vec![0u8; big.len()];
    s.read_at(512, &mut back).unwrap();
    assert!(back == big);
}

#[test]
fn adjacent_trims_merge_in_a_commit_as_overlaybd_does() {
    // Two neighbouring trims get the same position in a committed layer, and overlaybd's
    // merge rule (a zeroed extent ends at its moffset) joins them into one entry.
    let dir = tempfile::tempdir().unwrap();
    let l = RwLayer::create(
        &dir.path().join("d"),
        &dir.path().join("i"),
        1 << 20,
        None,
        Uuid::NIL,
    )
    .unwrap();
    l.write(0, &[1u8; 4096]).unwrap();
    l.trim(8192, 4096).unwrap();
    l.trim(12288, 4096).unwrap();
    l.write(16384, &[2u8; 4096]).unwrap();
    let mut out = Vec::new();
    lsmt::commit(
        &l.mappings(),
        &[l.data_file()],
        &mut out,
        &CommitOptions {
            virtual_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let layer = RoLayer::open(&out[..]).unwrap();
    let maps: Vec<_> = layer.index.iter().collect();
    assert_eq!(maps.len(), 3, "{maps:?}");
    assert!(
        maps[1].zeroed && maps[1].offset == 16 && maps[1].length == 16 && maps[1].moffset == 16,
        "{maps:?}"
    );
}

#[test]
fn concurrent_overlapping_writes_reopen_to_the_same_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (d, i) = (dir.path().join("d"), dir.path().join("i"));
    let layer = RwLayer::create(&d, &i, 4 << 20, None, Uuid::NIL).unwrap();
    let stack = Stack::new(vec![], Some(Upper::Append(layer))).unwrap();
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let stack = &stack;
            s.spawn(move || {
                let mut x = t + 1;
                for _ in 0..300 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let off = (x >> 33) % 1000 * 4096;
                    let len = (1 + (x >> 20) % 8) * 512;
                    if (x >> 40) % 5 == 0 {
                        stack.trim(off, len).unwrap();
                    } else {
                        stack
                            .write_at(off, &vec![(x >> 56) as u8 | 1; len as usize])
                            .unwrap();
                    }
                }
            });
        }
    });
    let mut before = vec![0u8; 4 << 20];
    stack.read_at(0, &mut before).unwrap();
    stack.flush().unwrap();
    drop(stack);
    let s = Stack::new(vec![], Some(Upper::Append(RwLayer::open(&d, &i).unwrap()))).unwrap();
    let mut after = vec![0u8; 4 << 20];
    s.read_at(0, &mut after).unwrap();
    assert!(
        before == after,
        "the reopened log replays to a different disk"
    );
}
