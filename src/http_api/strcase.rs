//! The name conversions Temporal's JSON reading uses, ported byte for byte from Go.
//!
//! * [`to_screaming_snake`]: `strcase.ToScreamingSnake` from api-go's `internal/strcase`, which
//!   Temporal's protojson fork applies to `EnumName + "_" + s` to accept short enum spellings
//!   (`"AllowDuplicate"` for `WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE`).
//! * [`json_camel_case`] and [`json_snake_case`]: protobuf-go's `strs.JSONCamelCase` and
//!   `strs.JSONSnakeCase`, for `google.protobuf.FieldMask` paths.

/// Go's `strcase.ToScreamingDelimited(s, '_', "", true)`. It works on bytes: only ASCII letters
/// change case, and a delimiter goes between a lower-case letter or a digit and what follows
/// in another class, and before the last capital of a run that a lower-case letter follows.
pub fn to_screaming_snake(s: &str) -> String {
    // strings.TrimSpace: Unicode white space; Rust's trim uses the same property.
    let s = s.trim().as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(s.len() + 2);
    for (i, &original) in s.iter().enumerate() {
        let is_cap = original.is_ascii_uppercase();
        let is_low = original.is_ascii_lowercase();
        let v = original.to_ascii_uppercase();
        if let Some(&next) = s.get(i + 1) {
            let is_num = v.is_ascii_digit();
            let next_cap = next.is_ascii_uppercase();
            let next_low = next.is_ascii_lowercase();
            let next_num = next.is_ascii_digit();
            if (is_cap && (next_low || next_num))
                || (is_low && (next_cap || next_num))
                || (is_num && (next_cap || next_low))
            {
                if is_cap && next_low && i > 0 && s[i - 1].is_ascii_uppercase() {
                    out.push(b'_');
                }
                out.push(v);
                if is_low || is_num || next_num {
                    out.push(b'_');
                }
                continue;
            }
        }
        if matches!(v, b' ' | b'_' | b'-' | b'.') {
            out.push(b'_');
        } else {
            out.push(v);
        }
    }
    // Only ASCII bytes were changed or added, so the UTF-8 of the input is intact.
    String::from_utf8(out).unwrap_or_default()
}

/// protobuf-go's `strs.JSONCamelCase`: every `_` is dropped, and a lower-case ASCII letter right
/// after one is upper-cased.
pub fn json_camel_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut after_underscore = false;
    for c in s.chars() {
        if c != '_' {
            out.push(if after_underscore { c.to_ascii_uppercase() } else { c });
        }
        after_underscore = c == '_';
    }
    out
}

/// protobuf-go's `strs.JSONSnakeCase`: an upper-case ASCII letter becomes `_` and the letter in
/// lower case.
pub fn json_snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screaming_snake_matches_gos_strcase() {
        // Expected values: printed by a Go program calling a copy of api-go v1.63.5's
        // internal/strcase/strcase.go (ToScreamingSnake) on these inputs.
        let cases = [
            ("", ""),
            ("AllowDuplicate", "ALLOW_DUPLICATE"),
            ("WorkflowIdReusePolicy_AllowDuplicate", "WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE"),
            ("WorkflowIdConflictPolicy_TerminateExisting", "WORKFLOW_ID_CONFLICT_POLICY_TERMINATE_EXISTING"),
            ("TaskQueueKind_Normal", "TASK_QUEUE_KIND_NORMAL"),
            ("TaskQueueKind_normal", "TASK_QUEUE_KIND_NORMAL"),
            ("TaskQueueKind_NORMAL", "TASK_QUEUE_KIND_NORMAL"),
            ("TaskQueueKind_TASK_QUEUE_KIND_NORMAL", "TASK_QUEUE_KIND_TASK_QUEUE_KIND_NORMAL"),
            ("testCase", "TEST_CASE"),
            ("TestCase", "TEST_CASE"),
            ("Test Case", "TEST_CASE"),
            (" Test Case", "TEST_CASE"),
            ("Test Case ", "TEST_CASE"),
            ("test", "TEST"),
            ("test_case", "TEST_CASE"),
            ("test-case", "TEST_CASE"),
            ("test.case", "TEST_CASE"),
            ("Test", "TEST"),
            ("ManyManyWords", "MANY_MANY_WORDS"),
            ("manyManyWords", "MANY_MANY_WORDS"),
            ("AnyKind of_string", "ANY_KIND_OF_STRING"),
            ("numbers2and55with000", "NUMBERS_2_AND_55_WITH_000"),
            ("JSONData", "JSON_DATA"),
            ("userID", "USER_ID"),
            ("AAAbbb", "AA_ABBB"),
            ("V1Beta", "V_1_BETA"),
            ("EventType_WorkflowExecutionStarted", "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED"),
            ("é_x", "é_X"),
        ];
        for (input, expected) in cases {
            assert_eq!(to_screaming_snake(input), expected, "{input:?}");
        }
    }

    #[test]
    fn field_mask_paths_convert_both_ways() {
        assert_eq!(json_camel_case("workflow_id"), "workflowId");
        assert_eq!(json_camel_case("a.b_c"), "a.bC");
        assert_eq!(json_snake_case("workflowId"), "workflow_id");
        assert_eq!(json_snake_case("versioningOverride.pinned"), "versioning_override.pinned");
    }
}
