//! The map checker (workload H, [`crate::merged`]): every field of a `map` key is a
//! last-writer-wins register that many processes write, and reads see it as a regular register.
//!
//! ## The workload it judges
//!
//! Every `HSET` writes one field to a value no other write writes (so a value names its write).
//! Reads return a map's live fields with their values. Nothing deletes.
//!
//! ## The rule
//!
//! Indices order events in real time. For every field `f` of a key and every `ok` read `r`:
//!
//! 1. **Origin** (else [`ViolationKind::Unexpected`]): if `r` returns `v` for `f`, the write of
//!    `v` wrote `f` of that key, did not `fail`, and was invoked before `r` completed.
//! 2. **No write older than an acknowledged one** (else [`ViolationKind::Stale`] in the main
//!    phase, [`ViolationKind::Lost`] for final reads): for every write `w` of `f` that completed
//!    `ok` before `r` was invoked, `r` returns some value for `f`, and the write it returns did
//!    not complete `ok` before `w` was invoked. An `HSET` reads the map at R and stamps past
//!    every timestamp of the field it saw, so a write invoked after another was acknowledged
//!    (on W replicas, R + W > N) carries a larger timestamp; a read at R sees the larger one
//!    or one larger still. A write of unknown outcome (`info`) may take effect at any time, so
//!    returning it is never stale (as in [`super::single_writer`]).
//! 3. A key with any write that did not `fail` and no `ok` final read is
//!    [`ViolationKind::Unverified`].
//!
//! Concurrent writes of one field may end in either order: last-writer-wins keeps one, and
//! which one is the timestamps' choice, not a violation. That all replicas end identical is
//! [`super::convergence::check_states`]'s business.

use super::{CheckerResult, Violation, ViolationKind};
use crate::history::EventType;
use crate::merged::{MergedFunction, MergedHistory, MergedOp, ReadResult};
use std::collections::BTreeMap;

pub const NAME: &str = "map fields";

#[derive(Default)]
struct Key<'a> {
    /// Value -> (field, its write).
    writes: BTreeMap<u64, (u8, &'a MergedOp)>,
    /// Field -> its writes.
    by_field: BTreeMap<u8, Vec<&'a MergedOp>>,
    reads: Vec<&'a MergedOp>,
}

