//! The tar envelope: a one-member tar archive around a layer file, so that a layer blob is
//! still a valid OCI tar layer. Three shapes occur: PAX (1536-byte prefix), plain ustar
//! (512-byte prefix) and none. Layout: `docs/format/zfile.md`, "Tar envelope".

use std::io::{self, Seek, SeekFrom, Write};

use crate::error::{Error, Result};
use crate::source::{read_full_at, ReadAt, Window};

const BLOCK: usize = 512;
/// Member name overlaybd gives the payload.
pub const MEMBER_NAME: &str = "overlaybd.commit";
/// Name of the PAX extended header.
pub const PAX_NAME: &str = "overlaybd.pax";
/// Largest PAX extended header we parse (overlaybd writes one block).
const MAX_PAX_LEN: u64 = 64 * 1024;

/// Which envelope a blob has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// The payload is the whole blob.
    None,
    /// One ustar header, payload at 512.
    Plain,
    /// PAX extended header then ustar header, payload at 1536 (for a one-block PAX record).
    Pax,
}

/// Where the payload lies inside a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub kind: EnvelopeKind,
    pub payload_offset: u64,
    /// `None` when there is no envelope and the source does not know its size.
    pub payload_len: Option<u64>,
}

mod hdr {
    pub const NAME: usize = 0;
    pub const MODE: usize = 100;
    pub const UID: usize = 108;
    pub const GID: usize = 116;
    pub const SIZE: usize = 124;
    pub const MTIME: usize = 136;
    pub const CHKSUM: usize = 148;
    pub const TYPEFLAG: usize = 156;
    pub const MAGIC: usize = 257;
    pub const VERSION: usize = 263;
    pub const UNAME: usize = 265;
    pub const GNAME: usize = 297;
}

fn is_tar_header(b: &[u8; BLOCK]) -> bool {
    let magic = &b[hdr::MAGIC..hdr::MAGIC + 6];
    let version = &b[hdr::VERSION..hdr::VERSION + 2];
    // POSIX ustar ("ustar\0" "00") as overlaybd writes and checks it; GNU's old form
    // ("ustar " " \0") is accepted as well, since no ZFile or LSMT starts like a tar header.
    let posix = &magic[..5] == b"ustar" && version == b"00";
    let gnu = magic == b"ustar " && version == b" \0";
    (posix || gnu) && checksum_ok(b)
}

fn checksum_ok(b: &[u8; BLOCK]) -> bool {
    let Some(stored) = parse_octal(&b[hdr::CHKSUM..hdr::CHKSUM + 8]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &x) in b.iter().enumerate() {
        let x = if (hdr::CHKSUM..hdr::CHKSUM + 8).contains(&i) {
            b' '
        } else {
            x
        };
        unsigned += x as u64;
        signed += x as i8 as i64;
    }
    stored == unsigned || stored as i64 == signed
}

/// Parses an octal numeric field (leading spaces, digits, then NUL or space), or a GNU
/// base-256 field (high bit of the first byte set, positive values only).
fn parse_octal(f: &[u8]) -> Option<u64> {
    if let Some((&first, rest)) = f.split_first() {
        if first & 0x80 != 0 {
            if first & 0x40 != 0 {
                return None; // negative
            }
            let mut v: u64 = (first & 0x3f) as u64;
            for &x in rest {
                v = v.checked_mul(256)?.checked_add(x as u64)?;
            }
            return Some(v);
        }
    }
    let s: &[u8] = {
        let start = f
            .iter()
            .position(|&c| c != b' ' && c != 0)
            .unwrap_or(f.len());
        let t = &f[start..];
        let end = t
            .iter()
            .position(|&c| c == b' ' || c == 0)
            .unwrap_or(t.len());
        &t[..end]
    };
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for &c in s {
        if !(b'0'..=b'7').contains(&c) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

/// Reads the `size` record of a PAX extended header.
fn pax_size(records: &[u8], offset: u64) -> Result<Option<u64>> {
    let bad = |reason: String| Error::Envelope { offset, reason };
    let mut rest = records;
    let mut size = None;
    while !rest.is_empty() && rest[0] != 0 {
        let sp = rest
            .iter()
            .position(|&c| c == b' ')
            .ok_or_else(|| bad("PAX record without length".into()))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("PAX record length is not a number".into()))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad(format!(
                "PAX record length {len} does not fit the record"
            )));
        }
        let kv = &rest[sp + 1..len - 1];
        if let Some(v) = kv.strip_prefix(b"size=") {
            let v = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| bad("PAX size is not a number".into()))?;
            size = Some(v);
        }
        rest = &rest[len..];
    }
    Ok(size)
}

