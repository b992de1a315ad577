//! What a request makes Temporal do beyond the RPC it names, as further questions.
//!
//! flowgate's promise is "this principal may do these things, and nothing else". Authorizing
//! the RPC alone does not keep it, because Temporal acts on fields inside the request:
//!
//! * **worker commands.** `RespondWorkflowTaskCompleted` carries the workflow's `commands`, and
//!   Temporal executes each one as the workflow's own act: it starts children (in any
//!   namespace and queue the command names), schedules activities on any queue, signals and
//!   cancels any workflow by id, continues as new into another type and queue, and calls Nexus
//!   endpoints. Each such command is asked as its own action in the `command` group
//!   ([`catalog::COMMANDS`]). Commands that act only on the workflow itself (timers, markers,
//!   completing, failing or cancelling itself, search attributes, memo, update protocol
//!   messages, cancelling its own activities and operations) need no question beyond the
//!   task completion. A command type flowgate does not know is refused: it cannot be asked.
//! * **starts with side effects.** A start whose `workflow_id_reuse_policy` is
//!   `TERMINATE_IF_RUNNING` or whose `workflow_id_conflict_policy` is `TERMINATE_EXISTING`
//!   terminates the running workflow of that id: it is also asked as
//!   `TerminateWorkflowExecution`. A signal-with-start is also a `SignalWorkflowExecution`, an
//!   update-with-start also an `UpdateWorkflowExecution`, an eager start also a
//!   `PollWorkflowTaskQueue` (the caller receives the first workflow task), and a
//!   `USE_EXISTING` start that attaches callbacks, links or its request id to a run someone
//!   else started is asked as `AttachToExistingWorkflow`, which only a policy naming it permits.
//!
//! Reading stays the gateway's: protobuf is decoded here into [`StartOptions`] and
//! [`Command`]s, and [`start_questions`] / [`command_question`] turn those into questions, so
//! `flowgate explain` and `policy test` derive the same questions from a described call as the
//! gateway does from a request.
//!
//! Cost: one pass over the commands and a handful of field lookups each, on the path of every
//! workflow task completion; identical questions (a workflow scheduling a hundred activities
//! of one type on one queue) are asked once.

use std::collections::HashSet;
use std::fmt;

use super::catalog::{self, ATTACH_TO_EXISTING_WORKFLOW, MethodSpec};
use super::inspect::{Call, InspectError, Resource, ResourceKind, owned, queue_at};
use super::wire::{self, WireError};

/// How many distinct questions one request may raise. A workflow task that fans out to more
/// distinct children, queues or signal targets than this is refused rather than asking Cedar
/// without bound; identical commands count once.
pub const MAX_QUESTIONS: usize = 1024;

/// Why a question was asked, for records and refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Command `index` (0-based, as in the request) of a workflow task completion.
    Command { index: usize },
    /// A start that terminates a running workflow: the policy that says so.
    Terminates(&'static str),
    /// The signal of a signal-with-start.
    SignalWithStart,
    /// The update of an update-with-start.
    UpdateWithStart,
    /// An eager start: the caller receives the new workflow's first task.
    EagerStart,
    /// A `USE_EXISTING` start that attaches to a running workflow.
    AttachesToExisting,
    /// A task token: the caller must be allowed on the queue it was handed out for.
    TaskToken,
    /// A batch operation: what it does to each workflow it selects.
    Batch,
    /// An operation a reset applies to the workflow once it is reset.
    PostReset,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Command { index } => write!(f, "command {index}"),
            Origin::Terminates(policy) => write!(f, "{policy}, which terminates a running workflow of that id"),
            Origin::SignalWithStart => f.write_str("the signal of a signal-with-start"),
            Origin::UpdateWithStart => f.write_str("the update of an update-with-start"),
            Origin::EagerStart => f.write_str("eager execution, which hands the caller the first workflow task"),
            Origin::AttachesToExisting => f.write_str(
                "workflow_id_conflict_policy USE_EXISTING with on_conflict_options or completion callbacks, which attach to a running workflow",
            ),
            Origin::TaskToken => f.write_str("its task token, handed out for this task queue"),
            Origin::Batch => f.write_str("the batch operation, on each workflow it selects"),
            Origin::PostReset => f.write_str("a post-reset operation"),
        }
    }
}

/// One question beyond the RPC: an action on a resource, and why it is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub spec: &'static MethodSpec,
    pub call: Call,
    pub origin: Origin,
}

/// What a workflow task's own workflow is, from its (sealed) task token: the defaults Temporal
/// applies to a command that leaves a field empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskWorkflow<'a> {
    pub workflow_id: Option<&'a str>,
    pub workflow_type: Option<&'a str>,
    pub task_queue: Option<&'a str>,
}

