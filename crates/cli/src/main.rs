//! `triarch`: serve a node, run a local cluster, the demo, or the simulator.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use triarch_cli::cluster::LocalCluster;

/// mimalloc instead of the system allocator: under a write load glibc's malloc took 15-20% of a
/// node's CPU (`_int_malloc`, `malloc_consolidate`) in profiles of primary-backup keyspaces.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "triarch",
    version,
    about = "A replicated key-value store where each keyspace chooses its replication model"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node from its configuration file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Start N node processes on 127.0.0.1 and keep them running until Ctrl-C.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Spread the nodes over this many regions: node i is in region r((i-1) % R + 1).
        #[arg(long, default_value_t = 1)]
        regions: u32,
        #[arg(long, default_value = ".triarch/cluster")]
        dir: PathBuf,
        /// RESP ports are base..base+N-1, HTTP base+100.., peers base+200..
        #[arg(long, default_value_t = 6380)]
        base_port: u16,
        /// Start with only the `default` keyspace instead of the canonical `balance`
        /// (primary-backup), `cart` (multi-leader, add-wins set) and `prefs` (leaderless,
        /// last-writer-wins).
        #[arg(long)]
        no_keyspaces: bool,
    },
    /// A short scripted session against a fresh local 3-node cluster.
    Demo {
        #[arg(long, default_value = ".triarch/demo")]
        dir: PathBuf,
    },
    /// Run the deterministic simulator over seeds; failing seeds print the line that replays them.
    Sim(SimArgs),
    /// Compare the replication models on one workload shape in the simulator: latency per
    /// region, conflicts, repairs, availability while a region is cut off, checker verdicts.
    Explore(Box<ExploreArgs>),
    /// Recommend a replication model and settings for a workload's shape, with the reasons,
    /// then run the explorer on that shape for the numbers.
    Advise(AdviseArgs),
}

#[derive(clap::Args)]
struct AdviseArgs {
    /// What a wrongly resolved conflict costs: high (money, inventory) or low (a preference).
    #[arg(long, default_value = "low")]
    conflict_cost: String,
    /// Most writes to a key come from one region.
    #[arg(long)]
    writes_local: bool,
    /// Client-seen write latency matters (an inter-region round trip is too much).
    #[arg(long)]
    latency_sensitive: bool,
    /// Concurrent writes merge naturally (set adds and removes, counter increments).
    #[arg(long)]
    mergeable: bool,
    /// Prefer the simplest system to operate and reason about.
    #[arg(long)]
    simple_ops: bool,
    /// Seeds the explorer runs, from --seed.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Regions (2 to 5), three nodes each.
    #[arg(long, default_value_t = 3)]
    regions: u32,
}

