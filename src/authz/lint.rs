//! flowgate's own lints: policies that are valid Cedar but cannot do what they say, given what
//! flowgate's requests carry. Warnings, never errors: a lint must be certain, and the set
//! loads either way.

use std::collections::HashMap;
use std::path::PathBuf;

use cedar_policy::{ActionConstraint, EntityUid, PolicyId, PolicySet};

use super::ISSUE_CREDENTIAL;
use super::load::{PolicyProblem, line_column};
use crate::temporal::catalog::{self, MethodSpec};

/// flowgate's own warnings about policies that are valid Cedar but cannot do what they say,
/// because of what flowgate's requests carry. Each is located at the policy's `@id`, and each
/// fires only when it is certain:
///
/// * **`resource.type` on calls without a type.** Only start-style calls
///   (`StartWorkflowExecution`, `SignalWithStartWorkflowExecution`, `ExecuteMultiOperation`)
///   carry a workflow type; a signal, query, terminate or describe names only the execution (the
///   catalog's `workflow_type` path is `None`). A policy whose action scope names only actions
///   whose Workflow requests carry no type (and at least one such action), and whose conditions
///   cannot be satisfied without `resource.type` or `resource has type` being true (a `when`
///   that needs it on every path to true, or an `unless` that reads `resource.type` before it
///   can be false), never applies: a permit grants nothing, a forbid protects nothing. An
///   unconstrained action scope or a group that holds a start-style call is never reported.
/// * **`like` without a wildcard** on a principal tag or attribute, or a resource attribute:
///   the pattern matches only itself, so `==` was meant, or a `*` is missing. A pattern with an
///   escaped `\*` was written with care and is not reported.
/// * **Unanchored `like` on a principal claim** (`principal.getTag(..)`, `principal.sub`,
///   `principal.issuer`): a pattern starting with `*` lets any prefix in, e.g.
///   `principal.getTag("repository") like "*payments"` matches `evil/payments`, a repository
///   of another owner.
pub(crate) fn lint(
    policies: &PolicySet,
    origin: &HashMap<PolicyId, (usize, usize)>,
    sources: &[(PathBuf, String)],
) -> Vec<PolicyProblem> {
    use serde_json::Value;

    /// Whether every evaluation of `expr` that does not fail reads `resource.type` (so it
    /// fails when the resource has none). Unknown shapes answer no: lints must be certain.
    fn reads_type(expr: &Value) -> bool {
        let Some((op, body)) = expr.as_object().and_then(|o| o.iter().next()) else { return false };
        let field = |name: &str| body.get(name).is_some_and(reads_type);
        match op.as_str() {
            "." => (is_var(&body["left"], "resource") && body["attr"] == "type") || field("left"),
            "&&" | "||" | "has" | "like" | "is" => field("left"),
            "!" | "neg" | "isEmpty" => field("arg"),
            "if-then-else" => field("if") || (field("then") && field("else")),
            "==" | "!=" | "in" | "<" | "<=" | ">" | ">=" | "+" | "-" | "*" | "contains" | "containsAll"
            | "containsAny" | "getTag" | "hasTag" => field("left") || field("right"),
            "Set" => body.as_array().is_some_and(|items| items.iter().any(reads_type)),
            "Record" => body.as_object().is_some_and(|fields| fields.values().any(reads_type)),
            "Value" | "Var" | "Slot" => false,
            // Extension functions and methods: every argument is evaluated.
            _ => body.as_array().is_some_and(|args| args.iter().any(reads_type)),
        }
    }

    /// Whether `expr` can be true only if the resource has a `type`.
    fn needs_type(expr: &Value) -> bool {
        if reads_type(expr) {
            return true;
        }
        let Some((op, body)) = expr.as_object().and_then(|o| o.iter().next()) else { return false };
        match op.as_str() {
            "has" => is_var(&body["left"], "resource") && body["attr"] == "type",
            "&&" => needs_type(&body["left"]) || needs_type(&body["right"]),
            "||" => needs_type(&body["left"]) && needs_type(&body["right"]),
            "if-then-else" => needs_type(&body["then"]) && needs_type(&body["else"]),
            _ => false,
        }
    }

    fn is_var(expr: &Value, name: &str) -> bool {
        expr.get("Var").is_some_and(|var| var == name)
    }

    /// The claim or attribute a `like` tests, as written, and whether it is a principal claim.
    fn like_subject(left: &Value) -> Option<(String, bool)> {
        if let Some(get_tag) = left.get("getTag")
            && is_var(&get_tag["left"], "principal")
        {
            let tag = get_tag["right"].get("Value")?.as_str()?;
            return Some((format!("principal.getTag(\"{tag}\")"), true));
        }
        let access = left.get(".")?;
        let attr = access["attr"].as_str()?;
        ["principal", "resource"]
            .into_iter()
            .find(|var| is_var(&access["left"], var))
            .map(|var| (format!("{var}.{attr}"), var == "principal"))
    }

    /// Every `like` of an expression: its left operand and pattern.
    fn likes<'a>(expr: &'a Value, found: &mut Vec<(&'a Value, &'a [Value])>) {
        match expr {
            Value::Object(object) => {
                if let Some(like) = object.get("like")
                    && let Some(pattern) = like["pattern"].as_array()
                {
                    found.push((&like["left"], pattern));
                }
                object.values().for_each(|value| likes(value, found));
            }
            Value::Array(items) => items.iter().for_each(|value| likes(value, found)),
            _ => {}
        }
    }

    /// A pattern as Cedar source, e.g. `"*payments"`.
    fn pattern_source(pattern: &[Value]) -> String {
        let mut out = String::from("\"");
        for element in pattern {
            match element.get("Literal").and_then(Value::as_str) {
                Some(text) => {
                    for c in text.chars() {
                        match c {
                            '*' => out.push_str("\\*"),
                            _ => out.extend(c.escape_debug()),
                        }
                    }
                }
                None => out.push('*'),
            }
        }
        out.push('"');
        out
    }

    use catalog::ResourceSpec::Workflow;
    // Only Workflow resources have a `type`, and only when the request names it.
    let carries_type = |spec: &MethodSpec| matches!(spec.resource, Workflow { workflow_type: Some(_), .. });
    let typeless_workflow = |spec: &MethodSpec| matches!(spec.resource, Workflow { workflow_type: None, .. });
    let actions: HashMap<&str, &MethodSpec> = catalog::all_actions().map(|spec| (spec.name, spec)).collect();
    // The actions a scope entry stands for (a group's members, or itself); `None` for a name
    // flowgate does not know, so nothing is claimed about it.
    let named = |uid: &EntityUid| -> Option<Vec<&MethodSpec>> {
        if uid.type_name().to_string() != "Temporal::Action" {
            return None;
        }
        let name = uid.id().unescaped();
        let members: Vec<&MethodSpec> =
            catalog::all_actions().filter(|spec| spec.access.group() == Some(name)).collect();
        match (members.is_empty(), actions.get(name)) {
            (false, _) => Some(members),
            (true, Some(spec)) => Some(vec![*spec]),
            (true, None) if name == ISSUE_CREDENTIAL => Some(vec![]),
            (true, None) => None,
        }
    };

    let mut ordered: Vec<_> = policies.policies().collect();
    ordered.sort_by_key(|policy| origin.get(policy.id()).copied().unwrap_or_default());
    let mut warnings = Vec::new();
    for policy in ordered {
        let (index, offset) = origin.get(policy.id()).copied().unwrap_or_default();
        let Some((path, text)) = sources.get(index) else { continue };
        let Ok(est) = policy.to_json() else { continue };
        let id = policy.id();
        let mut warn = |message: String| {
            let (line, column) = line_column(text, offset);
            warnings.push(PolicyProblem { file: path.clone(), line: Some(line), column: Some(column), message });
        };

        let scope = match policy.action_constraint() {
            ActionConstraint::Any => vec![],
            ActionConstraint::Eq(action) => vec![action],
            ActionConstraint::In(actions) => actions,
        };
        let resolved: Option<Vec<Vec<&MethodSpec>>> = scope.iter().map(named).collect();
        if let Some(resolved) = resolved
            && !scope.is_empty()
            && !resolved.iter().flatten().any(|spec| carries_type(spec))
            && resolved.iter().flatten().any(|spec| typeless_workflow(spec))
        {
            let conditions = est["conditions"].as_array().map(Vec::as_slice).unwrap_or_default();
            let needs = conditions.iter().any(|clause| match clause["kind"].as_str() {
                Some("when") => needs_type(&clause["body"]),
                Some("unless") => reads_type(&clause["body"]),
                _ => false,
            });
            if needs {
                let names: Vec<String> = scope.iter().map(|uid| format!("`{}`", uid.id().unescaped())).collect();
                let names = match names.split_last() {
                    Some((last, [])) => last.clone(),
                    Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                    None => String::new(),
                };
                warn(format!(
                    "policy `{id}` tests `resource.type` but {names} calls carry no workflow type: it can never apply to them"
                ));
            }
        }

        let mut found = Vec::new();
        for clause in est["conditions"].as_array().into_iter().flatten() {
            likes(&clause["body"], &mut found);
        }
        for (left, pattern) in found {
            let Some((subject, principal_claim)) = like_subject(left) else { continue };
            let source = pattern_source(pattern);
            let wildcards = pattern.iter().filter(|element| element.get("Literal").is_none()).count();
            let escaped_star =
                pattern.iter().any(|element| element["Literal"].as_str().is_some_and(|l| l.contains('*')));
            if wildcards == 0 && !escaped_star {
                warn(format!(
                    "policy `{id}` tests `{subject} like {source}`, a pattern without `*` that matches only itself: write `==` (or add the `*` that was meant)"
                ));
            } else if principal_claim && pattern.first().is_some_and(|element| element.get("Literal").is_none()) {
                warn(format!(
                    "policy `{id}` tests `{subject} like {source}`, a pattern starting with `*`: a claim with any prefix matches it, another owner's included; anchor its start"
                ));
            }
        }
    }
    warnings
}
