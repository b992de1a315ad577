//! Forwarding: one multiplexed HTTP/2 connection to the Temporal frontend, and the bodies that
//! stream through it.
//!
//! The connection is hyper's own `client::conn::http2`, not `hyper_util`'s pooled client: every
//! call goes to one authority over one h2 connection, so a pool has nothing to choose, and its
//! per-call price was real: a checkout under the pool's lock, and a boxed response future of
//! 3.5 KiB held for as long as the call lasts (70 s for each of thousands of idle long polls).
//! [`Upstream`] keeps the connection's `SendRequest`, reconnects when it has closed (one attempt at
//! a time; the calls waiting meanwhile share its outcome) and sends a call again, once, if the
//! connection closed before the call was written to it.
//!
//! The request body forwarded upstream is the message flowgate already read for inspection,
//! followed by whatever the client still sends; the response body is the upstream's, frame by
//! frame, trailers included. Nothing here imposes a timeout of its own: a call lasts as long as
//! its `grpc-timeout` (worker long polls last 70 s).
//!
//! Only the responses that hand out task tokens are read whole ([`ResponseBody::rewritten`]):
//! their one message is held until it is complete, inflated, rewritten with sealed tokens and
//! sent on uncompressed; anything that goes wrong ends the call with `INTERNAL` instead of
//! letting an unsealed token through.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

use crate::api_key::{ApiKey, ApiKeyError};
use crate::budget::{Held, Reservation};
use crate::config::UpstreamConfig;
use crate::error::error_chain;
use crate::grpc::{Code, encode_message};
use crate::pem::{PemError, read_certs, read_key};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Per-stream HTTP/2 flow-control window: one 4 MiB Temporal message in flight per call.
pub const HTTP2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection window, shared by every call on a connection.
pub const HTTP2_CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;

/// Why a call could not be sent upstream (`status` maps it to `UNAVAILABLE` or
/// `DEADLINE_EXCEEDED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("deadline exceeded waiting for the upstream")]
    Deadline,
}

/// The upstream Temporal frontend. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Upstream {
    channel: Arc<Channel>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    address: Arc<str>,
    /// `upstream.credentials = "api_key"`: the `authorization` of every request sent.
    api_key: Option<Arc<ApiKey>>,
}

/// The one HTTP/2 connection to the upstream, made when first needed and again after it closed.
struct Channel {
    connector: Connector,
    h2: http2::Builder<TokioExecutor>,
    /// Where the connector connects (scheme and authority of `upstream.address`).
    target: http::Uri,
    /// Bounds a connection attempt: TCP connect, TLS and the HTTP/2 handshake together.
    connect_timeout: Duration,
    /// The open connection's sender; taken (cloned) by every call, so held for nanoseconds.
    open: std::sync::Mutex<Option<SendRequest<ForwardBody>>>,
    /// Held while connecting (one attempt at a time): why the last attempt failed, if it did.
    connecting: tokio::sync::Mutex<Option<String>>,
    /// Attempts ended; a call notes it before waiting, to tell whether one ended meanwhile.
    attempts: AtomicU64,
}

impl Channel {
    /// The open connection's sender, if it has not closed.
    fn open(&self) -> Option<SendRequest<ForwardBody>> {
        let open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        open.as_ref().filter(|sender| !sender.is_closed()).cloned()
    }

    /// Forgets the connection if it has closed (a call found it so), unless it was replaced.
    fn forget_closed(&self) {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.as_ref().is_some_and(SendRequest::is_closed) {
            *open = None;
        }
    }

    /// A sender on an open connection: the current one, or a new connection's. Calls that
    /// arrive while an attempt is under way wait for it and share its outcome, so an upstream
    /// that is down costs one attempt per wave of calls, not one per call.
    async fn sender(&self) -> Result<SendRequest<ForwardBody>, String> {
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let mut failed = self.connecting.lock().await;
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        if let Some(why) = failed.as_ref().filter(|_| self.attempts.load(Ordering::Acquire) != seen) {
            return Err(why.clone()); // an attempt ended while this call waited for it
        }
        let outcome = match tokio::time::timeout(self.connect_timeout, self.connect()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no connection within {:?}", self.connect_timeout)),
        };
        // Counted when it ends: every call that started waiting before then shares this outcome,
        // so a wave of calls meeting an upstream that hangs waits for one attempt, not in turn
        // for one each.
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match outcome {
            Ok(sender) => {
                *failed = None;
                *self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sender.clone());
                Ok(sender)
            }
            Err(why) => Err(failed.insert(why).clone()),
        }
    }

    /// Sends `request` on a new connection (or the one another call just made): no
    /// connection was open, or the one it was given to closed before writing it.
    async fn send_on_new(&self, request: http::Request<ForwardBody>) -> Result<http::Response<Incoming>, String> {
        let mut sender = self.sender().await?;
        sender.try_send_request(request).await.map_err(|error| error_chain(error.error()))
    }

    async fn connect(&self) -> Result<SendRequest<ForwardBody>, String> {
        let stream = self.connector.clone().call(self.target.clone()).await.map_err(|e| error_chain(&*e))?;
        // Boxed: hyper spawns a task per call (the wait for its response) whose size is that of
        // the connection's, stream included, and a TLS stream is over a kilobyte.
        let stream = Box::new(stream);
        let (sender, connection) = self.h2.handshake(stream).await.map_err(|e| error_chain(&e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(error = %error_chain(&error), "upstream connection closed");
            }
        });
        Ok(sender)
    }
}

