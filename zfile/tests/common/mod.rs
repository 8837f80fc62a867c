#![allow(dead_code)]
//! Shared helpers of the zfile integration tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

pub fn vectors_dir() -> PathBuf {
    test_support::vectors::dir()
}

pub fn vector(name: &str) -> Vec<u8> {
    std::fs::read(vectors_dir().join(name)).unwrap_or_else(|e| panic!("vector {name}: {e}"))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// name -> sha256 from the vectors' SHA256SUMS.
pub fn sums() -> HashMap<String, String> {
    let text = std::fs::read_to_string(vectors_dir().join("SHA256SUMS")).unwrap();
    text.lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, n)| (n.to_string(), h.to_string()))
        .collect()
}

/// `zf.input.bin`, regenerated and checked against its recorded checksum.
pub fn zf_input() -> &'static [u8] {
    static INPUT: OnceLock<Vec<u8>> = OnceLock::new();
    INPUT.get_or_init(|| {
        let data = zfile::testutil::gen_input(2_098_386, 101);
        assert_eq!(
            sha256_hex(&data),
            sums()["zf.input.bin"],
            "gen_input port disagrees with gen_input.py"
        );
        data
    })
}

/// Reads a whole ZFile through the reader.
pub fn read_all<S: zfile::ReadAt>(z: &zfile::ZFile<S>) -> Vec<u8> {
    let mut out = vec![0u8; z.len() as usize];
    let n = z.read_at(0, &mut out).unwrap();
    assert_eq!(n, out.len());
    out
}

/// Compresses `data` with `opts` into memory.
pub fn compress(data: &[u8], opts: zfile::WriterOptions) -> (Vec<u8>, zfile::Summary) {
    use std::io::Write;
    let mut w = zfile::ZFileWriter::new(Vec::new(), opts).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}
