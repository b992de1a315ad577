//! The request flow. One call goes through these phases, in this order, in [`Gateway::handle`]:
//!
//! 1. **classify**: the method path names the action (`temporal::catalog`);
//! 2. **authenticate**: the bearer token becomes a principal (`authn`), unless the method is
//!    public (health checks, `GetSystemInfo`);
//! 3. **inspect**: the first request message is read (un-gzipped, size-capped, within the
//!    connection's and the gateway's byte budgets and `limits.first_message_timeout`) and the
//!    resource it touches decoded (`temporal::inspect`). Before a large message is buffered, a
//!    principal that no policy could ever permit the action is refused: reading megabytes only
//!    to deny them would let a caller with no permissions make the gateway hold memory;
//! 4. **authorize**: Cedar decides (`authz`) every question the call raises: the RPC itself,
//!    then each one its request implies (`temporal::implied`: the commands of a workflow task
//!    completion, the terminate of a start with `TERMINATE_EXISTING`, the signal of a
//!    signal-with-start, ...). One refused question refuses the call and is named in the error.
//!    A sticky queue must belong to the caller (`sticky`). A task completion refused for a
//!    command is also failed upstream, so the workflow's history says why;
//! 5. **record**: the decision record is written (`audit`), for allows and denials alike; if it
//!    cannot be written the call is refused;
//! 6. **forward**: an allowed call goes upstream unchanged (`proxy`); a refused one gets a
//!    trailers-only gRPC error (`status`).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::Either;
use http_body_util::BodyExt;

use crate::audit::{
    self, ClientRecord, DecisionLog, DecisionRecord, HttpRecord, OutcomeRecord, PrincipalRecord, PrincipalSnapshot,
    QuestionRecord, ResourceRecord, ShadowRecord, SnapshotPrincipal,
};
use crate::authn::{AuthnError, Principal};
use crate::authz::{self, Decision, PolicyEngine};
use crate::budget::{ByteBudget, Reservation, SMALL_MESSAGE, WaitingCalls};
use crate::config::{Config, LimitsConfig, UpstreamCredentials};
use crate::credential::Signer;
use crate::error::truncated;
use crate::grpc;
use crate::layers::Decided;
use crate::namespace_ids::NamespaceIds;
use crate::proxy::{ClientBody, Ending, ForwardBody, ResponseBody, ResponseWatcher, Upstream};
use crate::ratelimit::{Admission, CallFacts, RateLimits};
use crate::reload::PolicySets;
use crate::session::{Session, Sessions};
use crate::status::{Code, Refusal, trailers_only};
use crate::sticky::{StickyError, StickyQueues};
use crate::telemetry::Metrics;
use crate::temporal::catalog::{self, Access, MethodSpec};
use crate::temporal::implied::{self, Origin, Question, TaskWorkflow};
use crate::temporal::task_token::{self, Binding, SealContext, TaskKind, TaskTokenKeys};
use crate::temporal::{Call, Resource, ResourceKind, inspect, wire};
use crate::traceparent::{TraceId, TraceParent};
use crate::traces::{CallTrace, KeyValue, Phase, Traces};

/// Everything a call needs, shared by all connections. Each field belongs to one phase.
pub struct Gateway {
    /// authenticate: bearer tokens to sessions (verified principals and their caches).
    sessions: Arc<Sessions>,
    /// authorize: the enforced policy set and the shadow set, swapped by reloads.
    policies: Arc<PolicySets>,
    /// record: the last denied calls, for `GET /explain/<decision_id>` on the admin port.
    denials: Arc<RecentDenials>,
    /// record: the decision log.
    log: DecisionLog,
    /// forward: the Temporal frontend.
    upstream: Upstream,
    metrics: Arc<Metrics>,
    /// inspect: message size, time and byte budgets.
    limits: LimitsConfig,
    /// forward: what Temporal gets as `authorization`.
    credentials: UpstreamCredentials,
    /// forward: signs upstream credentials (`upstream.credentials = "minted"`).
    signer: Option<Arc<Signer>>,
    /// Request bytes all connections together may hold during inspection.
    buffered: Arc<ByteBudget>,
    /// inspect: the calls of each principal waiting for their first message.
    waiting: Arc<WaitingCalls>,
    /// Which principal owns each sticky task queue.
    sticky: StickyQueues,
    /// The keys that seal the task tokens handed to workers, and open those they send back.
    task_tokens: Arc<TaskTokenKeys>,
    /// Namespace ids resolved to names, for requests that name a namespace by id.
    namespace_ids: NamespaceIds,
    /// `[[rate_limits]]`: what an allowed call may spend.
    rate_limits: RateLimits,
    /// `[traces]`: the spans of sampled calls.
    traces: Arc<Traces>,
}

/// The connection a call arrived on: who sent it, and the byte budget its calls share.
#[derive(Clone)]
pub struct ClientConn {
    pub addr: SocketAddr,
    pub budget: Arc<ByteBudget>,
}

impl ClientConn {
    /// A connection from `addr` with the per-connection budget of `limits`.
    pub fn new(addr: SocketAddr, limits: &LimitsConfig) -> ClientConn {
        ClientConn { addr, budget: ByteBudget::new(limits.max_connection_buffered_bytes) }
    }
}

/// What the phases before `record` concluded.
struct Outcome {
    session: Option<Arc<Session>>,
    call: Option<Call>,
    /// The decision on the RPC itself.
    decision: Result<Arc<Decision>, Refusal>,
    /// The shadow set's decision, when one is loaded and the enforced set was asked (of every
    /// question: the first it refuses, else the RPC's).
    shadow: Option<Arc<Decision>>,
    /// The questions the request implied beyond the RPC, each with its answer.
    implied: Vec<Asked>,
    /// For a workflow task completion: the task token Temporal issued, to fail the task with
    /// when a command is refused.
    task_token: Option<Bytes>,
    /// What the call's (sealed) task token was handed out for.
    binding: Option<Binding>,
    /// Questions the request implied that were not asked, because the RPC was refused.
    unasked: usize,
}

/// How long a call may take to send the next part of its first message before it counts as
/// waiting for it (`read_first_message`). Short enough that calls opened faster than they time
/// out cannot hold the call slots (holding 100 000 of them for 100 ms takes a million new streams
/// a second, far past the connection and stream caps); long enough that a busy gateway or a
/// client that writes its headers and its message apart is not taken for a slow one, which
/// would refuse a call of a principal without permission before its message names a resource.
const WAITING_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// What phase 6 needs of an admitted call: all that the call holds while it is upstream.
struct Forward {
    parts: http::request::Parts,
    body: ForwardBody,
    method: &'static str,
    /// Whom the task tokens of the response are sealed for, if it hands any out.
    seal: Option<SealContext>,
    /// Writes the call's outcome record when its response ends.
    outcome: Box<OutcomeWatcher>,
}

/// Writes a forwarded call's outcome record (`kind` `outcome`) when its response ends: the
/// status Temporal returned, how long the call took, and the run a start made. Dropped before
/// that (the client went away, or the call's deadline passed, while it waited for the upstream's
/// answer), it records the call as `CANCELLED`: every forwarded call has an outcome.
struct OutcomeWatcher {
    log: DecisionLog,
    metrics: Arc<Metrics>,
    decision_id: String,
    trace_id: Option<TraceId>,
    method: &'static str,
    started: Instant,
    written: bool,
    /// The rate-limit slots the call holds until it ends.
    _admission: Option<Admission>,
    /// The call's spans: the `forward` span and the root end with the response.
    trace: CallTrace,
}

