//! The leader's side: replication to each follower (probe, pipelined replicate, snapshot),
//! the commit rule (§5.3, §5.4.2), ReadIndex rounds (thesis §6.4), heartbeats and CheckQuorum
//! (thesis §6.2).

use super::{Env, Mode, Output, PendingRead, Progress, Raft, Role};
use crate::message::{AppendOutcome, MessageKind};
use crate::types::{Entry, EntryData, LogIndex};
use triarch_core::{NodeId, RequestId};
use triarch_storage::{Storage, StorageError};

/// A replicating follower whose appends have gone unacknowledged for this many heartbeat
/// intervals is probed again from the last index it acknowledged (its appends or their
/// acknowledgements were lost).
const REPLICATE_STALL_HEARTBEATS: u32 = 2;
/// With leases: unacknowledged read rounds remembered (older ones can no longer extend a lease
/// anyway: a lease lasts less than an election timeout, ten heartbeats by default).
const ROUNDS_MAX: usize = 64;

impl Raft {
    /// The largest value that a quorum of voters has reached: `own` for this server (if it
    /// votes), `of(progress)` for the others. Learners never count (thesis §4.2.1).
    pub(super) fn quorum_agreed<T: Ord + Copy>(&self, own: T, of: impl Fn(&Progress) -> T) -> T {
        self.quorum_agreed_among(&self.voters, own, of)
    }

    /// [`Raft::quorum_agreed`] over `members`, with a majority of the voters as the quorum.
    fn quorum_agreed_among<T: Ord + Copy>(
        &self,
        members: &std::collections::BTreeSet<NodeId>,
        own: T,
        of: impl Fn(&Progress) -> T,
    ) -> T {
        let lead = self.lead.as_ref().expect("only a leader counts quorums");
        let mut values: Vec<T> = members
            .iter()
            .map(|v| {
                if *v == self.id {
                    own
                } else {
                    of(&lead.progress[v])
                }
            })
            .collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        values[self.quorum() - 1]
    }

    pub(super) fn handle_append_response(&mut self, from: NodeId, outcome: AppendOutcome) {
        let last_index = self.log.last_index();
        let Some(lead) = &mut self.lead else {
            return;
        };
        let Some(pr) = lead.progress.get_mut(&from) else {
            return; // no longer a member
        };
        pr.recently_active = true;
        match outcome {
            AppendOutcome::Accepted { match_index } => {
                assert!(
                    match_index <= last_index,
                    "{from} acknowledges entries up to {match_index}, past the leader's log"
                );
                if match_index < pr.match_index {
                    return; // an older acknowledgement, overtaken
                }
                let progressed = match_index > pr.match_index;
                pr.match_index = match_index;
                pr.next_index = pr.next_index.max(match_index.next());
                while pr.in_flight.front().is_some_and(|i| *i <= match_index) {
                    pr.in_flight.pop_front();
                }
                if progressed {
                    pr.heartbeats_without_progress = 0;
                }
                match pr.mode {
                    // The logs match up to match_index: pipeline from there.
                    Mode::Probe { .. } => {
                        pr.mode = Mode::Replicate;
                        pr.next_index = match_index.next();
                    }
                    Mode::Snapshot { index } if match_index >= index => {
                        pr.mode = Mode::Replicate;
                        pr.next_index = match_index.next();
                    }
                    Mode::Snapshot { .. } | Mode::Replicate => {}
                }
                let transfer_ready =
                    lead.transfer.is_some_and(|t| t.to == from) && match_index == last_index;
                if progressed {
                    self.maybe_commit();
                }
                if transfer_ready {
                    self.send(from, MessageKind::TimeoutNow);
                }
            }
            AppendOutcome::Rejected {
                prev_index,
                conflict_index,
                conflict_term,
            } => {
                let stale = match pr.mode {
                    Mode::Replicate => prev_index <= pr.match_index,
                    Mode::Probe { .. } => prev_index != pr.next_index.prev(),
                    Mode::Snapshot { .. } => true,
                };
                if stale {
                    return;
                }
                // Skip the follower's whole conflicting term (§5.3): resume after this log's
                // last entry of that term if it has one, else at the follower's first entry of
                // it. Never past the rejected index, never at or below what is known to match.
                let hint = match conflict_term {
                    Some(term) => self
                        .log
                        .last_index_of_term_before(term, prev_index)
                        .map_or(conflict_index, LogIndex::next),
                    None => conflict_index,
                };
                pr.next_index = hint.min(prev_index).max(pr.match_index.next());
                pr.mode = Mode::Probe { paused: false };
                pr.in_flight.clear();
            }
        }
        if self.lead.is_some() {
            self.send_appends_to(from);
        }
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) {
        let last_index = self.log.last_index();
        let Some(lead) = &mut self.lead else {
            return;
        };
        let Some(pr) = lead.progress.get_mut(&from) else {
            return;
        };
        pr.recently_active = true;
        pr.read_seq_acked = pr.read_seq_acked.max(read_seq.min(lead.read_seq));
        // A paused probe stays paused: the heartbeat tick re-sends it, and un-pausing here too
        // would send duplicate probes.
        let behind = pr.match_index < last_index;
        self.confirm_reads();
        if behind {
            self.send_appends_to(from);
        }
    }

