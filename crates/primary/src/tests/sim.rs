//! Seeded simulation of whole clusters under faults.
//!
//! A seed decides everything: the configuration (PreVote, CheckQuorum, batch and window sizes),
//! message latency (hence reordering), loss and duplication, partitions (one-way too), crashes
//! that lose unsynced writes (keeping a random prefix of them, as fjall's journal may), restarts,
//! and a client that proposes, reads, compacts, changes membership and transfers leadership.
//! Five servers exist; three start as voters and two as joiners that membership changes may add:
//! on half the seeds directly as voters, on the other half as learners (thesis §4.2.1) that are
//! then promoted (once caught up) or removed, so that a voter can be removed in turn.
//!
//! The driver follows persist-then-send exactly: a step's outputs wait for the next sync of its
//! server's disk (one sync covers every step before it: group commit); a crash drops them with
//! the unsynced writes. After every step the cluster-wide checker runs (Election Safety, Leader
//! Completeness, State Machine Safety on every apply, Log Matching periodically). A safety phase
//! is followed by a liveness phase: faults stop, the network heals, and a new command must be
//! committed and applied by every voter.
//!
//! `TRIARCH_RAFT_SEED=<n>` replays one seed; `TRIARCH_RAFT_SEEDS=<count>` runs a longer soak.

use super::{App, Member, SafetyChecker, Violation, check_log_matching, ids};
use crate::{Env, MembershipChange, Message, Output, Raft, RaftConfig};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use triarch_core::{DetRng, Instant, NodeId, RequestId};
use triarch_storage::{SimDisk, Storage};

const SERVERS: u32 = 5;
const INITIAL_VOTERS: [u32; 3] = [1, 2, 3];
/// Events in the safety phase of one seed.
const SAFETY_EVENTS: usize = 20_000;
/// With crashes on, the chance that a server crashes at a given sync instead of completing it.
const CRASH_AT_SYNC_CHANCE: f64 = 0.002;
/// Virtual time the healed cluster gets to commit a command everywhere.
const LIVENESS_BOUND: Duration = Duration::from_secs(30);

/// A deliberately broken Raft, to show that the checkers catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Planted {
    None,
    /// `RaftConfig::bug_commit_without_majority`.
    CommitWithoutMajority,
    /// `RaftConfig::bug_learner_counts_toward_commit` (the seed always uses learners).
    LearnerCountsTowardCommit,
}

#[derive(Clone, Copy, Debug)]
struct Faults {
    loss: f64,
    duplication: f64,
    latency_us_max: u64,
    crashes: bool,
    partitions: bool,
}

struct Server {
    member: Member,
    /// Outputs of steps since the last sync, released by the next one.
    held: Vec<Output>,
    sync_pending: bool,
    incarnation: u64,
    /// Set while crashed: when it restarts.
    restart_at: Option<Instant>,
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    Sync {
        server: NodeId,
        incarnation: u64,
    },
}

struct Sim {
    seed: u64,
    rng: DetRng,
    now: Instant,
    faults: Faults,
    servers: BTreeMap<NodeId, Server>,
    queue: BTreeMap<(Instant, u64), Event>,
    queue_seq: u64,
    /// Directed links that drop everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    checker: SafetyChecker,
    next_client_at: Instant,
    next_nemesis_at: Instant,
    commands: u64,
    reads: u64,
    steps: u64,
    membership_changes: u64,
    /// New servers join as learners, then are promoted.
    learners: bool,
    promotions: u64,
}

