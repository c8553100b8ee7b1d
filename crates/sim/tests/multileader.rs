//! Multi-leader keyspaces in three regions (nine nodes, 20-60 ms between regions, sub-millisecond
//! inside them) under every fault the nemesis knows, partitions between regions and inside them
//! included: carts (`set`), counters (`counter`) and last-writer-wins registers (`lww`).
//!
//! - `TRIARCH_SIM_SEEDS=N` runs N seeds of each workload instead of 1,000.
//! - `TRIARCH_SIM_SEED=S` replays seed S alone and prints its timeline, its counters and the
//!   history of every key a checker complained about (`TRIARCH_SIM_HISTORY=1`: the whole
//!   history).
//! - `TRIARCH_SIM_PLANTED=<bug>` runs with one of the simulator's planted bugs
//!   ([`RegionBug`]: `renumbered-shipments`, `widened-contexts`, `flat-regions`), to look at
//!   what the checkers report (the test then fails, as it should).
//!
//! Also here: the planted-bug tests of the multi-leader checkers, exact replays, the write
//! latency each model costs a client in each region (`write_latency_by_model_and_region`, with
//! `--nocapture`), and a scripted scenario on a hand-driven cluster.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use triarch_sim::checker::{cart, counter, regional};
use triarch_sim::testing::{blamed_keys, describe, env_u64, stopwatch};
use triarch_sim::{
    MergedWorkload, RegionBug, RegionOptions, RegionStats, SeedReport, SimOptions, Simulation,
    Summary, multileader_replay_command, run_multileader_seed,
};

fn regions() -> RegionOptions {
    let planted = std::env::var("TRIARCH_SIM_PLANTED").ok().map(|name| {
        RegionBug::parse(&name).unwrap_or_else(|| panic!("TRIARCH_SIM_PLANTED={name}: no such bug"))
    });
    RegionOptions {
        planted,
        ..RegionOptions::three()
    }
}

fn replay(seed: u64, workload: MergedWorkload, regions: &RegionOptions) -> SeedReport {
    let mut sim = Simulation::new_in_regions(seed, &SimOptions::multileader(), workload, regions);
    let report = sim.run();
    println!("{}", describe(&report));
    println!("timeline:");
    for entry in &report.timeline {
        println!("  {entry}");
    }
    println!("{:?}", sim.region_stats());
    for (node, replica) in sim.region_replicas().expect("a multi-leader run") {
        println!("  {node} {}: {:?}", replica.region, replica.counters);
    }
    let history = sim.merged_history().expect("a multi-leader run");
    if std::env::var("TRIARCH_SIM_HISTORY").is_ok() {
        println!("history:\n{history}");
    } else {
        for key in blamed_keys(&report) {
            println!("history of key {key}:\n{}", history.key_excerpt(key));
        }
    }
    report
}

/// One seed, with what it exercised (nothing when it panicked).
fn run_one(
    seed: u64,
    workload: MergedWorkload,
    regions: &RegionOptions,
) -> (SeedReport, RegionStats) {
    let options = SimOptions::multileader();
    let run = std::panic::catch_unwind(|| {
        let mut sim = Simulation::new_in_regions(seed, &options, workload, regions);
        let report = sim.run();
        (report, sim.region_stats())
    });
    // A panic is reported by the guarded runner, which catches it again.
    run.unwrap_or_else(|_| {
        let report = run_multileader_seed(seed, &options, workload, regions);
        (report, RegionStats::default())
    })
}

