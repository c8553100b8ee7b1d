//! Every primary-backup keyspace of one node: one Raft group per keyspace, the client requests
//! routed to each group's leader, and the committed entries applied to each keyspace's data.
//!
//! [`Primary`] follows the same sans-IO contract as the Raft core and the leaderless engine:
//! inputs come in through `request`, `handle_message` and `handle_timeout` with the time and the
//! storage passed in an [`Env`]; what to send and whom to answer comes out of
//! [`Primary::poll_effect`]; [`Primary::poll_timeout`] says when to call `handle_timeout`.
//!
//! # Where a request goes
//!
//! A keyspace's voters are `n` of the cluster's members chosen by rendezvous hashing on the
//! keyspace's name (every member when `n` is the cluster size), so leaders of different
//! keyspaces tend to land on different nodes. The node that accepts a client's request (its
//! *origin*) numbers it (an [`Origin`]) and:
//!
//! - serves it itself if it leads the keyspace's group: a write is proposed as one log entry, a
//!   read waits for a ReadIndex confirmation (thesis §6.4) and is then served from the applied
//!   state, so every read is linearizable;
//! - otherwise forwards it to the leader it knows (or, knowing none, waits for an election if it
//!   is a voter, or asks a voter if it is not). A member that is not the leader answers
//!   [`Outcome::NotLeader`] with its own guess, and the origin tries there, at most
//!   [`PrimaryConfig::forward_attempts_max`] times. A member that knows no leader either (an
//!   election is on) does not use up an attempt: the origin asks again a heartbeat later, until
//!   the request's deadline, so a request made during an election waits for its outcome.
//!
//! Whoever proposed the entry answers once it is applied; the origin, if it is a voter, also
//! recognises its own entries as it applies them and answers its client at once (whichever comes
//! first). Each origin's entries apply at most once ([`crate::machine`]'s sessions), so
//! re-forwarding after a leader change never applies a write twice.
//!
//! # What a client is told
//!
//! - The result of its command(s), once the entry is committed and applied.
//! - [`Outcome::NotLeader`] only inside the cluster; the origin retries.
//! - [`Outcome::Unavailable`] after the forwarding attempts ran out and [`Outcome::Timeout`]
//!   after [`PrimaryConfig::request_timeout`]: the write may or may not have happened (a
//!   forward or a proposal may still be in some log).
//!
//! # Durability (persist-then-send)
//!
//! Entries, votes and applied state are staged in the node's one storage and released by the
//! driver after the batch's sync; the Raft core's messages say which may leave earlier
//! ([`Message::may_precede_sync`]). A reply is released with its batch, after the sync.

use crate::config::RaftConfig;
use crate::machine::{Applied, Command, Extension, Machine, Origin, Proposal, Record};
use crate::message::Message as RaftMessage;
use crate::raft::{MembershipChange, Output as RaftOutput, Raft, Role};
use crate::types::{EntryData, LogIndex, Term};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use triarch_core::hash::{mix64, stable_hash64};
use triarch_core::{DetRng, HlcTimestamp, Instant, KeyspaceConfig, NodeId, RequestId};
use triarch_storage::{Storage, StorageError};

/// Settings shared by every primary-backup group of a node.
#[derive(Clone, Debug)]
pub struct PrimaryConfig {
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub heartbeat_interval: Duration,
    /// How long a request may wait for its outcome before the client is told it timed out.
    pub request_timeout: Duration,
    /// How many members a request is forwarded to before the client is told the keyspace is
    /// unavailable.
    pub forward_attempts_max: u8,
    /// How many applied entries a group keeps in its log for followers that lag (a follower
    /// further behind needs a snapshot); the log is compacted in steps of a hundredth of this.
    /// Compaction does not copy the keyspace's state: a snapshot is materialized only when a
    /// follower needs one ([`RaftConfig::snapshots_on_demand`]).
    pub compact_every: u64,
    /// Serve reads under the leader's lease when it holds one (no round of messages; see
    /// [`RaftConfig::lease_reads`] for what it assumes of clocks), else by ReadIndex.
    pub lease_reads: bool,
    /// Hand leadership to the keyspace's [`preferred_leader`] once it has caught up, so that
    /// leaders of different keyspaces spread across nodes.
    pub spread_leaders: bool,
    /// PLANTED BUG for checker tests: a voter serves reads from its own applied state, without
    /// asking whether it leads or confirming with a quorum (ReadIndex), so a deposed leader or
    /// a lagging follower answers stale values. Never set outside tests.
    pub bug_local_reads: bool,
    /// PLANTED BUG for move tests: when a group's voters move, the leader removes a voter that
    /// leaves before the voter that replaces it has been added and caught up, so the group runs
    /// with fewer voters than it should (a smaller majority to lose). Never set outside tests.
    pub bug_move_remove_first: bool,
}

impl Default for PrimaryConfig {
    fn default() -> Self {
        PrimaryConfig {
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            heartbeat_interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
            forward_attempts_max: 10,
            compact_every: 100_000,
            lease_reads: false,
            spread_leaders: true,
            bug_local_reads: false,
            bug_move_remove_first: false,
        }
    }
}

/// `members` ranked by rendezvous hashing on a group's name: the same order on every node, a
/// different one for each group.
pub fn ranked(name: &str, members: &[NodeId]) -> Vec<NodeId> {
    let seed = stable_hash64(name.as_bytes());
    let mut ranked: Vec<(u64, NodeId)> = members
        .iter()
        .map(|m| (mix64(seed ^ u64::from(m.0)), *m))
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, m)| m).collect()
}

/// A cluster member as placement sees it: its id and its region.
pub type Placed<'a> = (NodeId, &'a str);

