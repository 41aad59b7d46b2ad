//! The admin REST API under `/api/v1`.
//!
//! Reads are served from the local applied state. Writes (any method but GET/HEAD) sent to a
//! follower are proxied to the leader's admin API by [`forward_writes`]; on the leader, every
//! write is validated with `fleetgate_shared::validate` on the whole resulting config before it
//! is proposed, and the state machine checks it again when it applies it (concurrent writers).
//! Every write is recorded in the history with the name of the token that made it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use fleetgate_manager_store::{Command, CommandResult, ManagerNode, NodeId, Reason};
use fleetgate_shared::bundle::Format;
use fleetgate_shared::{Kind, Resource, ResourceKey, Snapshot, ValidationError};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{ApiToken, Role, hash_token, new_token};
use crate::node::{CertificateRequest, JoinMaterial, MemberRequest, NodeCtx};

/// Set on a request a follower forwarded, so that a node that is not the leader either (a
/// leader change in between) answers 503 instead of forwarding again.
const FORWARDED: &str = "x-fleetgate-forwarded";
/// The largest request body: bundles can carry certificate chains.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// How many change sets `GET /api/v1/revisions` lists unless `?limit=` says otherwise.
pub(crate) const DEFAULT_HISTORY_PAGE: usize = 100;

/// The admin API's router.
pub fn router(ctx: NodeCtx) -> Router {
    Router::new()
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/cluster/members", post(add_member))
        .route("/api/v1/cluster/members/{id}", delete(remove_member))
        .route("/api/v1/cluster/certificates", post(issue_certificate))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{name}", delete(revoke_token))
        .merge(crate::agents_api::routes())
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/rollback", post(rollback))
        .route("/api/v1/revisions", get(revisions))
        .route("/api/v1/revisions/{n}", get(revision))
        .route("/api/v1/{kind}", get(list))
        .route(
            "/api/v1/{kind}/{name}",
            get(get_one).put(put_one).delete(delete_one),
        )
        .layer(middleware::from_fn_with_state(ctx.clone(), forward_writes))
        .with_state(ctx)
}

/// An API error: one status, one JSON body.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    Forbidden(Role),
    NotFound(String),
    BadRequest(String),
    /// Validation or bundle problems: the body is the JSON list of `{resource, path, message}`.
    Invalid(Vec<ValidationError>),
    Conflict {
        expected: u64,
        current: u64,
    },
    /// No leader known, or the leader changed while forwarding: retry.
    Unavailable(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Unauthorized => {
                let mut response = (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "unauthorized", "message": "a valid bearer token is required"})),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
            ApiError::Forbidden(role) => (
                StatusCode::FORBIDDEN,
                json!({"error": "forbidden", "message": format!("this needs the {role:?} role").to_lowercase()}),
            ),
            ApiError::NotFound(m) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": m}),
            ),
            ApiError::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": m}),
            ),
            ApiError::Invalid(problems) => (StatusCode::BAD_REQUEST, json!(problems)),
            ApiError::Conflict { expected, current } => (
                StatusCode::CONFLICT,
                json!({"error": "conflict", "message": format!("expected revision {expected}, but the current revision is {current}"), "current_revision": current}),
            ),
            ApiError::Unavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unavailable", "message": m}),
            ),
            ApiError::Internal(m) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "internal", "message": m}),
            ),
        };
        (status, Json(body)).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Checks the bearer token: 401 without a known token, 403 with one whose role is too low.
pub(crate) fn authorize(ctx: &NodeCtx, headers: &HeaderMap, needed: Role) -> ApiResult<ApiToken> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    let record = ctx
        .reader
        .token(&hash_token(token.trim()))
        .ok_or(ApiError::Unauthorized)?;
    if record.role < needed {
        return Err(ApiError::Forbidden(needed));
    }
    Ok(record)
}

