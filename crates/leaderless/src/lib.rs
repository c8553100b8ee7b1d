//! Leaderless (Dynamo-style) replication, sans-IO.
//!
//! Any node coordinates any request. A key's replicas are the first N distinct nodes of its
//! preference list on the consistent-hash [`ring`]. A write is stamped with the coordinator's
//! hybrid logical clock, sent to all N replicas and acknowledged to the client once W of them
//! hold it durably; a read asks all N, answers with the newest record among the first R replies,
//! and repairs every replica that answered with an older record or none (read repair).
//!
//! ## Why a write can be retried with a new timestamp
//!
//! Last-writer-wins on wall-clock-derived timestamps silently loses writes when clocks are skewed:
//! a write stamped by a node whose clock runs behind orders *before* an earlier write stamped by
//! a node whose clock runs ahead. Replicas therefore refuse a record older than the one they hold
//! and tell the coordinator the newer timestamp; the coordinator advances its clock past it and
//! re-stamps the write (bounded retries). Because any two write quorums intersect when
//! `W + W > N`, a write is acknowledged only once it is the newest record on W replicas, so a
//! client that writes a key and then writes it again never sees its second write lose to its
//! first, whatever the clocks do.
//!
//! ## Merge policies other than last-writer-wins
//!
//! Keyspaces whose merge policy is `siblings`, `counter`, `set` or `map` store a CRDT per key
//! ([`state`]). Their operations ([`Leaderless::apply`]) are coordinated by a replica of the key,
//! which computes the update from its own state (new dots come from it) and, for removes and map
//! writes, from a read at R first; it stores the update, ships it to the other replicas and
//! answers once W hold it. A node outside the preference list forwards the operation to a
//! replica ([`forward`]). Reads ([`Leaderless::read_state`]) join the first R states and repair
//! every replica whose state is less than the join.
//!
//! ## Failure detection
//!
//! Each node keeps its own view of which peers it can reach ([`health`]), built from its own
//! traffic: a peer is suspected once K requests to it (default 2) have each gone unanswered for
//! T (default 1 s) with nothing at all heard from it since; a suspected peer is probed with
//! `Ping` every 500 ms and any message from it clears the suspicion. [`Leaderless::peer_health`]
//! exposes the view. Coordinators use it: reads, writes, merges and forwards go to the replicas
//! they do not suspect first (suspected ones are still asked, last), and forwarders pick a
//! replica they do not suspect to coordinate.
//!
//! ## Sloppy quorums and hinted handoff (Dynamo §4.6)
//!
//! A keyspace's [`QuorumMode`] decides which acknowledgements count towards W
//! ([`LeaderlessConfig::quorum_modes`], [`LeaderlessConfig::quorum_mode_default`], or per
//! request with [`Leaderless::write_with_mode`]):
//!
//! - **Strict** (the default, Riak's PW = W): only the key's N preference-list nodes count. A
//!   write with fewer than W of them reachable fails with `QuorumFailed`.
//! - **Sloppy**: for each preference-list node the coordinator suspects, the next node past the
//!   preference list on the ring that it does not suspect (a *fallback*) is sent the write with
//!   a hint naming that owner. The fallback stores it in its hint table ([`hint`]), not its data
//!   table, and acknowledges once it is staged (so, by persist-then-send, durable). W counts
//!   *owners covered*: an acknowledgement from the owner itself or from the fallback standing in
//!   for it covers that owner once. So once the hints are delivered, W distinct owners hold
//!   every acknowledged write, exactly as under a strict quorum. A fallback whose hint store is
//!   full refuses (`HintRefused`), and the coordinator tries the next candidate. Fallbacks
//!   deliver hints (`Handoff`) to owners they do not suspect, a bounded number in flight per
//!   owner, and delete each hint once its owner answers that it holds it durably
//!   (`HandoffAck`, sent after the owner's sync). Hints survive restarts (reloaded from disk on
//!   the first step), are bounded in count and bytes ([`hint::HintConfig`]), expire after an age
//!   limit, and are counted per keyspace in [`KeyspaceStats`] (`hints_stored`,
//!   `hints_delivered`, `hints_expired`, `hints_refused`, `hints_pending`).
//!
//! Why strict is the default: a sloppy quorum gives up the overlap between read and write
//! quorums that `R + W > N` promises. Until its hints are delivered, a write acknowledged by
//! fallbacks is on fewer than W owners, so a read may not see it. And for `lww` keyspaces the
//! re-stamping above relies on any two write quorums meeting on a node; two sloppy writes can be
//! acknowledged by disjoint nodes (an owner, and a fallback standing in for it), so when the
//! coordinators' clocks disagree a writer's later write can order before its earlier one (the
//! simulator's `tests/sloppy.rs` shows both, and that every acknowledged write still reaches W
//! owners, or is superseded there, and no hint is left behind). Use sloppy quorums where staying writable through the
//! loss of W owners matters more than read-your-writes; a `siblings` keyspace keeps concurrent
//! values instead of ordering them, which is what Dynamo paired sloppy quorums with.
//!
//! The other merge policies use the same mechanism in the write phase of an operation: the
//! coordinating replica sends fallbacks its *whole* state of the key after the operation (never
//! the delta: a delta is not a state, see [`hint`]), which they merge into their hint. Reads,
//! and the read at R that removes and map writes do first, stay strict (only replicas answer),
//! and an operation still needs a reachable replica to coordinate it (dots come from replicas).
//! For `set` keyspaces this means an SREM can miss an SADD acknowledged only by fallbacks, and
//! that add then survives the remove: the observed-remove guarantee, like read-your-writes,
//! needs strict quorums. Counters lose nothing: every acknowledged increment is counted once its
//! hints are delivered.
//!
//! ## Anti-entropy (Dynamo §4.7)
//!
//! Replicas that missed writes converge without any read touching the keys ([`anti_entropy`]).
//! A *range* is every key whose replica set is one given set of N nodes; each node keeps, per
//! keyspace, an in-memory index of its data table (ring position, key -> hash of the stored
//! bytes) and one fixed-shape [`merkle`] tree per range (32-way, 4 levels, 32,768 leaves;
//! node hashes are sums, so a write updates a path in O(depth)). Every write to a data table,
//! whatever the path, goes through one function that updates the index. The index is rebuilt
//! by scanning the table after a start, never persisted: a persisted tree could disagree with
//! what a crash left of the data and hide the very difference it exists to find.
//!
//! Every `exchange_interval` (default 10 s) a node compares each of its ranges with each other
//! replica of the range, at most `exchanges_in_flight_max` (2) at once: roots first (a range in
//! sync costs one round trip of about 30 bytes), then level by level into the differing
//! subtrees only, then the keys of the differing leaves, at most `keys_per_message_max` (256)
//! per message, and only the differing keys' values cross, merged by the usual rules (LWW with
//! its refusals, CRDT join). Repairs are staged writes like any other, and answers wait for
//! the sync (persist-then-send). Counters per keyspace in [`KeyspaceStats`]
//! (`anti_entropy_ranges_compared`, `anti_entropy_ranges_in_sync`,
//! `anti_entropy_keys_repaired`, `anti_entropy_bytes_sent`,
//! `anti_entropy_exchanges_abandoned`); the trees' state in [`Leaderless::anti_entropy_status`].
//! The engine learns each keyspace's N from the requests it coordinates, from peers' exchanges
//! and from [`Leaderless::observe_keyspace`], which the node should call with its catalog.
//!
//! ## Tombstones
//!
//! LWW deletes are tombstones. With `tombstone_collection` on (the default) a tombstone is
//! deleted once exchanges confirmed that every replica of its key durably holds it, and a grace
//! period (`tombstone_grace`, at least the hint age limit, monotonic time) has passed since,
//! for writes already in flight; never on a timer alone. The collecting node remembers it
//! until every other replica is seen without it, so the replicas' staggered collections never
//! hand it back and bring nothing back (`tombstones_collected` in [`KeyspaceStats`]).
//!
//! ## Membership changes
//!
//! The ring's members change by *moves* (one node joins, or one leaves) that the node's
//! cluster-metadata group decides and drives through three phases ([`membership`]):
//! [`Leaderless::begin_move`] makes every operation this node starts joint (W of the current
//! owners AND W of the next ones; R of each for reads; strict only), [`Leaderless::start_handoff`]
//! sends every key this node owns to the key's gained owners, [`Leaderless::finish_move`] switches
//! the ring. Anti-entropy and tombstone collection pause during a move. A node need not be on
//! the ring at all: it still coordinates.
//!
//! Everything the engine wants done comes out of [`Leaderless::poll_effect`]; the node routes the
//! effects. Staged storage writes become durable when the driver syncs the batch, before any
//! effect of that batch is released (persist-then-send), so a local acknowledgement counted here
//! is durable by the time anyone can observe it.

pub mod anti_entropy;
pub mod forward;
pub mod health;
pub mod hint;
pub mod membership;
pub mod merkle;
pub mod message;
pub mod record;
pub mod ring;
pub mod state;

use anti_entropy::{AntiEntropy, AntiEntropyConfig, Source};
use bytes::Bytes;
use forward::{Admission, ForwardAdmission};
use health::{DetectorConfig, FailureDetector, PeerHealth};
use hint::{Delivered, HintConfig, HintKey, HintPayload, HintStore, HintStoreUsage, Stored};
use message::{Message, OpId};
use record::Record;
use ring::Ring;
use serde::{Deserialize, Serialize};
use state::{Operation, OperationResult, Refusal, State, Update, View};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use triarch_core::causal::ActorId;
use triarch_core::limits::VALUE_BYTES_MAX_DEFAULT;
use triarch_core::{
    Hlc, HlcTimestamp, Instant, KeyspaceConfig, MergePolicy, NodeId, Now, RequestId,
};
use triarch_storage::{Storage, StorageError};

/// How many times a write is re-stamped after replicas report newer records before giving up.
pub const WRITE_ATTEMPTS_MAX: u8 = 4;

/// How long a node refuses to coordinate writes after a replica refused its stamp as too far
/// ahead of the replica's clock (every further refusal extends it).
pub const CLOCK_AHEAD_HOLD: Duration = Duration::from_secs(10);

/// Which acknowledgements count towards W.
pub use triarch_core::QuorumMode;

