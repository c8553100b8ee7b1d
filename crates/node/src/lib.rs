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
//! once, and only after it succeeds releases the outputs produced by that batch, except those for
//! which [`Output::may_precede_sync`] holds. Nothing the node acknowledges can therefore be lost
//! by a crash. If a sync fails the driver must not release the batch's outputs and must stop the
//! node (it cannot know which staged writes survived).
//!
//! The driver also tells the node what each sync covered: it takes [`Node::sync_point`] when the
//! sync starts (everything staged until then is in it) and calls [`Node::synced`] with it once
//! the sync has finished. That is a step like any other; primary-backup leaders, which send
//! their entries before their own copy is durable, count that copy toward a commit only then.
//!
//! ## Routing
//!
//! A key `ks:rest` belongs to keyspace `ks` when that keyspace exists; every other key belongs to
//! `default` (leaderless, N=3, R=2, W=2 unless configured). Keys are stored whole, prefix
//! included.
//!
//! ## Merge policies
//!
//! A leaderless keyspace's merge policy decides which requests its keys take (see [`api`]):
//! `lww` keys take `Get`/`Set`/`Delete`; `siblings`, `counter`, `set` and `map` keys take
//! `Read` and `Apply` with an operation of their policy, plus `Get`, `Set` and `Delete` where
//! they mean something. Everything else is refused with [`RequestError::WrongPolicy`] before any
//! replica is touched.

pub mod api;
pub mod catalog;
pub mod meta;
mod multileader;
mod primary;

pub use api::{
    CausalToken, Command, CommandResult, Consistency, ContextError, GroupInfo, KeyspaceInfo,
    KeyspaceSpec, Operation, OperationResult, ReadRecord, Reply, Request, RequestError,
    SessionToken, SiblingsView, View, base64url,
};
use bytes::Bytes;
use catalog::{Catalog, CatalogEntry, CatalogMessage};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use triarch_core::causal::ActorId;
use triarch_core::limits::{KEY_BYTES_MAX, KEYSPACES_MAX, VALUE_BYTES_MAX_DEFAULT};
use triarch_core::{ConfigError, DetRng, Hlc, Instant, KeyspaceConfig, MergePolicy, Model, NodeId};
use triarch_core::{Now, RequestId};
pub use triarch_leaderless::KeyspaceStats;
use triarch_leaderless::state::Refusal;
use triarch_leaderless::{Effect, Env, Leaderless, LeaderlessConfig, Outcome};
use triarch_multileader::{MultiLeader, MultiLeaderConfig, Regions};
use triarch_primary::{Primary, PrimaryConfig};
use triarch_storage::{Storage, StorageError};

/// How far above the largest timestamp issued so far the persisted clock ceiling is set. A
/// restarted node starts its clock at the ceiling, so it never reuses a timestamp even if its wall
/// clock went back; the window makes the ceiling write rare (one staged write per window).
pub const HLC_CEILING_WINDOW_MS: u64 = 10_000;
const HLC_CEILING_KEY: &[u8] = b"hlc/ceiling";

/// Version of the peer message encoding. A peer that sends another version is disconnected.
/// Version 2 added the messages of the `siblings`, `counter`, `set` and `map` merge policies;
/// version 3 the primary-backup model's; version 4 sloppy quorums, hinted handoff and
/// anti-entropy; version 5 the multi-leader model's; version 6 the metadata group's (catalog
/// entries versioned by its log index); version 7 keyspace home regions and Raft learners
/// (configurations in membership entries and snapshots carry learners).
pub const WIRE_VERSION: u8 = 7;

