//! Bounded exhaustive exploration of a three-server cluster.
//!
//! Every interleaving of the actions below is explored depth-first up to a bound: deliver any
//! message in flight (in any order, so reordering is covered; never delivering one is loss),
//! fire any server's timer (each server has its own clock, so any timer may fire at any moment),
//! propose on a leader, restart a server (memory lost; its disk, synced after every step, kept).
//! Bounds on the highest term, proposals and restarts keep the space finite. States are
//! deduplicated by a digest of the protocol state without timer values (an abstraction: two
//! states differing only in timers are explored once).
//!
//! After every action the cluster-wide checker runs: Election Safety, State Machine Safety (no
//! two servers apply different entries at one index), Leader Completeness and Log Matching; and
//! every member's `check_invariants`.

use super::{App, SafetyChecker, Violation, check_log_matching, ids};
use crate::{Env, MessageKind, Output, Raft, RaftConfig, Role};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;
use triarch_core::{DetRng, Instant, NodeId};
use triarch_storage::{SimDisk, Storage};

#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// Actions in one path.
    depth: usize,
    /// No election beyond this term.
    term_max: u64,
    proposals: u32,
    restarts: u32,
    /// Messages that may be lost.
    drops: u32,
    /// Timers fire and proposals happen only while fewer messages are in flight (deliveries
    /// are always enabled).
    messages_max: usize,
    /// Stop after visiting this many distinct states (the test asserts it was not reached
    /// when it claims exhaustiveness).
    states_max: usize,
}

impl Bounds {
    /// Deeper runs than the test suite's: `TRIARCH_MODEL_DEPTH`, `TRIARCH_MODEL_TERM_MAX`,
    /// `TRIARCH_MODEL_PROPOSALS`, `TRIARCH_MODEL_RESTARTS`, `TRIARCH_MODEL_DROPS`,
    /// `TRIARCH_MODEL_MESSAGES_MAX`, `TRIARCH_MODEL_STATES_MAX`.
    fn overridden_by_env(self) -> Bounds {
        let var = |name: &str, default: u64| {
            std::env::var(format!("TRIARCH_MODEL_{name}"))
                .map_or(default, |v| v.parse().expect("a number"))
        };
        Bounds {
            depth: var("DEPTH", self.depth as u64) as usize,
            term_max: var("TERM_MAX", self.term_max),
            proposals: var("PROPOSALS", u64::from(self.proposals)) as u32,
            restarts: var("RESTARTS", u64::from(self.restarts)) as u32,
            drops: var("DROPS", u64::from(self.drops)) as u32,
            messages_max: var("MESSAGES_MAX", self.messages_max as u64) as usize,
            states_max: var("STATES_MAX", self.states_max as u64) as usize,
        }
    }
}

#[derive(Clone)]
enum Action {
    Timeout(NodeId),
    /// Deliver `network[index]` (from, to and kind are for reading traces).
    Deliver {
        index: usize,
        from: NodeId,
        to: NodeId,
        kind: &'static str,
    },
    /// Lose `network[index]`.
    Drop {
        index: usize,
        from: NodeId,
        to: NodeId,
        kind: &'static str,
    },
    Propose(NodeId),
    Restart(NodeId),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Timeout(id) => write!(f, "timeout {id}"),
            Action::Deliver {
                index,
                from,
                to,
                kind,
            } => write!(f, "deliver #{index} {kind} {from}->{to}"),
            Action::Drop {
                index,
                from,
                to,
                kind,
            } => write!(f, "drop #{index} {kind} {from}->{to}"),
            Action::Propose(id) => write!(f, "propose at {id}"),
            Action::Restart(id) => write!(f, "restart {id}"),
        }
    }
}

/// A counterexample, one action per line.
fn render(trace: &[Action]) -> String {
    trace.iter().map(|a| format!("\n  {a}")).collect()
}

#[derive(Clone)]
struct Server {
    raft: Raft,
    disk: SimDisk,
    now: Instant,
    app: App,
    rng: DetRng,
}

