//! The trade-off explorer (`triarch explore`, issue 8): the same workload shape against each
//! replication model, in the same simulated regions, network and faults, over the same seeds,
//! and what each model cost and gave. The user's guide, with every figure's definition and the
//! JSON field names, is `docs/explore.md`.
//!
//! ## What runs
//!
//! `regions` regions of three nodes each (node `i` in region `r((i - 1) % R + 1)`; 20-60 ms
//! between regions unless `region_ms` says, sub-millisecond inside: [`crate::latency`]),
//! [`SimOptions::multileader`]'s 10 s main phase of 400 operations, no loss or duplication.
//! The nemesis chooses among the faults the options name ([`ExploreOptions::faults`]: a region
//! cut off, a node crash, a clock jump), one or two per fault window (2-5 s, alternating with
//! healed windows of 2-5 s, from 1 s on); the schedule comes from the seed alone, so every
//! model of one seed sees the same faults at the same times.
//!
//! | workload | primary-backup | multi-leader | leaderless |
//! |---|---|---|---|
//! | `cart` | L (registers stand in) | MC (`set`) | S (`set`) |
//! | `balance` | B (WATCH/MULTI/EXEC transfers) | MB (read-then-write, `lww`) | LB (read-then-write, `lww`) |
//! | `prefs` | L (registers) | MR (`lww`) | A (single-writer `lww` registers) |
//! | `custom` | L + [`CustomMix`] | MR + mix | LR + mix |
//!
//! A (model, workload) pair that runs in two rows (L) runs once. The leaderless keyspaces'
//! N/R/W, the register keyspaces' merge policy, the primary-backup read policy and
//! anti-entropy are options ([`ExploreOptions::n`], [`ExploreOptions::merge`],
//! [`ExploreOptions::read`], [`ExploreOptions::anti_entropy`]), each reaching only the runs of
//! its model.
//!
//! ## What is measured
//!
//! Per (workload, model), over every seed: write and read latency p50/p99 by the client's
//! region (after a 1 s warm-up), messages sent per acknowledged write, conflicts, merges and
//! LWW discards, aborted transactions, read repairs and hinted writes, stale reads
//! ([`staleness`]), the balance's anomalies ([`anomalies`]), writes that succeeded through a
//! cut-off region and elsewhere meanwhile, checker verdicts, reads answered with siblings
//! (`--merge siblings`), the time from the final heal until every replica agrees
//! ([`crate::ExploreSettings`], [`Simulation::time_to_converge`]), anti-entropy keys repaired
//! and bytes sent (`--anti-entropy`); for the HTML report ([`html`]),
//! every latency and the first seed's availability timeline and fault windows.
//!
//! [`Report`]'s `Display` is the terminal table, [`Report::json_lines`] one JSON object per
//! line, [`Report::html`] the self-contained HTML report. Output depends on the options alone:
//! the same options give byte-identical output.

pub mod advise;
pub mod anomalies;
pub mod html;
pub mod staleness;

use crate::checker::linearizable::{RegisterCall, RegisterOp, RegisterResult};
use crate::checker::{ViolationKind, regional, registers};
use crate::history::EventType;
use crate::merged::{MergedFunction, MergedWorkload, Mix};
use crate::nemesis::Fault;
use crate::{RegionOptions, SimOptions, Simulation};
use anomalies::BalanceAnomalies;
use staleness::Staleness;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;
use triarch_core::{Instant, KeyspaceConfig, MergePolicy, Model, NodeId, QuorumMode, ReadPolicy};
use triarch_leaderless::LeaderlessConfig;

/// Writes and reads invoked before this are left out of the latencies (first elections).
pub const WARM_UP: Duration = Duration::from_secs(1);
/// Writes invoked in a cut's last stretch are not counted for it: even a write its region
/// decides alone (about 2 ms) might complete only after the heal. A write that needs another
/// region cannot complete during the cut at all, however early it starts.
pub const CUT_TAIL: Duration = Duration::from_millis(100);
/// Nodes per region.
pub const NODES_PER_REGION: u32 = 3;

/// A workload shape of the canonical deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    Cart,
    Balance,
    Prefs,
    /// The shape [`ExploreOptions::mix`] describes, on registers (not part of `all`).
    Custom,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Cart, Workload::Balance, Workload::Prefs];

    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Cart => "cart",
            Workload::Balance => "balance",
            Workload::Prefs => "prefs",
            Workload::Custom => "custom",
        }
    }

    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL
            .into_iter()
            .chain([Workload::Custom])
            .find(|w| w.as_str() == name)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a model name as the configuration spells it.
pub fn parse_model(name: &str) -> Option<Model> {
    Model::ALL.into_iter().find(|m| m.as_str() == name)
}

/// Where a write of `model` becomes authoritative.
pub fn authoritative(model: Model) -> &'static str {
    match model {
        Model::PrimaryBackup => {
            "once a majority of the keyspace's one Raft group (voters spread over the regions) \
             holds it, ordered by the one leader wherever the client is"
        }
        Model::MultiLeader => {
            "once a majority of the writer's own region's Raft group holds it; other regions \
             learn it asynchronously and merge conflicts by policy"
        }
        Model::Leaderless => {
            "once W=2 of the key's N=3 replicas (wherever the ring put them) hold it; readers \
             reconcile R=2 copies and repair"
        }
    }
}

/// What `triarch explore` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ExploreOptions {
    /// Regions, each of [`NODES_PER_REGION`] nodes (2 to 5).
    pub regions: u32,
    pub first_seed: u64,
    pub seeds: u64,
    pub workloads: Vec<Workload>,
    pub models: Vec<Model>,
    /// One region cut off per fault window.
    pub partition: bool,
    /// A node (sometimes two) crashes in fault windows and restarts over its disk.
    pub crash: bool,
    /// Clocks disagree (±100 ms from the start) and one or two jump by up to ±20 s in fault
    /// windows: what last-writer-wins orders by.
    pub skew: bool,
    /// The shape of [`Workload::Custom`].
    pub mix: CustomMix,
    /// The multi-leader balance merges by `counter` (transfers as increments) instead of `lww`
    /// (transfers as SETs of the balances read).
    pub counter_balance: bool,
    /// Leaderless keyspaces use sloppy quorums (hinted handoff): a write succeeds once W of
    /// the key's owners are covered, by themselves or by fallbacks standing in for suspected
    /// owners. Default: strict (only owners count).
    pub sloppy: bool,
    /// Every link's latency distribution ([`LATENCY_KINDS`]); `None`: drawn by the seed.
    pub latency: Option<u64>,
    /// The one-way latency between every two regions (ms); `None`: drawn per pair by the
    /// seed, 20 to 60 ms.
    pub region_ms: Option<u64>,
    /// Primary-backup keyspaces are placed in this region (1-based): every voter and the
    /// preferred leader ([`triarch_core::KeyspaceConfig::home`]). `None`: voters spread over
    /// the regions by the keyspace's name.
    pub primary_home: Option<u32>,
    /// The leaderless keyspaces' N, R and W (`--n`, `--r`, `--w`); `None`: N=3, and R and W a
    /// majority of N ([`ExploreOptions::quorums`]).
    pub n: Option<u8>,
    pub r: Option<u8>,
    pub w: Option<u8>,
    /// The leaderless register keyspaces' merge policy (`--merge`): `lww` (default) or
    /// `siblings`; it applies where clients GET and SET (the balance's LB and the custom
    /// workload's LR); the cart keeps `set`, and workload A its `lww`.
    pub merge: Option<MergePolicy>,
    /// The primary-backup keyspaces' read policy (`--read`); `None`: linearizable, under
    /// leader leases on odd seeds and by ReadIndex on even ones.
    pub read: Option<ReadPolicy>,
    /// Leaderless Merkle anti-entropy on, every [`ANTI_ENTROPY_INTERVAL`] (`--anti-entropy`);
    /// off by default.
    pub anti_entropy: bool,
}

