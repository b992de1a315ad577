//! The gateway end to end against a fake upstream and an in-test JWKS server: authentication
//! (every checklist item), inspection of bad input, authorization, decision records, and the
//! fault cases (IdP down, upstream down, decision log unwritable). The same behaviour against a
//! real Temporal server is in tests/e2e.

mod support;

use std::time::Duration;

use support::*;

async fn setup() -> (SigningKey, Jwks, Upstream) {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    (key, jwks, upstream)
}

fn deploy() -> Vec<u8> {
    start_request("payments", "deploy-1", "DeployWorkflow", "deploys")
}

#[tokio::test]
async fn an_allowed_call_is_forwarded_intact_and_stamped_without_the_token() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let mut client = Client::connect(gateway.addr).await;
    let token = key.sign(&claims("alice", &["deployers"]));

    let reply = client.unary("StartWorkflowExecution", Some(&token), &deploy()).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    assert_eq!(reply.body.as_ref(), frame(b"\x0a\x02ok", false).as_slice(), "response body intact");
    let trailers = reply.trailers.expect("trailers are forwarded");
    assert_eq!(trailers["x-upstream-trailer"], "kept");

    let calls = upstream.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, format!("{WS}/StartWorkflowExecution"));
    // The client's message goes on byte for byte, followed by what flowgate stamps: the verified
    // principal as `identity` (field 9) and the initiator header (field 16).
    let forwarded = &calls[0].body[5..];
    assert_eq!(calls[0].body[0], 0, "sent uncompressed");
    assert_eq!(u32::from_be_bytes(calls[0].body[1..5].try_into().unwrap()) as usize, forwarded.len());
    assert!(forwarded.starts_with(&deploy()), "the client's bytes are intact");
    let stamped = &forwarded[deploy().len()..];
    assert_eq!(flowgate::temporal::wire::last_string(stamped, &[9]).unwrap(), Some("test:alice via flowgate"));
    let entry = flowgate::temporal::wire::last_bytes(stamped, &[16, 1]).unwrap().unwrap();
    assert_eq!(flowgate::temporal::wire::last_string(entry, &[1]).unwrap(), Some("flowgate-principal"));
    assert!(calls[0].headers.get("authorization").is_none(), "the token is not forwarded by default");
    assert_eq!(calls[0].headers["client-name"], "flowgate-tests");

    let records = gateway.records();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["kind"], "grpc");
    assert_eq!(record["action"], "StartWorkflowExecution");
    assert_eq!(record["reasons"], serde_json::json!(["deployers-start-deploys"]));
    assert_eq!(record["principal"]["id"], "test:alice");
    assert_eq!(record["principal"]["type"], "User");
    assert_eq!(record["principal"]["issuer"], "test");
    assert_eq!(record["resource"]["type"], "Workflow");
    assert_eq!(record["resource"]["namespace"], "payments");
    assert_eq!(record["resource"]["workflow_type"], "DeployWorkflow");
    assert_eq!(record["resource"]["workflow_id"], "deploy-1");
    assert_eq!(record["resource"]["task_queue"], "deploys");
    assert_eq!(record["client"]["name"], "flowgate-tests");
    assert!(record["client"]["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(record["policy_version"].as_str().unwrap().len(), 16);
    assert!(record["status"].is_null());
    assert!(record["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(record["decision_id"].as_str().unwrap().len(), 36);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn policy_denials_name_the_action_and_resource() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let mut client = Client::connect(gateway.addr).await;
    let token = key.sign(&claims("alice", &["deployers"]));

    let wrong_type = start_request("payments", "x-1", "DropTables", "deploys");
    let reply = client.unary("StartWorkflowExecution", Some(&token), &wrong_type).await;
    assert_eq!(reply.code(), "7");
    let message = reply.message.unwrap();
    assert!(message.contains("`StartWorkflowExecution`") && message.contains("`DropTables`"), "{message}");
    assert!(message.contains("namespace `payments`"), "{message}");

    let other_namespace = start_request("analytics", "deploy-2", "DeployWorkflow", "deploys");
    assert_eq!(client.unary("StartWorkflowExecution", Some(&token), &other_namespace).await.code(), "7");

    // Workers' group may poll but not start.
    let worker = key.sign(&claims("w", &["workers"]));
    assert_eq!(client.unary("StartWorkflowExecution", Some(&worker), &deploy()).await.code(), "7");
    assert!(upstream.calls().is_empty(), "nothing denied reached the upstream");

    let records = gateway.records();
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r["decision"] == "deny" && r["status"] == 7));
    assert_eq!(records[0]["resource"]["workflow_type"], "DropTables");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_admin_and_reflection_methods_are_denied_without_a_policy() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let mut client = Client::connect(gateway.addr).await;
    let token = format!("Bearer {}", key.sign(&claims("alice", &["deployers"])));
    for path in [
        "/temporal.server.api.adminservice.v1.AdminService/DescribeCluster",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/temporal.api.workflowservice.v1.WorkflowService/NoSuchMethod",
        "/acme.Other/Call",
    ] {
        let reply = client.call(path, &[("authorization", &token)], frame(b"", false)).await;
        assert_eq!(reply.code(), "7", "{path}: {reply:?}");
    }
    assert!(upstream.calls().is_empty());
    let actions: Vec<_> = gateway.records().iter().map(|r| r["action"].as_str().unwrap().to_owned()).collect();
    assert_eq!(actions, ["AdminService", "ServerReflection", "UnknownMethod", "UnknownMethod"]);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn public_calls_need_no_token_and_others_do() {
    let (_key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let mut client = Client::connect(gateway.addr).await;
    assert_eq!(client.unary("GetSystemInfo", None, b"").await.code(), "0");
    let health = client.call("/grpc.health.v1.Health/Check", &[], frame(b"", false)).await;
    assert_eq!(health.code(), "0");
    let reply = client.unary("StartWorkflowExecution", None, &deploy()).await;
    assert_eq!(reply.code(), "16");
    assert!(reply.message.unwrap().contains("no bearer token"));
    let records = gateway.records();
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[2]["reasons"],
        serde_json::json!(["unauthenticated: no bearer token in the `authorization` header"])
    );
    assert!(records[2]["principal"].is_null());
    gateway.stop().await.unwrap();
}

/// Every item of the validation checklist, one token each.
#[tokio::test]
async fn tokens_failing_the_checklist_are_unauthenticated_with_a_reason() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let mut client = Client::connect(gateway.addr).await;
    let base = claims("alice", &["deployers"]);
    let with = |patch: serde_json::Value| {
        let mut claims = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let attacker = SigningKey::es256("key-1");
    let header = |alg: &str, extra: serde_json::Value| {
        let mut h = serde_json::json!({"alg": alg, "kid": "key-1", "typ": "JWT"});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    // HS256 "signed" with the public key's JSON as the secret (the classic confusion attack).
    let hs256 = {
        let secret = key.jwk.to_string();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("key-1".into());
        jsonwebtoken::encode(&h, &base, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let embedded_jwk = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("attacker".into());
        h.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap());
        h.jku = Some("http://127.0.0.1:1/jwks".into());
        attacker.sign_with_header(&h, &base)
    };
    let valid = key.sign(&base);
    let (signed_part, _) = valid.rsplit_once('.').unwrap();
    let zero_signature = format!("{signed_part}.{}", "A".repeat(86));
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", raw_token(&header("none", serde_json::json!({})), &base, b""), "algorithm `none` is not accepted"),
        ("HS256 with the public key", hs256, "algorithm `HS256` is not accepted"),
        ("forged with another key", attacker.sign(&base), "signature is invalid"),
        ("embedded jwk/jku", embedded_jwk, "unknown signing key `attacker`"),
        ("ECDSA r=s=0", zero_signature, "signature is invalid"),
        (
            "kid path trick",
            {
                let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                h.kid = Some("../../key-1".into());
                key.sign_with_header(&h, &base)
            },
            "unknown signing key `../../key-1`",
        ),
        (
            "no kid",
            {
                let h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                key.sign_with_header(&h, &base)
            },
            "no `kid`",
        ),
        ("expired", key.sign(&with(serde_json::json!({"exp": now() - 120, "iat": now() - 400}))), "expired"),
        ("nbf in the future", key.sign(&with(serde_json::json!({"nbf": now() + 600}))), "not valid yet"),
        ("iat in the future", key.sign(&with(serde_json::json!({"iat": now() + 600}))), "issued in the future"),
        ("no exp", key.sign(&with(serde_json::json!({"exp": null}))), "claim `exp` is missing"),
        (
            "implausible lifetime",
            key.sign(&with(serde_json::json!({"exp": now() + 30 * 24 * 3600}))),
            "lifetime exceeds",
        ),
        ("wrong audience", key.sign(&with(serde_json::json!({"aud": "api://other"}))), "audience is not accepted"),
        ("no audience", key.sign(&with(serde_json::json!({"aud": null}))), "claim `aud` is missing"),
        (
            "wrong issuer",
            key.sign(&with(serde_json::json!({"iss": "https://evil.test"}))),
            "issuer `https://evil.test` is not trusted",
        ),
        ("other tenant", key.sign(&with(serde_json::json!({"tenant": "evil"}))), "claim `tenant` is `evil`"),
        (
            "tenant of the wrong type",
            key.sign(&with(serde_json::json!({"tenant": 7}))),
            "claim `tenant` has the wrong type",
        ),
        ("sub not a string", key.sign(&with(serde_json::json!({"sub": 42}))), "claim `sub` has the wrong type"),
        ("an ID token", key.sign(&with(serde_json::json!({"nonce": "n-0S6_WzA2Mj"}))), "ID token"),
        (
            "groups of the wrong type",
            key.sign(&with(serde_json::json!({"groups": {"a": 1}}))),
            "claim `groups` has the wrong type",
        ),
        (
            "a flowgate credential",
            {
                let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                h.kid = Some("key-1".into());
                h.typ = Some(flowgate::authn::MINTED_TOKEN_TYPE.into());
                key.sign_with_header(&h, &base)
            },
            "flowgate credential",
        ),
        ("not a JWT", "not-a-token".into(), "not a signed JWT"),
        ("an encrypted JWT", "a.b.c.d.e".into(), "not a signed JWT"),
    ];
    for (name, token, expected) in &cases {
        let reply = client.unary("StartWorkflowExecution", Some(token), &deploy()).await;
        assert_eq!(reply.code(), "16", "{name}: {reply:?}");
        let message = reply.message.unwrap_or_default();
        assert!(message.contains(expected), "{name}: expected `{expected}` in `{message}`");
    }
    let basic = client
        .call(&format!("{WS}/StartWorkflowExecution"), &[("authorization", "Basic dTpw")], frame(&deploy(), false))
        .await;
    assert_eq!(basic.code(), "16");
    // The same, valid token passes: the failures above were the tokens, not the setup.
    assert_eq!(client.unary("StartWorkflowExecution", Some(&valid), &deploy()).await.code(), "0");
    assert_eq!(upstream.calls().len(), 1);
    let records = gateway.records();
    assert_eq!(records.len(), cases.len() + 2);
    assert!(records[..cases.len() + 1].iter().all(|r| r["decision"] == "deny"
        && r["status"] == 16
        && r["reasons"][0].as_str().unwrap().starts_with("unauthenticated: ")));
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_the_last_good_keys_survive_an_idp_outage() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let mut client = Client::connect(gateway.addr).await;
    let old = key.sign(&claims("alice", &["deployers"]));
    assert_eq!(client.unary("StartWorkflowExecution", Some(&old), &deploy()).await.code(), "0");
    let fetches = jwks.fetch_count();

    // Rotation: the IdP publishes key-2 and signs with it.
    let rotated = SigningKey::es256("key-2");
    jwks.set_keys(&[&key, &rotated]);
    let new = rotated.sign(&claims("bob", &["deployers"]));
    assert_eq!(client.unary("StartWorkflowExecution", Some(&new), &deploy()).await.code(), "0");
    assert_eq!(jwks.fetch_count(), fetches + 1, "one refresh for the unknown kid");

    // Unknown kids do not hammer the IdP: a kid that a fetch made after it was asked for lacked
    // is refused without another fetch for `jwks_min_refresh` (1 s).
    let stranger = SigningKey::es256("key-x");
    for i in 0..5 {
        let token = stranger.sign(&claims(&format!("s{i}"), &["deployers"]));
        assert_eq!(client.unary("StartWorkflowExecution", Some(&token), &deploy()).await.code(), "16");
    }
    assert!(jwks.fetch_count() <= fetches + 2, "rate-limited: {} fetches", jwks.fetch_count() - fetches);

    // The IdP goes down: known keys keep working (fresh tokens, so no cache hit helps).
    jwks.down.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let during_outage = rotated.sign(&claims("carol", &["deployers"]));
    assert_eq!(client.unary("StartWorkflowExecution", Some(&during_outage), &deploy()).await.code(), "0");
    let unknown = stranger.sign(&claims("dave", &["deployers"]));
    let reply = client.unary("StartWorkflowExecution", Some(&unknown), &deploy()).await;
    assert_eq!(reply.code(), "16");
    let (_, metrics) = gateway.admin_get("/metrics").await;
    assert!(metrics.contains(r#"flowgate_jwks_fetches_total{issuer="test",result="failure"}"#), "{metrics}");
    assert!(metrics.contains(r#"flowgate_token_cache_total{result="miss"}"#), "{metrics}");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_verified_token_is_cached_until_it_expires() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let mut client = Client::connect(gateway.addr).await;
    let token = key.sign(&claims("alice", &["deployers"]));
    for _ in 0..5 {
        assert_eq!(client.unary("DescribeNamespace", Some(&token), &field(1, b"payments")).await.code(), "0");
    }
    let (_, metrics) = gateway.admin_get("/metrics").await;
    assert!(metrics.contains(r#"flowgate_token_cache_total{result="hit"} 4"#), "{metrics}");
    assert!(metrics.contains(r#"flowgate_token_cache_total{result="miss"} 1"#), "{metrics}");
    assert!(
        metrics.contains(
            r#"flowgate_calls_total{method="DescribeNamespace",decision="allow",grpc_status="0",namespace="other"} 5"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("flowgate_authorization_duration_seconds_bucket"), "{metrics}");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn bad_messages_get_clean_grpc_errors() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let mut client = Client::connect(gateway.addr).await;
    let auth = format!("Bearer {}", key.sign(&claims("alice", &["deployers"])));
    let path = format!("{WS}/StartWorkflowExecution");
    let gz = [("authorization", auth.as_str()), ("grpc-encoding", "gzip")];
    let plain = [("authorization", auth.as_str())];

    // A gzip request is inspected: the denied type inside is still denied, the allowed passes.
    let denied = start_request("payments", "x", "DropTables", "deploys");
    assert_eq!(client.call(&path, &gz, frame(&gzip(&denied), true)).await.code(), "7");
    assert_eq!(client.call(&path, &gz, frame(&gzip(&deploy()), true)).await.code(), "0");
    // A second gzip member cannot smuggle a namespace past inspection.
    let smuggled = [gzip(&deploy()), gzip(&field(1, b"analytics"))].concat();
    assert_eq!(client.call(&path, &gz, frame(&smuggled, true)).await.code(), "7");

    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<u8>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "gzip bomb",
            &gz,
            frame(&gzip(&vec![0u8; 10_000_000]), true),
            "8",
            "grpc: received message after decompression larger than max 65536",
        ),
        (
            "oversize message",
            &plain,
            frame(&vec![0u8; 70_000], false),
            "8",
            "grpc: received message larger than max (70000 vs. 65536)",
        ),
        ("corrupt protobuf", &plain, frame(&[0x0a, 0x20, 0x01], false), "3", "malformed request message"),
        ("truncated frame", &plain, frame(&deploy(), false)[..20].to_vec(), "3", "request ended after"),
        ("not gzip", &gz, frame(b"plainly not gzip", true), "3", "not valid gzip"),
        ("compressed, no encoding", &plain, frame(&gzip(&deploy()), true), "3", "no `grpc-encoding`"),
        ("empty body", &plain, vec![], "3", "request has no message"),
        ("bad utf-8", &plain, frame(&field(1, &[0xff, 0xfe]), false), "3", "not valid UTF-8"),
        ("no namespace", &plain, frame(&field(2, b"wf"), false), "7", "names no namespace"),
    ];
    for (name, headers, body, code, expected) in cases {
        let reply = client.call(&path, headers, body).await;
        assert_eq!(reply.code(), code, "{name}: {reply:?}");
        assert!(reply.message.as_deref().unwrap_or_default().contains(expected), "{name}: {reply:?}");
    }
    let deflate = [("authorization", auth.as_str()), ("grpc-encoding", "deflate")];
    assert_eq!(client.call(&path, &deflate, frame(b"x", true)).await.code(), "12");

    // A worker response with a task token but no namespace: the server would trust the token.
    let worker = format!("Bearer {}", key.sign(&claims("w", &["workers"])));
    let respond = format!("{WS}/RespondWorkflowTaskCompleted");
    let reply =
        client.call(&respond, &[("authorization", &worker)], frame(&field(1, b"opaque-task-token"), false)).await;
    assert_eq!(reply.code(), "7");
    assert!(reply.message.unwrap().contains("task token"));
    // With its namespace, a token flowgate did not seal is refused all the same: task tokens
    // are unsigned, and anyone can build one.
    let with_namespace = [field(1, b"opaque-task-token"), field(9, b"payments")].concat();
    let reply = client.call(&respond, &[("authorization", &worker)], frame(&with_namespace, false)).await;
    assert_eq!(reply.code(), "7");
    assert!(reply.message.unwrap().contains("task token was not issued by flowgate"));

    assert_eq!(upstream.calls().len(), 1, "only the valid call went upstream");
    // The gateway is still healthy after all that.
    assert_eq!(
        client.unary("StartWorkflowExecution", Some(auth.trim_start_matches("Bearer ")), &deploy()).await.code(),
        "0"
    );
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn an_unwritable_decision_log_refuses_calls() {
    let (key, jwks, upstream) = setup().await;
    let mut setup = Setup::new(&upstream);
    setup.audit_path = Some("/dev/full".into());
    let gateway = Gateway::start(&jwks, setup).await;
    let mut client = Client::connect(gateway.addr).await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let reply = client.unary("StartWorkflowExecution", Some(&token), &deploy()).await;
    assert_eq!(reply.code(), "14", "{reply:?}");
    assert!(reply.message.unwrap().contains("decision log write failed"));
    assert!(upstream.calls().is_empty(), "fail closed: nothing forwarded without a record");
    let (_, metrics) = gateway.admin_get("/metrics").await;
    assert!(metrics.contains("flowgate_decision_log_write_failures_total 1"), "{metrics}");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_down_upstream_is_unavailable_and_not_ready() {
    let (key, jwks, upstream) = setup().await;
    let mut setup = Setup::new(&upstream);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    setup.upstream = format!("http://{closed}");
    let gateway = Gateway::start(&jwks, setup).await;
    let mut client = Client::connect(gateway.addr).await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let reply = client.unary("StartWorkflowExecution", Some(&token), &deploy()).await;
    assert_eq!(reply.code(), "14", "{reply:?}");
    assert!(reply.message.unwrap().contains("upstream unavailable"));
    let (status, body) = gateway.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(gateway.admin_get("/healthz").await.0, 200);
    gateway.stop().await.unwrap();
}

/// An upstream on `listener` that answers one call per connection, then closes the connection:
/// `graceful` with a GOAWAY once the answer is out, otherwise by dropping the TCP stream.
fn one_call_per_connection(listener: tokio::net::TcpListener, graceful: bool) -> tokio::task::JoinHandle<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let answered = std::sync::Arc::new(tokio::sync::Notify::new());
                let notify = answered.clone();
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let notify = notify.clone();
                    async move {
                        let _ = http_body_util::BodyExt::collect(request.into_body()).await;
                        notify.notify_one();
                        let response = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "0")
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => return,
                    () = answered.notified() => {}
                }
                if graceful {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                } else {
                    // Let the answer go out, then drop the connection without a GOAWAY.
                    let _ = tokio::time::timeout(Duration::from_millis(20), connection.as_mut()).await;
                }
            });
        }
    })
}

#[tokio::test]
async fn the_upstream_connection_is_made_again_when_it_closes_or_the_upstream_restarts() {
    let (key, jwks, upstream) = setup().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener); // bound again (and dropped) by each phase below
    let mut setup = Setup::new(&upstream);
    setup.upstream = format!("http://{addr}");
    let gateway = Gateway::start(&jwks, setup).await;
    let mut client = Client::connect(gateway.addr).await;
    let token = key.sign(&claims("alice", &["deployers"]));

    // Every connection is closed after one call, with a GOAWAY or without: every call still
    // succeeds. After a GOAWAY the next call follows at once (the connection is seen closing,
    // or the call comes back unsent from it and is sent again). A connection dropped without one is
    // found closed before the next call (which follows a moment later: a call written to a
    // connection as it dies may have reached the upstream, and is not sent twice).
    for graceful in [true, false] {
        let server = one_call_per_connection(listener_on(addr).await, graceful);
        for i in 0..20 {
            let reply = client.unary("StartWorkflowExecution", Some(&token), &deploy()).await;
            assert_eq!(reply.code(), "0", "graceful {graceful}, call {i}: {reply:?}");
            if !graceful {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        server.abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The upstream is down: UNAVAILABLE, at once, naming it.
    let started = std::time::Instant::now();
    let reply = client.unary("StartWorkflowExecution", Some(&token), &deploy()).await;
    assert_eq!(reply.code(), "14", "{reply:?}");
    assert!(reply.message.as_deref().unwrap_or_default().contains(&addr.to_string()), "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "refused connections fail fast");

    // It comes back on the same address: the next call gets through.
    let _server = one_call_per_connection(listener_on(addr).await, true);
    let reply = client.unary("StartWorkflowExecution", Some(&token), &deploy()).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    gateway.stop().await.unwrap();
}

/// A listener on `addr` again (the port was just released).
async fn listener_on(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot bind {addr} again");
}

#[tokio::test]
async fn long_calls_are_not_cut_and_shutdown_drains_them() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    assert_eq!(gateway.admin_get("/readyz").await.0, 200);
    let token = key.sign(&claims("w", &["workers"]));
    let poll = [field(1, b"payments"), field(2, &field(1, b"deploys"))].concat();
    let auth = format!("Bearer {token}");
    let addr = gateway.addr;
    // The upstream holds polls for 2 s; the call's own deadline is 70 s.
    let in_flight = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        let path = format!("{WS}/PollActivityTaskQueue");
        client.call(&path, &[("authorization", auth.as_str()), ("grpc-timeout", "70S")], frame(&poll, false)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = tokio::spawn(gateway.stop());
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.code(), "0", "the in-flight poll finished during shutdown: {reply:?}");
    stopped.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_invalid_policy_stops_start_up_with_file_and_line() {
    let (_key, jwks, upstream) = setup().await;
    let mut setup = Setup::new(&upstream);
    setup.policy = "@id(\"ok\")\npermit (principal, action, resource);\n\n@id(\"typo\")\npermit (principal, action == Temporal::Action::\"StartWorkflow\", resource);\n".into();
    let gateway = Gateway::start(&jwks, setup).await;
    let error = gateway.task.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("test.cedar:5:30"), "the exact line and column: {error}");
    assert!(error.contains("StartWorkflow"), "{error}");
}

#[tokio::test]
async fn hundreds_of_long_polls_share_one_connection_and_every_call_is_recorded() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let token = key.sign(&claims("w", &["workers"]));
    let auth = format!("Bearer {token}");
    let poll = [field(1, b"payments"), field(2, &field(1, b"deploys"))].concat();
    // One HTTP/2 connection, more concurrent streams than hyper's default limit of 200; the
    // upstream holds each poll for 2 s, so they are all open at once.
    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, http_body_util::Full<bytes::Bytes>>(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let started = std::time::Instant::now();
    let polls: Vec<_> = (0..500)
        .map(|_| {
            let mut sender = sender.clone();
            let auth = auth.clone();
            let body = frame(&poll, false);
            tokio::spawn(async move {
                let request = http::Request::post(format!("http://flowgate{WS}/PollActivityTaskQueue"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .header("grpc-timeout", "70S")
                    .header("authorization", auth)
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .unwrap();
                sender.ready().await.unwrap();
                let response = sender.send_request(request).await.unwrap();
                let collected = http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
                collected.trailers().and_then(|t| t.get("grpc-status")).map(|s| s.to_str().unwrap().to_owned())
            })
        })
        .collect();
    for poll in polls {
        assert_eq!(poll.await.unwrap().as_deref(), Some("0"));
    }
    // One round of 2 s polls, not three rounds of 200 streams (hyper's default limit).
    assert!(started.elapsed() < Duration::from_millis(4500), "the polls ran concurrently: {:?}", started.elapsed());
    assert_eq!(upstream.calls().len(), 500);
    let records = gateway.records();
    assert_eq!(records.len(), 500, "one record per decision, none dropped");
    assert!(records.iter().all(|r| r["decision"] == "allow" && r["resource"]["task_queue"] == "deploys"));
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn the_gateway_publishes_the_issuers_people_log_in_to() {
    let (_key, jwks, upstream) = setup().await;
    let mut setup = Setup::new(&upstream);
    setup.issuer_extra = "login = { client_id = \"flowgate-cli\" }".into();
    let gateway = Gateway::start(&jwks, setup).await;
    let (status, document) = gateway.http("GET", "/.well-known/flowgate-login", "text/plain", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        document,
        serde_json::json!({"issuers": [{
            "name": "test", "issuer": ISSUER, "client_id": "flowgate-cli",
            "scopes": ["openid", "profile", "email", "offline_access"],
        }]})
    );
    // Nothing went upstream, and nothing was recorded: it is not a call.
    assert!(upstream.calls().is_empty());
    assert!(gateway.records().is_empty());

    // A gateway without a `login` table publishes none.
    let plain = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let (status, document) = plain.http("GET", "/.well-known/flowgate-login", "text/plain", "").await;
    assert_eq!((status, document), (200, serde_json::json!({"issuers": []})));
}

/// `upstream.credentials = "api_key"`: every request upstream (forwarded calls, public ones,
/// health checks) carries flowgate's key, never the caller's token; `temporal-namespace` names
/// the namespace the call was authorized in; a rotated key file is taken without a restart and a
/// broken one leaves the last good key in use.
#[tokio::test]
async fn an_api_key_goes_upstream_on_every_request_and_is_rotated_from_its_file() {
    let (key, jwks, upstream) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, "first-key\n").unwrap();
    let mut setup = Setup::new(&upstream);
    setup.upstream_extra = format!(
        "credentials = \"api_key\"\napi_key_file = \"{}\"\napi_key_watch_interval = \"50ms\"",
        key_file.display()
    );
    let gateway = Gateway::start(&jwks, setup).await;
    let mut client = Client::connect(gateway.addr).await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("temporal-namespace", "analytics")];

    let reply = client.call(&format!("{WS}/StartWorkflowExecution"), &headers, frame(&deploy(), false)).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    assert_eq!(client.unary("GetSystemInfo", None, b"").await.code(), "0");
    assert_eq!(gateway.admin_get("/readyz").await.0, 200);
    let calls = upstream.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    for call in &calls {
        assert_eq!(call.headers["authorization"], "Bearer first-key", "{}", call.path);
    }
    assert_eq!(calls[0].headers["temporal-namespace"], "payments", "the authorized namespace, not the client's");
    assert!(calls.iter().any(|call| call.path == "/grpc.health.v1.Health/Check"));

    // A new key in the file is used from the next call on.
    std::fs::write(&key_file, "second-key").unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(client.unary("StartWorkflowExecution", Some(&token), &deploy()).await.code(), "0");
        if upstream.calls().last().unwrap().headers["authorization"] == "Bearer second-key" {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "the rotated key was never used");
    assert_eq!(gateway.metric("flowgate_upstream_key_reload_total{result=\"success\"}").await, 1.0);

    // An emptied file (a secret being rewritten, a mistake) is refused: the last good key stays.
    std::fs::write(&key_file, "").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.unary("StartWorkflowExecution", Some(&token), &deploy()).await.code(), "0");
    assert_eq!(upstream.calls().last().unwrap().headers["authorization"], "Bearer second-key");
    assert_eq!(
        gateway.metric("flowgate_upstream_key_reload_total{result=\"failure\"}").await,
        1.0,
        "one failure counted, however many times the same broken file is read"
    );
    // Refused calls never reach the upstream, with or without the key.
    let before = upstream.calls().len();
    let wrong = start_request("payments", "deploy-2", "DropTablesWorkflow", "deploys");
    assert_eq!(client.unary("StartWorkflowExecution", Some(&token), &wrong).await.code(), "7");
    assert_eq!(upstream.calls().len(), before);
}

/// The key's source is checked at start: a missing file stops the gateway with the file's name.
#[tokio::test]
async fn a_missing_api_key_file_fails_the_start() {
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"cloud.example:7233\"\ncredentials = \"api_key\"\n\
         api_key_file = \"/nonexistent/flowgate-key\"\n[policy]\ndir = \"{}\"\n[audit]\npath = \"-\"\n",
        env!("CARGO_MANIFEST_DIR").to_owned() + "/policies"
    );
    let config = flowgate::Config::parse(&text).unwrap();
    assert_eq!(config.upstream.address, "https://cloud.example:7233", "an API key turns TLS on");
    let error = flowgate::server::prepare(&config).err().expect("no key, no gateway").to_string();
    assert!(error.contains("upstream API key from `/nonexistent/flowgate-key`: cannot read it"), "{error}");
}

/// A call with two `authorization` headers is refused, whichever of them is valid: a reader
/// that takes the other one would see another principal than the one recorded.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let mut client = Client::connect(gateway.addr).await;
    let alice = format!("Bearer {}", key.sign(&claims("alice", &["deployers"])));
    let bob = format!("Bearer {}", key.sign(&claims("bob", &["deployers"])));
    let headers = [("authorization", alice.as_str()), ("authorization", bob.as_str())];
    let reply = client.call(&format!("{WS}/StartWorkflowExecution"), &headers, frame(&deploy(), false)).await;
    assert_eq!(reply.code(), "16", "{reply:?}");
    assert!(reply.message.as_deref().unwrap().contains("more than one `authorization` header"), "{reply:?}");
    assert!(upstream.calls().is_empty());
    let record = &gateway.records()[0];
    assert_eq!(record["decision"], "deny");
    assert!(record["principal"].is_null(), "{record}");
}

/// What carries a client's credentials under other names (`authorization-extras`, the Web UI
/// server's `grpcgateway-authorization` and `grpcgateway-cookie`, `cookie`) stays in flowgate,
/// as `authorization` does, unless flowgate forwards the client's credentials.
#[tokio::test]
async fn credentials_under_other_names_are_not_forwarded() {
    let (key, jwks, upstream) = setup().await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("authorization-extras", "id-token-of-alice"),
        ("grpcgateway-authorization", auth.as_str()),
        ("grpcgateway-cookie", "refresh=secret"),
        ("cookie", "session=secret"),
        ("grpcgateway-user-agent", "Mozilla/5.0"),
    ];
    for (extra, forwarded) in [("", false), ("credentials = \"forward\"", true)] {
        let mut setup = Setup::new(&upstream);
        setup.upstream_extra = extra.to_owned();
        let gateway = Gateway::start(&jwks, setup).await;
        let mut client = Client::connect(gateway.addr).await;
        let reply = client.call(&format!("{WS}/StartWorkflowExecution"), &headers, frame(&deploy(), false)).await;
        assert_eq!(reply.code(), "0", "{reply:?}");
        let seen = upstream.calls().pop().unwrap().headers;
        for name in
            ["authorization", "authorization-extras", "grpcgateway-authorization", "grpcgateway-cookie", "cookie"]
        {
            assert_eq!(seen.contains_key(name), forwarded, "{name} with `{extra}`");
        }
        assert_eq!(seen["grpcgateway-user-agent"], "Mozilla/5.0", "other metadata goes on");
        gateway.stop().await.unwrap();
    }
}

/// `[http_api]`: an HTTP API request becomes the gRPC call it stands for, with only the
/// allowlisted metadata, and the answer comes back as JSON; a caller with no permission gets
/// the gateway's refusal (and its record) as JSON, and nothing goes upstream.
#[tokio::test]
async fn an_http_api_request_is_the_grpc_call_it_stands_for() {
    let (key, jwks, upstream) = setup().await;
    let mut setup = Setup::new(&upstream);
    setup.tables = "[http_api]\n".into();
    let gateway = Gateway::start(&jwks, setup).await;
    let alice = format!("Bearer {}", key.sign(&claims("alice", &["deployers"])));
    let body = r#"{"workflowType":{"name":"DeployWorkflow"},"taskQueue":{"name":"deploys"},"identity":"forged"}"#;
    let headers = [
        ("authorization", alice.as_str()),
        ("content-type", "application/json"),
        ("cookie", "session=secret"),
        ("grpc-metadata-temporal-namespace", "analytics"),
        ("x-forwarded-for", "10.9.8.7"),
        ("client-name", "curl"),
    ];
    let (status, answer) =
        gateway.http_with("POST", "/api/v1/namespaces/payments/workflows/deploy-1", &headers, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, serde_json::json!({"runId": "ok"}), "the fake upstream's answer, as JSON");
    let calls = upstream.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, format!("{WS}/StartWorkflowExecution"));
    let mut names: Vec<_> = calls[0].headers.keys().map(|name| name.as_str().to_owned()).collect();
    names.sort();
    assert_eq!(
        names,
        ["client-name", "content-length", "content-type", "grpc-timeout", "te", "temporal-namespace"],
        "the allowlist"
    );
    assert_eq!(calls[0].headers["temporal-namespace"], "payments");
    let message = &calls[0].body[5..];
    use flowgate::temporal::wire::last_string;
    assert_eq!(last_string(message, &[1]).unwrap(), Some("payments"), "the path's namespace");
    assert_eq!(last_string(message, &[2]).unwrap(), Some("deploy-1"), "the path's workflow id");
    assert_eq!(last_string(message, &[9]).unwrap(), Some("test:alice via flowgate"), "stamped, not `forged`");
    let record = &gateway.records()[0];
    assert_eq!(record["decision"], "allow");
    assert_eq!(
        record["http"],
        serde_json::json!({"method": "POST", "route": "/api/v1/namespaces/{namespace}/workflows/{workflow_id}"})
    );

    // A caller no policy could permit the action: refused as JSON, recorded, not sent upstream.
    let bob = format!("Bearer {}", key.sign(&claims("bob", &["nobody"])));
    let headers = [("authorization", bob.as_str()), ("content-type", "application/json")];
    let (status, answer) =
        gateway.http_with("POST", "/api/v1/namespaces/payments/workflows/deploy-2", &headers, body).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["code"], 7);
    assert_eq!(upstream.calls().len(), 1);
    let record = gateway.records().pop().unwrap();
    assert_eq!((record["decision"].as_str(), record["principal"]["id"].as_str()), (Some("deny"), Some("test:bob")));
}

/// The HTTP door holds what it reads from its own budget (`http_api.max_buffered_bytes`): bodies
/// that arrive slowly fill it, the next request is refused with 429 and `Retry-After` before
/// anything is parsed, and the budget comes back when they end. A route without a body never
/// reads one.
#[tokio::test]
async fn the_http_door_reads_within_its_budget() {
    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use hyper_util::rt::TokioIo;
    let (key, jwks, upstream) = setup().await;
    let mut setup = Setup::new(&upstream);
    // The least budget these limits allow: one largest request (2000 × 4 bytes, 1001 values ×
    // 1280 bytes) or answer alone.
    setup.tables =
        "[http_api]\nmax_body_bytes = 2000\nmax_response_bytes = 2000\nmax_buffered_bytes = 1290000\n".into();
    let gateway = Gateway::start(&jwks, setup).await;
    let alice = format!("Bearer {}", key.sign(&claims("alice", &["deployers"])));

    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = |path: &str, body| {
        http::Request::post(path)
            .header("authorization", alice.as_str())
            .header("content-type", "application/json")
            .body(body)
            .unwrap()
    };
    // Slow bodies, 1900 bytes of each sent and the rest never: the door holds them, ~675 fit.
    let mut calls = Vec::new();
    for i in 0..800 {
        let (mut more, body) = http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
        more.send_data(Bytes::from(vec![b' '; 1900])).await.unwrap();
        let mut sender = sender.clone();
        let call = request(&format!("/api/v1/namespaces/payments/workflows/slow-{i}"), body);
        calls.push((more, tokio::spawn(async move { sender.send_request(call).await.unwrap() })));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (answered, slow): (Vec<_>, Vec<_>) = calls.into_iter().partition(|(_, answer)| answer.is_finished());
    assert!((600..=700).contains(&slow.len()), "{} slow bodies held, not ~675", slow.len());
    let (_, metrics) = gateway.admin_get("/metrics").await;
    let counted = format!("flowgate_http_api_refusals_total{{status=\"429\"}} {}", answered.len());
    assert!(metrics.contains(&counted), "{counted} in\n{metrics}");
    for (_, refused) in answered {
        let refused = refused.await.unwrap();
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()["retry-after"], "1");
        let answer = refused.into_body().collect().await.unwrap().to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["code"], 8, "{answer}");
        assert!(answer["message"].as_str().unwrap().contains("http_api.max_buffered_bytes"), "{answer}");
    }
    assert!(upstream.calls().is_empty(), "nothing went upstream");

    // A route without a body is not held up: its body is never read.
    let (stalled, body) = http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let mut system_info = sender.clone();
    let get = http::Request::get("/api/v1/system-info").body(body).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), system_info.send_request(get)).await;
    answered.expect("answered without its body").unwrap();
    assert!(upstream.calls().iter().any(|call| call.path.ends_with("/GetSystemInfo")), "sent on without its body");
    drop(stalled);

    // The slow bodies end (whitespace only: refused); their bytes come back.
    for (more, answer) in slow {
        drop(more);
        let status = answer.await.unwrap().status();
        // An empty body is an empty message, whose start names no workflow type (403), or no
        // room to parse it while the others still hold theirs (429).
        assert!(status == 403 || status == 429, "{status}");
    }
    let (status, answer) = gateway
        .http_with(
            "POST",
            "/api/v1/namespaces/payments/workflows/deploy-1",
            &[("authorization", alice.as_str()), ("content-type", "application/json")],
            r#"{"workflowType":{"name":"DeployWorkflow"},"taskQueue":{"name":"deploys"}}"#,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}
