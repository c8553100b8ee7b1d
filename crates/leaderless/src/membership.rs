//! Membership changes: joining a node to the ring, or decommissioning one, with the data handed
//! off so that no acknowledged write is lost.
//!
//! The engine does not decide membership; the node's cluster-metadata group does (consensus),
//! and drives every node's engine through three phases of a *move* from the ring of `current`
//! members to the ring of `next` members (one more node, or one fewer):
//!
//! 1. **Begin** ([`Leaderless::begin_move`]). From now on every operation this node coordinates
//!    is *joint*: a write (or a `siblings`/`counter`/`set`/`map` operation) goes to the union of
//!    the key's preference lists on both rings and is acknowledged only once W of the current
//!    owners AND W of the next owners hold it; a read asks the union and answers once R of each
//!    list replied (merging all the replies as usual; read repair repairs both lists). Joint
//!    quorums are strict: sloppy quorums are refused during a move (no fallbacks, no new hints),
//!    whatever the keyspace or the request asks, because a hint would cover an owner of one
//!    ring only. Operations started before the call keep their shape; the node reports the
//!    phase done to the metadata group only once [`Leaderless::move_ready`] says that every one
//!    of them finished (acknowledged or failed), so that from then on nobody coordinates
//!    old-shape writes.
//! 2. **Handoff** ([`Leaderless::start_handoff`]), once every node has begun. The node walks every
//!    key of every leaderless keyspace it holds (records and merged states, tombstones
//!    included) and, for each key whose current preference list holds it, sends its copy to
//!    every node of the key's *next* preference list that is not in its current one (the key's
//!    *gained* owners). It also sends every hint it holds, as a fallback, to the gained owners of
//!    the hint's key (keeping it as an owner if it gains the key itself), and every tombstone
//!    it collected and still remembers (see [`crate::anti_entropy`]) as a tombstone: a gained
//!    owner that never held it would otherwise take an older write of the key. Copies travel in batches ([`Message::MoveBatch`]: at most
//!    [`HANDOFF_KEYS_PER_BATCH_MAX`] keys or [`HANDOFF_BYTES_PER_BATCH_MAX`] bytes, one keyspace
//!    each), at most [`HANDOFF_BATCHES_IN_FLIGHT_MAX`] in flight, each resent on timeout until
//!    its destination acknowledges it ([`Message::MoveAck`], sent after the receiver's sync). The
//!    receiver merges them like repairs (last-writer-wins, or the join). The walk goes by a key
//!    cursor; a restarted node walks again from the beginning (merges are idempotent).
//!    [`Leaderless::handoff_done`] once every batch was acknowledged.
//! 3. **Finish** ([`Leaderless::finish_move`]), once every old owner reported its handoff done.
//!    The ring becomes `next`.
//!
//! ## Why no acknowledged write is lost
//!
//! Take a key, its old preference list O and its new one P (|O| = |P| = N, and since one node
//! joins or leaves, |P \ O| = |O \ P| ≤ 1).
//!
//! - A write acknowledged before the move began everywhere was acknowledged by an old-shape
//!   coordinator; phase 2 starts only once no node has such a write in flight, so by then it is
//!   durably on at least W nodes of O (strict quorums; see below for the sloppy ones). Every
//!   node of O sends its copy to every node of P \ O, so at the end of phase 2 every gained
//!   owner holds it (or something that supersedes it: copies merge). Of the ≥ W old holders at
//!   most |O \ P| = |P \ O| left, and each was replaced by a gained owner that holds it: at
//!   least W nodes of P hold it.
//! - A write acknowledged by a joint coordinator is on W nodes of P itself.
//! - A write acknowledged by a coordinator that already finished is on W nodes of P (the ring).
//!
//! So once every node finished, every acknowledged write is on W of its owners on the new ring,
//! exactly as under a fixed membership, and a read at R (R + W > N) sees it. Reads need nothing
//! during the move: a joint read has R replies from O, which meet W holders of any write
//! acknowledged before the move, and R from P, which meet those of later writes.
//!
//! Writes acknowledged by *sloppy* quorums before the move are on W owners *or their fallbacks*:
//! a fallback holding a hint for an owner of O sends it to the gained owners of P as that owner
//! would, which keeps the count. Hints for a node that leaves the ring are dropped when the
//! move finishes (counted in `hints_dropped_owner_left`): their copies reached the gained owners
//! during the handoff. Hints for a node still on the ring are delivered as usual.
//!
//! ## Anti-entropy and tombstones during a move
//!
//! Anti-entropy is paused from `begin_move` to `finish_move` (exchanges in flight are dropped,
//! new ones are neither started nor answered; index scans go on): its ranges and its tombstone
//! confirmations belong to one ring, and during a move the nodes are not all on the same one.
//! Tombstone collection pauses with it, and when the move finishes every confirmation gathered
//! under the old ring is forgotten (the trees are rebuilt for the new ring's ranges): a tombstone
//! is collected only once every replica on the new ring confirmed it, plus the grace period.
//!
//! ## What stays behind
//!
//! A node keeps on disk the keys it no longer owns after a move (no cleanup yet); they are never
//! served as an owner's copy, since coordinators ask only a key's preference list. Left for a
//! later cleanup: deleting them. Until that exists, a node that regains keys it lost in an
//! earlier move may hold stale values of them: harmless where the owners hold something newer
//! (a merge keeps the newer), but a value whose tombstone every owner has since collected and
//! forgotten comes back (the handoff sends the tombstones still remembered, not older ones).
//! A node that is not on the ring (before it joins, after it leaves) still coordinates: reads
//! and writes go to the owners, and operations on merged keys are forwarded to one.
//!
//! ## Restarts
//!
//! The engine keeps nothing of a move on disk. The node keeps the move's metadata (current and
//! next members, and the phase this node has reached) durable, and after a restart builds the
//! engine on the current ring (on the next one once it finished) and calls `begin_move` (and
//! `start_handoff`, if it had been called) again before serving anything. Every call is
//! idempotent. A restarted node has no operation in flight, so it is ready at once; its
//! handoff walks again from the start.

