//! Issue 9, items 4 and 5, against a fake upstream and an in-test JWKS server:
//!
//! * single use without `jti`: an ES256 signature `(r, s)` has a twin `(r, n - s)` that verifies
//!   too, so a token keyed by its whole text could be exchanged twice. High-s signatures are
//!   refused (external issuers by default, flowgate's own credentials always), flowgate signs
//!   low-s, and replay is keyed on the signed part (`header.payload`), which the twin shares;
//! * key rotation is never a refusal: a key the IdP publishes just after a fetch is accepted on
//!   its first call, also while random `kid`s flood the gateway, which cannot force a fetch
//!   per call.
//!
//! The same against a real Temporal server: tests/e2e/test_authn_hardening.py.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const POLICY: &str = r#"
@id("exchange-workers")
permit (
  principal in Temporal::Group::"test:workers",
  action == Temporal::Action::"IssueCredential",
  resource == Temporal::Namespace::"payments"
)
when { context.role == "worker" && context.task_queues == ["q"] };

@id("workers-within-grant")
permit (
  principal is Temporal::Worker,
  action in [Temporal::Action::"read", Temporal::Action::"worker", Temporal::Action::"IssueCredential"],
  resource
);

@id("deployers-read")
permit (principal in Temporal::Group::"test:deployers", action in Temporal::Action::"read", resource in Temporal::Namespace::"payments");
"#;

const SCOPE: &str = "namespace:payments role:worker task_queue:q";
const FORM: &str = "application/x-www-form-urlencoded";

async fn start(jwks: &Jwks, upstream: &Upstream, issuer_extra: &str) -> Gateway {
    let keys = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(upstream);
    setup.policy = POLICY.to_owned();
    setup.issuer_extra = issuer_extra.to_owned();
    setup.tables = format!(
        "[mint]\nissuer = \"http://flowgate.test\"\nkey_dir = \"{}\"\ncredential_lifetime = \"10m\"\n",
        keys.keep().display()
    );
    Gateway::start(jwks, setup).await
}

async fn exchange(gateway: &Gateway, subject_token: &str) -> (u16, Value) {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")
        .append_pair("subject_token", subject_token)
        .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
        .append_pair("scope", SCOPE)
        .finish();
    gateway.http("POST", "/oauth2/token", FORM, &form).await
}

/// A CI token without `jti` (Bitbucket and Kubernetes tokens have none).
fn ci_claims(sub: &str) -> Value {
    let claims = claims(sub, &["workers"]);
    assert!(claims.get("jti").is_none());
    claims
}

fn describe() -> Vec<u8> {
    field(1, b"payments")
}

