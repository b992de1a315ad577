//! The admin listener: health, readiness, metrics and explanations.
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
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::authn::Authenticator;
use crate::conn::{self, Activity, ConnectionLimits, ConnectionTracker, Tracked};
use crate::explain::{Ask, CallSpec, Issuers, explain};
use crate::gateway::{RECENT_DENIALS, RecentDenials};
use crate::proxy::Upstream;
use crate::reload::PolicySets;
use crate::session::Sessions;
use crate::shutdown::{self, Signal};
pub use crate::telemetry::{Metrics, PolicySet};

/// What the admin endpoints read of the running gateway, and nothing more.
pub struct Admin {
    /// Verifies the token of `POST /explain`.
    pub authn: Arc<Authenticator>,
    /// How claims become principals, for `POST /explain` with claims.
    pub issuers: Issuers,
    pub policies: Arc<PolicySets>,
    pub denials: Arc<RecentDenials>,
    /// `/readyz` asks it for a health check.
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    /// Verified tokens, for the size of their cache in `/metrics`.
    pub sessions: Arc<Sessions>,
    /// Set when shutdown begins: `/readyz` answers 503 from then on, so that a load balancer
    /// (a Kubernetes Service) stops sending new calls while in-flight ones drain.
    pub draining: std::sync::atomic::AtomicBool,
}

/// A denied call's record, as `GET /explain/<decision_id>` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentDenialSummary {
    pub decision_id: String,
    pub ts: String,
    /// The policy set the denial was made under (the explanation uses the one in force now).
    pub policy_version: String,
    pub reasons: Vec<String>,
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

async fn explain_posted(admin: &Admin, request: Request<Incoming>) -> Response<Full<Bytes>> {
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
        (Some(token), None) => match admin.authn.verify(token.trim()).await {
            Ok(principal) => principal,
            Err(error) => return bad_request(format!("unauthenticated: {error}")),
        },
        (None, Some(described)) => match admin.issuers.principal(&described.issuer, &described.claims) {
            Ok(principal) => principal,
            Err(error) => return bad_request(error),
        },
        _ => return bad_request("give either `token` or `principal` (`issuer` and `claims`)"),
    };
    let ask = match asked.call.resolve() {
        Ok(ask) => ask,
        Err(error) => return bad_request(error),
    };
    let shadow = admin.policies.shadow();
    let explanation = explain(&admin.policies.enforced(), shadow.as_deref(), &principal, &ask);
    let json_form = serde_json::to_value(&explanation).expect("explanations serialize");
    explained(as_text, explanation.to_text(), json_form)
}

fn explain_denial(admin: &Admin, decision_id: &str, as_text: bool) -> Response<Full<Bytes>> {
    let Some(recent) = admin.denials.find(decision_id) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no recent denial `{decision_id}` (the last {RECENT_DENIALS} denials are kept)\n"),
            PLAIN,
        );
    };
    // The explanation is of the question that was refused, under the policies in force now.
    let ask =
        Ask::Call { spec: recent.spec, path: recent.path.clone(), call: recent.call.clone(), implied: Vec::new() };
    let shadow = admin.policies.shadow();
    let explanation = explain(&admin.policies.enforced(), shadow.as_deref(), &recent.session.principal, &ask);
    let denial = RecentDenialSummary {
        decision_id: recent.decision_id.clone(),
        ts: recent.ts.clone(),
        policy_version: recent.policy_version.clone(),
        reasons: recent.reasons.clone(),
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

async fn route(admin: Arc<Admin>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    if path == "/explain" {
        return Ok(match *request.method() {
            http::Method::POST => explain_posted(&admin, request).await,
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "POST a JSON explain request\n", PLAIN),
        });
    }
    if request.method() != http::Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", PLAIN));
    }
    if let Some(decision_id) = path.strip_prefix("/explain/") {
        return Ok(explain_denial(&admin, decision_id, wants_text(&request)));
    }
    let response = match path.as_str() {
        "/healthz" => text(StatusCode::OK, "ok\n", PLAIN),
        "/readyz" if admin.draining.load(std::sync::atomic::Ordering::Relaxed) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n", PLAIN)
        }
        "/readyz" => match admin.upstream.check_health().await {
            Ok(()) => text(StatusCode::OK, "ready\n", PLAIN),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"), PLAIN),
        },
        "/metrics" => {
            admin.metrics.observe_state(admin.sessions.len(), admin.upstream.connected());
            // OpenMetrics for a scraper that asks for it (Prometheus does); the classic text
            // format otherwise (promtool, curl, older scrapers).
            let accept = request.headers().get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
            if accept.contains("application/openmetrics-text") {
                text(
                    StatusCode::OK,
                    admin.metrics.encode(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                text(StatusCode::OK, admin.metrics.encode_classic(), "text/plain; version=0.0.4; charset=utf-8")
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found (try /healthz, /readyz, /metrics, POST /explain, /explain/<decision_id>)\n",
            PLAIN,
        ),
    };
    Ok(response)
}

/// Serves the admin endpoints until `shutdown` fires.
/// The admin listener's connection limits: the gateway's timeouts, and small caps (probes and
/// scrapers need a handful of connections, and the admin port must stay reachable for them
/// while the gateway port is under attack).
pub fn connection_limits(gateway: &ConnectionLimits) -> ConnectionLimits {
    ConnectionLimits {
        max_connections: ADMIN_MAX_CONNECTIONS.min(gateway.max_connections),
        max_connections_per_client: ADMIN_MAX_CONNECTIONS_PER_CLIENT,
        ..*gateway
    }
}

/// Connections the admin listener holds at once, and from one address.
const ADMIN_MAX_CONNECTIONS: usize = 128;
const ADMIN_MAX_CONNECTIONS_PER_CLIENT: usize = 32;

///
/// The admin port outlives the start of shutdown: while the gateway drains its calls (up to
/// `listen.shutdown_grace`), `/readyz` answers 503 and `/metrics` shows the drain. It closes
/// with the process.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, tracker: Arc<ConnectionTracker>, mut shutdown: Signal) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(tracker.limits().handshake_timeout);
    let builder = Arc::new(builder);
    // Admin connections are not closed by the shutdown: this signal never fires.
    let (_keep_open, open) = shutdown::channel();
    let mut draining = false;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait(), if !draining => {
                admin.draining.store(true, std::sync::atomic::Ordering::Relaxed);
                draining = true;
                continue;
            }
        };
        let activity = Activity::new();
        let Ok(slot) = tracker.admit(peer, &activity) else { continue };
        let service = {
            let admin = admin.clone();
            let activity = activity.clone();
            hyper::service::service_fn(move |request| {
                let admin = admin.clone();
                let in_flight = activity.request();
                async move {
                    let response = route(admin, request).await?;
                    Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
                }
            })
        };
        let builder = builder.clone();
        let connect =
            async move { Ok::<_, Infallible>(builder.serve_connection(TokioIo::new(stream), service).into_owned()) };
        tokio::spawn(conn::serve(slot, peer, activity, connect, open.clone()));
    }
}
