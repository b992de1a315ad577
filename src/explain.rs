//! Explaining decisions: what flowgate sees and what the policies made of it.
//!
//! A policy author thinks "a GitHub Actions job of acme/payments, environment production,
//! starts a DeployWorkflow in payments". This module turns that description into exactly the
//! request the gateway would put to Cedar and reports every part of it:
//!
//! * the **principal**, built from an issuer name and claims by the same [`ClaimMapping`] the
//!   gateway uses for verified tokens (entity type, id, attributes, tags, groups, and for
//!   flowgate's own credentials the grant they carry);
//! * the **call**, checked against the method catalog: a described field the method's requests
//!   never carry (a workflow type on a signal, say) is an error, because a test that supplies it
//!   would pass while real calls are decided without it;
//! * the **resource** entity and the **context**, as sent to Cedar;
//! * the **decision** of the enforced set and, when one is loaded, of the shadow set: the
//!   determining policies, the policies that were considered (those whose action scope
//!   matches) and evaluation errors.
//!
//! `flowgate explain`, `flowgate policy test` and the admin endpoint `POST /explain` all go
//! through [`explain`], so what they report is what the gateway would decide.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::authn::principal::ClaimMapping;
use crate::authn::{AuthnError, Principal, presets};
use crate::authz::{self, Decision, ISSUE_CREDENTIAL, PolicyEngine};
use crate::config::{Config, ConfigError, PrincipalKind};
use crate::credential::{Grant, TOKEN_ENDPOINT};
use crate::temporal::catalog::{self, Access, MethodSpec, ResourceSpec};
use crate::temporal::implied::{self, Question, StartOptions};
use crate::temporal::{Call, Resource, ResourceKind};

/// The issuer name of flowgate's own credentials when no config says otherwise (`mint.name`).
pub const DEFAULT_MINT_NAME: &str = "flowgate";