/// Proxies writes to the leader when this node is not it.
///
/// Reads are local unless they ask for `?consistent=true`: such a read is forwarded to the
/// leader like a write, and the leader confirms its leadership with a quorum and waits until it
/// has applied everything committed before answering (openraft's `ensure_linearizable`).
async fn forward_writes(State(ctx): State<NodeCtx>, request: Request, next: Next) -> Response {
    let read = request.method() == Method::GET || request.method() == Method::HEAD;
    let consistent = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair == "consistent=true"));
    if read && !consistent {
        return next.run(request).await;
    }
    let metrics = ctx.raft.metrics().borrow().clone();
    let leader = match metrics.current_leader {
        Some(leader) if leader == ctx.id => {
            if read && let Err(e) = ctx.raft.ensure_linearizable().await {
                return ApiError::Unavailable(format!("cannot confirm leadership: {e}; retry"))
                    .into_response();
            }
            return next.run(request).await;
        }
        Some(leader) => leader,
        None => {
            return ApiError::Unavailable("no leader is known; retry".to_owned()).into_response();
        }
    };
    if request.headers().contains_key(FORWARDED) {
        return ApiError::Unavailable("the leader changed while forwarding; retry".to_owned())
            .into_response();
    }
    let Some(node) = metrics.membership_config.membership().get_node(&leader) else {
        return ApiError::Unavailable(format!("leader {leader} has no address")).into_response();
    };
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let url = format!("https://{}{path}", node.api_addr);
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => return ApiError::BadRequest(e.to_string()).into_response(),
    };
    let mut headers = HeaderMap::new();
    for name in [
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        header::IF_MATCH,
    ] {
        if let Some(value) = parts.headers.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    headers.insert(FORWARDED, HeaderValue::from_static("1"));
    match ctx.http.send(parts.method, &url, &headers, body).await {
        Ok(response) => response.map(Body::new),
        Err(e) => {
            ApiError::Unavailable(format!("forwarding to leader {leader} failed: {e}; retry"))
                .into_response()
        }
    }
}

/// Wall-clock Unix milliseconds, stamped on commands by the node that proposes them.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn if_match(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("If-Match is not text".to_owned()))?;
    text.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| ApiError::BadRequest(format!("If-Match `{text}` is not a revision number")))
}

fn parse_kind(kind: &str) -> ApiResult<Kind> {
    kind.parse()
        .map_err(|e: fleetgate_shared::model::UnknownKind| ApiError::NotFound(e.to_string()))
}

/// Parses a request body as a bundle: JSON when the content type says so, else YAML.
fn parse_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<Vec<Resource>> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    parse_bundle_bytes(body, if json { Format::Json } else { Format::Yaml })
}

/// Parses a bundle (REST bodies, the gRPC `bundle_yaml`); every problem is reported, as a
/// validation failure.
pub(crate) fn parse_bundle_bytes(body: &[u8], format: Format) -> ApiResult<Vec<Resource>> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("the bundle is not UTF-8".to_owned()))?;
    fleetgate_shared::parse_bundle(text, format, "").map_err(|errors| {
        ApiError::Invalid(
            errors
                .into_iter()
                .map(|e| ValidationError {
                    resource: e.resource.unwrap_or(e.origin),
                    path: e.path,
                    message: e.message,
                })
                .collect(),
        )
    })
}

/// Parses a JSON body whatever its content type says (after authorization, so that a caller
/// without the right gets 401/403 rather than a parse error).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("bad JSON body: {e}")))
}

/// The whole config after `upserts` and `deletes`, validated. Unchanged resources are shared
/// with `current`, not copied.
fn resulting(
    current: &Snapshot,
    upserts: &[Resource],
    deletes: &[ResourceKey],
) -> ApiResult<Snapshot> {
    let mut seen = BTreeSet::new();
    for key in deletes {
        if !seen.insert(key.clone()) {
            return Err(ApiError::BadRequest(format!(
                "{key} appears more than once"
            )));
        }
        if current.get(key).is_none() {
            return Err(ApiError::NotFound(format!("{key} does not exist")));
        }
    }
    for resource in upserts {
        let key = resource.key();
        if !seen.insert(key.clone()) {
            return Err(ApiError::BadRequest(format!(
                "{key} appears more than once"
            )));
        }
    }
    let delta = fleetgate_shared::Delta {
        from: current.revision,
        to: current.revision,
        upserts: upserts.to_vec(),
        deletes: deletes.to_vec(),
    };
    let next = current
        .apply(&delta)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    fleetgate_shared::validate_change(current, &next).map_err(ApiError::Invalid)?;
    Ok(next)
}

/// The answer to a committed (or unchanged) write.
#[derive(Debug, Serialize)]
pub(crate) struct Written {
    pub(crate) revision: u64,
    pub(crate) checksum: String,
    pub(crate) changed: bool,
}

/// What a proposed command's result means to a client: the REST and gRPC APIs answer the same.
pub(crate) fn outcome(result: CommandResult) -> ApiResult<Written> {
    let (revision, checksum, changed) = match result {
        CommandResult::Committed { revision, checksum } => (revision, checksum, true),
        CommandResult::Unchanged { revision, checksum } => (revision, checksum, false),
        CommandResult::Rejected(reason) => return Err(rejected(reason)),
    };
    Ok(Written {
        revision,
        checksum: checksum.to_string(),
        changed,
    })
}

