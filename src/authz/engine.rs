//! The policy engine: a loaded, validated set with its per-action slices, and the decisions
//! it makes (see the module docs of `authz` for the slices and the decision cache).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity, EntityTypeName,
    EntityUid, PolicyId, PolicySet, PrincipalConstraint, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};
use miette::Diagnostic;

use super::ISSUE_CREDENTIAL;
use super::cache::{DecisionCache, SharedDecisions};
use super::lint::lint;
use super::load::{
    MAX_POLICY_NESTING, PolicyError, PolicyProblem, line_column, policy_files, problem, too_deep, version_of,
};
use super::schema::{SCHEMA_FILE, missing_actions};
use crate::authn::Principal;
use crate::authn::principal::entity_uid;
use crate::credential::TOKEN_ENDPOINT;
use crate::temporal::catalog::{self, Access, MethodSpec};
use crate::temporal::{Call, ResourceKind};

/// Reasons recorded for calls that need no policy (health checks, `GetSystemInfo`).
pub const PUBLIC_REASON: &str = "flowgate:public-method";

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
    /// Decisions shared by principals the set's policies cannot tell apart; `None` when a
    /// policy names a tag by anything but a literal (see `cache`).
    shared: Option<SharedDecisions>,
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

impl Decision {
    /// The decision on a public method: allowed without asking any policy.
    pub fn public() -> Arc<Decision> {
        static PUBLIC: LazyLock<Arc<Decision>> = LazyLock::new(|| {
            Arc::new(Decision { allowed: true, reasons: vec![PUBLIC_REASON.to_owned()], errors: vec![] })
        });
        PUBLIC.clone()
    }
}

/// An action's entity (its access group as parent) and the slice of the set it can match.
struct ActionPolicies {
    uid: EntityUid,
    entity: Entity,
    policies: PolicySet,
    /// The principal scopes of the slice's `permit` policies: who could ever be allowed.
    permit_scopes: Vec<PrincipalConstraint>,
    /// Whether some policy of the slice can observe a workflow's id (its `id` attribute, or its
    /// entity uid, which embeds the id). When none can, the decision of a call is the same for
    /// every workflow id, and the decision cache keys it without one: a client starting
    /// workflows with fresh ids is decided by Cedar once, not on every start.
    reads_workflow_id: bool,
}

/// Whether `policy` can observe a resource's `id` attribute or its entity uid. Conservative:
/// every use of `resource` other than reading (or testing for) another attribute, `is`, or
/// `in` a namespace or the cluster, counts as reading it.
fn reads_resource_id(policy: &cedar_policy::Policy) -> bool {
    use serde_json::Value;

    fn is_resource(expr: &Value) -> bool {
        expr.get("Var").is_some_and(|var| var == "resource")
    }
    /// A namespace or the cluster: ancestors of every resource, whatever its id.
    fn is_container(entity: &Value) -> bool {
        let entity = entity.get("__entity").unwrap_or(entity);
        matches!(entity.get("type").and_then(Value::as_str), Some("Temporal::Namespace" | "Temporal::Cluster"))
    }
    fn reads(expr: &Value) -> bool {
        match expr {
            Value::Object(object) => {
                if is_resource(expr) {
                    return true;
                }
                for (op, body) in object {
                    let left_is_resource = body.get("left").is_some_and(is_resource);
                    let safe = match op.as_str() {
                        "." | "has" if left_is_resource => body.get("attr").is_some_and(|attr| attr != "id"),
                        "is" if left_is_resource => body
                            .get("in")
                            .is_none_or(|within| within.get("Value").is_some_and(is_container) && !reads(within)),
                        "in" if left_is_resource => {
                            body.get("right").and_then(|r| r.get("Value")).is_some_and(is_container)
                        }
                        _ => false,
                    };
                    if safe {
                        continue;
                    }
                    if reads(body) {
                        return true;
                    }
                }
                false
            }
            Value::Array(items) => items.iter().any(reads),
            _ => false,
        }
    }
    let Ok(est) = policy.to_json() else { return true };
    let scope = &est["resource"];
    let scope_reads = match scope["op"].as_str() {
        Some("All") => false,
        Some("in") => !is_container(&scope["entity"]),
        Some("is") => scope.get("in").is_some_and(|within| !is_container(&within["entity"])),
        _ => true,
    };
    scope_reads || est["conditions"].as_array().is_none_or(|clauses| clauses.iter().any(|c| reads(&c["body"])))
}

