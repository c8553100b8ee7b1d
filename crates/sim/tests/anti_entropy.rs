//! Seeded simulation of anti-entropy under every fault the nemesis knows (partitions, one-way
//! links, loss, duplication, crashes that lose unsynced writes, clock skew): the register
//! workload on `default` (lww) and the counter workload on `hits`, both N=3, R=2, W=2 on five
//! nodes, strict quorums, with Merkle-tree anti-entropy every second
//! ([`triarch_leaderless::anti_entropy`]).
//!
//! These runs skip the final reads ([`Simulation::anti_entropy_only`]): after the final heal no
//! client reads anything, so no read repair runs, and replicas that missed writes during the
//! faults converge through anti-entropy or not at all.
//!
//! Every seed must show:
//!
//! 1. **Converged by anti-entropy** ([`CONVERGED`]): [`SETTLE`] (5 s) after the final heal,
//!    every replica of every key holds the identical record (state, for counters), checked
//!    on the disks with the convergence checker. The report's own convergence checker judges the
//!    disks again [`FINAL_READ_SETTLE`] later.
//! 2. **Nothing acknowledged lost** ([`KEPT`]), on the disks at the end: for registers, the
//!    replicas' newest value of each key is the last acknowledged write, a later attempted one,
//!    or an earlier `info` write (which may take effect after later writes, exactly as the
//!    single-writer checker's rule 2 allows), never a failed write's nor an older acknowledged
//!    one; for counters, each replica's value lies between the sum of the acknowledged
//!    increments and the sum of the attempted ones.
//! 3. **No client read after the heal** ([`NO_READS`]): the convergence is anti-entropy's.
//! 4. The report's checkers (single-writer registers or counters, and convergence), with
//!    nothing excused but the counter checker's `unverified`: it wants final reads, which
//!    these runs skip (rule 2 judges the counters on the disks instead).
//!
//! The checks are trusted because each catches something: without anti-entropy some early seed
//! fails rule 1, and so does each of anti-entropy's planted bugs (trees that do not follow
//! overwrites; ranges nobody compares).
//!
//! - `TRIARCH_SIM_SEEDS=N` runs N seeds of each workload instead of 1,000.
//! - `TRIARCH_SIM_SEED=S` (with `TRIARCH_SIM_WORKLOAD=registers|counters`, default registers)
//!   replays seed S alone and prints its timeline, the anti-entropy counters and the history of
//!   every key a rule complained about.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;
use triarch_core::Instant;
use triarch_leaderless::anti_entropy::AntiEntropyConfig;
use triarch_leaderless::state::{State, View};
use triarch_leaderless::{KeyspaceStats, LeaderlessConfig};
use triarch_sim::checker::{convergence, counter};
use triarch_sim::testing::{env_u64, stopwatch};
use triarch_sim::{
    EventType, Function, MergedFunction, MergedWorkload, SETTLE, SeedReport, SimOptions,
    Simulation, ViolationKind,
};

/// Rule 1's name in reports.
const CONVERGED: &str = "converged by anti-entropy";
/// Rule 2's name in reports.
const KEPT: &str = "nothing acknowledged lost";
/// Rule 3's name in reports.
const NO_READS: &str = "no client read after the heal";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Registers,
    Counters,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Registers => "registers",
            Workload::Counters => "counters",
        }
    }

    fn merged(self) -> Option<MergedWorkload> {
        match self {
            Workload::Registers => None,
            Workload::Counters => Some(MergedWorkload::Counter),
        }
    }

    fn keyspace(self) -> &'static str {
        match self {
            Workload::Registers => "default",
            Workload::Counters => "hits",
        }
    }
}

/// Anti-entropy every second, four exchanges in flight per node.
fn config(anti_entropy: AntiEntropyConfig) -> LeaderlessConfig {
    LeaderlessConfig {
        anti_entropy,
        ..LeaderlessConfig::default()
    }
}

fn fast() -> AntiEntropyConfig {
    AntiEntropyConfig {
        exchange_interval: Duration::from_secs(1),
        exchanges_in_flight_max: 4,
        exchange_timeout: Duration::from_secs(2),
        ..AntiEntropyConfig::default()
    }
}

/// What one seed showed.
struct Verdict {
    seed: u64,
    workload: Workload,
    problems: Vec<String>,
    keys: BTreeSet<u64>,
    ok: u64,
    events: u64,
    /// Summed over the nodes running at the end (counters restart with a node, so these
    /// undercount).
    stats: KeyspaceStats,
}

