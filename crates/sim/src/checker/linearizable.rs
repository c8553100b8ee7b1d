//! The linearizability checker for registers (the primary-backup model's promise).
//!
//! ## The workload it judges
//!
//! Each key is a register of `u64` values that starts absent. Processes read it, write it and
//! compare-and-set it ([`RegisterCall`]); each operation is recorded with its invocation time
//! and its outcome ([`OpOutcome`]): `ok` with its completion time and result, `fail` (it
//! certainly did not happen) or `info` (unknown: it may take effect at any time after its
//! invocation, or never). Times are any real-time stamps, microseconds or the indices of a
//! history's events; only their order matters. Values need not be unique, but unique values
//! make violations easier to find and to read.
//!
//! The input types are this module's own, so that the simulator's histories and the real-process
//! fault suite's can both be adapted to them; keys are independent (linearizability is local,
//! Herlihy & Wing 1990, §3.2), so the caller splits a history by key and [`check_keys`] checks
//! each register on its own.
//!
//! ## The rule
//!
//! The history of one key is **linearizable** (Herlihy & Wing 1990) if there is a total order
//! of its operations that
//!
//! 1. contains every `ok` operation, no `fail` operation, and any subset of the `info` ones;
//! 2. respects real time: if `a` completed before `b` was invoked, `a` comes first. Two events at
//!    the same time are taken as concurrent (the coarser reading, so clock granularity cannot
//!    manufacture a violation); an `info` operation never completes;
//! 3. is a legal sequential execution of the register from absent, in which every `ok`
//!    operation returns what it returned: a read the current value, a write `Written`, a
//!    compare-and-set `true` exactly when the value equalled `expected` (then it stores `new`).
//!
//! An `info` read constrains nothing and is dropped. An `info` write or compare-and-set is kept
//! with an infinite completion time: it may be placed anywhere after its invocation (a
//! compare-and-set placed where `expected` differs changes nothing), and one that never took
//! effect is placed after everything else, where it is invisible.
//!
//! ## The algorithm
//!
//! Wing & Gong's search with Lowe's memoisation ("Testing for linearizability", 2017), as
//! Porcupine implements it: the invocations and completions of the `ok` operations, ordered by
//! time, form a doubly linked list. Walking it from the front, the search linearizes the first
//! invocation whose operation the register accepts in its current state (removing its
//! invocation and completion from the list), and backtracks when it meets the completion of an
//! operation it has not yet linearized: that operation would have to take effect later than it
//! completed. It succeeds when every `ok` operation is linearized (the `info` ones left over go
//! at the end, or nowhere) and fails when it must backtrack from the empty sequence. Every state
//! reached is remembered and not explored twice.
//!
//! `info` operations, which may be placed at any point after their invocation or never, are
//! what makes such searches explode. They wait in a list of their own, tried after the `ok`
//! candidates, and four sound reductions apply (each keeps at least one linearization of every
//! linearizable history):
//!
//! - **memo by inclusion**: a state is (`ok` operations placed, value, info operations placed),
//!   and one is skipped if a remembered state has the same first two with fewer info operations
//!   placed: an info operation never has to be placed, so whatever finishes from the larger
//!   state finishes from the smaller one;
//! - **indistinguishable values are one**: a value that no `ok` read returned and no
//!   compare-and-set expects behaves exactly like any other such value, so the memo merges them;
//! - **symmetry**: info operations with the same effect (writes of one value or of
//!   indistinguishable values; compare-and-sets of one expected and one new value) are placed
//!   in invocation order, the earliest unplaced first;
//! - **placed only when needed**: an info operation is placed only where it changes the value
//!   and the very next operation could not be placed without it (an `ok` operation whose step
//!   fails in the value before it, or an info compare-and-set expecting its value). Any
//!   linearization can be rewritten that way: an info operation followed by one that does not
//!   need it either swaps with it (a read or a failed compare-and-set, which leave the value
//!   alone) or is overwritten by it and dropped.
//!
//! The memo compares sets in full (a 64-bit Zobrist fingerprint only orders them), so it never
//! confuses two states. The unit tests compare the search with a brute-force enumeration of
//! every order of every subset on thousands of random small histories.
//!
//! ## Verdicts
//!
//! [`Verdict::NotLinearizable`] gives the shortest failing prefix: the search remembers the
//! latest completion at which it had to backtrack. Every branch stopped there or earlier, so the
//! history up to that completion has no linearization, while the branch that reached it had
//! placed everything completed before: the operation completing there is the one that cannot be
//! placed. The verdict names it, with that branch's last operation and the register's value.
//! [`Verdict::Undecided`] means the search stopped after [`Limits::states_max`] states: **the
//! caller must treat it as a failure**, since a violation was not ruled out.
//!
//! ## Cost
//!
//! Memory grows with the states remembered, some 300-400 bytes each, so the default budget of
//! one million states bounds a key's search to about 400 MB (and some seconds). Measured on
//! generated histories of 5,000 operations by 5 processes with unique values and 2-5% of them
//! `info`: 10,000-50,000 states when linearizable; 50,000-400,000 for a violation near the end,
//! since everything reachable before it must be exhausted. Values drawn from a few (as in
//! Jepsen's register workloads) make states coincide and cost less; many `info` operations whose
//! values are read or expected by some compare-and-set cost more.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use triarch_core::hash::mix64;

pub const NAME: &str = "linearizable register";

/// The number of states [`Limits::default`] lets one key's search remember.
pub const STATES_MAX_DEFAULT: usize = 1_000_000;

/// What an operation asks of the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterCall {
    Read,
    Write(u64),
    /// Stores `new` if the value is `expected` (`None`: the key is absent).
    Cas {
        expected: Option<u64>,
        new: u64,
    },
}

/// What an `ok` operation returned; its variant must match the call's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterResult {
    /// The value read (`None`: absent).
    Read(Option<u64>),
    Written,
    /// Whether the compare-and-set stored its value.
    Cas(bool),
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// It happened, at some instant between its invocation and `completed_us`.
    Ok {
        completed_us: u64,
        result: RegisterResult,
    },
    /// It certainly did not happen.
    Fail,
    /// Unknown: it may take effect at any time after its invocation, forever, or never.
    Info,
}

