//! The method catalog: every RPC flowgate knows, what it is called in policies, and where its
//! request names the resource it touches.
//!
//! Each Temporal RPC becomes a Cedar action named exactly as the RPC
//! (`Temporal::Action::"StartWorkflowExecution"`) in one access group (`read`, `write`, `worker`,
//! `admin`, `cluster-admin`). Field paths are protobuf field numbers, outermost first; the test
//! suite checks every path against the descriptors of the Temporal API shipped with the Python
//! SDK, so a renumbered field cannot go unnoticed.
//!
//! Methods outside the catalog still have an action (`UnknownMethod`, `AdminService`,
//! `ServerReflection`), in no access group: only a policy that names them can permit them.

use std::collections::HashMap;
use std::sync::LazyLock;

pub const WORKFLOW_SERVICE: &str = "temporal.api.workflowservice.v1.WorkflowService";
pub const OPERATOR_SERVICE: &str = "temporal.api.operatorservice.v1.OperatorService";
pub const ADMIN_SERVICE: &str = "temporal.server.api.adminservice.v1.AdminService";
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
pub const REFLECTION_SERVICES: [&str; 2] =
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// The access group an action belongs to, as Temporal's own authorizer classes them, with
/// worker RPCs split out of `write` so a policy can grant polling without starting workflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
    Worker,
    Admin,
    ClusterAdmin,
    /// What a workflow does through its worker's commands beyond itself (child starts,
    /// activities, external signals and cancels, continue-as-new, Nexus operations). Not in
    /// `worker`: a grant to poll a queue is not a grant to act anywhere else.
    Command,
    /// Public calls (health checks, `GetSystemInfo`), allowed without a token.
    Public,
    /// In no group: only a policy naming the action permits it.
    Ungrouped,
}

impl Access {
    /// The Cedar action group, e.g. `Temporal::Action::"write"`.
    pub fn group(self) -> Option<&'static str> {
        match self {
            Access::Read => Some("read"),
            Access::Write => Some("write"),
            Access::Worker => Some("worker"),
            Access::Admin => Some("admin"),
            Access::ClusterAdmin => Some("cluster-admin"),
            Access::Command => Some("command"),
            Access::Public | Access::Ungrouped => None,
        }
    }
}

/// Field path: protobuf field numbers from the request message inwards.
pub type Path = &'static [u32];

/// Where a task queue is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskQueueRef {
    /// A `temporal.api.taskqueue.v1.TaskQueue` message (`name = 1, kind = 2, normal_name = 3`);
    /// a sticky queue is reported under its normal name.
    Message(Path),
    /// A plain string field holding the queue name.
    Name(Path),
}

/// What a request touches, and where its fields are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceSpec {
    /// `Temporal::Cluster::"cluster"`: no namespace.
    Cluster,
    /// `Temporal::Namespace`.
    Namespace { namespace: Path },
    /// `Temporal::Workflow`.
    Workflow {
        namespace: Path,
        workflow_id: Option<Path>,
        workflow_type: Option<Path>,
        task_queue: Option<TaskQueueRef>,
    },
    /// `Temporal::TaskQueue`.
    TaskQueue { namespace: Path, task_queue: TaskQueueRef },
    /// `Temporal::Schedule`.
    Schedule { namespace: Path, schedule_id: Path, workflow_type: Option<Path>, task_queue: Option<TaskQueueRef> },
    /// `Temporal::NexusEndpoint`: only asked for a workflow's `ScheduleNexusOperation` command.
    NexusEndpoint,
}

impl ResourceSpec {
    pub fn namespace_path(&self) -> Option<Path> {
        match *self {
            ResourceSpec::Cluster | ResourceSpec::NexusEndpoint => None,
            ResourceSpec::Namespace { namespace }
            | ResourceSpec::Workflow { namespace, .. }
            | ResourceSpec::TaskQueue { namespace, .. }
            | ResourceSpec::Schedule { namespace, .. } => Some(namespace),
        }
    }

