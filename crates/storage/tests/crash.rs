//! A real crash: a child process writes batches and syncs each one, the parent kills it with
//! SIGKILL, reopens the database and checks that every batch the child reported as synced is
//! there, whole.
//!
//! The child is this very test binary, run again with [`CHILD_DIR_ENV`] set: `crash_child` then
//! acts as the child instead of returning at once.
//!
//! The parent kills the child in two ways, because each finds different bugs:
//! - *in lockstep*: after reporting a sync, the child waits for a line on its stdin before going
//!   on, and the parent kills it while it waits. Whatever a sync left in user-space buffers is
//!   lost for sure, so a sync that does not at least hand the journal to the OS fails the test
//!   every time (batches are smaller than fjall's 8 KiB journal buffer for this reason).
//! - *free-running*: the parent closes the child's stdin, the child writes as fast as it can, and
//!   the kill lands somewhere in the middle of a write, leaving a torn journal tail to recover.
//!
//! SIGKILL leaves the kernel's page cache alone, so this checks durability against a process
//! crash, not a power loss; fsync itself is only checked by reading fjall's code.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use triarch_storage::{FjallStorage, Storage};

/// Set (to the database directory) only in the child process.
const CHILD_DIR_ENV: &str = "TRIARCH_STORAGE_CRASH_CHILD_DIR";
/// What the child prints after each sync, followed by the batch's number. libtest may print
/// something before it on the same line.
const SYNCED: &str = "SYNCED ";

const DATA: &str = "data";
const META: &str = "meta";
/// Holds the number of the last batch written, so that a new child continues after it.
const LAST: &[u8] = b"last";
/// 20 writes of about 150 journal bytes each: a batch fits in fjall's journal buffer.
const KEYS_PER_BATCH: u64 = 20;
const VALUE_LEN: usize = 100;
/// A bound on a child the parent somehow fails to kill.
const MAX_BATCHES_PER_CHILD: u64 = 100_000;

/// How many synced batches the parent waits for before killing the child.
const SYNCED_BATCHES_BEFORE_KILL: usize = 20;

#[derive(Clone, Copy, Debug)]
enum Kill {
    /// While the child waits on its stdin, right after reporting a sync.
    Lockstep,
    /// While the child writes as fast as it can.
    FreeRunning,
}

/// Children run one after the other on the same database, each recovering from the last crash.
const ROUNDS: [Kill; 4] = [
    Kill::Lockstep,
    Kill::FreeRunning,
    Kill::Lockstep,
    Kill::FreeRunning,
];

fn data_key(batch: u64, i: u64) -> Vec<u8> {
    format!("batch{batch:08}-key{i:03}").into_bytes()
}

fn value(batch: u64, i: u64) -> Vec<u8> {
    let mut v = format!("value of batch {batch} key {i} ").into_bytes();
    v.resize(VALUE_LEN, b'.');
    v
}

/// Batch `b` writes keys `0..KEYS_PER_BATCH` of batch `b`, deletes key 0 of batch `b - 1`, and
/// records `b` as the last batch. Every other batch is synced through a `FjallSyncer` on another
/// thread, the way the server does it. After reporting a sync, waits for a line on stdin, until
/// stdin is closed.
fn run_child(dir: &Path) {
    let mut storage = FjallStorage::open(dir).expect("child: open");
    let syncer = storage.syncer();
    let first = match storage.get(META, LAST).expect("child: get") {
        Some(last) => u64::from_be_bytes(last.try_into().expect("child: 8 bytes")) + 1,
        None => 0,
    };
    let mut stdin = std::io::stdin().lock();
    let mut lockstep = true;
    let mut stdout = std::io::stdout().lock();
    for batch in first..first + MAX_BATCHES_PER_CHILD {
        for i in 0..KEYS_PER_BATCH {
            storage
                .put(DATA, &data_key(batch, i), &value(batch, i))
                .expect("child: put");
        }
        if let Some(previous) = batch.checked_sub(1) {
            storage
                .delete(DATA, &data_key(previous, 0))
                .expect("child: delete");
        }
        storage
            .put(META, LAST, &batch.to_be_bytes())
            .expect("child: put");
        if batch % 2 == 0 {
            storage.sync().expect("child: sync");
        } else {
            let syncer = syncer.clone();
            std::thread::spawn(move || syncer.sync())
                .join()
                .expect("child: syncer thread")
                .expect("child: syncer sync");
        }
        writeln!(stdout, "{SYNCED}{batch}").expect("child: stdout");
        stdout.flush().expect("child: stdout");
        if lockstep {
            let mut go = String::new();
            lockstep = stdin.read_line(&mut go).expect("child: stdin") > 0;
        }
    }
}