/// How often, with `--anti-entropy`, each node compares each range with each peer at most: a
/// tenth of the main phase, so that exchanges happen during the run (the engine's default,
/// 10 s, is a whole main phase).
pub const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(1);

/// `--merge` values: the policies a register keyspace (GET and SET) can have.
pub fn parse_merge(name: &str) -> Option<MergePolicy> {
    match name {
        "lww" => Some(MergePolicy::Lww),
        "siblings" => Some(MergePolicy::Siblings),
        _ => None,
    }
}

/// The latency distribution kinds, by index (`--latency`): inside a region sub-millisecond of
/// that kind; between regions constant, uniform up to a quarter above the base, or (for the
/// exponential and log-normal kinds, since a wide-area link has a floor) log-normal around the
/// base with a small sigma ([`crate::LatencyDistribution`]).
pub const LATENCY_KINDS: [&str; 4] = ["constant", "uniform", "exponential", "lognormal"];

/// The index of a latency kind's name.
pub fn parse_latency(name: &str) -> Option<u64> {
    LATENCY_KINDS
        .iter()
        .position(|&k| k == name)
        .map(|i| i as u64)
}

/// The custom workload's shape: registers read with probability `reads` and otherwise written
/// (a unique value, zero-padded to `value_bytes`), `keys` keys drawn from a Zipf distribution of
/// exponent `zipf` (0: uniform), [`CUSTOM_PROCESSES`] clients placed in the regions in
/// proportion to `region_mix` (one weight per region), each talking to its own region's nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomMix {
    pub reads: f64,
    pub keys: u64,
    pub zipf: f64,
    /// Empty: the same weight for every region.
    pub region_mix: Vec<f64>,
    pub value_bytes: usize,
}

/// The custom workload's client processes.
pub const CUSTOM_PROCESSES: u64 = 12;

impl Default for CustomMix {
    fn default() -> Self {
        CustomMix {
            reads: 0.9,
            keys: 100,
            zipf: 0.99,
            region_mix: Vec::new(),
            value_bytes: 100,
        }
    }
}

impl CustomMix {
    fn to_mix(&self, regions: u32) -> Mix {
        let region_weights = if self.region_mix.is_empty() {
            vec![1.0; regions as usize]
        } else {
            self.region_mix.clone()
        };
        Mix {
            reads: self.reads,
            zipf: self.zipf,
            region_weights,
            value_bytes: self.value_bytes,
            processes: CUSTOM_PROCESSES,
        }
    }

    fn validate(&self, regions: u32) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.reads) {
            return Err(format!("reads must be 0 to 1, not {}", self.reads));
        }
        if !(1..=100_000).contains(&self.keys) {
            return Err(format!("keys must be 1 to 100000, not {}", self.keys));
        }
        if !(0.0..=5.0).contains(&self.zipf) {
            return Err(format!("zipf must be 0 to 5, not {}", self.zipf));
        }
        if self.value_bytes > 1 << 20 {
            return Err(format!(
                "value bytes must be at most 1 MiB, not {}",
                self.value_bytes
            ));
        }
        if !self.region_mix.is_empty()
            && (self.region_mix.len() != regions as usize
                || self.region_mix.iter().any(|w| !w.is_finite() || *w < 0.0)
                || self.region_mix.iter().sum::<f64>() <= 0.0)
        {
            return Err(format!(
                "region mix needs {regions} non-negative weights, not all zero: {:?}",
                self.region_mix
            ));
        }
        Ok(())
    }

    /// The shape in words.
    pub fn describe(&self) -> String {
        let regions = if self.region_mix.is_empty() {
            "even".to_string()
        } else {
            let shown: Vec<String> = self.region_mix.iter().map(|w| format!("{w}")).collect();
            shown.join(",")
        };
        format!(
            "custom: {:.0}% reads, {} keys, zipf {}, region mix {regions}, {} B values, {CUSTOM_PROCESSES} clients",
            self.reads * 100.0,
            self.keys,
            self.zipf,
            self.value_bytes
        )
    }
}

impl Default for ExploreOptions {
    fn default() -> Self {
        ExploreOptions {
            regions: 3,
            first_seed: 0,
            seeds: 5,
            workloads: Workload::ALL.to_vec(),
            models: Model::ALL.to_vec(),
            partition: true,
            crash: false,
            skew: false,
            mix: CustomMix::default(),
            counter_balance: false,
            sloppy: false,
            latency: None,
            region_ms: None,
            primary_home: None,
            n: None,
            r: None,
            w: None,
            merge: None,
            read: None,
            anti_entropy: false,
        }
    }
}

