//! The request path: route, apply the action, forward with retries, stream the response.
//!
//! Every request loads the current [`Generation`] once and uses only it: a swap during the
//! request changes nothing for it. Upgraded connections (WebSocket and any HTTP/1.1 Upgrade)
//! become a byte tunnel owned by its own task, holding only the two sockets, so no later swap
//! can reach them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetgate_agent_route::{Matched, RequestView, normalize_host};
use fleetgate_shared::model::{
    Backend, DirectResponse, Forward, HashOn, LoadBalancing, Redirect, RetryOn,
};
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::error::{ProxyError, empty, full};
use crate::gateway::Gateway;
use crate::generation::Generation;
use crate::headers;
use crate::inbound::Inbound;
use crate::telemetry::AccessRecord;
use crate::upstream::{
    ClientError, Endpoint, InFlight, Outcome, PooledBody, ServiceRuntime, UpstreamBody,
};
use crate::{BoxError, ResponseBody};
use fleetgate_agent_policy::{
    BodyPrefix, CONSUMER_HEADER, Chain, ConsumerEntry, Rejection, RequestCtx, Unfinished,
};

/// Request bodies up to this size are buffered when the route retries or mirrors, so that
/// they can be sent more than once; larger or unsized bodies stream once and are not retried.
const REPLAYABLE_BODY_LIMIT: u64 = 64 * 1024;

/// What the connection tells the request about itself.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Handles one request. Never fails: every error becomes a response here.
pub async fn handle(
    gateway: Arc<Gateway>,
    conn: ConnInfo,
    req: Request<Inbound>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let generation = gateway.current();
    let request_id = headers::request_id(req.headers());
    // Visible ASCII by construction (see `headers::request_id`).
    let id = request_id.to_str().unwrap_or_default();
    let raw_host = RawHost::of(&req);
    let host = normalize_host(raw_host.as_str());
    let mut record = AccessRecord::new(
        &request_id,
        conn.peer,
        req.method(),
        &host,
        req.uri(),
        req.version(),
        gateway.telemetry.access_enabled(),
    );
    let result = route(
        &gateway,
        &generation,
        conn,
        &host,
        &request_id,
        req,
        &mut record,
    )
    .await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            record.error = Some(error.code());
            if error.source() != crate::error::Source::Client {
                tracing::debug!(request_id = id, "{error}");
            }
            error.into_response(id)
        }
    };
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID.clone(), request_id);
    record.status = response.status().as_u16();
    record.headers_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (parts, body) = response.into_parts();
    let metered = Metered {
        inner: body,
        bytes: 0,
        started,
        record: Some(record),
        gateway,
    };
    Ok(Response::from_parts(parts, metered.boxed()))
}

/// The host the client named: the authority of an absolute-form target (and of every HTTP/2
/// request), else the Host header. A clone of either shares the request's bytes, so the
/// normalized host can borrow from it while the request moves on.
enum RawHost {
    Authority(http::uri::Authority),
    Header(HeaderValue),
    Missing,
}

impl RawHost {
    fn of(req: &Request<Inbound>) -> Self {
        match (req.uri().authority(), req.headers().get(header::HOST)) {
            (Some(authority), _) => RawHost::Authority(authority.clone()),
            (None, Some(host)) => RawHost::Header(host.clone()),
            (None, None) => RawHost::Missing,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            RawHost::Authority(authority) => authority.as_str(),
            RawHost::Header(host) => host.to_str().unwrap_or_default(),
            RawHost::Missing => "",
        }
    }
}

