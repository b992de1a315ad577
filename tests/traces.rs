//! `[traces]` against an OTLP/HTTP receiver in the test: the spans of a call and its phases,
//! the client's `traceparent` continued and passed on to the upstream, the decision record
//! pointing at the trace, sampling (the client's flag, the ratio), JWKS fetches and token
//! exchanges traced, and a collector that is down costing no call. The same against Jaeger and
//! real Temporal is tests/e2e/test_traces.py.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::*;
use tokio::net::TcpListener;

/// An OTLP/HTTP receiver: keeps the spans of every export POSTed to `/v1/traces`.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    /// `service.name` of each export.
    services: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let services = Arc::new(Mutex::new(Vec::new()));
        let (kept, names) = (spans.clone(), services.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (kept, names) = (kept.clone(), names.clone());
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (kept, names) = (kept.clone(), names.clone());
                    async move {
                        assert_eq!(request.uri().path(), "/v1/traces");
                        assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).expect("an OTLP export");
                        for resource in export.resource_spans {
                            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
                            let service = attributes.iter().find(|a| a.key == "service.name");
                            if let Some(Value::StringValue(name)) = service.and_then(|a| a.value.clone()?.value) {
                                names.lock().unwrap().push(name);
                            }
                            for scope in resource.scope_spans {
                                kept.lock().unwrap().extend(scope.spans);
                            }
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(Bytes::new())))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Receiver { url, spans, services }
    }

    /// The spans received so far, once `until` holds of them (within 10 s).
    async fn spans_until(&self, until: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        for _ in 0..200 {
            let spans = self.spans.lock().unwrap().clone();
            if until(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the receiver did not get the spans expected; it has {:#?}", self.spans.lock().unwrap());
    }
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()?.value)
}

fn string(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key)? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

async fn traced_gateway(receiver: &Receiver, traces_extra: &str) -> (SigningKey, Jwks, Upstream, Gateway) {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let mut setup = Setup::new(&upstream);
    setup.tables = format!("[traces]\nendpoint = \"{}\"\n{traces_extra}\n", receiver.url);
    let gateway = Gateway::start(&jwks, setup).await;
    (key, jwks, upstream, gateway)
}

async fn start(gateway: &Gateway, token: &str, workflow_type: &str, traceparent: Option<&str>) -> Reply {
    let mut client = Client::connect(gateway.addr).await;
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(traceparent) = traceparent {
        headers.push(("traceparent", traceparent));
    }
    let message = start_request("payments", "deploy-1", workflow_type, "deploys");
    client.call(&format!("{WS}/StartWorkflowExecution"), &headers, frame(&message, false)).await
}

#[tokio::test]
async fn a_call_is_a_server_span_with_a_child_per_phase_in_the_clients_trace() {
    let receiver = Receiver::start().await;
    let (key, _jwks, upstream, gateway) = traced_gateway(&receiver, "sample_ratio = 1.0").await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");

    let reply = start(&gateway, &token, "DeployWorkflow", Some(&traceparent)).await;
    assert_eq!(reply.code(), "0", "{reply:?}");

    let name = format!("{}/StartWorkflowExecution", &WS[1..]);
    let spans = receiver
        .spans_until(|spans| spans.iter().any(|s| s.name == name) && spans.iter().any(|s| s.name == "forward"))
        .await;
    let in_call: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == CLIENT_TRACE).collect();
    let root = in_call.iter().find(|s| s.name == name).expect("the call's span");
    assert_eq!(hex(&root.parent_span_id), CLIENT_SPAN, "the client's span is the parent");
    assert_eq!(root.kind, 2, "a server span");
    assert_eq!(string(root, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(string(root, "rpc.method").as_deref(), Some("StartWorkflowExecution"));
    assert_eq!(string(root, "flowgate.decision").as_deref(), Some("allow"));
    assert_eq!(string(root, "enduser.id").as_deref(), Some("test:alice"));
    assert_eq!(string(root, "temporal.namespace").as_deref(), Some("payments"));
    assert_eq!(attribute(root, "rpc.grpc.status_code"), Some(Value::IntValue(0)));

    // Each phase, in order, within the call's span.
    let phases = ["authenticate", "inspect", "authorize", "record", "forward"];
    let mut previous_end = root.start_time_unix_nano;
    for phase in phases {
        let span = in_call.iter().find(|s| s.name == phase).unwrap_or_else(|| panic!("no `{phase}` span"));
        assert_eq!(span.parent_span_id, root.span_id, "`{phase}` is a child of the call");
        assert!(span.start_time_unix_nano >= previous_end, "`{phase}` starts after the phase before it");
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        assert!(span.end_time_unix_nano <= root.end_time_unix_nano, "`{phase}` ends within the call");
        previous_end = span.end_time_unix_nano;
    }
    let forward = in_call.iter().find(|s| s.name == "forward").unwrap();
    assert_eq!(forward.kind, 3, "forward is a client span");

    // Temporal gets the trace, with the forward span as its parent.
    let seen = &upstream.calls()[0];
    let sent = seen.headers["traceparent"].to_str().unwrap();
    assert_eq!(sent, format!("00-{CLIENT_TRACE}-{}-01", hex(&forward.span_id)));

    // The record and the span name each other.
    let record = &gateway.records()[0];
    assert_eq!(record["trace_id"], CLIENT_TRACE);
    assert_eq!(string(root, "flowgate.decision_id").as_deref(), record["decision_id"].as_str());
    assert!(receiver.services.lock().unwrap().iter().all(|s| s == "flowgate"));
}

#[tokio::test]
async fn a_call_without_a_traceparent_starts_a_trace_the_record_points_to() {
    let receiver = Receiver::start().await;
    let (key, _jwks, upstream, gateway) =
        traced_gateway(&receiver, "sample_ratio = 1.0\nservice_name = \"edge\"").await;
    let token = key.sign(&claims("alice", &["deployers"]));

    let reply = start(&gateway, &token, "DeployWorkflow", None).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    let spans = receiver.spans_until(|spans| spans.iter().any(|s| s.name == "forward")).await;
    let forward = spans.iter().find(|s| s.name == "forward").unwrap();
    let root = spans.iter().find(|s| s.span_id == forward.parent_span_id).expect("the call's span");
    assert!(root.parent_span_id.is_empty(), "a root span");
    let record = &gateway.records()[0];
    assert_eq!(record["trace_id"], hex(&root.trace_id));
    let sent = upstream.calls()[0].headers["traceparent"].to_str().unwrap().to_owned();
    assert_eq!(sent, format!("00-{}-{}-01", hex(&root.trace_id), hex(&forward.span_id)));
    assert!(receiver.services.lock().unwrap().iter().all(|s| s == "edge"));
}

#[tokio::test]
async fn a_denied_call_has_no_forward_span_and_is_not_an_error() {
    let receiver = Receiver::start().await;
    let (key, _jwks, upstream, gateway) = traced_gateway(&receiver, "sample_ratio = 1.0").await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");

    let reply = start(&gateway, &token, "DropTablesWorkflow", Some(&traceparent)).await;
    assert_eq!(reply.code(), "7", "{reply:?}");
    let spans = receiver.spans_until(|spans| spans.iter().any(|s| s.name == "record")).await;
    // The root ends after its phases: wait for it too.
    let name = format!("{}/StartWorkflowExecution", &WS[1..]);
    let spans = if spans.iter().any(|s| s.name == name) {
        spans
    } else {
        receiver.spans_until(|spans| spans.iter().any(|s| s.name == name)).await
    };
    let root = spans.iter().find(|s| s.name == name).unwrap();
    assert_eq!(string(root, "flowgate.decision").as_deref(), Some("deny"));
    assert_eq!(attribute(root, "rpc.grpc.status_code"), Some(Value::IntValue(7)));
    assert!(string(root, "flowgate.message").unwrap().contains("DropTablesWorkflow"));
    assert_ne!(root.status.as_ref().map(|s| s.code), Some(2), "a refusal is not the gateway's error");
    let names: Vec<&str> = spans.iter().filter(|s| s.parent_span_id == root.span_id).map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for phase in ["authenticate", "inspect", "authorize", "record"] {
        assert!(names.contains(&phase), "{names:?}");
    }
    assert!(upstream.calls().is_empty());
}

#[tokio::test]
async fn the_clients_sampled_flag_decides_unless_told_otherwise() {
    // Followed: a client that does not sample gets no spans, and Temporal its header untouched.
    let receiver = Receiver::start().await;
    let (key, _jwks, upstream, gateway) = traced_gateway(&receiver, "sample_ratio = 1.0").await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let reply = start(&gateway, &token, "DeployWorkflow", Some(&unsampled)).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    assert_eq!(upstream.calls()[0].headers["traceparent"], unsampled.as_str());
    // The record still names the client's trace.
    assert_eq!(gateway.records()[0]["trace_id"], CLIENT_TRACE);

    // Not followed: a ratio of 0 keeps a sampling client's calls out too.
    let quiet = Receiver::start().await;
    let (key, _jwks, upstream2, gateway2) =
        traced_gateway(&quiet, "sample_ratio = 0.0\nfollow_client_sampling = false").await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let sampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = start(&gateway2, &token, "DeployWorkflow", Some(&sampled)).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    assert_eq!(upstream2.calls()[0].headers["traceparent"], sampled.as_str());

    // Both gateways have exported their key fetches by now (a span per fetch, sampled 1.0 or
    // 0.0): wait one export interval past that and check that no call span came.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let calls = |r: &Receiver| r.spans.lock().unwrap().iter().filter(|s| hex(&s.trace_id) == CLIENT_TRACE).count();
    assert_eq!(calls(&receiver), 0, "an unsampled client's call was traced");
    assert_eq!(calls(&quiet), 0, "a client chose the gateway's sampling");
    let again = start(&gateway, &key.sign(&claims("alice", &["deployers"])), "DeployWorkflow", None).await;
    assert_eq!(again.code(), "16", "the first gateway trusts the first key only: {again:?}");
}

#[tokio::test]
async fn key_fetches_are_traced() {
    let receiver = Receiver::start().await;
    let (_key, _jwks, _upstream, _gateway) = traced_gateway(&receiver, "sample_ratio = 1.0").await;
    let spans = receiver.spans_until(|spans| spans.iter().any(|s| s.name == "fetch signing keys")).await;
    let fetch = spans.iter().find(|s| s.name == "fetch signing keys").unwrap();
    assert_eq!(string(fetch, "flowgate.issuer").as_deref(), Some("test"));
    assert_eq!(attribute(fetch, "flowgate.keys"), Some(Value::IntValue(1)));
    assert_eq!(fetch.kind, 3, "a client span");
}

#[tokio::test]
async fn a_collector_that_is_down_costs_no_call() {
    // Nothing listens on the endpoint.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", closed.local_addr().unwrap());
    drop(closed);
    let receiver = Receiver { url, spans: Default::default(), services: Default::default() };
    let (key, _jwks, _upstream, gateway) = traced_gateway(&receiver, "sample_ratio = 1.0\nmax_queue = 8").await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let mut client = Client::connect(gateway.addr).await;
    let message = start_request("payments", "deploy-1", "DeployWorkflow", "deploys");
    for _ in 0..50 {
        let reply = client.unary("StartWorkflowExecution", Some(&token), &message).await;
        assert_eq!(reply.code(), "0", "{reply:?}");
    }
    tokio::time::timeout(Duration::from_secs(15), gateway.stop())
        .await
        .expect("shutdown is not held by the exporter")
        .unwrap();
}

#[tokio::test]
async fn a_token_exchange_is_a_span_in_the_clients_trace() {
    let receiver = Receiver::start().await;
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&upstream);
    setup.policy = format!(
        "{POLICY}\n@id(\"deployers-read-credentials\")\npermit (principal in Temporal::Group::\"test:deployers\", \
         action == Temporal::Action::\"IssueCredential\", resource == Temporal::Namespace::\"payments\") \
         when {{ context.role == \"read\" }};\n"
    );
    setup.tables = format!(
        "[mint]\nissuer = \"http://flowgate.test\"\nkey_dir = \"{}\"\n[traces]\nendpoint = \"{}\"\nsample_ratio = 0.0\n",
        keys.path().display(),
        receiver.url
    );
    let gateway = Gateway::start(&jwks, setup).await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")
        .append_pair("subject_token", &token)
        .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
        .append_pair("scope", "namespace:payments role:read")
        .finish();

    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("/oauth2/token")
        .header("host", "flowgate")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .body(http_body_util::Full::new(Bytes::from(form)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);

    let spans = receiver.spans_until(|spans| spans.iter().any(|s| s.name == "token exchange")).await;
    let span = spans.iter().find(|s| s.name == "token exchange").unwrap();
    assert_eq!(hex(&span.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&span.parent_span_id), CLIENT_SPAN);
    assert_eq!(span.kind, 2, "a server span");
    assert_eq!(string(span, "flowgate.decision").as_deref(), Some("allow"));
    assert_eq!(string(span, "enduser.id").as_deref(), Some("test:alice"));
    let record = gateway.records().into_iter().find(|r| r["kind"] == "token_exchange").expect("recorded");
    assert_eq!(record["trace_id"], CLIENT_TRACE);
    assert_eq!(string(span, "flowgate.decision_id").as_deref(), record["decision_id"].as_str());
}
