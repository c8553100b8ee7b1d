//! A seed is a complete description of a run: the same seed gives the same history, event for
//! event, and different seeds explore different runs. Without this, a failing seed could not be
//! replayed and every other simulation test would be worthless.

use triarch_sim::{SimOptions, Simulation, run_seed};

#[test]
fn the_same_seed_replays_exactly() {
    let options = SimOptions::default();
    for seed in [0, 7, 1 << 40] {
        let mut a = Simulation::new(seed, &options);
        let mut b = Simulation::new(seed, &options);
        let (ra, rb) = (a.run(), b.run());
        assert_eq!(ra.fingerprint, rb.fingerprint, "seed {seed}");
        assert_eq!(ra.events, rb.events, "seed {seed}");
        assert_eq!(a.history().events(), b.history().events(), "seed {seed}");
        assert_eq!(a.replica_records(), b.replica_records(), "seed {seed}");
        assert_eq!(ra, rb, "the whole report, timeline included");
        assert!(ra.history_events > 1_000, "the run did something: {ra}");
    }
}

#[test]
fn different_seeds_explore_different_runs() {
    let options = SimOptions::default();
    let fingerprints: std::collections::BTreeSet<u64> = (0..20)
        .map(|seed| run_seed(seed, &options).fingerprint)
        .collect();
    assert_eq!(fingerprints.len(), 20);
}

#[test]
fn options_change_the_run_and_the_planted_bug_changes_only_the_engine() {
    let plain = run_seed(3, &SimOptions::default());
    let buggy = run_seed(
        3,
        &SimOptions {
            planted_bug: true,
            ..SimOptions::default()
        },
    );
    assert_ne!(plain.fingerprint, buggy.fingerprint);
    // The fault schedule comes from its own RNG stream, so the same seed injects the same faults
    // into both runs: a failing planted-bug seed is comparable with its correct twin.
    let faults = |r: &triarch_sim::SeedReport| {
        r.timeline
            .iter()
            .filter(|e| !e.what.starts_with("crash "))
            .map(|e| (e.at, e.what.clone()))
            .take(3)
            .collect::<Vec<_>>()
    };
    assert_eq!(faults(&plain), faults(&buggy));
}

/// Liveness sanity check: with the nemesis off, the network reliable but for its latency and
/// clocks in sync, nearly every operation succeeds (a log-normal tail can still push a quorum
/// past the coordinator's one-second timeout now and then).
#[test]
fn a_healthy_cluster_answers_nearly_everything() {
    let options = SimOptions {
        partitions: false,
        packet_loss: false,
        duplication: false,
        crashes: false,
        clock_skew: false,
        ..SimOptions::default()
    };
    for seed in 0..20 {
        let r = run_seed(seed, &options);
        assert!(r.passed(), "{r}");
        let total = r.ops_ok + r.ops_fail + r.ops_info;
        assert!(r.ops_ok * 1_000 >= total * 999, "{r}");
    }
}
