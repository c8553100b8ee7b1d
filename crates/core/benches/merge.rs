//! Merge and serialization cost of the CRDTs against state size.
//!
//! Run with a short measurement, e.g.
//! `cargo bench -p triarch-core --bench merge -- --warm-up-time 1 --measurement-time 3`.
//!
//! States are built the way replicas build them (operations, then merges), never by hand, so
//! their shape (dots per element, siblings per key, context size) is a real one.

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use triarch_core::causal::{ActorId, DvvSet, VersionVector};
use triarch_core::crdt::{AwSet, Crdt, DeltaCrdt, PnCounter, Versioned};

const WRITERS: u32 = 10;

fn item(i: usize) -> Bytes {
    Bytes::from(format!("item-{i:06}"))
}

/// Two replicas of a cart of `items` items added by `WRITERS` writers, which then diverged:
/// each side removed a tenth of the items and added a tenth new ones the other has not seen.
fn diverged_carts(items: usize) -> (AwSet<Bytes>, AwSet<Bytes>) {
    let mut common = AwSet::new();
    for i in 0..items {
        let _ = common.add(ActorId(i as u32 % WRITERS), item(i));
    }
    let mut left = common.clone();
    let mut right = common;
    for i in (0..items).step_by(10) {
        let _ = left.remove(&item(i));
        let _ = left.add(ActorId(0), item(items + i));
        let _ = right.remove(&item(i + 5));
        let _ = right.add(ActorId(1), item(2 * items + i));
    }
    (left, right)
}

fn awset(c: &mut Criterion) {
    let mut group = c.benchmark_group("awset");
    for items in [100, 1_000] {
        let (left, right) = diverged_carts(items);
        group.bench_with_input(BenchmarkId::new("merge", items), &items, |b, _| {
            b.iter_batched(
                || left.clone(),
                |mut l| {
                    l.merge(black_box(&right));
                    l
                },
                BatchSize::SmallInput,
            )
        });
        let add = left.clone().add(ActorId(3), item(usize::MAX / 2));
        group.bench_with_input(
            BenchmarkId::new("apply_add_delta", items),
            &items,
            |b, _| {
                b.iter_batched(
                    || left.clone(),
                    |mut l| {
                        l.apply(black_box(&add));
                        l
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        group.bench_with_input(BenchmarkId::new("encode", items), &items, |b, _| {
            b.iter(|| black_box(&left).encode())
        });
        let bytes = left.encode();
        println!(
            "awset items={items} writers={WRITERS}: {} bytes encoded",
            bytes.len()
        );
        group.bench_with_input(BenchmarkId::new("decode", items), &items, |b, _| {
            b.iter(|| AwSet::<Bytes>::decode(black_box(&bytes)))
        });
    }
    group.finish();
}

/// Two replicas of a key that `writers` clients wrote concurrently (blind writes, one at each
/// of `writers` replicas), each replica having seen all but the other's last write.
fn concurrent_siblings(writers: u32) -> (DvvSet<Bytes>, DvvSet<Bytes>) {
    let value = Bytes::from(vec![b'v'; 100]);
    let mut all = DvvSet::new();
    for writer in 0..writers - 2 {
        let mut replica = DvvSet::new();
        replica.update(&VersionVector::new(), ActorId(writer), value.clone());
        all.sync(&replica);
    }
    let mut left = all.clone();
    let mut right = all;
    left.update(&VersionVector::new(), ActorId(writers - 2), value.clone());
    right.update(&VersionVector::new(), ActorId(writers - 1), value);
    (left, right)
}

fn dvvset(c: &mut Criterion) {
    let mut group = c.benchmark_group("dvvset");
    for writers in [10, 100] {
        let (left, right) = concurrent_siblings(writers);
        let mut merged = left.clone();
        merged.sync(&right);
        assert_eq!(
            merged.len(),
            writers as usize,
            "one sibling per concurrent writer"
        );
        group.bench_with_input(BenchmarkId::new("sync", writers), &writers, |b, _| {
            b.iter_batched(
                || left.clone(),
                |mut l| {
                    l.sync(black_box(&right));
                    l
                },
                BatchSize::SmallInput,
            )
        });
        let context = merged.join();
        group.bench_with_input(
            BenchmarkId::new("update_with_context", writers),
            &writers,
            |b, _| {
                b.iter_batched(
                    || merged.clone(),
                    |mut m| {
                        m.update(
                            black_box(&context),
                            ActorId(0),
                            Bytes::from_static(b"resolved"),
                        )
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        group.bench_with_input(BenchmarkId::new("encode", writers), &writers, |b, _| {
            b.iter(|| black_box(&merged).encode())
        });
        let bytes = merged.encode();
        println!(
            "dvvset writers={writers} (100-byte values): {} bytes encoded",
            bytes.len()
        );
        group.bench_with_input(BenchmarkId::new("decode", writers), &writers, |b, _| {
            b.iter(|| DvvSet::<Bytes>::decode(black_box(&bytes)))
        });
    }
    group.finish();
}

/// Two replicas of a counter that `actors` actors incremented and decremented; each side has
/// newer counts for half of the actors.
fn diverged_counters(actors: u32) -> (PnCounter, PnCounter) {
    let mut common = PnCounter::new();
    for actor in 0..actors {
        let _ = common
            .increment_by(ActorId(actor), 1_000 + u64::from(actor))
            .expect("small");
        let _ = common.decrement_by(ActorId(actor), 10).expect("small");
    }
    let mut left = common.clone();
    let mut right = common;
    for actor in 0..actors {
        let side = if actor % 2 == 0 {
            &mut left
        } else {
            &mut right
        };
        let _ = side.increment(ActorId(actor)).expect("small");
    }
    (left, right)
}

fn pn_counter(c: &mut Criterion) {
    let mut group = c.benchmark_group("pn_counter");
    for actors in [10, 100, 1_000] {
        let (left, right) = diverged_counters(actors);
        group.bench_with_input(BenchmarkId::new("merge", actors), &actors, |b, _| {
            b.iter_batched(
                || left.clone(),
                |mut l| {
                    l.merge(black_box(&right));
                    l
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("encode", actors), &actors, |b, _| {
            b.iter(|| black_box(&left).encode())
        });
        let bytes = left.encode();
        println!("pn_counter actors={actors}: {} bytes encoded", bytes.len());
        group.bench_with_input(BenchmarkId::new("decode", actors), &actors, |b, _| {
            b.iter(|| PnCounter::decode(black_box(&bytes)))
        });
    }
    group.finish();
}

criterion_group!(benches, awset, dvvset, pn_counter);
criterion_main!(benches);
