//! What flowgate counts: every metric, in one registry, cheap to update from the request path.
//!
//! Every layer records into [`Metrics`] (the authenticator its JWKS fetches, the proxy its
//! calls, the listeners their connections), and the admin listener serves
//! [`Metrics::encode`] at `/metrics`. Living at the bottom of the crate, it lets each layer
//! count without importing the admin listener that shows the counts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerReasonLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerPhaseLabels {
    listener: &'static str,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
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
    jwks_kid_waits: Family<IssuerLabels, Counter>,
    token_cache: Family<ResultLabels, Counter>,
    decision_log_failures: Counter,
    policy_info: Family<VersionLabels, Gauge>,
    shadow_policy_info: Family<VersionLabels, Gauge>,
    policy_reloads: Family<ReloadLabels, Counter>,
    policy_last_reload: Family<ReloadLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    shadow_decisions: Family<ResultLabels, Counter>,
    shadow_disagreements: Family<DisagreementLabels, Counter>,
    token_exchanges: Family<ResultLabels, Counter>,
    workflow_tasks_failed: Family<ResultLabels, Counter>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ListenerReasonLabels, Counter>,
    connection_timeouts: Family<ListenerPhaseLabels, Counter>,
    request_budget_refusals: Family<ScopeLabels, Counter>,
    buffered_request_bytes: Gauge,
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
        let jwks_kid_waits = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "jwks_kid_waits",
            "Calls held for the next permitted JWKS fetch because their kid was unknown, by result",
            jwks_kid_waits.clone(),
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
        let workflow_tasks_failed = Family::<ResultLabels, Counter>::default();
        registry.register(
            "workflow_tasks_failed",
            "Workflow tasks refused for a command and failed upstream, by result (ok, error, timeout)",
            workflow_tasks_failed.clone(),
        );
        let token_exchanges = Family::<ResultLabels, Counter>::default();
        registry.register(
            "token_exchanges",
            "Token exchanges by result (issued or the OAuth error code)",
            token_exchanges.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register("connections_open", "Open client connections by listener", connections_open.clone());
        let connections_refused = Family::<ListenerReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because a cap was reached, by listener and cap",
            connections_refused.clone(),
        );
        let connection_timeouts = Family::<ListenerPhaseLabels, Counter>::default();
        registry.register(
            "connection_timeouts",
            "Connections closed for sending no request in time (handshake) or none for a while (idle)",
            connection_timeouts.clone(),
        );
        let request_budget_refusals = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "request_budget_refusals",
            "Calls refused because buffering their first message would exceed a byte budget, by budget",
            request_budget_refusals.clone(),
        );
        let buffered_request_bytes = Gauge::default();
        registry.register(
            "buffered_request_bytes",
            "Request bytes held while calls are inspected (bounded by limits.max_buffered_bytes)",
            buffered_request_bytes.clone(),
        );
        Metrics {
            registry,
            connections_open,
            connections_refused,
            connection_timeouts,
            request_budget_refusals,
            buffered_request_bytes,
            calls,
            call_duration,
            authorization_duration,
            jwks_fetches,
            jwks_last_success,
            jwks_kid_waits,
            token_cache,
            decision_log_failures,
            policy_info,
            shadow_policy_info,
            policy_reloads,
            policy_last_reload,
            shadow_decisions,
            shadow_disagreements,
            token_exchanges,
            workflow_tasks_failed,
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

    /// A call held for a JWKS fetch: `found` (the kid came), `absent` (it did not) or `refused`
    /// (no permitted fetch within the wait limit, too many calls held already, or the IdP did
    /// not answer).
    pub fn jwks_kid_wait(&self, issuer: &str, result: &'static str) {
        self.jwks_kid_waits.get_or_create(&IssuerLabels { issuer: issuer.to_owned(), result }).inc();
    }

    pub fn token_cache(&self, hit: bool) {
        self.token_cache.get_or_create(&ResultLabels { result: if hit { "hit" } else { "miss" } }).inc();
    }

    pub fn token_exchange(&self, result: &'static str) {
        self.token_exchanges.get_or_create(&ResultLabels { result }).inc();
    }

    /// A refused workflow task was failed upstream (`ok`), or could not be (`error`, `timeout`).
    pub fn workflow_task_failed(&self, result: &'static str) {
        self.workflow_tasks_failed.get_or_create(&ResultLabels { result }).inc();
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

    pub fn connection_opened(&self, listener: &'static str) {
        self.connections_open.get_or_create(&ListenerLabels { listener }).inc();
    }

    pub fn connection_closed(&self, listener: &'static str) {
        self.connections_open.get_or_create(&ListenerLabels { listener }).dec();
    }

    pub fn connection_refused(&self, listener: &'static str, reason: &'static str) {
        self.connections_refused.get_or_create(&ListenerReasonLabels { listener, reason }).inc();
    }

    pub fn connection_timed_out(&self, listener: &'static str, phase: &'static str) {
        self.connection_timeouts.get_or_create(&ListenerPhaseLabels { listener, phase }).inc();
    }

    pub fn request_budget_refused(&self, scope: &'static str) {
        self.request_budget_refusals.get_or_create(&ScopeLabels { scope }).inc();
    }

    /// The bytes the global request budget holds now.
    pub fn buffered_request_bytes(&self, bytes: usize) {
        self.buffered_request_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
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
