//! The RESP port: what redis-cli, redis-py and redis-benchmark talk to.
//!
//! One task per connection decodes commands, hands data commands to the core and writes replies
//! in command order. Pipelining is honoured: every command that has arrived is submitted before
//! the first reply is awaited, so a pipelined burst lands in one core batch (one fsync). A
//! connection has at most [`PIPELINE_MAX`] commands in flight; beyond that it stops reading, which
//! pushes back on the client through TCP.
//!
//! Bad input never takes the connection down silently: unknown commands, wrong arity and invalid
//! arguments get a `-ERR` reply and change nothing; a malformed frame gets `-ERR Protocol error`
//! and the connection is closed, as redis does, because the stream cannot be resynchronised.
//!
//! ## Commands per merge policy
//!
//! | policy | commands |
//! |---|---|
//! | `lww` | GET, SET, DEL, EXISTS, MGET, MSET |
//! | `counter` | INCR, DECR, INCRBY, DECRBY (reply: the value at the coordinating replica after the increment), GET (the value as a bulk string; nil if never written) |
//! | `set` | SADD, SREM (how many added / removed), SMEMBERS, SISMEMBER, SCARD, DEL |
//! | `map` | HSET (fields added), HGET, HDEL (fields removed), HGETALL, DEL |
//! | `siblings` | TRIARCH.GETV key -> [context, value...]; TRIARCH.SETV key context value -> the same shape, from the coordinating replica after the write; GET (the value, or an error when there are siblings), SET and DEL (supersede what the coordinator's read observed) |
//!
//! A command the key's keyspace does not support is answered
//! `-ERR keyspace 'x' uses merge policy set; INCR needs counter` and changes nothing. Removes
//! (SREM, HDEL, DEL) remove exactly what the coordinating replica's read at R observed: an add
//! concurrent with the remove, which the read did not see, survives (add wins).
//!
//! Multi-leader keyspaces take the same commands per merge policy, served by the node's
//! region: a write is acknowledged once a majority of the region's group holds it, a read
//! answers the region's state, and removes remove what the region had seen. Other regions
//! learn the write asynchronously. `TRIARCH.CONSISTENCY` does not apply to them (as for
//! primary-backup keyspaces; `CREATE ... R/W` on them is refused).
//!
//! ## Primary-backup reads per connection
//!
//! `TRIARCH.READ <policy>|DEFAULT` sets the read policy of the connection's `GET`s of
//! primary-backup keys; every primary-backup write's reply brings a session token (the index
//! of its log entry), of which the connection keeps the highest per keyspace (`TRIARCH.SESSION`
//! lists them and adopts others). A `GET` carries the connection's policy and tokens to the core,
//! which alone knows the key's keyspace: there it becomes a `Request::GetWith` when the policy
//! differs from the keyspace's, or when the read is a `session` read and the connection holds a
//! token for the keyspace (see `core::ReadOptions`). Other commands and models are unaffected.

use crate::core::{ConnReply, CoreInput, ReadOptions, ReplyTo, parse_session_tokens};
use crate::info::render_info;
use crate::server::Shared;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use triarch_core::limits::KEYSPACES_MAX;
use triarch_core::{KeyspaceSettings, MergePolicy, Model, QuorumMode, ReadPolicy};
use triarch_node::{
    CausalToken, Command, CommandResult, Consistency, KeyspaceSpec, Operation, OperationResult,
    Reply as NodeReply, Request, SessionToken, SiblingsView, View,
};
use triarch_resp::{Command as RespCommand, Decoder, Limits, Protocol, Reply};

/// Commands in flight per connection before the connection stops reading.
pub const PIPELINE_MAX: usize = 1024;

/// How a pipelined command's parts combine into its reply.
#[derive(Clone, Debug)]
enum Combine {
    /// GET: the value or null.
    Get,
    /// SET: +OK.
    Set,
    /// SET ... NX on a primary-backup key (a compare-and-set against absence): +OK, or null
    /// when the key existed.
    SetNx,
    /// DEL: number of keys that existed.
    Del,
    /// EXISTS: number of keys present.
    Exists,
    /// MGET: array of values.
    Mget,
    /// MSET: +OK once every part succeeded.
    Mset,
    /// INCR, DECR, INCRBY, DECRBY: the counter's value.
    Counter,
    /// SADD, SREM, HSET, HDEL: how many elements or fields changed.
    Changed,
    /// SMEMBERS: the members.
    Members,
    /// SISMEMBER: whether this member is in.
    IsMember(Bytes),
    /// SCARD: how many members.
    Cardinality,
    /// HGET: this field's value or null.
    Field(Bytes),
    /// HGETALL: every field and value.
    Fields,
    /// TRIARCH.GETV, TRIARCH.SETV: [context, value...].
    Siblings,
    /// TRIARCH.CAS: 1 if it wrote, 0 if not.
    Cas,
    /// EXEC: one reply per queued command, or a null array when a watched key changed.
    Exec(Vec<TxKind>),
    /// Admin commands: rendered by `admin_reply`.
    Admin(AdminKind),
}

/// A command queued between MULTI and EXEC, and how its results render.
#[derive(Clone, Copy, Debug)]
enum TxKind {
    /// GET: the value or null.
    Get,
    /// SET: +OK.
    Set,
    /// DEL of this many keys: how many existed.
    Del(usize),
    /// INCR and friends: the new value.
    Counter,
    /// TRIARCH.CAS: 1 or 0.
    Cas,
}

/// The state of a MULTI block.
#[derive(Default)]
struct Multi {
    commands: Vec<Command>,
    kinds: Vec<TxKind>,
    /// A command could not be queued: EXEC answers EXECABORT, as Redis does.
    failed: bool,
}

#[derive(Clone, Copy, Debug)]
enum AdminKind {
    Create,
    List,
    Info,
    /// TRIARCH.CLUSTER: the membership, as a map.
    Cluster,
}

struct Slot {
    seq: u64,
    /// The command's name, for errors that name it.
    command: &'static str,
    combine: Combine,
    parts: Vec<Option<NodeReply>>,
    remaining: usize,
    /// Set for commands answered without the core (PING, errors, ...).
    ready: Option<Reply>,
}

/// Per-connection settings a client can change.
#[derive(Default)]
struct Session {
    protocol: Protocol,
    read_quorum: Option<Consistency>,
    write_quorum: Option<Consistency>,
    name: Option<Bytes>,
    /// Inside MULTI: the queued commands.
    multi: Option<Multi>,
    /// `(key, version)` recorded by WATCH, checked by the next EXEC.
    watches: Vec<(Bytes, u64)>,
    /// `TRIARCH.READ`: the read policy of this connection's GETs of primary-backup keys
    /// (`None`: each keyspace's own).
    read_policy: Option<ReadPolicy>,
    /// The highest session token per primary-backup keyspace: returned by this connection's
    /// writes or adopted with `TRIARCH.SESSION`. Shared with the GETs in flight (copied on
    /// write).
    tokens: Arc<BTreeMap<String, u64>>,
}

impl Session {
    /// Keeps `token` if it is above the one held for its keyspace.
    fn remember(&mut self, token: SessionToken) {
        if self
            .tokens
            .get(&token.keyspace)
            .is_none_or(|held| *held < token.index)
        {
            Arc::make_mut(&mut self.tokens).insert(token.keyspace, token.index);
        }
    }

    /// What the core needs to turn this connection's GETs of primary-backup keys into
    /// `GetWith`s; `None` while the connection has neither a policy nor a token (every GET is
    /// then a plain one, at no cost).
    fn read_options(&self) -> Option<ReadOptions> {
        if self.read_policy.is_none() && self.tokens.is_empty() {
            return None;
        }
        Some(ReadOptions {
            policy: self.read_policy,
            sessions: self.tokens.clone(),
        })
    }
}

