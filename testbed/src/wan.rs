//! A user-space WAN emulator: TCP and UDP relays that put latency, jitter, loss and partitions
//! between two loopback addresses.
//!
//! The test machines have no `netem` (and no root), so faults between agents, managers and
//! backends are injected by making them talk through a relay instead of directly: the relay
//! listens on one address and forwards to a target, and a shared [`LinkControl`] says what the
//! "wire" does right now. Changing the control affects running traffic immediately, which is what
//! scenarios need ("partition the agent for 30 s, then heal").
//!
//! # Model
//!
//! - **Latency** is one-way and applied in each direction, so a request/response pays it twice,
//!   like a real link. **Jitter** adds a uniform offset in `[-jitter, +jitter]` per chunk or
//!   datagram (the total delay never goes below zero).
//! - **UDP** datagrams are delayed independently, so jitter can reorder them (as on a real
//!   network); **loss** drops each datagram with the given probability, in each direction.
//! - **TCP** is a byte stream, so nothing may be lost or reordered. Chunks are queued per direction
//!   with a due time in a FIFO, so a chunk is never released before the one ahead of it (jitter
//!   cannot reorder; it only stretches gaps). Loss has no per-packet meaning above the kernel's TCP, so it
//!   is modelled as what an application sees when a segment is lost: a retransmission delay. Each
//!   chunk is "lost" with the given probability and then arrives one retransmission timeout late
//!   ([`TCP_MIN_RTO`] plus one round trip), holding up everything behind it.
//! - **Partition** cuts the link both ways. UDP datagrams are dropped, including those already
//!   queued when it starts. TCP connections are stalled, not closed: no byte passes in either
//!   direction until the link heals, then the queued bytes flow (as after TCP retransmissions). A
//!   TCP connection opened during a partition is accepted by the relay's kernel (user space cannot
//!   refuse a SYN selectively) but hangs: the target is not dialled and no byte passes until the
//!   heal. That is what a client sees of a blackholed route, except that its `connect` itself
//!   succeeds; clients must rely on read timeouts, which is what they need against a real
//!   partition too.
//! - **Reset** ([`LinkControl::reset_tcp`]) kills every TCP connection open at that moment with
//!   an RST on both sides, like a NAT or middlebox losing its state. New connections work.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};

/// The minimum retransmission timeout of Linux TCP; a "lost" TCP chunk is late by this plus one
/// round trip (see the module documentation).
pub const TCP_MIN_RTO: Duration = Duration::from_millis(200);

/// Largest read from a TCP socket, i.e. the unit that is delayed as a whole.
const TCP_CHUNK: usize = 16 * 1024;
/// Chunks queued per direction of a TCP connection before the relay stops reading, so a fast
/// sender meets backpressure (about a megabyte in flight, like a large TCP window).
const TCP_QUEUE_CHUNKS: usize = 64;
/// Datagrams waiting for their due time in a UDP relay before new ones are dropped, so a flood
/// behind a long latency cannot grow memory without bound (netem's default limit is 1000 per
/// qdisc; this is per relay and both directions).
const UDP_QUEUE_LIMIT: usize = 100_000;

/// What the emulated link does to traffic right now.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LinkConditions {
    /// One-way delay, applied in each direction.
    pub latency: Duration,
    /// Uniform random offset in `[-jitter, +jitter]` added to `latency` per chunk or datagram.
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a UDP datagram is dropped, or that a TCP chunk pays a
    /// retransmission delay.
    pub loss: f64,
    /// No traffic passes in either direction.
    pub partitioned: bool,
}

impl LinkConditions {
    /// The delay of one chunk or datagram: latency plus a uniform jitter offset, never negative.
    fn sample_delay(&self, rng: &mut fastrand::Rng) -> Duration {
        if self.jitter.is_zero() {
            return self.latency;
        }
        let jitter = self.jitter.as_secs_f64();
        let offset = (rng.f64() * 2.0 - 1.0) * jitter;
        Duration::from_secs_f64((self.latency.as_secs_f64() + offset).max(0.0))
    }

    fn lose(&self, rng: &mut fastrand::Rng) -> bool {
        self.loss > 0.0 && rng.f64() < self.loss
    }

    /// How late a "lost" TCP chunk arrives: one retransmission timeout.
    fn tcp_loss_penalty(&self) -> Duration {
        TCP_MIN_RTO + self.latency * 2
    }
}

