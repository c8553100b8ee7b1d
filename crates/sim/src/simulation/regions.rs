//! Runs in several regions: where each node is, what the simulation observes of the shipping
//! between regions (the network carries it), the bugs it plants there ([`RegionBug`]), the
//! regions' tables it snapshots at the end, and the multi-leader checkers it runs over them.

use super::{HostState, MergedRun, Simulation, index};
use crate::checker::cart::{self, Isolation};
use crate::checker::regional::{
    self, RegionReplica, RegionReplicas, ShippedWrite, ShippedWrites, Window,
};
use crate::checker::{CheckerResult, counter, leader};
use crate::merged::{MergedFunction, MergedWorkload};
use crate::nemesis::FaultWindow;
use crate::{RegionBug, RegionOptions};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;
use triarch_core::causal::Dot;
use triarch_core::{DetRng, NodeId};
use triarch_multileader::machine::{self as region_machine, Command, Counters};
use triarch_multileader::record::Payload;
use triarch_multileader::region::{actor_of, region_group};
use triarch_node::{Member, Message};
use triarch_primary::machine::{extension_row, extension_scan, is_replicated_row, table_name};
use triarch_storage::{SimDisk, Storage};

/// How often [`RegionBug::RenumberedShipments`] renumbers a shipment it can renumber.
const RENUMBER_PROBABILITY: f64 = 0.25;
/// What [`RegionBug::WidenedContexts`] claims a change had seen of every other region.
const WIDENED: u64 = 1 << 40;

/// The regions of a run (one, for every run but the multi-leader ones).
pub(super) struct Regional {
    pub options: RegionOptions,
    /// The region (index) of each node, by node index.
    pub of_node: Vec<u32>,
    /// What the planted bugs draw.
    rng: DetRng,
    /// Workload MR: observe the `lww` writes the regions ship.
    observe_shipments: bool,
    /// Workload MR: every shipped `lww` write, by value.
    pub shipped: ShippedWrites,
    /// The multi-leader workloads: every voter's region table at the end.
    pub replicas: Option<RegionReplicas>,
    /// The multi-leader workloads: per region, the leader each up voter of its group follows
    /// [`super::SETTLE`] after the final heal.
    pub leaders_after_heal: Option<BTreeMap<String, BTreeMap<NodeId, Option<NodeId>>>>,
}

impl Regional {
    pub fn new(
        options: &RegionOptions,
        nodes: u32,
        workload: Option<MergedWorkload>,
        rng: DetRng,
    ) -> Self {
        assert!(
            options.regions >= 1 && options.regions <= nodes,
            "invalid options: {}",
            crate::InvalidOptions::Regions(options.regions)
        );
        assert!(
            workload.is_none_or(|w| !w.is_multileader() || options.regions >= 2),
            "a multi-leader workload runs in two regions or more"
        );
        Regional {
            options: options.clone(),
            of_node: (0..nodes).map(|i| i % options.regions).collect(),
            rng,
            observe_shipments: matches!(
                workload,
                Some(MergedWorkload::MlRegisters | MergedWorkload::MlBank)
            ),
            shipped: ShippedWrites::new(),
            replicas: None,
            leaders_after_heal: None,
        }
    }

    /// The members as the network places them: node `i` in region `r((i - 1) % regions + 1)`.
    pub fn members(&self, ids: &[NodeId]) -> Vec<Member> {
        ids.iter()
            .map(|&id| Member {
                id,
                region: format!("r{}", self.of_node[index(id)] + 1),
            })
            .collect()
    }

    /// The nodes of each region.
    pub fn nodes_by_region(&self, ids: &[NodeId]) -> Vec<Vec<NodeId>> {
        (0..self.options.regions)
            .map(|r| {
                ids.iter()
                    .copied()
                    .filter(|&id| self.of_node[index(id)] == r)
                    .collect()
            })
            .collect()
    }
}

/// What a multi-leader run exercised (the seed tests add them up to show that the checkers
/// judged something).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionStats {
    /// Summed over the regions (each region's counters once): conflicts detected, writes
    /// last-writer-wins discarded, records taken by state transfer.
    pub conflicts: u64,
    pub lww_discarded: u64,
    pub absorbed: u64,
    /// Times a region was cut off from every other.
    pub isolations: u64,
    /// Writes invoked and completed while only links between regions were cut, per region
    /// (index): `(ok, fail, info)`.
    pub writes_while_cut: BTreeMap<u32, (u64, u64, u64)>,
    /// Workload MC: elements a final read had to hold only because a re-add raced a remove
    /// from an isolated region ([`cart::concurrent_readds_judged`]).
    pub concurrent_readds: u64,
    /// Workload MR: writes lost to concurrent ones that the regions had to count
    /// ([`regional::lww_writes_lost`]).
    pub lww_lost: u64,
}