    /// The kind of resource a request of this shape touches.
    pub fn kind(&self) -> super::ResourceKind {
        use super::ResourceKind;
        match self {
            ResourceSpec::Cluster => ResourceKind::Cluster,
            ResourceSpec::Namespace { .. } => ResourceKind::Namespace,
            ResourceSpec::Workflow { .. } => ResourceKind::Workflow,
            ResourceSpec::TaskQueue { .. } => ResourceKind::TaskQueue,
            ResourceSpec::Schedule { .. } => ResourceKind::Schedule,
            ResourceSpec::NexusEndpoint => ResourceKind::NexusEndpoint,
        }
    }

    /// The Cedar entity type of the resource (without the `Temporal::` namespace).
    pub fn entity_type(&self) -> &'static str {
        self.kind().entity_type()
    }
}

/// Everything flowgate knows about one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSpec {
    /// Fully qualified service, e.g. `temporal.api.workflowservice.v1.WorkflowService`.
    pub service: &'static str,
    /// The RPC name, which is also the Cedar action name.
    pub name: &'static str,
    pub access: Access,
    pub resource: ResourceSpec,
    /// `SignalWorkflowExecution.signal_name` and friends: these become context attributes.
    pub signal_name: Option<Path>,
    pub query_type: Option<Path>,
    pub update_name: Option<Path>,
    /// A `task_token` field: such a request with an empty namespace is denied, because the
    /// server would take the namespace from the unsigned token.
    pub task_token: Option<Path>,
    /// The server may hold this call open (worker polls, update polls, history long polls).
    pub long_poll: bool,
    /// A field naming the namespace by id instead of by name (`DescribeNamespace.id`,
    /// `DeleteNamespace.namespace_id`): the gateway resolves it to the name it authorizes
    /// (`crate::namespace_ids`).
    pub namespace_id: Option<Path>,
}

impl MethodSpec {
    /// The Cedar action id.
    pub fn action(&self) -> &'static str {
        self.name
    }
}

const fn spec(service: &'static str, name: &'static str, access: Access, resource: ResourceSpec) -> MethodSpec {
    MethodSpec {
        service,
        name,
        access,
        resource,
        signal_name: None,
        query_type: None,
        update_name: None,
        task_token: None,
        long_poll: false,
        namespace_id: None,
    }
}

/// A method that is not in the catalog: denied unless a policy names `UnknownMethod`.
pub static UNKNOWN_METHOD: MethodSpec = spec("", "UnknownMethod", Access::Ungrouped, ResourceSpec::Cluster);
/// Temporal's internal AdminService: denied unless a policy names `AdminService`.
pub static ADMIN_SERVICE_METHOD: MethodSpec =
    spec(ADMIN_SERVICE, "AdminService", Access::Ungrouped, ResourceSpec::Cluster);
/// gRPC server reflection: denied unless a policy names `ServerReflection`.
pub static REFLECTION_METHOD: MethodSpec =
    spec("grpc.reflection.v1.ServerReflection", "ServerReflection", Access::Ungrouped, ResourceSpec::Cluster);
/// `grpc.health.v1.Health/Check`: public.
pub static HEALTH_CHECK: MethodSpec = spec(HEALTH_SERVICE, "HealthCheck", Access::Public, ResourceSpec::Cluster);

// ---------------------------------------------------------------------------------------------
// The table. Keep it in the order of the services' proto files.
// ---------------------------------------------------------------------------------------------

use Access::*;

const fn ws(name: &'static str, access: Access, resource: ResourceSpec) -> MethodSpec {
    spec(WORKFLOW_SERVICE, name, access, resource)
}

const fn op(name: &'static str, access: Access, resource: ResourceSpec) -> MethodSpec {
    spec(OPERATOR_SERVICE, name, access, resource)
}

/// The builders below keep each table row to one line; they only fill in `MethodSpec` fields.
impl MethodSpec {
    const fn task_token(self, path: Path) -> Self {
        MethodSpec { task_token: Some(path), ..self }
    }

    const fn signal_name(self, path: Path) -> Self {
        MethodSpec { signal_name: Some(path), ..self }
    }

    const fn query_type(self, path: Path) -> Self {
        MethodSpec { query_type: Some(path), ..self }
    }

