//! The cluster's own metadata on consensus: the keyspace catalog is decided by a Raft group.
//!
//! Whatever model a keyspace's data uses, its *definition* must be decided once for the whole
//! cluster: two nodes must never serve one name under two settings. A `CREATE` is therefore a
//! proposal to the metadata group ([`META_GROUP`], voters: the first [`META_VOTERS_MAX`] members
//! of its rendezvous ranking), run by its own instance of the primary-backup engine with a
//! [`MetaMachine`] as the group's state machine extension. The machine accepts the first
//! definition of a name and refuses every later one (`keyspace already exists`), so concurrent
//! `CREATE`s of one name through different nodes no longer race: exactly one succeeds. The
//! committed entry's version is the log index that created it.
//!
//! Every node keeps the catalog in memory and in its `meta` table ([`crate::catalog`]) as
//! before; the group decides, the catalog disseminates:
//! - the node that proposed a `CREATE` merges the committed entry from the group's answer before
//!   it replies, so the client's next request through it finds the keyspace;
//! - the group's voters merge entries as they apply them, and the group's leader sends each new
//!   entry to every other member at once;
//! - periodic gossip (one random peer per interval) catches up anyone who missed that.
//!
//! A `CREATE` needs a majority of the metadata voters; without one it fails with a clear
//! `TRYAGAIN` (it may or may not have happened, as any write without an answer). Data requests
//! never touch the group. Keyspaces seeded from configuration files are not proposed: every node
//! seeds them at version 0, below any created entry.
//!
//! The same group decides the cluster's [`Membership`]: the founders (the configuration's
//! `members`, which host every Raft group), the leaderless ring, members joined and departed,
//! and the move in progress. A `JOIN` or `DECOMMISSION` starts a move; each node reports to the
//! group as it passes the move's phases (`Begun` once it coordinates only joint operations,
//! `HandedOff` once its copies reached the keys' gained owners), and the group's machine ends the
//! move when everyone has (docs/membership.md; the engine's side is
//! `triarch_leaderless::membership`). Every node keeps a durable copy of the membership, merged
//! by the index of the command that last changed it, and brings its peers and its leaderless
//! engine to it (`Node::follow_membership`).

use crate::api::{GroupInfo, Reply, RequestError};
use crate::catalog::{CatalogEntry, CatalogMessage};
use crate::{Message, Node, Output};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use triarch_core::limits::KEYSPACES_MAX;
use triarch_core::{ConfigError, KeyspaceConfig, NodeId, Now, RequestId};
use triarch_leaderless::Env as LeaderlessEnv;
use triarch_primary::engine::{Effect, Env, GroupSpec, Op, Outcome, ranked};
use triarch_primary::machine::{
    Applied, Command, CommandResult, Extension, Rows, extension_row, extension_scan, table_name,
};
use triarch_primary::{LogIndex, PrimaryConfig};
use triarch_storage::{Storage, StorageError};

/// The metadata group's name. Keyspace and region names are letters, digits, `_` and `-`, so a
/// name starting with a dot can be neither a keyspace's group nor a region's (`<keyspace>.<region>`).
pub const META_GROUP: &str = ".meta";

/// Voters of the metadata group: five tolerate two failures, and more would only slow commits.
pub const META_VOTERS_MAX: usize = 5;

/// Format 1: before home regions (its `Create` is read as a keyspace without one).
const COMMAND_FORMAT_V1: u8 = 1;
const COMMAND_FORMAT_V2: u8 = 2;
const KEYSPACE_ROW_PREFIX: &[u8] = b"k/";
const COUNT_ROW: &[u8] = b"n";
const MEMBERSHIP_ROW: &[u8] = b"m";
const MEMBERSHIP_FORMAT_V1: u8 = 1;

pub(crate) fn encode_membership(m: &Membership) -> Vec<u8> {
    postcard::to_extend(m, vec![MEMBERSHIP_FORMAT_V1]).expect("Vec cannot fail")
}

