//! Scenario tests for the rules of the Raft paper (§5, Figures 2, 3, 7 and 8) and of the
//! thesis extensions (PreVote §9.6, CheckQuorum §6.2 and §4.2.3, ReadIndex §6.4, leadership
//! transfer §3.10, membership §4.1). Each test names the rule it checks and quotes it. Every
//! step also runs the cluster-wide safety checker and each member's `check_invariants`.

use super::cluster::{Cluster, Envelope, append_commands, is_append, is_vote_request, n};
use crate::{
    AppendOutcome, CompactError, Entry, EntryData, LogIndex, MembershipChange, MembershipError,
    Message, MessageKind, Output, ProposeError, Raft, RaftConfig, ReadError, RecoveryError, Role,
    Term, TransferError,
};
use bytes::Bytes;
use std::cell::Cell;
use std::time::Duration;
use triarch_core::{DetRng, Instant, NodeId, RequestId};
use triarch_storage::SimDisk;

fn is_vote_traffic(e: &Envelope) -> bool {
    matches!(
        e.message.kind,
        MessageKind::RequestVote { .. } | MessageKind::VoteResponse { .. }
    )
}

fn between(e: &Envelope, a: u32, b: u32) -> bool {
    (e.from, e.to) == (n(a), n(b)) || (e.from, e.to) == (n(b), n(a))
}

fn vote_responses(c: &Cluster, from: u32, to: u32) -> Vec<bool> {
    c.in_flight
        .iter()
        .filter(|e| (e.from, e.to) == (n(from), n(to)))
        .filter_map(|e| match e.message.kind {
            MessageKind::VoteResponse { granted } => Some(granted),
            _ => None,
        })
        .collect()
}

fn take_one(c: &mut Cluster, select: impl Fn(&Envelope) -> bool) -> Envelope {
    let k = c
        .in_flight
        .iter()
        .position(select)
        .expect("the message is in flight");
    c.in_flight.remove(k).expect("found")
}

fn events_of(c: &Cluster, id: u32) -> Vec<Output> {
    c.events
        .iter()
        .filter(|(from, _)| *from == n(id))
        .map(|(_, o)| o.clone())
        .collect()
}

fn read_ready(c: &Cluster, id: u32) -> Vec<(u64, LogIndex)> {
    events_of(c, id)
        .into_iter()
        .filter_map(|o| match o {
            Output::ReadReady { ctx, index } => Some((ctx.0, index)),
            _ => None,
        })
        .collect()
}

// ----- §5.1, §5.2: terms and leader election -----

/// §5.2 "To begin an election, a follower increments its current term and transitions to
/// candidate state. It then votes for itself and issues RequestVote RPCs in parallel to each of
/// the other servers." Figure 2: the term and vote are persistent state.
#[test]
fn election_5_2_a_follower_that_times_out_becomes_a_candidate_votes_for_itself_and_asks_everyone() {
    let mut c = Cluster::new(3);
    c.fire(1);
    assert_eq!(c.role(1), Role::Candidate);
    assert_eq!(c.term(1), Term(1));
    assert_eq!(c.raft(1).voted_for(), Some(n(1)));
    let asked: Vec<NodeId> = c
        .in_flight
        .iter()
        .filter(|e| is_vote_request(e))
        .map(|e| e.to)
        .collect();
    assert_eq!(asked, vec![n(2), n(3)]);
    c.crash(1);
    c.restart(1);
    assert_eq!(c.term(1), Term(1), "the term is durable");
    assert_eq!(c.raft(1).voted_for(), Some(n(1)), "the vote is durable");
}

/// §5.2 "A candidate wins an election if it receives votes from a majority of the servers in
/// the full cluster for the same term." §5.4.2 / thesis §6.4: the new leader appends a no-op.
#[test]
fn election_5_2_a_candidate_wins_with_votes_from_a_majority_and_appends_a_no_op() {
    let mut c = Cluster::new(5);
    c.fire(1);
    c.deliver_while(|e| between(e, 1, 2) && is_vote_traffic(e));
    assert_eq!(
        c.role(1),
        Role::Candidate,
        "2 votes of 5 are not a majority"
    );
    c.deliver_while(|e| between(e, 1, 3) && is_vote_traffic(e));
    assert_eq!(c.role(1), Role::Leader, "3 votes of 5 are");
    let noop = c.raft(1).entry(LogIndex(1)).unwrap();
    assert_eq!((noop.term, &noop.data), (Term(1), &EntryData::Noop));
    assert!(events_of(&c, 1).contains(&Output::LeaderChanged {
        term: Term(1),
        leader: Some(n(1)),
    }));
}

/// §5.2 "While waiting for votes, a candidate may receive an AppendEntries RPC from another
/// server claiming to be leader. If the leader's term ... is at least as large as the
/// candidate's current term, then the candidate recognizes the leader as legitimate and returns
/// to follower state."
#[test]
fn election_5_2_a_candidate_that_hears_from_the_leader_of_its_term_becomes_a_follower() {
    let mut c = Cluster::new(3);
    c.fire(1);
    c.fire(2);
    assert_eq!((c.term(1), c.term(2)), (Term(1), Term(1)));
    c.deliver_while(|e| between(e, 1, 3));
    assert!(c.raft(1).is_leader());
    assert_eq!(c.role(2), Role::Candidate);
    c.deliver_all();
    assert_eq!(c.role(2), Role::Follower);
    assert_eq!(c.raft(2).leader(), Some(n(1)));
    assert_eq!(c.term(2), Term(1));
}

/// §5.2 "if many followers become candidates at the same time, votes could be split so that no
/// candidate obtains a majority. When this happens, each candidate will time out and start a new
/// election by incrementing its term."
#[test]
fn election_5_2_a_split_vote_ends_in_a_timeout_and_a_new_election_in_a_higher_term() {
    let mut c = Cluster::new(4);
    c.fire(1);
    c.fire(2);
    c.deliver_while(|e| between(e, 1, 3) || between(e, 2, 4));
    c.deliver_all();
    assert_eq!((c.role(1), c.role(2)), (Role::Candidate, Role::Candidate));
    c.fire(1);
    c.deliver_all();
    assert!(c.raft(1).is_leader());
    assert_eq!(c.term(1), Term(2));
}

