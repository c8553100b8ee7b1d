//! A local cluster of real node processes on 127.0.0.1 (`triarch up`, `triarch demo`, tests).

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use triarch_core::{MergePolicy, Model};
use triarch_server::config::{KeyspaceFileConfig, MemberConfig, ServerConfig};

/// The canonical deployment's keyspaces for `nodes` nodes spread over `regions` regions:
/// `balance` (primary-backup: one Raft group over N=min(3, nodes) voters), `cart` (multi-leader,
/// add-wins set: one Raft group per region over N voters, N=min(3, nodes in the smallest region),
/// so N=1 with one node per region) and `prefs` (leaderless, last-writer-wins, N=3 R=2 W=2 on
/// three or more nodes).
pub fn canonical_keyspaces(nodes: u32, regions: u32) -> Vec<KeyspaceFileConfig> {
    let per_region = nodes / regions.max(1);
    vec![
        KeyspaceFileConfig {
            name: "balance".into(),
            model: Model::PrimaryBackup,
            n: None,
            r: None,
            w: None,
            merge: None,
            read: None,
            quorum: None,
            home: None,
        },
        KeyspaceFileConfig {
            name: "cart".into(),
            model: Model::MultiLeader,
            n: Some(per_region.clamp(1, 3) as u8),
            r: None,
            w: None,
            merge: Some(MergePolicy::Set),
            read: None,
            quorum: None,
            home: None,
        },
        KeyspaceFileConfig {
            name: "prefs".into(),
            model: Model::Leaderless,
            n: None,
            r: None,
            w: None,
            merge: Some(MergePolicy::Lww),
            read: None,
            quorum: None,
            home: None,
        },
    ]
}

pub struct NodeProcess {
    pub id: u32,
    pub region: String,
    pub config_path: PathBuf,
    pub resp: SocketAddr,
    pub http: SocketAddr,
    pub peer: SocketAddr,
    pub child: Option<Child>,
}

pub struct LocalCluster {
    pub dir: PathBuf,
    pub nodes: Vec<NodeProcess>,
    binary: PathBuf,
}

#[derive(Serialize)]
struct ClusterFile<'a> {
    nodes: Vec<ClusterFileNode<'a>>,
}

#[derive(Serialize)]
struct ClusterFileNode<'a> {
    id: u32,
    region: &'a str,
    resp: String,
    http: String,
    peer: String,
    pid: Option<u32>,
}

/// Ports for node `i` (1-based): RESP `base + i - 1`, HTTP `base + 100 + i - 1`, peers
/// `base + 200 + i - 1`.
fn addr(base: u16, offset: u16, i: u32) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base + offset + i as u16 - 1))
}

/// A base port whose whole block (3 x `nodes` ports) is free right now. Successive calls in one
/// process start from different blocks, so that concurrent tests do not pick the same one between
/// the check and the bind.
pub fn free_base_port(nodes: u32) -> Result<u16> {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    // 20_000 + 42 * 300 stays below 32_768, where Linux's ephemeral ports begin: a port in that
    // range can be taken at any moment by an outgoing connection (or a loopback connection to
    // itself), which made the real-process tests fail now and then.
    let blocks = 42;
    for attempt in 0..blocks {
        let block = (std::process::id() * 7 + call * 11 + attempt) % blocks;
        let base = 20_000 + (block * 300) as u16;
        let all_free = (1..=nodes).all(|i| {
            [0, 100, 200]
                .iter()
                .all(|off| TcpListener::bind(addr(base, *off, i)).is_ok())
        });
        if all_free {
            return Ok(base);
        }
    }
    bail!("no free block of ports found")
}

