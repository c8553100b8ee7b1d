//! The [`Storage`] contract, checked the same way against the simulated disk and the real one: the
//! simulator is only worth trusting if `SimDisk` behaves like `FjallStorage` wherever the contract
//! says anything.

use tempfile::TempDir;
use triarch_storage::{FjallStorage, SimDisk, Storage, StorageError};

/// Runs every check on a fresh storage from `fresh`.
fn conformance<S: Storage>(mut fresh: impl FnMut() -> S) {
    staged_writes_are_visible_before_sync(&mut fresh());
    overwrite_and_delete(&mut fresh());
    missing_tables_read_empty(&mut fresh());
    tables_are_separate(&mut fresh());
    scan_is_ordered_bounded_and_starts_at_from(&mut fresh());
    any_key_and_value(&mut fresh());
    sync_keeps_what_reads_see(&mut fresh());
}

fn staged_writes_are_visible_before_sync(s: &mut impl Storage) {
    s.put("t", b"a", b"1").unwrap();
    assert_eq!(s.get("t", b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        s.scan("t", b"", 10).unwrap(),
        vec![(b"a".to_vec(), b"1".to_vec())]
    );
    s.delete("t", b"a").unwrap();
    assert_eq!(s.get("t", b"a").unwrap(), None);
    assert_eq!(s.scan("t", b"", 10).unwrap(), vec![]);
}

fn overwrite_and_delete(s: &mut impl Storage) {
    s.put("t", b"k", b"old").unwrap();
    s.sync().unwrap();
    s.put("t", b"k", b"new").unwrap();
    assert_eq!(s.get("t", b"k").unwrap(), Some(b"new".to_vec()));
    s.delete("t", b"k").unwrap();
    assert_eq!(s.get("t", b"k").unwrap(), None);
    // Deleting what is not there is no error.
    s.delete("t", b"k").unwrap();
    s.delete("t", b"never").unwrap();
    s.put("t", b"k", b"again").unwrap();
    assert_eq!(s.get("t", b"k").unwrap(), Some(b"again".to_vec()));
}

fn missing_tables_read_empty(s: &mut impl Storage) {
    assert_eq!(s.get("nothing", b"a").unwrap(), None);
    assert_eq!(s.scan("nothing", b"", 10).unwrap(), vec![]);
    s.delete("nothing", b"a").unwrap();
    assert_eq!(s.scan("nothing", b"", 10).unwrap(), vec![]);
}

fn tables_are_separate(s: &mut impl Storage) {
    s.put("left", b"k", b"l").unwrap();
    s.put("right", b"k", b"r").unwrap();
    s.delete("right", b"k").unwrap();
    assert_eq!(s.get("left", b"k").unwrap(), Some(b"l".to_vec()));
    assert_eq!(s.get("right", b"k").unwrap(), None);
    assert_eq!(s.scan("left", b"", 10).unwrap().len(), 1);
}

fn scan_is_ordered_bounded_and_starts_at_from(s: &mut impl Storage) {
    for k in [b"c".as_slice(), b"a", b"bb", b"b", b"d", b"ba"] {
        s.put("t", k, &[k, b"!"].concat()).unwrap();
    }
    let keys = |entries: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<Vec<u8>> {
        entries.into_iter().map(|(k, _)| k).collect()
    };
    let all = s.scan("t", b"", usize::MAX).unwrap();
    assert_eq!(
        keys(all.clone()),
        [b"a".as_slice(), b"b", b"ba", b"bb", b"c", b"d"]
    );
    assert!(all.iter().all(|(k, v)| *v == [k.as_slice(), b"!"].concat()));
    // `from` is inclusive, and need not be a stored key.
    assert_eq!(
        keys(s.scan("t", b"b", 2).unwrap()),
        [b"b".as_slice(), b"ba"]
    );
    assert_eq!(
        keys(s.scan("t", b"bab", 2).unwrap()),
        [b"bb".as_slice(), b"c"]
    );
    assert_eq!(keys(s.scan("t", b"d", 10).unwrap()), [b"d".as_slice()]);
    assert_eq!(s.scan("t", b"e", 10).unwrap(), vec![]);
    assert_eq!(s.scan("t", b"", 0).unwrap(), vec![]);
    // Scans see staged deletes.
    s.delete("t", b"ba").unwrap();
    assert_eq!(
        keys(s.scan("t", b"b", 2).unwrap()),
        [b"b".as_slice(), b"bb"]
    );
}

fn any_key_and_value(s: &mut impl Storage) {
    // The empty key sorts first, a key of zero bytes sorts after it; values may be empty.
    s.put("t", b"", b"empty key").unwrap();
    s.put("t", b"\0", b"").unwrap();
    s.put("t", &[0xff; 300], &[7; 10_000]).unwrap();
    assert_eq!(s.get("t", b"").unwrap(), Some(b"empty key".to_vec()));
    assert_eq!(s.get("t", b"\0").unwrap(), Some(vec![]));
    let all = s.scan("t", b"", 10).unwrap();
    assert_eq!(
        all,
        vec![
            (vec![], b"empty key".to_vec()),
            (vec![0], vec![]),
            (vec![0xff; 300], vec![7; 10_000]),
        ]
    );
    s.delete("t", b"").unwrap();
    assert_eq!(s.get("t", b"").unwrap(), None);
}

fn sync_keeps_what_reads_see(s: &mut impl Storage) {
    s.sync().unwrap(); // nothing staged: still fine
    s.put("t", b"a", b"1").unwrap();
    s.put("t", b"b", b"2").unwrap();
    s.delete("t", b"a").unwrap();
    s.sync().unwrap();
    s.sync().unwrap();
    assert_eq!(s.get("t", b"a").unwrap(), None);
    assert_eq!(
        s.scan("t", b"", 10).unwrap(),
        vec![(b"b".to_vec(), b"2".to_vec())]
    );
}

#[test]
fn sim_disk_conforms() {
    conformance(SimDisk::new);
}

#[test]
fn fjall_storage_conforms() {
    // Every FjallStorage lives in its own directory; the directories go when the test ends.
    let mut dirs: Vec<TempDir> = Vec::new();
    conformance(|| {
        let dir = tempfile::tempdir().unwrap();
        let storage = FjallStorage::open(dir.path()).unwrap();
        dirs.push(dir);
        storage
    });
}

#[test]
fn fjall_storage_validates_table_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = FjallStorage::open(dir.path()).unwrap();
    let too_long = "t".repeat(FjallStorage::MAX_TABLE_NAME_LEN + 1);
    for bad in [
        "",
        "has space",
        "slash/",
        "../up",
        "nul\0",
        "ünï",
        too_long.as_str(),
    ] {
        let invalid = |r: Result<(), StorageError>| matches!(r, Err(StorageError::InvalidTable(_)));
        assert!(invalid(s.put(bad, b"k", b"v")), "put accepted {bad:?}");
        assert!(invalid(s.delete(bad, b"k")), "delete accepted {bad:?}");
        assert!(invalid(s.get(bad, b"k").map(drop)), "get accepted {bad:?}");
        assert!(
            invalid(s.scan(bad, b"", 1).map(drop)),
            "scan accepted {bad:?}"
        );
    }
    let longest = "t".repeat(FjallStorage::MAX_TABLE_NAME_LEN);
    for good in ["raft.log", "cart_v2-meta", "0", longest.as_str()] {
        s.put(good, b"k", b"v").unwrap();
        assert_eq!(s.get(good, b"k").unwrap(), Some(b"v".to_vec()));
    }
}

