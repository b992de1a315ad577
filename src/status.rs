//! The one place where a refusal becomes a gRPC status.
//!
//! Every way a call can be refused is a [`Refusal`]; [`Refusal::code`] is its gRPC status and
//! [`trailers_only`] turns it into the response: HTTP 200, `content-type: application/grpc`,
//! `grpc-status` and a percent-encoded `grpc-message` in the headers, and no body ("trailers-
//! only"), which every gRPC client reads as an error status. Messages say what was missing or
//! wrong, never the policy text.
//!
//! The layers below return their own small error types (`AuthnError`, `InspectError`,
//! `OverBudget`, `NamespaceIdError`, `UpstreamError`, ...) and never pick a status: which code a
//! failure gets is decided here, for all of them at once, as linkerd2-proxy does in its one
//! `errors::respond`. That is why this module sits above them all and below the gateway.

use std::time::Duration;

use crate::audit::AuditError;
use crate::authn::AuthnError;
pub use crate::grpc::{Code, trailers_only};
use tower::BoxError;
use tower::load_shed::error::Overloaded;

use crate::budget::{OverBudget, TooManyWaiting};
use crate::layers::DeadlineExceeded;
use crate::namespace_ids::NamespaceIdError;
use crate::proxy::UpstreamError;
use crate::ratelimit::Limited;
use crate::sticky::StickyError;
use crate::temporal::InspectError;
use crate::temporal::task_token::TaskTokenError;

