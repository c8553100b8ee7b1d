//! Multi-leader keyspaces on a hand-driven cluster of real `Node`s ([`super::cluster`]): six
//! nodes in three regions of two.

use super::cluster::{Cluster, b};
use super::*;
use triarch_core::causal::VersionVector;
use triarch_multileader::engine::KeyspaceInfo as MlInfo;

/// Nodes of each region (node `i` is in region `(i - 1) % 3 + 1`).
const R1: [u32; 2] = [1, 4];
const R2: [u32; 2] = [2, 5];
const R3: [u32; 2] = [3, 6];

fn cluster(name: &str, policy: MergePolicy) -> Cluster {
    cluster_tuned(name, policy, |_| {})
}

fn cluster_tuned(name: &str, policy: MergePolicy, tune: fn(&mut NodeConfig)) -> Cluster {
    let mut c = Cluster::with_regions(6, 3);
    c.tune = tune;
    for id in 1..=6 {
        c.crash(id);
        c.start(id);
    }
    let mut s = spec(name, Model::MultiLeader);
    s.settings.merge = Some(policy);
    s.settings.n = Some(2);
    assert_eq!(c.call(1, Request::CreateKeyspace(s)), Reply::Created);
    c
}

fn sadd(c: &mut Cluster, via: u32, key: &str, element: &str) -> Reply {
    c.call(
        via,
        Request::Apply {
            key: b(key),
            op: Operation::SetAdd(vec![b(element)]),
            r: None,
            w: None,
        },
    )
}

fn members_at(c: &mut Cluster, via: u32, key: &str) -> Vec<Bytes> {
    match c.call(
        via,
        Request::Read {
            key: b(key),
            r: None,
        },
    ) {
        Reply::State(View::Set(members)) => members,
        other => panic!("SMEMBERS via {via}: {other:?}"),
    }
}

/// Runs until every running node reads `expected` for the set `key` (30 virtual s at most).
fn await_members(c: &mut Cluster, key: &str, expected: &[&str]) {
    let expected: Vec<Bytes> = expected.iter().map(|e| b(e)).collect();
    let deadline = c.now_micros + 30_000_000;
    loop {
        let up: Vec<u32> = (1..=6)
            .filter(|i| c.nodes[*i as usize - 1].is_some())
            .collect();
        if up.iter().all(|&i| members_at(c, i, key) == expected) {
            return;
        }
        assert!(c.now_micros < deadline, "regions never converged on {key}");
        c.run(20);
    }
}

/// Runs until what every node's GET of `key` answers satisfies `done` (30 virtual s at most).
fn await_gets(c: &mut Cluster, key: &str, done: impl Fn(&[Reply]) -> bool) {
    let deadline = c.now_micros + 30_000_000;
    loop {
        let values: Vec<Reply> = (1..=6)
            .map(|i| {
                let get = Request::Get {
                    key: b(key),
                    r: None,
                };
                c.call(i, get)
            })
            .collect();
        if done(&values) {
            return;
        }
        assert!(c.now_micros < deadline, "never converged: {values:?}");
        c.run(20);
    }
}

/// The keyspace's state on node `id`.
fn info(c: &Cluster, id: u32, keyspace: &str) -> MlInfo {
    let node = c.nodes[id as usize - 1].as_ref().expect("running");
    node.multileader()
        .info(node.storage(), keyspace, 0)
        .expect("a multi-leader keyspace")
}

/// Cuts the three regions off from each other (links inside each region stay up).
fn split_regions(c: &mut Cluster) {
    c.partition(&R1);
    c.partition(&R2);
}

#[test]
fn a_write_is_acknowledged_in_its_region_and_reaches_the_others() {
    let mut c = cluster("cart", MergePolicy::Set);
    assert_eq!(
        sadd(&mut c, 1, "cart:alice", "book"),
        Reply::Applied(OperationResult::Changed(1))
    );
    // The writer's region reads it at once: it was acknowledged there.
    assert_eq!(members_at(&mut c, 4, "cart:alice"), [b("book")]);
    await_members(&mut c, "cart:alice", &["book"]);
    // Every other region applied it once, and the log is trimmed once every region holds it.
    for id in 1..=6 {
        let i = info(&c, id, "cart");
        assert_eq!(i.counters.duplicates, 0);
    }
}

