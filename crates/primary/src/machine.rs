//! The replicated state machine of a primary-backup keyspace: what a committed log entry does.
//!
//! Every member applies the same committed [`Proposal`]s in log order to the keyspace's data
//! table, so every member holds the same data at the same applied index. Applying is
//! deterministic: it depends only on the table and the proposal, never on the clock or on which
//! member applies it, so the member that answers the client and every other member compute the
//! same result.
//!
//! # Storage layout (table `data.<keyspace>`)
//!
//! | key | value |
//! |---|---|
//! | `d` + user key | [`VERSION`-byte, version (u64 BE), live flag, value]: the value and the index of the entry that last wrote it; a deleted key keeps a tombstone so that `WATCH` sees the delete |
//! | `s` + node (u32 BE) | the latest session of that origin node (postcard [`Session`]) |
//! | `a` | the last applied index (u64 BE) |
//! | `p` | the redo record of the last entry this member applied ([`Redo`]) |
//! | `x` + row | a row of the group's [`Extension`] (a multi-leader region's state) |
//!
//! The applied index is written in the same storage batch as the entry's effects, so a restart
//! resumes exactly after the last applied entry (`RaftConfig::applied_index`).
//!
//! # Exactly once
//!
//! A client's write can reach the log twice: a forwarded proposal is retried at a new leader
//! after a leader change, or a network duplicates a forward. Each proposal carries its
//! [`Origin`]: the node that accepted the client's request, that node's incarnation (a hybrid
//! logical clock timestamp taken at start, above every timestamp of earlier incarnations) and a
//! sequence number that grows within the incarnation. The machine keeps, per origin node, the
//! latest incarnation and the highest sequence number applied (Raft thesis §6.3's client
//! sessions, with nodes as the clients); a proposal at or below it is a duplicate and changes
//! nothing ([`Applied::Duplicate`]).
//!
//! # Transactions
//!
//! A proposal is a list of [`Command`]s applied atomically (one log entry), after its watches:
//! `(key, version)` pairs recorded by `WATCH`. If any watched key's version changed, nothing is
//! applied ([`Applied::Aborted`]): Redis's optimistic `WATCH`/`MULTI`/`EXEC`. As in Redis, a
//! command that fails inside a transaction (e.g. `INCR` of a non-integer) reports its error in
//! its slot and the others still apply.

use crate::types::{LogIndex, Snapshot};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use triarch_core::{HlcTimestamp, NodeId};
use triarch_storage::{Storage, StorageError};

/// Format version of records and proposals.
pub const VERSION: u8 = 1;

const DATA: u8 = b'd';
const SESSION: u8 = b's';
const EXTENSION: u8 = b'x';
const APPLIED: &[u8] = b"a";
/// The last entry's [`Redo`] record.
const REDO: &[u8] = b"p";

/// Whether a row of a keyspace's table is part of the replicated state (every voter holds the
/// same rows at the same applied index), rather than one member's recovery bookkeeping (the
/// redo record of the last entry it applied itself, absent after a snapshot restore).
pub fn is_replicated_row(key: &[u8]) -> bool {
    key != REDO
}
/// Rows per storage scan when snapshotting or clearing.
const SCAN_CHUNK: usize = 1024;

/// The storage table of a primary-backup keyspace.
pub fn table_name(keyspace: &str) -> String {
    format!("data.{keyspace}")
}

/// Who asked: the node that accepted the client's request, its incarnation, and a sequence
/// number unique within the incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin {
    pub node: NodeId,
    pub incarnation: HlcTimestamp,
    pub seq: u64,
}

/// One operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Get {
        key: Bytes,
    },
    Set {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Adds `by` to the key's value read as a decimal i64 (absent reads as 0), as Redis's INCRBY.
    IncrBy {
        key: Bytes,
        by: i64,
    },
    /// Writes `new` if the key's value is `expected` (`None`: the key is absent).
    Cas {
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    },
    /// A command of the group's [`Extension`], opaque here.
    Extension {
        payload: Bytes,
    },
}

impl Command {
    /// The user key the command works on (`None` for an extension's command).
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Command::Get { key }
            | Command::Set { key, .. }
            | Command::Delete { key }
            | Command::IncrBy { key, .. }
            | Command::Cas { key, .. } => Some(key),
            Command::Extension { .. } => None,
        }
    }

    pub fn is_read_only(&self) -> bool {
        matches!(self, Command::Get { .. })
    }
}

/// What one log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub origin: Origin,
    /// `(key, version)`: apply only if every watched key still has this version.
    pub watches: Vec<(Bytes, u64)>,
    pub commands: Vec<Command>,
}

