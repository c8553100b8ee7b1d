//! Histories as JSON lines, in Jepsen's shape, and their conversion to the simulator's
//! [`triarch_sim::History`] so that its checkers judge real runs too.
//!
//! One line per event, in real-time order (the client writes each event under one lock, taking
//! its timestamp inside it, so line order is time order):
//!
//! ```json
//! {"index":0,"type":"invoke","process":3,"f":"write","key":2,"value":5,"time":1234567,"node":"n3"}
//! {"index":1,"type":"info","process":3,"f":"write","key":2,"value":5,"time":2001234567,"node":"n3","error":"timeout"}
//! {"index":9,"type":"ok","process":40,"f":"read","key":2,"value":5,"time":70001234567,"node":"n1","final":true}
//! ```
//!
//! `time` is nanoseconds of the client's monotonic clock since the main phase began, as in
//! Jepsen. `key` is the register number (the RESP key is `nemesis:<key>`). `value` is the integer
//! written (on both events of a write), or the integer an `ok` read returned (`null`: absent).
//! `final` marks the final reads, issued after the final heal and settle.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use triarch_core::{Instant, NodeId};
use triarch_sim::{EventType, Function, History, ProcessId};

/// Jepsen's event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl Kind {
    pub fn to_sim(self) -> EventType {
        match self {
            Kind::Invoke => EventType::Invoke,
            Kind::Ok => EventType::Ok,
            Kind::Fail => EventType::Fail,
            Kind::Info => EventType::Info,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum F {
    Read,
    Write,
    /// `SADD` of one element (`value`) to a cart (`--workload cart`).
    Add,
    /// `SREM` of one element (`value`) from a cart (`--workload cart`).
    Remove,
    /// `INCRBY` of a counter by `value` (`--workload counter`, `ml-counter`).
    Incr,
    /// A bank transfer of `value` from account `key` to account `to` (`--workload bank`).
    Transfer,
    /// `TRIARCH.CAS key expected value` (`--workload registers`).
    Cas,
}

impl F {
    fn to_sim(self) -> Function {
        match self {
            F::Read => Function::Read,
            // The simulator's history (statistics, latency plot) sees set updates as writes.
            F::Write | F::Add | F::Remove | F::Incr | F::Transfer | F::Cas => Function::Write,
        }
    }
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub index: usize,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub process: u64,
    pub f: F,
    pub key: u64,
    pub value: Option<u64>,
    /// Nanoseconds since the start of the main phase (monotonic).
    pub time: u64,
    /// The node the operation was sent to (`n3`).
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, rename = "final", skip_serializing_if = "is_false")]
    pub is_final: bool,
    /// An `ok` read of a cart or set (`SMEMBERS`): the elements it returned, sorted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<u64>>,
    /// A transfer's destination account (`key` is its source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// An `ok` read of a counter: its value (signed, so that a broken counter shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// An `ok` read of the whole bank: every account's balance, account `i` at index `i`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balances: Option<Vec<i64>>,
    /// A compare-and-set's expected value (`value` is the new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    /// An `ok` compare-and-set: whether it stored its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swapped: Option<bool>,
}

