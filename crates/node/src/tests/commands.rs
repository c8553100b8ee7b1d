//! Every request of every merge policy on a hand-driven three-node cluster of real `Node`s
//! ([`Cluster`]). Bad input is refused with a clear error and changes nothing.

use super::cluster::{Cluster, b};
use super::*;
use triarch_core::causal::{ActorId, VersionVector};

/// A three-node cluster with a leaderless keyspace of each merge policy but `lww`.
fn cluster() -> Cluster {
    cluster_of(3)
}

fn cluster_of(size: u32) -> Cluster {
    let mut c = Cluster::new(size);
    for (name, policy) in [
        ("hits", MergePolicy::Counter),
        ("cart", MergePolicy::Set),
        ("prefs", MergePolicy::Map),
        ("docs", MergePolicy::Siblings),
    ] {
        let mut s = spec(name, Model::Leaderless);
        s.settings.merge = Some(policy);
        assert_eq!(c.call(1, Request::CreateKeyspace(s)), Reply::Created);
    }
    c
}

impl Cluster {
    fn apply(&mut self, via: u32, key: &str, op: Operation) -> Reply {
        let key = b(key);
        self.call(
            via,
            Request::Apply {
                key,
                op,
                r: None,
                w: None,
            },
        )
    }

    fn read(&mut self, via: u32, key: &str) -> Reply {
        self.call(
            via,
            Request::Read {
                key: b(key),
                r: None,
            },
        )
    }

    fn stats(&self, id: u32, keyspace: &str) -> KeyspaceStats {
        self.nodes[id as usize - 1]
            .as_ref()
            .expect("running")
            .leaderless_stats()
            .get(keyspace)
            .cloned()
            .unwrap_or_default()
    }
}

fn changed(n: u64) -> Reply {
    Reply::Applied(OperationResult::Changed(n))
}

fn members_of(elements: &[&str]) -> Reply {
    Reply::State(View::Set(elements.iter().map(|e| b(e)).collect()))
}

fn wrong(keyspace: &str, policy: MergePolicy, needs: &'static [MergePolicy]) -> Reply {
    Reply::Error(RequestError::WrongPolicy {
        keyspace: keyspace.into(),
        policy,
        needs,
    })
}

#[test]
fn counter_incr_decr_incrby_decrby_and_get() {
    let mut c = cluster();
    assert_eq!(c.get(1, "hits:page"), Reply::Value(None), "never written");
    assert_eq!(
        c.read(1, "hits:page"),
        Reply::State(View::Counter(0)),
        "a generic read of a counter never written is 0"
    );
    let mut expected = 0i64;
    for (via, amount) in [(1, 1), (2, -1), (3, 10), (1, -3), (2, 7)] {
        expected += amount;
        assert_eq!(
            c.apply(via, "hits:page", Operation::CounterAdd(amount)),
            Reply::Applied(OperationResult::Counter(expected)),
            "each coordinator's replica saw every earlier increment (W + W > N)"
        );
    }
    for via in 1..=3 {
        assert_eq!(c.get(via, "hits:page"), Reply::Value(Some(b("14"))));
    }
    assert_eq!(c.read(2, "hits:page"), Reply::State(View::Counter(14)));
    // Overflow is refused and changes nothing.
    assert_eq!(
        c.apply(1, "hits:page", Operation::CounterAdd(i64::MAX)),
        Reply::Error(RequestError::CounterOverflow)
    );
    assert_eq!(c.get(3, "hits:page"), Reply::Value(Some(b("14"))));
}

#[test]
fn set_sadd_srem_smembers_and_del() {
    let mut c = cluster();
    let add = |e: &[&str]| Operation::SetAdd(e.iter().map(|x| b(x)).collect());
    let rem = |e: &[&str]| Operation::SetRemove(e.iter().map(|x| b(x)).collect());
    assert_eq!(c.read(1, "cart:alice"), members_of(&[]));
    assert_eq!(
        c.apply(1, "cart:alice", add(&["book", "pen", "book"])),
        changed(2)
    );
    assert_eq!(c.apply(2, "cart:alice", add(&["pen", "ink"])), changed(1));
    assert_eq!(c.read(3, "cart:alice"), members_of(&["book", "ink", "pen"]));
    assert_eq!(c.apply(3, "cart:alice", rem(&["pen", "nope"])), changed(1));
    assert_eq!(c.read(1, "cart:alice"), members_of(&["book", "ink"]));
    assert_eq!(
        c.call(
            2,
            Request::Delete {
                key: b("cart:alice"),
                w: None
            }
        ),
        Reply::Written { existed: true }
    );
    assert_eq!(c.read(1, "cart:alice"), members_of(&[]));
    assert_eq!(
        c.call(
            2,
            Request::Delete {
                key: b("cart:alice"),
                w: None
            }
        ),
        Reply::Written { existed: false }
    );
}

