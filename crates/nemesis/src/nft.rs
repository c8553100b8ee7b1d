//! nftables scripts for the network faults, applied at the bridge in the switch namespace.
//!
//! Every fault lives in its own table of the `bridge` family, hooked on `forward` (frames crossing
//! the bridge between two hosts' ports). A script first creates and deletes the table, then
//! creates it afresh: `nft -f` runs a script as one transaction, so a fault is applied (or
//! replaced) atomically, and healing (creating and deleting the table) works whether or not the
//! fault is in place. Only traffic between node addresses is touched: the client's own traffic
//! to the nodes always passes, as in Jepsen, where clients talk to their node across any
//! partition of the cluster.
//!
//! Rules count what they drop, so the harness can report that a fault really bit.

use crate::schedule::Link;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The address of node `id` (and of the client host, [`CLIENT_HOST`]).
pub fn host_ip(id: u32) -> Ipv4Addr {
    assert!((1..=254).contains(&id), "host {id} outside 10.99.0.1-254");
    Ipv4Addr::new(10, 99, 0, id as u8)
}

/// The host number of the client namespace (`10.99.0.100`); nodes are `1..=`[`NODES_MAX`].
pub const CLIENT_HOST: u32 = 100;

/// Most nodes a run may have (their addresses stay below the client's).
pub const NODES_MAX: u32 = 99;

fn reset(out: &mut String, table: &str) {
    let _ = writeln!(out, "table bridge {table} {{}}");
    let _ = writeln!(out, "delete table bridge {table}");
}

/// A script that heals whatever `table` holds (and succeeds if there is nothing to heal).
pub fn heal_script(table: &str) -> String {
    let mut out = String::new();
    reset(&mut out, table);
    out
}

/// A script that drops every packet of each directed link in `blocked`.
pub fn partition_script(table: &str, blocked: &BTreeSet<Link>) -> String {
    let mut out = String::new();
    reset(&mut out, table);
    let _ = writeln!(out, "table bridge {table} {{");
    let _ = writeln!(out, "\tchain cut {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook forward priority 0; policy accept;"
    );
    for &(from, to) in blocked {
        let _ = writeln!(
            out,
            "\t\tip saddr {} ip daddr {} counter drop",
            host_ip(from),
            host_ip(to)
        );
    }
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "}}");
    out
}

/// A script that drops `percent`% of the packets from any node to any other node, at random.
pub fn loss_script(table: &str, nodes: &[u32], percent: u8) -> String {
    assert!(percent <= 100, "a percentage");
    let set: Vec<String> = nodes.iter().map(|&n| host_ip(n).to_string()).collect();
    let set = set.join(", ");
    let mut out = String::new();
    reset(&mut out, table);
    let _ = writeln!(out, "table bridge {table} {{");
    let _ = writeln!(out, "\tchain lose {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook forward priority 0; policy accept;"
    );
    let _ = writeln!(
        out,
        "\t\tip saddr {{ {set} }} ip daddr {{ {set} }} numgen random mod 100 < {percent} counter drop"
    );
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "}}");
    out
}

