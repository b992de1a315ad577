//! Authorization: Cedar policies from `policy.dir`, loaded and validated once, asked per call.
//!
//! A policy set is every `*.cedar` file of the directory plus `schema.cedarschema`. Loading is
//! all-or-nothing: a parse error, a policy without a unique `@id`, a strict-validation error or
//! a schema that does not declare every action flowgate can ask about is reported with its file,
//! line and column, and the set is not used. Policies are known by their `@id`, so decisions
//! name the policies that determined them.
//!
//! Per call, the request is built from entities prepared ahead: the principal's (cached with
//! its token) and each action's (built at load time with its access group as parent). The
//! resource entity is the only one made per call.
//!
//! Two things keep a decision cheap on the path of every call:
//!
//! * **Per-action slices.** At load time each action gets the policies whose action scope can
//!   match it (`action`, `action == A`, `action in [A, group-of-A]`); Cedar evaluates only those.
//!   A policy whose action scope does not match is false before its conditions run, so it can
//!   neither determine a decision nor report an error: the slice decides exactly as the whole
//!   set would.
//! * **Decision cache.** A decision is a pure function of the policy set, the principal's
//!   entities (fixed for the life of its token), the action, the method and the call's
//!   resource and context fields. Each principal keeps its last [`DECISION_CACHE_SIZE`]
//!   decisions keyed by exactly those inputs and tagged with the policy set's generation, so a
//!   worker polling the same task queue is decided by Cedar once per token and policy set, and
//!   a reload invalidates everything at once.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity, EntityTypeName,
    EntityUid, PolicyId, PolicySet, PrincipalConstraint, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};
use miette::Diagnostic;
use sha2::{Digest, Sha256};

use crate::authn::Principal;
use crate::authn::principal::entity_uid;
use crate::temporal::catalog::{self, Access, MethodSpec};
use crate::temporal::{Call, ResourceKind};

pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// The action of the token exchange (`Temporal::Action::"IssueCredential"`).
pub const ISSUE_CREDENTIAL: &str = "IssueCredential";

/// One problem with a policy directory, located as precisely as Cedar allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A policy directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy directory `{dir}`: {source}")]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("policy directory `{0}` has no `.cedar` files")]
    NoPolicies(PathBuf),
    #[error("invalid policy set:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<PolicyProblem>),
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

/// Turns a Cedar diagnostic into problems located in `file`.
fn problem(file: &Path, text: &str, diagnostic: &dyn Diagnostic, fallback_offset: Option<usize>) -> PolicyProblem {
    let mut message = diagnostic.to_string();
    if let Some(help) = diagnostic.help() {
        let _ = write!(message, " (help: {help})");
    }
    let offset = diagnostic.labels().and_then(|mut labels| labels.next()).map(|l| l.offset()).or(fallback_offset);
    let (line, column) = match offset {
        Some(offset) => {
            let (l, c) = line_column(text, offset);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    PolicyProblem { file: file.to_owned(), line, column, message }
}

/// A loaded, validated policy set.
pub struct PolicyEngine {
    policies: PolicySet,
    /// Each action's entity and the policies that can apply to it.
    actions: HashMap<&'static str, ActionPolicies>,
    /// Unique per loaded set in this process: the decision caches' key.
    generation: u64,
    /// A hash of the schema and every policy file: which policies made a decision.
    version: String,
    /// Non-fatal findings (e.g. a policy that can never apply).
    pub warnings: Vec<PolicyProblem>,
    /// The policy files (not the schema) the set was loaded from.
    pub files: Vec<PathBuf>,
}

/// What Cedar decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `@id`s of the policies that determined the decision.
    pub reasons: Vec<String>,
    /// Policies that failed to evaluate (they count as not applying).
    pub errors: Vec<String>,
}

/// An action's entity (its access group as parent) and the slice of the set it can match.
struct ActionPolicies {
    uid: EntityUid,
    entity: Entity,
    policies: PolicySet,
    /// The principal scopes of the slice's `permit` policies: who could ever be allowed.
    permit_scopes: Vec<PrincipalConstraint>,
}

/// How deeply `(`, `[` and `{` may nest in a policy file. Real policies nest a handful of
/// levels; Cedar's parser needs tens of kilobytes of stack per level in a debug build.
pub const MAX_POLICY_NESTING: usize = 32;

/// The byte offset where brackets first nest past [`MAX_POLICY_NESTING`], outside string
/// literals and `//` comments.
fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_POLICY_NESTING {
                    return Some(i);
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

fn action_uid(name: &str) -> EntityUid {
    entity_uid("Action", name)
}

fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_owned())
}

impl PolicyEngine {
    /// Loads and validates `dir`.
    pub fn load(dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let read_dir = |source| PolicyError::ReadDir { dir: dir.to_owned(), source };
        let files = policy_files(dir).map_err(read_dir)?;
        if files.is_empty() {
            return Err(PolicyError::NoPolicies(dir.to_owned()));
        }
        let schema_path = dir.join(SCHEMA_FILE);
        let schema_text = std::fs::read_to_string(&schema_path).map_err(|e| {
            PolicyError::Invalid(vec![PolicyProblem {
                file: schema_path.clone(),
                line: None,
                column: None,
                message: format!("cannot read the schema: {e}"),
            }])
        })?;
        let sources = files
            .iter()
            .map(|path| std::fs::read_to_string(path).map(|text| (path.clone(), text)).map_err(read_dir))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_sources(&schema_path, &schema_text, &sources)
    }