pub async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<ConnReply>();
    let limits = Limits {
        max_bulk_len: bulk_bytes_max(shared.value_bytes_max),
        ..Limits::default()
    };
    let mut decoder = Decoder::new(limits);
    let mut inbuf = BytesMut::with_capacity(16 * 1024);
    let mut outbuf = BytesMut::with_capacity(16 * 1024);
    let mut slots: VecDeque<Slot> = VecDeque::new();
    let mut next_seq: u64 = 0;
    let mut session = Session {
        protocol: Protocol::Resp2,
        ..Session::default()
    };
    let mut closing = false;
    loop {
        if !closing {
            // Decode and submit everything that has arrived.
            loop {
                if slots.len() >= PIPELINE_MAX {
                    break;
                }
                match decoder.decode(&mut inbuf) {
                    Ok(Some(command)) => {
                        let seq = next_seq;
                        next_seq += 1;
                        let action = dispatch(&command, &mut session, &shared, seq, &tx).await;
                        match action {
                            Action::Slot(slot) => slots.push_back(slot),
                            Action::Quit => {
                                slots.push_back(ready_slot(seq, Reply::ok()));
                                closing = true;
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        slots.push_back(ready_slot(next_seq, Reply::protocol_error(&e)));
                        tracing::debug!(?peer, error = %e, "protocol error; closing");
                        closing = true;
                        break;
                    }
                }
            }
        }
        // Write every reply that is ready, in order.
        while slots.front().is_some_and(|s| s.ready.is_some()) {
            let slot = slots.pop_front().expect("checked");
            slot.ready
                .expect("checked")
                .encode(&mut outbuf, session.protocol);
        }
        if !outbuf.is_empty() {
            if writer.write_all(&outbuf).await.is_err() {
                return;
            }
            outbuf.clear();
        }
        if closing && slots.is_empty() {
            let _ = writer.shutdown().await;
            return;
        }
        let can_read = !closing && slots.len() < PIPELINE_MAX;
        tokio::select! {
            r = reader.read_buf(&mut inbuf), if can_read => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Some(first) = rx.recv() => {
                // A write's session token is held before its reply reaches the client, so every
                // GET the client sends after seeing the reply presents it.
                let mut next = Some(first);
                while let Some((seq, part, reply, token)) = next {
                    if let Some(token) = token {
                        session.remember(token);
                    }
                    fill(&mut slots, seq, part, reply);
                    next = rx.try_recv().ok();
                }
            }
        }
    }
}

/// The largest bulk string a connection reads. Up to twice the value limit is read in full so
/// that a value that is a little too large gets a precise `value is N bytes; the limit is M`
/// error and the connection goes on; beyond that the frame is refused as a protocol error and
/// the connection closed, as Redis does past `proto-max-bulk-len`, so that one client cannot make
/// the node buffer an unbounded amount.
fn bulk_bytes_max(value_bytes_max: usize) -> usize {
    value_bytes_max
        .saturating_mul(2)
        .max(triarch_core::limits::KEY_BYTES_MAX)
        .saturating_add(1024)
        .min(triarch_core::limits::VALUE_BYTES_LIMIT)
}

fn ready_slot(seq: u64, reply: Reply) -> Slot {
    Slot {
        seq,
        command: "",
        combine: Combine::Set,
        parts: Vec::new(),
        remaining: 0,
        ready: Some(reply),
    }
}

fn fill(slots: &mut VecDeque<Slot>, seq: u64, part: u32, reply: NodeReply) {
    let Some(front) = slots.front() else { return };
    let Some(index) = seq.checked_sub(front.seq) else {
        return;
    };
    let Some(slot) = slots.get_mut(index as usize) else {
        return;
    };
    debug_assert_eq!(slot.seq, seq);
    if let Some(p) = slot.parts.get_mut(part as usize)
        && p.is_none()
    {
        *p = Some(reply);
        slot.remaining -= 1;
        if slot.remaining == 0 {
            let kind = std::mem::replace(&mut slot.combine, Combine::Set);
            slot.ready = Some(combine(slot.command, kind, std::mem::take(&mut slot.parts)));
        }
    }
}

enum Action {
    Slot(Slot),
    Quit,
}

fn error_reply(code: &str, message: impl std::fmt::Display) -> Reply {
    Reply::error(format!("{code} {message}"))
}

fn node_error(e: &triarch_node::RequestError) -> Reply {
    error_reply(e.code(), e)
}

/// A node error in the words of the command that caused it.
fn command_error(command: &str, e: &triarch_node::RequestError) -> Reply {
    if command.is_empty() {
        return node_error(e);
    }
    error_reply(e.code(), e.message_for(command))
}

fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// `[context, value...]`: what TRIARCH.GETV and TRIARCH.SETV answer.
fn siblings_reply(view: SiblingsView) -> Reply {
    let mut items = vec![Reply::bulk(CausalToken::encode(&view.context))];
    items.extend(view.values.into_iter().map(Reply::bulk));
    Reply::array(items)
}

fn combine(command: &'static str, kind: Combine, parts: Vec<Option<NodeReply>>) -> Reply {
    let collected: Vec<NodeReply> = parts
        .into_iter()
        .map(|p| p.expect("all parts filled"))
        .collect();
    // The first error decides the reply of a multi-part command (MGET reports errors per key).
    if !matches!(kind, Combine::Mget)
        && let Some(NodeReply::Error(e)) =
            collected.iter().find(|r| matches!(r, NodeReply::Error(_)))
    {
        return command_error(command, e);
    }
    let first = collected.first().cloned();
    match (kind, first) {
        (Combine::Get, Some(NodeReply::Value(v))) => Reply::bulk_or_null(v),
        (Combine::Set | Combine::Mset, _) => Reply::ok(),
        (Combine::Del, _) => Reply::Integer(
            collected
                .iter()
                .filter(|r| matches!(r, NodeReply::Written { existed: true }))
                .count() as i64,
        ),
        (Combine::Exists, _) => Reply::Integer(
            collected
                .iter()
                .filter(|r| matches!(r, NodeReply::Value(Some(_))))
                .count() as i64,
        ),
        (Combine::Mget, _) => Reply::array(collected.into_iter().map(|r| match r {
            NodeReply::Value(v) => Reply::bulk_or_null(v),
            NodeReply::Error(e) => command_error(command, &e),
            other => unexpected(Some(other)),
        })),
        (Combine::Counter, Some(NodeReply::Applied(OperationResult::Counter(v)))) => {
            Reply::Integer(v)
        }
        (Combine::Changed, Some(NodeReply::Applied(OperationResult::Changed(n)))) => {
            Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX))
        }
        (Combine::Members, Some(NodeReply::State(View::Set(members)))) => {
            Reply::Set(members.into_iter().map(Reply::bulk).collect())
        }
        (Combine::IsMember(m), Some(NodeReply::State(View::Set(members)))) => {
            Reply::Integer(i64::from(members.binary_search(&m).is_ok()))
        }
        (Combine::Cardinality, Some(NodeReply::State(View::Set(members)))) => {
            Reply::Integer(members.len() as i64)
        }
        (Combine::Field(f), Some(NodeReply::State(View::Map(fields)))) => Reply::bulk_or_null(
            fields
                .binary_search_by(|(k, _)| k.cmp(&f))
                .ok()
                .map(|i| fields[i].1.clone()),
        ),
        (Combine::Fields, Some(NodeReply::State(View::Map(fields)))) => Reply::Map(
            fields
                .into_iter()
                .map(|(k, v)| (Reply::bulk(k), Reply::bulk(v)))
                .collect(),
        ),
        (Combine::Siblings, Some(NodeReply::State(View::Siblings(view))))
        | (Combine::Siblings, Some(NodeReply::Applied(OperationResult::Siblings(view)))) => {
            siblings_reply(view)
        }
        (Combine::Cas, Some(NodeReply::Swapped(swapped))) => Reply::Integer(i64::from(swapped)),
        (Combine::SetNx, Some(NodeReply::Swapped(true))) => Reply::ok(),
        (Combine::SetNx, Some(NodeReply::Swapped(false))) => Reply::Null,
        (Combine::Exec(_), Some(NodeReply::Exec(None))) => Reply::NullArray,
        (Combine::Exec(kinds), Some(NodeReply::Exec(Some(results)))) => exec_reply(&kinds, results),
        (Combine::Admin(kind), Some(r)) => admin_reply(kind, r),
        (_, other) => unexpected(other),
    }
}

/// EXEC's array: each queued command's result as that command alone would have answered.
fn exec_reply(kinds: &[TxKind], results: Vec<CommandResult>) -> Reply {
    let mut results = results.into_iter();
    let mut items = Vec::with_capacity(kinds.len());
    let error = |r: &CommandResult| match r {
        CommandResult::NotAnInteger => {
            Some(Reply::error("ERR value is not an integer or out of range"))
        }
        CommandResult::Overflow => Some(Reply::error("ERR increment or decrement would overflow")),
        _ => None,
    };
    for kind in kinds {
        let n = match kind {
            TxKind::Del(n) => *n,
            _ => 1,
        };
        let mine: Vec<CommandResult> = results.by_ref().take(n).collect();
        if mine.len() != n {
            return unexpected(None);
        }
        if let Some(e) = mine.iter().find_map(error) {
            items.push(e);
            continue;
        }
        items.push(match (kind, &mine[0]) {
            (TxKind::Get, CommandResult::Value(v)) => Reply::bulk_or_null(v.clone()),
            (TxKind::Set, _) => Reply::ok(),
            (TxKind::Del(_), _) => Reply::Integer(
                mine.iter()
                    .filter(|r| matches!(r, CommandResult::Written { existed: true }))
                    .count() as i64,
            ),
            (TxKind::Counter, CommandResult::Integer(v)) => Reply::Integer(*v),
            (TxKind::Cas, CommandResult::Swapped(b)) => Reply::Integer(i64::from(*b)),
            _ => return unexpected(None),
        });
    }
    Reply::array(items)
}

/// Parses a command given inside MULTI into what EXEC will apply, or the error Redis gives.
fn queue_command(name: &str, args: &[Bytes]) -> Result<(Vec<Command>, TxKind), Reply> {
    let argc = args.len();
    let key = || args[1].clone();
    match name {
        "GET" if argc == 2 => Ok((vec![Command::Get { key: key() }], TxKind::Get)),
        "SET" if argc == 3 => Ok((
            vec![Command::Set {
                key: key(),
                value: args[2].clone(),
            }],
            TxKind::Set,
        )),
        "DEL" | "UNLINK" if argc >= 2 => Ok((
            args[1..]
                .iter()
                .map(|k| Command::Delete { key: k.clone() })
                .collect(),
            TxKind::Del(argc - 1),
        )),
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let by = counter_amount(name, args)?;
            Ok((vec![Command::IncrBy { key: key(), by }], TxKind::Counter))
        }
        "TRIARCH.CAS" if argc == 4 => Ok((
            vec![Command::Cas {
                key: key(),
                expected: Some(args[2].clone()),
                new: args[3].clone(),
            }],
            TxKind::Cas,
        )),
        "GET" | "SET" | "DEL" | "UNLINK" | "TRIARCH.CAS" => Err(wrong_arity(name)),
        _ => Err(Reply::error(format!(
            "ERR {} is not supported inside MULTI (GET, SET, DEL, INCR, INCRBY, DECR, DECRBY and TRIARCH.CAS are)",
            if name.is_empty() {
                "this command"
            } else {
                name
            }
        ))),
    }
}

