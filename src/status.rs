//! The one place where a refusal becomes a gRPC status.
//!
//! Every way a call can be refused is a [`Refusal`]; [`Refusal::code`] is its gRPC status and
//! [`trailers_only`] turns it into the response: HTTP 200, `content-type: application/grpc`,
//! `grpc-status` and a percent-encoded `grpc-message` in the headers, and no body ("trailers-
//! only"), which every gRPC client reads as an error status. Messages say what was missing or
//! wrong, never the policy text.

use std::time::Duration;

use crate::audit::AuditError;
use crate::authn::AuthnError;
use crate::budget::OverBudget;
use crate::namespace_ids::NamespaceIdError;
use crate::sticky::StickyError;
use crate::temporal::InspectError;
use crate::temporal::task_token::TaskTokenError;

/// gRPC status codes flowgate sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "3",
            Code::DeadlineExceeded => "4",
            Code::NotFound => "5",
            Code::PermissionDenied => "7",
            Code::ResourceExhausted => "8",
            Code::Unimplemented => "12",
            Code::Internal => "13",
            Code::Unavailable => "14",
            Code::Unauthenticated => "16",
        }
    }
}

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
}

impl Refusal {
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
            Refusal::OverBudget(_) => Code::ResourceExhausted,
            Refusal::SlowRequest(_) => Code::DeadlineExceeded,
            Refusal::Inspect(InspectError::TooLarge { .. } | InspectError::InflatedTooLarge { .. }) => {
                Code::ResourceExhausted
            }
            Refusal::Inspect(InspectError::UnsupportedEncoding(_)) => Code::Unimplemented,
            Refusal::Inspect(_) | Refusal::EmptyRequest | Refusal::Body(_) => Code::InvalidArgument,
            Refusal::NotGrpc(_) => Code::Unimplemented,
            Refusal::Audit(_) | Refusal::Upstream(_) => Code::Unavailable,
            Refusal::Deadline => Code::DeadlineExceeded,
            Refusal::NamespaceId(error) => error.code(),
        }
    }
}

/// A `grpc-message` as received: percent-encoded UTF-8, decoded (invalid escapes kept).
pub fn decode_message(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3).and_then(|hex| u8::from_str_radix(hex, 16).ok()))
            .flatten();
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec requires.
pub fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A trailers-only gRPC error response.
pub fn trailers_only<B: Default>(code: Code, message: &str) -> http::Response<B> {
    http::Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("grpc-status", code.as_str())
        .header("grpc-message", encode_message(message))
        .body(B::default())
        .expect("static header names and encoded values are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("a 100% ok"), "a 100%25 ok");
        assert_eq!(encode_message("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn denials_are_trailers_only() {
        let response: http::Response<String> = trailers_only(Code::PermissionDenied, "no");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "7");
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert!(response.body().is_empty());
    }

    #[test]
    fn refusals_map_to_their_codes() {
        assert_eq!(Refusal::Unauthenticated(AuthnError::MissingToken).code(), Code::Unauthenticated);
        assert_eq!(Refusal::Inspect(InspectError::TooLarge { size: 9, limit: 1 }).code(), Code::ResourceExhausted);
        assert_eq!(Refusal::Inspect(InspectError::BadGzip).code(), Code::InvalidArgument);
        assert_eq!(Refusal::Audit(AuditError::Stopped).code(), Code::Unavailable);
        assert_eq!(Refusal::Deadline.code(), Code::DeadlineExceeded);
    }
}