/// The principal tags `policies` can read: the literal names of every `getTag` and `hasTag`
/// in them, whatever entity they are asked of (conservative). `None` when some tag is named by
/// any other expression, so that which tags a policy reads is not known before it runs.
fn observed_tags(policies: &PolicySet) -> Option<BTreeSet<String>> {
    use serde_json::Value;

    fn walk(expr: &Value, tags: &mut BTreeSet<String>) -> Option<()> {
        match expr {
            Value::Object(object) => {
                for (op, body) in object {
                    if op == "getTag" || op == "hasTag" {
                        let name = body.get("right").and_then(|r| r.get("Value")).and_then(Value::as_str)?;
                        tags.insert(name.to_owned());
                    }
                    walk(body, tags)?;
                }
                Some(())
            }
            Value::Array(items) => items.iter().try_for_each(|item| walk(item, tags)),
            _ => Some(()),
        }
    }
    let mut tags = BTreeSet::new();
    for policy in policies.policies() {
        let est = policy.to_json().ok()?;
        est["conditions"].as_array()?.iter().try_for_each(|clause| walk(&clause["body"], &mut tags))?;
    }
    Some(tags)
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

pub(crate) fn action_uid(name: &str) -> EntityUid {
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
            shared: observed_tags(&policies).map(SharedDecisions::new),
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

    /// Decides one call by Cedar, without a cache (`flowgate policy test`, `explain`, tests).
    pub fn authorize(
        &self,
        principal: &Principal,
        spec: &'static MethodSpec,
        method_path: &str,
        call: &Call,
    ) -> Arc<Decision> {
        Arc::new(self.evaluate(principal, spec, method_path, call))
    }

    /// Decides one call: from `cache` (the principal's, kept with its session) when the same
    /// call was decided under this policy set before, otherwise by Cedar. The shadow set keeps a
    /// cache of its own, so the two sets do not evict each other's decisions.
    pub fn authorize_in(
        &self,
        cache: &DecisionCache,
        principal: &Principal,
        spec: &'static MethodSpec,
        method_path: &str,
        call: &Call,
    ) -> Arc<Decision> {
        let by_id = self.actions.get(spec.name).is_none_or(|action| action.reads_workflow_id);
        if let Some(decision) = cache.get(self.generation, spec.name, method_path, call, by_id) {
            return decision;
        }
        // A new token of a principal the policies cannot tell from one seen before (the next
        // job of the same pipeline) is decided as that one was.
        let decide = || Arc::new(self.evaluate(principal, spec, method_path, call));
        let decision = match &self.shared {
            Some(shared) => shared.get_or_decide(principal, spec.name, method_path, call, by_id, decide),
            None => decide(),
        };
        cache.insert(self.generation, spec.name, method_path, call, by_id, decision.clone());
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
            ("method".to_owned(), string(TOKEN_ENDPOINT)),
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
            let reads_workflow_id = slice.policies().any(reads_resource_id);
            let entity = Entity::new_no_attrs(uid.clone(), parents);
            (name, ActionPolicies { uid, entity, policies: slice, permit_scopes, reads_workflow_id })
        })
        .collect()
}

