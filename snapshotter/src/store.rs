//! The snapshot metadata store: one redb file (`<root>/metadata.redb`), every change one
//! transaction, so a crash leaves the state before or after a call, never between. Keys are
//! containerd's backend keys (`<namespace>/<seq>/<key>`, or names the snapshotter chose for
//! layers it committed itself).
//!
//! Directories (`<root>/snapshots/<id>`) are created before a record names them and removed
//! after the record is gone, so a crash leaves at most a directory without a record, which
//! `Cleanup` removes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// What a snapshot's directory holds, decided at Prepare (pull) or Commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Storage {
    /// A plain directory (an OCI layer, a container's upper dir): overlayfs rules.
    #[default]
    Normal,
    /// An overlaybd layer read from the registry on demand: `block/config.v1.json`.
    Remote,
    /// An overlaybd layer whose blob containerd downloaded and unpacked:
    /// `fs/overlaybd.commit` (or `.sealed`), plus `block/config.v1.json`.
    LocalBlock,
    /// A trace (acceleration) layer unpacked by containerd: `fs/trace`, plus a config
    /// whose lowers end with this directory.
    Acceleration,
    /// A writable overlaybd layer (`dir` / `dev` mode): `block/writable_{data,index}`.
    Writable,
}

impl Storage {
    /// The snapshot is (the top of) an overlaybd image: it has a device config.
    pub fn is_block(self) -> bool {
        !matches!(self, Storage::Normal)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: u64,
    pub kind: Kind,
    /// The parent's key, `""` for none.
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub created: u64,
    pub updated: u64,
    pub storage: Storage,
    /// Bytes and inodes of a committed snapshot, measured at Commit.
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub inodes: u64,
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Debug)]
pub struct MetaStore {
    db: Database,
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("metadata store: {e}"))
}

/// A record as the store keeps it (JSON); a damaged one is an error naming `key`.
pub fn decode(key: &str, raw: &[u8]) -> Result<Snapshot> {
    serde_json::from_slice(raw)
        .map_err(|e| Error::Internal(format!("metadata of snapshot {key:?} is damaged: {e}")))
}

