//! OpenTelemetry traces: a span for each call and for each of its phases, and one for each
//! JWKS fetch and token exchange, exported over OTLP/HTTP (protobuf) with `[traces]`.
//!
//! A call's trace is a server span named as OpenTelemetry's RPC conventions name one
//! (`temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution`), with a child
//! per phase the call went through: `authenticate`, `inspect`, `authorize`, `record`, and for
//! an allowed call `forward`, a client span from the moment the call goes upstream to the end
//! of Temporal's answer. The root carries the decision id (which joins it to the decision
//! record and the access log), the decision, the principal, the namespace and the gRPC status.
//!
//! **Continued, not restarted.** A client's W3C `traceparent` is the parent of the call's span,
//! so flowgate's spans sit inside the client's trace; an allowed call goes to Temporal with a
//! `traceparent` naming the `forward` span, so the server's spans (when Temporal traces) sit
//! under it. A call that is not recorded goes upstream with the client's header as it came.
//!
//! **Sampling.** `sample_ratio` of new traces (OpenTelemetry's trace-id ratio sampler, so every
//! service seeing the same trace id decides the same way), and by default a client's sampled
//! flag decides for its own calls (the parent-based sampler). `follow_client_sampling = false`
//! keeps the ratio for every call: a client cannot then make the gateway trace all it sends.
//!
//! **Cost.** Off (no `[traces]`), a call pays one atomic load: [`Traces::call`] finds nothing
//! installed and returns an empty [`CallTrace`], whose every method is a branch on `None`.
//! On, an unsampled call pays the sampler (a span id and a comparison); only a sampled one
//! builds spans. Phase spans are built after the phase, from two instants, so nothing runs
//! inside a phase. Spans go to a bounded queue and are exported in batches by a task on the
//! runtime; when the queue is full (a collector down or slow) new spans are dropped, never a
//! call delayed. The exporter uses [`outbound`]'s client: the system roots plus `traces.ca`,
//! the environment's proxy, and `traces.timeout` for each export.
//!
//! The SDK's batch processor here is its tokio one: its default processor exports from a
//! thread of its own with `block_on`, where an async HTTP client finds no reactor and panics.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider};

use crate::config::TracesConfig;
use crate::outbound::{self, HttpClient};
use crate::traceparent::{TraceId, TraceParent};

/// How often queued spans are exported.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// The longest a span attribute taken from a request or an error message may be.
const MAX_ATTRIBUTE_CHARS: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("traces.ca: {0}")]
    Client(#[from] outbound::BuildError),
    #[error("cannot build the OTLP exporter for `{endpoint}`: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// The tracer, once installed: what every span is made with. Shared by the gateway, the key
/// stores and the token endpoint.
pub struct Traces {
    /// `[traces]`, checked, with the client its exports go through; `None` when tracing is off.
    config: Option<(TracesConfig, reqwest::Client)>,
    installed: OnceLock<Installed>,
}

struct Installed {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Drop for Installed {
    /// The SDK shuts a provider down when its last handle is dropped, and its tokio processor's
    /// shutdown blocks the dropping thread until the export task (on the runtime) answers: on a
    /// runtime thread that can wait for ever (a current-thread runtime has no other thread to
    /// run the task). So the shutdown happens on a thread of its own; it ends when the task
    /// answers, or at once if the runtime is gone. After [`Traces::shutdown`] it returns at once.
    fn drop(&mut self) {
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new().name("flowgate-traces-stop".into()).spawn(move || {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        });
    }
}

impl Traces {
    /// Tracing off: every span is a no-op.
    pub fn off() -> Traces {
        Traces { config: None, installed: OnceLock::new() }
    }

    /// Checks `[traces]` (the CA, the client) without starting anything: `flowgate check`
    /// builds this too. [`Traces::start`] installs the exporter.
    pub fn new(config: Option<&TracesConfig>) -> Result<Traces, TracesError> {
        let config = match config {
            None => None,
            Some(config) => {
                let client = HttpClient::new(config.ca.as_deref(), config.timeout, usize::MAX)?;
                Some((config.clone(), client.reqwest_for(&config.endpoint)))
            }
        };
        Ok(Traces { config, installed: OnceLock::new() })
    }

    /// Whether `[traces]` is set.
    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// Installs the exporter and the batch processor: from now on sampled spans are exported.
    /// Must run on the tokio runtime (the processor's task is spawned on it). Idempotent.
    pub fn start(&self) -> Result<(), TracesError> {
        let Some((config, client)) = &self.config else { return Ok(()) };
        if self.installed.get().is_some() {
            return Ok(());
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.timeout)
            .with_headers(config.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>())
            .build()
            .map_err(|e| TracesError::Exporter { endpoint: config.endpoint.clone(), reason: e.to_string() })?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.max_queue)
            .with_max_export_batch_size(config.max_queue.min(512))
            .with_scheduled_delay(EXPORT_EVERY)
            .build();
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_batch_config(batch)
        .build();
        let ratio = Sampler::TraceIdRatioBased(config.sample_ratio);
        let sampler = if config.follow_client_sampling { Sampler::ParentBased(Box::new(ratio)) } else { ratio };
        // `Resource::builder` reads `OTEL_RESOURCE_ATTRIBUTES` (a pod's name, a region); the
        // configured service name wins over `OTEL_SERVICE_NAME`.
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_attribute(KeyValue::new("vcs.ref.head.revision", env!("FLOWGATE_COMMIT")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let scope = InstrumentationScope::builder("flowgate").with_version(env!("CARGO_PKG_VERSION")).build();
        let tracer = provider.tracer_with_scope(scope);
        if self.installed.set(Installed { provider, tracer }).is_err() {
            return Ok(());
        }
        tracing::info!(endpoint = %config.endpoint, sample_ratio = config.sample_ratio, "exporting traces");
        Ok(())
    }

    /// Exports what is queued and stops, within `within`. The SDK's shutdown blocks its thread
    /// while the export task (on the runtime) drains, so it runs on a blocking thread.
    pub async fn shutdown(&self, within: Duration) {
        let Some(installed) = self.installed.get() else { return };
        let provider = installed.provider.clone();
        let shutdown = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(within));
        match tokio::time::timeout(within + Duration::from_secs(1), shutdown).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "exporting the last spans failed"),
            Ok(Err(_)) | Err(_) => tracing::warn!("exporting the last spans did not finish in time"),
        }
    }

    /// The trace of one gRPC call, begun at `started` (in the past: the span is built once the
    /// call is known to be sampled). `service` and `method` name the span.
    #[inline]
    pub fn call(&self, headers: &http::HeaderMap, service: &str, method: &'static str, started: Instant) -> CallTrace {
        match self.installed.get() {
            None => CallTrace(None),
            Some(installed) => installed.call(headers, service, method, started),
        }
    }

    /// A span of flowgate's own work (a JWKS fetch, a token exchange), starting now, a child of
    /// the client's `traceparent` in `headers` when given. Empty when tracing is off or the
    /// span is not sampled.
    pub fn operation(&self, name: &'static str, kind: SpanKind, headers: Option<&http::HeaderMap>) -> Operation {
        let Some(installed) = self.installed.get() else { return Operation(None) };
        let parent = parent_context(headers);
        let span = installed.tracer.span_builder(name).with_kind(kind).start_with_context(&installed.tracer, &parent);
        if !span.span_context().is_sampled() {
            return Operation(None);
        }
        Operation(Some(parent.with_span(span)))
    }
}