/// Everything nodes say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Catalog(CatalogMessage),
    Leaderless(triarch_leaderless::message::Message),
    Primary(triarch_primary::engine::Message),
    MultiLeader(triarch_multileader::Message),
    /// The metadata group's messages ([`meta`]).
    Meta(triarch_primary::engine::Message),
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
    ///
    /// Merged states are different: a coordinator's `Merge` and `RepairState` may carry dots
    /// this node issued from state staged in this very batch, and a dot must not leave the node
    /// before the state that issued it is durable (a crash would let the node issue it again
    /// for another write; see `triarch_leaderless::state`). They wait. So does a `Forward`: its
    /// name is a clock timestamp, unique across restarts only once the clock ceiling staged
    /// with it is durable (`triarch_leaderless::forward`).
    pub fn may_precede_sync(&self) -> bool {
        use triarch_leaderless::message::Message as L;
        // Sloppy quorums (`triarch_leaderless::hint`): a `HintedWrite` is a coordinator's
        // request like `Write`, and `Ping`/`Pong` carry nothing; a `HintedMerge` carries dots
        // like `Merge`; the fallback's and the owner's answers (`HintRefused`, `HandoffAck`)
        // and the hints it hands off wait, like every other answer.
        // Anti-entropy (`triarch_leaderless::anti_entropy`): an initiator's `TreeHashes` and
        // `KeyHashes` are requests carrying only hashes; every answer (`TreeDiff`, `KeyDiff`,
        // `ExchangeRefused`) and every message carrying values (`KeyDiff`, `KeyValues`: states
        // may hold dots issued in this batch) waits.
        // Membership handoff (`triarch_leaderless::membership`): a `MoveBatch` carries values
        // (states may hold dots issued in this batch) and a `MoveAck` vouches for the merge
        // being durable: both wait.
        match self {
            Message::Leaderless(
                L::Write { .. }
                | L::Read { .. }
                | L::Repair { .. }
                | L::ReadState { .. }
                | L::HintedWrite { .. }
                | L::Ping
                | L::Pong
                | L::TreeHashes { .. }
                | L::KeyHashes { .. },
            ) => true,
            Message::Leaderless(
                L::WriteAck { .. }
                | L::ReadReply { .. }
                | L::StateReply { .. }
                | L::Merge { .. }
                | L::MergeAck { .. }
                | L::RepairState { .. }
                | L::Forward { .. }
                | L::ForwardReply { .. }
                | L::HintedMerge { .. }
                | L::HintRefused { .. }
                | L::ClockAheadRefused { .. }
                | L::Handoff { .. }
                | L::HandoffAck { .. }
                | L::TreeDiff { .. }
                | L::KeyDiff { .. }
                | L::KeyValues { .. }
                | L::ExchangeRefused { .. }
                | L::MoveBatch { .. }
                | L::MoveAck { .. },
            ) => false,
            Message::Catalog(_) => false,
            Message::Primary(m) | Message::Meta(m) => m.may_precede_sync(),
            Message::MultiLeader(m) => m.may_precede_sync(),
        }
    }
}

/// What one sync covers (see [`Node::sync_point`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncPoint {
    primary: triarch_primary::engine::SyncPoints,
    multileader: triarch_primary::engine::SyncPoints,
    meta: triarch_primary::engine::SyncPoints,
}

/// What the node asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Send {
        to: NodeId,
        message: Message,
    },
    /// `early`: the reply vouches for nothing this node has only staged (a primary-backup
    /// outcome of entries committed on a quorum of durable logs), so it may leave before the
    /// batch's sync.
    Reply {
        request: RequestId,
        reply: Reply,
        early: bool,
        /// A primary-backup write's session token (see [`SessionToken`]).
        session: Option<SessionToken>,
    },
}

impl Output {
    /// Whether the driver may release this output before the writes staged in its batch are
    /// durable (see [`Message::may_precede_sync`] and `Reply::early`).
    pub fn may_precede_sync(&self) -> bool {
        match self {
            Output::Send { message, .. } => message.may_precede_sync(),
            Output::Reply { early, .. } => *early,
        }
    }
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
    pub primary: PrimaryConfig,
    pub multileader: MultiLeaderConfig,
    pub catalog_gossip_interval: Duration,
    /// The node is not among `members` (the founders): it starts outside the ring and waits for
    /// a `TRIARCH.CLUSTER JOIN` decided by the metadata group.
    pub joining: bool,
    /// This node's region when `members` does not list it (a joining node).
    pub region: Option<String>,
    /// PLANTED BUG for checker tests: in a membership move, report the handoff done without
    /// handing anything off.
    pub bug_skip_handoff: bool,
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
            primary: PrimaryConfig::default(),
            multileader: MultiLeaderConfig::default(),
            catalog_gossip_interval: Duration::from_secs(1),
            joining: false,
            region: None,
            bug_skip_handoff: false,
            clock_forward_bound_ms: 60_000,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {0} is not among the configured members")]
    NotAMember(NodeId),
    #[error("node {0} joins the cluster but has no region")]
    NoRegion(NodeId),
    #[error("invalid regions: {0}")]
    Regions(#[from] triarch_multileader::region::RegionError),
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
    primary: Primary,
    multileader: MultiLeader,
    /// The metadata group's engine (see [`meta`]), its group, and the index whose effects on
    /// the catalog this node has taken in.
    meta: Primary,
    meta_spec: triarch_primary::engine::GroupSpec,
    meta_seen: triarch_primary::LogIndex,
    /// Proposals waiting for the metadata group, by request.
    meta_pending: BTreeMap<RequestId, meta::MetaPending>,
    /// The founding members (the configuration's `members`): they host every Raft group.
    founders: Vec<NodeId>,
    /// The membership as the metadata group decided it (this node's durable copy).
    membership: meta::Membership,
    /// The last internal request number, and the progress report in flight.
    next_internal: u64,
    report_in_flight: Option<RequestId>,
    outputs: VecDeque<Output>,
    next_gossip: Instant,
    peers: Vec<NodeId>,
    /// The persisted clock ceiling (see [`HLC_CEILING_WINDOW_MS`]).
    hlc_ceiling_ms: u64,
    /// How to turn the outcome of a request in flight into its reply, for requests whose reply
    /// is not the outcome's plain translation (e.g. `GET` of a counter).
    shapes: BTreeMap<RequestId, Shape>,
    /// The same for primary-backup requests in flight, with their keyspace.
    pb_shapes: BTreeMap<RequestId, (primary::PbShape, String)>,
    /// The same for multi-leader requests in flight.
    ml_shapes: BTreeMap<RequestId, Shape>,
}

/// How a request's outcome becomes its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `Get` of a counter: its value as text (`None` if never written).
    CounterValue,
    /// `Get` of a `siblings` key: the one value, or an error when there are several.
    SingleSibling,
    /// `Set`/`Delete` carried out as an operation: `Written`, `existed` when it changed something.
    Written,
    /// `Read`: a key never written reads as the empty state of its policy.
    Read(MergePolicy),
    /// The outcome's plain translation.
    Plain,
}

