//! The text of the RESP `INFO` command.

use crate::core::Snapshot;
use crate::server::Shared;
use std::fmt::Write;

pub fn render_info(shared: &Shared, snapshot: Option<&Snapshot>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Server\r");
    let _ = writeln!(s, "triarch_version:{}\r", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(s, "redis_version:7.2.0\r");
    let _ = writeln!(s, "node_id:{}\r", shared.node_id.0);
    let _ = writeln!(s, "region:{}\r", shared.region);
    let _ = writeln!(s, "process_id:{}\r", std::process::id());
    let _ = writeln!(
        s,
        "uptime_in_seconds:{}\r",
        shared.started.elapsed().as_secs()
    );
    let _ = writeln!(s, "\r\n# Cluster\r");
    let _ = writeln!(s, "members:{}\r", shared.members.len());
    for m in &shared.members {
        if m.id == shared.node_id.0 {
            continue;
        }
        let up = shared.peers.is_connected(triarch_core::NodeId(m.id));
        let _ = writeln!(
            s,
            "peer_n{}:addr={},region={},link={}\r",
            m.id,
            m.peer_addr,
            m.region,
            if up { "up" } else { "down" }
        );
    }
    if let Some(snap) = snapshot {
        for (peer, health) in &snap.peer_health {
            let _ = writeln!(s, "peer_{peer}_health:{health}\r");
        }
        let _ = writeln!(s, "\r\n# Core\r");
        let _ = writeln!(s, "in_flight_operations:{}\r", snap.in_flight);
        let _ = writeln!(s, "batches:{}\r", snap.batches);
        let _ = writeln!(s, "syncs:{}\r", snap.syncs);
        let _ = writeln!(s, "\r\n# Keyspaces\r");
        for k in &snap.keyspaces {
            if k.model == triarch_core::Model::PrimaryBackup {
                render_group(&mut s, k, snap.primary.get(&k.name));
                continue;
            }
            let st = snap.leaderless.get(&k.name).cloned().unwrap_or_default();
            let _ = writeln!(
                s,
                "keyspace_{}:model={},n={},r={},w={},merge={},reads={},writes={},read_repairs={},quorum_failures={},lww_discarded={},write_restamps={},siblings_created={},siblings_resolved={},forwarded={},hinted_writes={},hints_pending={},hints_delivered={},anti_entropy_keys_repaired={},tombstones_collected={}\r",
                k.name,
                k.model,
                k.n,
                k.r,
                k.w,
                k.merge,
                st.reads,
                st.writes,
                st.read_repairs,
                st.quorum_failures,
                st.lww_discarded,
                st.write_restamps,
                st.siblings_created,
                st.siblings_resolved,
                st.forwarded,
                st.hinted_writes,
                st.hints_pending,
                st.hints_delivered,
                st.anti_entropy_keys_repaired,
                st.tombstones_collected
            );
        }
        if !snap.primary.is_empty() {
            let _ = writeln!(s, "\r\n# Primary-backup\r");
            for (name, value) in &snap.primary_counters {
                let _ = writeln!(s, "primary_{name}:{value}\r");
            }
        }
    }
    s
}

/// A primary-backup keyspace's line: its settings and this node's view of its Raft group
/// (`role=none` on a node that is not one of its voters). On the leader, `lag_<node>` is each
/// follower's lag in log entries.
fn render_group(
    s: &mut String,
    k: &triarch_core::KeyspaceConfig,
    group: Option<&triarch_node::GroupInfo>,
) {
    let _ = write!(s, "keyspace_{}:model={},n={}", k.name, k.model, k.n);
    match group {
        Some(g) => {
            let voters: Vec<String> = g.voters.iter().map(|v| v.to_string()).collect();
            let _ = write!(
                s,
                ",role={},leader={},term={},commit_index={},applied_index={},last_index={},snapshot_index={},voters={}",
                format!("{:?}", g.role).to_ascii_lowercase(),
                g.leader
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "none".into()),
                g.term.0,
                g.commit_index.0,
                g.applied_index.0,
                g.last_index.0,
                g.snapshot_index.0,
                voters.join(";"),
            );
            for (follower, _, lag) in &g.followers {
                let _ = write!(s, ",lag_{follower}={lag}");
            }
        }
        None => {
            let _ = write!(s, ",role=none");
        }
    }
    let _ = writeln!(s, "\r");
}
