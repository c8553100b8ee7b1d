//! Histories of client operations, in Jepsen's shape.
//!
//! Every operation is two events: an `invoke` when a client process issues it, and a completion:
//! `ok` (it happened), `fail` (it certainly did not happen) or `info` (unknown: it may take effect
//! at any time after its invocation, or never). A process runs one operation at a time; after an
//! `info` it retires and a fresh process takes its place, because it can no longer know what
//! state it left behind. Events are kept in the order the simulation produced them, and that
//! order *is* real time: two events at the same virtual instant are ordered by the event queue's
//! sequence numbers, so "completed before invoked" is a comparison of indices.

use std::collections::BTreeMap;
use std::fmt;
use triarch_core::hash::mix64;
use triarch_core::{Instant, NodeId};

/// A simulated client process: issues one operation at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessId(pub u64);

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// Jepsen's event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    Invoke,
    /// The operation happened.
    Ok,
    /// The operation certainly did not happen.
    Fail,
    /// The outcome is unknown.
    Info,
}

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Function {
    Read,
    Write,
}

/// One event of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEvent {
    pub index: usize,
    pub kind: EventType,
    pub process: ProcessId,
    pub f: Function,
    /// The register (key) the operation is about.
    pub key: u64,
    /// Writes: the value written (on the invocation and the completion). Reads: `None` on the
    /// invocation; on an `ok` completion the value read (`None` = the key was absent).
    pub value: Option<u64>,
    pub time: Instant,
    /// The node the client sent the operation to.
    pub node: NodeId,
    /// Why a `fail` or `info` completion failed.
    pub error: Option<String>,
}

impl fmt::Display for HistoryEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        };
        let function = match self.f {
            Function::Read => "read",
            Function::Write => "write",
        };
        let micros = self.time.as_micros();
        write!(
            f,
            "#{:<5} {:>4}.{:06}s {:<5} {:<6} {:<5} key {:<3} ",
            self.index,
            micros / 1_000_000,
            micros % 1_000_000,
            self.process.to_string(),
            kind,
            function,
            self.key,
        )?;
        match self.value {
            Some(v) => write!(f, "value {v:<6}")?,
            None => write!(f, "value nil   ")?,
        }
        write!(f, " via {}", self.node)?;
        if let Some(e) = &self.error {
            write!(f, " ({e})")?;
        }
        Ok(())
    }
}

/// An operation: an invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub process: ProcessId,
    pub f: Function,
    pub key: u64,
    pub node: NodeId,
    /// `Ok`, `Fail` or `Info`; an operation never completed counts as `Info`.
    pub outcome: EventType,
    pub invoke_index: usize,
    /// `None`: never completed (the history ended first).
    pub complete_index: Option<usize>,
    pub invoke_time: Instant,
    pub complete_time: Option<Instant>,
    /// Writes: the value written. Reads: the value an `ok` read returned.
    pub value: Option<u64>,
}

/// A history under construction or complete. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct History {
    events: Vec<HistoryEvent>,
    /// Each process's invocation awaiting completion.
    open: BTreeMap<ProcessId, usize>,
    /// Index of the first event of the final phase (final reads after heal and settle).
    final_phase_start: Option<usize>,
}

impl History {
    pub fn new() -> Self {
        History::default()
    }