/// What the engine is asked to do for a data request.
pub(crate) enum Plan {
    LwwRead,
    /// An LWW write (`None` deletes).
    LwwWrite(Option<Bytes>),
    StateRead(Shape),
    Apply(Operation, Shape),
}

/// The policies an operation works on, for its error.
fn needs_of(op: &Operation) -> &'static [MergePolicy] {
    match op.policy() {
        MergePolicy::Lww => &[MergePolicy::Lww],
        MergePolicy::Siblings => &[MergePolicy::Siblings],
        MergePolicy::Counter => &[MergePolicy::Counter],
        MergePolicy::Set => &[MergePolicy::Set],
        MergePolicy::Map => &[MergePolicy::Map],
    }
}

/// What a data request asks for, before it is matched with the keyspace's policy.
pub(crate) enum Data {
    Get,
    Set(Bytes),
    Delete,
    Read,
    Apply(Operation),
}

impl Data {
    /// Whether it reads (at R) and whether it writes (at W) in a keyspace of `policy`.
    fn quorums(&self, policy: MergePolicy) -> (bool, bool) {
        match (self, policy) {
            (Data::Get | Data::Read, _) => (true, false),
            (Data::Set(_) | Data::Delete, MergePolicy::Lww) => (false, true),
            (Data::Set(_) | Data::Delete, _) => (true, true),
            (Data::Apply(op), _) => (op.reads_first(), true),
        }
    }
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
        let membership = meta::load_membership(&storage, &members)?;
        if !members.contains(&config.id)
            && !config.joining
            && !membership.joined.iter().any(|j| j.id == config.id)
        {
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
            check_keyspace(&ks, &config.members)?;
            if catalog.get(&ks.name).is_none() {
                // Seeded from configuration: the lowest version, so that any explicit CREATE wins.
                catalog.merge(&mut storage, CatalogEntry::new(ks, 0))?;
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
        // This incarnation's name: above every timestamp issued or observed before a restart.
        let started = hlc.now(now.wall_ms);
        let mut rng = rng;
        let first_op = rng.next_u64() >> 1;
        let mut leaderless_config = config.leaderless.clone();
        leaderless_config.state_bytes_max = config.value_bytes_max;
        let leaderless = Leaderless::new(config.id, &membership.ring, leaderless_config)
            .with_incarnation(first_op, started);
        let primary = Primary::new(config.id, config.primary.clone(), started, rng.fork());
        let meta = Primary::new(
            config.id,
            meta::meta_config(&config.primary),
            started,
            rng.fork(),
        );
        let meta_spec = meta::meta_group(&members);
        let regions = Regions::new(config.members.iter().map(|m| (m.id, m.region.clone())))?;
        let own_region = config
            .members
            .iter()
            .find(|m| m.id == config.id)
            .map(|m| m.region.clone())
            .or_else(|| config.region.clone())
            .ok_or(NodeError::NoRegion(config.id))?;
        let mut multileader_config = config.multileader.clone();
        multileader_config.record_bytes_max = config.value_bytes_max + 4096;
        let multileader = MultiLeader::new(
            config.id,
            own_region,
            regions,
            multileader_config,
            started,
            rng.fork(),
        );
        let peers = members
            .iter()
            .copied()
            .filter(|m| *m != config.id)
            .collect();
        let mut node = Node {
            next_gossip: now.instant + config.catalog_gossip_interval,
            config,
            storage,
            hlc,
            rng,
            catalog,
            leaderless,
            primary,
            multileader,
            meta,
            meta_spec,
            meta_seen: triarch_primary::LogIndex(0),
            meta_pending: BTreeMap::new(),
            founders: members.clone(),
            membership,
            next_internal: 0,
            report_in_flight: None,
            outputs: VecDeque::new(),
            peers,
            hlc_ceiling_ms,
            shapes: BTreeMap::new(),
            pb_shapes: BTreeMap::new(),
            ml_shapes: BTreeMap::new(),
        };
        node.start_meta(now)?;
        node.follow_membership(now);
        node.catalog_changed(now);
        node.raise_hlc_ceiling();
        node.drain_primary();
        node.drain_multileader();
        node.drain_meta(now);
        Ok(node)
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
            + self.primary.in_flight()
            + self.multileader.in_flight()
            + self.meta.in_flight()
    }

    /// What a sync that starts now will make durable (the driver calls [`Node::synced`] with it
    /// once that sync has finished).
    pub fn sync_point(&self) -> SyncPoint {
        SyncPoint {
            primary: self.primary.sync_point(),
            multileader: self.multileader.sync_point(),
            meta: self.meta.sync_point(),
        }
    }

    /// The sync started at `point` finished. A step: it may produce outputs (a primary-backup
    /// leader counts its own copy of entries toward committing them only once they are durable).
    pub fn synced(&mut self, now: Now, point: SyncPoint) {
        let mut env = triarch_primary::engine::Env {
            now: now.instant,
            storage: &mut self.storage,
        };
        self.primary.synced(&mut env, point.primary);
        self.multileader.synced(&mut env, point.multileader);
        self.meta.synced(&mut env, point.meta);
        self.drain_primary();
        self.drain_multileader();
        self.drain_meta(now);
    }

    /// The multi-leader engine (region groups, shipping, counters).
    pub fn multileader(&self) -> &MultiLeader {
        &self.multileader
    }

    /// The primary-backup engine (Raft groups, counters).
    pub fn primary(&self) -> &Primary {
        &self.primary
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
        [
            gossip,
            self.leaderless.poll_timeout(),
            self.primary.poll_timeout(),
            self.multileader.poll_timeout(),
            self.meta.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        self.outputs.push_back(Output::Reply {
            request,
            reply,
            early: false,
            session: None,
        });
    }

    fn fail(&mut self, request: RequestId, error: RequestError) {
        self.reply(request, Reply::Error(error));
    }

    pub fn handle_request(&mut self, now: Now, request: RequestId, req: Request) {
        let admin = matches!(
            req,
            Request::CreateKeyspace(_)
                | Request::ListKeyspaces
                | Request::KeyspaceInfo { .. }
                | Request::SetHome { .. }
                | Request::Join(_)
                | Request::Decommission { .. }
                | Request::Membership
        );
        if !admin && !self.is_member() {
            return self.fail(request, RequestError::NotJoined);
        }
        match req {
            Request::Get { key, r } => self.data_request(now, request, key, Data::Get, r, None),
            Request::Set { key, value, w } => {
                self.data_request(now, request, key, Data::Set(value), None, w)
            }
            Request::Delete { key, w } => {
                self.data_request(now, request, key, Data::Delete, None, w)
            }
            Request::Read { key, r } => self.data_request(now, request, key, Data::Read, r, None),
            Request::Apply { key, op, r, w } => {
                self.data_request(now, request, key, Data::Apply(op), r, w)
            }
            Request::GetWith {
                key,
                policy,
                session,
            } => self.primary_get_with(now, request, key, policy, session),
            Request::Cas { key, expected, new } => {
                self.primary_cas(now, request, key, expected, new)
            }
            Request::Watch { keys } => self.primary_watch(now, request, keys),
            Request::Exec { watches, commands } => {
                self.primary_exec(now, request, watches, commands)
            }
            Request::CreateKeyspace(spec) => {
                if let Err(e) = self.create_keyspace(now, request, spec) {
                    self.fail(request, e);
                }
            }
            Request::SetHome { name, home } => self.propose_home(now, request, name, home),
            Request::Join(member) => {
                self.propose_change(now, request, meta::MembershipRequest::Join(member))
            }
            Request::Decommission { id } => {
                self.propose_change(now, request, meta::MembershipRequest::Decommission(id))
            }
            Request::Membership => {
                let status = self.membership_status();
                self.reply(request, Reply::Membership(Box::new(status)));
            }
            Request::ListKeyspaces => {
                let all = self.catalog.entries().map(|e| e.config.clone()).collect();
                self.reply(request, Reply::Keyspaces(all));
            }
            Request::KeyspaceInfo { name } => {
                let reply = match self.catalog.get(&name) {
                    Some(config) => Reply::KeyspaceInfo(Box::new(KeyspaceInfo {
                        config: config.clone(),
                        stats: self
                            .leaderless
                            .stats()
                            .get(&name)
                            .cloned()
                            .unwrap_or_default(),
                        members: self.config.members.iter().map(|m| m.id).collect(),
                        group: self.primary.info(&name),
                        multileader: self.multileader.info(&self.storage, &name, now.wall_ms),
                    })),
                    None => Reply::Error(RequestError::UnknownKeyspace(name)),
                };
                self.reply(request, reply);
            }
        }
        self.drain_leaderless();
        self.drain_primary();
        self.drain_multileader();
        self.drain_meta(now);
    }

    /// Checks a data request and hands it to the keyspace's model.
    fn data_request(
        &mut self,
        now: Now,
        request: RequestId,
        key: Bytes,
        data: Data,
        r: Option<Consistency>,
        w: Option<Consistency>,
    ) {
        if let Err(e) = self.check_sizes(&key, &data) {
            return self.fail(request, e);
        }
        let keyspace = self.route(&key).clone();
        match keyspace.model {
            Model::Leaderless => {}
            Model::PrimaryBackup => {
                return self.primary_data(now, request, &keyspace, key, data);
            }
            Model::MultiLeader => {
                return match self.plan(&keyspace, data) {
                    Ok(plan) => self.multileader_data(now, request, &keyspace, key, plan),
                    Err(e) => self.fail(request, e),
                };
            }
        }
        let (reads, writes) = data.quorums(keyspace.merge);
        let quorum = |setting: &'static str, asked: Option<Consistency>, default: u8| {
            let q = asked.map_or(default, |c| c.resolve(keyspace.n));
            if q == 0 || q > keyspace.n {
                Err(RequestError::InvalidQuorum {
                    setting,
                    value: q,
                    n: keyspace.n,
                })
            } else {
                Ok(q)
            }
        };
        let r = if reads {
            quorum("R", r, keyspace.r)
        } else {
            Ok(keyspace.r)
        };
        let w = if writes {
            quorum("W", w, keyspace.w)
        } else {
            Ok(keyspace.w)
        };
        let (r, w) = match (r, w) {
            (Ok(r), Ok(w)) => (r, w),
            (Err(e), _) | (_, Err(e)) => return self.fail(request, e),
        };
        let plan = self.plan(&keyspace, data);
        let plan = match plan {
            Ok(plan) => plan,
            Err(e) => return self.fail(request, e),
        };
        let mut env = Env {
            now,
            storage: &mut self.storage,
            hlc: &mut self.hlc,
        };
        match plan {
            Plan::LwwRead => self.leaderless.read(&mut env, request, &keyspace, key, r),
            Plan::LwwWrite(value) => self
                .leaderless
                .write(&mut env, request, &keyspace, key, value, w),
            Plan::StateRead(shape) => {
                self.shapes.insert(request, shape);
                self.leaderless
                    .read_state(&mut env, request, &keyspace, key, r);
            }
            Plan::Apply(op, shape) => {
                if shape != Shape::Plain {
                    self.shapes.insert(request, shape);
                }
                self.leaderless
                    .apply(&mut env, request, &keyspace, key, op, r, w);
            }
        }
    }

    /// What the engine is asked to do for `data` on a leaderless or multi-leader keyspace, and
    /// how its outcome becomes the reply; an error when the keyspace's policy does not support
    /// the request.
    fn plan(&self, keyspace: &KeyspaceConfig, data: Data) -> Result<Plan, RequestError> {
        let wrong = |needs: &'static [MergePolicy]| RequestError::WrongPolicy {
            keyspace: keyspace.name.clone(),
            policy: keyspace.merge,
            needs,
        };
        use MergePolicy::{Counter, Lww, Map, Set, Siblings};
        let observed = |value: Option<Bytes>| Operation::SiblingsWriteObserved { value };
        // What the engine is asked to do, and how its outcome becomes the reply.
        match (data, keyspace.merge) {
            (Data::Get, Lww) => Ok(Plan::LwwRead),
            (Data::Set(value), Lww) => Ok(Plan::LwwWrite(Some(value))),
            (Data::Delete, Lww) => Ok(Plan::LwwWrite(None)),
            (Data::Get, Counter) => Ok(Plan::StateRead(Shape::CounterValue)),
            (Data::Get, Siblings) => Ok(Plan::StateRead(Shape::SingleSibling)),
            (Data::Get, _) => Err(wrong(&[Lww, Siblings, Counter])),
            (Data::Set(value), Siblings) => Ok(Plan::Apply(observed(Some(value)), Shape::Written)),
            (Data::Set(_), _) => Err(wrong(&[Lww, Siblings])),
            (Data::Delete, Siblings) => Ok(Plan::Apply(observed(None), Shape::Written)),
            (Data::Delete, Set) => Ok(Plan::Apply(Operation::SetClear, Shape::Written)),
            (Data::Delete, Map) => Ok(Plan::Apply(Operation::MapClear, Shape::Written)),
            (Data::Delete, _) => Err(wrong(&[Lww, Siblings, Set, Map])),
            (Data::Read, Lww) => Err(wrong(&[Siblings, Counter, Set, Map])),
            (Data::Read, policy) => Ok(Plan::StateRead(Shape::Read(policy))),
            (Data::Apply(op), policy) if op.policy() != policy => Err(RequestError::WrongPolicy {
                keyspace: keyspace.name.clone(),
                policy,
                needs: needs_of(&op),
            }),
            (Data::Apply(op), _) => match &op {
                Operation::SiblingsWrite { context, .. } => {
                    CausalToken::validate(context, &self.actors(keyspace.model))
                        .map(|()| Plan::Apply(op, Shape::Plain))
                        .map_err(RequestError::from)
                }
                _ => Ok(Plan::Apply(op, Shape::Plain)),
            },
        }
    }

