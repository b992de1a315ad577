//! `flowgate audit query`: the decisions of a log that match some filters, each with its outcome.
//!
//! Answers the auditor's questions from the files themselves (rotated and gzipped ones too,
//! in the order given), with no index: "what did `github:acme/payments@prod` do yesterday"
//! (`--principal … --since 2026-12-05 --until 2026-12-06`, or `--since 24h`), "who touched
//! workflow `deploy-123`" (`--workflow-id deploy-123`), "who started run X" (`--run-id X`: the
//! outcome with that run id names its decision).
//!
//! A principal matches by its id (`github:repo:acme/payments:environment:prod`) or by the
//! identity flowgate stamped into Temporal's history for it (`principal.identity`), either
//! exactly or with `*` wildcards. A workflow id matches the call's resource or any question it
//! implied (a worker's child workflow, a start that terminated another run).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::chain::read_lines;

/// What to look for; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub principal: Option<String>,
    pub workflow_id: Option<String>,
    pub run_id: Option<String>,
    pub namespace: Option<String>,
    pub action: Option<String>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
}

/// A point in time on the command line: RFC 3339 (`2026-12-05T10:00:00Z`), a day
/// (`2026-12-05`, midnight UTC), or a duration before `now` (`24h`, `7d`, `90m`).
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(&format!("{text}T00:00:00")) {
        return Ok(at);
    }
    match humantime::parse_duration(text) {
        Ok(ago) => now.checked_sub(ago).ok_or_else(|| format!("`{text}` is before the epoch")),
        Err(_) => Err(format!("`{text}` is not a time: use RFC 3339, a day (`2026-12-05`) or a duration ago (`24h`)")),
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(mut text) = text.strip_prefix(head) else { return false };
            loop {
                if glob(rest, text) {
                    return true;
                }
                let mut chars = text.chars();
                if chars.next().is_none() {
                    return false;
                }
                text = chars.as_str();
            }
        }
    }
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |value, key| value.get(key))?.as_str()
}

fn timestamp(record: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(record.get("ts")?.as_str()?).ok()
}

impl Filter {
    fn matches(&self, record: &Value, runs: &HashSet<String>) -> bool {
        if let Some(pattern) = &self.principal {
            let id = str_at(record, &["principal", "id"]);
            let identity = str_at(record, &["principal", "identity"]);
            if ![id, identity].into_iter().flatten().any(|name| glob(pattern, name)) {
                return false;
            }
        }
        let resources = || {
            let questions = record.get("questions").and_then(Value::as_array).into_iter().flatten();
            record.get("resource").into_iter().chain(questions.filter_map(|q| q.get("resource")))
        };
        if let Some(id) = &self.workflow_id
            && !resources().any(|r| r.get("workflow_id").and_then(Value::as_str) == Some(id))
        {
            return false;
        }
        if let Some(namespace) = &self.namespace
            && !resources().any(|r| r.get("namespace").and_then(Value::as_str) == Some(namespace))
        {
            return false;
        }
        if let Some(action) = &self.action
            && record.get("action").and_then(Value::as_str) != Some(action)
        {
            return false;
        }
        if let Some(decision) = &self.decision
            && record.get("decision").and_then(Value::as_str) != Some(decision)
        {
            return false;
        }
        if self.run_id.is_some()
            && !record.get("decision_id").and_then(Value::as_str).is_some_and(|id| runs.contains(id))
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(at) = timestamp(record) else { return false };
            if self.since.is_some_and(|since| at < since) || self.until.is_some_and(|until| at >= until) {
                return false;
            }
        }
        true
    }
}

