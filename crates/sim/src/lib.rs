//! The deterministic simulator: virtual time, seeded network and faults, workloads, histories
//! and checkers. It is the second driver of the same sans-IO [`triarch_node::Node`] the tokio
//! server runs (TigerBeetle's VOPR and FoundationDB's simulation are the models).
//!
//! ## A run
//!
//! One thread, no real time, no real randomness: a seed initialises one [`triarch_core::DetRng`]
//! from which everything is drawn, and one priority queue of events ordered by (virtual time,
//! sequence number) drives nodes, disks, network, clients and the nemesis. A seed therefore
//! replays exactly: same events, same history, same verdict.
//!
//! 1. **Main phase** (`duration`, 20 s by default): client processes issue the workload (single-
//!    writer registers, [`workload`](crate#workload)) while the [`nemesis`] alternates fault
//!    windows and healed windows: partitions (random halves, isolate one, majorities ring,
//!    one-way), loss bursts, crash and restart (half of them in the middle of a sync), clock
//!    bumps and frozen clocks. Every link also has its own latency distribution ([`latency`]),
//!    a baseline loss and duplication rate, and reorders.
//! 2. **Final heal**: links reopen, crashed nodes restart, clocks return to baseline, and the
//!    network becomes reliable. No new client operations.
//! 3. **Settle** ([`SETTLE`]): everything in flight completes, times out or lands.
//! 4. **Final reads**: every key through every node. They check that no acknowledged write was
//!    lost, and their read repair brings every replica up to date.
//! 5. **Snapshot** ([`FINAL_READ_SETTLE`] later): each replica's stored record of each key is
//!    read from its disk for the convergence checker.
//!
//! After every step the simulator calls the node's `check_invariants()`.
//!
//! ## Durability model (persist-then-send)
//!
//! After a node steps, its outputs are held until a simulated fsync completes, 50-500 µs later
//! (drawn per sync). Steps taken while a sync is in flight share it (group commit): at
//! completion `SimDisk::sync` makes durable everything staged so far, and every held output is
//! released. A crash before completion drops the node, crashes its disk (losing every unsynced
//! write) and discards the held outputs, so nothing a node acknowledged can be lost by the crash.
//! The node restarts later with `Node::new` over the same disk, recovering what it synced.
//!
//! ## Clocks
//!
//! Node `i`'s wall clock, passed to it as `Now::wall_ms`, is [`WALL_CLOCK_START_MS`] + virtual
//! time + an offset: a small baseline (±100 ms) that the nemesis bumps by up to ±20 s, rarely
//! ±1-2 min (past the hybrid logical clock's 60 s forward bound), or freezes for a window. Heals
//! return every clock to its baseline, which steps bumped clocks back.
//!
//! ## Workload
//!
//! Workload A, single-writer registers in the `default` keyspace (leaderless, N=3, R=2, W=2, so
//! R + W > N): each key has one writer process at a time writing strictly increasing integers,
//! and as many reader processes as keys read random keys, each operation through a random node.
//! A client waits [`CLIENT_TIMEOUT`] for a reply; without one the operation is `info` and the
//! process retires (a fresh process takes over). Replies with a definite error are `fail`,
//! others `info`. A request to a crashed node fails at once (connection refused: `fail`).
//!
//! Workloads S and C ([`merged`], run by [`run_merged_seed`]) drive a `set` keyspace (unique
//! adds, and removes of elements the same client added) and a `counter` keyspace (increments by
//! known amounts) through the same phases and faults. Workloads L and B drive primary-backup
//! keyspaces (a Raft group each, N=3 of the five nodes, with elections every few hundred
//! milliseconds of silence): L reads, writes and compare-and-sets registers; B transfers money
//! between accounts with WATCH/MULTI/EXEC and reads every balance at once.
//!
//! ## Regions and multi-leader keyspaces
//!
//! [`RegionOptions`] places the nodes in regions (node `i` in region `r((i - 1) % R + 1)`):
//! links inside a region are sub-millisecond, links between two regions take the pair's base
//! latency of 20-60 ms ([`latency`]), and the nemesis adds partitions between regions (one
//! region cut off, every region apart) and inside one ([`Fault::REGIONAL`]) to the others.
//! Workloads MC, MN and MR ([`merged`], run by [`run_multileader_seed`], in nine nodes and
//! three regions by default: [`SimOptions::multileader`]) drive a multi-leader keyspace of
//! each policy from processes that live in every region. Each region's group (N=3) elects
//! within 500-1000 ms of silence; half the seeds keep short change logs (32 changes), so that
//! a region cut off for a few seconds comes back through a state transfer of records rather
//! than the changes it missed. The simulator observes what regions ship to each other (the
//! writers' contexts, for the last-writer-wins checker) and can plant bugs there
//! ([`RegionBug`]). One region's run is unchanged by all this: [`RegionOptions::single`] draws
//! exactly what the simulator always drew.
//!
//! ## Checkers
//!
//! [`checker::single_writer`] (no stale or unexpected read, no acknowledged write lost; its
//! module documentation states the exact rule) and [`checker::convergence`] (identical replicas
//! after the final reads). For workloads S and C: [`checker::set`] (every acknowledged add
//! present unless an acknowledged remove followed, nothing unexpected, removed stays removed),
//! [`checker::counter`] (every read between the acknowledged and the attempted sums) and
//! [`checker::convergence::check_states`]. For workload L: [`checker::registers`] (every key's
//! history linearizable, by [`checker::linearizable`]'s WGL search; undecided counts as a
//! failure); for B: [`checker::bank_history`] (every whole-bank read, final ones included,
//! totals the initial money and has no negative balance); for both,
//! [`checker::convergence::check_tables`] (every voter holds the same rows once commits have
//! reached everyone) and [`checker::leader`] (every up voter follows the same leader
//! [`SETTLE`] after the final heal). For the multi-leader workloads: [`checker::cart`] (no
//! acknowledged add lost, observed removes honoured, a concurrent re-add wins),
//! [`checker::counter`] scoped to regions (exact counts), and [`checker::regional`]: every
//! replica of every region holds the same records, no change applied twice, every write
//! last-writer-wins discarded counted, writes accepted in every region while only links
//! between regions are cut; and a leader in every region after the heal.
//!
//! ## Replaying a seed
//!
//! Every report carries [`SeedReport::replay_command`], e.g.
//! `triarch sim --seed 1234 --planted-bug`; the seed tests replay one seed with the
//! `TRIARCH_SIM_SEED` environment variable ([`merged_replay_command`],
//! [`multileader_replay_command`]).

