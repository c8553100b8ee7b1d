//! The node's configuration file (TOML).
//!
//! ```toml
//! node_id = 1
//! region = "r1"
//! data_dir = "data/n1"
//! peer_addr = "127.0.0.1:7101"     # where peers reach this node
//! resp_addr = "127.0.0.1:6379"     # redis-cli, redis-py, redis-benchmark
//! http_addr = "127.0.0.1:8080"     # curl, Prometheus (/metrics)
//!
//! [[members]]                      # every node of the cluster, this one included
//! id = 1
//! region = "r1"
//! peer_addr = "127.0.0.1:7101"
//!
//! [[keyspaces]]                    # created on first start if absent
//! name = "prefs"
//! model = "leaderless"
//! n = 3
//! r = 2
//! w = 2
//! merge = "lww"
//!
//! [[keyspaces]]                    # multi-leader: one Raft group of n voters per region
//! name = "cart"
//! model = "multi-leader"
//! n = 3
//! merge = "set"
//!
//! [[keyspaces]]                    # primary-backup: one Raft group of n voters
//! name = "balance"
//! model = "primary-backup"
//! read = "bounded:200"             # linearizable (default) | lease | bounded:<ms> | session
//! ```
//!
//! A leaderless keyspace may say `quorum = "sloppy"` (default `"strict"`).
//!
//! A node that joins a running cluster lists the cluster's founding `members` (not itself) and
//! says `joining = true`; it waits outside the ring until `TRIARCH.CLUSTER JOIN <id> <region>
//! <peer_addr>`, sent to any member, is decided (see the README, "Membership").
//!
//! Region names are 1 to 32 letters, digits, `_` or `-`; `region` must be this node's region in
//! `members`. The region groups of multi-leader keyspaces use the `[primary]` Raft timings.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use triarch_core::limits::{VALUE_BYTES_LIMIT, VALUE_BYTES_MAX_DEFAULT};
use triarch_core::{
    KeyspaceConfig, KeyspaceSettings, MergePolicy, Model, NodeId, QuorumMode, ReadPolicy,
};
use triarch_node::{Member, NodeConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub node_id: u32,
    #[serde(default = "default_region")]
    pub region: String,
    pub data_dir: PathBuf,
    pub peer_addr: SocketAddr,
    pub resp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub members: Vec<MemberConfig>,
    /// This node is not among `members` (the founders): it joins the running cluster.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joining: bool,
    #[serde(default)]
    pub keyspaces: Vec<KeyspaceFileConfig>,
    /// How long a coordinator waits for its quorum.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest value accepted, in bytes (at most 512 MiB).
    #[serde(default = "default_value_bytes_max")]
    pub value_bytes_max: usize,
    /// How far ahead of this node's clock a peer's timestamp may run before it is refused.
    #[serde(default = "default_clock_forward_bound_ms")]
    pub clock_forward_bound_ms: u64,
    /// Most client connections served at once (RESP and HTTP each).
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// PLANTED BUG for checker tests only: acknowledge writes before W replicas hold them.
    #[serde(default)]
    pub bug_ack_before_quorum: bool,
    /// PLANTED BUG for the fault suite: primary-backup voters serve reads from their own state,
    /// without confirming leadership (`PrimaryConfig::bug_local_reads`). Never set it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bug_local_reads: bool,
    /// Timing of primary-backup keyspaces' Raft groups (`[primary]`; every setting optional).
    #[serde(default, skip_serializing_if = "PrimaryFileConfig::is_default")]
    pub primary: PrimaryFileConfig,
}

/// `[primary]`: the Raft timing of every primary-backup keyspace on this node. Every node of a
/// cluster should use the same values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrimaryFileConfig {
    /// A follower that hears nothing from a leader for a random time in [min, max] starts an
    /// election (after a PreVote round).
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    pub heartbeat_interval_ms: u64,
    /// How long a request may wait for its outcome before the client gets `TRYAGAIN`.
    pub request_timeout_ms: u64,
    /// A group keeps this many applied entries in its log for lagging followers and compacts
    /// the older ones a tenth of this at a time (no state is copied: a snapshot is made only
    /// when a follower needs one).
    pub compact_every_entries: u64,
    /// Leaders serve reads under a lease (no round of messages) rather than by ReadIndex;
    /// assumes clocks drift apart by less than 5% (docs/primary-backup.md).
    pub lease_reads: bool,
}

