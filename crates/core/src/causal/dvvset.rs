//! Dotted version vector sets: the siblings of one key and the causal context that decides
//! which of them a new write supersedes.
//!
//! Preguiça, Baquero, Almeida, Fonte, Gonçalves, "Dotted Version Vectors: Logical Clocks for
//! Optimistic Replication" (2010/2012), in the compact form (one counter and a list of values
//! per server) that Riak's `dvvset` module introduced.
//!
//! See [`DvvSet`] for the representation and why siblings stay bounded.

use super::{ActorId, Dot, VersionVector};
use crate::crdt::{Crdt, InvalidState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A dotted version vector set over values `V`: the siblings of one key with their causal
/// context.
///
/// # Representation
///
/// For each actor (a replica that coordinated writes) the set keeps a counter `n` and the
/// values of that actor's *newest* events that are still alive: a list of `k <= n` values that
/// carry the dots `(actor, n - k + 1) ..= (actor, n)`. Dots `1 ..= n - k` of the actor are known
/// and dead (superseded). So one entry is both a version vector entry (`n`) and up to `k`
/// dotted values, and the join of the counters is the causal context a read returns.
///
/// Why only the newest events can be alive: a write supersedes what its context covers, and a
/// context is a version vector, which covers each actor's events from 1 upwards. Whatever it
/// kills of an actor is therefore a prefix of that actor's events, and what survives is a
/// suffix.
///
/// # Why siblings stay bounded
///
/// A value's dot names the write exactly, independently of the context it was written with.
/// A plain version vector per value has to fold the new event into the context
/// (`context[coordinator] + 1`), which either claims that the writer saw events it did not (and
/// loses them) or, in the per-client variant, grows one entry per client ever seen. With a dot
/// per value, a write kills exactly the values whose dots its context covers. A writer that
/// writes with the context of its previous read or write therefore always kills its own previous
/// value, so each writer contributes at most one sibling: siblings are bounded by the number of
/// writers that are truly concurrent, not by the number of writes.
///
/// Invariants: every entry's counter is at least 1, and holds at most `counter` values. The
/// representation is canonical for a given causal state, so derived equality is semantic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "DvvSetWire<V>", bound(deserialize = "V: Deserialize<'de>"))]
pub struct DvvSet<V> {
    entries: BTreeMap<ActorId, Entry<V>>,
}

/// One actor's part of a [`DvvSet`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Entry<V> {
    /// How many events of this actor the set knows of.
    counter: u64,
    /// The values of the newest events still alive, oldest first: `values[i]` carries the dot
    /// `(actor, counter - values.len() + 1 + i)`.
    values: Vec<V>,
}

impl<V> Entry<V> {
    /// Every event of this actor up to this counter is known and dead (superseded).
    fn dead_up_to(&self) -> u64 {
        self.counter - self.values.len() as u64
    }

    /// Keeps only the newest `keep` values.
    fn keep_newest(&mut self, keep: usize) {
        let drop = self.values.len().saturating_sub(keep);
        self.values.drain(..drop);
    }
}

impl<V> Default for DvvSet<V> {
    fn default() -> Self {
        DvvSet {
            entries: BTreeMap::new(),
        }
    }
}

impl<V: Clone> DvvSet<V> {
    /// The state of a key that was never written.
    pub fn new() -> Self {
        DvvSet::default()
    }

    /// Records a write of `value`, coordinated by `actor`, by a client whose causal context is
    /// `context` (what an earlier read or write returned from [`Self::join`]; empty for a blind
    /// write). Returns the new value's dot.
    ///
    /// Every value whose dot `context` covers is discarded: the client saw it, so the new value
    /// supersedes it (the DVV `update`). Values the client had not seen stay as siblings.
    /// `actor` must be the replica running this update: only it issues `actor`'s dots.
    pub fn update(&mut self, context: &VersionVector, actor: ActorId, value: V) -> Dot {
        for (&entry_actor, entry) in &mut self.entries {
            let seen = context.get(entry_actor);
            let keep = entry.counter.saturating_sub(seen);
            entry.keep_newest(usize::try_from(keep).unwrap_or(usize::MAX));
        }
        // The new value's causal past is the context: fold it in, so that a later sync kills
        // the same values wherever they still live.
        for (context_actor, seen) in context.iter() {
            let entry = self.entries.entry(context_actor).or_insert_with(|| Entry {
                counter: seen,
                values: Vec::new(),
            });
            if seen > entry.counter {
                assert!(
                    entry.values.is_empty(),
                    "values the context covers were discarded"
                );
                entry.counter = seen;
            }
        }
        let entry = self.entries.entry(actor).or_insert_with(|| Entry {
            counter: 0,
            values: Vec::new(),
        });
        entry.counter = entry
            .counter
            .checked_add(1)
            .expect("DVVSet counter overflow");
        entry.values.push(value);
        let dot = Dot::new(actor, entry.counter);
        // Checked without building the join: this runs on every write.
        let contains_context = context
            .iter()
            .all(|(a, seen)| self.entries.get(&a).is_some_and(|e| e.counter >= seen));
        assert!(contains_context, "a write's state contains its context");
        dot
    }

