//! One Triarch node as a sans-IO state machine.
//!
//! The node owns the keyspace [`catalog`], routes each client request to the replication model of
//! the keyspace its key belongs to, and multiplexes every model's messages over one peer
//! [`Message`] type. It follows the quinn-proto contract: inputs arrive through `handle_*` with the
//! time passed in, outputs leave through [`Node::poll_output`], and [`Node::poll_timeout`] says
//! when to call [`Node::handle_timeout`] next.
//!
//! ## Durability contract with the driver (persist-then-send)
//!
//! Steps stage storage writes. After a batch of steps the driver calls `storage_mut().sync()`
//! once, and only after it succeeds releases the outputs produced by that batch. Nothing the node
//! acknowledges can therefore be lost by a crash. If a sync fails the driver must not release the
//! batch's outputs and must stop the node (it cannot know which staged writes survived).
//!
//! ## Routing
//!
//! A key `ks:rest` belongs to keyspace `ks` when that keyspace exists; every other key belongs to
//! `default` (leaderless, N=3, R=2, W=2 unless configured). Keys are stored whole, prefix
//! included.

pub mod api;
pub mod catalog;

pub use api::{KeyspaceInfo, KeyspaceSpec, Reply, Request, RequestError};
use bytes::Bytes;
use catalog::{Catalog, CatalogEntry, CatalogMessage};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use triarch_core::limits::{KEY_BYTES_MAX, KEYSPACES_MAX, VALUE_BYTES_MAX_DEFAULT};
use triarch_core::{
    DetRng, Hlc, HlcTimestamp, Instant, KeyspaceConfig, MergePolicy, Model, NodeId,
};
use triarch_core::{Now, RequestId};
pub use triarch_leaderless::KeyspaceStats;
use triarch_leaderless::{Effect, Env, Leaderless, LeaderlessConfig, Outcome};
use triarch_storage::{Storage, StorageError};

/// How far above the largest timestamp issued so far the persisted clock ceiling is set. A
/// restarted node starts its clock at the ceiling, so it never reuses a timestamp even if its wall
/// clock went back; the window makes the ceiling write rare (one staged write per window).
pub const HLC_CEILING_WINDOW_MS: u64 = 10_000;
const HLC_CEILING_KEY: &[u8] = b"hlc/ceiling";

/// Version of the peer message encoding. A peer that sends another version is disconnected.
pub const WIRE_VERSION: u8 = 1;

/// Everything nodes say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Catalog(CatalogMessage),
    Leaderless(triarch_leaderless::message::Message),
}

impl Message {
    /// Whether the message may leave before the writes staged in the same batch are durable.
    ///
    /// Persist-then-send protects what a message *vouches for*: an acknowledgement, a read
    /// result, a catalog entry. A coordinator's request to replicas (write this record, send me
    /// yours, repair this key) vouches for nothing about the sender's disk: the coordinator
    /// acknowledges its client only after W replies and after its own batch's sync, so sending
    /// these early takes the coordinator's fsync off the write's critical path without letting
    /// anything unsynced be acknowledged.
    pub fn may_precede_sync(&self) -> bool {
        use triarch_leaderless::message::Message as L;
        match self {
            Message::Leaderless(L::Write { .. } | L::Read { .. } | L::Repair { .. }) => true,
            Message::Leaderless(L::WriteAck { .. } | L::ReadReply { .. }) => false,
            Message::Catalog(_) => false,
        }
    }
}

/// What the node asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Send { to: NodeId, message: Message },
    Reply { request: RequestId, reply: Reply },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub region: String,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Every node of the cluster, this one included.
    pub members: Vec<Member>,
    /// Keyspaces every node starts with (from the configuration file); created if absent.
    pub keyspaces: Vec<KeyspaceConfig>,
    pub leaderless: LeaderlessConfig,
    pub catalog_gossip_interval: Duration,
    /// How far ahead of the local wall clock a peer's timestamp may be before it is refused.
    pub clock_forward_bound_ms: u64,
    pub value_bytes_max: usize,
}

