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
//! Everything the engine wants done comes out of [`Leaderless::poll_effect`]; the node routes the
//! effects. Staged storage writes become durable when the driver syncs the batch, before any
//! effect of that batch is released (persist-then-send), so a local acknowledgement counted here
//! is durable by the time anyone can observe it.

pub mod message;
pub mod record;
pub mod ring;

use bytes::Bytes;
use message::{Message, OpId};
use record::Record;
use ring::Ring;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use triarch_core::{Hlc, HlcTimestamp, Instant, KeyspaceConfig, NodeId, Now, RequestId};
use triarch_storage::{Storage, StorageError};

/// How many times a write is re-stamped after replicas report newer records before giving up.
pub const WRITE_ATTEMPTS_MAX: u8 = 4;

#[derive(Clone, Debug)]
pub struct LeaderlessConfig {
    /// How long a coordinator waits for R replies or W acknowledgements.
    pub request_timeout: Duration,
    /// PLANTED BUG for checker tests: acknowledge a write after the first replica holds it,
    /// whatever W says. Never set outside tests.
    pub bug_ack_before_quorum: bool,
}

impl Default for LeaderlessConfig {
    fn default() -> Self {
        LeaderlessConfig {
            request_timeout: Duration::from_secs(1),
            bug_ack_before_quorum: false,
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

/// The result of a client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
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
        }
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
        self.next_op += 1;
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
                Err(e) => self.fail_op(op, Outcome::Storage(e.to_string())),
            }
        }
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
                Err(e) => self.fail_op(op, Outcome::Storage(e.to_string())),
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
                self.fail_op(op, Outcome::Superseded);
                return;
            }
            if env.hlc.observe(applied.current, env.now.wall_ms).is_err() {
                // The newer record is further in the future than our clock may jump: it came
                // from a badly skewed clock. Refuse rather than follow it.
                self.fail_op(op, Outcome::Superseded);
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
        let deadline = match &p {
            Pending::Write(w) => w.deadline,
            Pending::Read(r) => r.deadline,
        };
        self.deadlines.remove(&(deadline, op));
        Some(p)
    }

    fn fail_op(&mut self, op: OpId, outcome: Outcome) {
        match self.remove_op(op) {
            Some(Pending::Write(p)) => self.reply(p.request, outcome),
            Some(Pending::Read(p)) if !p.replied => self.reply(p.request, outcome),
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
                    self.fail_op(op, outcome);
                }
                Some(Pending::Read(p)) if p.replied => self.finish_read(env, op),
                Some(Pending::Read(p)) => {
                    let outcome = Outcome::QuorumFailed {
                        acks: p.replies.len() as u8,
                        needed: p.r,
                    };
                    let keyspace = p.keyspace.clone();
                    self.stats_mut(&keyspace).quorum_failures += 1;
                    self.fail_op(op, outcome);
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
            };
            assert_eq!(*deadline, d);
        }
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
