//! Workload A: single-writer registers.
//!
//! Each key has exactly one writer process at a time, writing strictly increasing integers
//! (decimal bytes); as many reader processes as keys read random keys. Every process issues one
//! operation at a time to a node chosen at random, then thinks for a random while. A process
//! whose operation ends `info` retires and a fresh process takes its role (and, for a writer, its
//! key and the continuing sequence of values). The think time is sized so that the operation
//! budget is spent over about the workload's duration.

use crate::history::{Function, ProcessId};
use std::collections::BTreeMap;
use std::time::Duration;
use triarch_core::{DetRng, RequestId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Writer {
        key: u64,
    },
    Reader,
    /// Issues one read in the final phase and stops.
    FinalReader,
}

#[derive(Clone, Debug)]
pub(crate) struct Process {
    pub role: Role,
    /// The request this process awaits, if any.
    pub waiting: Option<RequestId>,
}

/// The next operation a process issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlannedOp {
    pub f: Function,
    pub key: u64,
    pub value: Option<u64>,
    /// Index into the members of the node to send it to.
    pub node_index: usize,
}

pub(crate) struct Workload {
    rng: DetRng,
    keys: u64,
    nodes: usize,
    processes: BTreeMap<ProcessId, Process>,
    next_process: u64,
    /// The next value each key's writer writes.
    next_value: Vec<u64>,
    ops_budget: u64,
    ops_invoked: u64,
    think_max_micros: u64,
}

impl Workload {
    pub fn new(keys: u64, nodes: usize, ops: u64, duration: Duration, rng: DetRng) -> Self {
        assert!(keys >= 1 && nodes >= 1 && ops >= 1);
        let mut w = Workload {
            rng,
            keys,
            nodes,
            processes: BTreeMap::new(),
            next_process: 0,
            next_value: vec![1; keys as usize],
            ops_budget: ops,
            ops_invoked: 0,
            think_max_micros: 0,
        };
        for key in 0..keys {
            w.spawn(Role::Writer { key });
        }
        for _ in 0..keys {
            w.spawn(Role::Reader);
        }
        // Mean think time = processes * duration / ops (operations themselves take ~ms).
        let mean = duration.as_micros() as u64 * w.processes.len() as u64 / ops;
        w.think_max_micros = (2 * mean).max(1);
        w
    }

    fn spawn(&mut self, role: Role) -> ProcessId {
        let id = ProcessId(self.next_process);
        self.next_process += 1;
        self.processes.insert(
            id,
            Process {
                role,
                waiting: None,
            },
        );
        id
    }

    /// Every process of the main phase with its first wake-up delay.
    pub fn start(&mut self) -> Vec<(ProcessId, Duration)> {
        let ids: Vec<ProcessId> = self.processes.keys().copied().collect();
        ids.into_iter().map(|p| (p, self.think_time())).collect()
    }

    pub fn think_time(&mut self) -> Duration {
        Duration::from_micros(self.rng.below(self.think_max_micros))
    }

    pub fn process(&self, id: ProcessId) -> Option<&Process> {
        self.processes.get(&id)
    }

    /// The next operation of `id`, or `None` when the budget is spent (or the process is gone).
    pub fn next_op(&mut self, id: ProcessId) -> Option<PlannedOp> {
        if self.ops_invoked >= self.ops_budget {
            return None;
        }
        let process = self.processes.get(&id)?;
        assert!(
            process.waiting.is_none(),
            "{id} issues one operation at a time"
        );
        let op = match process.role {
            Role::Writer { key } => {
                let value = self.next_value[key as usize];
                self.next_value[key as usize] += 1;
                PlannedOp {
                    f: Function::Write,
                    key,
                    value: Some(value),
                    node_index: self.rng.below(self.nodes as u64) as usize,
                }
            }
            Role::Reader => PlannedOp {
                f: Function::Read,
                key: self.rng.below(self.keys),
                value: None,
                node_index: self.rng.below(self.nodes as u64) as usize,
            },
            Role::FinalReader => return None,
        };
        self.ops_invoked += 1;
        Some(op)
    }

    pub fn set_waiting(&mut self, id: ProcessId, request: Option<RequestId>) {
        self.processes.get_mut(&id).expect("a live process").waiting = request;
    }

    /// `id`'s last operation ended `info`: it retires. Returns the fresh process that takes its
    /// role, if the role continues (final readers do not).
    pub fn retire(&mut self, id: ProcessId) -> Option<ProcessId> {
        let process = self.processes.remove(&id).expect("a live process");
        match process.role {
            Role::FinalReader => None,
            role => Some(self.spawn(role)),
        }
    }

    /// A process for one final read.
    pub fn final_reader(&mut self) -> ProcessId {
        self.spawn(Role::FinalReader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_continue_their_key_sequence_across_retirement() {
        let mut w = Workload::new(2, 3, 100, Duration::from_secs(10), DetRng::seed_from_u64(1));
        let writer = ProcessId(1);
        assert_eq!(w.process(writer).unwrap().role, Role::Writer { key: 1 });
        assert_eq!(w.next_op(writer).unwrap().value, Some(1));
        let fresh = w.retire(writer).unwrap();
        assert!(w.process(writer).is_none());
        assert_eq!(w.process(fresh).unwrap().role, Role::Writer { key: 1 });
        assert_eq!(w.next_op(fresh).unwrap().value, Some(2));
    }

    #[test]
    fn the_budget_bounds_the_operations() {
        let mut w = Workload::new(1, 3, 3, Duration::from_secs(1), DetRng::seed_from_u64(1));
        let reader = ProcessId(1);
        assert!((0..3).all(|_| w.next_op(reader).is_some()));
        assert_eq!(w.next_op(reader), None);
    }
}
