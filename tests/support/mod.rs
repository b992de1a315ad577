//! Test harness: a JWKS server, a fake Temporal upstream, a gRPC client and a running gateway,
//! all on 127.0.0.1 with free ports.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub const WS: &str = "/temporal.api.workflowservice.v1.WorkflowService";

// ---- protobuf and gRPC framing ---------------------------------------------------------------

pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

pub fn field(number: u32, value: &[u8]) -> Vec<u8> {
    let mut out = varint((u64::from(number) << 3) | 2);
    out.extend(varint(value.len() as u64));
    out.extend_from_slice(value);
    out
}

pub fn start_request(namespace: &str, workflow_id: &str, workflow_type: &str, task_queue: &str) -> Vec<u8> {
    [
        field(1, namespace.as_bytes()),
        field(2, workflow_id.as_bytes()),
        field(3, &field(1, workflow_type.as_bytes())),
        field(4, &field(1, task_queue.as_bytes())),
    ]
    .concat()
}

pub fn frame(message: &[u8], compressed: bool) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

// ---- signing keys and tokens -----------------------------------------------------------------

pub struct SigningKey {
    pub kid: String,
    pub encoding: jsonwebtoken::EncodingKey,
    pub jwk: serde_json::Value,
    pub pem: String,
}

impl SigningKey {
    pub fn es256(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = pair.serialize_pem();
        let point = pair.public_key_raw();
        assert_eq!(point[0], 4, "uncompressed point");
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        SigningKey {
            kid: kid.to_owned(),
            encoding: jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            jwk,
            pem,
        }
    }

    /// An ES256 token with a low-s signature (what flowgate accepts by default).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// The same token with a high-s signature: `(r, n - s)`, which verifies just as well.
    pub fn sign_high_s(&self, claims: &serde_json::Value) -> String {
        ecdsa_twin(&self.sign(claims))
    }

    /// Signs with `header` (ES256: normalized to low-s, like a careful IdP).
    pub fn sign_with_header(&self, header: &jsonwebtoken::Header, claims: &serde_json::Value) -> String {
        let token = jsonwebtoken::encode(header, claims, &self.encoding).unwrap();
        if header.alg == jsonwebtoken::Algorithm::ES256 && is_high_s(&token) { ecdsa_twin(&token) } else { token }
    }
}

// ES256 signature malleability: (r, s) and (r, n - s) both verify. Written out here rather
// than taken from flowgate, so the tests do not trust the code they test.

/// The order of P-256, big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

fn es256_signature(token: &str) -> (&str, Vec<u8>) {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    assert_eq!(signature.len(), 64, "an ES256 signature is r || s, 32 bytes each");
    (signed, signature)
}

/// `n - s` for a 32-byte big-endian `s` below `n`.
fn order_minus(s: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut digit = i16::from(P256_ORDER[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(digit < 0);
        if digit < 0 {
            digit += 256;
        }
        out[i] = digit as u8;
    }
    assert_eq!(borrow, 0, "s is below the order");
    out
}

/// Whether an ES256 token's `s` is above half the order (`s > n - s`).
pub fn is_high_s(token: &str) -> bool {
    let (_, signature) = es256_signature(token);
    signature[32..] > order_minus(&signature[32..])[..]
}

/// The other valid signature of an ES256 token: `(r, n - s)`.
pub fn ecdsa_twin(token: &str) -> String {
    let (signed, signature) = es256_signature(token);
    let twin = [&signature[..32], &order_minus(&signature[32..])[..]].concat();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(twin))
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Assembles a token from raw parts (for forgeries no library would produce).
pub fn raw_token(header: &serde_json::Value, claims: &serde_json::Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

// ---- the JWKS server -------------------------------------------------------------------------

#[derive(Clone)]
pub struct Jwks {
    pub url: String,
    pub document: Arc<Mutex<serde_json::Value>>,
    pub fetches: Arc<AtomicUsize>,
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

impl Jwks {
    pub async fn start(keys: &[&SigningKey]) -> Jwks {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let jwks = Jwks {
            url,
            document: Arc::new(Mutex::new(
                serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}),
            )),
            fetches: Arc::new(AtomicUsize::new(0)),
            down: Arc::new(false.into()),
        };
        let served = jwks.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let served = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        let served = served.clone();
                        async move {
                            served.fetches.fetch_add(1, Ordering::SeqCst);
                            let (status, body) = if served.down.load(Ordering::SeqCst) {
                                (503, "down".to_owned())
                            } else {
                                (200, served.document.lock().unwrap().to_string())
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder().status(status).body(Full::new(Bytes::from(body))).unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        jwks
    }

    pub fn set_keys(&self, keys: &[&SigningKey]) {
        *self.document.lock().unwrap() =
            serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }

    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

// ---- the fake upstream -----------------------------------------------------------------------

/// What the upstream saw of one call.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

/// How the fake upstream answers a call: after `delay`, `message` (if any) then trailers with
/// `grpc-status` and `grpc-message`.
pub struct Answer {
    pub delay: Duration,
    pub status: &'static str,
    pub grpc_message: &'static str,
    pub message: Option<Vec<u8>>,
}

/// Picks the answer to a call; `None` is the default answer (see [`Upstream::start`]).
pub type Responder = Arc<dyn Fn(&Seen) -> Option<Answer> + Send + Sync>;

impl Upstream {
    /// Answers every call with a one-message response and `grpc-status: 0` plus a custom
    /// trailer; a call whose path ends in `/Slow` waits 2 s first.
    pub async fn start() -> Upstream {
        Upstream::start_with(Arc::new(|_| None)).await
    }

    /// Like [`start`](Self::start), but `responder` may answer a call otherwise.
    pub async fn start_with(responder: Responder) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream { addr: listener.local_addr().unwrap(), seen: Arc::new(Mutex::new(Vec::new())) };
        let seen = upstream.seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                let responder = responder.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        let responder = responder.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let path = parts.uri.path().to_owned();
                            let call = Seen { path: path.clone(), headers: parts.headers, body };
                            let answer = responder(&call);
                            seen.lock().unwrap().push(call);
                            let mut trailers = http::HeaderMap::new();
                            let mut frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = vec![];
                            match answer {
                                Some(answer) => {
                                    tokio::time::sleep(answer.delay).await;
                                    trailers.insert("grpc-status", answer.status.parse().unwrap());
                                    trailers.insert("grpc-message", answer.grpc_message.parse().unwrap());
                                    if let Some(message) = answer.message {
                                        frames.push(Ok(http_body::Frame::data(Bytes::from(frame(&message, false)))));
                                    }
                                }
                                None => {
                                    if path.ends_with("/Slow") || path.ends_with("/PollActivityTaskQueue") {
                                        tokio::time::sleep(Duration::from_secs(2)).await;
                                    }
                                    trailers.insert("grpc-status", "0".parse().unwrap());
                                    trailers.insert("x-upstream-trailer", "kept".parse().unwrap());
                                    frames.push(Ok(http_body::Frame::data(Bytes::from(frame(b"\x0a\x02ok", false)))));
                                }
                            }
                            frames.push(Ok(http_body::Frame::trailers(trailers)));
                            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .unwrap(),
                            )
                        }
                    });
                    // Like Temporal's frontend, not hyper's default of 200 streams.
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(100_000)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    pub fn calls(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

// ---- a gRPC client ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct Reply {
    pub status: Option<String>,
    pub message: Option<String>,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.status.as_deref().unwrap_or("missing")
    }
}