fn unexpected(r: Option<NodeReply>) -> Reply {
    tracing::error!(?r, "unexpected reply from the node");
    Reply::error("ERR internal error: unexpected reply")
}

fn admin_reply(kind: AdminKind, r: NodeReply) -> Reply {
    match (kind, r) {
        (_, NodeReply::Error(e)) => node_error(&e),
        (AdminKind::Create, NodeReply::Created) => Reply::ok(),
        (AdminKind::Cluster, NodeReply::Membership(status)) => membership_reply(&status),
        (AdminKind::List, NodeReply::Keyspaces(all)) => {
            Reply::array(all.into_iter().map(|k| Reply::bulk(k.name)))
        }
        (AdminKind::Info, NodeReply::KeyspaceInfo(info)) => {
            let c = &info.config;
            let s = &info.stats;
            let field = |k: &str, v: String| (Reply::bulk(k.to_string()), Reply::bulk(v));
            let members = field(
                "members",
                info.members
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            if c.model == Model::PrimaryBackup {
                // Settings, then this node's view of the keyspace's Raft group; R, W, the merge
                // policy and the leaderless counters mean nothing here.
                let mut fields = vec![
                    field("name", c.name.clone()),
                    field("model", c.model.to_string()),
                    field("n", c.n.to_string()),
                    field("read", c.read.to_string()),
                    field("home", c.home.clone().unwrap_or_else(|| "none".into())),
                    members,
                ];
                let Some(g) = &info.group else {
                    fields.push(field("role", "none".into()));
                    return Reply::Map(fields);
                };
                let list = |items: Vec<String>| items.join(",");
                fields.extend(group_fields(g));
                fields.extend([
                    field("last_index", g.last_index.0.to_string()),
                    field("snapshot_index", g.snapshot_index.0.to_string()),
                    field(
                        "voters",
                        list(g.voters.iter().map(|v| v.to_string()).collect()),
                    ),
                    field(
                        "learners",
                        list(g.learners.iter().map(|v| v.to_string()).collect()),
                    ),
                    field(
                        "target_voters",
                        list(g.target.iter().map(|v| v.to_string()).collect()),
                    ),
                    field(
                        "follower_lag",
                        list(
                            g.followers
                                .iter()
                                .map(|(id, _, lag)| format!("{id}={lag}"))
                                .collect(),
                        ),
                    ),
                ]);
                return Reply::Map(fields);
            }
            if c.model == Model::MultiLeader {
                return Reply::Map(multileader_fields(&info, members));
            }
            Reply::Map(vec![
                field("name", c.name.clone()),
                field("model", c.model.to_string()),
                field("n", c.n.to_string()),
                field("r", c.r.to_string()),
                field("w", c.w.to_string()),
                field("merge", c.merge.to_string()),
                field("quorum", c.quorum.as_str().to_string()),
                members,
                field("reads", s.reads.to_string()),
                field("writes", s.writes.to_string()),
                field("read_repairs", s.read_repairs.to_string()),
                field("quorum_failures", s.quorum_failures.to_string()),
                field("lww_discarded", s.lww_discarded.to_string()),
                field("clock_ahead_refused", s.clock_ahead_refused.to_string()),
                field("clock_ahead_copied", s.clock_ahead_copied.to_string()),
                field("write_restamps", s.write_restamps.to_string()),
                field("siblings_created", s.siblings_created.to_string()),
                field("siblings_resolved", s.siblings_resolved.to_string()),
                field("forwarded", s.forwarded.to_string()),
                field("hinted_writes", s.hinted_writes.to_string()),
                field("hints_pending", s.hints_pending.to_string()),
                field("hints_delivered", s.hints_delivered.to_string()),
                field(
                    "anti_entropy_keys_repaired",
                    s.anti_entropy_keys_repaired.to_string(),
                ),
                field("tombstones_collected", s.tombstones_collected.to_string()),
            ])
        }
        (_, other) => unexpected(Some(other)),
    }
}

/// A Raft group as this node sees it: its role, the leader, the term, the commit and applied
/// indexes (a primary-backup keyspace's group, a multi-leader keyspace's region group).
fn group_fields(g: &triarch_node::GroupInfo) -> [(Reply, Reply); 5] {
    let field = |k: &str, v: String| (Reply::bulk(k.to_string()), Reply::bulk(v));
    [
        field("role", format!("{:?}", g.role).to_ascii_lowercase()),
        field(
            "leader",
            g.leader.map(|l| l.to_string()).unwrap_or_default(),
        ),
        field("term", g.term.0.to_string()),
        field("commit_index", g.commit_index.0.to_string()),
        field("applied_index", g.applied_index.0.to_string()),
    ]
}

/// `TRIARCH.KEYSPACE INFO` of a multi-leader keyspace: its settings, this node's region and
/// its view of the region's group, the region's counters, and on the region's leader what every
/// other region acknowledged and its lag (`acked`, `lag_entries`, `lag_ms`: `r2=..,r3=..`).
fn multileader_fields(
    info: &triarch_node::KeyspaceInfo,
    members: (Reply, Reply),
) -> Vec<(Reply, Reply)> {
    let c = &info.config;
    let field = |k: &str, v: String| (Reply::bulk(k.to_string()), Reply::bulk(v));
    let mut fields = vec![
        field("name", c.name.clone()),
        field("model", c.model.to_string()),
        field("n", c.n.to_string()),
        field("merge", c.merge.to_string()),
        members,
    ];
    let Some(ml) = &info.multileader else {
        // The catalog knows the keyspace but this node has not started it yet.
        fields.push(field("role", "none".into()));
        return fields;
    };
    fields.push(field("region", ml.region.clone()));
    match &ml.group {
        Some(g) => fields.extend(
            group_fields(g).into_iter().chain([field(
                "voters",
                g.voters
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )]),
        ),
        None => fields.push(field("role", "none".into())),
    }
    let k = &ml.counters;
    fields.extend([
        field("last", k.last.to_string()),
        field("trimmed", k.trimmed.to_string()),
        field("writes", k.writes.to_string()),
        field("folded", k.folded.to_string()),
        field("conflicts", k.conflicts.to_string()),
        field("merged", k.merged.to_string()),
        field("lww_discarded", k.lww_discarded.to_string()),
        field("duplicates", k.duplicates.to_string()),
        field("absorbed", k.absorbed.to_string()),
    ]);
    let per_link = |value: &dyn Fn(&triarch_multileader::engine::LinkInfo) -> u64| {
        ml.links
            .iter()
            .map(|l| format!("{}={}", l.to, value(l)))
            .collect::<Vec<_>>()
            .join(",")
    };
    fields.extend([
        field("acked", per_link(&|l| l.acked)),
        field("lag_entries", per_link(&|l| l.lag_entries)),
        field("lag_ms", per_link(&|l| l.lag_ms)),
    ]);
    fields
}

/// Handles one command: answers it at once or submits its parts to the core.
async fn dispatch(
    cmd: &RespCommand,
    session: &mut Session,
    shared: &Arc<Shared>,
    seq: u64,
    tx: &mpsc::UnboundedSender<ConnReply>,
) -> Action {
    let args = &cmd.args;
    let name = cmd.name_upper().map(|n| n.into_owned()).unwrap_or_default();
    let argc = args.len();
    let ready = |r: Reply| Action::Slot(ready_slot(seq, r));
    // The command's name for errors, as a static string (no allocation per command).
    let command = if name == "SET" && argc == 4 && upper(&args[3]) == "NX" {
        "SET ... NX"
    } else {
        static_name(&name)
    };
    // Submits `requests` as the parts of one slot, with the connection's read settings for
    // the core to apply to GETs of primary-backup keys.
    let submit_reads = |combine: Combine, requests: Vec<Request>, reads: Option<ReadOptions>| async move {
        let n = requests.len();
        for (part, request) in requests.into_iter().enumerate() {
            let reply_to = ReplyTo::Conn {
                tx: tx.clone(),
                slot: seq,
                part: part as u32,
            };
            let input = CoreInput::Request {
                request,
                reply_to,
                reads: reads.clone(),
            };
            if shared.core.send(input).await.is_err() {
                return Action::Slot(ready_slot(seq, Reply::error("ERR node is shutting down")));
            }
        }
        Action::Slot(Slot {
            seq,
            command,
            combine,
            parts: vec![None; n],
            remaining: n,
            ready: None,
        })
    };
    let submit = |combine: Combine, requests: Vec<Request>| submit_reads(combine, requests, None);
    let r = session.read_quorum;
    let w = session.write_quorum;
    // Inside MULTI every command but the transaction's own is queued.
    if let Some(multi) = &mut session.multi
        && !matches!(
            name.as_str(),
            "EXEC" | "DISCARD" | "MULTI" | "WATCH" | "UNWATCH" | "QUIT" | "RESET"
        )
    {
        return match queue_command(&name, args) {
            Ok((commands, kind)) => {
                multi.commands.extend(commands);
                multi.kinds.push(kind);
                ready(Reply::simple("QUEUED"))
            }
            Err(e) => {
                multi.failed = true;
                ready(e)
            }
        };
    }
    match name.as_str() {
        "MULTI" if argc == 1 => {
            if session.multi.is_some() {
                ready(Reply::error("ERR MULTI calls can not be nested"))
            } else {
                session.multi = Some(Multi::default());
                ready(Reply::ok())
            }
        }
        "DISCARD" if argc == 1 => match session.multi.take() {
            Some(_) => {
                session.watches.clear();
                ready(Reply::ok())
            }
            None => ready(Reply::error("ERR DISCARD without MULTI")),
        },
        "UNWATCH" if argc == 1 => {
            session.watches.clear();
            ready(Reply::ok())
        }
        "WATCH" if argc >= 2 => {
            if session.multi.is_some() {
                return ready(Reply::error("ERR WATCH inside MULTI is not allowed"));
            }
            let keys = args[1..].to_vec();
            ready(watch(shared, session, keys).await)
        }
        "EXEC" if argc == 1 => {
            let Some(multi) = session.multi.take() else {
                return ready(Reply::error("ERR EXEC without MULTI"));
            };
            let watches = std::mem::take(&mut session.watches);
            if multi.failed {
                return ready(Reply::error(
                    "EXECABORT Transaction discarded because of previous errors.",
                ));
            }
            let request = Request::Exec {
                watches,
                commands: multi.commands,
            };
            submit(Combine::Exec(multi.kinds), vec![request]).await
        }
        "TRIARCH.CAS" if argc == 4 => {
            let request = Request::Cas {
                key: args[1].clone(),
                expected: Some(args[2].clone()),
                new: args[3].clone(),
            };
            submit(Combine::Cas, vec![request]).await
        }
        "PING" => match argc {
            1 => ready(Reply::pong()),
            2 => ready(Reply::bulk(args[1].clone())),
            _ => ready(wrong_arity(&name)),
        },
        "ECHO" if argc == 2 => ready(Reply::bulk(args[1].clone())),
        "QUIT" => Action::Quit,
        "HELLO" => ready(hello(args, session, shared)),
        "SELECT" if argc == 2 => {
            if args[1].as_ref() == b"0" {
                ready(Reply::ok())
            } else {
                ready(Reply::error("ERR DB index is out of range"))
            }
        }
        "CLIENT" => ready(client(args, session)),
        "CONFIG" => ready(config(args, shared)),
        "COMMAND" => ready(Reply::array(Vec::new())),
        "INFO" => {
            let snapshot = shared.snapshot().await;
            ready(Reply::verbatim_text(render_info(shared, snapshot.as_ref())))
        }
        "GET" if argc == 2 => {
            let request = Request::Get {
                key: args[1].clone(),
                r,
            };
            submit_reads(Combine::Get, vec![request], session.read_options()).await
        }
        "SET" if argc == 3 => {
            let request = Request::Set {
                key: args[1].clone(),
                value: args[2].clone(),
                w,
            };
            submit(Combine::Set, vec![request]).await
        }
        // Only primary-backup keyspaces can decide "if absent" atomically (a compare-and-set).
        "SET" if argc == 4 && upper(&args[3]) == "NX" => {
            let request = Request::Cas {
                key: args[1].clone(),
                expected: None,
                new: args[2].clone(),
            };
            submit(Combine::SetNx, vec![request]).await
        }
        "SET" if argc > 3 => ready(Reply::error(
            "ERR SET options (EX, PX, XX, GET, KEEPTTL) are not supported by Triarch; NX is, on primary-backup keyspaces",
        )),
        "DEL" | "UNLINK" if argc >= 2 => {
            let requests = args[1..]
                .iter()
                .map(|k| Request::Delete { key: k.clone(), w })
                .collect();
            submit(Combine::Del, requests).await
        }
        "EXISTS" if argc >= 2 => {
            let requests = args[1..]
                .iter()
                .map(|k| Request::Get { key: k.clone(), r })
                .collect();
            submit(Combine::Exists, requests).await
        }
        "MGET" if argc >= 2 => {
            let requests = args[1..]
                .iter()
                .map(|k| Request::Get { key: k.clone(), r })
                .collect();
            submit(Combine::Mget, requests).await
        }
        "MSET" if argc >= 3 && !argc.is_multiple_of(2) => {
            let requests = args[1..]
                .chunks(2)
                .map(|kv| Request::Set {
                    key: kv[0].clone(),
                    value: kv[1].clone(),
                    w,
                })
                .collect();
            submit(Combine::Mset, requests).await
        }
        "TRIARCH.KEYSPACE" => match keyspace_command(args) {
            Ok((kind, request)) => submit(Combine::Admin(kind), vec![request]).await,
            Err(reply) => ready(reply),
        },
        "TRIARCH.CLUSTER" => match cluster_command(args) {
            Ok(request) => submit(Combine::Admin(AdminKind::Cluster), vec![request]).await,
            Err(reply) => ready(reply),
        },
        "TRIARCH.CONSISTENCY" => ready(consistency(args, session)),
        "TRIARCH.READ" => ready(read_policy(args, session)),
        "TRIARCH.SESSION" => ready(session_tokens(args, session)),
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => match counter_amount(&name, args) {
            Ok(amount) => {
                let request = apply(args[1].clone(), Operation::CounterAdd(amount), r, w);
                submit(Combine::Counter, vec![request]).await
            }
            Err(reply) => ready(reply),
        },
        "SADD" | "SREM" if argc >= 3 => {
            let elements = args[2..].to_vec();
            let op = if name == "SADD" {
                Operation::SetAdd(elements)
            } else {
                Operation::SetRemove(elements)
            };
            submit(Combine::Changed, vec![apply(args[1].clone(), op, r, w)]).await
        }
        "SMEMBERS" | "SCARD" if argc == 2 => {
            let combine = if name == "SMEMBERS" {
                Combine::Members
            } else {
                Combine::Cardinality
            };
            submit(combine, vec![read(args[1].clone(), r)]).await
        }
        "SISMEMBER" if argc == 3 => {
            let combine = Combine::IsMember(args[2].clone());
            submit(combine, vec![read(args[1].clone(), r)]).await
        }
        "HSET" if argc >= 4 && argc.is_multiple_of(2) => {
            let pairs = args[2..]
                .chunks(2)
                .map(|fv| (fv[0].clone(), fv[1].clone()))
                .collect();
            let request = apply(args[1].clone(), Operation::MapSet(pairs), r, w);
            submit(Combine::Changed, vec![request]).await
        }
        "HDEL" if argc >= 3 => {
            let op = Operation::MapDelete(args[2..].to_vec());
            submit(Combine::Changed, vec![apply(args[1].clone(), op, r, w)]).await
        }
        "HGET" if argc == 3 => {
            let combine = Combine::Field(args[2].clone());
            submit(combine, vec![read(args[1].clone(), r)]).await
        }
        "HGETALL" if argc == 2 => submit(Combine::Fields, vec![read(args[1].clone(), r)]).await,
        "TRIARCH.GETV" if argc == 2 => {
            submit(Combine::Siblings, vec![read(args[1].clone(), r)]).await
        }
        "TRIARCH.SETV" if argc == 4 => match CausalToken::decode(&args[2]) {
            Ok(context) => {
                let op = Operation::SiblingsWrite {
                    context,
                    value: Some(args[3].clone()),
                };
                submit(Combine::Siblings, vec![apply(args[1].clone(), op, r, w)]).await
            }
            Err(e) => ready(Reply::error(format!(
                "ERR invalid causal context: {e} (pass the context TRIARCH.GETV returned, or \"\" for none)"
            ))),
        },
        "GET" | "SET" | "ECHO" | "SELECT" | "DEL" | "UNLINK" | "EXISTS" | "MGET" | "MSET"
        | "SADD" | "SREM" | "SMEMBERS" | "SCARD" | "SISMEMBER" | "HSET" | "HDEL" | "HGET"
        | "HGETALL" | "TRIARCH.GETV" | "TRIARCH.SETV" | "TRIARCH.CAS" | "MULTI" | "EXEC"
        | "DISCARD" | "WATCH" | "UNWATCH" => ready(wrong_arity(&name)),
        _ => ready(unknown_command(args)),
    }
}

/// Redis's wording, so that client libraries recognise it.
fn unknown_command(args: &[Bytes]) -> Reply {
    let shown = |b: &Bytes| String::from_utf8_lossy(&b[..b.len().min(128)]).into_owned();
    let name = args.first().map(shown).unwrap_or_default();
    let rest: Vec<String> = args
        .iter()
        .skip(1)
        .take(8)
        .map(|a| format!("'{}'", shown(a)))
        .collect();
    Reply::error(format!(
        "ERR unknown command '{name}', with args beginning with: {}",
        rest.join(" ")
    ))
}

fn apply(key: Bytes, op: Operation, r: Option<Consistency>, w: Option<Consistency>) -> Request {
    Request::Apply { key, op, r, w }
}

fn read(key: Bytes, r: Option<Consistency>) -> Request {
    Request::Read { key, r }
}

/// The command names that can appear in a node's error, as static strings.
fn static_name(name: &str) -> &'static str {
    const NAMES: [&str; 25] = [
        "GET",
        "SET",
        "DEL",
        "UNLINK",
        "EXISTS",
        "MGET",
        "MSET",
        "INCR",
        "DECR",
        "INCRBY",
        "DECRBY",
        "SADD",
        "SREM",
        "SMEMBERS",
        "SISMEMBER",
        "SCARD",
        "HSET",
        "HGET",
        "HDEL",
        "HGETALL",
        "TRIARCH.GETV",
        "TRIARCH.SETV",
        "TRIARCH.CAS",
        "WATCH",
        "EXEC",
    ];
    NAMES.into_iter().find(|n| *n == name).unwrap_or("")
}

