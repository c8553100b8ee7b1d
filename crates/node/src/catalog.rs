//! The keyspace catalog, replicated to every node.
//!
//! For now the catalog is a last-writer-wins map from keyspace name to definition, versioned by
//! hybrid logical clock: a `CREATE` is applied locally, made durable, broadcast to every member,
//! and gossiped periodically (one random peer per interval) so that a node that was down catches
//! up. Two concurrent `CREATE`s of one name with different settings resolve to the later one;
//! moving the catalog onto consensus (the primary-backup work) removes that race.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use triarch_core::{HlcTimestamp, KeyspaceConfig};
use triarch_storage::{Storage, StorageError};

/// The storage table holding the catalog.
pub const META_TABLE: &str = "meta";
const ENTRY_PREFIX: &[u8] = b"keyspace/";
const ENTRY_FORMAT_V1: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub config: KeyspaceConfig,
    pub version: HlcTimestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogMessage {
    /// Entries the receiver should merge (a broadcast create, or periodic gossip of everything).
    Entries(Vec<CatalogEntry>),
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    entries: BTreeMap<String, CatalogEntry>,
}

impl Catalog {
    /// Loads every durable entry.
    pub fn load<S: Storage>(storage: &S) -> Result<Catalog, StorageError> {
        let mut entries = BTreeMap::new();
        let mut from = ENTRY_PREFIX.to_vec();
        loop {
            let batch = storage.scan(META_TABLE, &from, 256)?;
            let done = batch.len() < 256;
            for (key, value) in &batch {
                if !key.starts_with(ENTRY_PREFIX) {
                    return Ok(Catalog { entries });
                }
                let entry = decode_entry(value)?;
                entries.insert(entry.config.name.clone(), entry);
            }
            match batch.last() {
                Some((last, _)) if !done => {
                    from = last.clone();
                    from.push(0);
                }
                _ => return Ok(Catalog { entries }),
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&KeyspaceConfig> {
        self.entries.get(name).map(|e| &e.config)
    }

    pub fn entries(&self) -> impl Iterator<Item = &CatalogEntry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Merges `entry` if it is new or newer than ours, staging it durably. Returns whether it
    /// changed the catalog.
    pub fn merge<S: Storage>(
        &mut self,
        storage: &mut S,
        entry: CatalogEntry,
    ) -> Result<bool, StorageError> {
        if let Some(ours) = self.entries.get(&entry.config.name)
            && ours.version >= entry.version
        {
            return Ok(false);
        }
        let mut key = ENTRY_PREFIX.to_vec();
        key.extend_from_slice(entry.config.name.as_bytes());
        storage.put(META_TABLE, &key, &encode_entry(&entry))?;
        self.entries.insert(entry.config.name.clone(), entry);
        Ok(true)
    }
}

fn encode_entry(entry: &CatalogEntry) -> Vec<u8> {
    postcard::to_extend(entry, vec![ENTRY_FORMAT_V1]).expect("encoding into a Vec cannot fail")
}

fn decode_entry(bytes: &[u8]) -> Result<CatalogEntry, StorageError> {
    match bytes.split_first() {
        Some((&ENTRY_FORMAT_V1, rest)) => postcard::from_bytes(rest)
            .map_err(|e| StorageError::Engine(format!("corrupt catalog entry: {e}"))),
        _ => Err(StorageError::Engine(
            "catalog entry has an unknown format".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triarch_core::NodeId;
    use triarch_storage::SimDisk;

    fn entry(name: &str, n: u8, wall_ms: u64) -> CatalogEntry {
        let mut config = KeyspaceConfig::leaderless(name);
        config.n = n;
        CatalogEntry {
            config,
            version: HlcTimestamp {
                wall_ms,
                logical: 0,
                node: NodeId(1),
            },
        }
    }

    #[test]
    fn newer_entries_win_older_ones_are_ignored_and_everything_reloads() {
        let mut disk = SimDisk::new();
        let mut c = Catalog::default();
        assert!(c.merge(&mut disk, entry("a", 3, 10)).unwrap());
        assert!(!c.merge(&mut disk, entry("a", 1, 5)).unwrap());
        assert!(c.merge(&mut disk, entry("a", 2, 20)).unwrap());
        for i in 0..300 {
            c.merge(&mut disk, entry(&format!("k{i}"), 1, 1)).unwrap();
        }
        disk.sync().unwrap();
        disk.crash();
        let reloaded = Catalog::load(&disk).unwrap();
        assert_eq!(reloaded.get("a").unwrap().n, 2);
        assert_eq!(reloaded.len(), 301);
    }
}
