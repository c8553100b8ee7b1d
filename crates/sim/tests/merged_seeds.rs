//! Seeded simulation of the CRDT and `siblings` keyspaces (`set` carts, `counter`s, `siblings`
//! documents, `map` profiles) and of primary-backup registers and bank transfers under every fault the
//! nemesis knows: partitions, loss, duplication, crashes that lose unsynced writes, clock skew.
//!
//! - `TRIARCH_SIM_SEEDS=N` runs N seeds of each workload instead of 1,000.
//! - `TRIARCH_SIM_SEED=S` replays seed S alone and prints its timeline and the history of every
//!   key a checker complained about (`TRIARCH_SIM_HISTORY=1` prints the whole history).
//! - `TRIARCH_SIM_PLANTED_BUG=1` runs the workload's planted bug (`run_merged_seed`), to look
//!   at what the checkers report (the test then fails, as it should).

use std::collections::BTreeMap;
use triarch_sim::checker::{bank_history, convergence, counter, map, registers, set, siblings};
use triarch_sim::testing::{blamed_keys, describe, env_u64, stopwatch};
use triarch_sim::{
    EventType, MergedFunction, MergedWorkload, ReadResult, SeedReport, SimOptions, Simulation,
    merged_replay_command, run_merged_seed, run_merged_seeds,
};

fn options() -> SimOptions {
    SimOptions {
        planted_bug: std::env::var("TRIARCH_SIM_PLANTED_BUG").is_ok_and(|v| v == "1"),
        ..SimOptions::default()
    }
}

fn replay(seed: u64, options: &SimOptions, workload: MergedWorkload) -> SeedReport {
    let mut sim = Simulation::new_merged(seed, options, workload);
    let report = sim.run();
    println!("{}", describe(&report));
    println!("timeline:");
    for entry in &report.timeline {
        println!("  {entry}");
    }
    let history = sim.merged_history().expect("a CRDT run");
    if std::env::var("TRIARCH_SIM_HISTORY").is_ok() {
        println!("history:\n{history}");
    } else {
        for key in blamed_keys(&report) {
            println!("history of key {key}:\n{}", history.key_excerpt(key));
        }
    }
    report
}

fn seeds(workload: MergedWorkload) {
    let options = options();
    if let Some(seed) = env_u64("TRIARCH_SIM_SEED") {
        let report = replay(seed, &options, workload);
        assert!(report.passed(), "seed {seed} failed");
        return;
    }
    let count = env_u64("TRIARCH_SIM_SEEDS").unwrap_or(1_000);
    let started = stopwatch();
    let summary = run_merged_seeds(0, count, &options, workload, |report| {
        if !report.passed() {
            println!(
                "{report}\n  replay: {}",
                merged_replay_command(report, workload)
            );
        }
    });
    let elapsed = started.elapsed();
    println!(
        "{workload}: {summary}\n{:.2} s wall, {:.0} events/s",
        elapsed.as_secs_f64(),
        summary.events as f64 / elapsed.as_secs_f64(),
    );
    let replays: Vec<String> = summary
        .failed
        .iter()
        .map(|r| merged_replay_command(r, workload))
        .collect();
    assert!(
        summary.passed(),
        "{} of {count} {workload} seeds failed; replay with:\n{}",
        summary.failed.len(),
        replays.join("\n")
    );
    // The runs exercised what they claim to: most operations succeed despite the faults.
    assert!(
        summary.ops_ok * 2 > summary.ops_ok + summary.ops_fail + summary.ops_info,
        "{summary}"
    );
}

#[test]
fn set_seeds() {
    seeds(MergedWorkload::Set);
}

#[test]
fn counter_seeds() {
    seeds(MergedWorkload::Counter);
}

#[test]
fn siblings_seeds() {
    seeds(MergedWorkload::Siblings);
}

#[test]
fn map_seeds() {
    seeds(MergedWorkload::Map);
}

#[test]
fn registers_seeds() {
    seeds(MergedWorkload::Registers);
}

#[test]
fn bank_seeds() {
    seeds(MergedWorkload::Bank);
}

/// Transfers whose EXEC does not watch the balances their WATCH read overdraw accounts when
/// two run at once.
#[test]
fn planted_unwatched_transfers_are_caught_by_the_bank_checker() {
    planted_bug_is_caught(MergedWorkload::Bank, bank_history::NAME);
}

/// Finds an early seed on which the workload's planted bug is caught by `checker`.
fn planted_bug_is_caught(workload: MergedWorkload, checker: &str) {
    const SEEDS_MAX: u64 = 200;
    let options = SimOptions {
        planted_bug: true,
        ..SimOptions::default()
    };
    let caught = (0..SEEDS_MAX).find_map(|seed| {
        let report = run_merged_seed(seed, &options, workload);
        assert!(report.panic.is_none(), "{report}");
        report.failed_checker(checker).then_some(report)
    });
    let report = caught.unwrap_or_else(|| {
        panic!("none of the first {SEEDS_MAX} seeds caught the planted {workload} bug")
    });
    println!(
        "caught by {}\n  replay: {}",
        describe(&report),
        merged_replay_command(&report, workload)
    );
}

