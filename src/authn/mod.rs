//! Authentication: from the `authorization` header to a [`Principal`], or a reason why not.
//!
//! Each configured issuer is trusted for exactly its own `iss`. A token is checked against the
//! validation checklist (`shared/reference/oidc.md`): algorithm pinned per issuer and matched
//! against the key, key only from the issuer's own JWKS by `kid` (embedded `jwk`/`jku`/`x5u`/
//! `x5c` headers are never used), exact `iss`, required `aud`, `exp` required, `nbf` and `iat`
//! checked with a small leeway, implausible lifetimes refused, tenant claims bound, ID tokens
//! kept apart from access tokens, claims typed, ECDSA signatures only in low-s form (unless the
//! issuer's `ecdsa_high_s = "accept"`, see [`crate::ecdsa`]). flowgate's own worker
//! credentials are verified with its own keys ([`own`]).
//!
//! Authentication knows nothing of what is decided about a principal. A verified token is
//! kept, until it expires, in a [`TokenCache`] that its owner instantiates with whatever it
//! attaches to the principal: the gateway's `session` keeps the principal's decision caches
//! and minted upstream credentials there. So the signature is checked once per token, not on
//! every call, and `authn` never imports `authz`.

pub mod cache;
pub mod jwks;
pub mod own;
pub mod presets;
pub mod principal;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

pub use self::cache::{Expires, TokenCache};
pub use self::jwks::{FetcherError, HttpFetcher, KeyStore};
use self::presets::KeySource;
pub use self::presets::ResolvedIssuer;
pub use self::principal::Principal;
use crate::config::{Config, ConfigError, EcdsaHighS, IssuerConfig};
pub use crate::credential::MINTED_TOKEN_TYPE;
use crate::credential::Signer;
use crate::ecdsa;
use crate::telemetry::Metrics;

/// Why a caller is not authenticated. The message goes to the client in `grpc-message` and to
/// the decision record as `unauthenticated: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("no bearer token in the `authorization` header")]
    MissingToken,
    #[error("`authorization` header is not `Bearer <token>`")]
    NotBearer,
    #[error("more than one `authorization` header")]
    SeveralAuthorizations,
    #[error("token is not a signed JWT: {0}")]
    Malformed(String),
    #[error("token issuer `{0}` is not trusted")]
    UntrustedIssuer(String),
    #[error("algorithm `{alg}` is not accepted for issuer `{issuer}`")]
    AlgorithmNotAccepted { alg: String, issuer: String },
    #[error("token header has no `kid`")]
    MissingKid,
    #[error("{0}")]
    Keys(String),
    #[error("signing key `{kid}` is not for algorithm `{alg}`")]
    KeyAlgorithmMismatch { kid: String, alg: String },
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token signature is high-s ECDSA (the twin of a low-s signature), which issuer `{0}` does not accept")]
    HighS(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (`nbf` is in the future)")]
    NotYetValid,
    #[error("token was issued in the future (`iat`)")]
    IssuedInFuture,
    #[error("token lifetime exceeds the {0}s the issuer allows")]
    LifetimeTooLong(u64),
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("claim `{0}` is missing")]
    MissingClaim(String),
    #[error("claim `{claim}` has the wrong type: expected {expected}")]
    ClaimType { claim: String, expected: &'static str },
    #[error("claim `{claim}` is `{found}`, not the required value")]
    ClaimMismatch { claim: String, found: String },
    #[error("an ID token is not accepted as an access token")]
    IdToken,
    #[error("a flowgate credential is only accepted from flowgate's own issuer")]
    MintedTokenElsewhere,
}

/// One trusted issuer: its resolved settings and its keys.
pub struct Issuer {
    pub settings: ResolvedIssuer,
    pub keys: KeyStore,
    leeway: Duration,
    max_lifetime: Duration,
    refresh_every: Duration,
    /// The public client people log in with (`flowgate login`), when they may.
    login: Option<crate::config::LoginConfig>,
}

/// Turns bearer tokens into principals.
pub struct Authenticator {
    by_iss: HashMap<String, Arc<Issuer>>,
    /// flowgate's own issuer, when it mints credentials: its keys verify them.
    own: Option<Arc<Signer>>,
}

