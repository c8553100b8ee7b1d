//! The multi-leader cart checker (workload MC, [`crate::merged`]): an add-wins set whose regions
//! accept writes on their own and exchange them asynchronously.
//!
//! [`super::set`] does not fit: it relies on intersecting read and write quorums (every read
//! sees every acknowledged add) and on one add per element. Here a region's reads and writes are
//! linearizable within the region only, other regions' writes arrive later, and an element may
//! be added again (a re-add) while another region removes it.
//!
//! ## What a client can know about who observed whom
//!
//! Indices order events in real time. A remove removes the dots of the element that its region
//! had applied when it was applied (observed-remove); an add supersedes the dots of the element
//! its region had applied. For a remove `r` and an add `a` of the same element:
//!
//! - `r` **certainly observed** `a` when `a` completed `ok` before `r` was invoked, through a
//!   node of the same region: the region's log holds `a` before `r`.
//! - `r` is **certainly blind** to `a` when `r` completed `ok` and either (i) it completed before
//!   `a` was invoked, or (ii) `a` went through another region than `r`, and `a`'s region was
//!   *isolated* (every link from its nodes to other regions' nodes blocked) from before `a` was
//!   invoked until after `r` completed: nothing that knew of `a` could leave `a`'s region before
//!   `r` was applied (a region ships only its own log; another region's add or remove that
//!   observed `a` would have to be written outside `a`'s region first).
//!
//! Blindness is causal: a remove that observed anything that had observed `a` is not blind to
//! `a` by either criterion. So `a`'s dot, or the dot of a later add that superseded it, survives
//! every remove that is blind to `a`.
//!
//! ## The rule
//!
//! For every key and element `e`, and every read that completed `ok`:
//!
//! 1. **Origin** (else [`ViolationKind::Unexpected`]): every element read has an add that did
//!    not `fail` and was invoked before the read completed.
//! 2. **Observed removes are honoured** (else [`ViolationKind::Unexpected`]): a final read, or a
//!    read through the remove's region invoked after it completed, does not return `e` when some
//!    `ok` remove of `e` certainly observed every add of `e` that did not `fail`.
//! 3. **No acknowledged add lost, and a concurrent re-add wins** (else [`ViolationKind::Lost`]
//!    for final reads, [`ViolationKind::Stale`] for others): a final read, or a read through
//!    `a`'s region, invoked after an `ok` add `a` of `e` completed returns `e` unless some remove
//!    of `e` that did not `fail`, was invoked before the read completed, and is not certainly
//!    blind to `a` may have removed it. A re-add in an isolated region is the case (ii) decides:
//!    it must survive the removes other regions made meanwhile.
//! 4. A key with an add that did not `fail` and no `ok` final read is
//!    [`ViolationKind::Unverified`].
//!
//! That every replica of every region holds the same record is
//! [`super::regional::check_convergence`]'s business.

use super::{CheckerResult, Violation, ViolationKind};
use crate::history::EventType;
use crate::merged::{MergedFunction, MergedHistory, MergedOp, ReadResult};
use std::collections::BTreeMap;
use triarch_core::{Instant, NodeId};

pub const NAME: &str = "multi-leader cart";

/// A region cut off from every other: no link from its nodes to another region's nodes carried
/// anything from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isolation {
    pub region: u32,
    pub from: Instant,
    pub to: Instant,
}

#[derive(Default)]
struct Element<'a> {
    adds: Vec<&'a MergedOp>,
    removes: Vec<&'a MergedOp>,
}

/// Per key: its elements and its reads.
type ByKey<'a> = BTreeMap<u64, (BTreeMap<u64, Element<'a>>, Vec<&'a MergedOp>)>;

struct Judge<'a, R> {
    history: &'a MergedHistory,
    region_of: R,
    isolated: &'a [Isolation],
}

