//! Everything a run creates, owned by one value whose `Drop` tears it all down: the namespaces,
//! the node processes, the client process and the fault state. [`Harness::finish`] tears down
//! explicitly and then checks that nothing of the run is left (no namespace with its prefix, no
//! process running its configuration or history, no nft table with its prefix).

use crate::net::{self, Topology};
use crate::nft::{self, host_ip};
use crate::schedule::Fault;
use anyhow::{Context, Result, bail};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use triarch_server::config::ServerConfig;

/// libfaketime's multi-threaded library as Debian's `faketime` package installs it.
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

pub const RESP_PORT: u16 = 6379;
pub const HTTP_PORT: u16 = 8080;
pub const PEER_PORT: u16 = 7000;

/// The RESP address of node `id`.
pub fn resp_addr(id: u32) -> SocketAddr {
    SocketAddr::from((host_ip(id), RESP_PORT))
}

/// The configuration of node `id` of `nodes`, with the workload's keyspace (N=3, R=2, W=2).
///
/// Built from the documented file format (README, "Configuration") rather than field by field,
/// so that it keeps working while the Rust structs behind the format are reorganised; `validate`
/// (and this crate's tests) catch any disagreement.
pub fn node_config(
    dir: &Path,
    id: u32,
    nodes: u32,
    workload: crate::Workload,
    planted_bug: bool,
) -> Result<ServerConfig> {
    let peer = |i: u32| SocketAddr::from((host_ip(i), PEER_PORT)).to_string();
    use crate::Workload as W;
    let name = workload.keyspace();
    let keyspace = match workload {
        W::SingleWriter | W::Counter | W::Set => serde_json::json!({
            "name": name,
            "model": "leaderless",
            "n": 3,
            "r": 2,
            "w": 2,
            "merge": match workload {
                W::Counter => "counter",
                W::Set => "set",
                _ => "lww",
            },
        }),
        W::Registers | W::Bank => serde_json::json!({
            "name": name,
            "model": "primary-backup",
            "n": 3,
        }),
        // As `triarch up`: N = min(3, nodes in the smallest region) voters per region.
        W::Cart | W::MlCounter | W::MlLww => serde_json::json!({
            "name": name,
            "model": "multi-leader",
            "n": (nodes / CART_REGIONS).clamp(1, 3),
            "merge": match workload {
                W::Cart => "set",
                W::MlCounter => "counter",
                _ => "lww",
            },
        }),
    };
    let members: Vec<serde_json::Value> = (1..=nodes)
        .map(|i| serde_json::json!({"id": i, "region": region(workload, i), "peer_addr": peer(i)}))
        .collect();
    let file = serde_json::json!({
        "node_id": id,
        "region": region(workload, id),
        "data_dir": dir.join("data").join(format!("n{id}")),
        "peer_addr": peer(id),
        "resp_addr": resp_addr(id).to_string(),
        "http_addr": SocketAddr::from((host_ip(id), HTTP_PORT)).to_string(),
        "members": members,
        "keyspaces": [keyspace],
        "request_timeout_ms": 1_000,
        "clock_forward_bound_ms": 60_000,
        "bug_ack_before_quorum": planted_bug && matches!(workload, W::SingleWriter | W::Set),
        "bug_local_reads": planted_bug && workload == crate::Workload::Registers,
    });
    let config: ServerConfig =
        serde_json::from_value(file).with_context(|| format!("building n{id}'s configuration"))?;
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("n{id}'s configuration: {e}"))?;
    Ok(config)
}

/// Regions of the multi-leader workloads (the other workloads run in one region, `r1`).
pub const CART_REGIONS: u32 = 3;

/// Node `id`'s region: `r((id - 1) % 3 + 1)` for the multi-leader workloads, else `r1`.
pub fn region(workload: crate::Workload, id: u32) -> String {
    if workload.is_multileader() {
        format!("r{}", (id - 1) % CART_REGIONS + 1)
    } else {
        "r1".into()
    }
}

struct NodeProc {
    id: u32,
    config: PathBuf,
    log: PathBuf,
    /// libfaketime's control file, when clock faults are on.
    clock: Option<PathBuf>,
    child: Option<Child>,
    paused: bool,
}

/// The client process: its stdin (commands) and a channel of its stdout lines.
pub struct ClientProc {
    child: Child,
    stdin: ChildStdin,
    pub lines: Receiver<String>,
}

impl ClientProc {
    pub fn send(&mut self, word: &str) -> Result<()> {
        writeln!(self.stdin, "{word}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("telling the client {word:?}"))
    }

    /// `Some(status)` once the client exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    pub fn wait(&mut self) -> Result<ExitStatus> {
        Ok(self.child.wait()?)
    }
}

