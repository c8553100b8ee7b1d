//! Stale reads, measured from a run's history.
//!
//! **Registers** (every workload whose values name their write: L, MR, A, MB, LB). A main-phase
//! `ok` read invoked at `t` that returned the value of write `v` (or nothing) is *stale* if some
//! write acknowledged before `t` was invoked after `v` was acknowledged (any acknowledged
//! write, if the read returned nothing): that write is certainly newer in real time, and the
//! reader could have seen it. A read of a write whose outcome is unknown (it timed out) is
//! never counted stale: that write may have taken effect at any time after its invocation. Its staleness is
//! counted in versions (how many such newer writes it missed) and in time (how long the oldest
//! of them had been acknowledged when the read began: `t` minus its acknowledgement). A
//! linearizable store has no stale read by this definition; the definition never counts a read
//! stale for racing a write still in flight.
//!
//! **Sets** (workloads S and MC). A read is stale if it misses an element whose add was
//! acknowledged before the read began and that no remove named before the read completed; its
//! versions are how many such elements it missed, its time how long the most recently
//! acknowledged of their adds had been acknowledged. (A removed element a read still returns is
//! not counted: an add-wins set legitimately keeps one re-added concurrently elsewhere.)
//!
//! Every read is also placed by its *age*: the time since the latest acknowledged write to its
//! key when it began ([`AGE_BINS_MS`]), which gives the curve "probability of a stale read
//! against time since the write" (the empirical counterpart of [`crate::pbs`]).

use crate::history::{EventType, Function, History};
use crate::merged::{MergedFunction, MergedHistory, ReadResult};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use triarch_core::Instant;

/// The lower edges (ms) of the age bins: bin `i` holds reads of age `[AGE_BINS_MS[i],
/// AGE_BINS_MS[i + 1])`, the last bin every older read.
pub const AGE_BINS_MS: [u64; 11] = [0, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

/// The stale reads of one run (or of several runs, summed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Staleness {
    /// Main-phase `ok` reads judged.
    pub reads: u64,
    pub stale: u64,
    /// Per stale read: how long the newest write it missed had been acknowledged.
    pub stale_for: Vec<Duration>,
    /// Per stale read: how many newer writes it missed.
    pub versions: Vec<u64>,
    /// Per age bin ([`AGE_BINS_MS`]): (reads, stale reads) among reads that followed a write.
    pub by_age: Vec<(u64, u64)>,
}

impl Staleness {
    pub fn add(&mut self, other: &Staleness) {
        self.reads += other.reads;
        self.stale += other.stale;
        self.stale_for.extend_from_slice(&other.stale_for);
        self.versions.extend_from_slice(&other.versions);
        if self.by_age.is_empty() {
            self.by_age = vec![(0, 0); AGE_BINS_MS.len()];
        }
        for (mine, theirs) in self.by_age.iter_mut().zip(&other.by_age) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
    }

    /// Stale reads over reads (0 with no reads).
    pub fn rate(&self) -> f64 {
        if self.reads == 0 {
            0.0
        } else {
            self.stale as f64 / self.reads as f64
        }
    }

    fn record(&mut self, age: Option<Duration>, stale: Option<(Duration, u64)>) {
        if self.by_age.is_empty() {
            self.by_age = vec![(0, 0); AGE_BINS_MS.len()];
        }
        self.reads += 1;
        if let Some((for_, versions)) = stale {
            self.stale += 1;
            self.stale_for.push(for_);
            self.versions.push(versions);
        }
        if let Some(age) = age {
            let ms = age.as_micros() as u64 / 1_000;
            let bin = AGE_BINS_MS.iter().rposition(|&b| b <= ms).unwrap_or(0);
            self.by_age[bin].0 += 1;
            self.by_age[bin].1 += u64::from(stale.is_some());
        }
    }
}

