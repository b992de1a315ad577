//! Signing keys: each issuer's JWKS, fetched, parsed once, and kept fresh.
//!
//! Keys are parsed into verifying keys when they are fetched, never per request. A token with
//! a `kid` the store does not know triggers a refresh, which is how a key rotation at the IdP
//! is picked up without a restart. When the IdP is down the last good keys stay in use for at
//! most `jwks_max_stale`; after that the issuer's tokens are refused.
//!
//! A rotation must never be a refusal: Keycloak, Dex and the Kubernetes API server sign with a
//! new key the moment they publish it, so its first token can arrive a millisecond after a
//! fetch that did not have it yet. A plain "one fetch per `jwks_min_refresh`" refused such
//! tokens for up to that long whenever any unknown kid, an attacker's included, had just
//! caused a fetch. So the question asked is per kid: has a fetch begun *after this kid was
//! first asked for*? If not, it gets one; the fetch budget ([`KeyStore`]) bounds how often the
//! IdP is asked, and a call that finds the budget spent is held for the next permitted fetch
//! rather than refused. The trade-off: under a flood of random kids, legitimate first calls
//! with a new key wait up to `jwks_min_refresh` (not refused), and the flood's own calls are
//! held as long before their refusal, which costs flowgate a sleeping task each, bounded by
//! [`MAX_KID_WAITERS`]; known kids and cached tokens are never held.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use aws_lc_rs::signature::{self, ParsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use sha2::{Digest, Sha256};

use super::presets::KeySource;
use crate::outbound::{BuildError, HttpClient, is_https_or_loopback, origin};
use crate::telemetry::Metrics;
use crate::traces::{KeyValue, SpanKind, Traces};

const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an issuer's fetcher cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum FetcherError {
    #[error(transparent)]
    Client(#[from] BuildError),
    #[error("`fetch_token_file` needs https://, and `{url}` is not")]
    TokenOverPlainHttp { url: String },
}

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

/// The client for one issuer's discovery document and JWKS: the system roots plus the
/// issuer's `ca`, and its `fetch_token_file` as a bearer token (re-read at every fetch, since
/// projected service-account tokens rotate). Cheap to clone.
#[derive(Clone)]
pub struct HttpFetcher {
    client: HttpClient,
    bearer: Option<BearerToken>,
    /// Where the spans of key fetches go.
    traces: Arc<Traces>,
}

/// A token file, and the only origins (`https://host:port`) it may be sent to: the issuer's
/// own and its configured `jwks_uri`'s. A discovery document naming keys elsewhere (a bucket, a
/// CDN) gets no token: a pod's service-account token is a credential to the cluster.
#[derive(Clone)]
struct BearerToken {
    file: Arc<Path>,
    origins: Arc<[String]>,
}

impl HttpFetcher {
    /// A fetcher that trusts the system roots and sends no token.
    pub fn new() -> Result<HttpFetcher, BuildError> {
        Ok(HttpFetcher {
            client: HttpClient::new(None, FETCH_TIMEOUT, MAX_DOCUMENT_BYTES)?,
            bearer: None,
            traces: Arc::new(Traces::off()),
        })
    }

    /// The same fetcher, tracing its key fetches to `traces`.
    pub fn with_traces(mut self, traces: Arc<Traces>) -> HttpFetcher {
        self.traces = traces;
        self
    }

    /// Where its key fetches are traced.
    pub fn traces(&self) -> &Arc<Traces> {
        &self.traces
    }