impl LocalCluster {
    /// Writes one configuration file per node under `dir` (nodes spread round-robin over
    /// `regions` regions) with the canonical keyspaces available in this version.
    pub fn configure(
        dir: &Path,
        nodes: u32,
        regions: u32,
        base_port: u16,
        keyspaces: Vec<KeyspaceFileConfig>,
    ) -> Result<LocalCluster> {
        if nodes == 0 || nodes > 99 {
            bail!("--nodes must be between 1 and 99");
        }
        if regions == 0 || regions > nodes {
            bail!("--regions must be between 1 and the number of nodes");
        }
        if u32::from(base_port) + 300 > u32::from(u16::MAX) {
            bail!("--base-port leaves no room for {nodes} nodes");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let region = |i: u32| format!("r{}", (i - 1) % regions + 1);
        let members: Vec<MemberConfig> = (1..=nodes)
            .map(|i| MemberConfig {
                id: i,
                region: region(i),
                peer_addr: addr(base_port, 200, i),
            })
            .collect();
        let mut procs = Vec::new();
        for i in 1..=nodes {
            let config = ServerConfig {
                node_id: i,
                region: region(i),
                data_dir: dir.join(format!("n{i}")),
                peer_addr: addr(base_port, 200, i),
                resp_addr: addr(base_port, 0, i),
                http_addr: addr(base_port, 100, i),
                members: members.clone(),
                joining: false,
                keyspaces: keyspaces.clone(),
                request_timeout_ms: 1_000,
                value_bytes_max: triarch_core::limits::VALUE_BYTES_MAX_DEFAULT,
                clock_forward_bound_ms: 60_000,
                max_clients: 10_000,
                bug_ack_before_quorum: false,
                bug_local_reads: false,
                primary: Default::default(),
            };
            config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let config_path = dir.join(format!("n{i}.toml"));
            std::fs::write(&config_path, config.to_toml())?;
            procs.push(NodeProcess {
                id: i,
                region: region(i),
                config_path,
                resp: config.resp_addr,
                http: config.http_addr,
                peer: config.peer_addr,
                child: None,
            });
        }
        let binary = std::env::current_exe().context("locating the triarch binary")?;
        Ok(LocalCluster {
            dir,
            nodes: procs,
            binary,
        })
    }

    /// Configures one more node, `joining` the cluster in region `region` on ports of its own
    /// (it is not started, and not a member until `TRIARCH.CLUSTER JOIN` is decided). Returns
    /// its id.
    pub fn add_joining(&mut self, region: &str) -> Result<u32> {
        let first = self.nodes.first().context("a cluster has nodes")?;
        let mut config =
            ServerConfig::load(&first.config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let id = self.nodes.len() as u32 + 1;
        let base = free_base_port(1)?;
        config.node_id = id;
        config.region = region.to_string();
        config.data_dir = self.dir.join(format!("n{id}"));
        config.peer_addr = addr(base, 200, 1);
        config.resp_addr = addr(base, 0, 1);
        config.http_addr = addr(base, 100, 1);
        config.joining = true;
        config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let config_path = self.dir.join(format!("n{id}.toml"));
        std::fs::write(&config_path, config.to_toml())?;
        self.nodes.push(NodeProcess {
            id,
            region: region.to_string(),
            config_path,
            resp: config.resp_addr,
            http: config.http_addr,
            peer: config.peer_addr,
            child: None,
        });
        Ok(id)
    }

    /// Uses `binary` to run nodes instead of the current executable (tests).
    pub fn with_binary(mut self, binary: PathBuf) -> Self {
        self.binary = binary;
        self
    }

    pub fn node(&self, id: u32) -> &NodeProcess {
        &self.nodes[id as usize - 1]
    }

    /// Starts node `id` and waits until it answers PING.
    pub fn start(&mut self, id: u32) -> Result<()> {
        let binary = self.binary.clone();
        let dir = self.dir.clone();
        let node = &mut self.nodes[id as usize - 1];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("n{id}.log")))?;
        let child = Command::new(&binary)
            .arg("serve")
            .arg("--config")
            .arg(&node.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        node.child = Some(child);
        wait_for_ping(node)?;
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        for id in 1..=self.nodes.len() as u32 {
            self.start(id)?;
        }
        self.write_cluster_file()?;
        self.wait_for_links(Duration::from_secs(20))
    }

    /// Waits until every running node reports every other running node's link up.
    pub fn wait_for_links(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let running: Vec<u32> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let info = info(n).unwrap_or_default();
                let all_up = running.iter().filter(|&&p| p != n.id).all(|p| {
                    info.lines()
                        .any(|l| l.starts_with(&format!("peer_n{p}:")) && l.contains("link=up"))
                });
                if all_up {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {} did not connect to its peers within {timeout:?}",
                        n.id
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self, id: u32) -> Result<()> {
        if let Some(mut child) = self.nodes[id as usize - 1].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then wait for the process to exit (SIGKILL after 10 s).
    pub fn stop(&mut self, id: u32) -> Result<()> {
        if let Some(mut child) = self.nodes[id as usize - 1].child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    child.kill()?;
                    child.wait()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    pub fn stop_all(&mut self) {
        for id in 1..=self.nodes.len() as u32 {
            let _ = self.stop(id);
        }
    }

    /// The running nodes' ids.
    pub fn running(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Waits until every running voter of primary-backup keyspace `keyspace` names the same
    /// leader, that leader is running and is not `not`, and returns it. Only running nodes are
    /// asked; a node that is not a voter (`role` none) is skipped.
    pub fn wait_for_leader(
        &self,
        keyspace: &str,
        not: Option<u32>,
        timeout: Duration,
    ) -> Result<u32> {
        let deadline = Instant::now() + timeout;
        let running = self.running();
        loop {
            let mut seen = Vec::new();
            for id in &running {
                let Ok(info) = keyspace_info(self.node(*id), keyspace) else {
                    seen.push(None);
                    continue;
                };
                if info.get("role").map(String::as_str) == Some("none") {
                    continue;
                }
                seen.push(info.get("leader").and_then(|l| parse_node(l)));
            }
            if let Some(Some(first)) = seen.first()
                && seen.iter().all(|l| *l == Some(*first))
                && running.contains(first)
                && Some(*first) != not
            {
                return Ok(*first);
            }
            if Instant::now() > deadline {
                bail!(
                    "no agreed leader of keyspace {keyspace} within {timeout:?} (running nodes report {seen:?})"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running voter of multi-leader keyspace `keyspace` names a running
    /// leader of its region's group, the voters of one region agreeing, and returns each
    /// region's leader. A node that is not a voter (`role` none) is skipped; a region with no
    /// running node is left out.
    pub fn wait_for_region_leaders(
        &self,
        keyspace: &str,
        timeout: Duration,
    ) -> Result<BTreeMap<String, u32>> {
        let deadline = Instant::now() + timeout;
        let running = self.running();
        loop {
            let mut seen: BTreeMap<String, Vec<Option<u32>>> = BTreeMap::new();
            for id in &running {
                let node = self.node(*id);
                let leader = match keyspace_info(node, keyspace) {
                    Ok(info) if info.get("role").map(String::as_str) == Some("none") => continue,
                    Ok(info) => info.get("leader").and_then(|l| parse_node(l)),
                    Err(_) => None,
                };
                seen.entry(node.region.clone()).or_default().push(leader);
            }
            let agreed: BTreeMap<String, u32> = seen
                .iter()
                .filter_map(|(region, leaders)| match leaders.first() {
                    Some(Some(first))
                        if leaders.iter().all(|l| *l == Some(*first))
                            && running.contains(first) =>
                    {
                        Some((region.clone(), *first))
                    }
                    _ => None,
                })
                .collect();
            if agreed.len() == seen.len() && !seen.is_empty() {
                return Ok(agreed);
            }
            if Instant::now() > deadline {
                bail!(
                    "no agreed leader in every region of keyspace {keyspace} within {timeout:?} (running voters report {seen:?})"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn write_cluster_file(&self) -> Result<()> {
        let file = ClusterFile {
            nodes: self
                .nodes
                .iter()
                .map(|n| ClusterFileNode {
                    id: n.id,
                    region: &n.region,
                    resp: n.resp.to_string(),
                    http: n.http.to_string(),
                    peer: n.peer.to_string(),
                    pid: n.child.as_ref().map(Child::id),
                })
                .collect(),
        };
        std::fs::write(
            self.dir.join("cluster.json"),
            serde_json::to_string_pretty(&file)?,
        )?;
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Waits until the node answers on its RESP port, and checks that the answer comes from the
/// process just started (not from another cluster that holds the port).
fn wait_for_ping(node: &mut NodeProcess) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = node.child.as_ref().map(Child::id);
    loop {
        if let Some(child) = node.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            let log = node.config_path.with_file_name(format!("n{}.log", node.id));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "node {} exited during start-up ({status}); the end of {}:\n{}",
                node.id,
                log.display(),
                tail.join("\n")
            );
        }
        if let Ok(info) = info(node) {
            let serving_pid = info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|p| p.trim().parse::<u32>().ok());
            if serving_pid == pid {
                return Ok(());
            }
            bail!(
                "port {} is served by process {serving_pid:?}, not by node {} (pid {pid:?})",
                node.resp,
                node.id
            );
        }
        if Instant::now() > deadline {
            bail!(
                "node {} did not answer on {} within 30 s",
                node.id,
                node.resp
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn info(node: &NodeProcess) -> Result<String> {
    let mut c = triarch_client::Client::connect(node.resp)?;
    match c.call(&["INFO"])? {
        triarch_client::Value::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        other => bail!("INFO answered {other:?}"),
    }
}

/// `TRIARCH.KEYSPACE INFO name` on `node`, as a map of field to value.
pub fn keyspace_info(node: &NodeProcess, name: &str) -> Result<BTreeMap<String, String>> {
    let mut c = triarch_client::Client::connect_timeout(
        node.resp,
        Duration::from_secs(2),
        Duration::from_secs(5),
    )?;
    match c.call(&["TRIARCH.KEYSPACE", "INFO", name])? {
        triarch_client::Value::Array(items) => {
            let text = |v: &triarch_client::Value| match v {
                triarch_client::Value::Bulk(b) => Ok(String::from_utf8_lossy(b).into_owned()),
                other => bail!("unexpected field {other:?}"),
            };
            items
                .chunks(2)
                .map(|kv| Ok((text(&kv[0])?, text(kv.get(1).unwrap_or(&kv[0]))?)))
                .collect()
        }
        other => bail!("TRIARCH.KEYSPACE INFO {name} answered {other:?}"),
    }
}

/// `n3` -> 3.
pub fn parse_node(name: &str) -> Option<u32> {
    name.strip_prefix('n')?.parse().ok()
}
