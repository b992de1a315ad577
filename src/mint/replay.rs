//! Single use of subject tokens: each `(iss, jti)` may be exchanged once until it expires.
//!
//! Tokens without a `jti` (Bitbucket, Kubernetes) are known by the SHA-256 of their signed
//! part, `header.payload`, instead, so the same token still cannot be exchanged twice. Not by
//! the whole text: the signature is not unique to the token. An ECDSA signature `(r, s)` has a
//! twin `(r, n - s)` that anybody can compute and that verifies too (see
//! [`crate::ecdsa`]), and an issuer with `ecdsa_high_s = "accept"` takes both; RSA-PSS
//! and ECDSA signers can also sign the same claims twice with different signatures, which then
//! counts as one token too (the same `iat`, `exp` and claims are the same grant). The signed
//! part cannot change without the signature failing, so it names one token however it is
//! signed. The memory store serves one
//! gateway; with `replay.redis_url`, every replica asks the same Redis with an atomic
//! `SET key 1 NX PX <ms until the token expires>`, so two replicas never both accept one token.
//! When Redis cannot be reached, exchanges are refused (fail closed), never let through
//! unchecked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// How long one Redis round trip may take before the exchange is refused.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The replay store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("replay cache unavailable: {0}")]
pub struct ReplayUnavailable(pub String);

/// Where used subject tokens are remembered.
pub enum ReplayCache {
    Memory(Mutex<HashMap<String, SystemTime>>),
    Redis { client: redis::Client, connection: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>> },
}

/// The signed part of a compact JWS: `header.payload`, without the signature.
pub fn signed_part(token: &str) -> &str {
    token.rsplit_once('.').map_or(token, |(signed, _)| signed)
}

/// The key a subject token is remembered by: its `jti`, or without one its [`signed_part`].
pub fn replay_key(iss: &str, jti: Option<&str>, signed_part: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(iss.as_bytes());
    hasher.update([0]);
    match jti {
        Some(jti) => {
            hasher.update(b"jti\0");
            hasher.update(jti.as_bytes());
        }
        None => {
            hasher.update(b"signed\0");
            hasher.update(signed_part.as_bytes());
        }
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("flowgate:replay:{hex}")
}

impl ReplayCache {
    pub fn memory() -> ReplayCache {
        ReplayCache::Memory(Mutex::new(HashMap::new()))
    }

    /// A Redis-backed cache. Connects lazily, so the gateway starts while Redis is down.
    pub fn redis(url: &str) -> Result<ReplayCache, String> {
        let client = redis::Client::open(url).map_err(|e| format!("`replay.redis_url`: {e}"))?;
        Ok(ReplayCache::Redis { client, connection: tokio::sync::Mutex::new(None) })
    }

    /// Records the first use of `key` until `expires_at`. `Ok(false)` means it was used before.
    pub async fn first_use(&self, key: &str, expires_at: SystemTime) -> Result<bool, ReplayUnavailable> {
        let now = SystemTime::now();
        // Kept a little past expiry: a token within the verifier's leeway is still refused twice.
        let ttl = expires_at.duration_since(now).unwrap_or_default() + Duration::from_secs(120);
        match self {
            ReplayCache::Memory(seen) => {
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.len() > 10_000 {
                    seen.retain(|_, until| *until > now);
                }
                match seen.get(key) {
                    Some(until) if *until > now => Ok(false),
                    _ => {
                        seen.insert(key.to_owned(), now + ttl);
                        Ok(true)
                    }
                }
            }
            ReplayCache::Redis { client, connection } => {
                let attempt = async {
                    let mut slot = connection.lock().await;
                    if slot.is_none() {
                        let manager = redis::aio::ConnectionManager::new(client.clone())
                            .await
                            .map_err(|e| ReplayUnavailable(e.to_string()))?;
                        *slot = Some(manager);
                    }
                    let mut manager = slot.as_ref().expect("connected above").clone();
                    drop(slot);
                    let reply: Option<String> = redis::cmd("SET")
                        .arg(key)
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .query_async(&mut manager)
                        .await
                        .map_err(|e| ReplayUnavailable(e.to_string()))?;
                    Ok(reply.is_some())
                };
                match tokio::time::timeout(REDIS_TIMEOUT, attempt).await {
                    Ok(result) => result,
                    Err(_) => Err(ReplayUnavailable(format!("no answer within {REDIS_TIMEOUT:?}"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_accepted_once_until_it_expires() {
        let cache = ReplayCache::memory();
        let key = replay_key("https://idp", Some("j1"), "t");
        let expires = SystemTime::now() + Duration::from_secs(60);
        assert!(cache.first_use(&key, expires).await.unwrap());
        assert!(!cache.first_use(&key, expires).await.unwrap());
        assert!(cache.first_use(&replay_key("https://idp", Some("j2"), "t"), expires).await.unwrap());
    }

    #[test]
    fn without_jti_a_token_is_known_by_its_signed_part_not_its_signature() {
        let (one, twin) = ("h.p.c2lnbmF0dXJl", "h.p.dHdpbg");
        assert_eq!(signed_part(one), "h.p");
        assert_eq!(replay_key("a", None, signed_part(one)), replay_key("a", None, signed_part(twin)));
        assert_ne!(replay_key("a", None, signed_part(one)), replay_key("a", None, signed_part("h.q.c2ln")));
    }

    #[test]
    fn keys_separate_issuers_and_fall_back_to_the_token() {
        assert_ne!(replay_key("a", Some("j"), "t"), replay_key("b", Some("j"), "t"));
        assert_ne!(replay_key("a", None, "t1"), replay_key("a", None, "t2"));
        assert_ne!(replay_key("a", Some("t"), "x"), replay_key("a", None, "t"));
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_closed() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cache = ReplayCache::redis(&format!("redis://127.0.0.1:{port}/")).unwrap();
        let err = cache.first_use("k", SystemTime::now() + Duration::from_secs(60)).await.unwrap_err();
        assert!(err.to_string().starts_with("replay cache unavailable"), "{err}");
    }
}