    /// A fetcher that also trusts `ca` and, when given, authenticates with the token in
    /// `token_file` to the https origins of `token_for` (the issuer URL, a configured
    /// `jwks_uri`). An origin that is not https is refused: the token would travel in clear.
    pub fn for_issuer(
        ca: Option<&Path>,
        token_file: Option<&Path>,
        token_for: &[&str],
    ) -> Result<HttpFetcher, FetcherError> {
        let client = HttpClient::new(ca, FETCH_TIMEOUT, MAX_DOCUMENT_BYTES)?;
        let bearer = match token_file {
            None => None,
            Some(file) => {
                let origins = token_for
                    .iter()
                    .map(|url| {
                        origin(url)
                            .filter(|o| o.starts_with("https://"))
                            .ok_or_else(|| FetcherError::TokenOverPlainHttp { url: (*url).to_owned() })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(BearerToken { file: Arc::from(file), origins: origins.into() })
            }
        };
        Ok(HttpFetcher { client, bearer, traces: Arc::new(Traces::off()) })
    }

    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, FetchError> {
        let unreachable = |reason: String| FetchError::Unreachable { url: url.to_owned(), reason };
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json"));
        if let Some(bearer) = &self.bearer {
            let here = origin(url).unwrap_or_default();
            if !bearer.origins.contains(&here) {
                return Err(unreachable(format!(
                    "`fetch_token_file` is sent only to the issuer's own origin ({}), not to `{here}`",
                    bearer.origins.join(", ")
                )));
            }
            // Read off the runtime, within the fetch's deadline: a file read can block (a
            // network volume).
            let path = bearer.file.clone();
            let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(&path));
            let token = tokio::time::timeout(FETCH_TIMEOUT, read)
                .await
                .map_err(|_| unreachable("timed out reading `fetch_token_file`".into()))?
                .map_err(|e| unreachable(e.to_string()))?
                .map_err(|e| unreachable(format!("cannot read `fetch_token_file`: {e}")))?;
            let mut value = http::HeaderValue::try_from(format!("Bearer {}", token.trim()))
                .map_err(|_| unreachable("`fetch_token_file` does not hold a token".into()))?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let answer = self.client.get(url, headers).await.map_err(|e| unreachable(e.reason()))?;
        if !answer.status.is_success() {
            return Err(FetchError::Status { url: url.to_owned(), status: answer.status.as_u16() });
        }
        serde_json::from_slice(&answer.body)
            .map_err(|e| FetchError::BadJson { url: url.to_owned(), reason: e.to_string() })
    }
}

/// One verifying key, ready to use: parsed by aws-lc-rs once for each algorithm it may verify,
/// when its JWKS is fetched. Verifying a token is then the signature check alone: no JWK
/// components decoded, no key parsed or validated, no header or payload decoded a second time
/// (`Authenticator::verify` has them already), on every new token.
pub struct VerifyingKey {
    /// The algorithms this key verifies, each with the key parsed for it: the key type's
    /// algorithms, or only the one the JWK declares in `alg`.
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
}

impl VerifyingKey {
    /// Whether a token signed with `algorithm` may be checked with this key: the JWK's own
    /// `alg` (when present) and its key type/curve must agree with the token's header.
    pub fn accepts(&self, algorithm: Algorithm) -> bool {
        self.verifier(algorithm).is_some()
    }

    /// Whether `signature` (the JWS signature, base64url-decoded) signs `signing_input` (the
    /// token up to its last `.`) with this key under `algorithm`. False for an algorithm the key
    /// does not accept.
    pub fn verify(&self, algorithm: Algorithm, signing_input: &[u8], signature: &[u8]) -> bool {
        self.verifier(algorithm).is_some_and(|key| key.verify_sig(signing_input, signature).is_ok())
    }

    fn verifier(&self, algorithm: Algorithm) -> Option<&ParsedPublicKey> {
        self.verifiers.iter().find(|(a, _)| *a == algorithm).map(|(_, key)| key)
    }
}

/// The aws-lc-rs verification algorithm of a JWS algorithm (RFC 7518 §3.1): ECDSA signatures in
/// JWS are the fixed-width `r || s`, and RSA moduli under 2048 bits are refused.
fn verification_algorithm(algorithm: Algorithm) -> Option<&'static dyn signature::VerificationAlgorithm> {
    use Algorithm::*;
    Some(match algorithm {
        RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        EdDSA => &signature::ED25519,
        HS256 | HS384 | HS512 => return None,
    })
}

/// A base64url JWK member, decoded (padding tolerated, as JWK producers differ).
fn jwk_bytes(member: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(member.trim_end_matches('=')).ok()
}

/// An RFC 8017 `RSAPublicKey` (`SEQUENCE { modulus INTEGER, publicExponent INTEGER }`), DER,
/// from a JWK's big-endian `n` and `e`: the form aws-lc-rs parses an RSA key from.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    fn integer(out: &mut Vec<u8>, magnitude: &[u8]) {
        let start = magnitude.iter().take_while(|&&b| b == 0).count().min(magnitude.len().saturating_sub(1));
        let magnitude = &magnitude[start..];
        let pad = magnitude.first().is_none_or(|&b| b & 0x80 != 0);
        out.push(0x02);
        length(out, magnitude.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(magnitude);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn parse_key(jwk: &Jwk) -> Option<VerifyingKey> {
    use Algorithm::*;
    if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
        return None;
    }
    let (family, public_key): (&[Algorithm], Vec<u8>) = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = jwk_bytes(&rsa.n)?;
            // aws-lc-rs verifies 2048 to 8192-bit moduli only, but parses smaller ones: a key it
            // could never verify with is skipped here, like any other unusable key.
            let bits = n.iter().skip_while(|&&b| b == 0).count() * 8;
            if !(2048..=8192).contains(&bits) {
                return None;
            }
            (&[RS256, RS384, RS512, PS256, PS384, PS512], rsa_public_key_der(&n, &jwk_bytes(&rsa.e)?))
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (algorithms, width): (&[Algorithm], usize) = match ec.curve {
                EllipticCurve::P256 => (&[ES256], 32),
                EllipticCurve::P384 => (&[ES384], 48),
                _ => return None,
            };
            let (x, y) = (jwk_bytes(&ec.x)?, jwk_bytes(&ec.y)?);
            if x.len() != width || y.len() != width {
                return None;
            }
            // The uncompressed SEC 1 point.
            (algorithms, [&[4u8][..], &x, &y].concat())
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => (&[EdDSA], jwk_bytes(&okp.x)?),
        _ => return None,
    };
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(declared) => Some(declared.to_string().parse::<Algorithm>().ok()?),
    };
    let verifiers = family
        .iter()
        .filter(|&&algorithm| declared.is_none_or(|declared| declared == algorithm))
        .map(|&algorithm| {
            let parsed = ParsedPublicKey::new(verification_algorithm(algorithm)?, &public_key).ok()?;
            Some((algorithm, parsed))
        })
        .collect::<Option<Vec<_>>>()?;
    // A declared `alg` of another key type leaves nothing to verify with: the key is unusable.
    (!verifiers.is_empty()).then_some(VerifyingKey { verifiers })
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
    /// When the fetch that brought these keys began: it speaks for every kid asked for before.
    started_at: Option<Instant>,
    /// Bumped on every successful fetch, so a caller that waited for the lock can tell
    /// whether somebody else fetched meanwhile.
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

