//! The consistent-hash ring and preference lists (Dynamo §4.2–4.3).
//!
//! Each node owns `vnodes_per_node` points on a 64-bit ring; a key hashes to a point and its
//! preference list is the first N *distinct* nodes met walking clockwise from there. Virtual nodes
//! spread load evenly and move only ~1/n of the keys when membership changes. Positions come from
//! [`stable_hash64`], which never changes, so placement survives upgrades.

use triarch_core::NodeId;
use triarch_core::hash::{mix64, stable_hash64};

/// Points per node: enough for an even spread on small clusters (the standard deviation of load
/// falls roughly with 1/sqrt(vnodes)), few enough that building the ring is instant.
pub const VNODES_PER_NODE_DEFAULT: usize = 64;

#[derive(Clone, Debug)]
pub struct Ring {
    /// (position, owner), sorted by position.
    points: Vec<(u64, NodeId)>,
    nodes: Vec<NodeId>,
}

impl Ring {
    pub fn new(nodes: &[NodeId], vnodes_per_node: usize) -> Self {
        assert!(
            vnodes_per_node > 0,
            "a ring needs at least one point per node"
        );
        let mut nodes = nodes.to_vec();
        nodes.sort();
        nodes.dedup();
        let mut points = Vec::with_capacity(nodes.len() * vnodes_per_node);
        for &node in &nodes {
            for v in 0..vnodes_per_node as u64 {
                points.push((
                    mix64((u64::from(node.0) << 32) ^ v ^ 0x7472_6961_7263_6821),
                    node,
                ));
            }
        }
        // Ties between positions are astronomically unlikely; sorting by owner too keeps the
        // order total and therefore deterministic regardless.
        points.sort();
        Ring { points, nodes }
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The ring position of `key` in keyspace `keyspace`. Keyspaces hash apart so that two
    /// keyspaces' hot keys do not land on the same nodes.
    pub fn position(keyspace: &str, key: &[u8]) -> u64 {
        let mut buf = Vec::with_capacity(keyspace.len() + 1 + key.len());
        buf.extend_from_slice(keyspace.as_bytes());
        buf.push(0);
        buf.extend_from_slice(key);
        stable_hash64(&buf)
    }

    /// The first `n` distinct nodes clockwise from `position` (fewer if the ring has fewer).
    pub fn preference_list(&self, position: u64, n: usize) -> Vec<NodeId> {
        let start = self.points.partition_point(|(p, _)| *p < position);
        self.preference_list_from(start, n)
    }

    /// The first `n` distinct nodes met walking clockwise from point `start`.
    fn preference_list_from(&self, start: usize, n: usize) -> Vec<NodeId> {
        let want = n.min(self.nodes.len());
        let mut out = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        for i in 0..self.points.len() {
            let (_, node) = self.points[(start + i) % self.points.len()];
            if !out.contains(&node) {
                out.push(node);
                if out.len() == want {
                    break;
                }
            }
        }
        assert_eq!(out.len(), want, "a preference list holds N distinct nodes");
        out
    }
}

/// The ring cut into arcs for one replication factor N (the ranges of anti-entropy).
///
/// Every key between two consecutive points of the ring has the same preference list, so the
/// same replica set; the keys of all the arcs that share one *set* of N nodes are held by exactly
/// those N nodes, and are what those nodes compare with each other ([`crate::anti_entropy`]).
/// With V points per node there are at most V x nodes arcs but far fewer distinct sets (5 nodes,
/// N = 3: 10 sets, each node in 6 of them).
#[derive(Clone, Debug)]
pub struct ReplicaSets {
    /// Each arc's last position: the ring's points, sorted. Arc `i` holds the positions in
    /// `(ends[i - 1], ends[i]]`; arc 0 also those above the last point (the ring wraps).
    ends: Vec<u64>,
    /// The set each arc's keys belong to (an index into `sets`).
    set_of_arc: Vec<u32>,
    /// The distinct replica sets, each sorted by node id, in order of first appearance.
    sets: Vec<Vec<NodeId>>,
}

impl Ring {
    /// The replica sets of replication factor `n` (at least 1), and which arc maps to which.
    pub fn replica_sets(&self, n: usize) -> ReplicaSets {
        assert!(n >= 1, "a replication factor is at least 1");
        let mut sets: Vec<Vec<NodeId>> = Vec::new();
        let mut index: std::collections::BTreeMap<Vec<NodeId>, u32> = Default::default();
        let mut set_of_arc = Vec::with_capacity(self.points.len());
        for start in 0..self.points.len() {
            let mut set = self.preference_list_from(start, n);
            set.sort();
            let i = *index.entry(set.clone()).or_insert_with(|| {
                sets.push(set);
                (sets.len() - 1) as u32
            });
            set_of_arc.push(i);
        }
        ReplicaSets {
            ends: self.points.iter().map(|(p, _)| *p).collect(),
            set_of_arc,
            sets,
        }
    }
}

impl ReplicaSets {
    /// The replica set (an index) of the key at ring `position`.
    pub fn set_of(&self, position: u64) -> usize {
        let arc = self.ends.partition_point(|e| *e < position) % self.ends.len();
        self.set_of_arc[arc] as usize
    }

