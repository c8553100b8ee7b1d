//! The replicated log of one server: a snapshot (the compacted prefix) followed by the entries
//! after it, held in memory and written through to storage.
//!
//! Every mutation stages its storage writes before changing memory, in an order whose every
//! prefix is a valid log (see [`crate::persist`]), so a crash at any point of a batch recovers
//! to a log this server could have had.

use crate::persist;
use crate::types::{Entry, EntryData, LogIndex, Snapshot, Term};
use std::collections::BTreeSet;
use triarch_core::NodeId;
use triarch_storage::{Storage, StorageError};

#[derive(Clone, Debug)]
pub(crate) struct RaftLog {
    /// The compacted prefix; index 0 and the bootstrap voters for a log never compacted.
    snapshot: Snapshot,
    /// `entries[k].index == snapshot.index + 1 + k`.
    entries: Vec<Entry>,
}

impl RaftLog {
    pub fn new(snapshot: Snapshot, entries: Vec<Entry>) -> RaftLog {
        let log = RaftLog { snapshot, entries };
        log.check();
        log
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn first_index(&self) -> LogIndex {
        self.snapshot.index.next()
    }

    pub fn last_index(&self) -> LogIndex {
        self.snapshot.index.plus(self.entries.len() as u64)
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    fn position(&self, index: LogIndex) -> Option<usize> {
        if index <= self.snapshot.index || index > self.last_index() {
            return None;
        }
        Some((index.distance_from(self.snapshot.index) - 1) as usize)
    }

    /// The term of the entry at `index`: known for the snapshot's last index and every entry
    /// after it; `None` below the snapshot (compacted) or past the end.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.position(index).map(|p| self.entries[p].term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.position(index).map(|p| &self.entries[p])
    }

    /// Entries starting at `from` (which must be after the snapshot): at most `count_max`, and
    /// no more than `bytes_max` application bytes unless the first entry alone exceeds it.
    pub fn entries_from(&self, from: LogIndex, count_max: usize, bytes_max: usize) -> Vec<Entry> {
        assert!(from > self.snapshot.index, "entries below the snapshot");
        let Some(p) = self.position(from) else {
            assert_eq!(from, self.last_index().next(), "entries past the end");
            return Vec::new();
        };
        let mut bytes = 0;
        let mut batch = Vec::new();
        for entry in self.entries[p..].iter().take(count_max) {
            bytes += entry.data.size_bytes();
            if bytes > bytes_max && !batch.is_empty() {
                break;
            }
            batch.push(entry.clone());
        }
        batch
    }

    /// Appends one entry at the end (Leader Append-Only for a leader, §5.3 for a follower).
    pub fn append<S: Storage>(
        &mut self,
        storage: &mut S,
        table: &str,
        entry: Entry,
    ) -> Result<(), StorageError> {
        assert_eq!(
            entry.index,
            self.last_index().next(),
            "appends are contiguous"
        );
        assert!(
            entry.term >= self.last_term(),
            "terms in a log never decrease"
        );
        persist::put_entry(storage, table, &entry)?;
        self.entries.push(entry);
        Ok(())
    }

    /// Removes the entries at `from` and after (§5.3: a conflicting entry and all that follow
    /// it). Deletes from the tail down, so a crash leaves a shorter log, never a hole.
    pub fn truncate_from<S: Storage>(
        &mut self,
        storage: &mut S,
        table: &str,
        from: LogIndex,
    ) -> Result<(), StorageError> {
        assert!(
            from > self.snapshot.index,
            "the snapshot is never truncated"
        );
        let Some(p) = self.position(from) else {
            return Ok(());
        };
        let mut index = self.last_index();
        while index >= from {
            persist::delete_entry(storage, table, index)?;
            index = index.prev();
        }
        self.entries.truncate(p);
        Ok(())
    }

    /// The first index of the run of `term` that ends at `index`, but not below `floor`: the
    /// conflict hint a follower returns (§5.3).
    pub fn first_index_of_term(&self, term: Term, index: LogIndex, floor: LogIndex) -> LogIndex {
        let floor = floor.max(self.first_index());
        let Some(end) = self.position(index) else {
            return index;
        };
        let p = self.entries[..=end].partition_point(|e| e.term < term);
        self.snapshot.index.plus(p as u64 + 1).max(floor).min(index)
    }

    /// The last index before `before` whose entry has term `term`, if this log holds one: where
    /// a leader resumes after a follower reports a conflict in `term`.
    pub fn last_index_of_term_before(&self, term: Term, before: LogIndex) -> Option<LogIndex> {
        let end = match self.position(before) {
            Some(p) => p,
            None if before > self.last_index() => self.entries.len(),
            None => return None,
        };
        let p = self.entries[..end].partition_point(|e| e.term <= term);
        if p > 0 && self.entries[p - 1].term == term {
            Some(self.entries[p - 1].index)
        } else {
            None
        }
    }

    /// The latest configuration in the log, committed or not (thesis §4.1), with the index of
    /// the entry that set it (the snapshot's index if none after it did).
    pub fn latest_config(&self) -> (LogIndex, &BTreeSet<NodeId>, &BTreeSet<NodeId>) {
        self.config_at(self.last_index())
    }

    /// The configuration in force at `index` (at or after the snapshot): the index of the entry
    /// that set it, its voters and its learners.
    pub fn config_at(&self, index: LogIndex) -> (LogIndex, &BTreeSet<NodeId>, &BTreeSet<NodeId>) {
        assert!(index >= self.snapshot.index && index <= self.last_index());
        let end = self.position(index).map_or(0, |p| p + 1);
        self.entries[..end]
            .iter()
            .rev()
            .find_map(|e| match &e.data {
                EntryData::Membership { voters, learners } => Some((e.index, voters, learners)),
                _ => None,
            })
            .unwrap_or((
                self.snapshot.index,
                &self.snapshot.voters,
                &self.snapshot.learners,
            ))
    }

    /// Replaces the prefix up to `snapshot.index` (which this log holds) by `snapshot` (§7).
    pub fn compact<S: Storage>(
        &mut self,
        storage: &mut S,
        table: &str,
        snapshot: Snapshot,
    ) -> Result<(), StorageError> {
        assert!(snapshot.index > self.snapshot.index);
        assert_eq!(self.term_at(snapshot.index), Some(snapshot.term));
        persist::put_snapshot(storage, table, &snapshot)?;
        let covered = snapshot.index.distance_from(self.snapshot.index) as usize;
        for entry in &self.entries[..covered] {
            persist::delete_entry(storage, table, entry.index)?;
        }
        self.entries.drain(..covered);
        self.snapshot = snapshot;
        Ok(())
    }

    /// Replaces the snapshot by one of the same index and term (the same prefix, its state
    /// materialized).
    pub fn replace_snapshot<S: Storage>(
        &mut self,
        storage: &mut S,
        table: &str,
        snapshot: Snapshot,
    ) -> Result<(), StorageError> {
        assert_eq!(snapshot.index, self.snapshot.index);
        assert_eq!(snapshot.term, self.snapshot.term);
        persist::put_snapshot(storage, table, &snapshot)?;
        self.snapshot = snapshot;
        Ok(())
    }

    /// Installs a leader's snapshot (§7, Figure 13): if this log holds the snapshot's last entry
    /// (same index and term) the entries after it are kept; otherwise the whole log is replaced.
    pub fn install<S: Storage>(
        &mut self,
        storage: &mut S,
        table: &str,
        snapshot: Snapshot,
    ) -> Result<(), StorageError> {
        assert!(snapshot.index > self.snapshot.index);
        if self.term_at(snapshot.index) == Some(snapshot.term) {
            return self.compact(storage, table, snapshot);
        }
        // Drop the whole log first (tail down), then record the snapshot: a crash in between
        // leaves a shorter log, never entries that contradict the snapshot.
        let first = self.first_index();
        self.truncate_from(storage, table, first)?;
        persist::put_snapshot(storage, table, &snapshot)?;
        self.snapshot = snapshot;
        Ok(())
    }

    /// Log Matching on this log alone: contiguous indexes, terms that never decrease.
    pub fn check(&self) {
        let mut expected = self.snapshot.index;
        let mut term = self.snapshot.term;
        for e in &self.entries {
            expected = expected.next();
            assert_eq!(e.index, expected, "log indexes are contiguous");
            assert!(e.term >= term, "log terms never decrease");
            term = e.term;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triarch_storage::SimDisk;

    const T: &str = "raft.g";

    fn log_with_terms(terms: &[u64]) -> (RaftLog, SimDisk) {
        let mut disk = SimDisk::new();
        let term = Term(terms.iter().copied().max().unwrap_or(0));
        let hard_state = persist::HardState {
            term,
            voted_for: None,
        };
        persist::put_hard_state(&mut disk, T, hard_state).unwrap();
        let mut log = RaftLog::new(Snapshot::initial([NodeId(1)].into()), Vec::new());
        for (k, &t) in terms.iter().enumerate() {
            let entry = Entry {
                term: Term(t),
                index: LogIndex(k as u64 + 1),
                data: EntryData::Noop,
            };
            log.append(&mut disk, T, entry).unwrap();
        }
        (log, disk)
    }

    #[test]
    fn terms_and_indexes_around_the_snapshot() {
        let (log, _) = log_with_terms(&[1, 1, 2]);
        assert_eq!(log.term_at(LogIndex(0)), Some(Term(0)));
        assert_eq!(log.term_at(LogIndex(3)), Some(Term(2)));
        assert_eq!(log.term_at(LogIndex(4)), None);
        assert_eq!(log.entries_from(LogIndex(2), 10, usize::MAX).len(), 2);
        assert_eq!(log.entries_from(LogIndex(2), 1, usize::MAX).len(), 1);
        assert_eq!(log.entries_from(LogIndex(4), 10, usize::MAX).len(), 0);
    }

    #[test]
    fn an_append_batch_respects_the_byte_limit_but_carries_at_least_one_entry() {
        let mut disk = SimDisk::new();
        persist::put_hard_state(
            &mut disk,
            T,
            persist::HardState {
                term: Term(1),
                voted_for: None,
            },
        )
        .unwrap();
        let mut log = RaftLog::new(Snapshot::initial([NodeId(1)].into()), Vec::new());
        for k in 1..=4 {
            let entry = Entry {
                term: Term(1),
                index: LogIndex(k),
                data: EntryData::Application(bytes::Bytes::from(vec![0; 100])),
            };
            log.append(&mut disk, T, entry).unwrap();
        }
        assert_eq!(log.entries_from(LogIndex(1), 10, 250).len(), 2);
        assert_eq!(log.entries_from(LogIndex(1), 10, 10).len(), 1);
        assert_eq!(log.entries_from(LogIndex(1), 10, 400).len(), 4);
    }

    #[test]
    fn conflict_hints_skip_a_whole_term() {
        let (log, _) = log_with_terms(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(
            log.first_index_of_term(Term(2), LogIndex(5), LogIndex(1)),
            LogIndex(3)
        );
        assert_eq!(
            log.first_index_of_term(Term(2), LogIndex(5), LogIndex(4)),
            LogIndex(4)
        );
        assert_eq!(
            log.last_index_of_term_before(Term(2), LogIndex(6)),
            Some(LogIndex(5))
        );
        assert_eq!(
            log.last_index_of_term_before(Term(2), LogIndex(4)),
            Some(LogIndex(3))
        );
        assert_eq!(log.last_index_of_term_before(Term(3), LogIndex(7)), None);
        assert_eq!(
            log.last_index_of_term_before(Term(4), LogIndex(9)),
            Some(LogIndex(6))
        );
    }

    #[test]
    fn a_truncation_interrupted_by_a_crash_leaves_a_shorter_log() {
        let (mut log, mut disk) = log_with_terms(&[1, 1, 1, 1]);
        disk.sync().unwrap();
        log.truncate_from(&mut disk, T, LogIndex(2)).unwrap();
        assert_eq!(log.last_index(), LogIndex(1));
        // Keep only the first delete (of the last entry): a shorter, gap-free log.
        disk.crash_keeping_prefix(1);
        let r = persist::load(&disk, T).unwrap();
        assert_eq!(r.entries.len(), 3);
    }

    #[test]
    fn installing_a_matching_snapshot_keeps_the_suffix_and_a_conflicting_one_drops_the_log() {
        let (mut log, mut disk) = log_with_terms(&[1, 1, 2, 2]);
        let snapshot = |index, term| Snapshot {
            index: LogIndex(index),
            term: Term(term),
            voters: [NodeId(1)].into(),
            learners: Default::default(),
            data: bytes::Bytes::new(),
        };
        log.install(&mut disk, T, snapshot(2, 1)).unwrap();
        assert_eq!(log.last_index(), LogIndex(4));
        assert_eq!(log.first_index(), LogIndex(3));
        log.install(&mut disk, T, snapshot(3, 3)).unwrap();
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.last_term(), Term(3));
        let r = persist::load(&disk, T).unwrap();
        assert!(r.entries.is_empty());
        assert_eq!(r.snapshot.unwrap().index, LogIndex(3));
    }
}
