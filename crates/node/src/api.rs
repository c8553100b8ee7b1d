//! The client API every driver (RESP, HTTP, the simulator's clients) speaks to a node.
//!
//! Plain keys (`lww`) are read and written with [`Request::Get`], [`Request::Set`] and
//! [`Request::Delete`]. Keyspaces with another merge policy take two generic requests:
//! [`Request::Read`] (the key's merged state, [`Reply::State`]) and [`Request::Apply`] (a typed
//! [`Operation`], [`Reply::Applied`]). `Get`, `Set` and `Delete` also work where they mean
//! something: `GET` of a counter is its value, `GET` of a `siblings` key its single value (an
//! error names `TRIARCH.GETV` when there are several), `SET` of a `siblings` key supersedes what
//! the coordinator's read observed, `DEL` of a `siblings`, `set` or `map` key removes what the
//! coordinator's read observed. A request a keyspace's policy does not support is answered
//! [`RequestError::WrongPolicy`] and changes nothing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use std::fmt;
use triarch_core::causal::{ActorId, VersionVector};
use triarch_core::crdt::Versioned;
use triarch_core::{
    ConfigError, KeyspaceConfig, KeyspaceSettings, MergePolicy, Model, NodeId, ReadPolicy,
};
use triarch_leaderless::KeyspaceStats;
pub use triarch_leaderless::state::{Operation, OperationResult, SiblingsView, View};
pub use triarch_primary::engine::{GroupInfo, ReadRecord};
pub use triarch_primary::machine::{Command, CommandResult};

/// What a write to a primary-backup keyspace returns besides its reply: the index of its log
/// entry. A later read presenting it ([`Request::GetWith`] with `session`) is served by any
/// voter that has applied that entry (read-your-writes), else by the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionToken {
    pub keyspace: String,
    pub index: u64,
}

/// How many replicas a request waits for: a count, or a level resolved against the keyspace's
/// N (Cassandra's and Riak's vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the key's N replicas (`N / 2 + 1`).
    Quorum,
    /// All N replicas.
    All,
    /// Exactly this many replicas (validated against N).
    Count(u8),
}

impl Consistency {
    /// The number of replicas for a keyspace of `n` replicas per key.
    pub fn resolve(self, n: u8) -> u8 {
        match self {
            Consistency::One => 1,
            Consistency::Quorum => n / 2 + 1,
            Consistency::All => n,
            Consistency::Count(c) => c,
        }
    }

    /// `ONE`, `QUORUM`, `ALL` (any case) or a count of 1 to 255.
    pub fn parse(text: &str) -> Option<Consistency> {
        match text.to_ascii_uppercase().as_str() {
            "ONE" => Some(Consistency::One),
            "QUORUM" => Some(Consistency::Quorum),
            "ALL" => Some(Consistency::All),
            n => n
                .parse::<u8>()
                .ok()
                .filter(|&c| c >= 1)
                .map(Consistency::Count),
        }
    }
}