/// §5.2 "Each server will vote for at most one candidate in a given term, on a
/// first-come-first-served basis" — and Figure 2 makes `votedFor` persistent, so a restart does
/// not free the vote.
#[test]
fn election_safety_5_2_a_server_votes_once_per_term_even_across_a_restart() {
    let mut c = Cluster::new(3);
    c.fire(1);
    c.fire(2);
    let from_1 = take_one(&mut c, |e| {
        is_vote_request(e) && (e.from, e.to) == (n(1), n(3))
    });
    let from_2 = take_one(&mut c, |e| {
        is_vote_request(e) && (e.from, e.to) == (n(2), n(3))
    });
    c.deliver(from_1);
    assert_eq!(vote_responses(&c, 3, 1), vec![true]);
    c.crash(3);
    c.restart(3);
    c.deliver(from_2);
    assert_eq!(
        vote_responses(&c, 3, 2),
        vec![false],
        "n3 already voted in term 1"
    );
}

/// §5.1 "If a candidate or leader discovers that its term is out of date, it immediately
/// reverts to follower state." "If a server receives a request with a stale term number, it
/// rejects the request."
#[test]
fn election_5_1_a_deposed_leader_learns_the_newer_term_from_the_answer_to_its_heartbeat() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.fire(2);
    c.deliver_all();
    assert!(c.raft(2).is_leader());
    assert_eq!(c.term(2), Term(2));
    assert!(c.raft(1).is_leader(), "n1 has not heard of term 2 yet");
    c.heal();
    c.heartbeat(1);
    assert_eq!(c.role(1), Role::Follower);
    assert_eq!(c.term(1), Term(2));
    assert_eq!(
        c.raft(2).term(),
        Term(2),
        "the stale heartbeat changed nothing at n2"
    );
}

/// §5.2 "Raft uses randomized election timeouts ... chosen randomly from a fixed interval."
#[test]
fn election_5_2_election_timeouts_are_random_within_the_configured_interval() {
    let mut c = Cluster::new(5);
    c.isolate(1);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        c.fire(1);
        let wait = c.raft(1).poll_timeout().unwrap() - c.now;
        assert!(wait >= Duration::from_millis(100) && wait <= Duration::from_millis(200));
        seen.insert(wait);
    }
    assert!(seen.len() > 40, "timeouts vary: {seen:?}");
}

// ----- §5.3: log replication -----

/// §5.3 "A log entry is committed once the leader that created the entry has replicated it on a
/// majority of the servers ... The leader keeps track of the highest index it knows to be
/// committed, and it includes that index in future AppendEntries RPCs (including heartbeats) so
/// that the other servers eventually find out. Once a follower learns that a log entry is
/// committed, it applies the entry to its local state machine."
#[test]
fn replication_5_3_an_entry_commits_on_a_majority_and_then_every_server_applies_it() {
    let mut c = Cluster::new(5);
    c.elect(1);
    let index = c.propose(1, "x");
    c.deliver_while(|e| between(e, 1, 2));
    assert!(c.raft(1).commit_index() < index, "2 of 5 hold it");
    c.deliver_while(|e| between(e, 1, 3));
    assert_eq!(c.raft(1).commit_index(), index, "3 of 5 hold it");
    assert_eq!(c.app(1).commands(), vec!["x"]);
    c.deliver_all();
    c.heartbeat(1);
    for id in 1..=5 {
        assert_eq!(c.app(id).commands(), vec!["x"], "n{id} applied it");
    }
}

/// §5.3, Figure 2 AppendEntries: "Reply false if log doesn't contain an entry at prevLogIndex
/// whose term matches prevLogTerm" — the consistency check behind Log Matching.
#[test]
fn log_matching_5_3_a_follower_refuses_an_append_whose_previous_entry_does_not_match() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.deliver_all();
    let before = c.raft(2).entries().to_vec();
    let forged = Message {
        term: Term(1),
        kind: MessageKind::Append {
            prev_index: LogIndex(2),
            prev_term: Term(0),
            entries: vec![Entry {
                term: Term(1),
                index: LogIndex(3),
                data: EntryData::Application(Bytes::from_static(b"b")),
            }],
            leader_commit: LogIndex(2),
        },
    };
    c.step(2, |raft, env| {
        raft.handle_message(env, n(1), forged).unwrap()
    });
    assert_eq!(c.raft(2).entries(), &before[..], "nothing appended");
    let response = take_one(&mut c, |e| e.from == n(2));
    assert!(matches!(
        response.message.kind,
        MessageKind::AppendResponse(AppendOutcome::Rejected {
            prev_index: LogIndex(2),
            conflict_term: Some(Term(1)),
            ..
        })
    ));
}

/// §5.3 "If an existing entry conflicts with a new one (same index but different terms),
/// delete the existing entry and all that follow it"; "the leader handles inconsistencies by
/// forcing the followers' logs to duplicate its own" (Figure 7).
#[test]
fn log_matching_5_3_a_conflicting_uncommitted_suffix_is_replaced_by_the_leaders_entries() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.deliver_all();
    c.isolate(1);
    c.propose(1, "lost 1");
    c.propose(1, "lost 2");
    c.deliver_all();
    c.fire(2);
    c.deliver_all();
    c.propose(2, "b");
    c.deliver_all();
    c.heal();
    c.heartbeat(2);
    c.heartbeat(2);
    assert_eq!(c.log_terms(1), vec![1, 1, 2, 2]);
    assert_eq!(c.log_terms(1), c.log_terms(2));
    for id in 1..=3 {
        assert_eq!(c.app(id).commands(), vec!["a", "b"], "n{id}");
    }
}

/// §5.3 "the protocol can be optimized to reduce the number of rejected AppendEntries RPCs ...
/// the follower can include the term of the conflicting entry and the first index it stores for
/// that term. With this information, the leader can decrement nextIndex to bypass all of the
/// conflicting entries in that term."
#[test]
fn replication_5_3_the_conflict_hint_skips_a_whole_term_per_round_trip() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    for k in 0..20 {
        c.propose(1, &format!("stale {k}"));
    }
    c.deliver_all();
    c.fire(2);
    c.deliver_all();
    for k in 0..20 {
        c.propose(2, &format!("fresh {k}"));
    }
    c.deliver_all();
    // n3 takes over with a fresh leader's optimistic view of n1 (next = its last index + 1).
    c.fire(3);
    c.deliver_all();
    assert!(c.raft(3).is_leader());
    c.heal();
    c.advance(Duration::from_millis(20));
    c.fire(3);
    let rejections = Cell::new(0);
    while let Some(e) = c.in_flight.pop_front() {
        if e.from == n(1)
            && matches!(
                e.message.kind,
                MessageKind::AppendResponse(AppendOutcome::Rejected { .. })
            )
        {
            rejections.set(rejections.get() + 1);
        }
        c.deliver(e);
    }
    assert_eq!(c.log_terms(1), c.log_terms(3));
    assert!(
        rejections.get() <= 2,
        "{} rejections for 20 conflicting entries",
        rejections.get()
    );
}

