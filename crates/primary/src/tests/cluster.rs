//! A hand-driven cluster for scenario tests: nothing happens unless the test says so. Timers fire
//! only when a test fires them, and messages wait in `in_flight` until a test delivers, drops or
//! inspects them, so each test states exactly which server heard what.
//!
//! The driver follows the persist-then-send contract: after each step it drains the member's
//! outputs, syncs its disk, then releases them. [`Cluster::step_then_crash`] models a crash
//! between a step and its sync.

use super::{App, Member, SafetyChecker, ids};
use crate::{
    Entry, EntryData, Env, LogIndex, Message, MessageKind, Output, Raft, RaftConfig, Role, Term,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use triarch_core::{DetRng, Instant, NodeId, RequestId};
use triarch_storage::{SimDisk, Storage};

#[derive(Clone, Debug)]
pub(super) struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub message: Message,
}

pub(super) struct Cluster {
    pub members: BTreeMap<NodeId, Member>,
    pub now: Instant,
    pub in_flight: VecDeque<Envelope>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Outputs other than sends and applies, per server, in order.
    pub events: Vec<(NodeId, Output)>,
    pub checker: SafetyChecker,
}

/// The scenario tests' timing: elections after 100 to 200 ms, heartbeats every 20 ms.
pub(super) fn scenario_config(id: u32, voters: &[u32]) -> RaftConfig {
    let mut config = RaftConfig::new(NodeId(id), "test", ids(voters));
    config.election_timeout_min = Duration::from_millis(100);
    config.election_timeout_max = Duration::from_millis(200);
    config.heartbeat_interval = Duration::from_millis(20);
    // Plain Raft as in the paper; tests of the thesis extensions switch them on.
    config.pre_vote = false;
    config.check_quorum = false;
    config
}

pub(super) fn n(id: u32) -> NodeId {
    NodeId(id)
}

impl Cluster {
    /// `size` voters, plain Raft.
    pub fn new(size: u32) -> Cluster {
        Cluster::with(size, |_| {})
    }

    /// `size` voters, each configuration adjusted by `tweak`.
    pub fn with(size: u32, tweak: impl Fn(&mut RaftConfig)) -> Cluster {
        let voters: Vec<u32> = (1..=size).collect();
        let mut rng = DetRng::seed_from_u64(u64::from(size) * 1_000 + 7);
        let members = voters
            .iter()
            .map(|&id| {
                let mut config = scenario_config(id, &voters);
                tweak(&mut config);
                (n(id), Member::new(config, rng.fork(), Instant::ZERO))
            })
            .collect();
        Cluster {
            members,
            now: Instant::ZERO,
            in_flight: VecDeque::new(),
            cut: BTreeSet::new(),
            events: Vec::new(),
            checker: SafetyChecker::default(),
        }
    }

    /// Adds a server that joins an existing group (no bootstrap voters).
    pub fn add_joiner(&mut self, id: u32, tweak: impl Fn(&mut RaftConfig)) {
        let mut config = scenario_config(id, &[]);
        tweak(&mut config);
        let member = Member::new(config, DetRng::seed_from_u64(u64::from(id)), self.now);
        self.members.insert(n(id), member);
    }

    pub fn raft(&self, id: u32) -> &Raft {
        self.members[&n(id)].raft()
    }

    pub fn app(&self, id: u32) -> &App {
        &self.members[&n(id)].app
    }