#[test]
fn fjall_storage_refuses_oversized_keys_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = FjallStorage::open(dir.path()).unwrap();
    let longest = vec![b'k'; FjallStorage::MAX_KEY_LEN];
    let too_long = vec![b'k'; FjallStorage::MAX_KEY_LEN + 1];
    s.put("t", &longest, b"v").unwrap();
    assert!(matches!(
        s.put("t", &too_long, b"v"),
        Err(StorageError::Engine(_))
    ));
    // A key that cannot be stored is not there: reads and deletes need no error.
    assert_eq!(s.get("t", &too_long).unwrap(), None);
    s.delete("t", &too_long).unwrap();
    assert_eq!(s.scan("t", &too_long, 10).unwrap(), vec![]);
    assert_eq!(
        s.scan("t", b"", 10).unwrap(),
        vec![(longest.clone(), b"v".to_vec())]
    );
    // The refusal did not poison the database.
    s.put("t", b"after", b"w").unwrap();
    s.sync().unwrap();
    drop(s);
    let s = FjallStorage::open(dir.path()).unwrap();
    assert_eq!(s.get("t", &longest).unwrap(), Some(b"v".to_vec()));
    assert_eq!(s.get("t", b"after").unwrap(), Some(b"w".to_vec()));
}

#[test]
fn fjall_storage_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = FjallStorage::open(dir.path()).unwrap();
    let syncer = s.syncer();
    assert!(
        FjallStorage::open(dir.path()).is_err(),
        "a second open must fail"
    );
    drop(s);
    assert!(
        FjallStorage::open(dir.path()).is_err(),
        "a live syncer keeps the database open"
    );
    drop(syncer);
    FjallStorage::open(dir.path()).unwrap();
}

#[test]
fn syncer_is_a_cheap_handle_for_another_thread() {
    fn handle<T: Clone + Send + Sync + 'static>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let mut s = FjallStorage::open(dir.path()).unwrap();
    let syncer = s.syncer();
    handle(&syncer);
    s.put("t", b"a", b"1").unwrap();
    // Whether the sync really reached the disk is the crash test's business (tests/crash.rs).
    let on_thread = syncer.clone();
    std::thread::spawn(move || on_thread.sync())
        .join()
        .unwrap()
        .unwrap();
    syncer.sync().unwrap();
    assert_eq!(s.get("t", b"a").unwrap(), Some(b"1".to_vec()));
}

/// A write batch spans tables, deletes as well as writes, is visible at once, and is durable
/// after a sync like any other write; a bad key fails the whole batch before anything is written.
#[test]
fn fjall_write_batches_span_tables_and_fail_whole() {
    let dir = TempDir::new().unwrap();
    {
        let mut s = FjallStorage::open(dir.path()).unwrap();
        s.put("b", b"gone", b"x").unwrap();
        s.write_batch([
            ("a", &b"k1"[..], Some(&b"v1"[..])),
            ("b", &b"k2"[..], Some(&b"v2"[..])),
            ("b", &b"gone"[..], None),
        ])
        .unwrap();
        assert_eq!(s.get("a", b"k1").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(s.get("b", b"gone").unwrap(), None);
        let too_long = vec![b'k'; FjallStorage::MAX_KEY_LEN + 1];
        let err = s
            .write_batch([
                ("a", &b"k3"[..], Some(&b"v3"[..])),
                ("a", too_long.as_slice(), Some(&b"v"[..])),
            ])
            .unwrap_err();
        assert!(matches!(err, StorageError::Engine(_)), "{err:?}");
        assert_eq!(
            s.get("a", b"k3").unwrap(),
            None,
            "nothing of a failed batch"
        );
        s.sync().unwrap();
    }
    let s = FjallStorage::open(dir.path()).unwrap();
    assert_eq!(s.get("b", b"k2").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(s.get("b", b"gone").unwrap(), None);
}