pub struct Harness {
    dir: PathBuf,
    topo: Topology,
    binary: PathBuf,
    nodes: Vec<NodeProc>,
    pub client: Option<ClientProc>,
    /// The region-latency program in the switch namespace ([`crate::delay`]), when on.
    delay: Option<Child>,
    torn_down: bool,
}

impl Harness {
    /// `dir` must exist and be absolute. Nothing is created until [`Harness::create_network`].
    pub fn new(dir: &Path, prefix: &str, count: u32, binary: &Path, clock: bool) -> Self {
        let nodes = (1..=count)
            .map(|id| NodeProc {
                id,
                config: dir.join(format!("n{id}.toml")),
                log: dir.join(format!("n{id}.log")),
                clock: clock.then(|| dir.join(format!("clock-n{id}"))),
                child: None,
                paused: false,
            })
            .collect();
        Harness {
            dir: dir.to_path_buf(),
            topo: Topology::new(prefix, count),
            binary: binary.to_path_buf(),
            nodes,
            client: None,
            delay: None,
            torn_down: false,
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn node_count(&self) -> u32 {
        self.nodes.len() as u32
    }

    pub fn create_network(&mut self) -> Result<()> {
        self.topo
            .create()
            .context("creating the network namespaces")
    }

    /// Writes every node's configuration (and a neutral clock control file).
    pub fn write_configs(&self, workload: crate::Workload, planted_bug: bool) -> Result<()> {
        let n = self.node_count();
        for node in &self.nodes {
            let config = node_config(&self.dir, node.id, n, workload, planted_bug)?;
            std::fs::write(&node.config, config.to_toml())
                .with_context(|| format!("writing {}", node.config.display()))?;
            if let Some(clock) = &node.clock {
                write_clock(clock, 0)?;
            }
        }
        Ok(())
    }

    /// Starts node `id` in its namespace (it must not be running).
    pub fn start_node(&mut self, id: u32, note: &str) -> Result<()> {
        let ns = self.topo.node(id);
        let node = &mut self.nodes[id as usize - 1];
        assert!(node.child.is_none(), "n{id} is already running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        writeln!(log, "--- triarch-nemesis: {note} ---")?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &ns])
            .arg(&self.binary)
            .arg("serve")
            .arg("--config")
            .arg(&node.config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(clock) = &node.clock {
            command
                .env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME_TIMESTAMP_FILE", clock)
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting n{id} in namespace {ns}"))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        for id in 1..=self.node_count() {
            self.start_node(id, "start")?;
        }
        Ok(())
    }

    /// `kill -9` (no chance to flush anything) and reap.
    pub fn kill_node(&mut self, id: u32) -> Result<()> {
        if let Some(mut child) = self.nodes[id as usize - 1].child.take() {
            child.kill().with_context(|| format!("killing n{id}"))?;
            child.wait()?;
        }
        self.nodes[id as usize - 1].paused = false;
        Ok(())
    }

    fn signal(&self, id: u32, signal: &str) -> Result<()> {
        let Some(child) = &self.nodes[id as usize - 1].child else {
            return Ok(()); // not running: nothing to pause or resume
        };
        net::run(Command::new("kill").args([signal, &child.id().to_string()]))?;
        Ok(())
    }

    pub fn pause_node(&mut self, id: u32) -> Result<()> {
        self.signal(id, "-STOP")?;
        self.nodes[id as usize - 1].paused = true;
        Ok(())
    }

    pub fn resume_node(&mut self, id: u32) -> Result<()> {
        self.signal(id, "-CONT")?;
        self.nodes[id as usize - 1].paused = false;
        Ok(())
    }

    /// Moves node `id`'s wall clock `seconds` away from the machine's (0 restores it).
    pub fn set_clock(&self, id: u32, seconds: i64) -> Result<()> {
        match &self.nodes[id as usize - 1].clock {
            Some(path) => write_clock(path, seconds),
            None => bail!("clock faults are off: n{id} runs without libfaketime"),
        }
    }

    /// Nodes that exited although nobody killed them, with their exit status (they are reaped and
    /// count as down from now on).
    pub fn reap_unexpected_exits(&mut self) -> Result<Vec<(u32, ExitStatus)>> {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child
                && let Some(status) = child.try_wait()?
            {
                exited.push((node.id, status));
                node.child = None;
                node.paused = false;
            }
        }
        Ok(exited)
    }

    /// Applies one fault of the schedule.
    pub fn apply(&mut self, fault: &Fault) -> Result<()> {
        match fault {
            Fault::Partition { blocked, .. } => self
                .topo
                .nft(&nft::partition_script(&self.table("part"), blocked)),
            Fault::Loss { percent } => {
                let nodes: Vec<u32> = (1..=self.node_count()).collect();
                self.topo
                    .nft(&nft::loss_script(&self.table("loss"), &nodes, *percent))
            }
            Fault::Kill { nodes } => nodes.iter().try_for_each(|&n| self.kill_node(n)),
            Fault::Pause { nodes } => nodes.iter().try_for_each(|&n| self.pause_node(n)),
            Fault::ClockBump { bumps } => bumps.iter().try_for_each(|&(n, s)| self.set_clock(n, s)),
        }
    }

    /// Heals one fault; returns what there is to say about it (packets dropped).
    pub fn heal(&mut self, fault: &Fault, at: &str) -> Result<String> {
        match fault {
            Fault::Partition { .. } => self.heal_table("part"),
            Fault::Loss { .. } => self.heal_table("loss"),
            Fault::Kill { nodes } => {
                for &n in nodes {
                    if self.nodes[n as usize - 1].child.is_none() {
                        self.start_node(n, &format!("restart after kill -9, {at}"))?;
                    }
                }
                Ok(String::new())
            }
            Fault::Pause { nodes } => {
                nodes.iter().try_for_each(|&n| self.resume_node(n))?;
                Ok(String::new())
            }
            Fault::ClockBump { bumps } => {
                bumps.iter().try_for_each(|&(n, _)| self.set_clock(n, 0))?;
                Ok(String::new())
            }
        }
    }

    fn table(&self, what: &str) -> String {
        format!("{}{what}", self.topo.prefix())
    }

    fn heal_table(&mut self, what: &str) -> Result<String> {
        let table = self.table(what);
        let dropped = self
            .topo
            .nft_list_json(&table)
            .ok()
            .and_then(|json| nft::dropped_packets(&json));
        self.topo.nft(&nft::heal_script(&table))?;
        Ok(dropped.map_or(String::new(), |d| format!("{d} packets dropped")))
    }

    /// Heals everything, whatever the schedule did: network rules gone, paused nodes resumed,
    /// clocks restored, nodes that are down (killed or crashed) restarted. Returns the nodes it
    /// restarted.
    pub fn heal_all(&mut self, at: &str) -> Result<Vec<u32>> {
        self.heal_table("part")?;
        self.heal_table("loss")?;
        let mut restarted = Vec::new();
        for id in 1..=self.node_count() {
            if self.nodes[id as usize - 1].paused {
                self.resume_node(id)?;
            }
            if self.nodes[id as usize - 1].clock.is_some() {
                self.set_clock(id, 0)?;
            }
            if self.nodes[id as usize - 1].child.is_none() {
                self.start_node(id, &format!("restart at the final heal, {at}"))?;
                restarted.push(id);
            }
        }
        Ok(restarted)
    }

    /// Starts the delay program in the switch namespace, waits for it to bind its queues, then
    /// adds the iptables rules that send cross-region packets to it ([`crate::delay`]).
    pub fn start_region_latency(
        &mut self,
        self_exe: &Path,
        latency: &crate::delay::RegionLatency,
        workload: crate::Workload,
    ) -> Result<()> {
        use std::io::BufRead;
        let log_path = self.dir.join("delay.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.topo.switch()])
            .arg(self_exe)
            .arg("delay")
            .arg("--queues")
            .arg(latency.queues_arg())
            .arg("--run-dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting the delay program in the switch namespace")?;
        let stdout = child.stdout.take().expect("piped");
        self.delay = Some(child);
        // Its first line is `ready` (queues bound) or, if it failed, the end of its output.
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!(
                "the delay program did not start:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        let region_of = |n: u32| {
            region(workload, n)
                .trim_start_matches('r')
                .parse()
                .expect("r<number>")
        };
        for rule in latency.iptables_rules(self.node_count(), region_of, host_ip) {
            net::run(
                Command::new("ip")
                    .args(["netns", "exec", &self.topo.switch(), "iptables"])
                    .args(&rule),
            )?;
        }
        Ok(())
    }

    /// `Some(status)` once the delay program exited (it never should while the run lasts).
    pub fn delay_exited(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.delay {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// Runs `triarch-nemesis probe` in node `from`'s namespace: the median TCP connect time, in
    /// ms, to node `to`'s RESP port.
    pub fn probe(&self, self_exe: &Path, from: u32, to: u32) -> Result<f64> {
        let out = net::run(
            Command::new("ip")
                .args(["netns", "exec", &self.topo.node(from)])
                .arg(self_exe)
                .args(["probe", "--addr", &resp_addr(to).to_string()]),
        )?;
        out.trim()
            .parse()
            .with_context(|| format!("probe answered {out:?}"))
    }

    /// Starts `triarch-nemesis client <args>` in the client namespace.
    pub fn spawn_client(&mut self, self_exe: &Path, args: &[String]) -> Result<()> {
        let log = self.dir.join("client.log");
        let log =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.topo.client()])
            .arg(self_exe)
            .arg("client")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting the client in its namespace")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.client = Some(ClientProc {
            child,
            stdin,
            lines: rx,
        });
        Ok(())
    }

    /// Stops every process and deletes every namespace of the run (idempotent). Returns what went
    /// wrong on the way.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        if let Some(mut client) = self.client.take() {
            let _ = client.child.kill();
            if let Err(e) = client.child.wait() {
                problems.push(format!("reaping the client: {e}"));
            }
        }
        if let Some(mut child) = self.delay.take() {
            let _ = child.kill();
            if let Err(e) = child.wait() {
                problems.push(format!("reaping the delay program: {e}"));
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                if let Err(e) = child.wait() {
                    problems.push(format!("reaping n{}: {e}", node.id));
                }
            }
        }
        problems.extend(self.topo.teardown());
        problems
    }

