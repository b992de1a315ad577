//! Keeping the sidecar's credential fresh: subject tokens from the configured source, exchanged
//! at the gateway's token endpoint ([`crate::exchange_client`]) for a flowgate credential.
//!
//! This module owns the source of subject tokens ([`SourceError`] when there is none), one
//! refresh attempt ([`Refresher`]), the schedule (`refresh_at` ± `jitter` of the lifetime, with
//! doubling backoff after a failure) and the [`State`] the data path reads through a `watch`
//! channel: the credential held, usable until a safety margin before it expires, and the last
//! error, which a refused call quotes.
//!
//! Subject tokens are single-use at the gateway, so the refresher remembers (as a digest) the
//! last one the gateway answered for, and exchanges the credential it still holds instead of
//! spending a source token twice. Only an environment token that was refused, with no usable
//! credential left, ends the task: nothing the sidecar can do would help.

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{SidecarConfig, SourceConfig};
use crate::exchange_client::{Credential, ExchangeClient, ExchangeError};
use crate::shutdown;

/// A credential stops being forwarded this long before it expires, or a tenth of its
/// lifetime if that is shorter: a call must reach the gateway while its credential is valid.
const MAX_EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// The first retry after a failed refresh; each further failure doubles it.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest pause between two refresh attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

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
pub(super) struct Held {
    /// `Bearer <token>`, marked sensitive (HPACK never indexes it).
    pub(super) header: http::HeaderValue,
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
pub(super) struct State {
    pub(super) held: Option<Arc<Held>>,
    pub(super) last_error: Option<String>,
}

impl State {
    pub(super) fn usable(&self) -> Option<&Held> {
        self.held.as_deref().filter(|held| held.usable())
    }
}

/// Exchanges subject tokens for credentials; one attempt at a time.
pub(super) struct Refresher {
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
    /// A refresher for `config`'s gateway, scope and source; nothing is fetched yet. Fails on
    /// what cannot get better by waiting (a CA file, an unset environment variable).
    pub(super) fn new(config: &SidecarConfig) -> anyhow::Result<Refresher> {
        let exchange_ca = config.credential.ca.as_deref().or(config.upstream.ca.as_deref());
        Ok(Refresher {
            client: ExchangeClient::new(exchange_ca)?,
            gateway: config.gateway().to_owned(),
            token_endpoint: None,
            scope: config.credential.scope.clone(),
            source: Source::new(&config.credential.source)?,
            spent: None,
        })
    }

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

pub(super) fn rounded(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}

/// Keeps a usable credential in `state` until `signal` fires. Returns an error only when no
/// credential can ever be had again: the environment token was refused and there is no usable
/// credential to exchange instead.
pub(super) async fn keep_fresh(
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
