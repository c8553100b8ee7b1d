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
use crate::history::{Event, F, Kind, parse_node};
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
        // Carts need the events' members: see [`cart_all`].
        Workload::Cart => CheckerResult {
            checker: CART,
            violations: vec![Violation {
                kind: ViolationKind::Unverified,
                key: 0,
                index: None,
                detail: "a cart history is checked by check::cart_all".into(),
            }],
        },
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

pub const CART: &str = "cart (acknowledged adds present, present elements added)";
pub const CART_CONVERGENCE: &str = "cart convergence (SMEMBERS through every node agree)";

/// One cart operation of the history: its invocation's index and the completion, if any.
struct CartOp<'a> {
    invoke: &'a Event,
    complete: Option<&'a Event>,
}

impl CartOp<'_> {
    fn kind(&self) -> Kind {
        self.complete.map_or(Kind::Info, |c| c.kind)
    }
}

/// The checkers of `--workload cart`, on the run's events (`history.jsonl`): [`cart`] and
/// [`cart_convergence`].
pub fn cart_all(events: &[Event], nodes: u32, keys: u64) -> Vec<CheckerResult> {
    vec![cart(events), cart_convergence(events, nodes, keys)]
}

fn cart_ops(events: &[Event]) -> Vec<CartOp<'_>> {
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut ops: Vec<CartOp<'_>> = Vec::new();
    for e in events {
        if e.kind == Kind::Invoke {
            open.insert(e.process, ops.len());
            ops.push(CartOp {
                invoke: e,
                complete: None,
            });
        } else if let Some(i) = open.remove(&e.process) {
            ops[i].complete = Some(e);
        }
    }
    ops
}

/// The last `ok` final SMEMBERS of each cart through each node.
fn final_members(events: &[Event]) -> BTreeMap<u64, BTreeMap<u32, &Vec<u64>>> {
    let mut finals: BTreeMap<u64, BTreeMap<u32, &Vec<u64>>> = BTreeMap::new();
    for op in cart_ops(events) {
        if let Some(c) = op.complete
            && c.is_final
            && c.f == F::Read
            && c.kind == Kind::Ok
            && let (Some(members), Some(node)) = (&c.members, parse_node(&c.node))
        {
            finals.entry(c.key).or_default().insert(node, members);
        }
    }
    finals
}

/// On the final SMEMBERS of every node (after the final heal, once all agree or the deadline
/// passed):
///
/// - every element of an `ok` SADD is present, unless an SREM of it (by the same writer: the
///   elements are unique and only their writer removes them) that did not `fail` was invoked
///   after the add completed, and so may have been applied after it ([`ViolationKind::Lost`]);
/// - every element present was added by an SADD of that cart that did not `fail`
///   ([`ViolationKind::Unexpected`]).
pub fn cart(events: &[Event]) -> CheckerResult {
    let ops = cart_ops(events);
    // (key, element) -> the times (invocation) of its removes that did not fail.
    let mut removes: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
    let mut added: BTreeSet<(u64, u64)> = BTreeSet::new();
    for op in &ops {
        let Some(v) = op.invoke.value else { continue };
        match (op.invoke.f, op.kind()) {
            (F::Remove, Kind::Ok | Kind::Info) => removes
                .entry((op.invoke.key, v))
                .or_default()
                .push(op.invoke.time),
            (F::Add, Kind::Ok | Kind::Info) => {
                added.insert((op.invoke.key, v));
            }
            _ => {}
        }
    }
    let finals = final_members(events);
    let mut violations = Vec::new();
    for op in &ops {
        let (Some(c), Some(v)) = (op.complete, op.invoke.value) else {
            continue;
        };
        if op.invoke.f != F::Add || c.kind != Kind::Ok {
            continue;
        }
        let key = op.invoke.key;
        let excused = removes
            .get(&(key, v))
            .is_some_and(|times| times.iter().any(|&t| t > c.time));
        if excused {
            continue;
        }
        let missing: Vec<String> = finals
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|(_, m)| m.binary_search(&v).is_err())
            .map(|(n, _)| format!("n{n}"))
            .collect();
        if !missing.is_empty() {
            violations.push(Violation {
                kind: ViolationKind::Lost,
                key,
                index: Some(c.index),
                detail: format!(
                    "element {v}, added by p{} through {} (acknowledged at event {}) and never removed, is missing from the final SMEMBERS through {}",
                    op.invoke.process,
                    op.invoke.node,
                    c.index,
                    missing.join(" ")
                ),
            });
        }
    }
    for (key, by_node) in &finals {
        let mut reported = BTreeSet::new();
        for (node, members) in by_node {
            for &v in members.iter() {
                if !added.contains(&(*key, v)) && reported.insert(v) {
                    violations.push(Violation {
                        kind: ViolationKind::Unexpected,
                        key: *key,
                        index: None,
                        detail: format!(
                            "element {v} in the final SMEMBERS through n{node} was never added"
                        ),
                    });
                }
            }
        }
    }
    CheckerResult {
        checker: CART,
        violations,
    }
}

