//! How a group's durable state is laid out in its storage table (`raft.<group>`).
//!
//! | key | value |
//! |---|---|
//! | `h` | hard state: current term and vote (§5.1, Figure 2 "persistent state") |
//! | `s` | the latest snapshot: index, term, voters, learners, application bytes (§7) |
//! | `e` + index (8 bytes, big-endian) | one log entry: term and data |
//!
//! Every value starts with [`FORMAT_VERSION`]. Big-endian indexes make a key-order scan a
//! log-order scan.
//!
//! ## Versions
//!
//! - 1: configurations were voter sets only.
//! - 2: configurations carry learners too (a snapshot's `learners`, a membership entry's
//!   `learners`). Values written by version 1 are still read, as configurations without
//!   learners; values are always written in the current version.
//!
//! ## Crash consistency
//!
//! The driver syncs once per batch, and a crash may keep any *prefix* of the writes staged since
//! the last sync (`SimDisk::crash_keeping_prefix`, fjall's journal). The writers in
//! [`crate::log`] order their writes so that every prefix recovers to a valid log: truncations
//! delete from the tail down (the log only ever gets shorter), appends write upward (it only
//! gets longer), and a snapshot is written before the entries it covers are deleted (leftover
//! entries at or below the snapshot index are recognised here as stale and removed at the next
//! start). A gap or a term decrease in what remains is corruption, never a crash artefact.

use crate::error::RecoveryError;
use crate::types::{Entry, EntryData, LogIndex, Snapshot, Term};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::BTreeSet;
use triarch_core::NodeId;
use triarch_storage::{Storage, StorageError};

/// The version byte in front of every stored value. Changing the layout means a new version.
pub const FORMAT_VERSION: u8 = 2;
/// The version before learners: still decoded (see the module documentation).
const FORMAT_VERSION_VOTERS_ONLY: u8 = 1;

const HARD_STATE_KEY: &[u8] = b"h";
const SNAPSHOT_KEY: &[u8] = b"s";
const ENTRY_TAG: u8 = b'e';
/// Entries read per scan call during recovery.
const RECOVERY_SCAN_PAGE_ENTRIES: usize = 1024;

/// Figure 2's persistent state besides the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    term: Term,
    data: EntryData,
}

fn entry_key(index: LogIndex) -> [u8; 9] {
    let mut key = [0; 9];
    key[0] = ENTRY_TAG;
    key[1..].copy_from_slice(&index.0.to_be_bytes());
    key
}

/// Version 1's entry data: a membership entry held voters only.
#[derive(Deserialize)]
enum EntryDataV1 {
    Noop,
    Application(bytes::Bytes),
    Membership { voters: BTreeSet<NodeId> },
}

#[derive(Deserialize)]
struct StoredEntryV1 {
    term: Term,
    data: EntryDataV1,
}

/// Version 1's snapshot: no learners.
#[derive(Deserialize)]
struct SnapshotV1 {
    index: LogIndex,
    term: Term,
    voters: BTreeSet<NodeId>,
    data: bytes::Bytes,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![FORMAT_VERSION]).expect("raft records always encode")
}

/// Decodes a value written in the current version as `T`, or in version 1 as `V1` converted by
/// `upgrade`.
fn decode_versioned<T: DeserializeOwned, V1: DeserializeOwned>(
    table: &str,
    key: &[u8],
    bytes: &[u8],
    upgrade: impl FnOnce(V1) -> T,
) -> Result<T, RecoveryError> {
    let undecodable = || RecoveryError::Undecodable {
        table: table.to_string(),
        key: key.to_vec(),
    };
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => postcard::from_bytes(rest).map_err(|_| undecodable()),
        Some((&FORMAT_VERSION_VOTERS_ONLY, rest)) => postcard::from_bytes(rest)
            .map(upgrade)
            .map_err(|_| undecodable()),
        Some((&version, _)) => Err(RecoveryError::UnknownFormat {
            table: table.to_string(),
            version,
        }),
        None => Err(undecodable()),
    }
}

/// For values whose layout did not change between versions.
fn decode<T: DeserializeOwned>(table: &str, key: &[u8], bytes: &[u8]) -> Result<T, RecoveryError> {
    decode_versioned(table, key, bytes, |same: T| same)
}

