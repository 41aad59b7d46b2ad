//! The WAN emulator against real loopback sockets: latency, jitter, loss, partitions and resets
//! as seen by ordinary TCP and UDP peers.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetgate_testbed::wan::{LinkConditions, LinkControl, TcpRelay, UdpOptions, UdpRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A TCP echo server; counts the connections it accepted.
async fn tcp_echo() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// Sends `ping` and waits for its echo; returns the round-trip time.
async fn tcp_ping(stream: &mut TcpStream, ping: &[u8]) -> Duration {
    let start = Instant::now();
    stream.write_all(ping).await.unwrap();
    let mut back = vec![0u8; ping.len()];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back, ping);
    start.elapsed()
}

/// A UDP server that echoes every datagram, except that `stream` makes it send a tick to that
/// peer every 10 ms for 5 s (traffic that originates at the target).
async fn udp_echo() -> SocketAddr {
    let socket = Arc::new(UdpSocket::bind(loopback()).await.unwrap());
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            if &buf[..n] == b"stream" {
                let socket = socket.clone();
                tokio::spawn(async move {
                    for i in 0u32..500 {
                        let _ = socket.send_to(&i.to_be_bytes(), from).await;
                        tokio::time::sleep(ms(10)).await;
                    }
                });
            } else {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        }
    });
    addr
}

/// A UDP server that answers every datagram with the sender's address as text, so a test sees
/// which source address the target observes.
async fn udp_whoami() -> SocketAddr {
    let socket = UdpSocket::bind(loopback()).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let (_, from) = socket.recv_from(&mut buf).await.unwrap();
            let _ = socket.send_to(from.to_string().as_bytes(), from).await;
        }
    });
    addr
}

/// A UDP sink counting what it receives.
async fn udp_sink() -> (SocketAddr, Arc<AtomicU64>) {
    let socket = UdpSocket::bind(loopback()).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            socket.recv_from(&mut buf).await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, received)
}

async fn udp_client(relay: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind(loopback()).await.unwrap();
    socket.connect(relay).await.unwrap();
    socket
}

/// Sends `ping` and waits up to `wait` for a datagram back; returns it and the round-trip time.
async fn udp_ping(socket: &UdpSocket, ping: &[u8], wait: Duration) -> Option<(Vec<u8>, Duration)> {
    let start = Instant::now();
    socket.send(ping).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some((buf[..n].to_vec(), start.elapsed())),
        _ => None,
    }
}

/// Sends `count` datagrams paced so the kernel's receive buffers never overflow (any loss the
/// test sees is then the relay's doing).
async fn udp_send_paced(socket: &UdpSocket, count: u32) {
    for i in 0..count {
        socket.send(&i.to_be_bytes()).await.unwrap();
        if i % 20 == 19 {
            tokio::time::sleep(ms(1)).await;
        }
    }
}

/// Waits until `f` holds or `limit` passes; returns whether it held.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(ms(10)).await;
    }
    f()
}

#[tokio::test]
async fn tcp_round_trip_pays_the_latency_in_each_direction() {
    let (echo, _) = tcp_echo().await;
    let link = LinkControl::with_conditions(LinkConditions {
        latency: ms(60),
        ..LinkConditions::default()
    });
    let relay = TcpRelay::start(loopback(), echo, link).await.unwrap();
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    for i in 0..5u8 {
        let rtt = tcp_ping(&mut stream, &[i; 32]).await;
        assert!(
            rtt >= ms(120),
            "round trip {rtt:?} is shorter than 2 x 60 ms"
        );
        assert!(rtt < ms(1000), "round trip {rtt:?} is far beyond 2 x 60 ms");
    }
    assert_eq!(relay.stats().open, 1);
    assert_eq!(relay.stats().bytes_to_target, 5 * 32);
    assert_eq!(relay.stats().bytes_to_client, 5 * 32);
}

