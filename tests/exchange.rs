//! The token endpoint and the credentials it mints, against a fake upstream (fast, every case);
//! `tests/e2e/test_exchange.py` runs the same flow against real Temporal servers.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const POLICY_EXCHANGE: &str = r#"
@id("exchange-workers")
permit (
  principal in Temporal::Group::"test:workers",
  action == Temporal::Action::"IssueCredential",
  resource == Temporal::Namespace::"payments"
)
when { context.role == "worker" && context.task_queues == ["q"] };

@id("exchange-readers")
permit (
  principal in Temporal::Group::"test:readers",
  action == Temporal::Action::"IssueCredential",
  resource == Temporal::Namespace::"payments"
)
when { context.role == "read" };

@id("readers-read")
permit (principal in Temporal::Group::"test:readers", action in Temporal::Action::"read", resource);

@id("workers-within-grant")
permit (
  principal is Temporal::Worker,
  action in [Temporal::Action::"read", Temporal::Action::"write", Temporal::Action::"worker", Temporal::Action::"IssueCredential"],
  resource
);
"#;

const ISSUER_URL: &str = "http://flowgate.test";
const FORM: &str = "application/x-www-form-urlencoded";

fn mint_table(key_dir: &std::path::Path, lifetime: &str, redis: Option<&str>) -> String {
    let mut text = format!(
        "[mint]\nissuer = \"{ISSUER_URL}\"\nkey_dir = \"{}\"\ncredential_lifetime = \"{lifetime}\"\n",
        key_dir.display()
    );
    if let Some(url) = redis {
        text.push_str(&format!("[replay]\nredis_url = \"{url}\"\n"));
    }
    text
}

async fn start(upstream: &Upstream, jwks: &Jwks, key_dir: &std::path::Path, extra: &str) -> Gateway {
    let mut setup = Setup::new(upstream);
    setup.policy = POLICY_EXCHANGE.to_owned();
    setup.tables = mint_table(key_dir, "10m", None);
    setup.upstream_extra = extra.to_owned();
    Gateway::start(jwks, setup).await
}

fn form(subject_token: &str, scope: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")
        .append_pair("subject_token", subject_token)
        .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
        .append_pair("scope", scope)
        .finish()
}

async fn exchange(gateway: &Gateway, subject_token: &str, scope: &str) -> (u16, Value) {
    gateway.http("POST", "/oauth2/token", FORM, &form(subject_token, scope)).await
}

fn poll_request(namespace: &str, queue: &str) -> Vec<u8> {
    [field(1, namespace.as_bytes()), field(2, &field(1, queue.as_bytes()))].concat()
}

fn token_for(key: &SigningKey, sub: &str, groups: &[&str], jti: &str) -> String {
    let mut claims = claims(sub, groups);
    claims["jti"] = json!(jti);
    key.sign(&claims)
}

/// Decodes a minted credential with the gateway's published JWKS (the way Temporal would).
async fn verify_with_jwks(gateway: &Gateway, token: &str) -> (jsonwebtoken::Header, Value) {
    let (status, jwks) = gateway.http("GET", "/.well-known/jwks.json", "text/plain", "").await;
    assert_eq!(status, 200);
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header.kid.clone().unwrap().as_str())
        .expect("the signing key is published");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["temporal"]);
    validation.set_issuer(&[ISSUER_URL]);
    let data =
        jsonwebtoken::decode::<Value>(token, &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &validation).unwrap();
    (data.header, data.claims)
}

