//! Compress a buffer into a ZFile with the BLAKE3 integrity table, then read part of it back,
//! verified against the root a convertor would publish in the layer's annotations.
//!
//! `cargo run -p examples --example zfile_roundtrip`

use std::io::Write;

use zfile::{OpenOptions, WriterOptions, ZFile, ZFileWriter};

fn main() -> anyhow::Result<()> {
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();

    let opts = WriterOptions {
        integrity: true,
        ..Default::default()
    };
    let mut writer = ZFileWriter::new(Vec::new(), opts)?;
    writer.write_all(&data)?;
    let (file, summary) = writer.finish()?;
    let root = summary.integrity_root.expect("integrity table requested");
    println!(
        "{} bytes -> {} bytes in {} blocks; root {root}",
        data.len(),
        file.len(),
        summary.blocks
    );

    // A reader given the trusted root checks the table at open and every block it returns.
    let z = ZFile::open_with(
        file,
        &OpenOptions {
            trusted_root: Some(root),
            ..Default::default()
        },
    )?;
    let mut buf = vec![0u8; 10_000];
    let n = z.read_at(123_456, &mut buf)?;
    assert_eq!(&buf[..n], &data[123_456..123_456 + n]);
    println!(
        "read {n} bytes at offset 123456, verified ({:?})",
        z.info().verification
    );
    Ok(())
}
