//! Scenario tests on a hand-driven three-node cluster: every message is delivered explicitly, so
//! each test states exactly which replicas were reachable.

use super::*;
use triarch_storage::{SimDisk, Storage};

struct Replica {
    engine: Leaderless,
    disk: SimDisk,
    hlc: Hlc,
    wall_ms: u64,
}

struct Cluster {
    /// Whether the engines run anti-entropy (only the tests of it: the others count messages
    /// and repairs that background exchanges would change).
    anti_entropy: bool,
    nodes: BTreeMap<NodeId, Replica>,
    /// Messages produced and not yet delivered: (from, to, message).
    in_flight: VecDeque<(NodeId, NodeId, Message)>,
    /// Every message delivered, with the time (recorded only with anti-entropy on).
    trace: Vec<(Instant, NodeId, NodeId, Message)>,
    replies: Vec<(NodeId, RequestId, Outcome)>,
    down: BTreeSet<NodeId>,
    now: Instant,
}

fn ks() -> KeyspaceConfig {
    KeyspaceConfig::leaderless("default")
}

impl Cluster {
    /// A cluster of `n` nodes running `config` without anti-entropy.
    fn new(n: u32, config: LeaderlessConfig) -> Self {
        Cluster::build(n, config, false)
    }

    /// A cluster of `n` nodes running `config` as given, anti-entropy included.
    fn with_anti_entropy(n: u32, config: LeaderlessConfig) -> Self {
        Cluster::build(n, config, true)
    }

    fn engine_config(&self, mut config: LeaderlessConfig) -> LeaderlessConfig {
        config.anti_entropy.enabled &= self.anti_entropy;
        config
    }