pub mod checker;
pub mod explore;
pub mod history;
pub mod latency;
pub mod merged;
pub mod nemesis;
mod network;
pub mod pbs;
mod simulation;
pub mod testing;
mod workload;

pub use checker::{CheckerResult, Violation, ViolationKind};
pub use history::{EventType, Function, History, HistoryEvent, Op, ProcessId};
pub use latency::{LATENCY_MAX, LatencyDistribution};
pub use merged::{MergedFunction, MergedHistory, MergedWorkload, ReadResult};
pub use nemesis::{Fault, FaultWindow};
pub use network::NetworkSpec;
pub use simulation::{
    CLIENT_TIMEOUT, CONVERGENCE_CHECK_INTERVAL, ExploreSettings, FINAL_READ_SETTLE, RegionStats,
    SETTLE, Simulation, WALL_CLOCK_START_MS, key_bytes,
};

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;
use triarch_core::Instant;
use triarch_core::limits::NODES_MAX;

/// What one seed runs. The defaults are what `triarch sim` and the seed tests run; every other
/// value appears in [`SeedReport::replay_command`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// Cluster size (`--nodes`).
    pub nodes: u32,
    /// Registers (`--keys`).
    pub keys: u64,
    /// Client operations in the main phase, final reads excluded (`--ops`).
    pub ops: u64,
    /// Length of the main phase in virtual time (`--duration-ms`).
    pub duration: Duration,
    /// Partitions: random halves, isolate one, majorities ring, one-way (`--no-partitions`).
    pub partitions: bool,
    /// Baseline loss up to 2% and loss bursts of 10-50% (`--no-loss`).
    pub packet_loss: bool,
    /// Baseline duplication up to 3% (`--no-duplication`).
    pub duplication: bool,
    /// Crash and restart (`--no-crashes`).
    pub crashes: bool,
    /// Baseline skew, clock bumps and frozen clocks (`--no-clock-skew`).
    pub clock_skew: bool,
    /// Runs the leaderless engine with its planted bug, acknowledging a write once the first
    /// replica holds it (`--planted-bug`). The checkers must catch it.
    pub planted_bug: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 5,
            keys: 8,
            ops: 1_000,
            duration: Duration::from_secs(20),
            partitions: true,
            packet_loss: true,
            duplication: true,
            crashes: true,
            clock_skew: true,
            planted_bug: false,
        }
    }
}

