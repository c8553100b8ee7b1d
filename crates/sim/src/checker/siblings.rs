//! The siblings checker (workload V, [`crate::merged`]): no acknowledged write is lost, and a
//! write that carried a read's context supersedes what that read showed.
//!
//! ## The workload it judges
//!
//! Every write writes a value no other write writes (so a value names its write). A write is
//! either *blind* (an empty context: it supersedes nothing and becomes a sibling of whatever is
//! there) or *observed*: it carries the context of the same process's previous operation, an
//! `ok` read of the same key, and so supersedes exactly the values that read returned. Reads
//! return the key's concurrent values.
//!
//! ## The rule
//!
//! Indices order events in real time. For a value `v` of key `K`, `write(v)` is its write and
//! `covers(v)` the observed writes whose read returned `v`.
//!
//! 1. **Origin** (else [`ViolationKind::Unexpected`]): a read that returns `v` completed after
//!    `write(v)` was invoked, and `write(v)` did not `fail`.
//! 2. **Superseded stays superseded** (else [`ViolationKind::Unexpected`]): a read invoked
//!    after some write in `covers(v)` completed `ok` does not return `v`. That write is on W
//!    replicas with a context covering `v`'s dot, the read asks R of them (R + W > N), and
//!    merging a state whose context covers a dot drops the dot's value.
//! 3. **Acknowledged writes are seen** (else [`ViolationKind::Stale`] for reads in the main
//!    phase, [`ViolationKind::Lost`] for final reads): a read invoked after `write(v)`
//!    completed `ok` returns `v`, unless some write in `covers(v)` that did not `fail` was
//!    invoked before the read completed (it may have superseded `v`). This is the issue's "every
//!    acknowledged sibling either present or covered by a later acknowledged write", with
//!    writes of unknown outcome allowed to cover, as they may have taken effect.
//! 4. A key with any write that did not `fail` and no `ok` final read is
//!    [`ViolationKind::Unverified`].
//!
//! That all replicas end identical is [`super::convergence::check_states`]'s business.

use super::{CheckerResult, Violation, ViolationKind};
use crate::history::{EventType, ProcessId};
use crate::merged::{MergedFunction, MergedHistory, MergedOp, ReadResult};
use std::collections::{BTreeMap, BTreeSet};

pub const NAME: &str = "siblings";

#[derive(Default)]
struct Key<'a> {
    writes: BTreeMap<u64, &'a MergedOp>,
    /// Value -> the observed writes whose read returned it.
    covers: BTreeMap<u64, Vec<&'a MergedOp>>,
    reads: Vec<&'a MergedOp>,
}

fn values(op: &MergedOp) -> &BTreeSet<u64> {
    match &op.result {
        Some(ReadResult::Siblings(v)) => v,
        other => panic!("an ok siblings read has values, not {other:?}"),
    }
}

