//! The route table: every `google.api.http` binding of Temporal's WorkflowService and
//! OperatorService (the primary rule and its `additional_bindings`), read from the descriptors
//! once, and the matching of an HTTP method and raw path against it.
//!
//! Matching works on the *raw* path, the way flowgate wants it read, not the way grpc-gateway
//! happens to read it; where the two could disagree the request is refused:
//!
//! * `%2F`/`%2f` anywhere → 400. grpc-gateway routes on the decoded path, where it is a
//!   separator (`wf-1%2Fsignal%2Fsneaky` would signal `wf-1`).
//! * Each segment is percent-decoded exactly once (`%252F` is the text `%2F`); a bad escape or
//!   a result that is not UTF-8 → 400.
//! * An empty segment (`//`, a trailing `/`) or a `.`/`..` segment → 404. Temporal would match
//!   the first with an empty variable and redirect the others.
//! * Any `X-HTTP-Method-Override` header → 400; a known path with another method (HEAD and
//!   OPTIONS included) → 501, as Temporal answers it.
//!
//! Temporal's own handlers on its HTTP port (Nexus dispatch and callbacks, `/swagger.json`,
//! `/openapi.yaml`) are not `google.api.http` bindings, so they are simply not routes: 404.

use std::fmt;
use std::sync::Arc;

use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use super::errors::HttpError;

/// The extension `google.api.http` on `google.protobuf.MethodOptions`.
const HTTP_RULE_EXTENSION: &str = "google.api.http";
/// The services whose bindings are routes.
pub const SERVICES: [&str; 2] =
    ["temporal.api.workflowservice.v1.WorkflowService", "temporal.api.operatorservice.v1.OperatorService"];

/// Where the request message comes from besides the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRule {
    /// `body: "*"`: the JSON body is the request message; the query string is not read.
    All,
    /// `body: ""`: no body; the query string fills the message.
    None,
}

/// One segment of a path template.
#[derive(Clone)]
enum Segment {
    Literal(String),
    /// `{a.b}`: the field path, resolved in the request message.
    Variable(FieldPath),
}

/// A dotted field path resolved against a message, outermost first: every field but the last is
/// a singular message field.
///
/// `Debug` shows the text only: prost-reflect's `Debug` of a descriptor walks the message types
/// it reaches, without end for recursive ones (`Failure.cause`), so no type here derives it over
/// descriptors.
#[derive(Clone)]
pub struct FieldPath {
    /// As written in the template, e.g. `execution.workflow_id`.
    pub text: String,
    pub fields: Vec<FieldDescriptor>,
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldPath({})", self.text)
    }
}

impl FieldPath {
    /// Resolves `text` (proto names, dot-separated) in `message`.
    pub fn resolve(message: &MessageDescriptor, text: &str) -> Option<FieldPath> {
        let mut fields = Vec::new();
        let mut current = message.clone();
        let parts: Vec<&str> = text.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let field = current.get_field_by_name(part)?;
            if field.is_list() || field.is_map() {
                return None;
            }
            if i + 1 < parts.len() {
                let Kind::Message(inner) = field.kind() else { return None };
                current = inner;
            }
            fields.push(field);
        }
        Some(FieldPath { text: text.to_owned(), fields })
    }

    /// Whether `other` is this path or lies inside it (a path-bound field's subtree).
    pub fn covers(&self, other: &[FieldDescriptor]) -> bool {
        other.len() >= self.fields.len() && self.fields.iter().zip(other).all(|(a, b)| a == b)
    }

    /// Sets the leaf to `value`, creating the messages on the way.
    pub fn set(&self, message: &mut DynamicMessage, value: Value) -> Result<(), HttpError> {
        let Some((leaf, parents)) = self.fields.split_last() else { return Ok(()) };
        let mut current = message;
        for field in parents {
            let slot = current.get_field_mut(field);
            current = match slot {
                Value::Message(inner) => inner,
                _ => return Err(HttpError::internal(format!("field `{}` is not a message", field.full_name()))),
            };
        }
        current
            .try_set_field(leaf, value)
            .map_err(|_| HttpError::internal(format!("cannot set field `{}`", leaf.full_name())))
    }
}