impl Verdict {
    fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    fn replay_command(&self) -> String {
        format!(
            "TRIARCH_SIM_SEED={} TRIARCH_SIM_WORKLOAD={} cargo test -p triarch-sim --test \
             anti_entropy -- --nocapture anti_entropy_{}_seeds",
            self.seed,
            self.workload.name(),
            self.workload.name()
        )
    }

    fn describe(&self) -> String {
        let s = &self.stats;
        let mut out = format!(
            "seed {} ({}) {}: {} ok; {} events; ranges compared {}, in sync {}; keys repaired {}; \
             {} bytes sent",
            self.seed,
            self.workload.name(),
            if self.passed() { "PASS" } else { "FAIL" },
            self.ok,
            self.events,
            s.anti_entropy_ranges_compared,
            s.anti_entropy_ranges_in_sync,
            s.anti_entropy_keys_repaired,
            s.anti_entropy_bytes_sent,
        );
        for p in &self.problems {
            out.push_str("\n  ");
            out.push_str(p);
        }
        if !self.passed() {
            out.push_str("\n  replay: ");
            out.push_str(&self.replay_command());
        }
        out
    }
}

fn decimal(bytes: &[u8]) -> u64 {
    String::from_utf8_lossy(bytes)
        .parse()
        .expect("a decimal register")
}

/// Rules 1-3 for registers.
fn check_registers(
    sim: &Simulation,
    heal: Instant,
    problems: &mut Vec<String>,
    keys: &mut BTreeSet<u64>,
) {
    let settled = sim
        .records_before_final_reads()
        .expect("the final phase began");
    for v in convergence::check(settled).violations {
        keys.insert(v.key);
        problems.push(format!("{CONVERGED}: {SETTLE:?} after the heal: {v}"));
    }
    let mut writes: BTreeMap<u64, BTreeMap<u64, EventType>> = BTreeMap::new();
    for op in sim.history().ops() {
        match op.f {
            Function::Write => {
                let value = op.value.expect("a write carries its value");
                writes.entry(op.key).or_default().insert(value, op.outcome);
            }
            Function::Read if op.invoke_time >= heal => {
                problems.push(format!(
                    "{NO_READS}: key {} read at {:?}",
                    op.key, op.invoke_time
                ));
            }
            Function::Read => {}
        }
    }
    for (key, replicas) in sim.replica_records() {
        let newest = replicas.values().flatten().max_by_key(|r| r.timestamp);
        let value = newest.and_then(|r| r.value.as_deref()).map(decimal);
        let w = writes.get(&key);
        let acked = w.and_then(|w| {
            w.iter()
                .filter(|(_, o)| **o == EventType::Ok)
                .map(|(v, _)| *v)
                .max()
        });
        let outcome = value.and_then(|v| w.and_then(|w| w.get(&v)));
        let problem = match (value, acked, outcome) {
            (None, Some(a), _) => Some(format!("the acknowledged write {a} is on no replica")),
            (Some(v), _, None) => Some(format!("{v} was never written")),
            (Some(v), _, Some(EventType::Fail)) => {
                Some(format!("{v} was written by a failed write"))
            }
            // An `info` write may take effect after later writes (the single-writer checker's
            // rule 2 explains why); an acknowledged one may not.
            (Some(v), Some(a), Some(EventType::Ok)) if v < a => Some(format!(
                "replicas hold {v}, older than the acknowledged write {a}"
            )),
            _ => None,
        };
        if let Some(problem) = problem {
            keys.insert(key);
            problems.push(format!("{KEPT}: key {key}: {problem}"));
        }
    }
}

