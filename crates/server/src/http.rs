//! The HTTP/JSON API and `/metrics`.
//!
//! | route | |
//! |---|---|
//! | `GET /v1/kv/{keyspace}/{key}[?r=R]` | the value as the body (`application/octet-stream`); 404 if absent |
//! | `PUT /v1/kv/{keyspace}/{key}[?w=W]` | the body is the value; 204 |
//! | `DELETE /v1/kv/{keyspace}/{key}[?w=W]` | `{"deleted": bool}` |
//! | `GET /v1/keyspaces`, `POST /v1/keyspaces` | list; create from `{"name","model","n","r","w","merge"}` |
//! | `GET /v1/cluster` | this node, its members and peer links |
//! | `GET /metrics` | Prometheus text format |
//!
//! Every kv route also takes `?consistency=one|quorum|all` (for both the read and the write
//! quorum; QUORUM is N/2+1 of the keyspace's N) instead of `r`/`w`; giving both is a 400.
//!
//! A key in keyspace `k` is stored as `k:key` (the RESP form), except in `default`, where it is
//! stored as given. Errors are JSON `{"error": "...", "code": "..."}` with 400 for bad input, 404
//! for unknown keyspaces, 503 when a quorum was not reached.
//!
//! ## Merge policies
//!
//! - `siblings` keyspaces carry the causal context in the `X-Triarch-Context` header (the same
//!   opaque text as RESP's `TRIARCH.GETV`). `GET` answers 200 with the value when there is one,
//!   404 when there is none (a deleted or never-written key), and `300 Multiple Choices` with
//!   `{"context": "...", "values_base64url": [...]}` when there are siblings; the header is set
//!   in all three cases. `PUT` with the header writes superseding exactly what that context
//!   covers (an empty header is a blind write: it adds a sibling); `PUT` without it supersedes
//!   what the coordinator's read observed, like RESP `SET`. `DELETE` supersedes what the read
//!   observed.
//! - `counter` keyspaces: `GET` answers the value as text. Increments, and the `set` and `map`
//!   policies, are RESP-only for now (`GET` on them answers 400 naming the policy).
//!
//! Multi-leader keyspaces are served like leaderless ones (per merge policy, as above), by the
//! node's region; `r`, `w` and `consistency` do not apply to them and are refused (400).

use crate::core::{CoreInput, ReplyTo};
use crate::server::Shared;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use triarch_core::{KeyspaceConfig, KeyspaceSettings, MergePolicy, Model};
use triarch_node::{
    CausalToken, Consistency, KeyspaceSpec, Operation, Reply, Request, RequestError, SiblingsView,
    View, base64url,
};

/// The header that carries a `siblings` key's causal context.
pub const CONTEXT_HEADER: &str = "x-triarch-context";

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let body_limit = shared.value_bytes_max + 1024;
    let app = Router::new()
        .route(
            "/v1/kv/{keyspace}/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/keyspaces", get(list_keyspaces).post(create_keyspace))
        .route("/v1/cluster", get(cluster))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

#[derive(Deserialize)]
struct Quorum {
    r: Option<u8>,
    w: Option<u8>,
    consistency: Option<String>,
}

/// A 400 with `error` as the message.
fn bad_request(error: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": error, "code": "ERR" })),
    )
        .into_response()
}

impl Quorum {
    /// Whether the request asked for any quorum.
    fn any(&self) -> bool {
        self.r.is_some() || self.w.is_some() || self.consistency.is_some()
    }

    /// The read and write quorums asked for, or what is wrong with them (a 400).
    fn levels(&self) -> Result<(Option<Consistency>, Option<Consistency>), String> {
        let Some(level) = &self.consistency else {
            return Ok((
                self.r.map(Consistency::Count),
                self.w.map(Consistency::Count),
            ));
        };
        if self.r.is_some() || self.w.is_some() {
            return Err("give either consistency or r/w, not both".into());
        }
        match Consistency::parse(level) {
            Some(c @ (Consistency::One | Consistency::Quorum | Consistency::All)) => {
                Ok((Some(c), Some(c)))
            }
            _ => Err(format!(
                "consistency must be one, quorum or all, not '{level}'"
            )),
        }
    }
}

async fn call(shared: &Shared, request: Request) -> Reply {
    let (tx, rx) = oneshot::channel();
    let input = CoreInput::Request {
        request,
        reply_to: ReplyTo::Once(tx),
    };
    if shared.core.send(input).await.is_err() {
        return Reply::Error(RequestError::Storage("node is shutting down".into()));
    }
    rx.await.unwrap_or(Reply::Error(RequestError::Storage(
        "node is shutting down".into(),
    )))
}