    /// A value within the configured limit.
    fn check_value(&self, value: &Bytes) -> Result<(), RequestError> {
        let max = self.config.value_bytes_max;
        if value.len() > max {
            Err(RequestError::ValueTooLarge {
                len: value.len(),
                max,
            })
        } else {
            Ok(())
        }
    }

    /// Keys, values, set elements and map fields within their limits.
    fn check_sizes(&self, key: &Bytes, data: &Data) -> Result<(), RequestError> {
        let key_max = check_key;
        let value_max = |b: &Bytes| self.check_value(b);
        key_max(key)?;
        match data {
            Data::Set(value) => value_max(value),
            Data::Apply(Operation::SetAdd(elements) | Operation::SetRemove(elements)) => {
                elements.iter().try_for_each(key_max)
            }
            Data::Apply(Operation::MapDelete(fields)) => fields.iter().try_for_each(key_max),
            Data::Apply(Operation::MapSet(pairs)) => pairs.iter().try_for_each(|(f, v)| {
                key_max(f)?;
                value_max(v)
            }),
            Data::Apply(
                Operation::SiblingsWrite { value: Some(v), .. }
                | Operation::SiblingsWriteObserved { value: Some(v) },
            ) => value_max(v),
            _ => Ok(()),
        }
    }

    /// Checks a `CREATE` and proposes it to the metadata group, which answers it.
    fn create_keyspace(
        &mut self,
        now: Now,
        request: RequestId,
        spec: KeyspaceSpec,
    ) -> Result<(), RequestError> {
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
        let (r, w) = (spec.settings.r, spec.settings.w);
        let config = KeyspaceConfig::from_settings(&spec.name, spec.model, spec.settings, nodes);
        if spec.model != Model::Leaderless && (r.is_some() || w.is_some()) {
            return Err(RequestError::InvalidConfig(
                triarch_core::ConfigError::Invalid {
                    setting: if r.is_some() { "R" } else { "W" },
                    reason: "read and write quorums apply only to leaderless keyspaces".into(),
                },
            ));
        }
        check_keyspace(&config, &self.config.members)?;
        self.propose_create(now, request, config);
        Ok(())
    }

