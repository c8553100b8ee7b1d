//! Real processes, real TCP, real fsync: a local cluster of `triarch serve` processes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;
use triarch_cli::cluster::{LocalCluster, free_base_port};
use triarch_client::{Client, Value};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_triarch"))
}

fn cluster(nodes: u32) -> (tempfile::TempDir, LocalCluster) {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port(nodes).unwrap();
    let mut c = LocalCluster::configure(dir.path(), nodes, 1, base, Vec::new())
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