fn error_response(e: &RequestError) -> Response {
    let status = match e {
        RequestError::QuorumFailed { .. }
        | RequestError::Superseded
        | RequestError::CoordinatorUnavailable { .. }
        | RequestError::NoLeader { .. }
        | RequestError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        RequestError::UnknownKeyspace(_) => StatusCode::NOT_FOUND,
        RequestError::KeyspaceExists(_) | RequestError::StoredPolicyMismatch { .. } => {
            StatusCode::CONFLICT
        }
        RequestError::MembershipMismatch { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        RequestError::KeyTooLarge { .. } | RequestError::ValueTooLarge { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        RequestError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    (
        status,
        axum::Json(json!({ "error": e.to_string(), "code": e.code() })),
    )
        .into_response()
}

fn unexpected(r: Reply) -> Response {
    tracing::error!(?r, "unexpected reply from the node");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({"error": "unexpected reply"})),
    )
        .into_response()
}

/// The stored key for `key` in `keyspace`, after checking the keyspace exists, with the
/// keyspace's merge policy. Quorums asked of a keyspace that has none (multi-leader: a region's
/// group serves every read and write) are refused rather than ignored.
async fn stored_key(
    shared: &Shared,
    keyspace: &str,
    key: &str,
    quorums: &Quorum,
) -> Result<(bytes::Bytes, MergePolicy), Response> {
    match call(
        shared,
        Request::KeyspaceInfo {
            name: keyspace.to_string(),
        },
    )
    .await
    {
        Reply::KeyspaceInfo(info) => {
            if info.config.model == Model::MultiLeader && quorums.any() {
                return Err(bad_request(format!(
                    "keyspace '{keyspace}' is multi-leader: its region's group serves every read and write; r, w and consistency apply only to leaderless keyspaces"
                )));
            }
            let stored = if keyspace == KeyspaceConfig::DEFAULT_NAME {
                bytes::Bytes::copy_from_slice(key.as_bytes())
            } else {
                bytes::Bytes::from(format!("{keyspace}:{key}"))
            };
            Ok((stored, info.config.merge))
        }
        Reply::Error(e) => Err(error_response(&e)),
        other => Err(unexpected(other)),
    }
}

/// The context header's value (ASCII by construction).
fn context_header(view: &SiblingsView) -> (&'static str, String) {
    (CONTEXT_HEADER, CausalToken::encode(&view.context))
}

async fn get_key(
    State(shared): State<Arc<Shared>>,
    Path((keyspace, key)): Path<(String, String)>,
    Query(q): Query<Quorum>,
) -> Response {
    let (r, _) = match q.levels() {
        Ok(levels) => levels,
        Err(error) => return bad_request(error),
    };
    let (key, merge) = match stored_key(&shared, &keyspace, &key, &q).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    if merge == MergePolicy::Siblings {
        return match call(&shared, Request::Read { key, r }).await {
            Reply::State(View::Siblings(view)) => siblings_response(view),
            Reply::Error(e) => error_response(&e),
            other => unexpected(other),
        };
    }
    match call(&shared, Request::Get { key, r }).await {
        Reply::Value(Some(v)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response()
        }
        Reply::Value(None) => not_found(),
        Reply::Error(e) => error_response(&e),
        other => unexpected(other),
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "not found"})),
    )
        .into_response()
}

/// 200 with the one value, 404 with none, 300 with several; the context header on each.
fn siblings_response(mut view: SiblingsView) -> Response {
    let context = context_header(&view);
    match view.values.len() {
        0 => {
            let mut response = not_found();
            if let Ok(v) = context.1.parse() {
                response.headers_mut().insert(CONTEXT_HEADER, v);
            }
            response
        }
        1 => {
            let value = view.values.pop().expect("one value");
            (
                [
                    (
                        header::CONTENT_TYPE.as_str(),
                        "application/octet-stream".to_string(),
                    ),
                    context,
                ],
                value,
            )
                .into_response()
        }
        _ => {
            let values: Vec<String> = view.values.iter().map(|v| base64url(v)).collect();
            let body = json!({ "context": context.1, "values_base64url": values });
            (StatusCode::MULTIPLE_CHOICES, [context], axum::Json(body)).into_response()
        }
    }
}

async fn put_key(
    State(shared): State<Arc<Shared>>,
    Path((keyspace, key)): Path<(String, String)>,
    Query(q): Query<Quorum>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let (r, w) = match q.levels() {
        Ok(levels) => levels,
        Err(error) => return bad_request(error),
    };
    let (key, merge) = match stored_key(&shared, &keyspace, &key, &q).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let request = match headers.get(CONTEXT_HEADER) {
        Some(token) if merge == MergePolicy::Siblings => {
            match CausalToken::decode(token.as_bytes()) {
                Ok(context) => Request::Apply {
                    key,
                    op: Operation::SiblingsWrite {
                        context,
                        value: Some(body),
                    },
                    r,
                    w,
                },
                Err(e) => return error_response(&RequestError::InvalidContext(e)),
            }
        }
        _ => Request::Set {
            key,
            value: body,
            w,
        },
    };
    match call(&shared, request).await {
        Reply::Written { .. } | Reply::Applied(_) => StatusCode::NO_CONTENT.into_response(),
        Reply::Error(e) => error_response(&e),
        other => unexpected(other),
    }
}