/// `members` in the order a primary-backup keyspace's group takes them: the keyspace's
/// rendezvous ranking, with the members of its home region (if it has one) first.
fn placement_order(keyspace: &KeyspaceConfig, members: &[Placed<'_>]) -> Vec<NodeId> {
    let ids: Vec<NodeId> = members.iter().map(|(id, _)| *id).collect();
    let mut order = ranked(&keyspace.name, &ids);
    if let Some(home) = &keyspace.home {
        let away = |id: &NodeId| members.iter().any(|(m, r)| m == id && r != home);
        // Stable: each side keeps the ranking's order.
        order.sort_by_key(away);
    }
    order
}

/// The `n` voters of a primary-backup keyspace among `members`: the first `n` of its
/// placement order (the home region's members first, then the rest of the ranking).
pub fn voters_of(keyspace: &KeyspaceConfig, members: &[Placed<'_>]) -> BTreeSet<NodeId> {
    placement_order(keyspace, members)
        .into_iter()
        .take(usize::from(keyspace.n).max(1))
        .collect()
}

/// The member a keyspace's leadership is handed to when it is healthy and caught up: the first
/// of its placement order. Different keyspaces prefer different members, which spreads their
/// leaders (and so their write load) across the cluster; a keyspace with a home region prefers
/// a member there.
pub fn preferred_leader(keyspace: &KeyspaceConfig, members: &[Placed<'_>]) -> NodeId {
    placement_order(keyspace, members)[0]
}

/// One Raft group this engine runs: a primary-backup keyspace, or one region of a multi-leader
/// keyspace (whose state lives in the group's [`Extension`]).
#[derive(Clone, Debug)]
pub struct GroupSpec {
    /// The group's name: the keyspace's, or `keyspace.region` for a region. Names the storage
    /// table (`data.<name>`) and every message of the group.
    pub name: String,
    pub voters: BTreeSet<NodeId>,
    /// Where leadership should be (see [`preferred_leader`]).
    pub preferred: NodeId,
    pub extension: Option<Arc<dyn Extension>>,
    /// Keep a leader lease (for lease reads), whatever [`PrimaryConfig::lease_reads`] says.
    pub lease_reads: bool,
    /// The group was re-placed since it was created (`TRIARCH.KEYSPACE HOME`), so `voters` is a
    /// target, not the bootstrap configuration: a member this node starts now starts with no
    /// configuration (it never campaigns until the leader's log tells it it votes), and the
    /// group's leader moves the configuration to `voters` one server at a time (see
    /// [`Primary::handle_timeout`]).
    pub moved: bool,
}

impl GroupSpec {
    /// The group of primary-backup keyspace `keyspace` among the cluster's `members`.
    pub fn primary_backup(keyspace: &KeyspaceConfig, members: &[Placed<'_>]) -> GroupSpec {
        GroupSpec {
            name: keyspace.name.clone(),
            voters: voters_of(keyspace, members),
            preferred: preferred_leader(keyspace, members),
            extension: None,
            lease_reads: keyspace.read == triarch_core::ReadPolicy::Lease,
            moved: false,
        }
    }
}

/// What a client asks of a keyspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A linearizable read of these keys' records (value and version).
    Read { keys: Vec<Bytes> },
    /// A linearizable read of these rows of the group's [`Extension`].
    ReadRows { rows: Vec<Bytes> },
    /// A read of these keys' records that a voter may serve from its own state when it is
    /// fresh enough; otherwise it is served as [`Op::Read`].
    ReadFresh {
        keys: Vec<Bytes>,
        freshness: Freshness,
    },
    /// One log entry: `commands` applied atomically if every watched key still has its version.
    Write {
        watches: Vec<(Bytes, u64)>,
        commands: Vec<Command>,
    },
}

/// How fresh a follower's state must be to serve a read ([`Op::ReadFresh`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Freshness {
    /// Missing at most the writes committed in the last `max_lag` (as the voter measures it
    /// from the leader's last append: the time that append spent on the wire comes on top).
    Bounded { max_lag: Duration },
    /// Holding every entry up to `index` (read-your-writes: the index a write returned).
    Session { index: LogIndex },
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// [`Op::Read`]: one record per key, in order.
    Read(Vec<ReadRecord>),
    /// [`Op::ReadRows`]: each row's value, in order.
    Rows(Vec<Option<Bytes>>),
    /// [`Op::Write`]: applied ([`Applied::Done`]) or aborted by a watch (never `Duplicate`), by
    /// the entry at `index` (a session token for later [`Freshness::Session`] reads).
    Applied { applied: Applied, index: LogIndex },
    /// This member does not lead the group; `leader` is its guess. The request did not reach
    /// the log through this member.
    NotLeader { leader: Option<NodeId> },
    /// No leader could be reached; a write may or may not have happened.
    Unavailable { leader: Option<NodeId> },
    /// No outcome in time; a write may or may not have happened.
    Timeout,
    /// The keyspace's storage failed on this node.
    Storage(String),
}

/// A key's record as a read returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRecord {
    pub value: Option<Bytes>,
    /// The index of the entry that last wrote the key (0: never written); what `WATCH` records.
    pub version: u64,
}

impl From<Record> for ReadRecord {
    fn from(r: Record) -> Self {
        ReadRecord {
            value: r.value,
            version: r.version,
        }
    }
}

/// Every group's [`crate::SyncPoint`]: what one sync covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncPoints(BTreeMap<String, crate::SyncPoint>);

/// What primary-backup members say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A Raft message of the group of keyspace `group`.
    Raft { group: String, message: RaftMessage },
    /// Serve this request for its origin (the sender).
    Forward {
        group: String,
        origin: Origin,
        op: Op,
    },
    /// The outcome of the origin's request `seq` of incarnation `incarnation`. `early`: it
    /// vouches only for entries committed on a quorum of durable logs (see
    /// [`Message::may_precede_sync`]).
    ForwardReply {
        incarnation: HlcTimestamp,
        seq: u64,
        outcome: Outcome,
        early: bool,
    },
    /// From a member that is no longer in group `group`'s target: is it still in the
    /// configuration? Only a leader whose committed configuration leaves the sender out answers
    /// ([`Message::Removed`]); the others stay silent.
    StillMember { group: String },
    /// The leader's committed configuration of `group`, set by the entry at `configuration`,
    /// leaves the receiver out: its member may stop and delete its copy of the group, unless
    /// its own log holds a later configuration (it was added again since: this answer is
    /// stale).
    Removed {
        group: String,
        configuration: LogIndex,
    },
}

