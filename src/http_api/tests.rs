//! End-to-end tests of the transcoder: Temporal's own answers as the oracle.
//!
//! **How the Go vectors were made.** Two throwaway Go programs (go1.26, in a module requiring
//! `go.temporal.io/api v1.63.5`, the version Temporal server 1.32.0 is built with) read JSON
//! lines and used exactly the options Temporal's HTTP API uses
//! (`S/service/frontend/protojson_marshaler.go`):
//!
//! ```text
//! in := temporalproto.CustomJSONUnmarshalOptions{Metadata: map[string]any{
//!     commonpb.EnablePayloadShorthandMetadataKey: true}}
//! m := protoregistry.GlobalTypes.FindMessageByName(name).New().Interface()
//! err := in.Unmarshal(body, m)
//! // GO_REQUESTS: base64(proto.MarshalOptions{Deterministic: true}.Marshal(m)), or the error
//! // GO_RESPONSES: temporalproto.CustomJSONMarshalOptions{Indent: indent, Metadata: meta}.Marshal(m)
//! //               with meta holding EnablePayloadShorthandMetadataKey when shorthand is on
//! ```

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};

use super::*;

fn message(name: &str) -> MessageDescriptor {
    descriptors::pool().get_message_by_name(name).unwrap_or_else(|| panic!("{name} is in the pool"))
}

fn api() -> HttpApi {
    HttpApi::new()
}

/// Protobuf bytes → message, normalised by one encode/decode (default scalars drop out).
fn normalised(descriptor: &MessageDescriptor, message: &DynamicMessage) -> DynamicMessage {
    DynamicMessage::decode(descriptor.clone(), message.encode_to_vec().as_slice()).unwrap()
}

