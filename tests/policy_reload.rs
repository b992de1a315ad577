//! The policy loop on a running gateway (fake upstream, in-test JWKS): hot reload under load,
//! a call in flight across a reload, shadow policies, and explaining decisions on the admin
//! port. The same against real Temporal is in tests/e2e/test_policy_loop.py.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

async fn setup() -> (SigningKey, Jwks, Upstream) {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    (key, jwks, upstream)
}

fn deploy(id: &str) -> Vec<u8> {
    start_request("payments", id, "DeployWorkflow", "deploys")
}

/// `DescribeNamespace { namespace = "payments" }`.
fn describe() -> Vec<u8> {
    field(1, b"payments")
}

/// The deployers may no longer start deploys; reading stays allowed.
const STRICTER: &str = r#"
@id("deployers-read")
permit (principal in Temporal::Group::"test:deployers", action in Temporal::Action::"read", resource in Temporal::Namespace::"payments");

@id("deploy-freeze")
forbid (principal, action == Temporal::Action::"StartWorkflowExecution", resource);
"#;

const INVALID: &str = r#"
@id("deployers-read")
permit (principal in Temporal::Group::"test:deployers", action in Temporal::Action::"read", resource in Temporal::Namespace::"payments");

@id("broken")
permit (principal, action == Temporal::Action::"StartWorkflowExecution", resource) when { resource.nope ==
"#;

/// The distinct policy versions of `records`, in order of first appearance. (A call that read
/// the old set just before a swap may write its record after a call under the new set.)
fn versions_of(records: &[serde_json::Value]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for record in records {
        let version = record["policy_version"].as_str().unwrap().to_owned();
        if !seen.contains(&version) {
            seen.push(version);
        }
    }
    seen
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_reload_under_load_and_an_invalid_set_is_refused() {
    let (key, jwks, upstream) = setup().await;
    let mut setup = Setup::new(&upstream);
    setup.policy_extra = r#"watch_interval = "50ms""#.into();
    let gateway = Gateway::start(&jwks, setup).await;
    let token = key.sign(&claims("alice", &["deployers"]));

    // Two clients call continuously for the whole test: one starts deploys, one reads.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = ["start", "describe"]
        .into_iter()
        .map(|kind| {
            let (stop, token, addr) = (stop.clone(), token.clone(), gateway.addr);
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut replies = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let reply = match kind {
                        "start" => {
                            client.unary("StartWorkflowExecution", Some(&token), &deploy(&format!("d-{n}"))).await
                        }
                        _ => client.unary("DescribeNamespace", Some(&token), &describe()).await,
                    };
                    replies.push((reply.code().to_owned(), reply.message.unwrap_or_default()));
                }
                replies
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    Gateway::replace_policy(&gateway.policy_dir, STRICTER);
    wait_for("the stricter set", async || versions_of(&gateway.records()).len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Gateway::replace_policy(&gateway.policy_dir, INVALID);
    wait_for("the invalid set to be refused", async || {
        gateway.metric(r#"flowgate_policy_reload_total{set="enforced",result="failure"}"#).await >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses: BTreeMap<(&str, String), usize> = BTreeMap::new();
    let mut all = Vec::new();
    for (kind, caller) in ["start", "describe"].into_iter().zip(callers) {
        for (code, message) in caller.await.unwrap() {
            *statuses.entry((kind, code.clone())).or_default() += 1;
            all.push((kind, code, message));
        }
    }

    eprintln!("calls by (caller, grpc-status): {statuses:?}");
    // Only the policy change denied anything, and only what it forbids.
    for (kind, code, message) in &all {
        match (*kind, code.as_str()) {
            (_, "0") => {}
            ("start", "7") => assert!(message.contains("forbidden by policy `deploy-freeze`"), "{message}"),
            _ => panic!("{kind} failed with {code}: {message}"),
        }
    }
    assert!(statuses[&("start", "0".into())] > 20, "{statuses:?}");
    assert!(statuses[&("start", "7".into())] > 20, "{statuses:?}");
    assert!(statuses[&("describe", "0".into())] > 40, "{statuses:?}");
    assert!(!statuses.contains_key(&("describe", "7".into())), "{statuses:?}");

    // Records: the first version, then the stricter one, never the invalid one; each decision
    // is the one its version makes.
    let records = gateway.records();
    let versions =
        versions_of(&records.iter().filter(|r| r["action"] == "StartWorkflowExecution").cloned().collect::<Vec<_>>());
    assert_eq!(versions.len(), 2, "starts were decided under exactly two sets: {versions:?}");
    let (original, stricter) = (&versions[0], &versions[1]);
    for record in &records {
        let version = record["policy_version"].as_str().unwrap();
        assert!(version == original || version == stricter, "record under an unknown set: {record}");
        if record["action"] == "StartWorkflowExecution" {
            let expected = if version == original { "allow" } else { "deny" };
            assert_eq!(record["decision"], expected, "{record}");
        } else {
            assert_eq!(record["decision"], "allow", "{record}");
        }
    }
    assert_eq!(records.last().unwrap()["policy_version"], stricter.as_str(), "the last good set stays in force");
    assert_eq!(records.len(), all.len(), "one record per call");
    assert_eq!(upstream.calls().len(), statuses.iter().filter(|((_, c), _)| c == "0").map(|(_, n)| n).sum::<usize>());

    // Metrics: two good loads (start-up is not a reload), one refusal; the stricter set is shown.
    assert_eq!(gateway.metric(r#"flowgate_policy_reload_total{set="enforced",result="success"}"#).await, 1.0);
    assert!(gateway.metric(r#"flowgate_policy_reload_total{set="enforced",result="failure"}"#).await >= 1.0);
    assert_eq!(gateway.metric(&format!(r#"flowgate_policy_info{{policy_version="{stricter}"}}"#)).await, 1.0);
    assert_eq!(gateway.metric(&format!(r#"flowgate_policy_info{{policy_version="{original}"}}"#)).await, 0.0);
    let last_failure =
        gateway.metric(r#"flowgate_policy_last_reload_timestamp_seconds{set="enforced",result="failure"}"#).await;
    assert!((last_failure - now() as f64).abs() < 30.0, "last reload time {last_failure}");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_call_in_flight_finishes_under_the_set_it_started_with() {
    let (key, jwks, upstream) = setup().await;
    let mut setup = Setup::new(&upstream);
    setup.policy_extra = r#"watch_interval = "50ms""#.into();
    let gateway = Gateway::start(&jwks, setup).await;
    let token = key.sign(&claims("alice", &["deployers"]));

    // Headers now, the message only after the stricter set is in force.
    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let (mut body_tx, body) = http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let request = http::Request::post(format!("http://flowgate{WS}/StartWorkflowExecution"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .unwrap();
    let in_flight = tokio::spawn(async move { sender.send_request(request).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;

    Gateway::replace_policy(&gateway.policy_dir, STRICTER);
    wait_for("the stricter set", async || {
        gateway.metric(r#"flowgate_policy_reload_total{set="enforced",result="success"}"#).await >= 1.0
    })
    .await;
    let mut fresh = Client::connect(gateway.addr).await;
    assert_eq!(fresh.unary("StartWorkflowExecution", Some(&token), &deploy("new")).await.code(), "7");

    body_tx.send_data(Bytes::from(frame(&deploy("old"), false))).await.unwrap();
    drop(body_tx);
    let response = in_flight.await.unwrap();
    let (parts, body) = response.into_parts();
    let trailers = body.collect().await.unwrap().trailers().cloned();
    let status = parts.headers.get("grpc-status").or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")));
    assert_eq!(status.unwrap(), "0", "the call that started before the reload is decided by the old set");
    let records = gateway.records();
    let old = records.iter().find(|r| r["resource"]["workflow_id"] == "old").unwrap();
    let new = records.iter().find(|r| r["resource"]["workflow_id"] == "new").unwrap();
    assert_eq!(old["decision"], "allow");
    assert_eq!(new["decision"], "deny");
    assert_ne!(old["policy_version"], new["policy_version"]);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn shadow_policies_are_recorded_and_counted_but_never_enforced() {
    let (key, jwks, upstream) = setup().await;
    let mut setup = Setup::new(&upstream);
    setup.policy_extra = r#"watch_interval = "50ms""#.into();
    setup.shadow_policy = Some(STRICTER.to_owned());
    let gateway = Gateway::start(&jwks, setup).await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let mut client = Client::connect(gateway.addr).await;

    for n in 0..3 {
        let reply = client.unary("StartWorkflowExecution", Some(&token), &deploy(&format!("d-{n}"))).await;
        assert_eq!(reply.code(), "0", "the shadow set is not enforced: {reply:?}");
    }
    assert_eq!(client.unary("DescribeNamespace", Some(&token), &describe()).await.code(), "0");
    assert_eq!(upstream.calls().len(), 4);

    let records = gateway.records();
    for record in records.iter().filter(|r| r["action"] == "StartWorkflowExecution") {
        assert_eq!(record["decision"], "allow");
        let shadow = &record["shadow"];
        assert_eq!(shadow["decision"], "deny", "{record}");
        assert_eq!(shadow["reasons"], serde_json::json!(["deploy-freeze"]));
        assert_eq!(shadow["errors"], serde_json::json!([]));
        assert_ne!(shadow["policy_version"], record["policy_version"]);
    }
    let describe_record = records.iter().find(|r| r["action"] == "DescribeNamespace").unwrap();
    assert!(describe_record.get("shadow").is_none(), "an agreeing shadow decision is not recorded: {describe_record}");

    let disagreements =
        r#"flowgate_shadow_disagreements_total{action="StartWorkflowExecution",enforced="allow",shadow="deny"}"#;
    assert_eq!(gateway.metric(disagreements).await, 3.0);
    assert_eq!(gateway.metric(r#"flowgate_shadow_decisions_total{result="disagree"}"#).await, 3.0);
    assert_eq!(gateway.metric(r#"flowgate_shadow_decisions_total{result="agree"}"#).await, 1.0);

    // A broken shadow set is refused without touching enforcement or the last good shadow set.
    Gateway::replace_policy(&gateway.shadow_dir, INVALID);
    wait_for("the shadow set to be refused", async || {
        gateway.metric(r#"flowgate_policy_reload_total{set="shadow",result="failure"}"#).await >= 1.0
    })
    .await;
    assert_eq!(client.unary("StartWorkflowExecution", Some(&token), &deploy("d-after")).await.code(), "0");
    let last = gateway.records().pop().unwrap();
    assert_eq!(last["shadow"]["reasons"], serde_json::json!(["deploy-freeze"]), "the last good shadow set stays");

    // Promoting the shadow set: it becomes the enforced one, and the shadow agrees again.
    Gateway::replace_policy(&gateway.shadow_dir, STRICTER);
    Gateway::replace_policy(&gateway.policy_dir, STRICTER);
    wait_for("the promotion", async || {
        gateway.metric(r#"flowgate_policy_reload_total{set="enforced",result="success"}"#).await >= 1.0
    })
    .await;
    let reply = client.unary("StartWorkflowExecution", Some(&token), &deploy("d-promoted")).await;
    assert_eq!(reply.code(), "7");
    let last = gateway.records().pop().unwrap();
    assert!(last.get("shadow").is_none(), "{last}");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_denial_names_its_decision_and_the_admin_port_explains_it() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let token = key.sign(&claims("bob", &["oncall"]));
    let mut client = Client::connect(gateway.addr).await;

    let reply = client.unary("StartWorkflowExecution", Some(&token), &deploy("d-1")).await;
    assert_eq!(reply.code(), "7");
    let message = reply.message.unwrap();
    let record = gateway.records().pop().unwrap();
    let id = record["decision_id"].as_str().unwrap();
    assert!(
        message.ends_with(&format!("(decision `{id}`: `flowgate explain --admin <admin address> --decision {id}`)")),
        "{message}"
    );

    let (status, body) = gateway.admin_get(&format!("/explain/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let explained: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(explained["denial"]["decision_id"], id);
    assert_eq!(explained["denial"]["policy_version"], record["policy_version"]);
    let explanation = &explained["explanation"];
    assert_eq!(explanation["principal"]["entity"], r#"Temporal::User::"test:bob""#);
    assert_eq!(explanation["principal"]["groups"], serde_json::json!([r#"Temporal::Group::"test:oncall""#]));
    assert_eq!(explanation["principal"]["tags"]["tenant"], "acme");
    assert_eq!(explanation["action"], r#"Temporal::Action::"StartWorkflowExecution""#);
    assert_eq!(explanation["action_group"], "write");
    assert_eq!(explanation["resource"]["attrs"]["type"], "DeployWorkflow");
    assert_eq!(explanation["resource"]["attrs"]["id"], "d-1");
    assert_eq!(explanation["context"]["method"], format!("{WS}/StartWorkflowExecution"));
    assert_eq!(explanation["decision"]["decision"], "deny");
    assert_eq!(explanation["decision"]["policies"], serde_json::json!([]));
    assert_eq!(explanation["decision"]["considered"], serde_json::json!(["deployers-start-deploys"]));
    let (_, text) = gateway.admin_get(&format!("/explain/{id}?format=text")).await;
    assert!(text.contains("no policy permits it (default deny)"), "{text}");
    assert!(text.contains(r#"principal  Temporal::User::"test:bob""#), "{text}");

    let (status, body) = gateway.admin_get("/explain/0190-not-a-decision").await;
    assert_eq!(status, 404);
    assert!(body.contains("no recent denial"), "{body}");

    // POST /explain: a real token is verified; the call is described.
    let deployer = key.sign(&claims("alice", &["deployers"]));
    let call = serde_json::json!({"method": "StartWorkflowExecution", "namespace": "payments",
        "workflow_type": "DeployWorkflow", "workflow_id": "d-2", "task_queue": "deploys"});
    let (status, body) =
        gateway.admin_post("/explain", &serde_json::json!({"token": deployer, "call": call}).to_string()).await;
    assert_eq!(status, 200, "{body}");
    let explained: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(explained["decision"]["decision"], "allow");
    assert_eq!(explained["decision"]["policies"], serde_json::json!(["deployers-start-deploys"]));
    let tampered = format!("{}x", &deployer[..deployer.len() - 1]);
    let (status, body) =
        gateway.admin_post("/explain", &serde_json::json!({"token": tampered, "call": call}).to_string()).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("unauthenticated: "), "{body}");
    let by_claims = serde_json::json!({"principal": {"issuer": "test", "claims": {"sub": "carol", "groups": ["workers"]}},
        "call": {"method": "PollActivityTaskQueue", "namespace": "payments", "task_queue": "deploys"}});
    let (status, body) = gateway.admin_post("/explain?format=text", &by_claims.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("permitted by workers-poll"), "{body}");
    let not_carried = serde_json::json!({"principal": {"issuer": "test", "claims": {"sub": "carol"}},
        "call": {"method": "SignalWorkflowExecution", "namespace": "payments", "workflow_id": "w", "workflow_type": "T"}});
    let (status, body) = gateway.admin_post("/explain", &not_carried.to_string()).await;
    assert_eq!(status, 400);
    assert!(body.contains("`SignalWorkflowExecution` requests carry no `workflow_type`"), "{body}");
    let (status, _) = gateway.admin_post("/explain", "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(gateway.admin_post("/explain", &"x".repeat(70 * 1024)).await.0, 400, "bodies are bounded");
    gateway.stop().await.unwrap();
}
