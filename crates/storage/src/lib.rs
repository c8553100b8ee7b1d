//! Storage as the protocol cores see it.
//!
//! A core *stages* writes while it steps (`put`, `delete`); reads see staged writes at once.
//! Nothing staged is durable until the driver calls [`Storage::sync`], which it does once for a
//! whole batch of steps before releasing that batch's messages and replies (persist-then-send,
//! group commit; see docs/architecture.md). A crash loses exactly the writes staged since the last
//! successful `sync`, which is what [`SimDisk`] reproduces in the simulator.
//!
//! Data lives in named *tables* (fjall keyspaces on disk). Table names are short ASCII strings.

mod fjall_disk;
mod sim_disk;

pub use fjall_disk::{FjallStorage, FjallSyncer};
pub use sim_disk::SimDisk;

/// A key-value pair returned by [`Storage::scan`].
pub type Entry = (Vec<u8>, Vec<u8>);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage engine error: {0}")]
    Engine(String),
    #[error("invalid table name {0:?}")]
    InvalidTable(String),
    /// Raised by a [`SimDisk`] told to fail (fault injection).
    #[error("injected storage fault")]
    Injected,
}

pub trait Storage {
    /// The value stored under `key`, including writes staged but not yet synced.
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Stages `key = value`. Durable only after the next successful [`Storage::sync`].
    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StorageError>;

    /// Stages the removal of `key`. Durable only after the next successful [`Storage::sync`].
    fn delete(&mut self, table: &str, key: &[u8]) -> Result<(), StorageError>;

    /// Up to `limit` entries with keys `>= from`, in key order.
    fn scan(&self, table: &str, from: &[u8], limit: usize) -> Result<Vec<Entry>, StorageError>;

    /// Makes every staged write durable with one sync (fsync on disk). On error nothing may be
    /// acknowledged: the driver treats it as fatal for the batch.
    fn sync(&mut self) -> Result<(), StorageError>;
}
