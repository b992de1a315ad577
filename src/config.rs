//! Configuration: the TOML file `flowgate serve --config` reads, and its validation.
//!
//! Parsing is strict. An unknown key is an error naming the key (a typo in a security setting
//! must not silently fall back to a default), and every value that could be wrong is checked
//! here, at load time, so the request path never has to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration that cannot be used, with the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file `{path}`: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("invalid `task_tokens.key_file` `{}`: {message}", path.display())]
    TaskTokenKeyFile { path: PathBuf, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    pub upstream: UpstreamConfig,
    pub policy: PolicyConfig,
    pub audit: AuditConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub token_cache: TokenCacheConfig,
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Temporal's HTTP API on the gateway's listener; off when absent.
    #[serde(default)]
    pub http_api: Option<HttpApiConfig>,
    /// Credentials flowgate mints (token exchange); off when absent.
    #[serde(default)]
    pub mint: Option<MintConfig>,
    #[serde(default)]
    pub replay: ReplayConfig,
    #[serde(default)]
    pub task_tokens: TaskTokensConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Rate limits and concurrency caps on allowed calls (`ratelimit`).
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    /// OpenTelemetry traces (`traces`); off when absent.
    #[serde(default)]
    pub traces: Option<TracesConfig>,
}

/// `[traces]`: spans for each call and its phases, for JWKS fetches and token exchanges,
/// exported over OTLP/HTTP (protobuf) to a collector or a tracing backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// The OTLP/HTTP traces URL, e.g. `http://otel-collector:4318/v1/traces` (the path is not
    /// added: it is used as written).
    pub endpoint: String,
    /// The share of new traces that are recorded, from 0 to 1: of calls whose client sent no
    /// `traceparent`, and of all calls when `follow_client_sampling` is false. Every worker poll
    /// is a call: 1 on a busy gateway is a trace per poll.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Whether a client's `traceparent` decides (its sampled flag), as OpenTelemetry's
    /// parent-based sampler does. A client can then have every one of its calls traced: turn
    /// this off where clients should not choose what the gateway spends on tracing.
    #[serde(default = "default_follow_client_sampling")]
    pub follow_client_sampling: bool,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// A CA bundle (PEM) trusted for the endpoint besides the system roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Headers sent with each export, e.g. a backend's API key. `OTEL_EXPORTER_OTLP_HEADERS`
    /// (or `OTEL_EXPORTER_OTLP_TRACES_HEADERS`) adds to them, and keeps a secret out of the file.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// How long one export may take.
    #[serde(default = "default_traces_timeout", with = "duration")]
    pub timeout: Duration,
    /// Spans waiting for export at most; beyond it, new spans are dropped (never the calls).
    #[serde(default = "default_traces_max_queue")]
    pub max_queue: usize,
}

fn default_sample_ratio() -> f64 {
    0.01
}
fn default_follow_client_sampling() -> bool {
    true
}
fn default_service_name() -> String {
    "flowgate".to_owned()
}
fn default_traces_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_traces_max_queue() -> usize {
    2048
}

/// One `[[rate_limits]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Names the limit in refusals, records and `flowgate_rate_limited_total{limit}`.
    pub name: String,
    /// Actions (RPC names) it picks; empty: every action.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Namespaces it picks; empty: every namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Principal types it picks (`CiJob`, `User`, `Service`, `Worker`); empty: every type.
    #[serde(default)]
    pub principal_types: Vec<String>,
    /// The `@id`s of policies whose allowed calls it picks; empty: whatever policy allowed them.
    #[serde(default)]
    pub policies: Vec<String>,
    /// What is counted separately: `principal` (default), `namespace`, `principal_namespace`, `all`.
    #[serde(default)]
    pub per: RateLimitKey,
    /// Calls a second, sustained.
    pub rate: f64,
    /// Calls at once after a quiet spell (the bucket's size); default: `rate`, at least 1.
    #[serde(default)]
    pub burst: Option<f64>,
    /// Calls picked by this limit in flight at once, per key; none: no cap.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
}

impl RateLimitConfig {
    pub fn burst(&self) -> f64 {
        self.burst.unwrap_or(self.rate.max(1.0))
    }
}

/// What a rate limit counts separately.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    #[default]
    Principal,
    Namespace,
    PrincipalNamespace,
    All,
}

/// `[metrics]`: what `/metrics` labels.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Namespaces that get a `namespace` label of their own on `flowgate_calls_total`; calls in
    /// any other namespace (or none) are labelled `other`. A fixed list, because namespace names
    /// come from requests: a label per name would let any caller grow the series without bound.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// `[identity]`: what Temporal's own history says about who acted.
///
/// Temporal records the `identity` a client puts in its request (`WorkflowExecutionStarted`,
/// `WorkflowExecutionSignaled`, a poller's identity, ...); flowgate replaces it with one
/// rendered from the verified principal, and gives starts and signals a header that names
/// the verified initiator for workflow code.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// What every `identity` field becomes; an issuer's `identity` overrides it. `""` leaves
    /// the client's value.
    #[serde(default = "default_identity_template")]
    pub template: IdentityTemplate,
    /// The Temporal header starts and signals carry with the verified initiator (a JSON payload);
    /// `""` sends none.
    #[serde(default = "default_identity_header")]
    pub header: String,
    /// Claims of the token copied into that header, as `claims`, when the token has them.
    #[serde(default = "default_header_claims")]
    pub header_claims: Vec<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            template: default_identity_template(),
            header: default_identity_header(),
            header_claims: default_header_claims(),
        }
    }
}