/// A configuration problem with the upstream's TLS material or its API key.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    ApiKey(#[from] ApiKeyError),
}

impl From<PemError> for UpstreamSetupError {
    fn from(error: PemError) -> Self {
        UpstreamSetupError::Tls(error.to_string())
    }
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, UpstreamSetupError> {
        let uri: http::Uri = config.address.parse().map_err(|e| UpstreamSetupError::Tls(format!("{e}")))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // Without it a small unary call waits ~40 ms for Nagle and delayed ACK.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamSetupError::Tls(e.to_string()))?;
        // `upstream.ca` alone when set (a private Temporal's CA, as Temporal's own clients take
        // it); otherwise the system's roots, which include the public CAs Temporal Cloud uses.
        let builder = match &config.ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| UpstreamSetupError::Tls(format!("bad CA certificate: {e}")))?;
                }
                versions.with_root_certificates(roots)
            }
            None => {
                let verifier = rustls_platform_verifier::Verifier::new(provider)
                    .map_err(|e| UpstreamSetupError::Tls(format!("system roots: {e}")))?;
                versions.dangerous().with_custom_certificate_verifier(Arc::new(verifier))
            }
        };
        let tls = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| UpstreamSetupError::Tls(format!("client certificate: {e}")))?,
            _ => builder.with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let connector = match &config.server_name {
            Some(name) => connector.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
                name.clone().try_into().map_err(|e| UpstreamSetupError::Tls(format!("server_name `{name}`: {e}")))?,
            )),
            None => connector,
        }
        .enable_http2()
        .wrap_connector(http);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            // Large windows, not adaptive ones: h2 budgets small non-final DATA frames (every
            // unary response is one, before its trailers) at half the connection window, and
            // a burst of hundreds of poll responses overran the default and tore down the
            // whole upstream connection. Windows are credit, not allocated memory.
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        let authority = uri.authority().cloned().expect("config validation checked the authority");
        let target = http::Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamSetupError::Tls(e.to_string()))?;
        let channel = Channel {
            connector,
            h2,
            target,
            connect_timeout: config.connect_timeout.saturating_mul(2),
            open: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
        };
        let api_key = ApiKey::load(config)?.map(Arc::new);
        Ok(Upstream { channel: Arc::new(channel), scheme, authority, address: config.address.as_str().into(), api_key })
    }

    /// Sends a request upstream, rewritten to the upstream's scheme and authority.
    ///
    /// The request is handed to the open connection before this returns, and the future holds
    /// only the wait for the response: each of a worker's idle long polls keeps it for 70 s. The
    /// way to a new connection (no connection is open, or the one the call was given to closed
    /// before writing it: it is resent once) is boxed, and taken only then.
    pub fn send(
        &self,
        parts: http::request::Parts,
        body: ForwardBody,
    ) -> impl Future<Output = Result<http::Response<Incoming>, UpstreamError>> + Send + use<> {
        let channel = self.channel.clone();
        let address = self.address.clone();
        // Boxed: the wait holds a slot for the request (which the connection gives back when it
        // closed before writing it), and only the box's address stays in the caller's future.
        let first = self.request(parts, body).map(|request| match channel.open() {
            Some(mut sender) => Ok(Box::pin(sender.try_send_request(request))),
            None => Err(Box::new(request)),
        });
        async move {
            let unavailable = |why: String| UpstreamError::Unavailable(format!("`{address}`: {why}"));
            let unsent = match first? {
                Ok(sent) => match sent.await {
                    Ok(response) => return Ok(response),
                    Err(mut error) => match error.take_message() {
                        Some(unsent) => {
                            channel.forget_closed();
                            unsent
                        }
                        None => return Err(unavailable(error_chain(error.error()))),
                    },
                },
                Err(unsent) => *unsent,
            };
            Box::pin(channel.send_on_new(unsent)).await.map_err(unavailable)
        }
    }

    /// [`Upstream::send`], bounded by the caller's own deadline (plus a second: the upstream
    /// answers first).
    pub async fn send_within(
        &self,
        parts: http::request::Parts,
        body: ForwardBody,
        deadline: Option<Duration>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let response = self.send(parts, body);
        match deadline {
            Some(deadline) => tokio::time::timeout(deadline + Duration::from_secs(1), response)
                .await
                .map_err(|_| UpstreamError::Deadline)?,
            None => response.await,
        }
    }

    /// `parts` and `body` as a request to the upstream: its scheme and authority, HTTP/2.
    fn request(
        &self,
        mut parts: http::request::Parts,
        body: ForwardBody,
    ) -> Result<http::Request<ForwardBody>, UpstreamError> {
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        parts.version = http::Version::HTTP_2;
        parts.headers.remove(http::header::HOST);
        if let Some(key) = &self.api_key {
            parts.headers.insert(http::header::AUTHORIZATION, key.header());
        }
        Ok(http::Request::from_parts(parts, body))
    }

    /// A unary call flowgate makes itself (a health check, a namespace lookup, failing a
    /// refused workflow task), its answer read whole, at most `limit` bytes of body.
    pub async fn unary(&self, parts: http::request::Parts, message: Bytes, limit: usize) -> Result<UnaryReply, String> {
        let response = self.send(parts, ForwardBody::new(message, None, None)).await.map_err(|r| r.to_string())?;
        let (parts, body) = response.into_parts();
        let collected = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit))
            .await
            .map_err(|error| format!("the upstream's answer could not be read: {error}"))?;
        let trailers = collected.trailers().cloned();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .or_else(|| trailers.as_ref().and_then(|t| t.get(name)))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(UnaryReply {
            status: header("grpc-status").unwrap_or_else(|| "missing".into()),
            message: crate::grpc::decode_message(&header("grpc-message").unwrap_or_default()),
            body: collected.to_bytes(),
        })
    }

    /// The API key every request carries (`upstream.credentials = "api_key"`), to watch.
    pub fn api_key(&self) -> Option<&Arc<ApiKey>> {
        self.api_key.as_ref()
    }

    /// `upstream.address`, as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether a connection to the upstream is open now. It is made by the first call (or
    /// readiness check) and again after it closes; nothing is sent to find out.
    pub fn connected(&self) -> bool {
        self.channel.open().is_some()
    }

    /// A gRPC health check against the upstream, for `/readyz`.
    pub async fn check_health(&self) -> Result<(), String> {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri("/grpc.health.v1.Health/Check")
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .expect("static request is valid");
        let (parts, ()) = request.into_parts();
        let reply = tokio::time::timeout(Duration::from_secs(2), self.unary(parts, Bytes::from_static(&[0; 5]), 4096))
            .await
            .map_err(|_| format!("upstream `{}` did not answer within 2s", self.address))?
            .map_err(|e| format!("upstream `{}`: {e}", self.address))?;
        let status = reply.status;
        if status == "0" { Ok(()) } else { Err(format!("upstream health check returned grpc-status {status}")) }
    }
}