impl SimOptions {
    /// The options of the multi-leader seed runs: nine nodes, so that each of three regions
    /// runs a group of three voters that survives a crash; a 10 s main phase of 400
    /// operations (two or three fault windows), so that a thousand seeds of each workload
    /// stay within a minute or so of a two-core machine.
    pub fn multileader() -> SimOptions {
        SimOptions {
            nodes: 9,
            ops: 400,
            duration: Duration::from_secs(10),
            ..SimOptions::default()
        }
    }
}

/// Where the nodes are, and the bugs the simulator can plant in a multi-leader run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionOptions {
    /// Regions: node `i` is in region `r((i - 1) % regions + 1)`. 1 is every single-region
    /// run's layout.
    pub regions: u32,
    /// A bug the simulator plants (the checkers must catch it); [`SimOptions::planted_bug`] is
    /// the engines' own planted bugs and means nothing to the multi-leader workloads.
    pub planted: Option<RegionBug>,
    /// The primary-backup workloads' keyspace is placed in this region (`r2`): every voter and
    /// the preferred leader ([`triarch_core::KeyspaceConfig::home`]). `None`: spread.
    pub primary_home: Option<String>,
}

impl RegionOptions {
    /// One region: the layout of every run but the multi-leader ones.
    pub fn single() -> Self {
        RegionOptions {
            regions: 1,
            planted: None,
            primary_home: None,
        }
    }

    /// Three regions, nothing planted.
    pub fn three() -> Self {
        RegionOptions {
            regions: 3,
            planted: None,
            primary_home: None,
        }
    }
}

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions::single()
    }
}

/// Bugs the simulator plants in a multi-leader run, outside the engines (whose code it does not
/// own): in what travels between regions, or in the cluster's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionBug {
    /// Some shipped batches arrive renumbered two changes back (a shipper whose numbering is
    /// off by two after a resend): the receiver skips two changes and later applies two twice.
    /// Caught by convergence, applied-once and the workloads' own checkers.
    RenumberedShipments,
    /// Shipped changes arrive claiming to have seen everything every other region ever wrote:
    /// concurrent writes are merged without being detected, and so go uncounted. Caught by the
    /// lww-discards checker.
    WidenedContexts,
    /// The nodes are configured as one region while the network still has several: every
    /// write needs a majority of one group spread over the regions. Caught by the availability
    /// checker when the regions are cut apart.
    FlatRegions,
}

impl RegionBug {
    pub const ALL: [RegionBug; 3] = [
        RegionBug::RenumberedShipments,
        RegionBug::WidenedContexts,
        RegionBug::FlatRegions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RegionBug::RenumberedShipments => "renumbered-shipments",
            RegionBug::WidenedContexts => "widened-contexts",
            RegionBug::FlatRegions => "flat-regions",
        }
    }

    pub fn parse(name: &str) -> Option<RegionBug> {
        RegionBug::ALL.into_iter().find(|b| b.as_str() == name)
    }
}

impl fmt::Display for RegionBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options that cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOptions {
    #[error("nodes must be 1 to {NODES_MAX}, not {0}")]
    Nodes(u32),
    #[error("keys must be 1 to {KEYS_MAX}, not {0}")]
    Keys(u64),
    #[error("ops must be 1 to {OPS_MAX}, not {0}")]
    Ops(u64),
    #[error("duration must be 1 s to 1 h of virtual time, not {0:?}")]
    Duration(Duration),
    #[error("regions must be 1 to the number of nodes, not {0}")]
    Regions(u32),
}