/// Proposes `command` through Raft on this node (the leader: REST writes reach it through
/// [`forward_writes`]) and maps its outcome to a response.
pub(crate) async fn propose(ctx: &NodeCtx, command: Command) -> ApiResult<Response> {
    let result = ctx.raft.client_write(command).await.map_err(|e| match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ApiError::Unavailable(format!(
                "this node is no longer the leader (leader: {:?}); retry",
                f.leader_id
            ))
        }
        other => ApiError::Unavailable(other.to_string()),
    })?;
    let written = outcome(result.data)?;
    let revision = written.revision;
    Ok(with_revision(Json(written).into_response(), revision))
}

fn rejected(reason: Reason) -> ApiError {
    match reason {
        Reason::RevisionMismatch { expected, current } => ApiError::Conflict { expected, current },
        Reason::Invalid(problems) => ApiError::Invalid(problems),
        Reason::NotFound(key) => ApiError::NotFound(format!("{key} does not exist")),
        r @ Reason::Conflicting(_) => ApiError::BadRequest(r.to_string()),
        r @ (Reason::RevisionNotInHistory { .. }
        | Reason::UnknownToken(_)
        | Reason::UnknownJoinToken(_)
        | Reason::UnknownAgent(_)) => ApiError::NotFound(r.to_string()),
        r @ (Reason::JoinTokenExpired(_)
        | Reason::JoinTokenUsedUp(_)
        | Reason::AgentExists(_)
        | Reason::AgentRevoked(_)) => ApiError::BadRequest(r.to_string()),
    }
}

/// Fails early with 409 when `If-Match` is already stale here; the state machine decides for
/// real when it applies the command.
fn check_revision(expected: Option<u64>, current: u64) -> ApiResult<()> {
    match expected {
        Some(expected) if expected != current => Err(ApiError::Conflict { expected, current }),
        _ => Ok(()),
    }
}

/// The checks an upsert/delete write gets before it is proposed (REST on the leader, gRPC on
/// the leader): `If-Match` against the current revision, then the whole resulting config
/// validated. Returns that resulting config (what a dry run shows). The state machine checks
/// both again when it applies the command, so a write checked against a stale state is still
/// refused if it no longer holds.
pub(crate) fn check_write(
    current: &Snapshot,
    expected: Option<u64>,
    upserts: &[Resource],
    deletes: &[ResourceKey],
) -> ApiResult<Snapshot> {
    check_revision(expected, current.revision)?;
    resulting(current, upserts, deletes)
}

/// The checks a rollback to `to` gets before it is proposed: `If-Match`, the revision still
/// in the history, and its content valid under today's rules.
pub(crate) fn check_rollback(
    ctx: &NodeCtx,
    current: &Snapshot,
    expected: Option<u64>,
    to: u64,
) -> ApiResult<()> {
    check_revision(expected, current.revision)?;
    let target = ctx.reader.content_at(to).ok_or_else(|| {
        ApiError::NotFound(format!(
            "revision {to} is not in the history (kept: {} to {})",
            ctx.reader.oldest_revision(),
            current.revision
        ))
    })?;
    target.validate().map_err(ApiError::Invalid)
}

/// An upsert/delete write by the holder of `token`, stamped now.
pub(crate) fn apply_command(
    token: ApiToken,
    expected: Option<u64>,
    upserts: Vec<Resource>,
    deletes: Vec<ResourceKey>,
) -> Command {
    Command::Apply {
        author: token.name,
        time_ms: now_ms(),
        expected_revision: expected,
        upserts,
        deletes,
    }
}

/// A rollback to `to` by the holder of `token`, stamped now.
pub(crate) fn rollback_command(token: ApiToken, expected: Option<u64>, to: u64) -> Command {
    Command::Rollback {
        author: token.name,
        time_ms: now_ms(),
        expected_revision: expected,
        to_revision: to,
    }
}

fn with_revision(mut response: Response, revision: u64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&revision.to_string()) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

#[derive(Debug, Serialize)]
struct Listing {
    revision: u64,
    items: Vec<Resource>,
}

async fn list(
    State(ctx): State<NodeCtx>,
    Path(kind): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Viewer)?;
    let kind = parse_kind(&kind)?;
    let snapshot = ctx.reader.snapshot();
    let items = snapshot
        .resources()
        .filter(|r| r.kind() == kind)
        .cloned()
        .collect();
    let revision = snapshot.revision;
    Ok(with_revision(
        Json(Listing { revision, items }).into_response(),
        revision,
    ))
}