fn default_identity_template() -> IdentityTemplate {
    IdentityTemplate::parse("{principal} via flowgate").expect("the default template parses")
}

fn default_identity_header() -> String {
    "flowgate-principal".to_owned()
}

/// What CI providers put in their tokens about the run (GitHub Actions, GitLab, Buildkite,
/// Bitbucket Pipelines, Azure DevOps), and who a person is (Okta).
fn default_header_claims() -> Vec<String> {
    [
        "repository",
        "ref",
        "sha",
        "workflow",
        "run_id",
        "run_attempt",
        "environment",
        "actor",
        "project_path",
        "pipeline_id",
        "job_id",
        "organization_slug",
        "pipeline_slug",
        "build_number",
        "build_url",
        "repositoryUuid",
        "pipelineUuid",
        "stepUuid",
        "email",
        "preferred_username",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// One part of an identity template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Text(String),
    /// `{principal}`: the principal id, `<issuer name>:<sub>`.
    Principal,
    /// `{kind}`: `User`, `Service`, `CiJob` or `Worker`.
    Kind,
    /// `{issuer}`: the issuer's configured name.
    Issuer,
    /// `{sub}`.
    Sub,
    /// `{claim:NAME}`: a claim of the token (nested claims joined with `.`), empty when absent.
    Claim(String),
    /// `{client}`: the identity the client sent, unverified (a worker's `pid@host`, to tell
    /// the processes of one principal apart).
    Client,
}

/// An identity template such as `{principal} via flowgate` or
/// `github:{claim:repository}@{claim:environment}`, parsed when the config is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IdentityTemplate {
    pub parts: Vec<TemplatePart>,
}

impl IdentityTemplate {
    /// Parses `text`; `{{` and `}}` are literal braces.
    pub fn parse(text: &str) -> Result<IdentityTemplate, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(format!("unmatched `}}` in `{text}` (write `}}}}` for a brace)")),
                '{' => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    let part = match name.as_str() {
                        "principal" => TemplatePart::Principal,
                        "kind" => TemplatePart::Kind,
                        "issuer" => TemplatePart::Issuer,
                        "sub" => TemplatePart::Sub,
                        "client" => TemplatePart::Client,
                        other => match other.strip_prefix("claim:") {
                            Some(claim) if !claim.is_empty() => TemplatePart::Claim(claim.to_owned()),
                            _ => {
                                return Err(format!(
                                    "unknown placeholder `{{{other}}}` in `{text}` (known: `{{principal}}`, \
                                     `{{kind}}`, `{{issuer}}`, `{{sub}}`, `{{claim:NAME}}`, `{{client}}`)"
                                ));
                            }
                        },
                    };
                    if !literal.is_empty() {
                        parts.push(TemplatePart::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(TemplatePart::Text(literal));
        }
        if parts.iter().filter(|part| **part == TemplatePart::Client).count() > 1 {
            return Err(format!("`{{client}}` appears more than once in `{text}`"));
        }
        Ok(IdentityTemplate { parts })
    }

    /// An empty template: the client's identity is left as it is.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

impl TryFrom<String> for IdentityTemplate {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        IdentityTemplate::parse(&text)
    }
}

/// `[task_tokens]`: the keys that seal the task tokens flowgate hands to workers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTokensConfig {
    /// One base64 key (at least 32 bytes) per line, `#` comments: the first line seals, every
    /// line opens. Replicas behind one address must share it. Without it each process draws a
    /// random key, and a restart makes outstanding task tokens unusable.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// `[mint]`: flowgate as an issuer of short-lived worker credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintConfig {
    /// flowgate's own issuer URL (`iss` of minted credentials), as clients and Temporal reach it.
    pub issuer: String,
    /// The name policies see for minted credentials: principal ids are `<name>:<sub>`.
    #[serde(default = "default_mint_name")]
    pub name: String,
    /// `aud` of minted credentials (Temporal's `audience` setting, when it checks one).
    #[serde(default = "default_mint_audience")]
    pub audience: String,
    /// Signing keys: `*.pem` (PKCS#8 P-256) files; one is generated here on first start.
    pub key_dir: PathBuf,
    /// How long a minted credential lives. Minutes, not hours.
    #[serde(default = "default_credential_lifetime", with = "duration")]
    pub credential_lifetime: Duration,
    /// How long a chain of refreshes (exchanging a credential for the next) may last, counted
    /// from the exchange of the original CI or workload token.
    #[serde(default = "default_max_session", with = "duration")]
    pub max_session: Duration,
    /// How long before it signs a newly generated key is published (Temporal re-reads a JWKS
    /// only every `refreshInterval`).
    #[serde(default = "default_key_publish_ahead", with = "duration")]
    pub key_publish_ahead: Duration,
    /// How often the key directory is re-read for new keys.
    #[serde(default = "default_key_reload", with = "duration")]
    pub key_reload: Duration,
}

fn default_mint_name() -> String {
    "flowgate".into()
}
fn default_mint_audience() -> String {
    "temporal".into()
}
fn default_credential_lifetime() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_max_session() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_key_publish_ahead() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_key_reload() -> Duration {
    Duration::from_secs(30)
}

/// `[replay]`: where used subject tokens are remembered.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// `redis://host:port/db`: share the replay cache between gateway replicas. Without it the
    /// cache is in this process's memory.
    #[serde(default)]
    pub redis_url: Option<String>,
}