/// Resolves and checks every `[[issuers]]` entry (used by `serve` and `check`).
pub fn resolve_issuers(issuers: &[IssuerConfig]) -> Result<Vec<ResolvedIssuer>, ConfigError> {
    let resolved: Vec<ResolvedIssuer> =
        issuers.iter().enumerate().map(|(i, c)| presets::resolve(i, c)).collect::<Result<_, _>>()?;
    for (i, issuer) in resolved.iter().enumerate() {
        if let Some(first) = resolved[..i].iter().find(|other| other.issuer == issuer.issuer) {
            return Err(ConfigError::Invalid {
                key: format!("issuers[{i}].issuer"),
                message: format!("`{}` is already the issuer of `{}`", issuer.issuer, first.name),
            });
        }
    }
    Ok(resolved)
}

/// A compact JWS (RFC 7515 §7.1), split, its header and payload decoded but not yet trusted.
pub struct Jws<'a> {
    /// The text the signature covers: the first two segments and the `.` between them.
    signing_input: &'a str,
    signature_b64: &'a str,
    pub header: Map<String, Value>,
    /// The payload's claims, parsed once: checked only after the signature is.
    pub claims: Map<String, Value>,
}

impl<'a> Jws<'a> {
    pub fn parse(token: &'a str) -> Result<Jws<'a>, AuthnError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthnError::Malformed("expected three `.`-separated parts".into()));
        };
        let header = decode_segment(header_b64, "header")?;
        // RFC 7515 §4.1.11: a token that names extensions the verifier must understand is
        // refused by one that understands none.
        if header.contains_key("crit") {
            return Err(AuthnError::Malformed(
                "header names `crit` extensions, which flowgate does not support".into(),
            ));
        }
        Ok(Jws {
            signing_input: &token[..header_b64.len() + 1 + payload_b64.len()],
            signature_b64,
            header,
            claims: decode_segment(payload_b64, "payload")?,
        })
    }

    /// `verify(signing input, signature bytes)`, with a key parsed once (when its JWKS or key
    /// file was read): the signature is the one thing checked here per new token.
    pub fn check_signature(&self, verify: impl FnOnce(&[u8], &[u8]) -> bool) -> Result<(), AuthnError> {
        let signature = URL_SAFE_NO_PAD.decode(self.signature_b64).map_err(|_| AuthnError::BadSignature)?;
        if verify(self.signing_input.as_bytes(), &signature) { Ok(()) } else { Err(AuthnError::BadSignature) }
    }
}

/// A JWS segment's JSON object. Base64url exactly as RFC 7515 writes it, without padding: the
/// signature covers the segment's text, so one token has one text.
///
/// A member named twice (`{"alg":"none","alg":"ES256"}`) is refused (RFC 7515 §4 lets a
/// verifier refuse or take the last): parsers that take the first would read another token
/// out of the same bytes, and a token is read by more than flowgate (Temporal's own authorizer,
/// audit tools).
fn decode_segment(segment: &str, what: &str) -> Result<Map<String, Value>, AuthnError> {
    let bytes =
        URL_SAFE_NO_PAD.decode(segment).map_err(|_| AuthnError::Malformed(format!("{what} is not base64url")))?;
    match serde_json::from_slice::<UniqueObject>(&bytes) {
        Ok(UniqueObject(map)) => Ok(map),
        Err(error) if error.to_string().starts_with(DUPLICATE) => {
            let message = error.to_string();
            let member = message.trim_start_matches(DUPLICATE).split(" at line").next().unwrap_or_default();
            Err(AuthnError::Malformed(format!("{what} names {} twice", crate::error::truncated(member, 64))))
        }
        Err(_) => Err(AuthnError::Malformed(format!("{what} is not a JSON object"))),
    }
}

const DUPLICATE: &str = "duplicate member ";

/// A JSON object whose members have distinct names.
struct UniqueObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<UniqueObject, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
                let mut map = Map::new();
                while let Some(name) = access.next_key::<String>()? {
                    let value: Value = access.next_value()?;
                    if map.contains_key(&name) {
                        return Err(serde::de::Error::custom(format!("{DUPLICATE}`{name}`")));
                    }
                    map.insert(name, value);
                }
                Ok(UniqueObject(map))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

fn string_claim<'a>(claims: &'a Map<String, Value>, claim: &str) -> Result<&'a str, AuthnError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Err(AuthnError::MissingClaim(claim.to_owned())),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(AuthnError::MissingClaim(claim.to_owned())),
        Some(_) => Err(AuthnError::ClaimType { claim: claim.to_owned(), expected: "a string" }),
    }
}

