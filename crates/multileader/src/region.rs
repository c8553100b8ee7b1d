//! Regions: which nodes form each region, each region's name as an actor of causal metadata,
//! and the Raft group that runs one region of a keyspace.

use crate::machine::RegionMachine;
use std::collections::BTreeMap;
use std::sync::Arc;
use triarch_core::causal::ActorId;
use triarch_core::hash::stable_hash64;
use triarch_core::{KeyspaceConfig, NodeId};
use triarch_primary::engine::{GroupSpec, ranked};

/// The cluster's regions: every member's region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regions {
    members: BTreeMap<String, Vec<NodeId>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    #[error("regions {0:?} and {1:?} have the same actor id; rename one")]
    ActorCollision(String, String),
    #[error("region name {0:?} must be 1 to 32 characters of letters, digits, '_' or '-'")]
    BadName(String),
}

impl Regions {
    /// From `(node, region)` pairs.
    pub fn new(
        members: impl IntoIterator<Item = (NodeId, String)>,
    ) -> Result<Regions, RegionError> {
        let mut by_region: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
        for (node, region) in members {
            by_region.entry(region).or_default().push(node);
        }
        let mut actors: BTreeMap<ActorId, &str> = BTreeMap::new();
        for (name, nodes) in &mut by_region {
            if !triarch_core::config::is_region_name(name) {
                return Err(RegionError::BadName(name.clone()));
            }
            if let Some(other) = actors.insert(actor_of(name), name) {
                return Err(RegionError::ActorCollision(other.to_string(), name.clone()));
            }
            nodes.sort();
        }
        Ok(Regions { members: by_region })
    }

    /// The region names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(|r| r.as_str())
    }

    /// The members of `region` (empty for an unknown region).
    pub fn members(&self, region: &str) -> &[NodeId] {
        self.members.get(region).map_or(&[], |m| m.as_slice())
    }

    /// The region of `node`.
    pub fn region_of(&self, node: NodeId) -> Option<&str> {
        self.members
            .iter()
            .find(|(_, nodes)| nodes.contains(&node))
            .map(|(r, _)| r.as_str())
    }

    /// The region whose actor id is `actor`.
    pub fn by_actor(&self, actor: ActorId) -> Option<&str> {
        self.names().find(|r| actor_of(r) == actor)
    }
}

/// A region as the actor of its writes' dots: a stable hash of its name, so that every node
/// and every restart agrees without coordination ([`Regions::new`] refuses two regions that
/// collide).
pub fn actor_of(region: &str) -> ActorId {
    ActorId(stable_hash64(region.as_bytes()) as u32)
}

/// The name of keyspace `keyspace`'s group in `region` (keyspace names have no `.`).
pub fn group_name(keyspace: &str, region: &str) -> String {
    format!("{keyspace}.{region}")
}

/// The Raft group of `keyspace` in `region`: `n` of the region's members (all of them when the
/// region is smaller), ranked by rendezvous hashing on the group's name.
pub fn region_group(
    keyspace: &KeyspaceConfig,
    regions: &Regions,
    region: &str,
    record_bytes_max: usize,
) -> GroupSpec {
    let name = group_name(&keyspace.name, region);
    let ranked = ranked(&name, regions.members(region));
    let voters = ranked
        .iter()
        .copied()
        .take(usize::from(keyspace.n).max(1))
        .collect();
    GroupSpec {
        preferred: ranked.first().copied().unwrap_or(NodeId(0)),
        voters,
        extension: Some(Arc::new(RegionMachine {
            policy: keyspace.merge,
            region: actor_of(region),
            record_bytes_max,
        })),
        lease_reads: false,
        moved: false,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Regions {
        Regions::new((1..=6).map(|i| (NodeId(i), format!("r{}", (i - 1) % 3 + 1)))).unwrap()
    }

    #[test]
    fn members_group_by_region_and_groups_stay_inside_their_region() {
        let r = regions();
        assert_eq!(r.names().collect::<Vec<_>>(), ["r1", "r2", "r3"]);
        assert_eq!(r.members("r2"), &[NodeId(2), NodeId(5)]);
        assert_eq!(r.region_of(NodeId(6)), Some("r3"));
        assert_eq!(r.by_actor(actor_of("r3")), Some("r3"));
        let mut ks = KeyspaceConfig::leaderless("cart");
        ks.n = 3;
        let g = region_group(&ks, &r, "r2", 1024);
        assert_eq!(g.name, "cart.r2");
        assert_eq!(
            g.voters.iter().copied().collect::<Vec<_>>(),
            [NodeId(2), NodeId(5)]
        );
        assert!(g.voters.contains(&g.preferred));
    }

    #[test]
    fn bad_region_names_are_refused() {
        assert!(matches!(
            Regions::new([(NodeId(1), "eu west".to_string())]),
            Err(RegionError::BadName(_))
        ));
        assert!(matches!(
            Regions::new([(NodeId(1), String::new())]),
            Err(RegionError::BadName(_))
        ));
    }
}
