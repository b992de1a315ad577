//! The API key flowgate presents to its upstream (`upstream.credentials = "api_key"`): how
//! flowgate stands in front of Temporal Cloud, or of any Temporal that knows flowgate as one
//! identity.
//!
//! Temporal Cloud authenticates a connection by mTLS or by an API key; either way it sees one
//! identity, and its roles stop at the namespace. flowgate holds that identity and adds what
//! Cloud lacks: each caller authenticated on its own, each call authorized per workflow type,
//! task queue and action, and each decision recorded. The key is sent as `authorization:
//! Bearer <key>` on every request the upstream connection carries (forwarded calls, namespace
//! lookups, failing a refused workflow task, health checks), so no path can leave without it
//! and no caller's own `authorization` reaches Cloud.
//!
//! The key comes from a file (`api_key_file`, a mounted secret) or an environment variable
//! (`api_key_env`). A file is read again every `api_key_watch_interval` (polling, for the
//! same reasons as the policy watch: a Kubernetes secret changes by swapping a symlink), so a
//! rotated key is used without a restart. A key that cannot be read or is not a valid key
//! leaves the last good one in force: the error is logged, counted in
//! `flowgate_upstream_key_reload_total{result="failure"}`, and not logged again until the file
//! changes. The key itself is never logged; its SHA-256 prefix names it.
//!
//! Cost on the hot path: one atomic load of the current header value and a reference-count
//! increment.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::Digest;

use crate::config::{UpstreamConfig, UpstreamCredentials};
use crate::shutdown::Signal;
use crate::telemetry::Metrics;

/// Longer than any real API key (Temporal Cloud's are a few hundred bytes), short enough that
/// a wrong file (a certificate bundle, a log) is refused rather than sent.
const MAX_KEY_BYTES: usize = 8 * 1024;

/// Why a key was not taken.
#[derive(Debug, thiserror::Error)]
#[error("upstream API key from {origin}: {reason}")]
pub struct ApiKeyError {
    origin: String,
    reason: String,
}

/// Where the key is read from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Env(String),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::File(path) => format!("`{}`", path.display()),
            Source::Env(name) => format!("environment variable `{name}`"),
        }
    }

    fn error(&self, reason: impl Into<String>) -> ApiKeyError {
        ApiKeyError { origin: self.describe(), reason: reason.into() }
    }

    /// The key's bytes as stored (blocking: a file read).
    fn read(&self) -> Result<Vec<u8>, ApiKeyError> {
        match self {
            Source::File(path) => {
                let mut bytes = Vec::new();
                let file = std::fs::File::open(path).map_err(|e| self.error(format!("cannot read it: {e}")))?;
                std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_KEY_BYTES as u64 + 1024), &mut bytes)
                    .map_err(|e| self.error(format!("cannot read it: {e}")))?;
                Ok(bytes)
            }
            Source::Env(name) => match std::env::var_os(name) {
                Some(value) => Ok(value.into_encoded_bytes()),
                None => Err(self.error("it is not set")),
            },
        }
    }
}

/// The upstream's API key, as an `authorization` value, swapped when its file changes.
pub struct ApiKey {
    header: ArcSwap<http::HeaderValue>,
    source: Source,
    watch_interval: Duration,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey").field("source", &self.source).field("key", &self.fingerprint()).finish()
    }
}

impl ApiKey {
    /// The key `config` names, read now; `None` unless `credentials = "api_key"`.
    pub fn load(config: &UpstreamConfig) -> Result<Option<ApiKey>, ApiKeyError> {
        if config.credentials() != UpstreamCredentials::ApiKey {
            return Ok(None);
        }
        let source = match (&config.api_key_file, &config.api_key_env) {
            (Some(path), _) => Source::File(path.clone()),
            (None, Some(name)) => Source::Env(name.clone()),
            (None, None) => {
                return Err(ApiKeyError {
                    origin: "the config".into(),
                    reason: "no `api_key_file` or `api_key_env`".into(),
                });
            }
        };
        let header = bearer(&source, &source.read()?)?;
        Ok(Some(ApiKey {
            header: ArcSwap::from_pointee(header),
            source,
            watch_interval: config.api_key_watch_interval,
        }))
    }

    /// The `authorization` value to send now.
    pub fn header(&self) -> http::HeaderValue {
        (**self.header.load()).clone()
    }

    /// A name for the key in force that does not reveal it: the first 12 hex digits of the
    /// SHA-256 of the header value.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.header.load())
    }

    /// Reads the key again; a new valid key replaces the old one. `Ok(true)` when it changed.
    pub fn reload(&self) -> Result<bool, ApiKeyError> {
        let header = bearer(&self.source, &self.source.read()?)?;
        if header == **self.header.load() {
            return Ok(false);
        }
        self.header.store(Arc::new(header));
        Ok(true)
    }

    /// Watches `api_key_file` until shutdown (an environment variable cannot change).
    pub fn spawn_watch(self: &Arc<Self>, metrics: Arc<Metrics>, mut shutdown: Signal) {
        if !matches!(self.source, Source::File(_)) {
            return;
        }
        let key = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(key.watch_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            // The last failure logged, so that a file missing for an hour is one log line.
            let mut last_failure: Option<String> = None;
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = ticks.tick() => {}
                }
                let reading = key.clone();
                let result = match tokio::task::spawn_blocking(move || reading.reload()).await {
                    Ok(result) => result,
                    Err(error) => Err(key.source.error(format!("the read failed: {error}"))),
                };
                match result {
                    Ok(false) => last_failure = None,
                    Ok(true) => {
                        last_failure = None;
                        metrics.upstream_key_reloaded(true);
                        tracing::info!(key = %key.fingerprint(), "upstream API key changed: the new key is in use");
                    }
                    Err(error) => {
                        let text = error.to_string();
                        if last_failure.as_deref() != Some(text.as_str()) {
                            metrics.upstream_key_reloaded(false);
                            tracing::error!(
                                error = %text,
                                key = %key.fingerprint(),
                                "upstream API key not reloaded: the last good key stays in use"
                            );
                            last_failure = Some(text);
                        }
                    }
                }
            }
        });
    }
}

