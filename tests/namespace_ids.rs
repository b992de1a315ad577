//! Requests that name their namespace by id (`DescribeNamespace.id`,
//! `DeleteNamespace.namespace_id`), against a fake upstream that knows two namespaces by id:
//! resolved once and authorized as the name, refused cleanly otherwise, and never a way for a
//! caller without permissions to make flowgate call the upstream. The same against a real
//! Temporal server: tests/e2e/test_namespace_ids.py.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use support::*;

const PAYMENTS_ID: &str = "5b7f6a2e-1c1d-4f4e-9a3b-2d9c8e7f6a51";
const ANALYTICS_ID: &str = "0e3c1f52-8a47-4d0b-b1e6-6c2f0a9d3e18";
/// Answered with UNAVAILABLE by the fake upstream.
const FLAKY_ID: &str = "77777777-7777-4777-8777-777777777777";
const OP: &str = "/temporal.api.operatorservice.v1.OperatorService";

const POLICY_WITH_ADMINS: &str = r#"
@id("deployers-read")
permit (principal in Temporal::Group::"test:deployers", action in Temporal::Action::"read", resource in Temporal::Namespace::"payments");

@id("payments-admins")
permit (principal in Temporal::Group::"test:admins", action in Temporal::Action::"admin", resource in Temporal::Namespace::"payments");
"#;

/// A fake Temporal that resolves the two ids (and answers NOT_FOUND for other ids, UNAVAILABLE
/// for [`FLAKY_ID`]); `delay_ms` delays every lookup's answer.
struct Temporal {
    upstream: Upstream,
    delay_ms: Arc<AtomicU64>,
}

fn is_lookup(call: &Seen) -> bool {
    call.headers.get("user-agent").is_some_and(|agent| agent.to_str().unwrap().contains("namespace-id-lookup"))
}

/// The string at top-level field `number` of a framed message (lengths under 128).
fn string_field(framed: &[u8], number: u8) -> Option<String> {
    let mut message = &framed[5..];
    while message.len() >= 2 {
        let (tag, len) = (message[0], message[1] as usize);
        let value = &message[2..2 + len];
        if tag == number << 3 | 2 {
            return Some(String::from_utf8(value.to_vec()).unwrap());
        }
        message = &message[2 + len..];
    }
    None
}

impl Temporal {
    async fn start() -> Temporal {
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let upstream = Upstream::start_with(Arc::new(move |call: &Seen| {
            if !call.path.ends_with("/DescribeNamespace") || !is_lookup(call) {
                return None;
            }
            let id = string_field(&call.body, 2).unwrap_or_default();
            let delay = Duration::from_millis(delay.load(Ordering::SeqCst));
            let name = match id.as_str() {
                PAYMENTS_ID => "payments",
                ANALYTICS_ID => "analytics",
                FLAKY_ID => {
                    return Some(Answer {
                        delay,
                        status: "14",
                        grpc_message: "persistence%20unavailable",
                        message: None,
                    });
                }
                _ => {
                    return Some(Answer { delay, status: "5", grpc_message: "Namespace not found.", message: None });
                }
            };
            // DescribeNamespaceResponse { namespace_info = 1: { name = 1, id = 6 } }
            let info = [field(1, name.as_bytes()), field(6, id.as_bytes())].concat();
            Some(Answer { delay, status: "0", grpc_message: "", message: Some(field(1, &info)) })
        }))
        .await;
        Temporal { upstream, delay_ms }
    }

    fn lookups(&self) -> Vec<Seen> {
        self.upstream.calls().into_iter().filter(is_lookup).collect()
    }

    fn forwarded(&self) -> Vec<Seen> {
        self.upstream.calls().into_iter().filter(|c| !is_lookup(c)).collect()
    }
}

fn by_id(id: &str) -> Vec<u8> {
    field(2, id.as_bytes())
}

async fn start(temporal: &Temporal, jwks: &Jwks, policy: &str, upstream_extra: &str, tables: &str) -> Gateway {
    let mut setup = Setup::new(&temporal.upstream);
    setup.policy = policy.to_owned();
    setup.upstream_extra = upstream_extra.to_owned();
    setup.tables = tables.to_owned();
    Gateway::start(jwks, setup).await
}