/// WATCH: reads the keys' versions (linearizably, at their keyspace's leader) and remembers
/// them for the next EXEC. Waits for the answer before the connection reads on: the session
/// must hold the versions before a following EXEC is queued.
async fn watch(shared: &Arc<Shared>, session: &mut Session, keys: Vec<Bytes>) -> Reply {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let request = Request::Watch { keys: keys.clone() };
    let reply_to = ReplyTo::Once(tx);
    let input = CoreInput::Request {
        request,
        reply_to,
        reads: None,
    };
    if shared.core.send(input).await.is_err() {
        return Reply::error("ERR node is shutting down");
    }
    match rx.await.map(|(reply, _)| reply) {
        Ok(NodeReply::Watched(records)) if records.len() == keys.len() => {
            let versions = records.into_iter().map(|r| r.version);
            session.watches.extend(keys.into_iter().zip(versions));
            Reply::ok()
        }
        Ok(NodeReply::Error(e)) => command_error("WATCH", &e),
        Ok(other) => unexpected(Some(other)),
        Err(_) => Reply::error("ERR node is shutting down"),
    }
}

/// The signed amount of INCR, DECR, INCRBY, DECRBY, or the error Redis gives.
fn counter_amount(name: &str, args: &[Bytes]) -> Result<i64, Reply> {
    let by = matches!(name, "INCRBY" | "DECRBY");
    if args.len() != if by { 3 } else { 2 } {
        return Err(wrong_arity(name));
    }
    let amount = if by {
        std::str::from_utf8(&args[2])
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| Reply::error("ERR value is not an integer or out of range"))?
    } else {
        1
    };
    if name.starts_with("DECR") {
        amount
            .checked_neg()
            .ok_or_else(|| Reply::error("ERR decrement would overflow"))
    } else {
        Ok(amount)
    }
}

