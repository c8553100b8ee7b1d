//! Workloads and histories for keyspaces other than the default registers: leaderless
//! keyspaces whose merge policy is not `lww` (a `set` for the shopping cart, a `counter`, a
//! `siblings` and a `map` keyspace), primary-backup registers and bank accounts, and the
//! multi-leader and explorer workloads below.
//!
//! The histories have the same Jepsen shape as [`crate::history`] (invoke, then `ok`, `fail` or
//! `info`; a process retires after `info`), with the operations these types have.
//!
//! ## Workload S: carts
//!
//! `keys` carts in keyspace `cart` (`MERGE set`, N=3, R=2, W=2). Adder processes each add a
//! globally unique element (so an element names one add) to a random cart through a random
//! node; often (two times in five, when it has one) an adder instead removes an element *it*
//! added and saw acknowledged, and has not removed yet. Reader processes read random carts (SMEMBERS).
//!
//! ## Workload C: counters
//!
//! `keys` counters in keyspace `hits` (`MERGE counter`). Incrementer processes add a known
//! positive amount (1 to 10) to a random counter through a random node; reader processes read
//! random counters (GET).
//!
//! ## Workload V: siblings
//!
//! `keys` documents in keyspace `docs` (`MERGE siblings`, N=3, R=2, W=2). Writer processes
//! write globally unique values through a random node: most often
//! ([`OBSERVED_WRITE_PROBABILITY`]) they first read the key (`TRIARCH.GETV`: its concurrent
//! values and a causal context) and then write with that context (`TRIARCH.SETV`), which
//! supersedes exactly what the read showed; otherwise they write blind (an empty context),
//! adding a sibling beside whatever is there. Reader processes read random keys.
//! [`crate::checker::siblings`] judges it.
//!
//! ## Workload H: maps
//!
//! `keys` maps in keyspace `profiles` (`MERGE map`, N=3, R=2, W=2), each of [`MAP_FIELDS`]
//! fields. Writer processes set a random field of a random map to a globally unique value
//! (`HSET`, which reads the map at R and stamps past what it saw); reader processes read whole
//! maps (`HGETALL`). Each field is a last-writer-wins register: [`crate::checker::map`]
//! judges every field as a register read and written by many processes.
//!
//! ## Workload L: linearizable registers
//!
//! `keys` registers in keyspace `regs` (primary-backup, N=3: with five nodes, two of them are
//! not voters and forward every request). Writer processes write globally unique values, or
//! (half the time, once the key was written) compare-and-set from the value most recently
//! written to the key to a new unique value; reader processes read random registers (GET).
//! Every operation goes through a random node.
//!
//! ## Workload B: bank transfers
//!
//! `keys` accounts in keyspace `bank` (primary-backup). A setup transaction first gives every
//! account [`BANK_INITIAL_BALANCE`] (guarded by watches at version 0, so a retry after an
//! unknown outcome cannot apply twice); the other processes start once it is acknowledged.
//! Transferrer processes then move 1 to 20 between two random accounts the way a Redis client
//! does: `WATCH` both accounts (reading their balances and versions), and if the source holds
//! enough, `MULTI`/`DECRBY`/`INCRBY`/`EXEC` guarded by those versions (aborted, and so `fail`,
//! if either account changed in between). Reader processes read every balance at once (one
//! `WATCH` of every account: one linearizable snapshot).
//!
//! All six end like the register workload: final heal, settle, then one read of every key through
//! every node (whose read repair makes every replica equal), then a snapshot of every replica.
//!
//! ## Multi-leader workloads: MC, MN, MR
//!
//! Run in a cluster of several regions ([`crate::RegionOptions`]), each on a multi-leader
//! keyspace (one Raft group of N=3 per region; a write is acknowledged once durable in its own
//! region, other regions learn it asynchronously). Every process lives in one region, the
//! processes spread evenly over the regions, and each operation goes through a random node of
//! the process's region (a user's session stays in its region; a remove therefore runs where
//! the add it removes was acknowledged).
//!
//! - **MC, carts** (`mlcart`, `MERGE set`): as workload S, and in addition adders often
//!   ([`READD_PROBABILITY`]) *re-add* an element that some add of the same cart saw
//!   acknowledged and no process has started to remove, so that a re-add in one region races a
//!   remove of the same element in another ([`crate::checker::cart`] judges it). A process
//!   may remove an element it re-added, too.
//! - **MN, counters** (`mlcount`, `MERGE counter`): as workload C.
//! - **MR, registers** (`mlreg`, `MERGE lww`): writers SET globally unique values, readers GET;
//!   concurrent writes in different regions conflict and all but one are discarded, which the
//!   regions must count ([`crate::checker::regional::check_lww_discards`]).

use crate::history::{EventType, ProcessId};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;
use triarch_core::hash::mix64;
use triarch_core::{DetRng, Instant, KeyspaceConfig, KeyspaceSettings, MergePolicy, Model, NodeId};

/// Which CRDT workload a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MergedWorkload {
    /// Workload S: adds and removes on `set` keys.
    Set,
    /// Workload C: increments of `counter` keys.
    Counter,
    /// Workload V: reads and context-carrying writes of `siblings` keys.
    Siblings,
    /// Workload H: field writes and whole reads of `map` keys.
    Map,
    /// Workload L: reads, writes and compare-and-sets of primary-backup registers.
    Registers,
    /// Workload B: transfers between primary-backup accounts with WATCH/MULTI/EXEC.
    Bank,
    /// Workload MC: carts (adds, re-adds, removes) on a multi-leader `set` keyspace.
    MlCart,
    /// Workload MN: increments of a multi-leader `counter` keyspace.
    MlCounter,
    /// Workload MR: writes of unique values to a multi-leader `lww` keyspace.
    MlRegisters,
    /// Workload MB: transfers as a client without transactions does them (read both
    /// balances, then SET both) on a multi-leader `lww` keyspace. Added for the explorer:
    /// last-writer-wins loses updates, and this is where it shows.
    MlBank,
    /// Workload LB: the same read-then-write transfers on a leaderless `lww` keyspace.
    LwwBank,
    /// Workload LR: writes of unique values to a leaderless `lww` keyspace (the explorer's
    /// custom mix on leaderless).
    LwwRegisters,
    /// Workload MK: transfers on a multi-leader `counter` keyspace: read the source's balance
    /// (its counter plus [`COUNTER_BANK_INITIAL_BALANCE`]), and if it covers the amount,
    /// increment the source by minus the amount and the destination by the amount. Nothing is
    /// lost, but two regions may both spend what one balance held.
    MlCounterBank,
}

