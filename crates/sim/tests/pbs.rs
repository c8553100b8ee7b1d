//! Issue 8: for leaderless N=3, R=1, W=1 with exponential link latencies, the measured
//! probability of reading the latest write t ms after its acknowledgement matches the WARS model
//! (Bailis et al., VLDB 2012) at several t, and the comparison rejects deliberately wrong models.

use std::time::Duration;
use triarch_sim::pbs::{self, Model, PbsSetup, Row};

const MEASURED_TRIALS: u64 = 4_000;
const MODEL_TRIALS: u64 = 200_000;
const SEED: u64 = 8;

fn ts() -> Vec<Duration> {
    [0.0, 0.5, 1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|ms| Duration::from_secs_f64(ms / 1_000.0))
        .collect()
}

fn setup() -> PbsSetup {
    PbsSetup::exponential_n3_r1_w1(1_000)
}

fn rows(model: Model) -> Vec<Row> {
    pbs::compare(&setup(), model, &ts(), MEASURED_TRIALS, MODEL_TRIALS, SEED)
}

#[test]
fn measured_staleness_matches_wars() {
    let rows = rows(Model::Wars);
    println!("{}", pbs::table(&setup(), &rows));
    for row in &rows {
        assert!(row.agrees(), "{}", pbs::table(&setup(), &rows));
    }
    // The curve rises from well below 1 to 1: the comparison is not vacuous.
    assert!(rows[0].measured.p() < 0.8, "{}", rows[0].measured.p());
    assert!(rows.last().unwrap().measured.p() > 0.99);
}

#[test]
fn the_comparison_rejects_wrong_models() {
    // The measurement is the same (same seeds) whatever the model, so reuse the trials.
    for model in [Model::NoPropagation, Model::NoReadDelay] {
        let rows = rows(model);
        println!("planted {model:?}\n{}", pbs::table(&setup(), &rows));
        assert!(
            rows.iter().any(|r| !r.agrees()),
            "{model:?} passed:\n{}",
            pbs::table(&setup(), &rows)
        );
    }
}
