//! The fleet half of the admin API: join tokens, the agents view, rollout progress, and
//! revocation.
//!
//! - `POST /api/v1/join-tokens` (admin) `{ttl_secs, max_uses}` → the token text, shown once.
//!   `GET` lists them (never secrets), `DELETE /api/v1/join-tokens/{id}` revokes one.
//! - `GET /api/v1/agents` (viewer): every enrolled agent from the replicated registry, joined
//!   with what the nodes they connect to know live (this node's view plus each other node's
//!   `GET /api/v1/agents/live`), and the rollout of a revision (`?revision=N`, default the
//!   current one): applied on X of Y connected agents.
//! - `POST /api/v1/agents/{id}/revoke` (admin).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use fleetgate_manager_store::{AgentRecord, Command, JoinToken};
use fleetgate_proto::join_token::JoinToken as JoinTokenText;
use http::{HeaderMap, Method, header};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{ApiError, ApiResult, authorize, now_ms, parse_json, propose};
use crate::auth::{Role, hash_token};
use crate::fleet::{LiveAgent, merge};
use crate::node::NodeCtx;

/// How long a join token is valid unless the request says otherwise.
const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(3600);
/// The longest a join token may be valid: it is a bearer credential for joining the fleet.
const MAX_JOIN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long `GET /api/v1/agents` waits for another node's live view.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes() -> Router<NodeCtx> {
    Router::new()
        .route(
            "/api/v1/join-tokens",
            get(list_join_tokens).post(create_join_token),
        )
        .route(
            "/api/v1/join-tokens/{id}",
            axum::routing::delete(revoke_join_token),
        )
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/live", get(live))
        .route("/api/v1/agents/{id}/revoke", post(revoke_agent))
}

/// The body of `POST /api/v1/join-tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinTokenRequest {
    #[serde(default)]
    ttl_secs: Option<u64>,
    /// How many agents may enrol with it; 0 for any number until it expires. Default 1.
    #[serde(default)]
    max_uses: Option<u32>,
}

fn random_hex(bytes: usize) -> ApiResult<String> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf)
        .map_err(|_| ApiError::Internal("the system random generator failed".to_owned()))?;
    Ok(hex::encode(buf))
}

async fn create_join_token(
    State(ctx): State<NodeCtx>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let author = authorize(&ctx, &headers, Role::Admin)?;
    let request: JoinTokenRequest = if body.is_empty() {
        JoinTokenRequest {
            ttl_secs: None,
            max_uses: None,
        }
    } else {
        parse_json(&body)?
    };
    let ttl = request
        .ttl_secs
        .map_or(DEFAULT_JOIN_TTL, Duration::from_secs);
    if ttl.is_zero() || ttl > MAX_JOIN_TTL {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs must be between 1 and {}",
            MAX_JOIN_TTL.as_secs()
        )));
    }
    let text = JoinTokenText {
        id: random_hex(8)?,
        secret: random_hex(32)?,
        ca_fingerprint: crate::tls::fingerprint(&ctx.tls.ca_cert)
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    let now = now_ms();
    let record = JoinToken {
        id: text.id.clone(),
        sha256: hash_token(&text.secret),
        created_by: author.name.clone(),
        created_ms: now,
        expires_ms: now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        max_uses: request.max_uses.unwrap_or(1),
        uses: 0,
    };
    let answer = json!({
        "id": record.id,
        "token": text.to_string(),
        "expires_ms": record.expires_ms,
        "max_uses": record.max_uses,
    });
    propose(
        &ctx,
        Command::PutJoinToken {
            author: author.name,
            time_ms: now,
            token: record,
        },
    )
    .await?;
    Ok(Json(answer).into_response())
}

