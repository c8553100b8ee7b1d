//! The Raft state machine of one group member. See the crate documentation for the contract.
//!
//! This file holds the state, the public inputs and outputs, the role transitions and the
//! message dispatch; [`follower`] handles what a server receives from candidates and leaders,
//! [`leader`] what a leader does to replicate, commit and confirm reads.

mod follower;
mod leader;

use crate::config::RaftConfig;
use crate::error::{
    CompactError, MembershipError, ProposeError, ReadError, RecoveryError, TransferError,
};
use crate::log::RaftLog;
use crate::message::{Message, MessageKind};
use crate::persist::{self, HardState};
use crate::types::{Entry, EntryData, LogIndex, Snapshot, Term};
use bytes::Bytes;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use triarch_core::limits::NODES_MAX;
use triarch_core::{DetRng, Instant, NodeId, RequestId};
use triarch_storage::{Storage, StorageError};

/// What a step needs besides the message: the time, and the storage it stages writes in.
pub struct Env<'a, S: Storage> {
    pub now: Instant,
    pub storage: &'a mut S,
}

/// A server's role (§5.1), plus PreVote's pre-candidate (thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// What the state machine asks its driver to do. Every output of a batch is released only after
/// the batch's staged writes are durable (persist-then-send), except messages for which
/// [`Message::may_precede_sync`] holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Deliver `message` to `to` (best effort: Raft tolerates loss, duplication, reordering).
    Send { to: NodeId, message: Message },
    /// `entry` is committed: apply it to the state machine. Entries come in index order, each
    /// once per incarnation, starting after [`RaftConfig::applied_index`] or the snapshot.
    Committed { entry: Entry },
    /// Replace the state machine with `snapshot` (a leader sent it, or the application's state
    /// is older than the snapshot at start). Entries after `snapshot.index` follow.
    RestoreSnapshot { snapshot: Snapshot },
    /// The read `ctx` may be served once the state machine has applied `index`, which it has by
    /// the time this output is seen: every `Committed` up to `index` precedes it (thesis §6.4).
    ReadReady { ctx: RequestId, index: LogIndex },
    /// The read `ctx` cannot be confirmed: this server stopped leading. Retry at `leader`.
    ReadFailed {
        ctx: RequestId,
        leader: Option<NodeId>,
    },
    /// The leader this server knows changed (None: unknown, e.g. during an election).
    LeaderChanged { term: Term, leader: Option<NodeId> },
    /// With [`RaftConfig::snapshots_on_demand`]: a follower needs entries that were compacted
    /// away and the snapshot holds no state yet. Call [`Raft::compact`] at the application's
    /// applied index with its state; the snapshot goes out then. Harmless to ignore or to answer
    /// twice (a later probe asks again).
    SnapshotWanted,
}

/// What a sync that starts now will make durable of this server's log, for
/// [`Raft::mark_durable`] once it has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncPoint {
    index: LogIndex,
    /// Log truncations so far: a point taken before a truncation no longer names the entries
    /// now at its indexes.
    epoch: u64,
}

/// A single-server configuration change (thesis §4.1), one at a time.
///
/// New servers should join as learners (thesis §4.2.1, "catching up new servers"): a learner
/// receives the log (appends, heartbeats, snapshots) and applies it, but never campaigns and
/// never counts toward an election, a commit, a ReadIndex round, a lease or CheckQuorum. Once it
/// is caught up ([`RaftConfig::learner_promotion_lag_entries_max`]) it is promoted to voter; a
/// voter added directly with an empty log would make a small group's commits wait for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a voter directly (refused for a current learner: promote it instead).
    AddVoter(NodeId),
    RemoveVoter(NodeId),
    AddLearner(NodeId),
    /// Turns a learner into a voter; refused unless it is caught up.
    PromoteLearner(NodeId),
    RemoveLearner(NodeId),
}

/// How a leader replicates to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    /// Where the logs match is unknown: one append at a time, `paused` until an answer or the
    /// next heartbeat.
    Probe { paused: bool },
    /// The logs match up to `match_index`: appends are pipelined, `next_index` advancing
    /// optimistically, at most `appends_in_flight_max` at once.
    Replicate,
    /// A snapshot up to `index` is on its way.
    Snapshot { index: LogIndex },
}

/// The leader's view of one follower (Figure 2, "volatile state on leaders").
#[derive(Clone, Debug)]
struct Progress {
    match_index: LogIndex,
    next_index: LogIndex,
    mode: Mode,
    /// The last index of each append in flight (Replicate only), ascending.
    in_flight: VecDeque<LogIndex>,
    heartbeats_without_progress: u32,
    /// Heard from since the last CheckQuorum round.
    recently_active: bool,
    /// The highest ReadIndex round the follower acknowledged in this term.
    read_seq_acked: u64,
}

impl Progress {
    fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            mode: Mode::Probe { paused: false },
            in_flight: VecDeque::new(),
            heartbeats_without_progress: 0,
            recently_active: false,
            read_seq_acked: 0,
        }
    }
}

#[derive(Clone, Debug)]
struct PendingRead {
    seq: u64,
    ctx: RequestId,
    index: LogIndex,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    to: NodeId,
    deadline: Instant,
}

