//! flowgate's own credentials, presented back to it: a worker credential becomes a
//! `Temporal::Worker` principal that carries its grant.
//!
//! The checks are the JWT checklist's, tightened for a token flowgate itself signed: ES256
//! only, low-s only (flowgate never signs the high-s twin), a `kid` of a key flowgate still
//! publishes, the exact issuer, no clock leeway, and `token_use = "worker"` (an upstream
//! credential, meant for Temporal, is never accepted back). The keys and the claim names come
//! from `credential`, which `mint` signs with: authentication depends on the format, never on
//! the token endpoint.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::principal::{self, Principal};
use super::{AuthnError, Jws};
use crate::config::PrincipalKind;
use crate::credential::{Grant, MintedGrant, Role, Signer, WORKER_USE, unix};

/// The `Temporal::Worker` principal of a flowgate credential's (already verified) claims, with
/// the grant it carries. `name` is `mint.name`, the issuer name policies see.
pub fn worker_principal(
    name: &str,
    issuer_url: &str,
    claims: &Map<String, Value>,
    expires_at: SystemTime,
) -> Result<Principal, AuthnError> {
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let strings = |name: &str| -> Result<Vec<String>, AuthnError> {
        principal::groups_from(claims, name)
            .map_err(|_| AuthnError::ClaimType { claim: name.into(), expected: "an array of strings" })
    };
    let missing = |name: &str| AuthnError::MissingClaim(name.into());
    let grant = Grant {
        namespace: text("namespace").ok_or_else(|| missing("namespace"))?.to_owned(),
        role: text("role").and_then(Role::parse).ok_or_else(|| missing("role"))?,
        task_queues: strings("task_queues")?,
        workflow_types: strings("workflow_types")?,
    };
    let sub = text("sub").ok_or_else(|| missing("sub"))?.to_owned();
    let minted = MintedGrant {
        grant,
        session_expires: number("session_exp").ok_or_else(|| missing("session_exp"))?,
        act: claims.get("act").cloned().unwrap_or(Value::Null),
        sub: sub.clone(),
    };
    let mut principal =
        Principal::new(PrincipalKind::Worker, name, &sub, Vec::new(), principal::flatten_claims(claims), expires_at);
    principal.issuer_url = issuer_url.to_owned();
    principal.minted = Some(minted);
    Ok(principal)
}

/// Verifies one of flowgate's own worker credentials, signed by `signer`'s keys.
pub fn verify(signer: &Signer, token: &str, jws: &Jws<'_>) -> Result<Principal, AuthnError> {
    let header = &jws.header;
    let config = &signer.config;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err(AuthnError::AlgorithmNotAccepted {
            alg: header.get("alg").and_then(Value::as_str).unwrap_or_default().to_owned(),
            issuer: config.name.clone(),
        });
    }
    // flowgate signs low-s only, so a high-s credential is a twin somebody else made.
    super::check_low_s(Algorithm::ES256, token, &config.name)?;
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => kid.as_str(),
        _ => return Err(AuthnError::MissingKid),
    };
    let now = SystemTime::now();
    let key = signer
        .verifying_key(kid, now)
        .ok_or_else(|| AuthnError::Keys(format!("signing key `{kid}` is not one of flowgate's published keys")))?;
    jws.check_signature(|input, signature| key.verifying.verify_sig(input, signature).is_ok())?;
    let claims = &jws.claims;
    let now = unix(now);
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("iss") != Some(config.issuer.as_str()) {
        return Err(AuthnError::UntrustedIssuer(text("iss").unwrap_or_default().to_owned()));
    }
    let exp = number("exp").ok_or_else(|| AuthnError::MissingClaim("exp".into()))?;
    // flowgate's own clock signed it: no leeway.
    if now >= exp {
        return Err(AuthnError::Expired);
    }
    if number("nbf").is_some_and(|nbf| nbf > now + 1) {
        return Err(AuthnError::NotYetValid);
    }
    if text("token_use") != Some(WORKER_USE) {
        return Err(AuthnError::ClaimMismatch {
            claim: "token_use".into(),
            found: text("token_use").unwrap_or_default().to_owned(),
        });
    }
    worker_principal(&config.name, &config.issuer, claims, UNIX_EPOCH + Duration::from_secs(exp))
}
