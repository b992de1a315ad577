//! The sidecar's TOML file: [`SidecarConfig`] and its sections (`[listen]`, `[upstream]`,
//! `[credential]` with its `[credential.source]`), parsed and validated in one place.
//!
//! Everything that a file can get wrong is refused here, at start, with the key it concerns: a
//! URL that is not `http(s)://host`, TLS settings on an `http://` gateway, a refresh schedule
//! that leaves no time for retries. What can only be known at run time (an unset environment
//! variable, an unreadable token file) is left to the refresher. Relative paths are resolved
//! against the file's directory, as in the gateway's own config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, UpstreamConfig};

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
    pub(super) fn gateway_upstream(&self) -> anyhow::Result<UpstreamConfig> {
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
