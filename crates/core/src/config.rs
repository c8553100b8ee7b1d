//! Keyspace configuration and its validation.
//!
//! A keyspace names its replication model and that model's settings. `validate` rejects every
//! impossible combination with an error naming the setting, so that a mistyped `CREATE` fails at
//! the door instead of producing a keyspace that can never reach quorum.

use crate::limits::KEYSPACE_NAME_BYTES_MAX;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a write becomes authoritative (docs/architecture.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Model {
    /// One Raft-elected primary orders every write.
    PrimaryBackup,
    /// Each region's leader accepts writes; regions reconcile asynchronously.
    MultiLeader,
    /// Any W of a key's N replicas (Dynamo).
    Leaderless,
}

impl Model {
    pub const ALL: [Model; 3] = [Model::PrimaryBackup, Model::MultiLeader, Model::Leaderless];

    pub fn as_str(self) -> &'static str {
        match self {
            Model::PrimaryBackup => "primary-backup",
            Model::MultiLeader => "multi-leader",
            Model::Leaderless => "leaderless",
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Model {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Model::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ConfigError::UnknownModel(s.to_string()))
    }
}

/// How concurrent writes to one key are reconciled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergePolicy {
    /// Last writer wins on hybrid-logical-clock timestamps; the loser is counted.
    Lww,
    /// Concurrent values are kept as siblings (dotted version vectors).
    Siblings,
    /// PN-counter.
    Counter,
    /// Add-wins observed-remove set.
    Set,
    /// Map of last-writer-wins registers.
    Map,
}

impl MergePolicy {
    pub const ALL: [MergePolicy; 5] = [
        MergePolicy::Lww,
        MergePolicy::Siblings,
        MergePolicy::Counter,
        MergePolicy::Set,
        MergePolicy::Map,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MergePolicy::Lww => "lww",
            MergePolicy::Siblings => "siblings",
            MergePolicy::Counter => "counter",
            MergePolicy::Set => "set",
            MergePolicy::Map => "map",
        }
    }
}

impl fmt::Display for MergePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MergePolicy {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        MergePolicy::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ConfigError::UnknownMergePolicy(s.to_string()))
    }
}

/// Which acknowledgements count towards W in a leaderless keyspace (`QUORUM` at creation).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum QuorumMode {
    /// Only the key's N preference-list nodes count (Riak's PW = W). The default: it keeps the
    /// promise that with R + W > N a read sees every write acknowledged before it began.
    #[default]
    Strict,
    /// Suspected preference-list nodes are stood in for by the next healthy nodes on the ring,
    /// which hold the write as a hint for them and count towards W in their place (Dynamo's
    /// sloppy quorum): writes stay available with fewer than W owners reachable, at the price
    /// of that read promise until the hints are delivered.
    Sloppy,
}

impl QuorumMode {
    pub fn as_str(self) -> &'static str {
        match self {
            QuorumMode::Strict => "strict",
            QuorumMode::Sloppy => "sloppy",
        }
    }
}

impl FromStr for QuorumMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "strict" => Ok(QuorumMode::Strict),
            "sloppy" => Ok(QuorumMode::Sloppy),
            _ => Err(ConfigError::Invalid {
                setting: "QUORUM",
                reason: format!("{s:?} is not strict or sloppy"),
            }),
        }
    }
}

/// How a primary-backup keyspace serves reads by default (a request may ask for another).
///
/// | policy | served by | guarantee |
/// |---|---|---|
/// | `linearizable` | the leader, after a ReadIndex round | sees every write acknowledged before it |
/// | `lease` | the leader, under its lease (no round) | the same, assuming clocks drift less than the lease's margin |
/// | `bounded` | any voter that caught up with the leader within `max_lag_ms` (else the leader) | misses at most the writes of the last `max_lag_ms` (plus network delay) |
/// | `session` | any voter that has applied the client's last write (else the leader) | read-your-writes for a client presenting its session token; linearizable without one |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadPolicy {
    #[default]
    Linearizable,
    Lease,
    Bounded {
        max_lag_ms: u64,
    },
    Session,
}

