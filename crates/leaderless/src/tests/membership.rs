//! Membership changes on the hand-driven cluster: a node joins a ring of three, a node leaves a
//! ring of four, each through the three phases (`crate::membership`), with writes before and
//! during the move; afterwards every acknowledged value is on W owners of the new ring.

use super::*;

const W: usize = 2;

fn ids(list: &[u32]) -> Vec<NodeId> {
    list.iter().map(|&i| NodeId(i)).collect()
}

impl Cluster {
    /// Adds node `id` built on the ring of `members` (which need not include it).
    fn add_node(&mut self, id: u32, members: &[NodeId], config: LeaderlessConfig) {
        let config = self.engine_config(config);
        let replica = Replica {
            engine: Leaderless::new(NodeId(id), members, config),
            disk: SimDisk::new(),
            hlc: Hlc::new(NodeId(id), 60_000),
            wall_ms: 1_000,
        };
        self.nodes.insert(NodeId(id), replica);
    }

    fn begin_move_everywhere(&mut self, next: &[NodeId]) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.step(id, |e, env| e.begin_move(env, next));
        }
    }

    fn handoff_everywhere(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.step(id, |e, env| e.start_handoff(env, &[ks()]));
        }
        self.deliver_all();
    }

    fn finish_everywhere(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.step(id, |e, env| e.finish_move(env));
        }
    }

    /// The owners of `key` on the ring node `via` is on.
    fn owners(&self, via: u32, key: &str) -> Vec<NodeId> {
        self.nodes[&NodeId(via)]
            .engine
            .replicas(&ks(), key.as_bytes())
    }

    /// The owners of `key` on the ring node `via` moves to.
    fn next_owners(&self, via: u32, key: &str) -> Vec<NodeId> {
        let ring = self.nodes[&NodeId(via)].engine.next_ring().unwrap();
        ring.preference_list(Ring::position("default", key.as_bytes()), 3)
    }

    /// Checks every acknowledged value against the ring node 1 is on now: at least W of the
    /// key's owners hold it on disk, and a read at R=2 through each pair of owners, with
    /// every other node down, returns it.
    fn check_on_new_ring(&mut self, acked: &BTreeMap<String, String>) {
        for (key, value) in acked {
            let owners = self.owners(1, key);
            let holders = owners
                .iter()
                .filter(|o| {
                    self.stored(o.0, key)
                        .is_some_and(|r| r.value.as_deref() == Some(value.as_bytes()))
                })
                .count();
            assert!(
                holders >= W,
                "{key}={value} is on {holders} of its new owners {owners:?}"
            );
        }
        let all: BTreeSet<NodeId> = self.nodes.keys().copied().collect();
        for (key, value) in acked {
            let owners = self.owners(1, key);
            for skip in &owners {
                let pair: Vec<NodeId> = owners.iter().copied().filter(|o| o != skip).collect();
                self.down = all.iter().copied().filter(|n| !pair.contains(n)).collect();
                assert_eq!(
                    self.get(pair[0].0, key),
                    read(value),
                    "{key} through {pair:?}"
                );
            }
        }
        self.down.clear();
    }
}

/// A key whose owners (as sets) are `current` on node 1's ring and `next` on the ring of
/// `next_members`, searched for.
fn key_moving(c: &Cluster, next_members: &[u32], current: &[u32], next: &[u32]) -> String {
    let next_ring = Ring::new(&ids(next_members), ring::VNODES_PER_NODE_DEFAULT);
    let sorted = |mut v: Vec<NodeId>| {
        v.sort();
        v
    };
    (0..10_000)
        .map(|i| format!("probe{i}"))
        .find(|k| {
            let position = Ring::position("default", k.as_bytes());
            sorted(c.owners(1, k)) == ids(current)
                && sorted(next_ring.preference_list(position, 3)) == ids(next)
        })
        .expect("some key has these owners")
}

