//! Request inspection: from the first gRPC message of a call to the resource it touches.
//!
//! A gRPC message on the wire is a 5-byte prefix (compressed flag, big-endian length) and the
//! protobuf bytes. Temporal SDKs gzip their requests by default, so a compressed message is
//! inflated here, with a cap on the inflated size so a decompression bomb costs nothing.

use std::io::Read;

use super::catalog::{MethodSpec, ResourceSpec, TaskQueueRef};
use super::wire::{self, WireError};

/// `temporal.api.enums.v1.TaskQueueKind`: `UNSPECIFIED = 0` and `NORMAL = 1` are a normal queue.
const TASK_QUEUE_KIND_NORMAL: u32 = 1;
/// `TASK_QUEUE_KIND_STICKY`: one worker's own queue for the workflows it has cached.
const TASK_QUEUE_KIND_STICKY: u32 = 2;

/// Why a request could not be inspected. Each of these is the client's fault and maps to
/// `INVALID_ARGUMENT` (or `RESOURCE_EXHAUSTED` for size), never to an allow.
///
/// The two size refusals use grpc-go's exact wording, the words Temporal's frontend itself
/// answers with: the Go SDK and sdk-core (Python, TypeScript) recognise these message prefixes
/// as "message too large", stop retrying, and fail the workflow task with cause
/// `GRPC_MESSAGE_TOO_LARGE` (so the server ends the workflow) instead of retrying for ever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("grpc: received message larger than max ({size} vs. {limit})")]
    TooLarge { size: usize, limit: usize },
    #[error("grpc: received message after decompression larger than max {limit}")]
    InflatedTooLarge { limit: usize },
    #[error("gRPC message prefix has compressed flag `{0}`, not 0 or 1")]
    BadCompressedFlag(u8),
    #[error("request ended inside the gRPC message prefix")]
    TruncatedPrefix,
    #[error("request ended after {got} of {expected} message bytes")]
    TruncatedMessage { got: usize, expected: usize },
    #[error("compressed request message but no `grpc-encoding` was given")]
    CompressedWithoutEncoding,
    #[error("unsupported `grpc-encoding` `{0}`")]
    UnsupportedEncoding(String),
    #[error("request message is not valid gzip")]
    BadGzip,
    #[error("ambiguous request: {0}")]
    Ambiguous(&'static str),
    #[error("task queue `{queue}` has kind `{kind}`: {method} takes only a normal task queue")]
    NotNormalQueue { queue: String, kind: u32, method: &'static str },
    #[error("command {index} has unknown command type `{command_type}`")]
    UnknownCommand { index: usize, command_type: u64 },
    #[error("command {index} (`{command}`) does not carry its attributes alone")]
    CommandAttributes { index: usize, command: &'static str },
    #[error("malformed request message: {0}")]
    Malformed(#[from] WireError),
}

/// The Cedar resource type a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Cluster,
    Namespace,
    Workflow,
    TaskQueue,
    Schedule,
    NexusEndpoint,
}

impl ResourceKind {
    pub fn entity_type(self) -> &'static str {
        match self {
            ResourceKind::Cluster => "Cluster",
            ResourceKind::Namespace => "Namespace",
            ResourceKind::Workflow => "Workflow",
            ResourceKind::TaskQueue => "TaskQueue",
            ResourceKind::Schedule => "Schedule",
            ResourceKind::NexusEndpoint => "NexusEndpoint",
        }
    }
}

/// The resource a request touches, as read from it. Empty fields read as `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resource {
    pub kind: ResourceKind,
    pub namespace: Option<String>,
    pub workflow_id: Option<String>,
    pub workflow_type: Option<String>,
    pub task_queue: Option<String>,
    pub schedule_id: Option<String>,
    /// A Nexus endpoint's name (`NexusEndpoint` resources).
    pub endpoint: Option<String>,
}

impl Resource {
    /// A resource of `kind` with no fields read.
    pub fn new(kind: ResourceKind) -> Resource {
        Resource {
            kind,
            namespace: None,
            workflow_id: None,
            workflow_type: None,
            task_queue: None,
            schedule_id: None,
            endpoint: None,
        }
    }
}