async fn get_one(
    State(ctx): State<NodeCtx>,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Viewer)?;
    let key = ResourceKey::new(parse_kind(&kind)?, name);
    let snapshot = ctx.reader.snapshot();
    let resource = snapshot
        .get(&key)
        .ok_or_else(|| ApiError::NotFound(format!("{key} does not exist")))?;
    Ok(with_revision(
        Json(resource).into_response(),
        snapshot.revision,
    ))
}

async fn put_one(
    State(ctx): State<NodeCtx>,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let token = authorize(&ctx, &headers, Role::Editor)?;
    let key = ResourceKey::new(parse_kind(&kind)?, name);
    let expected = if_match(&headers)?;
    let mut resources = parse_body(&headers, &body)?;
    let resource = match (resources.pop(), resources.is_empty()) {
        (Some(resource), true) => resource,
        _ => {
            return Err(ApiError::BadRequest(
                "the body must hold exactly one resource".to_owned(),
            ));
        }
    };
    if resource.key() != key {
        return Err(ApiError::BadRequest(format!(
            "the body describes {}, but the path names {key}",
            resource.key()
        )));
    }
    check_write(
        &ctx.reader.snapshot(),
        expected,
        std::slice::from_ref(&resource),
        &[],
    )?;
    propose(
        &ctx,
        apply_command(token, expected, vec![resource], Vec::new()),
    )
    .await
}

async fn delete_one(
    State(ctx): State<NodeCtx>,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let token = authorize(&ctx, &headers, Role::Editor)?;
    let key = ResourceKey::new(parse_kind(&kind)?, name);
    let expected = if_match(&headers)?;
    check_write(
        &ctx.reader.snapshot(),
        expected,
        &[],
        std::slice::from_ref(&key),
    )?;
    propose(&ctx, apply_command(token, expected, Vec::new(), vec![key])).await
}

#[derive(Debug, Deserialize)]
struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn apply(
    State(ctx): State<NodeCtx>,
    Query(query): Query<ApplyQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let token = authorize(&ctx, &headers, Role::Editor)?;
    let expected = if_match(&headers)?;
    let resources = parse_body(&headers, &body)?;
    let current = ctx.reader.snapshot();
    let after = check_write(&current, expected, &resources, &[])?;
    if query.dry_run {
        let delta = fleetgate_shared::diff(&current, &after);
        return Ok(
            Json(json!({"dry_run": true, "revision": current.revision, "diff": delta}))
                .into_response(),
        );
    }
    propose(&ctx, apply_command(token, expected, resources, Vec::new())).await
}

#[derive(Debug, Deserialize)]
struct RollbackRequest {
    to: u64,
}

async fn rollback(
    State(ctx): State<NodeCtx>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let token = authorize(&ctx, &headers, Role::Editor)?;
    let request: RollbackRequest = parse_json(&body)?;
    let expected = if_match(&headers)?;
    check_rollback(&ctx, &ctx.reader.snapshot(), expected, request.to)?;
    propose(&ctx, rollback_command(token, expected, request.to)).await
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn revisions(
    State(ctx): State<NodeCtx>,
    Query(query): Query<HistoryQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Viewer)?;
    let (revision, checksum) = ctx.reader.revision();
    let history = ctx
        .reader
        .history(query.limit.unwrap_or(DEFAULT_HISTORY_PAGE));
    Ok(Json(json!({
        "revision": revision,
        "checksum": checksum.to_string(),
        "oldest": ctx.reader.oldest_revision(),
        "items": history,
    }))
    .into_response())
}

async fn revision(
    State(ctx): State<NodeCtx>,
    Path(n): Path<u64>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Viewer)?;
    let change_set = ctx
        .reader
        .change_set(n)
        .ok_or_else(|| ApiError::NotFound(format!("revision {n} is not in the history")))?;
    Ok(Json(change_set).into_response())
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub applied_index: Option<u64>,
    pub voters: Vec<NodeId>,
    pub members: BTreeMap<NodeId, ManagerNode>,
    pub revision: u64,
    pub checksum: String,
}

async fn cluster(State(ctx): State<NodeCtx>, headers: HeaderMap) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Viewer)?;
    Ok(Json(cluster_status(&ctx)).into_response())
}

