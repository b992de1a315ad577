//! Connections: who may hold one, for how long, and how each is served and drained.
//!
//! A TCP connection costs a file descriptor before it has sent a byte, and a process has a
//! fixed number of those (often a soft limit of 1024). 1100 idle sockets used to hold every
//! descriptor for minutes, and a legitimate call timed out meanwhile. So every listener
//! (gateway, admin, sidecar) serves its connections through [`serve`], which enforces:
//!
//! * **caps**: at most `max_connections` open at once, and at most `max_connections_per_client`
//!   from one IP address; a connection over a cap is accepted and closed at once (leaving it in
//!   the kernel's backlog would hold it too), and counted in
//!   `flowgate_connections_refused_total{listener,reason}`. At the overall cap, a connection
//!   with no call in flight is evicted to make room (the oldest first): closed if it never sent
//!   a request, sent a GOAWAY if it did. Sockets that only hold a descriptor, or that made one
//!   refused call and went quiet, cannot keep out a client that has work to do, whatever
//!   addresses they come from (`reason="evicted"`). A worker's connection always has polls in
//!   flight, so it is never evicted;
//! * **a handshake deadline**: TLS, the HTTP/2 preface and the first request's headers must all
//!   arrive within `handshake_timeout` of the accept, or the socket is closed (HTTP/1.1 header
//!   reads of later requests have the same bound);
//! * **an idle timeout**: a connection with no request in flight for `idle_timeout` is sent a
//!   GOAWAY (gRPC clients reconnect when they next need to); long polls are requests in flight,
//!   so a worker's connection is never idle while it polls;
//! * **drain on shutdown**: when the listener's shutdown signal fires, every connection is sent
//!   a GOAWAY and [`ConnectionTracker::drained`] resolves when the last one has finished.
//!
//! Why the deadline covers the first request and not only the preface: an HTTP/2 client that
//! sends the preface and then nothing holds a descriptor just as well as one that sends
//! nothing. gRPC clients send their first call as soon as they connect.
//!
//! [`raise_nofile_limit`] lifts the soft descriptor limit to the hard one at start, so the caps,
//! not the kernel, decide who is refused.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::shutdown;
use crate::telemetry::Metrics;

/// The limits one listener enforces.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerClient,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "max_connections",
            Refused::PerClient => "max_connections_per_client",
        }
    }
}

/// How many connections one admit at the cap looks at for one to evict.
const EVICTION_SCAN: usize = 64;

/// The open connections of one listener.
pub struct ConnectionTracker {
    listener: &'static str,
    limits: ConnectionLimits,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// Connections in the order they were admitted, as candidates for eviction; entries whose
    /// connection has closed are dropped lazily, busy ones go to the back.
    candidates: Mutex<VecDeque<Weak<Activity>>>,
    drained: Notify,
    metrics: Arc<Metrics>,
}

/// One admitted connection's place under the caps; given back when dropped.
pub struct Slot {
    tracker: Arc<ConnectionTracker>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut per_client = self.tracker.per_client.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_client.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    per_client.remove(&self.ip);
                }
            }
        }
        let left = self.tracker.open.fetch_sub(1, Ordering::AcqRel) - 1;
        self.tracker.metrics.connection_closed(self.tracker.listener);
        if left == 0 {
            self.tracker.drained.notify_waiters();
        }
    }
}

impl ConnectionTracker {
    pub fn new(listener: &'static str, limits: ConnectionLimits, metrics: Arc<Metrics>) -> Arc<ConnectionTracker> {
        Arc::new(ConnectionTracker {
            listener,
            limits,
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            candidates: Mutex::new(VecDeque::new()),
            drained: Notify::new(),
            metrics,
        })
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Admits a connection from `peer`, whose requests `activity` will count, or says which cap
    /// it is over. At the overall cap, the oldest connection with no call in flight is told to
    /// go and this one takes its place.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr, activity: &Arc<Activity>) -> Result<Slot, Refused> {
        let ip = peer.ip();
        let mut per_client = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_client.get(&ip).copied().unwrap_or(0);
        if count >= self.limits.max_connections_per_client {
            drop(per_client);
            self.metrics.connection_refused(self.listener, Refused::PerClient.as_str());
            return Err(Refused::PerClient);
        }
        if self.open.load(Ordering::Acquire) >= self.limits.max_connections {
            if !self.evict_one() {
                drop(per_client);
                self.metrics.connection_refused(self.listener, Refused::Total.as_str());
                return Err(Refused::Total);
            }
            self.metrics.connection_refused(self.listener, "evicted");
        }
        *per_client.entry(ip).or_insert(0) += 1;
        self.open.fetch_add(1, Ordering::AcqRel);
        drop(per_client);
        let mut candidates = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
        if candidates.len() >= 2 * self.limits.max_connections.max(64) {
            candidates.retain(|entry| entry.strong_count() > 0);
        }
        candidates.push_back(Arc::downgrade(activity));
        drop(candidates);
        self.metrics.connection_opened(self.listener);
        Ok(Slot { tracker: self.clone(), ip })
    }

