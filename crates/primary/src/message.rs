//! Messages between the members of one Raft group.
//!
//! Every message carries the sender's term (§5.1); the node crate wraps them with the group they
//! belong to. Responses carry no request identifiers: a leader matches them by term and index,
//! which makes duplicated, reordered and late messages harmless.

use crate::types::{Entry, LogIndex, Snapshot, Term};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// The sender's current term, except for a PreVote request and a granted PreVote response,
    /// which carry the term the sender *would* campaign in (thesis §9.6).
    pub term: Term,
    pub kind: MessageKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageKind {
    /// Could I win an election in `term`? Changes no one's term (thesis §9.6).
    PreVote {
        last_index: LogIndex,
        last_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// RequestVote (§5.2). `transfer` marks an election started by a leadership transfer
    /// (thesis §3.10), which voters honour even while they hear from the current leader.
    RequestVote {
        last_index: LogIndex,
        last_term: Term,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// AppendEntries (§5.3).
    Append {
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    },
    AppendResponse(AppendOutcome),
    /// A leader's heartbeat. `commit` is at most what the follower is known to hold; `read_seq`
    /// is echoed so that ReadIndex can count a round of acknowledgements (thesis §6.4).
    Heartbeat {
        commit: LogIndex,
        read_seq: u64,
        /// `commit` is the leader's whole commit index (the follower holds every committed
        /// entry), not one capped at what the follower acknowledged: the follower is caught up
        /// as of this heartbeat (bounded-staleness reads).
        complete: bool,
    },
    HeartbeatResponse {
        read_seq: u64,
    },
    /// InstallSnapshot (§7), answered with an [`AppendOutcome::Accepted`].
    InstallSnapshot {
        snapshot: Snapshot,
    },
    /// Start an election now, without PreVote: the leader is handing over (thesis §3.10).
    TimeoutNow,
    /// Your term is stale: here is mine. The answer to a request from an older term.
    StaleTerm,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// The follower's log matches the leader's up to `match_index`.
    Accepted { match_index: LogIndex },
    /// The follower's log does not contain an entry at `prev_index` with the leader's term.
    /// The hint lets the leader skip a whole term per round trip instead of one entry (§5.3,
    /// "the protocol can be optimized"): `conflict_term` is the follower's term at `prev_index`
    /// (None if its log is shorter) and `conflict_index` the first index it holds of that term
    /// (or its last index + 1).
    Rejected {
        prev_index: LogIndex,
        conflict_index: LogIndex,
        conflict_term: Option<Term>,
    },
}

impl Message {
    /// Whether the message may leave before the writes staged in its batch are durable.
    ///
    /// Persist-then-send protects what a message vouches for: a vote (term and vote on disk), an
    /// acknowledged entry, a log handed to a follower (the leader counts its own log toward the
    /// commit quorum). A PreVote exchange and a heartbeat vouch for nothing staged in the batch:
    /// PreVote changes no state (thesis §9.6), and a heartbeat's term was made durable before the
    /// leader's first vote request left, its commit index is volatile.
    pub fn may_precede_sync(&self) -> bool {
        matches!(
            self.kind,
            MessageKind::PreVote { .. }
                | MessageKind::PreVoteResponse { .. }
                | MessageKind::Heartbeat { .. }
        )
    }

    /// [`Message::may_precede_sync`] for a leader in [`crate::RaftConfig::parallel_append`]
    /// mode: appends too may leave before the leader's own copy of their entries is durable
    /// (their term is durable since the election; the leader counts itself toward a commit
    /// only once its copy is).
    pub fn may_precede_sync_parallel(&self) -> bool {
        self.may_precede_sync() || matches!(self.kind, MessageKind::Append { .. })
    }

    /// The wire encoding (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a message always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryData;
    use bytes::Bytes;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip_through_the_wire_encoding() {
        let m = Message {
            term: Term(7),
            kind: MessageKind::Append {
                prev_index: LogIndex(3),
                prev_term: Term(6),
                entries: vec![Entry {
                    term: Term(7),
                    index: LogIndex(4),
                    data: EntryData::Application(Bytes::from_static(b"x")),
                }],
                leader_commit: LogIndex(3),
            },
        };
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    proptest! {
        /// A decoder fed arbitrary bytes fails cleanly, never panics.
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::decode(&bytes);
        }
    }
}
