//! Primary-backup keyspaces on a hand-driven cluster of real `Node`s ([`super::cluster`]).

use super::cluster::{Cluster, b};
use super::*;
use std::collections::BTreeSet;
use triarch_core::ReadPolicy;
use triarch_primary::engine::Message as PbMessage;

/// A three-node cluster with a `balance` keyspace whose leadership has settled on its preferred
/// member (the first election may pick another; that leader hands over once it can).
fn balance_cluster() -> (Cluster, NodeId) {
    let mut c = Cluster::new(3);
    assert_eq!(
        c.call(
            1,
            Request::CreateKeyspace(spec("balance", Model::PrimaryBackup))
        ),
        Reply::Created
    );
    let leader = settle_on_preferred(&mut c, "balance");
    (c, leader)
}

/// Runs until the keyspace's leader is its preferred member.
fn settle_on_preferred(c: &mut Cluster, name: &str) -> NodeId {
    let keyspace = c.nodes[0]
        .as_ref()
        .unwrap()
        .catalog()
        .get(name)
        .unwrap()
        .clone();
    let members: Vec<(NodeId, &str)> = c
        .members
        .iter()
        .map(|m| (m.id, m.region.as_str()))
        .collect();
    let preferred = triarch_primary::engine::preferred_leader(&keyspace, &members);
    let deadline = c.now_micros + 30_000_000;
    while c.elect(name) != preferred {
        assert!(
            c.now_micros < deadline,
            "{name}: leadership never reached {preferred}"
        );
        c.step();
    }
    preferred
}

#[test]
fn leadership_settles_on_each_keyspace_s_preferred_member() {
    let mut c = Cluster::new(3);
    let names = ["a", "b", "c", "d", "e", "f"];
    for name in names {
        c.call(1, Request::CreateKeyspace(spec(name, Model::PrimaryBackup)));
    }
    let leaders: BTreeSet<NodeId> = names
        .into_iter()
        .map(|name| settle_on_preferred(&mut c, name))
        .collect();
    assert!(leaders.len() >= 2, "leaders spread over nodes: {leaders:?}");
}

fn value(s: &str) -> Reply {
    Reply::Value(Some(b(s)))
}

#[test]
fn every_node_serves_linearizable_reads_and_writes_through_the_leader() {
    let (mut c, leader) = balance_cluster();
    for via in 1..=3 {
        let key = format!("balance:k{via}");
        assert_eq!(c.set(via, &key, "10"), Reply::Written { existed: false });
        for reader in 1..=3 {
            assert_eq!(c.get(reader, &key), value("10"), "read via {reader}");
        }
        assert_eq!(
            c.incr(via, &key, 5),
            Reply::Applied(OperationResult::Counter(15))
        );
    }
    assert_eq!(c.get(1, "balance:missing"), Reply::Value(None));
    assert_eq!(
        c.call(
            2,
            Request::Delete {
                key: b("balance:k1"),
                w: None
            }
        ),
        Reply::Written { existed: true }
    );
    assert_eq!(c.get(3, "balance:k1"), Reply::Value(None));
    // Every member applied the same entries.
    let applied: Vec<_> = (1..=3)
        .map(|i| {
            c.nodes[i - 1]
                .as_ref()
                .unwrap()
                .primary()
                .info("balance")
                .unwrap()
        })
        .collect();
    c.step();
    let Reply::KeyspaceInfo(info) = c.call(
        1,
        Request::KeyspaceInfo {
            name: "balance".into(),
        },
    ) else {
        panic!()
    };
    let group = info.group.expect("node 1 is a voter");
    assert_eq!(group.leader, Some(leader));
    assert!(group.commit_index.0 >= 7, "{group:?}");
    assert_eq!(applied.len(), 3);
}