pub(crate) fn decode_membership(bytes: &[u8]) -> Option<Membership> {
    match bytes.split_first() {
        Some((&MEMBERSHIP_FORMAT_V1, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// The metadata group's timings, from the data groups' (`[primary]`): it is used rarely (a
/// `CREATE`, a membership change), so it heartbeats 2.5 times less often and waits 1.5 times
/// longer before an election (a metadata leader's failure costs a few seconds of `CREATE`s,
/// never data), and gives a request twice the time, since one made while it elects waits.
pub fn meta_config(data: &PrimaryConfig) -> PrimaryConfig {
    PrimaryConfig {
        heartbeat_interval: data.heartbeat_interval * 5 / 2,
        election_timeout_min: data.election_timeout_min * 3 / 2,
        election_timeout_max: data.election_timeout_max * 3 / 2,
        request_timeout: data.request_timeout * 2,
        lease_reads: false,
        ..data.clone()
    }
}

/// The metadata group among the cluster's `members`.
pub fn meta_group(members: &[NodeId]) -> GroupSpec {
    let ranking = ranked(META_GROUP, members);
    GroupSpec {
        name: META_GROUP.to_string(),
        voters: ranking
            .iter()
            .copied()
            .take(META_VOTERS_MAX)
            .collect::<BTreeSet<_>>(),
        preferred: ranking[0],
        extension: Some(Arc::new(MetaMachine)),
        lease_reads: false,
        moved: false,
    }
}

/// What a metadata proposal asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Define a keyspace (validated by the proposer against the cluster's size).
    Create(KeyspaceConfig),
    /// Add a member to the leaderless ring. `founders`: the founding members, as the proposer's
    /// configuration lists them (the membership starts from them at the first change).
    Join {
        member: Joined,
        founders: Vec<NodeId>,
    },
    /// Take a member added by [`MetaCommand::Join`] off the ring.
    Decommission { id: NodeId, founders: Vec<NodeId> },
    /// `node` coordinates only joint operations for the move started at `started`.
    Begun { started: u64, node: NodeId },
    /// `node` handed off everything it holds for the move started at `started`.
    HandedOff { started: u64, node: NodeId },
    /// Re-place primary-backup keyspace `name` in region `home` (`None`: no home region). Last
    /// in the enum: postcard numbers variants by position, and format 2 logs must still decode.
    /// `seeded`: the proposer's definition of a keyspace its configuration file defines (catalog
    /// version 0), which the group never decided and so holds no row of: the machine records it
    /// with its new home.
    SetHome {
        name: String,
        home: Option<String>,
        seeded: Option<KeyspaceConfig>,
    },
}

impl MetaCommand {
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_extend(self, vec![COMMAND_FORMAT_V2]).expect("Vec cannot fail"))
    }

    fn decode(bytes: &[u8]) -> Option<MetaCommand> {
        match bytes.split_first() {
            Some((&COMMAND_FORMAT_V2, rest)) => postcard::from_bytes(rest).ok(),
            Some((&COMMAND_FORMAT_V1, rest)) => postcard::from_bytes::<MetaCommandV1>(rest)
                .ok()
                .map(MetaCommand::from),
            _ => None,
        }
    }
}

/// [`MetaCommand`] as format 1 encoded it (variant for variant; only `Create` differs).
#[derive(Serialize, Deserialize)]
enum MetaCommandV1 {
    Create(crate::catalog::KeyspaceConfigV2),
    Join {
        member: Joined,
        founders: Vec<NodeId>,
    },
    Decommission {
        id: NodeId,
        founders: Vec<NodeId>,
    },
    Begun {
        started: u64,
        node: NodeId,
    },
    HandedOff {
        started: u64,
        node: NodeId,
    },
}

impl From<MetaCommandV1> for MetaCommand {
    fn from(v: MetaCommandV1) -> Self {
        match v {
            MetaCommandV1::Create(config) => MetaCommand::Create(config.into()),
            MetaCommandV1::Join { member, founders } => MetaCommand::Join { member, founders },
            MetaCommandV1::Decommission { id, founders } => {
                MetaCommand::Decommission { id, founders }
            }
            MetaCommandV1::Begun { started, node } => MetaCommand::Begun { started, node },
            MetaCommandV1::HandedOff { started, node } => MetaCommand::HandedOff { started, node },
        }
    }
}

/// What the machine answered a [`MetaCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaAnswer {
    /// The keyspace now exists, as this entry says.
    Created(CatalogEntry),
    /// A keyspace of that name was created before.
    Exists,
    /// The cluster holds [`KEYSPACES_MAX`] created keyspaces.
    Full,
    /// The payload was not a command of this version (a newer node's proposal).
    Undecodable,
    /// A membership change was decided; the membership is now this.
    Membership(Membership),
    /// A membership change or a re-placement was refused, for this reason.
    Refused(String),
    /// The keyspace was re-placed; its entry is now this.
    Moved(CatalogEntry),
}

impl MetaAnswer {
    fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_stdvec(self).expect("Vec cannot fail"))
    }

    pub fn decode(bytes: &[u8]) -> Option<MetaAnswer> {
        postcard::from_bytes(bytes).ok()
    }
}

/// A member added after the cluster was founded: peers learn its address from here (the
/// founders' addresses are in every node's configuration).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Joined {
    pub id: NodeId,
    pub region: String,
    /// Where peers reach it (opaque here: the driver's business).
    pub peer_addr: String,
}

/// Which change a [`Move`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Join(NodeId),
    Decommission(NodeId),
}

/// A move of the leaderless ring from [`Membership::ring`] to `next`, in two phases: every live
/// member reports that it coordinates only joint operations (`begun`), then every member of the
/// current ring reports its handoff done (`handed_off`); then the ring is `next`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The index of the command that started it: names it in the reports.
    pub started: u64,
    pub change: Change,
    pub next: Vec<NodeId>,
    pub begun: BTreeSet<NodeId>,
    /// Empty until every live member has begun (the handoff phase starts then).
    pub handed_off: BTreeSet<NodeId>,
}

/// The cluster's membership, as the metadata group decided it.
///
/// The founding members (every node's configuration lists them) host every Raft group: the
/// metadata group, primary-backup keyspaces and multi-leader regions are placed on them for the
/// cluster's life. Members joined later add leaderless capacity; they can be decommissioned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The metadata index of the last command that changed it (0: as founded). Copies merge by
    /// keeping the higher.
    pub index: u64,
    /// The founding members (they host every Raft group).
    pub founders: Vec<NodeId>,
    /// The leaderless ring's members, sorted.
    pub ring: Vec<NodeId>,
    pub joined: Vec<Joined>,
    /// Decommissioned members: they own nothing and coordinate nothing.
    pub left: Vec<NodeId>,
    pub moving: Option<Move>,
}