#[derive(clap::Args)]
struct ExploreArgs {
    /// Regions (2 to 5), three nodes each.
    #[arg(long, default_value_t = 3)]
    regions: u32,
    /// Seeds per (workload, model), from --seed.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cart, balance, prefs, all (those three) or custom (registers shaped by --reads, --keys,
    /// --zipf, --region-mix and --value-bytes).
    #[arg(long, default_value = "all")]
    workload: String,
    /// --workload custom: the fraction of operations that are reads.
    #[arg(long, default_value_t = 0.9)]
    reads: f64,
    /// --workload custom: how many keys.
    #[arg(long, default_value_t = 100)]
    keys: u64,
    /// --workload custom: the Zipf exponent of key popularity (0: uniform).
    #[arg(long, default_value_t = 0.99)]
    zipf: f64,
    /// --workload custom: comma-separated weights, one per region, of where the clients are
    /// (default: even).
    #[arg(long)]
    region_mix: Option<String>,
    /// --workload custom: the size of a written value (bytes).
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Comma-separated: primary-backup, multi-leader, leaderless.
    #[arg(long, default_value = "primary-backup,multi-leader,leaderless")]
    models: String,
    /// Cut one region off from the others in each fault window (`--partition false`: no faults).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    partition: bool,
    /// Every link's latency distribution: constant, uniform, exponential or lognormal (default:
    /// drawn by the seed). Between regions the exponential and log-normal kinds are log-normal
    /// around the base latency (a wide-area link has a floor).
    #[arg(long)]
    latency: Option<String>,
    /// The one-way latency between every two regions, ms (default: drawn per pair, 20-60).
    #[arg(long)]
    region_ms: Option<u64>,
    /// Place primary-backup keyspaces in this region (r1, r2, ...): every voter and the leader
    /// there, so writes commit inside it (default: voters spread over the regions).
    #[arg(long)]
    primary_home: Option<String>,
    /// The multi-leader balance's merge policy: lww (transfers SET the balances read) or
    /// counter (transfers increment them).
    #[arg(long, default_value = "lww")]
    balance_merge: String,
    /// Leaderless keyspaces use sloppy quorums (hinted handoff) instead of strict ones.
    #[arg(long)]
    sloppy: bool,
    /// Leaderless keyspaces: replicas per key (default 3).
    #[arg(long)]
    n: Option<u8>,
    /// Leaderless keyspaces: replies a read waits for (default: a majority of N).
    #[arg(long)]
    r: Option<u8>,
    /// Leaderless keyspaces: acknowledgements a write waits for (default: a majority of N).
    #[arg(long)]
    w: Option<u8>,
    /// The leaderless register keyspaces' merge policy (balance and custom workloads): lww or
    /// siblings (default lww).
    #[arg(long)]
    merge: Option<String>,
    /// Primary-backup keyspaces' read policy: linearizable, lease, session or bounded:<ms>
    /// (default: linearizable, by leases on odd seeds and ReadIndex on even ones).
    #[arg(long)]
    read: Option<String>,
    /// Leaderless keyspaces run Merkle anti-entropy (every node compares each range with each
    /// peer at most once a second); off by default.
    #[arg(long)]
    anti_entropy: bool,
    /// Also crash a node (sometimes two) in fault windows; it restarts over its disk.
    #[arg(long)]
    crash: bool,
    /// Also skew clocks: ±100 ms apart throughout, and one or two jump by up to ±20 s in
    /// fault windows.
    #[arg(long)]
    skew: bool,
    /// One JSON object per (workload, model), one per line, instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report (inline SVG plots) to this file.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Also write the first workload's write latency CDFs as a standalone SVG to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Instead: probabilistically bounded staleness of leaderless N=3, R=1, W=1 with exponential
    /// links, measured on the real engines against the WARS model, at several t (uses --seed).
    #[arg(long)]
    pbs: bool,
    /// With --pbs: the links' mean latency (µs).
    #[arg(long, default_value_t = 1_000)]
    pbs_mean_us: u64,
    /// With --pbs: measured trials per t (the model draws 50 times as many).
    #[arg(long, default_value_t = 4_000)]
    pbs_trials: u64,
}

#[derive(clap::Args)]
struct SimArgs {
    /// Number of seeds to run, starting at --first-seed.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run exactly this seed (replay); prints its fault timeline and checker verdicts.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 5)]
    nodes: u32,
    #[arg(long, default_value_t = 8)]
    keys: u64,
    #[arg(long, default_value_t = 1_000)]
    ops: u64,
    #[arg(long, default_value_t = 20_000)]
    duration_ms: u64,
    #[arg(long)]
    no_partitions: bool,
    #[arg(long)]
    no_loss: bool,
    #[arg(long)]
    no_duplication: bool,
    #[arg(long)]
    no_crashes: bool,
    #[arg(long)]
    no_clock_skew: bool,
    /// Plant a bug (acknowledge writes before W replicas hold them) to see the checkers catch it.
    #[arg(long)]
    planted_bug: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve { config } => serve(config),
        Cmd::Up {
            nodes,
            regions,
            dir,
            base_port,
            no_keyspaces,
        } => up(nodes, regions, dir, base_port, !no_keyspaces),
        Cmd::Demo { dir } => {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("clearing {}", dir.display()))?;
            }
            triarch_cli::demo::run(&dir)
        }
        Cmd::Sim(args) => sim(args),
        Cmd::Explore(args) => explore(*args),
        Cmd::Advise(args) => advise(args),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIARCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: `triarch up` and service managers send the log to a file.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

