//! Map of last-writer-wins registers: hashes with `HSET`, `HGET`, `HDEL`, `HGETALL`.

use super::{Crdt, DeltaCrdt, LwwOutcome, LwwRegister};
use crate::hlc::HlcTimestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A map whose every field is an [`LwwRegister`], merged field by field: concurrent writes to
/// different fields both survive, and concurrent writes to one field resolve by timestamp.
///
/// A delete writes a tombstone (`None`) with its timestamp instead of dropping the field. Were
/// the field dropped, an older `HSET` delivered after the `HDEL` (reordering is normal between
/// regions) would find nothing to lose against and resurrect the field. The tombstone loses
/// only to a later write. Tombstones cost one timestamp per deleted field; dropping them safely
/// needs to know that every replica has seen every write up to some timestamp, which is the
/// replication layer's business, not this type's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound(deserialize = "K: Ord + Deserialize<'de>, V: Deserialize<'de>"))]
pub struct LwwMap<K: Ord, V> {
    fields: BTreeMap<K, LwwRegister<Option<V>>>,
}

/// One field write (`HSET`) or delete (`HDEL`): what a map operation ships.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[must_use = "a delta that is not shipped never reaches the other replicas"]
pub struct LwwMapDelta<K, V> {
    pub field: K,
    pub register: LwwRegister<Option<V>>,
}

impl<K, V: Ord> LwwMapDelta<K, V> {
    /// Sets `field` to `value` at `timestamp`.
    pub fn set(field: K, timestamp: HlcTimestamp, value: V) -> Self {
        LwwMapDelta {
            field,
            register: LwwRegister::new(timestamp, Some(value)),
        }
    }

    /// Deletes `field` at `timestamp`.
    pub fn delete(field: K, timestamp: HlcTimestamp) -> Self {
        LwwMapDelta {
            field,
            register: LwwRegister::new(timestamp, None),
        }
    }
}