#[tokio::test]
async fn tcp_latency_change_applies_to_a_running_connection() {
    let (echo, _) = tcp_echo().await;
    let link = LinkControl::new();
    let relay = TcpRelay::start(loopback(), echo, link.clone())
        .await
        .unwrap();
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    let fast = tcp_ping(&mut stream, b"fast").await;
    assert!(fast < ms(60), "no latency configured, yet {fast:?}");
    link.set_latency(ms(80));
    let slow = tcp_ping(&mut stream, b"slow").await;
    assert!(slow >= ms(160), "latency 80 ms set, round trip {slow:?}");
    link.set_latency(Duration::ZERO);
    let fast_again = tcp_ping(&mut stream, b"fast again").await;
    assert!(fast_again < ms(60), "latency removed, yet {fast_again:?}");
}

#[tokio::test]
async fn tcp_stream_stays_intact_and_ordered_under_jitter() {
    let (echo, _) = tcp_echo().await;
    let link = LinkControl::with_conditions(LinkConditions {
        latency: ms(5),
        jitter: ms(5),
        ..LinkConditions::default()
    });
    let relay = TcpRelay::start(loopback(), echo, link).await.unwrap();
    let stream = TcpStream::connect(relay.addr()).await.unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    let data: Vec<u8> = (0..1_000_000).map(|_| rng.u8(..)).collect();
    let (mut r, mut w) = stream.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        // Uneven writes, so chunk boundaries vary.
        let mut rest = &sent[..];
        let mut sizes = fastrand::Rng::with_seed(9);
        while !rest.is_empty() {
            let n = sizes.usize(1..=40_000).min(rest.len());
            w.write_all(&rest[..n]).await.unwrap();
            rest = &rest[n..];
        }
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echoed stream differs from what was sent");
    assert_eq!(relay.stats().bytes_to_target, 1_000_000);
    assert_eq!(relay.stats().bytes_to_client, 1_000_000);
}

#[tokio::test]
async fn tcp_half_close_passes_through() {
    // The target reads to end of stream, then answers and closes: only works if the client's FIN
    // is relayed while the other direction stays open.
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        stream
            .write_all(format!("got {} bytes", request.len()).as_bytes())
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
    });
    let relay = TcpRelay::start(loopback(), target, LinkControl::new())
        .await
        .unwrap();
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    stream.write_all(&[7u8; 5000]).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, "got 5000 bytes");
}

#[tokio::test]
async fn tcp_loss_shows_as_retransmission_delay_without_corruption() {
    let (echo, _) = tcp_echo().await;
    let link = LinkControl::with_conditions(LinkConditions {
        loss: 1.0,
        ..LinkConditions::default()
    });
    let relay = TcpRelay::start(loopback(), echo, link.clone())
        .await
        .unwrap();
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    let rtt = tcp_ping(&mut stream, b"every chunk is lost once").await;
    assert!(
        rtt >= ms(400),
        "two traversals, each one retransmission timeout late, took {rtt:?}"
    );
    link.set_loss(0.0);
    let rtt = tcp_ping(&mut stream, b"no loss").await;
    assert!(rtt < ms(100), "loss off, yet {rtt:?}");
}

