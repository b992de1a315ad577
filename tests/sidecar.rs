//! The sidecar and `flowgate token exchange` against an in-test token endpoint (discovery,
//! RFC 8693 token exchange with single-use subject tokens, an Okta-like client-credentials
//! grant) and an in-test gRPC upstream that reports the `authorization` it received.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use flowgate::sidecar::{SidecarConfig, run_sidecar};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Client, WS, frame};
use tokio::net::TcpListener;

const SCOPE: &str = "namespace:payments role:worker task_queue:deploys";
const CLIENT_ID: &str = "worker-app";
const CLIENT_SECRET: &str = "s3cret/+=";

// ---- the token endpoint ----------------------------------------------------------------------

/// One request the token endpoint answered.
#[derive(Debug, Clone)]
struct Exchange {
    grant_type: String,
    subject_token: String,
    subject_token_type: String,
    scope: String,
    content_type: String,
}

#[derive(Default)]
struct TokenState {
    expires_in: AtomicU64,
    /// Answer every token request with 503 `temporarily_unavailable`.
    failing: AtomicBool,
    issued_count: AtomicUsize,
    exchanges: Mutex<Vec<Exchange>>,
    /// Every credential issued, with when it expires (by the server's clock).
    issued: Mutex<HashMap<String, Instant>>,
    /// Subject tokens are single-use, as at the real gateway.
    used: Mutex<std::collections::HashSet<String>>,
    okta_tokens: AtomicUsize,
}

#[derive(Clone)]
struct TokenServer {
    url: String,
    state: Arc<TokenState>,
}

fn form_decode(body: &[u8]) -> HashMap<String, String> {
    let decode = |text: &str| {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (decode(name), decode(value)))
        .collect()
}

