//! The client side of token exchange (RFC 8693): trading a CI or workload token for a
//! short-lived flowgate credential.
//!
//! A gateway publishes its token endpoint in an OIDC discovery document
//! (`{gateway}/.well-known/openid-configuration`), so [`ExchangeClient::discover`] is always the
//! first step; the path is never assumed. [`ExchangeClient::exchange`] then posts the subject
//! token with the requested scope and gets back a [`Credential`].
//!
//! Subject tokens are single-use: the gateway refuses one it has already seen. A holder that
//! wants a fresh credential without a fresh CI token exchanges the credential it still holds
//! (a flowgate credential is a JWT too), for the same scope.
//!
//! [`ExchangeClient::client_credentials`] is the other grant a worker may need: an OAuth client
//! (e.g. an Okta service app) getting its own access token, to exchange in turn. It is a plain
//! form post with `client_secret_basic`, a dozen lines; an OIDC library would bring a JOSE
//! stack and a JWKS fetch this grant never uses.
//!
//! One client (one connection pool, `outbound::HttpClient`) serves every request; `http://` and
//! `https://` both work, with the system roots plus a CA file of the caller's choosing, through
//! `HTTPS_PROXY` when the environment names one. Errors carry the server's own
//! `error` code and `error_description`, because "why was I refused" is the only useful answer.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

use crate::outbound::{HttpClient, SendError};

pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The subject token type flowgate sends, and the token type of the credentials it gets back.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// How long one request (connect, send, read the answer) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Discovery documents and token responses are small; anything bigger is not one.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why a discovery or token request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    #[error("`{url}` is not an http:// or https:// URL")]
    BadUrl { url: String },
    /// The CA file cannot be used; the message names it.
    #[error("{0}")]
    Ca(String),
    #[error("cannot reach `{url}`: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("`{url}` answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("`{url}` sent an invalid response: {reason}")]
    BadResponse { url: String, reason: String },
    #[error("discovery document of `{expected}` names issuer `{found}`")]
    IssuerMismatch { expected: String, found: String },
    /// The server understood the request and said no, with an OAuth error code.
    #[error("{grant} refused: {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused { grant: &'static str, status: u16, error: String, description: Option<String> },
}

impl ExchangeError {
    /// Whether asking again later, with the same token, may succeed: the server was down or
    /// said so. A refusal of the token itself (`invalid_grant`, `unauthorized_client`, …) is
    /// not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            ExchangeError::Unreachable { .. } => true,
            ExchangeError::Status { status, .. } => *status >= 500 || *status == 429,
            ExchangeError::Refused { status, error, .. } => {
                *status >= 500 || *status == 429 || error == "temporarily_unavailable"
            }
            _ => false,
        }
    }
}

/// What a discovery document says about where to get tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub issuer: String,
    pub token_endpoint: String,
}

/// A credential from a token exchange (or a client-credentials grant).
#[derive(Clone)]
pub struct Credential {
    /// The bearer token. Never logged: [`Credential`]'s `Debug` leaves it out.
    pub token: String,
    /// `issued_token_type`; `TOKEN_TYPE_JWT` from flowgate.
    pub issued_token_type: Option<String>,
    /// `expires_in`, as the server said it.
    pub lifetime: Duration,
    /// `expires_in` counted from when the request was sent, not when the answer arrived, so it
    /// errs on the early side by the request's round trip.
    pub expires_at: SystemTime,
    /// The same instant on the monotonic clock, for scheduling refreshes.
    pub expires_at_instant: Instant,
    /// The scope granted (the server's `scope`, else the one requested).
    pub scope: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("token", &"<redacted>")
            .field("issued_token_type", &self.issued_token_type)
            .field("lifetime", &self.lifetime)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

impl Credential {
    /// The token response this credential came from, as RFC 8693 §2.2.1 spells it.
    pub fn to_response_json(&self) -> serde_json::Value {
        let mut response = serde_json::json!({
            "access_token": self.token,
            "token_type": "Bearer",
            "expires_in": self.lifetime.as_secs(),
            "scope": self.scope,
        });
        if let Some(issued) = &self.issued_token_type {
            response["issued_token_type"] = issued.clone().into();
        }
        response
    }
}

/// An HTTP client for discovery documents and token endpoints. Cheap to clone; clones share
/// the connection pool.
#[derive(Clone)]
pub struct ExchangeClient {
    client: HttpClient,
}

impl ExchangeClient {
    /// A client that trusts the system roots and, when given, `ca` (a PEM bundle) besides them;
    /// `HTTPS_PROXY` and `NO_PROXY` apply (see `outbound`).
    pub fn new(ca: Option<&Path>) -> Result<ExchangeClient, ExchangeError> {
        let client =
            HttpClient::new(ca, REQUEST_TIMEOUT, MAX_RESPONSE_BYTES).map_err(|e| ExchangeError::Ca(e.to_string()))?;
        Ok(ExchangeClient { client })
    }

