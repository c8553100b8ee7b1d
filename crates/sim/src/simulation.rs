//! The simulation: nodes, disks, network, clocks, clients and the nemesis, all stepped by one
//! event queue in virtual time. See the crate documentation for the phases of a run and the
//! durability model.

use crate::checker::convergence::{self, ReplicaRecords, ReplicaStates, ReplicaTables};
use crate::checker::{bank_history, counter, leader, map, registers, set, siblings, single_writer};
use crate::history::{EventType, Function, History, ProcessId};
use crate::merged::{
    BANK_INITIAL_BALANCE, MergedClients, MergedFunction, MergedHistory, MergedWorkload, Mix,
    PlannedMergedOp, ReadResult,
};
use crate::nemesis::{Action, Fault, FaultWindow, Nemesis};
use crate::network::Network;
use crate::workload::{PlannedOp, Role, Workload};
use crate::{RegionOptions, SeedReport, SimOptions, TimelineEntry};
use bytes::Bytes;
use regions::Regional;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;
use triarch_core::causal::VersionVector;
use triarch_core::{DetRng, Instant, KeyspaceConfig, NodeId, Now, RequestId};
use triarch_leaderless::record::Record;
use triarch_leaderless::ring::{self, Ring};
use triarch_leaderless::state::State;
use triarch_leaderless::{KeyspaceStats, LeaderlessConfig, table_name};
use triarch_node::{
    Command, Member, Message, Node, NodeConfig, Operation, Output, Reply, Request, View,
};
use triarch_primary::PrimaryConfig;
use triarch_storage::{SimDisk, Storage};

/// Every node's wall clock starts here (ms since the Unix epoch, November 2023), plus its offset.
pub const WALL_CLOCK_START_MS: u64 = 1_700_000_000_000;
/// How long a client waits for a reply before recording `info` and retiring. Longer than the
/// coordinator's own timeout (1 s) plus the slowest round trip, so that a client times out only
/// when its coordinator crashed or lost the reply, not merely because a quorum was slow.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// From the final heal to the final reads: every client operation completes or times out, every
/// coordinator's operation expires, every message in flight lands (latency is bounded by
/// [`crate::latency::LATENCY_MAX`]).
pub const SETTLE: Duration = Duration::from_secs(5);
/// From the final reads to the convergence snapshot: the reads complete and their repairs land.
pub const FINAL_READ_SETTLE: Duration = Duration::from_secs(3);
/// A quiet start before the first fault window.
const QUIET_START: Duration = Duration::from_secs(1);
/// A simulated fsync takes this long (µs), drawn uniformly per sync.
const DISK_SYNC_MICROS_MIN: u64 = 50;
const DISK_SYNC_MICROS_MAX: u64 = 500;
/// A run that processes more events than this is livelocked (a timer that never advances).
const EVENTS_MAX: u64 = 20_000_000;

mod explore_run;
mod regions;

pub use explore_run::{CONVERGENCE_CHECK_INTERVAL, ExploreSettings};

pub use regions::RegionStats;

/// A node's process and disk.
enum HostState {
    Up(Box<Node<SimDisk>>),
    Down(SimDisk),
}

struct Host {
    id: NodeId,
    state: HostState,
    /// Bumped at every crash and restart; events scheduled for an earlier incarnation are void.
    incarnation: u64,
    /// When the one live timer event of this node is due (only the latest scheduled matters).
    timer_at: Option<Instant>,
    /// A simulated fsync has been started and not completed.
    sync_in_flight: bool,
    /// Outputs waiting for the in-flight sync (persist-then-send).
    held: Vec<Output>,
    clock_offset_ms: i64,
    clock_baseline_ms: i64,
    /// While set, the wall clock reads this (ms) whatever the time.
    clock_frozen_ms: Option<u64>,
    /// A crash waiting for the node's next sync (then restart this long after it).
    crash_armed: Option<Duration>,
}

enum Input {
    Request(RequestId, Request),
    Message(NodeId, Message),
    Timeout,
}

enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    Timer {
        node: NodeId,
        incarnation: u64,
    },
    SyncDone {
        node: NodeId,
        incarnation: u64,
    },
    ClientWake {
        process: ProcessId,
    },
    ClientTimeout {
        process: ProcessId,
        request: RequestId,
    },
    Crash {
        node: NodeId,
        incarnation: u64,
        window: u64,
        restart_after: Duration,
    },
    FaultsOn,
    FaultsOff,
    Restart {
        node: NodeId,
        incarnation: u64,
    },
    FinalHeal,
    FinalReads,
    Finish,
    /// Explorer runs: compare the replicas ([`ExploreSettings`]).
    ConvergenceCheck,
}

/// An event in the queue. Ordered by (time, sequence number): ties between events due at the
/// same instant go in scheduling order, so a run is a function of the seed alone.
struct Scheduled {
    at: Instant,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Clients run and the nemesis injects faults.
    Main,
    /// Final heal done; no new client operations; waiting for the system to go quiet.
    Settling,
    /// Final reads issued.
    FinalReads,
    Done,
}

/// A client request in flight.
struct InFlight {
    process: ProcessId,
    f: Function,
    value: Option<u64>,
}

/// The clients of a run of a CRDT workload ([`crate::merged`]), in place of the registers'.
struct MergedRun {
    clients: MergedClients,
    /// The keyspace the workload runs in: [`MergedWorkload::keyspace`], placed in
    /// [`RegionOptions::primary_home`] if it is primary-backup.
    keyspace: KeyspaceConfig,
    history: MergedHistory,
    requests: BTreeMap<RequestId, ProcessId>,
    /// Workload V: the context of each process's last `ok` read, which its next write carries.
    contexts: BTreeMap<ProcessId, VersionVector>,
    states: Option<ReplicaStates>,
    /// Workload L: each voter's data table at the end.
    tables: Option<ReplicaTables>,
    /// Workloads L and B: each up voter's leader when the final reads start.
    leaders_after_heal: Option<BTreeMap<NodeId, Option<NodeId>>>,
}

/// One seeded run. Build it with [`Simulation::new`] (the register workload) or
/// [`Simulation::new_merged`] (a CRDT workload), [`Simulation::run`] it, then inspect its
/// [`Simulation::history`] (or [`Simulation::merged_history`]) and
/// [`Simulation::replica_records`] (or [`Simulation::replica_states`]).
pub struct Simulation {
    seed: u64,
    options: SimOptions,
    now: Instant,
    queue: BinaryHeap<Scheduled>,
    next_seq: u64,
    members: Vec<Member>,
    hosts: Vec<Host>,
    network: Network,
    nemesis: Nemesis,
    workload: Workload,
    history: History,
    requests: BTreeMap<RequestId, InFlight>,
    next_request: u64,
    /// Forked for each node start and restart.
    node_rng: DetRng,
    disk_rng: DetRng,
    phase: Phase,
    /// The number of the fault window in progress (`None` while healed).
    fault_window: Option<u64>,
    fault_windows: u64,
    events: u64,
    timeline: Vec<TimelineEntry>,
    replicas: Option<ReplicaRecords>,
    /// Set for a CRDT workload: its clients replace the register workload's.
    merged: Option<MergedRun>,
    // ---- sloppy quorums (added for `tests/sloppy.rs`; see `Simulation::with_leaderless_config`) ----
    /// The leaderless engine configuration of every node, when a test chose one.
    leaderless_config: Option<LeaderlessConfig>,
    /// The replicas' records (states, for a CRDT workload) when the final reads began, before
    /// their read repair.
    records_before_final_reads: Option<ReplicaRecords>,
    states_before_final_reads: Option<ReplicaStates>,
    // ---- anti-entropy (added for `tests/anti_entropy.rs`; see `Simulation::anti_entropy_only`) ----
    /// Nodes run anti-entropy as `leaderless_config` says, and no client reads anything after
    /// the final heal, so that convergence must come from anti-entropy alone. Every other run
    /// switches anti-entropy off: it would repair, and so hide, what their planted bugs break.
    anti_entropy_only: bool,
    // ---- regions and multi-leader keyspaces (see `regions`) ----
    regional: Regional,
    /// Every fault window so far, with what it blocked.
    windows: Vec<FaultWindow>,
    /// Messages nodes sent during the main phase (for [`crate::explore`]).
    messages_main: u64,
    /// Explorer runs only ([`Simulation::for_explore_with`]).
    explore: Option<explore_run::ExploreRun>,
}