async fn route(
    gateway: &Arc<Gateway>,
    generation: &Arc<Generation>,
    conn: ConnInfo,
    host: &str,
    request_id: &HeaderValue,
    req: Request<Inbound>,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Split once: the policy chain borrows the target and the headers (the body may be read
    // meanwhile), and the parts go upstream from here without being put back together.
    let (mut parts, mut body) = req.into_parts();
    let view = RequestView {
        host,
        path: parts.uri.path(),
        query: parts.uri.query(),
        method: &parts.method,
        headers: &parts.headers,
    };
    let Some(matched) = generation.routes.find(&view) else {
        return Err(ProxyError::NoRoute {
            host: host.to_owned(),
            path: parts.uri.path().to_owned(),
        });
    };
    let route = matched.route;
    record.route = generation.route_stats.get(&route.name).cloned();
    if !conn.tls && generation.https_redirect.get(host).is_some() {
        let location = format!(
            "https://{host}{}",
            parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
        );
        return Ok(redirect_response(StatusCode::PERMANENT_REDIRECT, &location));
    }
    // What routes the request reads it as the client sent it, before the policy chain, which
    // may change headers (strip credentials, add claims, remove a client's consumer header)
    // and the query (strip a key sent as a query parameter). From the chain on, the request is
    // what it left: the query of the upstream target and of a redirect (their path is the
    // routed one, whatever a policy did to the path), the headers forwarded and those a
    // consistent hash reads (with the consumer the chain identified as its header).
    let canary = route.canary_for(&view);
    // `None`: the path goes upstream as the client sent it.
    let rewritten_path = match route.rewritten_path(&matched, parts.uri.path()) {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(path) => Some(path),
    };
    // The target as the client sent it (a reference count, not a copy): policies may change
    // only its query.
    let client_target = parts.uri.path_and_query().cloned();
    let policy_headers = {
        // Borrowed and precomputed unless the host's domain has policies of its own.
        let chain = generation
            .policies
            .chain_at(host, &route.name, matched.index);
        // The chain's future is created only when a plugin has to wait or the body has to
        // be read first (it would be copied into this one's state on every request).
        let outcome = if chain.is_empty() {
            PolicyOutcome::Forward(http::HeaderMap::new())
        } else {
            match run_policies_now(&chain, conn, &mut parts, &body, record) {
                PolicyRun::Done(outcome) => outcome,
                PolicyRun::Later(ctx, pending) => {
                    run_policies_later(&chain, ctx, pending, &mut body, record).await
                }
            }
        };
        match outcome {
            PolicyOutcome::Forward(headers) => headers,
            PolicyOutcome::Answer(answer) => return Ok(answer),
        }
    };
    let spec = &route.spec;
    let mut response = if let Some(direct) = &spec.direct_response {
        direct_response(direct)
    } else if let Some(redirect) = &spec.redirect {
        let routed_path = client_target.as_ref().map_or("/", PathAndQuery::path);
        let location = redirect_location(redirect, conn.tls, host, routed_path, parts.uri.query());
        redirect_response(
            StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND),
            &location,
        )
    } else if let Some(forward) = &spec.forward {
        let canary = canary.and_then(|i| forward.canary.get(i));
        let backends = canary.map_or(&forward.backends, |rule| &rule.backends);
        let upstream_target = upstream_target(rewritten_path, client_target, parts.uri.query())
            .map_err(|target| ProxyError::BadRewrite {
                route: route.name.to_string(),
                target,
            })?;
        forward_request(
            gateway,
            generation,
            conn,
            host,
            request_id,
            &matched,
            forward,
            backends,
            upstream_target,
            parts,
            body,
            record,
        )
        .await?
    } else {
        // Validation guarantees one action; an empty route answers rather than panicking.
        direct_response(&DirectResponse {
            status: 500,
            body: "route has no action".into(),
            content_type: None,
        })
    };
    let edits = &spec.filters.response_headers;
    if !edits.is_empty() {
        // Edits read and change the upstream's fields: they must be in the map first.
        crate::wire::materialize(&mut response);
        headers::apply_edits(response.headers_mut(), edits);
    }
    // Replace the upstream's fields of the same names (as `RawFields` are written). Most
    // requests have none, and extending by an empty map still costs ~120 instructions.
    if !policy_headers.is_empty() {
        response.headers_mut().extend(policy_headers);
    }
    Ok(response)
}

