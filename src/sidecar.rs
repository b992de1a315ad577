//! The sidecar: a local, credential-free gRPC endpoint for a worker, in front of the gateway.
//!
//! A Temporal worker connects to the sidecar (`flowgate sidecar --config sidecar.toml`) on
//! localhost with no credentials at all. The sidecar holds a short-lived flowgate credential
//! and forwards every call to the gateway with `authorization: Bearer <credential>`, replacing
//! whatever the worker sent. The worker never sees a token, and nothing long-lived sits on the
//! machine.
//!
//! Where credentials come from ([`SourceConfig`]): a CI or workload token (an environment
//! variable, or a file such as a Kubernetes projected service-account token), or an OAuth
//! client-credentials grant (an Okta service app). That *subject token* is exchanged at the
//! gateway's token endpoint (RFC 8693, [`crate::exchange_client`]) for a credential with the
//! configured scope.
//!
//! Keeping it fresh: a background task refreshes at `refresh_at` of the credential's lifetime,
//! ± `jitter` (so a fleet of workers does not refresh in lockstep). Subject tokens are
//! single-use at the gateway, so a refresh exchanges the source's token only when it is one
//! the gateway has not answered for yet (the file changed, or Okta issued a new one);
//! otherwise it exchanges the credential it still holds. A refresh that fails is retried with
//! backoff.
//!
//! The one rule on the data path: an expired credential is never forwarded. A credential stops
//! being used a safety margin before it expires; while none is usable, a call waits up to
//! `credential.wait` for one and then fails with a trailers-only `UNAVAILABLE` that says why.
//! Nothing else limits a call: long polls last as long as their own `grpc-timeout`.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ConfigError, UpstreamConfig};
use crate::conn::{self, Activity, ConnectionLimits, ConnectionTracker, Tracked};
use crate::exchange_client::{Credential, ExchangeClient, ExchangeError};
use crate::proxy::{ForwardBody, Upstream, grpc_timeout};
use crate::shutdown;
use crate::status::{Code, trailers_only};

/// A credential stops being forwarded this long before it expires, or a tenth of its
/// lifetime if that is shorter: a call must reach the gateway while its credential is valid.
const MAX_EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// The first retry after a failed refresh; each further failure doubles it.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest pause between two refresh attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

// ---- configuration ---------------------------------------------------------------------------

/// The sidecar's TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    pub listen: SidecarListenConfig,
    pub upstream: SidecarUpstreamConfig,
    pub credential: CredentialConfig,
}

/// `[listen]`: where the worker connects (h2c, no credentials: bind it to localhost).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarListenConfig {
    pub address: SocketAddr,
    /// Concurrent HTTP/2 streams per worker connection; a worker multiplexes many long polls.
    #[serde(default = "crate::config::default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// How long a graceful shutdown waits for in-flight calls (long polls included).
    #[serde(default = "crate::config::default_shutdown_grace", with = "crate::config::duration")]
    pub shutdown_grace: Duration,
}

/// `[upstream]`: the flowgate gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarUpstreamConfig {
    /// `http://host:port` (h2c) or `https://host:port` (TLS, ALPN h2).
    pub address: String,
    /// CA bundle for an `https://` gateway; the web PKI roots otherwise.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key, when the gateway's listener wants mTLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// TLS server name when it differs from the address's host.
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default = "crate::config::default_connect_timeout", with = "crate::config::duration")]
    pub connect_timeout: Duration,
}

/// `[credential]`: what to ask the gateway for, and how to keep it fresh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The scope requested: `namespace:<ns> role:<read|write|worker> task_queue:<q>… workflow_type:<t>…`.
    pub scope: String,
    /// Where discovery finds the token endpoint; `upstream.address` when absent.
    #[serde(default)]
    pub gateway: Option<String>,
    /// CA bundle for an `https://` `gateway`; `upstream.ca` when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// When to refresh, as a fraction of the credential's lifetime.
    #[serde(default = "default_refresh_at")]
    pub refresh_at: f64,
    /// ± this fraction of the lifetime, at random, around `refresh_at`.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// How long a call waits for a valid credential before it fails with `UNAVAILABLE`.
    #[serde(default = "default_wait", with = "crate::config::duration")]
    pub wait: Duration,
    pub source: SourceConfig,
}