    /// The nodes of set `set`, sorted.
    pub fn nodes(&self, set: usize) -> &[NodeId] {
        &self.sets[set]
    }

    /// The index of the set holding exactly `nodes` (sorted), if it is one.
    pub fn find(&self, nodes: &[NodeId]) -> Option<usize> {
        self.sets.iter().position(|s| s == nodes)
    }

    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The sets `node` belongs to, in index order.
    pub fn sets_of(&self, node: NodeId) -> Vec<usize> {
        (0..self.sets.len())
            .filter(|&s| self.sets[s].contains(&node))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ids(n: u32) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    #[test]
    fn preference_lists_hold_n_distinct_nodes() {
        let ring = Ring::new(&ids(5), VNODES_PER_NODE_DEFAULT);
        for k in 0..1000u32 {
            let list = ring.preference_list(Ring::position("ks", &k.to_be_bytes()), 3);
            assert_eq!(list.len(), 3);
            let mut d = list.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3, "{list:?}");
        }
        assert_eq!(
            ring.preference_list(0, 9).len(),
            5,
            "capped at the ring's size"
        );
    }

    #[test]
    fn load_is_spread_evenly() {
        let ring = Ring::new(&ids(5), VNODES_PER_NODE_DEFAULT);
        let mut primaries: BTreeMap<NodeId, u32> = BTreeMap::new();
        let keys = 50_000u32;
        for k in 0..keys {
            let first = ring.preference_list(Ring::position("ks", &k.to_be_bytes()), 1)[0];
            *primaries.entry(first).or_default() += 1;
        }
        let expected = keys / 5;
        for (node, count) in primaries {
            assert!(
                count > expected * 6 / 10 && count < expected * 14 / 10,
                "{node} owns {count} of {keys} keys (expected about {expected})"
            );
        }
    }

    #[test]
    fn adding_a_node_moves_only_its_share_of_keys() {
        let before = Ring::new(&ids(4), VNODES_PER_NODE_DEFAULT);
        let after = Ring::new(&ids(5), VNODES_PER_NODE_DEFAULT);
        let keys = 20_000u32;
        let moved = (0..keys)
            .filter(|k| {
                let p = Ring::position("ks", &k.to_be_bytes());
                before.preference_list(p, 1) != after.preference_list(p, 1)
            })
            .count() as u32;
        // Ideal is 1/5 of the keys; everything that moved must have moved to the new node.
        assert!(moved < keys * 3 / 10, "{moved} of {keys} keys moved");
    }

    #[test]
    fn replica_sets_agree_with_preference_lists() {
        let ring = Ring::new(&ids(5), VNODES_PER_NODE_DEFAULT);
        for n in 1..=5 {
            let sets = ring.replica_sets(n);
            let mut probes: Vec<u64> = (0..5_000u32)
                .map(|k| Ring::position("ks", &k.to_be_bytes()))
                .collect();
            // The points themselves, either side of them, and the ends of the ring.
            for &(p, _) in &ring.points {
                probes.extend([p, p.wrapping_add(1), p.wrapping_sub(1)]);
            }
            probes.extend([0, u64::MAX]);
            for position in probes {
                let mut expected = ring.preference_list(position, n);
                expected.sort();
                assert_eq!(sets.nodes(sets.set_of(position)), expected.as_slice());
            }
            for set in 0..sets.len() {
                assert_eq!(sets.find(sets.nodes(set)), Some(set));
            }
        }
        // 5 nodes, N = 3: every 3-subset is a set (10 of them), each node in 6.
        let sets = ring.replica_sets(3);
        assert_eq!(sets.len(), 10);
        assert_eq!(sets.sets_of(NodeId(1)).len(), 6);
    }

    #[test]
    fn placement_is_pinned() {
        // If this fails, upgraded nodes would look for existing keys on the wrong replicas.
        let ring = Ring::new(&ids(5), VNODES_PER_NODE_DEFAULT);
        let list = ring.preference_list(Ring::position("default", b"k"), 3);
        assert_eq!(list, PINNED);
    }
    const PINNED: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(4)];
}
