//! `flowgate login`, `flowgate token print`, `flowgate logout`: a person's access token for a
//! gateway, from the identity provider the gateway names, kept fresh in the user's config
//! directory.
//!
//! **Found from the gateway's address alone.** A gateway publishes at
//! `/.well-known/flowgate-login` (`authn::LOGIN_PATH`) the issuers people log in to, each with
//! the public client id registered for this CLI and the scopes to ask for. `login` reads that,
//! then the issuer's OIDC discovery document (and its keys), and runs one of two flows with
//! the `openidconnect` crate:
//!
//! - the **device authorization grant** (RFC 8628), for terminals and SSH sessions: it prints
//!   a URL and a code to enter there, on any device, and polls the token endpoint as the IdP
//!   asks (`interval`, `slow_down`) until the person approves, refuses, or the code expires;
//! - the **authorization code flow with PKCE** (S256) and a **loopback redirect** (RFC 8252),
//!   for desktops: a one-shot listener on `127.0.0.1` on a port of the system's choosing, the
//!   browser opened on the IdP's page, the `state` checked, the code exchanged with its
//!   verifier. An IdP registers such a client with `http://127.0.0.1/callback`: the port of a
//!   loopback redirect may vary.
//!
//! The ID token is verified (the IdP's keys, the client id as audience, the nonce of the code
//! flow) only to tell the person whom they logged in as. The access token is what travels, and
//! the gateway verifies it on every call.
//!
//! **Kept** per gateway in `$XDG_CONFIG_HOME/flowgate/logins/` (else `~/.config/...`), one JSON
//! file per gateway, mode 0600 in a 0700 directory, written atomically. `token print` refreshes
//! the access token with the refresh token when less than a minute of it is left (keeping the
//! rotated refresh token an IdP sends back), so `--api-key "$(flowgate token print)"` always
//! gives a live one. `login` itself refreshes silently when it can, before asking the person.
//!
//! **The Temporal CLI.** `--temporal-env NAME` writes an environment into the Temporal CLI's
//! env file (`address`, `tls`, `api-key`, and `namespace` when given), so that
//! `temporal workflow list --env NAME` works with no token in sight; `token print` and `login`
//! keep its `api-key` fresh, and `logout` removes it.
//!
//! **Logout** revokes the refresh token at the IdP (RFC 7009, when it has a revocation
//! endpoint) and deletes what was stored, even if the IdP cannot be reached.
//!
//! Every error is one line: consent refused, an expired device code, an IdP or gateway that
//! cannot be reached, a gateway that offers no login.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreDeviceAuthorizationResponse, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClientId, CsrfToken, DeviceAuthorizationUrl, HttpRequest,
    HttpResponse, IssuerUrl, JsonWebKeySet, Nonce, OAuth2TokenResponse, PkceCodeChallenge, ProviderMetadata,
    RedirectUrl, RefreshToken, RequestTokenError, RevocationUrl, Scope, TokenUrl,
};
use serde::{Deserialize, Serialize};

use crate::exchange_client::write_secret_file;
use crate::outbound::{HttpClient, SendError, is_loopback_host};

/// How long one request to the gateway or the IdP may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Discovery documents, key sets and token responses are small.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// `token print` refreshes an access token with less than this left.
const REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// Why a login, a refresh or a logout failed: one line each.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("`{0}` is not a gateway address (host:port, http://host:port or https://host:port)")]
    BadAddress(String),
    #[error("cannot reach `{url}`: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("`{url}` answered HTTP {status}: is `{gateway}` a flowgate gateway?")]
    NotAGateway { url: String, status: u16, gateway: String },
    #[error("`{gateway}` offers no login: its config has no issuer with a `login` table")]
    NoLogin { gateway: String },
    #[error("`{gateway}` offers logins to {names}: choose one with --issuer")]
    WhichIssuer { gateway: String, names: String },
    #[error("`{gateway}` offers no issuer named `{name}` (it offers {names})")]
    NoSuchIssuer { gateway: String, name: String, names: String },
    #[error("the identity provider `{issuer}`: {reason}")]
    Discovery { issuer: String, reason: String },
    #[error("`{issuer}` has no device authorization endpoint: log in with --flow browser")]
    NoDeviceFlow { issuer: String },
    #[error("login refused: the identity provider answered `{error}`{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused { error: String, description: Option<String> },
    #[error("the device code expired before it was approved: run `flowgate login` again")]
    Expired,
    #[error("no answer from the browser within {0:?}: run `flowgate login` again")]
    TimedOut(Duration),
    #[error("the login's callback did not carry this login's `state`: start again")]
    StateMismatch,
    #[error("the identity provider sent {0}")]
    BadResponse(String),
    #[error("not logged in to `{gateway}`: run `flowgate login --address {address}`")]
    NotLoggedIn { gateway: String, address: String },
    #[error(
        "the login to `{gateway}` has expired and cannot be refreshed ({reason}): run `flowgate login --address {address}`"
    )]
    LoginExpired { gateway: String, address: String, reason: String },
    #[error("{0}")]
    Io(String),
}

