//! Every multi-leader keyspace of one node: the node's region group of each keyspace (run by
//! the primary-backup engine with a [`RegionMachine`](crate::machine::RegionMachine)), client
//! requests served inside the node's region, and the shipping of each region's change log to
//! the other regions.
//!
//! # Where a write becomes authoritative
//!
//! A client's write goes to the leader of the region's group (any member of the region forwards
//! it there), becomes one log entry, and is acknowledged once a majority of the region's voters
//! hold it: durable in the writer's region, at the region's latency. Other regions learn it
//! later.
//!
//! # Shipping
//!
//! The leader of a region group ships the region's change log to one member of every other
//! region ([`Message::Ship`]: up to [`MultiLeaderConfig::ship_batch_max`] changes from the next
//! number the destination lacks). That member proposes the batch to its own region's group; the
//! machine applies it exactly once and in order, and the answer, the destination's position, goes
//! back ([`Message::ShipAck`]). One batch per destination is in flight; a batch unanswered after
//! [`MultiLeaderConfig::ship_timeout`] is sent again, to another member of the destination.
//! Positions are durable at the destination (they are rows of its machine), so a new leader on
//! either side resumes where the destinations are: it sends from the oldest change it still
//! holds and learns each destination's position from the first answer.
//!
//! Once every other region holds a prefix of the log, the leader proposes to trim it
//! ([`crate::machine::Command::Trim`]).

use crate::machine::{self, Answer, Counters, Outgoing};
use crate::record::{self, Write, WriteResult};
use crate::region::{Regions, actor_of, region_group};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use triarch_core::merge::Refusal;
use triarch_core::{DetRng, HlcTimestamp, Instant, KeyspaceConfig, NodeId, RequestId};
use triarch_primary::engine::{Effect as PbEffect, GroupInfo, GroupSpec, Op, Outcome, SyncPoints};
use triarch_primary::machine::{
    Applied, Command, CommandResult, extension_row, extension_scan, table_name,
};
use triarch_primary::{LogIndex, Primary, PrimaryConfig};
use triarch_storage::Storage;

pub use triarch_primary::engine::Env;

/// Settings shared by every multi-leader keyspace of a node.
#[derive(Clone, Debug)]
pub struct MultiLeaderConfig {
    /// The region groups' Raft timings, request timeout and read policy.
    pub primary: PrimaryConfig,
    /// The most changes one [`Message::Ship`] carries.
    pub ship_batch_max: usize,
    /// How long a shipped batch may go unanswered before it is sent again.
    pub ship_timeout: Duration,
    /// Trim the change log once every other region holds this many more changes than were
    /// trimmed (or all of it).
    pub trim_batch: u64,
    /// The most changes the log keeps for a region that does not take them (down or cut off
    /// for long): beyond, the log is trimmed anyway and the region gets a state transfer when
    /// it returns.
    pub log_changes_max: u64,
    /// The most bytes of records one state-transfer page carries (at least one record).
    pub transfer_page_bytes: usize,
    /// The largest encoded record a local write may leave.
    pub record_bytes_max: usize,
}

impl Default for MultiLeaderConfig {
    fn default() -> Self {
        MultiLeaderConfig {
            primary: PrimaryConfig::default(),
            ship_batch_max: 256,
            ship_timeout: Duration::from_secs(1),
            trim_batch: 1024,
            log_changes_max: 100_000,
            transfer_page_bytes: 1 << 20,
            record_bytes_max: triarch_core::limits::VALUE_BYTES_MAX_DEFAULT + 4096,
        }
    }
}

/// What nodes of multi-leader keyspaces say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A message of a region group (between members of one region).
    Group(triarch_primary::engine::Message),
    /// Changes of the sender's region's log: an encoded [`machine::Command::Ship`], proposed
    /// as it is by the receiver's region.
    Ship { keyspace: String, command: Bytes },
    /// The receiver's region `region` holds the sender's region's log through `position`.
    ShipAck {
        keyspace: String,
        region: String,
        position: u64,
    },
}

