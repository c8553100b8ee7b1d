use super::*;
use triarch_core::limits::KEY_BYTES_MAX;
use triarch_core::{HlcTimestamp, KeyspaceSettings};
use triarch_storage::SimDisk;

fn now() -> Now {
    Now::new(Instant(0), 1_000)
}

fn members(n: u32) -> Vec<Member> {
    (1..=n)
        .map(|i| Member {
            id: NodeId(i),
            region: "r1".into(),
        })
        .collect()
}

fn node(n: u32) -> Node<SimDisk> {
    let config = NodeConfig::new(NodeId(1), members(n));
    Node::new(config, SimDisk::new(), DetRng::seed_from_u64(1), now()).unwrap()
}

/// Serves `req` on a node with no peers reachable, firing its timers (syncing its disk after
/// each step) until it answers: a single-node cluster elects itself in the metadata group.
fn call(node: &mut Node<SimDisk>, req: Request) -> Reply {
    let mut t = now();
    node.handle_request(t, RequestId(9), req);
    for _ in 0..1_000 {
        let point = node.sync_point();
        node.storage_mut().sync().unwrap();
        node.synced(t, point);
        while let Some(o) = node.poll_output() {
            if let Output::Reply {
                request: RequestId(9),
                reply,
                ..
            } = o
            {
                return reply;
            }
        }
        let next = node.poll_timeout().expect("a node always has a timer");
        t = Now::new(next, 1_000 + next.as_micros() / 1_000);
        node.handle_timeout(t);
    }
    panic!("request never answered")
}

fn spec(name: &str, model: Model) -> KeyspaceSpec {
    KeyspaceSpec {
        name: name.into(),
        model,
        settings: KeyspaceSettings::default(),
    }
}

#[test]
fn keys_route_to_their_prefix_keyspace_or_default() {
    let mut n = node(1);
    assert_eq!(
        call(
            &mut n,
            Request::CreateKeyspace(spec("prefs", Model::Leaderless))
        ),
        Reply::Created
    );
    assert_eq!(n.route(b"prefs:alice").name, "prefs");
    assert_eq!(n.route(b"nope:alice").name, "default");
    assert_eq!(n.route(b"plain").name, "default");
    assert_eq!(n.route(b"\xff:x").name, "default");
}

#[test]
fn a_single_node_cluster_serves_reads_and_writes_with_a_shrunk_default() {
    let mut n = node(1);
    let key = Bytes::from_static(b"k");
    let set = Request::Set {
        key: key.clone(),
        value: Bytes::from_static(b"v"),
        w: None,
    };
    assert_eq!(call(&mut n, set), Reply::Written { existed: false });
    assert_eq!(
        call(&mut n, Request::Get { key, r: None }),
        Reply::Value(Some(Bytes::from_static(b"v")))
    );
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let mut c = cluster::Cluster::new(3);
    let big = Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]);
    let r = c.call(
        1,
        Request::Set {
            key: big,
            value: Bytes::new(),
            w: None,
        },
    );
    assert!(
        matches!(r, Reply::Error(RequestError::KeyTooLarge { .. })),
        "{r:?}"
    );
    let r = c.call(
        1,
        Request::Get {
            key: Bytes::from_static(b"k"),
            r: Some(Consistency::Count(4)),
        },
    );
    assert_eq!(
        r,
        Reply::Error(RequestError::InvalidQuorum {
            setting: "R",
            value: 4,
            n: 3
        })
    );
    let mut s = spec("x", Model::Leaderless);
    s.settings.w = Some(5);
    let r = c.call(1, Request::CreateKeyspace(s));
    let Reply::Error(e) = r else { panic!("{r:?}") };
    assert_eq!(e.to_string(), "invalid W: W=5 exceeds N=3");
    let mut s = spec("cart", Model::MultiLeader);
    s.settings.r = Some(1);
    let r = c.call(1, Request::CreateKeyspace(s));
    let Reply::Error(e) = r else { panic!("{r:?}") };
    assert_eq!(
        e.to_string(),
        "invalid R: read and write quorums apply only to leaderless keyspaces"
    );
    c.call(1, Request::CreateKeyspace(spec("dup", Model::Leaderless)));
    let r = c.call(1, Request::CreateKeyspace(spec("dup", Model::Leaderless)));
    assert_eq!(r, Reply::Error(RequestError::KeyspaceExists("dup".into())));
    let Reply::Keyspaces(all) = c.call(1, Request::ListKeyspaces) else {
        panic!()
    };
    let names: Vec<&str> = all.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        ["default", "dup"],
        "failed creates left nothing behind"
    );
}

