//! `triarch advise`: from a workload's shape to a replication model, its settings and the
//! reasons, then the explorer's numbers for that shape.
//!
//! The rules, in order (the first that applies decides):
//!
//! 1. **Conflicts are expensive and the data does not merge** (balances, inventory, anything
//!    with an invariant across writes): primary-backup. One leader orders every write, so
//!    transactions (WATCH/MULTI/EXEC) keep invariants and reads can be linearizable. Its cost is
//!    paid before the write: a client outside the leader's region waits an inter-region round
//!    trip, and a region cut off from the majority cannot write.
//! 2. **The data merges** (sets, counters) **and writes come from several regions or must be
//!    fast**: multi-leader with the CRDT merge. Each region's leader acknowledges locally; the
//!    merge keeps every concurrent add or increment, so conflicts cost nothing to lose. Its cost
//!    is paid after the write: other regions see it a replication lag later.
//! 3. **Conflicts are cheap and writes must be fast** (preferences, sessions, caches):
//!    leaderless with last-writer-wins, W=1 and R=1 when latency matters most, sloppy quorums
//!    so a cut-off side keeps writing. Its cost is paid at read time: stale reads, read repair,
//!    anti-entropy; concurrent writes lose all but one.
//! 4. **Operational simplicity first**: primary-backup (one order, one place to look).
//! 5. Otherwise: leaderless with strict quorums R=2, W=2 of N=3 (reads see every acknowledged
//!    write; no leader to elect).
//!
//! Write locality picks the settings, not the model: primary-backup writers in one region want
//! the leader there (their writes then cross no region boundary); multi-leader writers in one
//! region make conflicts rare.

use super::{ExploreOptions, Workload};
use triarch_core::{Model, ReadPolicy};

/// How much a wrong conflict resolution costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictCost {
    Low,
    High,
}

impl ConflictCost {
    pub fn parse(s: &str) -> Option<ConflictCost> {
        match s {
            "low" => Some(ConflictCost::Low),
            "high" => Some(ConflictCost::High),
            _ => None,
        }
    }
}

/// A workload's shape, as `triarch advise` asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub conflict_cost: ConflictCost,
    /// Most writes to a key come from one region.
    pub writes_local: bool,
    /// Client-seen write latency matters (an inter-region round trip is too much).
    pub latency_sensitive: bool,
    /// Concurrent writes merge naturally (set adds and removes, counter increments).
    pub mergeable: bool,
    /// The team prefers the simplest system to operate and reason about.
    pub simple_ops: bool,
}

/// What `triarch advise` recommends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advice {
    pub model: Model,
    /// Keyspace settings, as the configuration file spells them.
    pub settings: Vec<String>,
    pub reasons: Vec<String>,
    /// The explorer workload closest to the shape, run to show the numbers.
    pub workload: Workload,
}

/// Applies the rules of the module documentation.
pub fn advise(shape: &Shape) -> Advice {
    let mut reasons = Vec::new();
    let (model, mut settings, workload) =
        if shape.conflict_cost == ConflictCost::High && !shape.mergeable {
            reasons.push(
                "conflicting writes are expensive and do not merge: one leader must order every \
             write (transactions keep invariants such as no negative balance)"
                    .to_string(),
            );
            if shape.latency_sensitive {
                reasons.push(
                    "latency matters, but correctness wins here: writes from outside the leader's \
                 region pay about one inter-region round trip more"
                        .to_string(),
                );
            }
            (
                Model::PrimaryBackup,
                vec![
                    "MODEL primary-backup".to_string(),
                    "READ linearizable".to_string(),
                ],
                Workload::Balance,
            )
        } else if shape.mergeable && (!shape.writes_local || shape.latency_sensitive) {
            reasons.push(
                "the data merges (set or counter): concurrent writes in different regions lose \
             nothing, so each region can acknowledge its own writes"
                    .to_string(),
            );
            if shape.latency_sensitive {
                reasons.push(
                "writes are acknowledged inside the writer's region: no inter-region round trip"
                    .to_string(),
            );
            }
            reasons.push(
                "a region cut off from the others keeps writing; it converges after the heal"
                    .to_string(),
            );
            (
                Model::MultiLeader,
                vec!["MODEL multi-leader".to_string(), "MERGE set".to_string()],
                Workload::Cart,
            )
        } else if shape.conflict_cost == ConflictCost::Low && shape.latency_sensitive {
            reasons.push(
            "conflicts are cheap (the last write may win) and writes must be fast: any replica \
             takes a write"
                .to_string(),
        );
            reasons.push(
                "W=1, R=1: one replica's answer is enough; reads may be stale for a few \
             milliseconds (see the stale-read figures), read repair and anti-entropy converge"
                    .to_string(),
            );
            (
                Model::Leaderless,
                vec![
                    "MODEL leaderless".to_string(),
                    "MERGE lww".to_string(),
                    "N 3".to_string(),
                    "R 1".to_string(),
                    "W 1".to_string(),
                    "QUORUM sloppy".to_string(),
                ],
                Workload::Prefs,
            )
        } else if shape.simple_ops {
            reasons.push(
                "operational simplicity first: one leader, one order of writes, one place to look"
                    .to_string(),
            );
            (
                Model::PrimaryBackup,
                vec!["MODEL primary-backup".to_string(), "READ lease".to_string()],
                Workload::Prefs,
            )
        } else {
            reasons.push(
                "no leader to elect or fail over, and strict quorums (R + W > N) still read every \
             acknowledged write"
                    .to_string(),
            );
            (
                Model::Leaderless,
                vec![
                    "MODEL leaderless".to_string(),
                    "MERGE lww".to_string(),
                    "N 3".to_string(),
                    "R 2".to_string(),
                    "W 2".to_string(),
                ],
                Workload::Prefs,
            )
        };
    if shape.writes_local {
        match model {
            Model::PrimaryBackup => {
                reasons.push(
                    "writes are local to one region: keep the leader (and a majority of voters) \
                     there and those writes cross no region boundary"
                        .to_string(),
                );
                settings.push("HOME <the writers' region>".to_string());
            }
            Model::MultiLeader => reasons.push(
                "writes are local to one region: concurrent writes from two regions, and so \
                 conflicts, are rare"
                    .to_string(),
            ),
            Model::Leaderless => {}
        }
    }
    if shape.simple_ops && model != Model::PrimaryBackup {
        reasons.push(format!(
            "you asked for simple operations, but the shape outweighs it: {} needs its merge \
             policy and convergence watched",
            model.as_str()
        ));
    }
    Advice {
        model,
        settings,
        reasons,
        workload,
    }
}