fn seeds(workload: MergedWorkload) {
    let regions = regions();
    if let Some(seed) = env_u64("TRIARCH_SIM_SEED") {
        let report = replay(seed, workload, &regions);
        assert!(report.passed(), "seed {seed} failed");
        return;
    }
    let count = env_u64("TRIARCH_SIM_SEEDS").unwrap_or(1_000);
    let started = stopwatch();
    let mut summary = Summary::default();
    let mut stats = RegionStats::default();
    let mut replays = Vec::new();
    for seed in 0..count {
        let (report, seed_stats) = run_one(seed, workload, &regions);
        if !report.passed() {
            let command = multileader_replay_command(&report, workload, &regions);
            println!("{}\n  replay: {command}", describe(&report));
            replays.push(command);
        }
        stats.add(&seed_stats);
        summary.seeds += 1;
        summary.ops_ok += report.ops_ok;
        summary.ops_fail += report.ops_fail;
        summary.ops_info += report.ops_info;
        summary.events += report.events;
        summary.virtual_duration += report.virtual_duration;
    }
    let elapsed = started.elapsed();
    println!(
        "multi-leader {workload}: {summary}\n{:.2} s wall, {:.0} events/s\n{stats:?}",
        elapsed.as_secs_f64(),
        summary.events as f64 / elapsed.as_secs_f64(),
    );
    assert!(
        replays.is_empty(),
        "{} of {count} multi-leader {workload} seeds failed; replay with:\n{}",
        replays.len(),
        replays.join("\n")
    );
    // The runs exercised what they claim to: most operations succeed despite the faults, the
    // regions were cut apart and kept taking writes, and they had conflicts to merge.
    let total = summary.ops_ok + summary.ops_fail + summary.ops_info;
    assert!(summary.ops_ok * 2 > total, "{summary}");
    if count >= 100 {
        assert!(stats.isolations > 0 && stats.conflicts > 0, "{stats:?}");
        assert_eq!(stats.writes_while_cut.len(), 3, "{stats:?}");
        for (ok, fail, info) in stats.writes_while_cut.values() {
            // Every region answered nearly every write while cut off from the others.
            assert!(*ok * 10 >= (ok + fail + info) * 9, "{stats:?}");
        }
        match workload {
            MergedWorkload::MlCart => assert!(stats.concurrent_readds > 0, "{stats:?}"),
            MergedWorkload::MlRegisters => assert!(stats.lww_lost > 0, "{stats:?}"),
            _ => {}
        }
    }
}

#[test]
fn cart_seeds() {
    seeds(MergedWorkload::MlCart);
}

#[test]
fn counter_seeds() {
    seeds(MergedWorkload::MlCounter);
}

#[test]
fn lww_seeds() {
    seeds(MergedWorkload::MlRegisters);
}

/// Finds an early seed on which `bug` is caught by `checker`.
fn planted_bug_is_caught(workload: MergedWorkload, bug: RegionBug, checker: &str) {
    const SEEDS_MAX: u64 = 100;
    let regions = RegionOptions {
        planted: Some(bug),
        ..RegionOptions::three()
    };
    let caught = (0..SEEDS_MAX).find_map(|seed| {
        let report = run_multileader_seed(seed, &SimOptions::multileader(), workload, &regions);
        assert!(report.panic.is_none(), "{}", describe(&report));
        report.failed_checker(checker).then_some(report)
    });
    let report = caught.unwrap_or_else(|| {
        panic!("none of the first {SEEDS_MAX} {workload} seeds caught {bug} with {checker}")
    });
    println!(
        "{bug} caught by {checker}: {}\n  replay: {}",
        describe(&report),
        multileader_replay_command(&report, workload, &regions)
    );
}

/// Shipments renumbered two changes back: the receiver skips two changes (they never arrive)
/// and applies two others twice.
#[test]
fn planted_renumbered_shipments_are_caught_by_applied_once_and_convergence() {
    let bug = RegionBug::RenumberedShipments;
    planted_bug_is_caught(MergedWorkload::MlCounter, bug, regional::APPLIED_ONCE);
    planted_bug_is_caught(MergedWorkload::MlCounter, bug, regional::CONVERGENCE);
}

/// The changes the renumbered shipments skip are adds and increments some region lost.
#[test]
fn planted_renumbered_shipments_are_caught_by_the_cart_and_counter_checkers() {
    let bug = RegionBug::RenumberedShipments;
    planted_bug_is_caught(MergedWorkload::MlCart, bug, cart::NAME);
    planted_bug_is_caught(MergedWorkload::MlCounter, bug, counter::NAME);
}

/// Changes that claim to have seen what their receiver holds hide conflicts: last-writer-wins
/// still picks one write, but the losers go uncounted.
#[test]
fn planted_widened_contexts_are_caught_by_the_lww_discards_checker() {
    let bug = RegionBug::WidenedContexts;
    planted_bug_is_caught(MergedWorkload::MlRegisters, bug, regional::LWW_DISCARDS);
}

