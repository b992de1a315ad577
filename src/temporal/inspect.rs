//! Request inspection: from the first gRPC message of a call to the resource it touches.
//!
//! A gRPC message on the wire is a 5-byte prefix (compressed flag, big-endian length) and the
//! protobuf bytes. Temporal SDKs gzip their requests by default, so a compressed message is
//! inflated here, with a cap on the inflated size so a decompression bomb costs nothing.

use std::io::Read;

use super::catalog::{MethodSpec, ResourceSpec, TaskQueueRef};
use super::wire::{self, WireError};

/// `temporal.api.enums.v1.TaskQueueKind::TASK_QUEUE_KIND_STICKY`.
const TASK_QUEUE_KIND_STICKY: u64 = 2;

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
    #[error("malformed request message: {0}")]
    Malformed(#[from] WireError),
}

/// The Cedar resource type a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Cluster,
    Namespace,
    Workflow,
    TaskQueue,
    Schedule,
}

impl ResourceKind {
    pub fn entity_type(self) -> &'static str {
        match self {
            ResourceKind::Cluster => "Cluster",
            ResourceKind::Namespace => "Namespace",
            ResourceKind::Workflow => "Workflow",
            ResourceKind::TaskQueue => "TaskQueue",
            ResourceKind::Schedule => "Schedule",
        }
    }
}

/// The resource a request touches, as read from it. Empty fields read as `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub kind: ResourceKind,
    pub namespace: Option<String>,
    pub workflow_id: Option<String>,
    pub workflow_type: Option<String>,
    pub task_queue: Option<String>,
    pub schedule_id: Option<String>,
}

/// What one call asks for: the resource, plus the names that go into the Cedar context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub resource: Resource,
    pub signal_name: Option<String>,
    pub query_type: Option<String>,
    pub update_name: Option<String>,
    /// The request carries a non-empty task token.
    pub has_task_token: bool,
}

impl Call {
    /// A call of `spec` whose message was not read: its resource kind and nothing else.
    pub fn unread(spec: &MethodSpec) -> Call {
        Call {
            resource: Resource {
                kind: spec.resource.kind(),
                namespace: None,
                workflow_id: None,
                workflow_type: None,
                task_queue: None,
                schedule_id: None,
            },
            signal_name: None,
            query_type: None,
            update_name: None,
            has_task_token: false,
        }
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
    let compressed = body[0] & 1 == 1;
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
            let mut inflated = Vec::with_capacity(framed.message.len() * 4);
            // Every member of a multi-member gzip stream: grpc-go's reader inflates them all, so
            // reading only the first would let a second member smuggle fields past inspection.
            let decoder = flate2::read::MultiGzDecoder::new(framed.message);
            // Read one byte past the limit to tell "exactly at" from "over".
            decoder.take(inflate_limit as u64 + 1).read_to_end(&mut inflated).map_err(|_| InspectError::BadGzip)?;
            if inflated.len() > inflate_limit {
                return Err(InspectError::InflatedTooLarge { limit: inflate_limit });
            }
            Ok(std::borrow::Cow::Owned(inflated))
        }
        Some(other) => Err(InspectError::UnsupportedEncoding(other.to_owned())),
    }
}

fn owned(value: Option<&str>) -> Option<String> {
    value.map(str::to_owned)
}

fn string_at(message: &[u8], path: Option<&[u32]>) -> Result<Option<String>, WireError> {
    match path {
        Some(path) => Ok(owned(wire::last_string(message, path)?)),
        None => Ok(None),
    }
}

fn task_queue_at(message: &[u8], reference: Option<TaskQueueRef>) -> Result<Option<String>, WireError> {
    match reference {
        None => Ok(None),
        Some(TaskQueueRef::Name(path)) => string_at(message, Some(path)),
        Some(TaskQueueRef::Message(path)) => {
            let mut field = Vec::with_capacity(path.len() + 1);
            field.extend_from_slice(path);
            field.push(2);
            let sticky = wire::last_varint(message, &field)? == Some(TASK_QUEUE_KIND_STICKY);
            *field.last_mut().expect("non-empty") = if sticky { 3 } else { 1 };
            let name = wire::last_string(message, &field)?;
            // A sticky queue without its normal name cannot be attributed: report it by its
            // own (worker-specific) name, which no task-queue policy will match by accident.
            let name = match (sticky, name) {
                (true, None) => {
                    *field.last_mut().expect("non-empty") = 1;
                    wire::last_string(message, &field)?
                }
                (_, name) => name,
            };
            Ok(owned(name))
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

/// Reads the resource and context names of `spec` out of a (decompressed) request message.
pub fn inspect(spec: &MethodSpec, message: &[u8]) -> Result<Call, InspectError> {
    wire::validate(message)?;
    if spec.name == "ExecuteMultiOperation" {
        check_multi_operation(message)?;
    }
    let resource = match spec.resource {
        ResourceSpec::Cluster => Resource {
            kind: ResourceKind::Cluster,
            namespace: None,
            workflow_id: None,
            workflow_type: None,
            task_queue: None,
            schedule_id: None,
        },
        ResourceSpec::Namespace { namespace } => Resource {
            kind: ResourceKind::Namespace,
            namespace: string_at(message, Some(namespace))?,
            workflow_id: None,
            workflow_type: None,
            task_queue: None,
            schedule_id: None,
        },
        ResourceSpec::Workflow { namespace, workflow_id, workflow_type, task_queue } => Resource {
            kind: ResourceKind::Workflow,
            namespace: string_at(message, Some(namespace))?,
            workflow_id: string_at(message, workflow_id)?,
            workflow_type: string_at(message, workflow_type)?,
            task_queue: task_queue_at(message, task_queue)?,
            schedule_id: None,
        },
        ResourceSpec::TaskQueue { namespace, task_queue } => Resource {
            kind: ResourceKind::TaskQueue,
            namespace: string_at(message, Some(namespace))?,
            workflow_id: None,
            workflow_type: None,
            task_queue: task_queue_at(message, Some(task_queue))?,
            schedule_id: None,
        },
        ResourceSpec::Schedule { namespace, schedule_id, workflow_type, task_queue } => Resource {
            kind: ResourceKind::Schedule,
            namespace: string_at(message, Some(namespace))?,
            workflow_id: None,
            workflow_type: string_at(message, workflow_type)?,
            task_queue: task_queue_at(message, task_queue)?,
            schedule_id: string_at(message, Some(schedule_id))?,
        },
    };
    let has_task_token = match spec.task_token {
        Some(path) => wire::last_bytes(message, path)?.is_some_and(|token| !token.is_empty()),
        None => false,
    };
    Ok(Call {
        resource,
        signal_name: string_at(message, spec.signal_name)?,
        query_type: string_at(message, spec.query_type)?,
        update_name: string_at(message, spec.update_name)?,
        has_task_token,
    })
}