    /// Reads `{base}/.well-known/openid-configuration`. `base` is a gateway address or an
    /// issuer URL; a trailing `/` is ignored.
    pub async fn discover(&self, base: &str) -> Result<Discovery, ExchangeError> {
        let url = format!("{}/.well-known/openid-configuration", base.trim_end_matches('/'));
        let (status, body) =
            self.send(http::Method::GET, &url, headers(&[(http::header::ACCEPT, "application/json")]), None).await?;
        if !status.is_success() {
            return Err(ExchangeError::Status { url, status: status.as_u16(), body: snippet(&body) });
        }
        let document: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ExchangeError::BadResponse { url: url.clone(), reason: format!("not JSON: {e}") })?;
        let field =
            |name: &str| {
                document.get(name).and_then(|v| v.as_str()).map(str::to_owned).ok_or_else(|| {
                    ExchangeError::BadResponse { url: url.clone(), reason: format!("no `{name}` string") }
                })
            };
        let discovery = Discovery { issuer: field("issuer")?, token_endpoint: field("token_endpoint")? };
        parse_url(&discovery.token_endpoint)?;
        Ok(discovery)
    }

    /// Like [`discover`](Self::discover), and checks that the document is the issuer's own
    /// (OIDC Discovery §4.3): a document naming another issuer is refused.
    pub async fn discover_issuer(&self, issuer: &str) -> Result<Discovery, ExchangeError> {
        let discovery = self.discover(issuer).await?;
        if discovery.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(ExchangeError::IssuerMismatch { expected: issuer.to_owned(), found: discovery.issuer });
        }
        Ok(discovery)
    }

    /// Exchanges `subject_token` (a JWT: a CI or workload token, or a flowgate credential) at
    /// `token_endpoint` for a credential with `scope` (space separated, e.g.
    /// `namespace:payments role:worker task_queue:deploys`).
    pub async fn exchange(
        &self,
        token_endpoint: &str,
        subject_token: &str,
        scope: &str,
    ) -> Result<Credential, ExchangeError> {
        let body = form_encode(&[
            ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
            ("subject_token", subject_token),
            ("subject_token_type", TOKEN_TYPE_JWT),
            ("requested_token_type", TOKEN_TYPE_JWT),
            ("scope", scope),
        ]);
        self.token_request("token exchange", token_endpoint, body, None, scope).await
    }

    /// The OAuth client-credentials grant (RFC 6749 §4.4) with `client_secret_basic`: an access
    /// token for the client itself, with `scopes`.
    pub async fn client_credentials(
        &self,
        token_endpoint: &str,
        client_id: &str,
        client_secret: &str,
        scopes: &[String],
    ) -> Result<Credential, ExchangeError> {
        let scope = scopes.join(" ");
        let mut fields = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            fields.push(("scope", &scope));
        }
        // RFC 6749 §2.3.1: both halves are form-encoded before they are joined and base64'd.
        let basic = STANDARD.encode(format!("{}:{}", form_component(client_id), form_component(client_secret)));
        let authorization = http::HeaderValue::try_from(format!("Basic {basic}")).map(|mut value| {
            value.set_sensitive(true);
            value
        });
        let authorization = authorization.map_err(|e| ExchangeError::BadResponse {
            url: token_endpoint.to_owned(),
            reason: format!("client credentials do not fit in a header: {e}"),
        })?;
        self.token_request(
            "client credentials grant",
            token_endpoint,
            form_encode(&fields),
            Some(authorization),
            &scope,
        )
        .await
    }

    async fn token_request(
        &self,
        grant: &'static str,
        token_endpoint: &str,
        form: String,
        authorization: Option<http::HeaderValue>,
        requested_scope: &str,
    ) -> Result<Credential, ExchangeError> {
        let url = token_endpoint.to_owned();
        let mut headers = headers(&[
            (http::header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
            (http::header::ACCEPT, "application/json"),
        ]);
        if let Some(authorization) = authorization {
            headers.insert(http::header::AUTHORIZATION, authorization);
        }
        let sent_at = (SystemTime::now(), Instant::now());
        let (status, body) = self.send(http::Method::POST, &url, headers, Some(form.into_bytes())).await?;
        let bad = |reason: String| ExchangeError::BadResponse { url: url.clone(), reason };
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            // RFC 6749 §5.2: an error answer is JSON with `error` and maybe `error_description`.
            let text = |name: &str| json.as_ref().and_then(|j| j.get(name)).and_then(|v| v.as_str()).map(str::to_owned);
            return Err(match text("error") {
                Some(error) => ExchangeError::Refused {
                    grant,
                    status: status.as_u16(),
                    error,
                    description: text("error_description"),
                },
                None => ExchangeError::Status { url, status: status.as_u16(), body: snippet(&body) },
            });
        }
        let json = json.ok_or_else(|| bad(format!("not JSON: {}", snippet(&body))))?;
        let token = json
            .get("access_token")
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no `access_token`".into()))?;
        let token_type = json.get("token_type").and_then(|v| v.as_str()).unwrap_or_default();
        if !token_type.eq_ignore_ascii_case("bearer") {
            return Err(bad(format!("`token_type` is `{token_type}`, not `Bearer`")));
        }
        let lifetime = json
            .get("expires_in")
            .and_then(|v| v.as_u64())
            .filter(|&secs| secs > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| bad("no positive `expires_in`: cannot tell when to refresh".into()))?;
        if http::HeaderValue::try_from(format!("Bearer {token}")).is_err() {
            return Err(bad("`access_token` holds characters a header cannot carry".into()));
        }
        Ok(Credential {
            token: token.to_owned(),
            issued_token_type: json.get("issued_token_type").and_then(|v| v.as_str()).map(str::to_owned),
            lifetime,
            expires_at: sent_at.0 + lifetime,
            expires_at_instant: sent_at.1 + lifetime,
            scope: json.get("scope").and_then(|v| v.as_str()).unwrap_or(requested_scope).to_owned(),
        })
    }

    /// Any request with a JSON body (or none), answered with text (`flowgate explain --admin`).
    pub async fn request_text(
        &self,
        method: http::Method,
        url: &str,
        body: String,
    ) -> Result<(http::StatusCode, String), ExchangeError> {
        let headers = headers(&[(http::header::CONTENT_TYPE, "application/json")]);
        let (status, body) = self.send(method, url, headers, Some(body.into_bytes())).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: http::HeaderMap,
        body: Option<Vec<u8>>,
    ) -> Result<(http::StatusCode, Bytes), ExchangeError> {
        let answer = self.client.send(method, url, headers, body).await.map_err(|e| match e {
            SendError::BadUrl { url } => ExchangeError::BadUrl { url },
            other => ExchangeError::Unreachable { url: url.to_owned(), reason: other.reason() },
        })?;
        Ok((answer.status, answer.body))
    }
}

