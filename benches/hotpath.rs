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
use flowgate::authz::PolicyEngine;
use flowgate::config::PrincipalKind;
use flowgate::temporal::{Call, Resource, ResourceKind, catalog};

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

fn call(kind: ResourceKind, workflow_id: Option<&str>, workflow_type: Option<&str>) -> Call {
    Call {
        resource: Resource {
            kind,
            namespace: Some("payments".into()),
            workflow_id: workflow_id.map(Into::into),
            workflow_type: workflow_type.map(Into::into),
            task_queue: Some("deploys".into()),
            schedule_id: None,
        },
        signal_name: None,
        query_type: None,
        update_name: None,
        has_task_token: false,
        namespace_id: None,
    }
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
    time("authorize DescribeNamespace, Okta user (decision cached)", 200_000, || {
        black_box(engine.authorize(&okta, describe, "/x/DescribeNamespace", &describe_call));
    });
    // With a shadow set (`policy.shadow_dir`): the same call decided by both sets, each from
    // its own per-principal cache.
    let shadow = PolicyEngine::load(Path::new("policies")).expect("the repo's policies load");
    time("authorize + shadow DescribeNamespace, Okta user (both cached)", 200_000, || {
        black_box(engine.authorize(&okta, describe, "/x/DescribeNamespace", &describe_call));
        black_box(shadow.authorize_in(&okta.shadow_decisions, &okta, describe, "/x/DescribeNamespace", &describe_call));
    });
    time("authorize StartWorkflowExecution, GitHub job (new id)", 20_000, || {
        n += 1;
        let id = format!("wf-{n}");
        let start_call = call(ResourceKind::Workflow, Some(&id), Some("DeployWorkflow"));
        black_box(engine.authorize(&github, start, "/x/StartWorkflowExecution", &start_call));
    });

    // flowgate's own credentials: full verification (once per credential), then the cached path
    // every call of a worker takes.
    let keys = tempfile::tempdir().unwrap();
    let mint_config: flowgate::config::MintConfig =
        toml::from_str(&format!("issuer = \"http://flowgate.bench\"\nkey_dir = \"{}\"", keys.path().display()))
            .unwrap();
    let minter = flowgate::mint::Minter::new(&mint_config, flowgate::mint::replay::ReplayCache::memory()).unwrap();
    let grant = flowgate::mint::Grant::parse_scope("namespace:payments role:worker task_queue:deploys").unwrap();
    let credential = minter.mint_worker(&github, &grant, SystemTime::now()).token;
    let header = flowgate::mint::unverified_header(&credential).unwrap();
    time("mint a worker credential (ES256 sign)", 2_000, || {
        black_box(minter.mint_worker(&github, &grant, SystemTime::now()));
    });
    time("verify a worker credential (ES256, uncached)", 2_000, || {
        black_box(minter.verify(&credential, &header).unwrap());
    });
    let cache = flowgate::authn::TokenCache::new(1000);
    cache.insert(&credential, std::sync::Arc::new(minter.verify(&credential, &header).unwrap()));
    let poll = catalog::lookup("/temporal.api.workflowservice.v1.WorkflowService/PollActivityTaskQueue");
    let poll_call = call(ResourceKind::TaskQueue, None, None);
    time("worker credential per call: cache + grant + decision", 200_000, || {
        let principal = cache.get(&credential).unwrap();
        principal.minted.as_ref().unwrap().grant.check(poll, &poll_call).unwrap();
        black_box(engine.authorize(&principal, poll, "/x/PollActivityTaskQueue", &poll_call));
    });

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = flowgate::audit::DecisionLog::open(&dir.path().join("decisions.jsonl")).unwrap();
    let record = serde_json::json!({"ts": "2026-11-23T12:00:00.000000Z", "decision": "allow", "reasons": ["bench"],
        "principal": {"type": "CiJob", "id": "github:repo:acme/payments:environment:production"}, "pad": "x".repeat(400)});
    time("DecisionLog::write, one at a time (serialize, write, ack)", 20_000, || {
        runtime.block_on(async { log.write(&record).await.unwrap() });
    });
}