/// State only a leader has.
#[derive(Clone, Debug)]
struct LeaderState {
    /// One per voter and learner other than this server.
    progress: BTreeMap<NodeId, Progress>,
    heartbeat_deadline: Instant,
    check_quorum_deadline: Option<Instant>,
    /// The latest ReadIndex round; heartbeats carry it.
    read_seq: u64,
    /// Reads that arrived before the leader committed an entry of its term (thesis §6.4 step 1).
    reads_awaiting_commit: Vec<RequestId>,
    /// Reads waiting for a quorum to acknowledge their round, in round order.
    reads: VecDeque<PendingRead>,
    transfer: Option<Transfer>,
    /// Proposals were appended since the last flush: replicate them (batching).
    replicate_pending: bool,
    /// A read round started since the last flush: send heartbeats.
    heartbeat_pending: bool,
    /// With leases: when each unacknowledged read round (`read_seq`) started, oldest first.
    rounds: VecDeque<(u64, Instant)>,
    /// With leases: until when this leader may serve reads without a round of messages.
    lease_until: Option<Instant>,
    /// A leadership transfer was started in this term: a transfer's election does not wait for
    /// the followers' election timeout, so leases are off for the rest of the term.
    lease_revoked: bool,
}

/// One member of one Raft group, sans-IO.
#[derive(Clone, Debug)]
pub struct Raft {
    id: NodeId,
    config: RaftConfig,
    table: String,
    rng: DetRng,
    /// Set when a storage write failed: memory may be ahead of storage, so the instance must be
    /// rebuilt from storage.
    poisoned: bool,
    now: Instant,

    // Persistent state (Figure 2), mirrored in storage.
    term: Term,
    voted_for: Option<NodeId>,
    log: RaftLog,

    // Volatile state.
    commit: LogIndex,
    /// The last index emitted as `Committed` (or restored from a snapshot).
    applied: LogIndex,
    role: Role,
    leader: Option<NodeId>,
    /// The leader of `term` once known; never changes within a term (Election Safety).
    term_leader: Option<NodeId>,
    /// When this server last heard from `leader`.
    leader_contact: Option<Instant>,
    /// On a follower: when an append of the leader last brought its commit index up to the
    /// leader's as the leader sent it (see [`Raft::caught_up_at`]).
    caught_up_at: Option<Instant>,
    /// With `parallel_append`: the last index of this server's log known to be durable.
    durable: LogIndex,
    /// How many times the log was truncated (see [`SyncPoint`]).
    log_epoch: u64,
    /// With leases: a restarted server may have acknowledged a leader's round before it
    /// crashed, and has forgotten when; it refuses votes until this instant, one minimum
    /// election timeout after its start, as if it had just heard from that leader.
    votes_refused_until: Option<Instant>,
    /// The latest configuration in the log (voters and learners, disjoint), and the index of
    /// the entry that set it.
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    voters_index: LogIndex,
    /// Votes (or pre-votes) granted to this server's current campaign.
    votes: BTreeSet<NodeId>,
    election_deadline: Option<Instant>,
    lead: Option<LeaderState>,
    outputs: VecDeque<Output>,
    /// The term and commit index at the last `check_invariants`.
    checked: Cell<(Term, LogIndex)>,
}

impl Raft {
    /// Starts, or restarts, a member from what `storage` holds for its group: hard state,
    /// snapshot and log. A new group starts from `config.voters`. Stale records left by an
    /// interrupted compaction are deleted (staged).
    pub fn new<S: Storage>(
        config: RaftConfig,
        storage: &mut S,
        rng: DetRng,
        now: Instant,
    ) -> Result<Raft, RecoveryError> {
        config.validate()?;
        let table = config.table();
        let recovered = persist::load(storage, &table)?;
        for index in recovered.stale {
            persist::delete_entry(storage, &table, index)?;
        }
        let snapshot = recovered
            .snapshot
            .unwrap_or_else(|| Snapshot::initial(config.voters.clone()));
        let log = RaftLog::new(snapshot, recovered.entries);
        if config.applied_index > log.last_index() {
            return Err(RecoveryError::AppliedBeyondLog {
                applied: config.applied_index,
                last: log.last_index(),
            });
        }
        let snapshot_index = log.snapshot().index;
        // What the application applied was committed; the snapshot is committed by definition.
        let commit = snapshot_index.max(config.applied_index);
        let mut outputs = VecDeque::new();
        if config.applied_index < snapshot_index {
            if config.snapshots_on_demand && log.snapshot().data.is_empty() {
                return Err(RecoveryError::SnapshotNotMaterialized {
                    snapshot_index,
                    applied: config.applied_index,
                });
            }
            outputs.push_back(Output::RestoreSnapshot {
                snapshot: log.snapshot().clone(),
            });
        }
        let log_last_index = log.last_index();
        let (voters_index, voters, learners) = log.latest_config();
        let (voters_index, voters, learners) = (voters_index, voters.clone(), learners.clone());
        let mut raft = Raft {
            id: config.id,
            table,
            rng,
            poisoned: false,
            now,
            term: recovered.hard_state.term,
            voted_for: recovered.hard_state.voted_for,
            log,
            commit,
            applied: commit,
            role: Role::Follower,
            leader: None,
            term_leader: None,
            leader_contact: None,
            caught_up_at: None,
            // What storage held at start is durable.
            durable: log_last_index,
            log_epoch: 0,
            votes_refused_until: config
                .lease_reads
                .then(|| now + config.election_timeout_min),
            voters,
            learners,
            voters_index,
            votes: BTreeSet::new(),
            election_deadline: None,
            lead: None,
            outputs,
            checked: Cell::new((recovered.hard_state.term, commit)),
            config,
        };
        raft.reset_election_timer();
        tracing::debug!(
            node = %raft.id, group = raft.config.group, term = raft.term.0,
            last_index = raft.log.last_index().0, commit = raft.commit.0, "raft member started"
        );
        Ok(raft)
    }

