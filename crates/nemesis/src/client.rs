//! The workload: single-writer registers, run by `triarch-nemesis client` inside the client's
//! network namespace (the harness re-executes its own binary there with `ip netns exec`).
//!
//! ## Processes
//!
//! One writer thread per key writes strictly increasing integers to its key; reader threads read
//! random keys. Each operation goes to a random node, after a random think time (uniform in
//! `0..2 * think`). A thread acts as a Jepsen *process*: when an operation's outcome is unknown
//! (`info`) the process retires and the thread continues under a fresh process id (a writer keeps
//! its key and its sequence of values).
//!
//! ## Outcomes
//!
//! - `ok`: `+OK` to a write; a bulk integer or nil to a read.
//! - `fail` (certainly did not happen): no connection could be made; an error reply whose code is
//!   definite (`ERR`).
//! - `info` (unknown): no reply within the timeout, the connection broke after the request left,
//!   or an error reply that leaves the outcome open (`QUORUM`, `TRYAGAIN`, `IOERR`), as in the
//!   simulator.
//!
//! ## Talking to the harness
//!
//! Over stdin and stdout, one word per line. The client prints `ready` once every node answers
//! and sees all its peers; the harness sends `start` (the main phase's time origin), `stop` (the
//! client finishes its operations in flight and prints `stopped`) and, after the final heal and
//! settle, `final` (the client reads every key through every node at R=3, saves every node's
//! `INFO` and prints `done`). End of input means the harness is gone: the client exits at once.

use crate::history::{Event, F, HistoryWriter, Kind};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use triarch_client::{Client as Conn, ClientError as CallError, Value as Reply};
use triarch_core::DetRng;

/// The keyspace the workload's registers live in (configured on every node).
pub const KEYSPACE: &str = "nemesis";

/// Which model the run tests, and so which workload and checkers it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Keyspace `nemesis` is leaderless (N=3, R=2, W=2, lww): one writer per key, checked by
    /// the simulator's single-writer checker.
    SingleWriter,
    /// Keyspace `nemesis` is primary-backup (N=3): every writer writes unique values to random
    /// keys, checked for linearizability per key.
    Registers,
    /// Keyspace `cart` is multi-leader (an add-wins set, one Raft group per region, nodes
    /// spread over regions r1..r3): every writer SADDs unique elements to random carts and
    /// sometimes SREMs one it added and saw acknowledged; after the final heal every node is
    /// polled with SMEMBERS until all agree. Checked by [`crate::check::cart`].
    Cart,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::SingleWriter => "single-writer",
            Workload::Registers => "registers",
            Workload::Cart => "cart",
        }
    }

    /// The keyspace the workload's keys live in.
    pub fn keyspace(self) -> &'static str {
        match self {
            Workload::Cart => CART_KEYSPACE,
            _ => KEYSPACE,
        }
    }

    pub fn parse(text: &str) -> Result<Workload, String> {
        match text {
            "single-writer" => Ok(Workload::SingleWriter),
            "registers" => Ok(Workload::Registers),
            "cart" => Ok(Workload::Cart),
            other => Err(format!(
                "unknown workload {other:?}: single-writer (leaderless), registers (primary-backup) or cart (multi-leader)"
            )),
        }
    }
}

/// The multi-leader keyspace of `--workload cart`.
pub const CART_KEYSPACE: &str = "cart";

/// The RESP key of register `key`.
pub fn key_name(key: u64) -> String {
    format!("{KEYSPACE}:{key}")
}

/// The RESP key of cart `key`.
pub fn cart_key(key: u64) -> String {
    format!("{CART_KEYSPACE}:{key}")
}

/// How long the client polls SMEMBERS after the final heal for every node to agree.
const CART_CONVERGENCE_DEADLINE: Duration = Duration::from_secs(60);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts at each final read (each one an operation of its own in the history).
const FINAL_READ_ATTEMPTS: u32 = 5;
/// How long the client waits for the cluster to be reachable (at start and before final reads).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The client's settings (the hidden `client` subcommand's flags).
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// RESP address of node `i + 1` at index `i`.
    pub nodes: Vec<SocketAddr>,
    pub keys: u64,
    pub readers: u64,
    pub seed: u64,
    /// Mean think time between a process's operations.
    pub think: Duration,
    /// How long an operation waits for its reply before it is `info`.
    pub timeout: Duration,
    /// Where the history goes (JSON lines).
    pub history: PathBuf,
    /// Where each node's final `INFO` goes (`info-n<i>.txt`).
    pub dir: PathBuf,
    pub workload: Workload,
    /// `--workload cart` only: every 50th SADD of each writer is recorded as acknowledged
    /// without being sent (a client-side planted bug the cart checker must catch).
    pub planted_bug: bool,
}