/// A gateway, as `--address` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// `http://host:port` or `https://host:port`: where its login document is.
    pub base: String,
    /// `host:port`, as the Temporal CLI takes it.
    pub host_port: String,
    pub tls: bool,
}

impl Gateway {
    /// `https://host:port`, `http://host:port`, or `host:port`: https, except on loopback
    /// (a local gateway or a port-forward speaks plain HTTP/2), as the Temporal CLI defaults.
    pub fn parse(address: &str) -> Result<Gateway, LoginError> {
        let bad = || LoginError::BadAddress(address.to_owned());
        let (scheme, rest) = match address.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (Some(scheme), rest),
            Some(_) => return Err(bad()),
            None => (None, address),
        };
        let host_port = rest.trim_end_matches('/');
        let uri: http::uri::Authority = host_port.parse().map_err(|_| bad())?;
        if host_port.contains('/') || uri.port_u16().is_none() {
            return Err(bad());
        }
        let tls = match scheme {
            Some(scheme) => scheme == "https",
            None => !is_loopback_host(uri.host()),
        };
        let scheme = if tls { "https" } else { "http" };
        Ok(Gateway { base: format!("{scheme}://{host_port}"), host_port: host_port.to_owned(), tls })
    }
}

/// One issuer a gateway offers people (its login document's `issuers[]`).
#[derive(Debug, Clone, Deserialize)]
pub struct Offered {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
}

#[derive(Deserialize)]
struct LoginDocument {
    issuers: Vec<Offered>,
}

/// How the person proves who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Device,
    Browser { open: bool },
}

/// What `login` is asked to do.
pub struct LoginRequest {
    pub gateway: Gateway,
    pub issuer: Option<String>,
    pub flow: Flow,
    /// Start a new login even when the stored one can be refreshed.
    pub force: bool,
    pub ca: Option<PathBuf>,
    /// How long the person has to approve.
    pub timeout: Duration,
    pub temporal_env: Option<TemporalEnv>,
}

/// A Temporal CLI environment to write the login into.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemporalEnv {
    pub name: String,
    pub file: PathBuf,
    pub namespace: Option<String>,
}

/// A login, as stored (one file per gateway).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub gateway: String,
    pub issuer_name: String,
    pub issuer: String,
    pub client_id: String,
    pub token_endpoint: String,
    pub revocation_endpoint: Option<String>,
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Unix seconds.
    pub expires_at: u64,
    /// Whom the ID token names (`email`, `preferred_username`, else `sub`).
    pub who: Option<String>,
    pub temporal_env: Option<TemporalEnv>,
}

impl Stored {
    /// How long the access token has left.
    pub fn expires_in(&self) -> Duration {
        Duration::from_secs(self.expires_at.saturating_sub(unix_now()))
    }
}

/// Where logins are kept: `$XDG_CONFIG_HOME/flowgate/logins`, else `~/.config/flowgate/logins`.
pub fn logins_dir() -> Result<PathBuf, LoginError> {
    config_home().map(|home| home.join("flowgate").join("logins"))
}

/// The Temporal CLI's env file (`temporal env set` writes it): `temporalio/temporal.yaml` in the
/// user's config directory.
pub fn temporal_env_file() -> Result<PathBuf, LoginError> {
    config_home().map(|home| home.join("temporalio").join("temporal.yaml"))
}

