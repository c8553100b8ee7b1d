//! Region latency: a delay matrix between regions, applied at the bridge.
//!
//! `tc netem` is not in the build machine's kernel, and nft's bridge family has no `queue`
//! statement there, so (TESTING.md, "Faults") the switch namespace's `iptables` (its FORWARD
//! chain sees bridged frames through br_netfilter, on by default in a new namespace) sends every
//! packet from a node of one region to a node of another to an NFQUEUE, one queue number per
//! pair of regions, and a small program ([`serve`], `triarch-nemesis delay`, run inside the
//! switch namespace) holds each packet for its pair's delay and then accepts it. Packets keep
//! their order (one FIFO per queue, one delay per queue). The rules say `--queue-bypass`: should
//! the program die, packets pass undelayed rather than being dropped (and the harness, which
//! watches the program, stops the run as a harness error).
//!
//! Everything lives in the switch namespace: deleting it at teardown removes the rules, and the
//! harness kills the program (its command line names the run directory, so the leftover check
//! would find it).

use anyhow::{Context, Result, bail};
use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

/// One-way delays between regions r1..r3 (inside a region: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionLatency {
    /// r1-r2, r1-r3, r2-r3, in milliseconds, each direction.
    pub one_way_ms: [u64; 3],
}

/// The region pairs of [`RegionLatency::one_way_ms`], in order.
pub const PAIRS: [(u32, u32); 3] = [(1, 2), (1, 3), (2, 3)];

impl RegionLatency {
    /// The simulator's spread: 20 to 60 ms between regions.
    pub const DEFAULT: RegionLatency = RegionLatency {
        one_way_ms: [20, 40, 60],
    };