use crate::anti_entropy::payload_of;
use crate::hint::{HintKey, HintPayload};
use crate::message::{Message, OpId};
use crate::record::Record;
use crate::ring::{self, Ring};
use crate::state::Update;
use crate::{Env, Leaderless, table_name};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use triarch_core::{Instant, KeyspaceConfig, Model, NodeId};
use triarch_storage::{Storage, StorageError};

/// Keys per handoff batch at most.
pub const HANDOFF_KEYS_PER_BATCH_MAX: usize = 256;
/// Bytes of keys and stored values per handoff batch at most (a single larger value still goes,
/// alone).
pub const HANDOFF_BYTES_PER_BATCH_MAX: usize = 1024 * 1024;
/// Handoff batches a node has in flight at once at most.
pub const HANDOFF_BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Keys the walk reads per storage scan.
const WALK_PAGE_KEYS: usize = 256;
/// Scans one step of the walk does at most (a step over keys that stay put sends nothing).
const WALK_PAGES_PER_STEP_MAX: usize = 16;

/// Where this node is in a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MovePhase {
    /// Operations are joint; the handoff has not started here.
    Begun,
    /// The handoff started here (done or not: [`MoveStatus::handoff_done`]).
    HandingOff,
}

/// Handoff progress towards one gained owner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationProgress {
    pub keys_sent: u64,
    pub bytes_sent: u64,
    pub batches_sent: u64,
    pub batches_acknowledged: u64,
    pub batches_in_flight: u64,
    /// Batches resent after their timeout.
    pub batches_resent: u64,
}

