//! What a replica stores for a key of a keyspace whose merge policy is not `lww`, what a
//! writer ships to other replicas, and how a client operation becomes an update: shared by the
//! leaderless model (where the actor is a replica) and the multi-leader model (where the actor
//! is a region).
//!
//! | policy | replica state | an operation ships | why |
//! |---|---|---|---|
//! | `siblings` | [`DvvSet`] of values (`None` = a delete) | the coordinator's full state | the library has no DVV delta, and a partial DVV would claim that the events below its counters are dead; the state is bounded by the number of concurrent writers |
//! | `counter` | [`PnCounter`] | [`PnCounterDelta`]: the coordinator's new *totals* | three integers; totals (not amounts) make duplicates and reordering harmless |
//! | `set` | add-wins [`AwSet`] | [`AwSetDelta`]s: the touched elements and the dots seen | an add to a cart of a thousand items ships one item, not a thousand |
//! | `map` | [`LwwMap`] of fields | [`LwwMapDelta`]s: one timestamped register per field | likewise |
//!
//! Read repair always ships the full merged state. Every update is applied at a replica with the
//! type's CRDT merge (or its delta `apply`, which is the merge restricted to what the delta
//! touches), so duplicated, reordered and retried messages change nothing.
//!
//! ## Who issues dots
//!
//! Counters, sets and sibling sets name each write by a dot `(actor, n)`, and an actor's dots
//! must never be reused: two different writes under one dot are silently merged into one. The
//! writer takes the next dot from its own stored state of the key, so every write under one
//! actor must be computed from that actor's latest state:
//!
//! - **leaderless**: the actor is the **coordinating replica** (its node id). Every such
//!   operation is coordinated by one of the key's replicas, and the messages that carry a new
//!   dot wait for the coordinator's own sync: a dot leaves the node only once the state that
//!   issued it is durable, so a crash cannot make the node issue the same dot again.
//! - **multi-leader**: the actor is the **region**. A region's writes are entries of its Raft
//!   log, applied in log order by every member, so the region issues its dots in one sequence
//!   whichever member leads.

//! ## On disk
//!
//! One byte names the kind of state (byte 1 is left to the leaderless model's LWW record),
//! followed by the core library's versioned encoding (its own format-version byte, then
//! postcard). A replica that finds bytes of another kind than an update expects refuses it.

use crate::causal::{ActorId, DvvSet, VersionVector};
use crate::crdt::{
    AwSet, AwSetDelta, Crdt, DecodeError, DeltaCrdt, LwwMap, LwwMapDelta, LwwOutcome, PnCounter,
    PnCounterDelta, Versioned,
};
use crate::{Hlc, MergePolicy, NodeId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The kind byte of each stored state. `1` is the LWW record (`record.rs`).
const KIND_SIBLINGS: u8 = 2;
const KIND_COUNTER: u8 = 3;
const KIND_SET: u8 = 4;
const KIND_MAP: u8 = 5;

/// The sibling values of a key: `None` is a delete (a tombstone sibling), so that a delete that
/// saw some values supersedes exactly those and nothing written concurrently.
pub type Siblings = DvvSet<Option<Bytes>>;

/// A replica's state of one key of a `siblings`, `counter`, `set` or `map` keyspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Siblings(Siblings),
    Counter(PnCounter),
    Set(AwSet<Bytes>),
    Map(LwwMap<Bytes, Bytes>),
}

/// The bytes hold a state of another policy than the one asked for (a keyspace dropped and
/// recreated under the same name with another policy), or are not a state at all.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("stored state has unknown kind {0}")]
    UnknownKind(u8),
    #[error("empty stored state")]
    Empty,
    #[error("corrupt stored state: {0}")]
    Corrupt(#[from] DecodeError),
}

/// An update or a state of one policy met a state of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("the key holds a {stored} state; this update is for {expected}")]
pub struct PolicyMismatch {
    pub stored: MergePolicy,
    pub expected: MergePolicy,
}

