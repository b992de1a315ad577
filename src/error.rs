//! Errors as people read them: an error and the chain of its sources in one line.
//!
//! Lower layers keep small typed errors (`thiserror`); where a message must say *why* (a JWKS
//! fetch, a connection to the upstream), the whole chain goes into it, because hyper's and
//! rustls's top-level errors alone ("client error (Connect)") tell an operator nothing.

/// `text` cut to at most `max` bytes, on a character boundary (for text a client or an upstream
/// chose, kept in a bounded place).
pub fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An error and its sources, `outer: inner: root`, for messages that must say why.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