    const fn update_name(self, path: Path) -> Self {
        MethodSpec { update_name: Some(path), ..self }
    }

    const fn long_poll(self) -> Self {
        MethodSpec { long_poll: true, ..self }
    }

    const fn namespace_id(self, path: Path) -> Self {
        MethodSpec { namespace_id: Some(path), ..self }
    }
}

const fn ns(namespace: Path) -> ResourceSpec {
    ResourceSpec::Namespace { namespace }
}

/// A workflow named only by its id (a `WorkflowExecution` message's `workflow_id = 1`, or a
/// plain string).
const fn workflow(namespace: Path, workflow_id: Path) -> ResourceSpec {
    ResourceSpec::Workflow { namespace, workflow_id: Some(workflow_id), workflow_type: None, task_queue: None }
}

/// A new workflow: id, type (`WorkflowType.name`) and task queue message.
const fn new_workflow(namespace: Path, workflow_id: Path, workflow_type: Path, task_queue: Path) -> ResourceSpec {
    ResourceSpec::Workflow {
        namespace,
        workflow_id: Some(workflow_id),
        workflow_type: Some(workflow_type),
        task_queue: Some(TaskQueueRef::Message(task_queue)),
    }
}

const fn task_queue(namespace: Path, task_queue: TaskQueueRef) -> ResourceSpec {
    ResourceSpec::TaskQueue { namespace, task_queue }
}

const fn schedule(namespace: Path, schedule_id: Path) -> ResourceSpec {
    ResourceSpec::Schedule { namespace, schedule_id, workflow_type: None, task_queue: None }
}

/// A schedule with its action: `schedule = 3` -> `Schedule.action = 2` ->
/// `ScheduleAction.start_workflow = 1` ->
/// `NewWorkflowExecutionInfo{workflow_type = 2, task_queue = 3}`.
const SCHEDULE_WITH_ACTION: ResourceSpec = ResourceSpec::Schedule {
    namespace: &[1],
    schedule_id: &[2],
    workflow_type: Some(&[3, 2, 1, 2, 1]),
    task_queue: Some(TaskQueueRef::Message(&[3, 2, 1, 3])),
};

/// `ExecuteMultiOperation`: `operations = 2` is exactly `[start_workflow = 1, update_workflow = 2]`
/// (the server rejects anything else). The workflow id is read from the update operation: the
/// server requires it to equal the start operation's, and the update is the last element, so
/// no earlier (oneof-discarded) copy can override it. Type and task queue exist only on the start.
const MULTI_OPERATION: ResourceSpec = ResourceSpec::Workflow {
    namespace: &[1],
    workflow_id: Some(&[2, 2, 2, 1]),
    workflow_type: Some(&[2, 1, 3, 1]),
    task_queue: Some(TaskQueueRef::Message(&[2, 1, 4])),
};

const CLUSTER: ResourceSpec = ResourceSpec::Cluster;

