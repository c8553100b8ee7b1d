//! The convergence checker: after the final heal, the settle period and a final round of reads of
//! every key through every node (whose read repair brings stale replicas up to date), every
//! replica in a key's preference list must hold the identical record, tombstones and timestamps
//! included. Replicas are read straight from their disks, not through the protocol, so a replica
//! that would answer differently from what it stores cannot hide.

use super::{CheckerResult, Violation, ViolationKind};
use std::collections::BTreeMap;
use triarch_core::NodeId;
use triarch_leaderless::record::Record;
use triarch_leaderless::state::State;

pub const NAME: &str = "convergence";

/// For each key, the record each of its replicas holds (`None`: the replica has none).
pub type ReplicaRecords = BTreeMap<u64, BTreeMap<NodeId, Option<Record>>>;

pub fn check(replicas: &ReplicaRecords) -> CheckerResult {
    let mut violations = Vec::new();
    for (&key, records) in replicas {
        let first = records.values().next();
        if first.is_some_and(|f| records.values().any(|r| r != f)) {
            let held: Vec<String> = records
                .iter()
                .map(|(node, r)| match r {
                    None => format!("{node}: none"),
                    Some(Record {
                        timestamp,
                        value: None,
                    }) => format!("{node}: tombstone @{timestamp}"),
                    Some(Record {
                        timestamp,
                        value: Some(v),
                    }) => format!("{node}: {:?} @{timestamp}", String::from_utf8_lossy(v)),
                })
                .collect();
            violations.push(Violation {
                kind: ViolationKind::Diverged,
                key,
                index: None,
                detail: format!("replicas differ after read repair: {}", held.join(", ")),
            });
        }
    }
    CheckerResult {
        checker: NAME,
        violations,
    }
}

/// For each key of a keyspace whose merge policy is a CRDT, the state each of its replicas
/// holds (`None`: the replica has none).
pub type ReplicaStates = BTreeMap<u64, BTreeMap<NodeId, Option<State>>>;

/// The same rule for merged states: after the final reads, every replica of a key holds the
/// identical state (CRDT states are canonical, so equal states are equal values: the same
/// members with the same dots and causal context, the same per-replica counts).
pub fn check_states(replicas: &ReplicaStates) -> CheckerResult {
    let mut violations = Vec::new();
    for (&key, states) in replicas {
        let first = states.values().next();
        if first.is_some_and(|f| states.values().any(|s| s != f)) {
            let held: Vec<String> = states
                .iter()
                .map(|(node, s)| match s {
                    None => format!("{node}: none"),
                    Some(s) => format!("{node}: {:?}", s.view()),
                })
                .collect();
            violations.push(Violation {
                kind: ViolationKind::Diverged,
                key,
                index: None,
                detail: format!("replicas differ after read repair: {}", held.join(", ")),
            });
        }
    }
    CheckerResult {
        checker: NAME,
        violations,
    }
}

/// Each primary-backup voter's data table (every row: records, sessions, applied index).
pub type ReplicaTables = BTreeMap<NodeId, Vec<(Vec<u8>, Vec<u8>)>>;

