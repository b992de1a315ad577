//! Outbound HTTP: the one client flowgate reaches identity providers and token endpoints with.
//!
//! Discovery documents, JWKS, token exchanges, client-credentials grants: every such request
//! goes through [`HttpClient`], a thin wrapper over `reqwest` that adds what these requests
//! need and nothing else:
//!
//! * **Trust:** the system's roots (the platform verifier: on Linux the distribution's bundle,
//!   or `SSL_CERT_FILE` / `SSL_CERT_DIR`), plus the CA file a setting names: an issuer's `ca`
//!   (`https://kubernetes.default.svc` is signed by the cluster's own CA), the sidecar's
//!   `credential.ca`, `--ca` on the command line. The extra CA is added to the system roots,
//!   not put in their place, so a private CA never breaks the public IdPs beside it.
//! * **Proxies:** `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (either case), read
//!   when the client is built, as curl reads them. A cluster whose egress goes through a proxy
//!   reaches its IdPs with no flowgate setting at all. Loopback never goes through a proxy
//!   (curl would send `http://127.0.0.1` to one): a local gateway or IdP is spoken to in plain
//!   http, and a proxy would see its tokens.
//! * **Bounds:** one deadline for the whole request, body included, and a cap on the bytes of
//!   an answer: a slow or hostile endpoint can neither hold a task forever nor make flowgate
//!   buffer an endless body. Redirects are not followed: discovery and token endpoints do not
//!   redirect, and following one could carry a bearer token to another host.
//!
//! Errors name the URL once and the reason without it, e.g. ``cannot reach
//! `https://idp/keys`: tcp connect error: Connection refused (os error 111)``.

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};

use crate::error::error_chain;
use crate::pem::{PemError, read_certs};

/// What every request says about its sender.
const USER_AGENT: &str = concat!("flowgate/", env!("CARGO_PKG_VERSION"));

/// Why a client could not be built: its CA file, or the TLS stack refused the roots.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Ca(#[from] PemError),
    #[error("cannot use the CA certificates of `{path}`: {reason}")]
    BadCa { path: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("`{url}` is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("cannot reach `{url}`: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the answer of `{url}` is longer than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

impl SendError {
    /// What went wrong, without the URL (for messages that name it already).
    pub fn reason(&self) -> String {
        match self {
            SendError::BadUrl { .. } => "not an http:// or https:// URL".to_owned(),
            SendError::Unreachable { reason, .. } => reason.clone(),
            SendError::TooLarge { limit, .. } => format!("the answer is longer than {limit} bytes"),
        }
    }
}

/// An answer: its status, its headers and its whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Whether `host` (a URL's host, IPv6 in brackets or not) is this machine.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether flowgate may fetch keys from `url`: https, or http to loopback (tests, a local IdP).
pub fn is_https_or_loopback(url: &str) -> bool {
    match reqwest::Url::parse(url) {
        Ok(url) => match url.scheme() {
            "https" => url.has_host(),
            "http" => url.host_str().is_some_and(is_loopback_host),
            _ => false,
        },
        Err(_) => false,
    }
}

/// `scheme://host:port` of an absolute URL, the port spelled out: what a credential meant for
/// one server is compared against before it is sent.
pub fn origin(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    Some(format!("{}://{}:{}", url.scheme(), host, url.port_or_known_default()?))
}

/// A connection pool with its trust, deadline and size cap. Cheap to clone; clones share the
/// pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    /// Through the proxy the environment names, if any.
    client: reqwest::Client,
    /// Never through a proxy: for loopback URLs, which a proxy elsewhere cannot reach (and
    /// should not see: a local gateway or IdP gets tokens over plain http).
    direct: reqwest::Client,
    max_answer_bytes: usize,
}

impl HttpClient {
    /// A client that trusts the system roots and, when given, the certificates of `ca` (a PEM
    /// bundle). Each request, body included, must be done within `timeout`; an answer longer
    /// than `max_answer_bytes` is an error.
    pub fn new(ca: Option<&Path>, timeout: Duration, max_answer_bytes: usize) -> Result<HttpClient, BuildError> {
        let mut extra_roots = Vec::new();
        if let Some(ca) = ca {
            let bad = |reason: String| BuildError::BadCa { path: ca.display().to_string(), reason };
            for der in read_certs(ca)? {
                extra_roots.push(reqwest::Certificate::from_der(&der).map_err(|e| bad(error_chain(&e)))?);
            }
        }
        let build = |through_proxy: bool| {
            let mut builder = reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .timeout(timeout)
                .connect_timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(60))
                .tls_certs_merge(extra_roots.iter().cloned());
            if !through_proxy {
                builder = builder.no_proxy();
            }
            builder.build().map_err(|e| BuildError::Client(error_chain(&e)))
        };
        let (client, direct) = (build(true)?, build(false)?);
        Ok(HttpClient { client, direct, max_answer_bytes })
    }

    /// The `reqwest` client a request to `url` goes through, for a library that sends its own
    /// requests (the OTLP exporter): the same trust and deadline, direct to loopback, through
    /// the environment's proxy elsewhere. The size cap is the library's.
    pub fn reqwest_for(&self, url: &str) -> reqwest::Client {
        let loopback = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(is_loopback_host)) == Some(true);
        if loopback { self.direct.clone() } else { self.client.clone() }
    }

    /// `GET url` with `headers`.
    pub async fn get(&self, url: &str, headers: HeaderMap) -> Result<Answer, SendError> {
        self.send(Method::GET, url, headers, None).await
    }

    /// `method url` with `headers` and, when given, a body.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, SendError> {
        let unreachable = |error: reqwest::Error| {
            let reason = if error.is_timeout() { "timed out".to_owned() } else { error_chain(&error.without_url()) };
            SendError::Unreachable { url: url.to_owned(), reason }
        };
        let parsed = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| SendError::BadUrl { url: url.to_owned() })?;
        let client = if parsed.host_str().is_some_and(is_loopback_host) { &self.direct } else { &self.client };
        let mut request = client.request(method, parsed).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        let mut response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let limit = self.max_answer_bytes;
        if response.content_length().is_some_and(|length| length > limit as u64) {
            return Err(SendError::TooLarge { url: url.to_owned(), limit });
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > limit {
                return Err(SendError::TooLarge { url: url.to_owned(), limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { status, headers, body: body.freeze() })
    }
}
