//! The simulated network between nodes: a latency distribution per directed link, loss,
//! duplication, and partitions expressed as a set of blocked directed links (so one-way
//! partitions are simply asymmetric sets).
//!
//! Clients are not on this network: a simulated client talks to its node as if co-located, so a
//! client operation's fate depends only on the cluster, which is what the checkers judge.

use crate::latency::{INTER_REGION_MS_MAX, INTER_REGION_MS_MIN, LatencyDistribution};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use triarch_core::{DetRng, NodeId};

/// A directed link `(from, to)`.
pub type Link = (NodeId, NodeId);

/// What a run's network looks like where the seed should not choose (the explorer's
/// `--latency` and `--region-ms`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    /// The distribution kind of every link: 0 constant, 1 uniform, 2 exponential, 3 log-normal
    /// ([`LatencyDistribution::random`]); `None`: drawn by the seed.
    pub kind: Option<u64>,
    /// Every region pair's base one-way latency (µs); `None`: drawn per pair by the seed,
    /// 20-60 ms.
    pub inter_region_micros: Option<u64>,
}

pub(crate) struct Network {
    links: BTreeMap<Link, LatencyDistribution>,
    /// With several regions: each region pair's base one-way latency (µs), by region index.
    region_pairs: BTreeMap<(u32, u32), u64>,
    blocked: BTreeSet<Link>,
    /// Loss and duplication outside fault windows (zero when the seed's options disable them).
    loss_baseline: f64,
    duplicate_baseline: f64,
    loss_probability: f64,
    duplicate_probability: f64,
    rng: DetRng,
}

impl Network {
    /// A network whose every link draws its own parameters from `rng`. One distribution kind is
    /// chosen for the whole seed so that each kind is exercised on its own by some seeds.
    #[cfg(test)]
    pub fn new(nodes: &[NodeId], rng: DetRng, loss_baseline: f64, duplicate_baseline: f64) -> Self {
        let regions = vec![0; nodes.len()];
        Network::with_regions(nodes, &regions, rng, loss_baseline, duplicate_baseline)
    }

    /// Like [`Network::new`] for nodes in regions (`regions[i]`: the region index of
    /// `nodes[i]`). With one region every link is drawn as [`Network::new`] draws it (the same
    /// draws from `rng`, so a seed's run does not change); with several, links inside a region
    /// are sub-millisecond ([`LatencyDistribution::inside_region`]) and links between two
    /// regions stay near the pair's base latency, drawn once per pair
    /// ([`LatencyDistribution::between_regions`]).
    pub fn with_regions(
        nodes: &[NodeId],
        regions: &[u32],
        rng: DetRng,
        loss_baseline: f64,
        duplicate_baseline: f64,
    ) -> Self {
        let spec = NetworkSpec::default();
        Network::described(
            nodes,
            regions,
            rng,
            loss_baseline,
            duplicate_baseline,
            &spec,
        )
    }

    /// Like [`Network::with_regions`], with the distribution kind and the inter-region base
    /// latency chosen by `spec` where it says (drawn from `rng` where it does not, the same
    /// draws as [`Network::with_regions`]). Added for [`crate::explore`].
    pub fn described(
        nodes: &[NodeId],
        regions: &[u32],
        mut rng: DetRng,
        loss_baseline: f64,
        duplicate_baseline: f64,
        spec: &NetworkSpec,
    ) -> Self {
        assert_eq!(nodes.len(), regions.len(), "one region per node");
        let kind = match spec.kind {
            Some(kind) => kind,
            None => rng.below(4),
        };
        let count = regions.iter().max().map_or(1, |r| r + 1);
        let mut region_pairs = BTreeMap::new();
        for a in 0..count {
            for b in a + 1..count {
                let base = match spec.inter_region_micros {
                    Some(base) => base,
                    None => rng.between(INTER_REGION_MS_MIN * 1_000, INTER_REGION_MS_MAX * 1_000),
                };
                region_pairs.insert((a, b), base);
            }
        }
        let mut links = BTreeMap::new();
        for (&from, &a) in nodes.iter().zip(regions) {
            for (&to, &b) in nodes.iter().zip(regions) {
                if from == to {
                    continue;
                }
                let latency = if count == 1 {
                    LatencyDistribution::random(kind, &mut rng)
                } else if a == b {
                    LatencyDistribution::inside_region(kind, &mut rng)
                } else {
                    let base = region_pairs[&(a.min(b), a.max(b))];
                    LatencyDistribution::between_regions(kind, base, &mut rng)
                };
                links.insert((from, to), latency);
            }
        }
        Network {
            links,
            region_pairs,
            blocked: BTreeSet::new(),
            loss_baseline,
            duplicate_baseline,
            loss_probability: loss_baseline,
            duplicate_probability: duplicate_baseline,
            rng,
        }
    }