impl Proposal {
    pub fn encode(&self) -> Bytes {
        let mut out = vec![VERSION];
        out = postcard::to_extend(self, out).expect("Vec cannot fail");
        Bytes::from(out)
    }

    pub fn decode(bytes: &[u8]) -> Option<Proposal> {
        match bytes.split_first() {
            Some((&VERSION, rest)) => postcard::from_bytes(rest).ok(),
            _ => None,
        }
    }
}

/// The result of one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Value(Option<Bytes>),
    /// `Set`/`Delete`: whether a live value was there before.
    Written {
        existed: bool,
    },
    /// `IncrBy`: the new value.
    Integer(i64),
    /// `Cas`: whether it wrote.
    Swapped(bool),
    NotAnInteger,
    Overflow,
    /// What the group's [`Extension`] answered.
    Extension(Bytes),
    /// An extension command reached a group without an extension.
    NoExtension,
}

/// Commands that another replication model runs through a primary-backup group's log: a
/// multi-leader keyspace's region is a Raft group whose machine keeps, besides nothing of the
/// primary-backup rows, the region's merged states and its outgoing change log
/// (`triarch_multileader`). The extension is deterministic like the rest of the machine: its
/// result and its writes depend only on its rows and the payload.
pub trait Extension: std::fmt::Debug + Send + Sync {
    /// Applies a committed [`Command::Extension`] payload at log `index`, reading and writing
    /// through `rows`; returns the result for whoever proposed it.
    fn apply(&self, rows: &mut Rows<'_>, index: LogIndex, payload: &[u8]) -> Bytes;
}

/// Reads one stored row of an extension.
type RowReader<'a> = dyn Fn(&[u8]) -> Result<Option<Vec<u8>>, StorageError> + 'a;

/// A row and its value.
pub type Row = (Vec<u8>, Vec<u8>);

/// An extension's rows as one entry sees them: reads see the entry's own earlier writes, and
/// every write becomes part of the entry's [`Redo`] record (so a crash never keeps half of it).
pub struct Rows<'a> {
    read: &'a RowReader<'a>,
    writes: &'a mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    error: Option<StorageError>,
}

impl Rows<'_> {
    /// The row's value (`None`: absent). A storage failure reads as absent and fails the whole
    /// entry's apply afterwards, so the extension never acts on it.
    pub fn get(&mut self, row: &[u8]) -> Option<Vec<u8>> {
        if let Some(w) = self.writes.get(row) {
            return w.clone();
        }
        match (self.read)(row) {
            Ok(v) => v,
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }

    pub fn put(&mut self, row: &[u8], value: Vec<u8>) {
        self.writes.insert(row.to_vec(), Some(value));
    }

    pub fn delete(&mut self, row: &[u8]) {
        self.writes.insert(row.to_vec(), None);
    }
}

/// Reads of an extension's rows outside an entry (a read served by the group).
pub fn extension_row<S: Storage>(
    storage: &S,
    table: &str,
    row: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    storage.get(table, &extension_key(row))
}

/// Up to `limit` of the extension's rows from `from` on (in row order), with their values.
pub fn extension_scan<S: Storage>(
    storage: &S,
    table: &str,
    from: &[u8],
    limit: usize,
) -> Result<Vec<Row>, StorageError> {
    let rows = storage.scan(table, &extension_key(from), limit)?;
    Ok(rows
        .into_iter()
        .take_while(|(k, _)| k.first() == Some(&EXTENSION))
        .map(|(mut k, v)| {
            k.remove(0);
            (k, v)
        })
        .collect())
}

fn extension_key(row: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + row.len());
    k.push(EXTENSION);
    k.extend_from_slice(row);
    k
}

/// What applying a proposal did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// One result per command, in order.
    Done(Vec<CommandResult>),
    /// A watched key changed: nothing applied.
    Aborted,
    /// The origin's sequence number was applied before (or is too old to tell, see
    /// [`Session`]): nothing applied.
    Duplicate,
}

/// What the machine remembers of an origin node: its latest incarnation, the highest sequence
/// number applied from it, and which of the [`SESSION_WINDOW`] numbers below that were applied
/// too (an anti-replay window, as IPsec's). Proposals of one origin can reach the log out of
/// order (a forward retried at a new leader, reordering networks): a number inside the window
/// that was not applied yet is applied; one below the window is refused as a duplicate (its
/// client was answered "may or may not have happened" by then, or will be).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub incarnation: HlcTimestamp,
    pub seq: u64,
    /// Bit `i`: number `seq - i` was applied.
    pub window: u64,
}

