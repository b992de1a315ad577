//! The token endpoint (RFC 8693 token exchange), the JWKS and the discovery document, served
//! on the gateway's own listener next to gRPC.
//!
//! One exchange goes through the same phases as a gRPC call: **authenticate** the subject
//! token (any configured issuer, or flowgate's own credential for a refresh), **inspect** the
//! requested scope, **authorize** with Cedar (`IssueCredential` on the namespace, the scope in
//! the context), consume the subject token (single use), **record** the decision, and only
//! then **mint**. Every refusal is an RFC 6749 error object, and is recorded too.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::replay::{replay_key, signed_part};
use super::{DISCOVERY_PATH, Grant, JWKS_PATH, TOKEN_ENDPOINT, TokenEndpoint};
use crate::audit::{self, ClientRecord, DecisionRecord, PrincipalRecord, ResourceRecord, ShadowRecord};
use crate::authn::Principal;
use crate::authz::{Decision, ISSUE_CREDENTIAL, PolicyEngine};
use crate::proxy::ResponseBody;
use crate::traceparent::TraceParent;
use crate::traces::{KeyValue, SpanKind};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const SUBJECT_TOKEN_TYPES: [&str; 3] =
    [TOKEN_TYPE_JWT, "urn:ietf:params:oauth:token-type:access_token", "urn:ietf:params:oauth:token-type:id_token"];
/// How long the form may take to arrive once the request headers have.
const FORM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Form bodies are a few KiB (one JWT); anything much larger is not a token request.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// A refused exchange: the OAuth error code, its description and the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeError {
    pub code: &'static str,
    pub description: String,
    pub http: http::StatusCode,
}

fn refuse(code: &'static str, description: impl Into<String>) -> ExchangeError {
    let http = match code {
        "temporarily_unavailable" => http::StatusCode::SERVICE_UNAVAILABLE,
        "method_not_allowed" => http::StatusCode::METHOD_NOT_ALLOWED,
        _ => http::StatusCode::BAD_REQUEST,
    };
    ExchangeError {
        code: if code == "method_not_allowed" { "invalid_request" } else { code },
        description: description.into(),
        http,
    }
}

fn json_response(status: http::StatusCode, body: serde_json::Value) -> http::Response<ResponseBody> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(ResponseBody::full(body.to_string()))
        .expect("static headers are valid")
}

fn error_response(error: &ExchangeError) -> http::Response<ResponseBody> {
    json_response(error.http, json!({"error": error.code, "error_description": error.description}))
}

/// Is this request for the token endpoint, JWKS or discovery (rather than gRPC)?
pub fn is_oauth_path(path: &str) -> bool {
    path == TOKEN_ENDPOINT || path == JWKS_PATH || path == DISCOVERY_PATH
}

/// Serves the token endpoint, JWKS and discovery.
pub async fn serve(
    endpoint: &TokenEndpoint,
    request: http::Request<Incoming>,
    client: SocketAddr,
) -> http::Response<ResponseBody> {
    match (request.method(), request.uri().path()) {
        (&http::Method::GET, JWKS_PATH) => json_response(http::StatusCode::OK, endpoint.minter.jwks()),
        (&http::Method::GET, DISCOVERY_PATH) => json_response(http::StatusCode::OK, endpoint.minter.discovery()),
        (&http::Method::POST, TOKEN_ENDPOINT) => exchange(endpoint, request, client).await,
        _ => error_response(&refuse("method_not_allowed", "use POST for the token endpoint and GET for keys")),
    }
}

/// What the phases found out, for the record.
#[derive(Default)]
struct Exchange {
    principal: Option<std::sync::Arc<Principal>>,
    grant: Option<Grant>,
    scope: Option<String>,
    reasons: Vec<String>,
    errors: Vec<String>,
    /// The enforced decision and, with a shadow set loaded, the shadow set and its decision.
    decision: Option<Decision>,
    shadow: Option<(std::sync::Arc<PolicyEngine>, Decision)>,
}