#[tokio::test]
async fn tcp_partition_stalls_connections_and_heal_resumes_them() {
    let (echo, accepted) = tcp_echo().await;
    let link = LinkControl::new();
    let relay = TcpRelay::start(loopback(), echo, link.clone())
        .await
        .unwrap();
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    tcp_ping(&mut stream, b"before").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    link.partition();
    // An existing connection: the bytes go nowhere.
    stream.write_all(b"during").await.unwrap();
    let mut back = [0u8; 6];
    let stalled = tokio::time::timeout(ms(400), stream.read_exact(&mut back)).await;
    assert!(stalled.is_err(), "bytes passed a partition");
    // A new connection: the relay's kernel accepts it, but the target never hears of it and no
    // byte passes.
    let mut late = TcpStream::connect(relay.addr()).await.unwrap();
    late.write_all(b"hello").await.unwrap();
    let mut late_back = [0u8; 5];
    let hung = tokio::time::timeout(ms(300), late.read_exact(&mut late_back)).await;
    assert!(
        hung.is_err(),
        "a connection opened during a partition carried bytes"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the target was dialled during a partition"
    );

    link.heal();
    // Both the stalled bytes and the hung connection go through now.
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"during");
    tokio::time::timeout(Duration::from_secs(2), late.read_exact(&mut late_back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&late_back, b"hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    tcp_ping(&mut stream, b"after").await;
}

#[tokio::test]
async fn tcp_reset_kills_open_connections_with_an_rst_and_spares_new_ones() {
    // The target records how each of its connections ended.
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let target = listener.local_addr().unwrap();
    let (ends_tx, mut ends) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let ends_tx = ends_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => {
                            let _ = ends_tx.send("eof".to_owned());
                            return;
                        }
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                let _ = ends_tx.send("write error".to_owned());
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = ends_tx.send(format!("{:?}", e.kind()));
                            return;
                        }
                    }
                }
            });
        }
    });
    let link = LinkControl::new();
    let relay = TcpRelay::start(loopback(), target, link.clone())
        .await
        .unwrap();
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    tcp_ping(&mut stream, b"alive").await;

    link.reset_tcp();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "the client should see a reset"
    );
    let target_end = tokio::time::timeout(Duration::from_secs(2), ends.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(target_end, "ConnectionReset");
    assert_eq!(relay.stats().resets, 1);
    assert!(eventually(Duration::from_secs(1), || relay.stats().open == 0).await);

    let mut fresh = TcpStream::connect(relay.addr()).await.unwrap();
    tcp_ping(&mut fresh, b"new connection").await;
}

#[tokio::test]
async fn tcp_unreachable_target_resets_the_client() {
    // A port with nothing listening: bind, learn the port, close.
    let closed = {
        let l = TcpListener::bind(loopback()).await.unwrap();
        l.local_addr().unwrap()
    };
    let relay = TcpRelay::start(loopback(), closed, LinkControl::new())
        .await
        .unwrap();
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset)
    );
    assert_eq!(relay.stats().upstream_failures, 1);
}

#[tokio::test]
async fn dropping_the_tcp_relay_closes_its_connections() {
    let (echo, _) = tcp_echo().await;
    let relay = TcpRelay::start(loopback(), echo, LinkControl::new())
        .await
        .unwrap();
    let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
    tcp_ping(&mut stream, b"x").await;
    drop(relay);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the connection outlived the relay"
    );
}

