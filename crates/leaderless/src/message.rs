//! Messages between leaderless replicas and coordinators.

use crate::record::Record;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use triarch_core::HlcTimestamp;

/// A coordinator's name for one client operation in flight; unique per coordinator process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId(pub u64);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Coordinator -> replica: store `record` if it is newer than what you hold, then acknowledge.
    Write {
        op: OpId,
        keyspace: String,
        key: Bytes,
        record: Record,
    },
    /// Replica -> coordinator. `accepted` is false when the replica holds a newer record (whose
    /// timestamp is `current`); `existed` tells a delete whether a live value was there.
    WriteAck {
        op: OpId,
        timestamp: HlcTimestamp,
        accepted: bool,
        current: HlcTimestamp,
        existed: bool,
    },
    /// Coordinator -> replica: send me your record for `key`.
    Read {
        op: OpId,
        keyspace: String,
        key: Bytes,
    },
    /// Replica -> coordinator.
    ReadReply { op: OpId, record: Option<Record> },
    /// Coordinator -> stale replica: store this newer record (read repair; not acknowledged).
    Repair {
        keyspace: String,
        key: Bytes,
        record: Record,
    },
}
