//! Checkers: pure functions from what a run produced (its history, the replicas' final records)
//! to the violations found. Each is trusted only because its unit tests feed it a broken input
//! and see it fail, and because `tests/leaderless_seeds.rs` shows it catching the leaderless
//! engine's planted acknowledge-before-quorum bug (`tests/merged_seeds.rs` does the same for
//! [`set`], [`counter`], [`siblings`] and [`map`] with their own planted bugs; `tests/multileader.rs` for [`cart`],
//! [`regional`] and the multi-leader use of [`counter`], with bugs the simulator plants in the
//! shipping between regions and in the cluster's configuration).

pub mod bank;
pub mod bank_history;
pub mod cart;
pub mod convergence;
pub mod counter;
pub mod leader;
pub mod linearizable;
pub mod map;
pub mod regional;
pub mod registers;
pub mod set;
pub mod siblings;
pub mod single_writer;

use std::fmt;

/// What one checker concluded about one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckerResult {
    pub checker: &'static str,
    pub violations: Vec<Violation>,
}

impl CheckerResult {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for CheckerResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            return write!(f, "{}: ok", self.checker);
        }
        write!(
            f,
            "{}: {} violation(s)",
            self.checker,
            self.violations.len()
        )?;
        for v in &self.violations {
            write!(f, "\n  {v}")?;
        }
        Ok(())
    }
}

/// The kinds of violation the checkers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    /// A read returned a value that was never written, written only after the read completed, or
    /// written by a write that definitely failed.
    Unexpected,
    /// A read returned a value older than a write acknowledged before the read began.
    Stale,
    /// A final read (after heal and settle) returned a value older than the last acknowledged
    /// write: an acknowledged write was lost.
    Lost,
    /// No final read of a key with acknowledged writes succeeded, so loss could not be ruled out.
    Unverified,
    /// Replicas of a key hold different records after the final reads repaired them.
    Diverged,
    /// A register's history has no linearization (or the search could not rule one out).
    NotLinearizable,
    /// A bank read whose total is not the initial one, or with an overdrawn account.
    Bank,
    /// A primary-backup group had no agreed leader a settle period after the final heal.
    NoLeader,
    /// A multi-leader region applied another region's change a second time.
    AppliedTwice,
    /// Writes last-writer-wins discarded that the regions did not count.
    Uncounted,
    /// A region whose own nodes were up and connected answered no write.
    Unavailable,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViolationKind::Unexpected => "unexpected",
            ViolationKind::Stale => "stale",
            ViolationKind::Lost => "lost",
            ViolationKind::Unverified => "unverified",
            ViolationKind::Diverged => "diverged",
            ViolationKind::NotLinearizable => "not linearizable",
            ViolationKind::Bank => "bank",
            ViolationKind::NoLeader => "no leader",
            ViolationKind::AppliedTwice => "applied twice",
            ViolationKind::Uncounted => "uncounted",
            ViolationKind::Unavailable => "unavailable",
        })
    }
}

/// One violation: its kind, the key, and the evidence (history indices, values, replicas).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub key: u64,
    /// History index of the completion that exposed it, when an operation did.
    pub index: Option<usize>,
    pub detail: String,
}

impl Violation {
    /// A key that some operation may have changed but that no final read read: `what` (lost
    /// adds, lost writes, ...) cannot be ruled out, which is not a pass.
    pub fn unverified(key: u64, what: &str) -> Violation {
        Violation {
            kind: ViolationKind::Unverified,
            key,
            index: None,
            detail: format!("no final read succeeded: {what} cannot be ruled out"),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] key {}: {}", self.kind, self.key, self.detail)
    }
}

/// Builds [`crate::merged::MergedHistory`]s for the checkers' tests: every operation on key 0
/// through n1, events at increasing times, operations one at a time ([`TestHistory::op`]) or
/// overlapping ([`TestHistory::invoke`], then [`TestHistory::complete`]).
#[cfg(test)]
pub(crate) struct TestHistory {
    pub h: crate::merged::MergedHistory,
    t: u64,
}

#[cfg(test)]
impl TestHistory {
    pub fn new() -> Self {
        TestHistory {
            h: crate::merged::MergedHistory::new(),
            t: 0,
        }
    }

    pub fn invoke(&mut self, process: u64, f: crate::merged::MergedFunction) {
        self.t += 1;
        let (p, at) = (
            crate::history::ProcessId(process),
            triarch_core::Instant(self.t),
        );
        self.h.invoke(p, f, 0, triarch_core::NodeId(1), at);
    }

    pub fn complete(
        &mut self,
        process: u64,
        kind: crate::history::EventType,
        result: Option<crate::merged::ReadResult>,
    ) {
        self.t += 1;
        let (p, at) = (
            crate::history::ProcessId(process),
            triarch_core::Instant(self.t),
        );
        self.h.complete(p, kind, result, at, None);
    }

    /// One operation, invoked and completed.
    pub fn op(
        &mut self,
        process: u64,
        f: crate::merged::MergedFunction,
        kind: crate::history::EventType,
        result: Option<crate::merged::ReadResult>,
    ) {
        self.invoke(process, f);
        self.complete(process, kind, result);
    }

    /// Marks the final phase, once: operations from here on are final.
    pub fn final_phase(&mut self) {
        if self.h.final_phase_start().is_none() {
            self.h.mark_final_phase();
        }
    }
}