struct Shared {
    t0: Instant,
    history: Mutex<HistoryWriter<BufWriter<File>>>,
    next_process: AtomicU64,
    stop: AtomicBool,
    final_phase: AtomicBool,
}

impl Shared {
    fn new_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends one event. The timestamp is taken under the lock, so file order is time order.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        kind: Kind,
        process: u64,
        f: F,
        key: u64,
        value: Option<u64>,
        node: u32,
        error: Option<String>,
    ) {
        self.record_members(kind, process, f, key, value, node, error, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_members(
        &self,
        kind: Kind,
        process: u64,
        f: F,
        key: u64,
        value: Option<u64>,
        node: u32,
        error: Option<String>,
        members: Option<Vec<u64>>,
    ) {
        let mut history = self.history.lock().expect("history lock");
        let event = Event {
            index: 0,
            kind,
            process,
            f,
            key,
            value,
            time: self.t0.elapsed().as_nanos() as u64,
            node: format!("n{node}"),
            error,
            is_final: self.final_phase.load(Ordering::Relaxed),
            members,
        };
        if let Err(e) = history.write(event) {
            eprintln!("cannot write the history: {e}");
            std::process::exit(4);
        }
    }
}

/// What became of one operation.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub kind: Kind,
    /// A read's value when `ok`.
    pub value: Option<u64>,
    pub error: Option<String>,
}

impl Outcome {
    fn ok(value: Option<u64>) -> Self {
        Outcome {
            kind: Kind::Ok,
            value,
            error: None,
        }
    }
    fn failed(kind: Kind, error: String) -> Self {
        Outcome {
            kind,
            value: None,
            error: Some(error),
        }
    }
}

/// Classifies a reply (or its absence) to a read or write, as the module documentation says.
pub fn classify(f: F, reply: Result<Reply, CallError>) -> Outcome {
    match (f, reply) {
        (F::Write, Ok(Reply::Simple(s))) if s == "OK" => Outcome::ok(None),
        (F::Read, Ok(Reply::Nil)) => Outcome::ok(None),
        (F::Read, Ok(Reply::Bulk(b))) => {
            match std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()) {
                Some(v) => Outcome::ok(Some(v)),
                None => Outcome::failed(
                    Kind::Info,
                    format!("unexpected value {:?}", String::from_utf8_lossy(&b)),
                ),
            }
        }
        (_, Ok(Reply::Error(e))) => {
            let code = e.split_whitespace().next().unwrap_or("");
            let kind = if matches!(code, "QUORUM" | "TRYAGAIN" | "IOERR") {
                Kind::Info
            } else {
                Kind::Fail
            };
            Outcome::failed(kind, e)
        }
        (_, Ok(other)) => Outcome::failed(Kind::Info, format!("unexpected reply {other:?}")),
        (_, Err(CallError::Connect(e))) => Outcome::failed(Kind::Fail, format!("connect: {e}")),
        (_, Err(e)) => Outcome::failed(Kind::Info, e.to_string()),
    }
}

/// One process's connections, one per node, opened on first use and dropped after trouble.
struct Connections {
    nodes: Vec<SocketAddr>,
    timeout: Duration,
    open: BTreeMap<u32, Conn>,
    /// Commands sent on every new connection before use (`TRIARCH.CONSISTENCY R 3`).
    setup: Vec<Vec<String>>,
}

impl Connections {
    fn new(nodes: &[SocketAddr], timeout: Duration, setup: Vec<Vec<String>>) -> Self {
        Connections {
            nodes: nodes.to_vec(),
            timeout,
            open: BTreeMap::new(),
            setup,
        }
    }