    /// `20,40,60` (r1-r2, r1-r3, r2-r3, ms) or `on` (the default matrix); `off` is `None`.
    pub fn parse(text: &str) -> Result<Option<RegionLatency>, String> {
        match text {
            "off" | "none" => return Ok(None),
            "on" => return Ok(Some(RegionLatency::DEFAULT)),
            _ => {}
        }
        let ms: Vec<u64> = text
            .split(',')
            .map(|p| p.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                format!(
                    "--region-latency {text:?}: on, off or three integers in ms (r1-r2,r1-r3,r2-r3)"
                )
            })?;
        match ms[..] {
            [a, b, c] if [a, b, c].iter().all(|&m| m <= 1_000) => Ok(Some(RegionLatency {
                one_way_ms: [a, b, c],
            })),
            _ => Err(format!(
                "--region-latency {text:?}: three delays of at most 1000 ms (r1-r2,r1-r3,r2-r3)"
            )),
        }
    }

    /// The one-way delay between regions `a` and `b` (1-based; 0 inside a region).
    pub fn between(&self, a: u32, b: u32) -> u64 {
        let (a, b) = (a.min(b), a.max(b));
        PAIRS
            .iter()
            .position(|&p| p == (a, b))
            .map_or(0, |i| self.one_way_ms[i])
    }

    /// `r1-r2 20 ms, r1-r3 40 ms, r2-r3 60 ms`.
    pub fn describe(&self) -> String {
        PAIRS
            .iter()
            .zip(self.one_way_ms)
            .map(|((a, b), ms)| format!("r{a}-r{b} {ms} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The program's `--queues` argument: `1:20,2:40,3:60` (queue number: delay in ms).
    pub fn queues_arg(&self) -> String {
        self.one_way_ms
            .iter()
            .enumerate()
            .map(|(i, ms)| format!("{}:{ms}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `iptables` argument lists (run in the switch namespace) that queue every packet from a
    /// node of one region to a node of another: queue `i + 1` for pair `PAIRS[i]`, both
    /// directions. `region_of(node)` is the node's region number; pairs with no node on a side
    /// or a zero delay get no rule.
    pub fn iptables_rules(
        &self,
        nodes: u32,
        region_of: impl Fn(u32) -> u32,
        ip: impl Fn(u32) -> std::net::Ipv4Addr,
    ) -> Vec<Vec<String>> {
        let members = |r: u32| -> Vec<String> {
            (1..=nodes)
                .filter(|&n| region_of(n) == r)
                .map(|n| ip(n).to_string())
                .collect()
        };
        let mut rules = Vec::new();
        for (i, &(a, b)) in PAIRS.iter().enumerate() {
            let (ma, mb) = (members(a), members(b));
            if ma.is_empty() || mb.is_empty() || self.one_way_ms[i] == 0 {
                continue;
            }
            for (from, to) in [(&ma, &mb), (&mb, &ma)] {
                rules.push(
                    [
                        "-A",
                        "FORWARD",
                        "-s",
                        &from.join(","),
                        "-d",
                        &to.join(","),
                        "-j",
                        "NFQUEUE",
                        "--queue-num",
                        &(i + 1).to_string(),
                        "--queue-bypass",
                    ]
                    .map(str::to_string)
                    .to_vec(),
                );
            }
        }
        rules
    }
}

/// Parses `1:20,2:40` into (queue, delay) pairs.
pub fn parse_queues(text: &str) -> Result<Vec<(u16, Duration)>> {
    text.split(',')
        .map(|part| {
            let (q, ms) = part
                .split_once(':')
                .with_context(|| format!("{part:?}: queue:ms"))?;
            Ok((q.parse()?, Duration::from_millis(ms.parse()?)))
        })
        .collect()
}

/// How often the program logs its counters.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long the program sleeps when nothing is due sooner (the delay's resolution).
const TICK: Duration = Duration::from_micros(500);

/// The delay program (run inside the switch namespace): binds each queue, prints `ready`, then
/// holds each packet for its queue's delay and accepts it, forever (the harness kills it).
/// Every [`REPORT_EVERY`] it writes each queue's packet count and mean holding time to stderr.
pub fn serve(queues: &[(u16, Duration)]) -> Result<()> {
    if queues.is_empty() {
        bail!("no queue to serve");
    }
    let mut q = nfq::Queue::open().context("opening a netfilter queue socket")?;
    for &(num, _) in queues {
        q.bind(num)
            .with_context(|| format!("binding queue {num}"))?;
        // Only the verdict is needed, not the packet's bytes.
        q.set_copy_range(num, 0)?;
        q.set_queue_max_len(num, 65_536)?;
        // A full queue accepts rather than drops (latency, not loss, is this fault).
        q.set_fail_open(num, true)?;
    }
    q.set_nonblocking(true);
    println!("ready");
    std::io::stdout().flush()?;
    let delay_of = |num: u16| {
        queues
            .iter()
            .position(|&(n, _)| n == num)
            .expect("only bound queues deliver")
    };
    let mut held: Vec<VecDeque<(Instant, nfq::Message)>> =
        queues.iter().map(|_| VecDeque::new()).collect();
    let mut counts = vec![(0u64, Duration::ZERO); queues.len()];
    let mut next_report = Instant::now() + REPORT_EVERY;
    let mut vanished = 0u64;
    loop {
        loop {
            match q.recv() {
                Ok(msg) => {
                    let i = delay_of(msg.get_queue_num());
                    held[i].push_back((Instant::now(), msg));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The kernel's answer to a verdict for a packet it no longer holds (it drops
                // queued packets whose device went away): nothing to do but count it.
                Err(e) if e.raw_os_error() == Some(libc_enoent()) => vanished += 1,
                Err(e) => return Err(e).context("receiving from the queue"),
            }
        }
        let now = Instant::now();
        let mut next_due = now + TICK;
        for (i, fifo) in held.iter_mut().enumerate() {
            let delay = queues[i].1;
            while let Some((arrived, _)) = fifo.front() {
                let due = *arrived + delay;
                if due > now {
                    next_due = next_due.min(due);
                    break;
                }
                let (arrived, mut msg) = fifo.pop_front().expect("front");
                msg.set_verdict(nfq::Verdict::Accept);
                q.verdict(msg).context("accepting a packet")?;
                counts[i].0 += 1;
                counts[i].1 += now - arrived;
            }
        }
        if now >= next_report {
            next_report = now + REPORT_EVERY;
            let line: Vec<String> = queues
                .iter()
                .zip(&counts)
                .map(|(&(num, delay), &(n, total))| {
                    let mean = if n == 0 {
                        0.0
                    } else {
                        total.as_secs_f64() * 1e3 / n as f64
                    };
                    format!(
                        "queue {num} ({} ms): {n} packets, mean held {mean:.1} ms",
                        delay.as_millis()
                    )
                })
                .collect();
            eprintln!(
                "{}; {vanished} verdicts on vanished packets",
                line.join("; ")
            );
        }
        std::thread::sleep(next_due.saturating_duration_since(Instant::now()).min(TICK));
    }
}

/// `ENOENT` (2 on Linux), without a dependency on `libc` for one constant.
const fn libc_enoent() -> i32 {
    2
}

/// Times `count` TCP connects to `addr` (SYN to SYN-ACK: one round trip) and returns the median,
/// in milliseconds. Run inside a node's namespace by `triarch-nemesis probe`.
pub fn probe(addr: std::net::SocketAddr, count: u32) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..count {
        let started = Instant::now();
        let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .with_context(|| format!("connecting to {addr}"))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        drop(stream);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_matrix() {
        assert_eq!(RegionLatency::parse("off"), Ok(None));
        assert_eq!(RegionLatency::parse("on"), Ok(Some(RegionLatency::DEFAULT)));
        assert_eq!(
            RegionLatency::parse("5,10,15").unwrap().unwrap().one_way_ms,
            [5, 10, 15]
        );
        assert!(RegionLatency::parse("5,10").is_err());
        assert!(RegionLatency::parse("5,10,x").is_err());
        assert!(RegionLatency::parse("5,10,5000").is_err());
        let m = RegionLatency::DEFAULT;
        assert_eq!(
            (m.between(1, 2), m.between(3, 1), m.between(2, 2)),
            (20, 40, 0)
        );
        assert_eq!(m.queues_arg(), "1:20,2:40,3:60");
        assert_eq!(
            parse_queues("1:20,2:40").unwrap(),
            vec![
                (1, Duration::from_millis(20)),
                (2, Duration::from_millis(40))
            ]
        );
    }

    #[test]
    fn queues_every_cross_region_pair_both_ways_and_nothing_inside_a_region() {
        let region = |n: u32| (n - 1) % 3 + 1;
        let ip = crate::nft::host_ip;
        let rules = RegionLatency::DEFAULT.iptables_rules(5, region, ip);
        let text: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            text,
            vec![
                "-A FORWARD -s 10.99.0.1,10.99.0.4 -d 10.99.0.2,10.99.0.5 -j NFQUEUE --queue-num 1 --queue-bypass",
                "-A FORWARD -s 10.99.0.2,10.99.0.5 -d 10.99.0.1,10.99.0.4 -j NFQUEUE --queue-num 1 --queue-bypass",
                "-A FORWARD -s 10.99.0.1,10.99.0.4 -d 10.99.0.3 -j NFQUEUE --queue-num 2 --queue-bypass",
                "-A FORWARD -s 10.99.0.3 -d 10.99.0.1,10.99.0.4 -j NFQUEUE --queue-num 2 --queue-bypass",
                "-A FORWARD -s 10.99.0.2,10.99.0.5 -d 10.99.0.3 -j NFQUEUE --queue-num 3 --queue-bypass",
                "-A FORWARD -s 10.99.0.3 -d 10.99.0.2,10.99.0.5 -j NFQUEUE --queue-num 3 --queue-bypass",
            ]
        );
        // One region: nothing to delay.
        assert!(
            RegionLatency::DEFAULT
                .iptables_rules(5, |_| 1, ip)
                .is_empty()
        );
    }
}
