//! Probabilistically bounded staleness: the WARS model of Bailis et al., "Probabilistically
//! Bounded Staleness for Practical Partial Quorums" (VLDB 2012), against a measurement of the
//! real leaderless engine.
//!
//! ## The model (WARS)
//!
//! A coordinator sends a write to all N replicas; message `W_i` takes the write to replica `i`
//! and `A_i` brings its acknowledgement back. The write commits (is acknowledged to the client)
//! at the W-th smallest `W_i + A_i`. A read starts `t` after the commit and asks all N replicas:
//! `R_i` takes the request to replica `i`, `S_i` its response back, and the read returns the
//! first R responses by `R_i + S_i`. Replica `i` answers with the write iff the write reached it
//! before the read request did: `W_i <= commit + t + R_i` (times from the write's start). The
//! read is consistent (*t-visible*) iff any of its R responders answers with the write. The
//! probability is estimated by Monte Carlo over the same [`LatencyDistribution`] the simulator
//! samples its links from ([`wars`]).
//!
//! ## The measurement
//!
//! [`measure`] runs real [`Leaderless`] engines (N=4 nodes, a keyspace of N=3, lww) on a tiny
//! event loop: every message between engines takes a latency drawn from the distribution, a step
//! costs no time and is synced at once (no fsync delay), there are no faults, no maintenance
//! timers and no anti-entropy. Each trial writes a fresh key through node 4, which is outside
//! the key's preference list (keys are chosen so), so the coordinator holds no copy and
//! sends to all three replicas just as WARS assumes (on a 3-node cluster every node is a replica
//! and a coordinator counts its own copy at zero latency, which is a different model). When the
//! client gets the write's acknowledgement, a read of the key through the same node is scheduled
//! `t` later; the trial is consistent iff the read returns the written value. Read repair only
//! changes replicas after the read has answered, and every trial has its own key, so it cannot
//! affect any measured read.

use crate::latency::LatencyDistribution;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;
use triarch_core::{DetRng, Hlc, Instant, KeyspaceConfig, NodeId, Now, RequestId};
use triarch_leaderless::message::Message;
use triarch_leaderless::{Effect, Env, Leaderless, LeaderlessConfig, Outcome};
use triarch_storage::{SimDisk, Storage};

/// A partial-quorum configuration and its links' latency.
#[derive(Clone, Debug, PartialEq)]
pub struct PbsSetup {
    pub n: u8,
    pub r: u8,
    pub w: u8,
    /// Every link's latency, in both directions (W, A, R and S alike).
    pub latency: LatencyDistribution,
}

impl PbsSetup {
    /// N=3, R=1, W=1 with exponential links of mean `mean_micros`.
    pub fn exponential_n3_r1_w1(mean_micros: u64) -> Self {
        PbsSetup {
            n: 3,
            r: 1,
            w: 1,
            latency: LatencyDistribution::Exponential { mean_micros },
        }
    }
}

/// Consistent reads out of trials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub consistent: u64,
    pub trials: u64,
}

impl Estimate {
    pub fn p(&self) -> f64 {
        self.consistent as f64 / self.trials as f64
    }

    /// The binomial variance of one trial, `p (1 - p)`, at probability `p`, over this many
    /// trials: the variance of the estimate.
    pub fn variance_at(&self, p: f64) -> f64 {
        p * (1.0 - p) / self.trials as f64
    }
}

/// Which model [`wars`] computes: the paper's, or a deliberately wrong one (planted bugs that
/// show the comparison can fail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// WARS as defined in the paper.
    Wars,
    /// PLANTED BUG: the write never propagates past the W replicas that acknowledged it by the
    /// commit (only those may answer with it, however late the read).
    NoPropagation,
    /// PLANTED BUG: a replica's state is taken when the read starts, ignoring that the read
    /// request takes `R_i` to get there (`W_i <= commit + t`).
    NoReadDelay,
}

/// The probability that a read started `t` after the write's commit returns the write, by
/// Monte Carlo over `trials` draws of the WARS latencies from `setup.latency`.
pub fn wars(setup: &PbsSetup, model: Model, t: Duration, trials: u64, seed: u64) -> Estimate {
    let n = usize::from(setup.n);
    let (r, w) = (usize::from(setup.r), usize::from(setup.w));
    assert!(r >= 1 && w >= 1 && r <= n && w <= n);
    let t = t.as_micros() as u64;
    let mut rng = DetRng::seed_from_u64(seed);
    let draw = |rng: &mut DetRng| setup.latency.sample(rng).as_micros() as u64;
    let mut consistent = 0;
    for _ in 0..trials {
        let mut replicas: Vec<(u64, u64, u64, u64)> = (0..n)
            .map(|_| {
                (
                    draw(&mut rng),
                    draw(&mut rng),
                    draw(&mut rng),
                    draw(&mut rng),
                )
            })
            .collect();
        // Commit: the W-th fastest acknowledgement.
        let mut acks: Vec<u64> = replicas.iter().map(|&(wi, ai, _, _)| wi + ai).collect();
        acks.sort_unstable();
        let commit = acks[w - 1];
        // The first R responders; among equal arrivals the request sent first (smaller R_i)
        // answers first, as the event loop orders them.
        replicas.sort_by_key(|&(_, _, ri, si)| (ri + si, ri));
        let fresh = replicas[..r].iter().any(|&(wi, ai, ri, _)| match model {
            Model::Wars => wi <= commit + t + ri,
            Model::NoPropagation => wi + ai <= commit,
            Model::NoReadDelay => wi <= commit + t,
        });
        consistent += u64::from(fresh);
    }
    Estimate { consistent, trials }
}