impl Message {
    /// Whether the message may leave before the batch's staged writes are durable. A shipment
    /// carries committed entries only (durable on a quorum of its region), and an
    /// acknowledgement a position written by a committed entry; a group's messages follow the
    /// Raft core's rule.
    pub fn may_precede_sync(&self) -> bool {
        match self {
            Message::Group(m) => m.may_precede_sync(),
            Message::Ship { .. } | Message::ShipAck { .. } => true,
        }
    }
}

/// What a client asks of a multi-leader keyspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MlOp {
    /// A read of the key in this region (linearizable within the region).
    Read { key: Bytes },
    /// A write, stamped by the node that accepted it.
    Write {
        key: Bytes,
        write: Write,
        stamp: HlcTimestamp,
    },
}

/// How a client's request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MlOutcome {
    Read(record::Read),
    Written(WriteResult),
    Refused(Refusal),
    /// The region's group could not be reached (no leader, or it is partitioned from this
    /// node); a write may or may not have happened.
    Unavailable {
        keyspace: String,
    },
    /// No outcome in time; a write may or may not have happened.
    Timeout,
    Storage(String),
}

/// What the engine asks its node to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Send {
        to: NodeId,
        message: Message,
    },
    Reply {
        request: RequestId,
        outcome: MlOutcome,
        early: bool,
    },
}

/// A request this engine made of its region groups, by the engine's own request id.
#[derive(Clone, Debug)]
enum Job {
    Client {
        request: RequestId,
        keyspace: String,
    },
    /// A shipment from `sender` to propose here.
    Ship {
        keyspace: String,
        sender: NodeId,
    },
    Trim {
        keyspace: String,
    },
}

/// Shipping from this region to one other region, on this region's leader.
#[derive(Clone, Debug, Default)]
struct Link {
    /// The destination's position in this region's log, as last heard (0: not heard yet).
    acked: u64,
    /// The batch in flight.
    in_flight: Option<InFlight>,
    /// The member of the destination that answered last.
    target: Option<NodeId>,
    /// When the last acknowledgement arrived.
    acked_at: Option<Instant>,
    /// A state transfer in progress (the destination's position is below the trimmed log).
    transfer: Option<Transfer>,
}

#[derive(Clone, Debug)]
struct InFlight {
    /// The last change number the batch carries (a transfer's: the number it covers).
    last: u64,
    /// When to give up on it.
    deadline: Instant,
    to: NodeId,
    /// A transfer page: the key row the next page starts at.
    next_page: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
struct Transfer {
    /// The log's last number when the transfer began: the last page moves the destination's
    /// position there.
    through: u64,
    /// The key row the next page starts at.
    next: Vec<u8>,
}

struct Keyspace {
    config: KeyspaceConfig,
    group: GroupSpec,
    /// By destination region.
    links: BTreeMap<String, Link>,
    trim_in_flight: bool,
    /// The applied index this leader last shipped at, and whether something else changed
    /// since (an acknowledgement, a trim's answer): without either, and with no shipment's
    /// deadline passed, there is nothing new to ship or trim, and `ship` returns at once
    /// instead of reading the counters on every event.
    shipped_at: Option<LogIndex>,
    stirred: bool,
}

/// Per region pair, on the source region's leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub to: String,
    /// The destination's acknowledged position.
    pub acked: u64,
    /// Changes written here that the destination does not hold yet.
    pub lag_entries: u64,
    /// How long ago the oldest change the destination lacks was written (0 when it lacks none).
    pub lag_ms: u64,
}

/// A multi-leader keyspace's state on this node, for `INFO` and `TRIARCH.KEYSPACE INFO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyspaceInfo {
    pub keyspace: String,
    pub region: String,
    /// The region group as this node sees it (`None` when this node is not one of its voters).
    pub group: Option<GroupInfo>,
    /// The region's counters (from this node's copy; zero when it holds none).
    pub counters: Counters,
    /// On the region's leader: shipping to every other region.
    pub links: Vec<LinkInfo>,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MultiLeaderStats {
    pub ships_sent: u64,
    pub changes_sent: u64,
    pub ships_received: u64,
    pub ship_retries: u64,
    pub trims: u64,
    /// State-transfer pages sent.
    pub transfer_pages: u64,
}