#[derive(Clone, Debug, Default)]
struct LinkState {
    conditions: LinkConditions,
    /// Bumped by every [`LinkControl::reset_tcp`]; a TCP connection remembers the value it started
    /// with and dies when it changes.
    resets: u64,
}

/// The shared, live settings of one emulated link.
///
/// Clones share the same link, so a scenario keeps one and hands clones to relays; every change
/// is seen by running connections at once (waiting writers are woken, not polled).
#[derive(Clone, Debug)]
pub struct LinkControl {
    state: Arc<watch::Sender<LinkState>>,
}

impl Default for LinkControl {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkControl {
    /// A perfect link: no latency, no loss, not partitioned.
    pub fn new() -> Self {
        Self::with_conditions(LinkConditions::default())
    }

    /// A link with the given conditions (loss is clamped to `[0, 1]`).
    pub fn with_conditions(conditions: LinkConditions) -> Self {
        let control = Self {
            state: Arc::new(watch::Sender::new(LinkState::default())),
        };
        control.set_conditions(conditions);
        control
    }

    /// The conditions right now.
    pub fn conditions(&self) -> LinkConditions {
        self.state.borrow().conditions.clone()
    }

    /// Replaces all conditions at once (loss is clamped to `[0, 1]`, NaN counts as 0).
    pub fn set_conditions(&self, mut conditions: LinkConditions) {
        conditions.loss = clamp_probability(conditions.loss);
        self.state.send_modify(|s| s.conditions = conditions);
    }

    /// Sets the one-way latency. Data already queued keeps its due time; TCP data queued later
    /// still never overtakes it.
    pub fn set_latency(&self, latency: Duration) {
        self.state.send_modify(|s| s.conditions.latency = latency);
    }

    /// Sets the jitter (uniform, `±jitter` around the latency).
    pub fn set_jitter(&self, jitter: Duration) {
        self.state.send_modify(|s| s.conditions.jitter = jitter);
    }

    /// Sets the loss probability (clamped to `[0, 1]`, NaN counts as 0).
    pub fn set_loss(&self, loss: f64) {
        let loss = clamp_probability(loss);
        self.state.send_modify(|s| s.conditions.loss = loss);
    }

    /// Cuts the link in both directions until [`LinkControl::heal`].
    pub fn partition(&self) {
        self.state.send_modify(|s| s.conditions.partitioned = true);
    }

    /// Ends a partition: stalled TCP data and connections proceed, UDP flows again.
    pub fn heal(&self) {
        self.state.send_modify(|s| s.conditions.partitioned = false);
    }

    /// Whether the link is partitioned now.
    pub fn is_partitioned(&self) -> bool {
        self.state.borrow().conditions.partitioned
    }

    /// Kills every TCP connection open now through relays on this link, with an RST to both the
    /// client and the target. Connections opened afterwards are unaffected.
    pub fn reset_tcp(&self) {
        self.state.send_modify(|s| s.resets += 1);
    }

    fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }
}

fn clamp_probability(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

/// Aborts a background task when its owner goes away, so dropping a relay stops it and every
/// connection it carries.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits until data due at `due` may pass: the time has come and the link is not partitioned.
/// A partition that starts while waiting holds the data until the heal.
async fn wait_passable(state: &mut watch::Receiver<LinkState>, due: Instant) {
    loop {
        let partitioned = state.borrow_and_update().conditions.partitioned;
        if partitioned {
            if state.changed().await.is_err() {
                // The control is gone (cannot happen while a relay holds it); keep the data.
                std::future::pending::<()>().await;
            }
            continue;
        }
        if Instant::now() >= due {
            return;
        }
        tokio::select! {
            () = sleep_until(due) => {}
            changed = state.changed() => {
                if changed.is_err() {
                    sleep_until(due).await;
                    return;
                }
            }
        }
    }
}

/// Counters of a [`TcpRelay`], for scenario verdicts and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpStats {
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Connections currently relayed (dialled to the target and not yet closed).
    pub open: u64,
    /// Connections whose target could not be dialled (the client got an RST).
    pub upstream_failures: u64,
    /// Connections killed by [`LinkControl::reset_tcp`].
    pub resets: u64,
    /// Bytes delivered to the target.
    pub bytes_to_target: u64,
    /// Bytes delivered to clients.
    pub bytes_to_client: u64,
}

