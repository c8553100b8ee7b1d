//! The run's hosts: one network namespace per node, one for the client, and a "switch"
//! namespace holding the bridge every host is plugged into (TESTING.md's topology).
//!
//! Every name carries the run's prefix (`tn<pid>`), so that two runs never collide and anything a
//! run leaves behind names its owner. Nothing here touches the root namespace's network: the
//! veth pairs are created directly inside the namespaces.

use crate::nft::{CLIENT_HOST, host_ip};
use anyhow::{Context, Result, bail};
use std::process::{Command, Output, Stdio};

/// Runs `command` to completion; a non-zero exit is an error carrying its stderr.
pub fn run(command: &mut Command) -> Result<String> {
    let output = output(command)?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command` with `input` on its stdin.
pub fn run_with_input(command: &mut Command, input: &str) -> Result<String> {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running `{}`", describe(command)))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}\ninput was:\n{input}",
            describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn output(command: &mut Command) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{}`", describe(command)))
}

fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// The namespaces of one run.
pub struct Topology {
    prefix: String,
    nodes: u32,
    /// Namespaces created so far (torn down in reverse).
    created: Vec<String>,
}

impl Topology {
    pub fn new(prefix: &str, nodes: u32) -> Self {
        Topology {
            prefix: prefix.to_string(),
            nodes,
            created: Vec::new(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    pub fn node(&self, id: u32) -> String {
        format!("{}n{id}", self.prefix)
    }

    pub fn client(&self) -> String {
        format!("{}c", self.prefix)
    }

    /// Every namespace name the run uses.
    pub fn names(&self) -> Vec<String> {
        let mut names = vec![self.switch(), self.client()];
        names.extend((1..=self.nodes).map(|i| self.node(i)));
        names
    }

    /// Creates the switch, then every host plugged into it (TESTING.md, "Hosts").
    pub fn create(&mut self) -> Result<()> {
        let sw = self.switch();
        self.add_namespace(&sw)?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let hosts: Vec<(String, u32)> = (1..=self.nodes)
            .map(|i| (self.node(i), i))
            .chain([(self.client(), CLIENT_HOST)])
            .collect();
        for (ns, host) in hosts {
            self.add_namespace(&ns)?;
            let port = format!("p{host}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])?;
            let addr = format!("{}/24", host_ip(host));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
        }
        Ok(())
    }

    fn add_namespace(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Applies an nft script in the switch namespace (one transaction).
    pub fn nft(&self, script: &str) -> Result<()> {
        run_with_input(
            Command::new("ip").args(["netns", "exec", &self.switch(), "nft", "-f", "-"]),
            script,
        )
        .map(drop)
    }

    /// `nft -j list table bridge <table>` in the switch namespace.
    pub fn nft_list_json(&self, table: &str) -> Result<String> {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.switch(),
            "nft",
            "-j",
            "list",
            "table",
            "bridge",
            table,
        ]))
    }

    /// Kills whatever still runs in the run's namespaces (all of it started by this run) and
    /// deletes them. Returns what went wrong, if anything.
    pub fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for ns in self.created.iter().rev() {
            if let Err(e) = kill_namespace_processes(ns) {
                problems.push(format!("{e:#}"));
            }
        }
        while let Some(ns) = self.created.pop() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                problems.push(format!("{e:#}"));
            }
        }
        problems
    }
}

/// Process ids running inside namespace `ns`.
pub fn namespace_pids(ns: &str) -> Result<Vec<u32>> {
    let out = ip(&["netns", "pids", ns])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

fn kill_namespace_processes(ns: &str) -> Result<()> {
    for attempt in 0..50 {
        let pids = namespace_pids(ns)?;
        if pids.is_empty() {
            return Ok(());
        }
        if attempt == 0 || attempt % 10 == 0 {
            for pid in &pids {
                // A paused process dies of SIGKILL too.
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!(
        "processes {:?} survive in namespace {ns}",
        namespace_pids(ns)?
    )
}

/// Every network namespace name (`ip netns list`).
pub fn namespaces() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Whether `program` can be run (found on `PATH`).
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
