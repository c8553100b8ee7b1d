//! The keyspace catalog, kept by every node.
//!
//! Which keyspaces exist is decided by the cluster's metadata group ([`crate::meta`]); this is
//! every node's copy of the decisions: a map from keyspace name to definition, durable in the
//! node's `meta` table, merged from the group's answers, its leader's broadcasts and periodic
//! gossip (one random peer per interval, so that a node that was down catches up). An entry's
//! version is the metadata log index that created it (0: seeded from the configuration file) or
//! last changed it (`TRIARCH.KEYSPACE HOME`), so merging keeps the higher version and every node
//! ends with the group's decisions.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use triarch_core::KeyspaceConfig;
use triarch_storage::{Storage, StorageError};

/// The storage table holding the catalog.
pub const META_TABLE: &str = "meta";
const ENTRY_PREFIX: &[u8] = b"keyspace/";
/// Format 1 (versions were clock timestamps, before the metadata group) is refused; format 2
/// (before home regions) is read as keyspaces without one; format 3 (before re-placing, no
/// `created`) as keyspaces never re-placed.
const ENTRY_FORMAT_V2: u8 = 2;
const ENTRY_FORMAT_V3: u8 = 3;
const ENTRY_FORMAT_V4: u8 = 4;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub config: KeyspaceConfig,
    /// The metadata log index that created the keyspace (0: seeded from configuration), or
    /// that last re-placed it.
    pub version: u64,
    /// The metadata log index that created the keyspace. `version != created`: the keyspace
    /// was re-placed since, so its group's bootstrap configuration is no longer the one its
    /// placement gives (see [`CatalogEntry::moved`]).
    pub created: u64,
}

impl CatalogEntry {
    /// An entry as a `CREATE` (or the configuration file) makes it.
    pub fn new(config: KeyspaceConfig, version: u64) -> CatalogEntry {
        CatalogEntry {
            config,
            version,
            created: version,
        }
    }

    /// Whether the keyspace was re-placed since it was created.
    pub fn moved(&self) -> bool {
        self.version != self.created
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogMessage {
    /// Entries the receiver should merge (a broadcast create, or periodic gossip of everything).
    Entries(Vec<CatalogEntry>),
    /// The membership as the metadata group decided it (the group leader's broadcast, gossip).
    Membership(crate::meta::Membership),
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

pub(crate) fn encode_entry(entry: &CatalogEntry) -> Vec<u8> {
    postcard::to_extend(entry, vec![ENTRY_FORMAT_V4]).expect("encoding into a Vec cannot fail")
}

/// A keyspace's definition as catalog format 2 and metadata command format 1 stored it: before
/// home regions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct KeyspaceConfigV2 {
    name: String,
    model: triarch_core::Model,
    n: u8,
    r: u8,
    w: u8,
    merge: triarch_core::MergePolicy,
    read: triarch_core::ReadPolicy,
    quorum: triarch_core::QuorumMode,
}

#[cfg(test)]
impl From<&KeyspaceConfig> for KeyspaceConfigV2 {
    fn from(c: &KeyspaceConfig) -> Self {
        KeyspaceConfigV2 {
            name: c.name.clone(),
            model: c.model,
            n: c.n,
            r: c.r,
            w: c.w,
            merge: c.merge,
            read: c.read,
            quorum: c.quorum,
        }
    }
}

impl From<KeyspaceConfigV2> for KeyspaceConfig {
    fn from(v: KeyspaceConfigV2) -> Self {
        KeyspaceConfig {
            name: v.name,
            model: v.model,
            n: v.n,
            r: v.r,
            w: v.w,
            merge: v.merge,
            read: v.read,
            quorum: v.quorum,
            home: None,
        }
    }
}

#[derive(Deserialize)]
struct CatalogEntryV3 {
    config: KeyspaceConfig,
    version: u64,
}

#[derive(Deserialize)]
struct CatalogEntryV2 {
    config: KeyspaceConfigV2,
    version: u64,
}

pub(crate) fn decode_entry(bytes: &[u8]) -> Result<CatalogEntry, StorageError> {
    let corrupt = |e: postcard::Error| StorageError::Engine(format!("corrupt catalog entry: {e}"));
    match bytes.split_first() {
        Some((&ENTRY_FORMAT_V4, rest)) => postcard::from_bytes(rest).map_err(corrupt),
        Some((&ENTRY_FORMAT_V3, rest)) => postcard::from_bytes::<CatalogEntryV3>(rest)
            .map(|old| CatalogEntry::new(old.config, old.version))
            .map_err(corrupt),
        Some((&ENTRY_FORMAT_V2, rest)) => postcard::from_bytes::<CatalogEntryV2>(rest)
            .map(|old| CatalogEntry::new(old.config.into(), old.version))
            .map_err(corrupt),
        Some((&1, _)) => Err(StorageError::Engine(
            "the data directory holds a catalog from before the metadata group (format 1); start from an empty directory".into(),
        )),
        _ => Err(StorageError::Engine(
            "catalog entry has an unknown format".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triarch_storage::SimDisk;

    fn entry(name: &str, n: u8, version: u64) -> CatalogEntry {
        let mut config = KeyspaceConfig::leaderless(name);
        config.n = n;
        CatalogEntry::new(config, version)
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

    /// Entries written before home regions (format 2) still load, as keyspaces without one.
    #[test]
    fn format_2_entries_load_without_a_home_region() {
        let mut pb =
            KeyspaceConfig::with_defaults("balance", triarch_core::Model::PrimaryBackup, 3);
        let old = KeyspaceConfigV2::from(&pb);
        let mut bytes = vec![ENTRY_FORMAT_V2];
        postcard::to_io(&(old, 7u64), &mut bytes).unwrap();
        let entry = decode_entry(&bytes).unwrap();
        assert_eq!(entry, CatalogEntry::new(pb.clone(), 7));
        // Format 3 (before re-placing): an entry never re-placed.
        let mut bytes = vec![ENTRY_FORMAT_V3];
        postcard::to_io(&(pb.clone(), 9u64), &mut bytes).unwrap();
        let entry = decode_entry(&bytes).unwrap();
        assert_eq!(entry, CatalogEntry::new(pb.clone(), 9));
        assert!(!entry.moved());
        pb.home = Some("r2".into());
        let now = CatalogEntry {
            config: pb,
            version: 12,
            created: 8,
        };
        assert!(now.moved());
        assert_eq!(decode_entry(&encode_entry(&now)).unwrap(), now);
        assert!(
            decode_entry(&[1, 0])
                .unwrap_err()
                .to_string()
                .contains("format 1")
        );
    }
}