#[test]
fn cas_watch_and_exec_follow_redis_semantics() {
    let (mut c, _) = balance_cluster();
    c.set(1, "balance:a", "100");
    let cas = |expected: &str, new: &str| Request::Cas {
        key: b("balance:a"),
        expected: Some(b(expected)),
        new: b(new),
    };
    assert_eq!(c.call(2, cas("100", "90")), Reply::Swapped(true));
    assert_eq!(c.call(3, cas("100", "80")), Reply::Swapped(false));
    assert_eq!(c.get(1, "balance:a"), value("90"));
    let absent = Request::Cas {
        key: b("balance:new"),
        expected: None,
        new: b("1"),
    };
    assert_eq!(c.call(1, absent.clone()), Reply::Swapped(true));
    assert_eq!(c.call(1, absent), Reply::Swapped(false));

    // A transfer: WATCH both accounts, read them, MULTI/EXEC.
    c.set(1, "balance:b", "0");
    let Reply::Watched(records) = c.call(
        2,
        Request::Watch {
            keys: vec![b("balance:a"), b("balance:b")],
        },
    ) else {
        panic!()
    };
    assert_eq!(records[0].value, Some(b("90")));
    let versions: Vec<u64> = records.iter().map(|r| r.version).collect();
    assert!(versions.iter().all(|v| *v > 0), "{versions:?}");
    let transfer = |versions: &[u64]| Request::Exec {
        watches: vec![(b("balance:a"), versions[0]), (b("balance:b"), versions[1])],
        commands: vec![
            Command::IncrBy {
                key: b("balance:a"),
                by: -30,
            },
            Command::IncrBy {
                key: b("balance:b"),
                by: 30,
            },
            Command::Get {
                key: b("balance:b"),
            },
        ],
    };
    assert_eq!(
        c.call(3, transfer(&versions)),
        Reply::Exec(Some(vec![
            CommandResult::Integer(60),
            CommandResult::Integer(30),
            CommandResult::Value(Some(b("30"))),
        ]))
    );
    // The same versions again: a watched key changed since, so nothing applies.
    assert_eq!(c.call(1, transfer(&versions)), Reply::Exec(None));
    assert_eq!(c.get(2, "balance:a"), value("60"));
    assert_eq!(c.get(2, "balance:b"), value("30"));
    // INCR of a non-integer fails in its slot; the rest of the transaction applies.
    c.set(1, "balance:text", "abc");
    assert_eq!(
        c.call(
            1,
            Request::Exec {
                watches: vec![],
                commands: vec![
                    Command::IncrBy {
                        key: b("balance:text"),
                        by: 1
                    },
                    Command::Set {
                        key: b("balance:c"),
                        value: b("x")
                    },
                ],
            }
        ),
        Reply::Exec(Some(vec![
            CommandResult::NotAnInteger,
            CommandResult::Written { existed: false }
        ]))
    );
    assert_eq!(
        c.incr(2, "balance:text", 1),
        Reply::Error(RequestError::NotAnInteger)
    );
}

#[test]
fn requests_a_primary_backup_keyspace_cannot_take_are_refused_and_change_nothing() {
    let (mut c, _) = balance_cluster();
    let r = c.call(
        1,
        Request::Apply {
            key: b("balance:x"),
            op: Operation::SetAdd(vec![b("e")]),
            r: None,
            w: None,
        },
    );
    assert!(
        matches!(r, Reply::Error(RequestError::NotForPrimaryBackup { .. })),
        "{r:?}"
    );
    let r = c.call(
        1,
        Request::Watch {
            keys: vec![b("plain")],
        },
    );
    assert!(
        matches!(r, Reply::Error(RequestError::NeedsPrimaryBackup { .. })),
        "{r:?}"
    );
    let r = c.call(
        1,
        Request::Exec {
            watches: vec![],
            commands: vec![
                Command::Set {
                    key: b("balance:x"),
                    value: b("1"),
                },
                Command::Set {
                    key: b("plain"),
                    value: b("1"),
                },
            ],
        },
    );
    assert_eq!(r, Reply::Error(RequestError::CrossKeyspace));
    let big = Bytes::from(vec![b'v'; VALUE_BYTES_MAX_DEFAULT + 1]);
    let r = c.call(
        2,
        Request::Cas {
            key: b("balance:x"),
            expected: None,
            new: big,
        },
    );
    assert!(
        matches!(r, Reply::Error(RequestError::ValueTooLarge { .. })),
        "{r:?}"
    );
    assert_eq!(c.get(3, "balance:x"), Reply::Value(None));
}

