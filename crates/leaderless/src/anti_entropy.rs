//! Anti-entropy: replicas that missed writes converge without any read touching the keys
//! (Dynamo §4.7, Riak's active anti-entropy, Cassandra's repair).
//!
//! ## Ranges and trees
//!
//! A *range* of a keyspace is every key whose preference list is one given set of N nodes
//! ([`ReplicaSets`]): the union of the ring arcs with that replica set. Exactly those N nodes
//! hold its keys, so they are the ones that compare it. Each node keeps, per keyspace, an index
//! of the keys in its data table (ring position and key -> [`merkle::entry_hash`] of the stored
//! bytes) and one [`MerkleTree`] per range it holds keys of, updated on every write to the data
//! table whatever the write path (client writes, merges, read repair, hinted handoff,
//! anti-entropy itself): every such write goes through `Leaderless::put_data`, which stages the
//! write and updates the index and tree in the same step. LWW records and CRDT states are
//! hashed alike, by their stored bytes (both encodings are canonical, so equal values hash
//! equal).
//!
//! ## Rebuilt at start, not persisted
//!
//! The index and the trees live in memory and are rebuilt by scanning each keyspace's data table
//! after a restart (a bounded number of keys per maintenance step, [`AntiEntropyConfig`]
//! `build_keys_per_step`; a keyspace takes part in exchanges only once its scan is complete;
//! writes during the scan update the index only for keys the scan has passed). A persisted tree
//! would be a second copy of the data's state that a crash can tear from the data itself:
//! the simulator's disk keeps an arbitrary prefix of the unsynced writes, and a tree that said
//! a key holds what the disk lost would hide exactly the difference anti-entropy exists to find.
//! Rebuilding makes the data table the only truth, costs no write amplification, and costs one
//! sequential scan per restart. What is persisted is only the list of keyspaces that have data
//! here, with their N ([`ANTI_ENTROPY_TABLE`]), staged before a keyspace's first write, so that
//! a restarted node knows which tables to scan.
//!
//! ## Exchanges
//!
//! Every `exchange_interval`, each node compares each of its ranges with each other replica of
//! the range (both sides initiate, so a range is compared even while one side knows nothing of
//! the keyspace). One comparison, an *exchange*, goes:
//!
//! 1. `TreeHashes` (level 0: my root) -> the peer answers `TreeDiff` with the nodes whose hash
//!    differs from its own. Equal roots: the range is in sync, done (one small round trip).
//! 2. The initiator sends the hashes of the children of the differing nodes, level by level,
//!    down to the leaves (three more round trips at most).
//! 3. For the differing leaves, the initiator lists its keys with their entry hashes
//!    (`KeyHashes`, at most `keys_per_message_max` per message; a leaf holding more is done in
//!    pages). The peer answers `KeyDiff`: its values of the keys whose hash differs or that the
//!    initiator lacks (`push`), and the keys it lacks or holds differently (`pull`), up to
//!    `keys_per_message_max` keys and `value_bytes_per_message_max` bytes of values, saying how
//!    far through the page it got.
//! 4. The initiator merges what was pushed, then sends its own values of the pulled keys
//!    (`KeyValues`, merged first, so that both end with the join), which the peer merges.
//!
//! Merging uses the rules of every other path: last-writer-wins by timestamp for records (with
//! the same refusal of a different record under a timestamp already held), the CRDT join for
//! states. So one exchange brings both sides to the same value of every key of the range.
//!
//! ## Bounded
//!
//! At most `exchanges_in_flight_max` exchanges run at once per node; each (keyspace, range, peer)
//! is compared at most once per `exchange_interval`; messages carry at most
//! `keys_per_message_max` keys; an exchange that hears nothing for `exchange_timeout` is
//! abandoned. A range in sync costs one round trip of a few dozen bytes and O(1) work on each
//! side, whatever the number of keys; suspected peers are skipped.
//!
//! ## Durability
//!
//! A repaired value is written like any other replica write: staged, and so durable before
//! anything of the batch leaves (persist-then-send). The requests (`TreeHashes`, `KeyHashes`)
//! vouch for nothing and may leave before the batch's sync; every answer and every message
//! carrying values waits for it (`Message::may_precede_sync` in the node): a CRDT state may
//! carry dots issued from state staged in this very batch.
//!
//! ## Which keyspaces, and their N
//!
//! The engine learns a keyspace's N from every request it coordinates (the node passes the
//! keyspace's configuration), from forwarded operations, from [`Leaderless::observe_keyspace`]
//! (the node's catalog) and from peers' exchanges (which name N); a peer's N never overrides
//! one learned locally. Until N is known a keyspace's keys are indexed but not compared.
//!
//! ## Tombstones: collected once every replica holds them
//!
//! An LWW delete is a tombstone record, and a tombstone kept forever costs a key's worth of
//! space forever. Dropping it too early resurrects the value it deleted: a replica that missed
//! the delete still holds the value, and with the tombstone gone nothing orders the value
//! before the delete, so read repair or anti-entropy copies it back everywhere. Cassandra's
//! answer is a wall-clock grace period, which is right only if every replica was repaired
//! within it. Here collection waits for evidence instead:
//!
//! 1. **Confirmed.** Only the initiator of an exchange learns anything, from answers that
//!    waited for the peer's sync: a subtree the peer found equal (the sums match, so the peer
//!    holds exactly what this node holds there, tombstones included), or a key it listed that
//!    the peer decided nothing about. Either confirms the peer durably holds each tombstone
//!    there, if nothing changed here since the hashes left. A tombstone confirmed by every
//!    other replica of its range is *confirmed*. A restart forgets confirmations (they live in
//!    memory), so confirming starts again; the tombstone is still on disk.
//! 2. **Then a grace period** (`tombstone_grace`, monotonic time on this node, never shorter
//!    than the hint age limit): every replica holds the tombstone, so a live older value can
//!    come back only from something already in flight that carries one: a coordinator's write
//!    stamped before the delete, a read repair of a read that began before it, an exchange's
//!    values, a hint for a replica (hints live up to the hint age limit). The grace outlasts
//!    them all. A clock bump cannot shorten it: it is not measured on the wall clock.
//! 3. **Collected**: the data table entry is deleted (staged like any write) if it is still
//!    that tombstone, and the node *remembers* it (key and timestamp, in memory). A remembered
//!    tombstone orders writes as if it were held (an older write is refused, the coordinator
//!    re-stamps past it), counts as held when a peer lists it (so the peers, collecting on
//!    their own schedule, are confirmed rather than handed it back), and is forgotten once
//!    exchanges have shown that no other replica holds it any more, or after
//!    `tombstone_memory` at most. A tombstone handed back after that (or after a restart) is
//!    stored again and collected again: a tombstone, never a value.
//!
//! A replica that is down or cut off cannot confirm, so nothing it might hold an older value
//! of is collected meanwhile; the simulator's `tests/tombstones.rs` checks that no deleted
//! value comes back, and catches a planted bug that collects on the timer alone. CRDT removes
//! need none of this: their causal contexts already say what they removed.

use crate::hint::HintPayload;
use crate::merkle::{self, LEAF_LEVEL, MerkleTree};
use crate::message::{Message, OpId};
use crate::record::Record;
use crate::ring::{ReplicaSets, Ring};
use crate::state::{State, Update};
use crate::{Env, Leaderless, table_name};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::time::Duration;
use triarch_core::{HlcTimestamp, Instant, KeyspaceConfig, Model, NodeId};
use triarch_storage::{Storage, StorageError};

