//! Scenario tests for learners (thesis §4.2.1, "catching up new servers"; raft-rs and etcd call
//! them learners): a learner receives the log but never counts toward a quorum, and is promoted
//! to voter once caught up. Each test names the rule it checks. Every step also runs the
//! cluster-wide safety checker and each member's `check_invariants`.

use super::cluster::{Cluster, Envelope, n};
use super::ids;
use crate::{
    LogIndex, MembershipChange, MembershipError, Message, MessageKind, RaftConfig, Role,
    TransferError,
};

fn change(
    c: &mut Cluster,
    leader: u32,
    change: MembershipChange,
) -> Result<LogIndex, MembershipError> {
    c.step(leader, |raft, env| raft.change_membership(env, change))
}

fn involves(e: &Envelope, id: u32) -> bool {
    e.from == n(id) || e.to == n(id)
}

/// Three voters led by n1, and n4 added as a learner, caught up.
fn with_learner(tweak: impl Fn(&mut RaftConfig) + Copy) -> Cluster {
    let mut c = Cluster::with(3, tweak);
    c.add_joiner(4, tweak);
    c.elect(1);
    c.propose(1, "a");
    c.deliver_all();
    let index = change(&mut c, 1, MembershipChange::AddLearner(n(4))).unwrap();
    c.deliver_all();
    c.heartbeat(1);
    assert!(c.raft(1).commit_index() >= index);
    c
}

/// Thesis §4.2.1: a new server joins "as non-voting members. The leader replicates log entries
/// to them, but they are not yet counted towards majorities". The learner applies what commits,
/// yet two voters of three being away stops commits even though the learner holds every entry.
#[test]
fn learner_4_2_1_an_added_learner_catches_up_from_the_log_and_never_counts_toward_commit() {
    let mut c = with_learner(|_| {});
    assert_eq!(c.raft(4).learners(), &ids(&[4]));
    assert_eq!(c.raft(4).voters(), &ids(&[1, 2, 3]));
    assert!(c.raft(4).is_learner());
    assert_eq!(c.app(4).commands(), vec!["a"]);
    let last = c.raft(1).last_index();
    assert_eq!(c.raft(1).learner_progress(), vec![(n(4), last)]);
    assert!(
        c.raft(1)
            .follower_progress()
            .iter()
            .all(|(id, _)| *id != n(4)),
        "follower_progress lists voters only"
    );
    c.isolate(2);
    c.isolate(3);
    let x = c.propose(1, "x");
    c.deliver_all();
    assert_eq!(c.raft(4).last_index(), x, "the learner holds the entry");
    assert!(
        c.raft(1).commit_index() < x,
        "leader and learner are not a majority of the voters"
    );
    c.heal();
    for _ in 0..3 {
        // The appends to n2 and n3 were lost: resent once the leader sees them stall.
        c.heartbeat(1);
    }
    assert!(c.raft(1).commit_index() >= x);
    assert_eq!(c.app(4).commands(), vec!["a", "x"]);
}

/// The control for the test above: with the planted bug (a leader counts learners as voters)
/// the leader and the learner commit without a majority of the voters.
#[test]
fn learner_4_2_1_the_planted_bug_counts_a_learner_toward_commit() {
    let mut c = with_learner(|config| config.bug_learner_counts_toward_commit = true);
    c.isolate(2);
    c.isolate(3);
    let x = c.propose(1, "x");
    c.deliver_all();
    assert_eq!(
        c.raft(1).commit_index(),
        x,
        "committed by n1 and the learner alone"
    );
}

