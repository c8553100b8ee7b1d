//! Multi-leader replication: every region of a keyspace accepts writes on its own; regions
//! exchange their changes asynchronously and merge conflicts by the keyspace's policy.
//!
//! Module map (the data flow of one write, top to bottom):
//!
//! | module | what |
//! |---|---|
//! | [`region`] | which nodes form each region; the Raft group that runs one region of a keyspace |
//! | [`engine`] | a node's multi-leader keyspaces: requests into the region's group, shipping of the region's change log to the other regions |
//! | [`machine`] | what a region's committed entry does: a local write, another region's shipped changes (exactly once, in order), a trim |
//! | [`record`] | a key's record in a region, a change, conflict detection and merge (pure) |

pub mod engine;
pub mod machine;
pub mod record;
pub mod region;

pub use engine::{Effect, Env, Message, MlOp, MlOutcome, MultiLeader, MultiLeaderConfig};
pub use region::Regions;
