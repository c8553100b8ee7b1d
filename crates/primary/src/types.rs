//! The log's vocabulary: terms, indexes, entries and snapshots.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use triarch_core::NodeId;

/// A Raft term (§5.1): a logical clock that only grows. Term 0 precedes every election.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Term(pub u64);

impl Term {
    pub const ZERO: Term = Term(0);

    /// The following term.
    pub fn next(self) -> Term {
        Term(self.0.checked_add(1).expect("term overflow"))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// A position in the log. The first entry has index 1; index 0 is the empty prefix every log
/// shares (term 0), so `prev_index = 0` always matches.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogIndex(pub u64);

impl LogIndex {
    pub const ZERO: LogIndex = LogIndex(0);

    pub fn next(self) -> LogIndex {
        LogIndex(self.0.checked_add(1).expect("log index overflow"))
    }

    /// The preceding index. Panics at 0, which has none.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.checked_sub(1).expect("index 0 has no predecessor"))
    }

    /// `self + n`.
    pub fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0.checked_add(n).expect("log index overflow"))
    }

    /// The number of indexes in `(earlier, self]`; zero if `earlier >= self`.
    pub fn distance_from(self, earlier: LogIndex) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryData {
    /// Appended by every new leader (§5.4.2, thesis §6.4): committing an entry of its own term
    /// commits every earlier entry and lets the leader serve ReadIndex reads.
    Noop,
    /// An application command, opaque to Raft.
    Application(Bytes),
    /// A new configuration differing from the previous one by exactly one server (thesis §4.1):
    /// one voter or learner added or removed, or one learner promoted to voter. It takes effect
    /// as soon as it is in a server's log, committed or not. Learners (thesis §4.2.1) receive
    /// the log but never count toward a quorum; the two sets are disjoint.
    Membership {
        voters: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
    },
}

impl EntryData {
    /// The application bytes carried (what batching limits count).
    pub fn size_bytes(&self) -> usize {
        match self {
            EntryData::Noop => 0,
            EntryData::Application(data) => data.len(),
            EntryData::Membership { voters, learners } => {
                (voters.len() + learners.len()) * std::mem::size_of::<NodeId>()
            }
        }
    }
}

/// One log entry: (term, index, data).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub data: EntryData,
}

/// The application's state at `index` (§7), with what Raft needs to continue the log after it:
/// the term of the entry at `index` and the configuration (voters and learners) in force there.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Snapshot {
    pub index: LogIndex,
    pub term: Term,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Produced and consumed by the application; opaque to Raft.
    pub data: Bytes,
}

impl Snapshot {
    /// The empty prefix of a new group's log: index 0, term 0, the bootstrap voters.
    pub fn initial(voters: BTreeSet<NodeId>) -> Snapshot {
        Snapshot {
            index: LogIndex::ZERO,
            term: Term::ZERO,
            voters,
            learners: BTreeSet::new(),
            data: Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_arithmetic_is_checked() {
        assert_eq!(LogIndex(3).next(), LogIndex(4));
        assert_eq!(LogIndex(3).prev(), LogIndex(2));
        assert_eq!(LogIndex(3).plus(2), LogIndex(5));
        assert_eq!(LogIndex(5).distance_from(LogIndex(3)), 2);
        assert_eq!(LogIndex(3).distance_from(LogIndex(5)), 0);
        assert!(std::panic::catch_unwind(|| LogIndex::ZERO.prev()).is_err());
    }
}
