//! What group commit buys on this machine: writes/s and sync latency of `FjallStorage` for batches
//! of 1, 10 and 100 writes of 100-byte values, synced in line or pipelined with the next batch,
//! next to the raw fsync latency of the same disk.
//!
//! `cargo bench -p triarch-storage --bench group_commit -- --warm-up-time 1 --measurement-time 3`
//!
//! The databases live under the target directory rather than in `/tmp`, which may be a tmpfs
//! where fsync costs nothing.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use triarch_storage::{FjallStorage, Storage};

const VALUE: [u8; 100] = [0xab; 100];
const BATCH_SIZES: [u64; 3] = [1, 10, 100];
const TABLE: &str = "bench";

fn bench_dir() -> TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench directory")
}

/// Stages `n` fresh keys.
fn put_batch(storage: &mut FjallStorage, next_key: &mut u64, n: u64) {
    for _ in 0..n {
        storage
            .put(TABLE, &next_key.to_be_bytes(), &VALUE)
            .expect("put");
        *next_key += 1;
    }
}

/// Writes/s: each iteration stages a batch and syncs it; throughput is counted in writes.
fn writes_per_second(c: &mut Criterion) {
    let mut group = c.benchmark_group("put_batch_then_sync");
    group.sample_size(20);
    for n in BATCH_SIZES {
        let dir = bench_dir();
        let mut storage = FjallStorage::open(dir.path()).expect("open");
        let mut next_key = 0;
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                put_batch(&mut storage, &mut next_key, n);
                storage.sync().expect("sync");
            });
        });
    }
    group.finish();
}

/// Sync latency alone: the batch is staged outside the timed part.
fn sync_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("sync_after_batch");
    group.sample_size(20);
    for n in BATCH_SIZES {
        let dir = bench_dir();
        let mut storage = FjallStorage::open(dir.path()).expect("open");
        let mut next_key = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut synced = Duration::ZERO;
                for _ in 0..iters {
                    put_batch(&mut storage, &mut next_key, n);
                    let start = Instant::now();
                    storage.sync().expect("sync");
                    synced += start.elapsed();
                }
                synced
            });
        });
    }
    group.finish();
}

/// The floor under every sync: append 100 bytes to a plain file and fsync (or fdatasync) it.
fn raw_fsync(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_append_100B");
    group.sample_size(20);
    let dir = bench_dir();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("raw"))
        .expect("open raw file");
    group.bench_function("fsync", |b| {
        b.iter(|| {
            file.write_all(&VALUE).expect("write");
            file.sync_all().expect("fsync");
        });
    });
    group.bench_function("fdatasync", |b| {
        b.iter(|| {
            file.write_all(&VALUE).expect("write");
            file.sync_data().expect("fdatasync");
        });
    });
    group.finish();
}

/// Writes/s when the next batch is staged while the previous one syncs on another thread
/// through a `FjallSyncer`, as the server does. fjall fsyncs under its journal lock, so staging
/// waits for the sync in flight: compare with `put_batch_then_sync`.
fn pipelined(c: &mut Criterion) {
    let mut group = c.benchmark_group("put_batch_during_previous_sync");
    group.sample_size(20);
    for n in BATCH_SIZES {
        let dir = bench_dir();
        let mut storage = FjallStorage::open(dir.path()).expect("open");
        let mut next_key = 0;
        let syncer = storage.syncer();
        let (start_sync, sync_requests) = mpsc::channel::<()>();
        let (sync_done, synced) = mpsc::channel();
        let sync_thread = std::thread::spawn(move || {
            for () in sync_requests {
                if sync_done.send(syncer.sync()).is_err() {
                    break;
                }
            }
        });
        start_sync.send(()).expect("sync thread");
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                put_batch(&mut storage, &mut next_key, n);
                synced.recv().expect("sync thread").expect("sync");
                start_sync.send(()).expect("sync thread");
            });
        });
        drop(start_sync);
        synced.recv().expect("sync thread").expect("sync");
        sync_thread.join().expect("sync thread");
    }
    group.finish();
}

criterion_group!(
    benches,
    writes_per_second,
    pipelined,
    sync_latency,
    raw_fsync
);
criterion_main!(benches);
