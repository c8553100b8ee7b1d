//! [`Storage`] on disk, with fjall.
//!
//! # How writes become durable
//!
//! fjall appends every write to one journal shared by all keyspaces, through an 8 KiB user-space
//! buffer, and applies it to the keyspace's memtable, where reads see it at once. Both the
//! database and every keyspace are opened with `manual_journal_persist(true)`: a write then costs
//! no system call at all (fjall's default would `write(2)` the journal buffer to the OS after
//! every single write), and fjall never fsyncs because of a write. The only fsyncs fjall issues on
//! its own are at journal rotation, memtable flushes and compactions, none of them per write.
//!
//! [`Storage::sync`] and [`FjallSyncer::sync`] call `Database::persist(PersistMode::SyncAll)`,
//! which, under the journal's lock, flushes the buffer to the OS and then fsyncs the journal
//! file. Once it returns, every write made before it started is both in the kernel (so it survives
//! the process being killed, even with SIGKILL) and on the device (so it survives power loss).
//!
//! # What a crash keeps
//!
//! The contract is an upper bound on loss: a crash loses *at most* the writes staged since the
//! last successful sync. fjall may keep more: whatever part of the journal buffer reached the OS
//! before the crash (when the 8 KiB buffer filled up, or at a journal rotation) is replayed on
//! recovery. After a process crash, what survives is a prefix of the writes in the order they
//! were made, each single `put` or `delete` whole or not at all (a torn last entry is dropped).
//! After a power loss, the unsynced tail of the journal may be torn in ways fjall does not
//! repair: a tail entry that decodes but fails its checksum makes `open` fail rather than be
//! dropped.
//!
//! # Keys
//!
//! fjall refuses the empty key by panicking, and it panics *after* appending the write to the
//! journal, so the next open would replay the entry and panic again. The [`Storage`] contract,
//! like [`crate::SimDisk`], accepts any key, so every key is stored behind a one-byte tag
//! ([`KEY_TAG`]). Prefixing every key with the same byte keeps the key order, so scans need no
//! special handling. The longest key fjall accepts is 65535 bytes, so the longest key stored
//! here is [`FjallStorage::MAX_KEY_LEN`] bytes: `put` refuses longer keys, and values of 4 GiB
//! or more, with [`StorageError::Engine`] before anything reaches fjall; reads and deletes treat
//! such keys as absent.

use crate::{Entry, Storage, StorageError};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The byte in front of every stored key (see the module documentation). Changing it changes the
/// on-disk format.
const KEY_TAG: u8 = 0;

/// [`Storage`] on disk: one fjall database, one fjall keyspace per table.
///
/// Writes are staged in fjall's journal buffer and memtables and become durable on
/// [`Storage::sync`] (or [`FjallSyncer::sync`]), which costs one fsync however many writes it
/// covers: group commit. See the module documentation for exactly what a crash keeps.
pub struct FjallStorage {
    db: Database,
    path: PathBuf,
    /// Every table that exists, by name. Filled with the existing keyspaces on open and extended
    /// when a write creates a table, so reads never need to create a keyspace nor take `&mut`.
    tables: HashMap<String, Keyspace>,
}

impl FjallStorage {
    /// The longest key stored: fjall's limit (65535 bytes) minus the key tag (see the module
    /// documentation).
    pub const MAX_KEY_LEN: usize = u16::MAX as usize - 1;

    /// The longest table name. fjall accepts up to 255 bytes; ours are short identifiers, and a
    /// low limit catches a key passed by mistake where a table name was expected.
    pub const MAX_TABLE_NAME_LEN: usize = 64;

    /// Opens the database in `dir`, creating the directory and the database if needed, and
    /// recovering the writes that were synced before the last shutdown or crash.
    ///
    /// Fails with [`StorageError::Engine`] if another `FjallStorage` (in this or another process)
    /// has the database open; that includes a [`FjallSyncer`] outliving its storage.
    pub fn open(dir: &Path) -> Result<FjallStorage, StorageError> {
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .open()
            .map_err(engine)?;
        let mut tables = HashMap::new();
        for name in db.list_keyspace_names() {
            let keyspace = db.keyspace(&name, keyspace_options).map_err(engine)?;
            tables.insert(name.to_string(), keyspace);
        }
        Ok(FjallStorage {
            db,
            path: dir.to_path_buf(),
            tables,
        })
    }