    /// The actors a causal context of a keyspace of `model` may name: the members for
    /// leaderless keyspaces (replicas issue dots), the regions for multi-leader ones.
    fn actors(&self, model: Model) -> Vec<ActorId> {
        match model {
            Model::MultiLeader => self
                .multileader
                .regions()
                .names()
                .map(triarch_multileader::region::actor_of)
                .collect(),
            _ => self
                .config
                .members
                .iter()
                .map(|m| ActorId::from(m.id))
                .collect(),
        }
    }

    pub fn handle_message(&mut self, now: Now, from: NodeId, message: Message) {
        if !self.peers.contains(&from) {
            tracing::warn!(node = %self.config.id, %from, "message from a non-member dropped");
            return;
        }
        match message {
            Message::Catalog(CatalogMessage::Entries(entries)) => {
                let mut changed = false;
                for entry in entries {
                    if check_keyspace(&entry.config, &self.config.members).is_err() {
                        tracing::warn!(%from, keyspace = entry.config.name, "invalid catalog entry dropped");
                        continue;
                    }
                    changed |= self.merge_entry(entry);
                }
                if changed {
                    self.catalog_changed(now);
                }
            }
            Message::Catalog(CatalogMessage::Membership(m)) => {
                self.adopt_membership(now, m);
            }
            Message::Meta(m) => {
                let mut env = triarch_primary::engine::Env {
                    now: now.instant,
                    storage: &mut self.storage,
                };
                self.meta.handle_message(&mut env, from, m);
            }
            Message::Primary(m) => {
                let mut env = triarch_primary::engine::Env {
                    now: now.instant,
                    storage: &mut self.storage,
                };
                self.primary.handle_message(&mut env, from, m);
            }
            Message::MultiLeader(m) => {
                let mut env = triarch_primary::engine::Env {
                    now: now.instant,
                    storage: &mut self.storage,
                };
                self.multileader.handle_message(&mut env, from, m);
            }
            Message::Leaderless(m) => {
                if let triarch_leaderless::message::Message::Forward { sent, .. } = &m {
                    // Persist a clock ceiling above `sent` before the forward runs (staged ahead
                    // of its writes), so that after a crash this node refuses the forward's
                    // duplicates as sent before its restart (`triarch_leaderless::forward`).
                    let _ = self.hlc.observe(*sent, now.wall_ms);
                    self.raise_hlc_ceiling();
                }
                let mut env = Env {
                    now,
                    storage: &mut self.storage,
                    hlc: &mut self.hlc,
                };
                self.leaderless.handle_message(&mut env, from, m);
            }
        }
        self.drain_leaderless();
        self.drain_primary();
        self.drain_multileader();
        self.drain_meta(now);
    }

