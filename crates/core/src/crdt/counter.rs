//! Grow-only and positive-negative counters, shipped as idempotent deltas.

use super::{Crdt, DeltaCrdt, InvalidState};
use crate::causal::ActorId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An actor's count would pass `u64::MAX`. The counter is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the count of actor {actor} would pass u64::MAX")]
pub struct CounterOverflow {
    pub actor: ActorId,
}

/// A counter that only grows: one count per actor, the value is their sum.
///
/// Each actor only ever raises its own count, so the join of two states is the pointwise
/// maximum and no increment can be counted twice, however often a state or delta arrives.
///
/// Invariant: no stored count is 0 (canonical form; an absent actor counts 0).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "GCounterWire")]
pub struct GCounter {
    counts: BTreeMap<ActorId, u64>,
}

/// What a [`GCounter`] increment ships: the actor's new total (not the amount added, which
/// would count twice when delivered twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[must_use = "a delta that is not shipped never reaches the other replicas"]
pub struct GCounterDelta {
    pub actor: ActorId,
    pub count: u64,
}

impl GCounter {
    pub fn new() -> Self {
        GCounter::default()
    }

    /// Adds one on behalf of `actor`, which must be the replica calling this.
    pub fn increment(&mut self, actor: ActorId) -> Result<GCounterDelta, CounterOverflow> {
        self.increment_by(actor, 1)
    }

    /// Adds `amount` on behalf of `actor`, which must be the replica calling this.
    pub fn increment_by(
        &mut self,
        actor: ActorId,
        amount: u64,
    ) -> Result<GCounterDelta, CounterOverflow> {
        let count = self
            .count_of(actor)
            .checked_add(amount)
            .ok_or(CounterOverflow { actor })?;
        let delta = GCounterDelta { actor, count };
        self.apply(&delta);
        Ok(delta)
    }

    /// The sum of every actor's count. `u128`, so that it cannot overflow.
    pub fn value(&self) -> u128 {
        self.counts.values().map(|&count| u128::from(count)).sum()
    }

    /// How much `actor` has added.
    pub fn count_of(&self, actor: ActorId) -> u64 {
        self.counts.get(&actor).copied().unwrap_or(0)
    }

    /// `(actor, count)` pairs in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (ActorId, u64)> + '_ {
        self.counts.iter().map(|(&actor, &count)| (actor, count))
    }

    /// Raises `actor`'s count to `count` if it is below.
    fn raise(&mut self, actor: ActorId, count: u64) {
        if count == 0 {
            return; // keeps the no-zero invariant; a zero delta says nothing
        }
        let mine = self.counts.entry(actor).or_insert(0);
        *mine = (*mine).max(count);
    }
}

impl Crdt for GCounter {
    fn merge(&mut self, other: &Self) {
        for (&actor, &count) in &other.counts {
            self.raise(actor, count);
        }
    }
}

impl DeltaCrdt for GCounter {
    type Delta = GCounterDelta;

    fn apply(&mut self, delta: &GCounterDelta) {
        self.raise(delta.actor, delta.count);
    }
}

/// The serialized shape of [`GCounter`], checked before it becomes one.
#[derive(Deserialize)]
struct GCounterWire {
    counts: BTreeMap<ActorId, u64>,
}

impl TryFrom<GCounterWire> for GCounter {
    type Error = InvalidState;

    fn try_from(wire: GCounterWire) -> Result<Self, InvalidState> {
        if let Some((&actor, _)) = wire.counts.iter().find(|&(_, &count)| count == 0) {
            return Err(InvalidState::ZeroCounter { actor });
        }
        Ok(GCounter {
            counts: wire.counts,
        })
    }
}

/// A counter that goes up and down: a grow-only counter of increments and one of decrements;
/// the value is their difference.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PnCounter {
    increments: GCounter,
    decrements: GCounter,
}

/// What a [`PnCounter`] operation ships: the actor's new totals of both kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[must_use = "a delta that is not shipped never reaches the other replicas"]
pub struct PnCounterDelta {
    pub actor: ActorId,
    pub increments: u64,
    pub decrements: u64,
}

impl PnCounter {
    pub fn new() -> Self {
        PnCounter::default()
    }

    pub fn increment(&mut self, actor: ActorId) -> Result<PnCounterDelta, CounterOverflow> {
        self.increment_by(actor, 1)
    }

    pub fn decrement(&mut self, actor: ActorId) -> Result<PnCounterDelta, CounterOverflow> {
        self.decrement_by(actor, 1)
    }

