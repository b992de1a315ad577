//! `flowgate audit replay`: real traffic decided again under another policy set.
//!
//! A decision record names its principal by `principal.ref`, a snapshot written once per token
//! and log file (`kind` `principal`: type, id, issuer, sub, groups and every tag), and carries
//! the call's resource and context (`resource`, and `questions` when the request implied more
//! than its RPC, each with `implied_by`). That is everything Cedar saw, so each call can be asked
//! again of a proposed policy set: "this change would have denied 37 calls of
//! `github:acme/payments@prod` last week".
//!
//! What is replayed: calls decided by policies (allowed, or refused by a policy: `refused_by`
//! `policy`). Calls refused by flowgate's own checks (unauthenticated, over a budget, outside a
//! minted credential's grant, a sticky queue or task token not the caller's) are counted as not
//! replayable, as are records whose snapshot is not among the files (rotated away: pass the
//! older files too). A refused RPC asked nothing more: when a replay allows it, the questions
//! its request implied (`unasked_questions`) are still unanswered, and the change says so.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::chain::read_lines;
use super::query::Filter;
use crate::authn::Principal;
use crate::authz::PolicyEngine;
use crate::config::PrincipalKind;
use crate::temporal::catalog::{self, MethodSpec};
use crate::temporal::{Call, Resource, ResourceKind};

/// A call whose decision would change.
#[derive(Debug, Clone)]
pub struct Changed {
    /// The record as written.
    pub record: Value,
    /// The decision now: `allow` or `deny`.
    pub now: &'static str,
    /// The policies that determined it now.
    pub reasons: Vec<String>,
    /// For a refused RPC now allowed: the questions its request implied, which were not asked
    /// then (so not now either): the RPC alone would be allowed.
    pub unasked: usize,
}

/// What replaying found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Calls decided again.
    pub replayed: usize,
    /// Calls that could not be (see the module doc), by why.
    pub skipped: BTreeMap<&'static str, usize>,
    pub changed: Vec<Changed>,
}

impl Replayed {
    /// Changed decisions by (principal, action, was → now).
    pub fn summary(&self) -> BTreeMap<(String, String, String), usize> {
        let mut out = BTreeMap::new();
        for changed in &self.changed {
            let principal = changed.record["principal"]["id"].as_str().unwrap_or("-").to_owned();
            let action = changed.record["action"].as_str().unwrap_or("-").to_owned();
            let was = changed.record["decision"].as_str().unwrap_or("-");
            *out.entry((principal, action, format!("{was} -> {}", changed.now))).or_default() += 1;
        }
        out
    }
}

fn kind_of(name: &str) -> Option<PrincipalKind> {
    Some(match name {
        "User" => PrincipalKind::User,
        "Service" => PrincipalKind::Service,
        "CiJob" => PrincipalKind::CiJob,
        "Worker" => PrincipalKind::Worker,
        _ => return None,
    })
}

/// The principal a snapshot describes, as policies saw it.
fn principal_of(snapshot: &Value) -> Option<Principal> {
    let p = snapshot.get("principal")?;
    let kind = kind_of(p.get("type")?.as_str()?)?;
    let groups = p.get("groups")?.as_array()?.iter().filter_map(|g| Some(g.as_str()?.to_owned())).collect();
    let tags =
        p.get("tags")?.as_object()?.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect();
    let issuer = p.get("issuer")?.as_str()?;
    let sub = p.get("sub")?.as_str()?;
    // Expiry plays no part in a decision.
    Some(Principal::new(kind, issuer, sub, groups, tags, SystemTime::now() + Duration::from_secs(3600)))
}

fn resource_kind(name: &str) -> Option<ResourceKind> {
    Some(match name {
        "Cluster" => ResourceKind::Cluster,
        "Namespace" => ResourceKind::Namespace,
        "Workflow" => ResourceKind::Workflow,
        "TaskQueue" => ResourceKind::TaskQueue,
        "Schedule" => ResourceKind::Schedule,
        "NexusEndpoint" => ResourceKind::NexusEndpoint,
        _ => return None,
    })
}

/// The call a recorded resource describes (its context names included).
fn call_of(resource: &Value) -> Option<Call> {
    let text = |key: &str| resource.get(key).and_then(Value::as_str).map(str::to_owned);
    let resource_fields = Resource {
        kind: resource_kind(resource.get("type")?.as_str()?)?,
        namespace: text("namespace"),
        workflow_id: text("workflow_id"),
        workflow_type: text("workflow_type"),
        task_queue: text("task_queue"),
        schedule_id: text("schedule_id"),
        endpoint: text("endpoint"),
    };
    Some(Call {
        signal_name: text("signal_name"),
        query_type: text("query_type"),
        update_name: text("update_name"),
        activity_type: text("activity_type"),
        nexus_service: text("nexus_service"),
        nexus_operation: text("nexus_operation"),
        implied_by: resource.get("implied_by").and_then(Value::as_str).map(|name| catalog::rpc(name).name),
        sticky_queue: text("sticky_queue"),
        namespace_id: text("namespace_id"),
        ..Call::new(resource_fields)
    })
}

