//! Failure detection: which peers this node currently believes it can reach.
//!
//! As in Dynamo (§4.8.3), the view is purely local and built from the node's own traffic: there
//! is no membership gossip of liveness, because what matters to a coordinator is whether *it*
//! can reach a replica now. The rule is a plain timeout detector:
//!
//! - Every request this node sends a peer that expects an answer (a write, a read, a merge, a
//!   forward, a handoff) is *unanswered* until the next message of any kind arrives from that
//!   peer.
//! - A peer is **suspected** once `suspect_after_unanswered` (K) requests sent since it was last
//!   heard from have each stayed unanswered for `suspect_after_silence` (T). Both conditions
//!   matter: K keeps one lost reply on a quiet link from raising a suspicion, T keeps a burst of
//!   requests on a slow link from raising one before any reply could have arrived.
//! - A suspected peer is **probed** (`Ping`) every `probe_interval`, since coordinators stop
//!   counting on it and might otherwise never send it anything again. Any message from it (a
//!   `Pong`, a request of its own, a late reply) clears the suspicion at once.
//!
//! A peer this node never sent anything to is never suspected: there is no evidence. A false
//! suspicion costs little: writes go to a fallback as well (sloppy quorums) and reach the
//! owner through hinted handoff, and reads still ask every replica, suspected ones last.
//! Phi-accrual (Cassandra) would adapt T to the observed inter-arrival times; with the one
//! request timeout the engine already has, a fixed T is easier to reason about and to test.

use std::collections::BTreeMap;
use std::time::Duration;
use triarch_core::{Instant, NodeId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// K: unanswered requests (each at least `suspect_after_silence` old) that make a peer
    /// suspected. At least 1.
    pub suspect_after_unanswered: u32,
    /// T: how long a request goes unanswered before it counts towards K.
    pub suspect_after_silence: Duration,
    /// How often a suspected peer is sent a `Ping`.
    pub probe_interval: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            suspect_after_unanswered: 2,
            // The coordinator's request timeout: a healthy replica answers well within it.
            suspect_after_silence: Duration::from_secs(1),
            probe_interval: Duration::from_millis(500),
        }
    }
}

/// What this node believes about one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerStatus {
    /// Heard from recently, or never asked anything.
    Up,
    /// K requests went unanswered for T; coordinators prefer other nodes and it is probed.
    Suspect,
}

impl PeerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerStatus::Up => "up",
            PeerStatus::Suspect => "suspect",
        }
    }
}

/// One peer's health, for INFO and metrics (see [`crate::Leaderless::peer_health`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHealth {
    pub status: PeerStatus,
    /// When a message from the peer last arrived (`None`: never, since this node started).
    pub last_heard: Option<Instant>,
    /// When the current suspicion began (`None` while up).
    pub suspected_since: Option<Instant>,
    /// Requests sent to the peer since it was last heard from.
    pub unanswered: u64,
    /// How many times the peer went from up to suspected since this node started.
    pub suspicions: u64,
}

impl PeerHealth {
    fn new() -> Self {
        PeerHealth {
            status: PeerStatus::Up,
            last_heard: None,
            suspected_since: None,
            unanswered: 0,
            suspicions: 0,
        }
    }
}

/// When the first K unanswered requests were sent, and when the next probe is due.
#[derive(Debug, Default)]
struct Timers {
    /// Send times of the first K requests since the peer was last heard from, oldest first
    /// (the later ones can only become old enough after these).
    first_unanswered: Vec<Instant>,
    next_probe: Option<Instant>,
}

#[derive(Debug)]
pub struct FailureDetector {
    config: DetectorConfig,
    health: BTreeMap<NodeId, PeerHealth>,
    timers: BTreeMap<NodeId, Timers>,
}

impl FailureDetector {
    /// A detector for every member but `me`; every peer starts up.
    pub fn new(me: NodeId, members: &[NodeId], config: DetectorConfig) -> Self {
        assert!(
            config.suspect_after_unanswered >= 1,
            "a peer is suspected on evidence: K >= 1"
        );
        let peers = members.iter().copied().filter(|m| *m != me);
        FailureDetector {
            config,
            health: peers.clone().map(|p| (p, PeerHealth::new())).collect(),
            timers: peers.map(|p| (p, Timers::default())).collect(),
        }
    }

    /// Starts watching `peer` too (a node joining the ring), unless it is `me` or watched.
    pub fn add_peer(&mut self, me: NodeId, peer: NodeId) {
        if peer != me && !self.health.contains_key(&peer) {
            self.health.insert(peer, PeerHealth::new());
            self.timers.insert(peer, Timers::default());
        }
    }

    pub fn health(&self) -> &BTreeMap<NodeId, PeerHealth> {
        &self.health
    }

    /// Whether `peer` is suspected (never true of this node itself or of strangers).
    pub fn is_suspected(&self, peer: NodeId) -> bool {
        self.health
            .get(&peer)
            .is_some_and(|h| h.status == PeerStatus::Suspect)
    }

