//! Sessions: what flowgate keeps for one verified token while it lives.
//!
//! A session is a verified [`Principal`] together with what the gateway learns about it call
//! after call: the decisions Cedar made for it (one cache for the enforced policy set, one for
//! the shadow set) and the credentials minted for Temporal on its behalf
//! (`upstream.credentials = "minted"`). It is created when a token is first verified and
//! dropped when the token expires or leaves the cache, so none of this outlives the token, and
//! nothing of one token is ever served to another (the cache is keyed by the token's text).
//!
//! **Why this is its own layer.** The principal is `authn`'s, the decision cache `authz`'s,
//! the credential cache `credential`'s. Keeping them together in `authn`'s principal made
//! `authn` import `authz`, and `authz` already imports `authn`. Here, above both, they are
//! composed instead: `authn` offers a generic verified-token cache ([`TokenCache`]) and knows
//! nothing of what is attached to a principal.
//!
//! **What a new token costs.** Verification (signature and claims, in `authn`), the principal
//! with its Cedar entities (built once, reused by every decision), two empty decision caches,
//! its identity stamp rendered (`identity`), the digest its decision records name it by, and the
//! cache insert. Everything after the verification is meant to cost less than it
//! (`benches/coldpath.rs` measures both).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use crate::authn::{Authenticator, AuthnError, Expires, Principal, TokenCache, bearer};
use crate::authz::DecisionCache;
use crate::credential::CredentialCache;
use crate::identity::{PrincipalStamp, Stamper};
use crate::telemetry::Metrics;

/// A verified principal and what is kept for it until its token expires.
#[derive(Debug)]
pub struct Session {
    pub principal: Principal,
    /// Decisions of the enforced policy set.
    pub decisions: DecisionCache,
    /// Decisions of the shadow policy set, if one is configured.
    pub shadow_decisions: DecisionCache,
    /// Credentials minted for Temporal on this principal's behalf.
    pub upstream_credentials: CredentialCache,
    /// What its requests say in its name in Temporal's history (`identity`, the initiator header).
    pub stamp: PrincipalStamp,
    /// How its decision records name the principal snapshot they can be decided again with
    /// (`principal.ref`): a digest of everything policies see of the principal.
    pub snapshot_ref: String,
    /// The decision log's generation (it changes when the log is reopened) its snapshot was
    /// last written in; 0 before the first.
    pub snapshot_written: AtomicU64,
}

impl Session {
    pub fn new(principal: Principal, stamp: PrincipalStamp) -> Session {
        let seen = (
            principal.kind.entity_type(),
            &principal.id,
            &principal.issuer,
            &principal.sub,
            &principal.groups,
            &principal.tags,
        );
        let digest = serde_json::to_vec(&seen).unwrap_or_default();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &digest);
        let snapshot_ref = digest.as_ref()[..8].iter().map(|byte| format!("{byte:02x}")).collect();
        Session {
            principal,
            decisions: DecisionCache::default(),
            shadow_decisions: DecisionCache::default(),
            upstream_credentials: CredentialCache::default(),
            stamp,
            snapshot_ref,
            snapshot_written: AtomicU64::new(0),
        }
    }
}

impl Expires for Session {
    fn expires_at(&self) -> SystemTime {
        self.principal.expires_at
    }
}

/// Bearer tokens in, sessions out: the authenticator and the cache of what it verified.
pub struct Sessions {
    authn: Arc<Authenticator>,
    cache: TokenCache<Session>,
    stamper: Stamper,
    metrics: Arc<Metrics>,
}

impl Sessions {
    pub fn new(authn: Arc<Authenticator>, max_entries: usize, stamper: Stamper, metrics: Arc<Metrics>) -> Sessions {
        Sessions { authn, cache: TokenCache::new(max_entries), stamper, metrics }
    }

    /// How many verified tokens are cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// The session of the token in an `authorization` header: cached, or verified now.
    pub async fn authenticate(&self, header: Option<&http::HeaderValue>) -> Result<Arc<Session>, AuthnError> {
        let token = bearer(header)?;
        if let Some(session) = self.cache.get(token) {
            self.metrics.token_cache(true);
            return Ok(session);
        }
        self.metrics.token_cache(false);
        let principal = self.authn.verify(token).await?;
        let stamp = self.stamper.for_principal(&principal);
        let session = Arc::new(Session::new(principal, stamp));
        self.cache.insert(token, session.clone());
        Ok(session)
    }

    /// Drops expired sessions (called periodically).
    pub fn sweep(&self) {
        self.cache.sweep(SystemTime::now());
    }

    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.authn
    }
}
