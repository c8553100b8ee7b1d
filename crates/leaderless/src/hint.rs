//! The hint store of hinted handoff (Dynamo §4.6).
//!
//! When a coordinator in a sloppy-quorum keyspace suspects some of a key's preference-list
//! nodes, it sends the write to the next healthy nodes further along the ring (*fallbacks*),
//! each with a hint naming the owner it stands in for. A fallback keeps what it receives here,
//! in its own table ([`HINTS_TABLE`]), never in the owner's data table: it is not a replica of
//! the key, reads never consult hints, and read repair never touches them. It acknowledges
//! only once the hint is staged, so persist-then-send makes the hint durable before the
//! acknowledgement counts towards W. Later, while the owner is not suspected, the fallback
//! sends it the hint ([`crate::message::Message::Handoff`]); once the owner answers that it
//! holds the record durably, the fallback deletes the hint.
//!
//! ## One hint per owner and key
//!
//! Hints are keyed by (owner, keyspace, key), and a second hint for the same owner and key
//! merges into the first: for `lww` keyspaces the newer record wins exactly as at a replica
//! (and an older one is refused with the newer timestamp, so the coordinator re-stamps past
//! it), for the other merge policies the states are joined. Merging is safe because a merged
//! hint is a *whole* state of a replica (the coordinating replica's state after its
//! operation), never a delta: a delta turned into a state would claim that the events below
//! its causal context are dead and delete them at the owner (see [`crate::state`]).
//!
//! ## Bounds
//!
//! Everything has a limit. A hint that would take the store past [`HintConfig::hints_max`]
//! entries or [`HintConfig::hint_bytes_max`] bytes is refused (the fallback answers
//! `HintRefused` and counts it; the coordinator tries the next candidate). A hint not delivered
//! within [`HintConfig::hint_age_max`] of wall-clock time since it was last written is
//! dropped and counted as expired: its owner then catches up only through read repair, as
//! after a Cassandra `max_hint_window`. Ages use the wall clock because hints outlive restarts
//! and the monotonic clock does not; a clock bump can make a hint expire early or late, never
//! make it wrong.
//!
//! ## Deliveries
//!
//! A delivery is named by an operation id of this incarnation and remembers the version of the
//! hint it carried (a counter bumped whenever the hint changes in memory). An acknowledgement
//! deletes the hint only if it has not changed since, so a newer record that arrived during the
//! handoff is delivered next, not deleted unseen. Deliveries are forgotten on restart; the hints
//! are not (they are reloaded from [`HINTS_TABLE`] on the first step after a restart).

use crate::message::OpId;
use crate::record::Record;
use crate::state::State;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use triarch_core::{HlcTimestamp, Instant, NodeId};
use triarch_storage::{Storage, StorageError};

/// The table holding every hint this node keeps for others, across keyspaces.
pub const HINTS_TABLE: &str = "hints";
/// Version of the stored hint encoding.
const HINT_FORMAT_V1: u8 = 1;
/// Entries read per scan while reloading the store after a restart.
const LOAD_PAGE_ENTRIES: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintConfig {
    /// The most hints a node keeps for others (one per owner and key).
    pub hints_max: usize,
    /// The most bytes (stored keys plus values) of hints a node keeps for others.
    pub hint_bytes_max: u64,
    /// A hint not delivered within this long (wall clock, since it was last written) is dropped.
    pub hint_age_max: Duration,
    /// Deliveries in flight per owner; each carries one hint. 0 stops handoff altogether
    /// (only tests want that: hints then pile up until they expire).
    pub handoff_in_flight_max: usize,
}

impl Default for HintConfig {
    fn default() -> Self {
        HintConfig {
            hints_max: 100_000,
            hint_bytes_max: 256 * 1024 * 1024,
            // Cassandra's max_hint_window: long enough for a restart or a short outage.
            hint_age_max: Duration::from_secs(3 * 60 * 60),
            handoff_in_flight_max: 16,
        }
    }
}

/// Whom a hint is for and which key it holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HintKey {
    pub owner: NodeId,
    pub keyspace: String,
    pub key: Bytes,
}

impl HintKey {
    /// The smallest key of `owner`'s hints (for range scans of the index).
    fn first_of(owner: NodeId) -> HintKey {
        HintKey {
            owner,
            keyspace: String::new(),
            key: Bytes::new(),
        }
    }

