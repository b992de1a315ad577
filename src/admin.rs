//! The admin listener and the metrics it serves.
//!
//! `/healthz` answers while the process runs; `/readyz` answers 200 once the policy set is
//! loaded and the upstream Temporal frontend answers a gRPC health check; `/metrics` is the
//! Prometheus text format. `POST /explain` explains a described call under the policies in
//! force (`flowgate explain --admin`), and `GET /explain/<decision_id>` one of the last denied
//! calls (every denial message names its decision id). The admin port carries no Temporal
//! traffic and needs no token, and explanations show principals' claims: bind it where only
//! operators and probes reach it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::explain::{CallSpec, explain};
use crate::gateway::{Gateway, RECENT_DENIALS};
use crate::shutdown::Signal;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    decision: &'static str,
    grpc_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerOnly {
    issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    set: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DisagreementLabels {
    action: &'static str,
    enforced: &'static str,
    shadow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    policy_version: String,
}

/// Everything flowgate counts. Cheap to update from the request path.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_duration: Family<MethodLabels, Histogram>,
    authorization_duration: Histogram,
    jwks_fetches: Family<IssuerLabels, Counter>,
    jwks_last_success: Family<IssuerOnly, Gauge<f64, std::sync::atomic::AtomicU64>>,
    token_cache: Family<ResultLabels, Counter>,
    decision_log_failures: Counter,
    policy_info: Family<VersionLabels, Gauge>,
    shadow_policy_info: Family<VersionLabels, Gauge>,
    policy_reloads: Family<ReloadLabels, Counter>,
    policy_last_reload: Family<ReloadLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    shadow_decisions: Family<ResultLabels, Counter>,
    shadow_disagreements: Family<DisagreementLabels, Counter>,
    token_exchanges: Family<ResultLabels, Counter>,
}

/// Which policy set a reload was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySet {
    Enforced,
    Shadow,
}

impl PolicySet {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySet::Enforced => "enforced",
            PolicySet::Shadow => "shadow",
        }
    }
}