/// What a policy chain decided about a request.
enum PolicyOutcome {
    /// Go on, and add these headers to the response (rate-limit state, CORS).
    Forward(http::HeaderMap),
    /// Answer with this response instead.
    Answer(Response<ResponseBody>),
}

/// How far a policy chain got on a request without waiting.
// Not boxed: the value lives from the call to the match that takes it apart, and boxing the
// context would allocate for every request whose chain waits.
#[allow(clippy::large_enum_variant)]
enum PolicyRun<'r> {
    Done(PolicyOutcome),
    /// The request's context and what is left to do.
    Later(RequestCtx<'r>, Pending),
}

/// What is left of a chain's run once it has to wait.
enum Pending {
    /// Read the body, up to this many bytes, then run the chain: no plugin has run yet.
    Body(u64),
    /// Run the plugins from the one that has to wait.
    Plugins(Unfinished),
}

/// Runs a (non-empty) policy chain on the request, in place, as far as it goes without
/// waiting: the chain edits the request's own headers and target (its changes to the query
/// count). [`run_policies_later`] goes on from where it stopped.
fn run_policies_now<'r>(
    chain: &Chain,
    conn: ConnInfo,
    parts: &'r mut http::request::Parts,
    body: &Inbound,
    record: &mut AccessRecord,
) -> PolicyRun<'r> {
    let mut ctx = RequestCtx::borrowing(
        parts.method.clone(),
        &mut parts.uri,
        &mut parts.headers,
        conn.peer,
        conn.tls,
    );
    match chain.body_limit() {
        None => {}
        Some(_) if body.is_end_stream() => ctx.body = BodyPrefix::Complete(Bytes::new()),
        Some(limit) => return PolicyRun::Later(ctx, Pending::Body(limit)),
    }
    match chain.run_now(&mut ctx) {
        Ok(rejection) => PolicyRun::Done(policy_outcome(rejection, ctx, record)),
        Err(unfinished) => PolicyRun::Later(ctx, Pending::Plugins(unfinished)),
    }
}

/// The rest of a chain's run: reads the body prefix the chain wants (and puts it back in
/// front of the body) and then runs the chain, or runs the plugins from where
/// [`run_policies_now`] stopped.
async fn run_policies_later(
    chain: &Chain,
    mut ctx: RequestCtx<'_>,
    pending: Pending,
    body: &mut Inbound,
    record: &mut AccessRecord,
) -> PolicyOutcome {
    let rejection = match pending {
        Pending::Plugins(unfinished) => chain.run_from(unfinished, &mut ctx).await,
        Pending::Body(limit) => {
            let whole = std::mem::replace(body, Inbound::Empty);
            match whole.read_prefix_of(limit).await {
                Ok((read, inbound)) => {
                    ctx.body = if read.complete {
                        BodyPrefix::Complete(read.prefix)
                    } else {
                        BodyPrefix::Partial(read.prefix)
                    };
                    *body = inbound;
                }
                Err(e) => {
                    record.error = Some("client_body_error");
                    let answer = fleetgate_agent_policy::reject(
                        StatusCode::BAD_REQUEST,
                        "bad_request_body",
                        &format!("request body could not be read: {e}"),
                        "",
                    );
                    return PolicyOutcome::Answer(answer.map(full));
                }
            }
            // No plugin has run yet: as far as the chain goes without waiting, then on.
            chain.run(&mut ctx).await
        }
    };
    policy_outcome(rejection, ctx, record)
}

/// A chain's outcome as the proxy uses it (a refusal gets the headers the chain set for the
/// response too), recorded in the access record.
fn policy_outcome(
    rejection: Option<Rejection>,
    ctx: RequestCtx<'_>,
    record: &mut AccessRecord,
) -> PolicyOutcome {
    if let Some(rejection) = rejection {
        record.error = Some("policy");
        record.policy = Some(rejection.policy);
        let mut answer = rejection.response.map(full);
        answer.headers_mut().extend(ctx.response_headers);
        return PolicyOutcome::Answer(answer);
    }
    record.consumer = ctx.consumer;
    PolicyOutcome::Forward(ctx.response_headers)
}