/// `[http_api]`: Temporal's HTTP/JSON API (the routes of its HTTP port), served on the
/// gateway's listener and transcoded to the gRPC calls the gateway authorizes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpApiConfig {
    /// The largest request body read; Temporal's own limit (4 MiB) at most.
    #[serde(default = "default_http_api_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The largest response read from Temporal to be turned into JSON (a history page can be
    /// large); a larger one is answered with 500 and its size.
    #[serde(default = "default_http_api_max_response_bytes")]
    pub max_response_bytes: usize,
    /// What the HTTP door's requests and answers may hold in memory together: bodies, JSON
    /// trees, answers being written and answers not yet read. Over it, a request is refused
    /// with 429. It must admit the largest request and the largest answer alone.
    #[serde(default = "default_http_api_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
}

pub(crate) fn default_http_api_max_body_bytes() -> usize {
    4 * 1024 * 1024
}

pub(crate) fn default_http_api_max_response_bytes() -> usize {
    4 * 1024 * 1024
}

pub(crate) fn default_http_api_max_buffered_bytes() -> usize {
    128 * 1024 * 1024
}

/// What flowgate sends Temporal in `authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamCredentials {
    /// Nothing: Temporal trusts its network.
    #[default]
    None,
    /// The client's own header, unchanged.
    Forward,
    /// A credential flowgate mints for the call's principal, namespace and access class, so
    /// Temporal's own JWT authorizer can check that the call came through flowgate.
    Minted,
    /// flowgate's own API key (`upstream.api_key_file` or `upstream.api_key_env`), the same on
    /// every call: Temporal Cloud, or any Temporal that knows flowgate as one identity.
    #[serde(rename = "api_key")]
    ApiKey,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// Concurrent HTTP/2 streams per client connection. Workers multiplex many long polls on
    /// one connection, so this is far above hyper's default of 200.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// How long a graceful shutdown waits for in-flight calls (long polls included).
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Connections open at once; by default the open-file limit less a reserve (`conn`).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Connections open at once from one IP address. Behind a load balancer that does not keep
    /// client addresses, raise it: every connection then comes from the balancer.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// From accept to the first request's headers (TLS handshake and HTTP/2 preface included).
    #[serde(default = "default_handshake_timeout", with = "duration")]
    pub handshake_timeout: Duration,
    /// A connection with no call in flight this long is sent a GOAWAY.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
}

pub(crate) fn default_max_connections_per_client() -> usize {
    512
}

pub(crate) fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

pub(crate) fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

pub(crate) fn default_max_concurrent_streams() -> u32 {
    10_000
}

pub(crate) fn default_shutdown_grace() -> Duration {
    Duration::from_secs(75)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port` (h2c) or `https://host:port` (TLS, ALPN h2).
    pub address: String,
    /// CA bundle for an `https://` upstream; the built-in web PKI roots otherwise.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mTLS to the upstream.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// TLS server name when it differs from the address's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Forward the client's `authorization` header to Temporal (same as `credentials = "forward"`).
    #[serde(default)]
    pub forward_authorization: bool,
    /// `none`, `forward`, `minted` or `api_key`: what Temporal receives in `authorization`.
    #[serde(default)]
    pub credentials: UpstreamCredentials,
    /// `credentials = "api_key"`: a file holding the key (a mounted secret), read again when
    /// it changes.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// `credentials = "api_key"`: the environment variable holding the key, read at start.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// How often `api_key_file` is read to see whether the key changed.
    #[serde(default = "default_api_key_watch_interval", with = "duration")]
    pub api_key_watch_interval: Duration,
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
}

pub(crate) fn default_api_key_watch_interval() -> Duration {
    Duration::from_secs(10)
}

pub(crate) fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub dir: PathBuf,
    /// A second policy set evaluated on every call and recorded, never enforced.
    #[serde(default)]
    pub shadow_dir: Option<PathBuf>,
    /// How often the policy directories are checked for changes; `0s` turns watching off
    /// (SIGHUP still reloads).
    #[serde(default = "default_policy_watch_interval", with = "duration")]
    pub watch_interval: Duration,
}

fn default_policy_watch_interval() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A file to append to, or `-` for standard output.
    pub path: PathBuf,
    /// When written lines are forced to the disk (`fdatasync`).
    #[serde(default)]
    pub fsync: AuditFsync,
    /// With `fsync = "interval"`: how often.
    #[serde(default = "default_fsync_interval", with = "duration")]
    pub fsync_interval: Duration,
}

/// `audit.fsync`: what a decision waits for before its call goes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFsync {
    /// Until its line is on the disk: calls that arrive together share one `fdatasync` (group
    /// commit). Survives a power failure; costs a disk flush per batch.
    Always,
    /// Until its line is written to the OS; a thread flushes to the disk every
    /// `audit.fsync_interval`. A power failure loses at most that much; a crash of flowgate
    /// loses nothing.
    #[default]
    Interval,
    /// Until its line is written to the OS; the OS flushes when it likes.
    Never,
}

fn default_fsync_interval() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request message accepted (the Temporal frontend's own limit is 4 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Largest size a compressed request message may inflate to.
    #[serde(default = "default_max_message_bytes")]
    pub max_inflated_bytes: usize,
    /// Request bytes all calls together may hold while their first message is read (`budget`).
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// Request bytes the calls of one connection may hold while their first message is read.
    #[serde(default = "default_max_connection_buffered_bytes")]
    pub max_connection_buffered_bytes: usize,
    /// How long a call may take to send its first message, once its headers have arrived.
    #[serde(default = "default_first_message_timeout", with = "duration")]
    pub first_message_timeout: Duration,
    /// Calls in flight at once across all connections (long polls included); past it a new call
    /// is shed at once with `RESOURCE_EXHAUSTED`, before anything of it is read.
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: usize,
    /// Calls of one principal that may wait for the rest of their first message at once (each
    /// holds one of `max_concurrent_calls` meanwhile); more are refused `RESOURCE_EXHAUSTED`.
    #[serde(default = "default_max_waiting_calls_per_principal")]
    pub max_waiting_calls_per_principal: usize,
}