/// `temporal.api.enums.v1.WorkflowIdReusePolicy::TERMINATE_IF_RUNNING`.
pub const REUSE_TERMINATE_IF_RUNNING: u64 = 4;
/// `temporal.api.enums.v1.WorkflowIdConflictPolicy::USE_EXISTING`.
pub const CONFLICT_USE_EXISTING: u64 = 2;
/// `temporal.api.enums.v1.WorkflowIdConflictPolicy::TERMINATE_EXISTING`.
pub const CONFLICT_TERMINATE_EXISTING: u64 = 3;

/// The fields of a start request that make it do more than start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// `workflow_id_reuse_policy`, as the `int32` the server reads.
    pub reuse_policy: u64,
    /// `workflow_id_conflict_policy`.
    pub conflict_policy: u64,
    /// `request_eager_execution`.
    pub eager: bool,
    /// `on_conflict_options` or `completion_callbacks` are set.
    pub attaches: bool,
}

/// Field numbers of the start-like requests: `(reuse, conflict, eager, callbacks,
/// on_conflict_options)`, `None` where the request has no such field.
struct StartFields {
    reuse: u32,
    conflict: Option<u32>,
    eager: Option<u32>,
    callbacks: Option<u32>,
    on_conflict: Option<u32>,
}

/// `StartWorkflowExecutionRequest` (also inside `ExecuteMultiOperation`).
const START: StartFields =
    StartFields { reuse: 11, conflict: Some(22), eager: Some(17), callbacks: Some(21), on_conflict: Some(26) };
/// `SignalWithStartWorkflowExecutionRequest`.
const SIGNAL_WITH_START: StartFields =
    StartFields { reuse: 11, conflict: Some(22), eager: None, callbacks: None, on_conflict: None };
/// `StartChildWorkflowExecutionCommandAttributes`: children only have a reuse policy.
const CHILD_START: StartFields =
    StartFields { reuse: 11, conflict: None, eager: None, callbacks: None, on_conflict: None };
/// `ExecuteMultiOperationRequest.operations[0].start_workflow`.
const MULTI_OPERATION_START: &[u32] = &[2, 1];

impl StartOptions {
    /// Reads the start request at `prefix` inside `message` (empty: `message` itself). A
    /// prefix rather than the start's bytes, because the start may occur several times (a
    /// command's attributes sent twice) and the server reads the merge of all its copies.
    fn read(message: &[u8], prefix: &[u32], fields: &StartFields) -> Result<StartOptions, WireError> {
        let at = |number: u32| [prefix, &[number]].concat();
        // Enums are `int32` on the wire: the server keeps the low 32 bits.
        let int32 = |number: Option<u32>| -> Result<u64, WireError> {
            Ok(match number {
                Some(number) => wire::last_varint(message, &at(number))?.map_or(0, |v| u64::from(v as u32)),
                None => 0,
            })
        };
        let present = |number: Option<u32>| -> Result<bool, WireError> {
            Ok(match number {
                Some(number) => wire::last_bytes(message, &at(number))?.is_some(),
                None => false,
            })
        };
        Ok(StartOptions {
            reuse_policy: int32(Some(fields.reuse))?,
            conflict_policy: int32(fields.conflict)?,
            eager: int32(fields.eager)? != 0,
            attaches: present(fields.callbacks)? || present(fields.on_conflict)?,
        })
    }
}

/// The questions a start of `call` with `options` implies, beyond the start itself. `spec` is
/// the start's action.
pub fn start_questions(spec: &'static MethodSpec, call: &Call, options: &StartOptions, out: &mut Vec<Question>) {
    let workflow = |resource: &Resource| Resource {
        kind: ResourceKind::Workflow,
        namespace: resource.namespace.clone(),
        workflow_id: resource.workflow_id.clone(),
        ..Resource::new(ResourceKind::Workflow)
    };
    let implied = |rpc: &str, call: Call, origin| Question {
        spec: catalog::rpc(rpc),
        call: Call { implied_by: Some(spec.name), ..call },
        origin,
    };
    let terminates = if options.reuse_policy == REUSE_TERMINATE_IF_RUNNING {
        Some("workflow_id_reuse_policy TERMINATE_IF_RUNNING")
    } else if options.conflict_policy == CONFLICT_TERMINATE_EXISTING {
        Some("workflow_id_conflict_policy TERMINATE_EXISTING")
    } else {
        None
    };
    if let Some(policy) = terminates {
        out.push(implied(
            "TerminateWorkflowExecution",
            Call::new(workflow(&call.resource)),
            Origin::Terminates(policy),
        ));
    }
    if options.conflict_policy == CONFLICT_USE_EXISTING && options.attaches {
        out.push(Question {
            spec: &ATTACH_TO_EXISTING_WORKFLOW,
            call: Call { implied_by: Some(spec.name), ..Call::new(call.resource.clone()) },
            origin: Origin::AttachesToExisting,
        });
    }
    match spec.name {
        "SignalWithStartWorkflowExecution" => out.push(implied(
            "SignalWorkflowExecution",
            Call { signal_name: call.signal_name.clone(), ..Call::new(workflow(&call.resource)) },
            Origin::SignalWithStart,
        )),
        "ExecuteMultiOperation" => out.push(implied(
            "UpdateWorkflowExecution",
            Call { update_name: call.update_name.clone(), ..Call::new(workflow(&call.resource)) },
            Origin::UpdateWithStart,
        )),
        _ => {}
    }
    if options.eager {
        let queue = Resource {
            namespace: call.resource.namespace.clone(),
            task_queue: call.resource.task_queue.clone(),
            ..Resource::new(ResourceKind::TaskQueue)
        };
        out.push(implied("PollWorkflowTaskQueue", Call::new(queue), Origin::EagerStart));
    }
}

