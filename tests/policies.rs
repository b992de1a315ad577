//! The example policies in `policies/` and the schema they are validated against.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use flowgate::authn::Principal;
use flowgate::authz::{PolicyEngine, generated_schema};
use flowgate::config::PrincipalKind;
use flowgate::temporal::{Call, Resource, ResourceKind, lookup};

fn engine() -> PolicyEngine {
    PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).expect("example policies are valid")
}

fn principal(kind: PrincipalKind, issuer: &str, sub: &str, groups: &[&str], tags: &[(&str, &str)]) -> Principal {
    let tags: BTreeMap<String, String> = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let groups = groups.iter().map(|g| g.to_string()).collect();
    Principal::new(kind, issuer, sub, groups, tags, SystemTime::now() + Duration::from_secs(300))
}

fn call(
    kind: ResourceKind,
    namespace: &str,
    workflow_type: Option<&str>,
    workflow_id: Option<&str>,
    task_queue: Option<&str>,
) -> Call {
    Call {
        resource: Resource {
            kind,
            namespace: Some(namespace.into()),
            workflow_id: workflow_id.map(Into::into),
            workflow_type: workflow_type.map(Into::into),
            task_queue: task_queue.map(Into::into),
            schedule_id: None,
        },
        signal_name: None,
        query_type: None,
        update_name: None,
        has_task_token: false,
        namespace_id: None,
    }
}

fn decide(engine: &PolicyEngine, who: &Principal, method: &str, what: &Call) -> (bool, Vec<String>) {
    let path = format!("/temporal.api.workflowservice.v1.WorkflowService/{method}");
    let spec = lookup(&path);
    assert_eq!(spec.name, method, "{method} is in the catalog");
    let decision = engine.authorize(who, spec, &path, what);
    assert!(decision.errors.is_empty(), "{method}: {:?}", decision.errors);
    (decision.allowed, decision.reasons.clone())
}

#[test]
fn the_checked_in_schema_is_the_generated_one() {
    let checked_in =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schema.cedarschema")).unwrap();
    assert!(
        checked_in == generated_schema(),
        "policies/schema.cedarschema is stale: run `flowgate policy schema > policies/schema.cedarschema`"
    );
}

#[test]
fn okta_groups_get_what_the_policies_say() {
    let engine = engine();
    let alice = principal(PrincipalKind::User, "okta", "00u1", &["deployers"], &[]);
    let deploy = call(ResourceKind::Workflow, "payments", Some("DeployWorkflow"), Some("deploy-1"), Some("deploys"));
    assert_eq!(
        decide(&engine, &alice, "StartWorkflowExecution", &deploy),
        (true, vec!["okta-deployers-start-deploys".into()])
    );
    let drop = call(ResourceKind::Workflow, "payments", Some("DropTables"), Some("x"), Some("deploys"));
    assert!(!decide(&engine, &alice, "StartWorkflowExecution", &drop).0);
    let signal = call(ResourceKind::Workflow, "payments", None, Some("deploy-7"), None);
    assert!(decide(&engine, &alice, "SignalWorkflowExecution", &signal).0);
    let other_signal = call(ResourceKind::Workflow, "payments", None, Some("billing-7"), None);
    assert!(!decide(&engine, &alice, "SignalWorkflowExecution", &other_signal).0);
    let elsewhere = call(ResourceKind::Workflow, "analytics", Some("DeployWorkflow"), Some("deploy-1"), None);
    assert!(!decide(&engine, &alice, "StartWorkflowExecution", &elsewhere).0);

    let oncall = principal(PrincipalKind::User, "okta", "00u2", &["oncall"], &[]);
    let namespace = call(ResourceKind::Namespace, "payments", None, None, None);
    assert_eq!(
        decide(&engine, &oncall, "ListWorkflowExecutions", &namespace),
        (true, vec!["okta-oncall-read-only".into()])
    );
    assert!(!decide(&engine, &oncall, "StartWorkflowExecution", &deploy).0, "read-only");
    assert!(!decide(&engine, &oncall, "TerminateWorkflowExecution", &signal).0, "read-only");

    let admin = principal(PrincipalKind::User, "okta", "00u3", &["platform-admins"], &[]);
    assert!(decide(&engine, &admin, "UpdateNamespace", &namespace).0);
    // Same group name from another issuer is another group.
    let impostor = principal(PrincipalKind::User, "github", "x", &["platform-admins"], &[]);
    assert!(!decide(&engine, &impostor, "UpdateNamespace", &namespace).0);
}

