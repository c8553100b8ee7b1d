//! Primary-backup keyspaces on a node: client requests become [`triarch_primary::engine`] ops,
//! its outcomes become replies.
//!
//! | request | op | reply |
//! |---|---|---|
//! | `Get` | linearizable read of one key | `Value` |
//! | `Set`, `Delete` | one-command write | `Written { existed }` |
//! | `Apply(CounterAdd(n))` (INCR and friends) | `IncrBy` on the key's decimal value | `Applied(Counter(value))` |
//! | `Cas` | compare-and-set | `Swapped` |
//! | `Watch` | linearizable read of the keys' values and versions | `Watched` |
//! | `Exec` | the commands as one entry, guarded by the watches | `Exec` |
//!
//! `Read` and every other `Apply` are leaderless merge-policy requests and are refused with
//! [`RequestError::NotForPrimaryBackup`]. Consistency levels (`r`, `w`) are ignored here: every
//! primary-backup read and write goes through the group's leader.

use crate::api::{
    Command, CommandResult, Operation, OperationResult, Reply, RequestError, SessionToken,
};
use crate::{Data, Message, Node, Output};
use bytes::Bytes;
use std::time::Duration;
use triarch_core::{KeyspaceConfig, Model, Now, ReadPolicy, RequestId};
use triarch_primary::LogIndex;
use triarch_primary::engine::{Effect, Env, Freshness, GroupSpec, Op, Outcome};
use triarch_primary::machine::Applied;
use triarch_storage::Storage;

/// How a primary-backup outcome becomes the reply to its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PbShape {
    Get,
    Written,
    Counter,
    Swapped,
    Watched,
    Exec,
}

impl<S: Storage> Node<S> {
    /// Starts this node's member of every primary-backup keyspace's group it is a voter of (in
    /// the catalog's placement), and tells the members it runs where their groups are placed
    /// (a re-placed group's leader moves it there).
    pub(crate) fn ensure_primary_groups(&mut self, now: Now) {
        let keyspaces: Vec<(KeyspaceConfig, bool)> = self
            .catalog
            .entries()
            .filter(|e| e.config.model == Model::PrimaryBackup)
            .map(|e| (e.config.clone(), e.moved()))
            .collect();
        for (keyspace, moved) in keyspaces {
            let spec = GroupSpec {
                moved,
                ..GroupSpec::primary_backup(&keyspace, &self.placed_members())
            };
            let mut env = Env {
                now: now.instant,
                storage: &mut self.storage,
            };
            if let Err(e) = self.primary.ensure_group(&mut env, &spec) {
                tracing::error!(keyspace = keyspace.name, error = %e, "cannot start the keyspace's raft group");
            }
        }
    }

    /// A `Get`, `Set`, `Delete`, `Read` or `Apply` on a primary-backup keyspace.
    pub(crate) fn primary_data(
        &mut self,
        now: Now,
        request: RequestId,
        keyspace: &KeyspaceConfig,
        key: Bytes,
        data: Data,
    ) {
        let write = |command: Command| Op::Write {
            watches: Vec::new(),
            commands: vec![command],
        };
        let (op, shape) = match data {
            Data::Get => (read_op(keyspace.read, None, key), PbShape::Get),
            Data::Set(value) => (write(Command::Set { key, value }), PbShape::Written),
            Data::Delete => (write(Command::Delete { key }), PbShape::Written),
            Data::Apply(Operation::CounterAdd(by)) => {
                (write(Command::IncrBy { key, by }), PbShape::Counter)
            }
            Data::Read | Data::Apply(_) => {
                return self.fail(
                    request,
                    RequestError::NotForPrimaryBackup {
                        keyspace: keyspace.name.clone(),
                    },
                );
            }
        };
        self.primary_submit(now, request, keyspace, op, shape);
    }

    /// A `GetWith`: a read of a primary-backup key under a chosen policy.
    pub(crate) fn primary_get_with(
        &mut self,
        now: Now,
        request: RequestId,
        key: Bytes,
        policy: Option<ReadPolicy>,
        session: Option<u64>,
    ) {
        match self.primary_keyspace_of([&key]) {
            Ok(keyspace) => {
                let op = read_op(policy.unwrap_or(keyspace.read), session, key);
                self.primary_submit(now, request, &keyspace, op, PbShape::Get);
            }
            Err(e) => self.fail(request, e),
        }
    }