/// One line per call on the `flowgate::access` log target, at debug level (off unless
/// `FLOWGATE_LOG` turns it on, e.g. `info,flowgate::access=debug`): the decision id and trace
/// id that join a log line to its decision record and its trace, the method, the gRPC status
/// the client got, and how long the call took. Whom and why are in the decision record.
fn access_log(decision_id: &str, trace_id: Option<TraceId>, method: &str, status: u16, started: Instant) {
    tracing::debug!(
        target: "flowgate::access",
        decision_id,
        trace_id = %trace_id.map(|t| t.to_string()).unwrap_or_default(),
        method,
        grpc_status = status,
        duration_us = started.elapsed().as_micros() as u64,
        "call ended"
    );
}

impl OutcomeWatcher {
    fn write(&mut self, ending: Ending<'_>) {
        self.written = true;
        let (run_id, started) = match ending.body {
            Some(body) => inspect::started_run(self.method, body),
            None => (None, None),
        };
        let message = ending
            .message
            .filter(|_| ending.status != 0)
            .map(|message| truncated(&message, audit::MAX_OUTCOME_MESSAGE).to_owned());
        let record = OutcomeRecord {
            ts: audit::timestamp(SystemTime::now()),
            kind: "outcome",
            decision_id: &self.decision_id,
            method: self.method,
            status: ending.status,
            message,
            duration_us: self.started.elapsed().as_micros() as u64,
            run_id,
            started,
        };
        access_log(&self.decision_id, self.trace_id, self.method, ending.status, self.started);
        self.trace.end(ending.status, record.message.as_deref());
        // The call has happened: nothing waits on this record, and a failure to write it is
        // counted and logged, not turned into an error the client would misread.
        if let Err(error) = self.log.write_detached(&record) {
            self.metrics.decision_log_failed();
            tracing::error!(%error, decision_id = %self.decision_id, "cannot write an outcome record");
        }
    }
}

impl ResponseWatcher for OutcomeWatcher {
    fn wants_body(&self) -> bool {
        inspect::makes_runs(self.method)
    }

    fn ended(mut self: Box<Self>, ending: Ending<'_>) {
        self.write(ending);
    }
}

impl Drop for OutcomeWatcher {
    fn drop(&mut self) {
        if !self.written {
            let message = "the call ended before Temporal answered (the client went away, or its deadline passed)";
            self.write(Ending { status: Code::Cancelled as u16, message: Some(message.into()), body: None });
        }
    }
}

impl Outcome {
    fn refused(session: Option<Arc<Session>>, call: Option<Call>, refusal: Refusal) -> Outcome {
        Outcome {
            session,
            call,
            decision: Err(refusal),
            shadow: None,
            implied: Vec::new(),
            task_token: None,
            binding: None,
            unasked: 0,
        }
    }

    /// The first implied question that was refused.
    fn refused_question(&self) -> Option<&Asked> {
        self.implied.iter().find(|asked| !asked.allowed())
    }
}

/// One implied question and its answer.
pub struct Asked {
    pub question: Question,
    pub answer: Answer,
}

/// How an implied question was answered.
pub enum Answer {
    Decided(Arc<Decision>),
    /// Outside the grant of the flowgate credential that asked; no policy was asked.
    OutsideGrant(String),
}

impl Asked {
    fn allowed(&self) -> bool {
        matches!(&self.answer, Answer::Decided(decision) if decision.allowed)
    }

    /// The refusal of the call `spec` for this question.
    fn refusal(&self, spec: &MethodSpec) -> Refusal {
        let question = &self.question;
        let why = format!("{} of `{}`", question.origin, spec.name);
        match &self.answer {
            Answer::Decided(decision) => {
                Refusal::Denied(format!("{why}: {}", denial_message(question.spec, Some(&question.call), decision)))
            }
            Answer::OutsideGrant(outside) => Refusal::OutsideGrant(format!("{why}: {outside}")),
        }
    }
}

/// How many denied calls `GET /explain/<decision_id>` can explain.
pub const RECENT_DENIALS: usize = 1024;

/// A denied call, kept so an operator can ask why.
pub struct RecentDenial {
    pub decision_id: String,
    pub ts: String,
    pub policy_version: String,
    pub session: Arc<Session>,
    pub spec: &'static MethodSpec,
    pub path: String,
    pub call: Call,
    pub reasons: Vec<String>,
}

/// The last [`RECENT_DENIALS`] denied calls. The gateway writes them; the admin endpoint
/// explains them (it owns `explain`, which sits above the gateway).
#[derive(Default)]
pub struct RecentDenials {
    denials: Mutex<VecDeque<Arc<RecentDenial>>>,
}

impl RecentDenials {
    fn remember(&self, denial: RecentDenial) {
        let mut denials = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        if denials.len() == RECENT_DENIALS {
            denials.pop_front();
        }
        denials.push_back(Arc::new(denial));
    }

    /// The denial of `decision_id`, if it is one of the last [`RECENT_DENIALS`].
    pub fn find(&self, decision_id: &str) -> Option<Arc<RecentDenial>> {
        let denials = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        denials.iter().find(|d| d.decision_id == decision_id).cloned()
    }
}

/// What the gateway is made of; `server::prepare` builds it from the config.
pub struct Parts {
    pub sessions: Arc<Sessions>,
    pub policies: Arc<PolicySets>,
    pub denials: Arc<RecentDenials>,
    pub log: DecisionLog,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub signer: Option<Arc<Signer>>,
    pub task_tokens: Arc<TaskTokenKeys>,
    pub traces: Arc<Traces>,
}

impl Gateway {
    pub fn new(config: &Config, parts: Parts) -> Gateway {
        let Parts { sessions, policies, denials, log, upstream, metrics, signer, task_tokens, traces } = parts;
        Gateway {
            sessions,
            policies,
            denials,
            log,
            namespace_ids: NamespaceIds::new(upstream.clone(), config.upstream.credentials(), signer.clone()),
            upstream,
            metrics,
            limits: config.limits.clone(),
            credentials: config.upstream.credentials(),
            signer,
            buffered: ByteBudget::new(config.limits.max_buffered_bytes),
            waiting: WaitingCalls::new(config.limits.max_waiting_calls_per_principal),
            sticky: StickyQueues::new(),
            task_tokens,
            rate_limits: RateLimits::new(&config.rate_limits),
            traces,
        }
    }