/// One operation on one register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterOp {
    pub process: u64,
    pub call: RegisterCall,
    pub invoked_us: u64,
    pub outcome: OpOutcome,
}

impl RegisterOp {
    pub fn ok(
        process: u64,
        call: RegisterCall,
        invoked_us: u64,
        completed_us: u64,
        result: RegisterResult,
    ) -> Self {
        RegisterOp {
            process,
            call,
            invoked_us,
            outcome: OpOutcome::Ok {
                completed_us,
                result,
            },
        }
    }

    pub fn fail(process: u64, call: RegisterCall, invoked_us: u64) -> Self {
        RegisterOp {
            process,
            call,
            invoked_us,
            outcome: OpOutcome::Fail,
        }
    }

    pub fn info(process: u64, call: RegisterCall, invoked_us: u64) -> Self {
        RegisterOp {
            process,
            call,
            invoked_us,
            outcome: OpOutcome::Info,
        }
    }
}

struct Value(Option<u64>);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("absent"),
        }
    }
}

impl fmt::Display for RegisterCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RegisterCall::Read => f.write_str("read"),
            RegisterCall::Write(v) => write!(f, "write {v}"),
            RegisterCall::Cas { expected, new } => {
                write!(f, "cas {} -> {new}", Value(expected))
            }
        }
    }
}

impl fmt::Display for RegisterOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} by process {}, invoked at {} us",
            self.call, self.process, self.invoked_us
        )?;
        match self.outcome {
            OpOutcome::Ok {
                completed_us,
                result,
            } => {
                write!(f, ", completed ok at {completed_us} us")?;
                match result {
                    RegisterResult::Read(v) => write!(f, ", returned {}", Value(v)),
                    RegisterResult::Written => Ok(()),
                    RegisterResult::Cas(stored) => write!(f, ", returned {stored}"),
                }
            }
            OpOutcome::Fail => f.write_str(", failed"),
            OpOutcome::Info => f.write_str(", outcome unknown"),
        }
    }
}

/// Bounds on one key's search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The states (partial linearizations the memo let through) after which the search gives
    /// up with [`Verdict::Undecided`].
    pub states_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            states_max: STATES_MAX_DEFAULT,
        }
    }
}

/// What the checker concluded about one register's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable {
        states_explored: usize,
    },
    NotLinearizable(Box<Counterexample>),
    /// The search budget ran out before a linearization was found or ruled out. **Treat as a
    /// failure**: a violation was not ruled out.
    Undecided {
        states_explored: usize,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable { states_explored } => {
                write!(f, "linearizable ({states_explored} states explored)")
            }
            Verdict::NotLinearizable(counterexample) => {
                write!(f, "not linearizable: {counterexample}")
            }
            Verdict::Undecided { states_explored } => write!(
                f,
                "undecided: the search budget ran out after {states_explored} states, so a \
                 violation was not ruled out (a failure)"
            ),
        }
    }
}

/// Why a history is not linearizable: the shortest failing prefix of the history ends with the
/// completion of `op`, which no linearization of what came before can place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    /// The operation that could not be placed, and its index in the checked slice.
    pub op_index: usize,
    pub op: RegisterOp,
    /// The first partial linearization the search found that placed everything completed
    /// before `op`: how many `ok` operations it ordered (of how many in the history), its last
    /// operation with its index (`None`: it was empty), and the register's value after it.
    pub ok_ops_linearized: usize,
    pub ok_ops_total: usize,
    pub last_linearized: Option<(usize, RegisterOp)>,
    pub value: Option<u64>,
    pub states_explored: usize,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "op #{} ({}) cannot be placed: the history up to its completion has no \
             linearization. The first linearization found of what completed before it orders \
             {} of the {} ok operations",
            self.op_index, self.op, self.ok_ops_linearized, self.ok_ops_total
        )?;
        if let Some((index, last)) = &self.last_linearized {
            write!(f, ", ending with op #{index} ({last}),")?;
        }
        write!(
            f,
            " and leaves the register {}; neither from there nor from any other such \
             linearization can op #{} return what it returned before it completed ({} states \
             explored)",
            Value(self.value),
            self.op_index,
            self.states_explored
        )
    }
}

/// Checks one register's history (all of one key's operations, in any order) against the rule
/// in the module documentation.
///
/// # Panics
///
/// If an `ok` operation completed before it was invoked or its result does not match its call:
/// that is a bug in the caller's adapter, not in the system.
pub fn check(ops: &[RegisterOp], limits: &Limits) -> Verdict {
    Search::new(ops).run(limits)
}

/// Checks every key's history with [`check`], each with its own budget, in key order. Returns
/// every key's verdict, or the first key whose verdict is not [`Verdict::Linearizable`] (the
/// keys after it are not checked).
pub fn check_keys<K: Ord + Clone>(
    keys: &BTreeMap<K, Vec<RegisterOp>>,
    limits: &Limits,
) -> Result<BTreeMap<K, Verdict>, (K, Verdict)> {
    let mut verdicts = BTreeMap::new();
    for (key, ops) in keys {
        let verdict = check(ops, limits);
        if !verdict.is_linearizable() {
            return Err((key.clone(), verdict));
        }
        verdicts.insert(key.clone(), verdict);
    }
    Ok(verdicts)
}

