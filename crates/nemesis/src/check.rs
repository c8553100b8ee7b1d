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
use crate::history::{Event, F, Kind, ParsedHistory, parse_node};
use std::collections::{BTreeMap, BTreeSet};
use triarch_core::{Instant, NodeId};
use triarch_sim::checker::linearizable::{RegisterCall, RegisterOp, RegisterResult};
use triarch_sim::checker::registers;
use triarch_sim::checker::single_writer;
use triarch_sim::checker::{bank_history, counter, set};
use triarch_sim::{CheckerResult, EventType, Function, History, Violation, ViolationKind};
use triarch_sim::{MergedFunction, MergedHistory, ProcessId, ReadResult};

pub const CONVERGENCE: &str = "convergence (final reads at R=3 through every node)";

/// Every checker's verdict on a run of `workload` on `nodes` nodes and `keys` keys (accounts,
/// for the bank).
pub fn check_run(
    parsed: &ParsedHistory,
    workload: Workload,
    nodes: u32,
    keys: u64,
) -> Vec<CheckerResult> {
    let events = &parsed.events;
    let merged = || match merged_history(events, workload) {
        Ok(h) => Ok(h),
        Err(detail) => Err(CheckerResult {
            checker: "history",
            violations: vec![Violation {
                kind: ViolationKind::Unverified,
                key: 0,
                index: None,
                detail,
            }],
        }),
    };
    let all_nodes: Vec<u64> = (1..=u64::from(nodes)).collect();
    let semantics = match workload {
        Workload::SingleWriter => return check_all(&parsed.history, workload, nodes, keys),
        // The events, not the simulator's history: they carry compare-and-sets.
        Workload::Registers => {
            return vec![
                linearizable_events(events),
                convergence(&parsed.history, nodes, keys),
            ];
        }
        Workload::Cart => return cart_all(events, nodes, keys),
        Workload::Bank => merged().map(|h| bank_history::check(&h, keys, &all_nodes)),
        Workload::Counter => merged().map(|h| counter::check(&h)),
        // A read must see what its own region acknowledged before it began (the region's
        // leader serves it after a ReadIndex round); other regions' increments only once
        // everything is healed and shipped, i.e. by the final reads.
        Workload::MlCounter => merged().map(|h| {
            counter::check_scoped(&h, |add, read, is_final| {
                is_final
                    || crate::harness::region(workload, add.node.0)
                        == crate::harness::region(workload, read.node.0)
            })
        }),
        Workload::Set => merged().map(|h| set::check(&h)),
        Workload::MlLww => {
            let history = last_final_reads(events);
            let mut results = check_all(&history, Workload::SingleWriter, nodes, keys);
            results[1].checker = FINAL_CONVERGENCE;
            return results;
        }
    };
    let keys = if workload == Workload::Bank { 1 } else { keys };
    vec![
        semantics.unwrap_or_else(|e| e),
        final_convergence(events, nodes, keys),
    ]
}