fn direct_response(direct: &DirectResponse) -> Response<ResponseBody> {
    let mut response = Response::new(full(direct.body.clone()));
    *response.status_mut() = StatusCode::from_u16(direct.status).unwrap_or(StatusCode::OK);
    if let Some(ct) = direct
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    } else if !direct.body.is_empty() {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

/// Where a redirect route sends the client: `path` is the one the request was routed by,
/// `query` the one the policy chain left.
fn redirect_location(
    redirect: &Redirect,
    tls: bool,
    host: &str,
    path: &str,
    query: Option<&str>,
) -> String {
    let scheme = redirect
        .scheme
        .as_deref()
        .unwrap_or(if tls { "https" } else { "http" });
    let host = redirect.host.as_deref().unwrap_or(host);
    let port = redirect.port.map(|p| format!(":{p}")).unwrap_or_default();
    let path = redirect.path.as_deref().unwrap_or(path);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{path}{query}")
}

fn redirect_response(status: StatusCode, location: &str) -> Response<ResponseBody> {
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Picks one backend by weight; backends with weight 0 are drained and never picked.
fn pick_backend(backends: &[Backend]) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = fastrand::u64(..total);
    backends.iter().find(|b| {
        let w = u64::from(b.weight);
        if ticket < w {
            true
        } else {
            ticket -= w;
            false
        }
    })
}

/// The consistent-hash key of a request to `service`, read after the policy chain: a header
/// the chain left (`X-Fleetgate-Consumer` is the consumer it identified, which the proxy
/// sends beside the header map), a cookie or the client's address.
fn hash_key(
    service: &ServiceRuntime,
    headers: &http::HeaderMap,
    consumer: Option<&ConsumerEntry>,
    conn: ConnInfo,
) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let LoadBalancing::ConsistentHash { hash_on } = &service.spec.load_balancing else {
        return None;
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match hash_on {
        // Sent beside the map when a policy identified the consumer; a route without policies
        // forwards a client's (one with policies has removed it).
        HashOn::Header(name) if name.eq_ignore_ascii_case(CONSUMER_HEADER.as_str()) => {
            match consumer {
                Some(consumer) => consumer.consumer_header()?,
                None => headers.get(CONSUMER_HEADER)?,
            }
            .as_bytes()
            .hash(&mut h)
        }
        HashOn::Header(name) => headers.get(name.as_str())?.as_bytes().hash(&mut h),
        HashOn::Cookie(name) => fleetgate_agent_route::cookie(headers, name)?.hash(&mut h),
        HashOn::SourceIp => conn.peer.ip().hash(&mut h),
    }
    Some(h.finish())
}

/// The request body, either still streaming (sent once) or buffered (sendable again).
enum RequestBody {
    Streaming(Inbound),
    Replayable(Bytes),
}

impl RequestBody {
    fn take(&mut self) -> UpstreamBody {
        match std::mem::replace(self, RequestBody::Replayable(Bytes::new())) {
            RequestBody::Streaming(body) => body.boxed(),
            RequestBody::Replayable(bytes) if bytes.is_empty() => empty(),
            RequestBody::Replayable(bytes) => {
                *self = RequestBody::Replayable(bytes.clone());
                http_body_util::Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed()
            }
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replayable(_))
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward_request(
    gateway: &Arc<Gateway>,
    generation: &Arc<Generation>,
    conn: ConnInfo,
    host: &str,
    request_id: &HeaderValue,
    matched: &Matched<'_>,
    forward: &Forward,
    backends: &[Backend],
    upstream_target: PathAndQuery,
    mut parts: http::request::Parts,
    body: Inbound,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, ProxyError> {
    let route = matched.route;
    let backend = pick_backend(backends).ok_or_else(|| ProxyError::NoHealthyEndpoint {
        service: backends
            .first()
            .map(|b| b.service.clone())
            .unwrap_or_default(),
        subset: "(all backends have weight 0)".into(),
    })?;
    let service = generation
        .services
        .get(&backend.service)
        .ok_or_else(|| ProxyError::MissingService(backend.service.clone()))?;
    let key = hash_key(service, &parts.headers, record.consumer.as_deref(), conn);
    let upgrade = headers::is_upgrade(&parts.headers) && parts.version == Version::HTTP_11;
    // What `hyper::upgrade::on` takes from a request. hyper's HTTP/1.1 server puts it on every
    // request asking for an upgrade (the agent's own server hands those requests to hyper);
    // without it no tunnel is opened, and a 101 from the upstream reaches the client alone.
    let downstream_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    // The client's headers become the upstream's: moved, not copied.
    let mut upstream_headers = std::mem::take(&mut parts.headers);
    let client_host: Option<HeaderValue> = match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => upstream_headers.get(header::HOST).cloned(),
    };
    headers::strip_hop_by_hop(&mut upstream_headers, upgrade);
    // The host the client asked for (the normalized one when it sent neither form).
    let client_host = client_host.or_else(|| HeaderValue::from_str(host).ok());
    let mut added = headers::forwarding(
        &mut upstream_headers,
        conn.peer.ip(),
        conn.tls,
        client_host.as_ref(),
        request_id,
    );
    let host_header = match route
        .spec
        .filters
        .rewrite
        .as_ref()
        .and_then(|r| r.host.as_deref())
    {
        Some(rewritten) => HeaderValue::from_str(rewritten).ok(),
        None => client_host,
    };
    if let Some(value) = host_header {
        added.set_host(&mut upstream_headers, value);
    }
    added.set_consumer(record.consumer.as_deref());
    let edits = &route.spec.filters.request_headers;
    if !edits.is_empty() {
        // The route's edits apply to everything sent, the added fields included.
        added.merge_into(&mut upstream_headers);
        headers::apply_edits(&mut upstream_headers, edits);
    }

    let retries = forward.retries.as_ref();
    let wants_replay = retries.is_some() || forward.mirror.is_some();
    let declared_len = body.size_hint().exact();
    let mut body = if body.is_end_stream() {
        RequestBody::Replayable(Bytes::new())
    } else if wants_replay && declared_len.is_some_and(|n| n <= REPLAYABLE_BODY_LIMIT) {
        match body.collect().await {
            Ok(collected) => RequestBody::Replayable(collected.to_bytes()),
            Err(e) => {
                return Err(ProxyError::ClientBody(e.to_string()));
            }
        }
    } else {
        RequestBody::Streaming(body)
    };

    if let Some(mirror) = &forward.mirror
        && body.replayable()
        && fastrand::u8(..100) < mirror.percent
        && let Some(target) = generation.services.get(&mirror.service)
    {
        send_mirror(
            target.clone(),
            &parts.method,
            &upstream_target,
            &upstream_headers,
            added.clone().into_owned(),
            body.take(),
        );
    }

    let budget = generation.retry_budget(&route.name);
    if let Some(budget) = budget {
        budget.record_request();
    }
    let may_retry =
        retries.is_some_and(|r| crate::upstream::is_idempotent(&parts.method) || r.non_idempotent);
    let max_attempts = 1 + retries.map_or(0, |r| r.attempts);
    let timeout = forward.timeouts.request.map(|d| d.to_std());
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut attempt = 0;
    // Endpoints this request already failed on: a retry goes elsewhere while others remain.
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    loop {
        attempt += 1;
        record.attempts = attempt;
        let endpoint = service
            .pick_avoiding(&backend.subset, key, &tried)
            .ok_or_else(|| ProxyError::NoHealthyEndpoint {
                service: service.name.clone(),
                subset: ServiceRuntime::describe_subset(&backend.subset),
            })?;
        record.upstream = Some(endpoint.clone());
        let in_flight = InFlight::new(endpoint.clone());
        // Keep a copy of the headers only when another attempt could follow this one.
        let attempt_headers = if may_retry && attempt < max_attempts {
            upstream_headers.clone()
        } else {
            std::mem::take(&mut upstream_headers)
        };
        let request = upstream_request(
            &parts.method,
            &upstream_target,
            attempt_headers,
            body.take(),
            service,
        );
        let sent = service
            .client
            .send_with(&endpoint.authority, request, &added);
        let result = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, sent).await {
                Ok(result) => result.map_err(|e| classify(service, &endpoint, e)),
                Err(_) => Err(ProxyError::Timeout {
                    service: service.name.clone(),
                    endpoint: endpoint.address.clone(),
                    timeout_ms: timeout.map_or(0, |t| t.as_millis() as u64),
                }),
            },
            None => sent.await.map_err(|e| classify(service, &endpoint, e)),
        };
        // Whether this attempt may be followed by another. The budget is asked last, and only
        // when a retry is about to happen, so that attempts that succeed spend nothing.
        let may_retry_again = may_retry && attempt < max_attempts && body.replayable();
        let spend_retry =
            || budget.is_none_or(|b| b.try_spend(retries.map_or(0, |r| r.budget_percent)));
        match result {
            Ok(response) => {
                let status = response.status();
                service.report(
                    &endpoint,
                    if status.is_server_error() {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    },
                );
                if may_retry_again
                    && retries.is_some_and(|r| retry_on_status(r.retry_on.as_slice(), status))
                    && spend_retry()
                {
                    tracing::debug!(request_id = ?request_id, endpoint = %endpoint.address, %status, attempt, "retrying");
                    tried.push(endpoint.clone());
                    continue;
                }
                let idle = forward.timeouts.idle.map(|d| d.to_std());
                return Ok(finish_response(
                    gateway,
                    response,
                    in_flight,
                    downstream_upgrade,
                    idle,
                ));
            }
            Err(error) => {
                service.report(&endpoint, Outcome::Failure);
                let retryable_kind = match &error {
                    ProxyError::Connect { .. } => retries
                        .is_some_and(|r| retry_on(r.retry_on.as_slice(), RetryOn::ConnectFailure)),
                    ProxyError::Upstream { .. } => {
                        retries.is_some_and(|r| retry_on(r.retry_on.as_slice(), RetryOn::Reset))
                    }
                    _ => false,
                };
                if may_retry_again && retryable_kind && spend_retry() {
                    tracing::debug!(request_id = ?request_id, "{error}; retrying (attempt {attempt})");
                    tried.push(endpoint.clone());
                    continue;
                }
                return Err(error);
            }
        }
    }
}

fn retry_on(list: &[RetryOn], condition: RetryOn) -> bool {
    list.is_empty() || list.contains(&condition)
}

fn retry_on_status(list: &[RetryOn], status: StatusCode) -> bool {
    let condition = match status.as_u16() {
        502 => RetryOn::Status502,
        503 => RetryOn::Status503,
        504 => RetryOn::Status504,
        _ => return false,
    };
    retry_on(list, condition)
}

fn classify(service: &ServiceRuntime, endpoint: &Endpoint, error: ClientError) -> ProxyError {
    let reason = error.reason();
    if error.is_connect() {
        ProxyError::Connect {
            service: service.name.clone(),
            endpoint: endpoint.address.clone(),
            reason,
        }
    } else {
        ProxyError::Upstream {
            service: service.name.clone(),
            endpoint: endpoint.address.clone(),
            reason,
        }
    }
}

fn upstream_request(
    method: &Method,
    target: &PathAndQuery,
    headers: http::HeaderMap,
    body: UpstreamBody,
    service: &ServiceRuntime,
) -> Request<UpstreamBody> {
    // Origin form: the client adds the endpoint's authority where the protocol wants it.
    let uri = Uri::from(target.clone());
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    *request.version_mut() = match service.spec.protocol {
        fleetgate_shared::model::UpstreamProtocol::Http1 => Version::HTTP_11,
        fleetgate_shared::model::UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    if request.version() == Version::HTTP_2 {
        // HTTP/2 carries the authority in :authority; a Host header would be redundant.
        request.headers_mut().remove(header::HOST);
    }
    request
}

/// The request target sent upstream: the client's own (sharing its bytes) unless a rewrite
/// changed the path or a policy the query; the path is always the client's or the rewrite's,
/// the query the one the policy chain left. A regex rewrite may produce a path without its
/// leading slash; the target gets one. Fails with the target that does not parse.
fn upstream_target(
    rewritten_path: Option<String>,
    client: Option<PathAndQuery>,
    query: Option<&str>,
) -> Result<PathAndQuery, String> {
    let path = match (rewritten_path, client) {
        (Some(path), _) => path,
        (None, Some(client)) if client.as_str().starts_with('/') && client.query() == query => {
            return Ok(client);
        }
        (None, Some(client)) => client.path().to_owned(),
        (None, None) => "/".to_owned(),
    };
    let slash = if path.starts_with('/') { "" } else { "/" };
    let target = match query {
        Some(query) => format!("{slash}{path}?{query}"),
        None => format!("{slash}{path}"),
    };
    PathAndQuery::try_from(target.as_str()).map_err(|_| target)
}

fn finish_response(
    gateway: &Arc<Gateway>,
    mut response: Response<PooledBody>,
    in_flight: InFlight,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    idle: Option<Duration>,
) -> Response<ResponseBody> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let mut in_flight = Some(in_flight);
    if switching
        && let Some(downstream) = downstream_upgrade
        && let Some(upstream) = response.body_mut().take_upgraded()
    {
        tunnel(
            gateway.clone(),
            downstream,
            upstream,
            in_flight.take(),
            idle,
        );
    }
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, switching);
    let body = InFlightBody {
        inner: body,
        _in_flight: in_flight,
        idle: idle.map(|limit| (limit, Box::pin(tokio::time::sleep(limit)))),
    }
    .boxed();
    Response::from_parts(parts, body)
}