impl Message {
    /// Whether the message may leave before the batch's staged writes are durable: the Raft
    /// core's rule for its messages. A forward names the origin's incarnation, unique only once
    /// the clock ceiling staged at start is durable: it waits. A reply of a group of two or more
    /// voters vouches only for entries committed on a quorum of durable logs (whatever this
    /// node's apply staged can be redone from its log): it may leave at once, which takes the
    /// apply batch's fsync off the write's path.
    pub fn may_precede_sync(&self) -> bool {
        match self {
            Message::Raft { message, .. } => message.may_precede_sync_parallel(),
            Message::Forward { .. } => false,
            Message::ForwardReply { early, .. } => *early,
            Message::StillMember { .. } | Message::Removed { .. } => false,
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
    /// `early`: the outcome may reach the client before this node's batch is durable (see
    /// [`Message::may_precede_sync`]).
    Reply {
        request: RequestId,
        outcome: Outcome,
        early: bool,
    },
}

/// What the engine needs from its node for one step: the Raft core's own environment (the time
/// and the storage the step stages its writes in), passed through to every group.
pub use crate::raft::Env;

/// Who is waiting for a request's outcome at the member serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asker {
    /// This node's own request `seq`.
    Local(u64),
    /// Another node's request, forwarded here.
    Remote {
        node: NodeId,
        incarnation: HlcTimestamp,
        seq: u64,
    },
}

/// A request accepted by this node, waiting for its outcome.
#[derive(Clone, Debug)]
struct Pending {
    request: RequestId,
    group: String,
    op: Op,
    deadline: Instant,
    attempts: u8,
    /// Waiting for the group to elect a leader.
    parked: bool,
    /// Forwarded to this member, which has not answered yet.
    forwarded_to: Option<NodeId>,
    /// When to forward again if it has not answered by then.
    retry_at: Option<Instant>,
}

struct Proposed {
    origin: Origin,
    asker: Asker,
    since: Instant,
}

struct ReadJob {
    asker: Asker,
    read: Read,
    since: Instant,
}

/// What a read reads: user keys' records, or the extension's rows.
#[derive(Clone, Debug)]
enum Read {
    Keys(Vec<Bytes>),
    Rows(Vec<Bytes>),
}

/// One primary-backup keyspace on one of its voters.
struct Group {
    /// Where leadership should be (see [`preferred_leader`]).
    preferred: NodeId,
    /// The term in which this member last handed leadership to `preferred` (once per term).
    handed_over_in: Option<Term>,
    raft: Raft,
    machine: Machine,
    /// The voters the catalog places the group on (the bootstrap configuration unless
    /// `moved`); the configuration in force is the Raft member's.
    target: BTreeSet<NodeId>,
    /// See [`GroupSpec::moved`].
    moved: bool,
    /// When this member, as leader, last handed leadership away because it leaves the group.
    leaving_transfer_at: Option<Instant>,
    /// When this member, outside the target, last asked whether it was removed.
    asked_removed_at: Option<Instant>,
    /// Entries this member proposed, until applied or overwritten.
    proposed: BTreeMap<LogIndex, Proposed>,
    /// The origins of `proposed`, to refuse a duplicate forward without a scan.
    proposed_origins: BTreeSet<Origin>,
    /// ReadIndex reads in flight, by context.
    reads: BTreeMap<RequestId, ReadJob>,
    /// Set when a storage call failed: the member refuses work until the node restarts.
    broken: Option<String>,
}

/// A group's state for `INFO` and `TRIARCH.KEYSPACE INFO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    pub keyspace: String,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub last_index: LogIndex,
    pub snapshot_index: LogIndex,
    /// The configuration in force on this member: its voters and learners.
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// The voters the catalog places the group on (where a move is taking it).
    pub target: BTreeSet<NodeId>,
    /// On the leader: each follower's matched index and its lag in entries.
    pub followers: Vec<(NodeId, LogIndex, u64)>,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrimaryStats {
    pub proposals: u64,
    /// Reads confirmed by a ReadIndex round.
    pub reads: u64,
    /// Reads served under the leader's lease.
    pub lease_reads: u64,
    /// Reads a voter served from its own state, fresh enough for the read's bound or session.
    pub fresh_reads: u64,
    pub forwards_sent: u64,
    pub forwards_served: u64,
    pub not_leader: u64,
    pub timeouts: u64,
    pub duplicates: u64,
    pub aborted: u64,
    pub snapshots_restored: u64,
    pub compactions: u64,
    /// Snapshots whose state was copied because a follower needed one.
    pub snapshots_materialized: u64,
}

/// All primary-backup groups of one node.
pub struct Primary {
    id: NodeId,
    config: PrimaryConfig,
    incarnation: HlcTimestamp,
    rng: DetRng,
    next_seq: u64,
    next_ctx: u64,
    groups: BTreeMap<String, Group>,
    /// Leader guesses for keyspaces this node is not a voter of.
    hints: BTreeMap<String, NodeId>,
    /// The voters of every keyspace a request was made for.
    voters: BTreeMap<String, BTreeSet<NodeId>>,
    pending: BTreeMap<u64, Pending>,
    effects: VecDeque<Effect>,
    stats: PrimaryStats,
}

impl Primary {
    /// `incarnation` must be above every incarnation this node had before (the node's clock,
    /// restored above its persisted ceiling).
    pub fn new(id: NodeId, config: PrimaryConfig, incarnation: HlcTimestamp, rng: DetRng) -> Self {
        Primary {
            id,
            config,
            incarnation,
            rng,
            next_seq: 1,
            next_ctx: 1,
            groups: BTreeMap::new(),
            hints: BTreeMap::new(),
            voters: BTreeMap::new(),
            pending: BTreeMap::new(),
            effects: VecDeque::new(),
            stats: PrimaryStats::default(),
        }
    }

    pub fn stats(&self) -> PrimaryStats {
        self.stats
    }

    /// Requests accepted here that have no outcome yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Starts this node's member of `keyspace`'s group if it is a voter and not started yet
    /// (at node start for every primary-backup keyspace in the catalog, and when the catalog
    /// learns a new one).
    pub fn ensure_group<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        spec: &GroupSpec,
    ) -> Result<(), String> {
        if let Some(g) = self.groups.get_mut(&spec.name) {
            // The catalog changed (a new home): the leader moves the group toward it.
            g.target = spec.voters.clone();
            g.preferred = spec.preferred;
            g.moved = spec.moved;
            return Ok(());
        }
        // A removal interrupted by a crash is finished before anything else.
        finish_forgetting(env.storage, &spec.name).map_err(|e| e.to_string())?;
        // Outside the target, a member restarts only from a copy it holds: a re-placed group
        // may still count it as a voter (it stops once the leader says it was removed).
        let holds_copy = || -> Result<bool, String> {
            let table = RaftConfig::new(self.id, spec.name.clone(), BTreeSet::new()).table();
            let first = env
                .storage
                .scan(&table, &[], 1)
                .map_err(|e| e.to_string())?;
            Ok(!first.is_empty())
        };
        let runs_here = spec.voters.contains(&self.id) || (spec.moved && holds_copy()?);
        if !runs_here {
            return Ok(());
        }
        // A re-placed group's bootstrap configuration is not `spec.voters`: a member started
        // now knows no configuration (it never campaigns) until the leader's log or snapshot
        // gives it one. What storage holds takes precedence either way.
        let voters = if spec.moved {
            BTreeSet::new()
        } else {
            spec.voters.clone()
        };
        let machine = Machine::recover(env.storage, &spec.name)
            .map_err(|e| e.to_string())?
            .with_extension(spec.extension.clone());
        let mut raft_config = RaftConfig::new(self.id, spec.name.clone(), voters.clone());
        raft_config.election_timeout_min = self.config.election_timeout_min;
        raft_config.election_timeout_max = self.config.election_timeout_max;
        raft_config.heartbeat_interval = self.config.heartbeat_interval;
        raft_config.applied_index = machine.applied();
        raft_config.lease_reads = self.config.lease_reads || spec.lease_reads;
        raft_config.parallel_append = true;
        // The machine's state is durable, at or past every snapshot it compacted, and never
        // serializes to empty bytes (`Machine::snapshot`).
        raft_config.snapshots_on_demand = true;
        let raft = Raft::new(raft_config, env.storage, self.rng.fork(), env.now)
            .map_err(|e| e.to_string())?;
        tracing::info!(node = %self.id, group = spec.name, ?voters, "raft group started");
        self.groups.insert(
            spec.name.clone(),
            Group {
                preferred: spec.preferred,
                handed_over_in: None,
                raft,
                machine,
                target: spec.voters.clone(),
                moved: spec.moved,
                leaving_transfer_at: None,
                asked_removed_at: None,
                proposed: BTreeMap::new(),
                proposed_origins: BTreeSet::new(),
                reads: BTreeMap::new(),
                broken: None,
            },
        );
        self.drain(env, &spec.name);
        Ok(())
    }