#[test]
fn regions_cut_off_from_each_other_keep_accepting_writes_and_converge() {
    let mut c = cluster("cart", MergePolicy::Set);
    // Let every region elect its leader before the split.
    sadd(&mut c, 1, "cart:warmup", "x");
    await_members(&mut c, "cart:warmup", &["x"]);
    split_regions(&mut c);
    for (via, item) in [(1, "apple"), (2, "bread"), (3, "cheese")] {
        assert_eq!(
            sadd(&mut c, via, "cart:bob", item),
            Reply::Applied(OperationResult::Changed(1)),
            "region of node {via} accepts writes while cut off"
        );
    }
    // Each region sees its own write only.
    assert_eq!(members_at(&mut c, 5, "cart:bob"), [b("bread")]);
    c.heal();
    await_members(&mut c, "cart:bob", &["apple", "bread", "cheese"]);
    let conflicts: u64 = [1, 2, 3]
        .iter()
        .map(|&id| info(&c, id, "cart").counters.conflicts)
        .sum();
    assert!(
        conflicts >= 3,
        "concurrent adds are conflicts, merged: {conflicts}"
    );
}

#[test]
fn a_concurrent_re_add_wins_over_a_remove_that_did_not_see_it() {
    let mut c = cluster("cart", MergePolicy::Set);
    sadd(&mut c, 1, "cart:k", "book");
    await_members(&mut c, "cart:k", &["book"]);
    split_regions(&mut c);
    let removed = c.call(
        1,
        Request::Apply {
            key: b("cart:k"),
            op: Operation::SetRemove(vec![b("book")]),
            r: None,
            w: None,
        },
    );
    assert_eq!(removed, Reply::Applied(OperationResult::Changed(1)));
    assert_eq!(
        sadd(&mut c, 2, "cart:k", "book"),
        Reply::Applied(OperationResult::Changed(0)),
        "already there in region 2"
    );
    c.heal();
    await_members(&mut c, "cart:k", &["book"]);
}

#[test]
fn an_lww_conflict_converges_everywhere_and_the_loser_is_counted() {
    let mut c = cluster("prefs", MergePolicy::Lww);
    let set = |c: &mut Cluster, via: u32, value: &str| {
        c.call(
            via,
            Request::Set {
                key: b("prefs:theme"),
                value: b(value),
                w: None,
            },
        )
    };
    assert_eq!(set(&mut c, 1, "light"), Reply::Written { existed: false });
    split_regions(&mut c);
    assert_eq!(set(&mut c, 2, "dark"), Reply::Written { existed: true });
    c.run(5);
    assert_eq!(set(&mut c, 3, "blue"), Reply::Written { existed: true });
    c.heal();
    await_gets(&mut c, "prefs:theme", |values| {
        values.iter().all(|v| *v == values[0]) && values[0] != Reply::Value(Some(b("light")))
    });
    let (conflicts, discarded): (u64, u64) = [1, 2, 3].iter().fold((0, 0), |(a, d), &id| {
        let k = info(&c, id, "prefs").counters;
        (a + k.conflicts, d + k.lww_discarded)
    });
    assert!(
        conflicts >= 2 && discarded >= 2,
        "{conflicts} conflicts, {discarded} discarded"
    );
}

#[test]
fn counters_are_exact_across_regions_and_partitions() {
    let mut c = cluster("hits", MergePolicy::Counter);
    let incr = |c: &mut Cluster, via: u32, by: i64| {
        c.call(
            via,
            Request::Apply {
                key: b("hits:page"),
                op: Operation::CounterAdd(by),
                r: None,
                w: None,
            },
        )
    };
    incr(&mut c, 1, 1);
    split_regions(&mut c);
    for (via, by) in [(1, 2), (2, 3), (3, 4), (5, -1), (6, 10)] {
        assert!(matches!(incr(&mut c, via, by), Reply::Applied(_)));
    }
    c.heal();
    await_gets(&mut c, "hits:page", |values| {
        values.iter().all(|v| *v == Reply::Value(Some(b("19"))))
    });
}

#[test]
fn a_region_that_was_down_catches_up_on_restart_and_the_logs_are_trimmed() {
    let mut c = cluster("cart", MergePolicy::Set);
    sadd(&mut c, 1, "cart:warmup", "x");
    await_members(&mut c, "cart:warmup", &["x"]);
    for id in R3 {
        c.crash(id);
    }
    for (via, item) in [(1, "a"), (2, "b"), (4, "c"), (5, "d")] {
        assert!(matches!(
            sadd(&mut c, via, "cart:z", item),
            Reply::Applied(_)
        ));
    }
    c.run(50);
    for id in R3 {
        c.start(id);
    }
    await_members(&mut c, "cart:z", &["a", "b", "c", "d"]);
    // Once every region holds everything, each region's leader trims its whole log.
    let deadline = c.now_micros + 30_000_000;
    loop {
        let trimmed = (1..=6).all(|id| {
            let i = info(&c, id, "cart");
            i.counters.trimmed == i.counters.last && i.counters.duplicates == 0
        });
        if trimmed {
            break;
        }
        assert!(c.now_micros < deadline, "logs never trimmed");
        c.run(20);
    }
}

