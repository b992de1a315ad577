//! The grant of a flowgate credential: the limits it carries, enforced on every call before any
//! policy is asked.
//!
//! A worker credential names one namespace, one role and optionally task queues and workflow
//! types (`credential::Grant`). Cedar never sees a call outside them: a credential is a
//! ceiling the policies cannot raise, and it holds even if the policy set that allowed the
//! exchange is later widened. Where a call does not say enough to tell whether it is inside (a
//! workflow acted on by id names neither its queue nor its type), a limited grant refuses it:
//! fail closed.

use crate::credential::Grant;
use crate::temporal::catalog::{Access, MethodSpec};
use crate::temporal::{Call, ResourceKind};

/// Is this call inside `grant`? The message says what is outside.
pub fn check(grant: &Grant, spec: &MethodSpec, call: &Call) -> Result<(), String> {
    let resource = &call.resource;
    if resource.kind == ResourceKind::Cluster {
        return Err(format!("`{}` is cluster-wide; the credential is for namespace `{}`", spec.name, grant.namespace));
    }
    if resource.namespace.as_deref() != Some(grant.namespace.as_str()) {
        // Named by id: the caller is told about its id, not the name it resolved to.
        if let Some(id) = &call.namespace_id {
            return Err(format!("namespace id `{id}` is outside the credential's namespace `{}`", grant.namespace));
        }
        return Err(format!(
            "namespace `{}` is outside the credential's namespace `{}`",
            resource.namespace.as_deref().unwrap_or_default(),
            grant.namespace
        ));
    }
    if !grant.role.covers(spec.access) {
        return Err(format!("`{}` is outside the credential's role `{}`", spec.name, grant.role.as_str()));
    }
    if !grant.task_queues.is_empty() {
        if resource.kind == ResourceKind::NexusEndpoint {
            return Err(format!(
                "`{}` calls Nexus endpoint `{}`, whose queue is not named; a credential limited to task queues cannot call Nexus endpoints",
                spec.name,
                resource.endpoint.as_deref().unwrap_or_default()
            ));
        }
        match &resource.task_queue {
            Some(queue) if !grant.task_queues.contains(queue) => {
                return Err(format!("task queue `{queue}` is outside the credential's task queues"));
            }
            None if resource.kind == ResourceKind::TaskQueue => {
                return Err(format!("`{}` names no task queue; the credential is for named ones", spec.name));
            }
            _ => {}
        }
    }
    let limited = !grant.task_queues.is_empty() || !grant.workflow_types.is_empty();
    // A write on the namespace itself (a batch terminate, signal or reset; a workflow rule;
    // a deployment's current version) reaches every workflow of it, whatever its queue or
    // type: a grant limited to those cannot allow it. A worker's namespace-level calls
    // (responses by task token, heartbeats) act on its own tasks and stay open.
    if limited && resource.kind == ResourceKind::Namespace && spec.access == Access::Write {
        return Err(format!(
            "`{}` acts on the whole namespace; a credential limited to task queues or workflow types cannot",
            spec.name
        ));
    }
    // A call that acts on a workflow by id names neither its queue nor its type, so a grant
    // limited to those cannot tell whether the workflow is inside it: refused (fail closed).
    // The same for a schedule named by id alone (patching it triggers or backfills its
    // action). Reads stay open: every role may read its namespace.
    if matches!(resource.kind, ResourceKind::Workflow | ResourceKind::Schedule) && spec.access != Access::Read {
        let named = if resource.kind == ResourceKind::Schedule { "schedule" } else { "workflow" };
        if !grant.task_queues.is_empty() && resource.task_queue.is_none() {
            return Err(format!(
                "`{}` names a {} but not its task queue; a credential limited to task queues cannot act on workflows by id",
                spec.name, named
            ));
        }
        if !grant.workflow_types.is_empty() && resource.workflow_type.is_none() {
            return Err(format!(
                "`{}` names a {} but not its type; a credential limited to workflow types can only start workflows",
                spec.name, named
            ));
        }
    }
    if let Some(workflow_type) = &resource.workflow_type
        && !grant.workflow_types.is_empty()
        && !grant.workflow_types.contains(workflow_type)
    {
        return Err(format!("workflow type `{workflow_type}` is outside the credential's workflow types"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temporal::Resource;
    use crate::temporal::catalog::lookup;

    fn call(namespace: &str, queue: Option<&str>, workflow_type: Option<&str>) -> Call {
        Call::new(Resource {
            kind: if queue.is_some() { ResourceKind::TaskQueue } else { ResourceKind::Workflow },
            namespace: Some(namespace.into()),
            workflow_id: None,
            workflow_type: workflow_type.map(Into::into),
            task_queue: queue.map(Into::into),
            schedule_id: None,
            endpoint: None,
        })
    }

    fn spec(method: &str) -> &'static MethodSpec {
        lookup(&format!("/temporal.api.workflowservice.v1.WorkflowService/{method}"))
    }

    #[test]
    fn a_grant_limits_namespace_role_queues_and_types() {
        let grant = Grant::parse_scope("namespace:payments role:worker task_queue:deploys").unwrap();
        assert!(check(&grant, spec("PollActivityTaskQueue"), &call("payments", Some("deploys"), None)).is_ok());
        assert!(check(&grant, spec("DescribeNamespace"), &call("payments", None, None)).is_ok(), "reads are in");
        let err = check(&grant, spec("PollActivityTaskQueue"), &call("payments", Some("other"), None)).unwrap_err();
        assert!(err.contains("task queue `other`"), "{err}");
        let err = check(&grant, spec("PollActivityTaskQueue"), &call("billing", Some("deploys"), None)).unwrap_err();
        assert!(err.contains("namespace `billing`"), "{err}");
        let err = check(&grant, spec("StartWorkflowExecution"), &call("payments", None, Some("X"))).unwrap_err();
        assert!(err.contains("role `worker`"), "{err}");
        let writer = Grant::parse_scope("namespace:payments role:write workflow_type:Deploy").unwrap();
        assert!(check(&writer, spec("StartWorkflowExecution"), &call("payments", None, Some("Deploy"))).is_ok());
        let err = check(&writer, spec("StartWorkflowExecution"), &call("payments", None, Some("Drop"))).unwrap_err();
        assert!(err.contains("workflow type `Drop`"), "{err}");
        let err = check(&writer, spec("PollActivityTaskQueue"), &call("payments", Some("q"), None)).unwrap_err();
        assert!(err.contains("role `write`"), "{err}");
        // By-id calls name neither queue nor type: a limited grant refuses them.
        let err = check(&writer, spec("SignalWorkflowExecution"), &call("payments", None, None)).unwrap_err();
        assert!(err.contains("only start workflows"), "{err}");
        let err = check(&grant, spec("RespondActivityTaskCompletedById"), &call("payments", None, None)).unwrap_err();
        assert!(err.contains("cannot act on workflows by id"), "{err}");
        assert!(check(&grant, spec("DescribeWorkflowExecution"), &call("payments", None, None)).is_ok(), "reads stay");
    }

    #[test]
    fn a_limited_grant_refuses_writes_that_reach_the_whole_namespace() {
        let namespace =
            |name: &str| Call::new(Resource { namespace: Some(name.into()), ..Resource::new(ResourceKind::Namespace) });
        let schedule = |id: &str| {
            Call::new(Resource {
                namespace: Some("payments".into()),
                schedule_id: Some(id.into()),
                ..Resource::new(ResourceKind::Schedule)
            })
        };
        for scope in
            ["namespace:payments role:write task_queue:deploys", "namespace:payments role:write workflow_type:Deploy"]
        {
            let grant = Grant::parse_scope(scope).unwrap();
            // A batch terminate, signal or reset reaches every workflow of the namespace, whatever
            // its queue or type; so do workflow rules and deployment changes.
            for method in ["StartBatchOperation", "CreateWorkflowRule", "SetWorkerDeploymentCurrentVersion"] {
                let err = check(&grant, spec(method), &namespace("payments")).unwrap_err();
                assert!(err.contains("whole namespace"), "{scope}: {method}: {err}");
            }
            // A schedule named by id alone (patch: trigger or backfill its action; delete) names
            // neither the queue nor the type of the workflows it starts.
            for method in ["PatchSchedule", "DeleteSchedule"] {
                assert!(check(&grant, spec(method), &schedule("nightly-drop-tables")).is_err(), "{scope}: {method}");
            }
            // Reads of the namespace and its schedules stay open.
            assert!(check(&grant, spec("ListWorkflowExecutions"), &namespace("payments")).is_ok());
            assert!(check(&grant, spec("DescribeSchedule"), &schedule("s")).is_ok());
        }
        // A worker's own namespace-level calls (responses by task token, heartbeats) stay open.
        let worker = Grant::parse_scope("namespace:payments role:worker task_queue:deploys").unwrap();
        assert!(check(&worker, spec("RespondActivityTaskCompleted"), &namespace("payments")).is_ok());
        assert!(check(&worker, spec("RecordWorkerHeartbeat"), &namespace("payments")).is_ok());
        // An unlimited writer of the namespace may still start batches.
        let writer = Grant::parse_scope("namespace:payments role:write").unwrap();
        assert!(check(&writer, spec("StartBatchOperation"), &namespace("payments")).is_ok());
    }
}
