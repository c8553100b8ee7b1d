//! Metrics in Prometheus format (`GET /metrics`).
//!
//! The core records one counter increment and one histogram sample per reply; the handles are
//! looked up once per (keyspace, operation, outcome) and cached, so the hot path does no label
//! hashing or allocation. Model counters (read repairs, quorum failures, LWW discards) are copied
//! from the node's own counters after each batch.

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use triarch_core::NodeId;
use triarch_multileader::engine::MultiLeaderStats;
use triarch_node::KeyspaceStats;
use triarch_node::{Node, Reply, Request};
use triarch_storage::Storage;

/// Installs the process-wide recorder once and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("buckets are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // A second recorder in the same process (tests running several nodes) is fine to lose.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Get,
    Set,
    Delete,
    /// A read of a merged (CRDT or siblings) state.
    Read,
    /// An operation on a merged state (INCR, SADD, HSET, SETV, ...).
    Apply,
    /// Compare-and-set (primary-backup).
    Cas,
    /// WATCH's version read (primary-backup).
    Watch,
    /// A MULTI/EXEC transaction (primary-backup).
    Exec,
    Admin,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::Read => "read",
            Op::Apply => "apply",
            Op::Cas => "cas",
            Op::Watch => "watch",
            Op::Exec => "exec",
            Op::Admin => "admin",
        }
    }
}

#[derive(Clone, Debug)]
pub struct OpLabel {
    keyspace: Arc<str>,
    model: &'static str,
    op: Op,
}

struct OpHandles {
    ok: Counter,
    error: Counter,
    latency: Histogram,
}

/// The core's metrics; owned by the core task.
#[derive(Default)]
pub struct OpMetrics {
    keyspaces: BTreeMap<String, (Arc<str>, &'static str)>,
    handles: HashMap<(Arc<str>, Op), OpHandles>,
    stats_seen: BTreeMap<String, KeyspaceStats>,
    primary_published: Option<std::time::Instant>,
    multileader_published: Option<std::time::Instant>,
}

impl OpMetrics {
    pub fn label_for<S: Storage>(&mut self, node: &Node<S>, request: &Request) -> OpLabel {
        let (key, op) = match request {
            Request::Get { key, .. } | Request::GetWith { key, .. } => (Some(key), Op::Get),
            Request::Set { key, .. } => (Some(key), Op::Set),
            Request::Delete { key, .. } => (Some(key), Op::Delete),
            Request::Read { key, .. } => (Some(key), Op::Read),
            Request::Apply { key, .. } => (Some(key), Op::Apply),
            Request::Cas { key, .. } => (Some(key), Op::Cas),
            Request::Watch { keys } => (keys.first(), Op::Watch),
            Request::Exec { commands, .. } => (commands.iter().find_map(|c| c.key()), Op::Exec),
            Request::CreateKeyspace(_)
            | Request::ListKeyspaces
            | Request::KeyspaceInfo { .. }
            | Request::SetHome { .. }
            | Request::Join(_)
            | Request::Decommission { .. }
            | Request::Membership => (None, Op::Admin),
        };
        let Some(key) = key else {
            return OpLabel {
                keyspace: Arc::from(""),
                model: "",
                op,
            };
        };
        let ks = node.route(key);
        let (keyspace, model) = match self.keyspaces.get(ks.name.as_str()) {
            Some(v) => v.clone(),
            None => {
                let v = (Arc::<str>::from(ks.name.as_str()), ks.model.as_str());
                self.keyspaces.insert(ks.name.clone(), v.clone());
                v
            }
        };
        OpLabel {
            keyspace,
            model,
            op,
        }
    }

    pub fn record_reply(&mut self, label: &OpLabel, reply: &Reply, elapsed: Duration) {
        if label.op == Op::Admin {
            return;
        }
        let handles = self.handles.entry((label.keyspace.clone(), label.op)).or_insert_with(|| {
            let ks = label.keyspace.to_string();
            let counter = |outcome: &'static str| {
                counter!("triarch_operations_total", "keyspace" => ks.clone(), "model" => label.model, "op" => label.op.as_str(), "outcome" => outcome)
            };
            OpHandles {
                ok: counter("ok"),
                error: counter("error"),
                latency: histogram!("triarch_operation_duration_seconds", "keyspace" => ks.clone(), "op" => label.op.as_str()),
            }
        });
        match reply {
            Reply::Error(_) => handles.error.increment(1),
            _ => handles.ok.increment(1),
        }
        handles.latency.record(elapsed.as_secs_f64());
    }