impl From<u8> for Consistency {
    fn from(count: u8) -> Self {
        Consistency::Count(count)
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consistency::One => f.write_str("one"),
            Consistency::Quorum => f.write_str("quorum"),
            Consistency::All => f.write_str("all"),
            Consistency::Count(c) => write!(f, "{c}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read a key; `r` overrides the keyspace's read quorum for this request.
    Get {
        key: Bytes,
        r: Option<Consistency>,
    },
    /// Write a key; `w` overrides the keyspace's write quorum for this request.
    Set {
        key: Bytes,
        value: Bytes,
        w: Option<Consistency>,
    },
    /// Delete a key (a tombstone write); `w` as for `Set`.
    Delete {
        key: Bytes,
        w: Option<Consistency>,
    },
    /// Read a key of a primary-backup keyspace under read policy `policy` (`None`: the
    /// keyspace's), presenting `session`, the token of the client's last write to the keyspace
    /// (see [`SessionToken`]), for `session` reads.
    GetWith {
        key: Bytes,
        policy: Option<ReadPolicy>,
        session: Option<u64>,
    },
    /// Read the merged state of a key of a `siblings`, `counter`, `set` or `map` keyspace.
    Read {
        key: Bytes,
        r: Option<Consistency>,
    },
    /// Apply an operation to a key of a keyspace of the operation's merge policy. `r` is the
    /// quorum of the read that removes and map writes make first; `w` the write quorum.
    Apply {
        key: Bytes,
        op: Operation,
        r: Option<Consistency>,
        w: Option<Consistency>,
    },
    /// Compare-and-set on a primary-backup keyspace: write `new` if the key's value is
    /// `expected` (`None`: the key is absent). Reply: [`Reply::Swapped`].
    Cas {
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    },
    /// The values and versions of `keys`, all in one primary-backup keyspace, read
    /// linearizably and atomically (what `WATCH` records, and a consistent snapshot of several
    /// keys). Reply: [`Reply::Watched`].
    Watch {
        keys: Vec<Bytes>,
    },
    /// `MULTI`/`EXEC` on a primary-backup keyspace: `commands` applied atomically, as one log
    /// entry, if every watched key still has the version `Watch` returned. Every key must belong
    /// to the same primary-backup keyspace. Reply: [`Reply::Exec`].
    Exec {
        watches: Vec<(Bytes, u64)>,
        commands: Vec<Command>,
    },
    CreateKeyspace(KeyspaceSpec),
    /// Add a member to the cluster (its leaderless ring), moving data to it.
    Join(crate::meta::Joined),
    /// Take a joined member off the ring, moving its data away.
    Decommission {
        id: NodeId,
    },
    /// The membership and this node's part in a move.
    Membership,
    ListKeyspaces,
    KeyspaceInfo {
        name: String,
    },
    /// Re-place primary-backup keyspace `name` in region `home` (`None`: no home region): the
    /// metadata group records it, then the group's leader moves its voters one server at a
    /// time. Reply: [`Reply::Created`] once the new placement is decided (the move itself goes
    /// on in the background; `KeyspaceInfo` shows its voters, learners and target).
    SetHome {
        name: String,
        home: Option<String>,
    },
}

/// A keyspace as a client asks for it: settings left out take the model's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyspaceSpec {
    pub name: String,
    pub model: Model,
    pub settings: KeyspaceSettings,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A write or delete reached its quorum; for deletes, whether a live value was there (for
    /// `siblings`, `set` and `map` keys: whether the coordinator's read observed one).
    Written {
        existed: bool,
    },
    /// A read's value (`None`: absent or deleted).
    Value(Option<Bytes>),
    /// [`Request::Read`]: the join of the first R replicas' states (an empty state for a key
    /// never written).
    State(View),
    /// [`Request::Apply`]: the operation reached its write quorum (or changed nothing).
    Applied(OperationResult),
    /// [`Request::Cas`]: whether it wrote.
    Swapped(bool),
    /// [`Request::Watch`]: each key's value and version (0: never written).
    Watched(Vec<ReadRecord>),
    /// [`Request::Exec`]: one result per command, or `None` when a watched key had changed
    /// and nothing was applied.
    Exec(Option<Vec<CommandResult>>),
    Created,
    Keyspaces(Vec<KeyspaceConfig>),
    KeyspaceInfo(Box<KeyspaceInfo>),
    /// [`Request::Join`], [`Request::Decommission`] (as decided), [`Request::Membership`].
    Membership(Box<crate::meta::MembershipStatus>),
    Error(RequestError),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyspaceInfo {
    pub config: KeyspaceConfig,
    /// What this node has counted for the keyspace (it coordinates only some requests).
    pub stats: KeyspaceStats,
    pub members: Vec<NodeId>,
    /// Primary-backup keyspaces: this node's view of the keyspace's Raft group (`None` on a
    /// node that is not one of its voters).
    pub group: Option<GroupInfo>,
    /// Multi-leader keyspaces: this node's region, its group, counters and shipping lag.
    pub multileader: Option<triarch_multileader::engine::KeyspaceInfo>,
}

/// Why a request did not succeed. Protocol outcomes, not programmer errors: each maps to a clear
/// client-facing error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("quorum not reached: {acks} of {needed} replicas answered in time")]
    QuorumFailed { acks: u8, needed: u8 },
    #[error("write superseded: replicas kept reporting newer concurrent writes; retry")]
    Superseded,
    #[error(
        "replica {coordinator}, which coordinates this operation, did not answer in time; the operation may or may not have happened"
    )]
    CoordinatorUnavailable { coordinator: NodeId },
    #[error("unknown keyspace '{0}'")]
    UnknownKeyspace(String),
    #[error("keyspace '{0}' already exists")]
    KeyspaceExists(String),
    #[error("{0}")]
    InvalidConfig(#[from] ConfigError),
    #[error("{setting}={value} is out of range for this keyspace (1..={n})")]
    InvalidQuorum {
        setting: &'static str,
        value: u8,
        n: u8,
    },
    #[error("key is {len} bytes; the limit is {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes; the limit is {max}")]
    ValueTooLarge { len: usize, max: usize },
    /// The command does not apply to the keyspace's merge policy. Drivers that know the
    /// command's name say it instead of "this command".
    #[error(
        "keyspace '{keyspace}' uses merge policy {policy}; this command needs {}",
        policies(needs)
    )]
    WrongPolicy {
        keyspace: String,
        policy: MergePolicy,
        needs: &'static [MergePolicy],
    },
    #[error(
        "key has {count} concurrent values (siblings); read them all with TRIARCH.GETV and resolve them with TRIARCH.SETV"
    )]
    Siblings { count: usize },
    #[error("invalid causal context: {0}")]
    InvalidContext(#[from] ContextError),
    #[error("increment or decrement would overflow")]
    CounterOverflow,
    #[error("the key holds a {stored} state, not {expected} (was the keyspace recreated?)")]
    StoredPolicyMismatch {
        stored: MergePolicy,
        expected: MergePolicy,
    },
    #[error(
        "{node} is not a replica of this key in its own view of the ring: the nodes disagree about membership"
    )]
    MembershipMismatch { node: NodeId },
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("keyspace '{keyspace}' is {model}; this command needs a primary-backup keyspace")]
    NeedsPrimaryBackup { keyspace: String, model: Model },
    #[error(
        "keyspace '{keyspace}' is primary-backup: its values are strings (GET, SET, DEL, INCR, TRIARCH.CAS, MULTI/EXEC); this command needs a leaderless keyspace with a merge policy"
    )]
    NotForPrimaryBackup { keyspace: String },
    #[error("a transaction's keys must all belong to one primary-backup keyspace")]
    CrossKeyspace,
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error(
        "no leader of keyspace '{keyspace}' could be reached; the operation may or may not have happened"
    )]
    NoLeader { keyspace: String },
    #[error("no outcome within the request timeout; the operation may or may not have happened")]
    Timeout,
    #[error(
        "the cluster's metadata group has no reachable leader (a majority of its voters is down or cut off); the keyspace may or may not have been created"
    )]
    MetadataUnavailable,
    #[error("membership change refused: {0}")]
    MembershipRefused(String),
    #[error(
        "this node is joining the cluster: it serves requests once TRIARCH.CLUSTER JOIN is decided"
    )]
    NotJoined,
    #[error(
        "refused for clock skew: a timestamp runs further ahead of a replica's clock than clock_forward_bound_ms allows (this node's clock, or the one that stamped the record this write must follow); the write may have reached some replicas"
    )]
    ClockAhead,
}