fn time_claim(claims: &Map<String, Value>, claim: &str) -> Result<Option<u64>, AuthnError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0 && f.is_finite()).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| AuthnError::ClaimType { claim: claim.to_owned(), expected: "a non-negative NumericDate" }),
        Some(_) => Err(AuthnError::ClaimType { claim: claim.to_owned(), expected: "a NumericDate" }),
    }
}

/// Refuses an ES256/ES384 token whose signature is high-s (or not an ECDSA signature at all);
/// other algorithms pass.
pub(crate) fn check_low_s(alg: Algorithm, token: &str, issuer: &str) -> Result<(), AuthnError> {
    match ecdsa::classify_token(alg, token) {
        None | Some(ecdsa::S::Low) => Ok(()),
        Some(ecdsa::S::High) => Err(AuthnError::HighS(issuer.to_owned())),
        Some(ecdsa::S::Invalid) => Err(AuthnError::BadSignature),
    }
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer(header: Option<&http::HeaderValue>) -> Result<&str, AuthnError> {
    let header = header.ok_or(AuthnError::MissingToken)?;
    let value = header.to_str().map_err(|_| AuthnError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthnError::MissingToken);
    }
    Ok(token)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Where a gateway publishes how people log in to it ([`Authenticator::login_document`]).
pub const LOGIN_PATH: &str = "/.well-known/flowgate-login";

impl Authenticator {
    pub fn new(config: &Config, fetcher: HttpFetcher, metrics: Arc<Metrics>) -> Result<Authenticator, ConfigError> {
        let resolved = resolve_issuers(&config.issuers)?;
        let by_iss = resolved
            .into_iter()
            .zip(&config.issuers)
            .map(|(settings, raw)| {
                // Issuers with their own CA or fetch token get a client of their own; the rest
                // share `fetcher`'s pool.
                let fetcher = match (&raw.ca, &raw.fetch_token_file) {
                    (None, None) => fetcher.clone(),
                    (ca, token) => {
                        let mut token_for = vec![settings.issuer.as_str()];
                        if let KeySource::Jwks(uri) = &settings.keys {
                            token_for.push(uri);
                        }
                        HttpFetcher::for_issuer(ca.as_deref(), token.as_deref(), &token_for)
                            .map(|own| own.with_traces(fetcher.traces().clone()))
                            .map_err(|e| {
                                let key = match e {
                                    FetcherError::Client(_) => "ca",
                                    FetcherError::TokenOverPlainHttp { .. } => "fetch_token_file",
                                };
                                ConfigError::Invalid {
                                    key: format!("issuers.{}.{key}", settings.name),
                                    message: e.to_string(),
                                }
                            })?
                    }
                };
                let keys = KeyStore::new(
                    &settings.name,
                    &settings.issuer,
                    settings.keys.clone(),
                    raw.jwks_min_refresh,
                    raw.jwks_max_stale,
                    fetcher,
                    metrics.clone(),
                );
                let issuer = Issuer {
                    settings,
                    keys,
                    leeway: raw.leeway,
                    max_lifetime: raw.max_token_lifetime,
                    refresh_every: raw.jwks_refresh,
                    login: raw.login.clone(),
                };
                Ok((issuer.settings.issuer.clone(), Arc::new(issuer)))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Authenticator { by_iss, own: None })
    }

    /// What the gateway publishes at [`LOGIN_PATH`] for `flowgate login`: each issuer people
    /// may log in to, with its URL, the public client id and the scopes to ask for. Public
    /// facts, like an OIDC discovery document: no secret is in it.
    pub fn login_document(&self) -> serde_json::Value {
        let mut issuers: Vec<&Arc<Issuer>> = self.by_iss.values().filter(|i| i.login.is_some()).collect();
        issuers.sort_by(|a, b| a.settings.name.cmp(&b.settings.name));
        let issuers: Vec<serde_json::Value> = issuers
            .into_iter()
            .filter_map(|issuer| {
                let login = issuer.login.as_ref()?;
                Some(serde_json::json!({
                    "name": issuer.settings.name,
                    "issuer": issuer.settings.issuer,
                    "client_id": login.client_id,
                    "scopes": login.scopes,
                }))
            })
            .collect();
        serde_json::json!({ "issuers": issuers })
    }

    /// Accepts flowgate's own credentials, verified with its own keys.
    pub fn with_own_credentials(mut self, signer: Arc<Signer>) -> Authenticator {
        self.own = Some(signer);
        self
    }

    /// Fetches every issuer's keys once now, then keeps them fresh in the background until
    /// `shutdown` resolves. Start-up does not wait for a slow IdP: its tokens fail until its
    /// keys arrive, and the fetch is retried every `jwks_min_refresh` until it works.
    pub fn spawn_key_refresh(&self, shutdown: crate::shutdown::Signal) {
        for issuer in self.by_iss.values().cloned() {
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let ok = issuer.keys.refresh().await;
                    let wait = if ok { issuer.refresh_every } else { issuer.keys_min_refresh() };
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.wait() => return,
                    }
                }
            });
        }
    }

    /// Full verification of a token (the gateway keeps what it verified in its session cache).
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthnError> {
        let jws = Jws::parse(token)?;
        let Jws { header, claims: unverified, .. } = &jws;

        let iss = string_claim(unverified, "iss")?;
        if let Some(signer) = &self.own
            && signer.is_own(iss)
        {
            return own::verify(signer, token, &jws);
        }
        let issuer = self.by_iss.get(iss).ok_or_else(|| AuthnError::UntrustedIssuer(iss.to_owned()))?;
        let settings = &issuer.settings;

        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or_default();
        let not_accepted =
            || AuthnError::AlgorithmNotAccepted { alg: alg_name.to_owned(), issuer: settings.name.clone() };
        let alg: Algorithm = alg_name.parse().map_err(|_| not_accepted())?;
        if !settings.algorithms.contains(&alg) {
            return Err(not_accepted());
        }
        if header.get("typ").and_then(Value::as_str).is_some_and(|typ| typ.eq_ignore_ascii_case(MINTED_TOKEN_TYPE)) {
            return Err(AuthnError::MintedTokenElsewhere);
        }
        // Before the key lookup: a high-s token costs no JWKS fetch, and is never cached.
        if settings.ecdsa_high_s == EcdsaHighS::Refuse {
            check_low_s(alg, token, &settings.name)?;
        }
        let kid = match header.get("kid") {
            Some(Value::String(kid)) if !kid.is_empty() => kid.as_str(),
            _ => return Err(AuthnError::MissingKid),
        };
        let key = issuer.keys.key(kid).await.map_err(|e| AuthnError::Keys(e.to_string()))?;
        if !key.accepts(alg) {
            return Err(AuthnError::KeyAlgorithmMismatch { kid: kid.to_owned(), alg: alg_name.to_owned() });
        }

        // Signature only: every claim is checked below, with errors that say which.
        jws.check_signature(|input, signature| key.verify(alg, input, signature))?;
        issuer.check_claims(unverified, unix_now())?;
        issuer.principal(unverified)
    }
}