#[rustfmt::skip]
pub static CATALOG: &[MethodSpec] = &[
    // -- temporal.api.workflowservice.v1.WorkflowService ------------------------------------
    ws("RegisterNamespace", Admin, ns(&[1])),
    // By name (`namespace = 1`) or by id (`id = 2`); the server refuses a request with both.
    ws("DescribeNamespace", Read, ns(&[1])).namespace_id(&[2]),
    ws("ListNamespaces", ClusterAdmin, CLUSTER),
    ws("UpdateNamespace", Admin, ns(&[1])),
    ws("DeprecateNamespace", Admin, ns(&[1])),
    ws("StartWorkflowExecution", Write, new_workflow(&[1], &[2], &[3, 1], &[4])),
    ws("ExecuteMultiOperation", Write, MULTI_OPERATION).update_name(&[2, 2, 5, 2, 2]),
    // Read, although workers call it too (paging a history into a cold cache); long-polls
    // when `wait_new_event` is set.
    ws("GetWorkflowExecutionHistory", Read, workflow(&[1], &[2, 1])).long_poll(),
    ws("GetWorkflowExecutionHistoryReverse", Read, workflow(&[1], &[2, 1])),
    ws("PollWorkflowTaskQueue", Worker, task_queue(&[1], TaskQueueRef::Message(&[2]))).long_poll(),
    ws("RespondWorkflowTaskCompleted", Worker, ns(&[9])).task_token(&[1]),
    ws("RespondWorkflowTaskFailed", Worker, ns(&[6])).task_token(&[1]),
    ws("PollActivityTaskQueue", Worker, task_queue(&[1], TaskQueueRef::Message(&[2]))).long_poll(),
    ws("RecordActivityTaskHeartbeat", Worker, ns(&[4])).task_token(&[1]),
    ws("RecordActivityTaskHeartbeatById", Worker, workflow(&[1], &[2])),
    ws("RespondActivityTaskCompleted", Worker, ns(&[4])).task_token(&[1]),
    // The ...ById calls also serve asynchronous completion from outside a worker process; they
    // do a worker's job all the same, so they stay in `worker`.
    ws("RespondActivityTaskCompletedById", Worker, workflow(&[1], &[2])),
    ws("RespondActivityTaskFailed", Worker, ns(&[4])).task_token(&[1]),
    ws("RespondActivityTaskFailedById", Worker, workflow(&[1], &[2])),
    ws("RespondActivityTaskCanceled", Worker, ns(&[4])).task_token(&[1]),
    ws("RespondActivityTaskCanceledById", Worker, workflow(&[1], &[2])),
    ws("RequestCancelWorkflowExecution", Write, workflow(&[1], &[2, 1])),
    ws("SignalWorkflowExecution", Write, workflow(&[1], &[2, 1])).signal_name(&[3]),
    ws("SignalWithStartWorkflowExecution", Write, new_workflow(&[1], &[2], &[3, 1], &[4])).signal_name(&[12]),
    ws("ResetWorkflowExecution", Write, workflow(&[1], &[2, 1])),
    ws("TerminateWorkflowExecution", Write, workflow(&[1], &[2, 1])),
    ws("DeleteWorkflowExecution", Write, workflow(&[1], &[2, 1])),
    ws("ListOpenWorkflowExecutions", Read, ns(&[1])),
    ws("ListClosedWorkflowExecutions", Read, ns(&[1])),
    ws("ListWorkflowExecutions", Read, ns(&[1])),
    ws("ListArchivedWorkflowExecutions", Read, ns(&[1])),
    ws("ScanWorkflowExecutions", Read, ns(&[1])),
    ws("CountWorkflowExecutions", Read, ns(&[1])),
    ws("GetSearchAttributes", ClusterAdmin, CLUSTER),
    ws("RespondQueryTaskCompleted", Worker, ns(&[6])).task_token(&[1]),
    ws("ResetStickyTaskQueue", Worker, workflow(&[1], &[2, 1])),
    // `task_queue = 7` is the worker's normal queue (`sticky_task_queue = 2` is its own).
    ws("ShutdownWorker", Worker, task_queue(&[1], TaskQueueRef::Name(&[7]))),
    ws("QueryWorkflow", Read, workflow(&[1], &[2, 1])).query_type(&[3, 1]),
    ws("DescribeWorkflowExecution", Read, workflow(&[1], &[2, 1])),
    ws("DescribeTaskQueue", Read, task_queue(&[1], TaskQueueRef::Message(&[2]))),
    ws("GetClusterInfo", ClusterAdmin, CLUSTER),
    ws("GetSystemInfo", Public, CLUSTER),
    ws("ListTaskQueuePartitions", Read, task_queue(&[1], TaskQueueRef::Message(&[2]))),
    ws("CreateSchedule", Write, SCHEDULE_WITH_ACTION),
    ws("DescribeSchedule", Read, schedule(&[1], &[2])),
    ws("UpdateSchedule", Write, SCHEDULE_WITH_ACTION),
    ws("PatchSchedule", Write, schedule(&[1], &[2])),
    ws("ListScheduleMatchingTimes", Read, schedule(&[1], &[2])),
    ws("DeleteSchedule", Write, schedule(&[1], &[2])),
    ws("ListSchedules", Read, ns(&[1])),
    ws("CountSchedules", Read, ns(&[1])),
    // Worker versioning and deployments: `write`, as in Temporal: CI pipelines that roll out
    // workers make these calls, and they change routing, not the namespace itself.
    ws("UpdateWorkerBuildIdCompatibility", Write, task_queue(&[1], TaskQueueRef::Name(&[2]))),
    ws("GetWorkerBuildIdCompatibility", Read, task_queue(&[1], TaskQueueRef::Name(&[2]))),
    ws("UpdateWorkerVersioningRules", Write, task_queue(&[1], TaskQueueRef::Name(&[2]))),
    ws("GetWorkerVersioningRules", Read, task_queue(&[1], TaskQueueRef::Name(&[2]))),
    // Names any number of task queues (`task_queues = 3`, repeated): namespace-wide.
    ws("GetWorkerTaskReachability", Read, ns(&[1])),
    ws("DescribeDeployment", Read, ns(&[1])),
    ws("DescribeWorkerDeploymentVersion", Read, ns(&[1])),
    ws("ListDeployments", Read, ns(&[1])),
    ws("GetDeploymentReachability", Read, ns(&[1])),
    ws("GetCurrentDeployment", Read, ns(&[1])),
    ws("SetCurrentDeployment", Write, ns(&[1])),
    ws("SetWorkerDeploymentCurrentVersion", Write, ns(&[1])),
    ws("DescribeWorkerDeployment", Read, ns(&[1])),
    ws("DeleteWorkerDeployment", Write, ns(&[1])),
    ws("DeleteWorkerDeploymentVersion", Write, ns(&[1])),
    ws("SetWorkerDeploymentRampingVersion", Write, ns(&[1])),
    ws("ListWorkerDeployments", Read, ns(&[1])),
    ws("CreateWorkerDeployment", Write, ns(&[1])),
    ws("CreateWorkerDeploymentVersion", Write, ns(&[1])),
    ws("UpdateWorkerDeploymentVersionComputeConfig", Write, ns(&[1])),
    // Only checks a compute config; attaches nothing.
    ws("ValidateWorkerDeploymentVersionComputeConfig", Read, ns(&[1])),
    ws("UpdateWorkerDeploymentVersionMetadata", Write, ns(&[1])),
    ws("SetWorkerDeploymentManager", Write, ns(&[1])),
    ws("UpdateWorkflowExecution", Write, workflow(&[1], &[2, 1])).update_name(&[5, 2, 2]),
    // A client waiting for an update's outcome, not a worker: `read`, as in Temporal.
    // `update_ref = 2` -> `UpdateRef.workflow_execution = 1` -> `workflow_id = 1`.
    ws("PollWorkflowExecutionUpdate", Read, workflow(&[1], &[2, 1, 1])).long_poll(),
    ws("StartBatchOperation", Write, ns(&[1])),
    ws("StopBatchOperation", Write, ns(&[1])),
    ws("DescribeBatchOperation", Read, ns(&[1])),
    ws("ListBatchOperations", Read, ns(&[1])),
    ws("PollNexusTaskQueue", Worker, task_queue(&[1], TaskQueueRef::Message(&[3]))).long_poll(),
    ws("RespondNexusTaskCompleted", Worker, ns(&[1])).task_token(&[3]),
    ws("RespondNexusTaskFailed", Worker, ns(&[1])).task_token(&[3]),
    ws("UpdateActivityOptions", Write, workflow(&[1], &[2, 1])),
    ws("UpdateWorkflowExecutionOptions", Write, workflow(&[1], &[2, 1])),
    ws("PauseActivity", Write, workflow(&[1], &[2, 1])),
    ws("UnpauseActivity", Write, workflow(&[1], &[2, 1])),
    ws("ResetActivity", Write, workflow(&[1], &[2, 1])),
    // Workflow rules act on every matching workflow of the namespace; Temporal classes them as
    // `write` like batch operations, which can already do as much.
    ws("CreateWorkflowRule", Write, ns(&[1])),
    ws("DescribeWorkflowRule", Read, ns(&[1])),
    ws("DeleteWorkflowRule", Write, ns(&[1])),
    ws("ListWorkflowRules", Read, ns(&[1])),
    ws("TriggerWorkflowRule", Write, workflow(&[1], &[2, 1])),
    ws("RecordWorkerHeartbeat", Worker, ns(&[1])),
    ws("ListWorkers", Read, ns(&[1])),
    ws("CountWorkers", Read, ns(&[1])),
    ws("UpdateTaskQueueConfig", Write, task_queue(&[1], TaskQueueRef::Name(&[3]))),
    // Made by operators and tools (it sends a command to a selected worker and returns its
    // configuration), not by the worker itself: `read`, as in Temporal.
    ws("FetchWorkerConfig", Read, ns(&[1])),
    ws("UpdateWorkerConfig", Write, ns(&[1])),
    ws("DescribeWorker", Read, ns(&[1])),
    ws("PauseWorkflowExecution", Write, workflow(&[1], &[2])),
    ws("UnpauseWorkflowExecution", Write, workflow(&[1], &[2])),
    // A standalone activity has no workflow; the queue it is dispatched to is its best name.
    ws("StartActivityExecution", Write, task_queue(&[1], TaskQueueRef::Message(&[6]))),
    ws("StartNexusOperationExecution", Write, ns(&[1])),
    // Describe*Execution long-poll when given a `long_poll_token`.
    ws("DescribeActivityExecution", Read, ns(&[1])).long_poll(),
    ws("DescribeNexusOperationExecution", Read, ns(&[1])).long_poll(),
    // Clients waiting for an outcome, not workers: `read`, as in Temporal.
    ws("PollActivityExecution", Read, ns(&[1])).long_poll(),
    ws("PollNexusOperationExecution", Read, ns(&[1])).long_poll(),
    ws("ListActivityExecutions", Read, ns(&[1])),
    ws("ListNexusOperationExecutions", Read, ns(&[1])),
    ws("CountActivityExecutions", Read, ns(&[1])),
    ws("CountNexusOperationExecutions", Read, ns(&[1])),
    ws("RequestCancelActivityExecution", Write, ns(&[1])),
    ws("RequestCancelNexusOperationExecution", Write, ns(&[1])),
    ws("TerminateActivityExecution", Write, ns(&[1])),
    ws("DeleteActivityExecution", Write, ns(&[1])),
    // These target a workflow's activity (`workflow_id = 2`) or, with no workflow id, a
    // standalone one: a Workflow resource without an id then, which no per-workflow policy matches.
    ws("PauseActivityExecution", Write, workflow(&[1], &[2])),
    ws("ResetActivityExecution", Write, workflow(&[1], &[2])),
    ws("UnpauseActivityExecution", Write, workflow(&[1], &[2])),
    ws("UpdateActivityExecutionOptions", Write, workflow(&[1], &[2])),
    ws("TerminateNexusOperationExecution", Write, ns(&[1])),
    ws("DeleteNexusOperationExecution", Write, ns(&[1])),
    // Waits for a time-skipping fast-forward to finish: observes, changes nothing.
    ws("PollWorkflowExecutionTimeSkipping", Read, workflow(&[1], &[2, 1])).long_poll(),
    // -- temporal.api.operatorservice.v1.OperatorService ------------------------------------
    op("AddSearchAttributes", Admin, ns(&[2])),
    op("RemoveSearchAttributes", Admin, ns(&[2])),
    op("ListSearchAttributes", Read, ns(&[1])),
    // By name (`namespace = 1`) or by id (`namespace_id = 2`); the server refuses both.
    op("DeleteNamespace", Admin, ns(&[1])).namespace_id(&[2]),
    op("AddOrUpdateRemoteCluster", ClusterAdmin, CLUSTER),
    op("RemoveRemoteCluster", ClusterAdmin, CLUSTER),
    op("ListClusters", ClusterAdmin, CLUSTER),
    op("GetNexusEndpoint", ClusterAdmin, CLUSTER),
    op("CreateNexusEndpoint", ClusterAdmin, CLUSTER),
    op("UpdateNexusEndpoint", ClusterAdmin, CLUSTER),
    op("DeleteNexusEndpoint", ClusterAdmin, CLUSTER),
    op("ListNexusEndpoints", ClusterAdmin, CLUSTER),
];