impl<R: Fn(NodeId) -> u32> Judge<'_, R> {
    fn region(&self, op: &MergedOp) -> u32 {
        (self.region_of)(op.node)
    }

    fn time(&self, index: usize) -> Instant {
        self.history.events()[index].time
    }

    /// `r` certainly observed `a` (see the module documentation).
    fn observed(&self, r: &MergedOp, a: &MergedOp) -> bool {
        a.outcome == EventType::Ok
            && self.region(a) == self.region(r)
            && a.complete_index.is_some_and(|c| c < r.invoke_index)
    }

    /// `r` is certainly blind to `a`; `Some(true)` when only `a`'s region's isolation says so.
    fn blind(&self, r: &MergedOp, a: &MergedOp) -> Option<bool> {
        let completed = r.complete_index.filter(|_| r.outcome == EventType::Ok)?;
        if completed < a.invoke_index {
            return Some(false);
        }
        let (invoked, done) = (self.time(a.invoke_index), self.time(completed));
        let region = self.region(a);
        let isolated = region != self.region(r)
            && self
                .isolated
                .iter()
                .any(|i| i.region == region && i.from < invoked && done < i.to);
        isolated.then_some(true)
    }
}

/// Checks `history` against the rule in the module documentation. `region_of` names a node's
/// region; `isolated` lists when each region was cut off from all others.
///
/// # Panics
/// If the history holds operations other than a cart's.
pub fn check(
    history: &MergedHistory,
    region_of: impl Fn(NodeId) -> u32,
    isolated: &[Isolation],
) -> CheckerResult {
    judge(history, region_of, isolated).0
}

/// How many elements rule 3 required in a final read only because a re-add's region was
/// isolated while another region removed the element (case (ii)): how often the run really
/// tested that a concurrent re-add wins.
pub fn concurrent_readds_judged(
    history: &MergedHistory,
    region_of: impl Fn(NodeId) -> u32,
    isolated: &[Isolation],
) -> u64 {
    judge(history, region_of, isolated).1
}

