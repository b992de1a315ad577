//! The cross-cutting concerns of the gateway's call stack, each a tower [`Layer`] of its own.
//!
//! `server` builds the stack once per connection, outermost first (see `server::gateway_stack`):
//!
//! 1. **metrics** ([`MetricsLayer`]): every call is counted in `flowgate_calls_total` (method,
//!    decision, gRPC status) and timed in `flowgate_call_duration_seconds`, once, when its
//!    response ends: whichever layer or phase answered it, and whether the status came in the
//!    headers (a refusal) or in the upstream's trailers;
//! 2. **respond** (`status::RespondLayer`): a refusal of the layers below becomes a gRPC status;
//! 3. **load shedding** (`tower::load_shed`): when the next layer is not ready, the call is
//!    refused at once instead of queueing, so a burst never builds a backlog the gateway holds
//!    memory for;
//! 4. **concurrency limit** (`tower::limit::GlobalConcurrencyLimit`, one semaphore shared by
//!    every connection): at most `limits.max_concurrent_calls` calls in flight at once, long
//!    polls included. With the shedding above, a call past the cap gets `RESOURCE_EXHAUSTED`
//!    before anything of it is read; the per-connection stream cap and byte budgets (`conn`,
//!    `budget`) bound what each of the admitted calls may hold;
//! 5. **deadline** ([`DeadlineLayer`]): a call is bounded by its own `grpc-timeout`, plus a
//!    second of grace so that the upstream, which enforces the same deadline, answers first.
//!    A call without one is not cut short (a worker's long poll names 70 s);
//! 6. the gateway itself (`gateway::GatewayService`): authenticate → inspect → authorize →
//!    record → forward.
//!
//! Layers return typed errors (`tower`'s `Overloaded`, [`DeadlineExceeded`]) and never write a
//! response: `status::layer_refusal` is where they become gRPC statuses, with every other
//! refusal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tower::{BoxError, Layer, Service};

use crate::grpc::grpc_timeout;
use crate::telemetry::{InFlight, Metrics};
use crate::temporal::catalog;

/// Extra time a call gets beyond its `grpc-timeout`: the upstream enforces the same deadline
/// and answers `DEADLINE_EXCEEDED` itself, with its own message, unless it cannot.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// A call ran past its `grpc-timeout` (and the grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline exceeded")]
pub struct DeadlineExceeded;

/// Bounds each call by its `grpc-timeout` plus a grace ([`Deadline`]).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    grace: Duration,
}

impl DeadlineLayer {
    pub fn new(grace: Duration) -> DeadlineLayer {
        DeadlineLayer { grace }
    }
}

impl Default for DeadlineLayer {
    fn default() -> DeadlineLayer {
        DeadlineLayer::new(DEADLINE_GRACE)
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, grace: self.grace }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    grace: Duration,
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = grpc_timeout(request.headers()).map(|d| d.saturating_add(self.grace));
        let response = self.inner.call(request);
        Box::pin(async move {
            match deadline {
                Some(deadline) => match tokio::time::timeout(deadline, response).await {
                    Ok(result) => result.map_err(Into::into),
                    Err(_) => Err(DeadlineExceeded.into()),
                },
                None => response.await.map_err(Into::into),
            }
        })
    }
}

/// Where the gateway says that a call was allowed (and forwarded): the `decision` label of
/// `flowgate_calls_total`. The metrics layer puts one in each request's extensions; a call
/// nobody marks was refused, by a phase or a layer. A slot rather than a response extension,
/// so that a call allowed and then cut by its deadline still counts as allowed.
///
/// It also carries the call's namespace label (an index into `metrics.namespaces`, 0 for
/// `other`), set by the gateway once it has read the request.
#[derive(Debug, Clone, Default)]
pub struct Decided(Arc<(AtomicBool, AtomicUsize)>);

impl Decided {
    /// Marks the call allowed.
    pub fn allow(&self) {
        self.0.0.store(true, Ordering::Relaxed);
    }

    fn allowed(&self) -> bool {
        self.0.0.load(Ordering::Relaxed)
    }

    /// The call's namespace, as [`Metrics::namespace_label`] numbers it.
    pub fn set_namespace(&self, label: usize) {
        self.0.1.store(label, Ordering::Relaxed);
    }