// ---------------------------------------------------------------------------------------------
// Questions that are not RPCs. Temporal acts on more than the request it is sent: a workflow
// task completion carries commands, a start may terminate another run. These actions are what
// such a request is also asked as (see `temporal::implied`); their resources are filled in
// from the command, so their paths are unused.
// ---------------------------------------------------------------------------------------------

const fn command(name: &'static str, resource: ResourceSpec) -> MethodSpec {
    spec("", name, Command, resource)
}

/// A command's workflow: a Workflow resource whose fields come from the command.
const COMMAND_WORKFLOW: ResourceSpec =
    ResourceSpec::Workflow { namespace: &[], workflow_id: None, workflow_type: None, task_queue: None };
const COMMAND_TASK_QUEUE: ResourceSpec =
    ResourceSpec::TaskQueue { namespace: &[], task_queue: TaskQueueRef::Name(&[]) };

/// The commands of `RespondWorkflowTaskCompleted` that act beyond the workflow itself, each an
/// action in the `command` group, named as Temporal's `CommandType` (without its prefix).
pub static COMMANDS: &[MethodSpec] = &[
    command("ScheduleActivityTask", COMMAND_TASK_QUEUE),
    command("StartChildWorkflowExecution", COMMAND_WORKFLOW),
    command("SignalExternalWorkflowExecution", COMMAND_WORKFLOW),
    command("RequestCancelExternalWorkflowExecution", COMMAND_WORKFLOW),
    command("ContinueAsNewWorkflowExecution", COMMAND_WORKFLOW),
    command("ScheduleNexusOperation", ResourceSpec::NexusEndpoint),
];

