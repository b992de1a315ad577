//! The sidecar's data path: the local listener the worker connects to, and the forwarding of
//! each call to the gateway with the current credential.
//!
//! The one rule here: an expired credential is never forwarded. A call takes the credential's
//! header in the same look at the refresher's [`State`] that found it usable, waits up to
//! `credential.wait` (or its own shorter `grpc-timeout`) for one, and otherwise fails with a
//! trailers-only `UNAVAILABLE` that says why. `authorization` is replaced, never added to, so
//! whatever the worker sent is not forwarded. The listener reuses the gateway's connection
//! protections (caps, handshake deadline, idle timeout) and its graceful drain.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};

use super::SidecarConfig;
use super::refresher::{RefreshError, State, rounded};
use crate::conn::{self, Activity, ConnectionLimits, ConnectionTracker, Tracked};
use crate::grpc::grpc_timeout;
use crate::proxy::{ClientBody, ForwardBody, Upstream};
use crate::shutdown;
use crate::status::{Code, Refusal, trailers_only};

type SidecarBody = Either<Incoming, Empty<Bytes>>;

/// Forwards the worker's calls with the current credential.
pub(super) struct Forwarder {
    pub(super) upstream: Upstream,
    pub(super) state: watch::Receiver<State>,
    pub(super) wait: Duration,
}

impl Forwarder {
    /// The `authorization` header of a usable credential, waiting up to `wait` for one.
    async fn credential(&self, wait: Duration) -> Result<http::HeaderValue, String> {
        let mut state = self.state.clone();
        // The header is taken in the same look that found it usable: validity is a matter of
        // time, so a second look could disagree.
        let mut header = None;
        let found = tokio::time::timeout(
            wait,
            state.wait_for(|state| {
                header = state.usable().map(|held| held.header.clone());
                header.is_some()
            }),
        )
        .await
        .map(|found| found.map(drop));
        match (found, header) {
            (Ok(Ok(())), Some(header)) => Ok(header),
            (Ok(_), _) => Err("the sidecar is shutting down".to_owned()),
            (Err(_), _) => {
                let state = state.borrow();
                let why = match (&state.last_error, &state.held) {
                    (Some(error), _) => format!("last refresh failed: {error}"),
                    (None, None) => "the first token exchange has not completed".to_owned(),
                    (None, Some(_)) => "the credential expired and no refresh has completed".to_owned(),
                };
                Err(format!(
                    "flowgate sidecar: no valid credential after waiting {}: {why}",
                    humantime::format_duration(rounded(wait))
                ))
            }
        }
    }

    async fn handle(&self, request: http::Request<Incoming>) -> http::Response<SidecarBody> {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        let deadline = grpc_timeout(&parts.headers);
        // A call whose own deadline is shorter gives up sooner anyway.
        let wait = deadline.map_or(self.wait, |deadline| deadline.min(self.wait));
        let authorization = match self.credential(wait).await {
            Ok(header) => header,
            Err(message) => {
                tracing::warn!(path = parts.uri.path(), %message, "call refused");
                return trailers_only::<Empty<Bytes>>(Code::Unavailable, &message).map(Either::Right);
            }
        };
        // `insert` replaces every `authorization` value the worker sent.
        parts.headers.insert(http::header::AUTHORIZATION, authorization);
        let deadline = deadline.map(|deadline| deadline.saturating_sub(started.elapsed()));
        match self
            .upstream
            .send_within(parts, ForwardBody::new(Bytes::new(), Some(ClientBody::Stream(body)), None), deadline)
            .await
        {
            Ok(response) => response.map(Either::Left),
            Err(error) => {
                let refusal = Refusal::from(error);
                trailers_only::<Empty<Bytes>>(refusal.code(), &refusal.to_string()).map(Either::Right)
            }
        }
    }
}

/// Serves the worker on `listener` until `shutdown` resolves or `refresh_task` ends, then drains
/// in-flight calls for up to `listen.shutdown_grace`. Returns the refresh task's outcome when
/// its end is what stopped the listener.
pub(super) async fn serve(
    listener: TcpListener,
    forwarder: Arc<Forwarder>,
    config: &SidecarConfig,
    shutdown: impl Future<Output = ()>,
    refresh_task: &mut JoinHandle<Result<(), RefreshError>>,
) -> anyhow::Result<Option<Result<Result<(), RefreshError>, JoinError>>> {
    // The worker's connections get the gateway's default protections (caps from the open-file
    // limit, handshake deadline, idle timeout): the sidecar is local, but a stuck or runaway
    // worker must not exhaust its descriptors either.
    let limits = ConnectionLimits {
        max_connections: conn::default_max_connections(conn::raise_nofile_limit()),
        max_connections_per_client: crate::config::default_max_connections_per_client(),
        handshake_timeout: crate::config::default_handshake_timeout(),
        idle_timeout: crate::config::default_idle_timeout(),
    };
    let builder = Arc::new(crate::server::http2_server(config.listen.max_concurrent_streams, limits.handshake_timeout));
    let tracker = ConnectionTracker::new("sidecar", limits, Arc::new(crate::telemetry::Metrics::new()));
    let (drain, draining) = shutdown::channel();
    tracing::info!(
        address = %listener.local_addr()?,
        upstream = %config.upstream.address,
        scope = %config.credential.scope,
        "flowgate sidecar is serving"
    );

    tokio::pin!(shutdown);
    let mut gave_up = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
            finished = &mut *refresh_task => {
                gave_up = Some(finished);
                break;
            }
        };
        let activity = Activity::new();
        let Ok(slot) = tracker.admit(peer, &activity) else { continue };
        let _ = stream.set_nodelay(true);
        let service = {
            let forwarder = forwarder.clone();
            let activity = activity.clone();
            hyper::service::service_fn(move |request| {
                let forwarder = forwarder.clone();
                let in_flight = activity.request();
                async move {
                    let response = forwarder.handle(request).await;
                    Ok::<_, std::convert::Infallible>(response.map(|body| Tracked::new(body, in_flight)))
                }
            })
        };
        let builder = builder.clone();
        let connect = async move {
            Ok::<_, std::convert::Infallible>(builder.serve_connection(TokioIo::new(stream), service).into_owned())
        };
        tokio::spawn(conn::serve(slot, peer, activity, connect, draining.clone()));
    }

    tracing::info!(grace = ?config.listen.shutdown_grace, "shutting down: draining in-flight calls");
    drop(listener);
    drain.fire();
    tokio::select! {
        () = tracker.drained() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(config.listen.shutdown_grace) => tracing::warn!("grace period over; closing the remaining connections"),
    }
    Ok(gave_up)
}