impl Simulation {
    /// Builds the cluster and schedules the run. Every random choice comes from `seed`, through
    /// independent streams per concern (network, nemesis, clients, nodes, disks) so that a change
    /// to one concern's use of randomness leaves the others' choices alone.
    pub fn new(seed: u64, options: &SimOptions) -> Self {
        Simulation::build(
            seed,
            options,
            None,
            None,
            false,
            &RegionOptions::single(),
            None,
        )
    }

    /// A run of `workload` with its nodes in `regions` ([`crate::run_multileader_seed`]): a
    /// multi-leader workload (two regions or more), or another workload whose latencies and
    /// faults then span the regions. `options.planted_bug` plants a single-region workload's
    /// bug as for [`Simulation::new_merged`]; `regions.planted` plants the simulator's own.
    pub fn new_in_regions(
        seed: u64,
        options: &SimOptions,
        workload: MergedWorkload,
        regions: &RegionOptions,
    ) -> Self {
        Simulation::build(seed, options, Some(workload), None, false, regions, None)
    }

    /// A run of the register workload (`workload: None`) or of a CRDT workload whose nodes all
    /// run the leaderless engine with `config` (e.g. sloppy quorums); `options.planted_bug` is
    /// ignored, the configuration carries its own planted bugs. Added for `tests/sloppy.rs`,
    /// which judges it with [`Simulation::records_before_final_reads`] (or
    /// [`Simulation::states_before_final_reads`]) and [`Simulation::stored_hints`].
    pub fn with_leaderless_config(
        seed: u64,
        options: &SimOptions,
        workload: Option<MergedWorkload>,
        config: LeaderlessConfig,
    ) -> Self {
        let single = RegionOptions::single();
        Simulation::build(seed, options, workload, Some(config), false, &single, None)
    }

    /// A run of the register workload (`workload: None`) or of a CRDT workload whose nodes run
    /// the leaderless engine with `config`, anti-entropy as `config.anti_entropy` says, and in
    /// which no client reads anything after the final heal: the final reads are skipped, so
    /// replicas that missed writes converge through anti-entropy or not at all. The report's
    /// convergence checker judges the replicas at the end (the final heal plus [`SETTLE`] plus
    /// [`FINAL_READ_SETTLE`]); [`Simulation::records_before_final_reads`] (or
    /// [`Simulation::states_before_final_reads`]) holds them [`SETTLE`] after the final heal.
    /// `options.planted_bug` is ignored, as for [`Simulation::with_leaderless_config`]. Added for
    /// `tests/anti_entropy.rs`.
    pub fn anti_entropy_only(
        seed: u64,
        options: &SimOptions,
        workload: Option<MergedWorkload>,
        config: LeaderlessConfig,
    ) -> Self {
        let single = RegionOptions::single();
        Simulation::build(seed, options, workload, Some(config), true, &single, None)
    }

    /// Every replica's record of every key when the final reads began: after the final heal
    /// and the settle period (time for hints to be handed off), before any final read could
    /// repair anything. `None` until then, and for a CRDT workload.
    pub fn records_before_final_reads(&self) -> Option<&ReplicaRecords> {
        self.records_before_final_reads.as_ref()
    }

    /// Like [`Simulation::records_before_final_reads`], for a CRDT workload.
    pub fn states_before_final_reads(&self) -> Option<&ReplicaStates> {
        self.states_before_final_reads.as_ref()
    }

    /// How many hints each node holds for others on its disk now ([`triarch_leaderless::hint`]).
    pub fn stored_hints(&self) -> BTreeMap<NodeId, usize> {
        self.hosts
            .iter()
            .map(|h| {
                let hints = match &h.state {
                    HostState::Up(n) => triarch_leaderless::hint::stored_hints(n.storage()),
                    HostState::Down(disk) => triarch_leaderless::hint::stored_hints(disk),
                };
                (h.id, hints.expect("SimDisk hints decode").len())
            })
            .collect()
    }

    /// The leaderless counters of every running node (they restart from zero with the node).
    pub fn leaderless_stats(&self) -> BTreeMap<NodeId, BTreeMap<String, KeyspaceStats>> {
        self.hosts
            .iter()
            .filter_map(|h| match &h.state {
                HostState::Up(n) => Some((h.id, n.leaderless_stats().clone())),
                HostState::Down(_) => None,
            })
            .collect()
    }

    /// A run of the register workload (A: single-writer registers in the leaderless `default`
    /// keyspace) with its nodes in `regions`. Added for [`crate::explore`].
    pub fn registers_in_regions(seed: u64, options: &SimOptions, regions: &RegionOptions) -> Self {
        Simulation::build(seed, options, None, None, false, regions, None)
    }

    /// Gives a run built with every fault of `options` off (clock skew may be on) a nemesis that
    /// chooses among `faults` alone (drawing from the nemesis's own stream of the seed, as `build` does), from the end
    /// of the quiet start. Call it before [`Simulation::run`]. Added for [`crate::explore`],
    /// which cuts one region off per fault window and nothing else.
    pub fn with_nemesis_faults(mut self, faults: Vec<Fault>) -> Self {
        assert!(self.events == 0, "a run not yet run");
        // A run built with clock skew on (its clocks' baseline offsets) has a nemesis with
        // faults already, and its first fault window scheduled; it keeps that one.
        let scheduled = !self.nemesis.is_idle();
        assert!(
            !faults.is_empty() || !scheduled,
            "no faults for a run whose first fault window is scheduled"
        );
        let mut root = DetRng::seed_from_u64(self.seed);
        let _network_rng = root.fork();
        let nemesis_rng = root.fork();
        let ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        self.nemesis =
            Nemesis::new(faults, nemesis_rng).with_regions(self.regional.nodes_by_region(&ids));
        if !self.nemesis.is_idle() && !scheduled {
            self.schedule(QUIET_START, Event::FaultsOn);
        }
        self
    }

    /// Gives a run not yet run a network described by `spec` (drawing from the network's own
    /// stream of the seed, as `build` does) in place of the one the seed drew. Added for
    /// [`crate::explore`].
    pub fn with_network(mut self, spec: &crate::network::NetworkSpec) -> Self {
        assert!(self.events == 0, "a run not yet run");
        let mut root = DetRng::seed_from_u64(self.seed);
        let network_rng = root.fork();
        let ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        assert!(
            !self.options.packet_loss && !self.options.duplication,
            "a described network has no loss or duplication"
        );
        self.network =
            Network::described(&ids, &self.regional.of_node, network_rng, 0.0, 0.0, spec);
        self
    }

    /// A run of CRDT workload `workload` ([`crate::merged`]) under the same faults, with the
    /// same options; `options.planted_bug` plants the workload's own bug (see
    /// [`crate::run_merged_seed`]).
    pub fn new_merged(seed: u64, options: &SimOptions, workload: MergedWorkload) -> Self {
        let single = RegionOptions::single();
        Simulation::build(seed, options, Some(workload), None, false, &single, None)
    }

    /// A run for [`crate::explore`]: workload `workload` (`None`: the register workload A)
    /// with the nodes in `regions`; if `mix` is given, a register workload (L, MR or LR) whose
    /// clients follow it (the explorer's custom workload: [`crate::merged::Mix`]); if
    /// `leaderless` is given, every node's leaderless engine runs with it (e.g. sloppy quorums).
    pub fn for_explore(
        seed: u64,
        options: &SimOptions,
        workload: Option<MergedWorkload>,
        regions: &RegionOptions,
        mix: Option<&Mix>,
        leaderless: Option<LeaderlessConfig>,
    ) -> Self {
        Simulation::build(seed, options, workload, leaderless, false, regions, mix)
    }

