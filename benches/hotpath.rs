//! In-process cost of each per-call phase, in nanoseconds per call (median of several runs).
//!
//! `cargo bench --bench hotpath`. This complements `benches/gateway.rs` (end-to-end latency and
//! throughput against real Temporal): it tells which phase a change made cheaper or dearer,
//! without the noise of the network, Temporal and the load generator.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use flowgate::authn::Principal;
use flowgate::authz::{DecisionCache, PolicyEngine};
use flowgate::config::PrincipalKind;
use flowgate::temporal::implied::{self, TaskWorkflow};
use flowgate::temporal::{Call, Resource, ResourceKind, catalog, inspect, wire};

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

fn github_principal() -> Principal {
    let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string("../shared/reference/claims/github-actions.json").unwrap_or_else(|_| {
            r#"{"sub":"repo:acme/payments:environment:production","repository":"acme/payments"}"#.into()
        }),
    )
    .unwrap();
    let tags = flowgate::authn::principal::flatten_claims(&claims);
    let sub = claims["sub"].as_str().unwrap().to_owned();
    Principal::new(PrincipalKind::CiJob, "github", &sub, vec![], tags, SystemTime::now() + Duration::from_secs(600))
}

fn okta_principal() -> Principal {
    let tags = BTreeMap::from([("email".to_owned(), "ana@acme.example".to_owned())]);
    Principal::new(
        PrincipalKind::User,
        "okta",
        "00u1",
        vec!["payments-deployers".into(), "everyone".into()],
        tags,
        SystemTime::now() + Duration::from_secs(600),
    )
}

/// The Buildkite worker of `policies/ci.cedar`: its `deploys` workflows may run activities and
/// children on `deploys` and signal `deploy-*` (`buildkite-payments-worker-commands`).
fn buildkite_worker() -> Principal {
    let tags = BTreeMap::from([
        ("pipeline_slug".to_owned(), "payments-workers".to_owned()),
        ("build_branch".to_owned(), "main".to_owned()),
        ("organization_slug".to_owned(), "acme".to_owned()),
    ]);
    let sub = "organization:acme:pipeline:payments-workers:ref:refs/heads/main:commit:9f31820:step:worker";
    Principal::new(PrincipalKind::CiJob, "buildkite", sub, vec![], tags, SystemTime::now() + Duration::from_secs(600))
}

fn named(number: u32, name: &str) -> Vec<u8> {
    let mut inner = Vec::new();
    wire::put_bytes_field(&mut inner, 1, name.as_bytes());
    let mut out = Vec::new();
    wire::put_bytes_field(&mut out, number, &inner);
    out
}

/// A `Command`: its type, and its attributes in field `attributes_field`.
fn command(command_type: u64, attributes_field: u32, attributes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::put_varint_field(&mut out, 1, command_type);
    wire::put_bytes_field(&mut out, attributes_field, attributes);
    out
}

/// `ScheduleActivityTask` of `activity_type` on queue `deploys`, start-to-close 60 s.
fn schedule_activity(activity_type: &str) -> Vec<u8> {
    let mut attributes = Vec::new();
    wire::put_bytes_field(&mut attributes, 1, b"1");
    attributes.extend(named(2, activity_type));
    attributes.extend(named(4, "deploys"));
    let mut timeout = Vec::new();
    wire::put_varint_field(&mut timeout, 1, 60);
    wire::put_bytes_field(&mut attributes, 9, &timeout);
    command(1, 2, &attributes)
}

/// A framed-less `RespondWorkflowTaskCompletedRequest` with `commands`.
fn completion(commands: &[Vec<u8>]) -> Vec<u8> {
    let mut message = Vec::new();
    wire::put_bytes_field(&mut message, 1, &[0x0a; 120]); // the (unsealed) task token
    for c in commands {
        wire::put_bytes_field(&mut message, 2, c);
    }
    wire::put_bytes_field(&mut message, 3, b"12345@worker-host");
    wire::put_bytes_field(&mut message, 9, b"payments");
    message
}

fn call(kind: ResourceKind, workflow_id: Option<&str>, workflow_type: Option<&str>) -> Call {
    Call::new(Resource {
        kind,
        namespace: Some("payments".into()),
        workflow_id: workflow_id.map(Into::into),
        workflow_type: workflow_type.map(Into::into),
        task_queue: Some("deploys".into()),
        schedule_id: None,
        endpoint: None,
    })
}