/// A unary gRPC answer: its status and message (from the headers or the trailers) and body.
#[derive(Debug)]
pub struct UnaryReply {
    pub status: String,
    pub message: String,
    pub body: Bytes,
}

/// A call's request body as the gateway gets it: a gRPC client's stream, or a message that is
/// all there already (an HTTP API request flowgate transcoded, framed as gRPC).
pub enum ClientBody {
    Stream(Incoming),
    Whole(Option<Bytes>),
}

impl ClientBody {
    pub fn whole(message: Bytes) -> ClientBody {
        ClientBody::Whole(Some(message))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Stream(stream) => Pin::new(stream).poll_frame(cx),
            ClientBody::Whole(message) => Poll::Ready(message.take().map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Stream(stream) => stream.is_end_stream(),
            ClientBody::Whole(message) => message.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Stream(stream) => stream.size_hint(),
            ClientBody::Whole(message) => SizeHint::with_exact(message.as_ref().map_or(0, |m| m.len() as u64)),
        }
    }
}

/// The request body sent upstream: the bytes read for inspection, then the rest of the stream.
pub struct ForwardBody {
    prefix: Option<Bytes>,
    rest: Option<ClientBody>,
    /// The budget the prefix was read under, given back when the body has been sent.
    _held: Option<Reservation>,
}

impl ForwardBody {
    pub fn new(prefix: Bytes, rest: Option<ClientBody>, held: Option<Reservation>) -> ForwardBody {
        ForwardBody { prefix: (!prefix.is_empty()).then_some(prefix), rest, _held: held }
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(|rest| rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = self.rest.as_ref().map_or_else(|| SizeHint::with_exact(0), |rest| rest.size_hint());
        // Upper first: `set_lower` asserts the new lower bound does not pass the upper one.
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + prefix);
        }
        hint.set_lower(hint.lower() + prefix);
        hint
    }
}

