//! Triarch's shared vocabulary.
//!
//! Everything here is sans-IO: no clock is read (time arrives as [`Instant`] or a wall-clock
//! reading passed in by the driver), no random source is used except an injected [`DetRng`],
//! and nothing touches a socket or a file. Every replication model and the simulator build on
//! these types.

pub mod causal;
pub mod config;
pub mod crdt;
pub mod hash;
pub mod hlc;
pub mod ids;
pub mod limits;
pub mod merge;
pub mod rng;
pub mod time;

pub use config::{
    ConfigError, KeyspaceConfig, KeyspaceSettings, MergePolicy, Model, QuorumMode, ReadPolicy,
};
pub use hlc::{Hlc, HlcTimestamp};
pub use ids::{NodeId, RequestId};
pub use rng::DetRng;
pub use time::{Instant, Now};

/// Keys and values are opaque bytes. `Bytes` makes the many clones along a replication path
/// (coordinator, N replica messages, read repair) reference-count bumps instead of copies.
pub type Key = bytes::Bytes;
/// See [`Key`].
pub type Value = bytes::Bytes;
