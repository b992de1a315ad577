//! `flowgate policy test` and `flowgate explain` as a user runs them: the repository's own
//! test suite, failure output, broken cases, coverage, issuers from a gateway config, and
//! explanations from claims and from tokens. Explaining on a running gateway's admin port is
//! in tests/policy_reload.rs and tests/e2e/test_policy_loop.py.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn flowgate(args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("flowgate runs");
    Run {
        code: output.status.code().expect("flowgate exits"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A copy of the repository's policies, with `tests/` replaced by `cases` (file name, yaml).
fn policies_with_tests(cases: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let tests = dir.path().join("tests");
    std::fs::create_dir_all(tests.join("claims")).unwrap();
    for claims in ["github-actions.json", "buildkite.json"] {
        std::fs::copy(repo("policies/tests/claims").join(claims), tests.join("claims").join(claims)).unwrap();
    }
    for (name, yaml) in cases {
        std::fs::write(tests.join(name), yaml).unwrap();
    }
    dir
}

const OKTA_DEPLOYER_STARTS: &str = r#"
issuers:
  okta: { preset: okta }
cases:
  - name: a deployer starts a deploy
    principal: { issuer: okta, claims: { sub: 00u-alice, groups: [deployers] } }
    call: { method: StartWorkflowExecution, namespace: payments, workflow_type: DeployWorkflow, workflow_id: deploy-1 }
    expect: allow
    policies: [okta-deployers-start-deploys]
"#;

#[test]
fn the_repository_policies_pass_their_own_tests_and_cover_every_policy() {
    let run = flowgate(&["policy", "test", "--require-coverage", text(&repo("policies"))], &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("coverage: every policy (12) determined at least one case"), "{}", run.stdout);
    let passed = run.stdout.lines().filter(|l| l.starts_with("  ok ")).count();
    assert!(run.stdout.ends_with(&format!("{passed} passed, 0 failed\n")), "{}", run.stdout);
    assert!(passed >= 28, "{passed}");
    assert!(run.stdout.contains("policies/tests/ci.yaml\n  ok     github production environment"), "{}", run.stdout);
}

#[test]
fn a_failing_case_shows_what_was_expected_and_what_was_decided() {
    let wrong =
        OKTA_DEPLOYER_STARTS.replace("expect: allow", "expect: deny").replace("[okta-deployers-start-deploys]", "[]");
    let dir = policies_with_tests(&[("okta.yaml", &wrong)]);
    let run = flowgate(&["policy", "test", text(dir.path())], &[]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "  FAIL   a deployer starts a deploy\n\
             \x20        - expected deny, determined by no policy\n\
             \x20        + got      allow, determined by okta-deployers-start-deploys\n"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("0 passed, 1 failed"), "{}", run.stdout);
    assert!(run.stderr.contains("error: 1 of 1 cases failed"), "{}", run.stderr);

    // The decision right but the determining policy wrong is a failure too.
    let other_policy = OKTA_DEPLOYER_STARTS.replace("[okta-deployers-start-deploys]", "[platform-admins]");
    let dir = policies_with_tests(&[("okta.yaml", &other_policy)]);
    let run = flowgate(&["policy", "test", text(dir.path())], &[]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("- expected allow, determined by platform-admins"), "{}", run.stdout);
}

#[test]
fn a_broken_case_is_an_error_that_says_why() {
    let signal_with_type = r#"
issuers: { okta: { preset: okta } }
cases:
  - name: a signal with a workflow type
    principal: { issuer: okta, claims: { sub: 00u-alice, groups: [deployers] } }
    call: { method: SignalWorkflowExecution, namespace: payments, workflow_id: deploy-1, workflow_type: DeployWorkflow }
    expect: allow
  - name: an unknown issuer
    principal: { issuer: gitlab, claims: { sub: x } }
    call: { method: DescribeNamespace, namespace: payments }
    expect: deny
  - name: claims without sub
    principal: { issuer: okta, claims: { groups: [deployers] } }
    call: { method: DescribeNamespace, namespace: payments }
    expect: allow
"#;
    let dir = policies_with_tests(&[("broken.yaml", signal_with_type)]);
    let run = flowgate(&["policy", "test", text(dir.path())], &[]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains(
            "  ERROR  a signal with a workflow type\n         `SignalWorkflowExecution` requests carry no `workflow_type`"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("no issuer named `gitlab` (known: okta, flowgate)"), "{}", run.stdout);
    assert!(run.stdout.contains("issuer `okta`: claim `sub` is missing"), "{}", run.stdout);
    assert!(run.stdout.contains("0 passed, 3 failed"), "{}", run.stdout);
}

#[test]
fn a_test_file_that_does_not_parse_is_located() {
    let dir = policies_with_tests(&[("bad.yaml", "cases:\n  - name: x\n    expect: maybe\n")]);
    let run = flowgate(&["policy", "test", text(dir.path())], &[]);
    assert_eq!(run.code, 1);
    let path = dir.path().join("tests/bad.yaml");
    assert!(run.stderr.starts_with(&format!("error: {}:", path.display())), "{}", run.stderr);
    assert!(
        run.stderr.ends_with(":3:13: cases[0].expect: unknown variant `maybe`, expected `allow` or `deny`\n"),
        "{}",
        run.stderr
    );

    let dir = policies_with_tests(&[("typo.yaml", &OKTA_DEPLOYER_STARTS.replace("expect:", "expected:"))]);
    let run = flowgate(&["policy", "test", text(dir.path())], &[]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("typo.yaml:") && run.stderr.contains("unknown field `expected`"), "{}", run.stderr);

    let empty = tempfile::tempdir().unwrap();
    for name in ["schema.cedarschema", "okta.cedar"] {
        std::fs::copy(repo("policies").join(name), empty.path().join(name)).unwrap();
    }
    let run = flowgate(&["policy", "test", text(empty.path())], &[]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no test files (`*.yaml`)"), "{}", run.stderr);
}

#[test]
fn coverage_names_the_policies_no_case_exercises() {
    let dir = policies_with_tests(&[("okta.yaml", OKTA_DEPLOYER_STARTS)]);
    let run = flowgate(&["policy", "test", text(dir.path())], &[]);
    assert_eq!(run.code, 0, "uncovered policies alone do not fail: {}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("coverage: 1 of 12 policies; no case is determined by `buildkite-payments-worker-commands`"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("`platform-admins`"), "{}", run.stdout);
    let run = flowgate(&["policy", "test", "--require-coverage", text(dir.path())], &[]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("11 policies determine no case (--require-coverage)"), "{}", run.stderr);
}

#[test]
fn filter_and_issuers_from_a_gateway_config() {
    let run = flowgate(&["policy", "test", "--filter", "platform admin", text(&repo("policies"))], &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.ends_with("2 passed, 0 failed\n"), "{}", run.stdout);
    let run = flowgate(&["policy", "test", "--filter", "no such case", text(&repo("policies"))], &[]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no test case ran (filter `no such case`)"), "{}", run.stderr);

    // Without `issuers:` the cases need the gateway's config to know what `okta` is.
    let bare = OKTA_DEPLOYER_STARTS.replace("issuers:\n  okta: { preset: okta }\n", "");
    let dir = policies_with_tests(&[("okta.yaml", &bare)]);
    let run = flowgate(&["policy", "test", text(dir.path())], &[]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("no issuer named `okta`"), "{}", run.stdout);
    let config = text(&repo("deploy/flowgate.example.toml")).to_owned();
    let run = flowgate(&["policy", "test", "--config", &config, text(dir.path())], &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("1 passed, 0 failed"), "{}", run.stdout);
}

#[test]
fn explain_shows_principal_resource_context_and_decision() {
    let policies = repo("policies");
    let args = [
        "explain",
        "--policies",
        text(&policies),
        "--issuer",
        "okta",
        "--claims",
        r#"{"sub":"00u-alice","groups":["deployers","oncall"],"email":"alice@acme.example"}"#,
        "--method",
        "StartWorkflowExecution",
        "--namespace",
        "payments",
        "--workflow-type",
        "DeployWorkflow",
        "--workflow-id",
        "deploy-7",
        "--task-queue",
        "deploys",
    ];
    let run = flowgate(&args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for expected in [
        r#"principal  Temporal::User::"okta:00u-alice""#,
        r#"  groups   Temporal::Group::"okta:deployers", Temporal::Group::"okta:oncall""#,
        r#"    email = "alice@acme.example""#,
        r#"action     Temporal::Action::"StartWorkflowExecution" (in Temporal::Action::"write")"#,
        r#"resource   Temporal::Workflow::"payments/deploy-7""#,
        r#"  type = "DeployWorkflow""#,
        r#"  method = "/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution""#,
        "decision   ALLOW (policy set ",
        "  permitted by okta-deployers-start-deploys",
    ] {
        assert!(run.stdout.contains(expected), "missing {expected:?} in\n{}", run.stdout);
    }

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let run = flowgate(&json_args, &[]);
    let explained: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(explained["decision"]["policies"], serde_json::json!(["okta-deployers-start-deploys"]));
    assert_eq!(explained["resource"]["parents"][0]["id"], "payments");

    // A shadow set beside it.
    let shadow = tempfile::tempdir().unwrap();
    std::fs::copy(policies.join("schema.cedarschema"), shadow.path().join("schema.cedarschema")).unwrap();
    std::fs::write(shadow.path().join("freeze.cedar"), "@id(\"freeze\")\nforbid (principal, action, resource);\n")
        .unwrap();
    let mut shadow_args = args.to_vec();
    shadow_args.extend(["--shadow", text(shadow.path())]);
    let run = flowgate(&shadow_args, &[]);
    assert!(run.stdout.contains("shadow     DENY (policy set "), "{}", run.stdout);
    assert!(
        run.stdout.contains("  forbidden by freeze\n  considered: freeze\n  the shadow set disagrees"),
        "{}",
        run.stdout
    );
}

#[test]
fn explain_reads_a_token_by_its_issuer_and_says_what_it_cannot_explain() {
    let encode = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.c2ln",
        encode(serde_json::json!({"alg": "RS256", "kid": "k"})),
        encode(serde_json::json!({"iss": "https://token.actions.githubusercontent.com",
            "sub": "repo:acme/payments:pull_request", "repository": "acme/payments", "event_name": "pull_request"}))
    );
    let config = text(&repo("deploy/flowgate.example.toml")).to_owned();
    let run = flowgate(
        &[
            "explain",
            "--config",
            &config,
            "--token-env",
            "CI_TOKEN",
            "--method",
            "StartWorkflowExecution",
            "--namespace",
            "payments",
            "--workflow-type",
            "DeployWorkflow",
            "--workflow-id",
            "deploy-1",
        ],
        &[("CI_TOKEN", &token)],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("the token's signature is not checked locally"), "{}", run.stderr);
    assert!(
        run.stdout.contains(r#"principal  Temporal::CiJob::"github:repo:acme/payments:pull_request""#),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("decision   DENY"), "{}", run.stdout);
    assert!(run.stdout.contains("  no policy permits it (default deny)"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("considered: github-payments-production-deploys, minted-credentials-within-grant, okta-deployers-start-deploys, platform-admins"),
        "{}",
        run.stdout
    );

    let run = flowgate(
        &[
            "explain",
            "--policies",
            text(&repo("policies")),
            "--issuer",
            "okta",
            "--claims",
            r#"{"sub":"u"}"#,
            "--method",
            "QueryWorkflow",
            "--namespace",
            "payments",
            "--workflow-id",
            "w",
            "--task-queue",
            "q",
        ],
        &[],
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("`QueryWorkflow` requests carry no `task_queue`"), "{}", run.stderr);

    let run = flowgate(
        &[
            "explain",
            "--policies",
            text(&repo("policies")),
            "--issuer",
            "okta",
            "--claims",
            "not json",
            "--method",
            "DescribeNamespace",
        ],
        &[],
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--claims is not a JSON object"), "{}", run.stderr);
}