#[test]
fn a_new_leader_takes_over_and_no_acknowledged_write_is_lost() {
    let (mut c, old) = balance_cluster();
    for i in 0..20 {
        let via = 1 + (i % 3);
        c.incr(via, "balance:n", 1);
    }
    c.down.insert(old);
    let survivor = (1..=3).find(|i| NodeId(*i) != old).unwrap();
    // Requests through the survivors wait for the election and then succeed.
    assert_eq!(
        c.incr(survivor, "balance:n", 1),
        Reply::Applied(OperationResult::Counter(21))
    );
    let new = c.elect("balance");
    assert_ne!(new, old);
    // The old leader comes back, catches up, and (being the keyspace's preferred member) is
    // handed leadership back; nothing acknowledged meanwhile is lost.
    c.down.remove(&old);
    c.incr(new.0, "balance:n", 1);
    assert_eq!(c.get(old.0, "balance:n"), value("22"));
    assert_eq!(settle_on_preferred(&mut c, "balance"), old);
    assert_eq!(c.get(new.0, "balance:n"), value("22"));
}

#[test]
fn everything_acknowledged_survives_a_crash_of_every_node() {
    let (mut c, _) = balance_cluster();
    for i in 0..10 {
        c.set(1 + (i % 3), &format!("balance:k{i}"), &i.to_string());
    }
    for i in 1..=3 {
        c.crash(i);
    }
    c.in_flight.clear();
    for i in 1..=3 {
        c.start(i);
    }
    c.elect("balance");
    for i in 0..10 {
        assert_eq!(
            c.get(1 + ((i + 1) % 3), &format!("balance:k{i}")),
            value(&i.to_string())
        );
    }
}

#[test]
fn a_duplicated_forward_applies_once() {
    let (mut c, leader) = balance_cluster();
    let follower = (1..=3).find(|i| NodeId(*i) != leader).unwrap();
    c.delivered.clear();
    assert_eq!(
        c.incr(follower, "balance:once", 1),
        Reply::Applied(OperationResult::Counter(1))
    );
    let forward = c
        .delivered
        .iter()
        .find(|(_, _, m)| matches!(m, Message::Primary(PbMessage::Forward { .. })))
        .cloned()
        .expect("the follower forwarded to the leader");
    // The network delivers the forward again, later.
    c.in_flight.push_back(forward);
    for _ in 0..50 {
        c.step();
    }
    assert_eq!(c.get(leader.0, "balance:once"), value("1"));
    let stats = c.nodes[leader.0 as usize - 1]
        .as_ref()
        .unwrap()
        .primary()
        .stats();
    assert_eq!(stats.proposals, 2, "the duplicate was proposed again");
    assert!(stats.duplicates >= 1, "{stats:?}");
}

/// A leader sends its entries before its own copy is durable and counts that copy toward a
/// commit only once the driver reports it durable ([`Node::synced`]): a single voter answers
/// a write only after its sync, and its answer, like every primary-backup answer, vouches only
/// for durable entries (it may leave before the next batch's sync).
#[test]
fn a_single_voter_commits_only_what_its_driver_reported_durable() {
    let mut c = Cluster::new(1);
    c.call(
        1,
        Request::CreateKeyspace(spec("balance", Model::PrimaryBackup)),
    );
    c.elect("balance");
    let now = c.now();
    let node = c.nodes[0].as_mut().unwrap();
    node.handle_request(
        now,
        RequestId(999),
        Request::Set {
            key: b("balance:k"),
            value: b("1"),
            w: None,
        },
    );
    let replied = |node: &mut Node<SimDisk>| {
        std::iter::from_fn(|| node.poll_output()).find_map(|o| match o {
            Output::Reply {
                request: RequestId(999),
                reply,
                early,
                ..
            } => Some((reply, early)),
            _ => None,
        })
    };
    assert_eq!(replied(node), None, "not committed before the sync");
    let point = node.sync_point();
    node.storage_mut().sync().unwrap();
    node.synced(now, point);
    assert_eq!(
        replied(node),
        Some((Reply::Written { existed: false }, true))
    );
}