    /// The one primary-backup keyspace every key of a `Cas`, `Watch` or `Exec` belongs to.
    pub(crate) fn primary_keyspace_of<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k Bytes>,
    ) -> Result<KeyspaceConfig, RequestError> {
        let mut found: Option<&KeyspaceConfig> = None;
        for key in keys {
            crate::check_key(key)?;
            let keyspace = self.route(key);
            match found {
                Some(k) if k.name != keyspace.name => return Err(RequestError::CrossKeyspace),
                _ => found = Some(keyspace),
            }
        }
        let keyspace = found.ok_or(RequestError::CrossKeyspace)?;
        if keyspace.model != Model::PrimaryBackup {
            return Err(RequestError::NeedsPrimaryBackup {
                keyspace: keyspace.name.clone(),
                model: keyspace.model,
            });
        }
        Ok(keyspace.clone())
    }

    pub(crate) fn primary_cas(
        &mut self,
        now: Now,
        request: RequestId,
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    ) {
        let checked = self.primary_keyspace_of([&key]).and_then(|k| {
            self.check_value(&new)?;
            Ok(k)
        });
        match checked {
            Ok(keyspace) => {
                let op = Op::Write {
                    watches: Vec::new(),
                    commands: vec![Command::Cas { key, expected, new }],
                };
                self.primary_submit(now, request, &keyspace, op, PbShape::Swapped);
            }
            Err(e) => self.fail(request, e),
        }
    }

    pub(crate) fn primary_watch(&mut self, now: Now, request: RequestId, keys: Vec<Bytes>) {
        match self.primary_keyspace_of(&keys) {
            Ok(keyspace) => {
                self.primary_submit(now, request, &keyspace, Op::Read { keys }, PbShape::Watched)
            }
            Err(e) => self.fail(request, e),
        }
    }

    pub(crate) fn primary_exec(
        &mut self,
        now: Now,
        request: RequestId,
        watches: Vec<(Bytes, u64)>,
        commands: Vec<Command>,
    ) {
        if commands.is_empty() {
            return self.reply(request, Reply::Exec(Some(Vec::new())));
        }
        let keys = watches
            .iter()
            .map(|(k, _)| k)
            .chain(commands.iter().filter_map(|c| c.key()));
        let checked = self.primary_keyspace_of(keys).and_then(|k| {
            for c in &commands {
                match c {
                    Command::Set { value, .. } => self.check_value(value)?,
                    Command::Cas { new, .. } => self.check_value(new)?,
                    _ => {}
                }
            }
            Ok(k)
        });
        match checked {
            Ok(keyspace) => {
                let op = Op::Write { watches, commands };
                self.primary_submit(now, request, &keyspace, op, PbShape::Exec);
            }
            Err(e) => self.fail(request, e),
        }
    }

    fn primary_submit(
        &mut self,
        now: Now,
        request: RequestId,
        keyspace: &KeyspaceConfig,
        op: Op,
        shape: PbShape,
    ) {
        self.pb_shapes
            .insert(request, (shape, keyspace.name.clone()));
        let spec = GroupSpec::primary_backup(keyspace, &self.placed_members());
        let mut env = Env {
            now: now.instant,
            storage: &mut self.storage,
        };
        self.primary.request(&mut env, request, &spec, op);
    }

    /// Turns the engine's effects into the node's outputs.
    pub(crate) fn drain_primary(&mut self) {
        while let Some(effect) = self.primary.poll_effect() {
            let output = match effect {
                Effect::Send { to, message } => Output::Send {
                    to,
                    message: Message::Primary(message),
                },
                Effect::Reply {
                    request,
                    outcome,
                    early,
                } => {
                    let (shape, keyspace) = self
                        .pb_shapes
                        .remove(&request)
                        .expect("every primary-backup request has a shape");
                    let session = match &outcome {
                        Outcome::Applied { index, .. } => Some(SessionToken {
                            keyspace: keyspace.clone(),
                            index: index.0,
                        }),
                        _ => None,
                    };
                    Output::Reply {
                        request,
                        reply: primary_reply(outcome, shape, keyspace),
                        early,
                        session,
                    }
                }
            };
            self.outputs.push_back(output);
        }
    }
}

/// The read of `key` a policy asks for. `linearizable` and `lease` reads go to the leader
/// (which serves under its lease when it holds one), as does a `session` read without a token.
fn read_op(policy: ReadPolicy, session: Option<u64>, key: Bytes) -> Op {
    let keys = vec![key];
    let freshness = match (policy, session) {
        (ReadPolicy::Bounded { max_lag_ms }, _) => Freshness::Bounded {
            max_lag: Duration::from_millis(max_lag_ms),
        },
        (ReadPolicy::Session, Some(index)) => Freshness::Session {
            index: LogIndex(index),
        },
        _ => return Op::Read { keys },
    };
    Op::ReadFresh { keys, freshness }
}

fn primary_reply(outcome: Outcome, shape: PbShape, keyspace: String) -> Reply {
    let error = |e| Reply::Error(e);
    match (shape, outcome) {
        (PbShape::Get, Outcome::Read(mut records)) if records.len() == 1 => {
            Reply::Value(records.pop().and_then(|r| r.value))
        }
        (PbShape::Watched, Outcome::Read(records)) => Reply::Watched(records),
        (
            PbShape::Exec,
            Outcome::Applied {
                applied: Applied::Done(results),
                ..
            },
        ) => Reply::Exec(Some(results)),
        (
            PbShape::Exec,
            Outcome::Applied {
                applied: Applied::Aborted,
                ..
            },
        ) => Reply::Exec(None),
        (
            shape,
            Outcome::Applied {
                applied: Applied::Done(mut results),
                ..
            },
        ) if results.len() == 1 => match (shape, results.pop().expect("one")) {
            (PbShape::Written, CommandResult::Written { existed }) => Reply::Written { existed },
            (PbShape::Counter, CommandResult::Integer(v)) => {
                Reply::Applied(OperationResult::Counter(v))
            }
            (PbShape::Swapped, CommandResult::Swapped(swapped)) => Reply::Swapped(swapped),
            (_, CommandResult::NotAnInteger) => error(RequestError::NotAnInteger),
            (_, CommandResult::Overflow) => error(RequestError::CounterOverflow),
            (shape, result) => unreachable_reply(shape, format!("{result:?}")),
        },
        (_, Outcome::NotLeader { .. } | Outcome::Unavailable { .. }) => {
            error(RequestError::NoLeader { keyspace })
        }
        (_, Outcome::Timeout) => error(RequestError::Timeout),
        (_, Outcome::Storage(e)) => error(RequestError::Storage(e)),
        (shape, outcome) => unreachable_reply(shape, format!("{outcome:?}")),
    }
}

/// An outcome that does not fit its request: a bug, reported to the client rather than
/// panicking the node.
fn unreachable_reply(shape: PbShape, outcome: String) -> Reply {
    tracing::error!(
        ?shape,
        outcome,
        "primary-backup outcome does not fit its request"
    );
    Reply::Error(RequestError::Storage(format!(
        "internal error: unexpected outcome {outcome} for a {shape:?} request"
    )))
}
