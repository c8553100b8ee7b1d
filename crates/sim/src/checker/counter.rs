//! The counter checker (workload C, [`crate::merged`]).
//!
//! ## The workload it judges
//!
//! Increments by known positive amounts; reads return the counter's value (0 if never written).
//!
//! ## The rule
//!
//! For each key and each read `r` that completed `ok` with value `v`:
//!
//! 1. **Nothing counted that was not attempted** (else [`ViolationKind::Unexpected`]): `v` is at
//!    most the sum of the increments invoked before `r` completed that did not `fail`. An
//!    increment counted twice (a duplicated message applied twice) breaks this at the end.
//! 2. **Nothing acknowledged missing** (else [`ViolationKind::Stale`] in the main phase,
//!    [`ViolationKind::Lost`] for final reads): `v` is at least the sum of the increments that
//!    completed `ok` before `r` was invoked. With R + W > N every read quorum meets every
//!    acknowledged increment's write quorum, and totals merge by maximum, so it holds for every
//!    read, not only the final ones.
//! 3. A key with an increment that did not `fail` and no `ok` final read is
//!    [`ViolationKind::Unverified`].
//!
//! So the final value lies between the sum of acknowledged increments and the sum of attempted
//! ones; that every replica holds the same counter is [`super::convergence::check_states`]'s.
//!
//! ## Multi-leader keyspaces (workload MN)
//!
//! A region's reads are linearizable within the region, and other regions' increments arrive
//! asynchronously: [`check_scoped`] applies rule 2 to a main-phase read only for increments
//! acknowledged in the read's own region, and to final reads (after the heal and settle every
//! region holds every increment) for all of them. Rules 1 and 3 are unchanged.

use super::{CheckerResult, Violation, ViolationKind};
use crate::history::EventType;
use crate::merged::{MergedFunction, MergedHistory, MergedOp, ReadResult};
use std::collections::BTreeMap;

pub const NAME: &str = "counter";

/// Per key: the increments with their amounts, and the reads.
type ByKey<'a> = BTreeMap<u64, (Vec<(&'a MergedOp, i128)>, Vec<&'a MergedOp>)>;

/// Checks `history` against the rule in the module documentation.
pub fn check(history: &MergedHistory) -> CheckerResult {
    check_scoped(history, |_, _, _| true)
}

