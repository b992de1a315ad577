//! The audit trail: what flowgate decided about each call, and what became of it.
//!
//! One JSON object per line, in one file (or standard output):
//!
//! * a **decision record** (`kind` `grpc` or `token_exchange`) for every call, allowed or not,
//!   written before an allowed call goes upstream ([`DecisionRecord`]; its fields are a
//!   contract, see DESIGN.md);
//! * an **outcome record** (`kind` `outcome`) for every call that went upstream, linked by
//!   `decision_id`: the gRPC status Temporal returned, the duration, and what a start made (its
//!   `run_id`). "Who started run X" is one lookup: the outcome with that run id names the
//!   decision, and the decision names the principal ([`OutcomeRecord`]);
//! * every line ends with `prev`, the hash of the line before it: an edited, removed or
//!   reordered line breaks the chain, and `flowgate audit verify` says where ([`chain`]).
//!
//! [`log`] writes the lines (order, durability, rotation); [`chain`] checks them; [`query`]
//! finds decisions and their outcomes again; [`replay`] decides them again under other policies.

pub mod chain;
pub mod log;
pub mod query;
pub mod replay;

use std::borrow::Cow;

use serde::Serialize;

use crate::authz::{Decision, PolicyEngine};
use crate::temporal::Call;
use crate::traceparent::TraceId;

pub use self::log::{AuditError, DecisionLog};

/// `principal` of a record.
#[derive(Debug, Clone, Serialize)]
pub struct PrincipalRecord<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub id: &'a str,
    pub issuer: &'a str,
    /// The identity flowgate writes into Temporal's history for this principal
    /// (`identity.template`), when it does not quote the client's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<&'a str>,
    /// The principal snapshot (`kind` `principal`) that holds what policies saw of it.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<&'a str>,
}

/// What policies see of a principal (`kind` `principal`), written before the first record that
/// names it by `ref` in each log file: with the record's resource and context, enough to decide
/// the call again under other policies (`flowgate audit replay`).
#[derive(Debug, Clone, Serialize)]
pub struct PrincipalSnapshot<'a> {
    pub ts: String,
    pub kind: &'static str,
    #[serde(rename = "ref")]
    pub reference: &'a str,
    pub principal: SnapshotPrincipal<'a>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotPrincipal<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub id: &'a str,
    pub issuer: &'a str,
    pub sub: &'a str,
    pub groups: &'a [String],
    pub tags: &'a std::collections::BTreeMap<String, String>,
}

/// `resource` of a record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResourceRecord<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<&'a str>,
    /// The namespace id the request named instead of a name; `namespace` is then the name the
    /// upstream resolved it to (absent when it was not resolved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_queue: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity_type: Option<&'a str>,
    /// A Nexus endpoint, with the service and operation called on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nexus_service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nexus_operation: Option<&'a str>,
    /// The sticky queue a worker polls, registers or shuts down (policies are asked about its
    /// normal queue, `task_queue`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky_queue: Option<&'a str>,
    /// For a question a call implied: the action of the call (policies see it as
    /// `context.implied_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub implied_by: Option<&'a str>,
}

impl<'a> ResourceRecord<'a> {
    /// What a call names, as recorded.
    pub fn of(call: &'a Call) -> ResourceRecord<'a> {
        let r = &call.resource;
        ResourceRecord {
            kind: r.kind.entity_type(),
            namespace: r.namespace.as_deref(),
            namespace_id: call.namespace_id.as_deref(),
            workflow_type: r.workflow_type.as_deref(),
            workflow_id: r.workflow_id.as_deref(),
            task_queue: r.task_queue.as_deref(),
            schedule_id: r.schedule_id.as_deref(),
            signal_name: call.signal_name.as_deref(),
            query_type: call.query_type.as_deref(),
            update_name: call.update_name.as_deref(),
            activity_type: call.activity_type.as_deref(),
            endpoint: r.endpoint.as_deref(),
            nexus_service: call.nexus_service.as_deref(),
            nexus_operation: call.nexus_operation.as_deref(),
            sticky_queue: call.sticky_queue.as_deref(),
            implied_by: call.implied_by,
        }
    }
}

/// One question asked for a call (`questions` of a record): the RPC itself first, then each
/// question its request implies (a task completion's commands, the terminate of a start with
/// `TERMINATE_EXISTING`, ...), each with its own decision and policies.
#[derive(Debug, Clone, Serialize)]
pub struct QuestionRecord<'a> {
    pub action: &'a str,
    /// Why it was asked: `the call`, `command 2`, `workflow_id_conflict_policy TERMINATE_EXISTING, ...`.
    pub origin: String,
    pub resource: ResourceRecord<'a>,
    pub decision: &'static str,
    pub reasons: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub errors: &'a [String],
    /// Refused before any policy was asked (outside a credential's grant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<&'a str>,
}