    /// [`Simulation::for_explore`] with the explorer's keyspace settings (`settings`), a count
    /// of reads answered with siblings ([`Simulation::siblings_reads`]) and the replicas
    /// compared after the final heal ([`Simulation::time_to_converge`]).
    pub fn for_explore_with(
        seed: u64,
        options: &SimOptions,
        workload: Option<MergedWorkload>,
        regions: &RegionOptions,
        mix: Option<&Mix>,
        leaderless: Option<LeaderlessConfig>,
        settings: ExploreSettings,
    ) -> Self {
        let mut sim =
            Simulation::build_unstarted(seed, options, workload, leaderless, false, regions, mix);
        sim.explore = Some(explore_run::ExploreRun {
            settings,
            ..Default::default()
        });
        sim.start()
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        seed: u64,
        options: &SimOptions,
        merged: Option<MergedWorkload>,
        leaderless_config: Option<LeaderlessConfig>,
        anti_entropy_only: bool,
        regions: &RegionOptions,
        mix: Option<&Mix>,
    ) -> Self {
        Simulation::build_unstarted(
            seed,
            options,
            merged,
            leaderless_config,
            anti_entropy_only,
            regions,
            mix,
        )
        .start()
    }

    /// [`Simulation::build`] up to starting the nodes and scheduling the run.
    #[allow(clippy::too_many_arguments)]
    fn build_unstarted(
        seed: u64,
        options: &SimOptions,
        merged: Option<MergedWorkload>,
        leaderless_config: Option<LeaderlessConfig>,
        anti_entropy_only: bool,
        regions: &RegionOptions,
        mix: Option<&Mix>,
    ) -> Self {
        options
            .validate()
            .unwrap_or_else(|e| panic!("invalid options: {e}"));
        let mut root = DetRng::seed_from_u64(seed);
        let network_rng = root.fork();
        let nemesis_rng = root.fork();
        let workload_rng = root.fork();
        let node_rng = root.fork();
        let disk_rng = root.fork();
        let mut setup_rng = root.fork();
        let planted_rng = root.fork();

        let ids: Vec<NodeId> = (1..=options.nodes).map(NodeId).collect();
        let regional = Regional::new(regions, options.nodes, merged, planted_rng);
        let members = regional.members(&ids);
        let loss = if options.packet_loss {
            0.02 * setup_rng.unit_f64()
        } else {
            0.0
        };
        let duplication = if options.duplication {
            0.03 * setup_rng.unit_f64()
        } else {
            0.0
        };
        let network =
            Network::with_regions(&ids, &regional.of_node, network_rng, loss, duplication);
        let hosts = ids
            .iter()
            .map(|&id| {
                // Clocks disagree a little even when healthy.
                let clock_baseline_ms = if options.clock_skew {
                    setup_rng.between(0, 200) as i64 - 100
                } else {
                    0
                };
                Host {
                    id,
                    state: HostState::Down(SimDisk::new()),
                    incarnation: 0,
                    timer_at: None,
                    sync_in_flight: false,
                    held: Vec::new(),
                    clock_offset_ms: clock_baseline_ms,
                    clock_baseline_ms,
                    clock_frozen_ms: None,
                    crash_armed: None,
                }
            })
            .collect();
        let mut faults = options.faults();
        if regions.regions > 1 && options.partitions {
            faults.extend(Fault::REGIONAL);
        }
        let nemesis =
            Nemesis::new(faults, nemesis_rng).with_regions(regional.nodes_by_region(&ids));
        let (workload, merged) = match merged {
            None => {
                let workload = Workload::new(
                    options.keys,
                    ids.len(),
                    options.ops,
                    options.duration,
                    workload_rng,
                );
                (workload, None)
            }
            Some(kind) => {
                // The register workload stays idle (never started).
                let idle = Workload::new(1, 1, 1, options.duration, DetRng::seed_from_u64(0));
                let mut clients = MergedClients::new(
                    kind,
                    options.keys,
                    ids.len(),
                    options.ops,
                    options.duration,
                    workload_rng,
                );
                if kind.is_multileader() {
                    clients = clients.in_regions(regions.regions);
                }
                if let Some(mix) = mix {
                    clients = clients.with_mix(mix, regions.regions);
                }
                let mut keyspace = clients.workload.keyspace();
                if keyspace.model == triarch_core::Model::PrimaryBackup {
                    keyspace.home = regions.primary_home.clone();
                }
                let run = MergedRun {
                    keyspace,
                    clients,
                    history: MergedHistory::new(),
                    requests: BTreeMap::new(),
                    contexts: BTreeMap::new(),
                    states: None,
                    tables: None,
                    leaders_after_heal: None,
                };
                (idle, Some(run))
            }
        };
        Simulation {
            seed,
            options: options.clone(),
            now: Instant::ZERO,
            queue: BinaryHeap::new(),
            next_seq: 0,
            members,
            hosts,
            network,
            nemesis,
            workload,
            history: History::new(),
            requests: BTreeMap::new(),
            next_request: 1,
            node_rng,
            disk_rng,
            phase: Phase::Main,
            fault_window: None,
            fault_windows: 0,
            events: 0,
            timeline: Vec::new(),
            replicas: None,
            merged,
            leaderless_config,
            records_before_final_reads: None,
            states_before_final_reads: None,
            anti_entropy_only,
            regional,
            windows: Vec::new(),
            messages_main: 0,
            explore: None,
        }
    }