    pub fn handle_timeout(&mut self, now: Now) {
        if now.instant >= self.next_gossip && !self.peers.is_empty() {
            self.next_gossip = now.instant + self.config.catalog_gossip_interval;
            let to = self.peers[self.rng.below(self.peers.len() as u64) as usize];
            let entries = self.catalog.entries().cloned().collect();
            let message = Message::Catalog(CatalogMessage::Entries(entries));
            self.outputs.push_back(Output::Send { to, message });
            if self.membership.index > 0 {
                let message = Message::Catalog(CatalogMessage::Membership(self.membership.clone()));
                self.outputs.push_back(Output::Send { to, message });
            }
        }
        let mut env = Env {
            now,
            storage: &mut self.storage,
            hlc: &mut self.hlc,
        };
        self.leaderless.handle_timeout(&mut env);
        let mut env = triarch_primary::engine::Env {
            now: now.instant,
            storage: &mut self.storage,
        };
        self.primary.handle_timeout(&mut env);
        self.multileader.handle_timeout(&mut env);
        self.meta.handle_timeout(&mut env);
        self.drain_leaderless();
        self.drain_primary();
        self.drain_multileader();
        self.drain_meta(now);
    }

    /// Tells the models about the catalog: primary-backup voters start their keyspaces' Raft
    /// groups, and the leaderless engine learns every leaderless keyspace's N (the ranges its
    /// anti-entropy compares).
    fn catalog_changed(&mut self, now: Now) {
        self.ensure_primary_groups(now);
        self.ensure_multileader_keyspaces(now);
        let leaderless: Vec<KeyspaceConfig> = self
            .catalog
            .entries()
            .filter(|e| e.config.model == Model::Leaderless)
            .map(|e| e.config.clone())
            .collect();
        for keyspace in leaderless {
            let mut env = Env {
                now,
                storage: &mut self.storage,
                hlc: &mut self.hlc,
            };
            self.leaderless.observe_keyspace(&mut env, &keyspace);
        }
    }