fn config_home() -> Result<PathBuf, LoginError> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) if cfg!(target_os = "macos") => Ok(PathBuf::from(home).join("Library/Application Support")),
        Some(home) => Ok(PathBuf::from(home).join(".config")),
        None => Err(LoginError::Io("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the login".into())),
    }
}

/// The file of `gateway`'s login.
pub fn stored_path(gateway: &Gateway) -> Result<PathBuf, LoginError> {
    let name: String =
        gateway.base.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    Ok(logins_dir()?.join(format!("{name}.json")))
}

pub fn load(gateway: &Gateway) -> Result<Option<Stored>, LoginError> {
    let path = stored_path(gateway)?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LoginError::Io(format!("`{}` is not a stored login ({e}): delete it", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LoginError::Io(format!("cannot read `{}`: {e}", path.display()))),
    }
}

fn save(gateway: &Gateway, stored: &Stored) -> Result<PathBuf, LoginError> {
    let path = stored_path(gateway)?;
    private_dir(path.parent().expect("a file in a directory"))?;
    let json = serde_json::to_vec_pretty(stored).expect("a login serializes");
    write_secret_file(&path, &json).map_err(|e| LoginError::Io(format!("cannot write `{}`: {e}", path.display())))?;
    Ok(path)
}

/// Creates `dir` (and its parents) readable by its owner only.
fn private_dir(dir: &Path) -> Result<(), LoginError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| LoginError::Io(format!("cannot create `{}`: {e}", dir.display())))?;
    let mode = std::fs::metadata(dir).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| LoginError::Io(format!("cannot make `{}` private: {e}", dir.display())))?;
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The discovery document fields beyond the core ones that the flows need.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct ExtraMetadata {
    #[serde(default)]
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
    #[serde(default)]
    revocation_endpoint: Option<RevocationUrl>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The HTTP client the `openidconnect` crate sends its requests with: `outbound`'s (the system
/// roots plus `--ca`, proxies, a deadline, a size cap, no redirects).
fn oidc_http(
    client: &HttpClient,
) -> impl Fn(HttpRequest) -> Pin<Box<dyn Future<Output = Result<HttpResponse, SendError>> + Send>> + '_ {
    move |request: HttpRequest| {
        let client = client.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let url = parts.uri.to_string();
            let body = (!body.is_empty() || parts.method == http::Method::POST).then_some(body);
            let answer = client.send(parts.method, &url, parts.headers, body).await?;
            let mut response = http::Response::new(answer.body.to_vec());
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            Ok(response)
        })
    }
}

fn unreachable(error: &SendError) -> LoginError {
    match error {
        SendError::Unreachable { url, reason } => LoginError::Unreachable { url: url.clone(), reason: reason.clone() },
        other => LoginError::Unreachable { url: String::new(), reason: other.to_string() },
    }
}

/// A token request's failure, as one line.
fn token_error<T: openidconnect::ErrorResponse + 'static>(
    error: RequestTokenError<SendError, T>,
    what: &str,
    describe: impl Fn(&T) -> (String, Option<String>),
) -> LoginError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let (code, description) = describe(&response);
            match code.as_str() {
                "expired_token" => LoginError::Expired,
                _ => LoginError::Refused { error: code, description },
            }
        }
        RequestTokenError::Request(error) => unreachable(&error),
        RequestTokenError::Parse(error, _) => LoginError::BadResponse(format!("an invalid {what}: {error}")),
        RequestTokenError::Other(other) => LoginError::BadResponse(format!("an unexpected {what}: {other}")),
    }
}

/// The standard error response's code and description.
fn standard<T: openidconnect::ErrorResponseType + AsRef<str>>(
    response: &openidconnect::StandardErrorResponse<T>,
) -> (String, Option<String>) {
    (response.error().as_ref().to_owned(), response.error_description().cloned())
}