impl ReadPolicy {
    /// `linearizable`, `lease`, `bounded:<ms>` or `session` (any case).
    pub fn parse(text: &str) -> Result<ReadPolicy, ConfigError> {
        let lower = text.to_ascii_lowercase();
        match lower.as_str() {
            "linearizable" => Ok(ReadPolicy::Linearizable),
            "lease" => Ok(ReadPolicy::Lease),
            "session" => Ok(ReadPolicy::Session),
            other => other
                .strip_prefix("bounded:")
                .and_then(|ms| ms.parse::<u64>().ok())
                .filter(|ms| (1..=3_600_000).contains(ms))
                .map(|max_lag_ms| ReadPolicy::Bounded { max_lag_ms })
                .ok_or_else(|| ConfigError::Invalid {
                    setting: "READ",
                    reason: format!(
                        "{text:?} is not linearizable, lease, session or bounded:<ms> (1 to 3600000)"
                    ),
                }),
        }
    }
}

impl fmt::Display for ReadPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadPolicy::Linearizable => f.write_str("linearizable"),
            ReadPolicy::Lease => f.write_str("lease"),
            ReadPolicy::Bounded { max_lag_ms } => write!(f, "bounded:{max_lag_ms}"),
            ReadPolicy::Session => f.write_str("session"),
        }
    }
}

/// The settings a user may give when creating a keyspace; `None` takes the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceSettings {
    pub n: Option<u8>,
    pub r: Option<u8>,
    pub w: Option<u8>,
    pub merge: Option<MergePolicy>,
    /// Primary-backup only.
    pub read: Option<ReadPolicy>,
    /// Leaderless only.
    pub quorum: Option<QuorumMode>,
    /// Primary-backup only: the region the group's voters and leader are placed in.
    pub home: Option<String>,
}

/// A keyspace's definition, as stored in the catalog and replicated to every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyspaceConfig {
    pub name: String,
    pub model: Model,
    /// Replicas per key (leaderless) or members of the replication group (primary-backup).
    pub n: u8,
    /// Replies a read waits for (leaderless only).
    pub r: u8,
    /// Acknowledgements a write waits for (leaderless only).
    pub w: u8,
    pub merge: MergePolicy,
    /// How reads are served by default (primary-backup only).
    pub read: ReadPolicy,
    /// Whether fallbacks holding hints count towards W (leaderless only).
    pub quorum: QuorumMode,
    /// Primary-backup only: the region whose members hold the group's voters first (as many
    /// as it has, up to N) and its preferred leader. `None`: voters spread over the cluster by
    /// the keyspace's name. With a majority of voters in the home region a write commits there:
    /// clients in other regions pay one round trip to it, not two, and the keyspace is down
    /// while that region is cut off (docs/primary-backup.md, "Placement").
    pub home: Option<String>,
}

impl KeyspaceConfig {
    /// The keyspace that owns keys with no `name:` prefix naming an existing keyspace.
    pub const DEFAULT_NAME: &'static str = "default";

    /// Leaderless, N=3, R=2, W=2, last-writer-wins: the default keyspace.
    pub fn leaderless(name: &str) -> Self {
        KeyspaceConfig {
            name: name.to_string(),
            model: Model::Leaderless,
            n: 3,
            r: 2,
            w: 2,
            merge: MergePolicy::Lww,
            read: ReadPolicy::Linearizable,
            quorum: QuorumMode::Strict,
            home: None,
        }
    }

    /// Defaults for `model` where the user gave no settings; `nodes` caps N on small clusters.
    pub fn with_defaults(name: &str, model: Model, nodes: usize) -> Self {
        KeyspaceConfig::from_settings(name, model, KeyspaceSettings::default(), nodes)
    }

    /// The keyspace a user asked for: every setting left out takes its default. N defaults to 3
    /// (capped by `nodes`), R and W to a majority of N, MERGE to `lww`. Not validated: call
    /// [`KeyspaceConfig::validate`].
    pub fn from_settings(
        name: &str,
        model: Model,
        settings: KeyspaceSettings,
        nodes: usize,
    ) -> Self {
        let n = settings.n.unwrap_or(3.min(nodes.max(1)) as u8);
        let majority = n / 2 + 1;
        KeyspaceConfig {
            name: name.to_string(),
            model,
            n,
            r: settings.r.unwrap_or(majority),
            w: settings.w.unwrap_or(majority),
            merge: settings.merge.unwrap_or(MergePolicy::Lww),
            read: settings.read.unwrap_or_default(),
            quorum: settings.quorum.unwrap_or_default(),
            home: settings.home,
        }
    }

