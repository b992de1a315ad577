//! The HTTP door (`[http_api]`): Temporal's HTTP/JSON API on the gateway's listener, each
//! request turned into the gRPC call it stands for and sent through the same stack as a gRPC
//! client's call (deadline, concurrency limit, metrics, then the gateway's phases).
//!
//! A request that is not gRPC (its `content-type` is not `application/grpc…`) comes here:
//!
//! 1. **route**: [`http_api::HttpApi::route`] matches the method and the raw path to one of
//!    Temporal's bindings, or answers 400/404/501 as Temporal does (an encoded `/` and
//!    `X-HTTP-Method-Override` are refused outright: see `http_api`'s docs for why);
//! 2. **worth reading?** ([`Gateway::worth_reading`]): only a caller who authenticates and
//!    whom some policy could permit the action has their body read (at most
//!    `http_api.max_body_bytes`, within `limits.first_message_timeout`) and transcoded; anyone
//!    else's call goes on with an empty message, for the phases to refuse and record it;
//! 3. **the call**: the message, framed as gRPC, with metadata built from an allowlist (the
//!    caller's `authorization`, `client-name`, `client-version`, `user-agent`, `traceparent`,
//!    `tracestate`, and `Grpc-Timeout` as the call's deadline, 60 s when absent), goes through
//!    the gateway stack: the same decision, record (with `http: {method, route}`), stamping and
//!    forwarding to Temporal's gRPC port as any call. No other header crosses: grpc-gateway's
//!    `Grpc-Metadata-*`, cookies and forwarding headers never become metadata;
//! 4. **the answer**: read whole (at most `http_api.max_response_bytes`) and written as the
//!    JSON Temporal's HTTP port would write, or a gRPC status (Temporal's or flowgate's
//!    refusal) as grpc-gateway writes it: `{code, message, details}` with its HTTP status;
//!    401 carries `WWW-Authenticate: Bearer`, 429 a `Retry-After`.
//!
//! Transcoding above 2 KiB runs on the blocking pool, not on the runtime's threads.
//!
//! **Memory.** JSON and the trees made of it take far more memory than their bytes (`[0,0,…]`
//! about 40 times; a decoded response message several times its wire size), and none of it is
//! in the gRPC stack's byte budgets. So the door holds its own, `http_api.max_buffered_bytes`,
//! for everything it keeps: a body as it arrives, the JSON and its trees while it is
//! transcoded (sized by [`json::count_values`] before parsing), an answer as it arrives and
//! while it is written, and the written answer until the client has read it. A request that
//! would go over is refused with 429 (and `Retry-After`) before anything is parsed, and an
//! answer over it is 503, since the call was made. Routes without a body (`GET`s) never read
//! one, whoever asks.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tower::{Service, ServiceExt};

use crate::budget::{ByteBudget, Held};
use crate::config::HttpApiConfig;
use crate::gateway::{Gateway, ViaHttp};
use crate::grpc::{decode_message, grpc_timeout};
use crate::http_api::{BodyRule, Formats, HttpApi, HttpError, OutputOptions, Route, json, status_json};
use crate::layers::MeteredBody;
use crate::proxy::{ClientBody, ResponseBody};
use crate::telemetry::Metrics;
use crate::temporal::catalog;

/// The deadline of an HTTP API call that sends no `Grpc-Timeout`.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// How long past its deadline a call waits for its answer: Temporal, which enforces the same
/// deadline, answers first.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// The longest deadline an HTTP API call may ask for with `Grpc-Timeout`; a longer one is cut
/// to this.
pub const MAX_DEADLINE: Duration = Duration::from_secs(300);

/// What transcoding a request holds per byte of JSON, besides its values: the body itself, the
/// message being built and its encoding (`tests/http_api_memory.rs` measures it: a 4 MiB
/// string payload peaks at 2 bytes per byte besides the body).
pub const REQUEST_BYTES_PER_BYTE: usize = 4;

/// What transcoding a request holds per JSON value ([`json::count_values`]): its tree, and
/// the message it becomes, which is largest when every value is a payload of its own
/// (`{"input":[0,0,…]}` peaks at ~1.2 KB per value: `tests/http_api_memory.rs`).
pub const REQUEST_BYTES_PER_VALUE: usize = 1280;