#[derive(Clone, Debug)]
pub struct LeaderlessConfig {
    /// How long a coordinator waits for R replies or W acknowledgements.
    pub request_timeout: Duration,
    /// The largest encoded state of one key of a `siblings`, `counter`, `set` or `map`
    /// keyspace that an operation may grow it to (merges at replicas are never refused).
    pub state_bytes_max: usize,
    /// The quorum mode of every keyspace not named in `quorum_modes`.
    pub quorum_mode_default: QuorumMode,
    /// Per-keyspace quorum modes.
    pub quorum_modes: BTreeMap<String, QuorumMode>,
    /// When peers are suspected ([`health`]).
    pub detector: DetectorConfig,
    /// The bounds of the hint store ([`hint`]).
    pub hints: HintConfig,
    /// How often the engine does its background work when it has any: raising suspicions,
    /// probing suspected peers, delivering and expiring hints, anti-entropy.
    pub maintenance_interval: Duration,
    /// Merkle-tree anti-entropy between the replicas of each range ([`anti_entropy`]).
    pub anti_entropy: AntiEntropyConfig,
    /// PLANTED BUG for checker tests: acknowledge a write after the first replica holds it,
    /// whatever W says. Never set outside tests.
    pub bug_ack_before_quorum: bool,
    /// PLANTED BUG for checker tests: every coordinator issues counter, set and sibling dots
    /// as one shared actor, so concurrent operations through different replicas reuse dots and
    /// lose each other. Never set outside tests.
    pub bug_shared_actor: bool,
    /// PLANTED BUG for checker tests: set removes (and map deletes) forget what the read at R
    /// observed, so they remove nothing. Never set outside tests.
    pub bug_remove_unobserved: bool,
    /// PLANTED BUG for checker tests: a fallback acknowledges a hinted write without storing
    /// the hint, so the write never reaches the owner it stood in for. Never set outside tests.
    pub bug_hint_not_stored: bool,
    /// PLANTED BUG for checker tests: during a membership change only the first node of a
    /// key's current preference list hands the key off to its gained owners ([`membership`]).
    /// Never set outside tests.
    pub bug_handoff_from_first_owner_only: bool,
    /// PLANTED BUG for checker tests: during a membership change writes and operations go to
    /// the current ring only, not to the joint quorum ([`membership`]). Never set outside tests.
    pub bug_move_writes_current_ring_only: bool,
}

impl Default for LeaderlessConfig {
    fn default() -> Self {
        LeaderlessConfig {
            request_timeout: Duration::from_secs(1),
            state_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            quorum_mode_default: QuorumMode::Strict,
            quorum_modes: BTreeMap::new(),
            detector: DetectorConfig::default(),
            hints: HintConfig::default(),
            maintenance_interval: Duration::from_millis(200),
            anti_entropy: AntiEntropyConfig::default(),
            bug_ack_before_quorum: false,
            bug_shared_actor: false,
            bug_remove_unobserved: false,
            bug_hint_not_stored: false,
            bug_handoff_from_first_owner_only: false,
            bug_move_writes_current_ring_only: false,
        }
    }
}

/// What the engine asks its node to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Send {
        to: NodeId,
        message: Message,
    },
    Reply {
        request: RequestId,
        outcome: Outcome,
    },
}

/// The result of a client operation. Serializable because a forwarded operation's outcome
/// travels back to the node that forwarded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A write reached W replicas. For deletes, `existed` tells whether any acknowledging replica
    /// held a live value.
    Written { existed: bool },
    /// A read's newest value among R replies (`None`: absent or deleted).
    Read { value: Option<Bytes> },
    /// Fewer than `needed` replicas answered in time. The write may still have reached some.
    QuorumFailed { acks: u8, needed: u8 },
    /// Replicas kept reporting newer records (concurrent writers): the write lost every attempt.
    Superseded,
    /// The local replica could not read or stage the write.
    Storage(String),
    /// An operation on a `siblings`, `counter`, `set` or `map` key reached W replicas.
    Applied(OperationResult),
    /// A read of a `siblings`, `counter`, `set` or `map` key: the join of the first R states
    /// (`None`: no replica that answered holds the key).
    State(Option<View>),
    /// The coordinating replica refused the operation; nothing changed.
    Refused(Refusal),
    /// The replica this node forwarded the operation to did not answer in time, or refused it
    /// as stale. The operation may or may not have happened.
    Unavailable { coordinator: NodeId },
}

/// Counters for one keyspace, exported as metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyspaceStats {
    pub reads: u64,
    pub writes: u64,
    pub read_repairs: u64,
    pub quorum_failures: u64,
    /// Writes this replica refused because it held a newer record (LWW losers).
    pub lww_discarded: u64,
    /// Writes re-stamped because a replica held a newer record.
    pub write_restamps: u64,
    /// Records this node refused to store (or to follow, as a coordinator) because their
    /// timestamp ran further ahead of its wall clock than `clock_forward_bound_ms`: a skewed
    /// clock somewhere, whose writes must not win every conflict.
    pub clock_ahead_refused: u64,
    /// Copies moved here by read repair, handoff or anti-entropy whose timestamp ran that far
    /// ahead (taken, so that replicas converge; a skewed clock's write that reached one replica
    /// before the others refused it).
    pub clock_ahead_copied: u64,
    /// `siblings` keyspaces: concurrent values this replica started to hold beyond the first
    /// (a merge or write that left a key with k > 1 values where it had j counts k - max(j, 1)).
    pub siblings_created: u64,
    /// `siblings` keyspaces: concurrent values this replica stopped holding because a write
    /// that had seen them superseded them (from j > 1 values down to k counts j - max(k, 1)).
    pub siblings_resolved: u64,
    /// Operations this node forwarded to a replica of their key because it is not one.
    pub forwarded: u64,
    /// Writes and operations this node coordinated that asked fallbacks to hold hints for
    /// suspected preference-list nodes (sloppy quorums).
    pub hinted_writes: u64,
    /// Hints this node stored (or updated) for other nodes, as a fallback.
    pub hints_stored: u64,
    /// Hints this node delivered to their owner and then deleted.
    pub hints_delivered: u64,
    /// Hints this node dropped undelivered because they outlived the age limit.
    pub hints_expired: u64,
    /// Hints this node refused because its hint store was full.
    pub hints_refused: u64,
    /// Hints this node holds for other nodes now (a gauge).
    pub hints_pending: u64,
    /// Anti-entropy: ranges whose roots this node compared with a peer (as initiator).
    pub anti_entropy_ranges_compared: u64,
    /// Of those, the ranges found identical at the root (nothing else exchanged).
    pub anti_entropy_ranges_in_sync: u64,
    /// Keys whose value on this replica an anti-entropy exchange changed (either role).
    pub anti_entropy_keys_repaired: u64,
    /// Bytes of anti-entropy messages this node sent (encoded, either role).
    pub anti_entropy_bytes_sent: u64,
    /// Exchanges this node initiated that the peer refused or left unanswered.
    pub anti_entropy_exchanges_abandoned: u64,
    /// LWW tombstones this replica deleted once every replica confirmed holding them.
    pub tombstones_collected: u64,
    /// Keys merged here from membership-change handoff batches ([`membership`]).
    pub move_keys_received: u64,
    /// Hints dropped when a membership change finished because their owner left the ring
    /// (their copies went to the key's gained owners during the handoff, [`membership`]).
    pub hints_dropped_owner_left: u64,
}

/// The storage table holding a keyspace's records.
pub fn table_name(keyspace: &str) -> String {
    format!("data.{keyspace}")
}

/// The environment a step runs in: the time, the node's storage and its clock.
pub struct Env<'a, S: Storage> {
    pub now: Now,
    pub storage: &'a mut S,
    pub hlc: &'a mut Hlc,
}

enum Pending {
    Write(PendingWrite),
    Read(PendingRead),
    Apply(PendingApply),
    StateRead(PendingStateRead),
    Forward(PendingForward),
}

/// Who awaits an operation's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Requester {
    Client(RequestId),
    /// A node that forwarded the operation here; it gets a `ForwardReply` for its `op`.
    Peer {
        node: NodeId,
        op: OpId,
    },
}

/// An operation on a `siblings`, `counter`, `set` or `map` key, coordinated by this replica.
struct PendingApply {
    requester: Requester,
    keyspace: KeyspaceConfig,
    key: Bytes,
    operation: Operation,
    /// Every owner on either ring ([`Placement::all`]).
    replicas: Vec<NodeId>,
    placement: Placement,
    fallbacks: Fallbacks,
    r: u8,
    w: u8,
    phase: ApplyPhase,
    deadline: Instant,
}

enum ApplyPhase {
    /// Removes and map writes read the key at R first.
    Reading {
        replies: BTreeMap<NodeId, Option<State>>,
    },
    /// The update is stored here and shipped; waiting for W acknowledgements (counted per
    /// preference-list node, as for writes).
    Writing {
        result: OperationResult,
        accepted: BTreeSet<NodeId>,
        /// This replica's whole state after the update: what fallbacks hold as hints.
        hint: Option<State>,
    },
}

struct PendingStateRead {
    request: RequestId,
    keyspace: String,
    key: Bytes,
    replicas: Vec<NodeId>,
    placement: Placement,
    r: u8,
    replies: BTreeMap<NodeId, Option<State>>,
    replied: bool,
    deadline: Instant,
}

struct PendingForward {
    request: RequestId,
    coordinator: NodeId,
    deadline: Instant,
}

/// The owners an operation must reach: the key's preference list on the current ring and,
/// for an operation started during a membership change ([`membership`]), on the next ring
/// too. A quorum is then joint: Q among the current owners AND Q among the next owners.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Placement {
    current: Vec<NodeId>,
    next: Option<Vec<NodeId>>,
}

impl Placement {
    /// Every owner on either ring, current ones first (preference order), each once.
    fn all(&self) -> Vec<NodeId> {
        let mut all = self.current.clone();
        for n in self.next.iter().flatten() {
            if !all.contains(n) {
                all.push(*n);
            }
        }
        all
    }

    /// The smaller count, over the lists, of owners `got` says answered.
    fn count(&self, got: impl Fn(NodeId) -> bool) -> usize {
        let c = self.current.iter().filter(|n| got(**n)).count();
        match &self.next {
            Some(next) => c.min(next.iter().filter(|n| got(**n)).count()),
            None => c,
        }
    }

    /// Whether `q` owners of every list answered.
    fn met(&self, got: impl Fn(NodeId) -> bool, q: u8) -> bool {
        self.count(got) >= usize::from(q)
    }

    /// Whether `q` answers are still possible in every list once `lost` cannot answer.
    fn possible(&self, lost: impl Fn(NodeId) -> bool, q: u8) -> bool {
        self.count(|n| !lost(n)) >= usize::from(q)
    }
}

/// The nodes past a key's preference list that may stand in for its suspected owners.
#[derive(Default)]
struct Fallbacks {
    /// Fallback -> the suspected owner it holds a hint for (empty under strict quorums).
    assigned: BTreeMap<NodeId, NodeId>,
    /// Every node past the preference list, in ring order.
    candidates: Vec<NodeId>,
    /// Candidates that refused a hint (hint store full).
    refused: BTreeSet<NodeId>,
}

impl Fallbacks {
    fn check(&self, replicas: &[NodeId]) {
        for (fallback, owner) in &self.assigned {
            assert!(
                !replicas.contains(fallback),
                "a fallback is past the preference list"
            );
            assert!(self.candidates.contains(fallback));
            assert!(!self.refused.contains(fallback));
            assert!(
                replicas.contains(owner),
                "a hint is for a preference-list node"
            );
        }
        let owners: BTreeSet<&NodeId> = self.assigned.values().collect();
        assert_eq!(owners.len(), self.assigned.len(), "one fallback per owner");
    }

    /// The first candidate not suspected, not assigned and not refused.
    fn next_candidate(&self, detector: &FailureDetector) -> Option<NodeId> {
        self.candidates.iter().copied().find(|c| {
            !detector.is_suspected(*c)
                && !self.assigned.contains_key(c)
                && !self.refused.contains(c)
        })
    }

    /// The preference-list node whose place `from`'s acknowledgement takes (`None`: neither
    /// an owner nor an assigned fallback).
    fn slot(&self, replicas: &[NodeId], from: NodeId) -> Option<NodeId> {
        if replicas.contains(&from) {
            Some(from)
        } else {
            self.assigned.get(&from).copied()
        }
    }
}