/// On-demand fetches allowed back to back before the rate of one per `jwks_min_refresh`
/// applies: one for whatever kid came first, one more for a key published just after it.
const KID_FETCH_BURST: u32 = 2;
/// The longest a call is held for a fetch that may bring its kid (also bounded by twice
/// `jwks_min_refresh`, so a held call is answered by the first or second permitted fetch).
const MAX_KID_WAIT: Duration = Duration::from_secs(15);
/// Calls held at once per issuer; beyond, an unknown kid is refused at once.
const MAX_KID_WAITERS: usize = 4096;
/// Kids remembered as absent, by SHA-256 (a long kid costs no more than a short one).
const MAX_ABSENT_KIDS: usize = 4096;

/// The on-demand fetch budget, held (with the fetch itself) under one lock: single flight.
#[derive(Default)]
struct Refresh {
    /// When the next on-demand fetch is due at the steady rate (the "theoretical arrival time"
    /// of the generic cell rate algorithm): free slots are those up to `KID_FETCH_BURST - 1`
    /// intervals before it.
    next_slot: Option<Instant>,
    /// When the last fetch that failed began.
    failed_at: Option<Instant>,
}

impl Refresh {
    /// Takes a slot for an on-demand fetch now, or says how long until one is free.
    fn take(&mut self, now: Instant, interval: Duration) -> Result<(), Duration> {
        let due = self.next_slot.map_or(now, |at| at.max(now));
        let earliest_free = now + interval * (KID_FETCH_BURST - 1);
        if due > earliest_free {
            return Err(due - earliest_free);
        }
        self.next_slot = Some(due + interval);
        Ok(())
    }
}

