//! Reading a policy directory: which files belong to the set, where each problem is (file,
//! line, column), the bound on bracket nesting, and the hash that names a loaded set.
//!
//! A broken file must be reported so that its author can fix it without reading Cedar's
//! internals: every problem is located at the byte Cedar points to, or, for problems Cedar
//! reports per policy, at the policy's `@id` annotation.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use sha2::{Digest, Sha256};

/// One problem with a policy directory, located as precisely as Cedar allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A policy directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy directory `{dir}`: {source}")]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("policy directory `{0}` has no `.cedar` files")]
    NoPolicies(PathBuf),
    #[error("invalid policy set:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<PolicyProblem>),
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

/// Turns a Cedar diagnostic into problems located in `file`.
pub(crate) fn problem(
    file: &Path,
    text: &str,
    diagnostic: &dyn Diagnostic,
    fallback_offset: Option<usize>,
) -> PolicyProblem {
    let mut message = diagnostic.to_string();
    if let Some(help) = diagnostic.help() {
        let _ = write!(message, " (help: {help})");
    }
    let offset = diagnostic.labels().and_then(|mut labels| labels.next()).map(|l| l.offset()).or(fallback_offset);
    let (line, column) = match offset {
        Some(offset) => {
            let (l, c) = line_column(text, offset);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    PolicyProblem { file: file.to_owned(), line, column, message }
}

/// How deeply `(`, `[` and `{` may nest in a policy file. Real policies nest a handful of
/// levels; Cedar's parser needs tens of kilobytes of stack per level in a debug build.
pub const MAX_POLICY_NESTING: usize = 32;

/// The byte offset where brackets first nest past [`MAX_POLICY_NESTING`], outside string
/// literals and `//` comments.
pub(crate) fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_POLICY_NESTING {
                    return Some(i);
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The policy files of a directory, sorted: its `*.cedar` files (following symlinks, as in a
/// Kubernetes ConfigMap volume), not its subdirectories. Loading, formatting and the reload
/// watcher all see the same files.
pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "cedar") && path.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The hash that names a policy set in decision records.
pub(crate) fn version_of(schema_text: &str, sources: &[(PathBuf, String)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(schema_text.as_bytes());
    for (path, text) in sources {
        hasher.update(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
