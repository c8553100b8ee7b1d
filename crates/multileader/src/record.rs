//! What a region stores for one key of a multi-leader keyspace, what one region's write ships
//! to the others, and how a region folds in another region's change: conflict detection with
//! a version vector over regions, resolution by the keyspace's merge policy.
//!
//! # Version vectors over regions
//!
//! Every write names itself by a dot `(region, n)`: the `n`-th write of the key by that region
//! (regions are the actors; a region's writes are entries of its Raft log, so one sequence of
//! dots per region and key). A region's record keeps `seen`: the dots of the key it has
//! applied, its own and other regions'. Each region receives every other region's changes in
//! that region's write order (the change logs are ordered and complete), so `seen` has no gaps
//! and a version vector is exact.
//!
//! A change carries its `context`: the writer's `seen` just before the write. A receiver that
//! has applied a dot the context lacks holds a write the writer never saw: the two writes are
//! **concurrent**, a conflict. The change is then merged by policy:
//!
//! | policy | record body | conflict resolution |
//! |---|---|---|
//! | `lww` | `(HLC timestamp, value or tombstone)` | the larger timestamp wins; the other write is *discarded* and counted |
//! | `siblings`, `counter`, `set`, `map` | the merge library's [`State`] with the region as actor | the CRDT merge (`map` fields are LWW registers: a losing field write is counted as discarded) |
//!
//! Timestamps respect causality: a region stamps a write after every timestamp of the key it
//! has applied ([`write_local`] takes `max(stamp, stored + 1)`), so a write that saw another
//! always wins over it whatever the clocks say, and only truly concurrent writes are decided by
//! the clocks. Keeping the larger timestamp is then also associative and commutative, so every
//! region reaches the same value whatever order the changes arrive in.
//!
//! # Writes, changes and folds
//!
//! [`write_local`] runs a client's write at the writer's region: it takes the next dot, stamps
//! or prepares the write (the region's own state is what a remove or a map write observed), and
//! returns the region's new record and the [`Change`] to ship. [`fold_remote`] applies another
//! region's change: a dot already in `seen` is a duplicate and changes nothing; otherwise the
//! body is merged by policy and only the change's dot joins `seen` (see the comment there for
//! why not its context). Both are pure and deterministic: the timestamp a write gets is a
//! function of the leader's proposed `stamp` and the stored record alone.
//!
//! A conflict is reported exactly when the change is concurrent with a write the receiver
//! holds. The receiver had applied a write the writer had not seen (`seen` is not inside the
//! change's context) **and** no write applied here had seen the change (its dot is not in
//! `known`, the join of the contexts of everything applied). The second condition matters
//! because change logs of different regions arrive in any relative order: A's write may reach
//! C after B's write that followed it, and is then old news, not a conflict. For `lww`, a
//! conflict discards exactly one write: the loser, unless the winner had seen it (then it was
//! overwritten, not lost, and the write it beat was counted when it lost).

//! # Encoding
//!
//! Records and changes are encoded as one format-version byte followed by postcard. Decoding
//! never panics: unknown versions, truncated or trailing bytes, values that break an invariant
//! of a causal or CRDT type, and changes whose dot does not directly follow their context are
//! all errors.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use triarch_core::causal::{ActorId, Dot, VersionVector};
use triarch_core::merge::{
    self, Operation, OperationResult, PolicyMismatch, Refusal, State, Update, View,
};
use triarch_core::{Hlc, HlcTimestamp, MergePolicy, NodeId};

/// The format version of [`RegionalRecord`] and [`Change`] encodings.
const FORMAT_V1: u8 = 1;

/// A key's record in one region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionalRecord {
    /// The dots of this key the region has applied (its own writes and other regions').
    pub seen: VersionVector,
    /// The causal past of what was applied: `seen` joined with every applied write's context.
    /// A change whose dot is here was seen by a write this region holds.
    pub known: VersionVector,
    /// The dots a state transfer brought ([`absorb`]): their changes may still arrive through
    /// the change log afterwards, which is expected, not a duplicate.
    pub absorbed: VersionVector,
    pub body: Body,
}

/// What a key holds, by policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// `lww`: the winning write; `value: None` is a tombstone, kept so that an older write
    /// arriving later loses to the delete instead of resurrecting the key.
    Lww {
        timestamp: HlcTimestamp,
        value: Option<Bytes>,
        /// The winning write (`None` for a key never written).
        dot: Option<Dot>,
    },
    /// `siblings`, `counter`, `set`, `map`, with the regions as actors.
    State(State),
}

impl Body {
    pub fn policy(&self) -> MergePolicy {
        match self {
            Body::Lww { .. } => MergePolicy::Lww,
            Body::State(state) => state.policy(),
        }
    }
}

impl RegionalRecord {
    /// The record of a key never written here: nothing seen, an empty body. It reads like an
    /// absent key, and folding a change into it is folding into an absent key.
    fn empty(policy: MergePolicy) -> RegionalRecord {
        let body = match State::empty(policy) {
            Some(state) => Body::State(state),
            None => Body::Lww {
                timestamp: HlcTimestamp::MIN,
                value: None,
                dot: None,
            },
        };
        RegionalRecord {
            seen: VersionVector::new(),
            known: VersionVector::new(),
            absorbed: VersionVector::new(),
            body,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<RegionalRecord, RecordError> {
        decode(bytes)
    }

    pub fn policy(&self) -> MergePolicy {
        self.body.policy()
    }
}

/// One region's write of one key, as the region's change log ships it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub key: Bytes,
    /// `(writing region, n)`: the `n`-th write of this key by that region.
    pub dot: Dot,
    /// The writer's `seen` just before the write (so it holds `n - 1` of the writer's dots).
    pub context: VersionVector,
    pub payload: Payload,
}

/// What a change carries, by policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Lww {
        timestamp: HlcTimestamp,
        value: Option<Bytes>,
    },
    /// What [`merge::prepare`] produced at the writer.
    Update(Update),
}

impl Change {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Change, RecordError> {
        let change: Change = decode(bytes)?;
        // A writer's dot is the one after its own events in its context; any other pair would
        // make a receiver skip or double-count the writer's events.
        if change.context.get(change.dot.actor()).checked_add(1) != Some(change.dot.counter()) {
            return Err(RecordError::Unsequenced { dot: change.dot });
        }
        Ok(change)
    }

    pub fn policy(&self) -> MergePolicy {
        match &self.payload {
            Payload::Lww { .. } => MergePolicy::Lww,
            Payload::Update(update) => update.policy(),
        }
    }
}

/// A client's write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    /// SET (`Some`) or DEL (`None`) on an `lww` keyspace.
    Lww(Option<Bytes>),
    /// Every other policy.
    Operation(Operation),
}

/// What a client's write answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    /// Whether a live value was there before.
    Lww {
        existed: bool,
    },
    Operation(OperationResult),
}

/// What folding another region's change in did, for the keyspace's counters.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Folded {
    /// Concurrent with a write this region had applied (see the module documentation).
    pub conflict: bool,
    /// Writes LWW dropped: a whole `lww` write (the stored one or the incoming one, on a
    /// conflict) or map field writes (the incoming ones older than the field held here).
    pub lww_discarded: u64,
    /// The dot was applied here before: nothing changed.
    pub duplicate: bool,
}