fn decode_snapshot(table: &str, key: &[u8], bytes: &[u8]) -> Result<Snapshot, RecoveryError> {
    decode_versioned(table, key, bytes, |old: SnapshotV1| Snapshot {
        index: old.index,
        term: old.term,
        voters: old.voters,
        learners: BTreeSet::new(),
        data: old.data,
    })
}

fn decode_entry(table: &str, key: &[u8], bytes: &[u8]) -> Result<StoredEntry, RecoveryError> {
    decode_versioned(table, key, bytes, |old: StoredEntryV1| StoredEntry {
        term: old.term,
        data: match old.data {
            EntryDataV1::Noop => EntryData::Noop,
            EntryDataV1::Application(data) => EntryData::Application(data),
            EntryDataV1::Membership { voters } => EntryData::Membership {
                voters,
                learners: BTreeSet::new(),
            },
        },
    })
}

pub(crate) fn put_hard_state<S: Storage>(
    storage: &mut S,
    table: &str,
    hard_state: HardState,
) -> Result<(), StorageError> {
    storage.put(table, HARD_STATE_KEY, &encode(&hard_state))
}

pub(crate) fn put_entry<S: Storage>(
    storage: &mut S,
    table: &str,
    entry: &Entry,
) -> Result<(), StorageError> {
    let stored = StoredEntry {
        term: entry.term,
        data: entry.data.clone(),
    };
    storage.put(table, &entry_key(entry.index), &encode(&stored))
}

pub(crate) fn delete_entry<S: Storage>(
    storage: &mut S,
    table: &str,
    index: LogIndex,
) -> Result<(), StorageError> {
    storage.delete(table, &entry_key(index))
}

pub(crate) fn put_snapshot<S: Storage>(
    storage: &mut S,
    table: &str,
    snapshot: &Snapshot,
) -> Result<(), StorageError> {
    storage.put(table, SNAPSHOT_KEY, &encode(snapshot))
}

/// What a restart finds in the table.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// The entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Entries at or below the snapshot index left by an interrupted compaction.
    pub stale: Vec<LogIndex>,
}