struct PendingWrite {
    request: RequestId,
    keyspace: String,
    key: Bytes,
    record: Record,
    /// Every owner on either ring ([`Placement::all`]).
    replicas: Vec<NodeId>,
    placement: Placement,
    fallbacks: Fallbacks,
    w: u8,
    /// The preference-list nodes whose place an acknowledgement of the current attempt took:
    /// the owner itself, or a fallback holding a hint for it. W counts these, so that once
    /// the hints are delivered W distinct owners hold the write, as under a strict quorum.
    accepted: BTreeSet<NodeId>,
    /// Preference-list places whose node refused the write for a clock too far ahead (ours
    /// or the record it holds); they cannot count toward W.
    refused: BTreeSet<NodeId>,
    existed: bool,
    attempts: u8,
    deadline: Instant,
}

struct PendingRead {
    request: RequestId,
    keyspace: String,
    key: Bytes,
    replicas: Vec<NodeId>,
    placement: Placement,
    r: u8,
    replies: BTreeMap<NodeId, Option<Record>>,
    replied: bool,
    deadline: Instant,
}

pub struct Leaderless {
    node: NodeId,
    /// Until when this node refuses to coordinate writes: replicas refused its stamps lately.
    clock_ahead_until: Option<Instant>,
    ring: Ring,
    config: LeaderlessConfig,
    next_op: u64,
    pending: BTreeMap<OpId, Pending>,
    deadlines: BTreeSet<(Instant, OpId)>,
    effects: VecDeque<Effect>,
    stats: BTreeMap<String, KeyspaceStats>,
    forwards: ForwardAdmission,
    cache: state::StateCache,
    detector: FailureDetector,
    hints: HintStore,
    anti_entropy: AntiEntropy,
    /// The latest `Env::now` seen (for the failure detector's bookkeeping of sends).
    now: Instant,
    /// When background work is next due (`None` before the first step).
    next_maintenance: Option<Instant>,
    /// The membership change in progress, if any ([`membership`]).
    moving: Option<membership::Move>,
}

impl Leaderless {
    /// An engine for `node` on the ring of `members`. `node` need not be one of them: a node
    /// joining the ring before its move, or one decommissioned after it, coordinates (and
    /// forwards) without owning anything ([`membership`]).
    pub fn new(node: NodeId, members: &[NodeId], config: LeaderlessConfig) -> Self {
        assert!(!members.is_empty(), "a ring has members");
        assert!(
            !config.maintenance_interval.is_zero(),
            "background work needs a positive interval"
        );
        let ring = Ring::new(members, ring::VNODES_PER_NODE_DEFAULT);
        Leaderless {
            node,
            clock_ahead_until: None,
            anti_entropy: AntiEntropy::new(
                node,
                ring.clone(),
                config.anti_entropy.clone(),
                config.hints.hint_age_max,
            ),
            ring,
            next_op: 1,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            effects: VecDeque::new(),
            stats: BTreeMap::new(),
            forwards: ForwardAdmission::new(HlcTimestamp::MIN),
            cache: state::StateCache::default(),
            detector: FailureDetector::new(node, members, config.detector.clone()),
            hints: HintStore::new(config.hints.clone()),
            config,
            now: Instant::ZERO,
            next_maintenance: None,
            moving: None,
        }
    }

    /// Names this incarnation of the node: operation ids start at `first_op` (drawn at random
    /// by the node, so that a message addressed to an operation of an earlier incarnation
    /// cannot match one of this one), and forwards sent before `started` (a timestamp the node
    /// issued when it started) are refused as stale ([`forward`]).
    pub fn with_incarnation(mut self, first_op: u64, started: HlcTimestamp) -> Self {
        assert!(self.pending.is_empty(), "set before any operation starts");
        self.next_op = first_op.max(1);
        self.forwards = ForwardAdmission::new(started);
        self
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The N replicas of `key` in `keyspace`, in preference order.
    pub fn replicas(&self, keyspace: &KeyspaceConfig, key: &[u8]) -> Vec<NodeId> {
        self.ring
            .preference_list(Ring::position(&keyspace.name, key), usize::from(keyspace.n))
    }

    /// Where an operation on `key` starting now goes: the current preference list and, during
    /// a membership change, the next one (`write`: a write or operation, which the planted bug
    /// keeps on the current ring).
    fn placement(&self, keyspace: &KeyspaceConfig, key: &[u8], write: bool) -> Placement {
        let position = Ring::position(&keyspace.name, key);
        let n = usize::from(keyspace.n);
        let bug = write && self.config.bug_move_writes_current_ring_only;
        let next = self
            .moving
            .as_ref()
            .filter(|_| !bug)
            .map(|m| m.next.preference_list(position, n));
        Placement {
            current: self.ring.preference_list(position, n),
            next,
        }
    }

    pub fn stats(&self) -> &BTreeMap<String, KeyspaceStats> {
        &self.stats
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The next operation deadline, or the next round of background work if there is any to
    /// do (suspicions to raise, peers to probe, hints to deliver or expire).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.deadlines.first().map(|(t, _)| *t);
        let maintenance = self.next_maintenance.filter(|_| {
            !self.hints.is_loaded()
                || !self.hints.is_empty()
                || self.detector.is_watching()
                || self.anti_entropy.wants_maintenance()
                || self.handoff_wants_maintenance()
        });
        deadline.into_iter().chain(maintenance).min()
    }

    /// What this node believes about each peer's reachability (for INFO and metrics). Times are
    /// on the driver's monotonic clock (`Env::now.instant`).
    pub fn peer_health(&self) -> &BTreeMap<NodeId, PeerHealth> {
        self.detector.health()
    }

    /// Tells the failure detector that a message from `peer` arrived that did not pass
    /// through [`Self::handle_message`] (e.g. the node's catalog gossip).
    pub fn heard_from(&mut self, peer: NodeId, now: Instant) {
        self.now = self.now.max(now);
        self.detector.on_heard(peer, now);
    }

    /// How full this node's hint store is (per-keyspace counts are in [`Self::stats`]).
    pub fn hint_store_usage(&self) -> HintStoreUsage {
        self.hints.usage()
    }

    /// The quorum mode a write to `keyspace` gets unless the request names one: this node's
    /// override for it if any ([`LeaderlessConfig::quorum_modes`]), else sloppy if the keyspace
    /// asks for it or the node's default says so.
    pub fn quorum_mode(&self, keyspace: &KeyspaceConfig) -> QuorumMode {
        match self.config.quorum_modes.get(&keyspace.name) {
            Some(&mode) => mode,
            None => keyspace.quorum.max(self.config.quorum_mode_default),
        }
    }

    /// Every step starts here: notes the time, reloads the hint store after a restart and
    /// arms the background work.
    fn begin<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        self.now = self.now.max(env.now.instant);
        self.anti_entropy.set_now(env.now.instant);
        if self.next_maintenance.is_none() {
            self.next_maintenance = Some(env.now.instant + self.config.maintenance_interval);
        }
        if !self.hints.is_loaded() {
            match self.hints.load(env.storage) {
                Ok(()) => {
                    let pending: Vec<(String, u64)> = self
                        .hints
                        .pending_by_keyspace()
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect();
                    for (keyspace, n) in pending {
                        self.stats_mut(&keyspace).hints_pending = n;
                    }
                }
                // Retried on the next step; meanwhile new hints are not accepted (not loaded).
                Err(e) => tracing::error!(error = %e, "cannot load the hint store"),
            }
        }
        // Retried on the next step; meanwhile nothing is indexed (the scans will see it all).
        if let Err(e) = self.anti_entropy.load(env.storage) {
            tracing::error!(error = %e, "cannot load the anti-entropy registry");
        }
    }

    /// Queues `message` for `to`, noting for the failure detector a request that expects an
    /// answer.
    fn send(&mut self, to: NodeId, message: Message) {
        assert_ne!(to, self.node, "a node never sends messages to itself");
        let expects_answer = matches!(
            message,
            Message::Write { .. }
                | Message::HintedWrite { .. }
                | Message::Read { .. }
                | Message::ReadState { .. }
                | Message::Merge { .. }
                | Message::HintedMerge { .. }
                | Message::Forward { .. }
                | Message::Handoff { .. }
                | Message::TreeHashes { .. }
                | Message::KeyHashes { .. }
                | Message::MoveBatch { .. }
        );
        if expects_answer {
            self.detector.on_request_sent(to, self.now);
        }
        self.effects.push_back(Effect::Send { to, message });
    }

    /// `nodes` with those this node suspects last (otherwise in their order): requests go to
    /// healthy replicas first.
    fn healthy_first(&self, nodes: &[NodeId]) -> Vec<NodeId> {
        let mut ordered = nodes.to_vec();
        ordered.sort_by_key(|n| self.detector.is_suspected(*n));
        ordered
    }

    /// Under a sloppy quorum, the fallbacks for `key`: each suspected preference-list node (in
    /// preference order) is stood in for by the next node past the preference list that this
    /// node does not suspect (Dynamo §4.6). Empty under a strict quorum.
    fn fallbacks(&self, keyspace: &KeyspaceConfig, key: &[u8], mode: QuorumMode) -> Fallbacks {
        if mode == QuorumMode::Strict || self.moving.is_some() {
            // During a membership change every write is strict and joint (see `membership`).
            return Fallbacks::default();
        }
        let all = self
            .ring
            .preference_list(Ring::position(&keyspace.name, key), self.ring.nodes().len());
        let n = usize::from(keyspace.n).min(all.len());
        let mut fallbacks = Fallbacks {
            candidates: all[n..].to_vec(),
            ..Fallbacks::default()
        };
        for &owner in &all[..n] {
            if self.detector.is_suspected(owner) {
                match fallbacks.next_candidate(&self.detector) {
                    Some(c) => {
                        fallbacks.assigned.insert(c, owner);
                    }
                    None => break,
                }
            }
        }
        fallbacks
    }

    /// Sets the hints gauge of `keyspace` from the store.
    fn note_pending(&mut self, keyspace: &str) {
        let pending = self.hints.pending(keyspace);
        self.stats_mut(keyspace).hints_pending = pending;
    }

    fn stats_mut(&mut self, keyspace: &str) -> &mut KeyspaceStats {
        if !self.stats.contains_key(keyspace) {
            self.stats
                .insert(keyspace.to_string(), KeyspaceStats::default());
        }
        self.stats.get_mut(keyspace).expect("inserted above")
    }

    fn new_op(&mut self) -> OpId {
        let op = OpId(self.next_op);
        self.next_op = self.next_op.wrapping_add(1).max(1);
        op
    }

    fn reply(&mut self, request: RequestId, outcome: Outcome) {
        self.effects.push_back(Effect::Reply { request, outcome });
    }

