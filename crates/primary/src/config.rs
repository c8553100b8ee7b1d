//! Configuration of one Raft group member, and its validation.

use crate::types::LogIndex;
use std::collections::BTreeSet;
use std::time::Duration;
use triarch_core::NodeId;
use triarch_core::limits::NODES_MAX;

/// The storage table prefix: a group's state lives in table `raft.<group>`.
pub const TABLE_PREFIX: &str = "raft.";
/// Longest group name: table names are at most 64 bytes (`triarch_storage`'s fjall backend).
pub const GROUP_NAME_BYTES_MAX: usize = 64 - TABLE_PREFIX.len();

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    /// This server.
    pub id: NodeId,
    /// The group's name; its state lives in the storage table `raft.<group>`.
    pub group: String,
    /// The voters a new group starts with (its bootstrap configuration). Used only when storage
    /// holds no configuration yet; every founding member must be given the same set. Empty for a
    /// server joining an existing group: it waits, without campaigning, until a leader's log or
    /// snapshot names it a voter (thesis §4.1).
    pub voters: BTreeSet<NodeId>,
    /// Election timeouts are drawn uniformly from `[min, max]` (§5.2). `min` is also how long
    /// a follower keeps a leader it heard from (PreVote, §9.6; disruption, §4.2.3) and how often
    /// a leader checks that a quorum still answers (CheckQuorum, §6.2).
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How often a leader sends heartbeats. Must be below `election_timeout_min`.
    pub heartbeat_interval: Duration,
    /// Most entries in one append message (batching).
    pub entries_per_append_max: usize,
    /// Most application bytes in one append message; an append carries at least one entry
    /// whatever its size.
    pub append_bytes_max: usize,
    /// Most append messages in flight to one follower (pipelining window).
    pub appends_in_flight_max: usize,
    /// PreVote (thesis §9.6): a server first asks whether it could win before raising its term.
    pub pre_vote: bool,
    /// CheckQuorum (thesis §6.2): a leader that has not heard from a quorum within an election
    /// timeout steps down; followers then ignore vote requests while they hear from a leader
    /// (§4.2.3).
    pub check_quorum: bool,
    /// Thesis §10.2.1: the leader sends appends before its own copy of the entries is durable,
    /// and counts itself toward a commit quorum only up to what the driver reported durable
    /// ([`crate::Raft::mark_durable`]). The leader's fsync and the followers' then overlap, and
    /// a commit always means a quorum of durable copies, the leader's included when it counts.
    /// The driver must call `mark_durable` after each sync, and may then release `Append`
    /// messages before the sync (see [`crate::Message::may_precede_sync_parallel`]).
    pub parallel_append: bool,
    /// Leader leases (thesis §6.4.1): the leader serves [`crate::Raft::lease_read`] without a
    /// round of messages while a quorum acknowledged a heartbeat round it started less than
    /// `election_timeout_min * (1 - lease_clock_drift)` ago. Safe because, with CheckQuorum,
    /// a server that heard from the leader refuses votes for `election_timeout_min` (so no other
    /// leader can exist before then), provided no server's clock runs slower than the leader's
    /// by more than the drift bound. Requires `check_quorum`.
    pub lease_reads: bool,
    /// The largest rate difference between two servers' monotonic clocks the lease assumes, in
    /// thousandths (50 = 5%; real clocks drift by ten-thousandths of that).
    pub lease_clock_drift_permille: u32,
    /// The last index the application's durable state already reflects (0 if its state is
    /// volatile and rebuilt from snapshot and log). Raft emits committed entries after it.
    pub applied_index: LogIndex,
    /// Snapshots on demand: the application compacts the log without copying its state
    /// ([`crate::Raft::compact`] with empty data, which then means "not materialized", never
    /// "empty state"), and materializes one only when a leader needs it for a follower that lags
    /// behind the compacted log: Raft then emits [`crate::Output::SnapshotWanted`] and the
    /// application answers with `compact` at its applied index, state included. Compaction then
    /// costs O(entries dropped) instead of O(state) at every interval. Requires an application
    /// whose state is durable (`applied_index` never behind the snapshot at start) and whose
    /// materialized state is never empty bytes.
    pub snapshots_on_demand: bool,
    /// A learner may be promoted to voter only while it holds the leader's log up to at most
    /// this many entries behind the leader's last index, as the leader last heard (thesis
    /// §4.2.1: a new voter that must catch up first would stall commits of a small group).
    pub learner_promotion_lag_entries_max: u64,
    /// PLANTED BUG for checker tests: the leader commits entries it alone holds. Never set
    /// outside tests.
    pub bug_commit_without_majority: bool,
    /// PLANTED BUG for checker tests: the leader counts learners toward its commit quorum as if
    /// they were voters. Never set outside tests.
    pub bug_learner_counts_toward_commit: bool,
}