async fn exchange(
    endpoint: &TokenEndpoint,
    request: http::Request<Incoming>,
    client: SocketAddr,
) -> http::Response<ResponseBody> {
    let started = Instant::now();
    let policies = endpoint.policies.enforced();
    let client_name = request.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let span = endpoint.traces.operation("token exchange", SpanKind::Server, Some(request.headers()));
    let trace_id = span.trace_id().or_else(|| {
        request.headers().get("traceparent").and_then(|v| TraceParent::parse(v.as_bytes())).map(|t| t.trace_id)
    });
    let mut found = Exchange::default();
    let outcome = decide(endpoint, &policies, request, &mut found).await;
    span.annotate(|| {
        let mut attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.path", TOKEN_ENDPOINT),
            KeyValue::new("flowgate.decision", if outcome.is_ok() { "allow" } else { "deny" }),
        ];
        if let Some(principal) = &found.principal {
            attributes.push(KeyValue::new("enduser.id", principal.id.clone()));
        }
        if let Err(error) = &outcome {
            attributes.push(KeyValue::new("flowgate.error", error.code));
        }
        attributes
    });

    // Record, before a credential exists.
    let (decision, status, reasons) = match &outcome {
        Ok(_) => ("allow", None, found.reasons.clone()),
        Err(error) => {
            let mut reasons = found.reasons.clone();
            reasons.push(format!("{}: {}", error.code, error.description));
            ("deny", Some(error.http.as_u16()), reasons)
        }
    };
    let record = DecisionRecord {
        ts: audit::timestamp(SystemTime::now()),
        decision_id: audit::decision_id(),
        kind: "token_exchange",
        decision,
        reasons: reasons.into(),
        errors: found.errors.clone().into(),
        principal: found.principal.as_ref().map(|p| PrincipalRecord {
            kind: p.kind.entity_type(),
            id: &p.id,
            issuer: &p.issuer,
            identity: None,
            snapshot: None,
        }),
        action: ISSUE_CREDENTIAL,
        method: TOKEN_ENDPOINT,
        resource: found.grant.as_ref().map(|grant| ResourceRecord {
            kind: "Namespace",
            namespace: Some(&grant.namespace),
            ..ResourceRecord::default()
        }),
        client: ClientRecord { addr: client.to_string(), name: client_name.as_deref(), version: None },
        policy_version: policies.version(),
        latency_us: started.elapsed().as_micros() as u64,
        status,
        refused_by: None,
        unasked_questions: 0,
        scope: found.scope.as_deref(),
        shadow: match (&found.decision, &found.shadow) {
            (Some(enforced), Some((engine, shadow))) => ShadowRecord::of(enforced, shadow, engine),
            _ => None,
        },
        questions: Vec::new(),
        rate_limit: None,
        trace_id,
        http: None,
    };
    span.annotate(|| vec![KeyValue::new("flowgate.decision_id", record.decision_id.clone())]);
    if let Err(error) = endpoint.log.write(&record).await {
        endpoint.metrics.decision_log_failed();
        endpoint.metrics.token_exchange("temporarily_unavailable");
        return error_response(&refuse("temporarily_unavailable", error.to_string()));
    }

    match outcome {
        Ok(()) => {
            let principal = found.principal.expect("an allowed exchange has a principal");
            let grant = found.grant.expect("an allowed exchange has a grant");
            let minted = endpoint.minter.mint_worker(&principal, &grant, SystemTime::now());
            endpoint.metrics.token_exchange("issued");
            json_response(
                http::StatusCode::OK,
                json!({
                    "access_token": minted.token,
                    "issued_token_type": TOKEN_TYPE_JWT,
                    "token_type": "Bearer",
                    "expires_in": minted.expires_in,
                    "scope": grant.scope(),
                }),
            )
        }
        Err(error) => {
            endpoint.metrics.token_exchange(error.code);
            error_response(&error)
        }
    }
}