    /// Handles one gRPC call from `conn`.
    ///
    /// In two futures: phases 1-5 boxed, over before the call goes upstream, and the wait for
    /// the upstream's answer. The second lives as long as the call (70 s for each of a worker's
    /// long polls), so it holds only what the wait needs: not the request, nor the largest
    /// state of the phases before (the record, the decision, the parsed call), as one future
    /// for the whole call did.
    pub fn handle(
        self: &Arc<Self>,
        request: http::Request<ClientBody>,
        conn: ClientConn,
    ) -> impl Future<Output = http::Response<ResponseBody>> + Send + use<> {
        let gateway = self.clone();
        let admitted = Box::pin(async move { gateway.admit(request, &conn).await.map(|call| gateway.forward(call)) });
        // Combinators, where an async block would keep a slot for each future it awaits beside
        // the one it moved it from.
        admitted.then(|admitted| match admitted {
            Ok(forwarded) => Either::Left(forwarded),
            Err(refused) => Either::Right(std::future::ready(refused)),
        })
    }

    /// Whether a request that is not gRPC yet (an HTTP API request) is worth reading and
    /// transcoding into its message: its method is public, or its caller authenticates with one
    /// `authorization` and some policy could permit them the action. When it is not, the HTTP
    /// door sends the call on with an empty message, for the phases to refuse and record it,
    /// and a caller with no permission cannot make flowgate read and parse megabytes of JSON,
    /// as `read_first_message` does not read a large gRPC message for them.
    pub async fn worth_reading(&self, headers: &http::HeaderMap, spec: &'static MethodSpec) -> bool {
        if spec.access == Access::Public {
            return true;
        }
        let mut authorizations = headers.get_all(http::header::AUTHORIZATION).iter();
        let (Some(authorization), None) = (authorizations.next(), authorizations.next()) else {
            return false;
        };
        match self.sessions.authenticate(Some(authorization)).await {
            Ok(session) => self.policies.enforced().may_permit(&session.principal, spec),
            Err(_) => false,
        }
    }

    /// Phases 1-5: the call that may go upstream, or the answer to one that may not.
    async fn admit(
        &self,
        request: http::Request<ClientBody>,
        conn: &ClientConn,
    ) -> Result<Forward, http::Response<ResponseBody>> {
        let client = conn.addr;
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        let uri = parts.uri.clone();
        let path = uri.path();

        // Phase 1: classify.
        let spec = catalog::lookup(path);

        if let Err(refusal) = check_grpc(&parts) {
            return Err(trailers_only(refusal.code(), &refusal.to_string()));
        }

        // Policies in force for this whole call, even if a reload lands meanwhile.
        let policies = self.policies.enforced();
        let shadow = self.policies.shadow();

        // The decision's id is known before it is made: an allowed start or signal carries it
        // to Temporal in its initiator header.
        let decision_id = audit::decision_id();
        // Empty unless tracing is on and this call is sampled.
        let mut trace = self.traces.call(&parts.headers, spec.service, spec.name, started);

        // Phases 2-4: authenticate, inspect, authorize.
        let reservation = Reservation::new(conn.budget.clone(), self.buffered.clone());
        let (outcome, forward_body) = self
            .decide(spec, &parts, body, reservation, path, (&policies, shadow.as_deref()), &decision_id, &mut trace)
            .await;
        self.metrics.authorized_in(started.elapsed());
        if let (Some(decided), Some(namespace)) =
            (parts.extensions.get::<Decided>(), outcome.call.as_ref().and_then(|c| c.resource.namespace.as_deref()))
        {
            decided.set_namespace(self.metrics.namespace_label(namespace));
        }

        // Phase 5: record, before anything goes upstream.
        let mut refusal = match &outcome.decision {
            Ok(decision) if decision.allowed => outcome.refused_question().map(|asked| asked.refusal(spec)),
            Ok(decision) => Some(Refusal::Denied(denial_message(spec, outcome.call.as_ref(), decision))),
            Err(refusal) => Some(refusal.clone()),
        };
        // An allowed call spends from the rate limits that pick it; over one, it is refused.
        let mut admission = None;
        if refusal.is_none()
            && !self.rate_limits.is_empty()
            && let (Ok(decision), Some(session)) = (&outcome.decision, &outcome.session)
        {
            let facts = CallFacts {
                action: spec.name,
                long_poll: spec.long_poll,
                namespace: outcome.call.as_ref().and_then(|c| c.resource.namespace.as_deref()),
                principal_id: &session.principal.id,
                principal_type: session.principal.kind.entity_type(),
                reasons: &decision.reasons,
            };
            match self.rate_limits.admit(&facts) {
                Ok(admitted) => admission = Some(admitted),
                Err(limited) => {
                    self.metrics.rate_limited(limited.limit());
                    refusal = Some(Refusal::RateLimited(limited));
                }
            }
        }
        trace.enter(Phase::Record);
        let mut record = self.record(
            &parts,
            client,
            spec,
            path,
            &outcome,
            refusal.as_ref(),
            (&policies, shadow.as_deref()),
            decision_id,
            started,
        );
        // A trace flowgate began (the client sent none) is the one the record points to.
        record.trace_id = trace.trace_id().or(record.trace_id);
        trace.annotate(|| {
            let mut attributes = vec![
                KeyValue::new("flowgate.decision_id", record.decision_id.clone()),
                KeyValue::new("flowgate.decision", record.decision),
            ];
            if let Some(principal) = &record.principal {
                attributes.push(KeyValue::new("enduser.id", principal.id.to_owned()));
            }
            if let Some(namespace) = record.resource.as_ref().and_then(|r| r.namespace) {
                attributes.push(KeyValue::new("temporal.namespace", namespace.to_owned()));
            }
            attributes
        });
        // The principal's snapshot goes first, once per token and log file: what it takes to
        // decide this call again offline (`flowgate audit replay`).
        let generation = self.log.generation();
        let snapshot = outcome
            .session
            .as_ref()
            .filter(|session| session.snapshot_written.swap(generation, Ordering::AcqRel) != generation)
            .map(|session| PrincipalSnapshot {
                ts: record.ts.clone(),
                kind: "principal",
                reference: &session.snapshot_ref,
                principal: SnapshotPrincipal {
                    kind: session.principal.kind.entity_type(),
                    id: &session.principal.id,
                    issuer: &session.principal.issuer,
                    sub: &session.principal.sub,
                    groups: &session.principal.groups,
                    tags: &session.principal.tags,
                },
            });
        if let Err(error) = self.log.write_after(snapshot.as_ref(), &record).await {
            if let (Some(_), Some(session)) = (&snapshot, &outcome.session) {
                session.snapshot_written.store(0, Ordering::Release);
            }
            self.metrics.decision_log_failed();
            let refusal = Refusal::Audit(error);
            let message = refusal.to_string();
            access_log(&record.decision_id, record.trace_id, spec.name, refusal.code() as u16, started);
            trace.end(refusal.code() as u16, Some(&message));
            return Err(trailers_only(refusal.code(), &message));
        }
        if let Some(refusal) = refusal {
            let mut message = refusal.to_string();
            // Every PERMISSION_DENIED names its decision, and an operator can ask why.
            if let (Code::PermissionDenied, Some(session)) = (refusal.code(), &outcome.session) {
                message.push_str(&explain_pointer(&record.decision_id));
                // The explanation is of the question that was refused. Refused before its
                // message was read (no policy could permit the action): it asks about the action
                // on an unnamed resource, which no policy permits either.
                let (denied_spec, call) = match outcome.refused_question() {
                    Some(asked) => (asked.question.spec, asked.question.call.clone()),
                    None => (spec, outcome.call.clone().unwrap_or_else(|| Call::unread(spec))),
                };
                self.denials.remember(RecentDenial {
                    decision_id: record.decision_id.clone(),
                    ts: record.ts.clone(),
                    policy_version: policies.version().to_owned(),
                    session: session.clone(),
                    spec: denied_spec,
                    path: path.to_owned(),
                    call,
                    reasons: record.reasons.to_vec(),
                });
                // A workflow task refused for one of its commands: fail it upstream too, so the
                // workflow's history names the command and the decision, rather than the task
                // timing out unexplained and being retried for ever.
                if let (Ok(rpc), Some(asked), Some(token), Some(call)) =
                    (&outcome.decision, outcome.refused_question(), &outcome.task_token, &outcome.call)
                    && rpc.allowed
                    && let Origin::Command { .. } = asked.question.origin
                {
                    let failure =
                        format!("flowgate refused {} (decision `{}`)", refusal_text(&refusal), record.decision_id);
                    Box::pin(self.fail_workflow_task(&parts, session, call, token, asked, &failure)).await;
                }
            }
            access_log(&record.decision_id, record.trace_id, spec.name, refusal.code() as u16, started);
            trace.end(refusal.code() as u16, Some(&message));
            let mut response = trailers_only(refusal.code(), &message);
            if let Refusal::RateLimited(limited) = &refusal {
                // gRPC's retry hint (the retry design's server pushback), in milliseconds.
                let pushback = limited.retry_after().as_millis().max(1).to_string();
                response.headers_mut().insert(
                    "grpc-retry-pushback-ms",
                    http::HeaderValue::from_str(&pushback).expect("digits are a valid header value"),
                );
            }
            return Err(response);
        }

        // The record is written: it is not held while the call is upstream.
        let trace_id = record.trace_id;
        let decision_id = record.decision_id;
        if let (Some(session), Some(call)) = (&outcome.session, &outcome.call) {
            self.set_upstream_credentials(&mut parts.headers, session, spec, call);
            set_namespace_header(&mut parts.headers, call);
        } else if self.credentials != UpstreamCredentials::Forward {
            // Public methods: Temporal lets them through without a token.
            remove_client_credentials(&mut parts.headers);
        }
        if let Some(decided) = parts.extensions.get::<Decided>() {
            decided.allow();
        }
        // Every task token handed out is sealed first, bound to the caller and to the queue the
        // task came from.
        let seal = match (&outcome.session, &outcome.call) {
            (Some(session), Some(call)) if task_token::seals_response(spec.name) => Some(SealContext {
                principal: session.principal.id.clone(),
                namespace: call.resource.namespace.clone().unwrap_or_default(),
                task_queue: match &outcome.binding {
                    Some(binding) => Some(binding.task_queue.clone()),
                    None => call.resource.task_queue.clone(),
                },
            }),
            _ => None,
        };
        let body = forward_body.expect("allowed calls keep their body");
        // The message may have been rewritten (stamped, its task token unsealed): its length is
        // the body's, not what the client announced.
        parts.headers.remove(http::header::CONTENT_LENGTH);
        trace.forward(&mut parts.headers, self.upstream.address());
        let outcome = Box::new(OutcomeWatcher {
            log: self.log.clone(),
            metrics: self.metrics.clone(),
            decision_id,
            trace_id,
            method: spec.name,
            started,
            written: false,
            _admission: admission,
            trace,
        });
        Ok(Forward { parts, body, method: spec.name, seal, outcome })
    }

