//! Seeded simulation of the leaderless keyspace under every fault the nemesis knows.
//!
//! - `TRIARCH_SIM_SEEDS=N` runs N seeds instead of 1,000.
//! - `TRIARCH_SIM_SEED=S` replays seed S alone and prints its timeline, and the history of every
//!   key a checker complained about (`TRIARCH_SIM_HISTORY=1` prints the whole history).
//! - `TRIARCH_SIM_PLANTED_BUG=1` runs `leaderless_seeds` with the planted bug, to look at what
//!   the checkers report (it then fails, as it should).
//!
//! A failing seed prints the line that replays it with the `triarch` CLI.

use std::collections::BTreeSet;
use triarch_sim::checker::single_writer;
use triarch_sim::testing::{env_u64, stopwatch};
use triarch_sim::{SeedReport, SimOptions, Simulation, run_seed, run_seeds};

/// Runs `seed` alone and prints everything needed to debug it.
fn replay(seed: u64, options: &SimOptions) -> SeedReport {
    let mut sim = Simulation::new(seed, options);
    let report = sim.run();
    println!("{report}");
    println!("timeline:");
    for entry in &report.timeline {
        println!("  {entry}");
    }
    if std::env::var("TRIARCH_SIM_HISTORY").is_ok() {
        println!("history:\n{}", sim.history());
    } else {
        let keys: BTreeSet<u64> = report
            .checkers
            .iter()
            .flat_map(|c| c.violations.iter().map(|v| v.key))
            .collect();
        for key in keys {
            println!("history of key {key}:\n{}", sim.history().key_excerpt(key));
        }
    }
    report
}

#[test]
fn leaderless_seeds() {
    let options = SimOptions {
        planted_bug: std::env::var("TRIARCH_SIM_PLANTED_BUG").is_ok_and(|v| v == "1"),
        ..SimOptions::default()
    };
    if let Some(seed) = env_u64("TRIARCH_SIM_SEED") {
        let report = replay(seed, &options);
        assert!(
            report.passed(),
            "seed {seed} failed: {}",
            report.replay_command()
        );
        return;
    }
    let count = env_u64("TRIARCH_SIM_SEEDS").unwrap_or(1_000);
    let started = stopwatch();
    let summary = run_seeds(0, count, &options, |report| {
        if !report.passed() {
            println!("{report}");
        }
    });
    let elapsed = started.elapsed();
    println!(
        "{summary}\n{:.2} s wall, {:.0} events/s, {:.0}x faster than virtual time",
        elapsed.as_secs_f64(),
        summary.events as f64 / elapsed.as_secs_f64(),
        summary.virtual_duration.as_secs_f64() / elapsed.as_secs_f64(),
    );
    let replays: Vec<String> = summary
        .failed
        .iter()
        .map(SeedReport::replay_command)
        .collect();
    assert!(
        summary.passed(),
        "{} of {count} seeds failed; replay with:\n{}",
        summary.failed.len(),
        replays.join("\n")
    );
}

/// A checker is trusted only after it has caught a planted bug: with the leaderless engine
/// acknowledging writes once the first replica holds them, some early seed must show a read
/// missing an acknowledged write.
#[test]
fn planted_bug_is_caught() {
    const SEEDS_MAX: u64 = 200;
    let options = SimOptions {
        planted_bug: true,
        ..SimOptions::default()
    };
    let caught = (0..SEEDS_MAX).find_map(|seed| {
        let report = run_seed(seed, &options);
        assert!(report.panic.is_none(), "{report}");
        report.failed_checker(single_writer::NAME).then_some(report)
    });
    let report = caught.unwrap_or_else(|| {
        panic!("none of the first {SEEDS_MAX} seeds caught the acknowledge-before-quorum bug")
    });
    println!("caught by seed {}:\n{report}", report.seed);
    assert!(report.replay_command().ends_with("--planted-bug"));
}