/// `client` of a record.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRecord<'a> {
    pub addr: String,
    pub name: Option<&'a str>,
    pub version: Option<&'a str>,
}

/// One decision, as written to the log (field names are a contract: see DESIGN.md).
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord<'a> {
    pub ts: String,
    pub decision_id: String,
    pub kind: &'static str,
    pub decision: &'static str,
    pub reasons: Cow<'a, [String]>,
    pub errors: Cow<'a, [String]>,
    pub principal: Option<PrincipalRecord<'a>>,
    pub action: &'a str,
    pub method: &'a str,
    pub resource: Option<ResourceRecord<'a>>,
    pub client: ClientRecord<'a>,
    pub policy_version: &'a str,
    pub latency_us: u64,
    /// The gRPC status of a refused call; for a token exchange, the HTTP status of a refusal.
    pub status: Option<u16>,
    /// For a refusal: `policy` when policies refused the call, `flowgate` when one of
    /// flowgate's own checks did (a credential's grant, a sticky queue, a task token, a budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<&'static str>,
    /// For a refused RPC: how many questions its request implied that were not asked (a
    /// refused RPC asks nothing more), so a replay that allows the RPC knows it is partial.
    #[serde(skip_serializing_if = "is_zero")]
    pub unasked_questions: usize,
    /// For a token exchange: the scope asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'a str>,
    /// What the shadow policy set decided, when it differs from the enforced decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowRecord<'a>>,
    /// Every question asked, when the request implied more than its RPC (empty otherwise:
    /// the top-level fields are then the only question).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub questions: Vec<QuestionRecord<'a>>,
    /// The rate limit that refused an allowed call (`[[rate_limits]]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// The W3C trace the call belongs to, when its client sent a valid `traceparent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<TraceId>,
    /// For a call that came through the HTTP API: its HTTP method and route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRecord<'a>>,
}

/// How an HTTP API request reached the call (`[http_api]`): `action`, `method` and `resource`
/// stay the gRPC call's, so policies, queries and replays treat both doors alike.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRecord<'a> {
    pub method: &'a str,
    /// The route's template, e.g. `/api/v1/namespaces/{namespace}/workflows/{workflow_id}`.
    pub route: &'a str,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The shadow set's decision (`policy.shadow_dir`), recorded when it disagrees.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowRecord<'a> {
    pub decision: &'static str,
    pub reasons: &'a [String],
    pub errors: &'a [String],
    pub policy_version: &'a str,
}

impl<'a> ShadowRecord<'a> {
    /// The shadow set's decision for the record, when it differs from the enforced one.
    pub fn of(enforced: &Decision, shadow: &'a Decision, engine: &'a PolicyEngine) -> Option<ShadowRecord<'a>> {
        (shadow.allowed != enforced.allowed || shadow.reasons != enforced.reasons).then(|| ShadowRecord {
            decision: if shadow.allowed { "allow" } else { "deny" },
            reasons: &shadow.reasons,
            errors: &shadow.errors,
            policy_version: engine.version(),
        })
    }
}

/// RFC 3339 with microseconds, UTC.
pub fn timestamp(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// A time-ordered unique id.
pub fn decision_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// What became of a call that went upstream (`kind` `outcome`), linked to its decision.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeRecord<'a> {
    pub ts: String,
    pub kind: &'static str,
    pub decision_id: &'a str,
    pub method: &'a str,
    /// The gRPC status code the call ended with (0 is OK).
    pub status: u16,
    /// Its `grpc-message`, when it failed (at most [`MAX_OUTCOME_MESSAGE`] bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// From the decision to the end of the response.
    pub duration_us: u64,
    /// The run a start, a signal-with-start or a reset made (or found, see `started`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Whether a start made a new run (false: an existing one was used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<bool>,
}

/// How much of a failed call's message an outcome record keeps.
pub const MAX_OUTCOME_MESSAGE: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let ts = timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456));
        assert_eq!(ts, "2023-11-14T22:13:20.123456Z");
    }
}
