//! Primary-backup replication: a sans-IO Raft core.
//!
//! [`Raft`] is one member of one Raft group, written from the Raft paper (Ongaro & Ousterhout,
//! extended version; section numbers `§5.x` below refer to it) and Ongaro's thesis (PreVote
//! §9.6, CheckQuorum §6.2, leadership transfer §3.10, ReadIndex §6.4, single-server membership
//! changes §4.1 with learners that catch up before they vote §4.2.1), in the shape of raft-rs's `RawNode`/`Ready` and quinn-proto: it never reads a
//! clock, draws randomness only from the injected [`triarch_core::DetRng`] (election timeout
//! jitter), and touches no socket or file.
//!
//! # API
//!
//! - **Start / restart**: [`Raft::new`]`(config, &mut storage, rng, now)` validates the
//!   [`RaftConfig`] and recovers hard state, snapshot and log from the storage table
//!   `raft.<group>`.
//! - **Inputs**: [`Raft::handle_message`]`(env, from, message)`, [`Raft::handle_timeout`]`(env)`,
//!   [`Raft::propose`]`(env, data) -> Result<LogIndex, ProposeError>`,
//!   [`Raft::read_index`]`(now, ctx)`, [`Raft::transfer_leadership`]`(now, to)`,
//!   [`Raft::change_membership`]`(env, AddLearner | PromoteLearner | RemoveLearner | AddVoter |
//!   RemoveVoter)` (see [`MembershipChange`]; [`Raft::voters`], [`Raft::learners`],
//!   [`Raft::learner_progress`] show the configuration and how far each learner caught up),
//!   [`Raft::compact`]`(env, index, snapshot_bytes)`. An [`Env`] carries `now` and the storage
//!   the step stages its writes in.
//! - **Outputs**: [`Raft::poll_output`] yields [`Output`]s: `Send { to, message }`,
//!   `Committed { entry }` (apply, in order), `RestoreSnapshot { snapshot }`,
//!   `ReadReady { ctx, index }`, `ReadFailed { ctx, leader }`, `LeaderChanged { term, leader }`,
//!   `SnapshotWanted` (only with [`RaftConfig::snapshots_on_demand`]).
//!   [`Raft::poll_timeout`] says when to call [`Raft::handle_timeout`].
//! - **Checks**: [`Raft::check_invariants`] asserts this member's invariants after each step.
//!
//! Proposals are batched: everything proposed in one batch leaves in one append per follower
//! when the driver drains the outputs. Followers are probed one append at a time until their
//! log is known to match, then fed pipelined appends (at most `appends_in_flight_max` in
//! flight, `entries_per_append_max` entries each); a rejection carries a conflict term and
//! index so the leader skips a whole term per round trip.
//!
//! # Persistence contract (persist-then-send)
//!
//! Every step stages its writes in [`triarch_storage::Storage`] *before* queuing any output
//! that depends on them: the term and vote before a vote or a vote request, log entries before
//! their acknowledgement, a snapshot before its acknowledgement. The driver drains the outputs
//! after each step, syncs the storage once for the whole batch of steps (group commit), and
//! releases the batch's outputs only after the sync succeeded — except messages for which
//! [`Message::may_precede_sync`] holds (PreVote and heartbeats, which vouch for nothing staged).
//! A crash loses at most the writes staged since the last sync, and may keep any prefix of them:
//! writes are ordered so that every prefix recovers to a valid log (see `persist.rs`).
//!
//! If a storage call fails, the step returns the error and the instance refuses further use:
//! the driver must drop the batch's outputs and rebuild the member from storage.
//!
//! # The application's side
//!
//! The application applies `Committed` entries in order (`Noop` and `Membership` entries too
//! carry an index; they change nothing in the state machine) and replaces its state on
//! `RestoreSnapshot`. Its state may be volatile (rebuilt from snapshot and log at each start:
//! leave [`RaftConfig::applied_index`] at 0) or durable, written in the same storage batch as
//! the entries it applies, together with the last applied index, which it passes back as
//! `applied_index` at restart. To compact, it calls [`Raft::compact`] with an applied index and
//! the bytes of its state at that index; Raft keeps the latest snapshot and sends it to
//! followers that need entries it no longer has. A durable application may compact without
//! copying its state ([`RaftConfig::snapshots_on_demand`]): it passes empty bytes, and provides
//! the state, at its applied index, only when Raft asks for it (`SnapshotWanted`).
//!
//! # Embedding in a node
//!
//! One `Raft` per group: one for each primary-backup keyspace (group name = keyspace name,
//! table `raft.<keyspace>`) and one for cluster metadata (e.g. group `meta`), all sharing the
//! node's one [`triarch_storage::Storage`], so the node's single per-batch sync covers every
//! group (group commit across groups). The node wraps [`Message`] with the group name in its
//! peer message enum, routes by it, passes `Env { now: now.instant, storage }` into each call,
//! merges the groups' [`Raft::poll_timeout`]s, and maps outputs: `Committed` entries are
//! applied to the keyspace's data table in the same batch (the client's reply is released with
//! the batch's outputs, after the sync); `ReadReady` answers a read from the keyspace's data;
//! `NotLeader { leader }` and `LeaderChanged` redirect clients.
//!
//! # Tests
//!
//! Scenario tests quote the rule they check (paper §5, Figures 3, 7, 8; thesis PreVote,
//! CheckQuorum, ReadIndex, transfer, membership); a seeded simulation runs five-server
//! clusters through loss, duplication, reordering, partitions, crashes that lose unsynced
//! writes, compaction, membership changes and transfers, checking Figure 3's properties after
//! every step, then checks that a healed cluster commits again; a bounded model checker
//! explores every interleaving of a three-server cluster. A planted bug
//! ([`RaftConfig::bug_commit_without_majority`]) shows both the simulation's checker and the
//! model checker fail when they should; another
//! ([`RaftConfig::bug_learner_counts_toward_commit`]) shows the simulation's seeds that add
//! servers as learners catch a learner counted toward a commit. `TRIARCH_RAFT_SEED=<n>` replays one simulation seed;
//! `TRIARCH_MODEL_DEPTH` (and friends, see `tests/model.rs`) deepens the model checker.
//!
//! # Not built yet
//!
//! - Snapshots are sent whole in one message and held in memory; no chunking, no streaming
//!   from the application's own tables.
//! - Learners are promoted on the leader's word that they are within
//!   [`RaftConfig::learner_promotion_lag_entries_max`] entries of its log, not after the
//!   thesis's timed catch-up rounds (§4.2.1); the node does not yet add servers as learners.
//!   A removed server is not told it was removed (the node should stop its member when a
//!   committed configuration excludes it).
//! - Only the leader serves reads (`read_index`, or `lease_read` with
//!   [`RaftConfig::lease_reads`]); no follower reads.
//! - With [`RaftConfig::parallel_append`] (what the node runs), appends leave before the
//!   leader's own sync and the leader counts itself toward a commit only once the driver
//!   reports its copy durable ([`Raft::sync_point`], [`Raft::mark_durable`]); the crate's own
//!   simulation and model checker run the plain mode.
//! - No flow control beyond the in-flight window and the per-append entry and byte limits;
//!   pending reads and proposals are not bounded here (the node bounds requests in flight).

pub mod config;
pub mod engine;
pub mod error;
mod log;
pub mod machine;
pub mod message;
mod persist;
mod raft;
pub mod types;

pub use config::{ConfigError, RaftConfig};
pub use engine::{Primary, PrimaryConfig};
pub use error::{
    CompactError, MembershipError, ProposeError, ReadError, RecoveryError, TransferError,
};
pub use message::{AppendOutcome, Message, MessageKind};
pub use persist::FORMAT_VERSION;
pub use raft::{Env, MembershipChange, Output, Raft, Role, SyncPoint};
pub use types::{Entry, EntryData, LogIndex, Snapshot, Term};

#[cfg(test)]
mod tests;
