//! The node's disk as the core task uses it: fjall behind a small in-memory staging area.
//!
//! fjall holds its journal lock while it fsyncs, so a write made during a sync waits for the
//! sync. The core therefore does not write to fjall while a sync runs: writes a step makes are
//! staged here (and visible to reads at once), and handed to fjall in one go by
//! [`NodeStorage::flush_to_engine`] just before the next sync starts, when no sync is running.
//! The core keeps stepping during a sync instead of stalling on the lock, and the next batch grows
//! while the disk works: group commit with the stepping and the syncing overlapped.

use std::collections::{BTreeMap, HashMap};
use triarch_storage::{Entry, FjallStorage, FjallSyncer, Storage, StorageError};

pub struct NodeStorage {
    inner: FjallStorage,
    /// Writes not yet handed to fjall, by table then key (`None` = delete).
    staged: HashMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Whether anything was written since the last `flush_to_engine`.
    dirty: bool,
}

impl NodeStorage {
    pub fn new(inner: FjallStorage) -> Self {
        NodeStorage {
            inner,
            staged: HashMap::new(),
            dirty: false,
        }
    }

    pub fn syncer(&self) -> FjallSyncer {
        self.inner.syncer()
    }

    /// Hands every staged write to fjall (no fsync) and says whether there was any; a sync
    /// started afterwards covers them all. Call only while no sync is running.
    pub fn flush_to_engine(&mut self) -> Result<bool, StorageError> {
        if !self.dirty {
            return Ok(false);
        }
        // One atomic batch: a crash keeps all of a step batch's writes or none, so the order in
        // which the protocol cores staged them (e.g. Raft's prefix-safe order) cannot be undone
        // by the order in which they reach the journal.
        let staged = std::mem::take(&mut self.staged);
        let writes = staged.iter().flat_map(|(table, writes)| {
            writes
                .iter()
                .map(move |(key, value)| (table.as_str(), key.as_slice(), value.as_deref()))
        });
        self.inner.write_batch(writes)?;
        self.dirty = false;
        Ok(true)
    }

    /// Whether writes are staged and not yet handed to fjall.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    fn stage(&mut self, table: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), StorageError> {
        // Validate now, so that a bad table or key fails the step that made it, not the flush.
        if key.len() > FjallStorage::MAX_KEY_LEN {
            return Err(StorageError::Engine(format!(
                "key of {} bytes is too long",
                key.len()
            )));
        }
        let t = match self.staged.get_mut(table) {
            Some(t) => t,
            None => self.staged.entry(table.to_string()).or_default(),
        };
        t.insert(key.to_vec(), value.map(<[u8]>::to_vec));
        self.dirty = true;
        Ok(())
    }
}

impl Storage for NodeStorage {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.staged.get(table).and_then(|t| t.get(key)) {
            Some(staged) => Ok(staged.clone()),
            None => self.inner.get(table, key),
        }
    }

    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.stage(table, key, Some(value))
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<(), StorageError> {
        self.stage(table, key, None)
    }

    fn scan(&self, table: &str, from: &[u8], limit: usize) -> Result<Vec<Entry>, StorageError> {
        let Some(staged) = self.staged.get(table) else {
            return self.inner.scan(table, from, limit);
        };
        // fjall's entries, overridden by staged writes (and staged deletes), in key order. Staged
        // deletes may hide up to `staged.len()` of fjall's entries, so ask fjall for that many more.
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self
            .inner
            .scan(table, from, limit.saturating_add(staged.len()))?
            .into_iter()
            .collect();
        for (k, v) in staged.range(from.to_vec()..) {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.flush_to_engine()?;
        self.inner.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_writes_are_read_merged_into_scans_and_survive_flush_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = NodeStorage::new(FjallStorage::open(dir.path()).unwrap());
        for k in [b"a", b"b", b"c", b"d"] {
            s.put("t", k, k).unwrap();
        }
        s.sync().unwrap();
        s.delete("t", b"b").unwrap();
        s.put("t", b"c", b"C").unwrap();
        s.put("t", b"e", b"e").unwrap();
        assert!(s.is_dirty());
        assert_eq!(s.get("t", b"b").unwrap(), None);
        assert_eq!(s.get("t", b"c").unwrap(), Some(b"C".to_vec()));
        let keys = |s: &NodeStorage, limit| -> Vec<Vec<u8>> {
            s.scan("t", b"", limit)
                .unwrap()
                .into_iter()
                .map(|e| e.0)
                .collect()
        };
        assert_eq!(
            keys(&s, 10),
            [b"a".to_vec(), b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]
        );
        assert_eq!(keys(&s, 2), [b"a".to_vec(), b"c".to_vec()]);
        assert!(s.flush_to_engine().unwrap());
        assert!(!s.flush_to_engine().unwrap(), "nothing left to flush");
        s.syncer().sync().unwrap();
        drop(s);
        let s = NodeStorage::new(FjallStorage::open(dir.path()).unwrap());
        assert_eq!(
            keys(&s, 10),
            [b"a".to_vec(), b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]
        );
    }
}