impl ExploreOptions {
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=5).contains(&self.regions) {
            return Err(format!("regions must be 2 to 5, not {}", self.regions));
        }
        if self.seeds == 0 || self.seeds > 1_000 {
            return Err(format!("seeds must be 1 to 1000, not {}", self.seeds));
        }
        if self.workloads.is_empty() || self.models.is_empty() {
            return Err("name at least one workload and one model".into());
        }
        if self.workloads.contains(&Workload::Custom) {
            self.mix.validate(self.regions)?;
        }
        if self
            .latency
            .is_some_and(|k| k >= LATENCY_KINDS.len() as u64)
        {
            return Err("latency kind out of range".into());
        }
        if let Some(home) = self.primary_home
            && !(1..=self.regions).contains(&home)
        {
            return Err(format!(
                "the primary-backup home region must be r1 to r{}, not r{home}",
                self.regions
            ));
        }
        if self.region_ms.is_some_and(|ms| !(1..=400).contains(&ms)) {
            return Err(format!(
                "region latency must be 1 to 400 ms (messages take at most {} ms), not {:?}",
                crate::LATENCY_MAX.as_millis(),
                self.region_ms
            ));
        }
        self.validate_keyspaces()
    }

    /// The keyspace settings (`--n/--r/--w`, `--merge`, `--read`, `--anti-entropy`): each must
    /// reach a keyspace that runs, and make a valid one.
    fn validate_keyspaces(&self) -> Result<(), String> {
        let leaderless = self.models.contains(&Model::Leaderless);
        let quorums_given = self.n.is_some() || self.r.is_some() || self.w.is_some();
        if quorums_given {
            if !leaderless {
                return Err(
                    "--n, --r and --w set leaderless keyspaces: add leaderless to --models".into(),
                );
            }
            let (n, r, w) = self.quorums();
            let nodes = (self.regions * NODES_PER_REGION) as usize;
            let keyspace = KeyspaceConfig {
                n,
                r,
                w,
                ..KeyspaceConfig::leaderless("explore")
            };
            keyspace
                .validate(nodes)
                .map_err(|e| format!("N={n} R={r} W={w}: {e}"))?;
        }
        if let Some(merge) = self.merge {
            if !matches!(merge, MergePolicy::Lww | MergePolicy::Siblings) {
                return Err(format!(
                    "--merge {merge}: the register keyspaces take lww or siblings (the cart keeps set)"
                ));
            }
            let applies = self
                .workloads
                .iter()
                .any(|w| matches!(w, Workload::Balance | Workload::Custom));
            if !leaderless || !applies {
                return Err(
                    "--merge sets the leaderless register keyspaces of the balance and custom workloads: \
                     run leaderless and one of them"
                        .into(),
                );
            }
        }
        if self.read.is_some() && !self.models.contains(&Model::PrimaryBackup) {
            return Err(
                "--read sets primary-backup keyspaces: add primary-backup to --models".into(),
            );
        }
        if self.anti_entropy && !leaderless {
            return Err(
                "--anti-entropy runs in leaderless keyspaces: add leaderless to --models".into(),
            );
        }
        Ok(())
    }

    /// The leaderless keyspaces' (N, R, W): as given, N=3 otherwise, R and W a majority of N
    /// otherwise (as `TRIARCH.KEYSPACE CREATE` defaults them).
    pub fn quorums(&self) -> (u8, u8, u8) {
        let n = self.n.unwrap_or(3);
        let majority = n / 2 + 1;
        (n, self.r.unwrap_or(majority), self.w.unwrap_or(majority))
    }

    /// What the simulator is told of the keyspace settings.
    fn settings(&self) -> crate::ExploreSettings {
        let quorums_given = self.n.is_some() || self.r.is_some() || self.w.is_some();
        crate::ExploreSettings {
            quorums: quorums_given.then(|| self.quorums()),
            merge: self.merge,
            read: self.read,
            anti_entropy_interval: self.anti_entropy.then_some(ANTI_ENTROPY_INTERVAL),
        }
    }

    /// [`ExploreOptions::settings`] for a run of `model`: anti-entropy and the read policy
    /// only where they apply (the nodes of every run host the leaderless `default` keyspace
    /// and run the primary-backup engine, so that either would change other models' runs).
    fn settings_for(&self, model: Model) -> crate::ExploreSettings {
        let mut settings = self.settings();
        if model != Model::Leaderless {
            settings.anti_entropy_interval = None;
        }
        if model != Model::PrimaryBackup {
            settings.read = None;
        }
        settings
    }

    /// The keyspace settings in words, for the report's header.
    pub fn describe_keyspaces(&self) -> String {
        let (n, r, w) = self.quorums();
        let read = self.read.map_or_else(
            || "linearizable (leases on odd seeds, ReadIndex on even)".to_string(),
            |p| p.to_string(),
        );
        let placed = self.primary_home.map_or_else(
            || "voters spread over the regions".to_string(),
            |r| format!("home region r{r}"),
        );
        format!(
            "leaderless N={n} R={r} W={w}, register merge {}, anti-entropy {}; primary-backup reads {read}, {placed}",
            self.merge.unwrap_or(MergePolicy::Lww),
            if self.anti_entropy {
                format!("every {} s", ANTI_ENTROPY_INTERVAL.as_secs())
            } else {
                "off".to_string()
            }
        )
    }

    fn sim_options(&self) -> SimOptions {
        SimOptions {
            nodes: self.regions * NODES_PER_REGION,
            partitions: false,
            packet_loss: false,
            duplication: false,
            crashes: false,
            clock_skew: self.skew,
            ..SimOptions::multileader()
        }
    }

    /// The faults the nemesis chooses among, one or two per fault window.
    pub fn faults(&self) -> Vec<Fault> {
        let mut faults = Vec::new();
        if self.partition {
            faults.push(Fault::RegionCut);
        }
        if self.crash {
            faults.push(Fault::CrashRestart);
        }
        if self.skew {
            faults.push(Fault::ClockBump);
        }
        faults
    }

    /// Where a write of `model` becomes authoritative in these runs (leaderless: at the
    /// chosen N, R and W; primary-backup: in its home region if it has one).
    pub fn authoritative(&self, model: Model) -> String {
        let (n, r, w) = self.quorums();
        match model {
            Model::PrimaryBackup if self.primary_home.is_some() => {
                "once a majority of the keyspace's one Raft group (every voter in its home \
                 region) holds it, ordered by the one leader there; clients elsewhere send it \
                 there and wait for the answer"
                    .to_string()
            }
            Model::Leaderless if self.sloppy => format!(
                "once W={w} of the key's N={n} owners are covered, by themselves or by fallback \
                 nodes holding a hint for a suspected owner (sloppy quorum); readers \
                 reconcile R={r} owners' copies and repair"
            ),
            Model::Leaderless => format!(
                "once W={w} of the key's N={n} replicas (wherever the ring put them) hold it; \
                 readers reconcile R={r} copies and repair"
            ),
            _ => authoritative(model).to_string(),
        }
    }

    /// The fault schedule in words.
    pub fn describe_faults(&self) -> String {
        let mut parts = Vec::new();
        if self.partition {
            parts.push("a region cut off from the others");
        }
        if self.crash {
            parts.push("a node crash and restart");
        }
        if self.skew {
            parts.push("a clock jump of up to 20 s (clocks ±100 ms apart throughout)");
        }
        if parts.is_empty() {
            return "no faults".to_string();
        }
        format!(
            "fault windows of 2-5 s from 1 s, healed 2-5 s between them, each with one or two of: {}",
            parts.join("; ")
        )
    }
}

/// The simulator workload one (workload, model) cell runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Run {
    Merged(MergedWorkload),
    /// A register workload (L, MR, LR) under the custom mix.
    Mixed(MergedWorkload),
    /// Workload A: single-writer registers in the leaderless `default` keyspace.
    Registers,
}

/// The run of a cell, its short name, and a note; or why nothing runs.
fn plan(
    workload: Workload,
    model: Model,
    options: &ExploreOptions,
) -> Result<(Run, &'static str, Option<&'static str>), &'static str> {
    use MergedWorkload as W;
    match (workload, model) {
        (Workload::Cart, Model::MultiLeader) => Ok((Run::Merged(W::MlCart), "MC", None)),
        (Workload::Cart, Model::Leaderless) => Ok((Run::Merged(W::Set), "S", None)),
        (Workload::Cart, Model::PrimaryBackup) => Ok((
            Run::Merged(W::Registers),
            "L",
            Some("registers stand in: no set workload runs on primary-backup"),
        )),
        (Workload::Balance, Model::PrimaryBackup) => Ok((Run::Merged(W::Bank), "B", None)),
        (Workload::Balance, Model::MultiLeader) if options.counter_balance => Ok((
            Run::Merged(W::MlCounterBank),
            "MK",
            Some(
                "no transactions here: read the source's balance, then increment both; merge counter",
            ),
        )),
        (Workload::Balance, Model::MultiLeader) => Ok((
            Run::Merged(W::MlBank),
            "MB",
            Some("no transactions here: read both balances, then SET both; merge lww"),
        )),
        (Workload::Balance, Model::Leaderless) => Ok((
            Run::Merged(W::LwwBank),
            "LB",
            Some(
                "no transactions here: read both balances, then SET both; merge as the header's register merge",
            ),
        )),
        (Workload::Prefs, Model::MultiLeader) => Ok((Run::Merged(W::MlRegisters), "MR", None)),
        (Workload::Prefs, Model::Leaderless) => Ok((Run::Registers, "A", None)),
        (Workload::Prefs, Model::PrimaryBackup) => Ok((Run::Merged(W::Registers), "L", None)),
        (Workload::Custom, Model::PrimaryBackup) => Ok((Run::Mixed(W::Registers), "L+mix", None)),
        (Workload::Custom, Model::MultiLeader) => Ok((Run::Mixed(W::MlRegisters), "MR+mix", None)),
        (Workload::Custom, Model::Leaderless) => Ok((
            Run::Mixed(W::LwwRegisters),
            "LR+mix",
            Some("registers in a leaderless keyspace, N/R/W and merge as the header says"),
        )),
    }
}

/// One completed-or-not client operation, as the explorer needs it.
struct Sample {
    write: bool,
    read: bool,
    /// A bank transfer aborted because a watched account changed.
    aborted: bool,
    region: u32,
    invoked: Instant,
    completed: Option<Instant>,
    ok: bool,
}

/// p50 and p99 of a list of latencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
}

fn percentiles(mut values: Vec<Duration>) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    values.sort();
    let at = |q: f64| values[((values.len() - 1) as f64 * q) as usize];
    Some(Percentiles {
        count: values.len(),
        p50: at(0.5),
        p99: at(0.99),
    })
}

/// `(ok, attempted)`.
pub type Availability = (u64, u64);

