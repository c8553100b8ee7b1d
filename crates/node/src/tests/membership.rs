//! Joining and decommissioning a node on a hand-driven cluster of real `Node`s
//! ([`super::cluster`]): the metadata group decides each change, the nodes move the leaderless
//! ring in phases, and every write acknowledged before, during and after a move is read back
//! through the new ring.

use super::cluster::{Cluster, b};
use super::*;
use crate::meta::{Change, Joined, MembershipStatus};

fn joined(id: u32) -> Joined {
    Joined {
        id: NodeId(id),
        region: "r1".into(),
        peer_addr: format!("127.0.0.1:{}", 7100 + id),
    }
}

fn status(c: &mut Cluster, via: u32) -> MembershipStatus {
    match c.call(via, Request::Membership) {
        Reply::Membership(s) => *s,
        other => panic!("{other:?}"),
    }
}

/// A write load: a new key per write through a rotating node, the acknowledged ones kept.
struct Load {
    next: u64,
    acked: Vec<(String, String)>,
    in_flight: Vec<(RequestId, String, String)>,
}

impl Load {
    fn new() -> Self {
        Load {
            next: 0,
            acked: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    /// Submits a write through one of `via` and collects the answers that came.
    fn tick(&mut self, c: &mut Cluster, via: &[u32]) {
        let key = format!("prefs:k{}", self.next);
        let value = format!("v{}", self.next);
        let node = via[self.next as usize % via.len()];
        self.next += 1;
        let request = c.submit(
            node,
            Request::Set {
                key: b(&key),
                value: b(&value),
                w: None,
            },
        );
        self.in_flight.push((request, key, value));
        self.tick_answers(c);
    }

    /// Waits for every write in flight to be answered.
    fn settle(&mut self, c: &mut Cluster) {
        while !self.in_flight.is_empty() {
            c.step();
            self.tick_answers(c);
        }
    }

    /// Keeps the writes that were acknowledged; drops those that failed.
    fn tick_answers(&mut self, c: &mut Cluster) {
        let mut still = Vec::new();
        for (request, key, value) in std::mem::take(&mut self.in_flight) {
            match c.reply_to(request) {
                Some(Reply::Written { .. }) => self.acked.push((key, value)),
                Some(_) => {}
                None => still.push((request, key, value)),
            }
        }
        self.in_flight = still;
    }
}

/// Runs the load until every node's membership shows the move finished.
fn move_under_load(c: &mut Cluster, load: &mut Load, via: &[u32], nodes: &[u32]) {
    let deadline = c.now_micros + 120_000_000;
    loop {
        load.tick(c, via);
        c.step();
        let done = nodes.iter().all(|&id| {
            c.nodes[id as usize - 1]
                .as_ref()
                .is_some_and(|n| n.membership().moving.is_none())
        });
        if done {
            break;
        }
        assert!(c.now_micros < deadline, "the move never finished");
    }
    load.settle(c);
}

/// Every acknowledged write reads back (R=2 of the new ring's owners) through `via`.
fn check_acked(c: &mut Cluster, load: &Load, via: u32) {
    for (key, value) in &load.acked {
        let r = c.call(
            via,
            Request::Get {
                key: b(key),
                r: None,
            },
        );
        assert_eq!(
            r,
            Reply::Value(Some(b(value))),
            "{key} lost or stale through n{via}"
        );
    }
}

/// How many of `key`'s owners on `node`'s ring hold a copy of it.
fn holders(c: &Cluster, node: u32, key: &str) -> usize {
    let table = triarch_leaderless::table_name("prefs");
    let n = c.nodes[node as usize - 1].as_ref().expect("running");
    let ks = n.catalog().get("prefs").unwrap().clone();
    n.leaderless
        .replicas(&ks, key.as_bytes())
        .into_iter()
        .filter(|owner| {
            c.disks[owner.0 as usize - 1]
                .as_ref()
                .or(c.nodes[owner.0 as usize - 1].as_ref().map(|n| n.storage()))
                .is_some_and(|d| d.get(&table, key.as_bytes()).unwrap().is_some())
        })
        .count()
}

/// Every acknowledged write is on at least W (2) of its owners on the ring `node` is on: what
/// a read at R=2 relies on, checked directly on the disks (reads would mask a missing copy).
fn check_copies(c: &Cluster, load: &Load, node: u32) {
    let short = under_replicated(c, load, node);
    assert!(
        short.is_empty(),
        "on fewer than 2 of their owners: {short:?}"
    );
}

fn under_replicated(c: &Cluster, load: &Load, node: u32) -> Vec<String> {
    load.acked
        .iter()
        .filter(|(key, _)| holders(c, node, key) < 2)
        .map(|(key, _)| key.clone())
        .collect()
}

/// Sixty writes made while n3 is down, so that each is on exactly two nodes: a move that takes
/// one of them off a key's owners must bring the copy to the gained owner.
fn writes_on_two_nodes(c: &mut Cluster) -> Load {
    let mut load = Load::new();
    c.down.insert(NodeId(3));
    for _ in 0..60 {
        load.tick(c, &[1, 2]);
        c.step();
    }
    load.settle(c);
    c.down.remove(&NodeId(3));
    assert!(load.acked.len() > 50);
    load
}

/// Three founders without anti-entropy (so that only the move itself can bring copies), and a
/// leaderless keyspace `prefs` (N=3, R=W=2).
fn cluster_with_prefs() -> Cluster {
    cluster_tuned(|config| config.leaderless.anti_entropy.enabled = false)
}

fn cluster_tuned(tune: fn(&mut NodeConfig)) -> Cluster {
    let mut c = Cluster::new(3);
    c.tune = tune;
    for id in 1..=3 {
        c.crash(id);
        c.start(id);
    }
    assert_eq!(
        c.call(1, Request::CreateKeyspace(spec("prefs", Model::Leaderless))),
        Reply::Created
    );
    c.run(3);
    c
}

#[test]
fn a_node_joins_under_load_and_is_decommissioned_under_load_without_losing_a_write() {
    let mut c = cluster_with_prefs();
    let mut load = writes_on_two_nodes(&mut c);
    let four = c.add_joining();
    assert_eq!(four, 4);
    let r = status(&mut c, 1);
    assert_eq!(r.membership.ring, [NodeId(1), NodeId(2), NodeId(3)]);
    let Reply::Membership(joined_status) = c.call(2, Request::Join(joined(4))) else {
        panic!("the join was refused")
    };
    assert_eq!(
        joined_status.membership.moving.as_ref().map(|m| m.change),
        Some(Change::Join(NodeId(4)))
    );
    move_under_load(&mut c, &mut load, &[1, 2, 3, 4], &[1, 2, 3, 4]);
    for id in 1..=4 {
        let m = c.nodes[id - 1].as_ref().unwrap().membership().clone();
        assert_eq!(m.ring, (1..=4).map(NodeId).collect::<Vec<_>>(), "n{id}");
    }
    check_copies(&c, &load, 1);
    // The new node owns keys now and holds them.
    let owned = load
        .acked
        .iter()
        .filter(|(k, _)| {
            let n = c.nodes[0].as_ref().unwrap();
            let ks = n.catalog().get("prefs").unwrap().clone();
            n.leaderless
                .replicas(&ks, k.as_bytes())
                .contains(&NodeId(4))
        })
        .count();
    assert!(owned > 0, "n4 owns none of {} keys", load.acked.len());
    // With n1 down, every key has at most one replica missing: R=2 must find each value, so
    // n4's copies are real.
    c.down.insert(NodeId(1));
    check_acked(&mut c, &load, 2);
    c.down.remove(&NodeId(1));
    let before = load.acked.len();

    // Founders host the Raft groups: they cannot leave.
    assert!(matches!(
        c.call(3, Request::Decommission { id: NodeId(2) }),
        Reply::Error(RequestError::MembershipRefused(reason)) if reason.contains("founding member")
    ));
    assert!(matches!(
        c.call(3, Request::Decommission { id: NodeId(4) }),
        Reply::Membership(_)
    ));
    move_under_load(&mut c, &mut load, &[1, 2, 3, 4], &[1, 2, 3, 4]);
    assert!(
        load.acked.len() > before + 10,
        "writes went on during the move"
    );
    let m = c.nodes[0].as_ref().unwrap().membership().clone();
    assert_eq!(m.ring, [NodeId(1), NodeId(2), NodeId(3)]);
    assert_eq!(m.left, [NodeId(4)]);
    check_copies(&c, &load, 1);
    // Stop n4 for good: nothing was only there.
    c.crash(4);
    c.down.insert(NodeId(4));
    check_acked(&mut c, &load, 3);
}

#[test]
fn membership_changes_are_checked_and_survive_restarts() {
    let mut c = cluster_with_prefs();
    assert!(matches!(
        c.call(1, Request::Join(joined(2))),
        Reply::Error(RequestError::MembershipRefused(reason)) if reason.contains("already a member")
    ));
    let mut bad = joined(5);
    bad.region = "no spaces".into();
    assert!(matches!(
        c.call(1, Request::Join(bad)),
        Reply::Error(RequestError::InvalidConfig(_))
    ));
    assert!(matches!(
        c.call(1, Request::Decommission { id: NodeId(9) }),
        Reply::Error(RequestError::MembershipRefused(_))
    ));
    // A node restarted mid-move picks it up again from its durable copy.
    c.add_joining();
    assert!(matches!(
        c.call(1, Request::Join(joined(4))),
        Reply::Membership(_)
    ));
    c.crash(3);
    c.start(3);
    let mut load = Load::new();
    move_under_load(&mut c, &mut load, &[1, 2], &[1, 2, 3, 4]);
    let m = status(&mut c, 3).membership;
    assert_eq!(m.ring.len(), 4);
    assert!(m.index > 0);
    check_acked(&mut c, &load, 4);
}

#[test]
fn planted_bug_a_move_without_handoff_leaves_writes_on_too_few_owners() {
    let mut c = cluster_tuned(|config| {
        config.leaderless.anti_entropy.enabled = false;
        config.bug_skip_handoff = true;
    });
    let load = writes_on_two_nodes(&mut c);
    c.add_joining();
    assert!(matches!(
        c.call(1, Request::Join(joined(4))),
        Reply::Membership(_)
    ));
    move_under_load(&mut c, &mut Load::new(), &[1, 2], &[1, 2, 3, 4]);
    assert!(
        !under_replicated(&c, &load, 1).is_empty(),
        "the checker missed a move that handed nothing off"
    );
}