    /// Every member's id and region: what primary-backup placement ranks.
    pub(crate) fn placed_members(&self) -> Vec<triarch_primary::engine::Placed<'_>> {
        self.config
            .members
            .iter()
            .map(|m| (m.id, m.region.as_str()))
            .collect()
    }

    /// What the leaderless engine's failure detector thinks of each peer.
    pub fn peer_health(&self) -> &BTreeMap<NodeId, triarch_leaderless::health::PeerHealth> {
        self.leaderless.peer_health()
    }

    /// Anti-entropy on this node (trees, exchanges in flight, tombstones).
    pub fn anti_entropy_status(&self) -> triarch_leaderless::anti_entropy::AntiEntropyStatus {
        self.leaderless.anti_entropy_status()
    }

    /// Persists a new clock ceiling once the clock has reached the old one. It is staged in the
    /// same batch as the writes that carry the new timestamps, so it is durable before any of them
    /// is acknowledged.
    pub(crate) fn raise_hlc_ceiling(&mut self) {
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
                Effect::Reply { request, outcome } => {
                    let shape = self.shapes.remove(&request).unwrap_or(Shape::Plain);
                    Output::Reply {
                        request,
                        reply: shaped(outcome, shape),
                        early: false,
                        session: None,
                    }
                }
            };
            self.outputs.push_back(output);
        }
    }

    /// Structural invariants; the simulator calls this after every step.
    pub fn check_invariants(&self) {
        self.leaderless.check_invariants();
        assert!(
            self.shapes.len() <= self.leaderless.in_flight(),
            "a reply shape outlived its request"
        );
        self.primary.check_invariants();
        assert!(
            self.pb_shapes.len() <= self.primary.in_flight(),
            "a primary-backup reply shape outlived its request"
        );
        self.multileader.check_invariants();
        self.meta.check_invariants();
        assert!(
            self.meta_pending.len() <= self.meta.in_flight(),
            "a metadata proposal's purpose outlived it"
        );
        assert!(
            self.ml_shapes.len() <= self.multileader.in_flight(),
            "a multi-leader reply shape outlived its request"
        );
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
            Outcome::Applied(result) => Reply::Applied(result),
            // Without a `Shape::Read`, a key no replica holds reads as absent.
            Outcome::State(Some(view)) => Reply::State(view),
            Outcome::State(None) => Reply::Value(None),
            Outcome::Refused(refusal) => Reply::Error(match refusal {
                Refusal::CounterOverflow => RequestError::CounterOverflow,
                Refusal::StateTooLarge { bytes, max } => {
                    RequestError::ValueTooLarge { len: bytes, max }
                }
                Refusal::Mismatch(m) => RequestError::StoredPolicyMismatch {
                    stored: m.stored,
                    expected: m.expected,
                },
                Refusal::ClockAhead => RequestError::ClockAhead,
                Refusal::NotAReplica { node } => RequestError::MembershipMismatch { node },
            }),
            Outcome::Unavailable { coordinator } => {
                Reply::Error(RequestError::CoordinatorUnavailable { coordinator })
            }
        }
    }
}

