//! What mkfs.erofs reads: a layer's tar, made explicit where erofs-utils would guess. Its
//! incremental build gives a directory that the tar puts files into without naming it the
//! mode of a new directory under a 0777 root (0777), not the one it has below; and a root
//! entry (`./`) in an incremental build makes a new root that no longer fits the old one's
//! slot once the image is large. So the tar goes through here: before an entry whose parent
//! directories this tar has not named, an entry for each (as it is in the image below, else
//! 0755 and root's, as containerd makes it); a root entry is left out and its metadata
//! returned, for the caller to set on the built image's root.

use std::io::{self, Read, Write};

use super::tree::{Lookup, Meta};
use crate::error::Result;
use crate::extfs;

const BLOCK: usize = 512;

fn octal(field: &[u8]) -> u64 {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        // base-256
        return field[1..]
            .iter()
            .fold(0u64, |v, &b| v.wrapping_shl(8) | b as u64);
    }
    field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| (b'0'..=b'7').contains(&b))
        .fold(0u64, |v, &b| {
            v.wrapping_mul(8).wrapping_add((b - b'0') as u64)
        })
}

/// The PAX records of an extended header's data: (key, value).
fn pax_records(data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(sp) = rest.iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp + 1 || len > rest.len() {
            break;
        }
        let rec = &rest[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&b| b == b'=') {
            out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        }
        rest = &rest[len..];
    }
    out
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len = len.to_string().len() + body_len;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A ustar header with `name`, `kind`, `size`, and `meta`'s mode, owner and time (seconds).
fn header(name: &[u8], kind: u8, size: u64, meta: &Meta) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    let mut put = |at: usize, len: usize, v: u64| {
        let s = format!("{:0w$o}\0", v, w = len - 1);
        if s.len() == len {
            h[at..at + len].copy_from_slice(s.as_bytes());
        }
    };
    put(100, 8, (meta.mode & 0o7777) as u64);
    put(108, 8, meta.uid as u64);
    put(116, 8, meta.gid as u64);
    put(124, 12, size);
    put(136, 12, meta.mtime.0.max(0) as u64);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// A directory entry for `path` with `meta`: a PAX header first for what ustar cannot hold
/// (a long path, a large owner, the time's nanoseconds).
pub(crate) fn dir_entry(path: &[u8], meta: &Meta) -> Vec<u8> {
    let mut name = path.to_vec();
    name.push(b'/');
    let mut pax = Vec::new();
    if name.len() > 99 {
        pax.extend(pax_record("path", &name));
    }
    for (key, v) in [("uid", meta.uid), ("gid", meta.gid)] {
        if v > 0o7777777 {
            pax.extend(pax_record(key, v.to_string().as_bytes()));
        }
    }
    if meta.mtime.1 != 0 || meta.mtime.0 < 0 {
        let t = format!("{}.{:09}", meta.mtime.0, meta.mtime.1);
        pax.extend(pax_record("mtime", t.as_bytes()));
    }
    let mut out = Vec::new();
    if !pax.is_empty() {
        out.extend(header(b"././@PaxHeader", b'x', pax.len() as u64, meta));
        let padded = pax.len().div_ceil(BLOCK) * BLOCK;
        pax.resize(padded, 0);
        out.extend(pax);
    }
    out.extend(header(&name, b'5', 0, meta));
    out
}

/// A path from a tar entry without `./` and `/` at its start and `/` at its end.
fn clean(p: &[u8]) -> &[u8] {
    let mut p = p;
    loop {
        if let Some(r) = p.strip_prefix(b"./") {
            p = r;
        } else if let Some(r) = p.strip_prefix(b"/") {
            p = r;
        } else {
            break;
        }
    }
    while let Some(r) = p.strip_suffix(b"/") {
        p = r;
    }
    if p == b"." {
        return b"";
    }
    p
}