fn serve(config: PathBuf) -> Result<()> {
    init_logging();
    let config = triarch_server::ServerConfig::load(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        triarch_server::start(config).await?;
        wait_for_signal().await;
        tracing::info!("stopping");
        anyhow::Ok(())
    })?;
    // Every acknowledged write was synced before its reply; nothing more to flush.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn up(nodes: u32, regions: u32, dir: PathBuf, base_port: u16, canonical: bool) -> Result<()> {
    let keyspaces = if canonical {
        triarch_cli::cluster::canonical_keyspaces(nodes, regions)
    } else {
        Vec::new()
    };
    let mut cluster = LocalCluster::configure(&dir, nodes, regions, base_port, keyspaces.clone())?;
    cluster.start_all()?;
    println!(
        "{} nodes up; cluster file {}",
        nodes,
        cluster.dir.join("cluster.json").display()
    );
    for k in &keyspaces {
        let mut line = format!("  keyspace {} ({})", k.name, k.model);
        // Wait for the groups' first leaders so that the cluster is ready when this returns.
        match k.model {
            triarch_core::Model::PrimaryBackup => {
                let leader = cluster.wait_for_leader(&k.name, None, Duration::from_secs(20))?;
                line.push_str(&format!(": leader n{leader}"));
            }
            triarch_core::Model::MultiLeader => {
                let leaders = cluster.wait_for_region_leaders(&k.name, Duration::from_secs(20))?;
                let shown: Vec<String> = leaders
                    .iter()
                    .map(|(region, id)| format!("{region} n{id}"))
                    .collect();
                line.push_str(&format!(": region leaders {}", shown.join(", ")));
            }
            triarch_core::Model::Leaderless => {}
        }
        println!("{line}");
    }
    for n in &cluster.nodes {
        println!(
            "  node {} ({}): resp {}  http {}  peer {}  pid {}",
            n.id,
            n.region,
            n.resp,
            n.http,
            n.peer,
            n.child.as_ref().map_or(0, |c| c.id())
        );
    }
    println!("Ctrl-C stops every node.");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(wait_for_signal());
    println!("stopping");
    cluster.stop_all();
    Ok(())
}