fn default_max_waiting_calls_per_principal() -> usize {
    256
}

fn default_max_concurrent_calls() -> usize {
    100_000
}

fn default_max_buffered_bytes() -> usize {
    256 * 1024 * 1024
}

fn default_max_connection_buffered_bytes() -> usize {
    32 * 1024 * 1024
}

fn default_first_message_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_message_bytes() -> usize {
    4 * 1024 * 1024
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: default_max_message_bytes(),
            max_inflated_bytes: default_max_message_bytes(),
            max_buffered_bytes: default_max_buffered_bytes(),
            max_connection_buffered_bytes: default_max_connection_buffered_bytes(),
            max_concurrent_calls: default_max_concurrent_calls(),
            max_waiting_calls_per_principal: default_max_waiting_calls_per_principal(),
            first_message_timeout: default_first_message_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// Verified tokens kept until they expire; past this many, the least used make room
    /// (tokens seen once go first, see `authn::cache`).
    #[serde(default = "default_token_cache_entries")]
    pub max_entries: usize,
}

fn default_token_cache_entries() -> usize {
    100_000
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        TokenCacheConfig { max_entries: default_token_cache_entries() }
    }
}

/// The Cedar principal type of an issuer's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PrincipalKind {
    User,
    Service,
    CiJob,
    Worker,
}

impl PrincipalKind {
    pub fn entity_type(self) -> &'static str {
        match self {
            PrincipalKind::User => "User",
            PrincipalKind::Service => "Service",
            PrincipalKind::CiJob => "CiJob",
            PrincipalKind::Worker => "Worker",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The name policies see: principal ids are `<name>:<sub>`, groups `<name>:<group>`.
    pub name: String,
    /// A provider preset that fills in the issuer URL, principal type and tenant rules.
    #[serde(default)]
    pub preset: Option<String>,
    /// The exact `iss` value.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values; at least one must be in the token.
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub principal: Option<PrincipalKind>,
    /// The JWKS location; without it, OIDC discovery at `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Claims that must be present with exactly these string values (tenant binding).
    #[serde(default)]
    pub required_claims: BTreeMap<String, String>,
    /// Accepted signing algorithms, pinned per issuer (never taken from the token alone).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Tokens whose `exp - iat` (or `exp - now`) exceeds this are refused as implausible.
    #[serde(default = "default_max_token_lifetime", with = "duration")]
    pub max_token_lifetime: Duration,
    /// Background JWKS refresh period.
    #[serde(default = "default_jwks_refresh", with = "duration")]
    pub jwks_refresh: Duration,
    /// The rate of JWKS fetches a token with an unknown `kid` can cause: two at once, then one
    /// per this interval; a call over the budget is held for the next fetch, not refused.
    #[serde(default = "default_jwks_min_refresh", with = "duration")]
    pub jwks_min_refresh: Duration,
    /// How long the last good keys are used while the IdP cannot be reached.
    #[serde(default = "default_jwks_max_stale", with = "duration")]
    pub jwks_max_stale: Duration,
    /// ES256/ES384 tokens whose signature is in high-s form; unset: the preset's choice, else
    /// `refuse`.
    #[serde(default)]
    pub ecdsa_high_s: Option<EcdsaHighS>,
    /// The identity template for this issuer's principals, instead of `identity.template`.
    #[serde(default)]
    pub identity: Option<IdentityTemplate>,
    /// A PEM bundle trusted for this issuer's discovery and JWKS fetches, besides the system
    /// roots (a cluster CA, a corporate CA).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// A bearer token sent with this issuer's discovery and JWKS fetches, read from this file at
    /// each fetch (a Kubernetes API server serves its keys only to authenticated callers: the
    /// pod's own service-account token).
    #[serde(default)]
    pub fetch_token_file: Option<PathBuf>,
    /// People log in to this issuer with `flowgate login`: the gateway publishes it, with this
    /// public client, at `/.well-known/flowgate-login`.
    #[serde(default)]
    pub login: Option<LoginConfig>,
}

/// An issuer's `login` table: the public OAuth client (no secret) that `flowgate login` uses
/// for the device flow and the authorization code flow with PKCE.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The client id, registered at the IdP as a native app with the device grant and a
    /// loopback redirect URI (`http://127.0.0.1/callback`, any port).
    pub client_id: String,
    /// The scopes asked for. `offline_access` gets a refresh token at most IdPs.
    #[serde(default = "default_login_scopes")]
    pub scopes: Vec<String>,
}

fn default_login_scopes() -> Vec<String> {
    ["openid", "profile", "email", "offline_access"].map(String::from).to_vec()
}

/// What to do with a high-s ECDSA signature (`s > n/2`, the twin of a low-s one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EcdsaHighS {
    /// Only low-s signatures are valid: one signature per token.
    Refuse,
    /// For IdPs whose signer does not normalize (Go's `crypto/ecdsa`): both forms verify.
    Accept,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_max_token_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(600)
}
fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_jwks_max_stale() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Durations as human strings: `"30s"`, `"5m"`, `"1h 30m"`.
///
/// At most [`duration::MAX`]: `humantime` reads up to `u64::MAX` seconds, and such a value
/// parses fine but panics later, far from the config, when it is added to the clock
/// (`Instant + Duration` and `SystemTime + Duration` panic past their range) or to a
/// timestamp in seconds. No setting needs anywhere near ten years.
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// The longest duration a setting may have: ten years of 365 days.
    pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        let value = humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration like \"30s\" or \"5m\": {e}")))?;
        if value > MAX {
            return Err(serde::de::Error::custom(format!("`{text}` is longer than the 10 years a duration may be")));
        }
        Ok(value)
    }
}

