//! flowgate's own credentials: the format, the keys that sign them, and what they grant.
//!
//! flowgate is an issuer as well as a verifier. It signs short-lived ES256 JWTs for workers
//! (handed out by the token endpoint, `mint`) and, with `upstream.credentials = "minted"`, the
//! credential it sends Temporal for each call ([`Signer::upstream_credential`]). It also accepts
//! its worker credentials back, like any other issuer's tokens (`authn::own`).
//!
//! Both sides of that exchange need the same facts: the `typ` and `token_use` values, the claim
//! names, the scope grammar, the keys. They live here, below `authn`, so that authentication can
//! verify flowgate's own credentials without importing the token endpoint, and the gateway can
//! sign upstream credentials without it either. This module signs and publishes; it never
//! decides whether a credential should be issued (that is `mint`, asking Cedar) nor whether a
//! call is inside a grant (that is `authz::grant`).
//!
//! Signatures are normalized to low-s when signed: the twin `(r, n - s)` of a credential
//! verifies too, but flowgate never made it, and `authn` refuses it ([`crate::ecdsa`]).

pub mod keys;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};

use self::keys::{KeyError, KeySet, SigningKey};
use crate::config::MintConfig;
use crate::temporal::catalog::{Access, MethodSpec};
use crate::temporal::{Call, ResourceKind};

/// The `typ` of credentials flowgate mints: only flowgate's own issuer accepts it.
pub const MINTED_TOKEN_TYPE: &str = "flowgate-credential+jwt";

/// Where the token endpoint listens (also the `method` of its decision records).
pub const TOKEN_ENDPOINT: &str = "/oauth2/token";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// `token_use` of credentials handed to workers (the only ones flowgate accepts back), and of
/// those flowgate sends Temporal.
pub const WORKER_USE: &str = "worker";
pub const UPSTREAM_USE: &str = "upstream";

/// What a credential may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Worker => "worker",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }

    /// The access groups a role covers: everyone may read; `write` starts, signals and
    /// cancels; `worker` polls and responds, and its workflows' commands act (each within the
    /// grant's queues and types like any other call).
    pub fn covers(self, access: Access) -> bool {
        matches!(
            (self, access),
            (_, Access::Public | Access::Read)
                | (Role::Write, Access::Write)
                | (Role::Worker, Access::Worker | Access::Command)
        )
    }

    /// Is every call `self` allows also allowed by `other`?
    fn within(self, other: Role) -> bool {
        self == other || self == Role::Read
    }

    /// Temporal's own role for the same access (`worker` alone grants nothing there: workers
    /// need `write`).
    pub fn temporal_permission(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write | Role::Worker => "write",
        }
    }
}

/// The scope of a credential: one namespace, one role, optionally limited task queues and
/// workflow types (empty = any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub namespace: String,
    pub role: Role,
    pub task_queues: Vec<String>,
    pub workflow_types: Vec<String>,
}

/// Why a scope string is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope needs exactly one `namespace:<name>`")]
    Namespace,
    #[error("scope needs exactly one `role:<read|write|worker>`")]
    Role,
    #[error("unknown role `{0}` (read, write or worker)")]
    UnknownRole(String),
    #[error("unknown scope item `{0}`")]
    UnknownItem(String),
    #[error("scope item `{0}` has an empty value")]
    Empty(String),
}

impl Grant {
    /// Parses `namespace:payments role:worker task_queue:deploys …`.
    pub fn parse_scope(scope: &str) -> Result<Grant, ScopeError> {
        let (mut namespace, mut role) = (None, None);
        let (mut task_queues, mut workflow_types) = (Vec::new(), Vec::new());
        for item in scope.split_ascii_whitespace() {
            let Some((kind, value)) = item.split_once(':') else {
                return Err(ScopeError::UnknownItem(item.to_owned()));
            };
            if value.is_empty() {
                return Err(ScopeError::Empty(item.to_owned()));
            }
            match kind {
                "namespace" if namespace.is_none() => namespace = Some(value.to_owned()),
                "namespace" => return Err(ScopeError::Namespace),
                "role" if role.is_none() => {
                    role = Some(Role::parse(value).ok_or_else(|| ScopeError::UnknownRole(value.to_owned()))?)
                }
                "role" => return Err(ScopeError::Role),
                "task_queue" => task_queues.push(value.to_owned()),
                "workflow_type" => workflow_types.push(value.to_owned()),
                _ => return Err(ScopeError::UnknownItem(item.to_owned())),
            }
        }
        task_queues.sort();
        task_queues.dedup();
        workflow_types.sort();
        workflow_types.dedup();
        Ok(Grant {
            namespace: namespace.ok_or(ScopeError::Namespace)?,
            role: role.ok_or(ScopeError::Role)?,
            task_queues,
            workflow_types,
        })
    }

