//! The checkers a run's history goes through.
//!
//! - [`triarch_sim::checker::single_writer`], the simulator's own checker, unchanged: no read
//!   returns a value never written or older than a write acknowledged before the read began, and
//!   the final reads (issued through every node after the final heal and settle) return at least
//!   the last acknowledged write of each key.
//! - [`convergence`]: the simulator's convergence idea, for real processes. The simulator reads
//!   each replica's record straight from its disk; a real node offers no such door, so here the
//!   final reads are issued at R=3 (every replica of the key must answer, and read repair then
//!   brings the stale ones up to date) through every node, and every node must have answered
//!   and all must agree.

use crate::Workload;
use std::collections::{BTreeMap, BTreeSet};
use triarch_sim::checker::linearizable::{RegisterCall, RegisterOp, RegisterResult};
use triarch_sim::checker::registers;
use triarch_sim::checker::single_writer;
use triarch_sim::{CheckerResult, EventType, Function, History, Violation, ViolationKind};

pub const CONVERGENCE: &str = "convergence (final reads at R=3 through every node)";

/// Every checker's verdict on `history`, for a run of `workload` on `nodes` nodes and `keys`
/// registers.
pub fn check_all(
    history: &History,
    workload: Workload,
    nodes: u32,
    keys: u64,
) -> Vec<CheckerResult> {
    let semantics = match workload {
        Workload::SingleWriter => single_writer::check(history),
        Workload::Registers => linearizable_registers(history),
    };
    vec![semantics, convergence(history, nodes, keys)]
}

pub const LINEARIZABLE: &str = registers::NAME;

/// Every key's reads and writes (final reads included) must be linearizable: checked by the
/// simulator's WGL search, each key on its own. An undecided search is a violation.
pub fn linearizable_registers(history: &History) -> CheckerResult {
    let mut per_key: BTreeMap<u64, Vec<RegisterOp>> = BTreeMap::new();
    for op in history.ops() {
        let call = match (op.f, op.value) {
            (Function::Write, Some(v)) => RegisterCall::Write(v),
            (Function::Write, None) => continue, // refused when the history was parsed
            (Function::Read, _) => RegisterCall::Read,
        };
        let invoked = op.invoke_time.as_micros();
        let register_op = match (op.outcome, op.complete_time) {
            (EventType::Ok, Some(done)) => {
                let result = match call {
                    RegisterCall::Read => RegisterResult::Read(op.value),
                    _ => RegisterResult::Written,
                };
                RegisterOp::ok(op.process.0, call, invoked, done.as_micros(), result)
            }
            (EventType::Fail, _) => RegisterOp::fail(op.process.0, call, invoked),
            _ => RegisterOp::info(op.process.0, call, invoked),
        };
        per_key.entry(op.key).or_default().push(register_op);
    }
    registers::check_keys(per_key)
}

