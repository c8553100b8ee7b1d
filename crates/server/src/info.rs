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
        // The metadata group (the keyspace catalog's authority), as this node sees it.
        let _ = write!(s, "metadata_group:commit_index=");
        match &snap.meta {
            Some(g) => {
                let _ = write!(s, "{}", g.commit_index.0);
            }
            None => {
                let _ = write!(s, "none");
            }
        }
        render_role(&mut s, snap.meta.as_ref());
        let _ = writeln!(s, "\r");
        render_membership(&mut s, &snap.membership);
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
            if k.model == triarch_core::Model::MultiLeader {
                let ml = snap.multileader.iter().find(|m| m.info.keyspace == k.name);
                let _ = write!(
                    s,
                    "keyspace_{}:model={},n={},merge={}",
                    k.name, k.model, k.n, k.merge
                );
                if let Some(ml) = ml {
                    let _ = write!(s, ",region={}", ml.info.region);
                    render_role(&mut s, ml.info.group.as_ref());
                }
                let _ = writeln!(s, "\r");
                continue;
            }
            let st = snap.leaderless.get(&k.name).cloned().unwrap_or_default();
            render_leaderless(&mut s, k, &st);
        }
        if !snap.primary.is_empty() {
            let _ = writeln!(s, "\r\n# Primary-backup\r");
            for (name, value) in &snap.primary_counters {
                let _ = writeln!(s, "primary_{name}:{value}\r");
            }
        }
        if !snap.multileader.is_empty() {
            render_multileader(&mut s, snap);
        }
    }
    s
}

/// A leaderless keyspace's line: its settings (`quorum`: strict or sloppy) and this node's
/// counters for it.
fn render_leaderless(
    s: &mut String,
    k: &triarch_core::KeyspaceConfig,
    st: &triarch_node::KeyspaceStats,
) {
    let _ = writeln!(
        s,
        "keyspace_{}:model={},n={},r={},w={},merge={},quorum={},reads={},writes={},read_repairs={},quorum_failures={},lww_discarded={},clock_ahead_refused={},clock_ahead_copied={},write_restamps={},siblings_created={},siblings_resolved={},forwarded={},hinted_writes={},hints_stored={},hints_pending={},hints_delivered={},anti_entropy_keys_repaired={},tombstones_collected={},move_keys_received={}\r",
        k.name,
        k.model,
        k.n,
        k.r,
        k.w,
        k.merge,
        k.quorum.as_str(),
        st.reads,
        st.writes,
        st.read_repairs,
        st.quorum_failures,
        st.lww_discarded,
        st.clock_ahead_refused,
        st.clock_ahead_copied,
        st.write_restamps,
        st.siblings_created,
        st.siblings_resolved,
        st.forwarded,
        st.hinted_writes,
        st.hints_stored,
        st.hints_pending,
        st.hints_delivered,
        st.anti_entropy_keys_repaired,
        st.tombstones_collected,
        st.move_keys_received
    );
}

/// A primary-backup keyspace's line: its settings (`read`: its read policy) and this node's
/// view of its Raft group (`role=none` on a node that is not one of its voters). On the leader,
/// `lag_<node>` is each follower's lag in log entries.
fn render_group(
    s: &mut String,
    k: &triarch_core::KeyspaceConfig,
    group: Option<&triarch_node::GroupInfo>,
) {
    let _ = write!(
        s,
        "keyspace_{}:model={},n={},read={}",
        k.name, k.model, k.n, k.read
    );
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

/// `role=..,leader=..,term=..,voters=..` of a region group (`role=none` on a node that is not
/// one of its voters).
/// The membership as decided (`membership:`), and this node's handoff in a move in progress
/// (`membership_handoff:`).
fn render_membership(s: &mut String, status: &triarch_node::meta::MembershipStatus) {
    let m = &status.membership;
    let list = |ids: &[triarch_core::NodeId]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(";")
    };
    let moving = match &m.moving {
        None => "none".to_string(),
        Some(mv) => match mv.change {
            triarch_node::meta::Change::Join(id) => format!("join:{id}"),
            triarch_node::meta::Change::Decommission(id) => format!("decommission:{id}"),
        },
    };
    let phase = match &m.moving {
        None => "none",
        Some(_) if m.handing_off() => "handoff",
        Some(_) => "begin",
    };
    let _ = writeln!(
        s,
        "membership:index={},ring={},left={},moving={moving},phase={phase}\r",
        m.index,
        list(&m.ring),
        list(&m.left),
    );
    if let Some(me) = &status.this_node {
        let sent: u64 = me.destinations.values().map(|d| d.keys_sent).sum();
        let bytes: u64 = me.destinations.values().map(|d| d.bytes_sent).sum();
        let _ = writeln!(
            s,
            "membership_handoff:keys_walked={},keys_sent={sent},bytes_sent={bytes},done={}\r",
            me.keys_walked, me.handoff_done
        );
    }
}

