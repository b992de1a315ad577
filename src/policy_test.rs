//! `flowgate policy test`: test cases stored next to the policies, run like unit tests.
//!
//! A policy directory's `tests/*.yaml` files each hold cases: a principal given the way a
//! person thinks of it (an issuer name and token claims), a Temporal call (method, namespace,
//! workflow type, task queue, …), the expected decision and, optionally, the exact set of
//! policies that must determine it. Every case goes through [`explain`], so it is decided
//! exactly as the gateway would decide a call with a token carrying those claims.
//!
//! ```yaml
//! issuers:                                  # or `--config flowgate.toml` for the gateway's
//!   github: { preset: github-actions }
//!   okta: { preset: okta }
//! cases:
//!   - name: the production environment starts a deploy
//!     principal:
//!       issuer: github
//!       claims_file: claims/github-actions.json   # relative to the yaml file; optional
//!       claims: { environment: production }       # merged over claims_file
//!     call: { method: StartWorkflowExecution, namespace: payments, workflow_type: DeployWorkflow }
//!     expect: allow
//!     policies: [github-payments-production-deploys]
//! ```
//!
//! The report says which policies determined no case at all: a policy nobody tests is a
//! policy nobody will notice breaking.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::authz::{PolicyEngine, PolicyError};
use crate::explain::{CallSpec, ExplainError, IssuerProfile, Issuers, Verdict, explain};

/// Where the test files live, under the policy directory.
pub const TESTS_DIR: &str = "tests";

/// Why the tests could not run at all (a failing case is not an error).
#[derive(Debug, thiserror::Error)]
pub enum PolicyTestError {
    #[error(transparent)]
    Policies(#[from] PolicyError),
    #[error("no test files (`*.yaml`) in `{0}`")]
    NoTests(PathBuf),
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}{location}: {message}")]
    Syntax { path: PathBuf, location: String, message: String },
    #[error("{path}: {source}")]
    Issuers { path: PathBuf, source: ExplainError },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    issuers: BTreeMap<String, IssuerProfile>,
    cases: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    principal: PrincipalSpec,
    call: CallSpec,
    expect: Expected,
    /// The exact determining policies; not checked when absent.
    #[serde(default)]
    policies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalSpec {
    issuer: String,
    #[serde(default)]
    claims_file: Option<PathBuf>,
    #[serde(default)]
    claims: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expected {
    Allow,
    Deny,
}

impl Expected {
    fn as_str(self) -> &'static str {
        match self {
            Expected::Allow => "allow",
            Expected::Deny => "deny",
        }
    }
}

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The decision differs: what was expected and what was decided, line by line.
    Failed {
        expected: Vec<String>,
        got: Vec<String>,
    },
    /// The case itself is wrong (unknown issuer, a field the method does not carry, …).
    Broken(String),
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub outcome: Outcome,
}

/// Every case's result, and the coverage of the policy set.
#[derive(Debug)]
pub struct Report {
    pub results: Vec<CaseResult>,
    /// Policies that determined no case (sorted).
    pub uncovered: Vec<String>,
    pub policy_count: usize,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.outcome == Outcome::Passed).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// The report for programs (`-o json`): every case with its outcome, and the coverage.
    pub fn to_json(&self) -> serde_json::Value {
        let cases: Vec<_> = self
            .results
            .iter()
            .map(|result| {
                let mut case = serde_json::json!({"file": result.file, "name": result.name});
                match &result.outcome {
                    Outcome::Passed => case["outcome"] = "passed".into(),
                    Outcome::Failed { expected, got } => {
                        case["outcome"] = "failed".into();
                        case["expected"] = serde_json::json!(expected);
                        case["got"] = serde_json::json!(got);
                    }
                    Outcome::Broken(message) => {
                        case["outcome"] = "error".into();
                        case["message"] = message.as_str().into();
                    }
                }
                case
            })
            .collect();
        serde_json::json!({
            "passed": self.passed(),
            "failed": self.failed(),
            "cases": cases,
            "policies": self.policy_count,
            "uncovered": self.uncovered,
        })
    }

    /// The report as a test runner prints it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut current: Option<&Path> = None;
        for result in &self.results {
            if current != Some(result.file.as_path()) {
                let _ = writeln!(out, "{}", result.file.display());
                current = Some(&result.file);
            }
            match &result.outcome {
                Outcome::Passed => {
                    let _ = writeln!(out, "  ok     {}", result.name);
                }
                Outcome::Failed { expected, got } => {
                    let _ = writeln!(out, "  FAIL   {}", result.name);
                    for line in expected {
                        let _ = writeln!(out, "         - expected {line}");
                    }
                    for line in got {
                        let _ = writeln!(out, "         + got      {line}");
                    }
                }
                Outcome::Broken(message) => {
                    let _ = writeln!(out, "  ERROR  {}", result.name);
                    let _ = writeln!(out, "         {message}");
                }
            }
        }
        let covered = self.policy_count - self.uncovered.len();
        if self.uncovered.is_empty() {
            let _ = writeln!(out, "coverage: every policy ({covered}) determined at least one case");
        } else {
            let names = self.uncovered.iter().map(|id| format!("`{id}`")).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                out,
                "coverage: {covered} of {} policies; no case is determined by {names}",
                self.policy_count
            );
        }
        let _ = writeln!(out, "{} passed, {} failed", self.passed(), self.failed());
        out
    }
}

