//! Property checks for the [`Crdt`](super::Crdt) laws, shared by every type's tests.
//!
//! Each check takes the merge (or apply) function as an argument instead of calling the trait,
//! so that the tests below can hand the very same check a deliberately wrong merge and see it
//! fail: a property test that cannot fail checks nothing.

use crate::rng::DetRng;
use proptest::prelude::*;
use proptest::test_runner::TestError;
use std::fmt::Debug;

/// `a ⊔ b = b ⊔ a`.
pub(crate) fn check_commutative<T: Clone + PartialEq + Debug>(
    a: &T,
    b: &T,
    merge: impl Fn(&mut T, &T),
) -> Result<(), TestCaseError> {
    let mut ab = a.clone();
    merge(&mut ab, b);
    let mut ba = b.clone();
    merge(&mut ba, a);
    prop_assert_eq!(ab, ba, "merge is not commutative");
    Ok(())
}

/// `(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)`.
pub(crate) fn check_associative<T: Clone + PartialEq + Debug>(
    a: &T,
    b: &T,
    c: &T,
    merge: impl Fn(&mut T, &T),
) -> Result<(), TestCaseError> {
    let mut left = a.clone();
    merge(&mut left, b);
    merge(&mut left, c);
    let mut bc = b.clone();
    merge(&mut bc, c);
    let mut right = a.clone();
    merge(&mut right, &bc);
    prop_assert_eq!(left, right, "merge is not associative");
    Ok(())
}

/// `a ⊔ a = a`, and merging `b` a second time changes nothing: `(a ⊔ b) ⊔ b = a ⊔ b`.
pub(crate) fn check_idempotent<T: Clone + PartialEq + Debug>(
    a: &T,
    b: &T,
    merge: impl Fn(&mut T, &T),
) -> Result<(), TestCaseError> {
    let mut aa = a.clone();
    merge(&mut aa, a);
    prop_assert_eq!(
        &aa,
        a,
        "merge is not idempotent: merging a state into itself changed it"
    );
    let mut ab = a.clone();
    merge(&mut ab, b);
    let mut abb = ab.clone();
    merge(&mut abb, b);
    prop_assert_eq!(
        abb,
        ab,
        "merge is not idempotent: merging the same state twice differs from once"
    );
    Ok(())
}

/// All three laws on `a`, `b` and `c`.
pub(crate) fn check_all<T: Clone + PartialEq + Debug>(
    a: &T,
    b: &T,
    c: &T,
    merge: impl Fn(&mut T, &T),
) -> Result<(), TestCaseError> {
    check_commutative(a, b, &merge)?;
    check_commutative(b, c, &merge)?;
    check_associative(a, b, c, &merge)?;
    check_associative(c, a, b, &merge)?;
    check_idempotent(a, b, &merge)?;
    check_idempotent(c, a, &merge)?;
    Ok(())
}

/// Replicas that receive the same updates (states, deltas or operations) in any order and with
/// duplicates converge: applying `updates` to `initial` in order gives the same state as
/// applying them shuffled (by `seed`) with some delivered twice, and as delivering them in
/// reverse order, all of them twice.
pub(crate) fn check_order_insensitive<T: Clone + PartialEq + Debug, U>(
    initial: &T,
    updates: &[U],
    apply: impl Fn(&mut T, &U),
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut in_order = initial.clone();
    for update in updates {
        apply(&mut in_order, update);
    }
    let mut rng = DetRng::seed_from_u64(seed);
    let mut deliveries: Vec<usize> = (0..updates.len()).collect();
    for i in 0..updates.len() {
        if rng.chance(0.3) {
            deliveries.push(i);
        }
    }
    rng.shuffle(&mut deliveries);
    let mut shuffled = initial.clone();
    for &i in &deliveries {
        apply(&mut shuffled, &updates[i]);
    }
    prop_assert_eq!(
        &shuffled,
        &in_order,
        "replicas diverged under shuffled delivery {:?}",
        deliveries
    );
    let mut reversed = initial.clone();
    for update in updates.iter().rev().chain(updates.iter()) {
        apply(&mut reversed, update);
    }
    prop_assert_eq!(
        &reversed,
        &in_order,
        "replicas diverged under reverse delivery with duplicates"
    );
    Ok(())
}