fn policies(needs: &[MergePolicy]) -> String {
    let names: Vec<&str> = needs.iter().map(|p| p.as_str()).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

impl RequestError {
    /// The RESP error code that starts the error line (`-CODE message`).
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::QuorumFailed { .. } | RequestError::CoordinatorUnavailable { .. } => {
                "QUORUM"
            }
            RequestError::Superseded
            | RequestError::NoLeader { .. }
            | RequestError::MetadataUnavailable
            | RequestError::NotJoined
            | RequestError::Timeout
            | RequestError::ClockAhead => "TRYAGAIN",
            RequestError::Storage(_) => "IOERR",
            _ => "ERR",
        }
    }

    /// Whether the request certainly changed nothing (Jepsen's `fail`) rather than possibly took
    /// effect (`info`): a write that missed its quorum may still have reached some replicas.
    pub fn is_definite(&self) -> bool {
        !matches!(
            self,
            RequestError::QuorumFailed { .. }
                | RequestError::Superseded
                | RequestError::CoordinatorUnavailable { .. }
                | RequestError::Storage(_)
                | RequestError::NoLeader { .. }
                | RequestError::MetadataUnavailable
                | RequestError::Timeout
                | RequestError::ClockAhead
        )
    }

    /// The error text with "this command" replaced by `command` (RESP knows the command's name).
    pub fn message_for(&self, command: &str) -> String {
        match self {
            RequestError::WrongPolicy { .. }
            | RequestError::NeedsPrimaryBackup { .. }
            | RequestError::NotForPrimaryBackup { .. } => {
                self.to_string().replacen("this command", command, 1)
            }
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for KeyspaceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.model)
    }
}

/// Why a client's causal context was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("not the base64 text TRIARCH.GETV returns")]
    Encoding,
    #[error("does not decode as a causal context")]
    Decode,
    #[error(
        "names actor {0}, which is not a node (leaderless) or region (multi-leader) of this keyspace"
    )]
    UnknownActor(ActorId),
    #[error("counts {count} events of actor {actor}; at most {CONTEXT_EVENTS_MAX} are accepted")]
    TooManyEvents { actor: ActorId, count: u64 },
}