    // ----- Observers -----

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &RaftConfig {
        &self.config
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The leader this server knows of in its current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// On a leader, each other voter's matched index (empty on other roles).
    pub fn follower_progress(&self) -> Vec<(NodeId, LogIndex)> {
        self.progress_of(&self.voters)
    }

    /// On a leader, each learner's matched index (empty on other roles): how far it has caught
    /// up, what [`MembershipChange::PromoteLearner`] checks.
    pub fn learner_progress(&self) -> Vec<(NodeId, LogIndex)> {
        self.progress_of(&self.learners)
    }

    fn progress_of(&self, members: &BTreeSet<NodeId>) -> Vec<(NodeId, LogIndex)> {
        self.lead
            .as_ref()
            .map(|lead| {
                lead.progress
                    .iter()
                    .filter(|(id, _)| members.contains(id))
                    .map(|(id, p)| (*id, p.match_index))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }

    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }

    /// On a follower: the last time an append from the leader left this server knowing every
    /// entry the leader had committed when it sent the append. A state machine applied up to
    /// [`Raft::commit_index`] then misses only entries committed since (about `now - t`, plus
    /// the append's time on the wire): what bounded-staleness follower reads rely on. `None`
    /// on a leader or candidate, and before the first such append.
    pub fn caught_up_at(&self) -> Option<Instant> {
        (self.role == Role::Follower)
            .then_some(self.caught_up_at)
            .flatten()
    }

    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }

    /// The term of the entry at `index`, if the log (or its snapshot's last entry) holds it.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }

    /// The entry at `index`, if it is in the log (not compacted).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// The entries after the snapshot.
    pub fn entries(&self) -> &[Entry] {
        self.log.entries()
    }

    pub fn snapshot(&self) -> &Snapshot {
        self.log.snapshot()
    }

    /// The voters of the configuration in force: the latest in the log, committed or not
    /// (thesis §4.1).
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }

    /// The learners of the configuration in force (disjoint from the voters).
    pub fn learners(&self) -> &BTreeSet<NodeId> {
        &self.learners
    }

    /// The index of the entry that set the configuration in force (0: the bootstrap one). Once
    /// [`Raft::commit_index`] reaches it, the configuration is committed and another change may
    /// start.
    pub fn configuration_index(&self) -> LogIndex {
        self.voters_index
    }

    /// Whether this server is a learner in the configuration it knows: it then never campaigns.
    pub fn is_learner(&self) -> bool {
        self.learners.contains(&self.id)
    }

    // ----- Outputs -----

