//! Workload L's checker: the primary-backup registers' history, key by key, through
//! [`super::linearizable`]. An undecided key is a violation (a violation was not ruled out).

use super::linearizable::{self, Limits, RegisterCall, RegisterOp, RegisterResult, Verdict};
use super::{CheckerResult, Violation, ViolationKind};
use crate::history::EventType;
use crate::merged::{MergedFunction, MergedHistory, ReadResult};
use std::collections::BTreeMap;

pub const NAME: &str = "linearizable registers";

/// The register operations of `history`, per key, in the linearizability checker's terms.
/// Times are the virtual microseconds of the invocation and completion events.
pub fn register_ops(history: &MergedHistory) -> BTreeMap<u64, Vec<RegisterOp>> {
    let events = history.events();
    let mut out: BTreeMap<u64, Vec<RegisterOp>> = BTreeMap::new();
    for op in history.ops() {
        let call = match op.f {
            MergedFunction::RegisterRead => RegisterCall::Read,
            MergedFunction::RegisterWrite { value } => RegisterCall::Write(value),
            MergedFunction::RegisterCas { expected, new } => RegisterCall::Cas {
                expected: Some(expected),
                new,
            },
            other => panic!("{other} is not a register operation"),
        };
        let invoked = events[op.invoke_index].time.as_micros();
        let process = op.process.0;
        let register_op = match op.outcome {
            EventType::Ok => {
                let completed = events[op.complete_index.expect("ok completed")]
                    .time
                    .as_micros();
                let result = match (call, &op.result) {
                    (RegisterCall::Read, Some(ReadResult::Register(v))) => RegisterResult::Read(*v),
                    (RegisterCall::Write(_), None) => RegisterResult::Written,
                    (RegisterCall::Cas { .. }, Some(ReadResult::Swapped(b))) => {
                        RegisterResult::Cas(*b)
                    }
                    (call, result) => panic!("{call:?} completed with {result:?}"),
                };
                RegisterOp::ok(process, call, invoked, completed, result)
            }
            EventType::Fail => RegisterOp::fail(process, call, invoked),
            EventType::Info | EventType::Invoke => RegisterOp::info(process, call, invoked),
        };
        out.entry(op.key).or_default().push(register_op);
    }
    out
}

/// Checks every key; each key that is not linearizable (or undecided) is one violation.
pub fn check(history: &MergedHistory) -> CheckerResult {
    check_keys(register_ops(history))
}

/// Checks each key's operations on their own (however they were recorded: the fault suite
/// adapts its own histories); a key that is not linearizable, or undecided, is one violation.
pub fn check_keys(per_key: BTreeMap<u64, Vec<RegisterOp>>) -> CheckerResult {
    let mut violations = Vec::new();
    for (key, ops) in per_key {
        let verdict = linearizable::check(&ops, &Limits::default());
        if let Verdict::Linearizable { .. } = verdict {
            continue;
        }
        violations.push(Violation {
            kind: ViolationKind::NotLinearizable,
            key,
            index: None,
            detail: verdict.to_string(),
        });
    }
    CheckerResult {
        checker: NAME,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ProcessId;
    use triarch_core::{Instant, NodeId};

    fn history(stale: bool) -> MergedHistory {
        let mut h = MergedHistory::new();
        let (a, b) = (ProcessId(1), ProcessId(2));
        let t = |s: u64| Instant(s * 1_000);
        h.invoke(
            a,
            MergedFunction::RegisterWrite { value: 1 },
            0,
            NodeId(1),
            t(1),
        );
        h.complete(a, EventType::Ok, None, t(2), None);
        h.invoke(
            a,
            MergedFunction::RegisterCas {
                expected: 1,
                new: 2,
            },
            0,
            NodeId(2),
            t(3),
        );
        h.complete(
            a,
            EventType::Ok,
            Some(ReadResult::Swapped(true)),
            t(4),
            None,
        );
        h.invoke(b, MergedFunction::RegisterRead, 0, NodeId(3), t(5));
        let read = if stale { 1 } else { 2 };
        h.complete(
            b,
            EventType::Ok,
            Some(ReadResult::Register(Some(read))),
            t(6),
            None,
        );
        h
    }

    #[test]
    fn a_linearizable_history_passes_and_a_stale_read_fails() {
        assert!(check(&history(false)).is_ok());
        let result = check(&history(true));
        assert_eq!(result.violations.len(), 1, "{result}");
        assert_eq!(result.violations[0].kind, ViolationKind::NotLinearizable);
    }
}