/// Counts a held call for as long as it is held (also when the call is dropped meanwhile).
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The keys of one issuer.
///
/// A kid not in the current set gets a fetch unless a fetch that began after the kid was asked
/// for already lacked it: a key published a moment after the last fetch is picked up on its
/// first call, however recent that fetch. Such fetches draw on a budget of
/// [`KID_FETCH_BURST`] at once, refilled at one per `jwks_min_refresh`; when it is spent, the
/// call is held until the next slot (bounded by [`MAX_KID_WAIT`] and counted in
/// `flowgate_jwks_kid_waits_total`), and every call held meanwhile is answered by that one
/// fetch. So random kids cannot make the IdP serve more than the budget, while a real rotated
/// key waits at most `jwks_min_refresh` instead of being refused. A kid a fetch lacked is
/// refused at once, with no fetch, for `jwks_min_refresh` after.
pub struct KeyStore {
    issuer_name: String,
    issuer_url: String,
    source: KeySource,
    min_refresh: Duration,
    max_stale: Duration,
    current: ArcSwap<KeySet>,
    /// Held while fetching. Background refreshes take it too but spend no budget: they are
    /// flowgate's own schedule, not something a token can cause.
    refresh: tokio::sync::Mutex<Refresh>,
    /// Kids (SHA-256) that a fetch begun after they were asked for lacked, with that fetch's start.
    absent: std::sync::Mutex<HashMap<[u8; 32], Instant>>,
    held: AtomicUsize,
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
            current: ArcSwap::from_pointee(KeySet {
                keys: HashMap::new(),
                fetched_at: None,
                started_at: None,
                generation: 0,
            }),
            refresh: tokio::sync::Mutex::new(Refresh::default()),
            absent: std::sync::Mutex::new(HashMap::new()),
            held: AtomicUsize::new(0),
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

    /// The refusal for a kid that is not in `set`.
    fn missing(&self, set: &KeySet, kid: &str) -> KeyError {
        if set.fetched_at.is_none() { self.unavailable() } else { KeyError::UnknownKid(kid.to_owned()) }
    }

