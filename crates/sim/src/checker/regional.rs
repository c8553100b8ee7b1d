//! Checkers of multi-leader keyspaces that judge regions rather than one key's history: every
//! replica of every region converges, no change is applied twice, every write last-writer-wins
//! discarded is counted, and a region cut off from the others keeps accepting writes.
//!
//! They read what the simulation snapshot of every node's region table holds
//! ([`RegionReplicas`], read from the disks after the final reads settled), what the regions
//! shipped to each other ([`ShippedWrite`], observed on the network), and the fault windows.

use super::{CheckerResult, Violation, ViolationKind, convergence};
use crate::history::EventType;
use crate::merged::{MergedFunction, MergedHistory, ReadResult};
use std::collections::BTreeMap;
use triarch_core::causal::{ActorId, Dot, VersionVector};
use triarch_core::{Instant, NodeId};
use triarch_multileader::machine::Counters;
use triarch_multileader::record::{Body, RegionalRecord};
use triarch_multileader::region::actor_of;

pub const CONVERGENCE: &str = "regional convergence";
pub const APPLIED_ONCE: &str = "applied once";
pub const LWW_DISCARDS: &str = "lww discards counted";
pub const AVAILABILITY: &str = "available while regions are cut apart";

/// One node's copy of its region's table of a multi-leader keyspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionReplica {
    /// The region whose group this node is a voter of.
    pub region: String,
    /// Every replicated row of the region's table.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// Each key's encoded [`RegionalRecord`], by workload key.
    pub records: BTreeMap<u64, Vec<u8>>,
    /// The region's machine counters (zero when the node holds none).
    pub counters: Counters,
}

/// Every voter's copy of its region's table.
pub type RegionReplicas = BTreeMap<NodeId, RegionReplica>;

/// An `lww` write some region shipped to the others: its dot and its writer's context (what it
/// had seen of the key), as the writer's region put it in its change log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShippedWrite {
    pub key: u64,
    pub dot: Dot,
    pub context: VersionVector,
}

/// Every shipped `lww` write, by the (unique) value it wrote.
pub type ShippedWrites = BTreeMap<u64, ShippedWrite>;

/// **Convergence.** After the final heal and settle, (1) the voters of each region hold the same
/// replicated rows (records, change log, positions, counters: [`convergence::check_tables`]),
/// and (2) every node of every region holds the same body of every key's record, and the same
/// version vector of applied writes (`seen`): every region has applied every region's writes
/// and merged them alike. (The rest of a record is the region's own bookkeeping of how the
/// writes came: which arrived by state transfer.)
pub fn check_convergence(replicas: &RegionReplicas) -> CheckerResult {
    let mut violations = Vec::new();
    let mut regions: BTreeMap<&str, convergence::ReplicaTables> = BTreeMap::new();
    for (&node, replica) in replicas {
        regions
            .entry(&replica.region)
            .or_default()
            .insert(node, replica.rows.clone());
    }
    for (region, tables) in &regions {
        let inside = convergence::check_tables(tables, |_| None);
        violations.extend(inside.violations.into_iter().map(|mut v| {
            v.detail = format!("inside {region}: {}", v.detail);
            v
        }));
    }
    let keys: std::collections::BTreeSet<u64> = replicas
        .values()
        .flat_map(|r| r.records.keys().copied())
        .collect();
    for key in keys {
        let held: Vec<(NodeId, Option<&Vec<u8>>)> = replicas
            .iter()
            .map(|(&node, r)| (node, r.records.get(&key)))
            .collect();
        let first = merged(held[0].1);
        if first.is_some() && held.iter().all(|(_, r)| merged(*r) == first) {
            continue;
        }
        let shown: Vec<String> = held
            .iter()
            .map(|(node, r)| match r.map(|b| RegionalRecord::decode(b)) {
                None => format!("{node}: none"),
                Some(Ok(record)) => {
                    let policy = record.policy();
                    let read = triarch_multileader::record::read(Some(&record), policy);
                    format!("{node}: {read:?} seen {}", record.seen)
                }
                Some(Err(e)) => format!("{node}: undecodable ({e})"),
            })
            .collect();
        violations.push(Violation {
            kind: ViolationKind::Diverged,
            key,
            index: None,
            detail: format!("regions hold different records: {}", shown.join("; ")),
        });
    }
    CheckerResult {
        checker: CONVERGENCE,
        violations,
    }
}

