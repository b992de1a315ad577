//! Target: the JWT path, from the token text to the principal.
//!
//! Tokens are three `.`-separated parts (sometimes two or four), each part base64url of JSON
//! (sometimes padded, standard base64, or not base64 at all). Headers vary `alg`, `kid` and
//! `typ`; payloads vary `iss`, `aud`, the NumericDates (huge, negative, fractional, strings) and
//! hold nested claims; raw JSON texts add what a JSON serializer never writes: 10 000-deep
//! nesting, duplicate keys, numbers past f64, non-objects. Signatures are random bytes, empty,
//! or a real ES256 signature by the issuer's key over the fuzzed header and payload, so the
//! checks after the signature run on fuzzed claims too. Properties:
//!
//! * `Authenticator::verify` returns, never panics (a panic would abort the connection task);
//! * it accepts a token only when the issuer's key signed it, with `ES256`, its `kid`, and
//!   claims that name the issuer and a subject, and the principal is that subject.

use std::sync::{Arc, LazyLock};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use flowgate::authn::{Authenticator, AuthnError, HttpFetcher};
use flowgate::telemetry::Metrics;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::support::{self, AUDIENCE, ISSUER, SigningKey};

const KID: &str = "fuzz-key";

/// JSON texts no serializer writes.
fn raw_json() -> Vec<String> {
    vec![
        "[".repeat(10_000) + &"]".repeat(10_000),
        "{\"a\":".repeat(10_000) + "1" + &"}".repeat(10_000),
        format!("{{\"alg\":\"none\",\"alg\":\"ES256\",\"kid\":\"{KID}\"}}"),
        format!(
            "{{\"iss\":\"https://evil.test\",\"iss\":\"{ISSUER}\",\"sub\":\"a\",\"sub\":\"b\",\"aud\":\"{AUDIENCE}\",\"exp\":99999999999}}"
        ),
        format!("{{\"iss\":\"{ISSUER}\",\"sub\":\"s\",\"aud\":\"{AUDIENCE}\",\"exp\":1e400}}"),
        format!("{{\"iss\":\"{ISSUER}\",\"sub\":\"s\",\"aud\":\"{AUDIENCE}\",\"exp\":18446744073709551616}}"),
        format!("{{\"alg\":\"ES256\",\"kid\":\"{KID}\",\"n\":123456789012345678901234567890}}"),
        "[]".into(),
        "\"text\"".into(),
        "1e400".into(),
        "null".into(),
        "{".into(),
        "{\"a\":\"\\ud800\"}".into(),
        String::new(),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z:/.]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("[a-z.]{1,4}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn one_of(values: Vec<Value>) -> impl Strategy<Value = Value> {
    prop_oneof![4 => prop::sample::select(values), 1 => json()]
}

fn header() -> impl Strategy<Value = Value> {
    let alg = one_of(vec![json!("ES256"), json!("RS256"), json!("HS256"), json!("none"), json!("es256"), json!("")]);
    let kid = one_of(vec![json!(KID), json!("other"), json!(""), json!(7)]);
    let typ = prop::option::of(one_of(vec![json!("JWT"), json!(flowgate::authn::MINTED_TOKEN_TYPE), json!("at+jwt")]));
    (alg, prop::option::weighted(0.9, kid), typ, btree_map("[a-z]{1,4}", json(), 0..2)).prop_map(
        |(alg, kid, typ, extra)| {
            let mut header: serde_json::Map<String, Value> = extra.into_iter().collect();
            header.insert("alg".into(), alg);
            kid.map(|kid| header.insert("kid".into(), kid));
            typ.map(|typ| header.insert("typ".into(), typ));
            Value::Object(header)
        },
    )
}

fn numeric_date() -> impl Strategy<Value = Value> {
    let now = support::now();
    one_of(vec![
        json!(now + 300),
        json!(now - 300),
        json!(now),
        json!(u64::MAX),
        json!(-1),
        json!(now as f64 + 0.5),
        json!(1e300),
        json!("tomorrow"),
    ])
}

fn payload() -> impl Strategy<Value = Value> {
    let iss = one_of(vec![json!(ISSUER), json!("https://evil.test"), json!("")]);
    let aud = one_of(vec![json!(AUDIENCE), json!([AUDIENCE, 1]), json!(["other"])]);
    let sub = one_of(vec![json!("user-1"), json!(""), json!(null)]);
    let optional_date = || prop::option::weighted(0.7, numeric_date());
    (iss, aud, sub, numeric_date(), optional_date(), optional_date(), btree_map("[a-z.]{1,6}", json(), 0..4)).prop_map(
        |(iss, aud, sub, exp, iat, nbf, extra)| {
            let mut claims: serde_json::Map<String, Value> = extra.into_iter().collect();
            claims.insert("iss".into(), iss);
            claims.insert("aud".into(), aud);
            claims.insert("sub".into(), sub);
            claims.insert("exp".into(), exp);
            iat.map(|v| claims.insert("iat".into(), v));
            nbf.map(|v| claims.insert("nbf".into(), v));
            claims.insert("tenant".into(), json!("acme"));
            Value::Object(claims)
        },
    )
}

/// One part of the token: JSON, or not, in some encoding.
#[derive(Debug, Clone)]
enum Part {
    Json(Value),
    Raw(String),
}

#[derive(Debug, Clone, Copy)]
enum Encoding {
    UrlSafe,
    Padded,
    Standard,
    NotBase64,
}

impl Part {
    fn text(&self, encoding: Encoding) -> String {
        let bytes = match self {
            Part::Json(value) => value.to_string(),
            Part::Raw(text) => text.clone(),
        };
        match encoding {
            Encoding::UrlSafe => URL_SAFE_NO_PAD.encode(bytes),
            Encoding::Padded => URL_SAFE_NO_PAD.encode(bytes) + "==",
            Encoding::Standard => STANDARD.encode(bytes),
            Encoding::NotBase64 => format!("*{bytes}"),
        }
    }
}

fn part(json: impl Strategy<Value = Value>) -> impl Strategy<Value = (Part, Encoding)> {
    let part = prop_oneof![6 => json.prop_map(Part::Json), 1 => prop::sample::select(raw_json()).prop_map(Part::Raw)];
    let encoding = prop_oneof![
        12 => Just(Encoding::UrlSafe),
        1 => Just(Encoding::Padded),
        1 => Just(Encoding::Standard),
        1 => Just(Encoding::NotBase64),
    ];
    (part, encoding)
}

#[derive(Debug, Clone)]
enum Signature {
    Random(Vec<u8>),
    /// A real signature by the issuer's key.
    Valid,
}

#[derive(Debug, Clone)]
struct Token {
    header: (Part, Encoding),
    payload: (Part, Encoding),
    signature: Signature,
    /// 0: the usual three parts; 1: two; 2: four.
    shape: u8,
}

fn token() -> impl Strategy<Value = Token> {
    let signature = prop_oneof![1 => vec(any::<u8>(), 0..72).prop_map(Signature::Random), 2 => Just(Signature::Valid)];
    let shape = prop_oneof![12 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)];
    (part(header()), part(payload()), signature, shape).prop_map(|(header, payload, signature, shape)| Token {
        header,
        payload,
        signature,
        shape,
    })
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    authenticator: Authenticator,
    key: SigningKey,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
    let key = SigningKey::es256(KID);
    let jwks = runtime.block_on(support::Jwks::start(&[&key]));
    let config = flowgate::Config::parse(&format!(
        r#"
        [listen]
        address = "127.0.0.1:0"
        [upstream]
        address = "http://127.0.0.1:1"
        [policy]
        dir = "policies"
        [audit]
        path = "-"
        [[issuers]]
        name = "fuzz"
        issuer = "{ISSUER}"
        jwks_uri = "{jwks}"
        audiences = ["{AUDIENCE}"]
        groups_claim = "groups"
        algorithms = ["ES256"]
        required_claims = {{ tenant = "acme" }}
        jwks_min_refresh = "1h"
        max_token_lifetime = "1h"
        "#,
        jwks = jwks.url
    ))
    .expect("the fuzz config is valid");
    let authenticator = Authenticator::new(&config, HttpFetcher::new().expect("a client"), Arc::new(Metrics::new()))
        .expect("issuers resolve");
    Harness { runtime, authenticator, key }
});

