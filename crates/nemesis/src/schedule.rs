//! The seeded nemesis schedule: which faults strike when, and where.
//!
//! The main phase alternates healed windows and fault windows. A fault window picks one fault
//! class among those enabled (two distinct classes 40% of the time) and plans it concretely:
//! which links are cut, which nodes are killed, paused or skewed, how much traffic is lost. At
//! its end everything it did is healed. The whole schedule is drawn from one
//! [`DetRng`] seeded by the run's seed before the run starts, so a seed always names the same
//! faults at the same offsets (what the system does in between is real time, and is not).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;
use triarch_core::DetRng;
use triarch_sim::nemesis::{between, majorities_ring};

/// The fault classes the command line enables (`--faults partition,kill,pause,clock,loss`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultClass {
    /// Node-to-node links cut at the bridge (five shapes, see [`PartitionKind`]).
    Partition,
    /// `kill -9` of a minority of nodes, restarted on the same data directory at the heal.
    Kill,
    /// `SIGSTOP` of a minority of nodes, `SIGCONT` at the heal.
    Pause,
    /// Wall-clock bumps of seconds to minutes on one or two nodes (libfaketime), reset at the heal.
    Clock,
    /// Random loss of 10-50% of the packets between nodes (nft `numgen`).
    Loss,
}

impl FaultClass {
    pub const ALL: [FaultClass; 5] = [
        FaultClass::Partition,
        FaultClass::Kill,
        FaultClass::Pause,
        FaultClass::Clock,
        FaultClass::Loss,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultClass::Partition => "partition",
            FaultClass::Kill => "kill",
            FaultClass::Pause => "pause",
            FaultClass::Clock => "clock",
            FaultClass::Loss => "loss",
        }
    }

    /// Parses a comma-separated list (`partition,kill`); `none` or an empty string is no fault.
    pub fn parse_list(list: &str) -> Result<Vec<FaultClass>, String> {
        let mut classes = BTreeSet::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if word == "none" {
                continue;
            }
            let class = FaultClass::ALL
                .into_iter()
                .find(|c| c.name() == word)
                .ok_or_else(|| {
                    format!(
                        "unknown fault {word:?}: expected a comma-separated list of partition, \
                         kill, pause, clock, loss (or none)"
                    )
                })?;
            classes.insert(class);
        }
        Ok(classes.into_iter().collect())
    }
}

impl fmt::Display for FaultClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Jepsen's partition shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PartitionKind {
    /// Two random halves that cannot talk to each other.
    RandomHalves,
    /// One node cut off from all others.
    IsolateOne,
    /// Every node sees a majority, but no two nodes see the same majority.
    MajoritiesRing,
    /// Two halves cut from each other, and one node in the middle that sees both.
    Bridge,
    /// Directed links blocked one way only: a node that cannot send, one that cannot receive, or
    /// a random set of directed links.
    OneWay,
}

impl PartitionKind {
    pub const ALL: [PartitionKind; 5] = [
        PartitionKind::RandomHalves,
        PartitionKind::IsolateOne,
        PartitionKind::MajoritiesRing,
        PartitionKind::Bridge,
        PartitionKind::OneWay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PartitionKind::RandomHalves => "partition-random-halves",
            PartitionKind::IsolateOne => "isolate-one",
            PartitionKind::MajoritiesRing => "majorities-ring",
            PartitionKind::Bridge => "bridge",
            PartitionKind::OneWay => "one-way",
        }
    }
}

/// A directed link `(from, to)` between node ids: packets from `from` to `to` are dropped.
pub type Link = (u32, u32);

/// One concrete fault of a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Partition {
        kind: PartitionKind,
        blocked: BTreeSet<Link>,
        /// Who is cut from whom, for people (`n1 n4 | n2 n3 n5`).
        description: String,
    },
    Loss {
        percent: u8,
    },
    Kill {
        nodes: Vec<u32>,
    },
    Pause {
        nodes: Vec<u32>,
    },
    /// `(node, seconds)`: the node's wall clock jumps by that many seconds (either sign).
    ClockBump {
        bumps: Vec<(u32, i64)>,
    },
}

