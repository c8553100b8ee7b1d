//! The nemesis: a seeded schedule of faults, in Jepsen's vocabulary.
//!
//! Time alternates between fault windows and healed windows (each 2 to 5 s of virtual time).
//! At the start of a fault window the nemesis picks one or two of the enabled faults and plans
//! them; at its end everything is healed: links reopen, loss returns to the baseline, crashed
//! nodes restart and clocks return to their baseline offsets. After the workload comes a final
//! heal, a settle period and the final reads (see the crate documentation).
//!
//! In a cluster of several regions ([`crate::RegionOptions`]) three more faults join them
//! ([`Fault::REGIONAL`]): one region cut off from the others, every region cut off from every
//! other, and a partition inside one region. The simulation records every window it carried out
//! ([`FaultWindow`]) for the checkers that need to know which links were cut when.
//!
//! The nemesis only *plans*: it returns `Action`s for the simulation to carry out, so its
//! choices depend on its own RNG stream alone, and a change in the workload does not change the
//! fault schedule of a seed.

use crate::network::Link;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;
use triarch_core::{DetRng, Instant, NodeId};

/// The faults the nemesis chooses among.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The nodes split into two random halves that cannot talk to each other.
    PartitionRandomHalves,
    /// One node cut off from all others.
    IsolateOne,
    /// Every node sees a majority, but no two nodes see the same majority.
    MajoritiesRing,
    /// Directed links blocked in one direction only: a node that can send but not receive, one
    /// that can receive but not send, or a random set of directed links.
    OneWay,
    /// A burst of 10-50% packet loss on every link.
    LossBurst,
    /// One node (sometimes two) crashes, losing every write not yet synced, and restarts later
    /// in the window over its disk. Half the crashes strike at the worst moment: while the node
    /// has a sync in flight, so that staged writes and held outputs are really lost.
    CrashRestart,
    /// One or two nodes' wall clocks jump by up to ±20 s (rarely ±1-2 min, past the hybrid
    /// logical clock's 60 s forward bound).
    ClockBump,
    /// One node's wall clock stops for the window (a stuck clock source): its hybrid logical
    /// clock keeps time with the logical counter alone.
    ClockFreeze,
    /// With several regions: one region cut off from every other (both ways); inside it, and
    /// between the others, every link works.
    RegionCut,
    /// With several regions: every region cut off from every other; inside each region every
    /// link works.
    RegionsApart,
    /// With several regions: a partition inside one region, its nodes split into two halves
    /// (links to other regions untouched).
    RegionSplit,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::PartitionRandomHalves,
        Fault::IsolateOne,
        Fault::MajoritiesRing,
        Fault::OneWay,
        Fault::LossBurst,
        Fault::CrashRestart,
        Fault::ClockBump,
        Fault::ClockFreeze,
    ];

    /// The faults that exist only in a cluster of several regions (never chosen otherwise, so
    /// that a single-region seed plans what it always planned).
    pub const REGIONAL: [Fault; 3] = [Fault::RegionCut, Fault::RegionsApart, Fault::RegionSplit];

    /// The faults that cut links between regions and nothing else.
    pub fn is_between_regions(self) -> bool {
        matches!(self, Fault::RegionCut | Fault::RegionsApart)
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::PartitionRandomHalves => "partition-random-halves",
            Fault::IsolateOne => "isolate-one",
            Fault::MajoritiesRing => "majorities-ring",
            Fault::OneWay => "one-way",
            Fault::LossBurst => "loss-burst",
            Fault::CrashRestart => "crash-restart",
            Fault::ClockBump => "clock-bump",
            Fault::ClockFreeze => "clock-freeze",
            Fault::RegionCut => "region-cut",
            Fault::RegionsApart => "regions-apart",
            Fault::RegionSplit => "region-split",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing the simulation must do to start a fault window.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    Block {
        fault: Fault,
        links: BTreeSet<Link>,
        description: String,
    },
    Loss(f64),
    Crash {
        node: NodeId,
        /// Wait for the node's next sync and crash before it completes, rather than now.
        mid_sync: bool,
        restart_after: Duration,
    },
    BumpClock {
        node: NodeId,
        delta_ms: i64,
    },
    FreezeClock {
        node: NodeId,
    },
}