    fn namespace(&self) -> usize {
        self.0.1.load(Ordering::Relaxed)
    }
}

/// Counts and times every call ([`Metered`]).
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> MetricsLayer {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner, metrics: self.metrics.clone() }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> Service<http::Request<B>> for Metered<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let spec = catalog::lookup(request.uri().path());
        let method = spec.name;
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let in_flight = metrics.call_started(spec.long_poll);
        let decided = Decided::default();
        request.extensions_mut().insert(decided.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let observer = CallObserver {
                metrics,
                method,
                allowed: decided.allowed(),
                namespace: decided.namespace(),
                started,
                status: response.headers().get("grpc-status").map(static_status),
                _in_flight: Some(in_flight),
            };
            Ok(response.map(|body| MeteredBody { inner: body, observer: Some(observer) }))
        })
    }
}

/// Reports one call to the metrics exactly once, when its response ends (or is dropped).
pub struct CallObserver {
    pub metrics: Arc<Metrics>,
    pub method: &'static str,
    pub allowed: bool,
    /// The namespace label ([`Metrics::namespace_label`]).
    pub namespace: usize,
    pub started: Instant,
    /// From the response headers (trailers-only) or, once they arrive, the trailers.
    pub status: Option<&'static str>,
    /// The call counted in flight until its response ends.
    pub _in_flight: Option<InFlight>,
}

impl Drop for CallObserver {
    fn drop(&mut self) {
        // A response that ended without a grpc-status was cut off: count it as CANCELLED (1).
        let status = self.status.unwrap_or("1");
        self.metrics.call_finished(self.method, self.allowed, self.namespace, status, self.started.elapsed());
    }
}

/// gRPC status codes as static label values (metrics labels must not allocate per call).
const STATUS_LABELS: [&str; 17] =
    ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];

/// A `grpc-status` header value as a label.
pub fn static_status(value: &http::HeaderValue) -> &'static str {
    value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .and_then(|code| STATUS_LABELS.get(code).copied())
        .unwrap_or("other")
}

/// A response body that tells its [`CallObserver`] the status in its trailers, and reports the
/// call when it ends.
pub struct MeteredBody<B> {
    inner: B,
    observer: Option<CallObserver>,
}

impl<B> MeteredBody<B> {
    /// A body whose call is reported to nobody (the token endpoint counts its own).
    pub fn unobserved(inner: B) -> MeteredBody<B> {
        MeteredBody { inner, observer: None }
    }

    /// A body reporting to `observer` (tests of bodies built by hand).
    pub fn observed(inner: B, observer: CallObserver) -> MeteredBody<B> {
        MeteredBody { inner, observer: Some(observer) }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && let (Some(status), Some(observer)) = (trailers.get("grpc-status"), self.observer.as_mut())
        {
            observer.status = Some(static_status(status));
        }
        if frame.is_none() {
            self.observer.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    fn request(timeout: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::new(());
        if let Some(timeout) = timeout {
            request.headers_mut().insert("grpc-timeout", timeout.parse().unwrap());
        }
        request
    }

    /// A service that answers after `delay`.
    fn slow(
        delay: Duration,
    ) -> impl Service<http::Request<()>, Response = &'static str, Error = Infallible, Future: Send + 'static> + Clone
    {
        tower::service_fn(move |_| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>("answered")
        })
    }

    const GRACE: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_call_past_its_grpc_timeout_and_the_grace_is_cut() {
        let service = DeadlineLayer::new(GRACE).layer(slow(Duration::from_secs(5)));
        let started = std::time::Instant::now();
        let error = service.oneshot(request(Some("100m"))).await.unwrap_err();
        assert!(error.is::<DeadlineExceeded>(), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2), "cut at the deadline, not at the answer");
    }

    #[tokio::test]
    async fn a_call_within_its_deadline_or_without_one_is_answered() {
        let within = DeadlineLayer::new(GRACE).layer(slow(Duration::from_millis(120)));
        assert_eq!(within.oneshot(request(Some("100m"))).await.unwrap(), "answered", "the grace counts");
        let unbounded = DeadlineLayer::new(GRACE).layer(slow(Duration::from_millis(300)));
        assert_eq!(unbounded.oneshot(request(None)).await.unwrap(), "answered");
    }
}