/// §5.3 Log Matching under an unreliable network: a duplicated or reordered (older, shorter)
/// append must not truncate entries that match — Figure 2 deletes only on a *conflict*.
#[test]
fn log_matching_5_3_reordered_and_duplicated_appends_never_truncate_matching_entries() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    let first = take_one(&mut c, |e| is_append(e) && e.to == n(2));
    c.propose(1, "b");
    let second = take_one(&mut c, |e| is_append(e) && e.to == n(2));
    assert_eq!(
        append_commands(&second),
        vec!["b"],
        "pipelined, not re-sent"
    );
    c.deliver(second.clone());
    assert_eq!(c.raft(2).last_index(), LogIndex(1), "a gap is refused");
    c.deliver(first.clone());
    c.deliver(second);
    c.deliver(first);
    assert_eq!(c.log_terms(2), vec![1, 1, 1]);
    c.deliver_all();
    c.heartbeat(1);
    assert_eq!(c.app(2).commands(), vec!["a", "b"]);
}

/// Batching and pipelining: proposals of one batch leave in one append per follower, and a
/// later batch leaves before the first is acknowledged, within `appends_in_flight_max`.
#[test]
fn replication_batches_proposals_and_pipelines_appends_within_the_window() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.step(1, |raft, env| {
        for k in 0..5 {
            raft.propose(env, Bytes::from(format!("{k}"))).unwrap();
        }
    });
    let to_2: Vec<&Envelope> = c.in_flight.iter().filter(|e| e.to == n(2)).collect();
    assert_eq!(to_2.len(), 1);
    assert_eq!(append_commands(to_2[0]).len(), 5);
    c.propose(1, "5");
    assert_eq!(c.in_flight.iter().filter(|e| e.to == n(2)).count(), 2);
    c.deliver_all();
    assert_eq!(c.raft(1).commit_index(), LogIndex(7));

    let mut c = Cluster::with(3, |config| {
        config.entries_per_append_max = 1;
        config.appends_in_flight_max = 2;
    });
    c.elect(1);
    c.step(1, |raft, env| {
        for k in 0..5 {
            raft.propose(env, Bytes::from(format!("{k}"))).unwrap();
        }
    });
    assert_eq!(c.in_flight.iter().filter(|e| e.to == n(2)).count(), 2);
    c.deliver_all();
    assert_eq!(
        c.raft(1).commit_index(),
        LogIndex(6),
        "acks reopen the window"
    );
}

/// §5.3 "If followers crash or run slowly, or if network packets are lost, the leader retries
/// AppendEntries RPCs indefinitely ... until all followers eventually store all log entries."
#[test]
fn replication_5_3_lost_appends_are_sent_again_after_heartbeats() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.drop_where(is_append);
    for _ in 0..3 {
        c.heartbeat(1);
    }
    for id in 1..=3 {
        assert_eq!(c.app(id).commands(), vec!["a"], "n{id}");
    }
}

// ----- Figure 3 properties -----

/// Figure 3, Leader Append-Only: "a leader never overwrites or deletes entries in its log; it
/// only appends new entries." Checked on a leader while it repairs a follower's conflicting log.
#[test]
fn leader_append_only_a_leader_never_overwrites_or_deletes_its_entries() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.propose(1, "stale");
    c.fire(2);
    c.deliver_all();
    c.propose(2, "b");
    c.deliver_all();
    c.heal();
    let mut seen: Vec<Entry> = c.raft(2).entries().to_vec();
    c.advance(Duration::from_millis(20));
    c.fire(2);
    for _ in 0..200 {
        let Some(e) = c.in_flight.pop_front() else {
            break;
        };
        c.deliver(e);
        let now = c.raft(2).entries();
        assert!(now.starts_with(&seen), "the leader's log only grows");
        seen = now.to_vec();
        if c.in_flight.is_empty() {
            c.propose(2, "more");
        }
        if c.raft(2).last_index() > LogIndex(8) {
            break;
        }
    }
    c.deliver_all();
    assert_eq!(c.log_terms(1), c.log_terms(2));
}

/// §5.4.1 election restriction, hence Leader Completeness: "the voter denies its vote if its
/// own log is more up-to-date than that of the candidate", so a candidate missing a committed
/// entry cannot win.
#[test]
fn leader_completeness_5_4_1_a_candidate_missing_a_committed_entry_cannot_win() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.propose(1, "a");
    c.deliver_all();
    assert_eq!(c.app(1).commands(), vec!["a"], "committed on n1 and n2");
    c.heal();
    c.crash(1);
    c.fire(3);
    c.deliver_all();
    assert_eq!(
        c.role(3),
        Role::Candidate,
        "n2 refused: n3's log lacks the entry"
    );
    c.fire(2);
    c.deliver_all();
    assert!(c.raft(2).is_leader());
    c.heartbeat(2);
    assert_eq!(c.app(3).commands(), vec!["a"]);
}

/// §5.4.1 "If the logs have last entries with different terms, then the log with the later term
/// is more up-to-date. If the logs end with the same term, then whichever log is longer is more
/// up-to-date."
#[test]
fn election_restriction_5_4_1_the_last_term_decides_before_the_length() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.propose(1, "b");
    c.deliver_all();
    assert_eq!(c.log_terms(3), vec![1, 1, 1]);
    let mut ask = |term: u64, last_index: u64, last_term: u64| {
        let request = Message {
            term: Term(term),
            kind: MessageKind::RequestVote {
                last_index: LogIndex(last_index),
                last_term: Term(last_term),
                transfer: false,
            },
        };
        c.step(3, |raft, env| {
            raft.handle_message(env, n(2), request).unwrap()
        });
        let response = c.in_flight.pop_back().unwrap();
        matches!(
            response.message.kind,
            MessageKind::VoteResponse { granted: true }
        )
    };
    assert!(ask(5, 2, 2), "shorter but with a later last term: granted");
    assert!(ask(6, 9, 1), "same last term and longer: granted");
    assert!(ask(7, 3, 1), "same last term and as long: granted");
    assert!(!ask(8, 2, 1), "same last term but shorter: refused");
    assert!(
        !ask(9, 50, 0),
        "longer but with an earlier last term: refused"
    );
}