    /// The group's state on this node (`None` if this node is not one of its voters).
    pub fn info(&self, keyspace: &str) -> Option<GroupInfo> {
        let g = self.groups.get(keyspace)?;
        let raft = &g.raft;
        let last = raft.last_index();
        Some(GroupInfo {
            keyspace: keyspace.to_string(),
            role: raft.role(),
            term: raft.term(),
            leader: raft.leader(),
            commit_index: raft.commit_index(),
            applied_index: g.machine.applied(),
            last_index: last,
            snapshot_index: raft.snapshot().index,
            voters: raft.voters().clone(),
            learners: raft.learners().clone(),
            target: g.target.clone(),
            followers: raft
                .follower_progress()
                .into_iter()
                .map(|(id, matched)| (id, matched, last.distance_from(matched)))
                .collect(),
        })
    }

    /// The index group `name`'s state machine has applied on this node (`None`: not a voter).
    pub fn applied_index(&self, name: &str) -> Option<LogIndex> {
        self.groups.get(name).map(|g| g.machine.applied())
    }

    /// Whether this node leads group `name`.
    pub fn leads(&self, name: &str) -> bool {
        self.groups.get(name).is_some_and(|g| g.raft.is_leader())
    }

    /// Keyspaces this node is a voter of.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(|k| k.as_str())
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let raft = self.groups.values().filter_map(|g| g.raft.poll_timeout());
        let pending = self
            .pending
            .values()
            .flat_map(|p| [Some(p.deadline), p.retry_at])
            .flatten();
        raft.chain(pending).min()
    }

    /// A client's request on group `group` (already validated: the keys belong to it).
    pub fn request<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        request: RequestId,
        group: &GroupSpec,
        op: Op,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        // The catalog's latest placement: whom a node outside the group asks first.
        self.voters.insert(group.name.clone(), group.voters.clone());
        self.pending.insert(
            seq,
            Pending {
                request,
                group: group.name.clone(),
                op,
                deadline: env.now + self.config.request_timeout,
                attempts: 0,
                parked: false,
                forwarded_to: None,
                retry_at: None,
            },
        );
        self.route(env, seq);
    }

    fn origin(&self, seq: u64) -> Origin {
        Origin {
            node: self.id,
            incarnation: self.incarnation,
            seq,
        }
    }

    /// Serves pending request `seq` here if this node leads its group, else forwards it.
    fn route<S: Storage>(&mut self, env: &mut Env<'_, S>, seq: u64) {
        let Some(p) = self.pending.get_mut(&seq) else {
            return;
        };
        p.parked = false;
        p.forwarded_to = None;
        p.retry_at = None;
        let name = p.group.clone();
        if let Op::ReadFresh { keys, freshness } = &p.op {
            if let Some(g) = self.groups.get(&name)
                && g.broken.is_none()
                && fresh(g, env.now, *freshness)
            {
                self.stats.fresh_reads += 1;
                let outcome = read_outcome(&g.machine, env.storage, &Read::Keys(keys.clone()));
                self.finish(seq, outcome, true);
                return;
            }
            // Not fresh enough here (or not a voter): a linearizable read at the leader.
            p.op = Op::Read { keys: keys.clone() };
        }
        let op = p.op.clone();
        let local_read =
            self.config.bug_local_reads && matches!(op, Op::Read { .. } | Op::ReadRows { .. });
        let member = self.groups.get(&name);
        let target = match member {
            Some(g) if g.raft.is_leader() || local_read => None,
            Some(g) if !outsider(g, self.id) && g.raft.leader().is_some() => g.raft.leader(),
            Some(g) if !outsider(g, self.id) => {
                // A voter learns of the next leader itself: wait for the election.
                p.parked = true;
                return;
            }
            // A member joining or leaving a group that moves, whose view of the leader may be
            // missing or stale: the latest guess first, like a node outside the group.
            _ => match self
                .hints
                .get(&name)
                .copied()
                .or(member.and_then(|g| g.raft.leader()))
            {
                Some(l) => Some(l),
                None => {
                    // Not a voter and no guess: ask a voter.
                    let voters: Vec<NodeId> = self
                        .voters
                        .get(&name)
                        .map(|v| v.iter().copied().filter(|m| *m != self.id).collect())
                        .unwrap_or_default();
                    if voters.is_empty() {
                        self.finish(seq, Outcome::Unavailable { leader: None }, true);
                        return;
                    }
                    Some(voters[self.rng.below(voters.len() as u64) as usize])
                }
            },
        };
        match target {
            None => {
                let origin = self.origin(seq);
                self.serve(env, &name, Asker::Local(seq), origin, op);
            }
            Some(to) => {
                let p = self.pending.get_mut(&seq).expect("present");
                p.attempts += 1;
                if p.attempts > self.config.forward_attempts_max {
                    self.finish(seq, Outcome::Unavailable { leader: Some(to) }, true);
                    return;
                }
                p.forwarded_to = Some(to);
                p.retry_at = Some(env.now + self.config.election_timeout_max);
                self.stats.forwards_sent += 1;
                let message = Message::Forward {
                    group: name,
                    origin: self.origin(seq),
                    op,
                };
                self.effects.push_back(Effect::Send { to, message });
            }
        }
    }

    /// Serves a request as the group's leader.
    fn serve<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        name: &str,
        asker: Asker,
        origin: Origin,
        op: Op,
    ) {
        let Some(g) = self.groups.get_mut(name) else {
            return self.respond(env, name, asker, Outcome::NotLeader { leader: None });
        };
        if let Some(e) = &g.broken {
            let e = e.clone();
            return self.respond(env, name, asker, Outcome::Storage(e));
        }
        let (read, op) = match op {
            Op::Read { keys } | Op::ReadFresh { keys, .. } => (Some(Read::Keys(keys)), None),
            Op::ReadRows { rows } => (Some(Read::Rows(rows)), None),
            write => (None, Some(write)),
        };
        match (read, op) {
            (Some(read), _) if self.config.bug_local_reads => {
                let outcome = read_outcome(&g.machine, env.storage, &read);
                return self.respond(env, name, asker, outcome);
            }
            (Some(read), _)
                if g.raft
                    .lease_read(env.now)
                    .is_some_and(|index| g.machine.applied() >= index) =>
            {
                self.stats.lease_reads += 1;
                let outcome = read_outcome(&g.machine, env.storage, &read);
                return self.respond(env, name, asker, outcome);
            }
            (Some(read), _) => {
                let ctx = RequestId(self.next_ctx);
                self.next_ctx += 1;
                match g.raft.read_index(env.now, ctx) {
                    Ok(()) => {
                        self.stats.reads += 1;
                        g.reads.insert(
                            ctx,
                            ReadJob {
                                asker,
                                read,
                                since: env.now,
                            },
                        );
                    }
                    Err(crate::ReadError::NotLeader { leader }) => {
                        return self.respond(env, name, asker, Outcome::NotLeader { leader });
                    }
                }
            }
            (None, Some(Op::Read { .. } | Op::ReadRows { .. } | Op::ReadFresh { .. }))
            | (None, None) => {
                unreachable!("reads matched above")
            }
            (None, Some(Op::Write { watches, commands })) => {
                if g.proposed_origins.contains(&origin) {
                    // A duplicate of a forward already in the log here.
                    return;
                }
                let data = Proposal {
                    origin,
                    watches,
                    commands,
                }
                .encode();
                match g.raft.propose(env, data) {
                    Ok(index) => {
                        self.stats.proposals += 1;
                        g.proposed_origins.insert(origin);
                        let replaced = g.proposed.insert(
                            index,
                            Proposed {
                                origin,
                                asker,
                                since: env.now,
                            },
                        );
                        // A proposal of an earlier term at this index was truncated away
                        // before it applied.
                        if let Some(old) = replaced {
                            g.proposed_origins.remove(&old.origin);
                        }
                    }
                    Err(crate::ProposeError::NotLeader { leader }) => {
                        return self.respond(env, name, asker, Outcome::NotLeader { leader });
                    }
                    Err(crate::ProposeError::TransferInProgress { .. }) => {
                        // Leadership is moving: ask again once it has (a heartbeat later),
                        // rather than chase a member that does not lead yet.
                        return self.respond(env, name, asker, Outcome::NotLeader { leader: None });
                    }
                    Err(crate::ProposeError::Storage(e)) => {
                        g.broken = Some(e.to_string());
                        return self.respond(env, name, asker, Outcome::Storage(e.to_string()));
                    }
                }
            }
        }
        self.drain(env, name);
    }

    /// Whether outcomes of `group` computed here may leave before this node's batch is durable:
    /// they reflect only entries committed on a quorum of durable logs (groups run in
    /// [`RaftConfig::parallel_append`] mode: a leader counts itself toward a commit only once
    /// the driver reported its copy durable), so whatever this node's apply staged can be redone
    /// from its log. Reads reflect the same committed entries.
    fn early_safe(&self, _group: &str) -> bool {
        true
    }

    /// What the sync that starts now covers of every group's log.
    pub fn sync_point(&self) -> SyncPoints {
        SyncPoints(
            self.groups
                .iter()
                .map(|(name, g)| (name.clone(), g.raft.sync_point()))
                .collect(),
        )
    }

    /// The sync that started at `points` finished: leaders may count their own copies of those
    /// entries toward committing them.
    pub fn synced<S: Storage>(&mut self, env: &mut Env<'_, S>, points: SyncPoints) {
        for (name, point) in points.0 {
            let Some(g) = self.groups.get_mut(&name) else {
                continue;
            };
            if g.broken.is_some() {
                continue;
            }
            g.raft.mark_durable(env.now, point);
            self.drain(env, &name);
        }
    }

    /// Delivers an outcome of `group` to whoever waits for it.
    fn respond<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        group: &str,
        asker: Asker,
        outcome: Outcome,
    ) {
        let early = self.early_safe(group);
        match asker {
            Asker::Local(seq) => self.local_outcome(env, seq, outcome, early),
            Asker::Remote {
                node,
                incarnation,
                seq,
            } => self.effects.push_back(Effect::Send {
                to: node,
                message: Message::ForwardReply {
                    incarnation,
                    seq,
                    outcome,
                    early,
                },
            }),
        }
    }

    /// An outcome for this node's own request `seq`: a redirect is followed, anything else
    /// answers the client.
    fn local_outcome<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        seq: u64,
        outcome: Outcome,
        early: bool,
    ) {
        let Some(p) = self.pending.get(&seq) else {
            return;
        };
        match outcome {
            Outcome::NotLeader { leader } => {
                self.stats.not_leader += 1;
                let tried = p.forwarded_to;
                match leader {
                    // A new guess: try it now.
                    Some(l) if l != self.id && Some(l) != tried => {
                        if self
                            .groups
                            .get(&p.group)
                            .is_none_or(|g| outsider(g, self.id))
                        {
                            self.hints.insert(p.group.clone(), l);
                        }
                        self.route(env, seq);
                    }
                    // No better guess (an election is on, or our own view is stale): try
                    // again a heartbeat later rather than bounce between members.
                    _ => {
                        let retry = env.now + self.config.heartbeat_interval;
                        let p = self.pending.get_mut(&seq).expect("present");
                        p.forwarded_to = None;
                        p.retry_at = Some(retry);
                        if leader.is_none() {
                            // Nobody to blame: an election, not a wrong guess.
                            p.attempts = p.attempts.saturating_sub(1);
                        }
                    }
                }
            }
            outcome => self.finish(seq, outcome, early),
        }
    }

    /// Answers the client of request `seq`. `early`: the outcome vouches for nothing this node
    /// has only staged (see [`Primary::early_safe`]).
    fn finish(&mut self, seq: u64, outcome: Outcome, early: bool) {
        if let Some(p) = self.pending.remove(&seq) {
            if outcome == Outcome::Timeout {
                self.stats.timeouts += 1;
            }
            self.effects.push_back(Effect::Reply {
                request: p.request,
                outcome,
                early,
            });
        }
    }

    pub fn handle_message<S: Storage>(&mut self, env: &mut Env<'_, S>, from: NodeId, msg: Message) {
        match msg {
            Message::Raft { group, message } => {
                let Some(g) = self.groups.get_mut(&group) else {
                    return;
                };
                if g.broken.is_some() {
                    return;
                }
                if let Err(e) = g.raft.handle_message(env, from, message) {
                    tracing::error!(keyspace = group, error = %e, "raft step failed; group stopped");
                    g.broken = Some(e.to_string());
                }
                self.drain(env, &group);
            }
            Message::Forward { group, origin, op } => {
                if origin.node != from {
                    return;
                }
                self.stats.forwards_served += 1;
                let asker = Asker::Remote {
                    node: from,
                    incarnation: origin.incarnation,
                    seq: origin.seq,
                };
                match self.groups.get(&group) {
                    Some(g) if g.raft.is_leader() => self.serve(env, &group, asker, origin, op),
                    Some(g) => {
                        let hint = self.hints.get(&group).copied();
                        let leader = if outsider(g, self.id) {
                            hint.or(g.raft.leader())
                        } else {
                            g.raft.leader()
                        };
                        self.respond(env, &group, asker, Outcome::NotLeader { leader });
                    }
                    None => {
                        let leader = self.hints.get(&group).copied();
                        self.respond(env, &group, asker, Outcome::NotLeader { leader });
                    }
                }
            }
            Message::ForwardReply {
                incarnation,
                seq,
                outcome,
                early,
            } => {
                if incarnation == self.incarnation {
                    self.local_outcome(env, seq, outcome, early);
                }
            }
            Message::StillMember { group } => {
                if let Some(g) = self.groups.get(&group)
                    && g.raft.is_leader()
                    && g.raft.configuration_index() <= g.raft.commit_index()
                    && !g.raft.voters().contains(&from)
                    && !g.raft.learners().contains(&from)
                {
                    let configuration = g.raft.configuration_index();
                    self.effects.push_back(Effect::Send {
                        to: from,
                        message: Message::Removed {
                            group,
                            configuration,
                        },
                    });
                }
            }
            Message::Removed {
                group,
                configuration,
            } => {
                // Only a member the catalog moved away stops. An answer older than the
                // configuration its own log holds is stale: the member was added again since
                // (its catalog may not show it yet) and may vote.
                if self.groups.get(&group).is_some_and(|g| {
                    g.moved
                        && !g.target.contains(&self.id)
                        && g.raft.configuration_index() <= configuration
                }) {
                    self.stop_group(env, &group);
                }
            }
        }
    }

    /// Stops this node's member of `name`, removed from the group's committed configuration,
    /// and deletes its copy of the group (log, hard state, snapshot and data): a member that
    /// came back later from that stale copy could campaign with a configuration the group left
    /// long ago. Whoever waited on it is told to look for the leader elsewhere.
    fn stop_group<S: Storage>(&mut self, env: &mut Env<'_, S>, name: &str) {
        let Some(g) = self.groups.remove(name) else {
            return;
        };
        tracing::info!(node = %self.id, group = name, "removed from the group: member stopped");
        for (_, p) in g.proposed {
            self.respond(env, name, p.asker, Outcome::NotLeader { leader: None });
        }
        for (_, r) in g.reads {
            self.respond(env, name, r.asker, Outcome::NotLeader { leader: None });
        }
        if let Err(e) = forget(env.storage, name) {
            tracing::error!(node = %self.id, group = name, error = %e, "deleting a removed group's copy failed");
        }
        let waiting: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.group == name)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in waiting {
            self.route(env, seq);
        }
    }

    pub fn handle_timeout<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in &names {
            let g = self.groups.get_mut(name).expect("listed");
            if g.broken.is_some() {
                continue;
            }
            if g.raft.poll_timeout().is_some_and(|t| t <= env.now)
                && let Err(e) = g.raft.handle_timeout(env)
            {
                tracing::error!(keyspace = name, error = %e, "raft step failed; group stopped");
                g.broken = Some(e.to_string());
            }
            // A leader that is not the preferred one hands over once the preferred member holds
            // its whole log (a transfer stops proposals until it ends, so only then).
            let raft = &mut g.raft;
            if self.config.spread_leaders
                && raft.is_leader()
                && g.preferred != self.id
                && g.handed_over_in != Some(raft.term())
                && raft
                    .follower_progress()
                    .iter()
                    .any(|(id, matched)| *id == g.preferred && *matched == raft.last_index())
            {
                g.handed_over_in = Some(raft.term());
                if let Err(e) = raft.transfer_leadership(env.now, g.preferred) {
                    tracing::debug!(keyspace = name, error = %e, "leadership hand-over refused");
                } else {
                    tracing::info!(keyspace = name, to = %g.preferred, "handing leadership to the preferred member");
                }
            }
            self.drive_move(env, name);
            let Some(g) = self.groups.get_mut(name) else {
                continue;
            };
            // Bookkeeping of requests whose askers have long given up.
            let stale = env.now.as_micros().saturating_sub(
                2 * u64::try_from(self.config.request_timeout.as_micros()).unwrap_or(u64::MAX),
            );
            let before = g.proposed.len();
            g.proposed.retain(|_, p| p.since.as_micros() >= stale);
            if g.proposed.len() != before {
                g.proposed_origins = g.proposed.values().map(|p| p.origin).collect();
            }
            g.reads.retain(|_, r| r.since.as_micros() >= stale);
            self.drain(env, name);
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= env.now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            self.finish(seq, Outcome::Timeout, true);
        }
        // Forwards unanswered for an election timeout: the member may be down or partitioned
        // away. Forward again (the machine's sessions make a second copy harmless), to a fresh
        // guess for keyspaces this node does not vote in.
        let unanswered: Vec<(u64, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.retry_at.is_some_and(|t| t <= env.now))
            .map(|(seq, p)| (*seq, p.group.clone()))
            .collect();
        for (seq, group) in unanswered {
            self.hints.remove(&group);
            self.route(env, seq);
        }
    }

    /// Moves a re-placed group toward its target, one step per call (thesis §4.1: one
    /// single-server change at a time, each committed before the next; §4.2.1: new servers
    /// catch up as learners first). On the leader:
    ///
    /// 1. promote a learner of the target once it is caught up;
    /// 2. remove a learner the target does not want;
    /// 3. remove a voter the target does not want (not itself), but only while the group has
    ///    more voters than the target: a voter leaves only after its replacement was added
    ///    and caught up, so the group never has fewer voters than it is meant to;
    /// 4. add one member of the target that is not in the configuration, as a learner;
    /// 5. when only the leader itself is left to remove, hand leadership to a caught-up voter
    ///    of the target, which then removes it.
    ///
    /// A member outside the target asks the group, now and then, whether its removal is
    /// committed ([`Message::StillMember`]); once told, it stops.
    fn drive_move<S: Storage>(&mut self, env: &mut Env<'_, S>, name: &str) {
        let me = self.id;
        let ask_every = self.config.election_timeout_min;
        let retry_transfer_after = self.config.election_timeout_max;
        let bug_remove_first = self.config.bug_move_remove_first;
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        if !g.moved || g.broken.is_some() {
            return;
        }
        if !g.target.contains(&me)
            && g.asked_removed_at
                .is_none_or(|t| env.now.saturating_since(t) >= ask_every)
        {
            g.asked_removed_at = Some(env.now);
            let mut ask: BTreeSet<NodeId> = g.target.clone();
            ask.extend(g.raft.leader());
            ask.extend(g.raft.voters().iter().copied());
            ask.remove(&me);
            for to in ask {
                self.effects.push_back(Effect::Send {
                    to,
                    message: Message::StillMember {
                        group: name.to_string(),
                    },
                });
            }
        }
        let raft = &g.raft;
        if !raft.is_leader() || raft.configuration_index() > raft.commit_index() {
            return;
        }
        let voters = raft.voters();
        let learners = raft.learners();
        let target = &g.target;
        if voters == target && learners.is_empty() {
            return;
        }
        let last = raft.last_index();
        let lag_max = raft.config().learner_promotion_lag_entries_max;
        let caught_up_learner = raft
            .learner_progress()
            .into_iter()
            .find(|(id, matched)| target.contains(id) && last.distance_from(*matched) <= lag_max)
            .map(|(id, _)| id);
        let unwanted_learner = learners.iter().copied().find(|l| !target.contains(l));
        let unwanted_voter = voters
            .iter()
            .copied()
            .find(|v| !target.contains(v) && *v != me);
        let missing = target
            .iter()
            .copied()
            .find(|t| !voters.contains(t) && !learners.contains(t));
        let learning = learners.iter().any(|l| target.contains(l));
        let may_remove = voters.len() > target.len() || bug_remove_first;
        let change = caught_up_learner
            .map(MembershipChange::PromoteLearner)
            .or(unwanted_learner.map(MembershipChange::RemoveLearner))
            .or(unwanted_voter
                .filter(|_| may_remove)
                .map(MembershipChange::RemoveVoter))
            .or(missing
                .filter(|_| !learning)
                .map(MembershipChange::AddLearner));
        if let Some(change) = change {
            match g.raft.change_membership(env, change) {
                Ok(index) => {
                    tracing::info!(node = %me, group = name, ?change, index = index.0, "moving the group's voters");
                }
                Err(crate::MembershipError::Storage(e)) => {
                    tracing::error!(keyspace = name, error = %e, "raft step failed; group stopped");
                    g.broken = Some(e.to_string());
                }
                Err(e) => {
                    tracing::debug!(node = %me, group = name, ?change, error = %e, "membership change not made yet");
                }
            }
            return;
        }
        if !target.contains(&me)
            && unwanted_voter.is_none()
            && g.leaving_transfer_at
                .is_none_or(|t| env.now.saturating_since(t) >= retry_transfer_after)
        {
            let progress = raft.follower_progress();
            let caught_up = |id: &NodeId| {
                progress
                    .iter()
                    .any(|(v, matched)| v == id && *matched == last)
            };
            let to = if caught_up(&g.preferred) {
                Some(g.preferred)
            } else {
                target.iter().copied().find(|t| caught_up(t))
            };
            if let Some(to) = to {
                g.leaving_transfer_at = Some(env.now);
                match g.raft.transfer_leadership(env.now, to) {
                    Ok(()) => {
                        tracing::info!(node = %me, group = name, %to, "leaving the group: handing leadership over")
                    }
                    Err(e) => {
                        tracing::debug!(node = %me, group = name, error = %e, "hand-over refused")
                    }
                }
            }
        }
    }

    /// Routes requests for `group` again now that it has a new leader: those parked waiting for
    /// one, and those forwarded to another member (a deposed leader may never answer).
    fn unpark<S: Storage>(&mut self, env: &mut Env<'_, S>, group: &str, leader: NodeId) {
        let parked: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                p.group == group && (p.parked || p.forwarded_to.is_some_and(|to| to != leader))
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in parked {
            self.route(env, seq);
        }
    }

    /// Handles the group's Raft outputs: messages out, committed entries applied, reads served.
    fn drain<S: Storage>(&mut self, env: &mut Env<'_, S>, name: &str) {
        let mut new_leader = None;
        loop {
            let Some(g) = self.groups.get_mut(name) else {
                return;
            };
            let Some(output) = g.raft.poll_output() else {
                break;
            };
            match output {
                RaftOutput::Send { to, message } => self.effects.push_back(Effect::Send {
                    to,
                    message: Message::Raft {
                        group: name.to_string(),
                        message,
                    },
                }),
                RaftOutput::Committed { entry } => {
                    if g.broken.is_some() {
                        continue;
                    }
                    self.apply(env, name, entry.index, entry.data);
                }
                RaftOutput::RestoreSnapshot { snapshot } => {
                    if let Err(e) = g.machine.restore(env.storage, &snapshot) {
                        tracing::error!(keyspace = name, error = %e, "snapshot restore failed");
                        g.broken = Some(e.to_string());
                        continue;
                    }
                    self.stats.snapshots_restored += 1;
                    // Whatever was proposed up to the snapshot has an outcome nobody here knows.
                    g.proposed.retain(|i, _| *i > snapshot.index);
                    g.proposed_origins = g.proposed.values().map(|p| p.origin).collect();
                }
                RaftOutput::ReadReady { ctx, .. } => {
                    let Some(job) = g.reads.remove(&ctx) else {
                        continue;
                    };
                    let outcome = read_outcome(&g.machine, env.storage, &job.read);
                    self.respond(env, name, job.asker, outcome);
                }
                RaftOutput::ReadFailed { ctx, leader } => {
                    if let Some(job) = g.reads.remove(&ctx) {
                        self.respond(env, name, job.asker, Outcome::NotLeader { leader });
                    }
                }
                RaftOutput::LeaderChanged { leader, .. } => {
                    if leader.is_some() {
                        new_leader = leader;
                    }
                }
                RaftOutput::SnapshotWanted => {
                    let applied = g.machine.applied();
                    // Already materialized by an earlier request of this drain; or the machine
                    // is behind the snapshot (a restore is on its way): a later probe asks again.
                    if g.broken.is_some()
                        || !g.raft.snapshot().data.is_empty()
                        || applied < g.raft.snapshot().index
                    {
                        continue;
                    }
                    let data = match g.machine.snapshot(env.storage) {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::error!(keyspace = name, error = %e, "snapshot failed");
                            continue;
                        }
                    };
                    match g.raft.compact(env, applied, data) {
                        Ok(()) => self.stats.snapshots_materialized += 1,
                        Err(e) => {
                            tracing::warn!(keyspace = name, error = %e, "snapshot refused")
                        }
                    }
                }
            }
        }
        if let Some(leader) = new_leader {
            self.unpark(env, name, leader);
        }
        self.maybe_compact(env, name);
    }

    /// Applies the entry committed at `index` and answers whoever waits for it.
    fn apply<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        name: &str,
        index: LogIndex,
        data: EntryData,
    ) {
        let g = self
            .groups
            .get_mut(name)
            .expect("applying to a known group");
        let proposal = match &data {
            EntryData::Application(bytes) => Proposal::decode(bytes),
            EntryData::Noop | EntryData::Membership { .. } => None,
        };
        let applied = match &proposal {
            // Only this node's own requests and the proposals it made are answered from here.
            Some(p)
                if (p.origin.node == self.id && p.origin.incarnation == self.incarnation)
                    || g.proposed.get(&index).is_some_and(|m| m.origin == p.origin) =>
            {
                g.machine.apply(env.storage, index, p)
            }
            Some(p) => g.machine.apply_unanswered(env.storage, index, p),
            None => {
                if matches!(data, EntryData::Application(_)) {
                    tracing::error!(
                        keyspace = name,
                        index = index.0,
                        "undecodable entry skipped"
                    );
                }
                g.machine
                    .skip(env.storage, index)
                    .map(|()| Applied::Aborted)
            }
        };
        let applied = match applied {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(keyspace = name, error = %e, "apply failed; group stopped");
                g.broken = Some(e.to_string());
                return;
            }
        };
        match &applied {
            Applied::Duplicate => self.stats.duplicates += 1,
            Applied::Aborted if proposal.is_some() => self.stats.aborted += 1,
            _ => {}
        }
        let leader = g.raft.leader();
        let mine = g.proposed.remove(&index);
        if let Some(m) = &mine {
            g.proposed_origins.remove(&m.origin);
        }
        if let Some(mine) = mine {
            if proposal.as_ref().map(|p| p.origin) == Some(mine.origin) {
                if applied != Applied::Duplicate {
                    let outcome = Outcome::Applied {
                        applied: applied.clone(),
                        index,
                    };
                    self.respond(env, name, mine.asker, outcome);
                }
            } else {
                // Another entry won this index: ours was lost to a leader change and can no
                // longer commit.
                self.respond(env, name, mine.asker, Outcome::NotLeader { leader });
            }
        }
        if let Some(p) = proposal
            && p.origin.node == self.id
            && p.origin.incarnation == self.incarnation
            && applied != Applied::Duplicate
        {
            let early = self.early_safe(name);
            self.finish(p.origin.seq, Outcome::Applied { applied, index }, early);
        }
    }

    fn maybe_compact<S: Storage>(&mut self, env: &mut Env<'_, S>, name: &str) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        let keep = self.config.compact_every;
        let applied = g.machine.applied();
        let snapshot_index = g.raft.snapshot().index;
        // Keep the last `keep` applied entries, and drop the rest a hundredth of `keep` at a
        // time: each compaction deletes a bounded number of entries, so none stalls the core
        // task (steps of a tenth, 10,000 deletes at once, showed in the p99 of writes).
        let target = LogIndex(applied.0.saturating_sub(keep));
        if g.broken.is_some() || target.distance_from(snapshot_index) < (keep / 100).max(1) {
            return;
        }
        // A leader keeps its log while a follower still needs entries from it: compacting them
        // away would make it send that follower the whole state again, and again at every
        // compaction under load. Past four times the interval it compacts anyway.
        let lagging = g
            .raft
            .follower_progress()
            .iter()
            .any(|(_, matched)| *matched < target);
        if lagging && applied.distance_from(snapshot_index) < 4 * keep {
            return;
        }
        // No state copied: a snapshot is materialized only when a follower needs one
        // (`RaftOutput::SnapshotWanted`).
        match g.raft.compact(env, target, Bytes::new()) {
            Ok(()) => self.stats.compactions += 1,
            Err(e) => tracing::warn!(keyspace = name, error = %e, "compaction refused"),
        }
    }

    /// Structural invariants, checked by the simulator after every step.
    pub fn check_invariants(&self) {
        for (name, g) in &self.groups {
            g.raft.check_invariants();
            assert!(
                g.machine.applied() <= g.raft.commit_index(),
                "{name}: applied beyond the commit index"
            );
            assert!(
                g.proposed_origins.len() == g.proposed.len()
                    && g.proposed
                        .values()
                        .all(|p| g.proposed_origins.contains(&p.origin)),
                "{name}: the index of proposed origins disagrees with the proposals"
            );
            assert!(
                g.reads.keys().all(|c| c.0 < self.next_ctx),
                "{name}: a read context was never issued"
            );
        }
        assert!(
            self.pending.keys().all(|s| *s < self.next_seq),
            "a pending request was never numbered"
        );
    }
}

