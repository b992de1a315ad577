//! Cost of task-token sealing on a worker's hot path, in nanoseconds per call (median of
//! several runs): sealing and opening one token, sealing a poll response, unsealing a
//! completion. `cargo bench --bench task_token`.

use std::hint::black_box;
use std::time::Instant;

use flowgate::temporal::task_token::{Binding, SealContext, TaskKind, TaskTokenKeys};
use flowgate::temporal::wire;

fn time<F: FnMut()>(name: &str, iterations: u32, mut f: F) {
    let mut samples = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        for _ in 0..iterations {
            f();
        }
        samples.push(started.elapsed() / iterations);
    }
    samples.sort();
    println!("{name:<58} {:>9} ns", samples[samples.len() / 2].as_nanos());
}

/// A 250-byte token, shaped like Temporal's (namespace id, workflow id, run id, event ids).
fn upstream_token() -> Vec<u8> {
    let mut token = Vec::new();
    wire::put_bytes_field(&mut token, 1, b"5c6f1d3e-8d1b-4f3a-9d2e-2f0e1c9b7a55");
    wire::put_bytes_field(&mut token, 2, b"deploy-payments-api-2025-06-01T12:00:00Z-7f3a9c");
    wire::put_bytes_field(&mut token, 3, b"0196b3c4-5d6e-7f80-9a1b-2c3d4e5f6071");
    wire::put_varint_field(&mut token, 4, 5);
    wire::put_varint_field(&mut token, 5, 1);
    wire::put_bytes_field(&mut token, 6, b"approve-production-rollout");
    wire::put_bytes_field(&mut token, 8, &[b'x'; 250 - 196]);
    wire::put_bytes_field(&mut token, 9, b"0196b3c4-5d6e-7f80-9a1b-2c3d4e5f6072-activity-run-id");
    token.truncate(250);
    token
}

fn named(number: u32, name: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    wire::put_bytes_field(&mut inner, 1, name);
    let mut out = Vec::new();
    wire::put_bytes_field(&mut out, number, &inner);
    out
}

fn main() {
    let keys = TaskTokenKeys::from_secrets(&[[0xa5u8; 32]]);
    let token = upstream_token();
    println!("task token: {} bytes", token.len());
    let binding = Binding {
        kind: TaskKind::Activity,
        namespace: "payments".into(),
        task_queue: "deploy".into(),
        workflow_id: Some("deploy-payments-api-2025-06-01T12:00:00Z-7f3a9c".into()),
        workflow_type: Some("DeployService".into()),
        activity_type: Some("ApproveRollout".into()),
        principal: "buildkite:organization:acme:pipeline:deploy:ref:refs/heads/main".into(),
        issued_at: 1_750_000_000,
    };
    let sealed = keys.seal(&token, &binding);
    println!("sealed token: {} bytes", sealed.len());
    let ctx = SealContext {
        principal: binding.principal.clone(),
        namespace: "payments".into(),
        task_queue: Some("deploy".into()),
    };

    // PollActivityTaskQueueResponse: token, namespace, type, execution, activity type and id,
    // 1 KiB of input.
    let mut activity = Vec::new();
    wire::put_bytes_field(&mut activity, 1, &token);
    wire::put_bytes_field(&mut activity, 2, b"payments");
    activity.extend(named(3, b"DeployService"));
    activity.extend(named(4, b"deploy-payments-api-2025-06-01T12:00:00Z-7f3a9c"));
    activity.extend(named(5, b"ApproveRollout"));
    wire::put_bytes_field(&mut activity, 6, b"approve-1");
    wire::put_bytes_field(&mut activity, 8, &[7; 1024]);
    // PollWorkflowTaskQueueResponse with a 16 KiB first history page.
    let mut workflow = Vec::new();
    wire::put_bytes_field(&mut workflow, 1, &token);
    workflow.extend(named(2, b"deploy-payments-api-2025-06-01T12:00:00Z-7f3a9c"));
    workflow.extend(named(3, b"DeployService"));
    wire::put_bytes_field(&mut workflow, 8, &[7; 16 * 1024]);
    workflow.extend(named(11, b"deploy"));
    // RespondActivityTaskCompletedRequest: sealed token, a small result, identity, namespace.
    let mut completion = Vec::new();
    wire::put_bytes_field(&mut completion, 1, &sealed);
    wire::put_bytes_field(&mut completion, 2, &[7; 64]);
    wire::put_bytes_field(&mut completion, 3, b"12345@worker-host");
    wire::put_bytes_field(&mut completion, 4, b"payments");

    time("seal (250-byte token)", 200_000, || {
        black_box(keys.seal(black_box(&token), black_box(&binding)));
    });
    time("open (250-byte token)", 200_000, || {
        black_box(keys.open(black_box(&sealed)).unwrap());
    });
    time("seal_response PollActivityTaskQueue (1.5 KiB)", 100_000, || {
        black_box(keys.seal_response("PollActivityTaskQueue", black_box(&activity), &ctx).unwrap());
    });
    time("seal_response PollWorkflowTaskQueue (16 KiB history)", 50_000, || {
        black_box(keys.seal_response("PollWorkflowTaskQueue", black_box(&workflow), &ctx).unwrap());
    });
    time("seal_response empty long-poll answer", 1_000_000, || {
        black_box(keys.seal_response("PollActivityTaskQueue", black_box(b""), &ctx).unwrap());
    });
    time("unseal_request RespondActivityTaskCompleted", 200_000, || {
        black_box(keys.unseal_request(1, black_box(&completion)).unwrap());
    });
}