/// Every reason flowgate refuses a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] AuthnError),
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("permission denied: {0}")]
    OutsideGrant(String),
    #[error("permission denied: `{action}` names no namespace{detail}")]
    NoNamespace { action: &'static str, detail: &'static str },
    #[error("permission denied: no policy permits `{action}` to this principal (its message was not read)")]
    NeverPermitted { action: &'static str },
    #[error("permission denied: {0}")]
    Sticky(StickyError),
    #[error("permission denied: {0}")]
    TaskToken(TaskTokenError),
    #[error(
        "permission denied: the task token was handed out for {issued}, not for `{method}` in namespace `{namespace}`"
    )]
    TaskTokenMisused { issued: String, method: &'static str, namespace: String },
    #[error("request refused for now: {0}; retry later")]
    OverBudget(OverBudget),
    #[error("request refused for now: {0}; retry later")]
    TooManyWaiting(TooManyWaiting),
    #[error("request message not received within {}", humantime::format_duration(*.0))]
    SlowRequest(Duration),
    #[error("{0}")]
    Inspect(#[from] InspectError),
    #[error("request has no message")]
    EmptyRequest,
    #[error("request body could not be read: {0}")]
    Body(String),
    #[error("not a gRPC request (content-type `{0}`)")]
    NotGrpc(String),
    #[error("call refused: {0}")]
    Audit(#[from] AuditError),
    #[error("upstream unavailable: {0}")]
    Upstream(String),
    #[error("deadline exceeded waiting for the upstream")]
    Deadline,
    #[error("{0}")]
    NamespaceId(#[from] NamespaceIdError),
    #[error("the gateway is at `limits.max_concurrent_calls`; retry later")]
    Overloaded,
    #[error("request refused for now: {0}")]
    RateLimited(Limited),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Refusal {
    /// Whether a policy refused the call (an explicit denial, or no policy that could permit
    /// the action), as opposed to one of flowgate's own checks.
    pub fn by_policy(&self) -> bool {
        matches!(self, Refusal::Denied(_) | Refusal::NeverPermitted { .. })
    }

    pub fn code(&self) -> Code {
        match self {
            Refusal::Unauthenticated(_) => Code::Unauthenticated,
            Refusal::Denied(_)
            | Refusal::OutsideGrant(_)
            | Refusal::NoNamespace { .. }
            | Refusal::NeverPermitted { .. }
            | Refusal::Sticky(StickyError::Taken(_) | StickyError::NotOwned(_)) => Code::PermissionDenied,
            Refusal::Sticky(StickyError::Full) => Code::ResourceExhausted,
            Refusal::TaskToken(TaskTokenError::Malformed(_) | TaskTokenError::TooLarge { .. }) => Code::InvalidArgument,
            Refusal::TaskToken(_) | Refusal::TaskTokenMisused { .. } => Code::PermissionDenied,
            Refusal::OverBudget(_) | Refusal::TooManyWaiting(_) => Code::ResourceExhausted,
            Refusal::SlowRequest(_) => Code::DeadlineExceeded,
            Refusal::Inspect(InspectError::TooLarge { .. } | InspectError::InflatedTooLarge { .. }) => {
                Code::ResourceExhausted
            }
            Refusal::Inspect(InspectError::UnsupportedEncoding(_)) => Code::Unimplemented,
            Refusal::Inspect(_) | Refusal::EmptyRequest | Refusal::Body(_) => Code::InvalidArgument,
            Refusal::NotGrpc(_) => Code::Unimplemented,
            Refusal::Audit(_) | Refusal::Upstream(_) => Code::Unavailable,
            Refusal::Deadline => Code::DeadlineExceeded,
            Refusal::NamespaceId(error) => namespace_id_code(error),
            Refusal::Overloaded | Refusal::RateLimited(_) => Code::ResourceExhausted,
            Refusal::Internal(_) => Code::Internal,
        }
    }
}

impl From<UpstreamError> for Refusal {
    fn from(error: UpstreamError) -> Refusal {
        match error {
            UpstreamError::Unavailable(why) => Refusal::Upstream(why),
            UpstreamError::Deadline => Refusal::Deadline,
        }
    }
}

/// The refusal of a call that a layer of the stack (`layers`) stopped before or around the
/// gateway: shed over the concurrency limit, or past its deadline.
pub fn layer_refusal(error: &BoxError) -> Refusal {
    if error.is::<Overloaded>() {
        Refusal::Overloaded
    } else if error.is::<DeadlineExceeded>() {
        Refusal::Deadline
    } else {
        Refusal::Internal(error.to_string())
    }
}

/// The outermost layer of the gateway's stack: whatever a layer below refused (a typed error,
/// see [`layer_refusal`]) is answered here as a trailers-only gRPC status, so the service that
/// `server` hands to hyper never fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct RespondLayer;

impl<S> tower::Layer<S> for RespondLayer {
    type Service = Respond<S>;

    fn layer(&self, inner: S) -> Respond<S> {
        Respond { inner, not_ready: None }
    }
}

/// See [`RespondLayer`].
#[derive(Debug)]
pub struct Respond<S> {
    inner: S,
    /// The inner service failed to get ready: the next call is answered with it.
    not_ready: Option<Refusal>,
}

impl<S: Clone> Clone for Respond<S> {
    fn clone(&self) -> Respond<S> {
        Respond { inner: self.inner.clone(), not_ready: None }
    }
}

impl<S, R, B> tower::Service<R> for Respond<S>
where
    S: tower::Service<R, Response = http::Response<B>, Error = BoxError>,
    S::Future: Send + 'static,
    B: Default + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<http::Response<B>, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        if let std::task::Poll::Ready(Err(error)) = self.inner.poll_ready(cx) {
            self.not_ready = Some(layer_refusal(&error));
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        if let Some(refusal) = self.not_ready.take() {
            return Box::pin(std::future::ready(Ok(trailers_only(refusal.code(), &refusal.to_string()))));
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            Ok(response.await.unwrap_or_else(|error| {
                let refusal = layer_refusal(&error);
                trailers_only(refusal.code(), &refusal.to_string())
            }))
        })
    }
}

/// A call naming its namespace by id: malformed or ambiguous requests are the caller's to fix,
/// an id nobody may resolve is a denial, an unknown id is not found, a lookup that could not be
/// made is worth retrying.
fn namespace_id_code(error: &NamespaceIdError) -> Code {
    match error {
        NamespaceIdError::Both { .. } | NamespaceIdError::NotUuid(_) => Code::InvalidArgument,
        NamespaceIdError::NeverPermitted { .. } | NamespaceIdError::UpstreamRefused { .. } => Code::PermissionDenied,
        NamespaceIdError::Unknown(_) => Code::NotFound,
        NamespaceIdError::LookupFailed { .. } | NamespaceIdError::Busy => Code::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_their_codes() {
        assert_eq!(Refusal::Unauthenticated(AuthnError::MissingToken).code(), Code::Unauthenticated);
        assert_eq!(Refusal::Inspect(InspectError::TooLarge { size: 9, limit: 1 }).code(), Code::ResourceExhausted);
        assert_eq!(Refusal::Inspect(InspectError::BadGzip).code(), Code::InvalidArgument);
        assert_eq!(Refusal::Audit(AuditError::Stopped).code(), Code::Unavailable);
        assert_eq!(Refusal::Deadline.code(), Code::DeadlineExceeded);
        assert_eq!(Refusal::from(UpstreamError::Deadline).code(), Code::DeadlineExceeded);
        assert_eq!(Refusal::from(UpstreamError::Unavailable("down".into())).code(), Code::Unavailable);
        assert_eq!(layer_refusal(&BoxError::from(Overloaded::new())).code(), Code::ResourceExhausted);
        assert_eq!(layer_refusal(&BoxError::from(DeadlineExceeded)).code(), Code::DeadlineExceeded);
    }

    #[test]
    fn namespace_id_refusals_have_their_codes() {
        let id = || "3f1c1e2a-0000-4000-8000-000000000000".to_owned();
        assert_eq!(
            Refusal::NamespaceId(NamespaceIdError::Both { action: "DescribeNamespace", name: "p".into(), id: id() })
                .code(),
            Code::InvalidArgument
        );
        assert_eq!(Refusal::NamespaceId(NamespaceIdError::NotUuid("x".into())).code(), Code::InvalidArgument);
        assert_eq!(Refusal::NamespaceId(NamespaceIdError::Unknown(id())).code(), Code::NotFound);
        assert_eq!(
            Refusal::NamespaceId(NamespaceIdError::NeverPermitted { action: "DescribeNamespace", id: id() }).code(),
            Code::PermissionDenied
        );
        assert_eq!(
            Refusal::NamespaceId(NamespaceIdError::LookupFailed { id: id(), reason: "down".into() }).code(),
            Code::Unavailable
        );
        assert_eq!(Refusal::NamespaceId(NamespaceIdError::Busy).code(), Code::Unavailable);
    }
}