/// (message, JSON body, what Temporal builds: base64 protobuf, or `None` for a refusal).
const GO_REQUESTS: &[(&str, &str, Option<&str>)] = &[
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowType":{"name":"ChargeCard"},"taskQueue":{"name":"payments-tq"},"input":["card-123",{"amount":42}],"identity":"curl"}"#,
        Some(
            "GgwKCkNoYXJnZUNhcmQiDQoLcGF5bWVudHMtdHEqTwokChYKCGVuY29kaW5nEgpqc29uL3BsYWluEgoiY2FyZC0xMjMiCicKFgoIZW5jb2RpbmcSCmpzb24vcGxhaW4SDXsiYW1vdW50Ijo0Mn1KBGN1cmw=",
        ),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflow_type":{"name":"ChargeCard"},"task_queue":{"name":"payments-tq"},"input":{"payloads":[{"metadata":{"encoding":"anNvbi9wbGFpbg=="},"data":"eyJhIjoxfQ=="}]},"workflow_execution_timeout":"60s"}"#,
        Some("GgwKCkNoYXJnZUNhcmQiDQoLcGF5bWVudHMtdHEqIwohChYKCGVuY29kaW5nEgpqc29uL3BsYWluEgd7ImEiOjF9MgIIPA=="),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowIdConflictPolicy":"TerminateExisting"}"#,
        Some("sAED"),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowIdConflictPolicy":3}"#,
        Some("sAED"),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowIdConflictPolicy":"WORKFLOW_ID_CONFLICT_POLICY_TERMINATE_EXISTING"}"#,
        Some("sAED"),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowIdConflictPolicy":"terminate_existing"}"#,
        Some("sAED"),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowIdConflictPolicy":"terminateExisting"}"#,
        Some("sAED"),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowIdConflictPolicy":"Bogus"}"#,
        None,
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowIdConflictPolicy":99}"#,
        Some("sAFj"),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowIdReusePolicy":"AllowDuplicate","taskQueue":{"name":"q","kind":"Normal"}}"#,
        Some("IgUKAXEQAVgB"),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowId":"a","workflow_id":"b"}"#,
        None,
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowId":"a","workflowId":"b"}"#,
        None,
    ),
    (r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#, r#"{"bogus":1}"#, None),
    (r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#, r#"{"input":{"a":1}}"#, None),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"input":null,"memo":{"fields":{"m1":{"x":1},"m2":null,"m3":[1,"a"]}},"header":{"fields":{"h":{"metadata":{"encoding":"YmluYXJ5L3BsYWlu"},"data":"AAEC"}}}}"#,
        Some(
            "cnMKJwoCbTESIQoWCghlbmNvZGluZxIKanNvbi9wbGFpbhIHeyJ4IjoxfQofCgJtMhIZChcKCGVuY29kaW5nEgtiaW5hcnkvbnVsbAonCgJtMxIhChYKCGVuY29kaW5nEgpqc29uL3BsYWluEgdbMSwiYSJdggEmCiQKAWgSHwoYCghlbmNvZGluZxIMYmluYXJ5L3BsYWluEgMAAQI=",
        ),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"input":[{"_protoMessageType":"temporal.api.common.v1.WorkflowType","name":"x"},null,{"metadata":{"encoding":"YmluYXJ5L251bGw="}}]}"#,
        Some(
            "KpUBCl0KGQoIZW5jb2RpbmcSDWpzb24vcHJvdG9idWYKMgoLbWVzc2FnZVR5cGUSI3RlbXBvcmFsLmFwaS5jb21tb24udjEuV29ya2Zsb3dUeXBlEgx7Im5hbWUiOiJ4In0KGQoXCghlbmNvZGluZxILYmluYXJ5L251bGwKGQoXCghlbmNvZGluZxILYmluYXJ5L251bGw=",
        ),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"input":{"payloads":[["x"],{"metadata":{"encoding":"anNvbi9wbGFpbg"},"data":"MQ"}]}}"#,
        Some("Kj4KHwoWCghlbmNvZGluZxIKanNvbi9wbGFpbhIFWyJ4Il0KGwoWCghlbmNvZGluZxIKanNvbi9wbGFpbhIBMQ=="),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowRunTimeout":"1.5s","workflowTaskTimeout":"-0.5s","workflowExecutionTimeout":".5s"}"#,
        Some("MgYQgMq17gE6CAgBEIDKte4BQgsQgLbKkf7/////AQ=="),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowRunTimeout":"1.0000000001s"}"#,
        None,
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowRunTimeout":"315576000001s"}"#,
        None,
    ),
    (r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#, r#"{"workflowRunTimeout":60}"#, None),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"retryPolicy":{"backoffCoefficient":1.5,"maximumAttempts":"3","initialInterval":"1s"}}"#,
        Some("Yg8KAggBEQAAAAAAAPg/IAM="),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"retryPolicy":{"backoffCoefficient":"NaN"}}"#,
        Some("YgkRAQAAAAAA+H8="),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"retryPolicy":{"maximumAttempts":3.0}}"#,
        Some("YgIgAw=="),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"retryPolicy":{"maximumAttempts":1e1}}"#,
        Some("YgIgCg=="),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"retryPolicy":{"maximumAttempts":3.5}}"#,
        None,
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"retryPolicy":{"maximumAttempts":" 3"}}"#,
        None,
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"retryPolicy":{"maximumAttempts":4294967296}}"#,
        None,
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"requestEagerExecution":true,"searchAttributes":{"indexedFields":{"CustomKeywordField":"abc"}}}"#,
        Some("ejcKNQoSQ3VzdG9tS2V5d29yZEZpZWxkEh8KFgoIZW5jb2RpbmcSCmpzb24vcGxhaW4SBSJhYmMiiAEB"),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"userMetadata":{"summary":"hello","details":{"a":[]}}}"#,
        Some(
            "ugFJCiEKFgoIZW5jb2RpbmcSCmpzb24vcGxhaW4SByJoZWxsbyISJAoWCghlbmNvZGluZxIKanNvbi9wbGFpbhIKeyJhIjpudWxsfQ==",
        ),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowStartDelay":"10s","priority":{"priorityKey":2,"fairnessKey":"k","fairnessWeight":0.25}}"#,
        Some("ogECCAraAQoIAhIBax0AAIA+"),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"versioningOverride":{"pinned":{"behavior":"PINNED_OVERRIDE_BEHAVIOR_PINNED","version":{"deploymentName":"d","buildId":"b"}},"autoUpgrade":true}}"#,
        None,
    ),
    (
        r#"temporal.api.workflowservice.v1.ResetWorkflowExecutionRequest"#,
        r#"{"workflowTaskFinishEventId":"42","resetReapplyType":"Signal"}"#,
        Some("ICowAQ=="),
    ),
    (
        r#"temporal.api.workflowservice.v1.ResetWorkflowExecutionRequest"#,
        r#"{"workflowTaskFinishEventId":42}"#,
        Some("ICo="),
    ),
    (
        r#"temporal.api.workflowservice.v1.ResetWorkflowExecutionRequest"#,
        r#"{"workflowTaskFinishEventId":"9223372036854775808"}"#,
        None,
    ),
    (
        r#"temporal.api.workflowservice.v1.ResetWorkflowExecutionRequest"#,
        r#"{"workflowTaskFinishEventId":"-1e2"}"#,
        Some("IJz//////////wE="),
    ),
    (
        r#"temporal.api.workflowservice.v1.RespondActivityTaskCompletedRequest"#,
        r#"{"taskToken":"+/8="}"#,
        Some("CgL7/w=="),
    ),
    (
        r#"temporal.api.workflowservice.v1.RespondActivityTaskCompletedRequest"#,
        r#"{"taskToken":"-_8"}"#,
        Some("CgL7/w=="),
    ),
    (
        r#"temporal.api.workflowservice.v1.RespondActivityTaskCompletedRequest"#,
        r#"{"taskToken":"+/8"}"#,
        Some("CgL7/w=="),
    ),
    (r#"temporal.api.workflowservice.v1.RespondActivityTaskCompletedRequest"#, r#"{"taskToken":"+/8=="}"#, None),
    (
        r#"temporal.api.workflowservice.v1.ListScheduleMatchingTimesRequest"#,
        r#"{"startTime":"2026-12-07T04:11:38.513322562Z","endTime":"2026-12-07T06:11:38+02:00"}"#,
        Some("GgwI+uPY2AYQwtzi9AEiBgj649jYBg=="),
    ),
    (
        r#"temporal.api.workflowservice.v1.ListScheduleMatchingTimesRequest"#,
        r#"{"startTime":"2026-12-07T04:11:38.5133225621Z"}"#,
        None,
    ),
    (
        r#"temporal.api.workflowservice.v1.ListScheduleMatchingTimesRequest"#,
        r#"{"startTime":"2026-02-30T04:11:38Z"}"#,
        None,
    ),
    (r#"temporal.api.workflowservice.v1.ListScheduleMatchingTimesRequest"#, r#"{"startTime":"2026-12-07"}"#, None),
    (
        r#"temporal.api.workflowservice.v1.UpdateWorkflowExecutionOptionsRequest"#,
        r#"{"updateMask":"versioningOverride,priority.priorityKey","workflowExecutionOptions":{}}"#,
        Some("GgAiLAoTdmVyc2lvbmluZ19vdmVycmlkZQoVcHJpb3JpdHkucHJpb3JpdHlfa2V5"),
    ),
    (
        r#"temporal.api.workflowservice.v1.UpdateWorkflowExecutionOptionsRequest"#,
        r#"{"updateMask":"versioning_override"}"#,
        None,
    ),
    (
        r#"temporal.api.workflowservice.v1.SignalWithStartWorkflowExecutionRequest"#,
        r#"{"signalInput":["s"],"input":[],"links":[{"workflowEvent":{"namespace":"n","eventRef":{"eventId":"1","eventType":"WorkflowExecutionStarted"}}}]}"#,
        Some("KgBqHwodChYKCGVuY29kaW5nEgpqc29uL3BsYWluEgMicyLCAQwKCgoBbqIGBAgBEAE="),
    ),
    (
        r#"temporal.api.workflowservice.v1.StartBatchOperationRequest"#,
        r#"{"terminationOperation":{"identity":"x"},"signalOperation":{"signal":"s"}}"#,
        None,
    ),
    (
        r#"temporal.api.workflowservice.v1.StartBatchOperationRequest"#,
        r#"{"terminationOperation":null,"signalOperation":{"signal":"s"}}"#,
        Some("WgMKAXM="),
    ),
    (
        r#"temporal.api.workflowservice.v1.RespondWorkflowTaskCompletedRequest"#,
        r#"{"messages":[{"id":"m","body":{"@type":"type.googleapis.com/temporal.api.update.v1.Acceptance","acceptedRequestMessageId":"r","acceptedRequestSequencingEventId":"5"}}]}"#,
        Some("WkMKAW0qPgo1dHlwZS5nb29nbGVhcGlzLmNvbS90ZW1wb3JhbC5hcGkudXBkYXRlLnYxLkFjY2VwdGFuY2USBQoBchAF"),
    ),
    (
        r#"temporal.api.workflowservice.v1.RespondWorkflowTaskCompletedRequest"#,
        r#"{"messages":[{"id":"m","body":{"@type":"type.googleapis.com/google.protobuf.Duration","value":"3s"}}]}"#,
        Some("WjcKAW0qMgosdHlwZS5nb29nbGVhcGlzLmNvbS9nb29nbGUucHJvdG9idWYuRHVyYXRpb24SAggD"),
    ),
    (
        r#"temporal.api.workflowservice.v1.RespondWorkflowTaskCompletedRequest"#,
        r#"{"messages":[{"id":"m","body":{"@type":"type.googleapis.com/no.Such"}}]}"#,
        None,
    ),
];

#[test]
fn request_bodies_decode_to_what_temporal_builds() {
    for (name, body, expected) in GO_REQUESTS {
        let descriptor = message(name);
        let ours = json_in::decode_body(&descriptor, body.as_bytes(), true);
        match expected {
            None => {
                let error = refused(ours, body);
                assert_eq!(error.status, http::StatusCode::BAD_REQUEST, "{body}: {error}");
            }
            Some(encoded) => {
                let ours = ours.unwrap_or_else(|e| panic!("{body}: {e}"));
                let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
                let theirs = DynamicMessage::decode(descriptor.clone(), bytes.as_slice()).unwrap();
                // Compared as full-form JSON: deterministic (sorted maps), NaN-safe, readable.
                let plain = OutputOptions { shorthand: false, pretty: false };
                let ours = json_out::to_json(&normalised(&descriptor, &ours), plain).unwrap();
                let theirs = json_out::to_json(&theirs, plain).unwrap();
                assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap(), "{body}");
            }
        }
    }
}