/// The issuer's ES256 signature over `signed`, low-s (flowgate refuses the high-s twin).
fn low_s_signature(signed: &str, key: &SigningKey) -> String {
    let signature = jsonwebtoken::crypto::sign(signed.as_bytes(), &key.encoding, jsonwebtoken::Algorithm::ES256)
        .expect("ES256 signs anything");
    let token = format!("{signed}.{signature}");
    let token = if support::is_high_s(&token) { support::ecdsa_twin(&token) } else { token };
    token.rsplit_once('.').expect("three parts").1.to_owned()
}

impl Harness {
    fn verify(&self, token: &str) -> Result<flowgate::authn::Principal, AuthnError> {
        self.runtime.block_on(self.authenticator.verify(token))
    }

    fn assemble(&self, token: &Token) -> String {
        let header = token.header.0.text(token.header.1);
        let payload = token.payload.0.text(token.payload.1);
        let signed = format!("{header}.{payload}");
        let signature = match &token.signature {
            Signature::Random(bytes) => URL_SAFE_NO_PAD.encode(bytes),
            Signature::Valid => low_s_signature(&signed, &self.key),
        };
        match token.shape {
            1 => signed,
            2 => format!("{signed}.{signature}.{signature}"),
            _ => format!("{signed}.{signature}"),
        }
    }
}

