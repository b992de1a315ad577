//! The admin listener and the metrics it serves.
//!
//! `/healthz` answers while the process runs; `/readyz` answers 200 once the policy set is
//! loaded and the upstream Temporal frontend answers a gRPC health check; `/metrics` is the
//! Prometheus text format. The admin port carries no Temporal traffic and needs no token, so
//! bind it where only operators and probes reach it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::gateway::Gateway;
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
    token_exchanges: Family<ResultLabels, Counter>,
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

    pub fn policy_loaded(&self, version: &str) {
        self.policy_info.clear();
        self.policy_info.get_or_create(&VersionLabels { policy_version: version.to_owned() }).set(1);
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

async fn route(gateway: Arc<Gateway>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != http::Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", PLAIN));
    }
    let response = match request.uri().path() {
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
        _ => text(StatusCode::NOT_FOUND, "not found (try /healthz, /readyz, /metrics)\n", PLAIN),
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