/// The table listing the keyspaces that have data on this node, with their N (0: unknown).
pub const ANTI_ENTROPY_TABLE: &str = "anti_entropy";
const REGISTRY_FORMAT_V1: u8 = 1;
/// Registry entries read per scan while loading it.
const REGISTRY_PAGE_ENTRIES: usize = 256;
/// Collected tombstones a node remembers at most (beyond, the oldest are forgotten early: a
/// peer that still holds one then hands it back, and it is collected again).
const COLLECTED_REMEMBERED_MAX: usize = 1_000_000;
/// An index this small is checked against its trees entry by entry in `check_invariants`.
const INVARIANT_ENTRIES_MAX: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AntiEntropyConfig {
    /// Whether this node keeps trees and compares them. Off, the engine behaves exactly as
    /// before anti-entropy existed (no registry, no index, no messages).
    pub enabled: bool,
    /// Each (keyspace, range, peer) is compared at most once per interval.
    pub exchange_interval: Duration,
    /// Exchanges this node initiates that may be in flight at once.
    pub exchanges_in_flight_max: usize,
    /// Keys listed (`KeyHashes`), or decided on (`KeyDiff`), per message.
    pub keys_per_message_max: usize,
    /// Bytes of stored values per message (`KeyDiff`, `KeyValues`); a single larger value still
    /// goes, alone.
    pub value_bytes_per_message_max: usize,
    /// An exchange whose peer stays silent this long is abandoned (compared again next
    /// interval), freeing its slot among `exchanges_in_flight_max`.
    pub exchange_timeout: Duration,
    /// Keys scanned per keyspace per maintenance step while rebuilding the index after a start.
    pub build_keys_per_step: usize,
    /// Whether LWW tombstones are collected once anti-entropy has confirmed that every replica
    /// holds them (see the module documentation).
    pub tombstone_collection: bool,
    /// How long after the last replica confirmed a tombstone it is kept still (monotonic time):
    /// longer than anything carrying an older write of the key can still be in flight (a
    /// coordinator's write, a read repair, an exchange's values). Never shorter than the hint
    /// age limit, whatever this says: a fallback may hold an older write that long.
    pub tombstone_grace: Duration,
    /// A node remembers a tombstone it collected until exchanges have shown that no other
    /// replica holds it any more (they collect on their own schedule), so that it recognises
    /// the tombstone in its peers instead of taking it back, and refuses older writes of the
    /// key meanwhile; but never longer than this (a replica that stays away that long hands
    /// the tombstone back on its return, and it is collected again).
    pub tombstone_memory: Duration,
    /// PLANTED BUG for checker tests: tombstones are collected `tombstone_grace` after they
    /// were written, confirmed or not (a wall-clock-style grace period alone). Never set
    /// outside tests.
    pub bug_collect_unconfirmed_tombstones: bool,
    /// PLANTED BUG for checker tests: a replica applying a coordinator's write does not update
    /// its tree, so its tree claims what its data no longer holds. Never set outside tests.
    pub bug_tree_not_updated_on_replica_write: bool,
    /// PLANTED BUG for checker tests: the index follows a key's first write but none of its
    /// overwrites, whatever the path, so the trees keep describing values long replaced.
    /// Never set outside tests.
    pub bug_tree_not_updated_on_overwrite: bool,
    /// PLANTED BUG for checker tests: no node ever compares the ranges with an odd index in the
    /// ring's list of replica sets (a scheduler stepping by two). Never set outside tests.
    pub bug_odd_ranges_never_compared: bool,
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        AntiEntropyConfig {
            enabled: true,
            // Riak compares one partition every 15 s; a range here is smaller than a partition's
            // preference-list group, and an in-sync comparison costs one tiny round trip.
            exchange_interval: Duration::from_secs(10),
            exchanges_in_flight_max: 2,
            keys_per_message_max: 256,
            value_bytes_per_message_max: 1024 * 1024,
            // The coordinator's request timeout and the failure detector's silence bound: a
            // healthy replica answers each step well within it (answers carrying values wait
            // for one group-committed sync). An exchange stalled on a peer that was cut off or
            // stopped holds one of the few slots in flight until then: at 5 s, after a
            // partition healed, such exchanges kept every slot busy for up to 5 s and
            // replicas converged that much later (docs/explore.md, "--anti-entropy").
            exchange_timeout: Duration::from_secs(1),
            build_keys_per_step: 10_000,
            tombstone_collection: true,
            // Far beyond a request timeout or an exchange's; the hint age limit (3 h by
            // default) is what bounds it in practice.
            tombstone_grace: Duration::from_secs(10 * 60),
            tombstone_memory: Duration::from_secs(24 * 60 * 60),
            bug_collect_unconfirmed_tombstones: false,
            bug_tree_not_updated_on_replica_write: false,
            bug_tree_not_updated_on_overwrite: false,
            bug_odd_ranges_never_compared: false,
        }
    }
}

/// One keyspace's index on this node.
#[derive(Debug, Default)]
struct KeyspaceIndex {
    /// Replicas per key, once known.
    n: Option<u8>,
    /// Every key of the data table the index has seen: (ring position, key) -> entry hash.
    entries: BTreeMap<(u64, Bytes), u64>,
    /// One tree per range (a set index in the layout of `n`) holding keys here.
    trees: BTreeMap<usize, MerkleTree>,
    /// While the data table is being scanned after a start: the first key not scanned yet.
    /// Writes to keys at or past it are left to the scan.
    building: Option<Vec<u8>>,
    /// The LWW tombstones among `entries`, and which replicas confirmed holding them.
    tombstones: BTreeMap<(u64, Bytes), Tombstone>,
    /// Tombstones this node collected and still remembers.
    collected: BTreeMap<(u64, Bytes), Collected>,
}

/// A tombstone this node collected.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Collected {
    timestamp: HlcTimestamp,
    /// Peers an exchange showed no longer hold it: once all do, it is forgotten.
    cleared: BTreeSet<NodeId>,
    /// Forgotten then at the latest (`tombstone_memory`).
    until: Instant,
}

/// A tombstone held here, and what anti-entropy learned about it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tombstone {
    timestamp: HlcTimestamp,
    /// Its entry hash (what the peers must hold to confirm it).
    hash: u64,
    /// Peers that answered an exchange showing they hold exactly this tombstone (durably: the
    /// answers waited for their sync).
    confirmed: BTreeSet<NodeId>,
    /// When the last replica of its range confirmed it (`None`: not all yet).
    confirmed_at: Option<Instant>,
}

/// An exchange this node initiated.
#[derive(Debug)]
struct Exchange {
    keyspace: String,
    n: u8,
    set: usize,
    /// The range's nodes, sorted (what the wire names the range by).
    replicas: Vec<NodeId>,
    peer: NodeId,
    deadline: Instant,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the peer's `TreeDiff` of the hashes sent at `level`.
    Tree { level: u8, sent: Vec<(u32, u64)> },
    /// Waiting for the peer's `KeyDiff` of the page `from..=to`; `pending` are the position
    /// intervals of differing leaves still to do; `sent` the keys listed, with their hashes.
    Keys {
        from: u64,
        to: u64,
        pending: VecDeque<(u64, u64)>,
        sent: Vec<(Bytes, u64)>,
    },
}

/// Anti-entropy on one node, for INFO and metrics ([`Leaderless::anti_entropy_status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AntiEntropyStatus {
    pub enabled: bool,
    /// Exchanges this node initiated that have not finished.
    pub exchanges_in_flight: u64,
    pub keyspaces: BTreeMap<String, KeyspaceTreeStatus>,
}

/// One keyspace's index on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyspaceTreeStatus {
    /// Replicas per key, once the node knows it (until then nothing is compared).
    pub n: Option<u8>,
    /// Keys indexed (this node's data table).
    pub keys: u64,
    /// Ranges with keys here (one tree each).
    pub ranges: u64,
    /// Whether the index is still being rebuilt from the data table after a start.
    pub building: bool,
    /// LWW tombstones held here, not yet collected (a gauge).
    pub tombstones: u64,
    /// Of those, confirmed by every other replica and waiting out the grace period.
    pub tombstones_confirmed: u64,
    /// Tombstones collected here that some other replica may still hold (remembered).
    pub tombstones_remembered: u64,
}

/// What the responder decided for one key of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Only the responder holds the key: it sends its value.
    Push,
    /// Only the initiator holds the key: the responder asks for its value.
    Pull,
    /// Both hold it, differently: both values cross.
    Both,
}

/// The per-node anti-entropy state: indexes, trees, the registry and the exchanges in flight.
#[derive(Debug)]
pub(crate) struct AntiEntropy {
    config: AntiEntropyConfig,
    node: NodeId,
    ring: Ring,
    loaded: bool,
    keyspaces: BTreeMap<String, KeyspaceIndex>,
    /// The ranges of each replication factor in use.
    layouts: BTreeMap<u8, ReplicaSets>,
    exchanges: BTreeMap<OpId, Exchange>,
    /// When each (range, peer) of each keyspace was last compared by this node.
    last_started: BTreeMap<String, BTreeMap<(usize, NodeId), Instant>>,
    /// Bumped by every change to an index; `check_invariants` re-checks the trees only when
    /// it moved (the simulator checks after every step, and most steps change no index).
    version: u64,
    checked_version: std::cell::Cell<Option<u64>>,
    /// The latest `Env::now` seen.
    now: Instant,
    /// The hint age limit (tombstones wait at least that long, see `tombstone_grace`).
    hint_age_max: Duration,
    /// Tombstones confirmed by every replica, by when they may go: (due, keyspace, position,
    /// key, timestamp). Entries whose tombstone changed meanwhile are skipped when due.
    collectable: BTreeSet<(Instant, String, u64, Bytes, HlcTimestamp)>,
    /// Collected tombstones remembered, in the order they are forgotten at the latest.
    forget_queue: VecDeque<(Instant, String, u64, Bytes)>,
}

