//! The single-writer register checker.
//!
//! ## The workload it judges
//!
//! Each key is a register written by one writer process at a time, with strictly increasing
//! integers in invocation order (a writer that ends `info` retires and its successor continues
//! the sequence, so values identify writes and their order). Many reader processes read. A key
//! starts absent (`nil`) and is never deleted.
//!
//! ## The rule
//!
//! `invoke(op)` and `complete(op)` are history indices, which order events in real time. For
//! every read `r` of key `K` that completed `ok` with value `v`:
//!
//! 1. **Origin** (else [`ViolationKind::Unexpected`]): `v` is `nil` or the value of a write `w`
//!    of `K` with `invoke(w) < complete(r)` whose outcome is not `fail`. A value never written,
//!    written only after the read finished, or written by a write that definitely did not happen
//!    cannot be read.
//! 2. **Recency** (else [`ViolationKind::Stale`]): let `k` be the largest value among the writes
//!    of `K` that completed `ok` before `r` was invoked (`complete(w) < invoke(r)`). If there is
//!    one, `v` is not `nil`, and if `v < k` the write of `v` ended `info` (or never completed).
//! 3. **No acknowledged write lost**: rule 2 applied to the final reads, issued through every
//!    node after the final heal and settle and therefore after every write completed, says each
//!    returns at least the last acknowledged value; a breach is reported as
//!    [`ViolationKind::Lost`]. A key with an acknowledged write and no successful final read is
//!    [`ViolationKind::Unverified`]: loss could not be ruled out, which is not a pass.
//!
//! ## Why the `info` exception in rule 2
//!
//! An `info` write may take effect at any time after its invocation, including after later
//! writes of the same key: linearizability places it after write `k`. The leaderless engine
//! really does this: a write whose coordinator gave up (quorum not reached, superseded, or the
//! coordinator crashed) can survive on one replica or in flight with a timestamp above that of
//! the next acknowledged write (stamped by a coordinator whose clock runs ahead, or re-stamped
//! after seeing the later write), and read repair then spreads it over the acknowledged value.
//!
//! ## Why nothing stronger
//!
//! The check is Lamport's *regular* register, not linearizability: reads are not compared with
//! each other. Dynamo-style quorums with asynchronous read repair are not linearizable: a read
//! concurrent with write `k` may return `k` from the one replica that already holds it, and a
//! later read may still return `k - 1` from two replicas that do not. What `R + W > N` does
//! guarantee is that every read quorum meets the quorum of every acknowledged write, so a read
//! sees at least every write acknowledged before it began; that is rule 2.

use super::{CheckerResult, Violation, ViolationKind};
use crate::history::{EventType, Function, History, Op};
use std::collections::BTreeMap;

pub const NAME: &str = "single-writer register";

/// Checks `history` against the rule in the module documentation.
///
/// # Panics
///
/// If the history breaks the workload's own contract (a value written twice to one key, or
/// values not increasing in invocation order): that is a bug in the workload, not in the system.
pub fn check(history: &History) -> CheckerResult {
    let ops = history.ops();
    let final_start = history.final_phase_start();
    let mut keys: BTreeMap<u64, (Vec<&Op>, Vec<&Op>)> = BTreeMap::new();
    for op in &ops {
        let (writes, reads) = keys.entry(op.key).or_default();
        match op.f {
            Function::Write => writes.push(op),
            Function::Read => reads.push(op),
        }
    }
    let mut violations = Vec::new();
    for (&key, (writes, reads)) in &keys {
        check_key(key, writes, reads, final_start, &mut violations);
    }
    CheckerResult {
        checker: NAME,
        violations,
    }
}