/// Where a removal in progress is recorded: the group's name, until its copy is deleted.
const FORGETTING_TABLE: &str = "primary.forgetting";
const DELETE_CHUNK: usize = 1024;

/// Deletes this node's copy of group `name` (its Raft table and its data table). The marker is
/// staged first and deleted last, so a crash that keeps any prefix of these writes either
/// deleted nothing or left the marker, and [`finish_forgetting`] completes the deletion at the
/// next start.
fn forget<S: Storage>(storage: &mut S, name: &str) -> Result<(), StorageError> {
    storage.put(FORGETTING_TABLE, name.as_bytes(), b"")?;
    finish_forgetting(storage, name)
}

/// Completes a deletion [`forget`] started, if there is one.
fn finish_forgetting<S: Storage>(storage: &mut S, name: &str) -> Result<(), StorageError> {
    if storage.get(FORGETTING_TABLE, name.as_bytes())?.is_none() {
        return Ok(());
    }
    let raft_table = RaftConfig::new(NodeId(0), name, BTreeSet::new()).table();
    for table in [raft_table, crate::machine::table_name(name)] {
        // Resume each scan after the last key deleted: staged deletes would otherwise be
        // scanned again.
        let mut from: Vec<u8> = Vec::new();
        loop {
            let chunk = storage.scan(&table, &from, DELETE_CHUNK)?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            from = last.clone();
            from.push(0);
            for (k, _) in chunk {
                storage.delete(&table, &k)?;
            }
        }
    }
    storage.delete(FORGETTING_TABLE, name.as_bytes())
}

