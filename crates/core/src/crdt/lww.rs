//! Last-writer-wins register on hybrid logical clock timestamps.

use super::Crdt;
use crate::hlc::HlcTimestamp;
use serde::{Deserialize, Serialize};

/// A register that holds the write with the largest timestamp.
///
/// Timestamps come from [`Hlc`](crate::hlc::Hlc), which makes them distinct across the cluster
/// (the node id breaks ties) and consistent with causality, so "largest" means "latest" as far
/// as clocks can tell. What LWW cannot tell is whether the writer of the winner had seen the
/// loser: a concurrent write is dropped *silently*. [`LwwRegister::write`] and
/// [`LwwRegister::merge_reporting`] therefore return the discarded write, so the server can
/// count silent overwrites instead of pretending there are none.
///
/// Order: by timestamp, then by value. The value only matters if two different writes carry
/// the same timestamp, which a correctly used clock never produces; ordering by it keeps merge
/// commutative even then.
///
/// Deletion is a write of a tombstone: use `LwwRegister<Option<V>>` (as [`LwwMap`](super::LwwMap)
/// does), so that an old write arriving late cannot resurrect a deleted value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LwwRegister<V> {
    timestamp: HlcTimestamp,
    value: V,
}

/// A write that lost, with the timestamp it was written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discarded<V> {
    pub timestamp: HlcTimestamp,
    pub value: V,
}

/// What a write or merge into an [`LwwRegister`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a discarded write is a silent overwrite that the caller should count"]
pub enum LwwOutcome<V> {
    /// The incoming write won; the write it replaced is returned.
    Replaced(Discarded<V>),
    /// The incoming write lost to the held one, and is returned.
    Rejected(Discarded<V>),
    /// The incoming write is the one held (a duplicate delivery): nothing was lost.
    Unchanged,
}

impl<V> LwwOutcome<V> {
    /// The write that lost, if any.
    pub fn discarded(&self) -> Option<&Discarded<V>> {
        match self {
            LwwOutcome::Replaced(lost) | LwwOutcome::Rejected(lost) => Some(lost),
            LwwOutcome::Unchanged => None,
        }
    }

    /// Whether a write was lost.
    pub fn is_overwrite(&self) -> bool {
        self.discarded().is_some()
    }
}

impl<V: Ord> LwwRegister<V> {
    /// A register holding one write.
    pub fn new(timestamp: HlcTimestamp, value: V) -> Self {
        LwwRegister { timestamp, value }
    }

    pub fn timestamp(&self) -> HlcTimestamp {
        self.timestamp
    }

    pub fn value(&self) -> &V {
        &self.value
    }

    pub fn into_value(self) -> V {
        self.value
    }

    /// Whether the write `(timestamp, value)` would win against the held one.
    fn is_beaten_by(&self, timestamp: HlcTimestamp, value: &V) -> bool {
        (timestamp, value) > (self.timestamp, &self.value)
    }

    /// Applies a write: keeps whichever of the held and the incoming write is later, and
    /// returns the other.
    pub fn write(&mut self, timestamp: HlcTimestamp, value: V) -> LwwOutcome<V> {
        if self.is_beaten_by(timestamp, &value) {
            let old_timestamp = std::mem::replace(&mut self.timestamp, timestamp);
            let old_value = std::mem::replace(&mut self.value, value);
            assert!(
                self.timestamp >= old_timestamp,
                "an LWW register never goes back in time"
            );
            LwwOutcome::Replaced(Discarded {
                timestamp: old_timestamp,
                value: old_value,
            })
        } else if (timestamp, &value) == (self.timestamp, &self.value) {
            LwwOutcome::Unchanged
        } else {
            LwwOutcome::Rejected(Discarded { timestamp, value })
        }
    }
}

impl<V: Ord + Clone> LwwRegister<V> {
    /// [`Crdt::merge`] that also reports the write that lost.
    pub fn merge_reporting(&mut self, other: &Self) -> LwwOutcome<V> {
        self.write(other.timestamp, other.value.clone())
    }
}