impl Fault {
    pub fn class(&self) -> FaultClass {
        match self {
            Fault::Partition { .. } => FaultClass::Partition,
            Fault::Loss { .. } => FaultClass::Loss,
            Fault::Kill { .. } => FaultClass::Kill,
            Fault::Pause { .. } => FaultClass::Pause,
            Fault::ClockBump { .. } => FaultClass::Clock,
        }
    }

    /// A short label (`isolate-one`, `kill`, ...) for plots.
    pub fn label(&self) -> &'static str {
        match self {
            Fault::Partition { kind, .. } => kind.name(),
            other => other.class().name(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition {
                kind, description, ..
            } => write!(f, "{}: {description}", kind.name()),
            Fault::Loss { percent } => write!(f, "loss: {percent}% of node-to-node packets"),
            Fault::Kill { nodes } => write!(f, "kill -9: {}", names(nodes)),
            Fault::Pause { nodes } => write!(f, "pause (SIGSTOP): {}", names(nodes)),
            Fault::ClockBump { bumps } => {
                let list: Vec<String> = bumps.iter().map(|(n, s)| format!("n{n} {s:+}s")).collect();
                write!(f, "clock bump: {}", list.join(", "))
            }
        }
    }
}

fn names(nodes: &[u32]) -> String {
    let names: Vec<String> = nodes.iter().map(|n| format!("n{n}")).collect();
    names.join(" ")
}

/// A fault window: the faults start at `start` and are healed at `end` (offsets from the start
/// of the main phase).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: Duration,
    pub end: Duration,
    pub faults: Vec<Fault>,
}

/// What a schedule is drawn over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleOptions {
    /// Node ids are `1..=nodes`.
    pub nodes: u32,
    /// Length of the main phase; the final heal happens then.
    pub time_limit: Duration,
    pub classes: Vec<FaultClass>,
    /// Partition shapes to draw from when [`FaultClass::Partition`] is enabled.
    pub partition_kinds: Vec<PartitionKind>,
    /// Range of a fault window's length, in milliseconds.
    pub fault_ms: (u64, u64),
    /// Range of a healed window's length, in milliseconds.
    pub healed_ms: (u64, u64),
}

impl ScheduleOptions {
    pub fn new(nodes: u32, time_limit: Duration, classes: Vec<FaultClass>) -> Self {
        ScheduleOptions {
            nodes,
            time_limit,
            classes,
            partition_kinds: PartitionKind::ALL.to_vec(),
            fault_ms: (3_000, 6_000),
            healed_ms: (2_000, 5_000),
        }
    }
}

/// Fault windows never end closer than this to the time limit (no fault starts too late to last).
const MIN_WINDOW_MS: u64 = 1_000;

/// The whole fault schedule of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub windows: Vec<Window>,
    pub time_limit: Duration,
}

impl Schedule {
    /// Draws the schedule of `seed`. Equal seeds and options give equal schedules.
    pub fn generate(seed: u64, options: &ScheduleOptions) -> Schedule {
        assert!(options.nodes >= 1, "a schedule needs nodes");
        let mut rng = DetRng::seed_from_u64(seed);
        let limit_ms = options.time_limit.as_millis() as u64;
        let mut windows = Vec::new();
        let mut t = rng.between(options.healed_ms.0, options.healed_ms.1);
        while !options.classes.is_empty() && t + MIN_WINDOW_MS <= limit_ms {
            let length = rng.between(options.fault_ms.0, options.fault_ms.1);
            let end = (t + length).min(limit_ms);
            let faults = plan_window(&mut rng, options);
            windows.push(Window {
                start: Duration::from_millis(t),
                end: Duration::from_millis(end),
                faults,
            });
            t = end + rng.between(options.healed_ms.0, options.healed_ms.1);
        }
        Schedule {
            windows,
            time_limit: options.time_limit,
        }
    }

