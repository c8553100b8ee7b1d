//! A region's replicated state machine: what one committed entry of the region's Raft log does.
//!
//! A region of a multi-leader keyspace is a Raft group run by the primary-backup engine; its
//! entries carry [`Command`]s that this module applies through the engine's
//! [`Extension`](triarch_primary::machine::Extension) hook. Every member of the region applies
//! the same entries in the same order, so they hold the same records, the same change log and
//! the same positions; whichever member leads can ship the log and answer reads.
//!
//! # Rows (in the group's table, under the engine's extension prefix)
//!
//! | row | value |
//! |---|---|
//! | `k` + key | the key's [`RegionalRecord`] |
//! | `o` + sequence (u64 BE) | an [`Outgoing`] change: this region's local writes, numbered 1, 2, ... |
//! | `r` + region actor (u32 BE) | the last sequence number of that region's change log applied here |
//! | `n` | the machine's [`Counters`] |
//!
//! # State transfer
//!
//! A region's log is trimmed once every other region holds it, or, when one region is away so
//! long that the log would pass its bound, past that region's position. The region that
//! returns then gets the source's records instead, page by page ([`Command::Absorb`]): merging
//! a record is the same as folding every change it saw (merges are idempotent), and the last
//! page moves the position to the log's end as it was when the transfer began.
//!
//! # Exactly once, in order
//!
//! A region applies another region's changes only as an unbroken sequence: a [`Command::Ship`]
//! whose first change is beyond the next expected number is refused whole, one that overlaps
//! what was applied skips the overlap. The position is written in the same entry as the
//! changes, so a retried or duplicated shipment, a shipment that raced another one through a
//! leader change, or one replayed after a crash changes nothing twice and skips nothing. The
//! answer is always the position after the command, which the sender resumes from.

use crate::record::{self, Change, Folded, RegionalRecord, Write, WriteResult};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use triarch_core::causal::ActorId;
use triarch_core::merge::Refusal;
use triarch_core::{HlcTimestamp, MergePolicy};
use triarch_primary::LogIndex;
use triarch_primary::machine::{Extension, Rows};

/// Format version of commands, results and rows.
const VERSION: u8 = 1;

const KEY: u8 = b'k';
const OUTGOING: u8 = b'o';
const RECEIVED: u8 = b'r';
const COUNTERS: &[u8] = b"n";

/// The most change rows one [`Command::Trim`] deletes.
pub const TRIM_ROWS_MAX: u64 = 4096;

/// What a region's log entry asks of its machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A client's write in this region, stamped by the leader that proposed it.
    Write {
        key: Bytes,
        write: Write,
        stamp: HlcTimestamp,
    },
    /// Changes of region `from`'s log, numbered `first`, `first + 1`, ...
    Ship {
        from: ActorId,
        first: u64,
        changes: Vec<Outgoing>,
    },
    /// Every other region holds this region's changes through `through` (or one of them is so
    /// far behind that it will get a state transfer instead): drop them.
    Trim { through: u64 },
    /// A page of region `from`'s records: the state transfer that replaces `from`'s change log
    /// once it was trimmed past this region's position. The last page names the number of the
    /// last change the transfer covers (`through`), which becomes this region's position.
    Absorb {
        from: ActorId,
        records: Vec<(Bytes, RegionalRecord)>,
        through: Option<u64>,
    },
}

/// What a [`Command`] answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Written(WriteResult),
    Refused(Refusal),
    /// This region's position in the sender's log after a [`Command::Ship`].
    Position(u64),
    Trimmed,
    /// The payload did not decode (a member of another version proposed it).
    Undecodable,
}

/// One change of a region's log: the change and when its writer stamped it (for lag in
/// milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub change: Change,
    pub written_ms: u64,
}

/// The machine's bookkeeping, replicated like the records (so `INFO` on any member shows the
/// region's numbers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// The last sequence number of this region's own change log.
    pub last: u64,
    /// Changes through this number were dropped from the log.
    pub trimmed: u64,
    /// Local writes applied.
    pub writes: u64,
    /// Other regions' changes applied.
    pub folded: u64,
    /// Changes concurrent with a write this region held (conflicts detected).
    pub conflicts: u64,
    /// Conflicts resolved by a CRDT or sibling merge (every conflict of a policy other than
    /// `lww`).
    pub merged: u64,
    /// Writes last-writer-wins dropped (whole `lww` writes, or `map` field writes).
    pub lww_discarded: u64,
    /// Changes whose dot the key had already applied. Always 0 while change logs are applied in
    /// order and exactly once; the simulator checks it.
    pub duplicates: u64,
    /// Records merged by state transfers (another region's log had been trimmed past this
    /// region's position).
    pub absorbed: u64,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![VERSION]).expect("Vec cannot fail")
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