/// (message, JSON, pretty, shorthand, what Temporal writes for the message that JSON makes).
const GO_RESPONSES: &[(&str, &str, bool, bool, &str)] = &[
    (
        r#"temporal.api.history.v1.HistoryEvent"#,
        r#"{"eventId":"1","eventTime":"2026-12-07T04:11:38.513322562Z","eventType":"EVENT_TYPE_WORKFLOW_EXECUTION_STARTED","taskId":"1048710","workflowExecutionStartedEventAttributes":{"workflowType":{"name":"ChargeCard"},"taskQueue":{"name":"payments-tq","kind":"TASK_QUEUE_KIND_NORMAL"},"input":["card-123",{"amount":42}],"workflowTaskTimeout":"10s","originalExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","identity":"curl","firstExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","attempt":1,"firstWorkflowTaskBackoff":"0s","workflowId":"order-1796616698"}}"#,
        false,
        true,
        r#"{"eventId":"1","eventTime":"2026-12-07T04:11:38.513322562Z","eventType":"EVENT_TYPE_WORKFLOW_EXECUTION_STARTED","taskId":"1048710","workflowExecutionStartedEventAttributes":{"workflowType":{"name":"ChargeCard"},"taskQueue":{"name":"payments-tq","kind":"TASK_QUEUE_KIND_NORMAL"},"input":["card-123",{"amount":42}],"workflowTaskTimeout":"10s","originalExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","identity":"curl","firstExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","attempt":1,"firstWorkflowTaskBackoff":"0s","workflowId":"order-1796616698"}}"#,
    ),
    (
        r#"temporal.api.history.v1.HistoryEvent"#,
        r#"{"eventId":"1","eventTime":"2026-12-07T04:11:38.513322562Z","eventType":"EVENT_TYPE_WORKFLOW_EXECUTION_STARTED","taskId":"1048710","workflowExecutionStartedEventAttributes":{"workflowType":{"name":"ChargeCard"},"taskQueue":{"name":"payments-tq","kind":"TASK_QUEUE_KIND_NORMAL"},"input":["card-123",{"amount":42}],"workflowTaskTimeout":"10s","originalExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","identity":"curl","firstExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","attempt":1,"firstWorkflowTaskBackoff":"0s","workflowId":"order-1796616698"}}"#,
        false,
        false,
        r#"{"eventId":"1","eventTime":"2026-12-07T04:11:38.513322562Z","eventType":"EVENT_TYPE_WORKFLOW_EXECUTION_STARTED","taskId":"1048710","workflowExecutionStartedEventAttributes":{"workflowType":{"name":"ChargeCard"},"taskQueue":{"name":"payments-tq","kind":"TASK_QUEUE_KIND_NORMAL"},"input":{"payloads":[{"metadata":{"encoding":"anNvbi9wbGFpbg=="},"data":"ImNhcmQtMTIzIg=="},{"metadata":{"encoding":"anNvbi9wbGFpbg=="},"data":"eyJhbW91bnQiOjQyfQ=="}]},"workflowTaskTimeout":"10s","originalExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","identity":"curl","firstExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","attempt":1,"firstWorkflowTaskBackoff":"0s","workflowId":"order-1796616698"}}"#,
    ),
    (
        r#"temporal.api.history.v1.HistoryEvent"#,
        r#"{"eventId":"1","eventTime":"2026-12-07T04:11:38.513322562Z","eventType":"EVENT_TYPE_WORKFLOW_EXECUTION_STARTED","taskId":"1048710","workflowExecutionStartedEventAttributes":{"workflowType":{"name":"ChargeCard"},"taskQueue":{"name":"payments-tq","kind":"TASK_QUEUE_KIND_NORMAL"},"input":["card-123",{"amount":42}],"workflowTaskTimeout":"10s","originalExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","identity":"curl","firstExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","attempt":1,"firstWorkflowTaskBackoff":"0s","workflowId":"order-1796616698"}}"#,
        true,
        true,
        r#"{
  "eventId": "1",
  "eventTime": "2026-12-07T04:11:38.513322562Z",
  "eventType": "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED",
  "taskId": "1048710",
  "workflowExecutionStartedEventAttributes": {
    "workflowType": {
      "name": "ChargeCard"
    },
    "taskQueue": {
      "name": "payments-tq",
      "kind": "TASK_QUEUE_KIND_NORMAL"
    },
    "input": [
      "card-123",
      {
        "amount": 42
      }
    ],
    "workflowTaskTimeout": "10s",
    "originalExecutionRunId": "01a24eb3-3a91-74e4-9b04-05c7fda25c03",
    "identity": "curl",
    "firstExecutionRunId": "01a24eb3-3a91-74e4-9b04-05c7fda25c03",
    "attempt": 1,
    "firstWorkflowTaskBackoff": "0s",
    "workflowId": "order-1796616698"
  }
}"#,
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"input":[{"b":[],"a":{"z":1e21,"y":0.000001,"x":1e-7,"w":123456789012345678}},null,"<&>",{"_protoMessageType":"a.B","k":1}],"memo":{"fields":{"m":"v","n":{"metadata":{"encoding":"YmluYXJ5L3BsYWlu"},"data":"AAE="}}}}"#,
        false,
        true,
        r#"{"input":[{"a":{"w":123456789012345680,"x":1e-7,"y":0.000001,"z":1e+21},"b":null},{"metadata":{"encoding":"YmluYXJ5L251bGw="}},"<&>",{"_protoMessageType":"a.B","k":1}],"memo":{"fields":{"m":"v","n":{"metadata":{"encoding":"YmluYXJ5L3BsYWlu"},"data":"AAE="}}}}"#,
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"input":[1,{"metadata":{"encoding":"YmluYXJ5L3BsYWlu"},"data":"AAE="}],"retryPolicy":{"backoffCoefficient":2,"initialInterval":"1.500s"},"priority":{"fairnessWeight":0.1}}"#,
        false,
        true,
        r#"{"input":{"payloads":[1,{"metadata":{"encoding":"YmluYXJ5L3BsYWlu"},"data":"AAE="}]},"retryPolicy":{"initialInterval":"1.500s","backoffCoefficient":2},"priority":{"fairnessWeight":0.1}}"#,
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"input":[1,{"metadata":{"encoding":"YmluYXJ5L3BsYWlu"},"data":"AAE="}],"retryPolicy":{"backoffCoefficient":2,"initialInterval":"1.500s"},"priority":{"fairnessWeight":0.1}}"#,
        true,
        true,
        r#"{
  "input": {
    "payloads": [
      1,
      {
        "metadata": {
          "encoding": "YmluYXJ5L3BsYWlu"
        },
        "data": "AAE="
      }
    ]
  },
  "retryPolicy": {
    "initialInterval": "1.500s",
    "backoffCoefficient": 2
  },
  "priority": {
    "fairnessWeight": 0.1
  }
}"#,
    ),
    (
        r#"temporal.api.workflowservice.v1.StartWorkflowExecutionRequest"#,
        r#"{"workflowRunTimeout":"-0.000001s","workflowTaskTimeout":"100.010s","retryPolicy":{"backoffCoefficient":"Infinity"},"header":{"fields":{}},"input":[]}"#,
        false,
        true,
        r#"{"input":[],"workflowRunTimeout":"-0.000001s","workflowTaskTimeout":"100.010s","retryPolicy":{"backoffCoefficient":"Infinity"},"header":{}}"#,
    ),
    (
        r#"google.rpc.Status"#,
        r#"{"code":6,"message":"Workflow execution is already running. WorkflowId: order-1796616698, RunId: 01a24eb3-3a91-74e4-9b04-05c7fda25c03.","details":[{"@type":"type.googleapis.com/temporal.api.errordetails.v1.WorkflowExecutionAlreadyStartedFailure","startRequestId":"ce426bc0-f55c-44d1-b570-5fda23f92c90","runId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","firstExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03"}]}"#,
        false,
        true,
        r#"{"code":6,"message":"Workflow execution is already running. WorkflowId: order-1796616698, RunId: 01a24eb3-3a91-74e4-9b04-05c7fda25c03.","details":[{"@type":"type.googleapis.com/temporal.api.errordetails.v1.WorkflowExecutionAlreadyStartedFailure","startRequestId":"ce426bc0-f55c-44d1-b570-5fda23f92c90","runId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","firstExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03"}]}"#,
    ),
    (
        r#"google.rpc.Status"#,
        r#"{"code":5,"message":"x","details":[{"@type":"type.googleapis.com/google.protobuf.Duration","value":"1s"},{"@type":"type.googleapis.com/temporal.api.errordetails.v1.NotFoundFailure"}]}"#,
        true,
        true,
        r#"{
  "code": 5,
  "message": "x",
  "details": [
    {
      "@type": "type.googleapis.com/google.protobuf.Duration",
      "value": "1s"
    },
    {
      "@type": "type.googleapis.com/temporal.api.errordetails.v1.NotFoundFailure"
    }
  ]
}"#,
    ),
    (
        r#"temporal.api.workflowservice.v1.UpdateWorkflowExecutionOptionsRequest"#,
        r#"{"updateMask":"versioningOverride,priority.priorityKey","workflowExecutionOptions":{}}"#,
        false,
        true,
        r#"{"workflowExecutionOptions":{},"updateMask":"versioningOverride,priority.priorityKey"}"#,
    ),
];

