//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/config` and `/bans`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ResponseBody;
use crate::error::{full, json_response};
use crate::gateway::Gateway;
use crate::generation::ConfigSource;

/// Serves admin requests until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(handle(&gateway, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn handle(gateway: &Gateway, req: &Request<Incoming>) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({ "error": "only GET is supported here" }),
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => {
            if gateway.current().source == ConfigSource::None {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no config loaded yet\n".into(),
                    "text/plain",
                )
            } else {
                text(StatusCode::OK, "ready\n".into(), "text/plain")
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            metrics(gateway),
            "text/plain; version=0.0.4",
        ),
        "/config" => config(gateway),
        "/bans" => bans(gateway),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "not_found", "endpoints": ["/healthz", "/readyz", "/metrics", "/config", "/bans"] }),
        ),
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

fn age_seconds(at: std::time::SystemTime) -> f64 {
    at.elapsed().map_or(0.0, |d| d.as_secs_f64())
}

fn config(gateway: &Gateway) -> Response<ResponseBody> {
    let generation = gateway.current();
    let services: serde_json::Map<String, serde_json::Value> = generation
        .services
        .iter()
        .map(|(name, svc)| {
            let now = crate::upstream::now_ms();
            let endpoints: Vec<serde_json::Value> = svc
                .endpoints
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "address": e.address, "weight": e.weight, "labels": e.labels,
                        "healthy": e.is_healthy(), "ejected": e.is_ejected(now), "in_flight": e.in_flight(),
                    })
                })
                .collect();
            (name.clone(), serde_json::json!({ "endpoints": endpoints }))
        })
        .collect();
    let rejection = gateway.last_rejection().map(|(revision, errors)| {
        serde_json::json!({ "revision": revision, "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>() })
    });
    let applied_at_ms = generation
        .applied_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "revision": generation.revision,
            "checksum": generation.checksum.to_string(),
            "source": generation.source,
            "applied_at_unix_ms": applied_at_ms,
            "age_seconds": age_seconds(generation.applied_at),
            "resources": generation.resource_count,
            "routes": generation.routes.routes().map(|r| r.name.clone()).collect::<Vec<_>>(),
            "services": services,
            "last_rejected": rejection,
            "sync": gateway.sync_status(),
        }),
    )
}

/// The cc-protection bans in force: `{"bans": [{policy, key, expires_in_ms}]}`, sorted.
fn bans(gateway: &Gateway) -> Response<ResponseBody> {
    use fleetgate_agent_policy::plugins::cc_protection::{CcState, KIND};
    let mut policies = gateway.policy_state.all::<CcState>(KIND);
    policies.sort_by(|a, b| a.0.cmp(&b.0));
    let bans: Vec<serde_json::Value> = policies
        .iter()
        .flat_map(|(policy, state)| {
            state.bans().into_iter().map(move |ban| {
                serde_json::json!({
                    "policy": policy,
                    "key": ban.key,
                    "expires_in_ms": u64::try_from(ban.expires_in.as_millis()).unwrap_or(u64::MAX),
                })
            })
        })
        .collect();
    json_response(StatusCode::OK, &serde_json::json!({ "bans": bans }))
}

fn metrics(gateway: &Gateway) -> String {
    let generation = gateway.current();
    let mut out = String::new();
    gateway.telemetry.stats.render(&mut out);
    let t = &gateway.telemetry;
    let _ = writeln!(
        out,
        "# HELP fleetgate_open_connections Client connections open now."
    );
    let _ = writeln!(out, "# TYPE fleetgate_open_connections gauge");
    let _ = writeln!(out, "fleetgate_open_connections {}", t.open_connections());
    let _ = writeln!(
        out,
        "# HELP fleetgate_open_upgraded_connections WebSocket and other upgraded connections open now."
    );
    let _ = writeln!(out, "# TYPE fleetgate_open_upgraded_connections gauge");
    let _ = writeln!(
        out,
        "fleetgate_open_upgraded_connections {}",
        t.open_tunnels()
    );
    let _ = writeln!(out, "# HELP fleetgate_config_info The config serving now.");
    let _ = writeln!(out, "# TYPE fleetgate_config_info gauge");
    let _ = writeln!(
        out,
        "fleetgate_config_info{{revision=\"{}\",checksum=\"{}\",source=\"{:?}\"}} 1",
        generation.revision,
        generation.checksum.short(),
        generation.source
    );
    if let Some(sync) = gateway.sync_status() {
        let connected = u8::from(sync.state == "connected");
        let _ = writeln!(
            out,
            "# HELP fleetgate_sync_connected Whether a manager session is up (1) or not (0)."
        );
        let _ = writeln!(out, "# TYPE fleetgate_sync_connected gauge");
        let _ = writeln!(out, "fleetgate_sync_connected {connected}");
        for (name, help, value) in [
            (
                "fleetgate_sync_sessions_total",
                "Manager sessions started.",
                sync.sessions_total,
            ),
            (
                "fleetgate_sync_acks_total",
                "Revisions from the managers applied and acknowledged.",
                sync.acks_total,
            ),
            (
                "fleetgate_sync_nacks_total",
                "Revisions from the managers rejected (the previous one kept serving).",
                sync.nacks_total,
            ),
            (
                "fleetgate_sync_received_bytes_total",
                "UDP bytes received from managers (QUIC, TLS and keep-alives included).",
                sync.received_bytes,
            ),
            (
                "fleetgate_sync_sent_bytes_total",
                "UDP bytes sent to managers.",
                sync.sent_bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        }
        if let Some(not_after) = sync.cert_not_after_ms {
            let _ = writeln!(
                out,
                "# HELP fleetgate_sync_certificate_expiry_seconds Unix time the agent certificate expires."
            );
            let _ = writeln!(
                out,
                "# TYPE fleetgate_sync_certificate_expiry_seconds gauge"
            );
            let _ = writeln!(
                out,
                "fleetgate_sync_certificate_expiry_seconds {}",
                not_after / 1000
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP fleetgate_config_age_seconds Seconds since the serving config was applied."
    );
    let _ = writeln!(out, "# TYPE fleetgate_config_age_seconds gauge");
    let _ = writeln!(
        out,
        "fleetgate_config_age_seconds {:.3}",
        age_seconds(generation.applied_at)
    );
    let _ = writeln!(
        out,
        "# HELP fleetgate_access_log_dropped_total Access-log lines dropped because stdout was not keeping up."
    );
    let _ = writeln!(out, "# TYPE fleetgate_access_log_dropped_total counter");
    let _ = writeln!(
        out,
        "fleetgate_access_log_dropped_total {}",
        t.dropped_access_lines()
    );
    let _ = writeln!(
        out,
        "# HELP fleetgate_upstream_healthy 1 when an endpoint is healthy and not ejected."
    );
    let _ = writeln!(out, "# TYPE fleetgate_upstream_healthy gauge");
    let now = crate::upstream::now_ms();
    let mut services: Vec<_> = generation.services.iter().collect();
    services.sort_by_key(|(name, _)| name.as_str());
    for (name, svc) in services {
        for e in &svc.endpoints {
            let up = e.is_healthy() && !e.is_ejected(now);
            let _ = writeln!(
                out,
                "fleetgate_upstream_healthy{{service=\"{name}\",endpoint=\"{}\"}} {}",
                e.address,
                u8::from(up)
            );
        }
    }
    out
}