fn upper(b: &Bytes) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn hello(args: &[Bytes], session: &mut Session, shared: &Shared) -> Reply {
    let mut i = 1;
    if let Some(v) = args.get(1) {
        let version = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<i64>().ok());
        match version.and_then(Protocol::from_version) {
            Some(p) => session.protocol = p,
            None => return Reply::error("NOPROTO unsupported protocol version"),
        }
        i = 2;
    }
    while i < args.len() {
        match upper(&args[i]).as_str() {
            "AUTH" if i + 2 < args.len() => i += 3,
            "SETNAME" if i + 1 < args.len() => {
                session.name = Some(args[i + 1].clone());
                i += 2;
            }
            _ => return Reply::error("ERR syntax error in HELLO"),
        }
    }
    let s = |v: &str| Reply::bulk(v.to_string());
    Reply::Map(vec![
        (s("server"), s("triarch")),
        (s("version"), s(env!("CARGO_PKG_VERSION"))),
        (
            s("proto"),
            Reply::Integer(i64::from(session.protocol.version())),
        ),
        (s("id"), Reply::Integer(i64::from(shared.node_id.0))),
        (s("mode"), s("standalone")),
        (s("role"), s("master")),
        (s("modules"), Reply::array(Vec::new())),
    ])
}

fn client(args: &[Bytes], session: &mut Session) -> Reply {
    let Some(sub) = args.get(1) else {
        return wrong_arity("client");
    };
    match upper(sub).as_str() {
        "SETINFO" if args.len() == 4 => Reply::ok(),
        "SETNAME" if args.len() == 3 => {
            session.name = Some(args[2].clone());
            Reply::ok()
        }
        "GETNAME" => match &session.name {
            Some(n) => Reply::bulk(n.clone()),
            None => Reply::Null,
        },
        "ID" => Reply::Integer(1),
        "NO-EVICT" | "NO-TOUCH" | "REPLY" => Reply::ok(),
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(sub)
        )),
    }
}

/// `CONFIG GET` answers the parameters clients probe on connect (redis-benchmark asks for `save`
/// and `appendonly`); `CONFIG SET` is refused: configuration lives in the node's file.
fn config(args: &[Bytes], shared: &Shared) -> Reply {
    let Some(sub) = args.get(1) else {
        return wrong_arity("config");
    };
    match upper(sub).as_str() {
        "GET" if args.len() >= 3 => {
            let known = [
                ("save", String::new()),
                ("appendonly", "yes".to_string()),
                ("appendfsync", "always".to_string()),
                ("databases", "1".to_string()),
                ("proto-max-bulk-len", shared.value_bytes_max.to_string()),
            ];
            let mut pairs = Vec::new();
            for pattern in &args[2..] {
                let p = String::from_utf8_lossy(pattern).to_ascii_lowercase();
                for (k, v) in &known {
                    if glob_match(&p, k) && !pairs.iter().any(|(kk, _): &(String, String)| kk == k)
                    {
                        pairs.push((k.to_string(), v.clone()));
                    }
                }
            }
            Reply::Map(
                pairs
                    .into_iter()
                    .map(|(k, v)| (Reply::bulk(k), Reply::bulk(v)))
                    .collect(),
            )
        }
        "GET" => wrong_arity("config|get"),
        "SET" | "RESETSTAT" | "REWRITE" => {
            Reply::error("ERR CONFIG SET is not supported: Triarch is configured by its TOML file")
        }
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(sub)
        )),
    }
}

/// `*` and `?` globbing, enough for CONFIG GET patterns.
fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

fn parse_u8(v: &Bytes, what: &str) -> Result<u8, Reply> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<u8>().ok())
        .ok_or_else(|| Reply::error(format!("ERR {what} must be an integer between 1 and 255")))
}

fn parse_level(v: &Bytes, what: &str) -> Result<Consistency, Reply> {
    std::str::from_utf8(v)
        .ok()
        .and_then(Consistency::parse)
        .ok_or_else(|| {
            Reply::error(format!(
                "ERR {what} must be ONE, QUORUM, ALL or an integer between 1 and 255"
            ))
        })
}

/// `TRIARCH.CONSISTENCY ONE|QUORUM|ALL | [R r] [W w] | DEFAULT`: this connection's read and
/// write quorums, as counts or as levels resolved against each key's N (QUORUM is N/2+1).
/// Without arguments it answers the current setting.
fn consistency(args: &[Bytes], session: &mut Session) -> Reply {
    let usage = || {
        Reply::error(
            "ERR usage: TRIARCH.CONSISTENCY ONE|QUORUM|ALL | [R <r>] [W <w>] | DEFAULT (r and w: a count or ONE, QUORUM, ALL)",
        )
    };
    let shown = |q: Option<Consistency>| q.map_or("default".to_string(), |c| c.to_string());
    match args.len() {
        1 => {
            return Reply::bulk(format!(
                "r={} w={}",
                shown(session.read_quorum),
                shown(session.write_quorum)
            ));
        }
        2 if upper(&args[1]) == "DEFAULT" => {
            session.read_quorum = None;
            session.write_quorum = None;
            return Reply::ok();
        }
        2 => {
            return match upper(&args[1]).as_str() {
                level @ ("ONE" | "QUORUM" | "ALL") => {
                    let level = Consistency::parse(level);
                    session.read_quorum = level;
                    session.write_quorum = level;
                    Reply::ok()
                }
                _ => usage(),
            };
        }
        n if n.is_multiple_of(2) => return usage(),
        _ => {}
    }
    let (mut r, mut w) = (session.read_quorum, session.write_quorum);
    for pair in args[1..].chunks(2) {
        let setting = upper(&pair[0]);
        let value = match parse_level(&pair[1], &setting) {
            Ok(v) => v,
            Err(e) => return e,
        };
        match setting.as_str() {
            "R" => r = Some(value),
            "W" => w = Some(value),
            other => {
                return Reply::error(format!(
                    "ERR unknown consistency setting '{other}' (expected R or W)"
                ));
            }
        }
    }
    session.read_quorum = r;
    session.write_quorum = w;
    Reply::ok()
}

/// `TRIARCH.READ <policy> | DEFAULT`: the read policy of this connection's GETs of
/// primary-backup keys (`linearizable`, `lease`, `bounded:<ms>`, `session`); `DEFAULT` goes
/// back to each keyspace's own. Without an argument it answers the current one. Other commands
/// and other models are unaffected.
fn read_policy(args: &[Bytes], session: &mut Session) -> Reply {
    match args {
        [_] => Reply::bulk(
            session
                .read_policy
                .map_or("default".to_string(), |p| p.to_string()),
        ),
        [_, policy] if upper(policy) == "DEFAULT" => {
            session.read_policy = None;
            Reply::ok()
        }
        [_, policy] => match ReadPolicy::parse(&String::from_utf8_lossy(policy)) {
            Ok(p) => {
                session.read_policy = Some(p);
                Reply::ok()
            }
            Err(e) => Reply::error(format!("ERR {e}")),
        },
        _ => {
            Reply::error("ERR usage: TRIARCH.READ linearizable|lease|bounded:<ms>|session|DEFAULT")
        }
    }
}