/// Why a described principal or call cannot be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("unknown method `{0}` (give an action name such as `StartWorkflowExecution`, or a gRPC method path)")]
    UnknownMethod(String),
    #[error("`{method}` requests carry no `{field}`: real calls are decided without it")]
    FieldNotCarried { method: &'static str, field: &'static str },
    #[error("`{0}` needs a `namespace`")]
    NoNamespace(&'static str),
    #[error("`IssueCredential` needs a `scope` (e.g. `namespace:payments role:worker task_queue:deploys`)")]
    NoScope,
    #[error("invalid scope `{scope}`: {reason}")]
    Scope { scope: String, reason: String },
    #[error("`scope` applies to `IssueCredential` only, not to `{0}`")]
    ScopeOnCall(&'static str),
    #[error("`commands` are carried by `RespondWorkflowTaskCompleted` only, not by `{0}`")]
    CommandsOnCall(&'static str),
    #[error("command {index}: `{method}` is not a command (one of: {known})")]
    NotACommand { index: usize, method: String, known: String },
    #[error("unknown {field} `{value}` (one of: {known})")]
    UnknownPolicy { field: &'static str, value: String, known: &'static str },
    #[error("no issuer named `{name}` (known: {known})")]
    UnknownIssuer { name: String, known: String },
    #[error("no issuer with `iss` = `{0}`")]
    UnknownIssuerUrl(String),
    #[error("issuer `{issuer}`: {source}")]
    Claims { issuer: String, source: AuthnError },
    #[error("token is not a JWT: {0}")]
    Token(String),
    #[error("issuer `{name}`: {message}")]
    Mapping { name: String, message: String },
}

/// A call described the way a person thinks of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    /// An action name (`StartWorkflowExecution`, `IssueCredential`) or a gRPC method path.
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_name: Option<String>,
    /// For `IssueCredential`: the requested scope, as in a token exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// For the `ScheduleActivityTask` command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_type: Option<String>,
    /// For the `ScheduleNexusOperation` command: the endpoint, service and operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nexus_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nexus_operation: Option<String>,
    /// For `RespondWorkflowTaskCompleted`: the workflow's commands, each described as a call of
    /// its command action (`StartChildWorkflowExecution`, `ScheduleActivityTask`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<CallSpec>,
    /// For starts (and child starts): `TERMINATE_IF_RUNNING`, ... as in Temporal's enums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id_reuse_policy: Option<String>,
    /// For starts: `USE_EXISTING`, `TERMINATE_EXISTING`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id_conflict_policy: Option<String>,
    /// For `StartWorkflowExecution`: an eager start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request_eager_execution: bool,
    /// For starts: `on_conflict_options` or `completion_callbacks` are set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attaches: bool,
}

/// Temporal's `WorkflowIdReusePolicy` names (without their prefix), by value.
const REUSE_POLICIES: &[(&str, u64)] = &[
    ("UNSPECIFIED", 0),
    ("ALLOW_DUPLICATE", 1),
    ("ALLOW_DUPLICATE_FAILED_ONLY", 2),
    ("REJECT_DUPLICATE", 3),
    ("TERMINATE_IF_RUNNING", 4),
];
/// Temporal's `WorkflowIdConflictPolicy` names.
const CONFLICT_POLICIES: &[(&str, u64)] =
    &[("UNSPECIFIED", 0), ("FAIL", 1), ("USE_EXISTING", 2), ("TERMINATE_EXISTING", 3)];

fn policy_value(
    field: &'static str,
    value: &Option<String>,
    names: &[(&str, u64)],
    known: &'static str,
) -> Result<u64, ExplainError> {
    let Some(value) = value else { return Ok(0) };
    let bare = value.trim_start_matches("WORKFLOW_ID_REUSE_POLICY_").trim_start_matches("WORKFLOW_ID_CONFLICT_POLICY_");
    names.iter().find(|(name, _)| *name == bare).map(|(_, v)| *v).ok_or_else(|| ExplainError::UnknownPolicy {
        field,
        value: value.clone(),
        known,
    })
}

/// A described call, checked against the catalog: what would be asked of the policies (the
/// RPC, and the questions it implies, derived as the gateway derives them from a request).
// Built once per explanation, never on the request path: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Ask {
    Call { spec: &'static MethodSpec, path: String, call: Call, implied: Vec<Question> },
    Credential { grant: Grant },
}

impl CallSpec {
    /// Checks the description against the method catalog.
    pub fn resolve(&self) -> Result<Ask, ExplainError> {
        if self.method == ISSUE_CREDENTIAL {
            return self.resolve_credential();
        }
        let spec = find_method(&self.method)?;
        let path =
            if self.method.starts_with('/') { self.method.clone() } else { format!("/{}/{}", spec.service, spec.name) };
        let call = self.resolve_call(spec)?;
        let mut implied = Vec::new();
        if spec.name != "RespondWorkflowTaskCompleted" && !self.commands.is_empty() {
            return Err(ExplainError::CommandsOnCall(spec.name));
        }
        for (index, command) in self.commands.iter().enumerate() {
            let command_spec = catalog::command_action(&command.method).ok_or_else(|| ExplainError::NotACommand {
                index,
                method: command.method.clone(),
                known: catalog::COMMANDS.iter().map(|c| c.name).collect::<Vec<_>>().join(", "),
            })?;
            let mut command_call = command.resolve_call(command_spec)?;
            if command_call.resource.namespace.is_none() {
                command_call.resource.namespace = call.resource.namespace.clone();
            }
            command_call.implied_by = Some(spec.name);
            let start = command.start_options()?;
            let command = implied::Command { spec: command_spec, call: command_call, start };
            implied::command_question(index, command, &mut implied);
        }
        if matches!(spec.name, "StartWorkflowExecution" | "SignalWithStartWorkflowExecution" | "ExecuteMultiOperation")
        {
            implied::start_questions(spec, &call, &self.start_options()?, &mut implied);
        }
        Ok(Ask::Call { spec, path, call, implied })
    }

    fn start_options(&self) -> Result<StartOptions, ExplainError> {
        const REUSE: &str = "ALLOW_DUPLICATE, ALLOW_DUPLICATE_FAILED_ONLY, REJECT_DUPLICATE, TERMINATE_IF_RUNNING";
        const CONFLICT: &str = "FAIL, USE_EXISTING, TERMINATE_EXISTING";
        Ok(StartOptions {
            reuse_policy: policy_value(
                "workflow_id_reuse_policy",
                &self.workflow_id_reuse_policy,
                REUSE_POLICIES,
                REUSE,
            )?,
            conflict_policy: policy_value(
                "workflow_id_conflict_policy",
                &self.workflow_id_conflict_policy,
                CONFLICT_POLICIES,
                CONFLICT,
            )?,
            eager: self.request_eager_execution,
            attaches: self.attaches,
        })
    }

    /// The resource and context of a call of `spec`, refusing fields its requests never carry.
    fn resolve_call(&self, spec: &'static MethodSpec) -> Result<Call, ExplainError> {
        if self.scope.is_some() {
            return Err(ExplainError::ScopeOnCall(spec.name));
        }
        let carried = Carried::of(spec);
        let field = |value: &Option<String>, carried: bool, field: &'static str| match (value, carried) {
            (Some(_), false) => Err(ExplainError::FieldNotCarried { method: spec.name, field }),
            _ => Ok(value.clone()),
        };
        let command = spec.access == Access::Command;
        let namespace = field(&self.namespace, carried.namespace, "namespace")?;
        // A command without a namespace acts in the workflow's own.
        if carried.namespace && namespace.is_none() && !command {
            return Err(ExplainError::NoNamespace(spec.name));
        }
        let is = |name: &str| spec.name == name;
        let start_like = matches!(
            spec.name,
            "StartWorkflowExecution"
                | "SignalWithStartWorkflowExecution"
                | "ExecuteMultiOperation"
                | "StartChildWorkflowExecution"
        );
        if !start_like {
            for (value, name) in [
                (&self.workflow_id_reuse_policy, "workflow_id_reuse_policy"),
                (&self.workflow_id_conflict_policy, "workflow_id_conflict_policy"),
            ] {
                field(value, false, name)?;
            }
        }
        if (self.request_eager_execution || self.attaches)
            && !is("StartWorkflowExecution")
            && !is("ExecuteMultiOperation")
        {
            let name = if self.attaches { "attaches" } else { "request_eager_execution" };
            return Err(ExplainError::FieldNotCarried { method: spec.name, field: name });
        }
        let signal = spec.signal_name.is_some() || is("SignalExternalWorkflowExecution");
        Ok(Call {
            resource: Resource {
                kind: spec.resource.kind(),
                namespace,
                workflow_id: field(&self.workflow_id, carried.workflow_id, "workflow_id")?,
                workflow_type: field(&self.workflow_type, carried.workflow_type, "workflow_type")?,
                task_queue: field(&self.task_queue, carried.task_queue, "task_queue")?,
                schedule_id: field(&self.schedule_id, carried.schedule_id, "schedule_id")?,
                endpoint: field(&self.endpoint, carried.endpoint, "endpoint")?,
            },
            signal_name: field(&self.signal_name, signal, "signal_name")?,
            query_type: field(&self.query_type, spec.query_type.is_some(), "query_type")?,
            update_name: field(&self.update_name, spec.update_name.is_some(), "update_name")?,
            activity_type: field(&self.activity_type, is("ScheduleActivityTask"), "activity_type")?,
            nexus_service: field(&self.nexus_service, carried.endpoint, "nexus_service")?,
            nexus_operation: field(&self.nexus_operation, carried.endpoint, "nexus_operation")?,
            ..Call::new(Resource::new(spec.resource.kind()))
        })
    }

    fn resolve_credential(&self) -> Result<Ask, ExplainError> {
        let scope = self.scope.as_deref().ok_or(ExplainError::NoScope)?;
        let grant = Grant::parse_scope(scope)
            .map_err(|e| ExplainError::Scope { scope: scope.to_owned(), reason: e.to_string() })?;
        let fields = [
            (&self.workflow_id, "workflow_id"),
            (&self.workflow_type, "workflow_type"),
            (&self.task_queue, "task_queue"),
            (&self.schedule_id, "schedule_id"),
            (&self.signal_name, "signal_name"),
            (&self.query_type, "query_type"),
            (&self.update_name, "update_name"),
        ];
        if let Some((_, field)) = fields.iter().find(|(value, _)| value.is_some()) {
            return Err(ExplainError::FieldNotCarried { method: ISSUE_CREDENTIAL, field });
        }
        if let Some(namespace) = &self.namespace
            && *namespace != grant.namespace
        {
            return Err(ExplainError::Scope {
                scope: scope.to_owned(),
                reason: format!("it names namespace `{}`, the call `{namespace}`", grant.namespace),
            });
        }
        Ok(Ask::Credential { grant })
    }
}

