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
//! Everything the engine wants done comes out of [`Leaderless::poll_effect`]; the node routes the
//! effects. Staged storage writes become durable when the driver syncs the batch, before any
//! effect of that batch is released (persist-then-send), so a local acknowledgement counted here
//! is durable by the time anyone can observe it.

pub mod forward;
pub mod message;
pub mod record;
pub mod ring;
pub mod state;

use bytes::Bytes;
use forward::{Admission, ForwardAdmission};
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

#[derive(Clone, Debug)]
pub struct LeaderlessConfig {
    /// How long a coordinator waits for R replies or W acknowledgements.
    pub request_timeout: Duration,
    /// The largest encoded state of one key of a `siblings`, `counter`, `set` or `map`
    /// keyspace that an operation may grow it to (merges at replicas are never refused).
    pub state_bytes_max: usize,
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
}

impl Default for LeaderlessConfig {
    fn default() -> Self {
        LeaderlessConfig {
            request_timeout: Duration::from_secs(1),
            state_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            bug_ack_before_quorum: false,
            bug_shared_actor: false,
            bug_remove_unobserved: false,
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
    /// `siblings` keyspaces: concurrent values this replica started to hold beyond the first
    /// (a merge or write that left a key with k > 1 values where it had j counts k - max(j, 1)).
    pub siblings_created: u64,
    /// `siblings` keyspaces: concurrent values this replica stopped holding because a write
    /// that had seen them superseded them (from j > 1 values down to k counts j - max(k, 1)).
    pub siblings_resolved: u64,
    /// Operations this node forwarded to a replica of their key because it is not one.
    pub forwarded: u64,
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
    replicas: Vec<NodeId>,
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
    /// The update is stored here and shipped; waiting for W acknowledgements.
    Writing {
        result: OperationResult,
        accepted: BTreeSet<NodeId>,
    },
}

struct PendingStateRead {
    request: RequestId,
    keyspace: String,
    key: Bytes,
    replicas: Vec<NodeId>,
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

struct PendingWrite {
    request: RequestId,
    keyspace: String,
    key: Bytes,
    record: Record,
    replicas: Vec<NodeId>,
    w: u8,
    accepted: BTreeSet<NodeId>,
    existed: bool,
    attempts: u8,
    deadline: Instant,
}

struct PendingRead {
    request: RequestId,
    keyspace: String,
    key: Bytes,
    replicas: Vec<NodeId>,
    r: u8,
    replies: BTreeMap<NodeId, Option<Record>>,
    replied: bool,
    deadline: Instant,
}

pub struct Leaderless {
    node: NodeId,
    ring: Ring,
    config: LeaderlessConfig,
    next_op: u64,
    pending: BTreeMap<OpId, Pending>,
    deadlines: BTreeSet<(Instant, OpId)>,
    effects: VecDeque<Effect>,
    stats: BTreeMap<String, KeyspaceStats>,
    forwards: ForwardAdmission,
    cache: state::StateCache,
}

impl Leaderless {
    pub fn new(node: NodeId, members: &[NodeId], config: LeaderlessConfig) -> Self {
        assert!(
            members.contains(&node),
            "a node is a member of its own ring"
        );
        Leaderless {
            node,
            ring: Ring::new(members, ring::VNODES_PER_NODE_DEFAULT),
            config,
            next_op: 1,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            effects: VecDeque::new(),
            stats: BTreeMap::new(),
            forwards: ForwardAdmission::new(HlcTimestamp::MIN),
            cache: state::StateCache::default(),
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

    pub fn stats(&self) -> &BTreeMap<String, KeyspaceStats> {
        &self.stats
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
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

    /// Starts a write (`value: None` deletes) that completes after `w` acknowledgements.
    pub fn write<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        request: RequestId,
        keyspace: &KeyspaceConfig,
        key: Bytes,
        value: Option<Bytes>,
        w: u8,
    ) {
        assert!(w >= 1 && w <= keyspace.n, "W is validated by the node");
        self.stats_mut(&keyspace.name).writes += 1;
        let replicas = self.replicas(keyspace, &key);
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
                w,
                accepted: BTreeSet::new(),
                existed: false,
                attempts: 1,
                deadline,
            }),
        );
        self.deadlines.insert((deadline, op));
        self.send_write_attempt(env, op);
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
        assert!(r >= 1 && r <= keyspace.n, "R is validated by the node");
        self.stats_mut(&keyspace.name).reads += 1;
        let replicas = self.replicas(keyspace, &key);
        let op = self.new_op();
        let deadline = env.now.instant + self.config.request_timeout;
        for &to in &replicas {
            if to != self.node {
                let message = Message::Read {
                    op,
                    keyspace: keyspace.name.clone(),
                    key: key.clone(),
                };
                self.effects.push_back(Effect::Send { to, message });
            }
        }
        let local = replicas.contains(&self.node);
        self.pending.insert(
            op,
            Pending::Read(PendingRead {
                request,
                keyspace: keyspace.name.clone(),
                key: key.clone(),
                replicas,
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
    /// node outside the key's preference list forwards it to one of the key's replicas.
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
        assert_eq!(
            operation.policy(),
            keyspace.merge,
            "operations are routed to keyspaces of their policy by the node"
        );
        assert!(r >= 1 && r <= keyspace.n && w >= 1 && w <= keyspace.n);
        let replicas = self.replicas(keyspace, &key);
        if replicas.contains(&self.node) {
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
        // Spread forwards over the replicas; a retry through this node picks another one.
        let op = self.new_op();
        let coordinator = replicas[(op.0 % replicas.len() as u64) as usize];
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
            keyspace: keyspace.clone(),
            key,
            operation,
            r,
            w,
        };
        self.effects.push_back(Effect::Send {
            to: coordinator,
            message,
        });
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
        let replicas = self.replicas(&keyspace, &key);
        assert!(replicas.contains(&self.node), "a replica coordinates");
        let op = self.new_op();
        let deadline = env.now.instant + self.config.request_timeout;
        let reads_first = operation.reads_first();
        if reads_first {
            for &to in &replicas {
                if to != self.node {
                    let message = Message::ReadState {
                        op,
                        keyspace: keyspace.name.clone(),
                        key: key.clone(),
                    };
                    self.effects.push_back(Effect::Send { to, message });
                }
            }
        }
        let name = keyspace.name.clone();
        self.pending.insert(
            op,
            Pending::Apply(PendingApply {
                requester,
                keyspace,
                key: key.clone(),
                operation,
                replicas,
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
        if replies.len() < usize::from(p.r) {
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
        let Some(Pending::Apply(p)) = self.pending.get_mut(&op) else {
            unreachable!("looked up above")
        };
        p.phase = ApplyPhase::Writing {
            result: prepared.result,
            accepted: BTreeSet::new(),
        };
        for &to in &p.replicas {
            if to != self.node {
                let message = Message::Merge {
                    op,
                    keyspace: keyspace.clone(),
                    key: key.clone(),
                    update: update.clone(),
                };
                self.effects.push_back(Effect::Send { to, message });
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
        if !p.replicas.contains(&from) {
            return;
        }
        accepted.insert(from);
        let needed = if bug { 1 } else { usize::from(p.w) };
        if accepted.len() >= needed {
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
        assert!(r >= 1 && r <= keyspace.n, "R is validated by the node");
        self.stats_mut(&keyspace.name).reads += 1;
        let replicas = self.replicas(keyspace, &key);
        let op = self.new_op();
        let deadline = env.now.instant + self.config.request_timeout;
        for &to in &replicas {
            if to != self.node {
                let message = Message::ReadState {
                    op,
                    keyspace: keyspace.name.clone(),
                    key: key.clone(),
                };
                self.effects.push_back(Effect::Send { to, message });
            }
        }
        let local = replicas.contains(&self.node);
        self.pending.insert(
            op,
            Pending::StateRead(PendingStateRead {
                request,
                keyspace: keyspace.name.clone(),
                key: key.clone(),
                replicas,
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
        if !p.replied && p.replies.len() >= usize::from(p.r) {
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
                self.effects.push_back(Effect::Send { to: node, message });
            }
        }
        self.stats_mut(&p.keyspace).read_repairs += repairs;
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
        let stored = self
            .cached_stored(storage, keyspace, key)
            .map_err(|e| Outcome::Storage(e.to_string()))?;
        self.merge_and_store(storage, keyspace, key, stored, update, None)
    }

    /// [`Self::store_update`] over a state already loaded (`stored`: its bytes and its decoding).
    /// With a `limit` (a coordinator's own operation that may grow the state) a result larger
    /// than it is refused and nothing is stored; merges from others are never refused.
    fn merge_and_store<S: Storage>(
        &mut self,
        storage: &mut S,
        keyspace: &str,
        key: &[u8],
        stored: Option<(Vec<u8>, State)>,
        update: &Update,
        limit: Option<usize>,
    ) -> Result<(), Outcome> {
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
        if bytes.as_deref() != Some(encoded.as_slice()) {
            storage
                .put(&table_name(keyspace), key, &encoded)
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
        Ok(())
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
                self.effects.push_back(Effect::Send { to: node, message });
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
            && self.replicas(&keyspace, &key).contains(&self.node);
        if !valid {
            tracing::warn!(%from, keyspace = keyspace.name, "forward this node cannot coordinate");
            return self.answer(
                env,
                requester,
                Outcome::Refused(Refusal::NotAReplica { node: self.node }),
            );
        }
        self.start_apply(env, requester, keyspace, key, operation, r, w);
    }

    /// (Re)sends the current attempt of write `op` to every replica, applying it locally first.
    fn send_write_attempt<S: Storage>(&mut self, env: &mut Env<'_, S>, op: OpId) {
        let Some(Pending::Write(p)) = self.pending.get(&op) else {
            return;
        };
        let (keyspace, key, record, replicas) = (
            p.keyspace.clone(),
            p.key.clone(),
            p.record.clone(),
            p.replicas.clone(),
        );
        for &to in &replicas {
            if to != self.node {
                let message = Message::Write {
                    op,
                    keyspace: keyspace.clone(),
                    key: key.clone(),
                    record: record.clone(),
                };
                self.effects.push_back(Effect::Send { to, message });
            }
        }
        if replicas.contains(&self.node) {
            match apply(env.storage, &keyspace, &key, &record) {
                Ok(applied) => {
                    if !applied.accepted {
                        self.stats_mut(&keyspace).lww_discarded += 1;
                    }
                    self.on_write_ack(env, self.node, op, record.timestamp, applied)
                }
                Err(e) => self.fail_op(env, op, Outcome::Storage(e.to_string())),
            }
        }
    }

    pub fn handle_message<S: Storage>(&mut self, env: &mut Env<'_, S>, from: NodeId, msg: Message) {
        match msg {
            Message::Write {
                op,
                keyspace,
                key,
                record,
            } => {
                // Observing the writer's timestamp keeps this node's later writes after it.
                let _ = env.hlc.observe(record.timestamp, env.now.wall_ms);
                match apply(env.storage, &keyspace, &key, &record) {
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
                        self.effects.push_back(Effect::Send { to: from, message });
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
                };
                self.on_write_ack(env, from, op, timestamp, applied);
            }
            Message::Read { op, keyspace, key } => match load(env.storage, &keyspace, &key) {
                Ok(record) => {
                    let message = Message::ReadReply { op, record };
                    self.effects.push_back(Effect::Send { to: from, message });
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
                let _ = env.hlc.observe(record.timestamp, env.now.wall_ms);
                if let Err(e) = apply(env.storage, &keyspace, &key, &record) {
                    tracing::error!(%from, keyspace, error = %e, "read repair failed");
                }
            }
            Message::ReadState { op, keyspace, key } => {
                match self.cached_state(env.storage, &keyspace, &key) {
                    Ok(state) => {
                        let message = Message::StateReply { op, state };
                        self.effects.push_back(Effect::Send { to: from, message });
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
                        self.effects.push_back(Effect::Send { to: from, message });
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
            } => self.on_forward(env, from, op, sent, keyspace, key, operation, r, w),
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
        if timestamp != p.record.timestamp || !p.replicas.contains(&from) {
            return; // an acknowledgement of an earlier attempt, or from a stranger
        }
        if !applied.accepted {
            // A replica holds a newer record: re-stamp past it, or give up.
            if p.attempts >= WRITE_ATTEMPTS_MAX {
                self.fail_op(env, op, Outcome::Superseded);
                return;
            }
            if env.hlc.observe(applied.current, env.now.wall_ms).is_err() {
                // The newer record is further in the future than our clock may jump: it came
                // from a badly skewed clock. Refuse rather than follow it.
                self.fail_op(env, op, Outcome::Superseded);
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
        p.accepted.insert(from);
        p.existed |= applied.existed;
        let needed = if bug { 1 } else { usize::from(p.w) };
        if p.accepted.len() >= needed {
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
        if !p.replied && p.replies.len() >= usize::from(p.r) {
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
                if let Err(e) = apply(env.storage, &p.keyspace, &p.key, &newest) {
                    tracing::error!(keyspace = p.keyspace, error = %e, "local read repair failed");
                }
            } else if stale {
                repairs += 1;
                let message = Message::Repair {
                    keyspace: p.keyspace.clone(),
                    key: p.key.clone(),
                    record: newest.clone(),
                };
                self.effects.push_back(Effect::Send { to: node, message });
            }
        }
        self.stats_mut(&p.keyspace).read_repairs += repairs;
    }

    fn remove_op(&mut self, op: OpId) -> Option<Pending> {
        let p = self.pending.remove(&op)?;
        self.deadlines.remove(&(p.deadline(), op));
        Some(p)
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

    /// Expires operations whose deadline has passed.
    pub fn handle_timeout<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        while let Some(&(deadline, op)) = self.deadlines.first() {
            if deadline > env.now.instant {
                break;
            }
            match self.pending.get(&op) {
                Some(Pending::Write(p)) => {
                    let outcome = Outcome::QuorumFailed {
                        acks: p.accepted.len() as u8,
                        needed: p.w,
                    };
                    let keyspace = p.keyspace.clone();
                    self.stats_mut(&keyspace).quorum_failures += 1;
                    self.fail_op(env, op, outcome);
                }
                Some(Pending::Read(p)) if p.replied => self.finish_read(env, op),
                Some(Pending::Read(p)) => {
                    let outcome = Outcome::QuorumFailed {
                        acks: p.replies.len() as u8,
                        needed: p.r,
                    };
                    let keyspace = p.keyspace.clone();
                    self.stats_mut(&keyspace).quorum_failures += 1;
                    self.fail_op(env, op, outcome);
                }
                Some(Pending::StateRead(p)) if p.replied => self.finish_state_read(env, op),
                Some(Pending::StateRead(p)) => {
                    let outcome = Outcome::QuorumFailed {
                        acks: p.replies.len() as u8,
                        needed: p.r,
                    };
                    let keyspace = p.keyspace.clone();
                    self.stats_mut(&keyspace).quorum_failures += 1;
                    self.fail_op(env, op, outcome);
                }
                Some(Pending::Apply(p)) => {
                    let outcome = match &p.phase {
                        ApplyPhase::Reading { replies } => Outcome::QuorumFailed {
                            acks: replies.len() as u8,
                            needed: p.r,
                        },
                        ApplyPhase::Writing { accepted, .. } => Outcome::QuorumFailed {
                            acks: accepted.len() as u8,
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
        for (deadline, op) in &self.deadlines {
            let d = match self.pending.get(op).expect("deadline without op") {
                Pending::Write(w) => {
                    assert!(
                        w.accepted.len() < usize::from(w.w) || self.config.bug_ack_before_quorum
                    );
                    assert!(w.attempts <= WRITE_ATTEMPTS_MAX);
                    w.deadline
                }
                Pending::Read(r) => r.deadline,
                Pending::Apply(a) => {
                    if let ApplyPhase::Writing { accepted, .. } = &a.phase {
                        assert!(
                            accepted.len() < usize::from(a.w) || self.config.bug_ack_before_quorum
                        );
                    }
                    assert!(a.replicas.contains(&self.node), "a replica coordinates");
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

/// Last-writer-wins at a replica: stores `record` unless the replica holds a newer one.
fn apply<S: Storage>(
    storage: &mut S,
    keyspace: &str,
    key: &[u8],
    record: &Record,
) -> Result<Applied, StorageError> {
    let existing = load(storage, keyspace, key)?;
    match existing {
        Some(e) if e.timestamp > record.timestamp => Ok(Applied {
            accepted: false,
            current: e.timestamp,
            existed: e.value.is_some(),
        }),
        // The same record again: a duplicate delivery, acknowledged as accepted.
        Some(e) if e.timestamp == record.timestamp && e.value == record.value => Ok(Applied {
            accepted: true,
            current: e.timestamp,
            existed: e.value.is_some(),
        }),
        // A different record under the same timestamp: a timestamp was reused (the node's clock
        // ceiling exists so that it never is). Refuse, so the coordinator re-stamps past it,
        // rather than acknowledge a write this replica does not hold.
        Some(e) if e.timestamp == record.timestamp => Ok(Applied {
            accepted: false,
            current: e.timestamp,
            existed: e.value.is_some(),
        }),
        existing => {
            storage.put(&table_name(keyspace), key, &record.encode())?;
            let existed = existing.is_some_and(|e| e.value.is_some());
            Ok(Applied {
                accepted: true,
                current: record.timestamp,
                existed,
            })
        }
    }
}

#[cfg(test)]
mod tests;
