//! `flowgate policy fmt`: the one layout of policy files, which is Cedar's own formatter's
//! (`cedar-policy-formatter`, the crate behind `cedar format`), so policies read the same in
//! every review and a diff shows only what changed.
//!
//! This module owns finding a directory's `*.cedar` files, formatting each, proving that the
//! rewrite kept the file's meaning and comments, writing it back atomically and describing what
//! `--check` would change as a diff.
//!
//! Settings: lines of [`LINE_WIDTH`] (100) columns, indented by [`INDENT_WIDTH`] (2), the indent
//! the policies were already written with. The width decides only what stays on one line: a
//! condition or list that does not fit is broken one operand per line (`&&` chains one conjunct
//! a line, `when` and `{` on lines of their own) whatever the width. 100 is the margin the
//! policies' comments are wrapped at, which the formatter never rewraps, so code and comments
//! share one right edge; at Cedar's default of 80 a short condition such as
//! `when { resource has type && resource.type == "DeployWorkflow" && ... }` would be broken
//! below comments that run past it.
//!
//! The formatter also removes blank lines inside a policy and between comments, so a file's
//! opening comment joins the first policy's. Its output is used as it is, so `flowgate policy
//! fmt` and the Cedar CLI's `cedar format -l 100 -i 2` (and editors built on the same crate)
//! agree on every file.
//!
//! A file is never rewritten unless:
//!
//! * it parses (otherwise its first error is reported with file, line and column);
//! * Cedar's formatter accepts it (it re-parses its own output and refuses a result whose
//!   policies differ from the input's);
//! * every comment of the input is in the output, character for character (compared as a
//!   multiset of comment texts: the formatter may move a comment, never drop one);
//! * formatting the output again changes nothing, so `--check` cannot flap.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::PolicySet;
use cedar_policy_formatter::{Config, policies_str_to_pretty};

use crate::authz::PolicyProblem;

/// Maximum line width of formatted policies.
pub const LINE_WIDTH: usize = 100;
/// Indentation of formatted policies.
pub const INDENT_WIDTH: isize = 2;

/// Lines of unchanged context around each change in a `--check` diff.
const DIFF_CONTEXT: usize = 2;

/// Rewrite files, or only report what would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Write,
    Check,
}

/// What formatting a directory found (and, in [`Mode::Write`], did).
#[derive(Debug, Default)]
pub struct FmtReport {
    /// Every policy file looked at, sorted.
    pub files: Vec<PathBuf>,
    /// Files whose layout is not the formatter's: rewritten in [`Mode::Write`].
    pub changed: Vec<Change>,
    /// Files left as they are because they cannot be formatted safely.
    pub problems: Vec<PolicyProblem>,
}

/// One file whose formatted text differs from what is on disk.
#[derive(Debug)]
pub struct Change {
    pub path: PathBuf,
    /// A unified diff from the file to its formatted text, headed `--- path` / `+++ path`.
    pub diff: String,
}

/// A directory that cannot be formatted at all.
#[derive(Debug, thiserror::Error)]
pub enum FmtError {
    #[error("cannot read policy directory `{}`: {source}", .dir.display())]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("policy directory `{}` has no `.cedar` files", .0.display())]
    NoPolicies(PathBuf),
    #[error("cannot read `{}`: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write `{}`: {source}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{} could not be formatted", files(*.0))]
    Unformattable(usize),
    #[error("{} not formatted (run `flowgate policy fmt {}`)", files(*.count), .dir.display())]
    NotFormatted { count: usize, dir: PathBuf },
}

fn files(count: usize) -> String {
    match count {
        1 => "1 policy file".to_owned(),
        _ => format!("{count} policy files"),
    }
}

fn formatter_config() -> Config {
    Config { line_width: LINE_WIDTH, indent_width: INDENT_WIDTH }
}

/// Formats every `*.cedar` file of `dir` (not its subdirectories; the schema is not a policy
/// file). Files that cannot be formatted are reported in [`FmtReport::problems`] and never
/// touched; the others are still formatted.
pub fn format_dir(dir: &Path, mode: Mode) -> Result<FmtReport, FmtError> {
    let read_dir = |source| FmtError::ReadDir { dir: dir.to_owned(), source };
    let files = crate::authz::policy_files(dir).map_err(read_dir)?;
    if files.is_empty() {
        return Err(FmtError::NoPolicies(dir.to_owned()));
    }
    let mut report = FmtReport::default();
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|source| FmtError::Read { path: path.clone(), source })?;
        let formatted = match format_source(path, &text) {
            Ok(formatted) => formatted,
            Err(problem) => {
                report.problems.push(problem);
                continue;
            }
        };
        if formatted == text {
            continue;
        }
        if mode == Mode::Write {
            write_atomically(path, &formatted).map_err(|source| FmtError::Write { path: path.clone(), source })?;
        }
        report.changed.push(Change { path: path.clone(), diff: unified_diff(path, &text, &formatted) });
    }
    report.files = files;
    Ok(report)
}