#[derive(Clone)]
struct State {
    servers: Vec<Server>,
    network: Vec<(NodeId, NodeId, crate::Message)>,
    checker: SafetyChecker,
    proposals_left: u32,
    restarts_left: u32,
    drops_left: u32,
    trace: Vec<Action>,
}

fn kind_name(kind: &MessageKind) -> &'static str {
    match kind {
        MessageKind::PreVote { .. } => "PreVote",
        MessageKind::PreVoteResponse { .. } => "PreVoteResponse",
        MessageKind::RequestVote { .. } => "RequestVote",
        MessageKind::VoteResponse { .. } => "VoteResponse",
        MessageKind::Append { .. } => "Append",
        MessageKind::AppendResponse(_) => "AppendResponse",
        MessageKind::Heartbeat { .. } => "Heartbeat",
        MessageKind::HeartbeatResponse { .. } => "HeartbeatResponse",
        MessageKind::InstallSnapshot { .. } => "InstallSnapshot",
        MessageKind::TimeoutNow => "TimeoutNow",
        MessageKind::StaleTerm => "StaleTerm",
    }
}

impl State {
    fn new(tweak: impl Fn(&mut RaftConfig), bounds: Bounds) -> State {
        let servers = (1..=3)
            .map(|id| {
                let mut config = RaftConfig::new(NodeId(id), "model", ids(&[1, 2, 3]));
                config.election_timeout_min = Duration::from_millis(100);
                config.election_timeout_max = Duration::from_millis(200);
                config.heartbeat_interval = Duration::from_millis(20);
                config.pre_vote = false;
                config.check_quorum = false;
                tweak(&mut config);
                let mut disk = SimDisk::new();
                let mut rng = DetRng::seed_from_u64(u64::from(id));
                let raft = Raft::new(config, &mut disk, rng.fork(), Instant::ZERO).unwrap();
                Server {
                    raft,
                    disk,
                    now: Instant::ZERO,
                    app: App::default(),
                    rng,
                }
            })
            .collect();
        State {
            servers,
            network: Vec::new(),
            checker: SafetyChecker::default(),
            proposals_left: bounds.proposals,
            restarts_left: bounds.restarts,
            drops_left: bounds.drops,
            trace: Vec::new(),
        }
    }

    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for s in &self.servers {
            s.raft.model_digest(&mut h);
            s.app.last_index().hash(&mut h);
        }
        let mut messages: Vec<u64> = self
            .network
            .iter()
            .map(|m| {
                let mut h = DefaultHasher::new();
                m.hash(&mut h);
                h.finish()
            })
            .collect();
        messages.sort_unstable();
        messages.hash(&mut h);
        self.checker.leaders.hash(&mut h);
        self.checker.committed_in_term.hash(&mut h);
        for (index, (term, data, _)) in &self.checker.applied {
            (index, term, data).hash(&mut h);
        }
        (self.proposals_left, self.restarts_left, self.drops_left).hash(&mut h);
        h.finish()
    }

    fn actions(&self, bounds: &Bounds) -> Vec<Action> {
        let mut actions = Vec::new();
        let quiet = self.network.len() < bounds.messages_max;
        for s in &self.servers {
            let id = s.raft.id();
            let electing = s.raft.role() != Role::Leader;
            if quiet
                && s.raft.poll_timeout().is_some()
                && !(electing && s.raft.term().0 >= bounds.term_max)
            {
                actions.push(Action::Timeout(id));
            }
            if quiet && s.raft.is_leader() && self.proposals_left > 0 {
                actions.push(Action::Propose(id));
            }
            if self.restarts_left > 0 {
                actions.push(Action::Restart(id));
            }
        }
        for (k, (from, to, message)) in self.network.iter().enumerate() {
            // Identical messages lead to identical states.
            if self.network[..k]
                .iter()
                .any(|(f, t, m)| (f, t, m) == (from, to, message))
            {
                continue;
            }
            actions.push(Action::Deliver {
                index: k,
                from: *from,
                to: *to,
                kind: kind_name(&message.kind),
            });
            if self.drops_left > 0 {
                actions.push(Action::Drop {
                    index: k,
                    from: *from,
                    to: *to,
                    kind: kind_name(&message.kind),
                });
            }
        }
        actions
    }

    fn server(&mut self, id: NodeId) -> &mut Server {
        &mut self.servers[id.0 as usize - 1]
    }

    /// Applies `action`, then drains, syncs and routes outputs, then checks safety.
    fn apply(&mut self, action: &Action) -> Result<(), Violation> {
        if let Action::Drop { index, .. } = action {
            self.network.remove(*index);
            self.drops_left -= 1;
            self.trace.push(action.clone());
            return Ok(());
        }
        let id = match action {
            Action::Timeout(id) | Action::Propose(id) | Action::Restart(id) => *id,
            Action::Deliver { to, .. } => *to,
            Action::Drop { .. } => unreachable!("handled above"),
        };
        let proposal = self.proposals_left;
        let delivered = match action {
            Action::Deliver { index, .. } => Some(self.network.remove(*index).2),
            _ => None,
        };
        let server = self.server(id);
        if let Action::Restart(_) = action {
            server.disk.crash();
            server.app = App::default();
            let config = server.raft.config().clone();
            server.raft = Raft::new(config, &mut server.disk, server.rng.fork(), server.now)
                .expect("recovers");
        }
        if let Action::Timeout(_) = action {
            server.now = server
                .now
                .max(server.raft.poll_timeout().expect("has a timer"));
        }
        let mut env = Env {
            now: server.now,
            storage: &mut server.disk,
        };
        match action {
            Action::Timeout(_) => server.raft.handle_timeout(&mut env).unwrap(),
            Action::Deliver { from, .. } => server
                .raft
                .handle_message(&mut env, *from, delivered.expect("taken above"))
                .unwrap(),
            Action::Propose(_) => {
                let data = Bytes::from(format!("p{proposal}"));
                server.raft.propose(&mut env, data).unwrap();
            }
            Action::Restart(_) | Action::Drop { .. } => {}
        }
        server.raft.check_invariants();
        let outputs: Vec<Output> = std::iter::from_fn(|| server.raft.poll_output()).collect();
        server.disk.sync().unwrap();
        match action {
            Action::Propose(_) => self.proposals_left -= 1,
            Action::Restart(_) => self.restarts_left -= 1,
            _ => {}
        }
        for output in outputs {
            match output {
                Output::Send { to, message } => self.network.push((id, to, message)),
                Output::Committed { entry } => {
                    self.checker.observe_apply(id, &entry)?;
                    self.server(id).app.apply(entry);
                }
                _ => {}
            }
        }
        self.trace.push(action.clone());
        let rafts = self.servers.iter().map(|s| &s.raft);
        self.checker.observe_roles(rafts.clone())?;
        self.checker.check_leader_completeness(rafts.clone())?;
        check_log_matching(rafts)
    }
}

