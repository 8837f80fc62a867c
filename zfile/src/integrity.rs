//! The integrity table: BLAKE3 digests of every stored block, between the index and the
//! trailer, authenticated by one root digest. Layout: `docs/format/zfile.md`, "Integrity table".
//!
//! overlaybd's reader never looks at these bytes: it finds the index through the header or the
//! trailer and only requires that the index end before the trailer.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// `"ZFBLAKE3"`.
pub const MAGIC: [u8; 8] = *b"ZFBLAKE3";
pub const VERSION: u32 = 1;
/// Bytes of the table header.
pub const HEADER_LEN: usize = 128;
/// Bytes of one block digest.
pub const DIGEST_LEN: usize = 32;
/// BLAKE3 key-derivation context of the root.
pub const ROOT_CONTEXT: &str = "overlaybd-rs zfile integrity root v1";

/// Byte offsets of the table header's fields.
pub mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const HEADER_LEN: usize = 12;
    pub const BLOCK_COUNT: usize = 16;
    pub const DIGEST_LEN: usize = 24;
    pub const FLAGS: usize = 28;
    pub const ORIGINAL_FILE_SIZE: usize = 32;
    pub const INDEX_OFFSET: usize = 40;
    pub const DATA_OFFSET: usize = 48;
    pub const BLOCK_SIZE: usize = 56;
    pub const ALGO: usize = 60;
    pub const VERIFY: usize = 61;
    pub const LEVEL: usize = 62;
    pub const ROOT: usize = 64;
}

/// The root digest that authenticates a ZFile's table, index and layout fields. Written as
/// `blake3:<64 hex digits>`; parsing also accepts the bare hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Root(pub [u8; 32]);

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("blake3:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Root {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let hex = s.strip_prefix("blake3:").unwrap_or(s);
        let bad = || Error::Integrity(format!("root {s:?} is not blake3:<64 hex digits>"));
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Root(out))
    }
}

/// The layout facts a reader relies on, as recorded in the table header (and covered by the
/// root).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub block_count: u64,
    pub original_file_size: u64,
    pub index_offset: u64,
    pub data_offset: u64,
    pub block_size: u32,
    pub algo: u8,
    pub verify: bool,
    /// The slot's `level` byte.
    pub level: u8,
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(
        b[at..at + 4]
            .try_into()
            .expect("field inside the table header"),
    )
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(
        b[at..at + 8]
            .try_into()
            .expect("field inside the table header"),
    )
}

/// Digest of one stored block (compressed bytes and CRC, exactly the index entry's length).
pub fn block_digest(stored: &[u8]) -> [u8; DIGEST_LEN] {
    *blake3::hash(stored).as_bytes()
}

/// The root hasher primed with the table header (its root field taken as zero) and the raw
/// index; the digests follow.
pub fn root_hasher(header: &[u8], index: &[u8]) -> blake3::Hasher {
    let mut h = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
    h.update(&header[..off::ROOT]);
    h.update(&[0u8; 32]);
    h.update(&header[off::ROOT + 32..HEADER_LEN]);
    h.update(index);
    h
}

/// Computes the root over the table header (its root field taken as zero), the raw index and
/// the digests.
pub fn compute_root(header: &[u8], index: &[u8], table: &[u8]) -> Root {
    let mut h = root_hasher(header, index);
    h.update(table);
    Root(*h.finalize().as_bytes())
}

/// Encodes the table (header then digests) and returns it with its root.
pub fn encode(layout: &Layout, index: &[u8], digests: &[[u8; DIGEST_LEN]]) -> (Vec<u8>, Root) {
    debug_assert_eq!(layout.block_count, digests.len() as u64);
    let mut out = vec![0u8; HEADER_LEN + digests.len() * DIGEST_LEN];
    put(&mut out, off::MAGIC, &MAGIC);
    put(&mut out, off::VERSION, &VERSION.to_le_bytes());
    put(
        &mut out,
        off::HEADER_LEN,
        &(HEADER_LEN as u32).to_le_bytes(),
    );
    put(
        &mut out,
        off::BLOCK_COUNT,
        &layout.block_count.to_le_bytes(),
    );
    put(
        &mut out,
        off::DIGEST_LEN,
        &(DIGEST_LEN as u32).to_le_bytes(),
    );
    put(
        &mut out,
        off::ORIGINAL_FILE_SIZE,
        &layout.original_file_size.to_le_bytes(),
    );
    put(
        &mut out,
        off::INDEX_OFFSET,
        &layout.index_offset.to_le_bytes(),
    );
    put(
        &mut out,
        off::DATA_OFFSET,
        &layout.data_offset.to_le_bytes(),
    );
    put(&mut out, off::BLOCK_SIZE, &layout.block_size.to_le_bytes());
    out[off::ALGO] = layout.algo;
    out[off::VERIFY] = layout.verify as u8;
    out[off::LEVEL] = layout.level;
    for (i, d) in digests.iter().enumerate() {
        put(&mut out, HEADER_LEN + i * DIGEST_LEN, d);
    }
    let (head, table) = out.split_at(HEADER_LEN);
    let root = compute_root(head, index, table);
    put(&mut out, off::ROOT, &root.0);
    (out, root)
}

/// A decoded table header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableHeader {
    pub layout: Layout,
    /// The root the writer stored. It must match the content, but it proves nothing against
    /// tampering (whoever rewrites the table can rewrite it too): trust comes from outside.
    pub stored_root: Root,
}