    /// Tears down, then checks that nothing of the run is left.
    pub fn finish(mut self) -> Result<()> {
        let mut problems = self.teardown();
        problems.extend(self.leftovers());
        if problems.is_empty() {
            Ok(())
        } else {
            bail!(
                "the run left something behind:\n  {}",
                problems.join("\n  ")
            )
        }
    }

    /// Anything of the run still there.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let ours = self.topo.names();
        match net::namespaces() {
            Ok(names) => found.extend(
                names
                    .into_iter()
                    .filter(|n| ours.contains(n))
                    .map(|n| format!("namespace {n}")),
            ),
            Err(e) => found.push(format!("cannot list namespaces: {e:#}")),
        }
        let mut markers: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.config.display().to_string())
            .collect();
        markers.push(self.dir.join("history.jsonl").display().to_string());
        // The delay program names the run directory (its iptables rules lived in the switch
        // namespace, checked gone above).
        markers.push(format!("--run-dir {}", self.dir.display()));
        found.extend(
            processes_mentioning(&markers)
                .into_iter()
                .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
        );
        // The run only ever makes tables in its switch namespace, which is gone by now; a table
        // with its prefix anywhere we can see would be a leak.
        let tables = [self.table("part"), self.table("loss")];
        if let Ok(listed) = net::run(Command::new("nft").args(["list", "tables"])) {
            found.extend(
                listed
                    .lines()
                    .filter(|l| {
                        tables
                            .iter()
                            .any(|t| l.split_whitespace().last() == Some(t))
                    })
                    .map(|l| format!("nft {l}")),
            );
        }
        found
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let problems = self.teardown();
        for p in problems {
            eprintln!("teardown: {p}");
        }
    }
}

