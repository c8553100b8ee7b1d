//! The `triarch-nemesis` binary; see the library's documentation (and crates/nemesis/README.md)
//! for what a run does.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use triarch_nemesis::client::ClientOptions;
use triarch_nemesis::run::RunOptions;
use triarch_nemesis::schedule::FaultClass;
use triarch_nemesis::{Workload, check, clean, client, history, run, signals};

#[derive(Parser)]
#[command(
    name = "triarch-nemesis",
    version,
    about = "Jepsen-style fault injection against real triarch processes in network namespaces (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One run: nodes, workload, seeded faults, final reads, checkers, report.
    Run(RunArgs),
    /// Re-checks the history of a finished run and prints the checkers' verdicts.
    Check {
        /// The run's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Removes namespaces and processes left by runs whose harness was killed with -9.
    Clean,
    /// The workload process (started by `run` inside the client namespace).
    #[command(hide = true)]
    Client(ClientArgs),
    /// The region-latency program (started by `run` inside the switch namespace).
    #[command(hide = true)]
    Delay {
        /// queue:ms pairs, e.g. 1:20,2:40,3:60.
        #[arg(long)]
        queues: String,
        /// The run's directory (names the process for the leftover check).
        #[arg(long)]
        run_dir: PathBuf,
    },
    /// Prints the median TCP connect time to an address, in ms (run inside a node namespace).
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 5)]
        count: u32,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Seed of the fault schedule and of the workload's choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes (default: 9 for the multi-leader workloads, three per region, so that each region
    /// is a 3-voter Raft group; 5 for the others).
    #[arg(long)]
    nodes: Option<u32>,
    /// Length of the main phase (faults and workload), in seconds.
    #[arg(long, default_value_t = 60)]
    time_limit_s: u64,
    /// Comma-separated fault classes: partition, kill, pause, clock, loss, or none
    /// (default: all; with --planted-bug: partition).
    #[arg(long)]
    faults: Option<String>,
    /// single-writer and set: nodes acknowledge writes once one replica holds them
    /// (bug_ack_before_quorum); registers: bug_local_reads; cart: the client records some SADDs
    /// as acknowledged without sending them; bank: transfers without WATCH; counter and
    /// ml-counter: some INCRBYs recorded as acknowledged but never sent, some sent twice; ml-lww:
    /// registers read through any region.
    #[arg(long)]
    planted_bug: bool,
    /// Succeed only if some checker fails (use with --planted-bug).
    #[arg(long)]
    expect_failure: bool,
    /// Run directory (must not exist or be empty; default target/nemesis/seed-<seed>-<time>).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keys: registers, counters, sets or carts (bank: accounts); also the number of writer
    /// processes.
    #[arg(long, default_value_t = 8)]
    keys: u64,
    /// single-writer (a leaderless keyspace, the single-writer checker), registers (a
    /// primary-backup keyspace, reads, writes and TRIARCH.CAS: linearizability per key), cart (a multi-leader add-wins set
    /// over regions r1..r3, the cart checker; --keys carts), bank (primary-backup transfers
    /// with WATCH/MULTI/EXEC between --keys accounts: total conserved, no negative balance),
    /// counter (leaderless counters), ml-counter (multi-leader counters over regions r1..r3)
    /// set (a leaderless add-wins set: lost, unexpected, stale) or ml-lww (multi-leader
    /// single-writer registers, each written and read in its home region).
    #[arg(long, default_value = "single-writer")]
    workload: String,
    /// Reader processes (default: as many as keys).
    #[arg(long)]
    readers: Option<u64>,
    /// Mean think time between a process's operations, in milliseconds.
    #[arg(long, default_value_t = 40)]
    think_ms: u64,
    /// How long an operation waits for a reply before it is recorded as info.
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
    /// Pause between the final heal and the final reads, in seconds.
    #[arg(long, default_value_t = 5)]
    settle_s: u64,
    /// One-way delays between regions r1..r3 (NFQUEUE at the bridge): `20,40,60` ms for
    /// r1-r2, r1-r3, r2-r3, `on` (that default) or `off`. Default: on for the multi-leader
    /// workloads (cart, ml-counter, ml-lww), off for the others (their nodes are all in r1).
    #[arg(long)]
    region_latency: Option<String>,
    /// The triarch binary (default: next to this one).
    #[arg(long)]
    triarch: Option<PathBuf>,
}

#[derive(Args)]
struct ClientArgs {
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<SocketAddr>,
    #[arg(long)]
    keys: u64,
    #[arg(long)]
    readers: u64,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    think_ms: u64,
    #[arg(long)]
    timeout_ms: u64,
    #[arg(long)]
    history: PathBuf,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value = "single-writer")]
    workload: String,
    #[arg(long)]
    planted_bug: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run_command(args),
        Command::Check { dir } => report(check_command(&dir)),
        Command::Delay { queues, run_dir: _ } => report(
            triarch_nemesis::delay::parse_queues(&queues)
                .and_then(|q| triarch_nemesis::delay::serve(&q))
                .map(|()| true),
        ),
        Command::Probe { addr, count } => {
            report(triarch_nemesis::delay::probe(addr, count).map(|ms| {
                println!("{ms:.2}");
                true
            }))
        }
        Command::Clean => report(clean().map(|removed| {
            if removed.is_empty() {
                println!("nothing to clean");
            }
            for r in removed {
                println!("removed {r}");
            }
            true
        })),
        Command::Client(args) => report(
            client::run(ClientOptions {
                nodes: args.nodes,
                keys: args.keys,
                readers: args.readers,
                seed: args.seed,
                think: Duration::from_millis(args.think_ms),
                timeout: Duration::from_millis(args.timeout_ms),
                history: args.history,
                dir: args.dir,
                workload: match Workload::parse(&args.workload) {
                    Ok(w) => w,
                    Err(e) => {
                        eprintln!("triarch-nemesis client: {e}");
                        return ExitCode::from(2);
                    }
                },
                planted_bug: args.planted_bug,
            })
            .map(|()| true),
        ),
    }
}