fn check_key(
    key: u64,
    writes: &[&Op],
    reads: &[&Op],
    final_start: Option<usize>,
    violations: &mut Vec<Violation>,
) {
    // Writes by value; `ops()` lists them in invocation order, so values must increase.
    let mut by_value: BTreeMap<u64, &Op> = BTreeMap::new();
    let mut previous: Option<u64> = None;
    for &w in writes {
        let value = w.value.expect("a write carries its value");
        assert!(
            previous.is_none_or(|p| value > p),
            "workload bug: key {key} written with {value} after {previous:?}"
        );
        previous = Some(value);
        by_value.insert(value, w);
    }
    // Acknowledged writes ordered by completion, with the running maximum of their values: the
    // largest value acknowledged before any history index is then one binary search away.
    let mut acked: Vec<(usize, u64)> = writes
        .iter()
        .filter(|w| w.outcome == EventType::Ok)
        .map(|w| {
            (
                w.complete_index.expect("ok has a completion"),
                w.value.expect("value"),
            )
        })
        .collect();
    acked.sort_unstable();
    let mut running = 0;
    for entry in &mut acked {
        running = running.max(entry.1);
        entry.1 = running;
    }

    let mut final_read_ok = false;
    for &r in reads.iter().filter(|r| r.outcome == EventType::Ok) {
        let complete = r.complete_index.expect("ok has a completion");
        let is_final = final_start.is_some_and(|s| r.invoke_index >= s);
        final_read_ok |= is_final;
        let read = describe_read(r);

        // Rule 1: origin.
        if let Some(v) = r.value {
            let problem = match by_value.get(&v) {
                None => Some("was never written".to_string()),
                Some(w) if w.invoke_index > complete => Some(format!(
                    "was written only after the read completed (write invoked at #{})",
                    w.invoke_index
                )),
                Some(w) if w.outcome == EventType::Fail => Some(format!(
                    "was written by a write that definitely failed (#{})",
                    w.complete_index.expect("fail has a completion")
                )),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                violations.push(Violation {
                    kind: ViolationKind::Unexpected,
                    key,
                    index: Some(complete),
                    detail: format!("{read}: value {v} {problem}"),
                });
                continue;
            }
        }

        // Rules 2 and 3: recency.
        let before = acked.partition_point(|(c, _)| *c < r.invoke_index);
        let Some(&(_, k)) = before.checked_sub(1).map(|i| &acked[i]) else {
            continue;
        };
        let stale = match r.value {
            None => Some("nil".to_string()),
            Some(v) if v < k => match by_value[&v].outcome {
                EventType::Ok => Some(format!(
                    "{v} (acknowledged at #{})",
                    ack_index(&by_value, v)
                )),
                _ => None, // an info write may take effect after write k (module docs)
            },
            Some(_) => None,
        };
        if let Some(returned) = stale {
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
                    "{read} returned {returned}, but write {k} was acknowledged at #{} before \
                     the read began",
                    ack_index(&by_value, k)
                ),
            });
        }
    }

    if final_start.is_some() && !acked.is_empty() && !final_read_ok {
        violations.push(Violation {
            kind: ViolationKind::Unverified,
            key,
            index: None,
            detail: format!(
                "no final read succeeded, so the last acknowledged write ({}) may be lost",
                acked.last().expect("non-empty").1
            ),
        });
    }
}

fn ack_index(by_value: &BTreeMap<u64, &Op>, value: u64) -> usize {
    by_value[&value].complete_index.expect("acknowledged")
}