/// Every multi-leader keyspace of one node.
pub struct MultiLeader {
    region: String,
    regions: Regions,
    config: MultiLeaderConfig,
    groups: Primary,
    rng: DetRng,
    keyspaces: BTreeMap<String, Keyspace>,
    jobs: BTreeMap<RequestId, Job>,
    next_job: u64,
    effects: VecDeque<Effect>,
    stats: MultiLeaderStats,
}

impl MultiLeader {
    /// `incarnation` as for [`Primary::new`]. `region`: this node's region, which `regions`
    /// lists it in unless it joined the cluster after it was founded (then it votes in no
    /// region's group and forwards its region's requests to the group).
    pub fn new(
        id: NodeId,
        region: String,
        regions: Regions,
        config: MultiLeaderConfig,
        incarnation: HlcTimestamp,
        mut rng: DetRng,
    ) -> Self {
        debug_assert!(regions.region_of(id).is_none_or(|r| r == region));
        let groups = Primary::new(id, config.primary.clone(), incarnation, rng.fork());
        MultiLeader {
            region,
            regions,
            config,
            groups,
            rng,
            keyspaces: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_job: 1,
            effects: VecDeque::new(),
            stats: MultiLeaderStats::default(),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    pub fn stats(&self) -> MultiLeaderStats {
        self.stats
    }

    /// Requests accepted here that have no outcome yet.
    pub fn in_flight(&self) -> usize {
        self.groups.in_flight()
    }

    /// Starts serving `keyspace` (at node start for every multi-leader keyspace of the
    /// catalog, and when the catalog learns a new one): this node's member of its region's
    /// group, if it is a voter.
    pub fn ensure_keyspace<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        keyspace: &KeyspaceConfig,
    ) -> Result<(), String> {
        if !self.keyspaces.contains_key(&keyspace.name) {
            let group = region_group(
                keyspace,
                &self.regions,
                &self.region,
                self.config.record_bytes_max,
            );
            let links = self
                .regions
                .names()
                .filter(|r| *r != self.region)
                .map(|r| (r.to_string(), Link::default()))
                .collect();
            self.keyspaces.insert(
                keyspace.name.clone(),
                Keyspace {
                    config: keyspace.clone(),
                    group,
                    links,
                    trim_in_flight: false,
                    shipped_at: None,
                    stirred: true,
                },
            );
        }
        let group = self.keyspaces[&keyspace.name].group.clone();
        self.groups.ensure_group(env, &group)?;
        self.drain(env);
        Ok(())
    }

    fn job(&mut self, job: Job) -> RequestId {
        let id = RequestId(self.next_job);
        self.next_job += 1;
        self.jobs.insert(id, job);
        id
    }

    /// A client's request on multi-leader keyspace `keyspace` (validated by the node).
    pub fn request<S: Storage>(
        &mut self,
        env: &mut Env<'_, S>,
        request: RequestId,
        keyspace: &KeyspaceConfig,
        op: MlOp,
    ) {
        if !self.keyspaces.contains_key(&keyspace.name)
            && let Err(e) = self.ensure_keyspace(env, keyspace)
        {
            return self.effects.push_back(Effect::Reply {
                request,
                outcome: MlOutcome::Storage(e),
                early: false,
            });
        }
        let group = self.keyspaces[&keyspace.name].group.clone();
        let op = match op {
            MlOp::Read { key } => Op::ReadRows {
                rows: vec![Bytes::from(machine::key_row(&key))],
            },
            MlOp::Write { key, write, stamp } => {
                write_op(machine::Command::Write { key, write, stamp })
            }
        };
        let job = self.job(Job::Client {
            request,
            keyspace: keyspace.name.clone(),
        });
        self.groups.request(env, job, &group, op);
        self.drain(env);
    }

    pub fn handle_message<S: Storage>(&mut self, env: &mut Env<'_, S>, from: NodeId, msg: Message) {
        match msg {
            Message::Group(m) => self.groups.handle_message(env, from, m),
            Message::Ship { keyspace, command } => {
                let Some(ks) = self.keyspaces.get(&keyspace) else {
                    return;
                };
                // Only another region's changes or records go into this region's log this way.
                let shipment = matches!(
                    machine::Command::decode(&command),
                    Some(
                        machine::Command::Ship { from, .. } | machine::Command::Absorb { from, .. }
                    ) if from != actor_of(&self.region)
                );
                if !shipment {
                    tracing::warn!(%from, keyspace, "malformed shipment dropped");
                    return;
                }
                self.stats.ships_received += 1;
                let group = ks.group.clone();
                let job = self.job(Job::Ship {
                    keyspace,
                    sender: from,
                });
                self.groups.request(
                    env,
                    job,
                    &group,
                    Op::Write {
                        watches: Vec::new(),
                        commands: vec![Command::Extension { payload: command }],
                    },
                );
            }
            Message::ShipAck {
                keyspace,
                region,
                position,
            } => {
                let Some(link) = self
                    .keyspaces
                    .get_mut(&keyspace)
                    .and_then(|k| k.links.get_mut(&region))
                else {
                    return;
                };
                link.acked = link.acked.max(position);
                link.target = Some(from);
                link.acked_at = Some(env.now);
                let ks = self.keyspaces.get_mut(&keyspace).expect("looked up above");
                ks.stirred = true;
                let link = ks.links.get_mut(&region).expect("looked up above");
                if let Some(sent) = link.in_flight.take_if(|f| f.to == from)
                    && let (Some(t), Some(next)) = (&mut link.transfer, sent.next_page)
                {
                    t.next = next;
                }
                if link
                    .transfer
                    .as_ref()
                    .is_some_and(|t| link.acked >= t.through)
                {
                    link.transfer = None;
                }
            }
        }
        self.drain(env);
    }

    pub fn handle_timeout<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        self.groups.handle_timeout(env);
        self.drain(env);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        // Only the leader acts on a shipment's deadline (`ship`); a member that lost the lead
        // keeps its stale deadline, which must not wake it forever.
        let links = self
            .keyspaces
            .values()
            .filter(|k| self.groups.leads(&k.group.name))
            .flat_map(|k| k.links.values())
            .filter_map(|l| l.in_flight.as_ref().map(|f| f.deadline));
        self.groups.poll_timeout().into_iter().chain(links).min()
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub fn sync_point(&self) -> SyncPoints {
        self.groups.sync_point()
    }

    pub fn synced<S: Storage>(&mut self, env: &mut Env<'_, S>, points: SyncPoints) {
        self.groups.synced(env, points);
        self.drain(env);
    }

    /// Turns the groups' effects into this engine's, then ships whatever the region's leader
    /// has that other regions lack.
    fn drain<S: Storage>(&mut self, env: &mut Env<'_, S>) {
        self.take_group_effects();
        let names: Vec<String> = self.keyspaces.keys().cloned().collect();
        for name in names {
            self.ship(env, &name);
        }
        // Shipping may have proposed a trim.
        self.take_group_effects();
    }

    /// The groups' messages go out as this engine's; their replies finish this engine's jobs.
    fn take_group_effects(&mut self) {
        while let Some(effect) = self.groups.poll_effect() {
            match effect {
                PbEffect::Send { to, message } => self.effects.push_back(Effect::Send {
                    to,
                    message: Message::Group(message),
                }),
                PbEffect::Reply {
                    request,
                    outcome,
                    early,
                } => self.finish(request, outcome, early),
            }
        }
    }

    /// An outcome of one of this engine's requests.
    fn finish(&mut self, job: RequestId, outcome: Outcome, early: bool) {
        let Some(job) = self.jobs.remove(&job) else {
            return;
        };
        match job {
            Job::Client { request, keyspace } => {
                let policy = self.keyspaces.get(&keyspace).map(|k| k.config.merge);
                let outcome = client_outcome(outcome, policy, keyspace);
                self.effects.push_back(Effect::Reply {
                    request,
                    outcome,
                    early,
                });
            }
            Job::Ship { keyspace, sender } => {
                if let Some(Answer::Position(position)) = answer(&outcome) {
                    self.effects.push_back(Effect::Send {
                        to: sender,
                        message: Message::ShipAck {
                            keyspace,
                            region: self.region.clone(),
                            position,
                        },
                    });
                }
            }
            Job::Trim { keyspace } => {
                if let Some(k) = self.keyspaces.get_mut(&keyspace) {
                    k.trim_in_flight = false;
                    k.stirred = true;
                    if answer(&outcome) == Some(Answer::Trimmed) {
                        self.stats.trims += 1;
                    }
                }
            }
        }
    }

    /// On the leader of `name`'s region group: sends each other region the next batch it
    /// lacks, and trims what every region holds.
    fn ship<S: Storage>(&mut self, env: &mut Env<'_, S>, name: &str) {
        let Some(ks) = self.keyspaces.get_mut(name) else {
            return;
        };
        if !self.groups.leads(&ks.group.name) {
            // What this member heard while it led is stale once it does not: another leader
            // may trim past it meanwhile, and a leader again must not take its old positions
            // for a destination below the trimmed log (a needless state transfer).
            for link in ks.links.values_mut() {
                *link = Link::default();
            }
            ks.shipped_at = None;
            return;
        }
        let applied = self.groups.applied_index(&ks.group.name);
        let due = ks
            .links
            .values()
            .any(|l| l.in_flight.as_ref().is_some_and(|f| f.deadline <= env.now));
        if !ks.stirred && !due && ks.shipped_at.is_some() && ks.shipped_at == applied {
            return;
        }
        ks.stirred = false;
        ks.shipped_at = applied;
        let table = table_name(&ks.group.name);
        let Some(counters) = read_counters(env.storage, &table) else {
            return;
        };
        let actor = actor_of(&self.region);
        let destinations: Vec<String> = ks.links.keys().cloned().collect();
        for region in destinations {
            let ks = self.keyspaces.get_mut(name).expect("present");
            let link = ks.links.get_mut(&region).expect("listed");
            if let Some(f) = &link.in_flight {
                if f.deadline > env.now {
                    continue;
                }
                // Unanswered: try another member of the destination next.
                self.stats.ship_retries += 1;
                if link.target == Some(f.to) {
                    link.target = None;
                }
                link.in_flight = None;
            }
            // A destination heard to be below the trimmed log gets the records instead.
            if link.acked_at.is_some() && link.acked < counters.trimmed && link.transfer.is_none() {
                link.transfer = Some(Transfer {
                    through: counters.last,
                    next: machine::key_row(b""),
                });
            }
            let batch = match &link.transfer {
                Some(t) => {
                    match transfer_page(env.storage, &table, t, self.config.transfer_page_bytes) {
                        Ok(page) => page,
                        Err(e) => {
                            tracing::error!(keyspace = name, error = %e, "cannot read records");
                            return;
                        }
                    }
                }
                None => {
                    let first = link.acked.max(counters.trimmed) + 1;
                    if first > counters.last {
                        continue;
                    }
                    match log_batch(env.storage, &table, first, self.config.ship_batch_max) {
                        Ok(Some(batch)) => batch,
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::error!(keyspace = name, error = %e, "cannot read the change log");
                            return;
                        }
                    }
                }
            };
            let members = self.regions.members(&region);
            let to = match link.target {
                Some(t) => t,
                None if members.is_empty() => continue,
                None => members[self.rng.below(members.len() as u64) as usize],
            };
            let (command, last, next_page) = match batch {
                Batch::Changes { first, changes } => {
                    self.stats.ships_sent += 1;
                    self.stats.changes_sent += changes.len() as u64;
                    let last = first + changes.len() as u64 - 1;
                    let command = machine::Command::Ship {
                        from: actor,
                        first,
                        changes,
                    };
                    (command, last, None)
                }
                Batch::Records { records, next } => {
                    self.stats.transfer_pages += 1;
                    let through = link.transfer.as_ref().expect("transferring").through;
                    let command = machine::Command::Absorb {
                        from: actor,
                        records,
                        through: next.is_none().then_some(through),
                    };
                    // The last page resumes where the first began: its `next` is the start.
                    let next = next.unwrap_or_else(|| machine::key_row(b""));
                    (command, through, Some(next))
                }
            };
            link.in_flight = Some(InFlight {
                last,
                deadline: env.now + self.config.ship_timeout,
                to,
                next_page,
            });
            self.effects.push_back(Effect::Send {
                to,
                message: Message::Ship {
                    keyspace: name.to_string(),
                    command: command.encode(),
                },
            });
        }
        // Trim what every other region holds, in batches (or all of it once they are level).
        let ks = self.keyspaces.get_mut(name).expect("present");
        let held = ks
            .links
            .values()
            .map(|l| l.acked)
            .min()
            .unwrap_or(counters.last)
            // A region that does not take the log for long gets a state transfer instead.
            .max(counters.last.saturating_sub(self.config.log_changes_max));
        let worth = held >= counters.trimmed + self.config.trim_batch
            || (held == counters.last && held > counters.trimmed);
        if worth && !ks.trim_in_flight {
            ks.trim_in_flight = true;
            let group = ks.group.clone();
            let job = self.job(Job::Trim {
                keyspace: name.to_string(),
            });
            self.groups.request(
                env,
                job,
                &group,
                write_op(machine::Command::Trim { through: held }),
            );
        }
    }

