//! Pieces of blobs: fetched once, streamed to every reader while they arrive, kept in a
//! bounded least-recently-used cache, optionally in a directory that survives restarts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::{Error, Result};

enum Data {
    Filling(Vec<u8>),
    Done(Bytes),
}

struct PieceState {
    data: Data,
    failed: Option<Error>,
    /// Where the bytes came from (a node's URL, or "registry").
    source: String,
}

/// One piece: being filled by one fetcher, read by any number of readers meanwhile.
pub struct Piece {
    pub len: usize,
    st: Mutex<PieceState>,
    tx: watch::Sender<u64>,
}

impl std::fmt::Debug for Piece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Piece")
            .field("len", &self.len)
            .field("filled", &self.filled())
            .finish_non_exhaustive()
    }
}

impl Piece {
    pub fn new(len: usize) -> Arc<Piece> {
        Arc::new(Piece {
            len,
            st: Mutex::new(PieceState {
                data: Data::Filling(Vec::with_capacity(len)),
                failed: None,
                source: String::new(),
            }),
            tx: watch::channel(0).0,
        })
    }

    fn done(len: usize, bytes: Bytes, source: String) -> Arc<Piece> {
        Arc::new(Piece {
            len,
            st: Mutex::new(PieceState {
                data: Data::Done(bytes),
                failed: None,
                source,
            }),
            tx: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PieceState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn filled(&self) -> usize {
        match &self.lock().data {
            Data::Filling(v) => v.len(),
            Data::Done(b) => b.len(),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.lock().data, Data::Done(_))
    }

    pub fn source(&self) -> String {
        self.lock().source.clone()
    }

    pub fn set_source(&self, s: &str) {
        let mut st = self.lock();
        if st.source.is_empty() {
            st.source = s.to_string();
        } else if !st.source.split(',').any(|x| x == s) {
            st.source.push(',');
            st.source.push_str(s);
        }
    }

    /// Appends arrived bytes (beyond the piece's length they are dropped); returns whether the
    /// piece is now full.
    pub fn append(&self, chunk: &[u8]) -> bool {
        let full = {
            let mut st = self.lock();
            let Data::Filling(v) = &mut st.data else {
                return true;
            };
            let room = self.len - v.len();
            v.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if v.len() == self.len {
                let v = std::mem::take(v);
                st.data = Data::Done(Bytes::from(v));
                true
            } else {
                false
            }
        };
        self.tx.send_modify(|n| *n += 1);
        full
    }

    /// Fails the piece: readers waiting for bytes that will not come get `why`.
    pub fn fail(&self, why: Error) {
        self.lock().failed = Some(why);
        self.tx.send_modify(|n| *n += 1);
    }

    /// The whole piece, once complete.
    pub fn bytes(&self) -> Option<Bytes> {
        match &self.lock().data {
            Data::Done(b) => Some(b.clone()),
            Data::Filling(_) => None,
        }
    }

    /// Up to `max` bytes at `pos`, waiting until some have arrived.
    pub async fn read(&self, pos: usize, max: usize) -> Result<Bytes> {
        let mut rx = self.tx.subscribe();
        loop {
            {
                let st = self.lock();
                match &st.data {
                    Data::Done(b) => {
                        let end = b.len().min(pos + max);
                        return Ok(b.slice(pos.min(end)..end));
                    }
                    Data::Filling(v) if v.len() > pos => {
                        let end = v.len().min(pos + max);
                        return Ok(Bytes::copy_from_slice(&v[pos..end]));
                    }
                    Data::Filling(_) => {}
                }
                if let Some(f) = &st.failed {
                    return Err(f.clone());
                }
            }
            rx.changed()
                .await
                .expect("a piece's sender lives as long as the piece it is read from");
        }
    }
}

/// `(blob key, piece index)`.
pub type PieceId = (String, u64);

struct Slot {
    piece: Arc<Piece>,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    pieces: HashMap<PieceId, Slot>,
    lru: BTreeMap<u64, PieceId>,
    tick: u64,
    bytes: u64,
}

/// What [`Store::get_or_start`] found.
#[derive(Debug)]
pub enum Lookup {
    /// Present (complete or being filled): read it.
    Hit(Arc<Piece>),
    /// Absent: the caller must fill this new piece, then call [`Store::completed`] or
    /// [`Store::remove`].
    Started(Arc<Piece>),
}

pub struct Store {
    inner: Mutex<Inner>,
    max_bytes: u64,
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("max_bytes", &self.max_bytes)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn key_dir(dir: &Path, key: &str) -> PathBuf {
    dir.join(hex::encode(Sha256::digest(key.as_bytes())))
}

impl Store {
    /// A store; with `dir`, the pieces already there are loaded (up to `max_bytes`).
    pub fn new(max_bytes: u64, dir: Option<PathBuf>) -> Result<Store> {
        let s = Store {
            inner: Mutex::default(),
            max_bytes,
            dir,
        };
        if let Some(d) = &s.dir {
            std::fs::create_dir_all(d).map_err(|e| Error::io("create cache.dir", d, e))?;
            s.load(d)?;
        }
        Ok(s)
    }

    /// Reads `<dir>/<sha256(key)>/{key, <index>…}`; files that do not match are removed.
    fn load(&self, dir: &Path) -> Result<()> {
        let list = |d: &Path| std::fs::read_dir(d).map_err(|e| Error::io("list cache.dir", d, e));
        for e in list(dir)? {
            let bd = e.map_err(|e| Error::io("list cache.dir", dir, e))?.path();
            let Ok(key) = std::fs::read_to_string(bd.join("key")) else {
                let _ = std::fs::remove_dir_all(&bd);
                continue;
            };
            let key = key.trim().to_string();
            if key_dir(dir, &key) != bd {
                let _ = std::fs::remove_dir_all(&bd);
                continue;
            }
            for f in list(&bd)? {
                let p = f.map_err(|e| Error::io("list cache.dir", &bd, e))?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name == "key" {
                    continue;
                }
                let Ok(idx) = name.parse::<u64>() else {
                    let _ = std::fs::remove_file(&p);
                    continue;
                };
                if self.lock().bytes >= self.max_bytes {
                    let _ = std::fs::remove_file(&p);
                    continue;
                }
                let data = std::fs::read(&p).map_err(|e| Error::io("load cached piece", &p, e))?;
                let len = data.len();
                let piece = Piece::done(len, Bytes::from(data), "disk".into());
                let mut inner = self.lock();
                inner.tick += 1;
                let tick = inner.tick;
                inner.bytes += len as u64;
                inner.lru.insert(tick, (key.clone(), idx));
                inner
                    .pieces
                    .insert((key.clone(), idx), Slot { piece, tick });
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The piece, or a new empty one the caller must fill. A loaded piece of the wrong
    /// length (a blob whose pieces were cut differently) is replaced.
    pub fn get_or_start(&self, key: &str, idx: u64, len: usize) -> Lookup {
        let id = (key.to_string(), idx);
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(slot) = inner.pieces.get_mut(&id) {
            if slot.piece.len == len {
                let old = std::mem::replace(&mut slot.tick, tick);
                let p = slot.piece.clone();
                inner.lru.remove(&old);
                inner.lru.insert(tick, id);
                return Lookup::Hit(p);
            }
        }
        if let Some(old) = inner.pieces.remove(&id) {
            inner.lru.remove(&old.tick);
            inner.bytes -= old.piece.len as u64;
        }
        let piece = Piece::new(len);
        inner.bytes += len as u64;
        inner.lru.insert(tick, id.clone());
        inner.pieces.insert(
            id,
            Slot {
                piece: piece.clone(),
                tick,
            },
        );
        Self::evict(&mut inner, self.max_bytes, self.dir.as_deref());
        Lookup::Started(piece)
    }

    /// Drops complete pieces, least recently used first, until the store fits.
    fn evict(inner: &mut Inner, max: u64, dir: Option<&Path>) {
        if inner.bytes <= max {
            return;
        }
        let victims: Vec<(u64, PieceId)> = inner
            .lru
            .iter()
            .filter(|(_, id)| inner.pieces.get(*id).is_some_and(|s| s.piece.is_done()))
            .map(|(t, id)| (*t, id.clone()))
            .collect();
        for (t, id) in victims {
            if inner.bytes <= max {
                break;
            }
            inner.lru.remove(&t);
            if let Some(s) = inner.pieces.remove(&id) {
                inner.bytes -= s.piece.len as u64;
                if let Some(d) = dir {
                    let _ = std::fs::remove_file(key_dir(d, &id.0).join(id.1.to_string()));
                }
            }
        }
    }

    /// A piece was filled: keep it on disk if the store has a directory.
    pub fn completed(&self, key: &str, idx: u64, piece: &Piece) -> Result<()> {
        let current = self
            .peek(key, idx)
            .is_some_and(|p| std::ptr::eq(Arc::as_ptr(&p), piece));
        if !current {
            return Ok(()); // dropped while it was being filled
        }
        if let (Some(d), Some(b)) = (&self.dir, piece.bytes()) {
            let bd = key_dir(d, key);
            std::fs::create_dir_all(&bd).map_err(|e| Error::io("create", &bd, e))?;
            let kf = bd.join("key");
            if !kf.exists() {
                std::fs::write(&kf, key).map_err(|e| Error::io("write", &kf, e))?;
            }
            let tmp = bd.join(format!(".{idx}.tmp"));
            std::fs::write(&tmp, &b).map_err(|e| Error::io("write", &tmp, e))?;
            let file = bd.join(idx.to_string());
            // Renamed under the lock, so that a removal cannot slip between the check and
            // the rename and leave a file behind that a restart would load.
            let inner = self.lock();
            let still = inner
                .pieces
                .get(&(key.to_string(), idx))
                .is_some_and(|s| std::ptr::eq(Arc::as_ptr(&s.piece), piece));
            if still {
                std::fs::rename(&tmp, &file).map_err(|e| Error::io("rename", &tmp, e))?;
            } else {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        let mut inner = self.lock();
        Self::evict(&mut inner, self.max_bytes, self.dir.as_deref());
        Ok(())
    }

    /// Drops the piece at `idx` if it is `piece` (not a newer one fetched since).
    pub fn remove_if_same(&self, key: &str, idx: u64, piece: &Piece) -> bool {
        let same = self
            .peek(key, idx)
            .is_some_and(|p| std::ptr::eq(Arc::as_ptr(&p), piece));
        same && self.remove(key, idx).is_some()
    }

    /// Drops the pieces of `key` from `first` to `last` (inclusive) that are here; returns
    /// them.
    pub fn remove_range(&self, key: &str, first: u64, last: u64) -> Vec<Arc<Piece>> {
        let ids: Vec<u64> = {
            let inner = self.lock();
            if last.saturating_sub(first) < inner.pieces.len() as u64 {
                (first..=last)
                    .filter(|i| inner.pieces.contains_key(&(key.to_string(), *i)))
                    .collect()
            } else {
                inner
                    .pieces
                    .keys()
                    .filter(|(k, i)| k == key && (first..=last).contains(i))
                    .map(|(_, i)| *i)
                    .collect()
            }
        };
        ids.into_iter()
            .filter_map(|i| self.remove(key, i))
            .collect()
    }

    /// Drops a piece (failed to fill, or its bytes were reported bad).
    pub fn remove(&self, key: &str, idx: u64) -> Option<Arc<Piece>> {
        let mut inner = self.lock();
        let s = inner.pieces.remove(&(key.to_string(), idx))?;
        inner.lru.remove(&s.tick);
        inner.bytes -= s.piece.len as u64;
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_file(key_dir(d, key).join(idx.to_string()));
        }
        Some(s.piece)
    }

    /// Drops every piece of `key` that came (partly) from `source`; returns how many.
    pub fn remove_from(&self, key: &str, source: &str) -> usize {
        let ids: Vec<PieceId> = self
            .lock()
            .pieces
            .iter()
            .filter(|(id, s)| id.0 == key && s.piece.source().split(',').any(|x| x == source))
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter()
            .filter(|id| self.remove(&id.0, id.1).is_some())
            .count()
    }

    /// The complete pieces of `key`, in order, if all `count` are present.
    pub fn all_of(&self, key: &str, count: u64) -> Option<Vec<Arc<Piece>>> {
        let inner = self.lock();
        // Called at every piece's completion: pieces mostly arrive in order, so a missing one
        // is found first from the end, without walking the blob each time.
        (0..count)
            .rev()
            .map(|i| {
                let p = &inner.pieces.get(&(key.to_string(), i))?.piece;
                p.is_done().then(|| p.clone())
            })
            .collect::<Option<Vec<_>>>()
            .map(|mut v| {
                v.reverse();
                v
            })
    }

    pub fn peek(&self, key: &str, idx: u64) -> Option<Arc<Piece>> {
        self.lock()
            .pieces
            .get(&(key.to_string(), idx))
            .map(|s| s.piece.clone())
    }

    /// (bytes, pieces) held.
    pub fn usage(&self) -> (u64, usize) {
        let inner = self.lock();
        (inner.bytes, inner.pieces.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_get_bytes_while_they_arrive() {
        let p = Piece::new(10);
        let r = {
            let p = p.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 10 {
                    got.extend_from_slice(&p.read(got.len(), 3).await.unwrap());
                }
                got
            })
        };
        for c in [b"abcd".as_slice(), b"ef", b"ghijXX"] {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            p.append(c);
        }
        assert_eq!(r.await.unwrap(), b"abcdefghij");
        assert!(p.is_done());
        let q = Piece::new(4);
        q.append(b"ab");
        let w = {
            let q = q.clone();
            tokio::spawn(async move { q.read(2, 10).await })
        };
        q.fail(Error::upstream("http://parent:1", "upstream gone"));
        let e = w.await.unwrap().unwrap_err();
        assert_eq!(e.to_string(), "http://parent:1: upstream gone");
    }

    #[test]
    fn lru_bounds_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(30, Some(dir.path().to_path_buf())).unwrap();
        for i in 0..3 {
            let Lookup::Started(p) = s.get_or_start("k", i, 10) else {
                panic!("new piece")
            };
            p.append(&[i as u8; 10]);
            s.completed("k", i, &p).unwrap();
        }
        assert_eq!(s.usage(), (30, 3));
        // Touch piece 0, add piece 3: piece 1 (least recent) goes.
        assert!(matches!(s.get_or_start("k", 0, 10), Lookup::Hit(_)));
        let Lookup::Started(p) = s.get_or_start("k", 3, 10) else {
            panic!()
        };
        p.append(&[3; 10]);
        s.completed("k", 3, &p).unwrap();
        assert!(s.peek("k", 1).is_none());
        assert_eq!(s.usage(), (30, 3));
        drop(s);
        // Restart: the pieces on disk come back, the evicted one does not.
        let s = Store::new(30, Some(dir.path().to_path_buf())).unwrap();
        assert_eq!(s.usage(), (30, 3));
        assert_eq!(&s.peek("k", 3).unwrap().bytes().unwrap()[..], &[3; 10]);
        assert!(s.peek("k", 1).is_none());
        assert!(s.all_of("k", 4).is_none());
        s.remove("k", 0);
        let s = Store::new(30, Some(dir.path().to_path_buf())).unwrap();
        assert_eq!(s.usage(), (20, 2));
    }
}