fn describe_read(r: &Op) -> String {
    format!(
        "read by {} via {} (#{}..#{})",
        r.process,
        r.node,
        r.invoke_index,
        r.complete_index.expect("completed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ProcessId;
    use triarch_core::{Instant, NodeId};

    /// Builds histories tersely; time advances by one microsecond per event.
    struct Builder {
        h: History,
        t: u64,
    }

    const WRITER: ProcessId = ProcessId(1);
    const READER: ProcessId = ProcessId(2);

    impl Builder {
        fn new() -> Self {
            Builder {
                h: History::new(),
                t: 0,
            }
        }
        fn tick(&mut self) -> Instant {
            self.t += 1;
            Instant(self.t)
        }
        fn invoke_write(&mut self, p: ProcessId, key: u64, v: u64) -> &mut Self {
            let t = self.tick();
            self.h
                .invoke(p, Function::Write, key, Some(v), NodeId(1), t);
            self
        }
        fn invoke_read(&mut self, p: ProcessId, key: u64) -> &mut Self {
            let t = self.tick();
            self.h.invoke(p, Function::Read, key, None, NodeId(2), t);
            self
        }
        fn complete(&mut self, p: ProcessId, kind: EventType, v: Option<u64>) -> &mut Self {
            let t = self.tick();
            self.h.complete(p, kind, v, t, None);
            self
        }
        fn write(&mut self, p: ProcessId, key: u64, v: u64, kind: EventType) -> &mut Self {
            self.invoke_write(p, key, v).complete(p, kind, None)
        }
        fn read(&mut self, p: ProcessId, key: u64, v: Option<u64>) -> &mut Self {
            self.invoke_read(p, key).complete(p, EventType::Ok, v)
        }
        fn final_phase(&mut self) -> &mut Self {
            self.h.mark_final_phase();
            self
        }
        fn kinds(&self) -> Vec<ViolationKind> {
            check(&self.h).violations.iter().map(|v| v.kind).collect()
        }
    }

    #[test]
    fn a_correct_history_passes() {
        let mut b = Builder::new();
        b.read(READER, 0, None)
            .write(WRITER, 0, 1, EventType::Ok)
            .read(READER, 0, Some(1))
            // A read concurrent with write 2 may see either value.
            .invoke_write(WRITER, 0, 2)
            .read(READER, 0, Some(1))
            .read(READER, 0, Some(2))
            .complete(WRITER, EventType::Ok, None)
            .read(READER, 0, Some(2))
            // A read that failed or timed out says nothing.
            .invoke_read(ProcessId(3), 0)
            .complete(ProcessId(3), EventType::Info, None)
            .final_phase()
            .read(ProcessId(4), 0, Some(2));
        assert_eq!(b.kinds(), vec![]);
    }

    #[test]
    fn a_read_older_than_an_acknowledged_write_is_stale() {
        let mut b = Builder::new();
        b.write(WRITER, 0, 1, EventType::Ok)
            .write(WRITER, 0, 2, EventType::Ok)
            .read(READER, 0, Some(1));
        assert_eq!(b.kinds(), vec![ViolationKind::Stale]);
        let v = &check(&b.h).violations[0];
        assert!(v.detail.contains("write 2 was acknowledged at #3"), "{v}");
    }

    #[test]
    fn nil_after_an_acknowledged_write_is_stale() {
        let mut b = Builder::new();
        b.write(WRITER, 0, 1, EventType::Ok).read(READER, 0, None);
        assert_eq!(b.kinds(), vec![ViolationKind::Stale]);
    }

    #[test]
    fn a_value_never_written_or_written_later_or_failed_is_unexpected() {
        let mut b = Builder::new();
        b.read(READER, 0, Some(7));
        assert_eq!(b.kinds(), vec![ViolationKind::Unexpected]);

        let mut b = Builder::new();
        b.read(READER, 0, Some(1))
            .write(WRITER, 0, 1, EventType::Ok);
        assert_eq!(
            b.kinds(),
            vec![ViolationKind::Unexpected],
            "read from the future"
        );

        let mut b = Builder::new();
        b.write(WRITER, 0, 1, EventType::Fail)
            .read(READER, 0, Some(1));
        assert_eq!(b.kinds(), vec![ViolationKind::Unexpected]);
    }

    #[test]
    fn an_info_write_may_take_effect_after_later_writes() {
        // Write 1 timed out; its successor process wrote 2, acknowledged; write 1 then landed
        // with a higher timestamp. Legal: write 1 is linearized after write 2.
        let mut b = Builder::new();
        b.write(WRITER, 0, 1, EventType::Info)
            .write(ProcessId(5), 0, 2, EventType::Ok)
            .read(READER, 0, Some(1))
            .final_phase()
            .read(ProcessId(6), 0, Some(1));
        assert_eq!(b.kinds(), vec![]);
    }

    #[test]
    fn a_final_read_below_the_last_acknowledged_write_is_a_lost_write() {
        let mut b = Builder::new();
        b.write(WRITER, 0, 1, EventType::Ok)
            .write(WRITER, 0, 2, EventType::Ok)
            .final_phase()
            .read(ProcessId(6), 0, Some(1));
        assert_eq!(b.kinds(), vec![ViolationKind::Lost]);
    }

    #[test]
    fn a_key_whose_final_reads_all_failed_is_unverified() {
        let mut b = Builder::new();
        b.write(WRITER, 0, 1, EventType::Ok)
            .write(WRITER, 1, 1, EventType::Info)
            .final_phase()
            .invoke_read(ProcessId(6), 0)
            .complete(ProcessId(6), EventType::Fail, None);
        // Key 1 had no acknowledged write, so nothing could be lost there.
        assert_eq!(b.kinds(), vec![ViolationKind::Unverified]);
    }

    #[test]
    fn keys_are_independent() {
        let mut b = Builder::new();
        b.write(WRITER, 0, 5, EventType::Ok)
            .write(ProcessId(3), 1, 1, EventType::Ok)
            .read(READER, 1, Some(1));
        assert_eq!(b.kinds(), vec![]);
    }

    #[test]
    #[should_panic(expected = "workload bug")]
    fn a_history_that_breaks_the_single_writer_contract_is_refused() {
        let mut b = Builder::new();
        b.write(WRITER, 0, 2, EventType::Ok)
            .write(WRITER, 0, 1, EventType::Ok);
        let _ = check(&b.h);
    }
}
