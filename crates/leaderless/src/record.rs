//! What a replica stores for a key: the value (or a tombstone) and the timestamp that orders it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use triarch_core::HlcTimestamp;

/// Version of the on-disk encoding; bumped when `Record` changes shape.
const RECORD_FORMAT_V1: u8 = 1;

/// A versioned value. `value: None` is a tombstone: deletes are writes, so that a delete orders
/// against concurrent writes by timestamp like any other write and a replica that missed it is
/// repaired instead of resurrecting the old value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub timestamp: HlcTimestamp,
    pub value: Option<Bytes>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![RECORD_FORMAT_V1])
            .expect("encoding a Record into a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        match bytes.split_first() {
            Some((&RECORD_FORMAT_V1, rest)) => {
                postcard::from_bytes(rest).map_err(|e| RecordError::Corrupt(e.to_string()))
            }
            Some((&v, _)) => Err(RecordError::UnknownFormat(v)),
            None => Err(RecordError::Corrupt("empty record".into())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record has unknown format version {0}")]
    UnknownFormat(u8),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use triarch_core::NodeId;

    #[test]
    fn round_trips_values_and_tombstones_and_rejects_garbage() {
        let ts = HlcTimestamp {
            wall_ms: 5,
            logical: 2,
            node: NodeId(3),
        };
        for value in [Some(Bytes::from_static(b"v")), None] {
            let r = Record {
                timestamp: ts,
                value,
            };
            assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        }
        assert!(matches!(
            Record::decode(&[9, 1, 2]),
            Err(RecordError::UnknownFormat(9))
        ));
        assert!(Record::decode(&[]).is_err());
        assert!(Record::decode(&[1, 0xff]).is_err());
    }
}