#[derive(Debug, Default)]
struct TcpCounters {
    accepted: AtomicU64,
    open: AtomicU64,
    upstream_failures: AtomicU64,
    resets: AtomicU64,
    bytes_to_target: AtomicU64,
    bytes_to_client: AtomicU64,
}

/// A TCP relay from a local address to a target through an emulated link.
///
/// Dropping it closes the listener and every relayed connection.
#[derive(Debug)]
pub struct TcpRelay {
    addr: SocketAddr,
    counters: Arc<TcpCounters>,
    _task: AbortOnDrop,
}

impl TcpRelay {
    /// Listens on `listen` (port 0 picks a free port) and relays each connection to `target`.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        link: LinkControl,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(TcpCounters::default());
        let task = tokio::spawn(tcp_accept_loop(listener, target, link, counters.clone()));
        Ok(Self {
            addr,
            counters,
            _task: AbortOnDrop(task),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters so far.
    pub fn stats(&self) -> TcpStats {
        let c = &self.counters;
        TcpStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            bytes_to_target: c.bytes_to_target.load(Ordering::Relaxed),
            bytes_to_client: c.bytes_to_client.load(Ordering::Relaxed),
        }
    }
}

async fn tcp_accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    link: LinkControl,
    counters: Arc<TcpCounters>,
) {
    // Owned here so that aborting this task (dropping the relay) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                connections.spawn(tcp_connection(
                    client,
                    target,
                    link.clone(),
                    counters.clone(),
                ));
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!("wan relay: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
}

/// How one relayed direction ended when it did not end cleanly.
#[derive(Debug)]
enum TcpEnd {
    /// The link was reset.
    Reset,
    /// A socket failed (e.g. the peer reset); the other side gets an RST too.
    Io,
}

/// Decrements the open-connection gauge however the connection ends.
struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn tcp_connection(
    mut client: TcpStream,
    target: SocketAddr,
    link: LinkControl,
    counters: Arc<TcpCounters>,
) {
    let _ = client.set_nodelay(true);
    let mut state = link.subscribe();
    let epoch = state.borrow_and_update().resets;

    // A connection opened during a partition hangs until the heal; the target is dialled only
    // then, as no SYN would have reached it.
    tokio::select! {
        () = wait_passable(&mut state, Instant::now()) => {}
        () = wait_reset(link.subscribe(), epoch) => {
            counters.resets.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_zero_linger();
            return;
        }
    }
    let mut upstream = match TcpStream::connect(target).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::debug!("wan relay: cannot reach {target}: {e}");
            counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
            // An RST tells the client what a refused connection would have.
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    counters.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(&counters.open);

    let outcome = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let to_target = pump(
            client_read,
            upstream_write,
            &link,
            &counters.bytes_to_target,
        );
        let to_client = pump(
            upstream_read,
            client_write,
            &link,
            &counters.bytes_to_client,
        );
        tokio::select! {
            result = async { tokio::try_join!(to_target, to_client) } => result.map(|_| ()),
            () = wait_reset(link.subscribe(), epoch) => Err(TcpEnd::Reset),
        }
    };
    match outcome {
        Ok(()) => {}
        Err(end) => {
            if matches!(end, TcpEnd::Reset) {
                counters.resets.fetch_add(1, Ordering::Relaxed);
            }
            // Abortive close of both sides: each peer sees "connection reset", as it would if
            // the path's state had been lost or the other peer had reset.
            let _ = client.set_zero_linger();
            let _ = upstream.set_zero_linger();
        }
    }
}