/// The coordinator of every measured operation, outside each measured key's preference list.
const COORDINATOR: NodeId = NodeId(4);
const NODES: u32 = 4;
const KEYSPACE: &str = "pbs";
const WALL_CLOCK_START_MS: u64 = 1_700_000_000_000;

struct Replica {
    engine: Leaderless,
    disk: SimDisk,
    hlc: Hlc,
}

enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    StartRead,
}

/// Real leaderless engines on an event loop of virtual time (µs).
struct Harness {
    nodes: BTreeMap<NodeId, Replica>,
    keyspace: KeyspaceConfig,
    latency: LatencyDistribution,
    rng: DetRng,
    now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    replies: Vec<(u64, RequestId, Outcome)>,
}

impl Harness {
    fn new(setup: &PbsSetup, seed: u64) -> Self {
        assert!(
            u32::from(setup.n) < NODES,
            "the coordinator must hold no copy"
        );
        let members: Vec<NodeId> = (1..=NODES).map(NodeId).collect();
        let mut config = LeaderlessConfig::default();
        config.anti_entropy.enabled = false;
        let nodes = members
            .iter()
            .map(|&id| {
                let replica = Replica {
                    engine: Leaderless::new(id, &members, config.clone()),
                    disk: SimDisk::new(),
                    hlc: Hlc::new(id, 60_000),
                };
                (id, replica)
            })
            .collect();
        let mut keyspace = KeyspaceConfig::leaderless(KEYSPACE);
        (keyspace.n, keyspace.r, keyspace.w) = (setup.n, setup.r, setup.w);
        Harness {
            nodes,
            keyspace,
            latency: setup.latency.clone(),
            rng: DetRng::seed_from_u64(seed),
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            replies: Vec::new(),
        }
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    /// Runs `f` on node `id` at the current time, syncs its disk, then sends its messages
    /// (each with a fresh latency) and collects its replies.
    fn step(&mut self, id: NodeId, f: impl FnOnce(&mut Leaderless, &mut Env<'_, SimDisk>)) {
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("member");
        let mut env = Env {
            now: Now {
                instant: Instant(now),
                wall_ms: WALL_CLOCK_START_MS + now / 1_000,
            },
            storage: &mut node.disk,
            hlc: &mut node.hlc,
        };
        f(&mut node.engine, &mut env);
        node.engine.check_invariants();
        node.disk.sync().expect("sim disk sync");
        let mut effects = Vec::new();
        while let Some(effect) = node.engine.poll_effect() {
            effects.push(effect);
        }
        for effect in effects {
            match effect {
                Effect::Send { to, message } => {
                    let delay = self.latency.sample(&mut self.rng).as_micros() as u64;
                    self.schedule(
                        now + delay,
                        Event::Deliver {
                            from: id,
                            to,
                            message,
                        },
                    );
                }
                Effect::Reply { request, outcome } => self.replies.push((now, request, outcome)),
            }
        }
    }

    fn reply_to(&self, request: RequestId) -> Option<(u64, &Outcome)> {
        self.replies
            .iter()
            .find(|(_, r, _)| *r == request)
            .map(|(at, _, o)| (*at, o))
    }

    /// A key whose preference list leaves out the coordinator.
    fn key(&self, trial: u64) -> Bytes {
        let coordinator = &self.nodes[&COORDINATOR].engine;
        (0..)
            .map(|i| Bytes::from(format!("pbs-{trial}-{i}")))
            .find(|k| {
                !coordinator
                    .replicas(&self.keyspace, k)
                    .contains(&COORDINATOR)
            })
            .expect("some key skips the coordinator")
    }

    /// One trial: writes a fresh key, reads it `t` after the acknowledgement, and runs until
    /// the network is empty. Whether the read returned the write.
    fn trial(&mut self, trial: u64, t: u64) -> bool {
        let key = self.key(trial);
        let value = Bytes::from(format!("v{trial}"));
        let (write, read) = (RequestId(2 * trial), RequestId(2 * trial + 1));
        let ks = self.keyspace.clone();
        let (k, v) = (key.clone(), Some(value.clone()));
        self.step(COORDINATOR, |e, env| e.write(env, write, &ks, k, v, ks.w));
        let mut read_scheduled = false;
        while let Some(((at, _), event)) = self.events.pop_first() {
            self.now = at;
            match event {
                Event::Deliver { from, to, message } => {
                    self.step(to, |e, env| e.handle_message(env, from, message))
                }
                Event::StartRead => {
                    let k = key.clone();
                    self.step(COORDINATOR, |e, env| e.read(env, read, &ks, k, ks.r));
                }
            }
            if !read_scheduled && let Some((acked, outcome)) = self.reply_to(write) {
                assert_eq!(*outcome, Outcome::Written { existed: false });
                self.schedule(acked + t, Event::StartRead);
                read_scheduled = true;
            }
        }
        let (_, outcome) = self.reply_to(read).expect("the read answered");
        let fresh = match outcome {
            Outcome::Read { value: got } => got.as_ref() == Some(&value),
            other => panic!("read failed: {other:?}"),
        };
        self.replies.clear();
        fresh
    }
}

/// The measured probability that a read through the real engines started `t` after the write's
/// acknowledgement returns the write, over `trials` independent trials.
pub fn measure(setup: &PbsSetup, t: Duration, trials: u64, seed: u64) -> Estimate {
    let mut harness = Harness::new(setup, seed);
    let t = t.as_micros() as u64;
    let consistent = (0..trials)
        .map(|i| u64::from(harness.trial(i, t)))
        .sum::<u64>();
    Estimate { consistent, trials }
}

/// One row of a comparison: measured and modelled probability at `t`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub t: Duration,
    pub measured: Estimate,
    pub model: Estimate,
    /// The largest difference accepted ([`tolerance`]).
    pub tolerance: f64,
}

impl Row {
    pub fn difference(&self) -> f64 {
        self.measured.p() - self.model.p()
    }