/// The gateway's offered issuers.
pub async fn offered(client: &HttpClient, gateway: &Gateway) -> Result<Vec<Offered>, LoginError> {
    let url = format!("{}{}", gateway.base, crate::authn::LOGIN_PATH);
    let answer = client.get(&url, http::HeaderMap::new()).await.map_err(|e| unreachable(&e))?;
    if !answer.status.is_success() {
        return Err(LoginError::NotAGateway { url, status: answer.status.as_u16(), gateway: gateway.base.clone() });
    }
    let document: LoginDocument = serde_json::from_slice(&answer.body)
        .map_err(|e| LoginError::BadResponse(format!("`{url}` is not a login document: {e}")))?;
    Ok(document.issuers)
}

fn choose(gateway: &Gateway, offered: Vec<Offered>, name: Option<&str>) -> Result<Offered, LoginError> {
    let names = || offered.iter().map(|o| format!("`{}`", o.name)).collect::<Vec<_>>().join(", ");
    match (name, offered.len()) {
        (_, 0) => Err(LoginError::NoLogin { gateway: gateway.base.clone() }),
        (None, 1) => Ok(offered.into_iter().next().expect("one")),
        (None, _) => Err(LoginError::WhichIssuer { gateway: gateway.base.clone(), names: names() }),
        (Some(name), _) => match offered.iter().position(|o| o.name == name) {
            Some(at) => Ok(offered.into_iter().nth(at).expect("found")),
            None => {
                Err(LoginError::NoSuchIssuer { gateway: gateway.base.clone(), name: name.to_owned(), names: names() })
            }
        },
    }
}

/// What a successful login prints.
pub struct LoggedIn {
    pub stored: Stored,
    pub path: PathBuf,
    /// Whether it was a silent refresh rather than a new login.
    pub refreshed: bool,
}