impl Sim {
    fn new(seed: u64, planted: Planted) -> Sim {
        let mut rng = DetRng::seed_from_u64(seed);
        let pre_vote = rng.chance(0.5);
        let check_quorum = rng.chance(0.5);
        let entries_per_append_max = rng.between(1, 8) as usize;
        let appends_in_flight_max = rng.between(1, 4) as usize;
        let append_bytes_max = [16, 1 << 20][rng.below(2) as usize];
        let faults = Faults {
            loss: [0.0, 0.01, 0.05, 0.2][rng.below(4) as usize],
            duplication: [0.0, 0.02, 0.1][rng.below(3) as usize],
            latency_us_max: [1_000, 10_000, 40_000][rng.below(3) as usize],
            crashes: rng.chance(0.7),
            partitions: rng.chance(0.7),
        };
        let learners = rng.chance(0.5) || planted == Planted::LearnerCountsTowardCommit;
        // How far behind a learner may be promoted: 0 refuses most promotions under load.
        let learner_promotion_lag_entries_max = [0, 8, 64][rng.below(3) as usize];
        let servers = (1..=SERVERS)
            .map(|id| {
                let voters = if INITIAL_VOTERS.contains(&id) {
                    ids(&INITIAL_VOTERS)
                } else {
                    BTreeSet::new()
                };
                let mut config = RaftConfig::new(NodeId(id), "sim", voters);
                config.election_timeout_min = Duration::from_millis(150);
                config.election_timeout_max = Duration::from_millis(300);
                config.heartbeat_interval = Duration::from_millis(30);
                config.pre_vote = pre_vote;
                config.check_quorum = check_quorum;
                config.entries_per_append_max = entries_per_append_max;
                config.appends_in_flight_max = appends_in_flight_max;
                config.append_bytes_max = append_bytes_max;
                config.learner_promotion_lag_entries_max = learner_promotion_lag_entries_max;
                config.bug_commit_without_majority = planted == Planted::CommitWithoutMajority;
                config.bug_learner_counts_toward_commit =
                    planted == Planted::LearnerCountsTowardCommit;
                let server = Server {
                    member: Member::new(config, rng.fork(), Instant::ZERO),
                    held: Vec::new(),
                    sync_pending: false,
                    incarnation: 0,
                    restart_at: None,
                };
                (NodeId(id), server)
            })
            .collect();
        Sim {
            seed,
            rng,
            now: Instant::ZERO,
            faults,
            servers,
            queue: BTreeMap::new(),
            queue_seq: 0,
            blocked: BTreeSet::new(),
            checker: SafetyChecker::default(),
            next_client_at: Instant::ZERO + Duration::from_millis(50),
            next_nemesis_at: Instant::ZERO + Duration::from_millis(500),
            commands: 0,
            reads: 0,
            steps: 0,
            membership_changes: 0,
            learners,
            promotions: 0,
        }
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.queue_seq += 1;
        self.queue.insert((at, self.queue_seq), event);
    }

    fn up(&self) -> impl Iterator<Item = &Raft> + Clone {
        self.servers.values().filter_map(|s| s.member.raft.as_ref())
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.up()
            .filter(|r| r.is_leader())
            .map(|r| r.id())
            .collect()
    }

