//! Sloppy quorums and hinted handoff with real processes: five `triarch serve` nodes, two of a
//! key's three replicas killed with SIGKILL, writes that go on through fallbacks, and hints that
//! reach the owners once they are back.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use triarch_cli::cluster::{LocalCluster, free_base_port};
use triarch_client::{Client, Value};
use triarch_core::NodeId;
use triarch_leaderless::ring::{Ring, VNODES_PER_NODE_DEFAULT};

const NODES: u32 = 5;
/// Generous bound for each wait; the whole test takes ~15 s on a 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(20);

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_triarch"))
}

fn ok() -> Value {
    Value::Simple("OK".into())
}

fn bulk(text: &str) -> Value {
    Value::Bulk(text.as_bytes().to_vec())
}

/// A client whose replies may take a request timeout (1 s) or two, not longer.
fn connect(addr: SocketAddr) -> Client {
    Client::connect_timeout(addr, Duration::from_secs(2), Duration::from_secs(10)).unwrap()
}

/// The preference list of `key` in leaderless keyspace `keyspace` with replication factor `n`,
/// from the server's own ring (`triarch_leaderless::ring`). The test also checks it against the
/// cluster's behaviour (the strict keyspace's writes fail with these two nodes down; the
/// fallbacks, not these, hold hints).
fn preference_list(members: &[u32], keyspace: &str, key: &[u8], n: usize) -> Vec<u32> {
    let nodes: Vec<NodeId> = members.iter().map(|&m| NodeId(m)).collect();
    let ring = Ring::new(&nodes, VNODES_PER_NODE_DEFAULT);
    ring.preference_list(Ring::position(keyspace, key), n)
        .into_iter()
        .map(|m| m.0)
        .collect()
}

/// The text of `INFO` on `addr`.
fn info(addr: SocketAddr) -> String {
    match connect(addr).call(&["INFO"]).unwrap() {
        Value::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO answered {other:?}"),
    }
}

/// The fields of keyspace `name`'s line in `INFO` (`keyspace_<name>:k=v,k=v,...`), if the node
/// knows the keyspace.
fn keyspace_line(addr: SocketAddr, name: &str) -> Option<BTreeMap<String, String>> {
    let text = info(addr);
    let line = text
        .lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("keyspace_{name}:")))?
        .to_string();
    Some(
        line.split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// A counter of keyspace `name`'s `INFO` line on `addr` (0 if the node does not know it yet).
fn info_counter(addr: SocketAddr, name: &str, field: &str) -> u64 {
    keyspace_line(addr, name)
        .and_then(|f| f.get(field).cloned())
        .map_or(0, |v| v.parse().unwrap())
}

/// `/metrics` of the node whose HTTP port is `addr`.
fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "/metrics answered {text}");
    text
}

