//! The add-wins set checker (workload S, [`crate::merged`]).
//!
//! ## The workload it judges
//!
//! Every add adds an element no other add adds (so an element names its add). A process
//! removes only an element it added, after that add completed `ok`. Reads return the members.
//!
//! ## The rule
//!
//! Indices order events in real time. For each key `K` and element `e`, let `add(e)` be its add
//! and `removes(e)` its removes (at most one in this workload, but any number is judged).
//!
//! 1. **Origin** (else [`ViolationKind::Unexpected`]): a read that returns `e` completed after
//!    `add(e)` was invoked, and `add(e)` did not `fail`.
//! 2. **Removed stays removed** (else [`ViolationKind::Unexpected`]): a read invoked after a
//!    remove of `e` completed `ok` does not return `e`. The remove's read at R saw `add(e)`
//!    (acknowledged at W before the remove began, R + W > N), so its delta carries the add's
//!    dot, and an add is never repeated: nothing can bring `e` back. A final read is such a read.
//! 3. **Acknowledged adds are seen** (else [`ViolationKind::Stale`] for reads in the main phase,
//!    [`ViolationKind::Lost`] for final reads): a read invoked after `add(e)` completed `ok`
//!    returns `e`, unless some remove of `e` that did not `fail` was invoked before the read
//!    completed (it may have taken effect).
//! 4. A key with any add that did not `fail` and no `ok` final read is
//!    [`ViolationKind::Unverified`].
//!
//! Rules 2 and 3 are what add-wins observed-remove semantics and intersecting quorums give;
//! that all replicas end identical is [`super::convergence::check_states`]'s business.

use super::{CheckerResult, Violation, ViolationKind};
use crate::history::EventType;
use crate::merged::{MergedFunction, MergedHistory, MergedOp, ReadResult};
use std::collections::BTreeMap;

pub const NAME: &str = "add-wins set";

#[derive(Default)]
struct Element<'a> {
    add: Option<&'a MergedOp>,
    removes: Vec<&'a MergedOp>,
}

