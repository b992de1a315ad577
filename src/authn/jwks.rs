//! Signing keys: each issuer's JWKS, fetched, parsed once, and kept fresh.
//!
//! Keys are parsed into verifying keys when they are fetched, never per request. A token with
//! a `kid` the store does not know triggers one refresh (single-flight: concurrent callers wait
//! for the same fetch; rate-limited: at most one per `jwks_min_refresh`), which is how a key
//! rotation at the IdP is picked up without a restart. When the IdP is down the last good keys
//! stay in use for at most `jwks_max_stale`; after that the issuer's tokens are refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::presets::KeySource;
use crate::proxy::error_chain;
use crate::telemetry::Metrics;

const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why keys could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach `{url}`: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("`{url}` answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("`{url}` did not return valid JSON: {reason}")]
    BadJson { url: String, reason: String },
    #[error("discovery document of `{expected}` names issuer `{found}`")]
    IssuerMismatch { expected: String, found: String },
    #[error("`{url}` holds no usable signing key")]
    NoKeys { url: String },
}

/// An HTTPS (or loopback HTTP) client for discovery documents and JWKS.
#[derive(Clone)]
pub struct HttpFetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HttpFetcher {
    pub fn new() -> HttpFetcher {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() })
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        HttpFetcher { client: Client::builder(TokioExecutor::new()).build(https) }
    }

    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, FetchError> {
        let unreachable = |reason: String| FetchError::Unreachable { url: url.to_owned(), reason };
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| unreachable(e.to_string()))?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, concat!("flowgate/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(FetchError::Status { url: url.to_owned(), status: response.status().as_u16() });
        }
        let body =
            tokio::time::timeout(FETCH_TIMEOUT, Limited::new(response.into_body(), MAX_DOCUMENT_BYTES).collect())
                .await
                .map_err(|_| unreachable("timed out reading the body".into()))?
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
        serde_json::from_slice(&body).map_err(|e| FetchError::BadJson { url: url.to_owned(), reason: e.to_string() })
    }
}

impl Default for HttpFetcher {
    fn default() -> Self {
        HttpFetcher::new()
    }
}

/// One verifying key, ready to use.
pub struct VerifyingKey {
    pub key: DecodingKey,
    /// The algorithm the JWK declares, if it does.
    pub algorithm: Option<Algorithm>,
    family: KeyFamily,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl VerifyingKey {
    /// Whether a token signed with `algorithm` may be checked with this key: the JWK's own
    /// `alg` (when present) and its key type/curve must agree with the token's header.
    pub fn accepts(&self, algorithm: Algorithm) -> bool {
        use Algorithm::*;
        let family_fits = match algorithm {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => self.family == KeyFamily::Rsa,
            ES256 => self.family == KeyFamily::P256,
            ES384 => self.family == KeyFamily::P384,
            EdDSA => self.family == KeyFamily::Ed25519,
            HS256 | HS384 | HS512 => false,
        };
        family_fits && self.algorithm.is_none_or(|declared| declared == algorithm)
    }
}

fn parse_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyFamily::P256,
            EllipticCurve::P384 => KeyFamily::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => KeyFamily::Ed25519,
        _ => return None,
    };
    let algorithm = match jwk.common.key_algorithm {
        None => None,
        Some(declared) => Some(declared.to_string().parse::<Algorithm>().ok()?),
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyingKey { key, algorithm, family })
}

/// Parses a JWKS document. Keys that are not usable for signatures (encryption keys, symmetric
/// keys, unknown types, keys without a `kid`) are skipped rather than failing the whole set.
pub fn parse_jwks(document: &serde_json::Value) -> HashMap<String, Arc<VerifyingKey>> {
    let Some(keys) = document.get("keys").and_then(|k| k.as_array()) else {
        return HashMap::new();
    };
    keys.iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value.clone()).ok())
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            Some((kid, Arc::new(parse_key(&jwk)?)))
        })
        .collect()
}

struct KeySet {
    keys: HashMap<String, Arc<VerifyingKey>>,
    fetched_at: Option<Instant>,
    /// Bumped on every successful fetch, so a caller that waited for a refresh can tell
    /// whether somebody else already did it.
    generation: u64,
}

/// Why a key lookup failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    #[error("unknown signing key `{0}`")]
    UnknownKid(String),
    #[error("signing keys of issuer `{issuer}` are unavailable: {reason}")]
    Unavailable { issuer: String, reason: String },
}

/// The keys of one issuer.
pub struct KeyStore {
    issuer_name: String,
    issuer_url: String,
    source: KeySource,
    min_refresh: Duration,
    max_stale: Duration,
    current: ArcSwap<KeySet>,
    /// Held while fetching; its value is when the last on-demand (unknown `kid`) fetch was
    /// attempted. Background refreshes do not count: a key published just after one must
    /// still be picked up when a token first names it.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    last_error: std::sync::Mutex<Option<String>>,
    fetcher: HttpFetcher,
    metrics: Arc<Metrics>,
}

impl KeyStore {
    pub fn new(
        issuer_name: &str,
        issuer_url: &str,
        source: KeySource,
        min_refresh: Duration,
        max_stale: Duration,
        fetcher: HttpFetcher,
        metrics: Arc<Metrics>,
    ) -> KeyStore {
        KeyStore {
            issuer_name: issuer_name.to_owned(),
            issuer_url: issuer_url.to_owned(),
            source,
            min_refresh,
            max_stale,
            current: ArcSwap::from_pointee(KeySet { keys: HashMap::new(), fetched_at: None, generation: 0 }),
            refresh: tokio::sync::Mutex::new(None),
            last_error: std::sync::Mutex::new(None),
            fetcher,
            metrics,
        }
    }