/// The register's sequential specification: the value after `call` applied to `value`, or
/// `None` if `call` cannot return `result` there. `result` is `None` for an `info` operation,
/// which may return anything.
fn step(
    value: Option<u64>,
    call: RegisterCall,
    result: Option<RegisterResult>,
) -> Option<Option<u64>> {
    match (call, result) {
        (RegisterCall::Read, Some(RegisterResult::Read(read))) => (read == value).then_some(value),
        (RegisterCall::Read, None) => Some(value),
        (RegisterCall::Write(v), Some(RegisterResult::Written) | None) => Some(Some(v)),
        (RegisterCall::Cas { expected, new }, Some(RegisterResult::Cas(stored))) => {
            match (expected == value, stored) {
                (true, true) => Some(Some(new)),
                (false, false) => Some(value),
                _ => None,
            }
        }
        (RegisterCall::Cas { expected, new }, None) => {
            Some(if expected == value { Some(new) } else { value })
        }
        (call, Some(result)) => panic!("adapter bug: {call} returned {result:?}"),
    }
}

/// The part of a remembered state that must match exactly: the set of `ok` operations
/// linearized, stored canonically (leading all-ones words counted, trailing zero words dropped)
/// so that equal keys mean equal sets; the register's value up to indistinguishability (`None`:
/// a value no operation can tell apart from another such value); and `needed`, likewise. The
/// fingerprint comes first so that comparisons rarely reach the words.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct CacheKey {
    fingerprint: u64,
    value: Option<Option<u64>>,
    needed: Option<Option<Option<u64>>>,
    full_words: usize,
    rest: Box<[u64]>,
}

impl CacheKey {
    fn new(
        fingerprint: u64,
        value: Option<Option<u64>>,
        needed: Option<Option<Option<u64>>>,
        ok_linearized: &[u64],
    ) -> Self {
        let full_words = ok_linearized.iter().take_while(|w| **w == u64::MAX).count();
        let end = ok_linearized
            .iter()
            .rposition(|w| *w != 0)
            .map_or(full_words, |i| (i + 1).max(full_words));
        CacheKey {
            fingerprint,
            value,
            needed,
            full_words,
            rest: ok_linearized[full_words..end].into(),
        }
    }
}

/// Whether the set `small` is included in `large`; missing trailing words are empty.
fn is_subset(small: &[u64], large: &[u64]) -> bool {
    small
        .iter()
        .enumerate()
        .all(|(i, s)| s & !large.get(i).copied().unwrap_or(0) == 0)
}

/// `bits` without its trailing empty words.
fn trimmed(bits: &[u64]) -> &[u64] {
    &bits[..bits.iter().rposition(|w| *w != 0).map_or(0, |i| i + 1)]
}

fn set_bit(bits: &mut [u64], i: usize, on: bool) {
    if on {
        bits[i / 64] |= 1 << (i % 64);
    } else {
        bits[i / 64] &= !(1 << (i % 64));
    }
}

fn zobrist(i: usize) -> u64 {
    mix64((i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15))
}

/// A doubly linked list over nodes `0..n` with sentinels `n` (head) and `n + 1` (tail), from
/// which nodes are unlinked and relinked in last-out-first-in order (dancing links).
struct Links {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    tail: usize,
}

impl Links {
    fn new(n: usize, order: &[usize]) -> Self {
        let (head, tail) = (n, n + 1);
        let mut links = Links {
            next: vec![tail; n + 2],
            prev: vec![head; n + 2],
            head,
            tail,
        };
        let mut previous = head;
        for &node in order {
            links.next[previous] = node;
            links.prev[node] = previous;
            previous = node;
        }
        links.next[previous] = tail;
        links.prev[tail] = previous;
        links
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }
}

/// An operation on the search's stack.
#[derive(Clone, Copy)]
enum Placed {
    Ok(usize),
    Info(usize),
}

/// Where the search is looking for the next operation to place.
#[derive(Clone, Copy)]
enum Cursor {
    /// At a node of the ok list.
    Ok(usize),
    /// At a node of the info list, taking only invocations before `bound`.
    Info(usize),
}

/// The furthest point reached: the latest completion (by its position in time order) at which
/// the search had to backtrack, as first met.
struct Furthest {
    position: usize,
    blocked: usize,
    ok_ops_linearized: usize,
    last: Option<Placed>,
    value: Option<u64>,
}