/// What one fault window did to the network and when, as the simulation carried it out (for
/// the checkers that need to know which links were cut while an operation ran).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    pub from: Instant,
    /// When the heal ended it (`None` while it lasts).
    pub to: Option<Instant>,
    pub faults: BTreeSet<Fault>,
    /// Every directed link blocked from `from` to `to` (the same throughout the window).
    pub blocked: BTreeSet<Link>,
}

impl FaultWindow {
    /// Whether no link from a node of `inside` to a node outside it (among `nodes`) was open.
    pub fn cuts_off(&self, inside: &[NodeId], nodes: &[NodeId]) -> bool {
        let outside = nodes.iter().filter(|n| !inside.contains(n));
        let mut links = outside.flat_map(|&o| inside.iter().map(move |&i| (i, o)));
        links.all(|link| self.blocked.contains(&link))
    }

    /// Whether the window only cut links between regions (and perhaps moved clocks, which no
    /// region's Raft group reads): every node up, every link inside every region open, no
    /// extra loss. Writes to any region must then succeed.
    pub fn only_between_regions(&self) -> bool {
        self.faults.iter().any(|f| f.is_between_regions())
            && self.faults.iter().all(|f| {
                f.is_between_regions() || matches!(f, Fault::ClockBump | Fault::ClockFreeze)
            })
    }
}

pub(crate) struct Nemesis {
    rng: DetRng,
    faults: Vec<Fault>,
    /// The nodes of each region (one entry when the cluster has one region).
    regions: Vec<Vec<NodeId>>,
}

const WINDOW_MS_MIN: u64 = 2_000;
const WINDOW_MS_MAX: u64 = 5_000;

impl Nemesis {
    pub fn new(faults: Vec<Fault>, rng: DetRng) -> Self {
        Nemesis {
            rng,
            faults,
            regions: Vec::new(),
        }
    }

    /// The regions' nodes, for the [`Fault::REGIONAL`] faults (which need two or more).
    pub fn with_regions(mut self, regions: Vec<Vec<NodeId>>) -> Self {
        assert!(
            regions.len() >= 2 || !self.faults.iter().any(|f| Fault::REGIONAL.contains(f)),
            "regional faults need two regions or more"
        );
        self.regions = regions;
        self
    }

    pub fn is_idle(&self) -> bool {
        self.faults.is_empty()
    }

    /// How long the next fault window or healed window lasts.
    pub fn window(&mut self) -> Duration {
        Duration::from_millis(self.rng.between(WINDOW_MS_MIN, WINDOW_MS_MAX))
    }

    /// Plans a fault window of length `window` over `nodes` (all up: every window starts healed).
    pub fn plan(&mut self, window: Duration, nodes: &[NodeId]) -> Vec<Action> {
        let mut chosen = self.faults.clone();
        self.rng.shuffle(&mut chosen);
        let count = if chosen.len() > 1 && self.rng.chance(0.4) {
            2
        } else {
            1
        };
        chosen.truncate(count);
        chosen.sort();
        let mut actions = Vec::new();
        for fault in chosen {
            self.plan_fault(fault, window, nodes, &mut actions);
        }
        actions
    }

