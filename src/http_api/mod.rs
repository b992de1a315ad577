//! Temporal's HTTP/JSON API, transcoded: the routes of `google.api.http`, JSON requests turned
//! into the protobuf message of a gRPC call, and protobuf responses (or gRPC errors) turned back
//! into the JSON Temporal's own HTTP port would answer.
//!
//! # Why flowgate terminates HTTP instead of forwarding it
//!
//! Temporal serves this API itself (grpc-gateway on its HTTP port). Forwarding HTTP there would
//! make flowgate authorize its *reading* of a request while Temporal executes *its own*
//! reading: gorilla/mux path cleaning, grpc-gateway's percent-decoding (`%2F` becomes a path
//! separator, so `wf-1%2Fsignal%2Fsneaky` is a signal), `X-HTTP-Method-Override`, form POSTs
//! falling back to GET routes, query keys applied in Go's random map order, the protojson fork
//! with its enum aliases and payload shorthand, and `Grpc-Metadata-*` headers becoming any
//! metadata. Every difference between the two readings would be a bypass.
//!
//! So flowgate reads the HTTP request once, here, into the protobuf message of the gRPC call,
//! and that message goes through the gateway's ordinary phases (inspect, authorize, record,
//! stamp) to Temporal's *gRPC* port. What Temporal runs is, byte for byte, what flowgate
//! authorized. A difference from grpc-gateway can now only make flowgate accept or refuse a
//! request differently, or build a slightly different message; and where grpc-gateway's own
//! result is ambiguous (an encoded `/`, a field named twice, two query keys for one field, the
//! override header) flowgate refuses the request. The cost is this module: a route table, a
//! descriptor-guided JSON codec both ways, and CPU for each transcoding.
//!
//! # What is here
//!
//! * [`descriptors`]: Temporal's `FileDescriptorSet`, compiled in (`temporal_api.binpb`, written
//!   by `scripts/temporal-descriptors.py`); a server with newer fields or routes gets 400/404
//!   until it is regenerated, so the API fails closed.
//! * [`routes`]: the 228 bindings, and matching a method and raw path against them.
//! * [`json_in`] (with [`payload`], [`strcase`] and [`json`]): request JSON → message.
//! * [`query`]: query strings and path variables → message.
//! * [`json_out`]: message → response JSON; [`errors`]: gRPC statuses and flowgate's own
//!   refusals → HTTP status and JSON body.
//!
//! The entry point is [`HttpApi`]: [`HttpApi::route`], then [`Route::request_message`] for the
//! gRPC request and [`Route::response_json`] for its answer, or [`status_json`] for an error.
//!
//! # What the caller owns
//!
//! * The body limit: read at most [`MAX_BODY_BYTES`] (Temporal's 4 MiB) before calling
//!   [`Route::request_message`] (which refuses a larger slice as a second guard), and bound the
//!   response size before [`Route::response_json`].
//! * Headers: only `Content-Type` and `Accept` matter here ([`Formats::from_request`]); the
//!   metadata sent upstream is built by the caller from an allowlist.

pub mod descriptors;
pub mod errors;
pub mod json;
pub mod json_in;
pub mod json_out;
pub mod payload;
pub mod query;
pub mod routes;
pub mod strcase;

use std::sync::Arc;

use prost::Message as _;
use prost_reflect::DynamicMessage;

pub use errors::{HttpError, http_status_from_code, status_json};
pub use json_out::OutputOptions;
pub use routes::{Binding, BodyRule};

/// The largest request body Temporal's HTTP API reads (`rpc.MaxHTTPAPIRequestBytes`).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The routes and descriptors, built once.
#[derive(Debug)]
pub struct HttpApi {
    routes: routes::RouteTable,
}

impl Default for HttpApi {
    fn default() -> HttpApi {
        HttpApi::new()
    }
}

impl HttpApi {
    /// Decodes the compiled-in descriptors (once per process) and builds the route table.
    pub fn new() -> HttpApi {
        // The descriptors are part of the build, and a test builds this table from them.
        let routes = routes::RouteTable::from_pool(descriptors::pool())
            .unwrap_or_else(|error| panic!("the compiled-in descriptors give no route table: {error}"));
        HttpApi { routes }
    }

    /// Every binding, in descriptor order.
    pub fn bindings(&self) -> &[Arc<Binding>] {
        self.routes.bindings()
    }

    /// Matches a request: `path` is the path of the request target as received (still
    /// percent-encoded, without the query). 400 for an encoded `/`, a bad escape or an
    /// `X-HTTP-Method-Override` header; 404 for a path that is no route (empty and dot
    /// segments included); 501 for a known path with another method.
    pub fn route(&self, method: &http::Method, path: &str, headers: &http::HeaderMap) -> Result<Route, HttpError> {
        let method_override = headers.contains_key("x-http-method-override");
        let matched = self.routes.matches(method, path, method_override)?;
        Ok(Route { matched })
    }
}