/// Removes that forget what their read observed remove nothing: an acknowledged remove's
/// element is still there at the end.
#[test]
fn planted_remove_bug_is_caught_by_the_set_checker() {
    planted_bug_is_caught(MergedWorkload::Set, set::NAME);
}

/// One actor for every coordinator: concurrent increments through different replicas reuse
/// totals and lose each other.
#[test]
fn planted_shared_actor_bug_is_caught_by_the_counter_checker() {
    planted_bug_is_caught(MergedWorkload::Counter, counter::NAME);
}

/// Voters that serve reads from their own applied state, without ReadIndex, answer stale values
/// while they lag or after they were deposed.
/// The siblings seeds judge what they claim to: concurrent values are read as siblings, and
/// writes carrying a read's context resolve them (every final read shows fewer values than
/// were written to its key).
#[test]
fn siblings_seeds_make_and_resolve_siblings() {
    let (mut multi_value_reads, mut observed_ok, mut resolved_keys) = (0, 0, 0);
    for seed in 0..5 {
        let mut sim =
            Simulation::new_merged(seed, &SimOptions::default(), MergedWorkload::Siblings);
        let report = sim.run();
        assert!(report.passed(), "{}", describe(&report));
        let history = sim.merged_history().expect("a merged run");
        let final_start = history.final_phase_start().expect("final reads");
        let mut written: BTreeMap<u64, usize> = BTreeMap::new();
        let mut last_final: BTreeMap<u64, usize> = BTreeMap::new();
        for op in history.ops() {
            match (op.f, op.outcome, &op.result) {
                (MergedFunction::SiblingsWrite { observed, .. }, EventType::Ok, _) => {
                    *written.entry(op.key).or_default() += 1;
                    observed_ok += usize::from(observed);
                }
                (MergedFunction::SiblingsRead, EventType::Ok, Some(ReadResult::Siblings(v))) => {
                    multi_value_reads += usize::from(v.len() >= 2);
                    if op.invoke_index >= final_start {
                        last_final.insert(op.key, v.len());
                    }
                }
                _ => {}
            }
        }
        resolved_keys += last_final
            .iter()
            .filter(|(k, n)| written.get(k).is_some_and(|w| **n < *w))
            .count();
    }
    eprintln!(
        "{multi_value_reads} reads returned siblings, {observed_ok} observed writes acknowledged, {resolved_keys} keys resolved"
    );
    assert!(multi_value_reads > 100, "{multi_value_reads}");
    assert!(observed_ok > 400, "{observed_ok}");
    assert!(resolved_keys > 20, "{resolved_keys}");
}

/// Coordinators sharing one actor issue the same dot for concurrent writes through different
/// replicas: one acknowledged sibling replaces the other.
#[test]
fn planted_shared_actor_bug_is_caught_by_the_siblings_checker() {
    planted_bug_is_caught(MergedWorkload::Siblings, siblings::NAME);
}

/// Coordinators acknowledging a field write once the first replica holds it: a read at R
/// that misses that replica returns an older value.
#[test]
fn planted_early_acknowledgement_is_caught_by_the_map_checker() {
    planted_bug_is_caught(MergedWorkload::Map, map::NAME);
}

#[test]
fn planted_local_reads_are_caught_by_the_linearizability_checker() {
    planted_bug_is_caught(MergedWorkload::Registers, registers::NAME);
}

#[test]
fn a_seed_of_each_workload_replays_exactly() {
    for workload in MergedWorkload::ALL {
        let options = SimOptions::default();
        let mut a = Simulation::new_merged(11, &options, workload);
        let mut b = Simulation::new_merged(11, &options, workload);
        let (ra, rb) = (a.run(), b.run());
        assert_eq!(ra, rb, "{workload}");
        assert_eq!(a.replica_states(), b.replica_states(), "{workload}");
        assert_eq!(a.replica_tables(), b.replica_tables(), "{workload}");
        assert!(ra.history_events > 1_000, "the run did something: {ra}");
        assert!(
            ra.checkers.iter().any(|c| c.checker == convergence::NAME),
            "{ra}"
        );
        // Replicas really hold state: the convergence check is not vacuous.
        assert!(
            a.replica_states()
                .values()
                .flat_map(|per_node| per_node.values())
                .any(Option::is_some)
                || a.replica_tables().values().all(|rows| rows.len() > 1),
            "{workload}"
        );
    }
}

/// Liveness sanity check: with the nemesis off, the network reliable but for its latency and
/// clocks in sync, nearly every operation succeeds, forwarded and read-first ones included.
#[test]
fn a_healthy_cluster_answers_nearly_every_crdt_operation() {
    let options = SimOptions {
        partitions: false,
        packet_loss: false,
        duplication: false,
        crashes: false,
        clock_skew: false,
        ..SimOptions::default()
    };
    for workload in MergedWorkload::ALL {
        for seed in 0..10 {
            let r = run_merged_seed(seed, &options, workload);
            assert!(r.passed(), "{workload}: {}", describe(&r));
            let total = r.ops_ok + r.ops_fail + r.ops_info;
            // A bank transfer aborted because a watched account changed is a definite answer.
            let answered = if workload == MergedWorkload::Bank {
                r.ops_ok + r.ops_fail
            } else {
                r.ops_ok
            };
            assert!(
                answered * 1_000 >= total * 995,
                "{workload}: {}",
                describe(&r)
            );
        }
    }
}