/// Sets up Figure 8 (a)–(c) with five servers: S1's term-2 entry at index 2 ends up on S1, S2
/// and S3 — a majority — while S1 leads term 4 with its own no-op at index 3 on S1 and S2 only.
fn figure_8_up_to_c() -> Cluster {
    let mut c = Cluster::with(5, |config| config.entries_per_append_max = 1);
    c.elect(5); // index 1, term 1, everywhere
    c.heartbeat(5);
    // (a) S1 leads term 2; its entry at index 2 reaches S2 only.
    c.fire(1);
    c.deliver_while(is_vote_traffic);
    assert!(c.raft(1).is_leader());
    assert_eq!(c.term(1), Term(2));
    c.deliver_while(|e| between(e, 1, 2));
    c.drop_where(|_| true);
    assert_eq!(c.log_terms(2), vec![1, 2]);
    // (b) S1 crashes; S5 wins term 3 with S3 and S4, appends index 2 in term 3 and crashes.
    c.crash(1);
    c.fire(5);
    c.deliver_while(is_vote_traffic);
    assert!(c.raft(5).is_leader());
    assert_eq!(c.term(5), Term(3));
    assert_eq!(c.log_terms(5), vec![1, 3]);
    c.drop_where(|_| true);
    c.crash(5);
    // (c) S1 restarts and wins term 4 (S2, S3, S4 vote), then replicates index 2 to S3.
    c.restart(1);
    c.fire(1);
    c.deliver_while(is_vote_traffic);
    c.fire(1);
    c.deliver_while(is_vote_traffic);
    assert!(c.raft(1).is_leader());
    assert_eq!(c.term(1), Term(4));
    c.drop_where(|e| e.to == n(4));
    c.deliver_while(|e| between(e, 1, 2));
    assert_eq!(c.log_terms(2), vec![1, 2, 4]);
    let probe = take_one(&mut c, |e| e.to == n(3));
    c.deliver(probe); // refused: S3 lacks index 2
    let refusal = take_one(&mut c, |e| e.from == n(3));
    c.deliver(refusal);
    let append = take_one(&mut c, |e| e.to == n(3));
    c.deliver(append);
    let ack = take_one(&mut c, |e| e.from == n(3));
    c.deliver(ack);
    assert_eq!(c.log_terms(3), vec![1, 2]);
    c
}

/// §5.4.2, Figure 8: "a leader cannot immediately conclude that an entry from a previous term is
/// committed once it is stored on a majority of servers ... Raft never commits log entries from
/// previous terms by counting replicas." In (d) S5 may still overwrite that entry.
#[test]
fn committing_previous_terms_5_4_2_figure_8_an_old_term_entry_on_a_majority_is_not_committed() {
    let mut c = figure_8_up_to_c();
    assert!(
        c.raft(1).commit_index() < LogIndex(2),
        "index 2 (term 2) is on S1, S2, S3 but not committed"
    );
    // (d) S1 crashes; S5 restarts and wins term 5 with S3 and S4 (its last term 3 beats their
    // 2 and 1), and overwrites index 2 everywhere.
    c.drop_where(|_| true);
    c.crash(1);
    c.restart(5);
    c.fire(5);
    c.deliver_all();
    c.fire(5);
    c.deliver_all();
    assert!(c.raft(5).is_leader());
    assert_eq!(c.term(5), Term(5));
    c.heartbeat(5);
    c.heartbeat(5);
    for id in 2..=5 {
        assert_eq!(c.log_terms(id), vec![1, 3, 5], "n{id}");
        assert_eq!(
            c.app(id).applied[1].term,
            Term(3),
            "n{id} applied S5's entry"
        );
    }
}

/// §5.4.2, Figure 8 (e): "if S1 replicates an entry from its current term on a majority of the
/// servers before crashing ... then this entry is committed (S5 cannot win an election)", and
/// with it the earlier entries.
#[test]
fn committing_previous_terms_5_4_2_figure_8_a_current_term_entry_commits_the_earlier_ones() {
    let mut c = figure_8_up_to_c();
    c.deliver_while(|e| between(e, 1, 3));
    assert_eq!(c.raft(1).commit_index(), LogIndex(3));
    assert_eq!(c.app(1).applied[1].term, Term(2));
    c.drop_where(|_| true);
    c.crash(1);
    c.restart(5);
    for _ in 0..3 {
        c.fire(5);
        c.deliver_all();
        assert!(!c.raft(5).is_leader(), "S2 and S3 refuse S5");
    }
}

// ----- Persistence -----

/// Figure 2, persistent state "updated on stable storage before responding to RPCs": a vote
/// staged but lost in a crash before the sync was never sent, so it may be cast again.
#[test]
fn persistence_a_vote_lost_before_the_sync_was_never_sent() {
    let mut c = Cluster::new(3);
    c.fire(1);
    let request = take_one(&mut c, |e| e.to == n(2));
    c.step_then_crash(2, |raft, env| {
        raft.handle_message(env, n(1), request.message).unwrap();
        assert_eq!(raft.voted_for(), Some(n(1)));
    });
    assert!(
        c.in_flight.iter().all(|e| e.from != n(2)),
        "the vote never left"
    );
    c.restart(2);
    assert_eq!((c.term(2), c.raft(2).voted_for()), (Term(0), None));
}

/// A restarted server recovers term, vote and log, and re-applies committed entries once it
/// learns the commit index (which is volatile, Figure 2).
#[test]
fn persistence_a_restarted_server_recovers_its_log_and_reapplies_committed_entries() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.propose(1, "b");
    c.deliver_all();
    c.heartbeat(1);
    c.crash(2);
    c.restart(2);
    assert_eq!(c.log_terms(2), c.log_terms(1));
    assert_eq!(c.raft(2).commit_index(), LogIndex(0));
    assert!(c.app(2).applied.is_empty());
    c.heartbeat(1);
    assert_eq!(c.app(2).commands(), vec!["a", "b"]);
}