fn encode_registry(n: Option<u8>) -> Vec<u8> {
    vec![REGISTRY_FORMAT_V1, n.unwrap_or(0)]
}

fn decode_registry(bytes: &[u8]) -> Option<Option<u8>> {
    match bytes {
        [REGISTRY_FORMAT_V1, 0] => Some(None),
        [REGISTRY_FORMAT_V1, n] => Some(Some(*n)),
        _ => None,
    }
}

/// Where an N came from: one learned locally (a request, the catalog) overrides; a peer's only
/// fills in what is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Local,
    Peer,
}

impl AntiEntropy {
    pub fn new(
        node: NodeId,
        ring: Ring,
        config: AntiEntropyConfig,
        hint_age_max: Duration,
    ) -> Self {
        assert!(
            !config.enabled
                || (config.exchanges_in_flight_max >= 1
                    && config.keys_per_message_max >= 1
                    && config.build_keys_per_step >= 1
                    && !config.exchange_interval.is_zero()),
            "anti-entropy needs room for one exchange, one key and one scanned key"
        );
        AntiEntropy {
            config,
            node,
            ring,
            loaded: false,
            keyspaces: BTreeMap::new(),
            layouts: BTreeMap::new(),
            exchanges: BTreeMap::new(),
            last_started: BTreeMap::new(),
            version: 0,
            checked_version: std::cell::Cell::new(None),
            now: Instant::ZERO,
            hint_age_max,
            collectable: BTreeSet::new(),
            forget_queue: VecDeque::new(),
        }
    }

