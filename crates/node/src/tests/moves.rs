//! Re-placing a primary-backup keyspace while it serves (`TRIARCH.KEYSPACE HOME`): the metadata
//! group records the new home, and the group's leader moves the voters there one server at a
//! time, through learners, on a hand-driven cluster of real `Node`s ([`super::cluster`]).

use super::cluster::{Cluster, b};
use super::*;
use std::collections::{BTreeMap, BTreeSet};
use triarch_core::KeyspaceSettings;

const NAME: &str = "balance";

/// Six nodes in two regions (r1 = n1, n3, n5; r2 = n2, n4, n6) and `balance` created with its
/// home in r1, led from there.
fn placed_in_r1(tune: fn(&mut NodeConfig)) -> Cluster {
    let mut c = Cluster::with_regions(6, 2);
    c.tune = tune;
    for id in 1..=6 {
        c.crash(id);
        c.start(id);
    }
    let create = KeyspaceSpec {
        settings: KeyspaceSettings {
            home: Some("r1".into()),
            ..KeyspaceSettings::default()
        },
        ..spec(NAME, Model::PrimaryBackup)
    };
    assert_eq!(c.call(1, Request::CreateKeyspace(create)), Reply::Created);
    let deadline = c.now_micros + 30_000_000;
    loop {
        let leader = c.elect(NAME);
        if region(leader) == "r1" {
            break;
        }
        assert!(c.now_micros < deadline, "no leader in r1");
        c.step();
    }
    c
}

fn region(id: NodeId) -> &'static str {
    if id.0 % 2 == 1 { "r1" } else { "r2" }
}

fn ids(ids: &[u32]) -> BTreeSet<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

/// The configuration the current leader holds: (leader, voters, learners).
fn configuration(c: &mut Cluster) -> Option<(NodeId, BTreeSet<NodeId>, BTreeSet<NodeId>)> {
    let leader = c.leader(NAME)?;
    let info = c.node(leader)?.primary().info(NAME)?;
    Some((leader, info.voters, info.learners))
}

/// What a move under load observed.
struct Moved {
    /// The fewest voters any leader's configuration had during the move.
    voters_min: usize,
    /// Every key written, with whether the write was acknowledged.
    writes: BTreeMap<String, bool>,
}

/// Asks (through n2) for `balance` to move to region `to` (r1: n1, n3, n5; r2: n2, n4, n6),
/// then keeps writing a fresh key through each node in turn while stepping the cluster, until
/// the group's leader is in `to`, its voters are that region's three nodes only, and every
/// other node has stopped its member; then lets every write finish.
fn move_under_load(c: &mut Cluster, to: &str) -> Moved {
    let (new, old) = if to == "r2" {
        ([2, 4, 6], [1, 3, 5])
    } else {
        ([1, 3, 5], [2, 4, 6])
    };
    let home = c.submit(
        2,
        Request::SetHome {
            name: NAME.into(),
            home: Some(to.into()),
        },
    );
    let mut pending: BTreeMap<RequestId, String> = BTreeMap::new();
    let mut writes = BTreeMap::new();
    let mut voters_min = usize::MAX;
    let mut home_answered = false;
    let deadline = c.now_micros + 120_000_000;
    for i in 0u32.. {
        assert!(c.now_micros < deadline, "the move did not finish");
        let key = format!("{NAME}:{to}w{i}");
        let request = c.submit(
            i % 6 + 1,
            Request::Set {
                key: b(&key),
                value: b(&format!("v{i}")),
                w: None,
            },
        );
        pending.insert(request, key);
        c.step();
        if let Some((_, voters, _)) = configuration(c) {
            voters_min = voters_min.min(voters.len());
        }
        if !home_answered && let Some(reply) = c.reply_to(home) {
            assert_eq!(reply, Reply::Created, "the new home was refused");
            home_answered = true;
        }
        collect(c, &mut pending, &mut writes);
        let done = matches!(
            configuration(c),
            Some((leader, voters, learners))
                if region(leader) == to && voters == ids(&new) && learners.is_empty()
        ) && old
            .into_iter()
            .all(|id| c.node(NodeId(id)).unwrap().primary().info(NAME).is_none());
        if done && home_answered {
            break;
        }
    }
    let deadline = c.now_micros + 30_000_000;
    while !pending.is_empty() {
        assert!(c.now_micros < deadline, "writes never answered");
        c.step();
        collect(c, &mut pending, &mut writes);
    }
    Moved { voters_min, writes }
}