    /// Starts a write (`value: None` deletes) that completes after `w` acknowledgements, in
    /// the keyspace's quorum mode ([`Self::quorum_mode`]).
    pub fn write<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        request: RequestId,
        keyspace: &KeyspaceConfig,
        key: Bytes,
        value: Option<Bytes>,
        w: u8,
    ) {
        let mode = self.quorum_mode(keyspace);
        self.write_with_mode(env, request, keyspace, key, value, w, mode);
    }

    /// [`Self::write`] in quorum mode `mode` (a per-request override: `Strict` is Riak's
    /// PW = W).
    #[allow(clippy::too_many_arguments)]
    pub fn write_with_mode<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        request: RequestId,
        keyspace: &KeyspaceConfig,
        key: Bytes,
        value: Option<Bytes>,
        w: u8,
        mode: QuorumMode,
    ) {
        self.begin(env);
        self.learn_keyspace(env.storage, keyspace, Source::Local);
        assert!(w >= 1 && w <= keyspace.n, "W is validated by the node");
        self.stats_mut(&keyspace.name).writes += 1;
        if self.clock_ahead_until.is_some_and(|t| env.now.instant < t) {
            // Replicas lately refused this node's stamps: its clock runs ahead. Stamping more
            // writes would only leave copies here that the others refuse.
            self.stats_mut(&keyspace.name).clock_ahead_refused += 1;
            self.reply(request, Outcome::Refused(Refusal::ClockAhead));
            return;
        }
        let placement = self.placement(keyspace, &key, true);
        let replicas = placement.all();
        let fallbacks = self.fallbacks(keyspace, &key, mode);
        if !fallbacks.assigned.is_empty() {
            self.stats_mut(&keyspace.name).hinted_writes += 1;
        }
        let record = Record {
            timestamp: env.hlc.now(env.now.wall_ms),
            value,
        };
        let op = self.new_op();
        let deadline = env.now.instant + self.config.request_timeout;
        self.pending.insert(
            op,
            Pending::Write(PendingWrite {
                request,
                keyspace: keyspace.name.clone(),
                key,
                record,
                replicas,
                placement,
                fallbacks,
                w,
                accepted: BTreeSet::new(),
                refused: BTreeSet::new(),
                existed: false,
                attempts: 1,
                deadline,
            }),
        );
        self.deadlines.insert((deadline, op));
        self.send_write_attempt(env, op);
    }

    /// What every read (of a record or of a state) does first: counts it, names its operation
    /// and deadline, and asks the key's replicas other than this node, healthy ones first, with
    /// the message `ask` builds. Reads are never sloppy: only replicas answer.
    fn start_read<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        keyspace: &KeyspaceConfig,
        key: &Bytes,
        r: u8,
        ask: impl Fn(OpId, String, Bytes) -> Message,
    ) -> (OpId, Placement, Instant) {
        self.begin(env);
        self.learn_keyspace(env.storage, keyspace, Source::Local);
        assert!(r >= 1 && r <= keyspace.n, "R is validated by the node");
        self.stats_mut(&keyspace.name).reads += 1;
        let placement = self.placement(keyspace, key, false);
        let op = self.new_op();
        let deadline = env.now.instant + self.config.request_timeout;
        for to in self.healthy_first(&placement.all()) {
            if to != self.node {
                self.send(to, ask(op, keyspace.name.clone(), key.clone()));
            }
        }
        (op, placement, deadline)
    }

    /// Starts a read that answers after `r` replies.
    pub fn read<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        request: RequestId,
        keyspace: &KeyspaceConfig,
        key: Bytes,
        r: u8,
    ) {
        let (op, placement, deadline) =
            self.start_read(env, keyspace, &key, r, |op, keyspace, key| Message::Read {
                op,
                keyspace,
                key,
            });
        let replicas = placement.all();
        let local = replicas.contains(&self.node);
        self.pending.insert(
            op,
            Pending::Read(PendingRead {
                request,
                keyspace: keyspace.name.clone(),
                key: key.clone(),
                replicas,
                placement,
                r,
                replies: BTreeMap::new(),
                replied: false,
                deadline,
            }),
        );
        self.deadlines.insert((deadline, op));
        if local {
            match load(env.storage, &keyspace.name, &key) {
                Ok(record) => self.on_read_reply(env, self.node, op, record),
                Err(e) => self.fail_op(env, op, Outcome::Storage(e.to_string())),
            }
        }
    }

    /// Starts `operation` on `key` of a keyspace whose merge policy is not `lww`. It reads at
    /// `r` first if it [`Operation::reads_first`], and completes after `w` acknowledgements. A
    /// node outside the key's preference list forwards it to one of the key's replicas (one
    /// it does not suspect, if it can). The keyspace's quorum mode ([`Self::quorum_mode`])
    /// decides whether fallbacks may stand in for suspected replicas in the write phase; the
    /// read phase is always strict.
    #[allow(clippy::too_many_arguments)]
    pub fn apply<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        request: RequestId,
        keyspace: &KeyspaceConfig,
        key: Bytes,
        operation: Operation,
        r: u8,
        w: u8,
    ) {
        self.begin(env);
        self.learn_keyspace(env.storage, keyspace, Source::Local);
        assert_eq!(
            operation.policy(),
            keyspace.merge,
            "operations are routed to keyspaces of their policy by the node"
        );
        assert!(r >= 1 && r <= keyspace.n && w >= 1 && w <= keyspace.n);
        let placement = self.placement(keyspace, &key, true);
        if placement.all().contains(&self.node) {
            self.start_apply(
                env,
                Requester::Client(request),
                keyspace.clone(),
                key,
                operation,
                r,
                w,
            );
            return;
        }
        // Spread forwards over the replicas this node does not suspect (over all of them if it
        // suspects every one); a retry through this node picks another one. Current owners
        // only: whichever phase of a membership change the replica is in, it coordinates them.
        let replicas = placement.current;
        let op = self.new_op();
        let healthy: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|n| !self.detector.is_suspected(*n))
            .collect();
        let pool = if healthy.is_empty() {
            &replicas
        } else {
            &healthy
        };
        let coordinator = pool[(op.0 % pool.len() as u64) as usize];
        // Forwards wait for the coordinator's read, write and sync: give them half again.
        let deadline = env.now.instant + self.config.request_timeout * 3 / 2;
        self.pending.insert(
            op,
            Pending::Forward(PendingForward {
                request,
                coordinator,
                deadline,
            }),
        );
        self.deadlines.insert((deadline, op));
        self.stats_mut(&keyspace.name).forwarded += 1;
        let message = Message::Forward {
            op,
            sent: env.hlc.now(env.now.wall_ms),
            keyspace: Box::new(keyspace.clone()),
            key,
            operation,
            r,
            w,
        };
        self.send(coordinator, message);
    }

    #[allow(clippy::too_many_arguments)]
    fn start_apply<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        requester: Requester,
        keyspace: KeyspaceConfig,
        key: Bytes,
        operation: Operation,
        r: u8,
        w: u8,
    ) {
        self.stats_mut(&keyspace.name).writes += 1;
        let placement = self.placement(&keyspace, &key, true);
        let replicas = placement.all();
        assert!(replicas.contains(&self.node), "a replica coordinates");
        let op = self.new_op();
        let deadline = env.now.instant + self.config.request_timeout;
        let reads_first = operation.reads_first();
        if reads_first {
            for to in self.healthy_first(&replicas) {
                if to != self.node {
                    let message = Message::ReadState {
                        op,
                        keyspace: keyspace.name.clone(),
                        key: key.clone(),
                    };
                    self.send(to, message);
                }
            }
        }
        let mode = self.quorum_mode(&keyspace);
        let fallbacks = self.fallbacks(&keyspace, &key, mode);
        let name = keyspace.name.clone();
        self.pending.insert(
            op,
            Pending::Apply(PendingApply {
                requester,
                keyspace,
                key: key.clone(),
                operation,
                replicas,
                placement,
                fallbacks,
                r,
                w,
                phase: ApplyPhase::Reading {
                    replies: BTreeMap::new(),
                },
                deadline,
            }),
        );
        self.deadlines.insert((deadline, op));
        if reads_first {
            match self.cached_state(env.storage, &name, &key) {
                Ok(state) => self.on_apply_read_reply(env, self.node, op, state),
                Err(e) => self.fail_op(env, op, Outcome::Storage(e.to_string())),
            }
        } else {
            self.prepare_and_ship(env, op, None);
        }
    }

    fn on_apply_read_reply<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        state: Option<State>,
    ) {
        let Some(Pending::Apply(p)) = self.pending.get_mut(&op) else {
            return;
        };
        let ApplyPhase::Reading { replies } = &mut p.phase else {
            return; // a late reply: the operation has moved on to its write
        };
        if !p.replicas.contains(&from) {
            return;
        }
        replies.insert(from, state);
        if !p.placement.met(|n| replies.contains_key(&n), p.r) {
            return;
        }
        match join(replies.values()) {
            Ok(observed) => self.prepare_and_ship(env, op, observed),
            Err(m) => self.fail_op(env, op, Outcome::Refused(Refusal::Mismatch(m))),
        }
    }

    /// Computes the update of apply `op` at this (coordinating) replica, stores it here, ships
    /// it to the other replicas and waits for W acknowledgements, this replica's included.
    fn prepare_and_ship<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        op: OpId,
        observed: Option<State>,
    ) {
        let Some(Pending::Apply(p)) = self.pending.get(&op) else {
            return;
        };
        let (keyspace, key) = (p.keyspace.name.clone(), p.key.clone());
        let operation = p.operation.clone();
        let mut observed = observed;
        if self.config.bug_remove_unobserved
            && matches!(
                operation,
                Operation::SetRemove(_)
                    | Operation::SetClear
                    | Operation::MapDelete(_)
                    | Operation::MapClear
            )
        {
            observed = None; // PLANTED BUG: the remove forgets what the read observed
        }
        let stored = match self.cached_stored(env.storage, &keyspace, &key) {
            Ok(stored) => stored,
            Err(e) => return self.fail_op(env, op, Outcome::Storage(e.to_string())),
        };
        let actor = if self.config.bug_shared_actor {
            ActorId(0) // PLANTED BUG: one actor for every coordinator
        } else {
            ActorId::from(self.node)
        };
        let prepared = state::prepare(
            &operation,
            actor,
            stored.as_ref().map(|(_, state)| state),
            observed.as_ref(),
            env.hlc,
            env.now.wall_ms,
        );
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(refusal) => return self.fail_op(env, op, Outcome::Refused(refusal)),
        };
        let Some(update) = prepared.update else {
            // Nothing observed to remove: done, and nothing was written.
            let Some(Pending::Apply(p)) = self.remove_op(op) else {
                unreachable!("looked up above")
            };
            self.answer(env, p.requester, Outcome::Applied(prepared.result));
            return;
        };
        let limit = operation.grows().then_some(self.config.state_bytes_max);
        if let Err(e) = self.merge_and_store(env.storage, &keyspace, &key, stored, &update, limit) {
            return self.fail_op(env, op, e);
        }
        let Some(Pending::Apply(p)) = self.pending.get(&op) else {
            unreachable!("looked up above")
        };
        let (replicas, assigned) = (p.replicas.clone(), p.fallbacks.assigned.clone());
        // Fallbacks hold this replica's whole state, never the update (see `hint`).
        let hint = if assigned.is_empty() {
            None
        } else {
            match self.cached_state(env.storage, &keyspace, &key) {
                Ok(state) => state,
                Err(e) => return self.fail_op(env, op, Outcome::Storage(e.to_string())),
            }
        };
        if !assigned.is_empty() {
            self.stats_mut(&keyspace).hinted_writes += 1;
        }
        let Some(Pending::Apply(p)) = self.pending.get_mut(&op) else {
            unreachable!("looked up above")
        };
        p.phase = ApplyPhase::Writing {
            result: prepared.result,
            accepted: BTreeSet::new(),
            hint: hint.clone(),
        };
        for to in self.healthy_first(&replicas) {
            if to != self.node {
                let message = Message::Merge {
                    op,
                    keyspace: keyspace.clone(),
                    key: key.clone(),
                    update: update.clone(),
                };
                self.send(to, message);
            }
        }
        if let Some(state) = hint {
            for (to, owner) in assigned {
                let message = Message::HintedMerge {
                    op,
                    keyspace: keyspace.clone(),
                    key: key.clone(),
                    state: state.clone(),
                    owner,
                };
                self.send(to, message);
            }
        }
        self.on_merge_ack(env, self.node, op);
    }

    fn on_merge_ack<S: Storage>(&mut self, env: &mut Env<'_, S>, from: NodeId, op: OpId) {
        let bug = self.config.bug_ack_before_quorum;
        let Some(Pending::Apply(p)) = self.pending.get_mut(&op) else {
            return;
        };
        let ApplyPhase::Writing { accepted, .. } = &mut p.phase else {
            return;
        };
        let Some(slot) = p.fallbacks.slot(&p.replicas, from) else {
            return;
        };
        accepted.insert(slot);
        let done = if bug {
            !accepted.is_empty()
        } else {
            p.placement.met(|n| accepted.contains(&n), p.w)
        };
        if done {
            let Some(Pending::Apply(p)) = self.remove_op(op) else {
                unreachable!("looked up above")
            };
            let ApplyPhase::Writing { result, .. } = p.phase else {
                unreachable!("checked above")
            };
            self.answer(env, p.requester, Outcome::Applied(result));
        }
    }

    /// Starts a read of `key` of a keyspace whose merge policy is not `lww`: it answers with
    /// the join of the first `r` states, then repairs every replica whose state is less than
    /// the join of all the states it received.
    pub fn read_state<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        request: RequestId,
        keyspace: &KeyspaceConfig,
        key: Bytes,
        r: u8,
    ) {
        assert!(
            keyspace.merge != MergePolicy::Lww,
            "lww keys are read by `read`"
        );
        let (op, placement, deadline) =
            self.start_read(env, keyspace, &key, r, |op, keyspace, key| {
                Message::ReadState { op, keyspace, key }
            });
        let replicas = placement.all();
        let local = replicas.contains(&self.node);
        self.pending.insert(
            op,
            Pending::StateRead(PendingStateRead {
                request,
                keyspace: keyspace.name.clone(),
                key: key.clone(),
                replicas,
                placement,
                r,
                replies: BTreeMap::new(),
                replied: false,
                deadline,
            }),
        );
        self.deadlines.insert((deadline, op));
        if local {
            match self.cached_state(env.storage, &keyspace.name, &key) {
                Ok(state) => self.on_state_read_reply(env, self.node, op, state),
                Err(e) => self.fail_op(env, op, Outcome::Storage(e.to_string())),
            }
        }
    }

    fn on_state_read_reply<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        state: Option<State>,
    ) {
        let Some(Pending::StateRead(p)) = self.pending.get_mut(&op) else {
            return;
        };
        if !p.replicas.contains(&from) {
            return;
        }
        p.replies.insert(from, state);
        if !p.replied && p.placement.met(|n| p.replies.contains_key(&n), p.r) {
            p.replied = true;
            let request = p.request;
            match join(p.replies.values()) {
                Ok(joined) => self.reply(request, Outcome::State(joined.map(|s| s.view()))),
                Err(m) => {
                    // Replicas hold states of different policies: answer, and repair nothing.
                    self.remove_op(op);
                    return self.reply(request, Outcome::Refused(Refusal::Mismatch(m)));
                }
            }
        }
        let Some(Pending::StateRead(p)) = self.pending.get(&op) else {
            return;
        };
        if p.replies.len() == p.replicas.len() {
            self.finish_state_read(env, op);
        }
    }

    /// Read repair for merged states: every replica that answered with less than the join of
    /// all the answers gets the join.
    fn finish_state_read<S: Storage>(&mut self, env: &mut Env<'_, S>, op: OpId) {
        let Some(Pending::StateRead(p)) = self.remove_op(op) else {
            return;
        };
        let Ok(Some(joined)) = join(p.replies.values()) else {
            return;
        };
        let mut repairs = 0;
        for (&node, state) in &p.replies {
            if state.as_ref() == Some(&joined) {
                continue;
            }
            repairs += 1;
            if node == self.node {
                let update = Update::State(joined.clone());
                if let Err(e) = self.store_update(env.storage, &p.keyspace, &p.key, &update) {
                    tracing::error!(keyspace = p.keyspace, error = ?e, "local read repair failed");
                }
            } else {
                let message = Message::RepairState {
                    keyspace: p.keyspace.clone(),
                    key: p.key.clone(),
                    state: joined.clone(),
                };
                self.send(node, message);
            }
        }
        self.stats_mut(&p.keyspace).read_repairs += repairs;
    }

    /// Last-writer-wins at a replica: stores `record` unless the replica holds a newer one.
    /// `tracked: false` only for the planted bug that skips the anti-entropy tree.
    /// Whether this node takes `record` as a replica of a coordinator's write: its timestamp is
    /// within `clock_forward_bound_ms` of this node's wall clock (observing it keeps this
    /// node's later stamps after it). A record stamped further ahead comes from a coordinator
    /// whose clock runs ahead; the write is refused and counted, so that a skewed clock cannot
    /// make its writes win every conflict. (Copies that replication moves later, by read
    /// repair, hinted handoff or anti-entropy, are taken whatever their stamp, and counted:
    /// refusing them would leave replicas apart for good.)
    pub(crate) fn admits<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        keyspace: &str,
        record: &Record,
    ) -> bool {
        let admitted = env.hlc.observe(record.timestamp, env.now.wall_ms).is_ok();
        if !admitted {
            self.stats_mut(keyspace).clock_ahead_refused += 1;
        }
        admitted
    }

    /// Observes the stamp of a record replication moves here, counting one too far ahead.
    pub(crate) fn follow_stamp<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        keyspace: &str,
        record: &Record,
    ) {
        if env.hlc.observe(record.timestamp, env.now.wall_ms).is_err() {
            self.stats_mut(keyspace).clock_ahead_copied += 1;
        }
    }

    fn apply_record<S: Storage>(
        &mut self,
        storage: &mut S,
        keyspace: &str,
        key: &[u8],
        record: &Record,
        tracked: bool,
    ) -> Result<Applied, StorageError> {
        // A tombstone collected here lately still orders writes as if it were held (so a
        // straggling older write, or the tombstone itself handed back by a replica that has
        // not collected it yet, is refused or recognised rather than stored).
        let existing = load(storage, keyspace, key)?.or_else(|| {
            self.anti_entropy
                .collected(keyspace, key)
                .map(|timestamp| Record {
                    timestamp,
                    value: None,
                })
        });
        match existing {
            Some(e) if e.timestamp > record.timestamp => Ok(Applied {
                accepted: false,
                current: e.timestamp,
                existed: e.value.is_some(),
                changed: false,
            }),
            // The same record again: a duplicate delivery, acknowledged as accepted.
            Some(e) if e.timestamp == record.timestamp && e.value == record.value => Ok(Applied {
                accepted: true,
                current: e.timestamp,
                existed: e.value.is_some(),
                changed: false,
            }),
            // A different record under the same timestamp: a timestamp was reused (the node's
            // clock ceiling exists so that it never is). Refuse, so the coordinator re-stamps
            // past it, rather than acknowledge a write this replica does not hold.
            Some(e) if e.timestamp == record.timestamp => Ok(Applied {
                accepted: false,
                current: e.timestamp,
                existed: e.value.is_some(),
                changed: false,
            }),
            existing => {
                let tombstone = record.value.is_none().then_some(record.timestamp);
                self.put_data(storage, keyspace, key, &record.encode(), tombstone, tracked)?;
                let existed = existing.is_some_and(|e| e.value.is_some());
                Ok(Applied {
                    accepted: true,
                    current: record.timestamp,
                    existed,
                    changed: true,
                })
            }
        }
    }

    /// Loads the local state of `key`, folds `update` into it with the CRDT merge and stages
    /// the result if it changed; counts LWW losers and siblings.
    fn store_update<S: Storage>(
        &mut self,
        storage: &mut S,
        keyspace: &str,
        key: &[u8],
        update: &Update,
    ) -> Result<(), Outcome> {
        self.store_update_changed(storage, keyspace, key, update)
            .map(|_| ())
    }

    /// [`Self::store_update`], telling whether the stored state changed.
    fn store_update_changed<S: Storage>(
        &mut self,
        storage: &mut S,
        keyspace: &str,
        key: &[u8],
        update: &Update,
    ) -> Result<bool, Outcome> {
        let stored = self
            .cached_stored(storage, keyspace, key)
            .map_err(|e| Outcome::Storage(e.to_string()))?;
        self.merge_and_store(storage, keyspace, key, stored, update, None)
    }

    /// [`Self::store_update`] over a state already loaded (`stored`: its bytes and its decoding).
    /// With a `limit` (a coordinator's own operation that may grow the state) a result larger
    /// than it is refused and nothing is stored; merges from others are never refused. Tells
    /// whether the stored state changed.
    fn merge_and_store<S: Storage>(
        &mut self,
        storage: &mut S,
        keyspace: &str,
        key: &[u8],
        stored: Option<(Vec<u8>, State)>,
        update: &Update,
        limit: Option<usize>,
    ) -> Result<bool, Outcome> {
        let (bytes, mut current) = match stored {
            Some((bytes, state)) => (Some(bytes), Some(state)),
            None => (None, None),
        };
        let applied = state::apply_update(&mut current, update)
            .map_err(|m| Outcome::Refused(Refusal::Mismatch(m)))?;
        let encoded = current.as_ref().expect("an update leaves a state").encode();
        if let Some(max) = limit
            && encoded.len() > max
        {
            let bytes = encoded.len();
            return Err(Outcome::Refused(Refusal::StateTooLarge { bytes, max }));
        }
        // Encodings are canonical: equal bytes, equal state (a duplicate changes nothing).
        let changed = bytes.as_deref() != Some(encoded.as_slice());
        if changed {
            self.put_data(storage, keyspace, key, &encoded, None, true)
                .map_err(|e| Outcome::Storage(e.to_string()))?;
        }
        self.cache.insert(
            keyspace,
            key,
            encoded,
            current.expect("an update leaves a state"),
        );
        let stats = self.stats_mut(keyspace);
        stats.lww_discarded += applied.lww_discarded;
        let (before, after) = (applied.siblings_before, applied.siblings_after);
        stats.siblings_created += after.saturating_sub(before.max(1)) as u64;
        stats.siblings_resolved += before.saturating_sub(after.max(1)) as u64;
        Ok(changed)
    }

    /// The stored state of `key` (with its bytes), decoded through the cache.
    fn cached_stored<S: Storage>(
        &mut self,
        storage: &S,
        keyspace: &str,
        key: &[u8],
    ) -> Result<Option<(Vec<u8>, State)>, StorageError> {
        let Some(bytes) = storage.get(&table_name(keyspace), key)? else {
            return Ok(None);
        };
        if let Some(state) = self.cache.get(keyspace, key, &bytes) {
            return Ok(Some((bytes, state)));
        }
        let state = State::decode(&bytes)
            .map_err(|e| StorageError::Engine(format!("key in keyspace {keyspace}: {e}")))?;
        self.cache
            .insert(keyspace, key, bytes.clone(), state.clone());
        Ok(Some((bytes, state)))
    }

    fn cached_state<S: Storage>(
        &mut self,
        storage: &S,
        keyspace: &str,
        key: &[u8],
    ) -> Result<Option<State>, StorageError> {
        Ok(self
            .cached_stored(storage, keyspace, key)?
            .map(|(_, state)| state))
    }

    /// Answers whoever awaits an operation: the client, or the node that forwarded it.
    fn answer<S: Storage>(&mut self, env: &mut Env<'_, S>, requester: Requester, outcome: Outcome) {
        match requester {
            Requester::Client(request) => self.reply(request, outcome),
            Requester::Peer { node, op } => {
                let message = Message::ForwardReply {
                    op,
                    outcome,
                    clock: env.hlc.last(),
                };
                self.send(node, message);
            }
        }
    }

    /// A forwarded operation arrives at a replica of its key.
    #[allow(clippy::too_many_arguments)]
    fn on_forward<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        sent: HlcTimestamp,
        keyspace: KeyspaceConfig,
        key: Bytes,
        operation: Operation,
        r: u8,
        w: u8,
    ) {
        let requester = Requester::Peer { node: from, op };
        // A forward stamped further ahead than our clock may jump would not be below our
        // restart floor after a crash: refuse it rather than run it unprotected.
        let admission = match env.hlc.observe(sent, env.now.wall_ms) {
            Ok(()) => self.forwards.admit(from, sent, env.now.instant),
            Err(_) => Admission::Stale,
        };
        match admission {
            Admission::Fresh => {}
            Admission::Duplicate => return,
            Admission::Stale => {
                let outcome = Outcome::Unavailable {
                    coordinator: self.node,
                };
                return self.answer(env, requester, outcome);
            }
        }
        let valid = operation.policy() == keyspace.merge
            && keyspace.merge != MergePolicy::Lww
            && (1..=keyspace.n).contains(&r)
            && (1..=keyspace.n).contains(&w)
            && self
                .placement(&keyspace, &key, true)
                .all()
                .contains(&self.node);
        if valid {
            self.learn_keyspace(env.storage, &keyspace, Source::Peer);
        } else {
            tracing::warn!(%from, keyspace = keyspace.name, "forward this node cannot coordinate");
            return self.answer(
                env,
                requester,
                Outcome::Refused(Refusal::NotAReplica { node: self.node }),
            );
        }
        self.start_apply(env, requester, keyspace, key, operation, r, w);
    }

    /// (Re)sends the current attempt of write `op` to every replica (healthy ones first) and
    /// to the fallbacks standing in for suspected ones, applying it locally first.
    fn send_write_attempt<S: Storage>(&mut self, env: &mut Env<'_, S>, op: OpId) {
        let Some(Pending::Write(p)) = self.pending.get(&op) else {
            return;
        };
        let (keyspace, key, record, replicas, assigned) = (
            p.keyspace.clone(),
            p.key.clone(),
            p.record.clone(),
            p.replicas.clone(),
            p.fallbacks.assigned.clone(),
        );
        for to in self.healthy_first(&replicas) {
            if to != self.node {
                let message = Message::Write {
                    op,
                    keyspace: keyspace.clone(),
                    key: key.clone(),
                    record: record.clone(),
                };
                self.send(to, message);
            }
        }
        for (&to, &owner) in &assigned {
            if to != self.node {
                self.send_hinted_write(op, to, owner, &keyspace, &key, &record);
            }
        }
        if replicas.contains(&self.node) {
            match self.apply_record(env.storage, &keyspace, &key, &record, true) {
                Ok(applied) => {
                    if !applied.accepted {
                        self.stats_mut(&keyspace).lww_discarded += 1;
                    }
                    self.on_write_ack(env, self.node, op, record.timestamp, applied)
                }
                Err(e) => self.fail_op(env, op, Outcome::Storage(e.to_string())),
            }
        } else if let Some(&owner) = assigned.get(&self.node) {
            // This coordinator is itself a fallback for a suspected owner.
            self.hint_write_locally(env, op, owner, &keyspace, &key, &record);
        }
    }

    fn send_hinted_write(
        &mut self,
        op: OpId,
        to: NodeId,
        owner: NodeId,
        keyspace: &str,
        key: &Bytes,
        record: &Record,
    ) {
        let message = Message::HintedWrite {
            op,
            keyspace: keyspace.to_string(),
            key: key.clone(),
            record: record.clone(),
            owner,
        };
        self.send(to, message);
    }

    /// The coordinator keeps the hint for `owner` itself and counts its own answer.
    fn hint_write_locally<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        op: OpId,
        owner: NodeId,
        keyspace: &str,
        key: &Bytes,
        record: &Record,
    ) {
        match self.keep_hinted_record(env, keyspace, key, record, owner) {
            Some(Ok(applied)) => self.on_write_ack(env, self.node, op, record.timestamp, applied),
            Some(Err(())) => self.on_hint_refused(env, self.node, op),
            None => {}
        }
    }

    /// A fallback keeps `record` as a hint for `owner`. `Ok`: what to acknowledge; `Err`: the
    /// store refused it; `None`: storage failed (no answer, as for a replica).
    fn keep_hinted_record<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        keyspace: &str,
        key: &Bytes,
        record: &Record,
        owner: NodeId,
    ) -> Option<Result<Applied, ()>> {
        // Later local stamps order after the writer's, as at a replica.
        let _ = env.hlc.observe(record.timestamp, env.now.wall_ms);
        if owner == self.node {
            // A coordinator whose ring disagrees with ours: we are the owner, so just apply.
            return match self.apply_record(env.storage, keyspace, key, record, true) {
                Ok(applied) => {
                    if !applied.accepted {
                        self.stats_mut(keyspace).lww_discarded += 1;
                    }
                    Some(Ok(applied))
                }
                Err(e) => {
                    tracing::error!(keyspace, error = %e, "replica write failed");
                    None
                }
            };
        }
        if self.config.bug_hint_not_stored {
            // PLANTED BUG: acknowledge a hint that was never stored.
            return Some(Ok(Applied {
                accepted: true,
                current: record.timestamp,
                existed: false,
                changed: false,
            }));
        }
        if !self.hints.is_loaded() {
            self.stats_mut(keyspace).hints_refused += 1;
            return Some(Err(()));
        }
        let hint = HintKey {
            owner,
            keyspace: keyspace.to_string(),
            key: key.clone(),
        };
        let stored = self
            .hints
            .store_record(env.storage, &hint, record, env.now.wall_ms);
        let answer = match stored {
            Ok(Stored::Accepted { existed }) => {
                self.stats_mut(keyspace).hints_stored += 1;
                Some(Ok(Applied {
                    accepted: true,
                    current: record.timestamp,
                    existed,
                    changed: false,
                }))
            }
            Ok(Stored::Older { current, existed }) => {
                self.stats_mut(keyspace).lww_discarded += 1;
                Some(Ok(Applied {
                    accepted: false,
                    current,
                    existed,
                    changed: false,
                }))
            }
            Ok(Stored::Refused) => {
                self.stats_mut(keyspace).hints_refused += 1;
                Some(Err(()))
            }
            Err(e) => {
                tracing::error!(keyspace, %owner, error = %e, "storing a hint failed");
                None
            }
        };
        self.note_pending(keyspace);
        answer
    }

    /// A fallback keeps a whole `state` as a hint for `owner` (merged into what it holds).
    fn keep_hinted_state<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        keyspace: &str,
        key: &Bytes,
        state: &State,
        owner: NodeId,
    ) -> Option<Result<(), ()>> {
        if owner == self.node {
            let update = Update::State(state.clone());
            return match self.store_update(env.storage, keyspace, key, &update) {
                Ok(()) => Some(Ok(())),
                Err(e) => {
                    tracing::error!(keyspace, error = ?e, "replica merge failed");
                    None
                }
            };
        }
        if self.config.bug_hint_not_stored {
            return Some(Ok(())); // PLANTED BUG: acknowledge a hint that was never stored
        }
        if !self.hints.is_loaded() {
            self.stats_mut(keyspace).hints_refused += 1;
            return Some(Err(()));
        }
        let hint = HintKey {
            owner,
            keyspace: keyspace.to_string(),
            key: key.clone(),
        };
        let answer = match self
            .hints
            .store_state(env.storage, &hint, state, env.now.wall_ms)
        {
            Ok(Stored::Accepted { .. }) => {
                self.stats_mut(keyspace).hints_stored += 1;
                Some(Ok(()))
            }
            Ok(Stored::Older { .. }) => unreachable!("states merge; only records are older"),
            Ok(Stored::Refused) => {
                self.stats_mut(keyspace).hints_refused += 1;
                Some(Err(()))
            }
            Err(e) => {
                tracing::error!(keyspace, %owner, error = %e, "storing a hint failed");
                None
            }
        };
        self.note_pending(keyspace);
        answer
    }

    /// Fallback `from` refused to hold a hint for operation `op`: the next candidate past the
    /// preference list that this node does not suspect takes its place, if there is one.
    fn on_hint_refused<S: Storage>(&mut self, env: &mut Env<'_, S>, from: NodeId, op: OpId) {
        let fallbacks = match self.pending.get_mut(&op) {
            Some(Pending::Write(p)) => &mut p.fallbacks,
            Some(Pending::Apply(p)) => &mut p.fallbacks,
            _ => return,
        };
        let Some(owner) = fallbacks.assigned.remove(&from) else {
            return;
        };
        fallbacks.refused.insert(from);
        let Some(to) = fallbacks.next_candidate(&self.detector) else {
            return; // nobody left to stand in for `owner`; the owner itself may still answer
        };
        fallbacks.assigned.insert(to, owner);
        match self.pending.get(&op) {
            Some(Pending::Write(p)) => {
                let (keyspace, key, record) = (p.keyspace.clone(), p.key.clone(), p.record.clone());
                if to == self.node {
                    self.hint_write_locally(env, op, owner, &keyspace, &key, &record);
                } else {
                    self.send_hinted_write(op, to, owner, &keyspace, &key, &record);
                }
            }
            Some(Pending::Apply(p)) => {
                let ApplyPhase::Writing {
                    hint: Some(state), ..
                } = &p.phase
                else {
                    return; // fallbacks are asked only once the update is shipped
                };
                assert_ne!(
                    to, self.node,
                    "the coordinating replica is never a fallback"
                );
                let message = Message::HintedMerge {
                    op,
                    keyspace: p.keyspace.name.clone(),
                    key: p.key.clone(),
                    state: state.clone(),
                    owner,
                };
                self.send(to, message);
            }
            _ => unreachable!("looked up above"),
        }
    }

    /// Background work: suspicions and probes, hint expiry, hint delivery.
    fn maintain<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        let now = env.now.instant;
        self.next_maintenance = Some(now + self.config.maintenance_interval);
        for peer in self.detector.tick(now) {
            // Not a request the detector counts: the peer is suspected already.
            self.effects.push_back(Effect::Send {
                to: peer,
                message: Message::Ping,
            });
        }
        for hint in self.hints.expired(env.now.wall_ms) {
            match self.hints.remove(env.storage, &hint) {
                Ok(()) => {
                    tracing::warn!(keyspace = hint.keyspace, owner = %hint.owner, "hint expired undelivered");
                    self.stats_mut(&hint.keyspace).hints_expired += 1;
                    self.note_pending(&hint.keyspace);
                }
                Err(e) => tracing::error!(error = %e, "deleting an expired hint failed"),
            }
        }
        self.hints.forget_expired_deliveries(now);
        for owner in self.hints.owners() {
            if owner == self.node || self.detector.is_suspected(owner) {
                continue;
            }
            for hint in self.hints.due(owner) {
                let payload = match self.hints.get(env.storage, &hint) {
                    Ok(Some(payload)) => payload,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!(keyspace = hint.keyspace, error = %e, "reading a hint failed");
                        continue;
                    }
                };
                let op = self.new_op();
                let deadline = now + self.config.request_timeout;
                self.hints.delivering(op, hint.clone(), deadline);
                let message = Message::Handoff {
                    op,
                    keyspace: hint.keyspace,
                    key: hint.key,
                    payload,
                };
                self.send(owner, message);
            }
        }
        self.maintain_handoff(env);
        self.maintain_anti_entropy(env);
    }

    /// An owner receives a hint a fallback held for it: applied like a write or a merge, then
    /// acknowledged (after this node's sync, so the fallback deletes it only once it is
    /// durable here).
    fn on_handoff<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        keyspace: String,
        key: Bytes,
        payload: HintPayload,
    ) {
        let applied = match payload {
            HintPayload::Record(record) => {
                self.follow_stamp(env, &keyspace, &record);
                match self.apply_record(env.storage, &keyspace, &key, &record, true) {
                    // Refused: this replica holds a newer record, which supersedes the hint.
                    Ok(a) => {
                        if !a.accepted {
                            self.stats_mut(&keyspace).lww_discarded += 1;
                        }
                        true
                    }
                    Err(e) => {
                        tracing::error!(%from, keyspace, error = %e, "handoff write failed");
                        false
                    }
                }
            }
            HintPayload::State(state) => {
                let update = Update::State(state);
                match self.store_update(env.storage, &keyspace, &key, &update) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(%from, keyspace, error = ?e, "handoff merge failed");
                        false
                    }
                }
            }
        };
        if applied {
            self.send(from, Message::HandoffAck { op });
        }
    }

    /// A fallback hears that an owner holds a hint it delivered.
    fn on_handoff_ack<S: Storage>(&mut self, env: &mut Env<'_, S>, from: NodeId, op: OpId) {
        let Delivered::Complete(hint) = self.hints.acknowledged(op, from) else {
            return;
        };
        match self.hints.remove(env.storage, &hint) {
            Ok(()) => {
                self.stats_mut(&hint.keyspace).hints_delivered += 1;
                self.note_pending(&hint.keyspace);
            }
            Err(e) => tracing::error!(error = %e, "deleting a delivered hint failed"),
        }
    }

    pub fn handle_message<S: Storage>(&mut self, env: &mut Env<'_, S>, from: NodeId, msg: Message) {
        self.begin(env);
        // Any message at all shows the peer is reachable (health).
        self.detector.on_heard(from, env.now.instant);
        match msg {
            Message::Write {
                op,
                keyspace,
                key,
                record,
            } => {
                if !self.admits(env, &keyspace, &record) {
                    let timestamp = record.timestamp;
                    self.send(from, Message::ClockAheadRefused { op, timestamp });
                    return;
                }
                // `tracked: false` only under the planted bug of this path.
                match self.apply_record(env.storage, &keyspace, &key, &record, false) {
                    Ok(a) => {
                        if !a.accepted {
                            self.stats_mut(&keyspace).lww_discarded += 1;
                        }
                        let message = Message::WriteAck {
                            op,
                            timestamp: record.timestamp,
                            accepted: a.accepted,
                            current: a.current,
                            existed: a.existed,
                        };
                        self.send(from, message);
                    }
                    // No acknowledgement: the coordinator counts this replica as unavailable.
                    Err(e) => tracing::error!(%from, keyspace, error = %e, "replica write failed"),
                }
            }
            Message::WriteAck {
                op,
                timestamp,
                accepted,
                current,
                existed,
            } => {
                let applied = Applied {
                    accepted,
                    current,
                    existed,
                    changed: false, // not carried: a coordinator has no use for it
                };
                self.on_write_ack(env, from, op, timestamp, applied);
            }
            Message::ClockAheadRefused { op, timestamp } => {
                // This node's clock runs ahead of the refusing replica's by more than the
                // bound: stop coordinating writes for a while (see `write_with_mode`).
                self.clock_ahead_until = Some(env.now.instant + CLOCK_AHEAD_HOLD);
                self.on_clock_ahead(env, from, op, timestamp);
            }
            Message::Read { op, keyspace, key } => match load(env.storage, &keyspace, &key) {
                Ok(record) => {
                    let message = Message::ReadReply { op, record };
                    self.send(from, message);
                }
                Err(e) => tracing::error!(%from, keyspace, error = %e, "replica read failed"),
            },
            Message::ReadReply { op, record } => {
                if let Some(r) = &record {
                    let _ = env.hlc.observe(r.timestamp, env.now.wall_ms);
                }
                self.on_read_reply(env, from, op, record);
            }
            Message::Repair {
                keyspace,
                key,
                record,
            } => {
                self.follow_stamp(env, &keyspace, &record);
                if let Err(e) = self.apply_record(env.storage, &keyspace, &key, &record, true) {
                    tracing::error!(%from, keyspace, error = %e, "read repair failed");
                }
            }
            Message::ReadState { op, keyspace, key } => {
                match self.cached_state(env.storage, &keyspace, &key) {
                    Ok(state) => {
                        let message = Message::StateReply { op, state };
                        self.send(from, message);
                    }
                    Err(e) => {
                        tracing::error!(%from, keyspace, error = %e, "replica state read failed")
                    }
                }
            }
            Message::StateReply { op, state } => match self.pending.get(&op) {
                Some(Pending::Apply(_)) => self.on_apply_read_reply(env, from, op, state),
                Some(Pending::StateRead(_)) => self.on_state_read_reply(env, from, op, state),
                _ => {}
            },
            Message::Merge {
                op,
                keyspace,
                key,
                update,
            } => {
                if let Update::Map(deltas) = &update {
                    // As for LWW writes: later local stamps order after the writer's.
                    for d in deltas {
                        let _ = env.hlc.observe(d.register.timestamp(), env.now.wall_ms);
                    }
                }
                match self.store_update(env.storage, &keyspace, &key, &update) {
                    Ok(()) => {
                        let message = Message::MergeAck { op };
                        self.send(from, message);
                    }
                    // No acknowledgement: the coordinator counts this replica as unavailable.
                    Err(e) => tracing::error!(%from, keyspace, error = ?e, "replica merge failed"),
                }
            }
            Message::MergeAck { op } => self.on_merge_ack(env, from, op),
            Message::RepairState {
                keyspace,
                key,
                state,
            } => {
                let update = Update::State(state);
                if let Err(e) = self.store_update(env.storage, &keyspace, &key, &update) {
                    tracing::error!(%from, keyspace, error = ?e, "read repair failed");
                }
            }
            Message::Forward {
                op,
                sent,
                keyspace,
                key,
                operation,
                r,
                w,
            } => self.on_forward(env, from, op, sent, *keyspace, key, operation, r, w),
            Message::ForwardReply { op, outcome, clock } => {
                let _ = env.hlc.observe(clock, env.now.wall_ms);
                if let Some(Pending::Forward(p)) = self.pending.get(&op)
                    && p.coordinator == from
                {
                    let request = p.request;
                    self.remove_op(op);
                    self.reply(request, outcome);
                }
            }
            Message::HintedWrite {
                op,
                ref keyspace,
                ref record,
                ..
            } if !self.admits(env, keyspace, record) => {
                let timestamp = record.timestamp;
                self.send(from, Message::ClockAheadRefused { op, timestamp });
            }
            Message::HintedWrite {
                op,
                keyspace,
                key,
                record,
                owner,
            } => match self.keep_hinted_record(env, &keyspace, &key, &record, owner) {
                Some(Ok(applied)) => {
                    let message = Message::WriteAck {
                        op,
                        timestamp: record.timestamp,
                        accepted: applied.accepted,
                        current: applied.current,
                        existed: applied.existed,
                    };
                    self.send(from, message);
                }
                Some(Err(())) => self.send(from, Message::HintRefused { op }),
                None => {}
            },
            Message::HintedMerge {
                op,
                keyspace,
                key,
                state,
                owner,
            } => match self.keep_hinted_state(env, &keyspace, &key, &state, owner) {
                Some(Ok(())) => self.send(from, Message::MergeAck { op }),
                Some(Err(())) => self.send(from, Message::HintRefused { op }),
                None => {}
            },
            Message::HintRefused { op } => self.on_hint_refused(env, from, op),
            Message::Handoff {
                op,
                keyspace,
                key,
                payload,
            } => self.on_handoff(env, from, op, keyspace, key, payload),
            Message::HandoffAck { op } => self.on_handoff_ack(env, from, op),
            Message::Ping => self.effects.push_back(Effect::Send {
                to: from,
                message: Message::Pong,
            }),
            Message::Pong => {} // heard: that was the point
            Message::TreeHashes {
                op,
                keyspace,
                n,
                replicas,
                level,
                hashes,
            } => self.on_tree_hashes(env, from, op, keyspace, n, replicas, level, hashes),
            Message::TreeDiff {
                op,
                level,
                differing,
            } => self.on_tree_diff(env, from, op, level, differing),
            Message::KeyHashes {
                op,
                keyspace,
                n,
                replicas,
                from: first,
                to: last,
                keys,
            } => self.on_key_hashes(env, from, op, keyspace, n, replicas, (first, last), keys),
            Message::KeyDiff {
                op,
                push,
                pull,
                through,
            } => self.on_key_diff(env, from, op, push, pull, through),
            Message::KeyValues { keyspace, entries } => self.on_key_values(env, keyspace, entries),
            Message::ExchangeRefused { op } => self.on_exchange_refused(env, from, op),
            Message::MoveBatch {
                op,
                keyspace,
                entries,
            } => self.on_move_batch(env, from, op, keyspace, entries),
            Message::MoveAck { op } => self.on_move_ack(env, from, op),
        }
    }

    fn on_write_ack<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        timestamp: HlcTimestamp,
        applied: Applied,
    ) {
        let bug = self.config.bug_ack_before_quorum;
        let Some(Pending::Write(p)) = self.pending.get_mut(&op) else {
            return;
        };
        let slot = p.fallbacks.slot(&p.replicas, from);
        let Some(slot) = slot.filter(|_| timestamp == p.record.timestamp) else {
            return; // an acknowledgement of an earlier attempt, or from a stranger
        };
        if !applied.accepted {
            // A replica holds a newer record: re-stamp past it, or give up.
            if p.attempts >= WRITE_ATTEMPTS_MAX {
                self.fail_op(env, op, Outcome::Superseded);
                return;
            }
            if env.hlc.observe(applied.current, env.now.wall_ms).is_err() {
                // The newer record is further in the future than our clock may jump: it came
                // from a badly skewed clock. Do not follow it: this replica cannot count
                // toward W, the others still may.
                self.on_clock_ahead(env, from, op, timestamp);
                return;
            }
            p.attempts += 1;
            p.record.timestamp = env.hlc.now(env.now.wall_ms);
            p.accepted.clear();
            p.existed = false;
            let keyspace = p.keyspace.clone();
            self.stats_mut(&keyspace).write_restamps += 1;
            self.send_write_attempt(env, op);
            return;
        }
        p.accepted.insert(slot);
        p.existed |= applied.existed;
        let done = if bug {
            !p.accepted.is_empty()
        } else {
            p.placement.met(|n| p.accepted.contains(&n), p.w)
        };
        if done {
            let (request, existed) = (p.request, p.existed);
            self.remove_op(op);
            self.reply(request, Outcome::Written { existed });
        }
    }

    fn on_read_reply<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        record: Option<Record>,
    ) {
        let Some(Pending::Read(p)) = self.pending.get_mut(&op) else {
            return;
        };
        if !p.replicas.contains(&from) {
            return;
        }
        p.replies.insert(from, record);
        if !p.replied && p.placement.met(|n| p.replies.contains_key(&n), p.r) {
            p.replied = true;
            let value = newest(&p.replies).and_then(|r| r.value.clone());
            let request = p.request;
            self.reply(request, Outcome::Read { value });
        }
        let Some(Pending::Read(p)) = self.pending.get(&op) else {
            return;
        };
        if p.replies.len() == p.replicas.len() {
            self.finish_read(env, op);
        }
    }

    /// Read repair: sends the newest record seen to every replica that answered with less, and
    /// applies it to the local replica directly.
    fn finish_read<S: Storage>(&mut self, env: &mut Env<'_, S>, op: OpId) {
        let Some(Pending::Read(p)) = self.remove_op(op) else {
            return;
        };
        let Some(newest) = newest(&p.replies).cloned() else {
            return;
        };
        let mut repairs = 0;
        for (&node, record) in &p.replies {
            let stale = record
                .as_ref()
                .is_none_or(|r| r.timestamp < newest.timestamp);
            if stale && node == self.node {
                repairs += 1;
                if let Err(e) = self.apply_record(env.storage, &p.keyspace, &p.key, &newest, true) {
                    tracing::error!(keyspace = p.keyspace, error = %e, "local read repair failed");
                }
            } else if stale {
                repairs += 1;
                let message = Message::Repair {
                    keyspace: p.keyspace.clone(),
                    key: p.key.clone(),
                    record: newest.clone(),
                };
                self.send(node, message);
            }
        }
        self.stats_mut(&p.keyspace).read_repairs += repairs;
    }

    fn remove_op(&mut self, op: OpId) -> Option<Pending> {
        if let Some(m) = &mut self.moving {
            m.pre_move.remove(&op);
        }
        let p = self.pending.remove(&op)?;
        self.deadlines.remove(&(p.deadline(), op));
        Some(p)
    }

    /// A node of the write's preference list (or its fallback) cannot take attempt `timestamp`
    /// for a clock too far ahead: ours (it refused the record) or the one that stamped the
    /// record it holds (we may not follow it). Its place cannot count toward W; once too many
    /// places are lost, the write fails with a clear error instead of waiting for its deadline.
    fn on_clock_ahead<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        timestamp: HlcTimestamp,
    ) {
        let Some(Pending::Write(p)) = self.pending.get_mut(&op) else {
            return;
        };
        let Some(slot) = p
            .fallbacks
            .slot(&p.replicas, from)
            .filter(|_| timestamp == p.record.timestamp)
        else {
            return;
        };
        p.refused.insert(slot);
        p.accepted.remove(&slot);
        let possible = p.placement.possible(|n| p.refused.contains(&n), p.w);
        let keyspace = p.keyspace.clone();
        if !possible {
            self.stats_mut(&keyspace).clock_ahead_refused += 1;
            self.fail_op(env, op, Outcome::Refused(Refusal::ClockAhead));
        }
    }

    fn fail_op<S: Storage>(&mut self, env: &mut Env<'_, S>, op: OpId, outcome: Outcome) {
        match self.remove_op(op) {
            Some(Pending::Write(p)) => self.reply(p.request, outcome),
            Some(Pending::Read(p)) if !p.replied => self.reply(p.request, outcome),
            Some(Pending::StateRead(p)) if !p.replied => self.reply(p.request, outcome),
            Some(Pending::Apply(p)) => self.answer(env, p.requester, outcome),
            Some(Pending::Forward(p)) => self.reply(p.request, outcome),
            _ => {}
        }
    }

    /// Expires operations whose deadline has passed, and does the background work when due.
    pub fn handle_timeout<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        self.begin(env);
        if self
            .next_maintenance
            .is_some_and(|at| at <= env.now.instant)
        {
            self.maintain(env);
        }
        while let Some(&(deadline, op)) = self.deadlines.first() {
            if deadline > env.now.instant {
                break;
            }
            match self.pending.get(&op) {
                Some(Pending::Write(p)) => {
                    let outcome = Outcome::QuorumFailed {
                        acks: p.placement.count(|n| p.accepted.contains(&n)) as u8,
                        needed: p.w,
                    };
                    let keyspace = p.keyspace.clone();
                    self.stats_mut(&keyspace).quorum_failures += 1;
                    self.fail_op(env, op, outcome);
                }
                Some(Pending::Read(p)) if p.replied => self.finish_read(env, op),
                Some(Pending::Read(p)) => {
                    let outcome = Outcome::QuorumFailed {
                        acks: p.placement.count(|n| p.replies.contains_key(&n)) as u8,
                        needed: p.r,
                    };
                    let keyspace = p.keyspace.clone();
                    self.stats_mut(&keyspace).quorum_failures += 1;
                    self.fail_op(env, op, outcome);
                }
                Some(Pending::StateRead(p)) if p.replied => self.finish_state_read(env, op),
                Some(Pending::StateRead(p)) => {
                    let outcome = Outcome::QuorumFailed {
                        acks: p.placement.count(|n| p.replies.contains_key(&n)) as u8,
                        needed: p.r,
                    };
                    let keyspace = p.keyspace.clone();
                    self.stats_mut(&keyspace).quorum_failures += 1;
                    self.fail_op(env, op, outcome);
                }
                Some(Pending::Apply(p)) => {
                    let outcome = match &p.phase {
                        ApplyPhase::Reading { replies } => Outcome::QuorumFailed {
                            acks: p.placement.count(|n| replies.contains_key(&n)) as u8,
                            needed: p.r,
                        },
                        ApplyPhase::Writing { accepted, .. } => Outcome::QuorumFailed {
                            acks: p.placement.count(|n| accepted.contains(&n)) as u8,
                            needed: p.w,
                        },
                    };
                    let keyspace = p.keyspace.name.clone();
                    self.stats_mut(&keyspace).quorum_failures += 1;
                    self.fail_op(env, op, outcome);
                }
                Some(Pending::Forward(p)) => {
                    let outcome = Outcome::Unavailable {
                        coordinator: p.coordinator,
                    };
                    self.fail_op(env, op, outcome);
                }
                None => {
                    self.deadlines.remove(&(deadline, op));
                }
            }
        }
    }

    /// Structural invariants, checked by the simulator after every step.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.pending.len(),
            self.deadlines.len(),
            "one deadline per pending op"
        );
        self.detector.check_invariants();
        self.hints.check_invariants();
        self.check_move_invariants();
        self.anti_entropy.check_invariants();
        if self.hints.is_loaded() {
            for (keyspace, stats) in &self.stats {
                assert_eq!(
                    stats.hints_pending,
                    self.hints.pending(keyspace),
                    "the hints gauge of {keyspace} follows the store"
                );
            }
        }
        for (deadline, op) in &self.deadlines {
            let d = match self.pending.get(op).expect("deadline without op") {
                Pending::Write(w) => {
                    assert!(
                        !w.placement.met(|n| w.accepted.contains(&n), w.w)
                            || self.config.bug_ack_before_quorum
                    );
                    assert_eq!(w.replicas, w.placement.all(), "a write goes to every owner");
                    assert!(w.attempts <= WRITE_ATTEMPTS_MAX);
                    assert!(
                        w.accepted.iter().all(|a| w.replicas.contains(a)),
                        "W counts preference-list nodes"
                    );
                    w.fallbacks.check(&w.replicas);
                    w.deadline
                }
                Pending::Read(r) => r.deadline,
                Pending::Apply(a) => {
                    if let ApplyPhase::Writing { accepted, .. } = &a.phase {
                        assert!(
                            !a.placement.met(|n| accepted.contains(&n), a.w)
                                || self.config.bug_ack_before_quorum
                        );
                    }
                    assert_eq!(a.replicas, a.placement.all());
                    assert!(a.replicas.contains(&self.node), "a replica coordinates");
                    a.fallbacks.check(&a.replicas);
                    a.deadline
                }
                Pending::StateRead(r) => r.deadline,
                Pending::Forward(f) => f.deadline,
            };
            assert_eq!(*deadline, d);
        }
    }
}