/// Runs a child on `dir`, kills it as `kill` says once it has reported
/// `SYNCED_BATCHES_BEFORE_KILL` synced batches, and returns the batches it reported.
fn run_and_kill_child(dir: &Path, kill: Kill) -> Vec<u64> {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let mut stdin = child.stdin.take();
    if let Kill::FreeRunning = kill {
        drop(stdin.take()); // EOF: the child stops waiting
    }
    let stdout = child.stdout.take().expect("child stdout");
    let mut synced = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child stdout");
        let Some((_, batch)) = line.split_once(SYNCED) else {
            continue; // libtest's own output
        };
        synced.push(batch.parse().expect("batch number"));
        if synced.len() == SYNCED_BATCHES_BEFORE_KILL {
            // SIGKILL: no destructor runs, fjall gets no chance to flush anything.
            child.kill().expect("kill child");
            break;
        }
        if let Some(stdin) = &mut stdin {
            writeln!(stdin, "go").expect("child stdin");
        }
    }
    let status = child.wait().expect("wait for child");
    assert!(
        synced.len() == SYNCED_BATCHES_BEFORE_KILL,
        "child exited ({status}) after reporting only {} synced batches",
        synced.len()
    );
    synced
}

/// Every batch reported as synced is present and whole, deletes included.
fn check_synced_batches_survived(storage: &FjallStorage, synced: &[u64]) {
    for &batch in synced {
        for i in 1..KEYS_PER_BATCH {
            let got = storage.get(DATA, &data_key(batch, i)).expect("get");
            assert_eq!(
                got,
                Some(value(batch, i)),
                "batch {batch} key {i} was synced"
            );
        }
        // Key 0 of a batch is deleted by the next batch: if that one was synced, so was the delete.
        if synced.contains(&(batch + 1)) {
            let got = storage.get(DATA, &data_key(batch, 0)).expect("get");
            assert_eq!(got, None, "the delete of batch {batch} key 0 was synced");
        }
    }
    let last = storage
        .get(META, LAST)
        .expect("get")
        .expect("some batch was synced");
    let last = u64::from_be_bytes(last.try_into().expect("8 bytes"));
    let max_synced = synced.iter().copied().max().expect("some batch was synced");
    assert!(
        last >= max_synced,
        "last batch {last} is older than synced batch {max_synced}"
    );
}

/// How many batches after the last synced one survived, at least in part: fjall may keep writes
/// it was never asked to sync (what reached the OS before the kill). Reported, not asserted: the
/// contract only bounds what a crash may lose.
fn unsynced_batches_kept(storage: &FjallStorage, max_synced: u64) -> usize {
    let from = data_key(max_synced + 1, 0);
    let entries = storage.scan(DATA, &from, usize::MAX).expect("scan");
    let mut batches: Vec<&[u8]> = entries.iter().map(|(k, _)| &k[..13]).collect();
    batches.dedup();
    batches.len()
}

#[test]
fn synced_batches_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut synced: Vec<u64> = Vec::new();
    for (round, kill) in ROUNDS.into_iter().enumerate() {
        let reported = run_and_kill_child(dir.path(), kill);
        // Batches are reported in order, and each child continues after what the previous one
        // left, which includes everything it synced.
        assert!(
            reported.windows(2).all(|w| w[1] == w[0] + 1),
            "round {round}: {reported:?}"
        );
        if let (Some(previous), Some(first)) = (synced.last(), reported.first()) {
            assert!(first > previous, "round {round} rewrote batch {first}");
        }
        synced.extend(reported);
        let storage = FjallStorage::open(dir.path()).expect("reopen after SIGKILL");
        check_synced_batches_survived(&storage, &synced);
        let max_synced = synced.last().copied().expect("synced batches");
        eprintln!(
            "round {round} ({kill:?}): {} batches synced so far, last {max_synced}; \
             {} unsynced batches kept (in part or whole)",
            synced.len(),
            unsynced_batches_kept(&storage, max_synced),
        );
    }
}

/// The child side of `synced_batches_survive_sigkill`; does nothing in a normal test run.
#[test]
fn crash_child() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        run_child(Path::new(&dir));
    }
}