impl Membership {
    /// The membership of a cluster as founded.
    pub fn founded(founders: &[NodeId]) -> Membership {
        let mut ring = founders.to_vec();
        ring.sort();
        ring.dedup();
        Membership {
            founders: ring.clone(),
            ring,
            ..Membership::default()
        }
    }

    /// Every member that runs and takes part: founders and joined members, not those that left.
    pub fn live(&self) -> BTreeSet<NodeId> {
        self.founders
            .iter()
            .copied()
            .chain(self.joined.iter().map(|j| j.id))
            .filter(|m| !self.left.contains(m))
            .collect()
    }

    /// Whether the handoff phase of the move started (every live member has begun).
    pub fn handing_off(&self) -> bool {
        self.moving
            .as_ref()
            .is_some_and(|m| self.live().is_subset(&m.begun))
    }

    fn join(&mut self, member: Joined, index: u64) -> Result<(), String> {
        if let Some(m) = &self.moving {
            return Err(format!(
                "busy: a move started at {} is not finished",
                m.started
            ));
        }
        if self.founders.contains(&member.id) || self.joined.iter().any(|j| j.id == member.id) {
            return Err(format!("{} is already a member", member.id));
        }
        let mut next = self.ring.clone();
        next.push(member.id);
        next.sort();
        self.moving = Some(Move {
            started: index,
            change: Change::Join(member.id),
            next,
            begun: BTreeSet::new(),
            handed_off: BTreeSet::new(),
        });
        self.joined.push(member);
        Ok(())
    }

    fn decommission(&mut self, id: NodeId, index: u64) -> Result<(), String> {
        if let Some(m) = &self.moving {
            return Err(format!(
                "busy: a move started at {} is not finished",
                m.started
            ));
        }
        if self.founders.contains(&id) {
            return Err(format!(
                "{id} is a founding member: it hosts Raft groups (metadata, primary-backup, multi-leader regions), which cannot move yet"
            ));
        }
        if !self.ring.contains(&id) {
            return Err(format!("{id} is not on the ring"));
        }
        self.moving = Some(Move {
            started: index,
            change: Change::Decommission(id),
            next: self.ring.iter().copied().filter(|m| *m != id).collect(),
            begun: BTreeSet::new(),
            handed_off: BTreeSet::new(),
        });
        Ok(())
    }

    /// Records a report; returns whether it changed anything.
    fn report(&mut self, started: u64, node: NodeId, handed_off: bool) -> bool {
        let handing = self.handing_off();
        let Some(m) = self.moving.as_mut().filter(|m| m.started == started) else {
            return false;
        };
        let changed = if handed_off {
            handing && self.ring.contains(&node) && m.handed_off.insert(node)
        } else {
            m.begun.insert(node)
        };
        if changed && handed_off && self.ring.iter().all(|n| m.handed_off.contains(n)) {
            let m = self.moving.take().expect("present");
            self.ring = m.next;
            if let Change::Decommission(id) = m.change {
                self.left.push(id);
            }
        }
        changed
    }
}

/// The metadata group's state machine: one row per created keyspace (`k/<name>`, the
/// [`CatalogEntry`]), their count (`n`), and the membership (`m`, once it first changed).
#[derive(Debug)]
pub struct MetaMachine;

impl MetaMachine {
    /// The row holding keyspace `name`'s entry.
    pub fn keyspace_row(name: &str) -> Vec<u8> {
        let mut row = KEYSPACE_ROW_PREFIX.to_vec();
        row.extend_from_slice(name.as_bytes());
        row
    }

    /// Where the rows of created keyspaces start (see [`triarch_primary::machine::extension_scan`]).
    pub const KEYSPACE_ROWS: &'static [u8] = KEYSPACE_ROW_PREFIX;

    /// Whether `row` (as a scan returns it) is a keyspace's row.
    pub fn is_keyspace_row(row: &[u8]) -> bool {
        row.starts_with(KEYSPACE_ROW_PREFIX)
    }

    /// The membership row (`m`), as stored.
    pub const MEMBERSHIP: &'static [u8] = MEMBERSHIP_ROW;

    /// Applies a membership command to the stored membership (the founded one if none).
    fn membership(
        rows: &mut Rows<'_>,
        index: LogIndex,
        founders: &[NodeId],
        change: impl FnOnce(&mut Membership) -> Result<bool, String>,
    ) -> MetaAnswer {
        let mut m = rows
            .get(MEMBERSHIP_ROW)
            .and_then(|b| decode_membership(&b))
            .unwrap_or_else(|| Membership::founded(founders));
        match change(&mut m) {
            Ok(true) => {
                m.index = index.0;
                rows.put(MEMBERSHIP_ROW, encode_membership(&m));
                MetaAnswer::Membership(m)
            }
            Ok(false) => MetaAnswer::Membership(m),
            Err(reason) => MetaAnswer::Refused(reason),
        }
    }