#[test]
fn messages_are_written_as_temporal_writes_them() {
    for (name, json, pretty, shorthand, expected) in GO_RESPONSES {
        let descriptor = message(name);
        let decoded =
            json_in::decode_body(&descriptor, json.as_bytes(), true).unwrap_or_else(|e| panic!("{json}: {e}"));
        // Through protobuf, as a response arrives.
        let decoded = normalised(&descriptor, &decoded);
        let options = OutputOptions { pretty: *pretty, shorthand: *shorthand };
        let ours = json_out::to_json(&decoded, options).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), *expected, "{json} (pretty {pretty}, shorthand {shorthand})");
    }
}

fn field<'a>(message: &'a DynamicMessage, path: &str) -> std::borrow::Cow<'a, Value> {
    let mut parts = path.split('.');
    let first = parts.next().unwrap();
    let mut value = message.get_field_by_name(first).unwrap_or_else(|| panic!("no field {first}"));
    for part in parts {
        let inner = value.as_message().unwrap_or_else(|| panic!("{path}: not a message")).clone();
        value = std::borrow::Cow::Owned(inner.get_field_by_name(part).unwrap().into_owned());
    }
    value
}

fn string(message: &DynamicMessage, path: &str) -> String {
    field(message, path).as_str().unwrap_or_default().to_owned()
}