    /// A handle that syncs this database from another thread (see [`FjallSyncer`]).
    pub fn syncer(&self) -> FjallSyncer {
        FjallSyncer {
            db: self.db.clone(),
        }
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes every `(table, key, value)` (`None` deletes) as one atomic fjall write batch: after
    /// a crash, the journal holds all of them or none, whichever order they are in. Not durable
    /// until the next [`Storage::sync`].
    pub fn write_batch<'a>(
        &mut self,
        writes: impl IntoIterator<Item = (&'a str, &'a [u8], Option<&'a [u8]>)>,
    ) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        // Writes come grouped by table: look each table up once per run, not once per write.
        let mut current: Option<(&'a str, Keyspace)> = None;
        for (table, key, value) in writes {
            let key = encode_key(key)?;
            let keyspace = match &current {
                Some((name, keyspace)) if *name == table => keyspace,
                _ => {
                    let keyspace = self.table(table)?.clone();
                    &current.insert((table, keyspace)).1
                }
            };
            match value {
                Some(v) => {
                    if u32::try_from(v.len()).is_err() {
                        return Err(StorageError::Engine(format!(
                            "value of {} bytes is too large (fjall stores less than 4 GiB)",
                            v.len()
                        )));
                    }
                    batch.insert(keyspace, key, v);
                }
                None => batch.remove(keyspace, key),
            }
        }
        batch.commit().map_err(engine)
    }

    /// The keyspace behind `table`, if the table exists. Reads of a missing table see it empty
    /// rather than create it: only writes create tables.
    fn existing_table(&self, table: &str) -> Result<Option<&Keyspace>, StorageError> {
        validate_table_name(table)?;
        Ok(self.tables.get(table))
    }

    /// The keyspace behind `table`, created on first use.
    fn table(&mut self, table: &str) -> Result<&Keyspace, StorageError> {
        validate_table_name(table)?;
        if !self.tables.contains_key(table) {
            let keyspace = self.db.keyspace(table, keyspace_options).map_err(engine)?;
            self.tables.insert(table.to_string(), keyspace);
        }
        Ok(&self.tables[table])
    }
}

impl std::fmt::Debug for FjallStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut tables: Vec<&str> = self.tables.keys().map(String::as_str).collect();
        tables.sort_unstable();
        f.debug_struct("FjallStorage")
            .field("path", &self.path)
            .field("tables", &tables)
            .finish()
    }
}

impl Storage for FjallStorage {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(keyspace) = self.existing_table(table)? else {
            return Ok(None);
        };
        // A key too long to store is not stored: reading it is no error.
        let Ok(key) = encode_key(key) else {
            return Ok(None);
        };
        let value = keyspace.get(key).map_err(engine)?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let key = encode_key(key)?;
        if u32::try_from(value.len()).is_err() {
            return Err(StorageError::Engine(format!(
                "value of {} bytes is too large (fjall stores less than 4 GiB)",
                value.len()
            )));
        }
        self.table(table)?.insert(key, value).map_err(engine)
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<(), StorageError> {
        // Deleting from a table that does not exist, or a key too long to store, has nothing to
        // do; creating the table just to write a tombstone into it would be wasted work.
        let Some(keyspace) = self.existing_table(table)? else {
            return Ok(());
        };
        let Ok(key) = encode_key(key) else {
            return Ok(());
        };
        keyspace.remove(key).map_err(engine)
    }

    fn scan(&self, table: &str, from: &[u8], limit: usize) -> Result<Vec<Entry>, StorageError> {
        let Some(keyspace) = self.existing_table(table)? else {
            return Ok(Vec::new());
        };
        // `from` is only a lower bound, so a key longer than any storable key is no error: every
        // stored key compares below it, and the scan is empty.
        let Ok(from) = encode_key(from) else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::with_capacity(limit.min(1024));
        for guard in keyspace.range(from..).take(limit) {
            let (key, value) = guard.into_inner().map_err(engine)?;
            entries.push((decode_key(&key)?.to_vec(), value.to_vec()));
        }
        Ok(entries)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        persist(&self.db)
    }
}

