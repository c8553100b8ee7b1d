//! Add-wins observed-remove set without tombstones (the shopping cart).

use super::{Crdt, DeltaCrdt, InvalidState};
use crate::causal::{ActorId, CausalContext, Dot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// An add-wins observed-remove set, in the optimized form of riak_dt's ORSWOT ("OR-Set
/// without tombstones"; Bieniusa et al., "An Optimized Conflict-free Replicated Set", 2012)
/// with the delta-state join of Almeida et al., "Delta State Replicated Data Types" (2018).
///
/// Every add of an element is an event with its own [`Dot`]; the element is present while at
/// least one of its dots is. The set also keeps a [`CausalContext`]: every dot it has ever
/// seen. A dot that the context holds but no element carries was removed. So a remove needs
/// no tombstone: it deletes the element's dots and the context remembers that they existed.
///
/// Merge keeps a dot if both sides carry it, or if one side carries it and the other has never
/// seen it (it is not in the other's context). A remove therefore removes only the adds the
/// remover had observed; an add that it had not observed (a concurrent add) survives: **add
/// wins**. The context grows by one counter per actor, not per operation.
///
/// Invariants: every element has at least one dot; every dot is in the context; no dot
/// belongs to two elements.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    try_from = "AwSetWire<E>",
    bound(deserialize = "E: Ord + Deserialize<'de>")
)]
pub struct AwSet<E: Ord> {
    entries: BTreeMap<E, BTreeSet<Dot>>,
    context: CausalContext,
}

/// What an [`AwSet`] operation ships: the elements it touched, each with the dots it carries
/// (none, for a remove), and the dots it saw (its new dot and the dots it removed).
///
/// A delta names every element whose dots its context holds, which is what lets
/// [`DeltaCrdt::apply`] visit only those elements: applying one add to a cart of a thousand
/// items costs a lookup, not a walk. Applying is a join restricted to those elements, so deltas
/// may arrive in any order and any number of times.
///
/// Invariants: every carried dot is in the context; no dot is carried by two elements.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[must_use = "a delta that is not shipped never reaches the other replicas"]
#[serde(
    try_from = "AwSetDeltaWire<E>",
    bound(deserialize = "E: Ord + Deserialize<'de>")
)]
pub struct AwSetDelta<E: Ord> {
    elements: BTreeMap<E, BTreeSet<Dot>>,
    context: CausalContext,
}

impl<E: Ord> Default for AwSet<E> {
    fn default() -> Self {
        AwSet {
            entries: BTreeMap::new(),
            context: CausalContext::new(),
        }
    }
}

impl<E: Ord + Clone> AwSet<E> {
    pub fn new() -> Self {
        AwSet::default()
    }

    /// Adds `element` as a new event of `actor` (the replica calling this). The add also
    /// supersedes the element's earlier dots here, which keeps one dot per element per
    /// concurrent adder instead of one per add.
    pub fn add(&mut self, actor: ActorId, element: E) -> AwSetDelta<E> {
        let dot = self.context.next_dot(actor);
        let mut delta = self.observed(std::iter::once(element.clone()));
        delta.context.insert(dot);
        delta.elements.insert(element, BTreeSet::from([dot]));
        self.apply(&delta);
        assert!(self.context.contains(dot), "an add's dot is in the context");
        delta
    }

    /// Removes `element` as far as this replica has observed it: its dots here are dropped
    /// everywhere the delta reaches, while adds this replica has not seen survive.
    pub fn remove(&mut self, element: &E) -> AwSetDelta<E> {
        let delta = self.observed(std::iter::once(element.clone()));
        self.apply(&delta);
        delta
    }

    /// Removes every element this replica has observed (a checkout empties the cart, but an
    /// item added concurrently on another replica stays).
    pub fn clear(&mut self) -> AwSetDelta<E> {
        let delta = self.observed(self.entries.keys().cloned().collect::<Vec<_>>());
        self.apply(&delta);
        delta
    }