    /// Notes the time of the step (tombstones are timed on the monotonic clock).
    pub fn set_now(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// How long a confirmed tombstone is kept still.
    fn grace(&self) -> Duration {
        self.config.tombstone_grace.max(self.hint_age_max)
    }

    pub fn config(&self) -> &AntiEntropyConfig {
        &self.config
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Whether background work is due regularly: scans to continue, ranges to compare.
    pub fn wants_maintenance(&self) -> bool {
        self.config.enabled && (!self.loaded || !self.keyspaces.is_empty())
    }

    /// Loads the registry after a start and schedules a scan of every keyspace in it.
    pub fn load<S: Storage>(&mut self, storage: &S) -> Result<(), StorageError> {
        if !self.config.enabled || self.loaded {
            return Ok(());
        }
        let mut from = Vec::new();
        loop {
            let page = storage.scan(ANTI_ENTROPY_TABLE, &from, REGISTRY_PAGE_ENTRIES)?;
            let full = page.len() == REGISTRY_PAGE_ENTRIES;
            for (k, v) in page {
                match (std::str::from_utf8(&k), decode_registry(&v)) {
                    (Ok(name), Some(n)) => {
                        let index = KeyspaceIndex {
                            n,
                            building: Some(Vec::new()),
                            ..KeyspaceIndex::default()
                        };
                        if let Some(n) = n {
                            self.layout(n);
                        }
                        self.keyspaces.insert(name.to_string(), index);
                    }
                    _ => tracing::error!(entry = ?k, "undecodable anti-entropy registry entry"),
                }
                from = k;
                from.push(0);
            }
            if !full {
                break;
            }
        }
        self.loaded = true;
        self.version += 1;
        Ok(())
    }

    fn layout(&mut self, n: u8) -> &ReplicaSets {
        let ring = &self.ring;
        self.layouts
            .entry(n)
            .or_insert_with(|| ring.replica_sets(usize::from(n)))
    }

    /// Makes sure `keyspace` is known here (registered durably, its table scanned), and learns
    /// its N if given. Staged before the keyspace's first data write, so that after any crash
    /// the registry names every keyspace with data.
    pub fn touch<S: Storage>(
        &mut self,
        storage: &mut S,
        keyspace: &str,
        n: Option<u8>,
        source: Source,
    ) -> Result<(), StorageError> {
        if !self.config.enabled || !self.loaded {
            return Ok(());
        }
        let n = n.filter(|n| *n >= 1);
        let (known, current) = match self.keyspaces.get(keyspace) {
            Some(index) => (true, index.n),
            None => (false, None),
        };
        let learned = match (current, n, source) {
            (_, None, _) => current,
            (None, Some(n), _) => Some(n),
            (Some(c), Some(n), Source::Local) if c != n => Some(n),
            (Some(c), _, _) => Some(c),
        };
        if known && learned == current {
            return Ok(());
        }
        storage.put(
            ANTI_ENTROPY_TABLE,
            keyspace.as_bytes(),
            &encode_registry(learned),
        )?;
        if let Some(n) = learned {
            self.layout(n);
        }
        let index = self
            .keyspaces
            .entry(keyspace.to_string())
            .or_insert_with(|| KeyspaceIndex {
                // A table with data written before this node kept trees (an upgrade) is
                // indexed too: every new keyspace starts with a scan.
                building: Some(Vec::new()),
                ..KeyspaceIndex::default()
            });
        index.n = learned;
        self.version += 1;
        if known {
            tracing::info!(keyspace, n = ?learned, "anti-entropy: replication factor changed");
            // The ranges changed: rebuild the trees from the index, and confirm every tombstone
            // again with the new ranges' replicas.
            index.trees.clear();
            for t in index.tombstones.values_mut() {
                t.confirmed.clear();
                t.confirmed_at = None;
            }
            let layout = learned.map(|n| &self.layouts[&n]);
            for ((position, _), hash) in &index.entries {
                if let Some(layout) = layout {
                    let set = layout.set_of(*position);
                    index.trees.entry(set).or_default().insert(*position, *hash);
                }
            }
        }
        Ok(())
    }

    /// The index follows a write of `bytes` to `key` of `keyspace`'s data table; `tombstone`:
    /// the bytes are an LWW tombstone of that timestamp.
    pub fn stored(
        &mut self,
        keyspace: &str,
        key: &[u8],
        bytes: &[u8],
        tombstone: Option<HlcTimestamp>,
    ) {
        let hash = merkle::entry_hash(key, bytes);
        self.update(keyspace, key, Some((hash, tombstone)));
    }

    /// The index follows the deletion of `key` from `keyspace`'s data table.
    pub fn removed(&mut self, keyspace: &str, key: &[u8]) {
        self.update(keyspace, key, None);
    }

    fn update(&mut self, keyspace: &str, key: &[u8], new: Option<(u64, Option<HlcTimestamp>)>) {
        if !self.config.enabled {
            return;
        }
        let now = self.now;
        let Some(index) = self.keyspaces.get_mut(keyspace) else {
            return; // not loaded yet: the scan after loading will see the write
        };
        if new.is_some() && !index.collected.is_empty() {
            // A write after a collection: the memory of the collected tombstone is moot.
            let position = Ring::position(keyspace, key);
            index
                .collected
                .remove(&(position, Bytes::copy_from_slice(key)));
        }
        if index
            .building
            .as_ref()
            .is_some_and(|cursor| key >= cursor.as_slice())
        {
            return; // the scan has not got here yet and will read what is stored now
        }
        self.version += 1;
        let position = Ring::position(keyspace, key);
        let entry = (position, Bytes::copy_from_slice(key));
        if self.config.bug_tree_not_updated_on_overwrite
            && new.is_some()
            && index.entries.contains_key(&entry)
        {
            return; // PLANTED BUG: overwrites are not followed
        }
        let hash = new.map(|(h, _)| h);
        match new {
            Some((hash, Some(timestamp))) => {
                let unchanged = index.tombstones.get(&entry).is_some_and(|t| t.hash == hash);
                if !unchanged {
                    let t = Tombstone {
                        timestamp,
                        hash,
                        confirmed: BTreeSet::new(),
                        confirmed_at: None,
                    };
                    index.tombstones.insert(entry.clone(), t);
                    if self.config.bug_collect_unconfirmed_tombstones {
                        // PLANTED BUG: due after the grace period, confirmed or not.
                        let due = now + self.config.tombstone_grace.max(self.hint_age_max);
                        let name = keyspace.to_string();
                        let key = entry.1.clone();
                        self.collectable
                            .insert((due, name, position, key, timestamp));
                    }
                }
            }
            _ => {
                index.tombstones.remove(&entry);
            }
        }
        let old = match hash {
            Some(h) => index.entries.insert(entry, h),
            None => index.entries.remove(&entry),
        };
        let Some(n) = index.n else {
            return;
        };
        let set = self.layouts[&n].set_of(position);
        let tree = index.trees.entry(set).or_default();
        match (old, hash) {
            (None, None) => {}
            (None, Some(new)) => tree.insert(position, new),
            (Some(old), Some(new)) => tree.replace(position, old, new),
            (Some(old), None) => tree.remove(position, old),
        }
        if tree.is_empty() {
            index.trees.remove(&set);
        }
    }

    /// Continues every scan by one page. Returns whether any scan is still running.
    pub fn build_step<S: Storage>(&mut self, storage: &S) -> Result<bool, StorageError> {
        let page_keys = self.config.build_keys_per_step;
        let names: Vec<String> = self
            .keyspaces
            .iter()
            .filter(|(_, i)| i.building.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for name in &names {
            self.version += 1;
            let cursor = self.keyspaces[name].building.clone().expect("listed above");
            let page = storage.scan(&table_name(name), &cursor, page_keys)?;
            let done = page.len() < page_keys;
            let index = self.keyspaces.get_mut(name).expect("listed above");
            index.building = match page.last() {
                Some((last, _)) if !done => {
                    let mut next = last.clone();
                    next.push(0);
                    Some(next)
                }
                _ => None,
            };
            for (key, bytes) in page {
                let position = Ring::position(name, &key);
                let hash = merkle::entry_hash(&key, &bytes);
                let key = Bytes::from(key);
                if !State::is_state_encoding(&bytes)
                    && let Ok(Record {
                        timestamp,
                        value: None,
                    }) = Record::decode(&bytes)
                {
                    let t = Tombstone {
                        timestamp,
                        hash,
                        confirmed: BTreeSet::new(),
                        confirmed_at: None,
                    };
                    index.tombstones.insert((position, key.clone()), t);
                    if self.config.bug_collect_unconfirmed_tombstones {
                        // PLANTED BUG: due after the grace period, confirmed or not.
                        let due = self.now + self.config.tombstone_grace.max(self.hint_age_max);
                        let entry = (due, name.clone(), position, key.clone(), timestamp);
                        self.collectable.insert(entry);
                    }
                }
                let old = index.entries.insert((position, key), hash);
                assert!(
                    old.is_none(),
                    "the scan meets each key once, past the cursor"
                );
                if let Some(n) = index.n {
                    let set = self.layouts[&n].set_of(position);
                    index.trees.entry(set).or_default().insert(position, hash);
                }
            }
            if index.building.is_none() {
                tracing::debug!(
                    keyspace = name,
                    keys = index.entries.len(),
                    "anti-entropy index built"
                );
            }
        }
        Ok(self.keyspaces.values().any(|i| i.building.is_some()))
    }

    /// The range `replicas` of `keyspace` at N = `n`, if this node can compare it now with
    /// `peer`: the index is built, N agrees, and both nodes are replicas of the range.
    fn range(&self, keyspace: &str, n: u8, replicas: &[NodeId], peer: NodeId) -> Option<usize> {
        let index = self.keyspaces.get(keyspace)?;
        if index.building.is_some() || index.n != Some(n) {
            return None;
        }
        let set = self.layouts.get(&n)?.find(replicas)?;
        (replicas.contains(&self.node) && replicas.contains(&peer) && peer != self.node)
            .then_some(set)
    }

    fn tree_hash(&self, keyspace: &str, set: usize, level: u8, index: u32) -> u64 {
        self.keyspaces
            .get(keyspace)
            .and_then(|i| i.trees.get(&set))
            .map_or(0, |t| t.hash(level, index))
    }

    /// This node's entries of range `set` of `keyspace` with positions in `from..=to`, in
    /// (position, key) order.
    fn entries_in(
        &self,
        keyspace: &str,
        set: usize,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = (u64, &Bytes, u64)> + '_ {
        let index = self.keyspaces.get(keyspace);
        let layout = index.and_then(|i| i.n).and_then(|n| self.layouts.get(&n));
        index
            .into_iter()
            .flat_map(move |i| {
                i.entries
                    .range((Bound::Included((from, Bytes::new())), Bound::Unbounded))
            })
            .take_while(move |((p, _), _)| *p <= to)
            .filter(move |((p, _), _)| layout.is_some_and(|l| l.set_of(*p) == set))
            .map(|((p, k), h)| (*p, k, *h))
    }

    /// The ranges due for comparison now, oldest comparison first: (keyspace, n, set, peer).
    fn due(
        &self,
        now: Instant,
        suspected: impl Fn(NodeId) -> bool,
    ) -> Vec<(String, u8, usize, NodeId)> {
        let busy = |name: &str, set: usize, peer: NodeId| {
            self.exchanges
                .values()
                .any(|e| e.set == set && e.peer == peer && e.keyspace == name)
        };
        let mut due = Vec::new();
        for (name, index) in &self.keyspaces {
            let Some(n) = index.n else { continue };
            if index.building.is_some() {
                continue;
            }
            let layout = &self.layouts[&n];
            for set in layout.sets_of(self.node) {
                if self.config.bug_odd_ranges_never_compared && set % 2 == 1 {
                    continue; // PLANTED BUG: this range is never compared
                }
                for &peer in layout.nodes(set) {
                    if peer == self.node || suspected(peer) || busy(name, set, peer) {
                        continue;
                    }
                    let last = self
                        .last_started
                        .get(name)
                        .and_then(|l| l.get(&(set, peer)))
                        .copied();
                    if last.is_some_and(|t| now.saturating_since(t) < self.config.exchange_interval)
                    {
                        continue;
                    }
                    due.push((last, name.clone(), n, set, peer));
                }
            }
        }
        due.sort();
        due.into_iter()
            .map(|(_, name, n, set, peer)| (name, n, set, peer))
            .collect()
    }

    pub fn in_flight(&self) -> usize {
        self.exchanges.len()
    }

    /// `peer` holds exactly what this node holds of range `set` of `keyspace` between
    /// positions `first..=last` (an exchange found the subtree, or the keys, equal): it
    /// confirms every tombstone held here there, and holds none of those collected here.
    fn confirm_span(&mut self, keyspace: &str, set: usize, peer: NodeId, span: (u64, u64)) {
        self.clear_span(keyspace, set, peer, span, &BTreeSet::new());
        let (first, last) = span;
        let Some(index) = self.keyspaces.get_mut(keyspace) else {
            return;
        };
        let Some(n) = index.n else {
            return;
        };
        let layout = &self.layouts[&n];
        let from = Bound::Included((first, Bytes::new()));
        let mut newly = Vec::new();
        for ((position, key), t) in index.tombstones.range_mut((from, Bound::Unbounded)) {
            if *position > last {
                break;
            }
            if layout.set_of(*position) != set {
                continue;
            }
            if t.confirmed.insert(peer) && t.confirmed_at.is_none() {
                let all = layout
                    .nodes(set)
                    .iter()
                    .all(|r| *r == self.node || t.confirmed.contains(r));
                if all {
                    t.confirmed_at = Some(self.now);
                    newly.push((*position, key.clone(), t.timestamp));
                }
            }
        }
        if !self.config.tombstone_collection || self.config.bug_collect_unconfirmed_tombstones {
            return;
        }
        let due = self.now + self.grace();
        for (position, key, timestamp) in newly {
            self.collectable
                .insert((due, keyspace.to_string(), position, key, timestamp));
        }
    }

    /// `peer` holds none of the tombstones this node collected in range `set` between
    /// positions `first..=last`, but those named in `held`: once every other replica is known
    /// not to hold a collected tombstone, this node forgets it.
    fn clear_span(
        &mut self,
        keyspace: &str,
        set: usize,
        peer: NodeId,
        (first, last): (u64, u64),
        held: &BTreeSet<&Bytes>,
    ) {
        let Some(index) = self.keyspaces.get_mut(keyspace) else {
            return;
        };
        let Some(n) = index.n else {
            return;
        };
        if index.collected.is_empty() {
            return;
        }
        let layout = &self.layouts[&n];
        let from = Bound::Included((first, Bytes::new()));
        let mut forget = Vec::new();
        for ((position, key), c) in index.collected.range_mut((from, Bound::Unbounded)) {
            if *position > last {
                break;
            }
            if layout.set_of(*position) != set || held.contains(key) {
                continue;
            }
            c.cleared.insert(peer);
            let all = layout
                .nodes(set)
                .iter()
                .all(|r| *r == self.node || c.cleared.contains(r));
            if all {
                forget.push((*position, key.clone()));
            }
        }
        for entry in forget {
            index.collected.remove(&entry);
        }
    }

    /// `peer` holds `key` with entry hash `hash`, as this node does.
    fn confirm_key(&mut self, keyspace: &str, set: usize, peer: NodeId, key: &Bytes, hash: u64) {
        let position = Ring::position(keyspace, key);
        let held = self
            .keyspaces
            .get(keyspace)
            .and_then(|i| i.tombstones.get(&(position, key.clone())))
            .is_some_and(|t| t.hash == hash);
        if held {
            self.confirm_span(keyspace, set, peer, (position, position));
        }
    }

    /// Every tombstone of `keyspace` this node collected and still remembers: (key, timestamp).
    pub fn collected_in(&self, keyspace: &str) -> Vec<(Bytes, HlcTimestamp)> {
        self.keyspaces.get(keyspace).map_or_else(Vec::new, |i| {
            i.collected
                .iter()
                .map(|((_, key), c)| (key.clone(), c.timestamp))
                .collect()
        })
    }

    /// The timestamp of the tombstone of `key` this node collected, if it still remembers it.
    pub fn collected(&self, keyspace: &str, key: &[u8]) -> Option<HlcTimestamp> {
        let index = self.keyspaces.get(keyspace)?;
        if index.collected.is_empty() {
            return None;
        }
        let position = Ring::position(keyspace, key);
        index
            .collected
            .get(&(position, Bytes::copy_from_slice(key)))
            .map(|c| c.timestamp)
    }

    /// Tombstones due for collection now, at most `max`: (keyspace, key, timestamp, hash).
    fn due_tombstones(&mut self, max: usize) -> Vec<(String, Bytes, HlcTimestamp, u64)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(first) = self.collectable.first() else {
                break;
            };
            if first.0 > self.now {
                break;
            }
            let (_, keyspace, position, key, timestamp) =
                self.collectable.pop_first().expect("looked at");
            let Some(index) = self.keyspaces.get(&keyspace) else {
                continue;
            };
            // Still the tombstone that was confirmed (or, under the planted bug, written)?
            let Some(t) = index.tombstones.get(&(position, key.clone())) else {
                continue;
            };
            let confirmed =
                t.confirmed_at.is_some() || self.config.bug_collect_unconfirmed_tombstones;
            if t.timestamp == timestamp && confirmed {
                out.push((keyspace, key, timestamp, t.hash));
            }
        }
        out
    }

    /// Remembers a collected tombstone until every other replica is known not to hold it, or
    /// for `tombstone_memory` at most (the oldest memory goes first past
    /// [`COLLECTED_REMEMBERED_MAX`]).
    fn remember_collected(&mut self, keyspace: &str, key: Bytes, timestamp: HlcTimestamp) {
        let until = self.now + self.config.tombstone_memory;
        if let Some(index) = self.keyspaces.get_mut(keyspace) {
            let position = Ring::position(keyspace, &key);
            let c = Collected {
                timestamp,
                cleared: BTreeSet::new(),
                until,
            };
            index.collected.insert((position, key.clone()), c);
            self.forget_queue
                .push_back((until, keyspace.to_string(), position, key));
        }
        while self.forget_queue.len() > COLLECTED_REMEMBERED_MAX {
            self.forget_one();
        }
    }

    /// Forgets collected tombstones past their memory (`until` only grows along the queue).
    fn forget_collected(&mut self) {
        while self
            .forget_queue
            .front()
            .is_some_and(|(until, _, _, _)| *until <= self.now)
        {
            self.forget_one();
        }
    }

    fn forget_one(&mut self) {
        let Some((until, keyspace, position, key)) = self.forget_queue.pop_front() else {
            return;
        };
        let entry = (position, key);
        if let Some(index) = self.keyspaces.get_mut(&keyspace)
            && index
                .collected
                .get(&entry)
                .is_some_and(|c| c.until == until)
        {
            index.collected.remove(&entry);
        }
    }

    /// Drops every exchange in flight (their late answers are then ignored): a membership
    /// change began, and anti-entropy pauses until it finishes ([`crate::membership`]).
    pub fn abandon_exchanges(&mut self) {
        self.exchanges.clear();
    }

    /// The keyspaces known here whose N is known (the registry), for a membership handoff.
    pub fn known_keyspaces(&self) -> Vec<(String, u8)> {
        self.keyspaces
            .iter()
            .filter_map(|(name, i)| i.n.map(|n| (name.clone(), n)))
            .collect()
    }

    /// The ring changed (a membership change finished): the ranges are those of the new ring,
    /// so every tree is rebuilt from the index, and everything learnt about the old ranges is
    /// forgotten. Tombstone confirmations in particular were given by the old ranges' replicas,
    /// which are not the new ones: a tombstone is collected only once the new ring's replicas
    /// confirm it (and collection waits out its grace period again).
    pub fn set_ring(&mut self, ring: Ring) {
        self.ring = ring;
        let ns: Vec<u8> = self.layouts.keys().copied().collect();
        self.layouts.clear();
        for n in ns {
            self.layout(n);
        }
        self.exchanges.clear();
        self.last_started.clear();
        self.collectable.clear();
        for index in self.keyspaces.values_mut() {
            index.trees.clear();
            for t in index.tombstones.values_mut() {
                t.confirmed.clear();
                t.confirmed_at = None;
            }
            for c in index.collected.values_mut() {
                c.cleared.clear();
            }
            if let Some(n) = index.n {
                let layout = &self.layouts[&n];
                for ((position, _), hash) in &index.entries {
                    let set = layout.set_of(*position);
                    index.trees.entry(set).or_default().insert(*position, *hash);
                }
            }
        }
        self.version += 1;
    }

    /// What INFO shows of anti-entropy on this node.
    pub fn status(&self) -> AntiEntropyStatus {
        AntiEntropyStatus {
            enabled: self.config.enabled,
            exchanges_in_flight: self.exchanges.len() as u64,
            keyspaces: self
                .keyspaces
                .iter()
                .map(|(name, i)| {
                    let status = KeyspaceTreeStatus {
                        n: i.n,
                        keys: i.entries.len() as u64,
                        ranges: i.trees.len() as u64,
                        building: i.building.is_some(),
                        tombstones: i.tombstones.len() as u64,
                        tombstones_confirmed: i
                            .tombstones
                            .values()
                            .filter(|t| t.confirmed_at.is_some())
                            .count() as u64,
                        tombstones_remembered: i.collected.len() as u64,
                    };
                    (name.clone(), status)
                })
                .collect(),
        }
    }

    /// The roots of `keyspace`'s trees, by range (for tests).
    #[cfg(test)]
    pub fn roots(&self, keyspace: &str) -> BTreeMap<Vec<NodeId>, u64> {
        let Some(index) = self.keyspaces.get(keyspace) else {
            return BTreeMap::new();
        };
        index
            .trees
            .iter()
            .map(|(set, t)| {
                let n = index.n.expect("trees only with N");
                (self.layouts[&n].nodes(*set).to_vec(), t.root())
            })
            .collect()
    }

    pub fn check_invariants(&self) {
        assert!(
            self.exchanges.len() <= self.config.exchanges_in_flight_max,
            "anti-entropy exchanges in flight are bounded"
        );
        for e in self.exchanges.values() {
            assert!(e.replicas.contains(&self.node) && e.replicas.contains(&e.peer));
            assert_ne!(e.peer, self.node);
            assert_eq!(self.layouts[&e.n].nodes(e.set), e.replicas.as_slice());
        }
        if self.checked_version.replace(Some(self.version)) == Some(self.version) {
            return; // no index changed since the last check
        }
        for (name, index) in &self.keyspaces {
            for tree in index.trees.values() {
                assert!(!tree.is_empty(), "{name}: empty trees are dropped");
            }
            for ((position, key), t) in &index.tombstones {
                let entry = index.entries.get(&(*position, key.clone()));
                assert_eq!(
                    entry,
                    Some(&t.hash),
                    "{name}: a tombstone is an indexed entry"
                );
                assert!(t.confirmed_at.is_none() || !t.confirmed.is_empty() || index.n == Some(1));
                assert!(
                    !t.confirmed.contains(&self.node),
                    "{name}: peers confirm, not self"
                );
            }
            if let Some(n) = index.n {
                let counted: u64 = index.trees.values().map(MerkleTree::keys).sum();
                assert_eq!(
                    counted,
                    index.entries.len() as u64,
                    "{name}: trees count keys (N={n})"
                );
            }
            if index.entries.len() > INVARIANT_ENTRIES_MAX {
                continue;
            }
            let Some(n) = index.n else {
                assert!(index.trees.is_empty(), "{name}: no trees without N");
                continue;
            };
            // Sparse: the sums of every tree node on the path of some key (run after every
            // step in the simulator, so never a walk over whole trees).
            let mut expected: BTreeMap<(usize, u8, u32), u64> = BTreeMap::new();
            for ((p, _), h) in &index.entries {
                let set = self.layouts[&n].set_of(*p);
                for level in 0..=LEAF_LEVEL {
                    let sum = expected
                        .entry((set, level, merkle::index_of(level, *p)))
                        .or_default();
                    *sum = sum.wrapping_add(*h);
                }
            }
            for ((set, level, i), sum) in &expected {
                let held = index.trees.get(set).map_or(0, |t| t.hash(*level, *i));
                assert_eq!(held, *sum, "{name}: range {set}, level {level}, node {i}");
            }
            for set in index.trees.keys() {
                assert!(
                    expected.contains_key(&(*set, 0, 0)),
                    "{name}: a tree for range {set}, which holds no key"
                );
            }
        }
    }
}

/// Merge-joins this node's entries of a page (`mine`) with the initiator's (`theirs`), both in
/// (position, key) order, and decides for every key that differs. Stops once `max` keys are
/// decided, but never inside one position: returns the decisions and, if it stopped early, the
/// last position it covered entirely.
pub(crate) fn compare_page<'a>(
    mine: impl Iterator<Item = (u64, &'a Bytes, u64)>,
    theirs: &[(u64, Bytes, u64)],
    max: usize,
) -> (Vec<(u64, Bytes, Decision)>, Option<u64>) {
    let mut mine = mine.peekable();
    let mut theirs = theirs.iter().peekable();
    let mut decisions = Vec::new();
    let mut stop_after: Option<u64> = None;
    loop {
        let next_mine = mine.peek().map(|(p, k, _)| (*p, (*k).clone()));
        let next_theirs = theirs.peek().map(|(p, k, _)| (*p, k.clone()));
        let next = match (&next_mine, &next_theirs) {
            (None, None) => return (decisions, None),
            (Some(m), None) => m.clone(),
            (None, Some(t)) => t.clone(),
            (Some(m), Some(t)) => m.min(t).clone(),
        };
        if let Some(p) = stop_after
            && next.0 != p
        {
            return (decisions, Some(p));
        }
        let in_mine = next_mine.as_ref() == Some(&next);
        let in_theirs = next_theirs.as_ref() == Some(&next);
        let decision = match (in_mine, in_theirs) {
            (true, true) => {
                let (_, _, a) = mine.next().expect("peeked");
                let (_, _, b) = theirs.next().expect("peeked");
                (a != *b).then_some(Decision::Both)
            }
            (true, false) => {
                mine.next();
                Some(Decision::Push)
            }
            (false, true) => {
                theirs.next();
                Some(Decision::Pull)
            }
            (false, false) => unreachable!("the smaller head is one of the two"),
        };
        if let Some(d) = decision {
            decisions.push((next.0, next.1, d));
            if decisions.len() >= max && stop_after.is_none() {
                stop_after = Some(next.0);
            }
        }
    }
}

/// The position intervals of the leaves `leaves` (sorted), adjacent ones merged.
fn leaf_intervals(leaves: &[u32]) -> VecDeque<(u64, u64)> {
    let mut out: VecDeque<(u64, u64)> = VecDeque::new();
    for &leaf in leaves {
        let (first, last) = merkle::span(LEAF_LEVEL, leaf);
        match out.back_mut() {
            Some((_, end)) if end.wrapping_add(1) == first && *end != u64::MAX => *end = last,
            _ => out.push_back((first, last)),
        }
    }
    out
}

pub(crate) fn payload_of(bytes: &[u8]) -> Result<HintPayload, String> {
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

impl Leaderless {
    /// Anti-entropy on this node: trees per keyspace, exchanges in flight (counters are per
    /// keyspace in [`Self::stats`]).
    pub fn anti_entropy_status(&self) -> AntiEntropyStatus {
        self.anti_entropy.status()
    }

    /// Tells the engine a leaderless keyspace's configuration (the node's catalog): its N decides
    /// the ranges anti-entropy compares. Requests coordinated here tell it too; calling this at
    /// start and whenever the catalog changes makes a node compare keyspaces it never
    /// coordinated anything for.
    pub fn observe_keyspace<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        keyspace: &KeyspaceConfig,
    ) {
        self.begin(env);
        self.learn_keyspace(env.storage, keyspace, Source::Local);
    }

    pub(crate) fn learn_keyspace<S: Storage>(
        &mut self,
        storage: &mut S,
        keyspace: &KeyspaceConfig,
        source: Source,
    ) {
        if keyspace.model != Model::Leaderless {
            return;
        }
        let touched = self
            .anti_entropy
            .touch(storage, &keyspace.name, Some(keyspace.n), source);
        if let Err(e) = touched {
            tracing::error!(keyspace = keyspace.name, error = %e, "anti-entropy registry write failed");
        }
    }

    /// Every write to a data table goes through here, so that the keyspace's index and tree
    /// follow it (`tracked: false` only for the planted bug).
    pub(crate) fn put_data<S: Storage>(
        &mut self,
        storage: &mut S,
        keyspace: &str,
        key: &[u8],
        bytes: &[u8],
        tombstone: Option<HlcTimestamp>,
        tracked: bool,
    ) -> Result<(), StorageError> {
        self.anti_entropy
            .touch(storage, keyspace, None, Source::Peer)?;
        storage.put(&table_name(keyspace), key, bytes)?;
        if tracked
            || !self
                .anti_entropy
                .config()
                .bug_tree_not_updated_on_replica_write
        {
            self.anti_entropy.stored(keyspace, key, bytes, tombstone);
        }
        Ok(())
    }

    /// Collects the tombstones whose grace period after confirmation has passed: deleted from
    /// the data table (staged like any write), and remembered for a while.
    fn collect_tombstones<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        let max = self.anti_entropy.config.keys_per_message_max;
        for (keyspace, key, timestamp, hash) in self.anti_entropy.due_tombstones(max) {
            let table = table_name(&keyspace);
            match env.storage.get(&table, &key) {
                Ok(Some(bytes)) if merkle::entry_hash(&key, &bytes) == hash => {}
                Ok(_) => continue, // changed since it was confirmed: not this tombstone any more
                Err(e) => {
                    tracing::error!(keyspace, error = %e, "reading a tombstone failed");
                    continue;
                }
            }
            if let Err(e) = env.storage.delete(&table, &key) {
                tracing::error!(keyspace, error = %e, "collecting a tombstone failed");
                continue;
            }
            self.anti_entropy.removed(&keyspace, &key);
            self.anti_entropy
                .remember_collected(&keyspace, key, timestamp);
            self.stats_mut(&keyspace).tombstones_collected += 1;
        }
        self.anti_entropy.forget_collected();
    }