    fn plan_fault(
        &mut self,
        fault: Fault,
        window: Duration,
        nodes: &[NodeId],
        actions: &mut Vec<Action>,
    ) {
        let n = nodes.len();
        let mut shuffled = nodes.to_vec();
        self.rng.shuffle(&mut shuffled);
        let block = |links: BTreeSet<Link>, description: String| Action::Block {
            fault,
            links,
            description,
        };
        match fault {
            Fault::PartitionRandomHalves => {
                let (a, b) = shuffled.split_at(n / 2);
                let links = between(a, b);
                actions.push(block(links, format!("{} | {}", list(a), list(b))));
            }
            Fault::IsolateOne => {
                let (a, b) = shuffled.split_at(1);
                actions.push(block(between(a, b), format!("{} alone", a[0])));
            }
            Fault::MajoritiesRing => {
                let (links, reach) = majorities_ring(&shuffled);
                actions.push(block(
                    links,
                    format!("ring {} reach {reach}", list(&shuffled)),
                ));
            }
            Fault::OneWay => {
                let node = shuffled[0];
                let others = &shuffled[1..];
                let (links, description) = match self.rng.below(3) {
                    0 => (
                        others.iter().map(|&o| (node, o)).collect(),
                        format!("{node} cannot send"),
                    ),
                    1 => (
                        others.iter().map(|&o| (o, node)).collect(),
                        format!("{node} cannot receive"),
                    ),
                    _ => {
                        let mut links = BTreeSet::new();
                        for &from in nodes {
                            for &to in nodes {
                                if from != to && self.rng.chance(0.3) {
                                    links.insert((from, to));
                                }
                            }
                        }
                        let d = links
                            .iter()
                            .map(|(f, t)| format!("{f}->{t}"))
                            .collect::<Vec<_>>();
                        (links, format!("blocked {}", d.join(" ")))
                    }
                };
                actions.push(block(links, description));
            }
            Fault::LossBurst => {
                actions.push(Action::Loss(0.1 + 0.4 * self.rng.unit_f64()));
            }
            Fault::CrashRestart => {
                // At most a minority at once (but always one), so that quorums can still form.
                let minority = (n.saturating_sub(1) / 2).max(1);
                let count = if minority >= 2 && self.rng.chance(0.25) {
                    2
                } else {
                    1
                };
                let window_ms = window.as_millis() as u64;
                for &node in shuffled.iter().take(count) {
                    let restart_after =
                        Duration::from_millis(self.rng.between(100, window_ms.max(100)));
                    actions.push(Action::Crash {
                        node,
                        mid_sync: self.rng.chance(0.5),
                        restart_after,
                    });
                }
            }
            Fault::RegionCut => {
                let r = self.rng.below(self.regions.len() as u64) as usize;
                let inside = &self.regions[r];
                let outside: Vec<NodeId> = nodes
                    .iter()
                    .copied()
                    .filter(|n| !inside.contains(n))
                    .collect();
                let description = format!("r{} ({}) cut off", r + 1, list(inside));
                actions.push(block(between(inside, &outside), description));
            }
            Fault::RegionsApart => {
                let mut links = BTreeSet::new();
                for (i, a) in self.regions.iter().enumerate() {
                    for b in &self.regions[i + 1..] {
                        links.extend(between(a, b));
                    }
                }
                actions.push(block(links, "every region cut off from the others".into()));
            }
            Fault::RegionSplit => {
                let r = self.rng.below(self.regions.len() as u64) as usize;
                let mut inside = self.regions[r].clone();
                self.rng.shuffle(&mut inside);
                let (a, b) = inside.split_at(inside.len() / 2);
                let description = format!("inside r{}: {} | {}", r + 1, list(a), list(b));
                actions.push(block(between(a, b), description));
            }
            Fault::ClockFreeze => actions.push(Action::FreezeClock { node: shuffled[0] }),
            Fault::ClockBump => {
                let count = if n > 1 && self.rng.chance(0.5) { 2 } else { 1 };
                for &node in shuffled.iter().take(count) {
                    let magnitude_ms = if self.rng.chance(0.1) {
                        self.rng.between(61_000, 120_000)
                    } else {
                        self.rng.between(50, 20_000)
                    };
                    let sign = if self.rng.chance(0.5) { 1 } else { -1 };
                    actions.push(Action::BumpClock {
                        node,
                        delta_ms: sign * magnitude_ms as i64,
                    });
                }
            }
        }
    }
}

/// Every directed link between a node of `a` and a node of `b`, both ways.
/// Every directed link between a node of `a` and a node of `b`, both ways: the cut between two
/// sides. Shared with the real-process fault suite (`triarch-nemesis`), which names nodes by
/// number.
pub fn between<T: Copy + Ord>(a: &[T], b: &[T]) -> BTreeSet<(T, T)> {
    let mut links = BTreeSet::new();
    for &x in a {
        for &y in b {
            links.insert((x, y));
            links.insert((y, x));
        }
    }
    links
}

/// Jepsen's majorities-ring: each node keeps its `reach` nearest neighbours on either side of
/// the ring `ring` (a random order of the nodes) and loses every other link; with
/// `2 * reach >= n / 2` others in sight, each node sees a majority counting itself, yet no two
/// nodes see the same majority. Returns the blocked directed links and `reach`.
pub fn majorities_ring<T: Copy + Ord>(ring: &[T]) -> (BTreeSet<(T, T)>, usize) {
    let n = ring.len();
    let reach = (n / 2).div_ceil(2);
    let mut links = BTreeSet::new();
    for i in 0..n {
        for j in 0..n {
            let distance = i.abs_diff(j).min(n - i.abs_diff(j));
            if distance > reach {
                links.insert((ring[i], ring[j]));
            }
        }
    }
    (links, reach)
}