/// `TRIARCH.SESSION [<keyspace:index> ...]`: without arguments, this connection's session
/// tokens (one `keyspace:index` per primary-backup keyspace it wrote to or adopted a token
/// of); with arguments, adopts those tokens (e.g. carried from another connection), keeping
/// the highest index per keyspace. A malformed token adopts nothing.
fn session_tokens(args: &[Bytes], session: &mut Session) -> Reply {
    if args.len() == 1 {
        return Reply::array(
            session
                .tokens
                .iter()
                .map(|(keyspace, index)| Reply::bulk(format!("{keyspace}:{index}"))),
        );
    }
    let mut tokens = Vec::with_capacity(args.len() - 1);
    for arg in &args[1..] {
        match std::str::from_utf8(arg)
            .map_err(|_| "not text".to_string())
            .and_then(parse_session_tokens)
        {
            Ok(parsed) => tokens.extend(parsed),
            Err(e) => {
                return Reply::error(format!(
                    "ERR invalid session token '{}': {e}",
                    String::from_utf8_lossy(&arg[..arg.len().min(128)])
                ));
            }
        }
    }
    let mut names: Vec<&str> = session.tokens.keys().map(String::as_str).collect();
    names.extend(tokens.iter().map(|t| t.keyspace.as_str()));
    names.sort_unstable();
    names.dedup();
    if names.len() > KEYSPACES_MAX {
        return Reply::error(format!(
            "ERR a connection holds at most {KEYSPACES_MAX} session tokens (one per keyspace)"
        ));
    }
    for token in tokens {
        session.remember(token);
    }
    Reply::ok()
}

/// `TRIARCH.CLUSTER JOIN <id> <region> <peer-addr> | DECOMMISSION <id> | MEMBERS`.
fn cluster_command(args: &[Bytes]) -> Result<Request, Reply> {
    let usage = || {
        Reply::error(
            "ERR usage: TRIARCH.CLUSTER JOIN <id> <region> <peer-addr> | DECOMMISSION <id> | MEMBERS",
        )
    };
    let id = |b: &Bytes| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.trim_start_matches('n').parse::<u32>().ok())
            .filter(|id| *id > 0)
            .map(triarch_core::NodeId)
            .ok_or_else(|| Reply::error("ERR node ids are positive integers (3 or n3)"))
    };
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    let sub = args.get(1).map(upper).ok_or_else(usage)?;
    match sub.as_str() {
        "MEMBERS" if args.len() == 2 => Ok(Request::Membership),
        "JOIN" if args.len() == 5 => {
            let peer_addr = text(&args[4]);
            if peer_addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(Reply::error(
                    "ERR peer-addr must be an address peers can dial, as ip:port",
                ));
            }
            Ok(Request::Join(triarch_node::meta::Joined {
                id: id(&args[2])?,
                region: text(&args[3]),
                peer_addr,
            }))
        }
        "DECOMMISSION" if args.len() == 3 => Ok(Request::Decommission { id: id(&args[2])? }),
        _ => Err(usage()),
    }
}

/// The membership as a map: the ring, joined and departed members, the move in progress and
/// this node's part in it.
fn membership_reply(status: &triarch_node::meta::MembershipStatus) -> Reply {
    let m = &status.membership;
    let ids = |ids: &mut dyn Iterator<Item = &triarch_core::NodeId>| {
        ids.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    };
    let field = |k: &str, v: String| (Reply::bulk(k.to_string()), Reply::bulk(v));
    let mut fields = vec![
        field("index", m.index.to_string()),
        field("founders", ids(&mut m.founders.iter())),
        field("ring", ids(&mut m.ring.iter())),
        field(
            "joined",
            m.joined
                .iter()
                .map(|j| format!("{}@{}@{}", j.id, j.region, j.peer_addr))
                .collect::<Vec<_>>()
                .join(","),
        ),
        field("left", ids(&mut m.left.iter())),
    ];
    match &m.moving {
        None => fields.push(field("moving", "none".into())),
        Some(mv) => {
            let change = match mv.change {
                triarch_node::meta::Change::Join(id) => format!("join {id}"),
                triarch_node::meta::Change::Decommission(id) => format!("decommission {id}"),
            };
            fields.extend([
                field("moving", change),
                field(
                    "phase",
                    if m.handing_off() { "handoff" } else { "begin" }.into(),
                ),
                field("next", ids(&mut mv.next.iter())),
                field("begun", ids(&mut mv.begun.iter())),
                field("handed_off", ids(&mut mv.handed_off.iter())),
            ]);
        }
    }
    if let Some(me) = &status.this_node {
        let sent: u64 = me.destinations.values().map(|d| d.keys_sent).sum();
        let bytes: u64 = me.destinations.values().map(|d| d.bytes_sent).sum();
        let in_flight: u64 = me.destinations.values().map(|d| d.batches_in_flight).sum();
        fields.extend([
            field("this_node_keys_walked", me.keys_walked.to_string()),
            field("this_node_keys_sent", sent.to_string()),
            field("this_node_bytes_sent", bytes.to_string()),
            field("this_node_batches_in_flight", in_flight.to_string()),
            field("this_node_handoff_done", me.handoff_done.to_string()),
        ]);
    }
    Reply::Map(fields)
}