    /// Runs `f` on `id` if it is up, holds its outputs for the next sync, and checks safety.
    fn step<R>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut Raft, &mut Env<'_, SimDisk>) -> R,
    ) -> Result<Option<R>, Violation> {
        let now = self.now;
        let server = self.servers.get_mut(&id).expect("known server");
        let Some(raft) = server.member.raft.as_mut() else {
            return Ok(None);
        };
        let mut env = Env {
            now,
            storage: &mut server.member.disk,
        };
        let result = f(raft, &mut env);
        let outputs = server.member.drain();
        let mut early = Vec::new();
        for output in outputs {
            match output {
                Output::Send { to, message } if message.may_precede_sync() => {
                    early.push((to, message))
                }
                other => server.held.push(other),
            }
        }
        let needs_sync = !server.sync_pending;
        server.sync_pending = true;
        let incarnation = server.incarnation;
        if needs_sync {
            let at = now + Duration::from_micros(self.rng.between(20, 400));
            self.schedule(
                at,
                Event::Sync {
                    server: id,
                    incarnation,
                },
            );
        }
        for (to, message) in early {
            self.send(id, to, message);
        }
        self.steps += 1;
        let up = self.servers.values().filter_map(|s| s.member.raft.as_ref());
        self.checker.observe_roles(up)?;
        self.checker.check_leader_completeness(self.up())?;
        if self.steps.is_multiple_of(32) {
            check_log_matching(self.up())?;
        }
        Ok(Some(result))
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        if self.rng.chance(self.faults.loss) {
            return;
        }
        let copies = if self.rng.chance(self.faults.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let latency = self.rng.between(100, self.faults.latency_us_max);
            let at = self.now + Duration::from_micros(latency);
            let message = message.clone();
            self.schedule(at, Event::Deliver { from, to, message });
        }
    }

    /// The sync completes: staged writes are durable, and the held outputs go. Or the server
    /// crashes just before, losing them: the window persist-then-send exists for.
    fn sync(&mut self, id: NodeId) -> Result<(), Violation> {
        if self.faults.crashes && self.rng.chance(CRASH_AT_SYNC_CHANCE) {
            self.crash(id);
            return Ok(());
        }
        let server = self.servers.get_mut(&id).expect("known server");
        server.member.disk.sync().expect("sim disk syncs");
        server.sync_pending = false;
        let outputs = std::mem::take(&mut server.held);
        for output in outputs {
            match output {
                Output::Send { to, message } => self.send(id, to, message),
                Output::Committed { entry } => {
                    self.checker.observe_apply(id, &entry)?;
                    self.app_mut(id).apply(entry);
                }
                Output::RestoreSnapshot { snapshot } => {
                    let app = self.app_mut(id);
                    app.restore(&snapshot);
                    let applied = app.applied.clone();
                    for entry in &applied {
                        self.checker.observe_apply(id, entry)?;
                    }
                }
                Output::ReadReady { index, .. } => {
                    // Every entry up to the read index was emitted before this output.
                    assert!(
                        self.app_mut(id).last_index() >= index,
                        "read index not applied"
                    );
                }
                Output::ReadFailed { .. }
                | Output::LeaderChanged { .. }
                | Output::SnapshotWanted => {}
            }
        }
        Ok(())
    }

    fn app_mut(&mut self, id: NodeId) -> &mut App {
        &mut self.servers.get_mut(&id).expect("known server").member.app
    }

    fn crash(&mut self, id: NodeId) {
        // Half the restarts are quick enough to land within the same election.
        let restart_in = if self.rng.chance(0.5) {
            Duration::from_micros(self.rng.between(500, 20_000))
        } else {
            Duration::from_millis(self.rng.between(20, 600))
        };
        let server = self.servers.get_mut(&id).expect("known server");
        let unsynced = server.member.disk.unsynced_writes() as u64;
        let keep = self.rng.below(unsynced + 1) as usize;
        server.member.crash(keep);
        server.held.clear();
        server.sync_pending = false;
        server.incarnation += 1;
        server.restart_at = Some(self.now + restart_in);
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        let now = self.now;
        let server = self.servers.get_mut(&id).expect("known server");
        server.restart_at = None;
        server.member.restart(now);
        // Restart outputs (a snapshot to restore) go through a sync like any other.
        self.step(id, |_, _| ())?;
        Ok(())
    }

    /// A random client operation.
    fn client(&mut self) -> Result<(), Violation> {
        let up: Vec<NodeId> = self.up().map(|r| r.id()).collect();
        if up.is_empty() {
            return Ok(());
        }
        let leaders = self.leaders();
        let target = if !leaders.is_empty() && self.rng.chance(0.9) {
            leaders[self.rng.below(leaders.len() as u64) as usize]
        } else {
            up[self.rng.below(up.len() as u64) as usize]
        };
        let roll = self.rng.below(100);
        if roll < 65 {
            self.commands += 1;
            let data = Bytes::from(format!("s{}c{}", self.seed, self.commands));
            self.step(target, |raft, env| {
                let _ = raft.propose(env, data);
            })?;
        } else if roll < 80 {
            self.reads += 1;
            let ctx = RequestId(self.reads);
            self.step(target, |raft, env| {
                let _ = raft.read_index(env.now, ctx);
            })?;
        } else if roll < 88 {
            let server = &self.servers[&target];
            let applied = server.member.app.last_index();
            let snapshot_index = server.member.raft().snapshot().index;
            if applied.distance_from(snapshot_index) >= 5 {
                let data = server.member.app.snapshot_data(applied);
                self.step(target, |raft, env| {
                    raft.compact(env, applied, data).unwrap()
                })?;
            }
        } else if roll < 94 {
            let raft = self.servers[&target].member.raft();
            let voters = raft.voters().clone();
            let learners = raft.learners().clone();
            let node = NodeId(self.rng.between(1, u64::from(SERVERS)) as u32);
            let change = if voters.contains(&node) {
                (voters.len() > 3).then_some(MembershipChange::RemoveVoter(node))
            } else if learners.contains(&node) {
                Some(if self.rng.chance(0.8) {
                    MembershipChange::PromoteLearner(node)
                } else {
                    MembershipChange::RemoveLearner(node)
                })
            } else if self.learners {
                Some(MembershipChange::AddLearner(node))
            } else {
                Some(MembershipChange::AddVoter(node))
            };
            if let Some(change) = change {
                let done = self.step(target, |raft, env| {
                    raft.change_membership(env, change).is_ok()
                })?;
                let done = done == Some(true);
                self.membership_changes += u64::from(done);
                self.promotions +=
                    u64::from(done && matches!(change, MembershipChange::PromoteLearner(_)));
            }
        } else {
            let to = NodeId(self.rng.between(1, u64::from(SERVERS)) as u32);
            self.step(target, |raft, env| {
                let _ = raft.transfer_leadership(env.now, to);
            })?;
        }
        Ok(())
    }

    /// A random fault: partition, heal, or crash.
    fn nemesis(&mut self) {
        let roll = self.rng.below(100);
        if roll < 35 && self.faults.partitions {
            self.blocked.clear();
            let side: BTreeMap<NodeId, bool> = self
                .servers
                .keys()
                .map(|id| (*id, self.rng.chance(0.5)))
                .collect();
            let one_way = self.rng.chance(0.2);
            for (a, sa) in &side {
                for (b, sb) in &side {
                    if sa != sb && (!one_way || *sa) {
                        self.blocked.insert((*a, *b));
                    }
                }
            }
        } else if roll < 65 {
            self.blocked.clear();
        } else if roll < 85 && self.faults.crashes {
            let up: Vec<NodeId> = self.up().map(|r| r.id()).collect();
            if !up.is_empty() {
                let id = up[self.rng.below(up.len() as u64) as usize];
                self.crash(id);
            }
        }
    }

    /// Processes the next event; `faults` enables the client-and-nemesis schedule.
    fn next(&mut self, faults: bool) -> Result<(), Violation> {
        let timer = self
            .up()
            .filter_map(|r| r.poll_timeout().map(|t| (t, r.id())))
            .min();
        let restart = self
            .servers
            .iter()
            .filter_map(|(id, s)| s.restart_at.map(|t| (t, *id)))
            .min();
        let queued = self.queue.first_key_value().map(|(k, _)| k.0);
        let mut at = [timer.map(|t| t.0), restart.map(|r| r.0), queued]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.now);
        if faults {
            at = at.min(self.next_client_at).min(self.next_nemesis_at);
        }
        self.now = self.now.max(at);
        if faults && self.next_client_at <= self.now {
            self.next_client_at = self.now + Duration::from_millis(self.rng.between(1, 20));
            return self.client();
        }
        if faults && self.next_nemesis_at <= self.now {
            self.next_nemesis_at = self.now + Duration::from_millis(self.rng.between(50, 800));
            self.nemesis();
            return Ok(());
        }
        if let Some((t, id)) = restart
            && t <= self.now
        {
            return self.restart(id);
        }
        if let Some((t, _)) = self.queue.first_key_value().map(|(k, _)| *k)
            && t <= self.now
        {
            let (_, event) = self.queue.pop_first().expect("non-empty");
            return match event {
                Event::Deliver { from, to, message } => {
                    if self.blocked.contains(&(from, to)) {
                        return Ok(());
                    }
                    self.step(to, |raft, env| {
                        raft.handle_message(env, from, message).unwrap()
                    })
                    .map(|_| ())
                }
                Event::Sync {
                    server,
                    incarnation,
                } => {
                    if self.servers[&server].incarnation != incarnation {
                        return Ok(());
                    }
                    self.sync(server)
                }
            };
        }
        if let Some((t, id)) = timer
            && t <= self.now
        {
            return self
                .step(id, |raft, env| raft.handle_timeout(env).unwrap())
                .map(|_| ());
        }
        Ok(())
    }

    /// Safety phase then liveness phase.
    fn run(&mut self, safety_events: usize) -> Result<(), Violation> {
        for _ in 0..safety_events {
            self.next(true)?;
        }
        check_log_matching(self.up())?;
        // Liveness: faults stop, everything heals and restarts.
        self.blocked.clear();
        self.faults.loss = 0.0;
        let down: Vec<NodeId> = self
            .servers
            .iter()
            .filter(|(_, s)| s.member.raft.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in down {
            self.restart(id)?;
        }
        let deadline = self.now + LIVENESS_BOUND;
        let marker = format!("s{}final", self.seed);
        let mut next_try = self.now;
        while self.now < deadline {
            if self.now >= next_try {
                next_try = self.now + Duration::from_millis(500);
                if let Some(leader) = self.leaders().first().copied() {
                    let data = Bytes::from(marker.clone());
                    self.step(leader, |raft, env| {
                        let _ = raft.propose(env, data);
                    })?;
                }
            }
            self.next(false)?;
            if self.everyone_applied(&marker) {
                check_log_matching(self.up())?;
                return Ok(());
            }
            if self.queue.is_empty() && self.up().all(|r| r.poll_timeout().is_none()) {
                break;
            }
        }
        Err(Violation::NoProgress {
            detail: format!(
                "no command committed everywhere within {LIVENESS_BOUND:?} of healing; leaders: {:?}",
                self.leaders()
            ),
        })
    }

    fn everyone_applied(&self, marker: &str) -> bool {
        let Some(leader) = self.up().find(|r| r.is_leader()) else {
            return false;
        };
        // Learners too: they must catch up once the faults stop.
        leader.voters().iter().chain(leader.learners()).all(|id| {
            self.servers[id]
                .member
                .app
                .commands()
                .iter()
                .any(|c| c == marker)
        })
    }
}