/// The context of a call: `method`, and the signal, query or update name where it has one.
pub fn call_context<'a>(method_path: &'a str, call: &'a Call) -> impl Iterator<Item = (&'static str, &'a str)> {
    [
        ("signal_name", &call.signal_name),
        ("query_type", &call.query_type),
        ("update_name", &call.update_name),
        ("activity_type", &call.activity_type),
        ("nexus_service", &call.nexus_service),
        ("nexus_operation", &call.nexus_operation),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.as_deref().map(|value| (key, value)))
    .chain(call.implied_by.map(|action| ("implied_by", action)))
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
        ResourceKind::NexusEndpoint => {
            attrs.push(("name".to_owned(), string(resource.endpoint.as_deref().unwrap_or_default())));
            scoped(resource.endpoint.as_deref())
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::authz::cache::SHARED_CACHE_BYTES;
    use crate::authz::{DECISION_CACHE_SIZE, generated_schema};
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
        principal_as("u1", groups, tags)
    }

    fn principal_as(sub: &str, groups: &[&str], tags: &[(&str, &str)]) -> Principal {
        Principal::new(
            PrincipalKind::User,
            "okta",
            sub,
            groups.iter().map(|g| g.to_string()).collect(),
            tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            SystemTime::now() + Duration::from_secs(60),
        )
    }

    fn call(kind: ResourceKind, workflow_id: Option<&str>, workflow_type: Option<&str>) -> Call {
        Call::new(Resource {
            kind,
            namespace: Some("payments".into()),
            workflow_id: workflow_id.map(Into::into),
            workflow_type: workflow_type.map(Into::into),
            task_queue: Some("q".into()),
            schedule_id: Some("s".into()),
            endpoint: None,
        })
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
        let decisions = DecisionCache::default();
        let first = permissive.authorize_in(&decisions, &who, spec, "/m", &describe);
        let again = permissive.authorize_in(&decisions, &who, spec, "/m", &describe);
        assert!(first.allowed);
        assert!(Arc::ptr_eq(&first, &again), "the second identical call is a cache hit");
        let other_path = permissive.authorize_in(&decisions, &who, spec, "/other", &describe);
        assert!(!Arc::ptr_eq(&first, &other_path), "the method is part of the key");
        let under_strict = strict.authorize_in(&decisions, &who, spec, "/m", &describe);
        assert!(!under_strict.allowed, "a new policy set is never answered from the old set's cache");
        assert_eq!(under_strict.reasons, ["none"]);
    }

    #[test]
    fn the_cache_is_bounded_and_keyed_by_every_call_field() {
        // `resource has id`: the policy observes the id, so the id is part of every key.
        let engine = engine(
            r#"@id("deploys") permit (principal, action, resource) when { resource has type && resource has id };"#,
        );
        let who = principal(&[], &[]);
        let spec = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution");
        let decisions = DecisionCache::default();
        for n in 0..3 * DECISION_CACHE_SIZE {
            let id = format!("wf-{n}");
            assert!(
                engine
                    .authorize_in(&decisions, &who, spec, "/m", &call(ResourceKind::Workflow, Some(&id), Some("T")))
                    .allowed
            );
            assert!(
                !engine
                    .authorize_in(&decisions, &who, spec, "/m", &call(ResourceKind::Workflow, Some(&id), None))
                    .allowed
            );
        }
        let cached = decisions.len();
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

    /// Policies that observe a workflow's id in every way Cedar allows, each alone on its action,
    /// and policies that cannot observe it.
    const BY_ID: &str = r#"
@id("id-like")
permit (principal, action == Temporal::Action::"SignalWorkflowExecution", resource) when { resource has id && resource.id like "prod-*" };
@id("uid-scope")
permit (principal, action == Temporal::Action::"TerminateWorkflowExecution", resource == Temporal::Workflow::"payments/prod-1");
@id("has-id")
forbid (principal, action == Temporal::Action::"RequestCancelWorkflowExecution", resource) unless { resource has id && resource.id == "prod-1" };
@id("cancel-any")
permit (principal, action == Temporal::Action::"RequestCancelWorkflowExecution", resource);
@id("uid-in-condition")
permit (principal, action == Temporal::Action::"QueryWorkflow", resource) when { resource in Temporal::Workflow::"payments/prod-1" };
@id("uid-equality")
permit (principal, action == Temporal::Action::"DescribeWorkflowExecution", resource) when { resource == Temporal::Workflow::"payments/prod-1" };
@id("type-only")
permit (principal, action == Temporal::Action::"StartWorkflowExecution", resource in Temporal::Namespace::"payments") when { resource is Temporal::Workflow && resource has type && resource.type == "Deploy" && resource in Temporal::Namespace::"payments" };
@id("no-resource")
permit (principal, action == Temporal::Action::"ResetWorkflowExecution", resource);
"#;

    #[test]
    fn a_decision_keyed_without_the_workflow_id_is_the_decision_of_every_id() {
        let engine = engine(BY_ID);
        let who = principal(&[], &[]);
        let spec =
            |method: &str| catalog::lookup(&format!("/temporal.api.workflowservice.v1.WorkflowService/{method}"));
        let reads = |method: &str| engine.actions[method].reads_workflow_id;
        for method in [
            "SignalWorkflowExecution",
            "TerminateWorkflowExecution",
            "RequestCancelWorkflowExecution",
            "QueryWorkflow",
            "DescribeWorkflowExecution",
        ] {
            assert!(reads(method), "{method}: its policy observes the id");
        }
        assert!(!reads("StartWorkflowExecution") && !reads("ResetWorkflowExecution"));
        // Whatever the key, the cache answers exactly what Cedar would, id by id.
        for method in [
            "SignalWorkflowExecution",
            "TerminateWorkflowExecution",
            "RequestCancelWorkflowExecution",
            "QueryWorkflow",
            "DescribeWorkflowExecution",
            "StartWorkflowExecution",
            "ResetWorkflowExecution",
        ] {
            let decisions = DecisionCache::default();
            let mut allowed = 0;
            for id in ["prod-1", "dev-1", "prod-2", "prod-1", "dev-1"] {
                for workflow_type in [Some("Deploy"), None] {
                    let call = call(ResourceKind::Workflow, Some(id), workflow_type);
                    let cached = engine.authorize_in(&decisions, &who, spec(method), "/m", &call);
                    assert_eq!(*cached, engine.evaluate(&who, spec(method), "/m", &call), "{method} {id}");
                    allowed += usize::from(cached.allowed);
                }
            }
            assert!(allowed > 0 && allowed < 10 || method == "ResetWorkflowExecution", "{method}: {allowed}");
        }
        // Starts with fresh ids share one decision: Cedar is asked once.
        let decisions = DecisionCache::default();
        let first = engine.authorize_in(
            &decisions,
            &who,
            spec("StartWorkflowExecution"),
            "/m",
            &call(ResourceKind::Workflow, Some("a"), Some("Deploy")),
        );
        let second = engine.authorize_in(
            &decisions,
            &who,
            spec("StartWorkflowExecution"),
            "/m",
            &call(ResourceKind::Workflow, Some("b"), Some("Deploy")),
        );
        assert!(first.allowed && Arc::ptr_eq(&first, &second));
        assert_eq!(decisions.len(), 1);
    }

    /// Policies that read two tags, the groups and the `sub`: whatever else a token carries is
    /// invisible to them.
    const TAGS: &str = r#"
@id("team-not-dev")
permit (principal, action in Temporal::Action::"read", resource)
when {
  principal.hasTag("team") && principal.getTag("team") == "payments" &&
  !(principal.hasTag("env") && principal.getTag("env") == "dev")
};
@id("admins")
permit (principal in Temporal::Group::"okta:admins", action, resource);
@id("by-sub")
permit (principal, action == Temporal::Action::"StartWorkflowExecution", resource)
when { principal.sub == "u2" };
@id("not-prod")
forbid (principal, action == Temporal::Action::"DescribeNamespace", resource)
when { principal.hasTag("env") && principal.getTag("env") == "prod" };
@id("no-conditions")
permit (principal, action == Temporal::Action::"ListNamespaces", resource);
"#;

    #[test]
    fn the_tags_a_set_observes_are_its_literal_tag_names() {
        let tags = |policies: &str| engine(policies).shared.as_ref().map(|s| s.observed_tags.clone());
        assert_eq!(tags(TAGS), Some(vec!["env".to_owned(), "team".to_owned()]));
        assert_eq!(tags(SCOPES), Some(vec!["team".to_owned()]));
        assert_eq!(tags(r#"@id("all") permit (principal, action, resource);"#), Some(vec![]));
        // A tag named by an expression: which tags matter is known only when it runs.
        let computed = r#"@id("computed") permit (principal, action, resource)
            when { principal.hasTag(principal.sub) };"#;
        assert_eq!(tags(computed), None);
        let nested = r#"@id("nested") permit (principal, action, resource)
            when { principal.hasTag("b") && principal.hasTag(principal.getTag("b")) };"#;
        assert_eq!(tags(nested), None);
    }

    #[test]
    fn new_tokens_that_policies_cannot_tell_apart_share_decisions_and_only_they_do() {
        let engine = engine(TAGS);
        let spec =
            |method: &str| catalog::lookup(&format!("/temporal.api.workflowservice.v1.WorkflowService/{method}"));
        let methods = ["DescribeNamespace", "DescribeWorkflowExecution", "StartWorkflowExecution", "ListNamespaces"];
        let calls = |method: &str| match method {
            "DescribeNamespace" | "ListNamespaces" => vec![call(ResourceKind::Namespace, None, None)],
            _ => vec![
                call(ResourceKind::Workflow, Some("a"), Some("Deploy")),
                call(ResourceKind::Workflow, Some("b"), None),
            ],
        };
        // Principals by sub, groups, observed tags (team, env) and unobserved ones (run_id, jti).
        let mut principals = Vec::new();
        for sub in ["u1", "u2"] {
            for groups in [&[][..], &["admins"][..], &["admins", "devs"][..]] {
                for team in [None, Some("payments"), Some("search")] {
                    for env in [None, Some("dev"), Some("prod")] {
                        for run in ["1", "2"] {
                            let mut tags = vec![("run_id", run), ("jti", run)];
                            tags.extend(team.map(|t| ("team", t)));
                            tags.extend(env.map(|e| ("env", e)));
                            principals.push(principal_as(sub, groups, &tags));
                        }
                    }
                }
            }
        }
        let (mut shared, mut allowed, mut denied) = (0, 0, 0);
        for method in methods {
            for call in calls(method) {
                let mut seen: Vec<(&Principal, Arc<Decision>)> = Vec::new();
                for who in &principals {
                    // Each principal a new token: an empty cache of its own.
                    let decision = engine.authorize_in(&DecisionCache::default(), who, spec(method), "/m", &call);
                    assert_eq!(*decision, engine.evaluate(who, spec(method), "/m", &call), "{method} {}", who.id);
                    allowed += usize::from(decision.allowed);
                    denied += usize::from(!decision.allowed);
                    let observed = |p: &Principal| {
                        (p.id.clone(), p.groups.clone(), p.tags.get("team").cloned(), p.tags.get("env").cloned())
                    };
                    for (earlier, earlier_decision) in &seen {
                        let same = Arc::ptr_eq(earlier_decision, &decision);
                        assert_eq!(same, observed(earlier) == observed(who), "{method}: {} vs {}", earlier.id, who.id);
                        shared += usize::from(same);
                    }
                    seen.push((who, decision));
                }
            }
        }
        assert!(shared > 100 && allowed > 50 && denied > 50, "shared {shared}, allowed {allowed}, denied {denied}");
    }

    #[test]
    fn a_set_that_names_tags_by_expression_shares_nothing() {
        let engine =
            engine(r#"@id("computed") permit (principal, action, resource) when { principal.hasTag(principal.sub) };"#);
        assert!(engine.shared.is_none());
        let spec = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/DescribeNamespace");
        let describe = call(ResourceKind::Namespace, None, None);
        let with = principal(&[], &[("u1", "x")]);
        let without = principal(&[], &[("other", "x")]);
        let first = engine.authorize_in(&DecisionCache::default(), &with, spec, "/m", &describe);
        let second = engine.authorize_in(&DecisionCache::default(), &without, spec, "/m", &describe);
        assert!(first.allowed && !second.allowed);
    }

    #[test]
    fn the_shared_cache_is_bounded_by_its_key_bytes() {
        let engine = engine(r#"@id("team") permit (principal, action, resource) when { principal.hasTag("team") };"#);
        let spec = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/DescribeNamespace");
        let describe = call(ResourceKind::Namespace, None, None);
        // Principals with 64 KiB observed tags each: 1024 of them are four times the budget.
        let big = "x".repeat(64 * 1024);
        for n in 0..1024 {
            let team = format!("{n}{big}");
            engine.authorize_in(&DecisionCache::default(), &principal(&[], &[("team", &team)]), spec, "/m", &describe);
        }
        let held = engine.shared.as_ref().unwrap().len();
        assert!(held > 0 && held * 64 * 1024 <= SHARED_CACHE_BYTES as usize, "{held} entries of 64 KiB");
    }
}
