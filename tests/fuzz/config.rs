//! Targets: the config loader (TOML) and the policy test loader (YAML).
//!
//! Both files are written by people, not sent over the network, but both are parsed by code
//! that recurses (the TOML and YAML parsers, serde into `serde_json::Value` claims) and the
//! gateway must not die on a bad one. Inputs are valid files with their values replaced by
//! wrong types, huge numbers, durations near the limits of `Duration`, deep nesting, YAML
//! anchors, aliases and tags, duplicate keys, then truncated. Properties:
//!
//! * parsing returns a value or an error, never panics, never overflows the stack: nesting of
//!   100 000 `[` or `{` is an error (toml stops at its recursion limit, serde_yaml_ng at 128);
//! * a config that parses is usable: every duration in it can be added to the current time
//!   (an `Instant` or `SystemTime` addition past its range panics, much later, in a request).

use std::time::{Instant, SystemTime};

use flowgate::Config;
use flowgate::config::ConfigError;
use flowgate::policy_test::{self, PolicyTestError};
use proptest::collection::vec;
use proptest::prelude::*;

// ---- the config loader -----------------------------------------------------------------------

/// A table of a config and the keys it may hold, with one valid value each.
const TABLES: &[(&str, &[(&str, &str)])] = &[
    ("[listen]", &[("address", "\"127.0.0.1:7233\""), ("shutdown_grace", "\"5s\""), ("max_concurrent_streams", "100")]),
    ("[admin]", &[("address", "\"127.0.0.1:9090\"")]),
    (
        "[upstream]",
        &[("address", "\"http://127.0.0.1:7234\""), ("connect_timeout", "\"2s\""), ("forward_authorization", "false")],
    ),
    ("[policy]", &[("dir", "\"policies\""), ("watch_interval", "\"1s\"")]),
    ("[audit]", &[("path", "\"-\"")]),
    ("[limits]", &[("max_message_bytes", "65536"), ("max_inflated_bytes", "65536")]),
    ("[token_cache]", &[("max_entries", "1000")]),
    (
        "[[issuers]]",
        &[
            ("name", "\"okta\""),
            ("issuer", "\"https://idp.test\""),
            ("jwks_uri", "\"http://127.0.0.1:1/jwks\""),
            ("audiences", "[\"api://temporal\"]"),
            ("algorithms", "[\"ES256\"]"),
            ("required_claims", "{ tenant = \"acme\" }"),
            ("leeway", "\"30s\""),
            ("max_token_lifetime", "\"1h\""),
            ("jwks_refresh", "\"10m\""),
            ("jwks_min_refresh", "\"30s\""),
            ("jwks_max_stale", "\"1d\""),
        ],
    ),
    (
        "[mint]",
        &[
            ("issuer", "\"https://flowgate.test\""),
            ("key_dir", "\"keys\""),
            ("credential_lifetime", "\"15m\""),
            ("max_session", "\"12h\""),
            ("key_publish_ahead", "\"10m\""),
            ("key_reload", "\"1m\""),
        ],
    ),
];

