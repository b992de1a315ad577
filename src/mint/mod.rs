//! The token endpoint: short-lived worker credentials in exchange for CI tokens.
//!
//! A CI job or workload presents its provider's OIDC token at the token endpoint (RFC 8693,
//! [`exchange`]) and asks for a scope: `namespace:<ns> role:<read|write|worker>
//! [task_queue:<q>…] [workflow_type:<t>…]`. Cedar decides `IssueCredential` on that namespace;
//! if allowed, flowgate signs a credential that lives minutes ([`Minter::mint_worker`]) with
//! Temporal's own `permissions` claim, so Temporal's JWT authorizer accepts it too.
//!
//! Presented back to flowgate, a credential is a `Temporal::Worker` principal (`authn::own`)
//! whose grant is enforced on every call before policies are asked (`authz::grant`). A
//! still-valid credential can be exchanged for the next one with the same or a narrower scope,
//! up to `mint.max_session` after the original exchange: that is how a long-running worker
//! refreshes without a new CI token (subject tokens are single-use, [`replay`]).
//!
//! This module sits above the gateway in the layers: it is a door of its own, routed by
//! `server` on the same listener, and reaches only what it needs through [`TokenEndpoint`]
//! (the authenticator, the policy sets, the decision log, the metrics). The credential format,
//! the keys and the signing are `credential`'s, shared with `authn` and the gateway.

pub mod exchange;
pub mod replay;

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Value, json};

use self::replay::ReplayCache;
use crate::audit::DecisionLog;
use crate::authn::{Authenticator, Principal};
pub use crate::credential::keys;
use crate::credential::unix;
pub use crate::credential::{
    DISCOVERY_PATH, Grant, JWKS_PATH, Minted, MintedGrant, Role, ScopeError, Signer, TOKEN_ENDPOINT, WORKER_USE,
};
use crate::reload::PolicySets;
use crate::telemetry::Metrics;

/// Mints worker credentials: the signer, and the single-use record of subject tokens.
pub struct Minter {
    pub signer: Arc<Signer>,
    pub replay: ReplayCache,
}

impl Minter {
    pub fn new(signer: Arc<Signer>, replay: ReplayCache) -> Minter {
        Minter { signer, replay }
    }

    pub fn jwks(&self) -> Value {
        self.signer.jwks()
    }

    pub fn discovery(&self) -> Value {
        let issuer = &self.signer.config.issuer;
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}{JWKS_PATH}"),
            "token_endpoint": format!("{issuer}{TOKEN_ENDPOINT}"),
            "grant_types_supported": [exchange::GRANT_TYPE],
            "token_endpoint_auth_methods_supported": ["none"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "scopes_supported": ["namespace:*", "role:read", "role:write", "role:worker", "task_queue:*", "workflow_type:*"],
        })
    }

    /// A worker credential for `grant`, on behalf of `subject` (or continuing `previous`'s chain).
    pub fn mint_worker(&self, subject: &Principal, grant: &Grant, now: SystemTime) -> Minted {
        let iat = unix(now);
        let (sub, act, session_expires) = match &subject.minted {
            Some(previous) => (previous.sub.clone(), previous.act.clone(), previous.session_expires),
            None => (
                subject.id.clone(),
                json!({"sub": subject.sub, "iss": subject.issuer_url, "issuer": subject.issuer, "type": subject.kind.entity_type()}),
                iat + self.signer.config.max_session.as_secs(),
            ),
        };
        let exp = (iat + self.signer.config.credential_lifetime.as_secs()).min(session_expires);
        let claims = json!({
            "iss": self.signer.config.issuer,
            "aud": self.signer.config.audience,
            "sub": sub,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": uuid::Uuid::now_v7().to_string(),
            "token_use": WORKER_USE,
            "act": act,
            "permissions": [format!("{}:{}", grant.namespace, grant.role.temporal_permission())],
            "namespace": grant.namespace,
            "role": grant.role.as_str(),
            "task_queues": grant.task_queues,
            "workflow_types": grant.workflow_types,
            "session_exp": session_expires,
        });
        Minted { token: self.signer.sign(&claims, now), expires_in: exp.saturating_sub(iat), expires_at: exp }
    }
}

/// What the token endpoint needs of the running gateway, and nothing more.
pub struct TokenEndpoint {
    pub minter: Arc<Minter>,
    pub authn: Arc<Authenticator>,
    pub policies: Arc<PolicySets>,
    pub log: DecisionLog,
    pub metrics: Arc<Metrics>,
    /// A span per exchange, continuing the client's `traceparent`.
    pub traces: Arc<crate::traces::Traces>,
}
