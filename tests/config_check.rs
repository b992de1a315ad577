//! `flowgate check` as an operator runs it, for settings whose files it must read
//! (`[task_tokens] key_file`).

use std::path::Path;
use std::process::Command;

fn check(dir: &Path, extra: &str) -> (i32, String) {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let config = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"http://127.0.0.1:7233\"\n\
         [policy]\ndir = {policies:?}\n[audit]\npath = \"-\"\n{extra}"
    );
    let path = dir.join("flowgate.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_flowgate")).args(["check", "--config"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap(), text)
}

#[test]
fn check_reads_the_task_token_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = check(dir.path(), "");
    assert_eq!(code, 0, "{text}");

    // Relative to the config file, like every path in it.
    let keys = dir.path().join("task-token.keys");
    std::fs::write(&keys, "# current\nMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").unwrap();
    let (code, text) = check(dir.path(), "[task_tokens]\nkey_file = \"task-token.keys\"\n");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("config ok"), "{text}");

    std::fs::write(&keys, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\nc2hvcnQ=\n").unwrap();
    let (code, text) = check(dir.path(), "[task_tokens]\nkey_file = \"task-token.keys\"\n");
    assert_ne!(code, 0, "{text}");
    assert!(text.contains(&format!("`{}`", keys.display())), "{text}");
    assert!(text.contains("line 2: key is 5 bytes, at least 32"), "{text}");

    let (code, text) = check(dir.path(), "[task_tokens]\nkey_file = \"missing.keys\"\n");
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("missing.keys") && text.contains("cannot read it"), "{text}");
}