/// Runs the cases in `dir/tests/*.yaml` against the policies of `dir`. `config_issuers` (from
/// a gateway config) add to or replace the issuers the test files describe. Only cases whose
/// name contains `filter` run.
pub fn run(dir: &Path, config_issuers: Option<&Issuers>, filter: Option<&str>) -> Result<Report, PolicyTestError> {
    let engine = PolicyEngine::load(dir)?;
    let tests_dir = dir.join(TESTS_DIR);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&tests_dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml") && path.is_file())
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(PolicyTestError::Read { path: tests_dir, source }),
    };
    files.sort();
    if files.is_empty() {
        return Err(PolicyTestError::NoTests(tests_dir));
    }

    let mut results = Vec::new();
    let mut determining: BTreeSet<String> = BTreeSet::new();
    for path in files {
        let text =
            std::fs::read_to_string(&path).map_err(|source| PolicyTestError::Read { path: path.clone(), source })?;
        let file = parse(&path, &text)?;
        let issuers = Issuers::from_profiles(&file.issuers)
            .map_err(|source| PolicyTestError::Issuers { path: path.clone(), source })?;
        let issuers = match config_issuers {
            Some(config) => issuers.merge(config.clone()),
            None => issuers,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        for case in file.cases.iter().filter(|c| filter.is_none_or(|f| c.name.contains(f))) {
            let outcome = match decide(&engine, &issuers, base, case) {
                Ok(verdict) => {
                    if verdict.refused.is_none() {
                        determining.extend(verdict.policies.iter().cloned());
                    }
                    compare(case, &verdict)
                }
                Err(message) => Outcome::Broken(message),
            };
            results.push(CaseResult { file: path.clone(), name: case.name.clone(), outcome });
        }
    }
    let uncovered = engine.policy_ids().into_iter().filter(|id| !determining.contains(id)).collect();
    Ok(Report { results, uncovered, policy_count: engine.policy_count() })
}

/// Reads one test file without running its cases: the number of cases it holds. This is the
/// loader `run` applies to every file (the fuzz tests drive it directly, without loading a
/// policy set for each input).
pub fn check_file(path: &Path, text: &str) -> Result<usize, PolicyTestError> {
    parse(path, text).map(|file| file.cases.len())
}

/// Parses a test file. serde_yaml_ng refuses nesting deeper than 128 and alias expansion past
/// its repetition limit, so a hostile file is an error here, not a stack overflow or a bomb.
fn parse(path: &Path, text: &str) -> Result<TestFile, PolicyTestError> {
    serde_yaml_ng::from_str(text).map_err(|error| {
        let location = error.location().map(|l| (l.line(), l.column()));
        let message = error.to_string();
        // The location goes in front, `file:line:col:` like every other error.
        let message = match location {
            Some((line, column)) => message.trim_end_matches(&format!(" at line {line} column {column}")).to_owned(),
            None => message,
        };
        PolicyTestError::Syntax {
            path: path.to_owned(),
            location: location.map(|(line, column)| format!(":{line}:{column}")).unwrap_or_default(),
            message,
        }
    })
}

fn decide(engine: &PolicyEngine, issuers: &Issuers, base: &Path, case: &TestCase) -> Result<Verdict, String> {
    let mut claims = match &case.principal.claims_file {
        Some(file) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            serde_json::from_str::<Map<String, Value>>(&text)
                .map_err(|e| format!("`{}` is not a JSON object: {e}", path.display()))?
        }
        None => Map::new(),
    };
    claims.extend(case.principal.claims.clone());
    let principal = issuers.principal(&case.principal.issuer, &claims).map_err(|e| e.to_string())?;
    let ask = case.call.resolve().map_err(|e| e.to_string())?;
    Ok(explain(engine, None, &principal, &ask).decision)
}

fn compare(case: &TestCase, verdict: &Verdict) -> Outcome {
    let decision_ok = verdict.decision == case.expect.as_str();
    let policies_ok = case.policies.as_ref().is_none_or(|wanted| {
        let mut wanted = wanted.clone();
        wanted.sort();
        wanted == verdict.policies && verdict.refused.is_none()
    });
    if decision_ok && policies_ok {
        return Outcome::Passed;
    }
    let describe = |decision: &str, policies: Option<&[String]>| match policies {
        None => decision.to_owned(),
        Some([]) => format!("{decision}, determined by no policy"),
        Some(ids) => format!("{decision}, determined by {}", ids.join(", ")),
    };
    let expected = vec![describe(case.expect.as_str(), case.policies.as_deref())];
    let mut got = vec![describe(verdict.decision, Some(&verdict.policies))];
    if let Some(refused) = &verdict.refused {
        got[0] = format!("{}, refused before any policy: {refused}", verdict.decision);
    }
    got.extend(verdict.errors.iter().map(|e| format!("error: {e}")));
    Outcome::Failed { expected, got }
}