/// The canonical text of one policy file, or why it cannot be formatted safely.
pub fn format_source(path: &Path, text: &str) -> Result<String, PolicyProblem> {
    let whole_file = |message: String| PolicyProblem { file: path.to_owned(), line: None, column: None, message };
    // Cedar's own parser locates errors; the formatter's error would only say "cannot parse".
    if let Err(errors) = PolicySet::from_str(text) {
        let first = errors.iter().next().map(|e| located(path, text, e));
        return Err(first.unwrap_or_else(|| whole_file(errors.to_string())));
    }
    let config = formatter_config();
    let formatter_failed = |report: miette::Report| {
        let chain: Vec<String> = report.chain().map(|e| e.to_string()).collect();
        whole_file(format!("cedar's formatter failed: {}", chain.join(": ")))
    };
    let formatted = policies_str_to_pretty(text, &config).map_err(formatter_failed)?;

    if let Some(change) = comment_change(text, &formatted) {
        return Err(whole_file(format!("{change}: the file is left as it is")));
    }
    let again = policies_str_to_pretty(&formatted, &config).map_err(formatter_failed)?;
    if again != formatted {
        return Err(whole_file("the formatter's output is not stable on this file: it is left as it is".into()));
    }
    Ok(formatted)
}

/// A parse error located at its first label.
fn located(path: &Path, text: &str, diagnostic: &dyn miette::Diagnostic) -> PolicyProblem {
    let mut message = diagnostic.to_string();
    if let Some(help) = diagnostic.help() {
        let _ = write!(message, " (help: {help})");
    }
    let offset = diagnostic.labels().and_then(|mut labels| labels.next()).map(|label| label.offset());
    let (line, column) = offset
        .map(|offset| {
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
            (line, column)
        })
        .unzip();
    PolicyProblem { file: path.to_owned(), line, column, message }
}

/// How the comments of `after` differ from those of `before`, if they do.
fn comment_change(before: &str, after: &str) -> Option<String> {
    let (before, after) = (comments(before), comments(after));
    if before == after {
        return None;
    }
    Some(match before.iter().find(|c| !after.contains(c)) {
        Some(lost) => format!("the formatter would drop the comment `{lost}`"),
        None => "the formatter would change the comments".to_owned(),
    })
}

/// Every `//` comment of a Cedar source (outside string literals), without trailing blanks,
/// sorted: the formatter may move comments and re-indent them, but must keep each one.
fn comments(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut in_string = false;
    while let Some((at, c)) = chars.next() {
        match (in_string, c) {
            (true, '\\') => {
                chars.next();
            }
            (true, '"') | (false, '"') => in_string = !in_string,
            (false, '/') if chars.peek().is_some_and(|&(_, next)| next == '/') => {
                let end = text[at..].find('\n').map_or(text.len(), |nl| at + nl);
                found.push(text[at..end].trim_end().to_owned());
                while chars.peek().is_some_and(|&(i, _)| i < end) {
                    chars.next();
                }
            }
            _ => {}
        }
    }
    found.sort();
    found
}

/// Replaces `path` with `text` so that readers see the old file or the new one, never a part:
/// a temporary file beside it (same file system), with the original's permissions, renamed over it.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let permissions = std::fs::metadata(path)?.permissions();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.fmt-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&temp)?;
        file.write_all(text.as_bytes())?;
        file.set_permissions(permissions)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// A unified diff (`DIFF_CONTEXT` lines of context) from `old` to `new`, both named `path`, so
/// `flowgate policy fmt --check DIR | patch -p0` applies it.
///
/// The edit script is `similar`'s Myers diff (O(N·D): a long file with a few changes is cheap),
/// grouped into hunks whose context overlaps. The hunks are written here rather than by
/// `similar`'s own unified writer so that the output stays `diff -u`'s: both counts always
/// present (`@@ -1,1 +1,1 @@`), and only `\n` ends a line (`similar` also splits at a lone `\r`).
fn unified_diff(path: &Path, old: &str, new: &str) -> String {
    // Lines keep their `\n`, so a missing final newline is a difference like any other.
    let old: Vec<&str> = old.split_inclusive('\n').collect();
    let new: Vec<&str> = new.split_inclusive('\n').collect();
    let edits = similar::capture_diff_slices(similar::Algorithm::Myers, &old, &new);
    let mut out = format!("--- {0}\n+++ {0}\n", path.display());
    for hunk in similar::group_diff_ops(edits, DIFF_CONTEXT) {
        let (Some(first), Some(last)) = (hunk.first(), hunk.last()) else { continue };
        let (old_lines, new_lines) =
            (first.old_range().start..last.old_range().end, first.new_range().start..last.new_range().end);
        // As in `diff -u`, a side is numbered from 1, and an empty side by the line before it.
        let start = |lines: &std::ops::Range<usize>| if lines.is_empty() { lines.start } else { lines.start + 1 };
        let _ = writeln!(
            out,
            "@@ -{},{} +{},{} @@",
            start(&old_lines),
            old_lines.len(),
            start(&new_lines),
            new_lines.len()
        );
        // Within a replacement, removals come first, as `diff` prints them.
        for change in hunk.iter().flat_map(|op| op.iter_changes(&old, &new)) {
            let sign = match change.tag() {
                similar::ChangeTag::Equal => ' ',
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
            };
            let line = change.value();
            match line.strip_suffix('\n') {
                Some(line) => {
                    let _ = writeln!(out, "{sign}{line}");
                }
                None => {
                    let _ = writeln!(out, "{sign}{line}\n\\ No newline at end of file");
                }
            }
        }
    }
    out
}