/// What must be equal across regions of a stored record: its version vector of applied writes
/// and its body (`Some(None)`: no record; `None`: a record that does not decode).
#[allow(clippy::option_option)]
fn merged(bytes: Option<&Vec<u8>>) -> Option<Option<(VersionVector, Body)>> {
    match bytes.map(|b| RegionalRecord::decode(b)) {
        None => Some(None),
        Some(Ok(r)) => Some(Some((r.seen, r.body))),
        Some(Err(_)) => None,
    }
}

/// **No change applied twice.** Every region folds each other region's change log exactly once
/// and in order; a change whose dot a key had already applied is counted in
/// [`Counters::duplicates`], which must be 0 on every node.
pub fn check_applied_once(replicas: &RegionReplicas) -> CheckerResult {
    let violations = replicas
        .iter()
        .filter(|(_, r)| r.counters.duplicates > 0)
        .map(|(node, r)| Violation {
            kind: ViolationKind::AppliedTwice,
            key: u64::MAX,
            index: None,
            detail: format!(
                "{node} ({}) applied {} change(s) a second time",
                r.region, r.counters.duplicates
            ),
        })
        .collect();
    CheckerResult {
        checker: APPLIED_ONCE,
        violations,
    }
}

/// **Every write last-writer-wins discarded is counted** (workload MR).
///
/// A write is *lost* when it happened (it was acknowledged, or a region shipped it), its value
/// is not the key's final value (what the final reads return), and no write of the key had seen
/// it (no write's context holds its dot): nothing replaced it knowingly, it lost to a
/// concurrent write. What the
/// writers had seen comes from the change logs the regions shipped, the truth the merge itself
/// works from, never from timing guesses. A write that reached the other regions only inside a
/// state transfer's records was never shipped as a change: its context is unknown, so a write
/// it may have seen (one invoked before it completed, or before it ended `info`) is not judged.
///
/// The rule, per region `R`: `R`'s `lww_discarded` is at least the number of lost writes
/// written in `R` (a write's region is its dot's actor); so their sum over the regions is at
/// least the number of lost writes. Why each lost write `w` of `R` is counted in `R`: `w` won
/// in `R` when written (a region stamps a write after everything it applied), and is not final,
/// so some change `c` replaced it there, and `c` had not seen `w` (nothing had). `c` is no "old
/// news" either (a write `R` applied that had seen `c` would have beaten `c`, or been seen by
/// `w`, which would then have beaten `c`): `R` detects the conflict and counts `w` dropped. A
/// region's later write sees its earlier ones, so `R` loses at most one write of a key this
/// way, counted once. (Regions count more than that: every write they drop at a fold, also
/// writes other regions' writes saw later.)
///
/// Also a violation: a final value no write wrote, final reads that disagree, and a key with
/// acknowledged writes and no `ok` final read.
pub fn check_lww_discards(
    history: &MergedHistory,
    shipped: &ShippedWrites,
    replicas: &RegionReplicas,
) -> CheckerResult {
    judge_lww(history, shipped, replicas).0
}

/// How many lost writes [`check_lww_discards`] found (and required counted): how much the run
/// really tested.
pub fn lww_writes_lost(
    history: &MergedHistory,
    shipped: &ShippedWrites,
    replicas: &RegionReplicas,
) -> u64 {
    judge_lww(history, shipped, replicas).1
}