/// Which resource fields a method's requests carry.
struct Carried {
    namespace: bool,
    workflow_id: bool,
    workflow_type: bool,
    task_queue: bool,
    schedule_id: bool,
    endpoint: bool,
}

impl Carried {
    fn of(spec: &MethodSpec) -> Carried {
        let none = Carried {
            namespace: false,
            workflow_id: false,
            workflow_type: false,
            task_queue: false,
            schedule_id: false,
            endpoint: false,
        };
        // Commands and other implied questions name what their request says: every field of
        // their resource.
        if spec.service.is_empty() && spec.resource.kind() == ResourceKind::Workflow {
            let carried = match spec.name {
                "SignalExternalWorkflowExecution" | "RequestCancelExternalWorkflowExecution" => (true, false),
                _ => (true, true),
            };
            return Carried {
                namespace: true,
                workflow_id: carried.0,
                workflow_type: carried.1,
                task_queue: carried.1,
                ..none
            };
        }
        match spec.resource {
            ResourceSpec::Cluster => none,
            ResourceSpec::NexusEndpoint => Carried { namespace: true, endpoint: true, ..none },
            ResourceSpec::Namespace { .. } => Carried { namespace: true, ..none },
            ResourceSpec::Workflow { workflow_id, workflow_type, task_queue, .. } => Carried {
                namespace: true,
                workflow_id: workflow_id.is_some(),
                workflow_type: workflow_type.is_some(),
                task_queue: task_queue.is_some(),
                ..none
            },
            ResourceSpec::TaskQueue { .. } => Carried { namespace: true, task_queue: true, ..none },
            ResourceSpec::Schedule { workflow_type, task_queue, .. } => Carried {
                namespace: true,
                schedule_id: true,
                workflow_type: workflow_type.is_some(),
                task_queue: task_queue.is_some(),
                ..none
            },
        }
    }
}

