//! The bank checker: transfers between accounts conserve money and never overdraw.
//!
//! ## The workload it judges
//!
//! Accounts are keys holding integer balances, starting from known initial balances. Processes
//! transfer positive amounts between two distinct accounts; a transfer that would overdraw its
//! source is refused (it fails and changes nothing). Other processes read every balance at once,
//! atomically (one transaction or one snapshot), through some node. Operations end `ok`, `fail`
//! (certainly did not happen) or `info` (unknown). Times are any real-time stamps (microseconds
//! or history indices); they only identify operations in reports. The input types are this
//! module's own, so that the simulator's histories and the real-process fault suite's can both
//! be adapted to them.
//!
//! ## The rule
//!
//! For every read that completed `ok`, whatever the outcome of every transfer:
//!
//! 1. **Money is conserved** (else [`BankViolationKind::TotalChanged`]): the balances sum to
//!    the initial total. Each transfer moves money and neither creates nor destroys it, whether
//!    it happened, failed, or is unknown, so any state an atomic read can observe has the
//!    initial total. A read that sees half a transfer, or a transfer applied on one side twice
//!    or lost on one side, breaks this.
//! 2. **No account is overdrawn** (else [`BankViolationKind::Negative`], one per account): every
//!    balance is at least zero. Initial balances are, and a transfer that would overdraw is
//!    refused, so only transfers that were not serialized (two concurrent transfers both
//!    checking the same balance) can drive one below.
//! 3. **The read is of the whole bank** (else [`BankViolationKind::AccountsDiffer`]): it lists
//!    exactly the initial accounts, so that rules 1 and 2 judge every balance.
//!
//! **Final reads**: the last `ok` read through each node is that node's final read, judged by
//! the same rules; violations on it are marked `is_final`. When the caller lists the nodes that
//! must have answered (after the final heal, every node should), a listed node with no `ok` read
//! at all is [`BankViolationKind::NoFinalRead`]: the final state through it could not be
//! verified, which is not a pass.
//!
//! ## Why nothing stronger
//!
//! These invariants hold in every serializable execution, so they are necessary, not
//! sufficient: a read returning balances that no subset of the attempted transfers produces,
//! with the right total, passes. The linearizability of each account is
//! [`super::linearizable`]'s business.

use std::collections::BTreeMap;
use std::fmt;

pub const NAME: &str = "bank";

/// How a transfer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferOutcome {
    Ok { completed_us: u64 },
    Fail,
    Info,
}

/// How a read of every balance ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Every account's balance, read atomically.
    Ok {
        completed_us: u64,
        balances: BTreeMap<u64, i64>,
    },
    Fail,
    Info,
}

/// One operation of a bank history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BankOp {
    Transfer {
        process: u64,
        from: u64,
        to: u64,
        amount: i64,
        invoked_us: u64,
        outcome: TransferOutcome,
    },
    Read {
        process: u64,
        /// The node the read went through.
        node: u64,
        invoked_us: u64,
        outcome: ReadOutcome,
    },
}

/// The read that exposed a violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadId {
    /// Its index in the checked slice.
    pub index: usize,
    pub process: u64,
    pub node: u64,
    pub invoked_us: u64,
    pub completed_us: u64,
    /// Whether it is its node's last `ok` read.
    pub is_final: bool,
}

impl fmt::Display for ReadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}read #{} by process {} via node {} (invoked at {} us, completed at {} us)",
            if self.is_final { "final " } else { "" },
            self.index,
            self.process,
            self.node,
            self.invoked_us,
            self.completed_us
        )
    }
}

/// The kinds of violation, with their evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BankViolationKind {
    /// The balances do not sum to the initial total.
    TotalChanged { expected: i128, found: i128 },
    /// An account's balance is below zero.
    Negative { account: u64, balance: i64 },
    /// The read lacks some initial accounts or lists unknown ones.
    AccountsDiffer {
        missing: Vec<u64>,
        unknown: Vec<u64>,
    },
    /// A node the caller listed has no `ok` read.
    NoFinalRead { node: u64 },
}

/// One violation; `read` is `None` only for [`BankViolationKind::NoFinalRead`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankViolation {
    pub kind: BankViolationKind,
    pub read: Option<ReadId>,
}

