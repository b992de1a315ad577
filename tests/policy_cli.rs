//! The policy authoring commands as a user runs them: `flowgate policy validate` (errors,
//! Cedar's warnings, flowgate's lints, `--deny-warnings`) and `flowgate policy fmt [--check]`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use cedar_policy::PolicySet;
use flowgate::authz::PolicyEngine;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn flowgate(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_flowgate")).args(args).output().expect("flowgate runs");
    Run {
        code: output.status.code().expect("flowgate exits"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A policy directory with the repository's schema and `files`.
fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo_policies().join("schema.cedarschema"), dir.path().join("schema.cedarschema")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// A copy of the repository's policy directory.
fn copy_of_repo_policies() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo_policies()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn warnings(run: &Run) -> Vec<&str> {
    run.stderr.lines().filter(|line| line.starts_with("warning: ")).collect()
}

/// Every `//` comment, sorted (the test policies have no `//` inside strings).
fn comments(text: &str) -> Vec<&str> {
    let mut found: Vec<&str> =
        text.lines().filter_map(|line| line.find("//").map(|at| line[at..].trim_end())).collect();
    found.sort_unstable();
    found
}

/// Each policy's `@id` and its meaning: the JSON form of its syntax tree, which does not know
/// about layout or comments (`Policy::to_string` would print the source text as written).
fn meanings(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut meanings = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "cedar") {
            let set = PolicySet::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for policy in set.policies() {
                let id = policy.annotation("id").expect("every policy has an @id").to_owned();
                assert!(meanings.insert(id, policy.to_json().unwrap()).is_none());
            }
        }
    }
    meanings
}

/// The repository's `ci.cedar`, laid out by hand in ways the formatter undoes.
fn badly_formatted_ci() -> String {
    let canonical = std::fs::read_to_string(repo_policies().join("ci.cedar")).unwrap();
    let bad = canonical.replace("\n  ", "\n      ").replace("permit (", "permit(").replace("when\n{", "when {");
    assert_ne!(bad, canonical);
    bad
}

#[test]
fn validate_accepts_the_repository_policies_without_a_warning() {
    let dir = repo_policies();
    let run = flowgate(&["policy", "validate", "--deny-warnings", path_str(&dir)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("policies ok: "), "{}", run.stdout);
    assert_eq!(run.stderr, "", "the example policies trip no Cedar warning and no flowgate lint");
    assert!(PolicyEngine::load(&dir).unwrap().warnings.is_empty());
}

#[test]
fn validate_locates_a_syntax_error() {
    let dir = policy_dir(&[("bad.cedar", "@id(\"a\")\npermit (principal, action, resource)\nwhen { principal. };\n")]);
    let run = flowgate(&["policy", "validate", path_str(dir.path())]);
    assert_eq!(run.code, 1);
    let expected = format!("error: {}:3:19: ", dir.path().join("bad.cedar").display());
    assert!(run.stderr.lines().any(|line| line.starts_with(&expected)), "{expected} in:\n{}", run.stderr);
    assert_eq!(run.stdout, "");
}

#[test]
fn validate_locates_a_strict_validation_error() {
    let text = "@id(\"a\")\npermit (principal, action == Temporal::Action::\"StartWorkflowExecution\", resource)\nwhen { resource.type == \"Deploy\" };\n";
    let dir = policy_dir(&[("typed.cedar", text)]);
    let run = flowgate(&["policy", "validate", path_str(dir.path())]);
    assert_eq!(run.code, 1);
    let expected = format!("error: {}:3:", dir.path().join("typed.cedar").display());
    let line = run.stderr.lines().find(|line| line.starts_with(&expected));
    assert!(line.is_some_and(|l| l.contains("optional attribute `type`")), "{expected} in:\n{}", run.stderr);
}

#[test]
fn a_warning_fails_validate_only_with_deny_warnings() {
    // Cedar's strict validation finds it can never apply (`ImpossiblePolicy`): a Start call's
    // resource is a Workflow, never a Namespace.
    let text = "@id(\"never\")\npermit (principal, action == Temporal::Action::\"StartWorkflowExecution\", resource)\nwhen { resource is Temporal::Namespace };\n";
    let dir = policy_dir(&[("w.cedar", text)]);
    let path = dir.path().join("w.cedar");

    let run = flowgate(&["policy", "validate", path_str(dir.path())]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("policies ok: 1 policies in 1 files"), "{}", run.stdout);
    assert_eq!(
        warnings(&run),
        [format!(
            "warning: {}:1:1: for policy `never`, policy is impossible: the policy expression evaluates to false for all valid requests",
            path.display()
        )]
    );

    let denied = flowgate(&["policy", "validate", "--deny-warnings", path_str(dir.path())]);
    assert_eq!(denied.code, 1);
    assert_eq!(warnings(&denied), warnings(&run));
    assert!(denied.stderr.contains("error: warnings are denied (--deny-warnings)"), "{}", denied.stderr);
}

/// Runs validate on `text` and returns its warnings with the directory replaced by `DIR`.
fn lint_warnings(text: &str) -> Vec<String> {
    let dir = policy_dir(&[("p.cedar", text)]);
    let run = flowgate(&["policy", "validate", path_str(dir.path())]);
    assert_eq!(run.code, 0, "warnings never fail validate: {}", run.stderr);
    let prefix = format!("{}/", dir.path().display());
    warnings(&run).iter().map(|line| line.replace(&prefix, "DIR/")).collect()
}

#[test]
fn lint_a_workflow_type_test_on_calls_that_carry_none() {
    let text = r#"@id("signal-by-type")
permit (principal, action == Temporal::Action::"SignalWorkflowExecution", resource)
when { resource has type && resource.type == "DeployWorkflow" };
@id("forbid-terminate-by-type")
forbid (
  principal,
  action in [Temporal::Action::"TerminateWorkflowExecution", Temporal::Action::"QueryWorkflow"],
  resource
)
when { resource has type && resource.type == "Prod" };
@id("reads-by-type")
permit (principal, action in Temporal::Action::"read", resource)
when { resource has type };
@id("starts-and-signals-by-type")
permit (
  principal,
  action in [Temporal::Action::"SignalWithStartWorkflowExecution", Temporal::Action::"SignalWorkflowExecution"],
  resource
)
when { resource has type && resource.type == "DeployWorkflow" };
@id("writes-by-type")
permit (principal, action in Temporal::Action::"write", resource)
when { resource has type };
@id("any-action-by-type")
permit (principal, action, resource)
when { resource has type };
@id("signal-without-type-or-with-it")
permit (principal, action == Temporal::Action::"SignalWorkflowExecution", resource)
when { !(resource has type) || (resource has type && resource.type == "X") };
@id("signal-unless-type")
permit (principal, action == Temporal::Action::"SignalWorkflowExecution", resource)
unless { resource has type && resource.type == "X" };
"#;
    assert_eq!(
        lint_warnings(text),
        [
            "warning: DIR/p.cedar:1:1: policy `signal-by-type` tests `resource.type` but `SignalWorkflowExecution` calls carry no workflow type: it can never apply to them",
            "warning: DIR/p.cedar:4:1: policy `forbid-terminate-by-type` tests `resource.type` but `TerminateWorkflowExecution` and `QueryWorkflow` calls carry no workflow type: it can never apply to them",
            "warning: DIR/p.cedar:11:1: policy `reads-by-type` tests `resource.type` but `read` calls carry no workflow type: it can never apply to them",
        ]
    );
}

#[test]
fn lint_a_like_pattern_without_a_wildcard() {
    let text = r#"@id("exact-repository")
permit (principal, action, resource)
when { principal.hasTag("repository") && principal.getTag("repository") like "acme/payments" };
@id("exact-id")
permit (principal, action, resource)
when { resource has id && resource.id like "deploy-1" };
@id("prefix-id")
permit (principal, action, resource)
when { resource has id && resource.id like "deploy-*" };
@id("literal-star")
permit (principal, action, resource)
when { resource has id && resource.id like "deploy-\*" };
"#;
    assert_eq!(
        lint_warnings(text),
        [
            r#"warning: DIR/p.cedar:1:1: policy `exact-repository` tests `principal.getTag("repository") like "acme/payments"`, a pattern without `*` that matches only itself: write `==` (or add the `*` that was meant)"#,
            r#"warning: DIR/p.cedar:4:1: policy `exact-id` tests `resource.id like "deploy-1"`, a pattern without `*` that matches only itself: write `==` (or add the `*` that was meant)"#,
        ]
    );
}

#[test]
fn lint_an_unanchored_pattern_on_a_principal_claim() {
    let text = r#"@id("any-owner")
permit (principal, action, resource)
when { principal.hasTag("repository") && principal.getTag("repository") like "*payments" };
@id("any-repository")
permit (principal, action, resource)
when { principal.sub like "*:environment:production" };
@id("one-owner")
permit (principal, action, resource)
when { principal.hasTag("repository") && principal.getTag("repository") like "acme/*" };
@id("workflow-suffix")
permit (principal, action, resource)
when { resource has id && resource.id like "*-deploy" };
"#;
    assert_eq!(
        lint_warnings(text),
        [
            r#"warning: DIR/p.cedar:1:1: policy `any-owner` tests `principal.getTag("repository") like "*payments"`, a pattern starting with `*`: a claim with any prefix matches it, another owner's included; anchor its start"#,
            r#"warning: DIR/p.cedar:4:1: policy `any-repository` tests `principal.sub like "*:environment:production"`, a pattern starting with `*`: a claim with any prefix matches it, another owner's included; anchor its start"#,
        ]
    );
}

#[test]
fn fmt_check_passes_on_the_repository_policies() {
    let run = flowgate(&["policy", "fmt", "--check", path_str(&repo_policies())]);
    assert_eq!(run.code, 0, "run `flowgate policy fmt policies`:\n{}{}", run.stdout, run.stderr);
    assert_eq!(run.stdout, "");
}

#[test]
fn fmt_check_shows_a_diff_and_writes_nothing() {
    let dir = copy_of_repo_policies();
    let path = dir.path().join("ci.cedar");
    let bad = badly_formatted_ci();
    std::fs::write(&path, &bad).unwrap();

    let run = flowgate(&["policy", "fmt", "--check", path_str(dir.path())]);
    assert_eq!(run.code, 1);
    let header = format!("--- {0}\n+++ {0}\n@@ -", path.display());
    assert!(run.stdout.starts_with(&header), "one diff, of ci.cedar only:\n{}", run.stdout);
    assert_eq!(run.stdout.matches("\n+++ ").count(), 1, "{}", run.stdout);
    assert!(run.stdout.contains("\n-permit(\n-      principal is Temporal::CiJob,\n"), "{}", run.stdout);
    assert!(run.stdout.contains("\n+permit (\n+  principal is Temporal::CiJob,\n"), "{}", run.stdout);
    assert!(run.stderr.contains("1 policy file not formatted"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), bad, "--check writes nothing");
}

#[test]
fn fmt_rewrites_a_file_keeping_its_comments_meaning_and_permissions() {
    let dir = copy_of_repo_policies();
    let path = dir.path().join("ci.cedar");
    let bad = badly_formatted_ci();
    std::fs::write(&path, &bad).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = meanings(dir.path());
    let engine_before = PolicyEngine::load(dir.path()).unwrap();

    let run = flowgate(&["policy", "fmt", path_str(dir.path())]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, format!("{}\n", path.display()), "only the changed file is listed");

    let formatted = std::fs::read_to_string(&path).unwrap();
    let canonical = std::fs::read_to_string(repo_policies().join("ci.cedar")).unwrap();
    assert_eq!(formatted, canonical);
    assert_eq!(comments(&formatted), comments(&bad));
    assert_eq!(meanings(dir.path()), before);
    let engine_after = PolicyEngine::load(dir.path()).unwrap();
    assert_eq!(engine_after.policy_count(), engine_before.policy_count());
    assert!(engine_after.warnings.is_empty());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file is left behind: {leftovers:?}");

    let again = flowgate(&["policy", "fmt", "--check", path_str(dir.path())]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    let rerun = flowgate(&["policy", "fmt", path_str(dir.path())]);
    assert_eq!((rerun.code, rerun.stdout.as_str()), (0, ""), "a formatted directory is left alone");
}

#[test]
fn fmt_never_touches_a_file_that_does_not_parse() {
    let broken = "// keep me\n@id(\"a\")\npermit (principal, action, resource)\nwhen { principal. };\n";
    let unformatted = "@id(\"b\") permit(principal,action,resource);\n";
    let dir = policy_dir(&[("broken.cedar", broken), ("other.cedar", unformatted)]);
    let broken_path = dir.path().join("broken.cedar");
    let other_path = dir.path().join("other.cedar");
    let expected = format!("error: {}:4:19: ", broken_path.display());

    for args in [&["policy", "fmt", "--check"][..], &["policy", "fmt"][..]] {
        let run = flowgate(&[args, &[path_str(dir.path())]].concat());
        assert_eq!(run.code, 1, "{args:?}");
        assert!(run.stderr.lines().any(|line| line.starts_with(&expected)), "{expected} in:\n{}", run.stderr);
        assert!(run.stderr.contains("1 policy file could not be formatted"), "{}", run.stderr);
        assert_eq!(std::fs::read_to_string(&broken_path).unwrap(), broken, "{args:?}");
    }
    // The other file is still formatted: one bad file does not hold up the rest.
    assert_eq!(std::fs::read_to_string(&other_path).unwrap(), "@id(\"b\")\npermit (principal, action, resource);\n");
}

#[test]
fn fmt_refuses_a_directory_without_policies() {
    let dir = tempfile::tempdir().unwrap();
    let run = flowgate(&["policy", "fmt", "--check", path_str(dir.path())]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("has no `.cedar` files"), "{}", run.stderr);
}
