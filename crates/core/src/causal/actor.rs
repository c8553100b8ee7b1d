//! Actors and dots: the names of the events that causal metadata tracks.

use crate::crdt::InvalidState;
use crate::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A source of events that causal metadata must tell apart: a replica in a leaderless keyspace,
/// a region in a multi-leader keyspace.
///
/// Invariant the callers keep: one actor issues events from one place at a time. Two replicas
/// that issued events under the same actor id would give two different writes the same [`Dot`],
/// and every structure in this module would then silently keep one and drop the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActorId(pub u32);

impl From<NodeId> for ActorId {
    /// A node is an actor under its own id: node ids are never reused (see [`NodeId`]), so
    /// neither are the actor ids derived from them.
    fn from(node: NodeId) -> Self {
        ActorId(node.0)
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a{}", self.0)
    }
}

/// One event: the `counter`-th event that `actor` issued.
///
/// Invariant: `counter >= 1` (an actor's first event is 1; 0 means "no event" in a
/// [`VersionVector`](super::VersionVector)). Dots order by actor, then counter, which is the
/// order every structure here stores and iterates them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "DotWire")]
pub struct Dot {
    actor: ActorId,
    counter: u64,
}

impl Dot {
    /// # Panics
    /// If `counter` is 0: no event has that number.
    pub fn new(actor: ActorId, counter: u64) -> Self {
        assert!(counter >= 1, "dot counters start at 1 (actor {actor})");
        Dot { actor, counter }
    }

    pub fn actor(self) -> ActorId {
        self.actor
    }

    pub fn counter(self) -> u64 {
        self.counter
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.actor, self.counter)
    }
}

/// The serialized shape of [`Dot`], checked before it becomes one.
#[derive(Deserialize)]
struct DotWire {
    actor: ActorId,
    counter: u64,
}

impl TryFrom<DotWire> for Dot {
    type Error = InvalidState;

    fn try_from(wire: DotWire) -> Result<Self, InvalidState> {
        if wire.counter == 0 {
            return Err(InvalidState::ZeroDot { actor: wire.actor });
        }
        Ok(Dot {
            actor: wire.actor,
            counter: wire.counter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_order_by_actor_then_counter() {
        let a1 = Dot::new(ActorId(1), 1);
        let a2 = Dot::new(ActorId(1), 2);
        let b1 = Dot::new(ActorId(2), 1);
        assert!(a1 < a2 && a2 < b1);
    }

    #[test]
    #[should_panic(expected = "dot counters start at 1")]
    fn a_dot_numbered_zero_is_a_programmer_error() {
        let _ = Dot::new(ActorId(1), 0);
    }

    #[test]
    fn a_decoded_dot_numbered_zero_is_an_error_not_a_panic() {
        let bytes = postcard::to_allocvec(&(7u32, 0u64)).expect("encoding a tuple");
        assert!(postcard::from_bytes::<Dot>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&(7u32, 3u64)).expect("encoding a tuple");
        assert_eq!(
            postcard::from_bytes::<Dot>(&bytes).ok(),
            Some(Dot::new(ActorId(7), 3))
        );
    }
}