    /// Publishes the primary-backup groups' state, at most every 250 ms.
    pub fn observe_primary<S: Storage>(&mut self, node: &Node<S>) {
        let now = std::time::Instant::now();
        if self
            .primary_published
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(250))
        {
            return;
        }
        self.primary_published = Some(now);
        publish_primary(node);
    }

    /// Publishes the multi-leader keyspaces' counters and shipping lag, at most every 250 ms.
    pub fn observe_multileader<S: Storage>(&mut self, node: &Node<S>, clock: &crate::core::Clock) {
        let now = std::time::Instant::now();
        if self
            .multileader_published
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(250))
        {
            return;
        }
        self.multileader_published = Some(now);
        let infos = multileader_infos(node, clock.now().wall_ms);
        publish_multileader(&infos, node.multileader().stats());
    }

    /// Publishes the node's model counters (cheap when nothing changed).
    pub fn observe_stats(&mut self, stats: &BTreeMap<String, KeyspaceStats>) {
        for (ks, s) in stats {
            if self.stats_seen.get(ks) == Some(s) {
                continue;
            }
            let counters = [
                ("triarch_read_repairs_total", s.read_repairs),
                ("triarch_quorum_failures_total", s.quorum_failures),
                ("triarch_lww_discarded_total", s.lww_discarded),
                ("triarch_clock_ahead_refused_total", s.clock_ahead_refused),
                ("triarch_clock_ahead_copied_total", s.clock_ahead_copied),
                ("triarch_write_restamps_total", s.write_restamps),
                ("triarch_siblings_created_total", s.siblings_created),
                ("triarch_siblings_resolved_total", s.siblings_resolved),
                ("triarch_forwarded_total", s.forwarded),
                ("triarch_hinted_writes_total", s.hinted_writes),
                ("triarch_hints_stored_total", s.hints_stored),
                ("triarch_hints_delivered_total", s.hints_delivered),
                ("triarch_hints_expired_total", s.hints_expired),
                ("triarch_hints_refused_total", s.hints_refused),
                (
                    "triarch_anti_entropy_ranges_compared_total",
                    s.anti_entropy_ranges_compared,
                ),
                (
                    "triarch_anti_entropy_ranges_in_sync_total",
                    s.anti_entropy_ranges_in_sync,
                ),
                (
                    "triarch_anti_entropy_keys_repaired_total",
                    s.anti_entropy_keys_repaired,
                ),
                (
                    "triarch_anti_entropy_bytes_sent_total",
                    s.anti_entropy_bytes_sent,
                ),
                (
                    "triarch_anti_entropy_exchanges_abandoned_total",
                    s.anti_entropy_exchanges_abandoned,
                ),
                ("triarch_tombstones_collected_total", s.tombstones_collected),
                ("triarch_move_keys_received_total", s.move_keys_received),
                (
                    "triarch_hints_dropped_owner_left_total",
                    s.hints_dropped_owner_left,
                ),
            ];
            for (name, value) in counters {
                counter!(name, "keyspace" => ks.clone()).absolute(value);
            }
            gauge!("triarch_hints_pending", "keyspace" => ks.clone()).set(s.hints_pending as f64);
            self.stats_seen.insert(ks.clone(), s.clone());
        }
    }
}

/// Publishes each primary-backup group's Raft state on this node: term, commit and applied
/// indexes, whether this node leads, and (on the leader) each follower's lag in entries; and
/// the engine's counters.
pub fn publish_primary<S: Storage>(node: &Node<S>) {
    for name in node.primary().groups() {
        let Some(g) = node.primary().info(name) else {
            continue;
        };
        let ks = name.to_string();
        gauge!("triarch_raft_term", "keyspace" => ks.clone()).set(g.term.0 as f64);
        gauge!("triarch_raft_commit_index", "keyspace" => ks.clone()).set(g.commit_index.0 as f64);
        gauge!("triarch_raft_applied_index", "keyspace" => ks.clone())
            .set(g.applied_index.0 as f64);
        let leading = g.leader == Some(node.id());
        gauge!("triarch_raft_is_leader", "keyspace" => ks.clone())
            .set(f64::from(u8::from(leading)));
        for (follower, _, lag) in &g.followers {
            gauge!("triarch_raft_follower_lag_entries", "keyspace" => ks.clone(), "follower" => follower.to_string())
                .set(*lag as f64);
        }
    }
    for (name, value) in primary_counters(node) {
        counter!(format!("triarch_primary_{name}_total")).absolute(value);
    }
}

/// The primary-backup engine's counters, by short name: `/metrics` publishes each as
/// `triarch_primary_<name>_total`, `INFO` as `<name>:<value>`.
pub fn primary_counters<S: Storage>(node: &Node<S>) -> Vec<(&'static str, u64)> {
    let s = node.primary().stats();
    vec![
        ("proposals", s.proposals),
        ("reads", s.reads),
        ("fresh_reads", s.fresh_reads),
        ("forwards_sent", s.forwards_sent),
        ("forwards_served", s.forwards_served),
        ("redirects", s.not_leader),
        ("timeouts", s.timeouts),
        ("duplicates", s.duplicates),
        ("transactions_aborted", s.aborted),
        ("snapshots_restored", s.snapshots_restored),
        ("compactions", s.compactions),
    ]
}