    /// Every fault of the schedule, in order.
    pub fn faults(&self) -> impl Iterator<Item = &Fault> {
        self.windows.iter().flat_map(|w| &w.faults)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for w in &self.windows {
            for fault in &w.faults {
                writeln!(
                    f,
                    "{:>7.3}s - {:>7.3}s  {fault}",
                    w.start.as_secs_f64(),
                    w.end.as_secs_f64()
                )?;
            }
        }
        Ok(())
    }
}

fn plan_window(rng: &mut DetRng, options: &ScheduleOptions) -> Vec<Fault> {
    let mut classes = options.classes.clone();
    rng.shuffle(&mut classes);
    let count = if classes.len() > 1 && rng.chance(0.4) {
        2
    } else {
        1
    };
    classes.truncate(count);
    classes.sort();
    let n = options.nodes;
    // Kill and pause share one budget: at most a minority of the nodes is down at once, so that
    // quorums can still form somewhere.
    let mut spare: Vec<u32> = (1..=n).collect();
    rng.shuffle(&mut spare);
    let minority = (n.saturating_sub(1) / 2).max(1) as usize;
    spare.truncate(minority);
    let mut faults = Vec::new();
    for class in classes {
        let fault = match class {
            FaultClass::Partition => {
                let kinds = &options.partition_kinds;
                let kind = kinds[rng.below(kinds.len() as u64) as usize];
                partition(rng, kind, n)
            }
            FaultClass::Loss => Fault::Loss {
                percent: rng.between(10, 50) as u8,
            },
            FaultClass::Kill | FaultClass::Pause => {
                if spare.is_empty() {
                    continue;
                }
                let count = if spare.len() >= 2 && rng.chance(0.25) {
                    2
                } else {
                    1
                };
                let mut nodes: Vec<u32> = spare.drain(..count).collect();
                nodes.sort();
                if class == FaultClass::Kill {
                    Fault::Kill { nodes }
                } else {
                    Fault::Pause { nodes }
                }
            }
            FaultClass::Clock => {
                let mut candidates: Vec<u32> = (1..=n).collect();
                rng.shuffle(&mut candidates);
                let count = if n > 1 && rng.chance(0.5) { 2 } else { 1 };
                let mut bumps: Vec<(u32, i64)> = candidates
                    .into_iter()
                    .take(count)
                    .map(|node| {
                        // Half small bumps, half minutes (past the 60 s bound on how far a peer's
                        // timestamp may move a node's hybrid logical clock).
                        let magnitude = if rng.chance(0.5) {
                            rng.between(2, 30)
                        } else {
                            rng.between(61, 240)
                        } as i64;
                        let sign = if rng.chance(0.5) { 1 } else { -1 };
                        (node, sign * magnitude)
                    })
                    .collect();
                bumps.sort();
                Fault::ClockBump { bumps }
            }
        };
        faults.push(fault);
    }
    faults
}