impl NodeConfig {
    pub fn new(id: NodeId, members: Vec<Member>) -> Self {
        NodeConfig {
            id,
            members,
            keyspaces: Vec::new(),
            leaderless: LeaderlessConfig::default(),
            catalog_gossip_interval: Duration::from_secs(1),
            clock_forward_bound_ms: 60_000,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {0} is not among the configured members")]
    NotAMember(NodeId),
    #[error("invalid keyspace in configuration: {0}")]
    InvalidKeyspace(#[from] triarch_core::ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub struct Node<S: Storage> {
    config: NodeConfig,
    storage: S,
    hlc: Hlc,
    rng: DetRng,
    catalog: Catalog,
    leaderless: Leaderless,
    outputs: VecDeque<Output>,
    next_gossip: Instant,
    peers: Vec<NodeId>,
    /// The persisted clock ceiling (see [`HLC_CEILING_WINDOW_MS`]).
    hlc_ceiling_ms: u64,
}

impl<S: Storage> Node<S> {
    /// Starts (or restarts) a node over `storage`, recovering its durable state.
    pub fn new(
        config: NodeConfig,
        mut storage: S,
        rng: DetRng,
        now: Now,
    ) -> Result<Self, NodeError> {
        let members: Vec<NodeId> = config.members.iter().map(|m| m.id).collect();
        if !members.contains(&config.id) {
            return Err(NodeError::NotAMember(config.id));
        }
        let mut catalog = Catalog::load(&storage)?;
        let mut seeded = config.keyspaces.clone();
        if !seeded
            .iter()
            .any(|k| k.name == KeyspaceConfig::DEFAULT_NAME)
        {
            let mut default = KeyspaceConfig::leaderless(KeyspaceConfig::DEFAULT_NAME);
            default.n = default.n.min(members.len() as u8);
            default.r = default.r.min(default.n);
            default.w = default.w.min(default.n);
            seeded.push(default);
        }
        for ks in seeded {
            ks.validate(members.len())?;
            if catalog.get(&ks.name).is_none() {
                // Seeded from configuration: the lowest version, so that any explicit CREATE wins.
                catalog.merge(
                    &mut storage,
                    CatalogEntry {
                        config: ks,
                        version: HlcTimestamp::MIN,
                    },
                )?;
            }
        }
        let mut hlc = Hlc::new(config.id, config.clock_forward_bound_ms);
        // Never issue a timestamp this node may have issued before the restart.
        let hlc_ceiling_ms = match storage.get(catalog::META_TABLE, HLC_CEILING_KEY)? {
            Some(bytes) => {
                let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    StorageError::Engine("corrupt clock ceiling in the meta table".into())
                })?;
                u64::from_be_bytes(raw)
            }
            None => 0,
        };
        hlc.restore_floor(hlc_ceiling_ms);
        for e in catalog.entries() {
            let _ = hlc.observe(e.version, now.wall_ms);
        }
        let leaderless = Leaderless::new(config.id, &members, config.leaderless.clone());
        let peers = members
            .iter()
            .copied()
            .filter(|m| *m != config.id)
            .collect();
        Ok(Node {
            next_gossip: now.instant + config.catalog_gossip_interval,
            config,
            storage,
            hlc,
            rng,
            catalog,
            leaderless,
            outputs: VecDeque::new(),
            peers,
            hlc_ceiling_ms,
        })
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The driver syncs through this once per batch (group commit).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives the storage back, e.g. for the simulator to crash and restart the node over it.
    pub fn into_storage(self) -> S {
        self.storage
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Per-keyspace counters of the leaderless model on this node.
    pub fn leaderless_stats(&self) -> &BTreeMap<String, KeyspaceStats> {
        self.leaderless.stats()
    }

    /// Operations this node coordinates that have not finished.
    pub fn in_flight(&self) -> usize {
        self.leaderless.in_flight()
    }

    /// The keyspace that owns `key` (see the module documentation).
    pub fn route(&self, key: &[u8]) -> &KeyspaceConfig {
        key.iter()
            .position(|b| *b == b':')
            .and_then(|i| std::str::from_utf8(&key[..i]).ok())
            .and_then(|name| self.catalog.get(name))
            .or_else(|| self.catalog.get(KeyspaceConfig::DEFAULT_NAME))
            .expect("the default keyspace always exists")
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let gossip = if self.peers.is_empty() {
            None
        } else {
            Some(self.next_gossip)
        };
        [gossip, self.leaderless.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        self.outputs.push_back(Output::Reply { request, reply });
    }

    fn fail(&mut self, request: RequestId, error: RequestError) {
        self.reply(request, Reply::Error(error));
    }

    pub fn handle_request(&mut self, now: Now, request: RequestId, req: Request) {
        match req {
            Request::Get { key, r } => self.data_request(now, request, key, None, false, r),
            Request::Set { key, value, w } => {
                self.data_request(now, request, key, Some(value), false, w)
            }
            Request::Delete { key, w } => self.data_request(now, request, key, None, true, w),
            Request::CreateKeyspace(spec) => {
                let reply = match self.create_keyspace(now, spec) {
                    Ok(()) => Reply::Created,
                    Err(e) => Reply::Error(e),
                };
                self.reply(request, reply);
            }
            Request::ListKeyspaces => {
                let all = self.catalog.entries().map(|e| e.config.clone()).collect();
                self.reply(request, Reply::Keyspaces(all));
            }
            Request::KeyspaceInfo { name } => {
                let reply = match self.catalog.get(&name) {
                    Some(config) => Reply::KeyspaceInfo(KeyspaceInfo {
                        config: config.clone(),
                        stats: self
                            .leaderless
                            .stats()
                            .get(&name)
                            .cloned()
                            .unwrap_or_default(),
                        members: self.config.members.iter().map(|m| m.id).collect(),
                    }),
                    None => Reply::Error(RequestError::UnknownKeyspace(name)),
                };
                self.reply(request, reply);
            }
        }
        self.drain_leaderless();
    }

    /// Get (`value: None, delete: false`), set (`value: Some`) or delete.
    fn data_request(
        &mut self,
        now: Now,
        request: RequestId,
        key: Bytes,
        value: Option<Bytes>,
        delete: bool,
        quorum: Option<u8>,
    ) {
        if key.len() > KEY_BYTES_MAX {
            return self.fail(
                request,
                RequestError::KeyTooLarge {
                    len: key.len(),
                    max: KEY_BYTES_MAX,
                },
            );
        }
        if let Some(v) = &value
            && v.len() > self.config.value_bytes_max
        {
            let max = self.config.value_bytes_max;
            return self.fail(request, RequestError::ValueTooLarge { len: v.len(), max });
        }
        let keyspace = self.route(&key).clone();
        if keyspace.model != Model::Leaderless {
            return self.fail(request, RequestError::ModelNotAvailable(keyspace.model));
        }
        let is_write = value.is_some() || delete;
        let (setting, default) = if is_write {
            ("W", keyspace.w)
        } else {
            ("R", keyspace.r)
        };
        let q = quorum.unwrap_or(default);
        if q == 0 || q > keyspace.n {
            return self.fail(
                request,
                RequestError::InvalidQuorum {
                    setting,
                    value: q,
                    n: keyspace.n,
                },
            );
        }
        let mut env = Env {
            now,
            storage: &mut self.storage,
            hlc: &mut self.hlc,
        };
        if is_write {
            self.leaderless
                .write(&mut env, request, &keyspace, key, value, q);
        } else {
            self.leaderless.read(&mut env, request, &keyspace, key, q);
        }
    }

    fn create_keyspace(&mut self, now: Now, spec: KeyspaceSpec) -> Result<(), RequestError> {
        if self.catalog.get(&spec.name).is_some() {
            return Err(RequestError::KeyspaceExists(spec.name));
        }
        if self.catalog.len() >= KEYSPACES_MAX {
            return Err(RequestError::InvalidConfig(
                triarch_core::ConfigError::Invalid {
                    setting: "name",
                    reason: format!(
                        "the cluster already holds the maximum of {KEYSPACES_MAX} keyspaces"
                    ),
                },
            ));
        }
        let nodes = self.config.members.len();
        let mut config = KeyspaceConfig::with_defaults(&spec.name, spec.model, nodes);
        if let Some(n) = spec.n {
            config.n = n;
            let majority = n / 2 + 1;
            config.r = majority;
            config.w = majority;
        }
        config.r = spec.r.unwrap_or(config.r);
        config.w = spec.w.unwrap_or(config.w);
        config.merge = spec.merge.unwrap_or(config.merge);
        if spec.model != Model::Leaderless && (spec.r.is_some() || spec.w.is_some()) {
            return Err(RequestError::InvalidConfig(
                triarch_core::ConfigError::Invalid {
                    setting: if spec.r.is_some() { "R" } else { "W" },
                    reason: "read and write quorums apply only to leaderless keyspaces".into(),
                },
            ));
        }
        config.validate(nodes)?;
        if config.model != Model::Leaderless {
            return Err(RequestError::ModelNotAvailable(config.model));
        }
        if config.merge != MergePolicy::Lww {
            return Err(RequestError::MergeNotAvailable(config.merge));
        }
        let entry = CatalogEntry {
            config,
            version: self.hlc.now(now.wall_ms),
        };
        self.catalog
            .merge(&mut self.storage, entry.clone())
            .map_err(|e| RequestError::Storage(e.to_string()))?;
        tracing::info!(node = %self.config.id, keyspace = entry.config.name, "keyspace created");
        for &to in &self.peers {
            let message = Message::Catalog(CatalogMessage::Entries(vec![entry.clone()]));
            self.outputs.push_back(Output::Send { to, message });
        }
        Ok(())
    }

    pub fn handle_message(&mut self, now: Now, from: NodeId, message: Message) {
        if !self.peers.contains(&from) {
            tracing::warn!(node = %self.config.id, %from, "message from a non-member dropped");
            return;
        }
        match message {
            Message::Catalog(CatalogMessage::Entries(entries)) => {
                for entry in entries {
                    if entry.config.validate(self.config.members.len()).is_err() {
                        tracing::warn!(%from, keyspace = entry.config.name, "invalid catalog entry dropped");
                        continue;
                    }
                    let _ = self.hlc.observe(entry.version, now.wall_ms);
                    if let Err(e) = self.catalog.merge(&mut self.storage, entry) {
                        tracing::error!(error = %e, "catalog merge failed");
                    }
                }
            }
            Message::Leaderless(m) => {
                let mut env = Env {
                    now,
                    storage: &mut self.storage,
                    hlc: &mut self.hlc,
                };
                self.leaderless.handle_message(&mut env, from, m);
            }
        }
        self.drain_leaderless();
    }

    pub fn handle_timeout(&mut self, now: Now) {
        if now.instant >= self.next_gossip && !self.peers.is_empty() {
            self.next_gossip = now.instant + self.config.catalog_gossip_interval;
            let to = self.peers[self.rng.below(self.peers.len() as u64) as usize];
            let entries = self.catalog.entries().cloned().collect();
            let message = Message::Catalog(CatalogMessage::Entries(entries));
            self.outputs.push_back(Output::Send { to, message });
        }
        let mut env = Env {
            now,
            storage: &mut self.storage,
            hlc: &mut self.hlc,
        };
        self.leaderless.handle_timeout(&mut env);
        self.drain_leaderless();
    }

    /// Persists a new clock ceiling once the clock has reached the old one. It is staged in the
    /// same batch as the writes that carry the new timestamps, so it is durable before any of them
    /// is acknowledged.
    fn raise_hlc_ceiling(&mut self) {
        let last = self.hlc.last().wall_ms;
        if last >= self.hlc_ceiling_ms {
            let ceiling = last + HLC_CEILING_WINDOW_MS;
            match self
                .storage
                .put(catalog::META_TABLE, HLC_CEILING_KEY, &ceiling.to_be_bytes())
            {
                Ok(()) => self.hlc_ceiling_ms = ceiling,
                Err(e) => tracing::error!(error = %e, "cannot persist the clock ceiling"),
            }
        }
    }

    fn drain_leaderless(&mut self) {
        self.raise_hlc_ceiling();
        while let Some(effect) = self.leaderless.poll_effect() {
            let output = match effect {
                Effect::Send { to, message } => Output::Send {
                    to,
                    message: Message::Leaderless(message),
                },
                Effect::Reply { request, outcome } => Output::Reply {
                    request,
                    reply: outcome.into(),
                },
            };
            self.outputs.push_back(output);
        }
    }

    /// Structural invariants; the simulator calls this after every step.
    pub fn check_invariants(&self) {
        self.leaderless.check_invariants();
        assert!(
            self.catalog.get(KeyspaceConfig::DEFAULT_NAME).is_some(),
            "default keyspace exists"
        );
    }
}

impl From<Outcome> for Reply {
    fn from(o: Outcome) -> Reply {
        match o {
            Outcome::Written { existed } => Reply::Written { existed },
            Outcome::Read { value } => Reply::Value(value),
            Outcome::QuorumFailed { acks, needed } => {
                Reply::Error(RequestError::QuorumFailed { acks, needed })
            }
            Outcome::Superseded => Reply::Error(RequestError::Superseded),
            Outcome::Storage(e) => Reply::Error(RequestError::Storage(e)),
        }
    }
}

/// Encodes a batch of messages for the peer transport: version byte, then postcard.
pub fn encode_messages(messages: &[Message], out: &mut Vec<u8>) {
    out.push(WIRE_VERSION);
    let encoded = postcard::to_extend(messages, std::mem::take(out)).expect("Vec cannot fail");
    *out = encoded;
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("peer speaks wire version {0}, this node speaks {WIRE_VERSION}")]
    Version(u8),
    #[error("empty frame")]
    Empty,
    #[error("undecodable frame: {0}")]
    Decode(String),
}

/// Decodes what [`encode_messages`] produced. Never panics on garbage.
pub fn decode_messages(frame: &[u8]) -> Result<Vec<Message>, WireError> {
    match frame.split_first() {
        None => Err(WireError::Empty),
        Some((&WIRE_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| WireError::Decode(e.to_string()))
        }
        Some((&v, _)) => Err(WireError::Version(v)),
    }
}

#[cfg(test)]
mod tests;

/// The body of the `peer_frame` fuzz target (also run by the unit tests): decoding never panics,
/// and whatever decodes re-encodes to a frame that decodes to the same messages.
#[doc(hidden)]
pub fn fuzz_decode_frame(data: &[u8]) {
    if let Ok(messages) = decode_messages(data) {
        let mut again = Vec::new();
        encode_messages(&messages, &mut again);
        let round = decode_messages(&again).expect("a re-encoded frame decodes");
        assert_eq!(round, messages);
    }
}
