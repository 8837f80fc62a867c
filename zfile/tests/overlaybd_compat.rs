//! A model of overlaybd's ZFile reader (its checks in `zfile_open_ro`, `load_jump_table`,
//! `JumpTable::build` and `pread`, as the reference describes them), applied to what our
//! writer produces: every output we write by default, with or without the integrity table, in
//! either form, must be accepted by it and decompress to the input.

mod common;

use common::*;
use std::io::Write;
use zfile::crc::{block_crc, crc32c_raw};
use zfile::header::{digest_matches, flags, HeaderTrailer};
use zfile::{Algorithm, WriterOptions};

/// overlaybd's `MAX_READ_SIZE`: a stored block must fit its 64 KiB read buffer.
const MAX_READ_SIZE: usize = 65536;

fn overlaybd_read(file: &[u8]) -> Result<Vec<u8>, String> {
    let slot = |at: usize| -> Result<&[u8; 512], String> {
        file.get(at..at + 512)
            .and_then(|s| s.try_into().ok())
            .ok_or("short read".to_string())
    };
    let hs = slot(0)?;
    let h = HeaderTrailer::decode(hs).map_err(|e| e.to_string())?;
    if !h.has(flags::HEADER) {
        return Err("not a header".into());
    }
    if h.has(flags::CALC_DIGEST) && !digest_matches(hs) {
        return Err("header digest".into());
    }
    let ht = if h.has(flags::HEADER_OVERWRITE) {
        h
    } else {
        if !h.has(flags::DATA_FILE) {
            return Err("not a data file".into());
        }
        let toff = file.len() - 512;
        let t = HeaderTrailer::decode(slot(toff)?).map_err(|e| e.to_string())?;
        if t.has(flags::HEADER) || !t.has(flags::DATA_FILE) || !t.has(flags::SEALED) {
            return Err("trailer flags".into());
        }
        if t.index_size * 4 > toff as u64 - t.index_offset {
            return Err("index_size*4 > trailer_offset - index_offset".into());
        }
        t
    };
    if ht.index_size > 1_000_000_000 {
        return Err("index too large".into());
    }
    let io = ht.index_offset as usize;
    let index = file
        .get(io..io + 4 * ht.index_size as usize)
        .ok_or("index read")?;
    if ht.has(flags::CALC_DIGEST) && crc32c_raw(0, index) != ht.index_crc {
        return Err("index crc".into());
    }
    // JumpTable::build: u16 deltas inside groups of 65536 / block_size blocks.
    let lens: Vec<usize> = index
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let group = 65536 / ht.block_size as usize;
    let mut delta = 0usize;
    for (i, &l) in lens.iter().enumerate() {
        if i % group == 0 {
            delta = 0;
        } else if delta >= 65535 {
            return Err("ERANGE: in-group delta".into());
        }
        if (ht.verify && l <= 4) || l == 0 {
            return Err("EIO: entry too small".into());
        }
        delta += l;
    }
    let algo = Algorithm::from_id(ht.algo).ok_or("algo")?;
    let mut out = Vec::new();
    let mut pos = 512 + ht.dict_size as usize;
    for &l in &lens {
        if l > MAX_READ_SIZE {
            return Err(format!("block of {l} bytes exceeds the 64 KiB read buffer"));
        }
        let stored = &file[pos..pos + l];
        let c = if ht.verify {
            let (c, crc) = stored.split_at(l - 4);
            if block_crc(c) != u32::from_le_bytes(crc.try_into().unwrap()) {
                return Err("block crc".into());
            }
            c
        } else {
            stored
        };
        let raw = match algo {
            Algorithm::Lz4 => {
                lz4::block::decompress(c, Some(ht.block_size as i32)).map_err(|e| e.to_string())?
            }
            Algorithm::Zstd => {
                zstd::bulk::decompress(c, ht.block_size as usize).map_err(|e| e.to_string())?
            }
        };
        out.extend_from_slice(&raw);
        pos += l;
    }
    out.truncate(ht.original_file_size as usize);
    Ok(out)
}

#[test]
fn the_model_agrees_with_the_vectors() {
    assert!(overlaybd_read(&vector("a.lz4.bs4.zfile")).unwrap() == zf_input());
    assert!(overlaybd_read(&vector("e.zstd.bs4.zfile")).unwrap() == vector("d.lsmt"));
    let e = overlaybd_read(&vector("c3.lz4.bs64.UNREADABLE.zfile")).unwrap_err();
    assert!(e.contains("64 KiB"), "{e}");
}

#[test]
fn overlaybd_reads_everything_we_write_by_default() {
    // Incompressible data is the worst case for block growth.
    let mut noise = vec![0u8; 300_000];
    let mut x: u64 = 1;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let inputs = [
        noise,
        zf_input()[..700_000].to_vec(),
        vec![0u8; 100_000],
        vec![],
    ];
    for data in &inputs {
        for algorithm in [Algorithm::Lz4, Algorithm::Zstd] {
            for block_size in [4096, 8192, 16384, 32768] {
                for integrity in [false, true] {
                    for header_form in [false, true] {
                        let opts = WriterOptions {
                            algorithm,
                            block_size,
                            integrity,
                            ..Default::default()
                        };
                        let mut w = zfile::ZFileWriter::new(std::io::Cursor::new(Vec::new()), opts)
                            .unwrap();
                        w.write_all(data).unwrap();
                        let f = if header_form {
                            w.finish_with_header()
                        } else {
                            w.finish()
                        }
                        .unwrap()
                        .0
                        .into_inner();
                        let got = overlaybd_read(&f).unwrap_or_else(|e| {
                            panic!("{algorithm}/{block_size} table {integrity} header {header_form}: {e}")
                        });
                        assert!(
                            &got == data,
                            "{algorithm}/{block_size} table {integrity} header {header_form}"
                        );
                    }
                }
            }
        }
    }
}
