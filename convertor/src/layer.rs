//! Cutting a layer: the blocks written since the last cut (snapshotted out of the work disk)
//! become a committed LSMT layer,
//! ZFile-compressed with CRCs and the BLAKE3 integrity table, in overlaybd's tar envelope —
//! exactly what `overlaybd-commit -z -t` uploads, plus the table.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use overlaybd_lsmt::{self as lsmt, CommitOptions, Mapping, Uuid};
use sha2::{Digest, Sha256};
use zfile::envelope::PaxWriter;
use zfile::{Algorithm, WriterOptions, ZFileWriter};

use crate::disk::WorkDisk;
use crate::error::{At, Error, Result};

/// ZFile settings of the layers written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    pub algorithm: Algorithm,
    pub block_size: u32,
    /// Compression threads.
    pub threads: usize,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            // Measured on the corpus (`docs/benchmarks.md`, "Compression settings"): 1.1x the
            // gzip layers' size instead of 1.6x with lz4 over 4 KiB, and no slower a start.
            algorithm: Algorithm::Zstd,
            block_size: 16384,
            threads: 1,
        }
    }
}

/// The filesystem the layers build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsType {
    /// ext4 through libext2fs (overlaybd's native layers).
    #[default]
    Ext4,
    /// EROFS through erofs-utils' `mkfs.erofs` (`crate::erofs`): read-only.
    Erofs,
}

impl FsType {
    /// The name in the `blob-fs-type` annotation and the dedup key.
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Erofs => "erofs",
        }
    }
}

/// A layer blob written to a local file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerBlob {
    /// `sha256:<hex>` of the blob (also its diff ID: the blob is an uncompressed tar).
    pub digest: String,
    pub size: u64,
    /// `blake3:<hex>`: the integrity table's root.
    pub integrity_root: String,
    /// Extents and data bytes in the layer.
    pub extents: u64,
    pub data_bytes: u64,
}

/// overlaybd's convertor: the layer UUID is the chain ID's first 32 hex digits, 8-4-4-4-12.
pub fn uuid_from_chain_id(chain_id: &str) -> Result<Uuid> {
    let hex = chain_id.strip_prefix("sha256:").unwrap_or(chain_id);
    if hex.len() < 32 {
        return Err(Error::Invalid(format!(
            "chain ID {chain_id:?} is too short"
        )));
    }
    let h = &hex[..32];
    let text = format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    Uuid::parse(&text).ok_or_else(|| Error::Invalid(format!("chain ID {chain_id:?} is not hex")))
}

/// SHA-256 of a file, as `sha256:<hex>`, and its size.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

/// Copies the data of `maps` (extents of `disk`) into a dense file at `out`, so the layer can
/// be committed from there while the work disk moves on; returns the extents with their data
/// offsets in that file.
pub fn snapshot(disk: &WorkDisk, maps: &[Mapping], out: &Path) -> Result<Vec<Mapping>> {
    use std::os::unix::io::AsRawFd;
    let f = File::create(out).map_err(|e| Error::io("create", out, e))?;
    let mut pos = 0u64;
    let mut dense = Vec::with_capacity(maps.len());
    for m in maps {
        let mut d = *m;
        // Tag 1 (TurboOCI) extents point into the original layer: no data here.
        if !m.zeroed && m.tag == 0 {
            let mut off_in = (m.moffset * 512) as libc::loff_t;
            let mut left = m.length as usize * 512;
            while left > 0 {
                let mut off_out = pos as libc::loff_t;
                // SAFETY: both descriptors are open files we own; the offsets are locals.
                let n = unsafe {
                    libc::copy_file_range(
                        disk.file().as_raw_fd(),
                        &mut off_in,
                        f.as_raw_fd(),
                        &mut off_out,
                        left,
                        0,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    return Err(Error::io("copy layer data to", out, e));
                }
                if n == 0 {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the work disk ended early",
                    );
                    return Err(Error::io("copy layer data to", out, e));
                }
                left -= n as usize;
                pos += n as u64;
            }
            d.moffset = pos / 512 - m.length as u64;
        }
        dense.push(d);
    }
    Ok(dense)
}

/// Commits extents whose data is in `src` (at each extent's `moffset`) as a layer blob: in
/// overlaybd's tar envelope, or, for a TurboOCI meta layer (`warp`: tag-1 extents point into
/// the original layer), a bare ZFile as overlaybd's `overlaybd-commit -z --turboOCI` writes it.
#[allow(clippy::too_many_arguments)]
pub fn commit_extents(
    maps: &[Mapping],
    src: &File,
    virtual_size: u64,
    uuid: Uuid,
    parent: Option<Uuid>,
    z: &Compression,
    out: &Path,
    warp: bool,
) -> Result<LayerBlob> {
    let opts = CommitOptions {
        virtual_size,
        uuid: Some(uuid),
        parent_uuid: parent,
        user_tag: Vec::new(),
        warp,
    };
    let zopts = WriterOptions {
        algorithm: z.algorithm,
        block_size: z.block_size,
        threads: z.threads.max(1),
        integrity: true,
        ..Default::default()
    };
    let file = File::create(out).map_err(|e| Error::io("create", out, e))?;
    let write = |e: std::io::Error| Error::io("write", out, e);
    let (summary, root) = (|| -> Result<_> {
        if warp {
            let mut w = ZFileWriter::new(BufWriter::new(file), zopts)?;
            let s = lsmt::commit(maps, &[src], &mut w, &opts)?;
            let (mut f, zs) = w.finish_with_header()?;
            f.flush().map_err(write)?;
            return Ok((s, zs.integrity_root));
        }
        let pax = PaxWriter::new(BufWriter::new(file)).map_err(write)?;
        let mut w = ZFileWriter::new(pax, zopts)?;
        let s = lsmt::commit(maps, &[src], &mut w, &opts)?;
        let (pax, zs) = w.finish_with_header()?;
        pax.finish()
            .and_then(|(mut f, _)| f.flush())
            .map_err(write)?;
        Ok((s, zs.integrity_root))
    })()
    .at(|| format!("write layer {}", out.display()))?;
    let (digest, size) = sha256_file(out)?;
    Ok(LayerBlob {
        digest,
        size,
        integrity_root: root
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: the ZFile writer wrote no integrity table",
                    out.display()
                ))
            })?
            .to_string(),
        extents: summary.extents,
        data_bytes: summary.data_sectors * 512,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_the_chain_ids_first_32_hex_digits() {
        let u = uuid_from_chain_id(
            "sha256:0123456789abcdef0123456789abcdefffffffffffffffffffffffffffffffff",
        )
        .unwrap();
        assert_eq!(u.to_string(), "01234567-89AB-CDEF-0123-456789ABCDEF");
        assert!(uuid_from_chain_id("sha256:0123").is_err());
        assert!(uuid_from_chain_id("sha256:zz23456789abcdef0123456789abcdef").is_err());
    }
}
