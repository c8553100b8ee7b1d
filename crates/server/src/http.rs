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
//! A key in keyspace `k` is stored as `k:key` (the RESP form), except in `default`, where it is
//! stored as given. Errors are JSON `{"error": "...", "code": "..."}` with 400 for bad input, 404
//! for unknown keyspaces, 503 when a quorum was not reached.

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
use triarch_core::{KeyspaceConfig, MergePolicy, Model};
use triarch_node::{KeyspaceSpec, Reply, Request, RequestError};

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
        RequestError::QuorumFailed { .. } | RequestError::Superseded => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        RequestError::UnknownKeyspace(_) => StatusCode::NOT_FOUND,
        RequestError::KeyspaceExists(_) => StatusCode::CONFLICT,
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

/// The stored key for `key` in `keyspace`, after checking the keyspace exists.
async fn stored_key(shared: &Shared, keyspace: &str, key: &str) -> Result<bytes::Bytes, Response> {
    if keyspace == KeyspaceConfig::DEFAULT_NAME {
        return Ok(bytes::Bytes::copy_from_slice(key.as_bytes()));
    }
    match call(
        shared,
        Request::KeyspaceInfo {
            name: keyspace.to_string(),
        },
    )
    .await
    {
        Reply::KeyspaceInfo(_) => Ok(bytes::Bytes::from(format!("{keyspace}:{key}"))),
        Reply::Error(e) => Err(error_response(&e)),
        other => Err(unexpected(other)),
    }
}

async fn get_key(
    State(shared): State<Arc<Shared>>,
    Path((keyspace, key)): Path<(String, String)>,
    Query(q): Query<Quorum>,
) -> Response {
    let key = match stored_key(&shared, &keyspace, &key).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    match call(&shared, Request::Get { key, r: q.r }).await {
        Reply::Value(Some(v)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response()
        }
        Reply::Value(None) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "not found"})),
        )
            .into_response(),
        Reply::Error(e) => error_response(&e),
        other => unexpected(other),
    }
}

async fn put_key(
    State(shared): State<Arc<Shared>>,
    Path((keyspace, key)): Path<(String, String)>,
    Query(q): Query<Quorum>,
    body: Bytes,
) -> Response {
    let key = match stored_key(&shared, &keyspace, &key).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    match call(
        &shared,
        Request::Set {
            key,
            value: body,
            w: q.w,
        },
    )
    .await
    {
        Reply::Written { .. } => StatusCode::NO_CONTENT.into_response(),
        Reply::Error(e) => error_response(&e),
        other => unexpected(other),
    }
}

async fn delete_key(
    State(shared): State<Arc<Shared>>,
    Path((keyspace, key)): Path<(String, String)>,
    Query(q): Query<Quorum>,
) -> Response {
    let key = match stored_key(&shared, &keyspace, &key).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    match call(&shared, Request::Delete { key, w: q.w }).await {
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
    let spec = KeyspaceSpec {
        name: b.name,
        model: b.model,
        n: b.n,
        r: b.r,
        w: b.w,
        merge: b.merge,
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