#[tokio::test]
async fn discovery_and_jwks_describe_the_issuer() {
    let key = SigningKey::es256("k1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let gateway = start(&upstream, &jwks, keys.path(), "").await;
    let (status, discovery) = gateway.http("GET", "/.well-known/openid-configuration", "text/plain", "").await;
    assert_eq!(status, 200);
    assert_eq!(discovery["issuer"], ISSUER_URL);
    assert_eq!(discovery["token_endpoint"], format!("{ISSUER_URL}/oauth2/token"));
    assert_eq!(discovery["jwks_uri"], format!("{ISSUER_URL}/.well-known/jwks.json"));
    let (_, jwks_doc) = gateway.http("GET", "/.well-known/jwks.json", "text/plain", "").await;
    let published = jwks_doc["keys"].as_array().unwrap();
    assert_eq!(published.len(), 1, "the key generated on first start");
    assert_eq!(published[0]["alg"], "ES256");
    assert!(published[0].get("d").is_none(), "never the private part");
    let (status, body) = gateway.http("GET", "/oauth2/token", "text/plain", "").await;
    assert_eq!(status, 405);
    assert_eq!(body["error"], "invalid_request");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_ci_token_becomes_a_scoped_worker_credential_that_flowgate_enforces() {
    let key = SigningKey::es256("k1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let gateway = start(&upstream, &jwks, keys.path(), "").await;
    let ci_token = token_for(&key, "pipeline-7", &["workers"], "jti-1");

    let (status, body) = exchange(&gateway, &ci_token, "namespace:payments role:worker task_queue:q").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:jwt");
    assert_eq!(body["scope"], "namespace:payments role:worker task_queue:q");
    assert!(body["expires_in"].as_u64().unwrap() <= 600);
    let credential = body["access_token"].as_str().unwrap().to_owned();

    let (header, claims) = verify_with_jwks(&gateway, &credential).await;
    assert_eq!(header.typ.as_deref(), Some("flowgate-credential+jwt"));
    assert_eq!(claims["sub"], "test:pipeline-7");
    assert_eq!(claims["act"]["sub"], "pipeline-7");
    assert_eq!(claims["act"]["iss"], ISSUER);
    assert_eq!(claims["permissions"], json!(["payments:write"]), "Temporal's format; workers need write there");
    assert_eq!(claims["task_queues"], json!(["q"]));
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 600);

    // Used as a bearer token, it is a Temporal::Worker limited to its grant.
    let mut client = Client::connect(gateway.addr).await;
    let ok = client.unary("PollActivityTaskQueue", Some(&credential), &poll_request("payments", "q")).await;
    assert_eq!(ok.code(), "0", "{:?}", ok.message);
    let other_queue = client.unary("PollActivityTaskQueue", Some(&credential), &poll_request("payments", "x")).await;
    assert_eq!(other_queue.code(), "7");
    assert!(other_queue.message.as_deref().unwrap().contains("task queue `x` is outside"), "{other_queue:?}");
    let other_ns = client.unary("PollActivityTaskQueue", Some(&credential), &poll_request("billing", "q")).await;
    assert_eq!(other_ns.code(), "7");
    let unnamed = client.unary("PollActivityTaskQueue", Some(&credential), &field(1, b"payments")).await;
    assert_eq!(unnamed.code(), "7", "a queue-limited credential needs the queue named");
    let start =
        client.unary("StartWorkflowExecution", Some(&credential), &start_request("payments", "w", "T", "q")).await;
    assert_eq!(start.code(), "7");
    assert!(start.message.as_deref().unwrap().contains("role `worker`"), "{start:?}");

    // The record of the exchange.
    let records = gateway.records();
    let exchange_record = records.iter().find(|r| r["kind"] == "token_exchange").expect("recorded");
    assert_eq!(exchange_record["decision"], "allow");
    assert_eq!(exchange_record["action"], "IssueCredential");
    assert_eq!(exchange_record["reasons"], json!(["exchange-workers"]));
    assert_eq!(exchange_record["principal"]["id"], "test:pipeline-7");
    assert_eq!(exchange_record["resource"]["namespace"], "payments");
    assert_eq!(exchange_record["scope"], "namespace:payments role:worker task_queue:q");
    let worker_call = records.iter().find(|r| r["kind"] == "grpc" && r["decision"] == "allow").unwrap();
    assert_eq!(worker_call["principal"]["type"], "Worker");
    assert_eq!(worker_call["principal"]["id"], "flowgate:test:pipeline-7");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn subject_tokens_are_single_use_and_credentials_refresh_within_their_grant() {
    let key = SigningKey::es256("k1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let gateway = start(&upstream, &jwks, keys.path(), "").await;
    let scope = "namespace:payments role:worker task_queue:q";
    let ci_token = token_for(&key, "pipeline-7", &["workers"], "jti-replay");

    let (status, first) = exchange(&gateway, &ci_token, scope).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = exchange(&gateway, &ci_token, scope).await;
    assert_eq!(status, 400);
    assert_eq!(again["error"], "invalid_grant");
    assert!(again["error_description"].as_str().unwrap().contains("already exchanged"), "{again}");

    // A token without `jti` is single-use too (known by its hash).
    let mut no_jti = claims("pipeline-8", &["workers"]);
    no_jti.as_object_mut().unwrap().remove("jti");
    let no_jti = key.sign(&no_jti);
    assert_eq!(exchange(&gateway, &no_jti, scope).await.0, 200);
    assert_eq!(exchange(&gateway, &no_jti, scope).await.1["error"], "invalid_grant");

    // Refresh: the credential is exchanged for the next one, same identity and chain.
    let credential = first["access_token"].as_str().unwrap();
    let (status, refreshed) = exchange(&gateway, credential, scope).await;
    assert_eq!(status, 200, "{refreshed}");
    let next = refreshed["access_token"].as_str().unwrap();
    let (_, old_claims) = verify_with_jwks(&gateway, credential).await;
    let (_, new_claims) = verify_with_jwks(&gateway, next).await;
    assert_eq!(new_claims["sub"], old_claims["sub"]);
    assert_eq!(new_claims["act"], old_claims["act"]);
    assert_eq!(new_claims["session_exp"], old_claims["session_exp"]);
    assert_ne!(new_claims["jti"], old_claims["jti"]);
    // ... once: the used credential cannot be exchanged again.
    assert_eq!(exchange(&gateway, credential, scope).await.1["error"], "invalid_grant");
    // Narrower is fine, wider is not.
    let (status, wider) = exchange(&gateway, next, "namespace:payments role:worker").await;
    assert_eq!(status, 400);
    assert_eq!(wider["error"], "invalid_scope");
    assert!(wider["error_description"].as_str().unwrap().contains("wider"), "{wider}");
    let (status, narrower) = exchange(&gateway, next, "namespace:payments role:read task_queue:q").await;
    assert_eq!(status, 200, "{narrower}");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn every_bad_exchange_gets_an_oauth_error_and_a_record() {
    let key = SigningKey::es256("k1");
    let forged_key = SigningKey::es256("k1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let gateway = start(&upstream, &jwks, keys.path(), "").await;
    let scope = "namespace:payments role:worker task_queue:q";
    let worker = || token_for(&key, "pipeline-7", &["workers"], &uuid_like());

    let cases: Vec<(String, &str, &str)> = vec![
        (form(&worker(), scope).replace("token-exchange", "client_credentials"), "unsupported_grant_type", ""),
        (form(&worker(), "role:worker"), "invalid_scope", "namespace"),
        (form(&worker(), "namespace:payments role:owner"), "invalid_scope", "unknown role `owner`"),
        (form(&worker(), &format!("{scope} openid")), "invalid_scope", "unknown scope item `openid`"),
        (form("not-a-jwt", scope), "invalid_grant", "unauthenticated: token is not a signed JWT"),
        (form(&forged_key.sign(&claims("pipeline-7", &["workers"])), scope), "invalid_grant", "signature"),
        (form(&token_for(&key, "someone", &["readers"], "j"), scope), "unauthorized_client", "no policy permits it"),
        (form(&worker(), "namespace:payments role:worker task_queue:other"), "unauthorized_client", "IssueCredential"),
        (
            form(&worker(), scope).replace("subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt", ""),
            "invalid_request",
            "subject_token_type",
        ),
        (format!("{}&scope=x", form(&worker(), scope)), "invalid_request", "more than once"),
    ];
    for (body, error, description) in &cases {
        let (status, reply) = gateway.http("POST", "/oauth2/token", FORM, body).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"], *error, "{body}: {reply}");
        assert!(reply["error_description"].as_str().unwrap().contains(description), "{body}: {reply}");
    }
    let (status, reply) = gateway.http("POST", "/oauth2/token", "application/json", "{}").await;
    assert_eq!((status, reply["error"].as_str()), (400, Some("invalid_request")));

    let denials: Vec<Value> =
        gateway.records().into_iter().filter(|r| r["kind"] == "token_exchange" && r["decision"] == "deny").collect();
    assert_eq!(denials.len(), cases.len() + 1, "every refusal is recorded");
    assert!(denials.iter().all(|r| r["status"] == 400));
    let (_, metrics) = gateway.admin_get("/metrics").await;
    assert!(metrics.contains(r#"flowgate_token_exchanges_total{result="invalid_grant"} 2"#), "{metrics}");
    gateway.stop().await.unwrap();
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("jti-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

#[tokio::test]
async fn minted_upstream_credentials_carry_exactly_the_calls_permission() {
    let key = SigningKey::es256("k1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let gateway = start(&upstream, &jwks, keys.path(), r#"credentials = "minted""#).await;
    let reader = token_for(&key, "ana", &["readers"], "j-ana");
    let mut client = Client::connect(gateway.addr).await;
    for _ in 0..2 {
        let reply = client.unary("DescribeNamespace", Some(&reader), &field(1, b"payments")).await;
        assert_eq!(reply.code(), "0", "{:?}", reply.message);
    }
    let seen = upstream.calls();
    assert_eq!(seen.len(), 2);
    let sent: Vec<String> = seen
        .iter()
        .map(|call| call.headers["authorization"].to_str().unwrap().strip_prefix("Bearer ").unwrap().to_owned())
        .collect();
    assert_ne!(sent[0], reader, "never the client's own token");
    assert_eq!(sent[0], sent[1], "reused, not re-signed per call");
    let (_, claims) = verify_with_jwks(&gateway, &sent[0]).await;
    assert_eq!(claims["permissions"], json!(["payments:read"]));
    assert_eq!(claims["sub"], "test:ana");
    assert_eq!(claims["token_use"], "upstream");

    // An upstream credential is not a worker credential: flowgate refuses it back.
    let reply = client.unary("DescribeNamespace", Some(&sent[0]), &field(1, b"payments")).await;
    assert_eq!(reply.code(), "16");
    assert!(reply.message.as_deref().unwrap().contains("token_use"), "{reply:?}");
    gateway.stop().await.unwrap();
}

/// A `redis-server` on a free port, stopped on drop (installed by `scripts/setup.sh`).
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/install-redis.sh)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, url: format!("redis://127.0.0.1:{port}/") }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn two_gateways_sharing_redis_accept_a_subject_token_once_and_fail_closed_without_it() {
    let key = SigningKey::es256("k1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let mut redis = Redis::start();
    let replica = |url: String| {
        let mut setup = Setup::new(&upstream);
        setup.policy = POLICY_EXCHANGE.to_owned();
        setup.tables = mint_table(keys.path(), "10m", Some(&url));
        setup
    };
    let a = Gateway::start(&jwks, replica(redis.url.clone())).await;
    let b = Gateway::start(&jwks, replica(redis.url.clone())).await;
    let scope = "namespace:payments role:worker task_queue:q";
    let ci_token = token_for(&key, "pipeline-7", &["workers"], "shared-jti");

    assert_eq!(exchange(&a, &ci_token, scope).await.0, 200);
    let (status, replayed) = exchange(&b, &ci_token, scope).await;
    assert_eq!(status, 400);
    assert_eq!(replayed["error"], "invalid_grant", "the other replica knows the token was used");

    // Redis gone: exchanges are refused, not let through unchecked.
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let fresh = token_for(&key, "pipeline-7", &["workers"], "fresh-jti");
    let (status, down) = exchange(&a, &fresh, scope).await;
    assert_eq!(status, 503, "{down}");
    assert_eq!(down["error"], "temporarily_unavailable");
    assert!(down["error_description"].as_str().unwrap().contains("replay cache unavailable"), "{down}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_key_is_published_at_the_next_reload_but_signs_only_after_the_publication_window() {
    let key = SigningKey::es256("k1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&upstream);
    setup.policy = POLICY_EXCHANGE.to_owned();
    setup.tables =
        format!("{}key_reload = \"200ms\"\nkey_publish_ahead = \"15m\"\n", mint_table(keys.path(), "10m", None));
    let gateway = Gateway::start(&jwks, setup).await;
    let published = |doc: &Value| -> Vec<String> {
        doc["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
    };
    let (_, before) = gateway.http("GET", "/.well-known/jwks.json", "text/plain", "").await;
    let first = published(&before);
    assert_eq!(first.len(), 1);

    // What `flowgate keys generate DIR` does.
    let (_, new_kid) = flowgate::mint::keys::generate(keys.path(), std::time::SystemTime::now()).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, after) = gateway.http("GET", "/.well-known/jwks.json", "text/plain", "").await;
    assert_eq!(published(&after), [first[0].clone(), new_kid.clone()], "the new key is published");
    let ci_token = token_for(&key, "pipeline-7", &["workers"], "rotation");
    let (_, body) = exchange(&gateway, &ci_token, "namespace:payments role:worker task_queue:q").await;
    let header = jsonwebtoken::decode_header(body["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(header.kid.as_deref(), Some(first[0].as_str()), "the old key signs until the new one is known");
    gateway.stop().await.unwrap();
}