/// Resolves when the link's reset counter moves past `epoch`.
async fn wait_reset(mut state: watch::Receiver<LinkState>, epoch: u64) {
    if state.wait_for(|s| s.resets != epoch).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Relays one direction of a TCP connection: a reader stamps each chunk with its due time and
/// queues it, a writer releases chunks in order when they are due and the link is up. A clean
/// end of stream is passed on as a FIN (`shutdown`) once the queue has drained, so half-closed
/// connections behave as they would without the relay.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    link: &LinkControl,
    delivered: &AtomicU64,
) -> Result<(), TcpEnd> {
    let (queue, mut due_chunks) = mpsc::channel::<(Instant, Bytes)>(TCP_QUEUE_CHUNKS);
    let reader = async move {
        let mut rng = fastrand::Rng::new();
        loop {
            let mut buf = BytesMut::with_capacity(TCP_CHUNK);
            let n = from.read_buf(&mut buf).await.map_err(|_| TcpEnd::Io)?;
            if n == 0 {
                return Ok(());
            }
            let conditions = link.conditions();
            let mut delay = conditions.sample_delay(&mut rng);
            if conditions.lose(&mut rng) {
                delay += conditions.tcp_loss_penalty();
            }
            // The queue is FIFO, so a chunk whose jitter would let it overtake the one ahead
            // leaves right after it instead: head-of-line blocking, as in TCP.
            let due = Instant::now() + delay;
            if queue.send((due, buf.freeze())).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async move {
        let mut state = link.subscribe();
        while let Some((due, chunk)) = due_chunks.recv().await {
            wait_passable(&mut state, due).await;
            to.write_all(&chunk).await.map_err(|_| TcpEnd::Io)?;
            delivered.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        to.shutdown().await.map_err(|_| TcpEnd::Io)
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

/// Settings of a [`UdpRelay`] besides the link.
#[derive(Clone, Debug)]
pub struct UdpOptions {
    /// A client address with no traffic either way for this long loses its upstream socket; its
    /// next datagram gets a new one (a new source port at the target, like a NAT mapping that
    /// timed out).
    pub idle_timeout: Duration,
    /// Largest datagram relayed; longer ones are truncated by the socket.
    pub max_datagram: usize,
}

impl Default for UdpOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            max_datagram: 65_535,
        }
    }
}

/// Counters of a [`UdpRelay`], for scenario verdicts and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UdpStats {
    /// Datagrams delivered to the target.
    pub to_target: u64,
    /// Datagrams delivered to clients.
    pub to_client: u64,
    /// Datagrams dropped by the loss probability (both directions).
    pub lost: u64,
    /// Datagrams dropped by a partition, on arrival or while queued (both directions).
    pub blocked: u64,
    /// Datagrams dropped because too many were waiting for their due time.
    pub overflowed: u64,
    /// Client addresses that currently have an upstream socket.
    pub peers: u64,
    /// Upstream sockets closed for idleness.
    pub peers_expired: u64,
}

#[derive(Debug, Default)]
struct UdpCounters {
    to_target: AtomicU64,
    to_client: AtomicU64,
    lost: AtomicU64,
    blocked: AtomicU64,
    overflowed: AtomicU64,
    peers: AtomicU64,
    peers_expired: AtomicU64,
}

/// A UDP relay from a local address to a target through an emulated link. QUIC runs over it
/// unchanged.
///
/// Each client address gets its own upstream socket, so the target sees as many distinct peers
/// as there are clients (QUIC servers and anything keyed by source address need that), and
/// replies go back to the right client. Dropping the relay closes all its sockets.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    counters: Arc<UdpCounters>,
    _task: AbortOnDrop,
}

impl UdpRelay {
    /// Listens on `listen` (port 0 picks a free port) and relays to `target`, with default
    /// options.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        link: LinkControl,
    ) -> io::Result<Self> {
        Self::start_with(listen, target, link, UdpOptions::default()).await
    }

    /// Like [`UdpRelay::start`], with explicit options.
    pub async fn start_with(
        listen: SocketAddr,
        target: SocketAddr,
        link: LinkControl,
        options: UdpOptions,
    ) -> io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let addr = socket.local_addr()?;
        let counters = Arc::new(UdpCounters::default());
        let relay = UdpLoop {
            listen: socket,
            target,
            link,
            options,
            counters: counters.clone(),
            started: Instant::now(),
        };
        let task = tokio::spawn(relay.run());
        Ok(Self {
            addr,
            counters,
            _task: AbortOnDrop(task),
        })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters so far.
    pub fn stats(&self) -> UdpStats {
        let c = &self.counters;
        UdpStats {
            to_target: c.to_target.load(Ordering::Relaxed),
            to_client: c.to_client.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            blocked: c.blocked.load(Ordering::Relaxed),
            overflowed: c.overflowed.load(Ordering::Relaxed),
            peers: c.peers.load(Ordering::Relaxed),
            peers_expired: c.peers_expired.load(Ordering::Relaxed),
        }
    }
}