impl RegionStats {
    pub fn add(&mut self, other: &RegionStats) {
        self.conflicts += other.conflicts;
        self.lww_discarded += other.lww_discarded;
        self.absorbed += other.absorbed;
        self.isolations += other.isolations;
        for (region, (ok, fail, info)) in &other.writes_while_cut {
            let mine = self.writes_while_cut.entry(*region).or_default();
            mine.0 += ok;
            mine.1 += fail;
            mine.2 += info;
        }
        self.concurrent_readds += other.concurrent_readds;
        self.lww_lost += other.lww_lost;
    }
}

impl Simulation {
    /// What this (finished) multi-leader run exercised; zero for other runs.
    pub fn region_stats(&self) -> RegionStats {
        let mut stats = RegionStats {
            isolations: self.isolations().len() as u64,
            ..RegionStats::default()
        };
        let (Some(run), Some(replicas)) = (&self.merged, &self.regional.replicas) else {
            return stats;
        };
        for counters in regional::per_region(replicas).values() {
            stats.conflicts += counters.conflicts;
            stats.lww_discarded += counters.lww_discarded;
            stats.absorbed += counters.absorbed;
        }
        let region_of = |node: NodeId| self.region_of(node);
        let windows = self.windows_between_regions();
        for ((_, region), counts) in regional::writes_in_windows(&run.history, &windows, region_of)
        {
            stats.add(&RegionStats {
                writes_while_cut: BTreeMap::from([(region, counts)]),
                ..RegionStats::default()
            });
        }
        match run.clients.workload {
            MergedWorkload::MlCart => {
                stats.concurrent_readds =
                    cart::concurrent_readds_judged(&run.history, region_of, &self.isolations());
            }
            MergedWorkload::MlRegisters | MergedWorkload::MlBank => {
                let shipped = &self.regional.shipped;
                stats.lww_lost = regional::lww_writes_lost(&run.history, shipped, replicas);
            }
            _ => {}
        }
        stats
    }

    /// The region (index) of `node`, as the network places it.
    pub fn region_of(&self, node: NodeId) -> u32 {
        self.regional.of_node[index(node)]
    }

    /// The fault windows of the run, in order (for the checkers and for reports).
    pub fn fault_windows(&self) -> &[FaultWindow] {
        &self.windows
    }

    /// When each region was cut off from every other ([`cart::Isolation`]).
    pub fn isolations(&self) -> Vec<Isolation> {
        let ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        let regions = self.regional.nodes_by_region(&ids);
        let mut out = Vec::new();
        for w in &self.windows {
            let Some(to) = w.to else { continue };
            for (r, inside) in regions.iter().enumerate() {
                if regions.len() > 1 && w.cuts_off(inside, &ids) {
                    out.push(Isolation {
                        region: r as u32,
                        from: w.from,
                        to,
                    });
                }
            }
        }
        out
    }

    /// The fault windows that only cut links between regions
    /// ([`FaultWindow::only_between_regions`]).
    pub fn windows_between_regions(&self) -> Vec<Window> {
        self.windows
            .iter()
            .filter(|w| w.only_between_regions())
            .filter_map(|w| Some((w.from, w.to?)))
            .collect()
    }

    /// Every voter's copy of its region's table of the multi-leader keyspace, taken after the
    /// final reads settled (`None` before, and for other workloads).
    pub fn region_replicas(&self) -> Option<&RegionReplicas> {
        self.regional.replicas.as_ref()
    }