fn sim(args: SimArgs) -> Result<()> {
    let options = triarch_sim::SimOptions {
        nodes: args.nodes,
        keys: args.keys,
        ops: args.ops,
        duration: std::time::Duration::from_millis(args.duration_ms),
        partitions: !args.no_partitions,
        packet_loss: !args.no_loss,
        duplication: !args.no_duplication,
        crashes: !args.no_crashes,
        clock_skew: !args.no_clock_skew,
        planted_bug: args.planted_bug,
    };
    options.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(seed) = args.seed {
        let report = triarch_sim::run_seed(seed, &options);
        for entry in &report.timeline {
            println!("  {entry}");
        }
        println!("{report}");
        if !report.passed() {
            std::process::exit(1);
        }
        return Ok(());
    }
    let started = std::time::Instant::now();
    let summary = triarch_sim::run_seeds(args.first_seed, args.seeds, &options, |report| {
        if !report.passed() {
            println!("{report}");
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} seeds, {} failed; ops ok/fail/info {}/{}/{}; {} events in {:.1} s ({:.0} events/s)",
        summary.seeds,
        summary.failed.len(),
        summary.ops_ok,
        summary.ops_fail,
        summary.ops_info,
        summary.events,
        elapsed,
        summary.events as f64 / elapsed.max(1e-9),
    );
    for failed in &summary.failed {
        println!("replay: {}", failed.replay_command());
    }
    if !summary.passed() {
        std::process::exit(1);
    }
    Ok(())
}

fn explore_pbs(args: &ExploreArgs) -> Result<()> {
    use triarch_sim::pbs::{self, Model, PbsSetup};
    anyhow::ensure!(args.pbs_mean_us >= 1, "--pbs-mean-us must be at least 1");
    anyhow::ensure!(args.pbs_trials >= 1, "--pbs-trials must be at least 1");
    let setup = PbsSetup::exponential_n3_r1_w1(args.pbs_mean_us);
    let ts: Vec<std::time::Duration> = [0.0, 0.5, 1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|means: &f64| {
            std::time::Duration::from_micros((means * args.pbs_mean_us as f64).round() as u64)
        })
        .collect();
    let started = std::time::Instant::now();
    let rows = pbs::compare(
        &setup,
        Model::Wars,
        &ts,
        args.pbs_trials,
        args.pbs_trials * 50,
        args.seed,
    );
    println!(
        "probabilistically bounded staleness: P(read returns the write | read starts t after its acknowledgement)"
    );
    println!(
        "measured on real leaderless engines (node 4 coordinates, outside the key's N=3 replicas; no faults, no anti-entropy) vs the WARS model (Bailis et al., VLDB 2012)"
    );
    print!("{}", pbs::table(&setup, &rows));
    eprintln!("{:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs the explorer with a progress bar on stderr when stderr is a terminal (never on
/// stdout: the report there depends on the options alone).
fn run_explore(options: &triarch_sim::explore::ExploreOptions) -> triarch_sim::explore::Report {
    use std::io::{IsTerminal, Write as _};
    if !std::io::stderr().is_terminal() {
        return triarch_sim::explore::explore(options);
    }
    const BAR: u64 = 30;
    let report = triarch_sim::explore::explore_with_progress(options, &mut |done, total| {
        let filled = (done * BAR / total.max(1)) as usize;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {done}/{total} simulations",
            "#".repeat(filled),
            " ".repeat(BAR as usize - filled)
        );
        let _ = err.flush();
    });
    eprint!("\r{}\r", " ".repeat(BAR as usize + 30));
    report
}

fn advise(args: AdviseArgs) -> Result<()> {
    use triarch_sim::explore::ExploreOptions;
    use triarch_sim::explore::advise::{self, ConflictCost, Shape};
    let conflict_cost = ConflictCost::parse(&args.conflict_cost)
        .ok_or_else(|| anyhow::anyhow!("--conflict-cost {}: high or low", args.conflict_cost))?;
    let shape = Shape {
        conflict_cost,
        writes_local: args.writes_local,
        latency_sensitive: args.latency_sensitive,
        mergeable: args.mergeable,
        simple_ops: args.simple_ops,
    };
    let advice = advise::advise(&shape);
    println!("{advice}");
    println!();
    let options = advice.explore_options(ExploreOptions {
        regions: args.regions,
        first_seed: args.seed,
        seeds: args.seeds,
        ..ExploreOptions::default()
    });
    options.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = run_explore(&options);
    print!("{report}");
    Ok(())
}

fn explore(args: ExploreArgs) -> Result<()> {
    use triarch_sim::explore::{self, ExploreOptions, Workload};
    if args.pbs {
        return explore_pbs(&args);
    }
    let workloads = if args.workload == "all" {
        Workload::ALL.to_vec()
    } else {
        vec![Workload::parse(&args.workload).ok_or_else(|| {
            anyhow::anyhow!(
                "--workload {}: cart, balance, prefs, all or custom",
                args.workload
            )
        })?]
    };
    let models = args
        .models
        .split(',')
        .map(|m| {
            explore::parse_model(m.trim()).ok_or_else(|| {
                anyhow::anyhow!("--models: {m}: primary-backup, multi-leader or leaderless")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let options = ExploreOptions {
        regions: args.regions,
        first_seed: args.seed,
        seeds: args.seeds,
        workloads,
        models,
        partition: args.partition,
        crash: args.crash,
        skew: args.skew,
        sloppy: args.sloppy,
        counter_balance: match args.balance_merge.as_str() {
            "lww" => false,
            "counter" => true,
            other => anyhow::bail!("--balance-merge {other}: lww or counter"),
        },
        latency: match &args.latency {
            None => None,
            Some(name) => Some(explore::parse_latency(name).ok_or_else(|| {
                anyhow::anyhow!("--latency {name}: constant, uniform, exponential or lognormal")
            })?),
        },
        region_ms: args.region_ms,
        primary_home: match &args.primary_home {
            None => None,
            Some(name) => Some(
                name.strip_prefix('r')
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!("--primary-home {name}: a region r1, r2, ...")
                    })?,
            ),
        },
        n: args.n,
        r: args.r,
        w: args.w,
        merge: match &args.merge {
            None => None,
            Some(name) => Some(explore::parse_merge(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "--merge {name}: lww or siblings (the register keyspaces' policies)"
                )
            })?),
        },
        read: match &args.read {
            None => None,
            Some(text) => Some(
                triarch_core::ReadPolicy::parse(text)
                    .map_err(|e| anyhow::anyhow!("--read {text}: {e}"))?,
            ),
        },
        anti_entropy: args.anti_entropy,
        mix: explore::CustomMix {
            reads: args.reads,
            keys: args.keys,
            zipf: args.zipf,
            region_mix: match &args.region_mix {
                None => Vec::new(),
                Some(list) => list
                    .split(',')
                    .map(|w| {
                        w.trim()
                            .parse::<f64>()
                            .map_err(|e| anyhow::anyhow!("--region-mix {w}: {e}"))
                    })
                    .collect::<Result<Vec<_>>>()?,
            },
            value_bytes: args.value_bytes,
        },
    };
    options.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = std::time::Instant::now();
    let report = run_explore(&options);
    let elapsed = started.elapsed().as_secs_f64();
    if args.json {
        print!("{}", report.json_lines());
    } else {
        print!("{report}");
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report.html())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("HTML report: {}", path.display());
    }
    if let Some(path) = &args.svg {
        let svg = explore::html::write_latency_svg(&report, options.workloads[0]);
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("write latency plot: {}", path.display());
    }
    // Wall time on stderr: the report itself depends on the options alone.
    eprintln!(
        "{} simulations, {} events in {:.1} s ({:.0} events/s)",
        report.runs,
        report.events,
        elapsed,
        report.events as f64 / elapsed.max(1e-9)
    );
    Ok(())
}