    /// Merges another replica's state of the same key (the DVV `sync`).
    ///
    /// A value survives if it is alive on one side and, on the other, either alive too or not
    /// yet known. A value one side knows of but no longer holds was superseded there, and stays
    /// superseded. Per actor, that is the shorter of the two suffixes of alive events.
    pub fn sync(&mut self, other: &DvvSet<V>) {
        for (&actor, theirs) in &other.entries {
            match self.entries.get_mut(&actor) {
                None => {
                    self.entries.insert(actor, theirs.clone());
                }
                Some(mine) if mine.counter >= theirs.counter => {
                    // Ours alive above their dead prefix, or unknown to them.
                    let keep = mine.counter - mine.dead_up_to().max(theirs.dead_up_to());
                    mine.keep_newest(usize::try_from(keep).unwrap_or(usize::MAX));
                }
                Some(mine) => {
                    let keep = theirs.counter - theirs.dead_up_to().max(mine.dead_up_to());
                    let keep = usize::try_from(keep)
                        .unwrap_or(usize::MAX)
                        .min(theirs.values.len());
                    mine.counter = theirs.counter;
                    mine.values.clear();
                    mine.values
                        .extend_from_slice(&theirs.values[theirs.values.len() - keep..]);
                }
            }
        }
    }

    /// The causal context of the current state: what a read returns, and what the client sends
    /// back with its next write so that the write supersedes every value the read showed.
    pub fn join(&self) -> VersionVector {
        self.entries
            .iter()
            .map(|(&actor, entry)| (actor, entry.counter))
            .collect()
    }

    /// The current siblings, in dot order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.entries.values().flat_map(|entry| entry.values.iter())
    }

    /// The current siblings with their dots, in dot order.
    pub fn iter(&self) -> impl Iterator<Item = (Dot, &V)> + '_ {
        self.entries.iter().flat_map(|(&actor, entry)| {
            let first = entry.dead_up_to() + 1;
            entry
                .values
                .iter()
                .enumerate()
                .map(move |(i, value)| (Dot::new(actor, first + i as u64), value))
        })
    }

    /// How many siblings there are.
    pub fn len(&self) -> usize {
        self.entries.values().map(|entry| entry.values.len()).sum()
    }

    /// Whether there is no value (never written, or only known through a context).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Collapses two or more siblings into the one value `resolve` makes of them, written as a
    /// new event of `actor` with the current join as context, so the collapse replicates like
    /// any write and wins over exactly the siblings `resolve` saw. Returns the new dot, or
    /// `None` (and does nothing) when there were fewer than two siblings.
    pub fn reconcile(&mut self, actor: ActorId, resolve: impl FnOnce(Vec<&V>) -> V) -> Option<Dot> {
        if self.len() < 2 {
            return None;
        }
        let merged = resolve(self.values().collect());
        let context = self.join();
        Some(self.update(&context, actor, merged))
    }

    /// Last-writer-wins reconcile: keeps the sibling with the largest `key` (ties go to the
    /// larger dot, so every replica picks the same one), written as a new event of `actor` as
    /// in [`Self::reconcile`]. Returns the discarded siblings, so a caller can count them;
    /// empty (and nothing changes) when there were fewer than two siblings.
    pub fn lww<K: Ord>(&mut self, actor: ActorId, key: impl Fn(&V) -> K) -> Vec<V> {
        if self.len() < 2 {
            return Vec::new();
        }
        let winner = self
            .iter()
            .max_by(|(dot_a, a), (dot_b, b)| key(a).cmp(&key(b)).then(dot_a.cmp(dot_b)))
            .map(|(dot, _)| dot);
        let mut discarded = Vec::new();
        let mut kept = None;
        for (dot, value) in self.iter() {
            if Some(dot) == winner {
                kept = Some(value.clone());
            } else {
                discarded.push(value.clone());
            }
        }
        let kept = kept.expect("a set with two values has a winner");
        let context = self.join();
        self.update(&context, actor, kept);
        discarded
    }
}