fn list(nodes: &[NodeId]) -> String {
    let names: Vec<String> = nodes.iter().map(ToString::to_string).collect();
    names.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    fn plan_one(fault: Fault, n: u32, seed: u64) -> Vec<Action> {
        let mut nemesis = Nemesis::new(vec![fault], DetRng::seed_from_u64(seed));
        nemesis.plan(Duration::from_secs(3), &ids(n))
    }

    fn blocked(actions: &[Action]) -> BTreeSet<Link> {
        match &actions[0] {
            Action::Block { links, .. } => links.clone(),
            other => panic!("expected a block, got {other:?}"),
        }
    }

    #[test]
    fn majorities_ring_leaves_every_node_a_majority_and_no_common_one() {
        for seed in 0..20 {
            let links = blocked(&plan_one(Fault::MajoritiesRing, 5, seed));
            for node in ids(5) {
                let reachable = ids(5)
                    .into_iter()
                    .filter(|&o| o != node && !links.contains(&(node, o)))
                    .count();
                assert_eq!(
                    reachable, 2,
                    "{node} sees itself and two others: a majority of 5"
                );
            }
            assert!(!links.is_empty());
        }
    }

    #[test]
    fn random_halves_cut_every_link_across_and_none_within() {
        let links = blocked(&plan_one(Fault::PartitionRandomHalves, 5, 1));
        assert_eq!(links.len(), 2 * 2 * 3, "2 x 3 pairs, both directions");
    }

    #[test]
    fn crashes_stay_a_minority_and_clock_bumps_have_both_signs() {
        let mut signs = BTreeSet::new();
        for seed in 0..200 {
            let crashes = plan_one(Fault::CrashRestart, 5, seed);
            assert!((1..=2).contains(&crashes.len()));
            for a in plan_one(Fault::ClockBump, 5, seed) {
                if let Action::BumpClock { delta_ms, .. } = a {
                    signs.insert(delta_ms.signum());
                }
            }
        }
        assert_eq!(signs, BTreeSet::from([-1, 1]));
    }

    #[test]
    fn regional_faults_cut_between_regions_or_inside_one() {
        let regions: Vec<Vec<NodeId>> = (0..3)
            .map(|r| ids(9).into_iter().filter(|n| (n.0 - 1) % 3 == r).collect())
            .collect();
        let region = |n: NodeId| (n.0 - 1) % 3;
        for seed in 0..20 {
            let plan = |fault| {
                let mut nemesis = Nemesis::new(vec![fault], DetRng::seed_from_u64(seed))
                    .with_regions(regions.clone());
                blocked(&nemesis.plan(Duration::from_secs(3), &ids(9)))
            };
            let cut = plan(Fault::RegionCut);
            assert_eq!(
                cut.len(),
                2 * 3 * 6,
                "one region of 3 against 6 nodes, both ways"
            );
            assert!(cut.iter().all(|&(a, b)| region(a) != region(b)));
            let apart = plan(Fault::RegionsApart);
            assert_eq!(
                apart.len(),
                9 * 6,
                "every link between regions, none inside"
            );
            assert!(apart.iter().all(|&(a, b)| region(a) != region(b)));
            let split = plan(Fault::RegionSplit);
            assert_eq!(split.len(), 2 * 2, "1 | 2 inside one region, both ways");
            assert!(split.iter().all(|&(a, b)| region(a) == region(b)));
        }
    }

    #[test]
    fn the_same_seed_plans_the_same_faults() {
        let plan = |seed| {
            let mut nemesis = Nemesis::new(Fault::ALL.to_vec(), DetRng::seed_from_u64(seed));
            (0..10)
                .map(|_| nemesis.plan(Duration::from_secs(3), &ids(5)))
                .collect::<Vec<_>>()
        };
        assert_eq!(plan(9), plan(9));
        assert_ne!(plan(9), plan(10));
    }
}