    /// The canonical scope string.
    pub fn scope(&self) -> String {
        let mut scope = format!("namespace:{} role:{}", self.namespace, self.role.as_str());
        for queue in &self.task_queues {
            scope.push_str(&format!(" task_queue:{queue}"));
        }
        for workflow_type in &self.workflow_types {
            scope.push_str(&format!(" workflow_type:{workflow_type}"));
        }
        scope
    }

    /// Does `self` ask for nothing more than `held`?
    pub fn within(&self, held: &Grant) -> bool {
        let narrower = |wanted: &[String], held: &[String]| {
            held.is_empty() || (!wanted.is_empty() && wanted.iter().all(|w| held.contains(w)))
        };
        self.namespace == held.namespace
            && self.role.within(held.role)
            && narrower(&self.task_queues, &held.task_queues)
            && narrower(&self.workflow_types, &held.workflow_types)
    }
}

/// What a verified flowgate credential carries besides the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedGrant {
    pub grant: Grant,
    /// The refresh chain ends here.
    pub session_expires: u64,
    /// The exchanged identity (RFC 8693 `act`).
    pub act: Value,
    /// `sub` of the credential: `<issuer name>:<sub>` of the original subject.
    pub sub: String,
}

/// A freshly signed credential.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub expires_in: u64,
    pub expires_at: u64,
}

/// A few minted upstream credentials of one principal, by Temporal permission, each reused
/// until its refresh time (kept with the principal's session, so they live as long as its token).
#[derive(Debug, Default)]
pub struct CredentialCache {
    entries: std::sync::Mutex<Vec<(String, Arc<str>, SystemTime)>>,
}

impl CredentialCache {
    /// The cached credential for `permission`, or a new one from `make` (token, refresh time).
    pub fn get_or_insert(
        &self,
        permission: &str,
        now: SystemTime,
        make: impl FnOnce() -> (Arc<str>, SystemTime),
    ) -> Arc<str> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, token, refresh_at)) = entries.iter().find(|(p, _, _)| p == permission)
            && *refresh_at > now
        {
            return token.clone();
        }
        let (token, refresh_at) = make();
        entries.retain(|(p, _, at)| p != permission && *at > now);
        entries.push((permission.to_owned(), token.clone(), refresh_at));
        token
    }
}

/// Signs flowgate's credentials with the key set of `mint.key_dir`, and publishes its keys.
pub struct Signer {
    pub config: MintConfig,
    keys: ArcSwap<KeySet>,
}