/// Plans one partition of `kind` over nodes `1..=n`.
pub fn partition(rng: &mut DetRng, kind: PartitionKind, n: u32) -> Fault {
    let mut shuffled: Vec<u32> = (1..=n).collect();
    rng.shuffle(&mut shuffled);
    let n = n as usize;
    let (blocked, description) = match kind {
        PartitionKind::RandomHalves => {
            let (a, b) = shuffled.split_at(n / 2);
            (
                between(a, b),
                format!("{} | {}", names(&sorted(a)), names(&sorted(b))),
            )
        }
        PartitionKind::IsolateOne => {
            let (a, b) = shuffled.split_at(1);
            (between(a, b), format!("n{} alone", a[0]))
        }
        PartitionKind::MajoritiesRing => {
            let (links, reach) = majorities_ring(&shuffled);
            (links, format!("ring {} reach {reach}", names(&shuffled)))
        }
        PartitionKind::Bridge => {
            let half = (n - 1) / 2;
            let (left, rest) = shuffled.split_at(half);
            let (middle, right) = rest.split_at(1);
            (
                between(left, right),
                format!(
                    "{} | {} | {} (n{} bridges)",
                    names(&sorted(left)),
                    names(middle),
                    names(&sorted(right)),
                    middle[0]
                ),
            )
        }
        PartitionKind::OneWay => {
            let node = shuffled[0];
            let others = &shuffled[1..];
            match rng.below(3) {
                0 => (
                    others.iter().map(|&o| (node, o)).collect(),
                    format!("n{node} cannot send"),
                ),
                1 => (
                    others.iter().map(|&o| (o, node)).collect(),
                    format!("n{node} cannot receive"),
                ),
                _ => {
                    let mut links = BTreeSet::new();
                    for from in 1..=n as u32 {
                        for to in 1..=n as u32 {
                            if from != to && rng.chance(0.3) {
                                links.insert((from, to));
                            }
                        }
                    }
                    if links.is_empty() && n > 1 {
                        links.insert((node, others[0]));
                    }
                    let list: Vec<String> =
                        links.iter().map(|(f, t)| format!("n{f}->n{t}")).collect();
                    (links, format!("blocked {}", list.join(" ")))
                }
            }
        }
    };
    Fault::Partition {
        kind,
        blocked,
        description,
    }
}

fn sorted(nodes: &[u32]) -> Vec<u32> {
    let mut v = nodes.to_vec();
    v.sort();
    v
}

/// Every directed link between a node of `a` and a node of `b`, both ways.
#[cfg(test)]
mod tests {
    use super::*;

    fn options(classes: Vec<FaultClass>) -> ScheduleOptions {
        ScheduleOptions::new(5, Duration::from_secs(60), classes)
    }

    #[test]
    fn a_seed_names_one_schedule_and_another_seed_another() {
        let all = options(FaultClass::ALL.to_vec());
        assert_eq!(Schedule::generate(7, &all), Schedule::generate(7, &all));
        assert_ne!(Schedule::generate(7, &all), Schedule::generate(8, &all));
        assert_eq!(
            Schedule::generate(7, &all).to_string(),
            Schedule::generate(7, &all).to_string()
        );
    }

    #[test]
    fn windows_are_ordered_disjoint_and_within_the_time_limit() {
        for seed in 0..200 {
            let s = Schedule::generate(seed, &options(FaultClass::ALL.to_vec()));
            assert!(
                s.windows.len() >= 5,
                "seed {seed}: {} windows",
                s.windows.len()
            );
            let mut previous_end = Duration::ZERO;
            for w in &s.windows {
                assert!(
                    w.start >= previous_end + Duration::from_secs(2),
                    "seed {seed}"
                );
                assert!(w.end > w.start && w.end <= s.time_limit, "seed {seed}");
                assert!(!w.faults.is_empty() && w.faults.len() <= 2, "seed {seed}");
                let classes: BTreeSet<FaultClass> = w.faults.iter().map(Fault::class).collect();
                assert_eq!(classes.len(), w.faults.len(), "distinct classes per window");
                previous_end = w.end;
            }
        }
    }

    #[test]
    fn only_enabled_classes_appear_and_none_means_no_window() {
        let s = Schedule::generate(3, &options(vec![FaultClass::Kill, FaultClass::Clock]));
        assert!(
            s.faults()
                .all(|f| matches!(f.class(), FaultClass::Kill | FaultClass::Clock))
        );
        assert!(Schedule::generate(3, &options(vec![])).windows.is_empty());
    }