    /// Sends an anti-entropy message, counting its bytes.
    fn send_anti_entropy(&mut self, to: NodeId, keyspace: &str, message: Message) {
        let bytes = postcard::experimental::serialized_size(&message).unwrap_or(0) as u64;
        self.stats_mut(keyspace).anti_entropy_bytes_sent += bytes;
        self.send(to, message);
    }

    /// Background work of anti-entropy: scans, abandoned exchanges, new exchanges.
    pub(crate) fn maintain_anti_entropy<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        if !self.anti_entropy.enabled() {
            return;
        }
        if let Err(e) = self.anti_entropy.build_step(env.storage) {
            tracing::error!(error = %e, "anti-entropy scan failed; retried next step");
        }
        let now = env.now.instant;
        let expired: Vec<OpId> = self
            .anti_entropy
            .exchanges
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(op, _)| *op)
            .collect();
        for op in expired {
            let e = self.anti_entropy.exchanges.remove(&op).expect("listed");
            tracing::debug!(keyspace = e.keyspace, peer = %e.peer, "anti-entropy exchange abandoned");
            self.stats_mut(&e.keyspace).anti_entropy_exchanges_abandoned += 1;
        }
        if self.moving.is_some() {
            // Paused during a membership change: ranges and tombstone confirmations are those
            // of one ring, and the nodes are not all on the same one (see `membership`).
            return;
        }
        if self.anti_entropy.config.tombstone_collection {
            self.collect_tombstones(env);
        }
        self.start_exchanges(env);
    }

    /// Starts exchanges of the ranges that are due, up to the bound on exchanges in flight.
    fn start_exchanges<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        if self.moving.is_some() {
            return;
        }
        let room = self
            .anti_entropy
            .config
            .exchanges_in_flight_max
            .saturating_sub(self.anti_entropy.in_flight());
        if room == 0 {
            return;
        }
        let now = env.now.instant;
        let detector = &self.detector;
        let due = self.anti_entropy.due(now, |p| detector.is_suspected(p));
        for (keyspace, n, set, peer) in due.into_iter().take(room) {
            let op = self.new_op();
            let replicas = self.anti_entropy.layouts[&n].nodes(set).to_vec();
            let root = self.anti_entropy.tree_hash(&keyspace, set, 0, 0);
            self.anti_entropy
                .last_started
                .entry(keyspace.clone())
                .or_default()
                .insert((set, peer), now);
            let sent = vec![(0, root)];
            self.anti_entropy.exchanges.insert(
                op,
                Exchange {
                    keyspace: keyspace.clone(),
                    n,
                    set,
                    replicas: replicas.clone(),
                    peer,
                    deadline: now + self.anti_entropy.config.exchange_timeout,
                    phase: Phase::Tree {
                        level: 0,
                        sent: sent.clone(),
                    },
                },
            );
            let message = Message::TreeHashes {
                op,
                keyspace: keyspace.clone(),
                n,
                replicas,
                level: 0,
                hashes: sent,
            };
            self.send_anti_entropy(peer, &keyspace, message);
        }
    }

    fn finish_exchange<S: Storage>(&mut self, env: &mut Env<'_, S>, op: OpId) {
        self.anti_entropy.exchanges.remove(&op);
        self.start_exchanges(env);
    }

    /// A replica of a range is sent the initiator's hashes of some nodes of its tree.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_tree_hashes<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        keyspace: String,
        n: u8,
        replicas: Vec<NodeId>,
        level: u8,
        hashes: Vec<(u32, u64)>,
    ) {
        if !self.anti_entropy.enabled() || self.moving.is_some() {
            return self.send(from, Message::ExchangeRefused { op });
        }
        // Learn the keyspace (and its N, if unknown here) from the peer: a node that never
        // coordinated anything for it still compares it, and scans its table after a restart.
        let config = KeyspaceConfig {
            n,
            r: 1,
            w: 1,
            ..KeyspaceConfig::leaderless(&keyspace)
        };
        if config.validate(self.ring.nodes().len()).is_ok() {
            self.learn_keyspace(env.storage, &config, Source::Peer);
        }
        let Some(set) = self.anti_entropy.range(&keyspace, n, &replicas, from) else {
            return self.send(from, Message::ExchangeRefused { op });
        };
        if level > LEAF_LEVEL || hashes.len() > merkle::width(level) as usize {
            return self.send(from, Message::ExchangeRefused { op });
        }
        let differing: Vec<u32> = hashes
            .iter()
            .filter(|(i, h)| {
                *i >= merkle::width(level)
                    || self.anti_entropy.tree_hash(&keyspace, set, level, *i) != *h
            })
            .map(|(i, _)| *i)
            .collect();
        let message = Message::TreeDiff {
            op,
            level,
            differing,
        };
        self.send_anti_entropy(from, &keyspace, message);
    }

    /// The initiator hears which of the nodes it sent differ.
    pub(crate) fn on_tree_diff<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        level: u8,
        differing: Vec<u32>,
    ) {
        let Some(e) = self.anti_entropy.exchanges.get(&op) else {
            return;
        };
        let Phase::Tree {
            level: sent_level,
            sent,
        } = &e.phase
        else {
            return;
        };
        if e.peer != from || *sent_level != level {
            return;
        }
        let sent_indexes: BTreeSet<u32> = sent.iter().map(|(i, _)| *i).collect();
        let mut differing: Vec<u32> = differing
            .into_iter()
            .filter(|i| sent_indexes.contains(i))
            .collect();
        differing.sort_unstable();
        differing.dedup();
        let (keyspace, set, peer) = (e.keyspace.clone(), e.set, e.peer);
        // The peer holds what this node held in every subtree it did not name: it confirms the
        // tombstones there, if nothing changed here since the hashes left.
        let equal: Vec<(u32, u64)> = sent
            .iter()
            .filter(|(i, _)| differing.binary_search(i).is_err())
            .copied()
            .collect();
        for (i, sent_hash) in equal {
            if self.anti_entropy.tree_hash(&keyspace, set, level, i) == sent_hash {
                let span = merkle::span(level, i);
                self.anti_entropy.confirm_span(&keyspace, set, peer, span);
            }
        }
        if level == 0 {
            let stats = self.stats_mut(&keyspace);
            stats.anti_entropy_ranges_compared += 1;
            if differing.is_empty() {
                stats.anti_entropy_ranges_in_sync += 1;
            }
        }
        if differing.is_empty() {
            return self.finish_exchange(env, op);
        }
        let deadline = env.now.instant + self.anti_entropy.config.exchange_timeout;
        if level < LEAF_LEVEL {
            let next: Vec<(u32, u64)> = differing
                .iter()
                .flat_map(|&i| merkle::children(level, i))
                .map(|c| (c, self.anti_entropy.tree_hash(&keyspace, set, level + 1, c)))
                .collect();
            let e = self.anti_entropy.exchanges.get_mut(&op).expect("looked up");
            e.phase = Phase::Tree {
                level: level + 1,
                sent: next.clone(),
            };
            e.deadline = deadline;
            let message = Message::TreeHashes {
                op,
                keyspace: keyspace.clone(),
                n: e.n,
                replicas: e.replicas.clone(),
                level: level + 1,
                hashes: next,
            };
            self.send_anti_entropy(peer, &keyspace, message);
        } else {
            let pending = leaf_intervals(&differing);
            self.send_next_page(env, op, pending);
        }
    }

    /// Sends the next page of the initiator's keys in differing leaves, or ends the exchange.
    fn send_next_page<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        op: OpId,
        mut pending: VecDeque<(u64, u64)>,
    ) {
        let Some((from, to)) = pending.pop_front() else {
            return self.finish_exchange(env, op);
        };
        let e = &self.anti_entropy.exchanges[&op];
        let (keyspace, set, peer) = (e.keyspace.clone(), e.set, e.peer);
        let max = self.anti_entropy.config.keys_per_message_max;
        let mut keys: Vec<(Bytes, u64)> = Vec::new();
        let mut page_to = to;
        let mut cut: Option<u64> = None;
        for (position, key, hash) in self.anti_entropy.entries_in(&keyspace, set, from, to) {
            if let Some(c) = cut {
                if position != c {
                    page_to = c;
                    break;
                }
            } else if keys.len() + 1 >= max {
                cut = Some(position);
            }
            keys.push((key.clone(), hash));
        }
        if page_to < to {
            pending.push_front((page_to + 1, to));
        }
        let e = self.anti_entropy.exchanges.get_mut(&op).expect("looked up");
        e.phase = Phase::Keys {
            from,
            to: page_to,
            pending,
            sent: keys.clone(),
        };
        e.deadline = env.now.instant + self.anti_entropy.config.exchange_timeout;
        let message = Message::KeyHashes {
            op,
            keyspace: keyspace.clone(),
            n: e.n,
            replicas: e.replicas.clone(),
            from,
            to: page_to,
            keys,
        };
        self.send_anti_entropy(peer, &keyspace, message);
    }

    /// A replica compares the initiator's keys of a page with its own and answers with what
    /// differs: its values of those, and the keys it wants the initiator's values of.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_key_hashes<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        keyspace: String,
        n: u8,
        replicas: Vec<NodeId>,
        page: (u64, u64),
        keys: Vec<(Bytes, u64)>,
    ) {
        let (first, last) = page;
        if self.moving.is_some() {
            return self.send(from, Message::ExchangeRefused { op });
        }
        let Some(set) = self.anti_entropy.range(&keyspace, n, &replicas, from) else {
            return self.send(from, Message::ExchangeRefused { op });
        };
        if first > last {
            return self.send(from, Message::ExchangeRefused { op });
        }
        let layout = &self.anti_entropy.layouts[&n];
        let mut theirs: Vec<(u64, Bytes, u64)> = keys
            .into_iter()
            .map(|(k, h)| (Ring::position(&keyspace, &k), k, h))
            .filter(|(p, _, _)| (first..=last).contains(p) && layout.set_of(*p) == set)
            .collect();
        theirs.sort();
        theirs.dedup_by(|a, b| (a.0, &a.1) == (b.0, &b.1));
        // A tombstone this node collected counts as held (the initiator confirms it, and does
        // not hand it back): the peers collect on their own schedule.
        theirs.retain(
            |(_, k, h)| match self.anti_entropy.collected(&keyspace, k) {
                Some(timestamp) => {
                    let tombstone = Record {
                        timestamp,
                        value: None,
                    };
                    merkle::entry_hash(k, &tombstone.encode()) != *h
                }
                None => true,
            },
        );
        let config = self.anti_entropy.config.clone();
        let (decisions, stopped) = compare_page(
            self.anti_entropy.entries_in(&keyspace, set, first, last),
            &theirs,
            config.keys_per_message_max,
        );
        let mut through = stopped.unwrap_or(last);
        let mut push = Vec::new();
        let mut pull = Vec::new();
        let mut bytes = 0usize;
        let table = table_name(&keyspace);
        let mut last_included: Option<u64> = None;
        for (position, key, decision) in decisions {
            if bytes > config.value_bytes_per_message_max && last_included != Some(position) {
                // Enough values for one message: the rest of the page is for the next one.
                through = position - 1;
                break;
            }
            last_included = Some(position);
            if matches!(decision, Decision::Pull | Decision::Both) {
                pull.push(key.clone());
            }
            if matches!(decision, Decision::Push | Decision::Both) {
                let stored = match env.storage.get(&table, &key) {
                    Ok(Some(b)) => b,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!(keyspace, error = %e, "anti-entropy read failed");
                        continue;
                    }
                };
                match payload_of(&stored) {
                    Ok(payload) => {
                        bytes += stored.len();
                        push.push((key, payload));
                    }
                    Err(e) => tracing::error!(keyspace, error = e, "undecodable stored value"),
                }
            }
        }
        let message = Message::KeyDiff {
            op,
            push,
            pull,
            through,
        };
        self.send_anti_entropy(from, &keyspace, message);
    }

    /// The initiator merges what the peer pushed, sends what it pulled, and goes on.
    pub(crate) fn on_key_diff<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        push: Vec<(Bytes, HintPayload)>,
        pull: Vec<Bytes>,
        through: u64,
    ) {
        let Some(e) = self.anti_entropy.exchanges.get_mut(&op) else {
            return;
        };
        let Phase::Keys {
            from: first,
            to: last,
            pending,
            sent,
        } = &mut e.phase
        else {
            return;
        };
        if e.peer != from || through < *first || through > *last {
            return;
        }
        let (first, last) = (*first, *last);
        let mut pending = std::mem::take(pending);
        let sent = std::mem::take(sent);
        if through < last {
            pending.push_front((through + 1, last));
        }
        let (keyspace, n, set, peer) = (e.keyspace.clone(), e.n, e.set, e.peer);
        let layout = self.anti_entropy.layouts[&n].clone();
        let in_page = |key: &[u8]| {
            let p = Ring::position(&keyspace, key);
            (first..=through).contains(&p) && layout.set_of(p) == set
        };
        // Every key listed that the peer decided nothing about, it holds as this node does.
        let decided: BTreeSet<&Bytes> = push.iter().map(|(k, _)| k).chain(&pull).collect();
        let equal: Vec<(Bytes, u64)> = sent
            .into_iter()
            .filter(|(k, _)| !decided.contains(k) && in_page(k))
            .collect();
        for (key, hash) in &equal {
            self.anti_entropy
                .confirm_key(&keyspace, set, peer, key, *hash);
        }
        // And it holds none of the tombstones collected here in the part of the page it
        // compared, but those it pushed back.
        let pushed: BTreeSet<&Bytes> = push.iter().map(|(k, _)| k).collect();
        self.anti_entropy
            .clear_span(&keyspace, set, peer, (first, through), &pushed);
        for (key, payload) in push {
            if in_page(&key) {
                self.merge_repair(env, &keyspace, &key, payload);
            }
        }
        let table = table_name(&keyspace);
        let max_bytes = self.anti_entropy.config.value_bytes_per_message_max;
        let mut batch: Vec<(Bytes, HintPayload)> = Vec::new();
        let mut bytes = 0usize;
        for key in pull {
            if !in_page(&key) {
                continue;
            }
            let stored = match env.storage.get(&table, &key) {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(keyspace, error = %e, "anti-entropy read failed");
                    continue;
                }
            };
            let Ok(payload) = payload_of(&stored) else {
                continue;
            };
            if !batch.is_empty() && bytes + stored.len() > max_bytes {
                let entries = std::mem::take(&mut batch);
                let message = Message::KeyValues {
                    keyspace: keyspace.clone(),
                    entries,
                };
                self.send_anti_entropy(peer, &keyspace, message);
                bytes = 0;
            }
            bytes += stored.len();
            batch.push((key, payload));
        }
        if !batch.is_empty() {
            let message = Message::KeyValues {
                keyspace: keyspace.clone(),
                entries: batch,
            };
            self.send_anti_entropy(peer, &keyspace, message);
        }
        self.send_next_page(env, op, pending);
    }

    /// A replica merges the values it asked an initiator for.
    pub(crate) fn on_key_values<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        keyspace: String,
        entries: Vec<(Bytes, HintPayload)>,
    ) {
        let Some(n) = self.anti_entropy.keyspaces.get(&keyspace).and_then(|i| i.n) else {
            return;
        };
        let layout = self.anti_entropy.layouts[&n].clone();
        for (key, payload) in entries {
            // Only keys this node is a replica of: a value is never planted elsewhere.
            let p = Ring::position(&keyspace, &key);
            if layout.nodes(layout.set_of(p)).contains(&self.node) {
                self.merge_repair(env, &keyspace, &key, payload);
            }
        }
    }

    /// An exchange's peer cannot compare now.
    pub(crate) fn on_exchange_refused<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
    ) {
        if self
            .anti_entropy
            .exchanges
            .get(&op)
            .is_some_and(|e| e.peer == from)
        {
            let keyspace = self.anti_entropy.exchanges[&op].keyspace.clone();
            self.stats_mut(&keyspace).anti_entropy_exchanges_abandoned += 1;
            self.finish_exchange(env, op);
        }
    }

    /// Merges a value an exchange brought, by the rules of every other write: last-writer-wins
    /// for records (refusing a different record under a timestamp already held), the join for
    /// states. Counts the key as repaired if this replica's value changed.
    fn merge_repair<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        keyspace: &str,
        key: &[u8],
        payload: HintPayload,
    ) {
        let changed = match payload {
            HintPayload::Record(record) => {
                self.follow_stamp(env, keyspace, &record);
                match self.apply_record(env.storage, keyspace, key, &record, true) {
                    Ok(applied) => applied.changed,
                    Err(e) => {
                        tracing::error!(keyspace, error = %e, "anti-entropy repair failed");
                        false
                    }
                }
            }
            HintPayload::State(state) => {
                match self.store_update_changed(env.storage, keyspace, key, &Update::State(state)) {
                    Ok(changed) => changed,
                    Err(e) => {
                        tracing::error!(keyspace, error = ?e, "anti-entropy repair failed");
                        false
                    }
                }
            }
        };
        if changed {
            self.stats_mut(keyspace).anti_entropy_keys_repaired += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(u64, &str, u64)]) -> Vec<(u64, Bytes, u64)> {
        list.iter()
            .map(|(p, k, h)| (*p, Bytes::copy_from_slice(k.as_bytes()), *h))
            .collect()
    }

    #[test]
    fn a_page_decides_push_pull_and_both_and_stops_only_between_positions() {
        let mine = entries(&[(1, "a", 10), (2, "b", 20), (3, "c", 30), (5, "e", 50)]);
        let theirs = entries(&[(2, "b", 20), (3, "c", 31), (4, "d", 40), (5, "e", 50)]);
        let mine_iter = || mine.iter().map(|(p, k, h)| (*p, k, *h));
        let (decisions, stopped) = compare_page(mine_iter(), &theirs, 10);
        let expected = vec![
            (1, Bytes::from("a"), Decision::Push),
            (3, Bytes::from("c"), Decision::Both),
            (4, Bytes::from("d"), Decision::Pull),
        ];
        assert_eq!((decisions, stopped), (expected.clone(), None));
        // At most 2 decisions: stops after position 3, which it covered entirely.
        assert_eq!(
            compare_page(mine_iter(), &theirs, 2),
            (expected[..2].to_vec(), Some(3))
        );
        // Two keys at one position (a hash collision) are never split by a stop.
        let mine = entries(&[(7, "x", 1), (7, "y", 2), (8, "z", 3)]);
        let (decisions, stopped) = compare_page(mine.iter().map(|(p, k, h)| (*p, k, *h)), &[], 1);
        assert_eq!(decisions.len(), 2);
        assert_eq!(stopped, Some(7));
        // Identical pages decide nothing.
        let (decisions, stopped) = compare_page(mine.iter().map(|(p, k, h)| (*p, k, *h)), &mine, 1);
        assert!(decisions.is_empty() && stopped.is_none());
    }

    #[test]
    fn adjacent_differing_leaves_become_one_interval() {
        let span = |l| merkle::span(LEAF_LEVEL, l);
        let intervals = leaf_intervals(&[3, 4, 5, 9, merkle::LEAVES - 1]);
        assert_eq!(
            intervals,
            VecDeque::from([(span(3).0, span(5).1), span(9), span(merkle::LEAVES - 1)])
        );
        assert_eq!(intervals.back().unwrap().1, u64::MAX);
    }

    #[test]
    fn the_registry_round_trips_and_rejects_garbage() {
        for n in [None, Some(1), Some(3)] {
            assert_eq!(decode_registry(&encode_registry(n)), Some(n));
        }
        assert_eq!(decode_registry(&[]), None);
        assert_eq!(decode_registry(&[9, 3]), None);
        assert_eq!(decode_registry(&[1, 3, 0]), None);
    }
}