/// Like [`check`], with rule 2 applied to read `read` (final or not, the third argument) for an
/// increment `add` acknowledged before it only when `must_see(add, read, is_final)`.
pub fn check_scoped(
    history: &MergedHistory,
    must_see: impl Fn(&MergedOp, &MergedOp, bool) -> bool,
) -> CheckerResult {
    let ops = history.ops();
    let final_start = history.final_phase_start().unwrap_or(usize::MAX);
    let mut keys: ByKey = BTreeMap::new();
    for op in &ops {
        let (adds, reads) = keys.entry(op.key).or_default();
        match op.f {
            MergedFunction::CounterAdd { amount } => {
                assert!(amount > 0, "the workload increments by positive amounts");
                adds.push((op, i128::from(amount)));
            }
            MergedFunction::CounterRead => reads.push(op),
            other => panic!("{other} in a counter history"),
        }
    }
    let mut violations = Vec::new();
    for (&key, (adds, reads)) in &keys {
        let mut verified = false;
        for read in reads.iter().filter(|r| r.outcome == EventType::Ok) {
            let is_final = read.invoke_index >= final_start;
            verified |= is_final;
            let complete = read.complete_index.expect("an ok read completed");
            let Some(ReadResult::Count(value)) = read.result else {
                panic!("an ok counter read has a value")
            };
            let attempted: i128 = adds
                .iter()
                .filter(|(a, _)| a.outcome != EventType::Fail && a.invoke_index < complete)
                .map(|(_, amount)| amount)
                .sum();
            let acknowledged: i128 = adds
                .iter()
                .filter(|(a, _)| {
                    a.outcome == EventType::Ok
                        && a.complete_index.is_some_and(|c| c < read.invoke_index)
                        && must_see(a, read, is_final)
                })
                .map(|(_, amount)| amount)
                .sum();
            if value > attempted {
                violations.push(Violation {
                    kind: ViolationKind::Unexpected,
                    key,
                    index: Some(complete),
                    detail: format!(
                        "read #{complete} returned {value}, more than the {attempted} attempted by then"
                    ),
                });
            }
            if value < acknowledged {
                let kind = if is_final {
                    ViolationKind::Lost
                } else {
                    ViolationKind::Stale
                };
                violations.push(Violation {
                    kind,
                    key,
                    index: Some(complete),
                    detail: format!(
                        "read #{complete} returned {value}, less than the {acknowledged} acknowledged before it began"
                    ),
                });
            }
        }
        let any_add = adds.iter().any(|(a, _)| a.outcome != EventType::Fail);
        if any_add && !verified {
            violations.push(Violation::unverified(key, "lost increments"));
        }
    }
    CheckerResult {
        checker: NAME,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::TestHistory;

    struct Builder {
        h: TestHistory,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                h: TestHistory::new(),
            }
        }

        fn op(&mut self, p: u64, f: MergedFunction, kind: EventType, value: Option<i128>) {
            self.h.op(p, f, kind, value.map(ReadResult::Count));
        }

        fn incr(&mut self, amount: i64, kind: EventType) {
            self.op(1, MergedFunction::CounterAdd { amount }, kind, None);
        }

        fn read(&mut self, value: i128) {
            self.op(2, MergedFunction::CounterRead, EventType::Ok, Some(value));
        }

        fn final_read(&mut self, value: i128) {
            self.h.final_phase();
            self.read(value);
        }

        fn kinds(&self) -> Vec<ViolationKind> {
            check(&self.h.h).violations.iter().map(|v| v.kind).collect()
        }
    }

    #[test]
    fn values_between_acknowledged_and_attempted_pass() {
        let mut b = Builder::new();
        b.incr(5, EventType::Ok);
        b.read(5);
        b.incr(3, EventType::Info);
        b.incr(2, EventType::Fail);
        b.read(5);
        b.final_read(8);
        b.final_read(5);
        assert!(check(&b.h.h).is_ok(), "{}", check(&b.h.h));
    }

    #[test]
    fn a_lost_acknowledged_increment_fails() {
        let mut b = Builder::new();
        b.incr(5, EventType::Ok);
        b.incr(1, EventType::Ok);
        b.final_read(5);
        assert_eq!(b.kinds(), vec![ViolationKind::Lost]);
    }

    #[test]
    fn an_increment_counted_twice_or_a_failed_one_counted_fails() {
        let mut b = Builder::new();
        b.incr(5, EventType::Ok);
        b.final_read(10);
        assert_eq!(b.kinds(), vec![ViolationKind::Unexpected]);
        let mut b = Builder::new();
        b.incr(5, EventType::Fail);
        b.final_read(5);
        assert_eq!(b.kinds(), vec![ViolationKind::Unexpected]);
    }

    #[test]
    fn a_scoped_check_excuses_main_phase_reads_elsewhere_but_not_final_ones() {
        let mut b = Builder::new();
        b.incr(5, EventType::Ok);
        b.read(0);
        b.final_read(0);
        // The increment went through n1; every read through n1 too, so "another region" here
        // is the closure's say-so.
        let elsewhere = |_: &MergedOp, _: &MergedOp, is_final: bool| is_final;
        let kinds: Vec<ViolationKind> = check_scoped(&b.h.h, elsewhere)
            .violations
            .iter()
            .map(|v| v.kind)
            .collect();
        assert_eq!(kinds, vec![ViolationKind::Lost]);
        assert_eq!(b.kinds(), vec![ViolationKind::Stale, ViolationKind::Lost]);
    }

    #[test]
    fn a_stale_read_and_an_unverified_key_fail() {
        let mut b = Builder::new();
        b.incr(2, EventType::Ok);
        b.read(0);
        assert_eq!(
            b.kinds(),
            vec![ViolationKind::Stale, ViolationKind::Unverified]
        );
    }
}
