//! Version vectors: a causal history that is closed downwards, one counter per actor.

use super::{ActorId, Dot};
use crate::crdt::{Crdt, InvalidState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// How two causal histories relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CausalOrder {
    /// `self` happened before `other`: `other` has seen everything `self` has, and more.
    Before,
    /// `self` happened after `other`: the mirror of [`CausalOrder::Before`].
    After,
    /// The same history.
    Equal,
    /// Each has seen an event the other has not: neither may overwrite the other.
    Concurrent,
}

/// A version vector: for each actor, how many of its events a history contains.
///
/// It stands for the set of dots `{(a, 1), …, (a, n_a)}` for every actor `a`, so it can only
/// describe histories without gaps; [`CausalContext`](super::CausalContext) covers the others.
///
/// Invariant: no stored counter is 0 (an absent actor means 0). This keeps the representation
/// canonical, so that derived equality is equality of histories and two replicas with the same
/// history encode to the same bytes.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "VersionVectorWire")]
pub struct VersionVector {
    counters: BTreeMap<ActorId, u64>,
}

impl VersionVector {
    /// The empty history.
    pub fn new() -> Self {
        VersionVector::default()
    }

    /// How many events of `actor` this history contains.
    pub fn get(&self, actor: ActorId) -> u64 {
        self.counters.get(&actor).copied().unwrap_or(0)
    }

    /// Whether the history contains the event `dot`.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter() <= self.get(dot.actor())
    }

    /// Records a new event of `actor` and returns its dot.
    ///
    /// # Panics
    /// If `actor` has issued `u64::MAX` events (at a billion events a second, in 584 years).
    pub fn increment(&mut self, actor: ActorId) -> Dot {
        let counter = self.counters.entry(actor).or_insert(0);
        *counter = counter
            .checked_add(1)
            .expect("version vector counter overflow");
        Dot::new(actor, *counter)
    }

    /// Adds `dot` and, because a version vector has no gaps, every earlier event of its actor.
    /// Callers must know those earlier events happened before `dot` (they do when `dot` was
    /// issued by a replica whose history already held them).
    pub fn advance_to(&mut self, dot: Dot) {
        let counter = self.counters.entry(dot.actor()).or_insert(0);
        *counter = (*counter).max(dot.counter());
    }

    /// Whether this history contains all of `other` (`self >= other`). "Descends" in the
    /// Riak sense: a value written with this history may replace one written with `other`.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other
            .counters
            .iter()
            .all(|(&actor, &counter)| self.get(actor) >= counter)
    }

    /// Whether this history contains all of `other` and more (`self > other`).
    pub fn dominates(&self, other: &VersionVector) -> bool {
        self.descends(other) && self != other
    }

    /// How this history relates to `other`.
    pub fn compare(&self, other: &VersionVector) -> CausalOrder {
        match (self.descends(other), other.descends(self)) {
            (true, true) => CausalOrder::Equal,
            (true, false) => CausalOrder::After,
            (false, true) => CausalOrder::Before,
            (false, false) => CausalOrder::Concurrent,
        }
    }

    /// Whether neither history contains the other.
    pub fn concurrent_with(&self, other: &VersionVector) -> bool {
        self.compare(other) == CausalOrder::Concurrent
    }

    /// Extends this history with `other`'s: the pointwise maximum, the least history that
    /// contains both.
    pub fn join(&mut self, other: &VersionVector) {
        for (&actor, &counter) in &other.counters {
            let mine = self.counters.entry(actor).or_insert(0);
            *mine = (*mine).max(counter);
        }
        // Version vectors only grow: a join that loses an event is a bug here, not bad input.
        assert!(self.descends(other), "a join must contain both sides");
    }

    /// `(actor, counter)` pairs in actor order; every counter is at least 1.
    pub fn iter(&self) -> impl Iterator<Item = (ActorId, u64)> + '_ {
        self.counters
            .iter()
            .map(|(&actor, &counter)| (actor, counter))
    }

    /// How many actors have at least one event here.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }
}

impl Crdt for VersionVector {
    fn merge(&mut self, other: &Self) {
        self.join(other);
    }
}

impl FromIterator<(ActorId, u64)> for VersionVector {
    /// Builds a vector from `(actor, counter)` pairs; zero counters are dropped (they mean "no
    /// event"), and a repeated actor keeps its largest counter.
    fn from_iter<I: IntoIterator<Item = (ActorId, u64)>>(pairs: I) -> Self {
        let mut vector = VersionVector::new();
        for (actor, counter) in pairs {
            if counter > 0 {
                vector.advance_to(Dot::new(actor, counter));
            }
        }
        vector
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.counters.iter()).finish()
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (actor, counter)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{actor}:{counter}")?;
        }
        f.write_str("]")
    }
}