    pub fn events(&self) -> &[HistoryEvent] {
        &self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Records an invocation; returns its index. A process runs one operation at a time.
    pub fn invoke(
        &mut self,
        process: ProcessId,
        f: Function,
        key: u64,
        value: Option<u64>,
        node: NodeId,
        time: Instant,
    ) -> usize {
        assert!(
            f == Function::Write || value.is_none(),
            "a read is invoked without a value"
        );
        assert!(
            f == Function::Read || value.is_some(),
            "a write is invoked with its value"
        );
        let index = self.events.len();
        let previous = self.open.insert(process, index);
        assert!(
            previous.is_none(),
            "{process} invoked while an operation was open"
        );
        self.push(HistoryEvent {
            index,
            kind: EventType::Invoke,
            process,
            f,
            key,
            value,
            time,
            node,
            error: None,
        })
    }

    /// Records the completion of `process`'s open operation; returns its index. A write's
    /// completion carries the written value whatever `value` says; a read's carries `value` when
    /// it is `ok` and nothing otherwise.
    pub fn complete(
        &mut self,
        process: ProcessId,
        kind: EventType,
        value: Option<u64>,
        time: Instant,
        error: Option<String>,
    ) -> usize {
        assert!(
            kind != EventType::Invoke,
            "a completion is ok, fail or info"
        );
        let invoke = self
            .open
            .remove(&process)
            .unwrap_or_else(|| panic!("{process} completed with no open operation"));
        let invocation = &self.events[invoke];
        assert!(time >= invocation.time, "completion before invocation");
        let value = match (invocation.f, kind) {
            (Function::Write, _) => invocation.value,
            (Function::Read, EventType::Ok) => value,
            (Function::Read, _) => None,
        };
        let event = HistoryEvent {
            index: self.events.len(),
            kind,
            process,
            f: invocation.f,
            key: invocation.key,
            value,
            time,
            node: invocation.node,
            error,
        };
        self.push(event)
    }

    /// Shorthand for hand-built histories in tests.
    pub fn ok(&mut self, process: ProcessId, value: Option<u64>, time: Instant) -> usize {
        self.complete(process, EventType::Ok, value, time, None)
    }

    /// Completes every open operation as `info`: the history ends with their fate unknown.
    pub fn close_open(&mut self, time: Instant, reason: &str) {
        let open: Vec<ProcessId> = self.open.keys().copied().collect();
        for process in open {
            self.complete(
                process,
                EventType::Info,
                None,
                time,
                Some(reason.to_string()),
            );
        }
    }

    /// Marks the start of the final phase: reads invoked from here on are final reads.
    pub fn mark_final_phase(&mut self) {
        assert!(self.final_phase_start.is_none(), "one final phase");
        self.final_phase_start = Some(self.events.len());
    }

    pub fn final_phase_start(&self) -> Option<usize> {
        self.final_phase_start
    }

    fn push(&mut self, event: HistoryEvent) -> usize {
        if let Some(last) = self.events.last() {
            assert!(event.time >= last.time, "history time goes forward");
        }
        let index = event.index;
        self.events.push(event);
        index
    }

    /// Every operation, in invocation order.
    pub fn ops(&self) -> Vec<Op> {
        let mut ops: Vec<Op> = Vec::new();
        let mut open: BTreeMap<ProcessId, usize> = BTreeMap::new();
        for e in &self.events {
            if e.kind == EventType::Invoke {
                open.insert(e.process, ops.len());
                ops.push(Op {
                    process: e.process,
                    f: e.f,
                    key: e.key,
                    node: e.node,
                    outcome: EventType::Info,
                    invoke_index: e.index,
                    complete_index: None,
                    invoke_time: e.time,
                    complete_time: None,
                    value: e.value,
                });
            } else {
                let i = open
                    .remove(&e.process)
                    .expect("completion of an invoked operation");
                let op = &mut ops[i];
                op.outcome = e.kind;
                op.complete_index = Some(e.index);
                op.complete_time = Some(e.time);
                op.value = e.value;
            }
        }
        ops
    }

    /// Counts of completions by type: (ok, fail, info), operations never completed as info.
    pub fn outcome_counts(&self) -> (u64, u64, u64) {
        let (mut ok, mut fail, mut info) = (0, 0, 0);
        for op in self.ops() {
            match op.outcome {
                EventType::Ok => ok += 1,
                EventType::Fail => fail += 1,
                _ => info += 1,
            }
        }
        (ok, fail, info)
    }

    /// A hash of every event (stable across platforms and releases of Rust): two runs of one seed
    /// must produce the same fingerprint.
    pub fn fingerprint(&self) -> u64 {
        let mut h = mix64(self.events.len() as u64);
        let mut add = |x: u64| h = mix64(h ^ x);
        for e in &self.events {
            add(e.index as u64);
            add(e.kind as u64);
            add(e.process.0);
            add(e.f as u64);
            add(e.key);
            add(e.value.map_or(u64::MAX, |v| v ^ 0x5555));
            add(e.time.as_micros());
            add(u64::from(e.node.0));
            for b in e.error.iter().flat_map(|s| s.bytes()) {
                add(u64::from(b));
            }
        }
        h
    }

    /// The events about `key`, one per line, for failure reports.
    pub fn key_excerpt(&self, key: u64) -> String {
        let mut out = String::new();
        for e in self.events.iter().filter(|e| e.key == key) {
            out.push_str(&e.to_string());
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.events {
            if Some(e.index) == self.final_phase_start {
                writeln!(f, "--- final phase ---")?;
            }
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_invocations_with_completions_and_counts_open_ones_as_info() {
        let mut h = History::new();
        let (p1, p2) = (ProcessId(1), ProcessId(2));
        h.invoke(p1, Function::Write, 0, Some(1), NodeId(1), Instant(10));
        h.invoke(p2, Function::Read, 0, None, NodeId(2), Instant(11));
        h.ok(p1, None, Instant(12));
        let ops = h.ops();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].outcome, EventType::Ok);
        assert_eq!(
            ops[0].value,
            Some(1),
            "a write's completion carries its value"
        );
        assert_eq!(ops[1].outcome, EventType::Info);
        assert_eq!(ops[1].complete_index, None);
        assert_eq!(h.outcome_counts(), (1, 0, 1));
        h.close_open(Instant(20), "end");
        assert_eq!(h.ops()[1].complete_index, Some(3));
    }

    #[test]
    #[should_panic(expected = "open")]
    fn a_process_runs_one_operation_at_a_time() {
        let mut h = History::new();
        h.invoke(ProcessId(1), Function::Read, 0, None, NodeId(1), Instant(0));
        h.invoke(ProcessId(1), Function::Read, 0, None, NodeId(1), Instant(0));
    }

    #[test]
    fn fingerprints_tell_histories_apart() {
        let build = |v| {
            let mut h = History::new();
            h.invoke(
                ProcessId(1),
                Function::Write,
                0,
                Some(v),
                NodeId(1),
                Instant(1),
            );
            h.ok(ProcessId(1), None, Instant(2));
            h
        };
        assert_eq!(build(1).fingerprint(), build(1).fingerprint());
        assert_ne!(build(1).fingerprint(), build(2).fingerprint());
    }
}