/// `Bearer <key>` from the stored bytes: surrounding whitespace (a secret file's final
/// newline) is dropped; the rest must be one token of visible ASCII.
fn bearer(source: &Source, stored: &[u8]) -> Result<http::HeaderValue, ApiKeyError> {
    let key = stored.trim_ascii();
    if key.is_empty() {
        return Err(source.error("the key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(source.error(format!("the key is longer than {MAX_KEY_BYTES} bytes")));
    }
    if let Some(at) = key.iter().position(|b| !b.is_ascii_graphic()) {
        return Err(source.error(format!(
            "byte {at} of the key is not a visible ASCII character (a key is one word: no `Bearer ` prefix, no spaces)"
        )));
    }
    let mut header = http::HeaderValue::from_bytes(&[b"Bearer ", key].concat())
        .map_err(|_| source.error("the key is not a valid header value"))?;
    header.set_sensitive(true);
    Ok(header)
}

fn fingerprint(header: &http::HeaderValue) -> String {
    let digest = sha2::Sha256::digest(header.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> UpstreamConfig {
        toml::from_str(text).unwrap()
    }

    fn file_key(path: &std::path::Path) -> ApiKey {
        let text = format!("address = \"https://cloud.test:7233\"\ncredentials = \"api_key\"\napi_key_file = {path:?}");
        ApiKey::load(&config(&text)).unwrap().unwrap()
    }

    #[test]
    fn a_key_file_becomes_a_sensitive_bearer_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "  abc.DEF-123_xyz\n").unwrap();
        let key = file_key(&path);
        let header = key.header();
        assert_eq!(header.to_str().unwrap(), "Bearer abc.DEF-123_xyz");
        assert!(header.is_sensitive());
        assert!(!format!("{key:?}").contains("abc.DEF"), "{key:?}");
        assert_eq!(key.fingerprint().len(), 12);
    }

    #[test]
    fn other_credentials_have_no_key() {
        assert!(ApiKey::load(&config("address = \"http://127.0.0.1:7233\"")).unwrap().is_none());
    }

    #[test]
    fn bad_keys_are_refused_with_their_origin() {
        let source = Source::File("/run/secrets/key".into());
        for (stored, expected) in [
            (&b"\n \n"[..], "the key is empty"),
            (b"Bearer abc", "byte 6 of the key is not a visible ASCII character"),
            (b"ab\x00c", "byte 2"),
            ("kéy".as_bytes(), "byte 1"),
        ] {
            let error = bearer(&source, stored).unwrap_err().to_string();
            assert!(error.starts_with("upstream API key from `/run/secrets/key`: "), "{error}");
            assert!(error.contains(expected), "{error}");
        }
        let long = vec![b'a'; MAX_KEY_BYTES + 1];
        assert!(bearer(&source, &long).unwrap_err().to_string().contains("longer than 8192 bytes"));
    }

    #[test]
    fn a_missing_file_or_variable_fails_the_load() {
        let text = "address = \"https://cloud.test\"\ncredentials = \"api_key\"\napi_key_file = \"/nonexistent/key\"";
        let error = ApiKey::load(&config(text)).unwrap_err().to_string();
        assert!(error.contains("`/nonexistent/key`: cannot read it"), "{error}");
        let text =
            "address = \"https://cloud.test\"\ncredentials = \"api_key\"\napi_key_env = \"FLOWGATE_TEST_UNSET_KEY\"";
        let error = ApiKey::load(&config(text)).unwrap_err().to_string();
        assert_eq!(error, "upstream API key from environment variable `FLOWGATE_TEST_UNSET_KEY`: it is not set");
    }

    #[test]
    fn a_reload_takes_a_new_key_and_keeps_the_last_good_one_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "first").unwrap();
        let key = file_key(&path);
        assert!(!key.reload().unwrap(), "unchanged");
        std::fs::write(&path, "second\n").unwrap();
        assert!(key.reload().unwrap());
        assert_eq!(key.header().to_str().unwrap(), "Bearer second");
        std::fs::write(&path, "").unwrap();
        assert!(key.reload().unwrap_err().to_string().contains("empty"));
        std::fs::remove_file(&path).unwrap();
        assert!(key.reload().unwrap_err().to_string().contains("cannot read it"));
        assert_eq!(key.header().to_str().unwrap(), "Bearer second", "the last good key stays");
    }
}