    /// Phase 6: forward. The call is handed to the upstream connection now; the future waits
    /// for the answer. The call's `grpc-timeout` is enforced around the whole call
    /// (`layers::Deadline`).
    fn forward(
        &self,
        Forward { parts, body, method, seal, outcome }: Forward,
    ) -> impl Future<Output = http::Response<ResponseBody>> + Send + use<> {
        let keys = seal.is_some().then(|| self.task_tokens.clone());
        self.upstream.send(parts, body).map(move |response| match response {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                let body = match (seal, keys) {
                    (Some(ctx), Some(keys)) => {
                        parts.headers.remove(http::header::CONTENT_LENGTH);
                        ResponseBody::rewritten(body, method, &parts.headers, move |message| {
                            keys.seal_response(method, message, &ctx).map_err(|e| e.to_string())
                        })
                    }
                    _ => ResponseBody::forwarded(body),
                };
                let body = body.watched(&parts.headers, outcome);
                http::Response::from_parts(parts, body)
            }
            Err(error) => {
                let refusal = Refusal::from(error);
                tracing::warn!(error = %refusal, method, "forwarding failed");
                let message = refusal.to_string();
                outcome.ended(Ending { status: refusal.code() as u16, message: Some(message.clone()), body: None });
                trailers_only(refusal.code(), &message)
            }
        })
    }

    /// The `authorization` Temporal gets for `principal`'s call, per `upstream.credentials`.
    fn set_upstream_credentials(
        &self,
        headers: &mut http::HeaderMap,
        session: &Session,
        spec: &'static MethodSpec,
        call: &Call,
    ) {
        match self.credentials {
            UpstreamCredentials::Forward => {}
            // With an API key the upstream connection sets `authorization` on every request.
            UpstreamCredentials::None | UpstreamCredentials::ApiKey => remove_client_credentials(headers),
            UpstreamCredentials::Minted => {
                remove_client_credentials(headers);
                let signer = self.signer.as_ref().expect("config requires [mint] for minted credentials");
                let credential =
                    signer.upstream_credential(&session.principal.id, &session.upstream_credentials, spec, call);
                match http::HeaderValue::try_from(format!("Bearer {credential}")) {
                    Ok(value) => headers.insert(http::header::AUTHORIZATION, value),
                    Err(_) => headers.remove(http::header::AUTHORIZATION),
                };
            }
        }
    }

    /// Fails the workflow task of `token` upstream with `failure` as its cause's message, as
    /// the worker whose completion was refused (its credentials, its namespace). Best effort,
    /// within [`FAIL_TASK_TIMEOUT`]: the worker is refused either way, and a task that cannot
    /// be failed times out and is retried by Temporal.
    async fn fail_workflow_task(
        &self,
        parts: &http::request::Parts,
        session: &Session,
        call: &Call,
        token: &[u8],
        asked: &Asked,
        failure: &str,
    ) {
        let spec = catalog::rpc("RespondWorkflowTaskFailed");
        let namespace = call.resource.namespace.as_deref().unwrap_or_default();
        let message =
            workflow_task_failed(token, failed_cause(asked.question.spec.name), failure, &session.principal, namespace);
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() =
            http::Uri::from_static("/temporal.api.workflowservice.v1.WorkflowService/RespondWorkflowTaskFailed");
        let headers = request.headers_mut();
        for name in [http::header::AUTHORIZATION, http::header::USER_AGENT] {
            if let Some(value) = parts.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
        for name in ["client-name", "client-version"] {
            if let Some(value) = parts.headers.get(name) {
                headers.insert(name, value.clone());
            }
        }
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        self.set_upstream_credentials(headers, session, spec, call);
        set_namespace_header(headers, call);
        let (request_parts, ()) = request.into_parts();
        let sent = self.upstream.unary(request_parts, grpc::frame(&message), 64 * 1024);
        match tokio::time::timeout(FAIL_TASK_TIMEOUT, sent).await {
            Ok(Ok(reply)) if reply.status == "0" => {
                self.metrics.workflow_task_failed("ok");
                tracing::info!(namespace, "failed the refused workflow task upstream");
            }
            Ok(Ok(reply)) => {
                self.metrics.workflow_task_failed("error");
                tracing::warn!(
                    namespace,
                    grpc_status = reply.status,
                    message = reply.message,
                    "could not fail the refused workflow task upstream"
                );
            }
            Ok(Err(error)) => {
                self.metrics.workflow_task_failed("error");
                tracing::warn!(namespace, %error, "could not fail the refused workflow task upstream");
            }
            Err(_) => {
                self.metrics.workflow_task_failed("timeout");
                tracing::warn!(namespace, "failing the refused workflow task upstream timed out");
            }
        }
    }

    /// Authenticate, inspect, authorize. Returns the outcome and, for allowed calls, the body
    /// to forward.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        spec: &'static MethodSpec,
        parts: &http::request::Parts,
        body: ClientBody,
        mut reservation: Reservation,
        path: &str,
        (policies, shadow): (&PolicyEngine, Option<&PolicyEngine>),
        decision_id: &str,
        trace: &mut CallTrace,
    ) -> (Outcome, Option<ForwardBody>) {
        let refused = |session, call, refusal| (Outcome::refused(session, call, refusal), None);

        if spec.access == Access::Public {
            let decision = Ok(Decision::public());
            return (
                Outcome {
                    session: None,
                    call: None,
                    decision,
                    shadow: None,
                    implied: Vec::new(),
                    task_token: None,
                    binding: None,
                    unasked: 0,
                },
                Some(ForwardBody::new(Bytes::new(), Some(body), None)),
            );
        }

        // Phase 2: authenticate.
        trace.enter(Phase::Authenticate);
        // One `authorization` or none: with two, which one a reader takes is its choice (the Web
        // UI's server sends a browser's `Grpc-Metadata-Authorization` beside its own), and the
        // record could name another principal than the one Temporal sees.
        let mut authorizations = parts.headers.get_all(http::header::AUTHORIZATION).iter();
        let authorization = authorizations.next();
        if authorizations.next().is_some() {
            return refused(None, None, Refusal::Unauthenticated(AuthnError::SeveralAuthorizations));
        }
        let session = match self.sessions.authenticate(authorization).await {
            Ok(session) => session,
            Err(error) => return refused(None, None, Refusal::Unauthenticated(error)),
        };
        trace.enter(Phase::Inspect);
        // An HTTP API call whose body the door did not read (no policy could permit the caller
        // then) is refused so, even if a reload since would permit it: its message is empty,
        // not the one the client sent.
        if parts.extensions.get::<ViaHttp>().is_some_and(|via| !via.read) {
            return refused(Some(session.clone()), None, Refusal::NeverPermitted { action: spec.name });
        }

        // Phase 3: inspect. A large message is only read, and a slow one only waited for, for a
        // principal that some policy could permit the action (see `read_first_message`).
        let may_permit = || {
            if policies.may_permit(&session.principal, spec) {
                Ok(())
            } else {
                Err(Refusal::NeverPermitted { action: spec.name })
            }
        };
        let principal = session.principal.id.as_str();
        let (buffered, rest) = match self.read_first_message(body, &mut reservation, principal, may_permit).await {
            Ok(read) => read,
            Err(refusal) => return refused(Some(session.clone()), None, refusal),
        };
        let encoding = parts.headers.get("grpc-encoding").and_then(|v| v.to_str().ok());
        let (mut call, message) = match self.inspect(spec, &buffered, encoding) {
            Ok(inspected) => inspected,
            Err(refusal) => return refused(Some(session.clone()), None, refusal),
        };
        // A namespace named by id is authorized as the name the upstream says it has.
        if let Err(error) = self.namespace_ids.resolve(spec, &mut call, &session, policies, &parts.headers).await {
            return refused(Some(session.clone()), Some(call), error.into());
        }
        if call.resource.kind != ResourceKind::Cluster && call.resource.namespace.is_none() {
            let detail = if call.has_task_token { " (a task token does not name one)" } else { "" };
            return refused(Some(session.clone()), Some(call), Refusal::NoNamespace { action: spec.name, detail });
        }
        // A task token is taken only as flowgate sealed it, for a queue the caller may still
        // poll (asked below); Temporal gets the token it issued.
        let mut opened: Option<(Vec<u8>, Binding)> = None;
        if let Some(path) = spec.task_token
            && call.has_task_token
        {
            let namespace = call.resource.namespace.clone().unwrap_or_default();
            match self.task_tokens.unseal_request(path[0], &message) {
                Err(error) => return refused(Some(session.clone()), Some(call), Refusal::TaskToken(error)),
                Ok((_, binding))
                    if binding.namespace != namespace || TaskKind::of_method(spec.name) != Some(binding.kind) =>
                {
                    let issued = format!(
                        "`{}` of task queue `{}` in namespace `{}`",
                        binding.kind.poll_action(),
                        binding.task_queue,
                        binding.namespace
                    );
                    let refusal = Refusal::TaskTokenMisused { issued, method: spec.name, namespace };
                    return refused(Some(session.clone()), Some(call), refusal);
                }
                Ok(unsealed) => opened = Some(unsealed),
            }
        }
        // What the request makes Temporal do beyond the RPC: each is asked too.
        let task = match &opened {
            Some((_, binding)) => TaskWorkflow {
                workflow_id: binding.workflow_id.as_deref(),
                workflow_type: binding.workflow_type.as_deref(),
                task_queue: Some(&binding.task_queue),
            },
            None => TaskWorkflow::default(),
        };
        let mut questions = match implied::questions(spec, &message, &call, &task) {
            Ok(questions) => questions,
            Err(error) => return refused(Some(session.clone()), Some(call), Refusal::Inspect(error)),
        };
        if let Some((_, binding)) = &opened {
            let queue = Resource {
                namespace: Some(binding.namespace.clone()),
                task_queue: Some(binding.task_queue.clone()),
                ..Resource::new(ResourceKind::TaskQueue)
            };
            let call = Call { implied_by: Some(spec.name), ..Call::new(queue) };
            questions.insert(
                0,
                Question { spec: catalog::rpc(binding.kind.poll_action()), call, origin: Origin::TaskToken },
            );
        }
        let task_token = match &opened {
            Some((unsealed, _)) if spec.name == "RespondWorkflowTaskCompleted" => {
                wire::last_bytes(unsealed, &[1]).ok().flatten().map(Bytes::copy_from_slice)
            }
            _ => None,
        };

        // A flowgate credential carries its own limits, checked before any policy.
        let principal = &session.principal;
        if let Some(minted) = &principal.minted
            && let Err(outside) = authz::grant::check(&minted.grant, spec, &call)
        {
            return refused(Some(session.clone()), Some(call), Refusal::OutsideGrant(outside));
        }

        // Phase 4: authorize: the RPC, then every question it implies.
        trace.enter(Phase::Authorize);
        let decision = policies.authorize_in(&session.decisions, principal, spec, path, &call);
        // A refused RPC asks nothing more: what it would imply cannot happen, and a caller no
        // policy permits must not make the gateway evaluate (and record) a thousand questions
        // per call, nor fail someone's workflow task upstream for a command it was never
        // allowed to send.
        let unasked = if decision.allowed { 0 } else { questions.len() };
        let questions = if decision.allowed { questions } else { Vec::new() };
        let implied: Vec<Asked> = questions
            .into_iter()
            .map(|question| {
                let outside = principal
                    .minted
                    .as_ref()
                    .and_then(|m| authz::grant::check(&m.grant, question.spec, &question.call).err());
                let answer = match outside {
                    Some(outside) => Answer::OutsideGrant(outside),
                    None => Answer::Decided(policies.authorize_in(
                        &session.decisions,
                        principal,
                        question.spec,
                        path,
                        &question.call,
                    )),
                };
                Asked { question, answer }
            })
            .collect();
        let allowed = decision.allowed && implied.iter().all(Asked::allowed);
        let shadow = shadow.map(|shadow| {
            let ask = |spec, call| shadow.authorize_in(&session.shadow_decisions, principal, spec, path, call);
            let primary = ask(spec, &call);
            let first_refused = || implied.iter().map(|a| ask(a.question.spec, &a.question.call)).find(|d| !d.allowed);
            let shadow_decision = if primary.allowed { first_refused().unwrap_or(primary) } else { primary };
            self.metrics.shadow_compared(spec.name, allowed, shadow_decision.allowed);
            shadow_decision
        });
        let (forwarded, binding) = match opened {
            Some((unsealed, binding)) => (Some(unsealed), Some(binding)),
            None => (None, None),
        };
        let mut outcome = Outcome {
            session: Some(session),
            call: Some(call),
            decision: Ok(decision),
            shadow,
            implied,
            task_token,
            binding,
            unasked,
        };
        if !allowed {
            return (outcome, None);
        }

        // A sticky queue is its worker's own.
        if let (Some(session), Some(call)) = (&outcome.session, &outcome.call)
            && let (Some(queue), Some(namespace)) = (&call.sticky_queue, &call.resource.namespace)
        {
            let owned = match spec.name {
                "ShutdownWorker" => self.sticky.release(namespace, queue, &session.principal.id),
                _ => self.sticky.claim(namespace, queue, &session.principal.id),
            };
            match owned {
                // A full table must not stop workers completing tasks: the queue stays unclaimed
                // (nobody else can claim it either), and its tasks fall back to the normal queue.
                Err(StickyError::Full) if spec.name == "RespondWorkflowTaskCompleted" => {}
                Err(error) => {
                    outcome.decision = Err(Refusal::Sticky(error));
                    return (outcome, None);
                }
                Ok(()) => {}
            }
        }

        // Stamped with the verified principal (`identity`): what Temporal records of who acted.
        let session = outcome.session.as_ref().expect("an allowed call has a session");
        let stamped = match session.stamp.apply(spec, forwarded.as_deref().unwrap_or(&message), decision_id) {
            Ok(stamped) => stamped,
            Err(error) => {
                outcome.decision = Err(Refusal::Inspect(error.into()));
                return (outcome, None);
            }
        };
        drop(message);

        // The message's bytes stay counted against the budgets until they have gone upstream.
        // Rewritten (its task token unsealed, or stamped) it goes as a new, uncompressed message
        // (a per-message flag of 0 is valid under any `grpc-encoding`), held in the budgets too.
        // Whatever the client sent after its first message follows it as it came: the server
        // sees the same stream, with only the first message rewritten.
        let body = match stamped.or(forwarded) {
            Some(rewritten) => {
                let first = buffered.get(1..5).map_or(buffered.len(), |prefix| {
                    5 + u32::from_be_bytes(prefix.try_into().expect("four bytes")) as usize
                });
                let after = buffered.get(first..).unwrap_or_default();
                let framed_len = 5 + rewritten.len() + after.len();
                if let Err(refusal) = self.hold(&mut reservation, framed_len) {
                    outcome.decision = Err(refusal);
                    return (outcome, None);
                }
                let mut framed = Vec::with_capacity(framed_len);
                framed.push(0);
                framed.extend_from_slice(&(rewritten.len() as u32).to_be_bytes());
                framed.extend_from_slice(&rewritten);
                framed.extend_from_slice(after);
                Bytes::from(framed)
            }
            None => buffered,
        };
        (outcome, Some(ForwardBody::new(body, rest, Some(reservation))))
    }

    /// Reads the body until the first gRPC message is complete (or the stream ends). Returns the
    /// bytes read and the rest of the stream, if it has not ended. Every byte is held in
    /// `reservation` first (the announced length as soon as the prefix has arrived, since that is
    /// what the buffer is sized to), and the whole read has `limits.first_message_timeout`.
    ///
    /// A message larger than [`SMALL_MESSAGE`] is buffered, and a call waits for the rest of its
    /// message, only if `may_permit()` finds a policy that could permit the principal the action:
    /// otherwise a caller with no permission could make the gateway hold megabytes, or call
    /// slots, only to deny them. A small message that is all there within [`WAITING_AFTER`] is read
    /// either way, so that a denial's record still names the resource it was for. A call whose message is late holds one of its principal's `limits.max_waiting_calls_per_principal`
    /// slots while it waits.
    async fn read_first_message(
        &self,
        mut body: ClientBody,
        reservation: &mut Reservation,
        principal: &str,
        may_permit: impl Fn() -> Result<(), Refusal>,
    ) -> Result<(Bytes, Option<ClientBody>), Refusal> {
        let max = self.limits.max_message_bytes;
        let read = async {
            let mut buffer = BytesMut::new();
            let mut checked = false;
            let mut waiting = None;
            let late_after = tokio::time::Instant::now() + WAITING_AFTER;
            loop {
                if buffer.len() >= 5 {
                    let framed = 5 + inspect::announced_length(&buffer, max)?;
                    if buffer.len() >= framed {
                        // A body already ended is not kept: forwarded without one, the call
                        // is sent whole at once, and hyper spawns no task to stream the rest.
                        let rest = (!hyper::body::Body::is_end_stream(&body)).then_some(body);
                        return Ok((buffer.freeze(), rest));
                    }
                    if framed > SMALL_MESSAGE && !std::mem::replace(&mut checked, true) {
                        may_permit()?;
                    }
                    self.hold(reservation, framed)?;
                    buffer.reserve(framed - buffer.len());
                }
                // Nearly always the next frame is here already, or within microseconds.
                let mut frame = body.frame().now_or_never();
                if frame.is_none() && waiting.is_none() {
                    // The grace counts from the start of the read, not per frame: a byte every
                    // 99 ms is a slow message too.
                    frame = tokio::time::timeout_at(late_after, body.frame()).await.ok();
                }
                let frame = match frame {
                    Some(frame) => frame,
                    None => {
                        // The message is late: the call is about to wait for it, and holds its
                        // slot of `limits.max_concurrent_calls` meanwhile. Only for a principal
                        // some policy could permit, and a few calls of each at once: otherwise
                        // slow calls opened faster than they time out hold every slot.
                        if waiting.is_none() {
                            if !std::mem::replace(&mut checked, true) {
                                may_permit()?;
                            }
                            waiting = Some(self.waiting.enter(principal).map_err(Refusal::TooManyWaiting)?);
                        }
                        body.frame().await
                    }
                };
                match frame {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.hold(reservation, buffer.len() + data.len())?;
                            buffer.extend_from_slice(&data);
                        }
                    }
                    Some(Err(error)) => return Err(Refusal::Body(error.to_string())),
                    None => return Ok((buffer.freeze(), None)),
                }
            }
        };
        let timeout = self.limits.first_message_timeout;
        tokio::time::timeout(timeout, read).await.unwrap_or(Err(Refusal::SlowRequest(timeout)))
    }

    /// Grows `reservation` to `bytes`, or refuses the call over budget.
    fn hold(&self, reservation: &mut Reservation, bytes: usize) -> Result<(), Refusal> {
        if let Some(more) = bytes.checked_sub(reservation.held()).filter(|more| *more > 0) {
            let grown = reservation.grow(more);
            self.metrics.buffered_request_bytes(self.buffered.used());
            if let Err(over) = grown {
                self.metrics.request_budget_refused(over.scope());
                return Err(Refusal::OverBudget(over));
            }
        }
        Ok(())
    }

    /// The call `buffered` makes, and its (inflated) message.
    fn inspect<'b>(
        &self,
        spec: &'static MethodSpec,
        buffered: &'b [u8],
        encoding: Option<&str>,
    ) -> Result<(Call, Cow<'b, [u8]>), Refusal> {
        let framed = match inspect::first_message(buffered, self.limits.max_message_bytes)? {
            Some(framed) => framed,
            None if buffered.is_empty() => return Err(Refusal::EmptyRequest),
            None => {
                return Err(Refusal::Inspect(if buffered.len() < 5 {
                    inspect::InspectError::TruncatedPrefix
                } else {
                    let expected = u32::from_be_bytes([buffered[1], buffered[2], buffered[3], buffered[4]]) as usize;
                    inspect::InspectError::TruncatedMessage { got: buffered.len() - 5, expected }
                }));
            }
        };
        let message = inspect::decompress(&framed, encoding, self.limits.max_inflated_bytes)?;
        let call = inspect::inspect(spec, &message)?;
        Ok((call, message))
    }

    #[allow(clippy::too_many_arguments)]
    fn record<'a>(
        &self,
        parts: &'a http::request::Parts,
        client: SocketAddr,
        spec: &'static MethodSpec,
        path: &'a str,
        outcome: &'a Outcome,
        refusal: Option<&Refusal>,
        (policies, shadow): (&'a PolicyEngine, Option<&'a PolicyEngine>),
        decision_id: String,
        started: Instant,
    ) -> DecisionRecord<'a> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        // The decision that decided the call: the RPC's, or the first refused question's.
        let decided = match (&outcome.decision, outcome.refused_question()) {
            (Ok(rpc), _) if !rpc.allowed => Ok(&**rpc),
            (Ok(_), Some(Asked { answer: Answer::Decided(decision), .. })) => Ok(&**decision),
            (Ok(_), Some(Asked { answer: Answer::OutsideGrant(_), .. })) => Err(refusal.map(|r| r.to_string())),
            (Ok(rpc), None) => Ok(&**rpc),
            (Err(refusal), _) => Err(Some(refusal.to_string())),
        };
        let (mut reasons, errors) = match &decided {
            Ok(decision) => (Cow::Borrowed(&decision.reasons[..]), Cow::Borrowed(&decision.errors[..])),
            Err(refusal) => (Cow::Owned(refusal.iter().cloned().collect()), Cow::Borrowed(&[][..])),
        };
        // An allowed call was allowed by every policy that allowed one of its questions.
        if refusal.is_none() && !outcome.implied.is_empty() {
            let mut all: Vec<String> = reasons.to_vec();
            for asked in &outcome.implied {
                if let Answer::Decided(decision) = &asked.answer {
                    all.extend(decision.reasons.iter().cloned());
                }
            }
            all.sort();
            all.dedup();
            reasons = Cow::Owned(all);
        }
        let questions = match (&outcome.decision, &outcome.call) {
            (Ok(rpc), Some(call)) if !outcome.implied.is_empty() => {
                let verdict = |allowed| if allowed { "allow" } else { "deny" };
                let rpc = QuestionRecord {
                    action: spec.name,
                    origin: "the call".to_owned(),
                    resource: ResourceRecord::of(call),
                    decision: verdict(rpc.allowed),
                    reasons: &rpc.reasons,
                    errors: &rpc.errors,
                    refused: None,
                };
                let implied = outcome.implied.iter().map(|asked| {
                    let (reasons, errors, refused) = match &asked.answer {
                        Answer::Decided(d) => (&d.reasons[..], &d.errors[..], None),
                        Answer::OutsideGrant(outside) => (&[][..], &[][..], Some(outside.as_str())),
                    };
                    QuestionRecord {
                        action: asked.question.spec.name,
                        origin: asked.question.origin.to_string(),
                        resource: ResourceRecord::of(&asked.question.call),
                        decision: verdict(asked.allowed()),
                        reasons,
                        errors,
                        refused,
                    }
                });
                std::iter::once(rpc).chain(implied).collect()
            }
            _ => Vec::new(),
        };
        DecisionRecord {
            ts: audit::timestamp(SystemTime::now()),
            decision_id,
            kind: "grpc",
            decision: if refusal.is_none() { "allow" } else { "deny" },
            reasons,
            errors,
            principal: outcome.session.as_ref().map(|s| PrincipalRecord {
                kind: s.principal.kind.entity_type(),
                id: &s.principal.id,
                issuer: &s.principal.issuer,
                identity: s.stamp.fixed_identity(),
                snapshot: Some(&s.snapshot_ref),
            }),
            action: spec.name,
            method: path,
            resource: outcome.call.as_ref().map(|call| {
                let mut resource = ResourceRecord::of(call);
                // A task-token call names only its namespace; its token says which task it is.
                if let Some(binding) = &outcome.binding {
                    resource.workflow_id = resource.workflow_id.or(binding.workflow_id.as_deref());
                    resource.workflow_type = resource.workflow_type.or(binding.workflow_type.as_deref());
                    resource.task_queue = resource.task_queue.or(Some(binding.task_queue.as_str()));
                    resource.activity_type = resource.activity_type.or(binding.activity_type.as_deref());
                }
                resource
            }),
            client: ClientRecord {
                addr: client.to_string(),
                name: header("client-name"),
                version: header("client-version"),
            },
            policy_version: policies.version(),
            latency_us: started.elapsed().as_micros() as u64,
            status: refusal.map(|r| r.code() as u16),
            refused_by: refusal.map(|r| if r.by_policy() { "policy" } else { "flowgate" }),
            unasked_questions: outcome.unasked,
            scope: None,
            shadow: match (decided, &outcome.shadow, shadow) {
                (Ok(enforced), Some(decision), Some(engine)) => ShadowRecord::of(enforced, decision, engine),
                _ => None,
            },
            questions,
            rate_limit: match refusal {
                Some(Refusal::RateLimited(limited)) => Some(limited.limit().to_owned()),
                _ => None,
            },
            trace_id: parts
                .headers
                .get("traceparent")
                .and_then(|v| TraceParent::parse(v.as_bytes()))
                .map(|t| t.trace_id),
            http: parts
                .extensions
                .get::<ViaHttp>()
                .map(|via| HttpRecord { method: via.method.as_str(), route: &via.route }),
        }
    }
}