/// Logs in to `request.gateway`: a silent refresh of the stored login when possible (unless
/// `force`), else the device or browser flow. `say` gets what the person must do.
pub async fn login(request: &LoginRequest, say: impl Fn(&str)) -> Result<LoggedIn, LoginError> {
    let client = HttpClient::new(request.ca.as_deref(), REQUEST_TIMEOUT, MAX_ANSWER_BYTES)
        .map_err(|e| LoginError::Io(e.to_string()))?;
    let gateway = &request.gateway;
    if !request.force
        && let Some(mut stored) = load(gateway)?
        && stored.refresh_token.is_some()
        && (request.issuer.is_none() || request.issuer.as_deref() == Some(stored.issuer_name.as_str()))
        && refresh(&client, &mut stored).await.is_ok()
    {
        if let Some(env) = &request.temporal_env {
            stored.temporal_env = Some(env.clone());
        }
        write_temporal_env(gateway, &stored)?;
        let path = save(gateway, &stored)?;
        return Ok(LoggedIn { stored, path, refreshed: true });
    }

    let offered = choose(gateway, offered(&client, gateway).await?, request.issuer.as_deref())?;
    // A person types a password there: not over plain http, except to a local IdP.
    if !crate::outbound::is_https_or_loopback(&offered.issuer) {
        return Err(LoginError::Discovery {
            issuer: offered.issuer.clone(),
            reason: "not https:// (http:// only on loopback)".into(),
        });
    }
    let http = oidc_http(&client);
    let issuer_url = IssuerUrl::new(offered.issuer.clone())
        .map_err(|e| LoginError::Discovery { issuer: offered.issuer.clone(), reason: e.to_string() })?;
    let metadata = Metadata::discover_async(issuer_url, &http)
        .await
        .map_err(|e| LoginError::Discovery { issuer: offered.issuer.clone(), reason: crate::error::error_chain(&e) })?;
    let token_endpoint = metadata
        .token_endpoint()
        .map(|t| t.url().to_string())
        .ok_or_else(|| LoginError::Discovery { issuer: offered.issuer.clone(), reason: "no token endpoint".into() })?;
    let extra = metadata.additional_metadata().clone();
    let client_id = ClientId::new(offered.client_id.clone());
    let scopes: Vec<Scope> = offered.scopes.iter().filter(|s| *s != "openid").map(|s| Scope::new(s.clone())).collect();

    let (token, who) = match request.flow {
        Flow::Device => {
            let device_url = extra
                .device_authorization_endpoint
                .clone()
                .ok_or_else(|| LoginError::NoDeviceFlow { issuer: offered.issuer.clone() })?;
            let oidc =
                CoreClient::from_provider_metadata(metadata, client_id, None).set_device_authorization_url(device_url);
            let details: CoreDeviceAuthorizationResponse = oidc
                .exchange_device_code()
                .add_scope(Scope::new("openid".into()))
                .add_scopes(scopes)
                .request_async(&http)
                .await
                .map_err(|e| token_error(e, "device authorization response", standard))?;
            // One line: a script (or a test) finds the code with one read.
            let mut prompt = format!(
                "To log in to {} as a {} user, open {} and enter the code {}",
                gateway.base,
                offered.name,
                details.verification_uri().as_str(),
                details.user_code().secret()
            );
            if let Some(complete) = details.verification_uri_complete() {
                prompt.push_str(&format!(" (or open {})", complete.secret()));
            }
            say(&prompt);
            let token = oidc
                .exchange_device_access_token(&details)
                .map_err(|e| LoginError::BadResponse(e.to_string()))?
                .request_async(&http, tokio::time::sleep, Some(request.timeout))
                .await
                .map_err(|e| token_error(e, "token response", standard))?;
            let who = token.extra_fields().id_token().and_then(|id| {
                id.claims(&oidc.id_token_verifier(), |_: Option<&Nonce>| Ok(())).ok().map(describe_claims)
            });
            (token, who)
        }
        Flow::Browser { open } => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| LoginError::Io(format!("cannot listen on 127.0.0.1 for the browser's answer: {e}")))?;
            let port = listener.local_addr().map_err(|e| LoginError::Io(e.to_string()))?.port();
            let redirect = RedirectUrl::new(format!("http://127.0.0.1:{port}/callback")).expect("a valid URL");
            let oidc = CoreClient::from_provider_metadata(metadata, client_id, None).set_redirect_uri(redirect);
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            let (url, state, nonce) = oidc
                .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
                .add_scopes(scopes)
                .set_pkce_challenge(challenge)
                .url();
            say(&format!(
                "To log in to {} as a {} user, open this URL in a browser:\n{url}",
                gateway.base, offered.name
            ));
            if open {
                open_browser(url.as_str());
            }
            let answer = tokio::time::timeout(request.timeout, callback(listener))
                .await
                .map_err(|_| LoginError::TimedOut(request.timeout))??;
            let sent_state = answer.get("state").map(String::as_str).unwrap_or_default();
            if aws_lc_rs::constant_time::verify_slices_are_equal(sent_state.as_bytes(), state.secret().as_bytes())
                .is_err()
            {
                return Err(LoginError::StateMismatch);
            }
            if let Some(error) = answer.get("error") {
                return Err(LoginError::Refused {
                    error: error.clone(),
                    description: answer.get("error_description").cloned(),
                });
            }
            let code = answer
                .get("code")
                .ok_or_else(|| LoginError::BadResponse("a callback with neither a code nor an error".into()))?;
            let token = oidc
                .exchange_code(AuthorizationCode::new(code.clone()))
                .map_err(|e| LoginError::BadResponse(e.to_string()))?
                .set_pkce_verifier(verifier)
                .request_async(&http)
                .await
                .map_err(|e| token_error(e, "token response", standard))?;
            let id_token = token
                .extra_fields()
                .id_token()
                .ok_or_else(|| LoginError::BadResponse("a token response without an ID token".into()))?;
            let claims = id_token
                .claims(&oidc.id_token_verifier(), &nonce)
                .map_err(|e| LoginError::BadResponse(format!("an ID token that does not verify: {e}")))?;
            let who = describe_claims(claims);
            (token, Some(who))
        }
    };
    let expires_at = unix_now() + token.expires_in().map_or(300, |d| d.as_secs());
    let stored = Stored {
        gateway: gateway.base.clone(),
        issuer_name: offered.name.clone(),
        issuer: offered.issuer.clone(),
        client_id: offered.client_id.clone(),
        token_endpoint,
        revocation_endpoint: extra.revocation_endpoint.map(|u| u.url().to_string()),
        access_token: token.access_token().secret().clone(),
        refresh_token: token.refresh_token().map(|r| r.secret().clone()),
        expires_at,
        who,
        temporal_env: request.temporal_env.clone(),
    };
    write_temporal_env(gateway, &stored)?;
    let path = save(gateway, &stored)?;
    Ok(LoggedIn { stored, path, refreshed: false })
}

