//! The dedup database: converted layers keyed by the source layer's chain ID (plus the settings
//! that change the output), so a layer converted once is not converted again. An embedded,
//! transactional store (redb): a crash leaves either the old or the new record, never half.
//!
//! overlaybd's convertor keeps the same facts in MySQL (`overlaybd_layers(host, repo,
//! chain_id, data_digest, data_size)`); here one file on the CI runner's cache volume is
//! enough, and the record says in which repositories the blob was pushed, so a layer converted
//! for one repository is mounted into another of the same registry instead of re-uploaded.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layer::Compression;

const LAYERS: TableDefinition<&str, &[u8]> = TableDefinition::new("layers");

/// A converted layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub digest: String,
    pub size: u64,
    pub integrity_root: String,
    /// `host/repository` places the blob was pushed to (or `oci:DIR`).
    pub locations: Vec<String>,
}

/// A redb error of the database at `path`.
fn db_error(path: &Path, e: impl Into<redb::Error>) -> Error {
    Error::Dedup {
        path: path.to_path_buf(),
        cause: Box::new(e.into()),
    }
}

#[derive(Debug)]
pub struct DedupDb {
    db: Database,
    path: PathBuf,
}

/// The key: chain ID and everything that changes the converted bytes.
pub fn key(chain_id: &str, z: &Compression, vsize: u64) -> String {
    format!(
        "{chain_id}|{}|{}|{vsize}|ext4|v1",
        z.algorithm.name(),
        z.block_size
    )
}

impl DedupDb {
    pub fn open(path: &Path) -> Result<DedupDb> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        }
        let db = Database::create(path).map_err(|e| db_error(path, e))?;
        let w = db.begin_write().map_err(|e| db_error(path, e))?;
        w.open_table(LAYERS).map_err(|e| db_error(path, e))?;
        w.commit().map_err(|e| db_error(path, e))?;
        Ok(DedupDb {
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        db_error(&self.path, e)
    }

    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(LAYERS).map_err(|e| self.err(e))?;
        let Some(v) = t.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        // A record that does not parse is treated as absent (and replaced on the next put).
        Ok(serde_json::from_slice(v.value()).ok())
    }

    /// Records that the layer for `key` is `digest` and was pushed to `location`.
    pub fn put(
        &self,
        key: &str,
        digest: &str,
        size: u64,
        root: &str,
        location: &str,
    ) -> Result<()> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = w.open_table(LAYERS).map_err(|e| self.err(e))?;
            let old: Option<Record> = t
                .get(key)
                .map_err(|e| self.err(e))?
                .and_then(|v| serde_json::from_slice(v.value()).ok());
            let mut rec = match old {
                Some(r) if r.digest == digest => r,
                _ => Record {
                    digest: digest.to_string(),
                    size,
                    integrity_root: root.to_string(),
                    locations: Vec::new(),
                },
            };
            if !rec.locations.iter().any(|l| l == location) {
                rec.locations.push(location.to_string());
            }
            let bytes =
                serde_json::to_vec(&rec).map_err(|e| Error::json(format!("record {key}"), e))?;
            t.insert(key, bytes.as_slice()).map_err(|e| self.err(e))?;
        }
        w.commit().map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_collect_locations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dedup.redb");
        let k = key("sha256:abc", &Compression::default(), 64 << 30);
        {
            let db = DedupDb::open(&p).unwrap();
            assert_eq!(db.get(&k).unwrap(), None);
            db.put(&k, "sha256:d1", 10, "blake3:r", "r.io/a").unwrap();
            db.put(&k, "sha256:d1", 10, "blake3:r", "r.io/b").unwrap();
            db.put(&k, "sha256:d1", 10, "blake3:r", "r.io/a").unwrap();
        }
        let db = DedupDb::open(&p).unwrap();
        let r = db.get(&k).unwrap().unwrap();
        assert_eq!(r.locations, ["r.io/a", "r.io/b"]);
        assert_ne!(
            k,
            key(
                "sha256:abc",
                &Compression {
                    block_size: 8192,
                    ..Default::default()
                },
                64 << 30
            )
        );
    }
}
