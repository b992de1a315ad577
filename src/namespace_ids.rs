//! Requests that name their namespace by id: resolved to the name policies are written for.
//!
//! Two requests can name a namespace by its id instead of its name:
//! `DescribeNamespace.id` (`temporal operator namespace describe --namespace-id`) and
//! `OperatorService.DeleteNamespace.namespace_id` (the catalog marks them with
//! `MethodSpec::namespace_id`; no other request of the Temporal API has such a field). Policies
//! name namespaces, so the gateway asks the upstream, once, which name an id stands for, and
//! authorizes that name. The request itself goes upstream unchanged, still by id.
//!
//! **Both a name and an id.** Temporal refuses such a request whatever the two say
//! (`GetNamespace operation failed. Both ID and Name specified in request.`, and the delete
//! workflow's "only one of namespace or namespace ID must be set"), so no name is preferred:
//! flowgate refuses it as ambiguous (`INVALID_ARGUMENT`) before any lookup.
//!
//! **What a lookup costs, and who can cause one.** A lookup is one `DescribeNamespace{id}` to
//! the upstream, with [`LOOKUP_TIMEOUT`]. Before any lookup the caller must be authenticated,
//! the id must be a UUID (Temporal's ids all are), and some policy must be able to permit the
//! caller the action (`PolicyEngine::may_permit`, as before a large message is read): a caller
//! with no permission for it gets `PERMISSION_DENIED` and causes no upstream call. Concurrent
//! lookups of one id share a single upstream call; at most [`MAX_LOOKUPS_IN_FLIGHT`] distinct ids
//! are looked up at once (beyond that: `UNAVAILABLE`, retry later), so even a permitted caller
//! cycling through random ids adds a bounded load.
//!
//! **What is cached, and for how long.** An id never changes, but its name changes once: a
//! deleted namespace is renamed `<name>-deleted-<id prefix>` and its old name can be registered
//! again under a new id. So a resolved name is kept [`NAME_TTL`], not forever: that bounds how
//! long a deleted namespace's id is still authorized as its old name. An id the upstream does not
//! know is remembered [`UNKNOWN_TTL`] (a global namespace may yet arrive by replication). Both
//! tables are bounded ([`MAX_NAMES`], [`MAX_UNKNOWN`]; the entry closest to expiry goes first),
//! so unknown ids cannot push known ones out. A failed lookup (timeout, upstream down, upstream
//! refused the lookup) is not cached: the call is refused and the next one asks again.
//!
//! **Refusals.** An id the upstream does not know is `NOT_FOUND`: only a caller some policy may
//! permit the action gets that far, and a random 122-bit id is no secret worth guarding, while a
//! plain "no such id" is what an operator who mistyped needs. A refusal of a call by id names
//! the id, not the name it resolved to: the name is the upstream's answer, not the caller's
//! words. The decision record names both (`resource.namespace`, `resource.namespace_id`).
//!
//! **Credentials of the lookup.** Temporal's authorizer reads only a request's `namespace`, so
//! it checks a request by id against no namespace at all: only a system role passes. With
//! `upstream.credentials = "forward"` the lookup carries the caller's own `authorization` (a
//! caller whose token Temporal would refuse gets that refusal); with `"minted"` a credential
//! minted for the caller with `temporal-system:read` (`Signer::upstream_credential`, which also
//! mints a system role for the call by id itself); with `"none"` no header. A lookup's outcome
//! is shared by every caller waiting on it, whichever of them started it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::authz::PolicyEngine;
use crate::config::UpstreamCredentials;
use crate::credential::Signer;
use crate::proxy::Upstream;
use crate::session::Session;
use crate::temporal::catalog::{self, MethodSpec};
use crate::temporal::{Call, wire};