/// The decisions of `files` that match `filter`, in the files' order, each with its outcome
/// (`"outcome"`, when the call went upstream and its outcome is in the files).
pub fn query(files: &[PathBuf], filter: &Filter) -> std::io::Result<Vec<Value>> {
    let records = || {
        files.iter().map(|path| read_lines(path)).map(|lines| {
            lines.map(|lines| {
                lines.filter_map(|line| match line {
                    Ok(line) => serde_json::from_slice::<Value>(&line).ok().map(Ok),
                    Err(error) => Some(Err(error)),
                })
            })
        })
    };
    // A run id is named by an outcome, which follows its decision: find those decisions first.
    let mut runs = HashSet::new();
    if let Some(run_id) = &filter.run_id {
        for lines in records() {
            for record in lines? {
                let record = record?;
                if record.get("kind").and_then(Value::as_str) == Some("outcome")
                    && record.get("run_id").and_then(Value::as_str) == Some(run_id)
                    && let Some(id) = record.get("decision_id").and_then(Value::as_str)
                {
                    runs.insert(id.to_owned());
                }
            }
        }
    }
    let mut found: Vec<Value> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for lines in records() {
        for record in lines? {
            let record = record?;
            match record.get("kind").and_then(Value::as_str) {
                Some("outcome") => {
                    let at = record.get("decision_id").and_then(Value::as_str).and_then(|id| index.get(id));
                    if let Some(&at) = at {
                        found[at]["outcome"] = record;
                    }
                }
                Some("grpc" | "token_exchange") if filter.matches(&record, &runs) => {
                    if let Some(id) = record.get("decision_id").and_then(Value::as_str) {
                        index.insert(id.to_owned(), found.len());
                    }
                    found.push(record);
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

/// One line per decision: when, what was decided, who, on what, and what Temporal answered.
pub fn text_line(record: &Value) -> String {
    let get = |path: &[&str]| str_at(record, path).unwrap_or("-");
    let resource = record.get("resource");
    let on = |key: &str| resource.and_then(|r| r.get(key)).and_then(Value::as_str);
    let mut target = on("namespace").unwrap_or("-").to_owned();
    for key in ["workflow_id", "task_queue", "schedule_id"] {
        if let Some(value) = on(key) {
            target.push('/');
            target.push_str(value);
        }
    }
    if let Some(kind) = on("workflow_type") {
        target.push_str(&format!(" ({kind})"));
    }
    let who = str_at(record, &["principal", "identity"]).or(str_at(record, &["principal", "id"])).unwrap_or("-");
    let reasons: Vec<&str> =
        record.get("reasons").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let outcome = match record.get("outcome") {
        Some(outcome) => {
            let status = outcome.get("status").and_then(Value::as_u64).unwrap_or(2);
            let mut text = if status == 0 { " -> OK".to_owned() } else { format!(" -> status {status}") };
            if let Some(run) = outcome.get("run_id").and_then(Value::as_str) {
                text.push_str(&format!(" run {run}"));
            }
            text
        }
        None => String::new(),
    };
    format!(
        "{} {:5} {} {} {} [{}] {}{}",
        get(&["ts"]),
        get(&["decision"]),
        get(&["action"]),
        who,
        target,
        reasons.join(", "),
        get(&["decision_id"]),
        outcome
    )
}

/// `Duration` from whole days, for `--since 7d` style help texts and tests.
pub const DAY: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::DecisionLog;
    use serde_json::json;

    #[test]
    fn globs_match_like_shells() {
        assert!(glob("github:*", "github:repo:acme/payments"));
        assert!(glob("*payments*", "github:repo:acme/payments:environment:prod"));
        assert!(glob("okta:alice", "okta:alice"));
        assert!(!glob("okta:alice", "okta:alice2"));
        assert!(!glob("github:*:prod", "github:repo:x:environment:dev"));
    }

    #[test]
    fn times_are_rfc3339_days_or_durations_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10 * 24 * 3600);
        assert_eq!(parse_time("1970-01-02", now).unwrap(), SystemTime::UNIX_EPOCH + DAY);
        assert_eq!(
            parse_time("1970-01-01T01:00:00Z", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(3600)
        );
        assert_eq!(parse_time("7d", now).unwrap(), SystemTime::UNIX_EPOCH + 3 * DAY);
        assert!(parse_time("yesterday-ish", now).unwrap_err().contains("`yesterday-ish`"));
    }

    fn decision(id: &str, ts: &str, principal: &str, workflow: &str, decision: &str) -> Value {
        let identity = if principal.starts_with("github:") { "github:acme/payments@prod" } else { "x via flowgate" };
        json!({"ts": ts, "decision_id": id, "kind": "grpc", "decision": decision, "reasons": ["p"],
               "principal": {"type": "CiJob", "id": principal, "issuer": "github", "identity": identity},
               "action": "StartWorkflowExecution",
               "resource": {"type": "Workflow", "namespace": "payments", "workflow_id": workflow}})
    }

    #[tokio::test]
    async fn decisions_are_found_by_principal_workflow_run_and_time_with_their_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::open(&path).unwrap();
        let gh = "github:repo:acme/payments:environment:prod";
        log.write(&decision("d1", "2026-12-05T10:00:00Z", gh, "deploy-123", "allow")).await.unwrap();
        log.write(
            &json!({"ts": "2026-12-05T10:00:01Z", "kind": "outcome", "decision_id": "d1", "status": 0, "run_id": "r1"}),
        )
        .await
        .unwrap();
        log.write(&decision("d2", "2026-12-06T09:00:00Z", "okta:alice", "deploy-123", "deny")).await.unwrap();
        log.write(&decision("d3", "2026-12-06T09:30:00Z", gh, "deploy-456", "allow")).await.unwrap();
        let ids = |filter: Filter| -> Vec<String> {
            query(std::slice::from_ref(&path), &filter)
                .unwrap()
                .iter()
                .map(|r| r["decision_id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids(Filter { workflow_id: Some("deploy-123".into()), ..Filter::default() }), ["d1", "d2"]);
        assert_eq!(
            ids(Filter { principal: Some("github:acme/payments@prod".into()), ..Filter::default() }),
            ["d1", "d3"]
        );
        assert_eq!(ids(Filter { principal: Some("okta:*".into()), ..Filter::default() }), ["d2"]);
        assert_eq!(ids(Filter { run_id: Some("r1".into()), ..Filter::default() }), ["d1"]);
        let day = |d: &str| parse_time(d, SystemTime::now()).unwrap();
        let yesterday = Filter {
            principal: Some(gh.into()),
            since: Some(day("2026-12-05")),
            until: Some(day("2026-12-06")),
            ..Filter::default()
        };
        assert_eq!(ids(yesterday), ["d1"]);
        assert_eq!(ids(Filter { decision: Some("deny".into()), ..Filter::default() }), ["d2"]);
        let found = query(&[path], &Filter { run_id: Some("r1".into()), ..Filter::default() }).unwrap();
        assert_eq!(found[0]["outcome"]["run_id"], "r1");
        assert!(text_line(&found[0]).contains("-> OK run r1"), "{}", text_line(&found[0]));
    }
}