    /// Owner (4 bytes, big-endian), keyspace name length (1 byte), name, key: hints of one
    /// owner are contiguous in the table.
    fn encode(&self) -> Vec<u8> {
        let name = self.keyspace.as_bytes();
        let len = u8::try_from(name.len()).expect("keyspace names are at most 64 bytes");
        let mut out = Vec::with_capacity(5 + name.len() + self.key.len());
        out.extend_from_slice(&self.owner.0.to_be_bytes());
        out.push(len);
        out.extend_from_slice(name);
        out.extend_from_slice(&self.key);
        out
    }

    fn decode(bytes: &[u8]) -> Option<HintKey> {
        let owner = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
        let len = usize::from(*bytes.get(4)?);
        let name = bytes.get(5..5 + len)?;
        Some(HintKey {
            owner: NodeId(owner),
            keyspace: std::str::from_utf8(name).ok()?.to_string(),
            key: Bytes::copy_from_slice(&bytes[5 + len..]),
        })
    }
}

/// What a hint holds: an LWW record, or a whole state of a keyspace of another merge policy.
/// Anti-entropy ships stored values in the same form ([`crate::anti_entropy`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HintPayload {
    Record(Record),
    State(State),
}

impl HintPayload {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            HintPayload::Record(r) => r.encode(),
            HintPayload::State(s) => s.encode(),
        }
    }

    fn decode(bytes: &[u8]) -> Result<HintPayload, String> {
        if State::is_state_encoding(bytes) {
            State::decode(bytes)
                .map(HintPayload::State)
                .map_err(|e| e.to_string())
        } else {
            Record::decode(bytes)
                .map(HintPayload::Record)
                .map_err(|e| e.to_string())
        }
    }
}

/// A hint as stored: when it was last written (wall clock) and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHint {
    pub hint: HintKey,
    pub written_wall_ms: u64,
    pub payload: HintPayload,
}

fn encode_value(written_wall_ms: u64, payload: &HintPayload) -> Vec<u8> {
    let body = payload.encode();
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(HINT_FORMAT_V1);
    out.extend_from_slice(&written_wall_ms.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode_value(bytes: &[u8]) -> Result<(u64, HintPayload), String> {
    match bytes.split_first() {
        Some((&HINT_FORMAT_V1, rest)) if rest.len() >= 8 => {
            let wall = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            Ok((wall, HintPayload::decode(&rest[8..])?))
        }
        Some((&HINT_FORMAT_V1, _)) => Err("truncated hint".into()),
        Some((&v, _)) => Err(format!("hint has unknown format version {v}")),
        None => Err("empty hint".into()),
    }
}

/// Every hint stored in `storage` (for the simulator's checks and for tests; the engine keeps
/// its own index). Undecodable entries are reported as errors.
pub fn stored_hints<S: Storage>(storage: &S) -> Result<Vec<StoredHint>, StorageError> {
    let mut out = Vec::new();
    let mut from = Vec::new();
    loop {
        let page = storage.scan(HINTS_TABLE, &from, LOAD_PAGE_ENTRIES)?;
        let full = page.len() == LOAD_PAGE_ENTRIES;
        for (k, v) in page {
            let hint = HintKey::decode(&k)
                .ok_or_else(|| StorageError::Engine(format!("corrupt hint key {k:?}")))?;
            let (written_wall_ms, payload) = decode_value(&v).map_err(StorageError::Engine)?;
            out.push(StoredHint {
                hint,
                written_wall_ms,
                payload,
            });
            from = k;
            from.push(0);
        }
        if !full {
            return Ok(out);
        }
    }
}

/// What storing a hint did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Stored (or already held). `existed`: the hint held a live value before.
    Accepted { existed: bool },
    /// An `lww` hint holds a newer record (timestamp `current`): refused, like at a replica.
    Older {
        current: HlcTimestamp,
        existed: bool,
    },
    /// The store is full, or the hint alone is larger than the store: nothing stored.
    Refused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    /// Stored key plus value bytes.
    bytes: u64,
    written_wall_ms: u64,
    /// Bumped whenever the hint changes (in this incarnation).
    version: u64,
}

#[derive(Clone, Debug)]
struct Delivery {
    hint: HintKey,
    version: u64,
    /// Unanswered by then, the delivery is forgotten and the hint sent again.
    deadline: Instant,
}

/// What an acknowledged delivery means for its hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// The owner holds what the hint held: delete it.
    Complete(HintKey),
    /// The hint changed during the handoff: keep it, deliver again.
    Changed,
    /// Not a delivery of this incarnation (a duplicate, or sent before a restart).
    Unknown,
}