fn default_refresh_at() -> f64 {
    0.66
}
fn default_jitter() -> f64 {
    0.1
}
fn default_wait() -> Duration {
    Duration::from_secs(10)
}

/// `[credential.source]`: where subject tokens come from, chosen by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A token in an environment variable (a CI job's OIDC token). It cannot change while the
    /// sidecar runs, so it is exchanged once; refreshes exchange the credential.
    Env { env: String },
    /// A token in a file, read at every refresh (a Kubernetes projected service-account token,
    /// which the kubelet rotates): a changed file is exchanged again.
    File { path: PathBuf },
    /// A fresh access token from an OAuth client-credentials grant at every refresh.
    OktaClientCredentials {
        /// The authorization server's issuer URL; its discovery document names the token endpoint.
        issuer: String,
        client_id: String,
        #[serde(default)]
        client_secret_env: Option<String>,
        #[serde(default)]
        client_secret_file: Option<PathBuf>,
        #[serde(default)]
        scopes: Vec<String>,
        /// CA bundle for the issuer; the web PKI roots when absent.
        #[serde(default)]
        ca: Option<PathBuf>,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), message: message.into() }
}

/// Checks that `url` is `http(s)://host[:port]`, with no path when `bare`.
fn check_url(key: &str, url: &str, bare: bool) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = url.parse().map_err(|e| invalid(key, format!("`{url}` is not a URL: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(invalid(key, format!("`{url}` must be an http:// or https:// URL with a host")));
    }
    if bare && !matches!(uri.path(), "" | "/") {
        return Err(invalid(key, format!("`{url}` must not have a path")));
    }
    Ok(uri)
}

impl SidecarConfig {
    /// Reads, parses and validates a sidecar config file; relative paths in it are relative
    /// to the file.
    pub fn load(path: &Path) -> Result<SidecarConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config = SidecarConfig::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            other => other,
        })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Parses and validates config text (paths stay as written).
    pub fn parse(text: &str) -> Result<SidecarConfig, ConfigError> {
        let config: SidecarConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string().trim_end().to_owned() })?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let upstream = &mut self.upstream;
        for p in
            [&mut upstream.ca, &mut upstream.cert, &mut upstream.key, &mut self.credential.ca].into_iter().flatten()
        {
            resolve(p);
        }
        match &mut self.credential.source {
            SourceConfig::Env { .. } => {}
            SourceConfig::File { path } => resolve(path),
            SourceConfig::OktaClientCredentials { client_secret_file, ca, .. } => {
                for p in [client_secret_file, ca].into_iter().flatten() {
                    resolve(p);
                }
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let upstream = &self.upstream;
        let uri = check_url("upstream.address", &upstream.address, true)?;
        if uri.scheme_str() == Some("http")
            && (upstream.ca.is_some() || upstream.cert.is_some() || upstream.server_name.is_some())
        {
            return Err(invalid("upstream", "`ca`, `cert` and `server_name` need an https:// address"));
        }
        if upstream.cert.is_some() != upstream.key.is_some() {
            return Err(invalid("upstream", "`cert` and `key` go together"));
        }
        if self.listen.max_concurrent_streams == 0 {
            return Err(invalid("listen.max_concurrent_streams", "must be at least 1"));
        }
        let credential = &self.credential;
        if credential.scope.split_whitespace().next().is_none() {
            return Err(invalid("credential.scope", "must not be empty (e.g. \"namespace:payments role:worker\")"));
        }
        if let Some(gateway) = &credential.gateway {
            check_url("credential.gateway", gateway, false)?;
        }
        if !(credential.refresh_at > 0.0 && credential.refresh_at < 1.0) {
            return Err(invalid("credential.refresh_at", format!("{} must be between 0 and 1", credential.refresh_at)));
        }
        if !(credential.jitter >= 0.0 && credential.jitter < credential.refresh_at) {
            return Err(invalid(
                "credential.jitter",
                format!(
                    "{} must be at least 0 and less than `refresh_at` ({})",
                    credential.jitter, credential.refresh_at
                ),
            ));
        }
        // The latest refresh must leave room for retries before the credential stops being used.
        if credential.refresh_at + credential.jitter > 0.85 {
            return Err(invalid(
                "credential.refresh_at",
                format!(
                    "`refresh_at` + `jitter` is {:.2}: refreshing after 85% of the lifetime leaves no time for retries",
                    credential.refresh_at + credential.jitter
                ),
            ));
        }
        match &credential.source {
            SourceConfig::Env { env } => {
                if env.is_empty() || env.contains('=') {
                    return Err(invalid(
                        "credential.source.env",
                        format!("`{env}` is not an environment variable name"),
                    ));
                }
            }
            SourceConfig::File { path } => {
                if path.as_os_str().is_empty() {
                    return Err(invalid("credential.source.path", "must not be empty"));
                }
            }
            SourceConfig::OktaClientCredentials {
                issuer, client_id, client_secret_env, client_secret_file, ..
            } => {
                check_url("credential.source.issuer", issuer, false)?;
                if client_id.is_empty() {
                    return Err(invalid("credential.source.client_id", "must not be empty"));
                }
                if client_secret_env.is_some() == client_secret_file.is_some() {
                    return Err(invalid(
                        "credential.source",
                        "give exactly one of `client_secret_env` and `client_secret_file`",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The gateway address discovery starts from.
    pub fn gateway(&self) -> &str {
        self.credential.gateway.as_deref().unwrap_or(&self.upstream.address)
    }

    /// The upstream as the gateway's own forwarding client takes it. Built through serde, so
    /// settings the gateway's upstream gains later keep their defaults here.
    fn gateway_upstream(&self) -> anyhow::Result<UpstreamConfig> {
        let upstream = &self.upstream;
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let value = serde_json::json!({
            "address": upstream.address,
            "ca": path(&upstream.ca),
            "cert": path(&upstream.cert),
            "key": path(&upstream.key),
            "server_name": upstream.server_name,
            "connect_timeout": format!("{}ms", upstream.connect_timeout.as_millis()),
        });
        let value = serde_json::Value::Object(
            value
                .as_object()
                .expect("an object")
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        Ok(serde_json::from_value(value)?)
    }
}

// ---- subject tokens --------------------------------------------------------------------------

/// Why no subject token could be had from the source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("environment variable `{0}` is not set or empty")]
    MissingEnv(String),
    #[error("cannot read `{path}`: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("`{0}` is empty")]
    EmptyFile(PathBuf),
    #[error("client credentials at `{issuer}`: {source}")]
    ClientCredentials { issuer: String, source: ExchangeError },
}

/// A client secret, read when it is needed (a mounted secret file may be rotated).
enum ClientSecret {
    Value(String),
    File(PathBuf),
}

/// Where subject tokens come from, ready to use.
enum Source {
    Env { token: String },
    File { path: PathBuf },
    ClientCredentials(Box<ClientCredentialsSource>),
}

/// An OAuth client that gets its own access token (client-credentials grant) at every refresh.
struct ClientCredentialsSource {
    client: ExchangeClient,
    issuer: String,
    client_id: String,
    secret: ClientSecret,
    scopes: Vec<String>,
    /// Found by discovery, kept until a request to it fails.
    token_endpoint: Option<String>,
}

fn read_token_file(path: &Path) -> Result<String, SourceError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SourceError::File { path: path.to_owned(), reason: e.to_string() })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(SourceError::EmptyFile(path.to_owned()));
    }
    Ok(token.to_owned())
}

impl Source {
    /// Everything that cannot get better by waiting is checked here: an environment variable
    /// that is not set now never will be.
    fn new(config: &SourceConfig) -> Result<Source, anyhow::Error> {
        let env = |name: &str| match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
            _ => Err(SourceError::MissingEnv(name.to_owned())),
        };
        Ok(match config {
            SourceConfig::Env { env: name } => Source::Env { token: env(name)? },
            SourceConfig::File { path } => Source::File { path: path.clone() },
            SourceConfig::OktaClientCredentials {
                issuer,
                client_id,
                client_secret_env,
                client_secret_file,
                scopes,
                ca,
            } => Source::ClientCredentials(Box::new(ClientCredentialsSource {
                client: ExchangeClient::new(ca.as_deref())?,
                issuer: issuer.clone(),
                client_id: client_id.clone(),
                secret: match (client_secret_env, client_secret_file) {
                    (Some(name), _) => ClientSecret::Value(env(name)?),
                    (None, Some(path)) => ClientSecret::File(path.clone()),
                    (None, None) => unreachable!("validation requires one of them"),
                },
                scopes: scopes.clone(),
                token_endpoint: None,
            })),
        })
    }

    /// The source's current token.
    async fn token(&mut self) -> Result<String, SourceError> {
        match self {
            Source::Env { token } => Ok(token.clone()),
            Source::File { path } => read_token_file(path),
            Source::ClientCredentials(source) => source.token().await,
        }
    }

    /// Whether the source can ever offer another token. An environment variable cannot: once
    /// its token is spent and the credential gone, nothing the sidecar does can help.
    fn can_change(&self) -> bool {
        !matches!(self, Source::Env { .. })
    }

    fn describe(&self) -> &'static str {
        match self {
            Source::Env { .. } => "environment token",
            Source::File { .. } => "token file",
            Source::ClientCredentials(_) => "client-credentials token",
        }
    }
}

impl ClientCredentialsSource {
    async fn token(&mut self) -> Result<String, SourceError> {
        let failed = |source| SourceError::ClientCredentials { issuer: self.issuer.clone(), source };
        let endpoint = match &self.token_endpoint {
            Some(endpoint) => endpoint.clone(),
            None => self.client.discover_issuer(&self.issuer).await.map_err(failed)?.token_endpoint,
        };
        let secret = match &self.secret {
            ClientSecret::Value(value) => value.clone(),
            ClientSecret::File(path) => read_token_file(path)?,
        };
        match self.client.client_credentials(&endpoint, &self.client_id, &secret, &self.scopes).await {
            Ok(credential) => {
                self.token_endpoint = Some(endpoint);
                Ok(credential.token)
            }
            Err(error) => {
                // Discover again next time: the endpoint may have moved.
                self.token_endpoint = None;
                Err(failed(error))
            }
        }
    }
}

// ---- refreshing ------------------------------------------------------------------------------

/// Why one refresh attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    #[error("discovering the token endpoint of `{gateway}`: {source}")]
    Discovery { gateway: String, source: ExchangeError },
    #[error("exchanging the {subject}: {source}")]
    Exchange { subject: &'static str, source: ExchangeError },
    #[error("no subject token: {0}")]
    Source(#[from] SourceError),
}

impl RefreshError {
    /// Whether the gateway answered and said no (as opposed to not answering).
    fn is_refusal(&self) -> bool {
        matches!(self, RefreshError::Exchange { source, .. } if !source.is_transient())
    }
}

/// The credential in use, as the data path needs it.
struct Held {
    /// `Bearer <token>`, marked sensitive (HPACK never indexes it).
    header: http::HeaderValue,
    /// The token itself, to exchange for the next credential.
    token: String,
    /// Forwarded until this instant: the expiry less the safety margin.
    usable_until: Instant,
    lifetime: Duration,
}

impl Held {
    fn new(credential: &Credential) -> Held {
        let mut header = http::HeaderValue::try_from(format!("Bearer {}", credential.token))
            .expect("the exchange client checked that the token fits in a header");
        header.set_sensitive(true);
        let margin = MAX_EXPIRY_MARGIN.min(credential.lifetime / 10);
        Held {
            header,
            token: credential.token.clone(),
            usable_until: credential.expires_at_instant - margin,
            lifetime: credential.lifetime,
        }
    }

    fn usable(&self) -> bool {
        Instant::now() < self.usable_until
    }
}

/// What the data path sees: the credential, if any, and why there is no usable one.
#[derive(Default)]
struct State {
    held: Option<Arc<Held>>,
    last_error: Option<String>,
}

impl State {
    fn usable(&self) -> Option<&Held> {
        self.held.as_deref().filter(|held| held.usable())
    }
}

/// Exchanges subject tokens for credentials; one attempt at a time.
struct Refresher {
    client: ExchangeClient,
    gateway: String,
    token_endpoint: Option<String>,
    scope: String,
    source: Source,
    /// Digest of the last source token the gateway answered for, accepted or refused:
    /// subject tokens are single-use, so that one is spent. A digest, not the token: nothing
    /// here needs it again.
    spent: Option<[u8; 32]>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Refresher {
    async fn endpoint(&mut self) -> Result<String, RefreshError> {
        if let Some(endpoint) = &self.token_endpoint {
            return Ok(endpoint.clone());
        }
        let discovery = self
            .client
            .discover(&self.gateway)
            .await
            .map_err(|source| RefreshError::Discovery { gateway: self.gateway.clone(), source })?;
        self.token_endpoint = Some(discovery.token_endpoint.clone());
        Ok(discovery.token_endpoint)
    }

    async fn exchange(&mut self, subject: &'static str, token: &str) -> Result<Credential, RefreshError> {
        let endpoint = self.endpoint().await?;
        let result = self.client.exchange(&endpoint, token, &self.scope).await;
        if let Err(error) = &result
            && !matches!(error, ExchangeError::Refused { .. })
        {
            // Unreachable or a non-OAuth answer: discover again next time.
            self.token_endpoint = None;
        }
        result.map_err(|source| RefreshError::Exchange { subject, source })
    }

    /// One refresh: the source's token if it is new, else the credential still held. Returns
    /// the new credential and what was exchanged for it.
    async fn refresh(&mut self, held: Option<&Held>) -> Result<(Credential, &'static str), RefreshError> {
        let held = held.filter(|held| held.usable());
        // Find the gateway first: a fresh client-credentials token is not fetched for nothing.
        self.endpoint().await?;
        let source_token = match self.source.token().await {
            Ok(token) => Some(token),
            // With a credential in hand a missing source token does not matter yet.
            Err(error) if held.is_some() => {
                tracing::warn!(%error, "cannot read a subject token; exchanging the current credential");
                None
            }
            Err(error) => return Err(error.into()),
        };
        let subject = self.source.describe();
        if let Some(token) = &source_token
            && self.spent != Some(digest(token))
        {
            let result = self.exchange(subject, token).await;
            // The gateway answered for the token (a credential or a refusal): it is spent. A
            // token that never got an answer (gateway down) is still new next time.
            let answered = result.as_ref().err().is_none_or(RefreshError::is_refusal);
            if answered {
                self.spent = Some(digest(token));
            }
            match result {
                Ok(credential) => return Ok((credential, subject)),
                Err(error) if answered && held.is_some() => {
                    tracing::warn!(%error, "the new subject token was refused; exchanging the current credential");
                }
                Err(error) => return Err(error),
            }
        }
        match (held, source_token) {
            (Some(held), _) => {
                let token = held.token.clone();
                Ok((self.exchange("current credential", &token).await?, "current credential"))
            }
            // Spent already, but there is nothing else: the gateway will say why it refuses.
            (None, Some(token)) => Ok((self.exchange(subject, &token).await?, subject)),
            (None, None) => unreachable!("a missing source token without a credential returned above"),
        }
    }
}

/// A number in [-1, 1), different each call: std's hash keys are random per process and
/// advance with every `RandomState`, which is plenty for spreading refreshes.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// When to refresh `credential`: `refresh_at` ± `jitter` of its lifetime, counted from
/// when it was requested, and never later than the moment it stops being usable.
fn next_refresh(credential: &Credential, held: &Held, refresh_at: f64, jitter: f64) -> Instant {
    let fraction = (refresh_at + jitter * random_unit()).clamp(0.05, 0.95);
    let issued = credential.expires_at_instant - credential.lifetime;
    (issued + credential.lifetime.mul_f64(fraction)).min(held.usable_until)
}

/// How long to wait after the `failures`th failed attempt in a row: doubling from
/// [`FIRST_RETRY`], ±20%, at most [`MAX_RETRY`] or half the last credential's `lifetime` (a
/// 2-minute credential is not retried every 30 s); and while the credential is still usable
/// (`usable_for`), at most a quarter of that, so several attempts fit before it expires.
fn retry_delay(failures: u32, lifetime: Option<Duration>, usable_for: Duration) -> Duration {
    let mut delay = FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_RETRY);
    if let Some(lifetime) = lifetime {
        delay = delay.min((lifetime / 2).max(Duration::from_secs(1)));
    }
    if !usable_for.is_zero() {
        delay = delay.min((usable_for / 4).max(Duration::from_millis(100)));
    }
    delay.mul_f64(1.0 + 0.2 * random_unit())
}

fn rounded(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}

/// Keeps a usable credential in `state` until `signal` fires. Returns an error only when no
/// credential can ever be had again: the environment token was refused and there is no usable
/// credential to exchange instead.
async fn keep_fresh(
    mut refresher: Refresher,
    state: watch::Sender<State>,
    refresh_at: f64,
    jitter: f64,
    mut signal: shutdown::Signal,
) -> Result<(), RefreshError> {
    let mut failures = 0u32;
    loop {
        let held = state.borrow().held.clone();
        let attempt = tokio::select! {
            attempt = refresher.refresh(held.as_deref()) => attempt,
            () = signal.wait() => return Ok(()),
        };
        let pause = match attempt {
            Ok((credential, subject)) => {
                failures = 0;
                let next = Held::new(&credential);
                let at = next_refresh(&credential, &next, refresh_at, jitter);
                tracing::info!(
                    exchanged = subject,
                    lifetime = ?credential.lifetime,
                    next_refresh_in = ?rounded(at.saturating_duration_since(Instant::now())),
                    scope = %credential.scope,
                    "credential refreshed"
                );
                state.send_replace(State { held: Some(Arc::new(next)), last_error: None });
                at.saturating_duration_since(Instant::now())
            }
            Err(error) => {
                failures += 1;
                let usable_for = held
                    .as_ref()
                    .map(|held| held.usable_until.saturating_duration_since(Instant::now()))
                    .filter(|usable_for| !usable_for.is_zero());
                if usable_for.is_none() && !refresher.source.can_change() && error.is_refusal() {
                    tracing::error!(%error, "no credential, and the environment token was refused: giving up");
                    return Err(error);
                }
                let delay =
                    retry_delay(failures, held.as_ref().map(|held| held.lifetime), usable_for.unwrap_or_default());
                tracing::warn!(
                    %error,
                    retry_in = ?rounded(delay),
                    credential_usable_for = usable_for.map(|d| tracing::field::debug(rounded(d))),
                    "credential refresh failed"
                );
                state.send_modify(|state| state.last_error = Some(error.to_string()));
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = signal.wait() => return Ok(()),
        }
    }
}

// ---- the data path ---------------------------------------------------------------------------

type SidecarBody = Either<Incoming, Empty<Bytes>>;

/// Forwards the worker's calls with the current credential.
struct Forwarder {
    upstream: Upstream,
    state: watch::Receiver<State>,
    wait: Duration,
}

impl Forwarder {
    /// The `authorization` header of a usable credential, waiting up to `wait` for one.
    async fn credential(&self, wait: Duration) -> Result<http::HeaderValue, String> {
        let mut state = self.state.clone();
        // The header is taken in the same look that found it usable: validity is a matter of
        // time, so a second look could disagree.
        let mut header = None;
        let found = tokio::time::timeout(
            wait,
            state.wait_for(|state| {
                header = state.usable().map(|held| held.header.clone());
                header.is_some()
            }),
        )
        .await
        .map(|found| found.map(drop));
        match (found, header) {
            (Ok(Ok(())), Some(header)) => Ok(header),
            (Ok(_), _) => Err("the sidecar is shutting down".to_owned()),
            (Err(_), _) => {
                let state = state.borrow();
                let why = match (&state.last_error, &state.held) {
                    (Some(error), _) => format!("last refresh failed: {error}"),
                    (None, None) => "the first token exchange has not completed".to_owned(),
                    (None, Some(_)) => "the credential expired and no refresh has completed".to_owned(),
                };
                Err(format!(
                    "flowgate sidecar: no valid credential after waiting {}: {why}",
                    humantime::format_duration(rounded(wait))
                ))
            }
        }
    }

    async fn handle(&self, request: http::Request<Incoming>) -> http::Response<SidecarBody> {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        let deadline = grpc_timeout(&parts.headers);
        // A call whose own deadline is shorter gives up sooner anyway.
        let wait = deadline.map_or(self.wait, |deadline| deadline.min(self.wait));
        let authorization = match self.credential(wait).await {
            Ok(header) => header,
            Err(message) => {
                tracing::warn!(path = parts.uri.path(), %message, "call refused");
                return trailers_only::<Empty<Bytes>>(Code::Unavailable, &message).map(Either::Right);
            }
        };
        // `insert` replaces every `authorization` value the worker sent.
        parts.headers.insert(http::header::AUTHORIZATION, authorization);
        let deadline = deadline.map(|deadline| deadline.saturating_sub(started.elapsed()));
        match self.upstream.send(parts, ForwardBody::new(Bytes::new(), Some(body), None), deadline).await {
            Ok(response) => response.map(Either::Left),
            Err(error) => {
                let refusal = crate::status::Refusal::from(error);
                trailers_only::<Empty<Bytes>>(refusal.code(), &refusal.to_string()).map(Either::Right)
            }
        }
    }
}

/// Serves the worker on `listener` until `shutdown` resolves, then drains in-flight calls for
/// up to `listen.shutdown_grace`. What can fail at once (TLS material, an unset environment
/// variable) fails before the first connection; the first credential is fetched in the
/// background, and calls made before it arrives wait for it (up to `credential.wait`).
///
/// It also stops, with an error, when no credential can ever be had again: the gateway refused
/// the environment token and no usable credential is left. A CI step then fails with the
/// gateway's reason instead of hanging on `UNAVAILABLE`.
pub async fn run_sidecar(
    listener: TcpListener,
    config: SidecarConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let upstream = Upstream::new(&config.gateway_upstream()?)?;
    let exchange_ca = config.credential.ca.as_deref().or(config.upstream.ca.as_deref());
    let refresher = Refresher {
        client: ExchangeClient::new(exchange_ca)?,
        gateway: config.gateway().to_owned(),
        token_endpoint: None,
        scope: config.credential.scope.clone(),
        source: Source::new(&config.credential.source)?,
        spent: None,
    };
    let (state_sender, state) = watch::channel(State::default());
    let (trigger, signal) = shutdown::channel();
    let mut refresh_task = tokio::spawn(keep_fresh(
        refresher,
        state_sender,
        config.credential.refresh_at,
        config.credential.jitter,
        signal,
    ));
    let forwarder = Arc::new(Forwarder { upstream, state, wait: config.credential.wait });

    // The worker's connections get the gateway's default protections (caps from the open-file
    // limit, handshake deadline, idle timeout): the sidecar is local, but a stuck or runaway
    // worker must not exhaust its descriptors either.
    let limits = ConnectionLimits {
        max_connections: conn::default_max_connections(conn::raise_nofile_limit()),
        max_connections_per_client: crate::config::default_max_connections_per_client(),
        handshake_timeout: crate::config::default_handshake_timeout(),
        idle_timeout: crate::config::default_idle_timeout(),
    };
    let builder = Arc::new(crate::server::http2_server(config.listen.max_concurrent_streams, limits.handshake_timeout));
    let tracker = ConnectionTracker::new("sidecar", limits, Arc::new(crate::telemetry::Metrics::new()));
    let (drain, draining) = shutdown::channel();
    tracing::info!(
        address = %listener.local_addr()?,
        upstream = %config.upstream.address,
        scope = %config.credential.scope,
        "flowgate sidecar is serving"
    );

    tokio::pin!(shutdown);
    let mut gave_up = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
            finished = &mut refresh_task => {
                gave_up = Some(finished);
                break;
            }
        };
        let activity = Activity::new();
        let Ok(slot) = tracker.admit(peer, &activity) else { continue };
        let _ = stream.set_nodelay(true);
        let service = {
            let forwarder = forwarder.clone();
            let activity = activity.clone();
            hyper::service::service_fn(move |request| {
                let forwarder = forwarder.clone();
                let in_flight = activity.request();
                async move {
                    let response = forwarder.handle(request).await;
                    Ok::<_, std::convert::Infallible>(response.map(|body| Tracked::new(body, in_flight)))
                }
            })
        };
        let builder = builder.clone();
        let connect = async move {
            Ok::<_, std::convert::Infallible>(builder.serve_connection(TokioIo::new(stream), service).into_owned())
        };
        tokio::spawn(conn::serve(slot, peer, activity, connect, draining.clone()));
    }

    tracing::info!(grace = ?config.listen.shutdown_grace, "shutting down: draining in-flight calls");
    drop(listener);
    drain.fire();
    tokio::select! {
        () = tracker.drained() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(config.listen.shutdown_grace) => tracing::warn!("grace period over; closing the remaining connections"),
    }
    // The credential stays fresh until the last call is done.
    trigger.fire();
    match gave_up {
        None => refresh_task.await?.map_err(anyhow::Error::from),
        Some(finished) => Err(match finished? {
            Ok(()) => anyhow::anyhow!("the credential refresh stopped"),
            Err(error) => anyhow::anyhow!("no credential can be had: {error}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn credential(lifetime: Duration) -> Credential {
        Credential {
            token: "t".into(),
            issued_token_type: None,
            lifetime,
            expires_at: SystemTime::now() + lifetime,
            expires_at_instant: Instant::now() + lifetime,
            scope: "namespace:a".into(),
        }
    }

    #[test]
    fn refreshes_land_within_the_jitter_and_before_the_margin() {
        let credential = credential(Duration::from_secs(100));
        let held = Held::new(&credential);
        assert_eq!(credential.expires_at_instant - held.usable_until, Duration::from_secs(5));
        let issued = credential.expires_at_instant - credential.lifetime;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let at = next_refresh(&credential, &held, 0.66, 0.1) - issued;
            assert!(at >= Duration::from_secs(56) && at <= Duration::from_secs(76), "{at:?}");
            seen.insert(at.as_secs());
        }
        assert!(seen.len() > 5, "jitter spreads refreshes: {seen:?}");
    }

    #[test]
    fn short_credentials_get_a_proportional_margin() {
        let held = Held::new(&credential(Duration::from_secs(2)));
        let margin = Instant::now() + Duration::from_secs(2) - held.usable_until;
        assert!(margin >= Duration::from_millis(190) && margin <= Duration::from_millis(210), "{margin:?}");
    }

    #[test]
    fn retries_back_off_but_fit_before_expiry() {
        let none = Duration::ZERO;
        assert!(retry_delay(1, None, none) <= Duration::from_millis(300));
        assert!(retry_delay(3, None, none) >= Duration::from_millis(800));
        assert!(retry_delay(40, None, none) <= MAX_RETRY.mul_f64(1.2));
        assert!(retry_delay(40, Some(Duration::from_secs(3600)), none) >= MAX_RETRY.mul_f64(0.8));
        // A short-lived credential is retried at the pace of its lifetime, expired or not.
        assert!(retry_delay(40, Some(Duration::from_secs(2)), none) <= Duration::from_millis(1200));
        assert!(
            retry_delay(40, Some(Duration::from_secs(2)), Duration::from_millis(800)) <= Duration::from_millis(240)
        );
    }

    #[test]
    fn random_units_stay_in_range() {
        for _ in 0..1000 {
            let r = random_unit();
            assert!((-1.0..1.0).contains(&r), "{r}");
        }
    }
}