/// Rules 1-3 for counters.
fn check_counters(
    sim: &Simulation,
    heal: Instant,
    problems: &mut Vec<String>,
    keys: &mut BTreeSet<u64>,
) {
    let settled = sim
        .states_before_final_reads()
        .expect("the final phase began");
    for v in convergence::check_states(settled).violations {
        keys.insert(v.key);
        problems.push(format!("{CONVERGED}: {SETTLE:?} after the heal: {v}"));
    }
    let history = sim.merged_history().expect("a counter run");
    for e in history.events() {
        if e.kind == EventType::Invoke && e.f.is_read() && e.time >= heal {
            problems.push(format!("{NO_READS}: key {} read at {:?}", e.key, e.time));
        }
    }
    // (acknowledged, attempted) bounds per key.
    let mut bounds: BTreeMap<u64, (i128, i128)> = BTreeMap::new();
    for op in history.ops() {
        if let MergedFunction::CounterAdd { amount } = op.f {
            let (low, high) = bounds.entry(op.key).or_default();
            let amount = i128::from(amount);
            match op.outcome {
                EventType::Ok => {
                    *low += amount;
                    *high += amount;
                }
                EventType::Info => {
                    *low += amount.min(0);
                    *high += amount.max(0);
                }
                _ => {}
            }
        }
    }
    for (key, replicas) in sim.replica_states() {
        let (low, high) = bounds.get(&key).copied().unwrap_or_default();
        for (node, state) in replicas {
            let value = match state.as_ref().map(State::view) {
                Some(View::Counter(v)) => v,
                None => 0,
                Some(other) => panic!("a counter key holds {other:?}"),
            };
            if value < low || value > high {
                keys.insert(key);
                problems.push(format!(
                    "{KEPT}: key {key} on {node} counts {value}, outside {low}..={high}"
                ));
            }
        }
    }
}

/// Runs one seed and judges it; the simulation and its report come back for a replay to print.
fn run(
    seed: u64,
    workload: Workload,
    config: &LeaderlessConfig,
) -> (Verdict, Option<(Simulation, SeedReport)>) {
    let options = SimOptions::default();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut sim =
            Simulation::anti_entropy_only(seed, &options, workload.merged(), config.clone());
        let report = sim.run();
        (sim, report)
    }));
    let mut verdict = Verdict {
        seed,
        workload,
        problems: Vec::new(),
        keys: BTreeSet::new(),
        ok: 0,
        events: 0,
        stats: KeyspaceStats::default(),
    };
    let (sim, report) = match outcome {
        Ok(done) => done,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            verdict.problems.push(format!("panicked: {message}"));
            return (verdict, None);
        }
    };
    for checker in &report.checkers {
        for v in &checker.violations {
            // Counters are judged by their final reads, which these runs skip by design: rule 2
            // judges them on the disks instead.
            if checker.checker == counter::NAME && v.kind == ViolationKind::Unverified {
                continue;
            }
            verdict.keys.insert(v.key);
            verdict.problems.push(format!("{}: {v}", checker.checker));
        }
    }
    // The final heal comes at the end of the main phase.
    let heal = Instant::from_micros(options.duration.as_micros() as u64);
    match workload {
        Workload::Registers => {
            check_registers(&sim, heal, &mut verdict.problems, &mut verdict.keys)
        }
        Workload::Counters => check_counters(&sim, heal, &mut verdict.problems, &mut verdict.keys),
    }
    for stats in sim.leaderless_stats().values() {
        if let Some(s) = stats.get(workload.keyspace()) {
            let t = &mut verdict.stats;
            t.anti_entropy_ranges_compared += s.anti_entropy_ranges_compared;
            t.anti_entropy_ranges_in_sync += s.anti_entropy_ranges_in_sync;
            t.anti_entropy_keys_repaired += s.anti_entropy_keys_repaired;
            t.anti_entropy_bytes_sent += s.anti_entropy_bytes_sent;
            t.read_repairs += s.read_repairs;
        }
    }
    verdict.ok = report.ops_ok;
    verdict.events = report.events;
    (verdict, Some((sim, report)))
}

fn replay(seed: u64, workload: Workload) {
    let (verdict, run) = run(seed, workload, &config(fast()));
    println!("{}", verdict.describe());
    if let Some((sim, report)) = run {
        println!("timeline:");
        for entry in &report.timeline {
            println!("  {entry}");
        }
        for (node, stats) in sim.leaderless_stats() {
            println!("{node}: {:?}", stats.get(workload.keyspace()));
        }
        match sim.merged_history() {
            Some(h) => verdict
                .keys
                .iter()
                .for_each(|k| println!("history of key {k}:\n{}", h.key_excerpt(*k))),
            None => verdict
                .keys
                .iter()
                .for_each(|k| println!("history of key {k}:\n{}", sim.history().key_excerpt(*k))),
        }
    }
    assert!(verdict.passed(), "seed {seed} failed");
}

