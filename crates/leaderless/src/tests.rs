//! Scenario tests on a hand-driven three-node cluster: every message is delivered explicitly, so
//! each test states exactly which replicas were reachable.

use super::*;
use triarch_storage::SimDisk;

struct Replica {
    engine: Leaderless,
    disk: SimDisk,
    hlc: Hlc,
    wall_ms: u64,
}

struct Cluster {
    nodes: BTreeMap<NodeId, Replica>,
    /// Messages produced and not yet delivered: (from, to, message).
    in_flight: VecDeque<(NodeId, NodeId, Message)>,
    replies: Vec<(NodeId, RequestId, Outcome)>,
    down: BTreeSet<NodeId>,
    now: Instant,
}

fn ks() -> KeyspaceConfig {
    KeyspaceConfig::leaderless("default")
}

impl Cluster {
    fn new(n: u32, config: LeaderlessConfig) -> Self {
        let members: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let nodes = members
            .iter()
            .map(|&id| {
                let engine = Leaderless::new(id, &members, config.clone());
                let replica = Replica {
                    engine,
                    disk: SimDisk::new(),
                    hlc: Hlc::new(id, 60_000),
                    wall_ms: 1_000,
                };
                (id, replica)
            })
            .collect();
        Cluster {
            nodes,
            in_flight: VecDeque::new(),
            replies: vec![],
            down: BTreeSet::new(),
            now: Instant(0),
        }
    }

    fn step<F: FnOnce(&mut Leaderless, &mut Env<'_, SimDisk>)>(&mut self, id: NodeId, f: F) {
        let now = self.now;
        let r = self.nodes.get_mut(&id).unwrap();
        let mut env = Env {
            now: Now::new(now, r.wall_ms),
            storage: &mut r.disk,
            hlc: &mut r.hlc,
        };
        f(&mut r.engine, &mut env);
        r.engine.check_invariants();
        while let Some(effect) = r.engine.poll_effect() {
            match effect {
                Effect::Send { to, message } => self.in_flight.push_back((id, to, message)),
                Effect::Reply { request, outcome } => self.replies.push((id, request, outcome)),
            }
        }
    }

    /// Delivers messages until none are left; messages to or from a down node are dropped.
    fn deliver_all(&mut self) {
        while let Some((from, to, message)) = self.in_flight.pop_front() {
            if self.down.contains(&to) || self.down.contains(&from) {
                continue;
            }
            self.step(to, |e, env| e.handle_message(env, from, message));
        }
    }

    fn set(&mut self, via: u32, key: &str, value: &str) -> Outcome {
        let req = RequestId(self.replies.len() as u64 + 1000);
        let k = Bytes::copy_from_slice(key.as_bytes());
        let v = Some(Bytes::copy_from_slice(value.as_bytes()));
        self.step(NodeId(via), |e, env| e.write(env, req, &ks(), k, v, 2));
        self.finish(req)
    }

    fn get(&mut self, via: u32, key: &str) -> Outcome {
        let req = RequestId(self.replies.len() as u64 + 1000);
        let k = Bytes::copy_from_slice(key.as_bytes());
        self.step(NodeId(via), |e, env| e.read(env, req, &ks(), k, 2));
        self.finish(req)
    }

    fn finish(&mut self, req: RequestId) -> Outcome {
        self.deliver_all();
        if !self.replies.iter().any(|(_, r, _)| *r == req) {
            self.now = self.now + Duration::from_secs(2);
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.step(id, |e, env| e.handle_timeout(env));
            }
            self.deliver_all();
        }
        self.replies
            .iter()
            .find(|(_, r, _)| *r == req)
            .map(|(_, _, o)| o.clone())
            .expect("no reply")
    }

    fn stored(&self, id: u32, key: &str) -> Option<Record> {
        load(&self.nodes[&NodeId(id)].disk, "default", key.as_bytes()).unwrap()
    }
}

fn read(v: &str) -> Outcome {
    Outcome::Read {
        value: Some(Bytes::copy_from_slice(v.as_bytes())),
    }
}

#[test]
fn a_write_through_one_node_is_read_through_another() {
    let mut c = Cluster::new(3, LeaderlessConfig::default());
    assert_eq!(c.set(1, "k", "v"), Outcome::Written { existed: false });
    assert_eq!(c.get(3, "k"), read("v"));
    for id in 1..=3 {
        assert!(
            c.stored(id, "k").is_some(),
            "N=3 of 3 nodes: every node holds the key"
        );
    }
}

#[test]
fn quorums_survive_one_node_down_and_fail_with_two_down() {
    let mut c = Cluster::new(3, LeaderlessConfig::default());
    c.down.insert(NodeId(2));
    assert_eq!(c.set(1, "k", "v"), Outcome::Written { existed: false });
    assert_eq!(c.get(3, "k"), read("v"));
    c.down.insert(NodeId(3));
    assert_eq!(
        c.set(1, "k", "w"),
        Outcome::QuorumFailed { acks: 1, needed: 2 }
    );
    assert_eq!(c.get(1, "k"), Outcome::QuorumFailed { acks: 1, needed: 2 });
    assert_eq!(
        c.nodes[&NodeId(1)].engine.stats()["default"].quorum_failures,
        2
    );
}