fn describe_claims<AC: openidconnect::AdditionalClaims, GC: openidconnect::GenderClaim>(
    claims: &openidconnect::IdTokenClaims<AC, GC>,
) -> String {
    if let Some(email) = claims.email() {
        return email.as_str().to_owned();
    }
    if let Some(name) = claims.preferred_username() {
        return name.as_str().to_owned();
    }
    claims.subject().as_str().to_owned()
}

/// A client for the token and revocation endpoints of a stored login (no discovery needed).
fn stored_client(stored: &Stored) -> Result<CoreClient, LoginError> {
    let issuer = IssuerUrl::new(stored.issuer.clone()).map_err(|e| LoginError::BadResponse(e.to_string()))?;
    Ok(CoreClient::new(ClientId::new(stored.client_id.clone()), issuer, JsonWebKeySet::default()))
}

/// Refreshes `stored`'s access token (and its refresh token, when the IdP rotates it).
async fn refresh(client: &HttpClient, stored: &mut Stored) -> Result<(), LoginError> {
    let refresh_token = stored.refresh_token.clone().ok_or_else(|| LoginError::Refused {
        error: "no refresh token".into(),
        description: Some("the identity provider gave none (ask for `offline_access`)".into()),
    })?;
    let token_url = TokenUrl::new(stored.token_endpoint.clone()).map_err(|e| LoginError::BadResponse(e.to_string()))?;
    let oidc = stored_client(stored)?.set_token_uri(token_url);
    let http = oidc_http(client);
    let token = oidc
        .exchange_refresh_token(&RefreshToken::new(refresh_token))
        .request_async(&http)
        .await
        .map_err(|e| token_error(e, "token response", standard))?;
    stored.access_token = token.access_token().secret().clone();
    if let Some(rotated) = token.refresh_token() {
        stored.refresh_token = Some(rotated.secret().clone());
    }
    stored.expires_at = unix_now() + token.expires_in().map_or(300, |d| d.as_secs());
    Ok(())
}

/// The current access token of `gateway`'s login, refreshed first when it is about to expire.
pub async fn current_token(gateway: &Gateway, ca: Option<&Path>) -> Result<Stored, LoginError> {
    let address = gateway.host_port.clone();
    let mut stored = load(gateway)?
        .ok_or_else(|| LoginError::NotLoggedIn { gateway: gateway.base.clone(), address: address.clone() })?;
    if stored.expires_in() > REFRESH_AHEAD {
        return Ok(stored);
    }
    let client = HttpClient::new(ca, REQUEST_TIMEOUT, MAX_ANSWER_BYTES).map_err(|e| LoginError::Io(e.to_string()))?;
    if let Err(error) = refresh(&client, &mut stored).await {
        return Err(LoginError::LoginExpired { gateway: gateway.base.clone(), address, reason: error.to_string() });
    }
    write_temporal_env(gateway, &stored)?;
    save(gateway, &stored)?;
    Ok(stored)
}

/// What `logout` did.
pub struct LoggedOut {
    pub deleted: bool,
    /// Why the refresh token could not be revoked at the IdP, if it could not.
    pub revoke_failed: Option<String>,
}

/// Revokes the stored refresh token at the IdP and deletes the login (and the Temporal CLI
/// environment's `api-key`), whether or not the IdP answered.
pub async fn logout(gateway: &Gateway, ca: Option<&Path>) -> Result<LoggedOut, LoginError> {
    let Some(stored) = load(gateway)? else { return Ok(LoggedOut { deleted: false, revoke_failed: None }) };
    let mut revoke_failed = None;
    if let (Some(refresh), Some(endpoint)) = (&stored.refresh_token, &stored.revocation_endpoint) {
        let client =
            HttpClient::new(ca, REQUEST_TIMEOUT, MAX_ANSWER_BYTES).map_err(|e| LoginError::Io(e.to_string()))?;
        revoke_failed = revoke(&client, endpoint, &stored.client_id, refresh).await.err();
    }
    if let Some(env) = &stored.temporal_env {
        remove_temporal_api_key(env)?;
    }
    let path = stored_path(gateway)?;
    std::fs::remove_file(&path).map_err(|e| LoginError::Io(format!("cannot delete `{}`: {e}", path.display())))?;
    Ok(LoggedOut { deleted: true, revoke_failed })
}