    /// Checks the settings against a cluster of `nodes` nodes.
    pub fn validate(&self, nodes: usize) -> Result<(), ConfigError> {
        validate_name(&self.name)?;
        if self.n == 0 {
            return Err(ConfigError::Invalid {
                setting: "N",
                reason: "must be at least 1".into(),
            });
        }
        if usize::from(self.n) > nodes {
            return Err(ConfigError::Invalid {
                setting: "N",
                reason: format!("N={} exceeds the {} node(s) in the cluster", self.n, nodes),
            });
        }
        if self.model == Model::Leaderless {
            for (setting, v) in [("R", self.r), ("W", self.w)] {
                if v == 0 {
                    return Err(ConfigError::Invalid {
                        setting,
                        reason: "must be at least 1".into(),
                    });
                }
                if v > self.n {
                    return Err(ConfigError::Invalid {
                        setting,
                        reason: format!("{setting}={v} exceeds N={}", self.n),
                    });
                }
            }
        }
        if self.model != Model::Leaderless && self.quorum != QuorumMode::Strict {
            return Err(ConfigError::Invalid {
                setting: "QUORUM",
                reason: "sloppy quorums apply to leaderless keyspaces only".into(),
            });
        }
        if self.model != Model::PrimaryBackup && self.read != ReadPolicy::Linearizable {
            return Err(ConfigError::Invalid {
                setting: "READ",
                reason: "read policies apply to primary-backup keyspaces only".into(),
            });
        }
        if let Some(home) = &self.home {
            if self.model != Model::PrimaryBackup {
                return Err(ConfigError::Invalid {
                    setting: "HOME",
                    reason: "a home region places a primary-backup group; other models keep \
                             copies in every region"
                        .into(),
                });
            }
            if !is_region_name(home) {
                return Err(ConfigError::Invalid {
                    setting: "HOME",
                    reason: format!(
                        "{home:?} is not a region name (1 to {REGION_NAME_BYTES_MAX} letters, digits, '_' or '-')"
                    ),
                });
            }
        }
        if self.model == Model::PrimaryBackup && self.merge != MergePolicy::Lww {
            return Err(ConfigError::Invalid {
                setting: "MERGE",
                reason: "primary-backup keyspaces order every write and never merge; omit MERGE"
                    .into(),
            });
        }
        Ok(())
    }

    /// Whether reads and writes at the configured quorums always intersect (R + W > N).
    pub fn quorums_overlap(&self) -> bool {
        u16::from(self.r) + u16::from(self.w) > u16::from(self.n)
    }
}

/// The longest region name: regions name INFO fields and metric labels.
pub const REGION_NAME_BYTES_MAX: usize = 32;