    pub fn agrees(&self) -> bool {
        self.difference().abs() <= self.tolerance
    }
}

/// The modelling margin on top of sampling error: both sides draw from the same sampler, but
/// latencies are whole microseconds, and ties at a replica or the coordinator are ordered by
/// the event loop's sequence numbers (the model follows the same order, up to rare three-way
/// ties).
pub const MODEL_MARGIN: f64 = 0.005;

/// Three standard errors of the difference of the two independent estimates (binomial, at the
/// pooled probability) plus [`MODEL_MARGIN`].
pub fn tolerance(measured: &Estimate, model: &Estimate) -> f64 {
    let pooled =
        (measured.consistent + model.consistent) as f64 / (measured.trials + model.trials) as f64;
    let se = (measured.variance_at(pooled) + model.variance_at(pooled)).sqrt();
    3.0 * se + MODEL_MARGIN
}

/// Measures and models `setup` at each of `ts`.
pub fn compare(
    setup: &PbsSetup,
    model: Model,
    ts: &[Duration],
    measured_trials: u64,
    model_trials: u64,
    seed: u64,
) -> Vec<Row> {
    ts.iter()
        .enumerate()
        .map(|(i, &t)| {
            let measured = measure(setup, t, measured_trials, seed.wrapping_add(i as u64));
            let modelled = wars(setup, model, t, model_trials, !seed ^ i as u64);
            Row {
                t,
                tolerance: tolerance(&measured, &modelled),
                measured,
                model: modelled,
            }
        })
        .collect()
}

/// The rows as a table.
pub fn table(setup: &PbsSetup, rows: &[Row]) -> String {
    let mut out = format!(
        "N={} R={} W={}, every link {:?}\n{:>8}  {:>20}  {:>22}  {:>8}  {:>9}  agrees\n",
        setup.n, setup.r, setup.w, setup.latency, "t (ms)", "measured", "WARS", "diff", "tolerance"
    );
    for row in rows {
        out.push_str(&format!(
            "{:>8.1}  {:>6.4} ({:>11})  {:>6.4} ({:>13})  {:>+8.4}  {:>9.4}  {}\n",
            row.t.as_secs_f64() * 1_000.0,
            row.measured.p(),
            format!("{}/{}", row.measured.consistent, row.measured.trials),
            row.model.p(),
            format!("{}/{}", row.model.consistent, row.model.trials),
            row.difference(),
            row.tolerance,
            if row.agrees() { "yes" } else { "NO" },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn wars_at_zero_and_far_out() {
        // Known closed-form check: at W=N every replica holds the write at commit.
        let mut all = PbsSetup::exponential_n3_r1_w1(1_000);
        all.w = 3;
        assert_eq!(wars(&all, Model::Wars, ms(0), 2_000, 1).p(), 1.0);
        // R + W > N: always consistent.
        let mut strict = PbsSetup::exponential_n3_r1_w1(1_000);
        strict.r = 3;
        assert_eq!(wars(&strict, Model::Wars, ms(0), 2_000, 1).p(), 1.0);
        let weak = PbsSetup::exponential_n3_r1_w1(1_000);
        let p0 = wars(&weak, Model::Wars, ms(0), 20_000, 2).p();
        let p10 = wars(&weak, Model::Wars, ms(10), 20_000, 2).p();
        assert!(p0 > 0.34 && p0 < 0.95, "{p0}");
        assert!(p10 > 0.99, "{p10}");
    }

    #[test]
    fn measurement_is_deterministic() {
        let setup = PbsSetup::exponential_n3_r1_w1(1_000);
        assert_eq!(
            measure(&setup, ms(1), 200, 7),
            measure(&setup, ms(1), 200, 7)
        );
    }
}