/// Writes a libfaketime control file atomically (a reader never sees half a file).
fn write_clock(path: &Path, seconds: i64) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{seconds:+}s\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Processes (other than this one) whose command line contains any of `markers`.
pub fn processes_mentioning(markers: &[String]) -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if markers.iter().any(|m| cmd.contains(m.as_str())) {
            found.push((pid, cmd.trim().to_string()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_configs_are_valid_and_name_the_namespace_addresses() {
        let dir = Path::new("/tmp/run");
        for planted_bug in [false, true] {
            let c = node_config(dir, 2, 5, crate::Workload::SingleWriter, planted_bug).unwrap();
            assert_eq!(c.resp_addr.to_string(), "10.99.0.2:6379");
            assert_eq!(c.members.len(), 5);
            assert_eq!(c.members[4].peer_addr.to_string(), "10.99.0.5:7000");
            assert_eq!(c.bug_ack_before_quorum, planted_bug);
            assert!(!c.bug_local_reads);
            let text = c.to_toml();
            assert!(text.contains("name = \"nemesis\""), "{text}");
            assert!(text.contains("w = 2"), "{text}");
            assert_eq!(c.data_dir, dir.join("data/n2"));
            let c = node_config(dir, 2, 5, crate::Workload::Registers, planted_bug).unwrap();
            assert_eq!(c.bug_local_reads, planted_bug);
            assert!(!c.bug_ack_before_quorum);
            assert!(c.to_toml().contains("primary-backup"));
            let c = node_config(dir, 5, 5, crate::Workload::Cart, planted_bug).unwrap();
            assert_eq!(c.region, "r2");
            assert_eq!(c.members[2].region, "r3");
            assert_eq!(c.members[3].region, "r1");
            assert!(!c.bug_local_reads && !c.bug_ack_before_quorum);
            let text = c.to_toml();
            assert!(
                text.contains("multi-leader") && text.contains("name = \"cart\""),
                "{text}"
            );
        }
    }

    #[test]
    fn clock_files_hold_signed_seconds() {
        let dir = std::env::temp_dir().join(format!("nemesis-clock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("clock-n1");
        write_clock(&f, -120).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "-120s\n");
        write_clock(&f, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "+0s\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