impl<V: Clone> Crdt for DvvSet<V> {
    fn merge(&mut self, other: &Self) {
        self.sync(other);
    }
}

/// The serialized shape of [`DvvSet`], checked before it becomes one.
#[derive(Deserialize)]
struct DvvSetWire<V> {
    entries: BTreeMap<ActorId, Entry<V>>,
}

impl<V> TryFrom<DvvSetWire<V>> for DvvSet<V> {
    type Error = InvalidState;

    fn try_from(wire: DvvSetWire<V>) -> Result<Self, InvalidState> {
        for (&actor, entry) in &wire.entries {
            if entry.counter == 0 {
                return Err(InvalidState::ZeroCounter { actor });
            }
            if entry.values.len() as u64 > entry.counter {
                return Err(InvalidState::TooManyValues {
                    actor,
                    counter: entry.counter,
                    values: entry.values.len(),
                });
            }
        }
        Ok(DvvSet {
            entries: wire.entries,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::causal::version_vector::tests::vv;
    use crate::crdt::laws;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use std::collections::BTreeSet;

    const A: ActorId = ActorId(0);
    const B: ActorId = ActorId(1);

    #[test]
    fn blind_writes_by_two_clients_become_siblings_and_a_write_that_read_both_replaces_them() {
        let mut key = DvvSet::new();
        key.update(&VersionVector::new(), A, "alice");
        key.update(&VersionVector::new(), A, "bob");
        assert_eq!(key.values().collect::<Vec<_>>(), vec![&"alice", &"bob"]);

        let context = key.join();
        key.update(&context, A, "carol, who read both");
        assert_eq!(
            key.values().collect::<Vec<_>>(),
            vec![&"carol, who read both"]
        );
    }

    #[test]
    fn one_client_writing_a_thousand_times_with_its_context_never_makes_a_sibling() {
        let mut replicas = [DvvSet::new(), DvvSet::new()];
        let mut context = VersionVector::new();
        for i in 0..1_000u32 {
            let at = (i % 2) as usize;
            replicas[at].update(&context, ActorId(at as u32), i);
            context.join(&replicas[at].join());
            let (left, right) = replicas.split_at_mut(1);
            right[0].sync(&left[0]);
            left[0].sync(&right[0]);
            assert_eq!(replicas[at].len(), 1, "write {i}");
        }
        assert_eq!(replicas[0], replicas[1]);
    }

    #[test]
    fn a_value_the_writer_never_saw_survives_as_a_sibling_across_replicas() {
        let mut a = DvvSet::new();
        let mut b = DvvSet::new();
        a.update(&VersionVector::new(), A, "first");
        b.sync(&a);
        let read = b.join();
        // Meanwhile another client writes at A without having read anything.
        a.update(&VersionVector::new(), A, "blind");
        // The first client replaces what it read, at B.
        b.update(&read, B, "edited first");
        a.sync(&b);
        b.sync(&a);
        assert_eq!(a, b);
        assert_eq!(
            a.values().collect::<BTreeSet<_>>(),
            BTreeSet::from([&"blind", &"edited first"])
        );
    }

    #[test]
    fn a_sibling_covered_by_a_write_elsewhere_disappears_on_sync() {
        let mut a = DvvSet::new();
        let mut b = DvvSet::new();
        a.update(&VersionVector::new(), A, "x");
        a.update(&VersionVector::new(), A, "y");
        let read = a.join(); // covers x and y
        b.update(&read, B, "z"); // B never held x or y
        assert_eq!(b.values().collect::<Vec<_>>(), vec![&"z"]);
        a.sync(&b);
        assert_eq!(a.values().collect::<Vec<_>>(), vec![&"z"]);
    }

    #[test]
    fn reconcile_collapses_siblings_and_the_collapse_replicates() {
        let mut a = DvvSet::new();
        a.update(&VersionVector::new(), A, vec!["milk"]);
        a.update(&VersionVector::new(), A, vec!["eggs"]);
        let mut b = a.clone();
        let dot = a.reconcile(A, |siblings| {
            let mut union: Vec<&str> = siblings.into_iter().flatten().copied().collect();
            union.sort();
            union
        });
        assert_eq!(dot, Some(Dot::new(A, 3)));
        assert_eq!(a.values().collect::<Vec<_>>(), vec![&vec!["eggs", "milk"]]);
        b.sync(&a);
        assert_eq!(b, a);
        assert_eq!(
            a.reconcile(A, |_| unreachable!("one value needs no reconcile")),
            None
        );
    }

    #[test]
    fn lww_keeps_the_largest_key_and_reports_the_rest() {
        let mut key = DvvSet::new();
        key.update(&VersionVector::new(), A, (20u64, "late"));
        key.update(&VersionVector::new(), B, (10u64, "early"));
        key.update(&VersionVector::new(), B, (15u64, "middle"));
        let discarded = key.lww(A, |&(timestamp, _)| timestamp);
        assert_eq!(discarded, vec![(10, "early"), (15, "middle")]);
        assert_eq!(key.values().collect::<Vec<_>>(), vec![&(20, "late")]);
        assert!(key.lww(A, |&(timestamp, _)| timestamp).is_empty());
    }

    #[test]
    fn iter_names_each_value_by_its_dot() {
        let mut key = DvvSet::new();
        key.update(&VersionVector::new(), A, 'p');
        key.update(&VersionVector::new(), A, 'q');
        key.update(&vv(&[(0, 1)]), B, 'r');
        let dots: Vec<_> = key.iter().map(|(dot, &value)| (dot, value)).collect();
        assert_eq!(dots, vec![(Dot::new(A, 2), 'q'), (Dot::new(B, 1), 'r')]);
        assert_eq!(key.join(), vv(&[(0, 2), (1, 1)]));
    }

    #[test]
    fn a_decoded_entry_with_more_values_than_events_is_rejected() {
        let mut entries = BTreeMap::new();
        entries.insert(
            A,
            Entry {
                counter: 1,
                values: vec![1u8, 2],
            },
        );
        let bytes = postcard::to_allocvec(&DvvSet { entries }).expect("encoding");
        assert!(postcard::from_bytes::<DvvSet<u8>>(&bytes).is_err());
    }

    // ---- Model-based property test -------------------------------------------------------

    const REPLICAS: usize = 3;

    #[derive(Clone, Debug)]
    pub(crate) enum Step {
        /// The client writes at the replica with the context it holds, then holds the
        /// replica's join (the write's reply carries the siblings and their context).
        Write { client: usize, replica: usize },
        /// The client reads at the replica and adds the replica's join to its context.
        Read { client: usize, replica: usize },
        /// Anti-entropy: `to` merges `from`'s state.
        Sync { from: usize, to: usize },
    }

    pub(crate) fn arb_steps(clients: usize) -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            3 => (0..clients, 0..REPLICAS).prop_map(|(client, replica)| Step::Write { client, replica }),
            1 => (0..clients, 0..REPLICAS).prop_map(|(client, replica)| Step::Read { client, replica }),
            2 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
        ];
        proptest::collection::vec(step, 0..40)
    }

    struct Write {
        id: u32,
        client: usize,
        dot: Dot,
        context: VersionVector,
    }

    type Sync = fn(&mut DvvSet<u32>, &DvvSet<u32>);

    /// Runs `steps` with `clients` clients on three replicas merging with `sync`, checking after
    /// every step that each replica holds exactly the writes it knows of that no write it knows
    /// of had seen (the DVV semantics), and at most one value per client. Returns the replicas.
    pub(crate) fn run_against_model(
        clients: usize,
        steps: &[Step],
        sync: Sync,
    ) -> Result<Vec<DvvSet<u32>>, TestCaseError> {
        let mut replicas: Vec<DvvSet<u32>> = vec![DvvSet::new(); REPLICAS];
        let mut contexts = vec![VersionVector::new(); clients];
        let mut writes: Vec<Write> = Vec::new();
        for step in steps {
            match *step {
                Step::Write { client, replica } => {
                    let id = writes.len() as u32;
                    let context = contexts[client].clone();
                    let dot = replicas[replica].update(&context, ActorId(replica as u32), id);
                    writes.push(Write {
                        id,
                        client,
                        dot,
                        context,
                    });
                    contexts[client].join(&replicas[replica].join());
                }
                Step::Read { client, replica } => contexts[client].join(&replicas[replica].join()),
                Step::Sync { from, to } => {
                    let source = replicas[from].clone();
                    sync(&mut replicas[to], &source);
                }
            }
            for replica in &replicas {
                check_replica(replica, &writes)?;
            }
        }
        Ok(replicas)
    }

    fn check_replica(replica: &DvvSet<u32>, writes: &[Write]) -> Result<(), TestCaseError> {
        let known = replica.join();
        let held: Vec<u32> = replica.values().copied().collect();
        let held_set: BTreeSet<u32> = held.iter().copied().collect();
        prop_assert_eq!(held.len(), held_set.len(), "a value is held twice");
        let expected: BTreeSet<u32> = writes
            .iter()
            .filter(|w| known.contains(w.dot))
            .filter(|w| {
                !writes
                    .iter()
                    .any(|later| known.contains(later.dot) && later.context.contains(w.dot))
            })
            .map(|w| w.id)
            .collect();
        prop_assert_eq!(
            &held_set,
            &expected,
            "siblings differ from the writes no known write had seen"
        );
        let mut per_client = BTreeMap::new();
        for &id in &held {
            *per_client.entry(writes[id as usize].client).or_insert(0) += 1;
        }
        prop_assert!(
            per_client.values().all(|&n| n == 1),
            "a client has two siblings: {:?}",
            per_client
        );
        let writers: BTreeSet<usize> = writes.iter().map(|w| w.client).collect();
        prop_assert!(
            held.len() <= writers.len(),
            "{} siblings from {} writers",
            held.len(),
            writers.len()
        );
        for (dot, id) in replica.iter() {
            prop_assert_eq!(
                dot,
                writes[*id as usize].dot,
                "a value carries another write's dot"
            );
        }
        Ok(())
    }

    fn sync_everywhere(replicas: &mut [DvvSet<u32>], sync: Sync) {
        for _round in 0..2 {
            for to in 0..replicas.len() {
                for from in 0..replicas.len() {
                    let source = replicas[from].clone();
                    sync(&mut replicas[to], &source);
                }
            }
        }
    }

    /// A plausible bug: the side that knows more of an actor keeps all its values, forgetting
    /// that the other side may have superseded some of them.
    fn sync_forgetting_the_other_sides_discards(mine: &mut DvvSet<u32>, theirs: &DvvSet<u32>) {
        for (&actor, entry) in &theirs.entries {
            match mine.entries.get(&actor) {
                Some(own) if own.counter >= entry.counter => {}
                _ => {
                    mine.entries.insert(actor, entry.clone());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn siblings_are_exactly_the_unseen_writes_and_at_most_one_per_writer(
            (clients, steps) in (1usize..=4).prop_flat_map(|c| (Just(c), arb_steps(c)))
        ) {
            let mut replicas = run_against_model(clients, &steps, DvvSet::sync)?;
            sync_everywhere(&mut replicas, DvvSet::sync);
            prop_assert!(replicas.windows(2).all(|pair| pair[0] == pair[1]), "replicas diverged");
            prop_assert!(replicas[0].len() <= clients);
        }

        #[test]
        fn sync_obeys_the_merge_laws(steps in arb_steps(3)) {
            let replicas = run_against_model(3, &steps, DvvSet::sync)?;
            laws::check_all(&replicas[0], &replicas[1], &replicas[2], |x: &mut DvvSet<u32>, y| x.merge(y))?;
        }

        #[test]
        fn replica_states_delivered_in_any_order_with_duplicates_converge(
            steps in arb_steps(3), seed in any::<u64>()
        ) {
            let replicas = run_against_model(3, &steps, DvvSet::sync)?;
            laws::check_order_insensitive(&DvvSet::new(), &replicas, |x: &mut DvvSet<u32>, y| x.merge(y), seed)?;
        }
    }

    #[test]
    fn the_model_check_catches_a_sync_that_forgets_the_other_sides_discards() {
        let mut runner = TestRunner::new(Config {
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = (1usize..=4).prop_flat_map(|c| (Just(c), arb_steps(c)));
        let result = runner.run(&strategy, |(clients, steps)| {
            run_against_model(clients, &steps, sync_forgetting_the_other_sides_discards).map(|_| ())
        });
        laws::assert_caught(
            result,
            "siblings differ from the writes no known write had seen",
        );
    }
}