/// A command of a workflow task completion that acts beyond its workflow, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command action (`StartChildWorkflowExecution`, ...).
    pub spec: &'static MethodSpec,
    /// Its resource and context, with the workflow's defaults applied.
    pub call: Call,
    /// A child start's reuse policy.
    pub start: StartOptions,
}

/// How each `CommandType` is read: its attributes field in `Command`, and the action asked for
/// it (`None`: it acts only on the workflow itself).
fn command_kind(command_type: u64) -> Option<(u32, Option<&'static str>)> {
    Some(match command_type {
        1 => (2, Some("ScheduleActivityTask")),
        2 => (6, None), // RequestCancelActivityTask: its own activity
        3 => (3, None), // StartTimer
        4 => (4, None), // CompleteWorkflowExecution
        5 => (5, None), // FailWorkflowExecution
        6 => (7, None), // CancelTimer
        7 => (8, None), // CancelWorkflowExecution (itself)
        8 => (9, Some("RequestCancelExternalWorkflowExecution")),
        9 => (10, None), // RecordMarker
        10 => (11, Some("ContinueAsNewWorkflowExecution")),
        11 => (12, Some("StartChildWorkflowExecution")),
        12 => (13, Some("SignalExternalWorkflowExecution")),
        13 => (14, None), // UpsertWorkflowSearchAttributes
        14 => (15, None), // ProtocolMessage: accepts, rejects or answers its own updates
        16 => (17, None), // ModifyWorkflowProperties
        17 => (18, Some("ScheduleNexusOperation")),
        18 => (19, None), // RequestCancelNexusOperation: its own operation
        _ => return None,
    })
}

/// `Command` fields outside the attributes oneof.
const COMMAND_TYPE: u32 = 1;
const USER_METADATA: u32 = 301;
const EVENT_GROUP_MARKERS: u32 = 302;