#[test]
fn map_hset_hdel_hgetall_and_del() {
    let mut c = cluster();
    let hset =
        |p: &[(&str, &str)]| Operation::MapSet(p.iter().map(|(f, v)| (b(f), b(v))).collect());
    assert_eq!(
        c.apply(1, "prefs:u", hset(&[("theme", "dark"), ("lang", "en")])),
        changed(2)
    );
    assert_eq!(
        c.apply(2, "prefs:u", hset(&[("theme", "light")])),
        changed(0)
    );
    assert_eq!(
        c.apply(3, "prefs:u", Operation::MapDelete(vec![b("lang"), b("x")])),
        changed(1)
    );
    assert_eq!(
        c.read(1, "prefs:u"),
        Reply::State(View::Map(vec![(b("theme"), b("light"))]))
    );
    assert_eq!(
        c.call(
            3,
            Request::Delete {
                key: b("prefs:u"),
                w: None
            }
        ),
        Reply::Written { existed: true }
    );
    assert_eq!(c.read(2, "prefs:u"), Reply::State(View::Map(vec![])));
}

#[test]
fn siblings_getv_setv_get_set_and_del() {
    let mut c = cluster();
    let setv = |context: VersionVector, v: &str| Operation::SiblingsWrite {
        context,
        value: Some(b(v)),
    };
    // Two blind writes (no context): two siblings, and GET says which command to use.
    assert!(matches!(
        c.apply(1, "docs:d", setv(VersionVector::new(), "alice")),
        Reply::Applied(OperationResult::Siblings(_))
    ));
    c.apply(2, "docs:d", setv(VersionVector::new(), "bob"));
    let Reply::State(View::Siblings(view)) = c.read(3, "docs:d") else {
        panic!()
    };
    assert_eq!(view.values, vec![b("alice"), b("bob")]);
    let Reply::Error(e) = c.get(1, "docs:d") else {
        panic!()
    };
    assert_eq!(e, RequestError::Siblings { count: 2 });
    assert!(e.to_string().contains("TRIARCH.GETV"), "{e}");
    // The context travels as an opaque token and back.
    let token = CausalToken::encode(&view.context);
    let context = CausalToken::decode(token.as_bytes()).unwrap();
    let Reply::Applied(OperationResult::Siblings(after)) =
        c.apply(3, "docs:d", setv(context, "merged"))
    else {
        panic!()
    };
    assert_eq!(after.values, vec![b("merged")]);
    assert_eq!(c.get(2, "docs:d"), Reply::Value(Some(b("merged"))));
    // SET supersedes what the coordinator's read observed; DEL likewise.
    assert_eq!(
        c.call(
            1,
            Request::Set {
                key: b("docs:d"),
                value: b("plain"),
                w: None
            }
        ),
        Reply::Written { existed: true }
    );
    assert_eq!(c.get(3, "docs:d"), Reply::Value(Some(b("plain"))));
    assert_eq!(
        c.call(
            2,
            Request::Delete {
                key: b("docs:d"),
                w: None
            }
        ),
        Reply::Written { existed: true }
    );
    assert_eq!(c.get(1, "docs:d"), Reply::Value(None));
    let created: u64 = (1..=3).map(|i| c.stats(i, "docs").siblings_created).sum();
    let resolved: u64 = (1..=3).map(|i| c.stats(i, "docs").siblings_resolved).sum();
    assert!(
        created >= 3 && resolved >= 3,
        "created {created}, resolved {resolved}"
    );
}

#[test]
fn a_command_the_policy_does_not_support_is_refused_and_changes_nothing() {
    use MergePolicy::*;
    let mut c = cluster();
    c.apply(1, "cart:k", Operation::SetAdd(vec![b("x")]));
    assert_eq!(
        c.apply(1, "cart:k", Operation::CounterAdd(1)),
        wrong("cart", Set, &[Counter])
    );
    let Reply::Error(e) = c.apply(1, "cart:k", Operation::CounterAdd(1)) else {
        panic!()
    };
    assert_eq!(
        e.message_for("INCR"),
        "keyspace 'cart' uses merge policy set; INCR needs counter"
    );
    assert_eq!(
        c.get(2, "cart:k"),
        wrong("cart", Set, &[Lww, Siblings, Counter])
    );
    assert_eq!(
        c.call(
            2,
            Request::Set {
                key: b("cart:k"),
                value: b("v"),
                w: None
            }
        ),
        wrong("cart", Set, &[Lww, Siblings])
    );
    assert_eq!(
        c.call(
            2,
            Request::Delete {
                key: b("hits:k"),
                w: None
            }
        ),
        wrong("hits", Counter, &[Lww, Siblings, Set, Map])
    );
    assert_eq!(
        c.read(3, "plain"),
        wrong("default", Lww, &[Siblings, Counter, Set, Map])
    );
    assert_eq!(
        c.apply(3, "plain", Operation::SetAdd(vec![b("x")])),
        wrong("default", Lww, &[Set])
    );
    assert_eq!(c.read(3, "cart:k"), members_of(&["x"]), "unchanged");
    assert_eq!(c.get(3, "plain"), Reply::Value(None), "nothing written");
}