    /// Adds `amount` on behalf of `actor`, which must be the replica calling this.
    pub fn increment_by(
        &mut self,
        actor: ActorId,
        amount: u64,
    ) -> Result<PnCounterDelta, CounterOverflow> {
        // The PN delta, built below, carries this actor's totals of both kinds.
        let _ = self.increments.increment_by(actor, amount)?;
        Ok(self.delta_of(actor))
    }

    /// Subtracts `amount` on behalf of `actor`, which must be the replica calling this.
    pub fn decrement_by(
        &mut self,
        actor: ActorId,
        amount: u64,
    ) -> Result<PnCounterDelta, CounterOverflow> {
        let _ = self.decrements.increment_by(actor, amount)?;
        Ok(self.delta_of(actor))
    }

    /// Adds a signed amount (`INCRBY`, `DECRBY`).
    pub fn add(&mut self, actor: ActorId, amount: i64) -> Result<PnCounterDelta, CounterOverflow> {
        if amount >= 0 {
            self.increment_by(actor, amount.unsigned_abs())
        } else {
            self.decrement_by(actor, amount.unsigned_abs())
        }
    }

    /// Increments minus decrements. `i128`, so that it cannot overflow.
    pub fn value(&self) -> i128 {
        // Each side is at most u64::MAX per actor; with fewer than 2^63 actors both sums fit.
        let up = i128::try_from(self.increments.value()).unwrap_or(i128::MAX);
        let down = i128::try_from(self.decrements.value()).unwrap_or(i128::MAX);
        up - down
    }

    fn delta_of(&self, actor: ActorId) -> PnCounterDelta {
        PnCounterDelta {
            actor,
            increments: self.increments.count_of(actor),
            decrements: self.decrements.count_of(actor),
        }
    }
}

impl Crdt for PnCounter {
    fn merge(&mut self, other: &Self) {
        self.increments.merge(&other.increments);
        self.decrements.merge(&other.decrements);
    }
}

impl DeltaCrdt for PnCounter {
    type Delta = PnCounterDelta;