fn render_role(s: &mut String, group: Option<&triarch_node::GroupInfo>) {
    match group {
        Some(g) => {
            let voters: Vec<String> = g.voters.iter().map(|v| v.to_string()).collect();
            let _ = write!(
                s,
                ",role={},leader={},term={},voters={}",
                format!("{:?}", g.role).to_ascii_lowercase(),
                g.leader
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "none".into()),
                g.term.0,
                voters.join(";"),
            );
        }
        None => {
            let _ = write!(s, ",role=none");
        }
    }
}

/// `# MultiLeader`: the node's shipping counters; per keyspace, its region group as seen here
/// and the region's counters (replicated: every voter of the region shows the same); on the
/// region's leader, per destination region, what the destination acknowledged and how far
/// behind it is (`multileader_<keyspace>_to_<region>`).
fn render_multileader(s: &mut String, snap: &Snapshot) {
    let st = &snap.multileader_stats;
    let _ = writeln!(s, "\r\n# MultiLeader\r");
    let _ = writeln!(
        s,
        "multileader_ships_sent:{}\r\nmultileader_changes_sent:{}\r\nmultileader_ships_received:{}\r\nmultileader_ship_retries:{}\r\nmultileader_trims:{}\r\nmultileader_transfer_pages:{}\r",
        st.ships_sent,
        st.changes_sent,
        st.ships_received,
        st.ship_retries,
        st.trims,
        st.transfer_pages
    );
    for ml in &snap.multileader {
        let info = &ml.info;
        let c = &info.counters;
        let _ = write!(s, "multileader_{}:region={}", info.keyspace, info.region);
        render_role(s, info.group.as_ref());
        let _ = writeln!(
            s,
            ",last={},trimmed={},writes={},folded={},conflicts={},merged={},lww_discarded={},duplicates={},absorbed={}\r",
            c.last,
            c.trimmed,
            c.writes,
            c.folded,
            c.conflicts,
            c.merged,
            c.lww_discarded,
            c.duplicates,
            c.absorbed
        );
        if ml.leads {
            for link in &info.links {
                let _ = writeln!(
                    s,
                    "multileader_{}_to_{}:from={},to={},acked={},lag_entries={},lag_ms={}\r",
                    info.keyspace,
                    link.to,
                    info.region,
                    link.to,
                    link.acked,
                    link.lag_entries,
                    link.lag_ms
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triarch_core::{KeyspaceConfig, Model, QuorumMode, ReadPolicy};

    #[test]
    fn keyspace_lines_show_read_policies_quorum_modes_and_clock_counters() {
        let mut prefs = KeyspaceConfig::leaderless("prefs");
        prefs.quorum = QuorumMode::Sloppy;
        let stats = triarch_node::KeyspaceStats {
            lww_discarded: 1,
            clock_ahead_refused: 2,
            clock_ahead_copied: 3,
            ..Default::default()
        };
        let mut s = String::new();
        render_leaderless(&mut s, &prefs, &stats);
        assert!(
            s.starts_with("keyspace_prefs:model=leaderless,n=3,r=2,w=2,merge=lww,quorum=sloppy,"),
            "{s}"
        );
        assert!(
            s.contains(",lww_discarded=1,clock_ahead_refused=2,clock_ahead_copied=3,"),
            "{s}"
        );
        let mut balance = KeyspaceConfig::with_defaults("balance", Model::PrimaryBackup, 3);
        balance.read = ReadPolicy::Bounded { max_lag_ms: 200 };
        let mut s = String::new();
        render_group(&mut s, &balance, None);
        assert_eq!(
            s,
            "keyspace_balance:model=primary-backup,n=3,read=bounded:200,role=none\r\n"
        );
    }
}
