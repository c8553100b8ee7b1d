//! One run, start to end: preflight, hosts, nodes, client, the nemesis schedule, final heal,
//! settle, final reads, teardown (always, and checked), checkers, report.

use crate::check;
use crate::harness::{FAKETIME_LIB, Harness, resp_addr};
use crate::history;
use crate::net;
use crate::nft::NODES_MAX;
use crate::report::{self, FaultSpan};
use crate::schedule::{FaultClass, Schedule, ScheduleOptions};
use crate::signals::Interrupted;
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};
use triarch_sim::CheckerResult;

/// Everything a run is told (the `run` subcommand's flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    pub seed: u64,
    pub nodes: u32,
    pub time_limit: Duration,
    pub faults: Vec<FaultClass>,
    /// Nodes acknowledge a write once one replica holds it (`bug_ack_before_quorum`).
    pub planted_bug: bool,
    /// The run passes only if some checker fails.
    pub expect_failure: bool,
    pub dir: PathBuf,
    pub keys: u64,
    pub readers: u64,
    pub think: Duration,
    pub timeout: Duration,
    pub settle: Duration,
    /// The `triarch` binary the nodes run.
    pub triarch: PathBuf,
    pub workload: crate::Workload,
    /// One-way delays between regions, applied for the whole run ([`crate::delay`]).
    pub region_latency: Option<crate::delay::RegionLatency>,
}

impl RunOptions {
    /// The command line that runs the same schedule again.
    pub fn replay_command(&self) -> String {
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        let mut c = format!(
            "triarch-nemesis run --seed {} --nodes {} --time-limit-s {} --faults {}",
            self.seed,
            self.nodes,
            self.time_limit.as_secs(),
            if faults.is_empty() {
                "none".to_string()
            } else {
                faults.join(",")
            }
        );
        if self.keys != 8 {
            let _ = write!(c, " --keys {}", self.keys);
        }
        if self.workload != crate::Workload::SingleWriter {
            let _ = write!(c, " --workload {}", self.workload.name());
        }
        match (&self.region_latency, self.workload.is_multileader()) {
            (None, true) => c.push_str(" --region-latency off"),
            (Some(l), _) if *l != crate::delay::RegionLatency::DEFAULT => {
                let ms: Vec<String> = l.one_way_ms.iter().map(u64::to_string).collect();
                let _ = write!(c, " --region-latency {}", ms.join(","));
            }
            _ => {}
        }
        if self.planted_bug {
            c.push_str(" --planted-bug");
        }
        if self.expect_failure {
            c.push_str(" --expect-failure");
        }
        c
    }
}

/// How a finished run turned out.
pub struct RunOutcome {
    /// The run met its expectation: no checker failed, or (`--expect-failure`) some did.
    pub passed: bool,
    pub summary: String,
}

/// Checks what a run needs before anything is created, with a message saying how to fix it.
pub fn preflight(options: &RunOptions) -> Result<()> {
    if !(3..=NODES_MAX).contains(&options.nodes) {
        bail!("--nodes must be between 3 (the keyspace has N=3) and {NODES_MAX}");
    }
    if options.time_limit < Duration::from_secs(1)
        || options.time_limit > Duration::from_secs(3_600)
    {
        bail!("--time-limit-s must be between 1 and 3600");
    }
    if options.keys == 0 || options.keys > 1_000 || options.readers > 1_000 {
        bail!("--keys must be between 1 and 1000 and --readers at most 1000");
    }
    if options.workload == crate::Workload::MlLww && (options.keys < 3 || options.nodes < 3) {
        bail!("--workload ml-lww needs --keys 3 or more (a register homed in every region)");
    }
    if options.workload == crate::Workload::Bank && options.keys < 2 {
        bail!("--workload bank needs --keys 2 or more (accounts to transfer between)");
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        bail!("triarch-nemesis must run as root (it creates network namespaces and nft rules)");
    }
    let mut programs = vec![("ip", "iproute2"), ("nft", "nftables")];
    if options.region_latency.is_some() {
        programs.push(("iptables", "iptables"));
    }
    for (program, package) in programs {
        if !net::have(program) {
            bail!("`{program}` not found: install it with `apt-get install -y {package}`");
        }
    }
    if options.faults.contains(&FaultClass::Clock) {
        if !Path::new(FAKETIME_LIB).exists() {
            bail!(
                "{FAKETIME_LIB} not found (clock faults need libfaketime): install it with \
                 `apt-get install -y faketime`, or leave clock out of --faults"
            );
        }
        check_faketime()?;
    }
    if !options.triarch.is_file() {
        bail!(
            "{} not found: build it with `cargo build -p triarch-cli`, or pass --triarch PATH",
            options.triarch.display()
        );
    }
    Ok(())
}

