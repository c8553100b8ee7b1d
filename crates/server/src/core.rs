//! The core task: the one owner of a node's sans-IO state machine.
//!
//! Connection tasks hand it inputs through one bounded channel. It drains every input that is
//! ready (up to [`BATCH_INPUTS_MAX`]), steps the node for each, then makes the batch's staged
//! writes durable with one fsync on a blocking thread and releases the batch's outputs only when
//! that sync has finished (persist-then-send, group commit). While one sync runs the next batch
//! is stepped; its outputs wait for its own sync, or, if it staged nothing, for the running one.

use crate::metrics::{OpLabel, OpMetrics};
use crate::peer::PeerSenders;
use crate::storage::NodeStorage;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use triarch_core::{
    Instant as CoreInstant, KeyspaceConfig, Model, NodeId, Now, ReadPolicy, RequestId,
};
use triarch_node::{Message, Node, Output, Reply, Request, SessionToken, SyncPoint};
use triarch_storage::{FjallSyncer, StorageError};

/// Most inputs stepped before the batch is synced: bounds how long replies of the first input of a
/// batch wait behind the last one.
pub const BATCH_INPUTS_MAX: usize = 4096;
/// Capacity of the core's input channel (back-pressure on connections beyond it).
pub const INPUT_CHANNEL_CAPACITY: usize = 16 * 1024;

/// A reply as a connection receives it: `(slot, part, reply, session)`, `session` being the
/// session token of a primary-backup write (see [`SessionToken`]).
pub type ConnReply = (u64, u32, Reply, Option<SessionToken>);

/// Where a reply goes.
pub enum ReplyTo {
    /// A RESP connection: `(slot, part)` names the pipelined command and the part of a
    /// multi-key command. The channel is unbounded because each connection caps its own number
    /// of commands in flight, so the core never waits on a slow client.
    Conn {
        tx: mpsc::UnboundedSender<ConnReply>,
        slot: u64,
        part: u32,
    },
    /// An HTTP request (and WATCH): the reply with its session token, if any.
    Once(oneshot::Sender<(Reply, Option<SessionToken>)>),
}

impl ReplyTo {
    fn send(self, reply: Reply, session: Option<SessionToken>) {
        // A closed receiver means the client went away; nothing to do.
        match self {
            ReplyTo::Conn { tx, slot, part } => {
                let _ = tx.send((slot, part, reply, session));
            }
            ReplyTo::Once(tx) => {
                let _ = tx.send((reply, session));
            }
        }
    }
}

/// A RESP connection's read settings, which the core applies to its `GET`s of primary-backup
/// keys (only the core knows which keyspace a key belongs to): the read policy the connection
/// chose (`TRIARCH.READ`; `None`: each keyspace's own) and the highest session token it holds
/// per keyspace (`TRIARCH.SESSION`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub policy: Option<ReadPolicy>,
    pub sessions: Arc<BTreeMap<String, u64>>,
}

impl ReadOptions {
    /// The request a connection's `GET key` becomes on `keyspace` (the key's): a
    /// [`Request::GetWith`] on a primary-backup keyspace when the connection chose a policy
    /// other than the keyspace's, or when the effective policy is `session` and the connection
    /// holds a token for the keyspace; the plain `Get` otherwise (other models, and reads the
    /// keyspace's own policy serves the same way).
    pub fn get_request(
        &self,
        keyspace: &KeyspaceConfig,
        key: bytes::Bytes,
        r: Option<triarch_node::Consistency>,
    ) -> Request {
        if keyspace.model != Model::PrimaryBackup {
            return Request::Get { key, r };
        }
        let chosen = self.policy.filter(|p| *p != keyspace.read);
        let effective = self.policy.unwrap_or(keyspace.read);
        let session = match effective {
            ReadPolicy::Session => self.sessions.get(&keyspace.name).copied(),
            _ => None,
        };
        if chosen.is_none() && session.is_none() {
            return Request::Get { key, r };
        }
        Request::GetWith {
            key,
            policy: chosen,
            session,
        }
    }
}