    /// The keyspace's state on this node; `wall_ms` dates the lag.
    pub fn info<S: Storage>(
        &self,
        storage: &S,
        keyspace: &str,
        wall_ms: u64,
    ) -> Option<KeyspaceInfo> {
        let ks = self.keyspaces.get(keyspace)?;
        let table = table_name(&ks.group.name);
        let group = self.groups.info(&ks.group.name);
        let counters = read_counters(storage, &table).unwrap_or_default();
        let leads = group
            .as_ref()
            .is_some_and(|g| g.role == triarch_primary::Role::Leader);
        let links = if leads {
            ks.links
                .iter()
                .map(|(to, link)| {
                    let held = link.acked.max(counters.trimmed);
                    let lag_entries = counters.last.saturating_sub(held);
                    let lag_ms = if lag_entries == 0 {
                        0
                    } else {
                        extension_row(storage, &table, &machine::outgoing_row(held + 1))
                            .ok()
                            .flatten()
                            .and_then(|b| Outgoing::decode(&b))
                            .map_or(0, |o| wall_ms.saturating_sub(o.written_ms))
                    };
                    LinkInfo {
                        to: to.clone(),
                        acked: link.acked,
                        lag_entries,
                        lag_ms,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Some(KeyspaceInfo {
            keyspace: keyspace.to_string(),
            region: self.region.clone(),
            group,
            counters,
            links,
        })
    }

    /// The multi-leader keyspaces this node serves.
    pub fn keyspaces(&self) -> impl Iterator<Item = &str> {
        self.keyspaces.keys().map(|k| k.as_str())
    }

    pub fn check_invariants(&self) {
        self.groups.check_invariants();
        for ks in self.keyspaces.values() {
            for link in ks.links.values() {
                if let Some(f) = &link.in_flight {
                    assert!(f.last >= 1, "a shipped batch is never empty");
                }
            }
        }
    }
}

/// What one shipment carries.
enum Batch {
    Changes {
        first: u64,
        changes: Vec<Outgoing>,
    },
    /// A page of records; `next`: the key row the following page starts at (`None`: the last).
    Records {
        records: Vec<(Bytes, record::RegionalRecord)>,
        next: Option<Vec<u8>>,
    },
}

/// Up to `max` changes of the log from `first` on (`None` if the log does not hold `first`).
fn log_batch<S: Storage>(
    storage: &S,
    table: &str,
    first: u64,
    max: usize,
) -> Result<Option<Batch>, triarch_storage::StorageError> {
    let rows = extension_scan(storage, table, &machine::outgoing_row(first), max)?;
    let mut changes: Vec<Outgoing> = Vec::with_capacity(rows.len());
    for (row, value) in rows {
        let expected = first + changes.len() as u64;
        match (machine::outgoing_seq(&row), Outgoing::decode(&value)) {
            (Some(seq), Some(outgoing)) if seq == expected => changes.push(outgoing),
            _ => break,
        }
    }
    Ok((!changes.is_empty()).then_some(Batch::Changes { first, changes }))
}

/// The next page of a state transfer: records from `transfer.next` on, up to `bytes_max`
/// bytes (at least one record).
fn transfer_page<S: Storage>(
    storage: &S,
    table: &str,
    transfer: &Transfer,
    bytes_max: usize,
) -> Result<Batch, triarch_storage::StorageError> {
    const SCAN: usize = 256;
    let rows = extension_scan(storage, table, &transfer.next, SCAN)?;
    let scanned = rows.len();
    let mut records = Vec::new();
    let mut bytes = 0;
    let mut next = None;
    for (row, value) in rows {
        let Some(key) = machine::key_of(&row) else {
            // Past the key rows: the transfer is complete.
            return Ok(Batch::Records {
                records,
                next: None,
            });
        };
        if !records.is_empty() && bytes + value.len() > bytes_max {
            next = Some(row);
            break;
        }
        bytes += value.len();
        if let Ok(record) = record::RegionalRecord::decode(&value) {
            records.push((Bytes::copy_from_slice(key), record));
        }
        let mut after = row;
        after.push(0);
        next = Some(after);
    }
    if next.is_some() && scanned < SCAN && records.len() == scanned {
        // The scan ended before SCAN rows: no key rows follow.
        next = None;
    }
    Ok(Batch::Records { records, next })
}

fn write_op(command: machine::Command) -> Op {
    Op::Write {
        watches: Vec::new(),
        commands: vec![Command::Extension {
            payload: command.encode(),
        }],
    }
}

fn read_counters<S: Storage>(storage: &S, table: &str) -> Option<Counters> {
    match extension_row(storage, table, machine::counters_row()) {
        Ok(Some(bytes)) => Counters::decode(&bytes),
        Ok(None) => Some(Counters::default()),
        Err(_) => None,
    }
}

/// The machine's answer inside a write's outcome.
fn answer(outcome: &Outcome) -> Option<Answer> {
    match outcome {
        Outcome::Applied {
            applied: Applied::Done(results),
            ..
        } => match results.as_slice() {
            [CommandResult::Extension(bytes)] => Answer::decode(bytes),
            _ => None,
        },
        _ => None,
    }
}

fn client_outcome(
    outcome: Outcome,
    policy: Option<triarch_core::MergePolicy>,
    keyspace: String,
) -> MlOutcome {
    match (&outcome, answer(&outcome)) {
        (_, Some(Answer::Written(result))) => MlOutcome::Written(result),
        (_, Some(Answer::Refused(refusal))) => MlOutcome::Refused(refusal),
        (Outcome::Rows(rows), _) => {
            let policy = policy.unwrap_or(triarch_core::MergePolicy::Lww);
            let record = rows
                .first()
                .cloned()
                .flatten()
                .and_then(|b| record::RegionalRecord::decode(&b).ok());
            MlOutcome::Read(record::read(record.as_ref(), policy))
        }
        (Outcome::Timeout, _) => MlOutcome::Timeout,
        (Outcome::Storage(e), _) => MlOutcome::Storage(e.clone()),
        _ => MlOutcome::Unavailable { keyspace },
    }
}