/// libfaketime really moves a child's wall clock (checked on `date`, in this namespace: only
/// that one process's clock is faked).
fn check_faketime() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("triarch-nemesis-faketime-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("clock");
    std::fs::write(&file, "+3600s\n")?;
    let out = net::run(
        std::process::Command::new("date")
            .arg("+%s")
            .env("LD_PRELOAD", FAKETIME_LIB)
            .env("FAKETIME_TIMESTAMP_FILE", &file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let faked: i64 = out?.trim().parse().context("reading date's output")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    if (faked - now - 3_600).abs() > 60 {
        bail!("libfaketime ({FAKETIME_LIB}) did not move the clock of a test process by an hour");
    }
    Ok(())
}

/// The run's timeline as it happens: printed, appended to `nemesis.log`, kept for the report.
struct Timeline {
    t0: Option<Instant>,
    file: std::fs::File,
    lines: Vec<String>,
}

impl Timeline {
    fn at(&self) -> Duration {
        self.t0.map_or(Duration::ZERO, |t0| t0.elapsed())
    }

    fn log(&mut self, what: &str) {
        let line = format!("{:>8.3}s  {what}", self.at().as_secs_f64());
        eprintln!("  {line}");
        let _ = writeln!(self.file, "{line}");
        self.lines.push(line);
    }
}

#[derive(Default)]
struct Timings {
    setup: Duration,
    main: Duration,
    stop: Duration,
    settle: Duration,
    final_reads: Duration,
    teardown: Duration,
    check: Duration,
}

/// What the driving part of a run produced.
#[derive(Default)]
struct Driven {
    spans: Vec<FaultSpan>,
    /// When the main phase ended (the final heal), from its start.
    main: Duration,
    unexpected_exits: Vec<String>,
    final_heal: String,
    /// What region latency was applied and measured (empty when off).
    latency: Vec<String>,
}

/// Runs everything; errors are harness errors (setup, a fault that could not be applied, an
/// interrupted run, something left behind), not verdicts.
pub fn run(options: &RunOptions, interrupted: &Interrupted) -> Result<RunOutcome> {
    preflight(options)?;
    let started = Instant::now();
    if options.dir.exists()
        && std::fs::read_dir(&options.dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} exists and is not empty: give each run its own --dir",
            options.dir.display()
        );
    }
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let dir = options.dir.canonicalize()?;
    let schedule = Schedule::generate(options.seed, &schedule_options(options));
    std::fs::write(dir.join("schedule.txt"), schedule.to_string())?;
    std::fs::write(
        dir.join("workload"),
        format!("{}\n", options.workload.name()),
    )?;
    eprintln!("triarch-nemesis: {}", options.replay_command());
    eprintln!("  run directory {}", dir.display());

    let mut timeline = Timeline {
        t0: None,
        file: std::fs::File::create(dir.join("nemesis.log"))?,
        lines: Vec::new(),
    };
    let prefix = format!("tn{}", std::process::id());
    let mut harness = Harness::new(
        &dir,
        &prefix,
        options.nodes,
        &options.triarch,
        options.faults.contains(&FaultClass::Clock),
    );
    let mut timings = Timings::default();
    let driven = drive(
        options,
        &dir,
        &schedule,
        &mut harness,
        &mut timeline,
        &mut timings,
        interrupted,
    );
    let teardown_started = Instant::now();
    let finished = harness.finish();
    timings.teardown = teardown_started.elapsed();
    let driven = match (driven, finished) {
        (Ok(d), Ok(())) => d,
        (Err(e), Ok(())) => return Err(e),
        (Ok(_), Err(f)) => return Err(f),
        (Err(e), Err(f)) => return Err(e.context(format!("{f:#}"))),
    };
    timeline.log("torn down: no namespace, process or nft table of the run is left");

    let check_started = Instant::now();
    let parsed = history::read(&dir.join("history.jsonl"))?;
    let results = check::check_run(&parsed, options.workload, options.nodes, options.keys);
    timings.check = check_started.elapsed();
    let checkers_failed = results.iter().any(|r| !r.is_ok()) || !driven.unexpected_exits.is_empty();
    let passed = checkers_failed == options.expect_failure;
    let title = format!(
        "triarch-nemesis {} ({}) seed {}: {} nodes, faults {}{}{}",
        options.workload.name(),
        options.workload.model(),
        options.seed,
        options.nodes,
        fault_names(&options.faults),
        if options.region_latency.is_some() {
            ", region latency"
        } else {
            ""
        },
        if options.planted_bug {
            ", PLANTED BUG"
        } else {
            ""
        }
    );
    std::fs::write(
        dir.join("latency-raw.svg"),
        report::latency_svg(&parsed.history, &driven.spans, Some(driven.main), &title),
    )?;
    let mut full = String::new();
    for r in &results {
        let _ = writeln!(full, "{r}");
    }
    std::fs::write(dir.join("checker.txt"), full)?;
    let summary = summary(
        options,
        &dir,
        &parsed.history,
        &driven,
        &timeline.lines,
        &results,
        checkers_failed,
        passed,
        &timings,
        started.elapsed(),
    );
    std::fs::write(dir.join("summary.txt"), &summary)?;
    Ok(RunOutcome { passed, summary })
}