/// Nodes configured as one region: each write needs a majority of one group spread over the
/// regions, so a region cut off from it stops taking writes.
#[test]
fn planted_flat_regions_are_caught_by_the_availability_checker() {
    let bug = RegionBug::FlatRegions;
    planted_bug_is_caught(MergedWorkload::MlCounter, bug, regional::AVAILABILITY);
}

#[test]
fn a_seed_of_each_workload_replays_exactly() {
    for workload in MergedWorkload::MULTI_LEADER {
        let options = SimOptions::multileader();
        let run = || {
            let mut sim =
                Simulation::new_in_regions(11, &options, workload, &RegionOptions::three());
            let report = sim.run();
            (report, sim.region_replicas().cloned(), sim.region_stats())
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b, "{workload}");
        let (report, replicas, _) = a;
        assert!(report.passed(), "{}", describe(&report));
        assert!(
            report.history_events > 500,
            "the run did something: {report}"
        );
        // Every region's records are there: the convergence check is not vacuous.
        let replicas = replicas.expect("snapshot");
        assert_eq!(replicas.len(), 9, "{workload}");
        assert!(
            replicas.values().all(|r| !r.records.is_empty()),
            "{workload}"
        );
        let regions: BTreeSet<&str> = replicas.values().map(|r| r.region.as_str()).collect();
        assert_eq!(regions.len(), 3);
    }
}

/// One region is the layout every other run has: placing a workload in one region changes
/// nothing about its run.
#[test]
fn one_region_is_the_single_region_run() {
    let options = SimOptions::default();
    for workload in [MergedWorkload::Set, MergedWorkload::Registers] {
        let single =
            Simulation::new_in_regions(3, &options, workload, &RegionOptions::single()).run();
        let merged = Simulation::new_merged(3, &options, workload).run();
        assert_eq!(single, merged, "{workload}");
    }
}

/// Liveness sanity check: with the nemesis off and the network reliable but for its latency,
/// nearly every operation succeeds in every region.
#[test]
fn healthy_regions_answer_nearly_every_operation() {
    let options = quiet();
    for workload in MergedWorkload::MULTI_LEADER {
        for seed in 0..5 {
            let r = run_multileader_seed(seed, &options, workload, &RegionOptions::three());
            assert!(r.passed(), "{workload}: {}", describe(&r));
            let total = r.ops_ok + r.ops_fail + r.ops_info;
            assert!(
                r.ops_ok * 1_000 >= total * 995,
                "{workload}: {}",
                describe(&r)
            );
        }
    }
}

fn quiet() -> SimOptions {
    SimOptions {
        partitions: false,
        packet_loss: false,
        duplication: false,
        crashes: false,
        clock_skew: false,
        ..SimOptions::multileader()
    }
}

/// What each model's writes cost a client in each region, in the same three regions (no
/// faults): multi-leader writes are acknowledged inside the writer's region, primary-backup
/// writes (workload L) once a majority of the keyspace's three voters, spread over the
/// regions, hold them, through the leader wherever it is. Run with `--nocapture` to see the
/// table.
#[test]
fn write_latency_by_model_and_region() {
    let seeds = env_u64("TRIARCH_SIM_LATENCY_SEEDS").unwrap_or(4);
    let options = quiet();
    let mut rows = Vec::new();
    let mut medians: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for (model, workload) in [
        ("multi-leader (cart)", MergedWorkload::MlCart),
        ("multi-leader (lww)", MergedWorkload::MlRegisters),
        ("primary-backup (L)", MergedWorkload::Registers),
    ] {
        let mut by_region: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        for seed in 0..seeds {
            let mut sim =
                Simulation::new_in_regions(seed, &options, workload, &RegionOptions::three());
            let report = sim.run();
            assert!(report.passed(), "{model}: {}", describe(&report));
            // After the first elections (300-600 ms), as for a cluster that has been up.
            for (region, mut latencies) in sim.write_latencies(Duration::from_secs(1)) {
                by_region.entry(region).or_default().append(&mut latencies);
            }
        }
        for (region, mut latencies) in by_region {
            latencies.sort();
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
            let (p50, p99) = (at(0.5), at(0.99));
            medians.entry(model).or_default().push(p50);
            rows.push(format!(
                "{model:<22} {region}  {:>6} writes  median {:>8.2} ms  p99 {:>8.2} ms",
                latencies.len(),
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            ));
        }
    }
    let regions = ["r1", "r2", "r3"];
    let members: Vec<(triarch_core::NodeId, &str)> = (1..=options.nodes)
        .map(|i| (triarch_core::NodeId(i), regions[((i - 1) % 3) as usize]))
        .collect();
    let voters =
        triarch_primary::engine::voters_of(&MergedWorkload::Registers.keyspace(), &members);
    let placed: Vec<String> = voters
        .iter()
        .map(|v| format!("{v} (r{})", (v.0 - 1) % 3 + 1))
        .collect();
    println!(
        "write latency seen by clients, {seeds} seeds per model, 3 regions 20-60 ms apart \
         (primary-backup voters: {}):\n{}",
        placed.join(", "),
        rows.join("\n")
    );
    // A multi-leader write never leaves its region; a primary-backup write crosses regions.
    let slowest_ml = medians["multi-leader (cart)"].iter().max().copied();
    let fastest_pb = medians["primary-backup (L)"].iter().min().copied();
    assert!(slowest_ml < fastest_pb, "{rows:#?}");
}