impl<K: Ord, V> Default for LwwMap<K, V> {
    fn default() -> Self {
        LwwMap {
            fields: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V: Ord + Clone> LwwMap<K, V> {
    pub fn new() -> Self {
        LwwMap::default()
    }

    /// Applies a field write or delete from any replica, and reports the write that lost (the
    /// overwritten value, or the incoming write if it was older).
    pub fn write(&mut self, delta: &LwwMapDelta<K, V>) -> LwwOutcome<Option<V>> {
        match self.fields.get_mut(&delta.field) {
            Some(register) => register.merge_reporting(&delta.register),
            None => {
                self.fields
                    .insert(delta.field.clone(), delta.register.clone());
                LwwOutcome::Unchanged
            }
        }
    }

    /// `HSET field value`: returns the delta to ship and what was lost.
    pub fn set(
        &mut self,
        field: K,
        timestamp: HlcTimestamp,
        value: V,
    ) -> (LwwMapDelta<K, V>, LwwOutcome<Option<V>>) {
        let delta = LwwMapDelta::set(field, timestamp, value);
        let outcome = self.write(&delta);
        (delta, outcome)
    }

    /// `HDEL field`: returns the delta to ship and what was lost.
    pub fn delete(
        &mut self,
        field: K,
        timestamp: HlcTimestamp,
    ) -> (LwwMapDelta<K, V>, LwwOutcome<Option<V>>) {
        let delta = LwwMapDelta::delete(field, timestamp);
        let outcome = self.write(&delta);
        (delta, outcome)
    }

    /// `HGET field`.
    pub fn get(&self, field: &K) -> Option<&V> {
        self.fields
            .get(field)
            .and_then(|register| register.value().as_ref())
    }

    /// `HGETALL`: the live fields, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.fields
            .iter()
            .filter_map(|(field, register)| register.value().as_ref().map(|value| (field, value)))
    }

    /// How many fields are live (`HLEN`).
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many deleted fields are remembered as tombstones.
    pub fn tombstones(&self) -> usize {
        self.fields
            .values()
            .filter(|register| register.value().is_none())
            .count()
    }

    /// The register of `field`, tombstone included, with its timestamp.
    pub fn register(&self, field: &K) -> Option<&LwwRegister<Option<V>>> {
        self.fields.get(field)
    }
}

impl<K: Ord + Clone, V: Ord + Clone> Crdt for LwwMap<K, V> {
    fn merge(&mut self, other: &Self) {
        for (field, theirs) in &other.fields {
            match self.fields.get_mut(field) {
                Some(mine) => mine.merge(theirs),
                None => {
                    self.fields.insert(field.clone(), theirs.clone());
                }
            }
        }
    }
}

impl<K: Ord + Clone, V: Ord + Clone> DeltaCrdt for LwwMap<K, V> {
    type Delta = LwwMapDelta<K, V>;

    fn apply(&mut self, delta: &LwwMapDelta<K, V>) {
        let _ = self.write(delta);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crdt::laws;
    use crate::crdt::lww::tests::ts;
    use crate::hlc::Hlc;
    use crate::ids::NodeId;
    use proptest::prelude::*;

    #[test]
    fn hset_hget_hdel_hgetall() {
        let mut profile = LwwMap::new();
        let _ = profile.set("name", ts(1, 1), "ada");
        let _ = profile.set("city", ts(2, 1), "london");
        assert_eq!(profile.get(&"name"), Some(&"ada"));
        let (_, outcome) = profile.delete("city", ts(3, 1));
        assert_eq!(
            outcome.discarded().map(|lost| lost.value),
            Some(Some("london"))
        );
        assert_eq!(profile.iter().collect::<Vec<_>>(), vec![(&"name", &"ada")]);
        assert_eq!((profile.len(), profile.tombstones()), (1, 1));
    }

    #[test]
    fn concurrent_writes_to_different_fields_both_survive() {
        let mut eu = LwwMap::new();
        let mut us = LwwMap::new();
        let (from_eu, _) = eu.set("theme", ts(5, 1), "dark");
        let (from_us, _) = us.set("lang", ts(5, 2), "en");
        eu.apply(&from_us);
        us.apply(&from_eu);
        assert_eq!(eu, us);
        assert_eq!(eu.len(), 2);
    }

    #[test]
    fn a_delete_is_not_undone_by_an_older_write_arriving_after_it() {
        let mut replica = LwwMap::new();
        let older_set = LwwMapDelta::set("coupon", ts(10, 1), "SAVE10");
        let delete = LwwMapDelta::delete("coupon", ts(20, 2));
        replica.apply(&delete);
        let outcome = replica.write(&older_set);
        assert!(
            matches!(outcome, LwwOutcome::Rejected(_)),
            "the late write is reported lost"
        );
        assert_eq!(replica.get(&"coupon"), None);
        // ... while a newer write does bring the field back.
        replica.apply(&LwwMapDelta::set("coupon", ts(30, 1), "SAVE20"));
        assert_eq!(replica.get(&"coupon"), Some(&"SAVE20"));
    }

    #[derive(Clone, Debug)]
    pub(crate) enum Step {
        Set {
            replica: u32,
            field: u8,
            value: u8,
            wall_ms: u64,
        },
        Delete {
            replica: u32,
            field: u8,
            wall_ms: u64,
        },
        Deliver {
            delta: usize,
            to: u32,
        },
    }

    pub(crate) fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            (0u32..3, 0u8..4, any::<u8>(), 0u64..20).prop_map(
                |(replica, field, value, wall_ms)| Step::Set {
                    replica,
                    field,
                    value,
                    wall_ms
                }
            ),
            (0u32..3, 0u8..4, 0u64..20).prop_map(|(replica, field, wall_ms)| Step::Delete {
                replica,
                field,
                wall_ms
            }),
            (any::<usize>(), 0u32..3).prop_map(|(delta, to)| Step::Deliver { delta, to }),
        ];
        proptest::collection::vec(step, 0..30)
    }

    type Run = (Vec<LwwMap<u8, u8>>, Vec<LwwMapDelta<u8, u8>>);

    /// Runs `steps` on three replicas with their own clocks; returns the replicas and the deltas.
    pub(crate) fn run(steps: &[Step]) -> Run {
        let mut replicas = vec![LwwMap::new(); 3];
        let mut clocks: Vec<Hlc> = (0..3).map(|n| Hlc::new(NodeId(n), u64::MAX)).collect();
        let mut deltas = Vec::new();
        for step in steps {
            match *step {
                Step::Set {
                    replica,
                    field,
                    value,
                    wall_ms,
                } => {
                    let timestamp = clocks[replica as usize].now(wall_ms);
                    deltas.push(replicas[replica as usize].set(field, timestamp, value).0);
                }
                Step::Delete {
                    replica,
                    field,
                    wall_ms,
                } => {
                    let timestamp = clocks[replica as usize].now(wall_ms);
                    deltas.push(replicas[replica as usize].delete(field, timestamp).0);
                }
                Step::Deliver { delta, to } if !deltas.is_empty() => {
                    let delta: &LwwMapDelta<u8, u8> = &deltas[delta % deltas.len()];
                    let timestamp = delta.register.timestamp();
                    clocks[to as usize]
                        .observe(timestamp, timestamp.wall_ms)
                        .expect("no forward bound");
                    replicas[to as usize].apply(delta);
                }
                Step::Deliver { .. } => {}
            }
        }
        (replicas, deltas)
    }

    proptest! {
        #[test]
        fn merge_obeys_the_merge_laws(steps in arb_steps()) {
            let (replicas, _) = run(&steps);
            laws::check_all(&replicas[0], &replicas[1], &replicas[2], |x: &mut LwwMap<u8, u8>, y| x.merge(y))?;
        }

        #[test]
        fn deltas_in_any_order_with_duplicates_converge_to_the_latest_write_per_field(
            steps in arb_steps(), seed in any::<u64>()
        ) {
            let (replicas, deltas) = run(&steps);
            laws::check_order_insensitive(&LwwMap::new(), &deltas, |x: &mut LwwMap<u8, u8>, d| x.apply(d), seed)?;
            let mut latest: BTreeMap<u8, &LwwMapDelta<u8, u8>> = BTreeMap::new();
            for delta in &deltas {
                let slot = latest.entry(delta.field).or_insert(delta);
                if delta.register.timestamp() > slot.register.timestamp() {
                    *slot = delta;
                }
            }
            let expected: BTreeMap<u8, u8> =
                latest.iter().filter_map(|(&field, delta)| delta.register.value().map(|value| (field, value))).collect();
            for mut replica in replicas {
                for delta in &deltas {
                    replica.apply(delta);
                }
                let got: BTreeMap<u8, u8> = replica.iter().map(|(&field, &value)| (field, value)).collect();
                prop_assert_eq!(&got, &expected);
            }
        }
    }
}