fn between(from: Instant, to: Instant) -> Duration {
    Duration::from_micros(to.as_micros().saturating_sub(from.as_micros()))
}

/// A write to a register: its value, invocation, and acknowledgement (`None`: unknown outcome).
#[derive(Clone, Copy, Debug)]
struct Write {
    value: u64,
    invoked: Instant,
    acked: Option<Instant>,
}

/// A main-phase `ok` register read.
#[derive(Clone, Copy, Debug)]
struct Read {
    key: u64,
    invoked: Instant,
    value: Option<u64>,
}

fn judge_registers(writes: &BTreeMap<u64, Vec<Write>>, reads: &[Read]) -> Staleness {
    let mut out = Staleness::default();
    let none = Vec::new();
    for read in reads {
        let writes = writes.get(&read.key).unwrap_or(&none);
        let acked_before = || {
            writes
                .iter()
                .filter_map(|w| Some((w, w.acked?)))
                .filter(|(_, acked)| *acked < read.invoked)
        };
        let age = acked_before()
            .map(|(_, acked)| acked)
            .max()
            .map(|acked| between(acked, read.invoked));
        // After this instant a write is certainly newer than what the read returned.
        let boundary = match read.value {
            None => None,
            Some(v) => match writes.iter().find(|w| w.value == v) {
                Some(w) => match w.acked {
                    Some(acked) => Some(acked),
                    // Unknown outcome: it may have taken effect after every other write.
                    None => {
                        out.record(age, None);
                        continue;
                    }
                },
                // A value no write of the history wrote: not this judge's business.
                None => continue,
            },
        };
        let newer: Vec<Instant> = acked_before()
            .filter(|(w, _)| boundary.is_none_or(|b| w.invoked > b))
            .map(|(_, acked)| acked)
            .collect();
        let stale = newer
            .iter()
            .min()
            .map(|&oldest| (between(oldest, read.invoked), newer.len() as u64));
        out.record(age, stale);
    }
    out
}

/// The stale reads of a register workload's history (workload A).
pub fn of_registers(history: &History) -> Staleness {
    let end = history
        .final_phase_start()
        .unwrap_or(history.events().len());
    let mut writes: BTreeMap<u64, Vec<Write>> = BTreeMap::new();
    let mut reads = Vec::new();
    for op in history.ops() {
        match (op.f, op.outcome) {
            (Function::Write, EventType::Ok | EventType::Info) => {
                let Some(value) = op.value else { continue };
                let acked = op.complete_time.filter(|_| op.outcome == EventType::Ok);
                writes.entry(op.key).or_default().push(Write {
                    value,
                    invoked: op.invoke_time,
                    acked,
                });
            }
            (Function::Read, EventType::Ok) if op.invoke_index < end => reads.push(Read {
                key: op.key,
                invoked: op.invoke_time,
                value: op.value,
            }),
            _ => {}
        }
    }
    judge_registers(&writes, &reads)
}

/// The stale reads of a set, register or balance workload's history; `None` for workload B
/// (its reads are snapshots of every account, linearizable by construction) and for counters
/// (not measured: a counter's value names no write).
pub fn of_merged(history: &MergedHistory) -> Option<Staleness> {
    let events = history.events();
    let end = history.final_phase_start().unwrap_or(events.len());
    let ops = history.ops();
    if ops.iter().any(|op| {
        matches!(
            op.f,
            MergedFunction::BankRead | MergedFunction::BankSetup | MergedFunction::CounterRead
        )
    }) {
        return None;
    }
    let time = |i: usize| events[i].time;
    let acked = |op: &crate::merged::MergedOp| {
        op.complete_index
            .filter(|_| op.outcome == EventType::Ok)
            .map(time)
    };
    if ops.iter().any(|op| op.f == MergedFunction::SetRead) {
        return Some(of_sets(&ops, end, &time));
    }
    let mut writes: BTreeMap<u64, Vec<Write>> = BTreeMap::new();
    let mut reads = Vec::new();
    for op in &ops {
        let value = match (op.f, op.outcome, &op.result) {
            (MergedFunction::RegisterWrite { value }, EventType::Ok | EventType::Info, _) => value,
            (MergedFunction::RegisterCas { new, .. }, EventType::Info, _)
            | (
                MergedFunction::RegisterCas { new, .. },
                EventType::Ok,
                Some(ReadResult::Swapped(true)),
            ) => new,
            (MergedFunction::RegisterRead, EventType::Ok, Some(ReadResult::Register(v)))
                if op.invoke_index < end =>
            {
                reads.push(Read {
                    key: op.key,
                    invoked: time(op.invoke_index),
                    value: *v,
                });
                continue;
            }
            _ => continue,
        };
        writes.entry(op.key).or_default().push(Write {
            value,
            invoked: time(op.invoke_index),
            acked: acked(op),
        });
    }
    Some(judge_registers(&writes, &reads))
}