/// Clones share one HTTP/2 connection (concurrent calls are streams on it).
#[derive(Clone)]
pub struct Client {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Client { sender }
    }

    pub async fn call(&mut self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let mut request = http::Request::post(format!("http://flowgate{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .or_else(|| trailers.as_ref().and_then(|t| t.get(name)))
                .map(|v| v.to_str().unwrap().to_owned())
        };
        Reply {
            status: header("grpc-status"),
            message: header("grpc-message").map(|m| percent_decode(&m)),
            body: collected.to_bytes(),
            trailers,
        }
    }

    /// A unary call with a bearer token.
    pub async fn unary(&mut self, method: &str, token: Option<&str>, message: &[u8]) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("client-name", "flowgate-tests"), ("client-version", "1.0")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        self.call(&format!("{WS}/{method}"), &headers, frame(message, false)).await
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| u8::from_str_radix(&text[i + 1..i + 3], 16).ok())
            .flatten();
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---- the gateway -----------------------------------------------------------------------------

pub const POLICY: &str = r#"
@id("deployers-start-deploys")
permit (
  principal in Temporal::Group::"test:deployers",
  action in [Temporal::Action::"StartWorkflowExecution", Temporal::Action::"SignalWithStartWorkflowExecution"],
  resource in Temporal::Namespace::"payments"
) when { resource has type && resource.type == "DeployWorkflow" };

@id("deployers-read")
permit (principal in Temporal::Group::"test:deployers", action in Temporal::Action::"read", resource in Temporal::Namespace::"payments");

@id("workers-poll")
permit (principal in Temporal::Group::"test:workers", action in Temporal::Action::"worker", resource in Temporal::Namespace::"payments");
"#;

pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    /// `policy.dir` and `policy.shadow_dir` (the latter only with `Setup::shadow_policy`).
    pub policy_dir: PathBuf,
    pub shadow_dir: PathBuf,
    pub audit_path: PathBuf,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub struct Setup {
    /// Extra keys for `[listen]`, e.g. `tls = { … }`.
    pub listen_extra: String,
    pub issuer_extra: String,
    pub audit_path: Option<String>,
    pub upstream: String,
    /// Extra keys for `[upstream]`, e.g. `credentials = "minted"`.
    pub upstream_extra: String,
    /// Extra top-level tables after the issuer, e.g. `[mint]`.
    pub tables: String,
    pub policy: String,
    /// Extra keys for `[policy]`, e.g. `watch_interval = "100ms"`.
    pub policy_extra: String,
    /// A shadow policy set (`policy.shadow_dir`).
    pub shadow_policy: Option<String>,
    /// Extra keys for `[limits]`, e.g. `max_concurrent_calls = 2`.
    pub limits_extra: String,
}