/// The refusal (`unwrap_err` would print the `DynamicMessage`, whose derived `Debug` walks
/// descriptors without end on recursive types).
fn refused<T>(result: Result<T, HttpError>, what: &str) -> HttpError {
    match result {
        Ok(_) => panic!("{what}: accepted"),
        Err(error) => error,
    }
}

fn request(method: http::Method, path: &str, query: Option<&str>, body: &str) -> Result<DynamicMessage, HttpError> {
    let route = api().route(&method, path, &http::HeaderMap::new())?;
    route.request(query, body.as_bytes(), true)
}

/// curl_transcript.md (a): the start as Temporal received it, and its response written back.
#[test]
fn a_start_from_the_transcript() {
    let route = api()
        .route(&http::Method::POST, "/api/v1/namespaces/payments/workflows/order-1796616698", &http::HeaderMap::new())
        .unwrap();
    assert_eq!(route.grpc_path(), "/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution");
    assert_eq!(route.template(), "/api/v1/namespaces/{namespace}/workflows/{workflow_id}");
    assert_eq!(route.variables(), ["payments", "order-1796616698"]);
    let body = r#"{"workflowType":{"name":"ChargeCard"},"taskQueue":{"name":"payments-tq"},"input":["card-123",{"amount":42}],"identity":"curl"}"#;
    let bytes = route.request_message(None, body.as_bytes(), true).unwrap();
    let start = DynamicMessage::decode(route.binding().input.clone(), bytes.as_slice()).unwrap();
    assert_eq!(string(&start, "namespace"), "payments");
    assert_eq!(string(&start, "workflow_id"), "order-1796616698");
    assert_eq!(string(&start, "workflow_type.name"), "ChargeCard");
    let Value::List(payloads) = field(&start, "input.payloads").into_owned() else { panic!("payloads") };
    let data: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| p.as_message().unwrap().get_field_by_name("data").unwrap().as_bytes().unwrap().to_vec())
        .collect();
    assert_eq!(data, [b"\"card-123\"".to_vec(), b"{\"amount\":42}".to_vec()]);

    // The response Temporal sent, through protobuf and back: byte for byte.
    let response = r#"{"runId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","firstExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","started":true,"status":"WORKFLOW_EXECUTION_STATUS_RUNNING","link":{"workflowEvent":{"namespace":"payments","workflowId":"order-1796616698","runId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","eventRef":{"eventId":"1","eventType":"EVENT_TYPE_WORKFLOW_EXECUTION_STARTED"}}}}"#;
    let message = json_in::decode_body(&route.binding().output, response.as_bytes(), true).unwrap();
    let json = route.response_json(&message.encode_to_vec(), OutputOptions::default()).unwrap();
    assert_eq!(String::from_utf8(json).unwrap(), response);
}

/// (a'): snake_case names, the full Payloads form, a Duration.
#[test]
fn snake_case_and_the_full_payload_form() {
    let start = request(
        http::Method::POST,
        "/namespaces/payments/workflows/order-b",
        None,
        r#"{"workflow_type":{"name":"ChargeCard"},"task_queue":{"name":"payments-tq"},"input":{"payloads":[{"metadata":{"encoding":"anNvbi9wbGFpbg=="},"data":"eyJhIjoxfQ=="}]},"workflow_execution_timeout":"60s"}"#,
    )
    .unwrap();
    assert_eq!(string(&start, "task_queue.name"), "payments-tq");
    assert_eq!(field(&start, "workflow_execution_timeout.seconds").as_i64(), Some(60));
}

