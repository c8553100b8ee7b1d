//! A simulated disk: an in-memory store that loses every write staged since the last `sync` when
//! the simulator crashes it, and that can be told to fail (fault injection).

use crate::{Entry, Storage, StorageError};
use std::collections::BTreeMap;

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    /// What survives a crash.
    durable: BTreeMap<String, Table>,
    /// What reads see: `durable` plus every staged write.
    current: BTreeMap<String, Table>,
    /// Staged writes since the last sync, in order (None = delete).
    staged: Vec<(String, Vec<u8>, Option<Vec<u8>>)>,
    /// When set, `sync` fails (and leaves the staged writes unsynced).
    fail_sync: bool,
    syncs: u64,
}

impl SimDisk {
    pub fn new() -> Self {
        SimDisk::default()
    }

    /// A crash: every write staged since the last successful sync is lost.
    pub fn crash(&mut self) {
        self.staged.clear();
        self.current = self.durable.clone();
    }

    /// A crash that keeps the first `keep` staged writes and loses the rest: what a real disk
    /// does when part of the unsynced journal tail had already reached the OS (fjall writes its
    /// journal buffer out in order, so survivors are always a prefix).
    pub fn crash_keeping_prefix(&mut self, keep: usize) {
        let keep = keep.min(self.staged.len());
        self.staged.truncate(keep);
        self.apply_staged();
        self.current = self.durable.clone();
    }

    fn apply_staged(&mut self) {
        for (table, key, value) in self.staged.drain(..) {
            let t = self.durable.entry(table).or_default();
            match value {
                Some(v) => t.insert(key, v),
                None => t.remove(&key),
            };
        }
    }

    /// Makes the next syncs fail until called again with `false`.
    pub fn set_fail_sync(&mut self, fail: bool) {
        self.fail_sync = fail;
    }

    /// Number of writes staged and not yet synced.
    pub fn unsynced_writes(&self) -> usize {
        self.staged.len()
    }

    /// Number of successful syncs (for asserting group commit in tests).
    pub fn syncs(&self) -> u64 {
        self.syncs
    }
}

impl Storage for SimDisk {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.current.get(table).and_then(|t| t.get(key)).cloned())
    }

    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.current
            .entry(table.to_string())
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        self.staged
            .push((table.to_string(), key.to_vec(), Some(value.to_vec())));
        Ok(())
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<(), StorageError> {
        if let Some(t) = self.current.get_mut(table) {
            t.remove(key);
        }
        self.staged.push((table.to_string(), key.to_vec(), None));
        Ok(())
    }

    fn scan(&self, table: &str, from: &[u8], limit: usize) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .current
            .get(table)
            .map(|t| {
                t.range(from.to_vec()..)
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if self.fail_sync {
            return Err(StorageError::Injected);
        }
        self.apply_staged();
        self.syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loses_exactly_the_unsynced_writes() {
        let mut d = SimDisk::new();
        d.put("t", b"a", b"1").unwrap();
        d.sync().unwrap();
        d.put("t", b"b", b"2").unwrap();
        d.delete("t", b"a").unwrap();
        assert_eq!(d.get("t", b"a").unwrap(), None, "reads see staged deletes");
        assert_eq!(
            d.get("t", b"b").unwrap(),
            Some(b"2".to_vec()),
            "reads see staged puts"
        );
        d.crash();
        assert_eq!(d.get("t", b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(d.get("t", b"b").unwrap(), None);
    }

    #[test]
    fn a_partial_crash_keeps_a_prefix_of_the_unsynced_writes() {
        let mut d = SimDisk::new();
        d.put("t", b"a", b"1").unwrap();
        d.put("t", b"b", b"2").unwrap();
        d.put("t", b"c", b"3").unwrap();
        d.crash_keeping_prefix(2);
        assert_eq!(d.get("t", b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(d.get("t", b"c").unwrap(), None);
        assert_eq!(d.unsynced_writes(), 0);
    }

    #[test]
    fn failed_sync_keeps_writes_unsynced() {
        let mut d = SimDisk::new();
        d.put("t", b"a", b"1").unwrap();
        d.set_fail_sync(true);
        assert!(d.sync().is_err());
        d.crash();
        assert_eq!(d.get("t", b"a").unwrap(), None);
    }

    #[test]
    fn scan_is_ordered_and_bounded() {
        let mut d = SimDisk::new();
        for k in [b"c", b"a", b"b", b"d"] {
            d.put("t", k, k).unwrap();
        }
        let got: Vec<Vec<u8>> = d
            .scan("t", b"b", 2)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(got, vec![b"b".to_vec(), b"c".to_vec()]);
    }
}