    /// The key for `kid`, fetching the set (or waiting for the next permitted fetch) if a
    /// fetch made since the kid was asked for may bring it.
    pub async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>, KeyError> {
        let asked_at = Instant::now();
        let seen = self.current.load();
        if let Some(key) = self.fresh_key(&seen, kid)? {
            return Ok(key);
        }
        let digest: [u8; 32] = Sha256::digest(kid.as_bytes()).into();
        if self.recently_absent(&digest) {
            return Err(KeyError::UnknownKid(kid.to_owned()));
        }
        // Never fetched (the IdP was down at start): one attempt if the budget allows, but no
        // holding; the background refresh keeps retrying.
        let may_wait = seen.fetched_at.is_some();
        drop(seen);
        let deadline = asked_at + (self.min_refresh * 2).min(MAX_KID_WAIT);
        let mut held = false;
        loop {
            let set = self.current.load_full();
            if let Some(key) = self.fresh_key(&set, kid)? {
                if held {
                    self.metrics.jwks_kid_wait(&self.issuer_name, "found");
                }
                return Ok(key);
            }
            if let Some(started) = set.started_at
                && started >= asked_at
            {
                self.remember_absent(digest, started);
                if held {
                    self.metrics.jwks_kid_wait(&self.issuer_name, "absent");
                }
                return Err(KeyError::UnknownKid(kid.to_owned()));
            }
            let mut refresh = self.refresh.lock().await;
            if self.current.load().generation != set.generation {
                continue; // somebody fetched while this call waited for the lock
            }
            if refresh.failed_at.is_some_and(|at| at >= asked_at) {
                // The IdP did not answer a fetch made since: do not hold the call for another.
                if held {
                    self.metrics.jwks_kid_wait(&self.issuer_name, "refused");
                }
                return Err(self.missing(&set, kid));
            }
            let now = Instant::now();
            match refresh.take(now, self.min_refresh) {
                Ok(()) => {
                    self.fetch_locked(&mut refresh).await;
                }
                Err(wait) => {
                    drop(refresh);
                    if !may_wait {
                        return Err(self.missing(&set, kid));
                    }
                    self.held.fetch_add(1, Ordering::SeqCst);
                    let holding = Held(&self.held);
                    if now + wait > deadline || self.held.load(Ordering::SeqCst) > MAX_KID_WAITERS {
                        drop(holding);
                        self.metrics.jwks_kid_wait(&self.issuer_name, "refused");
                        return Err(KeyError::UnknownKid(kid.to_owned()));
                    }
                    held = true;
                    tokio::time::sleep(wait).await;
                    drop(holding);
                }
            }
        }
    }

    fn fresh_key(&self, set: &KeySet, kid: &str) -> Result<Option<Arc<VerifyingKey>>, KeyError> {
        match set.fetched_at {
            // Never fetched: fall through to a refresh.
            None => Ok(None),
            Some(at) if at.elapsed() > self.max_stale => Err(self.unavailable()),
            Some(_) => Ok(set.keys.get(kid).cloned()),
        }
    }

    fn recently_absent(&self, digest: &[u8; 32]) -> bool {
        let absent = self.absent.lock().expect("absent kids lock");
        absent.get(digest).is_some_and(|at| at.elapsed() < self.min_refresh)
    }

    fn remember_absent(&self, digest: [u8; 32], fetch_started: Instant) {
        let mut absent = self.absent.lock().expect("absent kids lock");
        if absent.len() >= MAX_ABSENT_KIDS {
            absent.retain(|_, at| at.elapsed() < self.min_refresh);
        }
        // Still full: not remembered, so that kid is held for the next fetch like a new one.
        if absent.len() < MAX_ABSENT_KIDS || absent.contains_key(&digest) {
            absent.insert(digest, fetch_started);
        }
    }

    /// Fetches the keys now (background refresh and start-up use this); returns whether it worked.
    pub async fn refresh(&self) -> bool {
        let mut refresh = self.refresh.lock().await;
        self.fetch_locked(&mut refresh).await
    }