/// What writing an answer holds per byte of its message: the message, its decoded form (a
/// message per event, each a map of its fields) and the JSON written, besides payload trees
/// (`tests/http_api_memory.rs` measures it: a page of 1000 history events peaks at ~29 bytes
/// per byte).
pub const RESPONSE_BYTES_PER_BYTE: usize = 32;

/// Above this, transcoding runs on the blocking pool. Transcoding costs ~50 ns a byte of JSON
/// in and ~40 ns a byte of protobuf out (`cargo bench --bench hotpath`: a 100-event history page
/// of 11.8 KB takes ~450 µs), so work up to here takes ~100 µs on a runtime thread, and more
/// is worth a thread hop (tens of µs).
const BLOCKING_ABOVE: usize = 2 * 1024;

/// Metadata an HTTP request may carry into its gRPC call; nothing else crosses.
const PASSED_ON: [http::HeaderName; 5] = [
    http::header::USER_AGENT,
    http::HeaderName::from_static("client-name"),
    http::HeaderName::from_static("client-version"),
    http::HeaderName::from_static("traceparent"),
    http::HeaderName::from_static("tracestate"),
];

/// The HTTP API: its routes and limits, and the gateway it asks whether a body is worth reading.
pub struct HttpDoor {
    api: HttpApi,
    gateway: Arc<Gateway>,
    max_body_bytes: usize,
    max_response_bytes: usize,
    read_timeout: Duration,
    /// `http_api.max_buffered_bytes`: what the door's requests and answers hold together.
    budget: Arc<ByteBudget>,
    metrics: Arc<Metrics>,
}

