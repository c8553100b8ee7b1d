//! Hybrid logical clocks (Kulkarni et al., "Logical Physical Clocks", OPODIS 2014).
//!
//! A timestamp is `(wall_ms, logical, node)`. `wall_ms` tracks the largest physical time seen
//! (local or in a received message), `logical` orders events within one millisecond, and `node`
//! breaks the remaining ties so that every timestamp a cluster issues is distinct and totally
//! ordered. Invariants: timestamps a clock issues strictly increase, whatever the physical clock
//! does (it may stand still or jump back); a clock that observes a timestamp issues only later
//! ones afterwards (causality).

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HlcTimestamp {
    pub wall_ms: u64,
    pub logical: u32,
    pub node: NodeId,
}

impl HlcTimestamp {
    /// Smaller than every timestamp a clock issues.
    pub const MIN: HlcTimestamp = HlcTimestamp {
        wall_ms: 0,
        logical: 0,
        node: NodeId(0),
    };
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.wall_ms, self.logical, self.node)
    }
}

/// A remote timestamp ran further ahead of our physical clock than the configured bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "timestamp {remote_wall_ms} ms is {ahead_ms} ms ahead of the local clock (bound {bound_ms} ms)"
)]
pub struct ClockAhead {
    pub remote_wall_ms: u64,
    pub ahead_ms: u64,
    pub bound_ms: u64,
}

/// One node's hybrid logical clock.
#[derive(Clone, Debug)]
pub struct Hlc {
    node: NodeId,
    last: HlcTimestamp,
    /// How far ahead of our physical clock a received timestamp may be before `observe` refuses
    /// it; this bound is what keeps one skewed clock from dragging every node into the future.
    max_forward_ms: u64,
}

impl Hlc {
    pub fn new(node: NodeId, max_forward_ms: u64) -> Self {
        Hlc {
            node,
            last: HlcTimestamp {
                wall_ms: 0,
                logical: 0,
                node,
            },
            max_forward_ms,
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> HlcTimestamp {
        self.last
    }

    /// Issues a new timestamp for a local event at physical time `wall_ms`.
    pub fn now(&mut self, wall_ms: u64) -> HlcTimestamp {
        let next = if wall_ms > self.last.wall_ms {
            HlcTimestamp {
                wall_ms,
                logical: 0,
                node: self.node,
            }
        } else {
            let logical = self
                .last
                .logical
                .checked_add(1)
                .expect("HLC logical counter overflow");
            HlcTimestamp {
                wall_ms: self.last.wall_ms,
                logical,
                node: self.node,
            }
        };
        assert!(next > self.last, "HLC must strictly increase");
        self.last = next;
        next
    }

    /// Raises the clock to at least `floor_wall_ms` (the ceiling persisted before a restart),
    /// whatever the physical clock says: a restarted node must never issue a timestamp it issued
    /// before.
    pub fn restore_floor(&mut self, floor_wall_ms: u64) {
        if floor_wall_ms > self.last.wall_ms {
            self.last = HlcTimestamp {
                wall_ms: floor_wall_ms,
                logical: 0,
                node: self.node,
            };
        }
    }

    /// Merges a timestamp received from another node, so that later local timestamps order after
    /// it. Refuses (and leaves the clock unchanged) when `remote` is more than the bound ahead of
    /// `wall_ms`.
    pub fn observe(&mut self, remote: HlcTimestamp, wall_ms: u64) -> Result<(), ClockAhead> {
        let ahead_ms = remote.wall_ms.saturating_sub(wall_ms);
        if ahead_ms > self.max_forward_ms {
            return Err(ClockAhead {
                remote_wall_ms: remote.wall_ms,
                ahead_ms,
                bound_ms: self.max_forward_ms,
            });
        }
        let merged = (remote.wall_ms, remote.logical).max((self.last.wall_ms, self.last.logical));
        if merged > (self.last.wall_ms, self.last.logical) {
            self.last = HlcTimestamp {
                wall_ms: merged.0,
                logical: merged.1,
                node: self.node,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strictly_increases_when_the_physical_clock_stands_still_or_goes_back() {
        let mut c = Hlc::new(NodeId(1), 1_000);
        let a = c.now(100);
        let b = c.now(100);
        let d = c.now(50);
        assert!(a < b && b < d);
        assert_eq!(d.wall_ms, 100);
    }

    #[test]
    fn observing_a_remote_timestamp_orders_later_events_after_it() {
        let mut a = Hlc::new(NodeId(1), 10_000);
        let mut b = Hlc::new(NodeId(2), 10_000);
        let sent = a.now(5_000); // a's clock is ahead
        b.observe(sent, 1_000).unwrap();
        assert!(b.now(1_000) > sent);
    }

    #[test]
    fn refuses_a_timestamp_beyond_the_forward_bound() {
        let mut c = Hlc::new(NodeId(1), 500);
        let far = HlcTimestamp {
            wall_ms: 10_000,
            logical: 0,
            node: NodeId(2),
        };
        let err = c.observe(far, 1_000).unwrap_err();
        assert_eq!(err.ahead_ms, 9_000);
        assert!(
            c.now(1_000) < far,
            "a refused timestamp must not move the clock"
        );
    }

    proptest! {
        #[test]
        fn any_interleaving_of_events_is_strictly_increasing(
            steps in proptest::collection::vec((0u64..10_000, any::<bool>(), 0u64..10_000, 0u32..4), 1..200)
        ) {
            let mut c = Hlc::new(NodeId(1), u64::MAX);
            let mut prev = c.last();
            for (wall, remote, remote_wall, remote_logical) in steps {
                if remote {
                    let r = HlcTimestamp { wall_ms: remote_wall, logical: remote_logical, node: NodeId(2) };
                    c.observe(r, wall).unwrap();
                    let next = c.now(wall);
                    prop_assert!(next > r);
                    prop_assert!(next > prev);
                    prev = next;
                } else {
                    let next = c.now(wall);
                    prop_assert!(next > prev);
                    prev = next;
                }
            }
        }
    }
}