/// The largest event count a client's context may claim for one actor: far beyond any real
/// count (one per write of one key through one replica), far enough below `u64::MAX` that a
/// forged context cannot make a replica's counter overflow.
pub const CONTEXT_EVENTS_MAX: u64 = 1 << 48;

/// The causal context of a `siblings` key as clients carry it: opaque text (URL-safe base64,
/// no padding, of the versioned encoding of a version vector), so that it fits an HTTP header
/// and can be pasted into redis-cli. The empty text is the empty context (a blind write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CausalToken;

impl CausalToken {
    pub fn encode(context: &VersionVector) -> String {
        if context.is_empty() {
            return String::new();
        }
        URL_SAFE_NO_PAD.encode(context.encode())
    }

    /// Parses a token; checks only its shape (the node checks the actors against its members).
    pub fn decode(text: &[u8]) -> Result<VersionVector, ContextError> {
        let text = text.trim_ascii();
        if text.is_empty() {
            return Ok(VersionVector::new());
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| ContextError::Encoding)?;
        VersionVector::decode(&bytes).map_err(|_| ContextError::Decode)
    }

    /// Checks a decoded context against the actors of its keyspace (the members of a
    /// leaderless keyspace, the regions of a multi-leader one).
    pub fn validate(context: &VersionVector, actors: &[ActorId]) -> Result<(), ContextError> {
        for (actor, count) in context.iter() {
            if !actors.contains(&actor) {
                return Err(ContextError::UnknownActor(actor));
            }
            if count > CONTEXT_EVENTS_MAX {
                return Err(ContextError::TooManyEvents { actor, count });
            }
        }
        Ok(())
    }
}

/// URL-safe base64 without padding, the alphabet of [`CausalToken`]: for drivers that must carry
/// binary values in text (the HTTP API's list of siblings).
pub fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_levels_resolve_against_n_and_parse() {
        assert_eq!(Consistency::One.resolve(5), 1);
        assert_eq!(Consistency::Quorum.resolve(5), 3);
        assert_eq!(Consistency::Quorum.resolve(3), 2);
        assert_eq!(Consistency::All.resolve(3), 3);
        assert_eq!(Consistency::Count(2).resolve(3), 2);
        assert_eq!(Consistency::parse("quorum"), Some(Consistency::Quorum));
        assert_eq!(Consistency::parse("ALL"), Some(Consistency::All));
        assert_eq!(Consistency::parse("2"), Some(Consistency::Count(2)));
        assert_eq!(Consistency::parse("0"), None);
        assert_eq!(Consistency::parse("most"), None);
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let context: VersionVector = [(ActorId(1), 3), (ActorId(2), 1)].into_iter().collect();
        let token = CausalToken::encode(&context);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(CausalToken::decode(token.as_bytes()).unwrap(), context);
        assert_eq!(CausalToken::encode(&VersionVector::new()), "");
        assert_eq!(CausalToken::decode(b"").unwrap(), VersionVector::new());
        assert_eq!(CausalToken::decode(b"!!"), Err(ContextError::Encoding));
        assert_eq!(CausalToken::decode(b"AAAA"), Err(ContextError::Decode));
        let members = [ActorId(1), ActorId(2)];
        assert!(CausalToken::validate(&context, &members).is_ok());
        assert_eq!(
            CausalToken::validate(&context, &members[..1]),
            Err(ContextError::UnknownActor(ActorId(2)))
        );
        let huge: VersionVector = [(ActorId(1), u64::MAX)].into_iter().collect();
        assert!(matches!(
            CausalToken::validate(&huge, &members),
            Err(ContextError::TooManyEvents { .. })
        ));
    }

    #[test]
    fn wrong_policy_errors_name_the_command_and_the_policies_it_needs() {
        let e = RequestError::WrongPolicy {
            keyspace: "x".into(),
            policy: MergePolicy::Set,
            needs: &[MergePolicy::Counter],
        };
        assert_eq!(
            e.message_for("INCR"),
            "keyspace 'x' uses merge policy set; INCR needs counter"
        );
        let e = RequestError::WrongPolicy {
            keyspace: "x".into(),
            policy: MergePolicy::Map,
            needs: &[
                MergePolicy::Lww,
                MergePolicy::Siblings,
                MergePolicy::Counter,
            ],
        };
        assert_eq!(
            e.to_string(),
            "keyspace 'x' uses merge policy map; this command needs lww, siblings or counter"
        );
        assert!(e.is_definite());
        assert!(
            !RequestError::CoordinatorUnavailable {
                coordinator: NodeId(2)
            }
            .is_definite()
        );
    }
}