/// Bytes that are not a record or change this release wrote.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("empty input: no format version byte")]
    Empty,
    #[error("unknown format version {0} (this release reads version {FORMAT_V1})")]
    UnknownFormat(u8),
    #[error("corrupt encoding")]
    Corrupt(#[source] postcard::Error),
    #[error("{0} bytes left over after the value")]
    TrailingBytes(usize),
    #[error("change {dot} does not directly follow its writer's events in its context")]
    Unsequenced { dot: Dot },
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![FORMAT_V1]).expect("postcard writes these types into a Vec")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
    if version != FORMAT_V1 {
        return Err(RecordError::UnknownFormat(version));
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(RecordError::Corrupt)?;
    if !rest.is_empty() {
        return Err(RecordError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// A local write by `region` at the region's machine, stamped from `stamp` (the HLC timestamp
/// the region's leader proposed the write with).
///
/// Returns the region's new record, the change to ship, and the client's answer. The change is
/// `None` when the write changes nothing (DEL of an absent or deleted `lww` key, a remove of
/// nothing observed, whatever [`merge::prepare`] ships nothing for); the record is then the
/// stored one, or an empty record for a key never written, which the caller need not store.
///
/// Refused with [`Refusal::Mismatch`] when the write or the stored record is of another policy
/// than `policy`; [`Refusal::CounterOverflow`] past the counter's range, or past the last dot
/// of the key, its set or its siblings (`u64::MAX` writes: only garbage or a forged SETV context
/// gets there); [`Refusal::ClockAhead`] when a stored timestamp has no successor (its wall clock
/// reads `u64::MAX`: only garbage does).
pub fn write_local(
    key: &Bytes,
    record: Option<&RegionalRecord>,
    policy: MergePolicy,
    region: ActorId,
    write: &Write,
    stamp: HlcTimestamp,
) -> Result<(RegionalRecord, Option<Change>, WriteResult), Refusal> {
    let mismatch = |stored, expected| Refusal::Mismatch(PolicyMismatch { stored, expected });
    let write_policy = match write {
        Write::Lww(_) => MergePolicy::Lww,
        Write::Operation(operation) => operation.policy(),
    };
    if write_policy != policy {
        return Err(mismatch(policy, write_policy));
    }
    let current = match record {
        Some(record) if record.policy() != policy => {
            return Err(mismatch(record.policy(), policy));
        }
        Some(record) => record.clone(),
        None => RegionalRecord::empty(policy),
    };
    let next = current.seen.get(region).checked_add(1);
    let dot = Dot::new(region, next.ok_or(Refusal::CounterOverflow)?);
    let (body, payload, result) = match (&current.body, write) {
        (
            Body::Lww {
                timestamp, value, ..
            },
            Write::Lww(new),
        ) => {
            let existed = value.is_some();
            if new.is_none() && !existed {
                return Ok((current, None, WriteResult::Lww { existed }));
            }
            // After everything applied here, so that this write wins over every write it saw.
            let after = successor(*timestamp, stamp.node).ok_or(Refusal::ClockAhead)?;
            let timestamp = stamp.max(after);
            (
                Body::Lww {
                    timestamp,
                    value: new.clone(),
                    dot: Some(dot),
                },
                Payload::Lww {
                    timestamp,
                    value: new.clone(),
                },
                WriteResult::Lww { existed },
            )
        }
        (Body::State(state), Write::Operation(operation)) => {
            if dots_exhausted(operation, state, region) {
                return Err(Refusal::CounterOverflow);
            }
            let at = operation_stamp(operation, state, stamp)?;
            let mut hlc = clock_issuing(at)?;
            let prepared = merge::prepare(
                operation,
                region,
                Some(state),
                Some(state),
                &mut hlc,
                at.wall_ms,
            )?;
            let Some(update) = prepared.update else {
                return Ok((current, None, WriteResult::Operation(prepared.result)));
            };
            let mut merged = Some(state.clone());
            merge::apply_update(&mut merged, &update).map_err(Refusal::Mismatch)?;
            let merged = merged.expect("apply_update leaves a state");
            (
                Body::State(merged),
                Payload::Update(update),
                WriteResult::Operation(prepared.result),
            )
        }
        (body, _) => return Err(mismatch(body.policy(), policy)),
    };
    let context = current.seen;
    let mut seen = context.clone();
    seen.advance_to(dot);
    let mut known = current.known;
    known.advance_to(dot);
    let change = Change {
        key: key.clone(),
        dot,
        context,
        payload,
    };
    let absorbed = current.absorbed;
    Ok((
        RegionalRecord {
            seen,
            known,
            absorbed,
            body,
        },
        Some(change),
        result,
    ))
}

/// The smallest timestamp after `timestamp`, issued by `node`; `None` past the last one.
fn successor(timestamp: HlcTimestamp, node: NodeId) -> Option<HlcTimestamp> {
    let (wall_ms, logical) = match timestamp.logical.checked_add(1) {
        Some(logical) => (timestamp.wall_ms, logical),
        None => (timestamp.wall_ms.checked_add(1)?, 0),
    };
    Some(HlcTimestamp {
        wall_ms,
        logical,
        node,
    })
}

/// Whether `operation` needs a dot of `region` past the last one, which the core types refuse
/// by panicking. Only a corrupt state or a client's forged SETV context gets there.
fn dots_exhausted(operation: &Operation, state: &State, region: ActorId) -> bool {
    let last = Dot::new(region, u64::MAX);
    match (operation, state) {
        (Operation::SetAdd(_), State::Set(set)) => set.context().contains(last),
        (Operation::SiblingsWrite { context, .. }, State::Siblings(siblings)) => {
            context.contains(last) || siblings.join().contains(last)
        }
        (Operation::SiblingsWriteObserved { .. }, State::Siblings(siblings)) => {
            siblings.join().contains(last)
        }
        _ => false,
    }
}

/// The timestamp a map write gets: `stamp`, or later than every field it touches here. (Other
/// operations take no timestamp; this is then `stamp`.)
fn operation_stamp(
    operation: &Operation,
    state: &State,
    stamp: HlcTimestamp,
) -> Result<HlcTimestamp, Refusal> {
    let State::Map(map) = state else {
        return Ok(stamp);
    };
    // Every field `prepare` observes is among these (it observes only live fields on HDEL and
    // DEL), so the clock below never has to pass a timestamp it was not set after.
    let touched: Vec<&Bytes> = match operation {
        Operation::MapSet(pairs) => pairs.iter().map(|(field, _)| field).collect(),
        Operation::MapDelete(fields) => fields.iter().collect(),
        Operation::MapClear => map.iter().map(|(field, _)| field).collect(),
        _ => Vec::new(),
    };
    let mut at = stamp;
    for register in touched.into_iter().filter_map(|field| map.register(field)) {
        let after = successor(register.timestamp(), stamp.node).ok_or(Refusal::ClockAhead)?;
        at = at.max(after);
    }
    Ok(at)
}

/// A clock whose next timestamp at `at.wall_ms` is `at`, whatever timestamps before `at` it
/// observes first (for `at` = 0.0 it is 0.1). Its forward bound is unlimited: the leader has
/// already bounded `stamp`, and stored timestamps are facts to order after, not clocks to
/// follow.
fn clock_issuing(at: HlcTimestamp) -> Result<Hlc, Refusal> {
    let mut hlc = Hlc::new(at.node, u64::MAX);
    if let Some(logical) = at.logical.checked_sub(1) {
        let before = HlcTimestamp { logical, ..at };
        hlc.observe(before, at.wall_ms)
            .map_err(|_| Refusal::ClockAhead)?;
    }
    Ok(hlc)
}

/// Folds another region's change into this region's record of the key (`None`: never written
/// here). The caller delivers each region's changes in that region's order, each once.
pub fn fold_remote(
    record: Option<RegionalRecord>,
    change: &Change,
) -> Result<(RegionalRecord, Folded), PolicyMismatch> {
    let policy = change.policy();
    let mut record = record.unwrap_or_else(|| RegionalRecord::empty(policy));
    if record.policy() != policy {
        return Err(PolicyMismatch {
            stored: record.policy(),
            expected: policy,
        });
    }
    if record.seen.contains(change.dot) {
        // A change a state transfer already brought is expected again; any other is a
        // duplicate, which in-order, exactly-once change logs never deliver.
        let folded = Folded {
            duplicate: !record.absorbed.contains(change.dot),
            ..Folded::default()
        };
        return Ok((record, folded));
    }
    // Concurrent: the writer had not seen something applied here, and nothing applied here
    // had seen the change (else it is old news arriving late; see the module documentation).
    let old_news = record.known.contains(change.dot);
    let conflict = !old_news && !change.context.descends(&record.seen);
    let mut folded = Folded {
        conflict,
        ..Folded::default()
    };
    match (&mut record.body, &change.payload) {
        (
            Body::Lww {
                timestamp,
                value,
                dot,
            },
            Payload::Lww {
                timestamp: theirs,
                value: their_value,
            },
        ) => {
            // The value breaks a tie of timestamps, as in the core's LWW register: every
            // region keeps the same write whatever the order of arrival.
            let wins = (theirs, their_value) > (&*timestamp, &*value);
            // The stored write is lost only if the change had not seen it.
            let stored_lost = wins && dot.is_none_or(|d| !change.context.contains(d));
            folded.lww_discarded = u64::from(conflict && (!wins || stored_lost));
            if wins {
                *timestamp = *theirs;
                value.clone_from(their_value);
                *dot = Some(change.dot);
            }
        }
        (Body::State(state), Payload::Update(update)) => {
            let mut merged = Some(state.clone());
            folded.lww_discarded = merge::apply_update(&mut merged, update)?.lww_discarded;
            *state = merged.expect("apply_update leaves a state");
        }
        (body, _) => {
            return Err(PolicyMismatch {
                stored: body.policy(),
                expected: policy,
            });
        }
    }
    // Only the dot, not the context: the context may hold writes of third regions that have
    // not arrived here yet (their own change logs are independent of the writer's). Marking
    // them seen would make their changes duplicates when they arrive and drop them, and the
    // body does not hold them: a counter delta carries the writer's totals only, set and map
    // deltas only the writer's own write.
    record.seen.advance_to(change.dot);
    record.known.join(&change.context);
    record.known.advance_to(change.dot);
    Ok((record, folded))
}

/// What a client reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Read {
    Lww(Option<Bytes>),
    View(View),
}

/// What a client reads from `record` (`None`: the key was never written here, read as an
/// empty key of `policy`). A stored record is read as what it holds, whatever `policy` says.
pub fn read(record: Option<&RegionalRecord>, policy: MergePolicy) -> Read {
    match record.map(|record| &record.body) {
        Some(Body::Lww { value, .. }) => Read::Lww(value.clone()),
        Some(Body::State(state)) => Read::View(state.view()),
        None => match View::empty(policy) {
            Some(view) => Read::View(view),
            None => Read::Lww(None),
        },
    }
}

/// Folds another region's whole record of a key into this region's: the state transfer that
/// replaces a region's change log once the log was trimmed past what this region holds.
///
/// The bodies merge as they would change by change (LWW keeps the larger timestamp, CRDTs
/// join): a body holds the effect of every change it has seen, so merging it is the same as
/// folding every change it saw that is missing here, and merging twice changes nothing. Only
/// `from`'s own dots join `seen`: the record also holds third regions' writes, but their own
/// change logs still bring those (their folds then change nothing), and marking them seen here
/// would make those changes look like duplicates.
pub fn absorb(
    record: Option<RegionalRecord>,
    theirs: &RegionalRecord,
    from: ActorId,
) -> Result<(RegionalRecord, Folded), PolicyMismatch> {
    let policy = theirs.policy();
    let mut record = record.unwrap_or_else(|| RegionalRecord::empty(policy));
    if record.policy() != policy {
        return Err(PolicyMismatch {
            stored: record.policy(),
            expected: policy,
        });
    }
    let mut folded = Folded::default();
    let news = theirs.seen.get(from) > record.seen.get(from);
    folded.conflict = news && !theirs.known.descends(&record.seen);
    match (&mut record.body, &theirs.body) {
        (
            Body::Lww {
                timestamp,
                value,
                dot,
            },
            Body::Lww {
                timestamp: their_timestamp,
                value: their_value,
                dot: their_dot,
            },
        ) => {
            let wins = (their_timestamp, their_value) > (&*timestamp, &*value);
            // A write is lost when the other side's winner had not seen it.
            let lost = if wins {
                dot.is_some_and(|d| !theirs.known.contains(d))
            } else {
                their_dot.is_some_and(|d| Some(d) != *dot && !record.known.contains(d))
            };
            folded.lww_discarded = u64::from(lost);
            if wins {
                *timestamp = *their_timestamp;
                value.clone_from(their_value);
                *dot = *their_dot;
            }
        }
        (Body::State(state), Body::State(their_state)) => {
            let mut merged = Some(state.clone());
            let update = Update::State(their_state.clone());
            folded.lww_discarded = merge::apply_update(&mut merged, &update)?.lww_discarded;
            *state = merged.expect("apply_update leaves a state");
        }
        (body, _) => {
            return Err(PolicyMismatch {
                stored: body.policy(),
                expected: policy,
            });
        }
    }
    let their_own = theirs.seen.get(from);
    if their_own > record.seen.get(from) {
        record.seen.advance_to(Dot::new(from, their_own));
        record.absorbed.advance_to(Dot::new(from, their_own));
    }
    record.known.join(&theirs.known);
    record.known.join(&record.seen.clone());
    Ok((record, folded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{
        Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
    };
    use std::collections::{BTreeMap, BTreeSet};

    const A: ActorId = ActorId(1);
    const B: ActorId = ActorId(2);
    const C: ActorId = ActorId(3);

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// The stamp `region`'s leader proposes with at `wall_ms` (leaders' node ids are the
    /// regions' here).
    fn at(wall_ms: u64, region: ActorId) -> HlcTimestamp {
        HlcTimestamp {
            wall_ms,
            logical: 0,
            node: NodeId(region.0),
        }
    }

    fn op(operation: Operation) -> Write {
        Write::Operation(operation)
    }

    /// `write` at `region`, whose record of key `k` is `record`; stores what a machine stores.
    fn local(
        record: &mut Option<RegionalRecord>,
        policy: MergePolicy,
        region: ActorId,
        write: Write,
        wall_ms: u64,
    ) -> (Option<Change>, WriteResult) {
        let stamp = at(wall_ms, region);
        let (next, change, result) =
            write_local(&b("k"), record.as_ref(), policy, region, &write, stamp).unwrap();
        if change.is_some() {
            *record = Some(next);
        }
        (change, result)
    }

    fn deliver(record: &mut Option<RegionalRecord>, change: &Change) -> Folded {
        let (next, folded) = fold_remote(record.take(), change).unwrap();
        *record = Some(next);
        folded
    }

    fn view(record: &Option<RegionalRecord>, policy: MergePolicy) -> View {
        match read(record.as_ref(), policy) {
            Read::View(view) => view,
            Read::Lww(value) => panic!("an lww read {value:?}"),
        }
    }

    const CONFLICT: Folded = Folded {
        conflict: true,
        lww_discarded: 0,
        duplicate: false,
    };

    #[test]
    fn lww_concurrent_writes_converge_on_the_larger_timestamp_and_each_side_counts_its_loser() {
        let (mut a, mut bb) = (None, None);
        let (to_b, _) = local(&mut a, MergePolicy::Lww, A, Write::Lww(Some(b("a"))), 10);
        let (to_a, _) = local(&mut bb, MergePolicy::Lww, B, Write::Lww(Some(b("b"))), 20);
        let discarded_one = Folded {
            lww_discarded: 1,
            ..CONFLICT
        };
        assert_eq!(deliver(&mut a, &to_a.unwrap()), discarded_one);
        assert_eq!(deliver(&mut bb, &to_b.unwrap()), discarded_one);
        assert_eq!(a, bb);
        assert_eq!(read(a.as_ref(), MergePolicy::Lww), Read::Lww(Some(b("b"))));
    }

    #[test]
    fn a_write_arriving_after_one_that_saw_it_is_old_news_not_a_conflict() {
        for policy in [MergePolicy::Lww, MergePolicy::Set] {
            let write = |v: &str| match policy {
                MergePolicy::Lww => Write::Lww(Some(b(v))),
                _ => op(Operation::SetAdd(vec![b(v)])),
            };
            let (mut a, mut bb, mut c) = (None, None, None);
            let (first, _) = local(&mut a, policy, A, write("a"), 10);
            let first = first.unwrap();
            deliver(&mut bb, &first);
            let (second, _) = local(&mut bb, policy, B, write("b"), 20);
            // C hears B's write first, then A's, which B's had seen.
            assert_eq!(deliver(&mut c, &second.unwrap()), Folded::default());
            assert_eq!(deliver(&mut c, &first), Folded::default(), "{policy}");
            assert_eq!(c.as_ref().map(|r| &r.body), bb.as_ref().map(|r| &r.body));
        }
        // A genuine conflict behind old news is still one: A and C write concurrently, B
        // follows A; C hears B first (a conflict, C's write loses), then A (old news).
        let (mut a, mut bb, mut c) = (None, None, None);
        let lww = MergePolicy::Lww;
        let (from_a, _) = local(&mut a, lww, A, Write::Lww(Some(b("a"))), 10);
        let (_, _) = local(&mut c, lww, C, Write::Lww(Some(b("c"))), 15);
        deliver(&mut bb, &from_a.clone().unwrap());
        let (from_b, _) = local(&mut bb, lww, B, Write::Lww(Some(b("b"))), 20);
        let lost = Folded {
            lww_discarded: 1,
            ..CONFLICT
        };
        assert_eq!(deliver(&mut c, &from_b.unwrap()), lost);
        assert_eq!(deliver(&mut c, &from_a.unwrap()), Folded::default());
        assert_eq!(read(c.as_ref(), lww), Read::Lww(Some(b("b"))));
    }

    #[test]
    fn absorbing_a_record_equals_folding_its_changes_and_leaves_third_regions_logs_usable() {
        let set = MergePolicy::Set;
        let add = |v: &str| op(Operation::SetAdd(vec![b(v)]));
        let (mut a, mut c, mut late) = (None, None, None);
        // C writes; A hears it and writes twice; region `late` missed A's log (trimmed).
        let (from_c, _) = local(&mut c, set, C, add("c"), 5);
        let from_c = from_c.unwrap();
        deliver(&mut a, &from_c);
        let (a1, _) = local(&mut a, set, A, add("a1"), 10);
        let (a2, _) = local(&mut a, set, A, add("a2"), 20);
        let theirs = a.clone().unwrap();
        let (once, _) = absorb(late.take(), &theirs, A).unwrap();
        let (twice, folded) = absorb(Some(once.clone()), &theirs, A).unwrap();
        assert_eq!(once, twice, "absorbing twice changes nothing");
        assert_eq!(folded.lww_discarded, 0);
        assert_eq!(once.seen.get(A), 2);
        assert_eq!(once.seen.get(C), 0, "C's own log still brings C's write");
        late = Some(once);
        assert!(!deliver(&mut late, &from_c).duplicate);
        assert!(
            deliver(&mut late, &from_c).duplicate,
            "a real duplicate is still one"
        );
        // A's log, resumed after the transfer's cut, brings changes the records already held:
        // expected, not duplicates.
        for change in [a1.unwrap(), a2.unwrap()] {
            assert_eq!(deliver(&mut late, &change), Folded::default());
        }
        assert_eq!(late.as_ref().unwrap().body, theirs.body);
        let (next, _) = absorb(Some(theirs.clone()), &late.clone().unwrap(), C).unwrap();
        assert_eq!(next.body, theirs.body);
    }

    #[test]
    fn a_write_that_saw_another_wins_whatever_the_clocks_say() {
        let (mut a, mut bb) = (None, None);
        let (first, result) = local(&mut a, MergePolicy::Lww, A, Write::Lww(Some(b("a"))), 100);
        assert_eq!(result, WriteResult::Lww { existed: false });
        assert_eq!(deliver(&mut bb, &first.unwrap()), Folded::default());
        // B's leader clock is 95 ms behind A's: the write is stamped after what B applied.
        let (second, result) = local(&mut bb, MergePolicy::Lww, B, Write::Lww(None), 5);
        assert_eq!(result, WriteResult::Lww { existed: true });
        let second = second.unwrap();
        let after = HlcTimestamp {
            logical: 1,
            ..at(100, B)
        };
        assert_eq!(second.context.get(A), 1);
        assert!(
            matches!(second.payload, Payload::Lww { timestamp, value: None } if timestamp == after)
        );
        assert_eq!(deliver(&mut a, &second), Folded::default(), "no conflict");
        assert_eq!(a, bb);
        assert_eq!(read(a.as_ref(), MergePolicy::Lww), Read::Lww(None));
        // Deleting a deleted key ships nothing and changes nothing.
        let before = a.clone();
        let (none, result) = local(&mut a, MergePolicy::Lww, A, Write::Lww(None), 200);
        assert!(none.is_none());
        assert_eq!(result, WriteResult::Lww { existed: false });
        assert_eq!(a, before);
        let mut fresh = None;
        assert!(
            local(&mut fresh, MergePolicy::Lww, A, Write::Lww(None), 1)
                .0
                .is_none()
        );
        assert_eq!(read(fresh.as_ref(), MergePolicy::Lww), Read::Lww(None));
    }

    #[test]
    fn timestamps_at_the_end_of_a_millisecond_or_of_time_never_panic() {
        let stored = |timestamp| RegionalRecord {
            seen: VersionVector::new(),
            known: VersionVector::new(),
            absorbed: VersionVector::new(),
            body: Body::Lww {
                timestamp,
                value: Some(b("v")),
                dot: None,
            },
        };
        let full = HlcTimestamp {
            logical: u32::MAX,
            ..at(7, B)
        };
        let write = Write::Lww(Some(b("w")));
        let (record, _, _) = write_local(
            &b("k"),
            Some(&stored(full)),
            MergePolicy::Lww,
            A,
            &write,
            at(1, A),
        )
        .unwrap();
        assert!(matches!(record.body, Body::Lww { timestamp, .. } if timestamp == at(8, A)));
        let end = HlcTimestamp {
            wall_ms: u64::MAX,
            ..full
        };
        let refused = write_local(
            &b("k"),
            Some(&stored(end)),
            MergePolicy::Lww,
            A,
            &write,
            at(1, A),
        );
        assert_eq!(refused.unwrap_err(), Refusal::ClockAhead);
        // A map field whose timestamp fills its millisecond: the next write takes the next one.
        let mut map = None;
        for stamp in [full, full, at(3, A)] {
            let (next, change, _) = write_local(
                &b("k"),
                map.as_ref(),
                MergePolicy::Map,
                A,
                &op(Operation::MapSet(vec![(b("f"), b("1"))])),
                stamp,
            )
            .unwrap();
            assert!(change.is_some());
            map = Some(next);
        }
        let Some(Body::State(State::Map(fields))) = map.map(|r| r.body) else {
            panic!("a map")
        };
        let timestamp = fields.register(&b("f")).unwrap().timestamp();
        assert_eq!(
            timestamp,
            HlcTimestamp {
                logical: 1,
                ..at(8, A)
            }
        );
    }

    #[test]
    fn a_write_past_the_last_dot_is_refused_not_a_panic() {
        let last =
            |region: ActorId| -> VersionVector { [(region, u64::MAX)].into_iter().collect() };
        let worn = RegionalRecord {
            seen: last(A),
            known: last(A),
            absorbed: VersionVector::new(),
            body: Body::Lww {
                timestamp: at(1, A),
                value: None,
                dot: Some(Dot::new(A, u64::MAX)),
            },
        };
        let write = Write::Lww(Some(b("v")));
        let refused = write_local(&b("k"), Some(&worn), MergePolicy::Lww, A, &write, at(2, A));
        assert_eq!(refused.unwrap_err(), Refusal::CounterOverflow);
        let forged = op(Operation::SiblingsWrite {
            context: last(A),
            value: Some(b("v")),
        });
        let refused = write_local(&b("k"), None, MergePolicy::Siblings, A, &forged, at(2, A));
        assert_eq!(refused.unwrap_err(), Refusal::CounterOverflow);
        // Another region's exhausted counter is no obstacle to this one's write.
        let other = op(Operation::SiblingsWrite {
            context: last(B),
            value: Some(b("v")),
        });
        assert!(write_local(&b("k"), None, MergePolicy::Siblings, A, &other, at(2, A)).is_ok());
    }

    #[test]
    fn a_set_element_re_added_concurrently_survives_a_remove_that_had_not_seen_it() {
        let policy = MergePolicy::Set;
        let (mut a, mut bb, mut c) = (None, None, None);
        let (add, _) = local(&mut a, policy, A, op(Operation::SetAdd(vec![b("x")])), 1);
        let add = add.unwrap();
        assert_eq!(deliver(&mut bb, &add), Folded::default());
        let (remove, result) = local(
            &mut bb,
            policy,
            B,
            op(Operation::SetRemove(vec![b("x")])),
            2,
        );
        assert_eq!(result, WriteResult::Operation(OperationResult::Changed(1)));
        let remove = remove.unwrap();
        let (re_add, _) = local(&mut c, policy, C, op(Operation::SetAdd(vec![b("x")])), 3);
        let re_add = re_add.unwrap();
        assert_eq!(deliver(&mut a, &remove), Folded::default());
        assert_eq!(deliver(&mut a, &re_add), CONFLICT);
        assert_eq!(deliver(&mut bb, &re_add), CONFLICT);
        assert_eq!(deliver(&mut c, &add), CONFLICT);
        assert_eq!(deliver(&mut c, &remove), CONFLICT);
        assert!(a == bb && bb == c);
        assert_eq!(view(&a, policy), View::Set(vec![b("x")]), "add wins");
        // A remove that observed every add removes the element everywhere.
        let (clear, _) = local(&mut a, policy, A, op(Operation::SetClear), 4);
        let clear = clear.unwrap();
        assert_eq!(deliver(&mut bb, &clear), Folded::default());
        assert_eq!(deliver(&mut c, &clear), Folded::default());
        assert!(a == bb && bb == c);
        assert_eq!(view(&c, policy), View::Set(vec![]));
        // Removing what is not there ships nothing.
        let (none, _) = local(&mut c, policy, C, op(Operation::SetRemove(vec![b("x")])), 5);
        assert!(none.is_none());
    }

    #[test]
    fn concurrent_increments_in_three_regions_sum_exactly() {
        let policy = MergePolicy::Counter;
        let mut regions = [None, None, None];
        let changes: Vec<Change> = [A, B, C]
            .into_iter()
            .zip(&mut regions)
            .map(|(region, record)| {
                let amount = i64::from(region.0);
                let (change, result) =
                    local(record, policy, region, op(Operation::CounterAdd(amount)), 1);
                assert_eq!(
                    result,
                    WriteResult::Operation(OperationResult::Counter(amount))
                );
                change.unwrap()
            })
            .collect();
        for (i, record) in regions.iter_mut().enumerate() {
            for (j, change) in changes.iter().enumerate() {
                if i != j {
                    assert_eq!(deliver(record, change), CONFLICT);
                }
            }
            assert_eq!(view(record, policy), View::Counter(6));
        }
        assert!(regions[0] == regions[1] && regions[1] == regions[2]);
    }

    #[test]
    fn a_concurrent_map_write_of_one_field_is_counted_as_discarded_once() {
        let policy = MergePolicy::Map;
        let (mut a, mut bb) = (None, None);
        let hset = |value: &str| op(Operation::MapSet(vec![(b("f"), b(value))]));
        let (to_b, _) = local(&mut a, policy, A, hset("1"), 10);
        let (to_a, _) = local(&mut bb, policy, B, hset("2"), 20);
        // A replaces its field with B's newer one; B rejects A's older one.
        assert_eq!(deliver(&mut a, &to_a.unwrap()), CONFLICT);
        let rejected = Folded {
            lww_discarded: 1,
            ..CONFLICT
        };
        assert_eq!(deliver(&mut bb, &to_b.unwrap()), rejected);
        assert_eq!(a, bb);
        assert_eq!(view(&a, policy), View::Map(vec![(b("f"), b("2"))]));
    }

    #[test]
    fn concurrent_siblings_are_kept_and_a_write_with_their_joint_context_collapses_them() {
        let policy = MergePolicy::Siblings;
        let blind = |value: &str| {
            op(Operation::SiblingsWrite {
                context: VersionVector::new(),
                value: Some(b(value)),
            })
        };
        let (mut a, mut bb) = (None, None);
        let (to_b, _) = local(&mut a, policy, A, blind("a"), 1);
        let (to_a, _) = local(&mut bb, policy, B, blind("b"), 1);
        assert_eq!(deliver(&mut a, &to_a.unwrap()), CONFLICT);
        assert_eq!(deliver(&mut bb, &to_b.unwrap()), CONFLICT);
        assert_eq!(a, bb);
        let View::Siblings(both) = view(&a, policy) else {
            panic!("siblings")
        };
        assert_eq!(both.values, vec![b("a"), b("b")]);
        let write = op(Operation::SiblingsWrite {
            context: both.context,
            value: Some(b("c")),
        });
        let (to_b, _) = local(&mut a, policy, A, write, 2);
        assert_eq!(deliver(&mut bb, &to_b.unwrap()), Folded::default());
        assert_eq!(a, bb);
        let View::Siblings(one) = view(&bb, policy) else {
            panic!("siblings")
        };
        assert_eq!(one.values, vec![b("c")]);
    }

    #[test]
    fn a_change_applied_twice_is_a_duplicate_and_changes_nothing() {
        for (policy, write) in [
            (MergePolicy::Lww, Write::Lww(Some(b("v")))),
            (MergePolicy::Counter, op(Operation::CounterAdd(1))),
        ] {
            let (mut a, mut bb) = (None, None);
            let (change, _) = local(&mut a, policy, A, write, 1);
            let change = change.unwrap();
            assert_eq!(deliver(&mut bb, &change), Folded::default());
            let once = bb.clone();
            let duplicate = Folded {
                duplicate: true,
                ..Folded::default()
            };
            assert_eq!(deliver(&mut bb, &change), duplicate);
            assert_eq!(bb, once);
        }
    }

    #[test]
    fn writes_and_changes_of_another_policy_are_refused() {
        let mismatch = |stored, expected| Refusal::Mismatch(PolicyMismatch { stored, expected });
        let lww = Write::Lww(Some(b("v")));
        let add = op(Operation::SetAdd(vec![b("x")]));
        let refused = write_local(&b("k"), None, MergePolicy::Set, A, &lww, at(1, A));
        assert_eq!(
            refused.unwrap_err(),
            mismatch(MergePolicy::Set, MergePolicy::Lww)
        );
        let refused = write_local(&b("k"), None, MergePolicy::Lww, A, &add, at(1, A));
        assert_eq!(
            refused.unwrap_err(),
            mismatch(MergePolicy::Lww, MergePolicy::Set)
        );
        let (mut set, mut counter) = (None, None);
        let (set_change, _) = local(&mut set, MergePolicy::Set, A, add, 1);
        let (counter_change, _) = local(
            &mut counter,
            MergePolicy::Counter,
            B,
            op(Operation::CounterAdd(1)),
            1,
        );
        let stored = set.clone().unwrap();
        let refused = write_local(&b("k"), Some(&stored), MergePolicy::Lww, A, &lww, at(1, A));
        assert_eq!(
            refused.unwrap_err(),
            mismatch(MergePolicy::Set, MergePolicy::Lww)
        );
        let expected = PolicyMismatch {
            stored: MergePolicy::Set,
            expected: MergePolicy::Counter,
        };
        assert_eq!(
            fold_remote(set, &counter_change.unwrap()).unwrap_err(),
            expected
        );
        let mut lww_record = None;
        local(
            &mut lww_record,
            MergePolicy::Lww,
            B,
            Write::Lww(Some(b("v"))),
            1,
        );
        assert!(fold_remote(lww_record, &set_change.unwrap()).is_err());
    }

    /// Every cut, an extra byte and a newer format version of `bytes` are errors for `decode`.
    fn assert_mangled_encodings_fail<T: std::fmt::Debug>(
        bytes: &[u8],
        decode: fn(&[u8]) -> Result<T, RecordError>,
    ) {
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "{cut} bytes of {bytes:?}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(RecordError::TrailingBytes(1))
        ));
        let mut newer = bytes.to_vec();
        newer[0] = FORMAT_V1 + 1;
        assert!(matches!(decode(&newer), Err(RecordError::UnknownFormat(2))));
    }

    #[test]
    fn records_and_changes_round_trip_and_garbage_is_an_error() {
        for (policy, write) in [
            (MergePolicy::Lww, Write::Lww(Some(b("v")))),
            (MergePolicy::Counter, op(Operation::CounterAdd(-3))),
            (MergePolicy::Set, op(Operation::SetAdd(vec![b("x")]))),
            (
                MergePolicy::Map,
                op(Operation::MapSet(vec![(b("f"), b("1"))])),
            ),
            (
                MergePolicy::Siblings,
                op(Operation::SiblingsWriteObserved {
                    value: Some(b("s")),
                }),
            ),
        ] {
            let mut record = None;
            local(&mut record, policy, A, write.clone(), 1);
            let (change, _) = local(&mut record, policy, A, write, 2);
            let (record, change) = (record.unwrap(), change.unwrap());
            assert_eq!(RegionalRecord::decode(&record.encode()).unwrap(), record);
            assert_eq!(Change::decode(&change.encode()).unwrap(), change);
            assert_eq!((record.policy(), change.policy()), (policy, policy));
            assert_mangled_encodings_fail(&record.encode(), RegionalRecord::decode);
            assert_mangled_encodings_fail(&change.encode(), Change::decode);
        }
        assert!(matches!(
            RegionalRecord::decode(&[]),
            Err(RecordError::Empty)
        ));
        assert!(RegionalRecord::decode(&[FORMAT_V1, 0xff, 0xff, 0xff]).is_err());
        assert!(Change::decode(&[FORMAT_V1; 64]).is_err());
        // A change whose dot its own context already holds.
        let mut mine = None;
        let (change, _) = local(&mut mine, MergePolicy::Lww, A, Write::Lww(Some(b("v"))), 1);
        let mut change = change.unwrap();
        change.context.advance_to(change.dot);
        assert!(matches!(
            Change::decode(&change.encode()),
            Err(RecordError::Unsequenced { .. })
        ));
    }

    #[test]
    fn a_key_never_written_reads_empty() {
        assert_eq!(read(None, MergePolicy::Lww), Read::Lww(None));
        assert_eq!(
            read(None, MergePolicy::Counter),
            Read::View(View::Counter(0))
        );
        assert_eq!(read(None, MergePolicy::Set), Read::View(View::Set(vec![])));
    }

    // ---------------------------------------------------------------------------------------
    // Three regions under random schedules.

    const REGIONS: usize = 3;

    fn actor(region: usize) -> ActorId {
        ActorId(u32::try_from(region).unwrap() + 1)
    }

    #[derive(Clone, Debug)]
    enum Step {
        Write {
            region: usize,
            key: u8,
            write: Write,
            wall_ms: u64,
            logical: u32,
        },
        /// The next change of `from`'s log that `to` has not received.
        Deliver { from: usize, to: usize },
    }

    type WriteFn = fn(
        &Bytes,
        Option<&RegionalRecord>,
        MergePolicy,
        ActorId,
        &Write,
        HlcTimestamp,
    ) -> Result<(RegionalRecord, Option<Change>, WriteResult), Refusal>;
    type FoldFn =
        fn(Option<RegionalRecord>, &Change) -> Result<(RegionalRecord, Folded), PolicyMismatch>;

    macro_rules! ensure {
        ($cond:expr, $($message:tt)+) => {
            if !$cond {
                return Err(format!($($message)+));
            }
        };
    }

    /// A write that shipped, with what the client asked and the leader's stamp.
    struct Written {
        write: Write,
        stamp: HlcTimestamp,
        change: Change,
    }

    /// Three regions, each with its records and its change log, driven through `write` and
    /// `fold` (the real functions, or a planted bug).
    struct Regions {
        policy: MergePolicy,
        write: WriteFn,
        fold: FoldFn,
        records: [BTreeMap<Bytes, RegionalRecord>; REGIONS],
        logs: [Vec<Change>; REGIONS],
        /// `received[from][to]`: how many of `from`'s changes `to` has folded.
        received: [[usize; REGIONS]; REGIONS],
        written: Vec<Written>,
        /// Per key: the sum of the acknowledged increments, and the discards counted.
        incremented: BTreeMap<Bytes, i128>,
        discarded: BTreeMap<Bytes, u64>,
    }

    impl Regions {
        fn new(policy: MergePolicy, write: WriteFn, fold: FoldFn) -> Regions {
            Regions {
                policy,
                write,
                fold,
                records: Default::default(),
                logs: Default::default(),
                received: Default::default(),
                written: Vec::new(),
                incremented: BTreeMap::new(),
                discarded: BTreeMap::new(),
            }
        }

        fn step(&mut self, step: &Step) -> Result<(), String> {
            match step {
                Step::Write {
                    region,
                    key,
                    write,
                    wall_ms,
                    logical,
                } => {
                    let stamp = HlcTimestamp {
                        wall_ms: *wall_ms,
                        logical: *logical,
                        node: NodeId(actor(*region).0),
                    };
                    self.write(*region, Bytes::from(vec![b'k', *key]), write, stamp)
                }
                Step::Deliver { from, to } => self.deliver(*from, *to).map(drop),
            }
        }

        fn write(
            &mut self,
            region: usize,
            key: Bytes,
            write: &Write,
            stamp: HlcTimestamp,
        ) -> Result<(), String> {
            let policy = self.policy;
            let before = self.records[region].get(&key);
            let (record, change, result) =
                (self.write)(&key, before, policy, actor(region), write, stamp)
                    .map_err(|refusal| format!("{write:?} refused: {refusal:?}"))?;
            let Some(change) = change else {
                ensure!(
                    read(Some(&record), policy) == read(before, policy),
                    "{write:?} shipped nothing but changed the record"
                );
                return Ok(());
            };
            if let Write::Lww(value) = write {
                ensure!(
                    read(Some(&record), policy) == Read::Lww(value.clone()),
                    "a region does not read its own write {write:?}"
                );
            }
            if let (Write::Operation(Operation::CounterAdd(amount)), WriteResult::Operation(_)) =
                (write, result)
            {
                *self.incremented.entry(key.clone()).or_default() += i128::from(*amount);
            }
            self.records[region].insert(key, record);
            self.logs[region].push(change.clone());
            self.written.push(Written {
                write: write.clone(),
                stamp,
                change,
            });
            Ok(())
        }

        /// Folds `from`'s next change into `to`; `false` when `to` has them all.
        fn deliver(&mut self, from: usize, to: usize) -> Result<bool, String> {
            let next = self.received[from][to];
            let Some(change) = self.logs[from].get(next).filter(|_| from != to) else {
                return Ok(false);
            };
            self.received[from][to] += 1;
            let key = change.key.clone();
            let current = self.records[to].remove(&key);
            let (record, folded) =
                (self.fold)(current, change).map_err(|e| format!("fold refused: {e}"))?;
            ensure!(
                !folded.duplicate,
                "region {to} took {:?} from {from} for a duplicate",
                change.dot
            );
            *self.discarded.entry(key.clone()).or_default() += folded.lww_discarded;
            self.records[to].insert(key, record);
            Ok(true)
        }

        /// Delivers everything left, then checks every key against what was written.
        fn finish(mut self) -> Result<(), String> {
            for from in 0..REGIONS {
                for to in 0..REGIONS {
                    while self.deliver(from, to)? {}
                }
            }
            let keys: BTreeSet<Bytes> = self.written.iter().map(|w| w.change.key.clone()).collect();
            for key in keys {
                let record = self.records[0].get(&key);
                ensure!(
                    self.records.iter().all(|r| r.get(&key) == record),
                    "regions diverged on {key:?}: {:?}",
                    self.records.iter().map(|r| r.get(&key)).collect::<Vec<_>>()
                );
                let record = record.ok_or("a written key is missing")?;
                let written: Vec<&Written> = self
                    .written
                    .iter()
                    .filter(|w| w.change.key == key)
                    .collect();
                for region in 0..REGIONS {
                    let writes = written
                        .iter()
                        .filter(|w| w.change.dot.actor() == actor(region))
                        .count();
                    ensure!(
                        record.seen.get(actor(region)) == writes as u64,
                        "seen {} holds other than the {writes} writes of {region}",
                        record.seen
                    );
                }
                self.check_key(&key, record, &written)?;
            }
            Ok(())
        }

        fn check_key(
            &self,
            key: &Bytes,
            record: &RegionalRecord,
            written: &[&Written],
        ) -> Result<(), String> {
            let policy = self.policy;
            let saw = |later: &Written, earlier: &Written| {
                later.change.context.contains(earlier.change.dot)
            };
            if policy == MergePolicy::Lww {
                let stamped: Vec<(HlcTimestamp, Option<Bytes>)> = written
                    .iter()
                    .map(|w| match &w.change.payload {
                        Payload::Lww { timestamp, value } => (*timestamp, value.clone()),
                        Payload::Update(_) => (HlcTimestamp::MIN, None),
                    })
                    .collect();
                check_stamps(written, |w| match &w.change.payload {
                    Payload::Lww { timestamp, .. } => Some(*timestamp),
                    Payload::Update(_) => None,
                })?;
                let (last, (timestamp, value)) = stamped
                    .iter()
                    .enumerate()
                    .max_by(|x, y| x.1.cmp(y.1))
                    .ok_or("no write")?;
                let expected = Body::Lww {
                    timestamp: *timestamp,
                    value: value.clone(),
                    dot: Some(written[last].change.dot),
                };
                ensure!(
                    record.body == expected,
                    "{:?} is not the last write",
                    record.body
                );
                // Lost: neither the last write nor seen by any other write.
                let lost = (0..written.len())
                    .filter(|&i| i != last && !written.iter().any(|w| saw(w, written[i])))
                    .count() as u64;
                let counted = self.discarded.get(key).copied().unwrap_or(0);
                ensure!(counted >= lost, "{lost} writes lost, {counted} counted");
                return Ok(());
            }
            let Body::State(state) = &record.body else {
                return Err(format!("{policy} key holds {:?}", record.body));
            };
            // The regions' folds give the join of every update, whatever the order.
            let mut reference = None;
            for w in written {
                let Payload::Update(update) = &w.change.payload else {
                    return Err(format!("{policy} write shipped {:?}", w.change.payload));
                };
                merge::apply_update(&mut reference, update).map_err(|e| e.to_string())?;
            }
            ensure!(
                reference.as_ref() == Some(state),
                "{state:?} is not the join of the updates"
            );
            let view = state.view();
            match policy {
                MergePolicy::Counter => {
                    let sum = self.incremented.get(key).copied().unwrap_or(0);
                    ensure!(view == View::Counter(sum), "{view:?}, acknowledged {sum}");
                }
                MergePolicy::Set => {
                    let touches = |w: &Written, e: &Bytes, removes: bool| match &w.write {
                        Write::Operation(Operation::SetAdd(es)) => !removes && es.contains(e),
                        Write::Operation(Operation::SetRemove(es)) => removes && es.contains(e),
                        Write::Operation(Operation::SetClear) => removes,
                        _ => false,
                    };
                    let elements: BTreeSet<Bytes> = written
                        .iter()
                        .filter_map(|w| match &w.write {
                            Write::Operation(Operation::SetAdd(es)) => Some(es.clone()),
                            _ => None,
                        })
                        .flatten()
                        .collect();
                    // Present iff some add of it was observed by no later add or remove of it.
                    let expected: Vec<Bytes> = elements
                        .into_iter()
                        .filter(|e| {
                            written.iter().any(|add| {
                                touches(add, e, false)
                                    && !written.iter().any(|w| {
                                        saw(w, add) && (touches(w, e, false) || touches(w, e, true))
                                    })
                            })
                        })
                        .collect();
                    ensure!(
                        view == View::Set(expected.clone()),
                        "{view:?}, expected {expected:?}"
                    );
                }
                MergePolicy::Map => {
                    let fields: BTreeSet<Bytes> = written
                        .iter()
                        .flat_map(|w| field_writes(w).into_iter().map(|(f, _, _)| f))
                        .collect();
                    let mut expected = Vec::new();
                    for field in fields {
                        let stamp_of = |w: &Written| {
                            field_writes(w)
                                .into_iter()
                                .find(|(f, _, _)| *f == field)
                                .map(|(_, t, _)| t)
                        };
                        check_stamps(written, stamp_of)?;
                        let last = written
                            .iter()
                            .flat_map(|w| field_writes(w))
                            .filter(|(f, _, _)| *f == field)
                            .map(|(_, t, v)| (t, v))
                            .max();
                        if let Some((_, Some(value))) = last {
                            expected.push((field, value));
                        }
                    }
                    ensure!(
                        view == View::Map(expected.clone()),
                        "{view:?}, expected {expected:?}"
                    );
                }
                _ => {}
            }
            Ok(())
        }
    }

    /// The field writes a map change ships: `(field, timestamp, value)`.
    fn field_writes(w: &Written) -> Vec<(Bytes, HlcTimestamp, Option<Bytes>)> {
        match &w.change.payload {
            Payload::Update(Update::Map(deltas)) => deltas
                .iter()
                .map(|d| {
                    (
                        d.field.clone(),
                        d.register.timestamp(),
                        d.register.value().clone(),
                    )
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every write is stamped at or after its leader's stamp, and after every write (of the
    /// same register) it saw: a write that saw another always wins over it.
    fn check_stamps(
        written: &[&Written],
        stamp_of: impl Fn(&Written) -> Option<HlcTimestamp>,
    ) -> Result<(), String> {
        for later in written {
            let Some(t) = stamp_of(later) else { continue };
            ensure!(
                t >= later.stamp,
                "{:?} stamped {t} before its leader's stamp",
                later.change.dot
            );
            for earlier in written {
                if let Some(s) = stamp_of(earlier) {
                    ensure!(
                        !later.change.context.contains(earlier.change.dot) || t > s,
                        "{:?} at {t} saw {:?} at {s}",
                        later.change.dot,
                        earlier.change.dot
                    );
                }
            }
        }
        Ok(())
    }

    fn arb_value() -> impl Strategy<Value = Bytes> {
        (0u8..3).prop_map(|i| Bytes::from(vec![b'x' + i]))
    }

    fn arb_write(policy: MergePolicy) -> BoxedStrategy<Write> {
        let values = || proptest::collection::vec(arb_value(), 1..3);
        let operation = match policy {
            MergePolicy::Lww => {
                return proptest::option::of(arb_value())
                    .prop_map(Write::Lww)
                    .boxed();
            }
            MergePolicy::Counter => (-5i64..=5).prop_map(Operation::CounterAdd).boxed(),
            MergePolicy::Set => prop_oneof![
                3 => values().prop_map(Operation::SetAdd),
                2 => values().prop_map(Operation::SetRemove),
                1 => Just(Operation::SetClear),
            ]
            .boxed(),
            MergePolicy::Map => prop_oneof![
                3 => proptest::collection::vec((arb_value(), arb_value()), 1..3)
                    .prop_map(Operation::MapSet),
                2 => values().prop_map(Operation::MapDelete),
                1 => Just(Operation::MapClear),
            ]
            .boxed(),
            MergePolicy::Siblings => prop_oneof![
                proptest::option::of(arb_value()).prop_map(|value| Operation::SiblingsWrite {
                    context: VersionVector::new(),
                    value
                }),
                proptest::option::of(arb_value())
                    .prop_map(|value| Operation::SiblingsWriteObserved { value }),
            ]
            .boxed(),
        };
        operation.prop_map(Write::Operation).boxed()
    }

    /// Writes in random regions with skewed clocks (stamps from 0 to 40 ms, ties included),
    /// interleaved with deliveries along random links.
    fn arb_schedule(policy: MergePolicy) -> impl Strategy<Value = Vec<Step>> {
        let write = (0..REGIONS, 0u8..3, arb_write(policy), 0u64..40, 0u32..2).prop_map(
            |(region, key, write, wall_ms, logical)| Step::Write {
                region,
                key,
                write,
                wall_ms,
                logical,
            },
        );
        let deliver = (0..REGIONS, 1..REGIONS).prop_map(|(from, hop)| Step::Deliver {
            from,
            to: (from + hop) % REGIONS,
        });
        proptest::collection::vec(prop_oneof![write, deliver], 0..100)
    }

    fn run(
        policy: MergePolicy,
        schedule: &[Step],
        write: WriteFn,
        fold: FoldFn,
    ) -> Result<(), String> {
        let mut regions = Regions::new(policy, write, fold);
        for step in schedule {
            regions.step(step)?;
        }
        regions.finish()
    }

    fn explore(
        runner: &mut TestRunner,
        policy: MergePolicy,
        write: WriteFn,
        fold: FoldFn,
    ) -> Result<(), TestError<Vec<Step>>> {
        runner.run(&arb_schedule(policy), |schedule| {
            run(policy, &schedule, write, fold).map_err(TestCaseError::fail)
        })
    }

    fn config() -> Config {
        Config {
            cases: 512,
            failure_persistence: None,
            ..Config::default()
        }
    }

    #[test]
    fn three_regions_converge_and_merge_by_policy_under_any_schedule() {
        for policy in MergePolicy::ALL {
            let mut runner = TestRunner::new(config());
            if let Err(e) = explore(&mut runner, policy, write_local, fold_remote) {
                panic!("{policy}: {e}");
            }
        }
    }

    /// Planted bug: a fold that marks the change's whole context as seen.
    fn fold_joining_context(
        record: Option<RegionalRecord>,
        change: &Change,
    ) -> Result<(RegionalRecord, Folded), PolicyMismatch> {
        let (mut record, folded) = fold_remote(record, change)?;
        record.seen.join(&change.context);
        Ok((record, folded))
    }

    /// Planted bug: an `lww` write stamped with the leader's stamp alone.
    fn write_at_leader_stamp(
        key: &Bytes,
        record: Option<&RegionalRecord>,
        policy: MergePolicy,
        region: ActorId,
        write: &Write,
        stamp: HlcTimestamp,
    ) -> Result<(RegionalRecord, Option<Change>, WriteResult), Refusal> {
        let (mut record, mut change, result) =
            write_local(key, record, policy, region, write, stamp)?;
        if let (Body::Lww { timestamp, .. }, Some(shipped)) = (&mut record.body, &mut change) {
            *timestamp = stamp;
            if let Payload::Lww { timestamp, .. } = &mut shipped.payload {
                *timestamp = stamp;
            }
        }
        Ok((record, change, result))
    }

    #[test]
    fn the_checker_catches_planted_bugs() {
        let planted: [(MergePolicy, WriteFn, FoldFn); 3] = [
            (MergePolicy::Counter, write_local, fold_joining_context),
            (MergePolicy::Set, write_local, fold_joining_context),
            (MergePolicy::Lww, write_at_leader_stamp, fold_remote),
        ];
        for (policy, write, fold) in planted {
            let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
            let mut runner = TestRunner::new_with_rng(config(), rng);
            assert!(
                explore(&mut runner, policy, write, fold).is_err(),
                "{policy}: the planted bug went unnoticed"
            );
        }
    }
}