/// Joins the client's and the upstream's upgraded connections and copies bytes both ways
/// until either side closes, or until nothing moved either way for the route's idle timeout.
/// The task owns both sockets and nothing of the config, which is why config swaps never
/// touch an open WebSocket.
fn tunnel(
    gateway: Arc<Gateway>,
    downstream: hyper::upgrade::OnUpgrade,
    up: crate::upstream::Upgraded,
    in_flight: Option<InFlight>,
    idle: Option<Duration>,
) {
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let down = match downstream.await {
            Ok(down) => down,
            Err(e) => {
                tracing::debug!("upgrade did not complete: {e}");
                return;
            }
        };
        let _open = gateway.telemetry.tunnel_opened();
        let activity = Arc::new(std::sync::atomic::AtomicU64::new(crate::upstream::now_ms()));
        let mut down = Tracked {
            inner: hyper_util::rt::TokioIo::new(down),
            activity: activity.clone(),
        };
        let mut up = Tracked {
            inner: up,
            activity: activity.clone(),
        };
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        let result = match idle {
            None => copy.await,
            Some(limit) => {
                tokio::select! {
                    result = copy => result,
                    () = idle_watchdog(activity, limit) => {
                        tracing::debug!("upgraded connection closed after {limit:?} without traffic");
                        Ok((0, 0))
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!("upgraded connection ended: {e}");
        }
    });
}

fn send_mirror(
    target: Arc<ServiceRuntime>,
    method: &Method,
    path: &PathAndQuery,
    headers: &http::HeaderMap,
    added: headers::Added<'static>,
    body: UpstreamBody,
) {
    let Some(endpoint) = target.pick(&Default::default(), None) else {
        return;
    };
    let request = upstream_request(method, path, headers.clone(), body, &target);
    tokio::spawn(async move {
        // The mirror's answer is ignored; only a bounded wait so a stuck mirror cannot pile up tasks.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let sent = target
                .client
                .send_with(&endpoint.authority, request, &added);
            if let Ok(response) = sent.await {
                let _ = response.into_body().collect().await;
            }
        })
        .await;
    });
}