/// Reads command `index`. Its `command_type` picks the attributes the server reads; since the
/// attributes are a oneof (the last member on the wire wins, discarding the others), a command
/// that carries any other member is refused: the server would read something else.
pub fn read_command(
    index: usize,
    command: &[u8],
    namespace: Option<&str>,
    task: &TaskWorkflow<'_>,
) -> Result<Option<Command>, InspectError> {
    let command_type = wire::last_varint(command, &[COMMAND_TYPE])?.map_or(0, |v| u64::from(v as u32));
    let (attributes_field, action) =
        command_kind(command_type).ok_or(InspectError::UnknownCommand { index, command_type })?;
    let name = action.unwrap_or("command");
    for field in wire::fields(command) {
        let (number, _) = field?;
        if !matches!(number, COMMAND_TYPE | USER_METADATA | EVENT_GROUP_MARKERS) && number != attributes_field {
            return Err(InspectError::CommandAttributes { index, command: name });
        }
    }
    let Some(action) = action else { return Ok(None) };
    let spec = catalog::command_action(action).expect("every command action is in the catalog");
    // Paths are read from the command, through its attributes field, never from one copy of
    // the attributes: sent twice, the copies merge (a namespace from the first, an id from the
    // second), and the server acts on the merge.
    let at = |path: &[u32]| [&[attributes_field], path].concat();
    let text =
        |path: &[u32]| -> Result<Option<String>, WireError> { Ok(owned(wire::last_string(command, &at(path))?)) };
    let queue = |path: &[u32]| -> Result<Option<String>, InspectError> { queue_at(command, &at(path))?.normal(action) };
    // An empty namespace is the workflow's own; children and external targets may name another.
    let namespace_at = |path: &[u32]| -> Result<Option<String>, WireError> {
        Ok(text(path)?.or_else(|| namespace.map(str::to_owned)))
    };
    let own = |value: Option<&str>| value.map(str::to_owned);
    let workflow = |namespace, id, workflow_type, task_queue| Resource {
        namespace,
        workflow_id: id,
        workflow_type,
        task_queue,
        ..Resource::new(ResourceKind::Workflow)
    };
    let mut start = StartOptions::default();
    let call = match action {
        // activity_type = 2 (ActivityType.name = 1), task_queue = 4 (empty: the workflow's).
        "ScheduleActivityTask" => Call {
            activity_type: text(&[2, 1])?,
            ..Call::new(Resource {
                namespace: own(namespace),
                task_queue: queue(&[4])?.or_else(|| own(task.task_queue)),
                ..Resource::new(ResourceKind::TaskQueue)
            })
        },
        // namespace = 1, workflow_id = 2.
        "RequestCancelExternalWorkflowExecution" => Call::new(workflow(namespace_at(&[1])?, text(&[2])?, None, None)),
        // workflow_type = 1, task_queue = 2: empty ones continue the workflow's own.
        "ContinueAsNewWorkflowExecution" => Call::new(workflow(
            own(namespace),
            own(task.workflow_id),
            text(&[1, 1])?.or_else(|| own(task.workflow_type)),
            queue(&[2])?.or_else(|| own(task.task_queue)),
        )),
        // namespace = 1, workflow_id = 2, workflow_type = 3, task_queue = 4 (empty: the parent's).
        "StartChildWorkflowExecution" => {
            start = StartOptions::read(command, &[attributes_field], &CHILD_START)?;
            Call::new(workflow(
                namespace_at(&[1])?,
                text(&[2])?,
                text(&[3, 1])?,
                queue(&[4])?.or_else(|| own(task.task_queue)),
            ))
        }
        // namespace = 1, execution = 2 (workflow_id = 1), signal_name = 3.
        "SignalExternalWorkflowExecution" => {
            Call { signal_name: text(&[3])?, ..Call::new(workflow(namespace_at(&[1])?, text(&[2, 1])?, None, None)) }
        }
        // endpoint = 1, service = 2, operation = 3.
        "ScheduleNexusOperation" => Call {
            nexus_service: text(&[2])?,
            nexus_operation: text(&[3])?,
            ..Call::new(Resource {
                namespace: own(namespace),
                endpoint: text(&[1])?,
                ..Resource::new(ResourceKind::NexusEndpoint)
            })
        },
        _ => unreachable!("command actions are listed above"),
    };
    Ok(Some(Command { spec, call: Call { implied_by: Some("RespondWorkflowTaskCompleted"), ..call }, start }))
}

/// The question a command is asked as, and those its own start options imply.
pub fn command_question(index: usize, command: Command, out: &mut Vec<Question>) {
    let start = command.start;
    let spec = command.spec;
    let mut implied = Vec::new();
    if spec.name == "StartChildWorkflowExecution" {
        start_questions(spec, &command.call, &start, &mut implied);
    }
    out.push(Question { spec, call: command.call, origin: Origin::Command { index } });
    out.extend(implied.into_iter().map(|q| Question { origin: Origin::Command { index }, ..q }));
}

/// The operation fields of `StartBatchOperationRequest` (a oneof), and the RPC each one is
/// on every workflow it selects.
const BATCH_OPERATIONS: &[(u32, &str)] = &[
    (10, "TerminateWorkflowExecution"),
    (11, "SignalWorkflowExecution"),
    (12, "RequestCancelWorkflowExecution"),
    (13, "DeleteWorkflowExecution"),
    (14, "ResetWorkflowExecution"),
    (15, "UpdateWorkflowExecutionOptions"),
    (16, "UnpauseActivity"),
    (17, "ResetActivity"),
    (18, "UpdateActivityOptions"),
    (19, "RequestCancelActivityExecution"),
    (20, "TerminateActivityExecution"),
    (21, "DeleteActivityExecution"),
];
/// `visibility_query = 2`, `executions = 5` (`WorkflowExecution.workflow_id = 1`),
/// `target_executions = 22`.
const BATCH_QUERY: u32 = 2;
const BATCH_EXECUTIONS: u32 = 5;
const BATCH_TARGET_EXECUTIONS: u32 = 22;
/// `BatchOperationSignal.signal = 1`.
const BATCH_SIGNAL_NAME: &[u32] = &[11, 1];