/// A call that came through the HTTP API (a request extension the HTTP door sets): recorded
/// with the call.
#[derive(Debug, Clone)]
pub struct ViaHttp {
    pub method: http::Method,
    /// The route's template.
    pub route: String,
    /// Whether the door read the request into the message ([`Gateway::worth_reading`]); a
    /// call it did not is refused.
    pub read: bool,
}

/// The gateway as a tower `Service` for the calls of one connection: what `server` stacks the
/// cross-cutting layers (`layers`) on.
#[derive(Clone)]
pub struct GatewayService {
    gateway: Arc<Gateway>,
    conn: ClientConn,
}

impl GatewayService {
    pub fn new(gateway: Arc<Gateway>, conn: ClientConn) -> GatewayService {
        GatewayService { gateway, conn }
    }
}

impl tower::Service<http::Request<ClientBody>> for GatewayService {
    type Response = http::Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<ClientBody>) -> Self::Future {
        Box::pin(self.gateway.handle(request, self.conn.clone()).map(Ok))
    }
}

/// How long failing a refused workflow task upstream may take.
pub const FAIL_TASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a client sends that carries its credentials, by the names Temporal and the proxies in
/// front of it use: `authorization`; `authorization-extras`, which Temporal hands to its claim
/// mapper beside the token (the Web UI puts the person's ID token there); and the metadata
/// grpc-gateway makes of an HTTP request's headers (the Web UI's server forwards the browser's
/// `Authorization` and cookies as `grpcgateway-authorization` and `grpcgateway-cookie`, the
/// session's refresh token among them). Unless flowgate forwards the client's credentials
/// (`credentials = "forward"`), none of them goes upstream: Temporal sees flowgate's
/// credentials or none, and no token of a person lands in its logs.
const CLIENT_CREDENTIALS: [http::HeaderName; 5] = [
    http::header::AUTHORIZATION,
    http::HeaderName::from_static("authorization-extras"),
    http::HeaderName::from_static("grpcgateway-authorization"),
    http::HeaderName::from_static("grpcgateway-cookie"),
    http::header::COOKIE,
];