/// Checks `history` against the rule in the module documentation.
///
/// # Panics
/// If the history breaks the workload's contract (an element added twice).
pub fn check(history: &MergedHistory) -> CheckerResult {
    let ops = history.ops();
    let final_start = history.final_phase_start().unwrap_or(usize::MAX);
    let mut keys: BTreeMap<u64, (BTreeMap<u64, Element>, Vec<&MergedOp>)> = BTreeMap::new();
    for op in &ops {
        let (elements, reads) = keys.entry(op.key).or_default();
        match op.f {
            MergedFunction::SetAdd { element } => {
                let e = elements.entry(element).or_default();
                assert!(e.add.is_none(), "element {element} added twice");
                e.add = Some(op);
            }
            MergedFunction::SetRemove { element } => {
                elements.entry(element).or_default().removes.push(op);
            }
            MergedFunction::SetRead => reads.push(op),
            other => panic!("{other} in a set history"),
        }
    }
    let mut violations = Vec::new();
    for (&key, (elements, reads)) in &keys {
        let mut verified = false;
        for read in reads.iter().filter(|r| r.outcome == EventType::Ok) {
            let is_final = read.invoke_index >= final_start;
            verified |= is_final;
            let complete = read.complete_index.expect("an ok read completed");
            let Some(ReadResult::Members(members)) = &read.result else {
                panic!("an ok set read has members")
            };
            let mut report = |kind, detail: String| {
                violations.push(Violation {
                    kind,
                    key,
                    index: Some(complete),
                    detail,
                })
            };
            for &m in members {
                let origin = elements.get(&m).and_then(|e| e.add);
                let plausible = origin
                    .is_some_and(|a| a.outcome != EventType::Fail && a.invoke_index < complete);
                if !plausible {
                    report(
                        ViolationKind::Unexpected,
                        format!(
                            "read #{complete} returned element {m}, which no add that could have happened by then added"
                        ),
                    );
                    continue;
                }
                let removed_before = elements[&m].removes.iter().find(|r| {
                    r.outcome == EventType::Ok
                        && r.complete_index.is_some_and(|c| c < read.invoke_index)
                });
                if let Some(r) = removed_before {
                    report(
                        ViolationKind::Unexpected,
                        format!(
                            "read #{complete} returned element {m}, removed by #{} (ok) before the read began",
                            r.complete_index.expect("ok")
                        ),
                    );
                }
            }
            for (&e, element) in elements {
                let Some(add) = element.add else { continue };
                let acknowledged_before = add.outcome == EventType::Ok
                    && add.complete_index.is_some_and(|c| c < read.invoke_index);
                let maybe_removed = element
                    .removes
                    .iter()
                    .any(|r| r.outcome != EventType::Fail && r.invoke_index < complete);
                if acknowledged_before && !maybe_removed && !members.contains(&e) {
                    let kind = if is_final {
                        ViolationKind::Lost
                    } else {
                        ViolationKind::Stale
                    };
                    report(
                        kind,
                        format!(
                            "read #{complete} misses element {e}, whose add #{} was acknowledged before the read began and never removed",
                            add.complete_index.expect("ok")
                        ),
                    );
                }
            }
        }
        let any_add = elements
            .values()
            .any(|e| e.add.is_some_and(|a| a.outcome != EventType::Fail));
        if any_add && !verified {
            violations.push(Violation::unverified(key, "lost adds"));
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
    use std::collections::BTreeSet;

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
            let result =
                read.map(|m| ReadResult::Members(m.iter().copied().collect::<BTreeSet<_>>()));
            self.h.op(p, f, kind, result);
        }

        fn add(&mut self, element: u64, kind: EventType) {
            self.op(1, MergedFunction::SetAdd { element }, kind, None);
        }

        fn remove(&mut self, element: u64, kind: EventType) {
            self.op(1, MergedFunction::SetRemove { element }, kind, None);
        }

        fn read(&mut self, members: &[u64]) {
            self.op(2, MergedFunction::SetRead, EventType::Ok, Some(members));
        }

        fn final_read(&mut self, members: &[u64]) {
            self.h.final_phase();
            self.read(members);
        }

        fn kinds(&self) -> Vec<ViolationKind> {
            check(&self.h.h).violations.iter().map(|v| v.kind).collect()
        }
    }

    #[test]
    fn a_correct_history_passes_including_info_operations() {
        let mut b = Builder::new();
        b.add(1, EventType::Ok);
        b.add(2, EventType::Info);
        b.read(&[1]);
        b.add(3, EventType::Fail);
        b.remove(1, EventType::Info);
        b.read(&[2]);
        b.add(4, EventType::Ok);
        b.remove(4, EventType::Ok);
        b.final_read(&[2]);
        b.final_read(&[]);
        assert!(check(&b.h.h).is_ok(), "{}", check(&b.h.h));
    }

    #[test]
    fn a_lost_acknowledged_add_fails() {
        let mut b = Builder::new();
        b.add(1, EventType::Ok);
        b.add(2, EventType::Ok);
        b.final_read(&[2]);
        assert_eq!(b.kinds(), vec![ViolationKind::Lost]);
    }

    #[test]
    fn a_resurrected_remove_fails() {
        let mut b = Builder::new();
        b.add(1, EventType::Ok);
        b.remove(1, EventType::Ok);
        b.final_read(&[1]);
        assert_eq!(b.kinds(), vec![ViolationKind::Unexpected]);
    }

    #[test]
    fn elements_never_added_or_only_by_failed_adds_are_unexpected() {
        let mut b = Builder::new();
        b.add(1, EventType::Fail);
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
        b.add(1, EventType::Ok);
        b.read(&[]);
        assert_eq!(
            b.kinds(),
            vec![ViolationKind::Stale, ViolationKind::Unverified]
        );
    }
}