#[test]
fn a_read_repairs_a_replica_that_missed_a_write() {
    let mut c = Cluster::new(3, LeaderlessConfig::default());
    c.down.insert(NodeId(3));
    c.set(1, "k", "v");
    assert!(c.stored(3, "k").is_none());
    c.down.clear();
    assert_eq!(c.get(3, "k"), read("v"));
    assert_eq!(c.stored(3, "k").unwrap().value.as_deref(), Some(&b"v"[..]));
    assert_eq!(
        c.nodes[&NodeId(3)].engine.stats()["default"].read_repairs,
        1
    );
}

#[test]
fn deletes_are_tombstones_that_win_over_older_values() {
    let mut c = Cluster::new(3, LeaderlessConfig::default());
    c.set(1, "k", "v");
    let req = RequestId(77);
    c.step(NodeId(2), |e, env| {
        e.write(env, req, &ks(), Bytes::from_static(b"k"), None, 2)
    });
    assert_eq!(c.finish(req), Outcome::Written { existed: true });
    assert_eq!(c.get(3, "k"), Outcome::Read { value: None });
    assert!(
        c.stored(1, "k").unwrap().value.is_none(),
        "the tombstone is stored"
    );
}

#[test]
fn a_later_write_through_a_node_with_a_slow_clock_is_restamped_not_lost() {
    let mut c = Cluster::new(3, LeaderlessConfig::default());
    c.nodes.get_mut(&NodeId(1)).unwrap().wall_ms = 50_000; // 49 s ahead
    assert_eq!(c.set(1, "k", "first"), Outcome::Written { existed: false });
    // Node 3 never saw the first write's timestamp: its clock lags by 49 s.
    c.nodes.get_mut(&NodeId(3)).unwrap().hlc = Hlc::new(NodeId(3), 60_000);
    c.down.insert(NodeId(2));
    assert_eq!(c.set(3, "k", "second"), Outcome::Written { existed: true });
    c.down.clear();
    assert_eq!(c.get(2, "k"), read("second"));
    assert_eq!(
        c.nodes[&NodeId(3)].engine.stats()["default"].write_restamps,
        1
    );
}

#[test]
fn duplicate_acknowledgements_do_not_count_twice() {
    let mut c = Cluster::new(3, LeaderlessConfig::default());
    c.down.insert(NodeId(3));
    let req = RequestId(5);
    c.step(NodeId(1), |e, env| {
        e.write(env, req, &ks(), Bytes::from_static(b"k"), None, 3)
    });
    c.deliver_all();
    // Replay node 2's acknowledgement by hand: still only two distinct replicas.
    let ack = Message::WriteAck {
        op: OpId(1),
        timestamp: c.stored(1, "k").unwrap().timestamp,
        accepted: true,
        current: c.stored(1, "k").unwrap().timestamp,
        existed: false,
    };
    c.step(NodeId(1), |e, env| e.handle_message(env, NodeId(2), ack));
    assert!(
        c.replies.is_empty(),
        "W=3 must not be reached by a duplicate"
    );
}

#[test]
fn planted_bug_acknowledges_before_quorum() {
    let config = LeaderlessConfig {
        bug_ack_before_quorum: true,
        ..LeaderlessConfig::default()
    };
    let mut c = Cluster::new(3, config);
    c.down.insert(NodeId(2));
    c.down.insert(NodeId(3));
    assert_eq!(c.set(1, "k", "v"), Outcome::Written { existed: false });
}

#[test]
fn a_coordinator_repairs_its_own_stale_replica() {
    let mut c = Cluster::new(3, LeaderlessConfig::default());
    c.down.insert(NodeId(2));
    c.set(1, "k", "v");
    c.down.clear();
    let req = RequestId(42);
    c.step(NodeId(2), |e, env| {
        e.read(env, req, &ks(), Bytes::from_static(b"k"), 1)
    });
    // R=1: the coordinator's own (stale) replica answers first...
    assert_eq!(c.finish(req), Outcome::Read { value: None });
    // ...and once every replica has answered, read repair fixed it in place.
    assert_eq!(c.stored(2, "k").unwrap().value.as_deref(), Some(&b"v"[..]));
    assert!(
        c.in_flight.iter().all(|(_, to, _)| *to != NodeId(2)),
        "a node never sends messages to itself"
    );
}

#[test]
fn a_different_record_under_a_timestamp_already_held_is_refused() {
    let mut disk = SimDisk::new();
    let ts = HlcTimestamp {
        wall_ms: 5,
        logical: 0,
        node: NodeId(1),
    };
    let one = Record {
        timestamp: ts,
        value: Some(Bytes::from_static(b"1")),
    };
    let two = Record {
        timestamp: ts,
        value: Some(Bytes::from_static(b"2")),
    };
    assert!(apply(&mut disk, "default", b"k", &one).unwrap().accepted);
    assert!(
        apply(&mut disk, "default", b"k", &one).unwrap().accepted,
        "duplicate delivery"
    );
    let refused = apply(&mut disk, "default", b"k", &two).unwrap();
    assert!(!refused.accepted && refused.current == ts);
    assert_eq!(load(&disk, "default", b"k").unwrap(), Some(one));
}