/// How far below an origin's highest applied sequence number a late proposal is still applied.
pub const SESSION_WINDOW: u64 = 64;

impl Session {
    fn first(origin: Origin) -> Session {
        Session {
            incarnation: origin.incarnation,
            seq: origin.seq,
            window: 1,
        }
    }

    /// The session after applying `origin`'s proposal, or `None` if it is a duplicate.
    fn admit(self, origin: Origin) -> Option<Session> {
        if origin.incarnation != self.incarnation {
            return (origin.incarnation > self.incarnation).then(|| Session::first(origin));
        }
        if origin.seq > self.seq {
            let shift = origin.seq - self.seq;
            let window = if shift >= SESSION_WINDOW {
                0
            } else {
                self.window << shift
            };
            return Some(Session {
                seq: origin.seq,
                window: window | 1,
                ..self
            });
        }
        let below = self.seq - origin.seq;
        if below >= SESSION_WINDOW || self.window & (1 << below) != 0 {
            return None;
        }
        Some(Session {
            window: self.window | (1 << below),
            ..self
        })
    }
}

/// A key's stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The index of the entry that last wrote the key (0: never written).
    pub version: u64,
    /// `None`: deleted (a tombstone).
    pub value: Option<Bytes>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + self.value.as_ref().map_or(0, |v| v.len()));
        out.push(VERSION);
        out.extend_from_slice(&self.version.to_be_bytes());
        match &self.value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Record, StorageError> {
        let corrupt = || StorageError::Engine("corrupt primary-backup record".into());
        if bytes.len() < 10 || bytes[0] != VERSION {
            return Err(corrupt());
        }
        let version = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let value = match bytes[9] {
            0 => None,
            1 => Some(Bytes::copy_from_slice(&bytes[10..])),
            _ => return Err(corrupt()),
        };
        Ok(Record { version, value })
    }
}

/// What `command` returns on a key holding `current`, and what it writes (`Some(None)`: a
/// tombstone; `None`: nothing).
#[allow(clippy::option_option)]
fn execute(command: &Command, current: &Record) -> (CommandResult, Option<Option<Bytes>>) {
    match command {
        Command::Get { .. } => (CommandResult::Value(current.value.clone()), None),
        Command::Set { value, .. } => (
            CommandResult::Written {
                existed: current.value.is_some(),
            },
            Some(Some(value.clone())),
        ),
        Command::Delete { .. } => {
            let existed = current.value.is_some();
            (CommandResult::Written { existed }, existed.then_some(None))
        }
        Command::IncrBy { by, .. } => {
            let now = match &current.value {
                None => Some(0),
                Some(v) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok()),
            };
            match now {
                None => (CommandResult::NotAnInteger, None),
                Some(n) => match n.checked_add(*by) {
                    None => (CommandResult::Overflow, None),
                    Some(sum) => (
                        CommandResult::Integer(sum),
                        Some(Some(Bytes::from(sum.to_string()))),
                    ),
                },
            }
        }
        Command::Cas { expected, new, .. } => {
            if current.value == *expected {
                (CommandResult::Swapped(true), Some(Some(new.clone())))
            } else {
                (CommandResult::Swapped(false), None)
            }
        }
        Command::Extension { .. } => unreachable!("applied by the extension"),
    }
}

/// Everything one entry writes, stored whole under one key before the individual writes. A
/// storage batch is durable as a whole in the server (one fjall write batch per sync), but the
/// simulator also crashes nodes keeping any prefix of a batch's writes; with the redo record
/// written first, a prefix either lacks it (nothing of the entry is there, and it is applied
/// again after the restart) or has it ([`Machine::load`] finishes the entry's writes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Redo {
    index: LogIndex,
    node: NodeId,
    session: Session,
    records: Vec<(Bytes, Record)>,
    /// The extension's row writes (`None`: delete).
    rows: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Redo {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out = postcard::to_extend(self, out).expect("Vec cannot fail");
        out
    }

    fn decode(bytes: &[u8]) -> Result<Redo, StorageError> {
        match bytes.split_first() {
            Some((&VERSION, rest)) => postcard::from_bytes(rest)
                .map_err(|_| StorageError::Engine("corrupt redo record".into())),
            _ => Err(StorageError::Engine("unknown redo record format".into())),
        }
    }
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(DATA);
    k.extend_from_slice(key);
    k
}

fn session_key(node: NodeId) -> Vec<u8> {
    let mut k = vec![SESSION];
    k.extend_from_slice(&node.0.to_be_bytes());
    k
}

/// The state machine of one keyspace on one member.
#[derive(Clone, Debug)]
pub struct Machine {
    table: String,
    applied: LogIndex,
    sessions: BTreeMap<NodeId, Session>,
    extension: Option<Arc<dyn Extension>>,
}

