//! Small helpers the seed-test files share (environment knobs, timing the run itself, short
//! reports).

use crate::SeedReport;

/// The number in environment variable `name`, if set; panics on anything else, naming it.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

/// The test harness measures its own speed; it is not protocol code, which is what the
/// workspace's ban on reading the clock protects.
#[allow(clippy::disallowed_methods)]
pub fn stopwatch() -> std::time::Instant {
    std::time::Instant::now()
}

/// A report in a few lines: counts, a panic, and the first violations of each failed checker,
/// without [`SeedReport::replay_command`] (whose `triarch sim` line replays only the register
/// workload: the seed tests print their own).
pub fn describe(report: &SeedReport) -> String {
    let mut out = format!(
        "seed {}: {} ok, {} fail, {} info",
        report.seed, report.ops_ok, report.ops_fail, report.ops_info
    );
    if let Some(p) = &report.panic {
        out.push_str(&format!("\n  panicked: {p}"));
    }
    for c in report.checkers.iter().filter(|c| !c.is_ok()) {
        out.push_str(&format!(
            "\n  {}: {} violation(s)",
            c.checker,
            c.violations.len()
        ));
        for v in c.violations.iter().take(5) {
            out.push_str(&format!("\n    {v}"));
        }
    }
    out
}

/// The workload keys the checkers of `report` complained about (for printing their histories).
pub fn blamed_keys(report: &SeedReport) -> std::collections::BTreeSet<u64> {
    report
        .checkers
        .iter()
        .flat_map(|c| c.violations.iter().map(|v| v.key))
        .filter(|&k| k != u64::MAX)
        .collect()
}