/// A move in progress on this node, for INFO and metrics ([`Leaderless::move_status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveStatus {
    pub current: Vec<NodeId>,
    pub next: Vec<NodeId>,
    pub phase: MovePhase,
    /// Operations started before `begin_move` still in flight.
    pub pre_move_ops_in_flight: u64,
    /// Keys of the data tables the handoff walked (owned here or not).
    pub keys_walked: u64,
    /// Hints the handoff walked.
    pub hints_walked: u64,
    pub handoff_done: bool,
    /// Per gained owner this node sends to.
    pub destinations: BTreeMap<NodeId, DestinationProgress>,
}

/// The move in progress.
pub(crate) struct Move {
    pub(crate) next: Ring,
    /// Operations that were in flight when the move began (old shape), until they finish.
    pub(crate) pre_move: BTreeSet<OpId>,
    handoff: Option<Handoff>,
}

/// One batch of copies for one destination, of one keyspace.
#[derive(Clone, Debug)]
struct Batch {
    keyspace: String,
    entries: Vec<(Bytes, HintPayload)>,
    bytes: usize,
}

struct InFlight {
    to: NodeId,
    batch: Batch,
    deadline: Instant,
}

struct Handoff {
    /// The keyspaces to walk (name, N), sorted; the walk is at `keyspace`, key `cursor`.
    keyspaces: Vec<(String, u8)>,
    keyspace: usize,
    cursor: Vec<u8>,
    hints_walked: bool,
    /// The last hint walked (the hints are walked in pages too, after the keyspaces).
    hint_cursor: Option<HintKey>,
    /// Copies being gathered, per (destination, keyspace).
    gathering: BTreeMap<(NodeId, String), Batch>,
    /// Full batches waiting for room in flight.
    ready: VecDeque<(NodeId, Batch)>,
    in_flight: BTreeMap<OpId, InFlight>,
    keys_walked: u64,
    hints_walked_count: u64,
    progress: BTreeMap<NodeId, DestinationProgress>,
    /// Hints this node holds for keys it gains itself: merged into its own data table.
    local: Vec<(String, Bytes, HintPayload)>,
}

impl Handoff {
    fn walk_done(&self) -> bool {
        self.keyspace >= self.keyspaces.len() && self.hints_walked
    }

    fn done(&self) -> bool {
        self.walk_done()
            && self.gathering.is_empty()
            && self.ready.is_empty()
            && self.in_flight.is_empty()
    }

    /// Adds a copy for `to`; a batch that is full goes to `ready`.
    fn gather(
        &mut self,
        to: NodeId,
        keyspace: &str,
        key: Bytes,
        payload: HintPayload,
        bytes: usize,
    ) {
        let slot = (to, keyspace.to_string());
        let batch = self.gathering.entry(slot.clone()).or_insert_with(|| Batch {
            keyspace: keyspace.to_string(),
            entries: Vec::new(),
            bytes: 0,
        });
        batch.bytes += key.len() + bytes;
        batch.entries.push((key, payload));
        if batch.entries.len() >= HANDOFF_KEYS_PER_BATCH_MAX
            || batch.bytes >= HANDOFF_BYTES_PER_BATCH_MAX
        {
            let batch = self.gathering.remove(&slot).expect("inserted above");
            self.ready.push_back((to, batch));
        }
    }

    fn flush(&mut self) {
        for ((to, _), batch) in std::mem::take(&mut self.gathering) {
            self.ready.push_back((to, batch));
        }
    }
}