impl Default for PrimaryFileConfig {
    fn default() -> Self {
        // The engine's defaults (`PrimaryConfig::default()`), through the node's configuration.
        let d = NodeConfig::new(NodeId(1), Vec::new()).primary;
        let ms = |t: Duration| t.as_millis() as u64;
        PrimaryFileConfig {
            election_timeout_ms_min: ms(d.election_timeout_min),
            election_timeout_ms_max: ms(d.election_timeout_max),
            heartbeat_interval_ms: ms(d.heartbeat_interval),
            request_timeout_ms: ms(d.request_timeout),
            compact_every_entries: d.compact_every,
            lease_reads: d.lease_reads,
        }
    }
}

impl PrimaryFileConfig {
    fn is_default(&self) -> bool {
        *self == PrimaryFileConfig::default()
    }

    fn validate(&self) -> Result<(), String> {
        let p = self;
        if p.heartbeat_interval_ms == 0 || p.request_timeout_ms == 0 || p.compact_every_entries == 0
        {
            return Err("[primary] timings and compact_every_entries must be at least 1".into());
        }
        if p.election_timeout_ms_min <= p.heartbeat_interval_ms
            || p.election_timeout_ms_max < p.election_timeout_ms_min
        {
            return Err(format!(
                "[primary] needs heartbeat_interval_ms ({}) < election_timeout_ms_min ({}) <= election_timeout_ms_max ({})",
                p.heartbeat_interval_ms, p.election_timeout_ms_min, p.election_timeout_ms_max
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u32,
    #[serde(default = "default_region")]
    pub region: String,
    pub peer_addr: SocketAddr,
}

/// A keyspace in the file: settings left out take the model's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceFileConfig {
    pub name: String,
    pub model: Model,
    // Spelled out rather than a flattened `KeyspaceSettings`: serde cannot deny unknown fields
    // through `flatten`, and a mistyped setting must stop the node.
    pub n: Option<u8>,
    pub r: Option<u8>,
    pub w: Option<u8>,
    pub merge: Option<MergePolicy>,
    /// Primary-backup only: how reads are served by default (`"linearizable"`, `"lease"`,
    /// `"bounded:<ms>"`, `"session"`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "read_text")]
    pub read: Option<ReadPolicy>,
    /// Leaderless only: `"strict"` or `"sloppy"`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "quorum_text")]
    pub quorum: Option<QuorumMode>,
    /// Primary-backup only: the region that holds the group's voters and leader (`"r1"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
}

/// `read = "bounded:200"`: the text `ReadPolicy::parse` reads and `Display` writes (the same as
/// RESP's `READ`), refused with the core's error text.
mod read_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use triarch_core::ReadPolicy;

    pub fn serialize<S: Serializer>(v: &Option<ReadPolicy>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(p) => s.collect_str(p),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ReadPolicy>, D::Error> {
        let text = String::deserialize(d)?;
        ReadPolicy::parse(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// `quorum = "sloppy"`: the text RESP's `QUORUM` takes.
mod quorum_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use triarch_core::QuorumMode;

    pub fn serialize<S: Serializer>(v: &Option<QuorumMode>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(q) => s.serialize_str(q.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<QuorumMode>, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

fn default_region() -> String {
    "r1".into()
}
fn default_request_timeout_ms() -> u64 {
    1_000
}
fn default_value_bytes_max() -> usize {
    VALUE_BYTES_MAX_DEFAULT
}
fn default_clock_forward_bound_ms() -> u64 {
    60_000
}
fn default_max_clients() -> usize {
    10_000
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    pub fn load(path: &std::path::Path) -> Result<ServerConfig, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: ServerConfig = toml::from_str(&text).map_err(|e| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a ServerConfig always serialises")
    }

    /// Checks everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigFileError> {
        let invalid = |m: String| Err(ConfigFileError::Invalid(m));
        let listed = self.members.iter().any(|m| m.id == self.node_id);
        if !listed && !self.joining {
            return invalid(format!(
                "node_id {} is not listed in members (a node joining a running cluster says joining = true)",
                self.node_id
            ));
        }
        if listed && self.joining {
            return invalid(format!(
                "node_id {} is listed in members: a founding member does not join",
                self.node_id
            ));
        }
        let mut ids: Vec<u32> = self.members.iter().map(|m| m.id).collect();
        ids.sort();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return invalid("members lists the same id twice".into());
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > VALUE_BYTES_LIMIT {
            return invalid(format!(
                "value_bytes_max must be between 1 and {VALUE_BYTES_LIMIT}"
            ));
        }
        self.primary.validate().map_err(ConfigFileError::Invalid)?;
        if self.request_timeout_ms == 0 {
            return invalid("request_timeout_ms must be at least 1".into());
        }
        for region in std::iter::once(&self.region).chain(self.members.iter().map(|m| &m.region)) {
            if !triarch_core::config::is_region_name(region) {
                return invalid(format!(
                    "region {region:?} must be 1 to 32 characters of letters, digits, '_' or '-'"
                ));
            }
        }
        if let Some(me) = self.members.iter().find(|m| m.id == self.node_id)
            && me.region != self.region
        {
            return invalid(format!(
                "region is {:?} but members lists node {} in region {:?}",
                self.region, self.node_id, me.region
            ));
        }
        for k in &self.keyspaces {
            let ks = self.keyspace_config(k);
            ks.validate(self.members.len())
                .map_err(|e| ConfigFileError::Invalid(format!("keyspace {}: {e}", k.name)))?;
            if ks.model == Model::MultiLeader && (k.r.is_some() || k.w.is_some()) {
                return invalid(format!(
                    "keyspace {}: r and w apply only to leaderless keyspaces (a multi-leader write is acknowledged by a majority of its region's n voters)",
                    k.name
                ));
            }
        }
        Ok(())
    }

    fn keyspace_config(&self, k: &KeyspaceFileConfig) -> KeyspaceConfig {
        let settings = KeyspaceSettings {
            n: k.n,
            r: k.r,
            w: k.w,
            merge: k.merge,
            read: k.read,
            quorum: k.quorum,
            home: k.home.clone(),
        };
        KeyspaceConfig::from_settings(&k.name, k.model, settings, self.members.len())
    }

    /// The sans-IO node's configuration.
    pub fn node_config(&self) -> NodeConfig {
        let members = self
            .members
            .iter()
            .map(|m| Member {
                id: NodeId(m.id),
                region: m.region.clone(),
            })
            .collect();
        let mut config = NodeConfig::new(NodeId(self.node_id), members);
        config.joining = self.joining;
        config.region = Some(self.region.clone());
        config.keyspaces = self
            .keyspaces
            .iter()
            .map(|k| self.keyspace_config(k))
            .collect();
        config.leaderless.request_timeout = Duration::from_millis(self.request_timeout_ms);
        config.leaderless.bug_ack_before_quorum = self.bug_ack_before_quorum;
        config.primary.bug_local_reads = self.bug_local_reads;
        let p = &self.primary;
        config.primary.election_timeout_min = Duration::from_millis(p.election_timeout_ms_min);
        config.primary.election_timeout_max = Duration::from_millis(p.election_timeout_ms_max);
        config.primary.heartbeat_interval = Duration::from_millis(p.heartbeat_interval_ms);
        config.primary.request_timeout = Duration::from_millis(p.request_timeout_ms);
        config.primary.compact_every = p.compact_every_entries;
        config.primary.lease_reads = p.lease_reads;
        // Region groups of multi-leader keyspaces run on the same Raft timings (not the planted
        // bug, which is the primary-backup fault suite's alone).
        let ml = &mut config.multileader.primary;
        ml.election_timeout_min = config.primary.election_timeout_min;
        ml.election_timeout_max = config.primary.election_timeout_max;
        ml.heartbeat_interval = config.primary.heartbeat_interval;
        ml.request_timeout = config.primary.request_timeout;
        ml.compact_every = config.primary.compact_every;
        ml.lease_reads = config.primary.lease_reads;
        config.clock_forward_bound_ms = self.clock_forward_bound_ms;
        config.value_bytes_max = self.value_bytes_max;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
node_id = 1
data_dir = "d"
peer_addr = "127.0.0.1:7101"
resp_addr = "127.0.0.1:6379"
http_addr = "127.0.0.1:8080"
[[members]]
id = 1
peer_addr = "127.0.0.1:7101"
[[members]]
id = 2
peer_addr = "127.0.0.1:7102"
[[members]]
id = 3
peer_addr = "127.0.0.1:7103"
[[keyspaces]]
name = "prefs"
model = "leaderless"
w = 3
"#;

    #[test]
    fn parses_with_defaults_and_round_trips() {
        let c: ServerConfig = toml::from_str(SAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.region, "r1");
        assert_eq!(c.request_timeout_ms, 1_000);
        let ks = &c.node_config().keyspaces[0];
        assert_eq!((ks.n, ks.r, ks.w), (3, 2, 3));
        let again: ServerConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn primary_backup_and_multi_leader_keyspaces_in_the_file() {
        let pb = SAMPLE.replace(
            "name = \"prefs\"\nmodel = \"leaderless\"\nw = 3",
            "name = \"balance\"\nmodel = \"primary-backup\"",
        );
        let c: ServerConfig = toml::from_str(&pb).unwrap();
        c.validate().unwrap();
        let ks = &c.node_config().keyspaces[0];
        assert_eq!(
            (ks.name.as_str(), ks.model, ks.n),
            ("balance", Model::PrimaryBackup, 3)
        );
        let ml = pb.replace("primary-backup\"", "multi-leader\"\nmerge = \"set\"\nn = 1");
        let c: ServerConfig = toml::from_str(&ml).unwrap();
        c.validate().unwrap();
        let ks = &c.node_config().keyspaces[0];
        assert_eq!(
            (ks.model, ks.merge, ks.n),
            (Model::MultiLeader, MergePolicy::Set, 1)
        );
        let quorum = ml.replace("n = 1", "n = 1\nw = 1");
        let c: ServerConfig = toml::from_str(&quorum).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("keyspace balance: r and w apply only to leaderless"),
            "{e}"
        );
        let merged = pb.replace("primary-backup\"", "primary-backup\"\nmerge = \"counter\"");
        let c: ServerConfig = toml::from_str(&merged).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("never merge"), "{e}");
    }

    #[test]
    fn read_policies_and_quorum_modes_in_the_file() {
        let pb = SAMPLE.replace(
            "name = \"prefs\"\nmodel = \"leaderless\"\nw = 3",
            "name = \"balance\"\nmodel = \"primary-backup\"\nread = \"bounded:200\"",
        );
        let c: ServerConfig = toml::from_str(&pb).unwrap();
        c.validate().unwrap();
        let ks = &c.node_config().keyspaces[0];
        assert_eq!(ks.read, ReadPolicy::Bounded { max_lag_ms: 200 });
        let text = c.to_toml();
        assert!(text.contains("read = \"bounded:200\""), "{text}");
        assert_eq!(toml::from_str::<ServerConfig>(&text).unwrap(), c);
        let sloppy = SAMPLE.replace("w = 3", "w = 3\nquorum = \"sloppy\"");
        let c: ServerConfig = toml::from_str(&sloppy).unwrap();
        c.validate().unwrap();
        assert_eq!(c.node_config().keyspaces[0].quorum, QuorumMode::Sloppy);
        let text = c.to_toml();
        assert!(text.contains("quorum = \"sloppy\""), "{text}");
        assert_eq!(toml::from_str::<ServerConfig>(&text).unwrap(), c);
        // Left out: the defaults, and nothing written out.
        let c: ServerConfig = toml::from_str(SAMPLE).unwrap();
        let ks = &c.node_config().keyspaces[0];
        assert_eq!(
            (ks.read, ks.quorum),
            (ReadPolicy::Linearizable, QuorumMode::Strict)
        );
        let text = c.to_toml();
        assert!(
            !text.contains("\nread =") && !text.contains("\nquorum ="),
            "{text}"
        );
        // Bad values: the core's error text, naming the setting.
        let e = toml::from_str::<ServerConfig>(&pb.replace("bounded:200", "bounded:0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid READ"), "{e}");
        let e = toml::from_str::<ServerConfig>(&sloppy.replace("sloppy", "loose"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid QUORUM"), "{e}");
        // On the wrong model: refused at start, naming the keyspace and the setting.
        let c: ServerConfig =
            toml::from_str(&sloppy.replace("w = 3\n", "read = \"lease\"\n")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("keyspace prefs: invalid READ: read policies apply to primary-backup"),
            "{e}"
        );
        let c: ServerConfig =
            toml::from_str(&pb.replace("read = \"bounded:200\"", "quorum = \"sloppy\"")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("keyspace balance: invalid QUORUM"), "{e}");
    }

    #[test]
    fn primary_timings_default_to_the_engine_s_and_are_checked() {
        let c: ServerConfig = toml::from_str(SAMPLE).unwrap();
        assert_eq!(c.primary, PrimaryFileConfig::default());
        assert!(
            !c.to_toml().contains("[primary]"),
            "defaults are not written out"
        );
        let tuned = format!(
            "{SAMPLE}\n[primary]\nelection_timeout_ms_min = 300\nelection_timeout_ms_max = 600\n"
        );
        let c: ServerConfig = toml::from_str(&tuned).unwrap();
        c.validate().unwrap();
        let p = c.node_config().primary;
        assert_eq!(
            (p.election_timeout_min, p.election_timeout_max),
            (Duration::from_millis(300), Duration::from_millis(600))
        );
        let again: ServerConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again, c);
        let bad: ServerConfig = toml::from_str(&tuned.replace("600", "200")).unwrap();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("election_timeout_ms_max (200)"), "{e}");
        let e = toml::from_str::<ServerConfig>(&format!("{tuned}heartbeat_ms = 5\n")).unwrap_err();
        assert!(e.to_string().contains("heartbeat_ms"), "{e}");
    }

    #[test]
    fn regions_are_named_plainly_and_agree_with_members() {
        let regions = SAMPLE
            .replacen("id = 2\n", "id = 2\nregion = \"eu-west_2\"\n", 1)
            .replacen("id = 3\n", "id = 3\nregion = \"us\"\n", 1);
        let c: ServerConfig = toml::from_str(&regions).unwrap();
        c.validate().unwrap();
        let members = c.node_config().members;
        assert_eq!(members[1].region, "eu-west_2");
        for bad in ["eu west", "", "r\u{e9}gion", &"r".repeat(33)] {
            let text = regions.replace("\"us\"", &format!("{bad:?}"));
            let c: ServerConfig = toml::from_str(&text).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("must be 1 to 32 characters"), "{bad:?}: {e}");
        }
        let c: ServerConfig =
            toml::from_str(&format!("region = \"us\"\n{}", SAMPLE.trim_start())).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("members lists node 1 in region \"r1\""), "{e}");
    }

    #[test]
    fn multi_leader_region_groups_take_the_primary_timings() {
        let tuned = format!(
            "{SAMPLE}\n[primary]\nelection_timeout_ms_min = 300\nelection_timeout_ms_max = 600\nheartbeat_interval_ms = 50\n"
        );
        let c: ServerConfig = toml::from_str(&tuned).unwrap();
        let node = c.node_config();
        let ml = &node.multileader.primary;
        assert_eq!(
            (
                ml.election_timeout_min,
                ml.election_timeout_max,
                ml.heartbeat_interval
            ),
            (
                Duration::from_millis(300),
                Duration::from_millis(600),
                Duration::from_millis(50)
            )
        );
        assert_eq!(ml.request_timeout, node.primary.request_timeout);
    }

    #[test]
    fn rejects_impossible_settings_naming_them() {
        let bad = SAMPLE.replace("w = 3", "w = 4");
        let c: ServerConfig = toml::from_str(&bad).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("keyspace prefs") && e.contains("W=4 exceeds N=3"),
            "{e}"
        );
        let c: ServerConfig =
            toml::from_str(&SAMPLE.replace("node_id = 1", "node_id = 9")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("node_id 9"));
        let e = toml::from_str::<ServerConfig>(&SAMPLE.replace("data_dir", "dta_dir")).unwrap_err();
        assert!(e.to_string().contains("dta_dir"), "{e}");
        let e = toml::from_str::<ServerConfig>(&SAMPLE.replace("w = 3", "wq = 3")).unwrap_err();
        assert!(e.to_string().contains("wq"), "{e}");
        let e = toml::from_str::<ServerConfig>(&SAMPLE.replace("leaderless", "paxos")).unwrap_err();
        assert!(e.to_string().contains("paxos"), "{e}");
    }
}