    /// A delta that touches `elements`, carries none of their dots, and has seen all of them
    /// here: applied, it removes what this replica observed of them.
    fn observed(&self, elements: impl IntoIterator<Item = E>) -> AwSetDelta<E> {
        let mut delta = AwSetDelta {
            elements: BTreeMap::new(),
            context: CausalContext::new(),
        };
        for element in elements {
            for &dot in self.entries.get(&element).into_iter().flatten() {
                delta.context.insert(dot);
            }
            delta.elements.insert(element, BTreeSet::new());
        }
        delta
    }

    pub fn contains(&self, element: &E) -> bool {
        self.entries.contains_key(element)
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = &E> + '_ {
        self.entries.keys()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every dot this replica has seen: what the set's metadata costs.
    pub fn context(&self) -> &CausalContext {
        &self.context
    }

    /// The dots that keep `element` present (one per concurrent add not yet superseded).
    pub fn dots(&self, element: &E) -> impl Iterator<Item = Dot> + '_ {
        self.entries.get(element).into_iter().flatten().copied()
    }
}

impl<E: Ord + Clone> Crdt for AwSet<E> {
    fn merge(&mut self, other: &Self) {
        // Ours survive if they also carry them or have never seen them.
        self.entries.retain(|element, dots| {
            let theirs = other.entries.get(element);
            dots.retain(|&dot| {
                theirs.is_some_and(|t| t.contains(&dot)) || !other.context.contains(dot)
            });
            !dots.is_empty()
        });
        // Theirs are new to us unless our context has seen them (then we removed them).
        for (element, dots) in &other.entries {
            let unseen: Vec<Dot> = dots
                .iter()
                .copied()
                .filter(|&dot| !self.context.contains(dot))
                .collect();
            if !unseen.is_empty() {
                self.entries
                    .entry(element.clone())
                    .or_default()
                    .extend(unseen);
            }
        }
        self.context.join(&other.context);
        // Merge keeps an element only with a dot, and a dot only from a side whose context held
        // it. (That no dot tags two elements it cannot ensure: that rests on actor ids being
        // unique, see `ActorId`.) O(size), so checked in debug builds, i.e. by every test.
        debug_assert!(
            self.entries
                .values()
                .flatten()
                .all(|&dot| self.context.contains(dot))
        );
        debug_assert!(self.entries.values().all(|dots| !dots.is_empty()));
    }
}

impl<E: Ord + Clone> DeltaCrdt for AwSet<E> {
    type Delta = AwSetDelta<E>;

    /// The join of [`Crdt::merge`], restricted to the elements the delta touches: the delta's
    /// context holds dots of no other element, so no other element can change.
    fn apply(&mut self, delta: &AwSetDelta<E>) {
        for (element, theirs) in &delta.elements {
            let unseen = theirs
                .iter()
                .copied()
                .filter(|&dot| !self.context.contains(dot));
            match self.entries.get_mut(element) {
                Some(mine) => {
                    mine.retain(|&dot| theirs.contains(&dot) || !delta.context.contains(dot));
                    mine.extend(unseen);
                    if mine.is_empty() {
                        self.entries.remove(element);
                    }
                }
                None => {
                    let unseen: BTreeSet<Dot> = unseen.collect();
                    if !unseen.is_empty() {
                        self.entries.insert(element.clone(), unseen);
                    }
                }
            }
        }
        self.context.join(&delta.context);
    }
}

/// Checks that every dot in `entries` is in `context` and tags one element only, and, unless
/// `allow_empty` (a delta's removes), that every element has a dot. O(size).
fn check<E>(
    entries: &BTreeMap<E, BTreeSet<Dot>>,
    context: &CausalContext,
    allow_empty: bool,
) -> Result<(), InvalidState> {
    let mut owned = BTreeSet::new();
    for dots in entries.values() {
        if dots.is_empty() && !allow_empty {
            return Err(InvalidState::ElementWithoutDots);
        }
        for &dot in dots {
            if !context.contains(dot) {
                return Err(InvalidState::DotOutsideContext { dot });
            }
            if !owned.insert(dot) {
                return Err(InvalidState::SharedDot { dot });
            }
        }
    }
    Ok(())
}