/// Copies the tar `input` to `out` as the module says, with `below` the image the build
/// extends (none for the first layer) and `now` the time of directories made here. Sets `root`
/// to the tar's root entry's metadata, if it has one; returns the bytes read.
pub(crate) fn feed(
    input: &mut dyn Read,
    out: &mut dyn Write,
    mut below: Option<&mut Lookup>,
    now: i64,
    root: &mut Option<Meta>,
) -> Result<u64> {
    let fresh = Meta {
        mode: extfs::S_IFDIR | 0o755,
        uid: 0,
        gid: 0,
        mtime: (now, 0),
    };
    let mut named: std::collections::HashSet<Vec<u8>> = Default::default();
    let mut read = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut block = [0u8; BLOCK];
    let io = |e: io::Error| crate::error::Error::io("feed a layer to", "mkfs.erofs", e);
    loop {
        if !read_block(input, &mut block).map_err(io)? {
            break;
        }
        read += BLOCK as u64;
        if block.iter().all(|&b| b == 0) {
            // The end: the rest as it is.
            out.write_all(&pending).map_err(io)?;
            out.write_all(&block).map_err(io)?;
            read += io::copy(input, out).map_err(io)?;
            return Ok(read);
        }
        let size = octal(&block[124..136]);
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let kind = block[156];
        if matches!(kind, b'x' | b'L' | b'K' | b'g') {
            if padded > 1 << 20 {
                return Err(crate::error::Error::Invalid(format!(
                    "a tar extension header of {size} bytes"
                )));
            }
            let mut data = vec![0u8; padded as usize];
            input.read_exact(&mut data).map_err(io)?;
            read += padded;
            let body = &data[..size as usize];
            match kind {
                b'x' => pax.extend(pax_records(body)),
                b'L' => {
                    let n = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                    long_name = Some(body[..n].to_vec());
                }
                _ => {}
            }
            pending.extend_from_slice(&block);
            pending.extend_from_slice(&data);
            continue;
        }
        let name = pax
            .iter()
            .rev()
            .find(|(k, _)| k == b"path")
            .map(|(_, v)| v.clone())
            .or(long_name.take())
            .unwrap_or_else(|| {
                let field = |r: std::ops::Range<usize>| {
                    let f = &block[r];
                    f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())].to_vec()
                };
                let (prefix, name) = (field(345..500), field(0..100));
                if &block[257..262] == b"ustar" && !prefix.is_empty() {
                    [prefix, b"/".to_vec(), name].concat()
                } else {
                    name
                }
            });
        let path = clean(&name).to_vec();
        if path.is_empty() && kind == b'5' {
            // The root: its metadata for the caller; the entry itself is left out.
            let rec = |key: &[u8]| pax.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
            let num = |key: &[u8], ustar: u64| {
                rec(key)
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .unwrap_or(ustar)
            };
            let mtime = rec(b"mtime")
                .and_then(|v| crate::apply::pax_time(v))
                .unwrap_or((octal(&block[136..148]) as i64, 0));
            *root = Some(Meta {
                mode: extfs::S_IFDIR | (octal(&block[100..108]) as u32 & 0o7777),
                uid: num(b"uid", octal(&block[108..116])) as u32,
                gid: num(b"gid", octal(&block[116..124])) as u32,
                mtime,
            });
            skip(input, padded).map_err(io)?;
            read += padded;
            pending.clear();
            pax.clear();
            continue;
        }
        // Every parent this tar has not named, as it is below (or new), before the entry.
        for (k, _) in path.iter().enumerate().filter(|(_, &c)| c == b'/') {
            let parent = &path[..k];
            if parent.is_empty() || named.contains(parent) {
                continue;
            }
            let meta = match below.as_deref_mut() {
                Some(l) => l.meta(parent)?,
                None => None,
            };
            match meta {
                Some(m) if m.mode & extfs::S_IFMT == extfs::S_IFDIR => {
                    out.write_all(&dir_entry(parent, &m)).map_err(io)?
                }
                // Below, but not a directory (mkfs.erofs decides, as for any tar).
                Some(_) => {}
                None => out.write_all(&dir_entry(parent, &fresh)).map_err(io)?,
            }
            named.insert(parent.to_vec());
        }
        if kind == b'5' {
            named.insert(path);
        }
        out.write_all(&pending).map_err(io)?;
        out.write_all(&block).map_err(io)?;
        pending.clear();
        pax.clear();
        let mut data = input.take(padded);
        let n = io::copy(&mut data, out).map_err(io)?;
        read += n;
        if n != padded {
            return Err(crate::error::Error::Invalid(
                "the layer's tar ends inside an entry".into(),
            ));
        }
    }
    out.write_all(&pending).map_err(io)?;
    Ok(read)
}