fn judge(
    history: &MergedHistory,
    region_of: impl Fn(NodeId) -> u32,
    isolated: &[Isolation],
) -> (CheckerResult, u64) {
    let ops = history.ops();
    let final_start = history.final_phase_start().unwrap_or(usize::MAX);
    let mut keys: ByKey = BTreeMap::new();
    for op in &ops {
        let (elements, reads) = keys.entry(op.key).or_default();
        match op.f {
            MergedFunction::SetAdd { element } => {
                elements.entry(element).or_default().adds.push(op)
            }
            MergedFunction::SetRemove { element } => {
                elements.entry(element).or_default().removes.push(op)
            }
            MergedFunction::SetRead => reads.push(op),
            other => panic!("{other} in a cart history"),
        }
    }
    let judge = Judge {
        history,
        region_of,
        isolated,
    };
    let mut violations = Vec::new();
    let mut readds = 0;
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
                let element = elements.get(&m);
                let adds = element.map_or(&[][..], |e| e.adds.as_slice());
                let possible = |a: &&&MergedOp| a.outcome != EventType::Fail;
                if !adds
                    .iter()
                    .filter(possible)
                    .any(|a| a.invoke_index < complete)
                {
                    report(
                        ViolationKind::Unexpected,
                        format!(
                            "read #{complete} returned element {m}, which no add that could have happened by then added"
                        ),
                    );
                    continue;
                }
                let honoured = element.into_iter().flat_map(|e| &e.removes).find(|r| {
                    r.outcome == EventType::Ok
                        && r.complete_index.is_some_and(|c| c < read.invoke_index)
                        && (is_final || judge.region(r) == judge.region(read))
                        && adds.iter().filter(possible).all(|a| judge.observed(r, a))
                });
                if let Some(r) = honoured {
                    report(
                        ViolationKind::Unexpected,
                        format!(
                            "read #{complete} returned element {m}, removed by #{} (ok), which observed every add of it, before the read began",
                            r.complete_index.expect("ok")
                        ),
                    );
                }
            }
            for (&e, element) in elements {
                let mut readd = false;
                let kept = element.adds.iter().find(|a| {
                    let must_see = a.outcome == EventType::Ok
                        && a.complete_index.is_some_and(|c| c < read.invoke_index)
                        && (is_final || judge.region(a) == judge.region(read));
                    let mut via_isolation = false;
                    let survives = element
                        .removes
                        .iter()
                        .filter(|r| r.outcome != EventType::Fail && r.invoke_index < complete)
                        .all(|r| match judge.blind(r, a) {
                            Some(isolation) => {
                                via_isolation |= isolation;
                                true
                            }
                            None => false,
                        });
                    readd |= must_see && survives && via_isolation;
                    must_see && survives
                });
                if let Some(a) = kept {
                    readds += u64::from(is_final && readd);
                    if !members.contains(&e) {
                        let kind = if is_final {
                            ViolationKind::Lost
                        } else {
                            ViolationKind::Stale
                        };
                        report(
                            kind,
                            format!(
                                "read #{complete} misses element {e}, whose add #{} was acknowledged before the read began and which no remove that may have observed it targeted",
                                a.complete_index.expect("ok")
                            ),
                        );
                    }
                }
            }
        }
        let any_add = elements
            .values()
            .flat_map(|e| &e.adds)
            .any(|a| a.outcome != EventType::Fail);
        if any_add && !verified {
            violations.push(Violation::unverified(key, "lost adds"));
        }
    }
    let result = CheckerResult {
        checker: NAME,
        violations,
    };
    (result, readds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ProcessId;
    use std::collections::BTreeSet;

    /// Nodes 1 and 2 are in region 0, node 3 in region 1.
    fn region_of(node: NodeId) -> u32 {
        u32::from(node.0 == 3)
    }

    /// Builds histories; each call is one operation through `node`, invoked at the next
    /// millisecond and completed at the one after (or left open, to complete later).
    struct Builder {
        h: MergedHistory,
        t: u64,
        isolated: Vec<Isolation>,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                h: MergedHistory::new(),
                t: 0,
                isolated: Vec::new(),
            }
        }

        fn tick(&mut self) -> Instant {
            self.t += 1_000;
            Instant(self.t)
        }

        fn invoke(&mut self, p: u64, f: MergedFunction, node: u32) {
            let at = self.tick();
            self.h.invoke(ProcessId(p), f, 0, NodeId(node), at);
        }

        fn complete(&mut self, p: u64, kind: EventType, read: Option<&[u64]>) {
            let at = self.tick();
            let result =
                read.map(|m| ReadResult::Members(m.iter().copied().collect::<BTreeSet<_>>()));
            self.h.complete(ProcessId(p), kind, result, at, None);
        }

        fn add(&mut self, p: u64, element: u64, node: u32, kind: EventType) {
            self.invoke(p, MergedFunction::SetAdd { element }, node);
            self.complete(p, kind, None);
        }

        fn remove(&mut self, p: u64, element: u64, node: u32, kind: EventType) {
            self.invoke(p, MergedFunction::SetRemove { element }, node);
            self.complete(p, kind, None);
        }

        fn read(&mut self, node: u32, members: &[u64]) {
            self.invoke(9, MergedFunction::SetRead, node);
            self.complete(9, EventType::Ok, Some(members));
        }

        fn final_read(&mut self, members: &[u64]) {
            if self.h.final_phase_start().is_none() {
                self.h.mark_final_phase();
            }
            self.read(1, members);
        }

        /// Region 1 (node 3) is cut off from now until `check` (far in the future).
        fn isolate_region_1(&mut self) {
            let from = self.tick();
            self.isolated.push(Isolation {
                region: 1,
                from,
                to: Instant(u64::MAX),
            });
        }

        fn result(&self) -> CheckerResult {
            check(&self.h, region_of, &self.isolated)
        }

        fn kinds(&self) -> Vec<ViolationKind> {
            self.result().violations.iter().map(|v| v.kind).collect()
        }
    }

    #[test]
    fn a_correct_history_passes_including_reads_elsewhere_that_lag() {
        let mut b = Builder::new();
        b.add(1, 1, 1, EventType::Ok);
        b.read(3, &[]); // region 1 has not received it yet: fine
        b.read(2, &[1]);
        b.add(1, 2, 1, EventType::Info);
        b.remove(1, 1, 1, EventType::Ok);
        b.read(3, &[1, 2]); // the remove has not arrived there either
        b.add(2, 3, 3, EventType::Fail);
        b.final_read(&[2]);
        b.final_read(&[]); // the info add 2 may or may not have happened
        assert!(b.result().is_ok(), "{}", b.result());
        assert_eq!(concurrent_readds_judged(&b.h, region_of, &b.isolated), 0);
    }

    #[test]
    fn a_lost_acknowledged_add_and_a_stale_read_in_its_region_fail() {
        let mut b = Builder::new();
        b.add(1, 1, 3, EventType::Ok);
        b.read(3, &[]);
        b.final_read(&[]);
        assert_eq!(b.kinds(), vec![ViolationKind::Stale, ViolationKind::Lost]);
    }

    #[test]
    fn an_observed_remove_must_be_honoured() {
        let mut b = Builder::new();
        b.add(1, 1, 1, EventType::Ok);
        b.remove(1, 1, 2, EventType::Ok);
        b.read(1, &[1]);
        b.final_read(&[1]);
        assert_eq!(
            b.kinds(),
            vec![ViolationKind::Unexpected, ViolationKind::Unexpected]
        );
    }

    #[test]
    fn a_remove_in_another_region_may_miss_an_add_or_a_re_add() {
        // The remove went through region 1, which may not have had the add yet.
        let mut b = Builder::new();
        b.add(1, 1, 1, EventType::Ok);
        b.remove(2, 1, 3, EventType::Ok);
        b.final_read(&[1]);
        assert!(b.result().is_ok(), "{}", b.result());
        // A re-add after the remove began may have been observed by it, or not.
        let mut b = Builder::new();
        b.add(1, 1, 1, EventType::Ok);
        b.invoke(1, MergedFunction::SetRemove { element: 1 }, 1);
        b.add(2, 1, 3, EventType::Ok);
        b.complete(1, EventType::Ok, None);
        b.final_read(&[]);
        b.final_read(&[1]);
        assert!(b.result().is_ok(), "{}", b.result());
    }

    #[test]
    fn a_concurrent_re_add_in_an_isolated_region_must_win() {
        let mut b = Builder::new();
        b.add(1, 1, 1, EventType::Ok);
        b.isolate_region_1();
        b.invoke(1, MergedFunction::SetRemove { element: 1 }, 1);
        b.add(2, 1, 3, EventType::Ok); // re-added in region 1, cut off from region 0
        b.complete(1, EventType::Ok, None);
        b.final_read(&[]);
        assert_eq!(b.kinds(), vec![ViolationKind::Lost]);
        assert_eq!(concurrent_readds_judged(&b.h, region_of, &b.isolated), 1);
        let mut good = Builder::new();
        good.add(1, 1, 1, EventType::Ok);
        good.isolate_region_1();
        good.invoke(1, MergedFunction::SetRemove { element: 1 }, 1);
        good.add(2, 1, 3, EventType::Ok);
        good.complete(1, EventType::Ok, None);
        good.final_read(&[1]);
        assert!(good.result().is_ok(), "{}", good.result());
        // A remove that may have observed the re-add (same region, after it) may remove it.
        let mut later = Builder::new();
        later.add(1, 1, 1, EventType::Ok);
        later.isolate_region_1();
        later.invoke(1, MergedFunction::SetRemove { element: 1 }, 1);
        later.add(2, 1, 3, EventType::Ok);
        later.complete(1, EventType::Ok, None);
        later.remove(2, 1, 3, EventType::Info);
        later.final_read(&[]);
        assert!(later.result().is_ok(), "{}", later.result());
    }

    #[test]
    fn elements_never_added_and_unverified_keys_fail() {
        let mut b = Builder::new();
        b.add(1, 1, 1, EventType::Fail);
        b.read(1, &[1, 9]);
        assert_eq!(
            b.kinds(),
            vec![ViolationKind::Unexpected, ViolationKind::Unexpected]
        );
        let mut b = Builder::new();
        b.add(1, 1, 1, EventType::Info);
        assert_eq!(b.kinds(), vec![ViolationKind::Unverified]);
    }
}
