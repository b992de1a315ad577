//! Credentials flowgate mints: short-lived ES256 JWTs for workers, in exchange for CI tokens.
//!
//! A CI job or workload presents its provider's OIDC token at the token endpoint (RFC 8693,
//! [`exchange`]) and asks for a scope: `namespace:<ns> role:<read|write|worker>
//! [task_queue:<q>…] [workflow_type:<t>…]`. Cedar decides `IssueCredential` on that namespace;
//! if allowed, flowgate signs a credential that lives minutes ([`Minter::mint_worker`]) with
//! Temporal's own `permissions` claim, so Temporal's JWT authorizer accepts it too.
//!
//! Presented back to flowgate, a credential is a `Temporal::Worker` principal whose
//! [`Grant`] is enforced on every call before policies are asked ([`Grant::check`]). A
//! still-valid credential can be exchanged for the next one with the same or a narrower scope,
//! up to `mint.max_session` after the original exchange: that is how a long-running worker
//! refreshes without a new CI token (subject tokens are single-use, [`replay`]).
//!
//! Signatures are normalized to low-s when signed, and a high-s credential is refused: the
//! twin `(r, n - s)` of a credential verifies too, but flowgate never made it
//! ([`crate::authn::ecdsa`]).
//!
//! With `upstream.credentials = "minted"`, flowgate also signs, per principal, namespace and
//! access class, the credential it sends Temporal ([`Minter::upstream_credential`]), so a call
//! that bypasses flowgate has no credential Temporal accepts.

pub mod exchange;
pub mod keys;
pub mod replay;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Map, Value, json};

use self::keys::{KeyError, KeySet};
use self::replay::ReplayCache;
use crate::authn::principal::{self, Principal};
use crate::authn::{AuthnError, MINTED_TOKEN_TYPE};
use crate::config::{MintConfig, PrincipalKind};
use crate::temporal::catalog::{Access, MethodSpec};
use crate::temporal::{Call, ResourceKind};