/// One HTTP binding of one RPC. (`Debug` by hand, as for [`FieldPath`].)
pub struct Binding {
    /// `GET`, `POST` or `DELETE` (Temporal uses no others).
    pub method: http::Method,
    /// The path template as written in the annotation, e.g.
    /// `/api/v1/namespaces/{namespace}/workflows/{workflow_id}`.
    pub template: String,
    pub body: BodyRule,
    /// The gRPC method path, e.g.
    /// `/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution`.
    pub grpc_path: String,
    /// The RPC's name, e.g. `StartWorkflowExecution`.
    pub rpc: String,
    /// The fully qualified service.
    pub service: String,
    /// 0 for the primary rule, then the `additional_bindings` in order.
    pub index: usize,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    segments: Vec<Segment>,
}

impl Binding {
    /// The path variables, in template order.
    pub fn variables(&self) -> impl Iterator<Item = &FieldPath> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Variable(path) => Some(path),
            Segment::Literal(_) => None,
        })
    }

    /// The variables' values if `segments` (decoded) fit the template.
    fn fits<'s>(&self, segments: &'s [String]) -> Option<Vec<&'s str>> {
        if segments.len() != self.segments.len() {
            return None;
        }
        let mut values = Vec::new();
        for (pattern, actual) in self.segments.iter().zip(segments) {
            match pattern {
                Segment::Literal(text) if text == actual => {}
                Segment::Literal(_) => return None,
                Segment::Variable(_) => values.push(actual.as_str()),
            }
        }
        Some(values)
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binding")
            .field("method", &self.method)
            .field("template", &self.template)
            .field("body", &self.body)
            .field("grpc_path", &self.grpc_path)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.template)
    }
}

/// Why the table could not be built from a descriptor pool (a broken `temporal_api.binpb`).
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("the descriptors have no service `{0}`")]
    MissingService(String),
    #[error("the descriptors have no `google.api.http` extension")]
    MissingExtension,
    #[error("`{rpc}`: cannot read the path template `{template}`")]
    Template { rpc: String, template: String },
    #[error("`{rpc}`: the template `{template}` names `{variable}`, which is not a singular field")]
    Variable { rpc: String, template: String, variable: String },
    #[error("`{rpc}`: unsupported binding ({reason})")]
    Unsupported { rpc: String, reason: String },
}

/// A request matched to a binding, with its path variables (decoded, in template order).
#[derive(Debug, Clone)]
pub struct Matched {
    pub binding: Arc<Binding>,
    pub variables: Vec<String>,
}

/// All bindings.
#[derive(Debug)]
pub struct RouteTable {
    bindings: Vec<Arc<Binding>>,
}

impl RouteTable {
    /// Reads every `google.api.http` rule of [`SERVICES`] in `pool`.
    pub fn from_pool(pool: &DescriptorPool) -> Result<RouteTable, TableError> {
        let extension = pool.get_extension_by_name(HTTP_RULE_EXTENSION).ok_or(TableError::MissingExtension)?;
        let mut bindings = Vec::new();
        for service_name in SERVICES {
            let service = pool
                .get_service_by_name(service_name)
                .ok_or_else(|| TableError::MissingService(service_name.to_owned()))?;
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&extension) {
                    continue;
                }
                let rule = options.get_extension(&extension);
                let Value::Message(rule) = rule.as_ref() else { continue };
                let mut rules = vec![rule.clone()];
                if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
                    rules.extend(more.iter().filter_map(|value| value.as_message().cloned()));
                }
                for (index, rule) in rules.iter().enumerate() {
                    bindings.push(Arc::new(binding(&method, rule, index)?));
                }
            }
        }
        Ok(RouteTable { bindings })
    }

    pub fn bindings(&self) -> &[Arc<Binding>] {
        &self.bindings
    }

    /// Matches a request: `path` is the raw path of the request target (still percent-encoded,
    /// without the query). `method_override` says whether the request carries an
    /// `X-HTTP-Method-Override` header.
    pub fn matches(&self, method: &http::Method, path: &str, method_override: bool) -> Result<Matched, HttpError> {
        if method_override {
            return Err(HttpError::invalid("the `X-HTTP-Method-Override` header is not accepted"));
        }
        let segments = decode_path(path)?;
        let mut path_known = false;
        for binding in &self.bindings {
            let Some(values) = binding.fits(&segments) else { continue };
            if binding.method != method {
                path_known = true;
                continue;
            }
            let variables = values.into_iter().map(str::to_owned).collect();
            return Ok(Matched { binding: binding.clone(), variables });
        }
        Err(if path_known { HttpError::method_not_allowed() } else { HttpError::not_found() })
    }
}

