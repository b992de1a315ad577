//! Forwarding: a pooled HTTP/2 client to the Temporal frontend, and the bodies that stream
//! through it untouched.
//!
//! The request body forwarded upstream is the message flowgate already read for inspection,
//! followed by whatever the client still sends; the response body is the upstream's, frame by
//! frame, trailers included. Nothing here buffers a whole response or imposes a timeout of its
//! own: a call lasts as long as its `grpc-timeout` (worker long polls last 70 s).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::budget::Reservation;
use crate::config::UpstreamConfig;
use crate::status::Refusal;
use crate::telemetry::Metrics;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Per-stream HTTP/2 flow-control window: one 4 MiB Temporal message in flight per call.
pub const HTTP2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection window, shared by every call on a connection.
pub const HTTP2_CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;

/// The upstream Temporal frontend.
#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, ForwardBody>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    address: String,
}

/// A configuration problem with the upstream's TLS material.
#[derive(Debug, thiserror::Error)]
#[error("upstream TLS: {0}")]
pub struct UpstreamTlsError(String);

pub fn read_certs(path: &std::path::Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, UpstreamTlsError> {
    let data = std::fs::read(path).map_err(|e| UpstreamTlsError(format!("cannot read `{}`: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UpstreamTlsError(format!("`{}` is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(UpstreamTlsError(format!("`{}` holds no certificate", path.display())));
    }
    Ok(certs)
}

pub fn read_pem_key(path: &std::path::Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, UpstreamTlsError> {
    let data = std::fs::read(path).map_err(|e| UpstreamTlsError(format!("cannot read `{}`: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| UpstreamTlsError(format!("`{}` is not PEM: {e}", path.display())))?
        .ok_or_else(|| UpstreamTlsError(format!("`{}` holds no private key", path.display())))
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, UpstreamTlsError> {
        let uri: http::Uri = config.address.parse().map_err(|e| UpstreamTlsError(format!("{e}")))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // Without it a small unary call waits ~40 ms for Nagle and delayed ACK.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &config.ca {
            Some(ca) => {
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| UpstreamTlsError(format!("bad CA certificate: {e}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamTlsError(e.to_string()))?
            .with_root_certificates(roots);
        let tls = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_pem_key(key)?)
                .map_err(|e| UpstreamTlsError(format!("client certificate: {e}")))?,
            _ => builder.with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let connector = match &config.server_name {
            Some(name) => connector.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
                name.clone().try_into().map_err(|e| UpstreamTlsError(format!("server_name `{name}`: {e}")))?,
            )),
            None => connector,
        }
        .enable_http2()
        .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .http2_keep_alive_while_idle(true)
            // Large windows, not adaptive ones: h2 budgets small non-final DATA frames (every
            // unary response is one, before its trailers) at half the connection window, and
            // a burst of hundreds of poll responses overran the default and tore down the
            // whole upstream connection. Windows are credit, not allocated memory.
            .http2_initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .http2_initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Upstream {
            client,
            scheme: uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
            authority: uri.authority().cloned().expect("config validation checked the authority"),
            address: config.address.clone(),
        })
    }

    /// Sends a request upstream, rewritten to the upstream's scheme and authority.
    pub async fn send(
        &self,
        mut parts: http::request::Parts,
        body: ForwardBody,
        deadline: Option<Duration>,
    ) -> Result<http::Response<Incoming>, Refusal> {
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| Refusal::Upstream(e.to_string()))?;
        parts.version = http::Version::HTTP_2;
        parts.headers.remove(http::header::HOST);
        let request = http::Request::from_parts(parts, body);
        let response = self.client.request(request);
        let response = match deadline {
            // Never cut a call shorter than its own deadline: the upstream answers first.
            Some(deadline) => tokio::time::timeout(deadline + Duration::from_secs(1), response)
                .await
                .map_err(|_| Refusal::Deadline)?,
            None => response.await,
        };
        response.map_err(|e| Refusal::Upstream(format!("`{}`: {}", self.address, error_chain(&e))))
    }

    /// A gRPC health check against the upstream, for `/readyz`.
    pub async fn check_health(&self) -> Result<(), String> {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("{}://{}/grpc.health.v1.Health/Check", self.scheme, self.authority))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(ForwardBody::new(Bytes::from_static(&[0, 0, 0, 0, 0]), None, None))
            .expect("static request is valid");
        let response = tokio::time::timeout(Duration::from_secs(2), self.client.request(request))
            .await
            .map_err(|_| format!("upstream `{}` did not answer within 2s", self.address))?
            .map_err(|e| format!("upstream `{}`: {}", self.address, error_chain(&e)))?;
        let (parts, body) = response.into_parts();
        let trailers = http_body_util::BodyExt::collect(body).await.ok().and_then(|c| c.trailers().cloned());
        let status = parts
            .headers
            .get("grpc-status")
            .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("missing")
            .to_owned();
        if status == "0" { Ok(()) } else { Err(format!("upstream health check returned grpc-status {status}")) }
    }
}

/// An error and its sources, `outer: inner: root`, for messages that must say why.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The request body sent upstream: the bytes read for inspection, then the rest of the stream.
pub struct ForwardBody {
    prefix: Option<Bytes>,
    rest: Option<Incoming>,
    /// The budget the prefix was read under, given back when the body has been sent.
    _held: Option<Reservation>,
}

impl ForwardBody {
    pub fn new(prefix: Bytes, rest: Option<Incoming>, held: Option<Reservation>) -> ForwardBody {
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
    observer: Option<CallObserver>,
    /// A complete body flowgate answers itself (token endpoint, JWKS, discovery).
    full: Option<Bytes>,
}

/// Reports a forwarded call to the metrics exactly once, when its response ends (or is dropped).
pub struct CallObserver {
    pub metrics: Arc<Metrics>,
    pub method: &'static str,
    pub started: Instant,
    pub status: Option<&'static str>,
}

/// gRPC status codes as static label values (metrics labels must not allocate per call).
const STATUS_LABELS: [&str; 17] =
    ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];

fn static_status(value: &http::HeaderValue) -> &'static str {
    value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .and_then(|code| STATUS_LABELS.get(code).copied())
        .unwrap_or("other")
}

impl Drop for CallObserver {
    fn drop(&mut self) {
        // A response that ended without a grpc-status was cut off: count it as CANCELLED (1).
        let status = self.status.unwrap_or("1");
        self.metrics.call_finished(self.method, true, status, self.started.elapsed());
    }
}

impl ResponseBody {
    pub fn forwarded(upstream: Incoming, mut observer: CallObserver, headers: &http::HeaderMap) -> ResponseBody {
        if let Some(status) = headers.get("grpc-status") {
            observer.status = Some(static_status(status));
        }
        ResponseBody { upstream: Some(upstream), observer: Some(observer), full: None }
    }

    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody { upstream: None, observer: None, full: Some(bytes.into()) }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(bytes) = self.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        let Some(upstream) = self.upstream.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(upstream).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && let (Some(status), Some(observer)) = (trailers.get("grpc-status"), self.observer.as_mut())
        {
            observer.status = Some(static_status(status));
        }
        if frame.is_none() {
            self.observer.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && self.upstream.as_ref().is_none_or(|u| u.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(bytes) = &self.full {
            return SizeHint::with_exact(bytes.len() as u64);
        }
        self.upstream.as_ref().map_or_else(|| SizeHint::with_exact(0), |u| u.size_hint())
    }
}

/// `grpc-timeout` (e.g. `70S`, `500m`) as a duration.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let headers = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            h
        };
        assert_eq!(grpc_timeout(&headers("70S")), Some(Duration::from_secs(70)));
        assert_eq!(grpc_timeout(&headers("500m")), Some(Duration::from_millis(500)));
        assert_eq!(grpc_timeout(&headers("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(&headers("S")), None);
        assert_eq!(grpc_timeout(&headers("12x")), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