/// Parses session tokens as clients carry them: `keyspace:index`, several separated by commas
/// (the text `TRIARCH.SESSION` answers and the `X-Triarch-Session` header carries).
pub fn parse_session_tokens(text: &str) -> Result<Vec<SessionToken>, String> {
    text.split(',')
        .map(|one| {
            let one = one.trim();
            let (keyspace, index) = one
                .split_once(':')
                .ok_or_else(|| format!("{one:?} is not <keyspace>:<index>"))?;
            triarch_core::config::validate_name(keyspace).map_err(|e| e.to_string())?;
            let index = index
                .parse::<u64>()
                .ok()
                .filter(|i| *i >= 1)
                .ok_or_else(|| format!("{one:?}: the index must be an integer of at least 1"))?;
            Ok(SessionToken {
                keyspace: keyspace.to_string(),
                index,
            })
        })
        .collect()
}

pub enum CoreInput {
    /// `reads`: the read settings of the RESP connection that sent it, for a `Get`.
    Request {
        request: Request,
        reply_to: ReplyTo,
        reads: Option<ReadOptions>,
    },
    Peer {
        from: NodeId,
        messages: Vec<Message>,
    },
    Snapshot(oneshot::Sender<Snapshot>),
}

/// What INFO, `/v1/cluster` and `/metrics` report about the node.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub node: NodeId,
    pub keyspaces: Vec<triarch_core::KeyspaceConfig>,
    pub leaderless: BTreeMap<String, triarch_node::KeyspaceStats>,
    /// The failure detector's verdict on each peer (`up` or `suspect`).
    pub peer_health: BTreeMap<NodeId, &'static str>,
    /// This node's view of every primary-backup group it is a voter of.
    pub primary: BTreeMap<String, triarch_node::GroupInfo>,
    /// The primary-backup engine's counters (`proposals`, `forwards_sent`, ...).
    pub primary_counters: Vec<(&'static str, u64)>,
    /// This node's view of the cluster's metadata group (`None`: not one of its voters).
    pub meta: Option<triarch_node::GroupInfo>,
    /// The membership and this node's part in a move.
    pub membership: triarch_node::meta::MembershipStatus,
    /// Every multi-leader keyspace this node serves: its region group as seen here, the
    /// region's counters and (on the region's leader) the shipping lag to every other region.
    pub multileader: Vec<crate::metrics::MultiLeaderInfo>,
    /// The multi-leader engine's shipping counters.
    pub multileader_stats: triarch_multileader::engine::MultiLeaderStats,
    pub in_flight: usize,
    pub batches: u64,
    pub syncs: u64,
}

/// The core's clock: monotonic microseconds since start, plus the wall clock.
pub struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            origin: std::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Now {
        let instant = CoreInstant::from_micros(self.origin.elapsed().as_micros() as u64);
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Now::new(instant, wall_ms)
    }

    fn to_tokio(&self, at: CoreInstant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin + Duration::from_micros(at.as_micros()))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

struct Core {
    node: Node<NodeStorage>,
    syncer: FjallSyncer,
    clock: Clock,
    peers: PeerSenders,
    metrics: OpMetrics,
    next_request: u64,
    pending: HashMap<RequestId, (ReplyTo, std::time::Instant, OpLabel)>,
    /// Outputs of the batch whose sync is running.
    syncing: Vec<Output>,
    /// Outputs of later batches, waiting for the running sync (and for their own, if writes are
    /// staged that the running sync does not cover).
    waiting: Vec<Output>,
    /// Per-peer message batches being assembled while releasing outputs (reused buffers).
    outbound: BTreeMap<NodeId, Vec<Message>>,
    /// Outputs that may leave before the sync, being released (a reused buffer: outputs are
    /// large, and growing a fresh vector for every step showed in profiles).
    early: Vec<Output>,
    batches: u64,
    syncs: u64,
    /// What the running sync covers, for `Node::synced` once it finishes.
    sync_point: Option<SyncPoint>,
    /// The membership index whose joined members have links.
    membership_index: u64,
}