/// Every write of `writes` (key `...w<i>`, value `v<i>`) read through node `reader`: an
/// acknowledged one reads back its value; one whose outcome is unknown reads back some value or
/// none, but no error.
fn reads_back(c: &mut Cluster, reader: u32, writes: &BTreeMap<String, bool>, context: &str) {
    for (key, ok) in writes {
        let i = key.rsplit('w').next().unwrap();
        let read = c.get(reader, key);
        if *ok {
            assert_eq!(
                read,
                Reply::Value(Some(b(&format!("v{i}")))),
                "{context}acknowledged {key} via n{reader}"
            );
        } else {
            assert!(
                matches!(read, Reply::Value(_)),
                "{context}{key} via n{reader}: {read:?}"
            );
        }
    }
}

fn collect(
    c: &mut Cluster,
    pending: &mut BTreeMap<RequestId, String>,
    writes: &mut BTreeMap<String, bool>,
) {
    let answered: Vec<RequestId> = pending
        .keys()
        .copied()
        .filter(|r| c.replies.iter().any(|(_, id, _)| id == r))
        .collect();
    for request in answered {
        let key = pending.remove(&request).unwrap();
        let reply = c.reply_to(request).unwrap();
        writes.insert(key, reply == Reply::Written { existed: false });
    }
}

/// The whole move, checked: the keyspace keeps serving, never runs with fewer voters than it is
/// placed on (a voter leaves only after its replacement caught up), ends with every voter and
/// the leader in the new home, the old voters stop their members and delete their copies, and
/// every acknowledged write reads back (linearizably, through the leader) via every node.
#[test]
fn a_keyspace_moves_to_its_new_home_one_voter_at_a_time_while_it_serves() {
    let mut c = placed_in_r1(|_| {});
    for i in 0..5 {
        assert_eq!(
            c.set(i % 6 + 1, &format!("{NAME}:before{i}"), "b"),
            Reply::Written { existed: false }
        );
    }
    let moved = move_under_load(&mut c, "r2");
    assert!(
        moved.voters_min >= 3,
        "the group ran with {} voters during the move",
        moved.voters_min
    );
    // Nothing fails here, so every write is acknowledged: requests through a member on its
    // way in (no leader known yet) or out (a stale leader) follow the other members' guesses.
    let acked = moved.writes.values().filter(|ok| **ok).count();
    assert!(moved.writes.len() >= 20, "{} writes", moved.writes.len());
    assert_eq!(acked, moved.writes.len(), "writes refused during the move");
    for id in 1..=6 {
        let node = c.node(NodeId(id)).unwrap();
        assert_eq!(
            node.catalog().get(NAME).unwrap().home.as_deref(),
            Some("r2")
        );
        if id % 2 == 1 {
            assert!(
                node.primary().info(NAME).is_none(),
                "n{id} still runs the group"
            );
            for table in ["raft.balance", "data.balance"] {
                let left = triarch_storage::Storage::scan(node.storage_mut(), table, &[], 1);
                assert!(left.unwrap().is_empty(), "n{id} kept {table}");
            }
        } else {
            let info = node
                .primary()
                .info(NAME)
                .expect("a new voter runs the group");
            assert_eq!(info.voters, ids(&[2, 4, 6]), "n{id}'s configuration");
        }
    }
    for reader in 1..=6 {
        for i in 0..5 {
            assert_eq!(
                c.get(reader, &format!("{NAME}:before{i}")),
                Reply::Value(Some(b("b"))),
                "read via n{reader}"
            );
        }
        reads_back(&mut c, reader, &moved.writes, "");
    }
    // And the keyspace keeps serving from its new home.
    assert_eq!(
        c.set(1, &format!("{NAME}:after"), "a"),
        Reply::Written { existed: false }
    );
    assert_eq!(
        c.get(3, &format!("{NAME}:after")),
        Reply::Value(Some(b("a")))
    );
    // And back home: the old voters, whose copies were deleted, join again as new members.
    let back = move_under_load(&mut c, "r1");
    assert!(
        back.voters_min >= 3,
        "{} voters moving back",
        back.voters_min
    );
    assert!(
        back.writes.values().all(|ok| *ok),
        "writes refused moving back"
    );
    for reader in [2, 5] {
        for key in moved.writes.keys().chain(back.writes.keys()) {
            let i = key.rsplit('w').next().unwrap();
            assert_eq!(
                c.get(reader, key),
                Reply::Value(Some(b(&format!("v{i}")))),
                "{key} via n{reader} after moving back"
            );
        }
    }
}