impl<V: Ord + Clone> Crdt for LwwRegister<V> {
    fn merge(&mut self, other: &Self) {
        if self.is_beaten_by(other.timestamp, &other.value) {
            self.clone_from(other);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crdt::laws;
    use crate::ids::NodeId;
    use proptest::prelude::*;

    pub(crate) fn ts(wall_ms: u64, node: u32) -> HlcTimestamp {
        HlcTimestamp {
            wall_ms,
            logical: 0,
            node: NodeId(node),
        }
    }

    pub(crate) fn arb_timestamp() -> impl Strategy<Value = HlcTimestamp> {
        (1u64..5, 0u32..2, 0u32..3).prop_map(|(wall_ms, logical, node)| HlcTimestamp {
            wall_ms,
            logical,
            node: NodeId(node),
        })
    }

    /// Writes as a cluster issues them: the value is a function of the timestamp, because one
    /// timestamp names one write.
    pub(crate) fn arb_register() -> impl Strategy<Value = LwwRegister<u64>> {
        arb_timestamp().prop_map(|t| LwwRegister::new(t, t.wall_ms * 100 + u64::from(t.node.0)))
    }

    #[test]
    fn a_later_write_replaces_and_reports_the_value_it_overwrote() {
        let mut prefs = LwwRegister::new(ts(10, 1), "dark mode");
        let outcome = prefs.write(ts(20, 2), "light mode");
        assert_eq!(
            outcome,
            LwwOutcome::Replaced(Discarded {
                timestamp: ts(10, 1),
                value: "dark mode"
            })
        );
        assert!(outcome.is_overwrite());
        assert_eq!(prefs.value(), &"light mode");
    }

    #[test]
    fn an_earlier_write_arriving_late_loses_and_is_reported() {
        let mut prefs = LwwRegister::new(ts(20, 2), "light mode");
        let outcome = prefs.write(ts(10, 1), "dark mode");
        assert_eq!(
            outcome.discarded(),
            Some(&Discarded {
                timestamp: ts(10, 1),
                value: "dark mode"
            })
        );
        assert_eq!(prefs.value(), &"light mode");
    }

    #[test]
    fn a_duplicate_delivery_loses_nothing() {
        let mut prefs = LwwRegister::new(ts(20, 2), "light mode");
        let copy = prefs.clone();
        assert_eq!(prefs.merge_reporting(&copy), LwwOutcome::Unchanged);
    }

    #[test]
    fn the_same_millisecond_on_two_nodes_is_ordered_by_node() {
        let mut a = LwwRegister::new(ts(10, 1), "from n1");
        let b = LwwRegister::new(ts(10, 2), "from n2");
        assert!(a.merge_reporting(&b).is_overwrite());
        assert_eq!(a.value(), &"from n2");
    }

    #[test]
    fn a_tombstone_keeps_a_late_old_write_from_resurrecting_the_value() {
        let mut register = LwwRegister::new(ts(10, 1), Some("v"));
        let _ = register.write(ts(30, 1), None);
        let _ = register.write(ts(20, 2), Some("late"));
        assert_eq!(register.value(), &None);
    }

    proptest! {
        #[test]
        fn merge_obeys_the_merge_laws(a in arb_register(), b in arb_register(), c in arb_register()) {
            laws::check_all(&a, &b, &c, |x: &mut LwwRegister<u64>, y| x.merge(y))?;
        }

        #[test]
        fn writes_in_any_order_with_duplicates_converge_to_the_latest(
            writes in proptest::collection::vec(arb_register(), 1..20), seed in any::<u64>()
        ) {
            let initial = LwwRegister::new(HlcTimestamp::MIN, 0);
            laws::check_order_insensitive(&initial, &writes, |x: &mut LwwRegister<u64>, y| x.merge(y), seed)?;
            // Without duplicates, every write but the winner is reported lost exactly once.
            let mut register = initial;
            let mut seen = std::collections::BTreeSet::new();
            let mut lost = Vec::new();
            for write in writes.iter().filter(|w| seen.insert(w.timestamp())) {
                if let Some(discarded) = register.merge_reporting(write).discarded() {
                    lost.push(discarded.timestamp);
                }
            }
            let latest = writes.iter().map(LwwRegister::timestamp).max();
            prop_assert_eq!(Some(register.timestamp()), latest);
            // Timestamps start at 1 ms, so the placeholder at MIN is a write of its own.
            let mut expected: Vec<HlcTimestamp> = seen.into_iter().filter(|&t| Some(t) != latest).collect();
            expected.push(HlcTimestamp::MIN);
            lost.sort();
            expected.sort();
            prop_assert_eq!(lost, expected);
        }
    }
}