    /// Builds an engine from in-memory sources (`load` and tests).
    pub fn from_sources(
        schema_path: &Path,
        schema_text: &str,
        sources: &[(PathBuf, String)],
    ) -> Result<PolicyEngine, PolicyError> {
        let mut problems = Vec::new();
        let schema = match Schema::from_cedarschema_str(schema_text) {
            Ok((schema, _warnings)) => Some(schema),
            Err(error) => {
                problems.push(problem(schema_path, schema_text, &error, None));
                None
            }
        };
        if let Some(schema) = &schema {
            problems.extend(missing_actions(schema_path, schema));
        }

        let mut policies = PolicySet::new();
        let mut origin: HashMap<PolicyId, (usize, usize)> = HashMap::new();
        for (index, (path, text)) in sources.iter().enumerate() {
            // Cedar's parser recurses once per nested bracket: a file of nested parentheses
            // overflowed a reload thread's stack and aborted the gateway. Refuse it first.
            if let Some(offset) = too_deep(text) {
                let (line, column) = line_column(text, offset);
                problems.push(PolicyProblem {
                    file: path.clone(),
                    line: Some(line),
                    column: Some(column),
                    message: format!("brackets nest deeper than {MAX_POLICY_NESTING}"),
                });
                continue;
            }
            let parsed = match PolicySet::from_str(text) {
                Ok(parsed) => parsed,
                Err(errors) => {
                    problems.extend(errors.iter().map(|e| problem(path, text, e, None)));
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                problems.push(PolicyProblem {
                    file: path.clone(),
                    line: None,
                    column: None,
                    message: "templates are not supported: write static policies".into(),
                });
            }
            // Where each `@id` was last found in this file, so a repeated one is located at its
            // second occurrence.
            let mut searched_to: HashMap<String, usize> = HashMap::new();
            for policy in parsed.policies() {
                let id = policy.annotation("id").map(str::to_owned);
                // Cedar does not expose where a policy starts; its `@id` annotation does.
                let offset = id.as_deref().and_then(|id| {
                    let from = searched_to.get(id).copied().unwrap_or(0);
                    let found = text[from..].find(&format!("@id(\"{id}\")")).map(|at| from + at)?;
                    searched_to.insert(id.to_owned(), found + 1);
                    Some(found)
                });
                let locate = |message: String| {
                    let (line, column) = offset.map(|o| line_column(text, o)).unzip();
                    PolicyProblem { file: path.clone(), line, column, message }
                };
                let Some(id) = id else {
                    let source = policy.to_string();
                    let head = source.lines().next().unwrap_or_default().trim();
                    problems.push(locate(format!("policy `{head}` has no `@id(\"...\")` annotation")));
                    continue;
                };
                let id = PolicyId::new(&id);
                if let Some((file_index, _)) = origin.get(&id) {
                    problems.push(locate(format!(
                        "`@id(\"{id}\")` is also used in `{}`",
                        sources[*file_index].0.display()
                    )));
                    continue;
                }
                origin.insert(id.clone(), (index, offset.unwrap_or(0)));
                if let Err(error) = policies.add(policy.new_id(id)) {
                    problems.push(locate(error.to_string()));
                }
            }
        }

        let mut warnings = Vec::new();
        if let Some(schema) = &schema
            && problems.is_empty()
        {
            let validator = Validator::new(schema.clone());
            let result = validator.validate(&policies, ValidationMode::Strict);
            let locate = |id: &PolicyId, diagnostic: &dyn Diagnostic| {
                let (index, offset) = origin.get(id).copied().unwrap_or((0, 0));
                let (path, text) = &sources[index];
                problem(path, text, diagnostic, Some(offset))
            };
            problems.extend(result.validation_errors().map(|e| locate(e.policy_id(), e)));
            warnings.extend(result.validation_warnings().map(|w| locate(w.policy_id(), w)));
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }
        warnings.extend(lint(&policies, &origin, sources));
        let version = version_of(schema_text, sources);
        Ok(PolicyEngine {
            actions: action_policies(&policies),
            policies,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            version,
            warnings,
            files: sources.iter().map(|(p, _)| p.clone()).collect(),
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }

    /// The `@id`s of every policy, sorted.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.policies.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        ids
    }

    /// The `@id`s of the policies whose action scope can match `action` (sorted): the only ones
    /// that can decide it.
    pub fn policies_for(&self, action: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .actions
            .get(action)
            .map(|a| a.policies.policies().map(|p| p.id().to_string()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Decides one call: from the principal's decision cache when the same call was decided
    /// under this policy set before, otherwise by Cedar.
    pub fn authorize(
        &self,
        principal: &Principal,
        spec: &'static MethodSpec,
        method_path: &str,
        call: &Call,
    ) -> Arc<Decision> {
        self.authorize_in(&principal.decisions, principal, spec, method_path, call)
    }

    /// [`authorize`](Self::authorize) with another of the principal's caches (the shadow set
    /// keeps its own, so the two sets do not evict each other's decisions).
    pub fn authorize_in(
        &self,
        cache: &DecisionCache,
        principal: &Principal,
        spec: &'static MethodSpec,
        method_path: &str,
        call: &Call,
    ) -> Arc<Decision> {
        if let Some(decision) = cache.get(self.generation, spec.name, method_path, call) {
            return decision;
        }
        let decision = Arc::new(self.evaluate(principal, spec, method_path, call));
        cache.insert(self.generation, spec.name, method_path, call, decision.clone());
        decision
    }

    /// Whether any `permit` policy of the action's slice admits `principal` by its scope (the
    /// `principal == / in / is` part; conditions are not evaluated, so this over-approximates).
    /// `false` means no call of this action by this principal can be allowed, whatever its
    /// resource: the gateway refuses it before reading the request message. A handful of
    /// comparisons per permit policy of the action, computed per call (no allocation).
    pub fn may_permit(&self, principal: &Principal, spec: &MethodSpec) -> bool {
        let Some(action) = self.actions.get(spec.name) else { return false };
        // Groups are `Temporal::Group::"<issuer>:<group>"`, the principal's only ancestors.
        let member_of = |group: &EntityUid| {
            *group == principal.uid
                || (group.type_name().basename() == "Group"
                    && group
                        .id()
                        .unescaped()
                        .strip_prefix(principal.issuer.as_str())
                        .and_then(|r| r.strip_prefix(':'))
                        .is_some_and(|name| principal.groups.iter().any(|g| g == name)))
        };
        let is = |type_name: &EntityTypeName| principal.uid.type_name() == type_name;
        action.permit_scopes.iter().any(|scope| match scope {
            PrincipalConstraint::Any => true,
            PrincipalConstraint::Eq(uid) => *uid == principal.uid,
            PrincipalConstraint::In(group) => member_of(group),
            PrincipalConstraint::Is(type_name) => is(type_name),
            PrincipalConstraint::IsIn(type_name, group) => is(type_name) && member_of(group),
        })
    }

    /// Asks Cedar, without the cache.
    pub fn evaluate(&self, principal: &Principal, spec: &MethodSpec, method_path: &str, call: &Call) -> Decision {
        let action = self.actions.get(spec.name).expect("every catalog action has an entity");
        self.evaluate_with(&action.policies, principal, spec, method_path, call)
    }

    fn evaluate_with(
        &self,
        policies: &PolicySet,
        principal: &Principal,
        spec: &MethodSpec,
        method_path: &str,
        call: &Call,
    ) -> Decision {
        let action = self.actions.get(spec.name).expect("every catalog action has an entity");
        let (resource, resource_entities) = resource_entities(call);
        let context = call_context(method_path, call).map(|(key, value)| (key.to_owned(), string(value)));
        let context = Context::from_pairs(context).expect("string-valued context is always valid");
        let request = Request::new(principal.uid.clone(), action.uid.clone(), resource, context, None)
            .expect("requests without a schema are not validated");
        let entities = principal.entities.iter().cloned().chain(resource_entities).chain([action.entity.clone()]);
        self.decide(request, entities, policies, spec.name)
    }

    fn decide(
        &self,
        request: Request,
        entities: impl IntoIterator<Item = Entity>,
        policies: &PolicySet,
        action: &str,
    ) -> Decision {
        let entities = match Entities::from_entities(entities, None) {
            Ok(entities) => entities,
            Err(error) => {
                return Decision {
                    allowed: false,
                    reasons: vec![],
                    errors: vec![format!("cannot build entities: {error}")],
                };
            }
        };
        let response = Authorizer::new().is_authorized(&request, policies, &entities);
        let errors: Vec<String> = response.diagnostics().errors().map(|e| e.to_string()).collect();
        if !errors.is_empty() {
            tracing::warn!(?errors, action, "policies failed to evaluate (they did not apply)");
        }
        // Cedar reports reasons as a set; sorted, records of the same decision read the same.
        let mut reasons: Vec<String> = response.diagnostics().reason().map(|id| id.to_string()).collect();
        reasons.sort_unstable();
        Decision { allowed: response.decision() == CedarDecision::Allow, reasons, errors }
    }
}

impl PolicyEngine {
    /// Decides a token exchange: may `principal` get a credential for `namespace` with this
    /// role, task queues and workflow types?
    pub fn authorize_credential(
        &self,
        principal: &Principal,
        namespace: &str,
        role: &str,
        task_queues: &[String],
        workflow_types: &[String],
    ) -> Decision {
        let action = self.actions.get(ISSUE_CREDENTIAL).expect("IssueCredential has an entity");
        let namespace_uid = entity_uid("Namespace", namespace);
        let cluster_uid = entity_uid("Cluster", "cluster");
        let namespace_entity = Entity::new(
            namespace_uid.clone(),
            [("name".to_owned(), string(namespace))].into_iter().collect(),
            HashSet::from([cluster_uid]),
        )
        .expect("string attributes always evaluate");
        let set = |items: &[String]| RestrictedExpression::new_set(items.iter().map(|i| string(i)));
        let context = Context::from_pairs([
            ("method".to_owned(), string(crate::mint::TOKEN_ENDPOINT)),
            ("role".to_owned(), string(role)),
            ("task_queues".to_owned(), set(task_queues)),
            ("workflow_types".to_owned(), set(workflow_types)),
        ])
        .expect("string-valued context is always valid");
        let request = Request::new(principal.uid.clone(), action.uid.clone(), namespace_uid, context, None)
            .expect("requests without a schema are not validated");
        let entities = principal.entities.iter().cloned().chain([namespace_entity, action.entity.clone()]);
        self.decide(request, entities, &action.policies, ISSUE_CREDENTIAL)
    }
}

/// How many decisions a principal remembers. A worker repeats a handful of distinct calls
/// (polls and responses on its queues); a client starting workflows with fresh ids misses
/// anyway, and a small bound keeps a token's footprint small.
pub const DECISION_CACHE_SIZE: usize = 16;

/// The last decisions made for one principal, under one policy set generation.
#[derive(Debug, Default)]
pub struct DecisionCache {
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    generation: u64,
    entries: Vec<CachedDecision>,
    /// Next slot to overwrite once full (round robin: cheap, and fair to a steady mix).
    next: usize,
}

#[derive(Debug)]
struct CachedDecision {
    action: &'static str,
    method_path: Box<str>,
    call: Call,
    decision: Arc<Decision>,
}

impl DecisionCache {
    fn get(&self, generation: u64, action: &str, method_path: &str, call: &Call) -> Option<Arc<Decision>> {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.generation != generation {
            return None;
        }
        state
            .entries
            .iter()
            .find(|e| e.action == action && &*e.method_path == method_path && e.call == *call)
            .map(|e| e.decision.clone())
    }

    fn insert(&self, generation: u64, action: &'static str, method_path: &str, call: &Call, decision: Arc<Decision>) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.generation != generation {
            state.generation = generation;
            state.entries.clear();
            state.next = 0;
        }
        let entry = CachedDecision { action, method_path: method_path.into(), call: call.clone(), decision };
        if state.entries.len() < DECISION_CACHE_SIZE {
            state.entries.push(entry);
        } else {
            let slot = state.next;
            state.entries[slot] = entry;
            state.next = (slot + 1) % DECISION_CACHE_SIZE;
        }
    }
}

/// The policy files of a directory, sorted: its `*.cedar` files (following symlinks, as in a
/// Kubernetes ConfigMap volume), not its subdirectories. Loading, formatting and the reload
/// watcher all see the same files.
pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "cedar") && path.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The hash that names a policy set in decision records.
fn version_of(schema_text: &str, sources: &[(PathBuf, String)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(schema_text.as_bytes());
    for (path, text) in sources {
        hasher.update(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Each action's entity and the policies whose action scope can match it.
fn action_policies(policies: &PolicySet) -> HashMap<&'static str, ActionPolicies> {
    catalog::all_actions()
        .filter(|spec| spec.access != Access::Public)
        .map(|spec| (spec.name, spec.access.group()))
        .chain([(ISSUE_CREDENTIAL, None)])
        .map(|(name, group)| {
            let uid = action_uid(name);
            let group = group.map(action_uid);
            let parents: HashSet<EntityUid> = group.iter().cloned().collect();
            let matches = |candidate: &EntityUid| *candidate == uid || group.as_ref() == Some(candidate);
            let mut slice = PolicySet::new();
            for policy in policies.policies() {
                let applies = match policy.action_constraint() {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(action) => matches(&action),
                    ActionConstraint::In(actions) => actions.iter().any(matches),
                };
                if applies {
                    slice.add(policy.clone()).expect("policy ids are unique within the whole set");
                }
            }
            let permit_scopes =
                slice.policies().filter(|p| p.effect() == Effect::Permit).map(|p| p.principal_constraint()).collect();
            let entity = Entity::new_no_attrs(uid.clone(), parents);
            (name, ActionPolicies { uid, entity, policies: slice, permit_scopes })
        })
        .collect()
}

/// Every action flowgate can ask about must be declared, with the resource type flowgate sends.
fn missing_actions(schema_path: &Path, schema: &Schema) -> Vec<PolicyProblem> {
    catalog::all_actions()
        .filter(|spec| spec.access != Access::Public)
        .map(|spec| (spec.name, spec.resource.entity_type()))
        .chain([(ISSUE_CREDENTIAL, "Namespace")])
        .filter_map(|(name, resource_type)| {
            let wanted = format!("Temporal::{resource_type}");
            let message = match schema.resources_for_action(&action_uid(name)) {
                None => {
                    format!("the schema does not declare action `{name}` (regenerate it with `flowgate policy schema`)")
                }
                Some(types) => {
                    let mut types = types.map(|t| t.to_string());
                    if types.any(|t| t == wanted) {
                        return None;
                    }
                    format!("action `{name}` must apply to resource type `{wanted}`")
                }
            };
            Some(PolicyProblem { file: schema_path.to_owned(), line: None, column: None, message })
        })
        .collect()
}

/// The context of a call: `method`, and the signal, query or update name where it has one.
pub fn call_context<'a>(method_path: &'a str, call: &'a Call) -> impl Iterator<Item = (&'static str, &'a str)> {
    [("signal_name", &call.signal_name), ("query_type", &call.query_type), ("update_name", &call.update_name)]
        .into_iter()
        .filter_map(|(key, value)| value.as_deref().map(|value| (key, value)))
        .chain([("method", method_path)])
}

/// The resource entity of a call (and its namespace), e.g. `Temporal::Workflow::"payments/wf-1"`.
pub fn resource_entities(call: &Call) -> (EntityUid, Vec<Entity>) {
    let resource = &call.resource;
    let namespace = resource.namespace.as_deref().unwrap_or_default();
    let namespace_uid = entity_uid("Namespace", namespace);
    let cluster_uid = entity_uid("Cluster", "cluster");
    let mut attrs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(4);
    let attr = |attrs: &mut Vec<(String, RestrictedExpression)>, key: &str, value: &Option<String>| {
        if let Some(value) = value {
            attrs.push((key.to_owned(), string(value)));
        }
    };
    let scoped = |id: Option<&str>| format!("{namespace}/{}", id.unwrap_or_default());
    let id = match resource.kind {
        ResourceKind::Cluster => {
            return (cluster_uid.clone(), vec![Entity::new_no_attrs(cluster_uid, HashSet::new())]);
        }
        ResourceKind::Namespace => {
            let attrs = [("name".to_owned(), string(namespace))];
            let entity = Entity::new(namespace_uid.clone(), attrs.into_iter().collect(), HashSet::from([cluster_uid]))
                .expect("string attributes always evaluate");
            return (namespace_uid, vec![entity]);
        }
        ResourceKind::Workflow => {
            attr(&mut attrs, "id", &resource.workflow_id);
            attr(&mut attrs, "type", &resource.workflow_type);
            attr(&mut attrs, "task_queue", &resource.task_queue);
            scoped(resource.workflow_id.as_deref())
        }
        ResourceKind::TaskQueue => {
            attrs.push(("name".to_owned(), string(resource.task_queue.as_deref().unwrap_or_default())));
            scoped(resource.task_queue.as_deref())
        }
        ResourceKind::Schedule => {
            attrs.push(("id".to_owned(), string(resource.schedule_id.as_deref().unwrap_or_default())));
            attr(&mut attrs, "workflow_type", &resource.workflow_type);
            attr(&mut attrs, "task_queue", &resource.task_queue);
            scoped(resource.schedule_id.as_deref())
        }
    };
    attrs.push(("namespace".to_owned(), string(namespace)));
    let uid = entity_uid(resource.kind.entity_type(), &id);
    let entity = Entity::new(uid.clone(), attrs.into_iter().collect(), HashSet::from([namespace_uid.clone()]))
        .expect("string attributes always evaluate");
    let namespace_entity = Entity::new(
        namespace_uid,
        [("name".to_owned(), string(namespace))].into_iter().collect(),
        HashSet::from([cluster_uid]),
    )
    .expect("string attributes always evaluate");
    (uid, vec![entity, namespace_entity])
}

/// The Cedar schema flowgate's requests conform to, generated from the method catalog.
/// `policies/schema.cedarschema` is this text; a test keeps the two equal.
pub fn generated_schema() -> String {
    let mut out = String::from(SCHEMA_HEADER);
    for group in ["read", "write", "worker", "admin", "cluster-admin"] {
        let _ = writeln!(out, "  action \"{group}\";");
    }
    out.push('\n');
    for spec in catalog::all_actions().filter(|spec| spec.access != Access::Public) {
        let parent = spec.access.group().map(|g| format!(" in [\"{g}\"]")).unwrap_or_default();
        let _ = writeln!(
            out,
            "  action \"{}\"{parent} appliesTo {{ principal: [User, Service, CiJob, Worker], resource: [{}], context: CallContext }};",
            spec.name,
            spec.resource.entity_type()
        );
    }
    let _ = writeln!(
        out,
        "\n  action \"{ISSUE_CREDENTIAL}\" appliesTo {{ principal: [User, Service, CiJob, Worker], resource: [Namespace], context: CredentialContext }};"
    );
    out.push_str("}\n");
    out
}

const SCHEMA_HEADER: &str = r#"// The Cedar schema of flowgate's requests. Generated by `flowgate policy schema` from the
// method catalog: do not edit by hand; flowgate refuses a schema that misses an action.
namespace Temporal {
  // Groups from an issuer's groups claim: Temporal::Group::"<issuer name>:<group>".
  entity Group;

  // Principals: id "<issuer name>:<sub>"; every string/number/boolean claim is a tag.
  entity User in [Group] { issuer: String, sub: String } tags String;
  entity Service in [Group] { issuer: String, sub: String } tags String;
  entity CiJob in [Group] { issuer: String, sub: String } tags String;
  entity Worker in [Group] { issuer: String, sub: String } tags String;

  // Resources: each namespaced one is `in` its namespace.
  entity Cluster;
  entity Namespace in [Cluster] { name: String };
  entity Workflow in [Namespace] { namespace: String, id?: String, type?: String, task_queue?: String };
  entity TaskQueue in [Namespace] { namespace: String, name: String };
  entity Schedule in [Namespace] { namespace: String, id: String, workflow_type?: String, task_queue?: String };

  type CallContext = {
    method: String,
    signal_name?: String,
    query_type?: String,
    update_name?: String,
  };

  // The token exchange: what a credential would grant (`role` is read, write or worker).
  type CredentialContext = {
    method: String,
    role: String,
    task_queues: Set<String>,
    workflow_types: Set<String>,
  };

  // Access groups: `action in Temporal::Action::"read"`.
"#;

/// flowgate's own warnings about policies that are valid Cedar but cannot do what they say,
/// because of what flowgate's requests carry. Each is located at the policy's `@id`, and each
/// fires only when it is certain:
///
/// * **`resource.type` on calls without a type.** Only start-style calls
///   (`StartWorkflowExecution`, `SignalWithStartWorkflowExecution`, `ExecuteMultiOperation`)
///   carry a workflow type; a signal, query, terminate or describe names only the execution (the
///   catalog's `workflow_type` path is `None`). A policy whose action scope names only actions
///   whose Workflow requests carry no type (and at least one such action), and whose conditions
///   cannot be satisfied without `resource.type` or `resource has type` being true (a `when`
///   that needs it on every path to true, or an `unless` that reads `resource.type` before it
///   can be false), never applies: a permit grants nothing, a forbid protects nothing. An
///   unconstrained action scope or a group that holds a start-style call is never reported.
/// * **`like` without a wildcard** on a principal tag or attribute, or a resource attribute:
///   the pattern matches only itself, so `==` was meant, or a `*` is missing. A pattern with an
///   escaped `\*` was written with care and is not reported.
/// * **Unanchored `like` on a principal claim** (`principal.getTag(..)`, `principal.sub`,
///   `principal.issuer`): a pattern starting with `*` lets any prefix in, e.g.
///   `principal.getTag("repository") like "*payments"` matches `evil/payments`, a repository
///   of another owner.
fn lint(
    policies: &PolicySet,
    origin: &HashMap<PolicyId, (usize, usize)>,
    sources: &[(PathBuf, String)],
) -> Vec<PolicyProblem> {
    use serde_json::Value;

    /// Whether every evaluation of `expr` that does not fail reads `resource.type` (so it
    /// fails when the resource has none). Unknown shapes answer no: lints must be certain.
    fn reads_type(expr: &Value) -> bool {
        let Some((op, body)) = expr.as_object().and_then(|o| o.iter().next()) else { return false };
        let field = |name: &str| body.get(name).is_some_and(reads_type);
        match op.as_str() {
            "." => (is_var(&body["left"], "resource") && body["attr"] == "type") || field("left"),
            "&&" | "||" | "has" | "like" | "is" => field("left"),
            "!" | "neg" | "isEmpty" => field("arg"),
            "if-then-else" => field("if") || (field("then") && field("else")),
            "==" | "!=" | "in" | "<" | "<=" | ">" | ">=" | "+" | "-" | "*" | "contains" | "containsAll"
            | "containsAny" | "getTag" | "hasTag" => field("left") || field("right"),
            "Set" => body.as_array().is_some_and(|items| items.iter().any(reads_type)),
            "Record" => body.as_object().is_some_and(|fields| fields.values().any(reads_type)),
            "Value" | "Var" | "Slot" => false,
            // Extension functions and methods: every argument is evaluated.
            _ => body.as_array().is_some_and(|args| args.iter().any(reads_type)),
        }
    }

    /// Whether `expr` can be true only if the resource has a `type`.
    fn needs_type(expr: &Value) -> bool {
        if reads_type(expr) {
            return true;
        }
        let Some((op, body)) = expr.as_object().and_then(|o| o.iter().next()) else { return false };
        match op.as_str() {
            "has" => is_var(&body["left"], "resource") && body["attr"] == "type",
            "&&" => needs_type(&body["left"]) || needs_type(&body["right"]),
            "||" => needs_type(&body["left"]) && needs_type(&body["right"]),
            "if-then-else" => needs_type(&body["then"]) && needs_type(&body["else"]),
            _ => false,
        }
    }

    fn is_var(expr: &Value, name: &str) -> bool {
        expr.get("Var").is_some_and(|var| var == name)
    }

    /// The claim or attribute a `like` tests, as written, and whether it is a principal claim.
    fn like_subject(left: &Value) -> Option<(String, bool)> {
        if let Some(get_tag) = left.get("getTag")
            && is_var(&get_tag["left"], "principal")
        {
            let tag = get_tag["right"].get("Value")?.as_str()?;
            return Some((format!("principal.getTag(\"{tag}\")"), true));
        }
        let access = left.get(".")?;
        let attr = access["attr"].as_str()?;
        ["principal", "resource"]
            .into_iter()
            .find(|var| is_var(&access["left"], var))
            .map(|var| (format!("{var}.{attr}"), var == "principal"))
    }

    /// Every `like` of an expression: its left operand and pattern.
    fn likes<'a>(expr: &'a Value, found: &mut Vec<(&'a Value, &'a [Value])>) {
        match expr {
            Value::Object(object) => {
                if let Some(like) = object.get("like")
                    && let Some(pattern) = like["pattern"].as_array()
                {
                    found.push((&like["left"], pattern));
                }
                object.values().for_each(|value| likes(value, found));
            }
            Value::Array(items) => items.iter().for_each(|value| likes(value, found)),
            _ => {}
        }
    }

    /// A pattern as Cedar source, e.g. `"*payments"`.
    fn pattern_source(pattern: &[Value]) -> String {
        let mut out = String::from("\"");
        for element in pattern {
            match element.get("Literal").and_then(Value::as_str) {
                Some(text) => {
                    for c in text.chars() {
                        match c {
                            '*' => out.push_str("\\*"),
                            _ => out.extend(c.escape_debug()),
                        }
                    }
                }
                None => out.push('*'),
            }
        }
        out.push('"');
        out
    }

    use catalog::ResourceSpec::Workflow;
    // Only Workflow resources have a `type`, and only when the request names it.
    let carries_type = |spec: &MethodSpec| matches!(spec.resource, Workflow { workflow_type: Some(_), .. });
    let typeless_workflow = |spec: &MethodSpec| matches!(spec.resource, Workflow { workflow_type: None, .. });
    let actions: HashMap<&str, &MethodSpec> = catalog::all_actions().map(|spec| (spec.name, spec)).collect();
    // The actions a scope entry stands for (a group's members, or itself); `None` for a name
    // flowgate does not know, so nothing is claimed about it.
    let named = |uid: &EntityUid| -> Option<Vec<&MethodSpec>> {
        if uid.type_name().to_string() != "Temporal::Action" {
            return None;
        }
        let name = uid.id().unescaped();
        let members: Vec<&MethodSpec> =
            catalog::all_actions().filter(|spec| spec.access.group() == Some(name)).collect();
        match (members.is_empty(), actions.get(name)) {
            (false, _) => Some(members),
            (true, Some(spec)) => Some(vec![*spec]),
            (true, None) if name == ISSUE_CREDENTIAL => Some(vec![]),
            (true, None) => None,
        }
    };

    let mut ordered: Vec<_> = policies.policies().collect();
    ordered.sort_by_key(|policy| origin.get(policy.id()).copied().unwrap_or_default());
    let mut warnings = Vec::new();
    for policy in ordered {
        let (index, offset) = origin.get(policy.id()).copied().unwrap_or_default();
        let Some((path, text)) = sources.get(index) else { continue };
        let Ok(est) = policy.to_json() else { continue };
        let id = policy.id();
        let mut warn = |message: String| {
            let (line, column) = line_column(text, offset);
            warnings.push(PolicyProblem { file: path.clone(), line: Some(line), column: Some(column), message });
        };

        let scope = match policy.action_constraint() {
            ActionConstraint::Any => vec![],
            ActionConstraint::Eq(action) => vec![action],
            ActionConstraint::In(actions) => actions,
        };
        let resolved: Option<Vec<Vec<&MethodSpec>>> = scope.iter().map(named).collect();
        if let Some(resolved) = resolved
            && !scope.is_empty()
            && !resolved.iter().flatten().any(|spec| carries_type(spec))
            && resolved.iter().flatten().any(|spec| typeless_workflow(spec))
        {
            let conditions = est["conditions"].as_array().map(Vec::as_slice).unwrap_or_default();
            let needs = conditions.iter().any(|clause| match clause["kind"].as_str() {
                Some("when") => needs_type(&clause["body"]),
                Some("unless") => reads_type(&clause["body"]),
                _ => false,
            });
            if needs {
                let names: Vec<String> = scope.iter().map(|uid| format!("`{}`", uid.id().unescaped())).collect();
                let names = match names.split_last() {
                    Some((last, [])) => last.clone(),
                    Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                    None => String::new(),
                };
                warn(format!(
                    "policy `{id}` tests `resource.type` but {names} calls carry no workflow type: it can never apply to them"
                ));
            }
        }

        let mut found = Vec::new();
        for clause in est["conditions"].as_array().into_iter().flatten() {
            likes(&clause["body"], &mut found);
        }
        for (left, pattern) in found {
            let Some((subject, principal_claim)) = like_subject(left) else { continue };
            let source = pattern_source(pattern);
            let wildcards = pattern.iter().filter(|element| element.get("Literal").is_none()).count();
            let escaped_star =
                pattern.iter().any(|element| element["Literal"].as_str().is_some_and(|l| l.contains('*')));
            if wildcards == 0 && !escaped_star {
                warn(format!(
                    "policy `{id}` tests `{subject} like {source}`, a pattern without `*` that matches only itself: write `==` (or add the `*` that was meant)"
                ));
            } else if principal_claim && pattern.first().is_some_and(|element| element.get("Literal").is_none()) {
                warn(format!(
                    "policy `{id}` tests `{subject} like {source}`, a pattern starting with `*`: a claim with any prefix matches it, another owner's included; anchor its start"
                ));
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::config::PrincipalKind;
    use crate::temporal::Resource;

    /// Every shape of action scope, permits and forbids, conditions on principal and resource.
    const SCOPES: &str = r#"
@id("any-action")
permit (principal in Temporal::Group::"okta:admins", action, resource);
@id("one-action")
permit (principal, action == Temporal::Action::"StartWorkflowExecution", resource)
when { resource has type && resource.type == "Deploy" };
@id("group")
permit (principal, action in Temporal::Action::"read", resource in Temporal::Namespace::"payments");
@id("mixed-list")
permit (principal, action in [Temporal::Action::"worker", Temporal::Action::"SignalWorkflowExecution"], resource)
when { principal.hasTag("team") && principal.getTag("team") == "payments" };
@id("forbid-admin")
forbid (principal, action in Temporal::Action::"admin", resource)
unless { principal in Temporal::Group::"okta:admins" };
@id("forbid-one")
forbid (principal, action == Temporal::Action::"TerminateWorkflowExecution", resource)
when { resource has id && resource.id like "prod-*" };
"#;

    fn engine(policies: &str) -> PolicyEngine {
        PolicyEngine::from_sources(
            Path::new("schema.cedarschema"),
            &generated_schema(),
            &[(PathBuf::from("test.cedar"), policies.to_owned())],
        )
        .unwrap()
    }

    fn principal(groups: &[&str], tags: &[(&str, &str)]) -> Principal {
        Principal::new(
            PrincipalKind::User,
            "okta",
            "u1",
            groups.iter().map(|g| g.to_string()).collect(),
            tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            SystemTime::now() + Duration::from_secs(60),
        )
    }

    fn call(kind: ResourceKind, workflow_id: Option<&str>, workflow_type: Option<&str>) -> Call {
        Call {
            resource: Resource {
                kind,
                namespace: Some("payments".into()),
                workflow_id: workflow_id.map(Into::into),
                workflow_type: workflow_type.map(Into::into),
                task_queue: Some("q".into()),
                schedule_id: Some("s".into()),
            },
            signal_name: None,
            query_type: None,
            update_name: None,
            has_task_token: false,
            namespace_id: None,
        }
    }

    #[test]
    fn each_action_slice_decides_exactly_as_the_whole_set() {
        let engine = engine(SCOPES);
        let principals = [principal(&[], &[]), principal(&["admins"], &[]), principal(&[], &[("team", "payments")])];
        let mut allowed = 0;
        for spec in catalog::all_actions().filter(|spec| spec.access != Access::Public) {
            let kind = match spec.resource.entity_type() {
                "Cluster" => ResourceKind::Cluster,
                "Namespace" => ResourceKind::Namespace,
                "Workflow" => ResourceKind::Workflow,
                "TaskQueue" => ResourceKind::TaskQueue,
                _ => ResourceKind::Schedule,
            };
            for call in [call(kind, Some("prod-1"), Some("Deploy")), call(kind, Some("dev-1"), None)] {
                for principal in &principals {
                    let path = format!("/svc/{}", spec.name);
                    let sliced = engine.evaluate(principal, spec, &path, &call);
                    let whole = engine.evaluate_with(&engine.policies, principal, spec, &path, &call);
                    assert_eq!(sliced, whole, "{} for {}", spec.name, principal.id);
                    allowed += usize::from(sliced.allowed);
                }
            }
        }
        assert!(allowed > 100, "the test set exercises allows too ({allowed})");
    }

    #[test]
    fn a_slice_holds_only_the_policies_whose_action_scope_matches() {
        let engine = engine(SCOPES);
        let ids = |action: &str| {
            let mut ids: Vec<String> = engine.actions[action].policies.policies().map(|p| p.id().to_string()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids("StartWorkflowExecution"), ["any-action", "one-action"]);
        assert_eq!(ids("DescribeNamespace"), ["any-action", "group"]);
        assert_eq!(ids("PollActivityTaskQueue"), ["any-action", "mixed-list"]);
        assert_eq!(ids("SignalWorkflowExecution"), ["any-action", "mixed-list"]);
        assert_eq!(ids("TerminateWorkflowExecution"), ["any-action", "forbid-one"]);
    }

    #[test]
    fn cached_decisions_are_reused_until_the_policy_set_changes() {
        let permissive = engine(r#"@id("all") permit (principal, action, resource);"#);
        let strict = engine(r#"@id("none") forbid (principal, action, resource);"#);
        let who = principal(&[], &[]);
        let spec = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/DescribeNamespace");
        let describe = call(ResourceKind::Namespace, None, None);
        let first = permissive.authorize(&who, spec, "/m", &describe);
        let again = permissive.authorize(&who, spec, "/m", &describe);
        assert!(first.allowed);
        assert!(Arc::ptr_eq(&first, &again), "the second identical call is a cache hit");
        let other_path = permissive.authorize(&who, spec, "/other", &describe);
        assert!(!Arc::ptr_eq(&first, &other_path), "the method is part of the key");
        let under_strict = strict.authorize(&who, spec, "/m", &describe);
        assert!(!under_strict.allowed, "a new policy set is never answered from the old set's cache");
        assert_eq!(under_strict.reasons, ["none"]);
    }

    #[test]
    fn the_cache_is_bounded_and_keyed_by_every_call_field() {
        let engine = engine(r#"@id("deploys") permit (principal, action, resource) when { resource has type };"#);
        let who = principal(&[], &[]);
        let spec = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution");
        for n in 0..3 * DECISION_CACHE_SIZE {
            let id = format!("wf-{n}");
            assert!(engine.authorize(&who, spec, "/m", &call(ResourceKind::Workflow, Some(&id), Some("T"))).allowed);
            assert!(!engine.authorize(&who, spec, "/m", &call(ResourceKind::Workflow, Some(&id), None)).allowed);
        }
        let cached = who.decisions.state.lock().unwrap().entries.len();
        assert_eq!(cached, DECISION_CACHE_SIZE);
    }

    #[test]
    fn may_permit_is_true_exactly_when_a_permit_scope_admits_the_principal() {
        let engine = engine(
            r#"
@id("deployers-start")
permit (principal in Temporal::Group::"okta:deployers", action == Temporal::Action::"StartWorkflowExecution", resource);
@id("one-user-signal")
permit (principal == Temporal::User::"okta:u1", action == Temporal::Action::"SignalWorkflowExecution", resource)
when { false };
@id("users-read")
permit (principal is Temporal::User, action in Temporal::Action::"read", resource);
@id("ci-in-group-terminate")
permit (principal is Temporal::CiJob in Temporal::Group::"okta:deployers", action == Temporal::Action::"TerminateWorkflowExecution", resource);
@id("nobody-resets")
forbid (principal, action == Temporal::Action::"ResetWorkflowExecution", resource);
"#,
        );
        let spec =
            |method: &str| catalog::lookup(&format!("/temporal.api.workflowservice.v1.WorkflowService/{method}"));
        let deployer = principal(&["deployers"], &[]);
        let nobody = principal(&[], &[]);
        let other_issuer_group = {
            // A group of the same name from another issuer is another group.
            let mut p = principal(&[], &[]);
            p.issuer = "github".into();
            p.groups = vec!["deployers".into()];
            p
        };
        assert!(engine.may_permit(&deployer, spec("StartWorkflowExecution")));
        assert!(!engine.may_permit(&nobody, spec("StartWorkflowExecution")));
        assert!(!engine.may_permit(&other_issuer_group, spec("StartWorkflowExecution")));
        // Conditions are not evaluated: a `when { false }` still counts (an over-approximation).
        assert!(engine.may_permit(&nobody, spec("SignalWorkflowExecution")), "principal == okta:u1");
        assert!(engine.may_permit(&nobody, spec("DescribeNamespace")), "principal is User");
        assert!(!engine.may_permit(&deployer, spec("TerminateWorkflowExecution")), "a User is not a CiJob");
        assert!(!engine.may_permit(&deployer, spec("ResetWorkflowExecution")), "only a forbid names it");
        assert!(!engine.may_permit(&deployer, spec("DeleteNamespace")));
    }

    #[test]
    fn deeply_nested_policies_are_refused_before_cedar_parses_them() {
        let nested = |depth: usize| {
            format!(
                "@id(\"deep\")\npermit (principal, action, resource)\nwhen {{ {}true{} }};\n",
                "(".repeat(depth),
                ")".repeat(depth)
            )
        };
        let load = |text: String| {
            PolicyEngine::from_sources(
                Path::new("schema.cedarschema"),
                &generated_schema(),
                &[(PathBuf::from("deep.cedar"), text)],
            )
        };
        // The deepest allowed parses on a test thread's 2 MiB stack, like a reload thread's.
        assert!(load(nested(MAX_POLICY_NESTING - 1)).is_ok());
        let Err(PolicyError::Invalid(problems)) = load(nested(100_000)) else { panic!("a 100 000-deep policy loaded") };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, Some(3));
        assert!(problems[0].message.contains("nest deeper than 32"), "{}", problems[0]);
        // Brackets inside strings and comments do not count.
        let quoted = format!(
            "// {}\n@id(\"q\")\npermit (principal, action, resource)\nwhen {{ \"{}\" == \"x\" }};\n",
            "(".repeat(99),
            "[".repeat(99)
        );
        assert!(load(quoted).is_ok());
    }
}