/// Thesis §4.2.1: learners are "non-voting": a learner runs no election timer (it never
/// campaigns, even when told to by TimeoutNow), a vote it grants never counts, and leadership
/// is never transferred to it.
#[test]
fn learner_4_2_1_a_learner_never_campaigns_its_vote_never_counts_and_it_cannot_be_handed_leadership()
 {
    let mut c = with_learner(|_| {});
    assert_eq!(
        c.raft(4).poll_timeout(),
        None,
        "a learner has no election timer"
    );
    let term = c.term(1);
    c.step(4, |raft, env| {
        let message = Message {
            term,
            kind: MessageKind::TimeoutNow,
        };
        raft.handle_message(env, n(1), message).unwrap()
    });
    assert_eq!(
        c.role(4),
        Role::Follower,
        "TimeoutNow does not make a learner campaign"
    );
    assert!(matches!(
        c.step(1, |raft, env| raft.transfer_leadership(env.now, n(4))),
        Err(TransferError::ToLearner(id)) if id == n(4)
    ));
    // n2 campaigns with n1 down and n3 cut off: its vote requests go to voters only, and a
    // granted vote from the learner does not make a majority.
    c.crash(1);
    c.isolate(3);
    c.fire(2);
    assert!(
        c.in_flight
            .iter()
            .all(|e| !matches!(e.message.kind, MessageKind::RequestVote { .. }) || e.to != n(4)),
        "the learner is not asked for a vote"
    );
    let term = c.term(2);
    c.step(2, |raft, env| {
        let message = Message {
            term,
            kind: MessageKind::VoteResponse { granted: true },
        };
        raft.handle_message(env, n(4), message).unwrap()
    });
    c.deliver_all();
    assert_eq!(
        c.role(2),
        Role::Candidate,
        "n2 and the learner are not a majority"
    );
}

/// Thesis §4.2.1 with §7: a learner added after the entries it needs were compacted catches up
/// from the snapshot, then the log; its learner status survives in the snapshot and a restart.
#[test]
fn learner_4_2_1_an_added_learner_catches_up_from_a_snapshot_after_compaction() {
    let mut c = Cluster::new(3);
    c.add_joiner(4, |_| {});
    c.elect(1);
    for k in 0..10 {
        c.propose(1, &format!("{k}"));
    }
    c.deliver_all();
    let index = c.raft(1).commit_index();
    let data = c.app(1).snapshot_data(index);
    c.step(1, |raft, env| raft.compact(env, index, data).unwrap());
    change(&mut c, 1, MembershipChange::AddLearner(n(4))).unwrap();
    c.propose(1, "after");
    c.deliver_all();
    c.heartbeat(1);
    assert_eq!(
        c.raft(4).snapshot().index,
        index,
        "caught up from the snapshot"
    );
    assert_eq!(c.app(4), c.app(1));
    assert_eq!(c.app(4).commands().last().unwrap(), "after");
    // Compacting past the change keeps the learner in the snapshot's configuration.
    let last = c.raft(1).commit_index();
    let data = c.app(1).snapshot_data(last);
    c.step(1, |raft, env| raft.compact(env, last, data).unwrap());
    assert_eq!(c.raft(1).snapshot().learners, ids(&[4]));
    assert_eq!(c.raft(1).learners(), &ids(&[4]));
    let last = c.raft(4).commit_index();
    let data = c.app(4).snapshot_data(last);
    c.step(4, |raft, env| raft.compact(env, last, data).unwrap());
    c.crash(4);
    c.restart(4);
    assert!(c.raft(4).is_learner(), "learner status is durable");
    assert_eq!(c.raft(4).poll_timeout(), None);
    c.propose(1, "again");
    c.deliver_all();
    c.heartbeat(1);
    assert_eq!(c.app(4).commands().last().unwrap(), "again");
}