    /// Runs one operation through `node`.
    fn perform(&mut self, node: u32, f: F, key: u64, value: Option<u64>) -> Outcome {
        let conn = match self.open.entry(node) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let addr = self.nodes[node as usize - 1];
                match connect(addr, self.timeout, &self.setup) {
                    Ok(c) => e.insert(c),
                    Err(error) => return Outcome::failed(Kind::Fail, error),
                }
            }
        };
        let key = key_name(key);
        let reply = match (f, value) {
            (F::Write, Some(v)) => conn.call(&["SET", &key, &v.to_string()]),
            (F::Read, None) => conn.call(&["GET", &key]),
            (f, v) => panic!("{f:?} with value {v:?}"),
        };
        let broken = reply.is_err();
        let outcome = classify(f, reply);
        if broken || outcome.kind == Kind::Info {
            self.open.remove(&node);
        }
        outcome
    }
}

impl Connections {
    /// Runs one cart operation (`SADD`, `SREM` or `SMEMBERS` of cart `key`) through `node`;
    /// the members are those of an `ok` `SMEMBERS`.
    fn perform_cart(
        &mut self,
        node: u32,
        f: F,
        key: u64,
        value: Option<u64>,
    ) -> (Outcome, Option<Vec<u64>>) {
        let conn = match self.open.entry(node) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let addr = self.nodes[node as usize - 1];
                match connect(addr, self.timeout, &self.setup) {
                    Ok(c) => e.insert(c),
                    Err(error) => return (Outcome::failed(Kind::Fail, error), None),
                }
            }
        };
        let key = cart_key(key);
        let reply = match (f, value) {
            (F::Add, Some(v)) => conn.call(&["SADD", &key, &v.to_string()]),
            (F::Remove, Some(v)) => conn.call(&["SREM", &key, &v.to_string()]),
            (F::Read, None) => conn.call(&["SMEMBERS", &key]),
            (f, v) => panic!("{f:?} with value {v:?} on a cart"),
        };
        let broken = reply.is_err();
        let result = classify_cart(f, reply);
        if broken || result.0.kind == Kind::Info {
            self.open.remove(&node);
        }
        result
    }
}

/// Classifies a reply to a cart operation: an integer answers SADD and SREM, an array of
/// decimal elements SMEMBERS; errors and broken connections as [`classify`].
pub fn classify_cart(f: F, reply: Result<Reply, CallError>) -> (Outcome, Option<Vec<u64>>) {
    match (f, reply) {
        (F::Add | F::Remove, Ok(Reply::Integer(_))) => (Outcome::ok(None), None),
        (F::Read, Ok(Reply::Array(items))) => {
            let mut members = Vec::with_capacity(items.len());
            for item in items {
                let parsed = match &item {
                    Reply::Bulk(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
                    _ => None,
                };
                match parsed {
                    Some(v) => members.push(v),
                    None => {
                        return (
                            Outcome::failed(Kind::Info, format!("unexpected member {item:?}")),
                            None,
                        );
                    }
                }
            }
            members.sort_unstable();
            (Outcome::ok(None), Some(members))
        }
        (F::Add | F::Remove | F::Read, Ok(Reply::Error(e))) => {
            (classify(F::Write, Ok(Reply::Error(e))), None)
        }
        (_, Ok(other)) => (
            Outcome::failed(Kind::Info, format!("unexpected reply {other:?}")),
            None,
        ),
        (_, Err(e)) => (classify(F::Write, Err(e)), None),
    }
}

/// A cart writer: SADDs elements unique over the run (`index` makes them so) to random carts
/// through random nodes, and now and then SREMs an element it added and saw acknowledged.
fn cart_worker(shared: Arc<Shared>, options: Arc<ClientOptions>, index: u64, mut rng: DetRng) {
    let nodes = options.nodes.len() as u64;
    let mut conns = Connections::new(&options.nodes, options.timeout, Vec::new());
    let mut process = shared.new_process();
    let mut next = 0;
    let mut acknowledged: Vec<(u64, u64)> = Vec::new();
    let think_max = (2 * options.think.as_micros() as u64).max(1);
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_micros(rng.below(think_max)));
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let node = rng.between(1, nodes) as u32;
        let (f, key, value) = if !acknowledged.is_empty() && rng.below(5) == 0 {
            let (key, element) =
                acknowledged.swap_remove(rng.below(acknowledged.len() as u64) as usize);
            (F::Remove, key, element)
        } else {
            next += 1;
            (
                F::Add,
                rng.below(options.keys),
                (index + 1) * 1_000_000_000 + next,
            )
        };
        shared.record(Kind::Invoke, process, f, key, Some(value), node, None);
        if options.planted_bug && f == F::Add && next % 50 == 0 {
            // The planted bug: acknowledged, never sent.
            shared.record(Kind::Ok, process, f, key, Some(value), node, None);
            continue;
        }
        let (outcome, _) = conns.perform_cart(node, f, key, Some(value));
        shared.record(
            outcome.kind,
            process,
            f,
            key,
            Some(value),
            node,
            outcome.error,
        );
        if f == F::Add && outcome.kind == Kind::Ok {
            acknowledged.push((key, value));
        }
        if outcome.kind == Kind::Info {
            process = shared.new_process();
        }
    }
}