/// The value of `metric{keyspace="<keyspace>"}` in a `/metrics` text (0 if absent: a node that
/// never counted anything for the keyspace does not publish it).
fn metric(text: &str, metric: &str, keyspace: &str) -> f64 {
    let prefix = format!("{metric}{{keyspace=\"{keyspace}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The hint figures of `keyspace` on every running node: (stored, delivered, pending) per node
/// from `/metrics`, with `INFO`'s `hints_pending` and `hints_delivered` checked against them.
fn hint_figures(c: &LocalCluster, keyspace: &str) -> BTreeMap<u32, (u64, u64, u64)> {
    c.running()
        .into_iter()
        .map(|id| {
            let text = metrics(c.node(id).http);
            let f = |m: &str| metric(&text, m, keyspace) as u64;
            (
                id,
                (
                    f("triarch_hints_stored_total"),
                    f("triarch_hints_delivered_total"),
                    f("triarch_hints_pending"),
                ),
            )
        })
        .collect()
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `TIMEOUT` naming `what`.
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The acceptance of sloppy quorums and hinted handoff (issue "Leaderless keyspaces, complete"):
///
/// 1. Five nodes; `hot` is created with `QUORUM sloppy` and `cold` the same way without it
///    (strict, the default), both N=3 W=2 R=2; every node shows both, with their quorum mode.
/// 2. Two of the three replicas of `hot:k` (and of a `cold` key with the same replicas) are
///    killed with SIGKILL. Through the surviving replica, once its failure detector suspects
///    the two (`peer_nX_health:suspect` in INFO), writes of `hot:k` succeed (fallbacks stand in
///    and hold hints: `hinted_writes`, `triarch_hints_stored_total`, `triarch_hints_pending` on
///    nodes outside the preference list), and so do writes through a node outside the
///    preference list, while writes of the `cold` key fail with `QUORUM` all along.
/// 3. The two are restarted: the hints are handed off (`triarch_hints_delivered_total` grows
///    to at least one per owner, `triarch_hints_pending` falls back to 0 everywhere, INFO
///    agrees), and then each owner, read with consistency ONE (its own copy answers first),
///    holds the last value written; so does a read at R=ALL.
#[test]
fn sloppy_quorum_writes_survive_two_dead_replicas_and_hints_reach_them() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port(NODES).unwrap();
    let mut c = LocalCluster::configure(dir.path(), NODES, 1, base, Vec::new())
        .unwrap()
        .with_binary(binary());
    c.start_all().unwrap();
    let resp = |c: &LocalCluster, id: u32| c.node(id).resp;

    // 1. The two keyspaces, known to every node (until a node knows `hot`, it would take
    // `hot:k` for a key of `default`).
    let mut admin = connect(resp(&c, 1));
    for create in [
        &[
            "hot",
            "MODEL",
            "leaderless",
            "N",
            "3",
            "W",
            "2",
            "R",
            "2",
            "QUORUM",
            "sloppy",
        ][..],
        &["cold", "MODEL", "leaderless", "N", "3", "W", "2", "R", "2"],
    ] {
        let mut args = vec!["TRIARCH.KEYSPACE", "CREATE"];
        args.extend_from_slice(create);
        assert_eq!(admin.call(&args).unwrap(), ok(), "{args:?}");
    }
    for id in 1..=NODES {
        for (name, quorum) in [("hot", "sloppy"), ("cold", "strict")] {
            poll(&format!("n{id} to know {name} as {quorum}"), || {
                let f = keyspace_line(resp(&c, id), name)?;
                (f["quorum"] == quorum && f["n"] == "3" && f["w"] == "2" && f["r"] == "2")
                    .then_some(())
            });
        }
    }

    // 2. The replicas of hot:k; a cold key with the same replicas (10 possible sets of 3 among
    // 5 nodes: a few candidates suffice).
    let members: Vec<u32> = (1..=NODES).collect();
    let hot_key = "hot:k";
    let owners = preference_list(&members, "hot", hot_key.as_bytes(), 3);
    let same_set = |a: &[u32], b: &[u32]| {
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        a.sort();
        b.sort();
        a == b
    };
    let cold_key = (0..1000)
        .map(|i| format!("cold:k{i}"))
        .find(|k| same_set(&preference_list(&members, "cold", k.as_bytes(), 3), &owners))
        .expect("a cold key with the same replicas");
    let (dead, survivor) = ([owners[0], owners[1]], owners[2]);
    let outsider = *members.iter().find(|m| !owners.contains(m)).unwrap();
    eprintln!(
        "{hot_key} and {cold_key} are held by {owners:?}; killing n{} and n{}, writing through n{survivor} (a replica) and n{outsider} (not one)",
        dead[0], dead[1]
    );
    let mut writer = connect(resp(&c, survivor));
    let mut outside = connect(resp(&c, outsider));
    assert_eq!(writer.call(&["SET", hot_key, "v0"]).unwrap(), ok());
    assert_eq!(writer.call(&["SET", &cold_key, "v0"]).unwrap(), ok());
    for id in dead {
        c.kill(id).unwrap();
    }
    let killed = Instant::now();

    // Until both coordinators (the survivor and the outsider) suspect both dead replicas
    // (`peer_nX_health:suspect` in INFO), their writes of hot:k may time out (QUORUM) while they
    // still count on the dead replicas; the writes themselves feed the failure detectors (every
    // attempt is a real write, none is a sleep). Strict writes fail all along.
    let mut last = String::from("v0");
    let mut attempts = 0;
    let mut first_ok = None;
    let mut strict_failures = 0;
    let suspects_both = |id: u32| {
        let text = info(c.node(id).resp);
        dead.iter().all(|d| {
            text.lines()
                .any(|l| l.trim_end() == format!("peer_n{d}_health:suspect"))
        })
    };
    poll("both coordinators to suspect both dead replicas", || {
        if suspects_both(survivor) && suspects_both(outsider) {
            return Some(());
        }
        for (name, via) in [("survivor", &mut writer), ("outsider", &mut outside)] {
            attempts += 1;
            let value = format!("a{attempts}");
            match via.call(&["SET", hot_key, &value]).unwrap() {
                v if v == ok() => {
                    last = value;
                    first_ok.get_or_insert(killed.elapsed());
                }
                Value::Error(e) if e.starts_with("QUORUM") => {}
                other => panic!("SET {hot_key} through the {name} answered {other:?}"),
            }
            match via.call(&["SET", &cold_key, "strict"]).unwrap() {
                Value::Error(e) if e.starts_with("QUORUM") => strict_failures += 1,
                other => panic!(
                    "a strict write through the {name} with 2 of 3 replicas dead answered {other:?}"
                ),
            }
        }
        None
    });
    // The detector's view is in /metrics too.
    for id in [survivor, outsider] {
        let text = metrics(c.node(id).http);
        for d in dead {
            assert!(
                text.lines()
                    .any(|l| l.trim_end() == format!("triarch_peer_suspected{{peer=\"n{d}\"}} 1")),
                "n{id} /metrics does not show n{d} suspected:\n{text}"
            );
        }
    }
    eprintln!(
        "suspected {:?} after the kill; first sloppy write acknowledged after {first_ok:?}; {attempts} attempts",
        killed.elapsed()
    );
    // Meanwhile: every sloppy write succeeds, through a replica and through a node outside the
    // preference list alike, and every strict one fails.
    for i in 0..20 {
        let value = format!("w{i}");
        let via = if i % 2 == 0 {
            &mut writer
        } else {
            &mut outside
        };
        assert_eq!(
            via.call(&["SET", hot_key, &value]).unwrap(),
            ok(),
            "sloppy write {i} with 2 of 3 replicas suspected"
        );
        last = value;
        if i % 5 == 0 {
            for (name, via) in [("survivor", &mut writer), ("outsider", &mut outside)] {
                match via.call(&["SET", &cold_key, "strict"]).unwrap() {
                    Value::Error(e) if e.starts_with("QUORUM") => strict_failures += 1,
                    other => panic!(
                        "a strict write through the {name} with 2 of 3 replicas dead answered {other:?}"
                    ),
                }
            }
        }
    }
    eprintln!("{strict_failures} strict writes failed with QUORUM meanwhile");
    let hinted = info_counter(resp(&c, survivor), "hot", "hinted_writes")
        + info_counter(resp(&c, outsider), "hot", "hinted_writes");
    assert!(hinted >= 20, "hinted_writes {hinted}: fallbacks stood in");
    assert_eq!(
        info_counter(resp(&c, survivor), "cold", "hinted_writes"),
        0,
        "no fallback ever stands in under a strict quorum"
    );
    // The hints are held by the nodes outside the preference list, for the dead owners.
    let during = hint_figures(&c, "hot");
    eprintln!("hints (stored, delivered, pending) per node during the outage: {during:?}");
    for (id, (stored, _, pending)) in &during {
        if owners.contains(id) {
            assert_eq!(
                (*stored, *pending),
                (0, 0),
                "n{id} is a replica, not a fallback"
            );
        }
    }
    let pending: u64 = during.values().map(|f| f.2).sum();
    assert!(
        pending >= 2,
        "at least one hint per dead owner is pending: {during:?}"
    );

    // 3. Restart the dead replicas; the fallbacks hand the hints off.
    for id in dead {
        c.start(id).unwrap();
    }
    let restarted = Instant::now();
    let after = poll("the hints to be delivered", || {
        let figures = hint_figures(&c, "hot");
        let delivered: u64 = figures.values().map(|f| f.1).sum();
        let pending: u64 = figures.values().map(|f| f.2).sum();
        (pending == 0 && delivered >= 2).then_some(figures)
    });
    eprintln!(
        "hints delivered {:?} after the restart: {after:?}",
        restarted.elapsed()
    );
    for id in 1..=NODES {
        let f = keyspace_line(resp(&c, id), "hot").expect("every node knows hot");
        assert_eq!(f["hints_pending"], "0", "n{id} INFO: {f:?}");
        assert_eq!(
            f["hints_delivered"].parse::<u64>().unwrap(),
            after[&id].1,
            "n{id}: INFO and /metrics agree"
        );
    }
    // Each owner's own copy: with consistency ONE a replica answers from its own disk first.
    // The owners are read before any read at R=ALL, whose read repair would mask a missing
    // handoff.
    for &id in &owners {
        let mut reader = connect(resp(&c, id));
        assert_eq!(reader.call(&["TRIARCH.CONSISTENCY", "ONE"]).unwrap(), ok());
        assert_eq!(
            reader.call(&["GET", hot_key]).unwrap(),
            bulk(&last),
            "n{id}'s own copy of {hot_key}"
        );
    }
    let mut all = connect(resp(&c, outsider));
    assert_eq!(all.call(&["TRIARCH.CONSISTENCY", "ALL"]).unwrap(), ok());
    assert_eq!(all.call(&["GET", hot_key]).unwrap(), bulk(&last));
    // And the strict keyspace writes again once its replicas are back.
    poll("a strict write once the replicas are back", || {
        (writer.call(&["SET", &cold_key, "back"]).unwrap() == ok()).then_some(())
    });
    eprintln!("sloppy_quorum test took {:?}", started.elapsed());
    c.stop_all();
}