impl State {
    /// The state of a key never written, for `policy` (`None` for `lww`, which stores records).
    pub fn empty(policy: MergePolicy) -> Option<State> {
        match policy {
            MergePolicy::Lww => None,
            MergePolicy::Siblings => Some(State::Siblings(DvvSet::new())),
            MergePolicy::Counter => Some(State::Counter(PnCounter::new())),
            MergePolicy::Set => Some(State::Set(AwSet::new())),
            MergePolicy::Map => Some(State::Map(LwwMap::new())),
        }
    }

    pub fn policy(&self) -> MergePolicy {
        match self {
            State::Siblings(_) => MergePolicy::Siblings,
            State::Counter(_) => MergePolicy::Counter,
            State::Set(_) => MergePolicy::Set,
            State::Map(_) => MergePolicy::Map,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = match self {
            State::Siblings(s) => (KIND_SIBLINGS, s.encode()),
            State::Counter(c) => (KIND_COUNTER, c.encode()),
            State::Set(s) => (KIND_SET, s.encode()),
            State::Map(m) => (KIND_MAP, m.encode()),
        };
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(kind);
        out.extend_from_slice(&body);
        out
    }

    /// Decodes what [`State::encode`] wrote. Never panics; every type checks its invariants.
    pub fn decode(bytes: &[u8]) -> Result<State, StateError> {
        let (&kind, body) = bytes.split_first().ok_or(StateError::Empty)?;
        Ok(match kind {
            KIND_SIBLINGS => State::Siblings(Siblings::decode(body)?),
            KIND_COUNTER => State::Counter(PnCounter::decode(body)?),
            KIND_SET => State::Set(AwSet::decode(body)?),
            KIND_MAP => State::Map(LwwMap::decode(body)?),
            other => return Err(StateError::UnknownKind(other)),
        })
    }

    /// Whether `bytes` start like an encoded [`State`] rather than an LWW record.
    pub fn is_state_encoding(bytes: &[u8]) -> bool {
        matches!(
            bytes.first(),
            Some(&(KIND_SIBLINGS | KIND_COUNTER | KIND_SET | KIND_MAP))
        )
    }

    /// The CRDT join of two states of one policy.
    pub fn merge(&mut self, other: &State) -> Result<(), PolicyMismatch> {
        match (self, other) {
            (State::Siblings(a), State::Siblings(b)) => a.merge(b),
            (State::Counter(a), State::Counter(b)) => a.merge(b),
            (State::Set(a), State::Set(b)) => a.merge(b),
            (State::Map(a), State::Map(b)) => a.merge(b),
            (mine, theirs) => {
                return Err(PolicyMismatch {
                    stored: mine.policy(),
                    expected: theirs.policy(),
                });
            }
        }
        Ok(())
    }

    /// How many concurrent values a sibling set holds (tombstones included); 0 for other types.
    pub fn siblings(&self) -> usize {
        match self {
            State::Siblings(s) => s.len(),
            _ => 0,
        }
    }

    /// What a client reads.
    pub fn view(&self) -> View {
        match self {
            State::Siblings(s) => View::Siblings(SiblingsView::of(s)),
            State::Counter(c) => View::Counter(c.value()),
            State::Set(s) => View::Set(s.iter().cloned().collect()),
            State::Map(m) => View::Map(m.iter().map(|(f, v)| (f.clone(), v.clone())).collect()),
        }
    }
}

/// What a coordinator ships to replicas (see the module documentation for the choice per type).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// Merge this full state.
    State(State),
    Counter(PnCounterDelta),
    Set(Vec<AwSetDelta<Bytes>>),
    Map(Vec<LwwMapDelta<Bytes, Bytes>>),
}

impl Update {
    pub fn policy(&self) -> MergePolicy {
        match self {
            Update::State(s) => s.policy(),
            Update::Counter(_) => MergePolicy::Counter,
            Update::Set(_) => MergePolicy::Set,
            Update::Map(_) => MergePolicy::Map,
        }
    }
}

/// What applying an update at a replica did, for the keyspace's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Map field writes that lost to a newer write of the field the replica held (LWW losers).
    pub lww_discarded: u64,
    pub siblings_before: usize,
    pub siblings_after: usize,
}