#[test]
fn every_merge_policy_is_available_to_leaderless_and_multi_leader_keyspaces() {
    let mut c = cluster::Cluster::new(3);
    for model in [Model::Leaderless, Model::MultiLeader] {
        for policy in MergePolicy::ALL {
            let name = format!("ks-{}-{policy}", model.as_str());
            let mut s = spec(&name, model);
            s.settings.merge = Some(policy);
            assert_eq!(c.call(1, Request::CreateKeyspace(s)), Reply::Created);
            let created = c.nodes[0].as_ref().unwrap().catalog().get(&name).unwrap();
            assert_eq!((created.model, created.merge), (model, policy));
        }
    }
    let mut s = spec("balance", Model::PrimaryBackup);
    s.settings.merge = Some(MergePolicy::Set);
    assert!(matches!(
        c.call(1, Request::CreateKeyspace(s)),
        Reply::Error(RequestError::InvalidConfig(_))
    ));
}

#[test]
fn created_keyspaces_reach_every_node_and_survive_a_restart() {
    let mut c = cluster::Cluster::new(5);
    // Through a node outside the metadata group too: it forwards the proposal.
    let voters = meta::meta_group(&(1..=5).map(NodeId).collect::<Vec<_>>()).voters;
    assert_eq!(voters.len(), 5);
    assert_eq!(
        c.call(4, Request::CreateKeyspace(spec("cart", Model::Leaderless))),
        Reply::Created
    );
    // The proposer knows it as soon as it replies; everyone else right after.
    assert!(c.nodes[3].as_ref().unwrap().catalog().get("cart").is_some());
    c.run(3);
    for i in 0..5 {
        let entry = c.nodes[i]
            .as_ref()
            .unwrap()
            .catalog()
            .entries()
            .find(|e| e.config.name == "cart")
            .cloned();
        assert!(
            entry.is_some_and(|e| e.version > 0),
            "node {} lacks the keyspace",
            i + 1
        );
    }
    c.crash(2);
    c.start(2);
    assert!(c.nodes[1].as_ref().unwrap().catalog().get("cart").is_some());
}

#[test]
fn concurrent_creates_of_one_name_through_different_nodes_cannot_both_succeed() {
    let mut c = cluster::Cluster::new(3);
    c.call(
        1,
        Request::CreateKeyspace(spec("warmup", Model::Leaderless)),
    );
    let mut counter = spec("shared", Model::Leaderless);
    counter.settings.merge = Some(MergePolicy::Counter);
    let mut set = spec("shared", Model::Leaderless);
    set.settings.merge = Some(MergePolicy::Set);
    // Both are in flight before either is decided.
    let a = c.submit(2, Request::CreateKeyspace(counter));
    let b = c.submit(3, Request::CreateKeyspace(set));
    let (mut ra, mut rb) = (None, None);
    while ra.is_none() || rb.is_none() {
        c.step();
        ra = ra.or_else(|| c.reply_to(a));
        rb = rb.or_else(|| c.reply_to(b));
    }
    let exists = Reply::Error(RequestError::KeyspaceExists("shared".into()));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let winner = match (&ra, &rb) {
        (Reply::Created, r) if *r == exists => MergePolicy::Counter,
        (r, Reply::Created) if *r == exists => MergePolicy::Set,
        other => panic!("exactly one create must succeed: {other:?}"),
    };
    c.run(3);
    for i in 0..3 {
        let ks = c.nodes[i]
            .as_ref()
            .unwrap()
            .catalog()
            .get("shared")
            .cloned()
            .unwrap();
        assert_eq!(ks.merge, winner, "node {} disagrees", i + 1);
    }
}