/// Whether a request is for the HTTP door rather than the gRPC stack.
pub fn is_http(request: &http::Request<Incoming>) -> bool {
    !request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

type Answer = http::Response<MeteredBody<ResponseBody>>;

impl HttpDoor {
    /// The door, or why `config`'s budget cannot admit its own largest request or answer.
    pub fn new(
        config: &HttpApiConfig,
        gateway: Arc<Gateway>,
        metrics: Arc<Metrics>,
        read_timeout: Duration,
    ) -> anyhow::Result<HttpDoor> {
        // A body of n bytes holds at most n / 2 + 1 values (`0,0,…`).
        let values = json::MAX_VALUES.min(config.max_body_bytes / 2 + 1);
        let request = config.max_body_bytes * REQUEST_BYTES_PER_BYTE + values * REQUEST_BYTES_PER_VALUE;
        let answer = config.max_response_bytes.saturating_mul(RESPONSE_BYTES_PER_BYTE);
        let least = request.max(answer);
        if config.max_buffered_bytes < least {
            anyhow::bail!(
                "`http_api.max_buffered_bytes`: must be at least {least} bytes, for the largest request \
                 (`max_body_bytes` × {REQUEST_BYTES_PER_BYTE} and its JSON values) and the largest answer \
                 (`max_response_bytes` × {RESPONSE_BYTES_PER_BYTE}) alone"
            );
        }
        Ok(HttpDoor {
            api: HttpApi::new(),
            gateway,
            max_body_bytes: config.max_body_bytes,
            max_response_bytes: config.max_response_bytes,
            read_timeout,
            budget: ByteBudget::new(config.max_buffered_bytes),
            metrics,
        })
    }

    fn over_budget(&self) -> String {
        format!(
            "flowgate holds too many HTTP API bytes for one more (`http_api.max_buffered_bytes`, {}); retry later",
            self.budget.limit()
        )
    }

    /// Serves one HTTP API request through `stack`, the gateway's stack for this connection.
    pub async fn serve<S>(&self, stack: S, request: http::Request<Incoming>) -> Answer
    where
        S: Service<http::Request<ClientBody>, Response = Answer, Error = Infallible>,
    {
        let (parts, body) = request.into_parts();
        let query = parts.uri.query().map(str::to_owned);
        let formats = Formats::from_request(query.as_deref(), &parts.headers);
        // 1. route
        let route = match self.api.route(&parts.method, parts.uri.path(), &parts.headers) {
            Ok(route) => route,
            Err(error) => return self.refuse(&error, formats.response),
        };
        let spec = catalog::lookup(route.grpc_path());
        let headers = match call_headers(&parts.headers) {
            Ok(headers) => headers,
            Err(error) => return self.refuse(&error, formats.response),
        };
        // 2. worth reading? 3. the message
        let read = self.gateway.worth_reading(&headers, spec).await;
        let message = if read {
            match self.transcode(&route, query, body, formats.request_shorthand).await {
                Ok(message) => message,
                Err(error) => return self.refuse(&error, formats.response),
            }
        } else {
            // Read nothing: the phases refuse and record the call, and no policy change in
            // between can let an empty message through (`ViaHttp::read`).
            drop(body);
            Vec::new()
        };
        let mut call = http::Request::new(ClientBody::whole(framed(&message)));
        *call.method_mut() = http::Method::POST;
        *call.uri_mut() = http::Uri::try_from(route.grpc_path()).expect("a binding's gRPC path is a valid URI");
        *call.version_mut() = http::Version::HTTP_2;
        *call.headers_mut() = headers;
        call.extensions_mut().insert(ViaHttp {
            method: parts.method.clone(),
            route: route.template().to_owned(),
            read,
        });
        let deadline = grpc_timeout(call.headers()).unwrap_or(DEFAULT_DEADLINE) + ANSWER_GRACE;
        let answered = tokio::time::timeout(deadline, async {
            let response = match stack.oneshot(call).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // 4. the answer
            self.answer(&route, response, formats.response).await
        });
        match answered.await {
            Ok(answer) => answer,
            Err(_) => self.refuse(
                &HttpError::deadline(format!("no answer within {}", humantime::format_duration(deadline))),
                formats.response,
            ),
        }
    }

    /// The request's message: its query and path (a route without a body: none is read), or
    /// its JSON body and path, read and transcoded within the door's budget.
    async fn transcode(
        &self,
        route: &Route,
        query: Option<String>,
        body: Incoming,
        shorthand: bool,
    ) -> Result<Vec<u8>, HttpError> {
        if route.binding().body == BodyRule::None {
            drop(body);
            return route.request_message(query.as_deref(), &[], shorthand);
        }
        let mut held = Held::new(self.budget.clone());
        let json = self.read_body(body, &mut held).await?;
        // What parsing and building the message will take, held before either starts.
        let values = json::count_values(&json);
        if values > json::MAX_VALUES {
            return Err(HttpError::invalid(format!("JSON with more than {} values", json::MAX_VALUES)));
        }
        let needed = json.len() * REQUEST_BYTES_PER_BYTE + values * REQUEST_BYTES_PER_VALUE;
        held.resize(needed).map_err(|_| HttpError::exhausted(self.over_budget()))?;
        let route = route.clone();
        off_runtime(json.len(), move || {
            let message = route.request_message(query.as_deref(), &json, shorthand);
            drop(held);
            message
        })
        .await
    }

    /// The JSON body, at most `max_body_bytes`, within the read timeout, held in `held` as it
    /// arrives (each frame copied: a frame's bytes may pin a far larger buffer).
    async fn read_body(&self, body: Incoming, held: &mut Held) -> Result<Vec<u8>, HttpError> {
        let read = async {
            let mut body = body;
            let mut json = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame
                    .map_err(|error| HttpError::invalid(format!("the request body could not be read: {error}")))?;
                let Ok(data) = frame.into_data() else { continue };
                let total = json.len() + data.len();
                if total > self.max_body_bytes {
                    return Err(HttpError::invalid(format!(
                        "http: request body too large (more than {} bytes)",
                        self.max_body_bytes
                    )));
                }
                held.resize(total).map_err(|_| HttpError::exhausted(self.over_budget()))?;
                json.extend_from_slice(&data);
            }
            Ok(json)
        };
        match tokio::time::timeout(self.read_timeout, read).await {
            Ok(read) => read,
            Err(_) => Err(HttpError::invalid(format!(
                "the request body did not arrive within {}",
                humantime::format_duration(self.read_timeout)
            ))),
        }
    }

    async fn answer(&self, route: &Route, response: Answer, output: OutputOptions) -> Answer {
        let (parts, mut body) = response.into_parts();
        let mut held = Held::new(self.budget.clone());
        let mut wire = BytesMut::new();
        let mut trailers = http::HeaderMap::new();
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => {
                    let error = HttpError::internal(format!("the response could not be read: {error}"));
                    return self.refuse(&error, output);
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    if wire.len() + data.len() > self.max_response_bytes {
                        let message = format!(
                            "the response is larger than `http_api.max_response_bytes` ({})",
                            self.max_response_bytes
                        );
                        return self.refuse(&HttpError::internal(message), output);
                    }
                    if held.resize(wire.len() + data.len()).is_err() {
                        return self.refuse(&self.unanswerable(), output);
                    }
                    wire.extend_from_slice(&data);
                }
                Err(frame) => {
                    if let Ok(more) = frame.into_trailers() {
                        trailers.extend(more);
                    }
                }
            }
        }
        let field = |name: &str| parts.headers.get(name).or_else(|| trailers.get(name));
        let code = field("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
        match code {
            Some(0) => {
                let message = match unframed(&wire) {
                    Ok(message) => message,
                    Err(error) => return self.refuse(&error, output),
                };
                drop(wire);
                let base = message.len() * RESPONSE_BYTES_PER_BYTE;
                if held.resize(base).is_err() {
                    return self.refuse(&self.unanswerable(), output);
                }
                let route = route.clone();
                let unanswerable = self.unanswerable();
                let written = off_runtime(message.len(), move || {
                    let json = {
                        let mut hold = |trees: usize| held.resize(base + trees).map_err(|_| unanswerable.clone());
                        route.response_json_held(&message, output, &mut hold)?
                    };
                    drop(message);
                    // The answer holds its bytes until the client has read them.
                    held.resize(json.len()).map_err(|_| unanswerable.clone())?;
                    Ok((json, held))
                })
                .await;
                match written {
                    Ok((json, held)) => {
                        let body = ResponseBody::full(json).holding(held);
                        answer_with(http::StatusCode::OK, body)
                    }
                    Err(error) => self.refuse(&error, output),
                }
            }
            code => {
                let code = code.unwrap_or(2); // UNKNOWN: no status at all
                let message =
                    field("grpc-message").and_then(|v| v.to_str().ok()).map(decode_message).unwrap_or_default();
                let details = field("grpc-status-details-bin").map(http::HeaderValue::as_bytes);
                let (status, json) = status_json(code, &message, details, output);
                let mut answer = json_answer(status, json);
                let headers = answer.headers_mut();
                if status == http::StatusCode::UNAUTHORIZED {
                    headers.insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
                }
                if let Some(pushback) = field("grpc-retry-pushback-ms").and_then(|v| v.to_str().ok()) {
                    let seconds = pushback.parse::<u64>().unwrap_or(1000).div_ceil(1000).max(1);
                    headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
                }
                answer
            }
        }
    }

    /// flowgate's own answer to a request, counted (`flowgate_http_api_refusals_total`).
    fn refuse(&self, error: &HttpError, output: OutputOptions) -> Answer {
        self.metrics.http_api_refused(error.status);
        error_answer(error, output)
    }

    fn unanswerable(&self) -> HttpError {
        HttpError::unavailable(format!(
            "the call was made, but flowgate holds too many HTTP API bytes to write its answer (`http_api.max_buffered_bytes`, {})",
            self.budget.limit()
        ))
    }
}