impl Advice {
    /// The explorer run that shows the advice's numbers: its workload, every model, with the
    /// recommended settings wherever the explorer has them (N, R, W, sloppy quorums, the read
    /// policy; a home region becomes `r1`, where a third of the explorer's clients are).
    pub fn explore_options(&self, base: ExploreOptions) -> ExploreOptions {
        let mut o = ExploreOptions {
            workloads: vec![self.workload],
            ..base
        };
        for setting in &self.settings {
            let mut words = setting.split_whitespace();
            match (words.next(), words.next()) {
                (Some("N"), Some(v)) => o.n = v.parse().ok(),
                (Some("R"), Some(v)) => o.r = v.parse().ok(),
                (Some("W"), Some(v)) => o.w = v.parse().ok(),
                (Some("QUORUM"), Some("sloppy")) => o.sloppy = true,
                (Some("READ"), Some(policy)) => o.read = ReadPolicy::parse(policy).ok(),
                (Some("HOME"), Some(_)) => o.primary_home = Some(1),
                _ => {}
            }
        }
        o
    }
}

impl std::fmt::Display for Advice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "recommendation: {}", self.model.as_str())?;
        writeln!(f, "settings: {}", self.settings.join(", "))?;
        writeln!(f, "because:")?;
        for r in &self.reasons {
            writeln!(f, "  - {r}")?;
        }
        write!(
            f,
            "the numbers: the explorer's `{}` workload, every model, with these settings where \
             the explorer has them, below",
            self.workload
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            conflict_cost: ConflictCost::Low,
            writes_local: false,
            latency_sensitive: false,
            mergeable: false,
            simple_ops: false,
        }
    }

    /// The canonical deployment's three keyspaces map to their models.
    #[test]
    fn the_canonical_shapes_get_their_models() {
        let balance = Shape {
            conflict_cost: ConflictCost::High,
            latency_sensitive: true,
            ..shape()
        };
        let a = advise(&balance);
        assert_eq!(
            (a.model, a.workload),
            (Model::PrimaryBackup, Workload::Balance)
        );
        let cart = Shape {
            conflict_cost: ConflictCost::High,
            mergeable: true,
            latency_sensitive: true,
            ..shape()
        };
        let a = advise(&cart);
        assert_eq!((a.model, a.workload), (Model::MultiLeader, Workload::Cart));
        assert!(a.settings.contains(&"MERGE set".to_string()));
        let prefs = Shape {
            latency_sensitive: true,
            ..shape()
        };
        let a = advise(&prefs);
        assert_eq!((a.model, a.workload), (Model::Leaderless, Workload::Prefs));
        assert!(a.settings.contains(&"W 1".to_string()));
    }

    #[test]
    fn simplicity_and_defaults() {
        let simple = Shape {
            simple_ops: true,
            ..shape()
        };
        assert_eq!(advise(&simple).model, Model::PrimaryBackup);
        let a = advise(&shape());
        assert_eq!(a.model, Model::Leaderless);
        assert!(a.settings.contains(&"R 2".to_string()));
        // Mergeable data written in one region without latency pressure: nothing forces
        // multi-leader.
        let local = Shape {
            mergeable: true,
            writes_local: true,
            ..shape()
        };
        assert_eq!(advise(&local).model, Model::Leaderless);
        // Local writers under primary-backup: the leader goes to them.
        let pb_local = Shape {
            conflict_cost: ConflictCost::High,
            writes_local: true,
            ..shape()
        };
        let a = advise(&pb_local);
        assert!(a.reasons.iter().any(|r| r.contains("leader")), "{a}");
        assert!(a.to_string().starts_with("recommendation: primary-backup"));
        let o = a.explore_options(ExploreOptions::default());
        assert_eq!(o.primary_home, Some(1));
        assert_eq!(o.read, Some(ReadPolicy::Linearizable));
        assert_eq!(o.workloads, vec![Workload::Balance]);
        o.validate().unwrap();
    }

    /// The explorer runs what was recommended, not its defaults.
    #[test]
    fn the_numbers_come_from_the_recommended_settings() {
        let prefs = advise(&Shape {
            latency_sensitive: true,
            ..shape()
        });
        let o = prefs.explore_options(ExploreOptions::default());
        assert_eq!((o.n, o.r, o.w, o.sloppy), (Some(3), Some(1), Some(1), true));
        assert_eq!(o.primary_home, None);
        o.validate().unwrap();
        assert!(o.authoritative(Model::Leaderless).contains("W=1"));
        let simple = advise(&Shape {
            simple_ops: true,
            ..shape()
        });
        let o = simple.explore_options(ExploreOptions::default());
        assert_eq!(o.read, Some(ReadPolicy::Lease));
        assert_eq!((o.n, o.sloppy), (None, false));
    }
}