#[test]
fn a_region_away_longer_than_the_log_keeps_gets_a_state_transfer() {
    let mut c = cluster_tuned("cart", MergePolicy::Set, |config| {
        config.multileader.log_changes_max = 4;
        config.multileader.trim_batch = 2;
        config.multileader.transfer_page_bytes = 64;
    });
    sadd(&mut c, 1, "cart:warmup", "x");
    await_members(&mut c, "cart:warmup", &["x"]);
    for id in R3 {
        c.crash(id);
    }
    let mut expected = vec!["x".to_string()];
    for i in 0..30 {
        let via = [1, 2, 4, 5][i % 4];
        let item = format!("item{i:02}");
        assert!(matches!(
            sadd(&mut c, via, &format!("cart:k{}", i % 7), &item),
            Reply::Applied(_)
        ));
        expected.push(item);
        c.run(2);
    }
    c.run(50);
    // The logs stay bounded while region 3 is away.
    for id in [1, 2, 4, 5] {
        let k = info(&c, id, "cart").counters;
        assert!(k.last - k.trimmed <= 4 + 2, "node {id}: {k:?}");
    }
    for id in R3 {
        c.start(id);
    }
    for k in 0..7 {
        let key = format!("cart:k{k}");
        let mut items: Vec<&str> = (0..30)
            .filter(|i| i % 7 == k)
            .map(|i| expected[i + 1].as_str())
            .collect();
        items.sort();
        await_members(&mut c, &key, &items);
    }
    let absorbed: u64 = R3
        .iter()
        .map(|&id| info(&c, id, "cart").counters.absorbed)
        .sum();
    assert!(absorbed > 0, "region 3 caught up by a state transfer");
    for id in 1..=6 {
        assert_eq!(info(&c, id, "cart").counters.duplicates, 0);
    }
}

/// The siblings of `key` as node `via` reads them.
fn siblings_at(c: &mut Cluster, via: u32, key: &str) -> SiblingsView {
    match c.call(
        via,
        Request::Read {
            key: b(key),
            r: None,
        },
    ) {
        Reply::State(View::Siblings(view)) => view,
        other => panic!("GETV via {via}: {other:?}"),
    }
}

fn setv(c: &mut Cluster, via: u32, key: &str, context: VersionVector, value: &str) -> Reply {
    c.call(
        via,
        Request::Apply {
            key: b(key),
            op: Operation::SiblingsWrite {
                context,
                value: Some(b(value)),
            },
            r: None,
            w: None,
        },
    )
}

#[test]
fn concurrent_writes_in_two_regions_become_siblings_and_a_write_with_their_context_resolves_them() {
    let mut c = cluster("docs", MergePolicy::Siblings);
    setv(&mut c, 1, "docs:d", VersionVector::new(), "warmup");
    c.run(50);
    split_regions(&mut c);
    let base = siblings_at(&mut c, 1, "docs:d").context;
    assert!(matches!(
        setv(&mut c, 1, "docs:d", base.clone(), "from-r1"),
        Reply::Applied(_)
    ));
    assert!(matches!(
        setv(&mut c, 2, "docs:d", base, "from-r2"),
        Reply::Applied(_)
    ));
    c.heal();
    let deadline = c.now_micros + 30_000_000;
    let both = loop {
        let views: Vec<SiblingsView> = (1..=6).map(|i| siblings_at(&mut c, i, "docs:d")).collect();
        if views.iter().all(|v| *v == views[0] && v.values.len() == 2) {
            break views[0].clone();
        }
        assert!(
            c.now_micros < deadline,
            "siblings never converged: {views:?}"
        );
        c.run(20);
    };
    let mut values = both.values.clone();
    values.sort();
    assert_eq!(values, [b("from-r1"), b("from-r2")]);
    // The context names regions; a write with it supersedes both, in every region.
    assert!(matches!(
        setv(&mut c, 3, "docs:d", both.context, "merged"),
        Reply::Applied(_)
    ));
    let deadline = c.now_micros + 30_000_000;
    while !(1..=6).all(|i| siblings_at(&mut c, i, "docs:d").values == [b("merged")]) {
        assert!(
            c.now_micros < deadline,
            "the resolving write never reached every region"
        );
        c.run(20);
    }
    // A context naming a node id rather than a region is refused.
    let bogus: VersionVector = [(triarch_core::causal::ActorId(1), 1)]
        .into_iter()
        .collect();
    assert!(matches!(
        setv(&mut c, 1, "docs:d", bogus, "x"),
        Reply::Error(RequestError::InvalidContext(_))
    ));
}