pub fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Signer {
    pub fn new(config: &MintConfig) -> Result<Signer, KeyError> {
        let keys = KeySet::load(&config.key_dir, config.key_publish_ahead, config.credential_lifetime)?;
        Ok(Signer { config: config.clone(), keys: ArcSwap::from_pointee(keys) })
    }

    /// Re-reads the key directory; on error the keys in use stay.
    pub fn reload_keys(&self) {
        match KeySet::load(&self.config.key_dir, self.config.key_publish_ahead, self.config.credential_lifetime) {
            Ok(keys) => self.keys.store(Arc::new(keys)),
            Err(error) => tracing::error!(%error, "cannot reload signing keys; keeping the current ones"),
        }
    }

    /// Re-reads keys every `mint.key_reload` until shutdown.
    pub fn spawn_key_reload(self: &Arc<Self>, mut shutdown: crate::shutdown::Signal) {
        let signer = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(signer.config.key_reload) => {
                        let signer = signer.clone();
                        let _ = tokio::task::spawn_blocking(move || signer.reload_keys()).await;
                    }
                    _ = shutdown.wait() => return,
                }
            }
        });
    }

    /// The published keys, as a JWKS document.
    pub fn jwks(&self) -> Value {
        self.keys.load().jwks(SystemTime::now())
    }

    /// The published key `kid`, if it may verify a credential at `now`.
    pub fn verifying_key(&self, kid: &str, now: SystemTime) -> Option<Arc<SigningKey>> {
        self.keys.load().verifying_key(kid, now).cloned()
    }

    /// Is `iss` flowgate's own issuer?
    pub fn is_own(&self, iss: &str) -> bool {
        iss == self.config.issuer
    }

    /// Signs `claims` with the key that signs at `now`, as a low-s ES256 JWT of flowgate's `typ`.
    pub fn sign(&self, claims: &Value, now: SystemTime) -> String {
        let keys = self.keys.load();
        let key = keys.signing_key(now);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        header.typ = Some(MINTED_TOKEN_TYPE.to_owned());
        let token =
            jsonwebtoken::encode(&header, claims, &key.encoding).expect("ES256 signing with a loaded key cannot fail");
        // aws-lc-rs leaves `s` high half of the time; flowgate accepts only low-s credentials.
        crate::ecdsa::normalize_token(Algorithm::ES256, token)
    }

    /// The credential flowgate sends Temporal for a call of principal `principal_id`:
    /// `permissions` for exactly the call's namespace and access class. Cached in `cache` (the
    /// principal's) and reused until a third of its life is left.
    pub fn upstream_credential(
        &self,
        principal_id: &str,
        cache: &CredentialCache,
        spec: &MethodSpec,
        call: &Call,
    ) -> Arc<str> {
        let permission = match (call.resource.kind, spec.access) {
            (ResourceKind::Cluster, Access::Read | Access::Public) => "temporal-system:read".to_owned(),
            (ResourceKind::Cluster, _) | (_, Access::ClusterAdmin | Access::Ungrouped) => {
                "temporal-system:admin".to_owned()
            }
            (_, access) => {
                let role = match access {
                    Access::Public | Access::Read => "read",
                    Access::Write | Access::Worker | Access::Command => "write",
                    Access::Admin => "admin",
                    Access::ClusterAdmin | Access::Ungrouped => unreachable!("matched above"),
                };
                // Temporal authorizes a request that names its namespace by id against no
                // namespace (it reads only `namespace`), so only a system role admits it. The
                // id was resolved and authorized by flowgate, and the request acts on it alone.
                let namespace = match &call.namespace_id {
                    Some(_) => "temporal-system",
                    None => call.resource.namespace.as_deref().unwrap_or_default(),
                };
                format!("{namespace}:{role}")
            }
        };
        let now = SystemTime::now();
        let lifetime = self.config.credential_lifetime;
        cache.get_or_insert(&permission, now, || {
            let iat = unix(now);
            let exp = iat + lifetime.as_secs();
            let claims = json!({
                "iss": self.config.issuer,
                "aud": self.config.audience,
                "sub": principal_id,
                "iat": iat,
                "nbf": iat,
                "exp": exp,
                "jti": uuid::Uuid::now_v7().to_string(),
                "token_use": UPSTREAM_USE,
                "permissions": [permission],
            });
            (Arc::from(self.sign(&claims, now)), now + lifetime * 2 / 3)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print_canonically() {
        let grant =
            Grant::parse_scope("role:worker  task_queue:b namespace:payments task_queue:a task_queue:a").unwrap();
        assert_eq!(grant.scope(), "namespace:payments role:worker task_queue:a task_queue:b");
        assert_eq!(Grant::parse_scope("role:read"), Err(ScopeError::Namespace));
        assert_eq!(Grant::parse_scope("namespace:a namespace:b role:read"), Err(ScopeError::Namespace));
        assert_eq!(Grant::parse_scope("namespace:a role:admin"), Err(ScopeError::UnknownRole("admin".into())));
        assert_eq!(Grant::parse_scope("namespace:a role:read openid"), Err(ScopeError::UnknownItem("openid".into())));
        assert_eq!(Grant::parse_scope("namespace: role:read"), Err(ScopeError::Empty("namespace:".into())));
    }

    #[test]
    fn a_refresh_may_narrow_but_never_widen() {
        let held = Grant::parse_scope("namespace:payments role:worker task_queue:a task_queue:b").unwrap();
        let same = Grant::parse_scope("namespace:payments role:worker task_queue:b task_queue:a").unwrap();
        assert!(same.within(&held));
        assert!(Grant::parse_scope("namespace:payments role:read task_queue:a").unwrap().within(&held));
        assert!(!Grant::parse_scope("namespace:payments role:worker").unwrap().within(&held), "any queue is wider");
        assert!(!Grant::parse_scope("namespace:payments role:write task_queue:a").unwrap().within(&held));
        assert!(!Grant::parse_scope("namespace:billing role:worker task_queue:a").unwrap().within(&held));
        assert!(!Grant::parse_scope("namespace:payments role:worker task_queue:c").unwrap().within(&held));
    }
}
