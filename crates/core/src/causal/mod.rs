//! Causal metadata: who wrote what, and which writes had seen which.
//!
//! Replicas that accept writes independently (leaderless keyspaces, the regions of a
//! multi-leader keyspace) cannot order writes by arrival; they order them by what each writer
//! had *seen*. This module holds the vocabulary for that:
//!
//! - [`ActorId`] names a source of events (a replica or a region) and [`Dot`] names one event:
//!   the `n`-th event of an actor.
//! - [`VersionVector`] summarises a causal history that is closed downwards (it holds every
//!   event of an actor up to a counter) and compares two histories ([`CausalOrder`]).
//! - [`CausalContext`] is a version vector plus a few dots beyond it, for histories with gaps
//!   (deltas received out of order).
//! - [`DvvSet`] is the dotted version vector set of Preguiça et al., "Dotted Version Vectors:
//!   Logical Clocks for Optimistic Replication" (2012): the siblings of one key plus the causal
//!   context that tells which of them a new write supersedes.
//!
//! Everything here is deterministic (ordered maps only) and never reads a clock.

mod actor;
mod context;
pub(crate) mod dvvset;
pub(crate) mod version_vector;

pub use actor::{ActorId, Dot};
pub use context::CausalContext;
pub use dvvset::DvvSet;
pub use version_vector::{CausalOrder, VersionVector};