/// Finds the payload of `src`: after a PAX or plain tar header, or the whole source.
pub fn detect<S: ReadAt + ?Sized>(src: &S) -> Result<Envelope> {
    let total = src.size().ok();
    let mut first = [0u8; BLOCK];
    let got = read_full_at(src, 0, &mut first).map_err(|e| Error::io("read tar header", 0, e))?;
    if got < BLOCK || !is_tar_header(&first) {
        return Ok(Envelope {
            kind: EnvelopeKind::None,
            payload_offset: 0,
            payload_len: total,
        });
    }
    let mut header = first;
    let mut header_at = 0u64;
    let mut pax_len = None;
    let mut kind = EnvelopeKind::Plain;
    if header[hdr::TYPEFLAG] == b'x' {
        kind = EnvelopeKind::Pax;
        let len =
            parse_octal(&header[hdr::SIZE..hdr::SIZE + 12]).ok_or_else(|| Error::Envelope {
                offset: 0,
                reason: "PAX header size is not a number".into(),
            })?;
        if len > MAX_PAX_LEN {
            return Err(Error::Envelope {
                offset: 0,
                reason: format!("PAX header of {len} bytes is too large"),
            });
        }
        let mut records = vec![0u8; len as usize];
        let n = read_full_at(src, BLOCK as u64, &mut records)
            .map_err(|e| Error::io("read PAX header", 512, e))?;
        if n < records.len() {
            return Err(Error::Truncated {
                what: "PAX header",
                offset: 512,
                need: len,
                got: n as u64,
            });
        }
        pax_len = pax_size(&records, BLOCK as u64)?;
        header_at = BLOCK as u64 + len.div_ceil(BLOCK as u64) * BLOCK as u64;
        let n = read_full_at(src, header_at, &mut header)
            .map_err(|e| Error::io("read tar header", header_at, e))?;
        if n < BLOCK {
            return Err(Error::Truncated {
                what: "tar header after PAX",
                offset: header_at,
                need: 512,
                got: n as u64,
            });
        }
        if !is_tar_header(&header) {
            return Err(Error::Envelope {
                offset: header_at,
                reason: "no valid ustar header after the PAX header".into(),
            });
        }
    }
    let typeflag = header[hdr::TYPEFLAG];
    if typeflag != b'0' && typeflag != 0 && typeflag != b'7' {
        return Err(Error::Envelope {
            offset: header_at,
            reason: format!("member type {:?} is not a regular file", typeflag as char),
        });
    }
    let ustar_len =
        parse_octal(&header[hdr::SIZE..hdr::SIZE + 12]).ok_or_else(|| Error::Envelope {
            offset: header_at,
            reason: "member size is not a number".into(),
        })?;
    let len = pax_len.unwrap_or(ustar_len);
    let payload_offset = header_at + BLOCK as u64;
    if let Some(total) = total {
        if payload_offset
            .checked_add(len)
            .is_none_or(|end| end > total)
        {
            return Err(Error::Envelope {
                offset: header_at,
                reason: format!("member of {len} bytes at {payload_offset:#x} runs past the blob's {total} bytes"),
            });
        }
    }
    Ok(Envelope {
        kind,
        payload_offset,
        payload_len: Some(len),
    })
}

/// The payload of `src` as a source of its own, and the envelope it had.
pub fn open_payload<S: ReadAt>(src: S) -> Result<(Window<S>, Envelope)> {
    let env = detect(&src)?;
    let len = env.payload_len.unwrap_or(u64::MAX - env.payload_offset);
    Ok((Window::new(src, env.payload_offset, len), env))
}