/// The control for the test above: with the planted bug (the leader removes a leaving voter
/// before its replacement is added) the group runs with fewer voters than it is placed on, and
/// the check sees it.
#[test]
fn the_planted_bug_removes_voters_before_adding_and_the_voter_check_sees_it() {
    let mut c = placed_in_r1(|config| config.primary.bug_move_remove_first = true);
    assert_eq!(
        c.set(2, &format!("{NAME}:k"), "v"),
        Reply::Written { existed: false }
    );
    let moved = move_under_load(&mut c, "r2");
    assert!(
        moved.voters_min < 3,
        "the planted bug went unnoticed: never fewer than {} voters",
        moved.voters_min
    );
}

/// Refusals change nothing: an unknown keyspace, a keyspace of another model, a region without
/// members, a malformed region name.
#[test]
fn a_new_home_is_refused_for_unknown_or_non_primary_keyspaces_and_empty_regions() {
    let mut c = placed_in_r1(|_| {});
    assert_eq!(
        c.call(1, Request::CreateKeyspace(spec("prefs", Model::Leaderless))),
        Reply::Created
    );
    c.run(5);
    let catalogs = |c: &mut Cluster| -> Vec<Vec<_>> {
        (1..=6)
            .map(|id| {
                let node = c.node(NodeId(id)).unwrap();
                node.catalog().entries().cloned().collect()
            })
            .collect()
    };
    let before = catalogs(&mut c);
    for (name, home, expect) in [
        ("nope", Some("r2"), "nope"),
        ("prefs", Some("r2"), "primary-backup"),
        (NAME, Some("r9"), "no member is in region \"r9\""),
        (NAME, Some("r 1"), "not a region name"),
    ] {
        let request = Request::SetHome {
            name: name.into(),
            home: home.map(String::from),
        };
        match c.call(3, request) {
            Reply::Error(e) => assert!(e.to_string().contains(expect), "{name}: {e}"),
            other => panic!("{name} {home:?}: {other:?}"),
        }
    }
    c.run(20);
    let after = catalogs(&mut c);
    assert_eq!(before, after, "a refused re-placement changed a catalog");
    let (leader, voters, _) = configuration(&mut c).unwrap();
    assert_eq!(region(leader), "r1");
    assert!(voters.iter().all(|v| region(*v) == "r1"));
}

