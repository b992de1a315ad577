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

/// Where flowgate writes something of its own into a request: the verified principal over the
/// client's `identity`, or flowgate's entry of a Temporal `Header`.
///
/// Writing is appending where it can be (`temporal::stamp`): protobuf takes the last occurrence
/// of a singular field, and merges the occurrences of an embedded message, so an occurrence
/// appended at the end of the request overrides whatever the client put at the same path. A
/// oneof and a repeated field need more than a path, because appending into them would change
/// what the request means; the shapes nest (a repeated field inside a oneof's member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// The field at this path. Every message on the way is singular and outside any oneof, so
    /// an appended occurrence merges into the one the server reads.
    At(Path),
    /// A header at this path that gets flowgate's entry only if the request already has an entry
    /// of that name (a forged one): the history of every activity and marker a workflow records
    /// is not made larger to say what its worker's task completion already says.
    ReplaceAt(Path),
    /// Inside whichever member of a oneof the request sets: appending another member would
    /// switch the oneof. `oneof` is the path of the message holding it (empty: this message),
    /// `members` every member of the oneof with what to stamp inside it, if anything. A request
    /// that sets no member gets nothing.
    InOneof { oneof: Path, members: &'static [(u32, Option<Stamp>)] },
    /// In each element of the repeated message field `repeated` of this message: appending to a
    /// repeated field adds an element, so the elements are rewritten one by one instead.
    InEach { repeated: u32, each: &'static Stamp },
    /// Inside the `google.protobuf.Any` at `any` when it holds a `type_name` message (its
    /// `type_url` ends in `/<type_name>`): the packed message (`value = 2`) is rewritten.
    InAny { any: Path, type_name: &'static str, inner: &'static Stamp },
    /// Every one of these, in order.
    All(&'static [Stamp]),
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
    /// Where the request names who sends it (`identity`): the verified principal goes there.
    pub identity: Option<Stamp>,
    /// The Temporal `Header` of what the request starts or signals: the verified initiator goes
    /// there, for workflow code to read.
    pub header: Option<Stamp>,
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
        identity: None,
        header: None,
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

    /// A top-level `identity` field.
    const fn identity(self, number: &'static [u32]) -> Self {
        MethodSpec { identity: Some(Stamp::At(number)), ..self }
    }

    const fn identity_in(self, stamp: Stamp) -> Self {
        MethodSpec { identity: Some(stamp), ..self }
    }

    const fn header(self, stamp: Stamp) -> Self {
        MethodSpec { header: Some(stamp), ..self }
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

/// `UpdateWorkflowExecutionRequest`: `request = 5` -> `Request.meta = 1` -> `Meta.identity = 2`,
/// and `Request.input = 2` -> `Input.header = 1`.
const UPDATE_IDENTITY: Path = &[5, 1, 2];
const UPDATE_HEADER: Path = &[5, 2, 1];

/// `ExecuteMultiOperation.operations = 2`, each the oneof `operation`: `start_workflow = 1` (a
/// start request) or `update_workflow = 2` (an update request).
const MULTI_OPERATION_IDENTITY: Stamp = Stamp::InEach {
    repeated: 2,
    each: &Stamp::InOneof { oneof: &[], members: &[(1, Some(Stamp::At(&[9]))), (2, Some(Stamp::At(UPDATE_IDENTITY)))] },
};
const MULTI_OPERATION_HEADER: Stamp = Stamp::InEach {
    repeated: 2,
    each: &Stamp::InOneof { oneof: &[], members: &[(1, Some(Stamp::At(&[16]))), (2, Some(Stamp::At(UPDATE_HEADER)))] },
};

/// `PostResetOperation`, the oneof `variant`: `signal_workflow = 1` (`header = 3`) or
/// `update_workflow_options = 2`.
const POST_RESET_SIGNAL_HEADER: Stamp =
    Stamp::InOneof { oneof: &[], members: &[(1, Some(Stamp::At(&[3]))), (2, None)] };

/// `ResetWorkflowExecution.post_reset_operations = 8`: a signal sent after the reset.
const RESET_HEADER: Stamp = Stamp::InEach { repeated: 8, each: &POST_RESET_SIGNAL_HEADER };

/// `StartBatchOperation`, the oneof `operation`: the identity inside each kind of batch.
const BATCH_IDENTITY: Stamp = Stamp::InOneof {
    oneof: &[],
    members: &[
        (10, Some(Stamp::At(&[2]))), // termination_operation
        (11, Some(Stamp::At(&[4]))), // signal_operation
        (12, Some(Stamp::At(&[1]))), // cancellation_operation
        (13, Some(Stamp::At(&[1]))), // deletion_operation
        (14, Some(Stamp::At(&[3]))), // reset_operation
        (15, Some(Stamp::At(&[1]))), // update_workflow_options_operation
        (16, Some(Stamp::At(&[1]))), // unpause_activities_operation
        (17, Some(Stamp::At(&[1]))), // reset_activities_operation
        (18, Some(Stamp::At(&[1]))), // update_activity_options_operation
        (19, Some(Stamp::At(&[1]))), // cancel_activities_operation
        (20, Some(Stamp::At(&[1]))), // terminate_activities_operation
        (21, None),                  // delete_activities_operation
    ],
};

/// The header of a batch signal (`signal_operation = 11` -> `header = 3`), and of the signals
/// of a batch reset (`reset_operation = 14` -> `post_reset_operations = 5`).
const BATCH_HEADER: Stamp = Stamp::InOneof {
    oneof: &[],
    members: &[
        (10, None),
        (11, Some(Stamp::At(&[3]))),
        (12, None),
        (13, None),
        (14, Some(Stamp::InEach { repeated: 5, each: &POST_RESET_SIGNAL_HEADER })),
        (15, None),
        (16, None),
        (17, None),
        (18, None),
        (19, None),
        (20, None),
        (21, None),
    ],
};

/// A schedule's `schedule = 3` -> `Schedule.action = 2` -> the oneof `action`, whose one member
/// `start_workflow = 1` has `header = 13`.
const SCHEDULE_HEADER: Stamp = Stamp::InOneof { oneof: &[3, 2], members: &[(1, Some(Stamp::At(&[13])))] };

/// `RespondWorkflowTaskCompleted`: its own `identity = 3`, and the identity of every update a
/// worker completes through a protocol message (`messages = 11` -> `Message.body = 5`, an `Any`
/// holding a `temporal.api.update.v1.Response`, whose `meta = 1` -> `Meta.identity = 2` Temporal
/// records in `WorkflowExecutionUpdateCompleted`). Acceptances and rejections carry the
/// client's request, which Temporal takes from its own copy, not from the worker's.
const COMPLETION_IDENTITY: Stamp = Stamp::All(&[
    Stamp::At(&[3]),
    Stamp::InEach {
        repeated: 11,
        each: &Stamp::InAny { any: &[5], type_name: "temporal.api.update.v1.Response", inner: &Stamp::At(&[1, 2]) },
    },
]);

/// `RespondWorkflowTaskFailed`: its own `identity = 4`, and an update response among its
/// protocol messages (`messages = 7`), as for a completion.
const FAILURE_IDENTITY: Stamp = Stamp::All(&[
    Stamp::At(&[4]),
    Stamp::InEach {
        repeated: 7,
        each: &Stamp::InAny { any: &[5], type_name: "temporal.api.update.v1.Response", inner: &Stamp::At(&[1, 2]) },
    },
]);

/// `RespondWorkflowTaskCompleted.commands = 2`, each the oneof `attributes`: the starts and
/// signals a workflow sends (child workflows, continue-as-new, external signals) name the worker
/// that sent them; the header of an activity or a marker is only replaced when the worker put
/// flowgate's entry there itself.
const COMMAND_HEADER: Stamp = Stamp::InEach {
    repeated: 2,
    each: &Stamp::InOneof {
        oneof: &[],
        members: &[
            (2, Some(Stamp::ReplaceAt(&[5]))), // schedule_activity_task
            (3, None),
            (4, None),
            (5, None),
            (6, None),
            (7, None),
            (8, None),
            (9, None),
            (10, Some(Stamp::ReplaceAt(&[3]))), // record_marker
            (11, Some(Stamp::At(&[12]))),       // continue_as_new_workflow_execution
            (12, Some(Stamp::At(&[14]))),       // start_child_workflow_execution
            (13, Some(Stamp::At(&[7]))),        // signal_external_workflow_execution
            (14, None),
            (15, None),
            (17, None),
            (18, None),
            (19, None),
        ],
    },
};

#[rustfmt::skip]
pub static CATALOG: &[MethodSpec] = &[
    // -- temporal.api.workflowservice.v1.WorkflowService ------------------------------------
    ws("RegisterNamespace", Admin, ns(&[1])),
    // By name (`namespace = 1`) or by id (`id = 2`); the server refuses a request with both.
    ws("DescribeNamespace", Read, ns(&[1])).namespace_id(&[2]),
    ws("ListNamespaces", ClusterAdmin, CLUSTER),
    ws("UpdateNamespace", Admin, ns(&[1])),
    ws("DeprecateNamespace", Admin, ns(&[1])),
    ws("StartWorkflowExecution", Write, new_workflow(&[1], &[2], &[3, 1], &[4])).identity(&[9]).header(Stamp::At(&[16])),
    ws("ExecuteMultiOperation", Write, MULTI_OPERATION).update_name(&[2, 2, 5, 2, 2])
        .identity_in(MULTI_OPERATION_IDENTITY).header(MULTI_OPERATION_HEADER),
    // Read, although workers call it too (paging a history into a cold cache); long-polls
    // when `wait_new_event` is set.
    ws("GetWorkflowExecutionHistory", Read, workflow(&[1], &[2, 1])).long_poll(),
    ws("GetWorkflowExecutionHistoryReverse", Read, workflow(&[1], &[2, 1])),
    ws("PollWorkflowTaskQueue", Worker, task_queue(&[1], TaskQueueRef::Message(&[2]))).long_poll().identity(&[3]),
    ws("RespondWorkflowTaskCompleted", Worker, ns(&[9])).task_token(&[1]).identity_in(COMPLETION_IDENTITY).header(COMMAND_HEADER),
    ws("RespondWorkflowTaskFailed", Worker, ns(&[6])).task_token(&[1]).identity_in(FAILURE_IDENTITY),
    ws("PollActivityTaskQueue", Worker, task_queue(&[1], TaskQueueRef::Message(&[2]))).long_poll().identity(&[3]),
    ws("RecordActivityTaskHeartbeat", Worker, ns(&[4])).task_token(&[1]).identity(&[3]),
    ws("RecordActivityTaskHeartbeatById", Worker, workflow(&[1], &[2])).identity(&[6]),
    ws("RespondActivityTaskCompleted", Worker, ns(&[4])).task_token(&[1]).identity(&[3]),
    // The ...ById calls also serve asynchronous completion from outside a worker process; they
    // do a worker's job all the same, so they stay in `worker`.
    ws("RespondActivityTaskCompletedById", Worker, workflow(&[1], &[2])).identity(&[6]),
    ws("RespondActivityTaskFailed", Worker, ns(&[4])).task_token(&[1]).identity(&[3]),
    ws("RespondActivityTaskFailedById", Worker, workflow(&[1], &[2])).identity(&[6]),
    ws("RespondActivityTaskCanceled", Worker, ns(&[4])).task_token(&[1]).identity(&[3]),
    ws("RespondActivityTaskCanceledById", Worker, workflow(&[1], &[2])).identity(&[6]),
    ws("RequestCancelWorkflowExecution", Write, workflow(&[1], &[2, 1])).identity(&[3]),
    ws("SignalWorkflowExecution", Write, workflow(&[1], &[2, 1])).signal_name(&[3]).identity(&[5]).header(Stamp::At(&[8])),
    ws("SignalWithStartWorkflowExecution", Write, new_workflow(&[1], &[2], &[3, 1], &[4])).signal_name(&[12])
        .identity(&[9]).header(Stamp::At(&[19])),
    ws("ResetWorkflowExecution", Write, workflow(&[1], &[2, 1])).identity(&[9]).header(RESET_HEADER),
    ws("TerminateWorkflowExecution", Write, workflow(&[1], &[2, 1])).identity(&[5]),
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
    ws("ShutdownWorker", Worker, task_queue(&[1], TaskQueueRef::Name(&[7]))).identity(&[3]),
    // `query = 3` -> `WorkflowQuery.header = 3`.
    ws("QueryWorkflow", Read, workflow(&[1], &[2, 1])).query_type(&[3, 1]).header(Stamp::At(&[3, 3])),
    ws("DescribeWorkflowExecution", Read, workflow(&[1], &[2, 1])),
    ws("DescribeTaskQueue", Read, task_queue(&[1], TaskQueueRef::Message(&[2]))),
    ws("GetClusterInfo", ClusterAdmin, CLUSTER),
    ws("GetSystemInfo", Public, CLUSTER),
    ws("ListTaskQueuePartitions", Read, task_queue(&[1], TaskQueueRef::Message(&[2]))),
    ws("CreateSchedule", Write, SCHEDULE_WITH_ACTION).identity(&[5]).header(SCHEDULE_HEADER),
    ws("DescribeSchedule", Read, schedule(&[1], &[2])),
    ws("UpdateSchedule", Write, SCHEDULE_WITH_ACTION).identity(&[5]).header(SCHEDULE_HEADER),
    ws("PatchSchedule", Write, schedule(&[1], &[2])).identity(&[4]),
    ws("ListScheduleMatchingTimes", Read, schedule(&[1], &[2])),
    ws("DeleteSchedule", Write, schedule(&[1], &[2])).identity(&[3]),
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
    ws("SetCurrentDeployment", Write, ns(&[1])).identity(&[3]),
    ws("SetWorkerDeploymentCurrentVersion", Write, ns(&[1])).identity(&[5]),
    ws("DescribeWorkerDeployment", Read, ns(&[1])),
    ws("DeleteWorkerDeployment", Write, ns(&[1])).identity(&[3]),
    ws("DeleteWorkerDeploymentVersion", Write, ns(&[1])).identity(&[4]),
    ws("SetWorkerDeploymentRampingVersion", Write, ns(&[1])).identity(&[6]),
    ws("ListWorkerDeployments", Read, ns(&[1])),
    ws("CreateWorkerDeployment", Write, ns(&[1])).identity(&[4]),
    ws("CreateWorkerDeploymentVersion", Write, ns(&[1])).identity(&[3]),
    ws("UpdateWorkerDeploymentVersionComputeConfig", Write, ns(&[1])).identity(&[3]),
    // Only checks a compute config; attaches nothing.
    ws("ValidateWorkerDeploymentVersionComputeConfig", Read, ns(&[1])).identity(&[3]),
    ws("UpdateWorkerDeploymentVersionMetadata", Write, ns(&[1])).identity(&[6]),
    ws("SetWorkerDeploymentManager", Write, ns(&[1])).identity(&[6]),
    ws("UpdateWorkflowExecution", Write, workflow(&[1], &[2, 1])).update_name(&[5, 2, 2])
        .identity_in(Stamp::At(UPDATE_IDENTITY)).header(Stamp::At(UPDATE_HEADER)),
    // A client waiting for an update's outcome, not a worker: `read`, as in Temporal.
    // `update_ref = 2` -> `UpdateRef.workflow_execution = 1` -> `workflow_id = 1`.
    ws("PollWorkflowExecutionUpdate", Read, workflow(&[1], &[2, 1, 1])).long_poll().identity(&[3]),
    ws("StartBatchOperation", Write, ns(&[1])).identity_in(BATCH_IDENTITY).header(BATCH_HEADER),
    ws("StopBatchOperation", Write, ns(&[1])).identity(&[4]),
    ws("DescribeBatchOperation", Read, ns(&[1])),
    ws("ListBatchOperations", Read, ns(&[1])),
    ws("PollNexusTaskQueue", Worker, task_queue(&[1], TaskQueueRef::Message(&[3]))).long_poll().identity(&[2]),
    ws("RespondNexusTaskCompleted", Worker, ns(&[1])).task_token(&[3]).identity(&[2]),
    ws("RespondNexusTaskFailed", Worker, ns(&[1])).task_token(&[3]).identity(&[2]),
    ws("UpdateActivityOptions", Write, workflow(&[1], &[2, 1])).identity(&[3]),
    ws("UpdateWorkflowExecutionOptions", Write, workflow(&[1], &[2, 1])).identity(&[5]),
    ws("PauseActivity", Write, workflow(&[1], &[2, 1])).identity(&[3]),
    ws("UnpauseActivity", Write, workflow(&[1], &[2, 1])).identity(&[3]),
    ws("ResetActivity", Write, workflow(&[1], &[2, 1])).identity(&[3]),
    // Workflow rules act on every matching workflow of the namespace; Temporal classes them as
    // `write` like batch operations, which can already do as much.
    ws("CreateWorkflowRule", Write, ns(&[1])).identity(&[5]),
    ws("DescribeWorkflowRule", Read, ns(&[1])),
    ws("DeleteWorkflowRule", Write, ns(&[1])),
    ws("ListWorkflowRules", Read, ns(&[1])),
    ws("TriggerWorkflowRule", Write, workflow(&[1], &[2, 1])).identity(&[3]),
    ws("RecordWorkerHeartbeat", Worker, ns(&[1])).identity(&[2]),
    ws("ListWorkers", Read, ns(&[1])),
    ws("CountWorkers", Read, ns(&[1])),
    ws("UpdateTaskQueueConfig", Write, task_queue(&[1], TaskQueueRef::Name(&[3]))).identity(&[2]),
    // Made by operators and tools (it sends a command to a selected worker and returns its
    // configuration), not by the worker itself: `read`, as in Temporal.
    ws("FetchWorkerConfig", Read, ns(&[1])).identity(&[2]),
    ws("UpdateWorkerConfig", Write, ns(&[1])).identity(&[2]),
    ws("DescribeWorker", Read, ns(&[1])),
    ws("PauseWorkflowExecution", Write, workflow(&[1], &[2])).identity(&[4]),
    ws("UnpauseWorkflowExecution", Write, workflow(&[1], &[2])).identity(&[4]),
    // A standalone activity has no workflow; the queue it is dispatched to is its best name.
    ws("StartActivityExecution", Write, task_queue(&[1], TaskQueueRef::Message(&[6]))).identity(&[2]).header(Stamp::At(&[16])),
    ws("StartNexusOperationExecution", Write, ns(&[1])).identity(&[2]),
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
    ws("RequestCancelActivityExecution", Write, ns(&[1])).identity(&[4]),
    ws("RequestCancelNexusOperationExecution", Write, ns(&[1])).identity(&[4]),
    ws("TerminateActivityExecution", Write, ns(&[1])).identity(&[4]),
    ws("DeleteActivityExecution", Write, ns(&[1])),
    // These target a workflow's activity (`workflow_id = 2`) or, with no workflow id, a
    // standalone one: a Workflow resource without an id then, which no per-workflow policy matches.
    ws("PauseActivityExecution", Write, workflow(&[1], &[2])).identity(&[5]),
    ws("ResetActivityExecution", Write, workflow(&[1], &[2])).identity(&[5]),
    ws("UnpauseActivityExecution", Write, workflow(&[1], &[2])).identity(&[5]),
    ws("UpdateActivityExecutionOptions", Write, workflow(&[1], &[2])).identity(&[5]),
    ws("TerminateNexusOperationExecution", Write, ns(&[1])).identity(&[4]),
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