/// Where the token endpoint listens (also the `method` of its decision records).
pub const TOKEN_ENDPOINT: &str = "/oauth2/token";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// `token_use` of credentials handed to workers, and of those flowgate sends Temporal.
const WORKER_USE: &str = "worker";
const UPSTREAM_USE: &str = "upstream";

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

    fn parse(text: &str) -> Option<Role> {
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
    fn covers(self, access: Access) -> bool {
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
    fn temporal_permission(self) -> &'static str {
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

    /// Is this call inside the grant? The message says what is outside.
    pub fn check(&self, spec: &MethodSpec, call: &Call) -> Result<(), String> {
        let resource = &call.resource;
        if resource.kind == ResourceKind::Cluster {
            return Err(format!(
                "`{}` is cluster-wide; the credential is for namespace `{}`",
                spec.name, self.namespace
            ));
        }
        if resource.namespace.as_deref() != Some(self.namespace.as_str()) {
            // Named by id: the caller is told about its id, not the name it resolved to.
            if let Some(id) = &call.namespace_id {
                return Err(format!("namespace id `{id}` is outside the credential's namespace `{}`", self.namespace));
            }
            return Err(format!(
                "namespace `{}` is outside the credential's namespace `{}`",
                resource.namespace.as_deref().unwrap_or_default(),
                self.namespace
            ));
        }
        if !self.role.covers(spec.access) {
            return Err(format!("`{}` is outside the credential's role `{}`", spec.name, self.role.as_str()));
        }
        if !self.task_queues.is_empty() {
            if resource.kind == ResourceKind::NexusEndpoint {
                return Err(format!(
                    "`{}` calls Nexus endpoint `{}`, whose queue is not named; a credential limited to task queues cannot call Nexus endpoints",
                    spec.name,
                    resource.endpoint.as_deref().unwrap_or_default()
                ));
            }
            match &resource.task_queue {
                Some(queue) if !self.task_queues.contains(queue) => {
                    return Err(format!("task queue `{queue}` is outside the credential's task queues"));
                }
                None if resource.kind == ResourceKind::TaskQueue => {
                    return Err(format!("`{}` names no task queue; the credential is for named ones", spec.name));
                }
                _ => {}
            }
        }
        let limited = !self.task_queues.is_empty() || !self.workflow_types.is_empty();
        // A write on the namespace itself (a batch terminate, signal or reset; a workflow rule;
        // a deployment's current version) reaches every workflow of it, whatever its queue or
        // type: a grant limited to those cannot allow it. A worker's namespace-level calls
        // (responses by task token, heartbeats) act on its own tasks and stay open.
        if limited && resource.kind == ResourceKind::Namespace && spec.access == Access::Write {
            return Err(format!(
                "`{}` acts on the whole namespace; a credential limited to task queues or workflow types cannot",
                spec.name
            ));
        }
        // A call that acts on a workflow by id names neither its queue nor its type, so a grant
        // limited to those cannot tell whether the workflow is inside it: refused (fail closed).
        // The same for a schedule named by id alone (patching it triggers or backfills its
        // action). Reads stay open: every role may read its namespace.
        if matches!(resource.kind, ResourceKind::Workflow | ResourceKind::Schedule) && spec.access != Access::Read {
            let named = if resource.kind == ResourceKind::Schedule { "schedule" } else { "workflow" };
            if !self.task_queues.is_empty() && resource.task_queue.is_none() {
                return Err(format!(
                    "`{}` names a {} but not its task queue; a credential limited to task queues cannot act on workflows by id",
                    spec.name, named
                ));
            }
            if !self.workflow_types.is_empty() && resource.workflow_type.is_none() {
                return Err(format!(
                    "`{}` names a {} but not its type; a credential limited to workflow types can only start workflows",
                    spec.name, named
                ));
            }
        }
        if let Some(workflow_type) = &resource.workflow_type
            && !self.workflow_types.is_empty()
            && !self.workflow_types.contains(workflow_type)
        {
            return Err(format!("workflow type `{workflow_type}` is outside the credential's workflow types"));
        }
        Ok(())
    }
}

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

/// Signs and verifies flowgate's credentials.
pub struct Minter {
    pub config: MintConfig,
    keys: ArcSwap<KeySet>,
    pub replay: ReplayCache,
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Minter {
    pub fn new(config: &MintConfig, replay: ReplayCache) -> Result<Minter, KeyError> {
        let keys = KeySet::load(&config.key_dir, config.key_publish_ahead, config.credential_lifetime)?;
        Ok(Minter { config: config.clone(), keys: ArcSwap::from_pointee(keys), replay })
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
        let minter = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(minter.config.key_reload) => {
                        let minter = minter.clone();
                        let _ = tokio::task::spawn_blocking(move || minter.reload_keys()).await;
                    }
                    _ = shutdown.wait() => return,
                }
            }
        });
    }

    pub fn jwks(&self) -> Value {
        self.keys.load().jwks(SystemTime::now())
    }

    pub fn discovery(&self) -> Value {
        let issuer = &self.config.issuer;
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

    fn sign(&self, claims: &Value, now: SystemTime) -> String {
        let keys = self.keys.load();
        let key = keys.signing_key(now);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        header.typ = Some(MINTED_TOKEN_TYPE.to_owned());
        let token =
            jsonwebtoken::encode(&header, claims, &key.encoding).expect("ES256 signing with a loaded key cannot fail");
        // aws-lc-rs leaves `s` high half of the time; flowgate accepts only low-s credentials.
        crate::authn::ecdsa::normalize_token(Algorithm::ES256, token)
    }

    /// A worker credential for `grant`, on behalf of `subject` (or continuing `previous`'s chain).
    pub fn mint_worker(&self, subject: &Principal, grant: &Grant, now: SystemTime) -> Minted {
        let iat = unix(now);
        let (sub, act, session_expires) = match &subject.minted {
            Some(previous) => (previous.sub.clone(), previous.act.clone(), previous.session_expires),
            None => (
                subject.id.clone(),
                json!({"sub": subject.sub, "iss": subject.issuer_url, "issuer": subject.issuer, "type": subject.kind.entity_type()}),
                iat + self.config.max_session.as_secs(),
            ),
        };
        let exp = (iat + self.config.credential_lifetime.as_secs()).min(session_expires);
        let claims = json!({
            "iss": self.config.issuer,
            "aud": self.config.audience,
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
        Minted { token: self.sign(&claims, now), expires_in: exp.saturating_sub(iat), expires_at: exp }
    }

    /// The credential flowgate sends Temporal for a call: `permissions` for exactly the call's
    /// namespace and access class. Cached in the principal and reused until a third of its
    /// life is left.
    pub fn upstream_credential(&self, principal: &Principal, spec: &MethodSpec, call: &Call) -> Arc<str> {
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
        principal.upstream_credentials.get_or_insert(&permission, now, || {
            let iat = unix(now);
            let exp = iat + lifetime.as_secs();
            let claims = json!({
                "iss": self.config.issuer,
                "aud": self.config.audience,
                "sub": principal.id,
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

    /// Verifies one of flowgate's own worker credentials.
    pub fn verify(&self, token: &str, header: &Map<String, Value>) -> Result<Principal, AuthnError> {
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(AuthnError::AlgorithmNotAccepted {
                alg: header.get("alg").and_then(Value::as_str).unwrap_or_default().to_owned(),
                issuer: self.config.name.clone(),
            });
        }
        // flowgate signs low-s only, so a high-s credential is a twin somebody else made.
        crate::authn::check_low_s(Algorithm::ES256, token, &self.config.name)?;
        let kid = match header.get("kid") {
            Some(Value::String(kid)) if !kid.is_empty() => kid.as_str(),
            _ => return Err(AuthnError::MissingKid),
        };
        let now = SystemTime::now();
        let keys = self.keys.load();
        let key = keys
            .verifying_key(kid, now)
            .ok_or_else(|| AuthnError::Keys(format!("signing key `{kid}` is not one of flowgate's published keys")))?;
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|_| AuthnError::BadSignature)?
            .claims;
        let now = unix(now);
        let number = |name: &str| claims.get(name).and_then(Value::as_u64);
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if text("iss") != Some(self.config.issuer.as_str()) {
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
        worker_principal(&self.config.name, &self.config.issuer, &claims, UNIX_EPOCH + Duration::from_secs(exp))
    }

    pub fn is_own(&self, iss: &str) -> bool {
        iss == self.config.issuer
    }
}

/// Decodes the header of a JWT without verifying anything.
pub fn unverified_header(token: &str) -> Option<Map<String, Value>> {
    let header = token.split('.').next()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temporal::Resource;
    use crate::temporal::catalog::lookup;

    fn call(namespace: &str, queue: Option<&str>, workflow_type: Option<&str>) -> Call {
        Call::new(Resource {
            kind: if queue.is_some() { ResourceKind::TaskQueue } else { ResourceKind::Workflow },
            namespace: Some(namespace.into()),
            workflow_id: None,
            workflow_type: workflow_type.map(Into::into),
            task_queue: queue.map(Into::into),
            schedule_id: None,
            endpoint: None,
        })
    }

    fn spec(method: &str) -> &'static MethodSpec {
        lookup(&format!("/temporal.api.workflowservice.v1.WorkflowService/{method}"))
    }

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
    fn a_grant_limits_namespace_role_queues_and_types() {
        let grant = Grant::parse_scope("namespace:payments role:worker task_queue:deploys").unwrap();
        assert!(grant.check(spec("PollActivityTaskQueue"), &call("payments", Some("deploys"), None)).is_ok());
        assert!(grant.check(spec("DescribeNamespace"), &call("payments", None, None)).is_ok(), "reads are in");
        let err = grant.check(spec("PollActivityTaskQueue"), &call("payments", Some("other"), None)).unwrap_err();
        assert!(err.contains("task queue `other`"), "{err}");
        let err = grant.check(spec("PollActivityTaskQueue"), &call("billing", Some("deploys"), None)).unwrap_err();
        assert!(err.contains("namespace `billing`"), "{err}");
        let err = grant.check(spec("StartWorkflowExecution"), &call("payments", None, Some("X"))).unwrap_err();
        assert!(err.contains("role `worker`"), "{err}");
        let writer = Grant::parse_scope("namespace:payments role:write workflow_type:Deploy").unwrap();
        assert!(writer.check(spec("StartWorkflowExecution"), &call("payments", None, Some("Deploy"))).is_ok());
        let err = writer.check(spec("StartWorkflowExecution"), &call("payments", None, Some("Drop"))).unwrap_err();
        assert!(err.contains("workflow type `Drop`"), "{err}");
        let err = writer.check(spec("PollActivityTaskQueue"), &call("payments", Some("q"), None)).unwrap_err();
        assert!(err.contains("role `write`"), "{err}");
        // By-id calls name neither queue nor type: a limited grant refuses them.
        let err = writer.check(spec("SignalWorkflowExecution"), &call("payments", None, None)).unwrap_err();
        assert!(err.contains("only start workflows"), "{err}");
        let err = grant.check(spec("RespondActivityTaskCompletedById"), &call("payments", None, None)).unwrap_err();
        assert!(err.contains("cannot act on workflows by id"), "{err}");
        assert!(grant.check(spec("DescribeWorkflowExecution"), &call("payments", None, None)).is_ok(), "reads stay");
    }

    #[test]
    fn a_limited_grant_refuses_writes_that_reach_the_whole_namespace() {
        let namespace =
            |name: &str| Call::new(Resource { namespace: Some(name.into()), ..Resource::new(ResourceKind::Namespace) });
        let schedule = |id: &str| {
            Call::new(Resource {
                namespace: Some("payments".into()),
                schedule_id: Some(id.into()),
                ..Resource::new(ResourceKind::Schedule)
            })
        };
        for scope in
            ["namespace:payments role:write task_queue:deploys", "namespace:payments role:write workflow_type:Deploy"]
        {
            let grant = Grant::parse_scope(scope).unwrap();
            // A batch terminate, signal or reset reaches every workflow of the namespace, whatever
            // its queue or type; so do workflow rules and deployment changes.
            for method in ["StartBatchOperation", "CreateWorkflowRule", "SetWorkerDeploymentCurrentVersion"] {
                let err = grant.check(spec(method), &namespace("payments")).unwrap_err();
                assert!(err.contains("whole namespace"), "{scope}: {method}: {err}");
            }
            // A schedule named by id alone (patch: trigger or backfill its action; delete) names
            // neither the queue nor the type of the workflows it starts.
            for method in ["PatchSchedule", "DeleteSchedule"] {
                assert!(grant.check(spec(method), &schedule("nightly-drop-tables")).is_err(), "{scope}: {method}");
            }
            // Reads of the namespace and its schedules stay open.
            assert!(grant.check(spec("ListWorkflowExecutions"), &namespace("payments")).is_ok());
            assert!(grant.check(spec("DescribeSchedule"), &schedule("s")).is_ok());
        }
        // A worker's own namespace-level calls (responses by task token, heartbeats) stay open.
        let worker = Grant::parse_scope("namespace:payments role:worker task_queue:deploys").unwrap();
        assert!(worker.check(spec("RespondActivityTaskCompleted"), &namespace("payments")).is_ok());
        assert!(worker.check(spec("RecordWorkerHeartbeat"), &namespace("payments")).is_ok());
        // An unlimited writer of the namespace may still start batches.
        let writer = Grant::parse_scope("namespace:payments role:write").unwrap();
        assert!(writer.check(spec("StartBatchOperation"), &namespace("payments")).is_ok());
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