/// Recovery refuses an application that claims to have applied more than the log holds, and
/// an invalid configuration.
#[test]
fn recovery_rejects_an_applied_index_beyond_the_log_and_invalid_configurations() {
    let mut disk = SimDisk::new();
    let mut config = RaftConfig::new(n(1), "g", super::ids(&[1]));
    config.applied_index = LogIndex(3);
    let rng = DetRng::seed_from_u64(1);
    assert!(matches!(
        Raft::new(config.clone(), &mut disk, rng.clone(), Instant::ZERO),
        Err(RecoveryError::AppliedBeyondLog { .. })
    ));
    config.applied_index = LogIndex(0);
    config.group = String::new();
    assert!(matches!(
        Raft::new(config, &mut disk, rng, Instant::ZERO),
        Err(RecoveryError::Config(_))
    ));
}

// ----- Thesis §9.6 PreVote, §6.2 CheckQuorum, §4.2.3 disruptive servers -----

/// Thesis §9.6: "a candidate would first ask other servers whether its log was up-to-date
/// enough to get their vote ... the server would not increment its term" — a partitioned server
/// keeps its term.
#[test]
fn pre_vote_9_6_a_partitioned_server_does_not_raise_its_term() {
    let mut c = Cluster::with(3, |config| config.pre_vote = true);
    c.elect(1);
    c.isolate(3);
    for _ in 0..5 {
        c.fire(3);
        c.deliver_all();
    }
    assert_eq!(c.role(3), Role::PreCandidate);
    assert_eq!(c.term(3), Term(1));
}

/// Lets `leader` heartbeat everyone it can reach until `id`'s timer is about to fire.
fn beat_until_due(c: &mut Cluster, leader: u32, id: u32) {
    let interval = c.raft(leader).config().heartbeat_interval;
    while c.raft(id).poll_timeout().unwrap() > c.now + interval {
        c.heartbeat(leader);
    }
}

/// Makes `id` time out while `leader` keeps heartbeating everyone it can reach (which must not
/// include `id`, or its timer would never fire).
fn fire_while_leader_beats(c: &mut Cluster, leader: u32, id: u32) {
    beat_until_due(c, leader, id);
    c.fire(id);
}

/// Thesis §9.6: "This helps to prevent a partitioned server from disrupting the cluster when it
/// rejoins": servers that hear from a leader refuse the pre-vote, so the leader keeps its term.
#[test]
fn pre_vote_9_6_a_rejoining_server_does_not_disrupt_a_healthy_leader() {
    let mut c = Cluster::with(3, |config| config.pre_vote = true);
    c.elect(1);
    c.isolate(3);
    for _ in 0..3 {
        fire_while_leader_beats(&mut c, 1, 3);
    }
    // n3 rejoins just as its timer fires: its pre-votes reach servers that hear the leader.
    beat_until_due(&mut c, 1, 3);
    c.heal();
    c.fire(3);
    c.deliver_all();
    assert!(c.raft(1).is_leader());
    assert_eq!(
        (c.term(1), c.term(2), c.term(3)),
        (Term(1), Term(1), Term(1))
    );
    c.heartbeat(1);
    assert_eq!(c.role(3), Role::Follower);
}

/// The same scenario without PreVote: the rejoining server's raised term deposes the leader.
/// (The control for the test above: it shows the disruption PreVote prevents.)
#[test]
fn pre_vote_9_6_without_pre_vote_a_rejoining_server_deposes_the_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    for _ in 0..3 {
        fire_while_leader_beats(&mut c, 1, 3);
    }
    assert_eq!(c.term(3), Term(4));
    beat_until_due(&mut c, 1, 3);
    c.heal();
    c.fire(3);
    c.deliver_all();
    assert!(c.term(1) > Term(1), "the leader was deposed");
}

/// Thesis §6.2: "a leader steps down if an election timeout elapses without a successful round
/// of heartbeats to a majority of its cluster".
#[test]
fn check_quorum_6_2_a_leader_cut_off_from_its_quorum_steps_down() {
    let mut c = Cluster::with(3, |config| config.check_quorum = true);
    c.elect(1);
    for _ in 0..20 {
        c.heartbeat(1);
    }
    assert!(
        c.raft(1).is_leader(),
        "a leader that hears from a quorum stays"
    );
    c.isolate(1);
    let mut beats = 0;
    while c.raft(1).is_leader() {
        c.heartbeat(1);
        beats += 1;
        assert!(
            beats <= 10,
            "the leader stepped down within two election timeouts"
        );
    }
    assert_eq!(c.role(1), Role::Follower);
    assert!(events_of(&c, 1).contains(&Output::LeaderChanged {
        term: Term(1),
        leader: None,
    }));
}

/// Thesis §4.2.3: "if a server receives a RequestVote request within the minimum election
/// timeout of hearing from a current leader, it does not update its term or grant its vote" —
/// until the leader is gone.
#[test]
fn check_quorum_4_2_3_followers_ignore_vote_requests_while_they_hear_from_a_leader() {
    let mut c = Cluster::with(3, |config| config.check_quorum = true);
    c.elect(1);
    c.isolate(3);
    fire_while_leader_beats(&mut c, 1, 3);
    assert_eq!(c.term(3), Term(2));
    c.cut.remove(&(n(3), n(2)));
    c.cut.remove(&(n(2), n(3)));
    fire_while_leader_beats(&mut c, 1, 3);
    c.deliver_all();
    assert_eq!(c.term(2), Term(1), "n2 ignored the request");
    assert!(c.raft(1).is_leader());
    // Once the leader is gone, n2 votes again.
    c.crash(1);
    c.advance(Duration::from_millis(100));
    c.fire(3);
    c.deliver_all();
    assert!(c.raft(3).is_leader());
}

// ----- Thesis §6.4 ReadIndex -----

