//! Model-based test: random sequences of writes, reads, syncs and reopens run against
//! `FjallStorage` and against a `BTreeMap` per table; after every step both must agree.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use triarch_storage::{Entry, FjallStorage, Storage};

const TABLES: [&str; 2] = ["t0", "t1"];

#[derive(Clone, Debug)]
enum Op {
    Put {
        table: usize,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: usize,
        key: Vec<u8>,
    },
    Get {
        table: usize,
        key: Vec<u8>,
    },
    Scan {
        table: usize,
        from: Vec<u8>,
        limit: usize,
    },
    Sync,
    /// Sync, close the database, open it again: everything synced must still be there.
    Reopen,
}

/// Few short keys, so that writes often hit the same key and scans start between keys. The empty
/// key is among them on purpose (fjall cannot store it as is).
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..3, 0..3)
}

fn op() -> impl Strategy<Value = Op> {
    let table = 0..TABLES.len();
    prop_oneof![
        6 => (table.clone(), key(), prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(table, key, value)| Op::Put { table, key, value }),
        3 => (table.clone(), key()).prop_map(|(table, key)| Op::Delete { table, key }),
        2 => (table.clone(), key()).prop_map(|(table, key)| Op::Get { table, key }),
        2 => (table, key(), 0usize..6)
            .prop_map(|(table, from, limit)| Op::Scan { table, from, limit }),
        2 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

type Model = [BTreeMap<Vec<u8>, Vec<u8>>; TABLES.len()];

fn model_scan(model: &Model, table: usize, from: &[u8], limit: usize) -> Vec<Entry> {
    model[table]
        .range(from.to_vec()..)
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn open(dir: &Path) -> FjallStorage {
    FjallStorage::open(dir).expect("open")
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut storage = Some(open(dir.path()));
    let mut model: Model = Default::default();
    for (step, op) in ops.into_iter().enumerate() {
        let s = storage.as_mut().expect("storage is open between steps");
        match &op {
            Op::Put { table, key, value } => {
                s.put(TABLES[*table], key, value).expect("put");
                model[*table].insert(key.clone(), value.clone());
            }
            Op::Delete { table, key } => {
                s.delete(TABLES[*table], key).expect("delete");
                model[*table].remove(key);
            }
            Op::Get { table, key } => {
                let got = s.get(TABLES[*table], key).expect("get");
                prop_assert_eq!(
                    got.as_ref(),
                    model[*table].get(key),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::Scan { table, from, limit } => {
                let got = s.scan(TABLES[*table], from, *limit).expect("scan");
                let want = model_scan(&model, *table, from, *limit);
                prop_assert_eq!(got, want, "step {}: {:?}", step, op);
            }
            Op::Sync => s.sync().expect("sync"),
            Op::Reopen => {
                s.sync().expect("sync");
                // Close before opening again: fjall holds a lock on the directory.
                drop(storage.take());
                storage = Some(open(dir.path()));
            }
        }
        // After every step, every table reads exactly like the model, key by key and in order.
        let s = storage.as_ref().expect("storage is open between steps");
        for (t, table) in TABLES.iter().enumerate() {
            let got = s.scan(table, b"", usize::MAX).expect("scan");
            prop_assert_eq!(
                got,
                model_scan(&model, t, b"", usize::MAX),
                "step {}: {:?}",
                step,
                op
            );
            for (k, v) in &model[t] {
                let got = s.get(table, k).expect("get");
                prop_assert_eq!(got.as_ref(), Some(v));
            }
        }
    }
    Ok(())
}

proptest! {
    // Every case opens a database and fsyncs for real: keep the count modest.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fjall_storage_agrees_with_a_btreemap(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