/// Folds `update` into `state` (`None`: the key was never written here) with the CRDT merge.
/// (Whether anything changed the caller tells by comparing encodings: the stored bytes are at
/// hand, and a state's encoding is canonical.)
pub fn apply_update(state: &mut Option<State>, update: &Update) -> Result<Applied, PolicyMismatch> {
    let policy = update.policy();
    let current = state.get_or_insert_with(|| State::empty(policy).expect("not lww"));
    if current.policy() != policy {
        return Err(PolicyMismatch {
            stored: current.policy(),
            expected: policy,
        });
    }
    let mut applied = Applied {
        siblings_before: current.siblings(),
        ..Applied::default()
    };
    match (current, update) {
        (mine, Update::State(theirs)) => mine.merge(theirs)?,
        (State::Counter(c), Update::Counter(delta)) => c.apply(delta),
        (State::Set(s), Update::Set(deltas)) => deltas.iter().for_each(|d| s.apply(d)),
        (State::Map(m), Update::Map(deltas)) => {
            for delta in deltas {
                if let LwwOutcome::Rejected(_) = m.write(delta) {
                    applied.lww_discarded += 1;
                }
            }
        }
        _ => unreachable!("policies checked above"),
    }
    applied.siblings_after = state.as_ref().expect("inserted above").siblings();
    Ok(applied)
}

/// A client operation on a keyspace whose merge policy is not `lww`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// `counter`: INCR, DECR, INCRBY, DECRBY.
    CounterAdd(i64),
    /// `set`: SADD.
    SetAdd(Vec<Bytes>),
    /// `set`: SREM. Removes what the coordinator's read at R observed of the elements.
    SetRemove(Vec<Bytes>),
    /// `set`: DEL. Removes every element the coordinator's read at R observed.
    SetClear,
    /// `map`: HSET. Stamped after every timestamp of those fields the read at R observed.
    MapSet(Vec<(Bytes, Bytes)>),
    /// `map`: HDEL. Tombstones the fields the read at R observed live.
    MapDelete(Vec<Bytes>),
    /// `map`: DEL. Tombstones every field the read at R observed live.
    MapClear,
    /// `siblings`: TRIARCH.SETV. Writes `value` (`None` deletes), superseding exactly the values
    /// `context` covers (what the client's earlier read returned; empty for a blind write).
    SiblingsWrite {
        context: VersionVector,
        value: Option<Bytes>,
    },
    /// `siblings`: SET and DEL. Like `SiblingsWrite`, with the context of the coordinator's read
    /// at R: supersedes what that read observed.
    SiblingsWriteObserved { value: Option<Bytes> },
}

impl Operation {
    pub fn policy(&self) -> MergePolicy {
        match self {
            Operation::CounterAdd(_) => MergePolicy::Counter,
            Operation::SetAdd(_) | Operation::SetRemove(_) | Operation::SetClear => {
                MergePolicy::Set
            }
            Operation::MapSet(_) | Operation::MapDelete(_) | Operation::MapClear => {
                MergePolicy::Map
            }
            Operation::SiblingsWrite { .. } | Operation::SiblingsWriteObserved { .. } => {
                MergePolicy::Siblings
            }
        }
    }

    /// Whether the coordinator reads the key at R before computing the update: removes must
    /// know what they remove, and map writes stamp after what they read.
    pub fn reads_first(&self) -> bool {
        matches!(
            self,
            Operation::SetRemove(_)
                | Operation::SetClear
                | Operation::MapSet(_)
                | Operation::MapDelete(_)
                | Operation::MapClear
                | Operation::SiblingsWriteObserved { .. }
        )
    }

    /// Whether the operation can make the state larger (and is refused past the size limit).
    pub fn grows(&self) -> bool {
        match self {
            Operation::CounterAdd(_) | Operation::SetAdd(_) | Operation::MapSet(_) => true,
            Operation::SiblingsWrite { value, .. } | Operation::SiblingsWriteObserved { value } => {
                value.is_some()
            }
            Operation::SetRemove(_)
            | Operation::SetClear
            | Operation::MapDelete(_)
            | Operation::MapClear => false,
        }
    }
}

/// The siblings a client sees: the causal context to write with next, and the live values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingsView {
    /// Covers every value in `values` (and the deletes among the siblings): a write with it
    /// supersedes exactly what this view showed.
    pub context: VersionVector,
    /// The live concurrent values in dot order; deletes that are siblings are not shown.
    pub values: Vec<Bytes>,
}