fn remove_client_credentials(headers: &mut http::HeaderMap) {
    for name in CLIENT_CREDENTIALS {
        headers.remove(name);
    }
}

/// `temporal-namespace` names the namespace the call was authorized in. Temporal Cloud routes
/// by this header (the SDKs set it from the request), so a client's own value, which flowgate
/// does not authorize, never goes upstream beside a namespace it does; a call without a
/// namespace keeps what the client sent.
fn set_namespace_header(headers: &mut http::HeaderMap, call: &Call) {
    const TEMPORAL_NAMESPACE: http::HeaderName = http::HeaderName::from_static("temporal-namespace");
    if let Some(namespace) = &call.resource.namespace {
        match http::HeaderValue::from_str(namespace) {
            Ok(value) => headers.insert(TEMPORAL_NAMESPACE, value),
            Err(_) => headers.remove(TEMPORAL_NAMESPACE),
        };
    }
}

/// A refusal's message without its `permission denied: ` prefix.
fn refusal_text(refusal: &Refusal) -> String {
    let text = refusal.to_string();
    text.strip_prefix("permission denied: ").map(str::to_owned).unwrap_or(text)
}

/// The `WorkflowTaskFailedCause` Temporal itself gives a task whose command of this kind it
/// rejects (`BAD_*_ATTRIBUTES`), so the history reads as it would for any refused command.
fn failed_cause(command: &str) -> u64 {
    match command {
        "ScheduleActivityTask" => 2,
        "RequestCancelExternalWorkflowExecution" => 10,
        "ContinueAsNewWorkflowExecution" => 11,
        "SignalExternalWorkflowExecution" => 15,
        "StartChildWorkflowExecution" => 16,
        "ScheduleNexusOperation" => 32,
        _ => 1, // UNHANDLED_COMMAND
    }
}