fn main() {
    let engine = PolicyEngine::load(Path::new("policies")).expect("the repo's policies load");
    println!("policy set {} ({} policies)", engine.version(), engine.policy_count());
    let github = github_principal();
    let okta = okta_principal();
    let describe = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/DescribeNamespace");
    let start = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution");
    let describe_call = call(ResourceKind::Namespace, None, None);
    let mut n = 0u64;

    time("Principal::new (GitHub Actions claims)", 2_000, || {
        black_box(github_principal());
    });
    time("evaluate DescribeNamespace, Okta user (Cedar, no cache)", 20_000, || {
        black_box(engine.evaluate(&okta, describe, "/x/DescribeNamespace", &describe_call));
    });
    let decisions = DecisionCache::default();
    time("authorize DescribeNamespace, Okta user (decision cached)", 200_000, || {
        black_box(engine.authorize_in(&decisions, &okta, describe, "/x/DescribeNamespace", &describe_call));
    });
    // With a shadow set (`policy.shadow_dir`): the same call decided by both sets, each from
    // its own per-principal cache.
    let shadow = PolicyEngine::load(Path::new("policies")).expect("the repo's policies load");
    let shadow_decisions = DecisionCache::default();
    time("authorize + shadow DescribeNamespace, Okta user (both cached)", 200_000, || {
        black_box(engine.authorize_in(&decisions, &okta, describe, "/x/DescribeNamespace", &describe_call));
        black_box(shadow.authorize_in(&shadow_decisions, &okta, describe, "/x/DescribeNamespace", &describe_call));
    });
    let github_decisions = DecisionCache::default();
    time("authorize StartWorkflowExecution, GitHub job (new id)", 20_000, || {
        n += 1;
        let id = format!("wf-{n}");
        let start_call = call(ResourceKind::Workflow, Some(&id), Some("DeployWorkflow"));
        black_box(engine.authorize_in(&github_decisions, &github, start, "/x/StartWorkflowExecution", &start_call));
    });

    // flowgate's own credentials: full verification (once per credential), then the cached path
    // every call of a worker takes.
    let keys = tempfile::tempdir().unwrap();
    let mint_config: flowgate::config::MintConfig =
        toml::from_str(&format!("issuer = \"http://flowgate.bench\"\nkey_dir = \"{}\"", keys.path().display()))
            .unwrap();
    let signer = std::sync::Arc::new(flowgate::credential::Signer::new(&mint_config).unwrap());
    let minter = flowgate::mint::Minter::new(signer.clone(), flowgate::mint::replay::ReplayCache::memory());
    let grant = flowgate::mint::Grant::parse_scope("namespace:payments role:worker task_queue:deploys").unwrap();
    let credential = minter.mint_worker(&github, &grant, SystemTime::now()).token;
    let jws = flowgate::authn::Jws::parse(&credential).unwrap();
    time("mint a worker credential (ES256 sign)", 2_000, || {
        black_box(minter.mint_worker(&github, &grant, SystemTime::now()));
    });
    time("verify a worker credential (ES256, uncached)", 2_000, || {
        let jws = flowgate::authn::Jws::parse(&credential).unwrap();
        black_box(flowgate::authn::own::verify(&signer, &credential, &jws).unwrap());
    });
    let cache = flowgate::authn::TokenCache::new(1000);
    let verified = flowgate::authn::own::verify(&signer, &credential, &jws).unwrap();
    cache.insert(
        &credential,
        std::sync::Arc::new(flowgate::session::Session::new(verified, flowgate::identity::PrincipalStamp::none())),
    );
    let poll = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/PollActivityTaskQueue");
    let poll_call = call(ResourceKind::TaskQueue, None, None);
    time("worker credential per call: cache + grant + decision", 200_000, || {
        let session = cache.get(&credential).unwrap();
        let principal = &session.principal;
        flowgate::authz::grant::check(&principal.minted.as_ref().unwrap().grant, poll, &poll_call).unwrap();
        black_box(engine.authorize_in(&session.decisions, principal, poll, "/x/PollActivityTaskQueue", &poll_call));
    });

    // A worker's workflow task completion (issue 10): reading its commands into questions, and
    // deciding them. Two shapes of three commands: the end-to-end worker benchmark's (one
    // question: the activity; a marker and the completion act on the workflow itself) and one
    // where every command reaches beyond the workflow (activity, child, external signal).
    let worker = buildkite_worker();
    let respond = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/RespondWorkflowTaskCompleted");
    let mut marker = Vec::new();
    wire::put_bytes_field(&mut marker, 1, b"bench");
    let one_question = completion(&[schedule_activity("Deploy"), command(9, 10, &marker), command(4, 4, &[])]);
    let mut child = Vec::new();
    wire::put_bytes_field(&mut child, 1, b"payments");
    wire::put_bytes_field(&mut child, 2, b"deploy-child-1");
    child.extend(named(3, "DeployService"));
    child.extend(named(4, "deploys"));
    let mut signal = Vec::new();
    wire::put_bytes_field(&mut signal, 1, b"payments");
    let mut execution = Vec::new();
    wire::put_bytes_field(&mut execution, 1, b"deploy-42");
    wire::put_bytes_field(&mut signal, 2, &execution);
    wire::put_bytes_field(&mut signal, 3, b"approve");
    let three_questions = completion(&[schedule_activity("Deploy"), command(11, 12, &child), command(12, 13, &signal)]);
    let task = TaskWorkflow {
        workflow_id: Some("deploy-payments-api-7f3a9c"),
        workflow_type: Some("DeployService"),
        task_queue: Some("deploys"),
    };
    let respond_call = inspect::inspect(respond, &one_question).expect("the completion inspects");
    let asked = |message: &[u8]| implied::questions(respond, message, &respond_call, &task).unwrap();
    assert_eq!(asked(&one_question).len(), 1);
    assert_eq!(asked(&three_questions).len(), 3);
    // What the gateway asks for a completion: the RPC, the poll its task token was sealed for,
    // and the commands' questions.
    let poll_workflow = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/PollWorkflowTaskQueue");
    let token_call =
        Call { implied_by: Some("RespondWorkflowTaskCompleted"), ..call(ResourceKind::TaskQueue, None, None) };
    for question in asked(&three_questions) {
        assert!(engine.evaluate(&worker, question.spec, "/x/RespondWorkflowTaskCompleted", &question.call).allowed);
    }
    assert!(engine.evaluate(&worker, respond, "/x/RespondWorkflowTaskCompleted", &respond_call).allowed);
    assert!(engine.evaluate(&worker, poll_workflow, "/x/RespondWorkflowTaskCompleted", &token_call).allowed);
    time("implied::questions, completion of 3 commands (1 question)", 200_000, || {
        black_box(asked(black_box(&one_question)));
    });
    time("implied::questions, completion of 3 commands (3 questions)", 200_000, || {
        black_box(asked(black_box(&three_questions)));
    });
    let three = asked(&three_questions);
    time("decide 3 command questions (Cedar, no cache)", 5_000, || {
        for question in &three {
            black_box(engine.evaluate(&worker, question.spec, "/x/RespondWorkflowTaskCompleted", &question.call));
        }
    });
    let worker_decisions = DecisionCache::default();
    time("authorize 3 command questions (decisions cached)", 200_000, || {
        for question in &three {
            black_box(engine.authorize_in(
                &worker_decisions,
                &worker,
                question.spec,
                "/x/RespondWorkflowTaskCompleted",
                &question.call,
            ));
        }
    });
    time("completion: RPC + token queue + 3 commands, no cache", 5_000, || {
        black_box(engine.evaluate(&worker, respond, "/x/RespondWorkflowTaskCompleted", &respond_call));
        black_box(engine.evaluate(&worker, poll_workflow, "/x/RespondWorkflowTaskCompleted", &token_call));
        for question in &three {
            black_box(engine.evaluate(&worker, question.spec, "/x/RespondWorkflowTaskCompleted", &question.call));
        }
    });
    time("completion: inspect + questions + 5 cached decisions", 200_000, || {
        let call = inspect::inspect(respond, black_box(&three_questions)).unwrap();
        black_box(engine.authorize_in(&worker_decisions, &worker, respond, "/x/RespondWorkflowTaskCompleted", &call));
        black_box(engine.authorize_in(
            &worker_decisions,
            &worker,
            poll_workflow,
            "/x/RespondWorkflowTaskCompleted",
            &token_call,
        ));
        for question in implied::questions(respond, &three_questions, &call, &task).unwrap() {
            black_box(engine.authorize_in(
                &worker_decisions,
                &worker,
                question.spec,
                "/x/RespondWorkflowTaskCompleted",
                &question.call,
            ));
        }
    });

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = flowgate::audit::DecisionLog::open(&dir.path().join("decisions.jsonl")).unwrap();
    let record = serde_json::json!({"ts": "2026-11-23T12:00:00.000000Z", "decision": "allow", "reasons": ["bench"],
        "principal": {"type": "CiJob", "id": "github:repo:acme/payments:environment:production"}, "pad": "x".repeat(400)});
    time("DecisionLog::write, one at a time (serialize, write, ack)", 20_000, || {
        runtime.block_on(async { log.write(&record).await.unwrap() });
    });
    // Each `audit.fsync` mode, one record at a time and 8 at once (what a busy gateway does).
    for (mode, fsync, iterations) in [
        ("never", flowgate::config::AuditFsync::Never, 20_000),
        ("interval", flowgate::config::AuditFsync::Interval, 20_000),
        ("always", flowgate::config::AuditFsync::Always, 500),
    ] {
        let config = flowgate::config::AuditConfig {
            path: dir.path().join(format!("decisions-{mode}.jsonl")),
            fsync,
            fsync_interval: Duration::from_secs(1),
        };
        let log = flowgate::audit::DecisionLog::open_with(&config).unwrap();
        time(&format!("DecisionLog::write, fsync = {mode}, one at a time"), iterations, || {
            runtime.block_on(async { log.write(&record).await.unwrap() });
        });
        time(&format!("DecisionLog::write, fsync = {mode}, 8 at once (per batch of 8)"), iterations / 8, || {
            runtime.block_on(async {
                let writes: Vec<_> = (0..8)
                    .map(|_| {
                        let log = log.clone();
                        let record = record.clone();
                        tokio::spawn(async move { log.write(&record).await.unwrap() })
                    })
                    .collect();
                for write in writes {
                    write.await.unwrap();
                }
            })
        });
    }

    // Identity stamping: a StartWorkflowExecution of a GitHub job, the way the SDKs send one.
    let config = flowgate::Config::parse(
        "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"http://127.0.0.1:1\"\n\
         [policy]\ndir = \"policies\"\n[audit]\npath = \"-\"\n",
    )
    .unwrap();
    let stamper = flowgate::identity::Stamper::new(&config);
    time("identity stamp rendered for a new token (GitHub job)", 20_000, || {
        black_box(stamper.for_principal(&github));
    });
    let stamp = stamper.for_principal(&github);
    let mut message = Vec::new();
    for (number, value) in [
        (1, &b"payments"[..]),
        (2, b"deploy-checkout-20261206-1"),
        (3, &wire_message(1, b"DeployWorkflow")),
        (4, &wire_message(1, b"deploys")),
        (5, &[b'x'; 120][..]),
        (9, b"12345@runner-7f9c"),
        (10, b"6c1f0f1e-2b44-4d6a-9a53-0d5d6f8b7b1a"),
    ] {
        wire::put_bytes_field(&mut message, number, value);
    }
    let decision = flowgate::audit::decision_id();
    time("stamp a StartWorkflowExecution (identity + header)", 200_000, || {
        black_box(stamp.apply(start, black_box(&message), &decision).unwrap());
    });
    let poll = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/PollActivityTaskQueue");
    time("stamp a PollActivityTaskQueue (identity)", 200_000, || {
        black_box(stamp.apply(poll, black_box(&message), &decision).unwrap());
    });

    // Observability on the hot path (issue 14's budgets): the client's traceparent, a call's
    // trace with tracing off, on but not sampled, and sampled (root + 4 phases + forward, built
    // and queued for export), and rate-limit admission.
    let mut headers = http::HeaderMap::new();
    headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
    time("traceparent parse", 2_000_000, || {
        black_box(flowgate::traceparent::TraceParent::parse(black_box(headers["traceparent"].as_bytes())));
    });
    let trace_call = |traces: &flowgate::traces::Traces, headers: &http::HeaderMap| {
        use flowgate::traces::Phase;
        let mut trace = traces.call(headers, start.service, start.name, Instant::now());
        for phase in [Phase::Authenticate, Phase::Inspect, Phase::Authorize, Phase::Record] {
            trace.enter(phase);
        }
        let mut upstream_headers = http::HeaderMap::new();
        trace.forward(&mut upstream_headers, "http://127.0.0.1:7233");
        trace.end(0, None);
    };
    let no_traceparent = http::HeaderMap::new();
    let off = flowgate::traces::Traces::off();
    time("a call's trace, tracing off", 2_000_000, || trace_call(&off, &no_traceparent));
    // An OTLP endpoint nothing listens on: exports fail off the measured thread, and the queue
    // (2048) drops what it cannot hold, as with a collector that is down.
    for (label, ratio) in [("on, not sampled (ratio 0)", 0.0), ("on, sampled (ratio 1)", 1.0)] {
        let config = flowgate::config::TracesConfig {
            endpoint: "http://127.0.0.1:9/v1/traces".into(),
            sample_ratio: ratio,
            follow_client_sampling: false,
            service_name: "bench".into(),
            ca: None,
            headers: Default::default(),
            timeout: Duration::from_secs(1),
            max_queue: 2048,
        };
        let traces = flowgate::traces::Traces::new(Some(&config)).unwrap();
        runtime.block_on(async { traces.start().unwrap() });
        let _entered = runtime.enter();
        time(&format!("a call's trace, tracing {label}"), 100_000, || trace_call(&traces, &no_traceparent));
    }
    let limits: Vec<flowgate::config::RateLimitConfig> = toml::from_str::<toml::Table>(
        "[[rate_limits]]\nname = \"p\"\nper = \"principal\"\nrate = 1e9\nmax_concurrent = 100000\n\
         [[rate_limits]]\nname = \"n\"\nper = \"namespace\"\nrate = 1e9\n",
    )
    .unwrap()["rate_limits"]
        .clone()
        .try_into()
        .unwrap();
    let limits = flowgate::ratelimit::RateLimits::new(&limits);
    let reasons = vec!["github-payments-production-deploy".to_owned()];
    let facts = flowgate::ratelimit::CallFacts {
        action: "StartWorkflowExecution",
        long_poll: false,
        namespace: Some("payments"),
        principal_id: &github.id,
        principal_type: "CiJob",
        reasons: &reasons,
    };
    time("rate-limit admission, 2 limits (per principal, per namespace)", 1_000_000, || {
        drop(black_box(limits.admit(black_box(&facts)).unwrap()));
    });

    // `[http_api]`: what an HTTP request costs before and after the gRPC phases.
    let api = flowgate::http_api::HttpApi::new();
    let headers = http::HeaderMap::new();
    let path = "/api/v1/namespaces/payments/workflows/deploy-42";
    time("HTTP API: route a start (method and path)", 100_000, || {
        black_box(api.route(&http::Method::POST, black_box(path), &headers).unwrap());
    });
    let route = api.route(&http::Method::POST, path, &headers).unwrap();
    let body = br#"{"workflowType":{"name":"DeployWorkflow"},"taskQueue":{"name":"deploys"},"input":["api",{"region":"eu","replicas":3}],"workflowIdConflictPolicy":"Fail","memo":{"fields":{"ticket":"OPS-1"}}}"#;
    time("HTTP API: a start's JSON body to protobuf (shorthand payloads)", 20_000, || {
        black_box(route.request_message(None, black_box(body), true).unwrap());
    });
    let history =
        api.route(&http::Method::GET, "/api/v1/namespaces/payments/workflows/deploy-42/history", &headers).unwrap();
    // A history page of 100 events (started, then task scheduled/started/completed and activity
    // events), each with a small JSON payload, as protobuf.
    let page = history_page(100);
    let options = flowgate::http_api::OutputOptions { pretty: false, shorthand: true };
    time(&format!("HTTP API: a history page ({} bytes, 100 events) to JSON", page.len()), 500, || {
        black_box(history.response_json(black_box(&page), options).unwrap());
    });
}

/// `GetWorkflowExecutionHistoryResponse { history: { events: [...] } }` with `count` events
/// carrying a `json/plain` payload each (the workflow started event's input).
fn history_page(count: usize) -> Vec<u8> {
    let payload = [
        wire_message(1, &[wire_message(1, b"encoding"), wire_message(2, b"json/plain")].concat()),
        wire_message(2, br#"{"region":"eu","replicas":3,"steps":["build","test","deploy"]}"#),
    ]
    .concat();
    let mut events = Vec::new();
    for id in 1..=count as u8 {
        let started =
            [wire_message(1, &wire_message(1, b"DeployWorkflow")), wire_message(6, &wire_message(1, &payload))]
                .concat();
        // HistoryEvent: event_id (1), event_type (3) = 1, workflow_execution_started_event_attributes (6).
        let event = [vec![0x08, id], vec![0x18, 0x01], wire_message(6, &started)].concat();
        events.extend(wire_message(1, &event));
    }
    wire_message(1, &events)
}

fn wire_message(number: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::put_bytes_field(&mut out, number, value);
    out
}