/// The response body sent to the client: the upstream's, observed on its way through so the
/// call's final gRPC status and duration reach the metrics; or nothing, for a refusal.
#[derive(Default)]
pub struct ResponseBody {
    upstream: Option<Incoming>,
    /// The upstream's body with its message rewritten ([`ResponseBody::rewritten`]).
    rewriting: Option<Pin<Box<dyn Body<Data = Bytes, Error = hyper::Error> + Send>>>,
    /// A complete body flowgate answers itself (token endpoint, JWKS, discovery).
    full: Option<Bytes>,
    /// Told how the response ended ([`ResponseBody::watched`]).
    watch: Option<Box<Watch>>,
    /// Budget bytes given back when the body is dropped ([`ResponseBody::holding`]).
    held: Option<Held>,
}

/// How a forwarded call's response ended: what its outcome record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending<'a> {
    /// The gRPC status code (0 is OK).
    pub status: u16,
    /// `grpc-message`, decoded.
    pub message: Option<String>,
    /// The response's message, inflated, when the watcher asked to see it and it was complete
    /// and no larger than [`MAX_WATCHED_MESSAGE_BYTES`].
    pub body: Option<&'a [u8]>,
}

/// Learns how a response ended, exactly once: at its trailers, at its end, or when the client
/// goes away first (`CANCELLED`).
pub trait ResponseWatcher: Send {
    /// Whether [`Ending::body`] is wanted (a start's response, for its run id).
    fn wants_body(&self) -> bool;
    fn ended(self: Box<Self>, ending: Ending<'_>);
}

/// The largest response message a watcher is shown.
pub const MAX_WATCHED_MESSAGE_BYTES: usize = 64 * 1024;

struct Watch {
    watcher: Option<Box<dyn ResponseWatcher>>,
    /// The framed message as it arrived, while it is wanted and small enough.
    kept: Option<Vec<u8>>,
    gzip: bool,
}

impl Watch {
    fn observe(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            if let Some(kept) = &mut self.kept {
                if kept.len() + data.len() <= MAX_WATCHED_MESSAGE_BYTES + 5 {
                    kept.extend_from_slice(data);
                } else {
                    self.kept = None;
                }
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.end_with(trailers);
        }
    }

    /// The status in `fields` (trailers, or the headers of a trailers-only answer).
    fn end_with(&mut self, fields: &http::HeaderMap) {
        let status = fields
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok())
            // No status where one must be: the call did not end well.
            .unwrap_or(Code::Unknown as u16);
        let message = fields.get("grpc-message").and_then(|v| v.to_str().ok()).map(crate::grpc::decode_message);
        self.end(status, message);
    }

    fn end(&mut self, status: u16, message: Option<String>) {
        let Some(watcher) = self.watcher.take() else { return };
        let kept = self.kept.take();
        let inflated = kept.as_deref().and_then(|framed| {
            let (flag, len) = (*framed.first()?, u32::from_be_bytes(framed.get(1..5)?.try_into().ok()?) as usize);
            let message = framed.get(5..)?;
            (message.len() == len).then_some(())?;
            match flag {
                0 => Some(std::borrow::Cow::Borrowed(message)),
                1 if self.gzip => gunzip(message, MAX_WATCHED_MESSAGE_BYTES).ok().map(std::borrow::Cow::Owned),
                _ => None,
            }
        });
        watcher.ended(Ending { status, message, body: inflated.as_deref() });
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Dropped before it ended: the client went away (or the connection did).
        self.end(Code::Cancelled as u16, Some("the response did not reach its end (the client went away)".into()));
    }
}

/// How a response message is rewritten: from its (inflated) protobuf bytes to the bytes to send
/// instead, `None` to send it as it came, or why it cannot be sent at all.
pub type Rewrite = Box<dyn FnOnce(&[u8]) -> Result<Option<Vec<u8>>, String> + Send>;

/// The largest response message [`ResponseBody::rewritten`] reads whole, before and after
/// inflating. Temporal's frontend answers a workflow task with its first history page, far less.
pub const MAX_REWRITTEN_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Where a [`Rewriting`] body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RewriteState {
    /// Collecting the first message.
    Reading,
    /// The message is sent; trailers follow.
    Sent,
    Done,
}

/// A unary response body whose one message is read whole, rewritten, and sent on; the upstream's
/// trailers follow unchanged. Nothing of the upstream message is sent before the rewrite
/// succeeded.
struct Rewriting<B> {
    upstream: B,
    buffered: Vec<u8>,
    rewrite: Option<Rewrite>,
    /// The response's `grpc-encoding` is gzip, so a message flagged compressed can be read.
    gzip: bool,
    state: RewriteState,
    method: &'static str,
}