#[tokio::test]
async fn an_id_is_resolved_once_and_authorized_as_its_name() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let temporal = Temporal::start().await;
    let gateway = start(&temporal, &jwks, POLICY, "", "").await;
    let mut client = Client::connect(gateway.addr).await;
    let alice = key.sign(&claims("alice", &["deployers"]));

    for _ in 0..3 {
        let reply = client.unary("DescribeNamespace", Some(&alice), &by_id(PAYMENTS_ID)).await;
        assert_eq!(reply.code(), "0", "{reply:?}");
    }
    let lookups = temporal.lookups();
    assert_eq!(lookups.len(), 1, "asked once, then remembered");
    assert_eq!(lookups[0].body.as_ref(), frame(&by_id(PAYMENTS_ID), false).as_slice());
    assert!(lookups[0].headers.get("authorization").is_none(), "credentials = none: no header");
    let forwarded = temporal.forwarded();
    assert_eq!(forwarded.len(), 3);
    assert!(forwarded.iter().all(|c| c.body.as_ref() == frame(&by_id(PAYMENTS_ID), false).as_slice()), "unchanged");

    let records = gateway.records();
    assert_eq!(records.len(), 3);
    let record = &records[0];
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["action"], "DescribeNamespace");
    assert_eq!(record["resource"]["type"], "Namespace");
    assert_eq!(record["resource"]["namespace"], "payments");
    assert_eq!(record["resource"]["namespace_id"], PAYMENTS_ID);
    assert_eq!(record["reasons"], serde_json::json!(["deployers-read"]));

    // By name, as before: no lookup, and the record has no id.
    let reply = client.unary("DescribeNamespace", Some(&alice), &field(1, b"payments")).await;
    assert_eq!(reply.code(), "0");
    assert_eq!(temporal.lookups().len(), 1);
    assert!(gateway.records()[3]["resource"].get("namespace_id").is_none());
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn an_id_of_another_namespace_is_refused_without_naming_it() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let temporal = Temporal::start().await;
    let gateway = start(&temporal, &jwks, POLICY, "", "").await;
    let mut client = Client::connect(gateway.addr).await;
    let alice = key.sign(&claims("alice", &["deployers"]));

    let reply = client.unary("DescribeNamespace", Some(&alice), &by_id(ANALYTICS_ID)).await;
    assert_eq!(reply.code(), "7", "{reply:?}");
    let message = reply.message.unwrap();
    assert!(message.contains(&format!("namespace id `{ANALYTICS_ID}`")), "{message}");
    assert!(!message.contains("analytics"), "the name is the upstream's answer, not for the caller: {message}");
    assert_eq!(temporal.lookups().len(), 1);
    assert!(temporal.forwarded().is_empty());
    let record = &gateway.records()[0];
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["status"], 7);
    assert_eq!(record["resource"]["namespace"], "analytics", "the record tells the auditor");
    assert_eq!(record["resource"]["namespace_id"], ANALYTICS_ID);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_caller_no_policy_could_permit_causes_no_lookup() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let temporal = Temporal::start().await;
    let gateway = start(&temporal, &jwks, POLICY, "", "").await;
    let mut client = Client::connect(gateway.addr).await;
    let nobody = key.sign(&claims("mallory", &[]));

    for i in 0..50 {
        let id = format!("00000000-0000-4000-8000-{i:012}");
        let reply = client.unary("DescribeNamespace", Some(&nobody), &by_id(&id)).await;
        assert_eq!(reply.code(), "7", "{reply:?}");
        assert!(reply.message.unwrap().contains("was not resolved"));
    }
    let reply = client.unary("DescribeNamespace", None, &by_id(PAYMENTS_ID)).await;
    assert_eq!(reply.code(), "16", "unauthenticated first");
    // Deployers may read but not administer: no lookup for a delete either.
    let alice = key.sign(&claims("alice", &["deployers"]));
    let reply = client
        .call(
            &format!("{OP}/DeleteNamespace"),
            &[("authorization", &format!("Bearer {alice}"))],
            frame(&by_id(PAYMENTS_ID), false),
        )
        .await;
    assert_eq!(reply.code(), "7", "{reply:?}");
    assert!(temporal.upstream.calls().is_empty(), "the upstream saw nothing");

    let records = gateway.records();
    let record = &records[0];
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["resource"]["namespace_id"], "00000000-0000-4000-8000-000000000000");
    assert!(record["resource"].get("namespace").is_none(), "not resolved");
    assert_eq!(records.last().unwrap()["action"], "DeleteNamespace");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_malformed_and_ambiguous_ids_are_refused_cleanly() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let temporal = Temporal::start().await;
    let gateway = start(&temporal, &jwks, POLICY, "", "").await;
    let mut client = Client::connect(gateway.addr).await;
    let alice = key.sign(&claims("alice", &["deployers"]));

    let bogus = "9d4c6a1b-2e3f-4a5b-8c7d-0e1f2a3b4c5d";
    for _ in 0..2 {
        let reply = client.unary("DescribeNamespace", Some(&alice), &by_id(bogus)).await;
        assert_eq!(reply.code(), "5", "{reply:?}");
        assert_eq!(reply.message.unwrap(), format!("namespace id `{bogus}` names no namespace"));
    }
    assert_eq!(temporal.lookups().len(), 1, "an unknown id is remembered for a while too");

    let reply = client.unary("DescribeNamespace", Some(&alice), &by_id("payments")).await;
    assert_eq!(reply.code(), "3", "{reply:?}");
    assert!(reply.message.unwrap().contains("namespace id `payments` is not a UUID"));

    // Temporal refuses a request naming both; so does flowgate, even when they agree.
    let both = [field(1, b"payments"), by_id(PAYMENTS_ID)].concat();
    let reply = client.unary("DescribeNamespace", Some(&alice), &both).await;
    assert_eq!(reply.code(), "3", "{reply:?}");
    assert!(reply.message.unwrap().starts_with("ambiguous request"));
    let mixed = [field(1, b"payments"), by_id(ANALYTICS_ID)].concat();
    assert_eq!(client.unary("DescribeNamespace", Some(&alice), &mixed).await.code(), "3");
    assert_eq!(temporal.lookups().len(), 1, "no lookup for a malformed or ambiguous request");
    assert!(temporal.forwarded().is_empty());
    let statuses: Vec<_> = gateway.records().iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [5, 5, 3, 3, 3].map(serde_json::Value::from));
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_lookup_is_unavailable_and_not_remembered() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let temporal = Temporal::start().await;
    let gateway = start(&temporal, &jwks, POLICY, "", "").await;
    let mut client = Client::connect(gateway.addr).await;
    let alice = key.sign(&claims("alice", &["deployers"]));
    for _ in 0..2 {
        let reply = client.unary("DescribeNamespace", Some(&alice), &by_id(FLAKY_ID)).await;
        assert_eq!(reply.code(), "14", "{reply:?}");
        let message = reply.message.unwrap();
        assert!(message.contains(&format!("namespace id `{FLAKY_ID}` could not be resolved")), "{message}");
        assert!(message.contains("persistence unavailable") && message.ends_with("retry later"), "{message}");
    }
    assert_eq!(temporal.lookups().len(), 2, "each call asks again");
    gateway.stop().await.unwrap();

    // No upstream at all.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut setup = Setup::new(&temporal.upstream);
    setup.upstream = format!("http://127.0.0.1:{port}");
    let gateway = Gateway::start(&jwks, setup).await;
    let mut client = Client::connect(gateway.addr).await;
    let reply = client.unary("DescribeNamespace", Some(&alice), &by_id(PAYMENTS_ID)).await;
    assert_eq!(reply.code(), "14", "{reply:?}");
    assert!(reply.message.unwrap().contains("could not be resolved"));
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_calls_share_one_lookup_and_distinct_lookups_are_bounded() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let temporal = Temporal::start().await;
    temporal.delay_ms.store(500, Ordering::SeqCst);
    let gateway = start(&temporal, &jwks, POLICY, "", "").await;
    let client = Client::connect(gateway.addr).await;
    let alice = key.sign(&claims("alice", &["deployers"]));

    let calls = (0..20).map(|_| {
        let (mut client, alice) = (client.clone(), alice.clone());
        tokio::spawn(async move { client.unary("DescribeNamespace", Some(&alice), &by_id(PAYMENTS_ID)).await })
    });
    for reply in futures_util::future::join_all(calls).await {
        assert_eq!(reply.unwrap().code(), "0");
    }
    assert_eq!(temporal.lookups().len(), 1, "twenty callers, one lookup");
    assert_eq!(temporal.forwarded().len(), 20);

    // Distinct ids, answered late: at most 32 lookups at once, the others refused.
    let calls = (0..40).map(|i| {
        let (mut client, alice) = (client.clone(), alice.clone());
        let id = format!("11111111-0000-4000-8000-{i:012}");
        tokio::spawn(async move { client.unary("DescribeNamespace", Some(&alice), &by_id(&id)).await })
    });
    let mut codes: Vec<String> =
        futures_util::future::join_all(calls).await.into_iter().map(|r| r.unwrap().code().to_owned()).collect();
    codes.sort();
    assert_eq!(codes.iter().filter(|c| *c == "5").count(), 32, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "14").count(), 8, "{codes:?}");
    assert_eq!(temporal.lookups().len(), 1 + 32);
    let busy = gateway.records().into_iter().filter(|r| r["status"] == 14).collect::<Vec<_>>();
    assert_eq!(busy.len(), 8);
    assert_eq!(busy[0]["reasons"][0], "too many namespace ids are being resolved at once; retry later");
    gateway.stop().await.unwrap();
}

