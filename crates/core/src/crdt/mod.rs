//! Conflict-free replicated data types: values that replicas change independently and merge
//! without coordination, each with a merge that cannot lose an acknowledged effect.
//!
//! | type | use |
//! |---|---|
//! | [`LwwRegister`] | `prefs`-style keys: the write with the largest [`HlcTimestamp`](crate::HlcTimestamp) wins, and the loser is reported |
//! | [`MvRegister`] | keep concurrent writes as siblings (a [`DvvSet`](crate::causal::DvvSet)) |
//! | [`GCounter`], [`PnCounter`] | counters that are exact under duplication and reordering |
//! | [`AwSet`] | the shopping cart: add-wins observed-remove set without tombstones |
//! | [`LwwMap`] | hashes (`HSET`/`HGET`/`HDEL`/`HGETALL`): one LWW register per field |
//!
//! Every type implements [`Crdt`]; the ones whose full state is large to ship implement
//! [`DeltaCrdt`] too; and every type encodes to a compact versioned form through [`Versioned`].
//! `docs/merge.md` tabulates the operations and merge semantics.

mod awset;
mod codec;
mod counter;
#[cfg(test)]
pub(crate) mod laws;
mod lww;
mod lww_map;
mod mvreg;

pub use awset::{AwSet, AwSetDelta};
pub use codec::{DecodeError, FORMAT_VERSION, InvalidState, Versioned};
pub use counter::{CounterOverflow, GCounter, GCounterDelta, PnCounter, PnCounterDelta};
pub use lww::{Discarded, LwwOutcome, LwwRegister};
pub use lww_map::{LwwMap, LwwMapDelta};
pub use mvreg::MvRegister;

/// A state-based CRDT: a join-semilattice whose join is [`Crdt::merge`].
///
/// Laws, for all states `a`, `b`, `c` that replicas can reach (`⊔` is `merge`, `=` is `==`):
///
/// - **commutative**: `a ⊔ b = b ⊔ a`, so it does not matter which replica merges which;
/// - **associative**: `(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)`, so gossip may take any route;
/// - **idempotent**: `a ⊔ a = a`, so a state delivered twice changes nothing.
///
/// Together they make replicas that have received the same states (in any order, any number
/// of times) equal, which is what lets anti-entropy be as sloppy as networks are. Each type's
/// tests check the three laws with property tests (`crdt::laws`).
///
/// The laws hold on states that the type's own operations produce. A hand-built or corrupt
/// state (two different writes under one dot, say) can break them; decoders reject what they
/// can detect ([`InvalidState`]), and actor ids must not be shared (see
/// [`ActorId`](crate::causal::ActorId)).
pub trait Crdt {
    /// Folds `other` into `self`: afterwards `self` is the least state that contains both.
    fn merge(&mut self, other: &Self);
}

/// A CRDT whose operations can ship as small deltas instead of the full state (Almeida et al.,
/// "Delta State Replicated Data Types", 2018).
///
/// Each operation returns a delta; applying it at another replica has the same effect as
/// merging the full state the operation produced there. Laws, beyond those of [`Crdt`]:
///
/// - applying a delta is idempotent, and deltas commute with each other, so replicas that
///   receive the same deltas in any order, with duplicates, reach the same state;
/// - the replica that issued the delta is unchanged by applying it again.
pub trait DeltaCrdt: Crdt {
    /// What an operation ships.
    type Delta;

    /// Folds a delta received from any replica (or the same one, again) into `self`.
    fn apply(&mut self, delta: &Self::Delta);
}