impl SiblingsView {
    pub fn of(siblings: &Siblings) -> SiblingsView {
        SiblingsView {
            context: siblings.join(),
            values: siblings.values().flatten().cloned().collect(),
        }
    }
}

/// What a client reads from a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum View {
    Siblings(SiblingsView),
    Counter(i128),
    /// The members, in order.
    Set(Vec<Bytes>),
    /// The live fields, in order.
    Map(Vec<(Bytes, Bytes)>),
}

impl View {
    /// What a key never written reads as.
    pub fn empty(policy: MergePolicy) -> Option<View> {
        State::empty(policy).map(|s| s.view())
    }
}

/// The result of an operation, answered once W replicas hold its update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationResult {
    /// The counter's value at the coordinating replica after the operation: this operation and
    /// everything that replica had merged, not necessarily every concurrent increment.
    Counter(i64),
    /// How many elements or fields the operation added (SADD: not present at the coordinating
    /// replica before; HSET: not live in the read at R) or removed (SREM, HDEL, DEL: observed
    /// by the read at R), or, for SET and DEL on a `siblings` key, how many live values the
    /// write superseded.
    Changed(u64),
    /// TRIARCH.SETV: the coordinating replica's siblings after the write (its context covers
    /// exactly the values shown, so the client may write again with it).
    Siblings(SiblingsView),
}

/// Why a coordinator refused an operation; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The counter would leave the range of a signed 64-bit integer (Redis's limit).
    CounterOverflow,
    /// The key's state would exceed the size limit.
    StateTooLarge { bytes: usize, max: usize },
    /// The key holds a state of another policy.
    Mismatch(PolicyMismatch),
    /// A field the read returned was stamped further ahead of this node's clock than the clock
    /// may jump: stamping past it is impossible without following a skewed clock.
    ClockAhead,
    /// The node asked to coordinate is not a replica of the key in its own view of the ring.
    NotAReplica { node: NodeId },
}

/// An operation prepared at its coordinating replica.
#[derive(Debug)]
pub struct Prepared {
    /// What ships to every replica, the coordinator's own included (where it is applied with
    /// [`apply_update`] like anywhere else); `None` when the operation changes nothing (a
    /// remove of something the read did not observe).
    pub update: Option<Update>,
    pub result: OperationResult,
}