#[test]
fn a_node_joins_three_and_every_acknowledged_write_is_on_w_of_its_new_owners() {
    let mut c = Cluster::new(3, LeaderlessConfig::default());
    let (current, next) = (ids(&[1, 2, 3]), ids(&[1, 2, 3, 4]));
    c.add_node(4, &current, LeaderlessConfig::default());
    let mut acked = BTreeMap::new();
    // Before the move: with one replica down at a time, so that many keys are on exactly W
    // owners and the handoff from every old owner matters.
    for i in 0..60u32 {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        c.down = BTreeSet::from([NodeId(1 + i % 3)]);
        assert_eq!(
            c.set(1 + (i + 1) % 3, &key, &value),
            Outcome::Written { existed: false }
        );
        acked.insert(key, value);
    }
    c.down.clear();
    // Node 4, not on the ring, coordinates already.
    assert_eq!(c.get(4, "k7"), read("v7"));

    // A write in flight when the move begins keeps its old shape, and holds the node back.
    let req = RequestId(9_999);
    let k = Bytes::from_static(b"k0");
    c.step(NodeId(1), |e, env| {
        e.write(env, req, &ks(), k, Some(Bytes::from_static(b"v0'")), 2)
    });
    c.begin_move_everywhere(&next);
    assert_eq!(c.nodes[&NodeId(1)].engine.pre_move_ops_in_flight(), 1);
    assert!(!c.nodes[&NodeId(1)].engine.move_ready());
    assert_eq!(c.finish(req), Outcome::Written { existed: true });
    acked.insert("k0".into(), "v0'".into());
    for r in c.nodes.values() {
        assert!(r.engine.move_ready(), "every pre-move operation finished");
    }
    // begin_move again (a restarted node layer replays it): nothing changes.
    c.begin_move_everywhere(&next);
    assert!(c.nodes[&NodeId(1)].engine.move_ready());

    // During the move a write needs W of the current owners AND W of the next ones.
    let joint = key_moving(&c, &[1, 2, 3, 4], &[1, 2, 3], &[1, 2, 4]);
    let other = c.owners(1, &joint);
    let gained_and_kept_down = BTreeSet::from([NodeId(4), NodeId(2)]);
    c.down = gained_and_kept_down;
    // Current owners 1 and 3 answer (W of the current list), but of the next list only 1.
    assert_eq!(
        c.set(1, &joint, "lost"),
        Outcome::QuorumFailed { acks: 1, needed: 2 }
    );
    assert_eq!(other.len(), 3);
    c.down = BTreeSet::from([NodeId(3)]);
    assert_eq!(
        c.set(1, &joint, "joint"),
        Outcome::Written { existed: true }
    );
    acked.insert(joint.clone(), "joint".into());
    c.down.clear();
    // More writes during the move, through every node, new node included, with one node down.
    for i in 0..40u32 {
        let (key, value) = (format!("m{i}"), format!("w{i}"));
        c.down = BTreeSet::from([NodeId(1 + i % 4)]);
        let via = 1 + (i + 1) % 4;
        assert_eq!(
            c.set(via, &key, &value),
            Outcome::Written { existed: false }
        );
        acked.insert(key, value);
    }
    c.down.clear();
    // A read during the move is joint too: R of each list.
    assert_eq!(c.get(4, "k9"), read("v9"));

    // Handoff: node 2 crashes half way and restarts; the node layer replays the phases.
    let ids_all: Vec<NodeId> = c.nodes.keys().copied().collect();
    for &id in &ids_all {
        c.step(id, |e, env| e.start_handoff(env, &[ks()]));
    }
    let batches = c
        .in_flight
        .iter()
        .filter(|(_, _, m)| matches!(m, Message::MoveBatch { .. }))
        .count();
    assert!(batches >= 3, "every old owner sends ({batches} batches)");
    c.in_flight.retain(|(from, _, _)| *from != NodeId(2)); // lost with the crash
    {
        let r = c.nodes.get_mut(&NodeId(2)).unwrap();
        r.disk.crash();
        let started = r.hlc.now(r.wall_ms);
        r.engine = Leaderless::new(NodeId(2), &current, LeaderlessConfig::default())
            .with_incarnation(1 << 40, started);
    }
    c.step(NodeId(2), |e, env| e.begin_move(env, &next));
    assert!(c.nodes[&NodeId(2)].engine.move_ready());
    assert!(!c.nodes[&NodeId(2)].engine.handoff_done());
    c.step(NodeId(2), |e, env| e.start_handoff(env, &[ks()]));
    c.step(NodeId(2), |e, env| e.start_handoff(env, &[ks()])); // idempotent
    c.deliver_all();
    for (id, r) in &c.nodes {
        assert!(r.engine.handoff_done(), "{id}: handoff done");
        let status = r.engine.move_status().unwrap();
        if *id != NodeId(4) {
            let to4 = &status.destinations[&NodeId(4)];
            assert!(to4.keys_sent > 0 && to4.batches_acknowledged == to4.batches_sent);
        } else {
            assert!(
                status.destinations.is_empty(),
                "the new node owns nothing yet"
            );
        }
    }
    assert!(c.stats_of(NodeId(4), "default").move_keys_received > 0);

    c.finish_everywhere();
    for r in c.nodes.values() {
        assert!(!r.engine.is_moving());
        assert_eq!(r.engine.ring().nodes(), next.as_slice());
        r.engine.check_invariants();
    }
    c.finish_everywhere(); // idempotent
    c.check_on_new_ring(&acked);
}