/// The context a client's `traceparent` names, or an empty one.
fn parent_context(headers: Option<&http::HeaderMap>) -> Context {
    match headers.and_then(|h| h.get("traceparent")).and_then(|v| TraceParent::parse(v.as_bytes())) {
        None => Context::new(),
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(parent.trace_id.0),
            SpanId::from_bytes(parent.parent_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        )),
    }
}

impl Installed {
    fn call(&self, headers: &http::HeaderMap, service: &str, method: &'static str, started: Instant) -> CallTrace {
        let parent = parent_context(Some(headers));
        let now = (Instant::now(), SystemTime::now());
        let started_at = now.1.checked_sub(now.0.saturating_duration_since(started)).unwrap_or(now.1);
        let mut span = self
            .tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .with_start_time(started_at)
            .start_with_context(&self.tracer, &parent);
        if !span.span_context().is_sampled() {
            return CallTrace(None);
        }
        span.update_name(format!("{service}/{method}"));
        span.set_attribute(KeyValue::new("rpc.system", "grpc"));
        span.set_attribute(KeyValue::new("rpc.service", service.to_owned()));
        span.set_attribute(KeyValue::new("rpc.method", method));
        CallTrace(Some(Box::new(Sampled {
            tracer: self.tracer.clone(),
            cx: parent.with_span(span),
            clock: (started, started_at),
            open: None,
            forward: None,
        })))
    }
}

/// The phases of a call, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Authenticate,
    Inspect,
    Authorize,
    Record,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Authenticate => "authenticate",
            Phase::Inspect => "inspect",
            Phase::Authorize => "authorize",
            Phase::Record => "record",
        }
    }
}

/// One call's trace: empty unless tracing is on and the call is sampled, and then its root
/// span, the phase in progress and, once forwarded, the `forward` span.
pub struct CallTrace(Option<Box<Sampled>>);

struct Sampled {
    tracer: SdkTracer,
    /// Holds the root span.
    cx: Context,
    /// The call's start, on both clocks: phase spans are placed from instants.
    clock: (Instant, SystemTime),
    open: Option<(Phase, Instant)>,
    forward: Option<opentelemetry_sdk::trace::Span>,
}

impl Sampled {
    fn at(&self, instant: Instant) -> SystemTime {
        self.clock.1 + instant.saturating_duration_since(self.clock.0)
    }

    /// Ends the phase in progress, as a span from its start to now.
    fn close(&mut self, now: Instant) {
        if let Some((phase, since)) = self.open.take() {
            let mut span = self
                .tracer
                .span_builder(phase.name())
                .with_kind(SpanKind::Internal)
                .with_start_time(self.at(since))
                .start_with_context(&self.tracer, &self.cx);
            span.end_with_timestamp(self.at(now));
        }
    }
}