/// `flowgate policy fmt [--check] DIR`: rewrites (or, with `check`, diffs) and prints what it
/// found. Fails when a file cannot be formatted, or with `check` when one is not formatted.
pub fn run(dir: &Path, check: bool) -> Result<(), FmtError> {
    let mode = if check { Mode::Check } else { Mode::Write };
    let report = format_dir(dir, mode)?;
    let mut stdout = std::io::stdout().lock();
    for change in &report.changed {
        let _ = match mode {
            Mode::Check => write!(stdout, "{}", change.diff),
            Mode::Write => writeln!(stdout, "{}", change.path.display()),
        };
    }
    let _ = stdout.flush();
    for problem in &report.problems {
        eprintln!("error: {problem}");
    }
    if !report.problems.is_empty() {
        return Err(FmtError::Unformattable(report.problems.len()));
    }
    if mode == Mode::Check && !report.changed.is_empty() {
        return Err(FmtError::NotFormatted { count: report.changed.len(), dir: dir.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(old: &str, new: &str) -> String {
        unified_diff(Path::new("p.cedar"), old, new)
    }

    #[test]
    fn a_diff_shows_each_change_with_its_context_and_line_numbers() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\n";
        let new = "a\nB\nc\nd\ne\nf\ng\nh\ni\nj\n";
        assert_eq!(
            diff(old, new),
            "--- p.cedar\n+++ p.cedar\n@@ -1,4 +1,4 @@\n a\n-b\n+B\n c\n d\n@@ -8,2 +8,3 @@\n h\n i\n+j\n"
        );
        assert_eq!(diff("x\ny\n", "y\n"), "--- p.cedar\n+++ p.cedar\n@@ -1,2 +1,1 @@\n-x\n y\n");
        assert_eq!(diff("", "x\n"), "--- p.cedar\n+++ p.cedar\n@@ -0,0 +1,1 @@\n+x\n");
        assert_eq!(
            diff("x", "x\n"),
            "--- p.cedar\n+++ p.cedar\n@@ -1,1 +1,1 @@\n-x\n\\ No newline at end of file\n+x\n"
        );
    }

    #[test]
    fn a_long_file_with_one_changed_line_diffs_to_that_line_alone() {
        let old: String = (1..=20_000).map(|n| format!("line {n}\n")).collect();
        let new = old.replace("line 12345\n", "LINE 12345\n");
        assert_eq!(
            diff(&old, &new),
            "--- p.cedar\n+++ p.cedar\n@@ -12343,5 +12343,5 @@\n line 12343\n line 12344\n-line 12345\n+LINE 12345\n line 12346\n line 12347\n"
        );
    }

    #[test]
    fn a_diff_splits_lines_at_newlines_only() {
        assert_eq!(diff("a\rb\nc\n", "a\rB\nc\n"), "--- p.cedar\n+++ p.cedar\n@@ -1,2 +1,2 @@\n-a\rb\n+a\rB\n c\n");
    }

    #[test]
    fn comments_are_found_outside_strings_only() {
        let text =
            "// one\npermit (principal, action, resource) // two\nwhen { \"//not\\\"// a comment\" == \"x\" };\n";
        assert_eq!(comments(text), ["// one", "// two"]);
    }

    #[test]
    fn a_dropped_or_altered_comment_is_noticed_and_a_moved_one_is_not() {
        let before = "// head\npermit (principal, action, resource); // why\n";
        assert_eq!(comment_change(before, "// head\n// why\npermit (principal, action, resource);\n"), None);
        assert_eq!(
            comment_change(before, "// head\npermit (principal, action, resource);\n").as_deref(),
            Some("the formatter would drop the comment `// why`")
        );
        assert_eq!(
            comment_change(before, "// head\n// head\npermit (principal, action, resource); // why\n").as_deref(),
            Some("the formatter would change the comments")
        );
    }

    #[test]
    fn formatting_is_stable_and_keeps_comments() {
        let text =
            "// head\n\n@id(\"a\") permit(principal,action,resource) // why\nwhen { principal.hasTag(\"x\") };\n";
        let formatted = format_source(Path::new("p.cedar"), text).unwrap();
        assert_eq!(comments(&formatted), comments(text));
        assert_eq!(format_source(Path::new("p.cedar"), &formatted).unwrap(), formatted);
    }

    #[test]
    fn a_parse_error_is_located() {
        let problem = format_source(
            Path::new("p.cedar"),
            "@id(\"a\")\npermit (principal, action, resource)\nwhen { principal. };\n",
        )
        .unwrap_err();
        assert_eq!((problem.line, problem.column), (Some(3), Some(19)), "{problem}");
    }
}