/// Region names: 1 to [`REGION_NAME_BYTES_MAX`] bytes of `[A-Za-z0-9_-]`.
pub fn is_region_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= REGION_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Keyspace names: 1 to 64 bytes of `[A-Za-z0-9_-]`, so that `name:key` routing is unambiguous.
pub fn validate_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= KEYSPACE_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            setting: "name",
            reason: format!(
                "{name:?} must be 1 to {KEYSPACE_NAME_BYTES_MAX} characters of letters, digits, '_' or '-'"
            ),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("unknown model {0:?} (expected primary-backup, multi-leader or leaderless)")]
    UnknownModel(String),
    #[error("unknown merge policy {0:?} (expected lww, siblings, counter, set or map)")]
    UnknownMergePolicy(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks(n: u8, r: u8, w: u8) -> KeyspaceConfig {
        KeyspaceConfig {
            n,
            r,
            w,
            ..KeyspaceConfig::leaderless("prefs")
        }
    }

    #[test]
    fn read_policies_and_quorum_modes_parse_and_belong_to_their_model() {
        for text in ["linearizable", "LEASE", "session", "bounded:250"] {
            let policy = ReadPolicy::parse(text).unwrap();
            assert_eq!(ReadPolicy::parse(&policy.to_string()).unwrap(), policy);
        }
        assert_eq!(
            ReadPolicy::parse("bounded:250").unwrap(),
            ReadPolicy::Bounded { max_lag_ms: 250 }
        );
        for bad in ["bounded", "bounded:0", "bounded:x", "stale", ""] {
            assert!(ReadPolicy::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!("Sloppy".parse::<QuorumMode>().unwrap(), QuorumMode::Sloppy);
        assert!("loose".parse::<QuorumMode>().is_err());
        let settings = |read, quorum| KeyspaceSettings {
            read,
            quorum,
            ..KeyspaceSettings::default()
        };
        let lease = Some(ReadPolicy::Lease);
        let sloppy = Some(QuorumMode::Sloppy);
        let ok = |model, s| KeyspaceConfig::from_settings("k", model, s, 3).validate(3);
        assert!(ok(Model::PrimaryBackup, settings(lease, None)).is_ok());
        assert!(ok(Model::Leaderless, settings(None, sloppy)).is_ok());
        for (model, s) in [
            (Model::Leaderless, settings(lease, None)),
            (Model::MultiLeader, settings(lease, None)),
            (Model::PrimaryBackup, settings(None, sloppy)),
            (Model::MultiLeader, settings(None, sloppy)),
        ] {
            assert!(ok(model, s.clone()).is_err(), "{model:?} {s:?}");
        }
    }

    #[test]
    fn default_keyspace_is_leaderless_n3_r2_w2() {
        let d = KeyspaceConfig::leaderless(KeyspaceConfig::DEFAULT_NAME);
        assert_eq!((d.model, d.n, d.r, d.w), (Model::Leaderless, 3, 2, 2));
        assert!(d.quorums_overlap());
        d.validate(3).unwrap();
    }

    #[test]
    fn settings_left_out_take_defaults_from_n() {
        let given = KeyspaceSettings {
            n: Some(5),
            w: Some(4),
            ..KeyspaceSettings::default()
        };
        let c = KeyspaceConfig::from_settings("x", Model::Leaderless, given, 7);
        assert_eq!((c.n, c.r, c.w, c.merge), (5, 3, 4, MergePolicy::Lww));
        let small = KeyspaceConfig::with_defaults("x", Model::Leaderless, 2);
        assert_eq!((small.n, small.r, small.w), (2, 2, 2));
    }

    #[test]
    fn rejects_w_greater_than_n_naming_w() {
        let e = ks(3, 2, 4).validate(5).unwrap_err();
        assert_eq!(e.to_string(), "invalid W: W=4 exceeds N=3");
    }

    #[test]
    fn rejects_r_greater_than_n_naming_r() {
        let e = ks(3, 4, 2).validate(5).unwrap_err();
        assert!(e.to_string().starts_with("invalid R:"), "{e}");
    }

    #[test]
    fn rejects_n_greater_than_nodes_naming_n() {
        let e = ks(5, 3, 3).validate(3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid N: N=5 exceeds the 3 node(s) in the cluster"
        );
    }

    #[test]
    fn rejects_zero_quorums_and_bad_names() {
        assert!(ks(3, 0, 2).validate(3).is_err());
        assert!(ks(3, 2, 0).validate(3).is_err());
        assert!(ks(0, 0, 0).validate(3).is_err());
        for bad in ["", "a:b", "with space", &"x".repeat(65)] {
            let mut c = ks(3, 2, 2);
            c.name = bad.to_string();
            assert!(c.validate(3).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parses_models_and_policies_case_insensitively_and_names_bad_ones() {
        assert_eq!(
            "Primary-Backup".parse::<Model>().unwrap(),
            Model::PrimaryBackup
        );
        assert_eq!("SET".parse::<MergePolicy>().unwrap(), MergePolicy::Set);
        let e = "paxos".parse::<Model>().unwrap_err();
        assert!(e.to_string().contains("paxos"));
    }
}