/// What one call asks for: the resource, plus the names that go into the Cedar context.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Call {
    pub resource: Resource,
    pub signal_name: Option<String>,
    pub query_type: Option<String>,
    pub update_name: Option<String>,
    /// `ScheduleActivityTask`: the activity's type.
    pub activity_type: Option<String>,
    /// `ScheduleNexusOperation`: the service and operation on the endpoint.
    pub nexus_service: Option<String>,
    pub nexus_operation: Option<String>,
    /// For a question implied by another call (a command, a start's conflict policy): the
    /// action of the request that implied it.
    pub implied_by: Option<&'static str>,
    /// The request carries a non-empty task token.
    pub has_task_token: bool,
    /// The sticky queue the request polls, registers or shuts down (a worker's own queue:
    /// flowgate checks it belongs to the caller, policies see its normal name).
    pub sticky_queue: Option<String>,
    /// The namespace id the request names (`MethodSpec::namespace_id`), as sent. Once the
    /// gateway has resolved it, `resource.namespace` holds the name it stands for.
    pub namespace_id: Option<String>,
}

impl Call {
    /// A call on `resource` with no context names.
    pub fn new(resource: Resource) -> Call {
        Call {
            resource,
            signal_name: None,
            query_type: None,
            update_name: None,
            activity_type: None,
            nexus_service: None,
            nexus_operation: None,
            implied_by: None,
            has_task_token: false,
            sticky_queue: None,
            namespace_id: None,
        }
    }

    /// A call of `spec` whose message was not read: its resource kind and nothing else.
    pub fn unread(spec: &MethodSpec) -> Call {
        Call::new(Resource::new(spec.resource.kind()))
    }
}

/// A gRPC message, split from its 5-byte prefix, as far as the body has arrived.
pub struct Framed<'a> {
    pub compressed: bool,
    pub message: &'a [u8],
}

/// The length the 5-byte prefix at the start of `body` announces, refused past `limit`.
pub fn announced_length(body: &[u8], limit: usize) -> Result<usize, InspectError> {
    let prefix: [u8; 4] = body.get(1..5).and_then(|b| b.try_into().ok()).ok_or(InspectError::TruncatedPrefix)?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit {
        return Err(InspectError::TooLarge { size: len, limit });
    }
    Ok(len)
}

/// Splits the first gRPC message off `body`. `Ok(None)` means more bytes are needed.
pub fn first_message(body: &[u8], limit: usize) -> Result<Option<Framed<'_>>, InspectError> {
    if body.len() < 5 {
        return Ok(None);
    }
    // grpc-go refuses any other flag; reading such a message as either would inspect bytes
    // the server never acts on.
    let compressed = match body[0] {
        0 => false,
        1 => true,
        other => return Err(InspectError::BadCompressedFlag(other)),
    };
    let len = announced_length(body, limit)?;
    if body.len() < 5 + len {
        return Ok(None);
    }
    Ok(Some(Framed { compressed, message: &body[5..5 + len] }))
}

/// The message bytes, inflated when compressed; `encoding` is the `grpc-encoding` header.
pub fn decompress<'a>(
    framed: &Framed<'a>,
    encoding: Option<&str>,
    inflate_limit: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, InspectError> {
    if !framed.compressed {
        return Ok(std::borrow::Cow::Borrowed(framed.message));
    }
    match encoding {
        None | Some("identity") => Err(InspectError::CompressedWithoutEncoding),
        Some("gzip") => {
            // Read one byte past the limit to tell "exactly at" from "over".
            let budget = inflate_limit.saturating_add(1);
            // A guess at the inflated size, within the budget: the cap bounds memory, not only
            // the result (four times a 4 MiB message would be 16 MiB before a byte inflates).
            let mut inflated = Vec::with_capacity(framed.message.len().saturating_mul(4).min(budget));
            // Every member of a multi-member gzip stream: grpc-go's reader inflates them all, so
            // reading only the first would let a second member smuggle fields past inspection.
            let decoder = flate2::read::MultiGzDecoder::new(framed.message);
            decoder.take(budget as u64).read_to_end(&mut inflated).map_err(|_| InspectError::BadGzip)?;
            if inflated.len() > inflate_limit {
                return Err(InspectError::InflatedTooLarge { limit: inflate_limit });
            }
            Ok(std::borrow::Cow::Owned(inflated))
        }
        Some(other) => Err(InspectError::UnsupportedEncoding(other.to_owned())),
    }
}

/// Whether `method`'s response names a run it made (see [`started_run`]).
pub fn makes_runs(method: &str) -> bool {
    run_paths(method).is_some()
}

