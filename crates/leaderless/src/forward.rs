//! At-most-once execution of forwarded operations.
//!
//! A node outside a key's preference list forwards a `counter`, `set`, `map` or `siblings`
//! operation to one of the key's replicas (only replicas issue dots). Unlike the states and
//! deltas replicas exchange, an operation is not idempotent: a duplicated `INCRBY 5` would count
//! ten, and a late duplicate of `SREM x` would remove an `x` added after it. The network may
//! duplicate and delay messages, so the replica admits each forward once:
//!
//! - A forward is named by its `sent` timestamp, from the forwarder's hybrid logical clock:
//!   unique per forwarder and increasing in send order, restarts included (the clock ceiling,
//!   which is durable before the forward leaves: a `Forward` waits for its sender's sync).
//! - A replica remembers the forwards it admitted for [`FORWARD_DEDUPE_WINDOW`] (local time), and
//!   refuses a name it remembers (a duplicate: dropped, the first copy answers).
//! - What it forgets raises the forwarder's **watermark**: a forward sent no later than one the
//!   replica has already forgotten is refused as stale. Only a copy delayed by more than the
//!   window behind a later forward can be refused wrongly, and that forwarder has long given up.
//! - A restarted replica remembers nothing, so it refuses every forward sent before it started
//!   (`sent < started`). A forward the replica ran before the crash was stamped before its
//!   clock ceiling, which the node persists before the forward runs, and the restarted clock
//!   starts above that ceiling.
//!
//! A stale forward is answered (not dropped), with the replica's clock, which the forwarder
//! observes: a forwarder whose clock lags the replica's start is refused once, not forever.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use triarch_core::{HlcTimestamp, Instant, NodeId};

/// How long a replica remembers each forward it admitted: far beyond any delay a duplicate
/// sees in practice (the simulator's latency is at most 0.5 s; TCP does not duplicate).
pub const FORWARD_DEDUPE_WINDOW: Duration = Duration::from_secs(10);
/// The most forwards remembered per forwarder; beyond it the oldest are forgotten early (which
/// only raises the watermark sooner).
pub const FORWARD_DEDUPE_ENTRIES_MAX: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Run it.
    Fresh,
    /// Already admitted: drop this copy.
    Duplicate,
    /// Sent before this replica started, or no later than a forward it has forgotten: refuse.
    Stale,
}

#[derive(Debug, Default)]
struct Forwarder {
    /// Every `sent` at or below this is refused.
    watermark: Option<HlcTimestamp>,
    seen: BTreeSet<HlcTimestamp>,
    /// `seen` in admission order, with the local time of admission.
    order: VecDeque<(Instant, HlcTimestamp)>,
}

#[derive(Debug)]
pub struct ForwardAdmission {
    started: HlcTimestamp,
    forwarders: BTreeMap<NodeId, Forwarder>,
}

impl ForwardAdmission {
    /// `started`: a timestamp this node issued when it (re)started.
    pub fn new(started: HlcTimestamp) -> Self {
        ForwardAdmission {
            started,
            forwarders: BTreeMap::new(),
        }
    }

    pub fn admit(&mut self, from: NodeId, sent: HlcTimestamp, now: Instant) -> Admission {
        if sent.node != from || sent < self.started {
            return Admission::Stale;
        }
        let f = self.forwarders.entry(from).or_default();
        while let Some(&(at, oldest)) = f.order.front() {
            let expired = at + FORWARD_DEDUPE_WINDOW <= now;
            if !expired && f.order.len() < FORWARD_DEDUPE_ENTRIES_MAX {
                break;
            }
            f.order.pop_front();
            f.seen.remove(&oldest);
            f.watermark = f.watermark.max(Some(oldest));
        }
        if f.watermark.is_some_and(|w| sent <= w) {
            return Admission::Stale;
        }
        if !f.seen.insert(sent) {
            return Admission::Duplicate;
        }
        f.order.push_back((now, sent));
        assert_eq!(
            f.seen.len(),
            f.order.len(),
            "one admission per remembered name"
        );
        Admission::Fresh
    }

    /// Forwards remembered, over every forwarder.
    pub fn remembered(&self) -> usize {
        self.forwarders.values().map(|f| f.seen.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(wall_ms: u64, node: u32) -> HlcTimestamp {
        HlcTimestamp {
            wall_ms,
            logical: 0,
            node: NodeId(node),
        }
    }

    #[test]
    fn a_duplicate_is_dropped_and_a_forgotten_one_is_stale_not_fresh() {
        let mut a = ForwardAdmission::new(ts(100, 1));
        let t0 = Instant::ZERO;
        assert_eq!(a.admit(NodeId(2), ts(200, 2), t0), Admission::Fresh);
        assert_eq!(a.admit(NodeId(2), ts(200, 2), t0), Admission::Duplicate);
        // Reordered but fresh.
        assert_eq!(a.admit(NodeId(2), ts(150, 2), t0), Admission::Fresh);
        // After the window the names are forgotten; a late duplicate is refused, not re-run.
        let later = t0 + FORWARD_DEDUPE_WINDOW;
        assert_eq!(a.admit(NodeId(2), ts(300, 2), later), Admission::Fresh);
        assert_eq!(a.admit(NodeId(2), ts(200, 2), later), Admission::Stale);
        assert_eq!(a.admit(NodeId(2), ts(150, 2), later), Admission::Stale);
        assert_eq!(a.remembered(), 1);
    }

    #[test]
    fn forwards_sent_before_a_restart_or_under_a_foreign_name_are_stale() {
        let mut a = ForwardAdmission::new(ts(100, 1));
        assert_eq!(
            a.admit(NodeId(2), ts(99, 2), Instant::ZERO),
            Admission::Stale
        );
        assert_eq!(
            a.admit(NodeId(2), ts(500, 3), Instant::ZERO),
            Admission::Stale
        );
        // Forwarders are independent.
        assert_eq!(
            a.admit(NodeId(3), ts(500, 3), Instant::ZERO),
            Admission::Fresh
        );
        assert_eq!(
            a.admit(NodeId(2), ts(500, 2), Instant::ZERO),
            Admission::Fresh
        );
    }
}
