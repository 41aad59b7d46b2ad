//! The admin API over gRPC: `fleetgate.admin.v1.Admin` (`proto/.../admin/v1/admin.proto`), served
//! on the admin HTTPS port next to the REST API (requests with a `content-type` of
//! `application/grpc…` go to it; HTTP/2 is offered there by ALPN).
//!
//! It is a second face of the same core as [`crate::api`]: the same bearer tokens and roles
//! (`authorization: Bearer <token>` metadata), the same checks before a write
//! ([`api::check_write`], [`api::check_rollback`]), the same commands and the same reading of
//! their results ([`api::outcome`]), so a validation problem or a stale `if_match` is reported
//! alike by both. What differs is how a write reaches the leader: REST proxies the HTTP request
//! to the leader's admin API, gRPC hands the command to the leader over the Raft channel
//! ([`crate::node::propose_command`]). The checks before proposing run where the state is
//! current, on the leader; on a follower they are left to the state machine, which makes them
//! again when it applies the command (a follower's state may trail, and checking a write
//! against it could refuse a write that is valid).
//!
//! Errors: `UNAUTHENTICATED` (no or unknown token), `PERMISSION_DENIED` (role too low),
//! `INVALID_ARGUMENT` (malformed request; or validation problems, with every problem in the
//! status details as an encoded [`v1::ValidationFailure`]), `NOT_FOUND`, `ABORTED` (`if_match`
//! is stale; the current revision is in the message and in the `current-revision` metadata),
//! `UNAVAILABLE` (no leader reachable: retry), `INTERNAL`.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use fleetgate_manager_store::{Command, ConfigReader};
use fleetgate_proto::admin::v1::{self, admin_server};
use fleetgate_proto::convert::kind_from_wire;
use fleetgate_proto::sync::v1 as wire;
use fleetgate_shared::bundle::Format;
use fleetgate_shared::{Resource, ResourceKey, ValidationError};
use http::header;
use prost::Message;
use tonic::{Code, Status};
use tower::ServiceExt;

use crate::api::{self, ApiError, ApiResult, Written};
use crate::auth::{ApiToken, Role};
use crate::node::NodeCtx;

/// The metadata key of the current revision in an `ABORTED` status.
pub const CURRENT_REVISION_METADATA: &str = "current-revision";
/// How long a write answered through a follower waits for the follower to apply it, so that a
/// read on the same node right after sees it.
const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(5);

/// The admin API's app: gRPC requests to the `Admin` service, everything else to the REST
/// router ([`api::router`]).
pub fn admin_app(ctx: NodeCtx) -> Router {
    let rest = api::router(ctx.clone());
    let grpc = tonic::service::Routes::new(admin_server::AdminServer::new(AdminService { ctx }))
        .into_axum_router();
    Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let target = if is_grpc(&request) {
            grpc.clone()
        } else {
            rest.clone()
        };
        async move {
            let response = match target.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.into_response())
        }
    }))
}

fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The `Admin` service of one node.
#[derive(Clone, Debug)]
pub struct AdminService {
    ctx: NodeCtx,
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Unauthorized => Status::unauthenticated("a valid bearer token is required"),
            ApiError::Forbidden(role) => {
                Status::permission_denied(format!("this needs the {role:?} role").to_lowercase())
            }
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::BadRequest(m) => Status::invalid_argument(m),
            ApiError::Invalid(problems) => invalid(problems),
            ApiError::Conflict { expected, current } => {
                let mut status = Status::aborted(format!(
                    "expected revision {expected}, but the current revision is {current}"
                ));
                status
                    .metadata_mut()
                    .insert(CURRENT_REVISION_METADATA, current.into());
                status
            }
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Internal(m) => Status::internal(m),
        }
    }
}