/// Thesis §4.2.1: "the leader should abort the change if the new server is unavailable or is so
/// slow that it will never catch up" — here: promotion to voter is refused while the learner is
/// more than `learner_promotion_lag_entries_max` entries behind, accepted once it caught up; the
/// changes go one at a time and every refusal says why.
#[test]
fn learner_4_2_1_promotion_is_refused_while_the_learner_is_behind_and_accepted_once_caught_up() {
    let mut c = with_learner(|config| config.learner_promotion_lag_entries_max = 2);
    c.isolate(4);
    for k in 0..5 {
        c.propose(1, &format!("{k}"));
    }
    c.deliver_all();
    let refused = change(&mut c, 1, MembershipChange::PromoteLearner(n(4)));
    match refused {
        Err(e @ MembershipError::LearnerBehind { .. }) => {
            assert!(e.to_string().contains("not caught up"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        change(&mut c, 1, MembershipChange::AddVoter(n(4))),
        Err(MembershipError::IsLearner(_))
    ));
    assert!(matches!(
        change(&mut c, 1, MembershipChange::AddLearner(n(4))),
        Err(MembershipError::AlreadyLearner(_))
    ));
    assert!(matches!(
        change(&mut c, 1, MembershipChange::AddLearner(n(2))),
        Err(MembershipError::AlreadyVoter(_))
    ));
    assert!(matches!(
        change(&mut c, 1, MembershipChange::PromoteLearner(n(2))),
        Err(MembershipError::NotALearner(_))
    ));
    assert!(matches!(
        change(&mut c, 1, MembershipChange::RemoveLearner(n(9))),
        Err(MembershipError::NotALearner(_))
    ));
    c.heal();
    c.heartbeat(1);
    c.heartbeat(1);
    let index = change(&mut c, 1, MembershipChange::PromoteLearner(n(4))).unwrap();
    assert!(matches!(
        change(&mut c, 1, MembershipChange::RemoveVoter(n(3))),
        Err(MembershipError::ChangeInProgress { .. })
    ));
    assert_eq!(c.raft(1).voters(), &ids(&[1, 2, 3, 4]));
    assert!(c.raft(1).learners().is_empty());
    c.deliver_all();
    c.heartbeat(1);
    assert!(c.raft(1).commit_index() >= index);
    assert!(!c.raft(4).is_learner());
    assert!(
        c.raft(4).poll_timeout().is_some(),
        "a voter now: it runs an election timer"
    );
    // Thesis §4.1: the new voter counts toward the quorum at once: with n2 away, n1 and n3
    // (2 of 4) cannot commit without n4.
    c.isolate(2);
    let b = c.propose(1, "b");
    c.deliver_while(|e| !involves(e, 4));
    assert!(c.raft(1).commit_index() < b);
    c.deliver_all();
    assert!(c.raft(1).commit_index() >= b);
}

/// The path raft-rs and etcd recommend for replacing a server: add a learner, promote it, then
/// remove another voter — here the leader itself, which (thesis §4.2.2) "steps down once the
/// Cnew entry is committed"; the remaining voters, the former learner included, elect a leader
/// and commit. A learner that is removed stops receiving the log.
#[test]
fn learner_4_2_2_add_promote_then_remove_the_leader_and_a_removed_learner_hears_nothing() {
    let mut c = with_learner(|_| {});
    c.add_joiner(5, |_| {});
    change(&mut c, 1, MembershipChange::PromoteLearner(n(4))).unwrap();
    c.deliver_all();
    change(&mut c, 1, MembershipChange::AddLearner(n(5))).unwrap();
    c.deliver_all();
    c.heartbeat(1);
    assert!(c.raft(5).is_learner());
    change(&mut c, 1, MembershipChange::RemoveLearner(n(5))).unwrap();
    c.deliver_all();
    c.heartbeat(1);
    assert!(!c.raft(1).learners().contains(&n(5)));
    assert!(c.in_flight.iter().all(|e| e.to != n(5)));
    c.propose(1, "not for n5");
    c.deliver_all();
    assert!(!c.app(5).commands().contains(&"not for n5".to_string()));
    change(&mut c, 1, MembershipChange::RemoveVoter(n(1))).unwrap();
    assert!(c.raft(1).is_leader(), "leads until the change commits");
    c.deliver_all();
    assert_eq!(c.role(1), Role::Follower);
    assert_eq!(c.raft(1).poll_timeout(), None);
    c.fire(4);
    c.deliver_all();
    assert!(c.raft(4).is_leader(), "the former learner can now lead");
    let index = c.propose(4, "without n1");
    c.deliver_all();
    assert_eq!(c.raft(4).commit_index(), index);
    assert_eq!(c.raft(4).voters(), &ids(&[2, 3, 4]));
}

/// Thesis §4.2.1: since learners are not counted towards majorities, a slow learner "does not
/// affect availability": with every message to and from the learner held back, the voters
/// commit; the learner catches up when its messages arrive.
#[test]
fn learner_4_2_1_a_learner_whose_messages_are_delayed_does_not_block_commits() {
    let mut c = with_learner(|_| {});
    for k in 0..5 {
        let index = c.propose(1, &format!("{k}"));
        c.deliver_while(|e| !involves(e, 4));
        assert_eq!(c.raft(1).commit_index(), index);
    }
    assert!(c.in_flight.iter().any(|e| involves(e, 4)), "held back");
    c.heartbeat(1);
    c.heartbeat(1);
    assert_eq!(c.app(4), c.app(1));
}

/// Thesis §4.1, "servers process incoming RPC requests without consulting their current
/// configurations": a learner promoted by an entry it has not received yet still answers vote
/// requests, so a candidate whose log holds the promotion (and which needs the new voter's
/// vote) can win. etcd's raft allows learners to vote for the same reason.
#[test]
fn learner_4_1_a_promoted_learner_that_does_not_know_it_yet_still_answers_vote_requests() {
    let mut c = with_learner(|_| {});
    change(&mut c, 1, MembershipChange::PromoteLearner(n(4))).unwrap();
    // Only n2 receives the promotion; then n1 crashes.
    let to_n2 = |e: &Envelope| e.from == n(1) && e.to == n(2);
    c.deliver_while(to_n2);
    c.crash(1);
    c.drop_where(|e| involves(e, 1));
    assert_eq!(c.raft(2).voters(), &ids(&[1, 2, 3, 4]));
    assert!(c.raft(4).is_learner(), "n4 has not heard of its promotion");
    // n2 needs 3 votes of 4: its own, n3's and the learner's.
    c.fire(2);
    c.deliver_while(|e| {
        !matches!(e.message.kind, MessageKind::VoteResponse { .. }) || e.from != n(4)
    });
    assert_eq!(
        c.role(2),
        Role::Candidate,
        "n2 and n3 are not a majority of four"
    );
    c.deliver_all();
    assert!(c.raft(2).is_leader());
    assert!(
        !c.raft(4).is_learner(),
        "n4 learnt of its promotion from the new leader"
    );
    assert!(c.raft(4).poll_timeout().is_some());
}

/// Thesis §4.2.1 with §6.4, §6.4.1 and §6.2: learners count toward no quorum at all. With both
/// other voters cut off and only the learner answering, a ReadIndex read is never confirmed, the
/// lease is not renewed past the rounds the voters acknowledged, and CheckQuorum makes the
/// leader step down.
#[test]
fn learner_4_2_1_a_learner_counts_toward_no_read_lease_or_check_quorum() {
    let config = |config: &mut RaftConfig| {
        config.check_quorum = true;
        config.pre_vote = true;
        config.lease_reads = true;
    };
    let mut c = Cluster::with(3, config);
    c.add_joiner(4, config);
    // Nobody votes during the first minimum election timeout after a start (leases).
    c.advance(std::time::Duration::from_millis(100));
    c.elect(1);
    change(&mut c, 1, MembershipChange::AddLearner(n(4))).unwrap();
    c.deliver_all();
    c.heartbeat(1);
    assert!(
        c.raft(1).lease_read(c.now).is_some(),
        "the voters renewed the lease"
    );
    let cut_at = c.now;
    c.isolate(2);
    c.isolate(3);
    c.read_index(1, 7);
    let lease = c.raft(1).config().election_timeout_min;
    let mut beats = 0;
    while c.raft(1).is_leader() {
        c.heartbeat(1);
        beats += 1;
        assert!(beats <= 20, "CheckQuorum makes the leader step down");
        assert!(
            c.raft(1).lease_read(c.now).is_none() || c.now < cut_at + lease,
            "the learner's acknowledgements renew no lease"
        );
    }
    let read = c.events.iter().find_map(|(id, o)| match o {
        crate::Output::ReadReady { ctx, .. } | crate::Output::ReadFailed { ctx, .. }
            if *id == n(1) && ctx.0 == 7 =>
        {
            Some(o.clone())
        }
        _ => None,
    });
    assert!(
        matches!(read, Some(crate::Output::ReadFailed { .. })),
        "the read was never confirmed: {read:?}"
    );
}