/// Primary-backup keyspaces: every voter applied the same log, so every voter's table must hold
/// the same rows once the network has been reliable long enough for commits to reach everyone.
/// `key_of` names the workload key of a row (for the report).
pub fn check_tables(
    tables: &ReplicaTables,
    key_of: impl Fn(&[u8]) -> Option<u64>,
) -> CheckerResult {
    let mut violations = Vec::new();
    let mut rows: BTreeMap<&[u8], BTreeMap<NodeId, &[u8]>> = BTreeMap::new();
    for (node, table) in tables {
        for (k, v) in table {
            rows.entry(k.as_slice())
                .or_default()
                .insert(*node, v.as_slice());
        }
    }
    for (row, held) in rows {
        let first = held.values().next().copied();
        if held.len() != tables.len() || held.values().any(|v| Some(*v) != first) {
            let shown: Vec<String> = tables
                .keys()
                .map(|node| match held.get(node) {
                    None => format!("{node}: none"),
                    Some(v) => format!("{node}: {v:?}"),
                })
                .collect();
            violations.push(Violation {
                kind: ViolationKind::Diverged,
                key: key_of(row).unwrap_or(u64::MAX),
                index: None,
                detail: format!(
                    "voters hold different rows under {:?}: {}",
                    String::from_utf8_lossy(row),
                    shown.join(", ")
                ),
            });
        }
    }
    CheckerResult {
        checker: NAME,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use triarch_core::HlcTimestamp;

    fn record(wall_ms: u64, value: &'static str) -> Option<Record> {
        Some(Record {
            timestamp: HlcTimestamp {
                wall_ms,
                logical: 0,
                node: NodeId(1),
            },
            value: Some(Bytes::from_static(value.as_bytes())),
        })
    }

    fn replicas(records: [Option<Record>; 3]) -> ReplicaRecords {
        let per_node = (1..=3).map(NodeId).zip(records).collect();
        BTreeMap::from([(0, per_node)])
    }

    #[test]
    fn identical_replicas_pass_including_a_key_nobody_wrote() {
        let mut all = replicas([record(5, "1"), record(5, "1"), record(5, "1")]);
        all.insert(1, (1..=3).map(|n| (NodeId(n), None)).collect());
        assert!(check(&all).is_ok());
    }

    #[test]
    fn a_replica_with_an_older_record_or_none_diverges() {
        let r = check(&replicas([record(5, "2"), record(4, "1"), record(5, "2")]));
        assert_eq!(r.violations.len(), 1);
        assert_eq!(r.violations[0].kind, ViolationKind::Diverged);
        assert!(
            r.violations[0].detail.contains("n2: \"1\""),
            "{}",
            r.violations[0]
        );
        assert!(!check(&replicas([record(5, "2"), record(5, "2"), None])).is_ok());
        // Same value under different timestamps is still divergence: the next write orders
        // differently against each.
        assert!(!check(&replicas([record(5, "2"), record(6, "2"), record(5, "2")])).is_ok());
        // A, B, A: every replica is compared, not only neighbours.
        assert!(!check(&replicas([record(5, "1"), record(6, "2"), record(5, "1")])).is_ok());
    }

    #[test]
    fn replicas_with_different_states_diverge_even_with_equal_values() {
        use triarch_core::causal::ActorId;
        use triarch_core::crdt::PnCounter;
        let counter = |parts: &[(u32, i64)]| {
            let mut c = PnCounter::new();
            for &(actor, amount) in parts {
                let _ = c.add(ActorId(actor), amount).unwrap();
            }
            Some(State::Counter(c))
        };
        let states = |s: [Option<State>; 3]| -> ReplicaStates {
            BTreeMap::from([(0, (1..=3).map(NodeId).zip(s).collect())])
        };
        let same = counter(&[(1, 2), (2, 3)]);
        assert!(check_states(&states([same.clone(), same.clone(), same.clone()])).is_ok());
        let r = check_states(&states([same.clone(), counter(&[(1, 2)]), same.clone()]));
        assert_eq!(r.violations[0].kind, ViolationKind::Diverged);
        // The same value (5) counted by different replicas is still a different state.
        assert!(!check_states(&states([same.clone(), counter(&[(1, 5)]), same])).is_ok());
        assert!(!check_states(&states([counter(&[(1, 1)]), None, counter(&[(1, 1)])])).is_ok());
    }

    #[test]
    fn voters_with_different_tables_diverge() {
        let row = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        let same: ReplicaTables = [1, 2, 3]
            .into_iter()
            .map(|n| (NodeId(n), vec![row("a", "1"), row("dk0", "x")]))
            .collect();
        let key_of = |r: &[u8]| (r == b"dk0").then_some(0);
        assert!(check_tables(&same, key_of).is_ok());
        let mut differ = same.clone();
        differ.get_mut(&NodeId(2)).unwrap()[1] = row("dk0", "y");
        let result = check_tables(&differ, key_of);
        assert_eq!(result.violations.len(), 1, "{result}");
        assert_eq!(result.violations[0].key, 0);
        let mut missing = same;
        missing.get_mut(&NodeId(3)).unwrap().pop();
        assert_eq!(check_tables(&missing, key_of).violations.len(), 1);
    }
}
