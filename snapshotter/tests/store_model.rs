//! The snapshot metadata store against a model of containerd's snapshot rules: random
//! sequences of Prepare/View (create), Commit, Remove, Update and reopening the database must
//! give the same answers (success or which error) and leave the same tree as a `BTreeMap`.

use std::collections::BTreeMap;

use proptest::prelude::*;
use snapshotter::store::{Kind, MetaStore, Snapshot, Storage};
use snapshotter::Error;

/// A small key space, so that operations collide: existing keys, parents, names.
const KEYS: &[&str] = &["a", "b", "c", "d", "ns/1/e", "ns/2/f"];

#[derive(Clone, Debug)]
enum Op {
    /// Prepare (active) or View, with the parent `KEYS[p]` or none.
    Create {
        key: usize,
        view: bool,
        parent: Option<usize>,
    },
    Commit {
        key: usize,
        name: usize,
    },
    Remove {
        key: usize,
    },
    Label {
        key: usize,
        value: u8,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS.len();
    prop_oneof![
        4 => (k.clone(), any::<bool>(), proptest::option::of(0..KEYS.len()))
            .prop_map(|(key, view, parent)| Op::Create { key, view, parent }),
        3 => (k.clone(), 0..KEYS.len()).prop_map(|(key, name)| Op::Commit { key, name }),
        2 => k.clone().prop_map(|key| Op::Remove { key }),
        1 => (k, any::<u8>()).prop_map(|(key, value)| Op::Label { key, value }),
        1 => Just(Op::Reopen),
    ]
}

/// The model's record of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct M {
    kind: Kind,
    parent: String,
    label: Option<u8>,
}

/// Which error (or success) an operation gives.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
}

fn outcome<T>(r: Result<T, Error>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(Error::NotFound(_)) => Outcome::NotFound,
        Err(Error::AlreadyExists(_)) => Outcome::AlreadyExists,
        Err(Error::FailedPrecondition(_)) => Outcome::FailedPrecondition,
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

fn record(id: u64, kind: Kind, parent: &str) -> Snapshot {
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

/// containerd's rules, applied to the model.
fn apply_model(m: &mut BTreeMap<String, M>, op: &Op) -> Outcome {
    match *op {
        Op::Create { key, view, parent } => {
            let key = KEYS[key];
            let parent = parent.map_or("", |p| KEYS[p]);
            if m.contains_key(key) {
                return Outcome::AlreadyExists;
            }
            if !parent.is_empty() {
                match m.get(parent) {
                    None => return Outcome::NotFound,
                    Some(p) if p.kind != Kind::Committed => return Outcome::FailedPrecondition,
                    _ => {}
                }
            }
            let kind = if view { Kind::View } else { Kind::Active };
            m.insert(
                key.into(),
                M {
                    kind,
                    parent: parent.into(),
                    label: None,
                },
            );
            Outcome::Ok
        }
        Op::Commit { key, name } => {
            let (key, name) = (KEYS[key], KEYS[name]);
            if m.contains_key(name) {
                return Outcome::AlreadyExists;
            }
            let Some(mut s) = m.get(key).cloned() else {
                return Outcome::NotFound;
            };
            if s.kind != Kind::Active {
                return Outcome::FailedPrecondition;
            }
            s.kind = Kind::Committed;
            m.remove(key);
            m.insert(name.into(), s);
            Outcome::Ok
        }
        Op::Remove { key } => {
            let key = KEYS[key];
            if !m.contains_key(key) {
                return Outcome::NotFound;
            }
            if m.values().any(|s| s.parent == key) {
                return Outcome::FailedPrecondition;
            }
            m.remove(key);
            Outcome::Ok
        }
        Op::Label { key, value } => match m.get_mut(KEYS[key]) {
            None => Outcome::NotFound,
            Some(s) => {
                s.label = Some(value);
                Outcome::Ok
            }
        },
        Op::Reopen => Outcome::Ok,
    }
}

fn apply_store(slot: &mut Option<MetaStore>, path: &std::path::Path, op: &Op) -> Outcome {
    if let Op::Reopen = op {
        // The database allows one opener: close it first.
        drop(slot.take());
        *slot = Some(MetaStore::open(path).unwrap());
        return Outcome::Ok;
    }
    let store = slot.as_ref().unwrap();
    match *op {
        Op::Create { key, view, parent } => {
            let id = store.next_id().unwrap();
            let kind = if view { Kind::View } else { Kind::Active };
            let parent = parent.map_or("", |p| KEYS[p]);
            outcome(store.create(KEYS[key], &record(id, kind, parent)))
        }
        Op::Commit { key, name } => outcome(store.commit(KEYS[key], KEYS[name], |_| {})),
        Op::Remove { key } => outcome(store.remove(KEYS[key])),
        Op::Label { key, value } => outcome(store.update(KEYS[key], |s| {
            s.labels.insert("l".into(), value.to_string());
            Ok(())
        })),
        Op::Reopen => unreachable!("handled above"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_store_keeps_containerds_snapshot_rules(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.redb");
        let mut slot = Some(MetaStore::open(&path).unwrap());
        let mut model = BTreeMap::new();
        let mut last_id = 0;
        for (i, op) in ops.iter().enumerate() {
            let want = apply_model(&mut model, op);
            let got = apply_store(&mut slot, &path, op);
            let store = slot.as_ref().unwrap();
            prop_assert_eq!(&got, &want, "op {} {:?}", i, op);
            let listed: BTreeMap<String, M> = store
                .list()
                .unwrap()
                .into_iter()
                .map(|(k, s)| {
                    let label = s.labels.get("l").map(|v| v.parse().unwrap());
                    (k, M { kind: s.kind, parent: s.parent, label })
                })
                .collect();
            prop_assert_eq!(&listed, &model, "after op {} {:?}", i, op);
            // Every chain walks the model's parents.
            for k in model.keys() {
                let chain: Vec<String> = store.chain(k).unwrap().into_iter().map(|(k, _)| k).collect();
                let mut want = vec![k.clone()];
                while let Some(p) = model.get(want.last().unwrap()).map(|s| s.parent.clone()) {
                    if p.is_empty() {
                        break;
                    }
                    want.push(p);
                }
                prop_assert_eq!(chain, want);
            }
        }
        // Ids only grow, across reopens too.
        let id = slot.as_ref().unwrap().next_id().unwrap();
        prop_assert!(id > last_id);
        last_id = id;
        drop(slot.take());
        let store = MetaStore::open(&path).unwrap();
        prop_assert!(store.next_id().unwrap() > last_id);
    }
}
