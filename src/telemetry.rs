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
    namespace: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
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
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    policy_version: String,
}

/// Everything flowgate counts. Cheap to update from the request path.
pub struct Metrics {
    registry: Registry,
    /// The namespaces that are labels of their own (`metrics.namespaces`); the rest are `other`.
    namespaces: std::collections::HashMap<String, usize>,
    namespace_labels: Vec<&'static str>,
    /// `flowgate_calls_in_flight{kind="long_poll"}` and `{kind="other"}`, looked up once.
    calls_in_flight: [Gauge; 2],
    rate_limited: Family<LimitLabels, Counter>,
    token_cache_entries: Gauge,
    upstream_connected: Gauge,
    process: process::ProcessMetrics,
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
    upstream_key_reloads: Family<ResultLabels, Counter>,
    workflow_tasks_failed: Family<ResultLabels, Counter>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ListenerReasonLabels, Counter>,
    connection_timeouts: Family<ListenerPhaseLabels, Counter>,
    request_budget_refusals: Family<ScopeLabels, Counter>,
    http_api_refusals: Family<StatusLabels, Counter>,
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
        Metrics::with_namespaces(&[])
    }

    /// Metrics whose `namespace` labels are `namespaces` and `other` (a bounded set, whatever
    /// namespaces requests name).
    pub fn with_namespaces(namespaces: &[String]) -> Metrics {
        let mut root = Registry::default();
        let process = process::ProcessMetrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("flowgate");
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register("build_info", "The running build: its version and commit", build_info.clone());
        build_info
            .get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION"), commit: env!("FLOWGATE_COMMIT") })
            .set(1);
        let calls_in_flight = Family::<KindLabels, Gauge>::default();
        registry.register(
            "calls_in_flight",
            "Calls between their request and the end of their response, by kind (long_poll, other)",
            calls_in_flight.clone(),
        );
        // Both kinds exist from the start, at zero (a dashboard shows 0, not "no data"), and the
        // request path counts into them without a family lookup.
        let calls_in_flight =
            ["long_poll", "other"].map(|kind| calls_in_flight.get_or_create(&KindLabels { kind }).clone());
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Allowed calls refused by a rate limit ([[rate_limits]]), by limit",
            rate_limited.clone(),
        );
        let token_cache_entries = Gauge::default();
        registry.register("token_cache_entries", "Verified tokens held in the cache", token_cache_entries.clone());
        let upstream_connected = Gauge::default();
        registry.register(
            "upstream_connected",
            "Whether a connection to the upstream Temporal frontend is open (1) or not (0)",
            upstream_connected.clone(),
        );
        // Labels live as long as the process: a handful of configured names, leaked once.
        let mut namespace_labels: Vec<&'static str> = vec!["other"];
        namespace_labels.extend(namespaces.iter().map(|n| &*Box::leak(n.clone().into_boxed_str())));
        let namespaces = namespaces.iter().enumerate().map(|(i, n)| (n.clone(), i + 1)).collect();
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
        let upstream_key_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "upstream_key_reload",
            "Changes of `upstream.api_key_file` taken (success) or refused, the last good key staying (failure)",
            upstream_key_reloads.clone(),
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
        let http_api_refusals = Family::<StatusLabels, Counter>::default();
        registry.register(
            "http_api_refusals",
            "HTTP API requests flowgate answered itself before the gateway's phases, by HTTP status (no route, bad JSON, over `http_api.max_buffered_bytes`, no answer in time)",
            http_api_refusals.clone(),
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
            registry: root,
            namespaces,
            namespace_labels,
            calls_in_flight,
            rate_limited,
            token_cache_entries,
            upstream_connected,
            process,
            connections_open,
            connections_refused,
            connection_timeouts,
            request_budget_refusals,
            http_api_refusals,
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
            upstream_key_reloads,
            workflow_tasks_failed,
        }
    }

    pub fn call_finished(
        &self,
        method: &'static str,
        allowed: bool,
        namespace: usize,
        grpc_status: &'static str,
        elapsed: Duration,
    ) {
        let decision = if allowed { "allow" } else { "deny" };
        let namespace = self.namespace_labels.get(namespace).copied().unwrap_or("other");
        self.calls.get_or_create(&CallLabels { method, decision, grpc_status, namespace }).inc();
        self.call_duration.get_or_create(&MethodLabels { method }).observe(elapsed.as_secs_f64());
    }

    /// The label number of `namespace`: its own when `metrics.namespaces` lists it, else 0
    /// (`other`).
    pub fn namespace_label(&self, namespace: &str) -> usize {
        if self.namespaces.is_empty() {
            return 0;
        }
        self.namespaces.get(namespace).copied().unwrap_or(0)
    }

    /// A call begins; it is counted in flight until the guard is dropped.
    pub fn call_started(&self, long_poll: bool) -> InFlight {
        let gauge = &self.calls_in_flight[usize::from(!long_poll)];
        gauge.inc();
        InFlight(gauge.clone())
    }

    pub fn rate_limited(&self, limit: &str) {
        self.rate_limited.get_or_create(&LimitLabels { limit: limit.to_owned() }).inc();
    }

    /// State read when metrics are scraped, not kept up to date on the request path.
    pub fn observe_state(&self, token_cache_entries: usize, upstream_connected: bool) {
        self.token_cache_entries.set(i64::try_from(token_cache_entries).unwrap_or(i64::MAX));
        self.upstream_connected.set(i64::from(upstream_connected));
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

    /// `upstream.api_key_file` changed and its key was taken, or refused.
    pub fn upstream_key_reloaded(&self, ok: bool) {
        self.upstream_key_reloads.get_or_create(&ResultLabels { result: if ok { "success" } else { "failure" } }).inc();
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

    /// An HTTP API request the door answered itself with `status`.
    pub fn http_api_refused(&self, status: http::StatusCode) {
        self.http_api_refusals.get_or_create(&StatusLabels { status: status.as_u16().to_string() }).inc();
    }

    /// The bytes the global request budget holds now.
    pub fn buffered_request_bytes(&self, bytes: usize) {
        self.buffered_request_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Every metric in the OpenMetrics text format (`application/openmetrics-text`).
    pub fn encode(&self) -> String {
        self.process.refresh();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// Every metric in Prometheus' classic text format (`text/plain; version=0.0.4`), for
    /// scrapers and tools that do not speak OpenMetrics (`promtool check metrics`).
    pub fn encode_classic(&self) -> String {
        openmetrics_to_classic(&self.encode())
    }
}

/// A call counted in `flowgate_calls_in_flight` until dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The classic Prometheus text format of an OpenMetrics exposition. The two differ, for what
/// flowgate exposes, in three ways: a counter's family is named with its `_total` suffix in
/// `# HELP` and `# TYPE` (OpenMetrics names the family without it), `# UNIT` lines and the
/// closing `# EOF` do not exist, and neither do `_created` samples.
pub fn openmetrics_to_classic(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or(line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                continue;
            }
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if name.strip_suffix("_created").is_some_and(|family| counters.contains(family)) {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The standard `process_*` metrics, read from `/proc/self` when metrics are scraped (Linux;
/// elsewhere they stay at zero).
mod process {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    use std::sync::atomic::AtomicU64;

    pub struct ProcessMetrics {
        cpu_seconds: Counter<f64, AtomicU64>,
        cpu_seen: std::sync::Mutex<f64>,
        resident_bytes: Gauge,
        virtual_bytes: Gauge,
        open_fds: Gauge,
        max_fds: Gauge,
        threads: Gauge,
        start_time: Gauge<f64, AtomicU64>,
    }

    impl ProcessMetrics {
        pub fn register(registry: &mut Registry) -> ProcessMetrics {
            let metrics = ProcessMetrics {
                cpu_seconds: Counter::default(),
                cpu_seen: std::sync::Mutex::new(0.0),
                resident_bytes: Gauge::default(),
                virtual_bytes: Gauge::default(),
                open_fds: Gauge::default(),
                max_fds: Gauge::default(),
                threads: Gauge::default(),
                start_time: Gauge::default(),
            };
            registry.register(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                metrics.cpu_seconds.clone(),
            );
            registry.register(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                metrics.resident_bytes.clone(),
            );
            registry.register(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                metrics.virtual_bytes.clone(),
            );
            registry.register("process_open_fds", "Open file descriptors", metrics.open_fds.clone());
            registry.register("process_max_fds", "The open-file limit (soft)", metrics.max_fds.clone());
            registry.register("process_threads", "OS threads", metrics.threads.clone());
            registry.register(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                metrics.start_time.clone(),
            );
            metrics.refresh();
            metrics
        }

        pub fn refresh(&self) {
            let Some(stat) = Stat::read() else { return };
            let mut seen = self.cpu_seen.lock().expect("cpu_seen lock");
            if stat.cpu_seconds > *seen {
                self.cpu_seconds.inc_by(stat.cpu_seconds - *seen);
                *seen = stat.cpu_seconds;
            }
            drop(seen);
            self.resident_bytes.set(stat.resident_bytes);
            self.virtual_bytes.set(stat.virtual_bytes);
            self.threads.set(stat.threads);
            self.start_time.set(stat.start_time);
            if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
                self.open_fds.set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
            }
            if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
                self.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
            }
        }
    }

    /// What `/proc/self/stat` says (proc(5)), in the units Prometheus names.
    struct Stat {
        cpu_seconds: f64,
        virtual_bytes: i64,
        resident_bytes: i64,
        threads: i64,
        start_time: f64,
    }

    impl Stat {
        fn read() -> Option<Stat> {
            let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
            // The command name (field 2) is in parentheses and may hold spaces: fields after it
            // are counted from its closing parenthesis.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
            // Clock ticks and pages: 100 Hz and 4 KiB on every Linux flowgate runs on
            // (sysconf would need libc); boot time from /proc/stat.
            let (ticks, page) = (100.0, 4096.0);
            let boot_time = std::fs::read_to_string("/proc/stat")
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))?;
            Some(Stat {
                cpu_seconds: (field(14)? + field(15)?) / ticks,
                threads: field(20)? as i64,
                start_time: boot_time + field(22)? / ticks,
                virtual_bytes: field(23)? as i64,
                resident_bytes: (field(24)? * page) as i64,
            })
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_with_total_and_has_no_eof() {
        let metrics = Metrics::with_namespaces(&["payments".to_owned()]);
        metrics.call_finished("StartWorkflowExecution", true, metrics.namespace_label("payments"), "0", Duration::ZERO);
        metrics.call_finished(
            "StartWorkflowExecution",
            false,
            metrics.namespace_label("anything"),
            "7",
            Duration::ZERO,
        );
        let classic = metrics.encode_classic();
        assert!(classic.contains("# TYPE flowgate_calls_total counter\n"), "{classic}");
        assert!(classic.contains("# HELP flowgate_calls_total "), "{classic}");
        assert!(classic.contains(r#"namespace="payments""#) && classic.contains(r#"namespace="other""#));
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"), "{classic}");
        assert!(classic.contains("\nprocess_resident_memory_bytes "), "{classic}");
        assert!(classic.contains("flowgate_build_info{version="), "{classic}");
        // OpenMetrics is what it was: families without `_total`, and the closing EOF.
        let openmetrics = metrics.encode();
        assert!(openmetrics.contains("# TYPE flowgate_calls counter\n") && openmetrics.ends_with("# EOF\n"));
    }

    #[test]
    fn calls_are_in_flight_until_their_guard_drops() {
        let metrics = Metrics::new();
        let poll = metrics.call_started(true);
        let gauge = |text: &str, kind: &str| text.contains(&format!("flowgate_calls_in_flight{{kind=\"{kind}\"}} 1\n"));
        assert!(gauge(&metrics.encode_classic(), "long_poll"));
        drop(poll);
        assert!(!gauge(&metrics.encode_classic(), "long_poll"));
    }
}