#[test]
fn a_node_is_decommissioned_from_four_and_nothing_acknowledged_is_lost() {
    let mut c = Cluster::new(4, LeaderlessConfig::default());
    let next = ids(&[1, 2, 3]);
    let mut acked = BTreeMap::new();
    for i in 0..60u32 {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        c.down = BTreeSet::from([NodeId(1 + i % 4)]);
        assert_eq!(
            c.set(1 + (i + 1) % 4, &key, &value),
            Outcome::Written { existed: false }
        );
        acked.insert(key, value);
    }
    c.down.clear();
    c.begin_move_everywhere(&next);
    // A write to a key that node 4 owns now and node 3 gains: with 3 down, the next list
    // {1, 2, 3} has 1 and 2; with 3 and 2 down the next list has only 1 and it fails.
    let joint = key_moving(&c, &[1, 2, 3], &[1, 2, 4], &[1, 2, 3]);
    c.down = BTreeSet::from([NodeId(2), NodeId(3)]);
    assert_eq!(
        c.set(1, &joint, "lost"),
        Outcome::QuorumFailed { acks: 1, needed: 2 }
    );
    c.down = BTreeSet::from([NodeId(4)]);
    assert_eq!(
        c.set(1, &joint, "joint"),
        Outcome::Written { existed: true }
    );
    acked.insert(joint, "joint".into());
    for i in 0..40u32 {
        let (key, value) = (format!("m{i}"), format!("w{i}"));
        c.down = BTreeSet::from([NodeId(1 + i % 4)]);
        assert_eq!(
            c.set(1 + (i + 1) % 4, &key, &value),
            Outcome::Written { existed: false }
        );
        acked.insert(key, value);
    }
    c.down.clear();
    c.handoff_everywhere();
    for (id, r) in &c.nodes {
        assert!(r.engine.handoff_done(), "{id}");
    }
    assert!(
        c.nodes[&NodeId(4)]
            .engine
            .move_status()
            .unwrap()
            .destinations
            .len()
            == 3,
        "the leaving node hands its keys to each node that gains some"
    );
    c.finish_everywhere();
    // A restarted node layer replaying the move after it finished changes nothing.
    c.begin_move_everywhere(&next);
    assert!(c.nodes.values().all(|r| !r.engine.is_moving()));
    // The decommissioned node owns nothing but still coordinates.
    assert_eq!(c.nodes[&NodeId(4)].engine.ring().nodes(), next.as_slice());
    assert_eq!(c.get(4, "k3"), read("v3"));
    assert_eq!(c.set(4, "after", "x"), Outcome::Written { existed: false });
    assert!(
        c.stored(4, "after").is_none(),
        "a node off the ring stores nothing"
    );
    acked.insert("after".into(), "x".into());
    c.down.insert(NodeId(4));
    c.check_on_new_ring(&acked);
}

#[test]
fn planted_bug_a_handoff_from_the_first_owner_only_leaves_keys_on_fewer_than_w_new_owners() {
    // The scenario of the join, with the planted bug (only the first owner hands a key off):
    // keys whose first owner missed the write end on fewer than W new owners.
    let config = LeaderlessConfig {
        bug_handoff_from_first_owner_only: true,
        ..LeaderlessConfig::default()
    };
    let mut c = Cluster::new(3, config.clone());
    c.add_node(4, &ids(&[1, 2, 3]), config);
    let mut short = 0;
    for i in 0..60u32 {
        let key = format!("k{i}");
        let first = c.owners(1, &key)[0];
        c.down = BTreeSet::from([first]);
        let via = if first == NodeId(1) { 2 } else { 1 };
        assert_eq!(c.set(via, &key, "v"), Outcome::Written { existed: false });
    }
    c.down.clear();
    c.begin_move_everywhere(&ids(&[1, 2, 3, 4]));
    c.handoff_everywhere();
    c.finish_everywhere();
    for i in 0..60u32 {
        let key = format!("k{i}");
        let holders = c
            .owners(1, &key)
            .iter()
            .filter(|o| c.stored(o.0, &key).is_some())
            .count();
        if holders < W {
            short += 1;
        }
    }
    assert!(short > 0, "some keys lost a copy in the move");
}