    /// Starts the nodes and the clients and schedules the run (the end of [`Simulation::build`]).
    fn start(mut self) -> Self {
        let network = self.network.describe();
        let nodes = self.options.nodes;
        self.log(format!("start: {nodes} nodes, {network}"));
        let ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        for id in ids {
            self.start_node(id);
        }
        let starts = match &mut self.merged {
            Some(run) => run.clients.start(),
            None => self.workload.start(),
        };
        for (process, delay) in starts {
            self.schedule(delay, Event::ClientWake { process });
        }
        if !self.nemesis.is_idle() {
            self.schedule(QUIET_START, Event::FaultsOn);
        }
        self.schedule(self.options.duration, Event::FinalHeal);
        self
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Messages the nodes sent during the main phase (before the final heal) for the data's
    /// model: every kind, heartbeats and elections included, but not the cluster's metadata
    /// (the catalog's group and gossip, alike for every model). Added for [`crate::explore`].
    pub fn messages_sent_main(&self) -> u64 {
        self.messages_main
    }

    /// The register workload's history (empty in a run of a CRDT workload).
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The history of a run of a CRDT workload.
    pub fn merged_history(&self) -> Option<&MergedHistory> {
        self.merged.as_ref().map(|m| &m.history)
    }

    /// Runs to the end and reports. A node's failed invariant panics (the caller,
    /// [`crate::run_seed`], turns that into a failed report).
    pub fn run(&mut self) -> SeedReport {
        assert_ne!(self.phase, Phase::Done, "a simulation runs once");
        while let Some(Scheduled { at, event, .. }) = self.queue.pop() {
            assert!(at >= self.now, "virtual time goes forward");
            self.now = at;
            self.events += 1;
            assert!(self.events < EVENTS_MAX, "livelock: {EVENTS_MAX} events");
            self.dispatch(event);
            if self.phase == Phase::Done {
                break;
            }
        }
        assert_eq!(
            self.phase,
            Phase::Done,
            "the run ends with its Finish event"
        );
        self.report()
    }

    fn report(&self) -> SeedReport {
        let replicas = self.replicas.as_ref().expect("snapshot taken at Finish");
        let (checkers, (ops_ok, ops_fail, ops_info), fingerprint, history_events) = match &self
            .merged
        {
            None => (
                vec![
                    single_writer::check(&self.history),
                    convergence::check(replicas),
                ],
                self.history.outcome_counts(),
                self.history.fingerprint(),
                self.history.len(),
            ),
            Some(run) => {
                let checkers = match run.clients.workload {
                    MergedWorkload::Set
                    | MergedWorkload::Counter
                    | MergedWorkload::Siblings
                    | MergedWorkload::Map => {
                        let states = run.states.as_ref().expect("snapshot taken at Finish");
                        let semantics = match run.clients.workload {
                            MergedWorkload::Set => set::check(&run.history),
                            MergedWorkload::Siblings => siblings::check(&run.history),
                            MergedWorkload::Map => map::check(&run.history),
                            _ => counter::check(&run.history),
                        };
                        vec![semantics, convergence::check_states(states)]
                    }
                    MergedWorkload::MlCart
                    | MergedWorkload::MlCounter
                    | MergedWorkload::MlRegisters
                    | MergedWorkload::MlBank
                    | MergedWorkload::MlCounterBank => self.multileader_checkers(run),
                    // Workload LB (the explorer's): its anomalies are the explorer's figures,
                    // not failures; the final reads must agree.
                    MergedWorkload::LwwBank | MergedWorkload::LwwRegisters => {
                        vec![crate::explore::anomalies::final_reads_agree(&run.history)]
                    }
                    MergedWorkload::Registers | MergedWorkload::Bank => {
                        let tables = run.tables.as_ref().expect("snapshot taken at Finish");
                        let workload = run.clients.workload;
                        let key_of = |row: &[u8]| {
                            (0..self.options.keys)
                                .find(|&k| row.get(1..) == Some(workload.key_bytes(k).as_slice()))
                        };
                        let semantics = if workload == MergedWorkload::Bank {
                            let nodes: Vec<u64> =
                                self.members.iter().map(|m| u64::from(m.id.0)).collect();
                            bank_history::check(&run.history, self.options.keys, &nodes)
                        } else {
                            registers::check(&run.history)
                        };
                        let leaders = run
                            .leaders_after_heal
                            .as_ref()
                            .expect("noted when the final reads start");
                        vec![
                            semantics,
                            convergence::check_tables(tables, key_of),
                            leader::check(leaders),
                        ]
                    }
                };
                (
                    checkers,
                    run.history.outcome_counts(),
                    run.history.fingerprint(),
                    run.history.len(),
                )
            }
        };
        SeedReport {
            seed: self.seed,
            options: self.options.clone(),
            ops_ok,
            ops_fail,
            ops_info,
            events: self.events,
            virtual_duration: Duration::from_micros(self.now.as_micros()),
            fingerprint,
            history_events,
            checkers,
            panic: None,
            timeline: self.timeline.clone(),
        }
    }

    /// For each key, the record each replica of its preference list holds on its disk (staged
    /// writes included), read directly rather than through the protocol.
    pub fn replica_records(&self) -> ReplicaRecords {
        let ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        let ring = Ring::new(&ids, ring::VNODES_PER_NODE_DEFAULT);
        let router = self
            .hosts
            .iter()
            .find_map(|h| match &h.state {
                HostState::Up(node) => Some(node),
                HostState::Down(_) => None,
            })
            .expect("a node is up to say where keys live");
        let mut out = ReplicaRecords::new();
        for key in 0..self.options.keys {
            let bytes = key_bytes(key);
            let keyspace = router.route(&bytes);
            let table = table_name(&keyspace.name);
            let replicas =
                ring.preference_list(Ring::position(&keyspace.name, &bytes), keyspace.n.into());
            let mut records = BTreeMap::new();
            for node in replicas {
                let host = &self.hosts[index(node)];
                let stored = match &host.state {
                    HostState::Up(n) => n.storage().get(&table, &bytes),
                    HostState::Down(disk) => disk.get(&table, &bytes),
                }
                .expect("SimDisk reads do not fail");
                let record = stored.map(|b| {
                    Record::decode(&b).unwrap_or_else(|e| panic!("{node} key {key}: {e}"))
                });
                records.insert(node, record);
            }
            out.insert(key, records);
        }
        out
    }

    /// Workload L: every voter's data table for the keyspace, read from its disk (staged writes
    /// included).
    pub fn replica_tables(&self) -> ReplicaTables {
        let Some(run) = &self.merged else {
            return ReplicaTables::new();
        };
        let keyspace = &run.keyspace;
        let members: Vec<(NodeId, &str)> = self
            .members
            .iter()
            .map(|m| (m.id, m.region.as_str()))
            .collect();
        let table = triarch_primary::machine::table_name(&keyspace.name);
        let mut out = ReplicaTables::new();
        for node in triarch_primary::engine::voters_of(keyspace, &members) {
            let host = &self.hosts[index(node)];
            let rows = match &host.state {
                HostState::Up(n) => n.storage().scan(&table, &[], usize::MAX),
                HostState::Down(disk) => disk.scan(&table, &[], usize::MAX),
            }
            .expect("SimDisk reads do not fail")
            .into_iter()
            .filter(|(k, _)| triarch_primary::machine::is_replicated_row(k))
            .collect();
            out.insert(node, rows);
        }
        out
    }

    /// For each key of a CRDT workload, the state each replica of its preference list holds on
    /// its disk (staged writes included). Empty for the register workload.
    pub fn replica_states(&self) -> ReplicaStates {
        let Some(run) = &self.merged else {
            return ReplicaStates::new();
        };
        let ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        let ring = Ring::new(&ids, ring::VNODES_PER_NODE_DEFAULT);
        let keyspace = self
            .data_keyspace()
            .unwrap_or_else(|| run.clients.workload.keyspace());
        let table = table_name(&keyspace.name);
        let mut out = ReplicaStates::new();
        for key in 0..self.options.keys {
            let bytes = run.clients.workload.key_bytes(key);
            let replicas =
                ring.preference_list(Ring::position(&keyspace.name, &bytes), keyspace.n.into());
            let mut states = BTreeMap::new();
            for node in replicas {
                let host = &self.hosts[index(node)];
                let stored = match &host.state {
                    HostState::Up(n) => n.storage().get(&table, &bytes),
                    HostState::Down(disk) => disk.get(&table, &bytes),
                }
                .expect("SimDisk reads do not fail");
                let state = stored
                    .map(|b| State::decode(&b).unwrap_or_else(|e| panic!("{node} key {key}: {e}")));
                states.insert(node, state);
            }
            out.insert(key, states);
        }
        out
    }

    fn schedule(&mut self, delay: Duration, event: Event) {
        let at = self.now + delay;
        self.schedule_at(at, event);
    }

    fn schedule_at(&mut self, at: Instant, event: Event) {
        assert!(at >= self.now, "events are scheduled in the future");
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Scheduled { at, seq, event });
    }

