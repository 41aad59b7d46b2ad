//! The load generator against real servers on loopback: the demo backend (killed and restarted
//! mid-run) and small servers that misbehave in one specific way each, so every failure class
//! is shown to be counted where it belongs.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};
use tokio_tungstenite::tungstenite::Message;

use fleetgate_testbed::backend::Backend;
use fleetgate_testbed::load::{HttpLoad, LoadPlan, LoadRun, LoadStats, Report, WsLoad};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn http_plan(load: HttpLoad, duration: Duration) -> LoadPlan {
    LoadPlan {
        http: Some(load),
        websocket: None,
        duration,
    }
}

fn ws_plan(load: WsLoad, duration: Duration) -> LoadPlan {
    LoadPlan {
        http: None,
        websocket: Some(load),
        duration,
    }
}

/// Polls the run's totals until `f` holds or `limit` passes; returns the last totals seen.
async fn until(stats: &LoadStats, limit: Duration, f: impl Fn(&Report) -> bool) -> Report {
    let start = Instant::now();
    loop {
        let report = stats.total();
        if f(&report) || start.elapsed() >= limit {
            return report;
        }
        sleep(ms(20)).await;
    }
}

/// Every attempt of a finished run has exactly one outcome.
fn assert_accounted(report: &Report) {
    let http = &report.http;
    assert_eq!(
        http.sent,
        http.succeeded + http.failed.total(),
        "attempts without an outcome: {http:?}"
    );
}