/// The run's events as the simulator's CRDT/bank history, so that its set, counter and bank
/// checkers judge real runs as they judge simulated ones. Refuses (with the event) an `ok`
/// read without its result or an event the workload does not have.
pub fn merged_history(events: &[Event], workload: Workload) -> Result<MergedHistory, String> {
    let mut h = MergedHistory::new();
    for e in events {
        if e.is_final && h.final_phase_start().is_none() {
            h.mark_final_phase();
        }
        let node = parse_node(&e.node).ok_or_else(|| format!("event {}: bad node", e.index))?;
        let time = Instant::from_micros(e.time / 1_000);
        let process = ProcessId(e.process);
        let bad = || {
            format!(
                "event {} does not belong to a {} history",
                e.index,
                workload.name()
            )
        };
        if e.kind == Kind::Invoke {
            let f = match (workload, e.f, e.value) {
                (Workload::Set | Workload::Cart, F::Add, Some(element)) => {
                    MergedFunction::SetAdd { element }
                }
                (Workload::Set | Workload::Cart, F::Remove, Some(element)) => {
                    MergedFunction::SetRemove { element }
                }
                (Workload::Set | Workload::Cart, F::Read, None) => MergedFunction::SetRead,
                (Workload::Counter | Workload::MlCounter, F::Incr, Some(amount)) => {
                    MergedFunction::CounterAdd {
                        amount: i64::try_from(amount).map_err(|_| bad())?,
                    }
                }
                (Workload::Counter | Workload::MlCounter, F::Read, None) => {
                    MergedFunction::CounterRead
                }
                (Workload::Bank, F::Transfer, Some(amount)) => MergedFunction::BankTransfer {
                    from: e.key,
                    to: e.to.ok_or_else(bad)?,
                    amount: i64::try_from(amount).map_err(|_| bad())?,
                    from_version: 0,
                    to_version: 0,
                },
                (Workload::Bank, F::Read, None) => MergedFunction::BankRead,
                _ => return Err(bad()),
            };
            h.invoke(process, f, e.key, NodeId(node), time);
        } else {
            let result = match (e.kind, e.f) {
                (Kind::Ok, F::Read) => Some(if let Some(m) = &e.members {
                    ReadResult::Members(m.iter().copied().collect())
                } else if let Some(c) = e.count {
                    ReadResult::Count(i128::from(c))
                } else if let Some(b) = &e.balances {
                    ReadResult::Balances(
                        b.iter()
                            .enumerate()
                            .map(|(a, &balance)| (a as u64, balance, 0))
                            .collect(),
                    )
                } else {
                    return Err(format!("event {}: an ok read without its result", e.index));
                }),
                _ => None,
            };
            h.complete(process, e.kind.to_sim(), result, time, e.error.clone());
        }
    }
    Ok(h)
}

/// The history with only each node's last `ok` final read of each key among the final reads:
/// the final reads of a multi-leader run poll until the regions agree, and the earlier rounds
/// may precede the last shipments (as any read in another region may).
pub fn last_final_reads(events: &[Event]) -> History {
    let ops = cart_ops(events);
    let mut last: BTreeMap<(u64, &str), usize> = BTreeMap::new();
    for op in &ops {
        if op.invoke.is_final && op.kind() == Kind::Ok {
            last.insert((op.invoke.key, op.invoke.node.as_str()), op.invoke.index);
        }
    }
    let kept: BTreeSet<usize> = last.values().copied().collect();
    let mut dropped: BTreeSet<usize> = BTreeSet::new();
    for op in &ops {
        if op.invoke.is_final && !kept.contains(&op.invoke.index) {
            dropped.insert(op.invoke.index);
            dropped.extend(op.complete.map(|c| c.index));
        }
    }
    let mut w = crate::history::HistoryWriter::new(Vec::new());
    for e in events.iter().filter(|e| !dropped.contains(&e.index)) {
        w.write(e.clone()).expect("writing to memory");
    }
    let text = w.flush_into();
    crate::history::parse(text.as_slice())
        .expect("a valid history stays valid without some of its operations")
        .history
}

pub const FINAL_CONVERGENCE: &str = "convergence (final reads through every node agree)";

/// What a final read answered, whatever the workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FinalAnswer<'a> {
    Members(&'a [u64]),
    Count(i64),
    Balances(&'a [i64]),
}

impl std::fmt::Display for FinalAnswer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FinalAnswer::Members(m) => write!(f, "{} members", m.len()),
            FinalAnswer::Count(c) => write!(f, "{c}"),
            FinalAnswer::Balances(b) => write!(f, "{b:?}"),
        }
    }
}