/// The catalog entry of an action name or a method path.
pub fn find_method(method: &str) -> Result<&'static MethodSpec, ExplainError> {
    if method.starts_with('/') {
        return Ok(catalog::lookup(method));
    }
    catalog::all_actions()
        .find(|spec| spec.name == method)
        .ok_or_else(|| ExplainError::UnknownMethod(method.to_owned()))
}

/// How issuer names (and URLs, for tokens) turn claims into principals.
#[derive(Debug, Clone, Default)]
pub struct Issuers {
    by_name: BTreeMap<String, ClaimMapping>,
    names_by_url: HashMap<String, String>,
    /// flowgate's own credentials: (issuer name, issuer URL).
    minted: Option<(String, String)>,
}

/// An issuer described in a test file: a preset, and the same overrides as `[[issuers]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerProfile {
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub principal: Option<PrincipalKind>,
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// flowgate's own credentials (`Temporal::Worker` with the grant in their claims).
    #[serde(default)]
    pub minted: bool,
}

impl Issuers {
    /// The issuers of a gateway config, and its own credentials when it mints them.
    pub fn from_config(config: &Config) -> Result<Issuers, ConfigError> {
        let mut issuers = Issuers::default();
        for resolved in crate::authn::resolve_issuers(&config.issuers)? {
            issuers.names_by_url.insert(resolved.issuer.clone(), resolved.name.clone());
            issuers.by_name.insert(resolved.name.clone(), resolved.mapping);
        }
        if let Some(mint) = &config.mint {
            issuers.minted = Some((mint.name.clone(), mint.issuer.clone()));
        }
        Ok(issuers)
    }

    /// Issuers described by name (a policy test file's `issuers:`).
    pub fn from_profiles(profiles: &BTreeMap<String, IssuerProfile>) -> Result<Issuers, ExplainError> {
        let mut issuers = Issuers::default();
        for (name, profile) in profiles {
            if profile.minted {
                issuers.minted = Some((name.clone(), String::new()));
                continue;
            }
            let mapping =
                presets::mapping_for(name, profile.preset.as_deref(), profile.principal, profile.groups_claim.clone())
                    .map_err(|message| ExplainError::Mapping { name: name.clone(), message })?;
            issuers.by_name.insert(name.clone(), mapping);
        }
        Ok(issuers)
    }

    /// `other`'s issuers added to these (theirs win on a name both have).
    pub fn merge(mut self, other: Issuers) -> Issuers {
        self.by_name.extend(other.by_name);
        self.names_by_url.extend(other.names_by_url);
        if other.minted.is_some() {
            self.minted = other.minted;
        }
        self
    }

    fn minted_name(&self) -> &str {
        self.minted.as_ref().map_or(DEFAULT_MINT_NAME, |(name, _)| name.as_str())
    }

    /// The principal a token of issuer `name` with these claims would be.
    pub fn principal(&self, name: &str, claims: &Map<String, Value>) -> Result<Principal, ExplainError> {
        let claims_error = |source| ExplainError::Claims { issuer: name.to_owned(), source };
        // Explanations do not expire: a test case's claims need no `exp`.
        let expires_at = SystemTime::now() + Duration::from_secs(3600);
        if let Some(mapping) = self.by_name.get(name) {
            return mapping.principal(claims, expires_at).map_err(claims_error);
        }
        if name == self.minted_name() {
            let url = self.minted.as_ref().map(|(_, url)| url.as_str()).unwrap_or_default();
            return crate::authn::own::worker_principal(name, url, claims, expires_at).map_err(claims_error);
        }
        let mut known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        known.push(self.minted_name());
        Err(ExplainError::UnknownIssuer { name: name.to_owned(), known: known.join(", ") })
    }

    /// The principal of a token's claims, read without checking its signature (the issuer is
    /// found by `iss`).
    pub fn principal_of_unverified_token(&self, token: &str) -> Result<Principal, ExplainError> {
        let claims = unverified_claims(token)?;
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or_default();
        let name = match (self.names_by_url.get(iss), &self.minted) {
            (Some(name), _) => name.clone(),
            (None, Some((name, url))) if url == iss => name.clone(),
            _ => return Err(ExplainError::UnknownIssuerUrl(iss.to_owned())),
        };
        self.principal(&name, &claims)
    }
}

