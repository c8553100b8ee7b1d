//! One error type per operation. Protocol outcomes that a caller acts on (not the leader, a
//! change already in progress) are variants with the facts needed to act; storage failures are
//! carried through, after which the [`crate::Raft`] must be dropped and rebuilt from storage.

use crate::config::ConfigError;
use crate::types::LogIndex;
use triarch_core::NodeId;
use triarch_storage::StorageError;

/// Why [`crate::Raft::new`] could not recover a group member.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("invalid raft configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("undecodable raft record under key {key:?} in table {table}")]
    Undecodable { table: String, key: Vec<u8> },
    #[error("raft records in table {table} have unknown format version {version}")]
    UnknownFormat { table: String, version: u8 },
    #[error("raft log in table {table} has a gap: expected index {expected}, found {found}")]
    Gap {
        table: String,
        expected: LogIndex,
        found: LogIndex,
    },
    #[error("raft log in table {table}: the term of entry {index} is out of order")]
    TermOutOfOrder { table: String, index: LogIndex },
    #[error("the application has applied up to {applied}, beyond the last log index {last}")]
    AppliedBeyondLog { applied: LogIndex, last: LogIndex },
    /// With [`crate::RaftConfig::snapshots_on_demand`], the snapshot holds no state, so the
    /// application must already reflect it.
    #[error(
        "the snapshot at {snapshot_index} was never materialized and the application has applied only up to {applied}"
    )]
    SnapshotNotMaterialized {
        snapshot_index: LogIndex,
        applied: LogIndex,
    },
}

/// Why [`crate::Raft::propose`] did not append an entry.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader appends. `leader` is this server's best guess of who is.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The leader is handing over to `to` and accepts nothing new until it has (thesis §3.10).
    #[error("leadership is being transferred to {to}")]
    TransferInProgress { to: NodeId },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why [`crate::Raft::read_index`] cannot serve a linearizable read here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
}

/// Why [`crate::Raft::transfer_leadership`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0} is already the leader")]
    AlreadyLeader(NodeId),
    #[error("{0} is not a voter")]
    NotAVoter(NodeId),
    /// A learner has no vote (thesis §4.2.1): promote it first.
    #[error("{0} is a learner: it cannot be elected; promote it first")]
    ToLearner(NodeId),
}

/// Why [`crate::Raft::change_membership`] did not append a configuration entry.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership is being transferred to {to}")]
    TransferInProgress { to: NodeId },
    /// One change at a time: the configuration entry at `index` is not committed yet (thesis
    /// §4.1).
    #[error("the membership change at {index} is not committed yet")]
    ChangeInProgress { index: LogIndex },
    /// A new leader must commit an entry of its own term before changing the configuration;
    /// without this, single-server changes across leader changes can yield two leaders (the
    /// correction to thesis §4.1 published on raft-dev in 2015).
    #[error("the leader has not yet committed an entry of its term")]
    LeaderNotReady,
    #[error("{0} is already a voter")]
    AlreadyVoter(NodeId),
    #[error("{0} is not a voter")]
    NotAVoter(NodeId),
    #[error("cannot remove the last voter")]
    LastVoter,
    #[error("{voters} voters, at most {max}")]
    TooManyVoters { voters: usize, max: usize },
    #[error("{members} members (voters and learners), at most {max}")]
    TooManyMembers { members: usize, max: usize },
    #[error("{0} is already a learner")]
    AlreadyLearner(NodeId),
    #[error("{0} is not a learner")]
    NotALearner(NodeId),
    /// Adding a voter directly would stall commits while it catches up (thesis §4.2.1).
    #[error("{0} is a learner: promote it instead of adding it as a voter")]
    IsLearner(NodeId),
    /// Thesis §4.2.1: a learner is promoted only once it holds nearly all of the leader's log,
    /// so that the new configuration's quorums do not wait for it to catch up.
    #[error(
        "learner {learner} is not caught up: it holds the log up to {match_index}, the leader up to {last_index} (at most {lag_max} entries behind allowed)"
    )]
    LearnerBehind {
        learner: NodeId,
        match_index: LogIndex,
        last_index: LogIndex,
        lag_max: u64,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why [`crate::Raft::compact`] did not take the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// A snapshot may only cover entries the application has applied.
    #[error("index {index} is not applied yet (applied: {applied})")]
    NotApplied { index: LogIndex, applied: LogIndex },
    #[error("index {index} is already compacted (snapshot at {snapshot_index})")]
    AlreadyCompacted {
        index: LogIndex,
        snapshot_index: LogIndex,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}