/// Thesis §6.4: the leader records its commit index as the read index, "sends a new round of
/// heartbeats and waits for their acknowledgments from a majority", then the read may be served.
#[test]
fn read_index_6_4_a_read_is_ready_once_a_majority_acknowledges_a_heartbeat_round_after_it() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "x");
    c.deliver_all();
    c.read_index(1, 7);
    assert!(read_ready(&c, 1).is_empty());
    let beats: Vec<&Envelope> = c
        .in_flight
        .iter()
        .filter(|e| matches!(e.message.kind, MessageKind::Heartbeat { read_seq: 1, .. }))
        .collect();
    assert_eq!(beats.len(), 2);
    c.deliver_while(|e| between(e, 1, 2));
    assert_eq!(read_ready(&c, 1), vec![(7, LogIndex(2))]);
    assert_eq!(
        c.step(2, |raft, env| raft.read_index(env.now, RequestId(8))),
        Err(ReadError::NotLeader { leader: Some(n(1)) })
    );
}

/// Thesis §6.4 step 1: "If the leader has not yet marked an entry from its current term
/// committed, it waits until it has done so."
#[test]
fn read_index_6_4_a_new_leader_defers_reads_until_an_entry_of_its_term_commits() {
    let mut c = Cluster::new(3);
    c.fire(1);
    c.deliver_while(is_vote_traffic);
    assert!(c.raft(1).is_leader());
    c.read_index(1, 9);
    assert!(
        !c.in_flight
            .iter()
            .any(|e| matches!(e.message.kind, MessageKind::Heartbeat { .. })),
        "no round before the no-op commits"
    );
    c.deliver_all();
    assert_eq!(read_ready(&c, 1), vec![(9, LogIndex(1))]);
}

/// A leader cut off from its quorum never confirms a read, and fails it when deposed (the
/// linearizability argument of thesis §6.4 rests on that majority).
#[test]
fn read_index_6_4_a_partitioned_leader_never_confirms_a_read_and_fails_it_when_deposed() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.read_index(1, 5);
    c.deliver_all();
    c.heartbeat(1);
    assert!(read_ready(&c, 1).is_empty());
    c.fire(2);
    c.deliver_all();
    c.heal();
    c.heartbeat(2);
    assert!(events_of(&c, 1).contains(&Output::ReadFailed {
        ctx: RequestId(5),
        leader: Some(n(2)),
    }));
    assert!(read_ready(&c, 1).is_empty());
}

// ----- Thesis §3.10 leadership transfer -----

/// Thesis §3.10: "The prior leader sends its log entries to the target server ... [then] sends
/// a TimeoutNow request to the target server. This request has the same effect as the target
/// server's election timer firing" — even past PreVote and CheckQuorum.
#[test]
fn transfer_3_10_the_leader_catches_the_target_up_and_the_target_wins_at_once() {
    let mut c = Cluster::with(3, |config| {
        config.pre_vote = true;
        config.check_quorum = true;
    });
    c.elect(1);
    c.isolate(3);
    c.propose(1, "a");
    c.deliver_all();
    c.heal();
    c.step(1, |raft, env| {
        raft.transfer_leadership(env.now, n(3)).unwrap()
    });
    let refused = c.step(1, |raft, env| raft.propose(env, Bytes::from_static(b"b")));
    assert!(matches!(
        refused,
        Err(ProposeError::TransferInProgress { to }) if to == n(3)
    ));
    c.deliver_all();
    assert!(c.raft(3).is_leader());
    assert_eq!(c.term(3), Term(2));
    assert_eq!(c.role(1), Role::Follower);
    c.heartbeat(3);
    assert_eq!(c.app(3).commands(), vec!["a"]);
}

/// Thesis §3.10: "If the transfer does not complete within an election timeout, the prior
/// leader aborts the transfer and resumes accepting client requests."
#[test]
fn transfer_3_10_a_transfer_that_does_not_complete_is_abandoned_after_an_election_timeout() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(
        c.step(2, |raft, env| raft.transfer_leadership(env.now, n(3))),
        Err(TransferError::NotLeader { leader: Some(n(1)) })
    );
    assert_eq!(
        c.step(1, |raft, env| raft.transfer_leadership(env.now, n(1))),
        Err(TransferError::AlreadyLeader(n(1)))
    );
    assert_eq!(
        c.step(1, |raft, env| raft.transfer_leadership(env.now, n(9))),
        Err(TransferError::NotAVoter(n(9)))
    );
    c.isolate(3);
    c.step(1, |raft, env| {
        raft.transfer_leadership(env.now, n(3)).unwrap()
    });
    for _ in 0..11 {
        c.heartbeat(1);
    }
    assert!(c.raft(1).is_leader());
    c.propose(1, "accepted again");
}

// ----- §7 snapshots and log compaction -----

/// §7 "the leader must occasionally send snapshots to followers that lag behind ... when the
/// leader has already discarded the next log entry that it needs to send to a follower."
#[test]
fn snapshot_7_a_follower_behind_the_compacted_log_receives_the_snapshot_then_the_rest() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    for k in 0..10 {
        c.propose(1, &format!("{k}"));
    }
    c.deliver_all();
    let index = c.raft(1).commit_index();
    assert_eq!(index, LogIndex(11));
    let data = c.app(1).snapshot_data(index);
    c.step(1, |raft, env| raft.compact(env, index, data).unwrap());
    assert_eq!(c.raft(1).snapshot().index, index);
    assert!(c.raft(1).entries().is_empty());
    let too_far = c.step(1, |raft, env| raft.compact(env, LogIndex(12), Bytes::new()));
    assert!(matches!(too_far, Err(CompactError::NotApplied { .. })));
    let again = c.step(1, |raft, env| raft.compact(env, index, Bytes::new()));
    assert!(matches!(again, Err(CompactError::AlreadyCompacted { .. })));
    c.propose(1, "after");
    c.deliver_all();
    c.heal();
    for _ in 0..3 {
        c.heartbeat(1);
    }
    assert_eq!(c.raft(3).snapshot().index, index);
    assert_eq!(c.app(3), c.app(1));
    assert_eq!(c.app(3).commands().last().unwrap(), "after");
}

/// §7: a server restarts from its snapshot and the log after it; the application, whose state
/// here is volatile, is restored from the snapshot and then re-applies the rest.
#[test]
fn snapshot_7_a_server_restarts_from_its_snapshot_and_the_log_after_it() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for k in 0..5 {
        c.propose(1, &format!("{k}"));
    }
    c.deliver_all();
    c.heartbeat(1);
    let index = c.raft(2).commit_index();
    let data = c.app(2).snapshot_data(index);
    c.step(2, |raft, env| raft.compact(env, index, data).unwrap());
    c.propose(1, "5");
    c.deliver_all();
    c.heartbeat(1);
    c.crash(2);
    c.restart(2);
    assert_eq!(
        c.app(2).last_index(),
        index,
        "restored from the snapshot at start"
    );
    c.heartbeat(1);
    assert_eq!(c.app(2), c.app(1));
}