impl Event {
    /// An event with no workload-specific fields set (index and time are the writer's).
    pub fn new(kind: Kind, process: u64, f: F, key: u64, value: Option<u64>, node: u32) -> Event {
        Event {
            index: 0,
            kind,
            process,
            f,
            key,
            value,
            time: 0,
            node: format!("n{node}"),
            error: None,
            is_final: false,
            members: None,
            to: None,
            count: None,
            balances: None,
            expected: None,
            swapped: None,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `n3` -> 3.
pub fn parse_node(name: &str) -> Option<u32> {
    name.strip_prefix('n')?.parse().ok().filter(|&n| n > 0)
}

/// Writes events as JSON lines.
pub struct HistoryWriter<W: Write> {
    out: W,
    next_index: usize,
}

impl<W: Write> HistoryWriter<W> {
    pub fn new(out: W) -> Self {
        HistoryWriter { out, next_index: 0 }
    }

    /// Writes `event` with the next index (whatever its `index` said); returns that index.
    pub fn write(&mut self, mut event: Event) -> std::io::Result<usize> {
        event.index = self.next_index;
        self.next_index += 1;
        serde_json::to_writer(&mut self.out, &event)?;
        self.out.write_all(b"\n")?;
        Ok(event.index)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// The writer's output (tests write to a `Vec<u8>`).
    pub fn flush_into(self) -> W {
        self.out
    }
}

/// A parsed, validated history: its events as written and the simulator's view of it.
pub struct ParsedHistory {
    pub events: Vec<Event>,
    pub history: History,
}

/// Reads `history.jsonl`.
pub fn read(path: &Path) -> Result<ParsedHistory> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parse(std::io::BufReader::new(file)).with_context(|| format!("reading {}", path.display()))
}

/// Parses and validates JSON lines: indices count up from 0, time never goes back, each process
/// has at most one operation open and completes it with the same function, key and node, and the
/// final reads come last. A history that breaks these is refused with its line number rather
/// than handed to the checkers (which assume them).
pub fn parse(input: impl BufRead) -> Result<ParsedHistory> {
    let mut events = Vec::new();
    let mut history = History::new();
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last_time = 0;
    for (number, line) in input.lines().enumerate() {
        let number = number + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let e: Event =
            serde_json::from_str(&line).with_context(|| format!("line {number}: {line}"))?;
        let problem = |what: String| anyhow::anyhow!("line {number}: {what}: {line}");
        if e.index != events.len() {
            return Err(problem(format!(
                "index {} where {} was due",
                e.index,
                events.len()
            )));
        }
        if e.time < last_time {
            return Err(problem("time goes backwards".into()));
        }
        last_time = e.time;
        let Some(node) = parse_node(&e.node) else {
            return Err(problem(format!("bad node name {:?}", e.node)));
        };
        if e.is_final && history.final_phase_start().is_none() {
            history.mark_final_phase();
        }
        if !e.is_final && history.final_phase_start().is_some() {
            return Err(problem(
                "a main-phase event after the final phase began".into(),
            ));
        }
        let time = Instant::from_micros(e.time / 1_000);
        let process = ProcessId(e.process);
        if e.kind == Kind::Invoke {
            if open.contains_key(&e.process) {
                return Err(problem(format!(
                    "p{} invoked while an operation was open",
                    e.process
                )));
            }
            if (e.f != F::Read) != e.value.is_some() {
                return Err(problem(
                    "a write is invoked with its value, a read without".into(),
                ));
            }
            if (e.f == F::Transfer) != e.to.is_some() {
                return Err(problem(
                    "a transfer (and only a transfer) names `to`".into(),
                ));
            }
            open.insert(e.process, events.len());
            history.invoke(process, e.f.to_sim(), e.key, e.value, NodeId(node), time);
        } else {
            let Some(i) = open.remove(&e.process) else {
                return Err(problem(format!(
                    "p{} completed with no open operation",
                    e.process
                )));
            };
            let invoke: &Event = &events[i];
            if (invoke.f, invoke.key, &invoke.node) != (e.f, e.key, &e.node) {
                return Err(problem(format!(
                    "completion does not match its invocation (line {})",
                    i + 1
                )));
            }
            if e.f != F::Read
                && (e.value, e.to, e.expected) != (invoke.value, invoke.to, invoke.expected)
            {
                return Err(problem("a write completed with another value".into()));
            }
            if e.f == F::Cas && e.kind == Kind::Ok && e.swapped.is_none() {
                return Err(problem(
                    "an ok compare-and-set says whether it swapped".into(),
                ));
            }
            if (e.f == F::Transfer) != e.to.is_some() {
                return Err(problem(
                    "a transfer (and only a transfer) names `to`".into(),
                ));
            }
            history.complete(process, e.kind.to_sim(), e.value, time, e.error.clone());
        }
        events.push(e);
    }
    Ok(ParsedHistory { events, history })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind, process: u64, f: F, value: Option<u64>, time: u64) -> Event {
        let mut e = Event::new(kind, process, f, 1, value, 2);
        e.time = time;
        e
    }

    fn write_all(events: Vec<Event>) -> String {
        let mut w = HistoryWriter::new(Vec::new());
        for e in events {
            w.write(e).unwrap();
        }
        String::from_utf8(w.out).unwrap()
    }

    #[test]
    fn lines_have_jepsens_shape() {
        let mut info = event(Kind::Info, 3, F::Write, Some(5), 2_000);
        info.error = Some("timeout".into());
        let text = write_all(vec![event(Kind::Invoke, 3, F::Write, Some(5), 1_000), info]);
        assert_eq!(
            text,
            "{\"index\":0,\"type\":\"invoke\",\"process\":3,\"f\":\"write\",\"key\":1,\"value\":5,\
             \"time\":1000,\"node\":\"n2\"}\n\
             {\"index\":1,\"type\":\"info\",\"process\":3,\"f\":\"write\",\"key\":1,\"value\":5,\
             \"time\":2000,\"node\":\"n2\",\"error\":\"timeout\"}\n"
        );
    }

    #[test]
    fn round_trips_into_the_simulators_history() {
        let mut final_invoke = event(Kind::Invoke, 9, F::Read, None, 9_000);
        final_invoke.is_final = true;
        let mut final_ok = event(Kind::Ok, 9, F::Read, Some(1), 9_500);
        final_ok.is_final = true;
        let text = write_all(vec![
            event(Kind::Invoke, 1, F::Write, Some(1), 1_000),
            event(Kind::Invoke, 2, F::Read, None, 1_500),
            event(Kind::Ok, 1, F::Write, Some(1), 2_000),
            event(Kind::Fail, 2, F::Read, None, 3_000),
            final_invoke,
            final_ok,
        ]);
        let parsed = parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.events.len(), 6);
        assert_eq!(parsed.events[3].kind, Kind::Fail);
        let h = &parsed.history;
        assert_eq!(h.final_phase_start(), Some(4));
        assert_eq!(h.outcome_counts(), (2, 1, 0));
        let ops = h.ops();
        assert_eq!(ops[0].f, Function::Write);
        assert_eq!(ops[0].invoke_time, Instant(1));
        assert_eq!(ops[0].complete_time, Some(Instant(2)));
        assert_eq!(ops[2].node, NodeId(2));
        assert_eq!(ops[2].value, Some(1));
        assert!(triarch_sim::checker::single_writer::check(h).is_ok());
    }

    #[test]
    fn refuses_broken_histories_naming_the_line() {
        let cases = [
            (
                vec![
                    event(Kind::Invoke, 1, F::Read, None, 1),
                    event(Kind::Invoke, 1, F::Read, None, 2),
                ],
                "line 2: p1 invoked while an operation was open",
            ),
            (
                vec![event(Kind::Ok, 1, F::Read, None, 1)],
                "line 1: p1 completed with no open operation",
            ),
            (
                vec![
                    event(Kind::Invoke, 1, F::Read, None, 5),
                    event(Kind::Ok, 1, F::Read, None, 4),
                ],
                "line 2: time goes backwards",
            ),
            (
                vec![
                    event(Kind::Invoke, 1, F::Write, Some(1), 1),
                    event(Kind::Ok, 1, F::Read, None, 2),
                ],
                "line 2: completion does not match its invocation (line 1)",
            ),
            (
                vec![event(Kind::Invoke, 1, F::Write, None, 1)],
                "line 1: a write is invoked with its value",
            ),
        ];
        for (events, expected) in cases {
            let text = write_all(events);
            let e = parse(text.as_bytes()).err().expect(expected).to_string();
            assert!(e.starts_with(expected), "{e}");
        }
        let e = parse("{\"index\":0}".as_bytes()).err().unwrap();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
        let mut bad_node = event(Kind::Invoke, 1, F::Read, None, 1);
        bad_node.node = "x".into();
        assert!(parse(write_all(vec![bad_node]).as_bytes()).is_err());
    }

    #[test]
    fn a_main_phase_event_after_the_final_phase_is_refused() {
        let mut f = event(Kind::Invoke, 1, F::Read, None, 1);
        f.is_final = true;
        let text = write_all(vec![f, event(Kind::Invoke, 2, F::Read, None, 2)]);
        let e = parse(text.as_bytes()).err().unwrap().to_string();
        assert!(e.contains("after the final phase began"), "{e}");
    }

    #[test]
    fn node_names() {
        assert_eq!(parse_node("n12"), Some(12));
        assert_eq!(parse_node("n0"), None);
        assert_eq!(parse_node("12"), None);
    }
}