impl RaftConfig {
    /// A configuration with production defaults: elections after 1 to 2 s of silence,
    /// heartbeats every 100 ms, PreVote and CheckQuorum on.
    pub fn new(id: NodeId, group: impl Into<String>, voters: BTreeSet<NodeId>) -> RaftConfig {
        RaftConfig {
            id,
            group: group.into(),
            voters,
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            heartbeat_interval: Duration::from_millis(100),
            entries_per_append_max: 256,
            append_bytes_max: 1024 * 1024,
            appends_in_flight_max: 32,
            pre_vote: true,
            check_quorum: true,
            parallel_append: false,
            lease_reads: false,
            lease_clock_drift_permille: 50,
            applied_index: LogIndex::ZERO,
            snapshots_on_demand: false,
            learner_promotion_lag_entries_max: 64,
            bug_commit_without_majority: false,
            bug_learner_counts_toward_commit: false,
        }
    }

    /// The storage table holding this group's hard state, log and snapshot.
    pub fn table(&self) -> String {
        format!("{TABLE_PREFIX}{}", self.group)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let valid_name = !self.group.is_empty()
            && self.group.len() <= GROUP_NAME_BYTES_MAX
            && self
                .group
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid_name {
            return Err(ConfigError::InvalidGroupName(self.group.clone()));
        }
        if !self.voters.is_empty() && !self.voters.contains(&self.id) {
            return Err(ConfigError::NotABootstrapVoter(self.id));
        }
        if self.voters.len() > NODES_MAX {
            return Err(ConfigError::TooManyVoters {
                voters: self.voters.len(),
                max: NODES_MAX,
            });
        }
        if self.election_timeout_min.is_zero()
            || self.election_timeout_min > self.election_timeout_max
        {
            return Err(ConfigError::ElectionTimeoutRange {
                min: self.election_timeout_min,
                max: self.election_timeout_max,
            });
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.election_timeout_min
        {
            return Err(ConfigError::HeartbeatInterval {
                heartbeat: self.heartbeat_interval,
                election_timeout_min: self.election_timeout_min,
            });
        }
        if self.entries_per_append_max == 0 {
            return Err(ConfigError::Zero("entries_per_append_max"));
        }
        if self.appends_in_flight_max == 0 {
            return Err(ConfigError::Zero("appends_in_flight_max"));
        }
        if self.append_bytes_max == 0 {
            return Err(ConfigError::Zero("append_bytes_max"));
        }
        if self.lease_reads && !self.check_quorum {
            return Err(ConfigError::LeaseWithoutCheckQuorum);
        }
        if self.lease_clock_drift_permille >= 1000 {
            return Err(ConfigError::LeaseDrift(self.lease_clock_drift_permille));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "invalid group name {0:?}: 1 to {GROUP_NAME_BYTES_MAX} bytes of ASCII letters, digits, '_', '-' or '.'"
    )]
    InvalidGroupName(String),
    #[error("bootstrap voters are given but do not include this server ({0})")]
    NotABootstrapVoter(NodeId),
    #[error("{voters} voters, at most {max}")]
    TooManyVoters { voters: usize, max: usize },
    #[error("election timeout range {min:?}..={max:?} is empty or starts at zero")]
    ElectionTimeoutRange { min: Duration, max: Duration },
    #[error(
        "heartbeat interval {heartbeat:?} must be non-zero and below the minimum election timeout {election_timeout_min:?}"
    )]
    HeartbeatInterval {
        heartbeat: Duration,
        election_timeout_min: Duration,
    },
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error(
        "leader leases need check_quorum: without it nothing stops another election during a lease"
    )]
    LeaseWithoutCheckQuorum,
    #[error("lease clock drift of {0} permille leaves no lease (below 1000 is required)")]
    LeaseDrift(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RaftConfig {
        RaftConfig::new(NodeId(1), "balance", [1, 2, 3].map(NodeId).into())
    }

    #[test]
    fn defaults_are_valid_and_name_the_table() {
        config().validate().unwrap();
        assert_eq!(config().table(), "raft.balance");
        let joining = RaftConfig::new(NodeId(4), "balance", BTreeSet::new());
        joining.validate().unwrap();
    }

    #[test]
    fn each_impossible_setting_is_named() {
        let mut c = config();
        c.group = "no spaces".into();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidGroupName(_))
        ));
        c.group = "x".repeat(GROUP_NAME_BYTES_MAX + 1);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidGroupName(_))
        ));

        let mut c = config();
        c.voters = [2, 3].map(NodeId).into();
        assert_eq!(
            c.validate(),
            Err(ConfigError::NotABootstrapVoter(NodeId(1)))
        );

        let mut c = config();
        c.election_timeout_max = c.election_timeout_min / 2;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ElectionTimeoutRange { .. })
        ));

        let mut c = config();
        c.heartbeat_interval = c.election_timeout_min;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::HeartbeatInterval { .. })
        ));

        let mut c = config();
        c.entries_per_append_max = 0;
        assert_eq!(
            c.validate(),
            Err(ConfigError::Zero("entries_per_append_max"))
        );
        let mut c = config();
        c.appends_in_flight_max = 0;
        assert_eq!(
            c.validate(),
            Err(ConfigError::Zero("appends_in_flight_max"))
        );
    }
}
