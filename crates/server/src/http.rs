//! The HTTP/JSON API and `/metrics`.
//!
//! | route | |
//! |---|---|
//! | `GET /v1/kv/{keyspace}/{key}[?r=R][?read=policy]` | the value as the body (`application/octet-stream`); 404 if absent |
//! | `PUT /v1/kv/{keyspace}/{key}[?w=W]` | the body is the value; 204 |
//! | `DELETE /v1/kv/{keyspace}/{key}[?w=W]` | `{"deleted": bool}` |
//! | `GET /v1/keyspaces`, `POST /v1/keyspaces` | list; create from `{"name","model","n","r","w","merge","read","quorum","home"}` |
//! | `PUT /v1/keyspaces/{name}/home` | re-place a primary-backup keyspace from `{"home": "r2"}` (or `null`); `{"home": ...}` |
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
//!
//! ## Primary-backup reads and session tokens
//!
//! Every primary-backup write (`PUT`, `DELETE`) answers the header
//! `X-Triarch-Session: <keyspace>:<index>`, the index of its log entry. A `GET` of a
//! primary-backup key may ask for a read policy (`?read=linearizable|lease|bounded:<ms>|session`)
//! and present a session token in the same header (several, comma-separated, may be given; a
//! token of another keyspace is ignored): it is then a `Request::GetWith`, so a `session` read
//! (the query's or the keyspace's policy) is served by any voter that applied the token's entry
//! (read-your-writes). A malformed token or policy is a 400; `read` on another model, or on
//! `PUT`/`DELETE`, is a 400.

use crate::core::{CoreInput, ReplyTo, parse_session_tokens};
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
use triarch_core::{KeyspaceConfig, KeyspaceSettings, MergePolicy, Model, QuorumMode, ReadPolicy};
use triarch_node::{
    CausalToken, Consistency, KeyspaceSpec, Operation, Reply, Request, RequestError, SessionToken,
    SiblingsView, View, base64url,
};

/// The header that carries a `siblings` key's causal context.
pub const CONTEXT_HEADER: &str = "x-triarch-context";
/// The header that carries primary-backup session tokens (`keyspace:index`).
pub const SESSION_HEADER: &str = "x-triarch-session";

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let body_limit = shared.value_bytes_max + 1024;
    let app = Router::new()
        .route(
            "/v1/kv/{keyspace}/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/keyspaces", get(list_keyspaces).post(create_keyspace))
        .route("/v1/keyspaces/{name}/home", axum::routing::put(set_home))
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
    /// `GET` of a primary-backup key: the read policy.
    read: Option<String>,
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
    call_with_session(shared, request).await.0
}

/// The reply and, for a primary-backup write, its session token.
async fn call_with_session(shared: &Shared, request: Request) -> (Reply, Option<SessionToken>) {
    let shutting_down = || Reply::Error(RequestError::Storage("node is shutting down".into()));
    let (tx, rx) = oneshot::channel();
    let input = CoreInput::Request {
        request,
        reply_to: ReplyTo::Once(tx),
        reads: None,
    };
    if shared.core.send(input).await.is_err() {
        return (shutting_down(), None);
    }
    rx.await.unwrap_or_else(|_| (shutting_down(), None))
}