impl TracesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = reqwest::Url::parse(&self.endpoint)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
            .ok_or_else(|| {
                invalid("traces.endpoint", format!("`{}` is not an http:// or https:// URL", self.endpoint))
            })?;
        if url.scheme() == "http" && self.ca.is_some() {
            return Err(invalid("traces.ca", "needs an https:// `endpoint`"));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid("traces.sample_ratio", format!("`{}` is not between 0 and 1", self.sample_ratio)));
        }
        if self.service_name.is_empty() {
            return Err(invalid("traces.service_name", "must not be empty"));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::try_from(name.as_str()).is_err()
                || http::HeaderValue::try_from(value.as_str()).is_err()
            {
                return Err(invalid("traces.headers", format!("`{name}` is not a valid header")));
            }
        }
        if self.timeout.is_zero() {
            return Err(invalid("traces.timeout", "must be more than 0s"));
        }
        if self.max_queue == 0 {
            return Err(invalid("traces.max_queue", "must be at least 1"));
        }
        Ok(())
    }
}

impl UpstreamConfig {
    /// The effective credential mode (`forward_authorization = true` is `forward`).
    pub fn credentials(&self) -> UpstreamCredentials {
        if self.forward_authorization { UpstreamCredentials::Forward } else { self.credentials }
    }

