//! What the user got, counted from a balance workload's history: lost updates, overdrawn
//! accounts, money created or destroyed.
//!
//! Workloads MB and LB ([`MergedWorkload::MlBank`], [`MergedWorkload::LwwBank`]) do a transfer
//! as a client without transactions does: read the source, read the destination, then SET
//! both. Every stored value names the write that stored it ([`balance_value`]), so a write's
//! *parent*, the version its transfer read before writing, is known from the history.
//!
//! - **lost update**: an acknowledged write that no later write built on (no write, `ok` or of
//!   unknown outcome, has it for parent) and that is not the key's final value. Something
//!   overwrote it without reading it: in a serial execution of the transfers every write but
//!   the last is read by the next transfer of the same account (Berenson et al., "A critique of
//!   ANSI SQL isolation levels", P4).
//! - **negative balance**: an `ok` read that returned a balance below zero.
//! - **total drift**: the final balances' sum minus the initial one (what the lost updates and
//!   half-done transfers created or destroyed).
//! - **half transfer**: a transfer whose first write was acknowledged and whose second was not
//!   (the client's session ended, or the write failed): money left one account and reached no
//!   other. A transactional store has none.
//!
//! Workload B (primary-backup, WATCH/MULTI/EXEC transfers) is judged by
//! [`crate::checker::bank_history`]; its figures here come from its reads: negative balances
//! any read saw, the drift of the final read, and as lost updates the bank checker's violations
//! (each is a read whose total was not conserved).

use crate::checker::{CheckerResult, Violation, ViolationKind};
use crate::history::EventType;
use crate::merged::{
    BANK_INITIAL_BALANCE, COUNTER_BANK_INITIAL_BALANCE, MergedFunction, MergedHistory, ReadResult,
    balance_of,
};
use std::collections::{BTreeMap, BTreeSet};

#[cfg(doc)]
use crate::merged::{MergedWorkload, balance_value};

/// A balance workload's anomalies, over one run (or summed over seeds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalanceAnomalies {
    pub lost_updates: u64,
    pub negative_balances: u64,
    /// Summed over seeds as absolute values: money created or destroyed.
    pub total_drift: i64,
    pub half_transfers: u64,
    /// Transfers whose two writes were both acknowledged.
    pub transfers: u64,
}

impl BalanceAnomalies {
    pub fn add(&mut self, other: &BalanceAnomalies) {
        self.lost_updates += other.lost_updates;
        self.negative_balances += other.negative_balances;
        self.total_drift += other.total_drift.abs();
        self.half_transfers += other.half_transfers;
        self.transfers += other.transfers;
    }

    /// Whether anything went wrong.
    pub fn any(&self) -> bool {
        self.lost_updates > 0
            || self.negative_balances > 0
            || self.total_drift != 0
            || self.half_transfers > 0
    }
}