/// The payload of a JWT, unverified (the test reads what flowgate put in it).
fn jwt_claims(authorization: &http::HeaderValue) -> serde_json::Value {
    let token = authorization.to_str().unwrap().strip_prefix("Bearer ").unwrap();
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn lookups_carry_the_configured_credentials() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let alice = key.sign(&claims("alice", &["deployers"]));

    // forward: the caller's own header.
    let temporal = Temporal::start().await;
    let gateway = start(&temporal, &jwks, POLICY, r#"credentials = "forward""#, "").await;
    let mut client = Client::connect(gateway.addr).await;
    assert_eq!(client.unary("DescribeNamespace", Some(&alice), &by_id(PAYMENTS_ID)).await.code(), "0");
    assert_eq!(temporal.lookups()[0].headers["authorization"], format!("Bearer {alice}").as_str());
    gateway.stop().await.unwrap();

    // minted: a system read credential for the lookup, and for the call by id itself (Temporal
    // authorizes a request by id against no namespace); by name, the namespace's own.
    let temporal = Temporal::start().await;
    let keys = tempfile::tempdir().unwrap();
    let mint = format!(
        "[mint]\nissuer = \"http://flowgate.test\"\nkey_dir = \"{}\"\ncredential_lifetime = \"10m\"\n",
        keys.path().display()
    );
    let gateway = start(&temporal, &jwks, POLICY_WITH_ADMINS, r#"credentials = "minted""#, &mint).await;
    let mut client = Client::connect(gateway.addr).await;
    assert_eq!(client.unary("DescribeNamespace", Some(&alice), &by_id(PAYMENTS_ID)).await.code(), "0");
    assert_eq!(client.unary("DescribeNamespace", Some(&alice), &field(1, b"payments")).await.code(), "0");
    let admin = format!("Bearer {}", key.sign(&claims("root", &["admins"])));
    let reply = client
        .call(&format!("{OP}/DeleteNamespace"), &[("authorization", &admin)], frame(&by_id(PAYMENTS_ID), false))
        .await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    let lookup = &temporal.lookups()[0];
    let claims_of = |call: &Seen| jwt_claims(&call.headers["authorization"]);
    assert_eq!(claims_of(lookup)["permissions"], serde_json::json!(["temporal-system:read"]));
    assert_eq!(claims_of(lookup)["sub"], "test:alice");
    let forwarded = temporal.forwarded();
    assert_eq!(forwarded.len(), 3);
    assert_eq!(claims_of(&forwarded[0])["permissions"], serde_json::json!(["temporal-system:read"]));
    assert_eq!(claims_of(&forwarded[1])["permissions"], serde_json::json!(["payments:read"]));
    assert_eq!(forwarded[2].path, format!("{OP}/DeleteNamespace"));
    assert_eq!(claims_of(&forwarded[2])["permissions"], serde_json::json!(["temporal-system:admin"]));
    assert_eq!(temporal.lookups().len(), 1, "the delete found the id resolved");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_delete_by_id_is_asked_as_an_admin_action_on_the_resolved_name() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let temporal = Temporal::start().await;
    let gateway = start(&temporal, &jwks, POLICY_WITH_ADMINS, "", "").await;
    let mut client = Client::connect(gateway.addr).await;
    let admin = format!("Bearer {}", key.sign(&claims("root", &["admins"])));
    let delete = |id: &str| frame(&by_id(id), false);

    let reply = client.call(&format!("{OP}/DeleteNamespace"), &[("authorization", &admin)], delete(ANALYTICS_ID)).await;
    assert_eq!(reply.code(), "7", "{reply:?}");
    assert!(
        reply.message.unwrap().contains(&format!("`DeleteNamespace` on Namespace in namespace id `{ANALYTICS_ID}`"))
    );
    let reply = client.call(&format!("{OP}/DeleteNamespace"), &[("authorization", &admin)], delete(PAYMENTS_ID)).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    assert_eq!(temporal.forwarded().len(), 1);
    let records = gateway.records();
    assert_eq!(records[0]["resource"]["namespace"], "analytics");
    assert_eq!(records[1]["resource"]["namespace"], "payments");
    assert_eq!(records[1]["resource"]["namespace_id"], PAYMENTS_ID);
    assert_eq!(records[1]["reasons"], serde_json::json!(["payments-admins"]));
    gateway.stop().await.unwrap();
}