/// A JWT's payload, not verified.
pub fn unverified_claims(token: &str) -> Result<Map<String, Value>, ExplainError> {
    use base64::Engine as _;
    let payload =
        token.trim().split('.').nth(1).ok_or_else(|| ExplainError::Token("expected `.`-separated parts".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| ExplainError::Token(format!("payload is not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| ExplainError::Token(format!("payload is not a JSON object: {e}")))
}

/// The principal as flowgate sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PrincipalView {
    /// `Temporal::CiJob::"github:repo:acme/payments:environment:production"`.
    pub entity: String,
    pub issuer: String,
    pub sub: String,
    pub tags: BTreeMap<String, String>,
    pub groups: Vec<String>,
    /// For flowgate's credentials: the scope they grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

impl PrincipalView {
    pub fn of(principal: &Principal) -> PrincipalView {
        PrincipalView {
            entity: principal.uid.to_string(),
            issuer: principal.issuer.clone(),
            sub: principal.sub.clone(),
            tags: principal.tags.clone(),
            groups: principal.groups.iter().map(|g| authn_group_uid(&principal.issuer, g)).collect(),
            grant: principal.minted.as_ref().map(|m| m.grant.scope()),
        }
    }
}

fn authn_group_uid(issuer: &str, group: &str) -> String {
    crate::authn::principal::entity_uid("Group", &format!("{issuer}:{group}")).to_string()
}

/// What one policy set decided.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The policies that determined it (a `deny` with none: no policy permits the call).
    pub policies: Vec<String>,
    pub errors: Vec<String>,
    /// Refused before any policy was asked (a flowgate credential used outside its grant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The policies whose action scope matches: the only ones that could decide.
    pub considered: Vec<String>,
    pub policy_version: String,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.decision == "allow"
    }
}

/// Everything about one decision.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub principal: PrincipalView,
    /// `Temporal::Action::"StartWorkflowExecution"`.
    pub action: String,
    /// The access group the action is in (`read`, `write`, `worker`, `admin`, `cluster-admin`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_group: Option<&'static str>,
    /// The resource entity (Cedar's JSON entity format: uid, attrs, parents).
    pub resource: Value,
    pub context: Value,
    pub decision: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Verdict>,
    /// The questions the call implies beyond its RPC (a task completion's commands, the
    /// terminate of a start with `TERMINATE_EXISTING`, ...), each decided on its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub questions: Vec<QuestionExplanation>,
}

/// One question beyond the RPC, explained.
#[derive(Debug, Clone, Serialize)]
pub struct QuestionExplanation {
    /// Why it is asked: `command 2`, `workflow_id_conflict_policy TERMINATE_EXISTING, ...`.
    pub origin: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_group: Option<&'static str>,
    pub resource: Value,
    pub context: Value,
    pub decision: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Verdict>,
}

/// Decides `ask` for `principal` under `enforced` (and `shadow`), without caches, and reports it.
/// A call that implies further questions is allowed only if every one is: `decision` is then
/// the first refused question's verdict (or the RPC's), and `questions` has each one.
pub fn explain(
    enforced: &PolicyEngine,
    shadow: Option<&PolicyEngine>,
    principal: &Principal,
    ask: &Ask,
) -> Explanation {
    let (action, action_group, resource, context) = match ask {
        Ask::Call { spec, path, call, .. } => {
            let (resource, context) = resource_and_context(path, call);
            (spec.name, spec.access.group(), resource, context)
        }
        Ask::Credential { grant } => {
            let resource = json!({
                "uid": { "type": "Temporal::Namespace", "id": grant.namespace },
                "attrs": { "name": grant.namespace },
                "parents": [{ "type": "Temporal::Cluster", "id": "cluster" }],
            });
            let context = json!({
                "method": TOKEN_ENDPOINT,
                "role": grant.role.as_str(),
                "task_queues": grant.task_queues,
                "workflow_types": grant.workflow_types,
            });
            (ISSUE_CREDENTIAL, None, resource, context)
        }
    };
    let questions: Vec<QuestionExplanation> = match ask {
        Ask::Call { path, implied, .. } => implied
            .iter()
            .map(|question| {
                let (resource, context) = resource_and_context(path, &question.call);
                let one = |engine| call_verdict(engine, principal, question.spec, path, &question.call);
                QuestionExplanation {
                    origin: question.origin.to_string(),
                    action: crate::authn::principal::entity_uid("Action", question.spec.name).to_string(),
                    action_group: question.spec.access.group(),
                    resource,
                    context,
                    decision: one(enforced),
                    shadow: shadow.map(one),
                }
            })
            .collect(),
        Ask::Credential { .. } => Vec::new(),
    };
    // Refused: by the first refused question. Allowed: by every policy that allowed a question.
    let combined = |mut rpc: Verdict, pick: &dyn Fn(&QuestionExplanation) -> Option<&Verdict>| {
        if !rpc.allowed() {
            return rpc;
        }
        if let Some(refused) = questions.iter().filter_map(pick).find(|v| !v.allowed()) {
            return refused.clone();
        }
        for verdict in questions.iter().filter_map(pick) {
            rpc.policies.extend(verdict.policies.iter().cloned());
            rpc.considered.extend(verdict.considered.iter().cloned());
        }
        for list in [&mut rpc.policies, &mut rpc.considered] {
            list.sort();
            list.dedup();
        }
        rpc
    };
    let decision = combined(verdict(enforced, principal, ask), &|q| Some(&q.decision));
    let shadow = shadow.map(|shadow| combined(verdict(shadow, principal, ask), &|q| q.shadow.as_ref()));
    Explanation {
        principal: PrincipalView::of(principal),
        action: crate::authn::principal::entity_uid("Action", action).to_string(),
        action_group,
        resource,
        context,
        decision,
        shadow,
        questions,
    }
}

fn resource_and_context(path: &str, call: &Call) -> (Value, Value) {
    let (uid, entities) = authz::resource_entities(call);
    let resource = entities
        .iter()
        .find(|e| e.uid() == uid)
        .and_then(|e| e.to_json_value().ok())
        .unwrap_or_else(|| json!({ "uid": uid.to_string() }));
    let context: Map<String, Value> =
        authz::call_context(path, call).map(|(k, v)| (k.to_owned(), Value::String(v.to_owned()))).collect();
    (resource, Value::Object(context))
}

fn verdict(engine: &PolicyEngine, principal: &Principal, ask: &Ask) -> Verdict {
    match ask {
        Ask::Call { spec, path, call, .. } => call_verdict(engine, principal, spec, path, call),
        Ask::Credential { grant } => {
            let refused = principal.minted.as_ref().filter(|minted| !grant.within(&minted.grant)).map(|minted| {
                format!("scope `{}` is not within the credential's `{}`", grant.scope(), minted.grant.scope())
            });
            let decision = || {
                engine.authorize_credential(
                    principal,
                    &grant.namespace,
                    grant.role.as_str(),
                    &grant.task_queues,
                    &grant.workflow_types,
                )
            };
            finish(engine, ISSUE_CREDENTIAL, refused, decision)
        }
    }
}

fn call_verdict(engine: &PolicyEngine, principal: &Principal, spec: &MethodSpec, path: &str, call: &Call) -> Verdict {
    let no_namespace = spec.resource.kind() != ResourceKind::Cluster && call.resource.namespace.is_none();
    let refused = match (spec.access, &principal.minted) {
        (Access::Public, _) => None,
        // The gateway refuses these before any policy (a task token would name one).
        _ if no_namespace => Some(format!("`{}` names no namespace", spec.name)),
        (_, Some(minted)) => authz::grant::check(&minted.grant, spec, call).err(),
        (_, None) => None,
    };
    let decision = || {
        if spec.access == Access::Public {
            Decision { allowed: true, reasons: vec![authz::PUBLIC_REASON.to_owned()], errors: vec![] }
        } else {
            engine.evaluate(principal, spec, path, call)
        }
    };
    finish(engine, spec.name, refused, decision)
}

fn finish(
    engine: &PolicyEngine,
    action: &str,
    refused: Option<String>,
    decision: impl FnOnce() -> Decision,
) -> Verdict {
    let version = engine.version().to_owned();
    let considered = engine.policies_for(action);
    if let Some(refused) = refused {
        return Verdict {
            decision: "deny",
            policies: vec![],
            errors: vec![],
            refused: Some(refused),
            considered,
            policy_version: version,
        };
    }
    let decision = decision();
    Verdict {
        decision: if decision.allowed { "allow" } else { "deny" },
        policies: decision.reasons,
        errors: decision.errors,
        refused: None,
        considered,
        policy_version: version,
    }
}

impl Explanation {
    /// The explanation for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let p = &self.principal;
        let _ = writeln!(out, "principal  {}", p.entity);
        let _ = writeln!(out, "  issuer   {}", p.issuer);
        let _ = writeln!(out, "  sub      {}", p.sub);
        if let Some(grant) = &p.grant {
            let _ = writeln!(out, "  grant    {grant}");
        }
        if p.groups.is_empty() {
            let _ = writeln!(out, "  groups   (none)");
        } else {
            let _ = writeln!(out, "  groups   {}", p.groups.join(", "));
        }
        let _ = writeln!(out, "  tags");
        for (key, value) in &p.tags {
            let _ = writeln!(out, "    {key} = {value:?}");
        }
        match self.action_group {
            Some(group) => {
                let _ = writeln!(out, "action     {} (in Temporal::Action::\"{group}\")", self.action);
            }
            None => {
                let _ = writeln!(out, "action     {}", self.action);
            }
        }
        let uid = &self.resource["uid"];
        let _ = writeln!(
            out,
            "resource   {}::{}",
            uid["type"].as_str().unwrap_or_default(),
            Value::String(uid["id"].as_str().unwrap_or_default().to_owned())
        );
        if let Some(attrs) = self.resource["attrs"].as_object() {
            for (key, value) in attrs {
                let _ = writeln!(out, "  {key} = {value}");
            }
        }
        if let Some(context) = self.context.as_object() {
            let _ = writeln!(out, "context");
            for (key, value) in context {
                let _ = writeln!(out, "  {key} = {value}");
            }
        }
        for question in &self.questions {
            let uid = &question.resource["uid"];
            let _ = writeln!(
                out,
                "also asked {} on {}::{} ({})",
                question.action,
                uid["type"].as_str().unwrap_or_default(),
                Value::String(uid["id"].as_str().unwrap_or_default().to_owned()),
                question.origin
            );
            if let Some(attrs) = question.resource["attrs"].as_object() {
                for (key, value) in attrs {
                    let _ = writeln!(out, "  {key} = {value}");
                }
            }
            write_verdict(&mut out, "  answer", &question.decision);
        }
        write_verdict(&mut out, "decision", &self.decision);
        if let Some(shadow) = &self.shadow {
            write_verdict(&mut out, "shadow", shadow);
            if shadow.decision != self.decision.decision || shadow.policies != self.decision.policies {
                let _ = writeln!(out, "  the shadow set disagrees with the enforced set");
            }
        }
        out
    }
}