/// Seeded runs of the move with faults: while the leader moves the voters, one node at a time
/// crashes and restarts (old voters, new members, leaders alike) and single nodes are cut off
/// and healed. No leader's configuration ever has fewer than three voters; after the faults the
/// keyspace must still reach its new home, the old voters must stop, and every acknowledged
/// write must read back through every node. (Checked with seeds 0..260 when written.) A failing seed prints
/// itself; `TRIARCH_MOVE_SEED=<seed>` replays one.
#[test]
fn seeded_moves_under_crashes_and_partitions_lose_no_acknowledged_write() {
    let seeds: Vec<u64> = match std::env::var("TRIARCH_MOVE_SEED") {
        Ok(seed) => vec![seed.parse().expect("a seed")],
        Err(_) => (0..20).collect(),
    };
    for seed in seeds {
        let result = std::panic::catch_unwind(|| move_under_faults(seed));
        if let Err(e) = result {
            eprintln!("reproduce with TRIARCH_MOVE_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

fn move_under_faults(seed: u64) {
    let mut rng = DetRng::seed_from_u64(seed);
    let mut c = placed_in_r1(|_| {});
    assert_eq!(
        c.call(
            1 + rng.below(6) as u32,
            Request::SetHome {
                name: NAME.into(),
                home: Some("r2".into()),
            },
        ),
        Reply::Created
    );
    let mut pending: BTreeMap<RequestId, (String, u32)> = BTreeMap::new();
    let mut writes: BTreeMap<String, bool> = BTreeMap::new();
    let mut crashed: Option<u32> = None;
    let answered = |c: &mut Cluster,
                    pending: &mut BTreeMap<RequestId, (String, u32)>,
                    writes: &mut BTreeMap<String, bool>| {
        let done: Vec<RequestId> = pending
            .keys()
            .copied()
            .filter(|r| c.replies.iter().any(|(_, id, _)| id == r))
            .collect();
        for request in done {
            let (key, _) = pending.remove(&request).unwrap();
            let reply = c.reply_to(request).unwrap();
            writes.insert(key, reply == Reply::Written { existed: false });
        }
    };
    // Faults while the move runs (it takes a few seconds without faults: a fault every few
    // steps, from the first).
    let mut faults_during_move = 0;
    for i in 0u32..600 {
        let via = 1 + rng.below(6) as u32;
        if Some(via) != crashed {
            let key = format!("{NAME}:s{seed}w{i}");
            let request = c.submit(
                via,
                Request::Set {
                    key: b(&key),
                    value: b(&format!("v{i}")),
                    w: None,
                },
            );
            pending.insert(request, (key, via));
        }
        c.step();
        answered(&mut c, &mut pending, &mut writes);
        if let Some((leader, voters, _)) = configuration(&mut c) {
            assert!(
                voters.len() >= 3,
                "seed {seed}: n{leader} leads with voters {voters:?}"
            );
        }
        if i % 8 == 3 {
            if configuration(&mut c).is_none_or(|(_, voters, _)| voters != ids(&[2, 4, 6])) {
                faults_during_move += 1;
            }
            match (rng.below(3), crashed) {
                (0, None) => {
                    let id = 1 + rng.below(6) as u32;
                    c.crash(id);
                    crashed = Some(id);
                    // Its clients never hear back: their writes' outcomes are unknown.
                    pending.retain(|_, (key, origin)| {
                        if *origin == id {
                            writes.insert(key.clone(), false);
                        }
                        *origin != id
                    });
                }
                (0, Some(id)) => {
                    c.start(id);
                    crashed = None;
                }
                (1, _) => c.partition(&[1 + rng.below(6) as u32]),
                _ => c.heal(),
            }
        }
    }
    c.heal();
    if let Some(id) = crashed {
        c.start(id);
    }
    // Then the move must finish and every write get its outcome.
    let deadline = c.now_micros + 120_000_000;
    loop {
        if c.now_micros >= deadline {
            for id in 1..=6 {
                let info = c.node(NodeId(id)).unwrap().primary().info(NAME);
                eprintln!(
                    "n{id}: {:?}",
                    info.map(|g| (
                        g.role,
                        g.term,
                        g.leader,
                        g.voters,
                        g.learners,
                        g.target,
                        g.commit_index,
                        g.last_index
                    ))
                );
            }
            eprintln!("pending {}", pending.len());
        }
        assert!(
            c.now_micros < deadline,
            "seed {seed}: the move did not finish"
        );
        c.step();
        answered(&mut c, &mut pending, &mut writes);
        let moved = matches!(
            configuration(&mut c),
            Some((leader, voters, learners))
                if region(leader) == "r2" && voters == ids(&[2, 4, 6]) && learners.is_empty()
        ) && [1, 3, 5]
            .into_iter()
            .all(|id| c.node(NodeId(id)).unwrap().primary().info(NAME).is_none());
        if moved && pending.is_empty() {
            break;
        }
    }
    let acked = writes.values().filter(|ok| **ok).count();
    assert!(acked > 0, "seed {seed}: nothing acknowledged");
    assert!(
        faults_during_move >= 1,
        "seed {seed}: the faults missed the move"
    );
    for reader in 1..=6 {
        reads_back(&mut c, reader, &writes, &format!("seed {seed}: "));
    }
}

/// Without the preferred-leader hand-over (`spread_leaders` off), the leaving leader hands
/// leadership to a caught-up voter of the target itself once it is the last voter to remove.
#[test]
fn a_leaving_leader_hands_over_by_itself_when_leaders_are_not_spread() {
    let mut c = placed_in_r1(|config| config.primary.spread_leaders = false);
    let moved = move_under_load(&mut c, "r2");
    assert!(moved.voters_min >= 3, "{} voters", moved.voters_min);
    assert!(moved.writes.values().all(|ok| *ok), "writes refused");
}

/// A keyspace of the configuration file (never created through the metadata group, so it has no
/// row there) moves too: the proposer's definition travels with the command.
#[test]
fn a_keyspace_of_the_configuration_file_moves_too() {
    let mut c = Cluster::with_regions(6, 2);
    c.tune = |config| {
        config.keyspaces.push(KeyspaceConfig {
            home: Some("r1".into()),
            ..KeyspaceConfig::with_defaults(NAME, Model::PrimaryBackup, 6)
        })
    };
    for id in 1..=6 {
        c.crash(id);
        c.start(id);
    }
    let deadline = c.now_micros + 30_000_000;
    while region(c.elect(NAME)) != "r1" {
        assert!(c.now_micros < deadline, "no leader in r1");
        c.step();
    }
    let moved = move_under_load(&mut c, "r2");
    assert!(moved.voters_min >= 3, "{} voters", moved.voters_min);
    assert!(moved.writes.values().all(|ok| *ok), "writes refused");
    reads_back(&mut c, 5, &moved.writes, "");
}