/// What one (workload, model) cell measured over every seed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    pub workload: Option<Workload>,
    pub model: Option<Model>,
    /// The simulator workload that ran, `None` when nothing did.
    pub run: Option<&'static str>,
    pub note: Option<&'static str>,
    pub seeds_passed: Option<u64>,
    pub failed_checkers: Vec<String>,
    pub events: u64,
    pub write_latency: BTreeMap<String, Percentiles>,
    pub read_latency: BTreeMap<String, Percentiles>,
    pub conflicts: Option<u64>,
    pub merged: Option<u64>,
    pub lww_discarded: Option<u64>,
    pub read_repairs: Option<u64>,
    pub hinted_writes: Option<u64>,
    pub aborted_transfers: Option<u64>,
    pub cut_off: BTreeMap<String, Availability>,
    pub elsewhere: Availability,
    /// Messages the nodes sent during the main phases, and writes acknowledged in them, over
    /// every seed.
    pub messages: u64,
    pub writes_ok: u64,
    /// Register workloads: (keys whose history is not linearizable, or undecided; keys
    /// checked), summed over seeds ([`crate::checker::registers`]).
    pub linearizable: Option<(u64, u64)>,
    /// The balance workload's anomalies, summed over seeds (drift as absolute values).
    pub balance: Option<BalanceAnomalies>,
    /// Stale reads over every seed (`None`: workload B, whose reads are linearizable
    /// snapshots by construction).
    pub staleness: Option<Staleness>,
    /// Every write and read latency of every seed, sorted (for the HTML report's CDFs).
    pub write_cdf: Vec<Duration>,
    pub read_cdf: Vec<Duration>,
    /// The first seed's writes, per [`TIMELINE_BIN`] from 0: (ok, attempted), by the time
    /// they were invoked; and its fault windows (from, to, what).
    pub timeline: Vec<Availability>,
    /// The same, for the writes through a region while it was cut off (the minority side),
    /// ok only when they completed before the heal.
    pub timeline_cut_off: Vec<Availability>,
    pub windows: Vec<(Duration, Duration, String)>,
    /// Leaderless `siblings` keyspaces: main-phase reads answered with more than one
    /// concurrent value (siblings), over every seed; `None` where the keyspace keeps none.
    pub siblings_returned: Option<u64>,
    /// Per seed that ran, how long after the final heal every replica of every key came to
    /// agree and kept agreeing ([`Simulation::time_to_converge`]); `None`: not by the end of
    /// the run (the final heal plus [`crate::SETTLE`] plus [`crate::FINAL_READ_SETTLE`]).
    pub converge_after_heal: Vec<Option<Duration>>,
    /// With `--anti-entropy`, leaderless: keys anti-entropy repaired and bytes it sent, every
    /// node's counters over every seed; `None` otherwise.
    pub anti_entropy_keys_repaired: Option<u64>,
    pub anti_entropy_bytes_sent: Option<u64>,
}

/// The availability timeline's resolution.
pub const TIMELINE_BIN: Duration = Duration::from_millis(250);

impl Cell {
    /// Messages sent (every kind) per acknowledged write, main phases of every seed.
    pub fn messages_per_write(&self) -> f64 {
        self.messages as f64 / self.writes_ok.max(1) as f64
    }

    /// The median write latency a client of `region` saw.
    pub fn write_p50(&self, region: &str) -> Option<Duration> {
        self.write_latency.get(region).map(|p| p.p50)
    }

    /// Writes through cut-off regions, every region together.
    pub fn cut_off_total(&self) -> Availability {
        self.cut_off
            .values()
            .fold((0, 0), |(o, a), (ok, att)| (o + ok, a + att))
    }
}

fn add(total: &mut Option<u64>, n: u64) {
    *total = Some(total.unwrap_or(0) + n);
}

/// Runs every seed of one run and measures it; `progress` is called after each seed.
fn measure(run: Run, options: &ExploreOptions, progress: &mut dyn FnMut()) -> Cell {
    let mut sim_options = options.sim_options();
    if let Run::Mixed(_) = run {
        sim_options.keys = options.mix.keys;
    }
    let mix = options.mix.to_mix(options.regions);
    let regions = RegionOptions {
        regions: options.regions,
        planted: None,
        primary_home: options.primary_home.map(|r| format!("r{r}")),
    };
    let mut cell = Cell {
        seeds_passed: Some(0),
        ..Cell::default()
    };
    let (mut writes, mut reads): (
        BTreeMap<String, Vec<Duration>>,
        BTreeMap<String, Vec<Duration>>,
    ) = Default::default();
    let model = match run {
        Run::Registers
        | Run::Merged(
            MergedWorkload::Set
            | MergedWorkload::Counter
            | MergedWorkload::Siblings
            | MergedWorkload::Map
            | MergedWorkload::LwwBank,
        )
        | Run::Mixed(MergedWorkload::LwwRegisters) => Model::Leaderless,
        Run::Merged(w) | Run::Mixed(w) if w.is_multileader() => Model::MultiLeader,
        Run::Merged(_) | Run::Mixed(_) => Model::PrimaryBackup,
    };
    for seed in options.first_seed..options.first_seed.saturating_add(options.seeds) {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let leaderless = options.sloppy.then(|| LeaderlessConfig {
                quorum_mode_default: QuorumMode::Sloppy,
                ..LeaderlessConfig::default()
            });
            let (workload, mix) = match run {
                Run::Merged(w) => (Some(w), None),
                Run::Registers => (None, None),
                Run::Mixed(w) => (Some(w), Some(&mix)),
            };
            let mut sim = Simulation::for_explore_with(
                seed,
                &sim_options,
                workload,
                &regions,
                mix,
                leaderless,
                options.settings_for(model),
            );
            let faults = options.faults();
            if !faults.is_empty() {
                sim = sim.with_nemesis_faults(faults);
            }

            if options.latency.is_some() || options.region_ms.is_some() {
                sim = sim.with_network(&crate::NetworkSpec {
                    kind: options.latency,
                    inter_region_micros: options.region_ms.map(|ms| ms * 1_000),
                });
            }
            let report = sim.run();
            (report, sim)
        }));
        progress();
        let Ok((report, sim)) = outcome else {
            if !cell.failed_checkers.iter().any(|c| c == "panic") {
                cell.failed_checkers.push("panic".into());
            }
            continue;
        };
        cell.events += report.events;
        cell.converge_after_heal.push(sim.time_to_converge());
        if report.passed() {
            cell.seeds_passed = cell.seeds_passed.map(|n| n + 1);
        }
        for c in report.checkers.iter().filter(|c| !c.is_ok()) {
            if !cell.failed_checkers.iter().any(|f| f == c.checker) {
                cell.failed_checkers.push(c.checker.to_string());
            }
        }
        let samples = samples(&sim);
        cell.messages += sim.messages_sent_main();
        cell.writes_ok += samples.iter().filter(|s| s.write && s.ok).count() as u64;
        if seed == options.first_seed {
            timeline(&mut cell, &sim, &samples);
        }
        let seen = match (run, sim.merged_history()) {
            (Run::Registers, _) => Some(staleness::of_registers(sim.history())),
            (_, Some(history)) => staleness::of_merged(history),
            (_, None) => None,
        };
        if let Some(seen) = seen {
            cell.staleness
                .get_or_insert_with(Staleness::default)
                .add(&seen);
        }
        let register_ops = match (run, sim.merged_history()) {
            (Run::Registers, _) => Some(registers_of(sim.history())),
            (Run::Mixed(_), Some(history)) => Some(registers::register_ops(history)),
            (
                Run::Merged(
                    MergedWorkload::Registers
                    | MergedWorkload::MlRegisters
                    | MergedWorkload::MlBank
                    | MergedWorkload::LwwBank,
                ),
                Some(history),
            ) => Some(registers::register_ops(history)),
            _ => None,
        };
        if let Some(per_key) = register_ops {
            let keys = per_key.len() as u64;
            let violating = registers::check_keys(per_key).violations.len() as u64;
            let (v, k) = cell.linearizable.get_or_insert((0, 0));
            *v += violating;
            *k += keys;
        }
        if let (Run::Merged(w), Some(history)) = (run, sim.merged_history()) {
            let accounts = sim_options.keys;
            let found = if w.is_lww_bank() {
                Some(anomalies::lww_bank(history, accounts))
            } else if w == MergedWorkload::MlCounterBank {
                Some(anomalies::counter_bank(history, accounts))
            } else if w == MergedWorkload::Bank {
                let violations = report
                    .checkers
                    .iter()
                    .flat_map(|c| &c.violations)
                    .filter(|v| v.kind == ViolationKind::Bank)
                    .count() as u64;
                Some(anomalies::transactional_bank(history, accounts, violations))
            } else {
                None
            };
            if let Some(found) = found {
                cell.balance
                    .get_or_insert_with(BalanceAnomalies::default)
                    .add(&found);
            }
        }
        for s in &samples {
            let Some(done) = s.completed.filter(|_| s.ok) else {
                continue;
            };
            if s.invoked.as_micros() < WARM_UP.as_micros() as u64 {
                continue;
            }
            let waited = Duration::from_micros(done.as_micros() - s.invoked.as_micros());
            let region = format!("r{}", s.region + 1);
            if s.write {
                writes.entry(region).or_default().push(waited);
                cell.write_cdf.push(waited);
            } else if s.read {
                reads.entry(region).or_default().push(waited);
                cell.read_cdf.push(waited);
            }
        }
        for cut in sim.isolations() {
            for s in samples.iter().filter(|s| s.write && !s.aborted) {
                let tail_from = cut
                    .to
                    .as_micros()
                    .saturating_sub(CUT_TAIL.as_micros() as u64);
                if s.invoked < cut.from || s.invoked.as_micros() >= tail_from {
                    continue;
                }
                let ok = s.ok && s.completed.is_some_and(|c| c <= cut.to);
                let counts = if s.region == cut.region {
                    cell.cut_off
                        .entry(format!("r{}", cut.region + 1))
                        .or_default()
                } else {
                    &mut cell.elsewhere
                };
                counts.0 += u64::from(ok);
                counts.1 += 1;
            }
        }
        match model {
            Model::MultiLeader => {
                if let Some(replicas) = sim.region_replicas() {
                    for c in regional::per_region(replicas).values() {
                        add(&mut cell.conflicts, c.conflicts);
                        add(&mut cell.merged, c.merged);
                        add(&mut cell.lww_discarded, c.lww_discarded);
                    }
                }
            }
            Model::Leaderless => {
                cell.lww_discarded.get_or_insert(0);
                cell.read_repairs.get_or_insert(0);
                cell.hinted_writes.get_or_insert(0);
                for stats in sim.leaderless_stats().values() {
                    for s in stats.values() {
                        add(&mut cell.lww_discarded, s.lww_discarded);
                        add(&mut cell.read_repairs, s.read_repairs);
                        add(&mut cell.hinted_writes, s.hinted_writes);
                        if options.anti_entropy {
                            add(
                                &mut cell.anti_entropy_keys_repaired,
                                s.anti_entropy_keys_repaired,
                            );
                            add(&mut cell.anti_entropy_bytes_sent, s.anti_entropy_bytes_sent);
                        }
                    }
                }
                let workload = match run {
                    Run::Merged(w) | Run::Mixed(w) => Some(w),
                    Run::Registers => None,
                };
                let keyspace = options.settings().keyspace(workload);
                if keyspace.is_some_and(|k| k.merge == MergePolicy::Siblings) {
                    add(&mut cell.siblings_returned, sim.siblings_reads());
                }
            }
            Model::PrimaryBackup => {
                if run == Run::Merged(MergedWorkload::Bank) {
                    add(
                        &mut cell.aborted_transfers,
                        samples.iter().filter(|s| s.aborted).count() as u64,
                    );
                }
            }
        }
    }
    cell.failed_checkers.sort();
    cell.write_cdf.sort();
    cell.read_cdf.sort();
    cell.write_latency = writes
        .into_iter()
        .filter_map(|(r, v)| Some((r, percentiles(v)?)))
        .collect();
    cell.read_latency = reads
        .into_iter()
        .filter_map(|(r, v)| Some((r, percentiles(v)?)))
        .collect();
    cell
}