/// The call's metadata from the HTTP request: every `authorization` (the gateway refuses two),
/// the allowlist, the deadline; `content-type` and `te` as gRPC has them.
fn call_headers(request: &http::HeaderMap) -> Result<http::HeaderMap, HttpError> {
    let mut headers = http::HeaderMap::new();
    for value in request.get_all(http::header::AUTHORIZATION) {
        headers.append(http::header::AUTHORIZATION, value.clone());
    }
    for name in PASSED_ON {
        if let Some(value) = request.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    let deadline = match request.get("grpc-timeout") {
        Some(value) => {
            let mut one = http::HeaderMap::new();
            one.insert("grpc-timeout", value.clone());
            grpc_timeout(&one).ok_or_else(|| {
                HttpError::invalid(format!("`Grpc-Timeout` `{}` is not a gRPC timeout", value.to_str().unwrap_or("?")))
            })?
        }
        None => DEFAULT_DEADLINE,
    };
    // Written again, as milliseconds: what goes upstream is what flowgate read.
    let millis = deadline.min(MAX_DEADLINE).as_millis().max(1);
    let timeout = http::HeaderValue::from_str(&format!("{millis}m")).expect("digits");
    headers.insert("grpc-timeout", timeout);
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    Ok(headers)
}

/// `message` as one uncompressed gRPC message.
fn framed(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.extend_from_slice(message);
    framed.freeze()
}

/// The one message of a unary answer. flowgate asks for no compression, so a compressed one is
/// an error, as is anything but exactly one message.
fn unframed(body: &[u8]) -> Result<Vec<u8>, HttpError> {
    let bad = |why: &str| HttpError::internal(format!("the upstream's answer {why}"));
    let [flag, a, b, c, d, message @ ..] = body else {
        return Err(bad("has no message"));
    };
    if *flag != 0 {
        return Err(bad("is compressed, which flowgate did not ask for"));
    }
    if u32::from_be_bytes([*a, *b, *c, *d]) as usize != message.len() {
        return Err(bad("is not one whole message"));
    }
    Ok(message.to_vec())
}

/// Runs `work` on the blocking pool when its input is large.
async fn off_runtime<T: Send + 'static>(
    size: usize,
    work: impl FnOnce() -> Result<T, HttpError> + Send + 'static,
) -> Result<T, HttpError> {
    if size <= BLOCKING_ABOVE {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(HttpError::internal(format!("transcoding failed: {error}"))))
}