/// Answers `/status/NNN` with status NNN, anything else with 200.
async fn status_server() -> SocketAddr {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let code = req
                        .uri()
                        .path()
                        .strip_prefix("/status/")
                        .and_then(|c| c.parse::<u16>().ok())
                        .unwrap_or(200);
                    let mut response = Response::new(Full::new(Bytes::from_static(b"status")));
                    *response.status_mut() = StatusCode::from_u16(code).unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Accepts connections and reads requests, but never answers.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// A WebSocket server that answers each binary message with `reply(message)`, or not at all.
async fn ws_server(reply: fn(Bytes) -> Option<Bytes>) -> SocketAddr {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Binary(bytes) = message
                        && let Some(answer) = reply(bytes)
                        && ws.send(Message::Binary(answer)).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_load_on_a_healthy_backend_succeeds_at_the_configured_rate() {
    let backend = Backend::start(loopback(), "blue").await.unwrap();
    let mut load = HttpLoad::new(backend.addr());
    load.path = "/api/hello".to_owned();
    load.connections = 4;
    load.rate = Some(200.0);
    let run = LoadRun::start(http_plan(load, ms(1500))).unwrap();
    let report = run.finish().await;
    let http = &report.http;
    assert!(
        (200..=302).contains(&http.sent),
        "{} requests in 1.5 s at 200/s",
        http.sent
    );
    assert_eq!(http.succeeded, http.sent, "{http:?}");
    assert_eq!(http.failed.total(), 0);
    assert_eq!(http.success_ratio, Some(1.0));
    assert_eq!(http.latency.count, http.succeeded);
    let (p50, p99, max) = (
        http.latency.p50_ms.unwrap(),
        http.latency.p99_ms.unwrap(),
        http.latency.max_ms.unwrap(),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= max && max < 2000.0,
        "{http:?}"
    );
    assert!((report.window_secs - 1.5).abs() < 0.5);

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["http"]["sent"], http.sent);
    assert_eq!(json["http"]["failed"]["connect"], 0);
    assert!(json["http"]["latency"]["p99_ms"].is_f64());
    assert_eq!(json["websocket"]["opened"], 0);
}

#[tokio::test]
async fn the_rate_bounds_all_connections_together() {
    let backend = Backend::start(loopback(), "blue").await.unwrap();
    let mut load = HttpLoad::new(backend.addr());
    load.connections = 16;
    load.rate = Some(50.0);
    let report = LoadRun::start(http_plan(load, ms(2000)))
        .unwrap()
        .finish()
        .await;
    // 2 s at 50/s: 100 slots, the first at once.
    assert!(
        (80..=101).contains(&report.http.sent),
        "{} requests in 2 s at 50/s over 16 connections",
        report.http.sent
    );
    assert_accounted(&report);
}

#[tokio::test]
async fn killing_the_backend_mid_run_is_counted_and_recovery_shows() {
    let backend = Backend::start(loopback(), "blue").await.unwrap();
    let addr = backend.addr();
    let mut load = HttpLoad::new(addr);
    load.path = "/api/hello".to_owned();
    load.connections = 4;
    load.rate = Some(200.0);
    load.timeout = Duration::from_secs(1);
    let run = LoadRun::start(http_plan(load, Duration::from_secs(5))).unwrap();

    sleep(Duration::from_secs(1)).await;
    let healthy = run.snapshot(ms(800));
    // 160 at most; far fewer only if the machine is starved.
    assert!(healthy.http.succeeded > 60, "{:?}", healthy.http);
    assert_eq!(healthy.http.failed.total(), 0, "{:?}", healthy.http);

    backend.stop().await;
    sleep(Duration::from_secs(1)).await;
    let down = run.snapshot(ms(700));
    assert_eq!(down.http.succeeded, 0, "{:?}", down.http);
    assert!(down.http.failed.connect > 30, "{:?}", down.http);
    assert_eq!(down.http.success_ratio, Some(0.0));

    let backend = Backend::start(addr, "blue").await.unwrap();
    sleep(ms(1500)).await;
    let recovered = run.snapshot(Duration::from_secs(1));
    assert_eq!(recovered.http.failed.total(), 0, "{:?}", recovered.http);
    assert!(recovered.http.succeeded > 80, "{:?}", recovered.http);
    assert_eq!(recovered.http.success_ratio, Some(1.0));

    let total = run.finish().await;
    assert_accounted(&total);
    assert!(total.http.failed.connect >= down.http.failed.connect);
    assert_eq!(total.http.failed.status_5xx, 0);
    assert!(total.http.succeeded >= healthy.http.succeeded + recovered.http.succeeded);
    let ratio = total.http.success_ratio.unwrap();
    assert!(0.3 < ratio && ratio < 0.95, "overall success ratio {ratio}");
    drop(backend);
}

#[tokio::test]
async fn stopping_early_returns_promptly_with_every_attempt_accounted() {
    let backend = Backend::start(loopback(), "blue").await.unwrap();
    let mut load = HttpLoad::new(backend.addr());
    load.connections = 4;
    load.rate = Some(200.0);
    let mut ws = WsLoad::new(backend.addr());
    ws.connections = 2;
    ws.interval = ms(20);
    let run = LoadRun::start(LoadPlan {
        http: Some(load),
        websocket: Some(ws),
        duration: Duration::from_secs(60),
    })
    .unwrap();
    sleep(ms(500)).await;
    let stopping = Instant::now();
    let report = run.stop().await;
    assert!(
        stopping.elapsed() < ms(700),
        "stop took {:?}",
        stopping.elapsed()
    );
    assert!(report.http.succeeded > 20, "{:?}", report.http);
    assert_accounted(&report);
    let ws = &report.websocket;
    assert_eq!(ws.opened, 2);
    assert_eq!(ws.open_now, 0);
    assert_eq!(ws.echoed, ws.messages_sent, "{ws:?}");
}

#[tokio::test]
async fn statuses_are_counted_by_class() {
    let server = status_server().await;
    let run_path = |path: &str, is_success: Option<fn(StatusCode) -> bool>| {
        let mut load = HttpLoad::new(server);
        load.path = path.to_owned();
        load.connections = 2;
        load.rate = Some(100.0);
        if let Some(is_success) = is_success {
            load.is_success = is_success;
        }
        LoadRun::start(http_plan(load, ms(500))).unwrap().finish()
    };

    let r = run_path("/status/503", None).await;
    assert!(r.http.sent > 10);
    assert_eq!(r.http.failed.status_5xx, r.http.sent, "{:?}", r.http);
    assert_eq!(r.http.success_ratio, Some(0.0));
    // Responses that failed still have a latency.
    assert_eq!(r.http.latency.count, r.http.sent);
    assert_accounted(&r);

    let r = run_path("/status/404", None).await;
    assert_eq!(r.http.failed.status_4xx, r.http.sent, "{:?}", r.http);
    assert_accounted(&r);

    let r = run_path("/status/302", None).await;
    assert_eq!(r.http.succeeded, r.http.sent, "3xx is success by default");
    assert_accounted(&r);

    fn only_404(s: StatusCode) -> bool {
        s == StatusCode::NOT_FOUND
    }
    fn only_201(s: StatusCode) -> bool {
        s == StatusCode::CREATED
    }
    let r = run_path("/status/404", Some(only_404)).await;
    assert_eq!(r.http.succeeded, r.http.sent, "a custom rule accepts 404");
    assert_accounted(&r);

    let r = run_path("/status/200", Some(only_201)).await;
    assert_eq!(
        r.http.failed.other, r.http.sent,
        "a 2xx the rule rejects is neither 4xx nor 5xx"
    );
    assert_accounted(&r);
}

#[tokio::test]
async fn a_server_that_never_answers_is_counted_as_timeouts() {
    let server = silent_server().await;
    let mut load = HttpLoad::new(server);
    load.connections = 2;
    load.rate = Some(20.0);
    load.timeout = ms(200);
    let report = LoadRun::start(http_plan(load, ms(1000)))
        .unwrap()
        .finish()
        .await;
    assert!(report.http.failed.timeout >= 4, "{:?}", report.http);
    assert_eq!(report.http.failed.timeout, report.http.sent);
    assert_eq!(report.http.latency.count, 0);
    assert_accounted(&report);
}

#[tokio::test]
async fn nothing_listening_is_counted_as_connect_errors() {
    let closed = {
        let l = TcpListener::bind(loopback()).await.unwrap();
        l.local_addr().unwrap()
    };
    let mut load = HttpLoad::new(closed);
    load.connections = 2;
    load.rate = Some(50.0);
    let report = LoadRun::start(http_plan(load, ms(600)))
        .unwrap()
        .finish()
        .await;
    assert!(report.http.failed.connect >= 10, "{:?}", report.http);
    assert_eq!(report.http.failed.connect, report.http.sent);
    assert_eq!(report.http.success_ratio, Some(0.0));
    assert_accounted(&report);
}

#[tokio::test]
async fn websocket_echoes_are_sent_and_checked() {
    let backend = Backend::start(loopback(), "blue").await.unwrap();
    let mut load = WsLoad::new(backend.addr());
    load.connections = 5;
    load.interval = ms(50);
    let run = LoadRun::start(ws_plan(load, ms(1200))).unwrap();
    let live = until(&run.stats(), Duration::from_secs(1), |r| {
        r.websocket.open_now == 5
    })
    .await;
    assert_eq!(live.websocket.open_now, 5);
    let report = run.finish().await;
    let ws = &report.websocket;
    assert_eq!(ws.opened, 5);
    assert_eq!(ws.dropped, 0, "{ws:?}");
    assert_eq!(ws.open_now, 0, "finish closes every connection");
    assert!(ws.echoed >= 5 * 10, "{ws:?}");
    assert_eq!(ws.echoed, ws.messages_sent, "{ws:?}");
    assert_eq!(ws.mismatched, 0);
    assert_eq!(ws.echo_timeouts, 0);
    assert_eq!(ws.echo_latency.count, ws.echoed);
}

#[tokio::test]
async fn killing_the_backend_drops_websockets_and_they_reconnect_when_it_is_back() {
    let backend = Backend::start(loopback(), "green").await.unwrap();
    let addr = backend.addr();
    let mut load = WsLoad::new(addr);
    load.connections = 4;
    load.interval = ms(50);
    load.timeout = Duration::from_secs(1);
    load.reconnect_delay = ms(100);
    let run = LoadRun::start(ws_plan(load, Duration::from_secs(6))).unwrap();
    let stats = run.stats();
    let up = until(&stats, Duration::from_secs(2), |r| {
        r.websocket.open_now == 4 && r.websocket.echoed >= 8
    })
    .await;
    assert_eq!(up.websocket.open_now, 4, "{:?}", up.websocket);
    assert_eq!(up.websocket.dropped, 0);

    backend.stop().await;
    let down = until(&stats, Duration::from_secs(2), |r| {
        r.websocket.dropped == 4 && r.websocket.connect_failed > 0
    })
    .await;
    assert_eq!(down.websocket.dropped, 4, "{:?}", down.websocket);
    assert_eq!(down.websocket.open_now, 0);
    assert!(
        down.websocket.connect_failed > 0,
        "reconnects were not tried"
    );

    let backend = Backend::start(addr, "green").await.unwrap();
    let back = until(&stats, Duration::from_secs(3), |r| {
        r.websocket.open_now == 4 && r.websocket.opened == 8
    })
    .await;
    assert_eq!(back.websocket.opened, 8, "{:?}", back.websocket);
    sleep(ms(500)).await;
    let recent = run.snapshot(ms(400));
    assert!(recent.websocket.echoed > 0, "{:?}", recent.websocket);
    assert_eq!(recent.websocket.dropped, 0);

    let total = run.finish().await;
    let ws = &total.websocket;
    assert_eq!(ws.dropped, 4, "{ws:?}");
    assert_eq!(ws.mismatched, 0);
    assert_eq!(ws.echo_timeouts, 0);
    // A message in flight when its connection dropped has no echo: at most one per drop.
    assert!(
        ws.messages_sent >= ws.echoed && ws.messages_sent - ws.echoed <= 4,
        "{ws:?}"
    );
    drop(backend);
}

#[tokio::test]
async fn a_wrong_echo_is_counted_as_mismatched() {
    let server = ws_server(|bytes| {
        let mut wrong = bytes.to_vec();
        if let Some(last) = wrong.last_mut() {
            *last ^= 0xff;
        }
        Some(Bytes::from(wrong))
    })
    .await;
    let mut load = WsLoad::new(server);
    load.connections = 2;
    load.interval = ms(50);
    let report = LoadRun::start(ws_plan(load, ms(600)))
        .unwrap()
        .finish()
        .await;
    let ws = &report.websocket;
    assert!(ws.mismatched >= 4, "{ws:?}");
    assert_eq!(ws.mismatched, ws.messages_sent);
    assert_eq!(ws.echoed, 0);
    assert_eq!(ws.dropped, 0);
}

#[tokio::test]
async fn a_missing_echo_is_a_timeout_and_the_connection_is_replaced() {
    let server = ws_server(|_| None).await;
    let mut load = WsLoad::new(server);
    load.connections = 1;
    load.interval = ms(50);
    load.timeout = ms(250);
    load.reconnect_delay = ms(50);
    let report = LoadRun::start(ws_plan(load, ms(1500)))
        .unwrap()
        .finish()
        .await;
    let ws = &report.websocket;
    assert!(ws.echo_timeouts >= 3, "{ws:?}");
    // One connection, given up after every missing echo and replaced by a new one.
    assert_eq!(ws.opened, ws.echo_timeouts, "{ws:?}");
    assert_eq!(
        ws.dropped, 0,
        "a connection the client gave up is not dropped"
    );
    assert_eq!(ws.echoed, 0);
}