/// A `RespondWorkflowTaskFailedRequest`: `task_token = 1`, `cause = 2`, `failure = 3`
/// (`Failure.message = 1`, `source = 2`), `identity = 4`, `namespace = 6`.
fn workflow_task_failed(token: &[u8], cause: u64, message: &str, principal: &Principal, namespace: &str) -> Vec<u8> {
    let mut failure = Vec::with_capacity(message.len() + 16);
    wire::put_bytes_field(&mut failure, 1, message.as_bytes());
    wire::put_bytes_field(&mut failure, 2, b"flowgate");
    let identity = format!("flowgate for {}", principal.id);
    let mut out = Vec::with_capacity(token.len() + failure.len() + identity.len() + namespace.len() + 16);
    wire::put_bytes_field(&mut out, 1, token);
    wire::put_varint_field(&mut out, 2, cause);
    wire::put_bytes_field(&mut out, 3, &failure);
    wire::put_bytes_field(&mut out, 4, identity.as_bytes());
    wire::put_bytes_field(&mut out, 6, namespace.as_bytes());
    out
}

/// What a denial says about where to find out more.
fn explain_pointer(decision_id: &str) -> String {
    format!(" (decision `{decision_id}`: `flowgate explain --admin <admin address> --decision {decision_id}`)")
}

