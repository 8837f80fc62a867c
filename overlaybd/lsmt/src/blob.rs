//! Opening a layer blob: strip the tar envelope, decompress a ZFile, and hand back the LSMT
//! bytes as a positional source (the order overlaybd's `switch_file` uses).

use std::sync::Arc;

use zfile::source::read_full_at;
use zfile::{envelope, OpenOptions, ReadAt, ZFile};

use crate::error::Result;

/// How a blob was wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wrapping {
    pub envelope: envelope::EnvelopeKind,
    pub zfile: bool,
}

/// The LSMT bytes inside `src`, looking through a tar envelope and a ZFile.
pub fn open_blob(src: Arc<dyn ReadAt>, zopts: &OpenOptions) -> Result<(Arc<dyn ReadAt>, Wrapping)> {
    let (payload, env) = envelope::open_payload(src)?;
    let mut head = [0u8; 512];
    let n = read_full_at(&payload, 0, &mut head)
        .map_err(|e| crate::Error::io("read", "layer blob", env.payload_offset, e))?;
    if zfile::is_zfile(&head[..n]) {
        let z = ZFile::open_with(payload, zopts)?;
        return Ok((
            Arc::new(z),
            Wrapping {
                envelope: env.kind,
                zfile: true,
            },
        ));
    }
    if zopts.trusted_root.is_some() {
        return Err(crate::Error::Unsupported(
            "an integrity root was given, but the layer is not a ZFile".into(),
        ));
    }
    Ok((
        Arc::new(payload),
        Wrapping {
            envelope: env.kind,
            zfile: false,
        },
    ))
}

/// Opens a layer file from disk.
pub fn open_path(path: &std::path::Path) -> Result<(Arc<dyn ReadAt>, Wrapping)> {
    let f = std::fs::File::open(path)
        .map_err(|e| crate::Error::io("open", path.display().to_string(), 0, e))?;
    open_blob(Arc::new(f), &OpenOptions::default())
}
