//! The receiving side of the protocol: votes and pre-votes (§5.2, §5.4.1, thesis §9.6),
//! appends (§5.3) and snapshots (§7) from a leader.

use super::{Env, Output, Raft, Role};
use crate::message::{AppendOutcome, MessageKind};
use crate::types::{Entry, EntryData, LogIndex, Snapshot, Term};
use triarch_core::NodeId;
use triarch_storage::{Storage, StorageError};

impl Raft {
    pub(super) fn log_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        // §5.4.1: compare the last terms, then the lengths.
        (last_term, last_index) >= (self.log.last_term(), self.log.last_index())
    }

    pub(super) fn handle_pre_vote(
        &mut self,
        from: NodeId,
        term: Term,
        last_index: LogIndex,
        last_term: Term,
    ) {
        // Thesis §9.6: grant if the candidate could win (its log is up to date) and this server
        // has not heard from a leader for an election timeout.
        let granted = term > self.term
            && self.log_up_to_date(last_index, last_term)
            && !self.leader_recently_heard();
        let reply_term = if granted { term } else { self.term };
        self.send_with_term(from, reply_term, MessageKind::PreVoteResponse { granted });
    }

    pub(super) fn handle_pre_vote_response<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        term: Term,
        granted: bool,
    ) -> Result<(), StorageError> {
        if granted {
            if self.role == Role::PreCandidate
                && term == self.term.next()
                && self.voters.contains(&from)
            {
                self.votes.insert(from);
                if self.has_quorum(&self.votes) {
                    self.start_election(env, false)?;
                }
            }
        } else if term > self.term {
            self.become_follower(env, term, None)?;
        }
        Ok(())
    }

    pub(super) fn handle_request_vote<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        last_index: LogIndex,
        last_term: Term,
    ) -> Result<(), StorageError> {
        // §5.2: one vote per term, first come first served; never for a candidate in a term
        // whose leader is known. §5.4.1: only for a candidate whose log is up to date.
        // A learner answers too (thesis §4.1: servers answer without consulting their
        // configuration): it may have been promoted without knowing yet, and a candidate that
        // knows may need its vote (etcd's raft does the same). A candidate never asks, nor
        // counts, a server that is a learner in its own configuration, so a learner's vote
        // never elects anyone while it is a learner.
        let can_vote = self.voted_for == Some(from)
            || (self.voted_for.is_none() && self.term_leader.is_none());
        let granted = can_vote && self.log_up_to_date(last_index, last_term);
        if granted {
            if self.voted_for.is_none() {
                self.voted_for = Some(from);
                // The vote is staged before the response that reveals it.
                self.persist_hard_state(env.storage)?;
            }
            self.reset_election_timer();
        }
        self.send(from, MessageKind::VoteResponse { granted });
        Ok(())
    }

    pub(super) fn handle_append<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        mut prev_index: LogIndex,
        mut prev_term: Term,
        mut entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) -> Result<(), StorageError> {
        self.follow(env, from)?;
        for (k, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                prev_index.plus(k as u64 + 1),
                "appends are contiguous"
            );
            assert!(
                entry.term <= self.term,
                "an append carries no entry from a future term"
            );
        }
        if prev_index < self.commit {
            // Entries up to the commit index are committed, hence identical to the leader's
            // (State Machine Safety): skip them. This also covers a compacted prefix.
            let skip = self.commit.distance_from(prev_index) as usize;
            if entries.len() <= skip {
                let outcome = AppendOutcome::Accepted {
                    match_index: self.commit,
                };
                self.send(from, MessageKind::AppendResponse(outcome));
                return Ok(());
            }
            prev_term = entries[skip - 1].term;
            assert_eq!(
                self.log.term_at(self.commit),
                Some(prev_term),
                "State Machine Safety violated: a committed entry differs from the leader's"
            );
            prev_index = self.commit;
            entries.drain(..skip);
        }
        match self.log.term_at(prev_index) {
            None => {
                let outcome = AppendOutcome::Rejected {
                    prev_index,
                    conflict_index: self.log.last_index().next(),
                    conflict_term: None,
                };
                self.send(from, MessageKind::AppendResponse(outcome));
            }
            Some(term) if term != prev_term => {
                let conflict_index =
                    self.log
                        .first_index_of_term(term, prev_index, self.commit.next());
                let outcome = AppendOutcome::Rejected {
                    prev_index,
                    conflict_index,
                    conflict_term: Some(term),
                };
                self.send(from, MessageKind::AppendResponse(outcome));
            }
            Some(_) => {
                // Log Matching (§5.3): the logs agree up to prev_index. Append what is new,
                // truncating at the first conflict; never truncate because a (reordered, older)
                // append is shorter than the log.
                let last_new = prev_index.plus(entries.len() as u64);
                let mut voters_changed = false;
                for entry in entries {
                    match self.log.term_at(entry.index) {
                        Some(term) if term == entry.term => continue,
                        Some(_) => {
                            assert!(
                                entry.index > self.commit,
                                "State Machine Safety violated: committed entry {} would be overwritten",
                                entry.index
                            );
                            self.log
                                .truncate_from(env.storage, &self.table, entry.index)?;
                            self.note_truncated(entry.index);
                            voters_changed = true;
                        }
                        None => {}
                    }
                    voters_changed |= matches!(entry.data, EntryData::Membership { .. });
                    self.log.append(env.storage, &self.table, entry)?;
                }
                if voters_changed {
                    self.refresh_voters();
                }
                let commit = leader_commit.min(last_new);
                if commit > self.commit {
                    self.advance_commit(commit);
                }
                if self.commit >= leader_commit {
                    self.caught_up_at = Some(self.now);
                }
                let outcome = AppendOutcome::Accepted {
                    match_index: last_new,
                };
                self.send(from, MessageKind::AppendResponse(outcome));
            }
        }
        Ok(())
    }

    pub(super) fn handle_install_snapshot<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        from: NodeId,
        snapshot: Snapshot,
    ) -> Result<(), StorageError> {
        self.follow(env, from)?;
        if snapshot.index <= self.commit {
            let outcome = AppendOutcome::Accepted {
                match_index: self.commit,
            };
            self.send(from, MessageKind::AppendResponse(outcome));
            return Ok(());
        }
        let index = snapshot.index;
        let first = self.log.first_index();
        self.log
            .install(env.storage, &self.table, snapshot.clone())?;
        self.note_truncated(first);
        self.commit = index;
        self.applied = index;
        tracing::info!(
            node = %self.id, group = self.config.group, term = self.term.0, index = index.0,
            "snapshot installed"
        );
        self.outputs.push_back(Output::RestoreSnapshot { snapshot });
        self.refresh_voters();
        let outcome = AppendOutcome::Accepted { match_index: index };
        self.send(from, MessageKind::AppendResponse(outcome));
        Ok(())
    }
}