impl Machine {
    /// Loads the machine's applied index and sessions from storage (empty for a new keyspace).
    pub fn load<S: Storage>(storage: &S, keyspace: &str) -> Result<Machine, StorageError> {
        let table = table_name(keyspace);
        let applied = match storage.get(&table, APPLIED)? {
            Some(raw) => {
                LogIndex(u64::from_be_bytes(raw.as_slice().try_into().map_err(
                    |_| StorageError::Engine("corrupt applied index".into()),
                )?))
            }
            None => LogIndex::ZERO,
        };
        let mut sessions = BTreeMap::new();
        for (k, v) in storage.scan(&table, &[SESSION], usize::MAX)? {
            if k.first() != Some(&SESSION) {
                break;
            }
            let node =
                NodeId(u32::from_be_bytes(k[1..].try_into().map_err(|_| {
                    StorageError::Engine("corrupt session key".into())
                })?));
            let session: Session = postcard::from_bytes(&v)
                .map_err(|_| StorageError::Engine("corrupt session".into()))?;
            sessions.insert(node, session);
        }
        Ok(Machine {
            table,
            applied,
            sessions,
            extension: None,
        })
    }

    /// The machine with `extension` running its [`Command::Extension`]s.
    pub fn with_extension(mut self, extension: Option<Arc<dyn Extension>>) -> Machine {
        self.extension = extension;
        self
    }

    /// Loads the machine, finishing the writes of an entry a crash interrupted.
    pub fn recover<S: Storage>(storage: &mut S, keyspace: &str) -> Result<Machine, StorageError> {
        let mut machine = Machine::load(storage, keyspace)?;
        if let Some(raw) = storage.get(&machine.table, REDO)? {
            let redo = Redo::decode(&raw)?;
            if redo.index > machine.applied {
                machine.redo(storage, &redo)?;
            }
        }
        Ok(machine)
    }

    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The stored record of `key` (a never-written key has version 0 and no value).
    pub fn record<S: Storage>(&self, storage: &S, key: &[u8]) -> Result<Record, StorageError> {
        match storage.get(&self.table, &data_key(key))? {
            Some(raw) => Record::decode(&raw),
            None => Ok(Record {
                version: 0,
                value: None,
            }),
        }
    }

    /// Records that `index` carried nothing for the machine (a no-op or membership entry, or an
    /// entry that does not decode, which every member skips alike).
    pub fn skip<S: Storage>(
        &mut self,
        storage: &mut S,
        index: LogIndex,
    ) -> Result<(), StorageError> {
        self.set_applied(storage, index)
    }

    fn set_applied<S: Storage>(
        &mut self,
        storage: &mut S,
        index: LogIndex,
    ) -> Result<(), StorageError> {
        debug_assert!(index > self.applied, "entries apply in order, once");
        storage.put(&self.table, APPLIED, &index.0.to_be_bytes())?;
        self.applied = index;
        Ok(())
    }

    /// Applies the proposal committed at `index`.
    ///
    /// The entry's effects (records, the origin's session, the applied index) are computed
    /// first, then written through a redo record (see [`Redo`]), so that a crash that keeps
    /// only some of this batch's writes never leaves an entry half applied.
    pub fn apply<S: Storage>(
        &mut self,
        storage: &mut S,
        index: LogIndex,
        proposal: &Proposal,
    ) -> Result<Applied, StorageError> {
        self.apply_inner(storage, index, proposal, true)
    }

    /// Applies the proposal committed at `index` on a member where nobody waits for its
    /// results: it writes exactly what [`Machine::apply`] writes, but skips the reads that only
    /// a result would show (the previous record of a `Set`'s key, a storage read per write on
    /// every follower), and [`Applied::Done`] carries no results.
    pub fn apply_unanswered<S: Storage>(
        &mut self,
        storage: &mut S,
        index: LogIndex,
        proposal: &Proposal,
    ) -> Result<Applied, StorageError> {
        self.apply_inner(storage, index, proposal, false)
    }