    /// The latency of every write invoked after `warm_up` (of virtual time: the first
    /// elections are over) that completed `ok`, by the region of the node it went through
    /// (`r1`, `r2`, ...): what a client in that region waited for.
    pub fn write_latencies(&self, warm_up: Duration) -> BTreeMap<String, Vec<Duration>> {
        let mut out: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        let Some(run) = &self.merged else {
            return out;
        };
        let events = run.history.events();
        for op in run.history.ops() {
            let write = matches!(
                op.f,
                MergedFunction::SetAdd { .. }
                    | MergedFunction::SetRemove { .. }
                    | MergedFunction::CounterAdd { .. }
                    | MergedFunction::RegisterWrite { .. }
            );
            let invoked = events[op.invoke_index].time.as_micros();
            let warm = invoked >= warm_up.as_micros() as u64;
            if let (true, true, crate::EventType::Ok, Some(c)) =
                (write, warm, op.outcome, op.complete_index)
            {
                let waited = events[c].time.as_micros() - invoked;
                let region = format!("r{}", self.region_of(op.node) + 1);
                out.entry(region)
                    .or_default()
                    .push(Duration::from_micros(waited));
            }
        }
        out
    }

    /// The members as the nodes are configured: as the network places them, or all in one
    /// region under [`RegionBug::FlatRegions`].
    pub(super) fn configured_members(&self) -> Vec<Member> {
        let mut members = self.members.clone();
        if self.regional.options.planted == Some(RegionBug::FlatRegions) {
            for m in &mut members {
                m.region = "r1".into();
            }
        }
        members
    }

    fn disk(&self, node: NodeId) -> &SimDisk {
        match &self.hosts[index(node)].state {
            HostState::Up(n) => n.storage(),
            HostState::Down(disk) => disk,
        }
    }

    /// Workload MR: remembers every `lww` write a region ships ([`regional::check_lww_discards`]
    /// judges what the writers had seen by them). Called for every message a node sends.
    pub(super) fn observe_shipment(&mut self, message: &Message) {
        if !self.regional.observe_shipments {
            return;
        }
        let Message::MultiLeader(triarch_multileader::Message::Ship { command, .. }) = message
        else {
            return;
        };
        let Some(Command::Ship { changes, .. }) = Command::decode(command) else {
            return;
        };
        let workload = self
            .merged
            .as_ref()
            .map_or(MergedWorkload::MlRegisters, |run| run.clients.workload);
        for outgoing in changes {
            let change = outgoing.change;
            let Payload::Lww {
                value: Some(value), ..
            } = &change.payload
            else {
                continue;
            };
            let (Some(key), Some(value)) = (workload_key(workload, &change.key), number(value))
            else {
                continue;
            };
            self.regional
                .shipped
                .entry(value)
                .or_insert_with(|| ShippedWrite {
                    key,
                    dot: change.dot,
                    context: change.context,
                });
        }
    }

    /// The planted bug, if any, applied to a message arriving at `to`.
    pub(super) fn tamper(&mut self, from: NodeId, to: NodeId, message: Message) -> Message {
        let Some(bug) = self.regional.options.planted else {
            return message;
        };
        let Message::MultiLeader(triarch_multileader::Message::Ship { keyspace, command }) =
            &message
        else {
            return message;
        };
        let Some(Command::Ship {
            from: region,
            first,
            mut changes,
        }) = Command::decode(command)
        else {
            return message;
        };
        let first = match bug {
            RegionBug::FlatRegions => return message,
            RegionBug::RenumberedShipments => {
                let shift = 2.min((changes.len() as u64).saturating_sub(1));
                if shift == 0 || first <= shift || !self.regional.rng.chance(RENUMBER_PROBABILITY) {
                    return message;
                }
                self.log(format!(
                    "planted: shipment {from}->{to} of {} change(s) from {first} renumbered from {}",
                    changes.len(),
                    first - shift
                ));
                first - shift
            }
            RegionBug::WidenedContexts => {
                // Every other region's entry far ahead of anything written; the writer's own
                // entry kept, so that the change still decodes.
                let names: Vec<String> = self.members.iter().map(|m| m.region.clone()).collect();
                for outgoing in &mut changes {
                    let change = &mut outgoing.change;
                    let writer = change.dot.actor();
                    for actor in names.iter().map(|r| actor_of(r)) {
                        if actor != writer {
                            change.context.advance_to(Dot::new(actor, WIDENED));
                        }
                    }
                }
                first
            }
        };
        let command = Command::Ship {
            from: region,
            first,
            changes,
        }
        .encode();
        Message::MultiLeader(triarch_multileader::Message::Ship {
            keyspace: keyspace.clone(),
            command,
        })
    }