/// Workload A's history in the linearizability checker's terms, per key.
fn registers_of(history: &crate::history::History) -> BTreeMap<u64, Vec<RegisterOp>> {
    let mut out: BTreeMap<u64, Vec<RegisterOp>> = BTreeMap::new();
    for op in history.ops() {
        let call = match op.f {
            crate::history::Function::Read => RegisterCall::Read,
            crate::history::Function::Write => {
                RegisterCall::Write(op.value.expect("writes carry a value"))
            }
        };
        let invoked = op.invoke_time.as_micros();
        let process = op.process.0;
        let register_op = match (op.outcome, op.complete_time) {
            (EventType::Ok, Some(completed)) => {
                let result = match call {
                    RegisterCall::Read => RegisterResult::Read(op.value),
                    _ => RegisterResult::Written,
                };
                RegisterOp::ok(process, call, invoked, completed.as_micros(), result)
            }
            (EventType::Fail, _) => RegisterOp::fail(process, call, invoked),
            _ => RegisterOp::info(process, call, invoked),
        };
        out.entry(op.key).or_default().push(register_op);
    }
    out
}

/// The first seed's availability timeline and fault windows.
fn timeline(cell: &mut Cell, sim: &Simulation, samples: &[Sample]) {
    let bin = TIMELINE_BIN.as_micros() as u64;
    let cuts = sim.isolations();
    for s in samples.iter().filter(|s| s.write && !s.aborted) {
        let i = (s.invoked.as_micros() / bin) as usize;
        // Through a cut-off region, a write counts as ok when it completed before the heal,
        // as in the table.
        let cut = cuts
            .iter()
            .find(|c| c.region == s.region && c.from <= s.invoked && s.invoked < c.to);
        let ok_in_cut = cut.map(|c| s.ok && s.completed.is_some_and(|done| done <= c.to));
        for (line, ok) in [
            (&mut cell.timeline, Some(s.ok)),
            (&mut cell.timeline_cut_off, ok_in_cut),
        ] {
            let Some(ok) = ok else { continue };
            if line.len() <= i {
                line.resize(i + 1, (0, 0));
            }
            line[i].0 += u64::from(ok);
            line[i].1 += 1;
        }
    }
    let at = |i: Instant| Duration::from_micros(i.as_micros());
    for w in sim.fault_windows() {
        let Some(to) = w.to else { continue };
        let mut what: Vec<String> = w
            .faults
            .iter()
            .map(|f| match f {
                Fault::RegionCut => cuts
                    .iter()
                    .find(|c| c.from == w.from)
                    .map_or("region cut".to_string(), |c| {
                        format!("r{} cut off", c.region + 1)
                    }),
                Fault::CrashRestart => "node crash".to_string(),
                Fault::ClockBump => "clock jump".to_string(),
                other => other.to_string(),
            })
            .collect();
        what.sort();
        cell.windows.push((at(w.from), at(to), what.join(", ")));
    }
}

/// Every main-phase operation of a finished run.
fn samples(sim: &Simulation) -> Vec<Sample> {
    let region = |node: NodeId| sim.region_of(node);
    if let Some(history) = sim.merged_history() {
        let events = history.events();
        let end = history.final_phase_start().unwrap_or(events.len());
        return history
            .ops()
            .into_iter()
            .filter(|op| op.invoke_index < end)
            .map(|op| {
                let write = matches!(
                    op.f,
                    MergedFunction::SetAdd { .. }
                        | MergedFunction::SetRemove { .. }
                        | MergedFunction::CounterAdd { .. }
                        | MergedFunction::RegisterWrite { .. }
                        | MergedFunction::RegisterCas { .. }
                        | MergedFunction::BankTransfer { .. }
                );
                let completed = op.complete_index.map(|c| &events[c]);
                let aborted = matches!(op.f, MergedFunction::BankTransfer { .. })
                    && op.outcome == EventType::Fail
                    && completed
                        .and_then(|e| e.error.as_deref())
                        .is_some_and(|e| e.starts_with("aborted"));
                Sample {
                    write,
                    read: op.f.is_read(),
                    aborted,
                    region: region(op.node),
                    invoked: events[op.invoke_index].time,
                    completed: completed.map(|e| e.time),
                    ok: op.outcome == EventType::Ok,
                }
            })
            .collect();
    }
    let history = sim.history();
    let end = history
        .final_phase_start()
        .unwrap_or(history.events().len());
    history
        .ops()
        .into_iter()
        .filter(|op| op.invoke_index < end)
        .map(|op| Sample {
            write: op.f == crate::history::Function::Write,
            read: op.f == crate::history::Function::Read,
            aborted: false,
            region: region(op.node),
            invoked: op.invoke_time,
            completed: op.complete_time,
            ok: op.outcome == EventType::Ok,
        })
        .collect()
}