/// Upper bounds on options (everything has a limit): a run's memory grows with them.
pub const KEYS_MAX: u64 = 10_000;
pub const OPS_MAX: u64 = 10_000_000;

impl SimOptions {
    pub fn validate(&self) -> Result<(), InvalidOptions> {
        if self.nodes == 0 || self.nodes as usize > NODES_MAX {
            return Err(InvalidOptions::Nodes(self.nodes));
        }
        if self.keys == 0 || self.keys > KEYS_MAX {
            return Err(InvalidOptions::Keys(self.keys));
        }
        if self.ops == 0 || self.ops > OPS_MAX {
            return Err(InvalidOptions::Ops(self.ops));
        }
        if self.duration < Duration::from_secs(1) || self.duration > Duration::from_secs(3_600) {
            return Err(InvalidOptions::Duration(self.duration));
        }
        Ok(())
    }

    /// The faults the nemesis may choose among.
    pub fn faults(&self) -> Vec<Fault> {
        Fault::ALL
            .into_iter()
            .filter(|f| match f {
                Fault::PartitionRandomHalves
                | Fault::IsolateOne
                | Fault::MajoritiesRing
                | Fault::OneWay => self.partitions,
                Fault::LossBurst => self.packet_loss,
                Fault::CrashRestart => self.crashes,
                Fault::ClockBump | Fault::ClockFreeze => self.clock_skew,
                // Added by the simulation when the nodes are in several regions.
                Fault::RegionCut | Fault::RegionsApart | Fault::RegionSplit => false,
            })
            .collect()
    }

    /// The `triarch sim` flags that reproduce these options: only those that differ from the
    /// defaults, so that a replay line stays short.
    pub fn cli_args(&self) -> Vec<String> {
        let d = SimOptions::default();
        let mut args = Vec::new();
        if self.nodes != d.nodes {
            args.push(format!("--nodes {}", self.nodes));
        }
        if self.keys != d.keys {
            args.push(format!("--keys {}", self.keys));
        }
        if self.ops != d.ops {
            args.push(format!("--ops {}", self.ops));
        }
        if self.duration != d.duration {
            args.push(format!("--duration-ms {}", self.duration.as_millis()));
        }
        for (on, flag) in [
            (self.partitions, "--no-partitions"),
            (self.packet_loss, "--no-loss"),
            (self.duplication, "--no-duplication"),
            (self.crashes, "--no-crashes"),
            (self.clock_skew, "--no-clock-skew"),
        ] {
            if !on {
                args.push(flag.to_string());
            }
        }
        if self.planted_bug {
            args.push("--planted-bug".to_string());
        }
        args
    }
}

/// A line of a run's timeline: what the nemesis did and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    pub at: Instant,
    pub what: String,
}

impl fmt::Display for TimelineEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.at.as_micros();
        write!(
            f,
            "{:>4}.{:06}s {}",
            micros / 1_000_000,
            micros % 1_000_000,
            self.what
        )
    }
}

/// The outcome of one seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedReport {
    pub seed: u64,
    pub options: SimOptions,
    pub ops_ok: u64,
    pub ops_fail: u64,
    pub ops_info: u64,
    /// Events the simulation processed (message deliveries, timers, syncs, client wake-ups...).
    pub events: u64,
    pub virtual_duration: Duration,
    /// A hash of the whole history: equal for two runs of one seed.
    pub fingerprint: u64,
    pub history_events: usize,
    pub checkers: Vec<CheckerResult>,
    /// Set when the run panicked (a node's invariant, or the simulator's own).
    pub panic: Option<String>,
    pub timeline: Vec<TimelineEntry>,
}

impl SeedReport {
    pub fn passed(&self) -> bool {
        self.panic.is_none() && self.checkers.iter().all(CheckerResult::is_ok)
    }

    /// Whether the checker named `name` (e.g. [`checker::single_writer::NAME`]) found a violation.
    pub fn failed_checker(&self, name: &str) -> bool {
        self.checkers
            .iter()
            .any(|c| c.checker == name && !c.is_ok())
    }