/// Makes a [`FjallStorage`]'s writes durable from another thread.
///
/// The server gives one to a blocking thread and keeps stepping the next batch on the
/// [`FjallStorage`] while the previous batch syncs. [`FjallSyncer::sync`] covers every write that
/// *returned* before `sync` was called; writes running concurrently with it may or may not be
/// covered, so a batch's outputs may be released only after a `sync` that started after the
/// batch's last write.
///
/// Cloning is cheap (one reference count). A syncer keeps the database open: drop every syncer
/// before reopening the same directory.
///
/// Caveat: fjall fsyncs while holding its journal lock, so a `put` or `delete` made while a sync
/// is in flight waits for that sync to finish. Stepping can overlap a sync, but writing cannot.
#[derive(Clone)]
pub struct FjallSyncer {
    db: Database,
}

impl FjallSyncer {
    /// Makes durable every write made to the database before this call started (see
    /// [`FjallSyncer`]). On error nothing may be acknowledged, and the database refuses every
    /// later write: after a failed fsync the state of the file is unknown (fjall "poisons" itself).
    pub fn sync(&self) -> Result<(), StorageError> {
        persist(&self.db)
    }
}

impl std::fmt::Debug for FjallSyncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallSyncer").finish_non_exhaustive()
    }
}

/// The one place that makes writes durable: flush the journal buffer to the OS, then fsync.
fn persist(db: &Database) -> Result<(), StorageError> {
    db.persist(PersistMode::SyncAll).map_err(engine)
}

/// Options for every keyspace. fjall stores them when the keyspace is created and ignores them
/// when it reopens one, so they are fixed for the life of a table.
fn keyspace_options() -> KeyspaceCreateOptions {
    // The journal is flushed only by `persist` (see the module documentation).
    KeyspaceCreateOptions::default().manual_journal_persist(true)
}

/// Table names: 1 to [`FjallStorage::MAX_TABLE_NAME_LEN`] bytes of ASCII letters, digits, `_`,
/// `-` and `.`.
fn validate_table_name(table: &str) -> Result<(), StorageError> {
    let valid = !table.is_empty()
        && table.len() <= FjallStorage::MAX_TABLE_NAME_LEN
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(StorageError::InvalidTable(table.to_string()))
    }
}

/// The key as stored in fjall: [`KEY_TAG`] then the key.
fn encode_key(key: &[u8]) -> Result<Vec<u8>, StorageError> {
    if key.len() > FjallStorage::MAX_KEY_LEN {
        return Err(StorageError::Engine(format!(
            "key of {} bytes is too long (at most {})",
            key.len(),
            FjallStorage::MAX_KEY_LEN
        )));
    }
    let mut stored = Vec::with_capacity(key.len() + 1);
    stored.push(KEY_TAG);
    stored.extend_from_slice(key);
    Ok(stored)
}

/// The key a stored key stands for. Anything without the tag was not written by this module.
fn decode_key(stored: &[u8]) -> Result<&[u8], StorageError> {
    match stored.split_first() {
        Some((&KEY_TAG, key)) => Ok(key),
        _ => Err(StorageError::Engine(format!(
            "stored key {stored:?} lacks the key tag"
        ))),
    }
}

/// fjall's I/O errors stay I/O errors (the driver may want to tell a full disk apart); every
/// other error (poisoned after a failed fsync, corrupt journal, locked database) is the engine's.
fn engine(error: fjall::Error) -> StorageError {
    match error {
        fjall::Error::Io(io) => StorageError::Io(io),
        other => StorageError::Engine(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        for ok in [
            "a",
            "raft_log",
            "cart-v2",
            "x.y",
            &"n".repeat(FjallStorage::MAX_TABLE_NAME_LEN),
        ] {
            assert!(validate_table_name(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "é",
            "a\0",
            &"n".repeat(FjallStorage::MAX_TABLE_NAME_LEN + 1),
        ] {
            assert!(
                matches!(validate_table_name(bad), Err(StorageError::InvalidTable(_))),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn key_tag_round_trips_and_keeps_order() {
        let keys: [&[u8]; 4] = [b"", b"\0", b"a", b"ab"];
        let stored: Vec<Vec<u8>> = keys.iter().map(|k| encode_key(k).unwrap()).collect();
        assert!(stored.windows(2).all(|w| w[0] < w[1]));
        for (key, stored) in keys.iter().zip(&stored) {
            assert_eq!(decode_key(stored).unwrap(), *key);
        }
        assert!(encode_key(&vec![1; FjallStorage::MAX_KEY_LEN]).is_ok());
        assert!(encode_key(&vec![1; FjallStorage::MAX_KEY_LEN + 1]).is_err());
        assert!(decode_key(b"").is_err());
        assert!(decode_key(b"\x01a").is_err());
    }
}