/// Where a response names the run its request made, and whether it made a new one.
fn run_paths(method: &str) -> Option<(&'static [u32], Option<&'static [u32]>)> {
    match method {
        // `run_id = 1`, `started = 3`.
        "StartWorkflowExecution" => Some((&[1], Some(&[3]))),
        // `run_id = 1`, `started = 2`.
        "SignalWithStartWorkflowExecution" => Some((&[1], Some(&[2]))),
        // The new run of the reset.
        "ResetWorkflowExecution" => Some((&[1], None)),
        // `responses = 1` -> `start_workflow = 1` -> the start's response.
        "ExecuteMultiOperation" => Some((&[1, 1, 1], Some(&[1, 1, 3]))),
        _ => None,
    }
}

/// The run a response of `method` names, and whether its request made it (a start that found
/// a running workflow under `USE_EXISTING` did not). Unreadable fields are left out: this is for
/// the record, after the fact.
pub fn started_run(method: &str, response: &[u8]) -> (Option<String>, Option<bool>) {
    let Some((run_id, started)) = run_paths(method) else { return (None, None) };
    let run_id = wire::last_string(response, run_id).ok().flatten().map(str::to_owned);
    let started = started.and_then(|path| wire::last_varint(response, path).ok()).map(|v| v.unwrap_or(0) != 0);
    (run_id, started)
}

pub(crate) fn owned(value: Option<&str>) -> Option<String> {
    value.map(str::to_owned)
}

pub(crate) fn string_at(message: &[u8], path: Option<&[u32]>) -> Result<Option<String>, WireError> {
    match path {
        Some(path) => Ok(owned(wire::last_string(message, path)?)),
        None => Ok(None),
    }
}

/// A `temporal.api.taskqueue.v1.TaskQueue` message, as the server reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueRef {
    /// `name = 1`: the queue Temporal acts on.
    pub name: Option<String>,
    /// `kind = 2`, as the `int32` the server keeps (the low 32 bits of the varint).
    pub kind: u32,
    /// `normal_name = 3`: for a sticky queue, the normal queue of its worker.
    pub normal_name: Option<String>,
}

impl QueueRef {
    pub fn is_sticky(&self) -> bool {
        self.kind == TASK_QUEUE_KIND_STICKY
    }

    /// The queue, refused unless it is a normal one: Temporal acts on `name`, and only a
    /// worker's own workflow-task poll may name a sticky queue.
    pub fn normal(self, method: &'static str) -> Result<Option<String>, InspectError> {
        if self.kind > TASK_QUEUE_KIND_NORMAL {
            return Err(InspectError::NotNormalQueue { queue: self.name.unwrap_or_default(), kind: self.kind, method });
        }
        Ok(self.name)
    }
}

/// Reads the `TaskQueue` message at `path`.
pub fn queue_at(message: &[u8], path: &[u32]) -> Result<QueueRef, WireError> {
    // Paths are the catalog's and the commands' own, a handful of numbers: built on the stack.
    const MAX_PATH: usize = 8;
    let depth = path.len();
    if depth >= MAX_PATH {
        return Err(WireError::TooDeep(MAX_PATH));
    }
    let mut field = [0u32; MAX_PATH];
    field[..depth].copy_from_slice(path);
    let at = |number: u32| {
        let mut field = field;
        field[depth] = number;
        field
    };
    Ok(QueueRef {
        name: owned(wire::last_string(message, &at(1)[..=depth])?),
        kind: wire::last_varint(message, &at(2)[..=depth])?.map_or(0, |v| v as u32),
        normal_name: owned(wire::last_string(message, &at(3)[..=depth])?),
    })
}

/// The task queue a request names, and the sticky queue when it polls one.
fn task_queue_at(
    spec: &MethodSpec,
    message: &[u8],
    reference: Option<TaskQueueRef>,
) -> Result<(Option<String>, Option<String>), InspectError> {
    match reference {
        None => Ok((None, None)),
        Some(TaskQueueRef::Name(path)) => Ok((string_at(message, Some(path))?, None)),
        Some(TaskQueueRef::Message(path)) => {
            let queue = queue_at(message, path)?;
            // A worker polls its own sticky queue for the workflows it has cached. Policies are
            // asked about its normal queue; the sticky queue itself must be the caller's own
            // (the gateway checks). Without a normal name it cannot be attributed: it is asked
            // by its own worker-specific name, which no task-queue policy matches by accident.
            if queue.is_sticky() && spec.name == "PollWorkflowTaskQueue" {
                let normal = queue.normal_name.clone().or_else(|| queue.name.clone());
                return Ok((normal, queue.name));
            }
            Ok((queue.normal(spec.name)?, None))
        }
    }
}

