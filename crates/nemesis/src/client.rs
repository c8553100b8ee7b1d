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
    /// Keyspace `bank` is primary-backup (N=3): `--keys` accounts start at 100 each; writers
    /// transfer random amounts between random accounts with WATCH, GET, GET, MULTI, SET, SET,
    /// EXEC; readers read every balance in one MULTI/EXEC. Checked by the simulator's bank
    /// checker (total conserved, no account below zero, on every read).
    Bank,
    /// Keyspace `counter` is leaderless (N=3, R=2, W=2, merge counter): writers INCRBY random
    /// counters by 1..=5, readers GET them. Checked by the simulator's counter checker.
    Counter,
    /// Keyspace `mlcounter` is multi-leader (merge counter, regions r1..r3): as `counter`, with
    /// a read required to see only the increments acknowledged in its own region until the
    /// final heal.
    MlCounter,
    /// Keyspace `set` is leaderless (N=3, R=2, W=2, merge set): writers SADD unique elements to
    /// random sets and sometimes SREM their own; readers SMEMBERS. Checked by the simulator's
    /// add-wins set checker (lost, unexpected, stale).
    Set,
    /// Keyspace `mllww` is multi-leader (merge lww, regions r1..r3): single-writer registers,
    /// register `k` written (1, 2, 3, ...) only through nodes of its home region
    /// r(k % 3 + 1) and read in the main phase only there (where reads are linearizable);
    /// checked by the simulator's single-writer checker on the main phase and each node's last
    /// final read.
    MlLww,
}

impl Workload {
    pub const ALL: [Workload; 8] = [
        Workload::SingleWriter,
        Workload::Registers,
        Workload::Cart,
        Workload::Bank,
        Workload::Counter,
        Workload::MlCounter,
        Workload::Set,
        Workload::MlLww,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::SingleWriter => "single-writer",
            Workload::Registers => "registers",
            Workload::Cart => "cart",
            Workload::Bank => "bank",
            Workload::Counter => "counter",
            Workload::MlCounter => "ml-counter",
            Workload::Set => "set",
            Workload::MlLww => "ml-lww",
        }
    }

    /// The keyspace the workload's keys live in.
    pub fn keyspace(self) -> &'static str {
        match self {
            Workload::SingleWriter | Workload::Registers => KEYSPACE,
            Workload::Cart => CART_KEYSPACE,
            Workload::Bank => "bank",
            Workload::Counter => "counter",
            Workload::MlCounter => "mlcounter",
            Workload::Set => "set",
            Workload::MlLww => "mllww",
        }
    }

    /// The replication model of the workload's keyspace.
    pub fn model(self) -> &'static str {
        match self {
            Workload::SingleWriter | Workload::Counter | Workload::Set => "leaderless",
            Workload::Registers | Workload::Bank => "primary-backup",
            Workload::Cart | Workload::MlCounter | Workload::MlLww => "multi-leader",
        }
    }

    /// Whether the nodes are spread over regions r1..r3.
    pub fn is_multileader(self) -> bool {
        self.model() == "multi-leader"
    }

    /// Whether the final reads poll every node until all agree (rather than reading each key
    /// once per node at R=3, as the register workloads do).
    pub fn polls_finally(self) -> bool {
        !matches!(self, Workload::SingleWriter | Workload::Registers)
    }

    /// Whether the main phase has reader processes.
    pub fn has_readers(self) -> bool {
        self != Workload::Cart
    }

    /// The RESP key of `key`.
    pub fn key(self, key: u64) -> String {
        format!("{}:{key}", self.keyspace())
    }

    pub fn parse(text: &str) -> Result<Workload, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == text)
            .ok_or_else(|| {
                format!(
                    "unknown workload {text:?}: single-writer (leaderless), registers (primary-backup), cart (multi-leader), bank (primary-backup), counter (leaderless), ml-counter (multi-leader), set (leaderless) or ml-lww (multi-leader)"
                )
            })
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

/// Node `id`'s region number in the multi-leader workloads (as [`crate::harness::region`]).
pub fn region_of(id: u32) -> u32 {
    (id - 1) % crate::harness::CART_REGIONS + 1
}