    fn unavailable(&self) -> KeyError {
        let reason =
            self.last_error.lock().expect("last_error lock").clone().unwrap_or_else(|| "not fetched yet".to_owned());
        KeyError::Unavailable { issuer: self.issuer_name.clone(), reason }
    }

    /// The key for `kid`, refreshing the set once if the kid is unknown.
    pub async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>, KeyError> {
        let seen = self.current.load();
        if let Some(key) = self.fresh_key(&seen, kid)? {
            return Ok(key);
        }
        let generation = seen.generation;
        drop(seen);
        self.refresh_if_due(generation).await;
        let now = self.current.load();
        if now.fetched_at.is_none() {
            return Err(self.unavailable());
        }
        self.fresh_key(&now, kid)?.ok_or_else(|| KeyError::UnknownKid(kid.to_owned()))
    }

    fn fresh_key(&self, set: &KeySet, kid: &str) -> Result<Option<Arc<VerifyingKey>>, KeyError> {
        match set.fetched_at {
            // Never fetched: fall through to a refresh.
            None => Ok(None),
            Some(at) if at.elapsed() > self.max_stale => Err(self.unavailable()),
            Some(_) => Ok(set.keys.get(kid).cloned()),
        }
    }

    /// Refreshes unless another caller already did since `seen_generation`, or the last
    /// attempt is more recent than `min_refresh`.
    async fn refresh_if_due(&self, seen_generation: u64) {
        let mut last_attempt = self.refresh.lock().await;
        if self.current.load().generation != seen_generation {
            return;
        }
        if last_attempt.is_some_and(|at| at.elapsed() < self.min_refresh) {
            return;
        }
        *last_attempt = Some(Instant::now());
        self.fetch_now().await;
    }

    /// Fetches the keys now (background refresh and start-up use this); returns whether it worked.
    pub async fn refresh(&self) -> bool {
        let _single_flight = self.refresh.lock().await;
        self.fetch_now().await
    }

    async fn fetch_now(&self) -> bool {
        match self.fetch().await {
            Ok(keys) => {
                let generation = self.current.load().generation + 1;
                tracing::info!(issuer = %self.issuer_name, keys = keys.len(), "fetched signing keys");
                self.current.store(Arc::new(KeySet { keys, fetched_at: Some(Instant::now()), generation }));
                *self.last_error.lock().expect("last_error lock") = None;
                self.metrics.jwks_fetch(&self.issuer_name, true);
                true
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer_name, %error, "cannot fetch signing keys; keeping the last good ones");
                *self.last_error.lock().expect("last_error lock") = Some(error.to_string());
                self.metrics.jwks_fetch(&self.issuer_name, false);
                false
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<VerifyingKey>>, FetchError> {
        let jwks_uri = match &self.source {
            KeySource::Jwks(uri) => uri.clone(),
            KeySource::Discovery => {
                let url = format!("{}/.well-known/openid-configuration", self.issuer_url.trim_end_matches('/'));
                let document = self.fetcher.get_json(&url).await?;
                let found = document.get("issuer").and_then(|v| v.as_str()).unwrap_or_default();
                if found != self.issuer_url {
                    return Err(FetchError::IssuerMismatch {
                        expected: self.issuer_url.clone(),
                        found: found.to_owned(),
                    });
                }
                document
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| FetchError::BadJson { url, reason: "no `jwks_uri`".into() })?
                    .to_owned()
            }
        };
        let document = self.fetcher.get_json(&jwks_uri).await?;
        let keys = parse_jwks(&document);
        if keys.is_empty() {
            return Err(FetchError::NoKeys { url: jwks_uri });
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_jwk(kid: &str, alg: Option<&str>, crv: &str) -> serde_json::Value {
        // A valid P-256 public point (the generator).
        let mut jwk = serde_json::json!({
            "kty": "EC", "crv": crv, "kid": kid, "use": "sig",
            "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
            "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU",
        });
        if let Some(alg) = alg {
            jwk["alg"] = alg.into();
        }
        jwk
    }

    #[test]
    fn unusable_keys_are_skipped_not_fatal() {
        let doc = serde_json::json!({"keys": [
            ec_jwk("good", Some("ES256"), "P-256"),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY", "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"},
            {"kty": "weird", "kid": "w"},
            ec_jwk("", None, "P-256").as_object().map(|o| { let mut o = o.clone(); o.remove("kid"); serde_json::Value::Object(o) }).unwrap(),
        ]});
        let keys = parse_jwks(&doc);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["good"]);
    }

    #[test]
    fn a_key_only_verifies_its_own_algorithm() {
        let keys = parse_jwks(
            &serde_json::json!({"keys": [ec_jwk("declared", Some("ES256"), "P-256"), ec_jwk("open", None, "P-256")]}),
        );
        let declared = &keys["declared"];
        assert!(declared.accepts(Algorithm::ES256));
        assert!(!declared.accepts(Algorithm::RS256));
        assert!(!declared.accepts(Algorithm::HS256), "never HMAC with a public key");
        assert!(!declared.accepts(Algorithm::ES384));
        let open = &keys["open"];
        assert!(open.accepts(Algorithm::ES256));
        assert!(!open.accepts(Algorithm::PS256));
    }
}
