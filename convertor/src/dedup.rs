//! The dedup database: converted layers keyed by the source layer's chain ID (plus the settings
//! that change the output), so a layer converted once is not converted again. An embedded,
//! transactional store (redb): a crash leaves either the old or the new record, never half.
//!
//! overlaybd's convertor keeps the same facts in MySQL (`overlaybd_layers(host, repo,
//! chain_id, data_digest, data_size)`). Here there are two places, behind [`DedupCache`]:
//! - [`DedupDb`], one file on a runner's cache volume (`--dedup-db`);
//! - [`RegistryCache`], a repository of the destination registry (`--dedup-registry`), which
//!   every CI runner that pushes there already reaches: one small OCI artifact per record
//!   (tagged by the key's SHA-256), whose one layer is the converted blob itself, mounted into
//!   that repository. Any runner reuses what another converted, and the registry keeps the
//!   blob while the record exists. Whoever can push to that repository can write records, so
//!   with a secret (`--dedup-secret-file`) records are signed (HMAC-SHA256 over the key and
//!   the layer's digest, size and integrity root) and unsigned or forged ones are ignored.
//!   A record names no other repository: blobs are mounted from the cache repository only.
//!
//! Either way the record says in which repositories the blob was pushed, so a layer converted
//! for one repository is mounted into another of the same registry instead of re-uploaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::layer::Compression;
use crate::oci::{self, annotation, media, Descriptor, Manifest};
use crate::store::Store;

