//! The explorer's custom workload (issue 8): registers shaped by a read fraction, a key count,
//! a Zipf skew, a region mix and a value size, on every model; and its HTML report.

use triarch_core::Model;
use triarch_sim::explore::{CustomMix, ExploreOptions, Workload, explore};
use triarch_sim::merged::mix_regions;

fn custom(mix: CustomMix) -> ExploreOptions {
    ExploreOptions {
        seeds: 2,
        workloads: vec![Workload::Custom],
        mix,
        ..ExploreOptions::default()
    }
}

#[test]
fn clients_go_to_regions_by_weight() {
    assert_eq!(mix_regions(&[1.0, 1.0, 1.0], 6), vec![0, 0, 1, 1, 2, 2]);
    assert_eq!(
        mix_regions(&[0.6, 0.3, 0.1], 10),
        vec![0, 0, 0, 0, 0, 0, 1, 1, 1, 2]
    );
    assert_eq!(mix_regions(&[0.0, 1.0, 0.0], 3), vec![1, 1, 1]);
}

/// Every model runs the shape and passes its checkers; reads outnumber writes as asked; all
/// clients in region 1 means latencies only there; the same options give the same bytes,
/// HTML included.
#[test]
fn a_custom_mix_runs_on_every_model_as_described() {
    let options = custom(CustomMix {
        reads: 0.8,
        keys: 50,
        zipf: 1.2,
        region_mix: vec![1.0, 0.0, 0.0],
        value_bytes: 64,
    });
    let report = explore(&options);
    assert_eq!(report.cells.len(), 3, "{report}");
    for model in Model::ALL {
        let cell = report.cell(Workload::Custom, model).expect("a cell");
        assert_eq!(cell.seeds_passed, Some(2), "{report}");
        let reads = cell.read_cdf.len() as f64;
        let writes = cell.write_cdf.len() as f64;
        assert!(
            reads > 2.0 * writes,
            "{model}: {reads} reads, {writes} writes"
        );
        assert_eq!(
            cell.write_latency.keys().collect::<Vec<_>>(),
            vec!["r1"],
            "{report}"
        );
        assert!(cell.staleness.as_ref().is_some_and(|s| s.reads > 0));
    }
    assert!(
        report
            .to_string()
            .contains("custom: 80% reads, 50 keys, zipf 1.2")
    );
    let again = explore(&options);
    assert_eq!(report.json_lines(), again.json_lines());
    assert_eq!(report.html(), again.html());
}

#[test]
fn invalid_mixes_are_refused() {
    let bad = |mix: CustomMix| custom(mix).validate().is_err();
    assert!(bad(CustomMix {
        reads: 1.5,
        ..CustomMix::default()
    }));
    assert!(bad(CustomMix {
        region_mix: vec![1.0, 1.0],
        ..CustomMix::default()
    }));
    assert!(bad(CustomMix {
        keys: 0,
        ..CustomMix::default()
    }));
    assert!(!bad(CustomMix::default()));
}
