//! Issue 8's acceptance, on a described network: three regions 40 ms apart (constant links),
//! one region cut off per fault window, the default seeds.
//!
//! - Primary-backup's write latency for clients outside the leader's region is higher than
//!   multi-leader's by at least one inter-region round trip (80 ms): the write goes to the
//!   leader (one way), the leader waits for a majority of voters, spread over the regions (a
//!   round trip), and the reply comes back (one way): two round trips in all, against
//!   multi-leader's local majority. Clients in the leader's region pay one round trip.
//! - The cut-off side keeps writing under multi-leader (every write), partly under leaderless
//!   sloppy quorums (once its nodes suspect the owners outside it: more than under strict
//!   quorums, with hinted writes), and not under primary-backup.
//! - The cart under multi-leader shows conflicts merged and no lost add (its checker).

use std::time::Duration;
use triarch_core::Model;
use triarch_sim::explore::{ExploreOptions, Workload, explore, parse_latency};

fn forty_ms_apart(workloads: Vec<Workload>) -> ExploreOptions {
    ExploreOptions {
        workloads,
        latency: parse_latency("constant"),
        region_ms: Some(40),
        sloppy: true,
        ..ExploreOptions::default()
    }
}

#[test]
fn primary_backup_pays_round_trips_and_a_cut_side_writes_only_without_it() {
    let report = explore(&forty_ms_apart(vec![Workload::Cart]));
    let pb = report
        .cell(Workload::Cart, Model::PrimaryBackup)
        .expect("pb");
    let ml = report.cell(Workload::Cart, Model::MultiLeader).expect("ml");
    let ll = report.cell(Workload::Cart, Model::Leaderless).expect("ll");
    let round_trip = Duration::from_millis(80);
    let mut outside = 0;
    for (region, p) in &pb.write_latency {
        let m = ml
            .write_p50(region)
            .expect("multi-leader wrote in every region");
        assert!(
            p.p50 >= m + round_trip - Duration::from_millis(5),
            "{report}"
        );
        if p.p50 >= m + 2 * round_trip - Duration::from_millis(5) {
            outside += 1;
        }
    }
    // Two regions are outside the leader's (whichever it is): two round trips there.
    assert!(outside >= 2, "{report}");
    // Multi-leader: the cut-off side writes; conflicts merged, no add lost (the cart checker).
    let (ml_ok, ml_attempted) = ml.cut_off_total();
    assert!(ml_attempted > 0 && ml_ok == ml_attempted, "{report}");
    assert!(ml.merged.is_some_and(|n| n > 0), "{report}");
    assert_eq!(ml.seeds_passed, Some(report.options.seeds), "{report}");
    // Leaderless, sloppy: once the cut-off side suspects the owners outside it, fallbacks
    // inside it take hinted writes, and more of its writes succeed than under strict quorums.
    let strict = explore(&ExploreOptions {
        sloppy: false,
        models: vec![Model::Leaderless],
        ..forty_ms_apart(vec![Workload::Cart])
    });
    let strict = strict.cell(Workload::Cart, Model::Leaderless).expect("ll");
    let rate = |(ok, attempted): (u64, u64)| ok as f64 / attempted.max(1) as f64;
    assert!(
        rate(ll.cut_off_total()) > rate(strict.cut_off_total()),
        "sloppy {:?}, strict {:?}\n{report}",
        ll.cut_off_total(),
        strict.cut_off_total()
    );
    assert!(ll.hinted_writes.is_some_and(|n| n > 0), "{report}");
    assert_eq!(strict.hinted_writes, Some(0));
    // Primary-backup: the cut-off side does not write.
    let (pb_ok, pb_attempted) = pb.cut_off_total();
    assert!(pb_attempted > 0 && pb_ok * 10 < pb_attempted, "{report}");
}

/// The whole fault schedule: region cuts, node crashes and clock jumps together run on every
/// model and workload without a panic, and the windows say what they held.
#[test]
fn crashes_and_clock_skew_run_on_every_model() {
    let options = ExploreOptions {
        seeds: 2,
        crash: true,
        skew: true,
        ..ExploreOptions::default()
    };
    let report = explore(&options);
    for cell in report.cells.iter().filter(|c| c.run.is_some()) {
        assert!(
            !cell.failed_checkers.iter().any(|c| c == "panic"),
            "{report}"
        );
        assert!(cell.events > 0, "{report}");
    }
    let kinds: String = report
        .cells
        .iter()
        .flat_map(|c| c.windows.iter().map(|(_, _, what)| what.clone()))
        .collect::<Vec<_>>()
        .join(";");
    assert!(
        kinds.contains("node crash") || kinds.contains("clock jump"),
        "{kinds}"
    );
    assert!(report.to_string().contains("a node crash and restart"));
}