/// A batch operation does its RPC to each workflow it selects: it is asked as that RPC on each
/// workflow it names by id, and, when it selects by a visibility query (or by executions it
/// does not name by id), on a Workflow without an id, which only a namespace-wide grant
/// permits. A `forbid` on terminate thus holds for a batch terminate too. An operation flowgate
/// does not know is refused.
fn batch_questions(
    spec: &'static MethodSpec,
    message: &[u8],
    call: &Call,
    out: &mut Vec<Question>,
) -> Result<(), InspectError> {
    let mut operation = None;
    for field in wire::fields(message) {
        let (number, _) = field?;
        // Fields from 10 on are the operation oneof, but for `target_executions`; one past
        // those flowgate knows may be a new operation, and is refused.
        if number < 10 || number == BATCH_TARGET_EXECUTIONS {
            continue;
        }
        if !BATCH_OPERATIONS.iter().any(|(n, _)| *n == number) {
            return Err(InspectError::Ambiguous("a batch operation of a kind flowgate does not know"));
        }
        if operation.is_some_and(|op| op != number) {
            return Err(InspectError::Ambiguous("a batch operation names more than one operation"));
        }
        operation = Some(number);
    }
    let Some(operation) = operation else { return Ok(()) };
    let rpc = catalog::rpc(BATCH_OPERATIONS.iter().find(|(n, _)| *n == operation).expect("known").1);
    let namespace = call.resource.namespace.clone();
    let signal_name = if operation == 11 { owned(wire::last_string(message, BATCH_SIGNAL_NAME)?) } else { None };
    let ask = |workflow_id: Option<String>| {
        let resource = Resource { namespace: namespace.clone(), workflow_id, ..Resource::new(rpc.resource.kind()) };
        Question {
            spec: rpc,
            call: Call { signal_name: signal_name.clone(), implied_by: Some(spec.name), ..Call::new(resource) },
            origin: Origin::Batch,
        }
    };
    let mut seen = HashSet::new();
    let mut by_query = wire::last_string(message, &[BATCH_QUERY])?.is_some();
    for field in wire::fields(message) {
        match field? {
            (BATCH_EXECUTIONS, wire::Value::Bytes(execution)) => {
                let id = owned(wire::last_string(execution, &[1])?);
                if id.is_none() {
                    by_query = true;
                } else if seen.insert(id.clone()) {
                    if seen.len() > MAX_QUESTIONS {
                        return Err(InspectError::Ambiguous("a batch operation names more than 1024 workflows"));
                    }
                    out.push(ask(id));
                }
            }
            (BATCH_TARGET_EXECUTIONS, _) => by_query = true,
            _ => {}
        }
    }
    if by_query || seen.is_empty() {
        out.push(ask(None));
    }
    Ok(())
}

/// `ResetWorkflowExecutionRequest.post_reset_operations = 8`: each a `PostResetOperation`
/// with `signal_workflow = 1` (`signal_name = 1`) or `update_workflow_options = 2`.
const POST_RESET_OPERATIONS: u32 = 8;

/// A reset may signal the workflow, or change its options, once reset: each is asked as that
/// RPC on the same workflow.
fn post_reset_questions(
    spec: &'static MethodSpec,
    message: &[u8],
    call: &Call,
    out: &mut Vec<Question>,
) -> Result<(), InspectError> {
    let workflow = Resource {
        namespace: call.resource.namespace.clone(),
        workflow_id: call.resource.workflow_id.clone(),
        ..Resource::new(ResourceKind::Workflow)
    };
    for field in wire::fields(message) {
        let (POST_RESET_OPERATIONS, wire::Value::Bytes(operation)) = field? else { continue };
        for member in wire::fields(operation) {
            let question = match member? {
                (1, wire::Value::Bytes(signal)) => Question {
                    spec: catalog::rpc("SignalWorkflowExecution"),
                    call: Call {
                        signal_name: owned(wire::last_string(signal, &[1])?),
                        implied_by: Some(spec.name),
                        ..Call::new(workflow.clone())
                    },
                    origin: Origin::PostReset,
                },
                (2, wire::Value::Bytes(_)) => Question {
                    spec: catalog::rpc("UpdateWorkflowExecutionOptions"),
                    call: Call { implied_by: Some(spec.name), ..Call::new(workflow.clone()) },
                    origin: Origin::PostReset,
                },
                _ => continue,
            };
            if !out.contains(&question) {
                if out.len() >= MAX_QUESTIONS {
                    return Err(InspectError::Ambiguous("a reset carries more than 1024 post-reset operations"));
                }
                out.push(question);
            }
        }
    }
    Ok(())
}

/// `RespondWorkflowTaskCompletedRequest.commands`.
const COMMANDS: u32 = 2;