/// Workload MK: every account's balance before any transfer (a counter at zero).
pub const COUNTER_BANK_INITIAL_BALANCE: i64 = 20;

/// Every account's balance after workload B's setup.
pub const BANK_INITIAL_BALANCE: i64 = 100;

/// Workloads MB and LB store `write * BALANCE_WRITE_BASE + balance` in an account: the write
/// (unique over the run, 0 for "never written") names the version a read returned, so that a
/// write's parent (the version its transfer read) is known; balances stay below the base.
pub const BALANCE_WRITE_BASE: u64 = 1_000_000;

/// Workloads MB and LB: the stored value of write `write` setting `balance`.
pub fn balance_value(write: u64, balance: i64) -> u64 {
    assert!(
        (0..BALANCE_WRITE_BASE as i64).contains(&balance),
        "balance {balance} out of range"
    );
    write * BALANCE_WRITE_BASE + balance as u64
}

/// Workloads MB and LB: (write, balance) of what a read returned (`None`: never written, the
/// initial balance).
pub fn balance_of(value: Option<u64>) -> (u64, i64) {
    value.map_or((0, BANK_INITIAL_BALANCE), |v| {
        (v / BALANCE_WRITE_BASE, (v % BALANCE_WRITE_BASE) as i64)
    })
}

impl MergedWorkload {
    /// The workloads of the single-region runs (`tests/merged_seeds.rs`).
    pub const ALL: [MergedWorkload; 6] = [
        MergedWorkload::Set,
        MergedWorkload::Counter,
        MergedWorkload::Siblings,
        MergedWorkload::Map,
        MergedWorkload::Registers,
        MergedWorkload::Bank,
    ];

    /// The multi-leader workloads (`tests/multileader.rs`), run in several regions.
    pub const MULTI_LEADER: [MergedWorkload; 3] = [
        MergedWorkload::MlCart,
        MergedWorkload::MlCounter,
        MergedWorkload::MlRegisters,
    ];

    /// Whether the workload runs on a multi-leader keyspace.
    pub fn is_multileader(self) -> bool {
        Self::MULTI_LEADER.contains(&self)
            || matches!(self, MergedWorkload::MlBank | MergedWorkload::MlCounterBank)
    }

    /// Workloads MB and LB: read-then-write transfers between `lww` registers.
    pub fn is_lww_bank(self) -> bool {
        matches!(self, MergedWorkload::MlBank | MergedWorkload::LwwBank)
    }

    /// The keyspace the workload runs in (created on every node from its configuration).
    pub fn keyspace(self) -> KeyspaceConfig {
        let (name, merge) = match self {
            MergedWorkload::Set => ("cart", MergePolicy::Set),
            MergedWorkload::Counter => ("hits", MergePolicy::Counter),
            MergedWorkload::Siblings => ("docs", MergePolicy::Siblings),
            MergedWorkload::Map => ("profiles", MergePolicy::Map),
            MergedWorkload::LwwBank => ("llbank", MergePolicy::Lww),
            MergedWorkload::LwwRegisters => ("llreg", MergePolicy::Lww),
            MergedWorkload::MlCart
            | MergedWorkload::MlCounter
            | MergedWorkload::MlRegisters
            | MergedWorkload::MlBank
            | MergedWorkload::MlCounterBank => {
                let (name, merge) = match self {
                    MergedWorkload::MlCart => ("mlcart", MergePolicy::Set),
                    MergedWorkload::MlCounter => ("mlcount", MergePolicy::Counter),
                    MergedWorkload::MlBank => ("mlbank", MergePolicy::Lww),
                    MergedWorkload::MlCounterBank => ("mlcbank", MergePolicy::Counter),
                    _ => ("mlreg", MergePolicy::Lww),
                };
                // N=3 voters in every region.
                return KeyspaceConfig {
                    model: Model::MultiLeader,
                    merge,
                    ..KeyspaceConfig::leaderless(name)
                };
            }
            MergedWorkload::Registers | MergedWorkload::Bank => {
                let name = if self == MergedWorkload::Bank {
                    "bank"
                } else {
                    "regs"
                };
                return KeyspaceConfig::from_settings(
                    name,
                    Model::PrimaryBackup,
                    KeyspaceSettings::default(),
                    3,
                );
            }
        };
        KeyspaceConfig {
            merge,
            ..KeyspaceConfig::leaderless(name)
        }
    }

    /// The stored key of key number `key`.
    pub fn key_bytes(self, key: u64) -> Vec<u8> {
        format!("{}:k{key}", self.keyspace().name).into_bytes()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MergedWorkload::Set => "set",
            MergedWorkload::Counter => "counter",
            MergedWorkload::Siblings => "siblings",
            MergedWorkload::Map => "map",
            MergedWorkload::Registers => "registers",
            MergedWorkload::Bank => "bank",
            MergedWorkload::MlCart => "cart",
            MergedWorkload::MlCounter => "counter",
            MergedWorkload::MlRegisters => "lww",
            MergedWorkload::MlBank => "mlbank",
            MergedWorkload::LwwBank => "lwwbank",
            MergedWorkload::LwwRegisters => "lwwreg",
            MergedWorkload::MlCounterBank => "mlcbank",
        }
    }
}

impl fmt::Display for MergedWorkload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operation of a CRDT workload does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MergedFunction {
    /// SADD of `element` (unique over the whole run).
    SetAdd { element: u64 },
    /// SREM of `element`, which the same process added and saw acknowledged.
    SetRemove { element: u64 },
    /// SMEMBERS.
    SetRead,
    /// INCRBY `amount` (positive).
    CounterAdd { amount: i64 },
    /// GET of the counter.
    CounterRead,
    /// `TRIARCH.GETV`: the key's concurrent values and a context covering them.
    SiblingsRead,
    /// `TRIARCH.SETV` of `value` (unique over the whole run). `observed`: with the context of
    /// the same process's previous operation, an `ok` [`MergedFunction::SiblingsRead`] of the
    /// same key, so it supersedes the values that read returned; otherwise blind (an empty
    /// context: a new sibling).
    SiblingsWrite { value: u64, observed: bool },
    /// `HSET` of field `field` to `value` (unique over the whole run).
    MapSet { field: u8, value: u64 },
    /// `HGETALL`.
    MapRead,
    /// GET of a register.
    RegisterRead,
    /// SET of a register to `value` (unique over the whole run).
    RegisterWrite { value: u64 },
    /// TRIARCH.CAS of a register from `expected` to `new` (unique over the whole run).
    RegisterCas { expected: u64, new: u64 },
    /// Workload B's setup: every account to [`BANK_INITIAL_BALANCE`], if none was written.
    BankSetup,
    /// A snapshot of every balance.
    BankRead,
    /// `WATCH` of a transfer's two accounts, reading their balances and versions.
    BankPrepare { from: u64, to: u64, amount: i64 },
    /// `EXEC` of a transfer guarded by the versions its preparation read.
    BankTransfer {
        from: u64,
        to: u64,
        amount: i64,
        from_version: u64,
        to_version: u64,
    },
}