fn put_str(b: &mut [u8], at: usize, s: &str) {
    b[at..at + s.len()].copy_from_slice(s.as_bytes());
}

/// Writes `v` as zero-padded octal filling `width - 1` digits and a NUL.
fn put_octal(b: &mut [u8], at: usize, width: usize, v: u64) {
    let s = format!("{v:0w$o}", w = width - 1);
    put_str(b, at, &s[s.len() - (width - 1)..]);
    b[at + width - 1] = 0;
}

fn finish_header(b: &mut [u8; BLOCK]) {
    put_str(b, hdr::MAGIC, "ustar\0");
    put_str(b, hdr::VERSION, "00");
    b[hdr::CHKSUM..hdr::CHKSUM + 8].fill(b' ');
    let sum: u64 = b.iter().map(|&x| x as u64).sum();
    let s = format!("{sum:06o}\0 ");
    put_str(b, hdr::CHKSUM, &s);
}

/// PAX record `"<len> size=<n>\n"`, whose length includes its own digits.
fn pax_record(key: &str, value: &str) -> String {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    loop {
        let next = body + len.to_string().len();
        if next == len {
            break;
        }
        len = next;
    }
    format!("{len} {key}={value}\n")
}

/// The 1536 bytes that precede a payload of `payload_len` bytes in the PAX form: a PAX header
/// named `overlaybd.pax` carrying `size`, then a ustar header for `overlaybd.commit` (mode 0644,
/// root, mtime 0). The ustar size field holds the size too when it fits in 11 octal digits, so
/// that tar readers which ignore PAX still find the payload; overlaybd writes 0 there and reads
/// the PAX record.
pub fn pax_prefix(payload_len: u64) -> [u8; 3 * BLOCK] {
    let mut out = [0u8; 3 * BLOCK];
    let record = pax_record("size", &payload_len.to_string());
    {
        let h: &mut [u8; BLOCK] = (&mut out[..BLOCK]).try_into().expect("one block");
        put_str(h, hdr::NAME, PAX_NAME);
        put_octal(h, hdr::MODE, 8, 0o644);
        put_octal(h, hdr::UID, 8, 0);
        put_octal(h, hdr::GID, 8, 0);
        put_octal(h, hdr::SIZE, 12, record.len() as u64);
        put_octal(h, hdr::MTIME, 12, 0);
        h[hdr::TYPEFLAG] = b'x';
        finish_header(h);
    }
    put_str(&mut out[BLOCK..2 * BLOCK], 0, &record);
    {
        let h: &mut [u8; BLOCK] = (&mut out[2 * BLOCK..]).try_into().expect("one block");
        put_str(h, hdr::NAME, MEMBER_NAME);
        put_octal(h, hdr::MODE, 8, 0o644);
        put_octal(h, hdr::UID, 8, 0);
        put_octal(h, hdr::GID, 8, 0);
        put_octal(
            h,
            hdr::SIZE,
            12,
            if payload_len < 1 << 33 {
                payload_len
            } else {
                0
            },
        );
        put_octal(h, hdr::MTIME, 12, 0);
        h[hdr::TYPEFLAG] = b'0';
        put_str(h, hdr::UNAME, "root");
        put_str(h, hdr::GNAME, "root");
        finish_header(h);
    }
    out
}

/// What follows a payload of `payload_len` bytes: zero fill to a 512-byte boundary, then the two
/// zero blocks that end a tar archive.
pub fn tar_suffix(payload_len: u64) -> Vec<u8> {
    let pad = (BLOCK as u64 - payload_len % BLOCK as u64) % BLOCK as u64;
    vec![0u8; pad as usize + 2 * BLOCK]
}

/// Wraps a seekable sink: writes a placeholder prefix (zeros, which no reader takes for a tar
/// header or a ZFile), passes the payload through, and on [`PaxWriter::finish`] appends the
/// suffix and writes the real prefix at the start. Seeking is relative to the payload.
#[derive(Debug)]
pub struct PaxWriter<W: Write + Seek> {
    out: W,
    /// Payload position of the sink.
    pos: u64,
    /// Payload length so far (the furthest byte written).
    len: u64,
}

