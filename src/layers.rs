//! The cross-cutting concerns of the gateway's call stack, each a tower [`Layer`] of its own.
//!
//! `server` builds the stack once per connection, outermost first (see `server::gateway_stack`):
//!
//! 1. **load shedding** (`tower::load_shed`): when the next layer is not ready, the call is
//!    refused at once instead of queueing, so a burst never builds a backlog the gateway holds
//!    memory for;
//! 2. **concurrency limit** (`tower::limit::GlobalConcurrencyLimit`, one semaphore shared by
//!    every connection): at most `limits.max_concurrent_calls` calls in flight at once, long
//!    polls included. With the shedding above, a call past the cap gets `RESOURCE_EXHAUSTED`
//!    before anything of it is read; the per-connection stream cap and byte budgets (`conn`,
//!    `budget`) bound what each of the admitted calls may hold;
//! 3. **deadline** ([`DeadlineLayer`]): a call is bounded by its own `grpc-timeout`, plus a
//!    second of grace so that the upstream, which enforces the same deadline, answers first.
//!    A call without one is not cut short (a worker's long poll names 70 s);
//! 4. the gateway itself (`gateway::GatewayService`): authenticate → inspect → authorize →
//!    record → forward.
//!
//! Layers return typed errors (`tower`'s `Overloaded`, [`DeadlineExceeded`]) and never write a
//! response: `status::layer_refusal` is where they become gRPC statuses, with every other
//! refusal.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{BoxError, Layer, Service};

use crate::grpc::grpc_timeout;

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
