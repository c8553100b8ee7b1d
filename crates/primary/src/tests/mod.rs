//! Tests of the Raft core: scenario tests quoting the paper's rules ([`paper`]), a seeded
//! simulation of whole clusters under faults ([`sim`]) and exhaustive exploration of a small
//! cluster ([`model`]). This module holds what they share: a test application, a member with
//! its disk, and the cluster-wide safety checker.

mod cluster;
mod learners;
mod model;
mod paper;
mod sim;

use crate::{Entry, EntryData, LogIndex, Output, Raft, RaftConfig, Snapshot, Term};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use triarch_core::{DetRng, Instant, NodeId};
use triarch_storage::SimDisk;

/// The test application: its state is the sequence of entries it applied, so two replicas'
/// states are equal exactly when they applied the same entries in the same order. Its snapshot
/// is that sequence, encoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct App {
    pub applied: Vec<Entry>,
}

impl App {
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.applied.len() as u64)
    }

    /// Applies a committed entry; entries must come in index order without gaps.
    pub fn apply(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index().next(),
            "entries are applied in order"
        );
        self.applied.push(entry);
    }

    pub fn restore(&mut self, snapshot: &Snapshot) {
        self.applied = postcard::from_bytes(&snapshot.data).expect("test snapshots decode");
        assert_eq!(
            self.last_index(),
            snapshot.index,
            "a snapshot holds its prefix"
        );
    }

    pub fn snapshot_data(&self, index: LogIndex) -> Bytes {
        Bytes::from(postcard::to_stdvec(&self.applied[..index.0 as usize]).expect("encodes"))
    }

    /// The application commands applied, as strings.
    pub fn commands(&self) -> Vec<String> {
        self.applied
            .iter()
            .filter_map(|e| match &e.data {
                EntryData::Application(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }
}

/// One server of a test cluster: its Raft member (None while crashed), disk and application.
#[derive(Clone)]
pub(super) struct Member {
    pub config: RaftConfig,
    pub disk: SimDisk,
    pub raft: Option<Raft>,
    pub app: App,
    pub rng: DetRng,
}

impl Member {
    pub fn new(config: RaftConfig, mut rng: DetRng, now: Instant) -> Member {
        let mut disk = SimDisk::new();
        let raft = Raft::new(config.clone(), &mut disk, rng.fork(), now).expect("starts");
        Member {
            config,
            disk,
            raft: Some(raft),
            app: App::default(),
            rng,
        }
    }

    pub fn raft(&self) -> &Raft {
        self.raft.as_ref().expect("member is up")
    }

    /// A crash: memory is lost, and so is every write not synced.
    pub fn crash(&mut self, keep_unsynced: usize) {
        self.disk.crash_keeping_prefix(keep_unsynced);
        self.raft = None;
        self.app = App::default();
    }

    pub fn restart(&mut self, now: Instant) {
        assert!(self.raft.is_none());
        let raft =
            Raft::new(self.config.clone(), &mut self.disk, self.rng.fork(), now).expect("recovers");
        self.raft = Some(raft);
    }

    /// Drains the member's outputs after a step.
    pub fn drain(&mut self) -> Vec<Output> {
        let raft = self.raft.as_mut().expect("member is up");
        raft.check_invariants();
        std::iter::from_fn(|| raft.poll_output()).collect()
    }
}

/// A violation of a cluster-wide safety property (Raft paper, Figure 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Violation {
    /// Two leaders in one term.
    ElectionSafety {
        term: Term,
        leaders: (NodeId, NodeId),
    },
    /// Two servers applied different entries at one index.
    StateMachineSafety {
        index: LogIndex,
        first: (NodeId, Term),
        second: (NodeId, Term),
    },
    /// A leader lacks an entry committed in an earlier term.
    LeaderCompleteness {
        leader: NodeId,
        term: Term,
        index: LogIndex,
    },
    /// Two logs hold an entry with the same index and term but differ before it.
    LogMatching {
        servers: (NodeId, NodeId),
        index: LogIndex,
    },
    /// The cluster, healed, made no progress.
    NoProgress { detail: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Cluster-wide safety checks, fed by the driver after every step.
#[derive(Clone, Debug, Default)]
pub(super) struct SafetyChecker {
    /// The leader of each term seen so far.
    leaders: BTreeMap<Term, NodeId>,
    /// Every entry any server applied: index -> (term, data, first server to apply it).
    applied: BTreeMap<LogIndex, (Term, EntryData, NodeId)>,
    /// For each committed index, the first leader term in which a leader held it committed,
    /// and the entry's term.
    committed_in_term: BTreeMap<LogIndex, (Term, Term)>,
}

impl SafetyChecker {
    /// Election Safety: at most one leader per term, ever.
    pub fn observe_roles<'a>(
        &mut self,
        rafts: impl Iterator<Item = &'a Raft>,
    ) -> Result<(), Violation> {
        for raft in rafts.filter(|r| r.is_leader()) {
            let leader = *self.leaders.entry(raft.term()).or_insert(raft.id());
            if leader != raft.id() {
                return Err(Violation::ElectionSafety {
                    term: raft.term(),
                    leaders: (leader, raft.id()),
                });
            }
            // What a leader holds committed is committed in its term.
            let from = self
                .committed_in_term
                .last_key_value()
                .map_or(LogIndex(1), |(i, _)| i.next());
            let mut index = from;
            while index <= raft.commit_index() {
                let entry_term = raft
                    .term_at(index)
                    .expect("a leader holds what it committed");
                self.committed_in_term
                    .insert(index, (raft.term(), entry_term));
                index = index.next();
            }
        }
        Ok(())
    }

    /// Leader Completeness: a leader holds every entry committed in an earlier term.
    pub fn check_leader_completeness<'a>(
        &self,
        rafts: impl Iterator<Item = &'a Raft>,
    ) -> Result<(), Violation> {
        for raft in rafts.filter(|r| r.is_leader()) {
            for (&index, &(term, entry_term)) in &self.committed_in_term {
                if term >= raft.term() || index <= raft.snapshot().index {
                    continue;
                }
                if raft.term_at(index) != Some(entry_term) {
                    return Err(Violation::LeaderCompleteness {
                        leader: raft.id(),
                        term: raft.term(),
                        index,
                    });
                }
            }
        }
        Ok(())
    }

    /// State Machine Safety: no two servers apply different entries at one index.
    pub fn observe_apply(&mut self, server: NodeId, entry: &Entry) -> Result<(), Violation> {
        match self.applied.get(&entry.index) {
            None => {
                self.applied
                    .insert(entry.index, (entry.term, entry.data.clone(), server));
                Ok(())
            }
            Some((term, data, first)) if (*term, data) != (entry.term, &entry.data) => {
                Err(Violation::StateMachineSafety {
                    index: entry.index,
                    first: (*first, *term),
                    second: (server, entry.term),
                })
            }
            Some(_) => Ok(()),
        }
    }

    pub fn applied_count(&self) -> usize {
        self.applied.len()
    }
}

/// Log Matching across servers: if two logs hold an entry with the same index and term, they
/// are identical up to it.
pub(super) fn check_log_matching<'a>(
    rafts: impl Iterator<Item = &'a Raft> + Clone,
) -> Result<(), Violation> {
    let all: Vec<&Raft> = rafts.collect();
    for (k, a) in all.iter().enumerate() {
        for b in &all[k + 1..] {
            let low = a.snapshot().index.max(b.snapshot().index).next();
            let high = a.last_index().min(b.last_index());
            let mut index = high;
            // The highest index where both hold the same term...
            while index >= low && a.term_at(index) != b.term_at(index) {
                index = index.prev();
            }
            // ...below which everything both hold must be identical.
            while index >= low {
                if a.entry(index) != b.entry(index) {
                    return Err(Violation::LogMatching {
                        servers: (a.id(), b.id()),
                        index,
                    });
                }
                index = index.prev();
            }
        }
    }
    Ok(())
}