#[test]
fn the_path_wins_over_the_body() {
    let start = request(
        http::Method::POST,
        "/api/v1/namespaces/payments/workflows/wf-path",
        None,
        r#"{"namespace":"default","workflowId":"evil","workflowType":{"name":"T"},"taskQueue":{"name":"tq"}}"#,
    )
    .unwrap();
    assert_eq!(string(&start, "namespace"), "payments");
    assert_eq!(string(&start, "workflow_id"), "wf-path");
    // Nested path variables too; the body's other fields in that message stay.
    let signal = request(
        http::Method::POST,
        "/api/v1/namespaces/payments/workflows/wf-1/signal/sigA",
        None,
        r#"{"workflowExecution":{"workflowId":"wf-2","runId":"r-1"},"signalName":"sigB","input":["x"]}"#,
    )
    .unwrap();
    assert_eq!(string(&signal, "workflow_execution.workflow_id"), "wf-1");
    assert_eq!(string(&signal, "workflow_execution.run_id"), "r-1");
    assert_eq!(string(&signal, "signal_name"), "sigA");
}

#[test]
fn ambiguous_or_unknown_bodies_are_refused() {
    let path = "/api/v1/namespaces/payments/workflows/x";
    for body in [
        r#"{"workflowId":"a","workflow_id":"b"}"#,
        r#"{"workflowId":"a","workflowId":"b"}"#,
        r#"{"bogus":1}"#,
        r#"{"input":{"a":1}}"#,
        r#"{"input":[{"a":1,"a":2}]}"#,
        r#"{"memo":{"fields":{"m":1,"m":2}}}"#,
        r#"{"workflowIdConflictPolicy":"Bogus"}"#,
        "{",
        r#"{} trailing"#,
        "[]",
        "null",
    ] {
        let error = refused(request(http::Method::POST, path, None, body), "request");
        assert_eq!(error.status, http::StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error.code, 3);
    }
    let error = refused(request(http::Method::POST, path, None, r#"{"bogus":1}"#), "request");
    assert_eq!(
        error.message,
        "unknown field `bogus` in `temporal.api.workflowservice.v1.StartWorkflowExecutionRequest`"
    );
    // An empty body is the empty message (then the path).
    let start = request(http::Method::POST, path, None, "").unwrap();
    assert_eq!(string(&start, "workflow_id"), "x");
}

#[test]
fn enum_spellings_are_temporals() {
    let path = "/api/v1/namespaces/payments/workflows/x";
    for spelling in [
        r#""TerminateExisting""#,
        "3",
        r#""WORKFLOW_ID_CONFLICT_POLICY_TERMINATE_EXISTING""#,
        r#""terminate_existing""#,
    ] {
        let start =
            request(http::Method::POST, path, None, &format!(r#"{{"workflowIdConflictPolicy":{spelling}}}"#)).unwrap();
        assert_eq!(field(&start, "workflow_id_conflict_policy").as_enum_number(), Some(3), "{spelling}");
    }
}

#[test]
fn nesting_is_refused_cleanly_at_any_depth() {
    let path = "/api/v1/namespaces/payments/workflows/x";
    for depth in [65, 1_000, 200_000] {
        let body = format!(r#"{{"input":[{}]}}"#, "[".repeat(depth) + &"]".repeat(depth));
        let error = refused(request(http::Method::POST, path, None, &body), "request");
        assert_eq!(error.status, http::StatusCode::BAD_REQUEST);
        assert!(error.message.contains("nested deeper"), "{}", error.message);
        // Through Struct/Value as well.
        let body = format!(r#"{{"searchAttributes":{{"indexedFields":{{"k":{}}}}}}}"#, r#"{"a":"#.repeat(depth));
        assert_eq!(
            refused(request(http::Method::POST, path, None, &body), "request").status,
            http::StatusCode::BAD_REQUEST
        );
    }
    // Deep but allowed: 60 levels of payload data.
    let body = format!(r#"{{"input":[{}]}}"#, "[".repeat(60) + &"]".repeat(60));
    request(http::Method::POST, path, None, &body).unwrap();
}

#[test]
fn an_oversized_body_is_refused() {
    let route = api().route(&http::Method::POST, "/api/v1/namespaces/p/workflows/x", &http::HeaderMap::new()).unwrap();
    let body = vec![b' '; MAX_BODY_BYTES + 1];
    let error = refused(route.request_message(None, &body, true), "oversized");
    assert_eq!(error.message, "http: request body too large");
}

#[test]
fn without_shorthand_a_bare_array_is_refused() {
    let route = api().route(&http::Method::POST, "/api/v1/namespaces/p/workflows/x", &http::HeaderMap::new()).unwrap();
    assert!(route.request_message(None, br#"{"input":["x"]}"#, false).is_err());
    assert!(
        route
            .request_message(
                None,
                br#"{"input":{"payloads":[{"metadata":{"encoding":"anNvbi9wbGFpbg=="},"data":"MQ=="}]}}"#,
                false
            )
            .is_ok()
    );
}

#[test]
fn query_strings_fill_get_requests() {
    let list = "/api/v1/namespaces/payments/workflows";
    let message =
        request(http::Method::GET, list, Some("pageSize=1&query=WorkflowType%3D%27ChargeCard%27"), "").unwrap();
    assert_eq!(field(&message, "page_size").as_i32(), Some(1));
    assert_eq!(string(&message, "query"), "WorkflowType='ChargeCard'");
    assert_eq!(string(&message, "namespace"), "payments");
    let message = request(http::Method::GET, list, Some("page_size=2&bogus=1&pretty&noPayloadShorthand"), "").unwrap();
    assert_eq!(field(&message, "page_size").as_i32(), Some(2));
    let error = refused(request(http::Method::GET, list, Some("pageSize=abc"), ""), "request");
    assert_eq!(error.status, http::StatusCode::BAD_REQUEST);
    assert!(error.message.starts_with("parsing field `page_size`"), "{}", error.message);
    // Deviation: two spellings of one field, or one field twice, are refused.
    for query in ["pageSize=1&page_size=2", "pageSize=1&pageSize=2", "query=a;b", "query=%zz"] {
        let error = refused(request(http::Method::GET, list, Some(query), ""), "request");
        assert_eq!(error.status, http::StatusCode::BAD_REQUEST, "{query}");
    }
    // The body of a GET is not read.
    request(http::Method::GET, list, None, "not json").unwrap();
}

#[test]
fn query_keys_cannot_reach_path_bound_fields() {
    let describe = "/api/v1/namespaces/payments/workflows/order-1";
    let message =
        request(http::Method::GET, describe, Some("execution.workflowId=nope&execution.runId=r-1"), "").unwrap();
    assert_eq!(string(&message, "execution.workflow_id"), "order-1");
    assert_eq!(string(&message, "execution.run_id"), "r-1");
    let message = request(http::Method::GET, describe, Some("namespace=other&execution.workflow_id=nope"), "").unwrap();
    assert_eq!(string(&message, "namespace"), "payments");
    assert_eq!(string(&message, "execution.workflow_id"), "order-1");
}

#[test]
fn query_values_of_every_kind() {
    let history = "/api/v1/namespaces/p/workflows/wf/history";
    let message = request(
        http::Method::GET,
        history,
        Some("maximumPageSize=1&historyEventFilterType=HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT&waitNewEvent=true&nextPageToken=-_8%3D"),
        "",
    )
    .unwrap();
    assert_eq!(field(&message, "maximum_page_size").as_i32(), Some(1));
    assert_eq!(field(&message, "history_event_filter_type").as_enum_number(), Some(2));
    assert_eq!(field(&message, "wait_new_event").as_bool(), Some(true));
    assert_eq!(field(&message, "next_page_token").as_bytes().unwrap().as_ref(), [0xfb, 0xff]);
    // By number, if the number is a value; no alias spellings in queries.
    let message = request(http::Method::GET, history, Some("historyEventFilterType=2"), "").unwrap();
    assert_eq!(field(&message, "history_event_filter_type").as_enum_number(), Some(2));
    for bad in ["historyEventFilterType=CloseEvent", "historyEventFilterType=9", "waitNewEvent=yes"] {
        assert!(request(http::Method::GET, history, Some(bad), "").is_err(), "{bad}");
    }
    // Durations in Go's syntax, timestamps in RFC 3339.
    assert_eq!(query::go_parse_duration("1h30m"), Some(5_400_000_000_000));
    assert_eq!(query::go_parse_duration("1.5s"), Some(1_500_000_000));
    assert_eq!(query::go_parse_duration("-300ms"), Some(-300_000_000));
    assert_eq!(query::go_parse_duration("0"), Some(0));
    assert_eq!(query::go_parse_duration("1"), None);
    assert_eq!(query::go_parse_duration("3000000h"), None);
    let matching = "/api/v1/namespaces/p/schedules/s/matching-times";
    let message = request(http::Method::GET, matching, Some("startTime=2026-12-07T06:11:38%2B02:00"), "").unwrap();
    assert_eq!(field(&message, "start_time.seconds").as_i64(), Some(1_796_616_698));
}

#[test]
fn query_repeated_fields_maps_and_oneofs() {
    let table = api();
    // Find a body:"" binding with a repeated scalar field, and one with a map, from the descriptors.
    let mut repeated = None;
    for binding in table.bindings().iter().filter(|b| b.body == BodyRule::None) {
        for f in binding.input.fields() {
            if f.is_list() && matches!(f.kind(), prost_reflect::Kind::String) && repeated.is_none() {
                repeated = Some((binding.clone(), f.name().to_owned()));
            }
        }
    }
    let (binding, name) = repeated.expect("a GET request with a repeated string field");
    let mut message = DynamicMessage::new(binding.input.clone());
    let pairs = query::parse_query(&format!("{name}=a&{name}=b")).unwrap();
    query::fill_from_query(&mut message, &binding, &pairs).unwrap();
    assert_eq!(field(&message, &name).as_list().map(<[Value]>::len), Some(2), "{binding} {name}");

    let error = query::parse_query("a=%").unwrap_err();
    assert_eq!(error.status, http::StatusCode::BAD_REQUEST);
}

#[test]
fn formats_follow_temporals_marshaler_choice() {
    let none = http::HeaderMap::new();
    let default = Formats::from_request(None, &none);
    assert_eq!(
        default,
        Formats { request_shorthand: true, response: OutputOptions { shorthand: true, pretty: false } }
    );
    let flags = Formats::from_request(Some("pretty&noPayloadShorthand=0"), &none);
    assert_eq!(flags.response, OutputOptions { shorthand: false, pretty: true });
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, "application/json+no-payload-shorthand; charset=utf-8".parse().unwrap());
    let no_shorthand = Formats::from_request(None, &headers);
    assert_eq!(
        no_shorthand,
        Formats { request_shorthand: false, response: OutputOptions { shorthand: false, pretty: false } }
    );
    headers.insert(http::header::ACCEPT, "application/json+pretty".parse().unwrap());
    let accept = Formats::from_request(None, &headers);
    assert_eq!(accept, Formats { request_shorthand: false, response: OutputOptions { shorthand: true, pretty: true } });
    // `?pretty` replaces the Accept header: shorthand on again, whatever the request said.
    let pretty = Formats::from_request(Some("pretty"), &headers);
    assert_eq!(pretty.response, OutputOptions { shorthand: true, pretty: true });
}

/// The bodies Temporal sent for errors (curl_transcript.md), rebuilt from a
/// `grpc-status-details-bin` trailer.
#[test]
fn grpc_errors_become_temporals_bodies() {
    let cases = [
        (
            5,
            r#"{"code":5,"message":"workflow not found for ID: does-not-exist","details":[{"@type":"type.googleapis.com/temporal.api.errordetails.v1.NotFoundFailure"}]}"#,
            404,
        ),
        (
            5,
            r#"{"code":5,"message":"Namespace nope is not found.","details":[{"@type":"type.googleapis.com/temporal.api.errordetails.v1.NamespaceNotFoundFailure","namespace":"nope"}]}"#,
            404,
        ),
        (
            6,
            r#"{"code":6,"message":"Workflow execution is already running. WorkflowId: order-1796616698, RunId: 01a24eb3-3a91-74e4-9b04-05c7fda25c03.","details":[{"@type":"type.googleapis.com/temporal.api.errordetails.v1.WorkflowExecutionAlreadyStartedFailure","startRequestId":"ce426bc0-f55c-44d1-b570-5fda23f92c90","runId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03","firstExecutionRunId":"01a24eb3-3a91-74e4-9b04-05c7fda25c03"}]}"#,
            409,
        ),
        (
            9,
            r#"{"code":9,"message":"Client version 9.0.0 is not supported. Server supports temporal-go versions: <2.0.0","details":[{"@type":"type.googleapis.com/temporal.api.errordetails.v1.ClientVersionNotSupportedFailure","clientVersion":"9.0.0","clientName":"temporal-go","supportedVersions":"<2.0.0"}]}"#,
            400,
        ),
    ];
    let status = message("google.rpc.Status");
    for (code, body, http_status) in cases {
        let proto = json_in::decode_body(&status, body.as_bytes(), true).unwrap().encode_to_vec();
        let header = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&proto);
        let (got_status, got_body) = status_json(code, "ignored", Some(header.as_bytes()), OutputOptions::default());
        assert_eq!(got_status.as_u16(), http_status);
        assert_eq!(String::from_utf8(got_body).unwrap(), body);
    }
    // Without details, or with details that disagree about the code: code and message.
    let (got, body) = status_json(4, "context deadline exceeded", None, OutputOptions::default());
    assert_eq!(
        (got.as_u16(), body.as_slice()),
        (504, br#"{"code":4,"message":"context deadline exceeded"}"#.as_slice())
    );
    let proto = json_in::decode_body(&status, br#"{"code":5,"message":"x"}"#, true).unwrap().encode_to_vec();
    let header = base64::engine::general_purpose::STANDARD.encode(proto);
    let (got, body) = status_json(7, "Request unauthorized.", Some(header.as_bytes()), OutputOptions::default());
    assert_eq!((got.as_u16(), body.as_slice()), (403, br#"{"code":7,"message":"Request unauthorized."}"#.as_slice()));
    let (_, body) = status_json(13, "boom", Some(b"!!not base64"), OutputOptions::default());
    assert_eq!(body, br#"{"code":13,"message":"boom"}"#);
    // The whole mapping.
    let statuses: Vec<u16> = (0..=17).map(|code| http_status_from_code(code).as_u16()).collect();
    assert_eq!(statuses, [200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401, 500]);
}

#[test]
fn a_payload_that_is_not_the_json_it_claims_is_written_in_full() {
    // Temporal would fail the response (500); flowgate falls back to the full form.
    let descriptor = message("temporal.api.common.v1.Payloads");
    let json = r#"{"payloads":[{"metadata":{"encoding":"anNvbi9wbGFpbg=="},"data":"e30="},{"metadata":{"encoding":"anNvbi9wbGFpbg=="},"data":"bm90IGpzb24="}]}"#;
    let decoded = json_in::decode_body(&descriptor, json.as_bytes(), false).unwrap();
    let written = json_out::to_json(&decoded, OutputOptions::default()).unwrap();
    assert_eq!(
        String::from_utf8(written).unwrap(),
        r#"{"payloads":[{},{"metadata":{"encoding":"anNvbi9wbGFpbg=="},"data":"bm90IGpzb24="}]}"#
    );
}

#[test]
fn requests_round_trip_json_protobuf_json() {
    // Every GO_REQUESTS body Temporal accepts, written back without shorthand and read again,
    // gives the same protobuf message.
    for (name, body, expected) in GO_REQUESTS {
        if expected.is_none() {
            continue;
        }
        let descriptor = message(name);
        let first = normalised(&descriptor, &json_in::decode_body(&descriptor, body.as_bytes(), true).unwrap());
        let plain = OutputOptions { shorthand: false, pretty: false };
        let written = json_out::to_json(&first, plain).unwrap();
        let second = normalised(&descriptor, &json_in::decode_body(&descriptor, &written, false).unwrap());
        assert_eq!(json_out::to_json(&second, plain).unwrap(), written, "{body}");
        // And pretty output reads back the same.
        let pretty = json_out::to_json(&first, OutputOptions { shorthand: true, pretty: true }).unwrap();
        let third = normalised(&descriptor, &json_in::decode_body(&descriptor, &pretty, true).unwrap());
        assert_eq!(json_out::to_json(&third, plain).unwrap(), written, "{body} (pretty)");
    }
}

/// An `Any` inside an `Any` is decoded on its own, with a fresh recursion limit: the writer
/// bounds that nesting itself, so an upstream's answer cannot take the stack.
#[test]
fn anys_nested_past_the_limit_fail_instead_of_recursing() {
    let any = message("google.protobuf.Any");
    let wrap = |inner: Vec<u8>| {
        let mut out = Vec::new();
        crate::temporal::wire::put_bytes_field(&mut out, 1, b"type.googleapis.com/google.protobuf.Any");
        crate::temporal::wire::put_bytes_field(&mut out, 2, &inner);
        out
    };
    let nested = |depth: usize| (0..depth).fold(Vec::new(), |inner, _| wrap(inner));
    let shallow = DynamicMessage::decode(any.clone(), nested(8).as_slice()).unwrap();
    assert!(json_out::to_json(&shallow, OutputOptions::default()).is_ok());
    let deep = DynamicMessage::decode(any, nested(5000).as_slice()).unwrap();
    let error = json_out::to_json(&deep, OutputOptions::default()).unwrap_err();
    assert!(error.message.contains("nested more than 16 deep"), "{}", error.message);
}