/// After the final heal: reads every cart through every node (SMEMBERS) in rounds, until one
/// round has every node answer every cart alike or the deadline passes. Every read is recorded.
fn final_cart_polls(shared: &Shared, options: &ClientOptions) {
    let mut conns = Connections::new(&options.nodes, options.timeout, Vec::new());
    let deadline = Instant::now() + CART_CONVERGENCE_DEADLINE;
    loop {
        let mut agreed = true;
        for key in 0..options.keys {
            let mut seen: Option<Vec<u64>> = None;
            for node in 1..=options.nodes.len() as u32 {
                let process = shared.new_process();
                shared.record(Kind::Invoke, process, F::Read, key, None, node, None);
                let (outcome, members) = conns.perform_cart(node, F::Read, key, None);
                match (&members, &seen) {
                    (None, _) => agreed = false,
                    (Some(m), Some(s)) if m != s => agreed = false,
                    _ => {}
                }
                if seen.is_none() {
                    seen = members.clone();
                }
                shared.record_members(
                    outcome.kind,
                    process,
                    F::Read,
                    key,
                    None,
                    node,
                    outcome.error,
                    members,
                );
            }
        }
        if agreed || Instant::now() > deadline {
            if !agreed {
                eprintln!("the nodes still disagree at the convergence deadline");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until every node answers `SCARD` on a cart (its region's group has a leader).
fn wait_cart_ready(nodes: &[SocketAddr], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    for (i, &addr) in nodes.iter().enumerate() {
        loop {
            let answer = Conn::connect_timeout(addr, CONNECT_TIMEOUT, Duration::from_secs(3))
                .map_err(|e| e.to_string())
                .and_then(|mut c| {
                    c.call(&["SCARD", &cart_key(u64::MAX)])
                        .map_err(|e| e.to_string())
                });
            match answer {
                Ok(Reply::Integer(_)) => break,
                other if Instant::now() > deadline => {
                    return Err(format!(
                        "n{} ({addr}): SCARD answered {other:?} until the deadline",
                        i + 1
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    Ok(())
}

/// Connects and runs the setup commands; an error means nothing was sent that matters.
fn connect(addr: SocketAddr, timeout: Duration, setup: &[Vec<String>]) -> Result<Conn, String> {
    let mut conn =
        Conn::connect_timeout(addr, CONNECT_TIMEOUT, timeout).map_err(|e| e.to_string())?;
    for command in setup {
        match conn.call(command) {
            Ok(Reply::Simple(s)) if s == "OK" => {}
            other => return Err(format!("{} answered {other:?}", command.join(" "))),
        }
    }
    Ok(conn)
}

#[derive(Clone, Copy, Debug)]
enum Role {
    /// Writes increasing values to its own key (single-writer).
    Writer {
        key: u64,
    },
    /// Writes values unique over the run to random keys (registers): `index` makes them unique.
    AnyKeyWriter {
        index: u64,
    },
    Reader,
    /// Adds unique elements to random carts (cart).
    CartWriter {
        index: u64,
    },
}

fn worker(shared: Arc<Shared>, options: Arc<ClientOptions>, role: Role, mut rng: DetRng) {
    let nodes = options.nodes.len() as u64;
    let mut conns = Connections::new(&options.nodes, options.timeout, Vec::new());
    let mut process = shared.new_process();
    let mut next_value = 1;
    let think_max = (2 * options.think.as_micros() as u64).max(1);
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_micros(rng.below(think_max)));
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let node = rng.between(1, nodes) as u32;
        let (f, key, value) = match role {
            Role::Writer { key } => {
                next_value += 1;
                (F::Write, key, Some(next_value - 1))
            }
            Role::AnyKeyWriter { index } => {
                next_value += 1;
                let value = (index + 1) * 1_000_000_000 + next_value - 1;
                (F::Write, rng.below(options.keys), Some(value))
            }
            Role::Reader => (F::Read, rng.below(options.keys), None),
            Role::CartWriter { .. } => unreachable!("cart writers run cart_worker"),
        };
        shared.record(Kind::Invoke, process, f, key, value, node, None);
        let outcome = conns.perform(node, f, key, value);
        let value = if f == F::Write { value } else { outcome.value };
        shared.record(outcome.kind, process, f, key, value, node, outcome.error);
        if outcome.kind == Kind::Info {
            process = shared.new_process();
        }
    }
}

/// Reads every key through `node` at R=3, retrying a failed read a few times.
fn final_reads(shared: &Shared, options: &ClientOptions, node: u32) {
    let setup = vec![vec![
        "TRIARCH.CONSISTENCY".to_string(),
        "R".to_string(),
        "3".to_string(),
    ]];
    let mut conns = Connections::new(&options.nodes, options.timeout, setup);
    for key in 0..options.keys {
        for attempt in 1..=FINAL_READ_ATTEMPTS {
            let process = shared.new_process();
            shared.record(Kind::Invoke, process, F::Read, key, None, node, None);
            let outcome = conns.perform(node, F::Read, key, None);
            let done = outcome.kind == Kind::Ok;
            shared.record(
                outcome.kind,
                process,
                F::Read,
                key,
                outcome.value,
                node,
                outcome.error,
            );
            if done {
                break;
            }
            if attempt < FINAL_READ_ATTEMPTS {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Waits until every node answers `PING` and reports every peer link up.
pub fn wait_ready(nodes: &[SocketAddr], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    for (i, &addr) in nodes.iter().enumerate() {
        let id = i as u32 + 1;
        loop {
            match node_ready(addr, id, nodes.len() as u32) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("n{id} ({addr}) not ready within {timeout:?}: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(())
}

fn node_ready(addr: SocketAddr, id: u32, nodes: u32) -> Result<(), String> {
    let mut c = Conn::connect_timeout(addr, CONNECT_TIMEOUT, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    match c.call(&["PING"]).map_err(|e| e.to_string())? {
        Reply::Simple(s) if s == "PONG" => {}
        other => return Err(format!("PING answered {other:?}")),
    }
    let info = info(&mut c)?;
    let down: Vec<String> = (1..=nodes)
        .filter(|&p| p != id)
        .filter(|p| {
            !info
                .lines()
                .any(|l| l.starts_with(&format!("peer_n{p}:")) && l.trim_end().ends_with("link=up"))
        })
        .map(|p| format!("n{p}"))
        .collect();
    if down.is_empty() {
        Ok(())
    } else {
        Err(format!("links down to {}", down.join(" ")))
    }
}

fn info(c: &mut Conn) -> Result<String, String> {
    match c.call(&["INFO"]).map_err(|e| e.to_string())? {
        Reply::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        other => Err(format!("INFO answered {other:?}")),
    }
}

/// Reads commands from stdin on a thread; end of input (the harness is gone) ends the process.
fn commands() -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_string()).is_err() {
                return;
            }
        }
        eprintln!("the harness closed its pipe: exiting");
        std::process::exit(3);
    });
    rx
}

fn expect(rx: &Receiver<String>, word: &str) -> Result<()> {
    loop {
        match rx.recv_timeout(Duration::from_secs(3_600)) {
            Ok(line) if line == word => return Ok(()),
            Ok(line) => bail!("expected {word:?} from the harness, got {line:?}"),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => bail!("the harness went away"),
        }
    }
}

fn say(word: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{word}");
    let _ = out.flush();
}

/// The `client` subcommand.
pub fn run(options: ClientOptions) -> Result<()> {
    let rx = commands();
    if let Err(e) = wait_ready(&options.nodes, READY_TIMEOUT) {
        say(&format!("error {e}"));
        bail!("cluster not ready: {e}");
    }
    if options.workload == Workload::Cart
        && let Err(e) = wait_cart_ready(&options.nodes, READY_TIMEOUT)
    {
        say(&format!("error {e}"));
        bail!("the cart keyspace is not ready: {e}");
    }
    say("ready");
    let file = File::create(&options.history)
        .with_context(|| format!("creating {}", options.history.display()))?;
    expect(&rx, "start")?;
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        history: Mutex::new(HistoryWriter::new(BufWriter::new(file))),
        next_process: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        final_phase: AtomicBool::new(false),
    });
    let options = Arc::new(options);
    let mut rng = DetRng::seed_from_u64(triarch_core::hash::mix64(options.seed ^ 0xc11e_7700));
    let writers: Vec<Role> = match options.workload {
        Workload::SingleWriter => (0..options.keys).map(|key| Role::Writer { key }).collect(),
        Workload::Registers => (0..options.keys)
            .map(|index| Role::AnyKeyWriter { index })
            .collect(),
        Workload::Cart => (0..options.keys)
            .map(|index| Role::CartWriter { index })
            .collect(),
    };
    let readers = if options.workload == Workload::Cart {
        0
    } else {
        options.readers
    };
    let roles = writers
        .into_iter()
        .chain((0..readers).map(|_| Role::Reader));
    let workers: Vec<_> = roles
        .map(|role| {
            let (shared, options, rng) = (shared.clone(), options.clone(), rng.fork());
            std::thread::spawn(move || match role {
                Role::CartWriter { index } => cart_worker(shared, options, index, rng),
                _ => worker(shared, options, role, rng),
            })
        })
        .collect();

    expect(&rx, "stop")?;
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers {
        if w.join().is_err() {
            bail!("a workload thread panicked");
        }
    }
    shared.history.lock().expect("history lock").flush()?;
    say("stopped");

    expect(&rx, "final")?;
    shared.final_phase.store(true, Ordering::Relaxed);
    if let Err(e) = wait_ready(&options.nodes, READY_TIMEOUT) {
        eprintln!("final reads start on a cluster that is not fully ready: {e}");
    }
    let readers: Vec<_> = if options.workload == Workload::Cart {
        let (shared, options) = (shared.clone(), options.clone());
        vec![std::thread::spawn(move || {
            final_cart_polls(&shared, &options)
        })]
    } else {
        (1..=options.nodes.len() as u32)
            .map(|node| {
                let (shared, options) = (shared.clone(), options.clone());
                std::thread::spawn(move || final_reads(&shared, &options, node))
            })
            .collect()
    };
    for r in readers {
        if r.join().is_err() {
            bail!("a final-read thread panicked");
        }
    }
    shared.history.lock().expect("history lock").flush()?;
    for (i, &addr) in options.nodes.iter().enumerate() {
        let text = Conn::connect_timeout(addr, CONNECT_TIMEOUT, options.timeout)
            .map_err(|e| e.to_string())
            .and_then(|mut c| info(&mut c))
            .unwrap_or_else(|e| format!("INFO failed: {e}\n"));
        let path = options.dir.join(format!("info-n{}.txt", i + 1));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    say("done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_jepsen_semantics() {
        let kind = |f, r| classify(f, r).kind;
        assert_eq!(kind(F::Write, Ok(Reply::Simple("OK".into()))), Kind::Ok);
        assert_eq!(
            classify(F::Read, Ok(Reply::Bulk(b"17".to_vec()))).value,
            Some(17)
        );
        assert_eq!(classify(F::Read, Ok(Reply::Nil)), Outcome::ok(None));
        assert_eq!(
            kind(F::Write, Ok(Reply::Error("QUORUM only 1 of 2".into()))),
            Kind::Info
        );
        assert_eq!(
            kind(F::Write, Ok(Reply::Error("TRYAGAIN superseded".into()))),
            Kind::Info
        );
        assert_eq!(
            kind(F::Read, Ok(Reply::Error("ERR bad".into()))),
            Kind::Fail
        );
        assert_eq!(kind(F::Write, Err(CallError::Timeout)), Kind::Info);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(kind(F::Write, Err(CallError::Connect(refused))), Kind::Fail);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(kind(F::Write, Err(CallError::Io(reset))), Kind::Info);
        assert_eq!(kind(F::Read, Ok(Reply::Bulk(b"x".to_vec()))), Kind::Info);
        assert_eq!(kind(F::Write, Ok(Reply::Integer(1))), Kind::Info);
    }

    #[test]
    fn keys_live_in_the_workload_keyspace() {
        assert_eq!(key_name(3), "nemesis:3");
    }
}