fn seeds(workload: Workload) {
    if let Some(seed) = env_u64("TRIARCH_SIM_SEED") {
        let asked = std::env::var("TRIARCH_SIM_WORKLOAD").unwrap_or("registers".into());
        if asked == workload.name() {
            replay(seed, workload);
        }
        return;
    }
    let config = config(fast());
    let count = env_u64("TRIARCH_SIM_SEEDS").unwrap_or(1_000);
    let started = stopwatch();
    let mut failed = Vec::new();
    let (mut ok, mut events) = (0, 0);
    let mut total = KeyspaceStats::default();
    for seed in 0..count {
        let (verdict, _) = run(seed, workload, &config);
        ok += verdict.ok;
        events += verdict.events;
        let s = &verdict.stats;
        total.anti_entropy_ranges_compared += s.anti_entropy_ranges_compared;
        total.anti_entropy_ranges_in_sync += s.anti_entropy_ranges_in_sync;
        total.anti_entropy_keys_repaired += s.anti_entropy_keys_repaired;
        total.anti_entropy_bytes_sent += s.anti_entropy_bytes_sent;
        total.read_repairs += s.read_repairs;
        if !verdict.passed() {
            println!("{}", verdict.describe());
            failed.push(verdict.replay_command());
        }
    }
    println!(
        "{}: {count} seed(s), {} failed; {ok} ok; {events} events; ranges compared {}, in sync \
         {}; keys repaired by anti-entropy {} (by read repair {}); {} bytes sent; {:.2} s wall",
        workload.name(),
        failed.len(),
        total.anti_entropy_ranges_compared,
        total.anti_entropy_ranges_in_sync,
        total.anti_entropy_keys_repaired,
        total.read_repairs,
        total.anti_entropy_bytes_sent,
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} of {count} seeds failed; replay with:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // The seeds must exercise what they check: the faults leave replicas behind, and
    // anti-entropy brings them up to date.
    assert!(
        total.anti_entropy_keys_repaired >= count,
        "anti-entropy hardly repaired anything: {} keys in {count} seeds",
        total.anti_entropy_keys_repaired
    );
}

#[test]
fn anti_entropy_registers_seeds() {
    seeds(Workload::Registers);
}

#[test]
fn anti_entropy_counters_seeds() {
    seeds(Workload::Counters);
}

/// The first of seeds `0..SEEDS_MAX` in which `config` makes `rule` fail, if any.
fn first_caught(workload: Workload, config: &LeaderlessConfig, rule: &str) -> Option<Verdict> {
    const SEEDS_MAX: u64 = 200;
    (0..SEEDS_MAX).find_map(|seed| {
        let (verdict, _) = run(seed, workload, config);
        assert!(
            !verdict.problems.iter().any(|p| p.starts_with("panicked")),
            "{}",
            verdict.describe()
        );
        verdict
            .problems
            .iter()
            .any(|p| p.starts_with(rule))
            .then_some(verdict)
    })
}

/// Rule 1 means something: without anti-entropy (and without final reads) replicas that
/// missed writes stay behind.
#[test]
fn without_anti_entropy_replicas_stay_diverged() {
    let off = config(AntiEntropyConfig {
        enabled: false,
        ..fast()
    });
    for workload in [Workload::Registers, Workload::Counters] {
        let verdict = first_caught(workload, &off, CONVERGED).unwrap_or_else(|| {
            panic!(
                "every early {} seed converged without anti-entropy",
                workload.name()
            )
        });
        println!("caught:\n{}", verdict.describe());
    }
}

/// Rule 1 catches trees that stop following a key once it is written.
#[test]
fn planted_bug_tree_not_updated_on_overwrites_is_caught() {
    let buggy = config(AntiEntropyConfig {
        bug_tree_not_updated_on_overwrite: true,
        ..fast()
    });
    for workload in [Workload::Registers, Workload::Counters] {
        let verdict = first_caught(workload, &buggy, CONVERGED).unwrap_or_else(|| {
            panic!(
                "no early {} seed caught trees that miss overwrites",
                workload.name()
            )
        });
        println!("caught:\n{}", verdict.describe());
    }
}

/// Rule 1 catches ranges that nobody compares.
#[test]
fn planted_bug_ranges_never_compared_are_caught() {
    let buggy = config(AntiEntropyConfig {
        bug_odd_ranges_never_compared: true,
        ..fast()
    });
    for workload in [Workload::Registers, Workload::Counters] {
        let verdict = first_caught(workload, &buggy, CONVERGED).unwrap_or_else(|| {
            panic!(
                "no early {} seed caught ranges never compared",
                workload.name()
            )
        });
        println!("caught:\n{}", verdict.describe());
    }
}