/// What `triarch explore` found.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub options: ExploreOptions,
    /// Each primary-backup keyspace's voters, with their regions (`regs (registers): n3 (r3) ...`).
    pub primary_voters: Vec<String>,
    /// In workload order, then model order.
    pub cells: Vec<Cell>,
    /// Simulations run (a run shared by two cells counts once).
    pub runs: u64,
    pub events: u64,
}

impl Report {
    /// The self-contained HTML report ([`html`]).
    pub fn html(&self) -> String {
        html::render(self)
    }

    pub fn cell(&self, workload: Workload, model: Model) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.workload == Some(workload) && c.model == Some(model))
    }
}

/// Runs the comparison.
pub fn explore(options: &ExploreOptions) -> Report {
    explore_with_progress(options, &mut |_, _| {})
}

/// Simulations [`explore`] runs for `options` (a run shared by two cells counts once).
pub fn simulations(options: &ExploreOptions) -> u64 {
    let mut runs = std::collections::BTreeSet::new();
    for &workload in &options.workloads {
        for &model in &options.models {
            if let Ok((run, _, _)) = plan(workload, model, options) {
                runs.insert(run);
            }
        }
    }
    runs.len() as u64 * options.seeds
}

/// Runs the comparison, calling `progress(done, total)` after every simulation.
pub fn explore_with_progress(
    options: &ExploreOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Report {
    options
        .validate()
        .unwrap_or_else(|e| panic!("invalid options: {e}"));
    let total = simulations(options);
    let mut done = 0;
    let mut measured: BTreeMap<Run, Cell> = BTreeMap::new();
    let mut cells = Vec::new();
    let (mut runs, mut events) = (0, 0);
    for &workload in &options.workloads {
        for &model in &options.models {
            let cell = match plan(workload, model, options) {
                Ok((run, name, note)) => {
                    let measured = measured.entry(run).or_insert_with(|| {
                        let cell = measure(run, options, &mut || {
                            done += 1;
                            progress(done, total);
                        });
                        runs += options.seeds;
                        events += cell.events;
                        cell
                    });
                    Cell {
                        run: Some(name),
                        note,
                        ..measured.clone()
                    }
                }
                Err(note) => Cell {
                    note: Some(note),
                    ..Cell::default()
                },
            };
            cells.push(Cell {
                workload: Some(workload),
                model: Some(model),
                ..cell
            });
        }
    }
    let region_names: Vec<String> = (1..=options.regions).map(|r| format!("r{r}")).collect();
    let members: Vec<(NodeId, &str)> = (1..=options.regions * NODES_PER_REGION)
        .map(|i| {
            (
                NodeId(i),
                region_names[((i - 1) % options.regions) as usize].as_str(),
            )
        })
        .collect();
    let primary_voters = [MergedWorkload::Registers, MergedWorkload::Bank]
        .into_iter()
        .map(|w| {
            let keyspace = KeyspaceConfig {
                home: options.primary_home.map(|r| format!("r{r}")),
                ..w.keyspace()
            };
            let voters: Vec<String> = triarch_primary::engine::voters_of(&keyspace, &members)
                .into_iter()
                .map(|v| format!("{v} (r{})", (v.0 - 1) % options.regions + 1))
                .collect();
            format!("{} ({}): {}", keyspace.name, w.as_str(), voters.join(" "))
        })
        .collect();
    Report {
        options: options.clone(),
        primary_voters,
        cells,
        runs,
        events,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_micros() as f64 / 1_000.0)
}

fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "n/a".to_string(), |n| n.to_string())
}

fn ratio((ok, attempted): Availability) -> String {
    if attempted == 0 {
        "-".to_string()
    } else {
        format!(
            "{ok}/{attempted} ({:.0}%)",
            ok as f64 * 100.0 / attempted as f64
        )
    }
}

/// `12/338 (3.6%); for p50/p99 20.1/130.0 ms; versions behind mean 1.2, max 3`.
fn stale_line(st: &Staleness) -> String {
    let mut line = format!("{}/{} ({:.1}%)", st.stale, st.reads, st.rate() * 100.0);
    if let Some(p) = percentiles(st.stale_for.clone()) {
        let (mean, max) = versions(st);
        let _ = write!(
            line,
            "; behind by p50/p99 {}/{} ms; versions behind mean {mean:.1}, max {max}",
            ms(p.p50),
            ms(p.p99)
        );
    }
    line
}

/// Times to converge after the final heal over the seeds that did: (p50, max), and how many.
fn converge_summary(
    per_seed: &[Option<Duration>],
) -> (Option<Percentiles>, Option<Duration>, usize) {
    let converged: Vec<Duration> = per_seed.iter().flatten().copied().collect();
    let max = converged.iter().max().copied();
    let n = converged.len();
    (percentiles(converged), max, n)
}

/// `converged p50/max 0.0/150.0 ms after the final heal (5 of 5 seeds; checked every 50 ms)`.
fn converge_line(per_seed: &[Option<Duration>]) -> String {
    let (p, max, n) = converge_summary(per_seed);
    let times = match (p, max) {
        (Some(p), Some(max)) => {
            format!("p50/max {}/{} ms after the final heal", ms(p.p50), ms(max))
        }
        _ => "never, to the end of the run,".to_string(),
    };
    format!(
        "replicas agreed {times} ({n} of {} seeds; checked every {} ms)",
        per_seed.len(),
        crate::CONVERGENCE_CHECK_INTERVAL.as_millis()
    )
}

fn json_converge(per_seed: &[Option<Duration>]) -> String {
    let (p, max, n) = converge_summary(per_seed);
    format!(
        "{{\"seeds\":{},\"converged\":{n},\"p50\":{},\"max\":{}}}",
        per_seed.len(),
        p.map_or_else(|| "null".to_string(), |p| json_ms(p.p50)),
        max.map_or_else(|| "null".to_string(), json_ms)
    )
}

/// (mean, max) versions a stale read missed.
fn versions(st: &Staleness) -> (f64, u64) {
    let max = st.versions.iter().copied().max().unwrap_or(0);
    let mean = if st.versions.is_empty() {
        0.0
    } else {
        st.versions.iter().sum::<u64>() as f64 / st.versions.len() as f64
    };
    (mean, max)
}