// ---- a scripted scenario on a hand-driven cluster ----

mod scripted {
    use super::*;
    use triarch_core::{DetRng, Instant, KeyspaceConfig, NodeId, Now, RequestId};
    use triarch_node::{
        Member, Message, Node, NodeConfig, Operation, Output, Reply, Request, View,
    };
    use triarch_storage::{SimDisk, Storage};

    const START_MS: u64 = triarch_sim::WALL_CLOCK_START_MS;
    const INSIDE: Duration = Duration::from_micros(500);
    const BETWEEN: Duration = Duration::from_millis(30);

    /// Nine nodes in three regions; every message takes [`INSIDE`] or [`BETWEEN`]; every step
    /// syncs its node's disk before its outputs leave. `cut` drops every message between
    /// regions (at sending and at delivery).
    pub struct Cluster {
        members: Vec<Member>,
        nodes: Vec<Node<SimDisk>>,
        now: Instant,
        in_flight: BTreeMap<(Instant, u64), (NodeId, NodeId, Message)>,
        seq: u64,
        replies: BTreeMap<RequestId, Reply>,
        next_request: u64,
        pub cut: bool,
    }

    fn region(node: NodeId) -> u32 {
        (node.0 - 1) % 3
    }

    impl Cluster {
        pub fn new(keyspaces: &[KeyspaceConfig]) -> Self {
            let members: Vec<Member> = (1..=9)
                .map(|i| Member {
                    id: NodeId(i),
                    region: format!("r{}", region(NodeId(i)) + 1),
                })
                .collect();
            let nodes = members
                .iter()
                .map(|m| {
                    let mut config = NodeConfig::new(m.id, members.clone());
                    config.keyspaces = keyspaces.to_vec();
                    let rng = DetRng::seed_from_u64(u64::from(m.id.0));
                    Node::new(
                        config,
                        SimDisk::new(),
                        rng,
                        Now::new(Instant::ZERO, START_MS),
                    )
                    .expect("node starts")
                })
                .collect();
            let mut cluster = Cluster {
                members,
                nodes,
                now: Instant::ZERO,
                in_flight: BTreeMap::new(),
                seq: 0,
                replies: BTreeMap::new(),
                next_request: 1,
                cut: false,
            };
            for i in 0..9 {
                cluster.after_step(i);
            }
            cluster
        }

        fn now(&self) -> Now {
            Now::new(self.now, START_MS + self.now.as_micros() / 1_000)
        }

        pub fn node(&self, id: NodeId) -> &Node<SimDisk> {
            &self.nodes[id.0 as usize - 1]
        }

        fn blocked(&self, from: NodeId, to: NodeId) -> bool {
            self.cut && region(from) != region(to)
        }