fn unix_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 10 µs .. ~84 s: authorization is micro-seconds, a long poll is a minute.
    exponential_buckets(0.00001, 2.0, 24)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flowgate");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("calls", "Calls by method, decision and gRPC status", calls.clone());
        let call_duration =
            Family::<MethodLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            "call_duration_seconds",
            "Whole-call latency, from request to end of response",
            call_duration.clone(),
        );
        let authorization_duration = Histogram::new(latency_buckets());
        registry.register(
            "authorization_duration_seconds",
            "Time to authenticate, inspect and authorize a call",
            authorization_duration.clone(),
        );
        let jwks_fetches = Family::<IssuerLabels, Counter>::default();
        registry.register("jwks_fetches", "JWKS fetches by issuer and result", jwks_fetches.clone());
        let jwks_last_success = Family::default();
        registry.register(
            "jwks_last_success_timestamp_seconds",
            "When each issuer's keys were last fetched successfully",
            jwks_last_success.clone(),
        );
        let token_cache = Family::<ResultLabels, Counter>::default();
        registry.register("token_cache", "Verified-token cache lookups by result", token_cache.clone());
        let decision_log_failures = Counter::default();
        registry.register(
            "decision_log_write_failures",
            "Decision records that could not be written (their calls were refused)",
            decision_log_failures.clone(),
        );
        let policy_info = Family::<VersionLabels, Gauge>::default();
        registry.register("policy_info", "The loaded policy set", policy_info.clone());
        let shadow_policy_info = Family::<VersionLabels, Gauge>::default();
        registry.register("shadow_policy_info", "The loaded shadow policy set", shadow_policy_info.clone());
        let policy_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "policy_reload",
            "Policy set reloads by set and result (a failed one leaves the last good set in force)",
            policy_reloads.clone(),
        );
        let policy_last_reload = Family::default();
        registry.register(
            "policy_last_reload_timestamp_seconds",
            "When each policy set was last reloaded, by result",
            policy_last_reload.clone(),
        );
        let shadow_decisions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "shadow_decisions",
            "Shadow policy decisions by whether they agree with the enforced decision",
            shadow_decisions.clone(),
        );
        let shadow_disagreements = Family::<DisagreementLabels, Counter>::default();
        registry.register(
            "shadow_disagreements",
            "Calls the shadow policy set would decide differently, by action and both decisions",
            shadow_disagreements.clone(),
        );
        let token_exchanges = Family::<ResultLabels, Counter>::default();
        registry.register(
            "token_exchanges",
            "Token exchanges by result (issued or the OAuth error code)",
            token_exchanges.clone(),
        );
        Metrics {
            registry,
            calls,
            call_duration,
            authorization_duration,
            jwks_fetches,
            jwks_last_success,
            token_cache,
            decision_log_failures,
            policy_info,
            shadow_policy_info,
            policy_reloads,
            policy_last_reload,
            shadow_decisions,
            shadow_disagreements,
            token_exchanges,
        }
    }

    pub fn call_finished(&self, method: &'static str, allowed: bool, grpc_status: &'static str, elapsed: Duration) {
        let decision = if allowed { "allow" } else { "deny" };
        self.calls.get_or_create(&CallLabels { method, decision, grpc_status }).inc();
        self.call_duration.get_or_create(&MethodLabels { method }).observe(elapsed.as_secs_f64());
    }

    pub fn authorized_in(&self, elapsed: Duration) {
        self.authorization_duration.observe(elapsed.as_secs_f64());
    }

    pub fn jwks_fetch(&self, issuer: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.jwks_fetches.get_or_create(&IssuerLabels { issuer: issuer.to_owned(), result }).inc();
        if ok {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            self.jwks_last_success.get_or_create(&IssuerOnly { issuer: issuer.to_owned() }).set(now);
        }
    }

    pub fn token_cache(&self, hit: bool) {
        self.token_cache.get_or_create(&ResultLabels { result: if hit { "hit" } else { "miss" } }).inc();
    }

    pub fn token_exchange(&self, result: &'static str) {
        self.token_exchanges.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn decision_log_failed(&self) {
        self.decision_log_failures.inc();
    }

    /// The set now in force (`None`: no shadow set).
    pub fn policy_loaded(&self, set: PolicySet, version: Option<&str>) {
        let info = match set {
            PolicySet::Enforced => &self.policy_info,
            PolicySet::Shadow => &self.shadow_policy_info,
        };
        info.clear();
        if let Some(version) = version {
            info.get_or_create(&VersionLabels { policy_version: version.to_owned() }).set(1);
        }
    }

    pub fn policy_reloaded(&self, set: PolicySet, ok: bool) {
        let labels = ReloadLabels { set: set.as_str(), result: if ok { "success" } else { "failure" } };
        self.policy_reloads.get_or_create(&labels).inc();
        self.policy_last_reload.get_or_create(&labels).set(unix_seconds());
    }

    pub fn shadow_compared(&self, action: &'static str, enforced_allowed: bool, shadow_allowed: bool) {
        let word = |allowed: bool| if allowed { "allow" } else { "deny" };
        let agree = enforced_allowed == shadow_allowed;
        self.shadow_decisions.get_or_create(&ResultLabels { result: if agree { "agree" } else { "disagree" } }).inc();
        if !agree {
            let labels = DisagreementLabels { action, enforced: word(enforced_allowed), shadow: word(shadow_allowed) };
            self.shadow_disagreements.get_or_create(&labels).inc();
        }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

const PLAIN: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// Largest `POST /explain` body (a token and a call description).
const MAX_EXPLAIN_BODY: usize = 64 * 1024;

/// `POST /explain`: a principal (a token, verified like a call's, or an issuer name and
/// claims) and a call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainRequest {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    principal: Option<ClaimsPrincipal>,
    call: CallSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimsPrincipal {
    issuer: String,
    #[serde(default)]
    claims: serde_json::Map<String, serde_json::Value>,
}

fn wants_text(request: &Request<Incoming>) -> bool {
    request.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "format=text"))
}

