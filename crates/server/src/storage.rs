//! The node's disk as the core task uses it: fjall, plus a note of whether anything was staged
//! since the last sync started, so that a batch that wrote nothing does not pay for an fsync.

use triarch_storage::{Entry, FjallStorage, FjallSyncer, Storage, StorageError};

pub struct NodeStorage {
    inner: FjallStorage,
    dirty: bool,
}

impl NodeStorage {
    pub fn new(inner: FjallStorage) -> Self {
        NodeStorage { inner, dirty: false }
    }

    pub fn syncer(&self) -> FjallSyncer {
        self.inner.syncer()
    }

    /// Whether writes were staged since the last call; the caller then syncs them (a sync
    /// started after this call covers every one of them).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }
}

impl Storage for NodeStorage {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(table, key)
    }

    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.dirty = true;
        self.inner.put(table, key, value)
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<(), StorageError> {
        self.dirty = true;
        self.inner.delete(table, key)
    }

    fn scan(&self, table: &str, from: &[u8], limit: usize) -> Result<Vec<Entry>, StorageError> {
        self.inner.scan(table, from, limit)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.dirty = false;
        self.inner.sync()
    }
}