/// Workloads MB and LB: see the module documentation. `accounts` accounts, each
/// [`BANK_INITIAL_BALANCE`] at first.
pub fn lww_bank(history: &MergedHistory, accounts: u64) -> BalanceAnomalies {
    let ops = history.ops();
    let final_start = history.final_phase_start().unwrap_or(usize::MAX);
    let mut out = BalanceAnomalies::default();
    // Per (process, key): the write the process last read there.
    let mut last_read: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    // Per key: acknowledged writes; writes that some `ok` or unknown write built on.
    let mut acked: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut built_on: BTreeSet<(u64, u64)> = BTreeSet::new();
    let finals = final_values(history);
    // Per process, the outcome of its previous operation if it was a transfer's first write.
    let mut first_write_ok: BTreeMap<u64, bool> = BTreeMap::new();
    let mut previous_was_read: BTreeMap<u64, bool> = BTreeMap::new();
    for op in &ops {
        let process = op.process.0;
        let is_write = matches!(op.f, MergedFunction::RegisterWrite { .. });
        // A transfer's writes come in pairs after two reads: the first write follows a read.
        let first = is_write && previous_was_read.get(&process).copied().unwrap_or(false);
        if let Some(was_ok) = first_write_ok.remove(&process) {
            let second_ok = is_write && !first && op.outcome == EventType::Ok;
            if was_ok && second_ok {
                out.transfers += 1;
            } else if was_ok {
                out.half_transfers += 1;
            }
        }
        if first {
            first_write_ok.insert(process, op.outcome == EventType::Ok);
        }
        previous_was_read.insert(process, op.f == MergedFunction::RegisterRead);
        match (op.f, op.outcome, &op.result) {
            (MergedFunction::RegisterRead, EventType::Ok, Some(ReadResult::Register(v))) => {
                let (write, balance) = balance_of(*v);
                if balance < 0 {
                    out.negative_balances += 1;
                }
                if op.invoke_index < final_start {
                    last_read.insert((process, op.key), write);
                }
            }
            (MergedFunction::RegisterWrite { value }, outcome, _) => {
                let (write, _) = balance_of(Some(value));
                if outcome != EventType::Fail
                    && let Some(&parent) = last_read.get(&(process, op.key))
                {
                    built_on.insert((op.key, parent));
                }
                if outcome == EventType::Ok {
                    acked.entry(op.key).or_default().push(write);
                }
            }
            _ => {}
        }
    }
    // A process whose history ended after a first write that was acknowledged.
    out.half_transfers += first_write_ok.values().filter(|&&ok| ok).count() as u64;
    for (key, writes) in &acked {
        let last = finals.get(key).map(|&v| balance_of(v).0);
        out.lost_updates += writes
            .iter()
            .filter(|&&w| Some(w) != last && !built_on.contains(&(*key, w)))
            .count() as u64;
    }
    let total: i64 = (0..accounts)
        .map(|a| balance_of(finals.get(&a).copied().flatten()).1)
        .sum();
    out.total_drift = total - accounts as i64 * BANK_INITIAL_BALANCE;
    out
}

/// Workload MK ([`MergedWorkload::MlCounterBank`]): transfers as counter increments. Negative
/// balances are main-phase reads below zero, plus accounts below zero at the end (once each);
/// a lost update is a key whose final count is not the sum of its acknowledged increments
/// (when none had an unknown outcome): a counter must lose none.
pub fn counter_bank(history: &MergedHistory, accounts: u64) -> BalanceAnomalies {
    let ops = history.ops();
    let final_start = history.final_phase_start().unwrap_or(usize::MAX);
    let initial = i128::from(COUNTER_BANK_INITIAL_BALANCE);
    let mut out = BalanceAnomalies::default();
    let mut finals: BTreeMap<u64, BTreeMap<i128, u64>> = BTreeMap::new();
    // Per key: the sum of acknowledged increments, and whether some had an unknown outcome.
    let mut sums: BTreeMap<u64, (i128, bool)> = BTreeMap::new();
    let mut first_write_ok: BTreeMap<u64, bool> = BTreeMap::new();
    let mut previous_was_read: BTreeMap<u64, bool> = BTreeMap::new();
    for op in &ops {
        let process = op.process.0;
        let is_write = matches!(op.f, MergedFunction::CounterAdd { .. });
        let first = is_write && previous_was_read.get(&process).copied().unwrap_or(false);
        if let Some(was_ok) = first_write_ok.remove(&process) {
            let second_ok = is_write && !first && op.outcome == EventType::Ok;
            if was_ok && second_ok {
                out.transfers += 1;
            } else if was_ok {
                out.half_transfers += 1;
            }
        }
        if first {
            first_write_ok.insert(process, op.outcome == EventType::Ok);
        }
        previous_was_read.insert(process, op.f == MergedFunction::CounterRead);
        match (op.f, op.outcome, &op.result) {
            (MergedFunction::CounterRead, EventType::Ok, Some(ReadResult::Count(c))) => {
                if op.invoke_index >= final_start {
                    *finals.entry(op.key).or_default().entry(*c).or_default() += 1;
                } else if initial + c < 0 {
                    out.negative_balances += 1;
                }
            }
            (MergedFunction::CounterAdd { amount }, outcome, _) => {
                let sum = sums.entry(op.key).or_default();
                match outcome {
                    EventType::Ok => sum.0 += i128::from(amount),
                    EventType::Fail => {}
                    _ => sum.1 = true,
                }
            }
            _ => {}
        }
    }
    out.half_transfers += first_write_ok.values().filter(|&&ok| ok).count() as u64;
    let final_count = |key: u64| {
        finals
            .get(&key)
            .and_then(|counts| counts.iter().max_by_key(|&(c, n)| (*n, *c)))
            .map_or(0, |(&c, _)| c)
    };
    let mut total = 0;
    for account in 0..accounts {
        let balance = initial + final_count(account);
        if balance < 0 {
            out.negative_balances += 1;
        }
        total += balance;
        if let Some(&(sum, unknown)) = sums.get(&account)
            && !unknown
            && sum != final_count(account)
        {
            out.lost_updates += 1;
        }
    }
    out.total_drift = (total - initial * accounts as i128) as i64;
    out
}