impl CallTrace {
    /// A trace that records nothing.
    pub fn none() -> CallTrace {
        CallTrace(None)
    }

    /// The trace id the call's spans are in, when they are recorded.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.0.as_ref().map(|s| TraceId(s.cx.span().span_context().trace_id().to_bytes()))
    }

    /// The call enters `phase`: the phase in progress ends now.
    #[inline]
    pub fn enter(&mut self, phase: Phase) {
        if let Some(sampled) = &mut self.0 {
            let now = Instant::now();
            sampled.close(now);
            sampled.open = Some((phase, now));
        }
    }

    /// Facts of the call, on its root span.
    pub fn annotate(&mut self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(sampled) = &self.0 {
            sampled.cx.span().set_attributes(attributes());
        }
    }

    /// The call goes upstream: the phase in progress ends, the `forward` span begins, and
    /// `headers` get a `traceparent` naming it.
    pub fn forward(&mut self, headers: &mut http::HeaderMap, upstream: &str) {
        let Some(sampled) = &mut self.0 else { return };
        let now = Instant::now();
        sampled.close(now);
        let mut span = sampled
            .tracer
            .span_builder("forward")
            .with_kind(SpanKind::Client)
            .with_start_time(sampled.at(now))
            .start_with_context(&sampled.tracer, &sampled.cx);
        span.set_attribute(KeyValue::new("server.address", upstream.to_owned()));
        let context = span.span_context();
        let value = format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8());
        if let Ok(value) = http::HeaderValue::try_from(value) {
            headers.insert("traceparent", value);
        }
        sampled.forward = Some(span);
    }

    /// The call ended with gRPC `status` (and `message`, for an error): every open span ends.
    pub fn end(&mut self, status: u16, message: Option<&str>) {
        let Some(mut sampled) = self.0.take() else { return };
        let now = Instant::now();
        sampled.close(now);
        let status_attribute = KeyValue::new("rpc.grpc.status_code", i64::from(status));
        let error = server_error(status).then(|| Status::error(bounded(message.unwrap_or_default())));
        if let Some(mut forward) = sampled.forward.take() {
            forward.set_attribute(status_attribute.clone());
            // To the client side of a call every non-OK status is an error (RPC conventions).
            if status != 0 {
                forward.set_status(Status::error(bounded(message.unwrap_or_default())));
            }
            forward.end_with_timestamp(sampled.at(now));
        }
        let root = sampled.cx.span();
        root.set_attribute(status_attribute);
        if status != 0
            && let Some(message) = message
        {
            root.set_attribute(KeyValue::new("flowgate.message", bounded(message)));
        }
        if let Some(error) = error {
            root.set_status(error);
        }
        root.end_with_timestamp(sampled.at(now));
    }
}

impl Drop for CallTrace {
    /// A call dropped unfinished (the client went away) still ends its spans.
    fn drop(&mut self) {
        if self.0.is_some() {
            self.end(1, Some("the call was cancelled"));
        }
    }
}

/// The gRPC statuses a server span counts as its own error (OpenTelemetry's RPC conventions):
/// UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. A refusal
/// (PERMISSION_DENIED, UNAUTHENTICATED, RESOURCE_EXHAUSTED) is the gateway working.
fn server_error(status: u16) -> bool {
    matches!(status, 2 | 4 | 12 | 13 | 14 | 15)
}

/// `text`, cut to [`MAX_ATTRIBUTE_CHARS`].
fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_ATTRIBUTE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A span of flowgate's own work, ended by [`Operation::end`] (or when dropped).
pub struct Operation(Option<Context>);

impl Operation {
    /// The trace id the span is in, when it is recorded.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.0.as_ref().map(|cx| TraceId(cx.span().span_context().trace_id().to_bytes()))
    }

    /// Facts of the operation.
    pub fn annotate(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attributes(attributes());
        }
    }

    /// Ends the span; `error` marks it failed.
    pub fn end(mut self, error: Option<&str>) {
        if let Some(cx) = self.0.take() {
            if let Some(error) = error {
                cx.span().set_status(Status::error(bounded(error)));
            }
            cx.span().end();
        }
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        if let Some(cx) = self.0.take() {
            cx.span().end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_records_nothing() {
        let traces = Traces::off();
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        let mut call = traces.call(&headers, "svc", "Method", Instant::now());
        assert!(call.trace_id().is_none());
        call.enter(Phase::Authenticate);
        let before = headers.clone();
        call.forward(&mut headers, "up");
        assert_eq!(headers, before, "an unrecorded call keeps the client's traceparent");
        call.end(0, None);
        assert!(traces.operation("op", SpanKind::Client, None).0.is_none());
    }

    #[test]
    fn attributes_are_bounded() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(MAX_ATTRIBUTE_CHARS + 10);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), MAX_ATTRIBUTE_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn refusals_are_not_server_errors() {
        for status in [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 16] {
            assert!(!server_error(status), "{status}");
        }
        for status in [2, 4, 12, 13, 14, 15] {
            assert!(server_error(status), "{status}");
        }
    }
}