    fn create(rows: &mut Rows<'_>, index: LogIndex, config: KeyspaceConfig) -> MetaAnswer {
        let row = Self::keyspace_row(&config.name);
        if rows.get(&row).is_some() {
            return MetaAnswer::Exists;
        }
        let count = rows
            .get(COUNT_ROW)
            .and_then(|c| <[u8; 4]>::try_from(c.as_slice()).ok())
            .map_or(0, u32::from_be_bytes);
        if count as usize >= KEYSPACES_MAX {
            return MetaAnswer::Full;
        }
        let entry = CatalogEntry::new(config, index.0);
        rows.put(&row, crate::catalog::encode_entry(&entry));
        rows.put(COUNT_ROW, (count + 1).to_be_bytes().to_vec());
        MetaAnswer::Created(entry)
    }

    /// Re-places primary-backup keyspace `name` in `home` (the proposer checked that the
    /// region has members). The entry's version becomes this index; `created` is kept.
    fn set_home(
        rows: &mut Rows<'_>,
        index: LogIndex,
        name: &str,
        home: Option<String>,
        seeded: Option<KeyspaceConfig>,
    ) -> MetaAnswer {
        let row = Self::keyspace_row(name);
        let decided = rows
            .get(&row)
            .and_then(|b| crate::catalog::decode_entry(&b).ok());
        // A keyspace of the configuration file (every node's, version 0) has no row until its
        // first re-placement records it.
        let seeded = seeded
            .filter(|c| c.name == name)
            .map(|config| CatalogEntry::new(config, 0));
        let Some(mut entry) = decided.or(seeded) else {
            return MetaAnswer::Refused(format!("unknown keyspace '{name}'"));
        };
        if entry.config.model != triarch_core::Model::PrimaryBackup {
            return MetaAnswer::Refused(format!(
                "keyspace '{name}' is {}: only a primary-backup keyspace has a home region",
                entry.config.model
            ));
        }
        entry.config.home = home;
        entry.version = index.0;
        rows.put(&row, crate::catalog::encode_entry(&entry));
        MetaAnswer::Moved(entry)
    }
}

impl Extension for MetaMachine {
    fn apply(&self, rows: &mut Rows<'_>, index: LogIndex, payload: &[u8]) -> Bytes {
        let answer = match MetaCommand::decode(payload) {
            Some(MetaCommand::Create(config)) => Self::create(rows, index, config),
            Some(MetaCommand::Join { member, founders }) => {
                Self::membership(rows, index, &founders, |m| {
                    m.join(member, index.0).map(|()| true)
                })
            }
            Some(MetaCommand::Decommission { id, founders }) => {
                Self::membership(rows, index, &founders, |m| {
                    m.decommission(id, index.0).map(|()| true)
                })
            }
            // Reports name no founders: by then the membership row exists.
            Some(MetaCommand::Begun { started, node }) => {
                Self::membership(rows, index, &[], |m| Ok(m.report(started, node, false)))
            }
            Some(MetaCommand::HandedOff { started, node }) => {
                Self::membership(rows, index, &[], |m| Ok(m.report(started, node, true)))
            }
            Some(MetaCommand::SetHome { name, home, seeded }) => {
                Self::set_home(rows, index, &name, home, seeded)
            }
            None => MetaAnswer::Undecodable,
        };
        answer.encode()
    }
}

impl<S: Storage> Node<S> {
    /// Starts this node's member of the metadata group, if it is one of its voters, and takes in
    /// what its machine holds (entries applied before a restart).
    pub(crate) fn start_meta(&mut self, now: Now) -> Result<(), StorageError> {
        let mut env = Env {
            now: now.instant,
            storage: &mut self.storage,
        };
        self.meta
            .ensure_group(&mut env, &self.meta_spec)
            .map_err(StorageError::Engine)?;
        self.take_in_meta(now);
        Ok(())
    }

