//! Bodies of the LSMT fuzz targets (also run over mutated vectors by the tests).

use std::sync::Arc;

use zfile::ReadAt;

use super::mapping::SECTOR;
use super::rw::Replay;
use super::{blob, RoLayer, Stack};

/// `lsmt_layer`: parse, stack and read arbitrary bytes as a layer.
pub fn layer(data: &[u8]) {
    let src: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    let Ok((lsmt, _)) = blob::open_blob(src, &zfile::OpenOptions::default()) else {
        return;
    };
    let Ok(layer) = RoLayer::open(&*lsmt) else {
        return;
    };
    let Ok(stack) = Stack::new(vec![(lsmt.clone(), layer.clone()), (lsmt, layer)], None) else {
        return;
    };
    let size = stack.virtual_size();
    for off in [0, size / 3, size.saturating_sub(4096)] {
        let plan = stack.plan(off, 1 << 20);
        let total: u64 = plan.iter().map(|p| p.len).sum();
        assert!(total <= 1 << 20, "plan longer than the request");
        let mut buf = vec![0u8; 64 << 10];
        let _ = stack.read_at(off, &mut buf);
    }
}

/// `lsmt_log`: the first 8 bytes give the data file's size, the rest is the log.
pub fn log(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let data_size = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) % (1 << 40);
    let mut r = Replay::new(data_size / SECTOR);
    r.feed(&data[8..]);
    for m in r.index.dump() {
        assert!(
            m.zeroed || m.mend() <= data_size / SECTOR,
            "replayed an extent past the data: {m:?}"
        );
    }
}
