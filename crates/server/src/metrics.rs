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
}

impl OpMetrics {
    pub fn label_for<S: Storage>(&mut self, node: &Node<S>, request: &Request) -> OpLabel {
        let (key, op) = match request {
            Request::Get { key, .. } => (Some(key), Op::Get),
            Request::Set { key, .. } => (Some(key), Op::Set),
            Request::Delete { key, .. } => (Some(key), Op::Delete),
            Request::Read { key, .. } => (Some(key), Op::Read),
            Request::Apply { key, .. } => (Some(key), Op::Apply),
            Request::Cas { key, .. } => (Some(key), Op::Cas),
            Request::Watch { keys } => (keys.first(), Op::Watch),
            Request::Exec { commands, .. } => (commands.iter().find_map(|c| c.key()), Op::Exec),
            Request::CreateKeyspace(_) | Request::ListKeyspaces | Request::KeyspaceInfo { .. } => {
                (None, Op::Admin)
            }
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
        observe_primary(node);
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
/// indexes, whether this node leads, and (on the leader) each follower's lag in entries.
fn observe_primary<S: Storage>(node: &Node<S>) {
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

pub fn record_sync(elapsed: Duration, batch_outputs: usize) {
    histogram!("triarch_sync_duration_seconds").record(elapsed.as_secs_f64());
    histogram!("triarch_sync_batch_outputs").record(batch_outputs as f64);
}

pub fn peer_link(peer: NodeId, up: bool) {
    gauge!("triarch_peer_connected", "peer" => peer.to_string()).set(if up { 1.0 } else { 0.0 });
}

pub fn peer_batch_dropped(peer: NodeId) {
    counter!("triarch_peer_batches_dropped_total", "peer" => peer.to_string()).increment(1);
}