struct Explorer {
    bounds: Bounds,
    /// Digest -> the most remaining depth it was explored with.
    visited: BTreeMap<u64, usize>,
    truncated: bool,
    max_committed: usize,
}

impl Explorer {
    fn explore(&mut self, state: &State, depth: usize) -> Result<(), (Violation, Vec<Action>)> {
        if depth == self.bounds.depth {
            return Ok(());
        }
        let remaining = self.bounds.depth - depth - 1;
        for action in state.actions(&self.bounds) {
            let mut next = state.clone();
            if let Err(violation) = next.apply(&action) {
                return Err((violation, next.trace));
            }
            self.max_committed = self.max_committed.max(next.checker.applied.len());
            let digest = next.digest();
            if self.visited.get(&digest).is_some_and(|r| *r >= remaining) {
                continue;
            }
            if self.visited.len() >= self.bounds.states_max {
                self.truncated = true;
                return Ok(());
            }
            self.visited.insert(digest, remaining);
            self.explore(&next, depth + 1)?;
        }
        Ok(())
    }
}

fn check(
    tweak: impl Fn(&mut RaftConfig),
    bounds: Bounds,
) -> (Explorer, Result<(), (Violation, Vec<Action>)>) {
    let initial = State::new(tweak, bounds);
    let mut explorer = Explorer {
        bounds,
        visited: BTreeMap::new(),
        truncated: false,
        max_committed: 0,
    };
    let result = explorer.explore(&initial, 0);
    (explorer, result)
}