    async fn fetch_locked(&self, refresh: &mut Refresh) -> bool {
        let started = Instant::now();
        let span = self.fetcher.traces.operation("fetch signing keys", SpanKind::Client, None);
        span.annotate(|| vec![KeyValue::new("flowgate.issuer", self.issuer_name.clone())]);
        let fetched = self.fetch().await;
        span.annotate(|| match &fetched {
            Ok(keys) => vec![KeyValue::new("flowgate.keys", keys.len() as i64)],
            Err(_) => Vec::new(),
        });
        span.end(fetched.as_ref().err().map(|e| e.to_string()).as_deref());
        match fetched {
            Ok(keys) => {
                let generation = self.current.load().generation + 1;
                tracing::info!(issuer = %self.issuer_name, keys = keys.len(), "fetched signing keys");
                self.current.store(Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                    started_at: Some(started),
                    generation,
                }));
                *self.last_error.lock().expect("last_error lock") = None;
                self.metrics.jwks_fetch(&self.issuer_name, true);
                true
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer_name, %error, "cannot fetch signing keys; keeping the last good ones");
                *self.last_error.lock().expect("last_error lock") = Some(error.to_string());
                refresh.failed_at = Some(started);
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
                let jwks_uri = document
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| FetchError::BadJson { url: url.clone(), reason: "no `jwks_uri`".into() })?;
                // The configured URLs are checked at load; this one arrives at run time. Keys
                // over plain http could be anyone's.
                if !is_https_or_loopback(jwks_uri) {
                    return Err(FetchError::BadJson {
                        url,
                        reason: format!("`jwks_uri` `{jwks_uri}` is not https:// (http:// only on loopback)"),
                    });
                }
                jwks_uri.to_owned()
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

    type Sign = Box<dyn Fn(&[u8]) -> Vec<u8>>;

    /// A JWK of each key type flowgate verifies, from a freshly generated key, with a function
    /// that signs as that JWS algorithm.
    fn generated_keys() -> Vec<(Algorithm, serde_json::Value, Sign)> {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let rsa = Arc::new(RsaKeyPair::generate(KeySize::Rsa2048).unwrap());
        let (n, e) = (rsa.public_key().modulus(), rsa.public_key().exponent());
        let rsa_jwk = serde_json::json!({"kty": "RSA", "kid": "rsa",
            "n": b64(n.big_endian_without_leading_zero()), "e": b64(e.big_endian_without_leading_zero())});
        let rsa_signer = |padding: &'static dyn signature::RsaEncoding| {
            let rsa = rsa.clone();
            Box::new(move |message: &[u8]| {
                let mut out = vec![0; rsa.public_modulus_len()];
                rsa.sign(padding, &SystemRandom::new(), message, &mut out).unwrap();
                out
            }) as Sign
        };
        let ec = |signing: &'static signature::EcdsaSigningAlgorithm, crv: &str| {
            let key = EcdsaKeyPair::generate(signing).unwrap();
            let point = key.public_key().as_ref().to_vec();
            let width = (point.len() - 1) / 2;
            let jwk = serde_json::json!({"kty": "EC", "crv": crv, "kid": crv,
                "x": b64(&point[1..1 + width]), "y": b64(&point[1 + width..])});
            let sign = move |message: &[u8]| key.sign(&SystemRandom::new(), message).unwrap().as_ref().to_vec();
            (jwk, Box::new(sign) as Sign)
        };
        let ed = Ed25519KeyPair::generate().unwrap();
        let ed_jwk =
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed.public_key().as_ref())});
        let (p256, sign_p256) = ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256");
        let (p384, sign_p384) = ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384");
        vec![
            (Algorithm::RS256, rsa_jwk.clone(), rsa_signer(&signature::RSA_PKCS1_SHA256)),
            (Algorithm::RS512, rsa_jwk.clone(), rsa_signer(&signature::RSA_PKCS1_SHA512)),
            (Algorithm::PS256, rsa_jwk, rsa_signer(&signature::RSA_PSS_SHA256)),
            (Algorithm::ES256, p256, sign_p256),
            (Algorithm::ES384, p384, sign_p384),
            (Algorithm::EdDSA, ed_jwk, Box::new(move |message: &[u8]| ed.sign(message).as_ref().to_vec())),
        ]
    }

    /// The key type (and curve) an algorithm needs.
    fn family(algorithm: Algorithm) -> &'static str {
        use Algorithm::*;
        match algorithm {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => "RSA",
            ES256 => "P-256",
            ES384 => "P-384",
            EdDSA => "Ed25519",
            HS256 | HS384 | HS512 => "oct",
        }
    }

    #[test]
    fn keys_parsed_once_verify_their_own_algorithms_only() {
        let every = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
            Algorithm::HS256,
        ];
        for (algorithm, jwk, sign) in generated_keys() {
            let keys = parse_jwks(&serde_json::json!({"keys": [jwk]}));
            let key = keys.values().next().unwrap_or_else(|| panic!("{algorithm:?}: key not parsed"));
            let message = b"eyJhbGciOi.eyJzdWIiOi";
            let good = sign(message);
            assert!(key.verify(algorithm, message, &good), "{algorithm:?}: its own signature");
            assert!(!key.verify(algorithm, b"eyJhbGciOi.eyJzdWIiOj", &good), "{algorithm:?}: another message");
            let mut bad = good.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert!(!key.verify(algorithm, message, &bad), "{algorithm:?}: a flipped bit");
            for other in every {
                assert_eq!(
                    key.accepts(other),
                    family(other) == family(algorithm),
                    "{algorithm:?} key, {other:?} token"
                );
                if other != algorithm {
                    assert!(!key.verify(other, message, &good), "{algorithm:?} signature checked as {other:?}");
                }
            }
        }
    }

    #[test]
    fn a_declared_alg_is_the_only_one_a_key_verifies() {
        let (_, mut jwk, sign) = generated_keys().swap_remove(0);
        jwk["alg"] = "PS256".into();
        let keys = parse_jwks(&serde_json::json!({"keys": [jwk.clone()]}));
        let key = &keys["rsa"];
        assert!(key.accepts(Algorithm::PS256));
        assert!(!key.accepts(Algorithm::RS256), "the JWK says PS256");
        assert!(!key.verify(Algorithm::RS256, b"a.b", &sign(b"a.b")));
        // An `alg` of another key type leaves the key nothing to verify: it is skipped.
        jwk["alg"] = "ES256".into();
        assert!(parse_jwks(&serde_json::json!({"keys": [jwk]})).is_empty());
    }

    #[test]
    fn malformed_key_material_is_skipped() {
        let point = |x: &str| {
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "k", "x": x,
            "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"})
        };
        // Off the curve, short, not base64url.
        for x in [
            "AxfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
            "axfR8uEsQkf4",
            "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwp!",
        ] {
            assert!(parse_jwks(&serde_json::json!({"keys": [point(x)]})).is_empty(), "x = {x}");
        }
        // A 1024-bit RSA modulus: under the 2048 bits aws-lc-rs verifies.
        let n = URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
        assert!(
            parse_jwks(&serde_json::json!({"keys": [{"kty": "RSA", "kid": "small", "n": n, "e": "AQAB"}]})).is_empty()
        );
    }

    #[test]
    fn rsa_public_keys_are_der_as_rfc_8017_writes_them() {
        // Short form lengths, a leading zero for a high bit, leading zeros dropped.
        assert_eq!(rsa_public_key_der(&[0x80], &[1, 0, 1]), [0x30, 0x09, 0x02, 0x02, 0x00, 0x80, 0x02, 0x03, 1, 0, 1]);
        assert_eq!(rsa_public_key_der(&[0, 0, 0x7f], &[3]), [0x30, 0x06, 0x02, 0x01, 0x7f, 0x02, 0x01, 3]);
        // Long form: a 2048-bit modulus with its high bit set is 257 content bytes.
        let der = rsa_public_key_der(&[0xff; 256], &[1, 0, 1]);
        assert_eq!(&der[..8], &[0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01]);
        assert_eq!(der.len(), 4 + 4 + 257 + 5);
    }

    #[test]
    fn the_fetch_budget_is_a_burst_then_one_per_interval() {
        let interval = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut refresh = Refresh::default();
        for _ in 0..KID_FETCH_BURST {
            assert_eq!(refresh.take(t0, interval), Ok(()));
        }
        assert_eq!(refresh.take(t0, interval), Err(interval), "spent: the next slot is one interval away");
        assert_eq!(refresh.take(t0 + Duration::from_secs(4), interval), Err(Duration::from_secs(6)));
        assert_eq!(refresh.take(t0 + interval, interval), Ok(()));
        assert!(refresh.take(t0 + interval, interval).is_err());
        // Idle for long: the burst is back, not more.
        let later = t0 + interval * 100;
        for _ in 0..KID_FETCH_BURST {
            assert_eq!(refresh.take(later, interval), Ok(()));
        }
        assert!(refresh.take(later, interval).is_err());
        // No interval: no limit.
        let mut unlimited = Refresh::default();
        assert!((0..100).all(|_| unlimited.take(t0, Duration::ZERO).is_ok()));
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
