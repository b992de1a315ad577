//! Errors as HTTP responses: flowgate's own refusals ([`HttpError`]) and Temporal's gRPC errors
//! (a `google.rpc.Status`, from `grpc-status-details-bin` or from `grpc-status` and
//! `grpc-message`), each a JSON body `{"code":…,"message":…,"details":[…]}` with the HTTP status
//! grpc-gateway gives the code (`runtime.HTTPStatusFromCode`).

use base64::Engine as _;
use http::StatusCode;
use prost_reflect::DynamicMessage;

use super::descriptors;
use super::json_out::{self, OutputOptions};

/// A refusal by the HTTP API itself (routing, reading the request, writing the response).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HttpError {
    pub status: StatusCode,
    /// The gRPC status code the body carries (`3` for 400, `5` for 404, ...).
    pub code: i32,
    pub message: String,
}

/// gRPC status codes used here.
pub mod code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
}

impl HttpError {
    /// 400, `InvalidArgument`.
    pub fn invalid(message: impl Into<String>) -> HttpError {
        HttpError { status: StatusCode::BAD_REQUEST, code: code::INVALID_ARGUMENT, message: message.into() }
    }

    /// 404 with Temporal's own body, `{"code":5,"message":"Not Found"}`.
    pub fn not_found() -> HttpError {
        HttpError { status: StatusCode::NOT_FOUND, code: code::NOT_FOUND, message: "Not Found".to_owned() }
    }

    /// 501 with Temporal's own body, `{"code":12,"message":"Method Not Allowed"}` (grpc-gateway
    /// turns 405 into `Unimplemented`).
    pub fn method_not_allowed() -> HttpError {
        HttpError {
            status: StatusCode::NOT_IMPLEMENTED,
            code: code::UNIMPLEMENTED,
            message: "Method Not Allowed".to_owned(),
        }
    }

    /// 504, `DeadlineExceeded`: no answer within the call's deadline.
    pub fn deadline(message: impl Into<String>) -> HttpError {
        HttpError { status: StatusCode::GATEWAY_TIMEOUT, code: code::DEADLINE_EXCEEDED, message: message.into() }
    }

    /// 429, `ResourceExhausted`: flowgate holds too much for one more (retry later).
    pub fn exhausted(message: impl Into<String>) -> HttpError {
        HttpError { status: StatusCode::TOO_MANY_REQUESTS, code: code::RESOURCE_EXHAUSTED, message: message.into() }
    }

    /// 503, `Unavailable`: a call was made but its answer cannot be given (it may have been done).
    pub fn unavailable(message: impl Into<String>) -> HttpError {
        HttpError { status: StatusCode::SERVICE_UNAVAILABLE, code: code::UNAVAILABLE, message: message.into() }
    }

    /// 500, `Internal`: a response flowgate cannot write as JSON.
    pub fn internal(message: impl Into<String>) -> HttpError {
        HttpError { status: StatusCode::INTERNAL_SERVER_ERROR, code: code::INTERNAL, message: message.into() }
    }

    /// The JSON body, compact.
    pub fn body(&self) -> Vec<u8> {
        simple_status(self.code, &self.message, false)
    }
}

/// The HTTP status grpc-gateway gives a gRPC code (`G/runtime/errors.go:36-75`).
pub fn http_status_from_code(code: i32) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        4 => StatusCode::GATEWAY_TIMEOUT,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"code":…,"message":…}` (a zero code and an empty message are left out, as protojson does).
fn simple_status(code: i32, message: &str, pretty: bool) -> Vec<u8> {
    let mut w = super::json::Writer::new(pretty);
    w.open('{');
    if code != 0 {
        w.name("code");
        w.raw(&code.to_string());
    }
    if !message.is_empty() {
        w.name("message");
        w.string(message);
    }
    w.close('}');
    w.out.into_bytes()
}

/// The response to a failed gRPC call: its HTTP status and the JSON of its `google.rpc.Status`.
///
/// `details_header` is the value of the `grpc-status-details-bin` trailer as received (base64,
/// padded or not). When it decodes to a `google.rpc.Status` with the same `code`, that status
/// is the body, its `details` written as `Any` with `@type` (Temporal's error details are in the
/// pool); otherwise, or when a detail cannot be written, the body is `code` and `message`
/// alone. `options` are the response's (shorthand applies to payloads inside details).
pub fn status_json(
    code: i32,
    message: &str,
    details_header: Option<&[u8]>,
    options: OutputOptions,
) -> (StatusCode, Vec<u8>) {
    let status = http_status_from_code(code);
    if let Some(body) = details_header.and_then(|header| details_json(code, header, options)) {
        return (status, body);
    }
    (status, simple_status(code, message, options.pretty))
}

fn details_json(code: i32, header: &[u8], options: OutputOptions) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(text).ok()?;
    let descriptor = descriptors::pool().get_message_by_name("google.rpc.Status")?;
    let message = DynamicMessage::decode(descriptor, bytes.as_slice()).ok()?;
    let carried = message.get_field_by_name("code").and_then(|value| value.as_i32()).unwrap_or_default();
    if carried != code {
        return None;
    }
    json_out::to_json(&message, options).ok()
}