#[tokio::test]
async fn udp_round_trip_pays_the_latency_and_follows_changes() {
    let echo = udp_echo().await;
    let link = LinkControl::with_conditions(LinkConditions {
        latency: ms(50),
        ..LinkConditions::default()
    });
    let relay = UdpRelay::start(loopback(), echo, link.clone())
        .await
        .unwrap();
    let client = udp_client(relay.addr()).await;
    for i in 0..3u8 {
        let (back, rtt) = udp_ping(&client, &[i; 100], Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(back, vec![i; 100]);
        assert!(rtt >= ms(100), "round trip {rtt:?} shorter than 2 x 50 ms");
        assert!(rtt < ms(1000), "round trip {rtt:?} far beyond 2 x 50 ms");
    }
    link.set_latency(ms(120));
    let (_, rtt) = udp_ping(&client, b"slower", Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        rtt >= ms(240),
        "latency raised to 120 ms, round trip {rtt:?}"
    );
    link.set_latency(Duration::ZERO);
    let (_, rtt) = udp_ping(&client, b"fast", Duration::from_secs(2))
        .await
        .unwrap();
    assert!(rtt < ms(60), "latency removed, round trip {rtt:?}");
}

#[tokio::test]
async fn udp_loss_of_one_drops_everything_and_zero_drops_nothing() {
    let (sink, received) = udp_sink().await;
    let link = LinkControl::with_conditions(LinkConditions {
        loss: 1.0,
        ..LinkConditions::default()
    });
    let relay = UdpRelay::start(loopback(), sink, link.clone())
        .await
        .unwrap();
    let client = udp_client(relay.addr()).await;
    udp_send_paced(&client, 300).await;
    assert!(eventually(Duration::from_secs(2), || relay.stats().lost == 300).await);
    tokio::time::sleep(ms(100)).await;
    assert_eq!(received.load(Ordering::SeqCst), 0);

    link.set_loss(0.0);
    udp_send_paced(&client, 300).await;
    assert!(
        eventually(Duration::from_secs(3), || received.load(Ordering::SeqCst)
            == 300)
        .await,
        "received {} of 300 with no loss",
        received.load(Ordering::SeqCst)
    );
    assert_eq!(relay.stats().lost, 300);
    assert_eq!(relay.stats().to_target, 300);
}

#[tokio::test]
async fn udp_loss_of_thirty_percent_drops_about_thirty_percent() {
    let (sink, received) = udp_sink().await;
    let link = LinkControl::with_conditions(LinkConditions {
        loss: 0.3,
        ..LinkConditions::default()
    });
    let relay = UdpRelay::start(loopback(), sink, link).await.unwrap();
    let client = udp_client(relay.addr()).await;
    let sent = 2000u64;
    udp_send_paced(&client, 2000).await;
    assert!(
        eventually(Duration::from_secs(3), || {
            let s = relay.stats();
            s.lost + s.to_target == sent && received.load(Ordering::SeqCst) == s.to_target
        })
        .await,
        "relay {:?}, target received {}",
        relay.stats(),
        received.load(Ordering::SeqCst)
    );
    // Binomial(2000, 0.3): mean 600, standard deviation about 20.5; allow five of them.
    let lost = relay.stats().lost;
    assert!((500..=700).contains(&lost), "{lost} of 2000 lost at 30%");
}

#[tokio::test]
async fn udp_loss_applies_in_both_directions() {
    let echo = udp_echo().await;
    let link = LinkControl::with_conditions(LinkConditions {
        loss: 0.5,
        ..LinkConditions::default()
    });
    let relay = UdpRelay::start(loopback(), echo, link).await.unwrap();
    let client = Arc::new(udp_client(relay.addr()).await);
    let echoed = Arc::new(AtomicU64::new(0));
    let reader = {
        let client = client.clone();
        let echoed = echoed.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                client.recv(&mut buf).await.unwrap();
                echoed.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    udp_send_paced(&client, 1000).await;
    tokio::time::sleep(ms(300)).await;
    reader.abort();
    // Each echo crosses the link twice: 25% expected (mean 250, sd about 14).
    let echoed = echoed.load(Ordering::SeqCst);
    assert!(
        (180..=320).contains(&echoed),
        "{echoed} of 1000 echoed at 50% loss each way"
    );
}

#[tokio::test]
async fn udp_partition_drops_both_directions_and_heal_restores() {
    let echo = udp_echo().await;
    let link = LinkControl::new();
    let relay = UdpRelay::start(loopback(), echo, link.clone())
        .await
        .unwrap();
    let client = Arc::new(udp_client(relay.addr()).await);
    assert!(
        udp_ping(&client, b"hi", Duration::from_secs(1))
            .await
            .is_some()
    );

    // Target-originated traffic: ticks every 10 ms.
    client.send(b"stream").await.unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let reader = {
        let client = client.clone();
        let ticks = ticks.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                let n = client.recv(&mut buf).await.unwrap();
                if n == 4 {
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    assert!(eventually(Duration::from_secs(2), || ticks.load(Ordering::SeqCst) >= 5).await);

    link.partition();
    tokio::time::sleep(ms(50)).await;
    let during = ticks.load(Ordering::SeqCst);
    tokio::time::sleep(ms(300)).await;
    assert_eq!(
        ticks.load(Ordering::SeqCst),
        during,
        "target-to-client datagrams passed a partition"
    );
    let to_target = relay.stats().to_target;
    client.send(b"lost in the partition").await.unwrap();
    tokio::time::sleep(ms(100)).await;
    assert_eq!(
        relay.stats().to_target,
        to_target,
        "client-to-target datagram passed a partition"
    );
    assert!(relay.stats().blocked > 0);

    link.heal();
    assert!(
        eventually(Duration::from_secs(2), || ticks.load(Ordering::SeqCst)
            > during + 5)
        .await,
        "ticks did not resume after the heal"
    );
    reader.abort();
    let client = udp_client(relay.addr()).await;
    assert!(
        udp_ping(&client, b"after", Duration::from_secs(1))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn udp_partition_drops_datagrams_already_in_flight() {
    let (sink, received) = udp_sink().await;
    let link = LinkControl::with_conditions(LinkConditions {
        latency: ms(200),
        ..LinkConditions::default()
    });
    let relay = UdpRelay::start(loopback(), sink, link.clone())
        .await
        .unwrap();
    let client = udp_client(relay.addr()).await;
    client.send(b"queued").await.unwrap();
    assert!(eventually(Duration::from_secs(1), || relay.stats().peers == 1).await);
    link.partition();
    tokio::time::sleep(ms(400)).await;
    link.heal();
    tokio::time::sleep(ms(100)).await;
    assert_eq!(received.load(Ordering::SeqCst), 0);
    assert_eq!(relay.stats().blocked, 1);
}

#[tokio::test]
async fn udp_gives_each_client_its_own_upstream_and_expires_idle_ones() {
    let whoami = udp_whoami().await;
    let relay = UdpRelay::start_with(
        loopback(),
        whoami,
        LinkControl::new(),
        UdpOptions {
            idle_timeout: ms(300),
            ..UdpOptions::default()
        },
    )
    .await
    .unwrap();
    let a = udp_client(relay.addr()).await;
    let b = udp_client(relay.addr()).await;
    let seen = |reply: Option<(Vec<u8>, Duration)>| -> SocketAddr {
        String::from_utf8(reply.unwrap().0)
            .unwrap()
            .parse()
            .unwrap()
    };
    let a1 = seen(udp_ping(&a, b"a", Duration::from_secs(1)).await);
    let b1 = seen(udp_ping(&b, b"b", Duration::from_secs(1)).await);
    let a2 = seen(udp_ping(&a, b"a again", Duration::from_secs(1)).await);
    assert_ne!(a1, b1, "two clients share one upstream address");
    assert_eq!(a1, a2, "one client moved to another upstream address");
    let distinct: HashSet<SocketAddr> = [a1, b1, relay.addr()].into_iter().collect();
    assert_eq!(distinct.len(), 3);
    assert_eq!(relay.stats().peers, 2);

    assert!(
        eventually(Duration::from_secs(3), || relay.stats().peers == 0).await,
        "idle peers were not expired: {:?}",
        relay.stats()
    );
    assert_eq!(relay.stats().peers_expired, 2);
    // The client can still talk; it just gets a fresh upstream socket.
    assert!(
        udp_ping(&a, b"back", Duration::from_secs(1))
            .await
            .is_some()
    );
    assert_eq!(relay.stats().peers, 1);
}

#[tokio::test]
async fn udp_jitter_reorders_but_delivers_everything() {
    let sink = UdpSocket::bind(loopback()).await.unwrap();
    let link = LinkControl::with_conditions(LinkConditions {
        latency: ms(20),
        jitter: ms(20),
        ..LinkConditions::default()
    });
    let relay = UdpRelay::start(loopback(), sink.local_addr().unwrap(), link)
        .await
        .unwrap();
    let client = udp_client(relay.addr()).await;
    udp_send_paced(&client, 200).await;
    let mut order = Vec::new();
    let mut buf = [0u8; 16];
    while order.len() < 200 {
        let n = tokio::time::timeout(Duration::from_secs(3), sink.recv(&mut buf))
            .await
            .expect("a datagram went missing")
            .unwrap();
        order.push(u32::from_be_bytes(buf[..n].try_into().unwrap()));
    }
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..200).collect::<Vec<u32>>(),
        "lost or duplicated datagrams"
    );
    assert_ne!(
        order, sorted,
        "40 ms of jitter never reordered 200 datagrams"
    );
}