/// Every cart's final SMEMBERS succeeded through every node, and all returned the same members.
pub fn cart_convergence(events: &[Event], nodes: u32, keys: u64) -> CheckerResult {
    let mut finals = final_members(events);
    let mut violations = Vec::new();
    for key in 0..keys {
        let got = finals.remove(&key).unwrap_or_default();
        let missing: Vec<String> = (1..=nodes)
            .filter(|n| !got.contains_key(n))
            .map(|n| format!("n{n}"))
            .collect();
        if !missing.is_empty() {
            violations.push(Violation {
                kind: ViolationKind::Unverified,
                key,
                index: None,
                detail: format!("no final SMEMBERS succeeded through {}", missing.join(" ")),
            });
        }
        let distinct: BTreeSet<&Vec<u64>> = got.values().copied().collect();
        if distinct.len() > 1 {
            let union: BTreeSet<u64> = distinct.iter().flat_map(|m| m.iter().copied()).collect();
            let held: Vec<String> = got
                .iter()
                .map(|(n, m)| {
                    let lacks: Vec<String> = union
                        .iter()
                        .filter(|v| m.binary_search(v).is_err())
                        .take(5)
                        .map(|v| v.to_string())
                        .collect();
                    format!("n{n}: {} members, lacks [{}]", m.len(), lacks.join(" "))
                })
                .collect();
            violations.push(Violation {
                kind: ViolationKind::Diverged,
                key,
                index: None,
                detail: format!(
                    "nodes disagree at the convergence deadline: {}",
                    held.join("; ")
                ),
            });
        }
    }
    CheckerResult {
        checker: CART_CONVERGENCE,
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

    fn cart_event(kind: Kind, process: u64, f: F, value: Option<u64>, time: u64) -> Event {
        Event {
            index: 0,
            kind,
            process,
            f,
            key: 0,
            value,
            time,
            node: "n1".into(),
            error: None,
            is_final: false,
            members: None,
        }
    }

    /// A cart history: p0 adds 1 and 2 (both acknowledged), p0 removes 2 (unknown outcome),
    /// p1 adds 3 (unknown); then every node's final SMEMBERS returns `finals[node - 1]`.
    fn cart_history(finals: [&[u64]; 3]) -> Vec<Event> {
        let mut events = vec![
            cart_event(Kind::Invoke, 0, F::Add, Some(1), 1),
            cart_event(Kind::Ok, 0, F::Add, Some(1), 2),
            cart_event(Kind::Invoke, 0, F::Add, Some(2), 3),
            cart_event(Kind::Ok, 0, F::Add, Some(2), 4),
            cart_event(Kind::Invoke, 0, F::Remove, Some(2), 5),
            cart_event(Kind::Info, 0, F::Remove, Some(2), 6),
            cart_event(Kind::Invoke, 1, F::Add, Some(3), 7),
            cart_event(Kind::Info, 1, F::Add, Some(3), 8),
        ];
        for (i, members) in finals.into_iter().enumerate() {
            let node = format!("n{}", i + 1);
            let mut invoke = cart_event(Kind::Invoke, 10 + i as u64, F::Read, None, 20);
            invoke.node = node.clone();
            invoke.is_final = true;
            let mut ok = invoke.clone();
            ok.kind = Kind::Ok;
            ok.time = 21;
            ok.members = Some(members.to_vec());
            events.push(invoke);
            events.push(ok);
        }
        for (i, e) in events.iter_mut().enumerate() {
            e.index = i;
        }
        events
    }

    #[test]
    fn a_cart_with_every_acknowledged_add_passes() {
        // 2 may be gone (its remove's outcome is unknown), 3 may be there (its add's too).
        for members in [&[1, 2, 3][..], &[1][..], &[1, 3][..]] {
            let r = cart_all(&cart_history([members; 3]), 3, 1);
            assert!(r.iter().all(|c| c.is_ok()), "{}{}", r[0], r[1]);
        }
    }

    /// The planted bug: an acknowledged add that is nowhere (as when the client records an
    /// add acknowledged that it never sent).
    #[test]
    fn a_lost_acknowledged_add_fails_the_cart_checker() {
        let r = cart(&cart_history([&[2, 3]; 3]));
        assert_eq!(kinds(&r), vec![ViolationKind::Lost], "{r}");
        assert!(r.violations[0].detail.contains("element 1"), "{r}");
        assert_eq!(r.violations[0].index, Some(1));
    }

    #[test]
    fn an_element_never_added_and_diverged_nodes_fail() {
        let h = cart_history([&[1, 9], &[1], &[1]]);
        assert_eq!(kinds(&cart(&h)), vec![ViolationKind::Unexpected]);
        let c = cart_convergence(&h, 3, 1);
        assert_eq!(kinds(&c), vec![ViolationKind::Diverged], "{c}");
        assert!(c.violations[0].detail.contains("lacks [9]"), "{c}");
        // A node with no final answer leaves convergence unverified.
        assert_eq!(
            kinds(&cart_convergence(&cart_history([&[1]; 3]), 4, 1)),
            vec![ViolationKind::Unverified]
        );
    }
}