    #[test]
    fn every_class_and_partition_shape_shows_up_over_seeds() {
        let mut labels = BTreeSet::new();
        for seed in 0..50 {
            for f in Schedule::generate(seed, &options(FaultClass::ALL.to_vec())).faults() {
                labels.insert(f.label());
            }
        }
        let expected: BTreeSet<&str> = PartitionKind::ALL
            .iter()
            .map(|k| k.name())
            .chain(["kill", "pause", "clock", "loss"])
            .collect();
        assert_eq!(labels, expected);
    }

    #[test]
    fn killed_and_paused_nodes_together_stay_a_minority() {
        for seed in 0..300 {
            let s = Schedule::generate(seed, &options(vec![FaultClass::Kill, FaultClass::Pause]));
            for w in &s.windows {
                let mut down = BTreeSet::new();
                for f in &w.faults {
                    if let Fault::Kill { nodes } | Fault::Pause { nodes } = f {
                        for n in nodes {
                            assert!(down.insert(*n), "seed {seed}: n{n} both killed and paused");
                        }
                    }
                }
                assert!((1..=2).contains(&down.len()), "seed {seed}: {down:?}");
            }
        }
    }

    #[test]
    fn clock_bumps_have_both_signs_and_reach_minutes() {
        let bumps: Vec<i64> = (0..100)
            .flat_map(|seed| {
                Schedule::generate(seed, &options(vec![FaultClass::Clock]))
                    .faults()
                    .flat_map(|f| match f {
                        Fault::ClockBump { bumps } => bumps.iter().map(|b| b.1).collect(),
                        _ => Vec::new(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(bumps.iter().any(|&s| s <= -61) && bumps.iter().any(|&s| s >= 61));
        assert!(bumps.iter().all(|&s| (2..=240).contains(&s.abs())));
    }

    fn blocked(kind: PartitionKind, n: u32, seed: u64) -> BTreeSet<Link> {
        match partition(&mut DetRng::seed_from_u64(seed), kind, n) {
            Fault::Partition { blocked, .. } => blocked,
            other => panic!("{other:?}"),
        }
    }

    fn reachable(links: &BTreeSet<Link>, n: u32, node: u32) -> usize {
        (1..=n)
            .filter(|&o| o != node && !links.contains(&(node, o)))
            .count()
    }

    #[test]
    fn partition_shapes_cut_what_they_say() {
        for seed in 0..30 {
            let halves = blocked(PartitionKind::RandomHalves, 5, seed);
            assert_eq!(halves.len(), 2 * 2 * 3, "2 x 3 pairs, both ways");
            let alone = blocked(PartitionKind::IsolateOne, 5, seed);
            assert_eq!(alone.len(), 2 * 4);
            assert_eq!(
                (1..=5).filter(|&n| reachable(&alone, 5, n) == 0).count(),
                1,
                "exactly one node sees nobody"
            );
            let ring = blocked(PartitionKind::MajoritiesRing, 5, seed);
            assert!(
                (1..=5).all(|n| reachable(&ring, 5, n) == 2),
                "each sees a majority"
            );
            let bridge = blocked(PartitionKind::Bridge, 5, seed);
            assert_eq!(bridge.len(), 2 * 2 * 2);
            assert_eq!(
                (1..=5).filter(|&n| reachable(&bridge, 5, n) == 4).count(),
                1,
                "one bridge node sees everyone"
            );
            let one_way = blocked(PartitionKind::OneWay, 5, seed);
            assert!(!one_way.is_empty());
            assert!(
                one_way.iter().any(|&(a, b)| !one_way.contains(&(b, a))),
                "some link is blocked in one direction only"
            );
        }
    }

    #[test]
    fn fault_lists_parse_and_refuse_unknown_names() {
        assert_eq!(
            FaultClass::parse_list("kill, partition,kill").unwrap(),
            vec![FaultClass::Partition, FaultClass::Kill]
        );
        assert_eq!(FaultClass::parse_list("none").unwrap(), vec![]);
        let e = FaultClass::parse_list("partition,fire").unwrap_err();
        assert!(e.contains("\"fire\""), "{e}");
    }
}