fn parse_url(url: &str) -> Result<http::Uri, ExchangeError> {
    let uri: http::Uri = url.parse().map_err(|_| ExchangeError::BadUrl { url: url.to_owned() })?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(ExchangeError::BadUrl { url: url.to_owned() }),
    }
}

fn headers(pairs: &[(http::HeaderName, &'static str)]) -> http::HeaderMap {
    pairs.iter().map(|(name, value)| (name.clone(), http::HeaderValue::from_static(value))).collect()
}

/// The start of a body, printable, for an error message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.trim().is_empty() { "(empty body)".to_owned() } else { text.trim().to_owned() }
}

/// `application/x-www-form-urlencoded`: `name=value` pairs joined by `&`, each side encoded as
/// [`form_component`] does.
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish()
}

/// One form component, as browsers encode it (the WHATWG URL standard's
/// `application/x-www-form-urlencoded` serializer): letters, digits and `*-._` stay, a space is
/// `+`, anything else `%XX`.
fn form_component(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Writes a secret (a token) to `path` atomically, readable by its owner only: a temporary
/// file beside it with mode 0600, flushed to disk, then renamed over `path`. A reader sees the
/// old token or the new one, never half of one.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let name = path.file_name().ok_or_else(|| std::io::Error::other(format!("`{}` names no file", path.display())))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_encode_like_browsers() {
        assert_eq!(
            form_encode(&[("scope", "namespace:payments role:worker"), ("t", "a+b/c=d&e")]),
            "scope=namespace%3Apayments+role%3Aworker&t=a%2Bb%2Fc%3Dd%26e"
        );
        assert_eq!(form_component("é"), "%C3%A9");
        for byte in 0u8..128 {
            let c = char::from(byte);
            let expected = match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '*' | '-' | '.' | '_' => c.to_string(),
                ' ' => "+".to_owned(),
                _ => format!("%{byte:02X}"),
            };
            assert_eq!(form_component(&c.to_string()), expected, "byte {byte:#04x}");
        }
    }

    #[test]
    fn forms_round_trip_every_character_that_needs_escaping() {
        let tricky = "a b&c=d+e%20f/é☃\u{1F600}";
        let fields = [("scope", "namespace:payments role:worker"), ("odd name=&+", tricky), ("empty", "")];
        let encoded = form_encode(&fields);
        assert!(!encoded.contains(' ') && encoded.is_ascii(), "{encoded}");
        assert_eq!(encoded.matches('&').count(), fields.len() - 1, "only the separators are bare `&`: {encoded}");
        let decoded: Vec<(String, String)> = form_urlencoded::parse(encoded.as_bytes()).into_owned().collect();
        let expected: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(decoded, expected);
        let decoded: String = form_urlencoded::parse(format!("x={}", form_component(tricky)).as_bytes())
            .map(|(_, value)| value.into_owned())
            .collect();
        assert_eq!(decoded, tricky);
    }

    #[test]
    fn refusals_carry_the_servers_words() {
        let error = ExchangeError::Refused {
            grant: "token exchange",
            status: 400,
            error: "invalid_grant".into(),
            description: Some("subject token was already used".into()),
        };
        assert_eq!(error.to_string(), "token exchange refused: invalid_grant: subject token was already used");
        assert!(!error.is_transient());
        let error = ExchangeError::Refused {
            grant: "token exchange",
            status: 503,
            error: "temporarily_unavailable".into(),
            description: None,
        };
        assert_eq!(error.to_string(), "token exchange refused: temporarily_unavailable");
        assert!(error.is_transient());
    }

    #[test]
    fn credentials_do_not_debug_print_their_token() {
        let credential = Credential {
            token: "secret-token".into(),
            issued_token_type: Some(TOKEN_TYPE_JWT.into()),
            lifetime: Duration::from_secs(60),
            expires_at: SystemTime::now(),
            expires_at_instant: Instant::now(),
            scope: "namespace:a".into(),
        };
        assert!(!format!("{credential:?}").contains("secret-token"));
        assert_eq!(credential.to_response_json()["expires_in"], 60);
    }

    #[test]
    fn secret_files_are_written_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_secret_file(&path, b"one").unwrap();
        write_secret_file(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }
}