async fn delete_key(
    State(shared): State<Arc<Shared>>,
    Path((keyspace, key)): Path<(String, String)>,
    Query(q): Query<Quorum>,
) -> Response {
    let (_, w) = match q.levels() {
        Ok(levels) => levels,
        Err(error) => return bad_request(error),
    };
    let (key, _) = match stored_key(&shared, &keyspace, &key, &q).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    match call(&shared, Request::Delete { key, w }).await {
        Reply::Written { existed } => axum::Json(json!({ "deleted": existed })).into_response(),
        Reply::Error(e) => error_response(&e),
        other => unexpected(other),
    }
}

fn keyspace_json(k: &KeyspaceConfig) -> serde_json::Value {
    json!({ "name": k.name, "model": k.model, "n": k.n, "r": k.r, "w": k.w, "merge": k.merge })
}

async fn list_keyspaces(State(shared): State<Arc<Shared>>) -> Response {
    match call(&shared, Request::ListKeyspaces).await {
        Reply::Keyspaces(all) => {
            axum::Json(json!({ "keyspaces": all.iter().map(keyspace_json).collect::<Vec<_>>() }))
                .into_response()
        }
        Reply::Error(e) => error_response(&e),
        other => unexpected(other),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    model: Model,
    n: Option<u8>,
    r: Option<u8>,
    w: Option<u8>,
    merge: Option<MergePolicy>,
}

async fn create_keyspace(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let b: CreateBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": e.to_string(), "code": "ERR" })),
            )
                .into_response();
        }
    };
    let settings = KeyspaceSettings {
        n: b.n,
        r: b.r,
        w: b.w,
        merge: b.merge,
        read: None,
        quorum: None,
    };
    let spec = KeyspaceSpec {
        name: b.name,
        model: b.model,
        settings,
    };
    match call(&shared, Request::CreateKeyspace(spec)).await {
        Reply::Created => {
            (StatusCode::CREATED, axum::Json(json!({ "created": true }))).into_response()
        }
        Reply::Error(e) => error_response(&e),
        other => unexpected(other),
    }
}

async fn cluster(State(shared): State<Arc<Shared>>) -> Response {
    let members: Vec<serde_json::Value> = shared
        .members
        .iter()
        .map(|m| {
            let me = m.id == shared.node_id.0;
            let link = if me { "self" } else if shared.peers.is_connected(triarch_core::NodeId(m.id)) { "up" } else { "down" };
            json!({ "id": m.id, "region": m.region, "peer_addr": m.peer_addr.to_string(), "link": link })
        })
        .collect();
    axum::Json(json!({ "node": shared.node_id.0, "region": shared.region, "members": members }))
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    // Refresh the model counters, then render.
    let _ = shared.snapshot().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.prometheus.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use triarch_core::causal::{ActorId, VersionVector};

    fn quorum(r: Option<u8>, w: Option<u8>, consistency: Option<&str>) -> Quorum {
        Quorum {
            r,
            w,
            consistency: consistency.map(str::to_string),
        }
    }

    #[test]
    fn consistency_levels_or_counts_but_not_both() {
        assert_eq!(
            quorum(Some(1), Some(3), None).levels().ok(),
            Some((Some(Consistency::Count(1)), Some(Consistency::Count(3))))
        );
        assert_eq!(
            quorum(None, None, Some("quorum")).levels().ok(),
            Some((Some(Consistency::Quorum), Some(Consistency::Quorum)))
        );
        assert_eq!(
            quorum(None, None, Some("ALL")).levels().ok(),
            Some((Some(Consistency::All), Some(Consistency::All)))
        );
        let status = |q: Quorum| q.levels().err().map(|e| bad_request(e).status());
        assert_eq!(
            status(quorum(Some(1), None, Some("one"))),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status(quorum(None, None, Some("2"))),
            Some(StatusCode::BAD_REQUEST),
            "counts go in r and w"
        );
        assert_eq!(
            status(quorum(None, None, Some("most"))),
            Some(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn siblings_answer_200_404_or_300_with_the_context_header() {
        let context: VersionVector = [(ActorId(1), 2)].into_iter().collect();
        let token = CausalToken::encode(&context);
        let view = |values: &[&str]| SiblingsView {
            context: context.clone(),
            values: values
                .iter()
                .map(|v| bytes::Bytes::copy_from_slice(v.as_bytes()))
                .collect(),
        };
        for (values, status) in [
            (&[][..], StatusCode::NOT_FOUND),
            (&["a"][..], StatusCode::OK),
            (&["a", "b"][..], StatusCode::MULTIPLE_CHOICES),
        ] {
            let response = siblings_response(view(values));
            assert_eq!(response.status(), status);
            assert_eq!(
                response
                    .headers()
                    .get(CONTEXT_HEADER)
                    .unwrap()
                    .to_str()
                    .unwrap(),
                token
            );
        }
    }
}