fn fault_names(faults: &[FaultClass]) -> String {
    if faults.is_empty() {
        return "none".into();
    }
    faults
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(",")
}

fn schedule_options(options: &RunOptions) -> ScheduleOptions {
    ScheduleOptions::new(options.nodes, options.time_limit, options.faults.clone())
}

/// Waits for the client to print `word`, watching everything else meanwhile.
fn wait_for_client(
    harness: &mut Harness,
    word: &str,
    timeout: Duration,
    watch: &mut dyn FnMut(&mut Harness) -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        watch(harness)?;
        let client = harness.client.as_mut().expect("client spawned");
        match client.lines.recv_timeout(Duration::from_millis(50)) {
            Ok(line) if line == word => return Ok(()),
            Ok(line) => bail!("the client said {line:?} where {word:?} was due (see client.log)"),
            Err(RecvTimeoutError::Disconnected) => {
                let status = client.wait()?;
                bail!("the client exited ({status}) before saying {word:?} (see client.log)")
            }
            Err(RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                bail!("the client did not say {word:?} within {timeout:?} (see client.log)")
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn drive(
    options: &RunOptions,
    dir: &Path,
    schedule: &Schedule,
    harness: &mut Harness,
    timeline: &mut Timeline,
    timings: &mut Timings,
    interrupted: &Interrupted,
) -> Result<Driven> {
    let setup_started = Instant::now();
    harness.create_network()?;
    harness.write_configs(options.workload, options.planted_bug)?;
    let self_exe = std::env::current_exe().context("locating triarch-nemesis")?;
    if let Some(latency) = &options.region_latency {
        harness.start_region_latency(&self_exe, latency, options.workload)?;
    }
    harness.start_all()?;
    let addrs: Vec<String> = (1..=options.nodes)
        .map(|i| resp_addr(i).to_string())
        .collect();
    let client_args = vec![
        "--nodes".to_string(),
        addrs.join(","),
        "--keys".into(),
        options.keys.to_string(),
        "--readers".into(),
        options.readers.to_string(),
        "--seed".into(),
        options.seed.to_string(),
        "--think-ms".into(),
        options.think.as_millis().to_string(),
        "--timeout-ms".into(),
        options.timeout.as_millis().to_string(),
        "--history".into(),
        dir.join("history.jsonl").display().to_string(),
        "--dir".into(),
        dir.display().to_string(),
        "--workload".into(),
        options.workload.name().into(),
    ];
    let mut client_args = client_args;
    // Client-side planted bugs (the others are node flags, in the configurations).
    if options.planted_bug
        && matches!(
            options.workload,
            crate::Workload::Cart
                | crate::Workload::Bank
                | crate::Workload::Counter
                | crate::Workload::MlCounter
                | crate::Workload::MlLww
        )
    {
        client_args.push("--planted-bug".into());
    }
    harness.spawn_client(&self_exe, &client_args)?;

    let mut driven = Driven::default();
    // During set-up a node that exits is a configuration problem: stop with its log.
    let mut setup_watch = |h: &mut Harness| -> Result<()> {
        if interrupted.is_set() {
            bail!("interrupted");
        }
        if let Some((id, status)) = h.reap_unexpected_exits()?.first() {
            bail!(
                "n{id} exited during start-up ({status}):\n{}",
                tail(&dir.join(format!("n{id}.log")), 20)
            );
        }
        Ok(())
    };
    wait_for_client(harness, "ready", Duration::from_secs(60), &mut setup_watch)?;
    timings.setup = setup_started.elapsed();
    timeline.log(&format!(
        "{} nodes up and connected, client ready (set-up {:.1} s)",
        options.nodes,
        timings.setup.as_secs_f64()
    ));

    if let Some(latency) = &options.region_latency {
        // Show that the matrix bites: TCP connect round trips (two one-way delays) between
        // nodes of each pair of regions, and inside r1 for comparison.
        let mut pairs = vec![(1, 2), (1, 3), (2, 3)];
        if options.nodes >= 4 {
            pairs.push((1, 4));
        }
        let mut measured = Vec::new();
        for (from, to) in pairs {
            let rtt = harness.probe(&self_exe, from, to)?;
            let (ra, rb) = (
                crate::harness::region(options.workload, from),
                crate::harness::region(options.workload, to),
            );
            measured.push(format!("n{from}({ra})->n{to}({rb}) {rtt:.1} ms"));
        }
        driven.latency = vec![
            format!("one-way delays {}", latency.describe()),
            format!("measured TCP connect round trips: {}", measured.join(", ")),
        ];
        for line in &driven.latency {
            timeline.log(&format!("region latency: {line}"));
        }
    }
    harness.client.as_mut().expect("client").send("start")?;
    let t0 = Instant::now();
    timeline.t0 = Some(t0);
    timeline.log("main phase starts");

    // From here on a node exiting by itself is a finding: record it, restart it at the next heal.
    let mut unexpected = Vec::new();
    let mut watch = |h: &mut Harness, timeline: &mut Timeline| -> Result<()> {
        if interrupted.is_set() {
            bail!("interrupted");
        }
        for (id, status) in h.reap_unexpected_exits()? {
            let what = format!("n{id} exited unexpectedly ({status}); see n{id}.log");
            timeline.log(&what);
            unexpected.push(format!("{:.3}s {what}", timeline.at().as_secs_f64()));
        }
        if let Some(status) = h.delay_exited()? {
            bail!(
                "the delay program exited ({status}):\n{}",
                tail(&dir.join("delay.log"), 20)
            );
        }
        if let Some(status) = h.client.as_mut().expect("client").exited()? {
            bail!(
                "the client exited early ({status}):\n{}",
                tail(&dir.join("client.log"), 20)
            );
        }
        Ok(())
    };
    let mut sleep_until =
        |h: &mut Harness, timeline: &mut Timeline, until: Duration| -> Result<()> {
            loop {
                watch(h, timeline)?;
                let now = t0.elapsed();
                if now >= until {
                    return Ok(());
                }
                std::thread::sleep((until - now).min(Duration::from_millis(50)));
            }
        };

    for window in &schedule.windows {
        sleep_until(harness, timeline, window.start)?;
        let first_span = driven.spans.len();
        for fault in &window.faults {
            harness
                .apply(fault)
                .with_context(|| format!("applying {fault}"))?;
            timeline.log(&format!("start {fault}"));
            driven.spans.push(FaultSpan {
                class: fault.class(),
                label: fault.label(),
                description: fault.to_string(),
                start: timeline.at(),
                end: None,
                note: String::new(),
            });
        }
        sleep_until(harness, timeline, window.end)?;
        for (i, fault) in window.faults.iter().enumerate().rev() {
            let at = format!("{:.3}s", timeline.at().as_secs_f64());
            let note = harness
                .heal(fault, &at)
                .with_context(|| format!("healing {fault}"))?;
            timeline.log(&format!(
                "heal {}{}",
                fault.label(),
                if note.is_empty() {
                    String::new()
                } else {
                    format!(" ({note})")
                }
            ));
            let span = &mut driven.spans[first_span + i];
            span.end = Some(timeline.at());
            span.note = note;
        }
    }
    sleep_until(harness, timeline, schedule.time_limit)?;
    timings.main = t0.elapsed();
    driven.main = timings.main;

    // Final heal, then let the workload finish what it has in flight.
    let stop_started = Instant::now();
    harness.client.as_mut().expect("client").send("stop")?;
    let at = format!("{:.3}s", timeline.at().as_secs_f64());
    let restarted = harness.heal_all(&at).context("the final heal")?;
    driven.final_heal = if restarted.is_empty() {
        "final heal".into()
    } else {
        let names: Vec<String> = restarted.iter().map(|n| format!("n{n}")).collect();
        format!("final heal (restarted {})", names.join(" "))
    };
    timeline.log(&driven.final_heal);
    let wait = options.timeout + Duration::from_secs(15);
    let mut phase_watch = |h: &mut Harness| -> Result<()> {
        if interrupted.is_set() {
            bail!("interrupted");
        }
        for (id, status) in h.reap_unexpected_exits()? {
            let what = format!("n{id} exited unexpectedly ({status}); see n{id}.log");
            unexpected.push(what.clone());
            eprintln!("  {what}");
        }
        Ok(())
    };
    wait_for_client(harness, "stopped", wait, &mut phase_watch)?;
    timings.stop = stop_started.elapsed();
    timeline.log("workload stopped; settling");

    let settle_started = Instant::now();
    let settle_until = settle_started + options.settle;
    while Instant::now() < settle_until {
        phase_watch(harness)?;
        std::thread::sleep(Duration::from_millis(50));
    }
    // A node that died while settling is restarted so that it can answer its final reads.
    let at = format!("{:.3}s", timeline.at().as_secs_f64());
    let restarted = harness.heal_all(&at)?;
    if !restarted.is_empty() {
        timeline.log(&format!("restarted {restarted:?} before the final reads"));
    }
    timings.settle = settle_started.elapsed();

    let final_started = Instant::now();
    timeline.log(if options.workload.polls_finally() {
        "final reads: every key through every node until all agree"
    } else {
        "final reads at R=3 through every node"
    });
    harness.client.as_mut().expect("client").send("final")?;
    let mut final_wait = Duration::from_secs(45) + options.timeout * 6 * options.keys as u32;
    if options.workload.polls_finally() {
        // The client polls for up to 60 s, then a round may take a timeout per read.
        final_wait +=
            Duration::from_secs(60) + options.timeout * options.nodes * options.keys as u32;
    }
    wait_for_client(harness, "done", final_wait, &mut phase_watch)?;
    let status = harness.client.as_mut().expect("client").wait()?;
    if !status.success() {
        bail!("the client exited with {status} (see client.log)");
    }
    timings.final_reads = final_started.elapsed();
    timeline.log("final reads done");
    driven.unexpected_exits = unexpected;
    Ok(driven)
}

/// The last `lines` lines of a file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[allow(clippy::too_many_arguments)]
fn summary(
    options: &RunOptions,
    dir: &Path,
    history: &triarch_sim::History,
    driven: &Driven,
    timeline: &[String],
    results: &[CheckerResult],
    checkers_failed: bool,
    passed: bool,
    timings: &Timings,
    total: Duration,
) -> String {
    let mut s = String::new();
    let verdict = match (passed, options.expect_failure) {
        (true, false) => "PASS: no checker found a violation",
        (true, true) => "PASS: the checkers caught the planted bug, as expected",
        (false, false) => "FAIL: a checker found a violation",
        (false, true) => {
            "FAIL: a failure was expected (--expect-failure) and no checker reported one"
        }
    };
    let _ = writeln!(s, "triarch-nemesis {verdict}");
    let _ = writeln!(s);
    let _ = writeln!(s, "replay:     {}", options.replay_command());
    let _ = writeln!(s, "directory:  {}", dir.display());
    let (model, bug, workload) = match options.workload {
        crate::Workload::SingleWriter => (
            "leaderless, N=3 R=2 W=2, lww",
            "bug_ack_before_quorum",
            "single-writer registers (one writer per key)",
        ),
        crate::Workload::Registers => (
            "primary-backup, N=3",
            "bug_local_reads",
            "linearizable registers (writers of unique values to random keys)",
        ),
        crate::Workload::Cart => (
            "multi-leader over regions r1..r3, add-wins set",
            "client-side: every 50th SADD recorded as acknowledged, never sent",
            "carts (writers SADD unique elements to random carts, SREM some of their own)",
        ),
        crate::Workload::Bank => (
            "primary-backup, N=3",
            "client-side: transfers without WATCH (read, then MULTI SET SET EXEC on stale balances)",
            "bank (accounts of 100; writers transfer 1..20 with WATCH/MULTI/EXEC, readers read every balance in one MULTI/EXEC)",
        ),
        crate::Workload::Counter => (
            "leaderless, N=3 R=2 W=2, counter",
            "client-side: every 50th INCRBY recorded as acknowledged, never sent; every 50th (+25) sent twice",
            "counters (writers INCRBY 1..5 to random counters, readers GET)",
        ),
        crate::Workload::MlCounter => (
            "multi-leader over regions r1..r3, counter",
            "client-side: every 50th INCRBY recorded as acknowledged, never sent; every 50th (+25) sent twice",
            "counters (writers INCRBY 1..5 to random counters, readers GET)",
        ),
        crate::Workload::MlLww => (
            "multi-leader over regions r1..r3, lww",
            "client-side: registers read through any region, as if multi-leader reads were linearizable",
            "single-writer registers, each written and read only through its home region's nodes",
        ),
        crate::Workload::Set => (
            "leaderless, N=3 R=2 W=2, add-wins set",
            "bug_ack_before_quorum",
            "sets (writers SADD unique elements to random sets, SREM some of their own; readers SMEMBERS)",
        ),
    };
    let _ = writeln!(
        s,
        "cluster:    {} nodes in their own network namespaces, keyspace {} ({model}), planted bug {}",
        options.nodes,
        options.workload.keyspace(),
        if options.planted_bug {
            format!("ON ({bug})")
        } else {
            "off".to_string()
        }
    );
    let _ = writeln!(
        s,
        "workload:   {workload}: {} keys, {} writers + {} readers, think ~{} ms, client timeout {} ms",
        options.keys,
        options.keys,
        if options.workload.has_readers() {
            options.readers
        } else {
            0 // carts are read only after the final heal
        },
        options.think.as_millis(),
        options.timeout.as_millis()
    );
    if options.region_latency.is_some() {
        let _ = writeln!(
            s,
            "latency:    {} (iptables NFQUEUE at the bridge + the delay program, the whole run)",
            driven.latency.join("; ")
        );
        let held = tail(&dir.join("delay.log"), 1);
        if !held.is_empty() {
            let _ = writeln!(s, "            delay program at its last report: {held}");
        }
    }
    let _ = writeln!(
        s,
        "schedule:   faults {} over {} s, then final heal, {} s settle, final reads",
        fault_names(&options.faults),
        options.time_limit.as_secs(),
        options.settle.as_secs()
    );
    let _ = writeln!(s);

    let ops = history.ops();
    let final_start = history.final_phase_start().unwrap_or(usize::MAX);
    let (main, finals): (Vec<_>, Vec<_>) = ops.iter().partition(|op| op.invoke_index < final_start);
    let all = report::op_stats(main.iter().copied());
    let reads = report::op_stats(
        main.iter()
            .copied()
            .filter(|o| o.f == triarch_sim::Function::Read),
    );
    let writes = report::op_stats(
        main.iter()
            .copied()
            .filter(|o| o.f == triarch_sim::Function::Write),
    );
    let processes: std::collections::BTreeSet<u64> = ops.iter().map(|o| o.process.0).collect();
    let _ = writeln!(
        s,
        "operations: {} in the main phase: {} ok, {} fail, {} info",
        main.len(),
        all.ok,
        all.fail,
        all.info
    );
    let _ = writeln!(s, "  reads:    {reads}");
    let _ = writeln!(s, "  writes:   {writes}");
    let _ = writeln!(
        s,
        "  final reads: {}",
        report::op_stats(finals.iter().copied())
    );
    let _ = writeln!(
        s,
        "  processes: {} (a process retires after an info)",
        processes.len()
    );
    let errors = report::error_counts(history, 8);
    if !errors.is_empty() {
        let _ = writeln!(s, "  most frequent errors:");
        for (n, e) in errors {
            let _ = writeln!(s, "    {n:>7}  {e}");
        }
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "timeline (seconds from the start of the main phase):");
    for line in timeline {
        let _ = writeln!(s, "  {line}");
    }
    let _ = writeln!(s);

    let _ = writeln!(
        s,
        "server counters at the end (since each node's last start):"
    );
    for id in 1..=options.nodes {
        let info = std::fs::read_to_string(dir.join(format!("info-n{id}.txt"))).unwrap_or_default();
        let counters = report::keyspace_counters(&info, options.workload.keyspace())
            .unwrap_or_else(|| "unavailable".into());
        let _ = writeln!(s, "  n{id}: {counters}");
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "checkers:");
    for r in results {
        if r.is_ok() {
            let _ = writeln!(s, "  {}: ok", r.checker);
            continue;
        }
        let _ = writeln!(s, "  {}: {} violation(s)", r.checker, r.violations.len());
        for v in r.violations.iter().take(10) {
            let _ = writeln!(s, "    {v}");
        }
        if r.violations.len() > 10 {
            let _ = writeln!(s, "    ... {} more in checker.txt", r.violations.len() - 10);
        }
        if let Some(v) = r.violations.iter().find(|v| v.index.is_some()) {
            let _ = writeln!(s, "    history of key {} around the first of them:", v.key);
            for line in report::excerpt(history, v.key, v.index.expect("some"), 12).lines() {
                let _ = writeln!(s, "      {line}");
            }
        }
    }
    if driven.unexpected_exits.is_empty() {
        let _ = writeln!(s, "  node processes: ok (none exited by itself)");
    } else {
        let _ = writeln!(
            s,
            "  node processes: {} unexpected exit(s)",
            driven.unexpected_exits.len()
        );
        for e in &driven.unexpected_exits {
            let _ = writeln!(s, "    {e}");
        }
    }
    let _ = writeln!(
        s,
        "  => {}",
        if checkers_failed {
            "violations found"
        } else {
            "no violation found"
        }
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "timings: set-up {:.1} s, main {:.1} s, stop {:.1} s, settle {:.1} s, final reads {:.1} s, teardown {:.2} s, checks {:.2} s; total {:.1} s",
        timings.setup.as_secs_f64(),
        timings.main.as_secs_f64(),
        timings.stop.as_secs_f64(),
        timings.settle.as_secs_f64(),
        timings.final_reads.as_secs_f64(),
        timings.teardown.as_secs_f64(),
        timings.check.as_secs_f64(),
        total.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "files: summary.txt history.jsonl latency-raw.svg checker.txt nemesis.log schedule.txt workload n*.toml n*.log client.log info-n*.txt delay.log (with region latency) data/"
    );
    s
}