/// The search over one key.
///
/// The `ok` operations are numbered `0..ok.len()` and sit in one list: node `2j` is the
/// invocation of operation `j`, node `2j + 1` its completion, in time order. The kept `info`
/// operations are numbered `0..info.len()` and sit in another list of their invocations (they
/// never complete). At each step the candidates are the invocations that precede the first
/// completion still in the ok list: the ok ones are tried first, then the info ones, so that a
/// state with fewer info operations placed is usually met before its supersets.
///
/// Memo: a state is skipped if a remembered state has the same ok set, an indistinguishable
/// value and the same `needed` (below) with a subset of its info set. That is sound because an
/// info operation never has to be placed: any way to finish from the larger state finishes from
/// the smaller one too (by induction on the length of the finish, whether the smaller state was
/// explored and failed or is an ancestor still being explored). `needed` is part of the key
/// because it restricts what may come next.
///
/// Symmetry: info operations with the same effect form a class, and only the earliest invoked
/// unplaced member of a class is tried. Once invoked they are interchangeable, so any
/// linearization can be rewritten to use a class's members in invocation order.
///
/// Normal form: after an info operation, `needed` holds the value before it, and the next
/// operation must be one that could not be placed in that value (module docs).
struct Search<'a> {
    ops: &'a [RegisterOp],
    /// Input indices of the ok and kept info operations.
    ok: Vec<usize>,
    info: Vec<usize>,
    ok_list: Links,
    info_list: Links,
    /// The position in time order of each ok-list node and of each info invocation.
    ok_position: Vec<usize>,
    info_position: Vec<usize>,
    /// The values some operation can tell apart: read by an ok read, or expected by a
    /// compare-and-set (`None`: absent).
    observed: BTreeSet<Option<u64>>,
    /// For each info operation, the previous member of its class in invocation order.
    class_previous: Vec<Option<usize>>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [RegisterOp]) -> Self {
        let (mut ok, mut info) = (Vec::new(), Vec::new());
        let mut observed = BTreeSet::new();
        for (index, op) in ops.iter().enumerate() {
            if let RegisterCall::Cas { expected, .. } = op.call {
                observed.insert(expected);
            }
            match op.outcome {
                OpOutcome::Ok {
                    completed_us,
                    result,
                } => {
                    assert!(
                        completed_us >= op.invoked_us,
                        "adapter bug: op #{index} ({op}) completed before it was invoked"
                    );
                    let matches = matches!(
                        (op.call, result),
                        (RegisterCall::Read, RegisterResult::Read(_))
                            | (RegisterCall::Write(_), RegisterResult::Written)
                            | (RegisterCall::Cas { .. }, RegisterResult::Cas(_))
                    );
                    assert!(
                        matches,
                        "adapter bug: op #{index}: {} returned {result:?}",
                        op.call
                    );
                    if let RegisterResult::Read(v) = result {
                        observed.insert(v);
                    }
                    ok.push(index);
                }
                // An info read changes nothing and returned nothing we know.
                OpOutcome::Info if op.call != RegisterCall::Read => info.push(index),
                OpOutcome::Info | OpOutcome::Fail => {}
            }
        }

        // Events by time; at equal times invocations come first (concurrent), and the rest of
        // the tie is broken by kind and number, so the order is deterministic.
        const OK_CALL: u8 = 0;
        const INFO_CALL: u8 = 1;
        const OK_RETURN: u8 = 2;
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ok.len() + info.len());
        for (j, &index) in ok.iter().enumerate() {
            let OpOutcome::Ok { completed_us, .. } = ops[index].outcome else {
                unreachable!("ok operations only")
            };
            events.push((ops[index].invoked_us, OK_CALL, 2 * j));
            events.push((completed_us, OK_RETURN, 2 * j + 1));
        }
        for (i, &index) in info.iter().enumerate() {
            events.push((ops[index].invoked_us, INFO_CALL, i));
        }
        events.sort_unstable();
        let mut ok_position = vec![0; 2 * ok.len()];
        let mut info_position = vec![0; info.len()];
        let (mut ok_order, mut info_order) = (Vec::new(), Vec::new());
        for (position, &(_, kind, node)) in events.iter().enumerate() {
            if kind == INFO_CALL {
                info_position[node] = position;
                info_order.push(node);
            } else {
                ok_position[node] = position;
                ok_order.push(node);
            }
        }
        let value_key = |v: Option<u64>| observed.contains(&v).then_some(v);
        // An info operation's effect, as far as any operation can tell.
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Class {
            Write(Option<Option<u64>>),
            Cas(Option<u64>, Option<Option<u64>>),
        }
        let mut class_last: BTreeMap<Class, usize> = BTreeMap::new();
        let mut class_previous = vec![None; info.len()];
        for &i in &info_order {
            let class = match ops[info[i]].call {
                RegisterCall::Write(v) => Class::Write(value_key(Some(v))),
                RegisterCall::Cas { expected, new } => Class::Cas(expected, value_key(Some(new))),
                RegisterCall::Read => unreachable!("info reads are dropped"),
            };
            class_previous[i] = class_last.insert(class, i);
        }
        Search {
            ops,
            ok_list: Links::new(2 * ok.len(), &ok_order),
            info_list: Links::new(info.len(), &info_order),
            ok,
            info,
            ok_position,
            info_position,
            observed,
            class_previous,
        }
    }

    fn placed_index(&self, placed: Placed) -> usize {
        match placed {
            Placed::Ok(j) => self.ok[j],
            Placed::Info(i) => self.info[i],
        }
    }

    /// The value as the memo sees it.
    fn value_key(&self, value: Option<u64>) -> Option<Option<u64>> {
        self.observed.contains(&value).then_some(value)
    }

    /// The position of the first completion still in the ok list.
    fn bound(&self) -> usize {
        let mut node = self.ok_list.first();
        while node & 1 == 0 {
            node = self.ok_list.next[node];
        }
        assert_ne!(node, self.ok_list.tail, "an ok operation is pending");
        self.ok_position[node]
    }

    fn run(mut self, limits: &Limits) -> Verdict {
        let ok_ops_total = self.ok.len();
        let mut ok_linearized = vec![0u64; ok_ops_total.div_ceil(64)];
        let mut info_linearized = vec![0u64; self.info.len().div_ceil(64)];
        let mut fingerprint = 0u64;
        let mut value: Option<u64> = None;
        // After an info operation: the value before it, which the next operation must need.
        let mut needed: Option<Option<u64>> = None;
        // The linearization so far: each operation with `value` and `needed` before it.
        let mut stack: Vec<(Placed, Option<u64>, Option<Option<u64>>)> = Vec::new();
        let mut ok_ops_linearized = 0;
        // Per (ok set, value, needed): the info sets met with them, an antichain.
        let mut memo: BTreeMap<CacheKey, Vec<Box<[u64]>>> = BTreeMap::new();
        let mut states_explored = 0;
        let mut furthest: Option<Furthest> = None;
        let mut bound = 0;
        let mut cursor = Cursor::Ok(self.ok_list.first());
        loop {
            if ok_ops_linearized == ok_ops_total {
                // The info operations left over take effect after everything, or never.
                return Verdict::Linearizable { states_explored };
            }
            // The operation to try at the cursor, if any.
            let candidate = match cursor {
                Cursor::Ok(node) if node & 1 == 0 => Some(Placed::Ok(node / 2)),
                Cursor::Ok(node) => {
                    // Operation node / 2 completed and is not linearized: it cannot take effect
                    // later, so only the info operations invoked before remain to try here.
                    assert_ne!(node, self.ok_list.tail, "an ok operation is pending");
                    bound = self.ok_position[node];
                    if furthest.as_ref().is_none_or(|f| bound > f.position) {
                        furthest = Some(Furthest {
                            position: bound,
                            blocked: node / 2,
                            ok_ops_linearized,
                            last: stack.last().map(|&(placed, _, _)| placed),
                            value,
                        });
                    }
                    cursor = Cursor::Info(self.info_list.first());
                    continue;
                }
                Cursor::Info(i) if i != self.info_list.tail && self.info_position[i] < bound => {
                    let earliest = self.class_previous[i]
                        .is_none_or(|p| info_linearized[p / 64] & (1 << (p % 64)) != 0);
                    if !earliest {
                        cursor = Cursor::Info(self.info_list.next[i]);
                        continue;
                    }
                    Some(Placed::Info(i))
                }
                Cursor::Info(_) => None,
            };

            let Some(placed) = candidate else {
                // Nothing more to try here: backtrack.
                let Some((top, value_before, needed_before)) = stack.pop() else {
                    let f = furthest.expect("a completion was met before giving up");
                    return Verdict::NotLinearizable(Box::new(Counterexample {
                        op_index: self.ok[f.blocked],
                        op: self.ops[self.ok[f.blocked]],
                        ok_ops_linearized: f.ok_ops_linearized,
                        ok_ops_total,
                        last_linearized: f.last.map(|placed| {
                            let index = self.placed_index(placed);
                            (index, self.ops[index])
                        }),
                        value: f.value,
                        states_explored,
                    }));
                };
                value = value_before;
                needed = needed_before;
                match top {
                    Placed::Ok(j) => {
                        set_bit(&mut ok_linearized, j, false);
                        fingerprint ^= zobrist(j);
                        ok_ops_linearized -= 1;
                        self.ok_list.relink(2 * j + 1);
                        self.ok_list.relink(2 * j);
                        cursor = Cursor::Ok(self.ok_list.next[2 * j]);
                    }
                    Placed::Info(i) => {
                        set_bit(&mut info_linearized, i, false);
                        self.info_list.relink(i);
                        bound = self.bound();
                        cursor = Cursor::Info(self.info_list.next[i]);
                    }
                }
                continue;
            };

            let op = self.ops[self.placed_index(placed)];
            let after = match (placed, op.outcome) {
                (Placed::Ok(_), OpOutcome::Ok { result, .. }) => {
                    // After an info operation, only an operation that needs it (module docs).
                    let needs =
                        needed.is_none_or(|before| step(before, op.call, Some(result)).is_none());
                    step(value, op.call, Some(result)).filter(|_| needs)
                }
                (Placed::Info(_), _) => {
                    let chained = match (needed, op.call) {
                        (None, _) => true,
                        (Some(_), RegisterCall::Cas { expected, .. }) => expected == value,
                        (Some(_), _) => false,
                    };
                    step(value, op.call, None)
                        .filter(|&after| chained && self.value_key(after) != self.value_key(value))
                }
                (Placed::Ok(_), _) => unreachable!("the ok list holds ok operations"),
            };
            let Some(after) = after else {
                cursor = self.next_cursor(placed);
                continue;
            };
            let needed_after = match placed {
                Placed::Ok(j) => {
                    set_bit(&mut ok_linearized, j, true);
                    fingerprint ^= zobrist(j);
                    None
                }
                Placed::Info(i) => {
                    set_bit(&mut info_linearized, i, true);
                    Some(value)
                }
            };
            let key = CacheKey::new(
                fingerprint,
                self.value_key(after),
                needed_after.map(|v| self.value_key(v)),
                &ok_linearized,
            );
            let seen = memo.entry(key).or_default();
            if seen.iter().any(|s| is_subset(s, &info_linearized)) {
                match placed {
                    Placed::Ok(j) => {
                        set_bit(&mut ok_linearized, j, false);
                        fingerprint ^= zobrist(j);
                    }
                    Placed::Info(i) => set_bit(&mut info_linearized, i, false),
                }
                cursor = self.next_cursor(placed);
                continue;
            }
            seen.retain(|s| !is_subset(&info_linearized, s));
            seen.push(trimmed(&info_linearized).into());
            states_explored += 1;
            if states_explored > limits.states_max {
                return Verdict::Undecided { states_explored };
            }
            stack.push((placed, value, needed));
            value = after;
            needed = needed_after;
            match placed {
                Placed::Ok(j) => {
                    ok_ops_linearized += 1;
                    self.ok_list.unlink(2 * j);
                    self.ok_list.unlink(2 * j + 1);
                }
                Placed::Info(i) => self.info_list.unlink(i),
            }
            cursor = Cursor::Ok(self.ok_list.first());
        }
    }

    /// The cursor after `placed`, which could not be placed here.
    fn next_cursor(&self, placed: Placed) -> Cursor {
        match placed {
            Placed::Ok(j) => Cursor::Ok(self.ok_list.next[2 * j]),
            Placed::Info(i) => Cursor::Info(self.info_list.next[i]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use triarch_core::DetRng;

    const W: u64 = 1;
    const R: u64 = 2;

    fn read(p: u64, invoked: u64, completed: u64, v: Option<u64>) -> RegisterOp {
        RegisterOp::ok(
            p,
            RegisterCall::Read,
            invoked,
            completed,
            RegisterResult::Read(v),
        )
    }

    fn write(p: u64, invoked: u64, completed: u64, v: u64) -> RegisterOp {
        RegisterOp::ok(
            p,
            RegisterCall::Write(v),
            invoked,
            completed,
            RegisterResult::Written,
        )
    }

    fn cas(
        p: u64,
        invoked: u64,
        completed: u64,
        expected: Option<u64>,
        new: u64,
        stored: bool,
    ) -> RegisterOp {
        RegisterOp::ok(
            p,
            RegisterCall::Cas { expected, new },
            invoked,
            completed,
            RegisterResult::Cas(stored),
        )
    }

    fn verdict(ops: &[RegisterOp]) -> Verdict {
        check(ops, &Limits::default())
    }

    fn counterexample(ops: &[RegisterOp]) -> Counterexample {
        match verdict(ops) {
            Verdict::NotLinearizable(c) => *c,
            other => panic!("expected a violation, got {other}"),
        }
    }

    #[test]
    fn sequential_histories_pass() {
        let ops = [
            read(R, 0, 1, None),
            write(W, 2, 3, 1),
            read(R, 4, 5, Some(1)),
            cas(W, 6, 7, Some(1), 2, true),
            cas(W, 8, 9, Some(1), 3, false),
            read(R, 10, 11, Some(2)),
            write(W, 12, 13, 2),
            read(R, 14, 15, Some(2)),
            cas(W, 16, 17, Some(2), 4, true),
            read(R, 18, 19, Some(4)),
        ];
        assert!(verdict(&ops).is_linearizable(), "{}", verdict(&ops));
        assert!(verdict(&[]).is_linearizable());
    }

    #[test]
    fn concurrent_operations_that_can_be_ordered_pass() {
        // Write 2 takes effect before the first read, write 1 after it: the reads see 2, then 1.
        let ops = [
            write(1, 0, 10, 1),
            write(2, 1, 9, 2),
            read(3, 2, 3, Some(2)),
            read(4, 4, 5, Some(1)),
            read(3, 11, 12, Some(1)),
            // A read concurrent with a write sees either value.
            write(1, 20, 30, 3),
            read(2, 21, 22, Some(1)),
            read(4, 23, 29, Some(3)),
            read(3, 31, 32, Some(3)),
        ];
        assert!(verdict(&ops).is_linearizable(), "{}", verdict(&ops));
    }

    #[test]
    fn events_at_the_same_time_are_concurrent() {
        let ops = [write(W, 0, 5, 1), read(R, 5, 6, None)];
        assert!(verdict(&ops).is_linearizable(), "{}", verdict(&ops));
        let ops = [write(W, 0, 5, 1), read(R, 6, 7, None)];
        assert_eq!(counterexample(&ops).op_index, 1);
    }

    #[test]
    fn a_stale_read_fails_and_is_named() {
        let ops = [write(W, 0, 1, 1), write(W, 2, 3, 2), read(R, 4, 5, Some(1))];
        let c = counterexample(&ops);
        assert_eq!(c.op_index, 2);
        assert_eq!(c.value, Some(2));
        assert_eq!(c.last_linearized.map(|(i, _)| i), Some(1));
        let text = c.to_string();
        assert!(
            text.contains(
                "op #2 (read by process 2, invoked at 4 us, completed ok at 5 us, returned 1)"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_read_of_a_value_never_written_fails() {
        let ops = [write(W, 0, 1, 1), read(R, 0, 3, Some(7))];
        assert_eq!(counterexample(&ops).op_index, 1);
        // Nor of a value written only after the read completed, or by a failed write.
        let ops = [read(R, 0, 1, Some(1)), write(W, 2, 3, 1)];
        assert_eq!(counterexample(&ops).op_index, 0);
        let ops = [
            RegisterOp::fail(W, RegisterCall::Write(1), 0),
            read(R, 1, 2, Some(1)),
        ];
        assert_eq!(counterexample(&ops).op_index, 1);
    }

    #[test]
    fn a_lost_write_fails() {
        // Write 2 was acknowledged at 6; a read concurrent with it may miss it, a later one not.
        let ops = [
            write(W, 0, 1, 1),
            write(W, 2, 6, 2),
            read(R, 3, 4, Some(1)),
            read(R, 7, 8, Some(1)),
        ];
        assert_eq!(counterexample(&ops).op_index, 3);
        assert!(verdict(&ops[..3]).is_linearizable());
    }

    #[test]
    fn two_compare_and_sets_from_the_same_value_cannot_both_succeed() {
        let ops = [
            write(W, 0, 1, 1),
            cas(2, 2, 5, Some(1), 2, true),
            cas(3, 3, 6, Some(1), 3, true),
        ];
        assert!(!verdict(&ops).is_linearizable());
        // One of them failing is fine, whichever.
        let mut ops = ops;
        ops[1] = cas(2, 2, 5, Some(1), 2, false);
        assert!(verdict(&ops).is_linearizable(), "{}", verdict(&ops));
        // ... unless the value was 1 all along.
        let mut ops = ops.to_vec();
        ops[2] = cas(3, 3, 6, Some(1), 3, false);
        assert!(!verdict(&ops).is_linearizable());
    }

    #[test]
    fn a_compare_and_set_that_succeeded_on_a_different_value_fails() {
        let ops = [write(W, 0, 1, 1), cas(W, 2, 3, Some(5), 2, true)];
        assert_eq!(counterexample(&ops).op_index, 1);
        let ops = [write(W, 0, 1, 1), cas(W, 2, 3, None, 2, true)];
        assert!(!verdict(&ops).is_linearizable());
        let ops = [cas(W, 2, 3, None, 2, true), read(R, 4, 5, Some(2))];
        assert!(verdict(&ops).is_linearizable());
    }

    #[test]
    fn an_info_write_may_take_effect_later_but_only_once() {
        let info = RegisterOp::info(3, RegisterCall::Write(2), 2);
        let mut ops = vec![write(W, 0, 1, 1), info, read(R, 10, 11, Some(2))];
        assert!(verdict(&ops).is_linearizable(), "{}", verdict(&ops));
        // It may also never take effect.
        ops[2] = read(R, 10, 11, Some(1));
        assert!(verdict(&ops).is_linearizable(), "{}", verdict(&ops));
        // But once seen, the older value cannot come back.
        ops[2] = read(R, 10, 11, Some(2));
        ops.push(read(R, 12, 13, Some(1)));
        assert_eq!(counterexample(&ops).op_index, 3);
        // Nor can an info write be seen before it was invoked.
        let info = RegisterOp::info(3, RegisterCall::Write(2), 4);
        let ops = [write(W, 0, 1, 1), read(R, 2, 3, Some(2)), info];
        assert_eq!(counterexample(&ops).op_index, 1);
    }

    #[test]
    fn an_info_compare_and_set_may_or_may_not_have_stored() {
        let info = RegisterOp::info(
            3,
            RegisterCall::Cas {
                expected: Some(1),
                new: 2,
            },
            2,
        );
        let ops = [
            write(W, 0, 1, 1),
            info,
            read(R, 3, 4, Some(1)),
            read(R, 5, 6, Some(2)),
        ];
        assert!(verdict(&ops).is_linearizable(), "{}", verdict(&ops));
        let ops = [write(W, 0, 1, 5), info, read(R, 5, 6, Some(2))];
        assert!(
            !verdict(&ops).is_linearizable(),
            "expected value never held"
        );
    }

    #[test]
    fn a_tiny_budget_is_undecided_and_check_keys_stops_at_the_first_failure() {
        let ops = [write(W, 0, 1, 1), write(W, 2, 3, 2), read(R, 4, 5, Some(2))];
        assert_eq!(
            check(&ops, &Limits { states_max: 1 }),
            Verdict::Undecided { states_explored: 2 }
        );
        let mut keys = BTreeMap::new();
        keys.insert(1u64, ops.to_vec());
        keys.insert(2, vec![read(R, 0, 1, Some(9))]);
        keys.insert(3, vec![read(R, 0, 1, Some(9))]);
        let (key, v) = check_keys(&keys, &Limits::default()).unwrap_err();
        assert_eq!(key, 2);
        assert!(matches!(v, Verdict::NotLinearizable(_)));
        keys.remove(&2);
        keys.remove(&3);
        let verdicts = check_keys(&keys, &Limits::default()).unwrap();
        assert!(verdicts[&1].is_linearizable());
    }

    #[test]
    #[should_panic(expected = "adapter bug")]
    fn a_result_of_the_wrong_kind_is_refused() {
        let _ = verdict(&[RegisterOp::ok(
            R,
            RegisterCall::Read,
            0,
            1,
            RegisterResult::Written,
        )]);
    }

    /// How a generated history picks the values it writes.
    #[derive(Clone, Copy, Debug)]
    enum Values {
        /// Every write and compare-and-set stores a value never stored before.
        Unique,
        /// Values from `0..4`, as Jepsen's register workloads do: many coincide.
        Few,
    }

    /// A random history of `ops_count` operations by `processes` processes that is linearizable
    /// by construction: each process issues operations one at a time, each takes effect at a
    /// point inside its interval (points distinct across processes), and results come from
    /// running the register sequentially in the order of those points. About `info_percent` of
    /// the operations end `info` (half of them having taken effect) and 3% end `fail` (not
    /// having taken effect).
    fn linearizable_history(
        seed: u64,
        ops_count: usize,
        processes: u64,
        info_percent: u64,
        values: Values,
    ) -> Vec<RegisterOp> {
        assert!(processes < 10);
        let mut rng = DetRng::seed_from_u64(seed);
        // (linearization point, process, invoked, completed)
        let mut slots = Vec::with_capacity(ops_count);
        let mut free_at = vec![0u64; processes as usize];
        for i in 0..ops_count {
            let p = (i as u64) % processes;
            let invoked = free_at[p as usize] + 10 * rng.between(1, 6);
            let point = invoked + 10 * rng.below(6) + p;
            let completed = point + 10 * rng.below(6) + 1;
            free_at[p as usize] = completed;
            slots.push((point, p, invoked, completed));
        }
        slots.sort_unstable();
        let mut value: Option<u64> = None;
        let mut written = Vec::new();
        let mut next_value = 0;
        let mut fresh = |rng: &mut DetRng| match values {
            Values::Unique => {
                next_value += 1;
                next_value
            }
            Values::Few => rng.below(4),
        };
        let mut ops = Vec::with_capacity(ops_count);
        for (_, p, invoked, completed) in slots {
            let call = match rng.below(3) {
                0 => RegisterCall::Read,
                1 => RegisterCall::Write(fresh(&mut rng)),
                _ => {
                    let expected = if rng.chance(0.5) || written.is_empty() {
                        value
                    } else {
                        Some(written[rng.below(written.len() as u64) as usize])
                    };
                    RegisterCall::Cas {
                        expected,
                        new: fresh(&mut rng),
                    }
                }
            };
            if let RegisterCall::Write(v) | RegisterCall::Cas { new: v, .. } = call {
                written.push(v);
            }
            let roll = rng.below(100);
            let happened = if roll < info_percent {
                rng.chance(0.5)
            } else {
                roll >= info_percent + 3 // otherwise a fail
            };
            let before = value;
            if happened {
                value = step(value, call, None).expect("info steps always apply");
            }
            let result = match call {
                RegisterCall::Read => RegisterResult::Read(before),
                RegisterCall::Write(_) => RegisterResult::Written,
                RegisterCall::Cas { expected, .. } => RegisterResult::Cas(expected == before),
            };
            ops.push(if roll < info_percent {
                RegisterOp::info(p, call, invoked)
            } else if happened {
                RegisterOp::ok(p, call, invoked, completed, result)
            } else {
                RegisterOp::fail(p, call, invoked)
            });
        }
        ops
    }

    /// Whether `ops` is linearizable, by trying every order of every subset that holds all the
    /// ok operations: the definition, for tiny histories.
    fn brute_force(ops: &[RegisterOp]) -> bool {
        fn extend(ops: &[&RegisterOp], placed: &mut [bool], value: Option<u64>) -> bool {
            let pending_ok = |placed: &[bool], j: usize| {
                !placed[j] && matches!(ops[j].outcome, OpOutcome::Ok { .. })
            };
            if !(0..ops.len()).any(|j| pending_ok(placed, j)) {
                return true;
            }
            for i in 0..ops.len() {
                // Real time: an ok operation that completed before i was invoked goes first.
                let blocked = placed[i]
                    || (0..ops.len()).any(|j| {
                        pending_ok(placed, j)
                            && matches!(ops[j].outcome, OpOutcome::Ok { completed_us, .. } if completed_us < ops[i].invoked_us)
                    });
                if blocked {
                    continue;
                }
                let result = match ops[i].outcome {
                    OpOutcome::Ok { result, .. } => Some(result),
                    _ => None,
                };
                if let Some(after) = step(value, ops[i].call, result) {
                    placed[i] = true;
                    if extend(ops, placed, after) {
                        return true;
                    }
                    placed[i] = false;
                }
            }
            false
        }
        let kept: Vec<&RegisterOp> = ops
            .iter()
            .filter(|op| op.outcome != OpOutcome::Fail)
            .collect();
        extend(&kept, &mut vec![false; kept.len()], None)
    }

    fn arbitrary_op() -> impl Strategy<Value = RegisterOp> {
        let value = 0u64..3;
        let call = prop_oneof![
            Just(RegisterCall::Read),
            value.clone().prop_map(RegisterCall::Write),
            (proptest::option::of(value.clone()), value.clone())
                .prop_map(|(expected, new)| RegisterCall::Cas { expected, new }),
        ];
        (
            call,
            0u64..12,
            0u64..6,
            0u8..10,
            proptest::option::of(value),
            any::<bool>(),
        )
            .prop_map(|(call, invoked, duration, outcome, read, stored)| {
                let result = match call {
                    RegisterCall::Read => RegisterResult::Read(read),
                    RegisterCall::Write(_) => RegisterResult::Written,
                    RegisterCall::Cas { .. } => RegisterResult::Cas(stored),
                };
                match outcome {
                    0..=1 => RegisterOp::info(0, call, invoked),
                    2 => RegisterOp::fail(0, call, invoked),
                    _ => RegisterOp::ok(0, call, invoked, invoked + duration, result),
                }
            })
    }

    /// Plants a stale read if the history allows one: an ok read invoked after some ok
    /// operation `w'` that stored a value completed, where `w'` was invoked after another ok
    /// operation `w` that stored `v` completed; the read now returns `v`. Values are unique, so
    /// nothing can store `v` again after `w'`: no linearization exists.
    fn plant_stale_read(ops: &mut [RegisterOp]) -> Option<usize> {
        let stored = |op: &RegisterOp| match (op.call, op.outcome) {
            (
                RegisterCall::Write(v),
                OpOutcome::Ok {
                    completed_us: c, ..
                },
            )
            | (
                RegisterCall::Cas { new: v, .. },
                OpOutcome::Ok {
                    completed_us: c,
                    result: RegisterResult::Cas(true),
                },
            ) => Some((v, op.invoked_us, c)),
            _ => None,
        };
        let stores: Vec<(u64, u64, u64)> = ops.iter().filter_map(stored).collect();
        for (r, op) in ops.iter_mut().enumerate() {
            let invoked = op.invoked_us;
            let OpOutcome::Ok {
                result: RegisterResult::Read(returned),
                ..
            } = &mut op.outcome
            else {
                continue;
            };
            for &(_, later_invoked, later_completed) in &stores {
                if later_completed >= invoked {
                    continue;
                }
                let older = stores
                    .iter()
                    .find(|&&(v, _, c)| c < later_invoked && Some(v) != *returned);
                if let Some(&(v, _, _)) = older {
                    *returned = Some(v);
                    return Some(r);
                }
            }
        }
        None
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3_000))]

        /// Any tiny history, linearizable or not: the search agrees with the definition.
        #[test]
        fn the_search_agrees_with_brute_force(ops in proptest::collection::vec(arbitrary_op(), 0..8)) {
            let v = verdict(&ops);
            prop_assert!(!matches!(v, Verdict::Undecided { .. }), "{}", v);
            prop_assert_eq!(v.is_linearizable(), brute_force(&ops), "{}\n{:#?}", v, ops);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn generated_linearizable_histories_pass_and_planted_violations_fail(
            seed in any::<u64>(),
            ops_count in 1usize..80,
            processes in 1u64..6,
            info_percent in 0u64..20,
        ) {
            let few = linearizable_history(seed, ops_count, processes, info_percent, Values::Few);
            let v = verdict(&few);
            prop_assert!(v.is_linearizable(), "{}\n{:#?}", v, few);

            let ops = linearizable_history(seed, ops_count, processes, info_percent, Values::Unique);
            let v = verdict(&ops);
            prop_assert!(v.is_linearizable(), "{}\n{:#?}", v, ops);

            // A value never written.
            let reads: Vec<usize> = ops
                .iter()
                .enumerate()
                .filter(|(_, op)| matches!(op.outcome, OpOutcome::Ok { result: RegisterResult::Read(_), .. }))
                .map(|(i, _)| i)
                .collect();
            if let Some(&r) = reads.get(seed as usize % reads.len().max(1)) {
                let mut corrupt = ops.clone();
                if let OpOutcome::Ok { result, .. } = &mut corrupt[r].outcome {
                    *result = RegisterResult::Read(Some(u64::MAX));
                }
                match verdict(&corrupt) {
                    Verdict::NotLinearizable(c) => prop_assert_eq!(c.op_index, r),
                    other => prop_assert!(false, "planted never-written read at #{}: {}", r, other),
                }
            }

            // A stale value.
            let mut corrupt = ops.clone();
            if let Some(r) = plant_stale_read(&mut corrupt) {
                match verdict(&corrupt) {
                    Verdict::NotLinearizable(c) => prop_assert_eq!(c.op_index, r),
                    other => prop_assert!(false, "planted stale read at #{}: {}", r, other),
                }
            }
        }
    }

    #[test]
    fn a_long_history_with_info_operations_is_decided() {
        let ops = linearizable_history(42, 5_000, 5, 2, Values::Unique);
        assert!(
            ops.iter()
                .filter(|op| op.outcome == OpOutcome::Info)
                .count()
                > 50,
            "the history has info operations"
        );
        let v = verdict(&ops);
        assert!(v.is_linearizable(), "{v}");
        // And a planted violation near its end is found, not given up on.
        let mut corrupt = ops.clone();
        let r = plant_stale_read(&mut corrupt[4_500..]).expect("a stale read can be planted");
        match verdict(&corrupt) {
            Verdict::NotLinearizable(c) => assert_eq!(c.op_index, 4_500 + r),
            other => panic!("{other}"),
        }
    }
}