        /// Persist, then send: sync the node's disk (again while telling it so staged more),
        /// then release its outputs.
        fn after_step(&mut self, i: usize) {
            let now = self.now();
            let from = self.members[i].id;
            let node = &mut self.nodes[i];
            for _ in 0..10 {
                let point = node.sync_point();
                node.storage_mut().sync().expect("SimDisk sync");
                node.synced(now, point);
                if node.storage().unsynced_writes() == 0 {
                    break;
                }
            }
            let mut outputs = Vec::new();
            while let Some(o) = node.poll_output() {
                outputs.push(o);
            }
            for output in outputs {
                match output {
                    Output::Send { to, message } if !self.blocked(from, to) => {
                        let latency = if region(from) == region(to) {
                            INSIDE
                        } else {
                            BETWEEN
                        };
                        self.seq += 1;
                        self.in_flight
                            .insert((self.now + latency, self.seq), (from, to, message));
                    }
                    Output::Send { .. } => {}
                    Output::Reply { request, reply, .. } => {
                        self.replies.insert(request, reply);
                    }
                }
            }
        }

        /// Runs every delivery and timer due up to `until`.
        pub fn run_until(&mut self, until: Instant) {
            loop {
                let message = self.in_flight.keys().next().map(|&(at, _)| at);
                let timer = (0..9)
                    .filter_map(|i| self.nodes[i].poll_timeout().map(|t| (t.max(self.now), i)))
                    .min();
                let next = match (message, timer) {
                    (Some(m), Some((t, _))) => m.min(t),
                    (Some(m), None) => m,
                    (None, Some((t, _))) => t,
                    (None, None) => until,
                };
                if next > until {
                    self.now = until;
                    return;
                }
                self.now = next;
                if message == Some(next) {
                    let (&key, _) = self.in_flight.iter().next().expect("due");
                    let (from, to, msg) = self.in_flight.remove(&key).expect("due");
                    if !self.blocked(from, to) {
                        let now = self.now();
                        self.nodes[to.0 as usize - 1].handle_message(now, from, msg);
                        self.after_step(to.0 as usize - 1);
                    }
                } else if let Some((_, i)) = timer {
                    let now = self.now();
                    self.nodes[i].handle_timeout(now);
                    self.after_step(i);
                }
            }
        }

        pub fn run_for(&mut self, d: Duration) {
            self.run_until(self.now + d);
        }

        /// A client's request through `via`; its reply, or `None` after 2 s without one.
        pub fn request(&mut self, via: NodeId, req: Request) -> Option<Reply> {
            let request = RequestId(self.next_request);
            self.next_request += 1;
            let now = self.now();
            self.nodes[via.0 as usize - 1].handle_request(now, request, req);
            self.after_step(via.0 as usize - 1);
            let deadline = self.now + Duration::from_secs(2);
            while !self.replies.contains_key(&request) && self.now < deadline {
                self.run_for(Duration::from_millis(1));
            }
            self.replies.remove(&request)
        }
    }

    pub fn key(workload: MergedWorkload) -> Bytes {
        Bytes::from(workload.key_bytes(0))
    }

    pub fn apply(workload: MergedWorkload, op: Operation) -> Request {
        Request::Apply {
            key: key(workload),
            op,
            r: None,
            w: None,
        }
    }

    pub fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    pub fn members(reply: Option<Reply>) -> Vec<Bytes> {
        match reply {
            Some(Reply::State(View::Set(members))) => members,
            other => panic!("a set read answered {other:?}"),
        }
    }

    pub fn count(reply: Option<Reply>) -> i128 {
        match reply {
            Some(Reply::State(View::Counter(value))) => value,
            other => panic!("a counter read answered {other:?}"),
        }
    }
}