fn encode(s: &Snapshot) -> Vec<u8> {
    serde_json::to_vec(s).expect("a snapshot record always serialises")
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<MetaStore> {
        let db = Database::create(path)
            .map_err(|e| Error::Internal(format!("open {}: {e}", path.display())))?;
        let w = db.begin_write().map_err(db_err)?;
        w.open_table(SNAPSHOTS).map_err(db_err)?;
        w.open_table(META).map_err(db_err)?;
        w.commit().map_err(db_err)?;
        Ok(MetaStore { db })
    }

    pub fn get(&self, key: &str) -> Result<Option<Snapshot>> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(SNAPSHOTS).map_err(db_err)?;
        match t.get(key).map_err(db_err)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn need(&self, key: &str) -> Result<Snapshot> {
        self.get(key)?
            .ok_or_else(|| Error::NotFound(format!("snapshot {key} does not exist")))
    }

    /// Every snapshot, in key order.
    pub fn list(&self) -> Result<Vec<(String, Snapshot)>> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(db_err)? {
            let (k, v) = e.map_err(db_err)?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// The snapshot and its ancestors, nearest first.
    pub fn chain(&self, key: &str) -> Result<Vec<(String, Snapshot)>> {
        let mut out = Vec::new();
        let mut k = key.to_string();
        while !k.is_empty() {
            let s = self.need(&k)?;
            let next = s.parent.clone();
            out.push((k, s));
            if out.len() > 4096 {
                return Err(Error::Internal(format!("snapshot {key}: parent loop")));
            }
            k = next;
        }
        Ok(out)
    }

    /// The next snapshot id (directories are named by id); ids are never reused.
    pub fn next_id(&self) -> Result<u64> {
        let w = self.db.begin_write().map_err(db_err)?;
        let id = {
            let mut t = w.open_table(META).map_err(db_err)?;
            let id = t
                .get(NEXT_ID)
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(1);
            t.insert(NEXT_ID, id + 1).map_err(db_err)?;
            id
        };
        w.commit().map_err(db_err)?;
        Ok(id)
    }

    /// Inserts a new snapshot. Its parent must exist and be committed.
    pub fn create(&self, key: &str, s: &Snapshot) -> Result<()> {
        let w = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = w.open_table(SNAPSHOTS).map_err(db_err)?;
            if t.get(key).map_err(db_err)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {key} already exists"
                )));
            }
            if !s.parent.is_empty() {
                let p = t.get(s.parent.as_str()).map_err(db_err)?.ok_or_else(|| {
                    Error::NotFound(format!("parent snapshot {} does not exist", s.parent))
                })?;
                if decode(&s.parent, p.value())?.kind != Kind::Committed {
                    return Err(Error::FailedPrecondition(format!(
                        "parent snapshot {} is not committed",
                        s.parent
                    )));
                }
            }
            t.insert(key, encode(s).as_slice()).map_err(db_err)?;
        }
        w.commit().map_err(db_err)
    }

    /// Renames active snapshot `key` to committed `name`, applying `f` to the record.
    pub fn commit(&self, key: &str, name: &str, f: impl FnOnce(&mut Snapshot)) -> Result<Snapshot> {
        let w = self.db.begin_write().map_err(db_err)?;
        let s = {
            let mut t = w.open_table(SNAPSHOTS).map_err(db_err)?;
            if t.get(name).map_err(db_err)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {name} already exists"
                )));
            }
            let mut s = match t.get(key).map_err(db_err)? {
                Some(v) => decode(key, v.value())?,
                None => return Err(Error::NotFound(format!("snapshot {key} does not exist"))),
            };
            if s.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key} is {}, not active",
                    s.kind.name()
                )));
            }
            f(&mut s);
            s.kind = Kind::Committed;
            s.updated = now_ns();
            t.remove(key).map_err(db_err)?;
            t.insert(name, encode(&s).as_slice()).map_err(db_err)?;
            s
        };
        w.commit().map_err(db_err)?;
        Ok(s)
    }

    /// Removes a snapshot that has no children and returns its record.
    pub fn remove(&self, key: &str) -> Result<Snapshot> {
        let w = self.db.begin_write().map_err(db_err)?;
        let s = {
            let mut t = w.open_table(SNAPSHOTS).map_err(db_err)?;
            let s = match t.get(key).map_err(db_err)? {
                Some(v) => decode(key, v.value())?,
                None => return Err(Error::NotFound(format!("snapshot {key} does not exist"))),
            };
            for e in t.iter().map_err(db_err)? {
                let (k, v) = e.map_err(db_err)?;
                if decode(k.value(), v.value())?.parent == key {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot remove snapshot {key}: snapshot {} is its child",
                        k.value()
                    )));
                }
            }
            t.remove(key).map_err(db_err)?;
            s
        };
        w.commit().map_err(db_err)?;
        Ok(s)
    }

    /// Changes a record in place.
    pub fn update(
        &self,
        key: &str,
        f: impl FnOnce(&mut Snapshot) -> Result<()>,
    ) -> Result<Snapshot> {
        let w = self.db.begin_write().map_err(db_err)?;
        let s = {
            let mut t = w.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut s = match t.get(key).map_err(db_err)? {
                Some(v) => decode(key, v.value())?,
                None => return Err(Error::NotFound(format!("snapshot {key} does not exist"))),
            };
            f(&mut s)?;
            t.insert(key, encode(&s).as_slice()).map_err(db_err)?;
            s
        };
        w.commit().map_err(db_err)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: u64, kind: Kind, parent: &str) -> Snapshot {
        Snapshot {
            id,
            kind,
            parent: parent.into(),
            labels: BTreeMap::new(),
            created: 1,
            updated: 1,
            storage: Storage::Normal,
            size: 0,
            inodes: 0,
        }
    }

    #[test]
    fn records_survive_reopening_and_keep_the_tree_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.redb");
        {
            let m = MetaStore::open(&path).unwrap();
            assert_eq!(m.next_id().unwrap(), 1);
            assert_eq!(m.next_id().unwrap(), 2);
            m.create("a", &snap(1, Kind::Active, "")).unwrap();
            assert!(matches!(
                m.create("a", &snap(3, Kind::Active, "")),
                Err(Error::AlreadyExists(_))
            ));
            // The parent must be committed.
            assert!(matches!(
                m.create("b", &snap(3, Kind::Active, "a")),
                Err(Error::FailedPrecondition(_))
            ));
            assert!(matches!(
                m.create("b", &snap(3, Kind::Active, "nope")),
                Err(Error::NotFound(_))
            ));
            m.commit("a", "A", |s| s.size = 7).unwrap();
            assert!(m.get("a").unwrap().is_none());
            m.create("b", &snap(3, Kind::Active, "A")).unwrap();
            assert!(matches!(m.remove("A"), Err(Error::FailedPrecondition(_))));
        }
        let m = MetaStore::open(&path).unwrap();
        assert_eq!(m.next_id().unwrap(), 3, "ids are never reused");
        let a = m.need("A").unwrap();
        assert_eq!((a.kind, a.size, a.id), (Kind::Committed, 7, 1));
        let chain: Vec<String> = m.chain("b").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(chain, ["b", "A"]);
        m.remove("b").unwrap();
        m.remove("A").unwrap();
        assert!(m.list().unwrap().is_empty());
        assert!(matches!(m.remove("A"), Err(Error::NotFound(_))));
    }
}