/// The packets counted by every `counter` in the output of `nft -j list table ...`.
pub fn dropped_packets(json: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let mut total = 0;
    for item in value.get("nftables")?.as_array()? {
        let Some(exprs) = item
            .get("rule")
            .and_then(|r| r.get("expr"))
            .and_then(|e| e.as_array())
        else {
            continue;
        };
        for e in exprs {
            if let Some(p) = e
                .get("counter")
                .and_then(|c| c.get("packets"))
                .and_then(|p| p.as_u64())
            {
                total += p;
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Fault, PartitionKind, partition};
    use triarch_core::DetRng;

    fn script_for(kind: PartitionKind, seed: u64) -> (String, String) {
        match partition(&mut DetRng::seed_from_u64(seed), kind, 5) {
            Fault::Partition {
                blocked,
                description,
                ..
            } => (partition_script("tn1part", &blocked), description),
            other => panic!("{other:?}"),
        }
    }

    fn drop_lines(script: &str) -> Vec<&str> {
        script
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with("drop"))
            .collect()
    }

    const HEADER: &str = "table bridge tn1part {}\n\
                          delete table bridge tn1part\n\
                          table bridge tn1part {\n\
                          \tchain cut {\n\
                          \t\ttype filter hook forward priority 0; policy accept;\n";

    #[test]
    fn isolate_one_is_the_exact_expected_script() {
        let blocked: BTreeSet<Link> = [(1, 2), (1, 3), (2, 1), (3, 1)].into();
        let expected = format!(
            "{HEADER}\
             \t\tip saddr 10.99.0.1 ip daddr 10.99.0.2 counter drop\n\
             \t\tip saddr 10.99.0.1 ip daddr 10.99.0.3 counter drop\n\
             \t\tip saddr 10.99.0.2 ip daddr 10.99.0.1 counter drop\n\
             \t\tip saddr 10.99.0.3 ip daddr 10.99.0.1 counter drop\n\
             \t}}\n}}\n"
        );
        assert_eq!(partition_script("tn1part", &blocked), expected);
    }

    #[test]
    fn each_partition_kind_has_one_rule_per_blocked_link_and_only_node_addresses() {
        let expected_rules = [
            (PartitionKind::RandomHalves, Some(12)),
            (PartitionKind::IsolateOne, Some(8)),
            (PartitionKind::MajoritiesRing, Some(10)),
            (PartitionKind::Bridge, Some(8)),
            (PartitionKind::OneWay, None),
        ];
        for (kind, rules) in expected_rules {
            for seed in 0..10 {
                let (script, description) = script_for(kind, seed);
                assert!(script.starts_with(HEADER), "{kind:?}: {script}");
                assert!(script.ends_with("\t}\n}\n"));
                let lines = drop_lines(&script);
                if let Some(rules) = rules {
                    assert_eq!(lines.len(), rules, "{kind:?} {description}: {script}");
                }
                assert!(!lines.is_empty());
                for l in lines {
                    let words: Vec<&str> = l.split(' ').collect();
                    assert_eq!(words[0..2], ["ip", "saddr"]);
                    assert_eq!(words[3..5], ["ip", "daddr"]);
                    assert_eq!(words[6..], ["counter", "drop"]);
                    for addr in [words[2], words[5]] {
                        let ip: Ipv4Addr = addr.parse().unwrap();
                        let host = ip.octets()[3];
                        assert!(
                            addr.starts_with("10.99.0.") && (1..=5).contains(&host),
                            "{l}"
                        );
                    }
                    assert_ne!(words[2], words[5]);
                }
            }
        }
    }

    #[test]
    fn one_way_cannot_send_blocks_only_outgoing_links() {
        // Find a seed drawing the "cannot send" variant and check its direction.
        let (script, description) = (0..100)
            .map(|seed| script_for(PartitionKind::OneWay, seed))
            .find(|(_, d)| d.ends_with("cannot send"))
            .expect("some seed draws it");
        let node: u32 = description[1..description.find(' ').unwrap()]
            .parse()
            .unwrap();
        let lines = drop_lines(&script);
        assert_eq!(lines.len(), 4);
        let from = format!("ip saddr {} ", host_ip(node));
        assert!(lines.iter().all(|l| l.starts_with(&from)), "{script}");
    }

    #[test]
    fn loss_and_heal_scripts() {
        assert_eq!(
            loss_script("tn1loss", &[1, 2, 3], 30),
            "table bridge tn1loss {}\n\
             delete table bridge tn1loss\n\
             table bridge tn1loss {\n\
             \tchain lose {\n\
             \t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tip saddr { 10.99.0.1, 10.99.0.2, 10.99.0.3 } ip daddr { 10.99.0.1, 10.99.0.2, \
             10.99.0.3 } numgen random mod 100 < 30 counter drop\n\
             \t}\n\
             }\n"
        );
        assert_eq!(
            heal_script("tn1part"),
            "table bridge tn1part {}\ndelete table bridge tn1part\n"
        );
    }

    #[test]
    fn counts_dropped_packets_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "bridge", "name": "t", "handle": 2}},
            {"rule": {"expr": [{"match": {}}, {"counter": {"packets": 7, "bytes": 420}}, {"drop": null}]}},
            {"rule": {"expr": [{"counter": {"packets": 5, "bytes": 300}}, {"drop": null}]}}]}"#;
        assert_eq!(dropped_packets(json), Some(12));
        assert_eq!(dropped_packets("not json"), None);
    }
}