/// Node ids from small integers, for readable tests.
pub(super) fn ids(ids: &[u32]) -> BTreeSet<NodeId> {
    ids.iter().map(|i| NodeId(*i)).collect()
}

#[test]
fn each_checker_fails_on_a_broken_history() {
    let entry = |term, index, data: &'static str| Entry {
        term: Term(term),
        index: LogIndex(index),
        data: EntryData::Application(Bytes::from_static(data.as_bytes())),
    };
    // State Machine Safety.
    let mut checker = SafetyChecker::default();
    checker.observe_apply(NodeId(1), &entry(1, 1, "a")).unwrap();
    checker.observe_apply(NodeId(2), &entry(1, 1, "a")).unwrap();
    assert!(matches!(
        checker.observe_apply(NodeId(3), &entry(2, 1, "b")),
        Err(Violation::StateMachineSafety { .. })
    ));

    // Election Safety and Leader Completeness, on real members forced into bad states.
    let config = |id| {
        let mut c = RaftConfig::new(NodeId(id), "g", ids(&[1]));
        c.pre_vote = false;
        c
    };
    let mut solo = Member::new(config(1), DetRng::seed_from_u64(1), Instant::ZERO);
    let deadline = solo.raft().poll_timeout().unwrap();
    let raft = solo.raft.as_mut().unwrap();
    let mut env = crate::Env {
        now: deadline,
        storage: &mut solo.disk,
    };
    raft.handle_timeout(&mut env).unwrap();
    assert!(raft.is_leader());
    let mut other = raft.clone();
    other.test_set_id(NodeId(2));
    let mut checker = SafetyChecker::default();
    assert!(matches!(
        checker.observe_roles([&*raft, &other].into_iter()),
        Err(Violation::ElectionSafety { .. })
    ));
    let mut checker = SafetyChecker::default();
    checker
        .committed_in_term
        .insert(LogIndex(5), (Term(0), Term(0)));
    assert!(matches!(
        checker.check_leader_completeness([&*raft].into_iter()),
        Err(Violation::LeaderCompleteness { .. })
    ));

    // Log Matching.
    let mut diverged = raft.clone();
    diverged.test_set_id(NodeId(3));
    let mut tampered = diverged.entries().to_vec();
    tampered[0].data = EntryData::Application(Bytes::from_static(b"x"));
    diverged.test_replace_entries(tampered);
    assert!(matches!(
        check_log_matching([&*raft, &diverged].into_iter()),
        Err(Violation::LogMatching { .. })
    ));
    check_log_matching([&*raft, &*raft].into_iter()).unwrap();
}