#[test]
fn a_create_without_a_majority_of_the_metadata_group_fails_with_tryagain() {
    let mut c = cluster::Cluster::new(3);
    c.call(
        1,
        Request::CreateKeyspace(spec("warmup", Model::Leaderless)),
    );
    c.partition(&[1]);
    let r = c.call(
        1,
        Request::CreateKeyspace(spec("lonely", Model::Leaderless)),
    );
    assert_eq!(r, Reply::Error(RequestError::MetadataUnavailable));
    assert_eq!(RequestError::MetadataUnavailable.code(), "TRYAGAIN");
    // Data requests never need the group.
    assert!(matches!(
        c.call(
            1,
            Request::Get {
                key: cluster::b("k"),
                r: Some(Consistency::Count(1))
            }
        ),
        Reply::Value(None)
    ));
    c.heal();
    assert_eq!(
        c.call(2, Request::CreateKeyspace(spec("later", Model::Leaderless))),
        Reply::Created
    );
}

#[test]
fn wire_frames_round_trip_and_garbage_is_an_error() {
    let msgs = vec![Message::Catalog(CatalogMessage::Entries(vec![]))];
    let mut buf = Vec::new();
    encode_messages(&msgs, &mut buf);
    assert_eq!(decode_messages(&buf).unwrap(), msgs);
    assert!(matches!(decode_messages(&[]), Err(WireError::Empty)));
    assert!(matches!(
        decode_messages(&[99, 1]),
        Err(WireError::Version(99))
    ));
    assert!(decode_messages(&[WIRE_VERSION, 0xff, 0xff, 0xff]).is_err());
}

mod frames {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_frame_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            fuzz_decode_frame(&bytes);
            let mut versioned = vec![WIRE_VERSION];
            versioned.extend_from_slice(&bytes);
            fuzz_decode_frame(&versioned);
        }
    }

    #[test]
    fn real_frames_survive_the_fuzz_body() {
        let mut buf = Vec::new();
        let entry = catalog::CatalogEntry::new(KeyspaceConfig::leaderless("prefs"), 0);
        encode_messages(
            &[Message::Catalog(CatalogMessage::Entries(vec![entry]))],
            &mut buf,
        );
        fuzz_decode_frame(&buf);
        for cut in 0..buf.len() {
            fuzz_decode_frame(&buf[..cut]);
        }
    }

    #[test]
    fn frames_of_the_merge_policies_round_trip_and_survive_the_fuzz_body() {
        use triarch_leaderless::message::{Message as L, OpId};
        use triarch_leaderless::state::{State, Update};
        use triarch_leaderless::{Outcome, state};
        let mut set = triarch_core::crdt::AwSet::new();
        let delta = set.add(
            triarch_core::causal::ActorId(1),
            Bytes::from_static(b"book"),
        );
        let cart = KeyspaceConfig {
            merge: MergePolicy::Set,
            ..KeyspaceConfig::leaderless("cart")
        };
        let messages = vec![
            Message::Leaderless(L::Merge {
                op: OpId(7),
                keyspace: "cart".into(),
                key: Bytes::from_static(b"cart:alice"),
                update: Update::Set(vec![delta]),
            }),
            Message::Leaderless(L::StateReply {
                op: OpId(8),
                state: Some(State::Set(set)),
            }),
            Message::Leaderless(L::Forward {
                op: OpId(9),
                sent: HlcTimestamp::MIN,
                keyspace: Box::new(cart),
                key: Bytes::from_static(b"cart:alice"),
                operation: Operation::SetRemove(vec![Bytes::from_static(b"book")]),
                r: 2,
                w: 2,
            }),
            Message::Leaderless(L::ForwardReply {
                op: OpId(9),
                outcome: Outcome::Applied(state::OperationResult::Changed(1)),
                clock: HlcTimestamp::MIN,
            }),
        ];
        let mut buf = Vec::new();
        encode_messages(&messages, &mut buf);
        assert_eq!(decode_messages(&buf).unwrap(), messages);
        for cut in 0..buf.len() {
            fuzz_decode_frame(&buf[..cut]);
        }
        let mut flipped = buf.clone();
        for i in 1..flipped.len() {
            flipped[i] ^= 0x5a;
            fuzz_decode_frame(&flipped);
            flipped[i] ^= 0x5a;
        }
    }
}

mod cluster;
mod commands;
mod membership;
mod moves;
mod multileader;
mod primary;