/// Revokes `refresh_token` at `endpoint` (RFC 7009: a form post from a public client). By hand,
/// not with the `openidconnect` crate: it refuses a revocation endpoint that is not https,
/// where the rest of flowgate allows plain http on loopback (a local IdP, a port-forward).
async fn revoke(client: &HttpClient, endpoint: &str, client_id: &str, refresh_token: &str) -> Result<(), String> {
    if !crate::outbound::is_https_or_loopback(endpoint) {
        return Err(format!("`{endpoint}` is not https:// (http:// only on loopback)"));
    }
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", refresh_token)
        .append_pair("token_type_hint", "refresh_token")
        .append_pair("client_id", client_id)
        .finish();
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-www-form-urlencoded"));
    let answer =
        client.send(http::Method::POST, endpoint, headers, Some(body.into_bytes())).await.map_err(|e| e.to_string())?;
    if answer.status.is_success() {
        return Ok(());
    }
    let error: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    match error.get("error").and_then(|e| e.as_str()) {
        Some(code) => Err(format!("`{endpoint}` answered `{code}`")),
        None => Err(format!("`{endpoint}` answered HTTP {}", answer.status.as_u16())),
    }
}

/// Writes the login into its Temporal CLI environment, if it has one: `address`, `tls`,
/// `api-key` and (when given) `namespace`, leaving every other environment and key as it was.
fn write_temporal_env(gateway: &Gateway, stored: &Stored) -> Result<(), LoginError> {
    let Some(env) = &stored.temporal_env else { return Ok(()) };
    edit_temporal_env(env, |keys| {
        keys.insert("address".into(), gateway.host_port.clone());
        keys.insert("tls".into(), gateway.tls.to_string());
        keys.insert("api-key".into(), stored.access_token.clone());
        if let Some(namespace) = &env.namespace {
            keys.insert("namespace".into(), namespace.clone());
        }
    })
}

fn remove_temporal_api_key(env: &TemporalEnv) -> Result<(), LoginError> {
    edit_temporal_env(env, |keys| {
        keys.remove("api-key");
    })
}

/// The Temporal CLI's env file is `env: {NAME: {key: value}}` (YAML; what `temporal env set`
/// writes). Edited as a whole and written back atomically, mode 0600: it holds a token.
fn edit_temporal_env(env: &TemporalEnv, edit: impl FnOnce(&mut BTreeMap<String, String>)) -> Result<(), LoginError> {
    use serde_yaml_ng::{Mapping, Value};
    let path = &env.file;
    let io = |what: &str, e: &dyn std::fmt::Display| LoginError::Io(format!("cannot {what} `{}`: {e}", path.display()));
    let mut document: Mapping = match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Mapping::new(),
        Ok(text) => serde_yaml_ng::from_str(&text).map_err(|e| io("read the Temporal CLI env file", &e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Mapping::new(),
        Err(e) => return Err(io("read", &e)),
    };
    let envs = document.entry(Value::from("env")).or_insert_with(|| Value::Mapping(Mapping::new()));
    let Value::Mapping(envs) = envs else { return Err(io("edit", &"its `env` is not a mapping")) };
    let current = envs.entry(Value::from(env.name.as_str())).or_insert_with(|| Value::Mapping(Mapping::new()));
    let mut keys: BTreeMap<String, String> = match current {
        Value::Mapping(keys) => keys
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str().map(str::to_owned).or_else(|| scalar(v))?)))
            .collect(),
        _ => BTreeMap::new(),
    };
    edit(&mut keys);
    *current = Value::Mapping(keys.into_iter().map(|(k, v)| (Value::from(k), Value::from(v))).collect());
    let text = serde_yaml_ng::to_string(&document).map_err(|e| io("write", &e))?;
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    write_secret_file(path, text.as_bytes()).map_err(|e| io("write", &e))
}