    /// Merges a committed catalog entry; returns whether it was new here.
    pub(crate) fn merge_entry(&mut self, entry: CatalogEntry) -> bool {
        match self.catalog.merge(&mut self.storage, entry) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::error!(error = %e, "catalog merge failed");
                false
            }
        }
    }

    /// This node's view of the metadata group (`None` if it is not one of its voters).
    pub fn meta_info(&self) -> Option<GroupInfo> {
        self.meta.info(META_GROUP)
    }

    /// Takes in what the metadata group applied on this voter since last time (keyspaces, the
    /// membership); the group's leader sends what is new to every other member.
    fn take_in_meta(&mut self, now: Now) {
        let Some(applied) = self.meta.applied_index(META_GROUP) else {
            return;
        };
        if applied <= self.meta_seen {
            return;
        }
        self.meta_seen = applied;
        let table = table_name(META_GROUP);
        let mut from = MetaMachine::KEYSPACE_ROWS.to_vec();
        let mut new = Vec::new();
        loop {
            let rows = match extension_scan(&self.storage, &table, &from, 256) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, "reading the metadata group's rows failed");
                    return;
                }
            };
            let done = rows.len() < 256;
            for (row, value) in &rows {
                if !MetaMachine::is_keyspace_row(row) {
                    break;
                }
                match crate::catalog::decode_entry(value) {
                    Ok(entry) => {
                        if self.merge_entry(entry.clone()) {
                            new.push(entry);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "undecodable metadata row"),
                }
            }
            match rows.last() {
                Some((last, _)) if !done && MetaMachine::is_keyspace_row(last) => {
                    from = last.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        let membership = extension_row(&self.storage, &table, MetaMachine::MEMBERSHIP)
            .ok()
            .flatten()
            .and_then(|b| decode_membership(&b));
        let leads = self.meta.leads(META_GROUP);
        if let Some(m) = membership
            && self.adopt_membership(now, m.clone())
            && leads
        {
            for &to in &self.peers {
                let message = Message::Catalog(CatalogMessage::Membership(m.clone()));
                self.outputs.push_back(Output::Send { to, message });
            }
        }
        if new.is_empty() {
            return;
        }
        for entry in &new {
            tracing::info!(node = %self.config.id, keyspace = entry.config.name, version = entry.version, home = ?entry.config.home, "keyspace created or re-placed");
        }
        if leads {
            for &to in &self.peers {
                let message = Message::Catalog(CatalogMessage::Entries(new.clone()));
                self.outputs.push_back(Output::Send { to, message });
            }
        }
        self.catalog_changed(now);
    }

    /// Proposes `command` to the metadata group on behalf of `pending`.
    fn propose_meta(
        &mut self,
        now: Now,
        request: RequestId,
        pending: MetaPending,
        command: MetaCommand,
    ) {
        self.meta_pending.insert(request, pending);
        let op = Op::Write {
            watches: Vec::new(),
            commands: vec![Command::Extension {
                payload: command.encode(),
            }],
        };
        let mut env = Env {
            now: now.instant,
            storage: &mut self.storage,
        };
        self.meta.request(&mut env, request, &self.meta_spec, op);
    }

    /// A `CREATE`, checked: proposed to the metadata group, which answers it.
    pub(crate) fn propose_create(&mut self, now: Now, request: RequestId, config: KeyspaceConfig) {
        let pending = MetaPending::Create(config.name.clone());
        self.propose_meta(now, request, pending, MetaCommand::Create(config));
    }

    /// A `TRIARCH.KEYSPACE HOME`, checked here (the keyspace exists and is primary-backup, the
    /// region has members), then decided by the metadata group (which checks the first two
    /// again against its own rows).
    pub(crate) fn propose_home(
        &mut self,
        now: Now,
        request: RequestId,
        name: String,
        home: Option<String>,
    ) {
        let Some(config) = self.catalog.get(&name).cloned() else {
            return self.fail(request, RequestError::UnknownKeyspace(name));
        };
        let seeded = self
            .catalog
            .entries()
            .find(|e| e.config.name == name && e.version == 0)
            .map(|e| e.config.clone());
        if config.model != triarch_core::Model::PrimaryBackup {
            return self.fail(
                request,
                RequestError::NeedsPrimaryBackup {
                    keyspace: name,
                    model: config.model,
                },
            );
        }
        let placed = KeyspaceConfig {
            home: home.clone(),
            ..config
        };
        if let Err(e) = crate::check_keyspace(&placed, &self.config.members) {
            return self.fail(request, RequestError::InvalidConfig(e));
        }
        self.propose_meta(
            now,
            request,
            MetaPending::Home(name.clone()),
            MetaCommand::SetHome { name, home, seeded },
        );
    }

    /// A client's membership change ([`Request::Join`], [`Request::Decommission`]).
    pub(crate) fn propose_change(
        &mut self,
        now: Now,
        request: RequestId,
        change: MembershipRequest,
    ) {
        let founders = self.founders.clone();
        let command = match change {
            MembershipRequest::Join(member) => {
                if let Err(e) = check_member(&member) {
                    return self.fail(request, e);
                }
                MetaCommand::Join { member, founders }
            }
            MembershipRequest::Decommission(id) => MetaCommand::Decommission { id, founders },
        };
        self.propose_meta(now, request, MetaPending::Change, command);
    }

    /// Internal requests' ids: above every id a driver gives client requests.
    fn internal_request(&mut self) -> RequestId {
        self.next_internal += 1;
        RequestId(INTERNAL_REQUESTS | self.next_internal)
    }

    /// Merges a membership from the metadata group (an answer, an applied row, a broadcast or
    /// gossip); if it is newer, makes it durable and moves the engines along. Returns whether it
    /// was newer.
    pub(crate) fn adopt_membership(&mut self, now: Now, m: Membership) -> bool {
        if m.index <= self.membership.index || m.founders != self.membership.founders {
            if m.founders != self.membership.founders && m.index > 0 {
                tracing::warn!(node = %self.config.id, "a membership with other founders dropped: the nodes' configurations disagree");
            }
            return false;
        }
        if let Err(e) = self.storage.put(
            crate::catalog::META_TABLE,
            MEMBERSHIP_KEY,
            &encode_membership(&m),
        ) {
            tracing::error!(error = %e, "cannot persist the membership");
            return false;
        }
        tracing::info!(node = %self.config.id, index = m.index, ring = ?m.ring, moving = m.moving.is_some(), "membership changed");
        self.membership = m;
        self.follow_membership(now);
        true
    }

    /// Brings the peers and the leaderless engine to the membership: every known member is a
    /// peer; the engine finishes a move the group finished, begins the one in progress, and
    /// starts its handoff once every live member has begun.
    pub(crate) fn follow_membership(&mut self, now: Now) {
        let me = self.config.id;
        let mut peers: Vec<NodeId> = self
            .membership
            .founders
            .iter()
            .copied()
            .chain(self.membership.joined.iter().map(|j| j.id))
            .filter(|m| *m != me)
            .collect();
        peers.sort();
        peers.dedup();
        // A new peer (a joined member) gets the catalog first, then the membership, on the same
        // link: it knows every keyspace before it learns it is a member and starts serving.
        let new: Vec<NodeId> = peers
            .iter()
            .copied()
            .filter(|p| !self.peers.contains(p))
            .collect();
        self.peers = peers;
        if self.membership.index > 0 {
            for to in new {
                let entries = self.catalog.entries().cloned().collect();
                for message in [
                    CatalogMessage::Entries(entries),
                    CatalogMessage::Membership(self.membership.clone()),
                ] {
                    self.outputs.push_back(Output::Send {
                        to,
                        message: Message::Catalog(message),
                    });
                }
            }
        }
        let keyspaces: Vec<KeyspaceConfig> = self
            .catalog
            .entries()
            .filter(|e| e.config.model == triarch_core::Model::Leaderless)
            .map(|e| e.config.clone())
            .collect();
        let mut env = LeaderlessEnv {
            now,
            storage: &mut self.storage,
            hlc: &mut self.hlc,
        };
        let target = self.membership.moving.as_ref().map(|m| m.next.as_slice());
        let engine_next = self.leaderless.next_ring().map(|r| r.nodes().to_vec());
        if let Some(next) = &engine_next
            && target != Some(next.as_slice())
        {
            // The move this engine is in was finished by the group (one move at a time).
            self.leaderless.finish_move(&mut env);
        }
        match &self.membership.moving {
            Some(m) => {
                self.leaderless.begin_move(&mut env, &m.next);
                if self.membership.handing_off() && !self.config.bug_skip_handoff {
                    self.leaderless.start_handoff(&mut env, &keyspaces);
                }
            }
            None if self.leaderless.ring().nodes() != self.membership.ring.as_slice() => {
                // A whole move went by without this node: it had left the ring (it is not
                // live, so the move did not wait for it). It only coordinates: jump to the ring.
                self.leaderless.begin_move(&mut env, &self.membership.ring);
                self.leaderless.finish_move(&mut env);
            }
            None => {}
        }
        self.report_move(now);
    }

    /// Reports this node's progress in the move, when it has some the group has not recorded.
    pub(crate) fn report_move(&mut self, now: Now) {
        let me = self.config.id;
        let Some(m) = &self.membership.moving else {
            return;
        };
        if self.report_in_flight.is_some() {
            return;
        }
        let started = m.started;
        let command = if !m.begun.contains(&me) {
            if !self.membership.live().contains(&me) || !self.leaderless.move_ready() {
                return;
            }
            MetaCommand::Begun { started, node: me }
        } else if self.membership.handing_off()
            && self.membership.ring.contains(&me)
            && !m.handed_off.contains(&me)
            && (self.config.bug_skip_handoff || self.leaderless.handoff_done())
        {
            MetaCommand::HandedOff { started, node: me }
        } else {
            return;
        };
        let request = self.internal_request();
        self.report_in_flight = Some(request);
        self.propose_meta(now, request, MetaPending::Report, command);
    }

    /// Whether this node is a member: a founder, or joined by the metadata group's decision
    /// (a node started with `joining` serves no data request before that).
    pub fn is_member(&self) -> bool {
        self.founders.contains(&self.config.id)
            || self
                .membership
                .joined
                .iter()
                .any(|j| j.id == self.config.id)
    }

    /// The membership as this node last learned it.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// What this node knows of the membership and its own part in a move.
    pub fn membership_status(&self) -> MembershipStatus {
        MembershipStatus {
            membership: self.membership.clone(),
            this_node: self.leaderless.move_status(),
        }
    }

    /// Turns the metadata engine's effects into outputs: its messages, and the answers to
    /// `CREATE`s and membership changes (the proposer merges what was decided before it
    /// replies).
    pub(crate) fn drain_meta(&mut self, now: Now) {
        self.take_in_meta(now);
        self.report_move(now);
        while let Some(effect) = self.meta.poll_effect() {
            match effect {
                Effect::Send { to, message } => self.outputs.push_back(Output::Send {
                    to,
                    message: Message::Meta(message),
                }),
                Effect::Reply {
                    request, outcome, ..
                } => {
                    let pending = self.meta_pending.remove(&request);
                    let answer = answer_of(outcome);
                    let reply = match (pending, answer) {
                        (Some(MetaPending::Create(name)), answer) => match answer {
                            Ok(MetaAnswer::Created(entry)) => {
                                if self.merge_entry(entry) {
                                    self.catalog_changed(now);
                                }
                                Reply::Created
                            }
                            Ok(MetaAnswer::Exists) => {
                                Reply::Error(RequestError::KeyspaceExists(name))
                            }
                            Ok(MetaAnswer::Full) => {
                                Reply::Error(RequestError::InvalidConfig(ConfigError::Invalid {
                                    setting: "name",
                                    reason: format!(
                                        "the cluster already holds the maximum of {KEYSPACES_MAX} keyspaces"
                                    ),
                                }))
                            }
                            Ok(other) => Reply::Error(unexpected(&other)),
                            Err(e) => Reply::Error(e),
                        },
                        (Some(MetaPending::Change), answer) => match answer {
                            Ok(MetaAnswer::Membership(m)) => {
                                self.adopt_membership(now, m);
                                Reply::Membership(Box::new(self.membership_status()))
                            }
                            Ok(MetaAnswer::Refused(reason)) => {
                                Reply::Error(RequestError::MembershipRefused(reason))
                            }
                            Ok(other) => Reply::Error(unexpected(&other)),
                            Err(e) => Reply::Error(e),
                        },
                        (Some(MetaPending::Home(name)), answer) => match answer {
                            Ok(MetaAnswer::Moved(entry)) => {
                                tracing::info!(node = %self.config.id, keyspace = name, home = ?entry.config.home, version = entry.version, "keyspace re-placed");
                                if self.merge_entry(entry) {
                                    self.catalog_changed(now);
                                }
                                Reply::Created
                            }
                            Ok(MetaAnswer::Refused(reason)) => {
                                Reply::Error(RequestError::InvalidConfig(ConfigError::Invalid {
                                    setting: "HOME",
                                    reason,
                                }))
                            }
                            Ok(other) => Reply::Error(unexpected(&other)),
                            Err(e) => Reply::Error(e),
                        },
                        (Some(MetaPending::Report), answer) => {
                            self.report_in_flight = None;
                            if let Ok(MetaAnswer::Membership(m)) = answer {
                                self.adopt_membership(now, m);
                            }
                            // Whatever happened, the next step reports again if still needed.
                            continue;
                        }
                        (None, _) => continue,
                    };
                    // Not early: what the reply reports is staged in this batch.
                    self.outputs.push_back(Output::Reply {
                        request,
                        reply,
                        early: false,
                        session: None,
                    });
                }
            }
        }
    }
}

/// The top bit marks the node's own requests to the metadata group (progress reports).
const INTERNAL_REQUESTS: u64 = 1 << 63;
/// Where a node keeps its copy of the membership, in the catalog's table.
pub(crate) const MEMBERSHIP_KEY: &[u8] = b"membership";

/// A membership change a client asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipRequest {
    Join(Joined),
    Decommission(NodeId),
}