    /// Whether the detector has anything to time: an unanswered request, or a peer to probe.
    pub fn is_watching(&self) -> bool {
        self.timers
            .values()
            .any(|t| !t.first_unanswered.is_empty() || t.next_probe.is_some())
    }

    /// A message from `peer` arrived. Returns true if this cleared a suspicion.
    pub fn on_heard(&mut self, peer: NodeId, now: Instant) -> bool {
        let (Some(health), Some(timers)) = (self.health.get_mut(&peer), self.timers.get_mut(&peer))
        else {
            return false;
        };
        health.last_heard = Some(now);
        health.unanswered = 0;
        timers.first_unanswered.clear();
        timers.next_probe = None;
        let recovered = health.status == PeerStatus::Suspect;
        health.status = PeerStatus::Up;
        health.suspected_since = None;
        if recovered {
            tracing::info!(%peer, "peer answers again: no longer suspected");
        }
        recovered
    }

    /// A request that expects an answer was sent to `peer`.
    pub fn on_request_sent(&mut self, peer: NodeId, now: Instant) {
        let k = self.config.suspect_after_unanswered as usize;
        let (Some(health), Some(timers)) = (self.health.get_mut(&peer), self.timers.get_mut(&peer))
        else {
            return;
        };
        health.unanswered += 1;
        if timers.first_unanswered.len() < k {
            timers.first_unanswered.push(now);
        }
    }

    /// Raises the suspicions that are due and returns the peers to probe now.
    pub fn tick(&mut self, now: Instant) -> Vec<NodeId> {
        let k = self.config.suspect_after_unanswered as usize;
        let mut probes = Vec::new();
        for (&peer, health) in &mut self.health {
            let timers = self.timers.get_mut(&peer).expect("one entry per peer");
            if health.status == PeerStatus::Up
                && timers.first_unanswered.len() >= k
                && timers.first_unanswered[k - 1] + self.config.suspect_after_silence <= now
            {
                health.status = PeerStatus::Suspect;
                health.suspected_since = Some(now);
                health.suspicions += 1;
                timers.next_probe = Some(now);
                tracing::info!(%peer, unanswered = health.unanswered, "peer suspected");
            }
            if health.status == PeerStatus::Suspect && timers.next_probe.is_some_and(|at| at <= now)
            {
                timers.next_probe = Some(now + self.config.probe_interval);
                probes.push(peer);
            }
        }
        probes
    }

    pub fn check_invariants(&self) {
        let k = self.config.suspect_after_unanswered as usize;
        assert_eq!(
            self.health.keys().collect::<Vec<_>>(),
            self.timers.keys().collect::<Vec<_>>()
        );
        for (peer, health) in &self.health {
            let timers = &self.timers[peer];
            assert!(timers.first_unanswered.len() <= k);
            assert!(timers.first_unanswered.len() as u64 <= health.unanswered);
            assert!(timers.first_unanswered.is_sorted(), "send times only grow");
            assert_eq!(
                health.status == PeerStatus::Suspect,
                health.suspected_since.is_some(),
                "{peer}: a suspicion has a start"
            );
            assert_eq!(
                health.status == PeerStatus::Suspect,
                timers.next_probe.is_some(),
                "{peer}: exactly the suspected peers are probed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(2);

    fn detector() -> FailureDetector {
        FailureDetector::new(
            NodeId(1),
            &[NodeId(1), A, NodeId(3)],
            DetectorConfig::default(),
        )
    }

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn k_requests_unanswered_for_t_raise_a_suspicion_and_any_message_clears_it() {
        let mut d = detector();
        d.on_request_sent(A, at(0));
        assert!(d.tick(at(5_000)).is_empty(), "one lost reply is not enough");
        assert!(!d.is_suspected(A));
        d.on_request_sent(A, at(5_000));
        assert!(d.tick(at(5_999)).is_empty(), "the second is not T old yet");
        assert_eq!(d.tick(at(6_000)), vec![A], "suspected, and probed at once");
        assert!(d.is_suspected(A));
        assert!(
            d.tick(at(6_400)).is_empty(),
            "next probe after the interval"
        );
        assert_eq!(d.tick(at(6_500)), vec![A]);
        d.check_invariants();
        assert!(d.on_heard(A, at(6_600)));
        assert!(!d.is_suspected(A));
        let h = &d.health()[&A];
        assert_eq!(
            (h.status, h.last_heard, h.unanswered, h.suspicions),
            (PeerStatus::Up, Some(at(6_600)), 0, 1)
        );
        assert!(d.tick(at(60_000)).is_empty());
        d.check_invariants();
    }

    #[test]
    fn a_reply_in_between_resets_the_count_and_strangers_are_ignored() {
        let mut d = detector();
        d.on_request_sent(A, at(0));
        d.on_heard(A, at(100));
        d.on_request_sent(A, at(200));
        assert!(d.tick(at(10_000)).is_empty());
        assert!(!d.is_suspected(A));
        d.on_request_sent(NodeId(9), at(0));
        assert!(!d.on_heard(NodeId(9), at(1)));
        assert!(!d.is_suspected(NodeId(1)), "never itself");
        d.check_invariants();
    }
}