    /// The command line that replays this seed exactly.
    pub fn replay_command(&self) -> String {
        let mut command = format!("triarch sim --seed {}", self.seed);
        for arg in self.options.cli_args() {
            command.push(' ');
            command.push_str(&arg);
        }
        command
    }
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        write!(
            f,
            "seed {} {verdict}: {} ok, {} fail, {} info; {} events, {:.1} s virtual, \
             fingerprint {:016x}",
            self.seed,
            self.ops_ok,
            self.ops_fail,
            self.ops_info,
            self.events,
            self.virtual_duration.as_secs_f64(),
            self.fingerprint
        )?;
        if let Some(p) = &self.panic {
            write!(f, "\n  panicked: {p}")?;
        }
        for c in self.checkers.iter().filter(|c| !c.is_ok()) {
            write!(f, "\n  {c}")?;
        }
        if !self.passed() {
            write!(f, "\n  replay: {}", self.replay_command())?;
        }
        Ok(())
    }
}

/// Totals over a range of seeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub seeds: u64,
    /// The report of every seed that failed, in seed order.
    pub failed: Vec<SeedReport>,
    pub ops_ok: u64,
    pub ops_fail: u64,
    pub ops_info: u64,
    pub events: u64,
    pub virtual_duration: Duration,
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seed(s), {} failed; {} ok, {} fail, {} info; {} events, {:.0} s virtual",
            self.seeds,
            self.failed.len(),
            self.ops_ok,
            self.ops_fail,
            self.ops_info,
            self.events,
            self.virtual_duration.as_secs_f64()
        )
    }
}

/// Runs one seed. A panic inside the run (a node's failed invariant) is caught and reported as a
/// failure of that seed rather than ending a sweep over many seeds.
pub fn run_seed(seed: u64, options: &SimOptions) -> SeedReport {
    guarded(seed, options, || Simulation::new(seed, options).run())
}

/// Runs one seed of CRDT workload `workload` ([`merged`]): the set or counter checker and the
/// state convergence checker judge it. With `options.planted_bug` the engine runs the
/// workload's own planted bug instead of acknowledge-before-quorum (whose acknowledged writes
/// are durable on one replica and so reappear after the final repair): for `set`, removes that
/// forget what their read observed (`bug_remove_unobserved`); for `counter`, one actor shared by
/// every coordinator (`bug_shared_actor`). [`SeedReport::replay_command`] does not name the
/// workload; [`merged_replay_command`] does.
pub fn run_merged_seed(seed: u64, options: &SimOptions, workload: MergedWorkload) -> SeedReport {
    guarded(seed, options, || {
        Simulation::new_merged(seed, options, workload).run()
    })
}

/// Like [`run_seeds`], for a CRDT workload.
pub fn run_merged_seeds(
    first: u64,
    count: u64,
    options: &SimOptions,
    workload: MergedWorkload,
    mut on_seed: impl FnMut(&SeedReport),
) -> Summary {
    let mut summary = Summary::default();
    for seed in first..first.saturating_add(count) {
        let report = run_merged_seed(seed, options, workload);
        on_seed(&report);
        summary.add(report);
    }
    summary
}

/// The command that replays one seed of a CRDT workload (through its seed test: the `triarch`
/// CLI runs the register workload).
pub fn merged_replay_command(report: &SeedReport, workload: MergedWorkload) -> String {
    let bug = if report.options.planted_bug {
        " TRIARCH_SIM_PLANTED_BUG=1"
    } else {
        ""
    };
    format!(
        "TRIARCH_SIM_SEED={}{bug} cargo test -p triarch-sim --test merged_seeds {}_seeds -- --nocapture",
        report.seed, workload
    )
}

/// Runs one seed of multi-leader workload `workload` (one of [`MergedWorkload::MULTI_LEADER`])
/// in `regions`, or of any other workload with its nodes placed in `regions` (the
/// primary-backup workloads, to compare what each model's writes cost in the same regions).
pub fn run_multileader_seed(
    seed: u64,
    options: &SimOptions,
    workload: MergedWorkload,
    regions: &RegionOptions,
) -> SeedReport {
    guarded(seed, options, || {
        Simulation::new_in_regions(seed, options, workload, regions).run()
    })
}

