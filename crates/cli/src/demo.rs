//! `triarch demo`: a short scripted session against a fresh local cluster.

use crate::cluster::{LocalCluster, free_base_port};
use anyhow::{Context, Result, bail};
use std::path::Path;
use triarch_client::{Client, Value};

fn show(v: &Value) -> String {
    match v {
        Value::Simple(s) => s.clone(),
        Value::Error(e) => format!("(error) {e}"),
        Value::Integer(i) => format!("(integer) {i}"),
        Value::Bulk(b) => format!("\"{}\"", String::from_utf8_lossy(b)),
        Value::Nil => "(nil)".into(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", parts.join(", "))
        }
    }
}

struct Session<'a> {
    cluster: &'a LocalCluster,
}

impl Session<'_> {
    /// Keyspaces reach the other nodes asynchronously (broadcast, then gossip): wait until every
    /// running node knows `name` before routing keys to it.
    fn wait_for_keyspace(&self, name: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for node in self.cluster.nodes.iter().filter(|n| n.child.is_some()) {
            let mut c = Client::connect(node.resp)?;
            while !matches!(
                c.call(&["TRIARCH.KEYSPACE", "INFO", name])?,
                Value::Array(_)
            ) {
                if std::time::Instant::now() > deadline {
                    bail!("node {} did not learn keyspace {name} within 10 s", node.id);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Runs `args` on node `id`, prints it like redis-cli, and returns the reply.
    fn run(&self, id: u32, args: &[&str]) -> Result<Value> {
        let mut c = Client::connect(self.cluster.node(id).resp)
            .with_context(|| format!("connecting to node {id}"))?;
        let v = c.call(args)?;
        println!("  n{id}> {:<60} {}", args.join(" "), show(&v));
        Ok(v)
    }

    /// `TRIARCH.KEYSPACE INFO keyspace` on node `id`, printed as the Raft group's state.
    fn group_info(&self, id: u32, keyspace: &str) -> Result<()> {
        let info = crate::cluster::keyspace_info(self.cluster.node(id), keyspace)?;
        let shown: Vec<String> = [
            "role",
            "leader",
            "term",
            "commit_index",
            "applied_index",
            "follower_lag",
        ]
        .iter()
        .filter_map(|k| info.get(*k).map(|v| format!("{k}={v}")))
        .collect();
        println!(
            "  n{id}> {:<60} {}",
            format!("TRIARCH.KEYSPACE INFO {keyspace}"),
            shown.join(" ")
        );
        Ok(())
    }

    /// Like `run` but on one connection with a per-connection consistency setting first.
    fn run_with(&self, id: u32, setting: &[&str], args: &[&str]) -> Result<Value> {
        let mut c = Client::connect(self.cluster.node(id).resp)?;
        c.call_ok(setting)?;
        let v = c.call(args)?;
        println!(
            "  n{id}> {:<60} {}",
            format!("[{}] {}", setting[1..].join(" "), args.join(" ")),
            show(&v)
        );
        Ok(v)
    }
}

/// One connection to one node, for commands that keep per-connection state (WATCH, MULTI).
struct Conn {
    id: u32,
    client: Client,
}

impl Conn {
    fn open(cluster: &LocalCluster, id: u32) -> Result<Conn> {
        let client = Client::connect(cluster.node(id).resp)
            .with_context(|| format!("connecting to node {id}"))?;
        Ok(Conn { id, client })
    }

    fn run(&mut self, args: &[&str]) -> Result<Value> {
        let v = self.client.call(args)?;
        println!("  n{}> {:<60} {}", self.id, args.join(" "), show(&v));
        Ok(v)
    }
}

/// The integer in a bulk-string reply (what GET answers for a counter).
fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Bulk(b) => Ok(String::from_utf8_lossy(b).parse()?),
        other => bail!("expected an integer value, got {}", show(other)),
    }
}

fn expect(v: &Value, want: &Value, what: &str) -> Result<()> {
    if v != want {
        bail!(
            "demo check failed: {what}: expected {}, got {}",
            show(want),
            show(v)
        );
    }
    Ok(())
}

pub fn run(dir: &Path) -> Result<()> {
    let base = free_base_port(3)?;
    println!(
        "Starting a local 3-node cluster, one node in each of regions r1, r2, r3, in {} (RESP ports {}..{})",
        dir.display(),
        base,
        base + 2
    );
    let mut cluster = LocalCluster::configure(dir, 3, 3, base, Vec::new())?;
    cluster.start_all()?;
    let s = Session { cluster: &cluster };
    let ok = Value::Simple("OK".into());
    let bulk = |b: &str| Value::Bulk(b.as_bytes().to_vec());

    println!(
        "\n1. The canonical keyspaces. prefs is leaderless (N=3, R=2, W=2, last-writer-wins):"
    );
    expect(
        &s.run(
            1,
            &[
                "TRIARCH.KEYSPACE",
                "CREATE",
                "prefs",
                "MODEL",
                "leaderless",
                "N",
                "3",
                "R",
                "2",
                "W",
                "2",
                "MERGE",
                "lww",
            ],
        )?,
        &ok,
        "create prefs",
    )?;
    s.wait_for_keyspace("prefs")?;
    println!(
        "   balance is primary-backup: one Raft group over the three nodes, every write ordered by its leader:"
    );
    expect(
        &s.run(
            1,
            &[
                "TRIARCH.KEYSPACE",
                "CREATE",
                "balance",
                "MODEL",
                "primary-backup",
            ],
        )?,
        &ok,
        "create balance",
    )?;
    s.wait_for_keyspace("balance")?;
    println!(
        "   cart is multi-leader, an add-wins set: every region runs its own group (N=1 voter here,"
    );
    println!("   one node per region), takes writes on its own and ships them to the others:");
    expect(
        &s.run(
            1,
            &[
                "TRIARCH.KEYSPACE",
                "CREATE",
                "cart",
                "MODEL",
                "multi-leader",
                "N",
                "1",
                "MERGE",
                "set",
            ],
        )?,
        &ok,
        "create cart",
    )?;
    s.wait_for_keyspace("cart")?;

    println!("\n2. A write through node 1 is read through node 3:");
    expect(
        &s.run(1, &["SET", "prefs:alice:theme", "dark"])?,
        &ok,
        "SET",
    )?;
    expect(
        &s.run(3, &["GET", "prefs:alice:theme"])?,
        &bulk("dark"),
        "GET on another node",
    )?;
    s.run(
        2,
        &["MSET", "prefs:bob:theme", "light", "prefs:bob:lang", "fr"],
    )?;
    s.run(
        3,
        &["MGET", "prefs:bob:theme", "prefs:bob:lang", "prefs:nobody"],
    )?;

    println!("\n3. kill -9 node 2; with W=2 and R=2 the other two still serve reads and writes:");
    cluster.kill(2)?;
    let s = Session { cluster: &cluster };
    expect(
        &s.run(1, &["SET", "prefs:alice:theme", "solarized"])?,
        &ok,
        "SET with a node down",
    )?;
    expect(
        &s.run(3, &["GET", "prefs:alice:theme"])?,
        &bulk("solarized"),
        "GET with a node down",
    )?;
    println!(
        "   W=3 cannot be met with a node down, and says so (the write may still have reached the"
    );
    println!(
        "   replicas that answered: a failed quorum write is 'unknown', not 'did not happen'):"
    );
    s.run_with(
        1,
        &["TRIARCH.CONSISTENCY", "W", "3"],
        &["SET", "prefs:alice:font", "mono"],
    )?;

    println!(
        "\n4. Restart node 2. Its own replica missed the write; a read at R=1 answers from it first,"
    );
    println!("   then read repair brings it up to date:");
    cluster.start(2)?;
    cluster.wait_for_links(std::time::Duration::from_secs(20))?;
    let s = Session { cluster: &cluster };
    let first = s.run_with(
        2,
        &["TRIARCH.CONSISTENCY", "R", "1"],
        &["GET", "prefs:alice:theme"],
    )?;
    let mut caught_up = false;
    for _ in 0..50 {
        let v = s.run_with(
            2,
            &["TRIARCH.CONSISTENCY", "R", "1"],
            &["GET", "prefs:alice:theme"],
        )?;
        if v == bulk("solarized") {
            caught_up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if !caught_up {
        bail!(
            "node 2 did not catch up after read repair (first read: {})",
            show(&first)
        );
    }
    s.run(2, &["TRIARCH.KEYSPACE", "INFO", "prefs"])?;

    println!(
        "\n5. Merge instead of last-writer-wins: a leaderless add-wins set and a counter, written"
    );
    println!("   concurrently through different nodes, lose nothing:");
    expect(
        &s.run(
            1,
            &[
                "TRIARCH.KEYSPACE",
                "CREATE",
                "wishlist",
                "MODEL",
                "leaderless",
                "MERGE",
                "set",
            ],
        )?,
        &ok,
        "create wishlist",
    )?;
    expect(
        &s.run(
            1,
            &[
                "TRIARCH.KEYSPACE",
                "CREATE",
                "visits",
                "MODEL",
                "leaderless",
                "MERGE",
                "counter",
            ],
        )?,
        &ok,
        "create visits",
    )?;
    s.wait_for_keyspace("wishlist")?;
    s.wait_for_keyspace("visits")?;
    s.run(1, &["SADD", "wishlist:alice", "book"])?;
    s.run(2, &["SADD", "wishlist:alice", "lamp"])?;
    s.run(3, &["SADD", "wishlist:alice", "mug"])?;
    s.run(3, &["SREM", "wishlist:alice", "mug"])?;
    let members = s.run(2, &["SMEMBERS", "wishlist:alice"])?;
    let mut got = match members {
        Value::Array(items) => items,
        other => bail!("SMEMBERS answered {}", show(&other)),
    };
    got.sort_by_key(show);
    expect(
        &Value::Array(got),
        &Value::Array(vec![bulk("book"), bulk("lamp")]),
        "the set's union",
    )?;
    for id in 1..=3 {
        s.run(id, &["INCRBY", "visits:home", "5"])?;
    }
    expect(
        &s.run(1, &["GET", "visits:home"])?,
        &bulk("15"),
        "the counter's sum",
    )?;
    s.run(1, &["INCR", "wishlist:alice"])?;

    multi_leader(&cluster)?;
    primary_backup(&mut cluster)?;
    let s = Session { cluster: &cluster };

    println!("\n8. Bad input gets a clear error and changes nothing:");
    s.run(1, &["SET", "k"])?;
    s.run(1, &["FLUSHALL"])?;
    s.run(
        1,
        &[
            "TRIARCH.KEYSPACE",
            "CREATE",
            "bad",
            "MODEL",
            "leaderless",
            "N",
            "3",
            "W",
            "4",
        ],
    )?;

    println!("\nThe demo passed. Logs and data are in {}.", dir.display());
    cluster.stop_all();
    Ok(())
}

/// The members of a set reply, sorted (RESP2 answers an array, RESP3 a set).
fn members(v: &Value) -> Option<Vec<String>> {
    let Value::Array(items) = v else { return None };
    let mut out: Vec<String> = items
        .iter()
        .map(|i| match i {
            Value::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    out.sort();
    Some(out)
}

/// Section 6: the multi-leader keyspace `cart`. Each node is its own region: an SADD through
/// each is acknowledged by its own region alone; the regions ship their changes to each other,
/// and every node soon answers the union (polled, with a deadline).
fn multi_leader(cluster: &LocalCluster) -> Result<()> {
    let s = Session { cluster };
    let timeout = std::time::Duration::from_secs(15);
    let leaders = cluster.wait_for_region_leaders("cart", timeout)?;
    let shown: Vec<String> = leaders.iter().map(|(r, n)| format!("{r}: n{n}")).collect();
    println!(
        "\n6. Multi-leader. cart's region groups are led by {}. Each SADD below is acknowledged",
        shown.join(", ")
    );
    println!("   once durable in its writer's region, without waiting for the other regions:");
    let items = [(1, "book"), (2, "lamp"), (3, "mug")];
    for (id, item) in items {
        expect(
            &s.run(id, &["SADD", "cart:alice", item])?,
            &Value::Integer(1),
            "SADD in its own region",
        )?;
    }
    println!(
        "   The regions exchange their changes asynchronously; each node soon shows the union:"
    );
    let want: Vec<String> = vec!["book".into(), "lamp".into(), "mug".into()];
    let started = std::time::Instant::now();
    let deadline = started + timeout;
    for id in 1..=3u32 {
        let mut c = Client::connect(cluster.node(id).resp)?;
        loop {
            if members(&c.call(&["SMEMBERS", "cart:alice"])?).as_ref() == Some(&want) {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("demo check failed: n{id} did not converge on {want:?} within {timeout:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    println!(
        "   (every node converged {} ms after the last SADD)",
        started.elapsed().as_millis()
    );
    for id in 1..=3 {
        s.run(id, &["SMEMBERS", "cart:alice"])?;
    }
    println!(
        "   Region r1's counters: its own writes, the other regions' changes it applied (folded), the"
    );
    println!(
        "   concurrent ones among them (conflicts, merged by add-wins) and what r2 and r3 still lack:"
    );
    let info = crate::cluster::keyspace_info(cluster.node(1), "cart")?;
    let shown: Vec<String> = [
        "region",
        "role",
        "writes",
        "folded",
        "conflicts",
        "merged",
        "lag_entries",
    ]
    .iter()
    .filter_map(|k| info.get(*k).map(|v| format!("{k}={v}")))
    .collect();
    println!(
        "  n1> {:<60} {}",
        "TRIARCH.KEYSPACE INFO cart",
        shown.join(" ")
    );
    Ok(())
}

/// Section 7: the primary-backup keyspace `balance`: a transfer with WATCH/MULTI/EXEC through a
/// follower, an aborted transfer, INCR, a failed compare-and-set, then kill -9 of the leader.
fn primary_backup(cluster: &mut LocalCluster) -> Result<()> {
    let ok = Value::Simple("OK".into());
    let bulk = |b: &str| Value::Bulk(b.as_bytes().to_vec());
    let timeout = std::time::Duration::from_secs(15);
    let leader = cluster.wait_for_leader("balance", None, timeout)?;
    let followers: Vec<u32> = (1..=3).filter(|id| *id != leader).collect();
    let (f1, f2) = (followers[0], followers[1]);
    println!(
        "\n7. Primary-backup. balance's Raft group elected n{leader}; the other nodes forward to it,"
    );
    println!("   so every node serves linearizable reads and writes:");
    let s = Session { cluster };
    s.group_info(leader, "balance")?;
    expect(&s.run(f1, &["SET", "balance:alice", "100"])?, &ok, "SET")?;
    expect(&s.run(f2, &["SET", "balance:bob", "50"])?, &ok, "SET")?;
    println!(
        "   A transfer of 30 through follower n{f1}: WATCH the balances, read, then MULTI/EXEC applies"
    );
    println!("   both commands as one log entry, only if neither balance changed since the WATCH:");
    let mut tx = Conn::open(cluster, f1)?;
    expect(
        &tx.run(&["WATCH", "balance:alice", "balance:bob"])?,
        &ok,
        "WATCH",
    )?;
    let alice = int(&tx.run(&["GET", "balance:alice"])?)?;
    if alice < 30 {
        bail!("demo check failed: alice has {alice}, expected at least 30");
    }
    expect(&tx.run(&["MULTI"])?, &ok, "MULTI")?;
    tx.run(&["DECRBY", "balance:alice", "30"])?;
    tx.run(&["INCRBY", "balance:bob", "30"])?;
    expect(
        &tx.run(&["EXEC"])?,
        &Value::Array(vec![Value::Integer(70), Value::Integer(80)]),
        "the transfer",
    )?;
    println!(
        "   The same transfer again, but alice's balance changes (through n{f2}) between WATCH and"
    );
    println!("   EXEC: EXEC applies nothing and answers nil; the client retries from WATCH:");
    expect(&tx.run(&["WATCH", "balance:alice"])?, &ok, "WATCH")?;
    expect(&tx.run(&["MULTI"])?, &ok, "MULTI")?;
    tx.run(&["DECRBY", "balance:alice", "30"])?;
    tx.run(&["INCRBY", "balance:bob", "30"])?;
    expect(
        &s.run(f2, &["INCR", "balance:alice"])?,
        &Value::Integer(71),
        "INCR",
    )?;
    expect(&tx.run(&["EXEC"])?, &Value::Nil, "the aborted transfer")?;
    drop(tx);
    println!(
        "   Compare-and-set writes only if the value is the one expected; alice has 71, not 100:"
    );
    expect(
        &s.run(leader, &["TRIARCH.CAS", "balance:alice", "100", "0"])?,
        &Value::Integer(0),
        "the failed CAS",
    )?;
    expect(
        &s.run(f2, &["GET", "balance:alice"])?,
        &bulk("71"),
        "alice after the failed CAS",
    )?;

    // Leadership can move on its own (a group hands it to its preferred member), so ask again.
    let leader = cluster.wait_for_leader("balance", None, timeout)?;
    println!("\n   kill -9 the leader n{leader}; the two survivors elect a new one:");
    let killed_at = std::time::Instant::now();
    cluster.kill(leader)?;
    let new_leader = cluster.wait_for_leader("balance", Some(leader), timeout)?;
    println!(
        "   n{new_leader} leads balance {:.1} s after the kill (election timeouts are 1-2 s)",
        killed_at.elapsed().as_secs_f64()
    );
    let s = Session { cluster };
    let survivor = (1..=3)
        .find(|id| *id != leader && *id != new_leader)
        .expect("three nodes");
    s.group_info(survivor, "balance")?;
    println!(
        "   Every acknowledged write survived: the balances are intact, and the new leader takes writes:"
    );
    expect(
        &s.run(survivor, &["MGET", "balance:alice", "balance:bob"])?,
        &Value::Array(vec![bulk("71"), bulk("80")]),
        "the balances after the failover",
    )?;
    expect(
        &s.run(new_leader, &["INCRBY", "balance:bob", "5"])?,
        &Value::Integer(85),
        "a write after the failover",
    )?;

    println!(
        "   Restart n{leader}: it rejoins, catches up from the new leader's log, and serves the same"
    );
    println!("   state (leadership moves back to it if it is the group's preferred member):");
    cluster.start(leader)?;
    cluster.wait_for_links(timeout)?;
    let back = cluster.wait_for_leader("balance", None, timeout)?;
    let s = Session { cluster };
    s.group_info(leader, "balance")?;
    expect(
        &s.run(leader, &["MGET", "balance:alice", "balance:bob"])?,
        &Value::Array(vec![bulk("71"), bulk("85")]),
        "the balances through the restarted node",
    )?;
    if back == leader {
        println!("   (n{leader} leads again; the balances are the same either way)");
    }
    Ok(())
}