fn judge_lww(
    history: &MergedHistory,
    shipped: &ShippedWrites,
    replicas: &RegionReplicas,
) -> (CheckerResult, u64) {
    let ops = history.ops();
    let final_start = history.final_phase_start().unwrap_or(usize::MAX);
    let mut violations = Vec::new();
    let mut report = |kind, key, detail: String| {
        violations.push(Violation {
            kind,
            key,
            index: None,
            detail,
        })
    };
    // Per key: acknowledged writes, every write that may have happened (value, invoked,
    // completed ok at), the final reads' values.
    type Write = (u64, usize, Option<usize>);
    type Key = (Vec<Write>, Vec<Write>, Vec<Option<u64>>);
    let mut keys: BTreeMap<u64, Key> = BTreeMap::new();
    for op in &ops {
        let (acked, attempted, finals) = keys.entry(op.key).or_default();
        match (op.f, op.outcome) {
            (MergedFunction::RegisterWrite { value }, EventType::Ok) => {
                acked.push((value, op.invoke_index, op.complete_index));
                attempted.push((value, op.invoke_index, op.complete_index));
            }
            (MergedFunction::RegisterWrite { value }, EventType::Info) => {
                attempted.push((value, op.invoke_index, None))
            }
            (MergedFunction::RegisterRead, EventType::Ok) if op.invoke_index >= final_start => {
                if let Some(ReadResult::Register(v)) = op.result {
                    finals.push(v);
                }
            }
            _ => {}
        }
    }
    // Lost writes, by the actor (region) that wrote them: (key, value).
    let mut lost: BTreeMap<ActorId, Vec<(u64, u64)>> = BTreeMap::new();
    for (&key, (acked, attempted, finals)) in &keys {
        if acked.is_empty() {
            continue;
        }
        let Some(&last) = finals.first() else {
            report(
                ViolationKind::Unverified,
                key,
                "no final read succeeded: lost writes cannot be ruled out".into(),
            );
            continue;
        };
        if finals.iter().any(|f| *f != last) {
            report(
                ViolationKind::Diverged,
                key,
                format!("final reads disagree: {finals:?}"),
            );
        }
        if last.is_none_or(|v| !attempted.iter().any(|w| w.0 == v)) {
            report(
                ViolationKind::Unexpected,
                key,
                format!("the final value {last:?} is no write's that could have happened"),
            );
            continue;
        }
        let seen_by_another = |dot: Dot| {
            shipped
                .values()
                .any(|s| s.key == key && s.context.contains(dot))
        };
        // Writes whose context is unknown (never shipped as a change), and whether one of
        // them may have seen a write invoked at `invoked`: unless it completed before.
        let unshipped: Vec<&Write> = attempted
            .iter()
            .filter(|w| !shipped.contains_key(&w.0))
            .collect();
        let maybe_seen_unknown =
            |invoked: usize| unshipped.iter().any(|u| u.2.is_none_or(|c| c > invoked));
        // Every write that happened: acknowledged, or shipped (so written in its region).
        for &(value, invoked, _) in attempted.iter().filter(|w| Some(w.0) != last) {
            if let Some(s) = shipped.get(&value)
                && !seen_by_another(s.dot)
                && !maybe_seen_unknown(invoked)
            {
                lost.entry(s.dot.actor()).or_default().push((key, value));
            }
        }
    }
    let regions = per_region(replicas);
    for (actor, lost) in &lost {
        let region = regions.iter().find(|(name, _)| actor_of(name) == *actor);
        let (name, counted) =
            region.map_or(("an unknown region", 0), |(n, c)| (n, c.lww_discarded));
        if counted < lost.len() as u64 {
            let shown: Vec<String> = lost
                .iter()
                .take(10)
                .map(|(k, v)| format!("key {k} value {v}"))
                .collect();
            report(
                ViolationKind::Uncounted,
                lost.first().map_or(u64::MAX, |(k, _)| *k),
                format!(
                    "{} write(s) of {name} lost to concurrent ones, {counted} counted as discarded there: {}",
                    lost.len(),
                    shown.join(", ")
                ),
            );
        }
    }
    let result = CheckerResult {
        checker: LWW_DISCARDS,
        violations,
    };
    (result, lost.values().map(|l| l.len() as u64).sum())
}