impl Pending {
    fn deadline(&self) -> Instant {
        match self {
            Pending::Write(w) => w.deadline,
            Pending::Read(r) => r.deadline,
            Pending::Apply(a) => a.deadline,
            Pending::StateRead(r) => r.deadline,
            Pending::Forward(f) => f.deadline,
        }
    }
}

/// The join of the states some replicas returned (`None`: none holds the key).
fn join<'a>(
    states: impl IntoIterator<Item = &'a Option<State>>,
) -> Result<Option<State>, state::PolicyMismatch> {
    let mut joined: Option<State> = None;
    for state in states.into_iter().flatten() {
        match &mut joined {
            None => joined = Some(state.clone()),
            Some(j) => j.merge(state)?,
        }
    }
    Ok(joined)
}

/// The state of `key` in a keyspace whose merge policy is not `lww`.
pub fn load_state<S: Storage>(
    storage: &S,
    keyspace: &str,
    key: &[u8],
) -> Result<Option<State>, StorageError> {
    Ok(load_stored(storage, keyspace, key)?.map(|(_, state)| state))
}

/// The stored bytes of `key` with their decoding.
fn load_stored<S: Storage>(
    storage: &S,
    keyspace: &str,
    key: &[u8],
) -> Result<Option<(Vec<u8>, State)>, StorageError> {
    match storage.get(&table_name(keyspace), key)? {
        None => Ok(None),
        Some(bytes) => match State::decode(&bytes) {
            Ok(state) => Ok(Some((bytes, state))),
            Err(e) => Err(StorageError::Engine(format!(
                "key in keyspace {keyspace}: {e}"
            ))),
        },
    }
}

/// The outcome of applying a record at a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Applied {
    accepted: bool,
    /// The timestamp of the record the replica holds afterwards.
    current: HlcTimestamp,
    /// Whether a live value was there before.
    existed: bool,
    /// Whether the replica's record changed (stored, not merely already held).
    changed: bool,
}

fn newest(replies: &BTreeMap<NodeId, Option<Record>>) -> Option<&Record> {
    replies.values().flatten().max_by_key(|r| r.timestamp)
}

fn load<S: Storage>(
    storage: &S,
    keyspace: &str,
    key: &[u8],
) -> Result<Option<Record>, StorageError> {
    match storage.get(&table_name(keyspace), key)? {
        None => Ok(None),
        Some(bytes) => Record::decode(&bytes)
            .map(Some)
            .map_err(|e| StorageError::Engine(format!("key in keyspace {keyspace}: {e}"))),
    }
}

#[cfg(test)]
mod tests;