/// How long one lookup may take before the calls waiting on it are refused.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a resolved name is trusted (see the module docs: deletion renames).
pub const NAME_TTL: Duration = Duration::from_secs(10 * 60);
/// How long an id the upstream does not know is answered from memory.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(30);
/// Resolved ids kept at most.
pub const MAX_NAMES: usize = 4096;
/// Unknown ids kept at most.
pub const MAX_UNKNOWN: usize = 1024;
/// Distinct ids looked up at once at most.
pub const MAX_LOOKUPS_IN_FLIGHT: usize = 32;
/// A `DescribeNamespaceResponse` larger than this is not read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// What the upstream sees as the lookup's `user-agent`, so its logs tell lookups from calls.
pub const LOOKUP_USER_AGENT: &str = concat!("flowgate/", env!("CARGO_PKG_VERSION"), " namespace-id-lookup");

const DESCRIBE_NAMESPACE_PATH: &str = "/temporal.api.workflowservice.v1.WorkflowService/DescribeNamespace";
/// `DescribeNamespaceRequest.id`.
const REQUEST_ID: u32 = 2;
/// `DescribeNamespaceResponse.namespace_info = 1` -> `NamespaceInfo.name = 1`, `.id = 6`.
const RESPONSE_NAME: &[u32] = &[1, 1];
const RESPONSE_ID: &[u32] = &[1, 6];

/// Why a call naming its namespace by id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceIdError {
    #[error(
        "ambiguous request: `{action}` names namespace `{name}` and namespace id `{id}`; name one of them (Temporal refuses both)"
    )]
    Both { action: &'static str, name: String, id: String },
    #[error("namespace id `{0}` is not a UUID")]
    NotUuid(String),
    #[error("permission denied: no policy permits `{action}` to this principal (namespace id `{id}` was not resolved)")]
    NeverPermitted { action: &'static str, id: String },
    #[error("namespace id `{0}` names no namespace")]
    Unknown(String),
    #[error(
        "permission denied: the upstream refused to resolve namespace id `{id}` with this call's credentials: {reason}"
    )]
    UpstreamRefused { id: String, reason: String },
    #[error("namespace id `{id}` could not be resolved: {reason}; retry later")]
    LookupFailed { id: String, reason: String },
    #[error("too many namespace ids are being resolved at once; retry later")]
    Busy,
}

type Outcome = Result<String, NamespaceIdError>;

/// The resolver: the upstream to ask, how to authenticate there, and what it already said.
pub struct NamespaceIds {
    upstream: Upstream,
    credentials: UpstreamCredentials,
    signer: Option<Arc<Signer>>,
    timeout: Duration,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    names: Expiring<String>,
    unknown: Expiring<()>,
    /// One receiver per id being looked up; its lookup task sends the outcome.
    in_flight: HashMap<String, watch::Receiver<Option<Outcome>>>,
}

impl NamespaceIds {
    pub fn new(upstream: Upstream, credentials: UpstreamCredentials, signer: Option<Arc<Signer>>) -> NamespaceIds {
        NamespaceIds { upstream, credentials, signer, timeout: LOOKUP_TIMEOUT, state: Arc::default() }
    }

    /// When `call` names its namespace by id, sets `call.resource.namespace` to the name the id
    /// stands for, or refuses the call. Any other call is left alone.
    pub async fn resolve(
        &self,
        spec: &'static MethodSpec,
        call: &mut Call,
        session: &Session,
        policies: &PolicyEngine,
        headers: &http::HeaderMap,
    ) -> Result<(), NamespaceIdError> {
        let Some(id) = call.namespace_id.clone() else { return Ok(()) };
        if let Some(name) = &call.resource.namespace {
            return Err(NamespaceIdError::Both { action: spec.name, name: name.clone(), id });
        }
        if uuid::Uuid::try_parse(&id).is_err() {
            return Err(NamespaceIdError::NotUuid(id));
        }
        if !policies.may_permit(&session.principal, spec) {
            return Err(NamespaceIdError::NeverPermitted { action: spec.name, id });
        }
        let name = self.name_of(&id, || self.authorization(session, headers, &id)).await?;
        call.resource.namespace = Some(name);
        Ok(())
    }