/// An upstream response body that keeps its endpoint's in-flight count raised until the
/// body ends or the client goes away.
struct InFlightBody {
    inner: PooledBody,
    _in_flight: Option<InFlight>,
    /// The route's idle timeout and the timer re-armed by every frame.
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl Body for InFlightBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some((limit, timer)) = &mut this.idle {
            match &polled {
                Poll::Ready(_) => timer.as_mut().reset(tokio::time::Instant::now() + *limit),
                Poll::Pending => {
                    if timer.as_mut().poll(cx).is_ready() {
                        let message =
                            format!("upstream sent nothing for {limit:?} (route idle timeout)");
                        return Poll::Ready(Some(Err(message.into())));
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Completes when `activity` (a [`crate::upstream::now_ms`] stamp) is older than `limit`.
async fn idle_watchdog(activity: Arc<std::sync::atomic::AtomicU64>, limit: Duration) {
    let limit_ms = limit.as_millis() as u64;
    loop {
        let last = activity.load(std::sync::atomic::Ordering::Relaxed);
        let quiet_for = crate::upstream::now_ms().saturating_sub(last);
        if quiet_for >= limit_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(limit_ms - quiet_for)).await;
    }
}

/// A stream that stamps `activity` whenever bytes are read from it.
struct Tracked<T> {
    inner: T,
    activity: Arc<std::sync::atomic::AtomicU64>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.store(
                crate::upstream::now_ms(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The response body as the client receives it: counts bytes and writes the access-log line
/// and metrics when the body ends or is dropped.
struct Metered {
    inner: ResponseBody,
    bytes: u64,
    started: Instant,
    record: Option<AccessRecord>,
    gateway: Arc<Gateway>,
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Ready(Some(Err(e))) => {
                let reason = e.to_string();
                self.finish(Some(reason));
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Metered {
    fn finish(&mut self, stream_error: Option<String>) {
        if let Some(mut record) = self.record.take() {
            record.bytes_out = self.bytes;
            // Only the access log shows the total time; the metrics use the time to headers.
            if self.gateway.telemetry.access_enabled() {
                record.total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            }
            record.stream_error = stream_error;
            self.gateway.telemetry.record(record);
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if self.record.is_some() {
            // hyper stops polling once a sized body reports its end, so ending here is normal.
            let error = (!self.inner.is_end_stream())
                .then(|| "client went away before the body ended".to_owned());
            self.finish(error);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_target_is_the_clients_unless_a_rewrite_changed_the_path() {
        let client = || Some(PathAndQuery::from_static("/api/items?id=7"));
        let query = Some("id=7");
        assert_eq!(
            upstream_target(None, client(), query).unwrap(),
            "/api/items?id=7"
        );
        assert_eq!(
            upstream_target(Some("/v2/items".into()), client(), query).unwrap(),
            "/v2/items?id=7"
        );
        // A regex rewrite without a leading slash gets one.
        assert_eq!(
            upstream_target(Some("items/7".into()), client(), query).unwrap(),
            "/items/7?id=7"
        );
        // A policy that dropped a query parameter: the client's path, the policy's query.
        assert_eq!(upstream_target(None, client(), None).unwrap(), "/api/items");
        assert_eq!(upstream_target(None, None, None).unwrap(), "/");
        let error = upstream_target(Some("/a b".into()), client(), query).unwrap_err();
        assert_eq!(error, "/a b?id=7");
    }
}