/// The decoded segments of a raw path, or the refusal (§4.1 of the design).
pub fn decode_path(path: &str) -> Result<Vec<String>, HttpError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(HttpError::invalid(format!("the path `{}` does not start with `/`", shown(path))));
    };
    if path.contains("%2F") || path.contains("%2f") {
        return Err(HttpError::invalid(format!(
            "the path `{}` has an encoded `/` (`%2F`), which is not accepted",
            shown(path)
        )));
    }
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        if raw.is_empty() {
            return Err(HttpError::not_found());
        }
        let decoded = percent_decode(raw).ok_or_else(|| {
            HttpError::invalid(format!("the path segment `{}` is not validly percent-encoded UTF-8", shown(raw)))
        })?;
        if decoded == "." || decoded == ".." {
            return Err(HttpError::not_found());
        }
        segments.push(decoded);
    }
    Ok(segments)
}

/// Percent-decodes once; `None` for a bad escape or a result that is not UTF-8.
pub fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let high = (hex[0] as char).to_digit(16)?;
            let low = (hex[1] as char).to_digit(16)?;
            out.push(u8::try_from(high * 16 + low).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Client text shown in a message: at most 200 bytes.
fn shown(text: &str) -> &str {
    crate::error::truncated(text, 200)
}

fn string_field(message: &DynamicMessage, name: &str) -> String {
    message.get_field_by_name(name).and_then(|value| value.as_str().map(str::to_owned)).unwrap_or_default()
}

fn binding(
    method: &prost_reflect::MethodDescriptor,
    rule: &DynamicMessage,
    index: usize,
) -> Result<Binding, TableError> {
    let rpc = method.name().to_owned();
    let unsupported = |reason: String| TableError::Unsupported { rpc: rpc.clone(), reason };
    let mut found = None;
    for (verb, name) in [
        (http::Method::GET, "get"),
        (http::Method::PUT, "put"),
        (http::Method::POST, "post"),
        (http::Method::DELETE, "delete"),
        (http::Method::PATCH, "patch"),
    ] {
        if rule.has_field_by_name(name) {
            found = Some((verb, string_field(rule, name)));
        }
    }
    let Some((verb, template)) = found else {
        return Err(unsupported("no verb, or a custom verb".to_owned()));
    };
    let body = match string_field(rule, "body").as_str() {
        "*" => BodyRule::All,
        "" => BodyRule::None,
        other => return Err(unsupported(format!("body `{other}`"))),
    };
    if !string_field(rule, "response_body").is_empty() {
        return Err(unsupported("a response_body".to_owned()));
    }
    let input = method.input();
    let template_error = || TableError::Template { rpc: rpc.clone(), template: template.clone() };
    let Some(rest) = template.strip_prefix('/') else { return Err(template_error()) };
    let mut segments = Vec::new();
    for part in rest.split('/') {
        if let Some(variable) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            // `{x=**}` and `{x=*}/…` patterns: Temporal uses none, so they are refused here.
            if variable.contains('=') || variable.is_empty() {
                return Err(template_error());
            }
            let path = FieldPath::resolve(&input, variable).ok_or_else(|| TableError::Variable {
                rpc: rpc.clone(),
                template: template.clone(),
                variable: variable.to_owned(),
            })?;
            segments.push(Segment::Variable(path));
        } else if part.is_empty() || part.contains(['{', '}', ':', '*']) {
            return Err(template_error());
        } else {
            segments.push(Segment::Literal(part.to_owned()));
        }
    }
    Ok(Binding {
        method: verb,
        template: template.clone(),
        body,
        grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
        rpc,
        service: method.parent_service().full_name().to_owned(),
        index,
        input,
        output: method.output(),
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_api::descriptors;

    fn table() -> RouteTable {
        RouteTable::from_pool(descriptors::pool()).unwrap()
    }

    fn route(method: http::Method, path: &str) -> Result<Matched, HttpError> {
        table().matches(&method, path, false)
    }

    #[derive(serde::Deserialize)]
    struct FixtureRoute {
        rpc: String,
        service: String,
        method: String,
        path: String,
        body: String,
        binding_index: usize,
        path_params: Vec<String>,
        request_type: String,
    }

    /// Every binding of `tests/fixtures/http_routes.json` (routes.json of the design's research:
    /// api-go v1.63.5's compiled descriptors, cross-checked against its `service.pb.gw.go` and
    /// OpenAPI spec) is in the table, and nothing else.
    #[test]
    fn the_table_is_the_fixtures_228_bindings() {
        let fixture: Vec<FixtureRoute> =
            serde_json::from_str(include_str!("../../tests/fixtures/http_routes.json")).unwrap();
        assert_eq!(fixture.len(), 228);
        let table = table();
        assert_eq!(table.bindings().len(), 228);
        for (expected, binding) in fixture.iter().zip(table.bindings()) {
            assert_eq!(binding.rpc, expected.rpc);
            assert_eq!(binding.service, expected.service);
            assert_eq!(binding.method.as_str(), expected.method);
            assert_eq!(binding.template, expected.path);
            assert_eq!(binding.index, expected.binding_index, "{binding}");
            assert_eq!(binding.body, if expected.body == "*" { BodyRule::All } else { BodyRule::None });
            assert_eq!(binding.input.full_name(), expected.request_type);
            let variables: Vec<&str> = binding.variables().map(|path| path.text.as_str()).collect();
            assert_eq!(variables, expected.path_params, "{binding}");
            assert_eq!(binding.grpc_path, format!("/{}/{}", expected.service, expected.rpc));
        }
    }

    #[test]
    fn every_fixture_binding_matches_itself_and_its_rpc_is_in_the_catalog() {
        let fixture: Vec<FixtureRoute> =
            serde_json::from_str(include_str!("../../tests/fixtures/http_routes.json")).unwrap();
        let table = table();
        for expected in &fixture {
            // Fill each variable with a value naming it, so the values can be checked.
            let path: String = expected
                .path
                .split('/')
                .map(|part| match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(variable) => format!("v-{variable}"),
                    None => part.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("/");
            let method: http::Method = expected.method.parse().unwrap();
            let matched = table.matches(&method, &path, false).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(matched.binding.rpc, expected.rpc, "{path}");
            assert_eq!(matched.binding.service, expected.service);
            let values: Vec<String> = expected.path_params.iter().map(|p| format!("v-{p}")).collect();
            assert_eq!(matched.variables, values);
            let spec = crate::temporal::catalog::lookup(&matched.binding.grpc_path);
            assert_eq!(spec.name, expected.rpc, "`{}` is in the catalog", matched.binding.grpc_path);
            assert_eq!(spec.service, expected.service);
            assert_eq!(crate::temporal::catalog::rpc(&expected.rpc).service, expected.service);
        }
    }

    #[test]
    fn a_start_is_routed_with_its_variables_and_descriptors() {
        let matched = route(http::Method::POST, "/api/v1/namespaces/payments/workflows/order-1").unwrap();
        let binding = &matched.binding;
        assert_eq!(binding.grpc_path, "/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution");
        assert_eq!(binding.template, "/api/v1/namespaces/{namespace}/workflows/{workflow_id}");
        assert_eq!(binding.input.full_name(), "temporal.api.workflowservice.v1.StartWorkflowExecutionRequest");
        assert_eq!(binding.output.full_name(), "temporal.api.workflowservice.v1.StartWorkflowExecutionResponse");
        assert_eq!(binding.body, BodyRule::All);
        assert_eq!(matched.variables, ["payments", "order-1"]);
        // The unprefixed primary binding reaches the same RPC.
        let primary = route(http::Method::POST, "/namespaces/payments/workflows/order-1").unwrap();
        assert_eq!(primary.binding.grpc_path, binding.grpc_path);
        assert_eq!(primary.binding.index, 0);
        // Nested variables resolve to nested fields.
        let signal = route(http::Method::POST, "/api/v1/namespaces/p/workflows/wf/signal/approve").unwrap();
        let nested: Vec<&str> = signal.binding.variables().map(|v| v.text.as_str()).collect();
        assert_eq!(nested, ["namespace", "workflow_execution.workflow_id", "signal_name"]);
        // The operator service is routed too.
        let endpoints = route(http::Method::GET, "/api/v1/nexus/endpoints").unwrap();
        assert_eq!(endpoints.binding.grpc_path, "/temporal.api.operatorservice.v1.OperatorService/ListNexusEndpoints");
    }

    #[test]
    fn an_encoded_slash_is_refused_whatever_its_case() {
        for path in [
            "/api/v1/namespaces/payments/workflows/order-1%2Fsignal%2Fsneaky",
            "/api/v1/namespaces/payments/workflows/order-1%2fsignal%2fsneaky",
            "/api/v1/namespaces/pay%2Fments/workflows/x",
        ] {
            let error = route(http::Method::POST, path).unwrap_err();
            assert_eq!(error.status, http::StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(error.code, 3);
            assert!(error.message.contains("`%2F`"), "{}", error.message);
        }
    }

    #[test]
    fn segments_are_decoded_once() {
        let matched = route(http::Method::GET, "/api/v1/namespaces/payments/workflows/a%20b%3Ac%C3%A9%252F").unwrap();
        assert_eq!(matched.variables, ["payments", "a b:cé%2F"]);
        // Literals are compared decoded, as grpc-gateway compares them.
        let matched = route(http::Method::GET, "/%61pi/v1/namespaces/payments").unwrap();
        assert_eq!(matched.binding.rpc, "DescribeNamespace");
        for bad in
            ["/api/v1/namespaces/a%zz", "/api/v1/namespaces/a%2", "/api/v1/namespaces/a%", "/api/v1/namespaces/%C3"]
        {
            let error = route(http::Method::GET, bad).unwrap_err();
            assert_eq!(error.status, http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn empty_and_dot_segments_are_not_found() {
        for path in [
            "/api/v1/namespaces/payments/workflows/",
            "/api/v1/namespaces//workflows/x",
            "//api/v1/namespaces/payments",
            "/api/v1/namespaces/payments/workflows/..",
            "/api/v1/namespaces/payments/workflows/.",
            "/api/v1/namespaces/payments/workflows/%2E%2E",
            "/api/v1/namespaces/payments/../payments/workflows/x",
            "/",
            "",
        ] {
            let error = route(http::Method::GET, path).unwrap_err();
            let expected = if path.is_empty() { http::StatusCode::BAD_REQUEST } else { http::StatusCode::NOT_FOUND };
            assert_eq!(error.status, expected, "{path:?}");
        }
        let error = route(http::Method::GET, "/api/v1/namespaces/payments/workflows/").unwrap_err();
        assert_eq!(error.body(), br#"{"code":5,"message":"Not Found"}"#);
    }

    #[test]
    fn paths_that_are_not_bindings_are_not_found() {
        for (method, path) in [
            (http::Method::GET, "/api/v1/cluster/namespaces"),
            (http::Method::GET, "/namespaces"),
            (http::Method::GET, "/api/v1/nothing-here"),
            (http::Method::POST, "/namespaces/payments/task-queues/tq/nexus-services/svc/op"),
            (http::Method::POST, "/nexus/endpoints/e/services/svc/op"),
            (http::Method::POST, "/namespaces/payments/nexus/callback"),
            (http::Method::POST, "/nexus/callback"),
            (http::Method::GET, "/swagger.json"),
            (http::Method::GET, "/openapi.yaml"),
            // gRPC-only RPCs have no route.
            (http::Method::POST, "/temporal.api.workflowservice.v1.WorkflowService/RespondWorkflowTaskCompleted"),
        ] {
            let error = route(method, path).unwrap_err();
            assert_eq!(error.status, http::StatusCode::NOT_FOUND, "{path}");
            assert_eq!(error.code, 5);
        }
    }

    #[test]
    fn a_known_path_with_another_method_is_not_implemented() {
        for method in [http::Method::PUT, http::Method::HEAD, http::Method::OPTIONS, http::Method::PATCH] {
            let error = route(method.clone(), "/api/v1/namespaces/payments/workflows/order-1").unwrap_err();
            assert_eq!(error.status, http::StatusCode::NOT_IMPLEMENTED, "{method}");
            assert_eq!(error.body(), br#"{"code":12,"message":"Method Not Allowed"}"#);
        }
        // GET /history exists; POST does not (no form fallback).
        let error = route(http::Method::POST, "/api/v1/namespaces/p/workflows/wf/history").unwrap_err();
        assert_eq!(error.status, http::StatusCode::NOT_IMPLEMENTED);
        // The same path with GET, POST and DELETE bindings reaches three RPCs.
        let schedule = "/api/v1/namespaces/p/schedules/s";
        assert_eq!(route(http::Method::GET, schedule).unwrap().binding.rpc, "DescribeSchedule");
        assert_eq!(route(http::Method::POST, schedule).unwrap().binding.rpc, "CreateSchedule");
        assert_eq!(route(http::Method::DELETE, schedule).unwrap().binding.rpc, "DeleteSchedule");
    }

    #[test]
    fn debug_output_is_finite() {
        // prost-reflect's descriptor `Debug` never ends on recursive types; ours must.
        let matched = route(http::Method::POST, "/api/v1/namespaces/p/workflows/wf/signal/s").unwrap();
        let text = format!("{matched:?}");
        assert!(text.contains("SignalWorkflowExecution"), "{text}");
        assert!(format!("{:?}", table()).len() < 100_000);
    }

    #[test]
    fn no_two_bindings_of_one_method_overlap() {
        // grpc-gateway would pick between overlapping templates by registration order; the
        // table has none, so the first match is the only one.
        let table = table();
        for (i, a) in table.bindings().iter().enumerate() {
            for b in &table.bindings()[i + 1..] {
                if a.method != b.method || a.segments.len() != b.segments.len() {
                    continue;
                }
                let disjoint = a
                    .segments
                    .iter()
                    .zip(&b.segments)
                    .any(|pair| matches!(pair, (Segment::Literal(x), Segment::Literal(y)) if x != y));
                assert!(disjoint, "{a} overlaps {b}");
            }
        }
    }

    #[test]
    fn a_method_override_header_is_refused() {
        let error = table().matches(&http::Method::POST, "/api/v1/namespaces/p/schedules/s", true).unwrap_err();
        assert_eq!(error.status, http::StatusCode::BAD_REQUEST);
        assert!(error.message.contains("X-HTTP-Method-Override"));
    }
}
