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
        let want = n.min(self.nodes.len());
        let mut out = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let start = self.points.partition_point(|(p, _)| *p < position);
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
    fn placement_is_pinned() {
        // If this fails, upgraded nodes would look for existing keys on the wrong replicas.
        let ring = Ring::new(&ids(5), VNODES_PER_NODE_DEFAULT);
        let list = ring.preference_list(Ring::position("default", b"k"), 3);
        assert_eq!(list, PINNED);
    }
    const PINNED: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(4)];
}