    fn build(n: u32, mut config: LeaderlessConfig, anti_entropy: bool) -> Self {
        config.anti_entropy.enabled &= anti_entropy;
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
            anti_entropy,
            nodes,
            in_flight: VecDeque::new(),
            trace: Vec::new(),
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
        // Persist, then send: what a step staged is durable before its effects leave.
        r.disk.sync().unwrap();
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
            if self.anti_entropy {
                self.trace.push((self.now, from, to, message.clone()));
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

    /// Advances both clocks by `d` in steps of 100 ms, running every node's timers and
    /// delivering what they send.
    fn tick(&mut self, d: Duration) {
        let steps = d.as_millis() / 100;
        for _ in 0..steps {
            self.now = self.now + Duration::from_millis(100);
            for r in self.nodes.values_mut() {
                r.wall_ms += 100;
            }
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                if !self.down.contains(&id) {
                    self.step(id, |e, env| e.handle_timeout(env));
                }
            }
            self.deliver_all();
        }
    }

    fn stats_of(&self, id: NodeId, keyspace: &str) -> KeyspaceStats {
        self.nodes[&id]
            .engine
            .stats()
            .get(keyspace)
            .cloned()
            .unwrap_or_default()
    }

    /// The process restarts over its disk: everything not synced is lost.
    fn crash_restart(&mut self, id: NodeId, config: LeaderlessConfig) {
        let config = self.engine_config(config);
        let members: Vec<NodeId> = self.nodes.keys().copied().collect();
        let r = self.nodes.get_mut(&id).unwrap();
        r.disk.crash();
        let started = r.hlc.now(r.wall_ms);
        r.engine = Leaderless::new(id, &members, config).with_incarnation(1 << 40, started);
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
    // Each replica that refused the first stamp of "second" (it held "first", stamped later)
    // counted it as a last-writer-wins loser.
    let discarded: Vec<u64> = (1..=3)
        .map(|i| c.nodes[&NodeId(i)].engine.stats()["default"].lww_discarded)
        .collect();
    assert_eq!(discarded, vec![1, 0, 1], "node 2 was down");
}

#[test]
fn a_node_whose_clock_runs_past_the_bound_cannot_win_every_conflict_or_lock_keys() {
    let mut c = Cluster::new(3, LeaderlessConfig::default());
    // Node 1's clock runs 120 s ahead: past the others' 60 s bound.
    c.nodes.get_mut(&NodeId(1)).unwrap().wall_ms = 121_000;
    assert_eq!(c.set(2, "k", "before"), Outcome::Written { existed: false });
    // Its write is refused by both other replicas at once, with a clear outcome (W=2 cannot be
    // reached with only its own copy), and counted where it was refused.
    assert_eq!(
        c.set(1, "k", "future"),
        Outcome::Refused(Refusal::ClockAhead)
    );
    for id in [2, 3] {
        assert_eq!(
            c.nodes[&NodeId(id)].engine.stats()["default"].clock_ahead_refused,
            1
        );
        assert_eq!(
            c.stored(id, "k").unwrap().value.as_deref(),
            Some(&b"before"[..])
        );
    }
    // Node 1's own copy holds the far-future record, which no other coordinator may follow:
    // writes through them still succeed on the two replicas that can take them, instead of
    // failing until real time catches up (the old availability bug).
    assert_eq!(c.set(2, "k", "after"), Outcome::Written { existed: true });
    assert_eq!(c.set(3, "k", "later"), Outcome::Written { existed: true });
    assert_eq!(
        c.stored(2, "k").unwrap().value.as_deref(),
        Some(&b"later"[..])
    );
    // Node 1 learnt its clock runs ahead: it refuses to coordinate writes for a while
    // rather than leave more copies that the others refuse.
    assert_eq!(
        c.set(1, "other", "x"),
        Outcome::Refused(Refusal::ClockAhead)
    );
    assert!(c.stored(1, "other").is_none());
    // Its clock set right, its hybrid clock still stamps where it got to (it never goes back):
    // refused again after the hold, until the others' clocks come within the bound of it.
    c.nodes.get_mut(&NodeId(1)).unwrap().wall_ms = 1_000;
    c.tick(CLOCK_AHEAD_HOLD);
    assert_eq!(
        c.set(1, "other", "y"),
        Outcome::Refused(Refusal::ClockAhead)
    );
    c.tick(Duration::from_secs(60));
    // (`existed`: the refused attempt left its copy on node 1 itself, like any failed write.)
    assert!(matches!(c.set(1, "other", "z"), Outcome::Written { .. }));
    assert_eq!(c.get(2, "other"), read("z"));
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
    let members = [NodeId(1)];
    let mut engine = Leaderless::new(NodeId(1), &members, LeaderlessConfig::default());
    let mut apply = |disk: &mut SimDisk, record: &Record| {
        engine
            .apply_record(disk, "default", b"k", record, true)
            .unwrap()
    };
    assert!(apply(&mut disk, &one).accepted);
    let again = apply(&mut disk, &one);
    assert!(again.accepted && !again.changed, "duplicate delivery");
    let refused = apply(&mut disk, &two);
    assert!(!refused.accepted && refused.current == ts);
    assert_eq!(load(&disk, "default", b"k").unwrap(), Some(one));
}

// ---- keyspaces whose merge policy is not lww ----

mod merged {
    use super::*;
    use crate::state::{SiblingsView, View};
    use triarch_core::MergePolicy;
    use triarch_core::causal::VersionVector;

    fn keyspace(policy: MergePolicy) -> KeyspaceConfig {
        KeyspaceConfig {
            merge: policy,
            ..KeyspaceConfig::leaderless(policy.as_str())
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    impl Cluster {
        /// Starts `operation` through node `via` without delivering anything.
        fn start_apply(
            &mut self,
            via: u32,
            ks: &KeyspaceConfig,
            key: &str,
            op: Operation,
        ) -> RequestId {
            let req = RequestId(self.issued());
            let (ks, key) = (ks.clone(), b(key));
            self.step(NodeId(via), |e, env| e.apply(env, req, &ks, key, op, 2, 2));
            req
        }

        fn issued(&mut self) -> u64 {
            self.now = self.now + Duration::from_micros(1);
            5_000 + self.now.as_micros()
        }

        fn apply_op(&mut self, via: u32, ks: &KeyspaceConfig, key: &str, op: Operation) -> Outcome {
            let req = self.start_apply(via, ks, key, op);
            self.finish(req)
        }

        fn read_view(&mut self, via: u32, ks: &KeyspaceConfig, key: &str) -> Option<View> {
            let req = RequestId(self.issued());
            let (ks, key) = (ks.clone(), b(key));
            self.step(NodeId(via), |e, env| e.read_state(env, req, &ks, key, 2));
            match self.finish(req) {
                Outcome::State(view) => view,
                other => panic!("read through n{via}: {other:?}"),
            }
        }

        /// Delivers the first message in flight that `pick` accepts; false if none does.
        fn deliver_one(&mut self, pick: impl Fn(NodeId, NodeId, &Message) -> bool) -> bool {
            let Some(i) = self
                .in_flight
                .iter()
                .position(|(from, to, m)| pick(*from, *to, m))
            else {
                return false;
            };
            let (from, to, message) = self.in_flight.remove(i).expect("found");
            self.step(to, |e, env| e.handle_message(env, from, message));
            true
        }

        /// Delivers everything, each message twice (the copy right after the original).
        fn deliver_all_twice(&mut self) {
            while let Some((from, to, message)) = self.in_flight.pop_front() {
                let copy = message.clone();
                self.step(to, |e, env| e.handle_message(env, from, message));
                self.step(to, |e, env| e.handle_message(env, from, copy));
            }
        }

        fn state_at(&self, id: u32, ks: &KeyspaceConfig, key: &str) -> Option<State> {
            load_state(&self.nodes[&NodeId(id)].disk, &ks.name, key.as_bytes()).unwrap()
        }
    }

    fn set(members: &[&str]) -> Option<View> {
        Some(View::Set(members.iter().map(|m| b(m)).collect()))
    }

    #[test]
    fn concurrent_sadd_and_srem_through_different_coordinators_add_wins() {
        let cart = keyspace(MergePolicy::Set);
        let mut c = Cluster::new(3, LeaderlessConfig::default());
        assert_eq!(
            c.apply_op(1, &cart, "alice", Operation::SetAdd(vec![b("book")])),
            Outcome::Applied(OperationResult::Changed(1))
        );
        // n2 starts SREM book: it reads first, from itself and n1.
        let remove = c.start_apply(2, &cart, "alice", Operation::SetRemove(vec![b("book")]));
        while c.deliver_one(|_, _, m| {
            matches!(m, Message::ReadState { .. } | Message::StateReply { .. })
        }) {}
        // Its read is done; meanwhile n3 adds book again, concurrently (the remove never saw it).
        let add = c.start_apply(3, &cart, "alice", Operation::SetAdd(vec![b("book")]));
        assert_eq!(
            c.finish(remove),
            Outcome::Applied(OperationResult::Changed(1))
        );
        assert_eq!(c.finish(add), Outcome::Applied(OperationResult::Changed(0)));
        for via in 1..=3 {
            assert_eq!(
                c.read_view(via, &cart, "alice"),
                set(&["book"]),
                "add wins, via n{via}"
            );
        }
        // A remove that observed every add removes the element everywhere.
        assert_eq!(
            c.apply_op(
                1,
                &cart,
                "alice",
                Operation::SetRemove(vec![b("book"), b("pen")])
            ),
            Outcome::Applied(OperationResult::Changed(1))
        );
        for via in 1..=3 {
            assert_eq!(c.read_view(via, &cart, "alice"), set(&[]));
        }
        let states: Vec<_> = (1..=3).map(|id| c.state_at(id, &cart, "alice")).collect();
        assert!(states.iter().all(|s| *s == states[0]), "replicas converged");
    }

    #[test]
    fn a_remove_of_what_nobody_observed_changes_nothing_and_ships_nothing() {
        let cart = keyspace(MergePolicy::Set);
        let mut c = Cluster::new(3, LeaderlessConfig::default());
        let req = c.start_apply(1, &cart, "k", Operation::SetRemove(vec![b("ghost")]));
        while c.deliver_one(|_, _, m| {
            matches!(m, Message::ReadState { .. } | Message::StateReply { .. })
        }) {}
        assert_eq!(c.finish(req), Outcome::Applied(OperationResult::Changed(0)));
        assert!((1..=3).all(|id| c.state_at(id, &cart, "k").is_none()));
    }

    #[test]
    fn counters_are_exact_under_duplicated_messages_and_forwarding() {
        let hits = KeyspaceConfig {
            merge: MergePolicy::Counter,
            ..KeyspaceConfig::leaderless("hits")
        };
        // Five nodes, N=3: two nodes are not replicas of the key and forward to one that is.
        let mut c = Cluster::new(5, LeaderlessConfig::default());
        let replicas = c.nodes[&NodeId(1)].engine.replicas(&hits, b"page");
        let mut expected = 0i64;
        for (i, via) in (1..=5).cycle().take(20).enumerate() {
            let amount = i as i64 * 3 - 7;
            expected += amount;
            let req = c.start_apply(via, &hits, "page", Operation::CounterAdd(amount));
            c.deliver_all_twice();
            let Outcome::Applied(OperationResult::Counter(_)) = c.finish(req) else {
                panic!("increment through n{via}")
            };
        }
        let forwarded: u64 = (1..=5)
            .map(|id| {
                c.nodes[&NodeId(id)]
                    .engine
                    .stats()
                    .get("hits")
                    .map_or(0, |s| s.forwarded)
            })
            .sum();
        assert_eq!(
            forwarded, 8,
            "the two non-replicas forwarded each of their 4 increments"
        );
        for via in 1..=5 {
            assert_eq!(
                c.read_view(via, &hits, "page"),
                Some(View::Counter(i128::from(expected))),
                "via n{via}"
            );
        }
        let states: Vec<_> = replicas
            .iter()
            .map(|n| c.state_at(n.0, &hits, "page"))
            .collect();
        assert!(states.iter().all(|s| *s == states[0]), "replicas converged");
    }

    #[test]
    fn a_forward_delivered_twice_runs_once() {
        let hits = KeyspaceConfig {
            merge: MergePolicy::Counter,
            ..KeyspaceConfig::leaderless("hits")
        };
        let mut c = Cluster::new(5, LeaderlessConfig::default());
        let replicas = c.nodes[&NodeId(1)].engine.replicas(&hits, b"page");
        let outsider = (1..=5).find(|i| !replicas.contains(&NodeId(*i))).unwrap();
        let req = c.start_apply(outsider, &hits, "page", Operation::CounterAdd(5));
        let (from, to, forward) = c.in_flight.pop_front().unwrap();
        assert!(matches!(forward, Message::Forward { .. }));
        // The same forward, delivered twice before anything else happens.
        c.in_flight.push_back((from, to, forward.clone()));
        c.in_flight.push_back((from, to, forward));
        assert_eq!(c.finish(req), Outcome::Applied(OperationResult::Counter(5)));
        assert_eq!(c.read_view(to.0, &hits, "page"), Some(View::Counter(5)));
    }

    #[test]
    fn siblings_two_blind_setv_make_two_siblings_and_a_setv_with_the_read_context_collapses_them() {
        let docs = keyspace(MergePolicy::Siblings);
        let mut c = Cluster::new(3, LeaderlessConfig::default());
        let blind = |v: &str| Operation::SiblingsWrite {
            context: VersionVector::new(),
            value: Some(b(v)),
        };
        // Concurrent: both start before either's messages are delivered.
        let one = c.start_apply(1, &docs, "d", blind("alice"));
        let two = c.start_apply(2, &docs, "d", blind("bob"));
        assert!(matches!(c.finish(one), Outcome::Applied(_)));
        assert!(matches!(c.finish(two), Outcome::Applied(_)));
        let Some(View::Siblings(SiblingsView { context, values })) = c.read_view(3, &docs, "d")
        else {
            panic!()
        };
        assert_eq!(values, vec![b("alice"), b("bob")]);
        let Outcome::Applied(OperationResult::Siblings(after)) = c.apply_op(
            3,
            &docs,
            "d",
            Operation::SiblingsWrite {
                context,
                value: Some(b("carol, who read both")),
            },
        ) else {
            panic!()
        };
        assert_eq!(after.values, vec![b("carol, who read both")]);
        for via in 1..=3 {
            let Some(View::Siblings(view)) = c.read_view(via, &docs, "d") else {
                panic!()
            };
            assert_eq!(view.values, vec![b("carol, who read both")], "via n{via}");
        }
        let created: u64 = (1..=3)
            .map(|i| c.nodes[&NodeId(i)].engine.stats()["siblings"].siblings_created)
            .sum();
        let resolved: u64 = (1..=3)
            .map(|i| c.nodes[&NodeId(i)].engine.stats()["siblings"].siblings_resolved)
            .sum();
        assert!(
            created >= 1 && resolved >= 1,
            "created {created}, resolved {resolved}"
        );
        // A blind write now adds a sibling again: it had seen nothing.
        c.apply_op(1, &docs, "d", blind("dave"));
        let Some(View::Siblings(view)) = c.read_view(2, &docs, "d") else {
            panic!()
        };
        assert_eq!(view.values.len(), 2);
    }

    #[test]
    fn siblings_set_and_del_supersede_what_the_read_observed() {
        let docs = keyspace(MergePolicy::Siblings);
        let mut c = Cluster::new(3, LeaderlessConfig::default());
        let write = |v: Option<&str>| Operation::SiblingsWriteObserved { value: v.map(b) };
        for (i, v) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(
                c.apply_op(i as u32 + 1, &docs, "d", write(Some(v))),
                Outcome::Applied(OperationResult::Changed(i.min(1) as u64))
            );
        }
        let Some(View::Siblings(view)) = c.read_view(2, &docs, "d") else {
            panic!()
        };
        assert_eq!(view.values, vec![b("c")], "each SET saw the previous one");
        assert_eq!(
            c.apply_op(3, &docs, "d", write(None)),
            Outcome::Applied(OperationResult::Changed(1))
        );
        let Some(View::Siblings(view)) = c.read_view(1, &docs, "d") else {
            panic!()
        };
        assert!(view.values.is_empty());
        assert_eq!(
            c.apply_op(3, &docs, "d", write(None)),
            Outcome::Applied(OperationResult::Changed(0)),
            "deleting a deleted key changes nothing"
        );
    }

    #[test]
    fn map_fields_merge_and_deletes_remove_what_was_read() {
        let prefs = keyspace(MergePolicy::Map);
        let mut c = Cluster::new(3, LeaderlessConfig::default());
        let hset = |pairs: &[(&str, &str)]| {
            Operation::MapSet(pairs.iter().map(|(f, v)| (b(f), b(v))).collect())
        };
        assert_eq!(
            c.apply_op(1, &prefs, "u", hset(&[("theme", "dark"), ("lang", "en")])),
            Outcome::Applied(OperationResult::Changed(2))
        );
        assert_eq!(
            c.apply_op(2, &prefs, "u", hset(&[("theme", "light")])),
            Outcome::Applied(OperationResult::Changed(0))
        );
        assert_eq!(
            c.apply_op(
                3,
                &prefs,
                "u",
                Operation::MapDelete(vec![b("lang"), b("nope")])
            ),
            Outcome::Applied(OperationResult::Changed(1))
        );
        assert_eq!(
            c.read_view(1, &prefs, "u"),
            Some(View::Map(vec![(b("theme"), b("light"))]))
        );
    }

    #[test]
    fn a_later_map_write_through_a_node_with_a_slow_clock_still_wins() {
        let prefs = keyspace(MergePolicy::Map);
        let mut c = Cluster::new(3, LeaderlessConfig::default());
        c.nodes.get_mut(&NodeId(1)).unwrap().wall_ms = 50_000; // 49 s ahead
        c.apply_op(
            1,
            &prefs,
            "u",
            Operation::MapSet(vec![(b("f"), b("first"))]),
        );
        c.nodes.get_mut(&NodeId(3)).unwrap().hlc = Hlc::new(NodeId(3), 60_000);
        c.apply_op(
            3,
            &prefs,
            "u",
            Operation::MapSet(vec![(b("f"), b("second"))]),
        );
        assert_eq!(
            c.read_view(2, &prefs, "u"),
            Some(View::Map(vec![(b("f"), b("second"))]))
        );
    }

    #[test]
    fn a_read_repairs_a_replica_that_missed_an_add() {
        let cart = keyspace(MergePolicy::Set);
        let mut c = Cluster::new(3, LeaderlessConfig::default());
        c.down.insert(NodeId(3));
        c.apply_op(1, &cart, "k", Operation::SetAdd(vec![b("x")]));
        assert!(c.state_at(3, &cart, "k").is_none());
        c.down.clear();
        assert_eq!(c.read_view(3, &cart, "k"), set(&["x"]));
        assert_eq!(c.state_at(3, &cart, "k"), c.state_at(1, &cart, "k"));
    }

    #[test]
    fn quorum_failures_and_the_planted_shared_actor_bug() {
        let hits = keyspace(MergePolicy::Counter);
        let mut c = Cluster::new(3, LeaderlessConfig::default());
        c.down.insert(NodeId(2));
        c.down.insert(NodeId(3));
        assert_eq!(
            c.apply_op(1, &hits, "k", Operation::CounterAdd(1)),
            Outcome::QuorumFailed { acks: 1, needed: 2 }
        );
        // With one actor for every coordinator, two concurrent increments reuse a dot: one is lost.
        let config = LeaderlessConfig {
            bug_shared_actor: true,
            ..LeaderlessConfig::default()
        };
        let mut c = Cluster::new(3, config);
        let one = c.start_apply(1, &hits, "k", Operation::CounterAdd(1));
        let two = c.start_apply(2, &hits, "k", Operation::CounterAdd(1));
        assert!(matches!(c.finish(one), Outcome::Applied(_)));
        assert!(matches!(c.finish(two), Outcome::Applied(_)));
        assert_eq!(
            c.read_view(3, &hits, "k"),
            Some(View::Counter(1)),
            "planted bug loses one"
        );
    }

    #[test]
    fn an_operation_that_would_grow_a_state_past_the_limit_is_refused_and_stores_nothing() {
        let cart = keyspace(MergePolicy::Set);
        let config = LeaderlessConfig {
            state_bytes_max: 64,
            ..LeaderlessConfig::default()
        };
        let mut c = Cluster::new(3, config);
        assert_eq!(
            c.apply_op(1, &cart, "k", Operation::SetAdd(vec![b("small")])),
            Outcome::Applied(OperationResult::Changed(1))
        );
        let big = Bytes::from(vec![b'x'; 100]);
        let Outcome::Refused(Refusal::StateTooLarge { max: 64, .. }) =
            c.apply_op(1, &cart, "k", Operation::SetAdd(vec![big]))
        else {
            panic!("refused")
        };
        assert_eq!(c.read_view(2, &cart, "k"), set(&["small"]));
        // Removes are never refused: they are how a full state gets smaller.
        assert_eq!(
            c.apply_op(3, &cart, "k", Operation::SetRemove(vec![b("small")])),
            Outcome::Applied(OperationResult::Changed(1))
        );
    }
}

// ---- failure detection, sloppy quorums and hinted handoff ----

mod sloppy {
    use super::*;
    use crate::health::PeerStatus;
    use crate::hint::{HintPayload, stored_hints};
    use crate::state::View;
    use triarch_core::MergePolicy;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn sloppy_config() -> LeaderlessConfig {
        LeaderlessConfig {
            quorum_mode_default: QuorumMode::Sloppy,
            ..LeaderlessConfig::default()
        }
    }

    /// Every node of the ring in ring order from `key`: the preference list (the first N),
    /// then the fallback candidates.
    fn ring_order(c: &Cluster, ks: &KeyspaceConfig, key: &str) -> Vec<NodeId> {
        let e = &c.nodes[&NodeId(1)].engine;
        e.ring.preference_list(
            Ring::position(&ks.name, key.as_bytes()),
            e.ring.nodes().len(),
        )
    }

    /// Two keys whose whole ring order is the same (so the same fallbacks stand in).
    fn keys_with_one_ring_order(c: &Cluster, ks: &KeyspaceConfig) -> (String, String) {
        let mut seen: BTreeMap<Vec<NodeId>, String> = BTreeMap::new();
        for i in 0..100_000 {
            let key = format!("k{i}");
            let order = ring_order(c, ks, &key);
            if let Some(first) = seen.get(&order) {
                return (first.clone(), key);
            }
            seen.insert(order, key);
        }
        panic!("no two keys share a ring order")
    }

    impl Cluster {
        fn write_to(
            &mut self,
            via: NodeId,
            ks: &KeyspaceConfig,
            key: &str,
            value: &str,
        ) -> Outcome {
            let req = RequestId(self.replies.len() as u64 + 1000);
            let (ks, k, v) = (ks.clone(), b(key), Some(b(value)));
            self.step(via, |e, env| e.write(env, req, &ks, k, v, 2));
            self.finish(req)
        }

        /// Writes through `via` twice and lets time pass, so that it suspects every down node
        /// among the key's owners (the detector needs K = 2 unanswered requests, each T = 1 s
        /// old). Returns the two writes' outcomes.
        fn suspect_down_owners(
            &mut self,
            via: NodeId,
            ks: &KeyspaceConfig,
            key: &str,
        ) -> Vec<Outcome> {
            let owners = ring_order(self, ks, key)[..3].to_vec();
            let outcomes = (0..2)
                .map(|_| self.write_to(via, ks, key, "probe"))
                .collect();
            self.tick(Duration::from_millis(1_500));
            let health = self.nodes[&via].engine.peer_health();
            for o in owners.iter().filter(|o| self.down.contains(o)) {
                assert_eq!(health[o].status, PeerStatus::Suspect, "{via} suspects {o}");
            }
            outcomes
        }

        fn hints_at(&self, id: NodeId) -> Vec<crate::hint::StoredHint> {
            stored_hints(&self.nodes[&id].disk).unwrap()
        }
    }

    /// Nodes 1-5; the key's owners are the first three of `order`; the first owner
    /// coordinates, the other two are down.
    fn two_owners_down(config: LeaderlessConfig, key: &str) -> (Cluster, Vec<NodeId>) {
        let mut c = Cluster::new(5, config);
        let order = ring_order(&c, &ks(), key);
        c.down.insert(order[1]);
        c.down.insert(order[2]);
        (c, order)
    }

    #[test]
    fn a_write_with_two_of_three_owners_suspected_succeeds_through_fallbacks_at_w2() {
        let (mut c, order) = two_owners_down(sloppy_config(), "k");
        let (a, owner_b, owner_c, d, e) = (order[0], order[1], order[2], order[3], order[4]);
        // Until the detector suspects them, the coordinator counts on the owners and fails.
        let failed = Outcome::QuorumFailed { acks: 1, needed: 2 };
        assert_eq!(
            c.suspect_down_owners(a, &ks(), "k"),
            vec![failed.clone(), failed]
        );
        assert!(c.hints_at(order[3]).is_empty());
        assert_eq!(
            c.write_to(a, &ks(), "k", "v"),
            Outcome::Written { existed: true }
        );
        // Each fallback holds a hint for the owner it stood in for, not a replica's record.
        for (fallback, owner) in [(d, owner_b), (e, owner_c)] {
            let hints = c.hints_at(fallback);
            assert_eq!(hints.len(), 1, "{fallback}");
            assert_eq!(hints[0].hint.owner, owner);
            let HintPayload::Record(r) = &hints[0].payload else {
                panic!("an lww hint")
            };
            assert_eq!(r.value.as_deref(), Some(&b"v"[..]));
            assert!(c.stored(fallback.0, "k").is_none(), "not in the data table");
            let stats = c.stats_of(fallback, "default");
            assert_eq!((stats.hints_stored, stats.hints_pending), (1, 1));
        }
        assert!(c.stats_of(a, "default").hinted_writes >= 1);
        let health = c.nodes[&a].engine.peer_health();
        assert_eq!(health[&d].status, PeerStatus::Up);
        assert!(health[&owner_b].suspected_since.is_some());
    }

    #[test]
    fn hints_are_delivered_and_deleted_once_the_owner_returns() {
        let (mut c, order) = two_owners_down(sloppy_config(), "k");
        let (a, owner_b, owner_c, d, e) = (order[0], order[1], order[2], order[3], order[4]);
        c.suspect_down_owners(a, &ks(), "k");
        assert_eq!(
            c.write_to(a, &ks(), "k", "v"),
            Outcome::Written { existed: true }
        );
        // While the owners stay away the fallbacks try, suspect them, and keep the hints.
        c.tick(Duration::from_secs(5));
        for f in [d, e] {
            assert_eq!(c.hints_at(f).len(), 1);
            assert!(c.stored(owner_b.0, "k").is_none());
        }
        c.down.clear();
        c.tick(Duration::from_secs(2));
        for owner in [owner_b, owner_c] {
            assert_eq!(
                c.stored(owner.0, "k").unwrap().value.as_deref(),
                Some(&b"v"[..]),
                "{owner} got its hint"
            );
        }
        for f in [d, e] {
            assert!(c.hints_at(f).is_empty(), "{f} deleted the delivered hint");
            let stats = c.stats_of(f, "default");
            assert_eq!((stats.hints_delivered, stats.hints_pending), (1, 0));
            assert_eq!(c.nodes[&f].engine.hint_store_usage().hints, 0);
        }
        // The two owners alone now answer a read at R = 2 with the write.
        c.down.insert(a);
        assert_eq!(c.get(owner_b.0, "k"), read("v"));
    }

    #[test]
    fn strict_mode_refuses_the_same_write_with_quorum_failed() {
        let (mut c, order) = two_owners_down(LeaderlessConfig::default(), "k");
        let a = order[0];
        c.suspect_down_owners(a, &ks(), "k");
        assert_eq!(
            c.write_to(a, &ks(), "k", "v"),
            Outcome::QuorumFailed { acks: 1, needed: 2 }
        );
        // The per-request switch: strict in a sloppy keyspace.
        let (mut c, order) = two_owners_down(sloppy_config(), "k");
        let a = order[0];
        c.suspect_down_owners(a, &ks(), "k");
        let req = RequestId(4242);
        c.step(a, |e, env| {
            e.write_with_mode(env, req, &ks(), b("k"), Some(b("v")), 2, QuorumMode::Strict)
        });
        assert_eq!(c.finish(req), Outcome::QuorumFailed { acks: 1, needed: 2 });
        for id in 1..=5 {
            assert!(
                c.hints_at(NodeId(id)).is_empty(),
                "strict writes leave no hints"
            );
        }
    }

    #[test]
    fn a_full_hint_store_refuses_and_counts() {
        let config = LeaderlessConfig {
            hints: HintConfig {
                hints_max: 1,
                ..HintConfig::default()
            },
            ..sloppy_config()
        };
        let probe = Cluster::new(5, config.clone());
        let (k1, k2) = keys_with_one_ring_order(&probe, &ks());
        let (mut c, order) = two_owners_down(config, &k1);
        let (a, d, e) = (order[0], order[3], order[4]);
        c.suspect_down_owners(a, &ks(), &k1);
        assert_eq!(
            c.write_to(a, &ks(), &k1, "1"),
            Outcome::Written { existed: true }
        );
        // The fallbacks are full: they refuse, and nobody else can stand in.
        assert_eq!(
            c.write_to(a, &ks(), &k2, "2"),
            Outcome::QuorumFailed { acks: 1, needed: 2 }
        );
        for f in [d, e] {
            let stats = c.stats_of(f, "default");
            assert_eq!((stats.hints_refused, stats.hints_pending), (1, 1), "{f}");
            let hints = c.hints_at(f);
            assert_eq!(hints.len(), 1);
            assert_eq!(hints[0].hint.key, b(&k1), "the refused hint was not stored");
        }
    }

    #[test]
    fn a_fallback_that_refuses_is_replaced_by_the_next_candidate() {
        let config = LeaderlessConfig {
            hints: HintConfig {
                hints_max: 1,
                ..HintConfig::default()
            },
            ..sloppy_config()
        };
        let mut c = Cluster::new(6, config);
        let (k1, k2) = keys_with_one_ring_order(&c, &ks());
        let order = ring_order(&c, &ks(), &k1);
        let (a, owner_b, owner_c, d, e, f) =
            (order[0], order[1], order[2], order[3], order[4], order[5]);
        c.down.insert(owner_b);
        c.down.insert(owner_c);
        c.suspect_down_owners(a, &ks(), &k1);
        assert_eq!(
            c.write_to(a, &ks(), &k1, "1"),
            Outcome::Written { existed: true }
        );
        assert_eq!((c.hints_at(d).len(), c.hints_at(e).len()), (1, 1));
        // d and e are full and refuse; f, the next candidate, stands in for one of the owners,
        // which with the coordinator's own copy makes W = 2.
        assert_eq!(
            c.write_to(a, &ks(), &k2, "2"),
            Outcome::Written { existed: false }
        );
        assert_eq!(c.stats_of(d, "default").hints_refused, 1);
        assert_eq!(c.stats_of(e, "default").hints_refused, 1);
        let hints = c.hints_at(f);
        assert_eq!(hints.len(), 1);
        assert_eq!(hints[0].hint.key, b(&k2));
        assert!([owner_b, owner_c].contains(&hints[0].hint.owner));
    }

    #[test]
    fn an_acknowledged_hint_survives_a_crash_of_its_fallback() {
        let config = sloppy_config();
        let (mut c, order) = two_owners_down(config.clone(), "k");
        let (a, owner_b, d) = (order[0], order[1], order[3]);
        c.suspect_down_owners(a, &ks(), "k");
        assert_eq!(
            c.write_to(a, &ks(), "k", "v"),
            Outcome::Written { existed: true }
        );
        // The acknowledgement left only after the sync: the crash keeps the hint.
        assert_eq!(c.nodes[&d].disk.unsynced_writes(), 0);
        c.crash_restart(d, config);
        assert_eq!(c.hints_at(d).len(), 1);
        c.down.clear();
        c.tick(Duration::from_secs(2));
        assert_eq!(
            c.stored(owner_b.0, "k").unwrap().value.as_deref(),
            Some(&b"v"[..]),
            "the restarted fallback reloaded the hint and delivered it"
        );
        assert!(c.hints_at(d).is_empty());
        assert_eq!(c.stats_of(d, "default").hints_delivered, 1);
    }

    #[test]
    fn a_newer_record_arriving_during_a_handoff_is_delivered_not_deleted() {
        let (mut c, order) = two_owners_down(sloppy_config(), "k");
        let (a, owner_b, d) = (order[0], order[1], order[3]);
        c.suspect_down_owners(a, &ks(), "k");
        c.write_to(a, &ks(), "k", "1");
        c.down.clear();
        // d sends its hint; before the owner's answer lands, a newer hinted write arrives.
        c.now = c.now + Duration::from_millis(300);
        c.step(d, |e, env| e.handle_timeout(env));
        let handoff = c
            .in_flight
            .iter()
            .position(|(_, _, m)| matches!(m, Message::Handoff { .. }))
            .expect("a handoff");
        let (from, to, message) = c.in_flight.remove(handoff).unwrap();
        c.step(to, |e, env| e.handle_message(env, from, message));
        let ack = c.in_flight.pop_back().unwrap();
        assert!(matches!(ack.2, Message::HandoffAck { .. }));
        c.in_flight.clear();
        c.down.insert(owner_b);
        c.down.insert(order[2]);
        c.write_to(a, &ks(), "k", "2");
        c.down.clear();
        c.in_flight.push_back(ack);
        c.deliver_all();
        assert_eq!(c.hints_at(d).len(), 1, "the newer hint is kept");
        c.tick(Duration::from_secs(2));
        assert_eq!(
            c.stored(owner_b.0, "k").unwrap().value.as_deref(),
            Some(&b"2"[..])
        );
        assert!(c.hints_at(d).is_empty());
    }

    #[test]
    fn hints_past_the_age_limit_expire_and_are_counted() {
        let config = LeaderlessConfig {
            hints: HintConfig {
                hint_age_max: Duration::from_secs(10),
                ..HintConfig::default()
            },
            ..sloppy_config()
        };
        let (mut c, order) = two_owners_down(config, "k");
        let (a, d) = (order[0], order[3]);
        c.suspect_down_owners(a, &ks(), "k");
        c.write_to(a, &ks(), "k", "v");
        c.tick(Duration::from_secs(5));
        assert_eq!(c.hints_at(d).len(), 1);
        c.tick(Duration::from_secs(6));
        assert!(c.hints_at(d).is_empty());
        let stats = c.stats_of(d, "default");
        assert_eq!((stats.hints_expired, stats.hints_pending), (1, 0));
    }

    #[test]
    fn requests_go_to_healthy_replicas_first() {
        let (mut c, order) = two_owners_down(sloppy_config(), "k");
        let a = order[0];
        c.down.remove(&order[2]);
        c.suspect_down_owners(a, &ks(), "k");
        assert!(!c.nodes[&a].engine.detector.is_suspected(order[2]));
        let req = RequestId(99);
        c.step(a, |e, env| e.read(env, req, &ks(), b("k"), 2));
        let to: Vec<NodeId> = c.in_flight.iter().map(|(_, to, _)| *to).collect();
        assert_eq!(
            to,
            vec![order[2], order[1]],
            "the suspected owner is asked last"
        );
    }

    #[test]
    fn a_counter_increment_with_two_replicas_suspected_is_handed_off() {
        let hits = KeyspaceConfig {
            merge: MergePolicy::Counter,
            ..KeyspaceConfig::leaderless("hits")
        };
        let mut c = Cluster::new(5, sloppy_config());
        let order = ring_order(&c, &hits, "page");
        let (a, owner_b, owner_c) = (order[0], order[1], order[2]);
        c.down.insert(owner_b);
        c.down.insert(owner_c);
        let add = |c: &mut Cluster, amount| {
            let req = RequestId(c.replies.len() as u64 + 7000);
            let hits = hits.clone();
            c.step(a, |e, env| {
                e.apply(
                    env,
                    req,
                    &hits,
                    b("page"),
                    Operation::CounterAdd(amount),
                    2,
                    2,
                )
            });
            c.finish(req)
        };
        for _ in 0..2 {
            assert!(matches!(add(&mut c, 1), Outcome::QuorumFailed { .. }));
        }
        c.tick(Duration::from_millis(500));
        assert_eq!(
            add(&mut c, 5),
            Outcome::Applied(OperationResult::Counter(7))
        );
        assert_eq!(c.hints_at(order[3]).len(), 1);
        c.down.clear();
        c.tick(Duration::from_secs(2));
        for o in [owner_b, owner_c] {
            let state = load_state(&c.nodes[&o].disk, "hits", b"page")
                .unwrap()
                .unwrap();
            assert_eq!(state.view(), View::Counter(7), "{o} holds the whole state");
        }
        assert!(c.hints_at(order[3]).is_empty() && c.hints_at(order[4]).is_empty());
    }

    #[test]
    fn planted_bug_a_hint_acknowledged_but_not_stored_never_reaches_its_owner() {
        let config = LeaderlessConfig {
            bug_hint_not_stored: true,
            ..sloppy_config()
        };
        let (mut c, order) = two_owners_down(config, "k");
        let (a, owner_b) = (order[0], order[1]);
        c.suspect_down_owners(a, &ks(), "k");
        assert_eq!(
            c.write_to(a, &ks(), "k", "v"),
            Outcome::Written { existed: true }
        );
        c.down.clear();
        c.tick(Duration::from_secs(3));
        assert!(
            c.stored(owner_b.0, "k")
                .is_none_or(|r| r.value.as_deref() != Some(&b"v"[..])),
            "acknowledged, yet the owner never got it"
        );
    }
}

mod anti_entropy_exchanges;
mod membership;
mod membership_seeds;

#[test]
fn a_keyspace_asks_for_sloppy_quorums_unless_the_node_overrides_it() {
    let sloppy = KeyspaceConfig {
        quorum: QuorumMode::Sloppy,
        ..ks()
    };
    let engine = Leaderless::new(NodeId(1), &[NodeId(1)], LeaderlessConfig::default());
    assert_eq!(engine.quorum_mode(&ks()), QuorumMode::Strict);
    assert_eq!(engine.quorum_mode(&sloppy), QuorumMode::Sloppy);
    let mut config = LeaderlessConfig::default();
    config
        .quorum_modes
        .insert("default".into(), QuorumMode::Strict);
    let overridden = Leaderless::new(NodeId(1), &[NodeId(1)], config);
    assert_eq!(overridden.quorum_mode(&sloppy), QuorumMode::Strict);
}