/// The seeds to run: `TRIARCH_RAFT_SEED=<n>` replays one, `TRIARCH_RAFT_SEEDS=<count>` runs
/// seeds `0..count` (a longer soak than the default).
fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    let var = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name} is a number"))
        })
    };
    match (var("TRIARCH_RAFT_SEED"), var("TRIARCH_RAFT_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, Some(count)) => (0..count).collect(),
        (None, None) => default.collect(),
    }
}

/// Figure 3's Election Safety, Leader Completeness, Log Matching and State Machine Safety hold
/// in every step of many seeded runs with loss, duplication, reordering, partitions, crashes
/// losing unsynced writes, compaction, membership changes and transfers; and each healed
/// cluster commits again (liveness).
#[test]
fn sim_random_faults_never_break_safety_and_a_healed_cluster_makes_progress() {
    let mut totals = (0, 0, 0, 0);
    for seed in seeds(0..100) {
        let mut sim = Sim::new(seed, Planted::None);
        let faults = sim.faults;
        if let Err(violation) = sim.run(SAFETY_EVENTS) {
            panic!(
                "seed {seed}: {violation} (faults {faults:?}); reproduce with TRIARCH_RAFT_SEED={seed}"
            );
        }
        eprintln!(
            "seed {seed}: applied {} steps {} commands {} reads {} membership {} (learners {}, promotions {}) virtual {:?} faults {:?}",
            sim.checker.applied_count(),
            sim.steps,
            sim.commands,
            sim.reads,
            sim.membership_changes,
            sim.learners,
            sim.promotions,
            Duration::from_micros(sim.now.as_micros()),
            faults
        );
        totals.0 += sim.checker.applied_count();
        totals.1 += sim.membership_changes;
        totals.2 += sim.steps;
        totals.3 += sim.promotions;
    }
    // The runs did something: entries were applied, configurations changed, learners were
    // promoted (in a replay of one seed, any of these may be zero).
    if seeds(0..100).len() > 1 {
        assert!(totals.0 > 1_000, "applied {totals:?}");
        assert!(totals.1 > 10, "membership changes {totals:?}");
        assert!(totals.3 > 5, "promotions {totals:?}");
    }
}