/// flowgate's own answer to a request it did not send on (its status is the route's: 501 for a
/// known path with another method, where the gRPC code alone would say 404).
fn error_answer(error: &HttpError, output: OutputOptions) -> Answer {
    let (_, json) = status_json(error.code, &error.message, None, output);
    let mut answer = json_answer(error.status, json);
    if error.status == http::StatusCode::TOO_MANY_REQUESTS {
        answer.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    answer
}

fn json_answer(status: http::StatusCode, json: Vec<u8>) -> Answer {
    answer_with(status, ResponseBody::full(json))
}

fn answer_with(status: http::StatusCode, body: ResponseBody) -> Answer {
    let mut answer = http::Response::new(MeteredBody::unobserved(body));
    *answer.status_mut() = status;
    answer.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_unframed() {
        let framed = framed(b"abc");
        assert_eq!(&framed[..], b"\0\0\0\0\x03abc");
        assert_eq!(unframed(&framed).unwrap(), b"abc");
        assert!(unframed(b"\x01\0\0\0\x03abc").unwrap_err().message.contains("compressed"));
        assert!(unframed(b"\0\0\0\0\x04abc").unwrap_err().message.contains("one whole message"));
        assert!(unframed(b"\0\0").unwrap_err().message.contains("no message"));
    }

    #[test]
    fn only_the_allowlist_becomes_metadata() {
        let mut request = http::HeaderMap::new();
        request.append("authorization", "Bearer a".parse().unwrap());
        request.append("authorization", "Bearer b".parse().unwrap());
        for (name, value) in [
            ("grpc-metadata-authorization", "Bearer c"),
            ("grpc-metadata-temporal-namespace", "other"),
            ("cookie", "session=1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("authorization-extras", "id-token"),
            ("client-name", "curl"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ] {
            request.insert(http::HeaderName::from_static(name), value.parse().unwrap());
        }
        let headers = call_headers(&request).unwrap();
        let mut names: Vec<_> = headers.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["authorization", "client-name", "content-type", "grpc-timeout", "te", "traceparent"]);
        assert_eq!(headers.get_all("authorization").iter().count(), 2, "both, for the gateway to refuse");
        assert_eq!(headers["grpc-timeout"], "60000m");
        request.insert("grpc-timeout", "5S".parse().unwrap());
        assert_eq!(call_headers(&request).unwrap()["grpc-timeout"], "5000m");
        request.insert("grpc-timeout", "99999999H".parse().unwrap());
        assert_eq!(call_headers(&request).unwrap()["grpc-timeout"], "300000m", "cut to MAX_DEADLINE");
        request.insert("grpc-timeout", "+5S".parse().unwrap());
        assert!(call_headers(&request).is_err(), "a sign is not a gRPC timeout");
        request.insert("grpc-timeout", "soon".parse().unwrap());
        assert!(call_headers(&request).unwrap_err().message.contains("`soon` is not a gRPC timeout"));
    }
}