    /// Every voter's region table of the multi-leader keyspace, read from its disk.
    pub(super) fn snapshot_region_replicas(&self, workload: MergedWorkload) -> RegionReplicas {
        let keyspace = workload.keyspace();
        let members = self.configured_members();
        let regions =
            triarch_multileader::Regions::new(members.iter().map(|m| (m.id, m.region.clone())))
                .expect("the simulator's region names are valid");
        let mut out = RegionReplicas::new();
        for region in regions.names() {
            let group = region_group(&keyspace, &regions, region, 0);
            let table = table_name(&group.name);
            for &node in &group.voters {
                let disk = self.disk(node);
                let rows = disk
                    .scan(&table, &[], usize::MAX)
                    .expect("SimDisk reads do not fail")
                    .into_iter()
                    .filter(|(k, _)| is_replicated_row(k))
                    .collect();
                let records =
                    extension_scan(disk, &table, &region_machine::key_row(b""), usize::MAX)
                        .expect("SimDisk reads do not fail")
                        .into_iter()
                        .filter_map(|(row, value)| {
                            let key = row.strip_prefix(region_machine::key_row(b"").as_slice())?;
                            Some((workload_key(workload, key)?, value))
                        })
                        .collect();
                let counters = extension_row(disk, &table, region_machine::counters_row())
                    .expect("SimDisk reads do not fail")
                    .and_then(|b| Counters::decode(&b))
                    .unwrap_or_default();
                let replica = RegionReplica {
                    region: region.to_string(),
                    rows,
                    records,
                    counters,
                };
                out.insert(node, replica);
            }
        }
        out
    }

    /// The multi-leader workloads: what every up voter of each region's group takes for its
    /// leader ([`super::SETTLE`] after the final heal).
    pub(super) fn note_region_leaders(&mut self, workload: MergedWorkload) {
        let keyspace = workload.keyspace().name;
        let members = self.configured_members();
        let mut views: BTreeMap<String, BTreeMap<NodeId, Option<NodeId>>> = BTreeMap::new();
        for host in &self.hosts {
            let HostState::Up(node) = &host.state else {
                continue;
            };
            let wall_ms = self.wall_ms(host.id);
            let info = node
                .multileader()
                .info(node.storage(), &keyspace, wall_ms)
                .and_then(|i| i.group);
            if let Some(group) = info {
                let region = members[index(host.id)].region.clone();
                views
                    .entry(region)
                    .or_default()
                    .insert(host.id, group.leader);
            }
        }
        self.regional.leaders_after_heal = Some(views);
    }

    /// The checkers of a multi-leader workload's run.
    pub(super) fn multileader_checkers(&self, run: &MergedRun) -> Vec<CheckerResult> {
        let workload = run.clients.workload;
        let history = &run.history;
        let replicas = self
            .regional
            .replicas
            .as_ref()
            .expect("snapshot taken at Finish");
        let region_of = |node: NodeId| self.region_of(node);
        let semantics = match workload {
            MergedWorkload::MlCart => cart::check(history, region_of, &self.isolations()),
            MergedWorkload::MlCounter => counter::check_scoped(history, |add, read, is_final| {
                is_final || region_of(add.node) == region_of(read.node)
            }),
            MergedWorkload::MlRegisters | MergedWorkload::MlBank => {
                regional::check_lww_discards(history, &self.regional.shipped, replicas)
            }
            // Workload MK (the explorer's): its overdrafts are the explorer's figures; the
            // final reads must agree.
            MergedWorkload::MlCounterBank => crate::explore::anomalies::final_reads_agree(history),
            other => panic!("{other} is not a multi-leader workload"),
        };
        let mut leaders = CheckerResult {
            checker: leader::NAME,
            violations: Vec::new(),
        };
        let views = self.regional.leaders_after_heal.as_ref();
        for (region, views) in views.expect("noted when the final reads start") {
            leaders
                .violations
                .extend(leader::check(views).violations.into_iter().map(|mut v| {
                    v.detail = format!("{region}: {}", v.detail);
                    v
                }));
        }
        vec![
            semantics,
            regional::check_convergence(replicas),
            regional::check_applied_once(replicas),
            regional::check_availability(history, &self.windows_between_regions(), region_of),
            leaders,
        ]
    }
}

/// The workload key whose stored key is `key` (`None` for another keyspace's).
fn workload_key(workload: MergedWorkload, key: &[u8]) -> Option<u64> {
    let prefix = workload.key_bytes(0);
    let prefix = &prefix[..prefix.len() - 1];
    std::str::from_utf8(key.strip_prefix(prefix)?)
        .ok()?
        .parse()
        .ok()
}

fn number(value: &Bytes) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}