impl Issuer {
    fn keys_min_refresh(&self) -> Duration {
        // Retry a failed start-up fetch quickly, but never hammer the IdP.
        self.refresh_every.min(Duration::from_secs(10)).max(Duration::from_millis(200))
    }

    /// Every claim check of the checklist, on signature-verified claims.
    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), AuthnError> {
        let settings = &self.settings;
        let leeway = self.leeway.as_secs();
        if string_claim(claims, "iss")? != settings.issuer {
            return Err(AuthnError::UntrustedIssuer(string_claim(claims, "iss")?.to_owned()));
        }
        let exp = time_claim(claims, "exp")?.ok_or_else(|| AuthnError::MissingClaim("exp".into()))?;
        if now > exp.saturating_add(leeway) {
            return Err(AuthnError::Expired);
        }
        if let Some(nbf) = time_claim(claims, "nbf")?
            && nbf > now.saturating_add(leeway)
        {
            return Err(AuthnError::NotYetValid);
        }
        let iat = time_claim(claims, "iat")?;
        if let Some(iat) = iat
            && iat > now.saturating_add(leeway)
        {
            return Err(AuthnError::IssuedInFuture);
        }
        let max_lifetime = self.max_lifetime.as_secs();
        if exp.saturating_sub(iat.unwrap_or(now)) > max_lifetime || exp.saturating_sub(now) > max_lifetime {
            return Err(AuthnError::LifetimeTooLong(max_lifetime));
        }
        let audience_ok = match claims.get("aud") {
            None => return Err(AuthnError::MissingClaim("aud".into())),
            Some(Value::String(aud)) => settings.audiences.iter().any(|a| a == aud),
            Some(Value::Array(auds)) => {
                if auds.iter().any(|a| !a.is_string()) {
                    return Err(AuthnError::ClaimType { claim: "aud".into(), expected: "strings" });
                }
                auds.iter().any(|aud| settings.audiences.iter().any(|a| aud.as_str() == Some(a)))
            }
            Some(_) => {
                return Err(AuthnError::ClaimType { claim: "aud".into(), expected: "a string or array of strings" });
            }
        };
        if !audience_ok {
            return Err(AuthnError::WrongAudience);
        }
        string_claim(claims, "sub")?;
        for (claim, required) in &settings.required_claims {
            match claims.get(claim) {
                None | Some(Value::Null) => return Err(AuthnError::MissingClaim(claim.clone())),
                Some(Value::String(found)) if found == required => {}
                Some(Value::String(found)) => {
                    return Err(AuthnError::ClaimMismatch { claim: claim.clone(), found: found.clone() });
                }
                Some(_) => return Err(AuthnError::ClaimType { claim: claim.clone(), expected: "a string" }),
            }
        }
        // ID tokens carry these; access tokens and CI job tokens do not.
        if ["nonce", "at_hash", "c_hash"].iter().any(|marker| claims.contains_key(*marker)) {
            return Err(AuthnError::IdToken);
        }
        // Okta access tokens always carry `scp`; its ID tokens never do.
        if settings.preset == Some("okta") && !claims.contains_key("scp") {
            return Err(AuthnError::IdToken);
        }
        Ok(())
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthnError> {
        let exp = time_claim(claims, "exp")?.unwrap_or(0);
        let expires_at = UNIX_EPOCH + Duration::from_secs(exp.saturating_add(self.leeway.as_secs()));
        let mut principal = self.settings.mapping.principal(claims, expires_at)?;
        principal.issuer_url = self.settings.issuer.clone();
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn a_jws_is_split_once_and_its_signing_input_is_its_first_two_segments() {
        let (header, payload) = (segment(r#"{"alg":"ES256","kid":"k"}"#), segment(r#"{"sub":"s"}"#));
        let token = format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode([1, 2, 3]));
        let jws = Jws::parse(&token).unwrap();
        assert_eq!(jws.header["kid"], "k");
        assert_eq!(jws.claims["sub"], "s");
        let mut seen = None;
        jws.check_signature(|input, signature| {
            seen = Some((input.to_vec(), signature.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(seen, Some((format!("{header}.{payload}").into_bytes(), vec![1, 2, 3])));
        assert!(matches!(jws.check_signature(|_, _| false), Err(AuthnError::BadSignature)));
    }

    #[test]
    fn a_member_named_twice_is_refused_in_the_header_and_the_payload() {
        let signature = URL_SAFE_NO_PAD.encode([1, 2, 3]);
        let parse = |header: &str, payload: &str| {
            Jws::parse(&format!("{}.{}.{signature}", segment(header), segment(payload))).err().map(|e| e.to_string())
        };
        let twice = parse(r#"{"alg":"none","alg":"ES256","kid":"k"}"#, r#"{"sub":"s"}"#).unwrap();
        assert!(twice.contains("header names `alg` twice"), "{twice}");
        let twice = parse(r#"{"alg":"ES256"}"#, r#"{"sub":"a","iss":"i","sub":"b"}"#).unwrap();
        assert!(twice.contains("payload names `sub` twice"), "{twice}");
        // Distinct names, and names repeated only inside a nested object, are fine.
        assert_eq!(parse(r#"{"alg":"ES256"}"#, r#"{"sub":"a","x":{"k":1},"y":{"k":2}}"#), None);
        assert!(parse(r#"["alg"]"#, r#"{"sub":"a"}"#).unwrap().contains("header is not a JSON object"));
    }

    #[test]
    fn padded_segments_a_bad_signature_encoding_and_crit_headers_are_refused() {
        let payload = segment(r#"{"sub":"s"}"#);
        let malformed = |token: &str| matches!(Jws::parse(token), Err(AuthnError::Malformed(_)));
        // `{"alg":"ES256"}` is 15 bytes: its base64url needs one `=` of padding.
        let padded = format!("{}=", segment(r#"{"alg":"ES256"}"#));
        assert!(malformed(&format!("{padded}.{payload}.AQID")));
        assert!(malformed(&format!("{}.{payload}.AQID", segment(r#"{"alg":"ES256","crit":["exp"],"exp":1}"#))));
        assert!(malformed(&format!("{}.{payload}", segment(r#"{"alg":"ES256"}"#))));
        let jws = format!("{}.{payload}.AQID=", segment(r#"{"alg":"ES256"}"#));
        let jws = Jws::parse(&jws).unwrap();
        assert!(matches!(jws.check_signature(|_, _| true), Err(AuthnError::BadSignature)), "a padded signature");
    }
}