/// What [`Node::membership_status`] and the answer to a membership change report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipStatus {
    pub membership: Membership,
    /// This node's part in the move in progress (`None` outside a move, or before it begun).
    pub this_node: Option<triarch_leaderless::membership::MoveStatus>,
}

/// What a proposal to the metadata group was for.
#[derive(Clone, Debug)]
pub(crate) enum MetaPending {
    Create(String),
    /// A re-placement of this keyspace.
    Home(String),
    Change,
    Report,
}

/// Loads this node's copy of the membership (the founded one if it never changed).
pub(crate) fn load_membership<S: Storage>(
    storage: &S,
    founders: &[NodeId],
) -> Result<Membership, StorageError> {
    match storage.get(crate::catalog::META_TABLE, MEMBERSHIP_KEY)? {
        Some(bytes) => decode_membership(&bytes)
            .ok_or_else(|| StorageError::Engine("corrupt membership in the meta table".into())),
        None => Ok(Membership::founded(founders)),
    }
}

/// A joining member's description, within limits.
fn check_member(member: &Joined) -> Result<(), RequestError> {
    let invalid = |setting, reason: String| {
        Err(RequestError::InvalidConfig(ConfigError::Invalid {
            setting,
            reason,
        }))
    };
    if !triarch_core::config::is_region_name(&member.region) {
        return invalid("region", "1 to 32 letters, digits, '_' or '-'".into());
    }
    if member.peer_addr.is_empty() || member.peer_addr.len() > 255 {
        return invalid("peer_addr", "an address of 1 to 255 characters".into());
    }
    if member.id.0 == 0 {
        return invalid("id", "node ids start at 1".into());
    }
    Ok(())
}