/// Workload B: see the module documentation; `bank_violations` is the bank checker's count.
pub fn transactional_bank(
    history: &MergedHistory,
    accounts: u64,
    bank_violations: u64,
) -> BalanceAnomalies {
    let final_start = history.final_phase_start().unwrap_or(usize::MAX);
    let mut out = BalanceAnomalies {
        lost_updates: bank_violations,
        ..BalanceAnomalies::default()
    };
    let mut final_total = None;
    for op in history.ops() {
        match (op.f, op.outcome, &op.result) {
            (
                MergedFunction::BankRead | MergedFunction::BankPrepare { .. },
                EventType::Ok,
                Some(ReadResult::Balances(b)),
            ) => {
                out.negative_balances +=
                    b.iter().filter(|(_, balance, _)| *balance < 0).count() as u64;
                if op.invoke_index >= final_start && final_total.is_none() {
                    final_total = Some(b.iter().map(|(_, balance, _)| balance).sum::<i64>());
                }
            }
            (MergedFunction::BankTransfer { .. }, EventType::Ok, _) => out.transfers += 1,
            _ => {}
        }
    }
    if let Some(total) = final_total {
        out.total_drift = total - accounts as i64 * BANK_INITIAL_BALANCE;
    }
    out
}

/// Per key, how many `ok` final reads returned each value.
fn final_reads(history: &MergedHistory) -> BTreeMap<u64, BTreeMap<Option<u64>, u64>> {
    let final_start = history.final_phase_start().unwrap_or(usize::MAX);
    let mut finals: BTreeMap<u64, BTreeMap<Option<u64>, u64>> = BTreeMap::new();
    for op in history.ops() {
        if op.invoke_index < final_start {
            continue;
        }
        // Counters by their bits: only agreement matters here.
        let value = match op.result {
            Some(ReadResult::Register(v)) => v,
            Some(ReadResult::Count(c)) => Some(c as u64),
            _ => continue,
        };
        *finals.entry(op.key).or_default().entry(value).or_default() += 1;
    }
    finals
}

/// Per key, the value most final reads returned (the replicas' value once read repair ran:
/// the final reads, one through every node at once, race their own repairs).
fn final_values(history: &MergedHistory) -> BTreeMap<u64, Option<u64>> {
    final_reads(history)
        .into_iter()
        .filter_map(|(key, counts)| {
            let (value, _) = counts.into_iter().max_by_key(|&(v, n)| (n, v))?;
            Some((key, value))
        })
        .collect()
}

