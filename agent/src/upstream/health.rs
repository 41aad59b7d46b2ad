//! Active health checks: one task per service that probes every endpoint on an interval.

use std::sync::Weak;

use fleetgate_shared::model::HealthCheck;

use super::ServiceRuntime;

/// Starts the checker. It holds only a weak reference: when no config generation uses the
/// service any more, the runtime drops, and the task ends (or is aborted by the drop).
pub(super) fn spawn(
    service: Weak<ServiceRuntime>,
    check: HealthCheck,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(check.interval.to_std());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(service) = service.upgrade() else {
                return;
            };
            let check = &check;
            let probes = service.endpoints.iter().map(|endpoint| {
                let client = service.client.clone();
                let path = check.path.clone();
                async move {
                    let request = http::Request::get(path)
                        .header(http::header::USER_AGENT, "fleetgate-health-check")
                        .body(crate::error::empty());
                    let ok = match request {
                        Ok(request) => match tokio::time::timeout(
                            check.timeout.to_std(),
                            client.send(&endpoint.authority, request),
                        )
                        .await
                        {
                            Ok(Ok(response)) => {
                                let status = response.status().as_u16();
                                if check.expected_statuses.is_empty() {
                                    (200..400).contains(&status)
                                } else {
                                    check.expected_statuses.contains(&status)
                                }
                            }
                            _ => false,
                        },
                        Err(_) => false,
                    };
                    (endpoint, ok)
                }
            });
            for (endpoint, ok) in futures_util::future::join_all(probes).await {
                if let Some(healthy) =
                    endpoint.record_probe(ok, check.healthy_threshold, check.unhealthy_threshold)
                {
                    if healthy {
                        tracing::info!(service = %service.name, endpoint = %endpoint.address, "endpoint passed its health checks and is back in rotation");
                    } else {
                        tracing::warn!(service = %service.name, endpoint = %endpoint.address, path = %check.path, "endpoint failed its health checks and is out of rotation; check the backend");
                    }
                }
            }
        }
    })
}
