//! Messages between leaderless replicas and coordinators.

use crate::Outcome;
use crate::hint::HintPayload;
use crate::record::Record;
use crate::state::{Operation, State, Update};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use triarch_core::{HlcTimestamp, KeyspaceConfig, NodeId};

/// A coordinator's name for one client operation in flight; unique per coordinator process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId(pub u64);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Coordinator -> replica: store `record` if it is newer than what you hold, then acknowledge.
    Write {
        op: OpId,
        keyspace: String,
        key: Bytes,
        record: Record,
    },
    /// Replica -> coordinator. `accepted` is false when the replica holds a newer record (whose
    /// timestamp is `current`); `existed` tells a delete whether a live value was there.
    WriteAck {
        op: OpId,
        timestamp: HlcTimestamp,
        accepted: bool,
        current: HlcTimestamp,
        existed: bool,
    },
    /// Replica (or fallback) -> coordinator: the record of attempt `timestamp` is stamped
    /// further ahead of this node's wall clock than the clock bound allows (the coordinator's
    /// clock runs ahead): not stored.
    ClockAheadRefused { op: OpId, timestamp: HlcTimestamp },
    /// Coordinator -> replica: send me your record for `key`.
    Read {
        op: OpId,
        keyspace: String,
        key: Bytes,
    },
    /// Replica -> coordinator.
    ReadReply { op: OpId, record: Option<Record> },
    /// Coordinator -> stale replica: store this newer record (read repair; not acknowledged).
    Repair {
        keyspace: String,
        key: Bytes,
        record: Record,
    },
    // ---- keyspaces whose merge policy is not lww (crate::state) ----
    /// Coordinator -> replica: send me your state of `key`.
    ReadState {
        op: OpId,
        keyspace: String,
        key: Bytes,
    },
    /// Replica -> coordinator (`None`: never written here).
    StateReply { op: OpId, state: Option<State> },
    /// Coordinating replica -> replica: merge `update` into your state, then acknowledge.
    Merge {
        op: OpId,
        keyspace: String,
        key: Bytes,
        update: Update,
    },
    /// Replica -> coordinator: the update is merged (and durable once this is delivered).
    MergeAck { op: OpId },
    /// Coordinator -> stale replica: merge this state (read repair; not acknowledged).
    RepairState {
        keyspace: String,
        key: Bytes,
        state: State,
    },
    /// A node outside the key's preference list -> a replica of the key: coordinate `operation`
    /// for me (only replicas issue dots; see `crate::state`). `sent` is the forwarder's hybrid
    /// logical clock when it sent this: unique per forwarder, and what the replica uses to run
    /// each forward at most once (`crate::forward`). The keyspace travels with the operation so
    /// that a replica whose catalog lags still applies the forwarder's settings (boxed: the
    /// largest field of any message, it would size every message).
    Forward {
        op: OpId,
        sent: HlcTimestamp,
        keyspace: Box<KeyspaceConfig>,
        key: Bytes,
        operation: Operation,
        r: u8,
        w: u8,
    },
    /// Coordinating replica -> forwarder: the operation's outcome; `clock` is the replica's
    /// clock, which the forwarder observes so that its next forward is not refused as stale.
    ForwardReply {
        op: OpId,
        outcome: Outcome,
        clock: HlcTimestamp,
    },
    // ---- sloppy quorums and hinted handoff (crate::hint, crate::health) ----
    /// Coordinator -> fallback (a node past the key's preference list) standing in for the
    /// suspected preference-list node `owner`: hold `record` for `owner` in your hint table
    /// (not your data table), durably, then acknowledge with a `WriteAck` (or `HintRefused`).
    HintedWrite {
        op: OpId,
        keyspace: String,
        key: Bytes,
        record: Record,
        owner: NodeId,
    },
    /// Coordinating replica -> fallback standing in for `owner`, for keyspaces whose merge
    /// policy is not lww: merge `state` (the coordinator's whole state of the key after the
    /// operation, never a delta: see `crate::hint`) into your hint for `owner`, then `MergeAck`.
    HintedMerge {
        op: OpId,
        keyspace: String,
        key: Bytes,
        state: State,
        owner: NodeId,
    },
    /// Fallback -> coordinator: the hint store is full (or the hint too large); nothing stored.
    HintRefused { op: OpId },
    /// Fallback -> owner: a hint the fallback holds for you. Applied like a write or a merge.
    Handoff {
        op: OpId,
        keyspace: String,
        key: Bytes,
        payload: HintPayload,
    },
    /// Owner -> fallback: the handoff `op` is applied and durable (or superseded by what the
    /// owner already held); the fallback may delete the hint.
    HandoffAck { op: OpId },
    /// Failure detector probe to a suspected peer; any message back clears the suspicion.
    Ping,
    /// The answer to a `Ping`.
    Pong,
    // ---- anti-entropy (crate::anti_entropy) ----
    /// Initiator -> another replica of the range `replicas` (its N nodes, sorted) of `keyspace`
    /// (whose N is `n`): my hashes of these nodes (index, hash) of level `level` of my tree of
    /// the range; answer with those that differ from yours (`TreeDiff`).
    TreeHashes {
        op: OpId,
        keyspace: String,
        n: u8,
        replicas: Vec<NodeId>,
        level: u8,
        hashes: Vec<(u32, u64)>,
    },
    /// Replica -> initiator: the nodes of `level` whose hashes differ (empty: in sync).
    TreeDiff {
        op: OpId,
        level: u8,
        differing: Vec<u32>,
    },
    /// Initiator -> replica: every key I hold of the range with a ring position in
    /// `from..=to`, with its entry hash; answer with what differs (`KeyDiff`).
    KeyHashes {
        op: OpId,
        keyspace: String,
        n: u8,
        replicas: Vec<NodeId>,
        from: u64,
        to: u64,
        keys: Vec<(Bytes, u64)>,
    },
    /// Replica -> initiator: my values of the keys you lack or hold differently (`push`), the
    /// keys whose values I want from you (`pull`); I compared the page up to position
    /// `through` (the rest of the page is for another `KeyHashes`).
    KeyDiff {
        op: OpId,
        push: Vec<(Bytes, HintPayload)>,
        pull: Vec<Bytes>,
        through: u64,
    },
    /// Initiator -> replica: my values of the keys you pulled (merged with yours first).
    KeyValues {
        keyspace: String,
        entries: Vec<(Bytes, HintPayload)>,
    },
    /// Replica -> initiator: I cannot compare this range now (my index is still being built,
    /// or my N or ring disagrees, or a membership change is in progress).
    ExchangeRefused { op: OpId },
    // ---- membership changes (crate::membership) ----
    /// Old owner -> gained owner of the keys, during a membership change's handoff: merge
    /// these copies (records last-writer-wins, states by join), then `MoveAck`. At most
    /// [`crate::membership::HANDOFF_KEYS_PER_BATCH_MAX`] keys; resent unchanged on timeout.
    MoveBatch {
        op: OpId,
        keyspace: String,
        entries: Vec<(Bytes, HintPayload)>,
    },
    /// Gained owner -> old owner: batch `op` is merged and durable (sent after the sync).
    MoveAck { op: OpId },
}