/// The checker of workload LB: for every key, most `ok` final reads (one through every node,
/// after the heal and the settle period, racing each other's read repairs) returned one value.
pub fn final_reads_agree(history: &MergedHistory) -> CheckerResult {
    let violations = final_reads(history)
        .into_iter()
        .filter(|(_, counts)| {
            let total: u64 = counts.values().sum();
            counts.values().max().is_none_or(|&top| top * 2 <= total)
        })
        .map(|(key, counts)| Violation {
            kind: ViolationKind::Diverged,
            key,
            index: None,
            detail: format!("no value most final reads agree on: {counts:?}"),
        })
        .collect();
    CheckerResult {
        checker: "final-reads-agree",
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ProcessId;
    use crate::merged::balance_value;
    use triarch_core::{Instant, NodeId};

    struct Builder {
        history: MergedHistory,
        time: u64,
    }

    impl Builder {
        fn op(&mut self, process: u64, f: MergedFunction, key: u64, read: Option<Option<u64>>) {
            let p = ProcessId(process);
            self.time += 1;
            self.history
                .invoke(p, f, key, NodeId(1), Instant(self.time));
            self.time += 1;
            let result = read.map(ReadResult::Register);
            self.history
                .complete(p, EventType::Ok, result, Instant(self.time), None);
        }

        fn read(&mut self, process: u64, key: u64, value: Option<u64>) {
            self.op(process, MergedFunction::RegisterRead, key, Some(value));
        }

        fn write(&mut self, process: u64, key: u64, write: u64, balance: i64) {
            let value = balance_value(write, balance);
            self.op(process, MergedFunction::RegisterWrite { value }, key, None);
        }

        /// A whole transfer of `amount` from 0 to 1 having read `from` and `to`.
        fn transfer(
            &mut self,
            p: u64,
            from: (u64, i64),
            to: (u64, i64),
            writes: (u64, u64),
            amount: i64,
        ) {
            let v = |(w, b): (u64, i64)| (w > 0).then(|| balance_value(w, b));
            self.read(p, 0, v(from));
            self.read(p, 1, v(to));
            self.write(p, 0, writes.0, from.1 - amount);
            self.write(p, 1, writes.1, to.1 + amount);
        }

        fn finals(&mut self, values: [(u64, i64); 2]) {
            self.history.mark_final_phase();
            for (key, (w, b)) in values.into_iter().enumerate() {
                self.read(100 + key as u64, key as u64, Some(balance_value(w, b)));
            }
        }
    }

    fn builder() -> Builder {
        Builder {
            history: MergedHistory::new(),
            time: 0,
        }
    }

    /// Two transfers in series: each read what the one before wrote. Nothing is lost.
    #[test]
    fn serial_transfers_lose_nothing() {
        let mut b = builder();
        b.transfer(1, (0, 100), (0, 100), (1, 2), 10);
        b.transfer(2, (1, 90), (2, 110), (3, 4), 10);
        b.finals([(3, 80), (4, 120)]);
        let a = lww_bank(&b.history, 2);
        assert_eq!(
            a,
            BalanceAnomalies {
                transfers: 2,
                ..BalanceAnomalies::default()
            }
        );
        assert!(!a.any());
        assert!(final_reads_agree(&b.history).is_ok());
    }

    /// The planted anomaly: two transfers both read the initial balances and both wrote (last
    /// writer wins): the first one's writes are overwritten unread. The total survives only
    /// when one transfer wins both accounts.
    #[test]
    fn concurrent_transfers_that_read_the_same_version_lose_an_update() {
        let mut b = builder();
        b.transfer(1, (0, 100), (0, 100), (1, 2), 10);
        b.transfer(2, (0, 100), (0, 100), (3, 4), 20);
        b.finals([(3, 80), (4, 120)]);
        let a = lww_bank(&b.history, 2);
        assert_eq!((a.lost_updates, a.total_drift), (2, 0), "{a:?}");
        // Mixed winners: 0 keeps the first transfer's write, 1 the second's: 10 created.
        let mut b = builder();
        b.transfer(1, (0, 100), (0, 100), (1, 2), 10);
        b.transfer(2, (0, 100), (0, 100), (3, 4), 20);
        b.finals([(1, 90), (4, 120)]);
        let a = lww_bank(&b.history, 2);
        assert_eq!((a.lost_updates, a.total_drift), (2, 10), "{a:?}");
        assert!(a.any());
    }

    #[test]
    fn a_transfer_cut_after_its_first_write_is_half_done() {
        let mut b = builder();
        b.read(1, 0, None);
        b.read(1, 1, None);
        b.write(1, 0, 1, 90);
        b.finals([(1, 90), (0, 100)]);
        let a = lww_bank(&b.history, 2);
        assert_eq!(
            (a.half_transfers, a.transfers, a.total_drift),
            (1, 0, -10),
            "{a:?}"
        );
    }

    /// Workload B's figures come from its reads: a planted overdrawn account in a read and a
    /// final read whose total is off are counted.
    #[test]
    fn transactional_bank_reads_show_overdrafts_and_drift() {
        let mut h = MergedHistory::new();
        let balances = |b: &[i64]| {
            Some(ReadResult::Balances(
                b.iter()
                    .enumerate()
                    .map(|(a, &x)| (a as u64, x, 1))
                    .collect(),
            ))
        };
        let mut op = |p: u64, f: MergedFunction, at: u64, result| {
            h.invoke(ProcessId(p), f, 0, NodeId(1), Instant(at));
            h.complete(ProcessId(p), EventType::Ok, result, Instant(at + 1), None);
        };
        op(1, MergedFunction::BankRead, 1, balances(&[100, 100]));
        let transfer = MergedFunction::BankTransfer {
            from: 0,
            to: 1,
            amount: 10,
            from_version: 1,
            to_version: 1,
        };
        op(2, transfer, 3, None);
        op(1, MergedFunction::BankRead, 5, balances(&[-5, 110]));
        let healthy = transactional_bank(&h, 2, 0);
        assert_eq!(healthy.negative_balances, 1, "{healthy:?}");
        assert_eq!(healthy.transfers, 1);
        h.mark_final_phase();
        h.invoke(
            ProcessId(3),
            MergedFunction::BankRead,
            0,
            NodeId(1),
            Instant(7),
        );
        h.complete(
            ProcessId(3),
            EventType::Ok,
            balances(&[90, 100]),
            Instant(8),
            None,
        );
        let found = transactional_bank(&h, 2, 3);
        assert_eq!(
            (found.total_drift, found.lost_updates),
            (-10, 3),
            "{found:?}"
        );
        assert!(found.any());
    }

    /// Workload MK: two transfers that both read 20 and both spend 15 overdraw the account
    /// (caught in the final read); a count that is not the sum of its increments is a lost
    /// update.
    #[test]
    fn counter_transfers_that_both_spend_one_balance_overdraw_it() {
        let mut h = MergedHistory::new();
        let mut t = 0;
        let mut op =
            |h: &mut MergedHistory, p: u64, f: MergedFunction, key: u64, c: Option<i128>| {
                t += 1;
                h.invoke(ProcessId(p), f, key, NodeId(1), Instant(t));
                t += 1;
                h.complete(
                    ProcessId(p),
                    EventType::Ok,
                    c.map(ReadResult::Count),
                    Instant(t),
                    None,
                );
            };
        for p in [1, 2] {
            op(&mut h, p, MergedFunction::CounterRead, 0, Some(0));
        }
        for p in [1, 2] {
            op(
                &mut h,
                p,
                MergedFunction::CounterAdd { amount: -15 },
                0,
                None,
            );
            op(
                &mut h,
                p,
                MergedFunction::CounterAdd { amount: 15 },
                1,
                None,
            );
        }
        h.mark_final_phase();
        op(&mut h, 9, MergedFunction::CounterRead, 0, Some(-30));
        op(&mut h, 9, MergedFunction::CounterRead, 1, Some(30));
        let a = counter_bank(&h, 2);
        assert_eq!(
            (
                a.negative_balances,
                a.transfers,
                a.total_drift,
                a.lost_updates
            ),
            (1, 2, 0, 0),
            "{a:?}"
        );
        // A final count missing an acknowledged increment.
        op(&mut h, 9, MergedFunction::CounterRead, 1, Some(15));
        op(&mut h, 9, MergedFunction::CounterRead, 1, Some(15));
        let a = counter_bank(&h, 2);
        assert_eq!((a.lost_updates, a.total_drift), (1, -15), "{a:?}");
    }

    #[test]
    fn disagreeing_final_reads_are_caught() {
        let mut b = builder();
        b.write(1, 0, 1, 90);
        b.history.mark_final_phase();
        b.read(2, 0, Some(balance_value(1, 90)));
        b.read(3, 0, None);
        assert!(!final_reads_agree(&b.history).is_ok());
        b.read(4, 0, Some(balance_value(1, 90)));
        assert!(final_reads_agree(&b.history).is_ok());
    }
}