impl Command {
    pub fn encode(&self) -> Bytes {
        Bytes::from(encode(self))
    }

    pub fn decode(bytes: &[u8]) -> Option<Command> {
        decode(bytes)
    }
}

impl Answer {
    pub fn encode(&self) -> Bytes {
        Bytes::from(encode(self))
    }

    pub fn decode(bytes: &[u8]) -> Option<Answer> {
        decode(bytes)
    }
}

impl Counters {
    pub fn decode(bytes: &[u8]) -> Option<Counters> {
        decode(bytes)
    }
}

impl Outgoing {
    pub fn decode(bytes: &[u8]) -> Option<Outgoing> {
        decode(bytes)
    }
}

/// The row of `key`'s record.
pub fn key_row(key: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(1 + key.len());
    row.push(KEY);
    row.extend_from_slice(key);
    row
}

/// The row of change `seq` of this region's log.
pub fn outgoing_row(seq: u64) -> Vec<u8> {
    let mut row = vec![OUTGOING];
    row.extend_from_slice(&seq.to_be_bytes());
    row
}

/// The row of this region's position in `region`'s log.
pub fn received_row(region: ActorId) -> Vec<u8> {
    let mut row = vec![RECEIVED];
    row.extend_from_slice(&region.0.to_be_bytes());
    row
}

/// The row of the machine's [`Counters`].
pub fn counters_row() -> &'static [u8] {
    COUNTERS
}

/// The user key a key row names (`None` for another row).
pub fn key_of(row: &[u8]) -> Option<&[u8]> {
    match row.split_first() {
        Some((&KEY, key)) => Some(key),
        _ => None,
    }
}

