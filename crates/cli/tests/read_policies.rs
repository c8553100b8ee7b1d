//! Read policies, session tokens and quorum modes with real processes: a 3-node cluster of
//! `triarch serve`, driven over RESP and HTTP as redis-cli and curl would.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use triarch_cli::cluster::{LocalCluster, canonical_keyspaces, free_base_port, keyspace_info};
use triarch_client::{Client, Value};
use triarch_core::{Model, ReadPolicy};
use triarch_server::config::KeyspaceFileConfig;

const TIMEOUT: Duration = Duration::from_secs(30);

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_triarch"))
}

fn ok() -> Value {
    Value::Simple("OK".into())
}

fn bulk(text: &str) -> Value {
    Value::Bulk(text.as_bytes().to_vec())
}

fn error(v: Value) -> String {
    match v {
        Value::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The text of `INFO` on `addr`.
fn info(addr: SocketAddr) -> String {
    match Client::connect(addr).unwrap().call(&["INFO"]).unwrap() {
        Value::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO answered {other:?}"),
    }
}

/// A numeric field of `INFO` (`name:value`).
fn info_field(addr: SocketAddr, name: &str) -> u64 {
    let text = info(addr);
    text.lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("{name}:")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in INFO:\n{text}"))
}

/// Waits until node `id` has applied entry `index` of `keyspace`'s log.
fn wait_applied(c: &LocalCluster, id: u32, keyspace: &str, index: u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let info = keyspace_info(c.node(id), keyspace).unwrap();
        if info["applied_index"].parse::<u64>().unwrap() >= index {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "n{id} did not apply {keyspace} {index}: {info:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The token (`keyspace:index`) a connection holds for `keyspace`, as `TRIARCH.SESSION` shows it.
fn token_of(conn: &mut Client, keyspace: &str) -> (String, u64) {
    let Value::Array(tokens) = conn.call(&["TRIARCH.SESSION"]).unwrap() else {
        panic!("TRIARCH.SESSION answers an array")
    };
    tokens
        .iter()
        .find_map(|t| match t {
            Value::Bulk(b) => {
                let text = String::from_utf8(b.clone()).unwrap();
                let index = text.strip_prefix(&format!("{keyspace}:"))?.parse().ok()?;
                Some((text, index))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {keyspace} token in {tokens:?}"))
}

/// A voter of `keyspace` that does not lead it now.
fn follower(c: &LocalCluster, keyspace: &str) -> (u32, u32) {
    let leader = c.wait_for_leader(keyspace, None, TIMEOUT).unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    (leader, follower)
}

/// One HTTP/1.1 request: the status, the headers (names lowercased) and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, out[split + 4..].to_vec())
}

/// The acceptance of read policies and session tokens (RESP and HTTP), of the `QUORUM` setting,
/// and of the counters that show them:
///
/// 1. `TRIARCH.READ session` on a follower's RESP port: every GET returns the connection's own
///    write just made; its token (`TRIARCH.SESSION`) carried to another connection reads it too;
///    a keyspace whose own policy is `session` (from the configuration file) does the same
///    without `TRIARCH.READ`.
/// 2. `TRIARCH.READ bounded:1000` through a follower is answered by the follower itself
///    (`primary_fresh_reads` in INFO, `triarch_primary_fresh_reads_total` in /metrics).
/// 3. A keyspace created with `QUORUM sloppy` is shown as such by every node (INFO,
///    `TRIARCH.KEYSPACE INFO`, `GET /v1/keyspaces`); settings on the wrong model are refused.
/// 4. HTTP: a write answers `X-Triarch-Session`, a GET presenting it under `?read=session`
///    reads the write; malformed tokens and policies are 400s.
#[test]
fn read_policies_session_tokens_and_quorum_modes_through_real_nodes() {
    let mut keyspaces = canonical_keyspaces(3, 1);
    keyspaces.push(KeyspaceFileConfig {
        name: "notes".into(),
        model: Model::PrimaryBackup,
        n: None,
        r: None,
        w: None,
        merge: None,
        read: Some(ReadPolicy::Session),
        quorum: None,
        home: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port(3).unwrap();
    let mut c = LocalCluster::configure(dir.path(), 3, 1, base, keyspaces)
        .unwrap()
        .with_binary(binary());
    c.start_all().unwrap();
    let node = |id: u32| c.node(id).resp;

    // 1. Read-your-writes on a follower's connection under `session`.
    let (leader, f) = follower(&c, "balance");
    eprintln!("balance: n{leader} leads; writing and reading through n{f}");
    let mut conn = Client::connect(node(f)).unwrap();
    assert_eq!(conn.call(&["TRIARCH.READ"]).unwrap(), bulk("default"));
    assert_eq!(conn.call(&["TRIARCH.READ", "session"]).unwrap(), ok());
    assert_eq!(conn.call(&["TRIARCH.READ"]).unwrap(), bulk("session"));
    assert_eq!(
        conn.call(&["TRIARCH.SESSION"]).unwrap(),
        Value::Array(vec![])
    );
    for i in 0..60 {
        let key = format!("balance:ryw:{}", i % 6);
        let value = format!("v{i}");
        assert_eq!(conn.call(&["SET", &key, &value]).unwrap(), ok());
        assert_eq!(
            conn.call(&["GET", &key]).unwrap(),
            bulk(&value),
            "a session read through n{f} missed the connection's own write {i}"
        );
    }
    let (token, index) = token_of(&mut conn, "balance");
    assert!(index >= 60, "{token}");
    // Right after its write the follower may not have applied it (the read then goes to the
    // leader); once it has, it serves the session read itself: the GET presented the token.
    wait_applied(&c, f, "balance", index);
    let before = info_field(node(f), "primary_fresh_reads");
    assert_eq!(conn.call(&["GET", "balance:ryw:5"]).unwrap(), bulk("v59"));
    let after = info_field(node(f), "primary_fresh_reads");
    assert_eq!(after, before + 1, "n{f} served the session read itself");
    // The token carried to another connection on another node: read-your-writes there too.
    let other = (1..=3).find(|id| *id != f).unwrap();
    let mut carried = Client::connect(node(other)).unwrap();
    assert_eq!(carried.call(&["TRIARCH.READ", "session"]).unwrap(), ok());
    assert_eq!(carried.call(&["TRIARCH.SESSION", &token]).unwrap(), ok());
    assert_eq!(
        carried.call(&["TRIARCH.SESSION"]).unwrap(),
        Value::Array(vec![bulk(&token)])
    );
    assert_eq!(
        carried.call(&["GET", "balance:ryw:5"]).unwrap(),
        bulk("v59")
    );
    let e = error(carried.call(&["TRIARCH.SESSION", "balance"]).unwrap());
    assert!(e.starts_with("ERR invalid session token"), "{e}");
    let e = error(carried.call(&["TRIARCH.READ", "stale"]).unwrap());
    assert!(e.starts_with("ERR invalid READ"), "{e}");
    // `notes` reads under `session` by its own setting: no TRIARCH.READ needed.
    let (_, nf) = follower(&c, "notes");
    let mut plain = Client::connect(node(nf)).unwrap();
    for i in 0..30 {
        let value = format!("n{i}");
        assert_eq!(plain.call(&["SET", "notes:today", &value]).unwrap(), ok());
        assert_eq!(plain.call(&["GET", "notes:today"]).unwrap(), bulk(&value));
    }
    let (_, notes_index) = token_of(&mut plain, "notes");
    wait_applied(&c, nf, "notes", notes_index);
    let before = info_field(node(nf), "primary_fresh_reads");
    assert_eq!(plain.call(&["GET", "notes:today"]).unwrap(), bulk("n29"));
    let after = info_field(node(nf), "primary_fresh_reads");
    assert_eq!(
        after,
        before + 1,
        "n{nf} served the session read of notes itself"
    );
    assert_eq!(
        keyspace_info(c.node(nf), "notes").unwrap()["read"],
        "session"
    );
    assert_eq!(
        keyspace_info(c.node(nf), "balance").unwrap()["read"],
        "linearizable"
    );

    // 2. Bounded-staleness reads through a follower are answered by the follower. Leadership
    // may still move (a new group hands it to its preferred member): retry with the follower
    // of the moment.
    let deadline = Instant::now() + TIMEOUT;
    let (f, before, after) = loop {
        let (_, f) = follower(&c, "balance");
        // The follower holds the last write: its answer must be it.
        wait_applied(&c, f, "balance", index);
        let before = info_field(node(f), "primary_fresh_reads");
        let mut bounded = Client::connect(node(f)).unwrap();
        assert_eq!(
            bounded.call(&["TRIARCH.READ", "bounded:1000"]).unwrap(),
            ok()
        );
        for _ in 0..20 {
            assert_eq!(
                bounded.call(&["GET", "balance:ryw:5"]).unwrap(),
                bulk("v59"),
                "a bounded read through n{f}"
            );
        }
        let after = info_field(node(f), "primary_fresh_reads");
        if after > before {
            break (f, before, after);
        }
        assert!(
            Instant::now() < deadline,
            "no bounded read was served by a follower (n{f}: {before} -> {after})"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("n{f} served {} of 20 bounded reads itself", after - before);
    let (status, _, metrics) = http(c.node(f).http, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let served: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("triarch_primary_fresh_reads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no triarch_primary_fresh_reads_total in /metrics of n{f}"));
    assert!(served >= after, "/metrics {served}, INFO {after}");

    // 3. QUORUM sloppy: created through n1, shown as such by every node.
    let mut admin = Client::connect(node(1)).unwrap();
    let create = |words: &[&str]| {
        let mut all = vec!["TRIARCH.KEYSPACE", "CREATE"];
        all.extend_from_slice(words);
        Client::connect(node(1)).unwrap().call(&all).unwrap()
    };
    assert_eq!(
        create(&["loose", "MODEL", "leaderless", "QUORUM", "sloppy"]),
        ok()
    );
    for (words, want) in [
        (
            &["x1", "MODEL", "leaderless", "READ", "lease"][..],
            "ERR invalid READ: read policies apply to primary-backup keyspaces only",
        ),
        (
            &["x2", "MODEL", "primary-backup", "QUORUM", "sloppy"],
            "ERR invalid QUORUM: sloppy quorums apply to leaderless keyspaces only",
        ),
        (
            &["x3", "MODEL", "leaderless", "QUORUM", "loose"],
            "ERR invalid QUORUM",
        ),
        (
            &["x4", "MODEL", "primary-backup", "READ", "bounded:0"],
            "ERR invalid READ",
        ),
    ] {
        let e = error(create(words));
        assert!(e.starts_with(want), "{words:?}: {e}");
    }
    assert_eq!(admin.call(&["SET", "loose:k", "v"]).unwrap(), ok());
    assert_eq!(
        keyspace_info(c.node(1), "loose").unwrap()["quorum"],
        "sloppy"
    );
    for id in 1..=3 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = info(node(id));
            let line = text.lines().find(|l| l.starts_with("keyspace_loose:"));
            if line.is_some_and(|l| l.contains(",quorum=sloppy,")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "n{id} does not show loose as sloppy: {line:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (status, _, body) = http(c.node(id).http, "GET", "/v1/keyspaces", &[], b"");
        assert_eq!(status, 200);
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let loose = list["keyspaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "loose")
            .unwrap_or_else(|| panic!("n{id} does not list loose: {list}"));
        assert_eq!(loose["quorum"], "sloppy", "n{id}: {loose}");
        let prefs_line = info(node(id));
        let prefs_line = prefs_line
            .lines()
            .find(|l| l.starts_with("keyspace_prefs:"))
            .unwrap();
        assert!(
            prefs_line.contains(",quorum=strict,") && prefs_line.contains(",clock_ahead_refused="),
            "{prefs_line}"
        );
    }
    assert_eq!(admin.call(&["SET", "prefs:k", "v"]).unwrap(), ok());
    let (_, _, metrics) = http(c.node(1).http, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    for name in [
        "triarch_clock_ahead_refused_total",
        "triarch_clock_ahead_copied_total",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{keyspace=\"prefs\"}}"))),
            "no {name} for prefs in /metrics"
        );
    }

    // 4. HTTP: the write's token, presented by a session read through a follower.
    let (_, f) = follower(&c, "balance");
    let http_f = c.node(f).http;
    let (status, headers, _) = http(http_f, "PUT", "/v1/kv/balance/h1", &[], b"over-http");
    assert_eq!(status, 204);
    let token = headers
        .get("x-triarch-session")
        .unwrap_or_else(|| panic!("no session header: {headers:?}"))
        .clone();
    assert!(token.starts_with("balance:"), "{token}");
    for path in ["/v1/kv/balance/h1?read=session", "/v1/kv/balance/h1"] {
        let (status, _, body) = http(
            http_f,
            "GET",
            path,
            &[("X-Triarch-Session", &format!("notes:1,{token}"))],
            b"",
        );
        assert_eq!(
            (status, body.as_slice()),
            (200, b"over-http".as_slice()),
            "{path}"
        );
    }
    let (status, _, body) = http(
        http_f,
        "GET",
        "/v1/kv/balance/h1?read=bounded:1000",
        &[],
        b"",
    );
    assert_eq!((status, body.as_slice()), (200, b"over-http".as_slice()));
    let (status, headers, _) = http(http_f, "DELETE", "/v1/kv/balance/h1", &[], b"");
    assert_eq!(status, 200);
    assert!(headers.contains_key("x-triarch-session"), "{headers:?}");
    for (path, session) in [
        ("/v1/kv/balance/h1", "balance"),
        ("/v1/kv/balance/h1", "balance:0"),
        ("/v1/kv/balance/h1?read=stale", "balance:1"),
        ("/v1/kv/prefs/k?read=session", "balance:1"),
    ] {
        let (status, _, body) = http(http_f, "GET", path, &[("X-Triarch-Session", session)], b"");
        assert_eq!(
            status,
            400,
            "{path} with {session}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let body = br#"{"name":"h2","model":"primary-backup","read":"bounded:200"}"#;
    let (status, _, _) = http(c.node(1).http, "POST", "/v1/keyspaces", &[], body);
    assert_eq!(status, 201);
    assert_eq!(
        keyspace_info(c.node(1), "h2").unwrap()["read"],
        "bounded:200"
    );
    let body = br#"{"name":"h3","model":"leaderless","quorum":"loose"}"#;
    let (status, _, body) = http(c.node(1).http, "POST", "/v1/keyspaces", &[], body);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("invalid QUORUM"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}