    /// Tells the oldest connection with no call in flight (and not already told) to go. Its
    /// slot is given back when it has closed; meanwhile the listener is over its cap by the
    /// connections being evicted, a bounded few. Looks at most [`EVICTION_SCAN`] connections,
    /// so an admit stays cheap when every connection is busy.
    fn evict_one(&self) -> bool {
        let mut candidates = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..EVICTION_SCAN.min(candidates.len()) {
            let Some(entry) = candidates.pop_front() else { break };
            let Some(activity) = entry.upgrade() else { continue };
            if activity.evicted.load(Ordering::Acquire) {
                continue;
            }
            if activity.in_flight.load(Ordering::Acquire) > 0 {
                candidates.push_back(entry);
                continue;
            }
            activity.evicted.store(true, Ordering::Release);
            activity.evict.notify_one();
            return true;
        }
        false
    }

    /// Resolves when no connection is open (at once if none is).
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What one connection has done: requests seen and in flight, and when it last went quiet.
/// The service handed to hyper holds a [`Activity::request`] guard for each request.
pub struct Activity {
    started: Instant,
    /// Set (and `evict` notified) when the tracker needs this connection's slot.
    evicted: AtomicBool,
    evict: Notify,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` when the last request finished.
    quiet_since_ms: AtomicU64,
}

/// A request in flight on a connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.quiet_since_ms.store(activity.started.elapsed().as_millis() as u64, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            quiet_since_ms: AtomicU64::new(0),
        })
    }

    /// Marks a request as started; it is in flight until the guard (kept with its response
    /// body) is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Whether a request has arrived: the connection is a client's, not only a socket.
    fn proven(&self) -> bool {
        self.requests.load(Ordering::Acquire) > 0
    }

    /// How long the connection has had no request in flight (zero while one is).
    fn quiet_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.quiet_since_ms.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(since)
    }
}

/// A response body that keeps its request in flight until the body ends or is dropped: a long
/// poll's connection is busy until its answer has been sent.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Tracked<B> {
        Tracked { inner, _in_flight: in_flight }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why [`serve`] closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Handshake,
    Evicted,
}

/// A connection being served by hyper: something that finishes, and can be asked to finish
/// gracefully (hyper-util's auto connection).
pub trait Connection: Future {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E, B> Connection for hyper_util::server::conn::auto::Connection<'static, I, S, E>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    <S as hyper::service::Service<http::Request<hyper::body::Incoming>>>::Future: 'static,
    <S as hyper::service::Service<http::Request<hyper::body::Incoming>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    E: hyper_util::server::conn::auto::HttpServerConnExec<
            <S as hyper::service::Service<http::Request<hyper::body::Incoming>>>::Future,
            B,
        > + hyper_util::server::conn::auto::HttpServerConnExec<
            <S as hyper::service::HttpService<hyper::body::Incoming>>::Future,
            B,
        >,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper_util::server::conn::auto::Connection::graceful_shutdown(self)
    }
}

/// Serves one admitted connection: `connect` performs the TLS handshake (if any) and returns
/// hyper's connection, which is then watched for the handshake deadline, idleness and
/// shutdown. `activity` must be the one the connection's service marks requests on.
pub async fn serve<C, F, E>(
    slot: Slot,
    peer: SocketAddr,
    activity: Arc<Activity>,
    connect: F,
    mut shutdown: shutdown::Signal,
) where
    F: Future<Output = Result<C, E>>,
    E: std::fmt::Display,
    C: Connection<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    let tracker = slot.tracker.clone();
    let limits = tracker.limits;
    let deadline = tokio::time::Instant::from_std(activity.started + limits.handshake_timeout);
    let evicted = activity.evict.notified();
    let connection = tokio::select! {
        connected = tokio::time::timeout_at(deadline, connect) => match connected {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return tracing::debug!(%peer, %error, "handshake failed"),
            Err(_) => {
                tracker.metrics.connection_timed_out(tracker.listener, "handshake");
                return tracing::debug!(%peer, "handshake timed out");
            }
        },
        () = evicted => return tracing::debug!(%peer, "evicted before its handshake completed"),
    };
    let mut connection = pin!(connection);
    let mut going_away = false;
    // A short tick: the idle and handshake checks are two atomic loads.
    let tick =
        limits.handshake_timeout.min(limits.idle_timeout).min(Duration::from_secs(1)).max(Duration::from_millis(50));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let closed = loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                break None;
            }
            () = activity.evict.notified() => {
                if !activity.proven() {
                    break Some(Closed::Evicted);
                }
                if !going_away {
                    going_away = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            _ = ticker.tick() => {
                if !activity.proven() {
                    if tokio::time::Instant::now() >= deadline {
                        break Some(Closed::Handshake);
                    }
                } else if !going_away && activity.quiet_for() >= limits.idle_timeout {
                    tracker.metrics.connection_timed_out(tracker.listener, "idle");
                    going_away = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = shutdown.wait(), if !going_away => {
                going_away = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if closed == Some(Closed::Handshake) {
        tracker.metrics.connection_timed_out(tracker.listener, "handshake");
        tracing::debug!(%peer, "no request within the handshake timeout; closing");
    }
    drop(slot);
}

/// Raises the soft limit on open files to the hard limit, and logs both. Returns the soft
/// limit in force afterwards (`None` where the platform has no such limit).
pub fn raise_nofile_limit() -> Option<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
    if soft < hard {
        match rlimit::Resource::NOFILE.set(hard, hard) {
            Ok(()) => {
                tracing::info!(previous_soft = soft, soft = hard, hard, "raised the open-file limit");
                return Some(hard);
            }
            Err(error) => tracing::warn!(soft, hard, %error, "cannot raise the open-file limit"),
        }
    } else {
        tracing::info!(soft, hard, "open-file limit");
    }
    Some(soft)
}

/// A default for `max_connections` that leaves descriptors for the upstream pool, JWKS fetches,
/// the decision log and policy reloads: the open-file limit less a reserve.
pub fn default_max_connections(nofile: Option<u64>) -> usize {
    const RESERVE: u64 = 256;
    match nofile {
        Some(limit) => limit.saturating_sub(RESERVE).clamp(64, 1_000_000) as usize,
        None => 10_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_client: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: total,
            max_connections_per_client: per_client,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn caps_bind_per_client_and_in_total() {
        let tracker = ConnectionTracker::new("test", limits(3, 2), Arc::new(Metrics::new()));
        let busy: Vec<_> = (0..5).map(|_| Activity::new()).collect();
        // Each has a call in flight: none can be evicted.
        let _in_flight: Vec<_> = busy.iter().map(|activity| activity.request()).collect();
        let a1 = tracker.admit(peer("127.0.0.2"), &busy[0]).unwrap();
        let _a2 = tracker.admit(peer("127.0.0.2"), &busy[1]).unwrap();
        assert_eq!(tracker.admit(peer("127.0.0.2"), &busy[2]).err(), Some(Refused::PerClient));
        let _b1 = tracker.admit(peer("127.0.0.3"), &busy[2]).unwrap();
        assert_eq!(tracker.admit(peer("127.0.0.4"), &busy[3]).err(), Some(Refused::Total));
        drop(a1);
        assert_eq!(tracker.open(), 2);
        let _a3 = tracker.admit(peer("127.0.0.2"), &busy[4]).unwrap();
        assert_eq!(tracker.open(), 3);
    }

    #[test]
    fn at_the_cap_the_oldest_connection_without_a_call_in_flight_makes_room() {
        let tracker = ConnectionTracker::new("test", limits(2, 10), Arc::new(Metrics::new()));
        let (idle_old, idle_new, client) = (Activity::new(), Activity::new(), Activity::new());
        let _s1 = tracker.admit(peer("127.0.0.2"), &idle_old).unwrap();
        let _s2 = tracker.admit(peer("127.0.0.3"), &idle_new).unwrap();
        let _s3 = tracker.admit(peer("127.0.0.1"), &client).unwrap();
        assert!(idle_old.evicted.load(Ordering::Acquire), "the oldest idle socket is told to go");
        assert!(!idle_new.evicted.load(Ordering::Acquire));
        // The evicted one closes; the two left both have a call in flight: neither is evicted.
        drop(_s1);
        let _busy = (idle_new.request(), client.request());
        assert_eq!(tracker.admit(peer("127.0.0.4"), &Activity::new()).err(), Some(Refused::Total));
        assert_eq!(tracker.open(), 2);
    }

    #[tokio::test]
    async fn drained_resolves_when_the_last_connection_closes() {
        let tracker = ConnectionTracker::new("test", limits(3, 3), Arc::new(Metrics::new()));
        tracker.drained().await;
        let slot = tracker.admit(peer("127.0.0.1"), &Activity::new()).unwrap();
        let waiting = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.drained().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(slot);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
    }

    #[test]
    fn quiet_time_counts_only_without_requests_in_flight() {
        let activity = Activity::new();
        let request = activity.request();
        assert_eq!(activity.quiet_for(), Duration::ZERO);
        drop(request);
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.quiet_for() >= Duration::from_millis(20));
    }

    #[test]
    fn the_default_cap_leaves_a_reserve_of_descriptors() {
        assert_eq!(default_max_connections(Some(1024)), 768);
        assert_eq!(default_max_connections(Some(100)), 64);
        assert_eq!(default_max_connections(None), 10_000);
    }
}
