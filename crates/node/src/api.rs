//! The client API every driver (RESP, HTTP, the simulator's clients) speaks to a node.

use bytes::Bytes;
use std::fmt;
use triarch_core::{ConfigError, KeyspaceConfig, MergePolicy, Model, NodeId};
use triarch_leaderless::KeyspaceStats;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read a key; `r` overrides the keyspace's read quorum for this request.
    Get {
        key: Bytes,
        r: Option<u8>,
    },
    /// Write a key; `w` overrides the keyspace's write quorum for this request.
    Set {
        key: Bytes,
        value: Bytes,
        w: Option<u8>,
    },
    /// Delete a key (a tombstone write); `w` as for `Set`.
    Delete {
        key: Bytes,
        w: Option<u8>,
    },
    CreateKeyspace(KeyspaceSpec),
    ListKeyspaces,
    KeyspaceInfo {
        name: String,
    },
}

/// A keyspace as a client asks for it: settings left out take the model's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyspaceSpec {
    pub name: String,
    pub model: Model,
    pub n: Option<u8>,
    pub r: Option<u8>,
    pub w: Option<u8>,
    pub merge: Option<MergePolicy>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A write or delete reached its quorum; for deletes, whether a live value was there.
    Written {
        existed: bool,
    },
    /// A read's value (`None`: absent or deleted).
    Value(Option<Bytes>),
    Created,
    Keyspaces(Vec<KeyspaceConfig>),
    KeyspaceInfo(KeyspaceInfo),
    Error(RequestError),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyspaceInfo {
    pub config: KeyspaceConfig,
    /// What this node has counted for the keyspace (it coordinates only some requests).
    pub stats: KeyspaceStats,
    pub members: Vec<NodeId>,
}

/// Why a request did not succeed. Protocol outcomes, not programmer errors: each maps to a clear
/// client-facing error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("quorum not reached: {acks} of {needed} replicas answered in time")]
    QuorumFailed { acks: u8, needed: u8 },
    #[error("write superseded: replicas kept reporting newer concurrent writes; retry")]
    Superseded,
    #[error("unknown keyspace '{0}'")]
    UnknownKeyspace(String),
    #[error("keyspace '{0}' already exists")]
    KeyspaceExists(String),
    #[error("the {0} model is not available yet in this version; use leaderless")]
    ModelNotAvailable(Model),
    #[error("merge policy {0} is not available yet in this version; use lww")]
    MergeNotAvailable(MergePolicy),
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
    #[error("storage failure: {0}")]
    Storage(String),
}

impl RequestError {
    /// The RESP error code that starts the error line (`-CODE message`).
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::QuorumFailed { .. } => "QUORUM",
            RequestError::Superseded => "TRYAGAIN",
            RequestError::Storage(_) => "IOERR",
            _ => "ERR",
        }
    }

    /// Whether the request certainly changed nothing (Jepsen's `fail`) rather than possibly took
    /// effect (`info`): a write that missed its quorum may still have reached some replicas.
    pub fn is_definite(&self) -> bool {
        !matches!(
            self,
            RequestError::QuorumFailed { .. } | RequestError::Superseded | RequestError::Storage(_)
        )
    }
}

impl fmt::Display for KeyspaceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.model)
    }
}