    /// The name of namespace `id`: remembered, or asked once however many calls wait for it.
    /// `authorization` is only called when this call starts a lookup.
    async fn name_of(
        &self,
        id: &str,
        authorization: impl FnOnce() -> Option<http::HeaderValue>,
    ) -> Result<String, NamespaceIdError> {
        let mut receiver = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if let Some(name) = state.names.get(id, now) {
                return Ok(name.clone());
            }
            if state.unknown.get(id, now).is_some() {
                return Err(NamespaceIdError::Unknown(id.to_owned()));
            }
            match state.in_flight.get(id) {
                Some(receiver) => receiver.clone(),
                None if state.in_flight.len() >= MAX_LOOKUPS_IN_FLIGHT => return Err(NamespaceIdError::Busy),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    state.in_flight.insert(id.to_owned(), receiver.clone());
                    self.spawn_lookup(id.to_owned(), authorization(), sender);
                    receiver
                }
            }
        };
        match receiver.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().expect("waited for an outcome"),
            Err(_) => Err(NamespaceIdError::LookupFailed { id: id.to_owned(), reason: "the lookup ended".into() }),
        }
    }

    /// Looks `id` up in a task of its own, so a caller that goes away does not cancel the
    /// lookup the others wait on (it still ends within the timeout).
    fn spawn_lookup(
        &self,
        id: String,
        authorization: Option<http::HeaderValue>,
        sender: watch::Sender<Option<Outcome>>,
    ) {
        let upstream = self.upstream.clone();
        let timeout = self.timeout;
        let in_flight = InFlight { state: self.state.clone(), id: id.clone(), done: false };
        tokio::spawn(async move {
            let mut in_flight = in_flight;
            let outcome =
                tokio::time::timeout(timeout, lookup(&upstream, &id, authorization)).await.unwrap_or_else(|_| {
                    Err(NamespaceIdError::LookupFailed {
                        id: id.clone(),
                        reason: format!("the upstream did not answer within {}", humantime::format_duration(timeout)),
                    })
                });
            match &outcome {
                Ok(name) => tracing::debug!(namespace_id = %id, namespace = %name, "namespace id resolved"),
                Err(error) => tracing::info!(namespace_id = %id, %error, "namespace id not resolved"),
            }
            {
                let mut state = in_flight.state.lock().unwrap_or_else(|p| p.into_inner());
                state.in_flight.remove(&id);
                let now = Instant::now();
                match &outcome {
                    Ok(name) => state.names.insert(id, name.clone(), now + NAME_TTL, MAX_NAMES),
                    Err(NamespaceIdError::Unknown(_)) => state.unknown.insert(id, (), now + UNKNOWN_TTL, MAX_UNKNOWN),
                    Err(_) => {}
                }
            }
            in_flight.done = true;
            // Sent after the cache is written: a caller arriving now finds one or the other.
            sender.send_replace(Some(outcome));
        });
    }

    /// The `authorization` header of a lookup started by `session`'s principal (see the module
    /// docs).
    fn authorization(&self, session: &Session, headers: &http::HeaderMap, id: &str) -> Option<http::HeaderValue> {
        match self.credentials {
            // The upstream connection sets the key on every request.
            UpstreamCredentials::None | UpstreamCredentials::ApiKey => None,
            UpstreamCredentials::Forward => headers.get(http::header::AUTHORIZATION).cloned(),
            UpstreamCredentials::Minted => {
                let signer = self.signer.as_ref()?;
                let spec = catalog::lookup(DESCRIBE_NAMESPACE_PATH);
                let mut call = Call::unread(spec);
                call.namespace_id = Some(id.to_owned());
                let credential =
                    signer.upstream_credential(&session.principal.id, &session.upstream_credentials, spec, &call);
                http::HeaderValue::try_from(format!("Bearer {credential}")).ok()
            }
        }
    }
}

/// Removes a lookup from `in_flight` if its task ends without an outcome (a panic), so the id
/// is not stuck behind a lookup that will never answer.
struct InFlight {
    state: Arc<Mutex<State>>,
    id: String,
    done: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).in_flight.remove(&self.id);
        }
    }
}

/// A bounded map whose entries expire.
struct Expiring<V> {
    entries: HashMap<String, (V, Instant)>,
}

impl<V> Default for Expiring<V> {
    fn default() -> Self {
        Expiring { entries: HashMap::new() }
    }
}

impl<V> Expiring<V> {
    fn get(&self, key: &str, now: Instant) -> Option<&V> {
        self.entries.get(key).filter(|(_, expires)| *expires > now).map(|(value, _)| value)
    }