fn explained(as_text: bool, text_form: String, json_form: serde_json::Value) -> Response<Full<Bytes>> {
    if as_text {
        text(StatusCode::OK, text_form, PLAIN)
    } else {
        text(StatusCode::OK, format!("{json_form:#}\n"), JSON)
    }
}

fn bad_request(message: impl std::fmt::Display) -> Response<Full<Bytes>> {
    text(StatusCode::BAD_REQUEST, format!("{message}\n"), PLAIN)
}

async fn explain_posted(gateway: &Gateway, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let as_text = wants_text(&request);
    let body = match Limited::new(request.into_body(), MAX_EXPLAIN_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return bad_request(format!("cannot read the request body (at most {MAX_EXPLAIN_BODY} bytes): {error}"));
        }
    };
    let asked: ExplainRequest = match serde_json::from_slice(&body) {
        Ok(asked) => asked,
        Err(error) => return bad_request(format!("invalid explain request: {error}")),
    };
    let principal = match (&asked.token, &asked.principal) {
        (Some(token), None) => match gateway.authenticator().verify(token.trim()).await {
            Ok(principal) => principal,
            Err(error) => return bad_request(format!("unauthenticated: {error}")),
        },
        (None, Some(described)) => match gateway.issuers().principal(&described.issuer, &described.claims) {
            Ok(principal) => principal,
            Err(error) => return bad_request(error),
        },
        _ => return bad_request("give either `token` or `principal` (`issuer` and `claims`)"),
    };
    let ask = match asked.call.resolve() {
        Ok(ask) => ask,
        Err(error) => return bad_request(error),
    };
    let shadow = gateway.shadow_policies();
    let explanation = explain(&gateway.policies(), shadow.as_deref(), &principal, &ask);
    let json_form = serde_json::to_value(&explanation).expect("explanations serialize");
    explained(as_text, explanation.to_text(), json_form)
}

fn explain_denial(gateway: &Gateway, decision_id: &str, as_text: bool) -> Response<Full<Bytes>> {
    let Some((denial, explanation)) = gateway.explain_denial(decision_id) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no recent denial `{decision_id}` (the last {RECENT_DENIALS} denials are kept)\n"),
            PLAIN,
        );
    };
    let mut text_form = format!(
        "decision   {} at {}: DENY under policy set {}\n  reasons  {}\nexplained under the policies in force now:\n",
        denial.decision_id,
        denial.ts,
        denial.policy_version,
        if denial.reasons.is_empty() { "(none: no policy permitted it)".to_owned() } else { denial.reasons.join(", ") }
    );
    text_form.push_str(&explanation.to_text());
    let json_form = serde_json::json!({ "denial": denial, "explanation": explanation });
    explained(as_text, text_form, json_form)
}

async fn route(gateway: Arc<Gateway>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    if path == "/explain" {
        return Ok(match *request.method() {
            http::Method::POST => explain_posted(&gateway, request).await,
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "POST a JSON explain request\n", PLAIN),
        });
    }
    if request.method() != http::Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", PLAIN));
    }
    if let Some(decision_id) = path.strip_prefix("/explain/") {
        return Ok(explain_denial(&gateway, decision_id, wants_text(&request)));
    }
    let response = match path.as_str() {
        "/healthz" => text(StatusCode::OK, "ok\n", PLAIN),
        "/readyz" => match gateway.ready().await {
            Ok(()) => text(StatusCode::OK, "ready\n", PLAIN),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"), PLAIN),
        },
        "/metrics" => text(
            StatusCode::OK,
            gateway.metrics().encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found (try /healthz, /readyz, /metrics, POST /explain, /explain/<decision_id>)\n",
            PLAIN,
        ),
    };
    Ok(response)
}

/// Serves the admin endpoints until `shutdown` fires.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut shutdown: Signal) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => return,
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| route(gateway.clone(), request));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