impl fmt::Display for BankViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(read) = &self.read {
            write!(f, "{read}: ")?;
        }
        match &self.kind {
            BankViolationKind::TotalChanged { expected, found } => write!(
                f,
                "balances total {found}, not the initial {expected} (money {} {})",
                if found > expected {
                    "created:"
                } else {
                    "destroyed:"
                },
                (found - expected).abs()
            ),
            BankViolationKind::Negative { account, balance } => {
                write!(f, "account {account} is overdrawn at {balance}")
            }
            BankViolationKind::AccountsDiffer { missing, unknown } => write!(
                f,
                "the read lacks accounts {missing:?} and lists unknown accounts {unknown:?}"
            ),
            BankViolationKind::NoFinalRead { node } => write!(
                f,
                "no read through node {node} succeeded, so its final state is unverified"
            ),
        }
    }
}

/// Checks `ops` against the rule in the module documentation, from `initial` balances.
/// `final_nodes` lists the nodes that must have an `ok` read (empty: none required).
/// Violations come in the order of the reads in `ops`, then the missing final reads.
///
/// # Panics
///
/// If the history breaks the workload's contract (a negative initial balance, a transfer that
/// is not of a positive amount between two distinct known accounts, or an `ok` operation that
/// completed before it was invoked): that is a bug in the workload or the adapter.
pub fn check(
    initial: &BTreeMap<u64, i64>,
    ops: &[BankOp],
    final_nodes: &[u64],
) -> Vec<BankViolation> {
    for (&account, &balance) in initial {
        assert!(
            balance >= 0,
            "workload bug: account {account} starts at {balance}"
        );
    }
    let expected: i128 = initial.values().map(|&b| i128::from(b)).sum();

    // The last ok read through each node: the latest completion, the later one in `ops` on a tie.
    let mut last_read: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        match op {
            BankOp::Transfer {
                from,
                to,
                amount,
                invoked_us,
                outcome,
                ..
            } => {
                assert!(
                    *amount > 0 && from != to,
                    "workload bug: op #{index} transfers {amount} from {from} to {to}"
                );
                assert!(
                    initial.contains_key(from) && initial.contains_key(to),
                    "workload bug: op #{index} transfers between {from} and {to}, not both \
                     initial accounts"
                );
                if let TransferOutcome::Ok { completed_us } = outcome {
                    assert!(
                        completed_us >= invoked_us,
                        "adapter bug: op #{index} completed before it was invoked"
                    );
                }
            }
            BankOp::Read {
                node,
                invoked_us,
                outcome: ReadOutcome::Ok { completed_us, .. },
                ..
            } => {
                assert!(
                    completed_us >= invoked_us,
                    "adapter bug: op #{index} completed before it was invoked"
                );
                let last = last_read.entry(*node).or_insert((*completed_us, index));
                if *completed_us >= last.0 {
                    *last = (*completed_us, index);
                }
            }
            BankOp::Read { .. } => {}
        }
    }

    let mut violations = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let BankOp::Read {
            process,
            node,
            invoked_us,
            outcome:
                ReadOutcome::Ok {
                    completed_us,
                    balances,
                },
        } = op
        else {
            continue;
        };
        let read = ReadId {
            index,
            process: *process,
            node: *node,
            invoked_us: *invoked_us,
            completed_us: *completed_us,
            is_final: last_read[node].1 == index,
        };
        let mut report = |kind| {
            violations.push(BankViolation {
                kind,
                read: Some(read.clone()),
            });
        };
        let missing: Vec<u64> = initial
            .keys()
            .filter(|a| !balances.contains_key(a))
            .copied()
            .collect();
        let unknown: Vec<u64> = balances
            .keys()
            .filter(|a| !initial.contains_key(a))
            .copied()
            .collect();
        if !missing.is_empty() || !unknown.is_empty() {
            report(BankViolationKind::AccountsDiffer { missing, unknown });
        }
        let found: i128 = balances.values().map(|&b| i128::from(b)).sum();
        if found != expected {
            report(BankViolationKind::TotalChanged { expected, found });
        }
        for (&account, &balance) in balances {
            if balance < 0 {
                report(BankViolationKind::Negative { account, balance });
            }
        }
    }
    for &node in final_nodes {
        if !last_read.contains_key(&node) {
            violations.push(BankViolation {
                kind: BankViolationKind::NoFinalRead { node },
                read: None,
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds histories tersely; time advances by ten microseconds per operation.
    struct Builder {
        initial: BTreeMap<u64, i64>,
        ops: Vec<BankOp>,
        t: u64,
    }

    impl Builder {
        /// Accounts 0..accounts with 100 each.
        fn new(accounts: u64) -> Self {
            Builder {
                initial: (0..accounts).map(|a| (a, 100)).collect(),
                ops: Vec::new(),
                t: 0,
            }
        }

        fn tick(&mut self) -> (u64, u64) {
            self.t += 10;
            (self.t, self.t + 5)
        }

        fn transfer(&mut self, from: u64, to: u64, amount: i64, ok: Option<bool>) -> &mut Self {
            let (invoked_us, completed_us) = self.tick();
            let outcome = match ok {
                Some(true) => TransferOutcome::Ok { completed_us },
                Some(false) => TransferOutcome::Fail,
                None => TransferOutcome::Info,
            };
            self.ops.push(BankOp::Transfer {
                process: 1,
                from,
                to,
                amount,
                invoked_us,
                outcome,
            });
            self
        }

        fn read(&mut self, node: u64, balances: &[i64]) -> &mut Self {
            let (invoked_us, completed_us) = self.tick();
            self.ops.push(BankOp::Read {
                process: 10 + node,
                node,
                invoked_us,
                outcome: ReadOutcome::Ok {
                    completed_us,
                    balances: (0..).zip(balances.iter().copied()).collect(),
                },
            });
            self
        }

        fn failed_read(&mut self, node: u64) -> &mut Self {
            let (invoked_us, _) = self.tick();
            self.ops.push(BankOp::Read {
                process: 10 + node,
                node,
                invoked_us,
                outcome: ReadOutcome::Fail,
            });
            self
        }

        fn check(&self, final_nodes: &[u64]) -> Vec<BankViolation> {
            check(&self.initial, &self.ops, final_nodes)
        }
    }

    #[test]
    fn a_valid_history_passes() {
        let mut b = Builder::new(3);
        b.read(1, &[100, 100, 100])
            .transfer(0, 1, 30, Some(true))
            .read(2, &[70, 130, 100])
            .transfer(1, 2, 500, Some(false)) // refused: would overdraw
            .transfer(2, 0, 100, None) // unknown: either state may be read
            .read(1, &[70, 130, 100])
            .read(2, &[170, 130, 0])
            .failed_read(3)
            .read(3, &[170, 130, 0]);
        let violations = b.check(&[1, 2, 3]);
        assert!(violations.is_empty(), "{violations:?}");
    }

    #[test]
    fn a_total_off_by_one_fails_and_names_the_read() {
        let mut b = Builder::new(2);
        b.transfer(0, 1, 30, Some(true))
            .read(1, &[70, 131])
            .read(1, &[70, 130]);
        let violations = b.check(&[]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        let v = &violations[0];
        assert_eq!(
            v.kind,
            BankViolationKind::TotalChanged {
                expected: 200,
                found: 201
            }
        );
        let read = v.read.as_ref().expect("a read exposed it");
        assert_eq!((read.index, read.process, read.is_final), (1, 11, false));
        assert_eq!(
            v.to_string(),
            "read #1 by process 11 via node 1 (invoked at 20 us, completed at 25 us): balances \
             total 201, not the initial 200 (money created: 1)"
        );
    }

    #[test]
    fn a_negative_balance_fails() {
        let mut b = Builder::new(2);
        // Two concurrent transfers both saw 100 in account 0.
        b.transfer(0, 1, 80, Some(true))
            .transfer(0, 1, 80, Some(true))
            .read(1, &[-60, 260]);
        let violations = b.check(&[1]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(
            violations[0].kind,
            BankViolationKind::Negative {
                account: 0,
                balance: -60
            }
        );
        assert!(violations[0].read.as_ref().is_some_and(|r| r.is_final));
        assert!(violations[0].to_string().starts_with("final read #2"));
    }

    #[test]
    fn final_reads_are_judged_and_required() {
        let mut b = Builder::new(2);
        b.read(1, &[100, 100])
            .read(2, &[100, 100])
            .read(1, &[100, 99])
            .failed_read(3);
        let violations = b.check(&[1, 2, 3]);
        let kinds: Vec<_> = violations.iter().map(|v| &v.kind).collect();
        assert_eq!(
            kinds,
            vec![
                &BankViolationKind::TotalChanged {
                    expected: 200,
                    found: 199
                },
                &BankViolationKind::NoFinalRead { node: 3 },
            ]
        );
        assert!(violations[0].read.as_ref().is_some_and(|r| r.is_final));
        assert_eq!(violations[1].read, None);
    }

    #[test]
    fn a_read_missing_an_account_fails() {
        let mut b = Builder::new(3);
        b.read(1, &[100, 200]);
        let violations = b.check(&[]);
        assert_eq!(
            violations[0].kind,
            BankViolationKind::AccountsDiffer {
                missing: vec![2],
                unknown: vec![]
            }
        );
        assert_eq!(violations.len(), 1, "{violations:?}");
    }

    #[test]
    #[should_panic(expected = "workload bug")]
    fn a_transfer_to_an_unknown_account_is_refused() {
        let mut b = Builder::new(2);
        b.transfer(0, 7, 1, Some(true));
        let _ = b.check(&[]);
    }
}