/// Every question `call` of `spec` implies beyond the RPC, read from its (decompressed)
/// request message; `task` is the workflow of its task token, when it carries one flowgate
/// issued. Identical questions are asked once.
pub fn questions(
    spec: &'static MethodSpec,
    message: &[u8],
    call: &Call,
    task: &TaskWorkflow<'_>,
) -> Result<Vec<Question>, InspectError> {
    let mut out = Vec::new();
    match spec.name {
        "StartWorkflowExecution" => start_questions(spec, call, &StartOptions::read(message, &[], &START)?, &mut out),
        "SignalWithStartWorkflowExecution" => {
            start_questions(spec, call, &StartOptions::read(message, &[], &SIGNAL_WITH_START)?, &mut out)
        }
        "ExecuteMultiOperation" => {
            start_questions(spec, call, &StartOptions::read(message, MULTI_OPERATION_START, &START)?, &mut out)
        }
        "StartBatchOperation" => batch_questions(spec, message, call, &mut out)?,
        "ResetWorkflowExecution" => post_reset_questions(spec, message, call, &mut out)?,
        "RespondWorkflowTaskCompleted" => {
            let namespace = call.resource.namespace.as_deref();
            let mut seen = HashSet::new();
            let mut index = 0;
            for field in wire::fields(message) {
                let (number, value) = field?;
                let wire::Value::Bytes(command) = value else { continue };
                if number != COMMANDS {
                    continue;
                }
                if let Some(command) = read_command(index, command, namespace, task)? {
                    let mut asked = Vec::new();
                    command_question(index, command, &mut asked);
                    for question in asked {
                        if seen.insert((question.spec.name, question.call.clone())) {
                            if seen.len() > MAX_QUESTIONS {
                                return Err(InspectError::Ambiguous(
                                    "a workflow task completion raises more than 1024 distinct questions",
                                ));
                            }
                            out.push(question);
                        }
                    }
                }
                index += 1;
            }
        }
        _ => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temporal::catalog::lookup;

    fn field(number: u32, value: &[u8]) -> Vec<u8> {
        let mut out = varint(u64::from(number) << 3 | 2);
        out.extend(varint(value.len() as u64));
        out.extend_from_slice(value);
        out
    }

    fn varint_field(number: u32, value: u64) -> Vec<u8> {
        let mut out = varint(u64::from(number) << 3);
        out.extend(varint(value));
        out
    }

    fn varint(mut value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn command(command_type: u64, attributes_field: u32, attributes: &[u8]) -> Vec<u8> {
        [varint_field(1, command_type), field(attributes_field, attributes)].concat()
    }

    fn completion(commands: &[Vec<u8>]) -> Vec<u8> {
        let mut message = field(1, b"token");
        for c in commands {
            message.extend(field(2, c));
        }
        message.extend(field(9, b"payments"));
        message
    }

    const TASK: TaskWorkflow<'static> =
        TaskWorkflow { workflow_id: Some("wf-1"), workflow_type: Some("Deploy"), task_queue: Some("deploys") };

    fn asked(message: &[u8]) -> Result<Vec<Question>, InspectError> {
        let spec = lookup("/temporal.api.workflowservice.v1.WorkflowService/RespondWorkflowTaskCompleted");
        let call = crate::temporal::inspect::inspect(spec, message)?;
        questions(spec, message, &call, &TASK)
    }

    #[test]
    fn each_outward_command_is_asked_as_its_action_with_the_workflows_defaults() {
        let child = [field(2, b"child-1"), field(3, &field(1, b"DropTables")), field(4, &field(1, b"other"))].concat();
        let activity = field(2, &field(1, b"Charge"));
        let signal = [field(1, b"analytics"), field(2, &field(1, b"victim")), field(3, b"approve")].concat();
        let message = completion(&[
            command(3, 3, &field(1, b"timer")),
            command(11, 12, &child),
            command(1, 2, &activity),
            command(12, 13, &signal),
            command(10, 11, &[]),
        ]);
        let questions = asked(&message).unwrap();
        let names: Vec<_> = questions.iter().map(|q| (q.spec.name, q.origin)).collect();
        assert_eq!(
            names,
            [
                ("StartChildWorkflowExecution", Origin::Command { index: 1 }),
                ("ScheduleActivityTask", Origin::Command { index: 2 }),
                ("SignalExternalWorkflowExecution", Origin::Command { index: 3 }),
                ("ContinueAsNewWorkflowExecution", Origin::Command { index: 4 }),
            ]
        );
        let child = &questions[0].call.resource;
        assert_eq!(
            (child.namespace.as_deref(), child.workflow_type.as_deref(), child.task_queue.as_deref()),
            (Some("payments"), Some("DropTables"), Some("other"))
        );
        // An activity without a queue runs on the workflow's own.
        assert_eq!(questions[1].call.resource.task_queue.as_deref(), Some("deploys"));
        assert_eq!(questions[1].call.activity_type.as_deref(), Some("Charge"));
        let signal = &questions[2].call;
        assert_eq!(signal.resource.namespace.as_deref(), Some("analytics"));
        assert_eq!(signal.resource.workflow_id.as_deref(), Some("victim"));
        assert_eq!(signal.signal_name.as_deref(), Some("approve"));
        // Continue-as-new without a type or queue continues the workflow's own.
        let next = &questions[3].call.resource;
        assert_eq!(
            (next.workflow_id.as_deref(), next.workflow_type.as_deref(), next.task_queue.as_deref()),
            (Some("wf-1"), Some("Deploy"), Some("deploys"))
        );
        assert!(questions.iter().all(|q| q.call.implied_by == Some("RespondWorkflowTaskCompleted")));
    }

    #[test]
    fn identical_commands_are_asked_once() {
        let activity = command(1, 2, &field(2, &field(1, b"Charge")));
        let questions = asked(&completion(&vec![activity; 500])).unwrap();
        assert_eq!(questions.len(), 1);
    }

    #[test]
    fn unknown_commands_and_mismatched_attributes_are_refused() {
        assert_eq!(
            asked(&completion(&[command(99, 2, &[])])).unwrap_err(),
            InspectError::UnknownCommand { index: 0, command_type: 99 }
        );
        // A StartTimer whose attributes are a child start's: the server reads neither the way
        // flowgate would.
        let child = field(3, &field(1, b"DropTables"));
        assert_eq!(
            asked(&completion(&[command(3, 12, &child)])).unwrap_err(),
            InspectError::CommandAttributes { index: 0, command: "command" }
        );
        // Two attribute members: the oneof keeps the last, discarding the one asked about.
        let both = [varint_field(1, 11), field(12, &child), field(3, &field(1, b"t"))].concat();
        assert!(matches!(asked(&completion(&[both])), Err(InspectError::CommandAttributes { .. })));
    }

    #[test]
    fn attributes_sent_twice_are_read_merged_as_the_server_merges_them() {
        // Go's protobuf merges two copies of the same oneof member: the server acts on a child
        // in `prod` (first copy) with the id, type and queue of the second copy.
        let first = field(1, b"prod");
        let second = [field(2, b"deploy-1"), field(3, &field(1, b"Deploy")), field(4, &field(1, b"deploys"))].concat();
        let child = [varint_field(1, 11), field(12, &first), field(12, &second)].concat();
        let questions = asked(&completion(&[child])).unwrap();
        let resource = &questions[0].call.resource;
        assert_eq!(
            (resource.namespace.as_deref(), resource.workflow_id.as_deref(), resource.task_queue.as_deref()),
            (Some("prod"), Some("deploy-1"), Some("deploys"))
        );
        // The same for a signal's target namespace, an activity's queue and a child's reuse policy.
        let signal = [
            varint_field(1, 12),
            field(13, &field(1, b"prod")),
            field(13, &[field(2, &field(1, b"deploy-1")), field(3, b"approve")].concat()),
        ]
        .concat();
        assert_eq!(asked(&completion(&[signal])).unwrap()[0].call.resource.namespace.as_deref(), Some("prod"));
        let activity =
            [varint_field(1, 1), field(2, &field(4, &field(1, b"other-team"))), field(2, &field(2, &field(1, b"A")))]
                .concat();
        assert_eq!(asked(&completion(&[activity])).unwrap()[0].call.resource.task_queue.as_deref(), Some("other-team"));
        let terminating = [varint_field(1, 11), field(12, &varint_field(11, 4)), field(12, &second)].concat();
        let names: Vec<_> = asked(&completion(&[terminating])).unwrap().iter().map(|q| q.spec.name).collect();
        assert_eq!(names, ["StartChildWorkflowExecution", "TerminateWorkflowExecution"]);
    }

    #[test]
    fn a_command_naming_a_sticky_queue_is_refused() {
        let sticky = [field(1, b"someone-elses-sticky"), varint_field(2, 2), field(3, b"deploys")].concat();
        let activity = [field(2, &field(1, b"Charge")), field(4, &sticky)].concat();
        assert!(matches!(
            asked(&completion(&[command(1, 2, &activity)])),
            Err(InspectError::NotNormalQueue { kind: 2, .. })
        ));
    }

    #[test]
    fn a_child_that_terminates_is_also_asked_as_a_terminate() {
        let child = [field(2, b"ledger-7"), field(3, &field(1, b"Ledger")), varint_field(11, 4)].concat();
        let questions = asked(&completion(&[command(11, 12, &child)])).unwrap();
        let names: Vec<_> = questions.iter().map(|q| q.spec.name).collect();
        assert_eq!(names, ["StartChildWorkflowExecution", "TerminateWorkflowExecution"]);
        assert_eq!(questions[1].call.resource.workflow_id.as_deref(), Some("ledger-7"));
    }

    #[test]
    fn a_batch_is_asked_as_its_operation_on_each_workflow() {
        let spec = lookup("/temporal.api.workflowservice.v1.WorkflowService/StartBatchOperation");
        let ask = |message: &[u8]| {
            let call = crate::temporal::inspect::inspect(spec, message)?;
            questions(spec, message, &call, &TaskWorkflow::default())
        };
        let execution = |id: &[u8]| field(5, &field(1, id));
        let terminate =
            [field(1, b"payments"), execution(b"ledger-7"), execution(b"ledger-8"), field(10, &[])].concat();
        let asked = ask(&terminate).unwrap();
        let ids: Vec<_> = asked.iter().map(|q| (q.spec.name, q.call.resource.workflow_id.as_deref())).collect();
        assert_eq!(
            ids,
            [("TerminateWorkflowExecution", Some("ledger-7")), ("TerminateWorkflowExecution", Some("ledger-8"))]
        );
        // By query: on a workflow without an id, which only a namespace-wide grant matches.
        let by_query =
            [field(1, b"payments"), field(2, b"WorkflowType = 'Ledger'"), field(11, &field(1, b"stop"))].concat();
        let asked = ask(&by_query).unwrap();
        assert_eq!(asked.len(), 1);
        assert_eq!(
            (asked[0].spec.name, asked[0].call.resource.workflow_id.as_deref()),
            ("SignalWorkflowExecution", None)
        );
        assert_eq!(asked[0].call.signal_name.as_deref(), Some("stop"));
        // Two operations, or one flowgate does not know: refused.
        assert!(ask(&[field(1, b"payments"), field(10, &[]), field(12, &[])].concat()).is_err());
        assert!(ask(&[field(1, b"payments"), field(40, &[])].concat()).is_err());
        // Selected by `target_executions`: asked without an id.
        let targets = [field(1, b"payments"), field(22, &field(1, b"x")), field(12, &[])].concat();
        let asked = ask(&targets).unwrap();
        assert_eq!(
            (asked[0].spec.name, asked[0].call.resource.workflow_id.as_deref()),
            ("RequestCancelWorkflowExecution", None)
        );
    }

    #[test]
    fn a_reset_that_signals_is_also_a_signal() {
        let spec = lookup("/temporal.api.workflowservice.v1.WorkflowService/ResetWorkflowExecution");
        let signal = field(8, &field(1, &field(1, b"resume")));
        let message = [field(1, b"payments"), field(2, &field(1, b"ledger-7")), signal.clone(), signal].concat();
        let call = crate::temporal::inspect::inspect(spec, &message).unwrap();
        let asked = questions(spec, &message, &call, &TaskWorkflow::default()).unwrap();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].spec.name, "SignalWorkflowExecution");
        assert_eq!(asked[0].call.resource.workflow_id.as_deref(), Some("ledger-7"));
        assert_eq!(asked[0].call.signal_name.as_deref(), Some("resume"));
    }

    #[test]
    fn starts_are_asked_as_what_they_also_do() {
        let start = |extra: &[u8]| {
            [
                field(1, b"payments"),
                field(2, b"ledger-7"),
                field(3, &field(1, b"Ledger")),
                field(4, &field(1, b"q")),
                extra.to_vec(),
            ]
            .concat()
        };
        let ask = |message: &[u8]| {
            let spec = lookup("/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution");
            let call = crate::temporal::inspect::inspect(spec, message).unwrap();
            questions(spec, message, &call, &TaskWorkflow::default()).unwrap()
        };
        assert!(ask(&start(&[])).is_empty());
        let names = |qs: Vec<Question>| qs.into_iter().map(|q| q.spec.name).collect::<Vec<_>>();
        assert_eq!(names(ask(&start(&varint_field(22, 3)))), ["TerminateWorkflowExecution"]);
        // The server keeps an enum's low 32 bits.
        assert_eq!(names(ask(&start(&varint_field(11, 4 + (1 << 32))))), ["TerminateWorkflowExecution"]);
        assert_eq!(names(ask(&start(&varint_field(17, 1)))), ["PollWorkflowTaskQueue"]);
        let attach = [varint_field(22, 2), field(26, &varint_field(2, 1))].concat();
        assert_eq!(names(ask(&start(&attach))), ["AttachToExistingWorkflow"]);
        // USE_EXISTING alone attaches nothing.
        assert!(ask(&start(&varint_field(22, 2))).is_empty());
    }
}