/// A request matched to one binding.
#[derive(Debug, Clone)]
pub struct Route {
    matched: routes::Matched,
}

impl Route {
    pub fn binding(&self) -> &Binding {
        &self.matched.binding
    }

    /// The gRPC method path, e.g.
    /// `/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution`.
    pub fn grpc_path(&self) -> &str {
        &self.matched.binding.grpc_path
    }

    /// The route template, e.g. `/api/v1/namespaces/{namespace}/workflows/{workflow_id}`.
    pub fn template(&self) -> &str {
        &self.matched.binding.template
    }

    /// The path variables (decoded), in template order.
    pub fn variables(&self) -> &[String] {
        &self.matched.variables
    }

    /// The request message as a [`DynamicMessage`]: the JSON body (`body: "*"`) or the query
    /// (`body: ""`), then the path variables over it.
    pub fn request(
        &self,
        query: Option<&str>,
        body: &[u8],
        request_shorthand: bool,
    ) -> Result<DynamicMessage, HttpError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(HttpError::invalid("http: request body too large"));
        }
        let binding = &self.matched.binding;
        let mut message = match binding.body {
            BodyRule::All => json_in::decode_body(&binding.input, body, request_shorthand)?,
            BodyRule::None => {
                let mut message = DynamicMessage::new(binding.input.clone());
                let pairs = query::parse_query(query.unwrap_or_default())?;
                query::fill_from_query(&mut message, binding, &pairs)?;
                message
            }
        };
        query::fill_from_path(&mut message, binding, &self.matched.variables)?;
        Ok(message)
    }

    /// The request message, encoded: the payload of the gRPC call (unframed).
    pub fn request_message(
        &self,
        query: Option<&str>,
        body: &[u8],
        request_shorthand: bool,
    ) -> Result<Vec<u8>, HttpError> {
        Ok(self.request(query, body, request_shorthand)?.encode_to_vec())
    }

    /// The JSON of a successful response, from the (unframed, uncompressed) response message.
    pub fn response_json(&self, protobuf: &[u8], options: OutputOptions) -> Result<Vec<u8>, HttpError> {
        self.response_json_held(protobuf, options, &mut |_| Ok(()))
    }

    /// [`Route::response_json`], with `hold` asked for the memory payload trees take
    /// ([`json_out::to_json_held`]).
    pub fn response_json_held(
        &self,
        protobuf: &[u8],
        options: OutputOptions,
        hold: &mut dyn FnMut(usize) -> Result<(), HttpError>,
    ) -> Result<Vec<u8>, HttpError> {
        let message = DynamicMessage::decode(self.matched.binding.output.clone(), protobuf)
            .map_err(|error| HttpError::internal(format!("cannot decode the response message: {error}")))?;
        json_out::to_json_held(&message, options, hold)
    }
}

/// The formats a request asks for, as Temporal's HTTP API picks its marshalers
/// (`http_api_server.go:118-124`, `:244-253`, grpc-gateway's `MarshalerForRequest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    /// Whether the request body may use payload shorthand: yes unless its `Content-Type` is
    /// `application/json+no-payload-shorthand` (or `+pretty+no-payload-shorthand`).
    pub request_shorthand: bool,
    /// How to write the response.
    pub response: OutputOptions,
}

/// The marshalers Temporal registers, by media type: (pretty, shorthand).
fn registered(media_type: &str) -> Option<OutputOptions> {
    Some(match media_type {
        "*" => OutputOptions { pretty: false, shorthand: true },
        "application/json+pretty" => OutputOptions { pretty: true, shorthand: true },
        "application/json+no-payload-shorthand" => OutputOptions { pretty: false, shorthand: false },
        "application/json+pretty+no-payload-shorthand" => OutputOptions { pretty: true, shorthand: false },
        _ => return None,
    })
}

impl Formats {
    /// `?pretty` and `?noPayloadShorthand` (any value) replace the `Accept` header; the first
    /// `Accept` value naming a registered type picks the response format, else the request's;
    /// the first `Content-Type` naming one (parameters ignored) picks the request's, else the
    /// default (shorthand, compact).
    pub fn from_request(query: Option<&str>, headers: &http::HeaderMap) -> Formats {
        let pairs = query.and_then(|q| query::parse_query(q).ok()).unwrap_or_default();
        let mut accept_suffix = String::new();
        if query::has_flag(&pairs, "pretty") {
            accept_suffix.push_str("+pretty");
        }
        if query::has_flag(&pairs, "noPayloadShorthand") {
            accept_suffix.push_str("+no-payload-shorthand");
        }
        let outbound = if accept_suffix.is_empty() {
            headers.get_all(http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).find_map(registered)
        } else {
            registered(&format!("application/json{accept_suffix}"))
        };
        let inbound = headers
            .get_all(http::header::CONTENT_TYPE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| registered(&v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()))
            .unwrap_or_default();
        Formats { request_shorthand: inbound.shorthand, response: outbound.unwrap_or(inbound) }
    }
}

#[cfg(test)]
mod tests;