    /// The next thing to do. Drain after every step; release after the batch's sync.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.flush();
        self.outputs.pop_front()
    }

    /// When to call [`Raft::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.lead {
            Some(lead) => [
                Some(lead.heartbeat_deadline),
                lead.check_quorum_deadline,
                lead.transfer.map(|t| t.deadline),
            ]
            .into_iter()
            .flatten()
            .min(),
            None => self.election_deadline,
        }
    }

    // ----- Inputs -----

    /// A message from another member. A storage error leaves this instance unusable: rebuild it
    /// with [`Raft::new`] once storage works (nothing of the failed batch may be released).
    pub fn handle_message<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        message: Message,
    ) -> Result<(), StorageError> {
        self.begin(env.now);
        let result = self.step(env, from, message);
        self.poison_on_error(result)
    }

    /// Timers: elections (§5.2), heartbeats, CheckQuorum (thesis §6.2), transfer deadlines.
    pub fn handle_timeout<S: Storage>(&mut self, env: &mut Env<'_, S>) -> Result<(), StorageError> {
        self.begin(env.now);
        let result = self.tick(env);
        self.poison_on_error(result)
    }

    /// Appends `data` to the log if this server leads, and returns its index. The entry is
    /// committed when a `Committed` output with this index *and the current term* appears; a
    /// different entry at this index means the proposal was lost to a leader change.
    pub fn propose<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        data: Bytes,
    ) -> Result<LogIndex, ProposeError> {
        self.begin(env.now);
        let Some(lead) = &mut self.lead else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        if let Some(t) = lead.transfer {
            return Err(ProposeError::TransferInProgress { to: t.to });
        }
        lead.replicate_pending = true;
        let result = self.append_own(env, EntryData::Application(data));
        let index = self.poison_on_error(result)?;
        self.maybe_commit();
        Ok(index)
    }

    /// Adds, removes or promotes one server (thesis §4.1, §4.2.1). The new configuration is in
    /// force as soon as it is appended; another change may start once it is committed.
    pub fn change_membership<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        change: MembershipChange,
    ) -> Result<LogIndex, MembershipError> {
        self.begin(env.now);
        let Some(lead) = &mut self.lead else {
            return Err(MembershipError::NotLeader {
                leader: self.leader,
            });
        };
        if let Some(t) = lead.transfer {
            return Err(MembershipError::TransferInProgress { to: t.to });
        }
        if self.voters_index > self.commit {
            return Err(MembershipError::ChangeInProgress {
                index: self.voters_index,
            });
        }
        if self.log.term_at(self.commit) != Some(self.term) {
            return Err(MembershipError::LeaderNotReady);
        }
        let mut voters = self.voters.clone();
        let mut learners = self.learners.clone();
        match change {
            MembershipChange::AddVoter(id) => {
                if learners.contains(&id) {
                    return Err(MembershipError::IsLearner(id));
                }
                if !voters.insert(id) {
                    return Err(MembershipError::AlreadyVoter(id));
                }
            }
            MembershipChange::RemoveVoter(id) => {
                if !voters.remove(&id) {
                    return Err(MembershipError::NotAVoter(id));
                }
                if voters.is_empty() {
                    return Err(MembershipError::LastVoter);
                }
            }
            MembershipChange::AddLearner(id) => {
                if voters.contains(&id) {
                    return Err(MembershipError::AlreadyVoter(id));
                }
                if !learners.insert(id) {
                    return Err(MembershipError::AlreadyLearner(id));
                }
            }
            MembershipChange::RemoveLearner(id) => {
                if !learners.remove(&id) {
                    return Err(MembershipError::NotALearner(id));
                }
            }
            MembershipChange::PromoteLearner(id) => {
                if !learners.remove(&id) {
                    return Err(MembershipError::NotALearner(id));
                }
                // Thesis §4.2.1: promote only a learner that holds nearly all of the log, as
                // acknowledged to this leader (a new leader knows nothing until it hears back).
                let match_index = lead.progress[&id].match_index;
                let last_index = self.log.last_index();
                let lag_max = self.config.learner_promotion_lag_entries_max;
                if last_index.distance_from(match_index) > lag_max {
                    return Err(MembershipError::LearnerBehind {
                        learner: id,
                        match_index,
                        last_index,
                        lag_max,
                    });
                }
                voters.insert(id);
            }
        }
        if voters.len() > NODES_MAX {
            return Err(MembershipError::TooManyVoters {
                voters: voters.len(),
                max: NODES_MAX,
            });
        }
        if voters.len() + learners.len() > NODES_MAX {
            return Err(MembershipError::TooManyMembers {
                members: voters.len() + learners.len(),
                max: NODES_MAX,
            });
        }
        lead.replicate_pending = true;
        let result = self.append_own(env, EntryData::Membership { voters, learners });
        let index = self.poison_on_error(result)?;
        tracing::info!(
            node = %self.id, group = self.config.group, term = self.term.0, index = index.0,
            ?change, "membership change appended"
        );
        self.maybe_commit();
        Ok(index)
    }

    /// Starts a linearizable read (ReadIndex, thesis §6.4): once a quorum has acknowledged a
    /// heartbeat round that started after this call, a `ReadReady { ctx, index }` output says
    /// the read may be served from the state machine at `index`. Only the leader serves reads.
    pub fn read_index(&mut self, now: Instant, ctx: RequestId) -> Result<(), ReadError> {
        self.begin(now);
        let Some(lead) = &mut self.lead else {
            return Err(ReadError::NotLeader {
                leader: self.leader,
            });
        };
        if self.log.term_at(self.commit) == Some(self.term) {
            self.start_read(ctx);
        } else {
            // Until an entry of its term commits, a new leader does not know the commit index.
            lead.reads_awaiting_commit.push(ctx);
        }
        Ok(())
    }

    /// What a sync that starts now covers of this server's log (see
    /// [`RaftConfig::parallel_append`]).
    pub fn sync_point(&self) -> SyncPoint {
        SyncPoint {
            index: self.log.last_index(),
            epoch: self.log_epoch,
        }
    }

    /// The sync that started at `point` finished: the log is durable up to it. A leader may now
    /// count itself toward committing those entries.
    pub fn mark_durable(&mut self, now: Instant, point: SyncPoint) {
        self.begin(now);
        if point.epoch == self.log_epoch && point.index > self.durable {
            self.durable = point.index.min(self.log.last_index());
            self.maybe_commit();
        }
    }

    /// The log lost its entries from `from` on: earlier sync points no longer describe it.
    fn note_truncated(&mut self, from: LogIndex) {
        self.log_epoch += 1;
        if from <= self.durable {
            self.durable = from.prev();
        }
    }

    /// A read under the leader's lease (thesis §6.4.1, see [`RaftConfig::lease_reads`]): the
    /// index the state machine must have applied to serve it, or `None` when this server holds
    /// no valid lease (not the leader, no entry of its term committed yet, the lease expired, or
    /// a leadership transfer started this term). Then use [`Raft::read_index`].
    pub fn lease_read(&self, now: Instant) -> Option<LogIndex> {
        let lead = self.lead.as_ref()?;
        let valid = self.config.lease_reads
            && !lead.lease_revoked
            && lead.transfer.is_none()
            && lead.lease_until.is_some_and(|until| now < until)
            && self.log.term_at(self.commit) == Some(self.term);
        valid.then_some(self.commit)
    }

    /// Hands leadership to `to` (thesis §3.10): the leader stops accepting proposals, brings
    /// `to` up to date and tells it to start an election at once. Abandoned after an election
    /// timeout if `to` has not taken over.
    pub fn transfer_leadership(&mut self, now: Instant, to: NodeId) -> Result<(), TransferError> {
        self.begin(now);
        let deadline = now + self.config.election_timeout_max;
        let last_index = self.log.last_index();
        let Some(lead) = &mut self.lead else {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        };
        if to == self.id {
            return Err(TransferError::AlreadyLeader(to));
        }
        if self.learners.contains(&to) {
            return Err(TransferError::ToLearner(to));
        }
        let Some(pr) = lead.progress.get_mut(&to) else {
            return Err(TransferError::NotAVoter(to));
        };
        lead.transfer = Some(Transfer { to, deadline });
        lead.lease_revoked = true;
        tracing::info!(
            node = %self.id, group = self.config.group, term = self.term.0, %to,
            "leadership transfer started"
        );
        if pr.match_index == last_index {
            self.send(to, MessageKind::TimeoutNow);
        } else {
            // Catch the target up now rather than at the next heartbeat: probe from what it is
            // known to hold (appends in flight are sent again; a transfer is rare).
            if !matches!(pr.mode, Mode::Snapshot { .. }) {
                pr.mode = Mode::Probe { paused: false };
                pr.next_index = pr.match_index.next();
                pr.in_flight.clear();
            }
            self.send_appends_to(to);
        }
        Ok(())
    }

    /// Replaces the log up to `index` (which the application has applied) by a snapshot whose
    /// application state is `data` (§7). Followers too far behind receive it.
    ///
    /// With [`RaftConfig::snapshots_on_demand`], empty `data` compacts without the state (it is
    /// asked for with [`Output::SnapshotWanted`] when a follower needs it), and non-empty `data`
    /// at the snapshot's own index materializes the snapshot in place.
    pub fn compact<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        index: LogIndex,
        data: Bytes,
    ) -> Result<(), CompactError> {
        self.begin(env.now);
        if index > self.applied {
            return Err(CompactError::NotApplied {
                index,
                applied: self.applied,
            });
        }
        let materializes = self.config.snapshots_on_demand
            && index == self.log.snapshot().index
            && self.log.snapshot().data.is_empty()
            && !data.is_empty();
        if materializes {
            let mut snapshot = self.log.snapshot().clone();
            snapshot.data = data;
            let result = self
                .log
                .replace_snapshot(env.storage, &self.table, snapshot);
            self.poison_on_error(result)?;
            self.snapshot_ready();
            return Ok(());
        }
        if index <= self.log.snapshot().index {
            return Err(CompactError::AlreadyCompacted {
                index,
                snapshot_index: self.log.snapshot().index,
            });
        }
        let term = self
            .log
            .term_at(index)
            .expect("applied entries are in the log");
        let (_, voters, learners) = self.log.config_at(index);
        let snapshot = Snapshot {
            index,
            term,
            voters: voters.clone(),
            learners: learners.clone(),
            data,
        };
        let materialized = !snapshot.data.is_empty();
        let result = self.log.compact(env.storage, &self.table, snapshot);
        self.poison_on_error(result)?;
        self.refresh_voters();
        if materialized {
            self.snapshot_ready();
        }
        tracing::debug!(
            node = %self.id, group = self.config.group, index = index.0, "log compacted"
        );
        Ok(())
    }

    /// The snapshot now holds the state: probes that stopped for want of it go out at the next
    /// flush (they would otherwise wait for the next heartbeat).
    fn snapshot_ready(&mut self) {
        let Some(lead) = &mut self.lead else {
            return;
        };
        for pr in lead.progress.values_mut() {
            if pr.mode == (Mode::Probe { paused: true }) {
                pr.mode = Mode::Probe { paused: false };
                lead.replicate_pending = true;
            }
        }
    }

    /// Asserts this server's invariants; the simulator calls it after every step.
    ///
    /// - terms only grow, and the commit index only grows (within an incarnation);
    /// - Log Matching on the own log: contiguous indexes, terms that never decrease, none beyond
    ///   the current term;
    /// - at most one leader per term as seen by this server (`term_leader` never changes within
    ///   a term: asserted where it is learnt), and a leader voted for itself;
    /// - the configuration in force is the latest in the log;
    /// - the leader's bookkeeping is consistent (`match < next <= last + 1`, windows, reads).
    pub fn check_invariants(&self) {
        let (term, commit) = self.checked.get();
        assert!(self.term >= term, "terms only grow");
        assert!(self.commit >= commit, "the commit index only grows");
        self.checked.set((self.term, self.commit));
        self.log.check();
        let last_index = self.log.last_index();
        assert!(
            self.log.last_term() <= self.term,
            "no entry is from a future term"
        );
        assert!(self.commit <= last_index, "only entries held are committed");
        assert!(self.log.snapshot().index <= self.commit);
        assert_eq!(
            self.applied, self.commit,
            "committed entries are emitted at once"
        );
        let (voters_index, voters, learners) = self.log.latest_config();
        assert_eq!(voters_index, self.voters_index);
        assert_eq!(voters, &self.voters, "the latest configuration is in force");
        assert_eq!(
            learners, &self.learners,
            "the latest configuration is in force"
        );
        assert!(
            self.voters.is_disjoint(&self.learners),
            "a server is a voter or a learner, not both"
        );
        if let Some(leader) = self.leader {
            assert_eq!(self.term_leader, Some(leader));
        }
        match self.role {
            Role::Leader => {
                let lead = self.lead.as_ref().expect("a leader has leader state");
                assert_eq!(self.voted_for, Some(self.id), "a leader voted for itself");
                assert_eq!(self.leader, Some(self.id));
                assert!(self.election_deadline.is_none());
                let followers: BTreeSet<NodeId> = lead.progress.keys().copied().collect();
                let expected: BTreeSet<NodeId> = self
                    .voters
                    .iter()
                    .chain(&self.learners)
                    .copied()
                    .filter(|v| *v != self.id)
                    .collect();
                assert_eq!(
                    followers, expected,
                    "progress is tracked for every voter and learner"
                );
                for pr in lead.progress.values() {
                    assert!(pr.match_index <= last_index);
                    assert!(pr.match_index < pr.next_index);
                    assert!(pr.next_index <= last_index.next());
                    assert!(pr.in_flight.len() <= self.config.appends_in_flight_max);
                    assert!(pr.in_flight.iter().all(|i| *i < pr.next_index));
                    assert!(pr.read_seq_acked <= lead.read_seq);
                    if pr.mode != Mode::Replicate {
                        assert!(pr.in_flight.is_empty());
                    }
                }
                let mut seq = 0;
                for read in &lead.reads {
                    assert!(read.seq > seq && read.seq <= lead.read_seq);
                    assert!(read.index <= self.commit);
                    seq = read.seq;
                }
            }
            role => {
                assert!(self.lead.is_none(), "only a leader has leader state");
                assert_eq!(
                    self.election_deadline.is_some(),
                    self.is_voter(),
                    "voters, and only voters, run an election timer"
                );
                if role != Role::Follower {
                    assert!(self.leader.is_none(), "a candidate knows no leader");
                }
                if role == Role::Candidate {
                    assert_eq!(
                        self.voted_for,
                        Some(self.id),
                        "a candidate voted for itself"
                    );
                }
            }
        }
    }

    /// Hashes the protocol state for the model checker's visited set: everything that decides
    /// future behaviour except timer values and the random generator, which the model
    /// abstracts (any timer may fire at any moment).
    #[cfg(test)]
    pub(crate) fn model_digest<H: std::hash::Hasher>(&self, h: &mut H) {
        use std::hash::Hash;
        (
            self.term,
            self.voted_for,
            self.role,
            self.leader,
            self.term_leader,
        )
            .hash(h);
        (
            self.log.snapshot(),
            self.log.entries(),
            self.commit,
            self.applied,
        )
            .hash(h);
        (&self.voters, &self.learners, self.voters_index, &self.votes).hash(h);
        (
            self.election_deadline.is_some(),
            self.leader_contact.is_some(),
        )
            .hash(h);
        if let Some(lead) = &self.lead {
            for (id, pr) in &lead.progress {
                (id, pr.match_index, pr.next_index, pr.mode, &pr.in_flight).hash(h);
                (pr.recently_active, pr.read_seq_acked).hash(h);
            }
            (
                lead.read_seq,
                &lead.reads_awaiting_commit,
                lead.transfer.map(|t| t.to),
            )
                .hash(h);
            for read in &lead.reads {
                (read.seq, read.ctx, read.index).hash(h);
            }
        }
    }

    /// Renames this member (checker tests forge a second leader from a clone).
    #[cfg(test)]
    pub(crate) fn test_set_id(&mut self, id: NodeId) {
        self.id = id;
    }

    /// Replaces the entries after the snapshot (checker tests forge diverging logs).
    #[cfg(test)]
    pub(crate) fn test_replace_entries(&mut self, entries: Vec<Entry>) {
        self.log = RaftLog::new(self.log.snapshot().clone(), entries);
    }

    // ----- Step plumbing -----

    fn begin(&mut self, now: Instant) {
        assert!(
            !self.poisoned,
            "a Raft member whose storage failed must be rebuilt from storage"
        );
        assert!(now >= self.now, "time went backwards");
        self.now = now;
    }

    fn poison_on_error<T>(&mut self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(error) = &result {
            tracing::error!(
                node = %self.id, group = self.config.group, %error, "raft storage write failed"
            );
            self.poisoned = true;
        }
        result
    }

    fn send(&mut self, to: NodeId, kind: MessageKind) {
        self.send_with_term(to, self.term, kind);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, kind: MessageKind) {
        debug_assert_ne!(to, self.id);
        let message = Message { term, kind };
        self.outputs.push_back(Output::Send { to, message });
    }

    fn persist_hard_state<S: Storage>(&self, storage: &mut S) -> Result<(), StorageError> {
        let hard_state = HardState {
            term: self.term,
            voted_for: self.voted_for,
        };
        persist::put_hard_state(storage, &self.table, hard_state)
    }

    fn is_voter(&self) -> bool {
        self.voters.contains(&self.id)
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    fn other_voters(&self) -> Vec<NodeId> {
        self.voters
            .iter()
            .copied()
            .filter(|v| *v != self.id)
            .collect()
    }

    fn has_quorum(&self, granted: &BTreeSet<NodeId>) -> bool {
        granted.iter().filter(|v| self.voters.contains(v)).count() >= self.quorum()
    }

    /// Whether this server heard from a live leader within the minimum election timeout (or is
    /// the leader): PreVote (thesis §9.6) and vote requests (§4.2.3) are then refused.
    fn leader_recently_heard(&self) -> bool {
        self.role == Role::Leader
            || self.votes_refused_until.is_some_and(|t| self.now < t)
            || (self.leader.is_some()
                && self.leader_contact.is_some_and(|t| {
                    self.now.saturating_since(t) < self.config.election_timeout_min
                }))
    }

    fn reset_election_timer(&mut self) {
        self.election_deadline = if self.role != Role::Leader && self.is_voter() {
            let min = self.config.election_timeout_min.as_micros() as u64;
            let max = self.config.election_timeout_max.as_micros() as u64;
            Some(self.now + Duration::from_micros(self.rng.between(min, max)))
        } else {
            None
        };
    }

    /// Records `leader` as the leader of the current term. Election Safety (§5.2): a term has at
    /// most one leader, so learning a second one is a bug somewhere in the cluster.
    fn note_leader(&mut self, leader: NodeId) {
        match self.term_leader {
            None => self.term_leader = Some(leader),
            Some(known) => assert_eq!(
                known, leader,
                "Election Safety violated: {known} and {leader} both lead {}",
                self.term
            ),
        }
    }

    fn set_leader(&mut self, leader: Option<NodeId>) {
        if self.leader != leader {
            self.leader = leader;
            self.outputs.push_back(Output::LeaderChanged {
                term: self.term,
                leader,
            });
        }
    }

    // ----- Role transitions -----

    /// Adopts `term` (persisting it, with no vote, if it is newer) and follows `leader`.
    fn become_follower<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        term: Term,
        leader: Option<NodeId>,
    ) -> Result<(), StorageError> {
        assert!(term >= self.term, "terms only grow");
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.term_leader = None;
            self.persist_hard_state(env.storage)?;
        }
        self.step_down(leader);
        Ok(())
    }

    /// Becomes a follower in the current term.
    fn step_down(&mut self, leader: Option<NodeId>) {
        if let Some(lead) = self.lead.take() {
            tracing::info!(
                node = %self.id, group = self.config.group, term = self.term.0, "stepped down"
            );
            for ctx in lead.reads_awaiting_commit {
                self.outputs.push_back(Output::ReadFailed { ctx, leader });
            }
            for read in lead.reads {
                self.outputs.push_back(Output::ReadFailed {
                    ctx: read.ctx,
                    leader,
                });
            }
        }
        self.role = Role::Follower;
        self.votes.clear();
        if let Some(l) = leader {
            self.note_leader(l);
            self.leader_contact = Some(self.now);
        }
        self.set_leader(leader);
        self.reset_election_timer();
    }

    /// Handles a message from the leader of the current term.
    fn follow<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        leader: NodeId,
    ) -> Result<(), StorageError> {
        match self.role {
            Role::Leader => panic!(
                "Election Safety violated: {leader} and {} both lead {}",
                self.id, self.term
            ),
            Role::PreCandidate | Role::Candidate => {
                self.become_follower(env, self.term, Some(leader))
            }
            Role::Follower => {
                self.note_leader(leader);
                self.set_leader(Some(leader));
                self.leader_contact = Some(self.now);
                self.reset_election_timer();
                Ok(())
            }
        }
    }

    /// The election timer fired: campaign, first with PreVote if configured (thesis §9.6).
    fn campaign<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        transfer: bool,
    ) -> Result<(), StorageError> {
        assert!(self.is_voter() && self.role != Role::Leader);
        if !self.config.pre_vote || transfer {
            return self.start_election(env, transfer);
        }
        self.role = Role::PreCandidate;
        self.votes = BTreeSet::from([self.id]);
        self.set_leader(None);
        self.reset_election_timer();
        let term = self.term.next();
        tracing::debug!(
            node = %self.id, group = self.config.group, term = term.0, "pre-vote started"
        );
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for to in self.other_voters() {
            let kind = MessageKind::PreVote {
                last_index,
                last_term,
            };
            self.send_with_term(to, term, kind);
        }
        if self.has_quorum(&self.votes) {
            self.start_election(env, false)?;
        }
        Ok(())
    }

    /// Becomes a candidate in the next term, votes for itself and asks the others (§5.2).
    fn start_election<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        transfer: bool,
    ) -> Result<(), StorageError> {
        self.term = self.term.next();
        self.voted_for = Some(self.id);
        self.term_leader = None;
        self.persist_hard_state(env.storage)?;
        self.role = Role::Candidate;
        self.votes = BTreeSet::from([self.id]);
        self.set_leader(None);
        self.reset_election_timer();
        tracing::debug!(
            node = %self.id, group = self.config.group, term = self.term.0, transfer,
            "election started"
        );
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for to in self.other_voters() {
            let kind = MessageKind::RequestVote {
                last_index,
                last_term,
                transfer,
            };
            self.send(to, kind);
        }
        if self.has_quorum(&self.votes) {
            self.become_leader(env)?;
        }
        Ok(())
    }

    fn become_leader<S: Storage>(&mut self, env: &mut Env<'_, S>) -> Result<(), StorageError> {
        assert_eq!(self.role, Role::Candidate);
        assert_eq!(self.voted_for, Some(self.id));
        self.note_leader(self.id);
        self.role = Role::Leader;
        self.election_deadline = None;
        self.votes.clear();
        let next = self.log.last_index().next();
        // Learners get the log too (thesis §4.2.1), but count toward nothing.
        let progress = self
            .other_voters()
            .into_iter()
            .chain(self.learners.iter().copied())
            .map(|v| (v, Progress::new(next)))
            .collect();
        self.lead = Some(LeaderState {
            progress,
            heartbeat_deadline: self.now + self.config.heartbeat_interval,
            check_quorum_deadline: self
                .config
                .check_quorum
                .then(|| self.now + self.config.election_timeout_min),
            read_seq: 0,
            reads_awaiting_commit: Vec::new(),
            reads: VecDeque::new(),
            transfer: None,
            replicate_pending: false,
            heartbeat_pending: false,
            rounds: VecDeque::new(),
            lease_until: None,
            lease_revoked: false,
        });
        self.set_leader(Some(self.id));
        tracing::info!(
            node = %self.id, group = self.config.group, term = self.term.0, "became leader"
        );
        // §5.4.2 and thesis §6.4: an entry of the new term commits the entries of earlier terms
        // and tells the leader its commit index.
        self.append_own(env, EntryData::Noop)?;
        self.broadcast_appends();
        self.maybe_commit();
        Ok(())
    }

    // ----- Messages -----

    fn step<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        message: Message,
    ) -> Result<(), StorageError> {
        let Message { term, kind } = message;
        // PreVote exchanges never change anyone's term (thesis §9.6).
        match kind {
            MessageKind::PreVote {
                last_index,
                last_term,
            } => {
                self.handle_pre_vote(from, term, last_index, last_term);
                return Ok(());
            }
            MessageKind::PreVoteResponse { granted } => {
                return self.handle_pre_vote_response(env, from, term, granted);
            }
            _ => {}
        }
        if term > self.term {
            match kind {
                MessageKind::RequestVote { transfer, .. }
                    if self.config.check_quorum && !transfer && self.leader_recently_heard() =>
                {
                    // §4.2.3: while a leader is heard, a vote request from a server that did
                    // not hear it (a removed or partitioned one) is not allowed to disrupt.
                    tracing::debug!(
                        node = %self.id, group = self.config.group, %from, term = term.0,
                        "vote request ignored: leader alive"
                    );
                    return Ok(());
                }
                MessageKind::Append { .. }
                | MessageKind::Heartbeat { .. }
                | MessageKind::InstallSnapshot { .. }
                | MessageKind::TimeoutNow => self.become_follower(env, term, Some(from))?,
                _ => self.become_follower(env, term, None)?,
            }
        } else if term < self.term {
            // §5.1: a request from an older term is refused with the current term, which makes
            // a deposed leader or a stale candidate step down. Stale responses are dropped.
            match kind {
                MessageKind::Append { .. }
                | MessageKind::Heartbeat { .. }
                | MessageKind::InstallSnapshot { .. } => self.send(from, MessageKind::StaleTerm),
                MessageKind::RequestVote { .. } => {
                    self.send(from, MessageKind::VoteResponse { granted: false })
                }
                _ => {}
            }
            return Ok(());
        }
        match kind {
            MessageKind::Append {
                prev_index,
                prev_term,
                entries,
                leader_commit,
            } => self.handle_append(env, from, prev_index, prev_term, entries, leader_commit),
            MessageKind::Heartbeat {
                commit,
                read_seq,
                complete,
            } => {
                self.follow(env, from)?;
                // The leader sends at most what this server acknowledged holding.
                let held = commit.min(self.log.last_index());
                if held > self.commit {
                    self.advance_commit(held);
                }
                if complete && self.commit >= commit {
                    self.caught_up_at = Some(self.now);
                }
                self.send(from, MessageKind::HeartbeatResponse { read_seq });
                Ok(())
            }
            MessageKind::InstallSnapshot { snapshot } => {
                self.handle_install_snapshot(env, from, snapshot)
            }
            MessageKind::TimeoutNow => {
                self.follow(env, from)?;
                if self.is_voter() {
                    tracing::info!(
                        node = %self.id, group = self.config.group, term = self.term.0,
                        "leadership handed over: campaigning"
                    );
                    self.campaign(env, true)?;
                }
                Ok(())
            }
            MessageKind::RequestVote {
                last_index,
                last_term,
                ..
            } => self.handle_request_vote(env, from, last_index, last_term),
            MessageKind::VoteResponse { granted } => {
                if self.role == Role::Candidate && granted && self.voters.contains(&from) {
                    self.votes.insert(from);
                    if self.has_quorum(&self.votes) {
                        self.become_leader(env)?;
                    }
                }
                Ok(())
            }
            MessageKind::AppendResponse(outcome) => {
                self.handle_append_response(from, outcome);
                Ok(())
            }
            MessageKind::HeartbeatResponse { read_seq } => {
                self.handle_heartbeat_response(from, read_seq);
                Ok(())
            }
            // Only its term mattered, and it was not newer.
            MessageKind::StaleTerm => Ok(()),
            MessageKind::PreVote { .. } | MessageKind::PreVoteResponse { .. } => {
                unreachable!("handled above")
            }
        }
    }

    // ----- Commit and configuration -----

    /// Raises the commit index and emits the newly committed entries.
    fn advance_commit(&mut self, commit: LogIndex) {
        assert!(commit > self.commit, "the commit index only grows");
        assert!(
            commit <= self.log.last_index(),
            "only entries held are committed"
        );
        self.commit = commit;
        while self.applied < commit {
            self.applied = self.applied.next();
            let entry = self
                .log
                .entry(self.applied)
                .expect("entries are compacted only once applied")
                .clone();
            self.outputs.push_back(Output::Committed { entry });
        }
        if self.role != Role::Leader {
            return;
        }
        if self.log.term_at(self.commit) == Some(self.term) {
            let waiting = std::mem::take(
                &mut self
                    .lead
                    .as_mut()
                    .expect("a leader has leader state")
                    .reads_awaiting_commit,
            );
            for ctx in waiting {
                self.start_read(ctx);
            }
        }
        if self.voters_index <= self.commit && !self.is_voter() {
            // Thesis §4.2.2: a leader removed from the configuration steps down once the removal
            // is committed.
            tracing::info!(
                node = %self.id, group = self.config.group, term = self.term.0,
                "removed from the configuration"
            );
            self.step_down(None);
        }
    }

    /// Rebuilds the configuration in force from the log (after it changed) and adjusts the
    /// leader's followers and the election timer to it. A server that finds itself a learner
    /// (or removed) stops campaigning: no election timer.
    fn refresh_voters(&mut self) {
        let (index, voters, learners) = self.log.latest_config();
        self.voters_index = index;
        if *voters == self.voters && *learners == self.learners {
            return;
        }
        self.voters = voters.clone();
        self.learners = learners.clone();
        tracing::debug!(
            node = %self.id, group = self.config.group, voters = ?self.voters,
            learners = ?self.learners, "configuration changed"
        );
        if let Some(lead) = &mut self.lead {
            let next = self.log.last_index().next();
            // A promoted learner keeps its progress: it is caught up.
            lead.progress
                .retain(|v, _| self.voters.contains(v) || self.learners.contains(v));
            for v in self.voters.iter().chain(&self.learners) {
                if *v != self.id {
                    lead.progress
                        .entry(*v)
                        .or_insert_with(|| Progress::new(next));
                }
            }
            if lead.transfer.is_some_and(|t| !self.voters.contains(&t.to)) {
                lead.transfer = None;
            }
            return;
        }
        if !self.is_voter() {
            if self.role != Role::Follower {
                self.step_down(None);
            }
            self.election_deadline = None;
        } else if self.election_deadline.is_none() {
            self.reset_election_timer();
        }
    }

    // ----- Timers -----

    fn tick<S: Storage>(&mut self, env: &mut Env<'_, S>) -> Result<(), StorageError> {
        let now = self.now;
        let Some(lead) = &self.lead else {
            if self.election_deadline.is_some_and(|d| d <= now) {
                self.campaign(env, false)?;
            }
            return Ok(());
        };
        let heartbeat_due = lead.heartbeat_deadline <= now;
        let check_quorum_due = lead.check_quorum_deadline.is_some_and(|d| d <= now);
        let transfer_expired = lead.transfer.is_some_and(|t| t.deadline <= now);
        if heartbeat_due {
            self.heartbeat_tick();
        }
        if check_quorum_due && !self.check_quorum_tick() {
            return Ok(());
        }
        if transfer_expired {
            tracing::info!(
                node = %self.id, group = self.config.group, term = self.term.0,
                "leadership transfer abandoned"
            );
            self.lead.as_mut().expect("still leading").transfer = None;
        }
        Ok(())
    }
}