/// Adds `X-Triarch-Session: keyspace:index` to a write's response.
fn with_session(mut response: Response, session: Option<SessionToken>) -> Response {
    if let Some(token) = session
        && let Ok(value) = format!("{}:{}", token.keyspace, token.index).parse()
    {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

/// What a primary-backup `GET` asks for beyond a plain read: a read policy (`?read=`) and/or
/// the index of the session token it presents for its keyspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GetReads {
    policy: Option<ReadPolicy>,
    session: Option<u64>,
}

/// A `GET`'s [`GetReads`] for `keyspace` (tokens of other keyspaces are ignored; of several
/// for this one, the highest counts); `None` when it gives neither a policy nor a token (a
/// plain `Get`). The error (a 400) names a malformed policy or token.
fn read_settings(
    read: Option<&str>,
    headers: &axum::http::HeaderMap,
    keyspace: &str,
) -> Result<Option<GetReads>, String> {
    let policy = read
        .map(ReadPolicy::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut session: Option<u64> = None;
    let mut given = false;
    for value in headers.get_all(SESSION_HEADER) {
        given = true;
        let text = value
            .to_str()
            .map_err(|_| format!("invalid {SESSION_HEADER}: not text"))?;
        let tokens =
            parse_session_tokens(text).map_err(|e| format!("invalid {SESSION_HEADER}: {e}"))?;
        for t in tokens.into_iter().filter(|t| t.keyspace == keyspace) {
            session = session.max(Some(t.index));
        }
    }
    if policy.is_none() && !given {
        return Ok(None);
    }
    Ok(Some(GetReads { policy, session }))
}

fn error_response(e: &RequestError) -> Response {
    let status = match e {
        RequestError::QuorumFailed { .. }
        | RequestError::Superseded
        | RequestError::CoordinatorUnavailable { .. }
        | RequestError::NoLeader { .. }
        | RequestError::Timeout
        | RequestError::ClockAhead => StatusCode::SERVICE_UNAVAILABLE,
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
/// keyspace's merge policy and model. Quorums asked of a keyspace that has none (multi-leader:
/// a region's group serves every read and write) are refused rather than ignored, as is a read
/// policy asked of a keyspace that is not primary-backup.
async fn stored_key(
    shared: &Shared,
    keyspace: &str,
    key: &str,
    quorums: &Quorum,
) -> Result<(bytes::Bytes, MergePolicy, Model), Response> {
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
            if info.config.model != Model::PrimaryBackup && quorums.read.is_some() {
                return Err(bad_request(format!(
                    "keyspace '{keyspace}' is {}: read policies apply only to primary-backup keyspaces",
                    info.config.model
                )));
            }
            let stored = if keyspace == KeyspaceConfig::DEFAULT_NAME {
                bytes::Bytes::copy_from_slice(key.as_bytes())
            } else {
                bytes::Bytes::from(format!("{keyspace}:{key}"))
            };
            Ok((stored, info.config.merge, info.config.model))
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
    headers: axum::http::HeaderMap,
) -> Response {
    let (r, _) = match q.levels() {
        Ok(levels) => levels,
        Err(error) => return bad_request(error),
    };
    let reads = match read_settings(q.read.as_deref(), &headers, &keyspace) {
        Ok(reads) => reads,
        Err(error) => return bad_request(error),
    };
    let (key, merge, model) = match stored_key(&shared, &keyspace, &key, &q).await {
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
    let request = match reads {
        Some(GetReads { policy, session }) if model == Model::PrimaryBackup => Request::GetWith {
            key,
            policy,
            session,
        },
        _ => Request::Get { key, r },
    };
    match call(&shared, request).await {
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
    if q.read.is_some() {
        return bad_request("read applies to GET only".into());
    }
    let (key, merge, _) = match stored_key(&shared, &keyspace, &key, &q).await {
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
    match call_with_session(&shared, request).await {
        (Reply::Written { .. } | Reply::Applied(_), session) => {
            with_session(StatusCode::NO_CONTENT.into_response(), session)
        }
        (Reply::Error(e), _) => error_response(&e),
        (other, _) => unexpected(other),
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
    if q.read.is_some() {
        return bad_request("read applies to GET only".into());
    }
    let (key, _, _) = match stored_key(&shared, &keyspace, &key, &q).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    match call_with_session(&shared, Request::Delete { key, w }).await {
        (Reply::Written { existed }, session) => with_session(
            axum::Json(json!({ "deleted": existed })).into_response(),
            session,
        ),
        (Reply::Error(e), _) => error_response(&e),
        (other, _) => unexpected(other),
    }
}

/// A keyspace's settings; `read` (and `home` if set) on primary-backup keyspaces, `quorum` on
/// leaderless ones.
fn keyspace_json(k: &KeyspaceConfig) -> serde_json::Value {
    let mut v =
        json!({ "name": k.name, "model": k.model, "n": k.n, "r": k.r, "w": k.w, "merge": k.merge });
    match k.model {
        Model::PrimaryBackup => {
            v["read"] = json!(k.read.to_string());
            if let Some(home) = &k.home {
                v["home"] = json!(home);
            }
        }
        Model::Leaderless => v["quorum"] = json!(k.quorum.as_str()),
        Model::MultiLeader => {}
    }
    v
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
    /// `"linearizable"`, `"lease"`, `"bounded:<ms>"` or `"session"` (primary-backup only).
    read: Option<String>,
    /// `"strict"` or `"sloppy"` (leaderless only).
    quorum: Option<String>,
    /// The region holding the group's voters and leader (primary-backup only).
    home: Option<String>,
}

impl CreateBody {
    /// The settings asked for, or the core's error for a malformed `read` or `quorum`.
    fn settings(&self) -> Result<KeyspaceSettings, triarch_core::ConfigError> {
        Ok(KeyspaceSettings {
            n: self.n,
            r: self.r,
            w: self.w,
            merge: self.merge,
            read: self.read.as_deref().map(ReadPolicy::parse).transpose()?,
            quorum: self
                .quorum
                .as_deref()
                .map(str::parse::<QuorumMode>)
                .transpose()?,
            home: self.home.clone(),
        })
    }
}

/// The 400 for a request body that is not the JSON a route takes.
fn bad_json(e: &serde_json::Error) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": e.to_string(), "code": "ERR" })),
    )
        .into_response()
}

async fn create_keyspace(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let b: CreateBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_json(&e),
    };
    let settings = match b.settings() {
        Ok(settings) => settings,
        Err(e) => return error_response(&RequestError::InvalidConfig(e)),
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

/// `PUT /v1/keyspaces/{name}/home` with `{"home": "r2"}` (or `null`): re-places a
/// primary-backup keyspace (`TRIARCH.KEYSPACE HOME`).
#[derive(Deserialize)]
struct HomeBody {
    home: Option<String>,
}

async fn set_home(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let b: HomeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_json(&e),
    };
    let home = b.home.clone();
    match call(&shared, Request::SetHome { name, home: b.home }).await {
        Reply::Created => axum::Json(json!({ "home": home })).into_response(),
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
            read: None,
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

    #[test]
    fn read_policies_and_session_headers_make_get_with_and_bad_ones_are_400() {
        use axum::http::{HeaderMap, HeaderValue};
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(SESSION_HEADER, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let none = HeaderMap::new();
        let reads = |policy, session| GetReads { policy, session };
        assert_eq!(read_settings(None, &none, "balance").ok(), Some(None));
        assert_eq!(
            read_settings(Some("bounded:250"), &none, "balance").ok(),
            Some(Some(reads(
                Some(ReadPolicy::Bounded { max_lag_ms: 250 }),
                None
            )))
        );
        assert_eq!(
            read_settings(None, &headers(&["balance:17"]), "balance").ok(),
            Some(Some(reads(None, Some(17))))
        );
        // Tokens of other keyspaces are ignored; of several for this one, the highest counts.
        assert_eq!(
            read_settings(
                Some("session"),
                &headers(&["notes:99, balance:3", "balance:5"]),
                "balance"
            )
            .ok(),
            Some(Some(reads(Some(ReadPolicy::Session), Some(5))))
        );
        assert_eq!(
            read_settings(None, &headers(&["notes:99"]), "balance").ok(),
            Some(Some(reads(None, None)))
        );
        for bad in ["balance", "balance:0", "balance:x", "no such:1"] {
            let e = read_settings(None, &headers(&[bad]), "balance").unwrap_err();
            assert!(e.starts_with("invalid x-triarch-session"), "{bad:?}: {e}");
        }
        let e = read_settings(Some("stale"), &none, "balance").unwrap_err();
        assert!(e.starts_with("invalid READ"), "{e}");
    }

    #[test]
    fn write_responses_carry_the_session_token_and_clock_skew_is_503() {
        let token = SessionToken {
            keyspace: "balance".into(),
            index: 42,
        };
        let r = with_session(StatusCode::NO_CONTENT.into_response(), Some(token));
        assert_eq!(r.headers().get(SESSION_HEADER).unwrap(), "balance:42");
        let r = with_session(StatusCode::NO_CONTENT.into_response(), None);
        assert!(r.headers().get(SESSION_HEADER).is_none());
        assert_eq!(
            error_response(&RequestError::ClockAhead).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn keyspace_bodies_take_read_and_quorum_and_lists_show_them() {
        let body = |json: &str| serde_json::from_str::<CreateBody>(json).unwrap().settings();
        let s = body(r#"{"name":"b","model":"primary-backup","read":"bounded:200"}"#).unwrap();
        assert_eq!(s.read, Some(ReadPolicy::Bounded { max_lag_ms: 200 }));
        let s = body(r#"{"name":"l","model":"leaderless","quorum":"sloppy"}"#).unwrap();
        assert_eq!(s.quorum, Some(QuorumMode::Sloppy));
        let e = body(r#"{"name":"l","model":"leaderless","quorum":"loose"}"#).unwrap_err();
        let response = error_response(&RequestError::InvalidConfig(e.clone()));
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().starts_with("invalid QUORUM"), "{e}");
        let e = body(r#"{"name":"b","model":"primary-backup","read":"stale"}"#).unwrap_err();
        assert!(e.to_string().starts_with("invalid READ"), "{e}");
        let mut pb = KeyspaceConfig::with_defaults("b", Model::PrimaryBackup, 3);
        pb.read = ReadPolicy::Session;
        let v = keyspace_json(&pb);
        assert_eq!(
            (v["read"].as_str(), v.get("quorum")),
            (Some("session"), None)
        );
        let mut l = KeyspaceConfig::leaderless("l");
        l.quorum = QuorumMode::Sloppy;
        let v = keyspace_json(&l);
        assert_eq!(
            (v["quorum"].as_str(), v.get("read")),
            (Some("sloppy"), None)
        );
    }
}
