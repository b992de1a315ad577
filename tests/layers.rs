//! The crate's layering: every module imports only modules declared before it in `src/lib.rs`.
//!
//! The order of `pub mod` lines in `lib.rs` is the architecture (bottom first; see
//! `docs/architecture.md`). This test reads every source file, finds each reference to another
//! top-level module of the crate (`crate::<module>` in code, `use crate::{a, b}` groups
//! included; comments and string literals are skipped), and fails, naming the file, the line
//! and both modules, when a module reaches one declared after it. Tests inside a module
//! (`#[cfg(test)]`) are held to the same rule.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The top-level modules of `src/lib.rs`, in declaration order.
fn declared_modules(lib: &str) -> Vec<String> {
    lib.lines().filter_map(|line| line.trim().strip_prefix("pub mod ")?.strip_suffix(';').map(str::to_owned)).collect()
}

/// `text` without comments and the contents of string and char literals (their quotes stay),
/// so that neither a doc comment naming a module nor a message mentioning one counts.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(bytes.len(), |at| i + at + 2);
            out.extend(text[i..end].chars().filter(|c| *c == '\n'));
            i = end;
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|c| *c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body_start = i + 2 + hashes;
            let end = text[body_start..].find(&close).map_or(bytes.len(), |at| body_start + at + close.len());
            out.push('"');
            out.extend(text[body_start..end].chars().filter(|c| *c == '\n'));
            out.push('"');
            i = end;
        } else if bytes[i] == b'"' {
            out.push('"');
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\n' {
                    out.push('\n');
                }
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            out.push('"');
            i += 1;
        } else if bytes[i] == b'\'' && bytes.get(i + 2) == Some(&b'\'') {
            // A char literal such as '"' (lifetimes have no closing quote two bytes on).
            out.push_str("' '");
            i += 3;
        } else if let Some(escaped) = rest.strip_prefix("'\\") {
            let end = escaped.find('\'').map_or(bytes.len(), |at| i + 2 + at + 1);
            out.push_str("' '");
            i = end;
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Every top-level module a piece of code names, with the line it is named on.
fn references(code: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (at, _) in code.match_indices("crate::") {
        // `flowgate_crate::x` or `somecrate::x` are not this crate.
        if code[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let after = &code[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `use crate::{a, b::c, d::{e, f}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (offset, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        let name = ident(&group[offset..]);
                        let line = line + group[..offset].matches('\n').count();
                        found.push((name, line));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push((ident(after), line));
        }
    }
    found
}

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_imports_only_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = declared_modules(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    assert!(order.len() > 20, "lib.rs declares the modules: {order:?}");
    let rank: HashMap<&str, usize> = order.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let mut files = Vec::new();
    source_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_str().unwrap();
        let module = first.trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue; // the root declares everything; the binary sits on top of it all
        }
        let own = *rank.get(module).unwrap_or_else(|| panic!("`{module}` is not declared in lib.rs"));
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for (name, line) in references(&code) {
            checked += 1;
            let Some(&theirs) = rank.get(name.as_str()) else {
                violations.push(format!("{}:{line}: `crate::{name}` is not a module of lib.rs", relative.display()));
                continue;
            };
            if theirs > own {
                violations.push(format!(
                    "{}:{line}: `{module}` imports `{name}`, which lib.rs declares above it",
                    relative.display()
                ));
            }
        }
    }
    assert!(checked > 100, "the scan found the crate's imports ({checked})");
    assert!(violations.is_empty(), "modules importing upwards:\n{}", violations.join("\n"));
}

#[test]
fn the_scanner_sees_imports_and_skips_comments_and_strings() {
    let code = code_only(
        "use crate::{alpha, beta::X, gamma::{d, e}};\n// crate::comment\nlet s = \"crate::string\";\n/// crate::doc\nfn f() { crate::delta::g(); }\nlet c = '\"'; crate::epsilon::h();\n",
    );
    let names: Vec<String> = references(&code).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["alpha", "beta", "gamma", "delta", "epsilon"]);
    assert_eq!(references(&code)[3].1, 5, "lines are counted");
}