fn scalar(value: &serde_yaml_ng::Value) -> Option<String> {
    match value {
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Waits for the browser's redirect to `/callback` on `listener` and answers it; returns its
/// query parameters. Other requests (a favicon) get a 404.
async fn callback(listener: tokio::net::TcpListener) -> Result<BTreeMap<String, String>, LoginError> {
    use hyper_util::rt::TokioIo;
    let (sender, receiver) = tokio::sync::mpsc::channel::<BTreeMap<String, String>>(1);
    let serve = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let sender = sender.clone();
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let sender = sender.clone();
                async move {
                    let (status, page) = if request.uri().path() == "/callback" {
                        let query: BTreeMap<String, String> =
                            form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
                                .into_owned()
                                .collect();
                        let page = if query.contains_key("code") {
                            "Logged in to flowgate. You can close this tab."
                        } else {
                            "The login did not succeed: see your terminal."
                        };
                        let _ = sender.try_send(query);
                        (http::StatusCode::OK, page)
                    } else {
                        (http::StatusCode::NOT_FOUND, "Not found.")
                    };
                    let mut response =
                        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(page.as_bytes())));
                    *response.status_mut() = status;
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
            });
        }
    };
    let mut receiver = receiver;
    tokio::select! {
        () = serve => unreachable!("the accept loop does not end"),
        query = receiver.recv() => query.ok_or_else(|| LoginError::Io("the callback listener stopped".into())),
    }
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Whether a browser can be opened here: a desktop session, not an SSH one.
pub fn has_display() -> bool {
    if cfg!(target_os = "macos") {
        return std::env::var_os("SSH_CONNECTION").is_none();
    }
    ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses() {
        let local = Gateway::parse("127.0.0.1:7233").unwrap();
        assert_eq!(
            local,
            Gateway { base: "http://127.0.0.1:7233".into(), host_port: "127.0.0.1:7233".into(), tls: false }
        );
        let remote = Gateway::parse("gw.acme.example:7233").unwrap();
        assert_eq!(remote.base, "https://gw.acme.example:7233");
        assert!(remote.tls);
        assert_eq!(Gateway::parse("http://gw:7233/").unwrap().base, "http://gw:7233");
        assert!(!Gateway::parse("http://gw:7233").unwrap().tls);
        for bad in ["gw", "ftp://gw:1", "https://gw:7233/path", "", "gw:port"] {
            assert!(Gateway::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn choosing_an_issuer() {
        let gateway = Gateway::parse("127.0.0.1:1").unwrap();
        let offer = |name: &str| Offered {
            name: name.into(),
            issuer: format!("https://{name}"),
            client_id: "c".into(),
            scopes: vec!["openid".into()],
        };
        assert!(matches!(choose(&gateway, vec![], None), Err(LoginError::NoLogin { .. })));
        assert_eq!(choose(&gateway, vec![offer("okta")], None).unwrap().name, "okta");
        let two = vec![offer("okta"), offer("google")];
        let error = choose(&gateway, two.clone(), None).unwrap_err().to_string();
        assert!(error.contains("`okta`, `google`") && error.contains("--issuer"), "{error}");
        assert_eq!(choose(&gateway, two.clone(), Some("google")).unwrap().name, "google");
        assert!(matches!(choose(&gateway, two, Some("azure")), Err(LoginError::NoSuchIssuer { .. })));
    }

    #[test]
    fn the_temporal_env_file_keeps_what_it_does_not_own() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("temporalio").join("temporal.yaml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            "env:\n  dev:\n    address: localhost:7233\n  prod:\n    codec-endpoint: https://codec\n",
        )
        .unwrap();
        let env = TemporalEnv { name: "prod".into(), file: file.clone(), namespace: Some("payments".into()) };
        edit_temporal_env(&env, |keys| {
            keys.insert("api-key".into(), "token".into());
        })
        .unwrap();
        let written: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(written["env"]["dev"]["address"], "localhost:7233");
        assert_eq!(written["env"]["prod"]["codec-endpoint"], "https://codec");
        assert_eq!(written["env"]["prod"]["api-key"], "token");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        remove_temporal_api_key(&env).unwrap();
        let written: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert!(written["env"]["prod"].get("api-key").is_none());
        assert_eq!(written["env"]["prod"]["codec-endpoint"], "https://codec");
    }
}