/// Exit status 0 (passed), 1 (did not) or 2 (error).
fn report(result: Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("triarch-nemesis: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_command(args: RunArgs) -> ExitCode {
    let interrupted = match signals::install() {
        Ok(i) => i,
        Err(e) => return report(Err(e)),
    };
    let options = match run_options(args) {
        Ok(o) => o,
        Err(e) => return report(Err(e)),
    };
    let outcome = run::run(&options, &interrupted);
    if interrupted.is_set() {
        if let Err(e) = &outcome {
            eprintln!("triarch-nemesis: {e:#}");
        }
        eprintln!("triarch-nemesis: interrupted; everything of the run was torn down");
        return ExitCode::from(130);
    }
    report(outcome.map(|o| {
        print!("{}", o.summary);
        o.passed
    }))
}

fn run_options(args: RunArgs) -> Result<RunOptions> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64 % 1_000_000)
    });
    let faults = match &args.faults {
        Some(list) => FaultClass::parse_list(list).map_err(anyhow::Error::msg)?,
        None if args.planted_bug => vec![FaultClass::Partition],
        None => FaultClass::ALL.to_vec(),
    };
    let dir = match args.dir {
        Some(d) => d,
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from("target/nemesis").join(format!("seed-{seed}-{secs}"))
        }
    };
    let triarch = match args.triarch {
        Some(t) => t,
        None => std::env::current_exe()
            .context("locating triarch-nemesis")?
            .with_file_name("triarch"),
    };
    if args.expect_failure && !args.planted_bug {
        eprintln!("triarch-nemesis: note: --expect-failure without --planted-bug");
    }
    let workload = Workload::parse(&args.workload).map_err(anyhow::Error::msg)?;
    let region_latency = match &args.region_latency {
        Some(text) => {
            triarch_nemesis::delay::RegionLatency::parse(text).map_err(anyhow::Error::msg)?
        }
        None if workload.is_multileader() => Some(triarch_nemesis::delay::RegionLatency::DEFAULT),
        None => None,
    };
    if region_latency.is_some() && !workload.is_multileader() {
        bail!(
            "--region-latency needs nodes in regions: use it with a multi-leader workload (cart, ml-counter)"
        );
    }
    Ok(RunOptions {
        region_latency,
        seed,
        nodes: args
            .nodes
            .unwrap_or(if workload.is_multileader() { 9 } else { 5 }),
        time_limit: Duration::from_secs(args.time_limit_s),
        faults,
        planted_bug: args.planted_bug,
        expect_failure: args.expect_failure,
        dir,
        keys: args.keys,
        readers: args.readers.unwrap_or(args.keys),
        think: Duration::from_millis(args.think_ms),
        timeout: Duration::from_millis(args.timeout_ms),
        settle: Duration::from_secs(args.settle_s),
        triarch,
        workload,
    })
}

/// Re-runs the checkers on `dir/history.jsonl`; the node count comes from the configurations in
/// `dir`, the key count from the history.
fn check_command(dir: &std::path::Path) -> Result<bool> {
    let parsed = history::read(&dir.join("history.jsonl"))?;
    let nodes = (1..)
        .take_while(|i| dir.join(format!("n{i}.toml")).exists())
        .count() as u32;
    if nodes == 0 {
        bail!("no n1.toml in {}: not a run directory", dir.display());
    }
    // Keys: the highest used (bank: accounts, as many as a whole-bank read returns).
    let keys = parsed
        .events
        .iter()
        .map(|e| {
            let accounts = e.balances.as_ref().map_or(0, |b| b.len() as u64);
            (e.key + 1).max(e.to.map_or(0, |t| t + 1)).max(accounts)
        })
        .max()
        .unwrap_or(0);
    // The workload the run used (runs older than the `workload` file: from the model).
    let workload = match std::fs::read_to_string(dir.join("workload")) {
        Ok(name) => Workload::parse(name.trim()).map_err(anyhow::Error::msg)?,
        Err(_) => {
            let n1 = std::fs::read_to_string(dir.join("n1.toml"))?;
            if n1.contains("multi-leader") {
                Workload::Cart
            } else if n1.contains("primary-backup") {
                Workload::Registers
            } else {
                Workload::SingleWriter
            }
        }
    };
    let results = check::check_run(&parsed, workload, nodes, keys);
    let (ok, fail, info) = parsed.history.outcome_counts();
    println!(
        "{} events: {ok} ok, {fail} fail, {info} info",
        parsed.events.len()
    );
    for r in &results {
        println!("{r}");
    }
    Ok(results.iter().all(|r| r.is_ok()))
}
