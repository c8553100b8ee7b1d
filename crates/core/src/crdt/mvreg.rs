//! Multi-value register: concurrent writes are all kept, as siblings, until a write that has
//! seen them replaces them.

use super::Crdt;
use crate::causal::{ActorId, Dot, DvvSet, VersionVector};
use serde::{Deserialize, Serialize};

/// A register that never drops a write it cannot prove was seen: what `siblings` keyspaces
/// store per key. A read returns every sibling and the causal context to write back with; a
/// write supersedes exactly the siblings that context covers.
///
/// Built on [`DvvSet`], so the number of siblings is bounded by the number of concurrent
/// writers, not by the number of writes (see [`DvvSet`] for why).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent, bound(deserialize = "V: Deserialize<'de>"))]
pub struct MvRegister<V> {
    siblings: DvvSet<V>,
}

impl<V> Default for MvRegister<V> {
    fn default() -> Self {
        MvRegister {
            siblings: DvvSet::default(),
        }
    }
}

impl<V: Clone> MvRegister<V> {
    /// A register that was never written.
    pub fn new() -> Self {
        MvRegister::default()
    }

    /// Writes `value` at replica `actor` on behalf of a client whose last read (or write)
    /// returned `context`; every sibling that read showed is replaced.
    pub fn write(&mut self, context: &VersionVector, actor: ActorId, value: V) -> Dot {
        self.siblings.update(context, actor, value)
    }

    /// The siblings (in a deterministic order) and the context to write back with.
    pub fn read(&self) -> (Vec<&V>, VersionVector) {
        (self.siblings.values().collect(), self.siblings.join())
    }

    /// The siblings, in a deterministic order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.siblings.values()
    }

    /// The context a read returns.
    pub fn context(&self) -> VersionVector {
        self.siblings.join()
    }

    /// The underlying dotted version vector set.
    pub fn as_dvvset(&self) -> &DvvSet<V> {
        &self.siblings
    }
}

impl<V: Clone> Crdt for MvRegister<V> {
    fn merge(&mut self, other: &Self) {
        self.siblings.sync(&other.siblings);
    }
}

impl<V> From<DvvSet<V>> for MvRegister<V> {
    fn from(siblings: DvvSet<V>) -> Self {
        MvRegister { siblings }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::dvvset::tests::{arb_steps, run_against_model};
    use crate::crdt::laws;
    use proptest::prelude::*;

    #[test]
    fn two_regions_writing_at_once_keep_both_values_until_one_write_saw_both() {
        let (eu, us) = (ActorId(1), ActorId(2));
        let mut in_eu = MvRegister::new();
        let mut in_us = MvRegister::new();
        in_eu.write(&VersionVector::new(), eu, "blue");
        in_us.write(&VersionVector::new(), us, "green");
        in_eu.merge(&in_us);
        let (values, context) = in_eu.read();
        assert_eq!(values, vec![&"blue", &"green"]);
        in_eu.write(&context, eu, "teal");
        in_us.merge(&in_eu);
        assert_eq!(in_us.values().collect::<Vec<_>>(), vec![&"teal"]);
    }

    proptest! {
        #[test]
        fn merge_obeys_the_merge_laws(steps in arb_steps(3)) {
            let replicas = run_against_model(3, &steps, DvvSet::sync)?;
            let [a, b, c] = [0, 1, 2].map(|i| MvRegister::from(replicas[i].clone()));
            laws::check_all(&a, &b, &c, |x: &mut MvRegister<u32>, y| x.merge(y))?;
        }

        #[test]
        fn states_in_any_order_with_duplicates_converge(steps in arb_steps(3), seed in any::<u64>()) {
            let replicas: Vec<MvRegister<u32>> = run_against_model(3, &steps, DvvSet::sync)?
                .into_iter()
                .map(MvRegister::from)
                .collect();
            laws::check_order_insensitive(&MvRegister::new(), &replicas, |x: &mut MvRegister<u32>, y| x.merge(y), seed)?;
        }
    }
}