impl<B> Rewriting<B> {
    /// Ends the call with `INTERNAL`: the client sees an error status, never the message.
    fn fail(&mut self, reason: &str) -> Frame<Bytes> {
        tracing::error!(method = self.method, %reason, "cannot seal task token");
        self.state = RewriteState::Done;
        self.buffered = Vec::new();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static(Code::Internal.as_str()));
        let message = encode_message(&format!("cannot seal task token: {reason}"));
        trailers.insert(
            "grpc-message",
            http::HeaderValue::try_from(message).expect("percent-encoded text is a valid header"),
        );
        Frame::trailers(trailers)
    }

    /// The framed message to send once `buffered` holds the whole first message; `Ok(None)`
    /// while more bytes are needed.
    fn try_message(&mut self) -> Result<Option<Bytes>, String> {
        let Some(prefix) = self.buffered.get(..5) else {
            return Ok(None);
        };
        let flag = prefix[0];
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > MAX_REWRITTEN_MESSAGE_BYTES {
            return Err(format!(
                "response message of {len} bytes is over the {MAX_REWRITTEN_MESSAGE_BYTES} flowgate reads"
            ));
        }
        if self.buffered.len() < 5 + len {
            return Ok(None);
        }
        if self.buffered.len() > 5 + len {
            return Err("upstream sent more than one response message".into());
        }
        let message = &self.buffered[5..];
        let inflated = match flag {
            0 => std::borrow::Cow::Borrowed(message),
            1 if self.gzip => std::borrow::Cow::Owned(gunzip(message, MAX_REWRITTEN_MESSAGE_BYTES)?),
            1 => return Err("compressed response message without `grpc-encoding: gzip`".into()),
            other => return Err(format!("response message has compressed flag `{other}`")),
        };
        let rewrite = self.rewrite.take().expect("a message is rewritten once");
        match rewrite(&inflated)? {
            None => Ok(Some(Bytes::from(std::mem::take(&mut self.buffered)))),
            Some(new) => {
                let len = u32::try_from(new.len())
                    .ok()
                    .filter(|&len| len as usize <= MAX_REWRITTEN_MESSAGE_BYTES)
                    .ok_or_else(|| format!("rewritten message of {} bytes is too large", new.len()))?;
                self.buffered = Vec::new();
                // Sent uncompressed: flag 0 is valid whatever the response's `grpc-encoding`.
                let mut framed = Vec::with_capacity(5 + new.len());
                framed.push(0);
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(&new);
                Ok(Some(Bytes::from(framed)))
            }
        }
    }
}

/// Inflates a gzip message (every member, as grpc-go does), refusing more than `limit` bytes
/// without ever holding more than one byte past it.
fn gunzip(message: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let budget = limit.saturating_add(1);
    let mut inflated = Vec::with_capacity(message.len().saturating_mul(4).min(budget));
    flate2::read::MultiGzDecoder::new(message)
        .take(budget as u64)
        .read_to_end(&mut inflated)
        .map_err(|e| format!("response message is not valid gzip: {e}"))?;
    if inflated.len() > limit {
        return Err(format!("response message inflates past the {limit} bytes flowgate reads"));
    }
    Ok(inflated)
}