impl Leaderless {
    /// Phase 1 of a move to the ring of `next` (see the module documentation): every operation
    /// this node starts from now on is joint. Idempotent (a second call with the same `next`
    /// changes nothing; a call naming the ring this node is already on does nothing).
    ///
    /// Panics if another move, to a different ring, is in progress: the metadata group runs
    /// one move at a time.
    pub fn begin_move<S: Storage>(&mut self, env: &mut Env<'_, S>, next: &[NodeId]) {
        self.begin(env);
        let next = Ring::new(next, ring::VNODES_PER_NODE_DEFAULT);
        assert!(!next.nodes().is_empty(), "a ring has members");
        if let Some(m) = &self.moving {
            assert_eq!(
                m.next.nodes(),
                next.nodes(),
                "one move at a time: finish the move in progress first"
            );
            return;
        }
        if next.nodes() == self.ring.nodes() {
            return; // already there (a call repeated after the move finished)
        }
        tracing::info!(node = %self.node, current = ?self.ring.nodes(), next = ?next.nodes(), "membership move begins");
        for &peer in next.nodes() {
            self.detector.add_peer(self.node, peer);
        }
        self.anti_entropy.abandon_exchanges();
        self.moving = Some(Move {
            next,
            pre_move: self.pending.keys().copied().collect(),
            handoff: None,
        });
    }

    /// Whether a move is in progress on this node.
    pub fn is_moving(&self) -> bool {
        self.moving.is_some()
    }

    /// The ring this node moves to, during a move.
    pub fn next_ring(&self) -> Option<&Ring> {
        self.moving.as_ref().map(|m| &m.next)
    }

    /// Operations started before [`Self::begin_move`] still in flight (0 outside a move).
    pub fn pre_move_ops_in_flight(&self) -> usize {
        self.moving.as_ref().map_or(0, |m| m.pre_move.len())
    }

    /// Whether this node may report phase 1 done: a move is in progress and every operation it
    /// started before it finished.
    pub fn move_ready(&self) -> bool {
        self.moving.as_ref().is_some_and(|m| m.pre_move.is_empty())
    }