/// Each region's counters (the largest of its voters' copies, which
/// [`check_convergence`] requires equal).
pub fn per_region(replicas: &RegionReplicas) -> BTreeMap<&str, Counters> {
    let mut out: BTreeMap<&str, Counters> = BTreeMap::new();
    for r in replicas.values() {
        let c = out.entry(&r.region).or_default();
        if (r.counters.last, r.counters.folded) >= (c.last, c.folded) {
            *c = r.counters;
        }
    }
    out
}

/// One fault window that only cut links between regions ([`crate::nemesis::FaultWindow::only_between_regions`]).
pub type Window = (Instant, Instant);

/// Writes through each region's nodes during `windows`: `(ok, fail, info)` per region, counting
/// a write when it was invoked and completed inside one window.
pub fn writes_in_windows(
    history: &MergedHistory,
    windows: &[Window],
    region_of: impl Fn(NodeId) -> u32,
) -> BTreeMap<(usize, u32), (u64, u64, u64)> {
    let events = history.events();
    let mut out: BTreeMap<(usize, u32), (u64, u64, u64)> = BTreeMap::new();
    for op in history.ops().iter().filter(|op| !op.f.is_read()) {
        let Some(complete) = op.complete_index else {
            continue;
        };
        let (invoked, completed) = (events[op.invoke_index].time, events[complete].time);
        let Some(w) = windows
            .iter()
            .position(|&(from, to)| from < invoked && completed < to)
        else {
            continue;
        };
        let counts = out.entry((w, region_of(op.node))).or_default();
        match op.outcome {
            EventType::Ok => counts.0 += 1,
            EventType::Fail => counts.1 += 1,
            _ => counts.2 += 1,
        }
    }
    out
}