/// Election Safety, State Machine Safety (commit safety), Leader Completeness and Log Matching
/// hold in every interleaving of a three-server cluster (plain Raft: elections up to term 3,
/// one proposal, one restart), to a bounded depth.
#[test]
fn model_3_servers_every_interleaving_keeps_election_and_commit_safety() {
    let bounds = Bounds {
        depth: 18,
        term_max: 3,
        proposals: 1,
        restarts: 1,
        drops: 0,
        messages_max: 2,
        states_max: 1_000_000,
    }
    .overridden_by_env();
    let (explorer, result) = check(|_| {}, bounds);
    if let Err((violation, trace)) = result {
        panic!("{violation} after:{}", render(&trace));
    }
    eprintln!(
        "explored {} states, truncated: {}, most entries applied: {}",
        explorer.visited.len(),
        explorer.truncated,
        explorer.max_committed
    );
    assert!(
        !explorer.truncated,
        "the bounded space was explored completely"
    );
    assert!(explorer.max_committed >= 2, "paths reached commits");
}

/// The same with PreVote and CheckQuorum on.
#[test]
fn model_3_servers_with_pre_vote_and_check_quorum_keep_election_and_commit_safety() {
    let bounds = Bounds {
        depth: 16,
        term_max: 3,
        proposals: 1,
        restarts: 1,
        drops: 0,
        messages_max: 2,
        states_max: 1_000_000,
    }
    .overridden_by_env();
    let (explorer, result) = check(
        |config| {
            config.pre_vote = true;
            config.check_quorum = true;
        },
        bounds,
    );
    if let Err((violation, trace)) = result {
        panic!("{violation} after:{}", render(&trace));
    }
    eprintln!(
        "explored {} states, truncated: {}, most entries applied: {}",
        explorer.visited.len(),
        explorer.truncated,
        explorer.max_committed
    );
    assert!(
        !explorer.truncated,
        "the bounded space was explored completely"
    );
    assert!(explorer.max_committed >= 1, "paths reached commits");
}

/// One term of elections with concurrent candidates, a lost message and a restart: the space
/// where a vote or term that was not durable would elect two leaders.
#[test]
fn model_3_servers_concurrent_candidates_with_a_restart_elect_at_most_one_leader() {
    let bounds = Bounds {
        depth: 12,
        term_max: 1,
        proposals: 0,
        restarts: 1,
        drops: 1,
        messages_max: 3,
        states_max: 1_000_000,
    }
    .overridden_by_env();
    let (explorer, result) = check(|_| {}, bounds);
    if let Err((violation, trace)) = result {
        panic!("{violation} after:{}", render(&trace));
    }
    eprintln!(
        "explored {} states, truncated: {}",
        explorer.visited.len(),
        explorer.truncated
    );
    assert!(
        !explorer.truncated,
        "the bounded space was explored completely"
    );
    assert!(
        explorer.max_committed >= 1,
        "paths reached a leader's commit"
    );
}

/// A model checker must be able to fail: with the planted bug it finds a counterexample (two
/// leaders of different terms committing different entries at one index).
#[test]
fn model_finds_the_planted_commit_without_majority_bug() {
    let bounds = Bounds {
        depth: 12,
        term_max: 3,
        proposals: 0,
        restarts: 0,
        drops: 0,
        messages_max: 3,
        states_max: 400_000,
    }
    .overridden_by_env();
    let (_, result) = check(|config| config.bug_commit_without_majority = true, bounds);
    let (violation, trace) = result.expect_err("the bug is found");
    assert!(
        matches!(
            violation,
            Violation::StateMachineSafety { .. } | Violation::LeaderCompleteness { .. }
        ),
        "{violation}"
    );
    assert!(trace.len() <= bounds.depth, "{}", render(&trace));
}