/// The sequence number an outgoing row names (`None` for another row).
pub fn outgoing_seq(row: &[u8]) -> Option<u64> {
    match row.split_first() {
        Some((&OUTGOING, rest)) => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// Decodes a position row's value.
pub fn decode_position(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// One region of one multi-leader keyspace.
#[derive(Debug)]
pub struct RegionMachine {
    pub policy: MergePolicy,
    /// This region, as the actor of its writes.
    pub region: ActorId,
    /// The largest encoded record a local write may leave (remote changes are always taken:
    /// another region acknowledged them).
    pub record_bytes_max: usize,
}

impl RegionMachine {
    fn counters(rows: &mut Rows<'_>) -> Counters {
        rows.get(COUNTERS)
            .and_then(|b| Counters::decode(&b))
            .unwrap_or_default()
    }

    fn record(rows: &mut Rows<'_>, key: &[u8]) -> Option<RegionalRecord> {
        // A row that does not decode was written by no version of this machine: treat it as
        // absent rather than stop the region (the next write of the key replaces it).
        rows.get(&key_row(key))
            .and_then(|b| RegionalRecord::decode(&b).ok())
    }

    fn write(
        &self,
        rows: &mut Rows<'_>,
        key: &Bytes,
        write: &Write,
        stamp: HlcTimestamp,
    ) -> Answer {
        let current = Self::record(rows, key);
        let (next, change, result) = match record::write_local(
            key,
            current.as_ref(),
            self.policy,
            self.region,
            write,
            stamp,
        ) {
            Ok(done) => done,
            Err(refusal) => return Answer::Refused(refusal),
        };
        let Some(change) = change else {
            return Answer::Written(result);
        };
        let bytes = next.encode();
        if bytes.len() > self.record_bytes_max {
            return Answer::Refused(Refusal::StateTooLarge {
                bytes: bytes.len(),
                max: self.record_bytes_max,
            });
        }
        let mut counters = Self::counters(rows);
        counters.last += 1;
        counters.writes += 1;
        rows.put(&key_row(key), bytes);
        rows.put(
            &outgoing_row(counters.last),
            encode(&Outgoing {
                change,
                written_ms: stamp.wall_ms,
            }),
        );
        rows.put(COUNTERS, encode(&counters));
        Answer::Written(result)
    }

    fn ship(&self, rows: &mut Rows<'_>, from: ActorId, first: u64, changes: &[Outgoing]) -> Answer {
        let row = received_row(from);
        let position = rows
            .get(&row)
            .and_then(|b| decode_position(&b))
            .unwrap_or(0);
        if from == self.region || first == 0 || first > position + 1 {
            return Answer::Position(position);
        }
        let skip = usize::try_from(position + 1 - first).unwrap_or(usize::MAX);
        let fresh = changes.get(skip..).unwrap_or(&[]);
        if fresh.is_empty() {
            return Answer::Position(position);
        }
        let mut counters = Self::counters(rows);
        for outgoing in fresh {
            let change = &outgoing.change;
            let current = Self::record(rows, &change.key);
            match record::fold_remote(current, change) {
                Ok((next, folded)) => {
                    if folded.duplicate {
                        tracing::error!(%from, dot = ?change.dot, "a change arrived twice");
                    }
                    count(&mut counters, self.policy, folded);
                    rows.put(&key_row(&change.key), next.encode());
                }
                Err(mismatch) => {
                    // Another region wrote the key under another policy: the keyspace was
                    // dropped and recreated with another policy while changes were in flight.
                    tracing::warn!(%from, ?mismatch, "change of another policy skipped");
                }
            }
        }
        let position = position + fresh.len() as u64;
        rows.put(&row, position.to_be_bytes().to_vec());
        rows.put(COUNTERS, encode(&counters));
        Answer::Position(position)
    }

    fn absorb(
        &self,
        rows: &mut Rows<'_>,
        from: ActorId,
        records: &[(Bytes, RegionalRecord)],
        through: Option<u64>,
    ) -> Answer {
        let row = received_row(from);
        let position = rows
            .get(&row)
            .and_then(|b| decode_position(&b))
            .unwrap_or(0);
        if from == self.region {
            return Answer::Position(position);
        }
        let mut counters = Self::counters(rows);
        for (key, theirs) in records {
            let current = Self::record(rows, key);
            match record::absorb(current, theirs, from) {
                Ok((next, folded)) => {
                    count(&mut counters, self.policy, folded);
                    counters.folded -= 1;
                    counters.absorbed += 1;
                    rows.put(&key_row(key), next.encode());
                }
                Err(mismatch) => {
                    tracing::warn!(%from, ?mismatch, "transferred record of another policy skipped");
                }
            }
        }
        let position = match through {
            Some(through) if through > position => {
                rows.put(&row, through.to_be_bytes().to_vec());
                through
            }
            _ => position,
        };
        rows.put(COUNTERS, encode(&counters));
        Answer::Position(position)
    }

    fn trim(rows: &mut Rows<'_>, through: u64) -> Answer {
        let mut counters = Self::counters(rows);
        // Bounded per entry, so that one entry's redo record stays small; the leader proposes
        // the rest later.
        let through = through
            .min(counters.last)
            .min(counters.trimmed + TRIM_ROWS_MAX);
        for seq in counters.trimmed + 1..=through {
            rows.delete(&outgoing_row(seq));
        }
        if through > counters.trimmed {
            counters.trimmed = through;
            rows.put(COUNTERS, encode(&counters));
        }
        Answer::Trimmed
    }
}

fn count(counters: &mut Counters, policy: MergePolicy, folded: Folded) {
    counters.folded += 1;
    counters.duplicates += u64::from(folded.duplicate);
    counters.lww_discarded += folded.lww_discarded;
    if folded.conflict {
        counters.conflicts += 1;
        if policy != MergePolicy::Lww {
            counters.merged += 1;
        }
    }
}

impl Extension for RegionMachine {
    fn apply(&self, rows: &mut Rows<'_>, _index: LogIndex, payload: &[u8]) -> Bytes {
        let answer = match Command::decode(payload) {
            None => Answer::Undecodable,
            Some(Command::Write { key, write, stamp }) => self.write(rows, &key, &write, stamp),
            Some(Command::Ship {
                from,
                first,
                changes,
            }) => self.ship(rows, from, first, &changes),
            Some(Command::Trim { through }) => Self::trim(rows, through),
            Some(Command::Absorb {
                from,
                records,
                through,
            }) => self.absorb(rows, from, &records, through),
        };
        answer.encode()
    }
}
