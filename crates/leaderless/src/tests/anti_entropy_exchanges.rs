//! Anti-entropy on the hand-driven cluster: trees, exchanges, repair, bounds.

use super::*;
use crate::anti_entropy::AntiEntropyConfig;
use crate::merkle::{self, LEAF_LEVEL};
use crate::state::View;
use triarch_core::DetRng;
use triarch_core::MergePolicy;
use triarch_core::crdt::PnCounter;

const INTERVAL: Duration = Duration::from_secs(1);

fn ae_config() -> LeaderlessConfig {
    LeaderlessConfig {
        anti_entropy: AntiEntropyConfig {
            exchange_interval: INTERVAL,
            exchanges_in_flight_max: 4,
            ..AntiEntropyConfig::default()
        },
        ..LeaderlessConfig::default()
    }
}

fn with(f: impl FnOnce(&mut AntiEntropyConfig)) -> LeaderlessConfig {
    let mut config = ae_config();
    f(&mut config.anti_entropy);
    config
}

fn counters() -> KeyspaceConfig {
    KeyspaceConfig {
        merge: MergePolicy::Counter,
        ..KeyspaceConfig::leaderless("hits")
    }
}

fn cart() -> KeyspaceConfig {
    KeyspaceConfig {
        merge: MergePolicy::Set,
        ..KeyspaceConfig::leaderless("cart")
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

impl Cluster {
    fn write_w(&mut self, via: u32, ks: &KeyspaceConfig, key: &str, value: &str, w: u8) -> Outcome {
        let req = RequestId(self.replies.len() as u64 + 1000);
        let (ks, k, v) = (ks.clone(), b(key), Some(b(value)));
        self.step(NodeId(via), |e, env| e.write(env, req, &ks, k, v, w));
        self.finish(req)
    }

    fn op(&mut self, via: u32, ks: &KeyspaceConfig, key: &str, op: Operation, w: u8) -> Outcome {
        let req = RequestId(self.replies.len() as u64 + 1000);
        let (ks, k) = (ks.clone(), b(key));
        self.step(NodeId(via), |e, env| e.apply(env, req, &ks, k, op, w, w));
        self.finish(req)
    }

    /// Every row of `keyspace`'s data table on node `id`.
    fn table(&self, id: u32, keyspace: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.nodes[&NodeId(id)]
            .disk
            .scan(&table_name(keyspace), &[], usize::MAX)
            .unwrap()
    }

    /// The keys whose replicas (per the ring, N of `keyspace`) do not all hold the same bytes.
    fn diverged(&self, keyspace: &KeyspaceConfig) -> Vec<Vec<u8>> {
        let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
        for id in self.nodes.keys() {
            keys.extend(self.table(id.0, &keyspace.name).into_iter().map(|(k, _)| k));
        }
        let engine = &self.nodes[&NodeId(1)].engine;
        keys.into_iter()
            .filter(|k| {
                let replicas = engine.replicas(keyspace, k);
                let held: BTreeSet<Option<Vec<u8>>> = replicas
                    .iter()
                    .map(|r| {
                        self.nodes[r]
                            .disk
                            .get(&table_name(&keyspace.name), k)
                            .unwrap()
                    })
                    .collect();
                held.len() > 1
            })
            .collect()
    }

    fn total(&self, keyspace: &str, f: fn(&KeyspaceStats) -> u64) -> u64 {
        self.nodes
            .keys()
            .map(|id| f(&self.stats_of(*id, keyspace)))
            .sum()
    }

    /// Ticks until no replica of any key of `keyspaces` differs, at most `limit`; returns how
    /// long it took.
    fn converge(&mut self, keyspaces: &[KeyspaceConfig], limit: Duration) -> Duration {
        let start = self.now;
        while keyspaces.iter().any(|ks| !self.diverged(ks).is_empty()) {
            assert!(
                self.now - start < limit,
                "not converged within {limit:?}: {:?}",
                keyspaces
                    .iter()
                    .map(|ks| self.diverged(ks).len())
                    .collect::<Vec<_>>()
            );
            self.tick(Duration::from_millis(100));
        }
        self.now - start
    }

    /// The anti-entropy messages delivered so far.
    fn exchanged(&self) -> impl Iterator<Item = &(Instant, NodeId, NodeId, Message)> {
        self.trace.iter().filter(|(_, _, _, m)| {
            matches!(
                m,
                Message::TreeHashes { .. }
                    | Message::TreeDiff { .. }
                    | Message::KeyHashes { .. }
                    | Message::KeyDiff { .. }
                    | Message::KeyValues { .. }
                    | Message::ExchangeRefused { .. }
            )
        })
    }
}

/// Keys `k0`, `k1`, ... of `keyspace` whose replica set is `set` (N = 3 of the cluster's ring).
fn keys_in_set(
    c: &Cluster,
    keyspace: &KeyspaceConfig,
    set: &[NodeId],
    count: usize,
) -> Vec<String> {
    let engine = &c.nodes[&NodeId(1)].engine;
    (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| {
            let mut r = engine.replicas(keyspace, k.as_bytes());
            r.sort();
            r == set
        })
        .take(count)
        .collect()
}

#[test]
fn trees_are_equal_after_the_same_writes_in_any_order_and_after_a_rebuild_from_disk() {
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    let mut rng = DetRng::seed_from_u64(7);
    // Several records per key with distinct timestamps (last-writer-wins picks the same one
    // whatever the order), and counter states of three actors (the join is the same whatever
    // the order).
    let mut records: Vec<(Bytes, Record)> = Vec::new();
    for i in 0..400u64 {
        let key = Bytes::from(format!("k{}", rng.below(60)));
        let value = (i % 7 != 0).then(|| Bytes::from(format!("v{i}")));
        let timestamp = HlcTimestamp {
            wall_ms: 1_000 + i,
            logical: 0,
            node: NodeId(1),
        };
        records.push((key, Record { timestamp, value }));
    }
    let mut states: Vec<(Bytes, State)> = Vec::new();
    let mut by_actor: BTreeMap<(u64, u32), PnCounter> = BTreeMap::new();
    for _ in 0..300 {
        let (key, actor) = (rng.below(20), rng.below(3) as u32);
        let c = by_actor.entry((key, actor)).or_default();
        let _ = c
            .add(
                triarch_core::causal::ActorId(actor),
                rng.between(1, 9) as i64 - 4,
            )
            .unwrap();
        states.push((Bytes::from(format!("c{key}")), State::Counter(c.clone())));
    }
    type Roots = BTreeMap<Vec<NodeId>, u64>;
    let mut seen: Option<(Roots, Roots)> = None;
    // A few keys per scan step, so that the scan and the writes interleave.
    let config = with(|a| a.build_keys_per_step = 7);
    for order in 0..6 {
        let mut engine = Leaderless::new(NodeId(1), &members, config.clone());
        let mut disk = SimDisk::new();
        let mut hlc = Hlc::new(NodeId(1), 60_000);
        let mut env = Env {
            now: Now::new(Instant(0), 1_000),
            storage: &mut disk,
            hlc: &mut hlc,
        };
        engine.observe_keyspace(&mut env, &ks());
        engine.observe_keyspace(&mut env, &counters());
        // Half the runs index an empty table and follow the writes; half index the writes
        // part-way through (the scan and the writes interleave).
        if order % 2 == 0 {
            assert!(!engine.anti_entropy.build_step(env.storage).unwrap());
        }
        let (mut r, mut s) = (records.clone(), states.clone());
        if order > 0 {
            rng.shuffle(&mut r);
            rng.shuffle(&mut s);
        }
        for (i, (key, record)) in r.iter().enumerate() {
            engine
                .apply_record(env.storage, "default", key, record, true)
                .unwrap();
            if order % 2 == 1 && i == r.len() / 2 {
                engine.anti_entropy.build_step(env.storage).unwrap();
            }
        }
        for (key, state) in &s {
            let update = Update::State(state.clone());
            engine
                .store_update_changed(env.storage, "hits", key, &update)
                .unwrap();
        }
        while engine.anti_entropy.build_step(env.storage).unwrap() {}
        engine.check_invariants();
        let roots = (
            engine.anti_entropy.roots("default"),
            engine.anti_entropy.roots("hits"),
        );
        assert!(!roots.0.is_empty() && !roots.1.is_empty());
        match &seen {
            None => seen = Some(roots.clone()),
            Some(first) => assert_eq!(&roots, first, "order {order}"),
        }
        // A restarted node rebuilds the same trees from its disk alone.
        disk.sync().unwrap();
        let mut again = Leaderless::new(NodeId(1), &members, config.clone());
        let mut hlc = Hlc::new(NodeId(1), 60_000);
        let mut env = Env {
            now: Now::new(Instant(0), 1_000),
            storage: &mut disk,
            hlc: &mut hlc,
        };
        // The first step loads the registry (both keyspaces, with their N) and scans.
        again.handle_timeout(&mut env);
        while again.anti_entropy.build_step(env.storage).unwrap() {}
        assert_eq!(again.anti_entropy.roots("default"), roots.0);
        assert_eq!(again.anti_entropy.roots("hits"), roots.1);
        again.check_invariants();
    }
}

#[test]
fn a_single_differing_key_is_found_by_descending_the_trees() {
    let mut c = Cluster::with_anti_entropy(3, ae_config());
    for i in 0..300 {
        c.set(1, &format!("k{i}"), "v");
    }
    c.down.insert(NodeId(3));
    c.set(1, "x", "1");
    c.set(1, "k7", "2");
    c.down.clear();
    let leaf_of = |k: &str| merkle::index_of(LEAF_LEVEL, Ring::position("default", k.as_bytes()));
    let differing = BTreeSet::from([leaf_of("x"), leaf_of("k7")]);
    let spans: BTreeSet<(u64, u64)> = differing
        .iter()
        .map(|l| merkle::span(LEAF_LEVEL, *l))
        .collect();
    c.trace.clear();
    c.converge(&[ks()], Duration::from_secs(5));
    assert_eq!(c.stored(3, "x").unwrap().value, Some(b("1")));
    assert_eq!(c.stored(3, "k7").unwrap().value, Some(b("2")));
    // Only node 3 changed, twice.
    assert_eq!(
        c.stats_of(NodeId(3), "default").anti_entropy_keys_repaired,
        2
    );
    assert_eq!(c.total("default", |s| s.anti_entropy_keys_repaired), 2);
    let mut listed = 0;
    let mut descended = false;
    for (_, from, to, m) in c.exchanged() {
        match m {
            Message::TreeHashes { level, hashes, .. } => {
                // Level 1: the root's 32 children; level 2: the children of the (at most two)
                // differing level-1 nodes.
                let expected = match level {
                    0 => 1..=1,
                    1 => 32..=32,
                    _ => 32..=64,
                };
                assert!(
                    expected.contains(&hashes.len()),
                    "level {level}: {}",
                    hashes.len()
                );
                descended |= *level == LEAF_LEVEL;
            }
            Message::KeyHashes {
                from: first,
                to: last,
                keys,
                ..
            } => {
                let inside = |p: &u64| spans.iter().any(|(a, z)| a <= p && p <= z);
                assert!(
                    inside(first) && inside(last),
                    "{from}->{to}: a page outside the differing leaves"
                );
                listed += keys.len();
            }
            Message::KeyDiff { push, pull, .. } => {
                for k in push.iter().map(|(k, _)| k).chain(pull) {
                    assert!(k == &b("x") || k == &b("k7"), "{k:?} crossed");
                }
            }
            _ => {}
        }
    }
    assert!(descended);
    // A handful of keys share those leaves; none of the other ~300 was listed.
    assert!(listed <= 20, "{listed} keys listed");
    // Now everything is in sync: further exchanges stop at the root.
    c.trace.clear();
    c.tick(INTERVAL * 3);
    assert!(c.exchanged().count() > 0);
    for (_, _, _, m) in c.exchanged() {
        match m {
            Message::TreeHashes { level, .. } => assert_eq!(*level, 0),
            Message::TreeDiff { differing, .. } => assert!(differing.is_empty()),
            other => panic!("{other:?} between replicas in sync"),
        }
    }
    let s = c.stats_of(NodeId(1), "default");
    assert!(
        s.anti_entropy_ranges_in_sync > 0
            && s.anti_entropy_ranges_in_sync < s.anti_entropy_ranges_compared
    );
    assert!(s.anti_entropy_bytes_sent > 0);
}

#[test]
fn repair_converges_replicas_both_ways_for_records_counters_and_sets() {
    let mut c = Cluster::with_anti_entropy(3, ae_config());
    // Node 3 misses writes coordinated by node 1...
    c.down.insert(NodeId(3));
    for i in 0..100 {
        assert!(matches!(
            c.set(1, &format!("a{i}"), "1"),
            Outcome::Written { .. }
        ));
        c.op(
            1,
            &counters(),
            &format!("c{}", i % 10),
            Operation::CounterAdd(1),
            2,
        );
        c.op(
            1,
            &cart(),
            &format!("s{}", i % 10),
            Operation::SetAdd(vec![b(&format!("e{i}"))]),
            2,
        );
    }
    // ... and holds writes the others missed (W = 1 through node 3 alone).
    c.down = BTreeSet::from([NodeId(1), NodeId(2)]);
    for i in 0..50 {
        c.write_w(3, &ks(), &format!("b{i}"), "3", 1);
        c.write_w(3, &ks(), &format!("a{i}"), "3", 1);
        c.op(
            3,
            &counters(),
            &format!("c{}", i % 10),
            Operation::CounterAdd(10),
            1,
        );
        c.op(
            3,
            &cart(),
            &format!("s{}", i % 10),
            Operation::SetAdd(vec![b(&format!("f{i}"))]),
            1,
        );
    }
    c.down.clear();
    let all = [ks(), counters(), cart()];
    assert!(all.iter().all(|k| !c.diverged(k).is_empty()));
    let took = c.converge(&all, Duration::from_secs(20));
    println!("converged in {took:?}");
    // Last-writer-wins: the later writes through node 3 won everywhere.
    for id in 1..=3 {
        assert_eq!(c.stored(id, "a7").unwrap().value, Some(b("3")));
        assert_eq!(c.stored(id, "a77").unwrap().value, Some(b("1")));
        assert_eq!(c.stored(id, "b7").unwrap().value, Some(b("3")));
        let disk = &c.nodes[&NodeId(id)].disk;
        // Counters: every increment of either side, on every replica (the join).
        let total: i128 = (0..10)
            .map(
                |k| match load_state(disk, "hits", format!("c{k}").as_bytes()).unwrap() {
                    Some(s) => match s.view() {
                        View::Counter(v) => v,
                        other => panic!("{other:?}"),
                    },
                    None => 0,
                },
            )
            .sum();
        assert_eq!(total, 100 + 50 * 10, "node {id}");
        let members: usize = (0..10)
            .map(
                |k| match load_state(disk, "cart", format!("s{k}").as_bytes()).unwrap() {
                    Some(s) => match s.view() {
                        View::Set(m) => m.len(),
                        other => panic!("{other:?}"),
                    },
                    None => 0,
                },
            )
            .sum();
        assert_eq!(members, 150, "node {id}");
    }
    for k in ["default", "hits", "cart"] {
        assert!(c.total(k, |s| s.anti_entropy_keys_repaired) > 0, "{k}");
    }
    for id in 1..=3 {
        c.nodes[&NodeId(id)].engine.check_invariants();
    }
}

#[test]
fn the_rate_bound_holds_and_an_idle_cluster_in_sync_exchanges_only_roots() {
    const KEYS_MAX: usize = 4;
    let config = with(|a| {
        a.exchanges_in_flight_max = 1;
        a.keys_per_message_max = KEYS_MAX;
    });
    let mut c = Cluster::with_anti_entropy(5, config);
    for i in 0..50u32 {
        c.set(1 + i % 5, &format!("k{i}"), "old");
    }
    c.down.insert(NodeId(5));
    for i in 0..200u32 {
        c.set(1 + i % 4, &format!("k{i}"), "new");
    }
    c.down.clear();
    c.trace.clear();
    // The harness checks every engine's invariants after each step: at most one exchange of
    // each node's in flight, whatever happens.
    c.converge(&[ks()], Duration::from_secs(60));
    let mut last_start: BTreeMap<(NodeId, NodeId, Vec<NodeId>), Instant> = BTreeMap::new();
    let mut pages = 0;
    for (at, from, to, m) in c.exchanged() {
        match m {
            Message::TreeHashes {
                level: 0, replicas, ..
            } => {
                if let Some(prev) = last_start.insert((*from, *to, replicas.clone()), *at) {
                    assert!(
                        *at - prev >= INTERVAL,
                        "{from}->{to} {replicas:?} compared twice within the interval"
                    );
                }
            }
            Message::KeyHashes { keys, .. } => {
                pages += 1;
                assert!(keys.len() <= KEYS_MAX, "{} keys listed", keys.len());
            }
            Message::KeyDiff { push, pull, .. } => {
                let decided: BTreeSet<&Bytes> = push.iter().map(|(k, _)| k).chain(pull).collect();
                assert!(decided.len() <= KEYS_MAX, "{} keys decided", decided.len());
            }
            Message::KeyValues { entries, .. } => assert!(entries.len() <= KEYS_MAX),
            _ => {}
        }
    }
    assert!(pages > 10, "{pages} pages");
    // Idle and in sync: each node compares each of its ranges with each peer once per interval,
    // two messages each, a few dozen bytes.
    let before: BTreeMap<NodeId, KeyspaceStats> = (1..=5)
        .map(|i| (NodeId(i), c.stats_of(NodeId(i), "default")))
        .collect();
    c.trace.clear();
    let window = Duration::from_secs(10);
    c.tick(window);
    // 5 nodes, N = 3: each node is in 6 ranges with 2 peers each.
    let units = 6 * 2;
    for id in 1..=5 {
        let (b0, now) = (&before[&NodeId(id)], c.stats_of(NodeId(id), "default"));
        let compared = now.anti_entropy_ranges_compared - b0.anti_entropy_ranges_compared;
        let in_sync = now.anti_entropy_ranges_in_sync - b0.anti_entropy_ranges_in_sync;
        assert_eq!(compared, in_sync, "node {id}: everything in sync");
        // At most once per interval per unit, and at most one at a time.
        assert!(
            compared <= units * (window.as_secs() + 1),
            "node {id}: {compared}"
        );
        assert!(
            compared >= 5,
            "node {id} compared {compared} ranges in {window:?}"
        );
        let bytes = now.anti_entropy_bytes_sent - b0.anti_entropy_bytes_sent;
        let per = bytes as f64 / compared as f64;
        assert!(
            per < 120.0,
            "node {id}: {per} bytes sent per in-sync comparison (both roles)"
        );
    }
    for (_, _, _, m) in c.exchanged() {
        assert!(
            matches!(
                m,
                Message::TreeHashes { level: 0, .. } | Message::TreeDiff { .. }
            ),
            "{m:?}"
        );
    }
}

#[test]
fn pages_split_a_leaf_holding_more_keys_than_a_message_carries() {
    // Keys in one leaf: found by search.
    let mut by_leaf: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let keys = (0..)
        .map(|i| format!("p{i}"))
        .find_map(|k| {
            let leaf = merkle::index_of(LEAF_LEVEL, Ring::position("default", k.as_bytes()));
            let same = by_leaf.entry(leaf).or_default();
            same.push(k);
            (same.len() == 4).then(|| same.clone())
        })
        .unwrap();
    let config = with(|a| {
        a.keys_per_message_max = 1;
        a.value_bytes_per_message_max = 1;
    });
    let mut c = Cluster::with_anti_entropy(3, config);
    c.down.insert(NodeId(3));
    for k in &keys[..2] {
        c.set(1, k, "from-1");
    }
    c.down = BTreeSet::from([NodeId(1), NodeId(2)]);
    for k in &keys[2..] {
        c.write_w(3, &ks(), k, "from-3", 1);
    }
    c.down.clear();
    c.trace.clear();
    c.converge(&[ks()], Duration::from_secs(10));
    // One exchange went through several pages of its one differing leaf.
    let mut pages_per_exchange: BTreeMap<(NodeId, OpId), usize> = BTreeMap::new();
    for (_, from, _, m) in c.exchanged() {
        if let Message::KeyHashes { op, keys, .. } = m {
            assert!(keys.len() <= 1);
            *pages_per_exchange.entry((*from, *op)).or_default() += 1;
        }
        if let Message::KeyDiff { push, .. } = m {
            assert!(push.len() <= 1, "one value per message past the byte bound");
        }
    }
    assert!(
        pages_per_exchange.values().any(|p| *p >= 3),
        "{pages_per_exchange:?}"
    );
    for k in &keys {
        let expected = if keys[..2].contains(k) {
            "from-1"
        } else {
            "from-3"
        };
        for id in 1..=3 {
            assert_eq!(c.stored(id, k).unwrap().value, Some(b(expected)));
        }
    }
}

#[test]
fn a_restarted_node_rebuilds_its_trees_from_disk_and_finds_them_in_sync() {
    let config = with(|a| a.build_keys_per_step = 7);
    let mut c = Cluster::with_anti_entropy(3, config.clone());
    for i in 0..100 {
        c.set(1, &format!("k{i}"), "v");
    }
    c.tick(INTERVAL * 5);
    let roots = c.nodes[&NodeId(1)].engine.anti_entropy.roots("default");
    assert_eq!(roots.len(), 1, "3 nodes, N = 3: one range");
    c.crash_restart(NodeId(2), config);
    assert!(
        c.nodes[&NodeId(2)]
            .engine
            .anti_entropy
            .roots("default")
            .is_empty()
    );
    c.tick(INTERVAL * 5);
    let status = c.nodes[&NodeId(2)].engine.anti_entropy_status();
    let tree = &status.keyspaces["default"];
    assert!(
        !tree.building && tree.keys == 100 && tree.n == Some(3),
        "{status:?}"
    );
    assert_eq!(
        c.nodes[&NodeId(2)].engine.anti_entropy.roots("default"),
        roots
    );
    assert_eq!(c.total("default", |s| s.anti_entropy_keys_repaired), 0);
    assert!(c.stats_of(NodeId(2), "default").anti_entropy_ranges_in_sync > 0);
}

#[test]
fn a_replica_that_lost_unsynced_writes_in_a_crash_is_repaired() {
    let mut c = Cluster::with_anti_entropy(3, ae_config());
    for i in 0..20 {
        c.set(1, &format!("k{i}"), "v");
    }
    // Node 3 stages a write and crashes before syncing it.
    let record = Record {
        timestamp: c.nodes.get_mut(&NodeId(1)).unwrap().hlc.now(5_000),
        value: Some(b("late")),
    };
    for id in [1, 2, 3] {
        let r = c.nodes.get_mut(&NodeId(id)).unwrap();
        r.engine
            .apply_record(&mut r.disk, "default", b"k3", &record, true)
            .unwrap();
        if id != 3 {
            r.disk.sync().unwrap();
        }
    }
    c.crash_restart(NodeId(3), ae_config());
    assert_eq!(c.stored(3, "k3").unwrap().value, Some(b("v")));
    c.converge(&[ks()], Duration::from_secs(5));
    assert_eq!(c.stored(3, "k3").unwrap().value, Some(b("late")));
}

/// The planted bugs are real: each leaves a divergence that anti-entropy without it repairs.
#[test]
fn planted_bugs_leave_replicas_diverged() {
    // A key whose preference list leaves out node 1, so that node 1 coordinates it and every
    // replica applies it from a `Write` message.
    let probe = Cluster::new(5, ae_config());
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| {
            !probe.nodes[&NodeId(1)]
                .engine
                .replicas(&ks(), k.as_bytes())
                .contains(&NodeId(1))
        })
        .unwrap();
    let replicas = probe.nodes[&NodeId(1)]
        .engine
        .replicas(&ks(), key.as_bytes());
    let run = |config: LeaderlessConfig| {
        let mut c = Cluster::with_anti_entropy(5, config);
        // Every node knows the keyspace and has built its (empty) index: from now on the
        // index follows the writes (before, the scan would find them).
        for id in 1..=5 {
            c.step(NodeId(id), |e, env| e.observe_keyspace(env, &ks()));
        }
        c.tick(INTERVAL);
        c.down.insert(replicas[2]);
        c.set(1, &key, "v");
        c.down.clear();
        c.tick(INTERVAL * 10);
        c.diverged(&ks()).len()
    };
    assert_eq!(run(ae_config()), 0);
    assert_eq!(
        run(with(|a| a.bug_tree_not_updated_on_replica_write = true)),
        1,
        "replicas whose trees missed the write never look for it"
    );
    // A key of an odd range, diverged: nobody compares that range.
    let odd_range = probe.nodes[&NodeId(1)]
        .engine
        .ring
        .replica_sets(3)
        .nodes(1)
        .to_vec();
    let key = keys_in_set(&probe, &ks(), &odd_range, 1).pop().unwrap();
    let run = |config: LeaderlessConfig| {
        let mut c = Cluster::with_anti_entropy(5, config);
        c.down.insert(odd_range[0]);
        c.set(odd_range[1].0, &key, "v");
        c.down.clear();
        c.tick(INTERVAL * 10);
        c.diverged(&ks()).len()
    };
    assert_eq!(run(ae_config()), 0);
    assert_eq!(run(with(|a| a.bug_odd_ranges_never_compared = true)), 1);
}

#[test]
fn anti_entropy_off_sends_nothing_and_refuses_exchanges() {
    let mut c = Cluster::with_anti_entropy(3, with(|a| a.enabled = false));
    c.set(1, "k", "v");
    c.trace.clear();
    c.tick(INTERVAL * 5);
    assert_eq!(c.exchanged().count(), 0);
    assert!(
        c.nodes[&NodeId(1)].engine.poll_timeout().is_none(),
        "no timer when idle"
    );
}

// ---- tombstones (collected once every replica confirmed them) ----

const GRACE: Duration = Duration::from_secs(3);

/// Anti-entropy every second; tombstones kept 3 s after the last confirmation (the hint age
/// limit, which bounds the grace from below, made short), remembered at most 30 s.
fn collecting() -> LeaderlessConfig {
    let mut config = with(|a| {
        a.tombstone_grace = GRACE;
        a.tombstone_memory = Duration::from_secs(30);
    });
    config.hints.hint_age_max = Duration::from_secs(1);
    config
}

fn delete(c: &mut Cluster, via: u32, key: &str) -> Outcome {
    let req = RequestId(c.replies.len() as u64 + 1000);
    let k = b(key);
    c.step(NodeId(via), |e, env| e.write(env, req, &ks(), k, None, 2));
    c.finish(req)
}

fn tombstones(c: &Cluster, id: u32) -> u64 {
    c.nodes[&NodeId(id)]
        .engine
        .anti_entropy_status()
        .keyspaces
        .get("default")
        .map_or(0, |k| k.tombstones)
}

#[test]
fn a_tombstone_is_collected_by_every_replica_once_all_of_them_confirmed_it() {
    let mut c = Cluster::with_anti_entropy(3, collecting());
    c.set(1, "gone", "v");
    c.set(1, "kept", "v");
    assert_eq!(
        delete(&mut c, 2, "gone"),
        Outcome::Written { existed: true }
    );
    for id in 1..=3 {
        assert!(
            c.stored(id, "gone").unwrap().value.is_none(),
            "a tombstone first"
        );
    }
    // Confirmed by every replica within an exchange interval or two...
    c.tick(INTERVAL * 2);
    for id in 1..=3 {
        let status = c.nodes[&NodeId(id)].engine.anti_entropy_status();
        assert_eq!(
            status.keyspaces["default"].tombstones_confirmed, 1,
            "node {id}"
        );
    }
    assert_eq!(
        c.total("default", |s| s.tombstones_collected),
        0,
        "not before the grace"
    );
    // ... then collected after the grace period, here while node 3 is away: nodes 1 and 2
    // remember the tombstone as long as node 3 may still hold it.
    c.down.insert(NodeId(3));
    c.tick(GRACE + INTERVAL);
    for id in 1..=2 {
        assert_eq!(c.stored(id, "gone"), None, "node {id}");
        assert!(c.stored(id, "kept").is_some());
        assert_eq!(tombstones(&c, id), 0);
    }
    assert!(c.stored(3, "gone").is_some(), "node 3 was not stepped");
    // A straggling older write meanwhile is refused as if the tombstone were still there.
    let old = Record {
        timestamp: HlcTimestamp {
            wall_ms: 1,
            logical: 0,
            node: NodeId(1),
        },
        value: Some(b("zombie")),
    };
    let r = c.nodes.get_mut(&NodeId(1)).unwrap();
    let applied = r
        .engine
        .apply_record(&mut r.disk, "default", b"gone", &old, true)
        .unwrap();
    assert!(!applied.accepted && c.stored(1, "gone").is_none());
    // Node 3 returns and collects too; once every replica is seen without it, the tombstone
    // is forgotten everywhere, and nothing is handed back.
    c.down.clear();
    c.tick(GRACE + INTERVAL * 3);
    for id in 1..=3 {
        assert_eq!(c.stored(id, "gone"), None, "node {id}");
        let status = c.nodes[&NodeId(id)].engine.anti_entropy_status();
        assert_eq!(
            status.keyspaces["default"].tombstones_remembered, 0,
            "node {id}"
        );
    }
    assert_eq!(c.total("default", |s| s.tombstones_collected), 3);
    c.tick(INTERVAL * 5);
    assert!(c.diverged(&ks()).is_empty());
    assert_eq!(c.total("default", |s| s.tombstones_collected), 3);
}

#[test]
fn a_replica_that_missed_the_delete_holds_collection_back_and_nothing_resurrects() {
    let mut c = Cluster::with_anti_entropy(3, collecting());
    c.set(1, "k", "old");
    c.down.insert(NodeId(3));
    delete(&mut c, 1, "k");
    // However long node 3 stays away, its replicas cannot confirm it holds the tombstone.
    c.tick(GRACE * 5);
    assert_eq!(c.total("default", |s| s.tombstones_collected), 0);
    assert!(c.stored(1, "k").unwrap().value.is_none());
    assert_eq!(c.stored(3, "k").unwrap().value, Some(b("old")));
    c.down.clear();
    c.tick(GRACE * 3);
    for id in 1..=3 {
        assert_eq!(
            c.stored(id, "k"),
            None,
            "node {id}: collected, not resurrected"
        );
    }
    assert_eq!(c.total("default", |s| s.tombstones_collected), 3);
    assert!(c.stats_of(NodeId(3), "default").anti_entropy_keys_repaired >= 1);
    assert_eq!(c.get(2, "k"), Outcome::Read { value: None });
}

#[test]
fn a_restart_forgets_confirmations_and_the_tombstone_is_confirmed_again() {
    let mut c = Cluster::with_anti_entropy(3, collecting());
    c.set(1, "k", "v");
    delete(&mut c, 1, "k");
    c.tick(INTERVAL * 2);
    c.crash_restart(NodeId(2), collecting());
    c.tick(GRACE + INTERVAL * 5);
    for id in 1..=3 {
        assert_eq!(c.stored(id, "k"), None, "node {id}");
    }
}

/// The planted bug is real: collecting on a timer alone brings a deleted value back.
#[test]
fn planted_bug_collecting_unconfirmed_tombstones_resurrects_a_value() {
    let mut config = collecting();
    config.anti_entropy.bug_collect_unconfirmed_tombstones = true;
    // Forgotten 1 s after collection: the node then takes back what a peer hands it.
    config.anti_entropy.tombstone_memory = Duration::from_secs(1);
    let mut c = Cluster::with_anti_entropy(3, config);
    c.set(1, "k", "old");
    c.down.insert(NodeId(3));
    delete(&mut c, 1, "k");
    c.tick(GRACE * 3);
    assert!(c.total("default", |s| s.tombstones_collected) >= 2);
    c.down.clear();
    c.tick(GRACE * 3);
    assert_eq!(
        c.get(2, "k"),
        Outcome::Read {
            value: Some(b("old"))
        },
        "resurrected"
    );
}

/// The resident set size of this process, in bytes (benchmark only: reads /proc).
#[allow(clippy::disallowed_methods)]
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The benchmark measures its own speed; it is not protocol code.
#[allow(clippy::disallowed_methods)]
fn stopwatch() -> std::time::Instant {
    std::time::Instant::now()
}

/// What anti-entropy costs on an idle node holding a million keys: the rebuild after a start,
/// the memory of the index, and the CPU and bytes of one comparison of a range in sync (and of
/// one that differs by one key). Two replicas of a keyspace with N = 2 share one range holding
/// every key: the largest tree there can be. Run with
/// `cargo test --release -p triarch-leaderless bench_idle -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_idle_anti_entropy_with_a_million_keys() {
    const KEYS: u64 = 1_000_000;
    let bench = KeyspaceConfig {
        n: 2,
        r: 1,
        w: 1,
        ..KeyspaceConfig::leaderless("bench")
    };
    let config = with(|a| a.exchange_interval = Duration::from_millis(100));
    let mut c = Cluster::with_anti_entropy(2, config);
    let started = stopwatch();
    for id in 1..=2 {
        let disk = &mut c.nodes.get_mut(&NodeId(id)).unwrap().disk;
        for i in 0..KEYS {
            let record = Record {
                timestamp: HlcTimestamp {
                    wall_ms: 1_000 + i,
                    logical: 0,
                    node: NodeId(1),
                },
                value: Some(Bytes::from(format!("value-{i:012}"))),
            };
            let key = format!("bench:user:{i:010}");
            disk.put("data.bench", key.as_bytes(), &record.encode())
                .unwrap();
        }
        disk.sync().unwrap();
    }
    println!(
        "{KEYS} keys written to each of 2 disks in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // The rebuild after a start: one scan of the data table.
    let rss_before = rss_bytes();
    let started = stopwatch();
    for id in 1..=2 {
        let bench = bench.clone();
        c.step(NodeId(id), |e, env| {
            e.observe_keyspace(env, &bench);
            while e.anti_entropy.build_step(env.storage).unwrap() {}
        });
    }
    let built = started.elapsed().as_secs_f64() / 2.0;
    let rss_after = rss_bytes();
    println!(
        "index rebuilt from a scan in {built:.2} s per node ({:.0} ns per key); index memory \
         about {} bytes per key (RSS)",
        built * 1e9 / KEYS as f64,
        (rss_after.saturating_sub(rss_before)) / 2 / KEYS
    );
    let status = c.nodes[&NodeId(1)].engine.anti_entropy_status();
    assert_eq!(status.keyspaces["bench"].keys, KEYS);
    assert_eq!(status.keyspaces["bench"].ranges, 1);
    // Idle and in sync: every maintenance step (200 ms), each node compares the range with the
    // other (the interval is 100 ms here, to measure many comparisons).
    let before = |c: &Cluster| {
        (1..=2)
            .map(|id| c.stats_of(NodeId(id), "bench"))
            .fold((0, 0, 0), |(a, b, d), s| {
                (
                    a + s.anti_entropy_ranges_compared,
                    b + s.anti_entropy_ranges_in_sync,
                    d + s.anti_entropy_bytes_sent,
                )
            })
    };
    let (compared0, in_sync0, bytes0) = before(&c);
    c.trace.clear();
    let started = stopwatch();
    let ticks = 2_000;
    c.tick(Duration::from_millis(100) * ticks);
    let elapsed = started.elapsed().as_secs_f64();
    let (compared, in_sync, bytes) = before(&c);
    let exchanges = compared - compared0;
    assert_eq!(exchanges, in_sync - in_sync0, "all in sync");
    assert!(exchanges >= u64::from(ticks), "{exchanges} exchanges");
    println!(
        "in sync: {exchanges} exchanges in {elapsed:.3} s of CPU for both nodes, timers \
         included: {:.1} us per exchange; {:.1} bytes per exchange (both messages); {} messages",
        elapsed * 1e6 / exchanges as f64,
        (bytes - bytes0) as f64 / exchanges as f64,
        c.exchanged().count()
    );
    // One key differs: the exchange descends to its leaf and moves only it.
    let record = Record {
        timestamp: HlcTimestamp {
            wall_ms: 1 << 45,
            logical: 0,
            node: NodeId(2),
        },
        value: Some(b("changed")),
    };
    let r = c.nodes.get_mut(&NodeId(2)).unwrap();
    r.engine
        .apply_record(
            &mut r.disk,
            "bench",
            b"bench:user:0000000042",
            &record,
            true,
        )
        .unwrap();
    let (_, _, bytes0) = before(&c);
    c.trace.clear();
    let started = stopwatch();
    // Background work runs every 200 ms (`maintenance_interval`).
    c.tick(Duration::from_millis(400));
    let elapsed = started.elapsed().as_secs_f64();
    let (_, _, bytes) = before(&c);
    let listed: usize = c
        .exchanged()
        .map(|(_, _, _, m)| match m {
            Message::KeyHashes { keys, .. } => keys.len(),
            _ => 0,
        })
        .sum();
    println!(
        "one key differing among {KEYS}: repaired in {:.3} ms of CPU, {} bytes and {} messages \
         (both nodes' exchanges), {listed} keys listed",
        elapsed * 1e3,
        bytes - bytes0,
        c.exchanged().count()
    );
    assert_eq!(c.stats_of(NodeId(1), "bench").anti_entropy_keys_repaired, 1);
}

#[test]
fn planted_bug_trees_that_miss_overwrites_leave_replicas_diverged() {
    let run = |config: LeaderlessConfig| {
        let mut c = Cluster::with_anti_entropy(3, config);
        c.set(1, "k", "first");
        c.tick(INTERVAL);
        c.down.insert(NodeId(3));
        c.set(1, "k", "second");
        c.down.clear();
        c.tick(INTERVAL * 10);
        c.diverged(&ks()).len()
    };
    assert_eq!(run(ae_config()), 0);
    assert_eq!(run(with(|a| a.bug_tree_not_updated_on_overwrite = true)), 1);
}