    fn apply_inner<S: Storage>(
        &mut self,
        storage: &mut S,
        index: LogIndex,
        proposal: &Proposal,
        answers: bool,
    ) -> Result<Applied, StorageError> {
        let origin = proposal.origin;
        let session = match self.sessions.get(&origin.node) {
            None => Session::first(origin),
            Some(s) => match s.admit(origin) {
                Some(next) => next,
                None => {
                    self.set_applied(storage, index)?;
                    return Ok(Applied::Duplicate);
                }
            },
        };
        let mut redo = Redo {
            index,
            node: origin.node,
            session,
            records: Vec::new(),
            rows: Vec::new(),
        };
        let mut aborted = false;
        for (key, version) in &proposal.watches {
            if self.record(storage, key)?.version != *version {
                aborted = true;
                break;
            }
        }
        let mut results = Vec::with_capacity(proposal.commands.len());
        if !aborted {
            // Later commands see earlier ones' writes.
            let mut overlay: BTreeMap<Bytes, Record> = BTreeMap::new();
            let mut rows: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            for command in &proposal.commands {
                let Some(key) = command.key() else {
                    let Command::Extension { payload } = command else {
                        unreachable!("only extension commands have no key")
                    };
                    let Some(extension) = &self.extension else {
                        results.push(CommandResult::NoExtension);
                        continue;
                    };
                    let table = self.table.clone();
                    let read = |row: &[u8]| extension_row(storage, &table, row);
                    let mut view = Rows {
                        read: &read,
                        writes: &mut rows,
                        error: None,
                    };
                    let result = extension.apply(&mut view, index, payload);
                    if let Some(e) = view.error {
                        return Err(e);
                    }
                    results.push(CommandResult::Extension(result));
                    continue;
                };
                let current = match overlay.get(key) {
                    Some(r) => r.clone(),
                    // What a `Set` writes does not depend on the previous record; only its
                    // result does, and nobody reads it here.
                    None if !answers && matches!(command, Command::Set { .. }) => Record {
                        version: 0,
                        value: None,
                    },
                    None => self.record(storage, key)?,
                };
                let (result, write) = execute(command, &current);
                if let Some(value) = write {
                    overlay.insert(
                        key.clone(),
                        Record {
                            version: index.0,
                            value,
                        },
                    );
                }
                results.push(result);
            }
            redo.records = overlay.into_iter().collect();
            redo.rows = rows.into_iter().collect();
        }
        self.write_redo(storage, &redo)?;
        if !answers {
            results.clear();
        }
        Ok(if aborted {
            Applied::Aborted
        } else {
            Applied::Done(results)
        })
    }

    /// Writes an entry's effects: the redo record first (one atomic put), then each effect.
    fn write_redo<S: Storage>(&mut self, storage: &mut S, redo: &Redo) -> Result<(), StorageError> {
        storage.put(&self.table, REDO, &redo.encode())?;
        self.redo(storage, redo)
    }

    /// Writes `redo`'s effects; idempotent.
    fn redo<S: Storage>(&mut self, storage: &mut S, redo: &Redo) -> Result<(), StorageError> {
        for (key, record) in &redo.records {
            storage.put(&self.table, &data_key(key), &record.encode())?;
        }
        for (row, value) in &redo.rows {
            match value {
                Some(v) => storage.put(&self.table, &extension_key(row), v)?,
                None => storage.delete(&self.table, &extension_key(row))?,
            }
        }
        storage.put(
            &self.table,
            &session_key(redo.node),
            &postcard::to_stdvec(&redo.session).expect("Vec cannot fail"),
        )?;
        self.sessions.insert(redo.node, redo.session);
        self.set_applied(storage, redo.index)
    }