/// `INVALID_ARGUMENT` with every problem: a summary in the message, the list as an encoded
/// `ValidationFailure` in the details.
fn invalid(problems: Vec<ValidationError>) -> Status {
    let message = match problems.as_slice() {
        [one] => format!("invalid: {}", describe(one)),
        [first, ..] => format!(
            "invalid: {} (and {} more problems)",
            describe(first),
            problems.len() - 1
        ),
        [] => "invalid".to_owned(),
    };
    let failure = v1::ValidationFailure {
        errors: problems
            .into_iter()
            .map(wire::ResourceError::from)
            .collect(),
    };
    Status::with_details(
        Code::InvalidArgument,
        message,
        failure.encode_to_vec().into(),
    )
}

fn describe(problem: &ValidationError) -> String {
    [&problem.resource, &problem.path, &problem.message]
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(": ")
}

fn authorize<T>(ctx: &NodeCtx, request: &tonic::Request<T>, needed: Role) -> ApiResult<ApiToken> {
    api::authorize(ctx, &request.metadata().clone().into_headers(), needed)
}

fn is_leader(ctx: &NodeCtx) -> bool {
    ctx.raft.metrics().borrow().current_leader == Some(ctx.id)
}

/// Commits `command` through the leader (wherever it is), reads its result like the REST API,
/// and waits (a bounded time) until this node has applied a new revision too.
async fn commit(ctx: &NodeCtx, command: Command) -> Result<Written, Status> {
    let result = crate::node::propose_command(ctx, command)
        .await
        .map_err(|e| Status::unavailable(format!("{e}; retry")))?;
    let written = api::outcome(result)?;
    if written.changed {
        wait_applied(&ctx.reader, written.revision).await;
    }
    Ok(written)
}

async fn wait_applied(reader: &ConfigReader, revision: u64) {
    let mut applied = reader.subscribe();
    let _ = tokio::time::timeout(LOCAL_APPLY_WAIT, applied.wait_for(|r| *r >= revision)).await;
}