/// The cluster as this node sees it.
pub(crate) fn cluster_status(ctx: &NodeCtx) -> ClusterStatus {
    let metrics = ctx.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let (revision, checksum) = ctx.reader.revision();
    ClusterStatus {
        node_id: ctx.id,
        state: format!("{:?}", metrics.state),
        leader: metrics.current_leader,
        term: metrics.current_term,
        applied_index: metrics.last_applied.map(|l| l.index),
        voters: membership.voter_ids().collect(),
        members: membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect(),
        revision,
        checksum: checksum.to_string(),
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, ManagerNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ApiError::Unavailable(format!(
                "this node is no longer the leader (leader: {:?}); retry",
                f.leader_id
            ))
        }
        // Another membership change is still being committed: a retry will succeed, so this
        // is 503 (which `join` retries), not a bad request.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            openraft::error::ChangeMembershipError::InProgress(e),
        )) => ApiError::Unavailable(format!("{e}; retry")),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ApiError::BadRequest(e.to_string())
        }
        other => ApiError::Unavailable(other.to_string()),
    }
}

/// Adds a node: as a learner first (it catches up on the log), then as a voter.
async fn add_member(
    State(ctx): State<NodeCtx>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Admin)?;
    let request: MemberRequest = parse_json(&body)?;
    ctx.raft
        .add_learner(request.node_id, request.addrs.clone(), true)
        .await
        .map_err(membership_error)?;
    ctx.raft
        .change_membership(
            ChangeMembers::AddVoterIds(BTreeSet::from([request.node_id])),
            false,
        )
        .await
        .map_err(membership_error)?;
    tracing::info!(node_id = request.node_id, addrs = %request.addrs, "added a voter");
    Ok(Json(json!({"node_id": request.node_id, "voter": true})).into_response())
}

/// Removes a node from the membership entirely.
async fn remove_member(
    State(ctx): State<NodeCtx>,
    Path(id): Path<NodeId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Admin)?;
    let membership = ctx.raft.metrics().borrow().membership_config.clone();
    if membership.membership().get_node(&id).is_none() {
        return Err(ApiError::NotFound(format!("node {id} is not a member")));
    }
    // `retain = false`: a node removed from the voters leaves the membership in the same
    // change. A first version followed this with a `RemoveNodes` change; in the 3-node test the
    // leader's Raft core then reported `panicked` (not investigated further).
    ctx.raft
        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
        .await
        .map_err(membership_error)?;
    tracing::info!(node_id = id, "removed a node");
    Ok(Json(json!({"node_id": id, "removed": true})).into_response())
}

/// Issues TLS material for a joining node, with the token file.
async fn issue_certificate(
    State(ctx): State<NodeCtx>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Admin)?;
    let request: CertificateRequest = parse_json(&body)?;
    let tls = ctx
        .tls
        .for_node(request.node_id, &request.hosts)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(JoinMaterial { tls }).into_response())
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    name: String,
    role: Role,
}

/// `POST /api/v1/tokens` (admin): creates a token; the secret is in this answer only.
async fn create_token(
    State(ctx): State<NodeCtx>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let author = authorize(&ctx, &headers, Role::Admin)?;
    let request: TokenRequest = parse_json(&body)?;
    if request.name.is_empty() || request.name.len() > 128 {
        return Err(ApiError::BadRequest(
            "a token name has 1 to 128 characters".to_owned(),
        ));
    }
    let (secret, record) = new_token(&request.name, request.role, &author.name, now_ms())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    propose(
        &ctx,
        Command::PutToken {
            author: author.name,
            time_ms: record.created_ms,
            token: record,
        },
    )
    .await?;
    Ok(Json(json!({"name": request.name, "role": request.role, "token": secret})).into_response())
}

/// `GET /api/v1/tokens` (admin): names, roles and creators; never secrets or hashes.
async fn list_tokens(State(ctx): State<NodeCtx>, headers: HeaderMap) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Admin)?;
    let items: Vec<Value> = ctx
        .reader
        .tokens()
        .into_iter()
        .map(|t| {
            json!({"name": t.name, "role": t.role, "created_by": t.created_by, "created_ms": t.created_ms})
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

/// `DELETE /api/v1/tokens/{name}` (admin).
async fn revoke_token(
    State(ctx): State<NodeCtx>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let author = authorize(&ctx, &headers, Role::Admin)?;
    propose(
        &ctx,
        Command::RevokeToken {
            author: author.name,
            time_ms: now_ms(),
            name: name.clone(),
        },
    )
    .await?;
    Ok(Json(json!({"name": name, "revoked": true})).into_response())
}

/// Serves `app` over TLS (HTTP/1.1 and HTTP/2) on `listener` until the process stops. A failed
/// handshake or connection only ends that connection.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    config: std::sync::Arc<rustls::ServerConfig>,
) -> Result<(), crate::Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "admin API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "admin API TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin API connection ended");
            }
        });
    }
}