    fn log(&mut self, what: String) {
        self.timeline.push(TimelineEntry { at: self.now, what });
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, message } => {
                // A link cut while the message was in flight drops it too.
                if !self.network.is_blocked(from, to) {
                    let message = self.tamper(from, to, message);
                    self.step(to, Input::Message(from, message));
                }
            }
            Event::Timer { node, incarnation } => {
                let host = &mut self.hosts[index(node)];
                if host.incarnation == incarnation && host.timer_at == Some(self.now) {
                    host.timer_at = None;
                    self.step(node, Input::Timeout);
                }
            }
            Event::SyncDone { node, incarnation } => self.sync_done(node, incarnation),
            Event::ClientWake { process } => self.client_wake(process),
            Event::ClientTimeout { process, request } => {
                if let Some(run) = &mut self.merged
                    && run.requests.remove(&request).is_some()
                {
                    let error = Some("client timeout".to_string());
                    self.complete_merged(process, EventType::Info, None, error);
                } else if self.requests.remove(&request).is_some() {
                    let error = Some("client timeout".to_string());
                    self.complete(process, EventType::Info, None, error);
                }
            }
            Event::Crash {
                node,
                incarnation,
                window,
                restart_after,
            } => {
                // Only within the fault window that planned it: a heal in between cancels it.
                if self.hosts[index(node)].incarnation == incarnation
                    && self.fault_window == Some(window)
                {
                    self.crash_node(node, restart_after, "mid-sync");
                }
            }
            Event::FaultsOn => self.faults_on(),
            Event::FaultsOff => {
                if self.phase == Phase::Main {
                    self.heal();
                    let healed = self.nemesis.window();
                    self.schedule(healed, Event::FaultsOn);
                }
            }
            Event::Restart { node, incarnation } => {
                if self.hosts[index(node)].incarnation == incarnation {
                    self.restart_node(node);
                }
            }
            Event::FinalHeal => {
                self.phase = Phase::Settling;
                self.heal();
                self.network.make_reliable();
                self.log("final heal: network reliable from now on".into());
                self.schedule(SETTLE, Event::FinalReads);
                self.explore_final_heal();
            }
            Event::FinalReads => self.final_reads(),
            Event::ConvergenceCheck => self.convergence_check(),
            Event::Finish => {
                self.history.close_open(self.now, "run ended");
                let workload = self.merged.as_ref().map(|run| run.clients.workload);
                let states = matches!(
                    workload,
                    Some(
                        MergedWorkload::Set
                            | MergedWorkload::Counter
                            | MergedWorkload::Siblings
                            | MergedWorkload::Map
                    )
                )
                .then(|| self.replica_states());
                let tables = matches!(
                    workload,
                    Some(MergedWorkload::Registers | MergedWorkload::Bank)
                )
                .then(|| self.replica_tables());
                if let Some(workload) = workload.filter(|w| w.is_multileader()) {
                    self.regional.replicas = Some(self.snapshot_region_replicas(workload));
                }
                if let Some(run) = &mut self.merged {
                    run.history.close_open(self.now, "run ended");
                    run.states = states;
                    run.tables = tables;
                    self.replicas = Some(ReplicaRecords::new());
                } else {
                    self.replicas = Some(self.replica_records());
                }
                self.phase = Phase::Done;
            }
        }
    }

    // ---- nodes, disks and the durability contract ----

    fn wall_ms(&self, node: NodeId) -> u64 {
        let host = &self.hosts[index(node)];
        if let Some(frozen) = host.clock_frozen_ms {
            return frozen;
        }
        let offset = host.clock_offset_ms;
        let ms = (WALL_CLOCK_START_MS + self.now.as_micros() / 1_000) as i64 + offset;
        ms.max(0) as u64
    }

    fn node_config(&self, id: NodeId) -> NodeConfig {
        let mut config = NodeConfig::new(id, self.configured_members());
        let bug = self.options.planted_bug;
        config.leaderless = match self.merged.as_ref().map(|m| m.clients.workload) {
            None | Some(MergedWorkload::Map) => LeaderlessConfig {
                bug_ack_before_quorum: bug,
                ..LeaderlessConfig::default()
            },
            Some(MergedWorkload::Set) => LeaderlessConfig {
                bug_remove_unobserved: bug,
                ..LeaderlessConfig::default()
            },
            Some(MergedWorkload::Counter | MergedWorkload::Siblings) => LeaderlessConfig {
                bug_shared_actor: bug,
                ..LeaderlessConfig::default()
            },
            Some(
                MergedWorkload::Registers
                | MergedWorkload::Bank
                | MergedWorkload::MlCart
                | MergedWorkload::MlCounter
                | MergedWorkload::MlRegisters
                | MergedWorkload::MlBank
                | MergedWorkload::LwwBank
                | MergedWorkload::LwwRegisters
                | MergedWorkload::MlCounterBank,
            ) => LeaderlessConfig::default(),
        };
        // Elections well inside a fault window, so that leaders change often.
        config.primary = PrimaryConfig {
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            heartbeat_interval: Duration::from_millis(50),
            request_timeout: CLIENT_TIMEOUT,
            compact_every: 500,
            // Half the seeds read under leader leases, half by ReadIndex.
            // (An explorer run that names a read policy: the keyspace's policy decides.)
            lease_reads: self.seed % 2 == 1
                && self.explore_settings().is_none_or(|s| s.read.is_none()),
            bug_local_reads: bug
                && self.merged.as_ref().map(|m| m.clients.workload)
                    == Some(MergedWorkload::Registers),
            ..PrimaryConfig::default()
        };
        // The regions' groups of multi-leader keyspaces: elections still well inside a fault
        // window, at half the heartbeat traffic (nine nodes' groups heartbeat for the whole
        // run); never a planted bug.
        config.multileader.primary = PrimaryConfig {
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            heartbeat_interval: Duration::from_millis(100),
            bug_local_reads: false,
            ..config.primary.clone()
        };
        // Half the seeds keep short change logs, so that a region cut off for a few seconds
        // comes back to a state transfer instead of the changes it missed.
        if (self.seed / 2) % 2 == 1 {
            config.multileader.log_changes_max = 32;
            config.multileader.trim_batch = 8;
        }
        if let Some(leaderless) = &self.leaderless_config {
            config.leaderless = leaderless.clone(); // `with_leaderless_config`
        }
        // Anti-entropy only where asked for (`anti_entropy_only`): see the field.
        if !self.anti_entropy_only {
            config.leaderless.anti_entropy.enabled = false;
        }
        // Explorer runs may turn it on ([`ExploreSettings::anti_entropy_interval`]).
        if let Some(interval) = self
            .explore_settings()
            .and_then(|s| s.anti_entropy_interval)
        {
            config.leaderless.anti_entropy.enabled = true;
            config.leaderless.anti_entropy.exchange_interval = interval;
        }
        if let Some(keyspace) = self.data_keyspace() {
            config.keyspaces.push(keyspace);
        }
        config
    }

    fn start_node(&mut self, id: NodeId) {
        let now = Now::new(self.now, self.wall_ms(id));
        let config = self.node_config(id);
        let rng = self.node_rng.fork();
        let host = &mut self.hosts[index(id)];
        let disk = match std::mem::replace(&mut host.state, HostState::Down(SimDisk::new())) {
            HostState::Down(disk) => disk,
            HostState::Up(_) => panic!("{id} started twice"),
        };
        let node = Node::new(config, disk, rng, now)
            .unwrap_or_else(|e| panic!("{id} failed to recover from its disk: {e}"));
        node.check_invariants();
        host.state = HostState::Up(Box::new(node));
        host.incarnation += 1;
        self.after_step(id, Vec::new());
    }

    fn restart_node(&mut self, id: NodeId) {
        if matches!(self.hosts[index(id)].state, HostState::Down(_)) {
            self.log(format!("restart {id}"));
            self.start_node(id);
        }
    }

    /// The process dies: unsynced writes are lost (`SimDisk::crash`), and so are the outputs
    /// waiting for the sync that would have made them durable. Messages already released stay
    /// on the network. It restarts `restart_after` later unless a heal restarts it first.
    fn crash_node(&mut self, id: NodeId, restart_after: Duration, when: &str) {
        let host = &mut self.hosts[index(id)];
        let HostState::Up(node) =
            std::mem::replace(&mut host.state, HostState::Down(SimDisk::new()))
        else {
            panic!("{id} crashed while down");
        };
        let unsynced = node.storage().unsynced_writes();
        let mut disk = node.into_storage();
        // Half the crashes lose every unsynced write; the others keep a prefix of them, as a real
        // journal does when part of its unsynced tail had already reached the OS.
        let kept = if self.disk_rng.chance(0.5) {
            self.disk_rng.below(unsynced as u64 + 1) as usize
        } else {
            0
        };
        disk.crash_keeping_prefix(kept);
        let lost = unsynced - kept;
        host.state = HostState::Down(disk);
        host.incarnation += 1;
        host.timer_at = None;
        host.sync_in_flight = false;
        host.crash_armed = None;
        let held = std::mem::take(&mut host.held).len();
        let incarnation = host.incarnation;
        self.log(format!(
            "crash {id} ({when}): {lost} unsynced write(s) and {held} held output(s) lost"
        ));
        self.schedule(
            restart_after,
            Event::Restart {
                node: id,
                incarnation,
            },
        );
    }

    /// One step of one node; a step on a down node is a message or request that found nobody.
    fn step(&mut self, id: NodeId, input: Input) {
        let now = Now::new(self.now, self.wall_ms(id));
        let HostState::Up(node) = &mut self.hosts[index(id)].state else {
            return;
        };
        match input {
            Input::Request(request, req) => node.handle_request(now, request, req),
            Input::Message(from, message) => node.handle_message(now, from, message),
            Input::Timeout => node.handle_timeout(now),
        }
        node.check_invariants();
        let mut outputs = Vec::new();
        while let Some(output) = node.poll_output() {
            outputs.push(output);
        }
        self.after_step(id, outputs);
    }

    /// Persist-then-send: a step's outputs leave only once its staged writes are durable. If
    /// nothing is staged and no sync is in flight they leave at once; otherwise they wait for
    /// the in-flight sync, or start one. A sync covers every write staged when it completes, so
    /// steps taken while it runs share it (group commit). Outputs of a step that staged nothing
    /// still wait behind an in-flight sync: they may reveal staged state (a read reply carrying
    /// a record not yet durable).
    ///
    /// Coordinator requests to replicas (`Message::may_precede_sync`) leave at once, as in the
    /// server: they vouch for nothing on this node's disk.
    fn after_step(&mut self, id: NodeId, outputs: Vec<Output>) {
        let (early, outputs): (Vec<Output>, Vec<Output>) =
            outputs.into_iter().partition(Output::may_precede_sync);
        if !early.is_empty() {
            self.release(id, early);
        }
        let now = self.now;
        let host = &mut self.hosts[index(id)];
        let HostState::Up(node) = &host.state else {
            unreachable!("after_step on a running node");
        };
        let unsynced = node.storage().unsynced_writes() > 0;
        let timer = node.poll_timeout().map(|t| t.max(now));
        let incarnation = host.incarnation;
        let schedule_timer = timer.filter(|_| timer != host.timer_at);
        host.timer_at = timer;
        let mut start_sync = false;
        let mut crash = None;
        let release = if host.sync_in_flight || unsynced {
            host.held.extend(outputs);
            start_sync = !host.sync_in_flight;
            host.sync_in_flight = true;
            if start_sync {
                crash = host.crash_armed.take();
            }
            Vec::new()
        } else {
            assert!(host.held.is_empty(), "outputs are held only behind a sync");
            outputs
        };
        if let Some(at) = schedule_timer {
            self.schedule_at(
                at,
                Event::Timer {
                    node: id,
                    incarnation,
                },
            );
        }
        if start_sync {
            let micros = self
                .disk_rng
                .between(DISK_SYNC_MICROS_MIN, DISK_SYNC_MICROS_MAX);
            let event = Event::SyncDone {
                node: id,
                incarnation,
            };
            self.schedule(Duration::from_micros(micros), event);
            if let Some(restart_after) = crash {
                // Strictly before the sync completes.
                let before = self.disk_rng.below(micros);
                let event = Event::Crash {
                    node: id,
                    incarnation,
                    window: self
                        .fault_window
                        .expect("crashes are armed in a fault window"),
                    restart_after,
                };
                self.schedule(Duration::from_micros(before), event);
            }
        }
        self.release(id, release);
    }

    fn sync_done(&mut self, id: NodeId, incarnation: u64) {
        let host = &mut self.hosts[index(id)];
        if host.incarnation != incarnation {
            return; // the node crashed before the sync completed
        }
        let HostState::Up(node) = &mut host.state else {
            unreachable!("a live incarnation is up");
        };
        assert!(host.sync_in_flight);
        // `SimDisk::sync` makes everything staged so far durable: the point is taken now.
        let point = node.sync_point();
        node.storage_mut()
            .sync()
            .expect("the simulator never makes SimDisk syncs fail");
        host.sync_in_flight = false;
        let held = std::mem::take(&mut host.held);
        self.release(id, held);
        // Tell the node what became durable: a step like any other.
        let now = Now::new(self.now, self.wall_ms(id));
        let HostState::Up(node) = &mut self.hosts[index(id)].state else {
            unreachable!("still up");
        };
        node.synced(now, point);
        node.check_invariants();
        let mut outputs = Vec::new();
        while let Some(output) = node.poll_output() {
            outputs.push(output);
        }
        self.after_step(id, outputs);
    }

    fn release(&mut self, from: NodeId, outputs: Vec<Output>) {
        for output in outputs {
            if let Output::Send { message, .. } = &output {
                self.observe_shipment(message);
                // The cluster's own metadata (the catalog's Raft group and gossip) costs every
                // model alike: it is not the data model's traffic.
                let metadata = matches!(
                    message,
                    triarch_node::Message::Meta(_) | triarch_node::Message::Catalog(_)
                );
                if self.phase == Phase::Main && !metadata {
                    self.messages_main += 1;
                }
            }
            match output {
                Output::Send { to, message } => match self.network.transmit(from, to) {
                    [None, _] => {}
                    [Some(latency), None] => {
                        self.schedule(latency, Event::Deliver { from, to, message })
                    }
                    [Some(first), Some(second)] => {
                        let copy = message.clone();
                        self.schedule(first, Event::Deliver { from, to, message });
                        let message = copy;
                        self.schedule(second, Event::Deliver { from, to, message });
                    }
                },
                Output::Reply { request, reply, .. } => self.on_reply(request, reply),
            }
        }
    }

    // ---- clients ----

    fn client_wake(&mut self, process: ProcessId) {
        if self.phase != Phase::Main {
            return;
        }
        if let Some(run) = &mut self.merged {
            if let Some(op) = run.clients.next_op(process) {
                self.invoke_merged(process, op);
            }
            return;
        }
        if let Some(op) = self.workload.next_op(process) {
            self.invoke(process, op);
        }
    }

    fn invoke(&mut self, process: ProcessId, op: PlannedOp) {
        let node = self.members[op.node_index].id;
        self.history
            .invoke(process, op.f, op.key, op.value, node, self.now);
        if matches!(self.hosts[op.node_index].state, HostState::Down(_)) {
            // Connection refused: the operation certainly did not happen.
            let error = Some(format!("{node} is down"));
            self.complete(process, EventType::Fail, None, error);
            return;
        }
        let request = RequestId(self.next_request);
        self.next_request += 1;
        let in_flight = InFlight {
            process,
            f: op.f,
            value: op.value,
        };
        self.requests.insert(request, in_flight);
        self.workload.set_waiting(process, Some(request));
        self.schedule(CLIENT_TIMEOUT, Event::ClientTimeout { process, request });
        let key = Bytes::from(key_bytes(op.key));
        let req = match op.f {
            Function::Read => Request::Get { key, r: None },
            Function::Write => {
                let value = op.value.expect("writes carry a value").to_string();
                Request::Set {
                    key,
                    value: Bytes::from(value),
                    w: None,
                }
            }
        };
        self.step(node, Input::Request(request, req));
    }

    fn on_reply(&mut self, request: RequestId, reply: Reply) {
        if let Some(run) = &mut self.merged {
            if let Some(process) = run.requests.remove(&request) {
                self.on_merged_reply(process, reply);
            }
            return;
        }
        let Some(InFlight { process, f, value }) = self.requests.remove(&request) else {
            return; // the client gave up already: its operation is recorded as info
        };
        self.note_reply(&reply);
        let (kind, value, error) = match (f, reply) {
            (Function::Write, Reply::Written { .. }) => (EventType::Ok, value, None),
            (Function::Read, Reply::Value(v)) => (EventType::Ok, v.map(|b| parse(&b)), None),
            (_, Reply::Error(e)) if e.is_definite() => (EventType::Fail, None, Some(e.to_string())),
            (_, Reply::Error(e)) => (EventType::Info, None, Some(e.to_string())),
            (f, other) => panic!("reply {other:?} to a {f:?}"),
        };
        self.complete(process, kind, value, error);
    }

    /// Records a completion; an `info` retires the process, and whoever continues thinks first.
    fn complete(
        &mut self,
        process: ProcessId,
        kind: EventType,
        value: Option<u64>,
        error: Option<String>,
    ) {
        self.history.complete(process, kind, value, self.now, error);
        let next = if kind == EventType::Info {
            self.workload.retire(process)
        } else {
            self.workload.set_waiting(process, None);
            let role = self.workload.process(process).map(|p| p.role);
            (role != Some(Role::FinalReader)).then_some(process)
        };
        if let Some(next) = next
            && self.phase == Phase::Main
        {
            let think = self.workload.think_time();
            self.schedule(think, Event::ClientWake { process: next });
        }
    }

    fn invoke_merged(&mut self, process: ProcessId, op: PlannedMergedOp) {
        let node = self.members[op.node_index].id;
        let run = self.merged.as_mut().expect("a CRDT run");
        run.history.invoke(process, op.f, op.key, node, self.now);
        if matches!(self.hosts[op.node_index].state, HostState::Down(_)) {
            let error = Some(format!("{node} is down"));
            self.complete_merged(process, EventType::Fail, None, error);
            return;
        }
        let request = RequestId(self.next_request);
        self.next_request += 1;
        run.requests.insert(request, process);
        let workload = run.clients.workload;
        let key = Bytes::from(workload.key_bytes(op.key));
        let account = |a: u64| Bytes::from(workload.key_bytes(a));
        let accounts = self.options.keys;
        let element = |e: u64| vec![Bytes::from(e.to_string())];
        let apply = |op: Operation| Request::Apply {
            key: key.clone(),
            op,
            r: None,
            w: None,
        };
        let req = match op.f {
            MergedFunction::SetAdd { element: e } => apply(Operation::SetAdd(element(e))),
            MergedFunction::SetRemove { element: e } => apply(Operation::SetRemove(element(e))),
            MergedFunction::CounterAdd { amount } => apply(Operation::CounterAdd(amount)),
            MergedFunction::SiblingsWrite { value, observed } => {
                let context = if observed {
                    run.contexts
                        .remove(&process)
                        .expect("an observed write follows its ok read")
                } else {
                    VersionVector::new()
                };
                apply(Operation::SiblingsWrite {
                    context,
                    value: Some(Bytes::from(value.to_string())),
                })
            }
            MergedFunction::MapSet { field, value } => apply(Operation::MapSet(vec![(
                Bytes::from(format!("f{field}")),
                Bytes::from(value.to_string()),
            )])),
            MergedFunction::SetRead
            | MergedFunction::CounterRead
            | MergedFunction::SiblingsRead
            | MergedFunction::MapRead => Request::Read {
                key: key.clone(),
                r: None,
            },
            MergedFunction::RegisterRead => Request::Get {
                key: key.clone(),
                r: None,
            },
            MergedFunction::RegisterWrite { value } => Request::Set {
                key: key.clone(),
                // Zero-padded to the mix's value size (it still parses as the number).
                value: Bytes::from(format!(
                    "{value:0width$}",
                    width = run.clients.value_bytes()
                )),
                w: None,
            },
            MergedFunction::RegisterCas { expected, new } => Request::Cas {
                key: key.clone(),
                expected: Some(Bytes::from(expected.to_string())),
                new: Bytes::from(new.to_string()),
            },
            MergedFunction::BankSetup => Request::Exec {
                watches: (0..accounts).map(|a| (account(a), 0)).collect(),
                commands: (0..accounts)
                    .map(|a| Command::Set {
                        key: account(a),
                        value: Bytes::from(BANK_INITIAL_BALANCE.to_string()),
                    })
                    .collect(),
            },
            MergedFunction::BankRead => Request::Watch {
                keys: (0..accounts).map(account).collect(),
            },
            MergedFunction::BankPrepare { from, to, .. } => Request::Watch {
                keys: vec![account(from), account(to)],
            },
            MergedFunction::BankTransfer {
                from,
                to,
                amount,
                from_version,
                to_version,
            } => Request::Exec {
                // The planted bug: transfers that do not watch what they read.
                watches: if self.options.planted_bug {
                    Vec::new()
                } else {
                    vec![(account(from), from_version), (account(to), to_version)]
                },
                commands: vec![
                    Command::IncrBy {
                        key: account(from),
                        by: -amount,
                    },
                    Command::IncrBy {
                        key: account(to),
                        by: amount,
                    },
                ],
            },
        };
        self.schedule(CLIENT_TIMEOUT, Event::ClientTimeout { process, request });
        self.step(node, Input::Request(request, req));
    }

    fn on_merged_reply(&mut self, process: ProcessId, reply: Reply) {
        self.note_reply(&reply);
        let run = self.merged.as_ref().expect("a CRDT run");
        let f = run
            .clients
            .pending_of(process)
            .expect("a reply to a pending operation");
        let (kind, result, error) = match reply {
            Reply::Watched(records) => {
                let accounts: Vec<u64> = match f {
                    MergedFunction::BankPrepare { from, to, .. } => vec![from, to],
                    _ => (0..self.options.keys).collect(),
                };
                let balances = accounts
                    .into_iter()
                    .zip(records)
                    .map(|(a, r)| {
                        let balance = r.value.map_or(0, |b| parse_balance(&b));
                        (a, balance, r.version)
                    })
                    .collect();
                (EventType::Ok, Some(ReadResult::Balances(balances)), None)
            }
            Reply::Exec(applied) if f == MergedFunction::BankSetup => (
                EventType::Ok,
                Some(ReadResult::Swapped(applied.is_some())),
                None,
            ),
            Reply::Exec(Some(_)) => (EventType::Ok, None, None),
            Reply::Exec(None) => (
                EventType::Fail,
                None,
                Some("aborted: a watched account changed".to_string()),
            ),
            Reply::Applied(_) => (EventType::Ok, None, None),
            Reply::State(View::Set(members)) => {
                let members = members.iter().map(|m| parse(m)).collect();
                (EventType::Ok, Some(ReadResult::Members(members)), None)
            }
            Reply::State(View::Siblings(view)) => {
                let values = view.values.iter().map(|v| parse(v)).collect();
                let run = self.merged.as_mut().expect("a CRDT run");
                run.contexts.insert(process, view.context);
                (EventType::Ok, Some(ReadResult::Siblings(values)), None)
            }
            Reply::State(View::Map(fields)) => {
                let fields = fields
                    .iter()
                    .map(|(f, v)| {
                        let field = std::str::from_utf8(f)
                            .ok()
                            .and_then(|f| f.strip_prefix('f')?.parse().ok())
                            .unwrap_or_else(|| panic!("a field the workload never writes: {f:?}"));
                        (field, parse(v))
                    })
                    .collect();
                (EventType::Ok, Some(ReadResult::Fields(fields)), None)
            }
            Reply::State(View::Counter(value)) => {
                (EventType::Ok, Some(ReadResult::Count(value)), None)
            }
            Reply::Value(v) => (
                EventType::Ok,
                Some(ReadResult::Register(v.map(|b| parse(&b)))),
                None,
            ),
            Reply::Written { .. } => (EventType::Ok, None, None),
            Reply::Swapped(b) => (EventType::Ok, Some(ReadResult::Swapped(b)), None),
            Reply::Error(e) if e.is_definite() => (EventType::Fail, None, Some(e.to_string())),
            Reply::Error(e) => (EventType::Info, None, Some(e.to_string())),
            other => panic!("reply {other:?} in a CRDT workload"),
        };
        self.complete_merged(process, kind, result, error);
    }

    fn complete_merged(
        &mut self,
        process: ProcessId,
        kind: EventType,
        result: Option<ReadResult>,
        error: Option<String>,
    ) {
        let run = self.merged.as_mut().expect("a CRDT run");
        let next = run.clients.completed(process, kind, result.as_ref());
        run.history.complete(process, kind, result, self.now, error);
        if self.phase == Phase::Main {
            for next in next {
                let run = self.merged.as_mut().expect("a CRDT run");
                let think = run.clients.think_time();
                self.schedule(think, Event::ClientWake { process: next });
            }
        }
    }

    /// Reads every key through every node. Besides checking for lost writes, these reads repair
    /// every replica that missed a write, which the convergence check then requires.
    /// Workloads L and B: what every up voter of the keyspace's group takes for its leader,
    /// [`SETTLE`] after the final heal.
    fn note_leaders_after_heal(&mut self) {
        let Some(run) = &self.merged else {
            return;
        };
        if run.clients.workload.is_multileader() {
            let workload = run.clients.workload;
            return self.note_region_leaders(workload);
        }
        if !matches!(
            run.clients.workload,
            MergedWorkload::Registers | MergedWorkload::Bank
        ) {
            return;
        }
        let keyspace = run.clients.workload.keyspace();
        let views = self
            .hosts
            .iter()
            .filter_map(|h| match &h.state {
                HostState::Up(node) => node
                    .primary()
                    .info(&keyspace.name)
                    .map(|info| (h.id, info.leader)),
                HostState::Down(_) => None,
            })
            .collect();
        if let Some(run) = &mut self.merged {
            run.leaders_after_heal = Some(views);
        }
    }

    fn final_reads(&mut self) {
        self.note_leaders_after_heal();
        if self.anti_entropy_only {
            // No client reads after the final heal (`anti_entropy_only`): snapshot, then wait.
            self.phase = Phase::FinalReads;
            if self.merged.is_some() {
                self.states_before_final_reads = Some(self.replica_states());
            } else {
                self.records_before_final_reads = Some(self.replica_records());
            }
            self.schedule(FINAL_READ_SETTLE, Event::Finish);
            return;
        }
        // (Workload LB's `lww` records are no CRDT state: nothing to snapshot.)
        let leaderless = self.merged.as_ref().is_some_and(|run| {
            !run.clients.workload.is_multileader()
                && !matches!(
                    run.clients.workload,
                    MergedWorkload::LwwBank | MergedWorkload::LwwRegisters
                )
        });
        if leaderless {
            // For `tests/sloppy.rs`: what hinted handoff alone left on the replicas.
            self.states_before_final_reads = Some(self.replica_states());
        }
        if let Some(run) = &mut self.merged {
            self.phase = Phase::FinalReads;
            run.history.mark_final_phase();
            // A bank read reads every account.
            let keys = if run.clients.workload == MergedWorkload::Bank {
                1
            } else {
                self.options.keys
            };
            for key in 0..keys {
                for node_index in 0..self.members.len() {
                    let run = self.merged.as_mut().expect("checked");
                    let process = run.clients.final_reader();
                    let f = run.clients.final_read(process, key);
                    let op = PlannedMergedOp { f, key, node_index };
                    self.invoke_merged(process, op);
                }
            }
            self.schedule(FINAL_READ_SETTLE, Event::Finish);
            return;
        }
        self.phase = Phase::FinalReads;
        // For `tests/sloppy.rs`: what hinted handoff alone left on the replicas.
        self.records_before_final_reads = Some(self.replica_records());
        self.history.mark_final_phase();
        for key in 0..self.options.keys {
            for node_index in 0..self.members.len() {
                let process = self.workload.final_reader();
                let op = PlannedOp {
                    f: Function::Read,
                    key,
                    value: None,
                    node_index,
                };
                self.invoke(process, op);
            }
        }
        self.schedule(FINAL_READ_SETTLE, Event::Finish);
    }

    // ---- the nemesis ----

    fn faults_on(&mut self) {
        if self.phase != Phase::Main {
            return;
        }
        self.fault_windows += 1;
        self.fault_window = Some(self.fault_windows);
        let window = self.nemesis.window();
        let ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        let mut record = FaultWindow {
            from: self.now,
            to: None,
            faults: BTreeSet::new(),
            blocked: BTreeSet::new(),
        };
        for action in self.nemesis.plan(window, &ids) {
            record.faults.insert(match &action {
                Action::Block { fault, .. } => *fault,
                Action::Loss(_) => Fault::LossBurst,
                Action::Crash { .. } => Fault::CrashRestart,
                Action::BumpClock { .. } => Fault::ClockBump,
                Action::FreezeClock { .. } => Fault::ClockFreeze,
            });
            match action {
                Action::Block {
                    fault,
                    links,
                    description,
                } => {
                    self.log(format!("{fault}: {description}"));
                    record.blocked.extend(links.iter().copied());
                    self.network.block(links);
                }
                Action::Loss(p) => {
                    self.log(format!("loss-burst: {:.0}% of messages lost", p * 100.0));
                    self.network.set_loss(p);
                }
                Action::Crash {
                    node,
                    mid_sync: false,
                    restart_after,
                } => self.crash_node(node, restart_after, "now"),
                Action::Crash {
                    node,
                    mid_sync: true,
                    restart_after,
                } => {
                    self.log(format!(
                        "crash-restart: {node} crashes during its next sync"
                    ));
                    self.hosts[index(node)].crash_armed = Some(restart_after);
                }
                Action::FreezeClock { node } => {
                    let wall_ms = self.wall_ms(node);
                    self.hosts[index(node)].clock_frozen_ms = Some(wall_ms);
                    self.log(format!("clock-freeze: {node} stuck at {wall_ms} ms"));
                }
                Action::BumpClock { node, delta_ms } => {
                    let host = &mut self.hosts[index(node)];
                    host.clock_offset_ms += delta_ms;
                    let offset = host.clock_offset_ms;
                    self.log(format!(
                        "clock-bump: {node} {delta_ms:+} ms (offset now {offset:+} ms)"
                    ));
                }
            }
        }
        self.windows.push(record);
        self.schedule(window, Event::FaultsOff);
    }

    /// Ends a fault window: links reopen, loss returns to the baseline, crashed nodes restart and
    /// clocks return to their baseline offsets.
    fn heal(&mut self) {
        self.fault_window = None;
        if let Some(w) = self.windows.last_mut().filter(|w| w.to.is_none()) {
            w.to = Some(self.now);
        }
        self.network.heal();
        let mut restarted = String::new();
        for i in 0..self.hosts.len() {
            let host = &mut self.hosts[i];
            host.clock_offset_ms = host.clock_baseline_ms;
            host.clock_frozen_ms = None;
            host.crash_armed = None;
            if matches!(host.state, HostState::Down(_)) {
                let id = host.id;
                let _ = write!(restarted, " {id}");
                self.start_node(id);
            }
        }
        self.log(format!(
            "heal{}",
            if restarted.is_empty() {
                String::new()
            } else {
                format!(", restart{restarted}")
            }
        ));
    }
}

/// Node ids are 1..=nodes; hosts are stored in that order.
fn index(node: NodeId) -> usize {
    node.0 as usize - 1
}

/// The key of register `key`: no `name:` prefix, so it belongs to the `default` keyspace
/// (leaderless, N=3, R=2, W=2).
pub fn key_bytes(key: u64) -> Vec<u8> {
    format!("r{key}").into_bytes()
}

fn parse(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a register holds a decimal integer, not {value:?}"))
}

fn parse_balance(value: &[u8]) -> i64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an account holds a decimal integer, not {value:?}"))
}