fn json_response(status: u16, body: serde_json::Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn oauth_error(status: u16, error: &str, description: &str) -> http::Response<Full<Bytes>> {
    json_response(status, serde_json::json!({"error": error, "error_description": description}))
}

impl TokenServer {
    async fn start(expires_in: u64) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = TokenServer {
            url: format!("http://{}", listener.local_addr().unwrap()),
            state: Arc::new(TokenState::default()),
        };
        server.state.expires_in.store(expires_in, Ordering::SeqCst);
        let served = server.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let served = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let served = served.clone();
                        async move { Ok::<_, std::convert::Infallible>(served.answer(request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        server
    }

    async fn answer(&self, request: http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        match (parts.method.as_str(), parts.uri.path()) {
            ("GET", "/.well-known/openid-configuration") => json_response(
                200,
                serde_json::json!({
                    "issuer": self.url,
                    "jwks_uri": format!("{}/.well-known/jwks.json", self.url),
                    "token_endpoint": format!("{}/oauth2/token", self.url),
                }),
            ),
            ("POST", "/oauth2/token") => self.token(&parts.headers, &body),
            _ => json_response(404, serde_json::json!({})),
        }
    }

    fn token(&self, headers: &http::HeaderMap, body: &[u8]) -> http::Response<Full<Bytes>> {
        let state = &self.state;
        if state.failing.load(Ordering::SeqCst) {
            return oauth_error(503, "temporarily_unavailable", "down for the test");
        }
        let form = form_decode(body);
        let field = |name: &str| form.get(name).cloned().unwrap_or_default();
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        state.exchanges.lock().unwrap().push(Exchange {
            grant_type: field("grant_type"),
            subject_token: field("subject_token"),
            subject_token_type: field("subject_token_type"),
            scope: field("scope"),
            content_type: header("content-type"),
        });
        if field("grant_type") == "client_credentials" {
            // client_secret_basic: both halves form-encoded, then base64.
            let expected = base64::engine::general_purpose::STANDARD.encode("worker-app:s3cret%2F%2B%3D");
            if header("authorization") != format!("Basic {expected}") {
                return oauth_error(401, "invalid_client", "bad client credentials");
            }
            let n = state.okta_tokens.fetch_add(1, Ordering::SeqCst) + 1;
            return json_response(
                200,
                serde_json::json!({"access_token": format!("okta-{n}"), "token_type": "Bearer", "expires_in": 3600}),
            );
        }
        if field("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" {
            return oauth_error(400, "unsupported_grant_type", "what is this");
        }
        let subject = field("subject_token");
        if let Some(expiry) = state.issued.lock().unwrap().get(&subject)
            && Instant::now() >= *expiry
        {
            return oauth_error(400, "invalid_grant", "subject token has expired");
        }
        if !state.used.lock().unwrap().insert(subject) {
            return oauth_error(400, "invalid_grant", "subject token was already used");
        }
        let expires_in = state.expires_in.load(Ordering::SeqCst);
        let token = format!("cred-{}", state.issued_count.fetch_add(1, Ordering::SeqCst) + 1);
        state.issued.lock().unwrap().insert(token.clone(), Instant::now() + Duration::from_secs(expires_in));
        json_response(
            200,
            serde_json::json!({
                "access_token": token,
                "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "token_type": "Bearer",
                "expires_in": expires_in,
                "scope": field("scope"),
            }),
        )
    }

    fn exchanges(&self) -> Vec<Exchange> {
        self.state.exchanges.lock().unwrap().clone()
    }

    fn token_exchanges(&self) -> Vec<Exchange> {
        self.exchanges().into_iter().filter(|e| e.grant_type.ends_with("token-exchange")).collect()
    }

    async fn wait_for_exchanges(&self, count: usize, within: Duration) -> Vec<Exchange> {
        let deadline = Instant::now() + within;
        loop {
            let exchanges = self.token_exchanges();
            if exchanges.len() >= count {
                return exchanges;
            }
            assert!(Instant::now() < deadline, "{count} exchanges expected, saw {exchanges:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---- the gRPC upstream (the gateway, as far as the sidecar can tell) -------------------------

/// Answers every call with `grpc-status: 0` and an `x-seen-authorization` trailer holding the
/// `authorization` it received; records any call whose credential was unknown or expired.
#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<String>>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start(tokens: &TokenServer) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream =
            Upstream { addr: listener.local_addr().unwrap(), seen: Arc::default(), violations: Arc::default() };
        let served = upstream.clone();
        let tokens = tokens.state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let served = served.clone();
                let tokens = tokens.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let served = served.clone();
                        let tokens = tokens.clone();
                        async move {
                            let arrived = Instant::now();
                            let authorization: Vec<String> = request
                                .headers()
                                .get_all("authorization")
                                .iter()
                                .map(|v| v.to_str().unwrap().to_owned())
                                .collect();
                            let token = authorization.first().and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
                            match tokens.issued.lock().unwrap().get(token) {
                                Some(expiry) if arrived < *expiry => {}
                                Some(_) => served.violations.lock().unwrap().push(format!("expired: {token}")),
                                None => served.violations.lock().unwrap().push(format!("unknown: {authorization:?}")),
                            }
                            served.seen.lock().unwrap().push(authorization.clone());
                            let slow = request.uri().path().ends_with("/Slow");
                            let _ = request.into_body().collect().await;
                            if slow {
                                tokio::time::sleep(Duration::from_millis(2500)).await;
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            trailers.insert("x-seen-authorization", authorization.join(" | ").parse().unwrap());
                            let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = vec![
                                Ok(http_body::Frame::data(Bytes::from(frame(b"\x0a\x02ok", false)))),
                                Ok(http_body::Frame::trailers(trailers)),
                            ];
                            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(100_000)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

// ---- the sidecar -----------------------------------------------------------------------------

struct Sidecar {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn config_text(upstream: &Upstream, tokens: &TokenServer, source: &str, extra: &str) -> String {
    format!(
        r#"
        [listen]
        address = "127.0.0.1:0"
        shutdown_grace = "5s"
        [upstream]
        address = "http://{upstream}"
        [credential]
        scope = "{SCOPE}"
        gateway = "{gateway}"
        refresh_at = 0.5
        jitter = 0.1
        {extra}
        [credential.source]
        {source}
        "#,
        upstream = upstream.addr,
        gateway = tokens.url,
    )
}

impl Sidecar {
    async fn start(text: &str) -> Sidecar {
        let config = SidecarConfig::parse(text).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_sidecar(listener, config, async move {
            let _ = rx.await;
        }));
        Sidecar { addr, shutdown: Some(tx), task }
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await.unwrap().unwrap().unwrap();
    }
}

fn seen_authorization(reply: &support::Reply) -> String {
    let trailers = reply.trailers.as_ref().unwrap_or_else(|| panic!("no trailers: {reply:?}"));
    trailers["x-seen-authorization"].to_str().unwrap().to_owned()
}

async fn describe(client: &mut Client, authorization: Option<&str>) -> support::Reply {
    let mut headers = vec![("client-name", "worker")];
    if let Some(authorization) = authorization {
        headers.push(("authorization", authorization));
    }
    client.call(&format!("{WS}/DescribeNamespace"), &headers, frame(b"\x0a\x08payments", false)).await
}

fn write_token(path: &Path, token: &str) {
    // As the kubelet does: a new file renamed into place.
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, token).unwrap();
    std::fs::rename(temporary, path).unwrap();
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test]
async fn calls_carry_the_credential_instead_of_the_workers_authorization() {
    let tokens = TokenServer::start(60).await;
    let upstream = Upstream::start(&tokens).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "ci-token-1\n").unwrap();
    let source = format!("kind = \"file\"\npath = \"{}\"", token_file.display());
    let sidecar = Sidecar::start(&config_text(&upstream, &tokens, &source, "")).await;

    let mut client = Client::connect(sidecar.addr).await;
    let reply = describe(&mut client, None).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    assert_eq!(seen_authorization(&reply), "Bearer cred-1");
    assert_eq!(&reply.body[..], &frame(b"\x0a\x02ok", false)[..], "the response body passes through");

    // The worker's own header is dropped, every copy of it.
    let mut headers = vec![("authorization", "Bearer worker-own"), ("authorization", "Basic d29ya2Vy")];
    headers.push(("client-name", "worker"));
    let reply = client.call(&format!("{WS}/PollActivityTaskQueue"), &headers, frame(b"", false)).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    assert_eq!(seen_authorization(&reply), "Bearer cred-1");

    let exchanges = tokens.token_exchanges();
    assert_eq!(exchanges.len(), 1, "one credential serves every call: {exchanges:?}");
    let exchange = &exchanges[0];
    assert_eq!(exchange.subject_token, "ci-token-1", "the file's token, trimmed");
    assert_eq!(exchange.subject_token_type, "urn:ietf:params:oauth:token-type:jwt");
    assert_eq!(exchange.scope, SCOPE);
    assert_eq!(exchange.content_type, "application/x-www-form-urlencoded");
    assert!(upstream.violations().is_empty(), "{:?}", upstream.violations());
    sidecar.stop().await;
}

#[tokio::test]
async fn a_changed_token_file_is_exchanged_at_the_next_refresh() {
    let tokens = TokenServer::start(2).await;
    let upstream = Upstream::start(&tokens).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token-1").unwrap();
    let source = format!("kind = \"file\"\npath = \"{}\"", token_file.display());
    let sidecar = Sidecar::start(&config_text(&upstream, &tokens, &source, "")).await;

    tokens.wait_for_exchanges(1, Duration::from_secs(5)).await;
    write_token(&token_file, "file-token-2");
    let exchanges = tokens.wait_for_exchanges(3, Duration::from_secs(5)).await;
    let subjects: Vec<&str> = exchanges.iter().map(|e| e.subject_token.as_str()).collect();
    // The new file first; then, the file unchanged, the credential that exchange returned.
    assert_eq!(&subjects[..3], ["file-token-1", "file-token-2", "cred-2"]);

    let mut client = Client::connect(sidecar.addr).await;
    let reply = describe(&mut client, None).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    assert!(upstream.violations().is_empty(), "{:?}", upstream.violations());
    sidecar.stop().await;
}

#[tokio::test]
async fn an_expired_credential_is_never_forwarded() {
    let tokens = TokenServer::start(2).await;
    let upstream = Upstream::start(&tokens).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token-1").unwrap();
    let source = format!("kind = \"file\"\npath = \"{}\"", token_file.display());
    let sidecar = Sidecar::start(&config_text(&upstream, &tokens, &source, "wait = \"500ms\"")).await;
    let mut client = Client::connect(sidecar.addr).await;

    // A call made before the first credential waits for it.
    let reply = describe(&mut client, None).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    tokens.state.failing.store(true, Ordering::SeqCst);

    // Calls go on while the token endpoint is down: they succeed until the credential nears
    // its expiry, then fail UNAVAILABLE, after waiting, with the reason.
    let started = Instant::now();
    let mut refused = None;
    while started.elapsed() < Duration::from_secs(3) {
        let call_started = Instant::now();
        let reply = describe(&mut client, None).await;
        match reply.code() {
            "0" => assert!(refused.is_none(), "a call succeeded after the credential expired: {reply:?}"),
            "14" => {
                assert!(call_started.elapsed() >= Duration::from_millis(450), "waited {:?}", call_started.elapsed());
                refused.get_or_insert(reply);
            }
            other => panic!("unexpected status {other}: {reply:?}"),
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let refused = refused.expect("calls fail once the credential has expired");
    let message = refused.message.unwrap();
    assert!(message.contains("no valid credential after waiting 500ms"), "{message}");
    assert!(message.contains("token exchange refused: temporarily_unavailable: down for the test"), "{message}");
    assert!(upstream.violations().is_empty(), "{:?}", upstream.violations());

    // Back up, but the file's token is spent and the credential gone: the gateway says why.
    tokens.state.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reply = describe(&mut client, None).await;
    assert_eq!(reply.code(), "14", "{reply:?}");
    let message = reply.message.clone().unwrap();
    assert!(message.contains("invalid_grant: subject token was already used"), "{message}");

    // A new token in the file brings the sidecar back.
    write_token(&token_file, "file-token-2");
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let reply = describe(&mut client, None).await;
        if reply.code() == "0" || Instant::now() > deadline {
            break reply;
        }
    };
    assert_eq!(reply.code(), "0", "{reply:?}");
    assert_eq!(seen_authorization(&reply), "Bearer cred-2");
    assert!(upstream.violations().is_empty(), "{:?}", upstream.violations());
    sidecar.stop().await;
}

#[tokio::test]
async fn client_credentials_bring_a_fresh_subject_token_each_refresh() {
    let tokens = TokenServer::start(2).await;
    let upstream = Upstream::start(&tokens).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, CLIENT_SECRET).unwrap();
    let source = format!(
        "kind = \"okta-client-credentials\"\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\nscopes = [\"temporal\"]",
        tokens.url,
        secret_file.display()
    );
    let sidecar = Sidecar::start(&config_text(&upstream, &tokens, &source, "")).await;

    let exchanges = tokens.wait_for_exchanges(2, Duration::from_secs(5)).await;
    let subjects: Vec<&str> = exchanges.iter().map(|e| e.subject_token.as_str()).collect();
    assert_eq!(&subjects[..2], ["okta-1", "okta-2"]);
    let grants: Vec<Exchange> =
        tokens.exchanges().into_iter().filter(|e| e.grant_type == "client_credentials").collect();
    assert_eq!(grants[0].scope, "temporal");

    let mut client = Client::connect(sidecar.addr).await;
    let reply = describe(&mut client, None).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    sidecar.stop().await;
}

#[test]
fn config_errors_name_the_key() {
    let valid = r#"
        [listen]
        address = "127.0.0.1:7233"
        [upstream]
        address = "http://flowgate.internal:7233"
        [credential]
        scope = "namespace:payments role:worker"
        [credential.source]
        kind = "env"
        env = "CI_OIDC_TOKEN"
    "#;
    let config = SidecarConfig::parse(valid).unwrap();
    assert_eq!(config.credential.refresh_at, 0.66);
    assert_eq!(config.credential.wait, Duration::from_secs(10));
    assert_eq!(config.gateway(), "http://flowgate.internal:7233");

    let error = |text: String| SidecarConfig::parse(&text).unwrap_err().to_string();
    let cases = [
        (valid.replace("scope =", "refersh_at = 0.5\nscope ="), "unknown field `refersh_at`"),
        (valid.replace("env = ", "path = \"x\"\nenv = "), "unknown field `path`"),
        (valid.replace("kind = \"env\"", "kind = \"vault\""), "unknown variant `vault`"),
        (valid.replace("scope =", "refresh_at = 1.5\nscope ="), "invalid value for `credential.refresh_at`"),
        (valid.replace("scope =", "refresh_at = 0.8\nscope ="), "invalid value for `credential.refresh_at`"),
        (valid.replace("scope =", "jitter = 0.9\nscope ="), "invalid value for `credential.jitter`"),
        (valid.replace("scope =", "wait = \"soon\"\nscope ="), "`soon` is not a duration"),
        (valid.replace("namespace:payments role:worker", " "), "invalid value for `credential.scope`"),
        (valid.replace("http://flowgate.internal:7233", "flowgate.internal:7233"), "invalid value for `upstream.address`"),
        (valid.replace("scope =", "gateway = \"ftp://x\"\nscope ="), "invalid value for `credential.gateway`"),
        (valid.replace("env = \"CI_OIDC_TOKEN\"", "env = \"\""), "invalid value for `credential.source.env`"),
        (valid.replace("[upstream]", "[upstream]\nca = \"ca.pem\""), "need an https:// address"),
        (
            valid.replace(
                "kind = \"env\"\n        env = \"CI_OIDC_TOKEN\"",
                "kind = \"okta-client-credentials\"\nissuer = \"https://acme.okta.com/oauth2/default\"\nclient_id = \"x\"",
            ),
            "exactly one of `client_secret_env` and `client_secret_file`",
        ),
        (valid.replace("[credential.source]\n        kind = \"env\"\n        env = \"CI_OIDC_TOKEN\"", ""), "missing field `source`"),
    ];
    for (text, expected) in cases {
        let message = error(text);
        assert!(message.contains(expected), "expected {expected:?} in: {message}");
    }
}

#[test]
fn relative_paths_resolve_against_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecar.toml");
    std::fs::write(
        &file,
        "[listen]\naddress = \"127.0.0.1:7233\"\n[upstream]\naddress = \"https://gw:7233\"\nca = \"ca.pem\"\n\
         [credential]\nscope = \"namespace:a role:read\"\n[credential.source]\nkind = \"file\"\npath = \"token\"\n",
    )
    .unwrap();
    let config = SidecarConfig::load(&file).unwrap();
    assert_eq!(config.upstream.ca.unwrap(), dir.path().join("ca.pem"));
    match config.credential.source {
        flowgate::sidecar::SourceConfig::File { path } => assert_eq!(path, dir.path().join("token")),
        other => panic!("{other:?}"),
    }
}

// ---- against the real gateway ----------------------------------------------------------------

const GATEWAY_POLICY: &str = r#"
@id("exchange-workers")
permit (
  principal in Temporal::Group::"test:workers",
  action == Temporal::Action::"IssueCredential",
  resource == Temporal::Namespace::"payments"
)
when { context.role == "worker" };

@id("workers-within-grant")
permit (
  principal is Temporal::Worker,
  action in [Temporal::Action::"worker", Temporal::Action::"IssueCredential"],
  resource
);
"#;

/// The sidecar against flowgate itself: discovery, the exchange of a CI token, calls that the
/// gateway authenticates as the minted worker credential, and a refresh that exchanges the
/// credential. The gateway's shortest credential lifetime is 10 s, so this one is slower.
#[tokio::test]
async fn the_sidecar_works_with_the_gateways_token_endpoint() {
    let key = support::SigningKey::es256("k1");
    let jwks = support::Jwks::start(&[&key]).await;
    let temporal = support::Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), flowgate::authz::generated_schema()).unwrap();
    std::fs::write(policies.join("test.cedar"), GATEWAY_POLICY).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_url = format!("http://{}", listener.local_addr().unwrap());
    let audit = dir.path().join("decisions.jsonl");
    let text = format!(
        r#"
        [listen]
        address = "127.0.0.1:0"
        shutdown_grace = "5s"
        [upstream]
        address = "http://{temporal}"
        [policy]
        dir = "{policies}"
        [audit]
        path = "{audit}"
        [[issuers]]
        name = "test"
        issuer = "{issuer}"
        jwks_uri = "{jwks}"
        audiences = ["{audience}"]
        groups_claim = "groups"
        algorithms = ["ES256"]
        [mint]
        issuer = "{gateway_url}"
        key_dir = "{keys}"
        credential_lifetime = "10s"
        "#,
        temporal = temporal.addr,
        policies = policies.display(),
        audit = audit.display(),
        issuer = support::ISSUER,
        jwks = jwks.url,
        audience = support::AUDIENCE,
        keys = dir.path().join("keys").display(),
    );
    let config = flowgate::Config::parse(&text).unwrap();
    let (stop_gateway, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(flowgate::run(flowgate::Listeners { gateway: listener, admin: None }, config, async {
        let _ = stopped.await;
    }));

    let mut claims = support::claims("pipeline-7", &["workers"]);
    claims["jti"] = "ci-jti-1".into();
    let token_file = dir.path().join("ci-token");
    std::fs::write(&token_file, key.sign(&claims)).unwrap();
    let sidecar_text = format!(
        r#"
        [listen]
        address = "127.0.0.1:0"
        shutdown_grace = "5s"
        [upstream]
        address = "{gateway_url}"
        [credential]
        scope = "namespace:payments role:worker task_queue:q"
        refresh_at = 0.4
        jitter = 0.05
        [credential.source]
        kind = "file"
        path = "{token}"
        "#,
        token = token_file.display(),
    );
    let sidecar = Sidecar::start(&sidecar_text).await;
    let mut client = Client::connect(sidecar.addr).await;
    let poll = [support::field(1, b"payments"), support::field(2, &support::field(1, b"q"))].concat();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(5500) {
        let reply = client.unary("PollActivityTaskQueue", Some("worker-own-token"), &poll).await;
        assert_eq!(reply.code(), "0", "after {:?}: {reply:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Outside the grant: the gateway refuses, and the refusal reaches the worker unchanged.
    let other_queue = [support::field(1, b"payments"), support::field(2, &support::field(1, b"other"))].concat();
    let reply = client.unary("PollActivityTaskQueue", None, &other_queue).await;
    assert_eq!(reply.code(), "7", "{reply:?}");

    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&audit).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let exchanges: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["kind"] == "token_exchange" && r["decision"] == "allow").collect();
    assert!(exchanges.len() >= 2, "the CI token, then the credential: {records:#?}");
    assert_eq!(exchanges[1]["principal"]["type"], "Worker", "the refresh exchanged the credential: {:#}", exchanges[1]);
    let polls: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "grpc").collect();
    assert!(polls.iter().take(polls.len() - 1).all(|r| r["decision"] == "allow" && r["principal"]["type"] == "Worker"));

    sidecar.stop().await;
    let _ = stop_gateway.send(());
    gateway.await.unwrap().unwrap();
}

// ---- the binary ------------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `flowgate sidecar` with an environment-variable source, across several credential
/// lifetimes: every call succeeds, and refreshes exchange the credential (the environment
/// token, single-use, was spent on the first exchange). SIGTERM stops it cleanly.
#[tokio::test]
async fn the_sidecar_command_refreshes_across_lifetimes_with_an_env_token() {
    let tokens = TokenServer::start(2).await;
    let upstream = Upstream::start(&tokens).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = config_text(&upstream, &tokens, "kind = \"env\"\nenv = \"TEST_CI_OIDC_TOKEN\"", "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let config = dir.path().join("sidecar.toml");
    std::fs::write(&config, text).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["sidecar", "--config"])
        .arg(&config)
        .env("TEST_CI_OIDC_TOKEN", "ci-env-token")
        .env("FLOWGATE_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "the sidecar did not start listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut client = Client::connect(addr).await;
    // A long call spans a refresh and still completes.
    let mut slow_client = Client::connect(addr).await;
    let slow = tokio::spawn(async move { slow_client.call(&format!("{WS}/Slow"), &[], frame(b"", false)).await });
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_millis(6500) {
        let reply = describe(&mut client, Some("Bearer worker-own")).await;
        assert_eq!(reply.code(), "0", "call {calls} after {:?}: {reply:?}", started.elapsed());
        calls += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(slow.await.unwrap().code(), "0");
    let exchanges = tokens.token_exchanges();
    assert!(exchanges.len() >= 4, "a 2 s credential refreshed about every second: {exchanges:?}");
    assert_eq!(exchanges[0].subject_token, "ci-env-token");
    assert_eq!(exchanges[1].subject_token, "cred-1", "the unchanged environment token is spent");
    assert_eq!(exchanges[2].subject_token, "cred-2");
    assert!(upstream.violations().is_empty(), "{:?}", upstream.violations());
    let seen = upstream.seen.lock().unwrap().clone();
    let distinct: std::collections::HashSet<_> = seen.iter().collect();
    assert!(distinct.len() >= 4, "calls used successive credentials: {distinct:?}");

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await.unwrap().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}\n{log}", output.status);
    assert!(log.contains("credential refreshed"), "{log}");
    assert!(log.contains("next_refresh_in"), "{log}");
    assert!(!log.contains("ci-env-token") && !log.contains("cred-1"), "tokens are never logged: {log}");
}

/// An environment token the gateway refuses can never be replaced: the sidecar exits non-zero
/// with the gateway's reason, so a CI step fails at once instead of hanging.
#[tokio::test]
async fn the_sidecar_command_exits_when_its_environment_token_is_refused() {
    let tokens = TokenServer::start(60).await;
    tokens.state.used.lock().unwrap().insert("spent-token".to_owned());
    let upstream = Upstream::start(&tokens).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&upstream, &tokens, "kind = \"env\"\nenv = \"TEST_CI_OIDC_TOKEN\"", "");
    let config = dir.path().join("sidecar.toml");
    std::fs::write(&config, text).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["sidecar", "--config"])
        .arg(&config)
        .env("TEST_CI_OIDC_TOKEN", "spent-token")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await.unwrap().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("no credential can be had"), "{log}");
    assert!(log.contains("token exchange refused: invalid_grant: subject token was already used"), "{log}");
}

fn token_command(tokens: &TokenServer, subject_env: &str, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["token", "exchange", "--gateway", &tokens.url, "--scope", SCOPE, "--subject-token-env", "SUBJECT"])
        .args(extra)
        .env("SUBJECT", subject_env)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_command_prints_writes_and_explains_refusals() {
    use std::os::unix::fs::PermissionsExt;
    let tokens = TokenServer::start(900).await;

    let output = tokio::task::block_in_place(|| token_command(&tokens, "ci-1", &[]));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "cred-1\n");

    let output = tokio::task::block_in_place(|| token_command(&tokens, "ci-2", &["-o", "json"]));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let response: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(response["access_token"], "cred-2");
    assert_eq!(response["expires_in"], 900);
    assert_eq!(response["scope"], SCOPE);
    assert_eq!(response["issued_token_type"], "urn:ietf:params:oauth:token-type:jwt");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credential");
    let output =
        tokio::task::block_in_place(|| token_command(&tokens, "ci-3", &["--output-file", file.to_str().unwrap()]));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "cred-3");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    // Subject tokens are single-use: the second try is refused, and the gateway's words reach stderr.
    let output = tokio::task::block_in_place(|| token_command(&tokens, "ci-3", &[]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("token exchange refused: invalid_grant: subject token was already used"), "{stderr}");
    assert!(output.stdout.is_empty());

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["token", "exchange", "--gateway", &tokens.url, "--scope", SCOPE])
        .output()
        .unwrap();
    assert!(!output.status.success(), "a subject token option is required");
}
