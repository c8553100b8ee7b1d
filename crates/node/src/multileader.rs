//! Multi-leader keyspaces on a node: client requests become [`triarch_multileader`] ops served
//! inside the node's region, its outcomes become replies.
//!
//! The requests and replies are the leaderless model's (`GET`/`SET`/`DEL` on `lww` keys, the
//! typed operations and reads of the other policies; see [`crate::api`]), with the region's
//! guarantee instead of quorums: a write is acknowledged once a majority of the region's group
//! holds it, a read sees every write acknowledged in the region before it, and other regions'
//! writes arrive asynchronously. Consistency levels (`r`, `w`) are ignored, as for
//! primary-backup.

use crate::api::{Reply, RequestError};
use crate::{Node, Output, Plan, Shape, shaped};
use bytes::Bytes;
use triarch_core::{KeyspaceConfig, Model, Now, RequestId};
use triarch_leaderless::Outcome;
use triarch_multileader::engine::{Effect, Env, MlOp, MlOutcome};
use triarch_multileader::record::{Read, Write, WriteResult};
use triarch_storage::Storage;

impl<S: Storage> Node<S> {
    /// Starts every multi-leader keyspace of the catalog (this node's member of its region's
    /// group, if it is a voter).
    pub(crate) fn ensure_multileader_keyspaces(&mut self, now: Now) {
        let keyspaces: Vec<KeyspaceConfig> = self
            .catalog
            .entries()
            .filter(|e| e.config.model == Model::MultiLeader)
            .map(|e| e.config.clone())
            .collect();
        for keyspace in keyspaces {
            let mut env = Env {
                now: now.instant,
                storage: &mut self.storage,
            };
            if let Err(e) = self.multileader.ensure_keyspace(&mut env, &keyspace) {
                tracing::error!(keyspace = keyspace.name, error = %e, "cannot start the keyspace's region group");
            }
        }
    }

    /// A data request on a multi-leader keyspace, planned like a leaderless one.
    pub(crate) fn multileader_data(
        &mut self,
        now: Now,
        request: RequestId,
        keyspace: &KeyspaceConfig,
        key: Bytes,
        plan: Plan,
    ) {
        let stamp = self.hlc.now(now.wall_ms);
        let write = |write| MlOp::Write {
            key: key.clone(),
            write,
            stamp,
        };
        let (op, shape) = match plan {
            Plan::LwwRead => (MlOp::Read { key: key.clone() }, Shape::Plain),
            Plan::LwwWrite(value) => (write(Write::Lww(value)), Shape::Plain),
            Plan::StateRead(shape) => (MlOp::Read { key: key.clone() }, shape),
            Plan::Apply(operation, shape) => (write(Write::Operation(operation)), shape),
        };
        if shape != Shape::Plain {
            self.ml_shapes.insert(request, shape);
        }
        let mut env = Env {
            now: now.instant,
            storage: &mut self.storage,
        };
        self.multileader.request(&mut env, request, keyspace, op);
    }

    /// Turns the engine's effects into the node's outputs.
    pub(crate) fn drain_multileader(&mut self) {
        self.raise_hlc_ceiling();
        while let Some(effect) = self.multileader.poll_effect() {
            let output = match effect {
                Effect::Send { to, message } => Output::Send {
                    to,
                    message: crate::Message::MultiLeader(message),
                },
                Effect::Reply {
                    request,
                    outcome,
                    early,
                } => {
                    let shape = self.ml_shapes.remove(&request).unwrap_or(Shape::Plain);
                    Output::Reply {
                        request,
                        reply: ml_reply(outcome, shape),
                        early,
                        session: None,
                    }
                }
            };
            self.outputs.push_back(output);
        }
    }
}

/// The reply to a multi-leader outcome: the leaderless translation of the same result, so that
/// both models answer alike.
fn ml_reply(outcome: MlOutcome, shape: Shape) -> Reply {
    let as_leaderless = match outcome {
        MlOutcome::Read(Read::Lww(value)) => Outcome::Read { value },
        MlOutcome::Read(Read::View(view)) => Outcome::State(Some(view)),
        MlOutcome::Written(WriteResult::Lww { existed }) => Outcome::Written { existed },
        MlOutcome::Written(WriteResult::Operation(result)) => Outcome::Applied(result),
        MlOutcome::Refused(refusal) => Outcome::Refused(refusal),
        MlOutcome::Storage(e) => Outcome::Storage(e),
        MlOutcome::Unavailable { keyspace } => {
            return Reply::Error(RequestError::NoLeader { keyspace });
        }
        MlOutcome::Timeout => return Reply::Error(RequestError::Timeout),
    };
    shaped(as_leaderless, shape)
}