pub(crate) fn load<S: Storage>(storage: &S, table: &str) -> Result<Recovered, RecoveryError> {
    let hard_state = match storage.get(table, HARD_STATE_KEY)? {
        Some(bytes) => decode(table, HARD_STATE_KEY, &bytes)?,
        None => HardState::default(),
    };
    let snapshot: Option<Snapshot> = match storage.get(table, SNAPSHOT_KEY)? {
        Some(bytes) => Some(decode_snapshot(table, SNAPSHOT_KEY, &bytes)?),
        None => None,
    };
    let (snapshot_index, snapshot_term) = snapshot
        .as_ref()
        .map_or((LogIndex::ZERO, Term::ZERO), |s| (s.index, s.term));
    let mut entries: Vec<Entry> = Vec::new();
    let mut stale = Vec::new();
    let mut from = entry_key(LogIndex::ZERO).to_vec();
    'scan: loop {
        let page = storage.scan(table, &from, RECOVERY_SCAN_PAGE_ENTRIES)?;
        let full = page.len() == RECOVERY_SCAN_PAGE_ENTRIES;
        for (key, value) in &page {
            if key.first() != Some(&ENTRY_TAG) {
                break 'scan;
            }
            let raw: [u8; 8] = key[1..]
                .try_into()
                .map_err(|_| RecoveryError::Undecodable {
                    table: table.to_string(),
                    key: key.clone(),
                })?;
            let index = LogIndex(u64::from_be_bytes(raw));
            let stored = decode_entry(table, key, value)?;
            if index <= snapshot_index {
                stale.push(index);
                continue;
            }
            let expected = entries.last().map_or(snapshot_index, |e| e.index).next();
            if index != expected {
                return Err(RecoveryError::Gap {
                    table: table.to_string(),
                    expected,
                    found: index,
                });
            }
            let previous_term = entries.last().map_or(snapshot_term, |e| e.term);
            if stored.term < previous_term || stored.term > hard_state.term {
                return Err(RecoveryError::TermOutOfOrder {
                    table: table.to_string(),
                    index,
                });
            }
            entries.push(Entry {
                term: stored.term,
                index,
                data: stored.data,
            });
        }
        match page.last() {
            Some((key, _)) if full => {
                from = key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(Recovered {
        hard_state,
        snapshot,
        entries,
        stale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use triarch_storage::SimDisk;

    const T: &str = "raft.g";

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            data: EntryData::Application(Bytes::from(format!("{index}"))),
        }
    }

    #[test]
    fn an_empty_table_recovers_an_empty_log() {
        let r = load(&SimDisk::new(), T).unwrap();
        assert_eq!(r.hard_state, HardState::default());
        assert!(r.snapshot.is_none() && r.entries.is_empty() && r.stale.is_empty());
    }

    #[test]
    fn hard_state_snapshot_and_entries_round_trip_across_many_scan_pages() {
        let mut d = SimDisk::new();
        let hard_state = HardState {
            term: Term(3),
            voted_for: Some(NodeId(2)),
        };
        put_hard_state(&mut d, T, hard_state).unwrap();
        let snapshot = Snapshot {
            index: LogIndex(2),
            term: Term(1),
            voters: [NodeId(1)].into(),
            learners: [NodeId(4)].into(),
            data: Bytes::from_static(b"state"),
        };
        put_snapshot(&mut d, T, &snapshot).unwrap();
        let count = RECOVERY_SCAN_PAGE_ENTRIES as u64 * 2 + 5;
        for i in 1..=count {
            put_entry(&mut d, T, &entry(if i < 100 { 1 } else { 3 }, i)).unwrap();
        }
        d.sync().unwrap();
        let r = load(&d, T).unwrap();
        assert_eq!(r.hard_state, hard_state);
        assert_eq!(r.snapshot, Some(snapshot));
        assert_eq!(r.stale, vec![LogIndex(1), LogIndex(2)]);
        assert_eq!(r.entries.len() as u64, count - 2);
        assert_eq!(r.entries[0], entry(1, 3));
        assert_eq!(r.entries.last().unwrap(), &entry(3, count));
    }

    #[test]
    fn a_gap_or_a_term_decrease_is_reported_as_corruption() {
        let mut d = SimDisk::new();
        put_hard_state(
            &mut d,
            T,
            HardState {
                term: Term(5),
                voted_for: None,
            },
        )
        .unwrap();
        put_entry(&mut d, T, &entry(2, 1)).unwrap();
        put_entry(&mut d, T, &entry(1, 2)).unwrap();
        assert!(matches!(
            load(&d, T),
            Err(RecoveryError::TermOutOfOrder { .. })
        ));
        delete_entry(&mut d, T, LogIndex(2)).unwrap();
        put_entry(&mut d, T, &entry(2, 3)).unwrap();
        assert!(matches!(load(&d, T), Err(RecoveryError::Gap { .. })));
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let mut d = SimDisk::new();
        d.put(T, HARD_STATE_KEY, &[99, 0, 0]).unwrap();
        assert!(matches!(
            load(&d, T),
            Err(RecoveryError::UnknownFormat { version: 99, .. })
        ));
    }

    #[test]
    fn version_1_values_are_read_as_configurations_without_learners() {
        #[derive(Serialize)]
        enum EntryDataV1Out {
            _Noop,
            _Application(Bytes),
            Membership { voters: BTreeSet<NodeId> },
        }
        #[derive(Serialize)]
        struct SnapshotV1Out {
            index: LogIndex,
            term: Term,
            voters: BTreeSet<NodeId>,
            data: Bytes,
        }
        fn v1<V: Serialize>(value: &V) -> Vec<u8> {
            postcard::to_extend(value, vec![1]).unwrap()
        }
        let mut d = SimDisk::new();
        let hard = v1(&HardState {
            term: Term(2),
            voted_for: None,
        });
        d.put(T, HARD_STATE_KEY, &hard).unwrap();
        let voters: BTreeSet<NodeId> = [NodeId(1), NodeId(2)].into();
        let snapshot = SnapshotV1Out {
            index: LogIndex(1),
            term: Term(1),
            voters: voters.clone(),
            data: Bytes::from_static(b"state"),
        };
        d.put(T, SNAPSHOT_KEY, &v1(&snapshot)).unwrap();
        let entry = (
            Term(2),
            EntryDataV1Out::Membership {
                voters: voters.clone(),
            },
        );
        d.put(T, &entry_key(LogIndex(2)), &v1(&entry)).unwrap();
        let r = load(&d, T).unwrap();
        let s = r.snapshot.unwrap();
        assert_eq!(
            (s.index, &s.voters, s.learners.len()),
            (LogIndex(1), &voters, 0)
        );
        assert_eq!(
            r.entries[0].data,
            EntryData::Membership {
                voters,
                learners: BTreeSet::new()
            }
        );
    }
}