/// Whether this node's member `g` is on its way in or out of a group that moves: not a voter
/// of the configuration it knows, or not in the group's target. Its view of the leader may be
/// missing (a new member not yet added) or stale (a removed one, which hears from no leader),
/// so requests routed through it follow the guesses other members give.
fn outsider(g: &Group, me: NodeId) -> bool {
    !g.raft.voters().contains(&me) || !g.target.contains(&me)
}

/// Whether member `g` may serve a read of `freshness` from its own applied state now.
fn fresh(g: &Group, now: Instant, freshness: Freshness) -> bool {
    let applied = g.machine.applied();
    match freshness {
        Freshness::Session { index } => applied >= index,
        Freshness::Bounded { max_lag } => {
            let caught_up = applied >= g.raft.commit_index();
            let recent = if g.raft.is_leader() {
                // A leader knows it is current only under its lease.
                g.raft.lease_read(now).is_some()
            } else {
                g.raft
                    .caught_up_at()
                    .is_some_and(|t| now.saturating_since(t) <= max_lag)
            };
            caught_up && recent
        }
    }
}

/// A read's outcome: the records of its keys (or its extension rows) in the machine's applied
/// state.
fn read_outcome<S: Storage>(machine: &Machine, storage: &S, read: &Read) -> Outcome {
    match read {
        Read::Keys(keys) => keys
            .iter()
            .map(|k| machine.record(storage, k).map(ReadRecord::from))
            .collect::<Result<Vec<_>, StorageError>>()
            .map_or_else(|e| Outcome::Storage(e.to_string()), Outcome::Read),
        Read::Rows(rows) => rows
            .iter()
            .map(|r| {
                crate::machine::extension_row(storage, machine.table(), r)
                    .map(|v| v.map(Bytes::from))
            })
            .collect::<Result<Vec<_>, StorageError>>()
            .map_or_else(|e| Outcome::Storage(e.to_string()), Outcome::Rows),
    }
}