/// A test must be able to fail: with the planted bug (a leader commits what it alone holds),
/// the checker finds a safety violation within a few seeds.
#[test]
fn sim_the_checker_catches_a_planted_commit_without_majority_bug() {
    let mut caught = Vec::new();
    for seed in 0..20 {
        let mut sim = Sim::new(seed, Planted::CommitWithoutMajority);
        match sim.run(SAFETY_EVENTS) {
            Err(v @ Violation::NoProgress { .. }) => panic!("seed {seed}: unexpected {v}"),
            Err(v) => caught.push((seed, v)),
            Ok(()) => {}
        }
        if caught.len() >= 3 {
            return;
        }
    }
    panic!("the planted bug went unnoticed; caught: {caught:?}");
}

/// A test must be able to fail, with learners too: with the planted bug (a leader counts
/// learners' copies toward its commit quorum), some seed that runs membership changes through
/// learners breaks a safety property the checker sees.
#[test]
fn sim_the_checker_catches_a_planted_learner_counted_toward_commit_bug() {
    let mut caught = Vec::new();
    for seed in 0..50 {
        let mut sim = Sim::new(seed, Planted::LearnerCountsTowardCommit);
        match sim.run(SAFETY_EVENTS) {
            Err(v @ Violation::NoProgress { .. }) => panic!("seed {seed}: unexpected {v}"),
            Err(v) => caught.push((seed, v)),
            Ok(()) => {}
        }
        if caught.len() >= 2 {
            eprintln!("caught: {caught:?}");
            return;
        }
    }
    panic!("the planted bug went unnoticed; caught: {caught:?}");
}