/// Where converted layers are looked up and recorded.
pub trait DedupCache: Send + Sync + std::fmt::Debug {
    /// The record for `key`; `None` when there is none (or it is damaged).
    fn get(&self, key: &str) -> Result<Option<Record>>;
    /// Records that the layer for `key` is `digest` and was pushed to `location` (a
    /// [`Store::describe`]).
    fn put(&self, key: &str, digest: &str, size: u64, root: &str, location: &str) -> Result<()>;
}

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
/// `fs`: `ext4`, or `erofs/` and the erofs-utils version that builds the layers.
pub fn key(chain_id: &str, z: &Compression, vsize: u64, fs: &str) -> String {
    format!(
        "{chain_id}|{}|{}|{vsize}|{fs}|v1",
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

impl DedupCache for DedupDb {
    fn get(&self, key: &str) -> Result<Option<Record>> {
        DedupDb::get(self, key)
    }

    fn put(&self, key: &str, digest: &str, size: u64, root: &str, location: &str) -> Result<()> {
        DedupDb::put(self, key, digest, size, root, location)
    }
}

/// The artifact type of a record in a [`RegistryCache`].
pub const RECORD_ARTIFACT_TYPE: &str = "application/vnd.overlaybd.convertor.dedup.v1+json";
/// A record's annotations: its key (checked on reading), and with a secret its signature.
pub const KEY_ANNOTATION: &str = "vnd.overlaybd.dedup.key";
pub const SIGNATURE_ANNOTATION: &str = "vnd.overlaybd.dedup.signature";
/// The OCI empty descriptor's blob (`{}`), the config of every record.
const EMPTY: &[u8] = b"{}";

/// The dedup records in a registry repository (see the module's text).
pub struct RegistryCache {
    repo: Box<dyn Store>,
    place: String,
    secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for RegistryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryCache({})", self.place)
    }
}

impl RegistryCache {
    /// Records in `repo` (opened for push); with `secret`, signed and checked.
    pub fn new(repo: Box<dyn Store>, secret: Option<Vec<u8>>) -> RegistryCache {
        let place = repo.describe();
        RegistryCache {
            repo,
            place,
            secret,
        }
    }

    /// The signature of a record, with the secret.
    fn sign(&self, key: &str, digest: &str, size: u64, root: &str) -> Option<String> {
        let s = self.secret.as_ref()?;
        let size = size.to_string();
        let mac = oci::digest::hmac_sha256(
            s,
            &[
                key.as_bytes(),
                b"\0",
                digest.as_bytes(),
                b"\0",
                size.as_bytes(),
                b"\0",
                root.as_bytes(),
            ],
        );
        Some(hex::encode(mac))
    }

    /// A record's tag: `obd-` and the key's SHA-256 (tags are limited to 128 characters of
    /// `[A-Za-z0-9_.-]`; keys hold `:` and `|`).
    pub fn tag(key: &str) -> String {
        format!("obd-{}", hex::encode(Sha256::digest(key.as_bytes())))
    }

    fn parse(&self, key: &str, bytes: &[u8]) -> Option<Record> {
        let m: Manifest = serde_json::from_slice(bytes).ok()?;
        let ann = m.annotations.as_ref()?;
        if m.artifact_type.as_deref() != Some(RECORD_ARTIFACT_TYPE)
            || ann.get(KEY_ANNOTATION).map(String::as_str) != Some(key)
            || m.layers.len() != 1
            || oci::check_digest(&m.layers[0].digest).is_err()
        {
            return None;
        }
        let l = &m.layers[0];
        let root = l.annotation(annotation::INTEGRITY_ROOT).unwrap_or_default();
        if let Some(want) = self.sign(key, &l.digest, l.size, root) {
            let got = ann.get(SIGNATURE_ANNOTATION)?;
            if !oci::digest::equal_in_constant_time(got.as_bytes(), want.as_bytes()) {
                return None;
            }
        }
        Some(Record {
            digest: l.digest.clone(),
            size: l.size,
            integrity_root: root.to_string(),
            locations: vec![self.place.clone()],
        })
    }
}

impl DedupCache for RegistryCache {
    fn get(&self, key: &str) -> Result<Option<Record>> {
        match self.repo.get_manifest(&Self::tag(key)) {
            // A record that does not parse, or is another key's, is treated as absent (and
            // replaced on the next put).
            Ok((bytes, _)) => Ok(self.parse(key, &bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put(&self, key: &str, digest: &str, size: u64, root: &str, location: &str) -> Result<()> {
        // The blob goes into the cache repository by a mount from where it was pushed: the
        // record's layer must be there, and other runners mount it from there.
        if !self.repo.has_blob(digest)? && !self.repo.try_mount(digest, location)? {
            return Err(Error::InvalidInput(format!(
                "dedup cache {}: cannot mount {digest} from {location}: the cache repository \
                 must be on the destination's registry",
                self.place
            )));
        }
        let empty = crate::convert::descriptor("application/vnd.oci.empty.v1+json", EMPTY);
        self.repo.put_blob(&empty.digest, EMPTY)?;
        let m = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            artifact_type: Some(RECORD_ARTIFACT_TYPE.into()),
            config: empty,
            layers: vec![Descriptor {
                media_type: media::OCI_LAYER.into(),
                digest: digest.to_string(),
                size,
                urls: None,
                annotations: Some(BTreeMap::from([(
                    annotation::INTEGRITY_ROOT.to_string(),
                    root.to_string(),
                )])),
                platform: None,
                artifact_type: None,
            }],
            subject: None,
            annotations: Some(
                [(KEY_ANNOTATION.to_string(), key.to_string())]
                    .into_iter()
                    .chain(
                        self.sign(key, digest, size, root)
                            .map(|s| (SIGNATURE_ANNOTATION.to_string(), s)),
                    )
                    .collect(),
            ),
        };
        let bytes = serde_json::to_vec(&m).map_err(|e| Error::json("a dedup record", e))?;
        self.repo
            .put_manifest(Some(&Self::tag(key)), media::OCI_MANIFEST, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_collect_locations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dedup.redb");
        let k = key("sha256:abc", &Compression::default(), 64 << 30, "ext4");
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
                64 << 30,
                "ext4"
            )
        );
        let erofs = key(
            "sha256:abc",
            &Compression::default(),
            64 << 30,
            "erofs/1.9.4",
        );
        assert_ne!(k, erofs, "the filesystem is a setting");
    }
}
