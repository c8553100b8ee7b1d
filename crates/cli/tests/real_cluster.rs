//! Real processes, real TCP, real fsync: a local cluster of `triarch serve` processes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;
use triarch_cli::cluster::{LocalCluster, canonical_keyspaces, free_base_port, keyspace_info};
use triarch_client::{Client, ClientError, Value};
use triarch_server::config::KeyspaceFileConfig;

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_triarch"))
}

fn cluster(nodes: u32) -> (tempfile::TempDir, LocalCluster) {
    cluster_with(nodes, Vec::new())
}

fn cluster_with(
    nodes: u32,
    keyspaces: Vec<KeyspaceFileConfig>,
) -> (tempfile::TempDir, LocalCluster) {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port(nodes).unwrap();
    let mut c = LocalCluster::configure(dir.path(), nodes, 1, base, keyspaces)
        .unwrap()
        .with_binary(binary());
    c.start_all().unwrap();
    (dir, c)
}

/// Every write acknowledged before every node was killed with SIGKILL is there after restart:
/// replicas fsync before acknowledging, and coordinators reply only after W acknowledgements.
#[test]
fn acknowledged_writes_survive_kill_9_of_every_node() {
    let (_dir, mut c) = cluster(3);
    let addr = c.node(1).resp;
    let (acked_tx, acked_rx) = mpsc::channel::<u32>();
    // The writer keeps writing until its connection breaks (the kill), reporting each ack. A
    // write answered with an error reply is not acknowledged, so it is not checked; the errors
    // are kept for the failure message.
    let writer = std::thread::spawn(move || {
        let mut client = Client::connect(addr).unwrap();
        let mut errors = Vec::new();
        for i in 0u32.. {
            match client.set(format!("durable:{i}"), format!("v{i}")) {
                Ok(()) => {
                    if acked_tx.send(i).is_err() {
                        break;
                    }
                }
                Err(e @ triarch_client::ClientError::Server(_)) => errors.push(e.to_string()),
                Err(e) => {
                    errors.push(e.to_string());
                    break;
                }
            }
        }
        errors
    });
    // Wait for a few hundred acknowledgements, then kill every node at once.
    let mut acked = Vec::new();
    while acked.len() < 300 {
        match acked_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(i) => acked.push(i),
            Err(e) => panic!("writes stalled ({e}); writer errors: {:?}", writer.join()),
        }
    }
    for id in 1..=3 {
        c.kill(id).unwrap();
    }
    let errors = writer.join().unwrap();
    eprintln!("{} acknowledged; errors: {errors:?}", acked.len());
    acked.extend(acked_rx.try_iter());
    for id in 1..=3 {
        c.start(id).unwrap();
    }
    c.wait_for_links(Duration::from_secs(20)).unwrap();
    let mut reader = Client::connect(c.node(2).resp).unwrap();
    for i in &acked {
        let got = reader.get(format!("durable:{i}")).unwrap();
        assert_eq!(
            got,
            Some(format!("v{i}").into_bytes()),
            "acknowledged write {i} lost"
        );
    }
}

/// The demo is the acceptance scenario: write on one node, read on another, kill -9 one node and
/// keep serving at W=2/R=2, restart it and watch read repair catch it up. It fails on any
/// deviation.
#[test]
fn the_demo_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary())
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("The demo passed."));
}

fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the server closes, or until it has been quiet for a moment after replying.
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Bad input gets a clear error, changes nothing, and never takes down the connection (except a
/// malformed frame, which is answered and then closed, as redis does) or the node.
#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let (_dir, c) = cluster(3);
    let n1 = c.node(1).resp;
    let mut client = Client::connect(n1).unwrap();
    let err = |v: Value| match v {
        Value::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(
        err(client.call(&["NOSUCH", "x"]).unwrap()).starts_with("ERR unknown command 'NOSUCH'")
    );
    assert!(err(client.call(&["GET"]).unwrap()).contains("wrong number of arguments for 'get'"));
    assert!(err(client.call(&["SET", "k", "v", "EX", "10"]).unwrap()).contains("not supported"));
    let big_key = vec![b'k'; 70_000];
    assert!(
        err(client.call(&[b"SET".as_ref(), &big_key, b"v"]).unwrap())
            .contains("key is 70000 bytes")
    );
    assert!(
        err(client
            .call(&[
                "TRIARCH.KEYSPACE",
                "CREATE",
                "x",
                "MODEL",
                "leaderless",
                "W",
                "9"
            ])
            .unwrap())
        .contains("W=9 exceeds N=3")
    );
    assert!(
        err(client
            .call(&["TRIARCH.KEYSPACE", "CREATE", "x", "MODEL", "raft"])
            .unwrap())
        .contains("unknown model")
    );
    assert!(
        err(client.call(&["TRIARCH.KEYSPACE", "INFO", "nope"]).unwrap())
            .contains("unknown keyspace")
    );
    // A value over the 16 MiB limit: a precise error, and the connection goes on.
    let big_value = vec![b'v'; 16 * 1024 * 1024 + 1];
    let reply = err(client.call(&[b"SET".as_ref(), b"big", &big_value]).unwrap());
    assert!(
        reply.contains("value is 16777217 bytes; the limit is 16777216"),
        "{reply}"
    );
    // Nothing above changed anything, and the connection still works.
    assert_eq!(
        client.call(&["TRIARCH.KEYSPACE", "LIST"]).unwrap(),
        Value::Array(vec![Value::Bulk(b"default".to_vec())])
    );
    assert_eq!(client.get("k").unwrap(), None);
    assert_eq!(client.get("big").unwrap(), None);
    // A malformed frame: answered with a protocol error, then the connection is closed.
    let reply = raw(n1, b"*1\r\n$x\r\n");
    assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");
    // Garbage on the peer port is refused; the node keeps serving.
    let _ = raw(c.node(1).peer, b"GET / HTTP/1.1\r\n\r\n\x00\x01\x02garbage");
    let _ = raw(
        c.node(1).peer,
        b"TRCH\x01\x00\x00\x00\x02\xff\xff\xff\xff\xff\xff",
    );
    client.set("k", "v").unwrap();
    assert_eq!(
        Client::connect(c.node(3).resp).unwrap().get("k").unwrap(),
        Some(b"v".to_vec())
    );
}

/// What one client thread of the failover test did.
#[derive(Default)]
struct LoadReport {
    incr_attempted: u64,
    incr_acked: u64,
    /// Acknowledged SETs of distinct keys: key -> value.
    sets_acked: Vec<(String, String)>,
    /// Error replies and connection failures, by their first word.
    errors: BTreeMap<String, u64>,
}

/// One client of the failover load: alternately `INCR balance:counter` and `SET` of a key of its
/// own, one command at a time, through node `first` and, when its connection fails (the node
/// was killed), through the next node that accepts a connection. A reply other than the
/// expected one is not an acknowledgement; a connection that fails after the command was sent
/// leaves the command unknown (counted as attempted).
fn failover_client(
    thread: usize,
    nodes: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut node = thread % nodes.len();
    let mut conn: Option<Client> = None;
    let error = |report: &mut LoadReport, what: String| {
        let code = what.split_whitespace().next().unwrap_or("").to_string();
        *report.errors.entry(code).or_default() += 1;
    };
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let client = match conn.as_mut() {
            Some(c) => c,
            None => match Client::connect_timeout(
                nodes[node],
                Duration::from_millis(500),
                Duration::from_secs(10),
            ) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    error(&mut report, format!("connect: {e}"));
                    node = (node + 1) % nodes.len();
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let (result, key, value) = if i % 2 == 0 {
            report.incr_attempted += 1;
            (
                client.call(&["INCR", "balance:counter"]),
                String::new(),
                String::new(),
            )
        } else {
            let key = format!("balance:w{thread}:{i}");
            let value = format!("v{i}");
            (client.call(&["SET", &key, &value]), key, value)
        };
        match result {
            Ok(Value::Integer(_)) if i % 2 == 0 => report.incr_acked += 1,
            Ok(Value::Simple(s)) if s == "OK" && i % 2 == 1 => report.sets_acked.push((key, value)),
            Ok(Value::Error(e)) => {
                error(&mut report, e);
                continue;
            }
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(e @ (ClientError::Io(_) | ClientError::Timeout | ClientError::Protocol(_))) => {
                error(&mut report, format!("io: {e}"));
                conn = None;
                node = (node + 1) % nodes.len();
                continue;
            }
            Err(e) => panic!("client error {e}"),
        }
        acked.fetch_add(1, Ordering::Relaxed);
    }
    report
}

/// Waits until `acked` has grown by `by` (the load makes progress), or panics after `timeout`.
fn wait_for_progress(acked: &AtomicU64, by: u64, timeout: Duration, what: &str) {
    let start = acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + timeout;
    while acked.load(Ordering::Relaxed) < start + by {
        assert!(
            Instant::now() < deadline,
            "{what}: fewer than {by} acknowledgements in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Primary-backup failover with real processes (issue 5's acceptance): six clients write through
/// all three nodes; kill -9 of the `balance` leader mid-load; a new leader within three election
/// timeouts (3 x 2 s, `PrimaryConfig`'s maximum); the killed node restarted; then every
/// acknowledged write is there, read through every node: the counter lies between the
/// acknowledged and the attempted increments, every acknowledged SET is readable.
#[test]
fn primary_backup_failover_loses_no_acknowledged_write() {
    const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(2);
    let (_dir, mut c) = cluster_with(3, canonical_keyspaces());
    c.wait_for_leader("balance", None, Duration::from_secs(20))
        .unwrap();
    let nodes: Vec<SocketAddr> = c.nodes.iter().map(|n| n.resp).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..6)
        .map(|t| {
            let (nodes, stop, acked) = (nodes.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || failover_client(t, nodes, stop, acked))
        })
        .collect();
    wait_for_progress(&acked, 300, Duration::from_secs(20), "before the kill");

    // The leader now (a new group hands leadership to its preferred member soon after the first
    // election, so it is looked up only now), and its term.
    let leader = c
        .wait_for_leader("balance", None, Duration::from_secs(10))
        .unwrap();
    let term = |c: &LocalCluster, id: u32| -> u64 {
        keyspace_info(c.node(id), "balance").unwrap()["term"]
            .parse()
            .unwrap()
    };
    let old_term = term(&c, leader);
    let killed_at = Instant::now();
    c.kill(leader).unwrap();
    let new_leader = c
        .wait_for_leader("balance", Some(leader), 3 * ELECTION_TIMEOUT_MAX)
        .unwrap_or_else(|e| panic!("no new leader within 3 election timeouts: {e}"));
    let failover = killed_at.elapsed();
    assert!(
        term(&c, new_leader) > old_term,
        "the new leader was elected in a later term"
    );
    wait_for_progress(&acked, 300, Duration::from_secs(10), "after the failover");

    c.start(leader).unwrap();
    c.wait_for_links(Duration::from_secs(20)).unwrap();
    wait_for_progress(&acked, 300, Duration::from_secs(10), "after the restart");
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<LoadReport> = clients.into_iter().map(|t| t.join().unwrap()).collect();

    let incr_attempted: u64 = reports.iter().map(|r| r.incr_attempted).sum();
    let incr_acked: u64 = reports.iter().map(|r| r.incr_acked).sum();
    let sets: Vec<&(String, String)> = reports.iter().flat_map(|r| &r.sets_acked).collect();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reports {
        for (code, n) in &r.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
    }
    eprintln!(
        "killed leader n{leader}; n{new_leader} leads after {:.2} s; INCR acked {incr_acked} of \
         {incr_attempted}; SET acked {}; errors {errors:?}",
        failover.as_secs_f64(),
        sets.len()
    );
    for id in 1..=3 {
        let mut reader = Client::connect(c.node(id).resp).unwrap();
        let counter: u64 = String::from_utf8(reader.get("balance:counter").unwrap().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (incr_acked..=incr_attempted).contains(&counter),
            "through n{id}: counter {counter}, acknowledged {incr_acked}, attempted {incr_attempted}"
        );
        for chunk in sets.chunks(250) {
            let mut args = vec!["MGET"];
            args.extend(chunk.iter().map(|(k, _)| k.as_str()));
            let want: Vec<Value> = chunk
                .iter()
                .map(|(_, v)| Value::Bulk(v.clone().into_bytes()))
                .collect();
            assert_eq!(
                reader.call(&args).unwrap(),
                Value::Array(want),
                "through n{id}: an acknowledged SET is missing or wrong"
            );
        }
    }
    // The restarted node's own replica catches up with the leader's log.
    let current = c
        .wait_for_leader("balance", None, Duration::from_secs(10))
        .unwrap();
    let commit: u64 = keyspace_info(c.node(current), "balance").unwrap()["commit_index"]
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let applied: u64 = keyspace_info(c.node(leader), "balance").unwrap()["applied_index"]
            .parse()
            .unwrap();
        if applied >= commit {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted n{leader} applied {applied}, the leader committed {commit}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