impl Setup {
    pub fn new(upstream: &Upstream) -> Setup {
        Setup {
            listen_extra: String::new(),
            issuer_extra: String::new(),
            audit_path: None,
            upstream: format!("http://{}", upstream.addr),
            upstream_extra: String::new(),
            tables: String::new(),
            policy: POLICY.to_owned(),
            policy_extra: String::new(),
            shadow_policy: None,
            limits_extra: String::new(),
        }
    }
}

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "api://temporal";

pub fn claims(sub: &str, groups: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "sub": sub, "aud": AUDIENCE, "iat": now(), "nbf": now(), "exp": now() + 300,
        "groups": groups, "tenant": "acme",
    })
}

impl Gateway {
    pub async fn start(jwks: &Jwks, setup: Setup) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("schema.cedarschema"), flowgate::authz::generated_schema()).unwrap();
        std::fs::write(policies.join("test.cedar"), &setup.policy).unwrap();
        let shadow_dir = dir.path().join("shadow");
        let mut policy_extra = setup.policy_extra.clone();
        if let Some(shadow) = &setup.shadow_policy {
            std::fs::create_dir(&shadow_dir).unwrap();
            std::fs::write(shadow_dir.join("schema.cedarschema"), flowgate::authz::generated_schema()).unwrap();
            std::fs::write(shadow_dir.join("test.cedar"), shadow).unwrap();
            policy_extra.push_str(&format!("\nshadow_dir = \"{}\"\n", shadow_dir.display()));
        }
        let audit_path =
            setup.audit_path.clone().map(PathBuf::from).unwrap_or_else(|| dir.path().join("decisions.jsonl"));
        let text = format!(
            r#"
            [listen]
            address = "127.0.0.1:0"
            shutdown_grace = "5s"
            {listen_extra}
            [admin]
            address = "127.0.0.1:0"
            [upstream]
            address = "{upstream}"
            {upstream_extra}
            [policy]
            dir = "{policies}"
            {policy_extra}
            [audit]
            path = "{audit}"
            [limits]
            max_message_bytes = 65536
            max_inflated_bytes = 65536
            {limits_extra}
            [[issuers]]
            name = "test"
            issuer = "{ISSUER}"
            jwks_uri = "{jwks}"
            audiences = ["{AUDIENCE}"]
            groups_claim = "groups"
            algorithms = ["ES256"]
            required_claims = {{ tenant = "acme" }}
            jwks_min_refresh = "1s"
            max_token_lifetime = "1h"
            {extra}
            {tables}
            "#,
            upstream = setup.upstream,
            policies = policies.display(),
            audit = audit_path.display(),
            jwks = jwks.url,
            extra = setup.issuer_extra,
            listen_extra = setup.listen_extra,
            upstream_extra = setup.upstream_extra,
            tables = setup.tables,
            limits_extra = setup.limits_extra,
        );
        let policy_dir = policies.clone();
        let config = flowgate::Config::parse(&text).unwrap();
        let listeners = flowgate::Listeners {
            gateway: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        };
        let addr = listeners.gateway.local_addr().unwrap();
        let admin = listeners.admin.as_ref().unwrap().local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(flowgate::run(listeners, config, async move {
            let _ = rx.await;
        }));
        // Wait until the issuer's keys are in (the first fetch happens at start).
        for _ in 0..100 {
            if jwks.fetch_count() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Gateway { addr, admin, dir, policy_dir, shadow_dir, audit_path, shutdown: Some(tx), task }
    }

    /// An HTTP/1.1 request to the gateway's listener (token endpoint, JWKS, discovery).
    pub async fn http(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, serde_json::Value) {
        self.http_with(method, path, &[("content-type", content_type)], body).await
    }

    /// [`Gateway::http`] with any headers (the HTTP API).
    pub async fn http_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, serde_json::Value) {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let mut request = http::Request::builder().method(method).uri(path).header("host", "flowgate");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(http_body_util::Full::new(Bytes::from(body.to_owned()))).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    /// Every line of the decision log so far. Read while calls are still being decided, the file
    /// may end inside a line the writer has not finished: only whole lines (ended by `\n`) count.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    /// The decision records written so far (outcome records and principal snapshots left out).
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.audit_lines()
            .into_iter()
            .filter(|record| record["kind"] != "outcome" && record["kind"] != "principal")
            .collect()
    }

    /// The outcome records written so far.
    pub fn outcomes(&self) -> Vec<serde_json::Value> {
        self.audit_lines().into_iter().filter(|record| record["kind"] == "outcome").collect()
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let stream = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let request =
            http::Request::get(path).header("host", "admin").body(http_body_util::Empty::<Bytes>::new()).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn admin_post(&self, path: &str, body: &str) -> (u16, String) {
        let stream = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::post(path)
            .header("host", "admin")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Replaces a policy file the way a deployment does: a new file renamed over the old one.
    pub fn replace_policy(dir: &std::path::Path, text: &str) {
        let temporary = dir.join(".test.cedar.new");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, dir.join("test.cedar")).unwrap();
    }

    /// A metric's value from `/metrics` (the whole sample line's name and labels), 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines().find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.await.unwrap()
    }
}