/// **A region cut off from the others keeps accepting writes.** In a fault window that only cut
/// links between regions, every region's nodes are up and connected to each other, and a
/// region's write needs its own region's majority alone: of the writes invoked and completed
/// inside such a window through a region's nodes, at least one succeeded, in every window and
/// region that had any. (One, not all: a write can still time out behind a lost message at
/// the baseline loss rate; a region that answers none has stopped accepting writes.)
pub fn check_availability(
    history: &MergedHistory,
    windows: &[Window],
    region_of: impl Fn(NodeId) -> u32,
) -> CheckerResult {
    let violations = writes_in_windows(history, windows, region_of)
        .into_iter()
        .filter(|(_, (ok, _, _))| *ok == 0)
        .map(|((w, region), (_, fail, info))| {
            let (from, to) = windows[w];
            Violation {
                kind: ViolationKind::Unavailable,
                key: u64::MAX,
                index: None,
                detail: format!(
                    "no write through r{} succeeded while only links between regions were cut ({:.3}-{:.3} s): {fail} failed, {info} unknown",
                    region + 1,
                    from.as_micros() as f64 / 1e6,
                    to.as_micros() as f64 / 1e6,
                ),
            }
        })
        .collect();
    CheckerResult {
        checker: AVAILABILITY,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ProcessId;
    use triarch_core::causal::ActorId;

    fn replica(region: &str, records: &[(u64, &[u8])], counters: Counters) -> RegionReplica {
        RegionReplica {
            region: region.to_string(),
            rows: records
                .iter()
                .map(|(k, v)| (k.to_be_bytes().to_vec(), v.to_vec()))
                .collect(),
            records: records.iter().map(|(k, v)| (*k, v.to_vec())).collect(),
            counters,
        }
    }

    /// A counter's record after one increment by `amount` in region `actor`.
    fn counted(actor: u32, amount: i64) -> Vec<u8> {
        use triarch_core::merge::Operation;
        use triarch_core::{HlcTimestamp, MergePolicy};
        use triarch_multileader::record::{Write, write_local};
        let write = Write::Operation(Operation::CounterAdd(amount));
        let stamp = HlcTimestamp {
            wall_ms: 1,
            logical: 0,
            node: NodeId(1),
        };
        let key = bytes::Bytes::from_static(b"k");
        let (record, _, _) = write_local(
            &key,
            None,
            MergePolicy::Counter,
            ActorId(actor),
            &write,
            stamp,
        )
        .expect("a counter write");
        record.encode()
    }

    #[test]
    fn replicas_of_every_region_must_hold_the_same_records() {
        let (a, b) = (counted(1, 1), counted(1, 2));
        let same: RegionReplicas = (1..=4)
            .map(|n| {
                let region = if n <= 2 { "r1" } else { "r2" };
                (NodeId(n), replica(region, &[(0, &a)], Counters::default()))
            })
            .collect();
        assert!(check_convergence(&same).is_ok());
        // Another region holds another record.
        let mut apart = same.clone();
        for n in [3, 4] {
            apart.insert(NodeId(n), replica("r2", &[(0, &b)], Counters::default()));
        }
        let result = check_convergence(&apart);
        assert_eq!(result.violations.len(), 1, "{result}");
        assert_eq!(result.violations[0].kind, ViolationKind::Diverged);
        // One voter of a region lacks a row its region's other voter holds.
        let mut behind = same;
        behind.insert(NodeId(4), replica("r2", &[], Counters::default()));
        let kinds: Vec<_> = check_convergence(&behind)
            .violations
            .iter()
            .map(|v| v.detail.starts_with("inside r2"))
            .collect();
        assert_eq!(kinds, vec![true, false], "inside the region, then across");
    }

    #[test]
    fn a_duplicate_anywhere_fails() {
        let twice = Counters {
            duplicates: 2,
            ..Counters::default()
        };
        let replicas: RegionReplicas = [
            (NodeId(1), replica("r1", &[], Counters::default())),
            (NodeId(2), replica("r2", &[], twice)),
        ]
        .into_iter()
        .collect();
        let result = check_applied_once(&replicas);
        assert_eq!(result.violations.len(), 1);
        assert_eq!(result.violations[0].kind, ViolationKind::AppliedTwice);
    }

    /// Two regions write key 0 concurrently (values 1 and 2), then region 1 overwrites its own
    /// write having seen both (value 3, final).
    fn lww_history(final_value: u64) -> MergedHistory {
        let mut h = MergedHistory::new();
        for value in [1, 2, 3] {
            let (p, at) = (ProcessId(value), Instant(value * 10));
            h.invoke(p, MergedFunction::RegisterWrite { value }, 0, NodeId(1), at);
            h.complete(p, EventType::Ok, None, Instant(value * 10 + 5), None);
        }
        h.mark_final_phase();
        let read = Some(ReadResult::Register(Some(final_value)));
        h.invoke(
            ProcessId(9),
            MergedFunction::RegisterRead,
            0,
            NodeId(1),
            Instant(50),
        );
        h.complete(ProcessId(9), EventType::Ok, read, Instant(55), None);
        h
    }

    /// Writes 1 and 3 in region r1, 2 in r2.
    fn shipped(third_saw_second: bool) -> ShippedWrites {
        let (a, b) = (actor_of("r1"), actor_of("r2"));
        let vv = |entries: &[(ActorId, u64)]| {
            let mut v = VersionVector::new();
            for &(actor, n) in entries {
                v.advance_to(Dot::new(actor, n));
            }
            v
        };
        let context = if third_saw_second {
            vv(&[(a, 1), (b, 1)])
        } else {
            vv(&[(a, 1)])
        };
        let write = |dot, context| ShippedWrite {
            key: 0,
            dot,
            context,
        };
        [
            (1, write(Dot::new(a, 1), VersionVector::new())),
            (2, write(Dot::new(b, 1), VersionVector::new())),
            (3, write(Dot::new(a, 2), context)),
        ]
        .into_iter()
        .collect()
    }

    /// Region `region` counted `n` writes discarded, the other (of r1 and r2) none.
    fn discarded(region: &str, n: u64) -> RegionReplicas {
        let counters = |r: &str| Counters {
            lww_discarded: if r == region { n } else { 0 },
            ..Counters::default()
        };
        [
            (NodeId(1), replica("r1", &[], counters("r1"))),
            (NodeId(2), replica("r2", &[], counters("r2"))),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn every_write_lost_to_a_concurrent_one_must_be_counted() {
        // Value 3 saw 1 and 2: nothing was lost.
        let h = lww_history(3);
        assert!(check_lww_discards(&h, &shipped(true), &discarded("r2", 0)).is_ok());
        // Value 3 saw 1 only: 2 was lost to it and must be counted.
        let uncounted = check_lww_discards(&h, &shipped(false), &discarded("r2", 0));
        assert_eq!(uncounted.violations.len(), 1, "{uncounted}");
        assert_eq!(uncounted.violations[0].kind, ViolationKind::Uncounted);
        assert!(check_lww_discards(&h, &shipped(false), &discarded("r2", 1)).is_ok());
        // Counted, but by the wrong region: r2 lost a write it did not count.
        let elsewhere = check_lww_discards(&h, &shipped(false), &discarded("r1", 1));
        assert_eq!(elsewhere.violations.len(), 1, "{elsewhere}");
        // A final value nobody wrote.
        let wrong = check_lww_discards(&lww_history(7), &shipped(true), &discarded("r2", 5));
        assert_eq!(wrong.violations[0].kind, ViolationKind::Unexpected);
    }

    #[test]
    fn a_write_whose_context_is_unknown_is_assumed_to_have_seen_what_it_may_have_seen() {
        let h = lww_history(3);
        // 2 came by state transfer only: it may have seen 1, and 1 is not judged.
        let mut transferred = shipped(false);
        transferred.remove(&2);
        assert!(check_lww_discards(&h, &transferred, &discarded("r2", 0)).is_ok());
        // 1 came by state transfer only, but completed before 2 began: it cannot have seen 2,
        // which 3 had not seen either: 2 was lost and must be counted.
        let mut transferred = shipped(false);
        transferred.remove(&1);
        let result = check_lww_discards(&h, &transferred, &discarded("r2", 0));
        assert_eq!(
            result.violations[0].kind,
            ViolationKind::Uncounted,
            "{result}"
        );
    }

    #[test]
    fn a_region_that_answers_no_write_while_only_cut_from_the_others_fails() {
        let mut h = MergedHistory::new();
        let mut op = |p: u64, node: u32, at: u64, kind: EventType| {
            let f = MergedFunction::CounterAdd { amount: 1 };
            h.invoke(ProcessId(p), f, 0, NodeId(node), Instant(at));
            h.complete(ProcessId(p), kind, None, Instant(at + 5), None);
        };
        op(1, 1, 10, EventType::Ok);
        op(2, 2, 20, EventType::Info);
        op(3, 2, 30, EventType::Fail);
        op(4, 2, 200, EventType::Info); // outside the window: not judged
        let region_of = |n: NodeId| n.0 - 1;
        let windows = [(Instant(5), Instant(100))];
        let result = check_availability(&h, &windows, region_of);
        assert_eq!(result.violations.len(), 1, "{result}");
        assert_eq!(result.violations[0].kind, ViolationKind::Unavailable);
        assert!(result.violations[0].detail.contains("r2"));
        let counts = writes_in_windows(&h, &windows, region_of);
        assert_eq!(counts[&(0, 0)], (1, 0, 0));
        assert_eq!(counts[&(0, 1)], (0, 1, 1));
        assert!(check_availability(&h, &[(Instant(300), Instant(400))], region_of).is_ok());
    }
}
