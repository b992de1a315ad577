//! gRPC over HTTP/2, the parts every layer may use: status codes, `grpc-message` encoding,
//! trailers-only responses, `grpc-timeout`, and message framing.
//!
//! Nothing here knows why a call is refused: that mapping is `status`'s alone. This module only
//! knows how gRPC spells a status on the wire, so the gateway, the sidecar and the token endpoint
//! write it the same way.

use std::time::Duration;

use bytes::Bytes;

/// gRPC status codes flowgate sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    Cancelled = 1,
    Unknown = 2,
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
            Code::Cancelled => "1",
            Code::Unknown => "2",
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

/// `grpc-timeout` (e.g. `70S`, `500m`) as a duration.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    // Digits only (`u64::from_str` takes a `+` too): "TimeoutValue → 1*8ASCII-Digit".
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// One gRPC length-prefixed message, uncompressed (flag 0, which is valid under any
/// `grpc-encoding`).
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend((message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
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
    fn messages_decode_keeping_invalid_escapes() {
        assert_eq!(decode_message("Namespace%20x%20not%20found."), "Namespace x not found.");
        assert_eq!(decode_message("100%"), "100%");
        assert_eq!(decode_message("%zz"), "%zz");
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
    fn grpc_timeouts_parse() {
        let headers = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            h
        };
        assert_eq!(grpc_timeout(&headers("70S")), Some(Duration::from_secs(70)));
        assert_eq!(grpc_timeout(&headers("500m")), Some(Duration::from_millis(500)));
        assert_eq!(grpc_timeout(&headers("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(&headers("S")), None);
        assert_eq!(grpc_timeout(&headers("12x")), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn frames_carry_a_length_prefix() {
        assert_eq!(&frame(b"ab")[..], &[0, 0, 0, 0, 2, b'a', b'b']);
    }
}