#[test]
fn bad_contexts_and_oversized_elements_are_refused() {
    let mut c = cluster();
    let foreign: VersionVector = [(ActorId(9), 1)].into_iter().collect();
    assert_eq!(
        c.apply(
            1,
            "docs:d",
            Operation::SiblingsWrite {
                context: foreign,
                value: Some(b("v"))
            }
        ),
        Reply::Error(RequestError::InvalidContext(ContextError::UnknownActor(
            ActorId(9)
        )))
    );
    assert_eq!(
        CausalToken::decode(b"not base64!"),
        Err(ContextError::Encoding)
    );
    let big = Bytes::from(vec![b'e'; KEY_BYTES_MAX + 1]);
    assert!(matches!(
        c.apply(1, "cart:k", Operation::SetAdd(vec![big.clone()])),
        Reply::Error(RequestError::KeyTooLarge { .. })
    ));
    assert!(matches!(
        c.apply(1, "prefs:k", Operation::MapSet(vec![(big, b("v"))])),
        Reply::Error(RequestError::KeyTooLarge { .. })
    ));
    assert_eq!(
        c.read(1, "docs:d"),
        Reply::State(View::Siblings(SiblingsView {
            context: VersionVector::new(),
            values: vec![],
        }))
    );
}

#[test]
fn consistency_levels_per_request() {
    let mut c = cluster();
    c.down.insert(NodeId(3));
    let incr = |w: Option<Consistency>| Request::Apply {
        key: b("hits:k"),
        op: Operation::CounterAdd(1),
        r: None,
        w,
    };
    assert_eq!(
        c.call(1, incr(Some(Consistency::All))),
        Reply::Error(RequestError::QuorumFailed { acks: 2, needed: 3 })
    );
    assert_eq!(
        c.call(1, incr(Some(Consistency::Quorum))),
        Reply::Applied(OperationResult::Counter(2)),
        "the ALL attempt reached two replicas: it is `info`, not `fail`"
    );
    assert_eq!(
        c.call(
            1,
            Request::Get {
                key: b("hits:k"),
                r: Some(Consistency::One)
            }
        ),
        Reply::Value(Some(b("2")))
    );
    assert_eq!(
        c.call(
            1,
            Request::Get {
                key: b("hits:k"),
                r: Some(Consistency::All)
            }
        ),
        Reply::Error(RequestError::QuorumFailed { acks: 2, needed: 3 })
    );
    assert_eq!(
        c.call(1, incr(Some(Consistency::Count(4)))),
        Reply::Error(RequestError::InvalidQuorum {
            setting: "W",
            value: 4,
            n: 3
        })
    );
    // An LWW key takes levels too.
    assert_eq!(
        c.call(
            2,
            Request::Set {
                key: b("k"),
                value: b("v"),
                w: Some(Consistency::One)
            }
        ),
        Reply::Written { existed: false }
    );
}

#[test]
fn a_node_outside_the_preference_list_forwards_to_a_replica() {
    let mut c = cluster_of(5);
    // Default N=3 of 5 nodes: find a key some node does not replicate.
    let hits = c.nodes[0]
        .as_ref()
        .unwrap()
        .catalog()
        .get("hits")
        .unwrap()
        .clone();
    let ring = triarch_leaderless::ring::Ring::new(
        &(1..=5).map(NodeId).collect::<Vec<_>>(),
        triarch_leaderless::ring::VNODES_PER_NODE_DEFAULT,
    );
    let replicas = ring.preference_list(
        triarch_leaderless::ring::Ring::position(&hits.name, b"hits:k"),
        3,
    );
    let outsider = (1..=5).find(|i| !replicas.contains(&NodeId(*i))).unwrap();
    assert_eq!(
        c.apply(outsider, "hits:k", Operation::CounterAdd(4)),
        Reply::Applied(OperationResult::Counter(4))
    );
    assert_eq!(c.stats(outsider, "hits").forwarded, 1);
    assert_eq!(c.get(outsider, "hits:k"), Reply::Value(Some(b("4"))));
    // With every replica down, the forward times out: unknown outcome, not a definite failure.
    c.down.extend(replicas.iter().copied());
    let Reply::Error(e) = c.apply(outsider, "hits:k", Operation::CounterAdd(1)) else {
        panic!()
    };
    assert!(
        matches!(e, RequestError::CoordinatorUnavailable { .. }),
        "{e}"
    );
    assert!(!e.is_definite());
}
