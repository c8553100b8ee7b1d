//! The balance lesson of the trade-off explorer (issue 8): transfers under primary-backup
//! (WATCH/MULTI/EXEC transactions) show no anomaly; the same transfers done as a client without
//! transactions does them (read both balances, then SET both) on a multi-leader keyspace with
//! last-writer-wins lose updates, and money appears or vanishes. Deterministic: the default
//! seeds (0 to 4), a region cut per fault window.

use triarch_core::Model;
use triarch_sim::explore::{ExploreOptions, Workload, explore};

#[test]
fn balance_transactions_keep_the_books_and_lww_loses_updates() {
    let options = ExploreOptions {
        workloads: vec![Workload::Balance],
        models: vec![Model::PrimaryBackup, Model::MultiLeader],
        ..ExploreOptions::default()
    };
    let report = explore(&options);
    let pb = report
        .cell(Workload::Balance, Model::PrimaryBackup)
        .expect("a primary-backup cell");
    let ml = report
        .cell(Workload::Balance, Model::MultiLeader)
        .expect("a multi-leader cell");
    let pb_found = pb.balance.expect("primary-backup balance figures");
    let ml_found = ml.balance.expect("multi-leader balance figures");
    // Primary-backup: every seed's checkers pass, and not one anomaly.
    assert_eq!(pb.seeds_passed, Some(options.seeds), "{report}");
    assert!(!pb_found.any(), "{report}");
    assert!(pb_found.transfers > 0, "{report}");
    // Multi-leader with lww: the lesson.
    assert!(ml_found.lost_updates > 0, "{report}");
    assert!(ml_found.total_drift > 0, "{report}");
    // Its replicas still converge, and every region counted what lww discarded: what it lost
    // is the workload's fault, not the store's.
    assert_eq!(ml.seeds_passed, Some(options.seeds), "{report}");
    assert!(ml.lww_discarded.is_some_and(|n| n > 0), "{report}");
    assert!(report.to_string().contains("lost updates"), "{report}");
}

/// The other merge: transfers as counter increments on multi-leader lose no update (a
/// counter keeps every increment) but two regions can both spend what one balance held, above
/// all while they are cut apart: accounts go negative.
#[test]
fn counter_transfers_lose_nothing_but_overdraw() {
    let options = ExploreOptions {
        workloads: vec![Workload::Balance],
        models: vec![Model::MultiLeader],
        counter_balance: true,
        ..ExploreOptions::default()
    };
    let report = explore(&options);
    let ml = report
        .cell(Workload::Balance, Model::MultiLeader)
        .expect("a multi-leader cell");
    assert_eq!(ml.run, Some("MK"), "{report}");
    let found = ml.balance.expect("balance figures");
    assert_eq!(found.lost_updates, 0, "{report}");
    assert!(found.negative_balances > 0, "{report}");
    assert_eq!(ml.seeds_passed, Some(options.seeds), "{report}");
    assert!(
        report
            .json_lines()
            .contains("\"balance_merge\":\"counter\"")
    );
}
