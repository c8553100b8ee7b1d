//! Re-placing a primary-backup keyspace with real processes: six `triarch serve` nodes in two
//! regions, a keyspace created in r1 over RESP, moved to r2 over HTTP while a client writes,
//! as redis-cli and curl would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use triarch_cli::cluster::{LocalCluster, canonical_keyspaces, free_base_port, keyspace_info};
use triarch_client::{Client, Value};

const TIMEOUT: Duration = Duration::from_secs(60);

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_triarch"))
}

fn ok() -> Value {
    Value::Simple("OK".into())
}

/// One HTTP/1.1 request: the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// SET through `conn`, retried while the keyspace has no leader (an election, a hand-over).
fn set(conn: &mut Client, key: &str, value: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match conn.call(&["SET", key, value]).unwrap() {
            v if v == ok() => return,
            other => {
                assert!(Instant::now() < deadline, "SET {key}: {other:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `TRIARCH.KEYSPACE HOME` over RESP and `PUT /v1/keyspaces/{name}/home` over HTTP: the
/// keyspace's voters and leader end in the new region, the old voters stop running the group,
/// every write reads back through every node, and refusals are errors.
#[test]
fn a_keyspace_moves_to_another_region_through_resp_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port(6).unwrap();
    let mut c = LocalCluster::configure(dir.path(), 6, 2, base, canonical_keyspaces(6, 2))
        .unwrap()
        .with_binary(binary());
    c.start_all().unwrap();
    let resp = |id: u32| c.node(id).resp;
    let mut admin = Client::connect(resp(1)).unwrap();
    assert_eq!(
        admin
            .call(&[
                "TRIARCH.KEYSPACE",
                "CREATE",
                "acct",
                "MODEL",
                "primary-backup",
                "HOME",
                "r1"
            ])
            .unwrap(),
        ok()
    );
    let mut writer = Client::connect(resp(2)).unwrap();
    for i in 0..20 {
        set(&mut writer, &format!("acct:k{i}"), &format!("v{i}"));
    }
    // Refusals: other models, unknown keyspaces, regions without members.
    for (name, region, expect) in [
        ("prefs", "r2", "needs a primary-backup keyspace"),
        ("nope", "r2", "unknown keyspace 'nope'"),
        ("acct", "r9", "no member is in region \"r9\""),
    ] {
        match admin
            .call(&["TRIARCH.KEYSPACE", "HOME", name, region])
            .unwrap()
        {
            Value::Error(e) => assert!(e.contains(expect), "HOME {name} {region}: {e}"),
            other => panic!("HOME {name} {region} answered {other:?}"),
        }
    }
    let (status, body) = http(
        c.node(3).http,
        "PUT",
        "/v1/keyspaces/acct/home",
        br#"{"home":"r2"}"#,
    );
    assert_eq!(status, 200, "{body}");
    // Writes go on during the move.
    for i in 20..60 {
        set(&mut writer, &format!("acct:k{i}"), &format!("v{i}"));
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r2 = keyspace_info(c.node(2), "acct").unwrap();
        let old_stopped = [1, 3, 5].into_iter().all(|id| {
            keyspace_info(c.node(id), "acct")
                .is_ok_and(|i| i.get("role").map(String::as_str) == Some("none"))
        });
        let leader = r2.get("leader").cloned().unwrap_or_default();
        if r2.get("voters").map(String::as_str) == Some("n2,n4,n6")
            && ["n2", "n4", "n6"].contains(&leader.as_str())
            && r2.get("learners").map(String::as_str) == Some("")
            && old_stopped
        {
            assert_eq!(r2["home"], "r2");
            assert_eq!(r2["target_voters"], "n2,n4,n6");
            break;
        }
        assert!(Instant::now() < deadline, "the move did not finish: {r2:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in 1..=6 {
        let mut conn = Client::connect(resp(id)).unwrap();
        for i in 0..60 {
            assert_eq!(
                conn.call(&["GET", &format!("acct:k{i}")]).unwrap(),
                Value::Bulk(format!("v{i}").into_bytes()),
                "acct:k{i} via n{id}"
            );
        }
    }
    c.stop_all();
}