#[test]
fn ci_jobs_are_narrowed_to_repository_environment_and_pipeline() {
    let engine = engine();
    let deploy = call(ResourceKind::Workflow, "payments", Some("DeployWorkflow"), Some("deploy-1"), Some("deploys"));
    let production = principal(
        PrincipalKind::CiJob,
        "github",
        "repo:acme/payments:environment:production",
        &[],
        &[("repository", "acme/payments"), ("environment", "production")],
    );
    assert_eq!(
        decide(&engine, &production, "StartWorkflowExecution", &deploy),
        (true, vec!["github-payments-production-deploys".into()])
    );
    let other = call(ResourceKind::Workflow, "payments", Some("DropTables"), Some("x"), None);
    assert!(!decide(&engine, &production, "StartWorkflowExecution", &other).0, "only deploys");
    let pull_request = principal(
        PrincipalKind::CiJob,
        "github",
        "repo:acme/payments:pull_request",
        &[],
        &[("repository", "acme/payments")],
    );
    assert!(!decide(&engine, &pull_request, "StartWorkflowExecution", &deploy).0, "no environment claim");
    let fork = principal(
        PrincipalKind::CiJob,
        "github",
        "repo:mallory/payments:environment:production",
        &[],
        &[("repository", "mallory/payments"), ("environment", "production")],
    );
    assert!(!decide(&engine, &fork, "StartWorkflowExecution", &deploy).0);

    let worker = principal(
        PrincipalKind::CiJob,
        "buildkite",
        "organization:acme:pipeline:payments-workers:ref:refs/heads/main:commit:c:step:w",
        &[],
        &[("pipeline_slug", "payments-workers"), ("build_branch", "main")],
    );
    let deploys = call(ResourceKind::TaskQueue, "payments", None, None, Some("deploys"));
    assert!(decide(&engine, &worker, "PollWorkflowTaskQueue", &deploys).0);
    let billing = call(ResourceKind::TaskQueue, "payments", None, None, Some("billing"));
    assert!(!decide(&engine, &worker, "PollActivityTaskQueue", &billing).0, "one queue only");
    assert!(!decide(&engine, &worker, "StartWorkflowExecution", &deploy).0, "workers do not start workflows");
    let branch = principal(
        PrincipalKind::CiJob,
        "buildkite",
        "organization:acme:pipeline:payments-workers:ref:refs/heads/feature",
        &[],
        &[("pipeline_slug", "payments-workers"), ("build_branch", "main-x")],
    );
    assert!(!decide(&engine, &branch, "PollWorkflowTaskQueue", &deploys).0, "`main-x` is not `main`");

    // The forbid wins even over the platform-admin permit.
    let admin_job = principal(PrincipalKind::CiJob, "okta", "ci", &["platform-admins"], &[]);
    let namespace = call(ResourceKind::Namespace, "payments", None, None, None);
    let (allowed, reasons) = decide(&engine, &admin_job, "UpdateNamespace", &namespace);
    assert!(!allowed);
    assert_eq!(reasons, vec!["no-ci-namespace-admin".to_owned()]);
}

#[test]
fn a_schema_missing_an_action_is_refused() {
    let schema = generated_schema().replace(
        "  action \"TerminateWorkflowExecution\" in [\"write\"] appliesTo { principal: [User, Service, CiJob, Worker], resource: [Workflow], context: CallContext };\n",
        "",
    );
    assert_ne!(schema, generated_schema(), "the line was removed");
    let error = PolicyEngine::from_sources(
        Path::new("schema.cedarschema"),
        &schema,
        &[("p.cedar".into(), "@id(\"a\") permit(principal, action, resource);".into())],
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(error.contains("does not declare action `TerminateWorkflowExecution`"), "{error}");
}

#[test]
fn policies_need_unique_ids() {
    let sources = [
        ("a.cedar".into(), "permit(principal, action, resource);".to_owned()),
        (
            "b.cedar".into(),
            "@id(\"x\") permit(principal, action, resource);\n@id(\"x\") forbid(principal, action, resource);"
                .to_owned(),
        ),
    ];
    let error = PolicyEngine::from_sources(Path::new("schema.cedarschema"), &generated_schema(), &sources)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("a.cedar") && error.contains("has no `@id"), "{error}");
    assert!(error.contains("b.cedar:2:1") && error.contains("`@id(\"x\")` is also used"), "{error}");
}
