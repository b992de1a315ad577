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

/// An error and its sources, `outer: inner: root`, for messages that must say why. A source
/// whose words the message already ends with (``cannot read `x`: {source}``) is not said twice.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config file `x.toml`: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting")]
    struct Top {
        #[source]
        inner: Outer,
    }

    #[test]
    fn a_source_the_message_already_says_is_said_once() {
        let error = Top { inner: Outer { source: std::io::Error::from(std::io::ErrorKind::NotFound) } };
        assert_eq!(error_chain(&error), "starting: cannot read config file `x.toml`: entity not found");
    }
}