/// Only gRPC over HTTP/2 POST is proxied.
fn check_grpc(parts: &http::request::Parts) -> Result<(), Refusal> {
    let content_type = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if parts.method != http::Method::POST || !content_type.starts_with("application/grpc") {
        return Err(Refusal::NotGrpc(content_type.to_owned()));
    }
    Ok(())
}

/// "`StartWorkflowExecution` on Workflow `wf-1` (type `Deploy`) in namespace `payments`".
fn denial_message(spec: &MethodSpec, call: Option<&Call>, decision: &Decision) -> String {
    let mut message = format!("`{}`", spec.name);
    if let Some(call) = call {
        let r = &call.resource;
        message.push_str(&format!(" on {}", r.kind.entity_type()));
        let name = r.workflow_id.as_deref().or(r.schedule_id.as_deref()).or(if r.kind == ResourceKind::TaskQueue {
            r.task_queue.as_deref()
        } else {
            None
        });
        if let Some(name) = name {
            message.push_str(&format!(" `{name}`"));
        }
        if let Some(workflow_type) = &r.workflow_type {
            message.push_str(&format!(" (workflow type `{workflow_type}`)"));
        }
        // A caller naming the namespace by id is told about the id: the name is the upstream's.
        if let Some(id) = &call.namespace_id {
            message.push_str(&format!(" in namespace id `{id}`"));
        } else if let Some(namespace) = &r.namespace {
            message.push_str(&format!(" in namespace `{namespace}`"));
        }
    }
    if decision.reasons.is_empty() {
        message.push_str(" is not permitted by any policy");
    } else {
        message.push_str(&format!(
            " is forbidden by policy {}",
            decision.reasons.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    message
}