/// Checks `history` against the rule in the module documentation.
///
/// # Panics
/// If the history breaks the workload's contract (a value written twice).
pub fn check(history: &MergedHistory) -> CheckerResult {
    let ops = history.ops();
    let final_start = history.final_phase_start().unwrap_or(usize::MAX);
    let mut keys: BTreeMap<u64, Key> = BTreeMap::new();
    for op in &ops {
        let key = keys.entry(op.key).or_default();
        match op.f {
            MergedFunction::MapSet { field, value } => {
                assert!(
                    key.writes.insert(value, (field, op)).is_none(),
                    "value {value} written twice"
                );
                key.by_field.entry(field).or_default().push(op);
            }
            MergedFunction::MapRead => key.reads.push(op),
            other => panic!("{other} in a map history"),
        }
    }
    let mut violations = Vec::new();
    for (&k, key) in &keys {
        let mut verified = false;
        for read in key.reads.iter().filter(|r| r.outcome == EventType::Ok) {
            let is_final = read.invoke_index >= final_start;
            verified |= is_final;
            let complete = read.complete_index.expect("an ok read completed");
            let Some(ReadResult::Fields(fields)) = &read.result else {
                panic!("an ok map read has fields")
            };
            let mut report = |kind, detail: String| {
                violations.push(Violation {
                    kind,
                    key: k,
                    index: Some(complete),
                    detail,
                })
            };
            for (&field, &v) in fields {
                let origin = key.writes.get(&v).filter(|(f, w)| {
                    *f == field && w.outcome != EventType::Fail && w.invoke_index < complete
                });
                if origin.is_none() {
                    report(
                        ViolationKind::Unexpected,
                        format!(
                            "read #{complete} returned f{field}={v}, which no write of f{field} that could have happened by then wrote"
                        ),
                    );
                }
            }
            for (&field, writes) in &key.by_field {
                let returned = fields
                    .get(&field)
                    .and_then(|v| key.writes.get(v))
                    .filter(|(f, _)| *f == field)
                    .map(|(_, w)| *w);
                for w in writes {
                    let acknowledged_before = w.outcome == EventType::Ok
                        && w.complete_index.is_some_and(|c| c < read.invoke_index);
                    if !acknowledged_before {
                        continue;
                    }
                    let older = match returned {
                        None => true,
                        Some(r) => {
                            r.outcome == EventType::Ok
                                && r.complete_index.is_some_and(|c| c < w.invoke_index)
                        }
                    };
                    if older {
                        let kind = if is_final {
                            ViolationKind::Lost
                        } else {
                            ViolationKind::Stale
                        };
                        let shown = fields
                            .get(&field)
                            .map_or("nothing".to_string(), u64::to_string);
                        report(
                            kind,
                            format!(
                                "read #{complete} returned {shown} for f{field}, older than write #{} (ok before the read began)",
                                w.complete_index.expect("ok")
                            ),
                        );
                        break;
                    }
                }
            }
        }
        let any_write = key
            .writes
            .values()
            .any(|(_, w)| w.outcome != EventType::Fail);
        if any_write && !verified {
            violations.push(Violation::unverified(k, "lost writes"));
        }
    }
    CheckerResult {
        checker: NAME,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::TestHistory;

    /// Builds histories; operations may overlap (invoke and complete separately).
    struct Builder {
        h: TestHistory,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                h: TestHistory::new(),
            }
        }

        fn invoke(&mut self, p: u64, f: MergedFunction) {
            self.h.invoke(p, f);
        }

        fn complete(&mut self, p: u64, kind: EventType, read: Option<&[(u8, u64)]>) {
            let result = read.map(|f| ReadResult::Fields(f.iter().copied().collect()));
            self.h.complete(p, kind, result);
        }

        fn set(&mut self, field: u8, value: u64, kind: EventType) {
            self.invoke(1, MergedFunction::MapSet { field, value });
            self.complete(1, kind, None);
        }

        fn read(&mut self, fields: &[(u8, u64)]) {
            self.invoke(2, MergedFunction::MapRead);
            self.complete(2, EventType::Ok, Some(fields));
        }

        fn final_read(&mut self, fields: &[(u8, u64)]) {
            self.h.final_phase();
            self.read(fields);
        }

        fn kinds(&self) -> Vec<ViolationKind> {
            check(&self.h.h).violations.iter().map(|v| v.kind).collect()
        }
    }

    #[test]
    fn later_writes_and_either_order_of_concurrent_ones_pass() {
        let mut b = Builder::new();
        b.set(0, 1, EventType::Ok);
        b.read(&[(0, 1)]);
        // Two concurrent writes of field 1: either may win.
        b.invoke(3, MergedFunction::MapSet { field: 1, value: 2 });
        b.set(1, 3, EventType::Ok);
        b.complete(3, EventType::Ok, None);
        b.read(&[(0, 1), (1, 2)]);
        // An info write may take effect late.
        b.set(0, 4, EventType::Info);
        b.set(0, 5, EventType::Ok);
        b.set(2, 6, EventType::Fail);
        b.final_read(&[(0, 4), (1, 3)]);
        assert!(check(&b.h.h).is_ok(), "{}", check(&b.h.h));
    }

    #[test]
    fn a_lost_acknowledged_field_fails() {
        let mut b = Builder::new();
        b.set(0, 1, EventType::Ok);
        b.set(1, 2, EventType::Ok);
        b.final_read(&[(1, 2)]);
        assert_eq!(b.kinds(), vec![ViolationKind::Lost]);
    }

    #[test]
    fn an_older_acknowledged_value_after_a_newer_one_is_stale() {
        let mut b = Builder::new();
        b.set(0, 1, EventType::Ok);
        b.set(0, 2, EventType::Ok);
        b.read(&[(0, 1)]);
        b.final_read(&[(0, 2)]);
        assert_eq!(b.kinds(), vec![ViolationKind::Stale]);
    }

    #[test]
    fn values_of_failed_writes_of_other_fields_or_never_written_are_unexpected() {
        let mut b = Builder::new();
        b.set(0, 1, EventType::Fail);
        b.set(1, 2, EventType::Ok);
        b.final_read(&[(0, 1), (1, 2), (2, 2), (3, 9)]);
        assert_eq!(
            b.kinds(),
            vec![
                ViolationKind::Unexpected,
                ViolationKind::Unexpected,
                ViolationKind::Unexpected
            ]
        );
    }

    #[test]
    fn a_key_without_a_final_read_is_unverified() {
        let mut b = Builder::new();
        b.set(0, 1, EventType::Ok);
        b.read(&[(0, 1)]);
        assert_eq!(b.kinds(), vec![ViolationKind::Unverified]);
    }
}