fn latencies(l: &BTreeMap<String, Percentiles>) -> String {
    if l.is_empty() {
        return "-".to_string();
    }
    let shown: Vec<String> = l
        .iter()
        .map(|(r, p)| format!("{r} {}/{}", ms(p.p50), ms(p.p99)))
        .collect();
    shown.join("  ")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let between = o
            .region_ms
            .map_or("20-60 ms".to_string(), |ms| format!("{ms} ms"));
        let kind = o
            .latency
            .map_or("of a kind drawn by the seed", |k| LATENCY_KINDS[k as usize]);
        writeln!(
            f,
            "triarch explore: {} regions x {NODES_PER_REGION} nodes ({between} between regions, \
             links {kind}), seeds {}..{}, {}",
            o.regions,
            o.first_seed,
            o.first_seed + o.seeds - 1,
            o.describe_faults()
        )?;
        if o.workloads.contains(&Workload::Custom) {
            writeln!(f, "{}", o.mix.describe())?;
        }
        if o.sloppy {
            writeln!(
                f,
                "leaderless keyspaces use sloppy quorums (hinted handoff)"
            )?;
        }
        writeln!(f, "keyspaces: {}", o.describe_keyspaces())?;
        writeln!(
            f,
            "primary-backup voters: {}; latencies p50/p99 in ms by the client's region",
            self.primary_voters.join("; ")
        )?;
        writeln!(f)?;
        writeln!(f, "where a write becomes authoritative:")?;
        for &model in &o.models {
            writeln!(f, "  {:<15} {}", model.as_str(), o.authoritative(model))?;
        }
        for &workload in &o.workloads {
            writeln!(f)?;
            writeln!(f, "== {workload} ==")?;
            for cell in self.cells.iter().filter(|c| c.workload == Some(workload)) {
                let model = cell.model.map_or("?", Model::as_str);
                let Some(run) = cell.run else {
                    writeln!(f, "{model:<15} {}", cell.note.unwrap_or("n/a"))?;
                    continue;
                };
                write!(f, "{model:<15} workload {run}")?;
                if let Some(note) = cell.note {
                    write!(f, " ({note})")?;
                }
                writeln!(f)?;
                writeln!(f, "  write p50/p99   {}", latencies(&cell.write_latency))?;
                writeln!(
                    f,
                    "  messages        {:.1} sent per acknowledged write (the model's traffic: replication, heartbeats, reads)",
                    cell.messages_per_write()
                )?;
                writeln!(f, "  read p50/p99    {}", latencies(&cell.read_latency))?;
                write!(
                    f,
                    "  after write     conflicts {}, merged {}, lww-discarded {}, aborted transfers {}",
                    count(cell.conflicts),
                    count(cell.merged),
                    count(cell.lww_discarded),
                    count(cell.aborted_transfers)
                )?;
                if let Some(n) = cell.siblings_returned {
                    write!(f, ", siblings returned {n}")?;
                }
                writeln!(f)?;
                writeln!(
                    f,
                    "  after heal      {}",
                    converge_line(&cell.converge_after_heal)
                )?;
                write!(
                    f,
                    "  read/repair     read repairs {}, hinted writes {}",
                    count(cell.read_repairs),
                    count(cell.hinted_writes)
                )?;
                if let (Some(keys), Some(bytes)) = (
                    cell.anti_entropy_keys_repaired,
                    cell.anti_entropy_bytes_sent,
                ) {
                    write!(f, ", anti-entropy keys repaired {keys}, bytes sent {bytes}")?;
                }
                writeln!(f)?;
                if let Some(st) = &cell.staleness {
                    writeln!(f, "  stale reads     {}", stale_line(st))?;
                }
                if let Some((violating, keys)) = cell.linearizable {
                    writeln!(
                        f,
                        "  linearizable    {violating} of {keys} key histories are not (or could not be shown to be)"
                    )?;
                }
                if let Some(b) = &cell.balance {
                    writeln!(
                        f,
                        "  anomalies       lost updates {}, negative balances {}, money created or destroyed {}, half-done transfers {} (transfers done {})",
                        b.lost_updates,
                        b.negative_balances,
                        b.total_drift,
                        b.half_transfers,
                        b.transfers
                    )?;
                }
                if o.partition {
                    let per: Vec<String> = cell
                        .cut_off
                        .iter()
                        .map(|(r, a)| format!("{r} {}", ratio(*a)))
                        .collect();
                    writeln!(
                        f,
                        "  writes ok while cut off: {}; elsewhere meanwhile {}",
                        if per.is_empty() {
                            "-".to_string()
                        } else {
                            per.join(", ")
                        },
                        ratio(cell.elsewhere)
                    )?;
                }
                let checkers = if cell.failed_checkers.is_empty() {
                    String::new()
                } else {
                    format!("; failed: {}", cell.failed_checkers.join(", "))
                };
                writeln!(
                    f,
                    "  checkers        {}/{} seeds pass{checkers}",
                    cell.seeds_passed.unwrap_or(0),
                    o.seeds
                )?;
            }
        }
        Ok(())
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt_str(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_str)
}

fn json_count(n: Option<u64>) -> String {
    n.map_or_else(|| "null".to_string(), |n| n.to_string())
}

fn json_ms(d: Duration) -> String {
    format!("{:.3}", d.as_micros() as f64 / 1_000.0)
}