/// Snapshots on demand (`RaftConfig::snapshots_on_demand`): compacting without the state costs
/// nothing of the application; a follower that needs the compacted entries makes the leader ask
/// for the state (`SnapshotWanted`) instead of receiving an empty snapshot, and gets the state
/// once the application provides it, then the rest of the log.
#[test]
fn snapshot_7_on_demand_a_lagging_follower_gets_the_state_materialized_when_it_needs_it() {
    let mut c = Cluster::with(3, |config| config.snapshots_on_demand = true);
    c.elect(1);
    c.isolate(3);
    for k in 0..10 {
        c.propose(1, &format!("{k}"));
    }
    c.deliver_all();
    let index = c.raft(1).commit_index();
    c.step(1, |raft, env| {
        raft.compact(env, index, Bytes::new()).unwrap()
    });
    assert_eq!(c.raft(1).snapshot().index, index);
    assert!(c.raft(1).snapshot().data.is_empty(), "no state copied");
    c.propose(1, "after");
    c.deliver_all();
    c.heal();
    let wanted = |c: &Cluster| {
        events_of(c, 1)
            .iter()
            .filter(|o| **o == Output::SnapshotWanted)
            .count()
    };
    // The appends lost to the partition are re-sent after two heartbeats without progress.
    for _ in 0..3 {
        c.heartbeat(1);
        c.deliver_all();
    }
    assert!(wanted(&c) >= 1, "the leader asks for the state");
    assert!(
        !c.in_flight
            .iter()
            .any(|e| matches!(e.message.kind, MessageKind::InstallSnapshot { .. })),
        "no snapshot without its state leaves the leader"
    );
    assert_eq!(
        c.raft(3).commit_index(),
        LogIndex(1),
        "server 3 is still behind"
    );
    // The application materializes the snapshot in place (same index), and the probe resumes.
    let data = c.app(1).snapshot_data(index);
    c.step(1, |raft, env| raft.compact(env, index, data).unwrap());
    assert!(!c.raft(1).snapshot().data.is_empty());
    c.deliver_all();
    c.heartbeat(1);
    assert_eq!(c.raft(3).snapshot().index, index);
    assert_eq!(c.app(3), c.app(1));
    assert_eq!(c.app(3).commands().last().unwrap(), "after");
    // A compaction without state replaces the materialized snapshot again.
    let last = c.raft(1).commit_index();
    c.step(1, |raft, env| {
        raft.compact(env, last, Bytes::new()).unwrap()
    });
    assert!(c.raft(1).snapshot().data.is_empty());
}

/// With snapshots on demand a snapshot without state is no state to restore: a server whose
/// application is behind such a snapshot at start refuses to start rather than wipe it.
#[test]
fn snapshot_7_on_demand_a_restart_behind_an_unmaterialized_snapshot_is_refused() {
    let mut c = Cluster::with(3, |config| config.snapshots_on_demand = true);
    c.elect(1);
    for k in 0..3 {
        c.propose(1, &format!("{k}"));
    }
    c.deliver_all();
    let index = c.raft(1).commit_index();
    c.step(1, |raft, env| {
        raft.compact(env, index, Bytes::new()).unwrap()
    });
    let member = &c.members[&n(1)];
    let mut config = member.raft().config().clone();
    let mut disk = member.disk.clone();
    config.applied_index = index;
    assert!(Raft::new(config.clone(), &mut disk, DetRng::seed_from_u64(1), c.now).is_ok());
    config.applied_index = LogIndex(1);
    let refused = Raft::new(config, &mut disk, DetRng::seed_from_u64(1), c.now);
    assert!(matches!(
        refused,
        Err(RecoveryError::SnapshotNotMaterialized { .. })
    ));
}

// ----- Thesis §4.1 single-server membership changes -----

/// Thesis §4.1: a new server joins by a configuration entry adding it; "a server always uses the
/// latest configuration in its log", so the new server counts toward the quorum at once.
#[test]
fn membership_4_1_an_added_voter_catches_up_and_counts_toward_the_quorum() {
    let mut c = Cluster::new(3);
    c.add_joiner(4, |_| {});
    assert_eq!(
        c.raft(4).poll_timeout(),
        None,
        "a joining server does not campaign"
    );
    c.elect(1);
    c.propose(1, "a");
    c.deliver_all();
    let index = c.step(1, |raft, env| {
        raft.change_membership(env, MembershipChange::AddVoter(n(4)))
            .unwrap()
    });
    assert_eq!(c.raft(1).voters(), &super::ids(&[1, 2, 3, 4]));
    c.deliver_all();
    c.heartbeat(1);
    assert!(c.raft(1).commit_index() >= index);
    assert_eq!(c.raft(4).voters(), &super::ids(&[1, 2, 3, 4]));
    assert!(
        c.raft(4).poll_timeout().is_some(),
        "now a voter, it runs an election timer"
    );
    assert_eq!(c.app(4).commands(), vec!["a"]);
    // 2 of 4 is not a quorum any more.
    c.isolate(3);
    c.isolate(4);
    let b = c.propose(1, "b");
    c.deliver_all();
    assert!(c.raft(1).commit_index() < b);
    c.heal();
    c.heartbeat(1);
    c.heartbeat(1);
    assert!(c.raft(1).commit_index() >= b);
}