/// Every multi-leader keyspace's state on this node (`wall_ms` dates the lag), with the names
/// of the regions its leader ships to.
pub fn multileader_infos<S: Storage>(node: &Node<S>, wall_ms: u64) -> Vec<MultiLeaderInfo> {
    let ml = node.multileader();
    let others: Vec<String> = ml
        .regions()
        .names()
        .filter(|r| *r != ml.region())
        .map(str::to_string)
        .collect();
    ml.keyspaces()
        .filter_map(|k| ml.info(node.storage(), k, wall_ms))
        .map(|info| MultiLeaderInfo {
            leads: info
                .group
                .as_ref()
                .is_some_and(|g| g.leader == Some(node.id())),
            info,
            others: others.clone(),
        })
        .collect()
}

/// A multi-leader keyspace as this node sees it, for INFO and `/metrics`.
#[derive(Clone, Debug)]
pub struct MultiLeaderInfo {
    pub info: triarch_multileader::engine::KeyspaceInfo,
    /// Whether this node leads its region's group (then `info.links` holds the lag).
    pub leads: bool,
    /// The other regions.
    pub others: Vec<String>,
}

/// Publishes the multi-leader counters: the region's (replicated, so every voter of the
/// region shows the same figures), the shipping lag per region pair (set by the source
/// region's leader; a node that does not lead sets its own series to 0, so that `max` over the
/// nodes is the lag) and the node's shipping counters.
pub fn publish_multileader(infos: &[MultiLeaderInfo], stats: MultiLeaderStats) {
    for ml in infos {
        let info = &ml.info;
        let (ks, region) = (info.keyspace.clone(), info.region.clone());
        let c = &info.counters;
        let counters = [
            ("triarch_multileader_writes_total", c.writes),
            ("triarch_multileader_folded_total", c.folded),
            ("triarch_multileader_conflicts_total", c.conflicts),
            ("triarch_multileader_merged_total", c.merged),
            ("triarch_multileader_lww_discarded_total", c.lww_discarded),
            ("triarch_multileader_duplicates_total", c.duplicates),
            ("triarch_multileader_absorbed_total", c.absorbed),
        ];
        for (name, value) in counters {
            counter!(name, "keyspace" => ks.clone(), "region" => region.clone()).absolute(value);
        }
        gauge!("triarch_multileader_change_log_last", "keyspace" => ks.clone(), "region" => region.clone())
            .set(c.last as f64);
        gauge!("triarch_multileader_change_log_entries", "keyspace" => ks.clone(), "region" => region.clone())
            .set(c.last.saturating_sub(c.trimmed) as f64);
        gauge!("triarch_multileader_is_leader", "keyspace" => ks.clone(), "region" => region.clone())
            .set(f64::from(u8::from(ml.leads)));
        for to in &ml.others {
            let link = info.links.iter().find(|l| &l.to == to).filter(|_| ml.leads);
            let (entries, ms) = link.map_or((0, 0), |l| (l.lag_entries, l.lag_ms));
            let labels = [
                ("keyspace", ks.clone()),
                ("from", region.clone()),
                ("to", to.clone()),
            ];
            gauge!("triarch_multileader_replication_lag_entries", &labels).set(entries as f64);
            gauge!("triarch_multileader_replication_lag_ms", &labels).set(ms as f64);
        }
    }
    let shipping = [
        ("triarch_multileader_ships_sent_total", stats.ships_sent),
        ("triarch_multileader_changes_sent_total", stats.changes_sent),
        (
            "triarch_multileader_ships_received_total",
            stats.ships_received,
        ),
        ("triarch_multileader_ship_retries_total", stats.ship_retries),
        ("triarch_multileader_trims_total", stats.trims),
        (
            "triarch_multileader_transfer_pages_total",
            stats.transfer_pages,
        ),
    ];
    for (name, value) in shipping {
        counter!(name).absolute(value);
    }
}

pub fn record_sync(elapsed: Duration, batch_outputs: usize) {
    histogram!("triarch_sync_duration_seconds").record(elapsed.as_secs_f64());
    histogram!("triarch_sync_batch_outputs").record(batch_outputs as f64);
}

/// The failure detector's view of each peer (the same as INFO's `peer_<id>_health`):
/// whether it is suspected now, requests sent to it since it was last heard from, and how many
/// times it became suspected since this node started.
pub fn publish_peer_health<S: Storage>(node: &Node<S>) {
    for (peer, h) in node.peer_health() {
        let peer = peer.to_string();
        let suspected = h.suspected_since.is_some();
        gauge!("triarch_peer_suspected", "peer" => peer.clone())
            .set(f64::from(u8::from(suspected)));
        gauge!("triarch_peer_unanswered_requests", "peer" => peer.clone()).set(h.unanswered as f64);
        counter!("triarch_peer_suspicions_total", "peer" => peer).absolute(h.suspicions);
    }
}

pub fn peer_link(peer: NodeId, up: bool) {
    gauge!("triarch_peer_connected", "peer" => peer.to_string()).set(if up { 1.0 } else { 0.0 });
}

pub fn peer_batch_dropped(peer: NodeId) {
    counter!("triarch_peer_batches_dropped_total", "peer" => peer.to_string()).increment(1);
}