/// A start that would attach to a run someone else started (conflict policy `USE_EXISTING`
/// with `on_conflict_options` or completion callbacks): in no group, so only a policy naming
/// it permits it.
pub static ATTACH_TO_EXISTING_WORKFLOW: MethodSpec = spec("", "AttachToExistingWorkflow", Ungrouped, COMMAND_WORKFLOW);

/// The command action named `name`.
pub fn command_action(name: &str) -> Option<&'static MethodSpec> {
    COMMANDS.iter().find(|spec| spec.name == name)
}

/// The catalog entry of an RPC by its name (`TerminateWorkflowExecution`).
pub fn rpc(name: &str) -> &'static MethodSpec {
    BY_NAME.get(name).copied().unwrap_or(&UNKNOWN_METHOD)
}

static BY_NAME: LazyLock<HashMap<&'static str, &'static MethodSpec>> =
    LazyLock::new(|| CATALOG.iter().map(|spec| (spec.name, spec)).collect());

static BY_PATH: LazyLock<HashMap<String, &'static MethodSpec>> =
    LazyLock::new(|| CATALOG.iter().map(|spec| (format!("/{}/{}", spec.service, spec.name), spec)).collect());

/// The spec for a request path such as `/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution`.
/// Every path has one: paths outside the catalog map to the ungrouped catch-all actions.
pub fn lookup(path: &str) -> &'static MethodSpec {
    if let Some(spec) = BY_PATH.get(path) {
        return spec;
    }
    let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    if service == ADMIN_SERVICE {
        &ADMIN_SERVICE_METHOD
    } else if REFLECTION_SERVICES.contains(&service) {
        &REFLECTION_METHOD
    } else if path == "/grpc.health.v1.Health/Check" {
        &HEALTH_CHECK
    } else {
        &UNKNOWN_METHOD
    }
}

/// Every action flowgate can ask Cedar about: the catalog, the commands and the catch-alls.
pub fn all_actions() -> impl Iterator<Item = &'static MethodSpec> {
    CATALOG.iter().chain(COMMANDS).chain([
        &ATTACH_TO_EXISTING_WORKFLOW,
        &UNKNOWN_METHOD,
        &ADMIN_SERVICE_METHOD,
        &REFLECTION_METHOD,
    ])
}