const PREFIX: u64 = 3 * BLOCK as u64;

impl<W: Write + Seek> PaxWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&[0u8; 3 * BLOCK])?;
        Ok(PaxWriter {
            out,
            pos: 0,
            len: 0,
        })
    }

    /// Completes the envelope and returns the sink (positioned at the end) and the payload
    /// length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.out.seek(SeekFrom::Start(PREFIX + self.len))?;
        self.out.write_all(&tar_suffix(self.len))?;
        let end = self.out.stream_position()?;
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&pax_prefix(self.len))?;
        self.out.seek(SeekFrom::Start(end))?;
        self.out.flush()?;
        Ok((self.out, self.len))
    }
}

impl<W: Write + Seek> Write for PaxWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.pos += n as u64;
        self.len = self.len.max(self.pos);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write + Seek> Seek for PaxWriter<W> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the payload"))?;
        self.out.seek(SeekFrom::Start(PREFIX + target))?;
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap_pax(payload: &[u8]) -> Vec<u8> {
        let mut v = pax_prefix(payload.len() as u64).to_vec();
        v.extend_from_slice(payload);
        v.extend_from_slice(&tar_suffix(payload.len() as u64));
        v
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for n in [0u64, 9, 10, 99, 100, 12345678, u64::MAX] {
            let r = pax_record("size", &n.to_string());
            let (len, _) = r.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "{r:?}");
        }
        // Where adding the length's own digits carries over to one more digit.
        let r = pax_record("k", &"v".repeat(94));
        assert_eq!(
            r.split_once(' ').unwrap().0.parse::<usize>().unwrap(),
            r.len()
        );
    }

    #[test]
    fn pax_form_round_trips() {
        let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let blob = wrap_pax(&payload);
        assert_eq!(blob.len() % 512, 0);
        let env = detect(&blob[..]).unwrap();
        assert_eq!(
            env,
            Envelope {
                kind: EnvelopeKind::Pax,
                payload_offset: 1536,
                payload_len: Some(1000)
            }
        );
        let (w, _) = open_payload(&blob[..]).unwrap();
        let mut back = vec![0u8; 1000];
        assert_eq!(read_full_at(&w, 0, &mut back).unwrap(), 1000);
        assert_eq!(back, payload);
    }

    #[test]
    fn plain_and_none() {
        let payload = b"hello world".to_vec();
        let mut h = [0u8; BLOCK];
        put_str(&mut h, hdr::NAME, "x");
        put_octal(&mut h, hdr::SIZE, 12, payload.len() as u64);
        h[hdr::TYPEFLAG] = b'0';
        finish_header(&mut h);
        let mut blob = h.to_vec();
        blob.extend_from_slice(&payload);
        blob.extend_from_slice(&tar_suffix(payload.len() as u64));
        let env = detect(&blob[..]).unwrap();
        assert_eq!(
            env,
            Envelope {
                kind: EnvelopeKind::Plain,
                payload_offset: 512,
                payload_len: Some(11)
            }
        );
        let raw = b"ZFile\0\x01\0 and so on".to_vec();
        assert_eq!(detect(&raw[..]).unwrap().kind, EnvelopeKind::None);
        assert_eq!(
            detect(&raw[..]).unwrap().payload_len,
            Some(raw.len() as u64)
        );
    }

    #[test]
    fn accepted_by_gnu_style_parsers() {
        // The checksum must also hold when computed by a reader that treats bytes as signed.
        let p = pax_prefix(5);
        for h in [&p[..512], &p[1024..]] {
            let h: &[u8; 512] = h.try_into().unwrap();
            assert!(is_tar_header(h));
        }
    }

    #[test]
    fn hostile_envelopes() {
        let payload = vec![7u8; 600];
        // The size runs past the blob.
        let mut blob = wrap_pax(&payload);
        blob.truncate(1536 + 100);
        let e = detect(&blob[..]).unwrap_err().to_string();
        assert!(e.contains("runs past"), "{e}");
        // A bad checksum means "not a tar": treated as a raw payload.
        let mut blob = wrap_pax(&payload);
        blob[0] ^= 1;
        assert_eq!(detect(&blob[..]).unwrap().kind, EnvelopeKind::None);
        // A PAX header claiming a huge extended header.
        let mut blob = wrap_pax(&payload);
        let h: &mut [u8; 512] = (&mut blob[..512]).try_into().unwrap();
        put_octal(h, hdr::SIZE, 12, 1 << 30);
        finish_header(h);
        assert!(detect(&blob[..])
            .unwrap_err()
            .to_string()
            .contains("too large"));
        // A broken PAX record.
        let mut blob = wrap_pax(&payload);
        blob[512..520].copy_from_slice(b"99 size=");
        assert!(detect(&blob[..])
            .unwrap_err()
            .to_string()
            .contains("PAX record"));
        // A member that is not a regular file.
        let mut blob = wrap_pax(&payload);
        let h: &mut [u8; 512] = (&mut blob[1024..1536]).try_into().unwrap();
        h[hdr::TYPEFLAG] = b'5';
        finish_header(h);
        assert!(detect(&blob[..])
            .unwrap_err()
            .to_string()
            .contains("regular file"));
        // PAX header then garbage.
        let mut blob = wrap_pax(&payload);
        blob[1024..1536].fill(0x41);
        assert!(detect(&blob[..])
            .unwrap_err()
            .to_string()
            .contains("no valid ustar"));
        // Base-256 and malformed numbers.
        assert_eq!(
            parse_octal(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
        assert_eq!(parse_octal(&[0xff; 12]), None);
        assert_eq!(parse_octal(b"0000000001 \0"), Some(1));
        assert_eq!(parse_octal(b"00000009\0\0\0\0"), None);
        assert_eq!(parse_octal(b"77777777777777777777777"), None);
    }

    /// The prefix exactly as overlaybd's `TarFile::write_header_trailer` writes it: numeric
    /// fields space-padded (`%*lo`), mode from `st_mode`, the member's size field 0.
    fn overlaybd_prefix(payload_len: u64) -> Vec<u8> {
        fn oct_nonull(b: &mut [u8], at: usize, width: usize, v: u64) {
            let s = format!("{v:>w$o}", w = width - 1);
            put_str(b, at, &s);
            b[at + width - 1] = b' ';
        }
        fn oct(b: &mut [u8], at: usize, width: usize, v: u64) {
            let s = format!("{v:>w$o} ", w = width - 2);
            put_str(b, at, &s);
        }
        fn sum(b: &mut [u8; 512]) {
            b[hdr::CHKSUM..hdr::CHKSUM + 8].fill(b' ');
            let c: u64 = b.iter().map(|&x| x as u64).sum();
            b[hdr::CHKSUM..hdr::CHKSUM + 8].fill(0);
            oct(b, hdr::CHKSUM, 8, c);
        }
        let mut out = vec![0u8; 1536];
        let record = pax_record("size", &payload_len.to_string());
        let h: &mut [u8; 512] = (&mut out[..512]).try_into().unwrap();
        h[hdr::TYPEFLAG] = b'x';
        put_str(h, hdr::NAME, "overlaybd.pax");
        oct_nonull(h, hdr::SIZE, 12, record.len() as u64);
        put_str(h, hdr::VERSION, "00");
        put_str(h, hdr::MAGIC, "ustar\0");
        sum(h);
        put_str(&mut out[512..], 0, &record);
        let h: &mut [u8; 512] = (&mut out[1024..]).try_into().unwrap();
        h[hdr::TYPEFLAG] = b'0';
        put_str(h, hdr::UNAME, "root");
        oct(h, hdr::UID, 8, 0);
        put_str(h, hdr::GNAME, "root");
        oct(h, hdr::GID, 8, 0);
        oct(h, hdr::MODE, 8, 0o100644);
        oct_nonull(h, hdr::MTIME, 12, 0);
        oct_nonull(h, hdr::SIZE, 12, 0);
        put_str(h, hdr::NAME, "overlaybd.commit");
        put_str(h, hdr::VERSION, "00");
        put_str(h, hdr::MAGIC, "ustar\0");
        sum(h);
        out
    }

    #[test]
    fn reads_the_prefix_overlaybd_writes() {
        let payload = vec![0x5au8; 3000];
        let mut blob = overlaybd_prefix(3000);
        blob.extend_from_slice(&payload);
        blob.extend_from_slice(&tar_suffix(3000));
        let env = detect(&blob[..]).unwrap();
        assert_eq!(
            env,
            Envelope {
                kind: EnvelopeKind::Pax,
                payload_offset: 1536,
                payload_len: Some(3000)
            }
        );
    }

    #[test]
    fn reads_the_gnu_form() {
        let payload = b"payload".to_vec();
        let mut h = [0u8; BLOCK];
        put_str(&mut h, hdr::NAME, "x");
        put_octal(&mut h, hdr::SIZE, 12, payload.len() as u64);
        h[hdr::TYPEFLAG] = b'0';
        finish_header(&mut h);
        put_str(&mut h, hdr::MAGIC, "ustar ");
        put_str(&mut h, hdr::VERSION, " \0");
        h[hdr::CHKSUM..hdr::CHKSUM + 8].fill(b' ');
        let sum: u64 = h.iter().map(|&x| x as u64).sum();
        put_str(&mut h, hdr::CHKSUM, &format!("{sum:06o}\0 "));
        let mut blob = h.to_vec();
        blob.extend_from_slice(&payload);
        blob.extend_from_slice(&tar_suffix(payload.len() as u64));
        let env = detect(&blob[..]).unwrap();
        assert_eq!(
            env,
            Envelope {
                kind: EnvelopeKind::Plain,
                payload_offset: 512,
                payload_len: Some(7)
            }
        );
    }

    #[test]
    fn huge_sizes_without_a_known_blob_size_do_not_overflow() {
        /// A source that hides its size.
        struct NoSize(Vec<u8>);
        impl ReadAt for NoSize {
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
                self.0.read_at(offset, buf)
            }
        }
        let mut blob = pax_prefix(5).to_vec();
        let rec = pax_record("size", &u64::MAX.to_string());
        blob[512..1024].fill(0);
        put_str(&mut blob[512..], 0, &rec);
        let h: &mut [u8; 512] = (&mut blob[..512]).try_into().unwrap();
        put_octal(h, hdr::SIZE, 12, rec.len() as u64);
        finish_header(h);
        let (w, env) = open_payload(NoSize(blob)).unwrap();
        assert_eq!(env.payload_len, Some(u64::MAX));
        assert_eq!(w.len(), u64::MAX - 1536);
        let mut b = [0u8; 4];
        assert_eq!(w.read_at(w.len() - 2, &mut b).unwrap(), 0);
        assert_eq!(w.read_at(u64::MAX, &mut b).unwrap(), 0);
    }

    #[test]
    fn pax_writer_seeks_back() {
        let mut w = PaxWriter::new(io::Cursor::new(Vec::new())).unwrap();
        w.write_all(b"abc").unwrap();
        let (cur, len) = w.finish().unwrap();
        assert_eq!(len, 3);
        assert_eq!(cur.into_inner(), wrap_pax(b"abc"));
        // Seeking back inside the payload (a ZFile header rewrite) keeps the length.
        let mut w = PaxWriter::new(io::Cursor::new(Vec::new())).unwrap();
        w.write_all(b"abcdef").unwrap();
        assert_eq!(w.seek(SeekFrom::Start(1)).unwrap(), 1);
        w.write_all(b"XY").unwrap();
        assert_eq!(w.stream_position().unwrap(), 3);
        assert_eq!(w.seek(SeekFrom::End(0)).unwrap(), 6);
        assert!(w.seek(SeekFrom::Current(-7)).is_err());
        let (cur, len) = w.finish().unwrap();
        assert_eq!(len, 6);
        assert_eq!(cur.into_inner(), wrap_pax(b"aXYdef"));
    }
}