    pub fn describe(&self) -> String {
        let kind = match self.links.values().next() {
            Some(LatencyDistribution::Constant { .. }) => "constant",
            Some(LatencyDistribution::Uniform { .. }) => "uniform",
            Some(LatencyDistribution::Exponential { .. }) => "exponential",
            Some(LatencyDistribution::LogNormal { .. }) => "log-normal",
            None => "none",
        };
        let pairs: Vec<String> = self
            .region_pairs
            .iter()
            .map(|((a, b), micros)| format!("r{}-r{} {} ms", a + 1, b + 1, micros / 1_000))
            .collect();
        let regions = if pairs.is_empty() {
            String::new()
        } else {
            format!(" (between regions: {})", pairs.join(", "))
        };
        format!(
            "{kind} latency{regions}, loss {:.3}, duplication {:.3}",
            self.loss_baseline, self.duplicate_baseline
        )
    }

    pub fn block(&mut self, links: impl IntoIterator<Item = Link>) {
        self.blocked.extend(links);
    }

    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    pub fn set_loss(&mut self, probability: f64) {
        assert!((0.0..=1.0).contains(&probability));
        self.loss_probability = probability;
    }

    /// Ends a fault window: every link open, loss and duplication back to the baseline.
    pub fn heal(&mut self) {
        self.blocked.clear();
        self.loss_probability = self.loss_baseline;
        self.duplicate_probability = self.duplicate_baseline;
    }

    /// The final heal: additionally a reliable network from now on. Read repair is the only
    /// convergence mechanism so far (there is no anti-entropy yet) and its messages are not
    /// acknowledged, so convergence can only be required of a network that stops losing them.
    pub fn make_reliable(&mut self) {
        self.loss_baseline = 0.0;
        self.duplicate_baseline = 0.0;
        self.heal();
    }

    /// The latencies of the copies of one message that will arrive: none (blocked or lost), one,
    /// or two (duplicated). Each copy draws its own latency, so a duplicate may arrive first.
    pub fn transmit(&mut self, from: NodeId, to: NodeId) -> [Option<Duration>; 2] {
        if self.is_blocked(from, to) || self.rng.chance(self.loss_probability) {
            return [None, None];
        }
        let link = self
            .links
            .get(&(from, to))
            .expect("a link between two members");
        let first = link.sample(&mut self.rng);
        let second = if self.rng.chance(self.duplicate_probability) {
            Some(link.sample(&mut self.rng))
        } else {
            None
        };
        [Some(first), second]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    #[test]
    fn blocked_links_are_directed_and_heal_reopens_them() {
        let mut net = Network::new(&ids(3), DetRng::seed_from_u64(1), 0.0, 0.0);
        net.block([(NodeId(1), NodeId(2))]);
        assert_eq!(net.transmit(NodeId(1), NodeId(2)), [None, None]);
        assert!(net.transmit(NodeId(2), NodeId(1))[0].is_some(), "one-way");
        net.heal();
        assert!(net.transmit(NodeId(1), NodeId(2))[0].is_some());
    }

    #[test]
    fn regions_are_near_inside_and_far_apart_and_one_region_draws_as_before() {
        let nodes = ids(6);
        let one = Network::new(&nodes, DetRng::seed_from_u64(4), 0.0, 0.0);
        let flat = Network::with_regions(&nodes, &[0; 6], DetRng::seed_from_u64(4), 0.0, 0.0);
        assert_eq!(one.links, flat.links);
        let regions = [0, 1, 2, 0, 1, 2];
        let mut net = Network::with_regions(&nodes, &regions, DetRng::seed_from_u64(4), 0.0, 0.0);
        assert_eq!(net.region_pairs.len(), 3);
        let near = net.transmit(NodeId(1), NodeId(4))[0].unwrap();
        let far = net.transmit(NodeId(1), NodeId(2))[0].unwrap();
        assert!(near < Duration::from_millis(5), "{near:?}");
        assert!(far > Duration::from_millis(10), "{far:?}");
        assert!(net.describe().contains("r1-r2"), "{}", net.describe());
    }

    #[test]
    fn loss_and_duplication_happen_at_their_rates() {
        let mut net = Network::new(&ids(2), DetRng::seed_from_u64(2), 0.25, 0.5);
        let (mut lost, mut duplicated) = (0, 0);
        for _ in 0..10_000 {
            match net.transmit(NodeId(1), NodeId(2)) {
                [None, _] => lost += 1,
                [Some(_), Some(_)] => duplicated += 1,
                [Some(_), None] => {}
            }
        }
        assert!((2_200..2_800).contains(&lost), "{lost}");
        assert!((3_400..4_100).contains(&duplicated), "{duplicated}");
        net.make_reliable();
        for _ in 0..1_000 {
            let copies = net.transmit(NodeId(1), NodeId(2));
            assert!(copies[0].is_some() && copies[1].is_none());
        }
    }
}
