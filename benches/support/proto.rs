//! Hand-written protobuf messages for the few Temporal requests the benchmark sends
//! (field numbers from temporal.api.workflowservice.v1 and temporal.api.command.v1), framed
//! as gRPC messages.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

pub const SERVICE: &str = "/temporal.api.workflowservice.v1.WorkflowService/";

#[derive(Clone, PartialEq, prost::Message)]
pub struct DescribeNamespaceRequest {
    #[prost(string, tag = "1")]
    pub namespace: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkflowType {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskQueue {
    #[prost(string, tag = "1")]
    pub name: String,
    /// 1 = TASK_QUEUE_KIND_NORMAL
    #[prost(int32, tag = "2")]
    pub kind: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StartWorkflowExecutionRequest {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub workflow_id: String,
    #[prost(message, optional, tag = "3")]
    pub workflow_type: Option<WorkflowType>,
    #[prost(message, optional, tag = "4")]
    pub task_queue: Option<TaskQueue>,
    #[prost(string, tag = "9")]
    pub identity: String,
    #[prost(string, tag = "10")]
    pub request_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PollActivityTaskQueueRequest {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(message, optional, tag = "2")]
    pub task_queue: Option<TaskQueue>,
    #[prost(string, tag = "3")]
    pub identity: String,
}

/// One uncompressed gRPC length-prefixed message.
pub fn frame<M: Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message.encode(&mut buf).expect("encode");
    buf.freeze()
}

pub fn describe_namespace(namespace: &str) -> Bytes {
    frame(&DescribeNamespaceRequest { namespace: namespace.into() })
}

pub fn start_workflow(namespace: &str, workflow_id: &str) -> Bytes {
    start_workflow_on(namespace, workflow_id, "bench-tq")
}

pub fn start_workflow_on(namespace: &str, workflow_id: &str, task_queue: &str) -> Bytes {
    frame(&StartWorkflowExecutionRequest {
        namespace: namespace.into(),
        workflow_id: workflow_id.into(),
        workflow_type: Some(WorkflowType { name: "BenchWorkflow".into() }),
        task_queue: Some(TaskQueue { name: task_queue.into(), kind: 1 }),
        identity: "flowgate-bench".into(),
        request_id: uuid::Uuid::now_v7().to_string(),
    })
}

pub fn poll_activity(namespace: &str, task_queue: &str) -> Bytes {
    frame(&PollActivityTaskQueueRequest {
        namespace: namespace.into(),
        task_queue: Some(TaskQueue { name: task_queue.into(), kind: 1 }),
        identity: "flowgate-bench-poller".into(),
    })
}

// The worker's hot path: poll a workflow task, complete it with commands.

#[derive(Clone, PartialEq, prost::Message)]
pub struct PollWorkflowTaskQueueRequest {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(message, optional, tag = "2")]
    pub task_queue: Option<TaskQueue>,
    #[prost(string, tag = "3")]
    pub identity: String,
}

/// Only the task token: prost skips the other fields (history, execution, ...).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PollWorkflowTaskQueueResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub task_token: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ActivityType {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScheduleActivityTaskCommandAttributes {
    #[prost(string, tag = "1")]
    pub activity_id: String,
    #[prost(message, optional, tag = "2")]
    pub activity_type: Option<ActivityType>,
    #[prost(message, optional, tag = "4")]
    pub task_queue: Option<TaskQueue>,
    #[prost(message, optional, tag = "9")]
    pub start_to_close_timeout: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordMarkerCommandAttributes {
    #[prost(string, tag = "1")]
    pub marker_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CompleteWorkflowExecutionCommandAttributes {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    /// `CommandType`: 1 = SCHEDULE_ACTIVITY_TASK, 4 = COMPLETE_WORKFLOW_EXECUTION, 9 = RECORD_MARKER.
    #[prost(int32, tag = "1")]
    pub command_type: i32,
    #[prost(message, optional, tag = "2")]
    pub schedule_activity_task: Option<ScheduleActivityTaskCommandAttributes>,
    #[prost(message, optional, tag = "4")]
    pub complete_workflow_execution: Option<CompleteWorkflowExecutionCommandAttributes>,
    #[prost(message, optional, tag = "10")]
    pub record_marker: Option<RecordMarkerCommandAttributes>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RespondWorkflowTaskCompletedRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub task_token: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    pub commands: Vec<Command>,
    #[prost(string, tag = "3")]
    pub identity: String,
    #[prost(string, tag = "9")]
    pub namespace: String,
}

pub fn poll_workflow(namespace: &str, task_queue: &str) -> Bytes {
    frame(&PollWorkflowTaskQueueRequest {
        namespace: namespace.into(),
        task_queue: Some(TaskQueue { name: task_queue.into(), kind: 1 }),
        identity: "flowgate-bench-worker".into(),
    })
}

/// The task token of a framed `PollWorkflowTaskQueueResponse`; empty when the long poll ended
/// without a task (or the body is not one uncompressed message).
pub fn workflow_task_token(framed: &[u8]) -> Vec<u8> {
    if framed.len() < 5 || framed[0] != 0 {
        return Vec::new();
    }
    let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
    let Some(message) = framed.get(5..5 + len) else { return Vec::new() };
    PollWorkflowTaskQueueResponse::decode(message).map(|r| r.task_token).unwrap_or_default()
}

/// The three commands of the benchmark's workflow task: schedule an activity on the workflow's
/// own queue (one Cedar question: `ScheduleActivityTask` on that queue), record a marker and
/// complete the workflow (no question: they act on the workflow itself). Temporal takes an
/// activity scheduled in the task that completes the workflow; it is never run.
pub fn workflow_task_commands(task_queue: &str) -> Vec<Command> {
    vec![
        Command {
            command_type: 1,
            schedule_activity_task: Some(ScheduleActivityTaskCommandAttributes {
                activity_id: "1".into(),
                activity_type: Some(ActivityType { name: "BenchActivity".into() }),
                task_queue: Some(TaskQueue { name: task_queue.into(), kind: 1 }),
                start_to_close_timeout: Some(ProtoDuration { seconds: 60 }),
            }),
            ..Default::default()
        },
        Command {
            command_type: 9,
            record_marker: Some(RecordMarkerCommandAttributes { marker_name: "bench".into() }),
            ..Default::default()
        },
        Command {
            command_type: 4,
            complete_workflow_execution: Some(CompleteWorkflowExecutionCommandAttributes {}),
            ..Default::default()
        },
    ]
}

pub fn complete_workflow_task(namespace: &str, task_token: Vec<u8>, task_queue: &str) -> Bytes {
    frame(&RespondWorkflowTaskCompletedRequest {
        task_token,
        commands: workflow_task_commands(task_queue),
        identity: "flowgate-bench-worker".into(),
        namespace: namespace.into(),
    })
}
