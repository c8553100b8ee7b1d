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
    /// that a replica whose catalog lags still applies the forwarder's settings.
    Forward {
        op: OpId,
        sent: HlcTimestamp,
        keyspace: KeyspaceConfig,
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
}