impl MergedFunction {
    pub fn is_read(self) -> bool {
        matches!(
            self,
            MergedFunction::SetRead
                | MergedFunction::CounterRead
                | MergedFunction::SiblingsRead
                | MergedFunction::MapRead
                | MergedFunction::RegisterRead
                | MergedFunction::BankRead
                | MergedFunction::BankPrepare { .. }
        )
    }

    /// Whether an `ok` completion carries a result (reads, and compare-and-sets: whether they
    /// wrote).
    pub fn has_result(self) -> bool {
        self.is_read()
            || matches!(
                self,
                MergedFunction::RegisterCas { .. } | MergedFunction::BankSetup
            )
    }
}

impl fmt::Display for MergedFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergedFunction::SetAdd { element } => write!(f, "add {element}"),
            MergedFunction::SetRemove { element } => write!(f, "remove {element}"),
            MergedFunction::SetRead => f.write_str("read"),
            MergedFunction::CounterAdd { amount } => write!(f, "incr {amount}"),
            MergedFunction::CounterRead | MergedFunction::RegisterRead => f.write_str("read"),
            MergedFunction::SiblingsRead => f.write_str("getv"),
            MergedFunction::MapSet { field, value } => write!(f, "hset f{field} {value}"),
            MergedFunction::MapRead => f.write_str("hgetall"),
            MergedFunction::SiblingsWrite { value, observed } => {
                let how = if *observed { "with context" } else { "blind" };
                write!(f, "setv {value} {how}")
            }
            MergedFunction::RegisterWrite { value } => write!(f, "write {value}"),
            MergedFunction::RegisterCas { expected, new } => write!(f, "cas {expected}->{new}"),
            MergedFunction::BankSetup => f.write_str("setup"),
            MergedFunction::BankRead => f.write_str("read all"),
            MergedFunction::BankPrepare { from, to, amount } => {
                write!(f, "watch {from} {to} for {amount}")
            }
            MergedFunction::BankTransfer {
                from, to, amount, ..
            } => write!(f, "transfer {amount} {from}->{to}"),
        }
    }
}

/// What an `ok` read returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReadResult {
    Members(BTreeSet<u64>),
    /// A counter never written reads as 0.
    Count(i128),
    /// The concurrent values of a `siblings` key (none: never written).
    Siblings(BTreeSet<u64>),
    /// A map's live fields and their values.
    Fields(BTreeMap<u8, u64>),
    /// A register's value (`None`: never written).
    Register(Option<u64>),
    /// Whether a compare-and-set wrote (for workload B's setup: whether this attempt set the
    /// accounts, rather than finding them set by an earlier attempt).
    Swapped(bool),
    /// Workload B's reads: (account, balance, version) per account read.
    Balances(Vec<(u64, i64, u64)>),
}

impl fmt::Display for ReadResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadResult::Members(m) | ReadResult::Siblings(m) => {
                let shown: Vec<String> = m.iter().map(u64::to_string).collect();
                write!(f, "{{{}}}", shown.join(" "))
            }
            ReadResult::Fields(m) => {
                let shown: Vec<String> = m.iter().map(|(k, v)| format!("f{k}={v}")).collect();
                write!(f, "{{{}}}", shown.join(" "))
            }
            ReadResult::Count(c) => write!(f, "{c}"),
            ReadResult::Register(None) => f.write_str("nil"),
            ReadResult::Register(Some(v)) => write!(f, "{v}"),
            ReadResult::Swapped(b) => write!(f, "{b}"),
            ReadResult::Balances(b) => {
                let shown: Vec<String> = b
                    .iter()
                    .map(|(a, balance, v)| format!("{a}:{balance}@{v}"))
                    .collect();
                write!(f, "[{}]", shown.join(" "))
            }
        }
    }
}

/// One event of a [`MergedHistory`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedEvent {
    pub index: usize,
    pub kind: EventType,
    pub process: ProcessId,
    pub f: MergedFunction,
    pub key: u64,
    /// An `ok` read's result.
    pub result: Option<ReadResult>,
    pub time: Instant,
    pub node: NodeId,
    pub error: Option<String>,
}

impl fmt::Display for MergedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        };
        let micros = self.time.as_micros();
        write!(
            f,
            "#{:<5} {:>4}.{:06}s {:<5} {:<6} key {:<3} {:<12} via {}",
            self.index,
            micros / 1_000_000,
            micros % 1_000_000,
            self.process.to_string(),
            kind,
            self.key,
            self.f.to_string(),
            self.node,
        )?;
        if let Some(r) = &self.result {
            write!(f, " -> {r}")?;
        }
        if let Some(e) = &self.error {
            write!(f, " ({e})")?;
        }
        Ok(())
    }
}

/// An operation: an invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedOp {
    pub process: ProcessId,
    pub f: MergedFunction,
    pub key: u64,
    pub node: NodeId,
    /// `Ok`, `Fail` or `Info`; never completed counts as `Info`.
    pub outcome: EventType,
    pub invoke_index: usize,
    pub complete_index: Option<usize>,
    pub result: Option<ReadResult>,
}

/// A history of a CRDT workload (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct MergedHistory {
    events: Vec<MergedEvent>,
    open: BTreeMap<ProcessId, usize>,
    final_phase_start: Option<usize>,
}

impl MergedHistory {
    pub fn new() -> Self {
        MergedHistory::default()
    }