/// Every key's last `ok` final read succeeded through every node, and all answered the same
/// (members, count or balances): the replicas converged once the faults were healed.
pub fn final_convergence(events: &[Event], nodes: u32, keys: u64) -> CheckerResult {
    let mut finals: BTreeMap<u64, BTreeMap<u32, FinalAnswer<'_>>> = BTreeMap::new();
    for op in cart_ops(events) {
        let Some(c) = op.complete else { continue };
        if !(c.is_final && c.f == F::Read && c.kind == Kind::Ok) {
            continue;
        }
        let answer = if let Some(m) = &c.members {
            FinalAnswer::Members(m)
        } else if let Some(count) = c.count {
            FinalAnswer::Count(count)
        } else if let Some(b) = &c.balances {
            FinalAnswer::Balances(b)
        } else {
            continue;
        };
        if let Some(node) = parse_node(&c.node) {
            finals.entry(c.key).or_default().insert(node, answer);
        }
    }
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
                detail: format!("no final read succeeded through {}", missing.join(" ")),
            });
        }
        let distinct: BTreeSet<&FinalAnswer<'_>> = got.values().collect();
        if distinct.len() > 1 {
            let held: Vec<String> = got.iter().map(|(n, a)| format!("n{n}: {a}")).collect();
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
        checker: FINAL_CONVERGENCE,
        violations,
    }
}

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
        // These need the events' results: see [`check_run`].
        other => CheckerResult {
            checker: CART,
            violations: vec![Violation {
                kind: ViolationKind::Unverified,
                key: 0,
                index: None,
                detail: format!("a {} history is checked by check::check_run", other.name()),
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

/// Every key's reads, writes and compare-and-sets (final reads included) must be linearizable:
/// the simulator's WGL search per key, on the run's events. An undecided search is a violation.
pub fn linearizable_events(events: &[Event]) -> CheckerResult {
    let mut per_key: BTreeMap<u64, Vec<RegisterOp>> = BTreeMap::new();
    for op in cart_ops(events) {
        let e = op.invoke;
        let call = match (e.f, e.value, e.expected) {
            (F::Read, _, _) => RegisterCall::Read,
            (F::Write, Some(v), _) => RegisterCall::Write(v),
            (F::Cas, Some(new), Some(expected)) => RegisterCall::Cas {
                expected: Some(expected),
                new,
            },
            _ => continue, // refused when the history was parsed
        };
        let invoked = e.time / 1_000;
        let register_op = match op.complete {
            Some(c) if c.kind == Kind::Ok => {
                let result = match call {
                    RegisterCall::Read => RegisterResult::Read(c.value),
                    RegisterCall::Write(_) => RegisterResult::Written,
                    RegisterCall::Cas { .. } => RegisterResult::Cas(c.swapped.unwrap_or(false)),
                };
                RegisterOp::ok(e.process, call, invoked, c.time / 1_000, result)
            }
            Some(c) if c.kind == Kind::Fail => RegisterOp::fail(e.process, call, invoked),
            _ => RegisterOp::info(e.process, call, invoked),
        };
        per_key.entry(e.key).or_default().push(register_op);
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
        let mut e = Event::new(kind, process, f, 0, value, 1);
        e.time = time;
        e
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

    /// Builds a history event by event (times count up by a millisecond per event), then parses
    /// it as a run's `history.jsonl` would be.
    #[derive(Default)]
    struct Script {
        events: Vec<Event>,
        open: BTreeMap<u64, Event>,
        final_phase: bool,
    }

    impl Script {
        fn push(&mut self, mut e: Event) {
            e.index = self.events.len();
            e.time = (self.events.len() as u64 + 1) * 1_000_000;
            e.is_final = self.final_phase;
            self.events.push(e);
        }

        fn invoke(&mut self, process: u64, f: F, key: u64, value: Option<u64>, node: u32) {
            let e = Event::new(Kind::Invoke, process, f, key, value, node);
            self.open.insert(process, e.clone());
            self.push(e);
        }

        fn transfer(&mut self, process: u64, from: u64, to: u64, amount: u64, node: u32) {
            let mut e = Event::new(Kind::Invoke, process, F::Transfer, from, Some(amount), node);
            e.to = Some(to);
            self.open.insert(process, e.clone());
            self.push(e);
        }

        /// Completes `process`'s operation; `set` fills an ok read's result.
        fn complete(&mut self, process: u64, kind: Kind, set: impl FnOnce(&mut Event)) {
            let mut e = self.open.remove(&process).expect("open");
            e.kind = kind;
            if kind == Kind::Ok {
                set(&mut e);
            }
            self.push(e);
        }

        fn ok(&mut self, process: u64) {
            self.complete(process, Kind::Ok, |_| {});
        }

        fn read(&mut self, process: u64, key: u64, node: u32, set: impl FnOnce(&mut Event)) {
            self.invoke(process, F::Read, key, None, node);
            self.complete(process, Kind::Ok, set);
        }

        fn parsed(&self) -> ParsedHistory {
            let mut w = crate::history::HistoryWriter::new(Vec::new());
            for e in &self.events {
                w.write(e.clone()).unwrap();
            }
            crate::history::parse(String::from_utf8(w.flush_into()).unwrap().as_bytes()).unwrap()
        }
    }

    fn verdicts(s: &Script, workload: Workload, nodes: u32, keys: u64) -> Vec<Vec<ViolationKind>> {
        check_run(&s.parsed(), workload, nodes, keys)
            .iter()
            .map(kinds)
            .collect()
    }

    /// A bank of 3 accounts: one transfer of 10 from 0 to 1 acknowledged, one of 5 from 1 to 2
    /// unknown; a main-phase read `seen`, then final reads through n1..n3 `finals`.
    fn bank_script(seen: [i64; 3], finals: [[i64; 3]; 3]) -> Script {
        let mut s = Script::default();
        s.transfer(0, 0, 1, 10, 1);
        s.ok(0);
        s.transfer(1, 1, 2, 5, 2);
        s.complete(1, Kind::Info, |_| {});
        s.read(2, 0, 3, |e| e.balances = Some(seen.to_vec()));
        s.final_phase = true;
        for (i, b) in finals.into_iter().enumerate() {
            s.read(10 + i as u64, 0, i as u32 + 1, |e| {
                e.balances = Some(b.to_vec())
            });
        }
        s
    }

    #[test]
    fn a_conserving_bank_passes() {
        let good = [90, 105, 105];
        let s = bank_script([90, 110, 100], [good; 3]);
        assert_eq!(verdicts(&s, Workload::Bank, 3, 3), vec![vec![], vec![]]);
    }

    /// The planted bug's signature: a transfer applied on stale balances creates or destroys
    /// money; unserialized transfers overdraw; a node answering another bank diverges.
    #[test]
    fn a_bank_that_loses_money_overdraws_or_diverges_fails() {
        let good = [90, 105, 105];
        let s = bank_script([90, 100, 100], [good; 3]);
        assert_eq!(
            verdicts(&s, Workload::Bank, 3, 3)[0],
            vec![ViolationKind::Bank]
        );
        let r = check_run(&s.parsed(), Workload::Bank, 3, 3);
        assert!(
            r[0].violations[0].detail.contains("money destroyed: 10"),
            "{}",
            r[0]
        );
        let s = bank_script([-10, 210, 100], [good; 3]);
        let r = check_run(&s.parsed(), Workload::Bank, 3, 3);
        assert_eq!(kinds(&r[0]), vec![ViolationKind::Bank]);
        assert!(
            r[0].violations[0].detail.contains("overdrawn at -10"),
            "{}",
            r[0]
        );
        let s = bank_script([90, 110, 100], [good, [100, 100, 100], good]);
        assert_eq!(
            verdicts(&s, Workload::Bank, 3, 3),
            vec![vec![], vec![ViolationKind::Diverged]]
        );
        // A node that never answered leaves the bank (and its convergence) unverified.
        assert_eq!(
            verdicts(&s, Workload::Bank, 4, 3)[1],
            vec![ViolationKind::Unverified, ViolationKind::Diverged]
        );
    }

    /// Counter 0: +3 acknowledged through n1, +2 unknown through n2; a main-phase read through
    /// `read_node` returning `seen`; final reads through n1..n3 returning `finals`.
    fn counter_script(read_node: u32, seen: i64, finals: [i64; 3]) -> Script {
        let mut s = Script::default();
        s.invoke(0, F::Incr, 0, Some(3), 1);
        s.ok(0);
        s.invoke(1, F::Incr, 0, Some(2), 2);
        s.complete(1, Kind::Info, |_| {});
        s.read(2, 0, read_node, |e| e.count = Some(seen));
        s.final_phase = true;
        for (i, c) in finals.into_iter().enumerate() {
            s.read(10 + i as u64, 0, i as u32 + 1, |e| e.count = Some(c));
        }
        s
    }

    #[test]
    fn counters_within_their_bounds_pass() {
        for (seen, last) in [(3, 3), (5, 5), (3, 5)] {
            let s = counter_script(3, seen, [last; 3]);
            assert_eq!(verdicts(&s, Workload::Counter, 3, 1), vec![vec![], vec![]]);
        }
    }

    #[test]
    fn counters_out_of_bounds_or_diverged_fail() {
        use ViolationKind::*;
        // Read before the acknowledged +3 is seen: stale (leaderless R + W > N).
        assert_eq!(
            verdicts(&counter_script(3, 0, [3; 3]), Workload::Counter, 3, 1)[0],
            vec![Stale]
        );
        // Counted more than was attempted (an increment applied twice).
        assert_eq!(
            verdicts(&counter_script(3, 3, [6; 3]), Workload::Counter, 3, 1)[0],
            vec![Unexpected; 3]
        );
        // The acknowledged +3 lost at the end (an increment acknowledged, never applied).
        assert_eq!(
            verdicts(&counter_script(3, 3, [2, 3, 3]), Workload::Counter, 3, 1),
            vec![vec![Lost], vec![Diverged]]
        );
    }

    #[test]
    fn multi_leader_counters_need_only_their_regions_increments_before_the_final_heal() {
        use ViolationKind::*;
        // The +3 went through n1 (region r1); n2 is in r2, n4 in r1 (5 nodes, 3 regions).
        let s = counter_script(2, 0, [3; 3]);
        assert_eq!(
            verdicts(&s, Workload::MlCounter, 3, 1),
            vec![vec![], vec![]]
        );
        assert_eq!(verdicts(&s, Workload::Counter, 3, 1)[0], vec![Stale]);
        let s = counter_script(4, 0, [3; 3]);
        assert_eq!(verdicts(&s, Workload::MlCounter, 3, 1)[0], vec![Stale]);
        // Final reads must see every region's increments.
        let s = counter_script(2, 0, [0; 3]);
        assert_eq!(verdicts(&s, Workload::MlCounter, 3, 1)[0], vec![Lost; 3]);
    }

    /// Set 0: element 1 added (acknowledged) through n1, element 2 added (unknown) through n2;
    /// a main-phase read returning `seen`; final reads through n1..n3 returning `finals`.
    fn set_script(seen: &[u64], finals: [&[u64]; 3]) -> Script {
        let mut s = Script::default();
        s.invoke(0, F::Add, 0, Some(1), 1);
        s.ok(0);
        s.invoke(1, F::Add, 0, Some(2), 2);
        s.complete(1, Kind::Info, |_| {});
        s.read(2, 0, 3, |e| e.members = Some(seen.to_vec()));
        s.final_phase = true;
        for (i, m) in finals.into_iter().enumerate() {
            s.read(10 + i as u64, 0, i as u32 + 1, |e| {
                e.members = Some(m.to_vec())
            });
        }
        s
    }

    #[test]
    fn sets_with_every_acknowledged_add_pass() {
        for finals in [&[1][..], &[1, 2][..]] {
            let s = set_script(&[1], [finals; 3]);
            assert_eq!(verdicts(&s, Workload::Set, 3, 1), vec![vec![], vec![]]);
        }
    }

    #[test]
    fn stale_lost_unexpected_and_diverged_sets_fail() {
        use ViolationKind::*;
        assert_eq!(
            verdicts(&set_script(&[], [&[1]; 3]), Workload::Set, 3, 1)[0],
            vec![Stale]
        );
        assert_eq!(
            verdicts(&set_script(&[1], [&[1], &[], &[1]]), Workload::Set, 3, 1),
            vec![vec![Lost], vec![Diverged]]
        );
        assert_eq!(
            verdicts(&set_script(&[1, 9], [&[1]; 3]), Workload::Set, 3, 1)[0],
            vec![Unexpected]
        );
    }

    #[test]
    fn a_history_of_another_workload_is_refused_not_passed() {
        let s = counter_script(3, 3, [3; 3]);
        let r = check_run(&s.parsed(), Workload::Set, 3, 1);
        assert_eq!(kinds(&r[0]), vec![ViolationKind::Unverified]);
        assert!(
            r[0].violations[0].detail.contains("set history"),
            "{}",
            r[0]
        );
    }

    /// Register 0 (home r1): write 1 acknowledged through n1; final polls through n1..n3, the
    /// first round `first` (n2's answer), the last round `last` through every node.
    fn ml_lww_script(first: Option<u64>, last: [Option<u64>; 3]) -> Script {
        let mut s = Script::default();
        s.invoke(0, F::Write, 0, Some(1), 1);
        s.ok(0);
        s.read(1, 0, 4, |e| e.value = Some(1));
        s.final_phase = true;
        s.read(10, 0, 2, |e| e.value = first);
        for (i, v) in last.into_iter().enumerate() {
            s.read(20 + i as u64, 0, i as u32 + 1, |e| e.value = v);
        }
        s
    }

    #[test]
    fn multi_leader_lww_judges_each_nodes_last_final_read() {
        use ViolationKind::*;
        // An early poll through another region may precede the shipment: not a violation.
        let s = ml_lww_script(None, [Some(1); 3]);
        assert_eq!(verdicts(&s, Workload::MlLww, 3, 1), vec![vec![], vec![]]);
        // The last one may not.
        let s = ml_lww_script(Some(1), [Some(1), None, Some(1)]);
        assert_eq!(
            verdicts(&s, Workload::MlLww, 3, 1),
            vec![vec![Lost], vec![Diverged]]
        );
    }

    /// Register 0: write 1 acknowledged; a compare-and-set 1 -> 2 answering `swapped`; then a
    /// read returning `read`.
    fn cas_script(swapped: bool, read: u64) -> Script {
        let mut s = Script::default();
        s.invoke(0, F::Write, 0, Some(1), 1);
        s.ok(0);
        let mut cas = Event::new(Kind::Invoke, 1, F::Cas, 0, Some(2), 2);
        cas.expected = Some(1);
        s.open.insert(1, cas.clone());
        s.push(cas);
        s.complete(1, Kind::Ok, |e| e.swapped = Some(swapped));
        s.read(2, 0, 3, |e| e.value = Some(read));
        s
    }

    #[test]
    fn compare_and_sets_are_judged_for_linearizability() {
        assert!(linearizable_events(&cas_script(true, 2).events).is_ok());
        // Nothing else wrote: the CAS must have swapped, and the read must see it.
        for (swapped, read) in [(false, 1), (true, 1), (false, 2)] {
            let r = linearizable_events(&cas_script(swapped, read).events);
            assert_eq!(
                kinds(&r),
                vec![ViolationKind::NotLinearizable],
                "{swapped} {read}: {r}"
            );
        }
        // Through check_run, with the parsed history.
        let s = cas_script(true, 2);
        assert!(check_run(&s.parsed(), Workload::Registers, 1, 1)[0].is_ok());
    }
}