    fn apply(&mut self, delta: &PnCounterDelta) {
        self.increments.raise(delta.actor, delta.increments);
        self.decrements.raise(delta.actor, delta.decrements);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crdt::laws;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    const REPLICAS: u32 = 3;

    /// One step of a replicated counter workload: a replica adds `amount` (negative:
    /// subtracts), or a replica receives one of the deltas shipped so far.
    #[derive(Clone, Debug)]
    pub(crate) enum Step {
        Add { replica: u32, amount: i64 },
        Deliver { delta: usize, to: u32 },
    }

    pub(crate) fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            (0..REPLICAS, -5i64..=5).prop_map(|(replica, amount)| Step::Add { replica, amount }),
            (any::<usize>(), 0..REPLICAS).prop_map(|(delta, to)| Step::Deliver { delta, to }),
        ];
        proptest::collection::vec(step, 0..30)
    }

    /// Runs `steps`; returns the replicas, every delta shipped, and the exact expected value.
    pub(crate) fn run(steps: &[Step]) -> (Vec<PnCounter>, Vec<PnCounterDelta>, i128) {
        let mut replicas = vec![PnCounter::new(); REPLICAS as usize];
        let mut deltas = Vec::new();
        let mut expected = 0i128;
        for step in steps {
            match *step {
                Step::Add { replica, amount } => {
                    let delta = replicas[replica as usize]
                        .add(ActorId(replica), amount)
                        .expect("small amounts");
                    deltas.push(delta);
                    expected += i128::from(amount);
                }
                Step::Deliver { delta, to } if !deltas.is_empty() => {
                    let delta = deltas[delta % deltas.len()];
                    replicas[to as usize].apply(&delta);
                }
                Step::Deliver { .. } => {}
            }
        }
        (replicas, deltas, expected)
    }

    pub(crate) fn arb_g_counter() -> impl Strategy<Value = GCounter> {
        proptest::collection::vec((0u32..4, 0u64..5), 0..5).prop_map(|adds| {
            let mut counter = GCounter::new();
            for (actor, amount) in adds {
                let _ = counter
                    .increment_by(ActorId(actor), amount)
                    .expect("small amounts");
            }
            counter
        })
    }

    #[test]
    fn a_like_counted_on_three_replicas_with_duplicated_and_reordered_deltas_is_exact() {
        let mut replicas = [PnCounter::new(), PnCounter::new(), PnCounter::new()];
        let mut shipped = Vec::new();
        for round in 0..10u32 {
            let at = (round % 3) as usize;
            shipped.push(
                replicas[at]
                    .increment(ActorId(at as u32))
                    .expect("small counts"),
            );
        }
        shipped.push(replicas[1].decrement(ActorId(1)).expect("small counts"));
        // Every replica receives everything backwards, then everything again.
        for replica in &mut replicas {
            for delta in shipped.iter().rev().chain(shipped.iter()) {
                replica.apply(delta);
            }
        }
        assert!(replicas.iter().all(|replica| replica.value() == 9));
    }

    #[test]
    fn signed_adds_and_extremes() {
        let mut counter = PnCounter::new();
        let _ = counter.add(ActorId(1), -7).expect("small");
        let _ = counter.add(ActorId(2), 3).expect("small");
        assert_eq!(counter.value(), -4);
        let _ = counter
            .add(ActorId(3), i64::MIN)
            .expect("fits a fresh actor");
        assert_eq!(counter.value(), -4 + i128::from(i64::MIN));
        let _ = counter
            .increment_by(ActorId(4), u64::MAX)
            .expect("fits a fresh actor");
        assert_eq!(
            counter.increment(ActorId(4)),
            Err(CounterOverflow { actor: ActorId(4) })
        );
        assert_eq!(
            counter.value(),
            -4 + i128::from(i64::MIN) + i128::from(u64::MAX),
            "unchanged by the overflow"
        );
    }

    #[test]
    fn g_counter_sums_actors_and_never_loses_to_an_older_delta() {
        let mut counter = GCounter::new();
        let first = counter.increment(ActorId(1)).expect("small");
        let _ = counter.increment_by(ActorId(1), 4).expect("small");
        let _ = counter.increment(ActorId(2)).expect("small");
        counter.apply(&first); // a stale delta arriving late
        assert_eq!(counter.value(), 6);
        assert_eq!(
            counter.iter().collect::<Vec<_>>(),
            vec![(ActorId(1), 5), (ActorId(2), 1)]
        );
    }

    proptest! {
        #[test]
        fn g_counter_merge_obeys_the_merge_laws(a in arb_g_counter(), b in arb_g_counter(), c in arb_g_counter()) {
            laws::check_all(&a, &b, &c, |x: &mut GCounter, y| x.merge(y))?;
        }

        #[test]
        fn pn_counter_merge_obeys_the_merge_laws(steps in arb_steps()) {
            let (replicas, _, _) = run(&steps);
            laws::check_all(&replicas[0], &replicas[1], &replicas[2], |x: &mut PnCounter, y| x.merge(y))?;
        }

        #[test]
        fn deltas_in_any_order_with_duplicates_converge_to_the_exact_sum(steps in arb_steps(), seed in any::<u64>()) {
            let (replicas, deltas, expected) = run(&steps);
            laws::check_order_insensitive(&PnCounter::new(), &deltas, |x: &mut PnCounter, d| x.apply(d), seed)?;
            let mut everything = PnCounter::new();
            for delta in &deltas {
                everything.apply(delta);
            }
            prop_assert_eq!(everything.value(), expected);
            for mut replica in replicas {
                for delta in &deltas {
                    replica.apply(delta);
                }
                prop_assert_eq!(&replica, &everything);
            }
        }

        #[test]
        fn g_counter_deltas_in_any_order_with_duplicates_converge(
            adds in proptest::collection::vec((0u32..4, 0u64..5), 0..20), seed in any::<u64>()
        ) {
            let mut origin = GCounter::new();
            let deltas: Vec<GCounterDelta> = adds
                .iter()
                .map(|&(actor, amount)| origin.increment_by(ActorId(actor), amount).expect("small amounts"))
                .collect();
            laws::check_order_insensitive(&GCounter::new(), &deltas, |x: &mut GCounter, d| x.apply(d), seed)?;
            let mut replica = GCounter::new();
            for delta in &deltas {
                replica.apply(delta);
            }
            prop_assert_eq!(replica.value(), adds.iter().map(|&(_, amount)| u128::from(amount)).sum::<u128>());
        }
    }

    #[test]
    fn the_convergence_check_catches_counters_that_ship_amounts_instead_of_totals() {
        // The classic bug: an "increment by n" operation applied on delivery counts twice when
        // the network duplicates it.
        let mut runner = TestRunner::new(Config {
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&(arb_steps(), any::<u64>()), |(steps, seed)| {
            let amounts: Vec<i64> = steps
                .iter()
                .filter_map(|s| {
                    if let Step::Add { amount, .. } = *s {
                        Some(amount)
                    } else {
                        None
                    }
                })
                .collect();
            laws::check_order_insensitive(
                &0i64,
                &amounts,
                |sum: &mut i64, amount| *sum += amount,
                seed,
            )
        });
        laws::assert_caught(result, "diverged");
    }
}