async fn decide(
    endpoint: &TokenEndpoint,
    policies: &PolicyEngine,
    request: http::Request<Incoming>,
    found: &mut Exchange,
) -> Result<(), ExchangeError> {
    let is_form = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or_default().trim() == "application/x-www-form-urlencoded");
    if !is_form {
        return Err(refuse("invalid_request", "the body must be `application/x-www-form-urlencoded`"));
    }
    // A form is a few KiB: one that trickles in holds a stream and a connection, so it gets the
    // same bound as a gRPC call's first message.
    let read = Limited::new(request.into_body(), MAX_FORM_BYTES).collect();
    let body = match tokio::time::timeout(FORM_TIMEOUT, read).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(_)) => {
            return Err(refuse("invalid_request", format!("the body is over {MAX_FORM_BYTES} bytes or broken")));
        }
        Err(_) => return Err(refuse("invalid_request", "the body did not arrive within 10s")),
    };
    let form = Form::parse(&body)?;

    // Inspect what is asked for.
    if form.get("grant_type")? != Some(GRANT_TYPE) {
        return Err(refuse("unsupported_grant_type", format!("`grant_type` must be `{GRANT_TYPE}`")));
    }
    let subject_token =
        form.get("subject_token")?.ok_or_else(|| refuse("invalid_request", "`subject_token` is missing"))?;
    match form.get("subject_token_type")? {
        Some(kind) if SUBJECT_TOKEN_TYPES.contains(&kind) => {}
        Some(kind) => return Err(refuse("invalid_request", format!("unsupported `subject_token_type` `{kind}`"))),
        None => return Err(refuse("invalid_request", "`subject_token_type` is missing")),
    }
    if let Some(kind) = form.get("requested_token_type")?
        && kind != TOKEN_TYPE_JWT
        && kind != "urn:ietf:params:oauth:token-type:access_token"
    {
        return Err(refuse("invalid_request", format!("cannot issue `requested_token_type` `{kind}`")));
    }
    for unsupported in ["actor_token", "resource"] {
        if form.get(unsupported)?.is_some() {
            return Err(refuse("invalid_request", format!("`{unsupported}` is not supported")));
        }
    }
    if let Some(audience) = form.get("audience")?
        && audience != endpoint.minter.signer.config.audience
    {
        return Err(refuse(
            "invalid_target",
            format!("credentials are only issued for audience `{}`", endpoint.minter.signer.config.audience),
        ));
    }
    let scope = form.get("scope")?.ok_or_else(|| refuse("invalid_scope", "`scope` is missing"))?;
    found.scope = Some(scope.to_owned());
    let grant = Grant::parse_scope(scope).map_err(|e| refuse("invalid_scope", e.to_string()))?;
    found.grant = Some(grant.clone());

    // Authenticate the subject token: full verification, never the call cache (a token may be
    // exchanged once, so caching it would only ever help a replay).
    let principal = match endpoint.authn.verify(subject_token).await {
        Ok(principal) => std::sync::Arc::new(principal),
        Err(error) => return Err(refuse("invalid_grant", format!("unauthenticated: {error}"))),
    };
    found.principal = Some(principal.clone());
    if let Some(held) = &principal.minted {
        if !grant.within(&held.grant) {
            return Err(refuse(
                "invalid_scope",
                format!("`{}` is wider than the credential being exchanged (`{}`)", grant.scope(), held.grant.scope()),
            ));
        }
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if now + 5 >= held.session_expires {
            return Err(refuse("invalid_grant", "the session has reached `mint.max_session`: exchange a new CI token"));
        }
    }

    // Authorize.
    let decision = policies.authorize_credential(
        &principal,
        &grant.namespace,
        grant.role.as_str(),
        &grant.task_queues,
        &grant.workflow_types,
    );
    found.reasons = decision.reasons.clone();
    found.errors = decision.errors.clone();
    if let Some(shadow) = endpoint.policies.shadow() {
        let shadow_decision = shadow.authorize_credential(
            &principal,
            &grant.namespace,
            grant.role.as_str(),
            &grant.task_queues,
            &grant.workflow_types,
        );
        endpoint.metrics.shadow_compared(ISSUE_CREDENTIAL, decision.allowed, shadow_decision.allowed);
        found.shadow = Some((shadow, shadow_decision));
    }
    found.decision = Some(decision.clone());
    if !decision.allowed {
        let because = if decision.reasons.is_empty() {
            "no policy permits it".to_owned()
        } else {
            format!(
                "forbidden by policy {}",
                decision.reasons.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
            )
        };
        return Err(refuse(
            "unauthorized_client",
            format!("`{ISSUE_CREDENTIAL}` of `{}` for `{}` is denied: {because}", grant.scope(), principal.id),
        ));
    }

    // Single use: consumed only by an exchange that would otherwise succeed.
    let (iss, jti) = token_identity(subject_token);
    let key = replay_key(&iss, jti.as_deref(), signed_part(subject_token));
    match endpoint.minter.replay.first_use(&key, principal.expires_at).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(refuse("invalid_grant", "the subject token was already exchanged (tokens are single-use)")),
        Err(error) => Err(refuse("temporarily_unavailable", error.to_string())),
    }
}

/// `iss` and `jti` of an already verified token.
fn token_identity(token: &str) -> (String, Option<String>) {
    use base64::Engine;
    let claims: serde_json::Map<String, serde_json::Value> = token
        .split('.')
        .nth(1)
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    (text("iss").unwrap_or_default(), text("jti").filter(|jti| !jti.is_empty()))
}

/// A form body where every parameter appears at most once (RFC 6749 §3.2).
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &Bytes) -> Result<Form, ExchangeError> {
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        Ok(Form(pairs))
    }

    fn get(&self, name: &str) -> Result<Option<&str>, ExchangeError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(refuse("invalid_request", format!("`{name}` is given more than once")));
        }
        Ok(first.filter(|v| !v.is_empty()))
    }
}