fn nested(depth: usize, open: &str, inner: &str, close: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

/// TOML values: the valid one, other types, numbers and durations at the edges, deep nesting.
fn toml_value(valid: &'static str) -> impl Strategy<Value = String> {
    let depth = prop::sample::select(vec![1usize, 2, 79, 80, 81, 1_000]);
    prop_oneof![
        8 => Just(valid.to_owned()),
        1 => prop::sample::select(vec![
            "\"18446744073709551615s\"", "\"584942417355y\"", "\"9223372036854775807s\"", "\"1e400s\"", "\"-1s\"", "\"0s\"",
            "\"100y\"", "\"1h 1h\"", "\"\"", "18446744073709551616", "-1", "0", "1e400", "nan", "inf", "\"\u{0}\"",
            "1979-05-27T07:32:00Z", "true", "[]", "{}", "\"http://[::1\"", "\"unix:///x\"", "\"http://\"",
        ])
        .prop_map(str::to_owned),
        1 => depth.clone().prop_map(|d| nested(d, "[", "1", "]")),
        1 => depth.prop_map(|d| nested(d, "{ a = ", "1", " }")),
    ]
}

fn table(index: usize) -> impl Strategy<Value = String> {
    let (header, keys) = TABLES[index];
    let values: Vec<_> =
        keys.iter().map(|&(key, valid)| toml_value(valid).prop_map(move |v| format!("{key} = {v}"))).collect();
    let dotted =
        prop::sample::select(vec![1usize, 2, 100, 1_000]).prop_map(|d| format!("x.{} = 1", vec!["a"; d].join(".")));
    (values, prop::option::weighted(0.05, dotted), prop::bool::weighted(0.05)).prop_map(
        move |(lines, extra, repeat)| {
            let mut text = format!("{header}\n{}\n", lines.join("\n"));
            text.extend(extra.map(|line| line + "\n"));
            if repeat {
                text = text.repeat(2);
            }
            text
        },
    )
}

fn config_text() -> impl Strategy<Value = String> {
    let tables: Vec<_> =
        (0..TABLES.len()).map(|i| prop::option::weighted(if i < 5 { 0.95 } else { 0.5 }, table(i))).collect();
    (tables, any::<prop::sample::Index>(), prop::bool::weighted(0.1)).prop_map(|(tables, cut, truncate)| {
        let mut text: String = tables.into_iter().flatten().collect();
        if truncate && !text.is_empty() {
            let mut at = cut.index(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
        }
        text
    })
}

/// Every duration of a config, by key.
fn durations(config: &Config) -> Vec<(String, std::time::Duration)> {
    let mut out = vec![
        ("listen.shutdown_grace".to_owned(), config.listen.shutdown_grace),
        ("upstream.connect_timeout".to_owned(), config.upstream.connect_timeout),
        ("policy.watch_interval".to_owned(), config.policy.watch_interval),
    ];
    for (i, issuer) in config.issuers.iter().enumerate() {
        for (key, value) in [
            ("leeway", issuer.leeway),
            ("max_token_lifetime", issuer.max_token_lifetime),
            ("jwks_refresh", issuer.jwks_refresh),
            ("jwks_min_refresh", issuer.jwks_min_refresh),
            ("jwks_max_stale", issuer.jwks_max_stale),
        ] {
            out.push((format!("issuers[{i}].{key}"), value));
        }
    }
    if let Some(mint) = &config.mint {
        for (key, value) in [
            ("credential_lifetime", mint.credential_lifetime),
            ("max_session", mint.max_session),
            ("key_publish_ahead", mint.key_publish_ahead),
            ("key_reload", mint.key_reload),
        ] {
            out.push((format!("mint.{key}"), value));
        }
    }
    out
}

pub fn check_config(text: &str) -> Result<(), String> {
    let Ok(config) = Config::parse(text) else { return Ok(()) };
    for (key, value) in durations(&config) {
        // Twice the value: sums of two settings (a lifetime plus its leeway) must fit too.
        let twice = value.saturating_mul(2);
        if Instant::now().checked_add(twice).is_none() || SystemTime::now().checked_add(twice).is_none() {
            return Err(format!("`{key}` = {value:?} parses, and overflows a clock"));
        }
    }
    Ok(())
}

#[test]
fn config_corpus() {
    let mut replayed = 0;
    for (name, bytes) in crate::corpus("config") {
        let text = String::from_utf8(bytes).unwrap_or_else(|_| panic!("corpus {name}: not UTF-8"));
        check_config(&text).unwrap_or_else(|e| panic!("corpus {name}: {e}"));
        if name.contains(".refused.") {
            assert!(Config::parse(&text).is_err(), "corpus {name}: parses");
        }
        replayed += 1;
    }
    assert!(replayed > 0, "no config corpus");
}

#[test]
fn config_loader() {
    crate::run("config", crate::cases(1_000), config_text(), |text| check_config(&text));
}

#[test]
fn config_nesting_is_an_error_not_a_stack_overflow() {
    let base = "[listen]\naddress = \"127.0.0.1:7233\"\n[upstream]\naddress = \"http://127.0.0.1:7234\"\n\
                [policy]\ndir = \"p\"\n[audit]\npath = \"-\"\n[[issuers]]\nname = \"x\"\n";
    Config::parse(base).expect("the base config is valid");
    for depth in [100_000] {
        for value in [nested(depth, "[", "1", "]"), nested(depth, "{ a = ", "1", " }")] {
            let text = format!("{base}required_claims = {value}\n");
            let error = Config::parse(&text).unwrap_err();
            assert!(matches!(&error, ConfigError::Parse { .. }), "{depth} deep: {error}");
        }
        let dotted = format!("{base}{} = 1\n", vec!["a"; depth].join("."));
        assert!(matches!(Config::parse(&dotted).unwrap_err(), ConfigError::Parse { .. }));
        let header = format!("{base}[{}]\nb = 1\n", vec!["a"; depth].join("."));
        assert!(matches!(Config::parse(&header).unwrap_err(), ConfigError::Parse { .. }));
    }
}

// ---- the policy test loader ------------------------------------------------------------------

const POLICY: &str = "@id(\"readers\")\npermit (principal in Temporal::Group::\"okta:readers\", action in Temporal::Action::\"read\", resource);\n";

fn yaml_claims() -> impl Strategy<Value = String> {
    let depth = prop::sample::select(vec![1usize, 10, 126, 127, 128, 129, 300]);
    prop_oneof![
        6 => Just("{ sub: alice, groups: [readers] }".to_owned()),
        1 => depth.clone().prop_map(|d| nested(d, "{ a: ", "1", " }")),
        1 => depth.prop_map(|d| nested(d, "[", "1", "]")),
        1 => prop::sample::select(vec![2usize, 3, 5]).prop_map(laughs),
        1 => prop::sample::select(vec![
            "{ sub: alice, sub: bob }", "{ sub: !!binary aGk= }", "{ sub: 18446744073709551616, groups: 1e400 }",
            "{ sub: &a alice, groups: [*a, *a] }", "{ sub: *nothing }", "!custom { sub: x }", "[]", "~", "\"\\ud800\"",
            "{ ? [a, b] : c }", "{ sub: alice, exp: .nan }",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Claims holding an alias bomb: each level nine times the one before.
fn laughs(levels: usize) -> String {
    let mut claims = vec!["sub: alice".to_owned(), "l0: &l0 [x, x, x, x, x, x, x, x, x]".to_owned()];
    for i in 1..levels {
        claims.push(format!("l{i}: &l{i} [{}]", vec![format!("*l{}", i - 1); 9].join(", ")));
    }
    format!("{{ {} }}", claims.join(", "))
}

fn policy_test_text() -> impl Strategy<Value = String> {
    let header = prop_oneof![8 => Just(String::new()), 1 => Just("---\ncases: []\n---\n".to_owned())];
    let method = prop::sample::select(vec!["DescribeNamespace", "StartWorkflowExecution", "Nope", ""]);
    let expect = prop::sample::select(vec!["allow", "deny", "maybe"]);
    (header, vec((yaml_claims(), method, expect), 1..3), any::<prop::sample::Index>(), prop::bool::weighted(0.1)).prop_map(
        |(header, cases, cut, truncate)| {
            let mut text = format!("{header}issuers:\n  okta: {{ preset: okta }}\ncases:\n");
            for (i, (claims, method, expect)) in cases.into_iter().enumerate() {
                text.push_str(&format!(
                    "  - name: case {i}\n    principal:\n      issuer: okta\n      claims: {claims}\n    call: {{ method: {method}, namespace: payments }}\n    expect: {expect}\n"
                ));
            }
            if truncate {
                let mut at = cut.index(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.truncate(at);
            }
            text
        },
    )
}

struct PolicyDir(tempfile::TempDir);

impl PolicyDir {
    fn new() -> PolicyDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("schema.cedarschema"), flowgate::authz::generated_schema()).unwrap();
        std::fs::write(dir.path().join("readers.cedar"), POLICY).unwrap();
        std::fs::create_dir(dir.path().join(policy_test::TESTS_DIR)).unwrap();
        PolicyDir(dir)
    }

    fn run(&self, text: &str) -> Result<policy_test::Report, PolicyTestError> {
        std::fs::write(self.0.path().join(policy_test::TESTS_DIR).join("case.yaml"), text).unwrap();
        policy_test::run(self.0.path(), None, None)
    }
}

#[test]
fn policy_test_corpus() {
    let dir = PolicyDir::new();
    let mut replayed = 0;
    for (name, bytes) in crate::corpus("policy-test") {
        let text = String::from_utf8(bytes).unwrap_or_else(|_| panic!("corpus {name}: not UTF-8"));
        let result = dir.run(&text);
        if name.contains(".refused.") {
            assert!(matches!(result, Err(PolicyTestError::Syntax { .. })), "corpus {name}: {result:?}");
        } else {
            assert!(result.is_ok(), "corpus {name}: {result:?}");
        }
        replayed += 1;
    }
    assert!(replayed > 0, "no policy-test corpus");
}

#[test]
fn policy_test_loader() {
    let path = std::path::Path::new("tests/case.yaml");
    crate::run("policy-test", crate::cases(1_000), policy_test_text(), |text| {
        // A value or an error, never a panic; nesting past serde_yaml_ng's limit is an error.
        let result = policy_test::check_file(path, &text);
        if text.contains(&"{ a: ".repeat(129)) && !matches!(result, Err(PolicyTestError::Syntax { .. })) {
            return Err(format!("129 nested mappings: {result:?}"));
        }
        Ok(())
    });
}

/// A few whole runs (policies loaded, cases decided) on generated files.
#[test]
fn policy_test_runs() {
    let dir = PolicyDir::new();
    crate::run("policy-test-run", crate::cases(8).min(64), policy_test_text(), |text| {
        let _ = dir.run(&text);
        Ok(())
    });
}

#[test]
fn policy_test_nesting_is_an_error_not_a_stack_overflow() {
    let dir = PolicyDir::new();
    for (open, close) in [("[", "]"), ("{ a: ", " }")] {
        let text = format!(
            "cases:\n  - name: deep\n    principal: {{ issuer: okta, claims: {{ sub: a, n: {} }} }}\n    call: {{ method: DescribeNamespace, namespace: p }}\n    expect: deny\n",
            nested(2_000, open, "1", close)
        );
        match dir.run(&text) {
            Err(PolicyTestError::Syntax { message, .. }) => assert!(message.contains("recursion limit"), "{message}"),
            other => panic!("2000 deep `{open}`: {other:?}"),
        }
    }
    // Claims as deep as the limit allows still make a principal.
    let text = format!(
        "issuers:\n  okta: {{ preset: okta }}\ncases:\n  - name: deep\n    principal: {{ issuer: okta, claims: {{ sub: a, n: {} }} }}\n    call: {{ method: DescribeNamespace, namespace: p }}\n    expect: deny\n",
        nested(100, "{ a: ", "1", " }")
    );
    let report = dir.run(&text).expect("100 deep is within the limit");
    assert_eq!(report.passed(), 1, "{}", report.to_text());
    // An alias bomb is refused before it expands.
    let text = format!(
        "cases:\n  - name: bomb\n    principal: {{ issuer: okta, claims: {} }}\n    call: {{ method: DescribeNamespace, namespace: p }}\n    expect: deny\n",
        laughs(10)
    );
    match dir.run(&text) {
        Err(PolicyTestError::Syntax { message, .. }) => assert!(message.contains("repetition limit"), "{message}"),
        other => panic!("alias bomb: {other:?}"),
    }
}