/// The in-memory index of a node's hints, and the deliveries in flight.
#[derive(Debug)]
pub struct HintStore {
    config: HintConfig,
    loaded: bool,
    index: BTreeMap<HintKey, Meta>,
    by_age: BTreeSet<(u64, HintKey)>,
    bytes: u64,
    next_version: u64,
    pending_by_keyspace: BTreeMap<String, u64>,
    in_flight: BTreeMap<OpId, Delivery>,
    in_flight_by_hint: BTreeMap<HintKey, OpId>,
}

/// How full a node's hint store is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintStoreUsage {
    pub hints: u64,
    pub bytes: u64,
    pub deliveries_in_flight: u64,
}

impl HintStore {
    pub fn new(config: HintConfig) -> Self {
        HintStore {
            config,
            loaded: false,
            index: BTreeMap::new(),
            by_age: BTreeSet::new(),
            bytes: 0,
            next_version: 1,
            pending_by_keyspace: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            in_flight_by_hint: BTreeMap::new(),
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Rebuilds the index from [`HINTS_TABLE`] (after a restart). Undecodable entries are logged
    /// and left alone: they count against the limits, and are never delivered.
    pub fn load<S: Storage>(&mut self, storage: &S) -> Result<(), StorageError> {
        assert!(
            self.index.is_empty(),
            "loaded once, before any hint is stored"
        );
        let mut from = Vec::new();
        loop {
            let page = storage.scan(HINTS_TABLE, &from, LOAD_PAGE_ENTRIES)?;
            let full = page.len() == LOAD_PAGE_ENTRIES;
            for (k, v) in page {
                match (HintKey::decode(&k), decode_value(&v)) {
                    (Some(hint), Ok((written_wall_ms, _))) => {
                        let bytes = (k.len() + v.len()) as u64;
                        self.insert_meta(hint, bytes, written_wall_ms);
                    }
                    (_, Err(e)) => tracing::error!(error = e, "undecodable hint left in place"),
                    (None, _) => tracing::error!("undecodable hint key left in place"),
                }
                from = k;
                from.push(0);
            }
            if !full {
                break;
            }
        }
        self.loaded = true;
        if !self.index.is_empty() {
            tracing::info!(
                hints = self.index.len(),
                bytes = self.bytes,
                "hints reloaded"
            );
        }
        Ok(())
    }

    pub fn usage(&self) -> HintStoreUsage {
        HintStoreUsage {
            hints: self.index.len() as u64,
            bytes: self.bytes,
            deliveries_in_flight: self.in_flight.len() as u64,
        }
    }

    /// Hints held for owners in `keyspace`.
    pub fn pending(&self, keyspace: &str) -> u64 {
        self.pending_by_keyspace.get(keyspace).copied().unwrap_or(0)
    }

    /// Hints held, per keyspace (keyspaces with none are absent).
    pub fn pending_by_keyspace(&self) -> &BTreeMap<String, u64> {
        &self.pending_by_keyspace
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn insert_meta(&mut self, hint: HintKey, bytes: u64, written_wall_ms: u64) {
        let version = self.next_version;
        self.next_version += 1;
        let meta = Meta {
            bytes,
            written_wall_ms,
            version,
        };
        match self.index.insert(hint.clone(), meta) {
            Some(old) => {
                self.bytes -= old.bytes;
                self.by_age.remove(&(old.written_wall_ms, hint.clone()));
            }
            None => {
                *self
                    .pending_by_keyspace
                    .entry(hint.keyspace.clone())
                    .or_default() += 1
            }
        }
        self.bytes += bytes;
        self.by_age.insert((written_wall_ms, hint));
    }

    /// Stages `payload` as the hint `hint` if it fits.
    fn put<S: Storage>(
        &mut self,
        storage: &mut S,
        hint: &HintKey,
        payload: &HintPayload,
        wall_ms: u64,
    ) -> Result<bool, StorageError> {
        let key = hint.encode();
        let value = encode_value(wall_ms, payload);
        let size = (key.len() + value.len()) as u64;
        let old = self.index.get(hint).map_or(0, |m| m.bytes);
        let count_after = self.index.len() + usize::from(!self.index.contains_key(hint));
        if count_after > self.config.hints_max
            || self.bytes - old + size > self.config.hint_bytes_max
        {
            return Ok(false);
        }
        storage.put(HINTS_TABLE, &key, &value)?;
        self.insert_meta(hint.clone(), size, wall_ms);
        Ok(true)
    }

    /// The hint's payload as stored.
    pub fn get<S: Storage>(
        &self,
        storage: &S,
        hint: &HintKey,
    ) -> Result<Option<HintPayload>, StorageError> {
        if !self.index.contains_key(hint) {
            return Ok(None);
        }
        match storage.get(HINTS_TABLE, &hint.encode())? {
            None => Ok(None),
            Some(v) => decode_value(&v)
                .map(|(_, payload)| Some(payload))
                .map_err(StorageError::Engine),
        }
    }

    /// Keeps `record` for `hint.owner`, last-writer-wins against the hint already held.
    pub fn store_record<S: Storage>(
        &mut self,
        storage: &mut S,
        hint: &HintKey,
        record: &Record,
        wall_ms: u64,
    ) -> Result<Stored, StorageError> {
        let existing = match self.get(storage, hint)? {
            Some(HintPayload::Record(r)) => Some(r),
            Some(HintPayload::State(_)) => {
                tracing::warn!(
                    keyspace = hint.keyspace,
                    "lww hint over a merged-state hint"
                );
                return Ok(Stored::Refused);
            }
            None => None,
        };
        let existed = existing.as_ref().is_some_and(|e| e.value.is_some());
        match existing {
            Some(e) if e.timestamp == record.timestamp && e.value == record.value => {
                return Ok(Stored::Accepted { existed });
            }
            Some(e) if e.timestamp >= record.timestamp => {
                return Ok(Stored::Older {
                    current: e.timestamp,
                    existed,
                });
            }
            _ => {}
        }
        let payload = HintPayload::Record(record.clone());
        Ok(if self.put(storage, hint, &payload, wall_ms)? {
            Stored::Accepted { existed }
        } else {
            Stored::Refused
        })
    }

    /// Joins `state` into the hint for `hint.owner`.
    pub fn store_state<S: Storage>(
        &mut self,
        storage: &mut S,
        hint: &HintKey,
        state: &State,
        wall_ms: u64,
    ) -> Result<Stored, StorageError> {
        let merged = match self.get(storage, hint)? {
            Some(HintPayload::State(held)) => {
                let mut merged = held.clone();
                if merged.merge(state).is_err() {
                    tracing::warn!(keyspace = hint.keyspace, "hint of another merge policy");
                    return Ok(Stored::Refused);
                }
                if merged == held {
                    // Nothing new (a duplicate): already held.
                    return Ok(Stored::Accepted { existed: true });
                }
                merged
            }
            Some(HintPayload::Record(_)) => {
                tracing::warn!(
                    keyspace = hint.keyspace,
                    "merged-state hint over an lww hint"
                );
                return Ok(Stored::Refused);
            }
            None => state.clone(),
        };
        let existed = self.index.contains_key(hint);
        let payload = HintPayload::State(merged);
        Ok(if self.put(storage, hint, &payload, wall_ms)? {
            Stored::Accepted { existed }
        } else {
            Stored::Refused
        })
    }

    /// Stages the deletion of `hint`.
    pub fn remove<S: Storage>(
        &mut self,
        storage: &mut S,
        hint: &HintKey,
    ) -> Result<(), StorageError> {
        let Some(meta) = self.index.get(hint).copied() else {
            return Ok(());
        };
        storage.delete(HINTS_TABLE, &hint.encode())?;
        self.index.remove(hint);
        self.bytes -= meta.bytes;
        self.by_age.remove(&(meta.written_wall_ms, hint.clone()));
        let pending = self
            .pending_by_keyspace
            .get_mut(&hint.keyspace)
            .expect("counted on insert");
        *pending -= 1;
        if *pending == 0 {
            self.pending_by_keyspace.remove(&hint.keyspace);
        }
        if let Some(op) = self.in_flight_by_hint.remove(hint) {
            self.in_flight.remove(&op);
        }
        Ok(())
    }

    /// Hints written more than the age limit before `wall_ms`, oldest first.
    pub fn expired(&self, wall_ms: u64) -> Vec<HintKey> {
        let age_max = self.config.hint_age_max.as_millis() as u64;
        self.by_age
            .iter()
            .take_while(|(written, _)| written.saturating_add(age_max) <= wall_ms)
            .map(|(_, hint)| hint.clone())
            .collect()
    }

    /// Forgets deliveries whose deadline has passed (unanswered: they will be sent again).
    pub fn forget_expired_deliveries(&mut self, now: Instant) {
        let stale: Vec<OpId> = self
            .in_flight
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(op, _)| *op)
            .collect();
        for op in stale {
            let d = self.in_flight.remove(&op).expect("listed above");
            self.in_flight_by_hint.remove(&d.hint);
        }
    }

    /// Every hint held, in key order (bounded by `hints_max`).
    pub fn keys(&self) -> Vec<HintKey> {
        self.index.keys().cloned().collect()
    }

    /// Up to `limit` hints held after `after` (from the first if `None`), in key order.
    pub fn keys_after(&self, after: Option<&HintKey>, limit: usize) -> Vec<HintKey> {
        use std::ops::Bound;
        let from = match after {
            Some(h) => Bound::Excluded(h.clone()),
            None => Bound::Unbounded,
        };
        self.index
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Owners this node holds hints for (one index seek per owner).
    pub fn owners(&self) -> Vec<NodeId> {
        let mut owners = Vec::new();
        let mut from = HintKey::first_of(NodeId(0));
        while let Some((hint, _)) = self.index.range(from..).next() {
            owners.push(hint.owner);
            match hint.owner.0.checked_add(1) {
                Some(next) => from = HintKey::first_of(NodeId(next)),
                None => break,
            }
        }
        owners
    }

    /// Hints for `owner` not being delivered, as many as may be sent now.
    pub fn due(&self, owner: NodeId) -> Vec<HintKey> {
        let in_flight = self
            .in_flight
            .values()
            .filter(|d| d.hint.owner == owner)
            .count();
        let room = self.config.handoff_in_flight_max.saturating_sub(in_flight);
        if room == 0 {
            return Vec::new();
        }
        self.index
            .range(HintKey::first_of(owner)..)
            .map(|(h, _)| h)
            .take_while(|h| h.owner == owner)
            .filter(|h| !self.in_flight_by_hint.contains_key(*h))
            .take(room)
            .cloned()
            .collect()
    }

    /// Remembers that `op` carries `hint` in its current version, until `deadline`.
    pub fn delivering(&mut self, op: OpId, hint: HintKey, deadline: Instant) {
        let version = self.index.get(&hint).expect("a held hint").version;
        assert!(self.in_flight_by_hint.insert(hint.clone(), op).is_none());
        self.in_flight.insert(
            op,
            Delivery {
                hint,
                version,
                deadline,
            },
        );
    }

    /// The owner acknowledged delivery `op`.
    pub fn acknowledged(&mut self, op: OpId, from: NodeId) -> Delivered {
        let Some(d) = self.in_flight.get(&op) else {
            return Delivered::Unknown;
        };
        if d.hint.owner != from {
            return Delivered::Unknown;
        }
        let d = self.in_flight.remove(&op).expect("looked up above");
        self.in_flight_by_hint.remove(&d.hint);
        match self.index.get(&d.hint) {
            Some(meta) if meta.version == d.version => Delivered::Complete(d.hint),
            _ => Delivered::Changed,
        }
    }

    pub fn check_invariants(&self) {
        assert_eq!(self.index.len(), self.by_age.len());
        assert_eq!(
            self.bytes,
            self.index.values().map(|m| m.bytes).sum::<u64>(),
            "byte count"
        );
        assert_eq!(
            self.pending_by_keyspace.values().sum::<u64>(),
            self.index.len() as u64
        );
        assert_eq!(self.in_flight.len(), self.in_flight_by_hint.len());
        for (op, d) in &self.in_flight {
            assert_eq!(self.in_flight_by_hint.get(&d.hint), Some(op));
            assert!(
                self.index.contains_key(&d.hint),
                "a delivery of a held hint"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triarch_storage::SimDisk;

    fn hint(owner: u32, key: &str) -> HintKey {
        HintKey {
            owner: NodeId(owner),
            keyspace: "prefs".into(),
            key: Bytes::copy_from_slice(key.as_bytes()),
        }
    }

    fn record(wall_ms: u64, value: &str) -> Record {
        Record {
            timestamp: HlcTimestamp {
                wall_ms,
                logical: 0,
                node: NodeId(1),
            },
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
        }
    }

    #[test]
    fn keys_and_values_round_trip() {
        let h = hint(7, "a:b\0c");
        assert_eq!(HintKey::decode(&h.encode()), Some(h));
        assert_eq!(HintKey::decode(&[0, 0, 0, 1, 9, b'x']), None);
        let p = HintPayload::Record(record(5, "v"));
        assert_eq!(decode_value(&encode_value(42, &p)).unwrap(), (42, p));
        assert!(decode_value(&[]).is_err());
        assert!(decode_value(&[1, 0]).is_err());
        assert!(decode_value(&[2; 12]).is_err());
    }

    #[test]
    fn newer_records_replace_older_ones_are_refused_and_limits_hold() {
        let mut disk = SimDisk::new();
        let config = HintConfig {
            hints_max: 2,
            ..HintConfig::default()
        };
        let mut store = HintStore::new(config);
        store.load(&disk).unwrap();
        let a = hint(2, "a");
        assert_eq!(
            store
                .store_record(&mut disk, &a, &record(10, "1"), 0)
                .unwrap(),
            Stored::Accepted { existed: false }
        );
        assert_eq!(
            store
                .store_record(&mut disk, &a, &record(20, "2"), 0)
                .unwrap(),
            Stored::Accepted { existed: true }
        );
        let Stored::Older { current, .. } = store
            .store_record(&mut disk, &a, &record(15, "x"), 0)
            .unwrap()
        else {
            panic!("older refused")
        };
        assert_eq!(current.wall_ms, 20);
        store
            .store_record(&mut disk, &hint(3, "b"), &record(1, "1"), 0)
            .unwrap();
        assert_eq!(
            store
                .store_record(&mut disk, &hint(3, "c"), &record(1, "1"), 0)
                .unwrap(),
            Stored::Refused,
            "a third hint does not fit"
        );
        assert_eq!(store.usage().hints, 2);
        assert_eq!(store.pending("prefs"), 2);
        assert_eq!(store.owners(), vec![NodeId(2), NodeId(3)]);
        store.check_invariants();
        // Reloaded after a crash, the index is the same.
        disk.sync().unwrap();
        let mut again = HintStore::new(HintConfig::default());
        again.load(&disk).unwrap();
        assert_eq!(again.usage(), store.usage());
        assert_eq!(stored_hints(&disk).unwrap().len(), 2);
    }

    #[test]
    fn a_delivery_deletes_only_the_version_it_carried() {
        let mut disk = SimDisk::new();
        let mut store = HintStore::new(HintConfig::default());
        let a = hint(2, "a");
        store
            .store_record(&mut disk, &a, &record(10, "1"), 0)
            .unwrap();
        assert_eq!(store.due(NodeId(2)), vec![a.clone()]);
        store.delivering(OpId(1), a.clone(), Instant::ZERO);
        assert!(store.due(NodeId(2)).is_empty(), "in flight");
        store
            .store_record(&mut disk, &a, &record(20, "2"), 0)
            .unwrap();
        assert_eq!(store.acknowledged(OpId(1), NodeId(3)), Delivered::Unknown);
        assert_eq!(store.acknowledged(OpId(1), NodeId(2)), Delivered::Changed);
        store.delivering(OpId(2), a.clone(), Instant::ZERO);
        assert_eq!(
            store.acknowledged(OpId(2), NodeId(2)),
            Delivered::Complete(a.clone())
        );
        store.remove(&mut disk, &a).unwrap();
        assert_eq!(store.usage(), HintStoreUsage::default());
        assert!(store.expired(u64::MAX).is_empty());
        store.check_invariants();
    }

    #[test]
    fn hints_expire_by_wall_clock_age() {
        let mut disk = SimDisk::new();
        let mut store = HintStore::new(HintConfig {
            hint_age_max: Duration::from_secs(10),
            ..HintConfig::default()
        });
        store
            .store_record(&mut disk, &hint(2, "a"), &record(1, "1"), 1_000)
            .unwrap();
        store
            .store_record(&mut disk, &hint(2, "b"), &record(1, "1"), 5_000)
            .unwrap();
        assert!(store.expired(10_999).is_empty());
        assert_eq!(store.expired(11_000), vec![hint(2, "a")]);
        assert_eq!(store.expired(15_000).len(), 2);
    }
}