#[tokio::test]
async fn a_token_without_jti_is_exchanged_once_even_as_its_ecdsa_twin() {
    let key = SigningKey::es256("k1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;

    // Default (`ecdsa_high_s = "refuse"`): the twin is not a valid subject token at all.
    let gateway = start(&jwks, &upstream, "").await;
    let token = key.sign(&ci_claims("pipeline-1"));
    let twin = ecdsa_twin(&token);
    assert!(!is_high_s(&token) && is_high_s(&twin));
    let (status, first) = exchange(&gateway, &token).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = exchange(&gateway, &twin).await;
    assert_eq!((status, again["error"].as_str()), (400, Some("invalid_grant")), "{again}");
    assert!(again["error_description"].as_str().unwrap().contains("high-s"), "{again}");
    // A high-s original is refused too, and its low-s twin is then still unused.
    let high_first = key.sign_high_s(&ci_claims("pipeline-2"));
    let (status, refused) = exchange(&gateway, &high_first).await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("invalid_grant")), "{refused}");
    assert_eq!(exchange(&gateway, &ecdsa_twin(&high_first)).await.0, 200);
    gateway.stop().await.unwrap();

    // `ecdsa_high_s = "accept"` (an IdP that does not normalize): both forms verify, and the
    // replay key, on the signed part, is the same for both.
    let gateway = start(&jwks, &upstream, r#"ecdsa_high_s = "accept""#).await;
    let token = key.sign(&ci_claims("pipeline-3"));
    let (status, first) = exchange(&gateway, &ecdsa_twin(&token)).await;
    assert_eq!(status, 200, "the high-s form is accepted: {first}");
    let (status, again) = exchange(&gateway, &token).await;
    assert_eq!((status, again["error"].as_str()), (400, Some("invalid_grant")), "{again}");
    assert!(again["error_description"].as_str().unwrap().contains("already exchanged"), "{again}");
    // Tokens with a `jti` are still keyed on it.
    let mut with_jti = ci_claims("pipeline-4");
    with_jti["jti"] = "j-4".into();
    assert_eq!(exchange(&gateway, &key.sign(&with_jti)).await.0, 200);
    with_jti["sub"] = "pipeline-5".into();
    assert_eq!(exchange(&gateway, &key.sign(&with_jti)).await.1["error"], "invalid_grant", "same `iss` + `jti`");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_high_s_twin_is_refused_not_served_from_the_token_cache() {
    let key = SigningKey::es256("k1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let gateway = start(&jwks, &upstream, "").await;
    let mut client = Client::connect(gateway.addr).await;
    let token = key.sign(&claims("alice", &["deployers"]));
    for _ in 0..2 {
        assert_eq!(client.unary("DescribeNamespace", Some(&token), &describe()).await.code(), "0");
    }
    let fetches = jwks.fetch_count();
    let reply = client.unary("DescribeNamespace", Some(&ecdsa_twin(&token)), &describe()).await;
    assert_eq!(reply.code(), "16", "{reply:?}");
    let message = reply.message.unwrap_or_default();
    assert!(message.contains("high-s") && message.contains("`test`"), "{message}");
    // Refused before any key lookup: a high-s token with an unknown kid fetches nothing.
    let stranger = SigningKey::es256("never-published");
    let reply = client.unary("DescribeNamespace", Some(&stranger.sign_high_s(&claims("a", &[]))), &describe()).await;
    assert!(reply.message.unwrap_or_default().contains("high-s"));
    assert_eq!(jwks.fetch_count(), fetches);
    // The original stays valid (the twin did not poison its cache entry).
    assert_eq!(client.unary("DescribeNamespace", Some(&token), &describe()).await.code(), "0");
    let records = gateway.records();
    let refusal = records.iter().find(|r| r["decision"] == "deny").unwrap();
    assert!(refusal["reasons"][0].as_str().unwrap().starts_with("unauthenticated: token signature is high-s"));
    gateway.stop().await.unwrap();

    let gateway = start(&jwks, &upstream, r#"ecdsa_high_s = "accept""#).await;
    let mut client = Client::connect(gateway.addr).await;
    let high = key.sign_high_s(&claims("alice", &["deployers"]));
    assert_eq!(client.unary("DescribeNamespace", Some(&high), &describe()).await.code(), "0");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn flowgate_signs_low_s_and_refuses_its_own_credentials_in_high_s() {
    let key = SigningKey::es256("k1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let gateway = start(&jwks, &upstream, "").await;
    let mut credentials = Vec::new();
    // Without normalization, each credential is high-s with probability 1/2.
    for i in 0..24 {
        let (status, minted) = exchange(&gateway, &key.sign(&ci_claims(&format!("pipeline-{i}")))).await;
        assert_eq!(status, 200, "{minted}");
        credentials.push(minted["access_token"].as_str().unwrap().to_owned());
    }
    assert!(credentials.iter().all(|c| !is_high_s(c)), "every credential flowgate signs is low-s");
    let mut client = Client::connect(gateway.addr).await;
    let credential = &credentials[0];
    assert_eq!(client.unary("DescribeNamespace", Some(credential), &describe()).await.code(), "0");
    let twin = ecdsa_twin(credential);
    let reply = client.unary("DescribeNamespace", Some(&twin), &describe()).await;
    assert_eq!(reply.code(), "16");
    assert!(reply.message.unwrap_or_default().contains("high-s"));
    // Refreshing with the twin is refused, and the original can still be refreshed once.
    let (status, refused) = exchange(&gateway, &twin).await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("invalid_grant")), "{refused}");
    assert_eq!(exchange(&gateway, credential).await.0, 200);
    assert_eq!(exchange(&gateway, credential).await.1["error"], "invalid_grant");
    gateway.stop().await.unwrap();
}

/// A call with a token from a key nobody published: forces an on-demand JWKS fetch.
async fn unknown_kid_call(client: &mut Client, kid: &str) -> Reply {
    let stranger = SigningKey::es256(kid);
    client.unary("DescribeNamespace", Some(&stranger.sign(&claims("mallory", &["deployers"]))), &describe()).await
}

#[tokio::test]
async fn a_key_published_just_after_a_fetch_is_accepted_on_its_first_call() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let gateway = start(&jwks, &upstream, "").await;
    let mut client = Client::connect(gateway.addr).await;

    // Any unknown kid makes the gateway fetch (here an attacker's) ...
    let fetches = jwks.fetch_count();
    let reply = unknown_kid_call(&mut client, "no-such-key").await;
    assert!(reply.message.unwrap_or_default().contains("unknown signing key `no-such-key`"));
    assert_eq!(jwks.fetch_count(), fetches + 1);
    // ... and the IdP rotates right after (Keycloak, Dex, Kubernetes sign with a new key at once).
    let rotated = SigningKey::es256("key-2");
    jwks.set_keys(&[&key, &rotated]);
    let started = Instant::now();
    let reply =
        client.unary("DescribeNamespace", Some(&rotated.sign(&claims("bob", &["deployers"]))), &describe()).await;
    assert_eq!(reply.code(), "0", "the rotated key is accepted on its first call: {reply:?}");
    assert!(started.elapsed() < Duration::from_millis(500), "at once: {:?}", started.elapsed());
    assert_eq!(jwks.fetch_count(), fetches + 2);

    // A second rotation within the same `jwks_min_refresh` (1 s): held until the next fetch is
    // permitted, never refused.
    let again = SigningKey::es256("key-3");
    jwks.set_keys(&[&key, &rotated, &again]);
    let reply =
        client.unary("DescribeNamespace", Some(&again.sign(&claims("carol", &["deployers"]))), &describe()).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    assert_eq!(jwks.fetch_count(), fetches + 3);
    assert_eq!(gateway.metric(r#"flowgate_jwks_kid_waits_total{issuer="test",result="found"}"#).await, 1.0);

    // A kid absent from a fetch made after it was asked for is refused at once from then on,
    // without a fetch, for `jwks_min_refresh`.
    for _ in 0..5 {
        let started = Instant::now();
        let reply = unknown_kid_call(&mut client, "no-such-key-2").await;
        assert_eq!(reply.code(), "16");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    assert!(jwks.fetch_count() <= fetches + 4, "{} fetches", jwks.fetch_count() - fetches);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn random_kids_cannot_force_a_fetch_per_call_nor_lock_out_a_rotated_key() {
    let key = Arc::new(SigningKey::es256("key-1"));
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let gateway = start(&jwks, &upstream, "").await;
    let fetches = jwks.fetch_count();
    let started = Instant::now();

    // The legitimate client: fresh tokens (no cache hit), one call after the other, all along.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let legitimate = {
        let (mut client, key, stop) = (Client::connect(gateway.addr).await, key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let token = key.sign(&claims(&format!("alice-{i}"), &["deployers"]));
                answers.push(client.unary("DescribeNamespace", Some(&token), &describe()).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };

    // The flood: 32 attackers, each sending call after call with a kid of its own, for 3 s.
    let stranger = Arc::new(SigningKey::es256("unused"));
    let (calls, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut flood = Vec::new();
    for attacker in 0..32 {
        let mut client = Client::connect(gateway.addr).await;
        let (stranger, stop, calls, refused) = (stranger.clone(), stop.clone(), calls.clone(), refused.clone());
        flood.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                header.kid = Some(format!("random-{attacker}-{i}"));
                let token = stranger.sign_with_header(&header, &claims("mallory", &["deployers"]));
                let reply = client.unary("DescribeNamespace", Some(&token), &describe()).await;
                calls.fetch_add(1, Ordering::SeqCst);
                if reply.code() == "16" && reply.message.unwrap_or_default().contains("unknown signing key `random-") {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    // In the middle of it the IdP rotates: the new key's first token is accepted (held until
    // the next permitted fetch, if need be).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rotated = SigningKey::es256("key-2");
    jwks.set_keys(&[&key, &rotated]);
    let mut client = Client::connect(gateway.addr).await;
    let reply =
        client.unary("DescribeNamespace", Some(&rotated.sign(&claims("bob", &["deployers"]))), &describe()).await;
    assert_eq!(reply.code(), "0", "the rotated key is accepted during the flood: {reply:?}");

    tokio::time::sleep(Duration::from_millis(1800)).await;
    stop.store(true, Ordering::SeqCst);
    for attacker in flood {
        attacker.await.unwrap();
    }
    let elapsed = started.elapsed();
    let answers = legitimate.await.unwrap();
    assert!(answers.len() >= 20, "{} legitimate calls", answers.len());
    assert!(answers.iter().all(|a| a.code() == "0"), "the legitimate client is never refused: {answers:?}");
    let (calls, refused) = (calls.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
    assert_eq!(refused, calls, "every random kid is refused as unknown");
    // Two fetches at once, then at most one per `jwks_min_refresh` (1 s), however many kids.
    let made = jwks.fetch_count() - fetches;
    let bound = 2 + elapsed.as_secs_f64().ceil() as usize;
    assert!(made <= bound, "{made} JWKS fetches for {calls} random kids in {elapsed:?} (at most {bound})");
    assert!(calls >= 3 * made && calls >= 64, "{calls} calls, {made} fetches");
    assert!(gateway.metric(r#"flowgate_jwks_kid_waits_total{issuer="test",result="absent"}"#).await >= 32.0);
    gateway.stop().await.unwrap();
}
