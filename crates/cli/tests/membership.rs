//! Membership changes with real processes: a fourth node joins a running three-node cluster and
//! is then decommissioned, each time under a write load through every node; every write
//! acknowledged at any point reads back once the joined node is gone for good.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use triarch_cli::cluster::{LocalCluster, free_base_port};
use triarch_client::{Client, Value};
use triarch_server::config::KeyspaceFileConfig;

const TIMEOUT: Duration = Duration::from_secs(60);

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_triarch"))
}

fn connect(addr: SocketAddr) -> Client {
    Client::connect_timeout(addr, Duration::from_secs(2), Duration::from_secs(10)).unwrap()
}

/// `TRIARCH.CLUSTER MEMBERS` on `addr`, as field -> value.
fn members(addr: SocketAddr) -> BTreeMap<String, String> {
    match connect(addr).call(&["TRIARCH.CLUSTER", "MEMBERS"]).unwrap() {
        Value::Array(items) => items
            .chunks(2)
            .map(|kv| match kv {
                [Value::Bulk(k), Value::Bulk(v)] => (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ),
                other => panic!("unexpected field {other:?}"),
            })
            .collect(),
        other => panic!("TRIARCH.CLUSTER MEMBERS answered {other:?}"),
    }
}

/// Field `field` of keyspace `prefs`'s line in `INFO` on `addr` (0 if absent).
fn prefs_counter(addr: SocketAddr, field: &str) -> u64 {
    let text = match connect(addr).call(&["INFO"]).unwrap() {
        Value::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO answered {other:?}"),
    };
    text.lines()
        .find_map(|l| l.trim_end().strip_prefix("keyspace_prefs:"))
        .and_then(|line| {
            line.split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until every node of `nodes` shows no move and the ring `ring`.
fn wait_for_ring(c: &LocalCluster, nodes: &[u32], ring: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let views: Vec<BTreeMap<String, String>> =
            nodes.iter().map(|&id| members(c.node(id).resp)).collect();
        if views
            .iter()
            .all(|m| m["moving"] == "none" && m["ring"] == ring)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ring never became {ring}: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writers: each sets new keys through its own node until stopped, keeping what was
/// acknowledged (`+OK`); other answers (errors, timeouts) are writes that may or may not exist.
fn start_load(
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    addrs
        .into_iter()
        .enumerate()
        .map(|(w, addr)| {
            let stop = stop.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut client = connect(addr);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("prefs:w{w}-{i}");
                    let value = format!("v{i}");
                    i += 1;
                    match client.call(&["SET", &key, &value]) {
                        Ok(Value::Simple(s)) if s == "OK" => {
                            acked.lock().unwrap().push((key, value))
                        }
                        Ok(_) => {}
                        Err(_) => client = connect(addr),
                    }
                }
            })
        })
        .collect()
}

/// The membership acceptance (issue "Leaderless keyspaces, complete", item 8):
///
/// 1. Three founding nodes, leaderless keyspace `prefs` (N=3, R=W=2), three writers (one per
///    node) setting new keys all along.
/// 2. A fourth process starts with `joining = true` and serves nothing (TRYAGAIN) until
///    `TRIARCH.CLUSTER JOIN 4 r1 <addr>` is decided; the ring then moves to four nodes (every
///    node reports it), with the writers running, plus a fourth writer through the new node.
/// 3. `TRIARCH.CLUSTER DECOMMISSION 4`, still under load: the ring moves back to three nodes
///    and the fourth is killed with SIGKILL.
/// 4. Every write acknowledged during the whole run reads back through each founder.
#[test]
fn a_node_joins_and_is_decommissioned_under_load_without_losing_a_write() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port(3).unwrap();
    let prefs = KeyspaceFileConfig {
        name: "prefs".into(),
        model: triarch_core::Model::Leaderless,
        n: Some(3),
        r: Some(2),
        w: Some(2),
        merge: None,
        read: None,
        quorum: None,
        home: None,
    };
    let mut c = LocalCluster::configure(dir.path(), 3, 1, base, vec![prefs])
        .unwrap()
        .with_binary(binary());
    c.start_all().unwrap();
    let four = c.add_joining("r1").unwrap();
    c.start(four).unwrap();
    // Not a member yet: it refuses data requests, clearly.
    match connect(c.node(four).resp)
        .call(&["GET", "prefs:x"])
        .unwrap()
    {
        Value::Error(e) => assert!(e.starts_with("TRYAGAIN this node is joining"), "{e}"),
        other => panic!("a joining node served a read: {other:?}"),
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let founders: Vec<SocketAddr> = (1..=3).map(|id| c.node(id).resp).collect();
    let mut writers = start_load(founders.clone(), stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_millis(300));

    let peer = c.node(four).peer.to_string();
    let join = connect(c.node(1).resp)
        .call(&["TRIARCH.CLUSTER", "JOIN", "4", "r1", &peer])
        .unwrap();
    assert!(matches!(join, Value::Array(_)), "JOIN answered {join:?}");
    let at_join = acked.lock().unwrap().len();
    wait_for_ring(&c, &[1, 2, 3, four], "n1,n2,n3,n4");
    let joined_in = started.elapsed();
    // The keys it gained came in the handoff (and the founders' INFO shows the ring).
    let handed = prefs_counter(c.node(four).resp, "move_keys_received");
    assert!(handed > 0, "n4 received no key in the handoff");
    writers.extend(start_load(
        vec![c.node(four).resp],
        stop.clone(),
        acked.clone(),
    ));
    std::thread::sleep(Duration::from_millis(500));

    let refused = connect(c.node(2).resp)
        .call(&["TRIARCH.CLUSTER", "DECOMMISSION", "1"])
        .unwrap();
    assert!(
        matches!(&refused, Value::Error(e) if e.contains("founding member")),
        "{refused:?}"
    );
    let leave = connect(c.node(2).resp)
        .call(&["TRIARCH.CLUSTER", "DECOMMISSION", "4"])
        .unwrap();
    assert!(
        matches!(leave, Value::Array(_)),
        "DECOMMISSION answered {leave:?}"
    );
    let at_leave = acked.lock().unwrap().len();
    wait_for_ring(&c, &[1, 2, 3, four], "n1,n2,n3");
    assert_eq!(members(c.node(1).resp)["left"], "n4");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    c.kill(four).unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > at_leave && at_leave > at_join && at_join > 0,
        "writes went on all along: {at_join} before the join, {at_leave} before the decommission, {} in all",
        acked.len()
    );
    for addr in founders {
        let mut client = connect(addr);
        for (key, value) in &acked {
            assert_eq!(
                client.get(key).unwrap().as_deref(),
                Some(value.as_bytes()),
                "{key} lost (read through {addr})"
            );
        }
    }
    eprintln!(
        "join decided and finished after {joined_in:?} ({handed} keys handed to n4); {} acknowledged writes ({at_join} before the join, {at_leave} before the decommission) all read back; {:?} in all",
        acked.len(),
        started.elapsed()
    );
    c.stop_all();
}