fn check(token: &Token) -> Result<(), String> {
    let harness = &*HARNESS;
    let text = harness.assemble(token);
    let Ok(principal) = harness.verify(&text) else { return Ok(()) };
    let signed_properly = matches!(token.signature, Signature::Valid)
        && token.shape == 0
        && matches!(&token.header.0, Part::Json(h) if h["alg"] == "ES256" && h["kid"] == KID);
    if !signed_properly {
        return Err(format!("accepted a token the issuer did not sign: {text}"));
    }
    let Part::Json(claims) = &token.payload.0 else { return Err(format!("accepted raw claims: {text}")) };
    if claims["iss"] != ISSUER
        || claims["sub"] != principal.sub.as_str()
        || principal.id != format!("fuzz:{}", principal.sub)
    {
        return Err(format!("principal {} from claims {claims}", principal.id));
    }
    Ok(())
}

#[test]
fn jwt_corpus() {
    let mut replayed = 0;
    for (name, bytes) in crate::corpus("jwt") {
        let text = String::from_utf8(bytes).unwrap_or_else(|_| panic!("corpus {name}: not UTF-8"));
        let result = HARNESS.verify(text.trim());
        assert!(result.is_err(), "corpus {name}: accepted");
        replayed += 1;
    }
    assert!(replayed > 0, "no jwt corpus");
}

#[test]
fn jwt_header_and_claims() {
    crate::run("jwt", crate::cases(1_000), token(), |token| check(&token));
}

/// Claims as deep as JSON allows become tags; deeper ones are refused by the JSON parser, so the
/// (recursive) claim flattening never sees them.
#[test]
fn nested_claims_are_bounded_by_the_json_parser() {
    let harness = &*HARNESS;
    let signed = |claims: &str| {
        let header = URL_SAFE_NO_PAD.encode(format!("{{\"alg\":\"ES256\",\"kid\":\"{KID}\"}}"));
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
        let signature = low_s_signature(&signed, &harness.key);
        format!("{signed}.{signature}")
    };
    let claims = |depth: usize| {
        format!(
            "{{\"iss\":\"{ISSUER}\",\"sub\":\"deep\",\"aud\":\"{AUDIENCE}\",\"exp\":{},\"tenant\":\"acme\",\"n\":{}{{\"leaf\":\"x\"}}{}}}",
            support::now() + 60,
            "{\"a\":".repeat(depth),
            "}".repeat(depth)
        )
    };
    // 127 objects in all: within serde_json's limit of 128.
    let principal = harness.verify(&signed(&claims(125))).expect("nesting within the JSON limit");
    let tag = format!("n.{}leaf", "a.".repeat(125));
    assert_eq!(principal.tags.get(&tag).map(String::as_str), Some("x"));
    for depth in [127, 10_000, 100_000] {
        let error = harness.verify(&signed(&claims(depth))).unwrap_err();
        assert!(matches!(error, AuthnError::Malformed(_)), "{depth} deep: {error}");
    }
}