impl<B> Body for Rewriting<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if this.state == RewriteState::Done {
                return Poll::Ready(None);
            }
            let frame = match std::task::ready!(Pin::new(&mut this.upstream).poll_frame(cx)) {
                None => {
                    // An empty body (a trailers-only answer) ends as it came; a cut message fails.
                    let cut = this.state == RewriteState::Reading && !this.buffered.is_empty();
                    if cut {
                        return Poll::Ready(Some(Ok(this.fail("upstream response ended inside its message"))));
                    }
                    this.state = RewriteState::Done;
                    return Poll::Ready(None);
                }
                Some(Err(error)) => {
                    this.state = RewriteState::Done;
                    return Poll::Ready(Some(Err(error)));
                }
                Some(Ok(frame)) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    // Trailers. After a partial message only an error status may pass: the
                    // partial bytes are dropped, and a success would claim a message never sent.
                    let failed = frame
                        .trailers_ref()
                        .and_then(|t| t.get("grpc-status"))
                        .is_some_and(|status| status.as_bytes() != b"0");
                    if this.state == RewriteState::Reading && !this.buffered.is_empty() && !failed {
                        return Poll::Ready(Some(Ok(this.fail("upstream response ended inside its message"))));
                    }
                    this.state = RewriteState::Done;
                    return Poll::Ready(Some(Ok(frame)));
                }
            };
            if data.is_empty() {
                continue;
            }
            if this.state == RewriteState::Sent {
                return Poll::Ready(Some(Ok(this.fail("upstream sent more than one response message"))));
            }
            this.buffered.extend_from_slice(&data);
            match this.try_message() {
                Ok(None) => continue,
                Ok(Some(message)) => {
                    this.state = RewriteState::Sent;
                    return Poll::Ready(Some(Ok(Frame::data(message))));
                }
                Err(reason) => return Poll::Ready(Some(Ok(this.fail(&reason)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == RewriteState::Done
    }
}

impl ResponseBody {
    /// The upstream's response, frame by frame (the metrics layer watches its trailers).
    pub fn forwarded(upstream: Incoming) -> ResponseBody {
        ResponseBody { upstream: Some(upstream), rewriting: None, full: None, watch: None, held: None }
    }

    /// This body, with `watcher` told how it ends. `headers` are the response's: a
    /// trailers-only answer carries its status there, and ends the watch at once.
    pub fn watched(mut self, headers: &http::HeaderMap, watcher: Box<dyn ResponseWatcher>) -> ResponseBody {
        let gzip = headers.get("grpc-encoding").is_some_and(|e| e.as_bytes() == b"gzip");
        let kept = watcher.wants_body().then(Vec::new);
        let mut watch = Box::new(Watch { watcher: Some(watcher), kept, gzip });
        if headers.contains_key("grpc-status") {
            watch.end_with(headers);
        }
        self.watch = Some(watch);
        self
    }

    /// The upstream's response with its one message rewritten by `rewrite` (task tokens
    /// sealed): the message is read whole (up to [`MAX_REWRITTEN_MESSAGE_BYTES`]), inflated when
    /// compressed, and sent on uncompressed; the trailers follow unchanged. A response without a
    /// message passes as it is. Should anything fail (`rewrite` included), the call ends with
    /// `INTERNAL` "cannot seal task token: …" and the message is not sent.
    ///
    /// The message's length changes, so the caller must not forward a `content-length` header
    /// (gRPC servers send none).
    pub fn rewritten(
        upstream: Incoming,
        method: &'static str,
        headers: &http::HeaderMap,
        rewrite: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>, String> + Send + 'static,
    ) -> ResponseBody {
        ResponseBody::rewritten_from(upstream, method, headers, Box::new(rewrite))
    }

    /// [`ResponseBody::rewritten`] over any body (tests use in-memory ones).
    fn rewritten_from<B>(upstream: B, method: &'static str, headers: &http::HeaderMap, rewrite: Rewrite) -> ResponseBody
    where
        B: Body<Data = Bytes, Error = hyper::Error> + Send + Unpin + 'static,
    {
        let gzip = headers.get("grpc-encoding").is_some_and(|e| e.as_bytes() == b"gzip");
        let rewriting = Rewriting {
            upstream,
            buffered: Vec::new(),
            rewrite: Some(rewrite),
            gzip,
            state: RewriteState::Reading,
            method,
        };
        ResponseBody { upstream: None, rewriting: Some(Box::pin(rewriting)), full: None, watch: None, held: None }
    }

    /// This body, holding `held` until it is dropped (the HTTP door's hold on the bytes of an
    /// answer not read yet).
    pub fn holding(mut self, held: Held) -> ResponseBody {
        self.held = Some(held);
        self
    }

    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody { upstream: None, rewriting: None, full: Some(bytes.into()), watch: None, held: None }
    }
}

/// The chunk a held full body gives at a time (the HTTP/2 frame size most clients use).
const HELD_CHUNK: usize = 16 * 1024;

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let chunked = self.held.is_some();
        if let Some(bytes) = self.full.as_mut() {
            // A body that holds its bytes ([`ResponseBody::holding`]) gives them a chunk at a
            // time: hyper asks for the next as the client's window opens, so the body (and what
            // it holds) lives until the client has nearly read it all, and a client that reads
            // nothing has no more than a chunk queued in the connection.
            let chunk = match chunked && bytes.len() > HELD_CHUNK {
                true => bytes.split_to(HELD_CHUNK),
                false => self.full.take().expect("checked above"),
            };
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let polled = if let Some(rewriting) = self.rewriting.as_mut() {
            rewriting.as_mut().poll_frame(cx)
        } else if let Some(upstream) = self.upstream.as_mut() {
            Pin::new(upstream).poll_frame(cx)
        } else {
            Poll::Ready(None)
        };
        if let (Poll::Ready(polled), Some(watch)) = (&polled, self.watch.as_mut()) {
            match polled {
                Some(Ok(frame)) => watch.observe(frame),
                Some(Err(error)) => {
                    watch.end(Code::Unavailable as u16, Some(format!("upstream response failed: {error}")))
                }
                // Ended without trailers: cut off.
                None => watch.end(Code::Unknown as u16, Some("the upstream response ended without a status".into())),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none()
            && self.upstream.as_ref().is_none_or(|u| u.is_end_stream())
            && self.rewriting.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(bytes) = &self.full {
            return SizeHint::with_exact(bytes.len() as u64);
        }
        if self.rewriting.is_some() {
            return SizeHint::default();
        }
        self.upstream.as_ref().map_or_else(|| SizeHint::with_exact(0), |u| u.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::BodyExt;

    use std::time::Instant;

    use super::*;
    use crate::layers::{CallObserver, MeteredBody, static_status};
    use crate::telemetry::Metrics;

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn trailers(status: &str) -> http::HeaderMap {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", status.parse().unwrap());
        trailers.insert("x-upstream", "kept".parse().unwrap());
        trailers
    }

    fn data(bytes: &[u8]) -> Frame<Bytes> {
        Frame::data(Bytes::copy_from_slice(bytes))
    }

    /// What the client receives: the data bytes, the trailers, and the calls metric's status.
    struct Received {
        data: Vec<Vec<u8>>,
        trailers: Option<http::HeaderMap>,
        status: String,
    }

    async fn run(
        frames: Vec<Frame<Bytes>>,
        headers: &[(&'static str, &str)],
        rewrite: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>, String> + Send + 'static,
    ) -> Received {
        let metrics = Arc::new(Metrics::new());
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        let observer = CallObserver {
            metrics: metrics.clone(),
            method: "PollActivityTaskQueue",
            allowed: true,
            namespace: 0,
            started: Instant::now(),
            status: map.get("grpc-status").map(static_status),
            _in_flight: None,
        };
        let upstream = http_body_util::StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok::<_, hyper::Error>).collect::<Vec<_>>(),
        ));
        let mut body = MeteredBody::observed(
            ResponseBody::rewritten_from(upstream, "PollActivityTaskQueue", &map, Box::new(rewrite)),
            observer,
        );
        let mut received = Received { data: vec![], trailers: None, status: String::new() };
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            assert!(received.trailers.is_none(), "a frame after the trailers");
            match frame.into_data() {
                Ok(bytes) => received.data.push(bytes.to_vec()),
                Err(frame) => received.trailers = Some(frame.into_trailers().unwrap()),
            }
        }
        assert!(body.is_end_stream());
        drop(body);
        let text = metrics.encode();
        let line = text.lines().find(|l| l.contains("calls_total{") && l.contains("PollActivityTaskQueue")).unwrap();
        received.status = line.split("grpc_status=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        received
    }

    fn error_of(received: &Received) -> (String, String) {
        let trailers = received.trailers.as_ref().expect("trailers");
        let text = |name: &str| trailers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        (text("grpc-status"), text("grpc-message"))
    }

    #[tokio::test]
    async fn a_message_split_across_frames_is_rewritten_and_the_trailers_follow() {
        let wire = framed(0, b"original message");
        let frames = vec![data(&wire[..2]), data(&wire[2..9]), data(&wire[9..]), Frame::trailers(trailers("0"))];
        let got = run(frames, &[], |message| {
            assert_eq!(message, b"original message");
            Ok(Some(b"sealed!".to_vec()))
        })
        .await;
        assert_eq!(got.data, [framed(0, b"sealed!")]);
        assert_eq!(got.trailers, Some(trailers("0")));
        assert_eq!(got.status, "0");
    }

    #[tokio::test]
    async fn gzip_messages_are_inflated_and_sent_uncompressed() {
        let frames = vec![data(&framed(1, &gzip(b"inflated"))), Frame::trailers(trailers("0"))];
        let got = run(frames, &[("grpc-encoding", "gzip")], |message| {
            assert_eq!(message, b"inflated");
            Ok(Some(b"sealed".to_vec()))
        })
        .await;
        assert_eq!(got.data, [framed(0, b"sealed")]);
        assert_eq!(got.status, "0");
    }

    #[tokio::test]
    async fn an_unchanged_message_goes_on_as_it_came() {
        let wire = framed(1, &gzip(b"no task here"));
        let frames = vec![data(&wire), Frame::trailers(trailers("0"))];
        let got = run(frames, &[("grpc-encoding", "gzip")], |_| Ok(None)).await;
        assert_eq!(got.data, [wire]);
        assert_eq!(got.trailers, Some(trailers("0")));
    }

    #[tokio::test]
    async fn a_rewrite_error_ends_the_call_with_internal_and_no_message() {
        let frames = vec![data(&framed(0, b"unsealed token")), Frame::trailers(trailers("0"))];
        let got = run(frames, &[], |_| Err("field 1 occurs more than once".into())).await;
        assert!(got.data.is_empty(), "the unsealed message was sent");
        assert_eq!(error_of(&got), ("13".into(), "cannot seal task token: field 1 occurs more than once".into()));
        assert_eq!(got.status, "13");
    }

    fn never_called() -> (Arc<AtomicBool>, Rewrite) {
        let called = Arc::new(AtomicBool::new(false));
        let flag = called.clone();
        let rewrite = move |_: &[u8]| {
            flag.store(true, Ordering::SeqCst);
            Ok(Some(b"x".to_vec()))
        };
        (called, Box::new(rewrite))
    }

    #[tokio::test]
    async fn responses_without_a_message_pass_through() {
        // Trailers-only: the status is in the headers and the body is empty.
        let (called, rewrite) = never_called();
        let got = run(vec![], &[("grpc-status", "5")], rewrite).await;
        assert!(got.data.is_empty() && got.trailers.is_none());
        assert_eq!(got.status, "5");
        assert!(!called.load(Ordering::SeqCst));
        // An error status in trailers after the headers, empty data frames on the way.
        let (called, rewrite) = never_called();
        let got = run(vec![data(b""), Frame::trailers(trailers("14"))], &[], rewrite).await;
        assert!(got.data.is_empty());
        assert_eq!(got.trailers, Some(trailers("14")));
        assert_eq!(got.status, "14");
        assert!(!called.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn cut_oversized_and_extra_messages_are_refused() {
        // Cut short, then a success status: the message never arrived whole.
        let wire = framed(0, b"complete message");
        let got = run(vec![data(&wire[..8]), Frame::trailers(trailers("0"))], &[], |_| Ok(None)).await;
        assert!(got.data.is_empty());
        assert_eq!(error_of(&got).0, "13");
        assert!(error_of(&got).1.contains("ended inside its message"), "{}", error_of(&got).1);
        // Cut short with an error status: that status is the answer.
        let got = run(vec![data(&wire[..8]), Frame::trailers(trailers("14"))], &[], |_| Ok(None)).await;
        assert!(got.data.is_empty());
        assert_eq!(got.trailers, Some(trailers("14")));
        // Cut short without trailers.
        let got = run(vec![data(&wire[..8])], &[], |_| Ok(None)).await;
        assert_eq!(error_of(&got).0, "13");
        // Announced past the cap: refused from the prefix alone.
        let huge = [&[0u8][..], &(MAX_REWRITTEN_MESSAGE_BYTES as u32 + 1).to_be_bytes()].concat();
        let got = run(vec![data(&huge)], &[], |_| Ok(None)).await;
        assert!(error_of(&got).1.contains("is over the"), "{}", error_of(&got).1);
        // A second message, in the same frame or a later one: unary calls have one.
        let two = [framed(0, b"one"), framed(0, b"two")].concat();
        let got = run(vec![data(&two)], &[], |_| Ok(None)).await;
        assert!(got.data.is_empty());
        assert!(error_of(&got).1.contains("more than one response message"), "{}", error_of(&got).1);
        let got = run(vec![data(&framed(0, b"one")), data(&framed(0, b"two"))], &[], |_| Ok(Some(b"s".to_vec()))).await;
        assert_eq!(got.data, [framed(0, b"s")]);
        assert!(error_of(&got).1.contains("more than one response message"), "{}", error_of(&got).1);
        assert_eq!(got.status, "13");
    }

    #[tokio::test]
    async fn compression_the_headers_do_not_announce_is_refused() {
        let frames = vec![data(&framed(1, &gzip(b"m"))), Frame::trailers(trailers("0"))];
        let got = run(frames, &[], |_| Ok(None)).await;
        assert!(got.data.is_empty());
        assert!(error_of(&got).1.contains("without `grpc-encoding: gzip`"), "{}", error_of(&got).1);
        let got = run(vec![data(&framed(2, b"m"))], &[], |_| Ok(None)).await;
        assert!(error_of(&got).1.contains("compressed flag `2`"), "{}", error_of(&got).1);
        let got = run(vec![data(&framed(1, b"not gzip"))], &[("grpc-encoding", "gzip")], |_| Ok(None)).await;
        assert!(error_of(&got).1.contains("not valid gzip"), "{}", error_of(&got).1);
    }

    #[test]
    fn gunzip_stops_one_byte_past_its_limit() {
        let bomb = gzip(&vec![0; 1 << 20]);
        assert!(gunzip(&bomb, 4096).unwrap_err().contains("inflates past the 4096 bytes"));
        assert_eq!(gunzip(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        // Every gzip member is read, as the client will.
        let members = [gzip(b"first "), gzip(b"second")].concat();
        assert_eq!(gunzip(&members, 100).unwrap(), b"first second");
    }
}