/// A read of `key` through `via` under `policy`, presenting `session`.
fn get_with(
    c: &mut Cluster,
    via: u32,
    key: &str,
    policy: ReadPolicy,
    session: Option<u64>,
) -> Reply {
    c.call(
        via,
        Request::GetWith {
            key: b(key),
            policy: Some(policy),
            session,
        },
    )
}

fn fresh_reads(c: &Cluster, id: NodeId) -> u64 {
    c.nodes[id.0 as usize - 1]
        .as_ref()
        .unwrap()
        .primary()
        .stats()
        .fresh_reads
}

#[test]
fn a_bounded_read_is_served_by_a_follower_only_within_its_bound() {
    let (mut c, leader) = balance_cluster();
    let follower = (1..=3).map(NodeId).find(|id| *id != leader).unwrap();
    let bounded = ReadPolicy::Bounded { max_lag_ms: 1_000 };
    assert_eq!(
        c.set(leader.0, "balance:k", "1"),
        Reply::Written { existed: false }
    );
    c.run(20); // heartbeats carry the commit index to the followers
    assert_eq!(
        get_with(&mut c, follower.0, "balance:k", bounded, None),
        value("1")
    );
    assert_eq!(
        fresh_reads(&c, follower),
        1,
        "served by the follower itself"
    );
    // Cut off, the follower still serves within the bound: possibly stale, as the policy says.
    c.partition(&[follower.0]);
    let cut_at = c.now_micros;
    assert_eq!(
        c.set(leader.0, "balance:k", "2"),
        Reply::Written { existed: true }
    );
    assert_eq!(
        get_with(&mut c, follower.0, "balance:k", bounded, None),
        value("1")
    );
    // Past the bound it may not: the read goes to the leader, which it cannot reach, so the
    // client gets an error, never the stale value.
    while c.now_micros < cut_at + 1_500_000 {
        c.step();
    }
    let late = get_with(&mut c, follower.0, "balance:k", bounded, None);
    assert!(matches!(late, Reply::Error(_)), "{late:?}");
    assert_eq!(fresh_reads(&c, follower), 2);
    c.heal();
    assert_eq!(
        get_with(&mut c, follower.0, "balance:k", bounded, None),
        value("2")
    );
}

#[test]
fn a_session_read_sees_the_client_s_own_write_wherever_it_is_served() {
    let (mut c, leader) = balance_cluster();
    let followers: Vec<NodeId> = (1..=3).map(NodeId).filter(|id| *id != leader).collect();
    // One follower misses the write (cut off); the other has it.
    c.partition(&[followers[1].0]);
    let request = c.submit(
        leader.0,
        Request::Set {
            key: b("balance:k"),
            value: b("mine"),
            w: None,
        },
    );
    let deadline = c.now_micros + 10_000_000;
    while c.reply_to(request).is_none() {
        assert!(c.now_micros < deadline);
        c.step();
    }
    let token = c.sessions[&request].clone();
    assert_eq!(token.keyspace, "balance");
    c.run(20);
    let session = ReadPolicy::Session;
    let up_to_date = followers[0];
    assert_eq!(
        get_with(
            &mut c,
            up_to_date.0,
            "balance:k",
            session,
            Some(token.index)
        ),
        value("mine")
    );
    assert_eq!(
        fresh_reads(&c, up_to_date),
        1,
        "served by the follower itself"
    );
    // The follower that missed it does not answer from its state: it asks the leader (which
    // it cannot reach), so the client never reads around its own write.
    let behind = followers[1];
    let reply = get_with(&mut c, behind.0, "balance:k", session, Some(token.index));
    assert!(matches!(reply, Reply::Error(_)), "{reply:?}");
    assert_eq!(fresh_reads(&c, behind), 0);
    c.heal();
    assert_eq!(
        get_with(&mut c, behind.0, "balance:k", session, Some(token.index)),
        value("mine")
    );
}