    /// Phase 2: starts handing this node's keys off to their gained owners. `keyspaces`: every
    /// leaderless keyspace of the node's catalog (others are ignored); keyspaces this node's
    /// anti-entropy registry knows are walked too. Idempotent; does nothing outside a move.
    pub fn start_handoff<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        keyspaces: &[KeyspaceConfig],
    ) {
        self.begin(env);
        let Some(m) = &self.moving else {
            return;
        };
        if m.handoff.is_some() {
            return;
        }
        let mut walk: BTreeMap<String, u8> = BTreeMap::new();
        for (name, n) in self.anti_entropy.known_keyspaces() {
            walk.insert(name, n);
        }
        for k in keyspaces {
            if k.model == Model::Leaderless {
                self.learn_keyspace(env.storage, k, crate::anti_entropy::Source::Local);
                walk.insert(k.name.clone(), k.n);
            }
        }
        tracing::info!(node = %self.node, keyspaces = walk.len(), "membership handoff starts");
        let handoff = Handoff {
            keyspaces: walk.into_iter().collect(),
            keyspace: 0,
            cursor: Vec::new(),
            hints_walked: false,
            hint_cursor: None,
            gathering: BTreeMap::new(),
            ready: VecDeque::new(),
            in_flight: BTreeMap::new(),
            keys_walked: 0,
            hints_walked_count: 0,
            progress: BTreeMap::new(),
            local: Vec::new(),
        };
        self.moving.as_mut().expect("checked above").handoff = Some(handoff);
        self.pump_handoff(env);
    }

    /// Whether this node's handoff is complete: every copy it had to send was acknowledged.
    pub fn handoff_done(&self) -> bool {
        self.moving
            .as_ref()
            .and_then(|m| m.handoff.as_ref())
            .is_some_and(Handoff::done)
    }

    /// Phase 3: the ring becomes the next one. Idempotent; does nothing outside a move. Called
    /// once every old owner's handoff is done, whatever this node's own handoff says (a node
    /// restarted after reporting it done walks again; nothing it sends is needed any more).
    pub fn finish_move<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        self.begin(env);
        let Some(m) = self.moving.take() else {
            return;
        };
        tracing::info!(node = %self.node, ring = ?m.next.nodes(), "membership move finished");
        self.ring = m.next;
        self.anti_entropy.set_ring(self.ring.clone());
        // Hints for nodes that left: their copies went to the gained owners in the handoff.
        for hint in self.hints.keys() {
            if self.ring.nodes().contains(&hint.owner) {
                continue;
            }
            match self.hints.remove(env.storage, &hint) {
                Ok(()) => {
                    self.stats_mut(&hint.keyspace).hints_dropped_owner_left += 1;
                    self.note_pending(&hint.keyspace);
                }
                Err(e) => tracing::error!(error = %e, "dropping a hint for a departed node failed"),
            }
        }
    }

    /// The move in progress on this node, if any.
    pub fn move_status(&self) -> Option<MoveStatus> {
        let m = self.moving.as_ref()?;
        let h = m.handoff.as_ref();
        let mut destinations = h.map(|h| h.progress.clone()).unwrap_or_default();
        for f in h.iter().flat_map(|h| h.in_flight.values()) {
            destinations.entry(f.to).or_default().batches_in_flight += 1;
        }
        Some(MoveStatus {
            current: self.ring.nodes().to_vec(),
            next: m.next.nodes().to_vec(),
            phase: if h.is_some() {
                MovePhase::HandingOff
            } else {
                MovePhase::Begun
            },
            pre_move_ops_in_flight: m.pre_move.len() as u64,
            keys_walked: h.map_or(0, |h| h.keys_walked),
            hints_walked: h.map_or(0, |h| h.hints_walked_count),
            handoff_done: h.is_some_and(Handoff::done),
            destinations,
        })
    }

    pub(crate) fn handoff_wants_maintenance(&self) -> bool {
        self.moving
            .as_ref()
            .and_then(|m| m.handoff.as_ref())
            .is_some_and(|h| !h.done())
    }

    /// Background work of the handoff: resends batches past their deadline, walks on.
    pub(crate) fn maintain_handoff<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        let now = env.now.instant;
        let deadline = now + self.config.request_timeout;
        let mut resend = Vec::new();
        if let Some(h) = self.moving.as_mut().and_then(|m| m.handoff.as_mut()) {
            for (op, f) in h.in_flight.iter_mut() {
                if f.deadline <= now {
                    f.deadline = deadline;
                    h.progress.entry(f.to).or_default().batches_resent += 1;
                    resend.push((f.to, *op, f.batch.clone()));
                }
            }
        }
        for (to, op, batch) in resend {
            let message = Message::MoveBatch {
                op,
                keyspace: batch.keyspace,
                entries: batch.entries,
            };
            self.send(to, message);
        }
        self.pump_handoff(env);
    }

    /// Sends ready batches while there is room in flight, and walks on while nothing waits.
    fn pump_handoff<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        let Some(mut m) = self.moving.take() else {
            return;
        };
        let Some(mut h) = m.handoff.take() else {
            self.moving = Some(m);
            return;
        };
        let mut sends = Vec::new();
        let mut pages = 0;
        loop {
            while h.in_flight.len() < HANDOFF_BATCHES_IN_FLIGHT_MAX
                && let Some((to, batch)) = h.ready.pop_front()
            {
                let op = self.new_op();
                let progress = h.progress.entry(to).or_default();
                progress.keys_sent += batch.entries.len() as u64;
                progress.bytes_sent += batch.bytes as u64;
                progress.batches_sent += 1;
                sends.push((to, op, batch.clone()));
                let deadline = env.now.instant + self.config.request_timeout;
                h.in_flight.insert(
                    op,
                    InFlight {
                        to,
                        batch,
                        deadline,
                    },
                );
            }
            if !h.ready.is_empty() || h.walk_done() || pages >= WALK_PAGES_PER_STEP_MAX {
                break;
            }
            pages += 1;
            if let Err(e) = self.walk_step(env.storage, &m.next, &mut h) {
                tracing::error!(error = %e, "handoff walk failed; retried next step");
                break;
            }
        }
        let local = std::mem::take(&mut h.local);
        m.handoff = Some(h);
        self.moving = Some(m);
        for (keyspace, key, payload) in local {
            if let Err(e) = self.merge_copy(env, &keyspace, &key, payload) {
                tracing::error!(
                    keyspace,
                    error = e,
                    "merging a hint into a gained key failed"
                );
            }
        }
        for (to, op, batch) in sends {
            let message = Message::MoveBatch {
                op,
                keyspace: batch.keyspace,
                entries: batch.entries,
            };
            self.send(to, message);
        }
    }

    /// One page of the walk: keys of the keyspace at the cursor, or the hints once every
    /// keyspace is walked.
    fn walk_step<S: Storage>(
        &mut self,
        storage: &S,
        next: &Ring,
        h: &mut Handoff,
    ) -> Result<(), StorageError> {
        if let Some((name, n)) = h.keyspaces.get(h.keyspace).cloned() {
            let n = usize::from(n);
            let page = storage.scan(&table_name(&name), &h.cursor, WALK_PAGE_KEYS)?;
            let done = page.len() < WALK_PAGE_KEYS;
            if let Some((last, _)) = page.last() {
                h.cursor = last.clone();
                h.cursor.push(0);
            }
            for (key, bytes) in page {
                h.keys_walked += 1;
                let gained = self.gained_from_here(next, &name, &key, n);
                if gained.is_empty() {
                    continue;
                }
                let payload = match payload_of(&bytes) {
                    Ok(payload) => payload,
                    Err(e) => {
                        tracing::error!(keyspace = name, error = e, "undecodable stored value");
                        continue;
                    }
                };
                let key = Bytes::from(key);
                for g in gained {
                    h.gather(g, &name, key.clone(), payload.clone(), bytes.len());
                }
            }
            if done {
                // Tombstones collected here lately still order writes here (see
                // `anti_entropy`); a gained owner that never held them would take an older
                // write of the key (a straggler, a leftover): hand them off as tombstones.
                for (key, timestamp) in self.anti_entropy.collected_in(&name) {
                    let gained = self.gained_from_here(next, &name, &key, n);
                    let tombstone = Record {
                        timestamp,
                        value: None,
                    };
                    let bytes = tombstone.encode().len();
                    for g in gained {
                        let payload = HintPayload::Record(tombstone.clone());
                        h.gather(g, &name, key.clone(), payload, bytes);
                    }
                }
                h.flush();
                h.keyspace += 1;
                h.cursor.clear();
            }
            return Ok(());
        }
        if h.hints_walked || !self.hints.is_loaded() {
            return Ok(()); // the hint store loads on a later step
        }
        let ns: BTreeMap<String, u8> = h.keyspaces.iter().cloned().collect();
        let page = self
            .hints
            .keys_after(h.hint_cursor.as_ref(), WALK_PAGE_KEYS);
        let done = page.len() < WALK_PAGE_KEYS;
        h.hint_cursor = page.last().cloned().or(h.hint_cursor.take());
        for hint in page {
            h.hints_walked_count += 1;
            let Some(&n) = ns.get(&hint.keyspace) else {
                tracing::warn!(
                    keyspace = hint.keyspace,
                    "a hint of a keyspace of unknown N: not handed off"
                );
                continue;
            };
            let Some(payload) = self.hints.get(storage, &hint)? else {
                continue;
            };
            let position = Ring::position(&hint.keyspace, &hint.key);
            let current = self.ring.preference_list(position, usize::from(n));
            let bytes = payload.encode().len();
            for g in next.preference_list(position, usize::from(n)) {
                if current.contains(&g) {
                    continue;
                }
                if g == self.node {
                    // This fallback gains the key: it keeps the copy as an owner.
                    h.local
                        .push((hint.keyspace.clone(), hint.key.clone(), payload.clone()));
                } else {
                    h.gather(g, &hint.keyspace, hint.key.clone(), payload.clone(), bytes);
                }
            }
        }
        if done {
            h.hints_walked = true;
            h.flush();
        }
        Ok(())
    }

    /// The gained owners of `key` this node hands it to: none unless it owns the key on the
    /// current ring (a key held here otherwise is a leftover of an earlier move).
    fn gained_from_here(&self, next: &Ring, keyspace: &str, key: &[u8], n: usize) -> Vec<NodeId> {
        let position = Ring::position(keyspace, key);
        let current = self.ring.preference_list(position, n);
        if !current.contains(&self.node) {
            return Vec::new();
        }
        if self.config.bug_handoff_from_first_owner_only && current[0] != self.node {
            return Vec::new(); // PLANTED BUG: only the first owner hands the key off
        }
        next.preference_list(position, n)
            .into_iter()
            .filter(|g| !current.contains(g))
            .collect()
    }

    /// A gained owner merges a batch of copies, then acknowledges it (after its sync).
    pub(crate) fn on_move_batch<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        op: OpId,
        keyspace: String,
        entries: Vec<(Bytes, HintPayload)>,
    ) {
        let count = entries.len() as u64;
        for (key, payload) in entries {
            if let Err(e) = self.merge_copy(env, &keyspace, &key, payload) {
                // No acknowledgement: the sender resends the batch.
                tracing::error!(%from, keyspace, error = e, "merging a handoff copy failed");
                return;
            }
        }
        self.stats_mut(&keyspace).move_keys_received += count;
        self.send(from, Message::MoveAck { op });
    }

    /// Merges a copy handed off here: last-writer-wins for records, the join for states.
    fn merge_copy<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        keyspace: &str,
        key: &[u8],
        payload: HintPayload,
    ) -> Result<(), String> {
        match payload {
            HintPayload::Record(record) => {
                self.follow_stamp(env, keyspace, &record);
                self.apply_record(env.storage, keyspace, key, &record, true)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            HintPayload::State(state) => self
                .store_update(env.storage, keyspace, key, &Update::State(state))
                .map_err(|e| format!("{e:?}")),
        }
    }

    /// An old owner hears that a gained owner holds a batch durably.
    pub(crate) fn on_move_ack<S: Storage>(&mut self, env: &mut Env<'_, S>, from: NodeId, op: OpId) {
        let Some(h) = self.moving.as_mut().and_then(|m| m.handoff.as_mut()) else {
            return;
        };
        if h.in_flight.get(&op).is_some_and(|f| f.to == from) {
            h.in_flight.remove(&op);
            h.progress.entry(from).or_default().batches_acknowledged += 1;
            self.pump_handoff(env);
        }
    }

    /// The move's structural invariants (part of [`Self::check_invariants`]).
    pub(crate) fn check_move_invariants(&self) {
        let Some(m) = &self.moving else {
            return;
        };
        assert_ne!(m.next.nodes(), self.ring.nodes(), "a move changes the ring");
        for op in &m.pre_move {
            assert!(
                self.pending.contains_key(op),
                "pre-move operations are in flight"
            );
        }
        let Some(h) = &m.handoff else {
            return;
        };
        assert!(h.in_flight.len() <= HANDOFF_BATCHES_IN_FLIGHT_MAX);
        assert!(h.keyspace <= h.keyspaces.len());
        for (to, batch) in h
            .ready
            .iter()
            .map(|(to, b)| (*to, b))
            .chain(h.in_flight.values().map(|f| (f.to, &f.batch)))
        {
            assert_ne!(to, self.node, "a node hands nothing to itself");
            assert!(
                m.next.nodes().contains(&to),
                "copies go to owners on the next ring"
            );
            assert!(!batch.entries.is_empty() && batch.entries.len() <= HANDOFF_KEYS_PER_BATCH_MAX);
        }
        for batch in h.gathering.values() {
            assert!(batch.entries.len() < HANDOFF_KEYS_PER_BATCH_MAX);
        }
    }
}