    pub fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
    }

    /// Runs `f` on server `id`, then syncs its disk and releases its outputs.
    pub fn step<R>(&mut self, id: u32, f: impl FnOnce(&mut Raft, &mut Env<'_, SimDisk>) -> R) -> R {
        let member = self.members.get_mut(&n(id)).expect("known server");
        let raft = member.raft.as_mut().expect("server is up");
        let mut env = Env {
            now: self.now,
            storage: &mut member.disk,
        };
        let result = f(raft, &mut env);
        let outputs = member.drain();
        member.disk.sync().expect("sim disk syncs");
        self.release(n(id), outputs);
        result
    }

    /// Runs `f` on server `id`, then crashes it before the sync: its staged writes and its
    /// outputs are lost.
    pub fn step_then_crash(&mut self, id: u32, f: impl FnOnce(&mut Raft, &mut Env<'_, SimDisk>)) {
        let member = self.members.get_mut(&n(id)).expect("known server");
        let raft = member.raft.as_mut().expect("server is up");
        let mut env = Env {
            now: self.now,
            storage: &mut member.disk,
        };
        f(raft, &mut env);
        let _lost = member.drain();
        member.crash(0);
    }

    fn release(&mut self, from: NodeId, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, message } => {
                    self.in_flight.push_back(Envelope { from, to, message })
                }
                Output::Committed { entry } => {
                    self.checker
                        .observe_apply(from, &entry)
                        .unwrap_or_else(|v| panic!("{v}"));
                    self.members.get_mut(&from).unwrap().app.apply(entry);
                }
                Output::RestoreSnapshot { snapshot } => {
                    let app = &mut self.members.get_mut(&from).unwrap().app;
                    app.restore(&snapshot);
                    for entry in &app.applied {
                        self.checker
                            .observe_apply(from, entry)
                            .unwrap_or_else(|v| panic!("{v}"));
                    }
                }
                other => self.events.push((from, other)),
            }
        }
        let rafts = self.members.values().filter_map(|m| m.raft.as_ref());
        self.checker
            .observe_roles(rafts.clone())
            .unwrap_or_else(|v| panic!("{v}"));
        self.checker
            .check_leader_completeness(rafts.clone())
            .unwrap_or_else(|v| panic!("{v}"));
        super::check_log_matching(rafts).unwrap_or_else(|v| panic!("{v}"));
    }

    /// Fires server `id`'s timer, advancing time to it if it lies ahead.
    pub fn fire(&mut self, id: u32) {
        let deadline = self
            .raft(id)
            .poll_timeout()
            .expect("the server has a timer");
        self.now = self.now.max(deadline);
        self.step(id, |raft, env| raft.handle_timeout(env).unwrap());
    }

    fn deliverable(&self, e: &Envelope) -> bool {
        !self.cut.contains(&(e.from, e.to))
            && self.members.get(&e.to).is_some_and(|m| m.raft.is_some())
    }

    /// Delivers one message (or drops it if its link is cut or its receiver is down).
    pub fn deliver(&mut self, e: Envelope) {
        if self.deliverable(&e) {
            self.step(e.to.0, |raft, env| {
                raft.handle_message(env, e.from, e.message).unwrap()
            });
        }
    }

    /// Delivers messages, including those the deliveries produce, until none is left.
    pub fn deliver_all(&mut self) {
        self.deliver_while(|_| true);
    }

    /// Delivers the messages `select` picks, including those the deliveries produce, until it
    /// picks none; the rest stay in flight, in order.
    pub fn deliver_while(&mut self, select: impl Fn(&Envelope) -> bool) {
        for _ in 0..100_000 {
            let Some(k) = self.in_flight.iter().position(&select) else {
                return;
            };
            let e = self.in_flight.remove(k).expect("found");
            self.deliver(e);
        }
        panic!("messages never stop: a livelock");
    }

    /// Drops the messages `select` picks.
    pub fn drop_where(&mut self, select: impl Fn(&Envelope) -> bool) {
        self.in_flight.retain(|e| !select(e));
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: u32) {
        for other in self.members.keys().copied().collect::<Vec<_>>() {
            if other != n(id) {
                self.cut.insert((n(id), other));
                self.cut.insert((other, n(id)));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn crash(&mut self, id: u32) {
        self.members.get_mut(&n(id)).unwrap().crash(0);
    }

    pub fn restart(&mut self, id: u32) {
        let now = self.now;
        let member = self.members.get_mut(&n(id)).unwrap();
        member.restart(now);
        let outputs = member.drain();
        self.release(n(id), outputs);
    }

    /// Makes `id` time out, win its election (PreVote included) with everything delivered, and
    /// commit its no-op.
    pub fn elect(&mut self, id: u32) {
        self.fire(id);
        self.deliver_all();
        assert!(
            self.raft(id).is_leader(),
            "n{id} won: {:?}",
            self.raft(id).role()
        );
        assert_eq!(
            self.raft(id).term_at(self.raft(id).commit_index()),
            Some(self.raft(id).term()),
            "the new leader committed its no-op"
        );
    }

    pub fn propose(&mut self, id: u32, command: &str) -> LogIndex {
        let data = Bytes::from(command.to_string());
        self.step(id, |raft, env| {
            raft.propose(env, data).expect("the leader proposes")
        })
    }

    pub fn read_index(&mut self, id: u32, ctx: u64) {
        self.step(id, |raft, env| {
            raft.read_index(env.now, RequestId(ctx))
                .expect("the leader reads")
        });
    }

    /// One heartbeat round from leader `id`, delivered.
    pub fn heartbeat(&mut self, id: u32) {
        let interval = self.raft(id).config().heartbeat_interval;
        self.advance(interval);
        self.fire(id);
        self.deliver_all();
    }

    /// The terms of server `id`'s log, from index 1 (0 for compacted entries).
    pub fn log_terms(&self, id: u32) -> Vec<u64> {
        let raft = self.raft(id);
        (1..=raft.last_index().0)
            .map(|i| raft.term_at(LogIndex(i)).map_or(0, |t| t.0))
            .collect()
    }

    pub fn role(&self, id: u32) -> Role {
        self.raft(id).role()
    }

    pub fn term(&self, id: u32) -> Term {
        self.raft(id).term()
    }
}

/// Whether `e` carries a message of the given kind.
pub(super) fn is_vote_request(e: &Envelope) -> bool {
    matches!(e.message.kind, MessageKind::RequestVote { .. })
}

pub(super) fn is_append(e: &Envelope) -> bool {
    matches!(e.message.kind, MessageKind::Append { .. })
}

/// The application entries of an append, by command.
pub(super) fn append_commands(e: &Envelope) -> Vec<String> {
    match &e.message.kind {
        MessageKind::Append { entries, .. } => entries
            .iter()
            .filter_map(|entry: &Entry| match &entry.data {
                EntryData::Application(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