    /// `api_key_*` go with `credentials = "api_key"`, and the key goes only over TLS (or to
    /// this machine).
    fn validate_api_key(&self, address: &http::Uri) -> Result<(), ConfigError> {
        let sources = usize::from(self.api_key_file.is_some()) + usize::from(self.api_key_env.is_some());
        if self.credentials == UpstreamCredentials::ApiKey && self.forward_authorization {
            return Err(invalid("upstream.forward_authorization", "contradicts `credentials = \"api_key\"`"));
        }
        if self.credentials != UpstreamCredentials::ApiKey {
            if sources > 0 {
                return Err(invalid("upstream", "`api_key_file` and `api_key_env` need `credentials = \"api_key\"`"));
            }
            return Ok(());
        }
        if sources != 1 {
            return Err(invalid("upstream.credentials", "`api_key` needs one of `api_key_file` and `api_key_env`"));
        }
        if self.api_key_env.as_deref().is_some_and(|name| name.is_empty() || name.contains(['=', '\0'])) {
            return Err(invalid("upstream.api_key_env", "is not an environment variable name"));
        }
        if self.api_key_watch_interval.is_zero() {
            return Err(invalid("upstream.api_key_watch_interval", "must be more than 0s"));
        }
        let loopback = address.host().is_some_and(|host| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        });
        if address.scheme_str() == Some("http") && !loopback {
            return Err(invalid(
                "upstream.address",
                format!("`{}` would carry the API key in cleartext: use https://", self.address),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it are resolved
    /// against the file's directory, so a config works from any working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses and validates config text (paths stay as written).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string().trim_end().to_owned() })?;
        // An API key turns TLS on, as it does for Temporal's CLI and SDKs: `host:port` alone
        // means `https://host:port`.
        let upstream = &mut config.upstream;
        if upstream.credentials == UpstreamCredentials::ApiKey && !upstream.address.contains("://") {
            upstream.address = format!("https://{}", upstream.address);
        }
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && p.as_os_str() != "-" {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.policy.dir);
        if let Some(shadow) = &mut self.policy.shadow_dir {
            resolve(shadow);
        }
        resolve(&mut self.audit.path);
        if let Some(mint) = &mut self.mint {
            resolve(&mut mint.key_dir);
        }
        if let Some(key_file) = &mut self.task_tokens.key_file {
            resolve(key_file);
        }
        if let Some(tls) = &mut self.listen.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                resolve(ca);
            }
        }
        let upstream = &mut self.upstream;
        for p in
            [&mut upstream.ca, &mut upstream.cert, &mut upstream.key, &mut upstream.api_key_file].into_iter().flatten()
        {
            resolve(p);
        }
        for issuer in &mut self.issuers {
            for p in [&mut issuer.ca, &mut issuer.fetch_token_file].into_iter().flatten() {
                resolve(p);
            }
        }
        if let Some(ca) = self.traces.as_mut().and_then(|t| t.ca.as_mut()) {
            resolve(ca);
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let upstream = &self.upstream;
        let uri: http::Uri = upstream
            .address
            .parse()
            .map_err(|e| invalid("upstream.address", format!("`{}` is not a URL: {e}", upstream.address)))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(invalid(
                    "upstream.address",
                    format!("`{}` must start with http:// or https://", upstream.address),
                ));
            }
        }
        if uri.authority().is_none() {
            return Err(invalid("upstream.address", format!("`{}` has no host", upstream.address)));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(invalid("upstream.address", format!("`{}` must not have a path", upstream.address)));
        }
        let tls_options = upstream.ca.is_some() || upstream.cert.is_some() || upstream.server_name.is_some();
        if uri.scheme_str() == Some("http") && tls_options {
            return Err(invalid("upstream", "`ca`, `cert` and `server_name` need an https:// address"));
        }
        if upstream.cert.is_some() != upstream.key.is_some() {
            return Err(invalid("upstream", "`cert` and `key` go together"));
        }
        if let Some(traces) = &self.traces {
            traces.validate()?;
        }
        if let Some(http_api) = &self.http_api {
            if http_api.max_body_bytes == 0 || http_api.max_body_bytes > default_http_api_max_body_bytes() {
                return Err(invalid("http_api.max_body_bytes", "must be between 1 and 4194304 (Temporal's own limit)"));
            }
            if http_api.max_response_bytes == 0 {
                return Err(invalid("http_api.max_response_bytes", "must be at least 1 byte"));
            }
        }
        if self.audit.fsync == AuditFsync::Interval && self.audit.fsync_interval.is_zero() {
            return Err(invalid("audit.fsync_interval", "must be more than zero (or set `audit.fsync = \"always\"`)"));
        }
        let identity = &self.identity;
        if identity.header.chars().any(|c| c.is_control()) {
            return Err(invalid(
                "identity.header",
                format!("`{}` contains a control character", identity.header.escape_debug()),
            ));
        }
        if let Some(claim) = identity.header_claims.iter().find(|claim| claim.is_empty()) {
            return Err(invalid("identity.header_claims", format!("`{claim}` is not a claim name")));
        }
        if self.listen.max_concurrent_streams == 0 {
            return Err(invalid("listen.max_concurrent_streams", "must be at least 1"));
        }
        let limits = &self.limits;
        if limits.max_message_bytes == 0 || limits.max_inflated_bytes == 0 {
            return Err(invalid("limits", "message limits must be at least 1 byte"));
        }
        // A budget smaller than one framed message would refuse every large call.
        let framed = limits.max_message_bytes.saturating_add(5);
        // Large messages may use 7/8 of a budget (`budget` keeps the rest for small ones).
        let least = framed.saturating_add(framed.div_ceil(7));
        if limits.max_connection_buffered_bytes < least {
            return Err(invalid(
                "limits.max_connection_buffered_bytes",
                format!(
                    "must be at least {least} bytes, for one message of `max_message_bytes` beside the reserve for small ones"
                ),
            ));
        }
        if limits.max_buffered_bytes < limits.max_connection_buffered_bytes {
            return Err(invalid("limits.max_buffered_bytes", "must be at least `max_connection_buffered_bytes`"));
        }
        if limits.max_concurrent_calls == 0 {
            return Err(invalid("limits.max_concurrent_calls", "must be at least 1"));
        }
        if limits.max_waiting_calls_per_principal == 0 {
            return Err(invalid("limits.max_waiting_calls_per_principal", "must be at least 1"));
        }
        if limits.first_message_timeout.is_zero() {
            return Err(invalid("limits.first_message_timeout", "must be more than 0s"));
        }
        let listen = &self.listen;
        if listen.max_connections == Some(0) || listen.max_connections_per_client == 0 {
            return Err(invalid("listen", "connection caps must be at least 1"));
        }
        if listen.handshake_timeout.is_zero() || listen.idle_timeout.is_zero() {
            return Err(invalid("listen", "`handshake_timeout` and `idle_timeout` must be more than 0s"));
        }
        if self.audit.path.as_os_str().is_empty() {
            return Err(invalid("audit.path", "must not be empty (use \"-\" for standard output)"));
        }
        if let Some(admin) = &self.admin
            && admin.address == self.listen.address
            && admin.address.port() != 0
        {
            return Err(invalid("admin.address", "must differ from `listen.address`"));
        }
        if upstream.forward_authorization && upstream.credentials == UpstreamCredentials::Minted {
            return Err(invalid("upstream.forward_authorization", "contradicts `credentials = \"minted\"`"));
        }
        if upstream.credentials == UpstreamCredentials::Minted && self.mint.is_none() {
            return Err(invalid("upstream.credentials", "`minted` needs a `[mint]` section"));
        }
        upstream.validate_api_key(&uri)?;
        if let Some(mint) = &self.mint {
            let uri: http::Uri = mint
                .issuer
                .parse()
                .map_err(|e| invalid("mint.issuer", format!("`{}` is not a URL: {e}", mint.issuer)))?;
            if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.authority().is_none() {
                return Err(invalid("mint.issuer", format!("`{}` must be an http:// or https:// URL", mint.issuer)));
            }
            if mint.issuer.ends_with('/') {
                return Err(invalid("mint.issuer", format!("`{}` must not end with `/`", mint.issuer)));
            }
            if mint.name.is_empty() || mint.name.contains(':') {
                return Err(invalid("mint.name", format!("`{}` must be non-empty and contain no `:`", mint.name)));
            }
            if self.issuers.iter().any(|i| i.name == mint.name) {
                return Err(invalid("mint.name", format!("`{}` is also an `[[issuers]]` name", mint.name)));
            }
            if mint.credential_lifetime < Duration::from_secs(10)
                || mint.credential_lifetime > Duration::from_secs(3600)
            {
                return Err(invalid("mint.credential_lifetime", "must be between 10s and 1h"));
            }
            if mint.max_session < mint.credential_lifetime {
                return Err(invalid("mint.max_session", "must be at least `credential_lifetime`"));
            }
            if mint.key_reload.is_zero() {
                return Err(invalid("mint.key_reload", "must be more than 0s"));
            }
        }
        if let Some(url) = &self.replay.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://"))
        {
            return Err(invalid("replay.redis_url", format!("`{url}` must start with redis://, rediss:// or unix://")));
        }
        if let Some(key_file) = &self.task_tokens.key_file
            && key_file.as_os_str().is_empty()
        {
            return Err(invalid("task_tokens.key_file", "must not be empty (leave it out for a per-process key)"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = |field: &str| format!("issuers[{i}].{field}");
            if issuer.name.is_empty() || issuer.name.contains(':') {
                return Err(invalid(key("name"), format!("`{}` must be non-empty and contain no `:`", issuer.name)));
            }
            if !names.insert(issuer.name.as_str()) {
                return Err(invalid(key("name"), format!("`{}` is used by two issuers", issuer.name)));
            }
            if issuer.leeway > Duration::from_secs(60) {
                return Err(invalid(key("leeway"), "must be at most 60s"));
            }
            if let Some(login) = &issuer.login {
                if login.client_id.is_empty() || login.client_id.chars().any(char::is_control) {
                    return Err(invalid(key("login.client_id"), "must be a non-empty client id"));
                }
                if !login.scopes.iter().any(|s| s == "openid") {
                    return Err(invalid(
                        key("login.scopes"),
                        "must include `openid` (people log in with OpenID Connect)",
                    ));
                }
            }
        }
        let mut limits = std::collections::HashSet::new();
        for (i, limit) in self.rate_limits.iter().enumerate() {
            let key = |field: &str| format!("rate_limits[{i}].{field}");
            if limit.name.is_empty() || !limits.insert(limit.name.as_str()) {
                return Err(invalid(key("name"), format!("`{}` must be non-empty and unique", limit.name)));
            }
            if !(limit.rate.is_finite() && limit.rate > 0.0) {
                return Err(invalid(
                    key("rate"),
                    format!("`{}` must be a positive number of calls a second", limit.rate),
                ));
            }
            if !(limit.burst().is_finite() && limit.burst() >= 1.0) {
                return Err(invalid(key("burst"), format!("`{}` must be at least 1", limit.burst())));
            }
            if limit.max_concurrent == Some(0) {
                return Err(invalid(key("max_concurrent"), "must be at least 1 (omit it for no cap)"));
            }
            let types = ["User", "Service", "CiJob", "Worker"];
            if let Some(bad) = limit.principal_types.iter().find(|t| !types.contains(&t.as_str())) {
                return Err(invalid(key("principal_types"), format!("`{bad}` is not one of {}", types.join(", "))));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [listen]
        address = "127.0.0.1:7233"
        [upstream]
        address = "http://127.0.0.1:7234"
        [policy]
        dir = "policies"
        [audit]
        path = "-"
    "#;

    #[test]
    fn an_api_key_needs_one_source_and_tls_off_this_machine() {
        let upstream = |keys: &str| {
            let text = MINIMAL.replace("address = \"http://127.0.0.1:7234\"", keys);
            Config::parse(&text).map(|c| c.upstream).map_err(|e| e.to_string())
        };
        let ok =
            upstream("address = \"ns.acct.example:7233\"\ncredentials = \"api_key\"\napi_key_env = \"KEY\"").unwrap();
        assert_eq!(ok.address, "https://ns.acct.example:7233", "`host:port` with a key means TLS");
        assert_eq!(ok.credentials(), UpstreamCredentials::ApiKey);
        assert_eq!(ok.api_key_watch_interval, Duration::from_secs(10));
        for keys in [
            "address = \"http://127.0.0.1:7234\"\ncredentials = \"api_key\"\napi_key_file = \"k\"",
            "address = \"http://[::1]:7234\"\ncredentials = \"api_key\"\napi_key_file = \"k\"",
            "address = \"http://localhost:7234\"\ncredentials = \"api_key\"\napi_key_file = \"k\"",
        ] {
            upstream(keys).expect("cleartext to this machine is allowed");
        }
        for (keys, expected) in [
            (
                "address = \"http://temporal.example:7233\"\ncredentials = \"api_key\"\napi_key_file = \"k\"",
                "`upstream.address`: `http://temporal.example:7233` would carry the API key in cleartext: use https://",
            ),
            (
                "address = \"https://t.example\"\ncredentials = \"api_key\"",
                "`upstream.credentials`: `api_key` needs one of `api_key_file` and `api_key_env`",
            ),
            (
                "address = \"https://t.example\"\ncredentials = \"api_key\"\napi_key_file = \"k\"\napi_key_env = \"K\"",
                "`upstream.credentials`: `api_key` needs one of `api_key_file` and `api_key_env`",
            ),
            (
                "address = \"https://t.example\"\napi_key_file = \"k\"",
                "`upstream`: `api_key_file` and `api_key_env` need `credentials = \"api_key\"`",
            ),
            (
                "address = \"https://t.example\"\ncredentials = \"api_key\"\napi_key_env = \"A=B\"",
                "`upstream.api_key_env`: is not an environment variable name",
            ),
            (
                "address = \"https://t.example\"\ncredentials = \"api_key\"\napi_key_env = \"K\"\nforward_authorization = true",
                "`upstream.forward_authorization`: contradicts `credentials = \"api_key\"`",
            ),
            (
                "address = \"t.example:7233\"",
                "`upstream.address`: `t.example:7233` must start with http:// or https://",
            ),
        ] {
            let error = upstream(keys).unwrap_err();
            assert!(error.contains(expected), "{keys}: {error}");
        }
    }

    #[test]
    fn durations_past_ten_years_are_refused() {
        let with = |value: &str| {
            Config::parse(&MINIMAL.replace("[upstream]", &format!("shutdown_grace = \"{value}\"\n[upstream]")))
        };
        assert_eq!(with("3650days").unwrap().listen.shutdown_grace, duration::MAX);
        for value in ["3651days", "18446744073709551615s"] {
            let error = with(value).unwrap_err().to_string();
            assert!(error.contains(&format!("`{value}` is longer than the 10 years a duration may be")), "{error}");
        }
    }

    fn with(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{MINIMAL}\n{extra}"))
    }

    #[test]
    fn an_issuers_login_needs_a_client_id_and_openid() {
        let issuer = |login: &str| {
            with(&format!(
                "[[issuers]]\nname = \"okta\"\nissuer = \"https://idp\"\naudiences = [\"a\"]\nlogin = {login}\n"
            ))
        };
        let ok = issuer("{ client_id = \"cli\" }").unwrap();
        assert_eq!(ok.issuers[0].login.as_ref().unwrap().scopes, ["openid", "profile", "email", "offline_access"]);
        let error = issuer("{ client_id = \"\" }").unwrap_err().to_string();
        assert!(error.contains("issuers[0].login.client_id"), "{error}");
        let error = issuer("{ client_id = \"cli\", scopes = [\"email\"] }").unwrap_err().to_string();
        assert!(error.contains("must include `openid`"), "{error}");
        let error = issuer("{ client_id = \"cli\", secret = \"x\" }").unwrap_err().to_string();
        assert!(error.contains("unknown field `secret`"), "{error}");
    }

    #[test]
    fn traces_are_off_by_default_and_checked_when_on() {
        assert!(with("").unwrap().traces.is_none());
        let on = with("[traces]\nendpoint = \"http://collector:4318/v1/traces\"\n").unwrap();
        let traces = on.traces.unwrap();
        assert_eq!(traces.sample_ratio, 0.01);
        assert!(traces.follow_client_sampling);
        assert_eq!(traces.service_name, "flowgate");
        assert_eq!(traces.max_queue, 2048);
        for (extra, expected) in [
            ("endpoint = \"collector:4318\"", "`traces.endpoint`: `collector:4318` is not an http:// or https:// URL"),
            (
                "endpoint = \"http://c/v1/traces\"\nsample_ratio = 1.5",
                "`traces.sample_ratio`: `1.5` is not between 0 and 1",
            ),
            ("endpoint = \"http://c/v1/traces\"\nca = \"ca.pem\"", "`traces.ca`: needs an https:// `endpoint`"),
            (
                "endpoint = \"http://c/v1/traces\"\nheaders = { \"bad name\" = \"x\" }",
                "`traces.headers`: `bad name` is not a valid header",
            ),
            ("endpoint = \"http://c/v1/traces\"\nmax_queue = 0", "`traces.max_queue`: must be at least 1"),
            ("endpoint = \"http://c/v1/traces\"\nsampling = 1", "unknown field `sampling`"),
        ] {
            let error = with(&format!("[traces]\n{extra}\n")).unwrap_err().to_string();
            assert!(error.contains(expected), "{extra}: {error}");
        }
    }

    #[test]
    fn minimal_config_gets_production_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.listen.max_concurrent_streams, 10_000);
        assert!(!config.upstream.forward_authorization);
        assert_eq!(config.limits.max_message_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse(&MINIMAL.replace("[audit]", "[audit]\nformat = \"json\"")).unwrap_err();
        assert!(err.to_string().contains("unknown field `format`"), "{err}");
        let err = with("[[issuers]]\nname = \"okta\"\naudience = [\"x\"]").unwrap_err();
        assert!(err.to_string().contains("unknown field `audience`"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Config::parse(&MINIMAL.replace("http://127.0.0.1:7234", "127.0.0.1:7234")).unwrap_err();
        assert!(err.to_string().contains("`upstream.address`"), "{err}");
        let err = with("[[issuers]]\nname = \"a:b\"").unwrap_err();
        assert!(err.to_string().contains("`issuers[0].name`"), "{err}");
        let err = with("[[issuers]]\nname = \"okta\"\nleeway = \"5m\"").unwrap_err();
        assert!(err.to_string().contains("`issuers[0].leeway`"), "{err}");
        let err = with("[[issuers]]\nname = \"okta\"\nleeway = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("`soon` is not a duration"), "{err}");
        let err = with("[[issuers]]\nname = \"okta\"\necdsa_high_s = \"maybe\"").unwrap_err();
        assert!(err.to_string().contains("unknown variant `maybe`, expected `refuse` or `accept`"), "{err}");
        let err = with("[[issuers]]\nname = \"okta\"\nprincipal = \"Robot\"").unwrap_err();
        assert!(err.to_string().contains("unknown variant `Robot`"), "{err}");
        let err = Config::parse(&MINIMAL.replace("127.0.0.1:7233", "nowhere")).unwrap_err();
        assert!(err.to_string().contains("address = \"nowhere\""), "{err}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flowgate.toml");
        std::fs::write(&file, MINIMAL.replace("path = \"-\"", "path = \"decisions.jsonl\"")).unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.policy.dir, dir.path().join("policies"));
        assert_eq!(config.audit.path, dir.path().join("decisions.jsonl"));
    }

    #[test]
    fn task_token_key_file_is_optional_and_resolved() {
        assert_eq!(Config::parse(MINIMAL).unwrap().task_tokens.key_file, None);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flowgate.toml");
        std::fs::write(&file, format!("{MINIMAL}\n[task_tokens]\nkey_file = \"secrets/task-token.keys\"")).unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.task_tokens.key_file, Some(dir.path().join("secrets/task-token.keys")));
        let err = with("[task_tokens]\nkey_file = \"\"").unwrap_err();
        assert!(err.to_string().contains("`task_tokens.key_file`"), "{err}");
        let err = with("[task_tokens]\nkeys = \"k\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `keys`"), "{err}");
    }
}
