//! `triarch-nemesis`: Jepsen-style fault injection against real `triarch serve` processes.
//!
//! The deterministic simulator (`triarch-sim`) explores thousands of seeds of the sans-IO node;
//! this crate is the second layer of the project's testing design: the real binary, real
//! sockets, real disks, real clocks, and real faults, on one machine.
//!
//! ## Usage (as root)
//!
//! ```sh
//! apt-get install -y iptables nftables faketime      # once; iproute2 is already there
//! cargo build -p triarch-cli -p triarch-nemesis
//! target/debug/triarch-nemesis run                    # 5 nodes, 60 s of every fault, random seed
//! target/debug/triarch-nemesis run --workload bank     # or registers, counter, set, cart, ml-counter, ml-lww
//! target/debug/triarch-nemesis run --seed 7 --nodes 5 --time-limit-s 60 \
//!     --faults partition,kill,pause,clock,loss --dir target/nemesis/seed-7
//! target/debug/triarch-nemesis run --planted-bug --expect-failure   # the checker must catch it
//! target/debug/triarch-nemesis check --dir target/nemesis/seed-7    # re-check a run's history
//! target/debug/triarch-nemesis clean                  # remove what a killed (-9) harness left
//! ```
//!
//! Exit status: 0 when the run met its expectation (no checker failed; with `--expect-failure`,
//! some checker failed), 1 when it did not, 2 on a harness error (including anything left behind
//! after teardown), 130 when interrupted (after tearing down).
//!
//! ## A run
//!
//! 1. **Hosts** ([`net`]): network namespaces `tn<pid>n1..nN` (nodes, `10.99.0.i`), `tn<pid>c`
//!    (the client, `10.99.0.100`) and `tn<pid>sw` (a bridge every host's veth is plugged into).
//!    Nothing touches the root namespace's network or the machine's clock.
//! 2. **Nodes** ([`harness`]): `ip netns exec tn<pid>n<i> triarch serve --config n<i>.toml`, one
//!    data directory each, keyspace `nemesis` (leaderless, N=3, R=2, W=2, lww); with clock faults
//!    on, under libfaketime with a control file per node.
//! 3. **Client** ([`client`]): this binary again, `triarch-nemesis client`, inside the client
//!    namespace, running the single-writer register workload and writing `history.jsonl`
//!    ([`history`]); the harness drives it over a pipe (`start`, `stop`, `final`).
//! 4. **Nemesis** ([`schedule`], [`nft`]): a seeded schedule of fault windows (3-6 s) and healed
//!    windows (2-5 s): partitions (random halves, isolate one, majorities ring, bridge, one-way)
//!    and packet loss as nft rules at the bridge, `kill -9` and restart on the same data
//!    directory, `SIGSTOP`/`SIGCONT`, clock bumps of seconds to minutes.
//! 5. **End**: final heal, settle (5 s), final reads of every key through every node at R=3.
//! 6. **Teardown**, always (success, failure, panic, SIGINT/SIGTERM/SIGHUP), then a check that no
//!    namespace, process or nft table of the run is left.
//! 7. **Checkers** ([`check::check_run`]): per workload (`--workload`): the simulator's
//!    single-writer checker (leaderless registers; multi-leader `ml-lww`), linearizability per
//!    key (primary-backup registers), the simulator's bank, counter and add-wins set checkers
//!    through [`check::merged_history`] (`bank`, `counter`, `ml-counter`, `set`), the cart
//!    checker (multi-leader `cart`), and convergence of the final reads through every node.
//!    **Report** ([`report`]): `summary.txt`, `latency-raw.svg`.
//!
//! Region latency for the multi-leader workloads: [`delay`] (iptables NFQUEUE at the bridge and
//! a delay program). The suite CI runs: `crates/nemesis/scripts/suite.sh` (see the README).

pub mod check;
pub mod delay;
pub use client::Workload;
pub mod client;
pub mod harness;
pub mod history;
pub mod net;
pub mod nft;
pub mod report;

pub mod run;
pub mod schedule;
pub mod signals;

use anyhow::Result;

/// Removes what runs whose harness died without tearing down (`kill -9`) left: namespaces named
/// `tn<pid>sw`, `tn<pid>c` or `tn<pid>n<i>` whose `<pid>` is no longer a running
/// `triarch-nemesis`, and the processes inside them. Returns what it removed.
pub fn clean() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for ns in net::namespaces()? {
        let Some(owner) = run_owner(&ns) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{owner}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("triarch-nemesis") {
            continue; // that run is still going: it will tear down itself
        }
        let mut topo_pids = net::namespace_pids(&ns)?;
        topo_pids.sort();
        for pid in &topo_pids {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        net::run(std::process::Command::new("ip").args(["netns", "del", &ns]))?;
        removed.push(format!("namespace {ns} (processes {topo_pids:?})"));
    }
    Ok(removed)
}

/// The harness pid in a run's namespace name (`tn123sw` -> 123), if the name is one of ours.
pub fn run_owner(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix("tn")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let (pid, suffix) = rest.split_at(digits);
    let ours = suffix == "sw"
        || suffix == "c"
        || suffix
            .strip_prefix('n')
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if ours { pid.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_its_own_namespace_names() {
        assert_eq!(run_owner("tn123sw"), Some(123));
        assert_eq!(run_owner("tn123c"), Some(123));
        assert_eq!(run_owner("tn123n7"), Some(123));
        for other in [
            "tn123", "tnsw", "tn123n", "tn123x", "tn12n3x", "n1", "tn123swx",
        ] {
            assert_eq!(run_owner(other), None, "{other}");
        }
    }
}