/// Computes `operation` at its coordinating replica `actor`.
///
/// `local` is the coordinator's stored state of the key; `observed` the join of the states the
/// read at R returned (for operations that [`Operation::reads_first`]). New dots come from
/// `local`, which must therefore be the coordinator's own durable-or-staged state. Timestamps of
/// map writes come from `hlc`, after it has observed every timestamp of the touched fields in
/// `observed`, so a map write orders after every write of its fields the read saw. (The size
/// limit is checked where the coordinator stores the result, which encodes it anyway.)
pub fn prepare(
    operation: &Operation,
    actor: ActorId,
    local: Option<&State>,
    observed: Option<&State>,
    hlc: &mut Hlc,
    wall_ms: u64,
) -> Result<Prepared, Refusal> {
    let policy = operation.policy();
    let check = |state: &State| {
        if state.policy() == policy {
            Ok(state.clone())
        } else {
            Err(Refusal::Mismatch(PolicyMismatch {
                stored: state.policy(),
                expected: policy,
            }))
        }
    };
    let empty = || State::empty(policy).expect("not lww");
    // The coordinator's state as the operation proceeds (new dots come from it; the stored
    // state is updated by applying the shipped update, like any replica's).
    let mut scratch = local.map(check).transpose()?.unwrap_or_else(empty);
    let observed = observed.map(check).transpose()?.unwrap_or_else(empty);
    let (update, result) = match (operation, &mut scratch, observed) {
        (Operation::CounterAdd(amount), State::Counter(counter), _) => {
            let value = counter.value() + i128::from(*amount);
            let value = i64::try_from(value).map_err(|_| Refusal::CounterOverflow)?;
            let delta = counter
                .add(actor, *amount)
                .map_err(|_| Refusal::CounterOverflow)?;
            (
                Some(Update::Counter(delta)),
                OperationResult::Counter(value),
            )
        }
        (Operation::SetAdd(elements), State::Set(set), _) => {
            let elements: BTreeSet<&Bytes> = elements.iter().collect();
            let added = elements.iter().filter(|e| !set.contains(e)).count();
            let deltas = elements
                .into_iter()
                .map(|e| set.add(actor, e.clone()))
                .collect();
            (
                Some(Update::Set(deltas)),
                OperationResult::Changed(added as u64),
            )
        }
        (Operation::SetRemove(_) | Operation::SetClear, State::Set(_), State::Set(mut seen)) => {
            let (removed, deltas): (usize, Vec<AwSetDelta<Bytes>>) = match operation {
                Operation::SetRemove(elements) => {
                    let observed: Vec<&Bytes> = elements
                        .iter()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .filter(|e| seen.contains(e))
                        .collect();
                    let deltas: Vec<_> = observed.into_iter().map(|e| seen.remove(e)).collect();
                    (deltas.len(), deltas)
                }
                _ if seen.is_empty() => (0, Vec::new()),
                _ => (seen.len(), vec![seen.clear()]),
            };
            let update = (!deltas.is_empty()).then_some(Update::Set(deltas));
            (update, OperationResult::Changed(removed as u64))
        }
        (
            Operation::MapSet(_) | Operation::MapDelete(_) | Operation::MapClear,
            State::Map(map),
            State::Map(seen),
        ) => {
            // The last value of a field named twice wins, as in Redis.
            let writes: BTreeMap<Bytes, Option<Bytes>> = match operation {
                Operation::MapSet(pairs) => pairs
                    .iter()
                    .map(|(f, v)| (f.clone(), Some(v.clone())))
                    .collect(),
                Operation::MapDelete(fields) => fields
                    .iter()
                    .filter(|f| seen.get(f).is_some())
                    .map(|f| (f.clone(), None))
                    .collect(),
                _ => seen.iter().map(|(f, _)| (f.clone(), None)).collect(),
            };
            if writes.is_empty() {
                (None, OperationResult::Changed(0))
            } else {
                for field in writes.keys() {
                    if let Some(register) = seen.register(field) {
                        hlc.observe(register.timestamp(), wall_ms)
                            .map_err(|_| Refusal::ClockAhead)?;
                    }
                }
                let timestamp = hlc.now(wall_ms);
                let changed = match operation {
                    Operation::MapSet(_) => writes.keys().filter(|f| seen.get(f).is_none()).count(),
                    _ => writes.len(),
                };
                let deltas: Vec<LwwMapDelta<Bytes, Bytes>> = writes
                    .into_iter()
                    .map(|(field, value)| match value {
                        Some(v) => LwwMapDelta::set(field, timestamp, v),
                        None => LwwMapDelta::delete(field, timestamp),
                    })
                    .collect();
                deltas.iter().for_each(|d| map.apply(d));
                (
                    Some(Update::Map(deltas)),
                    OperationResult::Changed(changed as u64),
                )
            }
        }
        (Operation::SiblingsWrite { context, value }, State::Siblings(siblings), _) => {
            siblings.update(context, actor, value.clone());
            let view = SiblingsView::of(siblings);
            (
                Some(Update::State(State::Siblings(siblings.clone()))),
                OperationResult::Siblings(view),
            )
        }
        (
            Operation::SiblingsWriteObserved { value },
            State::Siblings(siblings),
            State::Siblings(seen),
        ) => {
            let live = seen.values().flatten().count();
            if value.is_none() && live == 0 {
                (None, OperationResult::Changed(0))
            } else {
                siblings.update(&seen.join(), actor, value.clone());
                (
                    Some(Update::State(State::Siblings(siblings.clone()))),
                    OperationResult::Changed(live as u64),
                )
            }
        }
        _ => unreachable!("policies checked above"),
    };
    Ok(Prepared { update, result })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ActorId = ActorId(1);
    const B: ActorId = ActorId(2);

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn run(
        operation: Operation,
        actor: ActorId,
        local: Option<&State>,
        observed: Option<&State>,
    ) -> Result<Prepared, Refusal> {
        let mut hlc = Hlc::new(NodeId(actor.0), 60_000);
        prepare(&operation, actor, local, observed, &mut hlc, 1_000)
    }

    /// Runs `operation` at a replica holding `local` and returns the replica's state after it.
    fn at(operation: Operation, actor: ActorId, local: Option<State>) -> State {
        let p = run(operation, actor, local.as_ref(), None).unwrap();
        let mut state = local;
        apply_update(&mut state, &p.update.unwrap()).unwrap();
        state.unwrap()
    }

    #[test]
    fn every_state_round_trips_and_garbage_is_an_error() {
        for policy in [
            MergePolicy::Siblings,
            MergePolicy::Counter,
            MergePolicy::Set,
            MergePolicy::Map,
        ] {
            let state = State::empty(policy).unwrap();
            let bytes = state.encode();
            assert!(State::is_state_encoding(&bytes));
            assert_eq!(State::decode(&bytes).unwrap(), state);
            assert_eq!(state.policy(), policy);
        }
        let local = at(Operation::SetAdd(vec![b("x")]), A, None);
        assert_eq!(State::decode(&local.encode()).unwrap(), local);
        assert!(matches!(State::decode(&[]), Err(StateError::Empty)));
        assert!(matches!(
            State::decode(&[1, 1]),
            Err(StateError::UnknownKind(1))
        ));
        assert!(State::decode(&[KIND_SET, 1, 0xff]).is_err());
        assert!(State::empty(MergePolicy::Lww).is_none());
    }

    #[test]
    fn counters_ship_totals_so_a_duplicate_delta_counts_once() {
        let p = run(Operation::CounterAdd(5), A, None, None).unwrap();
        assert_eq!(p.result, OperationResult::Counter(5));
        let update = p.update.unwrap();
        let mut replica = None;
        apply_update(&mut replica, &update).unwrap();
        let once = replica.clone();
        apply_update(&mut replica, &update).unwrap();
        assert_eq!(replica, once, "a duplicate changes nothing");
        assert_eq!(replica.unwrap().view(), View::Counter(5));
    }

    #[test]
    fn a_counter_refuses_to_leave_the_i64_range_and_changes_nothing() {
        let local = at(Operation::CounterAdd(i64::MAX), A, None);
        assert_eq!(
            run(Operation::CounterAdd(1), A, Some(&local), None).unwrap_err(),
            Refusal::CounterOverflow
        );
        let p = run(Operation::CounterAdd(i64::MIN), B, Some(&local), None).unwrap();
        assert_eq!(p.result, OperationResult::Counter(-1));
    }

    #[test]
    fn a_remove_removes_what_the_read_observed_and_a_concurrent_add_wins() {
        // Replica A added "x"; B added "x" concurrently; the remover's read saw only A's add.
        let a = at(Operation::SetAdd(vec![b("x")]), A, None);
        let bb = at(Operation::SetAdd(vec![b("x")]), B, None);
        let p = run(
            Operation::SetRemove(vec![b("x"), b("absent")]),
            A,
            Some(&a),
            Some(&a),
        )
        .unwrap();
        assert_eq!(p.result, OperationResult::Changed(1));
        let mut merged = Some(bb);
        apply_update(&mut merged, &p.update.unwrap()).unwrap();
        assert_eq!(merged.unwrap().view(), View::Set(vec![b("x")]), "add wins");
        // Removing something nobody observed ships nothing.
        let p = run(Operation::SetRemove(vec![b("y")]), A, Some(&a), Some(&a)).unwrap();
        assert!(p.update.is_none());
        let p = run(Operation::SetClear, A, Some(&a), Some(&a)).unwrap();
        assert_eq!(p.result, OperationResult::Changed(1));
        let mut local = Some(a);
        apply_update(&mut local, &p.update.unwrap()).unwrap();
        assert_eq!(local.unwrap().view(), View::Set(vec![]));
    }

    #[test]
    fn map_writes_stamp_after_what_the_read_saw_even_from_a_clock_far_ahead() {
        let mut ahead = Hlc::new(NodeId(2), 60_000);
        let mut seen = LwwMap::new();
        let _ = seen.set(b("f"), ahead.now(30_000), b("old"));
        let seen = State::Map(seen);
        // This coordinator's wall clock reads 1 s: 29 s behind the field's timestamp.
        let p = run(
            Operation::MapSet(vec![(b("f"), b("new")), (b("g"), b("1")), (b("g"), b("2"))]),
            A,
            None,
            Some(&seen),
        )
        .unwrap();
        assert_eq!(p.result, OperationResult::Changed(1), "only g is new");
        let mut replica = Some(seen.clone());
        let applied = apply_update(&mut replica, &p.update.unwrap()).unwrap();
        assert_eq!(applied.lww_discarded, 0);
        assert_eq!(
            replica.unwrap().view(),
            View::Map(vec![(b("f"), b("new")), (b("g"), b("2"))])
        );
        // A field more than the bound ahead cannot be passed: refused, not silently lost.
        let mut far = LwwMap::new();
        let _ = far.set(b("f"), ahead.now(200_000), b("far"));
        assert_eq!(
            run(
                Operation::MapDelete(vec![b("f")]),
                A,
                None,
                Some(&State::Map(far))
            )
            .unwrap_err(),
            Refusal::ClockAhead
        );
    }

    #[test]
    fn an_older_map_write_arriving_late_is_counted_as_discarded() {
        let mut hlc = Hlc::new(NodeId(1), 60_000);
        let old = LwwMapDelta::set(b("f"), hlc.now(1), b("old"));
        let new = LwwMapDelta::set(b("f"), hlc.now(2), b("new"));
        let mut replica = None;
        apply_update(&mut replica, &Update::Map(vec![new])).unwrap();
        let before = replica.clone();
        let applied = apply_update(&mut replica, &Update::Map(vec![old])).unwrap();
        assert_eq!(applied.lww_discarded, 1);
        assert_eq!(replica, before);
    }

    #[test]
    fn siblings_blind_writes_coexist_and_a_write_with_the_read_context_collapses_them() {
        let blind = |value: &str| Operation::SiblingsWrite {
            context: VersionVector::new(),
            value: Some(b(value)),
        };
        let at_a = at(blind("a"), A, None);
        let at_b = at(blind("b"), B, None);
        let mut replica = None;
        apply_update(&mut replica, &Update::State(at_a.clone())).unwrap();
        let applied = apply_update(&mut replica, &Update::State(at_b)).unwrap();
        assert_eq!((applied.siblings_before, applied.siblings_after), (1, 2));
        let both = replica.clone().unwrap();
        let View::Siblings(view) = both.view() else {
            panic!()
        };
        assert_eq!(view.values, vec![b("a"), b("b")]);
        let p = run(
            Operation::SiblingsWrite {
                context: view.context,
                value: Some(b("c")),
            },
            A,
            Some(&at_a),
            None,
        )
        .unwrap();
        let applied = apply_update(&mut replica, &p.update.unwrap()).unwrap();
        assert_eq!((applied.siblings_before, applied.siblings_after), (2, 1));
        // A delete that observed nothing writes nothing; one that observed values supersedes them.
        let delete = Operation::SiblingsWriteObserved { value: None };
        assert!(run(delete.clone(), A, None, None).unwrap().update.is_none());
        let p = run(delete, B, None, Some(&both)).unwrap();
        assert_eq!(p.result, OperationResult::Changed(2));
        let mut r = Some(both);
        apply_update(&mut r, &p.update.unwrap()).unwrap();
        let View::Siblings(view) = r.unwrap().view() else {
            panic!()
        };
        assert!(view.values.is_empty(), "the tombstone hides nothing live");
    }

    #[test]
    fn an_update_for_another_policy_is_refused() {
        let p = run(Operation::CounterAdd(1), A, None, None).unwrap();
        let mut set = State::empty(MergePolicy::Set);
        assert_eq!(
            apply_update(&mut set, &p.update.unwrap()).unwrap_err(),
            PolicyMismatch {
                stored: MergePolicy::Set,
                expected: MergePolicy::Counter
            }
        );
        assert!(matches!(
            run(Operation::CounterAdd(1), A, set.as_ref(), None),
            Err(Refusal::Mismatch(_))
        ));
    }
}