/// The reply to a request whose outcome needs more than the plain translation.
pub(crate) fn shaped(outcome: Outcome, shape: Shape) -> Reply {
    match (shape, outcome) {
        (Shape::CounterValue, Outcome::State(view)) => Reply::Value(match view {
            Some(View::Counter(value)) => Some(Bytes::from(value.to_string())),
            _ => None,
        }),
        (Shape::SingleSibling, Outcome::State(view)) => match view {
            Some(View::Siblings(SiblingsView { mut values, .. })) if values.len() <= 1 => {
                Reply::Value(values.pop())
            }
            Some(View::Siblings(SiblingsView { values, .. })) => {
                Reply::Error(RequestError::Siblings {
                    count: values.len(),
                })
            }
            _ => Reply::Value(None),
        },
        (Shape::Read(policy), Outcome::State(None)) => {
            Reply::State(View::empty(policy).expect("Read is refused on lww keyspaces"))
        }
        (Shape::Written, Outcome::Applied(OperationResult::Changed(n))) => {
            Reply::Written { existed: n > 0 }
        }
        (_, outcome) => outcome.into(),
    }
}

/// A key within the limit.
pub(crate) fn check_key(key: &Bytes) -> Result<(), RequestError> {
    if key.len() > KEY_BYTES_MAX {
        Err(RequestError::KeyTooLarge {
            len: key.len(),
            max: KEY_BYTES_MAX,
        })
    } else {
        Ok(())
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

/// A keyspace's definition checked against the cluster's founding `members`: its settings, and
/// that its home region (if any) has a member to place the group on.
pub(crate) fn check_keyspace(ks: &KeyspaceConfig, members: &[Member]) -> Result<(), ConfigError> {
    ks.validate(members.len())?;
    if let Some(home) = &ks.home
        && !members.iter().any(|m| &m.region == home)
    {
        let mut regions: Vec<&str> = members.iter().map(|m| m.region.as_str()).collect();
        regions.sort_unstable();
        regions.dedup();
        return Err(ConfigError::Invalid {
            setting: "HOME",
            reason: format!(
                "no member is in region {home:?} (regions: {})",
                regions.join(", ")
            ),
        });
    }
    Ok(())
}
