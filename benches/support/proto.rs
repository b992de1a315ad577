//! Hand-written protobuf messages for the few Temporal requests the benchmark sends
//! (field numbers from temporal.api.workflowservice.v1), framed as gRPC messages.

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
    frame(&StartWorkflowExecutionRequest {
        namespace: namespace.into(),
        workflow_id: workflow_id.into(),
        workflow_type: Some(WorkflowType { name: "BenchWorkflow".into() }),
        task_queue: Some(TaskQueue { name: "bench-tq".into(), kind: 1 }),
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