#[test]
fn anti_entropy_pauses_during_a_move_and_tombstone_confirmations_start_over() {
    let config = LeaderlessConfig {
        anti_entropy: crate::anti_entropy::AntiEntropyConfig {
            exchange_interval: Duration::from_secs(1),
            tombstone_grace: Duration::from_secs(3),
            ..Default::default()
        },
        hints: crate::hint::HintConfig {
            hint_age_max: Duration::from_secs(1),
            ..Default::default()
        },
        ..LeaderlessConfig::default()
    };
    let mut c = Cluster::with_anti_entropy(3, config.clone());
    c.add_node(4, &ids(&[1, 2, 3]), config);
    for id in 1..=4 {
        c.step(NodeId(id), |e, env| e.observe_keyspace(env, &ks()));
    }
    c.set(1, "k", "v");
    let req = RequestId(4242);
    c.step(NodeId(1), |e, env| {
        e.write(env, req, &ks(), Bytes::from_static(b"k"), None, 2)
    });
    assert_eq!(c.finish(req), Outcome::Written { existed: true });
    let confirmed = |c: &Cluster| -> u64 {
        c.nodes
            .values()
            .flat_map(|r| r.engine.anti_entropy_status().keyspaces.into_values())
            .map(|s| s.tombstones_confirmed)
            .sum()
    };
    // Exchanges on the old ring confirm the tombstone (collection would follow 3 s later).
    c.tick(Duration::from_millis(1_500));
    assert!(confirmed(&c) >= 1, "confirmed on the old ring");
    c.begin_move_everywhere(&ids(&[1, 2, 3, 4]));
    let before = c.trace.len();
    c.tick(Duration::from_secs(5));
    let exchanged = c.trace[before..]
        .iter()
        .filter(|(_, _, _, m)| matches!(m, Message::TreeHashes { .. }))
        .count();
    assert_eq!(exchanged, 0, "no exchange during a move");
    for id in 1..=3 {
        assert!(
            c.stored(id, "k").is_some(),
            "no tombstone collected during a move"
        );
    }
    c.handoff_everywhere();
    c.finish_everywhere();
    assert_eq!(confirmed(&c), 0, "confirmations start over on the new ring");
    // Exchanges resume on the new ring; each new owner collects the tombstone once the other
    // new owners confirmed it.
    c.tick(Duration::from_secs(15));
    let owners = c.owners(1, "k");
    for o in &owners {
        assert!(c.stored(o.0, "k").is_none(), "{o} collected the tombstone");
    }
    let collected: u64 = owners
        .iter()
        .map(|o| c.stats_of(*o, "default").tombstones_collected)
        .sum();
    assert_eq!(collected, 3);
}

#[test]
fn hints_reach_the_gained_owner_and_hints_for_the_departed_node_are_dropped() {
    // Hint delivery off, so that only the handoff can move the hints' copies.
    let config = LeaderlessConfig {
        quorum_mode_default: QuorumMode::Sloppy,
        hints: crate::hint::HintConfig {
            handoff_in_flight_max: 0,
            ..Default::default()
        },
        ..LeaderlessConfig::default()
    };
    let mut c = Cluster::new(6, config);
    let order = {
        let e = &c.nodes[&NodeId(1)].engine;
        e.ring().preference_list(Ring::position("default", b"k"), 6)
    };
    let (a, b, cc, d, e, f) = (order[0], order[1], order[2], order[3], order[4], order[5]);
    // Every owner down: the coordinator d learns to suspect them, then writes through the
    // fallbacks d (for a), e (for b) and f (for c).
    c.down = BTreeSet::from([a, b, cc]);
    for _ in 0..2 {
        assert!(matches!(
            c.set(d.0, "k", "probe"),
            Outcome::QuorumFailed { .. }
        ));
    }
    c.tick(Duration::from_millis(1_500));
    assert_eq!(c.set(d.0, "k", "v"), Outcome::Written { existed: false });
    c.down.clear();
    let hints = |c: &Cluster, id: NodeId| crate::hint::stored_hints(&c.nodes[&id].disk).unwrap();
    for (fallback, owner) in [(d, a), (e, b), (f, cc)] {
        assert_eq!(hints(&c, fallback).len(), 1);
        assert_eq!(hints(&c, fallback)[0].hint.owner, owner);
    }
    // Decommission a: the key's owners become b, c, d; d gains it.
    let next: Vec<NodeId> = order.iter().copied().filter(|n| *n != a).collect();
    c.begin_move_everywhere(&next);
    assert_eq!(c.next_owners(1, "k"), vec![b, cc, d]);
    c.handoff_everywhere();
    assert!(c.nodes.values().all(|r| r.engine.handoff_done()));
    c.finish_everywhere();
    // d holds the write as an owner now (its own hint for a, and e's and f's copies).
    assert_eq!(
        c.stored(d.0, "k").unwrap().value.as_deref(),
        Some(&b"v"[..])
    );
    assert!(c.stats_of(d, "default").move_keys_received >= 1);
    // The hint for the departed node is dropped; those for b and c wait for delivery.
    assert!(hints(&c, d).is_empty());
    assert_eq!(c.stats_of(d, "default").hints_dropped_owner_left, 1);
    assert_eq!(c.stats_of(d, "default").hints_pending, 0);
    assert_eq!(hints(&c, e)[0].hint.owner, b);
    assert_eq!(hints(&c, f)[0].hint.owner, cc);
}