/// `TRIARCH.KEYSPACE CREATE <name> MODEL <model> [N n] [R r] [W w] [MERGE policy]
/// [READ policy] [QUORUM strict|sloppy] [HOME region] | LIST | INFO <name>`. Whether a setting applies to
/// the model is the node's to say (`KeyspaceConfig::validate`).
fn keyspace_command(args: &[Bytes]) -> Result<(AdminKind, Request), Reply> {
    let usage = || {
        Reply::error(
            "ERR usage: TRIARCH.KEYSPACE CREATE <name> MODEL <leaderless|primary-backup|multi-leader> [N n] [R r] [W w] [MERGE policy] [READ linearizable|lease|bounded:<ms>|session] [QUORUM strict|sloppy] [HOME region] | HOME <name> <region|none> | LIST | INFO <name>",
        )
    };
    let sub = args.get(1).map(upper).ok_or_else(usage)?;
    match sub.as_str() {
        "LIST" if args.len() == 2 => Ok((AdminKind::List, Request::ListKeyspaces)),
        "HOME" if args.len() == 4 => {
            let name = String::from_utf8_lossy(&args[2]).into_owned();
            let region = String::from_utf8_lossy(&args[3]).into_owned();
            let home = (!region.eq_ignore_ascii_case("none")).then_some(region);
            Ok((AdminKind::Create, Request::SetHome { name, home }))
        }
        "INFO" if args.len() == 3 => {
            let name = String::from_utf8_lossy(&args[2]).into_owned();
            Ok((AdminKind::Info, Request::KeyspaceInfo { name }))
        }
        "CREATE" if args.len() >= 5 && !args.len().is_multiple_of(2) => {
            let name = String::from_utf8(args[2].to_vec()).map_err(|_| {
                Reply::error("ERR keyspace names are ASCII letters, digits, '_' or '-'")
            })?;
            let mut spec = KeyspaceSpec {
                name,
                model: Model::Leaderless,
                settings: KeyspaceSettings::default(),
            };
            let mut model = None;
            for pair in args[3..].chunks(2) {
                let value = &pair[1];
                match upper(&pair[0]).as_str() {
                    "MODEL" => {
                        let m: Model = String::from_utf8_lossy(value)
                            .parse()
                            .map_err(|e| Reply::error(format!("ERR {e}")))?;
                        model = Some(m);
                    }
                    "N" => spec.settings.n = Some(parse_u8(value, "N")?),
                    "R" => spec.settings.r = Some(parse_u8(value, "R")?),
                    "W" => spec.settings.w = Some(parse_u8(value, "W")?),
                    "MERGE" => {
                        let m: MergePolicy = String::from_utf8_lossy(value)
                            .parse()
                            .map_err(|e| Reply::error(format!("ERR {e}")))?;
                        spec.settings.merge = Some(m);
                    }
                    "READ" => {
                        let policy = ReadPolicy::parse(&String::from_utf8_lossy(value))
                            .map_err(|e| Reply::error(format!("ERR {e}")))?;
                        spec.settings.read = Some(policy);
                    }
                    "QUORUM" => {
                        let q: QuorumMode = String::from_utf8_lossy(value)
                            .parse()
                            .map_err(|e| Reply::error(format!("ERR {e}")))?;
                        spec.settings.quorum = Some(q);
                    }
                    "HOME" => {
                        spec.settings.home = Some(String::from_utf8_lossy(value).into_owned());
                    }
                    other => {
                        return Err(Reply::error(format!(
                            "ERR unknown keyspace setting '{other}'"
                        )));
                    }
                }
            }
            spec.model = model.ok_or_else(|| Reply::error("ERR MODEL is required"))?;
            Ok((AdminKind::Create, Request::CreateKeyspace(spec)))
        }
        _ => Err(usage()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    #[test]
    fn keyspace_create_parses_and_names_bad_settings() {
        let (_, r) = keyspace_command(&args(&[
            "TRIARCH.KEYSPACE",
            "CREATE",
            "prefs",
            "MODEL",
            "leaderless",
            "W",
            "3",
        ]))
        .unwrap();
        let Request::CreateKeyspace(spec) = r else {
            panic!()
        };
        assert_eq!(
            (spec.name.as_str(), spec.model, spec.settings.w),
            ("prefs", Model::Leaderless, Some(3))
        );
        let e = keyspace_command(&args(&[
            "TRIARCH.KEYSPACE",
            "CREATE",
            "x",
            "MODEL",
            "paxos",
        ]))
        .unwrap_err();
        assert!(format!("{e:?}").contains("paxos"));
        let e = keyspace_command(&args(&[
            "TRIARCH.KEYSPACE",
            "CREATE",
            "x",
            "MODEL",
            "leaderless",
            "Q",
            "1",
        ]))
        .unwrap_err();
        assert!(format!("{e:?}").contains("unknown keyspace setting 'Q'"));
        assert!(keyspace_command(&args(&["TRIARCH.KEYSPACE", "CREATE", "x", "N", "3"])).is_err());
        assert!(keyspace_command(&args(&["TRIARCH.KEYSPACE"])).is_err());
        for (region, home) in [("r2", Some("r2")), ("none", None), ("NONE", None)] {
            let (_, r) =
                keyspace_command(&args(&["TRIARCH.KEYSPACE", "HOME", "balance", region])).unwrap();
            assert_eq!(
                r,
                Request::SetHome {
                    name: "balance".into(),
                    home: home.map(String::from)
                }
            );
        }
        assert!(keyspace_command(&args(&["TRIARCH.KEYSPACE", "HOME", "balance"])).is_err());
    }

    #[test]
    fn glob_matches_config_patterns() {
        assert!(glob_match("*", "save"));
        assert!(glob_match("app*", "appendonly"));
        assert!(glob_match("sav?", "save"));
        assert!(!glob_match("sav", "save"));
    }

    #[test]
    fn unknown_commands_use_redis_wording() {
        let r = unknown_command(&args(&["FOO", "a", "b"]));
        assert_eq!(
            r,
            Reply::error("ERR unknown command 'FOO', with args beginning with: 'a' 'b'")
        );
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn session() -> Session {
        Session::default()
    }

    #[test]
    fn counter_commands_parse_their_amounts_as_redis_does() {
        let a = |w: &[&str]| {
            let args = args(w);
            counter_amount(&w[0].to_ascii_uppercase(), &args)
        };
        assert_eq!(a(&["INCR", "k"]), Ok(1));
        assert_eq!(a(&["DECR", "k"]), Ok(-1));
        assert_eq!(a(&["INCRBY", "k", "-7"]), Ok(-7));
        assert_eq!(a(&["DECRBY", "k", "7"]), Ok(-7));
        assert_eq!(
            a(&["INCRBY", "k", "x"]),
            Err(Reply::error("ERR value is not an integer or out of range"))
        );
        assert_eq!(
            a(&["INCRBY", "k", "9223372036854775808"]),
            Err(Reply::error("ERR value is not an integer or out of range"))
        );
        assert_eq!(
            a(&["DECRBY", "k", "-9223372036854775808"]),
            Err(Reply::error("ERR decrement would overflow"))
        );
        assert_eq!(a(&["INCR", "k", "1"]), Err(wrong_arity("INCR")));
        assert_eq!(a(&["INCRBY", "k"]), Err(wrong_arity("INCRBY")));
    }

    #[test]
    fn consistency_takes_levels_counts_and_default() {
        let mut s = session();
        assert_eq!(
            consistency(&args(&["TRIARCH.CONSISTENCY", "quorum"]), &mut s),
            Reply::ok()
        );
        assert_eq!(
            (s.read_quorum, s.write_quorum),
            (Some(Consistency::Quorum), Some(Consistency::Quorum))
        );
        assert_eq!(
            consistency(
                &args(&["TRIARCH.CONSISTENCY", "R", "one", "W", "3"]),
                &mut s
            ),
            Reply::ok()
        );
        assert_eq!(
            (s.read_quorum, s.write_quorum),
            (Some(Consistency::One), Some(Consistency::Count(3)))
        );
        assert_eq!(
            consistency(&args(&["TRIARCH.CONSISTENCY"]), &mut s),
            Reply::bulk("r=one w=3".to_string())
        );
        assert_eq!(
            consistency(&args(&["TRIARCH.CONSISTENCY", "ALL"]), &mut s),
            Reply::ok()
        );
        assert_eq!(s.read_quorum, Some(Consistency::All));
        assert_eq!(
            consistency(&args(&["TRIARCH.CONSISTENCY", "DEFAULT"]), &mut s),
            Reply::ok()
        );
        assert_eq!((s.read_quorum, s.write_quorum), (None, None));
        // Bad input changes nothing.
        for bad in [
            &["TRIARCH.CONSISTENCY", "MOST"][..],
            &["TRIARCH.CONSISTENCY", "R", "0"],
            &["TRIARCH.CONSISTENCY", "R", "many"],
            &["TRIARCH.CONSISTENCY", "Q", "1"],
            &["TRIARCH.CONSISTENCY", "R"],
        ] {
            assert!(
                matches!(consistency(&args(bad), &mut s), Reply::Error(_)),
                "{bad:?}"
            );
            assert_eq!((s.read_quorum, s.write_quorum), (None, None), "{bad:?}");
        }
    }

    #[test]
    fn typed_replies_combine_into_redis_shapes() {
        let one = |r: NodeReply| vec![Some(r)];
        let set = NodeReply::State(View::Set(vec![b("a"), b("b")]));
        assert_eq!(
            combine("SMEMBERS", Combine::Members, one(set.clone())),
            Reply::Set(vec![Reply::bulk(b("a")), Reply::bulk(b("b"))])
        );
        assert_eq!(
            combine("SISMEMBER", Combine::IsMember(b("b")), one(set.clone())),
            Reply::Integer(1)
        );
        assert_eq!(
            combine("SISMEMBER", Combine::IsMember(b("z")), one(set.clone())),
            Reply::Integer(0)
        );
        assert_eq!(
            combine("SCARD", Combine::Cardinality, one(set)),
            Reply::Integer(2)
        );
        let map = NodeReply::State(View::Map(vec![(b("f"), b("1")), (b("g"), b("2"))]));
        assert_eq!(
            combine("HGET", Combine::Field(b("g")), one(map.clone())),
            Reply::bulk(b("2"))
        );
        assert_eq!(
            combine("HGET", Combine::Field(b("x")), one(map.clone())),
            Reply::Null
        );
        // SET NX: OK when it wrote, nil when the key existed, the node's error otherwise.
        assert_eq!(
            combine("SET ... NX", Combine::SetNx, one(NodeReply::Swapped(true))),
            Reply::ok()
        );
        assert_eq!(
            combine("SET ... NX", Combine::SetNx, one(NodeReply::Swapped(false))),
            Reply::Null
        );
        let leaderless = triarch_node::RequestError::NeedsPrimaryBackup {
            keyspace: "default".into(),
            model: Model::Leaderless,
        };
        assert_eq!(
            combine(
                "SET ... NX",
                Combine::SetNx,
                one(NodeReply::Error(leaderless))
            ),
            Reply::error(
                "ERR keyspace 'default' is leaderless; SET ... NX needs a primary-backup keyspace"
            )
        );
        assert_eq!(
            combine("HGETALL", Combine::Fields, one(map)),
            Reply::Map(vec![
                (Reply::bulk(b("f")), Reply::bulk(b("1"))),
                (Reply::bulk(b("g")), Reply::bulk(b("2")))
            ])
        );
        assert_eq!(
            combine(
                "INCR",
                Combine::Counter,
                one(NodeReply::Applied(OperationResult::Counter(-3)))
            ),
            Reply::Integer(-3)
        );
        assert_eq!(
            combine(
                "SADD",
                Combine::Changed,
                one(NodeReply::Applied(OperationResult::Changed(2)))
            ),
            Reply::Integer(2)
        );
        let context: triarch_core::causal::VersionVector = [(triarch_core::causal::ActorId(1), 2)]
            .into_iter()
            .collect();
        let view = SiblingsView {
            context: context.clone(),
            values: vec![b("x"), b("y")],
        };
        assert_eq!(
            combine(
                "TRIARCH.GETV",
                Combine::Siblings,
                one(NodeReply::State(View::Siblings(view)))
            ),
            Reply::array(vec![
                Reply::bulk(CausalToken::encode(&context)),
                Reply::bulk(b("x")),
                Reply::bulk(b("y"))
            ])
        );
    }

    #[test]
    fn multi_leader_keyspace_info_shows_region_counters_and_lag_per_region() {
        use triarch_multileader::engine::{KeyspaceInfo as MlInfo, LinkInfo};
        let mut config = triarch_core::KeyspaceConfig::with_defaults("cart", Model::MultiLeader, 6);
        config.merge = MergePolicy::Set;
        let counters = triarch_multileader::machine::Counters {
            last: 7,
            conflicts: 2,
            lww_discarded: 1,
            ..Default::default()
        };
        let link = |to: &str, acked, lag_entries, lag_ms| LinkInfo {
            to: to.into(),
            acked,
            lag_entries,
            lag_ms,
        };
        let info = triarch_node::KeyspaceInfo {
            config,
            stats: Default::default(),
            members: vec![triarch_core::NodeId(1), triarch_core::NodeId(4)],
            group: None,
            multileader: Some(MlInfo {
                keyspace: "cart".into(),
                region: "r1".into(),
                group: None,
                counters,
                links: vec![link("r2", 7, 0, 0), link("r3", 4, 3, 120)],
            }),
        };
        let Reply::Map(fields) =
            admin_reply(AdminKind::Info, NodeReply::KeyspaceInfo(Box::new(info)))
        else {
            panic!("a map")
        };
        let text = |r: &Reply| match r {
            Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("{other:?}"),
        };
        let fields: std::collections::BTreeMap<String, String> =
            fields.iter().map(|(k, v)| (text(k), text(v))).collect();
        for (k, v) in [
            ("model", "multi-leader"),
            ("merge", "set"),
            ("region", "r1"),
            ("role", "none"),
            ("last", "7"),
            ("conflicts", "2"),
            ("lww_discarded", "1"),
            ("duplicates", "0"),
            ("acked", "r2=7,r3=4"),
            ("lag_entries", "r2=0,r3=3"),
            ("lag_ms", "r2=0,r3=120"),
        ] {
            assert_eq!(
                fields.get(k).map(String::as_str),
                Some(v),
                "{k} in {fields:?}"
            );
        }
        assert!(
            !fields.contains_key("r"),
            "quorums do not apply: {fields:?}"
        );
    }

    #[test]
    fn policy_errors_name_the_command() {
        let e = triarch_node::RequestError::WrongPolicy {
            keyspace: "cart".into(),
            policy: MergePolicy::Set,
            needs: &[MergePolicy::Counter],
        };
        let name = static_name("INCR");
        assert_eq!(
            combine(
                name,
                Combine::Counter,
                vec![Some(NodeReply::Error(e.clone()))]
            ),
            Reply::error("ERR keyspace 'cart' uses merge policy set; INCR needs counter")
        );
        assert_eq!(static_name("FLUSHALL"), "");
        assert_eq!(
            combine("", Combine::Get, vec![Some(NodeReply::Error(e))]),
            Reply::error("ERR keyspace 'cart' uses merge policy set; this command needs counter")
        );
    }

    fn create(words: &[&str]) -> Result<KeyspaceSettings, Reply> {
        let mut all = vec!["TRIARCH.KEYSPACE", "CREATE", "x"];
        all.extend_from_slice(words);
        keyspace_command(&args(&all)).map(|(_, r)| match r {
            Request::CreateKeyspace(spec) => spec.settings,
            other => panic!("{other:?}"),
        })
    }

    fn error_text(r: Reply) -> String {
        match r {
            Reply::Error(e) => String::from_utf8_lossy(&e).into_owned(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn keyspace_create_takes_read_policies_and_quorum_modes() {
        let s = create(&["MODEL", "primary-backup", "READ", "bounded:200"]).unwrap();
        assert_eq!(s.read, Some(ReadPolicy::Bounded { max_lag_ms: 200 }));
        let s = create(&["MODEL", "primary-backup", "read", "SESSION", "N", "3"]).unwrap();
        assert_eq!((s.read, s.n), (Some(ReadPolicy::Session), Some(3)));
        let s = create(&["MODEL", "leaderless", "QUORUM", "sloppy", "W", "1"]).unwrap();
        assert_eq!((s.quorum, s.w), (Some(QuorumMode::Sloppy), Some(1)));
        let s = create(&["MODEL", "primary-backup", "home", "eu-west"]).unwrap();
        assert_eq!(s.home.as_deref(), Some("eu-west"));
        // Bad values: the core's error, naming the setting.
        let e = error_text(create(&["MODEL", "primary-backup", "READ", "stale"]).unwrap_err());
        assert!(
            e.starts_with("ERR invalid READ: \"stale\" is not linearizable"),
            "{e}"
        );
        let e = error_text(create(&["MODEL", "primary-backup", "READ", "bounded:0"]).unwrap_err());
        assert!(e.starts_with("ERR invalid READ"), "{e}");
        let e = error_text(create(&["MODEL", "leaderless", "QUORUM", "loose"]).unwrap_err());
        assert!(e.starts_with("ERR invalid QUORUM"), "{e}");
        let e = error_text(create(&["MODEL", "leaderless", "QUORUM"]).unwrap_err());
        assert!(
            e.contains("[READ linearizable|lease|bounded:<ms>|session] [QUORUM strict|sloppy]"),
            "{e}"
        );
    }

    #[test]
    fn read_policy_is_set_shown_and_reset_and_bad_ones_change_nothing() {
        let mut s = session();
        let read = |w: &[&str], s: &mut Session| {
            let mut all = vec!["TRIARCH.READ"];
            all.extend_from_slice(w);
            read_policy(&args(&all), s)
        };
        assert_eq!(read(&[], &mut s), Reply::bulk("default".to_string()));
        assert_eq!(read(&["bounded:1000"], &mut s), Reply::ok());
        assert_eq!(
            s.read_policy,
            Some(ReadPolicy::Bounded { max_lag_ms: 1000 })
        );
        assert_eq!(read(&[], &mut s), Reply::bulk("bounded:1000".to_string()));
        for bad in [&["stale"][..], &["bounded:x"], &["session", "lease"]] {
            assert!(matches!(read(bad, &mut s), Reply::Error(_)), "{bad:?}");
            assert_eq!(
                s.read_policy,
                Some(ReadPolicy::Bounded { max_lag_ms: 1000 })
            );
        }
        let e = error_text(read(&["stale"], &mut s));
        assert!(e.starts_with("ERR invalid READ"), "{e}");
        assert_eq!(read(&["Session"], &mut s), Reply::ok());
        assert_eq!(s.read_policy, Some(ReadPolicy::Session));
        assert_eq!(read(&["default"], &mut s), Reply::ok());
        assert_eq!(s.read_policy, None);
    }

    #[test]
    fn session_tokens_are_remembered_shown_and_adopted_keeping_the_highest() {
        let mut s = session();
        assert_eq!(s.read_options(), None, "nothing to apply: plain GETs");
        let tokens = |w: &[&str], s: &mut Session| {
            let mut all = vec!["TRIARCH.SESSION"];
            all.extend_from_slice(w);
            session_tokens(&args(&all), s)
        };
        assert_eq!(tokens(&[], &mut s), Reply::array(Vec::new()));
        let token = |k: &str, index| SessionToken {
            keyspace: k.into(),
            index,
        };
        s.remember(token("balance", 9));
        s.remember(token("balance", 4));
        assert_eq!(
            tokens(&[], &mut s),
            Reply::array(vec![Reply::bulk("balance:9".to_string())])
        );
        // Adopted from elsewhere: the highest per keyspace is kept.
        assert_eq!(
            tokens(&["balance:5", "notes:3", "notes:8"], &mut s),
            Reply::ok()
        );
        assert_eq!(
            tokens(&[], &mut s),
            Reply::array(vec![
                Reply::bulk("balance:9".to_string()),
                Reply::bulk("notes:8".to_string())
            ])
        );
        assert_eq!(tokens(&["balance:12,notes:1"], &mut s), Reply::ok());
        assert_eq!(s.tokens.get("balance"), Some(&12));
        // A malformed token adopts nothing, not even the good ones before it.
        for bad in [
            &["other:4", "balance"][..],
            &["other:0"],
            &["bad name:2"],
            &["other:x"],
        ] {
            let e = error_text(tokens(bad, &mut s));
            assert!(e.starts_with("ERR invalid session token"), "{bad:?}: {e}");
            assert!(!s.tokens.contains_key("other"), "{bad:?}");
        }
        let options = s.read_options().expect("tokens held");
        assert_eq!((options.policy, options.sessions.len()), (None, 2));
        // The GETs in flight keep the tokens they were sent with.
        s.remember(token("balance", 20));
        assert_eq!(options.sessions.get("balance"), Some(&12));
        assert_eq!(s.tokens.get("balance"), Some(&20));
    }

    #[test]
    fn keyspace_info_shows_read_quorum_and_clock_counters_and_clock_ahead_is_tryagain() {
        let fields = |config: triarch_core::KeyspaceConfig| {
            let info = triarch_node::KeyspaceInfo {
                config,
                stats: triarch_node::KeyspaceStats {
                    clock_ahead_refused: 4,
                    clock_ahead_copied: 1,
                    ..Default::default()
                },
                members: vec![triarch_core::NodeId(1)],
                group: None,
                multileader: None,
            };
            let Reply::Map(fields) =
                admin_reply(AdminKind::Info, NodeReply::KeyspaceInfo(Box::new(info)))
            else {
                panic!("a map")
            };
            let text = |r: &Reply| match r {
                Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("{other:?}"),
            };
            fields
                .iter()
                .map(|(k, v)| (text(k), text(v)))
                .collect::<std::collections::BTreeMap<String, String>>()
        };
        let mut loose = triarch_core::KeyspaceConfig::leaderless("loose");
        loose.quorum = QuorumMode::Sloppy;
        let f = fields(loose);
        assert_eq!(f.get("quorum").map(String::as_str), Some("sloppy"));
        assert_eq!(f.get("clock_ahead_refused").map(String::as_str), Some("4"));
        assert_eq!(f.get("clock_ahead_copied").map(String::as_str), Some("1"));
        assert!(!f.contains_key("read"), "{f:?}");
        let mut balance =
            triarch_core::KeyspaceConfig::with_defaults("balance", Model::PrimaryBackup, 3);
        balance.read = ReadPolicy::Lease;
        let f = fields(balance);
        assert_eq!(f.get("read").map(String::as_str), Some("lease"));
        assert!(!f.contains_key("quorum"), "{f:?}");
        // A write refused for clock skew: TRYAGAIN, through the generic error path.
        let e = triarch_node::RequestError::ClockAhead;
        let reply = combine("SET", Combine::Set, vec![Some(NodeReply::Error(e))]);
        let text = error_text(reply);
        assert!(
            text.starts_with("TRYAGAIN refused for clock skew"),
            "{text}"
        );
    }
}