/// Checks `history` against the rule in the module documentation.
///
/// # Panics
/// If the history breaks the workload's contract (a value written twice, an observed write not
/// preceded by its process's `ok` read of the same key).
pub fn check(history: &MergedHistory) -> CheckerResult {
    let mut ops = history.ops();
    ops.sort_by_key(|op| op.invoke_index);
    let final_start = history.final_phase_start().unwrap_or(usize::MAX);
    let mut keys: BTreeMap<u64, Key> = BTreeMap::new();
    let mut previous: BTreeMap<ProcessId, &MergedOp> = BTreeMap::new();
    for op in &ops {
        let key = keys.entry(op.key).or_default();
        match op.f {
            MergedFunction::SiblingsWrite { value, observed } => {
                assert!(
                    key.writes.insert(value, op).is_none(),
                    "value {value} written twice"
                );
                if observed {
                    let read = previous
                        .get(&op.process)
                        .filter(|r| {
                            r.f == MergedFunction::SiblingsRead
                                && r.key == op.key
                                && r.outcome == EventType::Ok
                        })
                        .unwrap_or_else(|| {
                            panic!("observed write of {value} without its process's ok read")
                        });
                    for &v in values(read) {
                        key.covers.entry(v).or_default().push(op);
                    }
                }
            }
            MergedFunction::SiblingsRead => key.reads.push(op),
            other => panic!("{other} in a siblings history"),
        }
        previous.insert(op.process, op);
    }
    let mut violations = Vec::new();
    for (&k, key) in &keys {
        let mut verified = false;
        for read in key.reads.iter().filter(|r| r.outcome == EventType::Ok) {
            let is_final = read.invoke_index >= final_start;
            verified |= is_final;
            let complete = read.complete_index.expect("an ok read completed");
            let returned = values(read);
            let mut report = |kind, detail: String| {
                violations.push(Violation {
                    kind,
                    key: k,
                    index: Some(complete),
                    detail,
                })
            };
            let covering = |v: u64| key.covers.get(&v).into_iter().flatten();
            for &v in returned {
                let plausible = key
                    .writes
                    .get(&v)
                    .is_some_and(|w| w.outcome != EventType::Fail && w.invoke_index < complete);
                if !plausible {
                    report(
                        ViolationKind::Unexpected,
                        format!(
                            "read #{complete} returned {v}, which no write that could have happened by then wrote"
                        ),
                    );
                    continue;
                }
                let superseded = covering(v).find(|w| {
                    w.outcome == EventType::Ok
                        && w.complete_index.is_some_and(|c| c < read.invoke_index)
                });
                if let Some(w) = superseded {
                    report(
                        ViolationKind::Unexpected,
                        format!(
                            "read #{complete} returned {v}, superseded by #{} (ok, its context covered {v}) before the read began",
                            w.complete_index.expect("ok")
                        ),
                    );
                }
            }
            for (&v, write) in &key.writes {
                let acknowledged_before = write.outcome == EventType::Ok
                    && write.complete_index.is_some_and(|c| c < read.invoke_index);
                let maybe_superseded =
                    covering(v).any(|w| w.outcome != EventType::Fail && w.invoke_index < complete);
                if acknowledged_before && !maybe_superseded && !returned.contains(&v) {
                    let kind = if is_final {
                        ViolationKind::Lost
                    } else {
                        ViolationKind::Stale
                    };
                    report(
                        kind,
                        format!(
                            "read #{complete} misses {v}, whose write #{} was acknowledged before the read began and that no write covering it was attempted",
                            write.complete_index.expect("ok")
                        ),
                    );
                }
            }
        }
        let any_write = key.writes.values().any(|w| w.outcome != EventType::Fail);
        if any_write && !verified {
            violations.push(Violation::unverified(k, "lost writes"));
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

    /// Builds histories step by step; each call is one operation, invoked and completed.
    struct Builder {
        h: TestHistory,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                h: TestHistory::new(),
            }
        }

        fn op(&mut self, p: u64, f: MergedFunction, kind: EventType, read: Option<&[u64]>) {
            let result = read.map(|v| ReadResult::Siblings(v.iter().copied().collect()));
            self.h.op(p, f, kind, result);
        }

        fn blind(&mut self, value: u64, kind: EventType) {
            let observed = false;
            self.op(
                1,
                MergedFunction::SiblingsWrite { value, observed },
                kind,
                None,
            );
        }

        /// Process 3 reads `seen`, then writes `value` with the read's context.
        fn observed(&mut self, seen: &[u64], value: u64, kind: EventType) {
            self.op(3, MergedFunction::SiblingsRead, EventType::Ok, Some(seen));
            let observed = true;
            self.op(
                3,
                MergedFunction::SiblingsWrite { value, observed },
                kind,
                None,
            );
        }

        fn read(&mut self, values: &[u64]) {
            self.op(2, MergedFunction::SiblingsRead, EventType::Ok, Some(values));
        }

        fn final_read(&mut self, values: &[u64]) {
            self.h.final_phase();
            self.read(values);
        }

        fn kinds(&self) -> Vec<ViolationKind> {
            check(&self.h.h).violations.iter().map(|v| v.kind).collect()
        }
    }

    #[test]
    fn siblings_kept_and_resolved_pass_including_unknown_outcomes() {
        let mut b = Builder::new();
        b.blind(1, EventType::Ok);
        b.blind(2, EventType::Ok);
        b.read(&[1, 2]);
        b.observed(&[1, 2], 3, EventType::Ok);
        b.blind(4, EventType::Info);
        b.read(&[3]);
        b.blind(5, EventType::Fail);
        // An observed write of unknown outcome may have superseded 3.
        b.observed(&[3, 4], 6, EventType::Info);
        b.final_read(&[6]);
        assert!(check(&b.h.h).is_ok(), "{}", check(&b.h.h));
    }

    #[test]
    fn a_lost_acknowledged_sibling_fails() {
        let mut b = Builder::new();
        b.blind(1, EventType::Ok);
        b.blind(2, EventType::Ok);
        b.final_read(&[2]);
        assert_eq!(b.kinds(), vec![ViolationKind::Lost]);
    }

    #[test]
    fn a_value_superseded_by_an_acknowledged_write_must_not_come_back() {
        let mut b = Builder::new();
        b.blind(1, EventType::Ok);
        b.observed(&[1], 2, EventType::Ok);
        b.final_read(&[1, 2]);
        assert_eq!(b.kinds(), vec![ViolationKind::Unexpected]);
    }

    #[test]
    fn values_never_written_or_only_by_failed_writes_are_unexpected() {
        let mut b = Builder::new();
        b.blind(1, EventType::Fail);
        b.read(&[1, 9]);
        b.final_read(&[]);
        assert_eq!(
            b.kinds(),
            vec![ViolationKind::Unexpected, ViolationKind::Unexpected]
        );
    }

    #[test]
    fn a_stale_read_in_the_main_phase_and_an_unverified_key_fail() {
        let mut b = Builder::new();
        b.blind(1, EventType::Ok);
        b.read(&[]);
        assert_eq!(
            b.kinds(),
            vec![ViolationKind::Stale, ViolationKind::Unverified]
        );
    }

    #[test]
    fn a_failed_observed_write_covers_nothing() {
        let mut b = Builder::new();
        b.blind(1, EventType::Ok);
        b.observed(&[1], 2, EventType::Fail);
        b.final_read(&[]);
        assert_eq!(b.kinds(), vec![ViolationKind::Lost]);
    }
}