/// Reads one 512-byte block; false at the input's end.
fn read_block(r: &mut dyn Read, b: &mut [u8; BLOCK]) -> io::Result<bool> {
    let mut got = 0;
    while got < BLOCK {
        match r.read(&mut b[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a short block",
                ))
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn skip(r: &mut dyn Read, n: u64) -> io::Result<()> {
    let got = io::copy(&mut r.take(n), &mut io::sink())?;
    if got != n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the tar ends inside an entry",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar(entries: &[(&str, tar::EntryType, u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, t, mode) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(*t);
            h.set_mode(*mode);
            h.set_size(if *t == tar::EntryType::Regular { 3 } else { 0 });
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            let data: &[u8] = if *t == tar::EntryType::Regular {
                b"abc"
            } else {
                b""
            };
            b.append_data(&mut h, p, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Parents the tar does not name come first, once, 0755 (no image below); the root entry
    /// is taken out and returned; everything else passes through in order.
    #[test]
    fn unnamed_parents_are_named_and_the_root_is_taken_out() {
        use tar::EntryType::{Directory, Regular};
        let input = tar(&[
            ("./", Directory, 0o700),
            ("a/b/c", Regular, 0o644),
            ("a/b/d", Regular, 0o600),
            ("e/", Directory, 0o750),
            ("e/f", Regular, 0o644),
        ]);
        let mut out = Vec::new();
        let mut root = None;
        let n = feed(&mut input.as_slice(), &mut out, None, 5, &mut root).unwrap();
        assert_eq!(n, input.len() as u64);
        let root = root.unwrap();
        assert_eq!((root.mode, root.mtime), (0o40700, (1_700_000_000, 0)));
        let mut a = tar::Archive::new(out.as_slice());
        let got: Vec<(String, u32)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let p = e.path().unwrap().display().to_string();
                (
                    p.trim_end_matches('/').to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        let want = [
            ("a", 0o755),
            ("a/b", 0o755),
            ("a/b/c", 0o644),
            ("a/b/d", 0o600),
            ("e", 0o750),
            ("e/f", 0o644),
        ];
        let want: Vec<(String, u32)> = want.iter().map(|(p, m)| (p.to_string(), *m)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn long_and_fine_grained_directory_entries_read_back() {
        let long = "d".repeat(150);
        let m = Meta {
            mode: 0o40711,
            uid: 3_000_000,
            gid: 7,
            mtime: (1_700_000_000, 250_000_000),
        };
        let mut t = dir_entry(long.as_bytes(), &m);
        t.extend_from_slice(&[0u8; 1024]);
        let mut a = tar::Archive::new(t.as_slice());
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        let p = e.path().unwrap().display().to_string();
        assert_eq!(p.trim_end_matches('/'), long);
        let pax: Vec<(String, String)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| {
                let x = x.unwrap();
                (x.key().unwrap().to_string(), x.value().unwrap().to_string())
            })
            .collect();
        assert!(pax.contains(&("uid".into(), "3000000".into())), "{pax:?}");
        assert!(
            pax.contains(&("mtime".into(), "1700000000.250000000".into())),
            "{pax:?}"
        );
        assert_eq!(e.header().mode().unwrap(), 0o711);
    }
}