/// See the module documentation.
pub fn convergence(history: &History, nodes: u32, keys: u64) -> CheckerResult {
    let mut violations = Vec::new();
    let Some(start) = history.final_phase_start() else {
        violations.push(Violation {
            kind: ViolationKind::Unverified,
            key: 0,
            index: None,
            detail: "the history has no final reads".into(),
        });
        return CheckerResult {
            checker: CONVERGENCE,
            violations,
        };
    };
    // The last successful final read of each key through each node.
    let mut answers: BTreeMap<u64, BTreeMap<u32, Option<u64>>> = BTreeMap::new();
    for op in history.ops() {
        if op.invoke_index >= start && op.f == Function::Read && op.outcome == EventType::Ok {
            answers
                .entry(op.key)
                .or_default()
                .insert(op.node.0, op.value);
        }
    }
    for key in 0..keys {
        let got = answers.remove(&key).unwrap_or_default();
        let missing: Vec<String> = (1..=nodes)
            .filter(|n| !got.contains_key(n))
            .map(|n| format!("n{n}"))
            .collect();
        if !missing.is_empty() {
            violations.push(Violation {
                kind: ViolationKind::Unverified,
                key,
                index: None,
                detail: format!("no final read succeeded through {}", missing.join(" ")),
            });
        }
        let distinct: BTreeSet<Option<u64>> = got.values().copied().collect();
        if distinct.len() > 1 {
            let held: Vec<String> = got
                .iter()
                .map(|(n, v)| match v {
                    Some(v) => format!("n{n}: {v}"),
                    None => format!("n{n}: nil"),
                })
                .collect();
            violations.push(Violation {
                kind: ViolationKind::Diverged,
                key,
                index: None,
                detail: format!("nodes disagree after the final heal: {}", held.join(", ")),
            });
        }
    }
    CheckerResult {
        checker: CONVERGENCE,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triarch_core::{Instant, NodeId};
    use triarch_sim::ProcessId;

    /// A history whose final reads through nodes 1..=3 return `values` (None in the outer
    /// option: that node's read failed).
    fn finals(values: [Option<Option<u64>>; 3]) -> History {
        let mut h = History::new();
        let mut t = 0;
        let mut tick = || {
            t += 1;
            Instant(t)
        };
        h.invoke(ProcessId(0), Function::Write, 0, Some(1), NodeId(1), tick());
        h.ok(ProcessId(0), None, tick());
        h.mark_final_phase();
        for (i, v) in values.into_iter().enumerate() {
            let p = ProcessId(10 + i as u64);
            h.invoke(p, Function::Read, 0, None, NodeId(i as u32 + 1), tick());
            match v {
                Some(v) => h.ok(p, v, tick()),
                None => h.complete(p, EventType::Fail, None, tick(), Some("connect".into())),
            };
        }
        h
    }

    fn kinds(r: &CheckerResult) -> Vec<ViolationKind> {
        r.violations.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn agreeing_nodes_converge() {
        let r = convergence(&finals([Some(Some(1)); 3]), 3, 1);
        assert!(r.is_ok(), "{r}");
        assert!(
            check_all(&finals([Some(Some(1)); 3]), Workload::SingleWriter, 3, 1)
                .iter()
                .all(|c| c.is_ok())
        );
    }

    #[test]
    fn disagreeing_nodes_diverge_and_the_single_writer_checker_sees_the_loss() {
        let h = finals([Some(Some(1)), Some(None), Some(Some(1))]);
        let r = convergence(&h, 3, 1);
        assert_eq!(kinds(&r), vec![ViolationKind::Diverged]);
        assert!(r.violations[0].detail.contains("n2: nil"), "{r}");
        let sw = single_writer::check(&h);
        assert_eq!(kinds(&sw), vec![ViolationKind::Lost]);
    }

    #[test]
    fn a_node_without_a_final_answer_leaves_convergence_unverified() {
        let r = convergence(&finals([Some(Some(1)), None, Some(Some(1))]), 3, 1);
        assert_eq!(kinds(&r), vec![ViolationKind::Unverified]);
        assert!(r.violations[0].detail.contains("through n2"), "{r}");
        // A key nobody wrote or read is unverified too: every key is read through every node.
        let r = convergence(&finals([Some(Some(1)); 3]), 3, 2);
        assert_eq!(kinds(&r), vec![ViolationKind::Unverified]);
        assert_eq!(r.violations[0].key, 1);
    }

    #[test]
    fn no_final_phase_is_not_a_pass() {
        let mut h = History::new();
        h.invoke(ProcessId(0), Function::Read, 0, None, NodeId(1), Instant(1));
        h.ok(ProcessId(0), None, Instant(2));
        assert!(!convergence(&h, 3, 1).is_ok());
    }

    /// Two writers of one key; a reader that sees the first value after the second write was
    /// acknowledged has read stale data, which the single-writer checker cannot judge (two
    /// writers) but the linearizability checker must.
    #[test]
    fn a_stale_read_of_a_register_is_not_linearizable() {
        let history = |stale: bool| {
            let mut h = History::new();
            let mut t = 0;
            let mut tick = || {
                t += 1;
                Instant(t)
            };
            h.invoke(ProcessId(0), Function::Write, 0, Some(1), NodeId(1), tick());
            h.ok(ProcessId(0), None, tick());
            h.invoke(ProcessId(1), Function::Write, 0, Some(2), NodeId(2), tick());
            h.ok(ProcessId(1), None, tick());
            h.invoke(ProcessId(2), Function::Read, 0, None, NodeId(3), tick());
            h.ok(ProcessId(2), Some(if stale { 1 } else { 2 }), tick());
            h
        };
        assert!(linearizable_registers(&history(false)).is_ok());
        let r = linearizable_registers(&history(true));
        assert_eq!(kinds(&r), vec![ViolationKind::NotLinearizable], "{r}");
    }
}