fn key_from_wire(key: Option<wire::ResourceKey>) -> ApiResult<ResourceKey> {
    let key = key.ok_or_else(|| ApiError::BadRequest("`key` is required".to_owned()))?;
    ResourceKey::try_from(key).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The resources of an `ApplyRequest`: decoded from the wire (every problem reported) or
/// parsed from the YAML bundle.
fn resources_of(source: Option<v1::apply_request::Source>) -> ApiResult<Vec<Resource>> {
    match source {
        Some(v1::apply_request::Source::Resources(list)) => {
            let mut resources = Vec::with_capacity(list.items.len());
            let mut problems = Vec::new();
            for item in list.items {
                match Resource::try_from(item) {
                    Ok(resource) => resources.push(resource),
                    Err(e) => problems.push(ValidationError::from(wire::ResourceError::from(&e))),
                }
            }
            if problems.is_empty() {
                Ok(resources)
            } else {
                Err(ApiError::Invalid(problems))
            }
        }
        Some(v1::apply_request::Source::BundleYaml(yaml)) => {
            api::parse_bundle_bytes(&yaml, Format::Yaml)
        }
        None => Err(ApiError::BadRequest(
            "one of `resources` and `bundle_yaml` is required".to_owned(),
        )),
    }
}

fn change(key: ResourceKey, action: v1::change::Action) -> v1::Change {
    v1::Change {
        key: Some(wire::ResourceKey::from(key)),
        action: action.into(),
        fields: Vec::new(),
    }
}

/// One change per requested resource, in key order.
fn changes_of(
    requested: &[Resource],
    action: impl Fn(&Resource) -> v1::change::Action,
) -> Vec<v1::Change> {
    let mut keyed: Vec<&Resource> = requested.iter().collect();
    keyed.sort_by_key(|r| r.key());
    keyed
        .into_iter()
        .map(|resource| change(resource.key(), action(resource)))
        .collect()
}

/// What applying `resource` does to a state that holds `before` under its key.
fn action_against(resource: &Resource, before: Option<&Resource>) -> v1::change::Action {
    use v1::change::Action;
    match before {
        None => Action::Created,
        Some(old) if old == resource => Action::Unchanged,
        Some(_) => Action::Updated,
    }
}

/// The changes of the committed change set that made `revision`, in key order.
fn changes_at(reader: &ConfigReader, revision: u64) -> Vec<v1::Change> {
    use v1::change::Action;
    let Some(set) = reader.change_set(revision) else {
        return Vec::new();
    };
    let replaced: BTreeSet<ResourceKey> = set.replaced.iter().map(Resource::key).collect();
    set.delta
        .upserts
        .iter()
        .map(|r| {
            let key = r.key();
            let action = if replaced.contains(&key) {
                Action::Updated
            } else {
                Action::Created
            };
            (key, action)
        })
        .chain(
            set.delta
                .deletes
                .iter()
                .map(|k| (k.clone(), Action::Deleted)),
        )
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .map(|(key, action)| change(key, action))
        .collect()
}

/// "apply: 2 created, 1 updated", "rollback to 3: 1 deleted".
fn summary(set: &fleetgate_manager_store::ChangeSet) -> String {
    let replaced: BTreeSet<ResourceKey> = set.replaced.iter().map(Resource::key).collect();
    let updated = set
        .delta
        .upserts
        .iter()
        .filter(|r| replaced.contains(&r.key()))
        .count();
    let created = set.delta.upserts.len() - updated;
    let counts: Vec<String> = [
        (created, "created"),
        (updated, "updated"),
        (set.delta.deletes.len(), "deleted"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let what = match set.rollback_to {
        Some(to) => format!("rollback to {to}"),
        None => "apply".to_owned(),
    };
    if counts.is_empty() {
        what
    } else {
        format!("{what}: {}", counts.join(", "))
    }
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    async fn apply(
        &self,
        request: tonic::Request<v1::ApplyRequest>,
    ) -> Result<tonic::Response<v1::ApplyResponse>, Status> {
        let ctx = &self.ctx;
        let token = authorize(ctx, &request, Role::Editor)?;
        let request = request.into_inner();
        let resources = resources_of(request.source)?;
        if resources.is_empty() {
            return Err(Status::invalid_argument("no resource to apply"));
        }
        let current = ctx.reader.snapshot();
        if request.dry_run {
            // A read: against this node's state, like any read.
            api::check_write(&current, request.if_match, &resources, &[])?;
            return Ok(tonic::Response::new(v1::ApplyResponse {
                revision: current.revision,
                changes: changes_of(&resources, |r| action_against(r, current.get(&r.key()))),
                dry_run: true,
            }));
        }
        if is_leader(ctx) {
            api::check_write(&current, request.if_match, &resources, &[])?;
        }
        let written = commit(
            ctx,
            api::apply_command(token, request.if_match, resources.clone(), Vec::new()),
        )
        .await?;
        // From the committed change set (what the leader applied), not from this node's state
        // before the write, which may have trailed.
        let set = ctx
            .reader
            .change_set(written.revision)
            .filter(|_| written.changed);
        let changes = changes_of(&resources, |resource| {
            use v1::change::Action;
            let key = resource.key();
            match &set {
                Some(set) if set.delta.upserts.iter().any(|r| r.key() == key) => {
                    if set.replaced.iter().any(|r| r.key() == key) {
                        Action::Updated
                    } else {
                        Action::Created
                    }
                }
                _ => Action::Unchanged,
            }
        });
        Ok(tonic::Response::new(v1::ApplyResponse {
            revision: written.revision,
            changes,
            dry_run: false,
        }))
    }

    async fn get(
        &self,
        request: tonic::Request<v1::GetRequest>,
    ) -> Result<tonic::Response<v1::GetResponse>, Status> {
        authorize(&self.ctx, &request, Role::Viewer)?;
        let key = key_from_wire(request.into_inner().key)?;
        let snapshot = self.ctx.reader.snapshot();
        let resource = snapshot
            .get(&key)
            .ok_or_else(|| ApiError::NotFound(format!("{key} does not exist")))?;
        Ok(tonic::Response::new(v1::GetResponse {
            resource: Some(wire::Resource::from(resource)),
            revision: snapshot.revision,
        }))
    }

    async fn list(
        &self,
        request: tonic::Request<v1::ListRequest>,
    ) -> Result<tonic::Response<v1::ListResponse>, Status> {
        authorize(&self.ctx, &request, Role::Viewer)?;
        let kind = request.into_inner().kind;
        let kind = if kind == i32::from(wire::Kind::Unspecified) {
            None
        } else {
            Some(kind_from_wire(kind).map_err(|e| Status::invalid_argument(e.to_string()))?)
        };
        let snapshot = self.ctx.reader.snapshot();
        let mut resources: Vec<&Resource> = snapshot
            .resources()
            .filter(|r| kind.is_none_or(|k| r.kind() == k))
            .collect();
        resources.sort_by_key(|r| r.key());
        Ok(tonic::Response::new(v1::ListResponse {
            resources: resources.into_iter().map(wire::Resource::from).collect(),
            revision: snapshot.revision,
        }))
    }

    async fn delete(
        &self,
        request: tonic::Request<v1::DeleteRequest>,
    ) -> Result<tonic::Response<v1::DeleteResponse>, Status> {
        let ctx = &self.ctx;
        let token = authorize(ctx, &request, Role::Editor)?;
        let request = request.into_inner();
        let key = key_from_wire(request.key)?;
        if is_leader(ctx) {
            api::check_write(
                &ctx.reader.snapshot(),
                request.if_match,
                &[],
                std::slice::from_ref(&key),
            )?;
        }
        let written = commit(
            ctx,
            api::apply_command(token, request.if_match, Vec::new(), vec![key]),
        )
        .await?;
        Ok(tonic::Response::new(v1::DeleteResponse {
            revision: written.revision,
        }))
    }

    async fn history(
        &self,
        request: tonic::Request<v1::HistoryRequest>,
    ) -> Result<tonic::Response<v1::HistoryResponse>, Status> {
        authorize(&self.ctx, &request, Role::Viewer)?;
        let limit = match request.into_inner().limit {
            0 => api::DEFAULT_HISTORY_PAGE,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let revisions = self
            .ctx
            .reader
            .history(limit)
            .iter()
            .map(|set| v1::Revision {
                revision: set.revision,
                author: set.author.clone(),
                time_unix_ms: set.time_ms,
                summary: summary(set),
                checksum: set.checksum.to_string(),
            })
            .collect();
        Ok(tonic::Response::new(v1::HistoryResponse { revisions }))
    }

    async fn rollback(
        &self,
        request: tonic::Request<v1::RollbackRequest>,
    ) -> Result<tonic::Response<v1::RollbackResponse>, Status> {
        let ctx = &self.ctx;
        let token = authorize(ctx, &request, Role::Editor)?;
        let request = request.into_inner();
        if is_leader(ctx) {
            api::check_rollback(
                ctx,
                &ctx.reader.snapshot(),
                request.if_match,
                request.to_revision,
            )?;
        }
        let written = commit(
            ctx,
            api::rollback_command(token, request.if_match, request.to_revision),
        )
        .await?;
        let changes = if written.changed {
            changes_at(&ctx.reader, written.revision)
        } else {
            Vec::new()
        };
        Ok(tonic::Response::new(v1::RollbackResponse {
            revision: written.revision,
            changes,
        }))
    }

    async fn cluster_status(
        &self,
        request: tonic::Request<v1::ClusterStatusRequest>,
    ) -> Result<tonic::Response<v1::ClusterStatusResponse>, Status> {
        authorize(&self.ctx, &request, Role::Viewer)?;
        let status = api::cluster_status(&self.ctx);
        let metrics = self.ctx.raft.metrics().borrow().clone();
        let matched = |id: &u64| {
            metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map_or(0, |log_id| log_id.index)
        };
        let members = status
            .members
            .iter()
            .map(|(id, node)| v1::Member {
                id: *id,
                address: node.raft_addr.clone(),
                voter: status.voters.contains(id),
                matched_index: matched(id),
            })
            .collect();
        Ok(tonic::Response::new(v1::ClusterStatusResponse {
            members,
            leader: status.leader,
            term: status.term,
            applied_index: status.applied_index.unwrap_or(0),
            revision: status.revision,
            node_id: status.node_id,
        }))
    }
}