/// One datagram waiting for its due time.
#[derive(Debug)]
struct Scheduled {
    due: Instant,
    /// Arrival order, so datagrams due at the same instant leave in the order they came.
    seq: u64,
    payload: Bytes,
    socket: Arc<UdpSocket>,
    /// `None`: the socket is connected to the target. `Some`: a client address.
    to: Option<SocketAddr>,
    /// Which counter a delivery increments.
    toward_target: bool,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The upstream side of one client address.
#[derive(Debug)]
struct Peer {
    socket: Arc<UdpSocket>,
    /// Milliseconds since the relay started, at the last datagram either way.
    last_seen: Arc<AtomicU64>,
    _reader: AbortOnDrop,
}

struct UdpLoop {
    listen: Arc<UdpSocket>,
    target: SocketAddr,
    link: LinkControl,
    options: UdpOptions,
    counters: Arc<UdpCounters>,
    started: Instant,
}

/// Decides a datagram's fate on arrival: dropped (partition, loss) or scheduled. Shared by both
/// directions so they follow the same model.
#[derive(Debug)]
struct Admission {
    link: LinkControl,
    counters: Arc<UdpCounters>,
    rng: fastrand::Rng,
}

impl Admission {
    /// The due time of an admitted datagram, or `None` if it is dropped.
    fn admit(&mut self) -> Option<Instant> {
        let conditions = self.link.conditions();
        if conditions.partitioned {
            self.counters.blocked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if conditions.lose(&mut self.rng) {
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Instant::now() + conditions.sample_delay(&mut self.rng))
    }
}

impl UdpLoop {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(self) {
        let (schedule, scheduled) = mpsc::unbounded_channel::<Scheduled>();
        let _scheduler = AbortOnDrop(tokio::spawn(deliver(
            scheduled,
            self.link.clone(),
            self.counters.clone(),
        )));
        let mut admission = Admission {
            link: self.link.clone(),
            counters: self.counters.clone(),
            rng: fastrand::Rng::new(),
        };
        let mut peers: HashMap<SocketAddr, Peer> = HashMap::new();
        let sweep_every = (self.options.idle_timeout / 4).max(Duration::from_millis(10));
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; self.options.max_datagram.max(1)];
        let seq = Arc::new(AtomicU64::new(0));
        loop {
            tokio::select! {
                received = self.listen.recv_from(&mut buf) => {
                    let (n, from) = match received {
                        Ok(r) => r,
                        // An ICMP error from an earlier send to a client; nothing to do.
                        Err(_) => continue,
                    };
                    let Some(due) = admission.admit() else { continue };
                    let peer = match peers.entry(from) {
                        Entry::Occupied(entry) => entry.into_mut(),
                        Entry::Vacant(entry) => {
                            match self.new_peer(from, schedule.clone(), seq.clone()).await {
                                Ok(peer) => {
                                    self.counters.peers.fetch_add(1, Ordering::Relaxed);
                                    entry.insert(peer)
                                }
                                Err(e) => {
                                    tracing::warn!("wan relay: no upstream socket for {from}: {e}");
                                    continue;
                                }
                            }
                        }
                    };
                    peer.last_seen.store(self.now_ms(), Ordering::Relaxed);
                    let _ = schedule.send(Scheduled {
                        due,
                        seq: seq.fetch_add(1, Ordering::Relaxed),
                        payload: Bytes::copy_from_slice(&buf[..n]),
                        socket: peer.socket.clone(),
                        to: None,
                        toward_target: true,
                    });
                }
                _ = sweep.tick() => {
                    let now = self.now_ms();
                    let idle_ms = u64::try_from(self.options.idle_timeout.as_millis()).unwrap_or(u64::MAX);
                    let before = peers.len();
                    peers.retain(|_, peer| now.saturating_sub(peer.last_seen.load(Ordering::Relaxed)) < idle_ms);
                    let expired = (before - peers.len()) as u64;
                    if expired > 0 {
                        self.counters.peers.fetch_sub(expired, Ordering::Relaxed);
                        self.counters.peers_expired.fetch_add(expired, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Opens the upstream socket for a new client address and starts reading the target's
    /// replies on it.
    async fn new_peer(
        &self,
        client: SocketAddr,
        schedule: mpsc::UnboundedSender<Scheduled>,
        seq: Arc<AtomicU64>,
    ) -> io::Result<Peer> {
        // Loopback targets get a loopback source, so test traffic never leaves the host.
        let local: IpAddr = match self.target.ip() {
            ip if ip.is_loopback() => ip,
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
        socket.connect(self.target).await?;
        let socket = Arc::new(socket);
        let last_seen = Arc::new(AtomicU64::new(self.now_ms()));
        let reader = {
            let socket = socket.clone();
            let listen = self.listen.clone();
            let last_seen = last_seen.clone();
            let started = self.started;
            let mut admission = Admission {
                link: self.link.clone(),
                counters: self.counters.clone(),
                rng: fastrand::Rng::new(),
            };
            let mut buf = vec![0u8; self.options.max_datagram.max(1)];
            tokio::spawn(async move {
                loop {
                    let n = match socket.recv(&mut buf).await {
                        Ok(n) => n,
                        // ICMP "port unreachable" from an earlier send: the target is down for
                        // now; later replies still count.
                        Err(_) => continue,
                    };
                    let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    last_seen.store(now, Ordering::Relaxed);
                    let Some(due) = admission.admit() else {
                        continue;
                    };
                    let item = Scheduled {
                        due,
                        seq: seq.fetch_add(1, Ordering::Relaxed),
                        payload: Bytes::copy_from_slice(&buf[..n]),
                        socket: listen.clone(),
                        to: Some(client),
                        toward_target: false,
                    };
                    if schedule.send(item).is_err() {
                        return;
                    }
                }
            })
        };
        Ok(Peer {
            socket,
            last_seen,
            _reader: AbortOnDrop(reader),
        })
    }
}

/// Sends queued datagrams of both directions when due, from one timer-ordered heap (one task
/// per relay, not one sleep per datagram). A partition drops what is still queued.
async fn deliver(
    mut incoming: mpsc::UnboundedReceiver<Scheduled>,
    link: LinkControl,
    counters: Arc<UdpCounters>,
) {
    let mut queue: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
    loop {
        let next_due = queue.peek().map(|Reverse(s)| s.due);
        tokio::select! {
            item = incoming.recv() => {
                let Some(item) = item else { return };
                if queue.len() >= UDP_QUEUE_LIMIT {
                    counters.overflowed.fetch_add(1, Ordering::Relaxed);
                } else {
                    queue.push(Reverse(item));
                }
            }
            () = sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let now = Instant::now();
                while queue.peek().is_some_and(|Reverse(s)| s.due <= now) {
                    let Some(Reverse(item)) = queue.pop() else { break };
                    if link.is_partitioned() {
                        counters.blocked.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let sent = match item.to {
                        None => item.socket.send(&item.payload).await,
                        Some(to) => item.socket.send_to(&item.payload, to).await,
                    };
                    if sent.is_ok() {
                        let counter = if item.toward_target { &counters.to_target } else { &counters.to_client };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_without_jitter_is_the_latency() {
        let c = LinkConditions {
            latency: Duration::from_millis(30),
            ..LinkConditions::default()
        };
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(c.sample_delay(&mut rng), Duration::from_millis(30));
    }

    #[test]
    fn jitter_is_uniform_around_the_latency_and_never_negative() {
        let c = LinkConditions {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(20),
            ..LinkConditions::default()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let samples: Vec<Duration> = (0..10_000).map(|_| c.sample_delay(&mut rng)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(30)));
        // Offsets below -10 ms clamp to zero: about a quarter of the samples.
        let zeros = samples.iter().filter(|d| d.is_zero()).count();
        assert!((2000..3000).contains(&zeros), "{zeros} zero delays");
        let above = samples
            .iter()
            .filter(|d| **d > Duration::from_millis(20))
            .count();
        assert!((2000..3000).contains(&above), "{above} delays above 20 ms");
    }

    #[test]
    fn loss_is_clamped_and_extremes_are_exact() {
        let link = LinkControl::new();
        link.set_loss(1.5);
        assert_eq!(link.conditions().loss, 1.0);
        link.set_loss(f64::NAN);
        assert_eq!(link.conditions().loss, 0.0);
        link.set_loss(-1.0);
        assert_eq!(link.conditions().loss, 0.0);
        let mut rng = fastrand::Rng::with_seed(3);
        let all = LinkConditions {
            loss: 1.0,
            ..LinkConditions::default()
        };
        let none = LinkConditions::default();
        assert!((0..1000).all(|_| all.lose(&mut rng)));
        assert!((0..1000).all(|_| !none.lose(&mut rng)));
    }

    #[test]
    fn clones_share_one_link() {
        let link = LinkControl::new();
        let other = link.clone();
        other.partition();
        assert!(link.is_partitioned());
        link.heal();
        assert!(!other.is_partitioned());
        other.set_latency(Duration::from_millis(5));
        assert_eq!(link.conditions().latency, Duration::from_millis(5));
    }
}