    /// The machine's whole state, for a Raft snapshot: every row of the table but the applied
    /// index (the snapshot's own index replaces it).
    pub fn snapshot<S: Storage>(&self, storage: &S) -> Result<Bytes, StorageError> {
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let chunk = storage.scan(&self.table, &from, SCAN_CHUNK)?;
            let done = chunk.len() < SCAN_CHUNK;
            if let Some((last, _)) = chunk.last() {
                from = last.clone();
                from.push(0);
            }
            rows.extend(
                chunk
                    .into_iter()
                    .filter(|(k, _)| k.as_slice() != APPLIED && k.as_slice() != REDO),
            );
            if done {
                break;
            }
        }
        let mut out = vec![VERSION];
        out = postcard::to_extend(&rows, out).expect("Vec cannot fail");
        Ok(Bytes::from(out))
    }

    /// Replaces the machine's state with `snapshot`'s.
    pub fn restore<S: Storage>(
        &mut self,
        storage: &mut S,
        snapshot: &Snapshot,
    ) -> Result<(), StorageError> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = if snapshot.data.is_empty() {
            Vec::new()
        } else {
            match snapshot.data.split_first() {
                Some((&VERSION, rest)) => postcard::from_bytes(rest)
                    .map_err(|_| StorageError::Engine("undecodable snapshot".into()))?,
                _ => return Err(StorageError::Engine("unknown snapshot format".into())),
            }
        };
        // The applied index and the redo record go first: a crash in the middle of this
        // restore leaves applied index 0, and the restore happens again at restart.
        storage.delete(&self.table, APPLIED)?;
        storage.delete(&self.table, REDO)?;
        // Resume each scan after the last key deleted: staged deletes would otherwise be
        // scanned past again and again.
        let mut from: Vec<u8> = Vec::new();
        loop {
            let chunk = storage.scan(&self.table, &from, SCAN_CHUNK)?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            from = last.clone();
            from.push(0);
            for (k, _) in chunk {
                storage.delete(&self.table, &k)?;
            }
        }
        for (k, v) in &rows {
            storage.put(&self.table, k, v)?;
        }
        storage.put(&self.table, APPLIED, &snapshot.index.0.to_be_bytes())?;
        let reloaded = Machine::load(storage, self.table.trim_start_matches("data."))?;
        *self = reloaded.with_extension(self.extension.take());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triarch_storage::SimDisk;

    fn origin(node: u32, seq: u64) -> Origin {
        Origin {
            node: NodeId(node),
            incarnation: HlcTimestamp {
                wall_ms: 1,
                logical: 0,
                node: NodeId(node),
            },
            seq,
        }
    }

    fn proposal(node: u32, seq: u64, commands: Vec<Command>) -> Proposal {
        Proposal {
            origin: origin(node, seq),
            watches: Vec::new(),
            commands,
        }
    }

    fn set(key: &str, value: &str) -> Command {
        Command::Set {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
        }
    }

    fn get(key: &str) -> Command {
        Command::Get {
            key: Bytes::from(key.to_string()),
        }
    }

    fn bytes(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn commands_apply_with_redis_semantics() {
        let mut disk = SimDisk::new();
        let mut m = Machine::load(&disk, "ks").unwrap();
        let p = proposal(
            1,
            1,
            vec![
                set("k", "5"),
                Command::IncrBy {
                    key: bytes("k"),
                    by: 2,
                },
                Command::Cas {
                    key: bytes("k"),
                    expected: Some(bytes("6")),
                    new: bytes("x"),
                },
                Command::Cas {
                    key: bytes("k"),
                    expected: Some(bytes("7")),
                    new: bytes("x"),
                },
                Command::IncrBy {
                    key: bytes("k"),
                    by: 1,
                },
                Command::Cas {
                    key: bytes("new"),
                    expected: None,
                    new: bytes("y"),
                },
                Command::Delete { key: bytes("k") },
                get("k"),
                Command::IncrBy {
                    key: bytes("n"),
                    by: i64::MAX,
                },
                Command::IncrBy {
                    key: bytes("n"),
                    by: 1,
                },
            ],
        );
        let applied = m.apply(&mut disk, LogIndex(1), &p).unwrap();
        assert_eq!(
            applied,
            Applied::Done(vec![
                CommandResult::Written { existed: false },
                CommandResult::Integer(7),
                CommandResult::Swapped(false),
                CommandResult::Swapped(true),
                CommandResult::NotAnInteger,
                CommandResult::Swapped(true),
                CommandResult::Written { existed: true },
                CommandResult::Value(None),
                CommandResult::Integer(i64::MAX),
                CommandResult::Overflow,
            ])
        );
        assert_eq!(m.applied(), LogIndex(1));
        assert_eq!(m.record(&disk, b"new").unwrap().value, Some(bytes("y")));
        // The delete left a tombstone with the entry's index as its version.
        assert_eq!(
            m.record(&disk, b"k").unwrap(),
            Record {
                version: 1,
                value: None
            }
        );
    }

    #[test]
    fn duplicates_and_stale_incarnations_change_nothing() {
        let mut disk = SimDisk::new();
        let mut m = Machine::load(&disk, "ks").unwrap();
        let first = proposal(1, 5, vec![set("k", "a")]);
        assert!(matches!(
            m.apply(&mut disk, LogIndex(1), &first).unwrap(),
            Applied::Done(_)
        ));
        // The same origin again, and an earlier sequence number: duplicates.
        let again = proposal(1, 5, vec![set("k", "b")]);
        assert_eq!(
            m.apply(&mut disk, LogIndex(2), &again).unwrap(),
            Applied::Duplicate
        );
        // A late proposal the window has not seen applies; applied again it is a duplicate.
        let earlier = proposal(1, 4, vec![set("k", "c")]);
        assert!(matches!(
            m.apply(&mut disk, LogIndex(3), &earlier).unwrap(),
            Applied::Done(_)
        ));
        assert_eq!(
            m.apply(&mut disk, LogIndex(4), &earlier).unwrap(),
            Applied::Duplicate
        );
        // Far ahead, then far behind: below the window nothing is known, so nothing applies.
        let far = proposal(1, 5 + SESSION_WINDOW, vec![set("k", "far")]);
        assert!(matches!(
            m.apply(&mut disk, LogIndex(5), &far).unwrap(),
            Applied::Done(_)
        ));
        let below = proposal(1, 3, vec![set("k", "below")]);
        assert_eq!(
            m.apply(&mut disk, LogIndex(6), &below).unwrap(),
            Applied::Duplicate
        );
        // Another node's sequence numbers are its own.
        let other = proposal(2, 1, vec![set("j", "x")]);
        assert!(matches!(
            m.apply(&mut disk, LogIndex(7), &other).unwrap(),
            Applied::Done(_)
        ));
        // A new incarnation starts its own numbering; the old one is then stale.
        let mut reborn = proposal(1, 1, vec![set("k", "d")]);
        reborn.origin.incarnation.wall_ms = 2;
        assert!(matches!(
            m.apply(&mut disk, LogIndex(8), &reborn).unwrap(),
            Applied::Done(_)
        ));
        let stale = proposal(1, 6 + SESSION_WINDOW, vec![set("k", "e")]);
        assert_eq!(
            m.apply(&mut disk, LogIndex(9), &stale).unwrap(),
            Applied::Duplicate
        );
        assert_eq!(m.record(&disk, b"k").unwrap().value, Some(bytes("d")));
        // Sessions and the applied index survive a restart.
        disk.sync().unwrap();
        let again = Machine::load(&disk, "ks").unwrap();
        assert_eq!(again.applied(), LogIndex(9));
        assert_eq!(again.sessions, m.sessions);
    }

    #[test]
    fn a_crash_never_leaves_an_entry_half_applied() {
        let first = proposal(1, 1, vec![set("a", "10"), set("b", "0")]);
        let transfer = proposal(
            1,
            2,
            vec![
                Command::IncrBy {
                    key: bytes("a"),
                    by: -3,
                },
                Command::IncrBy {
                    key: bytes("b"),
                    by: 3,
                },
            ],
        );
        let mut reference = SimDisk::new();
        let mut m = Machine::load(&reference, "ks").unwrap();
        m.apply(&mut reference, LogIndex(1), &first).unwrap();
        m.apply(&mut reference, LogIndex(2), &transfer).unwrap();
        let expected = m.snapshot(&reference).unwrap();

        let mut writes = None;
        for keep in 0.. {
            let mut disk = SimDisk::new();
            let mut m = Machine::load(&disk, "ks").unwrap();
            m.apply(&mut disk, LogIndex(1), &first).unwrap();
            disk.sync().unwrap();
            m.apply(&mut disk, LogIndex(2), &transfer).unwrap();
            let unsynced = disk.unsynced_writes();
            writes.get_or_insert(unsynced);
            if keep > unsynced {
                break;
            }
            disk.crash_keeping_prefix(keep);
            let mut m = Machine::recover(&mut disk, "ks").unwrap();
            if m.applied() < LogIndex(2) {
                m.apply(&mut disk, LogIndex(2), &transfer).unwrap();
            }
            assert_eq!(
                m.snapshot(&disk).unwrap(),
                expected,
                "kept {keep} of {unsynced} writes"
            );
        }
        assert!(writes.unwrap() >= 4, "the entry takes several writes");
    }

    #[test]
    fn a_changed_watch_aborts_the_whole_transaction() {
        let mut disk = SimDisk::new();
        let mut m = Machine::load(&disk, "ks").unwrap();
        m.apply(&mut disk, LogIndex(1), &proposal(1, 1, vec![set("a", "1")]))
            .unwrap();
        let watched = m.record(&disk, b"a").unwrap().version;
        assert_eq!(watched, 1);
        m.apply(&mut disk, LogIndex(2), &proposal(1, 2, vec![set("a", "2")]))
            .unwrap();
        let mut tx = proposal(1, 3, vec![set("a", "3"), set("b", "3")]);
        tx.watches = vec![(bytes("a"), watched)];
        assert_eq!(
            m.apply(&mut disk, LogIndex(3), &tx).unwrap(),
            Applied::Aborted
        );
        assert_eq!(m.record(&disk, b"b").unwrap().value, None);
        // Watching the current version lets it through; a never-written key has version 0.
        let mut tx = proposal(1, 4, vec![set("a", "4"), set("b", "4")]);
        tx.watches = vec![(bytes("a"), 2), (bytes("b"), 0)];
        assert!(matches!(
            m.apply(&mut disk, LogIndex(4), &tx).unwrap(),
            Applied::Done(_)
        ));
        assert_eq!(m.record(&disk, b"b").unwrap().value, Some(bytes("4")));
    }

    #[test]
    fn snapshots_restore_the_same_state_elsewhere() {
        let mut disk = SimDisk::new();
        let mut m = Machine::load(&disk, "ks").unwrap();
        for i in 1..=3000u64 {
            let p = proposal(1, i, vec![set(&format!("k{i}"), &i.to_string())]);
            m.apply(&mut disk, LogIndex(i), &p).unwrap();
        }
        let data = m.snapshot(&disk).unwrap();
        let snapshot = Snapshot {
            index: LogIndex(3000),
            term: crate::Term(1),
            voters: [NodeId(1)].into(),
            learners: Default::default(),
            data,
        };
        let mut other_disk = SimDisk::new();
        let mut other = Machine::load(&other_disk, "ks").unwrap();
        other
            .apply(
                &mut other_disk,
                LogIndex(1),
                &proposal(2, 1, vec![set("stale", "x")]),
            )
            .unwrap();
        other.restore(&mut other_disk, &snapshot).unwrap();
        assert_eq!(other.applied(), LogIndex(3000));
        assert_eq!(other.sessions, m.sessions);
        assert_eq!(other.record(&other_disk, b"stale").unwrap().value, None);
        assert_eq!(
            other.record(&other_disk, b"k2999").unwrap(),
            m.record(&disk, b"k2999").unwrap()
        );
        // The same rows, so the same snapshot.
        assert_eq!(
            other.snapshot(&other_disk).unwrap(),
            m.snapshot(&disk).unwrap()
        );
    }

    /// A follower applies without computing results (`apply_unanswered`); it must write the
    /// very same rows as a member that answers, whatever the commands, or the voters diverge.
    #[test]
    fn applying_unanswered_writes_exactly_what_applying_writes() {
        let del = |k: &str| Command::Delete { key: bytes(k) };
        let incr = |k: &str, by| Command::IncrBy { key: bytes(k), by };
        let cas = |k: &str, expected: Option<&str>, new: &str| Command::Cas {
            key: bytes(k),
            expected: expected.map(bytes),
            new: bytes(new),
        };
        let proposals = [
            proposal(1, 1, vec![set("a", "1"), set("b", "x")]),
            proposal(1, 2, vec![del("a"), del("never"), set("c", "3")]),
            proposal(2, 1, vec![incr("c", 4), set("c", "9"), incr("c", 1)]),
            proposal(
                2,
                2,
                vec![cas("b", Some("x"), "y"), cas("b", Some("x"), "z")],
            ),
            proposal(1, 2, vec![set("dup", "applied twice?")]),
            Proposal {
                origin: origin(1, 3),
                watches: vec![(bytes("b"), 1)],
                commands: vec![set("watched", "aborted")],
            },
            Proposal {
                origin: origin(1, 4),
                watches: vec![(bytes("b"), 4)],
                commands: vec![set("a", "again"), get("a"), del("b")],
            },
            proposal(3, 1, vec![set("b", "reborn"), incr("b", 1)]),
        ];
        let mut answering_disk = SimDisk::new();
        let mut answering = Machine::load(&answering_disk, "ks").unwrap();
        let mut silent_disk = SimDisk::new();
        let mut silent = Machine::load(&silent_disk, "ks").unwrap();
        for (i, p) in proposals.iter().enumerate() {
            let index = LogIndex(i as u64 + 1);
            let answered = answering.apply(&mut answering_disk, index, p).unwrap();
            let unanswered = silent.apply_unanswered(&mut silent_disk, index, p).unwrap();
            match (&answered, &unanswered) {
                (Applied::Done(results), Applied::Done(none)) => {
                    assert_eq!(results.len(), p.commands.len());
                    assert!(none.is_empty(), "no results where nobody waits");
                }
                (a, b) => assert_eq!(a, b, "entry {index}: same outcome"),
            }
        }
        let rows = |disk: &SimDisk| disk.scan(&table_name("ks"), b"", usize::MAX).unwrap();
        assert_eq!(rows(&silent_disk), rows(&answering_disk));
        assert_eq!(silent.sessions, answering.sessions);
        assert_eq!(silent.applied(), answering.applied());
    }

    #[test]
    fn proposals_round_trip_and_garbage_does_not_decode() {
        let p = proposal(3, 9, vec![get("x")]);
        assert_eq!(Proposal::decode(&p.encode()), Some(p));
        assert_eq!(Proposal::decode(b""), None);
        assert_eq!(Proposal::decode(b"\x01\xff\xff"), None);
        assert_eq!(Proposal::decode(b"\x09abc"), None);
    }
}