    /// Inserts, making room first: expired entries go, then the one closest to expiry. The scan
    /// only happens when the map is full, that is at most once per lookup.
    fn insert(&mut self, key: String, value: V, expires: Instant, max: usize) {
        if self.entries.len() >= max && !self.entries.contains_key(&key) {
            let now = Instant::now();
            self.entries.retain(|_, (_, expires)| *expires > now);
            if self.entries.len() >= max
                && let Some(soonest) = self.entries.iter().min_by_key(|(_, (_, e))| *e).map(|(k, _)| k.clone())
            {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, (value, expires));
    }
}

/// One `DescribeNamespace{id}` to the upstream, and what its answer means.
async fn lookup(upstream: &Upstream, id: &str, authorization: Option<http::HeaderValue>) -> Outcome {
    let failed = |reason: String| NamespaceIdError::LookupFailed { id: id.to_owned(), reason };
    let mut message = vec![(REQUEST_ID << 3 | 2) as u8];
    push_varint(&mut message, id.len() as u64);
    message.extend_from_slice(id.as_bytes());
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);

    let mut request = http::Request::post(DESCRIBE_NAMESPACE_PATH)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, LOOKUP_USER_AGENT)
        .header("grpc-timeout", format!("{}m", LOOKUP_TIMEOUT.as_millis()));
    if let Some(authorization) = authorization {
        request = request.header(http::header::AUTHORIZATION, authorization);
    }
    let (parts, ()) = request.body(()).expect("static request is valid").into_parts();
    let reply = upstream.unary(parts, Bytes::from(framed), MAX_RESPONSE_BYTES).await.map_err(failed)?;
    let upstream_message = reply.message;
    match reply.status.as_str() {
        "0" => {}
        // NOT_FOUND is Temporal's NamespaceNotFound.
        "5" => return Err(NamespaceIdError::Unknown(id.to_owned())),
        "7" | "16" => {
            return Err(NamespaceIdError::UpstreamRefused { id: id.to_owned(), reason: upstream_message });
        }
        other => return Err(failed(format!("the upstream answered grpc-status {other} `{upstream_message}`"))),
    }
    let body = reply.body;
    let message = match body.get(5..) {
        Some(message)
            if body[0] == 0 && message.len() == u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize =>
        {
            message
        }
        _ => return Err(failed("the upstream's answer is not one uncompressed gRPC message".into())),
    };
    let malformed = |error: wire::WireError| failed(format!("the upstream's answer is malformed: {error}"));
    let name = wire::last_string(message, RESPONSE_NAME).map_err(malformed)?.unwrap_or_default();
    let answered_id = wire::last_string(message, RESPONSE_ID).map_err(malformed)?.unwrap_or_default();
    // The upstream must have answered for this id: a server that ignored `id` would describe
    // some other namespace, and that name must not be authorized in its place.
    if uuid::Uuid::try_parse(answered_id).ok() != uuid::Uuid::try_parse(id).ok() {
        return Err(failed(format!("the upstream answered for namespace id `{answered_id}`")));
    }
    if name.is_empty() {
        return Err(failed("the upstream's answer names no namespace".into()));
    }
    Ok(name.to_owned())
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_drops_expired_entries_then_the_soonest_to_expire() {
        let now = Instant::now();
        let mut table = Expiring::default();
        table.insert("a".into(), 1, now + Duration::from_secs(30), 2);
        table.insert("b".into(), 2, now + Duration::from_secs(10), 2);
        table.insert("c".into(), 3, now + Duration::from_secs(20), 2);
        assert_eq!(table.get("a", now), Some(&1));
        assert_eq!(table.get("b", now), None, "closest to expiry, dropped");
        assert_eq!(table.get("c", now), Some(&3));
        assert_eq!(table.get("a", now + Duration::from_secs(31)), None, "expired");
        // Replacing a key of a full table drops nothing else.
        table.insert("a".into(), 4, now + Duration::from_secs(30), 2);
        assert_eq!((table.get("a", now), table.get("c", now)), (Some(&4), Some(&3)));
    }
}