/// The serialized shape of [`AwSet`], checked before it becomes one.
#[derive(Deserialize)]
struct AwSetWire<E: Ord> {
    entries: BTreeMap<E, BTreeSet<Dot>>,
    context: CausalContext,
}

impl<E: Ord> TryFrom<AwSetWire<E>> for AwSet<E> {
    type Error = InvalidState;

    fn try_from(wire: AwSetWire<E>) -> Result<Self, InvalidState> {
        check(&wire.entries, &wire.context, false)?;
        Ok(AwSet {
            entries: wire.entries,
            context: wire.context,
        })
    }
}

/// The serialized shape of [`AwSetDelta`], checked before it becomes one.
#[derive(Deserialize)]
struct AwSetDeltaWire<E: Ord> {
    elements: BTreeMap<E, BTreeSet<Dot>>,
    context: CausalContext,
}

impl<E: Ord> TryFrom<AwSetDeltaWire<E>> for AwSetDelta<E> {
    type Error = InvalidState;

    fn try_from(wire: AwSetDeltaWire<E>) -> Result<Self, InvalidState> {
        check(&wire.elements, &wire.context, true)?;
        Ok(AwSetDelta {
            elements: wire.elements,
            context: wire.context,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crdt::laws;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    const EU: ActorId = ActorId(1);
    const US: ActorId = ActorId(2);

    #[test]
    fn concurrent_add_and_remove_of_the_same_item_keep_the_item() {
        let mut eu = AwSet::new();
        let mut us = AwSet::new();
        let added = eu.add(EU, "book");
        us.apply(&added);
        // EU removes the book while US, having seen it, adds it again (a second copy).
        let removed = eu.remove(&"book");
        let re_added = us.add(US, "book");
        eu.apply(&re_added);
        us.apply(&removed);
        assert!(eu.contains(&"book") && us.contains(&"book"), "add wins");
        assert_eq!(eu, us);
    }

    #[test]
    fn a_remove_does_not_remove_an_add_it_never_saw() {
        let mut eu = AwSet::new();
        let mut us = AwSet::new();
        let eu_add = eu.add(EU, "socks");
        let us_add = us.add(US, "socks"); // concurrent, unseen by EU
        let eu_remove = eu.remove(&"socks");
        assert!(!eu.contains(&"socks"));
        for delta in [&us_add, &eu_remove, &eu_add] {
            eu.apply(delta);
            us.apply(delta);
        }
        assert!(eu.contains(&"socks") && us.contains(&"socks"));
        assert_eq!(
            eu.dots(&"socks").collect::<Vec<_>>(),
            vec![Dot::new(US, 1)],
            "only US's add survives"
        );
    }

    #[test]
    fn a_remove_that_arrives_before_its_add_still_removes_it() {
        let mut origin = AwSet::new();
        let add = origin.add(EU, "hat");
        let remove = origin.remove(&"hat");
        let mut late = AwSet::new();
        late.apply(&remove);
        late.apply(&add);
        assert!(!late.contains(&"hat"));
        assert_eq!(late, origin);
    }

    #[test]
    fn removes_leave_no_tombstones() {
        let mut cart = AwSet::new();
        for item in 0..1_000u32 {
            let _ = cart.add(EU, item);
        }
        let _ = cart.clear();
        assert!(cart.is_empty());
        assert!(cart.context().is_compact());
        assert_eq!(
            cart.context().vector().len(),
            1,
            "one counter for the one actor"
        );
        assert_eq!(cart.context().vector().get(EU), 1_000);
    }

    #[test]
    fn re_adding_an_item_keeps_one_dot_per_adder() {
        let mut cart = AwSet::new();
        for _ in 0..5 {
            let _ = cart.add(EU, "milk");
        }
        assert_eq!(cart.dots(&"milk").count(), 1);
        assert_eq!(cart.iter().collect::<Vec<_>>(), vec![&"milk"]);
        assert_eq!(cart.len(), 1);
    }

    #[test]
    fn a_decoded_set_with_a_dot_outside_its_context_is_rejected() {
        let set = AwSet {
            entries: BTreeMap::from([(7u8, BTreeSet::from([Dot::new(EU, 3)]))]),
            context: CausalContext::new(),
        };
        let bytes = postcard::to_allocvec(&set).expect("encoding");
        assert!(postcard::from_bytes::<AwSet<u8>>(&bytes).is_err());
    }

    // ---- Model-based property test -------------------------------------------------------

    const REPLICAS: u32 = 3;

    #[derive(Clone, Debug)]
    pub(crate) enum Step {
        Add {
            replica: u32,
            element: u8,
        },
        Remove {
            replica: u32,
            element: u8,
        },
        Clear {
            replica: u32,
        },
        /// Replica `to` applies the `delta`-th delta shipped so far (modulo their number).
        Deliver {
            delta: usize,
            to: u32,
        },
    }

    pub(crate) fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            4 => (0..REPLICAS, 0u8..4).prop_map(|(replica, element)| Step::Add { replica, element }),
            3 => (0..REPLICAS, 0u8..4).prop_map(|(replica, element)| Step::Remove { replica, element }),
            1 => (0..REPLICAS).prop_map(|replica| Step::Clear { replica }),
            4 => (any::<usize>(), 0..REPLICAS).prop_map(|(delta, to)| Step::Deliver { delta, to }),
        ];
        proptest::collection::vec(step, 0..40)
    }

    /// What happened, recorded independently of the implementation: for each shipped delta,
    /// the operations it carries knowledge of.
    pub(crate) struct Run {
        pub(crate) replicas: Vec<AwSet<u8>>,
        pub(crate) deltas: Vec<AwSetDelta<u8>>,
        /// For each add: its element and which operations (by index into `deltas`) had
        /// observed it, i.e. were issued at a replica that had received it.
        adds: Vec<(usize, u8)>,
        observed_by: BTreeMap<usize, Vec<usize>>,
        /// The indices of the deltas each replica has applied (or issued).
        received: Vec<BTreeSet<usize>>,
    }

    pub(crate) fn run(steps: &[Step], apply: fn(&mut AwSet<u8>, &AwSetDelta<u8>)) -> Run {
        let mut run = Run {
            replicas: vec![AwSet::new(); REPLICAS as usize],
            deltas: Vec::new(),
            adds: Vec::new(),
            observed_by: BTreeMap::new(),
            received: vec![BTreeSet::new(); REPLICAS as usize],
        };
        for step in steps {
            let (replica, touched, delta) = match *step {
                Step::Add { replica, element } => {
                    let r = replica as usize;
                    run.adds.push((run.deltas.len(), element));
                    (
                        r,
                        Some(element),
                        run.replicas[r].add(ActorId(replica), element),
                    )
                }
                Step::Remove { replica, element } => {
                    let r = replica as usize;
                    (r, Some(element), run.replicas[r].remove(&element))
                }
                Step::Clear { replica } => {
                    let r = replica as usize;
                    (r, None, run.replicas[r].clear())
                }
                Step::Deliver { delta, to } => {
                    if !run.deltas.is_empty() {
                        let i = delta % run.deltas.len();
                        apply(&mut run.replicas[to as usize], &run.deltas[i]);
                        run.received[to as usize].insert(i);
                    }
                    continue;
                }
            };
            let index = run.deltas.len();
            // An add or remove of element e (or a clear) at replica r observes every earlier
            // add of e that r has received.
            for &(add, element) in &run.adds {
                if add != index
                    && touched.is_none_or(|t| t == element)
                    && run.received[replica].contains(&add)
                {
                    run.observed_by.entry(add).or_default().push(index);
                }
            }
            run.received[replica].insert(index);
            run.deltas.push(delta);
        }
        run
    }

    impl Run {
        /// Add-wins semantics: once every delta is everywhere, an element is present iff some
        /// add of it was observed by no later operation on it.
        pub(crate) fn expected(&self) -> BTreeSet<u8> {
            self.adds
                .iter()
                .filter(|(add, _)| !self.observed_by.contains_key(add))
                .map(|&(_, element)| element)
                .collect()
        }
    }

    fn deliver_everything(run: &mut Run, apply: fn(&mut AwSet<u8>, &AwSetDelta<u8>)) {
        for replica in &mut run.replicas {
            for delta in &run.deltas {
                apply(replica, delta);
            }
        }
    }

    fn check_converged_to_model(
        run: &mut Run,
        apply: fn(&mut AwSet<u8>, &AwSetDelta<u8>),
    ) -> Result<(), TestCaseError> {
        deliver_everything(run, apply);
        let expected = run.expected();
        for replica in &run.replicas {
            let elements: BTreeSet<u8> = replica.iter().copied().collect();
            prop_assert_eq!(
                elements,
                expected.clone(),
                "elements differ from add-wins semantics"
            );
            prop_assert!(
                replica.context().is_compact(),
                "with every delta in, no dot waits in the cloud"
            );
        }
        prop_assert!(
            run.replicas.windows(2).all(|pair| pair[0] == pair[1]),
            "replicas diverged"
        );
        Ok(())
    }

    /// A plausible bug: remove-wins, dropping every dot the delta has seen, even the ones it
    /// carries.
    fn apply_remove_wins(set: &mut AwSet<u8>, delta: &AwSetDelta<u8>) {
        for (element, theirs) in &delta.elements {
            let mut dots = set.entries.remove(element).unwrap_or_default();
            dots.retain(|&dot| !delta.context.contains(dot));
            dots.extend(
                theirs
                    .iter()
                    .copied()
                    .filter(|&dot| !set.context.contains(dot)),
            );
            if !dots.is_empty() {
                set.entries.insert(*element, dots);
            }
        }
        set.context.join(&delta.context);
    }

    proptest! {
        #[test]
        fn replicas_converge_to_add_wins_semantics(steps in arb_steps()) {
            let mut run = run(&steps, AwSet::apply);
            check_converged_to_model(&mut run, AwSet::apply)?;
        }

        #[test]
        fn merge_obeys_the_merge_laws(steps in arb_steps()) {
            let run = run(&steps, AwSet::apply);
            let [a, b, c] = [&run.replicas[0], &run.replicas[1], &run.replicas[2]];
            laws::check_all(a, b, c, |x: &mut AwSet<u8>, y| x.merge(y))?;
        }

        #[test]
        fn deltas_in_any_order_with_duplicates_converge(steps in arb_steps(), seed in any::<u64>()) {
            let run = run(&steps, AwSet::apply);
            laws::check_order_insensitive(&AwSet::new(), &run.deltas, |x: &mut AwSet<u8>, d| x.apply(d), seed)?;
            // A replica that issued deltas and received some is brought to the same state by
            // the rest, duplicates included.
            let mut everything = AwSet::new();
            for delta in &run.deltas {
                everything.apply(delta);
            }
            // Every delta was applied where it was issued, so merging the full states of the
            // replicas gives the same state as the deltas do.
            let mut merged = run.replicas[0].clone();
            merged.merge(&run.replicas[1]);
            merged.merge(&run.replicas[2]);
            prop_assert_eq!(&merged, &everything);
            for replica in &run.replicas {
                let mut caught_up = replica.clone();
                for delta in &run.deltas {
                    caught_up.apply(delta);
                }
                prop_assert_eq!(&caught_up, &everything);
            }
        }
    }

    #[test]
    fn the_model_check_catches_a_remove_wins_merge() {
        let mut runner = TestRunner::new(Config {
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&arb_steps(), |steps| {
            let mut run = run(&steps, apply_remove_wins);
            check_converged_to_model(&mut run, apply_remove_wins)
        });
        laws::assert_caught(result, "add-wins");
    }
}
