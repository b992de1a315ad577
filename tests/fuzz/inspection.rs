//! Target: protobuf inspection of every catalog entry.
//!
//! For each method, messages are built from the method's own field paths (see [`proto`]) and
//! damaged the way a mutating fuzzer would; a quarter of them travel gzipped, split over
//! several gzip members, through the gRPC framing. Properties:
//!
//! * inspection never panics, on any bytes;
//! * when the server would accept the message (the reference decoder does), inspection either
//!   refuses it for a reason that only makes it stricter (groups nested past the cap, an
//!   ambiguous multi-operation), or reads exactly what the server acts on: the same as
//!   inspecting the canonical re-encoding, and the same values the reference decoder holds.

use std::io::Write;

use flowgate::temporal::catalog::{CATALOG, MethodSpec, ResourceSpec, TaskQueueRef};
use flowgate::temporal::inspect::{self, Call, InspectError};
use flowgate::temporal::wire::WireError;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message as _;

use crate::proto::{self, Decoded, Item};

const LIMIT: usize = 1 << 20;

/// Checks one (uncompressed) message against the reference decoder.
pub fn check(spec: &MethodSpec, schema: &'static proto::Node, message: &[u8]) -> Result<(), String> {
    let inspected = inspect::inspect(spec, message);
    let Ok(decoded) = Decoded::decode(schema, message) else {
        // The server refuses the message too: whatever inspection says, nothing gets through.
        return Ok(());
    };
    // Only a workflow-task poll may name a sticky queue, and no request another kind: Temporal
    // acts on the queue's own name, so inspection refuses such a message, more strictly than
    // the server.
    let non_normal = queue_message(spec).is_some_and(|path| match decoded.queue_kind(path) {
        0 | 1 => false,
        2 => spec.name != "PollWorkflowTaskQueue",
        _ => true,
    });
    let call = match inspected {
        Err(InspectError::Malformed(WireError::TooDeep(_))) => return Ok(()),
        Err(InspectError::Ambiguous(_)) if spec.name == "ExecuteMultiOperation" => return Ok(()),
        Err(InspectError::NotNormalQueue { .. }) if non_normal => return Ok(()),
        _ if non_normal => return Err(format!("inspection did not refuse a non-normal queue: {inspected:?}")),
        Ok(call) => call,
        Err(error) => return Err(format!("inspection refused a message the server accepts: {error}")),
    };
    let canonical = decoded.encode_to_vec();
    let again = inspect::inspect(spec, &canonical)
        .map_err(|error| format!("inspection refused the canonical re-encoding {canonical:02x?}: {error}"))?;
    if again != call {
        return Err(format!(
            "inspection differs from inspection of the canonical re-encoding {canonical:02x?}:\n  original  {call:?}\n  canonical {again:?}"
        ));
    }
    let expected = expected_call(spec, &decoded);
    if call != expected {
        return Err(format!(
            "inspection differs from the server's view:\n  inspected {call:?}\n  server    {expected:?}"
        ));
    }
    Ok(())
}

/// Where the request names a `TaskQueue` message, if it does.
fn queue_message(spec: &MethodSpec) -> Option<&'static [u32]> {
    let reference = match spec.resource {
        ResourceSpec::Workflow { task_queue, .. } | ResourceSpec::Schedule { task_queue, .. } => task_queue,
        ResourceSpec::TaskQueue { task_queue, .. } => Some(task_queue),
        _ => None,
    };
    match reference {
        Some(TaskQueueRef::Message(path)) => Some(path),
        _ => None,
    }
}

/// What the server reads from a decoded message, field by field.
fn expected_call(spec: &MethodSpec, decoded: &Decoded) -> Call {
    let string = |path: Option<&[u32]>| path.and_then(|p| decoded.string(p));
    let mut resource = inspect::Resource {
        kind: spec.resource.kind(),
        namespace: string(spec.resource.namespace_path()),
        workflow_id: None,
        workflow_type: None,
        task_queue: None,
        schedule_id: None,
        endpoint: None,
    };
    match spec.resource {
        ResourceSpec::Cluster | ResourceSpec::Namespace { .. } | ResourceSpec::NexusEndpoint => {}
        ResourceSpec::Workflow { workflow_id, workflow_type, task_queue, .. } => {
            resource.workflow_id = string(workflow_id);
            resource.workflow_type = string(workflow_type);
            resource.task_queue = task_queue.and_then(|r| decoded.task_queue(r));
        }
        ResourceSpec::TaskQueue { task_queue, .. } => resource.task_queue = decoded.task_queue(task_queue),
        ResourceSpec::Schedule { schedule_id, workflow_type, task_queue, .. } => {
            resource.schedule_id = string(Some(schedule_id));
            resource.workflow_type = string(workflow_type);
            resource.task_queue = task_queue.and_then(|r| decoded.task_queue(r));
        }
    }
    Call {
        signal_name: string(spec.signal_name),
        query_type: string(spec.query_type),
        update_name: string(spec.update_name),
        has_task_token: spec.task_token.is_some_and(|p| decoded.has_bytes(p)),
        namespace_id: string(spec.namespace_id),
        sticky_queue: match spec.name {
            "PollWorkflowTaskQueue" if decoded.queue_kind(&[2]) == 2 => decoded.string(&[2, 1]),
            "ShutdownWorker" => decoded.string(&[2]),
            "RespondWorkflowTaskCompleted" => decoded.string(&[4, 1, 1]),
            _ => None,
        },
        ..Call::new(resource)
    }
}

