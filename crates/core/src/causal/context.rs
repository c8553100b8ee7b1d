//! Causal contexts: a version vector plus the few dots beyond it that arrived out of order.

use super::{ActorId, Dot, VersionVector};
use crate::crdt::{Crdt, InvalidState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A set of dots, stored as a version vector (the part without gaps) plus a "dot cloud" of the
/// dots that lie beyond a gap (Almeida, Shoker, Baquero, "Delta State Replicated Data Types", 2018).
///
/// Full states merged with each other only ever produce gap-free histories, but deltas may
/// arrive in any order: the remove of a cart item can arrive before the add it removes. The
/// cloud remembers such an early dot until the gap before it fills, at which point it folds into
/// the vector. Once every delta has arrived everywhere the cloud is empty again, so a context
/// costs one counter per actor, whatever the number of writes.
///
/// Invariant (canonical form): every cloud dot lies beyond a gap, i.e. its counter is at least
/// `vector.get(actor) + 2`. A dot the vector covers, or the one right after it, is never in the
/// cloud. Derived equality is therefore equality of dot sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "CausalContextWire")]
pub struct CausalContext {
    vector: VersionVector,
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    pub fn new() -> Self {
        CausalContext::default()
    }

    /// Whether `dot` is in the set.
    pub fn contains(&self, dot: Dot) -> bool {
        self.vector.contains(dot) || self.cloud.contains(&dot)
    }

    /// The gap-free part of the set.
    pub fn vector(&self) -> &VersionVector {
        &self.vector
    }

    /// Whether the set has no gaps (the cloud is empty), so that [`Self::vector`] is all of it.
    pub fn is_compact(&self) -> bool {
        self.cloud.is_empty()
    }

    /// The dot after every dot of `actor` in the set. The set is not changed: a new event is
    /// recorded by inserting its dot.
    pub fn next_dot(&self, actor: ActorId) -> Dot {
        let in_vector = self.vector.get(actor);
        let in_cloud = self
            .cloud
            .range(Dot::new(actor, 1)..=Dot::new(actor, u64::MAX))
            .next_back()
            .map_or(0, |dot| dot.counter());
        let last = in_vector.max(in_cloud);
        Dot::new(actor, last.checked_add(1).expect("dot counter overflow"))
    }

    /// Adds one dot.
    pub fn insert(&mut self, dot: Dot) {
        if self.contains(dot) {
            return;
        }
        self.cloud.insert(dot);
        self.compact();
    }

    /// Restores the canonical form: drops cloud dots the vector covers and folds into the
    /// vector every cloud dot that closes a gap.
    fn compact(&mut self) {
        let cloud = std::mem::take(&mut self.cloud);
        // Ascending order visits each actor's dots from the lowest, so one pass folds a run.
        for dot in cloud {
            let reached = self.vector.get(dot.actor());
            if dot.counter() <= reached {
                continue;
            }
            if dot.counter() == reached + 1 {
                self.vector.advance_to(dot);
            } else {
                self.cloud.insert(dot);
            }
        }
        debug_assert!(self.is_canonical());
    }

    fn is_canonical(&self) -> bool {
        self.cloud
            .iter()
            .all(|dot| dot.counter() >= self.vector.get(dot.actor()).saturating_add(2))
    }

    /// Adds every dot of `other`.
    pub fn join(&mut self, other: &CausalContext) {
        self.vector.join(&other.vector);
        self.cloud.extend(other.cloud.iter().copied());
        self.compact();
    }
}

impl Crdt for CausalContext {
    fn merge(&mut self, other: &Self) {
        self.join(other);
    }
}

impl From<VersionVector> for CausalContext {
    fn from(vector: VersionVector) -> Self {
        CausalContext {
            vector,
            cloud: BTreeSet::new(),
        }
    }
}

/// The serialized shape of [`CausalContext`], checked before it becomes one.
#[derive(Deserialize)]
struct CausalContextWire {
    vector: VersionVector,
    cloud: BTreeSet<Dot>,
}

impl TryFrom<CausalContextWire> for CausalContext {
    type Error = InvalidState;

    fn try_from(wire: CausalContextWire) -> Result<Self, InvalidState> {
        let context = CausalContext {
            vector: wire.vector,
            cloud: wire.cloud,
        };
        if let Some(&dot) = context
            .cloud
            .iter()
            .find(|dot| dot.counter() < context.vector.get(dot.actor()).saturating_add(2))
        {
            return Err(InvalidState::UncompactedDot { dot });
        }
        Ok(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::laws;
    use proptest::prelude::*;

    fn dot(actor: u32, counter: u64) -> Dot {
        Dot::new(ActorId(actor), counter)
    }

    fn arb_context() -> impl Strategy<Value = CausalContext> {
        proptest::collection::vec((0u32..3, 1u64..8), 0..10).prop_map(|dots| {
            let mut context = CausalContext::new();
            for (actor, counter) in dots {
                context.insert(dot(actor, counter));
            }
            context
        })
    }

    #[test]
    fn a_dot_beyond_a_gap_waits_in_the_cloud_until_the_gap_fills() {
        let mut context = CausalContext::new();
        context.insert(dot(1, 3));
        context.insert(dot(1, 1));
        assert!(!context.is_compact());
        assert!(context.contains(dot(1, 3)) && !context.contains(dot(1, 2)));
        assert_eq!(context.next_dot(ActorId(1)), dot(1, 4));
        context.insert(dot(1, 2));
        assert!(
            context.is_compact(),
            "the run 1, 2, 3 folds into the vector"
        );
        assert_eq!(context.vector().get(ActorId(1)), 3);
    }

    #[test]
    fn a_decoded_uncompacted_cloud_is_rejected() {
        let wire = (VersionVector::from_iter([(ActorId(1), 2)]), vec![dot(1, 3)]);
        let bytes = postcard::to_allocvec(&wire).expect("encoding a tuple");
        assert!(postcard::from_bytes::<CausalContext>(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn join_obeys_the_merge_laws(a in arb_context(), b in arb_context(), c in arb_context()) {
            laws::check_all(&a, &b, &c, |x: &mut CausalContext, y| x.merge(y))?;
        }

        #[test]
        fn join_is_set_union(a in arb_context(), b in arb_context()) {
            let mut joined = a.clone();
            joined.join(&b);
            for actor in 0..3 {
                for counter in 1..10 {
                    let d = dot(actor, counter);
                    prop_assert_eq!(joined.contains(d), a.contains(d) || b.contains(d), "{}", d);
                }
            }
            prop_assert!(joined.is_canonical());
        }
    }
}