fn unexpected(answer: &MetaAnswer) -> RequestError {
    RequestError::Storage(format!(
        "the metadata group gave an unexpected answer: {answer:?}"
    ))
}

/// The metadata machine's answer, or why there is none.
fn answer_of(outcome: Outcome) -> Result<MetaAnswer, RequestError> {
    match outcome {
        Outcome::Applied {
            applied: Applied::Done(results),
            ..
        } => match results.as_slice() {
            [CommandResult::Extension(bytes)] => MetaAnswer::decode(bytes).ok_or_else(|| {
                RequestError::Storage(
                    "the metadata group answered in a form this node does not understand".into(),
                )
            }),
            _ => Err(RequestError::Storage(
                "the metadata group answered without its machine's result".into(),
            )),
        },
        Outcome::Storage(e) => Err(RequestError::Storage(e)),
        Outcome::NotLeader { .. } | Outcome::Unavailable { .. } | Outcome::Timeout => {
            Err(RequestError::MetadataUnavailable)
        }
        other => Err(RequestError::Storage(format!(
            "the metadata group answered {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_group_has_at_most_five_voters_and_prefers_one_of_them() {
        let members: Vec<NodeId> = (1..=9).map(NodeId).collect();
        let spec = meta_group(&members);
        assert_eq!(spec.voters.len(), META_VOTERS_MAX);
        assert!(spec.voters.contains(&spec.preferred));
        assert_eq!(meta_group(&members[..3]).voters.len(), 3);
        // Every node computes the same group.
        let mut shuffled = members.clone();
        shuffled.reverse();
        assert_eq!(meta_group(&shuffled).voters, spec.voters);
    }

    fn ids(ids: &[u32]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    fn member(id: u32) -> Joined {
        Joined {
            id: NodeId(id),
            region: "r1".into(),
            peer_addr: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn a_move_waits_for_every_live_member_then_every_old_owner() {
        let mut m = Membership::founded(&ids(&[3, 1, 2]));
        assert_eq!(m.ring, ids(&[1, 2, 3]));
        m.join(member(4), 10).unwrap();
        assert_eq!(m.moving.as_ref().unwrap().next, ids(&[1, 2, 3, 4]));
        // One change at a time.
        assert!(m.join(member(5), 11).unwrap_err().starts_with("busy"));
        assert!(
            m.decommission(NodeId(4), 11)
                .unwrap_err()
                .starts_with("busy")
        );
        // A handoff report before every live member began counts for nothing.
        assert!(!m.report(10, NodeId(1), true));
        for n in [1, 2, 3] {
            assert!(m.report(10, NodeId(n), false));
            assert!(!m.handing_off(), "n4 has not begun");
        }
        assert!(!m.report(9, NodeId(4), false), "a report names its move");
        assert!(m.report(10, NodeId(4), false));
        assert!(m.handing_off());
        // The joining node owns nothing yet: its report is not needed.
        assert!(!m.report(10, NodeId(4), true));
        for n in [1, 2] {
            assert!(m.report(10, NodeId(n), true));
            assert!(m.moving.is_some());
        }
        assert!(m.report(10, NodeId(3), true));
        assert!(m.moving.is_none());
        assert_eq!(m.ring, ids(&[1, 2, 3, 4]));
        // Founders stay; a joined member can leave, and then is gone from the ring.
        assert!(
            m.decommission(NodeId(2), 20)
                .unwrap_err()
                .contains("founding member")
        );
        assert!(
            m.join(member(4), 20)
                .unwrap_err()
                .contains("already a member")
        );
        m.decommission(NodeId(4), 20).unwrap();
        for n in [1, 2, 3, 4] {
            m.report(20, NodeId(n), false);
        }
        for n in [1, 2, 3, 4] {
            m.report(20, NodeId(n), true);
        }
        assert!(m.moving.is_none());
        assert_eq!(m.ring, ids(&[1, 2, 3]));
        assert_eq!(m.left, ids(&[4]));
        assert_eq!(m.live(), ids(&[1, 2, 3]).into_iter().collect());
    }

    #[test]
    fn commands_and_answers_round_trip_and_garbage_is_refused() {
        let c = MetaCommand::Create(KeyspaceConfig::leaderless("prefs"));
        assert_eq!(MetaCommand::decode(&c.encode()), Some(c.clone()));
        // Format 1 (before home regions), as a log written by an older node holds it.
        let MetaCommand::Create(config) = &c else {
            unreachable!()
        };
        let old = MetaCommandV1::Create(crate::catalog::KeyspaceConfigV2::from(config));
        let v1 = postcard::to_extend(&old, vec![COMMAND_FORMAT_V1]).unwrap();
        assert_eq!(MetaCommand::decode(&v1), Some(c));
        let join = MetaCommandV1::Begun {
            started: 4,
            node: NodeId(2),
        };
        let v1 = postcard::to_extend(&join, vec![COMMAND_FORMAT_V1]).unwrap();
        assert_eq!(
            MetaCommand::decode(&v1),
            Some(MetaCommand::Begun {
                started: 4,
                node: NodeId(2)
            })
        );
        assert_eq!(MetaCommand::decode(b"\x09junk"), None);
        let a = MetaAnswer::Exists;
        assert_eq!(MetaAnswer::decode(&a.encode()), Some(a));
        // SetHome came last: the commands before it keep their format 2 bytes (variant tags by
        // position), so logs written before it still decode.
        let home = MetaCommand::SetHome {
            name: "balance".into(),
            home: Some("r2".into()),
            seeded: Some(KeyspaceConfig::with_defaults(
                "balance",
                triarch_core::Model::PrimaryBackup,
                3,
            )),
        };
        assert_eq!(MetaCommand::decode(&home.encode()), Some(home));
        let handed_off = MetaCommand::HandedOff {
            started: 4,
            node: NodeId(2),
        };
        assert_eq!(&handed_off.encode()[..], &[COMMAND_FORMAT_V2, 4, 4, 2]);
        let moved = MetaAnswer::Moved(CatalogEntry {
            config: KeyspaceConfig::leaderless("prefs"),
            version: 9,
            created: 3,
        });
        assert_eq!(MetaAnswer::decode(&moved.encode()), Some(moved));
    }
}