/// The serialized shape of [`VersionVector`], checked before it becomes one.
#[derive(Deserialize)]
struct VersionVectorWire {
    counters: BTreeMap<ActorId, u64>,
}

impl TryFrom<VersionVectorWire> for VersionVector {
    type Error = InvalidState;

    fn try_from(wire: VersionVectorWire) -> Result<Self, InvalidState> {
        if let Some((&actor, _)) = wire.counters.iter().find(|&(_, &counter)| counter == 0) {
            return Err(InvalidState::ZeroCounter { actor });
        }
        Ok(VersionVector {
            counters: wire.counters,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crdt::laws;
    use proptest::prelude::*;

    pub(crate) fn vv(pairs: &[(u32, u64)]) -> VersionVector {
        pairs
            .iter()
            .map(|&(actor, counter)| (ActorId(actor), counter))
            .collect()
    }

    pub(crate) fn arb_version_vector() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u32..4, 0u64..6), 0..5)
            .prop_map(|pairs| pairs.into_iter().map(|(a, c)| (ActorId(a), c)).collect())
    }

    #[test]
    fn compare_names_all_four_relations() {
        let a = vv(&[(1, 2), (2, 1)]);
        let b = vv(&[(1, 3), (2, 1)]);
        let c = vv(&[(1, 1), (2, 2)]);
        assert_eq!(a.compare(&b), CausalOrder::Before);
        assert_eq!(b.compare(&a), CausalOrder::After);
        assert_eq!(a.compare(&a.clone()), CausalOrder::Equal);
        assert_eq!(b.compare(&c), CausalOrder::Concurrent);
        assert!(b.dominates(&a) && !a.dominates(&b) && !a.dominates(&a));
        assert!(b.descends(&a) && a.descends(&a));
        assert!(b.concurrent_with(&c));
    }

    #[test]
    fn an_absent_actor_counts_as_zero() {
        let a = vv(&[(1, 1)]);
        let b = vv(&[(1, 1), (2, 0)]);
        assert_eq!(a, b, "zero counters are not stored");
        assert_eq!(a.compare(&VersionVector::new()), CausalOrder::After);
        assert!(a.contains(Dot::new(ActorId(1), 1)));
        assert!(!a.contains(Dot::new(ActorId(2), 1)));
    }

    #[test]
    fn increment_issues_consecutive_dots() {
        let mut v = VersionVector::new();
        assert_eq!(v.increment(ActorId(3)), Dot::new(ActorId(3), 1));
        assert_eq!(v.increment(ActorId(3)), Dot::new(ActorId(3), 2));
        assert_eq!(v.get(ActorId(3)), 2);
    }

    #[test]
    fn join_is_the_pointwise_maximum() {
        let mut a = vv(&[(1, 3), (2, 1)]);
        a.join(&vv(&[(2, 4), (3, 1)]));
        assert_eq!(a, vv(&[(1, 3), (2, 4), (3, 1)]));
    }

    #[test]
    fn a_decoded_zero_counter_is_rejected() {
        let mut counters = BTreeMap::new();
        counters.insert(ActorId(1), 0u64);
        let bytes = postcard::to_allocvec(&counters).expect("encoding a map");
        assert!(postcard::from_bytes::<VersionVector>(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn join_obeys_the_merge_laws(
            a in arb_version_vector(), b in arb_version_vector(), c in arb_version_vector()
        ) {
            laws::check_all(&a, &b, &c, |x: &mut VersionVector, y| x.merge(y))?;
        }

        #[test]
        fn join_is_the_least_upper_bound(a in arb_version_vector(), b in arb_version_vector()) {
            let mut joined = a.clone();
            joined.join(&b);
            prop_assert!(joined.descends(&a) && joined.descends(&b));
            // Least: every entry comes from one of the two sides.
            for (actor, counter) in joined.iter() {
                prop_assert_eq!(counter, a.get(actor).max(b.get(actor)));
            }
        }

        #[test]
        fn compare_is_antisymmetric(a in arb_version_vector(), b in arb_version_vector()) {
            let mirrored = match a.compare(&b) {
                CausalOrder::Before => CausalOrder::After,
                CausalOrder::After => CausalOrder::Before,
                other => other,
            };
            prop_assert_eq!(b.compare(&a), mirrored);
        }
    }
}