/// Like [`run_seeds`], for [`run_multileader_seed`].
pub fn run_multileader_seeds(
    first: u64,
    count: u64,
    options: &SimOptions,
    workload: MergedWorkload,
    regions: &RegionOptions,
    mut on_seed: impl FnMut(&SeedReport),
) -> Summary {
    let mut summary = Summary::default();
    for seed in first..first.saturating_add(count) {
        let report = run_multileader_seed(seed, options, workload, regions);
        on_seed(&report);
        summary.add(report);
    }
    summary
}

/// The command that replays one seed of a multi-leader workload through its seed test.
pub fn multileader_replay_command(
    report: &SeedReport,
    workload: MergedWorkload,
    regions: &RegionOptions,
) -> String {
    let planted = regions
        .planted
        .map(|b| format!(" TRIARCH_SIM_PLANTED={b}"))
        .unwrap_or_default();
    format!(
        "TRIARCH_SIM_SEED={}{planted} cargo test -p triarch-sim --test multileader {}_seeds -- --nocapture",
        report.seed, workload
    )
}

/// Runs `run`, turning a panic (a node's failed invariant) into a failed report.
fn guarded(seed: u64, options: &SimOptions, run: impl FnOnce() -> SeedReport) -> SeedReport {
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(report) => report,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            SeedReport {
                seed,
                options: options.clone(),
                ops_ok: 0,
                ops_fail: 0,
                ops_info: 0,
                events: 0,
                virtual_duration: Duration::ZERO,
                fingerprint: 0,
                history_events: 0,
                checkers: Vec::new(),
                panic: Some(message),
                timeline: Vec::new(),
            }
        }
    }
}

/// Runs seeds `first..first + count`, calling `on_seed` after each (for progress and for
/// printing failures as they happen).
pub fn run_seeds(
    first: u64,
    count: u64,
    options: &SimOptions,
    mut on_seed: impl FnMut(&SeedReport),
) -> Summary {
    let mut summary = Summary::default();
    for seed in first..first.saturating_add(count) {
        let report = run_seed(seed, options);
        on_seed(&report);
        summary.add(report);
    }
    summary
}

impl Summary {
    fn add(&mut self, report: SeedReport) {
        self.seeds += 1;
        self.ops_ok += report.ops_ok;
        self.ops_fail += report.ops_fail;
        self.ops_info += report.ops_info;
        self.events += report.events;
        self.virtual_duration += report.virtual_duration;
        if !report.passed() {
            self.failed.push(report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_commands_name_only_non_default_options() {
        let report = |options: SimOptions| SeedReport {
            seed: 42,
            options,
            ops_ok: 0,
            ops_fail: 0,
            ops_info: 0,
            events: 0,
            virtual_duration: Duration::ZERO,
            fingerprint: 0,
            history_events: 0,
            checkers: Vec::new(),
            panic: None,
            timeline: Vec::new(),
        };
        assert_eq!(
            report(SimOptions::default()).replay_command(),
            "triarch sim --seed 42"
        );
        let options = SimOptions {
            planted_bug: true,
            crashes: false,
            nodes: 7,
            ..SimOptions::default()
        };
        assert_eq!(
            report(options).replay_command(),
            "triarch sim --seed 42 --nodes 7 --no-crashes --planted-bug"
        );
    }

    #[test]
    fn options_are_validated_and_faults_follow_the_toggles() {
        assert!(SimOptions::default().validate().is_ok());
        let none = SimOptions {
            nodes: 0,
            ..SimOptions::default()
        };
        assert_eq!(none.validate(), Err(InvalidOptions::Nodes(0)));
        let quiet = SimOptions {
            partitions: false,
            packet_loss: false,
            crashes: false,
            clock_skew: false,
            ..SimOptions::default()
        };
        assert!(quiet.faults().is_empty());
        assert_eq!(SimOptions::default().faults().len(), Fault::ALL.len());
    }
}