/// Is this the start of a table? (Used to decide whether a file has one at all.)
pub fn has_magic(head: &[u8]) -> bool {
    head.len() >= 8 && head[..8] == MAGIC
}

/// Decodes and checks a table header read at `offset`.
pub fn decode_header(head: &[u8; HEADER_LEN], offset: u64) -> Result<TableHeader> {
    let at = |what: &str| format!("table header at {offset:#x}: {what}");
    if !has_magic(head) {
        return Err(Error::Integrity(at("bad magic")));
    }
    let version = u32_at(head, off::VERSION);
    if version != VERSION {
        return Err(Error::Integrity(at(&format!(
            "version {version} is not supported (expected {VERSION})"
        ))));
    }
    let hlen = u32_at(head, off::HEADER_LEN);
    if hlen as usize != HEADER_LEN {
        return Err(Error::Integrity(at(&format!(
            "header length {hlen}, expected {HEADER_LEN}"
        ))));
    }
    let dlen = u32_at(head, off::DIGEST_LEN);
    if dlen as usize != DIGEST_LEN {
        return Err(Error::Integrity(at(&format!(
            "digest length {dlen}, expected {DIGEST_LEN}"
        ))));
    }
    let flags = u32_at(head, off::FLAGS);
    if flags != 0 {
        return Err(Error::Integrity(at(&format!("unknown flags {flags:#x}"))));
    }
    if head[off::LEVEL + 1] != 0 || head[off::ROOT + 32..HEADER_LEN].iter().any(|&b| b != 0) {
        return Err(Error::Integrity(at("reserved bytes are not zero")));
    }
    let mut root = [0u8; 32];
    root.copy_from_slice(&head[off::ROOT..off::ROOT + 32]);
    Ok(TableHeader {
        layout: Layout {
            block_count: u64_at(head, off::BLOCK_COUNT),
            original_file_size: u64_at(head, off::ORIGINAL_FILE_SIZE),
            index_offset: u64_at(head, off::INDEX_OFFSET),
            data_offset: u64_at(head, off::DATA_OFFSET),
            block_size: u32_at(head, off::BLOCK_SIZE),
            algo: head[off::ALGO],
            verify: head[off::VERIFY] != 0,
            level: head[off::LEVEL],
        },
        stored_root: Root(root),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            block_count: 2,
            original_file_size: 5000,
            index_offset: 600,
            data_offset: 512,
            block_size: 4096,
            algo: 1,
            verify: true,
            level: 0,
        }
    }

    #[test]
    fn offsets_match_the_spec() {
        assert_eq!(
            [
                off::MAGIC,
                off::VERSION,
                off::HEADER_LEN,
                off::BLOCK_COUNT,
                off::DIGEST_LEN,
                off::FLAGS
            ],
            [0, 8, 12, 16, 24, 28]
        );
        assert_eq!(
            [
                off::ORIGINAL_FILE_SIZE,
                off::INDEX_OFFSET,
                off::DATA_OFFSET,
                off::BLOCK_SIZE
            ],
            [32, 40, 48, 56]
        );
        assert_eq!(
            [off::ALGO, off::VERIFY, off::LEVEL, off::ROOT],
            [60, 61, 62, 64]
        );
        assert_eq!((HEADER_LEN, DIGEST_LEN), (128, 32));
    }

    #[test]
    fn encode_decode_and_root_binding() {
        let index = [40u8, 0, 0, 0, 48, 0, 0, 0];
        let digests = [block_digest(b"one"), block_digest(b"two")];
        let (bytes, root) = encode(&layout(), &index, &digests);
        assert_eq!(bytes.len(), HEADER_LEN + 64);
        let head: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        let th = decode_header(&head, 0).unwrap();
        assert_eq!(th.layout, layout());
        assert_eq!(th.stored_root, root);
        assert_eq!(
            compute_root(&bytes[..HEADER_LEN], &index, &bytes[HEADER_LEN..]),
            root
        );
        // Every byte but the root field itself, every index byte and every table byte
        // changes the root.
        for i in (0..off::ROOT).chain(off::ROOT + 32..bytes.len()) {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert_ne!(
                compute_root(&b[..HEADER_LEN], &index, &b[HEADER_LEN..]),
                root,
                "byte {i}"
            );
        }
        for i in 0..index.len() {
            let mut x = index;
            x[i] ^= 1;
            assert_ne!(
                compute_root(&bytes[..HEADER_LEN], &x, &bytes[HEADER_LEN..]),
                root
            );
        }
    }

    #[test]
    fn root_text_form() {
        let r = Root([0xab; 32]);
        let s = r.to_string();
        assert!(s.starts_with("blake3:abab"));
        assert_eq!(s.parse::<Root>().unwrap(), r);
        assert_eq!(s["blake3:".len()..].parse::<Root>().unwrap(), r);
        assert!("blake3:abc".parse::<Root>().is_err());
        assert!("sha256:".repeat(2).parse::<Root>().is_err());
        assert!(format!("blake3:{}", "zz".repeat(32))
            .parse::<Root>()
            .is_err());
    }

    #[test]
    fn bad_headers_are_named() {
        let (bytes, _) = encode(&layout(), &[0; 8], &[[0; 32]; 2]);
        for (at, what) in [
            (off::VERSION, "version"),
            (off::HEADER_LEN, "header length"),
            (off::DIGEST_LEN, "digest length"),
            (0, "magic"),
        ] {
            let mut head: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
            head[at] ^= 0x55;
            let e = decode_header(&head, 0x99).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("0x99"), "{e}");
        }
    }
}