fn of_sets(
    ops: &[crate::merged::MergedOp],
    end: usize,
    time: &dyn Fn(usize) -> Instant,
) -> Staleness {
    // Per key: acknowledged adds (element, acked at); removes (element, invoked at); every
    // acknowledged write's time.
    let mut adds: BTreeMap<u64, Vec<(u64, Instant)>> = BTreeMap::new();
    let mut removes: BTreeMap<u64, Vec<(u64, Instant)>> = BTreeMap::new();
    let mut acks: BTreeMap<u64, Vec<Instant>> = BTreeMap::new();
    for op in ops {
        let ok_at = op
            .complete_index
            .filter(|_| op.outcome == EventType::Ok)
            .map(time);
        match op.f {
            MergedFunction::SetAdd { element } => {
                if let Some(at) = ok_at {
                    adds.entry(op.key).or_default().push((element, at));
                    acks.entry(op.key).or_default().push(at);
                }
            }
            MergedFunction::SetRemove { element } => {
                let invoked = time(op.invoke_index);
                removes.entry(op.key).or_default().push((element, invoked));
                if let Some(at) = ok_at {
                    acks.entry(op.key).or_default().push(at);
                }
            }
            _ => {}
        }
    }
    let mut out = Staleness::default();
    for op in ops {
        let (MergedFunction::SetRead, EventType::Ok, Some(ReadResult::Members(members))) =
            (op.f, op.outcome, &op.result)
        else {
            continue;
        };
        if op.invoke_index >= end {
            continue;
        }
        let invoked = time(op.invoke_index);
        let completed = op.complete_index.map_or(invoked, time);
        let age = acks
            .get(&op.key)
            .and_then(|a| a.iter().filter(|&&at| at < invoked).max())
            .map(|&at| between(at, invoked));
        let removed: BTreeSet<u64> = removes
            .get(&op.key)
            .into_iter()
            .flatten()
            .filter(|(_, at)| *at < completed)
            .map(|(e, _)| *e)
            .collect();
        // Per missed element, its latest acknowledged add before the read.
        let mut missed: BTreeMap<u64, Instant> = BTreeMap::new();
        for &(element, at) in adds.get(&op.key).into_iter().flatten() {
            if at < invoked && !members.contains(&element) && !removed.contains(&element) {
                let latest = missed.entry(element).or_insert(at);
                *latest = (*latest).max(at);
            }
        }
        let stale = missed
            .values()
            .max()
            .map(|&at| (between(at, invoked), missed.len() as u64));
        out.record(age, stale);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ProcessId;
    use triarch_core::NodeId;

    fn ms(n: u64) -> Instant {
        Instant(n * 1_000)
    }

    fn history(ops: &[(u64, MergedFunction, u64, u64, Option<ReadResult>)]) -> MergedHistory {
        // (process, f, invoked ms, completed ms, result), completed in time order.
        let mut events: Vec<(u64, bool, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            events.push((op.2, true, i));
            events.push((op.3, false, i));
        }
        events.sort();
        let mut h = MergedHistory::new();
        for (at, invoke, i) in events {
            let (process, f, _, _, result) = &ops[i];
            let p = ProcessId(*process);
            if invoke {
                h.invoke(p, *f, 0, NodeId(1), ms(at));
            } else {
                h.complete(p, EventType::Ok, result.clone(), ms(at), None);
            }
        }
        h
    }

    /// A read after a newer acknowledged write that returns the older value is stale, by one
    /// version, for as long as the newer write had been acknowledged; a read racing a write in
    /// flight is not.
    #[test]
    fn registers_judge_reads_against_acknowledged_writes() {
        let w = |value| MergedFunction::RegisterWrite { value };
        let r = MergedFunction::RegisterRead;
        let read = |v| Some(ReadResult::Register(v));
        let h = history(&[
            (1, w(1), 0, 10, None),
            (1, w(2), 20, 30, None),
            // Invoked 70 ms after write 2 was acknowledged, returned 1: stale.
            (2, r, 100, 101, read(Some(1))),
            // Returned 2: fresh.
            (3, r, 110, 111, read(Some(2))),
            // Racing write 3 (invoked 200, acknowledged 250): 2 is fine.
            (1, w(3), 200, 250, None),
            (4, r, 210, 211, read(Some(2))),
            // Nothing, after three acknowledged writes: stale by 3 versions.
            (5, r, 300, 301, read(None)),
        ]);
        let s = of_merged(&h).expect("registers");
        assert_eq!((s.reads, s.stale), (4, 2), "{s:?}");
        assert_eq!(
            s.stale_for,
            vec![Duration::from_millis(70), Duration::from_millis(290)]
        );
        assert_eq!(s.versions, vec![1, 3]);
        // Ages: 70 ms (bin 50), 80 ms (bin 50), 180 ms (bin 100), 50 ms (bin 50).
        assert_eq!(s.by_age[3], (3, 2), "{:?}", s.by_age);
        assert_eq!(s.by_age[4], (1, 0), "{:?}", s.by_age);
        assert!((s.rate() - 0.5).abs() < 1e-9);
        // A write of unknown outcome (never completed) may take effect late, after newer
        // acknowledged writes: a read of it is never stale.
        let mut h = h;
        h.invoke(ProcessId(9), w(4), 0, NodeId(1), ms(400));
        h.invoke(ProcessId(7), r, 0, NodeId(1), ms(500));
        h.complete(ProcessId(7), EventType::Ok, read(Some(4)), ms(501), None);
        h.close_open(ms(600), "run ended");
        let s = of_merged(&h).expect("registers");
        assert_eq!((s.reads, s.stale), (5, 2), "{s:?}");
    }

    #[test]
    fn sets_judge_reads_by_the_acknowledged_adds_they_miss() {
        let add = |element| MergedFunction::SetAdd { element };
        let remove = |element| MergedFunction::SetRemove { element };
        let r = MergedFunction::SetRead;
        let members = |m: &[u64]| Some(ReadResult::Members(m.iter().copied().collect()));
        let h = history(&[
            (1, add(1), 0, 10, None),
            (1, add(2), 20, 30, None),
            (2, r, 50, 51, members(&[1])),
            (3, r, 60, 61, members(&[1, 2])),
            (1, remove(2), 70, 80, None),
            // 2 was removed before this read completed: not missed.
            (4, r, 75, 76, members(&[1])),
            (5, r, 90, 91, members(&[])),
        ]);
        let s = of_merged(&h).expect("sets");
        assert_eq!((s.reads, s.stale), (4, 2), "{s:?}");
        assert_eq!(s.versions, vec![1, 1]);
        assert_eq!(
            s.stale_for,
            vec![Duration::from_millis(20), Duration::from_millis(80)]
        );
    }
}