fn json_latencies(l: &BTreeMap<String, Percentiles>) -> String {
    let parts: Vec<String> = l
        .iter()
        .map(|(r, p)| {
            format!(
                "{}:{{\"count\":{},\"p50\":{},\"p99\":{}}}",
                json_str(r),
                p.count,
                json_ms(p.p50),
                json_ms(p.p99)
            )
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn json_availability((ok, attempted): Availability) -> String {
    format!("{{\"ok\":{ok},\"attempted\":{attempted}}}")
}

fn json_staleness(st: Option<&Staleness>) -> String {
    let Some(st) = st else {
        return "null".to_string();
    };
    let (mean, max) = versions(st);
    let behind = percentiles(st.stale_for.clone()).map_or_else(
        || "null".to_string(),
        |p| {
            let worst = st.stale_for.iter().max().copied().unwrap_or_default();
            format!(
                "{{\"p50\":{},\"p99\":{},\"max\":{}}}",
                json_ms(p.p50),
                json_ms(p.p99),
                json_ms(worst)
            )
        },
    );
    let bins: Vec<String> = st
        .by_age
        .iter()
        .zip(staleness::AGE_BINS_MS)
        .map(|((reads, stale), from)| {
            format!("{{\"age_ms_from\":{from},\"reads\":{reads},\"stale\":{stale}}}")
        })
        .collect();
    format!(
        "{{\"reads\":{},\"stale\":{},\"rate\":{:.4},\"behind_ms\":{behind},\"versions_behind\":{{\"mean\":{mean:.3},\"max\":{max}}},\"by_age\":[{}]}}",
        st.reads,
        st.stale,
        st.rate(),
        bins.join(",")
    )
}

fn json_anomalies(b: Option<&BalanceAnomalies>) -> String {
    b.map_or_else(
        || "null".to_string(),
        |b| {
            format!(
                "{{\"lost_updates\":{},\"negative_balances\":{},\"money_drift\":{},\"half_transfers\":{},\"transfers\":{}}}",
                b.lost_updates, b.negative_balances, b.total_drift, b.half_transfers, b.transfers
            )
        },
    )
}

impl Report {
    /// One JSON object per line, one per (workload, model) (fields: the module documentation).
    pub fn json_lines(&self) -> String {
        let o = &self.options;
        let (n, r, w) = o.quorums();
        let mut out = String::new();
        for c in &self.cells {
            let model = c.model.expect("every cell names its model");
            let failed: Vec<String> = c.failed_checkers.iter().map(|s| json_str(s)).collect();
            let cut: Vec<String> = c
                .cut_off
                .iter()
                .map(|(r, a)| format!("{}:{}", json_str(r), json_availability(*a)))
                .collect();
            let _ = writeln!(
                out,
                "{{\"workload\":{},\"model\":{},\"run\":{},\"note\":{},\"authoritative\":{},\
                 \"regions\":{},\"first_seed\":{},\"seeds\":{},\"partition\":{},\
                 \"crash\":{},\"skew\":{},\"sloppy\":{},\"balance_merge\":{},\"latency\":{},\"region_ms\":{},\
                 \"primary_home\":{},\"seeds_passed\":{},\"failed_checkers\":[{}],\"events\":{},\
                 \"write_latency_ms\":{},\"read_latency_ms\":{},\"conflicts\":{},\"merged\":{},\
                 \"lww_discarded\":{},\"read_repairs\":{},\"hinted_writes\":{},\
                 \"aborted_transfers\":{},\"writes_while_cut_off\":{{{}}},\
                 \"writes_elsewhere_while_cut\":{},\"stale_reads\":{},\"anomalies\":{},\
                 \"messages\":{},\"writes_ok\":{},\"messages_per_write\":{:.2},\
                 \"not_linearizable_keys\":{},\"keys_checked_linearizable\":{},\
                 \"n\":{},\"r\":{},\"w\":{},\"merge\":{},\"read\":{},\"anti_entropy\":{},\
                 \"siblings_returned\":{},\"converge_after_heal_ms\":{},\
                 \"anti_entropy_keys_repaired\":{},\"anti_entropy_bytes_sent\":{}}}",
                json_opt_str(c.workload.map(Workload::as_str)),
                json_str(model.as_str()),
                json_opt_str(c.run),
                json_opt_str(c.note),
                json_str(&o.authoritative(model)),
                o.regions,
                o.first_seed,
                o.seeds,
                o.partition,
                o.crash,
                o.skew,
                o.sloppy,
                json_str(if o.counter_balance { "counter" } else { "lww" }),
                json_opt_str(o.latency.map(|k| LATENCY_KINDS[k as usize])),
                json_count(o.region_ms),
                json_opt_str(o.primary_home.map(|r| format!("r{r}")).as_deref()),
                json_count(c.seeds_passed),
                failed.join(","),
                c.events,
                json_latencies(&c.write_latency),
                json_latencies(&c.read_latency),
                json_count(c.conflicts),
                json_count(c.merged),
                json_count(c.lww_discarded),
                json_count(c.read_repairs),
                json_count(c.hinted_writes),
                json_count(c.aborted_transfers),
                cut.join(","),
                json_availability(c.elsewhere),
                json_staleness(c.staleness.as_ref()),
                json_anomalies(c.balance.as_ref()),
                c.messages,
                c.writes_ok,
                c.messages_per_write(),
                json_count(c.linearizable.map(|(v, _)| v)),
                json_count(c.linearizable.map(|(_, k)| k)),
                n,
                r,
                w,
                json_str(&o.merge.unwrap_or(MergePolicy::Lww).to_string()),
                json_opt_str(o.read.map(|p| p.to_string()).as_deref()),
                o.anti_entropy,
                json_count(c.siblings_returned),
                json_converge(&c.converge_after_heal),
                json_count(c.anti_entropy_keys_repaired),
                json_count(c.anti_entropy_bytes_sent),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_plans_say_what_cannot_run() {
        assert_eq!(Workload::parse("prefs"), Some(Workload::Prefs));
        assert_eq!(Workload::parse("bank"), None);
        assert_eq!(parse_model("multi-leader"), Some(Model::MultiLeader));
        let o = ExploreOptions::default();
        assert!(plan(Workload::Balance, Model::Leaderless, &o).is_ok());
        assert!(plan(Workload::Balance, Model::PrimaryBackup, &o).is_ok());
        assert_eq!(json_str("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }

    fn small(workloads: Vec<Workload>, models: Vec<Model>) -> ExploreOptions {
        ExploreOptions {
            seeds: 2,
            workloads,
            models,
            ..ExploreOptions::default()
        }
    }

    /// The same options give byte-identical output, table and JSON.
    #[test]
    fn the_same_seeds_give_byte_identical_output() {
        let options = small(Workload::ALL.to_vec(), Model::ALL.to_vec());
        let (a, b) = (explore(&options), explore(&options));
        assert_eq!(a.to_string(), b.to_string());
        assert_eq!(a.json_lines(), b.json_lines());
        assert_eq!(a.html(), b.html());
        // The progress callback counts every simulation, once each.
        let mut calls = Vec::new();
        let c = explore_with_progress(&options, &mut |done, total| calls.push((done, total)));
        assert_eq!(c.to_string(), a.to_string());
        let total = simulations(&options);
        assert_eq!(total, a.runs);
        assert_eq!(calls, (1..=total).map(|d| (d, total)).collect::<Vec<_>>());
        assert!(
            a.html().matches("<svg").count() >= 12,
            "four plots per workload"
        );
        // Self-contained: no script, nothing fetched.
        let html = a.html();
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="));
        assert_eq!(a.json_lines().lines().count(), 9, "{}", a.json_lines());
        // Every run passed its checkers, and the cells that cannot run say so.
        for c in a.cells.iter().filter(|c| c.run.is_some()) {
            assert_eq!(c.seeds_passed, Some(2), "{c:?}");
        }
        assert!(a.to_string().contains("== balance =="));
        // Primary-backup registers are linearizable; multi-leader lww registers read locally
        // are not (the same checker, run on every register workload).
        let pb = a
            .cell(Workload::Prefs, Model::PrimaryBackup)
            .expect("a cell");
        let ml = a.cell(Workload::Prefs, Model::MultiLeader).expect("a cell");
        assert!(pb.linearizable.is_some_and(|(v, k)| v == 0 && k > 0), "{a}");
        assert!(ml.linearizable.is_some_and(|(v, _)| v > 0), "{a}");
    }

    /// The headline lesson, in three regions: a primary-backup write crosses regions (to the
    /// leader, and from it to a majority of voters in other regions), a multi-leader write
    /// stays in its region; and a region cut off from the others keeps writing under
    /// multi-leader, not under primary-backup.
    #[test]
    fn multi_leader_writes_locally_and_through_a_cut_primary_backup_does_not() {
        let options = small(
            vec![Workload::Cart],
            vec![Model::PrimaryBackup, Model::MultiLeader],
        );
        let report = explore(&options);
        let pb = report
            .cell(Workload::Cart, Model::PrimaryBackup)
            .expect("pb");
        let ml = report.cell(Workload::Cart, Model::MultiLeader).expect("ml");
        let slower: Vec<&String> = pb
            .write_latency
            .keys()
            .filter(|r| {
                let (Some(p), Some(m)) = (pb.write_p50(r), ml.write_p50(r)) else {
                    return false;
                };
                p > m + Duration::from_millis(20)
            })
            .collect();
        // Whichever region the leader is in, at least the other two are outside it.
        assert!(slower.len() >= 2, "{report}");
        let (ml_ok, ml_attempted) = ml.cut_off_total();
        let (pb_ok, pb_attempted) = pb.cut_off_total();
        assert!(ml_attempted > 0 && pb_attempted > 0, "{report}");
        assert_eq!(ml_ok, ml_attempted, "{report}");
        assert!(pb_ok * 10 < pb_attempted, "{report}");
    }

    /// The latency lesson, measured: with three regions 40 ms apart (round trip),
    /// primary-backup's writes from outside the leader's region pay two round trips above
    /// multi-leader's when its voters are spread (to the leader, then to a majority), and one
    /// when the keyspace has a home region holding every voter (to the leader and back); inside
    /// the home region they cost what multi-leader's do.
    #[test]
    fn a_home_region_makes_primary_backup_writes_one_round_trip_from_elsewhere() {
        let rtt = 40.0;
        let options = |home| ExploreOptions {
            region_ms: Some(20),
            latency: Some(0),
            primary_home: home,
            ..small(
                vec![Workload::Prefs],
                vec![Model::PrimaryBackup, Model::MultiLeader],
            )
        };
        let above_ml = |report: &Report, region: &str| {
            let pb = report.cell(Workload::Prefs, Model::PrimaryBackup).unwrap();
            let ml = report.cell(Workload::Prefs, Model::MultiLeader).unwrap();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            ms(pb.write_p50(region).unwrap()) - ms(ml.write_p50(region).unwrap())
        };
        let home = explore(&options(Some(1)));
        assert!(above_ml(&home, "r1") < 5.0, "{home}");
        for region in ["r2", "r3"] {
            let extra = above_ml(&home, region) / rtt;
            assert!(
                (0.8..1.3).contains(&extra),
                "{region}: {extra} round trips\n{home}"
            );
        }
        // Spread: two of the three regions are outside the leader's, at two round trips.
        let spread = explore(&options(None));
        let two = ["r1", "r2", "r3"]
            .into_iter()
            .filter(|r| (1.8..2.3).contains(&(above_ml(&spread, r) / rtt)))
            .count();
        assert!(two >= 2, "{spread}");
        let e = ExploreOptions {
            primary_home: Some(4),
            ..ExploreOptions::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("r1 to r3"), "{e}");
    }
}
