//! The body of the `tar_apply` fuzz target (feature `test-util`): arbitrary bytes as a layer tar
//! applied to a small fresh ext4 filesystem, and to the in-memory model. Errors are expected;
//! a panic, a hang or an unbounded allocation is a bug.

use std::io;
use std::sync::OnceLock;

use crate::apply::Applier;
use crate::extfs::{DiskIo, Fs};

/// A disk in memory.
#[derive(Debug, Clone)]
pub struct MemDisk(pub Vec<u8>);

impl DiskIo for MemDisk {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.0.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"))?;
        buf.copy_from_slice(&self.0[offset as usize..end as usize]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.0.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "past the end"))?;
        self.0[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
}

/// A freshly made 16 MiB filesystem (made once per process with mke2fs).
pub fn template() -> &'static MemDisk {
    static T: OnceLock<MemDisk> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("disk");
        let f = std::fs::File::create(&p).expect("create");
        f.set_len(16 << 20).expect("size");
        crate::mkfs::mkfs(
            &p,
            "0c0ffee0-1234-4321-abcd-0123456789ab",
            1_577_836_800,
            dir.path(),
        )
        .expect("mke2fs");
        MemDisk(std::fs::read(&p).expect("read"))
    })
}

/// Applies `data` as a layer; returns the disk afterwards and whether the apply succeeded.
pub fn apply_tar(data: &[u8]) -> (MemDisk, bool) {
    let mut disk = template().clone();
    let ok = {
        let mut fs = Fs::open(&mut disk, true, 1_577_836_800).expect("open the template");
        let ok = Applier::new(&mut fs).apply(data).is_ok();
        let _ = fs.close();
        ok
    };
    let mut model = crate::model::Model::new();
    let _ = model.apply(data);
    (disk, ok)
}

/// The body of the `erofs_tree` fuzz target: arbitrary bytes as an EROFS image read by
/// `verify`'s reader (`crate::erofs::tree_of_erofs`). Errors are expected; a panic, a hang or
/// an unbounded allocation is a bug.
pub fn erofs_tree(data: &[u8]) {
    let mut disk = MemDisk(data.to_vec());
    let _ = crate::erofs::tree_of_erofs(&mut disk, data.len() as u64);
}
