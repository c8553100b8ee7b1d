//! Workload B's checker: the bank history through [`super::bank`]. Transfers are the `EXEC`s
//! (their preparing `WATCH` reads of two accounts are not whole-bank reads and are left out);
//! reads are the whole-bank snapshots, final reads included; every node must have answered one.

use super::bank::{self, BankOp, ReadOutcome, TransferOutcome};
use super::{CheckerResult, Violation, ViolationKind};
use crate::history::EventType;
use crate::merged::{BANK_INITIAL_BALANCE, MergedFunction, MergedHistory, ReadResult};
use std::collections::BTreeMap;

pub const NAME: &str = bank::NAME;

/// The history's transfers and whole-bank reads, in the bank checker's terms.
pub fn bank_ops(history: &MergedHistory) -> Vec<BankOp> {
    let events = history.events();
    let mut out = Vec::new();
    for op in history.ops() {
        let invoked_us = events[op.invoke_index].time.as_micros();
        let completed_us = op.complete_index.map(|i| events[i].time.as_micros());
        match op.f {
            MergedFunction::BankTransfer {
                from, to, amount, ..
            } => out.push(BankOp::Transfer {
                process: op.process.0,
                from,
                to,
                amount,
                invoked_us,
                outcome: match op.outcome {
                    EventType::Ok => TransferOutcome::Ok {
                        completed_us: completed_us.expect("ok completed"),
                    },
                    EventType::Fail => TransferOutcome::Fail,
                    _ => TransferOutcome::Info,
                },
            }),
            MergedFunction::BankRead => out.push(BankOp::Read {
                process: op.process.0,
                node: u64::from(op.node.0),
                invoked_us,
                outcome: match (op.outcome, &op.result) {
                    (EventType::Ok, Some(ReadResult::Balances(b))) => ReadOutcome::Ok {
                        completed_us: completed_us.expect("ok completed"),
                        balances: b.iter().map(|(a, balance, _)| (*a, *balance)).collect(),
                    },
                    (EventType::Fail, _) => ReadOutcome::Fail,
                    _ => ReadOutcome::Info,
                },
            }),
            _ => {}
        }
    }
    out
}

/// Checks conservation and no overdraft on every whole-bank read of `accounts` accounts.
pub fn check(history: &MergedHistory, accounts: u64, nodes: &[u64]) -> CheckerResult {
    let initial: BTreeMap<u64, i64> = (0..accounts).map(|a| (a, BANK_INITIAL_BALANCE)).collect();
    let violations = bank::check(&initial, &bank_ops(history), nodes)
        .into_iter()
        .map(|v| Violation {
            kind: ViolationKind::Bank,
            key: match &v.kind {
                bank::BankViolationKind::Negative { account, .. } => *account,
                _ => 0,
            },
            index: None,
            detail: v.to_string(),
        })
        .collect();
    CheckerResult {
        checker: NAME,
        violations,
    }
}