#[test]
fn a_tombstone_collected_before_the_move_still_reaches_the_gained_owner() {
    let config = LeaderlessConfig {
        anti_entropy: crate::anti_entropy::AntiEntropyConfig {
            exchange_interval: Duration::from_secs(1),
            tombstone_grace: Duration::from_secs(1),
            ..Default::default()
        },
        hints: crate::hint::HintConfig {
            hint_age_max: Duration::from_secs(1),
            ..Default::default()
        },
        ..LeaderlessConfig::default()
    };
    let mut c = Cluster::with_anti_entropy(3, config.clone());
    c.add_node(4, &ids(&[1, 2, 3]), config);
    for id in 1..=4 {
        c.step(NodeId(id), |e, env| e.observe_keyspace(env, &ks()));
    }
    let key = key_moving(&c, &[1, 2, 3, 4], &[1, 2, 3], &[1, 2, 4]);
    c.set(1, &key, "v");
    let stale = c.stored(1, &key).unwrap();
    let req = RequestId(4343);
    let k = Bytes::copy_from_slice(key.as_bytes());
    c.step(NodeId(1), |e, env| e.write(env, req, &ks(), k, None, 2));
    assert_eq!(c.finish(req), Outcome::Written { existed: true });
    // Every old owner collects the tombstone; the exchanges that would then show each that
    // the others collected it too are lost, so they still remember it when the move begins.
    let mut waited = 0;
    loop {
        c.now = c.now + Duration::from_millis(100);
        for r in c.nodes.values_mut() {
            r.wall_ms += 100;
        }
        for id in 1..=4 {
            c.step(NodeId(id), |e, env| e.handle_timeout(env));
        }
        if (1..=3).all(|id| c.stored(id, &key).is_none()) {
            c.in_flight.clear();
            break;
        }
        c.deliver_all();
        waited += 1;
        assert!(waited < 300, "the tombstone is collected");
    }
    let remembered = (1..=3)
        .filter(|id| {
            let status = c.nodes[&NodeId(*id)].engine.anti_entropy_status();
            status.keyspaces["default"].tombstones_remembered == 1
        })
        .count();
    assert!(remembered >= 1);
    // The node that gains the key holds a stale copy of the deleted value (a straggling
    // write, or a leftover of an earlier move).
    let repair = Message::Repair {
        keyspace: "default".into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
        record: stale,
    };
    c.step(NodeId(4), |e, env| e.handle_message(env, NodeId(1), repair));
    c.begin_move_everywhere(&ids(&[1, 2, 3, 4]));
    c.handoff_everywhere();
    c.finish_everywhere();
    let held = c.stored(4, &key).unwrap();
    assert_eq!(held.value, None, "the gained owner got the tombstone");
    c.down = BTreeSet::from([NodeId(3)]);
    assert_eq!(c.get(4, &key), Outcome::Read { value: None });
}

#[test]
fn a_joint_quorum_counts_each_ring_apart() {
    let placement = Placement {
        current: ids(&[1, 2, 3]),
        next: Some(ids(&[1, 2, 4])),
    };
    assert_eq!(placement.all(), ids(&[1, 2, 3, 4]));
    let got = |set: &[u32]| {
        let set = ids(set);
        move |n: NodeId| set.contains(&n)
    };
    assert!(placement.met(got(&[1, 2]), 2), "two owners of both rings");
    assert!(
        !placement.met(got(&[1, 3]), 2),
        "one owner of the next ring"
    );
    assert!(
        !placement.met(got(&[2, 4]), 2),
        "one owner of the current ring"
    );
    assert!(placement.met(got(&[1, 3, 4]), 2));
    assert_eq!(placement.count(got(&[3, 4])), 1);
    assert!(placement.possible(got(&[3]), 2) && !placement.possible(got(&[1, 4]), 2));
    let fixed = Placement {
        current: ids(&[1, 2, 3]),
        next: None,
    };
    assert!(fixed.met(got(&[1, 3]), 2));
}