/// The home region of `--workload ml-lww` register `key`: r(key % 3 + 1).
pub fn home_region(key: u64) -> u32 {
    (key % u64::from(crate::harness::CART_REGIONS)) as u32 + 1
}

/// Every account's balance before the first transfer (the simulator's, so that its bank
/// checker's initial state is the workload's).
pub const BANK_INITIAL_BALANCE: i64 = triarch_sim::merged::BANK_INITIAL_BALANCE;

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
    /// The last value each register was seen to hold (registers: what compare-and-sets expect).
    seen: Mutex<BTreeMap<u64, u64>>,
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
        let mut event = Event::new(kind, process, f, key, value, node);
        event.error = error;
        event.members = members;
        self.record_event(event);
    }

    /// Appends `event`, stamping its time and final-phase mark.
    fn record_event(&self, mut event: Event) {
        let mut history = self.history.lock().expect("history lock");
        event.time = self.t0.elapsed().as_nanos() as u64;
        event.is_final = self.final_phase.load(Ordering::Relaxed);
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
    fn perform(&mut self, node: u32, f: F, key: &str, value: Option<u64>) -> Outcome {
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
        let reply = match (f, value) {
            (F::Write, Some(v)) => conn.call(&["SET", key, &v.to_string()]),
            (F::Read, None) => conn.call(&["GET", key]),
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
    /// The open connection to `node`, opened (and set up) if need be; an error means nothing
    /// was sent that matters.
    fn conn(&mut self, node: u32) -> Result<&mut Conn, String> {
        match self.open.entry(node) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => {
                let addr = self.nodes[node as usize - 1];
                Ok(e.insert(connect(addr, self.timeout, &self.setup)?))
            }
        }
    }

    /// Runs one cart operation (`SADD`, `SREM` or `SMEMBERS` of cart `key`) through `node`;
    /// the members are those of an `ok` `SMEMBERS`.
    fn perform_cart(
        &mut self,
        node: u32,
        f: F,
        key: &str,
        value: Option<u64>,
    ) -> (Outcome, Option<Vec<u64>>) {
        let conn = match self.conn(node) {
            Ok(c) => c,
            Err(error) => return (Outcome::failed(Kind::Fail, error), None),
        };
        let reply = match (f, value) {
            (F::Add, Some(v)) => conn.call(&["SADD", key, &v.to_string()]),
            (F::Remove, Some(v)) => conn.call(&["SREM", key, &v.to_string()]),
            (F::Read, None) => conn.call(&["SMEMBERS", key]),
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

/// The loop of every client thread: a random think time (up to twice `options.think`), then one
/// operation by `op`, which records it and returns how it ended, until the run stops. A process
/// whose operation ended `info` (its outcome unknown) retires and a new one takes its place, as
/// Jepsen's processes do.
fn client_loop(
    shared: &Shared,
    options: &ClientOptions,
    rng: &mut DetRng,
    mut op: impl FnMut(&mut DetRng, u64) -> Kind,
) {
    let mut process = shared.new_process();
    let think_max = (2 * options.think.as_micros() as u64).max(1);
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_micros(rng.below(think_max)));
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if op(rng, process) == Kind::Info {
            process = shared.new_process();
        }
    }
}

/// A cart writer: SADDs elements unique over the run (`index` makes them so) to random carts
/// through random nodes, and now and then SREMs an element it added and saw acknowledged.
fn cart_worker(shared: Arc<Shared>, options: Arc<ClientOptions>, index: u64, mut rng: DetRng) {
    let nodes = options.nodes.len() as u64;
    let mut conns = Connections::new(&options.nodes, options.timeout, Vec::new());
    let mut next = 0;
    let mut acknowledged: Vec<(u64, u64)> = Vec::new();
    client_loop(&shared, &options, &mut rng, |rng, process| {
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
        if options.planted_bug
            && options.workload == Workload::Cart
            && f == F::Add
            && next % 50 == 0
        {
            // The planted bug: acknowledged, never sent.
            shared.record(Kind::Ok, process, f, key, Some(value), node, None);
            return Kind::Ok;
        }
        let (outcome, _) = conns.perform_cart(node, f, &options.workload.key(key), Some(value));
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
        outcome.kind
    });
}

/// What a final read returned, for comparing nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Members(Vec<u64>),
    Count(i64),
    Balances(Vec<i64>),
    Value(Option<u64>),
}

/// After the final heal: reads every key through every node (SMEMBERS, GET of a counter, or
/// the whole bank in one MULTI/EXEC) in rounds, until one round has every node answer every key
/// alike or the deadline passes. Every read is recorded.
fn final_polls(shared: &Shared, options: &ClientOptions) {
    let workload = options.workload;
    let mut conns = Connections::new(&options.nodes, options.timeout, Vec::new());
    let deadline = Instant::now() + CART_CONVERGENCE_DEADLINE;
    // The bank is one object (key 0) read whole.
    let keys = if workload == Workload::Bank {
        1
    } else {
        options.keys
    };
    loop {
        let mut agreed = true;
        for key in 0..keys {
            let mut seen: Option<Answer> = None;
            for node in 1..=options.nodes.len() as u32 {
                let process = shared.new_process();
                shared.record(Kind::Invoke, process, F::Read, key, None, node, None);
                let mut event = Event::new(Kind::Ok, process, F::Read, key, None, node);
                let answer = read_once(&mut conns, workload, node, key, options.keys, &mut event);
                match (&answer, &seen) {
                    (None, _) => agreed = false,
                    (Some(a), Some(s)) if a != s => agreed = false,
                    _ => {}
                }
                if seen.is_none() {
                    seen = answer;
                }
                shared.record_event(event);
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

/// One read of `key` through `node` for a polling workload: fills `event`'s outcome and result
/// and returns the answer of an `ok` read.
fn read_once(
    conns: &mut Connections,
    workload: Workload,
    node: u32,
    key: u64,
    accounts: u64,
    event: &mut Event,
) -> Option<Answer> {
    let (outcome, answer) = match workload {
        Workload::Cart | Workload::Set => {
            let (o, m) = conns.perform_cart(node, F::Read, &workload.key(key), None);
            (o, m.map(Answer::Members))
        }
        Workload::Counter | Workload::MlCounter => {
            let (o, c) = conns.perform_counter(node, F::Read, &workload.key(key), None);
            (o, c.map(Answer::Count))
        }
        Workload::Bank => {
            let (o, b) = conns.read_bank(node, accounts);
            (o, b.map(Answer::Balances))
        }
        Workload::MlLww => {
            let o = conns.perform(node, F::Read, &workload.key(key), None);
            let answer = (o.kind == Kind::Ok).then_some(Answer::Value(o.value));
            (o, answer)
        }
        Workload::SingleWriter | Workload::Registers => {
            unreachable!("register workloads read with final_reads")
        }
    };
    event.kind = outcome.kind;
    event.error = outcome.error;
    match &answer {
        Some(Answer::Members(m)) => event.members = Some(m.clone()),
        Some(Answer::Count(c)) => event.count = Some(*c),
        Some(Answer::Balances(b)) => event.balances = Some(b.clone()),
        Some(Answer::Value(v)) => event.value = *v,
        None => {}
    }
    answer
}

impl Connections {
    /// `INCRBY key amount` or `GET key` of a counter through `node`; the count of an `ok` read.
    fn perform_counter(
        &mut self,
        node: u32,
        f: F,
        key: &str,
        amount: Option<u64>,
    ) -> (Outcome, Option<i64>) {
        let conn = match self.conn(node) {
            Ok(c) => c,
            Err(error) => return (Outcome::failed(Kind::Fail, error), None),
        };
        let reply = match (f, amount) {
            (F::Incr, Some(a)) => conn.call(&["INCRBY", key, &a.to_string()]),
            (F::Read, None) => conn.call(&["GET", key]),
            (f, v) => panic!("{f:?} with value {v:?} on a counter"),
        };
        let broken = reply.is_err();
        let result = classify_counter(f, reply);
        if broken || result.0.kind == Kind::Info {
            self.open.remove(&node);
        }
        result
    }

    /// One transfer of `amount` from account `from` to `to` through `node`: WATCH both, GET
    /// both, refuse (fail) if `from` holds less than `amount`, else MULTI, SET both, EXEC. Up to
    /// EXEC nothing can change the bank, so any trouble before it is a `fail`; EXEC's nil (a
    /// watched account changed) is a `fail`, its array an `ok`, a timeout or TRYAGAIN an `info`.
    /// `watch: false` is the planted bug: the same without WATCH, so two transfers can both
    /// write balances computed from the same old ones.
    fn transfer(&mut self, node: u32, from: u64, to: u64, amount: i64, watch: bool) -> Outcome {
        let (a, b) = (Workload::Bank.key(from), Workload::Bank.key(to));
        let conn = match self.conn(node) {
            Ok(c) => c,
            Err(error) => return Outcome::failed(Kind::Fail, error),
        };
        let prepared = (|| -> Result<(i64, i64), String> {
            if watch {
                expect_simple(conn.call(&["WATCH", &a, &b]), "OK", "WATCH")?;
            }
            let va = integer_reply(conn.call(&["GET", &a]), "GET")?;
            let vb = integer_reply(conn.call(&["GET", &b]), "GET")?;
            Ok((va, vb))
        })();
        let (va, vb) = match prepared {
            Ok(v) => v,
            Err(e) => {
                self.open.remove(&node); // it may hold watches
                return Outcome::failed(Kind::Fail, e);
            }
        };
        if va < amount {
            if watch && expect_simple(conn.call(&["UNWATCH"]), "OK", "UNWATCH").is_err() {
                self.open.remove(&node);
            }
            return Outcome::failed(Kind::Fail, format!("insufficient funds: {va} < {amount}"));
        }
        let queued = (|| -> Result<(), String> {
            expect_simple(conn.call(&["MULTI"]), "OK", "MULTI")?;
            expect_simple(
                conn.call(&["SET", &a, &(va - amount).to_string()]),
                "QUEUED",
                "SET",
            )?;
            expect_simple(
                conn.call(&["SET", &b, &(vb + amount).to_string()]),
                "QUEUED",
                "SET",
            )
        })();
        if let Err(e) = queued {
            self.open.remove(&node); // it may be inside MULTI
            return Outcome::failed(Kind::Fail, e);
        }
        let reply = conn.call(&["EXEC"]);
        let outcome = match reply {
            Ok(Reply::Array(items))
                if items.len() == 2
                    && items
                        .iter()
                        .all(|i| matches!(i, Reply::Simple(s) if s == "OK")) =>
            {
                Outcome::ok(None)
            }
            Ok(Reply::Nil) => {
                Outcome::failed(Kind::Fail, "EXEC aborted: a watched account changed".into())
            }
            Ok(Reply::Error(e)) if e.starts_with("EXECABORT") => Outcome::failed(Kind::Fail, e),
            other => classify(F::Write, other),
        };
        if outcome.kind != Kind::Ok {
            self.open.remove(&node);
        }
        outcome
    }

    /// Every balance in one MULTI/EXEC (one log entry: an atomic snapshot) through `node`.
    fn read_bank(&mut self, node: u32, accounts: u64) -> (Outcome, Option<Vec<i64>>) {
        let conn = match self.conn(node) {
            Ok(c) => c,
            Err(error) => return (Outcome::failed(Kind::Fail, error), None),
        };
        let queued = (|| -> Result<(), String> {
            expect_simple(conn.call(&["MULTI"]), "OK", "MULTI")?;
            for account in 0..accounts {
                expect_simple(
                    conn.call(&["GET", &Workload::Bank.key(account)]),
                    "QUEUED",
                    "GET",
                )?;
            }
            Ok(())
        })();
        if let Err(e) = queued {
            self.open.remove(&node);
            return (Outcome::failed(Kind::Fail, e), None);
        }
        let result = match conn.call(&["EXEC"]) {
            Ok(Reply::Array(items)) if items.len() == accounts as usize => {
                let balances: Result<Vec<i64>, String> = items
                    .into_iter()
                    .map(|item| integer_reply(Ok(item), "GET in EXEC"))
                    .collect();
                match balances {
                    Ok(b) => (Outcome::ok(None), Some(b)),
                    Err(e) => (Outcome::failed(Kind::Info, e), None),
                }
            }
            other => (classify(F::Read, other.map(not_a_value)), None),
        };
        if result.0.kind != Kind::Ok {
            self.open.remove(&node);
        }
        result
    }
}

/// A reply [`classify`] must not take for a register's value (an EXEC's odd answer).
fn not_a_value(reply: Reply) -> Reply {
    match reply {
        Reply::Error(e) => Reply::Error(e),
        other => Reply::Simple(format!("unexpected reply {other:?}")),
    }
}

/// `Ok` when the reply is the simple string `word`.
fn expect_simple(reply: Result<Reply, CallError>, word: &str, what: &str) -> Result<(), String> {
    match reply {
        Ok(Reply::Simple(s)) if s == word => Ok(()),
        other => Err(format!("{what} answered {other:?}")),
    }
}

/// A decimal integer (bulk or integer reply; nil reads as 0, as Redis's INCR sees it).
fn integer_reply(reply: Result<Reply, CallError>, what: &str) -> Result<i64, String> {
    match reply {
        Ok(Reply::Integer(i)) => Ok(i),
        Ok(Reply::Nil) => Ok(0),
        Ok(Reply::Bulk(b)) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{what} answered {:?}", String::from_utf8_lossy(&b))),
        other => Err(format!("{what} answered {other:?}")),
    }
}

/// Classifies a reply to a counter operation: an integer answers INCRBY, a decimal (or nil: 0)
/// GET; errors and broken connections as [`classify`].
pub fn classify_counter(f: F, reply: Result<Reply, CallError>) -> (Outcome, Option<i64>) {
    match (f, reply) {
        (F::Incr, Ok(Reply::Integer(_))) => (Outcome::ok(None), None),
        (F::Read, Ok(r @ (Reply::Integer(_) | Reply::Nil | Reply::Bulk(_)))) => {
            match integer_reply(Ok(r), "GET") {
                Ok(c) => (Outcome::ok(None), Some(c)),
                Err(e) => (Outcome::failed(Kind::Info, e), None),
            }
        }
        (_, Ok(Reply::Error(e))) => (classify(F::Write, Ok(Reply::Error(e))), None),
        (_, Ok(other)) => (
            Outcome::failed(Kind::Info, format!("unexpected reply {other:?}")),
            None,
        ),
        (_, Err(e)) => (classify(F::Write, Err(e)), None),
    }
}

/// A counter writer: INCRBY random counters by 1..=5 through random nodes. With the planted
/// bug, every 50th increment is recorded as acknowledged but never sent (the final value falls
/// short of the acknowledged sum) and every 50th, 25 later, is sent twice but recorded once
/// (the value exceeds what was attempted).
fn counter_worker(shared: Arc<Shared>, options: Arc<ClientOptions>, mut rng: DetRng) {
    let nodes = options.nodes.len() as u64;
    let mut conns = Connections::new(&options.nodes, options.timeout, Vec::new());
    let mut next = 0u64;
    client_loop(&shared, &options, &mut rng, |rng, process| {
        next += 1;
        let node = rng.between(1, nodes) as u32;
        let key = rng.below(options.keys);
        let amount = rng.between(1, 5);
        let name = options.workload.key(key);
        shared.record(
            Kind::Invoke,
            process,
            F::Incr,
            key,
            Some(amount),
            node,
            None,
        );
        if options.planted_bug && next.is_multiple_of(50) {
            shared.record(Kind::Ok, process, F::Incr, key, Some(amount), node, None);
            return Kind::Ok;
        }
        if options.planted_bug && next % 50 == 25 {
            let _ = conns.perform_counter(node, F::Incr, &name, Some(amount));
        }
        let (outcome, _) = conns.perform_counter(node, F::Incr, &name, Some(amount));
        shared.record(
            outcome.kind,
            process,
            F::Incr,
            key,
            Some(amount),
            node,
            outcome.error,
        );
        outcome.kind
    });
}

/// A bank writer: transfers 1..=20 between two random distinct accounts through random nodes.
fn transfer_worker(shared: Arc<Shared>, options: Arc<ClientOptions>, mut rng: DetRng) {
    let nodes = options.nodes.len() as u64;
    let mut conns = Connections::new(&options.nodes, options.timeout, Vec::new());
    client_loop(&shared, &options, &mut rng, |rng, process| {
        let node = rng.between(1, nodes) as u32;
        let from = rng.below(options.keys);
        let to = (from + rng.between(1, options.keys - 1)) % options.keys;
        let amount = rng.between(1, 20);
        let mut event = Event::new(Kind::Invoke, process, F::Transfer, from, Some(amount), node);
        event.to = Some(to);
        shared.record_event(event.clone());
        let outcome = conns.transfer(node, from, to, amount as i64, !options.planted_bug);
        event.kind = outcome.kind;
        event.error = outcome.error;
        shared.record_event(event);
        outcome.kind
    });
}

/// A reader of the polling workloads: reads a random key (the whole bank) through random nodes.
fn merged_reader(shared: Arc<Shared>, options: Arc<ClientOptions>, mut rng: DetRng) {
    let nodes = options.nodes.len() as u64;
    let mut conns = Connections::new(&options.nodes, options.timeout, Vec::new());
    client_loop(&shared, &options, &mut rng, |rng, process| {
        let node = rng.between(1, nodes) as u32;
        let key = match options.workload {
            Workload::Bank => 0,
            // A register is read in its home region only (its reads are linearizable there);
            // the planted bug reads it anywhere, as if multi-leader reads were linearizable.
            Workload::MlLww if !options.planted_bug => {
                let home: Vec<u64> = (0..options.keys)
                    .filter(|&k| home_region(k) == region_of(node))
                    .collect();
                home[rng.below(home.len() as u64) as usize]
            }
            _ => rng.below(options.keys),
        };
        shared.record(Kind::Invoke, process, F::Read, key, None, node, None);
        let mut event = Event::new(Kind::Ok, process, F::Read, key, None, node);
        read_once(
            &mut conns,
            options.workload,
            node,
            key,
            options.keys,
            &mut event,
        );
        let kind = event.kind;
        shared.record_event(event);
        kind
    });
}

/// Sets every account to [`BANK_INITIAL_BALANCE`] in one MULTI/EXEC, through each node in turn,
/// until one EXEC is acknowledged. Repeating it is harmless: no transfer has begun.
fn bank_setup(nodes: &[SocketAddr], accounts: u64, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::new();
    for attempt in 0.. {
        if Instant::now() > deadline {
            return Err(format!("the bank could not be set up: {last}"));
        }
        let addr = nodes[attempt % nodes.len()];
        let done = connect(addr, timeout, &[]).and_then(|mut c| {
            expect_simple(c.call(&["MULTI"]), "OK", "MULTI")?;
            for account in 0..accounts {
                expect_simple(
                    c.call(&[
                        "SET",
                        &Workload::Bank.key(account),
                        &BANK_INITIAL_BALANCE.to_string(),
                    ]),
                    "QUEUED",
                    "SET",
                )?;
            }
            match c.call(&["EXEC"]) {
                Ok(Reply::Array(items)) if items.len() == accounts as usize => Ok(()),
                other => Err(format!("EXEC answered {other:?}")),
            }
        });
        match done {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    unreachable!()
}

/// Waits until every node answers a read of the multi-leader keyspace (`SCARD` of a cart, `GET`
/// of a counter: its region's group has a leader).
fn wait_multileader_ready(
    nodes: &[SocketAddr],
    workload: Workload,
    timeout: Duration,
) -> Result<(), String> {
    let probe = workload.key(u64::MAX);
    let command = if workload == Workload::Cart {
        "SCARD"
    } else {
        "GET"
    };
    let deadline = Instant::now() + timeout;
    for (i, &addr) in nodes.iter().enumerate() {
        loop {
            let answer = Conn::connect_timeout(addr, CONNECT_TIMEOUT, Duration::from_secs(3))
                .map_err(|e| e.to_string())
                .and_then(|mut c| c.call(&[command, &probe]).map_err(|e| e.to_string()));
            match answer {
                Ok(Reply::Integer(_) | Reply::Bulk(_) | Reply::Nil) => break,
                other if Instant::now() > deadline => {
                    return Err(format!(
                        "n{} ({addr}): {command} answered {other:?} until the deadline",
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
    /// Adds unique elements to random carts or sets (cart, set).
    CartWriter {
        index: u64,
    },
    /// Increments random counters (counter, ml-counter).
    CounterWriter,
    /// Transfers between random accounts (bank).
    Transfer,
    /// Reads random keys of a polling workload (set, counter, ml-counter, bank).
    MergedReader,
}

fn worker(shared: Arc<Shared>, options: Arc<ClientOptions>, role: Role, mut rng: DetRng) {
    let nodes = options.nodes.len() as u64;
    let mut conns = Connections::new(&options.nodes, options.timeout, Vec::new());
    let mut next_value = 1;
    client_loop(&shared, &options, &mut rng, |rng, process| {
        let node = match role {
            // Multi-leader single-writer registers: through their home region's nodes only.
            Role::Writer { key } if options.workload == Workload::MlLww => {
                let home: Vec<u32> = (1..=nodes as u32)
                    .filter(|&n| region_of(n) == home_region(key))
                    .collect();
                home[rng.below(home.len() as u64) as usize]
            }
            _ => rng.between(1, nodes) as u32,
        };
        let (f, key, value) = match role {
            Role::Writer { key } => {
                next_value += 1;
                (F::Write, key, Some(next_value - 1))
            }
            Role::AnyKeyWriter { index } => {
                next_value += 1;
                let value = (index + 1) * 1_000_000_000 + next_value - 1;
                let key = rng.below(options.keys);
                // One operation in three is a compare-and-set from the value last seen.
                let expected = shared.seen.lock().expect("seen").get(&key).copied();
                if let Some(expected) = expected.filter(|_| rng.below(3) == 0) {
                    return cas(
                        &shared, &mut conns, &options, process, node, key, expected, value,
                    );
                }
                (F::Write, key, Some(value))
            }
            Role::Reader => (F::Read, rng.below(options.keys), None),
            Role::CartWriter { .. } | Role::CounterWriter | Role::Transfer | Role::MergedReader => {
                unreachable!("{role:?} has its own worker")
            }
        };
        shared.record(Kind::Invoke, process, f, key, value, node, None);
        let outcome = conns.perform(node, f, &options.workload.key(key), value);
        let value = if f == F::Write { value } else { outcome.value };
        if let (Kind::Ok, Some(v)) = (outcome.kind, value) {
            shared.seen.lock().expect("seen").insert(key, v);
        }
        shared.record(outcome.kind, process, f, key, value, node, outcome.error);
        outcome.kind
    });
}

/// One `TRIARCH.CAS key expected new` through `node`, recorded: `1` is an `ok` that swapped,
/// `0` an `ok` that did not, errors as [`classify`]. Returns the outcome (after `info` the
/// caller retires its process).
#[allow(clippy::too_many_arguments)]
fn cas(
    shared: &Shared,
    conns: &mut Connections,
    options: &ClientOptions,
    process: u64,
    node: u32,
    key: u64,
    expected: u64,
    new: u64,
) -> Kind {
    let mut event = Event::new(Kind::Invoke, process, F::Cas, key, Some(new), node);
    event.expected = Some(expected);
    shared.record_event(event.clone());
    let name = options.workload.key(key);
    let reply = match conns.conn(node) {
        Ok(conn) => conn.call(&[
            "TRIARCH.CAS",
            &name,
            &expected.to_string(),
            &new.to_string(),
        ]),
        Err(e) => {
            event.kind = Kind::Fail;
            event.error = Some(e);
            shared.record_event(event);
            return Kind::Fail;
        }
    };
    let broken = reply.is_err();
    let outcome = match reply {
        Ok(Reply::Integer(n @ (0 | 1))) => {
            event.swapped = Some(n == 1);
            Outcome::ok(None)
        }
        other => classify(F::Write, other.map(not_a_value)),
    };
    if broken || outcome.kind == Kind::Info {
        conns.open.remove(&node);
    }
    if event.swapped == Some(true) {
        shared.seen.lock().expect("seen").insert(key, new);
    }
    event.kind = outcome.kind;
    event.error = outcome.error;
    shared.record_event(event);
    outcome.kind
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
            let outcome = conns.perform(node, F::Read, &key_name(key), None);
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
    if options.workload.is_multileader()
        && let Err(e) = wait_multileader_ready(&options.nodes, options.workload, READY_TIMEOUT)
    {
        say(&format!("error {e}"));
        bail!(
            "the {} keyspace is not ready: {e}",
            options.workload.keyspace()
        );
    }
    if options.workload == Workload::Bank
        && let Err(e) = bank_setup(&options.nodes, options.keys, options.timeout)
    {
        say(&format!("error {e}"));
        bail!("{e}");
    }
    say("ready");
    let file = File::create(&options.history)
        .with_context(|| format!("creating {}", options.history.display()))?;
    expect(&rx, "start")?;
    let shared = Arc::new(Shared {
        seen: Mutex::new(BTreeMap::new()),
        t0: Instant::now(),
        history: Mutex::new(HistoryWriter::new(BufWriter::new(file))),
        next_process: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        final_phase: AtomicBool::new(false),
    });
    let options = Arc::new(options);
    let mut rng = DetRng::seed_from_u64(triarch_core::hash::mix64(options.seed ^ 0xc11e_7700));
    let writers: Vec<Role> = match options.workload {
        Workload::SingleWriter | Workload::MlLww => {
            (0..options.keys).map(|key| Role::Writer { key }).collect()
        }
        Workload::Registers => (0..options.keys)
            .map(|index| Role::AnyKeyWriter { index })
            .collect(),
        Workload::Cart | Workload::Set => (0..options.keys)
            .map(|index| Role::CartWriter { index })
            .collect(),
        Workload::Counter | Workload::MlCounter => {
            (0..options.keys).map(|_| Role::CounterWriter).collect()
        }
        Workload::Bank => (0..options.keys).map(|_| Role::Transfer).collect(),
    };
    let readers = if options.workload.has_readers() {
        options.readers
    } else {
        0
    };
    let reader = if options.workload.polls_finally() {
        Role::MergedReader
    } else {
        Role::Reader
    };
    let roles = writers.into_iter().chain((0..readers).map(|_| reader));
    let workers: Vec<_> = roles
        .map(|role| {
            let (shared, options, rng) = (shared.clone(), options.clone(), rng.fork());
            std::thread::spawn(move || match role {
                Role::CartWriter { index } => cart_worker(shared, options, index, rng),
                Role::CounterWriter => counter_worker(shared, options, rng),
                Role::Transfer => transfer_worker(shared, options, rng),
                Role::MergedReader => merged_reader(shared, options, rng),
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
    let readers: Vec<_> = if options.workload.polls_finally() {
        let (shared, options) = (shared.clone(), options.clone());
        vec![std::thread::spawn(move || final_polls(&shared, &options))]
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
        assert_eq!(Workload::Bank.key(2), "bank:2");
        assert_eq!(Workload::MlCounter.key(0), "mlcounter:0");
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()), Ok(w));
        }
        assert!(Workload::parse("nope").is_err());
        // Registers of ml-lww are homed in every region: keys 0, 1, 2 in r1, r2, r3.
        assert_eq!((home_region(0), home_region(1), home_region(5)), (1, 2, 3));
        assert_eq!((region_of(1), region_of(5), region_of(9)), (1, 2, 3));
    }

    #[test]
    fn counter_replies() {
        let c = |f, r| classify_counter(f, r);
        assert_eq!(c(F::Incr, Ok(Reply::Integer(7))), (Outcome::ok(None), None));
        assert_eq!(c(F::Read, Ok(Reply::Bulk(b"-3".to_vec()))).1, Some(-3));
        assert_eq!(c(F::Read, Ok(Reply::Nil)).1, Some(0));
        assert_eq!(c(F::Read, Ok(Reply::Integer(4))).1, Some(4));
        assert_eq!(
            c(F::Read, Ok(Reply::Bulk(b"x".to_vec()))).0.kind,
            Kind::Info
        );
        assert_eq!(
            c(F::Incr, Ok(Reply::Error("QUORUM 1 of 2".into()))).0.kind,
            Kind::Info
        );
        assert_eq!(
            c(F::Incr, Ok(Reply::Error("ERR wrong type".into()))).0.kind,
            Kind::Fail
        );
        assert_eq!(c(F::Incr, Err(CallError::Timeout)).0.kind, Kind::Info);
    }
}