/// Thesis §4.1: one change at a time ("the leader ... does not begin another change until the
/// previous one is committed"), and a new leader first commits an entry of its own term (the
/// 2015 correction to single-server changes).
#[test]
fn membership_4_1_changes_go_one_at_a_time_and_wait_for_the_leaders_first_commit() {
    let mut c = Cluster::new(3);
    c.add_joiner(4, |_| {});
    c.add_joiner(5, |_| {});
    c.fire(1);
    c.deliver_while(is_vote_traffic);
    let change =
        |c: &mut Cluster, change| c.step(1, |raft, env| raft.change_membership(env, change));
    assert!(matches!(
        change(&mut c, MembershipChange::AddVoter(n(4))),
        Err(MembershipError::LeaderNotReady)
    ));
    c.deliver_all();
    let index = change(&mut c, MembershipChange::AddVoter(n(4))).unwrap();
    assert!(matches!(
        change(&mut c, MembershipChange::AddVoter(n(5))),
        Err(MembershipError::ChangeInProgress { index: i }) if i == index
    ));
    c.deliver_all();
    change(&mut c, MembershipChange::AddVoter(n(5))).unwrap();
    c.deliver_all();
    assert!(matches!(
        change(&mut c, MembershipChange::AddVoter(n(1))),
        Err(MembershipError::AlreadyVoter(_))
    ));
    assert!(matches!(
        change(&mut c, MembershipChange::RemoveVoter(n(9))),
        Err(MembershipError::NotAVoter(_))
    ));
    assert!(matches!(
        c.step(2, |raft, env| raft
            .change_membership(env, MembershipChange::RemoveVoter(n(3)))),
        Err(MembershipError::NotLeader { .. })
    ));
    assert_eq!(c.raft(5).voters(), &super::ids(&[1, 2, 3, 4, 5]));
}

/// Thesis §4.2.2: a leader removed from the configuration "steps down once the Cnew entry is
/// committed"; it stops counting itself in majorities as soon as the entry is in its log.
#[test]
fn membership_4_2_2_a_leader_that_removes_itself_steps_down_once_the_change_commits() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.step(1, |raft, env| {
        raft.change_membership(env, MembershipChange::RemoveVoter(n(1)))
            .unwrap()
    });
    assert!(c.raft(1).is_leader(), "leads until the change commits");
    c.deliver_all();
    assert_eq!(c.role(1), Role::Follower);
    assert_eq!(
        c.raft(1).poll_timeout(),
        None,
        "no longer a voter: never campaigns"
    );
    c.fire(2);
    c.deliver_all();
    assert!(c.raft(2).is_leader());
    let index = c.propose(2, "without n1");
    c.deliver_all();
    assert_eq!(c.raft(2).commit_index(), index);
}

// ----- Thesis §6.4.1 leader leases -----

fn leases(config: &mut RaftConfig) {
    config.check_quorum = true;
    config.pre_vote = true;
    config.lease_reads = true;
}

/// Thesis §6.4.1: once a majority acknowledged a heartbeat round, the leader may serve reads
/// without a round of its own until `election_timeout_min * (1 - drift)` after that round
/// started; after that the lease has lapsed until another round is acknowledged.
#[test]
fn lease_6_4_1_a_leader_serves_reads_for_less_than_an_election_timeout_after_an_acknowledged_round()
{
    let mut c = Cluster::with(3, leases);
    // A restarted server may have acknowledged an old leader's round: nobody votes during the
    // first minimum election timeout (here every server just started).
    c.advance(Duration::from_millis(100));
    c.elect(1);
    assert_eq!(
        c.raft(1).lease_read(c.now),
        None,
        "no round acknowledged yet"
    );
    c.heartbeat(1);
    let started = c.now;
    let commit = c.raft(1).commit_index();
    assert_eq!(c.raft(1).lease_read(c.now), Some(commit));
    // 100 ms minimum election timeout, 5% drift: the lease ends 95 ms after the round began.
    assert_eq!(
        c.raft(1).lease_read(started + Duration::from_millis(94)),
        Some(commit)
    );
    assert_eq!(
        c.raft(1).lease_read(started + Duration::from_millis(95)),
        None
    );
    assert_eq!(c.raft(2).lease_read(c.now), None, "followers hold no lease");
}

/// A leader cut off from its quorum keeps its lease only until it lapses: no round it starts
/// is acknowledged.
#[test]
fn lease_6_4_1_a_partitioned_leader_s_lease_lapses() {
    let mut c = Cluster::with(3, leases);
    c.advance(Duration::from_millis(100));
    c.elect(1);
    c.heartbeat(1);
    c.isolate(1);
    for _ in 0..6 {
        c.heartbeat(1);
    }
    assert_eq!(c.raft(1).lease_read(c.now), None);
}

/// A leadership transfer makes the target campaign at once, without waiting out the followers'
/// election timeouts: the lease must end when the transfer starts.
#[test]
fn lease_6_4_1_a_transfer_revokes_the_lease_for_the_rest_of_the_term() {
    let mut c = Cluster::with(3, leases);
    c.advance(Duration::from_millis(100));
    c.elect(1);
    c.heartbeat(1);
    assert!(c.raft(1).lease_read(c.now).is_some());
    c.step(1, |raft, env| {
        raft.transfer_leadership(env.now, n(2)).unwrap()
    });
    assert_eq!(c.raft(1).lease_read(c.now), None);
    c.drop_where(|_| true);
    c.advance(Duration::from_millis(300));
    c.fire(1); // the transfer times out; the leader stays
    c.heartbeat(1);
    assert!(c.raft(1).is_leader());
    assert_eq!(c.raft(1).lease_read(c.now), None, "not again in this term");
}

/// The restarted server of §6.4.1's argument: it refuses votes for a minimum election timeout
/// after its start, so a leader whose round it acknowledged before crashing keeps its lease.
#[test]
fn lease_6_4_1_a_restarted_server_refuses_votes_for_an_election_timeout() {
    let mut c = Cluster::with(3, leases);
    c.advance(Duration::from_millis(100));
    c.elect(1);
    c.heartbeat(1);
    c.crash(2);
    c.restart(2);
    c.drop_where(|_| true);
    let ask = |c: &mut Cluster| {
        let term = c.raft(2).term().next();
        let (last_index, last_term) = (c.raft(1).last_index(), c.raft(1).last_term());
        let request = crate::Message {
            term,
            kind: MessageKind::RequestVote {
                last_index,
                last_term,
                transfer: false,
            },
        };
        c.step(2, |raft, env| {
            raft.handle_message(env, n(3), request).unwrap()
        });
        let granted = c.in_flight.iter().any(|e| {
            e.from == n(2) && matches!(e.message.kind, MessageKind::VoteResponse { granted: true })
        });
        c.drop_where(|_| true);
        granted
    };
    assert!(!ask(&mut c), "refused within the minimum election timeout");
    c.advance(Duration::from_millis(100));
    assert!(ask(&mut c), "granted after it");
}
