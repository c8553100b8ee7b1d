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
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use triarch_core::{Instant as CoreInstant, NodeId, Now, RequestId};
use triarch_node::{Message, Node, Output, Reply, Request, SyncPoint};
use triarch_storage::{FjallSyncer, StorageError};

/// Most inputs stepped before the batch is synced: bounds how long replies of the first input of a
/// batch wait behind the last one.
pub const BATCH_INPUTS_MAX: usize = 4096;
/// Capacity of the core's input channel (back-pressure on connections beyond it).
pub const INPUT_CHANNEL_CAPACITY: usize = 16 * 1024;

/// Where a reply goes.
pub enum ReplyTo {
    /// A RESP connection: `(slot, part)` names the pipelined command and the part of a
    /// multi-key command. The channel is unbounded because each connection caps its own number
    /// of commands in flight, so the core never waits on a slow client.
    Conn {
        tx: mpsc::UnboundedSender<(u64, u32, Reply)>,
        slot: u64,
        part: u32,
    },
    /// An HTTP request.
    Once(oneshot::Sender<Reply>),
}

impl ReplyTo {
    fn send(self, reply: Reply) {
        // A closed receiver means the client went away; nothing to do.
        match self {
            ReplyTo::Conn { tx, slot, part } => {
                let _ = tx.send((slot, part, reply));
            }
            ReplyTo::Once(tx) => {
                let _ = tx.send(reply);
            }
        }
    }
}

pub enum CoreInput {
    Request {
        request: Request,
        reply_to: ReplyTo,
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
    batches: u64,
    syncs: u64,
    /// What the running sync covers, for `Node::synced` once it finishes.
    sync_point: Option<SyncPoint>,
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
        batches: 0,
        syncs: 0,
        sync_point: None,
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
                let released = std::mem::take(&mut core.syncing);
                core.release(released);
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
        let mut early = Vec::new();
        while let Some(o) = self.node.poll_output() {
            if o.may_precede_sync() {
                early.push(o);
            } else {
                self.waiting.push(o);
            }
        }
        if !early.is_empty() {
            self.release(early);
        }
    }

    fn sync_or_release(&mut self) -> Option<JoinHandle<Result<(), StorageError>>> {
        match self.node.storage_mut().flush_to_engine() {
            Ok(true) => {
                // Everything staged is in the engine now, so in the sync about to start.
                self.sync_point = Some(self.node.sync_point());
                self.syncing = std::mem::take(&mut self.waiting);
                Some(self.start_sync())
            }
            Ok(false) => {
                let released = std::mem::take(&mut self.waiting);
                self.release(released);
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
            CoreInput::Request { request, reply_to } => {
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
    fn release(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Reply { request, reply, .. } => {
                    if let Some((reply_to, started, label)) = self.pending.remove(&request) {
                        self.metrics.record_reply(&label, &reply, started.elapsed());
                        reply_to.send(reply);
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