fn write_verdict(out: &mut String, label: &str, verdict: &Verdict) {
    let _ = writeln!(out, "{label:<10} {} (policy set {})", verdict.decision.to_uppercase(), verdict.policy_version);
    if let Some(refused) = &verdict.refused {
        let _ = writeln!(out, "  refused before any policy: {refused}");
        return;
    }
    if verdict.policies.is_empty() {
        if !verdict.allowed() {
            let _ = writeln!(out, "  no policy permits it (default deny)");
        }
    } else {
        let how = if verdict.allowed() { "permitted by" } else { "forbidden by" };
        let _ = writeln!(out, "  {how} {}", verdict.policies.join(", "));
    }
    for error in &verdict.errors {
        let _ = writeln!(out, "  error: {error}");
    }
    if verdict.considered.is_empty() {
        let _ = writeln!(out, "  no policy's action scope matches this action");
    } else {
        let _ = writeln!(out, "  considered: {}", verdict.considered.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn engine() -> PolicyEngine {
        PolicyEngine::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies").as_path()).unwrap()
    }

    fn issuers() -> Issuers {
        let profiles: BTreeMap<String, IssuerProfile> = serde_json::from_value(json!({
            "github": { "preset": "github-actions" },
            "okta": { "preset": "okta" },
        }))
        .unwrap();
        Issuers::from_profiles(&profiles).unwrap()
    }

    fn call(value: Value) -> CallSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_described_call_is_checked_against_the_catalog() {
        let signal = call(json!({"method": "SignalWorkflowExecution", "namespace": "p", "workflow_type": "T"}));
        let error = signal.resolve().unwrap_err().to_string();
        assert_eq!(
            error,
            "`SignalWorkflowExecution` requests carry no `workflow_type`: real calls are decided without it"
        );
        let no_namespace = call(json!({"method": "StartWorkflowExecution"}));
        assert!(matches!(no_namespace.resolve(), Err(ExplainError::NoNamespace("StartWorkflowExecution"))));
        assert!(matches!(call(json!({"method": "Nope"})).resolve(), Err(ExplainError::UnknownMethod(_))));
        let by_path = call(json!({
            "method": "/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution",
            "namespace": "payments", "workflow_type": "DeployWorkflow", "workflow_id": "d-1", "task_queue": "deploys"
        }));
        let Ask::Call { spec, call, .. } = by_path.resolve().unwrap() else { panic!("a gRPC call") };
        assert_eq!(spec.name, "StartWorkflowExecution");
        assert_eq!(call.resource.kind, ResourceKind::Workflow);
        assert_eq!(call.resource.workflow_type.as_deref(), Some("DeployWorkflow"));
    }

    #[test]
    fn an_okta_deployer_is_explained_with_groups_resource_and_policies() {
        let engine = engine();
        let claims = json!({"sub": "00u-alice", "groups": ["deployers"], "scp": ["openid"]});
        let principal = issuers().principal("okta", claims.as_object().unwrap()).unwrap();
        let ask = call(json!({"method": "StartWorkflowExecution", "namespace": "payments",
            "workflow_type": "DeployWorkflow", "workflow_id": "deploy-1", "task_queue": "deploys"}))
        .resolve()
        .unwrap();
        let explained = explain(&engine, None, &principal, &ask);
        assert_eq!(explained.principal.entity, r#"Temporal::User::"okta:00u-alice""#);
        assert_eq!(explained.principal.groups, [r#"Temporal::Group::"okta:deployers""#]);
        assert_eq!(explained.action_group, Some("write"));
        assert_eq!(explained.resource["attrs"]["type"], "DeployWorkflow");
        assert_eq!(
            explained.context["method"],
            "/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution"
        );
        assert_eq!(explained.decision.decision, "allow");
        assert_eq!(explained.decision.policies, ["okta-deployers-start-deploys"]);
        assert!(explained.decision.considered.contains(&"platform-admins".to_owned()));
        assert!(explained.to_text().contains("permitted by okta-deployers-start-deploys"));

        // The same call under a shadow set that forbids it.
        let shadow = PolicyEngine::from_sources(
            Path::new("schema.cedarschema"),
            &authz::generated_schema(),
            &[(PathBuf::from("s.cedar"), r#"@id("freeze") forbid (principal, action, resource);"#.into())],
        )
        .unwrap();
        let explained = explain(&engine, Some(&shadow), &principal, &ask);
        let shadow = explained.shadow.as_ref().unwrap();
        assert_eq!((shadow.decision, &shadow.policies[..]), ("deny", &["freeze".to_owned()][..]));
        assert!(explained.to_text().contains("the shadow set disagrees"));
    }

    #[test]
    fn a_worker_credential_is_refused_outside_its_grant_before_any_policy() {
        let engine = engine();
        let claims = json!({"sub": "buildkite:org:acme:pipeline:payments-workers", "namespace": "payments",
            "role": "worker", "task_queues": ["deploys"], "workflow_types": [], "session_exp": 0});
        let principal = issuers().principal("flowgate", claims.as_object().unwrap()).unwrap();
        let inside = call(json!({"method": "PollWorkflowTaskQueue", "namespace": "payments", "task_queue": "deploys"}));
        let outside = call(json!({"method": "PollWorkflowTaskQueue", "namespace": "payments", "task_queue": "other"}));
        let allowed = explain(&engine, None, &principal, &inside.resolve().unwrap());
        assert_eq!(allowed.decision.policies, ["minted-credentials-within-grant"]);
        assert_eq!(allowed.principal.grant.as_deref(), Some("namespace:payments role:worker task_queue:deploys"));
        let refused = explain(&engine, None, &principal, &outside.resolve().unwrap());
        assert_eq!(refused.decision.decision, "deny");
        assert!(refused.decision.refused.as_deref().unwrap().contains("`other`"), "{:?}", refused.decision);
        let wider = call(json!({"method": "IssueCredential", "scope": "namespace:payments role:write"}));
        let refresh = explain(&engine, None, &principal, &wider.resolve().unwrap());
        assert!(refresh.decision.refused.is_some(), "a refresh cannot widen the grant");
    }

    #[test]
    fn tokens_are_read_by_their_issuer_url() {
        use base64::Engine as _;
        let config: Config = toml::from_str(
            r#"
            [listen]
            address = "127.0.0.1:0"
            [upstream]
            address = "http://127.0.0.1:7233"
            [policy]
            dir = "policies"
            [audit]
            path = "-"
            [[issuers]]
            name = "okta"
            preset = "okta"
            issuer = "https://acme.okta.com/oauth2/default"
            audiences = ["api://temporal"]
            "#,
        )
        .unwrap();
        let issuers = Issuers::from_config(&config).unwrap();
        let encode = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token = format!(
            "{}.{}.sig",
            encode(json!({"alg": "RS256"})),
            encode(json!({"iss": "https://acme.okta.com/oauth2/default", "sub": "00u-bob", "groups": "oncall"}))
        );
        let principal = issuers.principal_of_unverified_token(&token).unwrap();
        assert_eq!(principal.id, "okta:00u-bob");
        assert_eq!(principal.groups, ["oncall"]);
        let elsewhere = token.replace(&encode(json!({"alg": "RS256"})), &encode(json!({"alg": "none"})));
        assert!(issuers.principal_of_unverified_token(&elsewhere).is_ok(), "the header is not read");
        assert!(matches!(issuers.principal_of_unverified_token("x"), Err(ExplainError::Token(_))));
    }
}
