//! The audit trail end to end, against a fake upstream: what the gateway writes (decisions,
//! outcomes, principal snapshots, the chain) and what the `audit` tools make of it: `verify`,
//! `query`, and `replay` under a proposed policy set. The same against a real Temporal server
//! is in tests/e2e/test_identity.py and tests/e2e/test_audit.py.

mod support;

use std::path::Path;

use flowgate::audit::query::Filter;
use support::*;

const FREEZE: &str = r#"
@id("freeze-payments")
forbid (
  principal,
  action == Temporal::Action::"StartWorkflowExecution",
  resource in Temporal::Namespace::"payments"
) when { principal has sub && principal.sub == "alice" };
"#;

fn policy_dir(root: &Path, extra: &str) -> std::path::PathBuf {
    let dir = root.join("proposed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("schema.cedarschema"), flowgate::authz::generated_schema()).unwrap();
    std::fs::write(dir.join("test.cedar"), format!("{POLICY}\n{extra}")).unwrap();
    dir
}

#[tokio::test]
async fn the_log_chains_decisions_outcomes_and_snapshots_and_replays_under_other_policies() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let mut client = Client::connect(gateway.addr).await;
    let alice = key.sign(&claims("alice", &["deployers"]));
    let bob = key.sign(&claims("bob", &["deployers"]));
    let mallory = key.sign(&claims("mallory", &["visitors"]));

    for (token, id) in [(&alice, "deploy-1"), (&alice, "deploy-2"), (&bob, "deploy-3"), (&mallory, "deploy-4")] {
        let request = start_request("payments", id, "DeployWorkflow", "deploys");
        client.unary("StartWorkflowExecution", Some(token), &request).await;
    }
    // Refused by flowgate itself (a task token it did not seal), not by a policy.
    let worker = key.sign(&claims("worker-1", &["workers"]));
    let forged = [field(1, b"not-a-sealed-token"), field(4, b"payments")].concat();
    let refused = client.unary("RespondActivityTaskCompleted", Some(&worker), &forged).await;
    assert_ne!(refused.code(), "0");
    let lines: Vec<serde_json::Value> = gateway
        .audit_lines()
        .into_iter()
        .filter(|l| l["principal"]["id"] != "test:worker-1" && l["action"] != "RespondActivityTaskCompleted")
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    // Each token's snapshot comes before its first decision; each forwarded call has an outcome.
    assert_eq!(
        kinds,
        ["principal", "grpc", "outcome", "grpc", "outcome", "principal", "grpc", "outcome", "principal", "grpc"],
        "{lines:#?}"
    );
    let snapshot = &lines[0];
    assert_eq!(snapshot["principal"]["id"], "test:alice");
    assert_eq!(snapshot["principal"]["groups"], serde_json::json!(["deployers"]));
    assert_eq!(snapshot["principal"]["tags"]["tenant"], "acme");
    assert_eq!(lines[1]["principal"]["ref"], snapshot["ref"]);
    assert_eq!(lines[3]["principal"]["ref"], snapshot["ref"], "one snapshot per token");
    assert_eq!(lines[2]["decision_id"], lines[1]["decision_id"]);
    assert_eq!(lines[2]["status"], 0);
    assert_eq!(lines[9]["decision"], "deny");

    let files = [gateway.audit_path.clone()];
    let verified = flowgate::audit::chain::verify(&files).unwrap();
    assert!(verified.intact(), "{:?}", verified.breaks);
    assert_eq!(verified.lines, 12);
    let own = gateway.records().into_iter().find(|r| r["action"] == "RespondActivityTaskCompleted").unwrap();
    assert_eq!(own["refused_by"], "flowgate", "{own:#}");
    assert_eq!(lines[9]["refused_by"], "policy");

    // The same policies decide the same.
    let dir = tempfile::tempdir().unwrap();
    let same = flowgate::authz::PolicyEngine::load(&policy_dir(dir.path(), "")).unwrap();
    let replayed = flowgate::audit::replay::replay(&files, &Filter::default(), &same).unwrap();
    assert_eq!((replayed.replayed, replayed.changed.len()), (4, 0), "{replayed:?}");
    assert_eq!(replayed.skipped.get("refused by flowgate's own checks, not by a policy"), Some(&1), "{replayed:?}");

    // A freeze on alice's starts would have denied her two calls, and only those.
    let frozen_dir = tempfile::tempdir().unwrap();
    let frozen = flowgate::authz::PolicyEngine::load(&policy_dir(frozen_dir.path(), FREEZE)).unwrap();
    let replayed = flowgate::audit::replay::replay(&files, &Filter::default(), &frozen).unwrap();
    assert_eq!(replayed.replayed, 4);
    let changed: Vec<(&str, &str)> =
        replayed.changed.iter().map(|c| (c.record["resource"]["workflow_id"].as_str().unwrap(), c.now)).collect();
    assert_eq!(changed, [("deploy-1", "deny"), ("deploy-2", "deny")]);
    assert_eq!(replayed.changed[0].reasons, ["freeze-payments"]);
    let summary = replayed.summary();
    assert_eq!(
        summary.get(&("test:alice".to_owned(), "StartWorkflowExecution".to_owned(), "allow -> deny".to_owned())),
        Some(&2)
    );
    // Narrowed down by the query filters.
    let bob_only = Filter { principal: Some("test:bob".into()), ..Filter::default() };
    assert_eq!(flowgate::audit::replay::replay(&files, &bob_only, &frozen).unwrap().changed.len(), 0);

    gateway.stop().await.unwrap();
}

/// A call the client or its deadline gives up on while Temporal has not answered yet still gets
/// its outcome: it was forwarded, and Temporal may have acted on it.
#[tokio::test]
async fn a_call_cut_before_the_upstream_answers_has_an_outcome_too() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    // The fake upstream holds a poll for 2 s; the call's deadline is 100 ms (plus flowgate's
    // second of grace).
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let mut client = Client::connect(gateway.addr).await;
    let token = key.sign(&claims("worker-1", &["workers"]));
    let auth = format!("Bearer {token}");
    let poll = [field(1, b"payments"), field(2, &field(1, b"deploys"))].concat();
    let headers = [("authorization", auth.as_str()), ("grpc-timeout", "100m")];
    let reply = client.call(&format!("{WS}/PollActivityTaskQueue"), &headers, frame(&poll, false)).await;
    assert_eq!(reply.code(), "4", "{reply:?}");
    let records = gateway.records();
    let decision = records.iter().find(|r| r["action"] == "PollActivityTaskQueue").expect("a decision");
    assert_eq!(decision["decision"], "allow");
    let mut outcomes = Vec::new();
    for _ in 0..50 {
        outcomes = gateway.outcomes();
        if !outcomes.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(outcomes.len(), 1, "{outcomes:#?}");
    assert_eq!(outcomes[0]["decision_id"], decision["decision_id"]);
    assert_eq!(outcomes[0]["status"], 1, "{:#}", outcomes[0]);
    assert!(outcomes[0]["message"].as_str().unwrap().contains("before Temporal answered"));
    gateway.stop().await.unwrap();
}