/// Compaction copies no state (snapshots on demand): a follower cut off while the leader
/// compacts past what it holds gets a snapshot the leader materializes only then, and serves
/// what it restored from it.
#[test]
fn a_follower_behind_the_compacted_log_is_sent_a_snapshot_materialized_on_demand() {
    let mut c = Cluster::new(3);
    c.tune = |config| config.primary.compact_every = 20;
    for id in 1..=3 {
        c.crash(id);
        c.start(id);
    }
    c.call(
        1,
        Request::CreateKeyspace(spec("balance", Model::PrimaryBackup)),
    );
    let leader = settle_on_preferred(&mut c, "balance");
    let follower = (1..=3).map(NodeId).find(|id| *id != leader).unwrap();
    let stats = |c: &Cluster, id: NodeId| {
        c.nodes[id.0 as usize - 1]
            .as_ref()
            .unwrap()
            .primary()
            .stats()
    };
    c.partition(&[follower.0]);
    // Long enough for the leader's CheckQuorum round to notice the follower is silent.
    c.run(30);
    for i in 0..100 {
        c.set(leader.0, &format!("balance:k{i}"), &i.to_string());
    }
    assert!(stats(&c, leader).compactions >= 1);
    assert_eq!(
        stats(&c, leader).snapshots_materialized,
        0,
        "no state copied"
    );
    c.heal();
    c.set(leader.0, "balance:last", "after");
    c.run(50);
    assert!(stats(&c, leader).snapshots_materialized >= 1);
    assert!(stats(&c, follower).snapshots_restored >= 1);
    let session = ReadPolicy::Session;
    for (key, want) in [
        ("balance:k7", "7"),
        ("balance:k99", "99"),
        ("balance:last", "after"),
    ] {
        let leader_index = c.nodes[leader.0 as usize - 1]
            .as_ref()
            .unwrap()
            .primary()
            .applied_index("balance")
            .unwrap();
        assert_eq!(
            get_with(&mut c, follower.0, key, session, Some(leader_index.0)),
            value(want)
        );
    }
    assert!(
        fresh_reads(&c, follower) >= 3,
        "served by the follower itself"
    );
}

#[test]
fn a_home_region_places_every_voter_and_the_leader_there_and_must_exist() {
    // Six nodes in two regions: r1 = n1, n3, n5 and r2 = n2, n4, n6.
    let mut c = Cluster::with_regions(6, 2);
    let home = |name: &str, region: &str, model| KeyspaceSpec {
        settings: KeyspaceSettings {
            home: Some(region.into()),
            ..KeyspaceSettings::default()
        },
        ..spec(name, model)
    };
    for region in ["r1", "r2"] {
        let name = format!("home-{region}");
        assert_eq!(
            c.call(
                1,
                Request::CreateKeyspace(home(&name, region, Model::PrimaryBackup))
            ),
            Reply::Created
        );
        let leader = settle_on_preferred(&mut c, &name);
        let members = c.members.clone();
        let in_region = |id: NodeId| members.iter().any(|m| m.id == id && m.region == region);
        assert!(
            in_region(leader),
            "{name}: leader {leader} outside {region}"
        );
        let voters = c
            .node(leader)
            .unwrap()
            .primary()
            .info(&name)
            .unwrap()
            .voters;
        assert_eq!(voters.len(), 3);
        assert!(
            voters.iter().all(|v| in_region(*v)),
            "{name}: voters {voters:?}"
        );
        assert_eq!(
            c.set(2, &format!("{name}:k"), "v"),
            Reply::Written { existed: false }
        );
    }
    // A region without members, and a home on a model that keeps copies everywhere: refused,
    // and nothing is created.
    for (name, region, model, expect) in [
        (
            "nowhere",
            "r9",
            Model::PrimaryBackup,
            "no member is in region \"r9\"",
        ),
        (
            "lhome",
            "r1",
            Model::Leaderless,
            "home region places a primary-backup group",
        ),
        ("bad", "r 1", Model::PrimaryBackup, "not a region name"),
    ] {
        match c.call(1, Request::CreateKeyspace(home(name, region, model))) {
            Reply::Error(e) => assert!(e.to_string().contains(expect), "{name}: {e}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(c.node(NodeId(1)).unwrap().catalog().get(name).is_none());
    }
}