/// Runs the core until every input sender is dropped. A failed sync is fatal: the process exits,
/// because nothing staged may be acknowledged and the node cannot tell what reached the disk.
pub async fn run(
    node: Node<NodeStorage>,
    clock: Clock,
    mut inputs: mpsc::Receiver<CoreInput>,
    peers: PeerSenders,
) {
    let syncer = node.storage().syncer();
    let mut core = Core {
        node,
        syncer,
        clock,
        peers,
        metrics: OpMetrics::default(),
        next_request: 1,
        pending: HashMap::new(),
        syncing: Vec::new(),
        waiting: Vec::new(),
        outbound: BTreeMap::new(),
        early: Vec::new(),
        batches: 0,
        syncs: 0,
        sync_point: None,
        membership_index: 0,
    };
    let mut sync_task: Option<JoinHandle<Result<(), StorageError>>> = None;
    let mut batch: Vec<CoreInput> = Vec::with_capacity(256);
    loop {
        let timer = core.node.poll_timeout().map(|t| core.clock.to_tokio(t));
        tokio::select! {
            biased;
            done = async { sync_task.as_mut().expect("guarded").await }, if sync_task.is_some() => {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => fatal(&e.to_string()),
                    Err(e) => fatal(&e.to_string()),
                }
                core.syncs += 1;
                // Tell the node what became durable (a step: primary-backup leaders may commit).
                if let Some(point) = core.sync_point.take() {
                    let now = core.clock.now();
                    core.node.synced(now, point);
                    core.collect_outputs();
                }
                let mut released = std::mem::take(&mut core.syncing);
                core.release(&mut released);
                core.syncing = released;
                sync_task = core.sync_or_release();
                continue;
            }
            n = inputs.recv_many(&mut batch, BATCH_INPUTS_MAX) => {
                if n == 0 {
                    break;
                }
                let now = core.clock.now();
                for input in batch.drain(..) {
                    core.step(now, input);
                }
                if core.node.poll_timeout().is_some_and(|t| t <= now.instant) {
                    core.node.handle_timeout(now);
                }
            }
            _ = sleep_until(timer), if timer.is_some() => {
                let now = core.clock.now();
                core.node.handle_timeout(now);
            }
        }
        core.batches += 1;
        core.collect_outputs();
        if sync_task.is_none() {
            sync_task = core.sync_or_release();
        }
    }
    if let Some(task) = sync_task
        && let Ok(Err(e)) = task.await
    {
        fatal(&e.to_string());
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn fatal(error: &str) -> ! {
    tracing::error!(
        error,
        "storage sync failed; stopping so that nothing unsynced is acknowledged"
    );
    std::process::exit(70);
}

impl Core {
    /// With no sync running: if writes are staged, hands them to the engine and starts a sync
    /// that the waiting outputs ride on; otherwise everything staged is durable, so the waiting
    /// outputs go now.
    /// Takes the node's outputs: those that may precede the sync go at once, the others wait.
    fn collect_outputs(&mut self) {
        self.link_joined_members();
        let mut early = std::mem::take(&mut self.early);
        while let Some(o) = self.node.poll_output() {
            if o.may_precede_sync() {
                early.push(o);
            } else {
                self.waiting.push(o);
            }
        }
        if !early.is_empty() {
            self.release(&mut early);
        }
        self.early = early;
    }

    /// Starts links to members joined since last time (the metadata group decided their join).
    fn link_joined_members(&mut self) {
        let membership = self.node.membership();
        if membership.index == self.membership_index {
            return;
        }
        self.membership_index = membership.index;
        for joined in &membership.joined {
            match joined.peer_addr.parse() {
                Ok(addr) => self.peers.add(joined.id, addr),
                Err(e) => {
                    tracing::error!(peer = %joined.id, addr = joined.peer_addr, error = %e, "a joined member's address does not parse; no link to it")
                }
            }
        }
    }

    fn sync_or_release(&mut self) -> Option<JoinHandle<Result<(), StorageError>>> {
        match self.node.storage_mut().flush_to_engine() {
            Ok(true) => {
                // Everything staged is in the engine now, so in the sync about to start.
                self.sync_point = Some(self.node.sync_point());
                // `syncing` is empty (released when the previous sync ended): swap the buffers.
                debug_assert!(self.syncing.is_empty());
                std::mem::swap(&mut self.syncing, &mut self.waiting);
                Some(self.start_sync())
            }
            Ok(false) => {
                let mut released = std::mem::take(&mut self.waiting);
                self.release(&mut released);
                self.waiting = released;
                None
            }
            Err(e) => fatal(&e.to_string()),
        }
    }

    fn start_sync(&mut self) -> JoinHandle<Result<(), StorageError>> {
        let syncer = self.syncer.clone();
        let outputs = self.syncing.len();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let result = syncer.sync();
            crate::metrics::record_sync(started.elapsed(), outputs);
            result
        })
    }

    fn step(&mut self, now: Now, input: CoreInput) {
        match input {
            CoreInput::Request {
                request,
                reply_to,
                reads,
            } => {
                let request = match (request, reads) {
                    (Request::Get { key, r }, Some(reads)) => {
                        let keyspace = self.node.route(&key);
                        reads.get_request(keyspace, key, r)
                    }
                    (request, _) => request,
                };
                let id = RequestId(self.next_request);
                self.next_request += 1;
                let label = self.metrics.label_for(&self.node, &request);
                self.pending
                    .insert(id, (reply_to, std::time::Instant::now(), label));
                self.node.handle_request(now, id, request);
            }
            CoreInput::Peer { from, messages } => {
                for m in messages {
                    self.node.handle_message(now, from, m);
                }
            }
            CoreInput::Snapshot(tx) => {
                let multileader = crate::metrics::multileader_infos(&self.node, now.wall_ms);
                let multileader_stats = self.node.multileader().stats();
                // `/metrics` asks for a snapshot before rendering: publish the exact figures.
                crate::metrics::publish_multileader(&multileader, multileader_stats);
                crate::metrics::publish_primary(&self.node);
                crate::metrics::publish_peer_health(&self.node);
                let _ = tx.send(Snapshot {
                    node: self.node.id(),
                    keyspaces: self
                        .node
                        .catalog()
                        .entries()
                        .map(|e| e.config.clone())
                        .collect(),
                    leaderless: self.node.leaderless_stats().clone(),
                    peer_health: self
                        .node
                        .peer_health()
                        .iter()
                        .map(|(id, h)| (*id, h.status.as_str()))
                        .collect(),
                    primary: self
                        .node
                        .primary()
                        .groups()
                        .filter_map(|name| {
                            let info = self.node.primary().info(name)?;
                            Some((name.to_string(), info))
                        })
                        .collect(),
                    primary_counters: crate::metrics::primary_counters(&self.node),
                    meta: self.node.meta_info(),
                    membership: self.node.membership_status(),
                    multileader,
                    multileader_stats,
                    in_flight: self.node.in_flight(),
                    batches: self.batches,
                    syncs: self.syncs,
                });
            }
        }
    }

    /// Carries out outputs whose writes are durable: replies to clients, one batch per peer.
    /// Empties `outputs`, keeping its capacity for reuse.
    fn release(&mut self, outputs: &mut Vec<Output>) {
        for output in outputs.drain(..) {
            match output {
                Output::Reply {
                    request,
                    reply,
                    session,
                    ..
                } => {
                    if let Some((reply_to, started, label)) = self.pending.remove(&request) {
                        self.metrics.record_reply(&label, &reply, started.elapsed());
                        reply_to.send(reply, session);
                    }
                }
                Output::Send { to, message } => self.outbound.entry(to).or_default().push(message),
            }
        }
        for (to, messages) in self.outbound.iter_mut() {
            if !messages.is_empty() {
                self.peers.send(*to, std::mem::take(messages));
            }
        }
        self.metrics.observe_stats(self.node.leaderless_stats());
        self.metrics.observe_primary(&self.node);
        self.metrics.observe_multileader(&self.node, &self.clock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use triarch_node::Consistency;

    fn keyspace(model: Model, read: ReadPolicy) -> KeyspaceConfig {
        let mut k = KeyspaceConfig::with_defaults("balance", model, 3);
        k.read = read;
        k
    }

    fn options(policy: Option<ReadPolicy>, tokens: &[(&str, u64)]) -> ReadOptions {
        ReadOptions {
            policy,
            sessions: Arc::new(tokens.iter().map(|(k, i)| (k.to_string(), *i)).collect()),
        }
    }

    #[test]
    fn a_connection_s_get_becomes_get_with_only_when_its_settings_change_the_read() {
        let key = Bytes::from_static(b"balance:alice");
        let r = Some(Consistency::One);
        let get = Request::Get {
            key: key.clone(),
            r,
        };
        let with = |policy, session| Request::GetWith {
            key: key.clone(),
            policy,
            session,
        };
        let linearizable = keyspace(Model::PrimaryBackup, ReadPolicy::Linearizable);
        let session = keyspace(Model::PrimaryBackup, ReadPolicy::Session);
        let bounded = ReadPolicy::Bounded { max_lag_ms: 1000 };
        let cases = [
            // The keyspace's own policy, no token: the plain GET.
            (&linearizable, options(None, &[]), get.clone()),
            (
                &linearizable,
                options(Some(ReadPolicy::Linearizable), &[("balance", 7)]),
                get.clone(),
            ),
            // A token, but the effective policy is not `session`: unchanged.
            (&linearizable, options(None, &[("balance", 7)]), get.clone()),
            // Another policy than the keyspace's.
            (
                &linearizable,
                options(Some(bounded), &[("balance", 7)]),
                with(Some(bounded), None),
            ),
            (
                &linearizable,
                options(Some(ReadPolicy::Session), &[]),
                with(Some(ReadPolicy::Session), None),
            ),
            (
                &linearizable,
                options(Some(ReadPolicy::Session), &[("balance", 7), ("other", 9)]),
                with(Some(ReadPolicy::Session), Some(7)),
            ),
            // A `session` keyspace: the token, when the connection holds one for it.
            (
                &session,
                options(None, &[("balance", 7)]),
                with(None, Some(7)),
            ),
            (&session, options(None, &[("other", 9)]), get.clone()),
            (
                &session,
                options(Some(ReadPolicy::Linearizable), &[("balance", 7)]),
                with(Some(ReadPolicy::Linearizable), None),
            ),
        ];
        for (i, (k, o, want)) in cases.into_iter().enumerate() {
            assert_eq!(o.get_request(k, key.clone(), r), want, "case {i}");
        }
        // Other models are unaffected.
        for model in [Model::Leaderless, Model::MultiLeader] {
            let k = keyspace(model, ReadPolicy::Linearizable);
            let o = options(Some(ReadPolicy::Session), &[("balance", 7)]);
            assert_eq!(o.get_request(&k, key.clone(), r), get);
        }
    }

    #[test]
    fn session_tokens_parse_and_bad_ones_are_named() {
        let t = |k: &str, index| SessionToken {
            keyspace: k.into(),
            index,
        };
        assert_eq!(
            parse_session_tokens("balance:17"),
            Ok(vec![t("balance", 17)])
        );
        assert_eq!(
            parse_session_tokens("balance:17, notes:3"),
            Ok(vec![t("balance", 17), t("notes", 3)])
        );
        for bad in [
            "",
            "balance",
            "balance:",
            "balance:0",
            "balance:x",
            "bad name:3",
            ":4",
            "a:1,",
        ] {
            assert!(parse_session_tokens(bad).is_err(), "{bad:?}");
        }
        let e = parse_session_tokens("balance").unwrap_err();
        assert!(e.contains("<keyspace>:<index>"), "{e}");
    }
}