/// The action a question names: an RPC, or a worker command's action.
fn action_spec(name: &str) -> &'static MethodSpec {
    if name == catalog::ATTACH_TO_EXISTING_WORKFLOW.name {
        return &catalog::ATTACH_TO_EXISTING_WORKFLOW;
    }
    catalog::command_action(name).unwrap_or_else(|| catalog::rpc(name))
}

/// Decides `record` again with `engine`: whether every question it asked is allowed, and the
/// policies that decided (those of the first refused question, or all that allowed).
fn decide_again(engine: &PolicyEngine, principal: &Principal, record: &Value) -> Option<(bool, Vec<String>)> {
    let method = record.get("method")?.as_str()?;
    let questions: Vec<(&'static MethodSpec, Call)> = match record.get("questions").and_then(Value::as_array) {
        Some(questions) if !questions.is_empty() => {
            let mut out = Vec::with_capacity(questions.len());
            for question in questions {
                // Refused before policies (outside a credential's grant): not replayable.
                if question.get("refused").is_some_and(|r| !r.is_null()) {
                    return None;
                }
                out.push((action_spec(question.get("action")?.as_str()?), call_of(question.get("resource")?)?));
            }
            out
        }
        _ => vec![(catalog::lookup(method), call_of(record.get("resource")?)?)],
    };
    let mut allowed_by = Vec::new();
    for (spec, call) in &questions {
        let decision = engine.authorize(principal, spec, method, call);
        if !decision.allowed {
            return Some((false, decision.reasons.clone()));
        }
        allowed_by.extend(decision.reasons.iter().cloned());
    }
    allowed_by.sort();
    allowed_by.dedup();
    Some((true, allowed_by))
}

/// Replays the grpc decisions of `files` that match `filter` under `engine`.
pub fn replay(files: &[PathBuf], filter: &Filter, engine: &PolicyEngine) -> std::io::Result<Replayed> {
    let matched = super::query::query(files, filter)?;
    // The snapshots of every file given: a record's may be in an earlier file.
    let mut snapshots: HashMap<String, Principal> = HashMap::new();
    for path in files {
        for line in read_lines(path)? {
            let line = line?;
            // Cheap before parsing: only snapshot lines.
            const SNAPSHOT: &[u8] = br#""kind":"principal""#;
            if !line.windows(SNAPSHOT.len()).any(|w| w == SNAPSHOT) {
                continue;
            }
            if let Ok(snapshot) = serde_json::from_slice::<Value>(&line)
                && snapshot.get("kind").and_then(Value::as_str) == Some("principal")
                && let (Some(reference), Some(principal)) =
                    (snapshot.get("ref").and_then(Value::as_str), principal_of(&snapshot))
            {
                snapshots.insert(reference.to_owned(), principal);
            }
        }
    }
    let mut out = Replayed::default();
    let mut skip = |why: &'static str| *out.skipped.entry(why).or_default() += 1;
    let mut changed = Vec::new();
    let mut replayed = 0;
    for record in matched {
        if record.get("kind").and_then(Value::as_str) != Some("grpc") {
            skip("not a gRPC call (a token exchange)");
            continue;
        }
        let denied = record.get("decision").and_then(Value::as_str) == Some("deny");
        if denied && record.get("refused_by").and_then(Value::as_str) != Some("policy") {
            skip("refused by flowgate's own checks, not by a policy");
            continue;
        }
        let has_questions = record.get("questions").and_then(Value::as_array).is_some_and(|q| !q.is_empty());
        let method = record.get("method").and_then(Value::as_str).unwrap_or_default();
        if !has_questions && catalog::lookup(method).task_token.is_some() && denied {
            // Its record names the task the token was for; the gateway asked about the RPC alone.
            skip("a task-token call refused before its token's questions were asked");
            continue;
        }
        let Some(reference) = record.pointer("/principal/ref").and_then(Value::as_str) else {
            skip("no principal snapshot (unauthenticated, public, or written before snapshots)");
            continue;
        };
        let Some(principal) = snapshots.get(reference) else {
            skip("its principal snapshot is not in the files given");
            continue;
        };
        let Some((allowed, reasons)) = decide_again(engine, principal, &record) else {
            skip("refused before any policy was asked");
            continue;
        };
        replayed += 1;
        if allowed == denied {
            let unasked = record.get("unasked_questions").and_then(Value::as_u64).unwrap_or(0) as usize;
            changed.push(Changed { record, now: if allowed { "allow" } else { "deny" }, reasons, unasked });
        }
    }
    out.replayed = replayed;
    out.changed = changed;
    Ok(out)
}