async fn list_join_tokens(State(ctx): State<NodeCtx>, headers: HeaderMap) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Admin)?;
    let items: Vec<_> = ctx
        .reader
        .agent_registry()
        .join_tokens
        .into_values()
        .map(|t| {
            json!({
                "id": t.id,
                "created_by": t.created_by,
                "created_ms": t.created_ms,
                "expires_ms": t.expires_ms,
                "max_uses": t.max_uses,
                "uses": t.uses,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

async fn revoke_join_token(
    State(ctx): State<NodeCtx>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let author = authorize(&ctx, &headers, Role::Admin)?;
    propose(
        &ctx,
        Command::RevokeJoinToken {
            author: author.name,
            time_ms: now_ms(),
            id: id.clone(),
        },
    )
    .await?;
    Ok(Json(json!({"id": id, "revoked": true})).into_response())
}

async fn revoke_agent(
    State(ctx): State<NodeCtx>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let author = authorize(&ctx, &headers, Role::Admin)?;
    propose(
        &ctx,
        Command::RevokeAgent {
            author: author.name,
            time_ms: now_ms(),
            agent_id: id.clone(),
        },
    )
    .await?;
    Ok(Json(json!({"id": id, "revoked": true})).into_response())
}

/// `GET /api/v1/agents/live`: this node's live view only.
async fn live(State(ctx): State<NodeCtx>, headers: HeaderMap) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Viewer)?;
    Ok(Json(json!({ "node_id": ctx.id, "items": ctx.fleet.list() })).into_response())
}

/// One row of the fleet view.
#[derive(Debug, Serialize)]
struct AgentView {
    #[serde(flatten)]
    record: AgentRecord,
    /// What a node knows live; absent when no reachable node has seen it since it started.
    live: Option<LiveAgent>,
}

/// Rollout of one revision over the connected agents.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Rollout {
    pub revision: u64,
    /// Connected, unrevoked agents: the ones the revision is being rolled out to.
    pub selected: usize,
    /// Of those, serving this revision or a newer one.
    pub applied: usize,
    /// Of those, rejected this revision (or a newer one) and serve an older one.
    pub failed: usize,
    /// Neither yet.
    pub pending: usize,
}

/// Counts how far `revision` has reached among `agents`.
pub fn rollout<'a>(revision: u64, agents: impl IntoIterator<Item = &'a LiveAgent>) -> Rollout {
    let mut out = Rollout {
        revision,
        selected: 0,
        applied: 0,
        failed: 0,
        pending: 0,
    };
    for agent in agents.into_iter().filter(|a| a.connected) {
        out.selected += 1;
        if agent.applied_revision >= revision {
            out.applied += 1;
        } else if agent
            .last_nack
            .as_ref()
            .is_some_and(|n| n.revision >= revision)
        {
            out.failed += 1;
        } else {
            out.pending += 1;
        }
    }
    out
}

#[derive(Debug, Deserialize)]
struct AgentsQuery {
    revision: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct LiveReply {
    items: Vec<LiveAgent>,
}

async fn agents(
    State(ctx): State<NodeCtx>,
    Query(query): Query<AgentsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&ctx, &headers, Role::Viewer)?;
    let members: Vec<(u64, String)> = {
        let metrics = ctx.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != ctx.id)
            .map(|(id, node)| (*id, node.api_addr.clone()))
            .collect()
    };
    let mut forward = HeaderMap::new();
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        forward.insert(header::AUTHORIZATION, auth.clone());
    }
    let calls = members.into_iter().map(|(id, addr)| {
        let http = ctx.http.clone();
        let forward = forward.clone();
        async move {
            let url = format!("https://{addr}/api/v1/agents/live");
            let reply = tokio::time::timeout(
                PEER_TIMEOUT,
                http.call(Method::GET, &url, &forward, Bytes::new()),
            )
            .await;
            match reply {
                Ok(Ok(reply)) if reply.status.is_success() => {
                    serde_json::from_slice::<LiveReply>(&reply.body)
                        .map(|r| r.items)
                        .map_err(|_| id)
                }
                _ => Err(id),
            }
        }
    });
    let mut views = ctx.fleet.list();
    let mut unreachable = Vec::new();
    for result in futures_util::future::join_all(calls).await {
        match result {
            Ok(items) => views.extend(items),
            Err(id) => unreachable.push(id),
        }
    }
    let mut live: BTreeMap<String, LiveAgent> = merge(views);
    let registry = ctx.reader.agent_registry();
    let revision = query.revision.unwrap_or_else(|| ctx.reader.revision().0);
    // Only enrolled, unrevoked agents count for rollout.
    let progress = rollout(
        revision,
        live.values().filter(|a| registry.active(&a.id).is_ok()),
    );
    let agents: Vec<AgentView> = registry
        .agents
        .into_values()
        .map(|record| AgentView {
            live: live.remove(&record.id),
            record,
        })
        .collect();
    Ok(Json(json!({
        "revision": ctx.reader.revision().0,
        "rollout": progress,
        "agents": agents,
        "unreachable_nodes": unreachable,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::LastNack;

    fn agent(id: &str, connected: bool, applied: u64, nacked: Option<u64>) -> LiveAgent {
        LiveAgent {
            id: id.to_owned(),
            name: id.to_owned(),
            labels: BTreeMap::new(),
            version: "0".to_owned(),
            node_id: 1,
            connected,
            remote_addr: String::new(),
            connected_ms: 0,
            last_seen_ms: 0,
            applied_revision: applied,
            applied_checksum: String::new(),
            last_ack_ms: None,
            last_nack: nacked.map(|revision| LastNack {
                revision,
                time_ms: 0,
                errors: vec![],
            }),
            config_age_ms: None,
            session: 1,
        }
    }

    #[test]
    fn rollout_counts_connected_agents_by_outcome() {
        let agents = [
            agent("a", true, 7, None),
            agent("b", true, 8, None),
            agent("c", true, 6, Some(7)),
            agent("d", true, 6, Some(5)),
            agent("e", false, 1, None),
        ];
        assert_eq!(
            rollout(7, &agents),
            Rollout {
                revision: 7,
                selected: 4,
                applied: 2,
                failed: 1,
                pending: 1
            }
        );
    }
}