/// How the message travels.
#[derive(Debug, Clone)]
enum Framing {
    Plain,
    /// Gzipped in as many members as there are split points.
    Gzip(Vec<prop::sample::Index>),
}

fn gzip_members(message: &[u8], splits: &[prop::sample::Index]) -> Vec<u8> {
    let mut cuts: Vec<usize> = splits.iter().map(|s| s.index(message.len() + 1)).collect();
    cuts.push(0);
    cuts.push(message.len());
    cuts.sort_unstable();
    let mut out = Vec::new();
    for pair in cuts.windows(2) {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&message[pair[0]..pair[1]]).expect("writing to a Vec");
        out.extend(encoder.finish().expect("writing to a Vec"));
    }
    out
}

/// The whole request path: framing, inflation, inspection.
fn check_framed(
    spec: &MethodSpec,
    schema: &'static proto::Node,
    message: &[u8],
    framing: &Framing,
) -> Result<(), String> {
    let (flag, payload, encoding) = match framing {
        Framing::Plain => (0u8, message.to_vec(), None),
        Framing::Gzip(splits) => (1u8, gzip_members(message, splits), Some("gzip")),
    };
    let mut body = vec![flag];
    body.extend((payload.len() as u32).to_be_bytes());
    body.extend(&payload);
    let framed = inspect::first_message(&body, LIMIT)
        .map_err(|e| format!("framing refused: {e}"))?
        .ok_or("framing wants more bytes of a whole message")?;
    let inflated = inspect::decompress(&framed, encoding, LIMIT).map_err(|e| format!("inflation refused: {e}"))?;
    if *inflated != *message {
        return Err(format!("inflated {} bytes, not the {} that were sent", inflated.len(), message.len()));
    }
    check(spec, schema, &inflated)
}

fn case(index: usize) -> impl Strategy<Value = (Vec<Item>, proto::Damage, Framing)> {
    let framing = prop_oneof![
        3 => Just(Framing::Plain),
        1 => vec(any::<prop::sample::Index>(), 0..3).prop_map(Framing::Gzip),
    ];
    (proto::message(&proto::SCHEMAS[index]), proto::damage(), framing)
}

/// Replays the corpus: `<Method>.<what>.grpc` files hold a framed request, gzipped when the
/// compressed flag is set.
#[test]
fn inspection_corpus() {
    let mut replayed = 0;
    for (name, bytes) in crate::corpus("inspection") {
        let method = name.split('.').next().unwrap_or_default();
        let index = CATALOG
            .iter()
            .position(|spec| spec.name == method)
            .unwrap_or_else(|| panic!("{name}: no method `{method}`"));
        let spec = &CATALOG[index];
        let read = || -> Result<Vec<u8>, InspectError> {
            let framed = inspect::first_message(&bytes, LIMIT)?.ok_or(InspectError::TruncatedPrefix)?;
            let encoding = framed.compressed.then_some("gzip");
            Ok(inspect::decompress(&framed, encoding, LIMIT)?.into_owned())
        };
        let result = read().and_then(|message| {
            check(spec, &proto::SCHEMAS[index], &message).unwrap_or_else(|e| panic!("corpus {name}: {e}"));
            inspect::inspect(spec, &message)
        });
        // The expected outcome is part of the name: `.refused.` seeds must be refused.
        assert_eq!(result.is_err(), name.contains(".refused."), "corpus {name}: {result:?}");
        replayed += 1;
    }
    assert!(replayed > 0, "no inspection corpus");
}

#[test]
fn inspection_of_every_catalog_entry() {
    let cases = crate::cases(64);
    for (index, spec) in CATALOG.iter().enumerate() {
        let schema = &proto::SCHEMAS[index];
        crate::run(&format!("inspection/{}", spec.name), cases, case(index), |(items, damage, framing)| {
            let mut message = proto::encode(&items);
            damage.apply(&mut message);
            check_framed(spec, schema, &message, &framing)
        });
    }
}