/// Asserts that a property run failed, and for the expected reason: a must-fail test that
/// fails for some other reason (a panic in the harness, say) proves nothing.
pub(crate) fn assert_caught<T: Debug>(result: Result<(), TestError<T>>, reason: &str) {
    match result {
        Ok(()) => panic!("the property check passed a wrong implementation; expected {reason:?}"),
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains(reason),
                "failed for another reason than {reason:?}: {message}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each law check, handed a wrong merge, fails.
    use super::*;
    use crate::causal::version_vector::tests::arb_version_vector;
    use crate::causal::{ActorId, VersionVector};
    use proptest::test_runner::{Config, TestRunner};

    fn runner() -> TestRunner {
        TestRunner::new(Config {
            failure_persistence: None,
            ..Config::default()
        })
    }

    /// "Merge" that keeps the left side whenever the two differ.
    fn prefer_left(_mine: &mut VersionVector, _theirs: &VersionVector) {}

    /// Commutative and idempotent, but not associative: the pointwise midpoint.
    fn midpoint(mine: &mut VersionVector, theirs: &VersionVector) {
        let actors: Vec<ActorId> = mine
            .iter()
            .chain(theirs.iter())
            .map(|(actor, _)| actor)
            .collect();
        *mine = actors
            .into_iter()
            .map(|actor| (actor, (mine.get(actor) + theirs.get(actor)) / 2))
            .collect();
    }

    /// Commutative and associative, but not idempotent: the pointwise sum.
    fn sum(mine: &mut VersionVector, theirs: &VersionVector) {
        let actors: Vec<ActorId> = mine
            .iter()
            .chain(theirs.iter())
            .map(|(actor, _)| actor)
            .collect();
        *mine = actors
            .into_iter()
            .map(|actor| (actor, mine.get(actor) + theirs.get(actor)))
            .collect();
    }

    #[test]
    fn the_commutativity_check_catches_a_merge_that_prefers_the_left_side() {
        let result = runner().run(&(arb_version_vector(), arb_version_vector()), |(a, b)| {
            check_commutative(&a, &b, prefer_left)
        });
        assert_caught(result, "not commutative");
        // ... and the real join passes the same check.
        let result = runner().run(&(arb_version_vector(), arb_version_vector()), |(a, b)| {
            check_commutative(&a, &b, VersionVector::join)
        });
        assert!(result.is_ok());
    }

    #[test]
    fn the_associativity_check_catches_a_midpoint_merge() {
        let strategy = (
            arb_version_vector(),
            arb_version_vector(),
            arb_version_vector(),
        );
        assert!(
            runner()
                .run(&strategy, |(a, b, _)| check_commutative(&a, &b, midpoint))
                .is_ok()
        );
        let result = runner().run(&strategy, |(a, b, c)| {
            check_associative(&a, &b, &c, midpoint)
        });
        assert_caught(result, "not associative");
    }

    #[test]
    fn the_idempotence_check_catches_a_summing_merge() {
        let strategy = (arb_version_vector(), arb_version_vector());
        assert_caught(
            runner().run(&strategy, |(a, b)| check_idempotent(&a, &b, sum)),
            "not idempotent",
        );
    }

    #[test]
    fn the_convergence_check_catches_updates_that_are_not_idempotent() {
        // Applying "add one to actor 0" is an operation, not a join: duplicates change the count.
        let strategy = (1usize..10, any::<u64>());
        let result = runner().run(&strategy, |(n, seed)| {
            let updates = vec![(); n];
            check_order_insensitive(
                &VersionVector::new(),
                &updates,
                |vector, ()| {
                    vector.increment(ActorId(0));
                },
                seed,
            )
        });
        assert_caught(result, "diverged");
    }
}