#[cfg(test)]
mod placement_tests {
    use super::*;

    fn members() -> Vec<(NodeId, &'static str)> {
        (1..=9u32)
            .map(|i| (NodeId(i), ["r1", "r2", "r3"][((i - 1) % 3) as usize]))
            .collect()
    }

    #[test]
    fn a_home_region_holds_the_voters_and_the_preferred_leader() {
        let members = members();
        let region = |id: NodeId| members.iter().find(|(m, _)| *m == id).unwrap().1;
        for name in ["balance", "accounts", "ledger", "k1", "k2", "k3"] {
            let spread = KeyspaceConfig::with_defaults(name, triarch_core::Model::PrimaryBackup, 9);
            for home in ["r1", "r2", "r3"] {
                let ks = KeyspaceConfig {
                    home: Some(home.into()),
                    ..spread.clone()
                };
                let voters = voters_of(&ks, &members);
                assert_eq!(voters.len(), 3);
                assert!(voters.iter().all(|v| region(*v) == home), "{name} {home}");
                assert_eq!(region(preferred_leader(&ks, &members)), home);
                assert!(voters.contains(&preferred_leader(&ks, &members)));
            }
            // Without a home the ranking alone decides (the placement every node agrees on).
            let ids: Vec<NodeId> = members.iter().map(|(id, _)| *id).collect();
            let ranking = ranked(name, &ids);
            assert_eq!(
                voters_of(&spread, &members),
                ranking[..3].iter().copied().collect()
            );
            assert_eq!(preferred_leader(&spread, &members), ranking[0]);
        }
    }

    #[test]
    fn a_small_home_region_is_filled_up_from_the_ranking() {
        // One member per region: the home region's one member leads, the ranking adds two.
        let members = [(NodeId(1), "r1"), (NodeId(2), "r2"), (NodeId(3), "r3")];
        let ks = KeyspaceConfig {
            home: Some("r3".into()),
            ..KeyspaceConfig::with_defaults("balance", triarch_core::Model::PrimaryBackup, 3)
        };
        assert_eq!(voters_of(&ks, &members).len(), 3);
        assert_eq!(preferred_leader(&ks, &members), NodeId(3));
    }
}