    /// Appends an entry of the current term to the leader's own log (Leader Append-Only).
    pub(super) fn append_own<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        data: EntryData,
    ) -> Result<LogIndex, StorageError> {
        assert_eq!(self.role, Role::Leader);
        let index = self.log.last_index().next();
        let membership = matches!(data, EntryData::Membership { .. });
        let entry = Entry {
            term: self.term,
            index,
            data,
        };
        self.log.append(env.storage, &self.table, entry)?;
        if membership {
            self.refresh_voters();
        }
        Ok(index)
    }

    /// Sends what is owed to every follower.
    pub(super) fn broadcast_appends(&mut self) {
        let followers: Vec<NodeId> = match &self.lead {
            Some(lead) => lead.progress.keys().copied().collect(),
            None => return,
        };
        for to in followers {
            self.send_appends_to(to);
        }
    }

    pub(super) fn send_appends_to(&mut self, to: NodeId) {
        while self.send_append(to) {}
    }

    /// Sends one append (or the snapshot) to `to` if its mode allows; returns whether it did
    /// and another may follow.
    pub(super) fn send_append(&mut self, to: NodeId) -> bool {
        let entries_max = self.config.entries_per_append_max;
        let bytes_max = self.config.append_bytes_max;
        let in_flight_max = self.config.appends_in_flight_max;
        let last_index = self.log.last_index();
        let lead = self.lead.as_mut().expect("only a leader replicates");
        let pr = lead
            .progress
            .get_mut(&to)
            .expect("progress for every voter");
        match pr.mode {
            Mode::Snapshot { .. } | Mode::Probe { paused: true } => return false,
            Mode::Replicate if pr.in_flight.len() >= in_flight_max => return false,
            Mode::Replicate if pr.next_index > last_index => return false,
            Mode::Replicate | Mode::Probe { paused: false } => {}
        }
        let prev_index = pr.next_index.prev();
        let (kind, more) = match self.log.term_at(prev_index) {
            None if self.config.snapshots_on_demand && self.log.snapshot().data.is_empty() => {
                // The entries this follower needs are compacted and the snapshot holds no
                // state yet: ask the application for it, if the follower answers at all (a
                // member that is down would make the leader copy its state at every
                // compaction for nothing); the probe resumes once it is there
                // (`Raft::compact`), or at the next heartbeat.
                pr.mode = Mode::Probe { paused: true };
                if pr.recently_active {
                    self.outputs.push_back(Output::SnapshotWanted);
                }
                return false;
            }
            None => {
                // The entries this follower needs are compacted: send the snapshot (§7).
                let snapshot = self.log.snapshot().clone();
                tracing::debug!(
                    node = %self.id, group = self.config.group, %to, index = snapshot.index.0,
                    "sending snapshot"
                );
                pr.mode = Mode::Snapshot {
                    index: snapshot.index,
                };
                pr.next_index = snapshot.index.next();
                pr.in_flight.clear();
                pr.heartbeats_without_progress = 0;
                (MessageKind::InstallSnapshot { snapshot }, false)
            }
            Some(prev_term) => {
                let entries = self.log.entries_from(pr.next_index, entries_max, bytes_max);
                let more = match pr.mode {
                    Mode::Replicate => {
                        let last = entries.last().expect("checked: entries to send").index;
                        if pr.in_flight.is_empty() {
                            pr.heartbeats_without_progress = 0;
                        }
                        pr.next_index = last.next();
                        pr.in_flight.push_back(last);
                        true
                    }
                    _ => {
                        pr.mode = Mode::Probe { paused: true };
                        false
                    }
                };
                let kind = MessageKind::Append {
                    prev_index,
                    prev_term,
                    entries,
                    leader_commit: self.commit,
                };
                (kind, more)
            }
        };
        self.send(to, kind);
        more
    }

    pub(super) fn broadcast_heartbeats(&mut self) {
        let Some(lead) = &self.lead else {
            return;
        };
        let read_seq = lead.read_seq;
        let beats: Vec<(NodeId, LogIndex, bool)> = lead
            .progress
            .iter()
            .map(|(to, pr)| {
                let complete = pr.match_index >= self.commit;
                (*to, pr.match_index.min(self.commit), complete)
            })
            .collect();
        for (to, commit, complete) in beats {
            let kind = MessageKind::Heartbeat {
                commit,
                read_seq,
                complete,
            };
            self.send(to, kind);
        }
    }

    /// Commits the largest index a quorum holds, if it is of the current term (§5.4.2: entries
    /// of earlier terms are committed only indirectly, Figure 8).
    pub(super) fn maybe_commit(&mut self) {
        if self.lead.is_none() {
            return;
        }
        let last_index = self.log.last_index();
        // The leader's own copy counts once durable (always, without parallel appends: they
        // leave only after the leader's sync).
        let own = if self.config.parallel_append {
            self.durable.min(last_index)
        } else {
            last_index
        };
        let candidate = if self.config.bug_commit_without_majority {
            last_index
        } else if self.config.bug_learner_counts_toward_commit {
            // PLANTED BUG: learners' copies count as if they were voters' copies.
            let members = self.voters.union(&self.learners).copied().collect();
            self.quorum_agreed_among(&members, own, |pr| pr.match_index)
        } else {
            self.quorum_agreed(own, |pr| pr.match_index)
        };
        if candidate > self.commit && self.log.term_at(candidate) == Some(self.term) {
            self.advance_commit(candidate);
        }
    }

    pub(super) fn start_read(&mut self, ctx: RequestId) {
        let commit = self.commit;
        let now = self.now;
        let leases = self.config.lease_reads;
        let lead = self.lead.as_mut().expect("only a leader serves reads");
        lead.read_seq += 1;
        if leases {
            lead.rounds.push_back((lead.read_seq, now));
        }
        lead.reads.push_back(PendingRead {
            seq: lead.read_seq,
            ctx,
            index: commit,
        });
        lead.heartbeat_pending = true;
        self.confirm_reads();
    }

    /// Releases the reads whose round a quorum has acknowledged.
    pub(super) fn confirm_reads(&mut self) {
        let Some(lead) = &self.lead else {
            return;
        };
        let acked = self.quorum_agreed(lead.read_seq, |pr| pr.read_seq_acked);
        // The lease: a quorum heard from this leader after the round it acknowledged started.
        let lease = self.config.election_timeout_min.as_micros() as u64
            * u64::from(1000 - self.config.lease_clock_drift_permille)
            / 1000;
        let lead = self.lead.as_mut().expect("checked above");
        let mut started = None;
        while lead.rounds.front().is_some_and(|(seq, _)| *seq <= acked) {
            started = lead.rounds.pop_front().map(|(_, at)| at);
        }
        if let Some(at) = started {
            let until = at + std::time::Duration::from_micros(lease);
            lead.lease_until = Some(lead.lease_until.map_or(until, |u| u.max(until)));
        }
        while lead.reads.front().is_some_and(|r| r.seq <= acked) {
            let read = lead.reads.pop_front().expect("checked non-empty");
            self.outputs.push_back(Output::ReadReady {
                ctx: read.ctx,
                index: read.index,
            });
        }
    }

    /// Sends what proposals and reads made since the last flush require: one append per
    /// follower for a batch of proposals, one heartbeat round for a batch of reads.
    pub(super) fn flush(&mut self) {
        let Some(lead) = &mut self.lead else {
            return;
        };
        let replicate = std::mem::take(&mut lead.replicate_pending);
        let heartbeat = std::mem::take(&mut lead.heartbeat_pending);
        if replicate {
            self.broadcast_appends();
        }
        if heartbeat {
            self.broadcast_heartbeats();
        }
    }

    pub(super) fn heartbeat_tick(&mut self) {
        let snapshot_patience = (self.config.election_timeout_max.as_micros()
            / self.config.heartbeat_interval.as_micros())
        .max(2) as u32;
        let deadline = self.now + self.config.heartbeat_interval;
        let now = self.now;
        let leases = self.config.lease_reads;
        let lead = self.lead.as_mut().expect("only a leader beats");
        lead.heartbeat_deadline = deadline;
        if leases {
            // Every heartbeat is a round, so that the lease keeps being renewed without reads.
            // A round that is never acknowledged cannot extend it; a bounded backlog of them is
            // enough.
            lead.read_seq += 1;
            lead.rounds.push_back((lead.read_seq, now));
            if lead.rounds.len() > ROUNDS_MAX {
                lead.rounds.pop_front();
            }
        }
        for pr in lead.progress.values_mut() {
            pr.heartbeats_without_progress = pr.heartbeats_without_progress.saturating_add(1);
            let stalled = match pr.mode {
                // One probe per heartbeat while the follower does not answer.
                Mode::Probe { .. } => {
                    pr.mode = Mode::Probe { paused: false };
                    false
                }
                Mode::Replicate => {
                    !pr.in_flight.is_empty()
                        && pr.heartbeats_without_progress >= REPLICATE_STALL_HEARTBEATS
                }
                Mode::Snapshot { .. } => pr.heartbeats_without_progress >= snapshot_patience,
            };
            if stalled {
                // Probe again from what is known to match; lost appends are re-sent.
                pr.mode = Mode::Probe { paused: false };
                pr.next_index = pr.match_index.next();
                pr.in_flight.clear();
            }
        }
        self.broadcast_heartbeats();
        self.broadcast_appends();
        if leases {
            // A single-server group acknowledges its own rounds.
            self.confirm_reads();
        }
    }

    /// CheckQuorum (thesis §6.2): returns whether this server still leads.
    pub(super) fn check_quorum_tick(&mut self) -> bool {
        let deadline = self.now + self.config.election_timeout_min;
        let lead = self.lead.as_ref().expect("only a leader checks its quorum");
        let active = self
            .voters
            .iter()
            .filter(|v| **v == self.id || lead.progress[v].recently_active)
            .count();
        if active < self.quorum() {
            tracing::warn!(
                node = %self.id, group = self.config.group, term = self.term.0, active,
                "lost contact with a quorum: stepping down"
            );
            self.step_down(None);
            return false;
        }
        let lead = self.lead.as_mut().expect("still leading");
        for pr in lead.progress.values_mut() {
            pr.recently_active = false;
        }
        lead.check_quorum_deadline = Some(deadline);
        true
    }
}