/// All three regions cut from each other: writes in every region succeed (acknowledged inside
/// the region), each region reads only its own; a region removes an item another region
/// re-adds meanwhile. After the heal every node of every region reads the same: every region's
/// adds, the re-added item (add wins), the exact sum, one last-writer-wins value, and every
/// region counted its conflicts and its lost writes, none twice.
#[test]
fn regions_cut_apart_keep_writing_then_converge_and_count_their_conflicts() {
    use scripted::{Cluster, apply, b, count, key, members};
    use triarch_core::NodeId;
    use triarch_node::{Operation, Reply, Request};
    let (cart_ks, counter_ks, lww_ks) = (
        MergedWorkload::MlCart,
        MergedWorkload::MlCounter,
        MergedWorkload::MlRegisters,
    );
    let mut c = Cluster::new(&[cart_ks.keyspace(), counter_ks.keyspace(), lww_ks.keyspace()]);
    c.run_for(Duration::from_secs(3));
    // Before the cut: milk is in the cart, everywhere.
    let milk = || vec![b("milk")];
    let added = c.request(NodeId(1), apply(cart_ks, Operation::SetAdd(milk())));
    assert!(matches!(added, Some(Reply::Applied(_))), "{added:?}");
    c.run_for(Duration::from_secs(1));
    let read = Request::Read {
        key: key(cart_ks),
        r: None,
    };
    assert_eq!(members(c.request(NodeId(3), read.clone())), milk());

    c.cut = true;
    // Nodes 1, 2, 3 are in regions r1, r2, r3.
    for i in 1..=3u32 {
        let via = NodeId(i);
        let item = vec![b(&format!("from-r{i}"))];
        let writes = [
            apply(cart_ks, Operation::SetAdd(item)),
            apply(counter_ks, Operation::CounterAdd(i64::from(10u32.pow(i)))),
            Request::Set {
                key: key(lww_ks),
                value: b(&format!("r{i}")),
                w: None,
            },
        ];
        for write in writes {
            let reply = c.request(via, write.clone());
            assert!(
                matches!(reply, Some(Reply::Applied(_) | Reply::Written { .. })),
                "{write:?} through {via} while cut off: {reply:?}"
            );
        }
        let read = Request::Read {
            key: key(counter_ks),
            r: None,
        };
        assert_eq!(
            count(c.request(via, read)),
            i128::from(10u32.pow(i)),
            "only its own"
        );
    }
    // r1 removes milk (it saw the add); r2 re-adds it, concurrently.
    let removed = c.request(NodeId(1), apply(cart_ks, Operation::SetRemove(milk())));
    assert!(matches!(removed, Some(Reply::Applied(_))), "{removed:?}");
    let readded = c.request(NodeId(2), apply(cart_ks, Operation::SetAdd(milk())));
    assert!(matches!(readded, Some(Reply::Applied(_))), "{readded:?}");
    assert!(!members(c.request(NodeId(4), read.clone())).contains(&b("milk")));

    c.cut = false;
    c.run_for(Duration::from_secs(5));
    let expected_cart: Vec<Bytes> = ["from-r1", "from-r2", "from-r3", "milk"]
        .into_iter()
        .map(b)
        .collect();
    let mut finals = BTreeSet::new();
    for n in 1..=9 {
        let via = NodeId(n);
        assert_eq!(
            members(c.request(via, read.clone())),
            expected_cart,
            "{via}"
        );
        let read_count = Request::Read {
            key: key(counter_ks),
            r: None,
        };
        assert_eq!(count(c.request(via, read_count)), 1_110, "{via}");
        let get = Request::Get {
            key: key(lww_ks),
            r: None,
        };
        match c.request(via, get) {
            Some(Reply::Value(Some(v))) => finals.insert(v),
            other => panic!("{via}: {other:?}"),
        };
    }
    assert_eq!(finals.len(), 1, "one value everywhere: {finals:?}");
    assert!(
        ["r1", "r2", "r3"]
            .map(b)
            .contains(finals.first().expect("one"))
    );
    // Every region detected conflicts; two of the three concurrent lww writes were lost, each
    // counted in its own region; nothing was applied twice.
    let wall_ms = triarch_sim::WALL_CLOCK_START_MS + 60_000;
    for workload in [cart_ks, counter_ks, lww_ks] {
        let name = workload.keyspace().name;
        let mut discarded = 0;
        for region in 1..=3u32 {
            let node = c.node(NodeId(region));
            let info = node
                .multileader()
                .info(node.storage(), &name, wall_ms)
                .expect("a voter of its region's group");
            assert!(
                info.counters.conflicts > 0,
                "{name} r{region}: {:?}",
                info.counters
            );
            assert_eq!(info.counters.duplicates, 0, "{name} r{region}");
            discarded += info.counters.lww_discarded;
        }
        if workload == lww_ks {
            assert!(
                discarded >= 2,
                "{discarded} lww writes counted as discarded"
            );
        }
    }
}