    pub fn events(&self) -> &[MergedEvent] {
        &self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Records an invocation; returns its index. A process runs one operation at a time.
    pub fn invoke(
        &mut self,
        process: ProcessId,
        f: MergedFunction,
        key: u64,
        node: NodeId,
        time: Instant,
    ) -> usize {
        let index = self.events.len();
        let previous = self.open.insert(process, index);
        assert!(
            previous.is_none(),
            "{process} invoked while an operation was open"
        );
        self.push(MergedEvent {
            index,
            kind: EventType::Invoke,
            process,
            f,
            key,
            result: None,
            time,
            node,
            error: None,
        })
    }

    /// Records the completion of `process`'s open operation; `result` is kept for `ok` reads
    /// only.
    pub fn complete(
        &mut self,
        process: ProcessId,
        kind: EventType,
        result: Option<ReadResult>,
        time: Instant,
        error: Option<String>,
    ) -> usize {
        assert!(
            kind != EventType::Invoke,
            "a completion is ok, fail or info"
        );
        let invoke = self
            .open
            .remove(&process)
            .unwrap_or_else(|| panic!("{process} completed with no open operation"));
        let invocation = &self.events[invoke];
        assert!(time >= invocation.time, "completion before invocation");
        let result = if invocation.f.has_result() && kind == EventType::Ok {
            assert!(result.is_some(), "an ok read or cas has a result");
            result
        } else {
            None
        };
        let event = MergedEvent {
            index: self.events.len(),
            kind,
            process,
            f: invocation.f,
            key: invocation.key,
            result,
            time,
            node: invocation.node,
            error,
        };
        self.push(event)
    }

    /// Completes every open operation as `info`.
    pub fn close_open(&mut self, time: Instant, reason: &str) {
        let open: Vec<ProcessId> = self.open.keys().copied().collect();
        for process in open {
            let reason = Some(reason.to_string());
            self.complete(process, EventType::Info, None, time, reason);
        }
    }

    /// Marks the start of the final phase: reads invoked from here on are final reads.
    pub fn mark_final_phase(&mut self) {
        assert!(self.final_phase_start.is_none(), "one final phase");
        self.final_phase_start = Some(self.events.len());
    }

    pub fn final_phase_start(&self) -> Option<usize> {
        self.final_phase_start
    }

    fn push(&mut self, event: MergedEvent) -> usize {
        if let Some(last) = self.events.last() {
            assert!(event.time >= last.time, "history time goes forward");
        }
        let index = event.index;
        self.events.push(event);
        index
    }

    /// Every operation, in invocation order.
    pub fn ops(&self) -> Vec<MergedOp> {
        let mut ops: Vec<MergedOp> = Vec::new();
        let mut open: BTreeMap<ProcessId, usize> = BTreeMap::new();
        for e in &self.events {
            if e.kind == EventType::Invoke {
                open.insert(e.process, ops.len());
                ops.push(MergedOp {
                    process: e.process,
                    f: e.f,
                    key: e.key,
                    node: e.node,
                    outcome: EventType::Info,
                    invoke_index: e.index,
                    complete_index: None,
                    result: None,
                });
            } else {
                let i = open
                    .remove(&e.process)
                    .expect("completion of an invoked operation");
                let op = &mut ops[i];
                op.outcome = e.kind;
                op.complete_index = Some(e.index);
                op.result = e.result.clone();
            }
        }
        ops
    }

    /// (ok, fail, info), operations never completed counted as info.
    pub fn outcome_counts(&self) -> (u64, u64, u64) {
        let (mut ok, mut fail, mut info) = (0, 0, 0);
        for op in self.ops() {
            match op.outcome {
                EventType::Ok => ok += 1,
                EventType::Fail => fail += 1,
                _ => info += 1,
            }
        }
        (ok, fail, info)
    }

    /// A hash of every event, stable across platforms and releases.
    pub fn fingerprint(&self) -> u64 {
        let mut h = mix64(self.events.len() as u64 ^ 0x6d65_7267);
        let mut add = |x: u64| h = mix64(h ^ x);
        for e in &self.events {
            add(e.index as u64);
            add(e.kind as u64);
            add(e.process.0);
            let (tag, arg) = match e.f {
                MergedFunction::SetAdd { element } => (1, element),
                MergedFunction::SetRemove { element } => (2, element),
                MergedFunction::SetRead => (3, 0),
                MergedFunction::CounterAdd { amount } => (4, amount as u64),
                MergedFunction::CounterRead => (5, 0),
                MergedFunction::RegisterRead => (6, 0),
                MergedFunction::RegisterWrite { value } => (7, value),
                MergedFunction::RegisterCas { expected, new } => (8, expected << 32 ^ new),
                MergedFunction::SiblingsRead => (13, 0),
                MergedFunction::MapSet { field, value } => (15, value << 8 | u64::from(field)),
                MergedFunction::MapRead => (16, 0),
                MergedFunction::SiblingsWrite { value, observed } => {
                    (14, value << 1 | u64::from(observed))
                }
                MergedFunction::BankSetup => (9, 0),
                MergedFunction::BankRead => (10, 0),
                MergedFunction::BankPrepare { from, to, amount } => {
                    (11, from << 40 ^ to << 20 ^ amount as u64)
                }
                MergedFunction::BankTransfer {
                    from,
                    to,
                    amount,
                    from_version,
                    to_version,
                } => (
                    12,
                    mix64(from << 40 ^ to << 20 ^ amount as u64) ^ from_version << 32 ^ to_version,
                ),
            };
            add(tag);
            add(arg);
            add(e.key);
            match &e.result {
                None => add(u64::MAX),
                Some(ReadResult::Members(m)) => m.iter().for_each(|&x| add(x ^ 0x55)),
                Some(ReadResult::Siblings(m)) => m.iter().for_each(|&x| add(x ^ 0x33)),
                Some(ReadResult::Fields(m)) => m
                    .iter()
                    .for_each(|(&k, &v)| add(v << 8 ^ u64::from(k) ^ 0x11)),
                Some(ReadResult::Count(c)) => add(*c as u64),
                Some(ReadResult::Register(v)) => add(v.map_or(u64::MAX - 1, |v| v ^ 0x77)),
                Some(ReadResult::Swapped(b)) => add(u64::from(*b) + 0x99),
                Some(ReadResult::Balances(b)) => {
                    for (a, balance, v) in b {
                        add(*a);
                        add(*balance as u64);
                        add(*v);
                    }
                }
            }
            add(e.time.as_micros());
            add(u64::from(e.node.0));
            for b in e.error.iter().flat_map(|s| s.bytes()) {
                add(u64::from(b));
            }
        }
        h
    }

    /// The events about `key`, one per line, for failure reports.
    pub fn key_excerpt(&self, key: u64) -> String {
        let mut out = String::new();
        for e in self.events.iter().filter(|e| e.key == key) {
            out.push_str(&e.to_string());
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for MergedHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.events {
            if Some(e.index) == self.final_phase_start {
                writeln!(f, "--- final phase ---")?;
            }
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

// ---- the workload ----

/// How often an adder that owns an acknowledged element removes one instead of adding: often
/// enough that carts stay small (what a cart costs to merge grows with it) and that removes are
/// as common as adds once processes own elements.
const REMOVE_PROBABILITY: f64 = 0.4;
const CAS_PROBABILITY: f64 = 0.5;
/// Workload V: how often a write first reads the key and carries the read's context (else it
/// is blind and adds a sibling). Mostly observed, so siblings are created and resolved alike
/// and keys keep a handful of values.
pub const OBSERVED_WRITE_PROBABILITY: f64 = 0.7;
/// Workload H: fields per map (few, so that writers meet on the same field).
pub const MAP_FIELDS: u8 = 4;
/// Workload MC: how often an add re-adds an element of the cart instead of a fresh one.
pub const READD_PROBABILITY: f64 = 0.3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
    FinalReader,
    /// Workload B's setup transaction, retried until it is known to have applied.
    Setup,
}

#[derive(Clone, Debug)]
struct Process {
    role: Role,
    /// The region (index) whose nodes this process talks to (multi-leader workloads; 0 in the
    /// others, whose processes talk to any node).
    region: u32,
    /// Elements this process added, saw acknowledged and has not tried to remove: (key, element).
    owned: Vec<(u64, u64)>,
    /// The operation in flight: what it is, for `observe`.
    pending: Option<(MergedFunction, u64)>,
    /// Workload B: the transfer its last preparation found affordable, with the versions read.
    prepared: Option<MergedFunction>,
    /// Workloads MB and LB: the transfer in progress (from, to, amount, the balance of
    /// `from` once read), and the operations it issues next, in order.
    transfer: Option<(u64, u64, i64, Option<i64>)>,
    queued: Vec<(MergedFunction, u64)>,
}

/// The next operation a process issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlannedMergedOp {
    pub f: MergedFunction,
    pub key: u64,
    pub node_index: usize,
}

/// Generates the operations of workload S or C (see the module documentation).
pub(crate) struct MergedClients {
    pub workload: MergedWorkload,
    rng: DetRng,
    keys: u64,
    nodes: usize,
    /// Multi-leader workloads: node `i` (0-based) is in region `i % regions`.
    regions: u32,
    processes: BTreeMap<ProcessId, Process>,
    /// Workload MC: per cart, elements whose add some process saw acknowledged and that no
    /// process has started to remove (what a re-add picks from).
    live: BTreeMap<u64, Vec<u64>>,
    next_process: u64,
    next_element: u64,
    /// The value most recently written (or compare-and-set) to each register, as invoked.
    last_written: BTreeMap<u64, u64>,
    ops_budget: u64,
    ops_invoked: u64,
    think_max_micros: u64,
    /// The explorer's custom mix, when one replaces the workload's own shape.
    mix: Option<MixState>,
}

/// The explorer's custom workload shape ([`MergedClients::with_mix`]), for the register
/// workloads L, MR and LR: every process reads with probability `reads` and otherwise writes a
/// unique value; keys are drawn from a Zipf distribution of exponent `zipf` (0: uniform) over
/// the run's keys; processes are placed in regions in proportion to `region_weights` and talk
/// to their region's nodes; values are zero-padded to `value_bytes`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    pub reads: f64,
    pub zipf: f64,
    pub region_weights: Vec<f64>,
    pub value_bytes: usize,
    /// Client processes (each runs one operation at a time).
    pub processes: u64,
}

struct MixState {
    reads: f64,
    /// The cumulative probability of keys `0..=i`.
    key_cdf: Vec<f64>,
    value_bytes: usize,
}

/// Processes per region chosen by weight: process `i` of `n` goes to the first region whose
/// cumulative weight exceeds `(i + 0.5) / n` (every weight is relative to their sum).
pub fn mix_regions(weights: &[f64], processes: u64) -> Vec<u32> {
    let sum: f64 = weights.iter().sum();
    assert!(
        sum > 0.0 && weights.iter().all(|w| *w >= 0.0),
        "weights {weights:?}"
    );
    (0..processes)
        .map(|i| {
            let at = (i as f64 + 0.5) / processes as f64 * sum;
            let mut total = 0.0;
            weights
                .iter()
                .position(|w| {
                    total += w;
                    at < total
                })
                .unwrap_or(weights.len() - 1) as u32
        })
        .collect()
}

impl MergedClients {
    pub fn new(
        workload: MergedWorkload,
        keys: u64,
        nodes: usize,
        ops: u64,
        duration: Duration,
        rng: DetRng,
    ) -> Self {
        assert!(keys >= 1 && nodes >= 1 && ops >= 1);
        let mut c = MergedClients {
            workload,
            rng,
            keys,
            nodes,
            regions: 1,
            processes: BTreeMap::new(),
            live: BTreeMap::new(),
            next_process: 0,
            next_element: 1,
            last_written: BTreeMap::new(),
            ops_budget: ops,
            ops_invoked: 0,
            think_max_micros: 0,
            mix: None,
        };
        // More writers than readers: the checkers judge the final state above all.
        for _ in 0..keys * 2 {
            c.spawn(Role::Writer);
        }
        for _ in 0..keys {
            c.spawn(Role::Reader);
        }
        let mean = duration.as_micros() as u64 * c.processes.len() as u64 / ops;
        c.think_max_micros = (2 * mean).max(1);
        c
    }

    /// Multi-leader workloads: the nodes are in `regions` regions (node index `i` in region
    /// `i % regions`); the processes are spread over them round-robin.
    pub fn in_regions(mut self, regions: u32) -> Self {
        assert!(regions >= 1 && regions as usize <= self.nodes);
        self.regions = regions;
        for (i, process) in self.processes.values_mut().enumerate() {
            process.region = i as u32 % regions;
        }
        self
    }

    /// Replaces the processes with `mix.processes` mixed readers-writers placed in the
    /// `regions` regions by `mix.region_weights`, each talking to its own region's nodes.
    pub fn with_mix(mut self, mix: &Mix, regions: u32) -> Self {
        assert!(matches!(
            self.workload,
            MergedWorkload::Registers | MergedWorkload::MlRegisters | MergedWorkload::LwwRegisters
        ));
        assert!((0.0..=1.0).contains(&mix.reads) && mix.zipf >= 0.0 && mix.processes >= 1);
        assert_eq!(
            mix.region_weights.len(),
            regions as usize,
            "a weight per region"
        );
        // The same mean think time per operation over the whole run as before.
        let processes_before = self.processes.len() as u64;
        self.regions = regions;
        self.processes.clear();
        for region in mix_regions(&mix.region_weights, mix.processes) {
            self.spawn_in(Role::Writer, region);
        }
        let weights: Vec<f64> = (1..=self.keys)
            .map(|k| 1.0 / (k as f64).powf(mix.zipf))
            .collect();
        let sum: f64 = weights.iter().sum();
        let mut total = 0.0;
        let key_cdf = weights
            .iter()
            .map(|w| {
                total += w / sum;
                total
            })
            .collect();
        self.mix = Some(MixState {
            reads: mix.reads,
            key_cdf,
            value_bytes: mix.value_bytes,
        });
        let mean = self.think_max_micros / 2 * mix.processes / processes_before.max(1);
        self.think_max_micros = (2 * mean).max(1);
        self
    }

    /// The size (bytes) a written value is zero-padded to (0: none).
    pub fn value_bytes(&self) -> usize {
        self.mix.as_ref().map_or(0, |m| m.value_bytes)
    }

    /// The region (index) of the nodes process `id` talks to.
    #[cfg(test)]
    fn region_of(&self, id: ProcessId) -> Option<u32> {
        self.processes.get(&id).map(|p| p.region)
    }

    fn spawn(&mut self, role: Role) -> ProcessId {
        let region = (self.next_process % u64::from(self.regions)) as u32;
        self.spawn_in(role, region)
    }

    fn spawn_in(&mut self, role: Role, region: u32) -> ProcessId {
        let id = ProcessId(self.next_process);
        self.next_process += 1;
        let process = Process {
            role,
            region,
            owned: Vec::new(),
            pending: None,
            prepared: None,
            transfer: None,
            queued: Vec::new(),
        };
        self.processes.insert(id, process);
        id
    }

    pub fn start(&mut self) -> Vec<(ProcessId, Duration)> {
        if self.workload == MergedWorkload::Bank {
            // The setup first; everyone else once it is done.
            self.processes.clear();
            let setup = self.spawn(Role::Setup);
            return vec![(setup, self.think_time())];
        }
        let ids: Vec<ProcessId> = self.processes.keys().copied().collect();
        ids.into_iter().map(|p| (p, self.think_time())).collect()
    }

    /// The operation `id` is waiting for.
    pub fn pending_of(&self, id: ProcessId) -> Option<MergedFunction> {
        self.processes.get(&id)?.pending.map(|(f, _)| f)
    }

    pub fn think_time(&mut self) -> Duration {
        Duration::from_micros(self.rng.below(self.think_max_micros))
    }

    /// The next operation of `id`, or `None` when the budget is spent (or the process is gone).
    pub fn next_op(&mut self, id: ProcessId) -> Option<PlannedMergedOp> {
        let process = self.processes.get(&id)?;
        let role = process.role;
        // A transfer under way finishes past the budget (its second write is owed).
        if self.ops_invoked >= self.ops_budget && role != Role::Setup && process.queued.is_empty() {
            return None;
        }
        if let Some(mix) = &self.mix
            && role == Role::Writer
        {
            let read = self.rng.chance(mix.reads);
            let at = self.rng.unit_f64();
            let key = mix
                .key_cdf
                .partition_point(|&c| c < at)
                .min(mix.key_cdf.len() - 1) as u64;
            let f = if read {
                MergedFunction::RegisterRead
            } else {
                let value = self.next_element;
                self.next_element += 1;
                MergedFunction::RegisterWrite { value }
            };
            let region = self.processes[&id].region as usize;
            let regions = self.regions as usize;
            let in_region = (self.nodes - region).div_ceil(regions);
            let node_index = region + regions * self.rng.below(in_region as u64) as usize;
            let process = self.processes.get_mut(&id).expect("looked up above");
            process.pending = Some((f, key));
            self.ops_invoked += 1;
            return Some(PlannedMergedOp { f, key, node_index });
        }
        let node_index = if self.workload.is_multileader() {
            // A node of the process's region: index `region + k * regions`.
            let region = self.processes[&id].region as usize;
            let regions = self.regions as usize;
            let in_region = (self.nodes - region).div_ceil(regions);
            region + regions * self.rng.below(in_region as u64) as usize
        } else {
            self.rng.below(self.nodes as u64) as usize
        };
        let (f, key) = match (role, self.workload) {
            (Role::FinalReader, _) => return None,
            (Role::Setup, _) => (MergedFunction::BankSetup, 0),
            (Role::Reader, MergedWorkload::Bank) => (MergedFunction::BankRead, 0),
            (Role::Writer, MergedWorkload::Bank) => {
                let process = self.processes.get_mut(&id).expect("looked up above");
                match process.prepared.take() {
                    Some(transfer) => (transfer, 0),
                    None => {
                        let from = self.rng.below(self.keys);
                        let to = (from + 1 + self.rng.below(self.keys - 1)) % self.keys;
                        let amount = self.rng.between(1, 20) as i64;
                        (MergedFunction::BankPrepare { from, to, amount }, 0)
                    }
                }
            }
            (Role::Reader, MergedWorkload::Set | MergedWorkload::MlCart) => {
                (MergedFunction::SetRead, self.rng.below(self.keys))
            }
            (Role::Reader, MergedWorkload::Siblings) => {
                (MergedFunction::SiblingsRead, self.rng.below(self.keys))
            }
            (Role::Reader, MergedWorkload::Map) => {
                (MergedFunction::MapRead, self.rng.below(self.keys))
            }
            (Role::Writer, MergedWorkload::Map) => {
                let value = self.next_element;
                self.next_element += 1;
                let field = self.rng.below(u64::from(MAP_FIELDS)) as u8;
                let key = self.rng.below(self.keys);
                (MergedFunction::MapSet { field, value }, key)
            }
            (Role::Writer, MergedWorkload::Siblings) => {
                let process = self.processes.get_mut(&id).expect("looked up above");
                if let Some((_, key)) = process.queued.pop() {
                    // The write that follows its read, numbered now.
                    let value = self.next_element;
                    self.next_element += 1;
                    let observed = true;
                    (MergedFunction::SiblingsWrite { value, observed }, key)
                } else if self.rng.chance(OBSERVED_WRITE_PROBABILITY) {
                    (MergedFunction::SiblingsRead, self.rng.below(self.keys))
                } else {
                    let value = self.next_element;
                    self.next_element += 1;
                    let observed = false;
                    let key = self.rng.below(self.keys);
                    (MergedFunction::SiblingsWrite { value, observed }, key)
                }
            }
            (Role::Writer, MergedWorkload::MlCounterBank) => {
                let process = self.processes.get_mut(&id).expect("looked up above");
                if process.queued.is_empty() {
                    let from = self.rng.below(self.keys);
                    let to = (from + 1 + self.rng.below(self.keys - 1)) % self.keys;
                    let amount = self.rng.between(1, 20) as i64;
                    process.transfer = Some((from, to, amount, None));
                    (MergedFunction::CounterRead, from)
                } else {
                    process.queued.remove(0)
                }
            }
            (
                Role::Reader,
                MergedWorkload::Counter | MergedWorkload::MlCounter | MergedWorkload::MlCounterBank,
            ) => (MergedFunction::CounterRead, self.rng.below(self.keys)),
            (Role::Writer, MergedWorkload::Counter | MergedWorkload::MlCounter) => {
                let amount = self.rng.between(1, 10) as i64;
                (
                    MergedFunction::CounterAdd { amount },
                    self.rng.below(self.keys),
                )
            }
            (Role::Writer, MergedWorkload::MlBank | MergedWorkload::LwwBank) => {
                let process = self.processes.get_mut(&id).expect("looked up above");
                if process.queued.is_empty() {
                    let from = self.rng.below(self.keys);
                    let to = (from + 1 + self.rng.below(self.keys - 1)) % self.keys;
                    let amount = self.rng.between(1, 20) as i64;
                    process.transfer = Some((from, to, amount, None));
                    (MergedFunction::RegisterRead, from)
                } else {
                    let (f, key) = process.queued.remove(0);
                    match f {
                        MergedFunction::RegisterWrite { .. } => {
                            // The value names the write: numbered now, in invocation order.
                            let (_, balance) = balance_of(match f {
                                MergedFunction::RegisterWrite { value } => Some(value),
                                _ => None,
                            });
                            let write = self.next_element;
                            self.next_element += 1;
                            let value = balance_value(write, balance);
                            (MergedFunction::RegisterWrite { value }, key)
                        }
                        f => (f, key),
                    }
                }
            }
            (
                Role::Reader,
                MergedWorkload::Registers
                | MergedWorkload::MlRegisters
                | MergedWorkload::MlBank
                | MergedWorkload::LwwBank
                | MergedWorkload::LwwRegisters,
            ) => (MergedFunction::RegisterRead, self.rng.below(self.keys)),
            (Role::Writer, MergedWorkload::MlRegisters | MergedWorkload::LwwRegisters) => {
                let value = self.next_element;
                self.next_element += 1;
                (
                    MergedFunction::RegisterWrite { value },
                    self.rng.below(self.keys),
                )
            }
            (Role::Writer, MergedWorkload::Registers) => {
                let key = self.rng.below(self.keys);
                let new = self.next_element;
                self.next_element += 1;
                let f = match self.last_written.get(&key) {
                    Some(&expected) if self.rng.chance(CAS_PROBABILITY) => {
                        MergedFunction::RegisterCas { expected, new }
                    }
                    _ => MergedFunction::RegisterWrite { value: new },
                };
                self.last_written.insert(key, new);
                (f, key)
            }
            (Role::Writer, MergedWorkload::Set | MergedWorkload::MlCart) => {
                let process = self.processes.get_mut(&id).expect("looked up above");
                if !process.owned.is_empty() && self.rng.chance(REMOVE_PROBABILITY) {
                    let i = self.rng.below(process.owned.len() as u64) as usize;
                    let (key, element) = process.owned.swap_remove(i);
                    if let Some(live) = self.live.get_mut(&key) {
                        live.retain(|&e| e != element);
                    }
                    (MergedFunction::SetRemove { element }, key)
                } else if let Some((key, element)) = self.readd() {
                    (MergedFunction::SetAdd { element }, key)
                } else {
                    let element = self.next_element;
                    self.next_element += 1;
                    (
                        MergedFunction::SetAdd { element },
                        self.rng.below(self.keys),
                    )
                }
            }
        };
        let process = self.processes.get_mut(&id).expect("looked up above");
        assert!(
            process.pending.is_none(),
            "{id} issues one operation at a time"
        );
        process.pending = Some((f, key));
        self.ops_invoked += 1;
        Some(PlannedMergedOp { f, key, node_index })
    }

    /// `id`'s operation completed with `kind` (and `result`, for an `ok` read). Returns the
    /// processes that go on: `id` itself; after an `info`, a fresh process with the same role
    /// instead (`id` retires); after workload B's setup, every other process.
    pub fn completed(
        &mut self,
        id: ProcessId,
        kind: EventType,
        result: Option<&ReadResult>,
    ) -> Vec<ProcessId> {
        let process = self.processes.get_mut(&id).expect("a live process");
        let (f, key) = process.pending.take().expect("an operation was pending");
        match (f, kind) {
            (MergedFunction::SetAdd { element }, EventType::Ok) => {
                if !process.owned.contains(&(key, element)) {
                    process.owned.push((key, element));
                }
                if self.workload == MergedWorkload::MlCart {
                    let live = self.live.entry(key).or_default();
                    if !live.contains(&element) {
                        live.push(element);
                    }
                }
            }
            (MergedFunction::RegisterRead, EventType::Ok) if self.workload.is_lww_bank() => {
                let Some(ReadResult::Register(v)) = result else {
                    panic!("an ok register read has a value")
                };
                let (_, balance) = balance_of(*v);
                match process.transfer {
                    Some((from, to, amount, None)) if key == from => {
                        process.transfer = Some((from, to, amount, Some(balance)));
                        process.queued = vec![(MergedFunction::RegisterRead, to)];
                    }
                    Some((from, to, amount, Some(from_balance))) if key == to => {
                        process.transfer = None;
                        // The write numbers are drawn when the writes are invoked.
                        if from_balance >= amount {
                            process.queued = vec![
                                (
                                    MergedFunction::RegisterWrite {
                                        value: balance_value(0, from_balance - amount),
                                    },
                                    from,
                                ),
                                (
                                    MergedFunction::RegisterWrite {
                                        value: balance_value(0, balance + amount),
                                    },
                                    to,
                                ),
                            ];
                        }
                    }
                    _ => {}
                }
            }
            (MergedFunction::SiblingsRead, EventType::Ok) if process.role == Role::Writer => {
                // The value is numbered when the write is invoked.
                let observed = true;
                let f = MergedFunction::SiblingsWrite { value: 0, observed };
                process.queued = vec![(f, key)];
            }
            (MergedFunction::CounterRead, EventType::Ok)
                if self.workload == MergedWorkload::MlCounterBank =>
            {
                let Some(ReadResult::Count(c)) = result else {
                    panic!("an ok counter read has a count")
                };
                if let Some((from, to, amount, None)) = process.transfer
                    && key == from
                {
                    process.transfer = None;
                    if COUNTER_BANK_INITIAL_BALANCE as i128 + *c >= amount as i128 {
                        process.queued = vec![
                            (MergedFunction::CounterAdd { amount: -amount }, from),
                            (MergedFunction::CounterAdd { amount }, to),
                        ];
                    }
                }
            }
            (_, EventType::Fail | EventType::Info)
                if self.workload.is_lww_bank()
                    || self.workload == MergedWorkload::MlCounterBank =>
            {
                // The transfer is abandoned where it stands (after its first write, half done).
                process.transfer = None;
                process.queued.clear();
            }
            (MergedFunction::BankPrepare { from, to, amount }, EventType::Ok) => {
                if let Some(ReadResult::Balances(b)) = result
                    && let [(_, from_balance, from_version), (_, _, to_version)] = b.as_slice()
                    && *from_balance >= amount
                {
                    process.prepared = Some(MergedFunction::BankTransfer {
                        from,
                        to,
                        amount,
                        from_version: *from_version,
                        to_version: *to_version,
                    });
                }
            }
            _ => {}
        }
        match (kind, process.role) {
            (_, Role::FinalReader) => Vec::new(),
            (EventType::Ok, Role::Setup) => {
                // The accounts are set: the workload begins.
                self.processes.remove(&id);
                for _ in 0..self.keys * 2 {
                    self.spawn(Role::Writer);
                }
                for _ in 0..self.keys {
                    self.spawn(Role::Reader);
                }
                self.processes.keys().copied().collect()
            }
            (EventType::Info, role) => {
                let region = process.region;
                self.processes.remove(&id);
                vec![self.spawn_in(role, region)]
            }
            _ => vec![id],
        }
    }

    /// Workload MC, sometimes: a re-add, `(cart, element)` of an element of a random cart that
    /// some add saw acknowledged and no remove has been started for.
    fn readd(&mut self) -> Option<(u64, u64)> {
        if self.workload != MergedWorkload::MlCart || !self.rng.chance(READD_PROBABILITY) {
            return None;
        }
        let key = self.rng.below(self.keys);
        let count = self.live.get(&key).map_or(0, Vec::len);
        if count == 0 {
            return None;
        }
        let i = self.rng.below(count as u64) as usize;
        Some((key, self.live[&key][i]))
    }

    /// A process for one final read.
    pub fn final_reader(&mut self) -> ProcessId {
        self.spawn(Role::FinalReader)
    }

    /// A final read's operation.
    pub fn final_read(&mut self, id: ProcessId, key: u64) -> MergedFunction {
        let f = match self.workload {
            MergedWorkload::Set | MergedWorkload::MlCart => MergedFunction::SetRead,
            MergedWorkload::Siblings => MergedFunction::SiblingsRead,
            MergedWorkload::Map => MergedFunction::MapRead,
            MergedWorkload::Counter | MergedWorkload::MlCounter | MergedWorkload::MlCounterBank => {
                MergedFunction::CounterRead
            }
            MergedWorkload::Registers
            | MergedWorkload::MlRegisters
            | MergedWorkload::MlBank
            | MergedWorkload::LwwBank
            | MergedWorkload::LwwRegisters => MergedFunction::RegisterRead,
            MergedWorkload::Bank => MergedFunction::BankRead,
        };
        self.processes.get_mut(&id).expect("a final reader").pending = Some((f, key));
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_name_only_elements_the_process_saw_acknowledged() {
        let rng = DetRng::seed_from_u64(3);
        let mut c = MergedClients::new(
            MergedWorkload::Set,
            2,
            3,
            10_000,
            Duration::from_secs(10),
            rng,
        );
        let writer = ProcessId(0);
        let mut added = BTreeSet::new();
        for _ in 0..500 {
            let op = c.next_op(writer).unwrap();
            match op.f {
                MergedFunction::SetAdd { element } => {
                    assert!(added.insert((op.key, element)), "elements are unique");
                    c.completed(writer, EventType::Ok, None);
                }
                MergedFunction::SetRemove { element } => {
                    assert!(added.remove(&(op.key, element)), "removes what it added");
                    c.completed(writer, EventType::Ok, None);
                }
                other => panic!("a writer issued {other}"),
            }
        }
        // A failed add is never removed later.
        let op = loop {
            let op = c.next_op(writer).unwrap();
            if matches!(op.f, MergedFunction::SetAdd { .. }) {
                break op;
            }
            c.completed(writer, EventType::Ok, None);
        };
        c.completed(writer, EventType::Fail, None);
        assert!(
            c.processes[&writer]
                .owned
                .iter()
                .all(|&(_, e)| MergedFunction::SetAdd { element: e } != op.f)
        );
        // After info the process retires.
        c.next_op(writer).unwrap();
        let fresh = c.completed(writer, EventType::Info, None)[0];
        assert_ne!(fresh, writer);
        assert!(c.processes[&fresh].owned.is_empty());
    }

    #[test]
    fn multileader_processes_stay_in_their_region_and_re_add_live_elements() {
        let rng = DetRng::seed_from_u64(5);
        let duration = Duration::from_secs(10);
        let mut c =
            MergedClients::new(MergedWorkload::MlCart, 2, 9, 100_000, duration, rng).in_regions(3);
        let ids: Vec<ProcessId> = c.processes.keys().copied().collect();
        let regions: BTreeSet<u32> = ids.iter().filter_map(|&p| c.region_of(p)).collect();
        assert_eq!(regions.len(), 3, "processes in every region");
        let (mut added, mut readds) = (BTreeSet::new(), 0);
        for _ in 0..200 {
            for &p in &ids {
                let region = c.region_of(p).expect("a process");
                let op = c.next_op(p).expect("budget left");
                assert_eq!(op.node_index as u32 % 3, region, "{p} talks to its region");
                if let MergedFunction::SetAdd { element } = op.f
                    && !added.insert((op.key, element))
                {
                    readds += 1;
                    assert!(c.live[&op.key].contains(&element), "re-adds a live element");
                }
                c.completed(p, EventType::Ok, None);
            }
        }
        assert!(readds > 50, "{readds} re-adds");
    }

    #[test]
    fn histories_pair_events_and_fingerprint_them() {
        let mut h = MergedHistory::new();
        let p = ProcessId(1);
        h.invoke(
            p,
            MergedFunction::SetAdd { element: 7 },
            0,
            NodeId(1),
            Instant(1),
        );
        h.complete(p, EventType::Ok, None, Instant(2), None);
        h.invoke(p, MergedFunction::SetRead, 0, NodeId(2), Instant(3));
        h.complete(
            p,
            EventType::Ok,
            Some(ReadResult::Members(BTreeSet::from([7]))),
            Instant(4),
            None,
        );
        let ops = h.ops();
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[1].result,
            Some(ReadResult::Members(BTreeSet::from([7])))
        );
        assert_eq!(h.outcome_counts(), (2, 0, 0));
        let mut other = h.clone();
        other.invoke(p, MergedFunction::SetRead, 0, NodeId(2), Instant(5));
        assert_ne!(h.fingerprint(), other.fingerprint());
        assert!(h.key_excerpt(0).contains("add 7"));
    }
}