/// `ExecuteMultiOperation.operations` is a repeated oneof: the server takes element 0 as the start
/// and the rest as updates, while field merging would blend elements together. Requests whose
/// elements are not each exactly one operation, starting with the start, are refused, so the
/// merged view inspection reads is the one the server acts on.
fn check_multi_operation(message: &[u8]) -> Result<(), InspectError> {
    const OPERATIONS: u32 = 2;
    const START_WORKFLOW: u32 = 1;
    const UPDATE_WORKFLOW: u32 = 2;
    let mut index = 0usize;
    for field in wire::fields(message) {
        let (number, value) = field?;
        let wire::Value::Bytes(operation) = value else { continue };
        if number != OPERATIONS {
            continue;
        }
        let mut members = wire::fields(operation).filter_map(|f| match f {
            Ok((n @ (START_WORKFLOW | UPDATE_WORKFLOW), wire::Value::Bytes(_))) => Some(Ok(n)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        });
        let expected = if index == 0 { START_WORKFLOW } else { UPDATE_WORKFLOW };
        match (members.next().transpose()?, members.next().transpose()?) {
            (Some(member), None) if member == expected => {}
            _ => return Err(InspectError::Ambiguous("each multi-operation must be one start followed by updates")),
        }
        index += 1;
    }
    Ok(())
}

/// `ShutdownWorkerRequest.sticky_task_queue`, and
/// `RespondWorkflowTaskCompletedRequest.sticky_attributes.worker_task_queue`: the sticky queue
/// a worker shuts down, or registers for the workflow it completed a task of.
const SHUTDOWN_STICKY_QUEUE: &[u32] = &[2];
const STICKY_ATTRIBUTES_QUEUE: &[u32] = &[4, 1];

/// Reads the resource and context names of `spec` out of a (decompressed) request message.
pub fn inspect(spec: &MethodSpec, message: &[u8]) -> Result<Call, InspectError> {
    wire::validate(message)?;
    if spec.name == "ExecuteMultiOperation" {
        check_multi_operation(message)?;
    }
    let mut sticky_queue = None;
    let mut resource = Resource::new(spec.resource.kind());
    match spec.resource {
        ResourceSpec::Cluster | ResourceSpec::NexusEndpoint => {}
        ResourceSpec::Namespace { namespace } => resource.namespace = string_at(message, Some(namespace))?,
        ResourceSpec::Workflow { namespace, workflow_id, workflow_type, task_queue } => {
            resource.namespace = string_at(message, Some(namespace))?;
            resource.workflow_id = string_at(message, workflow_id)?;
            resource.workflow_type = string_at(message, workflow_type)?;
            (resource.task_queue, _) = task_queue_at(spec, message, task_queue)?;
        }
        ResourceSpec::TaskQueue { namespace, task_queue } => {
            resource.namespace = string_at(message, Some(namespace))?;
            (resource.task_queue, sticky_queue) = task_queue_at(spec, message, Some(task_queue))?;
        }
        ResourceSpec::Schedule { namespace, schedule_id, workflow_type, task_queue } => {
            resource.namespace = string_at(message, Some(namespace))?;
            resource.workflow_type = string_at(message, workflow_type)?;
            (resource.task_queue, _) = task_queue_at(spec, message, task_queue)?;
            resource.schedule_id = string_at(message, Some(schedule_id))?;
        }
    }
    match spec.name {
        "ShutdownWorker" => sticky_queue = string_at(message, Some(SHUTDOWN_STICKY_QUEUE))?,
        "RespondWorkflowTaskCompleted" => {
            let queue = queue_at(message, STICKY_ATTRIBUTES_QUEUE)?;
            sticky_queue = queue.name;
        }
        _ => {}
    }
    let has_task_token = match spec.task_token {
        Some(path) => wire::last_bytes(message, path)?.is_some_and(|token| !token.is_empty()),
        None => false,
    };
    Ok(Call {
        signal_name: string_at(message, spec.signal_name)?,
        query_type: string_at(message, spec.query_type)?,
        update_name: string_at(message, spec.update_name)?,
        has_task_token,
        sticky_queue,
        namespace_id: string_at(message, spec.namespace_id)?,
        ..Call::new(resource)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temporal::catalog::lookup;

    fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut body = vec![flag];
        body.extend((message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        body
    }

    #[test]
    fn compressed_flags_other_than_0_and_1_are_refused() {
        assert!(!first_message(&frame(0, b"x"), 16).unwrap().unwrap().compressed);
        assert!(first_message(&frame(1, b"x"), 16).unwrap().unwrap().compressed);
        for flag in [2, 3, 0x80, 0xff] {
            assert_eq!(first_message(&frame(flag, b"x"), 16).err(), Some(InspectError::BadCompressedFlag(flag)));
        }
    }

    #[test]
    fn inflation_allocates_within_its_budget() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        encoder.write_all(&[7; 4096]).unwrap();
        let gzipped = encoder.finish().unwrap();
        let framed = Framed { compressed: true, message: &gzipped };
        assert_eq!(decompress(&framed, Some("gzip"), 100).err(), Some(InspectError::InflatedTooLarge { limit: 100 }));
        let std::borrow::Cow::Owned(inflated) = decompress(&framed, Some("gzip"), 4096).unwrap() else { panic!() };
        assert!(inflated.capacity() <= 4097, "{} bytes for a 4096-byte budget", inflated.capacity());
        // A limit of `usize::MAX` is no limit, not a limit of 0 (`+ 1` must not wrap).
        assert_eq!(decompress(&framed, Some("gzip"), usize::MAX).unwrap().len(), 4096);
    }

    #[test]
    fn a_sticky_kind_is_read_as_the_int32_the_server_reads() {
        let spec = lookup("/temporal.api.workflowservice.v1.WorkflowService/PollWorkflowTaskQueue");
        let field = |number: u8, value: &[u8]| [&[number << 3 | 2, value.len() as u8][..], value].concat();
        // TaskQueue { name = "sticky-1", kind = 2 + 2^32 (varint), normal_name = "orders" }.
        let kind = [0x10, 0x82, 0x80, 0x80, 0x80, 0x10];
        let queue = [field(1, b"sticky-1"), kind.to_vec(), field(3, b"orders")].concat();
        let message = [field(1, b"payments"), field(2, &queue)].concat();
        let call = inspect(spec, &message).unwrap();
        assert_eq!(call.resource.task_queue.as_deref(), Some("orders"));
        assert_eq!(call.sticky_queue.as_deref(), Some("sticky-1"));
    }

    #[test]
    fn only_a_workflow_task_poll_may_name_a_sticky_queue() {
        let field = |number: u8, value: &[u8]| [&[number << 3 | 2, value.len() as u8][..], value].concat();
        let queue = [field(1, b"victim-sticky"), vec![0x10, 2], field(3, b"deploys")].concat();
        for method in ["PollActivityTaskQueue", "PollNexusTaskQueue", "DescribeTaskQueue"] {
            let spec = lookup(&format!("/temporal.api.workflowservice.v1.WorkflowService/{method}"));
            let path = match spec.resource {
                ResourceSpec::TaskQueue { task_queue: TaskQueueRef::Message(path), .. } => path[0],
                _ => unreachable!(),
            };
            let message = [field(1, b"payments"), field(path as u8, &queue)].concat();
            assert!(matches!(inspect(spec, &message), Err(InspectError::NotNormalQueue { kind: 2, .. })), "{method}");
        }
        // A start on a sticky queue would run the workflow on whichever worker owns it.
        let spec = lookup("/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution");
        let message = [field(1, b"payments"), field(2, b"wf"), field(3, &field(1, b"T")), field(4, &queue)].concat();
        assert!(matches!(inspect(spec, &message), Err(InspectError::NotNormalQueue { .. })));
        // Kinds past sticky are no normal queue either.
        let other = [field(1, b"q"), vec![0x10, 3]].concat();
        let message = [field(1, b"payments"), field(2, b"wf"), field(3, &field(1, b"T")), field(4, &other)].concat();
        assert!(matches!(inspect(spec, &message), Err(InspectError::NotNormalQueue { kind: 3, .. })));
    }
}
